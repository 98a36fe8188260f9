//! A whole icos network on one machine: a registry with local governance keys, a package
//! mirror (nginx), and per node a HostOS agent running its GuestOS VM under QEMU.
//!
//! * [`up`] builds (or reuses) the GuestOS image, writes the keys and genesis (GuestOS elected
//!   and deployed to unassigned nodes, firewall rules for the local network), starts the
//!   registry server, the mirror and one agent per node, waits until every node registered
//!   itself, and creates the subnets by proposals;
//! * [`status`] gathers registry, orchestrator and agent views per node;
//! * [`upgrade`] builds a version, elects it and deploys it to a subnet by proposals and votes,
//!   and follows the rollout until every node confirmed it (or rolled back);
//! * [`down`] stops everything it started (agents power their VMs down first);
//! * [`install_node`] installs one more node as a node provider does, from a SetupOS stick
//!   with a config folder for this network, and boots the installed HostOS.
//!
//! Everything lives in one folder (`out/testnet` by default): keys, registry data, packages,
//! node disks and state, logs, and `testnet.json` with the ports and process ids.
//!
//! Main types: [`Spec`] (what to bring up), [`State`] (a running network, loaded from its
//! folder; proposes and votes with the local neuron keys), [`NodeRow`] (one line of status),
//! [`RolloutResult`] (how one node ended an upgrade).
//!
//! ```no_run
//! use std::path::Path;
//! use testnet::{Spec, Stderr};
//! let spec = Spec {
//!     dir: "out/testnet".into(),
//!     nodes: 2,
//!     subnets: 1,
//!     boundary_nodes: 1,
//!     version: "1.0.0".into(),
//!     icos: "target/release/icos".into(),
//!     images: None,
//!     recipes: "images".into(),
//!     vcpus: 1,
//!     memory_mib: 1024,
//! };
//! let state = testnet::up(&spec, &Stderr).unwrap();
//! testnet::print_status(&testnet::status(&state));
//! for r in testnet::upgrade(&state, "subnet-1", "1.1.0", &Stderr).unwrap() {
//!     println!("{}: {}", r.node, r.outcome);
//! }
//! testnet::down(Path::new("out/testnet"), &Stderr).unwrap();
//! ```

mod setupos;

pub use node_status::hostos::{AgentStatus, GuestState};
pub use node_status::orchestrator::{
    BoundaryState, OrchestratorStatus, ReplicaState, UpgradeState,
};
use registry_client::api::Api;
use registry_model::api::{ProposalRecord, ProposalStatus};
use registry_model::*;
use registry_server::localnet::LocalGovernance;
use serde::{Deserialize, Serialize};
pub use setupos::{install_node, Installed};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const STATE_FILE: &str = "testnet.json";
/// A small file the mirror serves so `up` can tell it is really serving.
const MIRROR_PROBE: &str = "mirror-ready.txt";
/// Voting power of the local neurons: any two of them are a majority, none alone is.
pub const NEURON_POWERS: [u64; 3] = [40, 35, 25];

#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    #[error("{0}")]
    Msg(String),
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
}

