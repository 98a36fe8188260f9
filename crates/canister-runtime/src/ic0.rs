//! The `ic0` system API: the functions a canister imports, their types, where each may be
//! called (the interface specification's table, for the entry points this replica runs), and
//! what each costs in instructions.

use crate::module::MEMORY_EXPORT;
use crate::{EntryKind, Limits};
use wasmparser::ValType::{self, I32, I64};
use wasmtime::{Caller, Linker};

/// The largest reply or reject message (the IC's response limit).
pub const MAX_RESPONSE_BYTES: usize = 2 << 20;
/// Stable memory and Wasm heap pages are 64 KiB.
pub const PAGE: u64 = 64 << 10;
/// At most this many `debug_print` lines are kept per message (each cut to 1 KiB).
const MAX_PRINTS: usize = 100;
/// Instructions charged per system call, plus one per `BYTES_PER_INSTRUCTION` copied.
const CALL_COST: u64 = 50;
const BYTES_PER_INSTRUCTION: u64 = 8;

type Sig = (&'static [ValType], &'static [ValType]);

/// Every function of the system API this replica provides.
pub const NAMES: &[&str] = &[
    "msg_arg_data_size",
    "msg_arg_data_copy",
    "msg_caller_size",
    "msg_caller_copy",
    "msg_method_name_size",
    "msg_method_name_copy",
    "accept_message",
    "msg_reply_data_append",
    "msg_reply",
    "msg_reject",
    "canister_self_size",
    "canister_self_copy",
    "canister_status",
    "canister_version",
    "time",
    "performance_counter",
    "is_controller",
    "in_replicated_execution",
    "certified_data_set",
    "data_certificate_present",
    "data_certificate_size",
    "data_certificate_copy",
    "debug_print",
    "trap",
    "stable_size",
    "stable_grow",
    "stable_read",
    "stable_write",
    "stable64_size",
    "stable64_grow",
    "stable64_read",
    "stable64_write",
];

/// The type of `ic0.<name>`, if this replica provides it.
pub fn signature(name: &str) -> Option<Sig> {
    Some(match name {
        "msg_arg_data_size"
        | "msg_caller_size"
        | "msg_method_name_size"
        | "canister_self_size"
        | "canister_status"
        | "in_replicated_execution"
        | "data_certificate_present"
        | "data_certificate_size"
        | "stable_size" => (&[], &[I32]),
        "msg_arg_data_copy"
        | "msg_caller_copy"
        | "msg_method_name_copy"
        | "canister_self_copy"
        | "data_certificate_copy"
        | "stable_read"
        | "stable_write" => (&[I32, I32, I32], &[]),
        "msg_reply_data_append" | "msg_reject" | "certified_data_set" | "debug_print" | "trap" => {
            (&[I32, I32], &[])
        }
        "msg_reply" | "accept_message" => (&[], &[]),
        "time" | "canister_version" | "stable64_size" => (&[], &[I64]),
        "performance_counter" => (&[I32], &[I64]),
        "is_controller" => (&[I32, I32], &[I32]),
        "stable_grow" => (&[I32], &[I32]),
        "stable64_grow" => (&[I64], &[I64]),
        "stable64_read" | "stable64_write" => (&[I64, I64, I64], &[]),
        _ => return None,
    })
}

/// Why a host call stopped the message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostTrap {
    /// The canister called `ic0.trap`.
    #[error("{0}")]
    Explicit(String),
    /// The canister used the system API wrongly.
    #[error("{0}")]
    Api(String),
    #[error("the instruction limit was reached in a system call")]
    Instructions,
}

fn api(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(HostTrap::Api(msg.into()))
}

/// How a message ended on the canister's side (before it returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    Reply(Vec<u8>),
    Reject(String),
}

/// What a message sees and what it changes, kept in the wasmtime store.
pub(crate) struct Host {
    pub limits: wasmtime::StoreLimits,
    pub kind: EntryKind,
    pub method: String,
    pub arg: Vec<u8>,
    pub caller: Vec<u8>,
    pub canister_id: Vec<u8>,
    pub controllers: Vec<Vec<u8>>,
    pub time_ns: u64,
    pub status: u32,
    pub version: u64,
    pub data_certificate: Option<Vec<u8>>,
    pub fuel_limit: u64,
    pub stable_max: u64,
    pub stable: Vec<u8>,
    pub reply: Vec<u8>,
    pub response: Option<Response>,
    pub certified_data: Option<Vec<u8>>,
    pub accepted: bool,
    pub prints: Vec<String>,
}

