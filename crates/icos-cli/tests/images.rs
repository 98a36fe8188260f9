//! System tests: real images built from the recipes and booted in QEMU (TCG here).

mod common;
use common::*;

/// Physical byte range of a file inside an erofs image (first extent), via dump.erofs.
fn first_extent(erofs: &std::path::Path, path: &str) -> (u64, u64) {
    let out = std::process::Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg("-e")
        .arg(erofs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "   0:        0..   11271 |   11271 :   55717888..  55721984 |    4096"
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("0:") {
            let phys = t.split(':').nth(2).unwrap();
            let range = phys.split('|').next().unwrap().trim();
            let (a, b) = range.split_once("..").unwrap();
            return (a.trim().parse().unwrap(), b.trim().parse().unwrap());
        }
    }
    panic!("no extent for {path} in dump.erofs output:\n{text}");
}

/// Flip one byte inside the root filesystem of a built image: the OS must not come up on
/// the tampered data. Two places: the erofs superblock (read at mount) and the first block
/// of /usr/lib/systemd/systemd (read when PID 1 starts).
#[test]
fn tampered_root_filesystem_does_not_boot() {
    use std::os::unix::fs::FileExt;
    let out = image("guestos");
    let m = manifest(&out);
    let root = m.layout.by_label("A_root").unwrap();
    let dir = run_dir();
    // Extract the erofs part of the root partition to locate the systemd binary in it.
    let disk = std::fs::File::open(out.join("disk.img")).unwrap();
    let mut fs = vec![0u8; m.verity.hash_offset as usize];
    disk.read_exact_at(&mut fs, root.start).unwrap();
    let erofs = dir.join("tamper-root.erofs");
    std::fs::write(&erofs, &fs).unwrap();
    let (start, end) = first_extent(&erofs, "/usr/lib/systemd/systemd");
    assert!(end > start && end <= m.verity.hash_offset);

    for (name, offset) in [
        ("superblock", 1024 + 8),
        ("systemd", start + (end - start) / 2),
    ] {
        let copy = dir.join(format!("tampered-{name}.img"));
        sparse_copy(&out.join("disk.img"), &copy);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&copy)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, root.start + offset).unwrap();
        b[0] ^= 0x40;
        f.write_all_at(&b, root.start + offset).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let log = dir.join(format!("tampered-{name}.log"));
        let (i, line, _) = boot_until(
            &copy,
            &log,
            &[
                r"data block \d+ is corrupted|dm-verity device corrupted|GUESTOS BOOT FAILURE",
                "GUESTOS BOOT SUCCESS",
            ],
            true,
        );
        assert_eq!(i, 0, "tampered ({name}) image booted: {line}");
        eprintln!("tampered {name}: {line}");
        let _ = std::fs::remove_file(&copy);
    }
}

/// The ESP of a copy of a built image, opened for editing.
fn open_esp(
    out: &std::path::Path,
    disk: &std::path::Path,
) -> boot_slots::Esp<disk_layout::Window<std::fs::File>> {
    let m = manifest(out);
    let esp = m.layout.by_label("esp").unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    boot_slots::Esp::open(disk_layout::Window::new(f, esp.start, esp.size())).unwrap()
}

/// The initramfs names what it cannot find, on the console, as a boot failure: here a boot
/// entry whose root partition GUID is on no disk.
#[test]
fn initramfs_names_a_missing_root_partition() {
    let out = image("guestos");
    let disk = run_dir().join("no-root.img");
    sparse_copy(&out.join("disk.img"), &disk);
    let missing = "0badc0de-0000-4000-8000-000000000001";
    {
        let mut esp = open_esp(&out, &disk);
        let mut a = esp.entry_for(disk_layout::Slot::A).unwrap();
        let root = a
            .options
            .split_whitespace()
            .find_map(|o| o.strip_prefix("icos.root=PARTUUID="))
            .unwrap()
            .to_string();
        a.options = a.options.replace(&root, missing);
        esp.write_entry(&a).unwrap();
        esp.close().unwrap();
    }
    let log = run_dir().join("no-root.log");
    let (i, line, _) = boot_until(
        &disk,
        &log,
        &["GUESTOS BOOT FAILURE", "GUESTOS BOOT SUCCESS"],
        true,
    );
    assert_eq!(i, 0, "booted without its root partition: {line}");
    assert!(
        line.contains(&format!(
            "initramfs: root partition PARTUUID={missing} not found"
        )) && line.contains("disks seen: vda"),
        "{line}"
    );
    let _ = std::fs::remove_file(&disk);
}

