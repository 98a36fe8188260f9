//! One more node installed the way a node provider installs one: a config folder for this
//! network (the operator key from the testnet's keys), `icos setupos check-config` and
//! `inject-config` onto a copy of the SetupOS image, SetupOS booted from that stick with two
//! blank disks (each `SETUPOS [n/8]` line reported as it comes), and HostOS booted from the
//! installed disk until its agent shows the node's deployment and addresses.
//!
//! The installed HostOS would start its GuestOS nested under software emulation here, far
//! too slowly to wait for; the VM is stopped once HostOS has shown its status. (The test
//! suite's SetupOS test runs the installed GuestOS and sees the node register.)

use crate::{copy_sparse, ensure_built, io, msg, Report, State, TestnetError};
use node_status::hostos::AgentStatus;
use regex::Regex;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vm_runner::{Vm, VmConfig, WaitOutcome};

/// The static IPv6 network of QEMU's user networking: prefix and gateway (the gateway also
/// reaches the host's ::1, where the registry listens).
const PREFIX: &str = "fec0:0:0:0";
const GATEWAY: &str = "fec0::2";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1500);
const HOSTOS_TIMEOUT: Duration = Duration::from_secs(600);

/// What the install showed.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The folder with the config, the stick, the disks and the serial logs.
    pub dir: PathBuf,
    /// SetupOS's own figure from `SETUPOS INSTALL COMPLETE in N s`.
    pub install_secs: f64,
    /// The HostOS agent's status from the installed disk.
    pub status: AgentStatus,
}

/// Install a node from a SetupOS stick into VM disks, then boot the installed HostOS.
/// `version` names the HostOS and GuestOS images SetupOS carries (built if missing).
pub fn install_node(
    state: &State,
    version: &str,
    report: &dyn Report,
) -> Result<Installed, TestnetError> {
    let dir = state.dir.join("setupos");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(format!("clearing {}", dir.display())))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let setupos = setupos_image(state, version, report)?;
    let n = state.nodes.len() + 1;
    let folder = config_folder(state, &dir, n)?;
    report.line(&format!(
        "SetupOS: the operator's config folder is {}",
        folder.display()
    ));
    run_icos(state, report, &["setupos", "check-config"], &[&folder])?;
    let stick = dir.join("setupos-stick.img");
    copy_sparse(&setupos.join("disk.img"), &stick)?;
    run_icos(
        state,
        report,
        &["setupos", "inject-config", "--image"],
        &[&stick, Path::new("--config"), &folder],
    )?;
    let disks = [dir.join("disk1.img"), dir.join("disk2.img")];
    for (d, size) in disks.iter().zip([8u64 << 30, 2 << 30]) {
        std::fs::File::create(d)
            .and_then(|f| f.set_len(size))
            .map_err(io(format!("creating the blank disk {}", d.display())))?;
    }
    let uplink = format!("52:54:00:5e:01:{n:02x}");
    let install_secs = install(&dir, &stick, &disks, &uplink, report)?;
    let status = boot_hostos(&dir, &disks, &uplink, report)?;
    Ok(Installed {
        dir,
        install_secs,
        status,
    })
}

/// The SetupOS image for `version` (HostOS and GuestOS of that version on it), built here
/// when the images folder has none built from the recipes as they are now.
fn setupos_image(
    state: &State,
    version: &str,
    report: &dyn Report,
) -> Result<PathBuf, TestnetError> {
    let built = |kind: &str| state.images.join(format!("{kind}-{version}"));
    let request = |kind: &str| {
        image_builder::BuildRequest::new(state.recipes.join(kind), version, built(kind))
    };
    let guestos = request("guestos");
    let hostos = request("hostos");
    let mut inputs_built = ensure_built(&guestos, &format!("GuestOS {version}"), report)?;
    inputs_built |= ensure_built(&hostos, &format!("HostOS {version}"), report)?;
    let mut setupos = request("setupos");
    setupos.hostos = Some(hostos.out);
    setupos.guestos = Some(guestos.out);
    if inputs_built {
        // It carries both images: new ones make it stale whatever its recipe says.
        report.line(&format!(
            "building SetupOS {version} (it carries both images)"
        ));
        image_builder::build(&setupos)
            .map_err(|e| msg(format!("building SetupOS {version}: {e}")))?;
    } else {
        ensure_built(&setupos, &format!("SetupOS {version}"), report)?;
    }
    Ok(setupos.out)
}

