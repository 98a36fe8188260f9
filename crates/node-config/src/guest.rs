//! The small config disk handed to the GuestOS VM: a FAT image (label ICOSCFG) with
//! `guest.json` — the node's network settings, the registry to follow with its pinned
//! genesis, and the node operator key when the operator gave one. The guest reads all its
//! configuration from it.
//!
//! ```
//! use node_config::guest::{GuestConfig, read_config_disk, write_config_disk};
//! let d = tempfile::tempdir().unwrap();
//! let cfg = GuestConfig { deployment: "local".into(), mac: "6a:01:00:00:00:01".into(), ..Default::default() };
//! write_config_disk(&d.path().join("cfg.img"), &cfg).unwrap();
//! assert_eq!(read_config_disk(&d.path().join("cfg.img")).unwrap(), cfg);
//! ```

use crate::operator::Ipv4Config;
use crate::NetworkMode;
use serde::{Deserialize, Serialize};
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

pub const GUEST_CONFIG_FILE: &str = "guest.json";
pub const GUEST_CONFIG_LABEL: &str = "ICOSCFG";
/// Size of the config disk image (FAT12 fits; the JSON is a few KiB).
pub const DISK_SIZE: u64 = 8 << 20;

/// The GuestOS's network, as its host derived it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestNetwork {
    pub mode: NetworkMode,
    /// The /64 prefix's gateway; with `ipv6`, the static IPv6 configuration.
    pub ipv6_gateway: Option<Ipv6Addr>,
    pub ipv4: Option<Ipv4Config>,
    pub domain_name: Option<String>,
}

/// What the guest learns from its host. Fields added after version 0 have defaults, so a
/// GuestOS reads the config of an older or newer HostOS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestConfig {
    #[serde(default)]
    pub config_version: u32,
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
    /// Where the node's subnet peers reach its peer routes (registered with the node; none:
    /// `http://[<ipv6>]:4100`).
    #[serde(default)]
    pub peer_endpoint: Option<String>,
    /// Prefixes allowed to reach SSH and the status/metrics port.
    #[serde(default)]
    pub admin_prefixes: Vec<String>,
    #[serde(default)]
    pub network: GuestNetwork,
    /// SSH public keys for the `admin` account (from the operator's SetupOS config only).
    #[serde(default)]
    pub ssh_admin_keys: Vec<String>,
    /// What the node serves with if governance makes it an API boundary node.
    #[serde(default)]
    pub boundary: GuestBoundary,
    /// Development networks: the address at which the guest reaches its host's loopback
    /// (QEMU's user network: 10.0.2.2), where a local network's nodes have their endpoints.
    #[serde(default)]
    pub host_loopback: Option<std::net::IpAddr>,
}

/// The API boundary's settings from the operator (the routes come from the registry).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuestBoundary {
    /// The gateway's domains: `<canister-id>.<domain>` serves a canister's pages.
    pub domains: Vec<String>,
    /// The TLS certificate chain (PEM); with the key, the boundary serves HTTPS.
    pub tls_cert_pem: Option<String>,
    pub tls_key_pem: Option<String>,
}

impl GuestConfig {
    /// What the GuestOS writes for systemd-networkd at boot (its VM NIC already has its MAC).
    pub fn network_plan(&self) -> crate::network::NetworkPlan {
        let ipv6 = self.ipv6.as_deref().and_then(|a| a.parse().ok());
        crate::network::NetworkPlan {
            uplink: None,
            mac: None,
            mode: self.network.mode,
            ipv6: ipv6.zip(self.network.ipv6_gateway),
            ipv4: self.network.ipv4.clone(),
            domain_name: self.network.domain_name.clone(),
        }
    }
}

/// A config disk that could not be written or read, and where.
#[derive(Debug, thiserror::Error)]
#[error("guest config disk {path}: {message}")]
pub struct ConfigDiskError {
    pub path: PathBuf,
    pub message: String,
}