impl Host {
    pub fn new(limits: &Limits, kind: EntryKind, fuel_limit: u64) -> Host {
        Host {
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(limits.heap_bytes)
                .memories(1)
                .tables(4)
                .table_elements(1 << 20)
                .instances(1)
                .build(),
            kind,
            method: String::new(),
            arg: Vec::new(),
            caller: Vec::new(),
            canister_id: Vec::new(),
            controllers: Vec::new(),
            time_ns: 0,
            status: 1,
            version: 0,
            data_certificate: None,
            fuel_limit,
            stable_max: limits.stable_bytes,
            stable: Vec::new(),
            reply: Vec::new(),
            response: None,
            certified_data: None,
            accepted: false,
            prints: Vec::new(),
        }
    }
}

use EntryKind::*;
const NOT_START: &[EntryKind] = &[Init, PreUpgrade, PostUpgrade, Update, Query, InspectMessage];
const WITH_ARG: &[EntryKind] = &[Init, PostUpgrade, Update, Query, InspectMessage];
const RESPONDS: &[EntryKind] = &[Update, Query];
const CERTIFIES: &[EntryKind] = &[Init, PreUpgrade, PostUpgrade, Update];

/// Refuse a call from an entry point where the specification does not allow it.
fn allowed(c: &Caller<'_, Host>, name: &str, kinds: &[EntryKind]) -> wasmtime::Result<()> {
    let k = c.data().kind;
    if kinds.contains(&k) {
        Ok(())
    } else {
        Err(api(format!("ic0.{name} cannot be called in {k}")))
    }
}

/// Take `units` instructions from the message's budget.
fn charge(c: &mut Caller<'_, Host>, units: u64) -> wasmtime::Result<()> {
    let left = c.get_fuel()?;
    if left < units {
        c.set_fuel(0)?;
        return Err(anyhow::Error::new(HostTrap::Instructions));
    }
    c.set_fuel(left - units)?;
    Ok(())
}

fn copy_cost(bytes: u64) -> u64 {
    CALL_COST + bytes / BYTES_PER_INSTRUCTION
}

fn memory(c: &mut Caller<'_, Host>, name: &str) -> wasmtime::Result<wasmtime::Memory> {
    c.get_export(MEMORY_EXPORT)
        .and_then(wasmtime::Extern::into_memory)
        .ok_or_else(|| api(format!("ic0.{name}: the canister has no memory")))
}

/// Read `size` bytes of the heap at `src`, bounds checked before anything is allocated.
fn read_heap(
    c: &mut Caller<'_, Host>,
    name: &str,
    src: u64,
    size: u64,
) -> wasmtime::Result<Vec<u8>> {
    charge(c, copy_cost(size))?;
    let m = memory(c, name)?;
    let end = src
        .checked_add(size)
        .filter(|e| *e <= m.data_size(&*c) as u64);
    let Some(end) = end else {
        return Err(api(format!(
            "ic0.{name}: heap bytes {src}..{} are outside the heap of {} bytes",
            src.saturating_add(size),
            m.data_size(&*c)
        )));
    };
    Ok(m.data(&*c)[src as usize..end as usize].to_vec())
}

fn write_heap(
    c: &mut Caller<'_, Host>,
    name: &str,
    dst: u64,
    bytes: &[u8],
) -> wasmtime::Result<()> {
    charge(c, copy_cost(bytes.len() as u64))?;
    let m = memory(c, name)?;
    let size = m.data_size(&*c) as u64;
    let end = dst.checked_add(bytes.len() as u64).filter(|e| *e <= size);
    let Some(end) = end else {
        return Err(api(format!(
            "ic0.{name}: heap bytes {dst}..{} are outside the heap of {size} bytes",
            dst.saturating_add(bytes.len() as u64)
        )));
    };
    m.data_mut(&mut *c)[dst as usize..end as usize].copy_from_slice(bytes);
    Ok(())
}

/// `<name>_copy(dst, offset, size)`: bytes `offset..offset+size` of a blob into the heap.
fn copy_out(
    c: &mut Caller<'_, Host>,
    name: &str,
    blob: impl Fn(&Host) -> &[u8],
    (dst, offset, size): (u64, u64, u64),
) -> wasmtime::Result<()> {
    let data = blob(c.data());
    let end = offset.checked_add(size).filter(|e| *e <= data.len() as u64);
    let Some(end) = end else {
        return Err(api(format!(
            "ic0.{name}: bytes {offset}..{} asked of {} bytes",
            offset.saturating_add(size),
            data.len()
        )));
    };
    let bytes = data[offset as usize..end as usize].to_vec();
    write_heap(c, name, dst, &bytes)
}

