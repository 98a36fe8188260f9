//! The management canister (`aaaaa-aa`) for ingress calls: create (provisional, as local
//! replicas offer), install / reinstall / upgrade, status, start / stop / delete, settings.
//! Arguments and results are DFINITY's own Candid types (`ic-management-canister-types`, as
//! `ic-utils` uses), so the agents' encodings match by construction. Every method but create
//! is for the canister's controllers only.

use crate::not_found;
use crate::state::{Canister, Installed, Reject, State};
use candid::{CandidType, Decode, Encode, Nat};
use canister_runtime::{CanisterMemory, Context, Entry, Outcome, Runtime};
use ic_management_canister_types::{
    CanisterIdRecord, CanisterInstallMode, CanisterStatusResult, CanisterStatusType,
    InstallCodeArgs, MemoryMetrics, ProvisionalCreateCanisterWithCyclesArgs, QueryStats,
    UpdateSettingsArgs,
};
use ic_principal::Principal;
use std::sync::Arc;

/// What a management call needs besides the state.
pub struct Call<'a> {
    pub runtime: &'a Runtime,
    pub sender: Principal,
    pub method: &'a str,
    pub arg: &'a [u8],
    pub now: u64,
    /// The canister ids this subnet may give out, first to last.
    pub range: (u64, u64),
}

/// The canister a management call is about (its effective canister id), if the method
/// names one.
pub fn target(method: &str, arg: &[u8]) -> Option<Principal> {
    match method {
        "provisional_create_canister_with_cycles" => None,
        "install_code" => Decode!(arg, InstallCodeArgs).ok().map(|a| a.canister_id),
        "update_settings" => Decode!(arg, UpdateSettingsArgs).ok().map(|a| a.canister_id),
        _ => Decode!(arg, CanisterIdRecord).ok().map(|a| a.canister_id),
    }
}

fn bad_arg(method: &str, e: impl std::fmt::Display) -> Reject {
    Reject::new(
        5,
        "IC0504",
        format!("management canister: the argument of {method} is not valid Candid for it: {e}"),
    )
}

fn encode<T: CandidType>(v: &T) -> Result<Vec<u8>, Reject> {
    Encode!(v).map_err(|e| Reject::new(1, "IC0504", format!("encoding the reply: {e}")))
}

/// Run a management method for an ingress call; the Candid reply or the reject.
pub fn call(state: &mut State, c: &Call) -> Result<Vec<u8>, Reject> {
    match c.method {
        "provisional_create_canister_with_cycles" => create(state, c),
        "install_code" => install(state, c),
        "canister_status" => status(state, c),
        "start_canister" => set_status(state, c, CanisterStatusType::Running),
        "stop_canister" => set_status(state, c, CanisterStatusType::Stopped),
        "delete_canister" => delete(state, c),
        "update_settings" => update_settings(state, c),
        "create_canister" => Err(Reject::new(
            4,
            "IC0406",
            "create_canister is for canisters; from outside use provisional_create_canister_with_cycles",
        )),
        other => Err(Reject::new(
            3,
            "IC0536",
            format!("the management canister has no method `{other}` on this replica"),
        )),
    }
}

fn create(state: &mut State, c: &Call) -> Result<Vec<u8>, Reject> {
    let a = Decode!(c.arg, ProvisionalCreateCanisterWithCyclesArgs)
        .map_err(|e| bad_arg(c.method, e))?;
    let id = match a.specified_id {
        Some(id) => {
            let ok = certified_state::canister_index(&id)
                .is_some_and(|i| (c.range.0..=c.range.1).contains(&i));
            if !ok || state.canisters.contains_key(&id) {
                return Err(Reject::new(
                    4,
                    "IC0406",
                    format!("specified_id {id} is taken or not in this subnet's canister ranges"),
                ));
            }
            id
        }
        None => next_free(state, c.range)?,
    };
    let controllers = a
        .settings
        .and_then(|s| s.controllers)
        .unwrap_or_else(|| vec![c.sender]);
    state.canisters.insert(id, Canister::new(id, controllers));
    state.refresh(&id);
    encode(&CanisterIdRecord { canister_id: id })
}

fn next_free(state: &State, range: (u64, u64)) -> Result<Principal, Reject> {
    (range.0..=range.1)
        .map(certified_state::canister_id)
        .find(|id| !state.canisters.contains_key(id))
        .ok_or_else(|| Reject::new(2, "IC0501", "this subnet has no canister ids left"))
}

