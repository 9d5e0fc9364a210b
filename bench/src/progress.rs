//! A progress bar on stderr for runs longer than a few seconds.
//!
//! The bar stays hidden for [`SHOW_AFTER`], so short runs print nothing, and indicatif draws
//! nothing when stderr is not a terminal (CI logs stay clean). It is fed by a tokio task that
//! reads the scenario's counters every [`TICK`]: the hot loops only store into their own
//! [`Counter`], never touch the bar.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a run goes before its bar appears.
const SHOW_AFTER: Duration = Duration::from_secs(3);
/// How often the bar is updated.
const TICK: Duration = Duration::from_millis(200);

/// A counter owned by one task (written with a plain store, so no cache-line contention between
/// writers), padded to its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Counter(AtomicU64);

impl Counter {
    /// Publishes the owner's count.
    #[inline]
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// Adds to the count (for a counter shared by several tasks).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The last published count.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sum of a set of counters.
pub fn sum(counters: &[Arc<Counter>]) -> u64 {
    counters.iter().map(|c| c.get()).sum()
}

/// A running progress bar; [`Progress::finish`] (or drop) removes it.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Starts a bar labelled `label` that goes to `total` (`unit` names what is counted), read
    /// from `position` every tick.
    pub fn start(
        label: &str,
        unit: &str,
        total: u64,
        position: impl Fn() -> u64 + Send + 'static,
    ) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
        if let Ok(style) = ProgressStyle::with_template(&format!(
            "{{prefix}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} {{per_sec}} eta {{eta}}"
        )) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_owned());
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut shown = false;
            loop {
                tokio::time::sleep(TICK).await;
                b.set_position(position().min(total));
                if !shown && start.elapsed() >= SHOW_AFTER {
                    b.set_draw_target(ProgressDrawTarget::stderr());
                    shown = true;
                }
            }
        });
        Progress { bar, task }
    }

    /// Removes the bar.
    pub fn finish(self) {
        // Drop does the work.
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}
