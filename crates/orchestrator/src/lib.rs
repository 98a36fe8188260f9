//! The GuestOS orchestrator: the node's agent inside the GuestOS.
//!
//! [`Orchestrator::run`] loops every few seconds:
//! 1. **identity**: a node key pair made on first boot and kept on the GuestOS config
//!    partition (which survives upgrades); the node id is derived from its public key;
//! 2. **registration**: if the registry does not list the node yet and the host passed a node
//!    operator key on the config disk, sign an add-node request and submit it; without a key,
//!    say so on the console and wait;
//! 3. **registry**: sync and verify (registry-client) with backoff while unreachable;
//! 4. **GuestOS**: the version the node must run is its subnet's, or the unassigned nodes'
//!    one; when it differs from the running version, download from the elected URLs (the list
//!    rotated by node id, the next URL on any error), install with the upgrade engine (which
//!    refuses a package whose SHA-256 is not the elected one); then, when the subnet can
//!    spare the node ([`rollout`]: a few members at a time, in member order, each back on
//!    the new version and caught up before the next goes), activate and reboot. A version
//!    that failed its health check on this node is never retried;
//! 5. **HostOS**: ask the host its version over the channel; if governance assigned another,
//!    ask the host to upgrade (backoff 1 min × 1.75 up to 2 h);
//! 6. **firewall**: nftables rules from the registry (node > subnet > global);
//! 7. **replica**: in a subnet, the `icos-replica` unit runs the subnet's replica (its key
//!    opened from the box sealed to this node); out of every subnet, it is stopped and its
//!    state deleted ([`replica`]);
//! 8. **boundary**: named an API boundary node by governance, the `icos-boundary` unit
//!    serves the network's API and pages on the payload port ([`boundary`]); the replica
//!    and the boundary share the unit-and-folder mechanics of [`payload`].
//!
//! `/status` (JSON) and `/metrics` (Prometheus) are served on the status port.
//!
//! Main types: [`Options`] (where the config disk, key store, channel and status port are),
//! [`Orchestrator`] (the loop), [`OrchestratorStatus`] (what `/status` shows, from `node-status`) and [`OrchestratorError`].
//!
//! ```no_run
//! use orchestrator::{Options, Orchestrator};
//! // Inside the GuestOS (what `icos node orchestrator` runs): the defaults point at the
//! // config disk, the config partition, the host channel and port 9100.
//! let o = Orchestrator::new(Options::default()).unwrap();
//! println!("node {}", o.shared.lock().unwrap().node_id);
//! o.run().unwrap(); // serves /status and loops forever
//! ```

pub mod boundary;
pub mod firewall;
mod http;
pub mod identity;
pub mod payload;
pub mod replica;
pub mod rollout;

use daemon_support::release::{running_slot, Release};
use daemon_support::{unix_now, Backoff, Console};
use node_config::guest::{read_config_disk, GuestConfig};
pub use node_status::orchestrator::{
    BoundaryState, GuestosUpgrade, HostosRequest, OrchestratorStatus, ReplicaState, UpgradeState,
};
use registry_model::{keys, Registration, SignedRegistration};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The node key could not be read or made on the config partition.
    #[error("node key store {path}: {message}")]
    NodeKey { path: PathBuf, message: String },
    /// nftables is missing or refused the rendered ruleset.
    #[error("firewall: {0}")]
    Firewall(String),
    #[error("status port {addr}: {error}")]
    StatusPort {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The host-provided config disk (guest.json).
    pub config_disk: PathBuf,
    /// FAT partition that keeps the node key across upgrades.
    pub node_store: PathBuf,
    pub state_dir: PathBuf,
    pub listen: std::net::SocketAddr,
    pub channel: PathBuf,
    pub interval: Duration,
    /// Reboot after activating an upgrade (off only in tests that drive a disk image).
    pub reboot: bool,
    /// Where status lines for the operator go (the VM console; a file in tests; None: logs only).
    pub console: Option<PathBuf>,
    /// Where the replica lives and which unit runs it.
    pub replica: replica::ReplicaPlace,
    /// Where the API boundary lives and which unit runs it.
    pub boundary: boundary::BoundaryPlace,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config_disk: "/dev/disk/by-label/ICOSCFG".into(),
            node_store: "/dev/disk/by-partlabel/config".into(),
            state_dir: "/var/lib/icos/orchestrator".into(),
            listen: "0.0.0.0:9100".parse().expect("static"),
            channel: "/dev/virtio-ports/org.icos.host.0".into(),
            interval: Duration::from_secs(10),
            reboot: true,
            console: Some("/dev/console".into()),
            replica: replica::ReplicaPlace::default(),
            boundary: boundary::BoundaryPlace::default(),
        }
    }
}

