//! The icos registry server.
//!
//! [`Registry`] keeps the change log and proposals in a redb file ([`store`]), the current
//! registry in memory (replayed and re-verified from the genesis at start), and runs the
//! governance lifecycle: a proposal signed by a neuron is validated against the registry and
//! stored; each signed vote is checked and counted; when yes-votes exceed half of all voting
//! power the proposal is executed at once, in the same transaction that records the vote,
//! by appending a change that carries the proposal and its votes. Node registrations signed
//! by an operator within its allowance are appended without a vote. Nothing is appended that
//! `registry_model::change::verify_and_apply` would not accept.
//!
//! [`http::router`] serves it over HTTP; the same paths can be exported as static files
//! ([`Registry::export`]) for any web server or mirror: clients verify everything.
//!
//! ```no_run
//! let reg = registry_server::Registry::open(std::path::Path::new("data"), std::path::Path::new("data/online.key")).unwrap();
//! println!("head {}", reg.head().0);
//! ```

pub mod http;
pub mod localnet;
pub mod online_keys;
pub mod store;

use online_keys::OnlineKeys;
use registry_model::api::ProposalSummary;
use registry_model::change::{self, canonical, verify_and_apply};
use registry_model::{
    Change, Evidence, Freshness, Genesis, ModelError, SignedFreshness, SignedProposal,
    SignedRegistration, SignedVote,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use store::{ProposalRecord, ProposalStatus, Store};

pub use registry_model::api::SEGMENT;
pub const DB_FILE: &str = "registry.redb";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("online key: {0}")]
    OnlineKey(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("unknown proposal {0}")]
    UnknownProposal(u64),
    #[error("proposal {id} is already decided ({status})")]
    Decided { id: u64, status: String },
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
}

