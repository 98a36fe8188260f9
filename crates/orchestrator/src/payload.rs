//! What every payload the orchestrator runs has in common (the replica of a subnet, the API
//! boundary): a folder on the encrypted data partition holding its spec (and any files the
//! spec names), and a systemd unit that runs it from that spec. The orchestrator brings the
//! pair to what the verified registry asks: written and (re)started when the spec changed,
//! started when it stopped, stopped and deleted when the node no longer has that role.

pub use node_config::spec::{Spec, SpecError, SPEC_FILE};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a payload lives and how it is started.
#[derive(Debug, Clone)]
pub struct Place {
    /// The payload's folder on the data partition (its spec and state).
    pub dir: PathBuf,
    /// The systemd unit that runs it (none: tests, which drive the spec and the folder only).
    pub unit: Option<String>,
    /// The encrypted data partition's mount point: nothing (keys least of all) is written
    /// unless a file system is mounted there, so a node whose data volume did not open never
    /// leaves secrets on its unencrypted `/var`.
    pub data_mount: Option<PathBuf>,
}

impl Place {
    /// The default place of the payload named `name` in a GuestOS (unit `icos-<name>`).
    pub fn in_guestos(name: &str) -> Place {
        Place {
            dir: Path::new("/var/lib/icos/data").join(name),
            unit: Some(format!("icos-{name}.service")),
            data_mount: Some("/var/lib/icos/data".into()),
        }
    }

    pub fn spec_path(&self) -> PathBuf {
        self.dir.join(SPEC_FILE)
    }
}

/// Why a payload could not be put in the state the registry asks for.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a mounted file system (the encrypted data partition did not open: see `journalctl -u icos-data`); the payload waits for it", path.display())]
    NotMounted { path: PathBuf },
    #[error("systemctl {action} {unit}: {why}")]
    Unit {
        action: &'static str,
        unit: String,
        why: String,
    },
}

/// What [`ensure`] or [`remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Nothing,
    Started,
    Restarted,
    Removed,
}

/// Run the payload from `spec` and `files` (name → content, written private next to the
/// spec, before it): written and restarted when any of them changed, started when it is
/// not running.
pub fn ensure<S: Spec>(
    place: &Place,
    spec: &S,
    files: &[(&str, &[u8])],
) -> Result<Change, PayloadError> {
    if let Some(m) = &place.data_mount {
        if !is_mount_point(m) {
            return Err(PayloadError::NotMounted { path: m.clone() });
        }
    }
    let current = S::read(&place.spec_path()).ok();
    let files_same = files
        .iter()
        .all(|(name, data)| std::fs::read(place.dir.join(name)).is_ok_and(|d| d == *data));
    if current.as_ref() == Some(spec) && files_same {
        if !active(place) {
            unit(place, "start")?;
        }
        return Ok(Change::Nothing);
    }
    let io = |path: PathBuf| move |source| PayloadError::Io { path, source };
    std::fs::create_dir_all(&place.dir).map_err(io(place.dir.clone()))?;
    for (name, data) in files {
        let path = place.dir.join(name);
        daemon_support::write_private(&path, data).map_err(io(path))?;
    }
    spec.write(&place.spec_path())?;
    unit(place, "restart")?;
    Ok(match current {
        Some(_) => Change::Restarted,
        None => Change::Started,
    })
}

/// Stop the payload and delete its folder (nothing when there is none).
pub fn remove(place: &Place) -> Result<Change, PayloadError> {
    if !place.dir.exists() {
        return Ok(Change::Nothing);
    }
    unit(place, "stop")?;
    std::fs::remove_dir_all(&place.dir).map_err(|source| PayloadError::Io {
        path: place.dir.clone(),
        source,
    })?;
    Ok(Change::Removed)
}

/// Whether the unit runs (without a unit: whether the spec is in place).
pub fn active(place: &Place) -> bool {
    match &place.unit {
        Some(u) => Command::new("systemctl")
            .args(["is-active", "--quiet", u.as_str()])
            .status()
            .is_ok_and(|s| s.success()),
        None => place.spec_path().exists(),
    }
}

/// Whether a file system is mounted at `path` (it lies on another device than its parent).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(path);
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// Run `systemctl <action> <unit>` (nothing without a unit).
fn unit(place: &Place, action: &'static str) -> Result<(), PayloadError> {
    let Some(u) = &place.unit else { return Ok(()) };
    let err = |why: String| PayloadError::Unit {
        action,
        unit: u.clone(),
        why,
    };
    let out = Command::new("systemctl")
        .args([action, u.as_str()])
        .output()
        .map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}
