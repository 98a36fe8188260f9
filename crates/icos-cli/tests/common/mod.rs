//! Shared helpers for the system tests: images built once per test run, VM boots with
//! timeouts that print the serial log when they fail.
#![allow(dead_code, unused_imports)]

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
    image_version(kind, VERSION)
}

/// [`image`] for another version (HostOS and GuestOS only).
pub fn image_version(kind: &str, version: &str) -> PathBuf {
    let dir = run_dir();
    let out = dir.join(format!("{kind}-{version}"));
    let lock = File::create(dir.join(format!("{kind}-{version}.lock"))).unwrap();
    lock.lock().unwrap();
    if !out.join("manifest.json").is_file() {
        if kind == "setupos" {
            let h = image("hostos");
            let g = image("guestos");
            let mut req = BuildRequest::new(recipes().join(kind), VERSION, &out);
            req.hostos = Some(h);
            req.guestos = Some(g);
            image_builder::build(&req).unwrap_or_else(|e| panic!("building {kind}: {e}"));
        } else {
            let req = BuildRequest::new(recipes().join(kind), version, &out);
            image_builder::build(&req).unwrap_or_else(|e| panic!("building {kind} {version}: {e}"));
        }
    }
    out
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
    boot_config_until(&cfg, patterns, BOOT_TIMEOUT)
}

/// Boot a VM as configured and wait for one of `patterns`; on anything else, fail with the
/// serial log.
pub fn boot_config_until(
    cfg: &VmConfig,
    patterns: &[&str],
    timeout: Duration,
) -> (usize, String, Duration) {
    let mut res: Vec<regex::Regex> = patterns
        .iter()
        .map(|p| regex::Regex::new(p).unwrap())
        .collect();
    // Under TCG on a loaded host a guest vCPU can miss its timer for good (seen in CI: RCU
    // stall reports from 23 s on, no progress for 300 s). That is the emulator, not the image:
    // a boot that discards its writes is tried once more, and a second stall fails the test.
    res.push(regex::Regex::new(STALL).unwrap());
    let mut outcome = boot_once(cfg, &res, timeout);
    let stalled =
        matches!(&outcome, WaitOutcome::Matched { index, .. } if *index == patterns.len());
    if stalled && cfg.snapshot {
        eprintln!(
            "{}: the guest stalled (RCU stall under TCG); booting it once more\n{}",
            cfg.disk.display(),
            vm_runner::serial_tail(&cfg.serial_log, 20)
        );
        res.pop();
        outcome = boot_once(cfg, &res, timeout);
    }
    match outcome {
        WaitOutcome::Matched {
            index,
            line,
            elapsed,
        } if index < patterns.len() => (index, line, elapsed),
        other => panic!(
            "{} did not print any of {patterns:?}: {other:?}\n--- serial log tail ---\n{}",
            cfg.disk.display(),
            vm_runner::serial_tail(&cfg.serial_log, 80)
        ),
    }
}

/// The kernel's report of a CPU that stopped answering.
const STALL: &str = r"rcu: INFO: rcu_preempt detected stalls";

fn boot_once(cfg: &VmConfig, res: &[regex::Regex], timeout: Duration) -> WaitOutcome {
    let mut vm = Vm::start(cfg).unwrap();
    let outcome = vm.wait_for(res, timeout).unwrap();
    vm.kill();
    outcome
}

/// The test agent overlay (a command runner on the virtio-serial port; test images only).
pub fn test_agent_overlay() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test-agent")
}

