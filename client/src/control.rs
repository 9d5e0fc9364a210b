//! The control plane, client side: registration ([`Membership`]), heartbeats, live config
//! ([`ConfigSnapshot`], [`ConfigWatch`]) and discovery ([`DiscoverQuery`]); `PROTOCOL.md`
//! section 13.
//!
//! How the exchanges are matched with their answers:
//! - **REGISTER** is sent together with a PING, and the registration waits for REGISTERED. The
//!   server handles a connection's frames in order, so a refusal (a non-fatal ERR
//!   `invalid_control`, `not_registered`, `duplicate_instance`, or `unknown_op` from a server
//!   without the control plane) arrives before the PONG of that PING: the reader counts PONGs and
//!   gives such an ERR to the pending registration only while its PONG has not arrived. Every wait
//!   is bounded by the request timeout; a registration that timed out leaves the connection's
//!   registration state unknown (a late REGISTERED is undone with a DEREGISTER).
//! - **DISCOVER** carries a fresh request id; the DISCOVERED echoing it resolves the waiter of
//!   that id, so several discoveries can be in flight and answered in any order.
//! - **CONFIG** frames update a `tokio::sync::watch` channel when they are newer than the current
//!   version and for this instance's component and environment; anything else, and bodies that do
//!   not validate, are logged and ignored (the connection stays up).
//!
//! After REGISTERED a heartbeat task sends HEARTBEAT every interval the server gave, with the
//! load from [`LoadReporter`]; it stops on [`Membership::deregister`] and when the connection
//! closes. Lock order: `Inner::subs`, then `Inner::control`, then the write buffer.
//!
//! The pieces: the state is in `control_state.rs`, the server's frames are handled in
//! `control_frames.rs`, heartbeats in `heartbeat.rs`, the config types in `config.rs`; this
//! module holds the public handles and the client calls.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use agentwire_protocol::control::{
    encode_control, encode_deregister, Discover, InstanceInfo, Registration,
};
use tokio::sync::oneshot;

use crate::config::{ConfigSnapshot, ConfigWatch};
use crate::conn::Inner;
use crate::control_state::{Pending, RegState, Shared};
use crate::error::{invalid_control, CloseReason, Error};
use crate::handle::Client;
use crate::load::LoadReporter;
use crate::sync::lock;

/// The error for an operation on a connection that is closed: the fatal ERR that closed it, if
/// any.
fn closed_error(inner: &Inner) -> Error {
    inner
        .close_reason
        .get()
        .map_or(Error::Closed, CloseReason::to_error)
}

/// This connection's registration as a component instance, from [`Client::register`].
///
/// While registered, a background task sends a heartbeat every interval the server asked for,
/// carrying the load set here (or through a [`LoadReporter`]) and this process's CPU and memory
/// use. Dropping the handle does **not** deregister: the instance stays registered until
/// [`Membership::deregister`] or until the connection closes; [`Client::membership`] gives the
/// handle back. A `Membership` keeps its connection open, like a [`Client`] clone.
///
/// ```no_run
/// use std::time::Duration;
/// use agentwire_client::Registration;
/// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
/// let membership = client
///     .register(Registration {
///         component: "planner".into(),
///         instance_id: "planner-1".into(),
///         version: "1.4.0".into(),
///         capabilities: vec!["plan".into()],
///         subjects: vec!["planner.>".into()],
///         ..Registration::default()
///     })
///     .await?;
/// println!("config v{}", membership.config().version());
/// membership.set_load(2, 0);
/// membership.record_latency(Duration::from_millis(12));
/// membership.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Membership {
    shared: Arc<Shared>,
    client: Client,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("component", &self.shared.registration.component)
            .field("instance_id", &self.shared.registered.instance_id)
            .field("heartbeat_interval", &self.shared.interval)
            .field("active", &self.is_active())
            .finish()
    }
}

impl Membership {
    /// The instance id, as the server registered it.
    pub fn instance_id(&self) -> &str {
        &self.shared.registered.instance_id
    }

    /// The component name.
    pub fn component(&self) -> &str {
        &self.shared.registration.component
    }

    /// The registration as it was sent.
    pub fn registration(&self) -> &Registration {
        &self.shared.registration
    }

    /// The interval heartbeats are sent at: the one the server gave in REGISTERED.
    pub fn heartbeat_interval(&self) -> Duration {
        self.shared.interval
    }

