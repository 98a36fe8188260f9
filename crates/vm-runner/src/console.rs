//! Following the serial console: new lines, waiting for a pattern, readable tails.

use crate::*;
use regex::Regex;
use std::io::{Read, Seek, SeekFrom};

impl Vm {
    /// Read new complete lines from the serial log into `unseen`.
    fn read_new_lines(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.serial_log) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.read_pos)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.read_pos += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            self.unseen
                .push_back(line.trim_end_matches(['\r', '\n']).to_string());
        }
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

    /// The first unseen line that matches; the lines after it stay for the next wait.
    fn match_new_lines(&mut self, patterns: &[Regex]) -> Option<WaitOutcome> {
        self.read_new_lines();
        while let Some(line) = self.unseen.pop_front() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower of `log` with no QEMU behind it.
    fn follower(log: &Path) -> Vm {
        Vm {
            child: None,
            serial_log: log.to_path_buf(),
            qemu_log: log.with_extension("qemu"),
            qmp_socket: log.with_extension("qmp"),
            read_pos: 0,
            partial: String::new(),
            unseen: Default::default(),
            started: Instant::now(),
            accel: Accel::Tcg,
        }
    }

    fn matched(vm: &mut Vm, patterns: &[Regex]) -> Option<String> {
        match vm.wait_for(patterns, Duration::from_millis(300)).unwrap() {
            WaitOutcome::Matched { line, .. } => Some(line),
            _ => None,
        }
    }

    /// Lines that arrive in one read after a match are seen by the next wait, in order;
    /// a line split across reads is matched once complete.
    #[test]
    fn each_line_is_seen_once_even_when_many_arrive_together() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, "boot\r\nSTEP 1\nnoise\nSTEP 2\nSTEP 3\nDONE").unwrap();
        let mut vm = follower(&log);
        let step = [Regex::new("STEP|DONE").unwrap()];
        assert_eq!(matched(&mut vm, &step).as_deref(), Some("STEP 1"));
        assert_eq!(matched(&mut vm, &step).as_deref(), Some("STEP 2"));
        assert_eq!(matched(&mut vm, &step).as_deref(), Some("STEP 3"));
        // `DONE` has no newline yet: not a line.
        assert_eq!(matched(&mut vm, &step), None);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b" in 3 s\n").unwrap();
        assert_eq!(matched(&mut vm, &step).as_deref(), Some("DONE in 3 s"));
        assert_eq!(matched(&mut vm, &step), None);
    }
}