/// Management methods answered as queries (ic-utils asks `canister_status` that way).
pub fn query(state: &State, c: &Call) -> Result<Vec<u8>, Reject> {
    match c.method {
        "canister_status" => status(state, c),
        other => Err(Reject::new(
            3,
            "IC0536",
            format!("the management canister has no query method `{other}`"),
        )),
    }
}

fn check_controller(c: &Canister, sender: &Principal) -> Result<(), Reject> {
    if c.is_controller(sender) {
        return Ok(());
    }
    Err(Reject::new(
        5,
        "IC0512",
        format!(
            "only the controllers of canister {} can do this; {sender} is not one",
            c.id
        ),
    ))
}

/// The canister `id`, if `sender` controls it.
fn controlled<'s>(
    state: &'s mut State,
    id: &Principal,
    sender: &Principal,
) -> Result<&'s mut Canister, Reject> {
    let c = state.canisters.get_mut(id).ok_or_else(|| not_found(id))?;
    check_controller(c, sender)?;
    Ok(c)
}

fn install(state: &mut State, c: &Call) -> Result<Vec<u8>, Reject> {
    let a = Decode!(c.arg, InstallCodeArgs).map_err(|e| bad_arg(c.method, e))?;
    let code = c
        .runtime
        .compile(&a.wasm_module)
        .map_err(|e| Reject::new(5, "IC0505", format!("the module cannot be installed: {e}")))?;
    let canister = controlled(state, &a.canister_id, &c.sender)?;
    let installed = Installed {
        wasm: Arc::new(a.wasm_module),
        code,
    };
    let ctx = Context {
        version: canister.version + 1,
        ..crate::context(canister, &c.sender, &a.arg, c.now)
    };
    let stable = match a.mode {
        CanisterInstallMode::Install if canister.code.is_some() => {
            return Err(Reject::new(
                5,
                "IC0538",
                format!(
                    "canister {} already has code: use mode reinstall or upgrade",
                    canister.id
                ),
            ))
        }
        CanisterInstallMode::Install | CanisterInstallMode::Reinstall => Vec::new(),
        CanisterInstallMode::Upgrade(flags) => {
            let flags = flags.unwrap_or_default();
            if flags.wasm_memory_persistence
                == Some(ic_management_canister_types::WasmMemoryPersistence::Keep)
            {
                return Err(Reject::new(
                    5,
                    "IC0504",
                    "wasm_memory_persistence = keep (enhanced orthogonal persistence) is not supported",
                ));
            }
            pre_upgrade(
                c.runtime,
                canister,
                &ctx,
                flags.skip_pre_upgrade == Some(true),
            )?
        }
    };
    let entry = if matches!(a.mode, CanisterInstallMode::Upgrade(_)) {
        Entry::PostUpgrade
    } else {
        Entry::Init
    };
    let start = CanisterMemory {
        stable,
        ..Default::default()
    };
    let e = c
        .runtime
        .execute(&installed.code, &start, &entry, &ctx)
        .map_err(|e| Reject::new(1, "IC0502", e.to_string()))?;
    match (e.outcome, e.memory) {
        (Outcome::Done, Some(memory)) => {
            canister.memory = std::sync::Arc::new(memory);
            canister.code = Some(installed);
            canister.version += 1;
            if let Some(d) = e.certified_data {
                canister.certified_data = d;
            } else if entry == Entry::Init {
                canister.certified_data.clear();
            }
            let id = canister.id;
            state.refresh(&id);
            encode(&())
        }
        (Outcome::Trap(t), _) => Err(Reject::new(
            5,
            "IC0503",
            format!(
                "installing code on canister {}: {t}; nothing was changed",
                a.canister_id
            ),
        )),
        (other, _) => Err(Reject::new(
            5,
            "IC0504",
            format!("installing code: unexpected outcome {other:?}"),
        )),
    }
}

