//! What this host tells its GuestOS: the [`GuestConfig`] built from the HostOS config, on
//! the config disk whose format `node-config` defines.

use crate::config::HostosConfig;
pub use node_config::guest::{write_config_disk, GuestBoundary, GuestConfig, GuestNetwork};
use std::path::{Path, PathBuf};

/// A file named in the HostOS config (the operator key, the boundary's TLS files) could not
/// be read.
#[derive(Debug, thiserror::Error)]
#[error("field `{field}` ({}): {error}", path.display())]
pub struct ConfigFileError {
    pub field: &'static str,
    pub path: PathBuf,
    pub error: std::io::Error,
}

fn read_named(field: &'static str, p: &Option<PathBuf>) -> Result<Option<String>, ConfigFileError> {
    p.as_deref()
        .map(|p: &Path| {
            std::fs::read_to_string(p).map_err(|error| ConfigFileError {
                field,
                path: p.to_path_buf(),
                error,
            })
        })
        .transpose()
}

/// The guest's configuration from the host's.
pub fn guest_config(c: &HostosConfig) -> Result<GuestConfig, ConfigFileError> {
    // SetupOS writes the key inline; a development config may name a file instead.
    let operator_key_pem = match &c.operator_key_pem {
        Some(pem) => Some(pem.clone()),
        None => read_named("guest_config.operator_key_file", &c.operator_key_file)?,
    };
    let boundary = GuestBoundary {
        domains: c.boundary_domains.clone(),
        tls_cert_pem: read_named("boundary.tls_cert_file", &c.boundary_tls_cert_file)?,
        tls_key_pem: read_named("boundary.tls_key_file", &c.boundary_tls_key_file)?,
    };
    Ok(GuestConfig {
        config_version: node_config::CONFIG_VERSION,
        deployment: c.deployment.clone(),
        mac: c.guest_mac().to_string(),
        ipv6: c.guest_ipv6(),
        node_id: c.node_id.clone(),
        registry_urls: if c.guest_registry_urls.is_empty() {
            c.registry
                .as_ref()
                .map(|r| r.urls.clone())
                .unwrap_or_default()
        } else {
            c.guest_registry_urls.clone()
        },
        genesis_hash: c.registry.as_ref().map(|r| r.genesis_hash.clone()),
        operator_id: c.operator_id.clone(),
        operator_key_pem,
        http_endpoint: c.http_endpoint.clone(),
        peer_endpoint: c.peer_endpoint.clone(),
        admin_prefixes: c.admin_prefixes.clone(),
        network: GuestNetwork {
            mode: c.network_mode,
            ipv6_gateway: c.ipv6_gateway,
            ipv4: c.guest_ipv4.clone(),
            domain_name: c.domain_name.clone(),
        },
        ssh_admin_keys: c.ssh_admin_keys.clone(),
        boundary,
        host_loopback: c.guest_host_loopback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_gets_its_own_registry_urls_when_given() {
        let base = "[node]\nmanagement_mac = \"02:00:00:00:01:01\"\n[registry]\nurls = [\"http://127.0.0.1:8180\"]\ngenesis_hash = \"ab\"\n";
        let host = HostosConfig::parse(base, "test").unwrap();
        let g = guest_config(&host).unwrap();
        assert_eq!(g.registry_urls, ["http://127.0.0.1:8180"]);
        let with = format!("{base}[guest_config]\nregistry_urls = [\"http://10.0.2.2:8180\"]\n");
        let host = HostosConfig::parse(&with, "test").unwrap();
        let g = guest_config(&host).unwrap();
        assert_eq!(g.registry_urls, ["http://10.0.2.2:8180"]);
        assert_eq!(host.registry.unwrap().urls, ["http://127.0.0.1:8180"]);
    }

    #[test]
    fn a_missing_operator_key_file_is_named() {
        let text = "[guest_config]\noperator_key_file = \"/nonexistent/op.key\"\n";
        let host = HostosConfig::parse(text, "test").unwrap();
        let e = guest_config(&host).unwrap_err().to_string();
        assert!(
            e.contains("operator_key_file") && e.contains("/nonexistent/op.key"),
            "{e}"
        );
    }

    #[test]
    fn boundary_settings_reach_the_guest_and_a_missing_tls_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let (cert, key) = (d.path().join("tls.pem"), d.path().join("tls-key.pem"));
        std::fs::write(&cert, "CERT").unwrap();
        std::fs::write(&key, "KEY").unwrap();
        let text = format!(
            "[guest_config]\nhost_loopback = \"10.0.2.2\"\n[boundary]\ndomains = [\"icp.local\"]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.display(),
            key.display()
        );
        let host = HostosConfig::parse(&text, "test").unwrap();
        assert!(
            !host
                .problems
                .iter()
                .any(|p| p.contains("boundary") || p.contains("loopback")),
            "{:?}",
            host.problems
        );
        let again = HostosConfig::parse(&host.render(), "again").unwrap();
        assert_eq!(
            (
                &again.boundary_domains,
                &again.boundary_tls_key_file,
                again.guest_host_loopback
            ),
            (
                &host.boundary_domains,
                &host.boundary_tls_key_file,
                host.guest_host_loopback
            )
        );
        let g = guest_config(&host).unwrap();
        assert_eq!(g.boundary.domains, ["icp.local"]);
        assert_eq!(g.boundary.tls_cert_pem.as_deref(), Some("CERT"));
        assert_eq!(g.boundary.tls_key_pem.as_deref(), Some("KEY"));
        assert_eq!(g.host_loopback, Some("10.0.2.2".parse().unwrap()));
        std::fs::remove_file(&key).unwrap();
        let e = guest_config(&host).unwrap_err().to_string();
        assert!(
            e.contains("boundary.tls_key_file") && e.contains("tls-key.pem"),
            "{e}"
        );
        let bad = HostosConfig::parse("[guest_config]\nhost_loopback = \"nope\"\n", "t").unwrap();
        assert!(
            bad.problems
                .iter()
                .any(|p| p.contains("guest_config.host_loopback")),
            "{:?}",
            bad.problems
        );
    }
}
