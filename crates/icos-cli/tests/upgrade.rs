//! The A/B upgrade engine on real images: offline (disk image) and inside QEMU (TCG).

mod common;
use common::*;
use disk_layout::Slot;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;
use upgrade_engine::{Engine, SlotState};

const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

fn base() -> PathBuf {
    test_image("agent", "1.0.0", &[])
}

fn next() -> PathBuf {
    test_image("agent", "1.1.0", &[])
}

/// `icos upgrade --disk DISK ARGS`.
fn up_cmd(disk: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = icos();
    cmd.arg("upgrade").arg("--disk").arg(disk).args(args);
    cmd
}

fn up(disk: &Path, args: &[&str]) -> Output {
    up_cmd(disk, args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn status(disk: &Path) -> upgrade_engine::Status {
    Engine::open_disk(disk).unwrap().status().unwrap()
}

/// The disk still boots 1.0.0 from slot A and slot B has no entry.
fn assert_untouched(disk: &Path, why: &str) {
    let s = status(disk);
    assert_eq!(s.next_boot, Some(Slot::A), "{why}: {s:?}");
    assert_eq!(s.current_version.as_deref(), Some("1.0.0"), "{why}");
    assert_eq!(s.slots[1].state, SlotState::Empty, "{why}: {:?}", s.slots);
    assert_eq!(s.slots[0].state, SlotState::Confirmed, "{why}");
}

#[test]
fn offline_lifecycle_and_refusals() {
    let (base, next) = (base(), next());
    let pkg = next.join("update.tar");
    let sha = sha256_of(&pkg);
    let dir = run_dir().join("offline");
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("node.img");
    sparse_copy(&base.join("disk.img"), &disk);
    let pkg_s = pkg.to_str().unwrap();

    // Wrong expected hash: everything is read and checked, then refused.
    let o = up(&disk, &["install", pkg_s, "--sha256", &"0".repeat(64)]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("SHA-256") && text(&o).contains(&"0".repeat(64)),
        "{}",
        text(&o)
    );
    assert_untouched(&disk, "wrong hash");
    let s = status(&disk);
    let li = s.state.last_install.as_ref().unwrap();
    assert!(!li.ok && li.message.contains("SHA-256"), "{li:?}");

    // One flipped byte inside root.img.
    let bytes = std::fs::read(&pkg).unwrap();
    let flipped = dir.join("flipped.tar");
    let mut b = bytes.clone();
    let at = b.len() - (10 << 20);
    b[at] ^= 0x01;
    std::fs::write(&flipped, &b).unwrap();
    let o = up(
        &disk,
        &[
            "install",
            flipped.to_str().unwrap(),
            "--sha256",
            &sha256_of(&flipped),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("root.img"), "{}", text(&o));
    assert_untouched(&disk, "flipped byte");

    // Truncated download.
    let truncated = dir.join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let o = up(
        &disk,
        &["install", truncated.to_str().unwrap(), "--sha256", &sha],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("truncated"), "{}", text(&o));
    assert_untouched(&disk, "truncated");

    // Oversized: a valid package followed by far more data than any slot holds.
    let oversized = dir.join("oversized.tar");
    std::fs::copy(&pkg, &oversized).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&oversized)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let o = up(
        &disk,
        &["install", oversized.to_str().unwrap(), "--sha256", &sha],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("larger than"), "{}", text(&o));
    assert_untouched(&disk, "oversized");

    // A package for another image kind.
    let hostos = image("hostos").join("update.tar");
    let o = up(
        &disk,
        &[
            "install",
            hostos.to_str().unwrap(),
            "--sha256",
            &sha256_of(&hostos),
        ],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("package is for hostos, this disk runs guestos"),
        "{}",
        text(&o)
    );
    assert_untouched(&disk, "wrong kind");

    // A target partition too small for the root image.
    let small = dir.join("small-b.img");
    sparse_copy(&disk, &small);
    let parts = disk_layout::read_partitions(&small).unwrap();
    let b_root = parts.iter().find(|p| p.label == "B_root").unwrap();
    let first = b_root.start / 512;
    let st = std::process::Command::new("sgdisk")
        .arg(format!("--delete={}", b_root.number))
        .arg(format!(
            "--new={}:{first}:{}",
            b_root.number,
            first + (64 << 20) / 512 - 1
        ))
        .arg(format!("--change-name={}:B_root", b_root.number))
        .arg(format!(
            "--partition-guid={}:{}",
            b_root.number, b_root.guid
        ))
        .arg(&small)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let o = up(&small, &["install", pkg_s, "--sha256", &sha]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("partition `B_root` has 67108864"),
        "{}",
        text(&o)
    );
    assert_untouched(&small, "small partition");
    std::fs::remove_file(&small).unwrap();

    // A disk whose running slot lost its boot entry.
    let noentry = dir.join("noentry.img");
    sparse_copy(&disk, &noentry);
    {
        use boot_slots::Esp;
        let esp = parts.iter().find(|p| p.label == "esp").unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&noentry)
            .unwrap();
        let mut e = Esp::open(disk_layout::Window::new(f, esp.start, esp.size)).unwrap();
        e.remove_entries(Slot::A).unwrap();
        e.close().unwrap();
    }
    let o = up(&noentry, &["install", pkg_s, "--sha256", &sha]);
    assert!(!o.status.success());
    assert!(text(&o).contains("has no boot entry"), "{}", text(&o));
    std::fs::remove_file(&noentry).unwrap();

    // Another operation holds the engine (as the boot-time confirmation does): `--wait 0`
    // refuses at once and names it; the default waits, says why once, and goes on when the
    // lock is released.
    let mut holder = Engine::open_disk(&disk).unwrap();
    holder.lock().unwrap();
    let o = up(&disk, &["--wait", "0", "install", pkg_s, "--sha256", &sha]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("another icos upgrade operation is running on"),
        "{}",
        text(&o)
    );
    assert_untouched(&disk, "locked");
    // Released once the waiting install says it waits (not after a guessed sleep).
    let mut waiting = up_cmd(&disk, &["install", pkg_s, "--sha256", &sha])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = String::new();
    let mut stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    while !said.contains("waiting up to 600 s") {
        if std::io::BufRead::read_line(&mut stderr, &mut said).unwrap() == 0 {
            break;
        }
    }
    drop(holder);
    std::io::Read::read_to_string(&mut stderr, &mut said).unwrap();
    // The real thing: install (the one that waited), activate (trial), refuse a second
    // install, confirm, roll back.
    let o = waiting.wait_with_output().unwrap();
    let o = Output {
        stderr: said.into_bytes(),
        ..o
    };
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        text(&o).matches("waiting up to 600 s").count(),
        1,
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("installed guestos 1.1.0 into slot B"),
        "{}",
        text(&o)
    );
    let o = up(&disk, &["activate", "--tries", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = status(&disk);
    assert_eq!(s.next_boot, Some(Slot::B));
    assert_eq!(s.slots[1].state, SlotState::Trial { tries_left: 2 });
    let o = up(&disk, &["install", pkg_s, "--sha256", &sha]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not confirmed yet"), "{}", text(&o));
    let o = up(&disk, &["confirm"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(status(&disk).slots[1].state, SlotState::Confirmed);
    let o = up(&disk, &["rollback", "--reason", "operator test"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = status(&disk);
    assert_eq!(s.next_boot, Some(Slot::A));
    assert_eq!(s.state.rollback_count, 1);
    let m = String::from_utf8(up(&disk, &["metrics"]).stdout).unwrap();
    assert!(
        m.contains("icos_upgrade_rollbacks_total{kind=\"guestos\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("icos_upgrade_running_info{kind=\"guestos\",slot=\"A\",version=\"1.0.0\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "icos_upgrade_last_install_success{kind=\"guestos\",slot=\"B\",version=\"1.1.0\"} 1"
        ),
        "{m}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The verity parameters of the slot that boots next, and a check that its root partition
/// holds exactly what its boot entry's root hash describes.
fn assert_next_slot_intact(disk: &Path) -> (Slot, String) {
    use std::os::unix::fs::FileExt;
    let e = Engine::open_disk(disk).unwrap();
    let entries = e.entries().unwrap();
    drop(e);
    let next = boot_slots::next_boot(&entries)
        .expect("a bootable entry")
        .clone();
    assert_ne!(next.tries_left, Some(0), "next boot is a bad entry");
    let arg = |k: &str| {
        next.options
            .split_whitespace()
            .find_map(|a| a.strip_prefix(k))
            .unwrap_or_else(|| panic!("{k} missing in {}", next.options))
            .to_string()
    };
    let root_hash = arg("icos.roothash=");
    let verity = arg("icos.verity=");
    let mut it = verity.split(':');
    let blocks: u64 = it.next().unwrap().parse().unwrap();
    let hash_offset: u64 = it.next().unwrap().parse().unwrap();
    let salt = hex::decode(it.next().unwrap()).unwrap();
    let parts = disk_layout::read_partitions(disk).unwrap();
    let root = parts
        .iter()
        .find(|p| p.label == format!("{}_root", next.slot))
        .unwrap();
    let f = std::fs::File::open(disk).unwrap();
    let mut l0 = upgrade_engine::verity::Level0::new(&salt);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < hash_offset {
        let n = ((hash_offset - off) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], root.start + off).unwrap();
        l0.update(&buf[..n]);
        off += n as u64;
    }
    let (digest, _, _) = l0.finish();
    let mut tree = disk_layout::Window::new(
        f,
        root.start + hash_offset,
        upgrade_engine::verity::tree_bytes(blocks),
    );
    upgrade_engine::verity::verify_tree(&mut tree, &salt, blocks, &digest, &root_hash)
        .unwrap_or_else(|err| panic!("slot {} does not match its boot entry: {err}", next.slot));
    (next.slot, next.version)
}

fn steps_of(disk: &Path, args: &[&str]) -> u64 {
    let o = icos()
        .env("ICOS_UPGRADE_COUNT_STEPS", "1")
        .arg("upgrade")
        .arg("--disk")
        .arg(disk)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    t.lines()
        .find_map(|l| l.strip_prefix("steps="))
        .unwrap_or_else(|| panic!("no step count in: {t}"))
        .trim()
        .parse()
        .unwrap()
}

/// Cut the power after every write step of install, activate, confirm and rollback; after
/// each cut the disk must boot a slot that verifies against its root hash, and the recorded
/// state must say what happened.
#[test]
fn power_cut_at_every_step_recovers() {
    let (base, next) = (base(), next());
    let pkg = next.join("update.tar");
    let sha = sha256_of(&pkg);
    let pkg_s = pkg.to_str().unwrap().to_string();
    let dir = run_dir().join("powercut");
    std::fs::create_dir_all(&dir).unwrap();
    // Disks in the state before each operation.
    let before_install = dir.join("before-install.img");
    sparse_copy(&base.join("disk.img"), &before_install);
    let ops: Vec<(&str, Vec<String>)> = vec![
        (
            "install",
            vec![
                "install".into(),
                pkg_s.clone(),
                "--sha256".into(),
                sha.clone(),
            ],
        ),
        ("activate", vec!["activate".into()]),
        ("confirm", vec!["confirm".into()]),
        (
            "rollback",
            vec![
                "rollback".into(),
                "--reason".into(),
                "power cut test".into(),
            ],
        ),
    ];
    let mut state_disk = before_install.clone();
    let mut covered = 0;
    let mut booted = std::collections::HashSet::new();
    for (name, args) in &ops {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let probe = dir.join(format!("probe-{name}.img"));
        sparse_copy(&state_disk, &probe);
        let steps = steps_of(&probe, &args);
        assert!(steps >= 2, "{name} has {steps} steps");
        for n in 1..=steps {
            let disk = dir.join(format!("cut-{name}-{n}.img"));
            sparse_copy(&state_disk, &disk);
            let o = icos()
                .env("ICOS_UPGRADE_CRASH_AT", n.to_string())
                .arg("upgrade")
                .arg("--disk")
                .arg(&disk)
                .args(&args)
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(137), "{name} step {n}: {}", text(&o));
            // After the cut: the state is readable and tells what was going on.
            let s = status(&disk);
            let interrupted = s.notes.iter().any(|n| n.contains("interrupted"));
            if n < steps {
                assert!(
                    interrupted,
                    "{name} cut at {n}/{steps}: status does not say so: {:?}",
                    s.notes
                );
            }
            if *name == "install" {
                assert_eq!(
                    s.next_boot,
                    Some(Slot::A),
                    "a half-installed slot must not boot (cut {n})"
                );
                assert_eq!(s.slots[1].state, SlotState::Empty);
            }
            // The slot that boots next is complete and verifies; and it really boots. The
            // firmware's choice and what it loads follow from the boot entries alone (the rule
            // `boot_slots` models and the images tests check against systemd-boot), and the
            // chosen root was just verified, so one boot per distinct set of entries shows
            // every outcome: cuts that leave the entries as an earlier cut did share its boot.
            let (slot, version) = assert_next_slot_intact(&disk);
            let menu = format!("{:?}", Engine::open_disk(&disk).unwrap().entries().unwrap());
            if !booted.insert(menu) {
                eprintln!(
                    "cut {name} {n}/{steps}: same boot entries as an earlier cut, which booted \
                     {version} from slot {slot}; notes: {:?}",
                    s.notes
                );
                covered += 1;
                std::fs::remove_file(&disk).unwrap();
                continue;
            }
            let log = dir.join(format!("cut-{name}-{n}.log"));
            let (i, line, _) = boot_until(
                &disk,
                &log,
                &[
                    &format!("GUESTOS BOOT SUCCESS version={version} slot={slot}"),
                    "GUESTOS BOOT (SUCCESS|FAILURE)",
                ],
                true,
            );
            assert_eq!(
                i, 0,
                "{name} cut at {n}: expected {version} in slot {slot}, got {line}"
            );
            eprintln!(
                "cut {name} {n}/{steps}: boots {version} from slot {slot}; notes: {:?}",
                s.notes
            );
            covered += 1;
            std::fs::remove_file(&disk).unwrap();
        }
        // The probe ran the operation to the end: the next operation starts from there.
        state_disk = probe;
    }
    eprintln!(
        "power cut test: {covered} cut points covered, {} distinct boot menus booted a verified slot",
        booted.len()
    );
    assert!(covered >= 15, "only {covered} cut points");
    assert!(
        booted.len() >= 4,
        "only {} distinct boot menus",
        booted.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One VM life for the HTTP path of `icos upgrade` as an operator runs it on a node:
/// (a) a package with one flipped byte and a truncated one are refused while the node keeps
/// running; (b) QEMU killed in the middle of an install: the node boots its old version and
/// the half-written slot is never activated; (c) 1.0.0 then installs 1.1.0 from an HTTP
/// server on the host, reboots into it and confirms. Along the way, the encrypted data
/// partition: made on the first boot, opened after the cut, kept across the upgrade, and
/// unreadable on the raw disk. (A version whose health check fails
/// rolls back in the testnet test, through the orchestrator, with the same images.)
#[test]
fn http_installs_refuse_bad_packages_survive_a_cut_and_confirm() {
    let (base, next) = (base(), next());
    let dir = run_dir();
    let pkg = next.join("update.tar");
    let sha = sha256_of(&pkg);
    let bytes = std::fs::read(&pkg).unwrap();
    let flipped = dir.join("vm-flipped.tar");
    let mut b = bytes.clone();
    let at = b.len() - (20 << 20);
    b[at] ^= 0x80;
    std::fs::write(&flipped, &b).unwrap();
    let truncated = dir.join("vm-truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let server = HttpServer::start(
        vec![
            ("/flipped.tar", flipped.clone()),
            ("/truncated.tar", truncated.clone()),
            ("/1.1.0.tar", pkg.clone()),
        ],
        None,
    );
    // About 20 s for the whole package: long enough to pull the plug in the middle.
    let slow = HttpServer::start(vec![("/1.1.0.tar", pkg.clone())], Some(6 << 20));

    let disk = dir.join("http-upgrade.img");
    sparse_copy(&base.join("disk.img"), &disk);
    let (mut vm, log, sock) = start_vm(&disk, "http-upgrade");
    // The first boot makes the data partition: a key, LUKS2, ext4 inside.
    let line = expect_line(&mut vm, &log, "GUESTOS DATA", BOOT_TIMEOUT);
    assert_eq!(
        line,
        "GUESTOS DATA READY luks2=new filesystem=new key=new at /var/lib/icos/data"
    );
    expect_line(
        &mut vm,
        &log,
        "GUESTOS BOOT SUCCESS version=1.0.0 slot=A",
        BOOT_TIMEOUT,
    );
    let mut agent = GuestShell::connect(&sock);
    agent.wait_online();
    let (rc, out) = agent.run(
        &format!(
            "findmnt -no SOURCE,FSTYPE /var/lib/icos/data && cryptsetup status icos-data \
             && echo {DATA_MARKER} > /var/lib/icos/data/marker && sync"
        ),
        Duration::from_secs(60),
    );
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("/dev/mapper/icos-data ext4"), "{out}");
    assert!(out.contains("type:    LUKS2"), "{out}");
    let (rc, out) = agent.run(
        &format!(
            "icos upgrade install {} --sha256 {sha}",
            server.guest_url("/flipped.tar")
        ),
        INSTALL_TIMEOUT,
    );
    assert_ne!(rc, 0, "{out}");
    assert!(out.contains("root.img"), "flipped byte: {out}");
    let (rc, out) = agent.run(
        &format!(
            "icos upgrade install {} --sha256 {sha}",
            server.guest_url("/truncated.tar")
        ),
        INSTALL_TIMEOUT,
    );
    assert_ne!(rc, 0, "{out}");
    assert!(out.contains("truncated"), "truncated: {out}");
    let (rc, out) = agent.run(
        "icos upgrade status --json && systemctl is-active icos-boot-status.service",
        Duration::from_secs(60),
    );
    assert_eq!(rc, 0, "the node keeps running: {out}");
    assert!(out.contains("\"next_boot\": \"A\""), "{out}");

    agent.send(&format!(
        "icos upgrade install {} --sha256 {sha}",
        slow.guest_url("/1.1.0.tar")
    ));
    // Cut once the guest is well into the download (the install's start is durable before
    // the first byte is read), not after a guessed sleep that a loaded machine can outrun.
    assert!(
        slow.wait_sent(8 << 20, Duration::from_secs(180)),
        "the guest never got 8 MiB into the slow download ({} bytes sent)",
        slow.bytes_sent()
    );
    drop(agent);
    vm.kill();
    drop(vm);

    let (mut vm, log, sock) = start_vm(&disk, "http-upgrade-after-cut");
    let line = expect_line(&mut vm, &log, "GUESTOS DATA", BOOT_TIMEOUT);
    assert_eq!(
        line,
        "GUESTOS DATA READY luks2=existing filesystem=existing key=existing at /var/lib/icos/data"
    );
    let line = expect_line(
        &mut vm,
        &log,
        "GUESTOS BOOT (SUCCESS|FAILURE)",
        BOOT_TIMEOUT,
    );
    assert_eq!(line, "GUESTOS BOOT SUCCESS version=1.0.0 slot=A");
    let mut agent = GuestShell::connect(&sock);
    let (rc, out) = agent.run("icos upgrade status", Duration::from_secs(60));
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("slot B: -          empty"), "{out}");
    assert!(
        out.contains("interrupted"),
        "the cut install is reported: {out}"
    );

    agent.wait_online();
    // Right after boot the boot-time reconcile may still hold the engine's lock: the install
    // waits for it.
    let (rc, out) = agent.run(
        &format!(
            "icos upgrade install {} --sha256 {sha}",
            server.guest_url("/1.1.0.tar")
        ),
        INSTALL_TIMEOUT,
    );
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("installed guestos 1.1.0 into slot B"), "{out}");
    agent.send("icos upgrade activate --reboot");
    drop(agent);
    expect_line(
        &mut vm,
        &log,
        "GUESTOS BOOT SUCCESS version=1.1.0 slot=B",
        BOOT_TIMEOUT,
    );
    expect_line(
        &mut vm,
        &log,
        "GUESTOS UPGRADE CONFIRMED version=1.1.0 slot=B",
        BOOT_TIMEOUT,
    );
    let mut agent = GuestShell::connect(&sock);
    let (rc, out) = agent.run("icos upgrade status", Duration::from_secs(60));
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("slot B: 1.1.0      confirmed"), "{out}");
    // The data partition belongs to no slot: what 1.0.0 wrote, 1.1.0 reads.
    let (rc, out) = agent.run("cat /var/lib/icos/data/marker", Duration::from_secs(60));
    assert_eq!((rc, out.trim()), (0, DATA_MARKER), "{out}");
    drop(agent);
    vm.shutdown(Duration::from_secs(60)).unwrap();
    // On the disk the partition is LUKS2 and the marker is nowhere in it.
    let data = disk_layout::read_partitions(&disk)
        .unwrap()
        .into_iter()
        .find(|p| p.label == "data")
        .unwrap();
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&disk).unwrap();
    let mut magic = [0u8; 6];
    f.read_exact_at(&mut magic, data.start).unwrap();
    assert_eq!(&magic, b"LUKS\xba\xbe", "the data partition is not LUKS");
    // In 16 MiB windows that overlap by the marker's length.
    let (chunk, overlap) = (16u64 << 20, DATA_MARKER.len() as u64);
    let mut at = data.start;
    while at < data.start + data.size {
        let len = chunk.min(data.start + data.size - at) as usize;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, at).unwrap();
        assert!(
            !buf.windows(DATA_MARKER.len())
                .any(|w| w == DATA_MARKER.as_bytes()),
            "the marker is readable on the raw data partition near byte {at}"
        );
        at += chunk - overlap;
    }
}

/// Written to the data partition by 1.0.0, read by 1.1.0, never seen on the raw disk.
const DATA_MARKER: &str = "kept-across-upgrades-5c1e";

/// A version whose kernel never reaches userspace (its root fails verification at boot)
/// burns its boot tries; systemd-boot then starts the old slot, which records the rollback
/// and says so on the console. No human involved.
#[test]
fn unbootable_version_falls_back_after_its_tries() {
    use std::os::unix::fs::FileExt;
    let (base, next) = (base(), next());
    let dir = run_dir();
    let disk = dir.join("unbootable.img");
    sparse_copy(&base.join("disk.img"), &disk);
    let pkg = next.join("update.tar");
    let o = up(
        &disk,
        &[
            "install",
            pkg.to_str().unwrap(),
            "--sha256",
            &sha256_of(&pkg),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = up(&disk, &["activate", "--tries", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    // Damage slot B's root after the install: block 0 (the erofs superblock) no longer
    // matches the verity tree, so every boot of B panics in the initramfs.
    let b_root = disk_layout::read_partitions(&disk)
        .unwrap()
        .into_iter()
        .find(|p| p.label == "B_root")
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, b_root.start + 1030).unwrap();
    byte[0] ^= 0x20;
    f.write_all_at(&byte, b_root.start + 1030).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let (mut vm, log, _sock) = start_vm(&disk, "unbootable");
    expect_line(&mut vm, &log, "dm-verity device corrupted", BOOT_TIMEOUT);
    expect_line(&mut vm, &log, "dm-verity device corrupted", BOOT_TIMEOUT);
    let line = expect_line(&mut vm, &log, "GUESTOS BOOT SUCCESS", BOOT_TIMEOUT);
    assert_eq!(line, "GUESTOS BOOT SUCCESS version=1.0.0 slot=A");
    let line = expect_line(&mut vm, &log, "GUESTOS UPGRADE ROLLBACK", BOOT_TIMEOUT);
    assert!(
        line.contains("from=1.1.0 slot=B to=1.0.0 slot=A")
            && line.contains("did not boot successfully in 2 tries"),
        "{line}"
    );
    vm.shutdown(Duration::from_secs(60)).unwrap();
    let s = status(&disk);
    assert_eq!(s.slots[1].state, SlotState::Bad);
    assert_eq!(s.state.rollback_count, 1);
    assert_eq!(s.state.failed_versions, vec!["1.1.0".to_string()]);
}
