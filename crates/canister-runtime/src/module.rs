//! What a canister module must be before it runs, and the one rewrite it gets.
//!
//! The module is read with `wasmparser` and checked: a core module (not a component), no
//! imports but the `ic0` functions this runtime provides (with their exact types), no
//! imported memories, tables or globals, every `canister_*` export a function of type
//! `[] -> []`, no method both an update and a query, no entry points this replica does not
//! run (heartbeat, timers).
//!
//! Then it is rewritten, section by section (every other section copied byte for byte):
//! its memory and every mutable global are exported under reserved names, so the runtime can
//! save and restore them around each message (the IC does the same by instrumentation), and
//! the start function is taken out of the start section, so it runs once at install rather
//! than on every instantiation.

use crate::ic0;
use std::collections::BTreeSet;
use wasm_encoder::{ExportKind, ExportSection, RawSection};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef, ValType};

/// The memory export the runtime reads and writes.
pub(crate) const MEMORY_EXPORT: &str = "__icos_memory";
/// The start function, run once at install instead of at every instantiation.
pub(crate) const START_EXPORT: &str = "__icos_start";
/// Prefix of the global exports; the global's index follows.
pub(crate) const GLOBAL_EXPORT: &str = "__icos_global_";
/// The largest module accepted (the IC's limit for an uncompressed module is 100 MiB).
pub const MAX_MODULE_BYTES: usize = 100 << 20;

/// Why a module cannot be installed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModuleError {
    #[error("the module is {0} bytes, more than the {MAX_MODULE_BYTES} accepted")]
    TooLarge(usize),
    #[error("the module is gzip-compressed; this replica takes uncompressed Wasm")]
    Gzipped,
    #[error("not a valid Wasm module: {0}")]
    Malformed(String),
    #[error("the module is a Wasm component; canisters are core modules")]
    Component,
    #[error("the module imports {0}, which this replica does not provide")]
    UnknownImport(String),
    #[error(
        "the module imports ic0.{name} with type {found}; the system API's type is {expected}"
    )]
    ImportType {
        name: String,
        found: String,
        expected: String,
    },
    #[error("the module imports a {0}; canisters define their own memory, tables and globals")]
    ImportedNonFunction(&'static str),
    #[error("the export `{0}` is not a function of type [] -> []")]
    EntryPointType(String),
    #[error("`{0}` is exported as both an update and a query method")]
    MethodTwice(String),
    #[error("the module exports `{0}`: this replica does not run heartbeats or timers")]
    Unsupported(String),
    #[error("the module exports `{0}`, a name this replica reserves")]
    Reserved(String),
    #[error("the module declares more than one memory")]
    MultiMemory,
}

/// The entry points a module exports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Methods {
    pub updates: BTreeSet<String>,
    pub queries: BTreeSet<String>,
    pub init: bool,
    pub pre_upgrade: bool,
    pub post_upgrade: bool,
    pub inspect_message: bool,
}

/// A mutable global the runtime saves between messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SavedGlobal {
    pub index: u32,
    pub ty: ValType,
}

/// A checked module, rewritten for the runtime.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub wasm: Vec<u8>,
    /// The module had a start function (exported as [`START_EXPORT`]).
    pub has_start: bool,
    /// The `ic0` functions it imports.
    pub imports: BTreeSet<String>,
    pub globals: Vec<SavedGlobal>,
    pub methods: Methods,
}

#[derive(Default)]
struct Reading<'a> {
    types: Vec<wasmparser::FuncType>,
    /// Type index of every function, imported ones first.
    funcs: Vec<u32>,
    globals: Vec<SavedGlobal>,
    memories: u32,
    exports: Vec<(&'a str, ExternalKind, u32)>,
    start: Option<u32>,
    imports: BTreeSet<String>,
}

/// Check `wasm` and rewrite it (see the module doc).
pub(crate) fn prepare(wasm: &[u8]) -> Result<Prepared, ModuleError> {
    if wasm.len() > MAX_MODULE_BYTES {
        return Err(ModuleError::TooLarge(wasm.len()));
    }
    if wasm.starts_with(&[0x1f, 0x8b]) {
        return Err(ModuleError::Gzipped);
    }
    let malformed = |e: wasmparser::BinaryReaderError| ModuleError::Malformed(e.to_string());
    let mut r = Reading::default();
    let mut sections: Vec<(u8, std::ops::Range<usize>)> = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(malformed)?;
        if let Some(section) = payload.as_section() {
            sections.push(section);
        }
        read_payload(&mut r, payload)?;
    }
    let methods = methods(&r)?;
    let wasm = rewrite(wasm, &sections, &r);
    Ok(Prepared {
        wasm,
        has_start: r.start.is_some(),
        imports: r.imports,
        globals: r.globals,
        methods,
    })
}

