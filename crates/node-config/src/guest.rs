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

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const GUEST_CONFIG_FILE: &str = "guest.json";
pub const GUEST_CONFIG_LABEL: &str = "ICOSCFG";
/// Size of the config disk image (FAT12 fits; the JSON is a few KiB).
pub const DISK_SIZE: u64 = 8 << 20;

/// What the guest learns from its host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
        let e = read_config_disk(&p).unwrap_err().to_string();
        assert!(e.contains("cfg.img"), "{e}");
    }
}
