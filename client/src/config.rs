//! A registered component's live config: [`ConfigSnapshot`] (one version) and [`ConfigWatch`]
//! (the stream of newer versions, fed by CONFIG pushes).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use agentwire_protocol::control::ConfigUpdate;
use futures_core::Stream;
use tokio::sync::watch;

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
    pub(crate) fn new(mut update: ConfigUpdate) -> ConfigSnapshot {
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
    pub(crate) fn new(mut rx: watch::Receiver<ConfigSnapshot>) -> ConfigWatch {
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
