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
