//! Step lines for long work: a spinner with the current step on a terminal, plain
//! `[i/n] step ... done (12.3 s)` lines otherwise (logs, CI).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    total: usize,
    current: usize,
    label: String,
    started: Instant,
    step_started: Instant,
    bar: Option<ProgressBar>,
    last_detail: String,
}

impl Progress {
    /// `label` prefixes every line, e.g. `guestos 1.0.0`.
    pub fn new(label: &str, total: usize) -> Self {
        let bar = if std::io::stderr().is_terminal()
            && std::env::var_os("ICOS_PLAIN_PROGRESS").is_none()
        {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {msg} [{elapsed}]")
                    .expect("static template"),
            );
            b.set_prefix(label.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            Some(b)
        } else {
            None
        };
        Progress {
            total,
            current: 0,
            label: label.to_string(),
            started: Instant::now(),
            step_started: Instant::now(),
            bar,
            last_detail: String::new(),
        }
    }

    fn finish_step(&mut self) {
        if self.current > 0 {
            let secs = self.step_started.elapsed().as_secs_f64();
            let line = format!(
                "[{}/{}] {} ... done ({secs:.1} s)",
                self.current, self.total, self.last_detail
            );
            self.println(&line);
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(format!("{} {line}", self.label)),
            None => eprintln!("{} {line}", self.label),
        }
    }

    /// Start the next step (closing the previous one with its duration).
    pub fn step(&mut self, name: &str) {
        self.finish_step();
        self.current += 1;
        self.step_started = Instant::now();
        self.last_detail = name.to_string();
        tracing::info!(step = self.current, total = self.total, "{name}");
        match &self.bar {
            Some(b) => b.set_message(format!("[{}/{}] {name}", self.current, self.total)),
            None => eprintln!(
                "{} [{}/{}] {name} ...",
                self.label, self.current, self.total
            ),
        }
    }

    /// A detail inside the current step (e.g. debootstrap's stage). On a terminal it
    /// replaces the spinner text; in logs it is printed as its own line.
    pub fn detail(&self, text: &str) {
        match &self.bar {
            Some(b) => b.set_message(format!(
                "[{}/{}] {}: {text}",
                self.current, self.total, self.last_detail
            )),
            None => eprintln!("{}     {text}", self.label),
        }
    }

    /// Close the last step and print the total time.
    pub fn finish(mut self, summary: &str) {
        self.finish_step();
        let line = format!("{summary} in {:.1} s", self.started.elapsed().as_secs_f64());
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        eprintln!("{} {line}", self.label);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