    /// Missed heartbeat intervals after which the server marks the instance unhealthy.
    pub fn unhealthy_after(&self) -> u32 {
        self.shared.registered.unhealthy_after
    }

    /// Missed heartbeat intervals after which the server removes the instance.
    pub fn remove_after(&self) -> u32 {
        self.shared.registered.remove_after
    }

    /// Whether the instance is still registered (not deregistered, connection open).
    pub fn is_active(&self) -> bool {
        self.shared.active.load(Ordering::Acquire)
    }

    /// Sets the requests or tasks in progress and the work waiting in the instance's queues,
    /// reported with the next heartbeat.
    pub fn set_load(&self, in_flight: u32, queue_depth: u32) {
        self.shared.load.set_load(in_flight, queue_depth);
    }

    /// Adds one request latency to the reported moving average
    /// ([`LoadReporter::record_latency`]).
    pub fn record_latency(&self, latency: Duration) {
        self.shared.load.record_latency(latency);
    }

    /// A handle for reporting load that does not keep the connection open.
    pub fn load_reporter(&self) -> LoadReporter {
        self.shared.load.clone()
    }

    /// The current config: the latest version received.
    pub fn config(&self) -> ConfigSnapshot {
        self.shared.config_rx.borrow().clone()
    }

    /// A stream of the config: the current version first, then every newer one.
    pub fn config_watch(&self) -> ConfigWatch {
        ConfigWatch::new(self.shared.config_rx.clone())
    }

    /// The connection this instance is registered on.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Deregisters: stops the heartbeats, ends the config streams, sends DEREGISTER and waits
    /// (a flush, bounded by the request timeout) until the server has processed it. Calling it
    /// again is fine; so is calling it after the connection closed (which removed the instance
    /// already).
    ///
    /// # Errors
    /// [`Error::FlushTimeout`] when the server did not confirm in time (heartbeats are stopped
    /// anyway, so the server drops the instance after its `remove_after` intervals).
    pub async fn deregister(&self) -> Result<(), Error> {
        let inner = &*self.client.inner;
        {
            let mut st = lock(&inner.control);
            match &st.registration {
                RegState::Active(s) if Arc::ptr_eq(s, &self.shared) => {}
                _ => return Ok(()),
            }
            st.registration = RegState::Deregistered;
            self.shared.stop();
            let sent = inner.enqueue_control(|b| {
                encode_deregister(b);
                Ok(())
            });
            if sent.is_err() {
                // Closed: the server removes the instance with the connection.
                return Ok(());
            }
        }
        match inner.flush().await {
            Err(Error::FlushTimeout { after }) => Err(Error::FlushTimeout { after }),
            // The connection closed meanwhile: the instance went with it.
            Ok(()) | Err(_) => Ok(()),
        }
    }
}

/// Filters for [`Client::discover`]; an empty filter matches everything.
///
/// ```no_run
/// use agentwire_client::DiscoverQuery;
/// # async fn example(client: agentwire_client::Client) -> Result<(), agentwire_client::Error> {
/// let planners = client.discover(DiscoverQuery::new().component("planner")).await?;
/// for i in &planners {
///     println!("{} healthy={} score={} in_flight={}", i.instance_id, i.healthy, i.health_score, i.load.in_flight);
/// }
/// let everyone = client.discover(DiscoverQuery::new().include_unhealthy(true)).await?;
/// # drop(everyone); Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoverQuery {
    component: String,
    capability: String,
    include_unhealthy: bool,
}

impl DiscoverQuery {
    /// Every healthy instance of every component.
    pub fn new() -> DiscoverQuery {
        DiscoverQuery::default()
    }

    /// Only instances of this component.
    pub fn component(mut self, component: impl Into<String>) -> DiscoverQuery {
        self.component = component.into();
        self
    }

    /// Only instances offering this capability.
    pub fn capability(mut self, capability: impl Into<String>) -> DiscoverQuery {
        self.capability = capability.into();
        self
    }

    /// Include instances currently marked unhealthy (default: no).
    pub fn include_unhealthy(mut self, include: bool) -> DiscoverQuery {
        self.include_unhealthy = include;
        self
    }
}

