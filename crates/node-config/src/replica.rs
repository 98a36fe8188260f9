//! What the orchestrator hands the replica it starts: `spec.json` in the replica's folder on
//! the GuestOS data partition (LUKS2), mode 0600, written whole or not at all.
//!
//! The orchestrator makes it from the verified registry (the subnet's record, its key opened
//! with the node's key); the replica (`icos replica serve`) reads it on start. A change of the
//! subnet (its key, size or ranges) is a new spec and a restart of the replica.

pub use crate::spec::{Spec, SpecError, SPEC_FILE};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSpec {
    /// The subnet's name in the registry.
    pub subnet: String,
    /// The subnet's BLS secret key, hex (each node holds it whole until threshold keys land).
    pub subnet_secret_key: String,
    /// The root key's delegation of the subnet key, CBOR as hex (from the registry).
    pub delegation: String,
    /// The network's root public key, DER as hex (served by `/api/v2/status`).
    pub root_key: String,
    /// The node's Ed25519 secret key, hex: it signs query answers, and its public key is the
    /// node's in the registry.
    pub node_key: String,
    /// The canister indices this subnet hands out, first and last.
    pub canister_range: (u64, u64),
    /// Nodes in the subnet (more than one: calls go through the subnet's log, `raft`).
    pub subnet_size: usize,
    /// The Ed25519 public keys (hex) of every node in the subnet, from the registry: the
    /// replica certifies them under `/subnet/<id>/node`, so an agent checks a query answer
    /// signed by any node of the subnet, whichever node a boundary sent it to.
    #[serde(default)]
    pub subnet_nodes: Vec<String>,
    /// The GuestOS version the node runs: told to the subnet's other members, who wait for
    /// it in a rolling upgrade.
    #[serde(default)]
    pub guestos_version: String,
    pub listen: std::net::SocketAddr,
    /// Where the replica keeps its checkpoints.
    pub state_dir: PathBuf,
    /// The subnet's ordered log: how this node takes part (none: a replica of its own).
    #[serde(default)]
    pub raft: Option<RaftSpec>,
}

/// How a replica takes part in its subnet's ordered log (`replication`): what is fixed for
/// the replica's life. Who the members are changes without a restart: [`Membership`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftSpec {
    /// This node's id in the log ([`member_id`] of its node id).
    pub id: u64,
    /// Where this node serves its peer routes.
    pub listen: std::net::SocketAddr,
    /// The log's file: outside `state_dir`, so a state set aside keeps its log.
    pub log: PathBuf,
    /// Where the orchestrator keeps the subnet's [`Membership`] up to date.
    pub membership: PathBuf,
    /// Whether this node starts the log (the first of the subnet's founders still in it);
    /// every other node waits to be added by the leader.
    pub bootstrap: bool,
}

/// Who is in a subnet's log, by the registry: rewritten by the orchestrator whenever its
/// registry view changes, read by the replica every few seconds (no restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// The subnet's nodes by the registry: the log's members once the leader has made
    /// them so.
    pub members: Vec<u64>,
    /// Every registered node that may be heard: the members, and nodes still in the log's
    /// membership while they leave it.
    pub peers: Vec<RaftPeer>,
    /// The registry's time for this view: a membership change asked with an older one than
    /// the leader has acted on is refused.
    pub time: u64,
}

impl crate::spec::Spec for Membership {
    const WHAT: &'static str = "subnet membership";
}

/// The membership file's name, next to the spec.
pub const MEMBERSHIP_FILE: &str = "membership.json";

/// A node that may take part in a subnet's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftPeer {
    pub id: u64,
    /// Where it serves its peer routes.
    pub url: String,
    /// Its Ed25519 node key, hex.
    pub public_key: String,
}

/// A node's id in its subnet's log: the first 8 bytes of SHA-256 over a domain and the node
/// id, the same wherever it is computed and stable while the node exists.
pub fn member_id(node_id: &str) -> u64 {
    use sha2::Digest;
    let h = sha2::Sha256::new()
        .chain_update(b"icos-raft-member")
        .chain_update(node_id.as_bytes())
        .finalize();
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

/// The port the peer routes are served on.
pub const PEER_PORT: u16 = 4100;

impl crate::spec::Spec for ReplicaSpec {
    const WHAT: &'static str = "replica spec";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_spec_round_trips_private_and_garbage_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(SPEC_FILE);
        let s = ReplicaSpec {
            subnet: "subnet-1".into(),
            subnet_secret_key: "11".repeat(32),
            delegation: "d9d9f7".into(),
            root_key: "30".into(),
            node_key: "22".repeat(32),
            canister_range: (0, 9),
            subnet_size: 1,
            subnet_nodes: Vec::new(),
            guestos_version: String::new(),
            listen: "[::]:8080".parse().unwrap(),
            state_dir: d.path().join("state"),
            raft: Some(RaftSpec {
                id: member_id("n1"),
                listen: "[::]:4100".parse().unwrap(),
                log: d.path().join("raft.redb"),
                membership: d.path().join(MEMBERSHIP_FILE),
                bootstrap: true,
            }),
        };
        s.write(&p).unwrap();
        assert_eq!(ReplicaSpec::read(&p).unwrap(), s);
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&p, b"{").unwrap();
        let e = ReplicaSpec::read(&p).unwrap_err().to_string();
        assert!(e.contains("spec.json: not a replica spec"), "{e}");
    }
}
