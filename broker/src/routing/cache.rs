//! [`MatchCache`]: a shard's cache of literal subject → match result.
//!
//! Each shard owns one (it is neither `Send` nor `Sync`: results are `Rc`s handed to that
//! shard's own delivery code). Entries are valid for one table generation only:
//!
//! 1. `lookup` loads the table's generation (`Acquire`). If it differs from the one the cache was
//!    filled at, the cache is cleared and re-tagged.
//! 2. On a hit it returns the cached `Rc` (one atomic load, one hash lookup, one `Rc` clone).
//! 3. On a miss it matches against the table's snapshot, which it loads *after* reading the
//!    generation; since writers publish the snapshot before bumping the generation, that
//!    snapshot is at least as new as the tag. A writer racing in between only causes an extra
//!    clear on the next lookup, never a stale answer.
//!
//! The cache is bounded by `capacity` entries, split into two segments of `capacity / 2`: new
//! entries go into the *hot* segment; when it is full, the *cold* segment is dropped and the hot
//! one becomes cold. A hit in the cold segment moves the entry back to hot. This keeps recently
//! used subjects (an approximate LRU) at O(1) amortized cost, without the cliff of clearing the
//! whole cache when a working set is slightly over capacity. Keys are hashed with FxHash.

use std::fmt;
use std::mem;
use std::rc::Rc;

use rustc_hash::FxHashMap;

use super::{MatchSet, RoutingTable};

/// Hit and miss counters of one [`MatchCache`], since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to match against the table.
    pub misses: u64,
}

/// A shard's bounded cache of literal subject → `Rc<MatchSet>`, invalidated by the table's
/// generation. Use one cache with one table only.
pub struct MatchCache {
    /// Recently inserted or used entries; at most `hot_limit`.
    hot: FxHashMap<Box<[u8]>, Rc<MatchSet>>,
    /// The previous hot segment, kept until the hot one fills again.
    cold: FxHashMap<Box<[u8]>, Rc<MatchSet>>,
    /// Table generation every entry was computed at (or after).
    generation: u64,
    /// Most entries the cache holds.
    capacity: usize,
    /// Counters for metrics.
    stats: CacheStats,
    /// The last subject looked up and its result: a stream of messages on one subject skips
    /// hashing. Cleared with the rest on a generation change.
    last: Option<(Box<[u8]>, Rc<MatchSet>)>,
}

