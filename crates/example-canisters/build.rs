//! Compiles the C canisters with clang's wasm32 target: no C library, no entry point, no
//! debug sections, so the module depends only on the source and the compiler version.

use std::path::PathBuf;
use std::process::Command;

const C_CANISTERS: &[&str] = &["assets"];

fn main() {
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../canisters");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    println!("cargo:rerun-if-env-changed=CLANG");
    for name in C_CANISTERS {
        let c = src.join(format!("{name}.c"));
        println!("cargo:rerun-if-changed={}", c.display());
        let status = Command::new(&clang)
            .args([
                "--target=wasm32-unknown-unknown",
                "-O2",
                "-nostdlib",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-Wl,--no-entry",
                "-Wl,--strip-all",
                "-o",
            ])
            .arg(out.join(format!("{name}.wasm")))
            .arg(&c)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "building the {name} canister needs clang and lld (for the wasm32 target): \
                     `{clang}` could not be started ({e}); ./scripts/setup.sh installs them"
                )
            });
        assert!(status.success(), "clang could not compile {}", c.display());
    }
}
