//! The online keys a server holds. The registry names one online key (governance changes it);
//! the server signs its freshness statements with whichever of its keys the registry names
//! *now*, so a rotation adopted by governance takes effect with the change that adopts it.
//!
//! Keys come from one PKCS#8 file, or from a folder of `*.key` files that is read again when
//! the registry names a key not loaded yet: an operator puts the next key's file in the
//! folder before governance votes, and the rotation needs no restart.

use crate::ServerError;
use registry_model::keys;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct OnlineKeys {
    source: PathBuf,
    loaded: Mutex<BTreeMap<String, keys::SecretKey>>,
}

impl OnlineKeys {
    /// Keys from a key file or a folder of `*.key` files.
    pub fn load(source: &Path) -> Result<OnlineKeys, ServerError> {
        let k = OnlineKeys {
            source: source.to_path_buf(),
            loaded: Mutex::new(BTreeMap::new()),
        };
        let n = k.rescan()?;
        if n == 0 {
            return Err(ServerError::OnlineKey(format!(
                "{} holds no online key (*.key, PKCS#8 Ed25519)",
                source.display()
            )));
        }
        Ok(k)
    }

    /// Read the source again; returns how many keys are loaded.
    fn rescan(&self) -> Result<usize, ServerError> {
        let files: Vec<PathBuf> = if self.source.is_dir() {
            let entries = std::fs::read_dir(&self.source).map_err(|e| {
                ServerError::OnlineKey(format!("reading {}: {e}", self.source.display()))
            })?;
            let mut v: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "key"))
                .collect();
            v.sort();
            v
        } else {
            vec![self.source.clone()]
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        for f in files {
            match keys::read_key(&f) {
                Ok(k) => {
                    loaded.insert(keys::public_hex(&k), k);
                }
                // One unreadable file must not hide the others (and the server keeps what
                // it has loaded).
                Err(e) => tracing::warn!("online key {}: {e}", f.display()),
            }
        }
        Ok(loaded.len())
    }

    /// The key with this public key, reading the source again if it is not loaded yet.
    pub fn get(&self, public_hex: &str) -> Result<keys::SecretKey, ServerError> {
        if let Some(k) = self.lookup(public_hex) {
            return Ok(k);
        }
        self.rescan()?;
        self.lookup(public_hex).ok_or_else(|| {
            ServerError::OnlineKey(format!(
                "the registry names online key {public_hex}, which this server does not hold: put its key file into {}",
                self.source.display()
            ))
        })
    }

    fn lookup(&self, public_hex: &str) -> Option<keys::SecretKey> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(public_hex)
            .cloned()
    }
}