/// Build a GuestOS test image: the real recipe plus the test agent overlay, with optional
/// text edits to recipe.toml. Built once per test run and name/version.
pub fn test_image(name: &str, version: &str, edits: &[(&str, &str)]) -> PathBuf {
    let dir = run_dir();
    let out = dir.join(format!("test-{name}-{version}"));
    let lock = File::create(dir.join(format!("test-{name}-{version}.lock"))).unwrap();
    lock.lock().unwrap();
    if out.join("manifest.json").is_file() {
        return out;
    }
    let recipes_copy = dir.join(format!("recipes-{name}-{version}"));
    let _ = std::fs::remove_dir_all(&recipes_copy);
    std::fs::create_dir_all(&recipes_copy).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(recipes())
        .arg(&recipes_copy)
        .status()
        .unwrap();
    assert!(st.success());
    let recipe = recipes_copy.join("images/guestos/recipe.toml");
    let mut text = std::fs::read_to_string(&recipe).unwrap();
    let overlay = test_agent_overlay();
    text = text.replacen(
        "overlays = [\"../common/files\", \"files\"]",
        &format!(
            "overlays = [\"../common/files\", \"files\", \"{}\"]",
            overlay.display()
        ),
        1,
    );
    text = text.replacen("enable = [", "enable = [\"icos-test-agent.service\", ", 1);
    for (from, to) in edits {
        assert!(text.contains(from), "recipe lacks `{from}`");
        text = text.replacen(from, to, 1);
    }
    std::fs::write(&recipe, text).unwrap();
    let req = BuildRequest::new(recipes_copy.join("images/guestos"), version, &out);
    image_builder::build(&req)
        .unwrap_or_else(|e| panic!("building test image {name} {version}: {e}"));
    out
}

/// GuestOS 1.2.0 that boots but whose health check never passes (deadline shortened).
pub fn broken_image() -> PathBuf {
    test_image(
        "broken",
        "1.2.0",
        &[
            (
                "command = \"/usr/bin/icos orchestrator health\"",
                "command = \"echo 'payload is not healthy' >&2; false\"",
            ),
            ("deadline_secs = 300", "deadline_secs = 20"),
        ],
    )
}

pub use test_support::HttpServer;

pub fn sha256_of(path: &Path) -> String {
    update_package::hash_file(path).unwrap().0.to_string()
}

/// Client of the test agent (a shell on a test-only virtio-serial port) inside a VM.
pub struct GuestShell {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    next_id: u64,
}

impl GuestShell {
    /// Connect and wait until the agent answers (it starts late in the boot).
    pub fn connect(sock: &Path) -> GuestShell {
        let stream =
            std::os::unix::net::UnixStream::connect(vm_runner::socket_path(sock).unwrap()).unwrap();
        let mut a = GuestShell {
            reader: std::io::BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            // Distinct per connection, so answers to an earlier connection's requests
            // (buffered while the guest was booting) are never taken for ours.
            next_id: u64::from(std::process::id()) * 1_000_000 + rand_suffix(),
        };
        for _ in 0..60 {
            if let Some((0, out)) = a.try_run("echo agent-ready", Duration::from_secs(2)) {
                if out.contains("agent-ready") {
                    return a;
                }
            }
        }
        panic!(
            "the test agent in the VM did not answer on {}",
            sock.display()
        );
    }

    fn try_run(&mut self, cmd: &str, timeout: Duration) -> Option<(i32, String)> {
        use std::io::{BufRead, Write};
        self.next_id += 1;
        let id = self.next_id;
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
        writeln!(self.writer, "{id} {cmd}").ok()?;
        let marker = format!("__ICOS_RC={id}=");
        let mut out = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let t = line.trim_end();
            if let Some(rc) = t.strip_prefix(&marker) {
                return Some((rc.parse().unwrap_or(-1), out));
            }
            if t.starts_with("__ICOS_RC=") {
                // The answer to an older request: drop it and its output.
                out.clear();
                continue;
            }
            out.push_str(&line);
        }
    }

    /// Wait until the VM's network is configured (DHCP from QEMU's user network).
    pub fn wait_online(&mut self) {
        let (rc, out) = self.run(
            "/lib/systemd/systemd-networkd-wait-online --timeout=120",
            Duration::from_secs(150),
        );
        assert_eq!(rc, 0, "the VM's network did not come up: {out}");
    }

    /// Run a shell command in the VM; returns (exit code, output).
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> (i32, String) {
        self.try_run(cmd, timeout)
            .unwrap_or_else(|| panic!("no answer from the VM to `{cmd}` within {timeout:?}"))
    }

    /// Send a command without waiting for its answer.
    pub fn send(&mut self, cmd: &str) {
        use std::io::Write;
        self.next_id += 1;
        writeln!(self.writer, "{} {cmd}", self.next_id).unwrap();
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_micros() as u64
}

