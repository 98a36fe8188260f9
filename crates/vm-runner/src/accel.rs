//! KVM or TCG, decided by trying: OVMF must reach its boot manager under KVM.

use crate::*;

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
