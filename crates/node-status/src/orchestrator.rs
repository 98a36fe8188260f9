//! The GuestOS orchestrator's `/status`.

use disk_layout::Slot;
use serde::{Deserialize, Serialize};

/// Where the orchestrator is with the GuestOS version governance assigned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeState {
    /// Running the assigned version (or none is assigned).
    #[default]
    Idle,
    /// The subnet cannot spare this node yet: it waits for its turn in the subnet's rolling
    /// upgrade (`last_result` says for what).
    WaitingForTurn,
    /// Downloading and installing the assigned version into the other slot.
    Downloading,
    /// Installed and activated; the node is rebooting into it.
    Rebooting,
    /// The last attempt failed; it is retried with backoff.
    Failed,
    /// The assigned version failed its health check on this node before: not retried until
    /// governance assigns another.
    Holding,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestosUpgrade {
    pub state: UpgradeState,
    pub target: Option<String>,
    /// What happened last, in words (installed, rolled back and why, failed and why).
    pub last_result: Option<String>,
    pub attempts: u64,
    pub failed_versions: Vec<String>,
    pub last_rollback: Option<String>,
}

/// The outcome of the orchestrator's last request to its host for a HostOS upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum HostosRequest {
    /// The host answered.
    Answered { answer: host_channel::UpgradeAnswer },
    /// The host refused or could not be asked.
    Refused { error: String },
}

/// The replica the orchestrator runs for the node's subnet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum ReplicaState {
    /// The node is in no subnet: no replica runs and none keeps state.
    #[default]
    NotAssigned,
    /// The replica of `subnet` (of `nodes` nodes) is running and serves on `listen`.
    Serving {
        subnet: String,
        nodes: usize,
        listen: String,
    },
    /// The node is in `subnet` but its replica does not run: `reason` says why.
    Down { subnet: String, reason: String },
    /// Governance took the node out of `subnet`; its replica runs on until the subnet's log
    /// no longer counts on it (or a grace period ends), then it is removed.
    Leaving { subnet: String },
}

/// The API boundary the orchestrator runs when governance makes the node an API boundary
/// node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum BoundaryState {
    /// Not an API boundary node.
    #[default]
    NotAssigned,
    /// Serving on `listen` (HTTPS or plain HTTP), with the gateway's `domains`.
    Serving {
        listen: String,
        https: bool,
        domains: Vec<String>,
    },
    /// An API boundary node whose boundary does not run: `reason` says why.
    Down { reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrchestratorStatus {
    pub node_id: String,
    /// The kernel's boot id: changes on every boot, so watchers can tell a reboot happened.
    pub boot_id: String,
    pub public_key: String,
    pub registered: bool,
    pub waiting_for: Option<String>,
    pub guestos_version: String,
    /// The slot the node booted from (none outside an icos image).
    pub slot: Option<Slot>,
    /// Whether the running slot is confirmed (a trial slot starts no upgrade).
    pub confirmed: bool,
    pub registry_version: u64,
    pub registry_error: Option<String>,
    pub registry_synced_unix: Option<u64>,
    pub subnet: Option<String>,
    pub target_guestos: Option<String>,
    pub upgrade: GuestosUpgrade,
    pub hostos_version: Option<String>,
    pub hostos_assigned: Option<String>,
    pub hostos_request: Option<HostosRequest>,
    pub firewall_rules: usize,
    /// Digest of the nftables ruleset in force.
    pub firewall_ruleset: Option<String>,
    pub firewall_error: Option<String>,
    pub config_error: Option<String>,
    /// The global IPv6 addresses the GuestOS has (from the kernel, not the config).
    pub ipv6_addresses: Vec<String>,
    pub replica: ReplicaState,
    pub boundary: BoundaryState,
}

impl OrchestratorStatus {
    /// Healthy for a watcher: registered, following the registry, running a confirmed slot,
    /// and in a subnet, serving its replica.
    pub fn problem(&self) -> Option<String> {
        if let Some(e) = &self.config_error {
            return Some(format!("config: {e}"));
        }
        if let Some(e) = &self.registry_error {
            return Some(format!("registry: {e}"));
        }
        if !self.registered {
            return Some(
                self.waiting_for
                    .clone()
                    .unwrap_or_else(|| "not registered".into()),
            );
        }
        if let ReplicaState::Down { subnet, reason } = &self.replica {
            return Some(format!("replica of {subnet}: {reason}"));
        }
        if let BoundaryState::Down { reason } = &self.boundary {
            return Some(format!("API boundary: {reason}"));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_roundtrips_with_enum_states() {
        let s = OrchestratorStatus {
            node_id: "node-1".into(),
            slot: Some(Slot::B),
            upgrade: GuestosUpgrade {
                state: UpgradeState::Rebooting,
                ..Default::default()
            },
            hostos_request: Some(HostosRequest::Answered {
                answer: host_channel::UpgradeAnswer::Started {
                    version: "1.1.0".into(),
                },
            }),
            ..Default::default()
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["upgrade"]["state"], "rebooting");
        assert_eq!(json["slot"], "B");
        assert_eq!(json["hostos_request"]["outcome"], "answered");
        assert_eq!(
            serde_json::from_value::<OrchestratorStatus>(json).unwrap(),
            s
        );
    }

    #[test]
    fn a_replica_that_does_not_run_in_its_subnet_is_a_problem() {
        let mut s = OrchestratorStatus {
            registered: true,
            replica: ReplicaState::Serving {
                subnet: "subnet-1".into(),
                nodes: 1,
                listen: "[::]:8080".into(),
            },
            ..Default::default()
        };
        assert_eq!(s.problem(), None);
        assert_eq!(
            serde_json::to_value(&s).unwrap()["replica"]["state"],
            "serving"
        );
        s.replica = ReplicaState::Down {
            subnet: "subnet-1".into(),
            reason: "the replica unit is not running".into(),
        };
        assert_eq!(
            s.problem().as_deref(),
            Some("replica of subnet-1: the replica unit is not running")
        );
    }
}
