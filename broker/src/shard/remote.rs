//! The sending side of the cross-shard hand-off: [`RemoteBatch`]es staged per destination
//! shard during a read batch, pushed to the destination's lock-free queue at the end of it,
//! and the [`Stash`] that keeps them in order while that queue is full.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{bump, Shard};

/// Messages handed from one shard to another: a refcounted view of one read batch of the
/// publisher (no copy) and, per delivery, where its PUB frame lies in it and who gets it. One
/// batch per (read batch, destination shard): one queue push and one refcount per batch, not
/// per message.
#[derive(Debug)]
pub(crate) struct RemoteBatch {
    /// The bytes the items point into (the publisher's read batch, or a synthesized frame).
    pub frames: Bytes,
    /// The deliveries, in order.
    pub items: Vec<RemoteItem>,
    /// When the publisher's read batch was read (for the residence histogram).
    pub read_at: Instant,
}

/// One delivery in a [`RemoteBatch`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteItem {
    /// Target connection (owned by the receiving shard).
    pub conn: u64,
    /// Offset of the PUB frame in the batch's bytes.
    pub off: u32,
    /// Length of the PUB frame.
    pub len: u32,
    /// Target subscription.
    pub sid: u32,
    /// MSG flag bits.
    pub flags: u8,
}

impl Shard {
    /// Adds a delivery for shard `dst` to this batch's staging area: `frame` is the PUB frame at
    /// `off..off + len` of `src`. Staged batches go out in [`Shard::flush_staged`].
    #[allow(clippy::too_many_arguments)]
    pub fn stage_remote(
        &self,
        dst: u16,
        src: &Bytes,
        off: usize,
        len: usize,
        conn: u64,
        sid: u32,
        flags: u8,
        stash: &mut Stash,
    ) {
        {
            let mut peer_flags = self.peer_flag.borrow_mut();
            if !peer_flags[dst as usize] {
                peer_flags[dst as usize] = true;
                self.peers_touched.borrow_mut().push(dst);
            }
        }
        bump(&self.counters.cross, 1);
        let item = RemoteItem {
            conn,
            off: off as u32,
            len: len as u32,
            sid,
            flags,
        };
        let mut staging = self.staging.borrow_mut();
        let slot = &mut staging[dst as usize];
        if let Some(b) = slot {
            if b.frames.as_ptr() == src.as_ptr() && b.frames.len() == src.len() {
                b.items.push(item);
                return;
            }
        }
        let mut items = Vec::with_capacity(64);
        items.push(item);
        if let Some(old) = slot.replace(RemoteBatch {
            frames: src.clone(),
            items,
            read_at: self.read_at.get(),
        }) {
            self.push_or_stash(dst, old, stash);
        }
    }

    /// Sends every staged batch to its shard (or to the stash when its queue is full).
    pub fn flush_staged(&self, stash: &mut Stash) {
        let mut staging = self.staging.borrow_mut();
        for (dst, slot) in staging.iter_mut().enumerate() {
            if let Some(b) = slot.take() {
                self.push_or_stash(dst as u16, b, stash);
            }
        }
    }

    /// Pushes to `dst`'s queue unless that queue is blocked (full, or holding back earlier
    /// stashed batches); otherwise appends to the stash and marks `dst` blocked.
    fn push_or_stash(&self, dst: u16, b: RemoteBatch, stash: &mut Stash) {
        if stash.blocked(dst) {
            stash.items.push((dst, b));
            return;
        }
        let q = &self.global.shards[dst as usize].inbound[self.id as usize];
        if let Err(b) = q.push(b) {
            stash.block(dst);
            stash.items.push((dst, b));
        }
    }

    /// Pushes stashed cross-shard messages in order, waiting for room as long as needed.
    pub async fn push_stash(&self, stash: &mut Stash) {
        while !stash.items.is_empty() {
            stash.clear_blocks();
            let items = std::mem::take(&mut stash.items);
            let mut woken: Vec<u16> = Vec::new();
            for (dst, r) in items {
                self.push_or_stash(dst, r, stash);
                // Wake every destination touched here, whether its push went through or it is
                // still full: the wake from the batch's flush may have come before this push.
                if !woken.contains(&dst) {
                    woken.push(dst);
                    self.global.shards[dst as usize].wake.notify_one();
                }
            }
            if stash.items.is_empty() {
                break;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(1), self.handle.space.notified()).await;
        }
        stash.clear_blocks();
    }
}

/// Cross-shard batches that did not fit their queue yet, in order, with the shards whose
/// queue was found full.
#[derive(Debug, Default)]
pub(crate) struct Stash {
    pub items: Vec<(u16, RemoteBatch)>,
    blocked_list: Vec<u16>,
}

impl Stash {
    fn blocked(&self, dst: u16) -> bool {
        self.blocked_list.contains(&dst)
    }
    fn block(&mut self, dst: u16) {
        if !self.blocked(dst) {
            self.blocked_list.push(dst);
        }
    }
    fn clear_blocks(&mut self) {
        self.blocked_list.clear();
    }
}
