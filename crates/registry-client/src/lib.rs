//! Registry client: sync, verify, cache, answer.
//!
//! [`Client::sync`] asks a server or mirror for its signed freshness statement
//! (`v1/head.json`), downloads only the segments it lacks (`v1/segments/<k>.json`), and
//! applies each change with `registry_model::change::verify_and_apply` on top of its own
//! verified state — so a server can withhold, but never forge or rewrite, history. What it
//! refuses, with the TUF attack it corresponds to:
//!
//! | refused | attack |
//! |---|---|
//! | a change without a majority of valid votes, or a registration not signed by its operator | arbitrary installation, key compromise below the threshold |
//! | a head older than what the client already verified, or a different chain at the same version | rollback |
//! | a freshness statement that expired, or not signed by the registry's online key | indefinite freeze |
//! | a freshness statement naming a head hash the served changes do not produce, a first change that is not the pinned genesis | mix-and-match, wrong network |
//! | answers larger than the limits | endless data |
//! | a head the mirror cannot back with changes | fast-forward |
//! | a decision already executed, made for another network, placed before its base version or after its window (`registry_model::change::apply_change`) | replay by the online-key holder |
//! | a freshness statement valid longer than the registry's `freshness_secs`, or issued in the future | freeze extended by the online-key holder |
//! | a new change dated before the head this client last verified, or after its clock | a decision held back and released later |
//!
//! A failing mirror is skipped and the next one tried (malicious mirrors). Nothing is
//! applied unless the whole sync verifies; the verified state is cached on disk (written to
//! a temporary file and renamed) and survives restarts.
//!
//! ```no_run
//! use registry_client::{Client, ClientConfig};
//! let mut c = Client::open(ClientConfig::new(vec!["http://127.0.0.1:8180".into()], "<genesis hash>", "/var/lib/icos/registry".into())).unwrap();
//! c.sync().unwrap();
//! println!("GuestOS for node-1: {:?}", c.registry().guestos_for_node("node-1"));
//! ```

pub mod api;

use registry_model::change::{apply_change, MAX_CHANGE_BYTES};
use registry_model::keys::{verify_parallel, SigCheck};
use registry_model::{Change, ModelError, Registry, SignedFreshness};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

pub use registry_model::api::SEGMENT;
pub const MAX_HEAD_BYTES: u64 = 64 * 1024;
pub const MAX_SEGMENT_BYTES: u64 = SEGMENT * MAX_CHANGE_BYTES as u64;
const STATE_FILE: &str = "state.json";
/// Changes verified since the last snapshot, one canonical JSON per line.
const TAIL_FILE: &str = "tail.jsonl";
/// Rewrite the snapshot once the tail holds this many changes.
const SNAPSHOT_EVERY: usize = 256;
/// Verify deferred signatures at least this often (bounds memory on long syncs).
const VERIFY_EVERY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{url}: answer larger than {limit} bytes; refusing to read further")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: {message}")]
    Malformed { url: String, message: String },
    // The model error is part of the message, not a `source`: a report printing the
    // chain would say it twice.
    #[error("{url}: change {version} does not verify: {error}")]
    Invalid {
        url: String,
        version: u64,
        error: ModelError,
    },
    #[error("{url}: the first change is not the pinned genesis (hash {actual}, pinned {pinned})")]
    WrongGenesis {
        url: String,
        actual: String,
        pinned: String,
    },
    #[error(
        "{url}: offers version {served}, older than the verified version {have} (rollback refused)"
    )]
    Rollback { url: String, served: u64, have: u64 },
    #[error("{url}: version {version} has hash {served}, but the verified chain has {have} (a different history)")]
    Fork {
        url: String,
        version: u64,
        served: String,
        have: String,
    },
    #[error("{url}: claims head version {claimed} but serves changes only up to {served}")]
    Incomplete {
        url: String,
        claimed: u64,
        served: u64,
    },
    #[error("{url}: {error}")]
    Freshness { url: String, error: ModelError },
    #[error("{url}: change {version} is dated {timestamp}, {problem}")]
    Time {
        url: String,
        version: u64,
        timestamp: u64,
        problem: String,
    },
    #[error("no registry mirror could be used: {0}")]
    AllFailed(String),
    #[error("no neuron in the registry has the public key {public_key}")]
    NotANeuron { public_key: String },
    #[error(transparent)]
    Model(ModelError),
    #[error("registry cache {path}: {message}")]
    Cache { path: String, message: String },
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Servers or mirrors, tried in order.
    pub urls: Vec<String>,
    /// Hash of the genesis change this client trusts.
    pub genesis_hash: String,
    pub cache_dir: PathBuf,
    pub timeout: Duration,
    /// Clock skew tolerated when checking freshness expiry.
    pub skew: Duration,
}