/// The virtio-serial port of the test agent (the host channel keeps its own port).
pub const TEST_PORT: &str = "org.icos.test.0";

/// A VM with the host-guest channel, started on a disk (not a snapshot: upgrades persist).
pub fn start_vm(disk: &Path, name: &str) -> (Vm, PathBuf, PathBuf) {
    let dir = run_dir();
    let log = dir.join(format!("{name}.log"));
    let sock = dir.join(format!("{name}.sock"));
    let mut cfg = VmConfig::new(disk, &log);
    cfg.extra_ports = vec![(TEST_PORT.to_string(), sock.clone())];
    cfg.cache_dir = Some(image_builder::default_cache_dir());
    cfg.efi_vars = Some(dir.join(format!("{name}.efivars.fd")));
    let vm = Vm::start(&cfg).unwrap();
    (vm, log, sock)
}

/// Wait for a console line; on anything else fail with the serial log.
pub fn expect_line(vm: &mut Vm, log: &Path, pattern: &str, timeout: Duration) -> String {
    let re = regex::Regex::new(pattern).unwrap();
    match vm.wait_for(&[re], timeout).unwrap() {
        WaitOutcome::Matched { line, .. } => line,
        other => panic!(
            "waiting for `{pattern}`: {other:?}\n--- serial log tail ---\n{}",
            vm_runner::serial_tail(log, 60)
        ),
    }
}

/// Local governance (one neuron with all the power, operator `op1` allowed 4 nodes) whose
/// genesis elects GuestOS 1.0.0, and a registry initialized from it in `data`.
pub fn governed_registry(
    keys: &Path,
    name: &str,
    data: &Path,
) -> registry_server::localnet::LocalGovernance {
    use registry_model::{Action, Elected};
    use registry_server::localnet::LocalGovernance;
    let mut gov = LocalGovernance::create(
        keys,
        name,
        &[100],
        &[("op1", 4)],
        LocalGovernance::default_settings,
    )
    .unwrap();
    gov.genesis.actions = vec![Action::ElectGuestos(Elected {
        version: "1.0.0".into(),
        sha256: "ab".repeat(32).parse().unwrap(),
        size: None,
        urls: vec!["http://m/x".into()],
    })];
    registry_server::Registry::init(data, &gov.genesis).unwrap();
    gov
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed and reaped however the test ends, a failed assertion included.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `icos registry serve` on `data` at 127.0.0.1:`port`, returned once it answers.
pub fn start_registry_server(data: &Path, key: &Path, port: u16) -> std::process::Child {
    use std::process::Stdio;
    let mut child = icos()
        .args(["registry", "serve", "--data"])
        .arg(data)
        .arg("--online-key")
        .arg(key)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/head.json");
    for _ in 0..100 {
        if ureq::get(&url).call().is_ok() {
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("registry server did not start");
}

/// Register the node holding `key` with operator `op1` (`gov`'s first operator), at IPv6
/// `fd00::<n>` and payload endpoint `endpoint`.
pub fn register_node(
    api: &registry_client::api::Api,
    gov: &registry_server::localnet::LocalGovernance,
    key: &registry_model::keys::SecretKey,
    n: usize,
    endpoint: String,
    peer_endpoint: Option<String>,
) {
    use registry_model::{keys, Registration, SignedRegistration};
    let reg = api.snapshot(None).unwrap().registry;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = Registration::new(
        &reg,
        "op1".into(),
        keys::public_hex(key),
        format!("fd00::{n}"),
        endpoint,
        now,
    )
    .unwrap();
    let r = Registration { peer_endpoint, ..r };
    api.register(&SignedRegistration::sign(r, &gov.operators[0].1))
        .unwrap();
}

/// The counter canister's value, by a query through `a` (its signature checked).
pub async fn counter_get(a: &ic_agent::Agent, id: &ic_principal::Principal) -> u64 {
    use candid::{Decode, Encode};
    let r = a
        .query(id, "get")
        .with_arg(Encode!().unwrap())
        .call()
        .await
        .unwrap();
    Decode!(&r, u64).unwrap()
}