fn msg(m: impl Into<String>) -> TestnetError {
    TestnetError::Msg(m.into())
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestnetError {
    let what = what.into();
    move |error| TestnetError::Io { what, error }
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub dir: PathBuf,
    /// Nodes dealt into the subnets.
    pub nodes: usize,
    pub subnets: usize,
    /// More nodes that governance makes API boundary nodes (none: the boundary runs as a
    /// process on this machine instead).
    pub boundary_nodes: usize,
    pub version: String,
    /// The `icos` binary (the agents and the registry server run as its subcommands).
    pub icos: PathBuf,
    /// Folders `guestos-<version>` already built (tests share their builds); else built here.
    pub images: Option<PathBuf>,
    pub recipes: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub dir: PathBuf,
    pub agent_pid: u32,
    pub agent_port: u16,
    pub status_port: u16,
    pub payload_port: u16,
    /// The host port forwarded to the GuestOS's subnet peer port (4100).
    #[serde(default)]
    pub peer_port: u16,
    pub node_id: Option<String>,
    /// Governance made it an API boundary node: its payload port serves the boundary.
    #[serde(default)]
    pub api_boundary: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub dir: PathBuf,
    pub registry_port: u16,
    pub registry_pid: u32,
    pub package_port: u16,
    pub nginx_pid: u32,
    pub genesis_hash: String,
    pub images: PathBuf,
    pub recipes: PathBuf,
    pub icos: PathBuf,
    pub nodes: Vec<NodeInfo>,
    pub subnets: Vec<String>,
    /// A network without API boundary nodes: the boundary as a process on this machine
    /// (`icos boundary serve`), its port and pid (0: none).
    #[serde(default)]
    pub boundary_port: u16,
    #[serde(default)]
    pub boundary_pid: u32,
}

impl State {
    pub fn load(dir: &Path) -> Result<State, TestnetError> {
        let p = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            msg(format!(
                "no testnet in {} ({e}); run `icos testnet up` first",
                dir.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| msg(format!("{}: {e}", p.display())))
    }

    fn save(&self) -> Result<(), TestnetError> {
        let p = self.dir.join(STATE_FILE);
        std::fs::write(&p, serde_json::to_vec_pretty(self).expect("serializes"))
            .map_err(io(format!("writing {}", p.display())))
    }

    pub fn registry_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.registry_port)
    }

    fn guest_registry_url(&self) -> String {
        format!("http://10.0.2.2:{}", self.registry_port)
    }

    pub fn api(&self) -> Api {
        Api::new(&self.registry_url())
    }

    /// The API boundary's URL: the first API boundary node's forwarded payload port, else
    /// the boundary process's (none in a network started before either existed).
    pub fn boundary_url(&self) -> Option<String> {
        let port = match self.nodes.iter().find(|n| n.api_boundary) {
            Some(n) => n.payload_port,
            None => self.boundary_port,
        };
        (port != 0).then(|| format!("http://127.0.0.1:{port}"))
    }

    /// Where a boundary problem is explained: the boundary node's console, or the process's log.
    fn boundary_log(&self) -> PathBuf {
        match self.nodes.iter().find(|n| n.api_boundary) {
            Some(n) => n.dir.join("state/guest-serial.log"),
            None => self.dir.join("logs/boundary.log"),
        }
    }

    /// What the boundary says about its routes and nodes (none if it does not answer).
    pub fn boundary_status(&self) -> Option<node_status::boundary::BoundaryStatus> {
        let url = format!("{}/boundary/status", self.boundary_url()?);
        node_status::fetch(&url, Duration::from_secs(3)).ok()
    }

    fn neuron_key(&self, n: u64) -> Result<keys::SecretKey, TestnetError> {
        keys::read_key(&self.dir.join(format!("keys/neuron_{n}.key")))
            .map_err(|e| msg(e.to_string()))
    }

    /// Submit a proposal as `proposer`, then vote yes with each of `voters`.
    pub fn propose(
        &self,
        proposer: u64,
        voters: &[u64],
        title: &str,
        action: Action,
    ) -> Result<ProposalRecord, TestnetError> {
        let mut r = self
            .api()
            .propose(&self.neuron_key(proposer)?, title, action)
            .map_err(|e| msg(e.to_string()))?;
        for v in voters {
            if r.status != ProposalStatus::Open {
                break;
            }
            r = self.vote(&r, *v, Vote::Yes)?;
        }
        Ok(r)
    }

    /// Cast `neuron`'s vote on an open proposal; returns the proposal as it stands after it.
    pub fn vote(
        &self,
        r: &ProposalRecord,
        neuron: u64,
        vote: Vote,
    ) -> Result<ProposalRecord, TestnetError> {
        let v = SignedVote::sign(
            &r.proposal.body.hash(),
            neuron,
            vote,
            &self.neuron_key(neuron)?,
        );
        self.api().vote(r.id, &v).map_err(|e| msg(e.to_string()))
    }

    /// The URL of a file in the package mirror, as the GuestOS VMs reach it.
    pub fn mirror_url(&self, file: &str) -> String {
        format!("http://10.0.2.2:{}/{file}", self.package_port)
    }

    /// Elect a GuestOS version whose package is in the mirror, with the given SHA-256.
    pub fn elect_guestos(
        &self,
        version: &str,
        sha256: &update_package::Sha256Hex,
        voters: &[u64],
    ) -> Result<ProposalRecord, TestnetError> {
        let urls = vec![self.mirror_url(&format!("guestos-{version}.tar"))];
        self.propose(
            1,
            voters,
            &format!("elect GuestOS {version}"),
            Action::ElectGuestos(Elected {
                version: version.into(),
                sha256: sha256.clone(),
                size: None,
                urls,
            }),
        )
    }

    /// Put a built GuestOS package into the mirror; returns its SHA-256.
    pub fn publish(
        &self,
        image: &Path,
        version: &str,
    ) -> Result<update_package::Sha256Hex, TestnetError> {
        let dst = self.dir.join(format!("packages/guestos-{version}.tar"));
        let src = image.join("update.tar");
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(io(format!("copying {}", src.display())))?;
        }
        Ok(update_package::hash_file(&dst)
            .map_err(io("hashing the package"))?
            .0)
    }
}

fn free_port() -> Result<u16, TestnetError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io("finding a free port"))?
        .port())
}

/// Start a long-running process in its own session (it outlives the `icos testnet up` that
/// started it); its output goes to `log`.
fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<u32, TestnetError> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let err = out.try_clone().map_err(io("log"))?;
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io(format!("starting {:?}", cmd.get_program())))?;
    Ok(child.id())
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Progress lines for long work.
pub trait Report {
    fn line(&self, text: &str);
}

pub struct Stderr;
impl Report for Stderr {
    fn line(&self, text: &str) {
        eprintln!("testnet: {text}");
    }
}

/// A GuestOS image folder for `version`: from `images` if built there from the recipe and
/// the icos source as they are now, else built now.
pub fn image(
    state_images: &Path,
    recipes: &Path,
    version: &str,
    report: &dyn Report,
) -> Result<PathBuf, TestnetError> {
    let out = state_images.join(format!("guestos-{version}"));
    let req = image_builder::BuildRequest::new(recipes.join("guestos"), version, &out);
    ensure_built(&req, &format!("GuestOS {version}"), report)?;
    Ok(out)
}

/// Builds `req` unless its folder holds a build of its recipe and source as they are now (a
/// stale one is rebuilt, and said so); whether it built.
///
/// A folder that is a symbolic link was put there by someone else (an operator's or a test's
/// own build, often of another recipe on purpose): it is used as it is and never rebuilt,
/// since building would write through the link into their folder.
pub fn ensure_built(
    req: &image_builder::BuildRequest,
    what: &str,
    report: &dyn Report,
) -> Result<bool, TestnetError> {
    let fail = |e: image_builder::BuildError| msg(format!("building {what}: {e}"));
    if req.is_built().map_err(fail)? {
        return Ok(false);
    }
    let has_manifest = req.out.join("manifest.json").is_file();
    let linked = req.out.is_symlink();
    if linked && has_manifest {
        let target = std::fs::read_link(&req.out)
            .map_err(io(format!("reading the link {}", req.out.display())))?;
        report.line(&format!(
            "{what}: using {} as it is (a link to {}, built from another recipe or source)",
            req.out.display(),
            target.display()
        ));
        return Ok(false);
    }
    if linked {
        return Err(msg(format!(
            "{what}: {} is a link to a folder without a build (no manifest.json); \
             remove the link or build into its target",
            req.out.display()
        )));
    }
    let why = if has_manifest {
        "its recipe or the icos source changed since the last build"
    } else {
        "a minute or two"
    };
    report.line(&format!("building {what} ({why})"));
    image_builder::build(req).map_err(fail)?;
    Ok(true)
}

