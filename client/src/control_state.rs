//! The control-plane state of one connection (under `Inner::control`): where its single
//! registration stands, the [`Shared`] state of an active registration (heartbeat contract,
//! load, config channel) and the pending discoveries; plus the state changes a dropped or
//! torn-down connection and a reconnect make to it. See `control.rs` for how the exchanges
//! work.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_protocol::control::{
    encode_control, ConfigUpdate, InstanceInfo, Registered, Registration,
};
use bytes::BytesMut;
use rustc_hash::FxHashMap;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;

use crate::config::ConfigSnapshot;
use crate::error::Error;
use crate::load::LoadReporter;
use crate::sync::lock;

/// Heartbeat interval when neither the server nor the registration names one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Shortest heartbeat interval kept, whatever the server says.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// The control-plane state of one connection, under `Inner::control`.
#[derive(Default)]
pub(crate) struct ControlState {
    pub(crate) registration: RegState,
    /// Pending discoveries by request id.
    pub(crate) discovers: FxHashMap<u64, oneshot::Sender<Vec<InstanceInfo>>>,
    pub(crate) next_discover_id: u64,
}

/// Where the connection's single registration stands.
#[derive(Default)]
pub(crate) enum RegState {
    /// Never registered, or the last attempt was refused: `register` may be called.
    #[default]
    Idle,
    /// REGISTER sent, waiting for REGISTERED or a refusal.
    Pending(Pending),
    /// The attempt timed out or was cancelled: the server's answer is unknown.
    Abandoned,
    /// Registered: heartbeats are running.
    Active(Arc<Shared>),
    /// Deregistered; no second registration on this connection.
    Deregistered,
    /// The connection is torn down.
    Closed,
}

/// What a pending registration's waiter receives.
pub(crate) type RegisterOutcome = Result<Arc<Shared>, Error>;

pub(crate) struct Pending {
    pub(crate) tx: oneshot::Sender<RegisterOutcome>,
    /// The number of the PING sent with the REGISTER: it identifies the attempt, and a refusal
    /// must arrive before its PONG.
    pub(crate) ping_seq: u64,
    /// Boxed: keeps `RegState` small (a registration is a few hundred bytes).
    pub(crate) registration: Box<Registration>,
}

/// The state behind every [`Membership`](crate::Membership) clone, the heartbeat task and the
/// reader.
pub(crate) struct Shared {
    pub(crate) registration: Registration,
    /// The server's answer (heartbeat contract; `config` is the config at registration).
    pub(crate) registered: Registered,
    pub(crate) interval: Duration,
    pub(crate) load: LoadReporter,
    /// The current config; `config_tx` updates it.
    pub(crate) config_rx: watch::Receiver<ConfigSnapshot>,
    /// Dropped on deregistration or close, which ends every [`ConfigWatch`](crate::ConfigWatch).
    pub(crate) config_tx: Mutex<Option<watch::Sender<ConfigSnapshot>>>,
    pub(crate) heartbeat_task: Mutex<Option<AbortHandle>>,
    /// Cleared (under `Inner::control`) when heartbeats must stop.
    pub(crate) active: AtomicBool,
}

impl Shared {
    pub(crate) fn new(registration: Registration, registered: Registered) -> Shared {
        let interval = match (registered.heartbeat_ms, registration.heartbeat_ms) {
            (0, 0) => DEFAULT_HEARTBEAT,
            (0, ours) => Duration::from_millis(u64::from(ours)),
            (theirs, _) => Duration::from_millis(u64::from(theirs)),
        }
        .max(MIN_HEARTBEAT);
        let (config_tx, config_rx) = watch::channel(ConfigSnapshot::new(registered.config.clone()));
        Shared {
            registration,
            registered,
            interval,
            load: LoadReporter::new(),
            config_rx,
            config_tx: Mutex::new(Some(config_tx)),
            heartbeat_task: Mutex::new(None),
            active: AtomicBool::new(true),
        }
    }

    /// Stops heartbeats and ends the config streams. Called with `Inner::control` held.
    pub(crate) fn stop(&self) {
        self.active.store(false, Ordering::Release);
        if let Some(h) = lock(&self.heartbeat_task).take() {
            h.abort();
        }
        lock(&self.config_tx).take();
    }

    /// Applies a pushed config if it is for this instance and newer than the current one.
    pub(crate) fn apply_config(&self, update: ConfigUpdate) {
        let ours = update.component == self.registration.component
            && (env_name(&update.environment) == self.registration.environment_or_default()
                || env_name(&update.environment) == env_name(&self.registered.config.environment));
        if !ours {
            tracing::debug!(
                component = %update.component,
                environment = %update.environment,
                "ignoring CONFIG for another component or environment"
            );
            return;
        }
        let tx = lock(&self.config_tx);
        let Some(tx) = tx.as_ref() else {
            return;
        };
        tx.send_if_modified(|current| {
            if update.version > current.version() {
                *current = ConfigSnapshot::new(update);
                true
            } else {
                tracing::debug!(
                    version = update.version,
                    current = current.version(),
                    "ignoring a CONFIG not newer than the current one"
                );
                false
            }
        });
    }
}

/// An environment name with the empty string read as `default`.
fn env_name(s: &str) -> &str {
    if s.is_empty() {
        "default"
    } else {
        s
    }
}

/// Appends the REGISTER of an active registration to `out` (the frames sent after a
/// reconnect); nothing when the connection is not registered. Called with `Inner::control`
/// held (the caller's `st`).
pub(crate) fn encode_reregister(st: &ControlState, out: &mut BytesMut) {
    if let RegState::Active(shared) = &st.registration {
        if shared.active.load(Ordering::Acquire) {
            if let Err(e) = encode_control(out, &shared.registration) {
                tracing::warn!(error = %e, "cannot re-send the registration");
            }
        }
    }
}

/// The connection dropped and the client reconnects: a registration waiting for its answer
/// fails with [`Error::Disconnected`] (the server forgets it with the old connection, so
/// `register` may be called again), and so does every pending discovery. An active
/// registration stays: the reconnect re-sends it.
pub(crate) fn on_disconnect(control: &Mutex<ControlState>) {
    let (pending, discovers) = {
        let mut st = lock(control);
        let pending = match std::mem::take(&mut st.registration) {
            RegState::Pending(p) => Some(p),
            // A timed-out attempt's answer will not come: nothing to undo on the new connection.
            RegState::Abandoned => None,
            other => {
                st.registration = other;
                None
            }
        };
        (pending, std::mem::take(&mut st.discovers))
    };
    if let Some(p) = pending {
        let _ = p.tx.send(Err(Error::Disconnected));
    }
    // Dropping the senders fails the waiters (with `Disconnected`: the client is not closed).
    drop(discovers);
}

/// Fails everything pending and stops heartbeats. Called once from `Inner::teardown`.
pub(crate) fn on_teardown(control: &Mutex<ControlState>) {
    let (registration, discovers) = {
        let mut st = lock(control);
        (
            std::mem::replace(&mut st.registration, RegState::Closed),
            std::mem::take(&mut st.discovers),
        )
    };
    if let RegState::Active(shared) = &registration {
        shared.stop();
    }
    // Dropping the senders fails the waiters with the close reason.
    drop(registration);
    drop(discovers);
}
