//! [`RoutingTable`]: the shared, snapshot-published subscription trie.
//!
//! Readers call [`RoutingTable::match_subject`] (or go through a shard's `MatchCache`): they load
//! the current [`Snapshot`] from an `ArcSwap` and walk it without taking any lock. Writers take
//! the writer mutex, clone the snapshot's root (O(1)), change it by path copying, store the new
//! snapshot, and only then increment the generation with `Release` ordering. Because of that
//! order, a reader that loads the generation (`Acquire`) before it loads the snapshot always gets
//! a snapshot at least as new as the generation it read; this is what lets `MatchCache` tag its
//! entries with the generation and never serve a result older than it.
//!
//! A call that changes nothing (a duplicate insert, removing an absent subscription) neither
//! publishes nor bumps the generation, so it does not flush the shards' caches.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use super::trie::Node;
use super::{MatchSet, SubTarget};

/// One immutable version of the table.
#[derive(Clone, Debug, Default)]
pub(super) struct Snapshot {
    /// Root of the trie (the empty pattern prefix).
    pub(super) root: Node,
    /// Number of subscriptions in the trie.
    pub(super) count: usize,
}

/// The subscription table shared by all shards (`Arc<RoutingTable>`).
///
/// Lookups never lock; changes serialize on an internal mutex, copy only the trie path they
/// touch, and publish a new snapshot followed by a generation bump. See the module docs of
/// `routing` for the semantics of wildcards and queue groups.
pub struct RoutingTable {
    /// The published snapshot. Written only by a writer holding `writer`; read by anyone.
    current: ArcSwap<Snapshot>,
    /// Bumped (`Release`) after every publication; shards' caches compare against it.
    generation: AtomicU64,
    /// Serializes writers, so that each change starts from the latest snapshot. A poisoned lock
    /// is taken anyway: a snapshot is only ever published whole, so no half-made change can be
    /// visible.
    writer: Mutex<()>,
}

impl Default for RoutingTable {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RoutingTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingTable")
            .field("generation", &self.generation())
            .field("subscriptions", &self.subscription_count())
            .finish_non_exhaustive()
    }
}

impl RoutingTable {
    /// An empty table at generation 0.
    pub fn new() -> Self {
        RoutingTable {
            current: ArcSwap::from_pointee(Snapshot::default()),
            generation: AtomicU64::new(0),
            writer: Mutex::new(()),
        }
    }

    /// Adds a subscription. `pattern` must already be validated (`subject::validate_pattern`)
    /// and `queue` too (`subject::validate_queue`); `None` means a plain subscription.
    /// Inserting a subscription that is already present changes nothing.
    pub fn insert(&self, pattern: &[u8], queue: Option<&[u8]>, target: SubTarget) {
        self.change(|snapshot| {
            // A duplicate copies a path into `snapshot` for nothing, but it is then dropped
            // unpublished; checking first would cost every new subscription an extra walk.
            let added = snapshot.root.slot_mut(pattern).insert(queue, target);
            if added {
                snapshot.count += 1;
            }
            added
        });
    }

    /// Removes a subscription; returns whether it was present.
    pub fn remove(&self, pattern: &[u8], queue: Option<&[u8]>, target: SubTarget) -> bool {
        self.change(|snapshot| remove_one(snapshot, pattern, queue, &target))
    }

    /// Removes many subscriptions with one snapshot publication (and one generation bump), as
    /// when a connection closes. Returns how many were present. Absent items are skipped.
    pub fn remove_many<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>, SubTarget)>,
    ) -> usize {
        let mut removed = 0usize;
        self.change(|snapshot| {
            for (pattern, queue, target) in items {
                if remove_one(snapshot, pattern, queue, &target) {
                    removed += 1;
                }
            }
            removed > 0
        });
        removed
    }

    /// The current generation (`Acquire`): it changes after every change to the table, once
    /// the changed snapshot is visible.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Number of subscriptions in the current snapshot.
    pub fn subscription_count(&self) -> usize {
        self.current.load().count
    }

    /// Matches a literal subject against the current snapshot (no cache). Queue groups of the
    /// same name found under different patterns are merged into one group.
    pub fn match_subject(&self, subject: &[u8]) -> MatchSet {
        let snapshot = self.current.load();
        let mut out = MatchSet::default();
        snapshot.root.collect(Some(subject), &mut out);
        out.merge_groups();
        out
    }

    /// The current snapshot (for tests).
    #[cfg(test)]
    pub(super) fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Runs one change under the writer lock on a copy of the current snapshot, and publishes
    /// it if `apply` reports that something changed. Returns what `apply` returned.
    fn change(&self, apply: impl FnOnce(&mut Snapshot) -> bool) -> bool {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Snapshot::clone(&self.current.load());
        let changed = apply(&mut next);
        if changed {
            self.current.store(Arc::new(next));
            self.generation.fetch_add(1, Ordering::Release);
        }
        changed
    }
}

