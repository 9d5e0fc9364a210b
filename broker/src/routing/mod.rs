//! The routing table: which subscriptions a published subject reaches.
//!
//! # Design
//!
//! One [`RoutingTable`] is shared by every shard (`Arc<RoutingTable>`). It holds a trie of
//! subscription patterns keyed by token (`trie`), published as an immutable snapshot through
//! `arc_swap::ArcSwap`:
//!
//! - **Readers never lock.** Matching loads the current snapshot (a few atomic operations) and
//!   walks it; a writer publishing meanwhile does not disturb it.
//! - **Writers serialize on a mutex and copy paths.** A change clones only the nodes on the path
//!   from the root to the changed slot (`Arc::make_mut`); every other subtree is shared with the
//!   previous snapshot. Inside a node, children and subscription sets are persistent maps
//!   (`pmap`: a small sorted slice, and once large a hash array mapped trie, `hamt`; queue
//!   names use `imbl::OrdMap`), so a change costs O(depth · log n), never O(total
//!   subscriptions). Literal tokens are stored inline when short (`token`).
//! - **Publish, then bump the generation.** After storing the new snapshot the writer increments
//!   an `AtomicU64` generation with `Release` ordering. A reader that loads the generation with
//!   `Acquire` and then loads the snapshot sees a snapshot at least as new as that generation.
//!
//! Each shard owns a [`MatchCache`] (`cache`): literal subject → `Rc<MatchSet>`, tagged with the
//! generation it was filled at and cleared as soon as the table's generation moves. A cache hit
//! costs one atomic load, one hash lookup and an `Rc` clone.
//!
//! # Semantics
//!
//! `*` matches exactly one token; `>` matches one or more tokens (it stops the pattern, like the
//! reference matcher [`agentwire_protocol::subject::matches`], with which matching agrees
//! exactly). A subscription is identified by (pattern, queue, [`SubTarget`]); inserting it twice
//! is a no-op. Callers validate patterns with `subject::validate_pattern` first; an invalid pattern
//! never panics, but `a.>.b` files under the same slot as `a.>`.
//!
//! **Queue groups** are identified by queue name across all matching patterns: if `a.*` and `a.b`
//! both have members in queue `q`, a message on `a.b` yields one group `q` holding both sets of
//! members, so it reaches exactly one member of `q`. (nats-server also merges queue
//! subscriptions by name when building a match result.) Within a match, plain targets and group
//! members are multisets: one entry per matching subscription.

mod cache;
mod hamt;
mod pmap;
mod table;
mod token;
mod trie;

#[cfg(test)]
mod proptests;

use std::sync::Arc;

pub use cache::{CacheStats, MatchCache};
pub use table::RoutingTable;

/// Where a subscription lives: its shard, its connection (ids unique for the server's
/// lifetime), its sid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubTarget {
    /// Shard that owns the connection.
    pub shard: u16,
    /// Connection id, unique for the server's lifetime.
    pub conn: u64,
    /// Subscription id chosen by the client, unique within its connection.
    pub sid: u32,
}

/// The result of matching one literal subject.
///
/// Order inside `plain`, inside each group's `members` and of `groups` is deterministic for a
/// given table content within one process (groups are sorted by name); callers should not
/// rely on anything else about it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MatchSet {
    /// Plain subscriptions, each of which gets a copy: one entry per matching subscription (a
    /// connection with two matching sids appears twice, as in NATS).
    pub plain: Vec<SubTarget>,
    /// Queue groups with at least one matching member, one entry per queue name: the caller
    /// delivers to exactly one member of each.
    pub groups: Vec<QueueGroupMatch>,
}

/// One queue group that a subject reaches, with every matching member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueGroupMatch {
    /// The queue group's name.
    pub name: Arc<[u8]>,
    /// Members whose pattern matches (never empty).
    pub members: Vec<SubTarget>,
}

impl MatchSet {
    /// Whether the subject reaches no subscription at all.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    /// Number of deliveries a message on this subject makes: one per plain subscription plus
    /// one per queue group.
    pub fn delivery_count(&self) -> usize {
        self.plain.len() + self.groups.len()
    }

    /// Sorts groups by name and merges groups of the same name (found under different
    /// patterns) into one. The sort is stable, so the result is deterministic.
    fn merge_groups(&mut self) {
        if self.groups.len() < 2 {
            return;
        }
        self.groups.sort_by(|a, b| a.name.cmp(&b.name));
        self.groups.dedup_by(|later, earlier| {
            if later.name == earlier.name {
                earlier.members.append(&mut later.members);
                true
            } else {
                false
            }
        });
    }
}
