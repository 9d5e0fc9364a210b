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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use agentwire_protocol::control::{
    decode_control, encode_control, encode_deregister, ConfigUpdate, Discover, Discovered,
    InstanceInfo, Registered, Registration,
};
use agentwire_protocol::{op, ErrorCode};
use futures_core::Stream;
use rustc_hash::FxHashMap;
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::client::Client;
use crate::conn::{lock, Inner};
use crate::error::{invalid_control, CloseReason, Error, ServerError};
use crate::load::{LoadReporter, ProcessSampler};

/// Heartbeat interval when neither the server nor the registration names one.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Shortest heartbeat interval kept, whatever the server says.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);

/// The control-plane state of one connection, under `Inner::control`.
#[derive(Default)]
pub(crate) struct ControlState {
    registration: RegState,
    /// Pending discoveries by request id.
    discovers: FxHashMap<u64, oneshot::Sender<Vec<InstanceInfo>>>,
    next_discover_id: u64,
}

/// Where the connection's single registration stands.
#[derive(Default)]
enum RegState {
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
type RegisterOutcome = Result<Arc<Shared>, Error>;

struct Pending {
    tx: oneshot::Sender<RegisterOutcome>,
    /// The number of the PING sent with the REGISTER: it identifies the attempt, and a refusal
    /// must arrive before its PONG.
    ping_seq: u64,
    /// Boxed: keeps `RegState` small (a registration is a few hundred bytes).
    registration: Box<Registration>,
}

/// The state behind every [`Membership`] clone, the heartbeat task and the reader.
pub(crate) struct Shared {
    registration: Registration,
    /// The server's answer (heartbeat contract; `config` is the config at registration).
    registered: Registered,
    interval: Duration,
    load: LoadReporter,
    /// The current config; `config_tx` updates it.
    config_rx: watch::Receiver<ConfigSnapshot>,
    /// Dropped on deregistration or close, which ends every [`ConfigWatch`].
    config_tx: Mutex<Option<watch::Sender<ConfigSnapshot>>>,
    heartbeat_task: Mutex<Option<AbortHandle>>,
    /// Cleared (under `Inner::control`) when heartbeats must stop.
    active: AtomicBool,
}

impl Shared {
    fn new(registration: Registration, registered: Registered) -> Shared {
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
    fn stop(&self) {
        self.active.store(false, Ordering::Release);
        if let Some(h) = lock(&self.heartbeat_task).take() {
            h.abort();
        }
        lock(&self.config_tx).take();
    }

    /// Applies a pushed config if it is for this instance and newer than the current one.
    fn apply_config(&self, update: ConfigUpdate) {
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

/// The error for an operation on a connection that is closed: the fatal ERR that closed it, if
/// any.
fn closed_error(inner: &Inner) -> Error {
    inner
        .close_reason
        .get()
        .map_or(Error::Closed, CloseReason::to_error)
}

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// A component's config in one environment, as of one version: what REGISTERED carried or the
/// latest newer CONFIG push. Cheap to clone.
///
/// ```no_run
/// # fn example(membership: &agentwire_client::Membership) {
/// let config = membership.config();
/// let limit: u32 = config.get("rate_limit").and_then(|v| v.parse().ok()).unwrap_or(100);
/// println!("config v{}: rate_limit = {limit}", config.version());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSnapshot(Arc<ConfigUpdate>);

impl ConfigSnapshot {
    fn new(mut update: ConfigUpdate) -> ConfigSnapshot {
        // The server sends keys sorted; sort anyway so lookups can rely on it.
        if !update.values.windows(2).all(|w| w[0].0 <= w[1].0) {
            update.values.sort_by(|a, b| a.0.cmp(&b.0));
        }
        ConfigSnapshot(Arc::new(update))
    }

    /// The config version (0: nothing was ever set).
    pub fn version(&self) -> u64 {
        self.0.version
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        let values = &self.0.values;
        values
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| values[i].1.as_str())
    }

    /// Every key and its value, sorted by key.
    pub fn values(&self) -> &[(String, String)] {
        &self.0.values
    }

    /// The component the config belongs to.
    pub fn component(&self) -> &str {
        &self.0.component
    }

    /// The environment the config belongs to.
    pub fn environment(&self) -> &str {
        &self.0.environment
    }

    /// When this version was written, milliseconds since the Unix epoch (0 for version 0).
    pub fn updated_at_ms(&self) -> u64 {
        self.0.updated_at_ms
    }

    /// Who wrote this version.
    pub fn updated_by(&self) -> &str {
        &self.0.updated_by
    }

    /// The whole update as the server sent it.
    pub fn as_update(&self) -> &ConfigUpdate {
        &self.0
    }
}

/// A stream of config versions: the current config first, then each newer version as it
/// arrives. Versions never go backwards; when several arrive between two reads, only the newest
/// is yielded. The stream ends on deregistration or when the connection closes.
///
/// Use it as a [`Stream`] or with [`ConfigWatch::next`]:
///
/// ```no_run
/// # async fn example(membership: agentwire_client::Membership) {
/// let mut configs = membership.config_watch();
/// while let Some(config) = configs.next().await {
///     println!("config v{}: {:?}", config.version(), config.values());
/// }
/// # }
/// ```
pub struct ConfigWatch {
    /// The receiver while no change is being waited for.
    rx: Option<watch::Receiver<ConfigSnapshot>>,
    /// The wait for the next change (owns the receiver meanwhile).
    waiting: Option<ChangeFuture>,
    /// Whether the current value has been yielded yet.
    started: bool,
}

/// Waits for the next change; gives the receiver back with whether the channel is still open.
type ChangeFuture =
    Pin<Box<dyn Future<Output = (bool, watch::Receiver<ConfigSnapshot>)> + Send + 'static>>;

impl fmt::Debug for ConfigWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigWatch")
            .field("started", &self.started)
            .field("ended", &(self.rx.is_none() && self.waiting.is_none()))
            .finish()
    }
}

impl ConfigWatch {
    fn new(mut rx: watch::Receiver<ConfigSnapshot>) -> ConfigWatch {
        rx.mark_unchanged();
        ConfigWatch {
            rx: Some(rx),
            waiting: None,
            started: false,
        }
    }

