//! Build progress on stderr: an indicatif spinner on a terminal, plain lines otherwise.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Reports a template build's phases.
pub(crate) struct Reporter {
    name: String,
    start: Instant,
    bar: Option<ProgressBar>,
    phase: RefCell<String>,
}

impl Reporter {
    /// A reporter for building template `name`; a spinner if `fancy`.
    pub(crate) fn new(name: &str, fancy: bool) -> Self {
        let bar = fancy.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.cyan} {prefix:.bold} [{elapsed_precise}] {wide_msg}",
                )
                .expect("valid template")
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
            );
            bar.set_prefix(format!("template {name}"));
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Reporter {
            name: name.to_string(),
            start: Instant::now(),
            bar,
            phase: RefCell::new(String::new()),
        }
    }

    fn plain(&self, msg: &str) {
        eprintln!(
            "[{:>4}s] template {}: {msg}",
            self.start.elapsed().as_secs(),
            self.name
        );
    }

    /// A new phase of the build (one plain line each).
    pub(crate) fn phase(&self, msg: &str) {
        *self.phase.borrow_mut() = msg.to_string();
        match &self.bar {
            Some(bar) => bar.set_message(msg.to_string()),
            None => self.plain(msg),
        }
    }

    /// A detail within the current phase (e.g. the package being unpacked); spinner only.
    pub(crate) fn detail(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} {msg}", self.phase.borrow()));
        }
    }

    /// A line to keep (a warning, "waiting for ..."), printed above the spinner.
    pub(crate) fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("template {}: {msg}", self.name)),
            None => self.plain(msg),
        }
    }

    /// Restarts the clock (after waiting for the lock).
    pub(crate) fn restart(&mut self) {
        self.start = Instant::now();
        if let Some(bar) = &self.bar {
            bar.reset_elapsed();
        }
    }

    /// The build ended with `msg` (kept on screen).
    pub(crate) fn finish(&self, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.finish_and_clear();
                eprintln!("template {}: {msg}", self.name);
            }
            None => self.plain(msg),
        }
    }

    /// The spinner goes away without a message (the template was cached).
    pub(crate) fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}