/// The slot's /var: wiped (as the upgrade engine leaves it for a new version) it is created
/// on boot; with a superblock the kernel refuses it is recreated rather than keeping the node
/// down; either way the node boots and says what it did.
#[test]
fn initramfs_creates_a_wiped_var_and_recreates_a_broken_one() {
    use std::os::unix::fs::FileExt;
    let out = image("guestos");
    let m = manifest(&out);
    let var = m.layout.by_label("A_var").unwrap();
    for (case, expect) in [
        (
            "wiped",
            "icos: creating /var on /dev/vda4 (first boot of this slot)",
        ),
        ("broken", "icos: /var on /dev/vda4 could not be mounted"),
    ] {
        let disk = run_dir().join(format!("var-{case}.img"));
        sparse_copy(&out.join("disk.img"), &disk);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        if case == "wiped" {
            f.write_all_at(&vec![0u8; 1 << 20], var.start).unwrap();
        } else {
            // An incompatible-feature bit no kernel knows (s_feature_incompat, byte 0x60 of
            // the superblock): the magic is intact, mounting fails.
            let at = var.start + 1024 + 0x60 + 3;
            let mut b = [0u8; 1];
            f.read_exact_at(&mut b, at).unwrap();
            f.write_all_at(&[b[0] | 0x80], at).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let log = run_dir().join(format!("var-{case}.log"));
        let (i, line, _) = boot_until(
            &disk,
            &log,
            &["GUESTOS BOOT SUCCESS", "GUESTOS BOOT FAILURE"],
            true,
        );
        let serial = std::fs::read_to_string(&log).unwrap();
        assert_eq!(i, 0, "{case} /var: {line}\n{serial}");
        assert!(
            serial.contains(expect),
            "{case} /var: no `{expect}` in\n{serial}"
        );
        let _ = std::fs::remove_file(&disk);
    }
}

/// Collects what the testnet reports.
#[derive(Default)]
struct Lines(std::cell::RefCell<Vec<String>>);
impl testnet::Report for Lines {
    fn line(&self, text: &str) {
        self.0.borrow_mut().push(text.to_string());
    }
}

/// Two builds of the same version from the same inputs are bit-identical, and
/// `icos verify-build` says so; a manifest that records a different root image is
/// reported with that part's name.
#[test]
fn builds_are_reproducible_and_verifiable() {
    let out = image("guestos");
    let first = manifest(&out);
    let again = run_dir()
        .join("guestos-again")
        .join(format!("guestos-{VERSION}"));
    let req = image_builder::BuildRequest::new(recipes().join("guestos"), VERSION, &again);
    let second = image_builder::build(&req).unwrap();
    // What the testnet asks before it reuses an image folder: built from the recipe and the
    // icos source as they are now. A changed overlay file makes the folder stale; no manifest, no build.
    assert!(req.is_built().unwrap());
    let edited = run_dir().join("recipes-edited");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(recipes())
        .arg(&edited)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::write(edited.join("guestos/files/etc/fstab"), "# edited\n").unwrap();
    let stale = image_builder::BuildRequest::new(edited.join("guestos"), VERSION, &again);
    assert!(
        !stale.is_built().unwrap(),
        "a changed recipe counts as built"
    );
    // The testnet rebuilds its own stale folders, but a linked one is somebody's build of
    // another recipe on purpose: used as it is, said so, and never written through.
    let link = run_dir().join("guestos-linked");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&again, &link).unwrap();
    let linked = image_builder::BuildRequest::new(edited.join("guestos"), VERSION, &link);
    let said = Lines::default();
    assert!(!testnet::ensure_built(&linked, "GuestOS", &said).unwrap());
    assert!(
        said.0.borrow()[0].contains("as it is (a link to"),
        "{:?}",
        said.0.borrow()
    );
    assert!(req.is_built().unwrap(), "the link's target was rebuilt");
    std::fs::remove_file(&link).unwrap();
    // The manifest records the icos binaries it carries: a source change (here, a recorded
    // digest that no longer matches what the source builds) makes the folder stale too.
    let copy = run_dir().join("guestos-source-changed");
    std::fs::create_dir_all(&copy).unwrap();
    let mut m = second.clone();
    assert_eq!(
        m.binaries.keys().collect::<Vec<_>>(),
        ["icos-init", "icos-node"]
    );
    let as_built = image_builder::BuildRequest::new(recipes().join("guestos"), VERSION, &copy);
    let record = |m: &image_builder::BuildManifest| {
        std::fs::write(
            copy.join("manifest.json"),
            serde_json::to_vec_pretty(m).unwrap(),
        )
        .unwrap()
    };
    record(&m);
    assert!(
        as_built.is_built().unwrap(),
        "the same source counts as stale"
    );
    m.binaries.get_mut("icos-node").unwrap().sha256 = "00".repeat(32).parse().unwrap();
    record(&m);
    assert!(
        !as_built.is_built().unwrap(),
        "another icos-node counts as built"
    );
    std::fs::remove_dir_all(&copy).unwrap();
    let none = image_builder::BuildRequest::new(recipes().join("guestos"), VERSION, &edited);
    assert!(
        !none.is_built().unwrap(),
        "a folder without a manifest counts as built"
    );
    std::fs::remove_dir_all(&edited).unwrap();
    assert_eq!(
        first.outputs["disk.img"], second.outputs["disk.img"],
        "disk.img differs"
    );
    assert_eq!(
        first.outputs["update.tar"], second.outputs["update.tar"],
        "update.tar differs"
    );
    assert_eq!(
        std::fs::read(out.join("manifest.json")).unwrap(),
        std::fs::read(again.join("manifest.json")).unwrap()
    );
    assert_eq!(
        std::fs::read(out.join("SHA256SUMS")).unwrap(),
        std::fs::read(again.join("SHA256SUMS")).unwrap()
    );

    let verify = icos()
        .arg("verify-build")
        .arg(again.join("manifest.json"))
        .arg("--recipes")
        .arg(recipes())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(stdout.contains("bit-for-bit identical"), "{stdout}");

    // A manifest claiming another root image: the comparison names the part.
    let mut forged = first.clone();
    forged.parts.get_mut("root.img").unwrap().sha256 = "00".repeat(32).parse().unwrap();
    let report = image_builder::compare(&forged, &second);
    assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    assert!(report.differences[0].part.contains("root.img"));
    std::fs::remove_dir_all(again.parent().unwrap()).unwrap();
}

