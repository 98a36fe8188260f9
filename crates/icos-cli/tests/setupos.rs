//! SetupOS in VMs: a real SetupOS image with an injected config installs onto two blank
//! disks; the first disk then boots HostOS, whose agent shows the node's deployment,
//! addresses and static network; the installed GuestOS volume verifies against its manifest
//! and spans the second disk; and a HostOS agent running that installed GuestOS registers the
//! node with the operator key that was only in the config folder. Checks that fail halt
//! SetupOS with its FAILED line and leave the target disks byte-for-byte untouched.

mod common;
use common::*;
use hostos_agent::config::HostosConfig;
use node_identity::{Mac, NodeType};
use registry_server::localnet::LocalGovernance;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_runner::{Vm, VmConfig};

const MGMT_MAC: &str = "02:00:00:00:5e:01";
/// The server's first NIC (the uplink SetupOS finds and records for HostOS).
const UPLINK_MAC: &str = "52:54:00:5e:00:01";
const PREFIX: &str = "fec0:0:0:0";
/// QEMU's user network: the IPv6 gateway, which also reaches the host's ::1.
const GATEWAY: &str = "fec0::2";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1500);

/// A registry on the host, on every address (QEMU's user network reaches ::1 as fec0::2).
struct Registry {
    gov: LocalGovernance,
    genesis_hash: String,
    port: u16,
    server: Arc<registry_server::Registry>,
}

fn registry(dir: &Path) -> Registry {
    let gov = LocalGovernance::create(
        &dir.join("keys"),
        "setupos-test",
        &[60, 40],
        &[("op1", 4)],
        LocalGovernance::default_settings,
    )
    .unwrap();
    let g = registry_server::Registry::init(&dir.join("registry"), &gov.genesis).unwrap();
    let server = Arc::new(
        registry_server::Registry::open(&dir.join("registry"), &gov.dir.join("online.key"))
            .unwrap(),
    );
    let addr = registry_server::http::spawn(server.clone(), "[::]:0".parse().unwrap()).unwrap();
    Registry {
        gov,
        genesis_hash: g.hash(),
        port: addr.port(),
        server,
    }
}

/// The operator's folder: config.ini, deployment.json, the operator key, an admin SSH key.
fn config_folder(dir: &Path, reg: &Registry, registry_url: &str, profile: &str) -> PathBuf {
    let f = dir.join("config");
    std::fs::create_dir_all(f.join("ssh_authorized_keys")).unwrap();
    std::fs::write(
        f.join("config.ini"),
        format!("# the test node\r\nipv6_prefix = {PREFIX}\r\nipv6_gateway = {GATEWAY}\r\nverbose=true\r\n"),
    )
    .unwrap();
    std::fs::write(
        f.join("deployment.json"),
        format!(
            r#"{{
  "deployment": {{ "name": "testnet", "mgmt_mac": "{MGMT_MAC}" }},
  "registry": {{ "urls": ["{registry_url}"], "genesis_hash": "{}" }},
  "network": "static",
  "resources": {{ "memory_mib": 1024, "vcpus": 1 }},
  "hardware_profile": "{profile}"
}}"#,
            reg.genesis_hash
        ),
    )
    .unwrap();
    std::fs::write(
        f.join("node_operator_private_key.pem"),
        registry_model::keys::key_pem(&reg.gov.operators[0].1).unwrap(),
    )
    .unwrap();
    std::fs::write(
        f.join("ssh_authorized_keys/admin"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f admin@test\n",
    )
    .unwrap();
    f
}

/// A copy of the SetupOS image with `folder` on its CONFIG partition.
fn stick(dir: &Path, folder: &Path) -> PathBuf {
    let img = dir.join("setupos-stick.img");
    sparse_copy(&image("setupos").join("disk.img"), &img);
    let out = icos()
        .args(["setupos", "inject-config", "--image"])
        .arg(&img)
        .arg("--config")
        .arg(folder)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    img
}