/// The status the orchestrator publishes (written by the loop, read by `/status`; no
/// decision is taken from it).
pub type Shared = Arc<Mutex<OrchestratorStatus>>;

/// Why an upgrade attempt failed.
#[derive(Debug, thiserror::Error)]
enum UpgradeFailed {
    #[error(transparent)]
    Open(#[from] upgrade_engine::EngineError),
    #[error(transparent)]
    Install(#[from] upgrade_engine::elected::ElectedError),
}

/// What the engine says about this disk, taken each round: the orchestrator's own
/// decisions rest on it, never on its published status.
#[derive(Debug, Clone, Default)]
struct EngineView {
    confirmed: bool,
    failed_versions: Vec<String>,
}

pub struct Orchestrator {
    opts: Options,
    pub shared: Shared,
    console: Console,
    cfg: Option<GuestConfig>,
    key: keys::SecretKey,
    node_id: String,
    engine: EngineView,
    registry_backoff: Backoff,
    upgrade_backoff: Backoff,
    /// The version `upgrade_backoff` counts failures for; a new target starts afresh.
    upgrade_backoff_target: Option<String>,
    hostos_backoff: Backoff,
    register_backoff: Backoff,
    /// What the console last said the node waits for, and when: said again on a change or
    /// after ten minutes, so an operator at the console sees why a node does not register.
    last_waiting_message: Option<(String, Instant)>,
    applied_ruleset: Option<String>,
    /// The replica state last said on the console.
    said_replica: Option<ReplicaState>,
    /// Since when the node's replica has been leaving its subnet's log.
    leaving_since: Option<std::time::Instant>,
    /// The boundary state last said on the console.
    said_boundary: Option<BoundaryState>,
    /// Why the node last waited for its turn in a rolling upgrade, as said on the console.
    said_turn: Option<String>,
}

impl Orchestrator {
    /// Read the config disk and the node key (making one on first boot).
    pub fn new(opts: Options) -> Result<Orchestrator, OrchestratorError> {
        let console = Console::new(opts.console.clone());
        let key = identity::load_or_create(&opts.node_store)?;
        let public_key = keys::public_hex(&key);
        let node_id = registry_model::node_id(&public_key);
        let (cfg, config_error) = match read_config_disk(&opts.config_disk) {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e.to_string())),
        };
        if let Some(e) = &config_error {
            console.line(&format!(
                "GUESTOS ORCHESTRATOR config problem: {e}; the node cannot follow a registry"
            ));
        }
        let shared = Arc::new(Mutex::new(OrchestratorStatus {
            node_id: node_id.clone(),
            public_key,
            guestos_version: running_version(),
            slot: running_slot(),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            config_error,
            ..Default::default()
        }));
        Ok(Orchestrator {
            opts,
            shared,
            console,
            cfg,
            key,
            node_id,
            engine: EngineView::default(),
            registry_backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(300), 2.0),
            upgrade_backoff: Backoff::new(Duration::from_secs(60), Duration::from_secs(1800), 2.0),
            upgrade_backoff_target: None,
            hostos_backoff: Backoff::new(Duration::from_secs(60), Duration::from_secs(7200), 1.75),
            register_backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(300), 2.0),
            last_waiting_message: None,
            applied_ruleset: None,
            said_replica: None,
            said_turn: None,
            leaving_since: None,
            said_boundary: None,
        })
    }

    fn console(&self, line: &str) {
        self.console.line(line);
    }

    /// Record what the node waits for in the status, and say it on the console when it
    /// changed or ten minutes after it was last said.
    fn waiting(&mut self, what: String) {
        let due = match &self.last_waiting_message {
            Some((last, at)) => *last != what || at.elapsed() > Duration::from_secs(600),
            None => true,
        };
        if due {
            self.console(&format!("GUESTOS ORCHESTRATOR waiting for {what}"));
            self.last_waiting_message = Some((what.clone(), Instant::now()));
        }
        self.set(|s| s.waiting_for = Some(what));
    }

    fn set(&self, f: impl FnOnce(&mut OrchestratorStatus)) {
        f(&mut self.shared.lock().expect("status lock"));
    }

    /// Serve status and run the loop forever.
    pub fn run(mut self) -> Result<(), OrchestratorError> {
        http::spawn(self.opts.listen, self.shared.clone()).map_err(|error| {
            OrchestratorError::StatusPort {
                addr: self.opts.listen,
                error,
            }
        })?;
        let mut client = None;
        loop {
            self.tick(&mut client);
            std::thread::sleep(self.opts.interval);
        }
    }

    /// One round of the loop (public for tests).
    pub fn tick(&mut self, client: &mut Option<registry_client::Client>) {
        self.refresh_engine_status();
        let addrs = daemon_support::net::global_ipv6();
        self.set(|s| s.ipv6_addresses = addrs);
        let Some(cfg) = self.cfg.clone() else { return };
        let Some(genesis) = cfg
            .genesis_hash
            .clone()
            .filter(|_| !cfg.registry_urls.is_empty())
        else {
            self.waiting("a registry (no registry_urls/genesis_hash on the config disk)".into());
            return;
        };
        if client.is_none() {
            match registry_client::Client::open(registry_client::ClientConfig::new(
                cfg.registry_urls.clone(),
                &genesis,
                self.opts.state_dir.join("registry"),
            )) {
                Ok(c) => *client = Some(c),
                Err(e) => {
                    self.set(|s| s.registry_error = Some(e.to_string()));
                    return;
                }
            }
        }
        let c = client.as_mut().expect("opened");
        if self.registry_backoff.due() {
            match c.sync() {
                Ok(r) => {
                    self.registry_backoff.ok();
                    self.set(|s| {
                        s.registry_version = r.to_version;
                        s.registry_error = None;
                        s.registry_synced_unix = Some(unix_now());
                    });
                }
                Err(e) => {
                    self.registry_backoff.fail();
                    tracing::warn!(
                        "registry sync failed: {e}; keeping version {} and retrying",
                        c.version()
                    );
                    let error = format!("{e} (retrying; still following version {})", c.version());
                    self.set(|s| s.registry_error = Some(error.clone()));
                    if c.version() == 0 {
                        self.waiting(format!(
                            "a first registry sync: {error}; this node's addresses: {}",
                            daemon_support::net::describe_ipv6()
                        ));
                    }
                }
            }
        }
        if c.version() == 0 {
            return;
        }
        let reg = c.registry().clone();
        let node_id = self.node_id.clone();
        if !reg.nodes.contains_key(&node_id) {
            self.set(|s| s.registered = false);
            self.register(&cfg, &reg);
            return;
        }
        let subnet = reg
            .subnets
            .values()
            .find(|s| s.nodes.contains(&node_id))
            .map(|s| s.id.clone());
        self.set(|s| {
            s.registered = true;
            s.waiting_for = None;
            s.subnet = subnet;
        });
        self.last_waiting_message = None;
        self.firewall(&reg, &node_id, &cfg);
        self.replica(&reg, &node_id, &cfg);
        self.boundary(&reg, &node_id, &cfg);
        self.hostos(&reg, &node_id);
        self.guestos(&reg, &node_id);
    }

    fn refresh_engine_status(&mut self) {
        if let Ok(e) = upgrade_engine::Engine::open_running() {
            if let Ok(st) = e.status() {
                let confirmed = st.slots.iter().any(|s| {
                    s.slot == st.current_slot && s.state == upgrade_engine::SlotState::Confirmed
                });
                let last_rollback = st
                    .state
                    .rollbacks
                    .last()
                    .map(|r| format!("{} -> {}: {}", r.from_version, r.to_version, r.reason));
                // After a reboot the last upgrade's outcome comes from the engine's record.
                let mut events: Vec<(u64, String)> = Vec::new();
                if let Some(c) = &st.state.last_confirmed {
                    events.push((
                        c.unix,
                        format!("{} confirmed on slot {}", c.version, c.slot),
                    ));
                }
                if let Some(r) = st.state.rollbacks.last() {
                    events.push((
                        r.unix,
                        format!(
                            "{} rolled back to {}: {}",
                            r.from_version, r.to_version, r.reason
                        ),
                    ));
                }
                if let Some(i) = st.state.last_install.as_ref().filter(|i| !i.ok) {
                    events.push((
                        i.unix,
                        format!(
                            "install of {} failed: {}",
                            i.version.as_deref().unwrap_or("?"),
                            i.message
                        ),
                    ));
                }
                let recorded = events.into_iter().max_by_key(|(t, _)| *t).map(|(_, e)| e);
                self.engine = EngineView {
                    confirmed,
                    failed_versions: st.state.failed_versions.clone(),
                };
                self.set(|s| {
                    if s.upgrade.last_result.is_none() {
                        s.upgrade.last_result = recorded;
                    }
                    s.confirmed = confirmed;
                    s.slot = Some(st.current_slot);
                    s.upgrade.failed_versions = st.state.failed_versions.clone();
                    s.upgrade.last_rollback = last_rollback;
                });
            }
        }
    }

    fn register(&mut self, cfg: &GuestConfig, reg: &registry_model::Registry) {
        let Some(pem) = cfg.operator_key_pem.clone() else {
            self.waiting(format!(
                "a node operator key: none on the config disk, so node {} cannot register; add it with `icos registry register --node-public-key {}` or give the host an operator key",
                self.node_id,
                keys::public_hex(&self.key)
            ));
            return;
        };
        if !self.register_backoff.due() {
            return;
        }
        let op_key = match keys::parse_key_pem(&pem) {
            Ok(k) => k,
            Err(e) => {
                self.set(|s| {
                    s.config_error = Some(format!("operator key on the config disk: {e}"))
                });
                return;
            }
        };
        // SetupOS hands over only the key: the operator is whoever the registry knows by it.
        let public = keys::public_hex(&op_key);
        let op = match cfg.operator_id.clone().or_else(|| {
            reg.operators
                .values()
                .find(|o| o.public_key == public)
                .map(|o| o.id.clone())
        }) {
            Some(op) => op,
            None => {
                self.waiting(format!(
                    "a node operator with public key {public} in the registry (governance adds it with add-operator)"
                ));
                return;
            }
        };
        let ipv6 = cfg.ipv6.clone().unwrap_or_else(|| fallback_ipv6(&cfg.mac));
        let endpoint = cfg
            .http_endpoint
            .clone()
            .unwrap_or_else(|| format!("http://[{ipv6}]:8080"));
        // The pinned genesis names the network: a registration cannot be carried elsewhere.
        let network = registry_model::Registry {
            genesis_hash: cfg.genesis_hash.clone().unwrap_or_default(),
            ..Default::default()
        };
        let request = Registration::new(
            &network,
            op,
            keys::public_hex(&self.key),
            ipv6,
            endpoint,
            unix_now(),
        );
        let req = match request {
            Ok(mut r) => {
                r.peer_endpoint = cfg.peer_endpoint.clone();
                SignedRegistration::sign(r, &op_key)
            }
            Err(e) => {
                self.register_backoff.fail();
                self.waiting(format!("registration: {e}"));
                return;
            }
        };
        let mut last = String::new();
        for url in &cfg.registry_urls {
            match registry_client::api::Api::new(url).register(&req) {
                Ok(r) => {
                    self.register_backoff.ok();
                    self.registry_backoff.ok();
                    self.console(&format!(
                        "GUESTOS ORCHESTRATOR registered as {} (registry version {})",
                        r.node_id, r.version
                    ));
                    return;
                }
                Err(e) => last = e.to_string(),
            }
        }
        self.register_backoff.fail();
        self.waiting(format!("registration (last attempt: {last})"));
    }

    fn firewall(&mut self, reg: &registry_model::Registry, node: &str, cfg: &GuestConfig) {
        let rules = reg.firewall_for_node(node);
        let place = self.replica_place(cfg);
        let voters = replica::log_status(&place)
            .map(|s| s.voters)
            .unwrap_or_default();
        let peers = replica::peer_addresses(reg, node, cfg.host_loopback, &voters);
        let script = firewall::render(&rules, &cfg.admin_prefixes, &peers);
        let digest = firewall::digest(&script);
        if self.applied_ruleset.as_deref() == Some(digest.as_str()) {
            return;
        }
        match firewall::apply(&script) {
            Ok(()) => {
                self.console(&format!(
                    "GUESTOS FIREWALL applied {} registry rules (ruleset {digest})",
                    rules.len()
                ));
                self.applied_ruleset = Some(digest.clone());
                self.set(|s| {
                    s.firewall_rules = rules.len();
                    s.firewall_ruleset = Some(digest);
                    s.firewall_error = None;
                });
            }
            Err(e) => self.set(|s| s.firewall_error = Some(e.to_string())),
        }
    }

    /// Where the replica lives, as this guest's config places it.
    fn replica_place(&self, cfg: &GuestConfig) -> replica::ReplicaPlace {
        replica::ReplicaPlace {
            host_loopback: cfg.host_loopback,
            guestos_version: running_version(),
            ..self.opts.replica.clone()
        }
    }

    /// Run, restart or remove the replica as the registry says; say each change once.
    fn replica(&mut self, reg: &registry_model::Registry, node: &str, cfg: &GuestConfig) {
        let place = self.replica_place(cfg);
        let want = replica::desired(reg, node, &self.key, &place);
        if want != replica::Desired::None {
            self.leaving_since = None;
        } else if let Some(subnet) = replica::still_counted(&place) {
            let since = *self
                .leaving_since
                .get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < replica::LEAVE_GRACE {
                self.say_replica(ReplicaState::Leaving { subnet });
                return;
            }
        }
        let state = match replica::apply(&want, &place) {
            Ok((replica::Applied::Removed, state)) => {
                self.console("GUESTOS REPLICA stopped and its state deleted: governance took this node out of its subnet");
                state
            }
            Ok((_, state)) => state,
            Err(e) => ReplicaState::Down {
                subnet: match &want {
                    replica::Desired::Run { spec, .. } => spec.subnet.clone(),
                    _ => String::new(),
                },
                reason: e.to_string(),
            },
        };
        self.say_replica(state);
    }

    /// Publish the replica's state; say a change once on the console.
    fn say_replica(&mut self, state: ReplicaState) {
        if self.said_replica.as_ref() != Some(&state) {
            match &state {
                ReplicaState::Serving {
                    subnet,
                    nodes,
                    listen,
                } => self.console(&format!(
                    "GUESTOS REPLICA serving {subnet} ({nodes} node(s)) on {listen}"
                )),
                ReplicaState::Down { subnet, reason } => self.console(&format!(
                    "GUESTOS REPLICA of {subnet} not running: {reason}"
                )),
                ReplicaState::Leaving { subnet } => self.console(&format!(
                    "GUESTOS REPLICA leaving {subnet}: it runs until the subnet's log has let it go (at most {} s)",
                    replica::LEAVE_GRACE.as_secs()
                )),
                ReplicaState::NotAssigned => {}
            }
            self.said_replica = Some(state.clone());
        }
        self.set(|s| s.replica = state);
    }

    /// Run or remove the API boundary as governance says; say each change once.
    fn boundary(&mut self, reg: &registry_model::Registry, node: &str, cfg: &GuestConfig) {
        let want = boundary::desired(reg, node, cfg, &self.opts.boundary);
        let state = match boundary::apply(&want, &self.opts.boundary) {
            Ok((payload::Change::Removed, state)) => {
                self.console("GUESTOS BOUNDARY stopped and its folder deleted: governance removed this node from the API boundary nodes");
                state
            }
            Ok((_, state)) => state,
            Err(e) => BoundaryState::Down {
                reason: e.to_string(),
            },
        };
        if self.said_boundary.as_ref() != Some(&state) {
            match &state {
                BoundaryState::Serving { listen, https, .. } => self.console(&format!(
                    "GUESTOS BOUNDARY serving the network's API and pages on {} {listen}",
                    if *https { "https" } else { "plain http" }
                )),
                BoundaryState::Down { reason } => {
                    self.console(&format!("GUESTOS BOUNDARY not running: {reason}"))
                }
                BoundaryState::NotAssigned => {}
            }
            self.said_boundary = Some(state.clone());
        }
        self.set(|s| s.boundary = state);
    }

    fn hostos(&mut self, reg: &registry_model::Registry, node: &str) {
        use host_channel::{Client, Reply, Request};
        if !self.opts.channel.exists() {
            return;
        }
        let assigned = reg.nodes.get(node).and_then(|n| n.hostos_version.clone());
        let Ok(port) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.opts.channel)
        else {
            return;
        };
        let mut c = Client::new(port);
        let running = match c.call(Request::HostosVersion {}) {
            Ok(Reply::HostosVersion { version }) => version,
            _ => return,
        };
        self.set(|s| {
            s.hostos_version = Some(running.clone());
            s.hostos_assigned = assigned.clone();
        });
        match assigned {
            Some(v) if v != running && self.hostos_backoff.due() => {
                let outcome = match c.call(Request::RequestHostosUpgrade {}) {
                    Ok(Reply::HostosUpgrade(answer)) => HostosRequest::Answered { answer },
                    Ok(other) => HostosRequest::Refused {
                        error: format!("unexpected answer {other:?}"),
                    },
                    Err(e) => HostosRequest::Refused {
                        error: e.to_string(),
                    },
                };
                tracing::info!("asked the host to upgrade HostOS {running} -> {v}: {outcome:?}");
                self.hostos_backoff.fail();
                self.set(|s| s.hostos_request = Some(outcome));
            }
            Some(v) if v == running => self.hostos_backoff.ok(),
            _ => {}
        }
    }

    fn guestos(&mut self, reg: &registry_model::Registry, node: &str) {
        let Some(target) = reg.guestos_for_node(node).cloned() else {
            self.set(|s| s.target_guestos = None);
            return;
        };
        let running = running_version();
        self.set(|s| s.target_guestos = Some(target.version.clone()));
        if target.version == running {
            self.set(|s| {
                s.upgrade.state = UpgradeState::Idle;
                s.upgrade.target = None;
            });
            self.upgrade_backoff.ok();
            return;
        }
        if self.engine.failed_versions.contains(&target.version) {
            self.set(|s| {
                s.upgrade.state = UpgradeState::Holding;
                s.upgrade.target = Some(target.version.clone());
                s.upgrade.last_result = Some(format!("{} failed on this node before; not retrying it (waiting for governance to deploy another version)", target.version));
            });
            return;
        }
        if self.upgrade_backoff_target.as_deref() != Some(target.version.as_str()) {
            // Governance chose another version: what failed for the old one says nothing about it.
            self.upgrade_backoff.ok();
            self.upgrade_backoff_target = Some(target.version.clone());
        }
        if !self.engine.confirmed || !self.upgrade_backoff.due() {
            return;
        }
        if !self.staged(&target) && !self.stage(&target, node, &running) {
            return;
        }
        match self.rollout_turn(&target.version) {
            rollout::Turn::Wait(why) => {
                if self.said_turn.as_ref() != Some(&why) {
                    self.console(&format!(
                        "GUESTOS ORCHESTRATOR {} installed; waiting for this node's turn to reboot into it: {why}",
                        target.version
                    ));
                    self.said_turn = Some(why.clone());
                }
                self.set(|s| {
                    s.upgrade.state = UpgradeState::WaitingForTurn;
                    s.upgrade.target = Some(target.version.clone());
                    s.upgrade.last_result = Some(why);
                });
            }
            rollout::Turn::Go(why) => {
                self.said_turn = None;
                self.reboot_into(&target.version, &why);
            }
        }
    }

    /// Whether the subnet can spare this node for a reboot now ([`rollout`]), from what its
    /// replica last heard from the other members; a node that serves no subnet can go.
    fn rollout_turn(&self, target: &str) -> rollout::Turn {
        let serving = matches!(self.said_replica, Some(ReplicaState::Serving { .. }));
        match replica::log_status(&self.opts.replica) {
            Some(own) if serving => rollout::turn(&own, target),
            _ => rollout::Turn::Go("this node serves no subnet now".into()),
        }
    }

    /// Whether the other slot holds `target`, installed earlier and waiting for its turn.
    fn staged(&self, target: &registry_model::Elected) -> bool {
        upgrade_engine::Engine::open_running()
            .is_ok_and(|e| upgrade_engine::elected::staged(&e, &target.version, &target.sha256))
    }

    /// Download `target` and install it into the other slot (not booting it yet); false,
    /// said and backed off, when that failed.
    fn stage(&mut self, target: &registry_model::Elected, node: &str, running: &str) -> bool {
        self.set(|s| {
            s.upgrade.state = UpgradeState::Downloading;
            s.upgrade.target = Some(target.version.clone());
            s.upgrade.attempts += 1;
        });
        let registry_version = self.shared.lock().expect("status lock").registry_version;
        self.console(&format!(
            "GUESTOS ORCHESTRATOR upgrading {running} -> {} (registry version {registry_version})",
            target.version
        ));
        match install(target, node) {
            Ok(()) => true,
            Err(e) => {
                self.upgrade_backoff.fail();
                self.console(&format!(
                    "GUESTOS ORCHESTRATOR upgrade to {} failed: {e}",
                    target.version
                ));
                self.set(|s| {
                    s.upgrade.state = UpgradeState::Failed;
                    s.upgrade.last_result = Some(e.to_string());
                });
                false
            }
        }
    }

    /// Make the installed `version` boot next and reboot into it (`why`: the turn).
    fn reboot_into(&mut self, version: &str, why: &str) {
        let activated = upgrade_engine::Engine::open_running()
            .map_err(UpgradeFailed::from)
            .and_then(|mut e| {
                upgrade_engine::elected::activate(&mut e, version, BOOT_TRIES).map_err(Into::into)
            });
        if let Err(e) = activated {
            self.upgrade_backoff.fail();
            self.console(&format!(
                "GUESTOS ORCHESTRATOR {version} installed but not activated: {e}"
            ));
            self.set(|s| {
                s.upgrade.state = UpgradeState::Failed;
                s.upgrade.last_result = Some(e.to_string());
            });
            return;
        }
        self.set(|s| {
            s.upgrade.state = UpgradeState::Rebooting;
            s.upgrade.last_result = Some(format!("{version} installed and activated"));
        });
        self.console(&format!(
            "GUESTOS ORCHESTRATOR {version} installed; rebooting ({why})"
        ));
        if self.opts.reboot {
            if let Err(e) = daemon_support::reboot() {
                self.console(&format!("GUESTOS ORCHESTRATOR cannot reboot: {e}"));
            }
        }
    }
}

