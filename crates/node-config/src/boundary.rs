//! What the orchestrator hands the API boundary it starts when governance makes the node an
//! API boundary node: `spec.json` in the boundary's folder on the data partition (see
//! [`crate::spec`]). Everything in it comes from the verified registry's genesis pin and the
//! node's config disk; the routes themselves the boundary reads from the verified registry.

pub use crate::spec::{Spec, SpecError, SPEC_FILE};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundarySpec {
    /// Registry servers or mirrors (untrusted: the boundary verifies to the genesis).
    pub registry_urls: Vec<String>,
    pub genesis_hash: String,
    pub listen: SocketAddr,
    /// Where the boundary caches the verified registry between starts.
    pub cache_dir: PathBuf,
    /// The gateway's domains (`<canister-id>.<domain>`), from the config disk.
    #[serde(default)]
    pub domains: Vec<String>,
    /// HTTPS with this certificate chain and key (PEM files the orchestrator wrote from the
    /// config disk); plain HTTP without.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Development networks: endpoints on a loopback address are reached at this address
    /// (a VM reaches its host's loopback through QEMU's user network at 10.0.2.2).
    #[serde(default)]
    pub host_loopback: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Spec for BoundarySpec {
    const WHAT: &'static str = "boundary spec";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_round_trips_and_garbage_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(SPEC_FILE);
        let s = BoundarySpec {
            registry_urls: vec!["http://10.0.2.2:8180".into()],
            genesis_hash: "ab".repeat(32),
            listen: "[::]:8080".parse().unwrap(),
            cache_dir: d.path().join("registry"),
            domains: vec!["icp.local".into()],
            tls: Some(TlsFiles {
                cert: d.path().join("tls.pem"),
                key: d.path().join("tls-key.pem"),
            }),
            host_loopback: Some("10.0.2.2".parse().unwrap()),
        };
        s.write(&p).unwrap();
        assert_eq!(BoundarySpec::read(&p).unwrap(), s);
        std::fs::write(&p, br#"{"registry_urls":[]}"#).unwrap();
        let e = BoundarySpec::read(&p).unwrap_err().to_string();
        assert!(e.contains("spec.json: not a boundary spec"), "{e}");
    }
}
