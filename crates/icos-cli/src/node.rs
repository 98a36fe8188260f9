//! `icos hostos ...` (the HostOS agent) and `icos channel ...` (its guest-side client).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
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
            let s = get_json(&format!("{}/status", url.trim_end_matches('/')))?;
            println!(
                "orchestrator of {} answers (GuestOS {}, registry version {})",
                s["node_id"].as_str().unwrap_or("?"),
                s["guestos_version"].as_str().unwrap_or("?"),
                s["registry_version"]
            );
            Ok(0)
        }
        OrchestratorCmd::Status { url } => {
            let s = get_json(&format!("{}/status", url.trim_end_matches('/')))?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(0)
        }
    }
}

fn get_json(url: &str) -> Result<serde_json::Value> {
    let body = ureq::get(url)
        .timeout(Duration::from_secs(5))
        .call()
        .with_context(|| url.to_string())?
        .into_string()?;
    serde_json::from_str(&body).with_context(|| format!("{url}: not JSON"))
}

#[derive(Subcommand)]
pub enum ChannelCmd {
    /// The host's protocol version.
    ProtocolVersion,
    /// The HostOS version the host runs.
    HostosVersion,
    /// Show a message on the host console.
    Notify { message: String },
    /// Ask the host to install the HostOS version assigned to this node.
    RequestHostosUpgrade,
    /// At boot: tell the host this GuestOS came up, and print the host's HostOS version.
    Hello,
}

fn agent_status(agent: &str) -> Result<serde_json::Value> {
    get_json(&format!("{}/v1/status", agent.trim_end_matches('/')))
}

pub fn hostos(cmd: HostosCmd) -> Result<i32> {
    match cmd {
        HostosCmd::Run {
            config,
            config_partition,
        } => {
            let cfg = match (config, config_partition) {
                (Some(p), _) => hostos_agent::config::HostosConfig::load(&p)?,
                (None, Some(d)) => hostos_agent::config::HostosConfig::load_from_fat(&d)?,
                (None, None) => hostos_agent::config::HostosConfig::load_from_fat(
                    std::path::Path::new("/dev/disk/by-partlabel/config"),
                )?,
            };
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
        HostosCmd::Status { agent, json } => {
            let s = agent_status(&agent)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(0);
            }
            let g = &s["guest"];
            println!("HostOS {}", s["hostos_version"].as_str().unwrap_or("?"));
            println!(
                "GuestOS VM: {} (version {}, slot {}, pid {}, {}), restarts {}",
                g["state"].as_str().unwrap_or("?"),
                g["version"].as_str().unwrap_or("-"),
                g["slot"].as_str().unwrap_or("-"),
                g["pid"]
                    .as_u64()
                    .map(|p| p.to_string())
                    .unwrap_or("-".into()),
                g["accel"].as_str().unwrap_or("-"),
                g["restarts"]
            );
            if let Some(e) = g["last_error"].as_str() {
                println!("last error: {e}");
            }
            println!(
                "channel: {} answered, {} errors, {} throttled; {} notifications",
                s["channel"]["answered"],
                s["channel"]["errors"],
                s["channel"]["throttled"],
                s["notifications"]
            );
            if let Some(r) = s["upgrade"]["last_result"].as_str() {
                println!("last HostOS upgrade: {r}");
            }
            for p in s["config_problems"].as_array().into_iter().flatten() {
                println!("config problem: {}", p.as_str().unwrap_or(""));
            }
            Ok(0)
        }
        HostosCmd::WaitGuest { timeout, agent } => {
            let end = Instant::now() + Duration::from_secs(timeout);
            let mut last = String::from("agent not reachable");
            while Instant::now() < end {
                match agent_status(&agent) {
                    Ok(s) if s["guest"]["state"] == "running" => {
                        println!(
                            "GuestOS {} is running",
                            s["guest"]["version"].as_str().unwrap_or("?")
                        );
                        return Ok(0);
                    }
                    Ok(s) => last = format!("guest state {}", s["guest"]["state"]),
                    Err(e) => last = e.to_string(),
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            bail!("the GuestOS VM did not report a successful boot within {timeout} s ({last})")
        }
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

pub fn channel(cmd: ChannelCmd, device: PathBuf) -> Result<i32> {
    use host_channel::{Client, Reply, Request};
    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device)
        .with_context(|| format!("opening the host channel {}", device.display()))?;
    let mut c = Client::new(port);
    if let ChannelCmd::Hello = cmd {
        let release = std::fs::read_to_string("/usr/lib/icos/release").unwrap_or_default();
        let field = |k: &str| {
            release
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("?")
                .to_string()
        };
        let slot = std::fs::read_to_string("/proc/cmdline")
            .ok()
            .and_then(|c| {
                c.split_whitespace()
                    .find_map(|a| a.strip_prefix("icos.slot=").map(str::to_string))
            })
            .unwrap_or_else(|| "-".into());
        let hostos = match c.call(Request::HostosVersion {})? {
            Reply::HostosVersion { version } => version,
            other => bail!("unexpected answer {other:?}"),
        };
        c.call(Request::Notify {
            message: format!(
                "{} {} booted on slot {slot}",
                field("BANNER="),
                field("VERSION=")
            ),
        })?;
        let line = format!("{} HOST hostos={hostos}", field("BANNER="));
        println!("{line}");
        if let Ok(mut con) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
            use std::io::Write;
            let _ = writeln!(con, "{line}");
        }
        return Ok(0);
    }
    let req = match cmd {
        ChannelCmd::Hello => unreachable!("handled above"),
        ChannelCmd::ProtocolVersion => Request::ProtocolVersion {},
        ChannelCmd::HostosVersion => Request::HostosVersion {},
        ChannelCmd::Notify { message } => Request::Notify { message },
        ChannelCmd::RequestHostosUpgrade => Request::RequestHostosUpgrade {},
    };
    match c.call(req)? {
        Reply::ProtocolVersion { version } => println!("{version}"),
        Reply::HostosVersion { version } => println!("{version}"),
        Reply::Notified => println!("notified"),
        Reply::HostosUpgrade(a) => println!("{}", serde_json::to_string(&a)?),
    }
    Ok(0)
}
