//! Subject grammar: validation of subjects, subscription patterns and queue group names, and a
//! reference matcher.
//!
//! A subject is a sequence of tokens separated by `.`. Each token is one or more bytes of
//! printable ASCII (0x21..=0x7E) other than `.`. In a subscription pattern a token may be `*`
//! (exactly one token) and the last token may be `>` (one or more tokens). Publish and reply
//! subjects are literal: no wildcard tokens. `*` and `>` inside a longer token are errors, so
//! that a pattern means the same thing on every server.

use crate::error::SubjectError;

/// Longest subject or pattern, in bytes.
pub const MAX_SUBJECT_LEN: usize = 1024;
/// Most tokens in one subject or pattern.
pub const MAX_TOKENS: usize = 128;
/// Longest queue group name, in bytes.
pub const MAX_QUEUE_LEN: usize = 255;

/// Whether a valid pattern holds wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternKind {
    /// No wildcard tokens: it matches exactly one subject.
    Literal,
    /// At least one `*` or a trailing `>`.
    Wildcard,
}

/// Validates a subscription pattern (wildcards allowed).
///
/// # Errors
/// The first rule the pattern breaks, with the byte offset where it breaks it.
pub fn validate_pattern(s: &[u8]) -> Result<PatternKind, SubjectError> {
    if s.is_empty() {
        return Err(SubjectError::Empty);
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong {
            len: s.len(),
            max: MAX_SUBJECT_LEN,
        });
    }
    let mut kind = PatternKind::Literal;
    let mut tokens = 0usize;
    let mut start = 0usize;
    loop {
        let end = s[start..]
            .iter()
            .position(|&b| b == b'.')
            .map_or(s.len(), |p| start + p);
        let token = &s[start..end];
        tokens += 1;
        if tokens > MAX_TOKENS {
            return Err(SubjectError::TooManyTokens { max: MAX_TOKENS });
        }
        if token.is_empty() {
            return Err(SubjectError::EmptyToken { position: start });
        }
        for (i, &b) in token.iter().enumerate() {
            if !(0x21..=0x7e).contains(&b) {
                return Err(SubjectError::BadByte {
                    byte: b,
                    position: start + i,
                });
            }
            if (b == b'*' || b == b'>') && token.len() > 1 {
                return Err(SubjectError::BadWildcard {
                    position: start + i,
                    reason: "a wildcard must be a whole token",
                });
            }
        }
        match token {
            b"*" => kind = PatternKind::Wildcard,
            b">" => {
                if end != s.len() {
                    return Err(SubjectError::BadWildcard {
                        position: start,
                        reason: "`>` must be the last token",
                    });
                }
                kind = PatternKind::Wildcard;
            }
            _ => {}
        }
        if end == s.len() {
            return Ok(kind);
        }
        start = end + 1;
        if start == s.len() {
            return Err(SubjectError::EmptyToken { position: start });
        }
    }
}

/// Validates a literal subject (publish and reply subjects).
///
/// # Errors
/// As [`validate_pattern`], plus [`SubjectError::WildcardNotAllowed`] for a wildcard token.
pub fn validate_literal(s: &[u8]) -> Result<(), SubjectError> {
    match validate_pattern(s)? {
        PatternKind::Literal => Ok(()),
        PatternKind::Wildcard => Err(SubjectError::WildcardNotAllowed),
    }
}

/// Validates a queue group name: 1..=255 bytes of printable ASCII, no wildcard characters.
///
/// # Errors
/// The first rule the name breaks.
pub fn validate_queue(q: &[u8]) -> Result<(), SubjectError> {
    if q.is_empty() {
        return Err(SubjectError::Empty);
    }
    if q.len() > MAX_QUEUE_LEN {
        return Err(SubjectError::TooLong {
            len: q.len(),
            max: MAX_QUEUE_LEN,
        });
    }
    for (i, &b) in q.iter().enumerate() {
        if !(0x21..=0x7e).contains(&b) {
            return Err(SubjectError::BadByte {
                byte: b,
                position: i,
            });
        }
        if b == b'*' || b == b'>' {
            return Err(SubjectError::BadWildcard {
                position: i,
                reason: "queue names may not hold wildcards",
            });
        }
    }
    Ok(())
}

/// Splits a subject into its tokens.
pub fn tokens(s: &[u8]) -> impl Iterator<Item = &[u8]> {
    s.split(|&b| b == b'.')
}

/// Reference matcher: does `pattern` match the literal `subject`? Both are assumed valid. The
/// broker's routing table must agree with this function (its property tests check that).
pub fn matches(pattern: &[u8], subject: &[u8]) -> bool {
    let mut p = tokens(pattern);
    let mut s = tokens(subject);
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(b">"), Some(_)) => return true,
            (Some(b"*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            _ => return false,
        }
    }
}

/// Does pattern `a` match every subject pattern `b` matches (`b`'s subjects ⊆ `a`'s)? Both are
/// assumed valid. Used for subscribe permissions: a SUB for `b` is allowed by an allow entry `a`
/// that covers it.
pub fn covers(a: &[u8], b: &[u8]) -> bool {
    let mut p = tokens(a);
    let mut q = tokens(b);
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(b">"), Some(_)) => return true,
            (_, Some(b">")) => return false,
            (Some(b"*"), Some(_)) => {}
            (Some(pt), Some(qt)) if pt == qt && qt != b"*" => {}
            _ => return false,
        }
    }
}

