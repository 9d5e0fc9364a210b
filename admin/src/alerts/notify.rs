//! Webhook delivery: every notified firing and resolution is POSTed as JSON (the alert, as in
//! `GET /api/v1/alerts`) to each `[[alerts.webhooks]]` URL.
//!
//! Each webhook has its own bounded queue and worker task, so a slow or dead receiver delays
//! nobody else, and the engine only ever does a non-blocking `try_send` (a full queue drops
//! the notification, with a warning and a count). An attempt that fails (connection error,
//! timeout, a status other than 2xx) is retried after `backoff_ms`, doubled each time up to
//! 60 s, at most `max_attempts` times in all. The HTTP call itself runs on the blocking pool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::config::WebhookConfig;

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Delivery counters, for tests and status.
#[derive(Debug, Default)]
pub struct Counters {
    /// Notifications delivered (a 2xx answer).
    pub delivered: AtomicU64,
    /// Attempts that failed (each retry counts).
    pub failed_attempts: AtomicU64,
    /// Notifications given up after the last attempt, or dropped on a full queue.
    pub dropped: AtomicU64,
}

/// The senders to every webhook's worker.
#[derive(Debug, Default)]
pub struct Notifier {
    hooks: Vec<(String, mpsc::Sender<Arc<Vec<u8>>>)>,
    /// Counters over every webhook.
    pub counters: Arc<Counters>,
}

impl Notifier {
    /// Starts one worker per webhook on the current runtime; they stop with `stop`.
    pub fn start(hooks: &[WebhookConfig], stop: watch::Receiver<bool>) -> Notifier {
        let counters = Arc::new(Counters::default());
        let hooks = hooks
            .iter()
            .map(|h| {
                let (tx, rx) = mpsc::channel(h.queue.max(1));
                tokio::spawn(worker(h.clone(), rx, counters.clone(), stop.clone()));
                (h.url.clone(), tx)
            })
            .collect();
        Notifier { hooks, counters }
    }

    /// Queues `body` for every webhook; never waits.
    pub fn send(&self, body: &Arc<Vec<u8>>) {
        for (url, tx) in &self.hooks {
            if tx.try_send(body.clone()).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(webhook = %url, "alert webhook queue full: notification dropped");
            }
        }
    }
}

/// The wait before retry `n` (1 = the first retry).
pub fn backoff(base_ms: u64, n: u32) -> Duration {
    let ms = base_ms.saturating_mul(1u64 << n.saturating_sub(1).min(20));
    Duration::from_millis(ms).min(MAX_BACKOFF)
}

async fn worker(
    h: WebhookConfig,
    mut rx: mpsc::Receiver<Arc<Vec<u8>>>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(h.timeout_ms))
        .build();
    loop {
        let body = tokio::select! {
            b = rx.recv() => match b { Some(b) => b, None => return },
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() { return; }
                continue;
            }
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (a, url, b) = (agent.clone(), h.url.clone(), body.clone());
            let r = tokio::task::spawn_blocking(move || {
                a.post(&url)
                    .set("Content-Type", "application/json")
                    .send_bytes(&b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match r {
                Ok(()) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    if attempt >= h.max_attempts {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(webhook = %h.url, attempts = attempt, "alert webhook failed, notification dropped: {e}");
                        break;
                    }
                    tracing::debug!(webhook = %h.url, attempt, "alert webhook attempt failed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(h.backoff_ms, attempt)) => {}
                        r = stop.changed() => if r.is_err() || *stop.borrow() { return; },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(500, 1), Duration::from_millis(500));
        assert_eq!(backoff(500, 2), Duration::from_millis(1000));
        assert_eq!(backoff(500, 4), Duration::from_millis(4000));
        assert_eq!(backoff(500, 30), MAX_BACKOFF);
        assert_eq!(backoff(u64::MAX, 3), MAX_BACKOFF);
    }
}
