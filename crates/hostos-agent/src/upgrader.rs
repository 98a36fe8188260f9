//! HostOS self-upgrade. The target comes only from this host's own verified registry view:
//! the HostOS version governance assigned to this node, its elected SHA-256 and URLs. A
//! request (from the guest over the channel, or from the operator) can only start that.

use crate::config::{HostosConfig, HostosDisk};
use crate::Shared;
use host_channel::UpgradeAnswer;
use node_status::hostos::HostosUpgradeResult;
use registry_model::Elected;
use std::sync::{Arc, Mutex};

/// Why a HostOS upgrade request did not start an upgrade.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeRefused {
    #[error(
        "this host has no registry configured (fields `registry.urls` and `registry.genesis_hash`)"
    )]
    NoRegistry,
    #[error("cannot open the registry cache: {0}")]
    Cache(registry_client::ClientError),
    #[error("cannot sync the registry: {0}")]
    Sync(registry_client::ClientError),
    #[error(transparent)]
    Node(#[from] NodeLookupError),
    #[error("the registry assigns no HostOS version to node {0}")]
    NotAssigned(String),
    #[error("this host cannot upgrade itself (field `upgrade.hostos_disk` is not set; development mode)")]
    NoDisk,
}

/// This host's node could not be told from the registry.
#[derive(Debug, thiserror::Error)]
pub enum NodeLookupError {
    #[error("no registered node has this host's GuestOS address {0} (field `node.node_id` not set; has the guest registered?)")]
    NotFound(std::net::Ipv6Addr),
    #[error(
        "several nodes claim this host's GuestOS address {addr}: {nodes:?}; set `node.node_id`"
    )]
    Ambiguous {
        addr: std::net::Ipv6Addr,
        nodes: Vec<String>,
    },
}

