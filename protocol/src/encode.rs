//! Encoders: each writes one complete frame into a caller's `BytesMut` with checked lengths.
//!
//! The encoders check only what the layout needs (lengths that fit their fields); the subject
//! grammar is checked by [`crate::subject`] where the caller needs it, so that a broker can
//! forward what it already validated without checking it twice.

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::frame::{
    flags, op, ERR_FIXED, HEADER_LEN, HELLO_FIXED, INFO_FIXED, MSG_FIXED, PUB_FIXED, SUB_FIXED,
    UNSUB_LEN,
};
use crate::frame::{HelloFrame, InfoFrame};

fn check_u16(field: &'static str, len: usize) -> Result<u16, EncodeError> {
    u16::try_from(len).map_err(|_| EncodeError::FieldTooLong {
        field,
        len,
        max: u16::MAX as usize,
    })
}

fn check_u32(field: &'static str, len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::FieldTooLong {
        field,
        len,
        max: u32::MAX as usize,
    })
}

fn total(parts: &[usize]) -> Result<u32, EncodeError> {
    let mut sum = 0usize;
    for &p in parts {
        sum = sum
            .checked_add(p)
            .ok_or(EncodeError::FrameTooLong { len: usize::MAX })?;
    }
    u32::try_from(sum).map_err(|_| EncodeError::FrameTooLong { len: sum })
}

#[inline]
fn head(dst: &mut BytesMut, len: u32, opc: u8, fl: u8) {
    dst.reserve(len as usize);
    dst.put_u32_le(len);
    dst.put_u8(opc);
    dst.put_u8(fl);
}

/// Length of the PUB frame for these parts, or an error if it cannot be encoded.
///
/// # Errors
/// A field longer than its length field, or a frame over 4 GiB.
pub fn pub_frame_len(
    subject: &[u8],
    reply: &[u8],
    headers: &[u8],
    payload: &[u8],
) -> Result<usize, EncodeError> {
    check_u16("subject", subject.len())?;
    check_u16("reply", reply.len())?;
    check_u32("headers", headers.len())?;
    Ok(total(&[
        PUB_FIXED,
        subject.len(),
        reply.len(),
        headers.len(),
        payload.len(),
    ])? as usize)
}

/// Writes a PUB frame.
///
/// # Errors
/// As [`pub_frame_len`]; nothing is written on error.
#[inline]
pub fn encode_pub(
    dst: &mut BytesMut,
    subject: &[u8],
    reply: &[u8],
    headers: &[u8],
    payload: &[u8],
) -> Result<(), EncodeError> {
    let len = pub_frame_len(subject, reply, headers, payload)? as u32;
    head(dst, len, op::PUB, 0);
    dst.put_u16_le(subject.len() as u16);
    dst.put_u16_le(reply.len() as u16);
    dst.put_u32_le(headers.len() as u32);
    dst.put_slice(subject);
    dst.put_slice(reply);
    dst.put_slice(headers);
    dst.put_slice(payload);
    Ok(())
}

/// Writes a MSG frame from its parts.
///
/// # Errors
/// A field longer than its length field, or a frame over 4 GiB; nothing is written on error.
#[allow(clippy::too_many_arguments)]
pub fn encode_msg(
    dst: &mut BytesMut,
    sid: u32,
    msg_flags: u8,
    subject: &[u8],
    reply: &[u8],
    headers: &[u8],
    payload: &[u8],
) -> Result<(), EncodeError> {
    let sl = check_u16("subject", subject.len())?;
    let rl = check_u16("reply", reply.len())?;
    let hl = check_u32("headers", headers.len())?;
    let len = total(&[
        MSG_FIXED,
        subject.len(),
        reply.len(),
        headers.len(),
        payload.len(),
    ])?;
    head(dst, len, op::MSG, msg_flags);
    dst.put_u32_le(sid);
    dst.put_u16_le(sl);
    dst.put_u16_le(rl);
    dst.put_u32_le(hl);
    dst.put_slice(subject);
    dst.put_slice(reply);
    dst.put_slice(headers);
    dst.put_slice(payload);
    Ok(())
}