fn blank(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// Boot SetupOS from `stick` with `targets`; return the line matched and the serial log.
fn run_setupos(
    stick: &Path,
    targets: &[PathBuf],
    log: &Path,
    patterns: &[&str],
    timeout: Duration,
) -> (usize, String) {
    let mut cfg = VmConfig::new(stick, log);
    cfg.extra_disks = targets.to_vec();
    cfg.memory_mib = 2048;
    cfg.cpus = 2;
    cfg.network = Some(vec![]);
    cfg.mac = Some(UPLINK_MAC.into());
    cfg.no_reboot = true;
    cfg.cache_dir = Some(image_builder::default_cache_dir());
    let (index, line, _) = boot_config_until(&cfg, patterns, timeout);
    (index, line)
}

fn derived(t: NodeType) -> (Mac, std::net::Ipv6Addr) {
    let m = node_identity::deterministic_mac(&MGMT_MAC.parse().unwrap(), "testnet", t, 0);
    let p = node_identity::parse_prefix(PREFIX).unwrap();
    (m, node_identity::ipv6_address(&p, &m))
}

/// Where a linear LVM volume's first segment starts: the `pe_start` of its first physical
/// volume (from the metadata text in that volume's label area), in bytes from the PV start;
/// and the metadata text itself. The metadata area is a ring of versions: the newest (highest
/// `seqno`) is the group as it stands.
fn lvm_metadata(disk: &Path, pv_start: u64) -> (u64, String) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(disk).unwrap();
    let mut head = vec![0u8; 1 << 20];
    f.read_exact_at(&mut head, pv_start).unwrap();
    let text = String::from_utf8_lossy(&head).into_owned();
    let seqno = |m: &str| {
        m.lines()
            .find_map(|l| l.trim().strip_prefix("seqno = "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let meta = text
        .match_indices("hostlvm {")
        .map(|(start, _)| text[start..].split('\0').next().unwrap().to_string())
        .max_by_key(|m| seqno(m))
        .expect("LVM metadata of the hostlvm group");
    let pe_start = meta
        .lines()
        .find_map(|l| l.trim().strip_prefix("pe_start = "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("pe_start in the metadata");
    (pe_start * 512, meta)
}

#[test]
fn setupos_installs_a_node_that_boots_hostos_and_registers_with_the_operator_key() {
    let dir = run_dir().join("setupos-install");
    std::fs::create_dir_all(&dir).unwrap();
    let reg = registry(&dir);
    let url = format!("http://[{GATEWAY}]:{}", reg.port);
    let folder = config_folder(&dir, &reg, &url, "vm");
    let stick = stick(&dir, &folder);
    let disks = [dir.join("target1.img"), dir.join("target2.img")];
    blank(&disks[0], 8 << 30);
    blank(&disks[1], 2 << 30);

    // --- Install. -----------------------------------------------------------------------
    let log = dir.join("setupos.log");
    let t = Instant::now();
    let (i, line) = run_setupos(
        &stick,
        &disks,
        &log,
        &["SETUPOS INSTALL COMPLETE", "SETUPOS FAILED"],
        INSTALL_TIMEOUT,
    );
    let serial = vm_runner::serial_tail(&log, 200);
    assert_eq!(i, 0, "{line}\n{serial}");
    eprintln!(
        "SetupOS installed in {:.0} s:\n{serial}",
        t.elapsed().as_secs_f64()
    );
    for n in 1..=8 {
        assert!(
            serial.contains(&format!("SETUPOS [{n}/8]")),
            "step {n} missing:\n{serial}"
        );
    }
    let (host_mac, host_ip) = derived(NodeType::HostOs);
    let (guest_mac, guest_ip) = derived(NodeType::GuestOs);
    assert!(
        serial.contains(&format!("HostOS {host_mac} {host_ip}"))
            && serial.contains(&format!("GuestOS {guest_mac} {guest_ip}")),
        "the derived addresses are not printed:\n{serial}"
    );

    // --- The installed GuestOS volume: on LVM over both disks, the image verifies. -------
    let parts = disk_layout::read_partitions(&disks[0]).unwrap();
    let guest_part = parts.iter().find(|p| p.label == "guestos").unwrap();
    assert!(
        guest_part.start + guest_part.size > (8 << 30) - (2 << 20),
        "the guestos partition was not grown to the disk's end: {guest_part:?}"
    );
    let (pe_start, meta) = lvm_metadata(&disks[0], guest_part.start);
    assert!(
        meta.contains("pv1") && meta.contains("segment2"),
        "the second disk is not part of the GuestOS volume:\n{meta}"
    );
    let (_, meta2) = lvm_metadata(&disks[1], 0);
    assert!(
        meta2.contains("hostlvm {"),
        "no LVM label on the second disk"
    );
    let gm = manifest(&image("guestos"));
    let gsize = gm.layout.disk_size;
    let guest_img = dir.join("installed-guestos.img");
    {
        use std::os::unix::fs::FileExt;
        let src = std::fs::File::open(&disks[0]).unwrap();
        let dst = std::fs::File::create(&guest_img).unwrap();
        dst.set_len(gsize).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < gsize {
            let n = ((gsize - off) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], guest_part.start + pe_start + off)
                .unwrap();
            if buf[..n].iter().any(|b| *b != 0) {
                dst.write_all_at(&buf[..n], off).unwrap();
            }
            off += n as u64;
        }
    }
    assert_eq!(
        sha256_of(&guest_img),
        gm.outputs["disk.img"].sha256.to_string(),
        "the GuestOS on the volume is not the built image"
    );

    // --- The first disk boots HostOS; its agent shows the node. --------------------------
    let agent_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hlog = dir.join("hostos.log");
    let mut cfg = VmConfig::new(&disks[0], &hlog);
    cfg.extra_disks = vec![disks[1].clone()];
    cfg.memory_mib = 2048;
    cfg.cpus = 2;
    // The uplink carries only the static IPv6 network; the test reaches the agent through a
    // second, out-of-band NIC (DHCP by the image's fallback), as QEMU forwards only IPv4.
    cfg.network = Some(vec![]);
    cfg.mac = Some(UPLINK_MAC.into());
    cfg.oob_network = Some(vec![(agent_port, 9100)]);
    cfg.cache_dir = Some(image_builder::default_cache_dir());
    cfg.efi_vars = Some(dir.join("hostos.efivars.fd"));
    let mut vm = Vm::start(&cfg).unwrap();
    expect_line(
        &mut vm,
        &hlog,
        "HOSTOS BOOT SUCCESS version=1.0.0 slot=A",
        BOOT_TIMEOUT,
    );
    let url = format!("http://127.0.0.1:{agent_port}/v1/status");
    let end = Instant::now() + Duration::from_secs(120);
    let status = loop {
        match node_status::fetch::<node_status::hostos::AgentStatus>(&url, Duration::from_secs(5)) {
            // Until networkd has applied the static file, the planned address is missing.
            Ok(s) if s.node.configured_ipv6.contains(&host_ip.to_string()) => break s,
            Ok(s) if Instant::now() > end => panic!(
                "HostOS never had its static address {host_ip}: {:?}\n{}",
                s.node,
                vm_runner::serial_tail(&hlog, 60)
            ),
            Ok(_) => std::thread::sleep(Duration::from_secs(2)),
            Err(e) if Instant::now() > end => panic!("{e}\n{}", vm_runner::serial_tail(&hlog, 60)),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    };
    vm.kill();
    let n = &status.node;
    assert_eq!(n.deployment, "testnet", "{status:?}");
    assert_eq!(n.management_mac, MGMT_MAC);
    assert_eq!(
        (n.hostos_mac.as_str(), n.hostos_ipv6.as_deref()),
        (
            host_mac.to_string().as_str(),
            Some(host_ip.to_string().as_str())
        )
    );
    assert_eq!(
        (n.guestos_mac.as_str(), n.guestos_ipv6.as_deref()),
        (
            guest_mac.to_string().as_str(),
            Some(guest_ip.to_string().as_str())
        )
    );
    assert_eq!(
        (n.network.as_str(), n.ipv6_gateway.as_deref()),
        ("static", Some(GATEWAY))
    );
    assert!(
        status.config_problems.is_empty(),
        "{:?}",
        status.config_problems
    );
    let hserial = vm_runner::serial_tail(&hlog, 400);
    assert!(!hserial.contains("HOSTOS CONFIG PROBLEM"), "{hserial}");

    // --- A HostOS agent runs the installed GuestOS; the node registers with the key that
    // only the config folder had. ------------------------------------------------------------
    let installed = {
        let parts = disk_layout::read_partitions(&disks[0]).unwrap();
        let c = parts.iter().find(|p| p.label == "config").unwrap();
        let f = std::fs::File::open(&disks[0]).unwrap();
        let fat = boot_slots::Esp::open(disk_layout::Window::new(
            disk_layout::ReadOnly(f),
            c.start,
            c.size,
        ))
        .unwrap();
        String::from_utf8(fat.read_file("hostos.toml").unwrap()).unwrap()
    };
    let mut host = HostosConfig::parse(&installed, "installed hostos.toml").unwrap();
    assert!(host.problems.is_empty(), "{:?}", host.problems);
    assert!(host.operator_key_pem.is_some() && host.operator_key_file.is_none());
    assert!(installed.contains("ssh-ed25519"), "{installed}");
    assert_eq!(
        host.uplink_mac,
        Some(UPLINK_MAC.parse().unwrap()),
        "{installed}"
    );
    // Development knobs only: where the guest's disk and state are on this machine, and the
    // registry as this machine reaches it; everything else is what SetupOS wrote.
    host.guest_disk = Some(guest_img.clone());
    host.state_dir = dir.join("agent-state");
    host.listen = "127.0.0.1:0".parse().unwrap();
    host.hostos_disk = None;
    host.console = false;
    host.boot_timeout_secs = 900;
    host.guest_registry_urls = host.registry.as_ref().unwrap().urls.clone();
    host.registry.as_mut().unwrap().urls = vec![format!("http://[::1]:{}", reg.port)];
    let agent = hostos_agent::Agent::start(host).unwrap();
    let end = Instant::now() + Duration::from_secs(480);
    let node = loop {
        let r = reg.server.registry();
        if let Some(n) = r.nodes.values().find(|n| n.operator == "op1") {
            break n.clone();
        }
        assert!(
            Instant::now() < end,
            "the installed node did not register: {:?}\n{}",
            agent.status(),
            vm_runner::serial_tail(&dir.join("agent-state/guest-serial.log"), 60)
        );
        std::thread::sleep(Duration::from_secs(3));
    };
    agent.stop();
    assert_eq!(
        node.ipv6.parse::<std::net::Ipv6Addr>().unwrap(),
        guest_ip,
        "{node:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Three checks that must stop SetupOS before anything is written: a config error, a
/// hardware profile the VM does not meet, no registry. Each halts with its FAILED line, and
/// the target disks keep every byte.
#[test]
fn setupos_fails_before_writing_and_leaves_the_disks_untouched() {
    let dir = run_dir().join("setupos-fail");
    std::fs::create_dir_all(&dir).unwrap();
    let reg = registry(&dir);
    let good_url = format!("http://[{GATEWAY}]:{}", reg.port);
    let disks = [dir.join("t1.img"), dir.join("t2.img")];
    for (i, d) in disks.iter().enumerate() {
        let bytes: Vec<u8> = (0..(16u32 << 20))
            .map(|x| (x.wrapping_mul(2654435761) >> (8 + i)) as u8)
            .collect();
        std::fs::write(d, bytes).unwrap();
    }
    let hashes: Vec<String> = disks.iter().map(|d| sha256_of(d)).collect();
    let closed = std::net::TcpListener::bind("[::]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cases: [(&str, &str, &str, &str); 3] = [
        ("config", "vm", "missing-deployment", "SETUPOS FAILED at config: .*deployment.json: found no such file"),
        ("hardware", "production", "", "SETUPOS FAILED at hardware: this machine does not meet the Production profile: CPU: .*found `"),
        ("network", "vm", "closed", "SETUPOS FAILED at network and time: no registry URL gave a verifiable answer"),
    ];
    for (name, profile, twist, expect) in cases {
        let case = dir.join(name);
        std::fs::create_dir_all(&case).unwrap();
        let url = if twist == "closed" {
            format!("http://[{GATEWAY}]:{closed}")
        } else {
            good_url.clone()
        };
        let folder = config_folder(&case, &reg, &url, profile);
        let stick = case.join("stick.img");
        sparse_copy(&image("setupos").join("disk.img"), &stick);
        if twist == "missing-deployment" {
            // Written by hand onto the partition (inject-config would refuse the folder).
            let good = stick_with(&case, &folder);
            std::fs::rename(good, &stick).unwrap();
            remove_from_config_partition(&stick, "deployment.json");
        } else {
            let s = stick_with(&case, &folder);
            std::fs::rename(s, &stick).unwrap();
        }
        let log = case.join("serial.log");
        let (i, line) = run_setupos(
            &stick,
            &disks,
            &log,
            &[expect, "SETUPOS INSTALL COMPLETE", "SETUPOS FAILED"],
            Duration::from_secs(600),
        );
        assert_eq!(i, 0, "{name}: {line}\n{}", vm_runner::serial_tail(&log, 60));
        assert!(line.contains(" — "), "the line says what to do: {line}");
        for (d, h) in disks.iter().zip(&hashes) {
            assert_eq!(&sha256_of(d), h, "{name}: {} was written to", d.display());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn stick_with(dir: &Path, folder: &Path) -> PathBuf {
    let s = stick(dir, folder);
    let out = dir.join("with-config.img");
    std::fs::rename(&s, &out).unwrap();
    out
}

fn remove_from_config_partition(img: &Path, name: &str) {
    let parts = disk_layout::read_partitions(img).unwrap();
    let p = parts.iter().find(|p| p.label == "setup_config").unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut fat = boot_slots::Esp::open(disk_layout::Window::new(f, p.start, p.size)).unwrap();
    fat.remove(name).unwrap();
    fat.close().unwrap();
}
