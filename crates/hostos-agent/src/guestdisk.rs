//! The small config disk handed to the GuestOS VM: a FAT image (label ICOSCFG) with
//! `guest.json` — the node's network settings, the registry to follow with its pinned
//! genesis, and the node operator key when the operator gave one. The guest reads all its
//! configuration from it.

use crate::config::HostosConfig;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const GUEST_CONFIG_FILE: &str = "guest.json";
pub const GUEST_CONFIG_LABEL: &str = "ICOSCFG";
const DISK_SIZE: u64 = 8 << 20;

/// What the guest learns from its host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    pub deployment: String,
    pub mac: String,
    pub ipv6: Option<String>,
    pub node_id: Option<String>,
    pub registry_urls: Vec<String>,
    pub genesis_hash: Option<String>,
    pub operator_id: Option<String>,
    /// PEM of the node operator's key, for signing the node's registration.
    pub operator_key_pem: Option<String>,
    /// The node's public HTTP endpoint (registered with the node).
    #[serde(default)]
    pub http_endpoint: Option<String>,
    /// Prefixes allowed to reach SSH and the status/metrics port.
    #[serde(default)]
    pub admin_prefixes: Vec<String>,
}

impl GuestConfig {
    pub fn from_host(c: &HostosConfig) -> Result<GuestConfig, String> {
        let operator_key_pem = match &c.operator_key_file {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                format!(
                    "field `guest_config.operator_key_file` ({}): {e}",
                    p.display()
                )
            })?),
            None => None,
        };
        Ok(GuestConfig {
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
        })
    }
}

/// Write the config disk image (replacing it).
pub fn write_config_disk(path: &Path, cfg: &GuestConfig) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("guest config disk {}: {e}", path.display());
    let tmp = path.with_extension("tmp");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| err(&e))?;
    f.set_len(DISK_SIZE).map_err(|e| err(&e))?;
    let mut fat =
        boot_slots::Esp::format(f, 0x1c05_c0f6, GUEST_CONFIG_LABEL).map_err(|e| err(&e))?;
    let json = serde_json::to_vec_pretty(cfg).expect("serializes");
    fat.write_file(GUEST_CONFIG_FILE, &mut json.as_slice())
        .map_err(|e| err(&e))?;
    fat.close().map_err(|e| err(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(&e))
}

/// Read `guest.json` from a config disk (the guest side; a device or an image file).
pub fn read_config_disk(device: &Path) -> Result<GuestConfig, String> {
    let err = |e: &dyn std::fmt::Display| format!("guest config disk {}: {e}", device.display());
    let f = std::fs::File::open(device).map_err(|e| err(&e))?;
    let mut len = f.metadata().map_err(|e| err(&e))?.len();
    if len == 0 {
        len = DISK_SIZE;
    }
    let fat = boot_slots::Esp::open(disk_layout::Window::new(disk_layout::ReadOnly(f), 0, len))
        .map_err(|e| err(&e))?;
    let bytes = fat.read_file(GUEST_CONFIG_FILE).map_err(|e| err(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_disk_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let c = GuestConfig {
            deployment: "local".into(),
            mac: "6a:01:00:00:00:01".into(),
            ipv6: None,
            node_id: Some("node-1".into()),
            registry_urls: vec!["http://10.0.2.2:8180".into()],
            genesis_hash: Some("ab".into()),
            operator_id: None,
            operator_key_pem: None,
            http_endpoint: Some("http://127.0.0.1:18081".into()),
            admin_prefixes: vec!["10.0.2.0/24".into()],
        };
        let p = d.path().join("cfg.img");
        write_config_disk(&p, &c).unwrap();
        assert_eq!(read_config_disk(&p).unwrap(), c);
        std::fs::write(&p, b"junk").unwrap();
        assert!(read_config_disk(&p).unwrap_err().contains("cfg.img"));
    }

    #[test]
    fn the_guest_gets_its_own_registry_urls_when_given() {
        let base = "[node]\nmanagement_mac = \"02:00:00:00:01:01\"\n[registry]\nurls = [\"http://127.0.0.1:8180\"]\ngenesis_hash = \"ab\"\n";
        let host = HostosConfig::parse(base, "test").unwrap();
        let g = GuestConfig::from_host(&host).unwrap();
        assert_eq!(g.registry_urls, ["http://127.0.0.1:8180"]);
        let with = format!("{base}[guest_config]\nregistry_urls = [\"http://10.0.2.2:8180\"]\n");
        let host = HostosConfig::parse(&with, "test").unwrap();
        let g = GuestConfig::from_host(&host).unwrap();
        assert_eq!(g.registry_urls, ["http://10.0.2.2:8180"]);
        assert_eq!(host.registry.unwrap().urls, ["http://127.0.0.1:8180"]);
    }
}
