//! Queue-group member choice on a shard: power of two choices by load, sticky runs of plain
//! messages, the shard's cache of load records, and its random numbers.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Shard, STICKY_MESSAGES};
use crate::routing::SubTarget;
use crate::telemetry::load::ConnLoad;

impl Shard {
    /// Makes sure the load records of `conns` are in this shard's cache (a miss reads the
    /// global map once; entries of closed connections are dropped when the cache is full).
    fn cache_loads(&self, conns: [u64; 2]) {
        let cache = self.load_cache.borrow();
        if conns.iter().all(|c| cache.contains_key(c)) {
            return;
        }
        drop(cache);
        let global = self.global.loads.read();
        let mut cache = self.load_cache.borrow_mut();
        if cache.len() >= 8192 {
            cache.clear();
        }
        for c in conns {
            if let Some(l) = global.get(&c) {
                cache.entry(c).or_insert_with(|| l.clone());
            }
        }
    }

    /// A random number below `n` (n > 0).
    pub fn next_rand_below(&self, n: u64) -> u64 {
        self.next_rand() % n.max(1)
    }

    fn next_rand(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    /// Picks a queue-group member by load: two distinct members at random, the lower
    /// [`ConnLoad::score`] wins; unhealthy members lose to healthy ones. For a `request`, the
    /// winner's outstanding count goes up (its next publish is taken as the reply). Returns
    /// the index and whether the request is tracked. `members` is not empty (a lone member is
    /// chosen, and a request to it tracked).
    pub fn choose_member(&self, members: &[SubTarget], request: bool) -> (usize, bool) {
        let n = members.len();
        let (a, b) = if n < 2 {
            (0, 0)
        } else {
            let r = self.next_rand();
            let a = (r % n as u64) as usize;
            (a, (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n)
        };
        self.cache_loads([members[a].conn, members[b].conn]);
        let cache = self.load_cache.borrow();
        let la = cache.get(&members[a].conn);
        let lb = cache.get(&members[b].conn);
        let key = |l: Option<&Arc<ConnLoad>>| match l {
            Some(l) => (!l.healthy(), l.score()),
            None => (false, 0),
        };
        let (i, l) = if key(lb) < key(la) { (b, lb) } else { (a, la) };
        match (request, l) {
            (true, Some(l)) => {
                l.dispatched.fetch_add(1, Ordering::Relaxed);
                (i, true)
            }
            _ => (i, false),
        }
    }

    /// The member of group `key` (its match's address) for a plain message (no reply): chosen
    /// by load once per [`STICKY_MESSAGES`] messages in a row to the same group, so a stream
    /// of messages pays for the choice once per run, not per message.
    pub fn sticky_member(&self, key: usize, members: &[SubTarget]) -> usize {
        let (k, i, left) = self.sticky.get();
        if k == key && left > 0 && i < members.len() {
            self.sticky.set((k, i, left - 1));
            return i;
        }
        let (i, _) = self.choose_member(members, false);
        self.sticky.set((key, i, STICKY_MESSAGES - 1));
        i
    }

    /// Takes back a tracked request that could not be delivered.
    pub fn untrack(&self, conn: u64) {
        if let Some(l) = self.load_cache.borrow().get(&conn) {
            l.give_up(1);
        }
    }
}
