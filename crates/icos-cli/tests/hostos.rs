//! The HostOS agent with real GuestOS VMs (TCG), and the HostOS image running it.

mod common;
use common::*;
use hostos_agent::config::HostosConfig;
use hostos_agent::{Agent, AgentStatus};
use node_status::hostos::{Accel, GuestState};
use std::path::Path;
use std::time::{Duration, Instant};

fn agent_config(dir: &Path, disk: &Path, extra: &str) -> HostosConfig {
    let text = format!(
        r#"
[node]
deployment = "local"
management_mac = "02:00:00:00:00:07"
hostos_version = "0.9.0-dev"
[guest]
disk = "{disk}"
{extra}
[agent]
state_dir = "{state}"
listen = "127.0.0.1:0"
[dev]
extra_ports = ["{TEST_PORT}={sock}"]
"#,
        disk = disk.display(),
        state = dir.join("state").display(),
        sock = dir.join("test.sock").display(),
    );
    let cfg = HostosConfig::parse(&text, "test").unwrap();
    assert!(cfg.problems.is_empty(), "{:?}", cfg.problems);
    cfg
}

/// Poll the agent's status until `ok`; the last status on timeout.
fn poll_status(
    agent: &Agent,
    timeout: Duration,
    ok: impl Fn(&AgentStatus) -> bool,
) -> Result<AgentStatus, Box<AgentStatus>> {
    let end = Instant::now() + timeout;
    loop {
        let s = agent.status();
        if ok(&s) {
            return Ok(s);
        }
        if Instant::now() > end {
            return Err(Box::new(s));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status_failure(what: &str, timeout: Duration, s: &AgentStatus) -> String {
    format!(
        "agent: {what} did not happen within {timeout:?}; status {}\n--- guest serial log ---\n{}",
        serde_json::to_string_pretty(s).unwrap(),
        vm_runner::serial_tail(Path::new(&s.guest.serial_log), 40)
    )
}

/// Poll the agent's status until `ok`, or fail with the guest's serial log.
fn wait_status(
    agent: &Agent,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    poll_status(agent, timeout, ok)
        .unwrap_or_else(|s| panic!("{}", status_failure(what, timeout, &s)))
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

#[test]
fn agent_runs_the_guest_serves_the_channel_and_restarts_a_killed_vm() {
    let img = test_image("agent", "1.0.0", &[]);
    let dir = run_dir().join("hostos-agent-main");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("guest.img");
    sparse_copy(&img.join("disk.img"), &disk);
    let agent = Agent::start(agent_config(
        &dir,
        &disk,
        "boot_timeout_secs = 300\nmax_restarts = 3",
    ))
    .unwrap();

    let s = wait_status(&agent, "a running guest", BOOT_TIMEOUT, |s| {
        s.guest.state == GuestState::Running
    });
    assert_eq!(
        (s.guest.version.as_deref(), s.guest.slot),
        (Some("1.0.0"), Some(disk_layout::Slot::A))
    );
    // The guest's boot greeting came over the channel, and the guest learned our version.
    let hello = Duration::from_secs(120);
    if let Err(s) = poll_status(&agent, hello, |s| {
        s.last_notification.as_deref() == Some("GUESTOS 1.0.0 booted on slot A")
    }) {
        // What the guest itself saw: the unit, its journal and the channel device.
        let mut sh = GuestShell::connect(&dir.join("test.sock"));
        let (_, inside) = sh.run(
            "systemctl status --no-pager icos-guest-hello.service; \
             journalctl -b --no-pager -u icos-guest-hello.service; ls -l /dev/virtio-ports",
            Duration::from_secs(60),
        );
        panic!(
            "{}\n--- inside the guest ---\n{inside}",
            status_failure("the guest's hello", hello, &s)
        );
    }
    // The guest writes the line before it notifies, but the console drains asynchronously.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let serial = std::fs::read_to_string(&s.guest.serial_log).unwrap_or_default();
        if serial.contains("GUESTOS HOST hostos=0.9.0-dev") {
            break;
        }
        let tail: Vec<&str> = serial.lines().rev().take(20).collect();
        assert!(
            Instant::now() < end,
            "guest did not print the host version; serial tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // From inside the real guest: requests, and hostile bytes on the channel device.
    let mut sh = GuestShell::connect(&dir.join("test.sock"));
    let (rc, out) = sh.run("icos channel hostos-version", Duration::from_secs(60));
    assert_eq!((rc, out.trim()), (0, "0.9.0-dev"));
    let (rc, _) = sh.run(
        "icos channel notify 'hello from the guest'",
        Duration::from_secs(60),
    );
    assert_eq!(rc, 0);
    wait_status(&agent, "the notify", Duration::from_secs(10), |s| {
        s.last_notification.as_deref() == Some("hello from the guest")
    });
    let raw = |payload: &str| {
        format!("exec 3<>/dev/virtio-ports/org.icos.host.0; {payload} >&3; read -t 20 line <&3; echo \"$line\"")
    };
    let (_, out) = sh.run(&raw("printf 'junk\\n'"), Duration::from_secs(60));
    assert!(out.contains("malformed request"), "{out}");
    let (_, out) = sh.run(
        &raw("{ head -c 6000 /dev/zero | tr '\\0' x; echo; }"),
        Duration::from_secs(60),
    );
    assert!(out.contains("longer than 4096"), "{out}");
    let (_, out) = sh.run(
        &raw(
            r#"echo '{"v":1,"id":9,"req":{"type":"upgrade","url":"http://evil/x","sha256":"00"}}'"#,
        ),
        Duration::from_secs(60),
    );
    assert!(
        out.contains("unknown variant") && out.contains("\"id\":9"),
        "{out}"
    );
    let (rc, out) = sh.run(
        "icos channel request-hostos-upgrade",
        Duration::from_secs(60),
    );
    assert_ne!(rc, 0);
    assert!(out.contains("no registry configured"), "{out}");
    // A flood of notifies is throttled; the host keeps answering other requests.
    let (rc, out) = sh.run(
        "for i in $(seq 1 40); do icos channel notify flood-$i >/dev/null 2>&1; done; icos channel hostos-version",
        Duration::from_secs(300),
    );
    assert_eq!(
        (rc, out.trim().lines().last()),
        (0, Some("0.9.0-dev")),
        "{out}"
    );
    let s = wait_status(&agent, "throttling", Duration::from_secs(10), |s| {
        s.channel.throttled > 0
    });
    assert!(s.channel.errors >= 4, "{:?}", s.channel);
    drop(sh);

    // Cut QEMU: the agent restarts the VM and says why.
    let pid = s.guest.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = wait_status(
        &agent,
        "a restart after QEMU was killed",
        BOOT_TIMEOUT,
        |s| s.guest.restarts >= 1 && s.guest.state == GuestState::Running,
    );
    assert!(
        s.guest
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("QEMU exited"),
        "{:?}",
        s.guest.last_error
    );
    let metrics = hostos_agent::metrics(&s);
    assert!(
        metrics.contains("icos_hostos_guest_restarts_total 1"),
        "{metrics}"
    );
    let new_pid = s.guest.pid.unwrap();
    assert_ne!(new_pid, pid);
    // Stopping the agent powers the VM down: no QEMU is left.
    agent.stop();
    assert!(
        !alive(new_pid),
        "QEMU {new_pid} is still running after the agent stopped"
    );
}

#[test]
fn agent_restarts_a_guest_that_fails_or_hangs_and_gives_up_after_its_limit() {
    let broken = test_image(
        "broken-unit",
        "1.0.0",
        &[(
            "required_units = [",
            "required_units = [\"icos-test-broken.service\", ",
        )],
    );
    let good = test_image("agent", "1.0.0", &[]);
    for (name, img, extra, reason) in [
        (
            "failing",
            &broken,
            "boot_timeout_secs = 300\nmax_restarts = 2",
            "GUESTOS BOOT FAILURE unit icos-test-broken.service failed",
        ),
        (
            "hanging",
            &good,
            "boot_timeout_secs = 4\nmax_restarts = 2",
            "no GUESTOS BOOT SUCCESS line within 4 s (the guest hangs)",
        ),
    ] {
        let dir = run_dir().join(format!("hostos-agent-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let disk = dir.join("guest.img");
        sparse_copy(&img.join("disk.img"), &disk);
        let agent = Agent::start(agent_config(&dir, &disk, extra)).unwrap();
        let s = wait_status(
            &agent,
            "giving up",
            Duration::from_secs(2 * BOOT_TIMEOUT.as_secs()),
            |s| s.guest.state == GuestState::GaveUp,
        );
        assert_eq!(s.guest.restarts, 2, "{name}");
        let err = s.guest.last_error.clone().unwrap_or_default();
        assert!(err.contains(reason), "{name}: {err}");
        agent.stop();
    }
}

/// Write `hostos.toml` onto the FAT config partition of a HostOS disk image.
fn write_hostos_config(disk: &Path, text: &str) {
    let parts = disk_layout::read_partitions(disk).unwrap();
    let p = parts.iter().find(|p| p.label == "config").unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let mut fat = boot_slots::Esp::open(disk_layout::Window::new(f, p.start, p.size)).unwrap();
    fat.write_file("hostos.toml", &mut text.as_bytes()).unwrap();
    fat.close().unwrap();
}

/// The HostOS image in QEMU: its agent starts, and the HostOS self-upgrade runs through the
/// same code path a guest request takes (the agent's upgrade request: registry lookup of
/// the version assigned to this node, install, activate, reboot). The nested GuestOS VM
/// starts but is not expected to finish booting: TCG inside TCG is too slow.
#[test]
fn hostos_image_runs_its_agent_and_upgrades_itself() {
    use registry_model::*;
    let h1 = image_version("hostos", "1.0.0");
    let h2 = image_version("hostos", "1.1.0");
    let dir = run_dir().join("hostos-image");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // Governance: elect HostOS 1.1.0, register this node, assign 1.1.0 to it.
    let gov = registry_server::localnet::LocalGovernance::create(
        &dir.join("keys"),
        "hostos-test",
        &[60, 40],
        &[("op1", 4)],
        registry_server::localnet::LocalGovernance::default_settings,
    )
    .unwrap();
    let g = registry_server::Registry::init(&dir.join("registry"), &gov.genesis).unwrap();
    let reg = std::sync::Arc::new(
        registry_server::Registry::open(&dir.join("registry"), &gov.dir.join("online.key"))
            .unwrap(),
    );
    let addr = registry_server::http::spawn(reg.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let pkg = h2.join("update.tar");
    let files = HttpServer::start(vec![("/hostos-1.1.0.tar", pkg.clone())], None);
    let node_key = keys::generate();
    let (node_id, _) = reg
        .register(SignedRegistration::sign(
            reg.new_registration(
                "op1",
                keys::public_hex(&node_key),
                "fd00::7".into(),
                "http://[fd00::7]:8080".into(),
            )
            .unwrap(),
            &gov.operators[0].1,
        ))
        .unwrap();
    for action in [
        Action::ElectHostos(Elected {
            version: "1.1.0".into(),
            sha256: sha256_of(&pkg).parse().unwrap(),
            size: None,
            urls: vec![files.guest_url("/hostos-1.1.0.tar")],
        }),
        Action::DeployHostosToNodes {
            nodes: vec![node_id.clone()],
            version: "1.1.0".into(),
        },
    ] {
        let p = reg
            .submit_proposal(SignedProposal::sign(
                reg.new_proposal(1, "t", action).unwrap(),
                &gov.neurons[0],
            ))
            .unwrap();
        assert!(
            matches!(
                p.status,
                registry_model::api::ProposalStatus::Adopted { .. }
            ),
            "{:?}",
            p.status
        );
    }

    let disk = dir.join("hostos.img");
    sparse_copy(&h1.join("disk.img"), &disk);
    let host_toml = format!(
        r#"[node]
deployment = "local"
management_mac = "02:00:00:00:00:09"
node_id = "{node_id}"
[guest]
disk = "/dev/disk/by-partlabel/guestos"
memory_mib = 512
[registry]
urls = ["http://10.0.2.2:{port}"]
genesis_hash = "{genesis}"
[upgrade]
hostos_disk = "running"
[agent]
state_dir = "/var/lib/icos/hostos"
listen = "0.0.0.0:9100"
console = true
"#,
        port = addr.port(),
        genesis = g.hash()
    );
    write_hostos_config(&disk, &host_toml);
    // HostOS gives its uplink the node's derived MAC; QEMU's DHCP leases and port forwards
    // follow the MAC, so the VM's NIC has that MAC from the start (a server's NIC has its
    // own, and HostOS changes it at boot).
    let host_mac = HostosConfig::parse(&host_toml, "test")
        .unwrap()
        .hostos_mac();
    let agent_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.join("hostos.log");
    let mut cfg = vm_runner::VmConfig::new(&disk, &log);
    cfg.memory_mib = 2048;
    cfg.network = Some(vec![(agent_port, 9100)]);
    cfg.mac = Some(host_mac.to_string());
    cfg.cache_dir = Some(image_builder::default_cache_dir());
    cfg.efi_vars = Some(dir.join("efivars.fd"));
    let mut vm = vm_runner::Vm::start(&cfg).unwrap();
    expect_line(
        &mut vm,
        &log,
        "HOSTOS BOOT SUCCESS version=1.0.0 slot=A",
        BOOT_TIMEOUT,
    );

    // The agent is up inside the HostOS VM and started the (nested) GuestOS VM.
    let status_url = format!("http://127.0.0.1:{agent_port}/v1/status");
    let end = Instant::now() + Duration::from_secs(120);
    let fetch = || node_status::fetch::<AgentStatus>(&status_url, Duration::from_secs(5));
    let status = loop {
        let last = match fetch() {
            Ok(v) if v.guest.pid.is_some() => break v,
            Ok(v) => format!("the agent answers, no guest yet: {:?}", v.guest),
            Err(e) => format!("the agent does not answer: {e}"),
        };
        assert!(
            Instant::now() < end,
            "the HostOS agent did not start the GuestOS VM ({last})\n{}",
            vm_runner::serial_tail(&log, 40)
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    assert_eq!(status.hostos_version, "1.0.0");
    assert_eq!(status.guest.accel, Some(Accel::Tcg));
    eprintln!("HostOS agent runs the nested GuestOS VM (state {:?}); it is not expected to finish booting under TCG-in-TCG", status.guest.state);

    // The upgrade request: the agent looks up 1.1.0 for this node in its verified registry.
    let r = request_hostos_upgrade(agent_port);
    assert!(r.contains("\"started\"") && r.contains("1.1.0"), "{r}");
    expect_line(
        &mut vm,
        &log,
        "HOSTOS UPGRADE HostOS 1.1.0 installed and activated",
        Duration::from_secs(900),
    );
    expect_line(
        &mut vm,
        &log,
        "HOSTOS BOOT SUCCESS version=1.1.0 slot=B",
        BOOT_TIMEOUT,
    );
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(v) = fetch() {
            if v.hostos_version == "1.1.0" && v.guest.pid.is_some() {
                break;
            }
        }
        assert!(
            Instant::now() < end,
            "the new HostOS's agent did not come up\n{}",
            vm_runner::serial_tail(&log, 40)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    // 1.1.0 stays on trial: it is confirmed only once its GuestOS reports success, which
    // the nested VM cannot do here in time.
    vm.kill();
}

/// Ask the agent for its HostOS upgrade. A refusal because the registry could not be reached
/// (the agent syncs on every request; under a loaded TCG host its 10 s fetch can time out) is
/// retried for up to 2 minutes, as an operator would; any other refusal fails at once with the
/// agent's reason.
fn request_hostos_upgrade(agent_port: u16) -> String {
    let url = format!("http://127.0.0.1:{agent_port}/v1/request-hostos-upgrade");
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        match ureq::post(&url).call() {
            Ok(r) => return r.into_string().unwrap(),
            Err(ureq::Error::Status(409, r)) => {
                let body = r.into_string().unwrap_or_default();
                assert!(
                    body.contains("cannot sync the registry") && Instant::now() < end,
                    "the agent refused the upgrade request: {body}"
                );
                eprintln!("the agent could not sync its registry yet, retrying: {body}");
            }
            Err(e) => panic!("the upgrade request failed: {e}"),
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}
