//! The engine's record of what it did, kept on the ESP as `icos/state.json` so it survives
//! slot switches and can be read from a disk image offline. Boot entries say what boots
//! next; this file says why (interrupted work, pending trials, rollbacks and their reasons).

use disk_layout::Slot;
use serde::{Deserialize, Serialize};

pub const STATE_PATH: &str = "icos/state.json";
/// Written by the image builder: which OS this disk holds.
pub const IMAGE_PATH: &str = boot_slots::IMAGE_INFO_PATH;
/// Rollback records kept (older ones are dropped; the counter keeps counting).
pub const MAX_ROLLBACKS: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// An operation that started and has not finished (a crash leaves it here).
    #[serde(default)]
    pub in_progress: Option<InProgress>,
    /// The last completed install (ready to activate while `slot` has no entry).
    #[serde(default)]
    pub installed: Option<Installed>,
    /// A slot activated for a trial boot, not yet confirmed.
    #[serde(default)]
    pub pending: Option<Pending>,
    #[serde(default)]
    pub last_install: Option<InstallResult>,
    #[serde(default)]
    pub last_confirmed: Option<Confirmed>,
    #[serde(default)]
    pub rollbacks: Vec<Rollback>,
    #[serde(default)]
    pub rollback_count: u64,
    /// Versions that failed their trial on this node: the orchestrator does not retry them.
    #[serde(default)]
    pub failed_versions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InProgress {
    pub operation: String,
    pub slot: Slot,
    pub version: Option<String>,
    pub started_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub slot: Slot,
    pub version: String,
    pub package_sha256: String,
    /// Kernel command line for the slot's boot entry (from the package manifest).
    pub boot_options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub slot: Slot,
    pub version: String,
    pub from_slot: Slot,
    pub from_version: String,
    pub tries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallResult {
    pub version: Option<String>,
    pub slot: Slot,
    pub ok: bool,
    pub message: String,
    pub unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    pub slot: Slot,
    pub version: String,
    pub unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub from_slot: Slot,
    pub from_version: String,
    pub to_slot: Slot,
    pub to_version: String,
    pub reason: String,
    pub unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub kind: update_package::ImageKind,
}

impl State {
    pub fn record_rollback(&mut self, r: Rollback) {
        if !self.failed_versions.contains(&r.from_version) {
            self.failed_versions.push(r.from_version.clone());
        }
        self.rollbacks.push(r);
        if self.rollbacks.len() > MAX_ROLLBACKS {
            self.rollbacks.remove(0);
        }
        self.rollback_count += 1;
    }
}

pub use daemon_support::unix_now as now_unix;
