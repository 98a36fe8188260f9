//! The HostOS agent's `/v1/status`.

use disk_layout::Slot;
use serde::{Deserialize, Serialize};

/// What the agent's GuestOS VM is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestState {
    /// The agent has just started.
    #[default]
    Starting,
    /// No usable GuestOS disk is configured: nothing to run.
    NotConfigured,
    /// QEMU runs; the guest has not reported its boot yet.
    Booting,
    /// The guest reported `GUESTOS BOOT SUCCESS`.
    Running,
    /// The VM stopped or failed; it is started again after a backoff.
    Restarting,
    /// The agent is powering the VM down.
    Stopping,
    Stopped,
    /// Too many consecutive failures: the agent stopped restarting it.
    GaveUp,
}

/// How the VM's CPU is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestStatus {
    pub state: GuestState,
    /// The GuestOS version from the guest's boot line.
    pub version: Option<String>,
    pub slot: Option<Slot>,
    pub pid: Option<u32>,
    pub accel: Option<Accel>,
    pub restarts: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub started_at_unix: Option<u64>,
    pub booted_at_unix: Option<u64>,
    pub boot_secs: Option<f64>,
    pub serial_log: String,
}

/// The outcome of the last HostOS upgrade the agent ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostosUpgradeResult {
    pub version: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostosUpgradeStatus {
    /// The version being installed, while an install runs.
    pub in_progress: Option<String>,
    pub last_result: Option<HostosUpgradeResult>,
    /// Requests received (from the guest or the operator).
    pub requests: u64,
}

/// Who this node is and how it is addressed, as its config derives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeAddresses {
    pub deployment: String,
    pub management_mac: String,
    pub hostos_mac: String,
    pub hostos_ipv6: Option<String>,
    pub guestos_mac: String,
    pub guestos_ipv6: Option<String>,
    /// `static` or `dhcp`.
    pub network: String,
    pub ipv6_gateway: Option<String>,
    /// The global IPv6 addresses HostOS has now (the planned one among them once the
    /// network is up).
    pub configured_ipv6: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStatus {
    pub hostos_version: String,
    pub node: NodeAddresses,
    pub guest: GuestStatus,
    pub config_problems: Vec<String>,
    pub channel: host_channel::Stats,
    pub notifications: u64,
    pub last_notification: Option<String>,
    pub upgrade: HostosUpgradeStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_roundtrips_with_enum_states() {
        let s = AgentStatus {
            hostos_version: "1.0.0".into(),
            guest: GuestStatus {
                state: GuestState::GaveUp,
                accel: Some(Accel::Tcg),
                slot: Some(Slot::A),
                ..Default::default()
            },
            ..Default::default()
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["guest"]["state"], "gave-up");
        assert_eq!(json["guest"]["accel"], "tcg");
        assert_eq!(serde_json::from_value::<AgentStatus>(json).unwrap(), s);
    }
}
