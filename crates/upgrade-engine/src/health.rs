//! The health gate for confirming a trial boot: the OS's required units are active, and an
//! optional command exits 0 and an optional URL answers 2xx — retried until a deadline.

use serde::{Deserialize, Serialize};
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

impl HealthCheck {
    pub fn load(path: &std::path::Path) -> Result<HealthCheck, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// One round of checks; `Err` names the first thing that is not healthy.
    pub fn check_once(&self) -> Result<(), String> {
        for unit in &self.required_units {
            let out = Command::new("systemctl")
                .args(["is-active", unit])
                .output()
                .map_err(|e| format!("cannot run systemctl: {e}"))?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if state != "active" {
                return Err(format!("required unit {unit} is {state}"));
            }
        }
        if let Some(cmd) = &self.command {
            let out = Command::new("sh")
                .args(["-c", cmd])
                .output()
                .map_err(|e| format!("cannot run health command: {e}"))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let last = err.lines().last().unwrap_or("").trim();
                return Err(format!(
                    "health command `{cmd}` failed ({}){}",
                    out.status,
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                ));
            }
        }
        if let Some(url) = &self.url {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(5))
                .build();
            match agent.get(url).call() {
                Ok(r) if (200..300).contains(&r.status()) => {}
                Ok(r) => return Err(format!("health URL {url} answered {}", r.status())),
                Err(e) => return Err(format!("health URL {url}: {e}")),
            }
        }
        Ok(())
    }

    /// Check until healthy or `deadline_secs` passed; returns the last failure reason.
    pub fn wait_healthy(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(self.deadline_secs);
        loop {
            match self.check_once() {
                Ok(()) => return Ok(()),
                Err(why) if Instant::now() >= deadline => {
                    return Err(format!("not healthy after {} s: {why}", self.deadline_secs))
                }
                Err(why) => tracing::info!("not healthy yet: {why}"),
            }
            std::thread::sleep(Duration::from_secs(self.interval_secs.max(1)));
        }
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
        let e = bad.wait_healthy().unwrap_err();
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
        let e = bad.check_once().unwrap_err();
        assert!(e.contains("127.0.0.1:9"), "{e}");
    }
}
