//! A replica on its own: one node that is its own subnet, with keys made on first start and
//! kept in its state directory — what a developer runs locally, as `dfx start` does for the
//! IC. Agents trust it by fetching its root key from `/api/v2/status`.
//!
//! Layout: `<dir>/keys/root.bls` (the subnet's key, which is also the root key: there is no
//! delegation) and `<dir>/keys/node.ed25519` (the node's query-signing key), 32 bytes each,
//! mode 0600; `<dir>/state/` holds the [`checkpoint`](crate::checkpoint)s.

use crate::{Config, OpenError, Replica};
use certified_state::BlsKey;
use ic_principal::Principal;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a 32-byte key ({len} bytes); remove it to have a new one made, which changes the root key agents trust", path.display())]
    BadKey { path: PathBuf, len: usize },
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// The canister ids a local replica hands out (one subnet's worth, as the IC's first).
pub const LOCAL_RANGE: (u64, u64) = (0, 0xfffff);

/// Open (making keys on first start) the local replica in `dir`; what the state directory
/// held is in the returned [`Recovery`](crate::checkpoint::Recovery).
pub fn open(
    dir: &Path,
    runtime: canister_runtime::Limits,
) -> Result<(Replica, crate::checkpoint::Recovery), LocalError> {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).map_err(|source| LocalError::Io {
        path: keys.clone(),
        source,
    })?;
    let subnet = key_file(&keys.join("root.bls"), || BlsKey::generate().to_bytes())?;
    let node = key_file(&keys.join("node.ed25519"), || {
        ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng).to_bytes()
    })?;
    let subnet_key = BlsKey::from_bytes(&subnet).map_err(|_| LocalError::BadKey {
        path: keys.join("root.bls"),
        len: subnet.len(),
    })?;
    let node_key = ed25519_dalek::SigningKey::from_bytes(&node);
    let node_der = ingress::ed25519_der(node_key.verifying_key().as_bytes());
    let config = Config {
        subnet_id: Principal::self_authenticating(subnet_key.public_der()),
        root_key_der: subnet_key.public_der(),
        subnet_key,
        delegation: None,
        node_id: Principal::self_authenticating(&node_der),
        node_key,
        canister_range: LOCAL_RANGE,
        subnet_size: 1,
        peer_node_keys: Vec::new(),
        runtime,
        ingress: Default::default(),
    };
    Ok(Replica::open(
        config,
        &dir.join("state"),
        Box::new(crate::system_time_nanos),
    )?)
}

/// The 32-byte key in `path`, made by `make` and written (0600) if there is none.
fn key_file(path: &Path, make: impl FnOnce() -> [u8; 32]) -> Result<[u8; 32], LocalError> {
    let io = |source| LocalError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| LocalError::BadKey {
            path: path.to_path_buf(),
            len: bytes.len(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = make();
            daemon_support::write_private(path, &key).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}
