//! Output to a shard's own connections and flow control: delivering a message into a local
//! connection's outbound buffer, the end-of-batch flush (write out, wake peer shards, publish
//! the counters), pending-byte accounting against the slow-consumer limits, and pacing a
//! publisher to the consumers it congested.

use std::rc::Rc;

use super::conn::{self, Conn};
use super::{bump, Shard};
use crate::routing::SubTarget;
use crate::stats::ShardStats;

impl Shard {
    /// Delivers a message to subscription `sid` of local connection `conn_id`. Returns whether
    /// it was queued for writing.
    pub fn deliver_local(&self, conn_id: u64, sid: u32, flags: u8, frame: &[u8]) -> bool {
        let track = flags & conn::TRACK_REPLY != 0;
        let flags = flags & !conn::TRACK_REPLY;
        let conn = match self.conns.borrow().get(&conn_id) {
            Some(c) => c.clone(),
            None => {
                bump(&self.counters.dropped, 1);
                return false;
            }
        };
        let limits = self.limits.borrow();
        let mut st = conn.st.borrow_mut();
        if st.closing {
            bump(&self.counters.dropped, 1);
            return false;
        }
        let Some(sub) = st.subs.get_mut(&sid) else {
            // Unsubscribed while the message was in flight: not an error.
            return false;
        };
        if sub.max != 0 && sub.delivered >= u64::from(sub.max) {
            return false;
        }
        sub.delivered += 1;
        let done = sub.max != 0 && sub.delivered >= u64::from(sub.max);
        if track {
            conn.track_request();
        }
        if conn.tracks_responses.get() {
            if let Some((_, reply)) = agentwire_protocol::frame::pub_subject_and_reply(frame) {
                if !reply.is_empty() {
                    conn.note_request(reply);
                }
            }
        }
        let before = st.out.len();
        let was_over_soft = st.pending() > limits.soft_pending();
        if agentwire_protocol::encode_msg_from_pub(&mut st.out, sid, flags, frame).is_err() {
            bump(&self.counters.dropped, 1);
            return false;
        }
        bump(&self.counters.msgs_out, 1);
        bump(&self.counters.bytes_out, (st.out.len() - before) as u64);
        if done {
            if let Some(sub) = st.subs.remove(&sid) {
                self.global.routing.remove(
                    &sub.pattern,
                    sub.queue.as_deref(),
                    SubTarget {
                        shard: self.id,
                        conn: conn_id,
                        sid,
                    },
                );
            }
        }
        let pending = st.pending();
        let over = pending > limits.max_pending;
        if !was_over_soft && pending > limits.soft_pending() {
            self.over_soft.set(true);
        }
        drop(st);
        if over {
            conn.slow_consumer(self, "outbound buffer passed max_pending");
        }
        self.touch(&conn);
        true
    }

    /// Writes out (wakes writers of) every connection touched since the last flush, wakes every
    /// peer shard given messages, publishes the batch counters, and returns the touched
    /// connections that are above the soft pending limit.
    pub fn flush(&self) -> Vec<Rc<Conn>> {
        let soft = self.limits.borrow().soft_pending();
        let touched = std::mem::take(&mut *self.touched.borrow_mut());
        let mut congested = Vec::new();
        for c in touched {
            c.st.borrow_mut().touched = false;
            if c.write_now(soft) {
                c.wake_writer.notify_one();
            }
            let mut st = c.st.borrow_mut();
            let pending = st.pending();
            let over = !st.closing && pending > soft;
            self.account(&mut st);
            drop(st);
            c.load
                .pending_bytes
                .store(pending as u64, std::sync::atomic::Ordering::Relaxed);
            if over {
                congested.push(c);
            }
        }
        let peers = std::mem::take(&mut *self.peers_touched.borrow_mut());
        if !peers.is_empty() {
            let mut flags = self.peer_flag.borrow_mut();
            for p in peers {
                flags[p as usize] = false;
                self.global.shards[p as usize].wake.notify_one();
            }
        }
        self.publish_counters();
        self.enforce_total();
        congested
    }

    /// Brings a connection's pending bytes into the shard's total.
    /// A closing connection counts as nothing: what it still holds is on its way out.
    pub fn account(&self, st: &mut conn::ConnState) {
        let p = if st.closing { 0 } else { st.pending() };
        if p != st.reported {
            self.pending_total
                .set((self.pending_total.get() + p).saturating_sub(st.reported));
            st.reported = p;
        }
    }

    /// Past this shard's share of `max_pending_total`, closes the connections with the most
    /// bytes waiting (slow consumers) until under it.
    fn enforce_total(&self) {
        let limits = self.limits.borrow();
        let share = limits.max_pending_total / self.global.shards.len().max(1);
        let mut guard = 0;
        while self.pending_total.get() > share && guard < 64 {
            guard += 1;
            let worst = self
                .conns
                .borrow()
                .values()
                .filter(|c| !c.st.borrow().closing)
                .max_by_key(|c| c.st.borrow().pending())
                .cloned();
            let Some(c) = worst else { break };
            let pending = c.st.borrow().pending();
            c.slow_consumer(
                self,
                &format!(
                    "the broker's outbound buffers passed max_pending_total ({} bytes); this connection had the most waiting ({pending} bytes)",
                    limits.max_pending_total
                ),
            );
            self.account(&mut c.st.borrow_mut());
        }
    }

    fn publish_counters(&self) {
        let s = &self.handle.stats;
        let c = &self.counters;
        ShardStats::add(&s.msgs_in, c.msgs_in.take());
        ShardStats::add(&s.bytes_in, c.bytes_in.take());
        ShardStats::add(&s.msgs_out, c.msgs_out.take());
        ShardStats::add(&s.bytes_out, c.bytes_out.take());
        ShardStats::add(&s.cross_shard_out, c.cross.take());
        ShardStats::add(&s.dropped, c.dropped.take());
    }

    /// Waits while any of `congested` is above the soft limit and still reading (paces the
    /// caller to its consumers; a consumer that stopped reading is not waited for).
    pub async fn pace(&self, congested: Vec<Rc<Conn>>) {
        let soft = self.limits.borrow().soft_pending();
        for c in congested {
            for _ in 0..10_000 {
                if !c.is_congested(soft) {
                    break;
                }
                let _ = tokio::time::timeout(conn::PROGRESS_WINDOW, c.drained.notified()).await;
            }
        }
    }
}
