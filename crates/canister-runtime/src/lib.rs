//! Executes canister Wasm as the Internet Computer defines it.
//!
//! * **Engine**: wasmtime 36 (an LTS line, the newest whose MSRV fits the workspace),
//!   configured for determinism: NaNs canonicalized, no threads (not compiled in), no SIMD, no memory64, no
//!   multi-memory; the same module, state and message give the same result on every node.
//! * **Limits**: a per-message instruction budget (wasmtime fuel: a looping canister is
//!   stopped with a reject, not left running), a heap limit (`memory.grow` fails beyond it),
//!   a stable memory limit (`stable64_grow` returns -1), wasmtime's stack limit, a module
//!   size limit. A limit hit is the canister's failure, never the runtime's.
//! * **Transactions**: a message runs on a fresh instance restored from the canister's
//!   [`CanisterMemory`] (heap, mutable globals, stable memory) and yields the memory after it.
//!   The caller keeps it (an update that did not trap) or drops it (a query, a trap): a trap
//!   undoes everything the message did, as on the IC.
//! * **The system API**: the `ic0` functions of [`ic0::signature`], each allowed only in the
//!   entry points the interface specification allows it in.
//!
//! ```
//! use canister_runtime::{CanisterMemory, Context, Entry, Limits, Outcome, Runtime};
//! let wasm = wat::parse_str(r#"(module
//!   (import "ic0" "msg_reply" (func $reply))
//!   (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
//!   (memory 1)
//!   (data (i32.const 0) "hi")
//!   (func (export "canister_query greet") (call $append (i32.const 0) (i32.const 2)) (call $reply)))"#).unwrap();
//! let rt = Runtime::new(Limits::default()).unwrap();
//! let code = rt.compile(&wasm).unwrap();
//! let installed = rt.execute(&code, &CanisterMemory::default(), &Entry::Init, &Context::default()).unwrap();
//! let memory = installed.memory.unwrap();
//! let q = rt.execute(&code, &memory, &Entry::Query("greet".into()), &Context::default()).unwrap();
//! assert_eq!(q.outcome, Outcome::Reply(b"hi".to_vec()));
//! ```

pub mod ic0;
mod module;

pub use module::{Methods, ModuleError, MAX_MODULE_BYTES};

use ic0::{Host, HostTrap, Response};
use module::{Prepared, GLOBAL_EXPORT, MEMORY_EXPORT};
use std::fmt;
use std::sync::Arc;
use wasmtime::{Engine, InstancePre, Linker, Store, Val};

/// Resource limits per message and per canister.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Instructions (wasmtime fuel) one update, query or inspection may use.
    pub instructions_per_message: u64,
    /// Instructions for an install or upgrade (start, init, pre/post upgrade together).
    pub instructions_per_install: u64,
    /// Largest Wasm heap, bytes.
    pub heap_bytes: usize,
    /// Largest stable memory, bytes.
    pub stable_bytes: u64,
}

impl Default for Limits {
    /// The IC's limits for queries (5 billion instructions) and installs (300 billion)
    /// would take minutes under TCG; these bound a message to seconds on the slowest node.
    fn default() -> Limits {
        Limits {
            instructions_per_message: 2_000_000_000,
            instructions_per_install: 20_000_000_000,
            heap_bytes: 1 << 30,
            stable_bytes: 4 << 30,
        }
    }
}

/// Why the runtime itself could not run a message (never the canister's fault).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("setting up the Wasm engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Module(#[from] ModuleError),
    #[error("restoring the canister's memory: {0}")]
    Restore(String),
}

/// Which entry point a message runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Install: the module's start function, then `canister_init` (each if present), on a
    /// fresh instance.
    Init,
    PreUpgrade,
    /// After an upgrade: start, then `canister_post_upgrade`, on a fresh instance of the new
    /// module with the stable memory the old one left.
    PostUpgrade,
    Update(String),
    Query(String),
    /// `canister_inspect_message` for an ingress call to the named method.
    InspectMessage(String),
}

/// The kind of entry point, for the system API's availability table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Start,
    Init,
    PreUpgrade,
    PostUpgrade,
    Update,
    Query,
    InspectMessage,
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryKind::Start => "the start function",
            EntryKind::Init => "canister_init",
            EntryKind::PreUpgrade => "canister_pre_upgrade",
            EntryKind::PostUpgrade => "canister_post_upgrade",
            EntryKind::Update => "an update method",
            EntryKind::Query => "a query method",
            EntryKind::InspectMessage => "canister_inspect_message",
        })
    }
}

