//! The example canisters as Wasm modules. Their source lives in `canisters/` at the root of
//! the repository, where a developer reads it; this crate is how tests, benchmarks and the
//! CLI get the modules, so there is one build of each.
//!
//! ```
//! let counter = example_canisters::counter_wasm();
//! assert_eq!(&counter[..4], b"\0asm");
//! assert_eq!(&example_canisters::ballast_wasm()[..4], b"\0asm");
//! assert_eq!(&example_canisters::ASSETS_WASM[..4], b"\0asm");
//! ```

/// The counter canister as WebAssembly text (`canisters/counter.wat`).
pub const COUNTER_WAT: &str = include_str!("../../../canisters/counter.wat");

/// The ballast canister as WebAssembly text (`canisters/ballast.wat`): 64 MiB of distinct
/// stable memory per `grow` call, for benchmarks of large states.
pub const BALLAST_WAT: &str = include_str!("../../../canisters/ballast.wat");

/// The asset canister (`canisters/assets.c`), compiled by this crate's build script.
pub const ASSETS_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/assets.wasm"));

/// The counter canister as a Wasm module.
pub fn counter_wasm() -> Vec<u8> {
    // The text is part of this crate and checked by its doc test: it always parses.
    wat::parse_str(COUNTER_WAT).expect("canisters/counter.wat is valid WebAssembly text")
}

/// The ballast canister as a Wasm module.
pub fn ballast_wasm() -> Vec<u8> {
    // The text is part of this crate and checked by its doc test: it always parses.
    wat::parse_str(BALLAST_WAT).expect("canisters/ballast.wat is valid WebAssembly text")
}

/// Every example by name, as `icos canister examples` writes them.
pub fn all() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("counter", counter_wasm()),
        ("assets", ASSETS_WASM.to_vec()),
    ]
}
