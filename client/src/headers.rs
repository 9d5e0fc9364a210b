//! [`Headers`]: an ordered multi-map of header names to byte values.
//!
//! The map is kept in its wire encoding ([`agentwire_protocol::headers`]): publishing copies the
//! block as it is, and a received message's headers are a slice of the frame, checked once on
//! receipt, with no per-entry allocation. Lookups scan the block; header blocks are small.

use std::fmt;

use agentwire_protocol::headers::{self as wire, HeaderError};
use bytes::{Bytes, BytesMut};

/// The header a client stamps on every publish when [`crate::ConnectOptions::stamp_send_time`] is
/// on: the send time in µs since the Unix epoch, read by the broker for its publish → deliver
/// latency histogram.
pub const SENT_AT_HEADER: &str = "Aw-Sent-Us";

/// Message headers: an ordered list of (name, value) entries where a name may repeat.
///
/// Names are 1 to 255 bytes of printable ASCII other than `:`, compared exactly (case matters);
/// values are any bytes up to 65,535.
///
/// ```
/// use agentwire_client::Headers;
/// # fn main() -> Result<(), agentwire_protocol::headers::HeaderError> {
/// let mut h = Headers::new();
/// h.insert("Trace-Id", "4bf92f35")?;
/// h.append("Hop", "edge")?;
/// h.append("Hop", "core")?;
/// assert_eq!(h.get_str("Trace-Id"), Some("4bf92f35"));
/// assert_eq!(h.get_all("Hop").collect::<Vec<_>>(), [&b"edge"[..], b"core"]);
/// assert_eq!(h.len(), 3);
/// # Ok(()) }
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// The encoded block; always valid (checked or built entry by entry).
    block: Bytes,
}

impl Headers {
    /// An empty header map.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Wraps an encoded header block (as found in a PUB or MSG frame) after checking it.
    ///
    /// # Errors
    /// The first malformed entry.
    pub fn from_encoded(block: Bytes) -> Result<Headers, HeaderError> {
        wire::validate(&block)?;
        Ok(Headers { block })
    }

    /// The encoded block, as it goes on the wire.
    pub fn as_encoded(&self) -> &[u8] {
        &self.block
    }

    /// Adds an entry after the existing ones, keeping other entries with the same name.
    ///
    /// # Errors
    /// An invalid name or a value over 65,535 bytes; the map is unchanged then.
    pub fn append(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), HeaderError> {
        let mut block = self.take_mut();
        // The encoder writes nothing on error, so the block is intact either way.
        let res = wire::encode_header(&mut block, name.as_bytes(), value.as_ref());
        self.block = block.freeze();
        res
    }

    /// Sets `name` to `value`: removes every entry named `name`, then appends this one.
    ///
    /// # Errors
    /// An invalid name or a value over 65,535 bytes; the map is unchanged then.
    pub fn insert(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), HeaderError> {
        let mut block = BytesMut::with_capacity(self.block.len() + name.len() + 4);
        for (n, v) in self.iter() {
            if n != name {
                wire::encode_header(&mut block, n.as_bytes(), v)?;
            }
        }
        wire::encode_header(&mut block, name.as_bytes(), value.as_ref())?;
        self.block = block.freeze();
        Ok(())
    }

    /// Removes every entry named `name`; returns how many there were.
    pub fn remove(&mut self, name: &str) -> usize {
        if self.get(name).is_none() {
            return 0;
        }
        let mut removed = 0;
        let mut block = BytesMut::with_capacity(self.block.len());
        for (n, v) in self.iter() {
            if n == name {
                removed += 1;
            } else {
                wire::encode_header(&mut block, n.as_bytes(), v).expect(
                    "entries of a valid block re-encode: their name and value were checked",
                );
            }
        }
        self.block = block.freeze();
        removed
    }

    /// The value of the first entry named `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The value of the first entry named `name`, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The values of every entry named `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Every entry in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: wire::iter(&self.block),
        }
    }

    /// The number of entries (repeated names count each time).
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
    }

    /// Takes the block out for editing, without copying when this map holds the only reference.
    fn take_mut(&mut self) -> BytesMut {
        match std::mem::take(&mut self.block).try_into_mut() {
            Ok(b) => b,
            Err(shared) => BytesMut::from(&shared[..]),
        }
    }
}

/// Iterator over the entries of [`Headers`]: `(name, value)`.
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    inner: wire::HeaderIter<'a>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        // The block was validated when the map was built, so entries are well formed and names
        // are printable ASCII; stop at anything else rather than panic.
        let (name, value) = self.inner.next()?.ok()?;
        Some((std::str::from_utf8(name).ok()?, value))
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned())),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_multimap() {
        let mut h = Headers::new();
        assert!(h.is_empty());
        h.append("a", "1").expect("valid header");
        h.append("b", "2").expect("valid header");
        h.append("a", "3").expect("valid header");
        assert_eq!(h.len(), 3);
        assert_eq!(h.get("a"), Some(&b"1"[..]));
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), [&b"1"[..], b"3"]);
        assert_eq!(h.get("A"), None, "names are case sensitive");
        let order: Vec<_> = h.iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["a", "b", "a"]);
    }

    #[test]
    fn insert_replaces_all() {
        let mut h = Headers::new();
        h.append("k", "1").expect("valid header");
        h.append("x", "y").expect("valid header");
        h.append("k", "2").expect("valid header");
        h.insert("k", "3").expect("valid header");
        assert_eq!(h.get_all("k").collect::<Vec<_>>(), [&b"3"[..]]);
        assert_eq!(h.get_str("x"), Some("y"));
        assert_eq!(h.remove("k"), 1);
        assert_eq!(h.remove("k"), 0);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn invalid_entries_leave_map_unchanged() {
        let mut h = Headers::new();
        h.append("ok", "v").expect("valid header");
        let before = h.clone();
        assert!(h.append("bad:name", "v").is_err());
        assert!(h.append("", "v").is_err());
        assert!(h.append("sp ace", "v").is_err());
        assert!(h.insert("bad:name", "v").is_err());
        assert!(h.append("big", vec![0u8; 70_000]).is_err());
        assert_eq!(h, before);
    }

    #[test]
    fn round_trips_through_the_wire_block() {
        let mut h = Headers::new();
        h.append("Trace-Id", [0u8, 255, 7]).expect("valid header");
        h.append("empty", "").expect("valid header");
        let block = Bytes::copy_from_slice(h.as_encoded());
        let back = Headers::from_encoded(block).expect("valid block");
        assert_eq!(back, h);
        assert_eq!(back.get("Trace-Id"), Some(&[0u8, 255, 7][..]));
        assert_eq!(back.get_str("Trace-Id"), None, "not UTF-8");
        assert_eq!(back.get("empty"), Some(&b""[..]));
        assert!(Headers::from_encoded(Bytes::from_static(&[3, 0, b'a'])).is_err());
    }

    #[test]
    fn shared_block_is_copied_on_edit() {
        let mut a = Headers::new();
        a.append("k", "v").expect("valid header");
        let b = a.clone();
        a.append("k2", "v2").expect("valid header");
        assert_eq!(b.len(), 1);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn debug_lists_entries() {
        let mut h = Headers::new();
        h.append("k", "v").expect("valid header");
        assert_eq!(format!("{h:?}"), r#"[("k", "v")]"#);
    }
}
