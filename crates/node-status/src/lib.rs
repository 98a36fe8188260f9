//! The status documents of the node daemons, shared by the daemons (which publish them) and
//! every reader (the CLI, the local network, benchmarks, tests): [`orchestrator`]'s
//! `/status`, [`hostos`]'s `/v1/status` and [`boundary`]'s `/boundary/status`. States are enums, so a reader matches on them
//! instead of comparing strings, and a daemon and its readers cannot drift apart.
//!
//! Readers fetch with [`fetch`], which bounds the answer's size and time.
//!
//! ```
//! use node_status::orchestrator::{OrchestratorStatus, UpgradeState};
//! let s: OrchestratorStatus = serde_json::from_str(r#"{"node_id":"node-1","upgrade":{"state":"holding","target":"1.1.0"}}"#).unwrap();
//! assert_eq!(s.upgrade.state, UpgradeState::Holding);
//! assert!(!s.confirmed);
//! ```

pub mod boundary;
pub mod hostos;
pub mod orchestrator;
pub mod replica;

use serde::de::DeserializeOwned;
use std::io::Read;
use std::time::Duration;

/// Status documents are small; anything larger is not one.
pub const MAX_STATUS_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url}: not a status document: {message}")]
    Malformed { url: String, message: String },
}

/// GET a status document and parse it, within `timeout`.
pub fn fetch<T: DeserializeOwned>(url: &str, timeout: Duration) -> Result<T, FetchError> {
    let unreachable = |message: String| FetchError::Unreachable {
        url: url.to_string(),
        message,
    };
    let resp = ureq::AgentBuilder::new()
        .timeout(timeout)
        .build()
        .get(url)
        .call()
        .map_err(|e| unreachable(e.to_string()))?;
    let mut body = Vec::new();
    resp.into_reader()
        .take(MAX_STATUS_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| unreachable(e.to_string()))?;
    if body.len() as u64 > MAX_STATUS_BYTES {
        return Err(FetchError::Malformed {
            url: url.to_string(),
            message: format!("larger than {MAX_STATUS_BYTES} bytes"),
        });
    }
    serde_json::from_slice(&body).map_err(|e| FetchError::Malformed {
        url: url.to_string(),
        message: e.to_string(),
    })
}