/// Why an upgrade that started did not finish.
#[derive(Debug, thiserror::Error)]
enum InstallFailed {
    #[error(transparent)]
    Open(#[from] upgrade_engine::EngineError),
    #[error(transparent)]
    Install(#[from] upgrade_engine::elected::ElectedError),
}

pub struct Upgrader {
    cfg: HostosConfig,
    shared: Shared,
    /// The version being installed, while an install runs (the agent's own state; the
    /// status only shows it).
    busy: Arc<Mutex<Option<String>>>,
}

impl Upgrader {
    pub fn new(cfg: HostosConfig, shared: Shared) -> Self {
        Upgrader {
            cfg,
            shared,
            busy: Arc::default(),
        }
    }

    /// Look up the assigned HostOS version; start installing it if this host runs another.
    pub fn request(&self) -> Result<UpgradeAnswer, UpgradeRefused> {
        self.shared.lock().expect("status lock").upgrade.requests += 1;
        if let Some(v) = self.busy.lock().expect("busy lock").clone() {
            return Ok(UpgradeAnswer::InProgress { version: v });
        }
        let (node, target) = self.assigned()?;
        let current = crate::hostos_version(&self.cfg);
        if target.version == current {
            return Ok(UpgradeAnswer::UpToDate { version: current });
        }
        let disk = self.cfg.hostos_disk.clone().ok_or(UpgradeRefused::NoDisk)?;
        let version = target.version.clone();
        *self.busy.lock().expect("busy lock") = Some(version.clone());
        self.shared.lock().expect("status lock").upgrade.in_progress = Some(version.clone());
        let (shared, cfg, busy) = (self.shared.clone(), self.cfg.clone(), self.busy.clone());
        std::thread::spawn(move || {
            let result = install(&disk, &target, &node);
            finish(&cfg, &shared, &target.version, &disk, result);
            *busy.lock().expect("busy lock") = None;
        });
        Ok(UpgradeAnswer::Started { version })
    }

    /// This node and the HostOS version governance assigned it, from a fresh sync of this
    /// host's own verified registry view.
    fn assigned(&self) -> Result<(String, Elected), UpgradeRefused> {
        let reg = self
            .cfg
            .registry
            .as_ref()
            .ok_or(UpgradeRefused::NoRegistry)?;
        let mut client = registry_client::Client::open(registry_client::ClientConfig::new(
            reg.urls.clone(),
            &reg.genesis_hash,
            self.cfg.state_dir.join("registry"),
        ))
        .map_err(UpgradeRefused::Cache)?;
        client.sync().map_err(UpgradeRefused::Sync)?;
        let node = match &self.cfg.node_id {
            Some(id) => id.clone(),
            None => node_of_guest(client.registry(), self.cfg.guest_registered_ipv6())?,
        };
        let target = client
            .registry()
            .hostos_for_node(&node)
            .cloned()
            .ok_or_else(|| UpgradeRefused::NotAssigned(node.clone()))?;
        Ok((node, target))
    }
}

/// Say how it went, and reboot into a new HostOS on the running system.
fn finish(
    cfg: &HostosConfig,
    shared: &Shared,
    version: &str,
    disk: &HostosDisk,
    result: Result<(), InstallFailed>,
) {
    let (ok, message) = match &result {
        Ok(()) => (true, format!("HostOS {version} installed and activated")),
        Err(e) => (false, format!("HostOS upgrade to {version} failed: {e}")),
    };
    tracing::info!("{message}");
    let console = crate::console(cfg);
    console.line(&format!("HOSTOS UPGRADE {message}"));
    {
        let mut s = shared.lock().expect("status lock");
        s.upgrade.in_progress = None;
        s.upgrade.last_result = Some(HostosUpgradeResult {
            version: version.to_string(),
            ok,
            message,
        });
    }
    if ok && *disk == HostosDisk::Running {
        console.line("HOSTOS UPGRADE rebooting into the new version");
        if let Err(e) = daemon_support::reboot() {
            console.line(&format!("HOSTOS UPGRADE cannot reboot: {e}"));
        }
    }
}

/// This host's node, when its config does not name it: the one registered node whose address
/// is the one this host gave its GuestOS. Everything here comes from the host's own config
/// and its verified registry view, nothing from the guest; the registry refuses a second node
/// with an address already taken, and an ambiguous answer is refused here too.
pub fn node_of_guest(
    reg: &registry_model::Registry,
    addr: std::net::Ipv6Addr,
) -> Result<String, NodeLookupError> {
    let found: Vec<String> = reg.nodes_with_ipv6(addr).map(|n| n.id.clone()).collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(NodeLookupError::NotFound(addr)),
        _ => Err(NodeLookupError::Ambiguous { addr, nodes: found }),
    }
}

fn install(disk: &HostosDisk, target: &Elected, node: &str) -> Result<(), InstallFailed> {
    let mut engine = match disk {
        HostosDisk::Running => upgrade_engine::Engine::open_running()?,
        HostosDisk::Image(path) => upgrade_engine::Engine::open_disk(path)?,
    };
    let urls: Vec<&str> = target
        .urls_for(node)
        .into_iter()
        .map(String::as_str)
        .collect();
    upgrade_engine::elected::install_elected(
        &mut engine,
        &target.version,
        &urls,
        &target.sha256,
        3,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, ipv6: &str) -> registry_model::Node {
        registry_model::Node {
            id: id.into(),
            operator: "op1".into(),
            public_key: String::new(),
            ipv6: ipv6.into(),
            http_endpoint: "http://[fd00::1]:8080".into(),
            hostos_version: None,
            peer_endpoint: None,
        }
    }

    #[test]
    fn a_host_finds_its_node_by_its_guest_address_only() {
        let mut reg = registry_model::Registry::default();
        let mine: std::net::Ipv6Addr = "fd00::6801:2ff:fe03:405".parse().unwrap();
        let e = node_of_guest(&reg, mine).unwrap_err().to_string();
        assert!(e.contains("has the guest registered"), "{e}");
        reg.nodes.insert("node-a".into(), node("node-a", "fd00::1"));
        // Written differently, same address: still found.
        reg.nodes.insert(
            "node-b".into(),
            node("node-b", "fd00:0::6801:2ff:fe03:0405"),
        );
        assert_eq!(node_of_guest(&reg, mine).unwrap(), "node-b");
        reg.nodes
            .insert("node-c".into(), node("node-c", "fd00::6801:2ff:fe03:405"));
        let e = node_of_guest(&reg, mine).unwrap_err().to_string();
        assert!(e.contains("several nodes") && e.contains("node-c"), "{e}");
    }
}
