//! `icos upgrade ...`: the A/B upgrade engine on the running system or a disk image.

use anyhow::{Context, Result};
use clap::Subcommand;
use sha256_hex::Sha256Hex;
use std::path::PathBuf;
use std::time::Duration;
use upgrade_engine::health::{HealthCheck, HealthOverrides};

#[derive(Subcommand)]
pub enum UpgradeCmd {
    /// Stream an update package (file or http(s) URL) into the inactive slot.
    Install {
        package: String,
        /// SHA-256 the package must have (as elected).
        #[arg(long)]
        sha256: Sha256Hex,
    },
    /// Running slot, version in each slot, tries left, pending state, last results.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Make the installed slot boot next (on trial).
    Activate {
        /// Boot attempts before systemd-boot falls back to the current slot.
        #[arg(long, default_value_t = 3)]
        tries: u32,
        /// Reboot right away (running system only).
        #[arg(long)]
        reboot: bool,
    },
    /// Confirm the running slot once healthy; roll back (and reboot) if it is not.
    Confirm {
        /// Health config (default: /usr/lib/icos/health.json on a running system).
        #[arg(long)]
        health_config: Option<PathBuf>,
        /// Extra health command that must exit 0.
        #[arg(long)]
        health_cmd: Option<String>,
        /// Extra URL that must answer 2xx.
        #[arg(long)]
        health_url: Option<String>,
        /// Seconds to become healthy before rolling back.
        #[arg(long)]
        deadline: Option<u64>,
        /// Do not reboot after a rollback.
        #[arg(long)]
        no_reboot: bool,
    },
    /// Switch to the other slot now (reboots a running system unless --no-reboot).
    Rollback {
        #[arg(long, default_value = "rollback requested by the operator")]
        reason: String,
        #[arg(long)]
        no_reboot: bool,
    },
    /// Prometheus metrics (text format).
    Metrics,
}

fn open_engine(disk: &Option<PathBuf>) -> Result<upgrade_engine::Engine> {
    Ok(match disk {
        Some(d) => upgrade_engine::Engine::open_disk(d)
            .with_context(|| format!("opening {}", d.display()))?,
        None => {
            upgrade_engine::Engine::open_running().context("opening the running system's disk")?
        }
    })
}

fn reboot() -> Result<()> {
    eprintln!("icos upgrade: rebooting");
    Ok(daemon_support::reboot()?)
}

/// Take the engine lock for a change before anything else (an install's download must not
/// sit open while it waits), saying once why it waits.
fn lock(engine: &mut upgrade_engine::Engine, wait: Duration) -> Result<()> {
    let secs = wait.as_secs();
    engine
        .lock_within(wait, || {
            eprintln!(
                "icos upgrade: another upgrade operation is running (at boot, the confirmation \
                 of a trial runs until it is healthy); waiting up to {secs} s for it to finish"
            )
        })
        .context("taking the upgrade engine's lock")
}

pub fn upgrade(cmd: UpgradeCmd, disk: Option<PathBuf>, wait: Duration) -> Result<i32> {
    let running = disk.is_none();
    let mut engine = open_engine(&disk)?;
    if !matches!(cmd, UpgradeCmd::Status { .. } | UpgradeCmd::Metrics) {
        lock(&mut engine, wait)?;
    }
    let result = match cmd {
        UpgradeCmd::Install { package, sha256 } => {
            let mut src = upgrade_engine::source::open(&package)?;
            let r = engine
                .install(&mut src.reader, &sha256)
                .with_context(|| format!("installing {}", src.description))?;
            println!(
                "installed {} {} into slot {} ({} bytes, sha256 {})",
                engine.kind(),
                r.version,
                r.slot,
                r.package_bytes,
                r.package_sha256
            );
            Ok(0)
        }
        UpgradeCmd::Status { json } => {
            let s = engine.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(0)
        }
        UpgradeCmd::Activate { tries, reboot: now } => {
            let e = engine.activate(tries)?;
            println!(
                "slot {} ({}) boots next, {} tries ({})",
                e.slot,
                e.version,
                tries,
                e.file_name()
            );
            if now && running {
                reboot()?;
            }
            Ok(0)
        }
        UpgradeCmd::Confirm {
            health_config,
            health_cmd,
            health_url,
            deadline,
            no_reboot,
        } => {
            let health = HealthCheck::for_confirm(
                running,
                HealthOverrides {
                    config: health_config,
                    command: health_cmd,
                    url: health_url,
                    deadline_secs: deadline,
                },
            )?;
            match engine.confirm(health.as_ref())? {
                upgrade_engine::ConfirmOutcome::AlreadyConfirmed => {
                    println!("slot {} is confirmed", engine.current_slot()?)
                }
                upgrade_engine::ConfirmOutcome::Confirmed { version } => {
                    println!("confirmed {version}")
                }
                upgrade_engine::ConfirmOutcome::RolledBack { reason } => {
                    println!("rolled back: {reason}");
                    if running && !no_reboot {
                        reboot()?;
                    }
                }
            }
            Ok(0)
        }
        UpgradeCmd::Rollback { reason, no_reboot } => {
            let r = engine.rollback(&reason)?;
            println!("slot {} ({}) boots next", r.to_slot, r.to_version);
            if running && !no_reboot {
                reboot()?;
            }
            Ok(0)
        }
        UpgradeCmd::Metrics => {
            print!("{}", upgrade_engine::metrics::render(&engine.status()?));
            Ok(0)
        }
    };
    // The power-cut harness counts the durable steps an operation takes.
    #[cfg(feature = "crash-points")]
    if std::env::var_os("ICOS_UPGRADE_COUNT_STEPS").is_some() {
        eprintln!("steps={}", engine.steps());
    }
    result
}

fn print_status(s: &upgrade_engine::Status) {
    println!("{} on {} ({})", s.kind, s.disk, s.mode);
    println!(
        "{} slot {} ({}), next boot {}",
        if s.mode == "running" {
            "running"
        } else {
            "current (offline: the slot that boots next)"
        },
        s.current_slot,
        s.current_version.as_deref().unwrap_or("-"),
        s.next_boot
            .map(|x| x.to_string())
            .unwrap_or_else(|| "none".into())
    );
    for sl in &s.slots {
        let state = match &sl.state {
            upgrade_engine::SlotState::Confirmed => "confirmed".to_string(),
            upgrade_engine::SlotState::Trial { tries_left } => {
                format!("on trial, {tries_left} tries left")
            }
            upgrade_engine::SlotState::Bad => "bad (tries used up)".to_string(),
            upgrade_engine::SlotState::Empty => "empty".to_string(),
        };
        println!(
            "  slot {}: {:<10} {}",
            sl.slot,
            sl.version.as_deref().unwrap_or("-"),
            state
        );
    }
    if let Some(li) = &s.state.last_install {
        println!(
            "last install: {} into slot {}: {}",
            li.version.as_deref().unwrap_or("?"),
            li.slot,
            if li.ok {
                format!("ok ({})", li.message)
            } else {
                format!("FAILED: {}", li.message)
            }
        );
    }
    println!("rollbacks: {}", s.state.rollback_count);
    for n in &s.notes {
        println!("note: {n}");
    }
}