/// Turns a pending registration whose future is dropped or timed out into `Abandoned`, if it is
/// still this attempt.
struct PendingRegistration<'a> {
    inner: &'a Inner,
    ping_seq: u64,
}

impl PendingRegistration<'_> {
    /// Abandons the attempt if it is still pending; returns whether it was.
    fn abandon(&self) -> bool {
        let mut st = lock(&self.inner.control);
        if matches!(&st.registration, RegState::Pending(p) if p.ping_seq == self.ping_seq) {
            st.registration = RegState::Abandoned;
            true
        } else {
            false
        }
    }
}

impl Drop for PendingRegistration<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// [`Client::register`].
pub(crate) async fn register(client: &Client, mut reg: Registration) -> Result<Membership, Error> {
    if reg.environment.is_empty() {
        reg.environment
            .clone_from(&client.inner.settings.environment);
    }
    reg.validate()
        .map_err(|e| invalid_control("registration", e))?;
    let inner = &*client.inner;
    let (mut rx, ping_seq) = {
        let mut st = lock(&inner.control);
        match st.registration {
            RegState::Idle => {}
            RegState::Closed => return Err(closed_error(inner)),
            _ => return Err(Error::AlreadyRegistered),
        }
        if inner.is_closed() || inner.draining.load(Ordering::Acquire) {
            return Err(closed_error(inner));
        }
        let ping_seq = inner.send_with_ping(|b| encode_control(b, &reg).map_err(Error::from))?;
        let (tx, rx) = oneshot::channel();
        st.registration = RegState::Pending(Pending {
            tx,
            ping_seq,
            registration: Box::new(reg),
        });
        (rx, ping_seq)
    };
    let pending = PendingRegistration { inner, ping_seq };
    let after = inner.settings.request_timeout;
    let outcome = match tokio::time::timeout(after, &mut rx).await {
        Ok(received) => received.ok(),
        Err(_) if pending.abandon() => {
            return Err(Error::ControlTimeout {
                op: "REGISTER",
                after,
            })
        }
        // The reader answered (or the connection closed) just as the time ran out.
        Err(_) => rx.try_recv().ok(),
    };
    match outcome {
        Some(Ok(shared)) => Ok(Membership {
            shared,
            client: client.clone(),
        }),
        Some(Err(e)) => Err(e),
        None => Err(closed_error(inner)),
    }
}

/// Removes a pending discovery's waiter when the call ends in any way.
struct PendingDiscover<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for PendingDiscover<'_> {
    fn drop(&mut self) {
        lock(&self.inner.control).discovers.remove(&self.id);
    }
}

/// [`Client::discover`].
pub(crate) async fn discover(
    client: &Client,
    query: DiscoverQuery,
) -> Result<Vec<InstanceInfo>, Error> {
    let mut body = Discover {
        request_id: 0,
        component: query.component,
        capability: query.capability,
        include_unhealthy: query.include_unhealthy,
    };
    body.validate()
        .map_err(|e| invalid_control("discover query", e))?;
    let inner = &*client.inner;
    if inner.draining.load(Ordering::Acquire) {
        return Err(Error::Closed);
    }
    let (rx, id) = {
        let mut st = lock(&inner.control);
        if inner.is_closed() || matches!(st.registration, RegState::Closed) {
            return Err(closed_error(inner));
        }
        st.next_discover_id = st.next_discover_id.wrapping_add(1);
        let id = st.next_discover_id;
        body.request_id = id;
        inner.enqueue_control(|b| encode_control(b, &body).map_err(Error::from))?;
        let (tx, rx) = oneshot::channel();
        st.discovers.insert(id, tx);
        (rx, id)
    };
    let _pending = PendingDiscover { inner, id };
    let after = inner.settings.request_timeout;
    match tokio::time::timeout(after, rx).await {
        Ok(Ok(instances)) => Ok(instances),
        Ok(Err(_)) if !inner.is_closed() => Err(Error::Disconnected),
        Ok(Err(_)) => Err(closed_error(inner)),
        Err(_) => Err(Error::ControlTimeout {
            op: "DISCOVER",
            after,
        }),
    }
}

/// [`Client::membership`].
pub(crate) fn membership(client: &Client) -> Option<Membership> {
    match &lock(&client.inner.control).registration {
        RegState::Active(shared) => Some(Membership {
            shared: shared.clone(),
            client: client.clone(),
        }),
        _ => None,
    }
}
