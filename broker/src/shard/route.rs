//! Where a published message goes: every plain match and one member of each queue group (by
//! load or round robin), delivered on this shard or staged for another; and the no-responders
//! answer to a request that matched nobody.

use agentwire_protocol::{self as proto, flags};
use bytes::{Bytes, BytesMut};

use super::conn::TRACK_REPLY;
use super::remote::Stash;
use super::Shard;
use crate::config::RoutingPolicy;
use crate::routing::SubTarget;

/// Delivers one message (the PUB frame at `at..at + len` of `src`) to every plain match and
/// one member of each queue group: by load (power of two choices) unless the policy is round
/// robin. A request (`request`: it has a reply subject) routed by load is counted against its
/// member until the member publishes again (its reply), which is timed.
#[allow(clippy::too_many_arguments)]
pub(super) fn route(
    shard: &Shard,
    matches: &crate::routing::MatchSet,
    msg_flags: u8,
    request: bool,
    src: &Bytes,
    at: usize,
    len: usize,
    stash: &mut Stash,
) {
    for t in &matches.plain {
        deliver(shard, *t, msg_flags, src, at, len, stash);
    }
    let by_load = shard.global.config.admin.routing == RoutingPolicy::Load;
    for g in &matches.groups {
        let n = g.members.len();
        if n == 0 {
            continue;
        }
        // A request is tracked (round trip per component, load) even to a lone member.
        if by_load && (n > 1 || request) {
            let (i, tracked) = if request {
                shard.choose_member(&g.members, true)
            } else {
                (
                    shard.sticky_member(g as *const _ as usize, &g.members),
                    false,
                )
            };
            let f = if tracked {
                msg_flags | TRACK_REPLY
            } else {
                msg_flags
            };
            if deliver(shard, g.members[i], f, src, at, len, stash) {
                continue;
            }
            if tracked {
                shard.untrack(g.members[i].conn);
            }
        }
        let start = shard.rr.get();
        shard.rr.set(start.wrapping_add(1));
        // Try members in turn from the cursor until one takes it (a local member that is
        // closing refuses; a remote one is assumed to take it).
        for k in 0..n {
            let t = g.members[(start as usize + k) % n];
            if deliver(shard, t, msg_flags, src, at, len, stash) {
                break;
            }
        }
    }
}

fn deliver(
    shard: &Shard,
    t: SubTarget,
    msg_flags: u8,
    src: &Bytes,
    at: usize,
    len: usize,
    stash: &mut Stash,
) -> bool {
    if t.shard == shard.id {
        shard.deliver_local(t.conn, t.sid, msg_flags, &src[at..at + len])
    } else {
        shard.stage_remote(t.shard, src, at, len, t.conn, t.sid, msg_flags, stash);
        true
    }
}

/// A request matched no subscriber: tell the requester with an empty MSG flagged
/// NO_RESPONDERS on its reply subject.
pub(super) fn no_responders(shard: &Shard, reply: &[u8], stash: &mut Stash) {
    let mut b = BytesMut::with_capacity(16 + reply.len());
    if proto::encode_pub(&mut b, reply, b"", b"", b"").is_err() {
        return;
    }
    let frame = b.freeze();
    let matches = shard
        .cache
        .borrow_mut()
        .lookup(&shard.global.routing, reply);
    route(
        shard,
        &matches,
        flags::MSG_NO_RESPONDERS,
        false,
        &frame,
        0,
        frame.len(),
        stash,
    );
}
