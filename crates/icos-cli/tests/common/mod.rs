//! Shared helpers for the system tests: images built once per test run, VM boots with
//! timeouts that print the serial log when they fail.
#![allow(dead_code)]

use image_builder::{BuildManifest, BuildRequest};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vm_runner::{Vm, VmConfig, WaitOutcome};

pub const VERSION: &str = "1.0.0";
/// Generous: a loaded 2-core CI machine under TCG is slow.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn recipes() -> PathBuf {
    repo_root().join("images")
}

pub fn icos() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_icos"));
    c.env("ICOS_PLAIN_PROGRESS", "1");
    c
}

/// One folder per test run (nextest runs each test in its own process, so the run id is
/// what ties them together); older runs' folders are removed when nobody holds them.
pub fn run_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(make_run_dir).clone()
}

fn make_run_dir() -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let id =
        std::env::var("NEXTEST_RUN_ID").unwrap_or_else(|_| format!("pid{}", std::process::id()));
    let dir = base.join(format!("icos-run-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let lock = File::create(dir.join(".in-use")).unwrap();
    lock.lock_shared().unwrap();
    // Keep the shared lock for the life of the process.
    std::mem::forget(lock);
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("icos-run-") || p == dir {
                continue;
            }
            if let Ok(f) = File::create(p.join(".in-use")) {
                if f.try_lock().is_ok() {
                    let _ = std::fs::remove_dir_all(&p);
                }
            }
        }
    }
    dir
}

/// Build an image once per test run (other tests wait on a lock and reuse it).
pub fn image(kind: &str) -> PathBuf {
    let dir = run_dir();
    let out = dir.join(format!("{kind}-{VERSION}"));
    let lock = File::create(dir.join(format!("{kind}.lock"))).unwrap();
    lock.lock().unwrap();
    if !out.join("manifest.json").is_file() {
        if kind == "setupos" {
            let h = image_locked_dep(&dir, "hostos");
            let g = image_locked_dep(&dir, "guestos");
            let mut req = BuildRequest::new(recipes().join(kind), VERSION, &out);
            req.hostos = Some(h);
            req.guestos = Some(g);
            image_builder::build(&req).unwrap_or_else(|e| panic!("building {kind}: {e}"));
        } else {
            let req = BuildRequest::new(recipes().join(kind), VERSION, &out);
            image_builder::build(&req).unwrap_or_else(|e| panic!("building {kind}: {e}"));
        }
    }
    out
}

fn image_locked_dep(_dir: &Path, kind: &str) -> PathBuf {
    image(kind)
}

pub fn manifest(out: &Path) -> BuildManifest {
    BuildManifest::load(&out.join("manifest.json")).unwrap()
}

/// Copy a disk image keeping it sparse.
pub fn sparse_copy(src: &Path, dst: &Path) {
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Boot a disk and wait for one of `patterns`; on anything else, fail with the serial log.
pub fn boot_until(
    disk: &Path,
    log: &Path,
    patterns: &[&str],
    snapshot: bool,
) -> (usize, String, Duration) {
    let mut cfg = VmConfig::new(disk, log);
    cfg.snapshot = snapshot;
    cfg.no_reboot = true;
    cfg.cache_dir = Some(image_builder::default_cache_dir());
    let res: Vec<regex::Regex> = patterns
        .iter()
        .map(|p| regex::Regex::new(p).unwrap())
        .collect();
    let mut vm = Vm::start(&cfg).unwrap();
    let outcome = vm.wait_for(&res, BOOT_TIMEOUT).unwrap();
    vm.kill();
    match outcome {
        WaitOutcome::Matched {
            index,
            line,
            elapsed,
        } => (index, line, elapsed),
        other => panic!(
            "{} did not print any of {patterns:?}: {other:?}\n--- serial log tail ---\n{}",
            disk.display(),
            vm_runner::serial_tail(log, 60)
        ),
    }
}
