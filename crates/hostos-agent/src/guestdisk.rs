//! What this host tells its GuestOS: the [`GuestConfig`] built from the HostOS config, on
//! the config disk whose format `node-config` defines.

use crate::config::HostosConfig;
pub use node_config::guest::{write_config_disk, GuestConfig, GuestNetwork};
use std::path::PathBuf;

/// The operator key file named in the HostOS config could not be read.
#[derive(Debug, thiserror::Error)]
#[error("field `guest_config.operator_key_file` ({path}): {error}")]
pub struct OperatorKeyError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// The guest's configuration from the host's.
pub fn guest_config(c: &HostosConfig) -> Result<GuestConfig, OperatorKeyError> {
    // SetupOS writes the key inline; a development config may name a file instead.
    let operator_key_pem = match (&c.operator_key_pem, &c.operator_key_file) {
        (Some(pem), _) => Some(pem.clone()),
        (None, Some(p)) => Some(
            std::fs::read_to_string(p).map_err(|error| OperatorKeyError {
                path: p.clone(),
                error,
            })?,
        ),
        (None, None) => None,
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
        admin_prefixes: c.admin_prefixes.clone(),
        network: GuestNetwork {
            mode: c.network_mode,
            ipv6_gateway: c.ipv6_gateway,
            ipv4: c.guest_ipv4.clone(),
            domain_name: c.domain_name.clone(),
        },
        ssh_admin_keys: c.ssh_admin_keys.clone(),
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
}