fn u(x: i32) -> u64 {
    x as u32 as u64
}

fn respond(c: &mut Caller<'_, Host>, name: &str, r: Response) -> wasmtime::Result<()> {
    allowed(c, name, RESPONDS)?;
    if c.data().response.is_some() {
        return Err(api(format!("ic0.{name}: the message was already answered")));
    }
    c.data_mut().response = Some(r);
    Ok(())
}

fn stable_grow(h: &mut Host, pages: u64) -> i64 {
    let old = h.stable.len() as u64 / PAGE;
    match pages
        .checked_add(old)
        .and_then(|n| n.checked_mul(PAGE))
        .filter(|b| *b <= h.stable_max)
    {
        Some(bytes) => {
            h.stable.resize(bytes as usize, 0);
            old as i64
        }
        None => -1,
    }
}

fn stable_range(
    h: &Host,
    name: &str,
    offset: u64,
    size: u64,
) -> wasmtime::Result<std::ops::Range<usize>> {
    match offset
        .checked_add(size)
        .filter(|e| *e <= h.stable.len() as u64)
    {
        Some(end) => Ok(offset as usize..end as usize),
        None => Err(api(format!(
            "ic0.{name}: stable bytes {offset}..{} are outside stable memory of {} bytes",
            offset.saturating_add(size),
            h.stable.len()
        ))),
    }
}

fn stable_read(
    c: &mut Caller<'_, Host>,
    name: &str,
    dst: u64,
    offset: u64,
    size: u64,
) -> wasmtime::Result<()> {
    allowed(c, name, NOT_START)?;
    let r = stable_range(c.data(), name, offset, size)?;
    let bytes = c.data().stable[r].to_vec();
    write_heap(c, name, dst, &bytes)
}

fn stable_write(
    c: &mut Caller<'_, Host>,
    name: &str,
    offset: u64,
    src: u64,
    size: u64,
) -> wasmtime::Result<()> {
    allowed(c, name, NOT_START)?;
    let r = stable_range(c.data(), name, offset, size)?;
    let bytes = read_heap(c, name, src, size)?;
    c.data_mut().stable[r].copy_from_slice(&bytes);
    Ok(())
}

