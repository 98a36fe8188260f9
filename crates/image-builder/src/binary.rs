//! The binaries that go into every image, compiled from the same source tree as the
//! builder, in release mode, stripped, with source paths remapped so the bytes do not depend
//! on where the tree is checked out: the node binary `icos-node` (upgrade engine, node agents;
//! installed as `/usr/bin/icos`, without the developer commands or test hooks) in the root,
//! and the initramfs's `icos-init`, linked statically because the initramfs has no libraries.

use crate::progress::Progress;
use crate::BuildError;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The workspace the builder was compiled from (override with `ICOS_SOURCE`).
pub fn default_source_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("ICOS_SOURCE") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The binaries an image needs.
pub struct Binaries {
    /// The node binary (`icos-node`), installed as `/usr/bin/icos`.
    pub icos: PathBuf,
    pub init: PathBuf,
}

/// Build `icos-node` and `icos-init` for images; returns their paths.
pub fn build_binaries(
    source: &Path,
    cache: &Path,
    progress: &Progress,
) -> Result<Binaries, BuildError> {
    let source = source
        .canonicalize()
        .map_err(|e| BuildError::io("finding the icos source tree", source, e))?;
    if !source.join("Cargo.lock").is_file() || !source.join("crates/icos-node").is_dir() {
        return Err(BuildError::Invalid(format!(
            "{} is not the icos source tree (set ICOS_SOURCE); it is needed to build the icos binary for the image",
            source.display()
        )));
    }
    let target = cache.join("cargo-target-image");
    let build = |args: &[&str], extra_rustflags| {
        cargo_build(&source, &target, progress, args, extra_rustflags)
    };
    // Built alone, so no developer-only feature (the power-cut hooks) is unified into it.
    build(&["-p", "icos-node", "--bin", "icos-node"], None)?;
    // An explicit --target keeps the static flag off build scripts and proc macros.
    build(
        &[
            "-p",
            "boot-init",
            "--bin",
            "icos-init",
            "--target",
            STATIC_TARGET,
        ],
        Some("-C target-feature=+crt-static"),
    )?;
    Ok(Binaries {
        icos: target.join("release/icos-node"),
        init: target.join(STATIC_TARGET).join("release/icos-init"),
    })
}

impl Binaries {
    /// SHA-256 and size of each, by the name the manifest records.
    pub fn digests(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::Digested>, BuildError> {
        Ok([
            ("icos-node".to_string(), crate::digest_file(&self.icos)?),
            ("icos-init".to_string(), crate::digest_file(&self.init)?),
        ]
        .into())
    }
}

const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// What cargo, rustup or a test runner put into the environment of what they start. The
/// image build leaves it out, so the same build started from a shell, `cargo run` or a
/// test finds the cache it left before: with them, a build from a test was a full 20 min
/// rebuild of one a shell had just made (`LD_LIBRARY_PATH`, `CARGO_*` and the toolchain
/// pin differ, and dependencies' build scripts track them).
fn set_by_a_runner(name: &str) -> bool {
    (name.starts_with("CARGO") && name != "CARGO_HOME")
        || name.starts_with("NEXTEST")
        || name.starts_with("RUSTC")
        || name.starts_with("RUSTDOC")
        || matches!(
            name,
            "RUSTUP_TOOLCHAIN"
                | "RUSTUP_TOOLCHAIN_SOURCE"
                | "RUST_RECURSION_COUNT"
                | "LD_LIBRARY_PATH"
        )
}

/// Run `cargo build --release --locked ARGS` in `source` into the `target` dir.
fn cargo_build(
    source: &Path,
    target: &Path,
    progress: &Progress,
    args: &[&str],
    extra_rustflags: Option<&str>,
) -> Result<(), BuildError> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    let mut cmd = Command::new("cargo");
    for (name, _) in std::env::vars_os() {
        if set_by_a_runner(&name.to_string_lossy()) {
            cmd.env_remove(&name);
        }
    }
    cmd.current_dir(source)
        .args(["build", "--release", "--locked"])
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env(
            "RUSTFLAGS",
            format!(
                "--remap-path-prefix={}=/icos/src --remap-path-prefix={}=/icos/cargo {}",
                source.display(),
                cargo_home.display(),
                extra_rustflags.unwrap_or_default()
            )
            .trim_end(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| BuildError::io("starting cargo in", source, e))?;
    let mut tail = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        let t = line.trim();
        if t.starts_with("Compiling") || t.starts_with("Finished") {
            progress.detail(&format!("cargo: {t}"));
        }
        tail.push(line);
        if tail.len() > 15 {
            tail.remove(0);
        }
    }
    let status = child
        .wait()
        .map_err(|e| BuildError::io("waiting for cargo in", source, e))?;
    if !status.success() {
        return Err(BuildError::Invalid(format!(
            "building {} failed: {}",
            args.join(" "),
            tail.join(" | ")
        )));
    }
    Ok(())
}
