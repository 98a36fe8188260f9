//! The replicated state of one subnet: its canisters, the status of every request still
//! within its expiry, and the state tree that certifies both.

use crate::checkpoint::{
    self, CanisterRecord, GlobalRecord, Manifest, RequestOutcome, RequestRecord, Store,
};
use candid::Nat;
use canister_runtime::{CanisterMemory, Code, GlobalValue, Runtime};
use certified_state::{leb128, StateTree};
use ic_management_canister_types::{CanisterStatusType, DefiniteCanisterSettings};
use ic_principal::Principal;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A reject as the interface reports it: reject code, message, error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// 1 SYS_FATAL, 2 SYS_TRANSIENT, 3 DESTINATION_INVALID, 4 CANISTER_REJECT, 5 CANISTER_ERROR.
    pub code: u64,
    pub message: String,
    pub error_code: String,
}

impl Reject {
    pub fn new(code: u64, error_code: &str, message: impl Into<String>) -> Reject {
        Reject {
            code,
            message: message.into(),
            error_code: error_code.to_string(),
        }
    }
}

/// Installed code: the module as sent (its hash is the module hash) and its compilation.
#[derive(Clone)]
pub struct Installed {
    pub wasm: Arc<Vec<u8>>,
    pub code: Code,
}

/// One canister.
#[derive(Clone)]
pub struct Canister {
    pub id: Principal,
    pub settings: DefiniteCanisterSettings,
    pub code: Option<Installed>,
    /// Shared with queries running outside the state lock; an update replaces it whole.
    pub memory: Arc<CanisterMemory>,
    pub certified_data: Vec<u8>,
    pub status: CanisterStatusType,
    /// Incremented by every install, upgrade, settings change (the canister version).
    pub version: u64,
}

impl Canister {
    pub fn new(id: Principal, controllers: Vec<Principal>) -> Canister {
        Canister {
            id,
            settings: DefiniteCanisterSettings {
                controllers,
                freezing_threshold: Nat::from(2_592_000u64),
                ..Default::default()
            },
            code: None,
            memory: Arc::default(),
            certified_data: Vec::new(),
            status: CanisterStatusType::Running,
            version: 0,
        }
    }

    pub fn is_controller(&self, p: &Principal) -> bool {
        self.settings.controllers.contains(p)
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Replied(Vec<u8>),
    Rejected(Reject),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub status: Status,
    pub sender: Principal,
    pub expiry: u64,
}

/// Canisters, requests and the tree over them.
#[derive(Default)]
pub struct State {
    pub canisters: BTreeMap<Principal, Canister>,
    pub requests: HashMap<[u8; 32], Request>,
    pub tree: StateTree,
    /// Executed calls so far: the height of the state certified.
    pub height: u64,
    /// The height of the newest checkpoint written: nothing above it is certified to anyone.
    pub durable_height: u64,
    /// The latest time requests were pruned at: a request expired before it is refused even
    /// if its caller read the clock earlier (its id may have been pruned already).
    pub prune_mark: u64,
    /// The time of the newest batch executed (the state's time, as every node sees it).
    pub batch_time: u64,
    /// The batch time of the last checkpoint written.
    pub durable_batch_time: u64,
    /// Where the state stands in the subnet's ordered log, and that of the last checkpoint.
    pub position: Option<Vec<u8>>,
    pub durable_position: Option<Vec<u8>>,
}

fn label(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

impl State {
    /// Record how request `id` ended, in the map and the tree.
    pub fn record(&mut self, id: [u8; 32], request: Request) {
        let base = vec![label("request_status"), id.to_vec()];
        self.tree.remove(&base);
        let at = |leaf: &str| [base.clone(), vec![label(leaf)]].concat();
        match &request.status {
            Status::Replied(reply) => {
                self.tree.set(&at("status"), label("replied"));
                self.tree.set(&at("reply"), reply.clone());
            }
            Status::Rejected(r) => {
                self.tree.set(&at("status"), label("rejected"));
                self.tree.set(&at("reject_code"), leb128(r.code));
                self.tree.set(&at("reject_message"), label(&r.message));
                self.tree.set(&at("error_code"), label(&r.error_code));
            }
        }
        self.requests.insert(id, request);
        self.height += 1;
    }

    /// Requests past their expiry leave the map and the tree: their id cannot come again
    /// (the ingress check refuses expired requests), so nothing is executed twice.
    /// `drift` is the clock drift the ingress check tolerates past an expiry.
    pub fn prune(&mut self, now: u64, drift: u64) {
        self.prune_mark = self.prune_mark.max(now);
        let mark = self.prune_mark;
        let old: Vec<[u8; 32]> = self
            .requests
            .iter()
            .filter(|(_, r)| r.expiry.saturating_add(drift) < mark)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.requests.remove(&id);
            self.tree.remove(&[label("request_status"), id.to_vec()]);
        }
    }

    /// Put a canister's public facts into the tree (after any change to them).
    pub fn refresh(&mut self, id: &Principal) {
        let base = vec![label("canister"), id.as_slice().to_vec()];
        self.tree.remove(&base);
        let Some(c) = self.canisters.get(id) else {
            return;
        };
        let at = |leaf: &str| [base.clone(), vec![label(leaf)]].concat();
        let controllers: Vec<serde_bytes::ByteBuf> = c
            .settings
            .controllers
            .iter()
            .map(|p| serde_bytes::ByteBuf::from(p.as_slice().to_vec()))
            .collect();
        self.tree.set(
            &at("controllers"),
            certified_state::to_cbor(&controllers).expect("a list of blobs encodes"),
        );
        self.tree
            .set(&at("certified_data"), c.certified_data.clone());
        if let Some(i) = &c.code {
            self.tree
                .set(&at("module_hash"), i.code.module_hash.to_vec());
        }
    }
}

/// Why a checkpoint could not be taken up.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("the checkpoint's canister {id}: {reason}")]
    Canister { id: String, reason: String },
}

