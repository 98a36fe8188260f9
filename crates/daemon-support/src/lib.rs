//! What every icos daemon (upgrade engine, HostOS agent, orchestrator) shares.
//!
//! * [`metrics::Exposition`]: Prometheus text, one family at a time, label values escaped;
//! * [`Console`]: status lines for the operator on the VM or machine console, and in the log;
//! * [`unix_now`]: seconds since the epoch (0 if the clock is before it);
//! * [`release`]: which image, version and slot is running (`/usr/lib/icos/release` and the
//!   kernel command line), with one parser for each;
//! * [`Backoff`]: when to try again after failures;
//! * [`reboot`]: ask systemd to reboot;
//! * [`write_private`]: replace a secret file (mode 0600) whole or not at all.
//!
//! ```
//! use daemon_support::{metrics::Exposition, release::Release};
//! let r = Release::parse("IMAGE=guestos\nBANNER=GUESTOS\nVERSION=1.2.0\n").unwrap();
//! let mut m = Exposition::default();
//! m.single("icos_info", "gauge", "Versions.", &[("version", &r.version)], 1);
//! assert!(m.finish().contains("icos_info{version=\"1.2.0\"} 1"));
//! ```

pub mod metrics;
pub mod net;
pub mod release;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Seconds since the Unix epoch (0 if the clock is set before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where a daemon's status lines for the operator go: always the log, and a console device
/// (or a file, in tests) when one is given.
#[derive(Debug, Clone, Default)]
pub struct Console {
    path: Option<PathBuf>,
}

impl Console {
    pub fn new(path: Option<PathBuf>) -> Console {
        Console { path }
    }

    /// The machine's console.
    pub fn system() -> Console {
        Console::new(Some("/dev/console".into()))
    }

    /// The log only.
    pub fn log_only() -> Console {
        Console::new(None)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// One line; a console that cannot be written is skipped (the log has the line).
    pub fn line(&self, line: &str) {
        tracing::info!("{line}");
        let Some(path) = &self.path else { return };
        use std::io::Write;
        if let Ok(mut c) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = writeln!(c, "{line}");
        }
    }
}

/// When to try something again: at once after a success; after a failure, a wait that grows
/// by `factor` from `min` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Instant,
    wait: Duration,
    min: Duration,
    max: Duration,
    factor: f64,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, factor: f64) -> Self {
        Backoff {
            next: Instant::now(),
            wait: min,
            min,
            max,
            factor,
            failures: 0,
        }
    }

    /// May we try now?
    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// How long until we may try (zero when due).
    pub fn remaining(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now())
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn ok(&mut self) {
        self.wait = self.min;
        self.next = Instant::now();
        self.failures = 0;
    }

    /// Record a failure; returns how long until the next try.
    pub fn fail(&mut self) -> Duration {
        let wait = self.wait;
        self.next = Instant::now() + wait;
        self.failures = self.failures.saturating_add(1);
        self.wait = Duration::from_secs_f64(
            (self.wait.as_secs_f64() * self.factor).min(self.max.as_secs_f64()),
        );
        wait
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    #[error("running `systemctl reboot`: {0}")]
    Start(std::io::Error),
    #[error("`systemctl reboot` failed: {0}")]
    Failed(std::process::ExitStatus),
}

/// Ask systemd to reboot the machine (units stop in order; the boot loader decides the slot).
pub fn reboot() -> Result<(), RebootError> {
    let st = std::process::Command::new("systemctl")
        .arg("reboot")
        .status()
        .map_err(RebootError::Start)?;
    if st.success() {
        Ok(())
    } else {
        Err(RebootError::Failed(st))
    }
}

/// Replace `path` with `bytes`, mode 0600, through a synced temporary file, a rename and a
/// synced directory: a reader or a power cut sees the old content or the new, never half.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(25), 2.0);
        assert!(b.due());
        assert_eq!(b.fail(), Duration::from_secs(10));
        assert!(!b.due());
        assert_eq!(b.fail(), Duration::from_secs(20));
        assert_eq!(b.fail(), Duration::from_secs(25));
        assert_eq!(b.fail(), Duration::from_secs(25));
        assert_eq!(b.failures(), 4);
        b.ok();
        assert!(b.due() && b.failures() == 0);
        assert_eq!(b.fail(), Duration::from_secs(10));
    }

    #[test]
    fn console_lines_go_to_the_given_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console");
        std::fs::write(&p, "").unwrap();
        let c = Console::new(Some(p.clone()));
        c.line("HELLO 1");
        c.line("HELLO 2");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "HELLO 1\nHELLO 2\n");
        // A console that cannot be opened does not fail the caller.
        Console::new(Some(d.path().join("missing/dir"))).line("x");
    }
}
