//! What the orchestrator hands the replica it starts: `spec.json` in the replica's folder on
//! the GuestOS data partition (LUKS2), mode 0600, written whole or not at all.
//!
//! The orchestrator makes it from the verified registry (the subnet's record, its key opened
//! with the node's key); the replica (`icos replica serve`) reads it on start. A change of the
//! subnet (its key, size or ranges) is a new spec and a restart of the replica.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file name of the spec inside the replica's folder.
pub const SPEC_FILE: &str = "spec.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSpec {
    /// The subnet's name in the registry.
    pub subnet: String,
    /// The subnet's BLS secret key, hex (until subnets replicate, each node holds it whole).
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
    /// Nodes in the subnet (more than one: calls refused until replication lands).
    pub subnet_size: usize,
    /// The Ed25519 public keys (hex) of every node in the subnet, from the registry: the
    /// replica certifies them under `/subnet/<id>/node`, so an agent checks a query answer
    /// signed by any node of the subnet, whichever node a boundary sent it to.
    #[serde(default)]
    pub subnet_nodes: Vec<String>,
    pub listen: std::net::SocketAddr,
    /// Where the replica keeps its checkpoints.
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a replica spec: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

impl ReplicaSpec {
    pub fn read(path: &Path) -> Result<ReplicaSpec, SpecError> {
        let text = std::fs::read(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| SpecError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Write to `path` (mode 0600) through a synced temporary file and a rename, so a reader
    /// or a power cut sees the old spec or the new one.
    pub fn write(&self, path: &Path) -> Result<(), SpecError> {
        let text = serde_json::to_vec_pretty(self).expect("a spec serializes");
        daemon_support::write_private(path, &text).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
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
            listen: "[::]:8080".parse().unwrap(),
            state_dir: d.path().join("state"),
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
