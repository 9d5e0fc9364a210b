//! The heartbeat task of an active registration: a HEARTBEAT every interval the server gave,
//! with the load the application reports and this process's CPU and memory use.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use agentwire_protocol::control::encode_control;
use tokio::time::{Instant, MissedTickBehavior};

use crate::conn::Inner;
use crate::control_state::Shared;
use crate::error::Error;
use crate::load::ProcessSampler;
use crate::sync::lock;

/// Sends a heartbeat every interval until the registration or the connection ends.
pub(crate) async fn run(inner: Arc<Inner>, shared: Arc<Shared>) {
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
