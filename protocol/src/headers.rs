//! Message headers: an ordered list of (name, value) pairs in the `headers` part of PUB/MSG.
//!
//! ```text
//! repeated: | name_len: u16 | name | value_len: u16 | value |
//! ```
//!
//! Names are 1..=255 bytes of printable ASCII other than `:`; values are any bytes up to 65,535.
//! A name may appear more than once; order is kept. The broker forwards headers as opaque bytes;
//! clients encode and decode them with this module.

use bytes::{BufMut, BytesMut};

/// Why a header block is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The block ends inside an entry.
    #[error("header block truncated at byte {position}")]
    Truncated {
        /// Where the incomplete entry starts.
        position: usize,
    },
    /// A name that is empty, too long, or holds a byte outside printable ASCII or a `:`.
    #[error("invalid header name at byte {position}")]
    BadName {
        /// Where the name starts.
        position: usize,
    },
    /// A value longer than 65,535 bytes (encoding only).
    #[error("header value of {len} bytes is longer than 65535")]
    ValueTooLong {
        /// Its length.
        len: usize,
    },
}

/// Longest header name.
pub const MAX_HEADER_NAME_LEN: usize = 255;

fn name_ok(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_HEADER_NAME_LEN
        && name
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b':')
}

/// Appends one header entry.
///
/// # Errors
/// A bad name or a value over 65,535 bytes; nothing is written on error.
pub fn encode_header(dst: &mut BytesMut, name: &[u8], value: &[u8]) -> Result<(), HeaderError> {
    if !name_ok(name) {
        return Err(HeaderError::BadName {
            position: dst.len(),
        });
    }
    let vl =
        u16::try_from(value.len()).map_err(|_| HeaderError::ValueTooLong { len: value.len() })?;
    dst.reserve(4 + name.len() + value.len());
    dst.put_u16_le(name.len() as u16);
    dst.put_slice(name);
    dst.put_u16_le(vl);
    dst.put_slice(value);
    Ok(())
}

/// Iterates over the entries of an encoded header block, validating as it goes.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    block: &'a [u8],
    pos: usize,
}

/// Iterates over `block`'s entries.
pub fn iter(block: &[u8]) -> HeaderIter<'_> {
    HeaderIter { block, pos: 0 }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), HeaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.block;
        let start = self.pos;
        if start >= b.len() {
            return None;
        }
        let fail = |e| Some(Err(e));
        if b.len() - start < 2 {
            self.pos = b.len();
            return fail(HeaderError::Truncated { position: start });
        }
        let nl = u16::from_le_bytes([b[start], b[start + 1]]) as usize;
        let name_end = start + 2 + nl;
        if name_end + 2 > b.len() {
            self.pos = b.len();
            return fail(HeaderError::Truncated { position: start });
        }
        let name = &b[start + 2..name_end];
        if !name_ok(name) {
            self.pos = b.len();
            return fail(HeaderError::BadName { position: start });
        }
        let vl = u16::from_le_bytes([b[name_end], b[name_end + 1]]) as usize;
        let value_end = name_end + 2 + vl;
        if value_end > b.len() {
            self.pos = b.len();
            return fail(HeaderError::Truncated { position: start });
        }
        self.pos = value_end;
        Some(Ok((name, &b[name_end + 2..value_end])))
    }
}

/// Checks a whole header block.
///
/// # Errors
/// The first bad entry.
pub fn validate(block: &[u8]) -> Result<(), HeaderError> {
    for entry in iter(block) {
        entry?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = BytesMut::new();
        encode_header(&mut b, b"Trace-Id", b"abc").expect("valid header");
        encode_header(&mut b, b"k", b"").expect("valid header");
        let got: Vec<_> = iter(&b).collect::<Result<_, _>>().expect("valid block");
        assert_eq!(
            got,
            vec![(&b"Trace-Id"[..], &b"abc"[..]), (&b"k"[..], &b""[..])]
        );
    }

    #[test]
    fn rejects_bad() {
        let mut b = BytesMut::new();
        assert!(encode_header(&mut b, b"", b"x").is_err());
        assert!(encode_header(&mut b, b"a:b", b"x").is_err());
        assert!(b.is_empty());
        assert_eq!(validate(&[1]), Err(HeaderError::Truncated { position: 0 }));
        assert_eq!(
            validate(&[1, 0, b'a', 5, 0]),
            Err(HeaderError::Truncated { position: 0 })
        );
        assert_eq!(
            validate(&[1, 0, b' ', 0, 0]),
            Err(HeaderError::BadName { position: 0 })
        );
        assert_eq!(validate(&[]), Ok(()));
    }

    #[test]
    fn truncation_never_panics() {
        let mut b = BytesMut::new();
        encode_header(&mut b, b"name", b"value").expect("valid header");
        for cut in 0..b.len() {
            let _ = validate(&b[..cut]);
        }
    }
}
