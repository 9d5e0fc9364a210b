//! Routing micro-benchmarks: nanoseconds per subject for a lookup in a table of 100,000
//! subscriptions.
//!
//! Two tables:
//! - `literal`: 100,000 literal subscriptions `svc.<s>.node<n>.events` (100 services);
//! - `wildcard`: the same count, 80% literal as above and 20% patterns spread over three
//!   shapes, `svc.<s>.node<n>.*`, `svc.<s>.node<n>.>` and `*.<s>.node<n>.events`, plus one
//!   broad `svc.<s>.*.events` per service (a monitor): a subject then matches its own
//!   subscription and its service's monitor, and the walk has to try every wildcard branch.
//!
//! For each: `RoutingTable::match_subject` (the uncached trie walk) on subjects that match,
//! and on subjects that match nothing; and `MatchCache::lookup` when the subject is cached
//! (the broker's steady state for a hot subject). Each iteration looks up 1,024 subjects.
//!
//! Run with `cargo bench -p agentwire-bench --bench routing` (not part of CI).

use std::hint::black_box;

use agentwire_broker::routing::{MatchCache, RoutingTable, SubTarget};
use criterion::{Criterion, Throughput};

/// Subscriptions per table.
const SUBS: u64 = 100_000;
/// Services (second token) the subjects spread over.
const SERVICES: u64 = 100;
/// Subjects looked up per iteration.
const LOOKUPS: usize = 1024;

fn target(i: u64) -> SubTarget {
    SubTarget {
        shard: (i % 2) as u16,
        conn: i,
        sid: (i % u64::from(u32::MAX)) as u32,
    }
}

fn literal(i: u64) -> String {
    format!("svc.{}.node{}.events", i % SERVICES, i)
}

/// 100,000 literal subscriptions.
fn literal_table() -> RoutingTable {
    let t = RoutingTable::new();
    for i in 0..SUBS {
        t.insert(literal(i).as_bytes(), None, target(i));
    }
    t
}

/// 100,000 subscriptions, one in five a wildcard pattern, plus one monitor per service.
fn wildcard_table() -> RoutingTable {
    let t = RoutingTable::new();
    for i in 0..SUBS {
        let s = i % SERVICES;
        let pattern = match i % 15 {
            0 => format!("svc.{s}.node{i}.*"),
            1 => format!("svc.{s}.node{i}.>"),
            2 => format!("*.{s}.node{i}.events"),
            _ => literal(i),
        };
        t.insert(pattern.as_bytes(), None, target(i));
    }
    for s in 0..SERVICES {
        t.insert(
            format!("svc.{s}.*.events").as_bytes(),
            None,
            target(SUBS + s),
        );
    }
    t
}

/// Subjects that match at least one subscription, spread over the table.
fn hits() -> Vec<Vec<u8>> {
    (0..LOOKUPS as u64)
        .map(|k| literal(k * (SUBS / LOOKUPS as u64)).into_bytes())
        .collect()
}

/// Subjects that match nothing (their first token is unknown; in the wildcard table the
/// leading `*` patterns still get walked).
fn misses() -> Vec<Vec<u8>> {
    (0..LOOKUPS as u64)
        .map(|k| format!("other.{}.node{k}.events", k % SERVICES).into_bytes())
        .collect()
}

fn bench_table(c: &mut Criterion, name: &str, table: &RoutingTable) {
    let mut g = c.benchmark_group(format!("routing_{name}_100k"));
    g.throughput(Throughput::Elements(LOOKUPS as u64));
    let hit = hits();
    let miss = misses();
    assert!(hit.iter().all(|s| !table.match_subject(s).is_empty()));
    g.bench_function("match_subject_hit", |b| {
        b.iter(|| {
            hit.iter()
                .map(|s| table.match_subject(black_box(s)).delivery_count())
                .sum::<usize>()
        })
    });
    g.bench_function("match_subject_miss", |b| {
        b.iter(|| {
            miss.iter()
                .map(|s| table.match_subject(black_box(s)).delivery_count())
                .sum::<usize>()
        })
    });
    let mut cache = MatchCache::new(16_384);
    for s in &hit {
        cache.lookup(table, s);
    }
    g.bench_function("match_cache_hit", |b| {
        b.iter(|| {
            hit.iter()
                .map(|s| cache.lookup(table, black_box(s)).delivery_count())
                .sum::<usize>()
        })
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let t = literal_table();
    bench_table(c, "literal", &t);
    let t = wildcard_table();
    bench_table(c, "wildcard", &t);
}

/// What `criterion_group!` + `criterion_main!` expand to, without their undocumented `pub fn`.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    routing(&mut c);
    c.final_summary();
}