/// The folder a node provider writes: `config.ini`, `deployment.json`, the operator key.
fn config_folder(state: &State, dir: &Path, n: usize) -> Result<PathBuf, TestnetError> {
    let f = dir.join("config");
    std::fs::create_dir_all(&f).map_err(io(format!("creating {}", f.display())))?;
    let write = |name: &str, text: String| {
        std::fs::write(f.join(name), text).map_err(io(format!("writing {name}")))
    };
    write(
        "config.ini",
        format!(
            "# node {n} of the local network: QEMU's user network, static IPv6\n\
             ipv6_prefix = {PREFIX}\nipv6_gateway = {GATEWAY}\nverbose = true\n"
        ),
    )?;
    let deployment = serde_json::json!({
        "deployment": { "name": "testnet", "mgmt_mac": format!("02:00:00:00:01:{n:02x}") },
        "registry": {
            "urls": [format!("http://[{GATEWAY}]:{}", state.registry_port)],
            "genesis_hash": state.genesis_hash,
        },
        "network": "static",
        "resources": { "memory_mib": 1024, "vcpus": 1 },
        "hardware_profile": "vm",
    });
    write(
        "deployment.json",
        serde_json::to_string_pretty(&deployment).expect("serializes"),
    )?;
    let key = state.dir.join("keys/operator_op1.key");
    std::fs::copy(&key, f.join("node_operator_private_key.pem"))
        .map_err(io(format!("copying the operator key {}", key.display())))?;
    Ok(f)
}

/// Run `icos ARGS PATHS`, reporting its output; a non-zero exit is an error.
fn run_icos(
    state: &State,
    report: &dyn Report,
    args: &[&str],
    paths: &[&Path],
) -> Result<(), TestnetError> {
    let shown = format!(
        "icos {} {}",
        args.join(" "),
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    report.line(&format!("$ {shown}"));
    let out = Command::new(&state.icos)
        .args(args)
        .args(paths)
        .output()
        .map_err(io(format!("running {shown}")))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        report.line(&format!("  {l}"));
    }
    if !out.status.success() {
        return Err(msg(format!("`{shown}` failed ({})", out.status)));
    }
    Ok(())
}

fn vm_config(disk: &Path, extra: &[PathBuf], log: &Path, uplink: &str) -> VmConfig {
    let mut cfg = VmConfig::new(disk, log);
    cfg.name = "icos-setupos-node".into();
    cfg.extra_disks = extra.to_vec();
    cfg.memory_mib = 2048;
    cfg.cpus = 2;
    cfg.network = Some(vec![]);
    cfg.mac = Some(uplink.into());
    cfg.cache_dir = Some(image_builder::default_cache_dir());
    cfg
}