fn global_record(g: &GlobalValue) -> GlobalRecord {
    match *g {
        GlobalValue::I32(x) => (0, x as u32 as u64),
        GlobalValue::I64(x) => (1, x as u64),
        GlobalValue::F32(x) => (2, u64::from(x)),
        GlobalValue::F64(x) => (3, x),
    }
}

fn global_value((kind, bits): GlobalRecord) -> Option<GlobalValue> {
    Some(match kind {
        0 => GlobalValue::I32(bits as u32 as i32),
        1 => GlobalValue::I64(bits as i64),
        2 => GlobalValue::F32(u32::try_from(bits).ok()?),
        3 => GlobalValue::F64(bits),
        _ => return None,
    })
}

impl State {
    /// The checkpoint of this state, and the bytes of the blobs it names in its order.
    pub fn manifest(&self) -> (Manifest, Vec<&[u8]>) {
        let mut data: Vec<&[u8]> = Vec::new();
        let canisters = self
            .canisters
            .values()
            .map(|c| {
                let wasm = c.code.as_ref().map(|i| {
                    data.push(i.wasm.as_slice());
                    Store::blob_of(&i.wasm)
                });
                data.push(&c.memory.heap);
                data.push(&c.memory.stable);
                CanisterRecord {
                    id: c.id.as_slice().to_vec(),
                    settings: c.settings.clone(),
                    wasm,
                    heap: Store::blob_of(&c.memory.heap),
                    globals: c.memory.globals.iter().map(global_record).collect(),
                    stable: Store::blob_of(&c.memory.stable),
                    certified_data: c.certified_data.clone(),
                    status: c.status,
                    version: c.version,
                }
            })
            .collect();
        let requests = self
            .requests
            .iter()
            .map(|(id, r)| RequestRecord {
                id: id.to_vec(),
                sender: r.sender.as_slice().to_vec(),
                expiry: r.expiry,
                outcome: match &r.status {
                    Status::Replied(b) => RequestOutcome::Replied(b.clone()),
                    Status::Rejected(r) => RequestOutcome::Rejected {
                        code: r.code,
                        message: r.message.clone(),
                        error_code: r.error_code.clone(),
                    },
                },
            })
            .collect();
        let manifest = Manifest {
            format: checkpoint::FORMAT,
            height: self.height,
            canisters,
            requests,
            batch_time: self.batch_time,
            position: self.position.clone(),
        };
        (manifest, data)
    }

    /// Take up a checkpoint: read its blobs, compile its modules, rebuild the tree over it
    /// (`tree` holds the subnet's facts already).
    pub fn restore(
        m: &Manifest,
        store: &Store,
        runtime: &Runtime,
        tree: StateTree,
    ) -> Result<State, RestoreError> {
        let mut state = State {
            tree,
            height: m.height,
            batch_time: m.batch_time,
            durable_batch_time: m.batch_time,
            position: m.position.clone(),
            durable_position: m.position.clone(),
            ..State::default()
        };
        for r in &m.canisters {
            let c = restore_canister(r, store, runtime)?;
            let id = c.id;
            state.canisters.insert(id, c);
            state.refresh(&id);
        }
        for r in &m.requests {
            let Ok(id) = <[u8; 32]>::try_from(r.id.as_slice()) else {
                continue;
            };
            let status = match &r.outcome {
                RequestOutcome::Replied(b) => Status::Replied(b.clone()),
                RequestOutcome::Rejected {
                    code,
                    message,
                    error_code,
                } => Status::Rejected(Reject::new(*code, error_code, message.clone())),
            };
            let sender =
                Principal::try_from_slice(&r.sender).map_err(|e| RestoreError::Canister {
                    id: "(a request status)".into(),
                    reason: format!("its sender: {e}"),
                })?;
            let request = Request {
                status,
                sender,
                expiry: r.expiry,
            };
            state.record(id, request);
        }
        // `record` counts executions; these were counted when they ran.
        state.height = m.height;
        state.durable_height = m.height;
        Ok(state)
    }
}

fn restore_canister(
    r: &CanisterRecord,
    store: &Store,
    runtime: &Runtime,
) -> Result<Canister, RestoreError> {
    let id = Principal::try_from_slice(&r.id).map_err(|e| RestoreError::Canister {
        id: hex::encode(&r.id),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| RestoreError::Canister {
        id: id.to_string(),
        reason,
    };
    let code = match &r.wasm {
        Some(b) => {
            let wasm = store.read(b)?;
            let code = runtime
                .compile(&wasm)
                .map_err(|e| bad(format!("its module no longer compiles: {e}")))?;
            Some(Installed {
                wasm: Arc::new(wasm),
                code,
            })
        }
        None => None,
    };
    let globals = r
        .globals
        .iter()
        .map(|g| global_value(*g).ok_or_else(|| bad(format!("a global of unknown type {}", g.0))))
        .collect::<Result<_, _>>()?;
    Ok(Canister {
        id,
        settings: r.settings.clone(),
        code,
        memory: Arc::new(CanisterMemory {
            heap: store.read(&r.heap)?,
            globals,
            stable: store.read(&r.stable)?,
        }),
        certified_data: r.certified_data.clone(),
        status: r.status,
        version: r.version,
    })
}
