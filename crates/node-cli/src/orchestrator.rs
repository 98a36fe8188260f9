//! `icos orchestrator ...`: run the GuestOS orchestrator, or ask it how it is.

use anyhow::Result;
use clap::Subcommand;
use node_status::orchestrator::OrchestratorStatus;
use std::time::Duration;

#[derive(Subcommand)]
pub enum OrchestratorCmd {
    /// Run the orchestrator (the GuestOS service runs this).
    Run {
        /// Seconds between rounds.
        #[arg(long, default_value_t = 10)]
        interval: u64,
        #[arg(long, default_value = "0.0.0.0:9100")]
        listen: std::net::SocketAddr,
    },
    /// Write the systemd-networkd file for this GuestOS from its config disk (run at boot,
    /// before systemd-networkd).
    Network {
        #[arg(long, default_value = "/dev/disk/by-label/ICOSCFG")]
        config_disk: std::path::PathBuf,
        #[arg(long, default_value = node_config::network::NETWORKD_FILE)]
        out: std::path::PathBuf,
    },
    /// Exit 0 if the orchestrator answers on its status port (the GuestOS health check).
    Health {
        #[arg(long, default_value = "http://127.0.0.1:9100")]
        url: String,
    },
    /// The orchestrator's status.
    Status {
        #[arg(long, default_value = "http://127.0.0.1:9100")]
        url: String,
    },
}

fn status(url: &str) -> Result<OrchestratorStatus> {
    Ok(node_status::fetch(
        &format!("{}/status", url.trim_end_matches('/')),
        Duration::from_secs(5),
    )?)
}

pub fn orchestrator(cmd: OrchestratorCmd) -> Result<i32> {
    match cmd {
        OrchestratorCmd::Run { interval, listen } => {
            let opts = orchestrator::Options {
                interval: Duration::from_secs(interval.max(1)),
                listen,
                ..Default::default()
            };
            let o = orchestrator::Orchestrator::new(opts)?;
            o.run()?;
            Ok(0)
        }
        OrchestratorCmd::Network { config_disk, out } => {
            use anyhow::Context;
            let cfg = node_config::guest::read_config_disk(&config_disk)?;
            node_config::network::write_networkd(&out, &cfg.network_plan())
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "GUESTOS NETWORK {}: GuestOS {} ({:?})",
                out.display(),
                cfg.ipv6.as_deref().unwrap_or("(no static IPv6)"),
                cfg.network.mode
            );
            Ok(0)
        }
        OrchestratorCmd::Health { url } => {
            let s = status(&url)?;
            println!(
                "orchestrator of {} answers (GuestOS {}, registry version {})",
                s.node_id, s.guestos_version, s.registry_version
            );
            Ok(0)
        }
        OrchestratorCmd::Status { url } => {
            let s = status(&url)?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(0)
        }
    }
}
