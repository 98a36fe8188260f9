//! Bad input through the `icos` command: every case must fail with a clear message that
//! names the cause, exit non-zero, and leave no output that looks valid.

mod common;
use common::*;
use std::path::Path;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// No leftovers next to the requested output: neither the output nor partial folders.
fn assert_nothing_left(parent: &Path, name: &str) {
    assert!(!parent.join(name).exists(), "{name} was created");
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            assert!(!n.contains(".partial-"), "partial build left behind: {n}");
        }
    }
}

/// Copy the recipes, apply one text edit to the GuestOS recipe, and return a build command
/// for the edited recipes with its output at `dst/x`.
fn build_edited(dst: &Path, from: &str, to: &str) -> std::process::Command {
    let images = copy_recipes(dst);
    let recipe = images.join("guestos/recipe.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(text.contains(from), "recipe lacks {from}");
    std::fs::write(&recipe, text.replace(from, to)).unwrap();
    let mut cmd = icos();
    cmd.args(["build", "guestos", "--version", "1.0.0", "--recipes"])
        .arg(&images)
        .arg("--out")
        .arg(dst.join("x"));
    cmd
}

fn copy_recipes(dst: &Path) -> std::path::PathBuf {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(recipes())
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success());
    dst.join("images")
}

#[test]
fn unknown_image_is_named() {
    let t = tempfile::tempdir().unwrap();
    let out = icos()
        .args(["build", "windows", "--version", "1.0.0", "--out"])
        .arg(t.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr_of(&out);
    assert!(
        e.contains("unknown image `windows`") && e.contains("guestos"),
        "{e}"
    );
    assert_nothing_left(t.path(), "x");
}

#[test]
fn bad_version_and_size_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let out = icos()
        .args(["build", "guestos", "--version", "1.0 beta", "--out"])
        .arg(t.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("invalid version"),
        "{}",
        stderr_of(&out)
    );
    let out = icos()
        .args([
            "build",
            "guestos",
            "--version",
            "1.0.0",
            "--size",
            "data=lots",
            "--out",
        ])
        .arg(t.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("data=lots"), "{}", stderr_of(&out));
    let out = icos()
        .args([
            "build",
            "guestos",
            "--version",
            "1.0.0",
            "--size",
            "nosuchpart=1G",
            "--out",
        ])
        .arg(t.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("nosuchpart"),
        "{}",
        stderr_of(&out)
    );
    assert_nothing_left(t.path(), "x");
}

#[test]
fn missing_host_tool_names_its_package() {
    let t = tempfile::tempdir().unwrap();
    let out = icos()
        .env("ICOS_TOOL_PATH", t.path())
        .args(["build", "guestos", "--version", "1.0.0", "--out"])
        .arg(t.path().join("x"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr_of(&out);
    assert!(
        e.contains("debootstrap") && e.contains("Debian package"),
        "{e}"
    );
    assert!(
        e.contains("gdisk") && e.contains("erofs-utils"),
        "all missing tools are listed at once: {e}"
    );
    assert_nothing_left(t.path(), "x");
}

#[test]
fn recipe_naming_a_missing_file_fails_before_building() {
    let t = tempfile::tempdir().unwrap();
    let out = build_edited(t.path(), "\"files\"]", "\"no-such-overlay\"]")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr_of(&out);
    assert!(
        e.contains("no-such-overlay") && e.contains("recipe.toml"),
        "{e}"
    );
    assert_nothing_left(t.path(), "x");
}

#[test]
fn failing_debootstrap_is_reported_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    // Port 9 (discard) on loopback: connection refused, as with no network.
    let out = build_edited(
        t.path(),
        "http://deb.debian.org/debian",
        "http://127.0.0.1:9/debian",
    )
    .env("ICOS_CACHE", &cache)
    .output()
    .unwrap();
    assert!(!out.status.success());
    let e = stderr_of(&out);
    assert!(
        e.contains("debootstrap could not build the Debian base"),
        "{e}"
    );
    assert!(e.contains("127.0.0.1:9"), "the mirror is named: {e}");
    assert_nothing_left(t.path(), "x");
    // The cache holds no half-made base.
    let bases: Vec<String> = std::fs::read_dir(cache.join("base"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(bases.is_empty(), "cache has leftovers: {bases:?}");
}

#[test]
fn full_disk_is_refused_up_front() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64M", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(
        st.success(),
        "this test mounts a small tmpfs and needs root"
    );
    let out = icos()
        .args(["build", "guestos", "--version", "1.0.0", "--out"])
        .arg(mnt.join("x"))
        .output()
        .unwrap();
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    assert!(!out.status.success());
    let e = stderr_of(&out);
    assert!(
        e.contains("not enough free space") && e.contains("MiB"),
        "{e}"
    );
}

#[test]
fn verify_build_rejects_a_broken_manifest() {
    let t = tempfile::tempdir().unwrap();
    let m = t.path().join("manifest.json");
    std::fs::write(&m, "{ not json").unwrap();
    let out = icos().arg("verify-build").arg(&m).output().unwrap();
    assert!(!out.status.success());
    let e = stderr_of(&out);
    assert!(
        e.contains("manifest.json") && e.contains("not a build manifest"),
        "{e}"
    );
}

#[test]
fn vm_run_exits_on_match_and_on_timeout() {
    let out = image("guestos");
    let disk = out.join("disk.img");
    let dir = run_dir();
    let ok = icos()
        .args(["vm", "run"])
        .arg(&disk)
        .arg("--serial-log")
        .arg(dir.join("cli-match.log"))
        .args([
            "--timeout",
            "300",
            "--until",
            "GUESTOS BOOT (SUCCESS|FAILURE)",
            "--snapshot",
        ])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr_of(&ok));
    // The shipped GuestOS image boots its first slot to success (the other images' boots are
    // shown where they do their work: HostOS in tests/hostos.rs, SetupOS in tests/setupos.rs).
    assert!(
        stderr_of(&ok).contains("matched after")
            && stderr_of(&ok).contains("GUESTOS BOOT SUCCESS version=1.0.0 slot=A"),
        "{}\n--- serial log tail ---\n{}",
        stderr_of(&ok),
        vm_runner::serial_tail(&dir.join("cli-match.log"), 60)
    );

    let late = icos()
        .args(["vm", "run"])
        .arg(&disk)
        .arg("--serial-log")
        .arg(dir.join("cli-timeout.log"))
        .args([
            "--timeout",
            "8",
            "--until",
            "THIS LINE NEVER APPEARS",
            "--snapshot",
        ])
        .output()
        .unwrap();
    assert_eq!(late.status.code(), Some(2), "{}", stderr_of(&late));
    assert!(
        stderr_of(&late).contains("timed out"),
        "{}",
        stderr_of(&late)
    );

    let missing = icos()
        .args(["vm", "run", "/nonexistent/disk.img", "--timeout", "5"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(stderr_of(&missing).contains("/nonexistent/disk.img"));
}
