//! The Internet Computer's public HTTP interface on one node.
//!
//! * [`Replica::call`]: an ingress call is authenticated (`ingress`), routed to its canister
//!   (or the management canister), inspected (`canister_inspect_message`), executed by
//!   `canister-runtime`, and its outcome recorded under `/request_status/<id>` in the state
//!   tree. A request id already recorded is never executed again.
//! * [`Replica::query`]: executed against the canister's current memory, nothing kept; the
//!   answer carries the certificate of the canister's certified data and is signed with the
//!   node's Ed25519 key, as agents check by default.
//! * [`Replica::read_state`]: a certificate (the subnet's BLS key, delegated from the
//!   network's root key) over the asked paths; request statuses only for their sender.
//!
//! * [`Replica::execute_batch`]: calls in an order and at a time fixed for the whole subnet;
//!   every node that executes the same batches reaches the same [`Replica::state_root`].
//!
//! A subnet of more than one node refuses calls sent to one node alone ([`Replica::call`]):
//! executed there, they would make the nodes' states diverge. Its calls go through batches
//! its log orders ([`ordered`], [`subnet`]). Queries and `read_state` answer from the state
//! there is.
//!
//! A replica opened on a state directory ([`Replica::open`]) takes a [`checkpoint`] after every
//! executed call, before the caller hears of it: an answered call is never lost to a power
//! cut, and a request id answered before a restart is not executed again after it.
//!
//! [`http::router`] puts the interface on `/api/v2`, `/api/v3` and `/api/v4`.

pub mod checkpoint;
pub mod compare;
pub mod health;
pub mod http;
pub mod local;
mod management;
pub mod node;
pub mod ordered;
mod query;
pub mod state;
pub mod subnet;
pub mod transfer;

use canister_runtime::{Context, Entry, Outcome, Runtime, Trap};
use certified_state::{BlsKey, Delegation, Path, StateTree};
use ic_principal::Principal;
use ingress::{Authenticated, EnvelopeContent};
pub use state::Reject;
use state::{Request, State, Status};
use std::sync::Mutex;

pub use query::{sign_answer, QueryAnswer};

/// Who this replica is and what it may do.
pub struct Config {
    pub subnet_id: Principal,
    /// The subnet's certification key (one node: the whole key).
    pub subnet_key: BlsKey,
    /// The root key's delegation of `subnet_key` (none: `subnet_key` is the root key).
    pub delegation: Option<Delegation>,
    /// The network's root public key (DER), served by `/api/v2/status`.
    pub root_key_der: Vec<u8>,
    pub node_id: Principal,
    pub node_key: ed25519_dalek::SigningKey,
    /// The subnet's canister ids, first and last index.
    pub canister_range: (u64, u64),
    /// Nodes in the subnet (more than one: a call is taken only through the subnet's log).
    pub subnet_size: usize,
    /// The Ed25519 public keys of the subnet's other nodes, certified next to this node's so
    /// an agent checks query answers signed by any of them.
    pub peer_node_keys: Vec<[u8; 32]>,
    pub runtime: canister_runtime::Limits,
    pub ingress: ingress::Limits,
}

/// Why a request got no interface-level answer (an HTTP error, not a reject).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
    /// Not now (the state could not be made durable); the same request may be sent again.
    #[error("{0}")]
    Unavailable(String),
}

impl From<ingress::IngressError> for RequestError {
    fn from(e: ingress::IngressError) -> RequestError {
        RequestError::BadRequest(e.to_string())
    }
}

/// How a call ended for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAnswer {
    /// Executed (now or before): the certificate of its request status, CBOR.
    Certified(Vec<u8>),
    /// Refused before execution; nothing recorded.
    NotExecuted(Reject),
}

/// One ingress message as a subnet orders it: the envelope as its sender signed it, and the
/// canister its URL named.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ingress {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub effective: Principal,
}