/// Run `canister_pre_upgrade` on the old code; the stable memory it leaves.
fn pre_upgrade(
    rt: &Runtime,
    canister: &Canister,
    ctx: &Context,
    skip: bool,
) -> Result<Vec<u8>, Reject> {
    let Some(old) = &canister.code else {
        return Err(Reject::new(
            5,
            "IC0537",
            format!(
                "canister {} has no code to upgrade: use mode install",
                canister.id
            ),
        ));
    };
    if skip {
        return Ok(canister.memory.stable.clone());
    }
    let ctx = Context {
        arg: Vec::new(),
        ..ctx.clone()
    };
    let e = rt
        .execute(&old.code, &canister.memory, &Entry::PreUpgrade, &ctx)
        .map_err(|e| Reject::new(1, "IC0502", e.to_string()))?;
    match (e.outcome, e.memory) {
        (Outcome::Done, Some(m)) => Ok(m.stable),
        (Outcome::Trap(t), _) => Err(Reject::new(
            5,
            "IC0503",
            format!(
                "pre_upgrade of canister {} failed: {t}; the canister is unchanged",
                canister.id
            ),
        )),
        (other, _) => Err(Reject::new(5, "IC0504", format!("pre_upgrade: {other:?}"))),
    }
}

fn status(state: &State, c: &Call) -> Result<Vec<u8>, Reject> {
    let a = Decode!(c.arg, CanisterIdRecord).map_err(|e| bad_arg(c.method, e))?;
    let canister = state
        .canisters
        .get(&a.canister_id)
        .ok_or_else(|| not_found(&a.canister_id))?;
    check_controller(canister, &c.sender)?;
    let heap = canister.memory.heap.len();
    let stable = canister.memory.stable.len();
    let wasm = canister.code.as_ref().map_or(0, |i| i.wasm.len());
    let zero = || Nat::from(0u8);
    encode(&CanisterStatusResult {
        status: canister.status,
        ready_for_migration: false,
        version: canister.version,
        settings: canister.settings.clone(),
        module_hash: canister.code.as_ref().map(|i| i.code.module_hash.to_vec()),
        memory_size: Nat::from(heap + stable + wasm),
        memory_metrics: MemoryMetrics {
            wasm_memory_size: Nat::from(heap),
            stable_memory_size: Nat::from(stable),
            global_memory_size: Nat::from(canister.memory.globals.len() * 8),
            wasm_binary_size: Nat::from(wasm),
            custom_sections_size: zero(),
            canister_history_size: zero(),
            wasm_chunk_store_size: zero(),
            snapshots_size: zero(),
            log_memory_store_size: zero(),
        },
        cycles: zero(),
        reserved_cycles: zero(),
        idle_cycles_burned_per_day: zero(),
        query_stats: QueryStats {
            num_calls_total: zero(),
            num_instructions_total: zero(),
            request_payload_bytes_total: zero(),
            response_payload_bytes_total: zero(),
        },
    })
}

fn set_status(state: &mut State, c: &Call, to: CanisterStatusType) -> Result<Vec<u8>, Reject> {
    let a = Decode!(c.arg, CanisterIdRecord).map_err(|e| bad_arg(c.method, e))?;
    // Calls run to completion one at a time here, so stopping has nothing to wait for.
    controlled(state, &a.canister_id, &c.sender)?.status = to;
    encode(&())
}

fn delete(state: &mut State, c: &Call) -> Result<Vec<u8>, Reject> {
    let a = Decode!(c.arg, CanisterIdRecord).map_err(|e| bad_arg(c.method, e))?;
    let canister = controlled(state, &a.canister_id, &c.sender)?;
    if canister.status != CanisterStatusType::Stopped {
        return Err(Reject::new(
            5,
            "IC0510",
            format!(
                "canister {} must be stopped before it is deleted",
                a.canister_id
            ),
        ));
    }
    state.canisters.remove(&a.canister_id);
    state.refresh(&a.canister_id);
    encode(&())
}

fn update_settings(state: &mut State, c: &Call) -> Result<Vec<u8>, Reject> {
    let a = Decode!(c.arg, UpdateSettingsArgs).map_err(|e| bad_arg(c.method, e))?;
    let canister = controlled(state, &a.canister_id, &c.sender)?;
    let s = a.settings;
    if let Some(ctl) = s.controllers {
        if ctl.len() > 10 {
            return Err(Reject::new(5, "IC0504", "at most 10 controllers"));
        }
        canister.settings.controllers = ctl;
    }
    if let Some(f) = s.freezing_threshold {
        canister.settings.freezing_threshold = f;
    }
    if let Some(m) = s.wasm_memory_limit {
        canister.settings.wasm_memory_limit = m;
    }
    canister.version += 1;
    let id = canister.id;
    state.refresh(&id);
    encode(&())
}
