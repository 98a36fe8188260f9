//! The HostOS agent.
//!
//! [`Agent::start`] runs three parts on one [`HostosConfig`]:
//! * the [`supervisor`]: renders the GuestOS VM (vCPUs, memory, the GuestOS disk, OVMF, a
//!   virtio NIC with the node's deterministic GuestOS MAC, the serial log, the host-guest
//!   channel, and a small config disk with `guest.json`), starts QEMU (KVM if it truly works,
//!   else TCG), waits for `GUESTOS BOOT SUCCESS` / `FAILURE` with a timeout, restarts the VM
//!   when it exits, fails or hangs (exponential backoff, a limit, a log line and a console
//!   line saying why), and shuts it down cleanly when stopped;
//! * the [`channel`] server (protocol in the `host-channel` crate) answering the guest;
//! * an HTTP endpoint with `/v1/status` (JSON), `/metrics` (Prometheus) and
//!   `/v1/request-hostos-upgrade`, which takes the same path as a guest's request ([`upgrader`]).
//!
//! ```no_run
//! let cfg = hostos_agent::config::HostosConfig::load(std::path::Path::new("hostos.toml")).unwrap();
//! let agent = hostos_agent::Agent::start(cfg).unwrap();
//! std::thread::sleep(std::time::Duration::from_secs(60));
//! agent.stop();
//! ```

pub mod channel;
/// The HostOS config is a stage of the node's config chain (`node-config`).
pub mod config {
    pub use node_config::hostos::*;
}
pub mod guestdisk;
pub mod http;
pub mod supervisor;
pub mod upgrader;

use config::HostosConfig;
pub use node_status::hostos::{AgentStatus, GuestState, GuestStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The status the agent publishes; written by its parts, read by the HTTP endpoint. No
/// decision is taken from it.
pub type Shared = Arc<Mutex<AgentStatus>>;

/// The running HostOS version: the image's release file, else the config (development).
pub fn hostos_version(cfg: &HostosConfig) -> String {
    daemon_support::release::Release::running_version_of("hostos")
        .or_else(|| cfg.hostos_version.clone())
        .unwrap_or_else(|| "dev".into())
}

/// The node's addresses as this host's config derives them (shown in the status).
pub fn addresses(cfg: &HostosConfig) -> node_status::hostos::NodeAddresses {
    node_status::hostos::NodeAddresses {
        deployment: cfg.deployment.clone(),
        management_mac: cfg.management_mac.to_string(),
        hostos_mac: cfg.hostos_mac().to_string(),
        hostos_ipv6: cfg.hostos_ipv6().map(|a| a.to_string()),
        guestos_mac: cfg.guest_mac().to_string(),
        guestos_ipv6: cfg.guest_ipv6(),
        network: match cfg.network_mode {
            node_config::NetworkMode::Static => "static".into(),
            node_config::NetworkMode::Dhcp => "dhcp".into(),
        },
        ipv6_gateway: cfg.ipv6_gateway.map(|g| g.to_string()),
        configured_ipv6: daemon_support::net::global_ipv6(),
    }
}

/// Where the agent's status lines go: the log, and the console when configured.
pub(crate) fn console(cfg: &HostosConfig) -> daemon_support::Console {
    if cfg.console {
        daemon_support::Console::system()
    } else {
        daemon_support::Console::log_only()
    }
}

pub struct Agent {
    pub shared: Shared,
    pub addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    supervisor: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    /// Start the HTTP endpoint and the supervisor. Config problems are logged, shown in the
    /// status, and do not stop the agent.
    pub fn start(cfg: HostosConfig) -> std::io::Result<Agent> {
        for p in &cfg.problems {
            tracing::warn!("HostOS config: {p}");
            console(&cfg).line(&format!("HOSTOS CONFIG PROBLEM {p}"));
        }
        std::fs::create_dir_all(&cfg.state_dir)?;
        let shared: Shared = Arc::new(Mutex::new(AgentStatus {
            hostos_version: hostos_version(&cfg),
            node: addresses(&cfg),
            config_problems: cfg.problems.clone(),
            ..Default::default()
        }));
        let upgrader = Arc::new(upgrader::Upgrader::new(cfg.clone(), shared.clone()));
        let host = Arc::new(channel::AgentHost::new(
            cfg.clone(),
            shared.clone(),
            upgrader.clone(),
        ));
        let addr = http::spawn(cfg.listen, shared.clone(), upgrader)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (cfg2, shared2, stop2) = (cfg.clone(), shared.clone(), stop.clone());
        let supervisor = std::thread::Builder::new()
            .name("guest-supervisor".into())
            .spawn(move || supervisor::supervise(cfg2, shared2, host, stop2))?;
        Ok(Agent {
            shared,
            addr,
            stop,
            supervisor: Some(supervisor),
        })
    }

    pub fn status(&self) -> AgentStatus {
        self.shared.lock().expect("status lock").clone()
    }

    /// Stop: the GuestOS VM is powered down (killed after a grace period).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
    }
}

/// Prometheus text for an agent status.
pub fn metrics(s: &AgentStatus) -> String {
    let mut o = daemon_support::metrics::Exposition::default();
    let g = &s.guest;
    o.single(
        "icos_hostos_guest_running",
        "gauge",
        "1 while the GuestOS VM has reported a successful boot.",
        &[],
        u8::from(g.state == GuestState::Running),
    );
    o.single(
        "icos_hostos_guest_restarts_total",
        "counter",
        "GuestOS VM restarts by the agent.",
        &[],
        g.restarts,
    );
    // The GuestOS version comes from the guest's console: the writer escapes it.
    o.single(
        "icos_hostos_info",
        "gauge",
        "HostOS and GuestOS versions (value 1).",
        &[
            ("hostos_version", &s.hostos_version),
            ("guestos_version", g.version.as_deref().unwrap_or("")),
            ("guestos_slot", g.slot.map(|s| s.as_str()).unwrap_or("")),
        ],
        1,
    );
    let name = "icos_hostos_channel_requests_total";
    o.family(
        name,
        "counter",
        "Host-channel requests answered, errors, throttled.",
    );
    o.sample(name, &[("result", "answered")], s.channel.answered);
    o.sample(name, &[("result", "error")], s.channel.errors);
    o.sample(name, &[("result", "throttled")], s.channel.throttled);
    o.single(
        "icos_hostos_guest_boot_seconds",
        "gauge",
        "Time of the last GuestOS boot to SUCCESS.",
        &[],
        g.boot_secs.unwrap_or(0.0),
    );
    o.finish()
}
