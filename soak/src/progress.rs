//! The live progress bar on stderr: elapsed time of the run and a line of counters. Hidden when
//! stderr is not a terminal (CI logs and `--json` pipelines stay clean).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar.
#[derive(Debug)]
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar over `total` (shown in whole seconds).
    pub fn new(total: Duration) -> Bar {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total.as_secs().max(1)), target);
        if let Ok(style) = ProgressStyle::with_template("soak [{bar:30}] {pos}/{len} s {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Bar(bar)
    }

    /// Moves to `elapsed` with `msg`.
    pub fn update(&self, elapsed: Duration, msg: &str) {
        self.0.set_position(elapsed.as_secs());
        self.0.set_message(msg.to_owned());
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
