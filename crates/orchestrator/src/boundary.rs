//! The API boundary follows governance: `add-api-boundary-nodes` names this node, the
//! orchestrator writes the boundary's spec (the registry it follows, the domains and TLS
//! certificate from the config disk) onto the data partition and starts the `icos-boundary`
//! unit on the payload port; `remove-api-boundary-nodes` stops it and deletes its folder.
//!
//! The boundary's routes are not in the spec: the boundary follows the verified registry
//! itself. A registry that cannot be reached changes nothing here.

use crate::payload::{self, Change, PayloadError, Place};
use node_config::boundary::{BoundarySpec, TlsFiles};
use node_config::guest::GuestConfig;
use node_status::orchestrator::BoundaryState;
use registry_model::Registry;

/// The files the TLS certificate chain and key are written to, in the boundary's folder.
const TLS_CERT: &str = "tls.pem";
const TLS_KEY: &str = "tls-key.pem";

/// What the node's boundary should be, by the registry and the config disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// Not an API boundary node.
    None,
    /// An API boundary node: the spec, and the TLS files (certificate, key) when it has them.
    Run {
        spec: Box<BoundarySpec>,
        tls: Option<(String, String)>,
    },
    /// An API boundary node that cannot serve: why.
    Cannot { reason: String },
}

/// Where the boundary lives and how it is started.
#[derive(Debug, Clone)]
pub struct BoundaryPlace {
    pub payload: Place,
    /// A node runs one payload, on the payload port (the replica's, when it is in a subnet).
    pub listen: std::net::SocketAddr,
}

impl Default for BoundaryPlace {
    fn default() -> Self {
        BoundaryPlace {
            payload: Place::in_guestos("boundary"),
            listen: std::net::SocketAddr::from((
                std::net::Ipv6Addr::UNSPECIFIED,
                crate::replica::REPLICA_PORT,
            )),
        }
    }
}

/// The boundary `node` should run by `reg`, with the settings of `cfg`.
pub fn desired(reg: &Registry, node: &str, cfg: &GuestConfig, place: &BoundaryPlace) -> Desired {
    if !reg.api_boundary_nodes.contains(node) {
        return Desired::None;
    }
    let cannot = |reason: &str| Desired::Cannot {
        reason: reason.into(),
    };
    let Some(genesis_hash) = cfg.genesis_hash.clone() else {
        return cannot("the config disk names no genesis hash to verify the registry against");
    };
    let b = &cfg.boundary;
    let tls = match (&b.tls_cert_pem, &b.tls_key_pem) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            if !cert.contains("-----BEGIN CERTIFICATE-----") {
                return cannot(
                    "the config disk's boundary TLS certificate is not a PEM certificate",
                );
            }
            if !key.contains("PRIVATE KEY-----") {
                return cannot("the config disk's boundary TLS key is not a PEM private key");
            }
            Some((cert.clone(), key.clone()))
        }
        (Some(_), None) => {
            return cannot("the config disk has a boundary TLS certificate but no key")
        }
        (None, Some(_)) => {
            return cannot("the config disk has a boundary TLS key but no certificate")
        }
    };
    let dir = &place.payload.dir;
    Desired::Run {
        spec: Box::new(BoundarySpec {
            registry_urls: cfg.registry_urls.clone(),
            genesis_hash,
            listen: place.listen,
            cache_dir: dir.join("registry"),
            domains: b.domains.clone(),
            tls: tls.as_ref().map(|_| TlsFiles {
                cert: dir.join(TLS_CERT),
                key: dir.join(TLS_KEY),
            }),
            host_loopback: cfg.host_loopback,
        }),
        tls,
    }
}

