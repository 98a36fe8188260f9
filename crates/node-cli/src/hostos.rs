//! `icos hostos ...`: run the HostOS agent, ask it how its guest is, wait for the guest,
//! ask for the HostOS upgrade governance assigned.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use node_status::hostos::{AgentStatus, GuestState};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const DEFAULT_AGENT: &str = "http://127.0.0.1:9100";

#[derive(Subcommand)]
pub enum HostosCmd {
    /// Run the agent in the foreground (the HostOS service runs this).
    Run {
        /// A hostos.toml file.
        #[arg(long, conflicts_with = "config_partition")]
        config: Option<PathBuf>,
        /// A FAT config partition holding hostos.toml (default on HostOS).
        #[arg(long)]
        config_partition: Option<PathBuf>,
    },
    /// Write the systemd-networkd file for this HostOS from its config (run at boot, before
    /// systemd-networkd): its deterministic MAC, static IPv6 address and gateway.
    Network {
        /// A hostos.toml file (default: the config partition).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = node_config::network::NETWORKD_FILE)]
        out: PathBuf,
    },
    /// Guest state, restarts, versions, last error.
    Status {
        #[arg(long, default_value = DEFAULT_AGENT)]
        agent: String,
        #[arg(long)]
        json: bool,
    },
    /// Wait until the GuestOS VM reported a successful boot (the HostOS health check).
    WaitGuest {
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        #[arg(long, default_value = DEFAULT_AGENT)]
        agent: String,
    },
    /// Ask the agent for the HostOS upgrade governance assigned (same path as a guest request).
    RequestUpgrade {
        #[arg(long, default_value = DEFAULT_AGENT)]
        agent: String,
    },
}

fn agent_status(agent: &str) -> Result<AgentStatus> {
    Ok(node_status::fetch(
        &format!("{}/v1/status", agent.trim_end_matches('/')),
        Duration::from_secs(5),
    )?)
}

pub fn hostos(cmd: HostosCmd) -> Result<i32> {
    match cmd {
        HostosCmd::Run {
            config,
            config_partition,
        } => run(config, config_partition),
        HostosCmd::Network { config, out } => {
            let cfg = load(config, None)?;
            let plan = cfg.network_plan();
            node_config::network::write_networkd(&out, &plan)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "HOSTOS NETWORK {}: HostOS {} {}",
                out.display(),
                cfg.hostos_mac(),
                cfg.hostos_ipv6()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "(no IPv6 prefix configured)".into())
            );
            Ok(0)
        }
        HostosCmd::Status { agent, json } => {
            let s = agent_status(&agent)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(0)
        }
        HostosCmd::WaitGuest { timeout, agent } => wait_guest(&agent, timeout),
        HostosCmd::RequestUpgrade { agent } => {
            let url = format!("{}/v1/request-hostos-upgrade", agent.trim_end_matches('/'));
            match ureq::post(&url).call() {
                Ok(r) => println!("{}", r.into_string()?),
                Err(ureq::Error::Status(code, r)) => {
                    bail!("HTTP {code}: {}", r.into_string().unwrap_or_default())
                }
                Err(e) => return Err(e).context(url),
            }
            Ok(0)
        }
    }
}

fn load(
    config: Option<PathBuf>,
    config_partition: Option<PathBuf>,
) -> Result<hostos_agent::config::HostosConfig> {
    use hostos_agent::config::HostosConfig;
    Ok(match (config, config_partition) {
        (Some(p), _) => HostosConfig::load(&p)?,
        (None, Some(d)) => HostosConfig::load_from_fat(&d)?,
        (None, None) => {
            HostosConfig::load_from_fat(std::path::Path::new("/dev/disk/by-partlabel/config"))?
        }
    })
}

fn run(config: Option<PathBuf>, config_partition: Option<PathBuf>) -> Result<i32> {
    let cfg = load(config, config_partition)?;
    for p in &cfg.problems {
        eprintln!("hostos config: {p}");
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let agent = hostos_agent::Agent::start(cfg)?;
    eprintln!("hostos agent: status on http://{}/v1/status", agent.addr);
    if let Some(sig) = signals.forever().next() {
        eprintln!("hostos agent: signal {sig}; shutting the GuestOS VM down");
    }
    agent.stop();
    Ok(0)
}

fn word<T: serde::Serialize + std::fmt::Debug>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{v:?}"))
}

fn print_status(s: &AgentStatus) {
    let g = &s.guest;
    let dash = || "-".to_string();
    println!("HostOS {}", s.hostos_version);
    println!(
        "GuestOS VM: {} (version {}, slot {}, pid {}, {}), restarts {}",
        word(&g.state),
        g.version.clone().unwrap_or_else(dash),
        g.slot.map(|x| x.to_string()).unwrap_or_else(dash),
        g.pid.map(|p| p.to_string()).unwrap_or_else(dash),
        g.accel.map(|a| word(&a)).unwrap_or_else(dash),
        g.restarts
    );
    if let Some(e) = &g.last_error {
        println!("last error: {e}");
    }
    println!(
        "channel: {} answered, {} errors, {} throttled; {} notifications",
        s.channel.answered, s.channel.errors, s.channel.throttled, s.notifications
    );
    if let Some(r) = &s.upgrade.last_result {
        println!(
            "last HostOS upgrade: {} {}: {}",
            r.version,
            if r.ok { "ok" } else { "FAILED" },
            r.message
        );
    }
    for p in &s.config_problems {
        println!("config problem: {p}");
    }
}

fn wait_guest(agent: &str, timeout: u64) -> Result<i32> {
    let end = Instant::now() + Duration::from_secs(timeout);
    let mut last = String::from("agent not reachable");
    while Instant::now() < end {
        match agent_status(agent) {
            Ok(s) if s.guest.state == GuestState::Running => {
                println!(
                    "GuestOS {} is running",
                    s.guest.version.as_deref().unwrap_or("?")
                );
                return Ok(0);
            }
            Ok(s) => last = format!("guest state {}", word(&s.guest.state)),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    bail!("the GuestOS VM did not report a successful boot within {timeout} s ({last})")
}
