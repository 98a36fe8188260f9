//! The node's key pair, made on the first boot and kept on the GuestOS config partition
//! (a FAT partition that upgrades never touch), so the node keeps its identity.

use crate::OrchestratorError;
use registry_model::keys;
use std::path::Path;

pub const NODE_KEY_FILE: &str = "node.key";

/// Read `node.key` from the store, or make one and write it there first.
pub fn load_or_create(store: &Path) -> Result<keys::SecretKey, OrchestratorError> {
    let err = |e: &dyn std::fmt::Display| OrchestratorError::NodeKey {
        path: store.to_path_buf(),
        message: e.to_string(),
    };
    let mut fat = boot_slots::open_fat(store).map_err(|e| err(&e))?;
    if let Ok(pem) = fat.read_file(NODE_KEY_FILE) {
        let key = keys::parse_key_pem(&String::from_utf8_lossy(&pem)).map_err(|e| err(&e))?;
        fat.close().map_err(|e| err(&e))?;
        return Ok(key);
    }
    let key = keys::generate();
    let pem = keys::key_pem(&key).map_err(|e| err(&e))?;
    fat.write_file(NODE_KEY_FILE, &mut pem.as_bytes())
        .map_err(|e| err(&e))?;
    fat.close().map_err(|e| err(&e))?;
    tracing::info!(
        "made this node's key pair (public key {})",
        keys::public_hex(&key)
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_made_once_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.img");
        boot_slots::create_fat(&p, 16 << 20, 1, "CONFIG")
            .unwrap()
            .close()
            .unwrap();
        let a = load_or_create(&p).unwrap();
        let b = load_or_create(&p).unwrap();
        assert_eq!(a.to_bytes(), b.to_bytes());
        std::fs::write(&p, b"no filesystem").unwrap();
        assert!(load_or_create(&p)
            .unwrap_err()
            .to_string()
            .contains("config.img"));
    }
}