/// Boot tries a new version gets before systemd-boot falls back to the old one.
const BOOT_TRIES: u32 = 3;

/// Download from the elected URLs (in this node's mirror order) into the inactive slot of
/// the running disk; activation waits for the node's turn.
fn install(target: &registry_model::Elected, node: &str) -> Result<(), UpgradeFailed> {
    let mut engine = upgrade_engine::Engine::open_running()?;
    let urls: Vec<&str> = target
        .urls_for(node)
        .into_iter()
        .map(String::as_str)
        .collect();
    upgrade_engine::elected::fetch_elected(&mut engine, &target.version, &urls, &target.sha256)?;
    Ok(())
}

/// The running GuestOS version ("?" outside an icos image).
fn running_version() -> String {
    Release::running()
        .map(|r| r.version)
        .unwrap_or_else(|_| "?".into())
}

/// A unique-local IPv6 address for nodes without a routable prefix (local testnets).
fn fallback_ipv6(mac: &str) -> String {
    let m: node_identity::Mac = mac
        .parse()
        .unwrap_or(node_identity::Mac([0x6a, 1, 0, 0, 0, 1]));
    node_identity::local_ipv6(&m).to_string()
}

pub use http::spawn as serve_status;

#[cfg(test)]
mod tests {
    use super::*;

