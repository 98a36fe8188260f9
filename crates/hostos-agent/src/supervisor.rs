//! Launch, watch and restart the GuestOS VM.

use crate::channel::{serve_channel, AgentHost};
use crate::config::HostosConfig;
use crate::guestdisk::{guest_config, write_config_disk};
use crate::{GuestState, Shared};
use daemon_support::{unix_now, Backoff};
use node_status::hostos::Accel;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_runner::{Vm, VmConfig, WaitOutcome};

/// Why the VM must be started again.
#[derive(Debug, thiserror::Error)]
pub enum RestartReason {
    #[error("state folder {path}: {error}")]
    StateDir {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    ConfigFile(#[from] crate::guestdisk::ConfigFileError),
    #[error(transparent)]
    ConfigDisk(#[from] node_config::guest::ConfigDiskError),
    #[error("cannot start QEMU: {0}")]
    Start(vm_runner::VmError),
    #[error("watching QEMU: {0}")]
    Watch(vm_runner::VmError),
    #[error("guest reported: {0}")]
    GuestFailed(String),
    #[error("QEMU exited ({0}) while the guest was running")]
    ExitedRunning(String),
    #[error("QEMU exited ({status}) before the guest reported success; {what}: {tail}")]
    ExitedBooting {
        status: String,
        what: &'static str,
        tail: String,
    },
    #[error("no GUESTOS BOOT SUCCESS line within {0} s (the guest hangs)")]
    BootTimeout(u64),
}

fn set(shared: &Shared, f: impl FnOnce(&mut crate::AgentStatus)) {
    let mut s = shared.lock().expect("status lock");
    f(&mut s);
}

/// Sleep up to `d`, waking early when asked to stop. Returns false if stopping.
fn pause(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(
            Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())),
        );
    }
    !stop.load(Ordering::Relaxed)
}

fn vm_config(cfg: &HostosConfig, disk: &std::path::Path) -> VmConfig {
    let dir = &cfg.state_dir;
    let mut v = VmConfig::new(disk, dir.join("guest-serial.log"));
    v.name = "icos-guestos".into();
    v.memory_mib = cfg.memory_mib;
    v.cpus = cfg.vcpus;
    v.extra_disks = vec![dir.join("guest-config.img")];
    v.mac = Some(cfg.guest_mac().to_string());
    v.network = Some(cfg.forwards.clone());
    v.channel_socket = Some(dir.join("channel.sock"));
    v.extra_ports = cfg.extra_ports.clone();
    v.efi_vars = Some(dir.join("guest-efivars.fd"));
    v.qmp_socket = Some(dir.join("qmp.sock"));
    v.cache_dir = Some(dir.clone());
    v
}

/// Run the GuestOS VM until `stop` is set: restart it (with backoff) when it exits, reports
/// FAILURE, or does not report SUCCESS within the boot timeout; give up after
/// `max_restarts` consecutive failed starts. The VM is shut down cleanly when stopping.
pub fn supervise(cfg: HostosConfig, shared: Shared, host: Arc<AgentHost>, stop: Arc<AtomicBool>) {
    let Some(disk) = cfg.guest_disk.clone() else {
        set(&shared, |s| {
            s.guest.state = GuestState::NotConfigured;
            s.guest.last_error = Some("field `guest.disk` is missing in the HostOS config".into());
        });
        while pause(&stop, Duration::from_secs(3600)) {}
        return;
    };
    let success = regex::Regex::new(r"^GUESTOS BOOT SUCCESS version=(\S+)(?: slot=(\S+))?")
        .expect("static regex");
    let failure = regex::Regex::new(r"^GUESTOS BOOT FAILURE").expect("static regex");
    // Restarts wait 1 s, doubling up to 5 minutes; a successful boot starts over.
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300), 2.0);
    let mut gave_up = false;
    while !stop.load(Ordering::Relaxed) {
        let reason = match run_once(&cfg, &disk, &shared, &host, &stop, &success, &failure) {
            Ok(()) => break,
            Err((reason, booted)) => {
                if booted {
                    backoff.ok();
                }
                reason.to_string()
            }
        };
        let wait = backoff.fail();
        let consecutive = backoff.failures();
        tracing::warn!(
            "GuestOS VM: {reason}; restarting (failure {consecutive} of at most {})",
            cfg.max_restarts
        );
        crate::console(&cfg).line(&format!("HOSTOS GUEST RESTART reason={reason}"));
        gave_up = consecutive >= cfg.max_restarts;
        set(&shared, |s| {
            s.guest.restarts += 1;
            s.guest.consecutive_failures = consecutive;
            s.guest.last_error = Some(reason.clone());
            s.guest.pid = None;
            s.guest.state = if gave_up {
                GuestState::GaveUp
            } else {
                GuestState::Restarting
            };
        });
        if gave_up {
            tracing::error!("GuestOS VM failed {consecutive} times in a row; giving up (restart the agent to try again)");
            crate::console(&cfg).line(&format!(
                "HOSTOS GUEST GAVE UP after {consecutive} failed starts: {reason}"
            ));
            while pause(&stop, Duration::from_secs(3600)) {}
            break;
        }
        if !pause(&stop, wait) {
            break;
        }
    }
    set(&shared, |s| {
        if !gave_up {
            s.guest.state = GuestState::Stopped;
        }
        s.guest.pid = None;
    });
}