/// What the message is about and what it may read.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub canister_id: Vec<u8>,
    pub caller: Vec<u8>,
    pub arg: Vec<u8>,
    /// Nanoseconds since the epoch, the same for every node executing the message.
    pub time_ns: u64,
    pub controllers: Vec<Vec<u8>>,
    /// Queries only: the certificate of the canister's certified data.
    pub data_certificate: Option<Vec<u8>>,
    /// 1 running, 2 stopping, 3 stopped.
    pub status: u32,
    pub version: u64,
}

/// A canister's memory between messages: Wasm heap, mutable globals, stable memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanisterMemory {
    pub heap: Vec<u8>,
    pub globals: Vec<GlobalValue>,
    pub stable: Vec<u8>,
}

/// The value of a mutable global, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlobalValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
}

/// How a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reply(Vec<u8>),
    /// The canister rejected the message itself (reject code 4).
    Reject(String),
    /// An entry point that answers nobody (init, upgrade hooks) returned.
    Done,
    /// The message failed; nothing it did stays (reject code 5).
    Trap(Trap),
}

/// Why a message failed, in words for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trap {
    /// The canister called `ic0.trap`.
    Explicit(String),
    InstructionLimit(u64),
    /// A Wasm trap: unreachable, out-of-bounds access, stack overflow, division by zero.
    Wasm(String),
    /// The system API used where or how it may not be.
    SystemApi(String),
    /// An update or query returned without replying or rejecting.
    NoResponse,
    /// The module has no such method.
    NoMethod(String),
}

impl fmt::Display for Trap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trap::Explicit(m) => write!(f, "the canister called trap: {m}"),
            Trap::InstructionLimit(n) => {
                write!(
                    f,
                    "the canister exceeded the instruction limit of {n} for one message"
                )
            }
            Trap::Wasm(m) => write!(f, "the canister trapped: {m}"),
            Trap::SystemApi(m) => write!(f, "the canister violated the system API: {m}"),
            Trap::NoResponse => f.write_str("the canister did not reply to the call"),
            Trap::NoMethod(m) => write!(f, "the canister has no method `{m}`"),
        }
    }
}

/// The result of one message.
#[derive(Debug, Clone)]
pub struct Execution {
    pub outcome: Outcome,
    /// The canister's memory after the message; none when it trapped (nothing stays). An
    /// update's caller keeps it; a query's drops it.
    pub memory: Option<CanisterMemory>,
    /// Set by `certified_data_set`.
    pub certified_data: Option<Vec<u8>>,
    pub instructions: u64,
    /// `canister_inspect_message` called `accept_message`.
    pub accepted: bool,
    /// `debug_print` lines.
    pub prints: Vec<String>,
}

/// A compiled, checked module.
#[derive(Clone)]
pub struct Code {
    pre: InstancePre<Host>,
    prepared: Arc<Prepared>,
    /// SHA-256 of the module as installed (the IC's `module_hash`).
    pub module_hash: [u8; 32],
}

impl Code {
    pub fn methods(&self) -> &Methods {
        &self.prepared.methods
    }

    /// Whether the module imports `ic0.<name>` (a replica skips work for an API never called).
    pub fn imports(&self, name: &str) -> bool {
        self.prepared.imports.contains(name)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Code")
            .field("module_hash", &hex::encode(self.module_hash))
            .field("methods", &self.prepared.methods)
            .finish()
    }
}

