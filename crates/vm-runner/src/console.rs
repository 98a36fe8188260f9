//! Following the serial console: new lines, waiting for a pattern, readable tails.

use crate::*;
use regex::Regex;
use std::io::{Read, Seek, SeekFrom};

impl Vm {
    /// Read new complete lines from the serial log.
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.serial_log) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.read_pos)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.read_pos += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            lines.push(line.trim_end_matches(['\r', '\n']).to_string());
        }
        lines
    }

    /// Follow the serial console until one of `patterns` matches a line, QEMU exits, or
    /// `timeout` passes. Lines already read by an earlier call are not seen again.
    pub fn wait_for(
        &mut self,
        patterns: &[Regex],
        timeout: Duration,
    ) -> Result<WaitOutcome, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check for exit first, then read: what QEMU wrote last is still seen.
            let exited = self.try_exit_status();
            if let Some(m) = self.match_new_lines(patterns) {
                return Ok(m);
            }
            if let Some(status) = exited {
                return Ok(WaitOutcome::Exited {
                    status: status.to_string(),
                    elapsed: self.started.elapsed(),
                });
            }
            if Instant::now() >= deadline {
                return Ok(WaitOutcome::TimedOut {
                    elapsed: self.started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn match_new_lines(&mut self, patterns: &[Regex]) -> Option<WaitOutcome> {
        for line in self.new_lines() {
            if let Some(index) = patterns.iter().position(|p| p.is_match(&line)) {
                return Some(WaitOutcome::Matched {
                    index,
                    line,
                    elapsed: self.started.elapsed(),
                });
            }
        }
        None
    }

    /// The last `n` lines of the serial console (escape sequences removed).
    pub fn serial_tail(&self, n: usize) -> String {
        serial_tail(&self.serial_log, n)
    }

    /// The last `n` lines QEMU itself wrote to stderr: why it exited when the guest
    /// console is empty.
    pub fn qemu_tail(&self, n: usize) -> String {
        serial_tail(&self.qemu_log, n)
    }
}

/// Remove ANSI escape sequences (OVMF draws with them) so log tails are readable.
pub fn strip_ansi(s: &str) -> String {
    let re = Regex::new(r"\x1b\[[0-9;=?]*[A-Za-z]").expect("static regex");
    re.replace_all(s, "").into_owned()
}

/// The last `n` non-empty lines of a serial log.
pub fn serial_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let clean = strip_ansi(&text);
    let lines: Vec<&str> = clean
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
