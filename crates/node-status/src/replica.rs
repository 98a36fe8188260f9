//! What a replica of a replicated subnet publishes about its part in the subnet's log:
//! `status.json` in its folder, replaced whole every second by the replica and read by the
//! orchestrator (a node leaving its subnet keeps its replica until the log no longer counts
//! on it) and by operators.

use serde::{Deserialize, Serialize};

/// The file's name, next to the replica's spec.
pub const STATUS_FILE: &str = "status.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    /// This node's id in the subnet's log.
    pub member_id: u64,
    pub role: LogRole,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    pub term: u64,
    /// The last log entry this node's state holds.
    pub applied: u64,
    /// The log's voting members as this node knows them.
    pub voters: Vec<u64>,
    pub serving: Serving,
    /// When this was written (seconds since 1970).
    pub written_at: u64,
    /// The GuestOS version this node runs (from its spec; empty outside a GuestOS).
    #[serde(default)]
    pub guestos_version: String,
    /// What the subnet's other members said of themselves when last asked (every 2 s, on
    /// the signed peer route): what the orchestrator's rollout turn is decided from.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<u64, PeerReport>,
}

/// One member's answer on the peer route `/subnet/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHealth {
    pub member_id: u64,
    pub role: LogRole,
    pub applied: u64,
    pub serving: Serving,
    pub guestos_version: String,
}

/// What this node heard from another member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum PeerReport {
    Reached(PeerHealth),
    Unreachable { why: String },
}

/// This node's place in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogRole {
    /// It votes: the subnet counts on it for a majority.
    Voter,
    /// It receives the log and catches up, not counted yet.
    Learner,
    /// Not in the log's membership (not added yet, or taken out).
    Outside,
}

/// Whether the replica answers requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum Serving {
    Serving,
    /// Its state is not the subnet's: it answers 503 and resyncs from the log.
    Diverged {
        reason: String,
    },
    /// It was told to stop (the node is rebooting, e.g. into an upgrade): it still answers
    /// but says it is not healthy, so boundaries send its requests elsewhere first.
    Draining,
}
