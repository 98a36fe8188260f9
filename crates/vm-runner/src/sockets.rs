//! Unix socket paths that fit `sun_path`, whatever the state folder's depth.

use crate::*;

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL).
pub(crate) const SUN_PATH_MAX: usize = 107;

/// The path to bind or connect a Unix socket at `path` by.
///
/// `sun_path` limits socket paths to 107 bytes, and state folders under a deep checkout
/// (CI's `/check/work/...`, test run folders with UUIDs) go past that: QEMU then exits
/// with status 1 before the guest prints anything. A long path is reached through a
/// symlink to its folder in a private per-user folder under the temp dir, named by a hash
/// of the folder, so the VM and every client compute the same short path independently.
pub fn socket_path(path: &Path) -> Result<PathBuf, VmError> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok(path.to_path_buf());
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(path.to_path_buf());
    };
    let uid = nix::unistd::getuid().as_raw();
    let links = std::env::temp_dir().join(format!("icos-sock-{uid}"));
    let bad = |message: String| VmError::SocketDir {
        path: links.clone(),
        message,
    };
    match std::fs::create_dir(&links) {
        Ok(()) => {
            std::fs::set_permissions(&links, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| bad(e.to_string()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bad(e.to_string())),
    }
    // Another user could have planted the folder (or a symlink) to catch our sockets.
    let meta = std::fs::symlink_metadata(&links).map_err(|e| bad(e.to_string()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "not a private folder owned by uid {uid}; remove it"
        )));
    }
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| bad(e.to_string()))?
            .join(dir)
    };
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let link = links.join(hex::encode(&digest[..8]));
    match std::fs::read_link(&link) {
        Ok(target) if target == dir => {}
        Ok(_) | Err(_) => {
            // Build the link beside its final name and rename it in, so two processes
            // racing here never see a half-made link.
            let tmp = links.join(format!(
                ".{}-{}",
                hex::encode(&digest[..8]),
                std::process::id()
            ));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&dir, &tmp).map_err(|e| bad(e.to_string()))?;
            std::fs::rename(&tmp, &link).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(link.join(name))
}
