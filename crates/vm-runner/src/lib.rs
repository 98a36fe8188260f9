//! Run icos disk images in QEMU.
//!
//! [`Vm::start`] launches `qemu-system-x86_64` with OVMF (UEFI), a virtio disk, optional
//! user-mode virtio networking, the serial console going to a log file (and optionally the
//! terminal), an optional virtio-serial channel socket (`org.icos.host.0`, the host-guest
//! channel) and a QMP socket for a clean power-down. [`Vm::wait_for`] follows the serial log
//! until a line matches, the VM exits, or a timeout passes; every failure carries the tail of
//! the serial log so a failed boot explains itself.
//!
//! The accelerator is decided by trying ([`detect_accel`]): KVM is used only if OVMF actually
//! reaches its boot manager under KVM within a few seconds; otherwise TCG. The result is
//! cached per host boot. QEMU is started with `PR_SET_PDEATHSIG`, so it dies with the
//! process that started it, and [`Vm`] kills it on drop: no VM outlives its owner.
//!
//! ```no_run
//! use vm_runner::{Vm, VmConfig, WaitOutcome};
//! use std::time::Duration;
//! let cfg = VmConfig::new("out/guestos-1.0.0/disk.img", "/tmp/serial.log");
//! let mut vm = Vm::start(&cfg).unwrap();
//! let re = regex::Regex::new("GUESTOS BOOT SUCCESS").unwrap();
//! match vm.wait_for(&[re], Duration::from_secs(300)).unwrap() {
//!     WaitOutcome::Matched { line, .. } => println!("booted: {line}"),
//!     other => eprintln!("did not boot: {other:?}\n{}", vm.serial_tail(40)),
//! }
//! ```

use regex::Regex;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Name of the host-guest virtio-serial port; the guest sees /dev/virtio-ports/<name>.
pub const CHANNEL_NAME: &str = "org.icos.host.0";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Tool(#[from] host_tools::ToolError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("UEFI firmware not found at {0} (Debian package `ovmf`; run scripts/setup.sh)")]
    NoFirmware(PathBuf),
    #[error("disk image {0} does not exist")]
    NoDisk(PathBuf),
    #[error("socket directory {path}: {message}")]
    SocketDir { path: PathBuf, message: String },
    #[error("QEMU monitor (QMP) at {path}: {message}")]
    Qmp { path: PathBuf, message: String },
}

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM if it truly works on this host, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    pub fn parse(s: &str) -> Option<Accel> {
        match s {
            "auto" => Some(Accel::Auto),
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

/// How the VM boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// OVMF from the disk's ESP (the real path).
    Uefi,
    /// Direct kernel boot, for baselines and tests that need no boot loader.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        append: String,
    },
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub disk: PathBuf,
    pub extra_disks: Vec<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    pub boot: Boot,
    /// Serial console log (always written).
    pub serial_log: PathBuf,
    /// Also show the serial console on this process's terminal (stdin goes to the guest).
    pub console_on_terminal: bool,
    /// Host end of the virtio-serial host-guest channel (a Unix socket QEMU listens on).
    pub channel_socket: Option<PathBuf>,
    /// More virtio-serial ports: (port name, host socket).
    pub extra_ports: Vec<(String, PathBuf)>,
    /// User-mode networking with these host→guest TCP port forwards; `None` = no NIC.
    pub network: Option<Vec<(u16, u16)>>,
    /// MAC address of the NIC (deterministic per node).
    pub mac: Option<String>,
    /// Discard disk writes when the VM stops.
    pub snapshot: bool,
    /// Exit instead of rebooting.
    pub no_reboot: bool,
    /// Where the VM's UEFI variable store lives; a fresh copy of OVMF's template is made if
    /// the file does not exist. Default: next to the serial log.
    pub efi_vars: Option<PathBuf>,
    /// QMP socket for power-down; default: next to the serial log.
    pub qmp_socket: Option<PathBuf>,
    /// Cache folder for the KVM probe result.
    pub cache_dir: Option<PathBuf>,
}

impl VmConfig {
    pub fn new(disk: impl Into<PathBuf>, serial_log: impl Into<PathBuf>) -> Self {
        VmConfig {
            name: "icos".into(),
            disk: disk.into(),
            extra_disks: Vec::new(),
            memory_mib: 1024,
            cpus: 2,
            accel: Accel::Auto,
            boot: Boot::Uefi,
            serial_log: serial_log.into(),
            console_on_terminal: false,
            channel_socket: None,
            extra_ports: Vec::new(),
            network: Some(Vec::new()),
            mac: None,
            snapshot: false,
            no_reboot: false,
            efi_vars: None,
            qmp_socket: None,
            cache_dir: None,
        }
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut p = self.serial_log.clone().into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    }
}

