//! The health gate for confirming a trial boot: the OS's required units are active, and an
//! optional command exits 0 and an optional URL answers 2xx — retried until a deadline.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Written into the image by the builder (`/usr/lib/icos/health.json`) from the recipe.
pub const HEALTH_CONFIG: &str = "/usr/lib/icos/health.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    #[serde(default)]
    pub required_units: Vec<String>,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// How long a trial boot may take to become healthy.
    pub deadline_secs: u64,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
}

fn default_interval() -> u64 {
    5
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            required_units: Vec::new(),
            command: None,
            url: None,
            deadline_secs: 300,
            interval_secs: default_interval(),
        }
    }
}

/// Why a system is not healthy (or the check could not be made).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("required unit {unit} is {state}")]
    Unit { unit: String, state: String },
    #[error("cannot run {what}: {error}")]
    Run {
        what: &'static str,
        error: std::io::Error,
    },
    #[error("health command `{command}` failed ({status}){detail}")]
    Command {
        command: String,
        status: String,
        /// The command's last line of error output, if any (with a leading `: `).
        detail: String,
    },
    #[error("health URL {url} answered {status}")]
    UrlStatus { url: String, status: u16 },
    #[error("health URL {url}: {message}")]
    Url { url: String, message: String },
    #[error("not healthy after {secs} s: {last}")]
    Deadline { secs: u64, last: Box<HealthError> },
}

/// What the operator gives on the command line to change or replace the image's check.
#[derive(Debug, Clone, Default)]
pub struct HealthOverrides {
    /// Another health config file instead of [`HEALTH_CONFIG`].
    pub config: Option<PathBuf>,
    pub command: Option<String>,
    pub url: Option<String>,
    pub deadline_secs: Option<u64>,
}

impl HealthOverrides {
    fn is_empty(&self) -> bool {
        self.config.is_none() && self.command.is_none() && self.url.is_none()
    }
}

impl HealthCheck {
    pub fn load(path: &Path) -> Result<HealthCheck, HealthError> {
        let err = |message: String| HealthError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }

    /// The check a confirm uses: on a running system (or when the operator gave any part of
    /// one) the image's config, or the given file, with the given command, URL and deadline
    /// in place of its own; offline with nothing given, none (a disk image has no units).
    pub fn for_confirm(
        running: bool,
        o: HealthOverrides,
    ) -> Result<Option<HealthCheck>, HealthError> {
        if !running && o.is_empty() {
            return Ok(None);
        }
        let path = o.config.unwrap_or_else(|| PathBuf::from(HEALTH_CONFIG));
        let mut h = if path.exists() {
            HealthCheck::load(&path)?
        } else {
            HealthCheck::default()
        };
        if o.command.is_some() {
            h.command = o.command;
        }
        if o.url.is_some() {
            h.url = o.url;
        }
        if let Some(d) = o.deadline_secs {
            h.deadline_secs = d;
        }
        Ok(Some(h))
    }

    /// One round of checks; `Err` names the first thing that is not healthy.
    pub fn check_once(&self) -> Result<(), HealthError> {
        for unit in &self.required_units {
            let out = Command::new("systemctl")
                .args(["is-active", unit])
                .output()
                .map_err(|error| HealthError::Run {
                    what: "systemctl",
                    error,
                })?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state != "active" {
                return Err(HealthError::Unit {
                    unit: unit.clone(),
                    state,
                });
            }
        }
        if let Some(cmd) = &self.command {
            check_command(cmd)?;
        }
        if let Some(url) = &self.url {
            check_url(url)?;
        }
        Ok(())
    }

    /// Check until healthy or `deadline_secs` passed; returns the last failure reason.
    pub fn wait_healthy(&self) -> Result<(), HealthError> {
        let deadline = Instant::now() + Duration::from_secs(self.deadline_secs);
        loop {
            match self.check_once() {
                Ok(()) => return Ok(()),
                Err(why) if Instant::now() >= deadline => {
                    return Err(HealthError::Deadline {
                        secs: self.deadline_secs,
                        last: Box::new(why),
                    })
                }
                Err(why) => tracing::info!("not healthy yet: {why}"),
            }
            std::thread::sleep(Duration::from_secs(self.interval_secs.max(1)));
        }
    }
}

fn check_command(cmd: &str) -> Result<(), HealthError> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|error| HealthError::Run {
            what: "the health command",
            error,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("").trim();
    Err(HealthError::Command {
        command: cmd.to_string(),
        status: out.status.to_string(),
        detail: if last.is_empty() {
            String::new()
        } else {
            format!(": {last}")
        },
    })
}

fn check_url(url: &str) -> Result<(), HealthError> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    match agent.get(url).call() {
        Ok(r) if (200..300).contains(&r.status()) => Ok(()),
        Ok(r) => Err(HealthError::UrlStatus {
            url: url.to_string(),
            status: r.status(),
        }),
        Err(e) => Err(HealthError::Url {
            url: url.to_string(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_gate() {
        let ok = HealthCheck {
            command: Some("true".into()),
            deadline_secs: 0,
            ..Default::default()
        };
        assert!(ok.check_once().is_ok());
        let bad = HealthCheck {
            command: Some("echo broken >&2; exit 3".into()),
            deadline_secs: 1,
            interval_secs: 1,
            ..Default::default()
        };
        let e = bad.wait_healthy().unwrap_err().to_string();
        assert!(
            e.contains("broken") && e.contains("not healthy after 1 s"),
            "{e}"
        );
    }

    #[test]
    fn url_gate_reports_refused_connection() {
        let bad = HealthCheck {
            url: Some("http://127.0.0.1:9/health".into()),
            deadline_secs: 0,
            ..Default::default()
        };
        let e = bad.check_once().unwrap_err().to_string();
        assert!(e.contains("127.0.0.1:9"), "{e}");
    }

    #[test]
    fn overrides_replace_the_image_check_and_offline_needs_none() {
        assert!(HealthCheck::for_confirm(false, HealthOverrides::default())
            .unwrap()
            .is_none());
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("health.json");
        std::fs::write(
            &file,
            r#"{"required_units":["a.service"],"command":"true","deadline_secs":9}"#,
        )
        .unwrap();
        let h = HealthCheck::for_confirm(
            false,
            HealthOverrides {
                config: Some(file.clone()),
                url: Some("http://x/health".into()),
                deadline_secs: Some(3),
                ..Default::default()
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.required_units, ["a.service"]);
        assert_eq!(h.command.as_deref(), Some("true"));
        assert_eq!(h.url.as_deref(), Some("http://x/health"));
        assert_eq!(h.deadline_secs, 3);
        std::fs::write(&file, "{").unwrap();
        let e = HealthCheck::for_confirm(
            false,
            HealthOverrides {
                config: Some(file),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("health.json"), "{e}");
    }
}