/// The update package is what the upgrade engine consumes: valid, and within the size target.
#[test]
fn update_package_is_valid_and_small() {
    let out = image("guestos");
    let pkg = out.join("update.tar");
    let m = update_package::verify_package(&pkg).unwrap().manifest;
    assert_eq!(m.version, VERSION);
    assert_eq!(m.kind, update_package::ImageKind::Guestos);
    let size = std::fs::metadata(&pkg).unwrap().len();
    assert!(size <= 150 << 20, "update package is {} MiB", size >> 20);
    let bm = manifest(&out);
    image_builder::verify_root_image(
        &{
            // root.img from the disk's A_root partition.
            let root = bm.layout.by_label("A_root").unwrap();
            let p = run_dir().join("root-check.img");
            let disk = std::fs::File::open(out.join("disk.img")).unwrap();
            let mut buf = vec![0u8; bm.parts["root.img"].size as usize];
            std::os::unix::fs::FileExt::read_exact_at(&disk, &mut buf, root.start).unwrap();
            std::fs::write(&p, buf).unwrap();
            p
        },
        &bm.verity,
    )
    .unwrap();
    // SHA256SUMS covers every output.
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    for f in ["disk.img", "update.tar", "manifest.json"] {
        assert!(sums.contains(f), "{sums}");
    }
    // The SBOM names the kernel package with its exact version.
    assert!(bm
        .packages
        .iter()
        .any(|p| p.name.starts_with("linux-image-") && !p.version.is_empty()));
}

