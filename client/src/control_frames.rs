//! The control-plane frames from the server, as the reader hands them over: a refusal ERR for
//! a pending registration, REGISTERED (which starts the heartbeats), CONFIG and DISCOVERED. See
//! `control.rs` for how the exchanges are matched with their answers.

use std::sync::Arc;

use agentwire_protocol::control::{
    decode_control, encode_deregister, ConfigUpdate, Discovered, Registered,
};
use agentwire_protocol::{op, ErrorCode};

use crate::conn::Inner;
use crate::control_state::{RegState, Shared};
use crate::error::{invalid_control, Error, ServerError};
use crate::heartbeat;
use crate::sync::lock;

/// Gives a non-fatal ERR to the pending registration if it answers it: a refusal code, arrived
/// before the PONG of the registration's PING (`pongs_seen` counts every PONG read so far).
/// Returns whether it was taken.
pub(crate) fn on_err(inner: &Inner, err: &ServerError, pongs_seen: u64) -> bool {
    let refusal = matches!(
        err.error_code(),
        Some(
            ErrorCode::InvalidControl
                | ErrorCode::NotRegistered
                | ErrorCode::DuplicateInstance
                | ErrorCode::PermissionDenied
                | ErrorCode::UnknownOp
        )
    );
    if !refusal {
        return false;
    }
    let mut st = lock(&inner.control);
    if !matches!(&st.registration, RegState::Pending(p) if pongs_seen < p.ping_seq) {
        return false;
    }
    if let RegState::Pending(p) = std::mem::take(&mut st.registration) {
        let _ = p.tx.send(Err(Error::Registration(err.clone())));
    }
    true
}

/// Handles a control frame from the server (REGISTERED, CONFIG, DISCOVERED).
pub(crate) fn on_frame(inner: &Arc<Inner>, frame_op: u8, body: &[u8]) {
    match frame_op {
        op::REGISTERED => on_registered(inner, body),
        op::CONFIG => match decode_control::<ConfigUpdate>(body) {
            Ok(update) => match &lock(&inner.control).registration {
                RegState::Active(shared) => shared.apply_config(update),
                _ => tracing::debug!("ignoring CONFIG on a connection that is not registered"),
            },
            Err(e) => tracing::warn!(error = %e, "ignoring a CONFIG frame that does not validate"),
        },
        op::DISCOVERED => match decode_control::<Discovered>(body) {
            Ok(d) => match lock(&inner.control).discovers.remove(&d.request_id) {
                Some(tx) => {
                    let _ = tx.send(d.instances);
                }
                None => tracing::debug!(
                    request_id = d.request_id,
                    "ignoring DISCOVERED for a discovery no longer waiting"
                ),
            },
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a DISCOVERED frame that does not validate");
            }
        },
        other => tracing::debug!(op = other, "ignoring an unknown op from the server"),
    }
}

fn on_registered(inner: &Arc<Inner>, body: &[u8]) {
    let decoded = decode_control::<Registered>(body);
    let mut st = lock(&inner.control);
    match std::mem::take(&mut st.registration) {
        RegState::Pending(p) => match decoded {
            Ok(registered) => {
                let shared = Arc::new(Shared::new(*p.registration, registered));
                let task = tokio::spawn(heartbeat::run(inner.clone(), shared.clone()));
                *lock(&shared.heartbeat_task) = Some(task.abort_handle());
                st.registration = RegState::Active(shared.clone());
                tracing::debug!(
                    instance_id = %shared.registered.instance_id,
                    heartbeat = ?shared.interval,
                    config_version = shared.registered.config.version,
                    "registered"
                );
                let _ = p.tx.send(Ok(shared));
            }
            Err(e) => {
                // The server may consider the connection registered: its state is unknown.
                tracing::warn!(error = %e, "REGISTERED does not validate");
                st.registration = RegState::Abandoned;
                let _ =
                    p.tx.send(Err(invalid_control("REGISTERED from the server", e)));
            }
        },
        RegState::Abandoned => {
            // The answer to a registration that timed out: undo it on the server.
            tracing::warn!("late REGISTERED after the registration timed out; deregistering");
            let undone = inner.enqueue_control(|b| {
                encode_deregister(b);
                Ok(())
            });
            st.registration = if undone.is_ok() {
                RegState::Idle
            } else {
                RegState::Abandoned
            };
        }
        RegState::Active(shared) => {
            // The answer to the re-registration after a reconnect: take its config if newer.
            match decoded {
                Ok(registered) => {
                    tracing::debug!(
                        instance_id = %registered.instance_id,
                        config_version = registered.config.version,
                        "re-registered after a reconnect"
                    );
                    shared.apply_config(registered.config);
                }
                Err(e) => tracing::warn!(error = %e, "re-REGISTERED does not validate"),
            }
            st.registration = RegState::Active(shared);
        }
        other => {
            tracing::debug!("ignoring an unexpected REGISTERED");
            st.registration = other;
        }
    }
}
