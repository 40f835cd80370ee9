//! Training progress: a progress bar on a terminal (step, losses, dev metric, steps/s, ETA),
//! plain log lines otherwise.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the user sees while a phase runs.
pub struct Progress {
    bar: Option<ProgressBar>,
    phase: String,
    total: usize,
    start: Instant,
    from: usize,
    log_every: usize,
    metric: Option<String>,
    /// The evaluation set's name (`dev`, `holdout`).
    eval_set: String,
}

impl Progress {
    /// A bar when stdout is a terminal, log lines otherwise; evaluations are on `eval_set`.
    pub fn new(eval_set: &str) -> Self {
        Progress {
            bar: None,
            phase: String::new(),
            total: 0,
            start: Instant::now(),
            from: 0,
            log_every: 1,
            metric: None,
            eval_set: eval_set.to_string(),
        }
    }

    /// Starts a phase of `total` steps at step `from` (non-zero when resuming).
    pub fn phase(&mut self, name: &str, total: usize, from: usize) {
        self.finish();
        self.phase = name.to_string();
        self.total = total;
        self.from = from;
        self.start = Instant::now();
        self.log_every = (total / 20).max(1);
        if std::io::stdout().is_terminal() {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stdout());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>8} [{bar:30}] {pos}/{len} {msg} {per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(name.to_string());
            bar.set_position(from as u64);
            self.bar = Some(bar);
        } else {
            println!("{name}: {total} steps (from step {from})");
        }
    }

    /// Step `step` (0-based) done.
    pub fn step(&mut self, step: usize, lower: f64, upper: Option<f64>) {
        let done = step + 1;
        let losses = match upper {
            Some(u) => format!("loss {lower:.4} / val {u:.4}"),
            None => format!("loss {lower:.4}"),
        };
        let metric = self.metric.clone().unwrap_or_default();
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                bar.set_message(format!("{losses} {metric}"));
            }
            None if done.is_multiple_of(self.log_every) || done == self.total => {
                let secs = self.start.elapsed().as_secs_f64().max(1e-9);
                let rate = done.saturating_sub(self.from) as f64 / secs;
                let eta = if rate > 0.0 {
                    self.total.saturating_sub(done) as f64 / rate
                } else {
                    0.0
                };
                println!(
                    "{} step {done}/{} {losses} {metric} {rate:.2} steps/s ETA {eta:.0}s",
                    self.phase, self.total
                );
            }
            None => {}
        }
    }

    /// An evaluation after step `step` (0-based).
    pub fn eval(&mut self, step: usize, name: &str, value: f64, best: bool) {
        let step = step + 1;
        let text = format!(
            "{} {name} {value:.4}{}",
            self.eval_set,
            if best { " (best)" } else { "" }
        );
        match &self.bar {
            Some(bar) => bar.println(format!("{} step {step}: {text}", self.phase)),
            None => println!("{} step {step}: {text}", self.phase),
        }
        self.metric = Some(text);
    }

    /// Ends the current bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}