/// What [`Vm::wait_for`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Pattern `index` matched `line` after `elapsed`.
    Matched {
        index: usize,
        line: String,
        elapsed: Duration,
    },
    /// QEMU exited first.
    Exited {
        status: String,
        elapsed: Duration,
    },
    TimedOut {
        elapsed: Duration,
    },
}

/// A running QEMU.
pub struct Vm {
    child: Option<Child>,
    serial_log: PathBuf,
    /// QEMU's own stderr (bad options, socket or disk errors).
    qemu_log: PathBuf,
    qmp_socket: PathBuf,
    read_pos: u64,
    partial: String,
    started: Instant,
    accel: Accel,
}

fn accel_probe_file(cache: &Path) -> PathBuf {
    cache.join("kvm-probe")
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Decide between KVM and TCG by trying: boot OVMF under KVM and wait for its boot manager.
/// Nested or broken KVM (emulation failures, crawling guests) falls back to TCG. The answer
/// is cached per host boot in `cache/kvm-probe`.
pub fn detect_accel(cache: Option<&Path>) -> Accel {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return Accel::Tcg;
    }
    let id = boot_id();
    if let Some(c) = cache {
        if let Ok(s) = std::fs::read_to_string(accel_probe_file(c)) {
            if let Some((bid, res)) = s.trim().split_once(' ') {
                if bid == id {
                    return if res == "kvm" { Accel::Kvm } else { Accel::Tcg };
                }
            }
        }
    }
    let result = probe_kvm().unwrap_or(false);
    tracing::info!(kvm = result, "KVM probe");
    if let Some(c) = cache {
        let _ = std::fs::create_dir_all(c);
        let _ = std::fs::write(
            accel_probe_file(c),
            format!("{id} {}\n", if result { "kvm" } else { "tcg" }),
        );
    }
    if result {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

fn probe_kvm() -> Result<bool, VmError> {
    let dir = std::env::temp_dir().join(format!("icos-kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| VmError::Io {
        what: "creating",
        path: dir.clone(),
        source: e,
    })?;
    let vars = dir.join("vars.fd");
    let _ = std::fs::copy(OVMF_VARS, &vars);
    let log = dir.join("serial.log");
    let mut cmd = host_tools::tools::QEMU.command()?;
    cmd.args([
        "-accel",
        "kvm",
        "-machine",
        "q35",
        "-cpu",
        "host",
        "-m",
        "256",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-drive")
    .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
    .arg("-drive")
    .arg(format!("if=pflash,format=raw,file={}", vars.display()))
    .arg("-serial")
    .arg(format!("file:{}", log.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = spawn_tied(&mut cmd).map_err(|e| VmError::Io {
        what: "starting QEMU for",
        path: log.clone(),
        source: e,
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if std::fs::read(&log)
            .map(|b| String::from_utf8_lossy(&b).contains("BdsDxe"))
            .unwrap_or(false)
        {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok)
}

/// Spawn with the parent-death signal set, so QEMU never outlives its owner.
fn spawn_tied(cmd: &mut Command) -> std::io::Result<Child> {
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
}

impl Vm {
    /// Build the QEMU command line for a config (exposed for logging and tests).
    pub fn command(cfg: &VmConfig, accel: Accel) -> Result<Command, VmError> {
        let mut cmd = host_tools::tools::QEMU.command()?;
        let (accel_arg, cpu) = match accel {
            Accel::Kvm => ("kvm", "host"),
            _ => ("tcg", "max"),
        };
        cmd.arg("-name").arg(&cfg.name);
        cmd.args(["-machine", "q35", "-accel", accel_arg, "-cpu", cpu]);
        cmd.arg("-m").arg(cfg.memory_mib.to_string());
        cmd.arg("-smp").arg(cfg.cpus.to_string());
        cmd.args(["-nodefaults", "-display", "none", "-vga", "none"]);
        if cfg.no_reboot {
            cmd.arg("-no-reboot");
        }
        match &cfg.boot {
            Boot::Uefi => {
                let vars = cfg
                    .efi_vars
                    .clone()
                    .unwrap_or_else(|| cfg.sibling(".efivars.fd"));
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"));
                cmd.arg("-drive")
                    .arg(format!("if=pflash,format=raw,file={}", vars.display()));
            }
            Boot::Kernel {
                kernel,
                initrd,
                append,
            } => {
                cmd.arg("-kernel").arg(kernel);
                if let Some(i) = initrd {
                    cmd.arg("-initrd").arg(i);
                }
                cmd.arg("-append").arg(append);
            }
        }
        let snap = if cfg.snapshot { ",snapshot=on" } else { "" };
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,cache=writeback{snap}",
            cfg.disk.display()
        ));
        for d in &cfg.extra_disks {
            cmd.arg("-drive")
                .arg(format!("file={},format=raw,if=virtio{snap}", d.display()));
        }
        if let Some(fwds) = &cfg.network {
            let mut netdev = "user,id=n0".to_string();
            for (host, guest) in fwds {
                netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
            }
            cmd.arg("-netdev").arg(netdev);
            // romfile= : no iPXE option ROM (UEFI needs none to boot from disk).
            let mut dev = "virtio-net-pci,netdev=n0,romfile=".to_string();
            if let Some(mac) = &cfg.mac {
                dev.push_str(&format!(",mac={mac}"));
            }
            cmd.arg("-device").arg(dev);
        }
        let ports: Vec<(&str, &PathBuf)> = cfg
            .channel_socket
            .iter()
            .map(|s| (CHANNEL_NAME, s))
            .chain(cfg.extra_ports.iter().map(|(n, s)| (n.as_str(), s)))
            .collect();
        if !ports.is_empty() {
            cmd.args(["-device", "virtio-serial-pci,id=vser0"]);
        }
        for (i, (name, sock)) in ports.iter().enumerate() {
            cmd.arg("-chardev").arg(format!(
                "socket,id=chan{i},path={},server=on,wait=off",
                socket_path(sock)?.display()
            ));
            cmd.arg("-device").arg(format!(
                "virtserialport,bus=vser0.0,chardev=chan{i},name={name}"
            ));
        }
        let qmp = cfg
            .qmp_socket
            .clone()
            .unwrap_or_else(|| cfg.sibling(".qmp"));
        cmd.arg("-qmp").arg(format!(
            "unix:{},server=on,wait=off",
            socket_path(&qmp)?.display()
        ));
        if cfg.console_on_terminal {
            cmd.arg("-chardev").arg(format!(
                "stdio,id=ser0,mux=on,signal=off,logfile={}",
                cfg.serial_log.display()
            ));
            cmd.args(["-serial", "chardev:ser0", "-mon", "chardev=ser0"]);
        } else {
            cmd.arg("-chardev")
                .arg(format!("file,id=ser0,path={}", cfg.serial_log.display()));
            cmd.args(["-serial", "chardev:ser0"]);
        }
        Ok(cmd)
    }

    /// Start QEMU. The serial log is truncated first.
    pub fn start(cfg: &VmConfig) -> Result<Vm, VmError> {
        if !cfg.disk.exists() {
            return Err(VmError::NoDisk(cfg.disk.clone()));
        }
        if let Boot::Uefi = cfg.boot {
            if !Path::new(OVMF_CODE).exists() {
                return Err(VmError::NoFirmware(OVMF_CODE.into()));
            }
            let vars = cfg
                .efi_vars
                .clone()
                .unwrap_or_else(|| cfg.sibling(".efivars.fd"));
            if !vars.exists() || cfg.efi_vars.is_none() {
                std::fs::copy(OVMF_VARS, &vars).map_err(|e| VmError::Io {
                    what: "copying UEFI variables to",
                    path: vars.clone(),
                    source: e,
                })?;
            }
        }
        let accel = match cfg.accel {
            Accel::Auto => detect_accel(cfg.cache_dir.as_deref()),
            a => a,
        };
        if let Some(parent) = cfg.serial_log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| VmError::Io {
                what: "creating",
                path: parent.to_path_buf(),
                source: e,
            })?;
        }
        std::fs::write(&cfg.serial_log, b"").map_err(|e| VmError::Io {
            what: "creating serial log",
            path: cfg.serial_log.clone(),
            source: e,
        })?;
        let qmp_socket = cfg
            .qmp_socket
            .clone()
            .unwrap_or_else(|| cfg.sibling(".qmp"));
        let _ = std::fs::remove_file(&qmp_socket);
        for s in cfg
            .channel_socket
            .iter()
            .chain(cfg.extra_ports.iter().map(|(_, s)| s))
        {
            let _ = std::fs::remove_file(s);
        }
        let mut cmd = Self::command(cfg, accel)?;
        let stderr_log = cfg.sibling(".qemu.log");
        let stderr = std::fs::File::create(&stderr_log).map_err(|e| VmError::Io {
            what: "creating",
            path: stderr_log.clone(),
            source: e,
        })?;
        cmd.stderr(stderr);
        if cfg.console_on_terminal {
            cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
        }
        tracing::info!(?cmd, "starting QEMU");
        let child = spawn_tied(&mut cmd).map_err(|e| VmError::Io {
            what: "starting QEMU for",
            path: cfg.disk.clone(),
            source: e,
        })?;
        Ok(Vm {
            child: Some(child),
            serial_log: cfg.serial_log.clone(),
            qemu_log: stderr_log,
            qmp_socket,
            read_pos: 0,
            partial: String::new(),
            started: Instant::now(),
            accel,
        })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    /// Read new complete lines from the serial log.
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.serial_log) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.read_pos)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.read_pos += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let mut lines = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            lines.push(line.trim_end_matches(['\r', '\n']).to_string());
        }
        lines
    }

    /// Follow the serial console until one of `patterns` matches a line, QEMU exits, or
    /// `timeout` passes. Lines already read by an earlier call are not seen again.
    pub fn wait_for(
        &mut self,
        patterns: &[Regex],
        timeout: Duration,
    ) -> Result<WaitOutcome, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check for exit first, then read: what QEMU wrote last is still seen.
            let exited = self.try_exit_status();
            if let Some(m) = self.match_new_lines(patterns) {
                return Ok(m);
            }
            if let Some(status) = exited {
                return Ok(WaitOutcome::Exited {
                    status: status.to_string(),
                    elapsed: self.started.elapsed(),
                });
            }
            if Instant::now() >= deadline {
                return Ok(WaitOutcome::TimedOut {
                    elapsed: self.started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn match_new_lines(&mut self, patterns: &[Regex]) -> Option<WaitOutcome> {
        for line in self.new_lines() {
            if let Some(index) = patterns.iter().position(|p| p.is_match(&line)) {
                return Some(WaitOutcome::Matched {
                    index,
                    line,
                    elapsed: self.started.elapsed(),
                });
            }
        }
        None
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit_status().is_none()
    }

    /// Wait for QEMU to exit on its own (e.g. after a guest power-off with `no_reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_exit_status() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// The last `n` lines of the serial console (escape sequences removed).
    pub fn serial_tail(&self, n: usize) -> String {
        serial_tail(&self.serial_log, n)
    }

    /// The last `n` lines QEMU itself wrote to stderr: why it exited when the guest
    /// console is empty.
    pub fn qemu_tail(&self, n: usize) -> String {
        serial_tail(&self.qemu_log, n)
    }

    /// Cut the power: SIGKILL QEMU and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Ask the guest to power off (ACPI, via QMP) and wait up to `grace`; then kill.
    pub fn shutdown(&mut self, grace: Duration) -> Result<(), VmError> {
        if self.child.is_none() {
            return Ok(());
        }
        let r = qmp_command(&self.qmp_socket, "system_powerdown");
        if r.is_ok() && self.wait_exit(grace).is_some() {
            self.child = None;
            return Ok(());
        }
        self.kill();
        r.map(|_| ())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Send one QMP command (after the capabilities handshake).
pub fn qmp_command(socket: &Path, command: &str) -> Result<serde_json::Value, VmError> {
    use std::os::unix::net::UnixStream;
    let err = |message: String| VmError::Qmp {
        path: socket.to_path_buf(),
        message,
    };
    let stream =
        UnixStream::connect(socket_path(socket)?).map_err(|e| err(format!("connect: {e}")))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| err(e.to_string()))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| err(e.to_string()))?);
    let mut w = stream;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| err(format!("greeting: {e}")))?;
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}").map_err(|e| err(format!("send {cmd}: {e}")))?;
        loop {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .map_err(|e| err(format!("reply to {cmd}: {e}")))?;
            if n == 0 {
                return Err(err(format!(
                    "QEMU closed the monitor before answering {cmd}"
                )));
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| err(format!("bad reply: {e}")))?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(err(format!("{cmd}: {e}")));
            }
            if cmd == command {
                return Ok(v.get("return").cloned().unwrap_or_default());
            }
            break;
        }
    }
    unreachable!("the loop returns after the last command")
}

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL).
const SUN_PATH_MAX: usize = 107;

