//! Model-based and concurrency tests for the routing table.
//!
//! The model is the obvious one: a set of (pattern, queue, target) and the reference matcher
//! `agentwire_protocol::subject::matches`. The table, the cache and the model must agree on every
//! subject, before and after random removals. The concurrency test runs a writer thread against
//! a reader and checks that the reader never panics and always sees a consistent snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use agentwire_protocol::subject;
use proptest::prelude::*;

use super::{MatchCache, MatchSet, RoutingTable, SubTarget};

/// A subscription as the model sees it.
type Sub = (Vec<u8>, Option<Vec<u8>>, SubTarget);

/// Plain targets sorted, and groups as name → sorted members; checks names are unique.
fn normalize(set: &MatchSet) -> (Vec<SubTarget>, BTreeMap<Vec<u8>, Vec<SubTarget>>) {
    let mut plain = set.plain.clone();
    plain.sort();
    let mut groups = BTreeMap::new();
    for group in &set.groups {
        assert!(!group.members.is_empty(), "a reported group has members");
        let mut members = group.members.clone();
        members.sort();
        let previous = groups.insert(group.name.to_vec(), members);
        assert!(previous.is_none(), "one entry per queue name");
    }
    (plain, groups)
}

/// What the model says a subject reaches.
fn expected(
    subs: &BTreeSet<Sub>,
    subject: &[u8],
) -> (Vec<SubTarget>, BTreeMap<Vec<u8>, Vec<SubTarget>>) {
    let mut plain = Vec::new();
    let mut groups: BTreeMap<Vec<u8>, Vec<SubTarget>> = BTreeMap::new();
    for (pattern, queue, target) in subs {
        if !subject::matches(pattern, subject) {
            continue;
        }
        match queue {
            None => plain.push(*target),
            Some(name) => groups.entry(name.clone()).or_default().push(*target),
        }
    }
    plain.sort();
    for members in groups.values_mut() {
        members.sort();
    }
    (plain, groups)
}

/// Literal tokens for patterns and subjects; a test uses the first few.
static TOKENS: [&str; 24] = [
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s",
    "t", "u", "v", "w", "x",
];

/// A valid pattern: tokens from the first `width` of [`TOKENS`] plus `*`, optionally ending in
/// `>`.
fn pattern(width: usize) -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![3 => prop::sample::select(&TOKENS[..width]), 1 => Just("*")];
    (proptest::collection::vec(token, 0..4), any::<bool>()).prop_filter_map(
        "a pattern has at least one token",
        |(tokens, full)| {
            let mut tokens: Vec<&str> = tokens;
            if full {
                tokens.push(">");
            }
            (!tokens.is_empty()).then(|| tokens.join(".").into_bytes())
        },
    )
}

/// A literal subject over the same alphabet.
fn literal(width: usize, max_tokens: usize) -> impl Strategy<Value = Vec<u8>> {
    let token = prop::sample::select(&TOKENS[..width]);
    proptest::collection::vec(token, 1..=max_tokens)
        .prop_map(|tokens| tokens.join(".").into_bytes())
}

/// A subscription: pattern, optional queue (`q1`, `q2`), target among `conns` connections.
fn sub(patterns: BoxedStrategy<Vec<u8>>, conns: u64) -> impl Strategy<Value = Sub> {
    let queue = prop_oneof![
        Just(None),
        Just(Some(b"q1".to_vec())),
        Just(Some(b"q2".to_vec()))
    ];
    (patterns, queue, 0u16..2, 0..conns, 0u32..3)
        .prop_map(|(p, q, shard, conn, sid)| (p, q, SubTarget { shard, conn, sid }))
}

/// Few tokens, few targets: dense overlaps between wildcards.
fn narrow_sub() -> impl Strategy<Value = Sub> {
    sub(pattern(3).boxed(), 3)
}

/// Many tokens and targets, and half the subscriptions on two hot patterns (about 25 per set),
/// so that children maps and subscription sets grow past the small form into hash tries, and
/// shrink back as removals go on.
fn wide_sub() -> impl Strategy<Value = Sub> {
    let hot = prop::sample::select(vec![">", "a.*"]).prop_map(|p| p.as_bytes().to_vec());
    sub(prop_oneof![1 => pattern(24), 1 => hot].boxed(), 40)
}

/// Checks table and cache against the model on every subject.
fn check_all(
    table: &RoutingTable,
    cache: &mut MatchCache,
    model: &BTreeSet<Sub>,
    subjects: &[Vec<u8>],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(table.subscription_count(), model.len());
    for subject in subjects {
        let want = expected(model, subject);
        let direct = table.match_subject(subject);
        prop_assert_eq!(&normalize(&direct), &want, "subject {:?}", subject);
        let cached = cache.lookup(table, subject);
        prop_assert_eq!(&*cached, &direct, "cache agrees with the table");
    }
    Ok(())
}

