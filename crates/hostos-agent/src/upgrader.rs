//! HostOS self-upgrade. The target comes only from this host's own verified registry view:
//! the HostOS version governance assigned to this node, its elected SHA-256 and URLs. A
//! request (from the guest over the channel, or from the operator) can only start that.

use crate::config::HostosConfig;
use crate::Shared;
use host_channel::UpgradeAnswer;
use registry_model::Elected;
use serde::Serialize;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Default, Serialize)]
pub struct UpgradeStatus {
    pub in_progress: Option<String>,
    pub last_result: Option<String>,
    pub requests: u64,
}

pub struct Upgrader {
    cfg: HostosConfig,
    shared: Shared,
    /// The version being installed, while an install runs.
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
    pub fn request(&self) -> Result<UpgradeAnswer, String> {
        self.shared.lock().expect("status lock").upgrade.requests += 1;
        if let Some(v) = self.busy.lock().expect("busy lock").clone() {
            return Ok(UpgradeAnswer::InProgress { version: v });
        }
        let reg = self
            .cfg
            .registry
            .as_ref()
            .ok_or("this host has no registry configured (fields `registry.urls` and `registry.genesis_hash`)")?;
        let mut client = registry_client::Client::open(registry_client::ClientConfig::new(
            reg.urls.clone(),
            &reg.genesis_hash,
            self.cfg.state_dir.join("registry"),
        ))
        .map_err(|e| e.to_string())?;
        client
            .sync()
            .map_err(|e| format!("cannot sync the registry: {e}"))?;
        let node = match &self.cfg.node_id {
            Some(id) => id.clone(),
            None => node_of_guest(client.registry(), self.cfg.guest_registered_ipv6())?,
        };
        let target = client
            .registry()
            .hostos_for_node(&node)
            .cloned()
            .ok_or_else(|| format!("the registry assigns no HostOS version to node {node}"))?;
        let current = crate::hostos_version(&self.cfg);
        if target.version == current {
            return Ok(UpgradeAnswer::UpToDate { version: current });
        }
        let disk = self
            .cfg
            .hostos_disk
            .clone()
            .ok_or("this host cannot upgrade itself (field `upgrade.hostos_disk` is not set; development mode)")?;
        *self.busy.lock().expect("busy lock") = Some(target.version.clone());
        self.shared.lock().expect("status lock").upgrade.in_progress = Some(target.version.clone());
        let version = target.version.clone();
        let (shared, cfg, busy) = (self.shared.clone(), self.cfg.clone(), self.busy.clone());
        std::thread::spawn(move || {
            let result = install(&disk, &target, &node);
            let msg = match &result {
                Ok(()) => format!("HostOS {} installed and activated", target.version),
                Err(e) => format!("HostOS upgrade to {} failed: {e}", target.version),
            };
            tracing::info!("{msg}");
            crate::console(&cfg, &format!("HOSTOS UPGRADE {msg}"));
            {
                let mut s = shared.lock().expect("status lock");
                s.upgrade.in_progress = None;
                s.upgrade.last_result = Some(msg);
            }
            *busy.lock().expect("busy lock") = None;
            if result.is_ok() && disk == "running" {
                crate::console(&cfg, "HOSTOS UPGRADE rebooting into the new version");
                let _ = std::process::Command::new("systemctl")
                    .arg("reboot")
                    .status();
            }
        });
        Ok(UpgradeAnswer::Started { version })
    }
}

/// This host's node, when its config does not name it: the one registered node whose address
/// is the one this host gave its GuestOS. Everything here comes from the host's own config
/// and its verified registry view, nothing from the guest; the registry refuses a second node
/// with an address already taken, and an ambiguous answer is refused here too.
pub fn node_of_guest(
    reg: &registry_model::Registry,
    addr: std::net::Ipv6Addr,
) -> Result<String, String> {
    let found: Vec<&String> = reg.nodes_with_ipv6(addr).map(|n| &n.id).collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "no registered node has this host's GuestOS address {addr} (field `node.node_id` not set; has the guest registered?)"
        )),
        many => Err(format!(
            "several nodes claim this host's GuestOS address {addr}: {many:?}; set `node.node_id`"
        )),
    }
}

fn install(disk: &str, target: &Elected, node: &str) -> Result<(), String> {
    let mut engine = if disk == "running" {
        upgrade_engine::Engine::open_running()
    } else {
        upgrade_engine::Engine::open_disk(std::path::Path::new(disk))
    }
    .map_err(|e| e.to_string())?;
    install_elected(&mut engine, target, node)
}

/// Install an elected package into the inactive slot and give it 3 tries: URLs in this
/// node's mirror order, the next one on any error (unreachable, truncated, wrong SHA-256).
/// The error lists what every URL answered.
pub fn install_elected(
    engine: &mut upgrade_engine::Engine,
    target: &Elected,
    node: &str,
) -> Result<(), String> {
    if target.urls.is_empty() {
        return Err(format!("elected version {} has no URLs", target.version));
    }
    let mut errors = Vec::new();
    for url in target.urls_for(node) {
        let result = upgrade_engine::source::open(url)
            .map_err(|e| e.to_string())
            .and_then(|mut src| {
                engine
                    .install(&mut src.reader, &target.sha256)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(_) => return engine.activate(3).map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => {
                tracing::warn!("{url}: {e}");
                errors.push(format!("{url}: {e}"));
            }
        }
    }
    Err(errors.join("; "))
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
        }
    }

    #[test]
    fn a_host_finds_its_node_by_its_guest_address_only() {
        let mut reg = registry_model::Registry::default();
        let mine: std::net::Ipv6Addr = "fd00::6801:2ff:fe03:405".parse().unwrap();
        let e = node_of_guest(&reg, mine).unwrap_err();
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
        let e = node_of_guest(&reg, mine).unwrap_err();
        assert!(e.contains("several nodes") && e.contains("node-c"), "{e}");
    }
}