fn read_payload<'a>(r: &mut Reading<'a>, payload: Payload<'a>) -> Result<(), ModuleError> {
    let malformed = |e: wasmparser::BinaryReaderError| ModuleError::Malformed(e.to_string());
    match payload {
        Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Module => {
            return Err(ModuleError::Component);
        }
        Payload::TypeSection(s) => {
            for t in s.into_iter_err_on_gc_types() {
                r.types.push(t.map_err(malformed)?);
            }
        }
        Payload::ImportSection(s) => {
            for i in s {
                let i = i.map_err(malformed)?;
                match i.ty {
                    TypeRef::Func(t) => {
                        check_import(r, i.module, i.name, t)?;
                        r.imports.insert(i.name.to_string());
                        r.funcs.push(t);
                    }
                    TypeRef::Memory(_) => return Err(ModuleError::ImportedNonFunction("memory")),
                    TypeRef::Table(_) => return Err(ModuleError::ImportedNonFunction("table")),
                    TypeRef::Global(_) => return Err(ModuleError::ImportedNonFunction("global")),
                    TypeRef::Tag(_) => return Err(ModuleError::ImportedNonFunction("tag")),
                }
            }
        }
        Payload::FunctionSection(s) => {
            for t in s {
                r.funcs.push(t.map_err(malformed)?);
            }
        }
        Payload::MemorySection(s) => {
            r.memories += s.count();
            if r.memories > 1 {
                return Err(ModuleError::MultiMemory);
            }
        }
        Payload::GlobalSection(s) => {
            for (i, g) in s.into_iter().enumerate() {
                let g = g.map_err(malformed)?;
                if g.ty.mutable {
                    r.globals.push(SavedGlobal {
                        // No imported globals (refused), so indices start at 0.
                        index: i as u32,
                        ty: g.ty.content_type,
                    });
                }
            }
        }
        Payload::ExportSection(s) => {
            for e in s {
                let e = e.map_err(malformed)?;
                if e.name.starts_with("__icos_") {
                    return Err(ModuleError::Reserved(e.name.to_string()));
                }
                r.exports.push((e.name, e.kind, e.index));
            }
        }
        Payload::StartSection { func, .. } => r.start = Some(func),
        _ => {}
    }
    Ok(())
}

fn type_text(params: &[ValType], results: &[ValType]) -> String {
    let list = |v: &[ValType]| {
        v.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!("[{}] -> [{}]", list(params), list(results))
}

fn check_import(r: &Reading, module: &str, name: &str, ty: u32) -> Result<(), ModuleError> {
    let Some(api) = (module == "ic0").then(|| ic0::signature(name)).flatten() else {
        return Err(ModuleError::UnknownImport(format!("{module}.{name}")));
    };
    let found = r
        .types
        .get(ty as usize)
        .ok_or_else(|| ModuleError::Malformed(format!("import {module}.{name}: no type {ty}")))?;
    if found.params() != api.0 || found.results() != api.1 {
        return Err(ModuleError::ImportType {
            name: name.to_string(),
            found: type_text(found.params(), found.results()),
            expected: type_text(api.0, api.1),
        });
    }
    Ok(())
}

/// The entry points, each checked to be a `[] -> []` function.
fn methods(r: &Reading) -> Result<Methods, ModuleError> {
    let mut m = Methods::default();
    for &(name, kind, index) in &r.exports {
        let Some(entry) = name.strip_prefix("canister_") else {
            continue;
        };
        let unit = kind == ExternalKind::Func
            && r.funcs
                .get(index as usize)
                .and_then(|t| r.types.get(*t as usize))
                .is_some_and(|t| t.params().is_empty() && t.results().is_empty());
        if !unit {
            return Err(ModuleError::EntryPointType(name.to_string()));
        }
        let (kind, method) = entry.split_once(' ').unwrap_or((entry, ""));
        match kind {
            "init" => m.init = true,
            "pre_upgrade" => m.pre_upgrade = true,
            "post_upgrade" => m.post_upgrade = true,
            "inspect_message" => m.inspect_message = true,
            "update" => {
                m.updates.insert(method.to_string());
            }
            // A composite query that makes no calls is a query; this replica makes none.
            "query" | "composite_query" => {
                m.queries.insert(method.to_string());
            }
            "heartbeat" | "global_timer" | "on_low_wasm_memory" => {
                return Err(ModuleError::Unsupported(name.to_string()))
            }
            _ => {}
        }
    }
    if let Some(both) = m.updates.intersection(&m.queries).next() {
        return Err(ModuleError::MethodTwice(both.clone()));
    }
    Ok(m)
}

/// Whether section `id` comes after the export section in a module's order.
fn after_exports(id: u8) -> bool {
    // start 8, element 9, code 10, data 11, data count 12
    (8..=12).contains(&id)
}

fn rewrite(wasm: &[u8], sections: &[(u8, std::ops::Range<usize>)], r: &Reading) -> Vec<u8> {
    let mut exports = ExportSection::new();
    for &(name, kind, index) in &r.exports {
        let kind = match kind {
            ExternalKind::Func => ExportKind::Func,
            ExternalKind::Table => ExportKind::Table,
            ExternalKind::Memory => ExportKind::Memory,
            ExternalKind::Global => ExportKind::Global,
            ExternalKind::Tag => ExportKind::Tag,
        };
        exports.export(name, kind, index);
    }
    if r.memories == 1 {
        exports.export(MEMORY_EXPORT, ExportKind::Memory, 0);
    }
    for g in &r.globals {
        exports.export(
            &format!("{GLOBAL_EXPORT}{}", g.index),
            ExportKind::Global,
            g.index,
        );
    }
    if let Some(f) = r.start {
        exports.export(START_EXPORT, ExportKind::Func, f);
    }
    let mut out = wasm_encoder::Module::new();
    let mut exported = false;
    for (id, range) in sections {
        let id = *id;
        if id == 7 || (!exported && after_exports(id)) {
            out.section(&exports);
            exported = true;
        }
        if id == 7 || id == 8 {
            continue; // the export section rebuilt above; the start function runs at install
        }
        out.section(&RawSection {
            id,
            data: &wasm[range.clone()],
        });
    }
    if !exported {
        out.section(&exports);
    }
    out.finish()
}
