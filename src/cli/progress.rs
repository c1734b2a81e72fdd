//! Progress of a long command, on stderr.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress on stderr: a bar with an ETA on a terminal, otherwise a plain line every few
/// seconds (a CI log or a file gets no control characters).
pub(crate) struct Progress {
    /// What is counted, first word of the plain line (`audit`, `rebuild`).
    label: &'static str,
    bar: Option<ProgressBar>,
    total: Option<u64>,
    done: u64,
    started: Instant,
    printed: Instant,
}

impl Progress {
    const PLAIN_EVERY: Duration = Duration::from_secs(5);

    pub(crate) fn new(label: &'static str, total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(len) => ProgressBar::new(len),
                None => ProgressBar::new_spinner(),
            };
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {pos}/{len} events {per_sec} {elapsed}, about {eta} left",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            label,
            bar,
            total,
            done: 0,
            started: Instant::now(),
            printed: Instant::now(),
        }
    }

    pub(crate) fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        if self.printed.elapsed() < Self::PLAIN_EVERY {
            return;
        }
        self.printed = Instant::now();
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        match self.total {
            Some(total) if total > 0 => {
                let left = total.saturating_sub(self.done) as f64 / rate.max(1.0);
                eprintln!(
                    "{}: {} of {total} events ({:.0} %), {rate:.0} events/s, about {left:.0} s left",
                    self.label,
                    self.done,
                    100.0 * self.done as f64 / total as f64
                );
            }
            _ => eprintln!("{}: {} events, {rate:.0} events/s", self.label, self.done),
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