/// What an image ships as `/usr/bin/icos` is the node binary: the node's commands and
/// nothing to build, run a network, benchmark or serve a registry with; and the power-cut
/// hook is not compiled in.
#[test]
fn the_image_carries_the_node_binary_only() {
    let out = image("guestos");
    let bm = manifest(&out);
    let dir = run_dir().join("node-binary");
    std::fs::create_dir_all(&dir).unwrap();
    // The erofs data of slot A (without the verity tree), then its files.
    let root = bm.layout.by_label("A_root").unwrap();
    let erofs = dir.join("root.erofs");
    let disk = std::fs::File::open(out.join("disk.img")).unwrap();
    let mut buf = vec![0u8; bm.verity.hash_offset as usize];
    std::os::unix::fs::FileExt::read_exact_at(&disk, &mut buf, root.start).unwrap();
    std::fs::write(&erofs, buf).unwrap();
    let tree = dir.join("tree");
    let x = std::process::Command::new("fsck.erofs")
        .arg(format!("--extract={}", tree.display()))
        .arg("--no-preserve")
        .arg(&erofs)
        .output()
        .unwrap();
    assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
    let icos = tree.join("usr/bin/icos");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(&icos)
            .args(args)
            .env("ICOS_UPGRADE_COUNT_STEPS", "1")
            .env("ICOS_UPGRADE_CRASH_AT", "1")
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, help) = run(&["--help"]);
    assert!(ok, "{help}");
    for cmd in ["upgrade", "hostos", "orchestrator", "channel"] {
        assert!(help.contains(cmd), "`{cmd}` missing from:\n{help}");
    }
    for cmd in [
        "build",
        "testnet",
        "bench",
        "registry",
        "gov",
        "verify-build",
        "vm",
    ] {
        let (ok, text) = run(&[cmd, "--help"]);
        assert!(
            !ok && text.contains("unrecognized subcommand"),
            "{cmd}: {text}"
        );
    }
    // The crash harness is not there: with its variables set, an install into a copy of
    // the disk runs to the end (it would die after its first step) and counts nothing.
    let copy = dir.join("disk.img");
    sparse_copy(&out.join("disk.img"), &copy);
    let pkg = out.join("update.tar");
    let (ok, text) = run(&[
        "upgrade",
        "install",
        pkg.to_str().unwrap(),
        "--sha256",
        &sha256_of(&pkg),
        "--disk",
        copy.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("into slot B"), "{text}");
    assert!(
        !text.contains("steps=") && !text.contains("simulated power cut"),
        "{text}"
    );
    let node_size = std::fs::metadata(&icos).unwrap().len();
    eprintln!("node binary in the image: {} KiB", node_size / 1024);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Which entry systemd-boot picks, and that it counts tries down, on the real boot loader:
/// an entry for "slot B" that boots the same kernel and root as A but says `icos.slot=B`, so
/// the SUCCESS line tells which entry was chosen.
#[test]
fn systemd_boot_follows_generations_and_counts_tries() {
    use boot_slots::{BootEntry, EntryName};
    use disk_layout::Slot;
    let out = image("guestos");
    let dir = run_dir();
    let open_esp = |disk: &std::path::Path| open_esp(&out, disk);

    // (tries left for the B entry, slot expected to boot)
    for (case, tries, expect) in [("bad-b", Some(0u32), "A"), ("fresh-b", Some(2), "B")] {
        let disk = dir.join(format!("bootcount-{case}.img"));
        sparse_copy(&out.join("disk.img"), &disk);
        {
            let mut esp = open_esp(&disk);
            let a = esp.entry_for(Slot::A).unwrap();
            for f in ["vmlinuz", "initrd.img"] {
                let data = esp.read_file(&format!("icos/a/{f}")).unwrap();
                esp.write_file(&format!("icos/b/{f}"), &mut data.as_slice())
                    .unwrap();
            }
            let mut b = BootEntry::new(
                Slot::B,
                2,
                "test B",
                &a.version,
                &a.options.replace("icos.slot=A", "icos.slot=B"),
            );
            b.tries_left = tries;
            b.tries_done = if tries == Some(0) { 3 } else { 0 };
            esp.write_entry(&b).unwrap();
            assert_eq!(
                boot_slots::next_boot(&esp.entries().unwrap()).unwrap().slot,
                Slot::parse(expect).unwrap()
            );
            esp.close().unwrap();
        }
        let log = dir.join(format!("bootcount-{case}.log"));
        // Not a snapshot: systemd-boot's renaming of the entry must reach the disk.
        let (i, line, _) = boot_until(
            &disk,
            &log,
            &["GUESTOS BOOT SUCCESS", "GUESTOS BOOT FAILURE"],
            false,
        );
        assert_eq!(i, 0, "{line}");
        assert!(
            line.ends_with(&format!("slot={expect}")),
            "case {case}: expected slot {expect}, got: {line}"
        );
        let esp = open_esp(&disk);
        let names: Vec<String> = esp.entry_files().unwrap();
        if case == "fresh-b" {
            let want = EntryName {
                generation: 2,
                slot: Slot::B,
                tries_left: Some(1),
                tries_done: 1,
            }
            .file_name();
            assert!(
                names.contains(&want),
                "systemd-boot should have counted one try: {names:?}"
            );
        } else {
            assert!(
                names.contains(&"icos-2-b+0-3.conf".to_string()),
                "{names:?}"
            );
        }
        let _ = std::fs::remove_file(&disk);
    }
}

/// A required unit that fails makes the OS print the FAILURE line naming it (and no SUCCESS).
#[test]
fn failing_required_unit_prints_failure() {
    let t = run_dir().join("failing-recipe");
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(&t).unwrap();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(recipes())
        .arg(&t)
        .status()
        .unwrap();
    assert!(st.success());
    let images = t.join("images");
    let units = images.join("guestos/files/usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::write(
        units.join("icos-test-broken.service"),
        "[Unit]\nDescription=A required service that fails\n[Service]\nType=oneshot\nExecStart=/bin/false\n",
    )
    .unwrap();
    let recipe = images.join("guestos/recipe.toml");
    let text = std::fs::read_to_string(&recipe).unwrap().replace(
        "required_units = [",
        "required_units = [\"icos-test-broken.service\", ",
    );
    assert!(text.contains("icos-test-broken"));
    std::fs::write(&recipe, text).unwrap();
    let out = t.join("guestos-broken");
    let req = image_builder::BuildRequest::new(images.join("guestos"), VERSION, &out);
    image_builder::build(&req).unwrap();
    let log = t.join("broken.log");
    let (i, line, _) = boot_until(
        &out.join("disk.img"),
        &log,
        &["GUESTOS BOOT FAILURE", "GUESTOS BOOT SUCCESS"],
        true,
    );
    assert_eq!(
        i, 0,
        "a failed required unit must not report success: {line}"
    );
    assert!(line.contains("icos-test-broken.service"), "{line}");
    std::fs::remove_dir_all(&t).unwrap();
}

/// Every FAT partition the builder writes (ESPs with both slot folders, config partitions)
/// passes `fsck.fat`: firmware and Linux read them, and an operator's `fsck` finds nothing.
#[test]
fn built_fat_partitions_pass_fsck() {
    use std::os::unix::fs::FileExt;
    for kind in ["guestos", "hostos", "setupos"] {
        let out = image(kind);
        let m = manifest(&out);
        let disk = std::fs::File::open(out.join("disk.img")).unwrap();
        let mut checked = 0;
        for p in &m.layout.partitions {
            let mut boot = [0u8; 512];
            disk.read_exact_at(&mut boot, p.start).unwrap();
            if &boot[54..57] != b"FAT" && &boot[82..87] != b"FAT32" {
                continue;
            }
            let mut bytes = vec![0u8; p.size() as usize];
            disk.read_exact_at(&mut bytes, p.start).unwrap();
            let copy = run_dir().join(format!("fsck-{kind}-{}.img", p.spec.label));
            std::fs::write(&copy, &bytes).unwrap();
            let r = std::process::Command::new("fsck.fat")
                .arg("-n")
                .arg(&copy)
                .output()
                .unwrap();
            assert!(
                r.status.success(),
                "{kind} partition {}:\n{}",
                p.spec.label,
                String::from_utf8_lossy(&r.stdout)
            );
            let _ = std::fs::remove_file(&copy);
            checked += 1;
        }
        assert!(checked >= 1, "{kind}: no FAT partition found");
    }
}