/// Copy a disk image keeping its holes (images are mostly zeros).
pub fn copy_sparse(from: &Path, to: &Path) -> Result<(), TestnetError> {
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .map_err(io(format!("running cp for {}", from.display())))?
        .success();
    if !ok {
        return Err(msg(format!(
            "copying {} to {} failed",
            from.display(),
            to.display()
        )));
    }
    Ok(())
}

fn write_nginx_conf(dir: &Path, port: u16) -> Result<PathBuf, TestnetError> {
    let conf = dir.join("nginx.conf");
    // Started by root, nginx's worker drops to `nobody`, which cannot read a network folder
    // below a private directory (a `mktemp -d` checkout is 0700): the mirror answered 403.
    // The worker stays the user who started the network.
    let user = if nix::unistd::geteuid().is_root() {
        "user root; "
    } else {
        ""
    };
    std::fs::write(
        &conf,
        format!(
            "daemon off; {user}worker_processes 1; pid {pid}; error_log {log};\nevents {{ worker_connections 256; }}\nhttp {{ access_log {access}; sendfile on; server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            pid = dir.join("nginx.pid").display(),
            log = dir.join("logs/nginx-error.log").display(),
            access = dir.join("logs/nginx-access.log").display(),
            root = dir.join("packages").display()
        ),
    )
    .map_err(io("writing nginx.conf"))?;
    Ok(conf)
}

/// Bring a testnet up. Fails if one is already running in the folder.
pub fn up(spec: &Spec, report: &dyn Report) -> Result<State, TestnetError> {
    let spec = &absolute(spec)?;
    check_can_start(spec)?;
    let images = spec
        .images
        .clone()
        .unwrap_or_else(|| spec.dir.join("images"));
    let base = image(&images, &spec.recipes, &spec.version, report)?;
    let package_port = free_port()?;
    let registry_port = free_port()?;
    let boundary_port = if spec.boundary_nodes == 0 {
        free_port()?
    } else {
        0
    };
    let pkg = spec
        .dir
        .join(format!("packages/guestos-{}.tar", spec.version));
    std::fs::copy(base.join("update.tar"), &pkg).map_err(io("copying the GuestOS package"))?;
    let sha = update_package::hash_file(&pkg)
        .map_err(io("hashing the package"))?
        .0;
    let genesis_hash = write_governance(spec, sha, package_port, report)?;
    let mut state = start_services(
        spec,
        &images,
        [registry_port, package_port, boundary_port],
        genesis_hash,
        report,
    )?;
    for i in 1..=spec.nodes + spec.boundary_nodes {
        let node = start_node(&state, spec, &base, i, report)?;
        state.nodes.push(node);
        state.save()?;
    }
    wait_registered(&mut state, report)?;
    create_subnets(&mut state, spec, report)?;
    wait_following(&state, report)?;
    let boundary: Vec<usize> = (spec.nodes..spec.nodes + spec.boundary_nodes).collect();
    if !boundary.is_empty() {
        make_api_boundary(&mut state, &boundary, report)?;
    }
    Ok(state)
}