/// Removes one subscription from a snapshot being built; returns whether it was present.
/// Checks first, so that an absent subscription copies no node.
fn remove_one(
    snapshot: &mut Snapshot,
    pattern: &[u8],
    queue: Option<&[u8]>,
    target: &SubTarget,
) -> bool {
    let present = snapshot
        .root
        .slot(pattern)
        .is_some_and(|subs| subs.contains(queue, target));
    if !present {
        return false;
    }
    let removed = snapshot.root.remove(Some(pattern), queue, target);
    debug_assert!(removed, "the subscription was checked present");
    snapshot.count -= 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// One subscription as `remove_many` takes it.
    type Item<'a> = (&'a [u8], Option<&'a [u8]>, SubTarget);

    fn t(conn: u64, sid: u32) -> SubTarget {
        SubTarget {
            shard: 0,
            conn,
            sid,
        }
    }

    fn plain_sorted(table: &RoutingTable, subject: &str) -> Vec<SubTarget> {
        let mut plain = table.match_subject(subject.as_bytes()).plain;
        plain.sort();
        plain
    }

    #[test]
    fn literal() {
        let table = RoutingTable::new();
        table.insert(b"a.b", None, t(1, 1));
        table.insert(b"a.b.c", None, t(2, 1));
        assert_eq!(plain_sorted(&table, "a.b"), vec![t(1, 1)]);
        assert_eq!(plain_sorted(&table, "a.b.c"), vec![t(2, 1)]);
        assert!(table.match_subject(b"a").is_empty());
        assert!(table.match_subject(b"a.c").is_empty());
        assert!(table.match_subject(b"a.b.c.d").is_empty());
    }

    #[test]
    fn star_matches_exactly_one_token() {
        let table = RoutingTable::new();
        table.insert(b"a.*", None, t(1, 1));
        table.insert(b"*.b", None, t(2, 1));
        table.insert(b"*", None, t(3, 1));
        assert_eq!(plain_sorted(&table, "a.b"), vec![t(1, 1), t(2, 1)]);
        assert_eq!(plain_sorted(&table, "a.x"), vec![t(1, 1)]);
        assert_eq!(plain_sorted(&table, "a"), vec![t(3, 1)]);
        assert!(table.match_subject(b"a.b.c").is_empty());
    }

    #[test]
    fn full_wildcard_matches_one_or_more_tokens() {
        let table = RoutingTable::new();
        table.insert(b"a.>", None, t(1, 1));
        table.insert(b">", None, t(2, 1));
        assert_eq!(plain_sorted(&table, "a"), vec![t(2, 1)]);
        assert_eq!(plain_sorted(&table, "a.b"), vec![t(1, 1), t(2, 1)]);
        assert_eq!(plain_sorted(&table, "a.b.c.d"), vec![t(1, 1), t(2, 1)]);
        assert_eq!(plain_sorted(&table, "b.c"), vec![t(2, 1)]);
    }

    #[test]
    fn mixed_wildcards() {
        let table = RoutingTable::new();
        table.insert(b"*.b.>", None, t(1, 1));
        table.insert(b"a.*.c", None, t(2, 1));
        table.insert(b"a.b.c", None, t(3, 1));
        table.insert(b"*.*.*", None, t(4, 1));
        assert_eq!(
            plain_sorted(&table, "a.b.c"),
            vec![t(1, 1), t(2, 1), t(3, 1), t(4, 1)]
        );
        assert_eq!(plain_sorted(&table, "x.b.y.z"), vec![t(1, 1)]);
        assert_eq!(plain_sorted(&table, "a.x.c"), vec![t(2, 1), t(4, 1)]);
        assert!(table.match_subject(b"a.b").is_empty());
    }

    #[test]
    fn one_entry_per_matching_subscription() {
        let table = RoutingTable::new();
        table.insert(b"a.b", None, t(1, 1));
        table.insert(b"a.*", None, t(1, 2));
        table.insert(b"a.>", None, t(1, 3));
        let set = table.match_subject(b"a.b");
        assert_eq!(set.plain.len(), 3);
        assert_eq!(set.delivery_count(), 3);
    }

    #[test]
    fn duplicate_insert_is_idempotent() {
        let table = RoutingTable::new();
        table.insert(b"a.*", None, t(1, 1));
        table.insert(b"a.*", Some(b"q"), t(1, 1));
        let generation = table.generation();
        table.insert(b"a.*", None, t(1, 1));
        table.insert(b"a.*", Some(b"q"), t(1, 1));
        assert_eq!(table.generation(), generation, "no change, no bump");
        assert_eq!(table.subscription_count(), 2);
        let set = table.match_subject(b"a.x");
        assert_eq!(set.plain, vec![t(1, 1)]);
        assert_eq!(set.groups.len(), 1);
        assert_eq!(set.groups[0].members, vec![t(1, 1)]);
    }

    #[test]
    fn queue_groups_are_grouped_by_name_across_patterns() {
        let table = RoutingTable::new();
        table.insert(b"a.b", Some(b"workers"), t(1, 1));
        table.insert(b"a.b", Some(b"workers"), t(2, 1));
        table.insert(b"a.*", Some(b"workers"), t(3, 1));
        table.insert(b"a.>", Some(b"audit"), t(4, 1));
        table.insert(b"a.b", None, t(5, 1));
        table.insert(b"x.y", Some(b"workers"), t(6, 1));
        let set = table.match_subject(b"a.b");
        assert_eq!(set.plain, vec![t(5, 1)]);
        let names: Vec<&[u8]> = set.groups.iter().map(|g| &*g.name).collect();
        assert_eq!(
            names,
            vec![&b"audit"[..], b"workers"],
            "sorted by name, one per name"
        );
        assert_eq!(set.groups[0].members, vec![t(4, 1)]);
        let mut workers = set.groups[1].members.clone();
        workers.sort();
        assert_eq!(workers, vec![t(1, 1), t(2, 1), t(3, 1)]);
        assert_eq!(set.delivery_count(), 3);

        let other = table.match_subject(b"a.c");
        assert!(other.plain.is_empty());
        assert_eq!(other.groups.len(), 2);
        assert_eq!(other.groups[1].members, vec![t(3, 1)]);
    }

    #[test]
    fn match_order_is_deterministic() {
        let table = RoutingTable::new();
        for i in 0..50u32 {
            let pattern = ["a.b", "a.*", "*.b", "a.>", ">"][i as usize % 5];
            table.insert(pattern.as_bytes(), None, t(u64::from(i % 7), i));
            table.insert(pattern.as_bytes(), Some(b"q"), t(u64::from(i % 3), i));
        }
        assert_eq!(table.match_subject(b"a.b"), table.match_subject(b"a.b"));
    }

    #[test]
    fn remove_and_prune() {
        let table = RoutingTable::new();
        table.insert(b"a.b.c", None, t(1, 1));
        table.insert(b"a.*.c", Some(b"q"), t(2, 1));
        assert!(!table.remove(b"a.b.c", None, t(9, 9)), "absent target");
        assert!(!table.remove(b"a.b", None, t(1, 1)), "absent pattern");
        assert!(
            !table.remove(b"a.b.c", Some(b"q"), t(1, 1)),
            "plain, not queue"
        );
        assert_eq!(table.subscription_count(), 2);
        assert!(table.remove(b"a.b.c", None, t(1, 1)));
        assert!(!table.remove(b"a.b.c", None, t(1, 1)), "already gone");
        let set = table.match_subject(b"a.b.c");
        assert!(set.plain.is_empty());
        assert_eq!(set.groups.len(), 1);
        assert!(table.remove(b"a.*.c", Some(b"q"), t(2, 1)));
        assert!(table.match_subject(b"a.b.c").is_empty());
        assert_eq!(table.subscription_count(), 0);
        assert!(table.snapshot().root.is_empty(), "every node was pruned");
    }

    #[test]
    fn remove_many_publishes_once() {
        let table = RoutingTable::new();
        let patterns: Vec<String> = (0..20).map(|i| format!("svc.{}.>", i % 5)).collect();
        for (i, p) in patterns.iter().enumerate() {
            table.insert(p.as_bytes(), None, t(7, i as u32));
        }
        table.insert(b"svc.0.x", None, t(8, 1));
        let generation = table.generation();
        let mut items: Vec<Item<'_>> = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_bytes(), None, t(7, i as u32)))
            .collect();
        items.push((b"svc.9", None, t(7, 99)));
        assert_eq!(table.remove_many(items.iter().copied()), 20);
        assert_eq!(table.generation(), generation + 1, "one publication");
        assert_eq!(table.subscription_count(), 1);
        assert_eq!(plain_sorted(&table, "svc.0.x"), vec![t(8, 1)]);
        assert_eq!(table.remove_many(items.iter().copied()), 0);
        assert_eq!(
            table.generation(),
            generation + 1,
            "nothing removed, no bump"
        );
    }

    #[test]
    fn generation_bumps_on_every_change() {
        let table = RoutingTable::new();
        assert_eq!(table.generation(), 0);
        table.insert(b"a", None, t(1, 1));
        assert_eq!(table.generation(), 1);
        table.insert(b"a", Some(b"q"), t(1, 2));
        assert_eq!(table.generation(), 2);
        assert!(table.remove(b"a", None, t(1, 1)));
        assert_eq!(table.generation(), 3);
        assert!(!table.remove(b"a", None, t(1, 1)));
        assert_eq!(table.generation(), 3);
        assert_eq!(
            table.remove_many([(&b"a"[..], Some(&b"q"[..]), t(1, 2))]),
            1
        );
        assert_eq!(table.generation(), 4);
    }

    #[test]
    fn changes_copy_only_their_path() {
        let table = RoutingTable::new();
        table.insert(b"left.x", None, t(1, 1));
        table.insert(b"right.x", None, t(2, 1));
        let before = table.snapshot();
        table.insert(b"right.y", None, t(3, 1));
        let after = table.snapshot();
        let left_before = before
            .root
            .literal_child(b"left")
            .expect("left was inserted");
        let left_after = after
            .root
            .literal_child(b"left")
            .expect("left is untouched");
        assert!(
            Arc::ptr_eq(left_before, left_after),
            "untouched subtree is shared"
        );
        let right_before = before
            .root
            .literal_child(b"right")
            .expect("right was inserted");
        let right_after = after
            .root
            .literal_child(b"right")
            .expect("right is still there");
        assert!(
            !Arc::ptr_eq(right_before, right_after),
            "changed path is copied"
        );
        assert_eq!(plain_sorted(&table, "right.y"), vec![t(3, 1)]);
        assert!(
            before.root.slot(b"right.y").is_none(),
            "the old snapshot is unchanged"
        );
    }

    #[test]
    fn insert_and_remove_100k_one_by_one() {
        // Cost per change is covered by `changes_copy_only_their_path`; timing belongs in
        // benchmarks, so this test checks only the results (and prints the time).
        let table = RoutingTable::new();
        // Wide fan-out (`_INBOX.<n>`), nested services, queue subscriptions on shared
        // wildcard patterns, and thousands of subscribers on one `>` pattern.
        let subs: Vec<(String, Option<&[u8]>)> = (0..100_000u32)
            .map(|i| match i % 4 {
                0 => (format!("_INBOX.{i}"), None),
                1 => (format!("svc.{}.req.{i}", i % 100), None),
                2 => (format!("events.{}.*", i % 1000), Some(&b"workers"[..])),
                _ => (format!("logs.{}.>", i % 10), None),
            })
            .collect();
        let start = Instant::now();
        for (i, (pattern, queue)) in subs.iter().enumerate() {
            table.insert(pattern.as_bytes(), *queue, t(i as u64, 1));
        }
        eprintln!("100k inserts: {:?}", start.elapsed());
        assert_eq!(table.subscription_count(), 100_000);
        assert_eq!(table.generation(), 100_000);
        assert_eq!(plain_sorted(&table, "_INBOX.40"), vec![t(40, 1)]);
        assert_eq!(table.match_subject(b"logs.3.a.b").plain.len(), 5_000);
        let events = table.match_subject(b"events.6.x");
        assert_eq!(events.groups.len(), 1);
        assert_eq!(events.groups[0].members.len(), 100);

        let start = Instant::now();
        let removed = table.remove_many(
            subs.iter()
                .enumerate()
                .map(|(i, (pattern, queue))| (pattern.as_bytes(), *queue, t(i as u64, 1))),
        );
        eprintln!("remove_many of 100k: {:?}", start.elapsed());
        assert_eq!(removed, 100_000);
        assert!(table.snapshot().root.is_empty());
    }
}