/// Register every function of [`signature`] (a test checks the two agree).
pub(crate) fn link(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap("ic0", "msg_arg_data_size", |c: Caller<'_, Host>| {
        allowed(&c, "msg_arg_data_size", WITH_ARG)?;
        Ok(c.data().arg.len() as i32)
    })?;
    l.func_wrap(
        "ic0",
        "msg_arg_data_copy",
        |mut c: Caller<'_, Host>, d: i32, o: i32, s: i32| {
            allowed(&c, "msg_arg_data_copy", WITH_ARG)?;
            copy_out(&mut c, "msg_arg_data_copy", |h| &h.arg, (u(d), u(o), u(s)))
        },
    )?;
    l.func_wrap("ic0", "msg_caller_size", |c: Caller<'_, Host>| {
        allowed(&c, "msg_caller_size", NOT_START)?;
        Ok(c.data().caller.len() as i32)
    })?;
    l.func_wrap(
        "ic0",
        "msg_caller_copy",
        |mut c: Caller<'_, Host>, d: i32, o: i32, s: i32| {
            allowed(&c, "msg_caller_copy", NOT_START)?;
            copy_out(&mut c, "msg_caller_copy", |h| &h.caller, (u(d), u(o), u(s)))
        },
    )?;
    l.func_wrap("ic0", "msg_method_name_size", |c: Caller<'_, Host>| {
        allowed(&c, "msg_method_name_size", &[InspectMessage])?;
        Ok(c.data().method.len() as i32)
    })?;
    l.func_wrap(
        "ic0",
        "msg_method_name_copy",
        |mut c: Caller<'_, Host>, d: i32, o: i32, s: i32| {
            allowed(&c, "msg_method_name_copy", &[InspectMessage])?;
            copy_out(
                &mut c,
                "msg_method_name_copy",
                |h| h.method.as_bytes(),
                (u(d), u(o), u(s)),
            )
        },
    )?;
    l.func_wrap("ic0", "accept_message", |mut c: Caller<'_, Host>| {
        allowed(&c, "accept_message", &[InspectMessage])?;
        if c.data().accepted {
            return Err(api("ic0.accept_message: the message was already accepted"));
        }
        c.data_mut().accepted = true;
        Ok(())
    })?;
    l.func_wrap(
        "ic0",
        "msg_reply_data_append",
        |mut c: Caller<'_, Host>, src: i32, size: i32| {
            allowed(&c, "msg_reply_data_append", RESPONDS)?;
            if c.data().response.is_some() {
                return Err(api(
                    "ic0.msg_reply_data_append: the message was already answered",
                ));
            }
            if c.data().reply.len() as u64 + u(size) > MAX_RESPONSE_BYTES as u64 {
                return Err(api(format!(
                    "ic0.msg_reply_data_append: the reply would exceed {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            let bytes = read_heap(&mut c, "msg_reply_data_append", u(src), u(size))?;
            c.data_mut().reply.extend_from_slice(&bytes);
            Ok(())
        },
    )?;
    l.func_wrap("ic0", "msg_reply", |mut c: Caller<'_, Host>| {
        let data = std::mem::take(&mut c.data_mut().reply);
        respond(&mut c, "msg_reply", Response::Reply(data))
    })?;
    l.func_wrap(
        "ic0",
        "msg_reject",
        |mut c: Caller<'_, Host>, src: i32, size: i32| {
            allowed(&c, "msg_reject", RESPONDS)?;
            if u(size) > MAX_RESPONSE_BYTES as u64 {
                return Err(api(format!(
                    "ic0.msg_reject: the message exceeds {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            let bytes = read_heap(&mut c, "msg_reject", u(src), u(size))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| api("ic0.msg_reject: the message is not UTF-8"))?;
            respond(&mut c, "msg_reject", Response::Reject(text))
        },
    )?;
    l.func_wrap("ic0", "canister_self_size", |c: Caller<'_, Host>| {
        Ok(c.data().canister_id.len() as i32)
    })?;
    l.func_wrap(
        "ic0",
        "canister_self_copy",
        |mut c: Caller<'_, Host>, d: i32, o: i32, s: i32| {
            copy_out(
                &mut c,
                "canister_self_copy",
                |h| &h.canister_id,
                (u(d), u(o), u(s)),
            )
        },
    )?;
    l.func_wrap("ic0", "canister_status", |c: Caller<'_, Host>| {
        Ok(c.data().status as i32)
    })?;
    l.func_wrap("ic0", "canister_version", |c: Caller<'_, Host>| {
        Ok(c.data().version as i64)
    })?;
    l.func_wrap("ic0", "time", |c: Caller<'_, Host>| {
        Ok(c.data().time_ns as i64)
    })?;
    l.func_wrap(
        "ic0",
        "performance_counter",
        |c: Caller<'_, Host>, kind: i32| {
            if kind != 0 && kind != 1 {
                return Err(api(format!(
                    "ic0.performance_counter: unknown counter {kind}"
                )));
            }
            let used = c.data().fuel_limit.saturating_sub(c.get_fuel()?);
            Ok(used as i64)
        },
    )?;
    l.func_wrap(
        "ic0",
        "is_controller",
        |mut c: Caller<'_, Host>, src: i32, size: i32| {
            allowed(&c, "is_controller", NOT_START)?;
            if u(size) > 29 {
                return Err(api("ic0.is_controller: a principal is at most 29 bytes"));
            }
            let p = read_heap(&mut c, "is_controller", u(src), u(size))?;
            Ok(c.data().controllers.contains(&p) as i32)
        },
    )?;
    l.func_wrap("ic0", "in_replicated_execution", |c: Caller<'_, Host>| {
        Ok((!matches!(c.data().kind, Query | InspectMessage)) as i32)
    })?;
    l.func_wrap(
        "ic0",
        "certified_data_set",
        |mut c: Caller<'_, Host>, src: i32, size: i32| {
            allowed(&c, "certified_data_set", CERTIFIES)?;
            if u(size) > 32 {
                return Err(api(format!(
                    "ic0.certified_data_set: {} bytes, at most 32",
                    u(size)
                )));
            }
            let bytes = read_heap(&mut c, "certified_data_set", u(src), u(size))?;
            c.data_mut().certified_data = Some(bytes);
            Ok(())
        },
    )?;
    l.func_wrap("ic0", "data_certificate_present", |c: Caller<'_, Host>| {
        Ok(c.data().data_certificate.is_some() as i32)
    })?;
    l.func_wrap("ic0", "data_certificate_size", |c: Caller<'_, Host>| {
        allowed(&c, "data_certificate_size", &[Query])?;
        match &c.data().data_certificate {
            Some(d) => Ok(d.len() as i32),
            None => Err(api(
                "ic0.data_certificate_size: no certificate (this is not a query)",
            )),
        }
    })?;
    l.func_wrap(
        "ic0",
        "data_certificate_copy",
        |mut c: Caller<'_, Host>, d: i32, o: i32, s: i32| {
            allowed(&c, "data_certificate_copy", &[Query])?;
            if c.data().data_certificate.is_none() {
                return Err(api(
                    "ic0.data_certificate_copy: no certificate (this is not a query)",
                ));
            }
            copy_out(
                &mut c,
                "data_certificate_copy",
                |h| h.data_certificate.as_deref().unwrap_or_default(),
                (u(d), u(o), u(s)),
            )
        },
    )?;
    l.func_wrap(
        "ic0",
        "debug_print",
        |mut c: Caller<'_, Host>, src: i32, size: i32| {
            let size = u(size).min(1024);
            let bytes = read_heap(&mut c, "debug_print", u(src), size)?;
            let line = String::from_utf8_lossy(&bytes).into_owned();
            tracing::debug!(target: "canister", "{line}");
            let prints = &mut c.data_mut().prints;
            if prints.len() < MAX_PRINTS {
                prints.push(line);
            }
            Ok(())
        },
    )?;
    l.func_wrap(
        "ic0",
        "trap",
        |mut c: Caller<'_, Host>, src: i32, size: i32| {
            let size = u(size).min(16 << 10);
            let bytes = read_heap(&mut c, "trap", u(src), size)?;
            Err::<(), _>(anyhow::Error::new(HostTrap::Explicit(
                String::from_utf8_lossy(&bytes).into_owned(),
            )))
        },
    )?;
    link_stable(l)
}