/// Bring the boundary to `want`; the change made and the state to publish.
pub fn apply(
    want: &Desired,
    place: &BoundaryPlace,
) -> Result<(Change, BoundaryState), PayloadError> {
    match want {
        Desired::None => Ok((payload::remove(&place.payload)?, BoundaryState::NotAssigned)),
        Desired::Cannot { reason } => Ok((
            Change::Nothing,
            BoundaryState::Down {
                reason: reason.clone(),
            },
        )),
        Desired::Run { spec, tls } => {
            let files: Vec<(&str, &[u8])> = match tls {
                Some((cert, key)) => vec![(TLS_CERT, cert.as_bytes()), (TLS_KEY, key.as_bytes())],
                None => Vec::new(),
            };
            let change = payload::ensure(&place.payload, &**spec, &files)?;
            let state = if payload::active(&place.payload) {
                BoundaryState::Serving {
                    listen: spec.listen.to_string(),
                    https: spec.tls.is_some(),
                    domains: spec.domains.clone(),
                }
            } else {
                BoundaryState::Down {
                    reason: "the boundary unit is not running (see `journalctl -u icos-boundary`)"
                        .into(),
                }
            };
            Ok((change, state))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_config::spec::Spec;

    fn place(d: &std::path::Path) -> BoundaryPlace {
        BoundaryPlace {
            payload: Place {
                dir: d.join("boundary"),
                unit: None,
                data_mount: None,
            },
            ..BoundaryPlace::default()
        }
    }

    fn config() -> GuestConfig {
        GuestConfig {
            deployment: "testnet".into(),
            registry_urls: vec!["http://10.0.2.2:8180".into()],
            genesis_hash: Some("ab".repeat(32)),
            host_loopback: Some("10.0.2.2".parse().unwrap()),
            ..GuestConfig::default()
        }
    }

    #[test]
    fn the_boundary_follows_governance_and_leaves_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let place = place(d.path());
        let mut reg = Registry::default();
        let cfg = config();
        // Not an API boundary node: nothing runs, nothing is made.
        let want = desired(&reg, "n1", &cfg, &place);
        assert_eq!(want, Desired::None);
        assert_eq!(apply(&want, &place).unwrap().0, Change::Nothing);
        assert!(!place.payload.dir.exists());

        // Governance names it: the spec comes from the config disk, plain HTTP.
        reg.api_boundary_nodes.insert("n1".into());
        let want = desired(&reg, "n1", &cfg, &place);
        let Desired::Run { spec, tls: None } = &want else {
            panic!("{want:?}")
        };
        assert_eq!(spec.registry_urls, cfg.registry_urls);
        assert_eq!(spec.host_loopback, cfg.host_loopback);
        assert_eq!(spec.listen.port(), crate::replica::REPLICA_PORT);
        let (change, state) = apply(&want, &place).unwrap();
        assert_eq!(change, Change::Started);
        assert!(
            matches!(&state, BoundaryState::Serving { https: false, .. }),
            "{state:?}"
        );
        assert_eq!(
            &BoundarySpec::read(&place.payload.spec_path()).unwrap(),
            &**spec
        );
        assert_eq!(apply(&want, &place).unwrap().0, Change::Nothing);

        // The operator adds a certificate: written private, the boundary restarts on HTTPS.
        let mut with_tls = cfg.clone();
        with_tls.boundary.tls_cert_pem = Some("-----BEGIN CERTIFICATE-----\nx\n".into());
        with_tls.boundary.tls_key_pem = Some("-----BEGIN PRIVATE KEY-----\ny\n".into());
        let want = desired(&reg, "n1", &with_tls, &place);
        let (change, state) = apply(&want, &place).unwrap();
        assert_eq!(change, Change::Restarted);
        assert!(matches!(state, BoundaryState::Serving { https: true, .. }));
        use std::os::unix::fs::PermissionsExt;
        let key = place.payload.dir.join(TLS_KEY);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A new certificate under the same file names is a change too.
        with_tls.boundary.tls_cert_pem = Some("-----BEGIN CERTIFICATE-----\nz\n".into());
        let want = desired(&reg, "n1", &with_tls, &place);
        assert_eq!(apply(&want, &place).unwrap().0, Change::Restarted);

        // Half a TLS setup or a file that is no PEM: named, and what runs is left alone.
        for (cert, key, says) in [
            (
                Some("-----BEGIN CERTIFICATE-----"),
                None,
                "certificate but no key",
            ),
            (
                None,
                Some("-----BEGIN PRIVATE KEY-----"),
                "key but no certificate",
            ),
            (
                Some("hello"),
                Some("-----BEGIN PRIVATE KEY-----"),
                "not a PEM certificate",
            ),
            (
                Some("-----BEGIN CERTIFICATE-----"),
                Some("hello"),
                "not a PEM private key",
            ),
        ] {
            let mut bad = cfg.clone();
            bad.boundary.tls_cert_pem = cert.map(String::from);
            bad.boundary.tls_key_pem = key.map(String::from);
            let want = desired(&reg, "n1", &bad, &place);
            let (change, state) = apply(&want, &place).unwrap();
            assert_eq!(change, Change::Nothing);
            assert!(
                matches!(&state, BoundaryState::Down { reason } if reason.contains(says)),
                "{state:?}"
            );
            assert!(place.payload.spec_path().exists());
        }

        // Governance removes it: stopped, its folder (key and cache) deleted.
        reg.api_boundary_nodes.clear();
        let want = desired(&reg, "n1", &cfg, &place);
        assert_eq!(
            apply(&want, &place).unwrap(),
            (Change::Removed, BoundaryState::NotAssigned)
        );
        assert!(!place.payload.dir.exists());
    }
}
