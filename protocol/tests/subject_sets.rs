//! Property tests of the subject-set relations used by permissions: `covers(a, b)` must say
//! exactly whether every subject `b` matches is matched by `a`, and `intersects(a, b)` whether
//! some subject is matched by both — checked against `matches` over every subject short enough
//! to tell (patterns of up to 3 tokens, subjects of up to 4 tokens over a 3-letter alphabet).

use agentwire_protocol::subject::{covers, intersects, matches};
use proptest::prelude::*;

/// Every subject of 1..=4 tokens over {a, b, c} (`c` stands for any token no pattern names).
fn subjects() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut layer: Vec<String> = vec![String::new()];
    for _ in 0..4 {
        let mut next = Vec::new();
        for p in &layer {
            for t in ["a", "b", "c"] {
                next.push(if p.is_empty() {
                    t.to_owned()
                } else {
                    format!("{p}.{t}")
                });
            }
        }
        out.extend(next.iter().cloned());
        layer = next;
    }
    out
}

/// A valid pattern of 1..=3 tokens from {a, b, *}, optionally ending in `>`.
fn pattern() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(vec!["a", "b", "*"]), 0..=2),
        any::<bool>(),
    )
        .prop_filter_map("at least one token", |(mut toks, tail)| {
            if tail {
                toks.push(">");
            }
            if toks.is_empty() {
                return None;
            }
            Some(toks.join("."))
        })
}

proptest! {
    #[test]
    fn covers_and_intersects_agree_with_matches(a in pattern(), b in pattern()) {
        let all = subjects();
        let want_covers = all
            .iter()
            .all(|s| !matches(b.as_bytes(), s.as_bytes()) || matches(a.as_bytes(), s.as_bytes()));
        let want_meets = all
            .iter()
            .any(|s| matches(a.as_bytes(), s.as_bytes()) && matches(b.as_bytes(), s.as_bytes()));
        prop_assert_eq!(covers(a.as_bytes(), b.as_bytes()), want_covers, "covers({}, {})", a, b);
        prop_assert_eq!(intersects(a.as_bytes(), b.as_bytes()), want_meets, "intersects({}, {})", a, b);
    }
}