/// The path to bind or connect a Unix socket at `path` by.
///
/// `sun_path` limits socket paths to 107 bytes, and state folders under a deep checkout
/// (CI's `/check/work/...`, test run folders with UUIDs) go past that: QEMU then exits
/// with status 1 before the guest prints anything. A long path is reached through a
/// symlink to its folder in a private per-user folder under the temp dir, named by a hash
/// of the folder, so the VM and every client compute the same short path independently.
pub fn socket_path(path: &Path) -> Result<PathBuf, VmError> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok(path.to_path_buf());
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(path.to_path_buf());
    };
    let uid = nix::unistd::getuid().as_raw();
    let links = std::env::temp_dir().join(format!("icos-sock-{uid}"));
    let bad = |message: String| VmError::SocketDir {
        path: links.clone(),
        message,
    };
    match std::fs::create_dir(&links) {
        Ok(()) => {
            std::fs::set_permissions(&links, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| bad(e.to_string()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bad(e.to_string())),
    }
    // Another user could have planted the folder (or a symlink) to catch our sockets.
    let meta = std::fs::symlink_metadata(&links).map_err(|e| bad(e.to_string()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(bad(format!(
            "not a private folder owned by uid {uid}; remove it"
        )));
    }
    let dir = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| bad(e.to_string()))?
            .join(dir)
    };
    let digest = Sha256::digest(dir.as_os_str().as_encoded_bytes());
    let link = links.join(hex::encode(&digest[..8]));
    match std::fs::read_link(&link) {
        Ok(target) if target == dir => {}
        Ok(_) | Err(_) => {
            // Build the link beside its final name and rename it in, so two processes
            // racing here never see a half-made link.
            let tmp = links.join(format!(
                ".{}-{}",
                hex::encode(&digest[..8]),
                std::process::id()
            ));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&dir, &tmp).map_err(|e| bad(e.to_string()))?;
            std::fs::rename(&tmp, &link).map_err(|e| bad(e.to_string()))?;
        }
    }
    Ok(link.join(name))
}