fn disk_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> ConfigDiskError + '_ {
    move |e| ConfigDiskError {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Write the config disk image (a temporary file renamed over `path`).
pub fn write_config_disk(path: &Path, cfg: &GuestConfig) -> Result<(), ConfigDiskError> {
    let err = disk_err(path);
    let tmp = path.with_extension("tmp");
    let mut fat = boot_slots::create_fat(&tmp, DISK_SIZE, 0x1c05_c0f6, GUEST_CONFIG_LABEL)
        .map_err(|e| err(&e))?;
    let json = serde_json::to_vec_pretty(cfg).map_err(|e| err(&e))?;
    fat.write_file(GUEST_CONFIG_FILE, &mut json.as_slice())
        .map_err(|e| err(&e))?;
    fat.close().map_err(|e| err(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(&e))
}

/// Read `guest.json` from a config disk (the guest side; a device or an image file).
pub fn read_config_disk(device: &Path) -> Result<GuestConfig, ConfigDiskError> {
    let err = disk_err(device);
    let fat = boot_slots::open_fat_read_only(device).map_err(|e| err(&e))?;
    let bytes = fat.read_file(GUEST_CONFIG_FILE).map_err(|e| err(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_disk_roundtrip_and_junk_named() {
        let d = tempfile::tempdir().unwrap();
        let c = GuestConfig {
            config_version: crate::CONFIG_VERSION,
            deployment: "local".into(),
            mac: "6a:01:00:00:00:01".into(),
            ipv6: None,
            node_id: Some("node-1".into()),
            registry_urls: vec!["http://10.0.2.2:8180".into()],
            genesis_hash: Some("ab".into()),
            operator_id: None,
            operator_key_pem: None,
            http_endpoint: Some("http://127.0.0.1:18081".into()),
            peer_endpoint: None,
            admin_prefixes: vec!["10.0.2.0/24".into()],
            network: GuestNetwork {
                mode: NetworkMode::Static,
                ipv6_gateway: Some("fe80::1".parse().unwrap()),
                ipv4: None,
                domain_name: Some("node.example.com".into()),
            },
            ssh_admin_keys: vec!["ssh-ed25519 AAAA admin".into()],
            boundary: GuestBoundary {
                domains: vec!["icp.local".into()],
                tls_cert_pem: Some("-----BEGIN CERTIFICATE-----".into()),
                tls_key_pem: Some("-----BEGIN PRIVATE KEY-----".into()),
            },
            host_loopback: Some("10.0.2.2".parse().unwrap()),
        };
        let p = d.path().join("cfg.img");
        write_config_disk(&p, &c).unwrap();
        assert_eq!(read_config_disk(&p).unwrap(), c);
        std::fs::write(&p, b"junk").unwrap();
        let e = read_config_disk(&p).unwrap_err().to_string();
        assert!(e.contains("cfg.img"), "{e}");
    }

    /// Version 0 (before versions were written) reads with defaults; a newer file with a
    /// field this version does not know reads too.
    #[test]
    fn older_and_newer_guest_configs_read() {
        let v0 = r#"{"deployment":"testnet","mac":"6a:01:00:00:00:01","ipv6":null,"node_id":null,"registry_urls":[],"genesis_hash":null,"operator_id":null,"operator_key_pem":null}"#;
        let c: GuestConfig = serde_json::from_str(v0).unwrap();
        assert_eq!((c.config_version, c.network.mode), (0, NetworkMode::Dhcp));
        let mut v2: serde_json::Value = serde_json::to_value(&c).unwrap();
        v2["config_version"] = 2.into();
        v2["a_field_from_the_future"] = "x".into();
        v2["network"]["another"] = 1.into();
        let back: GuestConfig = serde_json::from_value(v2).unwrap();
        assert_eq!(back.config_version, 2);
        assert_eq!(back.mac, c.mac);
    }
}
