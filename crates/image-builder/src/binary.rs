//! The `icos` binary that goes into every image (upgrade engine, and later the node agents),
//! compiled from the same source tree as the builder, in release mode, stripped, with
//! source paths remapped so the bytes do not depend on where the tree is checked out.

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

/// Build `icos` for images; returns the path of the binary.
pub fn build_icos(source: &Path, cache: &Path, progress: &Progress) -> Result<PathBuf, BuildError> {
    let source = source
        .canonicalize()
        .map_err(|e| BuildError::io("finding the icos source tree", source, e))?;
    if !source.join("Cargo.lock").is_file() || !source.join("crates/icos-cli").is_dir() {
        return Err(BuildError::Invalid(format!(
            "{} is not the icos source tree (set ICOS_SOURCE); it is needed to build the icos binary for the image",
            source.display()
        )));
    }
    let target = cache.join("cargo-target-image");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&source)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "icos-cli",
            "--bin",
            "icos",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env(
            "RUSTFLAGS",
            format!(
                "--remap-path-prefix={}=/icos/src --remap-path-prefix={}=/icos/cargo",
                source.display(),
                cargo_home.display()
            ),
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| BuildError::io("starting cargo to build the icos binary in", &source, e))?;
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
        .map_err(|e| BuildError::io("waiting for cargo in", &source, e))?;
    if !status.success() {
        return Err(BuildError::Invalid(format!(
            "building the icos binary failed: {}",
            tail.join(" | ")
        )));
    }
    Ok(target.join("release/icos"))
}
