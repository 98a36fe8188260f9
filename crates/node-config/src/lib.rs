//! The configuration a node's parts hand to each other, as one typed chain:
//!
//! 1. [`operator`]: the node provider's config folder (`config.ini`, `deployment.json`, the
//!    operator key, SSH keys), checked with every problem named by file, line and key;
//! 2. [`hostos`]: what SetupOS writes onto the HostOS config partition (`hostos.toml`), the
//!    agent's configuration (also the development override, written by hand or by the local
//!    network from the same type);
//! 3. [`guest`]: what the HostOS agent hands its GuestOS on the config disk (`guest.json`).
//!
//! Each stage carries a `config_version`; every field added later has a default, so an older
//! reader takes a newer file (ignoring what it does not know) and a newer reader an older one.
//! [`network`] renders the systemd-networkd file each OS writes at boot from its stage.

pub mod boundary;
pub mod guest;
pub mod hostos;
pub mod ini;
pub mod network;
pub mod operator;
pub mod replica;
pub mod spec;

use serde::{Deserialize, Serialize};
use std::fmt;

/// The version of the config formats this code writes.
pub const CONFIG_VERSION: u32 = 1;

/// How a node gets its addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The static addresses from the operator's config (production; SetupOS writes it).
    Static,
    /// DHCP for IPv4 (local networks and tests); the static IPv6 address is still set when
    /// a prefix is known. A config that names no mode (written before modes existed, or by
    /// hand for development) keeps the DHCP it always had.
    #[default]
    Dhcp,
}

/// One thing wrong in a config folder: where, what was found, what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub found: String,
    pub expected: String,
}

impl Problem {
    pub fn at(
        file: &str,
        line: usize,
        key: Option<&str>,
        found: String,
        expected: &str,
    ) -> Problem {
        Problem {
            file: file.into(),
            line: Some(line),
            key: key.map(str::to_string),
            found,
            expected: expected.into(),
        }
    }

    pub fn key(file: &str, key: &str, found: &str, expected: &str) -> Problem {
        Problem {
            file: file.into(),
            line: None,
            key: Some(key.into()),
            found: found.into(),
            expected: expected.into(),
        }
    }

    pub fn file(file: &str, found: impl Into<String>, expected: &str) -> Problem {
        Problem {
            file: file.into(),
            line: None,
            key: None,
            found: found.into(),
            expected: expected.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": {k}")?;
        }
        write!(f, ": found {}; expected {}", self.found, self.expected)
    }
}