    /// The next config: the current one on the first call, then the next newer version. `None`
    /// once the registration or the connection has ended.
    pub async fn next(&mut self) -> Option<ConfigSnapshot> {
        std::future::poll_fn(|cx| self.poll_config(cx)).await
    }

    fn poll_config(&mut self, cx: &mut Context<'_>) -> Poll<Option<ConfigSnapshot>> {
        if !self.started {
            if let Some(rx) = self.rx.as_mut() {
                self.started = true;
                return Poll::Ready(Some(rx.borrow_and_update().clone()));
            }
        }
        if self.waiting.is_none() {
            let Some(mut rx) = self.rx.take() else {
                return Poll::Ready(None);
            };
            self.waiting = Some(Box::pin(async move {
                let open = rx.changed().await.is_ok();
                (open, rx)
            }));
        }
        let Some(waiting) = self.waiting.as_mut() else {
            return Poll::Ready(None);
        };
        let (open, mut rx) = match waiting.as_mut().poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(done) => done,
        };
        self.waiting = None;
        if !open {
            return Poll::Ready(None);
        }
        let config = rx.borrow_and_update().clone();
        self.rx = Some(rx);
        Poll::Ready(Some(config))
    }
}

impl Stream for ConfigWatch {
    type Item = ConfigSnapshot;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ConfigSnapshot>> {
        self.get_mut().poll_config(cx)
    }
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

// ---------------------------------------------------------------------------------------------
// Client calls
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Reader and teardown hooks
// ---------------------------------------------------------------------------------------------

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
                let task = tokio::spawn(heartbeat_loop(inner.clone(), shared.clone()));
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

/// Appends the REGISTER of an active registration to `out` (the frames sent after a
/// reconnect); nothing when the connection is not registered. Called with `Inner::control`
/// held (the caller's `st`).
pub(crate) fn encode_reregister(st: &ControlState, out: &mut bytes::BytesMut) {
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
pub(crate) fn on_disconnect(inner: &Inner) {
    let (pending, discovers) = {
        let mut st = lock(&inner.control);
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
pub(crate) fn on_teardown(inner: &Inner) {
    let (registration, discovers) = {
        let mut st = lock(&inner.control);
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

/// Sends a heartbeat every interval until the registration or the connection ends.
async fn heartbeat_loop(inner: Arc<Inner>, shared: Arc<Shared>) {
    let period = shared.interval;
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sampler = ProcessSampler::new();
    loop {
        ticks.tick().await;
        let (cpu_permille, mem_bytes) = sampler.sample();
        let mut beat = shared.load.current();
        beat.cpu_permille = cpu_permille;
        beat.mem_bytes = mem_bytes;
        // Checked and sent under the control lock, so no heartbeat follows a DEREGISTER.
        let st = lock(&inner.control);
        if !shared.active.load(Ordering::Acquire) || inner.is_closed() {
            return;
        }
        let sent = inner.enqueue_control(|b| encode_control(b, &beat).map_err(Error::from));
        drop(st);
        if let Err(e) = sent {
            tracing::debug!(error = %e, "heartbeats stopped");
            return;
        }
    }
}