impl fmt::Debug for MatchCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MatchCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("generation", &self.generation)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl MatchCache {
    /// An empty cache holding at most `capacity` subjects (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        MatchCache {
            hot: FxHashMap::default(),
            cold: FxHashMap::default(),
            generation: 0,
            capacity,
            stats: CacheStats::default(),
            last: None,
        }
    }

    /// The match result for a literal subject, from the cache if it is current, else from
    /// `table` (and then cached).
    pub fn lookup(&mut self, table: &RoutingTable, subject: &[u8]) -> Rc<MatchSet> {
        match self.lookup_valid(table, subject, |_| Ok::<(), std::convert::Infallible>(())) {
            Ok(found) => found,
            Err(never) => match never {},
        }
    }

    /// Like [`MatchCache::lookup`], but runs `validate` on the subject first when it is not
    /// cached: a cached subject was valid when it was cached, so the hot path skips validation.
    /// An invalid subject is not cached.
    ///
    /// # Errors
    /// Whatever `validate` returns for an uncached subject.
    pub fn lookup_valid<E>(
        &mut self,
        table: &RoutingTable,
        subject: &[u8],
        validate: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<Rc<MatchSet>, E> {
        let generation = table.generation();
        if generation != self.generation {
            self.hot.clear();
            self.cold.clear();
            self.last = None;
            self.generation = generation;
        }
        if let Some((key, found)) = &self.last {
            if **key == *subject {
                self.stats.hits += 1;
                return Ok(Rc::clone(found));
            }
        }
        let found = if let Some(found) = self.hot.get(subject) {
            self.stats.hits += 1;
            Rc::clone(found)
        } else if let Some((key, found)) = self.cold.remove_entry(subject) {
            self.stats.hits += 1;
            self.insert_hot(key, Rc::clone(&found));
            found
        } else {
            validate(subject)?;
            self.stats.misses += 1;
            let found = Rc::new(table.match_subject(subject));
            if self.capacity == 0 {
                return Ok(found);
            }
            self.insert_hot(Box::from(subject), Rc::clone(&found));
            found
        };
        self.remember(subject, &found);
        Ok(found)
    }

    /// Number of cached subjects.
    pub fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.hot.is_empty() && self.cold.is_empty()
    }

    /// Most subjects the cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Drops every entry (the generation tag and counters stay).
    pub fn clear(&mut self) {
        self.hot.clear();
        self.cold.clear();
        self.last = None;
    }

    /// Makes `subject` the last-used entry, reusing the key's allocation when it fits.
    fn remember(&mut self, subject: &[u8], found: &Rc<MatchSet>) {
        match &mut self.last {
            Some((key, value)) if key.len() == subject.len() => {
                key.copy_from_slice(subject);
                *value = Rc::clone(found);
            }
            slot => *slot = Some((Box::from(subject), Rc::clone(found))),
        }
    }

    /// Inserts into the hot segment, rotating segments first if it is full. With a capacity
    /// below 2 there is no cold segment: a full hot segment is simply cleared.
    fn insert_hot(&mut self, key: Box<[u8]>, value: Rc<MatchSet>) {
        let hot_limit = (self.capacity / 2).max(1);
        if self.hot.len() >= hot_limit {
            if self.capacity >= 2 {
                mem::swap(&mut self.hot, &mut self.cold);
            }
            // Reuses the old cold segment's allocation for the new hot one.
            self.hot.clear();
        }
        self.hot.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::super::SubTarget;
    use super::*;

    fn t(conn: u64, sid: u32) -> SubTarget {
        SubTarget {
            shard: 0,
            conn,
            sid,
        }
    }

    #[test]
    fn hit_returns_the_same_result() {
        let table = RoutingTable::new();
        table.insert(b"a.*", None, t(1, 1));
        let mut cache = MatchCache::new(16);
        let first = cache.lookup(&table, b"a.b");
        let second = cache.lookup(&table, b"a.b");
        assert!(Rc::ptr_eq(&first, &second));
        assert_eq!(first.plain, vec![t(1, 1)]);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 1 });
    }

    #[test]
    fn empty_results_are_cached_too() {
        let table = RoutingTable::new();
        let mut cache = MatchCache::new(4);
        assert!(cache.lookup(&table, b"nobody.listens").is_empty());
        assert!(cache.lookup(&table, b"nobody.listens").is_empty());
        assert_eq!(cache.stats().hits, 1);
    }

    #[test]
    fn insert_invalidates() {
        let table = RoutingTable::new();
        let mut cache = MatchCache::new(16);
        assert!(cache.lookup(&table, b"a.b").is_empty());
        table.insert(b"a.>", Some(b"q"), t(1, 1));
        let after = cache.lookup(&table, b"a.b");
        assert_eq!(after.groups.len(), 1);
        assert_eq!(
            cache.len(),
            1,
            "the stale entry was cleared, the new one cached"
        );
    }

    #[test]
    fn remove_invalidates() {
        let table = RoutingTable::new();
        table.insert(b"a.b", None, t(1, 1));
        let mut cache = MatchCache::new(16);
        assert_eq!(cache.lookup(&table, b"a.b").plain.len(), 1);
        cache.lookup(&table, b"other");
        assert!(table.remove(b"a.b", None, t(1, 1)));
        assert!(cache.lookup(&table, b"a.b").is_empty());
        assert_eq!(cache.len(), 1);
        assert!(table.remove_many([(&b"x"[..], None, t(1, 1))]) == 0);
        assert_eq!(cache.len(), 1, "a no-op removal keeps the cache");
    }

    #[test]
    fn bounded_and_keeps_recent_entries() {
        let table = RoutingTable::new();
        table.insert(b">", None, t(1, 1));
        let mut cache = MatchCache::new(8);
        let hot_subject = b"hot.subject";
        let hot = cache.lookup(&table, hot_subject);
        for i in 0..1000 {
            let subject = format!("s.{i}");
            cache.lookup(&table, subject.as_bytes());
            assert!(cache.len() <= 8, "len {} over capacity", cache.len());
            // Using the hot subject keeps it cached.
            assert!(Rc::ptr_eq(&hot, &cache.lookup(&table, hot_subject)));
        }
        assert_eq!(cache.stats().misses, 1001);
    }

    #[test]
    fn lookup_valid_validates_only_misses_and_never_caches_invalid() {
        let table = RoutingTable::new();
        table.insert(b"a.*", None, t(1, 1));
        let mut cache = MatchCache::new(16);
        let calls = std::cell::Cell::new(0);
        let check = |s: &[u8]| {
            calls.set(calls.get() + 1);
            agentwire_protocol::validate_literal(s)
        };
        assert!(cache.lookup_valid(&table, b"a.*", check).is_err());
        assert!(cache.is_empty(), "an invalid subject is not cached");
        let first = cache.lookup_valid(&table, b"a.b", check).expect("valid");
        let again = cache.lookup_valid(&table, b"a.b", check).expect("valid");
        assert!(Rc::ptr_eq(&first, &again));
        assert_eq!(calls.get(), 2, "the hit skipped validation");
        assert!(cache.lookup_valid(&table, b"a.*", check).is_err());
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn tiny_capacities() {
        let table = RoutingTable::new();
        table.insert(b"a", None, t(1, 1));
        let mut off = MatchCache::new(0);
        assert_eq!(off.lookup(&table, b"a").plain, vec![t(1, 1)]);
        assert!(off.is_empty());
        let mut one = MatchCache::new(1);
        for subject in [&b"a"[..], b"b", b"c", b"a"] {
            one.lookup(&table, subject);
            assert_eq!(one.len(), 1);
        }
        let mut three = MatchCache::new(3);
        for i in 0..10 {
            three.lookup(&table, format!("{i}").as_bytes());
            assert!(three.len() <= 3);
        }
    }

    /// Prints rough lookup costs; not a pass/fail test. Run with
    /// `cargo test --release -- --ignored --nocapture lookup_timing_report`.
    #[test]
    #[ignore = "timing report, not a check"]
    fn lookup_timing_report() {
        use std::time::Instant;
        let table = RoutingTable::new();
        for i in 0..100_000u32 {
            let (pattern, queue) = match i % 4 {
                0 => (format!("_INBOX.{i}"), None),
                1 => (format!("svc.{}.req.{i}", i % 100), None),
                2 => (format!("events.{}.*", i % 1000), Some(&b"workers"[..])),
                _ => (format!("logs.{}.>", i % 100), None),
            };
            table.insert(pattern.as_bytes(), queue, t(u64::from(i), 1));
        }
        let subjects: Vec<String> = (0..1_000u32)
            .map(|i| match i % 3 {
                0 => format!("_INBOX.{}", i * 4),
                1 => format!("svc.{}.req.{}", i % 100, i),
                _ => format!("events.{}.created", i),
            })
            .collect();
        let rounds = 200;
        let start = Instant::now();
        let mut reached = 0usize;
        for _ in 0..rounds {
            for subject in &subjects {
                reached += table.match_subject(subject.as_bytes()).delivery_count();
            }
        }
        let uncached = start.elapsed() / (rounds * subjects.len() as u32);
        let mut cache = MatchCache::new(4_096);
        let start = Instant::now();
        for _ in 0..rounds {
            for subject in &subjects {
                reached += cache.lookup(&table, subject.as_bytes()).delivery_count();
            }
        }
        let cached = start.elapsed() / (rounds * subjects.len() as u32);
        eprintln!("uncached match: {uncached:?}/lookup, cached: {cached:?}/lookup ({reached})");
        assert_eq!(cache.stats().misses, subjects.len() as u64);
    }
}