impl ClientConfig {
    pub fn new(urls: Vec<String>, genesis_hash: &str, cache_dir: PathBuf) -> Self {
        ClientConfig {
            urls,
            genesis_hash: genesis_hash.to_string(),
            cache_dir,
            timeout: Duration::from_secs(10),
            skew: Duration::from_secs(30),
        }
    }
}

/// What the client has verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub genesis_hash: String,
    pub version: u64,
    pub hash: String,
    pub registry: Registry,
    pub freshness: Option<SignedFreshness>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub mirror: String,
    pub from_version: u64,
    pub to_version: u64,
    pub fresh_until: u64,
}

pub struct Client {
    cfg: ClientConfig,
    agent: ureq::Agent,
    state: Option<Verified>,
    tail_len: usize,
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A change new to a client must be dated between the client's floor (see
/// `Client::time_floor`) and its clock (plus skew).
fn check_time(url: &str, c: &Change, floor: u64, ceiling: u64) -> Result<(), ClientError> {
    let problem = if c.timestamp < floor {
        format!("before this client last saw the head ({floor}): back-dated")
    } else if c.timestamp > ceiling {
        format!("after this client's clock ({ceiling}): from the future")
    } else {
        return Ok(());
    };
    Err(ClientError::Time {
        url: url.to_string(),
        version: c.version,
        timestamp: c.timestamp,
        problem,
    })
}

impl Client {
    /// Create a client, loading its cache if there is one for the same genesis.
    pub fn open(cfg: ClientConfig) -> Result<Client, ClientError> {
        let agent = ureq::AgentBuilder::new().timeout(cfg.timeout).build();
        let mut c = Client {
            cfg,
            agent,
            state: None,
            tail_len: 0,
        };
        c.state = c.load()?;
        Ok(c)
    }

    fn cache_err(&self, message: String) -> ClientError {
        ClientError::Cache {
            path: self.cfg.cache_dir.display().to_string(),
            message,
        }
    }

    /// The cached snapshot plus the changes verified after it.
    fn load(&mut self) -> Result<Option<Verified>, ClientError> {
        let path = self.cfg.cache_dir.join(STATE_FILE);
        let mut v: Verified = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                self.cache_err(format!(
                    "{STATE_FILE} unreadable ({e}); delete the cache to start over"
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.cache_err(e.to_string())),
        };
        if v.genesis_hash != self.cfg.genesis_hash {
            return Err(self.cache_err(format!(
                "belongs to genesis {}, not the pinned {}",
                v.genesis_hash, self.cfg.genesis_hash
            )));
        }
        let tail = std::fs::read_to_string(self.cfg.cache_dir.join(TAIL_FILE)).unwrap_or_default();
        let mut sigs = Vec::new();
        self.tail_len = 0;
        for line in tail.lines().filter(|l| !l.trim().is_empty()) {
            // A line cut short by a crash while appending is simply not part of the cache.
            let Ok(c) = serde_json::from_str::<Change>(line) else {
                break;
            };
            if c.version <= v.version {
                continue;
            }
            apply_change(&mut v.registry, Some((&v.hash, v.version)), &c, &mut sigs).map_err(
                |e| {
                    self.cache_err(format!(
                        "{TAIL_FILE}: change {} does not verify: {e}",
                        c.version
                    ))
                },
            )?;
            v.hash = c.hash();
            v.version = c.version;
            self.tail_len += 1;
        }
        verify_parallel(&sigs).map_err(|e| {
            self.cache_err(format!(
                "{TAIL_FILE}: change {} does not verify: {}",
                e.version, e.error
            ))
        })?;
        Ok(Some(v))
    }

    pub fn verified(&self) -> Option<&Verified> {
        self.state.as_ref()
    }

