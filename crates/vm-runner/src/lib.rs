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
//! Modules: `command` (the QEMU command line), `accel` (the KVM probe), `console` (following
//! the serial log), `qmp` (power-down and other QMP commands), `sockets` (short Unix socket
//! paths); this file holds the types and a VM's life.
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

mod accel;
mod command;
mod console;
mod qmp;
mod sockets;

pub use accel::detect_accel;
pub use console::{serial_tail, strip_ansi};
pub use qmp::qmp_command;
pub use sockets::socket_path;

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
    /// A second user-mode NIC with these forwards, after the first: an out-of-band port the
    /// guest reaches by DHCP while the first NIC carries static IPv6 (QEMU forwards only to
    /// a guest's IPv4).
    pub oob_network: Option<Vec<(u16, u16)>>,
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
            oob_network: None,
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
    /// Complete lines read but not yet looked at by a wait (a wait stops at its match).
    unseen: std::collections::VecDeque<String>,
    started: Instant,
    accel: Accel,
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
            unseen: Default::default(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockets::SUN_PATH_MAX;

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