/// Writes the MSG head for a delivery of an already decoded PUB frame: the caller then appends
/// `pub_frame[PUB_TAIL_OFFSET - 8..]`, or uses [`encode_msg_from_pub`] which does both.
/// Returns the 10-byte head (`len`, `op`, `flags`, `sid`); its `len` is the PUB's length + 4.
///
/// # Errors
/// A MSG frame over 4 GiB (the PUB was within 4 bytes of the limit).
#[inline]
pub fn msg_head_for_pub(
    sid: u32,
    msg_flags: u8,
    pub_frame_len: usize,
) -> Result<[u8; 10], EncodeError> {
    let len = pub_frame_len
        .checked_add(4)
        .and_then(|l| u32::try_from(l).ok())
        .ok_or(EncodeError::FrameTooLong {
            len: pub_frame_len.saturating_add(4),
        })?;
    let mut h = [0u8; 10];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4] = op::MSG;
    h[5] = msg_flags;
    h[6..10].copy_from_slice(&sid.to_le_bytes());
    Ok(h)
}

/// Writes a MSG frame for subscription `sid` carrying the message of `pub_frame`, a complete
/// PUB frame the caller has decoded. The PUB's length fields and tail are copied as they are:
/// one header write and one `memcpy`.
///
/// # Errors
/// As [`msg_head_for_pub`]; nothing is written on error.
#[inline]
pub fn encode_msg_from_pub(
    dst: &mut BytesMut,
    sid: u32,
    msg_flags: u8,
    pub_frame: &[u8],
) -> Result<(), EncodeError> {
    let h = msg_head_for_pub(sid, msg_flags, pub_frame.len())?;
    dst.reserve(pub_frame.len() + 4);
    dst.put_slice(&h);
    dst.put_slice(&pub_frame[HEADER_LEN..]);
    Ok(())
}

/// Writes a SUB frame.
///
/// # Errors
/// A subject or queue longer than 65,535 bytes; nothing is written on error.
pub fn encode_sub(
    dst: &mut BytesMut,
    sid: u32,
    subject: &[u8],
    queue: &[u8],
) -> Result<(), EncodeError> {
    let sl = check_u16("subject", subject.len())?;
    let ql = check_u16("queue", queue.len())?;
    let len = total(&[SUB_FIXED, subject.len(), queue.len()])?;
    head(dst, len, op::SUB, 0);
    dst.put_u32_le(sid);
    dst.put_u16_le(sl);
    dst.put_u16_le(ql);
    dst.put_slice(subject);
    dst.put_slice(queue);
    Ok(())
}

/// Writes an UNSUB frame (`max_msgs == 0`: now).
pub fn encode_unsub(dst: &mut BytesMut, sid: u32, max_msgs: u32) {
    head(dst, UNSUB_LEN as u32, op::UNSUB, 0);
    dst.put_u32_le(sid);
    dst.put_u32_le(max_msgs);
}

/// Writes a PING frame.
pub fn encode_ping(dst: &mut BytesMut) {
    head(dst, HEADER_LEN as u32, op::PING, 0);
}

/// Writes a PONG frame.
pub fn encode_pong(dst: &mut BytesMut) {
    head(dst, HEADER_LEN as u32, op::PONG, 0);
}

/// Writes an ERR frame. A message longer than 65,535 bytes is cut (at a UTF-8 boundary).
pub fn encode_err(dst: &mut BytesMut, code: u16, fatal: bool, message: &str) {
    let mut end = message.len().min(u16::MAX as usize);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let m = &message.as_bytes()[..end];
    head(
        dst,
        (ERR_FIXED + m.len()) as u32,
        op::ERR,
        if fatal { flags::ERR_FATAL } else { 0 },
    );
    dst.put_u16_le(code);
    dst.put_u16_le(m.len() as u16);
    dst.put_slice(m);
}