    /// The verified registry (empty before the first successful sync).
    pub fn registry(&self) -> &Registry {
        static EMPTY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
        self.state
            .as_ref()
            .map(|s| &s.registry)
            .unwrap_or_else(|| EMPTY.get_or_init(Registry::default))
    }

    pub fn version(&self) -> u64 {
        self.state.as_ref().map(|s| s.version).unwrap_or(0)
    }

    /// Sync from the first mirror that gives a verifiable, fresh answer.
    pub fn sync(&mut self) -> Result<SyncReport, ClientError> {
        let mut errors = Vec::new();
        for url in self.cfg.urls.clone() {
            match self.sync_from(&url) {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::warn!("registry mirror {url}: {e}");
                    errors.push(e);
                }
            }
        }
        match errors.len() {
            0 => Err(ClientError::AllFailed("no mirrors configured".into())),
            1 => Err(errors.pop().expect("one")),
            _ => Err(ClientError::AllFailed(
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    fn get(&self, url: &str, limit: u64) -> Result<Vec<u8>, ClientError> {
        let resp = self.agent.get(url).call().map_err(|e| ClientError::Fetch {
            url: url.to_string(),
            message: match e {
                ureq::Error::Status(code, r) => format!("HTTP {code} {}", r.status_text()),
                ureq::Error::Transport(t) => t.to_string(),
            },
        })?;
        if let Some(len) = resp
            .header("Content-Length")
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > limit {
                return Err(ClientError::TooLarge {
                    url: url.to_string(),
                    limit,
                });
            }
        }
        let mut buf = Vec::new();
        resp.into_reader()
            .take(limit + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ClientError::Fetch {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        if buf.len() as u64 > limit {
            return Err(ClientError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        Ok(buf)
    }

    /// Sync from one server or mirror.
    pub fn sync_from(&mut self, base: &str) -> Result<SyncReport, ClientError> {
        let base = base.trim_end_matches('/');
        let head_url = format!("{base}/v1/head.json");
        let head: SignedFreshness = serde_json::from_slice(&self.get(&head_url, MAX_HEAD_BYTES)?)
            .map_err(|e| ClientError::Malformed {
            url: head_url.clone(),
            message: format!("not a freshness statement: {e}"),
        })?;
        let claimed = head.freshness.head_version;
        let from_version = self.version();
        if claimed < from_version {
            return Err(ClientError::Rollback {
                url: head_url,
                served: claimed,
                have: from_version,
            });
        }
        // Apply in place with signature checks deferred and batched; on any failure the
        // state is reloaded from the cache, so nothing is kept unless the whole sync verifies.
        let result = self.advance(base, &head_url, claimed, &head);
        match result {
            Ok(new_changes) => {
                let fresh_until = head.freshness.expires_at;
                let st = self.state.as_mut().expect("advanced");
                st.freshness = Some(head);
                self.persist(&new_changes)?;
                Ok(SyncReport {
                    mirror: base.to_string(),
                    from_version,
                    to_version: self.version(),
                    fresh_until,
                })
            }
            Err(e) => {
                self.state = self.load()?;
                Err(e)
            }
        }
    }

    fn advance(
        &mut self,
        base: &str,
        head_url: &str,
        claimed: u64,
        head: &SignedFreshness,
    ) -> Result<Vec<Change>, ClientError> {
        let mut sigs: Vec<SigCheck> = Vec::new();
        let mut new_changes = Vec::new();
        let flush = |sigs: &mut Vec<SigCheck>, url: &str| -> Result<(), ClientError> {
            verify_parallel(sigs).map_err(|e| ClientError::Invalid {
                url: url.to_string(),
                version: e.version,
                error: e.error,
            })?;
            sigs.clear();
            Ok(())
        };
        let time_floor = self.time_floor();
        let time_ceiling = now().saturating_add(self.cfg.skew.as_secs());
        while self.version() < claimed {
            let k = self.version() / SEGMENT;
            let url = format!("{base}/v1/segments/{k}.json");
            let changes: Vec<Change> = serde_json::from_slice(&self.get(&url, MAX_SEGMENT_BYTES)?)
                .map_err(|e| ClientError::Malformed {
                    url: url.clone(),
                    message: format!("not a list of changes: {e}"),
                })?;
            let mut progressed = false;
            for c in changes {
                let cur = self.version();
                if c.version <= cur {
                    // Already verified: the mirror's history must be ours.
                    if c.version == cur {
                        let mine = self.state.as_ref().expect("cur > 0").hash.clone();
                        let theirs = c.hash();
                        if theirs != mine {
                            return Err(ClientError::Fork {
                                url,
                                version: cur,
                                served: theirs,
                                have: mine,
                            });
                        }
                    }
                    continue;
                }
                if c.version > claimed {
                    break;
                }
                let hash = c.hash();
                let invalid = |error| ClientError::Invalid {
                    url: url.clone(),
                    version: c.version,
                    error,
                };
                check_time(&url, &c, time_floor, time_ceiling)?;
                match self.state.as_mut() {
                    None => {
                        if hash != self.cfg.genesis_hash {
                            return Err(ClientError::WrongGenesis {
                                url,
                                actual: hash,
                                pinned: self.cfg.genesis_hash.clone(),
                            });
                        }
                        let mut reg = Registry::default();
                        apply_change(&mut reg, None, &c, &mut sigs).map_err(invalid)?;
                        self.state = Some(Verified {
                            genesis_hash: self.cfg.genesis_hash.clone(),
                            version: c.version,
                            hash,
                            registry: reg,
                            freshness: None,
                        });
                    }
                    Some(s) => {
                        apply_change(&mut s.registry, Some((&s.hash, s.version)), &c, &mut sigs)
                            .map_err(invalid)?;
                        s.version = c.version;
                        s.hash = hash;
                    }
                }
                new_changes.push(c);
                progressed = true;
                if sigs.len() >= VERIFY_EVERY {
                    flush(&mut sigs, &url)?;
                }
            }
            if !progressed {
                return Err(ClientError::Incomplete {
                    url,
                    claimed,
                    served: self.version(),
                });
            }
        }
        flush(&mut sigs, head_url)?;
        let st = self.state.as_ref().ok_or_else(|| ClientError::Incomplete {
            url: head_url.to_string(),
            claimed,
            served: 0,
        })?;
        if st.hash != head.freshness.head_hash {
            return Err(ClientError::Fork {
                url: head_url.to_string(),
                version: st.version,
                served: head.freshness.head_hash.clone(),
                have: st.hash.clone(),
            });
        }
        head.verify(&st.registry, now(), self.cfg.skew.as_secs())
            .map_err(|error| ClientError::Freshness {
                url: head_url.to_string(),
                error,
            })?;
        Ok(new_changes)
    }

    /// The earliest time a change new to this client may carry: it was appended after the
    /// freshness statement this client verified last was issued (less the clock skew), so
    /// a decision held back by the server and dated in the past is noticed.
    fn time_floor(&self) -> u64 {
        self.state
            .as_ref()
            .and_then(|s| s.freshness.as_ref())
            .map(|f| {
                f.freshness
                    .issued_at
                    .saturating_sub(self.cfg.skew.as_secs())
            })
            .unwrap_or(0)
    }

    /// Append the new changes to the tail (durably); rewrite the snapshot now and then.
    fn persist(&mut self, new_changes: &[Change]) -> Result<(), ClientError> {
        use std::io::Write;
        let dir = self.cfg.cache_dir.clone();
        let err = |e: std::io::Error| ClientError::Cache {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(err)?;
        let first = !dir.join(STATE_FILE).exists();
        if first || self.tail_len + new_changes.len() > SNAPSHOT_EVERY {
            let v = self.state.clone().expect("synced");
            self.save(&v)?;
            std::fs::write(dir.join(TAIL_FILE), b"").map_err(err)?;
            self.tail_len = 0;
            return Ok(());
        }
        if new_changes.is_empty() {
            return Ok(());
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(TAIL_FILE))
            .map_err(err)?;
        let mut buf = Vec::new();
        for c in new_changes {
            buf.extend_from_slice(&registry_model::change::canonical(c));
            buf.push(b'\n');
        }
        f.write_all(&buf).map_err(err)?;
        f.sync_data().map_err(err)?;
        self.tail_len += new_changes.len();
        Ok(())
    }

    fn save(&self, v: &Verified) -> Result<(), ClientError> {
        let dir = &self.cfg.cache_dir;
        let err = |e: std::io::Error| ClientError::Cache {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec(v).expect("serializes");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, dir.join(STATE_FILE)).map_err(err)
    }
}
