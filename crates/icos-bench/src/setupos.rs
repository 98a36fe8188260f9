//! SetupOS install benchmark: the time from the installer's start to `INSTALL COMPLETE`
//! (every check, HostOS and GuestOS written chunk by chunk, LVM, the handover, the commit),
//! against the floor of decompressing and copying the same two images with `zstd -d | dd`
//! onto the same places, measured by the same SetupOS in the same VM right after its install
//! (the `icos.setupos.measure_floor` kernel argument, added to the boot entry of the copy
//! of the stick the benchmark boots).

use crate::BenchError;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SetuposBench {
    pub install_secs: f64,
    pub floor_secs: f64,
}

impl SetuposBench {
    pub fn ratio(&self) -> f64 {
        self.install_secs / self.floor_secs
    }
}

fn fail(m: impl Into<String>) -> BenchError {
    BenchError::Testnet(testnet::TestnetError::Msg(m.into()))
}

/// Run the benchmark with a built SetupOS image (`setupos`, an `icos build` output folder).
pub fn setupos_benchmark(
    icos: &Path,
    setupos: &Path,
    work: &Path,
) -> Result<SetuposBench, BenchError> {
    std::fs::create_dir_all(work).map_err(|e| fail(format!("{}: {e}", work.display())))?;
    let gov = registry_server::localnet::LocalGovernance::create(
        &work.join("keys"),
        "bench",
        &[100],
        &[("op1", 4)],
        registry_server::localnet::LocalGovernance::default_settings,
    )
    .map_err(|e| fail(e.to_string()))?;
    let g = registry_server::Registry::init(&work.join("registry"), &gov.genesis)
        .map_err(|e| fail(e.to_string()))?;
    let server = std::sync::Arc::new(
        registry_server::Registry::open(&work.join("registry"), &gov.dir.join("online.key"))
            .map_err(|e| fail(e.to_string()))?,
    );
    let addr = registry_server::http::spawn(server, "[::]:0".parse().expect("static"))
        .map_err(|e| fail(e.to_string()))?;
    let folder = work.join("config");
    write_config(&folder, &g.hash(), addr.port(), &gov)?;
    let stick = work.join("stick.img");
    testnet::copy_sparse(&setupos.join("disk.img"), &stick)?;
    let out = std::process::Command::new(icos)
        .args(["setupos", "inject-config", "--image"])
        .arg(&stick)
        .arg("--config")
        .arg(&folder)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    add_kernel_arg(&stick, setupos::MEASURE_FLOOR_ARG)?;
    let targets = [work.join("t1.img"), work.join("t2.img")];
    for (t, size) in targets.iter().zip([8u64 << 30, 2 << 30]) {
        let f = std::fs::File::create(t).map_err(|e| fail(e.to_string()))?;
        f.set_len(size).map_err(|e| fail(e.to_string()))?;
    }
    let log = work.join("serial.log");
    let mut cfg = vm_runner::VmConfig::new(&stick, &log);
    cfg.extra_disks = targets.to_vec();
    cfg.memory_mib = 2048;
    cfg.cpus = 2;
    cfg.network = Some(vec![]);
    cfg.no_reboot = true;
    cfg.cache_dir = Some(image_builder::default_cache_dir());
    let mut vm = vm_runner::Vm::start(&cfg)?;
    let re = |p: &str| regex::Regex::new(p).expect("static regex");
    let patterns = [
        re(r"SETUPOS FLOOR zstd -d \| dd of both images: ([0-9.]+) s"),
        re("SETUPOS FAILED|SETUPOS FLOOR failed"),
    ];
    let outcome = vm.wait_for(&patterns, Duration::from_secs(3600))?;
    vm.kill();
    let serial = vm_runner::serial_tail(&log, 200);
    let floor = match outcome {
        vm_runner::WaitOutcome::Matched { index: 0, line, .. } => number(&patterns[0], &line),
        other => return Err(fail(format!("SetupOS did not finish: {other:?}\n{serial}"))),
    };
    let install = serial
        .lines()
        .find_map(|l| {
            let r = re(r"SETUPOS INSTALL COMPLETE in ([0-9.]+) s");
            r.is_match(l).then(|| number(&r, l))
        })
        .flatten();
    match (install, floor) {
        (Some(install_secs), Some(floor_secs)) => Ok(SetuposBench {
            install_secs,
            floor_secs,
        }),
        _ => Err(fail(format!("no timings in the serial log:\n{serial}"))),
    }
}

fn number(re: &regex::Regex, line: &str) -> Option<f64> {
    re.captures(line)?.get(1)?.as_str().parse().ok()
}

fn write_config(
    dir: &PathBuf,
    genesis: &str,
    port: u16,
    gov: &registry_server::localnet::LocalGovernance,
) -> Result<(), BenchError> {
    let e = |x: std::io::Error| fail(x.to_string());
    std::fs::create_dir_all(dir).map_err(e)?;
    std::fs::write(
        dir.join("config.ini"),
        "ipv6_prefix=fec0:0:0:0\nipv6_gateway=fec0::2\n",
    )
    .map_err(e)?;
    std::fs::write(
        dir.join("deployment.json"),
        format!(
            r#"{{"deployment": {{"name": "bench", "mgmt_mac": "02:00:00:00:be:01"}},
 "registry": {{"urls": ["http://[fec0::2]:{port}"], "genesis_hash": "{genesis}"}},
 "network": "static", "resources": {{"memory_mib": 1024, "vcpus": 1}}, "hardware_profile": "vm"}}"#
        ),
    )
    .map_err(e)?;
    let pem =
        registry_model::keys::key_pem(&gov.operators[0].1).map_err(|x| fail(x.to_string()))?;
    std::fs::write(dir.join("node_operator_private_key.pem"), pem).map_err(e)
}

/// Add a kernel argument to the boot entry of a (SetupOS) disk image.
fn add_kernel_arg(disk: &Path, arg: &str) -> Result<(), BenchError> {
    let parts = disk_layout::read_partitions(disk)?;
    let esp = parts
        .iter()
        .find(|p| p.label == "esp")
        .ok_or_else(|| fail("no esp partition"))?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|x| fail(x.to_string()))?;
    let mut fat = boot_slots::Esp::open(disk_layout::Window::new(f, esp.start, esp.size))?;
    for mut e in fat.entries()? {
        e.options = format!("{} {arg}", e.options);
        fat.write_entry(&e)?;
    }
    fat.close()?;
    Ok(())
}