/// Is there a subject both patterns match? Both are assumed valid. Used for deny lists: a SUB
/// whose pattern could receive a denied subject is refused.
pub fn intersects(a: &[u8], b: &[u8]) -> bool {
    let mut p = tokens(a);
    let mut q = tokens(b);
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(b">"), Some(_)) | (Some(_), Some(b">")) => return true,
            (Some(b"*"), Some(_)) | (Some(_), Some(b"*")) => {}
            (Some(pt), Some(qt)) if pt == qt => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_and_intersects() {
        assert!(covers(b"a.>", b"a.b"));
        assert!(covers(b"a.>", b"a.*.c"));
        assert!(covers(b"a.>", b"a.>"));
        assert!(!covers(b"a.>", b"a"));
        assert!(!covers(b"a.*", b"a.>"));
        assert!(covers(b"a.*", b"a.*"));
        assert!(covers(b"a.*", b"a.b"));
        assert!(!covers(b"a.b", b"a.*"));
        assert!(covers(b">", b"x.y.z"));
        assert!(!covers(b"a.b", b"a.b.c"));
        assert!(intersects(b"a.*", b"*.b"));
        assert!(intersects(b"a.>", b"*.b.c"));
        assert!(intersects(b">", b"a"));
        assert!(!intersects(b"a.*", b"b.*"));
        assert!(!intersects(b"a.*", b"a.b.c"));
        assert!(!intersects(b"a", b"a.>"));
    }

    #[test]
    fn valid_patterns() {
        assert_eq!(validate_pattern(b"a"), Ok(PatternKind::Literal));
        assert_eq!(validate_pattern(b"a.b.c"), Ok(PatternKind::Literal));
        assert_eq!(validate_pattern(b"a.*.c"), Ok(PatternKind::Wildcard));
        assert_eq!(validate_pattern(b">"), Ok(PatternKind::Wildcard));
        assert_eq!(validate_pattern(b"a.>"), Ok(PatternKind::Wildcard));
        assert_eq!(validate_pattern(b"*.*"), Ok(PatternKind::Wildcard));
        assert_eq!(validate_pattern(b"_INBOX.x1-Y_2"), Ok(PatternKind::Literal));
    }

    #[test]
    fn invalid_patterns() {
        assert_eq!(validate_pattern(b""), Err(SubjectError::Empty));
        assert_eq!(
            validate_pattern(b"a..b"),
            Err(SubjectError::EmptyToken { position: 2 })
        );
        assert_eq!(
            validate_pattern(b".a"),
            Err(SubjectError::EmptyToken { position: 0 })
        );
        assert_eq!(
            validate_pattern(b"a."),
            Err(SubjectError::EmptyToken { position: 2 })
        );
        assert!(matches!(
            validate_pattern(b"a b"),
            Err(SubjectError::BadByte {
                byte: b' ',
                position: 1
            })
        ));
        assert!(matches!(
            validate_pattern(b"a\x00"),
            Err(SubjectError::BadByte { byte: 0, .. })
        ));
        assert!(matches!(
            validate_pattern(b"a.>.b"),
            Err(SubjectError::BadWildcard { position: 2, .. })
        ));
        assert!(matches!(
            validate_pattern(b"a.b*"),
            Err(SubjectError::BadWildcard { position: 3, .. })
        ));
        let long = vec![b'a'; MAX_SUBJECT_LEN + 1];
        assert!(matches!(
            validate_pattern(&long),
            Err(SubjectError::TooLong { .. })
        ));
        let many = "a.".repeat(MAX_TOKENS) + "a";
        assert!(matches!(
            validate_pattern(many.as_bytes()),
            Err(SubjectError::TooManyTokens { .. })
        ));
    }

    #[test]
    fn literal_rejects_wildcards() {
        assert_eq!(validate_literal(b"a.b"), Ok(()));
        assert_eq!(
            validate_literal(b"a.*"),
            Err(SubjectError::WildcardNotAllowed)
        );
        assert_eq!(
            validate_literal(b">"),
            Err(SubjectError::WildcardNotAllowed)
        );
    }

    #[test]
    fn queue_names() {
        assert_eq!(validate_queue(b"workers"), Ok(()));
        assert_eq!(validate_queue(b""), Err(SubjectError::Empty));
        assert!(validate_queue(b"a b").is_err());
        assert!(validate_queue(b"a*").is_err());
    }

    #[test]
    fn matcher() {
        assert!(matches(b"a.b", b"a.b"));
        assert!(!matches(b"a.b", b"a.c"));
        assert!(matches(b"a.*", b"a.c"));
        assert!(!matches(b"a.*", b"a.c.d"));
        assert!(matches(b"a.>", b"a.c.d"));
        assert!(!matches(b"a.>", b"a"));
        assert!(matches(b">", b"a"));
        assert!(matches(b"*.b.>", b"x.b.y.z"));
        assert!(!matches(b"a.b.c", b"a.b"));
    }
}