/// Remove ANSI escape sequences (OVMF draws with them) so log tails are readable.
pub fn strip_ansi(s: &str) -> String {
    let re = Regex::new(r"\x1b\[[0-9;=?]*[A-Za-z]").expect("static regex");
    re.replace_all(s, "").into_owned()
}

/// The last `n` non-empty lines of a serial log.
pub fn serial_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let clean = strip_ansi(&text);
    let lines: Vec<&str> = clean
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_socket_paths_are_reached_through_a_short_link() {
        use std::os::unix::net::{UnixListener, UnixStream};
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("x".repeat(60)).join("y".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("channel.sock");
        assert!(sock.as_os_str().len() > SUN_PATH_MAX);
        assert!(UnixListener::bind(&sock).is_err(), "the limit is real");
        let short = socket_path(&sock).unwrap();
        assert!(
            short.as_os_str().len() <= SUN_PATH_MAX,
            "{}",
            short.display()
        );
        assert_eq!(short, socket_path(&sock).unwrap(), "stable");
        let _l = UnixListener::bind(&short).unwrap();
        assert!(sock.exists(), "the socket lives in the long folder");
        UnixStream::connect(socket_path(&sock).unwrap()).unwrap();
        let plain = Path::new("/tmp/short.sock");
        assert_eq!(socket_path(plain).unwrap(), plain);
    }

    #[test]
    fn command_line_has_the_essentials() {
        let mut cfg = VmConfig::new("/tmp/d.img", "/tmp/s.log");
        cfg.channel_socket = Some("/tmp/chan.sock".into());
        cfg.network = Some(vec![(8080, 80)]);
        cfg.mac = Some("6a:01:00:00:00:01".into());
        cfg.snapshot = true;
        let cmd = Vm::command(&cfg, Accel::Tcg).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg"), "{joined}");
        assert!(joined.contains("OVMF_CODE_4M.fd"), "{joined}");
        assert!(
            joined.contains("if=virtio") && joined.contains("snapshot=on"),
            "{joined}"
        );
        assert!(
            joined.contains("hostfwd=tcp:127.0.0.1:8080-:80"),
            "{joined}"
        );
        assert!(joined.contains("mac=6a:01:00:00:00:01"), "{joined}");
        assert!(joined.contains(&format!("name={CHANNEL_NAME}")), "{joined}");
        assert!(joined.contains("path=/tmp/s.log"), "{joined}");
        let kvm = Vm::command(&cfg, Accel::Kvm).unwrap();
        let k: Vec<String> = kvm
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(k.join(" ").contains("-accel kvm -cpu host"));
    }

    #[test]
    fn ansi_is_stripped_from_tails() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(
            &p,
            "\x1b[01;01H\x1b[=3hBdsDxe: loading\n\nline two\nline three\n",
        )
        .unwrap();
        assert_eq!(serial_tail(&p, 2), "line two\nline three");
        assert!(serial_tail(&p, 5).starts_with("BdsDxe"));
    }

    #[test]
    fn missing_disk_is_reported() {
        let cfg = VmConfig::new("/nonexistent/disk.img", "/tmp/x.log");
        let err = Vm::start(&cfg).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/disk.img"), "{err}");
    }
}