/// One life of the VM. `Ok` = stopped on request; `Err((reason, booted))` = needs a restart
/// (`booted`: the guest had reported a successful boot in this life).
fn run_once(
    cfg: &HostosConfig,
    disk: &std::path::Path,
    shared: &Shared,
    host: &Arc<AgentHost>,
    stop: &Arc<AtomicBool>,
    success: &regex::Regex,
    failure: &regex::Regex,
) -> Result<(), (RestartReason, bool)> {
    let early = |r: RestartReason| (r, false);
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|error| RestartReason::StateDir {
            path: cfg.state_dir.clone(),
            error,
        })
        .map_err(early)?;
    let guest_cfg = guest_config(cfg).map_err(|e| early(e.into()))?;
    write_config_disk(&cfg.state_dir.join("guest-config.img"), &guest_cfg)
        .map_err(|e| early(e.into()))?;
    let log = cfg.state_dir.join("guest-serial.log");
    if log.exists() {
        let _ = std::fs::rename(&log, cfg.state_dir.join("guest-serial.log.1"));
    }
    let vcfg = vm_config(cfg, disk);
    let mut vm = Vm::start(&vcfg).map_err(|e| early(RestartReason::Start(e)))?;
    tracing::info!(pid = vm.pid(), accel = ?vm.accel(), "GuestOS VM started");
    set(shared, |s| {
        s.guest.state = GuestState::Booting;
        s.guest.pid = vm.pid();
        s.guest.accel = Some(match vm.accel() {
            vm_runner::Accel::Kvm => Accel::Kvm,
            _ => Accel::Tcg,
        });
        s.guest.serial_log = log.display().to_string();
        s.guest.started_at_unix = Some(unix_now());
    });
    let chan_stop = Arc::new(AtomicBool::new(false));
    let chan = {
        let (sock, host, stop2) = (
            vcfg.channel_socket.clone().expect("set"),
            host.clone(),
            chan_stop.clone(),
        );
        std::thread::spawn(move || serve_channel(&sock, host, &stop2))
    };
    let mut booted = false;
    let result = watch(cfg, &mut vm, shared, stop, success, failure, &mut booted);
    chan_stop.store(true, Ordering::Relaxed);
    if result.is_ok() {
        set(shared, |s| s.guest.state = GuestState::Stopping);
        if let Err(e) = vm.shutdown(Duration::from_secs(60)) {
            tracing::warn!("clean GuestOS shutdown failed ({e}); QEMU was killed");
        }
    } else {
        vm.kill();
    }
    let _ = chan.join();
    result.map_err(|r| (r, booted))
}

fn watch(
    cfg: &HostosConfig,
    vm: &mut Vm,
    shared: &Shared,
    stop: &AtomicBool,
    success: &regex::Regex,
    failure: &regex::Regex,
    booted: &mut bool,
) -> Result<(), RestartReason> {
    // A guest that reboots (after an upgrade, say) goes through the firmware again: back to
    // the boot phase, with its timeout.
    let firmware = regex::Regex::new(r"BdsDxe: (loading|starting) ").expect("static regex");
    loop {
        boot(cfg, vm, shared, stop, success, failure)?;
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        *booted = true;
        // Running: until stop, a FAILURE line, a reboot, or QEMU exiting.
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match vm
                .wait_for(&[failure.clone(), firmware.clone()], Duration::from_secs(1))
                .map_err(RestartReason::Watch)?
            {
                WaitOutcome::Matched { index: 0, line, .. } => {
                    return Err(RestartReason::GuestFailed(line))
                }
                WaitOutcome::Matched { .. } => {
                    tracing::info!("GuestOS is rebooting");
                    set(shared, |s| s.guest.state = GuestState::Booting);
                    break;
                }
                WaitOutcome::Exited { status, .. } => {
                    return Err(RestartReason::ExitedRunning(status.to_string()))
                }
                WaitOutcome::TimedOut { .. } => {}
            }
        }
    }
}

/// Wait for the boot to end: `Ok` on SUCCESS (or stop), `Err(reason)` otherwise.
fn boot(
    cfg: &HostosConfig,
    vm: &mut Vm,
    shared: &Shared,
    stop: &AtomicBool,
    success: &regex::Regex,
    failure: &regex::Regex,
) -> Result<(), RestartReason> {
    let started = Instant::now();
    let timeout = Duration::from_secs(cfg.boot_timeout_secs);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let slice = Duration::from_secs(1).min(timeout.saturating_sub(started.elapsed()));
        match vm
            .wait_for(&[success.clone(), failure.clone()], slice)
            .map_err(RestartReason::Watch)?
        {
            WaitOutcome::Matched { index: 0, line, .. } => {
                let caps = success.captures(&line);
                let version = caps
                    .as_ref()
                    .and_then(|c| c.get(1))
                    .map(|m| m.as_str().to_string());
                let slot = caps
                    .as_ref()
                    .and_then(|c| c.get(2))
                    .and_then(|m| disk_layout::Slot::parse(m.as_str()));
                tracing::info!("GuestOS reported: {line}");
                set(shared, |s| {
                    s.guest.state = GuestState::Running;
                    s.guest.version = version;
                    s.guest.slot = slot;
                    s.guest.consecutive_failures = 0;
                    s.guest.booted_at_unix = Some(unix_now());
                    s.guest.boot_secs = Some(started.elapsed().as_secs_f64());
                });
                return Ok(());
            }
            WaitOutcome::Matched { line, .. } => return Err(RestartReason::GuestFailed(line)),
            WaitOutcome::Exited { status, .. } => {
                let qemu = vm.qemu_tail(3);
                let (what, tail) = if qemu.is_empty() {
                    ("last console lines", vm.serial_tail(3))
                } else {
                    ("QEMU said", qemu)
                };
                return Err(RestartReason::ExitedBooting {
                    status: status.to_string(),
                    what,
                    tail: tail.replace('\n', " | "),
                });
            }
            WaitOutcome::TimedOut { .. } if started.elapsed() >= timeout => {
                return Err(RestartReason::BootTimeout(cfg.boot_timeout_secs))
            }
            WaitOutcome::TimedOut { .. } => {}
        }
    }
}