/// Inserts `subs`, checks every subject; removes picks one by one (some twice), checks;
/// removes the rest of the picks in one batch, checks.
fn model_round_trip(
    subs: &[Sub],
    subjects: &[Vec<u8>],
    removals: &[prop::sample::Index],
) -> Result<(), TestCaseError> {
    let table = RoutingTable::new();
    let mut cache = MatchCache::new(8);
    let mut model = BTreeSet::new();
    for (pattern, queue, target) in subs {
        table.insert(pattern, queue.as_deref(), *target);
        model.insert((pattern.clone(), queue.clone(), *target));
    }
    check_all(&table, &mut cache, &model, subjects)?;

    let picks: Vec<Sub> = removals
        .iter()
        .filter_map(|i| subs.get(i.index(subs.len().max(1))).cloned())
        .collect();
    let (single, batch) = picks.split_at(picks.len() / 2);
    for (pattern, queue, target) in single {
        let was_present = model.remove(&(pattern.clone(), queue.clone(), *target));
        prop_assert_eq!(
            table.remove(pattern, queue.as_deref(), *target),
            was_present
        );
    }
    check_all(&table, &mut cache, &model, subjects)?;

    let batch_removed = batch.iter().filter(|item| model.remove(*item)).count();
    let generation = table.generation();
    let removed = table.remove_many(batch.iter().map(|(p, q, t)| (&p[..], q.as_deref(), *t)));
    prop_assert_eq!(removed, batch_removed);
    prop_assert_eq!(table.generation(), generation + u64::from(removed > 0));
    check_all(&table, &mut cache, &model, subjects)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn agrees_with_reference_matcher(
        subs in proptest::collection::vec(narrow_sub(), 0..40),
        subjects in proptest::collection::vec(literal(3, 5), 1..20),
        removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        model_round_trip(&subs, &subjects, &removals)?;
    }

    #[test]
    fn agrees_with_reference_matcher_on_large_maps(
        subs in proptest::collection::vec(wide_sub(), 100..300),
        subjects in proptest::collection::vec(literal(24, 3), 1..30),
        removals in proptest::collection::vec(any::<prop::sample::Index>(), 0..300),
    ) {
        model_round_trip(&subs, &subjects, &removals)?;
    }

    #[test]
    fn arbitrary_bytes_agree_with_reference_matcher(
        pattern in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'.'), Just(b'*'), Just(b'>')], 0..8),
        subject in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'.'), Just(b'*'), Just(b'>')], 0..8),
    ) {
        // Even patterns and subjects the caller should have rejected match like the reference.
        let table = RoutingTable::new();
        let target = SubTarget { shard: 0, conn: 0, sid: 0 };
        table.insert(&pattern, None, target);
        let reached = !table.match_subject(&subject).is_empty();
        prop_assert_eq!(reached, subject::matches(&pattern, &subject));
        prop_assert!(table.remove(&pattern, None, target));
        prop_assert_eq!(table.subscription_count(), 0);
    }
}

/// One writer inserts and removes while a reader matches continuously (directly and through a
/// cache). The reader must always see the subscription inserted before it started, only ever see
/// targets whose pattern matches, and see generations that never go backwards.
#[test]
fn concurrent_writer_and_reader() {
    const ROUNDS: u32 = 3_000;
    let table = Arc::new(RoutingTable::new());
    let stable = SubTarget {
        shard: 0,
        conn: 0,
        sid: 0,
    };
    table.insert(b"s.>", None, stable);
    let done = Arc::new(AtomicBool::new(false));

    let writer = {
        let table = Arc::clone(&table);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            for i in 0..ROUNDS {
                // sid k subscribes to `s.k` (plain) and to `s.*` in queue `q`.
                let k = i % 32;
                let target = SubTarget {
                    shard: 1,
                    conn: u64::from(k) + 1,
                    sid: k,
                };
                let pattern = format!("s.{k}");
                table.insert(pattern.as_bytes(), None, target);
                table.insert(b"s.*", Some(b"q"), target);
                if i % 3 == 0 {
                    table.remove(pattern.as_bytes(), None, target);
                }
                if i % 5 == 0 {
                    table.remove_many([(&b"s.*"[..], Some(&b"q"[..]), target)]);
                }
            }
            done.store(true, Ordering::Release);
        })
    };

    let mut cache = MatchCache::new(16);
    let mut last_generation = 0;
    let mut iterations = 0u64;
    while !done.load(Ordering::Acquire) || iterations < 1_000 {
        let k = (iterations % 32) as u32;
        let subject = format!("s.{k}");
        let generation = table.generation();
        assert!(generation >= last_generation, "generation went backwards");
        last_generation = generation;
        let direct = table.match_subject(subject.as_bytes());
        let cached = cache.lookup(&table, subject.as_bytes());
        for set in [&direct, &*cached] {
            assert!(
                set.plain.contains(&stable),
                "the stable subscription is always seen"
            );
            for target in &set.plain {
                assert!(
                    *target == stable || target.sid == k,
                    "{target:?} on {subject}"
                );
            }
            assert!(set.groups.len() <= 1);
            for group in &set.groups {
                assert_eq!(&*group.name, b"q");
                assert!(!group.members.is_empty());
            }
        }
        iterations += 1;
    }
    writer.join().expect("the writer thread does not panic");
    assert!(table.subscription_count() >= 1);
    // After the writer is done, cache and table agree again.
    for k in 0..32u32 {
        let subject = format!("s.{k}");
        assert_eq!(
            *cache.lookup(&table, subject.as_bytes()),
            table.match_subject(subject.as_bytes())
        );
    }
}
