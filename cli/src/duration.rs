//! The duration flags' parser, shared by `serve` (`--metrics-retention`), `agent` and
//! `config set --bake`: `30d`, `12h`, `15m`, `3600s` or seconds.

/// Parses `30d`, `12h`, `15m`, `3600s` or a bare number of seconds.
pub(crate) fn parse_duration_s(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 's')) => (&s[..i], 1),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| n.saturating_mul(mult))
        .ok_or_else(|| format!("invalid duration {s:?} (e.g. 30d, 12h, 15m, 3600s)"))
}