/// Boot SetupOS from the stick with the two disks; report each step line; return the
/// install time SetupOS printed.
fn install(
    dir: &Path,
    stick: &Path,
    disks: &[PathBuf],
    uplink: &str,
    report: &dyn Report,
) -> Result<f64, TestnetError> {
    let log = dir.join("setupos-serial.log");
    let mut cfg = vm_config(stick, disks, &log, uplink);
    cfg.no_reboot = true;
    report.line(&format!(
        "booting SetupOS from the stick with two blank disks (8 and 2 GiB); console in {}",
        log.display()
    ));
    let mut vm = Vm::start(&cfg).map_err(|e| msg(format!("starting the SetupOS VM: {e}")))?;
    let patterns = [
        re(r"SETUPOS INSTALL COMPLETE in ([0-9.]+) s"),
        re("SETUPOS FAILED"),
        re(r"SETUPOS \[\d+/\d+\]|SetupOS .*(HostOS|GuestOS) [0-9a-f:]+ "),
    ];
    let end = Instant::now() + INSTALL_TIMEOUT;
    let result = loop {
        let left = end.saturating_duration_since(Instant::now());
        match vm.wait_for(&patterns, left) {
            Ok(WaitOutcome::Matched { index: 2, line, .. }) => {
                report.line(line.trim());
            }
            Ok(WaitOutcome::Matched { index: 0, line, .. }) => {
                report.line(line.trim());
                let secs = patterns[0]
                    .captures(&line)
                    .and_then(|c| c[1].parse::<f64>().ok())
                    .unwrap_or(0.0);
                break Ok(secs);
            }
            Ok(WaitOutcome::Matched { line, .. }) => break Err(line.trim().to_string()),
            Ok(other) => break Err(format!("SetupOS did not finish: {other:?}")),
            Err(e) => break Err(e.to_string()),
        }
    };
    vm.kill();
    result.map_err(|e| {
        msg(format!(
            "{e}\n--- SetupOS console ---\n{}",
            vm_runner::serial_tail(&log, 40)
        ))
    })
}

/// Boot HostOS from the installed first disk (the second one is part of its GuestOS
/// volume) and read its agent's status once the static address is up.
fn boot_hostos(
    dir: &Path,
    disks: &[PathBuf],
    uplink: &str,
    report: &dyn Report,
) -> Result<AgentStatus, TestnetError> {
    let log = dir.join("hostos-serial.log");
    let agent_port = crate::free_port()?;
    let mut cfg = vm_config(&disks[0], &disks[1..], &log, uplink);
    // The uplink carries only the static IPv6 network and QEMU forwards only IPv4: the
    // agent's status is reached through a second, out-of-band NIC.
    cfg.oob_network = Some(vec![(agent_port, 9100)]);
    cfg.efi_vars = Some(dir.join("hostos.efivars.fd"));
    report.line(&format!(
        "booting the installed disk: HostOS (console in {})",
        log.display()
    ));
    let mut vm = Vm::start(&cfg).map_err(|e| msg(format!("starting the HostOS VM: {e}")))?;
    let result = hostos_status(&mut vm, agent_port, report);
    vm.kill();
    result.map_err(|e| {
        msg(format!(
            "{e}\n--- HostOS console ---\n{}",
            vm_runner::serial_tail(&log, 40)
        ))
    })
}

fn hostos_status(vm: &mut Vm, port: u16, report: &dyn Report) -> Result<AgentStatus, String> {
    let patterns = [re("HOSTOS BOOT SUCCESS"), re("HOSTOS BOOT FAILURE")];
    match vm.wait_for(&patterns, HOSTOS_TIMEOUT) {
        Ok(WaitOutcome::Matched { index: 0, line, .. }) => report.line(line.trim()),
        Ok(other) => return Err(format!("HostOS did not boot: {other:?}")),
        Err(e) => return Err(e.to_string()),
    }
    let url = format!("http://127.0.0.1:{port}/v1/status");
    let end = Instant::now() + Duration::from_secs(180);
    loop {
        let r = node_status::fetch::<AgentStatus>(&url, Duration::from_secs(5));
        match r {
            // Until networkd has applied the static file, the planned address is missing.
            Ok(s)
                if s.node
                    .hostos_ipv6
                    .as_ref()
                    .is_some_and(|ip| s.node.configured_ipv6.contains(ip)) =>
            {
                return Ok(s)
            }
            Ok(s) if Instant::now() > end => {
                return Err(format!(
                    "HostOS never configured its static address: {:?}",
                    s.node
                ))
            }
            Err(e) if Instant::now() > end => return Err(format!("the HostOS agent: {e}")),
            _ => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

fn re(p: &str) -> Regex {
    Regex::new(p).expect("a valid pattern")
}