/// Governance makes nodes `indexes` (into `state.nodes`, each in no subnet) API boundary
/// nodes; returns once each one's boundary serves the network's API on its payload port.
pub fn make_api_boundary(
    state: &mut State,
    indexes: &[usize],
    report: &dyn Report,
) -> Result<(), TestnetError> {
    let ids = indexes
        .iter()
        .map(|&i| {
            let n = state
                .nodes
                .get(i)
                .ok_or_else(|| msg(format!("no node #{}", i + 1)))?;
            n.node_id
                .clone()
                .ok_or_else(|| msg(format!("{} is not registered", n.name)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let r = state.propose(
        1,
        &[2],
        "API boundary nodes",
        Action::AddApiBoundaryNodes { nodes: ids },
    )?;
    if !matches!(r.status, ProposalStatus::Adopted { .. }) {
        return Err(msg(format!("adding API boundary nodes: {}", r.status)));
    }
    for &i in indexes {
        state.nodes[i].api_boundary = true;
    }
    state.save()?;
    report.line(&format!(
        "API boundary node(s) {} named by proposal {}; waiting for their boundary",
        indexes
            .iter()
            .map(|&i| state.nodes[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        r.id
    ));
    for &i in indexes {
        let n = &state.nodes[i];
        let url = format!("http://127.0.0.1:{}", n.payload_port);
        wait_boundary_node(state, n)?;
        wait_up(
            &format!("{}'s API boundary", n.name),
            &format!("{url}/api/v2/status"),
            &n.dir.join("state/guest-serial.log"),
        )?;
        report.line(&format!(
            "{}: API boundary node, serving agents on {url} and pages on http://<canister-id>.localhost:{}/",
            n.name, n.payload_port
        ));
    }
    Ok(())
}

/// Until node `n`'s orchestrator says its boundary serves (an error naming why it does not,
/// after 5 minutes).
fn wait_boundary_node(state: &State, n: &NodeInfo) -> Result<(), TestnetError> {
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let row = status(state).into_iter().find(|r| r.name == n.name);
        let boundary = row.and_then(|r| r.orchestrator).map(|o| o.boundary);
        if let Some(BoundaryState::Serving { .. }) = boundary {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(msg(format!(
                "{}'s boundary not serving within 5 minutes: {boundary:?}; see {}",
                n.name,
                n.dir.join("state/guest-serial.log").display()
            )));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Until every orchestrator has seen, in its verified registry, itself registered and in its
/// subnet, and has acted on it (its replica serving, or down with the reason): the registry
/// shows a registration before the node's next sync does, and a status taken in between
/// would say "not registered" of a node that is, or show no replica yet.
fn wait_following(state: &State, report: &dyn Report) -> Result<(), TestnetError> {
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let rows = status(state);
        let lagging: Vec<String> = rows
            .iter()
            .filter(|r| {
                !r.orchestrator.as_ref().is_some_and(|o| {
                    o.registered
                        && o.subnet == r.subnet
                        && (r.subnet.is_none() || o.replica != ReplicaState::NotAssigned)
                })
            })
            .map(|r| format!("{} ({})", r.name, r.health))
            .collect();
        if lagging.is_empty() {
            report.line(
                "every node follows the registry (registered, in its subnet, its replica started)",
            );
            return Ok(());
        }
        if Instant::now() > end {
            return Err(msg(format!(
                "nodes registered but not following the registry within 5 minutes: {}; see the logs folder and `icos testnet status`",
                lagging.join(", ")
            )));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The spec with absolute paths: nginx resolves a relative `-c` against its own prefix, and
/// the detached processes must not depend on the caller's working directory.
fn absolute(spec: &Spec) -> Result<Spec, TestnetError> {
    let abs = |p: &Path| std::path::absolute(p).map_err(io(format!("resolving {}", p.display())));
    Ok(Spec {
        dir: abs(&spec.dir)?,
        images: spec.images.as_deref().map(abs).transpose()?,
        recipes: abs(&spec.recipes)?,
        icos: if spec.icos.components().count() > 1 {
            abs(&spec.icos)?
        } else {
            spec.icos.clone()
        },
        ..spec.clone()
    })
}

/// Nothing of an earlier testnet runs in the folder, the sizes make sense, and the
/// folders are fresh (images and logs are kept).
fn check_can_start(spec: &Spec) -> Result<(), TestnetError> {
    if let Ok(s) = State::load(&spec.dir) {
        if alive(s.registry_pid) || s.nodes.iter().any(|n| alive(n.agent_pid)) {
            return Err(msg(format!(
                "a testnet is already running in {} (run `icos testnet down` first)",
                spec.dir.display()
            )));
        }
    }
    if spec.nodes == 0 || spec.subnets > spec.nodes {
        return Err(msg(format!(
            "{} nodes cannot form {} subnets",
            spec.nodes, spec.subnets
        )));
    }
    for d in ["keys", "registry", "packages", "logs", "nodes", "images"] {
        let p = spec.dir.join(d);
        if d != "images" && d != "logs" && p.exists() {
            std::fs::remove_dir_all(&p).map_err(io(format!("clearing {}", p.display())))?;
        }
        std::fs::create_dir_all(&p).map_err(io(format!("creating {}", p.display())))?;
    }
    Ok(())
}

/// Governance keys and the genesis (the GuestOS elected and deployed to unassigned nodes,
/// the local network allowed through the firewall); the registry created from it. Returns
/// the genesis hash.
fn write_governance(
    spec: &Spec,
    sha: update_package::Sha256Hex,
    package_port: u16,
    report: &dyn Report,
) -> Result<String, TestnetError> {
    report.line("writing governance keys and the genesis (3 neurons, 1 node operator)");
    let mut gov = LocalGovernance::create(
        &spec.dir.join("keys"),
        "testnet",
        &NEURON_POWERS,
        &[("op1", 64)],
        |k| Settings {
            online_key: k,
            proposal_deadline_secs: 3600,
            freshness_secs: 300,
        },
    )
    .map_err(|e| msg(e.to_string()))?;
    let local = vec!["10.0.2.0/24".to_string(), "fd00::/8".to_string()];
    gov.genesis.actions = vec![
        Action::ElectGuestos(Elected {
            version: spec.version.clone(),
            sha256: sha,
            size: None,
            urls: vec![format!(
                "http://10.0.2.2:{package_port}/guestos-{}.tar",
                spec.version
            )],
        }),
        Action::DeployGuestosToUnassigned {
            version: spec.version.clone(),
        },
        Action::SetFirewallRules {
            scope: FirewallScope::Global,
            rules: vec![FirewallRule {
                action: FwAction::Allow,
                protocol: Protocol::Tcp,
                ports: vec![8080, 9100],
                sources: local,
                comment: "testnet host".into(),
            }],
        },
    ];
    std::fs::write(
        spec.dir.join("keys/genesis.toml"),
        toml::to_string(&gov.genesis).map_err(|e| msg(e.to_string()))?,
    )
    .map_err(io("writing the genesis"))?;
    let g = registry_server::Registry::init(&spec.dir.join("registry"), &gov.genesis)
        .map_err(|e| msg(e.to_string()))?;
    Ok(g.hash())
}

/// The registry server, the package mirror and the API boundary, detached and recorded;
/// returns once all three answer.
fn start_services(
    spec: &Spec,
    images: &Path,
    [registry_port, package_port, boundary_port]: [u16; 3],
    genesis_hash: String,
    report: &dyn Report,
) -> Result<State, TestnetError> {
    report.line(&format!("starting the registry on 127.0.0.1:{registry_port} and the package mirror on 127.0.0.1:{package_port}"));
    let registry_pid = spawn_detached(
        Command::new(&spec.icos)
            .args(["registry", "serve", "--data"])
            .arg(spec.dir.join("registry"))
            .arg("--online-key")
            .arg(spec.dir.join("keys/online.key"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{registry_port}"))
            // IPv6 too: a SetupOS VM on QEMU's static IPv6 network reaches the host's ::1 as
            // its gateway fec0::2 (`install_node`).
            .arg("--listen")
            .arg(format!("[::1]:{registry_port}")),
        &spec.dir.join("logs/registry.log"),
    )?;
    let conf = write_nginx_conf(&spec.dir, package_port)?;
    std::fs::write(
        spec.dir.join("packages").join(MIRROR_PROBE),
        "icos package mirror\n",
    )
    .map_err(io("writing the mirror probe file"))?;
    let nginx_pid = spawn_detached(
        host_tools::tools::NGINX
            .command()
            .map_err(|e| msg(e.to_string()))?
            .arg("-c")
            .arg(&conf),
        &spec.dir.join("logs/nginx.log"),
    )?;
    let boundary_pid = if boundary_port == 0 {
        0
    } else {
        spawn_detached(
            Command::new(&spec.icos)
                .args(["boundary", "serve", "--registry"])
                .arg(format!("http://127.0.0.1:{registry_port}"))
                .args(["--genesis-hash", &genesis_hash])
                .arg("--listen")
                .arg(format!("127.0.0.1:{boundary_port}"))
                .arg("--state-dir")
                .arg(spec.dir.join("boundary")),
            &spec.dir.join("logs/boundary.log"),
        )?
    };
    let state = State {
        dir: spec.dir.clone(),
        registry_port,
        registry_pid,
        package_port,
        nginx_pid,
        genesis_hash,
        images: images.to_path_buf(),
        recipes: spec.recipes.clone(),
        icos: spec.icos.clone(),
        nodes: Vec::new(),
        subnets: Vec::new(),
        boundary_port,
        boundary_pid,
    };
    state.save()?;
    wait_up(
        "the registry",
        &format!("{}/v1/head.json", state.registry_url()),
        &spec.dir.join("logs/registry.log"),
    )?;
    wait_up(
        "the package mirror",
        &format!("http://127.0.0.1:{package_port}/{MIRROR_PROBE}"),
        &spec.dir.join("logs/nginx.log"),
    )?;
    if boundary_port != 0 {
        wait_up(
            "the API boundary",
            &format!("http://127.0.0.1:{boundary_port}/api/v2/status"),
            &spec.dir.join("logs/boundary.log"),
        )?;
        report.line(&format!(
            "API boundary process on http://127.0.0.1:{boundary_port} (agents: one URL for every subnet)"
        ));
    }
    Ok(state)
}

/// Node `i`: its own copy of the GuestOS disk, its `hostos.toml`, its HostOS agent (which
/// starts the GuestOS VM).
fn start_node(
    state: &State,
    spec: &Spec,
    base: &Path,
    i: usize,
    report: &dyn Report,
) -> Result<NodeInfo, TestnetError> {
    let name = format!("node{i}");
    let ndir = spec.dir.join("nodes").join(&name);
    std::fs::create_dir_all(ndir.join("state")).map_err(io("creating the node folder"))?;
    let disk = ndir.join("guest.img");
    copy_sparse(&base.join("disk.img"), &disk)?;
    let (agent_port, status_port, payload_port) = (free_port()?, free_port()?, free_port()?);
    let peer_port = free_port()?;
    let cfg = node_config(
        state,
        spec,
        &ndir,
        &disk,
        i,
        [agent_port, status_port, payload_port, peer_port],
    )?;
    let cfg_path = ndir.join("hostos.toml");
    std::fs::write(&cfg_path, cfg.render()).map_err(io("writing hostos.toml"))?;
    let agent_pid = spawn_detached(
        Command::new(&spec.icos)
            .args(["hostos", "run", "--config"])
            .arg(&cfg_path),
        &spec.dir.join(format!("logs/{name}-agent.log")),
    )?;
    report.line(&format!("{name}: agent started (pid {agent_pid}, status http://127.0.0.1:{agent_port}/v1/status); GuestOS VM booting"));
    Ok(NodeInfo {
        name,
        dir: ndir,
        agent_pid,
        agent_port,
        status_port,
        payload_port,
        peer_port,
        node_id: None,
        api_boundary: false,
    })
}

/// A development HostOS config for node `i` (the same type SetupOS writes): local
/// deployment, DHCP for IPv4 plus the static IPv6 of QEMU's user network (`fec0::/64`,
/// gateway `fec0::2`), the testnet registry, forwards for the status, payload and subnet
/// peer ports (nodes reach each other's peer port through this machine's loopback).
fn node_config(
    state: &State,
    spec: &Spec,
    ndir: &Path,
    disk: &Path,
    i: usize,
    [agent_port, status_port, payload_port, peer_port]: [u16; 4],
) -> Result<node_config::hostos::HostosConfig, TestnetError> {
    let mut c =
        node_config::hostos::HostosConfig::parse("", "testnet").map_err(|e| msg(e.to_string()))?;
    c.config_version = node_config::CONFIG_VERSION;
    c.deployment = "testnet".into();
    c.management_mac = format!("02:00:00:00:01:{i:02x}")
        .parse()
        .map_err(|e: node_identity::IdentityError| msg(e.to_string()))?;
    c.hostos_version = Some("dev".into());
    c.http_endpoint = Some(format!("http://127.0.0.1:{payload_port}"));
    c.peer_endpoint = Some(format!("http://127.0.0.1:{peer_port}"));
    c.ipv6_prefix = Some("fec0:0:0:0".into());
    c.ipv6_gateway = Some(std::net::Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2));
    c.network_mode = node_config::NetworkMode::Dhcp;
    c.guest_disk = Some(disk.to_path_buf());
    c.vcpus = spec.vcpus;
    c.memory_mib = spec.memory_mib;
    c.boot_timeout_secs = 900;
    c.forwards = vec![
        (status_port, 9100),
        (payload_port, 8080),
        (peer_port, node_config::replica::PEER_PORT),
    ];
    c.registry = Some(node_config::hostos::RegistryConfig {
        urls: vec![state.registry_url()],
        genesis_hash: state.genesis_hash.clone(),
    });
    c.state_dir = ndir.join("state");
    c.listen = format!("127.0.0.1:{agent_port}")
        .parse()
        .map_err(|e: std::net::AddrParseError| msg(e.to_string()))?;
    c.operator_id = Some("op1".into());
    c.operator_key_file = Some(spec.dir.join("keys/operator_op1.key"));
    c.admin_prefixes = vec!["10.0.2.0/24".into()];
    c.guest_registry_urls = vec![state.guest_registry_url()];
    // Nodes register endpoints on this machine's loopback; a boundary in a VM reaches them
    // through its host.
    c.guest_host_loopback = Some(std::net::Ipv4Addr::new(10, 0, 2, 2).into());
    c.problems.clear();
    Ok(c)
}

/// Wait until every node registered itself (found by its payload endpoint).
fn wait_registered(state: &mut State, report: &dyn Report) -> Result<(), TestnetError> {
    report.line(&format!(
        "waiting for {} node(s) to boot and register (TCG: a minute or two)",
        state.nodes.len()
    ));
    let end = Instant::now() + Duration::from_secs(900);
    loop {
        let reg = state
            .api()
            .snapshot(None)
            .map_err(|e| msg(e.to_string()))?
            .registry;
        let mut all = true;
        for n in state.nodes.iter_mut() {
            if n.node_id.is_none() {
                let endpoint = format!("http://127.0.0.1:{}", n.payload_port);
                if let Some(node) = reg.nodes.values().find(|x| x.http_endpoint == endpoint) {
                    n.node_id = Some(node.id.clone());
                    report.line(&format!("{}: registered as {}", n.name, node.id));
                } else {
                    all = false;
                }
            }
        }
        state.save()?;
        if all {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(msg("not every node registered within 15 minutes; see the logs folder and `icos testnet status`"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The subnets, by proposals (nodes dealt round-robin, one 2^32 canister range each), each
/// with its key delegated by the root key and sealed to its nodes (the subnet's secret is
/// kept as `keys/<subnet>.bls` for adding nodes later).
fn create_subnets(state: &mut State, spec: &Spec, report: &dyn Report) -> Result<(), TestnetError> {
    let keys = spec.dir.join("keys");
    let root = subnet_key::read_bls_key(&keys.join("root.bls")).map_err(|e| msg(e.to_string()))?;
    let reg = state
        .api()
        .snapshot(None)
        .map_err(|e| msg(e.to_string()))?
        .registry;
    for k in 0..spec.subnets {
        let id = format!("subnet-{}", k + 1);
        let nodes: Vec<String> = state
            .nodes
            .iter()
            .take(spec.nodes)
            .enumerate()
            .filter(|(i, _)| i % spec.subnets == k)
            .filter_map(|(_, n)| n.node_id.clone())
            .collect();
        let range = CanisterRange {
            start: (k as u64) << 32,
            end: ((k as u64 + 1) << 32) - 1,
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let (key, secret) = subnet_key::node_keys(&reg, &nodes)
            .and_then(|n| subnet_key::SubnetKey::make(&root, &n, &[range], now))
            .map_err(|e| msg(format!("making {id}'s key: {e}")))?;
        let secret_file = keys.join(format!("{id}.bls"));
        let _ = std::fs::remove_file(&secret_file);
        subnet_key::write_bls_key(&secret_file, &secret).map_err(|e| msg(e.to_string()))?;
        let r = state.propose(
            1,
            &[2],
            &format!("create {id}"),
            Action::CreateSubnet {
                id: id.clone(),
                nodes,
                canister_ranges: vec![range],
                guestos_version: spec.version.clone(),
                key: Some(key),
            },
        )?;
        if !matches!(r.status, ProposalStatus::Adopted { .. }) {
            return Err(msg(format!("creating {id}: {}", r.status)));
        }
        report.line(&format!("{id} created by proposal {}", r.id));
        state.subnets.push(id);
    }
    state.save()
}

/// Wait until `url` answers; else name `what` and the log that says why.
fn wait_up(what: &str, url: &str, log: &Path) -> Result<(), TestnetError> {
    let timeout = Duration::from_secs(30);
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if ureq::get(url)
            .timeout(Duration::from_secs(2))
            .call()
            .is_ok()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(msg(format!(
        "{what} did not come up ({url} did not answer within {timeout:?}); see {}",
        log.display()
    )))
}

/// One node as the testnet sees it: the documents its two daemons publish, read typed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    pub name: String,
    pub node_id: String,
    /// The node's subnet in the registry (none: unassigned).
    pub subnet: Option<String>,
    /// Whether the node's HostOS agent process is alive.
    pub agent_alive: bool,
    pub agent: Option<AgentStatus>,
    pub orchestrator: Option<OrchestratorStatus>,
    /// The host port forwarded to the GuestOS's replica (port 8080).
    pub payload_port: u16,
    /// From the two documents: [`NodeRow::assess`].
    pub health: Health,
}

/// Whether a node is fine, and if not, the first thing wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "health", content = "problem")]
pub enum Health {
    Healthy,
    Unhealthy(String),
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Unhealthy(p) => f.write_str(p),
        }
    }
}

impl NodeRow {
    /// What the node's payload port serves (its replica or the API boundary) and where, or
    /// that it is down: for the status table.
    pub fn payload_word(&self) -> String {
        let url = format!("http://127.0.0.1:{}", self.payload_port);
        let Some(o) = self.orchestrator.as_ref() else {
            return "-".into();
        };
        match (&o.replica, &o.boundary) {
            (ReplicaState::Serving { .. }, _) => format!("replica {url}"),
            (_, BoundaryState::Serving { .. }) => format!("boundary {url}"),
            (ReplicaState::Down { .. }, _) => "replica down".into(),
            (ReplicaState::Leaving { subnet }, _) => format!("replica leaving {subnet} {url}"),
            (_, BoundaryState::Down { .. }) => "boundary down".into(),
            _ => "-".into(),
        }
    }

    /// What the GuestOS VM is doing, as its agent says.
    pub fn guest_state(&self) -> Option<GuestState> {
        self.agent.as_ref().map(|a| a.guest.state)
    }

    /// The VM runs and its orchestrator answers.
    pub fn running(&self) -> bool {
        self.guest_state() == Some(GuestState::Running) && self.orchestrator.is_some()
    }

    /// Running `version` on a confirmed slot.
    pub fn runs_confirmed(&self, version: &str) -> bool {
        self.running()
            && self
                .orchestrator
                .as_ref()
                .is_some_and(|o| o.guestos_version == version && o.confirmed)
    }

    /// Whether the node is fine, from what its daemons publish.
    pub fn assess(&self) -> Health {
        let Some(a) = &self.agent else {
            return Health::Unhealthy(if self.agent_alive {
                "agent does not answer".into()
            } else {
                "agent down".into()
            });
        };
        if a.guest.state != GuestState::Running {
            return Health::Unhealthy(format!("vm {}", vm_word(a.guest.state)));
        }
        let Some(o) = &self.orchestrator else {
            return Health::Unhealthy("orchestrator does not answer".into());
        };
        if let Some(p) = o.problem() {
            return Health::Unhealthy(p);
        }
        if !o.confirmed {
            return Health::Unhealthy("running slot on trial".into());
        }
        Health::Healthy
    }
}

fn vm_word(s: GuestState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

fn fetch<T: serde::de::DeserializeOwned>(url: &str) -> Option<T> {
    node_status::fetch(url, Duration::from_secs(3)).ok()
}

pub fn status(state: &State) -> Vec<NodeRow> {
    let reg = state.api().snapshot(None).ok().map(|s| s.registry);
    state
        .nodes
        .iter()
        .map(|n| {
            let node_id = n.node_id.clone().unwrap_or_default();
            let subnet = reg.as_ref().and_then(|r| {
                r.subnets
                    .values()
                    .find(|s| s.nodes.contains(&node_id))
                    .map(|s| s.id.clone())
            });
            let mut row = NodeRow {
                name: n.name.clone(),
                node_id,
                subnet,
                agent_alive: alive(n.agent_pid),
                agent: fetch(&format!("http://127.0.0.1:{}/v1/status", n.agent_port)),
                orchestrator: fetch(&format!("http://127.0.0.1:{}/status", n.status_port)),
                payload_port: n.payload_port,
                health: Health::Healthy,
            };
            row.health = row.assess();
            row
        })
        .collect()
}

pub fn print_status(rows: &[NodeRow]) {
    println!(
        "{:<7} {:<22} {:<10} {:<10} {:<10} {:<5} {:<6} {:<10} {:<11} {:<32} health",
        "node",
        "node id",
        "subnet",
        "guestos",
        "target",
        "slot",
        "hostos",
        "vm",
        "upgrade",
        "serves"
    );
    for r in rows {
        let o = r.orchestrator.as_ref();
        let dash = || "-".to_string();
        println!(
            "{:<7} {:<22} {:<10} {:<10} {:<10} {:<5} {:<6} {:<10} {:<11} {:<32} {}",
            r.name,
            r.node_id,
            match (&r.subnet, o.map(|o| &o.boundary)) {
                (Some(s), _) => s.as_str(),
                (None, Some(BoundaryState::NotAssigned) | None) => "unassigned",
                (None, Some(_)) => "api-bn",
            },
            o.map(|o| o.guestos_version.clone()).unwrap_or_else(dash),
            o.and_then(|o| o.target_guestos.clone())
                .unwrap_or_else(dash),
            o.and_then(|o| o.slot)
                .map(|s| s.to_string())
                .unwrap_or_else(dash),
            r.agent
                .as_ref()
                .map(|a| a.hostos_version.clone())
                .unwrap_or_else(dash),
            r.guest_state().map(vm_word).unwrap_or_else(dash),
            o.map(|o| upgrade_word(o.upgrade.state))
                .unwrap_or_else(dash),
            r.payload_word(),
            r.health
        );
    }
}

/// The boundary's line under the node table: its URL and how many nodes take requests.
pub fn print_boundary(state: &State) {
    let Some(url) = state.boundary_url() else {
        return;
    };
    match state.boundary_status() {
        Some(b) => {
            let nodes: Vec<_> = b.subnets.iter().flat_map(|s| &s.nodes).collect();
            let port = url.rsplit(':').next().unwrap_or_default();
            println!(
                "boundary {url}: routes from registry version {}, {} subnet(s), {}/{} node(s) taking requests; pages at http://<canister-id>.localhost:{port}/",
                b.registry_version,
                b.subnets.len(),
                nodes.iter().filter(|n| n.candidate).count(),
                nodes.len()
            );
        }
        None => println!(
            "boundary {url}: not answering (see {})",
            state.boundary_log().display()
        ),
    }
}

fn upgrade_word(s: UpgradeState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}"))
}

/// How one node ended a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum RolloutOutcome {
    /// Runs the new version on a confirmed slot.
    Confirmed,
    /// Tried the new version, failed its health check, and went back.
    RolledBack { to: String, reason: String },
    /// Would not install it (download or package refused).
    Refused { reason: String },
}

impl fmt::Display for RolloutOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RolloutOutcome::Confirmed => f.write_str("confirmed"),
            RolloutOutcome::RolledBack { to, reason } => write!(f, "rolled back to {to}: {reason}"),
            RolloutOutcome::Refused { reason } => write!(f, "refused: {reason}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutResult {
    pub node: String,
    pub outcome: RolloutOutcome,
    pub seconds: f64,
}

/// Where a node stands in a rollout of `version`, if it has finished.
fn rollout_outcome(r: &NodeRow, version: &str) -> Option<RolloutOutcome> {
    let o = r.orchestrator.as_ref()?;
    if r.runs_confirmed(version) {
        return Some(RolloutOutcome::Confirmed);
    }
    let failed = o.upgrade.failed_versions.iter().any(|v| v == version);
    if failed && r.running() && o.confirmed && o.guestos_version != version {
        return Some(RolloutOutcome::RolledBack {
            to: o.guestos_version.clone(),
            reason: o.upgrade.last_rollback.clone().unwrap_or_default(),
        });
    }
    if o.upgrade.state == UpgradeState::Failed && o.upgrade.target.as_deref() == Some(version) {
        return Some(RolloutOutcome::Refused {
            reason: o.upgrade.last_result.clone().unwrap_or_default(),
        });
    }
    None
}

/// One line of progress for a node.
fn progress_line(r: &NodeRow) -> String {
    let o = r.orchestrator.as_ref();
    format!(
        "{} {} slot {} ({}), upgrade {}",
        r.guest_state().map(vm_word).unwrap_or_else(|| "-".into()),
        o.map(|o| o.guestos_version.as_str()).unwrap_or("-"),
        o.and_then(|o| o.slot)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        if o.is_some_and(|o| o.confirmed) {
            "confirmed"
        } else {
            "on trial"
        },
        o.map(|o| upgrade_word(o.upgrade.state))
            .unwrap_or_else(|| "-".into())
    )
}

/// Follow nodes of `subnet` until each runs `version` confirmed, or rejected it (a failed
/// health check, or a refused package). Returns per-node outcomes.
pub fn follow(
    state: &State,
    subnet: &str,
    version: &str,
    timeout: Duration,
    report: &dyn Report,
) -> Result<Vec<RolloutResult>, TestnetError> {
    let start = Instant::now();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut done: BTreeMap<String, RolloutResult> = BTreeMap::new();
    loop {
        let rows: Vec<NodeRow> = status(state)
            .into_iter()
            .filter(|r| r.subnet.as_deref() == Some(subnet))
            .collect();
        if rows.is_empty() {
            return Err(msg(format!("no nodes in {subnet}")));
        }
        let secs = || start.elapsed().as_secs_f64();
        for r in &rows {
            let line = progress_line(r);
            if last.get(&r.name) != Some(&line) {
                report.line(&format!("{:>6.1} s {}: {line}", secs(), r.name));
                last.insert(r.name.clone(), line);
            }
            if done.contains_key(&r.name) {
                continue;
            }
            if let Some(outcome) = rollout_outcome(r, version) {
                report.line(&format!("{}: {outcome} after {:.1} s", r.name, secs()));
                done.insert(
                    r.name.clone(),
                    RolloutResult {
                        node: r.name.clone(),
                        outcome,
                        seconds: secs(),
                    },
                );
            }
        }
        if rows.iter().all(|r| done.contains_key(&r.name)) {
            return Ok(done.into_values().collect());
        }
        if start.elapsed() > timeout {
            return Err(msg(format!(
                "rollout of {version} to {subnet} did not finish within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Build, elect and deploy `version` to `subnet`, and follow the rollout. Returns the
/// adoption instant's offset and the per-node results.
pub fn upgrade(
    state: &State,
    subnet: &str,
    version: &str,
    report: &dyn Report,
) -> Result<Vec<RolloutResult>, TestnetError> {
    let img = image(&state.images, &state.recipes, version, report)?;
    let sha = state.publish(&img, version)?;
    let reg = state
        .api()
        .snapshot(None)
        .map_err(|e| msg(e.to_string()))?
        .registry;
    if !reg.guestos_versions.contains_key(version) {
        let r = state.elect_guestos(version, &sha, &[2])?;
        report.line(&format!(
            "proposal {} (elect GuestOS {version}): {}",
            r.id, r.status
        ));
    }
    let r = state.propose(
        1,
        &[2],
        &format!("deploy GuestOS {version} to {subnet}"),
        Action::DeployGuestosToSubnet {
            subnet: subnet.into(),
            version: version.into(),
        },
    )?;
    report.line(&format!(
        "proposal {} (deploy {version} to {subnet}): {}",
        r.id, r.status
    ));
    if !matches!(r.status, ProposalStatus::Adopted { .. }) {
        return Err(msg(format!(
            "the deploy proposal was not adopted: {}",
            r.status
        )));
    }
    follow(state, subnet, version, Duration::from_secs(1800), report)
}

/// Stop everything the testnet started; agents power their VMs down first.
pub fn down(dir: &Path, report: &dyn Report) -> Result<(), TestnetError> {
    let state = State::load(dir)?;
    for n in &state.nodes {
        if alive(n.agent_pid) {
            report.line(&format!(
                "{}: stopping the agent (it powers the GuestOS VM down)",
                n.name
            ));
            signal(n.agent_pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    let end = Instant::now() + Duration::from_secs(90);
    while state.nodes.iter().any(|n| alive(n.agent_pid)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(300));
    }
    for n in &state.nodes {
        if alive(n.agent_pid) {
            report.line(&format!(
                "{}: agent did not stop in time; killing it",
                n.name
            ));
            signal(n.agent_pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    signal(state.registry_pid, nix::sys::signal::Signal::SIGTERM);
    signal(state.nginx_pid, nix::sys::signal::Signal::SIGQUIT);
    if state.boundary_pid != 0 {
        signal(state.boundary_pid, nix::sys::signal::Signal::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(500));
    for pid in [state.registry_pid, state.nginx_pid, state.boundary_pid] {
        if pid == 0 {
            continue;
        }
        if alive(pid) {
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    // Any QEMU still holding one of our node disks is ours: end it.
    let ours = stray_qemus(dir);
    for pid in &ours {
        signal(*pid, nix::sys::signal::Signal::SIGKILL);
    }
    if !ours.is_empty() {
        report.line(&format!("killed {} leftover QEMU process(es)", ours.len()));
    }
    let _ = std::fs::remove_file(dir.join(STATE_FILE));
    report.line("testnet stopped; nothing left running");
    Ok(())
}

/// QEMU processes whose command line names a file inside `dir`.
pub fn stray_qemus(dir: &Path) -> Vec<u32> {
    let needle = dir
        .canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-system") && cmd.contains(&needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}
