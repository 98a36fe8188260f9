//! Installing a version governance elected: from its download URLs in the order the caller
//! gives (a node's mirror order), the next URL on any error (unreachable, truncated, not the
//! elected SHA-256 — the install checks it before anything can boot), then activated with
//! boot tries. Registry types stay out: callers pass URLs and the digest.

use crate::{source, Engine, EngineError, InstallReport};
use sha256_hex::Sha256Hex;

#[derive(Debug, thiserror::Error)]
pub enum ElectedError {
    #[error("elected version {version} has no download URLs")]
    NoUrls { version: String },
    #[error("no download of {version} installed: {}", list(.attempts))]
    AllFailed {
        version: String,
        /// Each URL and what went wrong with it.
        attempts: Vec<(String, String)>,
    },
    #[error("{version} installed but could not be activated: {error}")]
    Activate {
        version: String,
        error: Box<EngineError>,
    },
}

fn list(attempts: &[(String, String)]) -> String {
    attempts
        .iter()
        .map(|(u, e)| format!("{u}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Install `version` from the first of `urls` that gives the package with `sha256`, and
/// make it boot next with `tries` attempts.
pub fn install_elected(
    engine: &mut Engine,
    version: &str,
    urls: &[&str],
    sha256: &Sha256Hex,
    tries: u32,
) -> Result<InstallReport, ElectedError> {
    let report = fetch_elected(engine, version, urls, sha256)?;
    activate(engine, version, tries)?;
    Ok(report)
}

/// Install `version` into the inactive slot from the first of `urls` that gives the package
/// with `sha256`, without making it boot: a node in a rolling upgrade fetches at once and
/// activates when its turn comes ([`activate`]).
pub fn fetch_elected(
    engine: &mut Engine,
    version: &str,
    urls: &[&str],
    sha256: &Sha256Hex,
) -> Result<InstallReport, ElectedError> {
    if urls.is_empty() {
        return Err(ElectedError::NoUrls {
            version: version.to_string(),
        });
    }
    let mut attempts = Vec::new();
    for url in urls {
        let result = source::open(url)
            .map_err(|e| e.to_string())
            .and_then(|mut src| {
                engine
                    .install(&mut src.reader, sha256)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(report) => return Ok(report),
            Err(e) => {
                tracing::warn!("{url}: {e}");
                attempts.push((url.to_string(), e));
            }
        }
    }
    Err(ElectedError::AllFailed {
        version: version.to_string(),
        attempts,
    })
}

/// Make the installed `version` boot next with `tries` attempts.
pub fn activate(engine: &mut Engine, version: &str, tries: u32) -> Result<(), ElectedError> {
    engine
        .activate(tries)
        .map(|_| ())
        .map_err(|error| ElectedError::Activate {
            version: version.to_string(),
            error: Box::new(error),
        })
}

/// Whether the inactive slot holds `version` from the package with `sha256`, installed and
/// not activated yet (fetched earlier, waiting for its turn).
pub fn staged(engine: &Engine, version: &str, sha256: &Sha256Hex) -> bool {
    let (Ok(state), Ok(current)) = (engine.read_state(), engine.current_slot()) else {
        return false;
    };
    state.installed.is_some_and(|i| {
        i.slot != current && i.version == version && i.package_sha256 == sha256.to_string()
    })
}
