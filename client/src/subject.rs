//! [`Subject`]: a cheap, `Bytes`-backed string for subjects of received messages.
//!
//! A received message's subject and reply are slices of the frame the reader took off the
//! socket, so building a [`crate::Message`] copies nothing. The bytes are checked once, when the
//! `Subject` is built; reading them as `&str` afterwards is a fast re-check of bytes already known
//! to be valid (there is no `unsafe` in this crate to skip it).
//!
//! Also [`new_inbox`]: a fresh, unique subject for replies.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

use bytes::Bytes;
use rand::distributions::Alphanumeric;
use rand::Rng;

/// A subject string backed by [`Bytes`]: cloning it is a reference-count increment.
///
/// Subjects received from the server are printable ASCII (checked on receipt); one built from a
/// `&str` or `String` holds any UTF-8. Compares, hashes and orders like the `str` it holds.
///
/// ```
/// use agentwire_client::Subject;
/// let s = Subject::from_static("orders.eu.created");
/// assert_eq!(s, "orders.eu.created");
/// assert_eq!(s.split('.').count(), 3);
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subject(Bytes);

impl Subject {
    /// A subject from a static string, without copying.
    pub const fn from_static(s: &'static str) -> Subject {
        Subject(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps bytes received from the network if they are ASCII (what the subject grammar
    /// allows); `None` otherwise.
    pub(crate) fn from_wire(b: Bytes) -> Option<Subject> {
        b.is_ascii().then_some(Subject(b))
    }

    /// The subject as a string slice.
    #[inline]
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a Subject holds UTF-8: checked when it was built")
    }

    /// The subject's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying [`Bytes`].
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Subject {
    type Target = str;

    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Subject {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Subject {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Borrow<str> for Subject {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for Subject {
    // Hash as the `str` does, so that `Borrow<str>` lookups in maps agree.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl From<&str> for Subject {
    fn from(s: &str) -> Subject {
        Subject(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Subject {
    fn from(s: String) -> Subject {
        Subject(Bytes::from(s.into_bytes()))
    }
}

impl From<Subject> for String {
    fn from(s: Subject) -> String {
        s.as_str().to_owned()
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Subject {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for Subject {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<String> for Subject {
    fn eq(&self, other: &String) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<Subject> for str {
    fn eq(&self, other: &Subject) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<Subject> for &str {
    fn eq(&self, other: &Subject) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

/// A new unique subject for replies: `_INBOX.` and 22 random alphanumeric characters (about 131
/// bits).
pub(crate) fn new_inbox() -> String {
    let token: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(22)
        .map(char::from)
        .collect();
    format!("_INBOX.{token}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn compares_like_str() {
        let s = Subject::from("a.b");
        assert_eq!(s, "a.b");
        assert_eq!("a.b", s);
        assert_eq!(s, String::from("a.b"));
        assert_eq!(s.as_str(), "a.b");
        assert_eq!(&*s, "a.b");
        assert_eq!(s.to_string(), "a.b");
        assert_eq!(format!("{s:?}"), "\"a.b\"");
        let (a, b) = (Subject::from("a"), Subject::from("b"));
        assert!(a < b);
    }

    #[test]
    fn borrow_lookup_agrees_with_hash() {
        let mut m = HashMap::new();
        m.insert(Subject::from_static("x.y"), 1);
        assert_eq!(m.get("x.y"), Some(&1));
    }

    #[test]
    fn wire_bytes_must_be_ascii() {
        assert!(Subject::from_wire(Bytes::from_static(b"ok.subject")).is_some());
        assert!(Subject::from_wire(Bytes::from_static(b"caf\xc3\xa9")).is_none());
        assert!(Subject::from_wire(Bytes::from_static(b"\xff")).is_none());
    }

    #[test]
    fn clones_share_bytes() {
        let s = Subject::from(String::from("shared.subject"));
        let t = s.clone();
        assert_eq!(s.as_bytes().as_ptr(), t.as_bytes().as_ptr());
        assert_eq!(t.into_bytes(), Bytes::from_static(b"shared.subject"));
    }
}
