//! A payload's spec: the JSON file the orchestrator writes into a payload's folder on the
//! data partition and the payload reads on start. Private (mode 0600: a spec may hold keys)
//! and written whole or not at all, so a reader or a power cut sees the old spec or the new.

use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};

/// The file name of a spec inside its payload's folder.
pub const SPEC_FILE: &str = "spec.json";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a {what}: {source}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        source: serde_json::Error,
    },
}

/// A spec file's type; `WHAT` names it in errors.
pub trait Spec: Serialize + DeserializeOwned + PartialEq {
    const WHAT: &'static str;

    fn read(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| SpecError::Parse {
            path: path.to_path_buf(),
            what: Self::WHAT,
            source,
        })
    }

    /// Write to `path` (mode 0600) through a synced temporary file and a rename.
    fn write(&self, path: &Path) -> Result<(), SpecError> {
        let text = serde_json::to_vec_pretty(self).expect("a spec serializes");
        daemon_support::write_private(path, &text).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}
