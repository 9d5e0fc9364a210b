//! Every client the soak runs, with its connection state as its [`Client::events`] stream tells
//! it: drops, reconnects (with the client's own drop → reconnect time), server errors, close.
//! Injectors ask the fleet which clients a fault affected and wait until they have recovered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentwire_client::{Client, ConnectOptions, ConnectionEvent, ErrorCode};
use anyhow::Result;

use crate::track::{lock, now_us, Group, Ledger, ReconnectSample};

/// What the soak's clients use to connect.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Reconnect backoff: first wait.
    pub backoff_min: Duration,
    /// Reconnect backoff: cap.
    pub backoff_max: Duration,
    /// Bound on TCP connect + handshake of each (re)connect attempt.
    pub connect_timeout: Duration,
}

impl ClientSettings {
    /// Connect options for a client named `name`.
    pub fn options(&self, name: &str) -> ConnectOptions {
        ConnectOptions::new()
            .name(name)
            .connect_timeout(self.connect_timeout)
            .request_timeout(Duration::from_secs(5))
            .reconnect(true)
            .reconnect_delay(self.backoff_min, self.backoff_max)
    }
}

/// Connection state of one tracked client.
#[derive(Debug)]
pub struct State {
    /// Its group.
    pub group: Group,
    connected: AtomicBool,
    /// Closed by the soak (ramp-down, end of a fault, end of the run).
    retired: AtomicBool,
    /// Closed for good by anything else (a fatal ERR, reconnect given up): never recovers.
    dead: AtomicBool,
    /// The drop time of its last completed reconnect (0: none yet).
    last_reconnect_drop_us: AtomicU64,
}

impl State {
    /// Whether it is connected now.
    pub fn is_up(&self) -> bool {
        self.connected.load(Ordering::Acquire) && !self.is_retired() && !self.is_dead()
    }

    /// Whether the soak closed it.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Whether it closed for good without the soak asking.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Marks it closed by the soak (before closing it), so nothing waits for it.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

/// A tracked client.
#[derive(Debug, Clone)]
pub struct Member {
    /// The client.
    pub client: Client,
    /// Its state.
    pub state: Arc<State>,
}

/// Every tracked client.
#[derive(Debug, Default)]
pub struct Fleet {
    members: Mutex<Vec<Member>>,
}

/// Who a fault affected, snapshotted when it began.
#[derive(Debug)]
pub struct Affected {
    since_us: u64,
    /// (member, whether it was up at the action).
    members: Vec<(Member, bool)>,
}

impl Fleet {
    /// Connects a client to `addr`, tracks its events, and adds it to the fleet.
    ///
    /// # Errors
    /// When it cannot connect.
    pub async fn connect(
        &self,
        settings: &ClientSettings,
        addr: &str,
        name: &str,
        group: Group,
        ledger: &Arc<Ledger>,
    ) -> Result<Member> {
        let client = settings.options(name).connect(addr).await?;
        let state = Arc::new(State {
            group,
            connected: AtomicBool::new(true),
            retired: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            last_reconnect_drop_us: AtomicU64::new(0),
        });
        let mut events = client.events();
        let st = state.clone();
        let ledger = ledger.clone();
        tokio::spawn(async move {
            // Ends after `Closed` (the stream ends with the client).
            while let Some(ev) = events.next().await {
                match ev {
                    ConnectionEvent::Disconnected { .. } => {
                        st.connected.store(false, Ordering::Release);
                    }
                    ConnectionEvent::Reconnected { after, .. } => {
                        let after_us = u64::try_from(after.as_micros()).unwrap_or(u64::MAX);
                        let drop_us = now_us().saturating_sub(after_us);
                        st.last_reconnect_drop_us.store(drop_us, Ordering::Release);
                        st.connected.store(true, Ordering::Release);
                        ledger.reconnect(ReconnectSample {
                            group: st.group,
                            drop_us,
                            after_us,
                        });
                    }
                    ConnectionEvent::ServerError { code, .. } => {
                        let name = ErrorCode::from_u16(code).map_or("unknown", ErrorCode::name);
                        ledger.server_error(name);
                    }
                    ConnectionEvent::Closed { reason } => {
                        st.connected.store(false, Ordering::Release);
                        if !st.is_retired() {
                            st.dead.store(true, Ordering::Release);
                            ledger.client_error(format!("closed for good: {reason}"));
                        }
                    }
                    _ => {}
                }
            }
        });
        let m = Member { client, state };
        lock(&self.members).push(m.clone());
        Ok(m)
    }

    /// Clients of `groups` (every group when empty) open now, with whether each is up.
    pub fn affected(&self, groups: &[Group], since_us: u64) -> Affected {
        let mut members = lock(&self.members);
        members.retain(|m| !m.state.is_retired());
        let members = members
            .iter()
            .filter(|m| !m.state.is_dead())
            .filter(|m| groups.is_empty() || groups.contains(&m.state.group))
            .map(|m| (m.clone(), m.state.is_up()))
            .collect();
        Affected { since_us, members }
    }

    /// Clients connected now (of those open).
    pub fn connected(&self) -> usize {
        lock(&self.members)
            .iter()
            .filter(|m| m.state.is_up())
            .count()
    }

    /// Open clients that are not connected now.
    pub fn down(&self) -> usize {
        lock(&self.members)
            .iter()
            .filter(|m| !m.state.is_retired() && !m.state.is_up())
            .count()
    }

    /// Clients closed for good without the soak asking.
    pub fn dead(&self) -> usize {
        lock(&self.members)
            .iter()
            .filter(|m| !m.state.is_retired() && m.state.is_dead())
            .count()
    }
}

impl Affected {
    /// How many.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    fn recovered(&self, m: &Member, was_up: bool) -> bool {
        m.state.is_retired()
            || (m.state.is_up()
                && (!was_up
                    || m.state.last_reconnect_drop_us.load(Ordering::Acquire) >= self.since_us))
    }

    /// Waits until every affected client has reconnected after the fault (or the soak closed
    /// it; one closed for good otherwise never recovers), then
    /// flushes each (its re-sent subscriptions are then in force), all within `max`. Returns how
    /// many did not recover, and how many flushes failed.
    pub async fn wait_recovered(&self, max: Duration) -> (usize, usize) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            // A client closed for good never recovers: not worth waiting for.
            let pending = self
                .members
                .iter()
                .filter(|(m, up)| !self.recovered(m, *up) && !m.state.is_dead())
                .count();
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut set = tokio::task::JoinSet::new();
        for (m, up) in &self.members {
            if !self.recovered(m, *up) || m.state.is_retired() {
                continue;
            }
            let c = m.client.clone();
            set.spawn(async move { c.flush().await.is_ok() });
        }
        let mut failed_flush = 0;
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, set.join_next()).await {
            if !matches!(r, Ok(true)) {
                failed_flush += 1;
            }
        }
        let not_recovered = self
            .members
            .iter()
            .filter(|(m, up)| !self.recovered(m, *up))
            .count();
        (not_recovered, failed_flush)
    }
}