fn link_stable(l: &mut Linker<Host>) -> wasmtime::Result<()> {
    l.func_wrap("ic0", "stable64_size", |c: Caller<'_, Host>| {
        allowed(&c, "stable64_size", NOT_START)?;
        Ok((c.data().stable.len() as u64 / PAGE) as i64)
    })?;
    l.func_wrap(
        "ic0",
        "stable64_grow",
        |mut c: Caller<'_, Host>, pages: i64| {
            allowed(&c, "stable64_grow", NOT_START)?;
            charge(&mut c, CALL_COST)?;
            Ok(stable_grow(c.data_mut(), pages as u64))
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable64_read",
        |mut c: Caller<'_, Host>, d: i64, o: i64, s: i64| {
            stable_read(&mut c, "stable64_read", d as u64, o as u64, s as u64)
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable64_write",
        |mut c: Caller<'_, Host>, o: i64, src: i64, s: i64| {
            stable_write(&mut c, "stable64_write", o as u64, src as u64, s as u64)
        },
    )?;
    // The 32-bit API sees at most 4 GiB of stable memory.
    l.func_wrap("ic0", "stable_size", |c: Caller<'_, Host>| {
        allowed(&c, "stable_size", NOT_START)?;
        let pages = c.data().stable.len() as u64 / PAGE;
        if pages > u64::from(u16::MAX) + 1 {
            return Err(api(
                "ic0.stable_size: stable memory is larger than 4 GiB; use stable64_size",
            ));
        }
        Ok(pages as i32)
    })?;
    l.func_wrap(
        "ic0",
        "stable_grow",
        |mut c: Caller<'_, Host>, pages: i32| {
            allowed(&c, "stable_grow", NOT_START)?;
            charge(&mut c, CALL_COST)?;
            let h = c.data_mut();
            if h.stable.len() as u64 / PAGE + u(pages) > u64::from(u16::MAX) + 1 {
                return Ok(-1);
            }
            Ok(stable_grow(h, u(pages)) as i32)
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable_read",
        |mut c: Caller<'_, Host>, d: i32, o: i32, s: i32| {
            stable_read(&mut c, "stable_read", u(d), u(o), u(s))
        },
    )?;
    l.func_wrap(
        "ic0",
        "stable_write",
        |mut c: Caller<'_, Host>, o: i32, src: i32, s: i32| {
            stable_write(&mut c, "stable_write", u(o), u(src), u(s))
        },
    )?;
    Ok(())
}