    fn fat(path: &std::path::Path, files: &[(&str, &[u8])]) {
        let mut esp = boot_slots::create_fat(path, 8 << 20, 7, "ICOSCFG").unwrap();
        for (name, data) in files {
            esp.write_file(name, &mut &data[..]).unwrap();
        }
        esp.close().unwrap();
    }

    fn test_replica(d: &std::path::Path) -> replica::ReplicaPlace {
        replica::ReplicaPlace {
            payload: payload::Place {
                dir: d.join("replica"),
                unit: None,
                data_mount: None,
            },
            ..Default::default()
        }
    }

    fn opts(d: &std::path::Path) -> Options {
        fat(&d.join("store.img"), &[]);
        std::fs::write(d.join("console"), b"").unwrap();
        Options {
            config_disk: d.join("guest-config.img"),
            node_store: d.join("store.img"),
            state_dir: d.join("state"),
            console: Some(d.join("console")),
            reboot: false,
            replica: test_replica(d),
            boundary: boundary::BoundaryPlace {
                payload: payload::Place {
                    dir: d.join("boundary"),
                    unit: None,
                    data_mount: None,
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_config_disk_missing_a_field_is_named_on_the_console() {
        let d = tempfile::tempdir().unwrap();
        // `mac` is required; everything else is there.
        let json = br#"{"deployment":"testnet","ipv6":null,"node_id":null,"registry_urls":["http://10.0.2.2:1"],"genesis_hash":"ab","operator_id":null,"operator_key_pem":null}"#;
        fat(&d.path().join("guest-config.img"), &[("guest.json", json)]);
        let mut o = Orchestrator::new(opts(d.path())).unwrap();
        let console = std::fs::read_to_string(d.path().join("console")).unwrap();
        assert!(console.contains("missing field `mac`"), "{console}");
        assert!(console.contains("guest-config.img"), "{console}");
        let err = o.shared.lock().unwrap().config_error.clone().unwrap();
        assert!(err.contains("missing field `mac`"), "{err}");
        // The loop stays alive and does nothing it cannot justify.
        let mut client = None;
        o.tick(&mut client);
        assert!(client.is_none());
    }

    #[test]
    fn a_missing_config_disk_is_named_and_the_node_key_is_still_made() {
        let d = tempfile::tempdir().unwrap();
        let o = Orchestrator::new(opts(d.path())).unwrap();
        let console = std::fs::read_to_string(d.path().join("console")).unwrap();
        assert!(console.contains("guest-config.img"), "{console}");
        let s = o.shared.lock().unwrap().clone();
        assert_eq!(s.node_id, registry_model::node_id(&s.public_key));
        // Same identity on the next start.
        let again = Orchestrator::new(opts_keep(d.path())).unwrap();
        assert_eq!(again.shared.lock().unwrap().node_id, s.node_id);
    }

    fn opts_keep(d: &std::path::Path) -> Options {
        Options {
            config_disk: d.join("guest-config.img"),
            node_store: d.join("store.img"),
            state_dir: d.join("state"),
            console: None,
            reboot: false,
            replica: test_replica(d),
            boundary: boundary::BoundaryPlace {
                payload: payload::Place {
                    dir: d.join("boundary"),
                    unit: None,
                    data_mount: None,
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }
}