/// Writes a HELLO frame.
///
/// # Errors
/// A name or token longer than 65,535 bytes; nothing is written on error.
pub fn encode_hello(dst: &mut BytesMut, hello: &HelloFrame<'_>) -> Result<(), EncodeError> {
    let nl = check_u16("name", hello.name.len())?;
    let tl = check_u16("token", hello.token.len())?;
    let ext = !hello.public_key.is_empty() || !hello.signature.is_empty();
    let pl = check_u16("public_key", hello.public_key.len())?;
    let sl = check_u16("signature", hello.signature.len())?;
    let ext_len = if ext {
        4 + hello.public_key.len() + hello.signature.len()
    } else {
        0
    };
    let len = total(&[HELLO_FIXED, hello.name.len(), hello.token.len(), ext_len])?;
    head(
        dst,
        len,
        op::HELLO,
        if ext { flags::HELLO_AUTH_EXT } else { 0 },
    );
    dst.put_u16_le(hello.version);
    dst.put_u32_le(hello.features);
    dst.put_u16_le(nl);
    dst.put_u16_le(tl);
    dst.put_slice(hello.name);
    dst.put_slice(hello.token);
    if ext {
        dst.put_u16_le(pl);
        dst.put_u16_le(sl);
        dst.put_slice(hello.public_key);
        dst.put_slice(hello.signature);
    }
    Ok(())
}

/// Writes an INFO frame.
///
/// # Errors
/// A server id or nonce longer than 65,535 bytes; nothing is written on error.
pub fn encode_info(dst: &mut BytesMut, info: &InfoFrame<'_>) -> Result<(), EncodeError> {
    let sl = check_u16("server_id", info.server_id.len())?;
    let nl = check_u16("nonce", info.nonce.len())?;
    let len = total(&[INFO_FIXED, info.server_id.len(), info.nonce.len()])?;
    head(dst, len, op::INFO, 0);
    dst.put_u16_le(info.version);
    dst.put_u32_le(info.features);
    dst.put_u32_le(info.max_payload);
    dst.put_u16_le(info.shard_count);
    dst.put_u16_le(info.shard_id);
    dst.put_u64_le(info.client_id);
    dst.put_u16_le(sl);
    dst.put_u16_le(nl);
    dst.put_slice(info.server_id);
    dst.put_slice(info.nonce);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_checks() {
        assert_eq!(check_u16("f", 65_535), Ok(u16::MAX));
        assert_eq!(
            check_u16("f", 65_536),
            Err(EncodeError::FieldTooLong {
                field: "f",
                len: 65_536,
                max: 65_535
            })
        );
        assert_eq!(check_u32("f", u32::MAX as usize), Ok(u32::MAX));
        assert!(check_u32("f", u32::MAX as usize + 1).is_err());
        assert_eq!(total(&[6, 8, 0]), Ok(14));
        assert_eq!(
            total(&[u32::MAX as usize, 1]),
            Err(EncodeError::FrameTooLong {
                len: u32::MAX as usize + 1
            })
        );
        assert_eq!(
            total(&[usize::MAX, 1]),
            Err(EncodeError::FrameTooLong { len: usize::MAX })
        );
    }

    #[test]
    fn msg_head_for_pub_layout_and_limit() {
        let h = msg_head_for_pub(0x0403_0201, flags::MSG_NO_RESPONDERS, 20).expect("small");
        assert_eq!(h, [24, 0, 0, 0, op::MSG, 0x01, 0x01, 0x02, 0x03, 0x04]);
        // The largest PUB whose MSG still fits the 32-bit length field.
        let max_pub = u32::MAX as usize - 4;
        let h = msg_head_for_pub(1, 0, max_pub).expect("fits exactly");
        assert_eq!(&h[0..4], &u32::MAX.to_le_bytes());
        assert_eq!(
            msg_head_for_pub(1, 0, max_pub + 1),
            Err(EncodeError::FrameTooLong {
                len: u32::MAX as usize + 1
            })
        );
        assert!(msg_head_for_pub(1, 0, usize::MAX).is_err());
    }

    #[test]
    fn fixed_size_frames() {
        let mut b = BytesMut::new();
        encode_ping(&mut b);
        encode_pong(&mut b);
        encode_unsub(&mut b, 0x0102_0304, 0x0a0b_0c0d);
        assert_eq!(
            &b[..],
            &[
                6,
                0,
                0,
                0,
                op::PING,
                0, //
                6,
                0,
                0,
                0,
                op::PONG,
                0, //
                14,
                0,
                0,
                0,
                op::UNSUB,
                0,
                4,
                3,
                2,
                1,
                0x0d,
                0x0c,
                0x0b,
                0x0a,
            ]
        );
    }
}