/// The engine, the system API linked once, and the limits.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<Host>>,
    limits: Limits,
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Runtime, RuntimeError> {
        let mut config = wasmtime::Config::new();
        config
            .consume_fuel(true)
            .cranelift_nan_canonicalization(true)
            .wasm_simd(false)
            .wasm_relaxed_simd(false)
            .wasm_multi_memory(false)
            .wasm_memory64(false)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        ic0::link(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            limits,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Check and compile a module (see [`ModuleError`] for what is refused).
    pub fn compile(&self, wasm: &[u8]) -> Result<Code, ModuleError> {
        use sha2::Digest;
        let prepared = module::prepare(wasm)?;
        let module = wasmtime::Module::new(&self.engine, &prepared.wasm)
            .map_err(|e| ModuleError::Malformed(format!("{e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| ModuleError::Malformed(format!("{e:#}")))?;
        Ok(Code {
            pre,
            prepared: Arc::new(prepared),
            module_hash: sha2::Sha256::digest(wasm).into(),
        })
    }

    /// Run one message (see [`Entry`]) against `memory`.
    pub fn execute(
        &self,
        code: &Code,
        memory: &CanisterMemory,
        entry: &Entry,
        ctx: &Context,
    ) -> Result<Execution, RuntimeError> {
        let (kind, export, fresh) = self.entry_point(code, entry);
        let fuel = match kind {
            EntryKind::Init | EntryKind::PostUpgrade | EntryKind::PreUpgrade => {
                self.limits.instructions_per_install
            }
            _ => self.limits.instructions_per_message,
        };
        let mut host = Host::new(&self.limits, kind, fuel);
        fill_host(&mut host, entry, ctx, memory);
        let mut store = Store::new(&self.engine, host);
        store.limiter(|h| &mut h.limits);
        store
            .set_fuel(fuel)
            .map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let result = self.run(code, &mut store, memory, fresh, kind, export.as_deref());
        let instructions = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let outcome = match result {
            Ok(RunEnd::Returned(instance)) => {
                let outcome = returned(store.data_mut(), kind);
                let saved = save(&mut store, &instance, code)?;
                return Ok(finish(store, outcome, Some(saved), instructions));
            }
            Ok(RunEnd::NoMethod(m)) => Outcome::Trap(Trap::NoMethod(m)),
            Err(e) => Outcome::Trap(classify(e, fuel)),
        };
        Ok(finish(store, outcome, None, instructions))
    }

    /// The entry point's kind, its export name (none: the module does not have it), and
    /// whether it runs on a fresh instance.
    fn entry_point(&self, code: &Code, entry: &Entry) -> (EntryKind, Option<String>, bool) {
        let m = &code.prepared.methods;
        let some = |has: bool, name: &str| has.then(|| name.to_string());
        match entry {
            Entry::Init => (EntryKind::Init, some(m.init, "canister_init"), true),
            Entry::PostUpgrade => (
                EntryKind::PostUpgrade,
                some(m.post_upgrade, "canister_post_upgrade"),
                true,
            ),
            Entry::PreUpgrade => (
                EntryKind::PreUpgrade,
                some(m.pre_upgrade, "canister_pre_upgrade"),
                false,
            ),
            Entry::Update(n) => (
                EntryKind::Update,
                some(m.updates.contains(n), &format!("canister_update {n}")),
                false,
            ),
            Entry::Query(n) => (
                EntryKind::Query,
                some(m.queries.contains(n), &format!("canister_query {n}")),
                false,
            ),
            Entry::InspectMessage(_) => (
                EntryKind::InspectMessage,
                some(m.inspect_message, "canister_inspect_message"),
                false,
            ),
        }
    }

    fn run(
        &self,
        code: &Code,
        store: &mut Store<Host>,
        memory: &CanisterMemory,
        fresh: bool,
        kind: EntryKind,
        export: Option<&str>,
    ) -> wasmtime::Result<RunEnd> {
        let instance = code.pre.instantiate(&mut *store)?;
        if fresh {
            if code.prepared.has_start {
                run_start(store, &instance)?;
            }
        } else {
            restore(store, &instance, code, memory)?;
        }
        let Some(export) = export else {
            return Ok(match kind {
                EntryKind::Update | EntryKind::Query => {
                    RunEnd::NoMethod(store.data().method.clone())
                }
                _ => RunEnd::Returned(instance),
            });
        };
        store.data_mut().kind = kind;
        let f = instance.get_typed_func::<(), ()>(&mut *store, export)?;
        f.call(&mut *store, ())?;
        Ok(RunEnd::Returned(instance))
    }
}

enum RunEnd {
    Returned(wasmtime::Instance),
    NoMethod(String),
}

fn fill_host(h: &mut Host, entry: &Entry, ctx: &Context, memory: &CanisterMemory) {
    h.method = match entry {
        Entry::Update(m) | Entry::Query(m) | Entry::InspectMessage(m) => m.clone(),
        _ => String::new(),
    };
    h.arg = ctx.arg.clone();
    h.caller = ctx.caller.clone();
    h.canister_id = ctx.canister_id.clone();
    h.controllers = ctx.controllers.clone();
    h.time_ns = ctx.time_ns;
    h.status = if ctx.status == 0 { 1 } else { ctx.status };
    h.version = ctx.version;
    h.data_certificate = match entry {
        Entry::Query(_) => ctx.data_certificate.clone(),
        _ => None,
    };
    h.stable = memory.stable.clone();
}

/// The start function, taken out of the start section and exported by the rewrite.
fn run_start(store: &mut Store<Host>, instance: &wasmtime::Instance) -> wasmtime::Result<()> {
    store.data_mut().kind = EntryKind::Start;
    let f = instance.get_typed_func::<(), ()>(&mut *store, module::START_EXPORT)?;
    f.call(&mut *store, ())
}

fn restore(
    store: &mut Store<Host>,
    instance: &wasmtime::Instance,
    code: &Code,
    memory: &CanisterMemory,
) -> wasmtime::Result<()> {
    if let Some(mem) = instance.get_memory(&mut *store, MEMORY_EXPORT) {
        let have = mem.data_size(&*store);
        let want = memory.heap.len();
        if want > have {
            let pages = (want - have).div_ceil(ic0::PAGE as usize) as u64;
            mem.grow(&mut *store, pages)?;
        }
        mem.data_mut(&mut *store)[..want].copy_from_slice(&memory.heap);
    }
    for (g, v) in code.prepared.globals.iter().zip(&memory.globals) {
        let global = instance
            .get_global(&mut *store, &format!("{GLOBAL_EXPORT}{}", g.index))
            .ok_or_else(|| anyhow::anyhow!("global {} is not exported", g.index))?;
        global.set(&mut *store, to_val(*v))?;
    }
    Ok(())
}

fn save(
    store: &mut Store<Host>,
    instance: &wasmtime::Instance,
    code: &Code,
) -> Result<CanisterMemory, RuntimeError> {
    let heap = instance
        .get_memory(&mut *store, MEMORY_EXPORT)
        .map(|m| m.data(&*store).to_vec())
        .unwrap_or_default();
    let mut globals = Vec::with_capacity(code.prepared.globals.len());
    for g in &code.prepared.globals {
        let v = instance
            .get_global(&mut *store, &format!("{GLOBAL_EXPORT}{}", g.index))
            .map(|x| x.get(&mut *store))
            .and_then(from_val)
            .ok_or_else(|| RuntimeError::Restore(format!("global {} cannot be saved", g.index)))?;
        globals.push(v);
    }
    Ok(CanisterMemory {
        heap,
        globals,
        stable: std::mem::take(&mut store.data_mut().stable),
    })
}

fn to_val(v: GlobalValue) -> Val {
    match v {
        GlobalValue::I32(x) => Val::I32(x),
        GlobalValue::I64(x) => Val::I64(x),
        GlobalValue::F32(x) => Val::F32(x),
        GlobalValue::F64(x) => Val::F64(x),
    }
}

fn from_val(v: Val) -> Option<GlobalValue> {
    Some(match v {
        Val::I32(x) => GlobalValue::I32(x),
        Val::I64(x) => GlobalValue::I64(x),
        Val::F32(x) => GlobalValue::F32(x),
        Val::F64(x) => GlobalValue::F64(x),
        _ => return None,
    })
}

/// The outcome of an entry point that returned normally.
fn returned(h: &mut Host, kind: EntryKind) -> Outcome {
    match (kind, h.response.take()) {
        (_, Some(Response::Reply(r))) => Outcome::Reply(r),
        (_, Some(Response::Reject(m))) => Outcome::Reject(m),
        (EntryKind::Update | EntryKind::Query, None) => Outcome::Trap(Trap::NoResponse),
        _ => Outcome::Done,
    }
}

/// A wasmtime error as the canister's failure.
fn classify(e: anyhow::Error, fuel: u64) -> Trap {
    if let Some(t) = e.downcast_ref::<HostTrap>() {
        return match t {
            HostTrap::Explicit(m) => Trap::Explicit(m.clone()),
            HostTrap::Api(m) => Trap::SystemApi(m.clone()),
            HostTrap::Instructions => Trap::InstructionLimit(fuel),
        };
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => Trap::InstructionLimit(fuel),
        Some(t) => Trap::Wasm(t.to_string()),
        None => Trap::Wasm(e.root_cause().to_string()),
    }
}

fn finish(
    mut store: Store<Host>,
    outcome: Outcome,
    memory: Option<CanisterMemory>,
    instructions: u64,
) -> Execution {
    let trapped = matches!(outcome, Outcome::Trap(_));
    let h = store.data_mut();
    Execution {
        outcome,
        memory,
        certified_data: if trapped {
            None
        } else {
            h.certified_data.take()
        },
        instructions,
        accepted: !trapped && h.accepted,
        prints: std::mem::take(&mut h.prints),
    }
}