/// A call checked by [`Replica::check_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Its answer is known without ordering it (answered before, or refused).
    Answered(CallAnswer),
    /// To be ordered; checked at `time_ns` by this node's clock.
    Admitted { request_id: [u8; 32], time_ns: u64 },
}

/// Messages in the order every node of a subnet executes them, and the time they execute
/// at: chosen once, by whoever orders them, so no node's own clock enters the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    pub time_ns: u64,
    pub messages: Vec<Ingress>,
}

/// What a message of a batch came to: the same on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Executed {
    /// Executed, its outcome recorded under its request id.
    Recorded([u8; 32]),
    /// Its request id was recorded before: not executed again.
    Duplicate([u8; 32]),
    /// Refused before execution (routing, the canister's state, inspect_message).
    NotExecuted(Reject),
    /// No valid call at the batch's time (signature, expiry, envelope): nothing recorded.
    Invalid(String),
}

/// Whether a call runs on one node alone or in a batch every node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    OneNode,
    Replicated,
}

/// What [`Replica::run_call`] did.
enum Ran {
    Recorded,
    Duplicate,
    NotExecuted(Reject),
}

/// One node's replica: its configuration, runtime and state.
pub struct Replica {
    config: Config,
    runtime: Runtime,
    state: Mutex<State>,
    /// Where checkpoints go (none: the state lives in memory only). Locked after `state`.
    store: Option<Mutex<checkpoint::Store>>,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Why this replica stopped serving (its state is not its subnet's), if it did.
    stopped: Mutex<Option<String>>,
    /// Told to stop: still answering, but saying so on `/api/v2/status`.
    draining: std::sync::atomic::AtomicBool,
}

/// Why a replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the Wasm runtime: {0}")]
    Runtime(#[from] canister_runtime::RuntimeError),
    #[error("the state directory: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("the state directory: {0}")]
    Restore(#[from] state::RestoreError),
}

/// The system clock in nanoseconds since 1970.
pub fn system_time_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Replica {
    pub fn new(config: Config) -> Result<Replica, canister_runtime::RuntimeError> {
        Replica::with_clock(config, Box::new(system_time_nanos))
    }

    /// A replica reading time from `clock` (tests move time forward).
    pub fn with_clock(
        config: Config,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<Replica, canister_runtime::RuntimeError> {
        let runtime = Runtime::new(config.runtime.clone())?;
        let mut state = State::default();
        subnet_facts(&mut state.tree, &config);
        Ok(Replica {
            config,
            runtime,
            state: Mutex::new(state),
            store: None,
            clock,
            stopped: Mutex::new(None),
            draining: Default::default(),
        })
    }

    /// A replica keeping its state in `dir`: the newest sound checkpoint there is taken up,
    /// and what was found is returned to be reported.
    pub fn open(
        config: Config,
        dir: &std::path::Path,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<(Replica, checkpoint::Recovery), OpenError> {
        let mut replica = Replica::with_clock(config, clock)?;
        let (store, manifest, recovery) = checkpoint::Store::open(dir)?;
        if let Some(m) = manifest {
            let mut tree = StateTree::default();
            subnet_facts(&mut tree, &replica.config);
            let state = State::restore(&m, &store, &replica.runtime, tree)?;
            replica.state = Mutex::new(state);
        }
        replica.store = Some(Mutex::new(store));
        Ok((replica, recovery))
    }

    /// Stop checkpoint writes after `step` more durable steps (power-cut tests).
    pub fn cut_checkpoints_after(&self, step: usize) {
        if let Some(s) = &self.store {
            s.lock().unwrap_or_else(|p| p.into_inner()).cut_after(step);
        }
    }

    /// The durable steps of the last checkpoint write, by name (none without a state
    /// directory).
    pub fn checkpoint_steps(&self) -> Vec<&'static str> {
        self.store.as_ref().map_or_else(Vec::new, |s| {
            s.lock().unwrap_or_else(|p| p.into_inner()).steps().to_vec()
        })
    }

    /// Write a checkpoint if calls ran since the last one (nothing without a state
    /// directory). Until it is written nothing above the last checkpoint is certified: a
    /// caller told "executed" must find the call after a power cut.
    fn make_durable(&self, state: &mut State) -> Result<(), RequestError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        // A batch of nothing but time moves the root too, so it is made durable as well.
        if state.height <= state.durable_height
            && state.batch_time == state.durable_batch_time
            && state.position == state.durable_position
        {
            return Ok(());
        }
        let (manifest, data) = state.manifest();
        let written = store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(&manifest, &data);
        match written {
            Ok(()) => {
                state.durable_height = state.height;
                state.durable_batch_time = state.batch_time;
                state.durable_position = state.position.clone();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, height = state.height, "checkpoint failed");
                Err(RequestError::Unavailable(format!(
                    "the state could not be checkpointed ({e}); calls executed since the last checkpoint are answered once one is written: send the request again"
                )))
            }
        }
    }

    /// Stop serving for `why`: from now on the interface answers 503 with it (the status
    /// route says "diverged").
    pub fn stop_serving(&self, why: String) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Why this replica stopped serving, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The node is going down (a reboot, an upgrade): keep answering, but say "stopping"
    /// on the status route so boundaries send new requests to other nodes first.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether it answers: diverged (503 from now on) before draining before serving.
    pub fn serving(&self) -> node_status::replica::Serving {
        use node_status::replica::Serving;
        match self.stopped() {
            Some(reason) => Serving::Diverged { reason },
            None if self.draining.load(std::sync::atomic::Ordering::Relaxed) => Serving::Draining,
            None => Serving::Serving,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave half a message behind: every change
        // is made after execution finished. So a poisoned lock is still a whole state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Executed calls so far.
    pub fn height(&self) -> u64 {
        self.lock().height
    }

    /// An ingress call to `effective` (the canister in the URL), executed now: a node that
    /// is a subnet of its own. (A subnet of several nodes executes calls in batches that
    /// every node runs alike: [`Replica::execute_batch`].)
    pub fn call(&self, body: &[u8], effective: &Principal) -> Result<CallAnswer, RequestError> {
        let now = self.now();
        let auth = ingress::authenticate(body, now, &self.config.ingress)?;
        let mut state = self.lock();
        match self.run_call(&mut state, &auth, effective, now, Admission::OneNode)? {
            Ran::NotExecuted(r) => Ok(CallAnswer::NotExecuted(r)),
            Ran::Recorded | Ran::Duplicate => {
                self.make_durable(&mut state)?;
                self.certified_status(&mut state, &auth.request_id, now)
            }
        }
    }

    /// Check a call before its subnet orders it, at this node's time: a valid call envelope,
    /// not answered before, and admitted (routing, the canister's state, its
    /// `canister_inspect_message`). Nothing changes; every node checks again when it runs the
    /// call in its batch.
    pub fn check_call(&self, body: &[u8], effective: &Principal) -> Result<Checked, RequestError> {
        let now = self.now();
        let auth = ingress::authenticate(body, now, &self.config.ingress)?;
        let (canister_id, method_name, arg, _) = call_content(&auth)?;
        let mut state = self.lock();
        if state.requests.contains_key(&auth.request_id) {
            return self
                .certified_status(&mut state, &auth.request_id, now)
                .map(Checked::Answered);
        }
        let checked = self.admit(
            &state,
            &auth,
            (canister_id, method_name, arg),
            effective,
            now,
            Admission::Replicated,
        );
        Ok(match checked {
            Ok(()) => Checked::Admitted {
                request_id: auth.request_id,
                time_ns: now,
            },
            Err(r) => Checked::Answered(CallAnswer::NotExecuted(r)),
        })
    }

    /// The certified status of request `id`, as this node's state has it now.
    pub fn call_answer(&self, id: &[u8; 32]) -> Result<CallAnswer, RequestError> {
        let now = self.now();
        let mut state = self.lock();
        self.certified_status(&mut state, id, now)
    }

    /// Execute `batch` as every node of the subnet does: each message is checked at the
    /// batch's time (never this node's clock), executed in order and recorded; then the
    /// state is made durable once. Equal batches give equal states on every node
    /// ([`Replica::state_root`]).
    pub fn execute_batch(&self, batch: &Batch) -> Result<Vec<Executed>, RequestError> {
        let mut state = self.lock();
        let out = self.run_batch(&mut state, batch);
        self.make_durable(&mut state)?;
        Ok(out)
    }

    /// [`Replica::execute_batch`] for the entry at `position` of the subnet's ordered log
    /// (no batch: an entry without one, which moves only the position); the position is
    /// checkpointed with the state it produced. A state that could not be made durable is
    /// an error: the log's engine stops rather than run ahead of the disk.
    pub fn execute_ordered(
        &self,
        batch: Option<&Batch>,
        position: &[u8],
    ) -> Result<Vec<Executed>, RequestError> {
        let mut state = self.lock();
        let out = batch.map_or_else(Vec::new, |b| self.run_batch(&mut state, b));
        state.position = Some(position.to_vec());
        self.make_durable(&mut state)?;
        Ok(out)
    }

    /// Where the state stands in the subnet's ordered log (none: no entry applied yet).
    pub fn position(&self) -> Option<Vec<u8>> {
        self.lock().position.clone()
    }

    /// Run every message of `batch` at its time, in order (nothing made durable yet). Time
    /// never goes back: a batch stamped before the last one (its proposer's clock is behind
    /// another's) runs at the last one's time, which every node knows alike.
    fn run_batch(&self, state: &mut State, batch: &Batch) -> Vec<Executed> {
        let time = batch.time_ns.max(state.batch_time);
        let mut out = Vec::with_capacity(batch.messages.len());
        for m in &batch.messages {
            let auth = match ingress::authenticate(&m.body, time, &self.config.ingress) {
                Ok(a) => a,
                Err(e) => {
                    out.push(Executed::Invalid(e.to_string()));
                    continue;
                }
            };
            let id = auth.request_id;
            let ran = self.run_call(state, &auth, &m.effective, time, Admission::Replicated);
            out.push(match ran {
                Ok(Ran::Recorded) => Executed::Recorded(id),
                Ok(Ran::Duplicate) => Executed::Duplicate(id),
                Ok(Ran::NotExecuted(r)) => Executed::NotExecuted(r),
                Err(e) => Executed::Invalid(e.to_string()),
            });
        }
        state.batch_time = time;
        out
    }

    /// The height and root hash of the state as the last batch left it (its time is the
    /// batch's): what the nodes of a subnet compare.
    pub fn state_root(&self) -> (u64, [u8; 32]) {
        let mut state = self.lock();
        let time = state.batch_time;
        state.tree.set_time(time);
        (state.height, state.tree.root_hash())
    }

    /// A call authenticated at `now`, against `state`: recorded before (not run again),
    /// refused before execution, or executed and recorded.
    fn run_call(
        &self,
        state: &mut State,
        auth: &Authenticated,
        effective: &Principal,
        now: u64,
        admission: Admission,
    ) -> Result<Ran, RequestError> {
        let (canister_id, method_name, arg, ingress_expiry) = call_content(auth)?;
        let drift = self.config.ingress.clock_drift_nanos;
        state.prune(now, drift);
        if state.requests.contains_key(&auth.request_id) {
            return Ok(Ran::Duplicate);
        }
        if ingress_expiry.saturating_add(drift) < state.prune_mark {
            // Another call pruned with a later clock: this id may be gone from the records.
            return Err(RequestError::BadRequest(format!(
                "the request expired (ingress_expiry {ingress_expiry} ns is before the replica's time {} ns, with {drift} ns of drift allowed)",
                state.prune_mark
            )));
        }
        if let Err(r) = self.admit(
            state,
            auth,
            (canister_id, method_name, arg),
            effective,
            now,
            admission,
        ) {
            return Ok(Ran::NotExecuted(r));
        }
        let status = match self.execute(state, auth, canister_id, method_name, arg, now) {
            Ok(reply) => Status::Replied(reply),
            Err(r) => Status::Rejected(r),
        };
        tracing::debug!(canister = %canister_id, method = %method_name, ?status, "call executed");
        state.record(
            auth.request_id,
            Request {
                status,
                sender: auth.sender,
                expiry: ingress_expiry,
            },
        );
        Ok(Ran::Recorded)
    }

    /// Checks before a call is accepted: routing, the subnet's size, the canister's
    /// existence and state, and its `canister_inspect_message`.
    fn admit(
        &self,
        state: &State,
        auth: &Authenticated,
        (canister_id, method, arg): (&Principal, &str, &[u8]),
        effective: &Principal,
        now: u64,
        admission: Admission,
    ) -> Result<(), Reject> {
        if admission == Admission::OneNode && self.config.subnet_size > 1 {
            return Err(Reject::new(
                2,
                "IC0208",
                format!(
                    "this node of a {}-node subnet runs without the subnet's ordered log: a call executed on one node alone would make the nodes' states diverge, so calls are refused (queries and read_state still answer)",
                    self.config.subnet_size
                ),
            ));
        }
        if *canister_id == Principal::management_canister() {
            return self.admit_management(method, arg, effective);
        }
        if canister_id != effective {
            return Err(Reject::new(
                3,
                "IC0301",
                format!("the call is for canister {canister_id} but was sent to {effective}"),
            ));
        }
        let c = canister(state, canister_id)?;
        if c.status != ic_management_canister_types::CanisterStatusType::Running {
            return Err(Reject::new(
                5,
                "IC0508",
                format!("canister {canister_id} is not running"),
            ));
        }
        let Some(installed) = &c.code else {
            return Err(no_module(canister_id));
        };
        if !installed.code.methods().inspect_message {
            return Ok(());
        }
        let ctx = context(c, &auth.sender, arg, now);
        let e = self
            .runtime
            .execute(
                &installed.code,
                &c.memory,
                &Entry::InspectMessage(method.into()),
                &ctx,
            )
            .map_err(|e| Reject::new(1, "IC0502", e.to_string()))?;
        match e.outcome {
            Outcome::Trap(t) => Err(trap_reject(canister_id, &t)),
            _ if !e.accepted => Err(Reject::new(
                4,
                "IC0406",
                format!("canister {canister_id} did not accept the call to `{method}` (canister_inspect_message)"),
            )),
            _ => Ok(()),
        }
    }

    fn admit_management(
        &self,
        method: &str,
        arg: &[u8],
        effective: &Principal,
    ) -> Result<(), Reject> {
        match management::target(method, arg) {
            Some(target) if target != *effective => Err(Reject::new(
                3,
                "IC0301",
                format!("the call to the management canister is about {target} but was sent to {effective}"),
            )),
            _ => Ok(()),
        }
    }

    fn execute(
        &self,
        state: &mut State,
        auth: &Authenticated,
        canister_id: &Principal,
        method: &str,
        arg: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, Reject> {
        if *canister_id == Principal::management_canister() {
            return management::call(
                state,
                &management::Call {
                    runtime: &self.runtime,
                    sender: auth.sender,
                    method,
                    arg,
                    now,
                    range: self.config.canister_range,
                },
            );
        }
        let c = state
            .canisters
            .get_mut(canister_id)
            .ok_or_else(|| not_found(canister_id))?;
        let installed = c.code.clone().ok_or_else(|| no_module(canister_id))?;
        let ctx = context(c, &auth.sender, arg, now);
        let e = self
            .runtime
            .execute(
                &installed.code,
                &c.memory,
                &Entry::Update(method.into()),
                &ctx,
            )
            .map_err(|e| Reject::new(1, "IC0502", e.to_string()))?;
        if let Some(memory) = e.memory {
            c.memory = std::sync::Arc::new(memory);
            if let Some(d) = e.certified_data {
                c.certified_data = d;
                state.refresh(canister_id);
            }
        }
        answer(canister_id, e.outcome)
    }

    /// The certificate of a recorded request's status.
    fn certified_status(
        &self,
        state: &mut State,
        id: &[u8; 32],
        now: u64,
    ) -> Result<CallAnswer, RequestError> {
        let path = vec![b"request_status".to_vec(), id.to_vec()];
        self.certificate(state, &[path], now)
            .map(CallAnswer::Certified)
    }

    /// A certificate over `paths` (and `/time`) of the current state, CBOR.
    fn certificate(
        &self,
        state: &mut State,
        paths: &[Path],
        now: u64,
    ) -> Result<Vec<u8>, RequestError> {
        state.tree.set_time(now);
        let cert = certified_state::certify(
            &state.tree,
            paths,
            &self.config.subnet_key,
            self.config.delegation.as_ref(),
        )
        .map_err(|e| RequestError::Internal(e.to_string()))?;
        certified_state::to_cbor(&cert).map_err(|e| RequestError::Internal(e.to_string()))
    }

    /// `read_state` at `effective` (a canister, or the subnet when `subnet` is true).
    pub fn read_state(
        &self,
        body: &[u8],
        effective: &Principal,
        subnet: bool,
    ) -> Result<Vec<u8>, RequestError> {
        let now = self.now();
        let auth = ingress::authenticate(body, now, &self.config.ingress)?;
        let EnvelopeContent::ReadState { paths, .. } = &auth.content else {
            return Err(RequestError::BadRequest(
                "the request to /read_state is not a read_state request".into(),
            ));
        };
        let paths: Vec<Path> = paths
            .iter()
            .map(|p| p.iter().map(|l| l.as_bytes().to_vec()).collect())
            .collect();
        if subnet && *effective != self.config.subnet_id {
            return Err(RequestError::BadRequest(format!(
                "this replica serves subnet {}, not {effective}",
                self.config.subnet_id
            )));
        }
        let mut state = self.lock();
        for p in &paths {
            check_read_path(&state, p, &auth.sender, effective, subnet)?;
        }
        self.make_durable(&mut state)?;
        self.certificate(&mut state, &paths, now)
    }
}

/// A call's canister, method, argument and expiry; an error for any other request sent to
/// `/call`.
fn call_content(auth: &Authenticated) -> Result<(&Principal, &str, &[u8], u64), RequestError> {
    match &auth.content {
        EnvelopeContent::Call {
            canister_id,
            method_name,
            arg,
            ingress_expiry,
            ..
        } => Ok((canister_id, method_name, arg, *ingress_expiry)),
        _ => Err(RequestError::BadRequest(
            "the request to /call is not a call (request_type must be \"call\")".into(),
        )),
    }
}

/// The subnet's facts in the tree: its key, its ranges, its node's key.
fn subnet_facts(tree: &mut StateTree, c: &Config) {
    let sid = c.subnet_id.as_slice().to_vec();
    let subnet = |leaf: &[&[u8]]| {
        let mut p = vec![b"subnet".to_vec(), sid.clone()];
        p.extend(leaf.iter().map(|l| l.to_vec()));
        p
    };
    tree.set(&subnet(&[b"public_key"]), c.subnet_key.public_der());
    let range = vec![(
        certified_state::canister_id(c.canister_range.0),
        certified_state::canister_id(c.canister_range.1),
    )];
    let encoded = certified_state::to_cbor(&range).expect("ranges encode");
    tree.set(&subnet(&[b"canister_ranges"]), encoded.clone());
    tree.set(
        &[
            b"canister_ranges".to_vec(),
            sid.clone(),
            range[0].0.as_slice().to_vec(),
        ],
        encoded,
    );
    let node_der = query::node_public_der(&c.node_key);
    tree.set(
        &subnet(&[b"node", c.node_id.as_slice(), b"public_key"]),
        node_der,
    );
    for peer in &c.peer_node_keys {
        let der = ingress::ed25519_der(peer);
        let id = Principal::self_authenticating(&der);
        tree.set(&subnet(&[b"node", id.as_slice(), b"public_key"]), der);
    }
}

/// Who may read what (the interface's rules): `/time`, `/subnet` and `/canister_ranges`
/// anyone; `/canister/<id>/...` only of the effective canister; `/request_status/<id>`
/// only the request's own sender.
fn check_read_path(
    state: &State,
    p: &Path,
    sender: &Principal,
    effective: &Principal,
    subnet: bool,
) -> Result<(), RequestError> {
    let first = p.first().map(Vec::as_slice).unwrap_or_default();
    match first {
        b"time" | b"subnet" | b"canister_ranges" => Ok(()),
        b"canister" if !subnet => {
            let id = p.get(1).and_then(|b| Principal::try_from_slice(b).ok());
            if id.as_ref() != Some(effective) {
                return Err(RequestError::BadRequest(format!(
                    "read_state at {effective} may read /canister/{effective} only"
                )));
            }
            Ok(())
        }
        b"request_status" if !subnet => {
            let Some(id) = p
                .get(1)
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            else {
                return Err(RequestError::BadRequest(
                    "a request_status path needs a 32-byte request id".into(),
                ));
            };
            match state.requests.get(&id) {
                Some(r) if r.sender != *sender => Err(RequestError::Forbidden(format!(
                    "request {} was sent by {}, not by {sender}",
                    hex::encode(id),
                    r.sender
                ))),
                _ => Ok(()),
            }
        }
        _ => Err(RequestError::BadRequest(format!(
            "read_state cannot read the path /{}{}",
            String::from_utf8_lossy(first),
            if subnet { " at a subnet" } else { "" }
        ))),
    }
}

/// What a message to canister `c` from `caller` sees.
pub(crate) fn context(c: &state::Canister, caller: &Principal, arg: &[u8], now: u64) -> Context {
    Context {
        canister_id: c.id.as_slice().to_vec(),
        caller: caller.as_slice().to_vec(),
        arg: arg.to_vec(),
        time_ns: now,
        controllers: c
            .settings
            .controllers
            .iter()
            .map(|p| p.as_slice().to_vec())
            .collect(),
        status: 1,
        version: c.version,
        data_certificate: None,
    }
}

/// An update's or query's outcome as the caller's answer.
fn answer(id: &Principal, outcome: Outcome) -> Result<Vec<u8>, Reject> {
    match outcome {
        Outcome::Reply(r) => Ok(r),
        Outcome::Reject(m) => Err(Reject::new(
            4,
            "IC0406",
            format!("canister {id} rejected the message: {m}"),
        )),
        Outcome::Trap(t) => Err(trap_reject(id, &t)),
        Outcome::Done => Err(Reject::new(5, "IC0506", "no response")),
    }
}

fn canister<'s>(state: &'s State, id: &Principal) -> Result<&'s state::Canister, Reject> {
    state.canisters.get(id).ok_or_else(|| not_found(id))
}

pub(crate) fn not_found(id: &Principal) -> Reject {
    Reject::new(3, "IC0301", format!("canister {id} not found"))
}

fn no_module(id: &Principal) -> Reject {
    Reject::new(
        3,
        "IC0537",
        format!("canister {id} has no Wasm module installed"),
    )
}

/// A trap as the reject the caller sees.
fn trap_reject(id: &Principal, t: &Trap) -> Reject {
    let code = match t {
        Trap::Explicit(_) => "IC0503",
        Trap::InstructionLimit(_) => "IC0522",
        Trap::Wasm(_) => "IC0502",
        Trap::SystemApi(_) => "IC0504",
        Trap::NoResponse => "IC0506",
        Trap::NoMethod(_) => "IC0536",
    };
    let reject_code = if matches!(t, Trap::NoMethod(_)) { 3 } else { 5 };
    Reject::new(reject_code, code, format!("canister {id}: {t}"))
}