impl ServerError {
    /// HTTP status for the error (4xx: the request was wrong and nothing was stored).
    pub fn status(&self) -> u16 {
        match self {
            ServerError::Model(ModelError::BadSignature(_)) => 403,
            ServerError::Model(ModelError::DuplicateVote(_)) => 409,
            ServerError::Model(_) => 400,
            ServerError::Decided { .. } | ServerError::Conflict(_) => 409,
            ServerError::UnknownProposal(_) | ServerError::NotFound(_) => 404,
            ServerError::BadRequest(_) => 400,
            ServerError::Storage(_) => 500,
            ServerError::OnlineKey(_) | ServerError::Busy(_) => 503,
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Head {
    registry: registry_model::Registry,
    version: u64,
    hash: String,
    network: String,
}

/// Open proposals one neuron may have at a time (a neuron key cannot fill the store).
pub const MAX_OPEN_PER_NEURON: usize = 16;
/// Historical snapshots computed at the same time, at most.
pub const MAX_REPLAYS: usize = 2;

/// A registry served from a data folder.
pub struct Registry {
    store: Store,
    head: Mutex<Head>,
    online_keys: OnlineKeys,
    replays: AtomicUsize,
}

struct ReplayGuard<'a>(&'a AtomicUsize);

impl Drop for ReplayGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Registry {
    /// Create a registry in `data` from a genesis file.
    pub fn init(data: &Path, genesis: &Genesis) -> Result<Change, ServerError> {
        genesis.registry()?;
        std::fs::create_dir_all(data)
            .map_err(|e| ServerError::Storage(format!("{}: {e}", data.display())))?;
        let g = Change::genesis(genesis.clone(), now());
        Store::create(&data.join(DB_FILE), &canonical(&g))?;
        Ok(g)
    }

    /// Open a registry; the whole log is verified again from the genesis. `online_keys` is
    /// a key file or a folder of key files ([`OnlineKeys`]); it must hold the key the
    /// registry names now.
    pub fn open(data: &Path, online_keys: &Path) -> Result<Registry, ServerError> {
        let store = Store::open(&data.join(DB_FILE))?;
        let online_keys = OnlineKeys::load(online_keys)?;
        let head_version = store.head_version()?;
        let (registry, hash, network) = replay(&store, head_version)?;
        let r = Registry {
            store,
            head: Mutex::new(Head {
                registry,
                version: head_version,
                hash,
                network,
            }),
            online_keys,
            replays: AtomicUsize::new(0),
        };
        r.freshness()?;
        Ok(r)
    }

    /// Head version and hash.
    pub fn head(&self) -> (u64, String) {
        let h = self.head.lock().expect("head lock");
        (h.version, h.hash.clone())
    }

    pub fn registry(&self) -> registry_model::Registry {
        self.head.lock().expect("head lock").registry.clone()
    }

    /// A fresh freshness statement, signed with the online key the registry names now.
    pub fn freshness(&self) -> Result<SignedFreshness, ServerError> {
        let h = self.head.lock().expect("head lock");
        let settings = h
            .registry
            .settings
            .as_ref()
            .ok_or_else(|| ServerError::Storage("the registry has no settings".into()))?;
        let key = self.online_keys.get(&settings.online_key)?;
        let t = now();
        Ok(SignedFreshness::sign(
            Freshness {
                network: h.network.clone(),
                head_version: h.version,
                head_hash: h.hash.clone(),
                issued_at: t,
                expires_at: t + settings.freshness_secs,
            },
            &key,
        ))
    }

    /// A proposal body on top of the current head (for local proposers: tests, benchmarks).
    pub fn new_proposal(
        &self,
        proposer: u64,
        title: &str,
        action: registry_model::Action,
    ) -> Result<registry_model::ProposalBody, ServerError> {
        let h = self.head.lock().expect("head lock");
        Ok(registry_model::ProposalBody::new(
            &h.registry,
            h.version,
            proposer,
            title.to_string(),
            action,
            chain_time(&h),
        )?)
    }

    /// A registration request for this registry's network, valid from now.
    pub fn new_registration(
        &self,
        operator: &str,
        node_public_key: String,
        ipv6: String,
        http_endpoint: String,
    ) -> Result<registry_model::Registration, ServerError> {
        let h = self.head.lock().expect("head lock");
        Ok(registry_model::Registration::new(
            &h.registry,
            operator.to_string(),
            node_public_key,
            ipv6,
            http_endpoint,
            chain_time(&h),
        )?)
    }

    /// Canonical changes of segment `k` as a JSON array.
    pub fn segment_json(&self, k: u64) -> Result<Vec<u8>, ServerError> {
        let from = k * SEGMENT + 1;
        let head = self.head().0;
        if from > head {
            return Err(ServerError::NotFound(format!(
                "segment {k} (head is version {head})"
            )));
        }
        let changes = self.store.changes(from, (from + SEGMENT - 1).min(head))?;
        Ok(join_array(&changes))
    }

    /// Canonical changes after `since` (at most `limit`, and at most a segment's worth) as a
    /// JSON array.
    pub fn changes_json(&self, since: u64, limit: u64) -> Result<Vec<u8>, ServerError> {
        let head = self.head().0;
        let to = since.saturating_add(limit.clamp(1, SEGMENT)).min(head);
        if since >= to {
            return Ok(b"[]".to_vec());
        }
        Ok(join_array(&self.store.changes(since + 1, to)?))
    }

    /// The registry at version `at` (replayed from the genesis).
    pub fn snapshot(&self, at: u64) -> Result<registry_model::Registry, ServerError> {
        let (head, _) = self.head();
        if at == 0 || at > head {
            return Err(ServerError::NotFound(format!(
                "version {at} (head is {head})"
            )));
        }
        if at == head {
            return Ok(self.registry());
        }
        // Replaying from the genesis costs the whole log's signature checks: a client asking
        // for many old versions at once must not take every core.
        let running = self.replays.fetch_add(1, Ordering::SeqCst);
        let _done = ReplayGuard(&self.replays);
        if running >= MAX_REPLAYS {
            return Err(ServerError::Busy(format!(
                "{MAX_REPLAYS} historical snapshots are being computed; try again shortly"
            )));
        }
        Ok(replay(&self.store, at)?.0)
    }

    fn expire(&self, r: &mut ProposalRecord) -> bool {
        if r.status == ProposalStatus::Open && now() > r.deadline {
            r.status = ProposalStatus::Expired;
            return true;
        }
        false
    }

    pub fn proposals(&self) -> Result<Vec<ProposalSummary>, ServerError> {
        let mut out = Vec::new();
        for mut r in self.store.proposals()? {
            if self.expire(&mut r) {
                self.store.commit(&[&r], None)?;
            }
            out.push(ProposalSummary::from(&r));
        }
        Ok(out)
    }

    pub fn proposal(&self, id: u64) -> Result<ProposalRecord, ServerError> {
        let mut r = self
            .store
            .proposal(id)?
            .ok_or(ServerError::UnknownProposal(id))?;
        if self.expire(&mut r) {
            self.store.commit(&[&r], None)?;
        }
        Ok(r)
    }

    /// Accept a proposal: the proposer must be a neuron whose signature checks, and the
    /// action must apply to the current registry. The proposer's signature is its yes vote,
    /// so a proposer with a majority of the voting power adopts it at once.
    pub fn submit_proposal(&self, p: SignedProposal) -> Result<ProposalRecord, ServerError> {
        let mut h = self.head.lock().expect("head lock");
        if p.body.title.len() > 256 {
            return Err(ServerError::BadRequest(
                "title longer than 256 characters".into(),
            ));
        }
        check_window(
            &h,
            "proposal",
            &p.body.network,
            p.body.expires_at,
            h.registry.proposal_deadline_secs(),
        )?;
        if p.body.base_version > h.version {
            return Err(ServerError::BadRequest(format!(
                "the proposal is made on top of version {}, but the head is version {}",
                p.body.base_version, h.version
            )));
        }
        let tally = change::tally(&h.registry, &p, &[])?;
        h.registry.validate(&p.body.action)?;
        let hash = p.body.hash_hex();
        let existing = self.store.proposals()?;
        if existing.iter().any(|r| r.proposal.body.hash_hex() == hash) {
            return Err(ServerError::Conflict(
                "an identical proposal (same hash) was already submitted".into(),
            ));
        }
        let t = now();
        let open = existing
            .iter()
            .filter(|r| {
                r.proposal.body.proposer == p.body.proposer
                    && r.status == ProposalStatus::Open
                    && r.deadline >= t
            })
            .count();
        if open >= MAX_OPEN_PER_NEURON {
            return Err(ServerError::Conflict(format!(
                "neuron {} already has {open} open proposals (at most {MAX_OPEN_PER_NEURON}); wait for them to be decided",
                p.body.proposer
            )));
        }
        let id = self.store.next_proposal_id()?;
        // The proposal's own window is its deadline: the chain refuses it after that.
        let deadline = p.body.expires_at;
        let mut r = ProposalRecord {
            id,
            proposal: p,
            votes: Vec::new(),
            submitted_at: now(),
            deadline,
            status: ProposalStatus::Open,
            tally,
        };
        self.decide_and_commit(&mut h, &mut r)?;
        Ok(r)
    }

    /// Count a vote; execute the proposal when it reaches a majority.
    pub fn vote(&self, id: u64, v: SignedVote) -> Result<ProposalRecord, ServerError> {
        let mut h = self.head.lock().expect("head lock");
        let mut r = self
            .store
            .proposal(id)?
            .ok_or(ServerError::UnknownProposal(id))?;
        self.expire(&mut r);
        if r.status != ProposalStatus::Open {
            return Err(ServerError::Decided {
                id,
                status: r.status.to_string(),
            });
        }
        let mut votes = r.votes.clone();
        votes.push(v);
        // Checks the new vote's neuron and signature (and the earlier ones again).
        r.tally = change::tally(&h.registry, &r.proposal, &votes)?;
        r.votes = votes;
        self.decide_and_commit(&mut h, &mut r)?;
        Ok(r)
    }

    /// Store a proposal record after its tally changed; if adopted, execute it by appending
    /// its change in the same transaction.
    fn decide_and_commit(&self, h: &mut Head, r: &mut ProposalRecord) -> Result<(), ServerError> {
        if r.tally.adopted() {
            let c = Change {
                version: h.version + 1,
                prev_hash: h.hash.clone(),
                timestamp: chain_time(h),
                evidence: Evidence::Proposal {
                    id: r.id,
                    proposal: r.proposal.clone(),
                    votes: r.votes.clone(),
                },
            };
            match verify_and_apply(Some((&h.registry, &h.hash, h.version)), &c) {
                Ok(next) => {
                    r.status = ProposalStatus::Adopted { version: c.version };
                    self.store.commit(&[r], Some((c.version, &canonical(&c))))?;
                    h.registry = next;
                    h.version = c.version;
                    h.hash = c.hash();
                }
                Err(e) => {
                    r.status = ProposalStatus::Failed {
                        reason: e.to_string(),
                    };
                    self.store.commit(&[r], None)?;
                }
            }
        } else {
            if r.tally.rejected() {
                r.status = ProposalStatus::Rejected;
            }
            self.store.commit(&[r], None)?;
        }
        Ok(())
    }

    /// Add a node on its operator's signature (within the operator's allowance).
    pub fn register(&self, req: SignedRegistration) -> Result<(String, u64), ServerError> {
        let mut h = self.head.lock().expect("head lock");
        let r = &req.registration;
        check_window(
            &h,
            "registration",
            &r.network,
            r.expires_at,
            registry_model::change::REGISTRATION_VALID_SECS,
        )?;
        let c = Change {
            version: h.version + 1,
            prev_hash: h.hash.clone(),
            timestamp: chain_time(&h),
            evidence: Evidence::Registration {
                request: req.clone(),
            },
        };
        let next = verify_and_apply(Some((&h.registry, &h.hash, h.version)), &c)?;
        self.store.commit(&[], Some((c.version, &canonical(&c))))?;
        h.registry = next;
        h.version = c.version;
        h.hash = c.hash();
        Ok((
            registry_model::node_id(&req.registration.node_public_key),
            c.version,
        ))
    }

    /// Write what the server publishes as static files under `out` (for any web server).
    pub fn export(&self, out: &Path) -> Result<Vec<PathBuf>, ServerError> {
        let seg_dir = out.join("v1/segments");
        std::fs::create_dir_all(&seg_dir)
            .map_err(|e| ServerError::Storage(format!("{}: {e}", seg_dir.display())))?;
        let (head, _) = self.head();
        let mut written = Vec::new();
        let mut k = 0;
        while k * SEGMENT < head {
            let p = seg_dir.join(format!("{k}.json"));
            write_atomic(&p, &self.segment_json(k)?)?;
            written.push(p);
            k += 1;
        }
        let p = out.join("v1/head.json");
        write_atomic(
            &p,
            &serde_json::to_vec(&self.freshness()?).expect("serializes"),
        )?;
        written.push(p);
        Ok(written)
    }
}

/// The timestamp of the next change: the server's clock, but never before the change it
/// follows (the chain refuses changes that go back in time; a clock stepped back must not
/// stop the registry).
fn chain_time(h: &Head) -> u64 {
    now().max(h.registry.time)
}

/// Refuse, with a message the sender can act on, a decision for another network or with a
/// window that is closed or longer than `longest` allows (the chain would refuse it later).
fn check_window(
    h: &Head,
    what: &str,
    network: &str,
    expires_at: u64,
    longest: u64,
) -> Result<(), ServerError> {
    if network != h.registry.genesis_hash {
        return Err(ServerError::BadRequest(format!(
            "the {what} is for network {network}; this registry's genesis is {}",
            h.registry.genesis_hash
        )));
    }
    let t = chain_time(h);
    if expires_at < t {
        return Err(ServerError::BadRequest(format!(
            "the {what} expired at {expires_at}; it is now {t}"
        )));
    }
    if expires_at > t + longest + registry_model::change::CLOCK_SKEW_SECS {
        return Err(ServerError::BadRequest(format!(
            "the {what} stays valid until {expires_at}, more than {longest} s from now ({t}); is the signer's clock ahead?"
        )));
    }
    Ok(())
}

/// Replay and verify the stored log up to `to`: in place, signatures checked in parallel
/// batches. Returns the registry, the head hash and the network name.
fn replay(
    store: &Store,
    to: u64,
) -> Result<(registry_model::Registry, String, String), ServerError> {
    let mut reg = registry_model::Registry::default();
    let mut hash = change::ZERO_HASH.to_string();
    let mut network = String::new();
    let mut version = 0u64;
    let mut sigs = Vec::new();
    let mut from = 1;
    while from <= to {
        let end = (from + 1023).min(to);
        for bytes in store.changes(from, end)? {
            let c: Change = serde_json::from_slice(&bytes)
                .map_err(|e| ServerError::Storage(format!("change {}: {e}", version + 1)))?;
            if let Evidence::Genesis { genesis } = &c.evidence {
                network = genesis.network.clone();
            }
            let prev = (version > 0).then_some((hash.as_str(), version));
            change::apply_change(&mut reg, prev, &c, &mut sigs).map_err(|e| {
                ServerError::Storage(format!("stored change {} does not verify: {e}", c.version))
            })?;
            hash = c.hash();
            version = c.version;
        }
        registry_model::keys::verify_parallel(&sigs).map_err(|e| {
            ServerError::Storage(format!(
                "stored change {} does not verify: {}",
                e.version, e.error
            ))
        })?;
        sigs.clear();
        from = end + 1;
    }
    if version == 0 {
        return Err(ServerError::Storage("the store has no genesis".into()));
    }
    Ok((reg, hash, network))
}

fn join_array(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(it);
    }
    out.push(b']');
    out
}

fn write_atomic(p: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, p))
        .map_err(|e| ServerError::Storage(format!("{}: {e}", p.display())))
}
