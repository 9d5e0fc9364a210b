//! [`Token`]: one literal subject token, as the key of a trie node's children.
//!
//! Every change to the table copies the B-tree nodes on its path, and copying a node clones all
//! of its keys. With `Arc<[u8]>` keys each clone (and later each drop) is an atomic operation,
//! which dominated the cost of an insert. Most tokens are short, so a `Token` stores up to
//! [`INLINE_MAX`] bytes inline (clone = memcpy) and only longer ones behind an `Arc`. It orders,
//! compares and hashes exactly like the byte slice it holds, so maps keyed by `Token` can be
//! searched with a plain `&[u8]`.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Longest token stored inline.
pub(super) const INLINE_MAX: usize = 22;

/// A literal token, inline when short.
#[derive(Clone)]
pub(super) enum Token {
    /// `bytes[..len]` is the token.
    Inline {
        /// Number of bytes used, at most [`INLINE_MAX`].
        len: u8,
        /// The token, zero-padded.
        bytes: [u8; INLINE_MAX],
    },
    /// A token longer than [`INLINE_MAX`].
    Heap(Arc<[u8]>),
}

impl Token {
    /// Stores `token`, inline if it fits.
    pub(super) fn new(token: &[u8]) -> Self {
        match u8::try_from(token.len()) {
            Ok(len) if token.len() <= INLINE_MAX => {
                let mut bytes = [0u8; INLINE_MAX];
                bytes[..token.len()].copy_from_slice(token);
                Token::Inline { len, bytes }
            }
            _ => Token::Heap(Arc::from(token)),
        }
    }

    /// The token's bytes.
    pub(super) fn as_bytes(&self) -> &[u8] {
        match self {
            Token::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Token::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<[u8]> for Token {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Token {}

impl PartialOrd for Token {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Token {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl Hash for Token {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_heap_behave_like_bytes() {
        let short = b"abc".as_slice();
        let exact = [b'x'; INLINE_MAX];
        let long = [b'y'; INLINE_MAX + 1];
        for bytes in [short, &exact[..], &long[..], b""] {
            let token = Token::new(bytes);
            assert_eq!(token.as_bytes(), bytes);
            let borrowed: &[u8] = token.borrow();
            assert_eq!(borrowed, bytes);
        }
        assert!(matches!(Token::new(&exact), Token::Inline { .. }));
        assert!(matches!(Token::new(&long), Token::Heap(_)));
        assert!(Token::new(b"ab") < Token::new(b"abc"));
        assert!(Token::new(&exact) < Token::new(&long));
        assert_eq!(Token::new(b"q"), Token::new(b"q"));
        assert_eq!(format!("{:?}", Token::new(b"a.b")), "\"a.b\"");
    }
}
