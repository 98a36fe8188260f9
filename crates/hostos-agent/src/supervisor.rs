//! Launch, watch and restart the GuestOS VM.

use crate::channel::{serve_channel, AgentHost};
use crate::config::HostosConfig;
use crate::guestdisk::{write_config_disk, GuestConfig};
use crate::{Shared, UNIX_NOW};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_runner::{Vm, VmConfig, WaitOutcome};

const MAX_BACKOFF: Duration = Duration::from_secs(300);

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
            s.guest.state = "not-configured".into();
            s.guest.last_error = Some("field `guest.disk` is missing in the HostOS config".into());
        });
        while pause(&stop, Duration::from_secs(3600)) {}
        return;
    };
    let success = regex::Regex::new(r"^GUESTOS BOOT SUCCESS version=(\S+)(?: slot=(\S+))?")
        .expect("static regex");
    let failure = regex::Regex::new(r"^GUESTOS BOOT FAILURE").expect("static regex");
    let mut consecutive = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let reason = match run_once(&cfg, &disk, &shared, &host, &stop, &success, &failure) {
            Ok(()) => break,
            Err(r) => r,
        };
        consecutive += 1;
        tracing::warn!(
            "GuestOS VM: {reason}; restarting (failure {consecutive} of at most {})",
            cfg.max_restarts
        );
        crate::console(&cfg, &format!("HOSTOS GUEST RESTART reason={reason}"));
        let gave_up = consecutive >= cfg.max_restarts;
        set(&shared, |s| {
            s.guest.restarts += 1;
            s.guest.consecutive_failures = consecutive;
            s.guest.last_error = Some(reason.clone());
            s.guest.pid = None;
            s.guest.state = if gave_up {
                "gave-up".into()
            } else {
                "restarting".into()
            };
        });
        if gave_up {
            tracing::error!("GuestOS VM failed {consecutive} times in a row; giving up (restart the agent to try again)");
            crate::console(
                &cfg,
                &format!("HOSTOS GUEST GAVE UP after {consecutive} failed starts: {reason}"),
            );
            while pause(&stop, Duration::from_secs(3600)) {}
            break;
        }
        let backoff = Duration::from_secs(1 << (consecutive - 1).min(8)).min(MAX_BACKOFF);
        if !pause(&stop, backoff) {
            break;
        }
    }
    set(&shared, |s| {
        if s.guest.state != "gave-up" {
            s.guest.state = "stopped".into();
        }
        s.guest.pid = None;
    });
}

/// One life of the VM. `Ok` = stopped on request; `Err(reason)` = needs a restart.
fn run_once(
    cfg: &HostosConfig,
    disk: &std::path::Path,
    shared: &Shared,
    host: &Arc<AgentHost>,
    stop: &Arc<AtomicBool>,
    success: &regex::Regex,
    failure: &regex::Regex,
) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| format!("state folder {}: {e}", cfg.state_dir.display()))?;
    let guest_cfg = GuestConfig::from_host(cfg)?;
    write_config_disk(&cfg.state_dir.join("guest-config.img"), &guest_cfg)?;
    let log = cfg.state_dir.join("guest-serial.log");
    if log.exists() {
        let _ = std::fs::rename(&log, cfg.state_dir.join("guest-serial.log.1"));
    }
    let vcfg = vm_config(cfg, disk);
    let mut vm = Vm::start(&vcfg).map_err(|e| format!("cannot start QEMU: {e}"))?;
    tracing::info!(pid = vm.pid(), accel = ?vm.accel(), "GuestOS VM started");
    set(shared, |s| {
        s.guest.state = "booting".into();
        s.guest.pid = vm.pid();
        s.guest.accel = format!("{:?}", vm.accel()).to_lowercase();
        s.guest.serial_log = log.display().to_string();
        s.guest.started_at_unix = Some(UNIX_NOW());
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
    let result = watch(cfg, &mut vm, shared, stop, success, failure);
    chan_stop.store(true, Ordering::Relaxed);
    if result.is_ok() {
        set(shared, |s| s.guest.state = "stopping".into());
        if let Err(e) = vm.shutdown(Duration::from_secs(60)) {
            tracing::warn!("clean GuestOS shutdown failed ({e}); QEMU was killed");
        }
    } else {
        vm.kill();
    }
    let _ = chan.join();
    result
}

fn watch(
    cfg: &HostosConfig,
    vm: &mut Vm,
    shared: &Shared,
    stop: &AtomicBool,
    success: &regex::Regex,
    failure: &regex::Regex,
) -> Result<(), String> {
    // A guest that reboots (after an upgrade, say) goes through the firmware again: back to
    // the boot phase, with its timeout.
    let firmware = regex::Regex::new(r"BdsDxe: (loading|starting) ").expect("static regex");
    loop {
        boot(cfg, vm, shared, stop, success, failure)?;
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Running: until stop, a FAILURE line, a reboot, or QEMU exiting.
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match vm
                .wait_for(&[failure.clone(), firmware.clone()], Duration::from_secs(1))
                .map_err(|e| e.to_string())?
            {
                WaitOutcome::Matched { index: 0, line, .. } => {
                    return Err(format!("guest reported: {line}"))
                }
                WaitOutcome::Matched { .. } => {
                    tracing::info!("GuestOS is rebooting");
                    set(shared, |s| s.guest.state = "booting".into());
                    break;
                }
                WaitOutcome::Exited { status, .. } => {
                    return Err(format!(
                        "QEMU exited ({status}) while the guest was running"
                    ))
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
) -> Result<(), String> {
    let started = Instant::now();
    let timeout = Duration::from_secs(cfg.boot_timeout_secs);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let slice = Duration::from_secs(1).min(timeout.saturating_sub(started.elapsed()));
        match vm
            .wait_for(&[success.clone(), failure.clone()], slice)
            .map_err(|e| e.to_string())?
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
                    .map(|m| m.as_str().to_string());
                tracing::info!("GuestOS reported: {line}");
                set(shared, |s| {
                    s.guest.state = "running".into();
                    s.guest.version = version;
                    s.guest.slot = slot;
                    s.guest.consecutive_failures = 0;
                    s.guest.booted_at_unix = Some(UNIX_NOW());
                    s.guest.boot_secs = Some(started.elapsed().as_secs_f64());
                });
                return Ok(());
            }
            WaitOutcome::Matched { line, .. } => return Err(format!("guest reported: {line}")),
            WaitOutcome::Exited { status, .. } => {
                let qemu = vm.qemu_tail(3);
                let (what, tail) = if qemu.is_empty() {
                    ("last console lines", vm.serial_tail(3))
                } else {
                    ("QEMU said", qemu)
                };
                return Err(format!(
                    "QEMU exited ({status}) before the guest reported success; {what}: {}",
                    tail.replace('\n', " | ")
                ));
            }
            WaitOutcome::TimedOut { .. } if started.elapsed() >= timeout => {
                return Err(format!(
                    "no GUESTOS BOOT SUCCESS line within {} s (the guest hangs)",
                    cfg.boot_timeout_secs
                ))
            }
            WaitOutcome::TimedOut { .. } => {}
        }
    }
}
