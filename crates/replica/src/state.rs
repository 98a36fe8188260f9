//! The replicated state of one subnet: its canisters, the status of every request still
//! within its expiry, and the state tree that certifies both.

use candid::Nat;
use canister_runtime::{CanisterMemory, Code};
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
    pub error_code: &'static str,
}

impl Reject {
    pub fn new(code: u64, error_code: &'static str, message: impl Into<String>) -> Reject {
        Reject {
            code,
            message: message.into(),
            error_code,
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
    pub memory: CanisterMemory,
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
            memory: CanisterMemory::default(),
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
                self.tree.set(&at("error_code"), label(r.error_code));
            }
        }
        self.requests.insert(id, request);
        self.height += 1;
    }

    /// Requests past their expiry leave the map and the tree: their id cannot come again
    /// (the ingress check refuses expired requests), so nothing is executed twice.
    /// `drift` is the clock drift the ingress check tolerates past an expiry.
    pub fn prune(&mut self, now: u64, drift: u64) {
        let old: Vec<[u8; 32]> = self
            .requests
            .iter()
            .filter(|(_, r)| r.expiry.saturating_add(drift) < now)
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
