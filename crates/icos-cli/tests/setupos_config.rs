//! The node provider's side of SetupOS, without a VM: `icos setupos check-config` on a
//! folder and on an image, `inject-config` onto an image's CONFIG partition, and a hand edit
//! of that partition with mtools (what any OS's FAT support does) read back by SetupOS's code.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn write_folder(dir: &Path, prefix: &str) {
    std::fs::create_dir_all(dir.join("ssh_authorized_keys")).unwrap();
    std::fs::write(
        dir.join("config.ini"),
        format!("# test node\r\nipv6_prefix = {prefix}\r\nipv6_gateway=fe80::1\r\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("deployment.json"),
        format!(
            r#"{{"deployment": {{"name": "testnet", "mgmt_mac": "02:00:00:00:0a:01"}},
 "registry": {{"urls": ["http://[fec0::2]:8180"], "genesis_hash": "{}"}},
 "network": "static", "hardware_profile": "vm"}}"#,
            "cd".repeat(32)
        ),
    )
    .unwrap();
    let key = dir.join("node_operator_private_key.pem");
    let _ = std::fs::remove_file(&key);
    registry_model::keys::write_key(&key, &registry_model::keys::generate()).unwrap();
    std::fs::write(
        dir.join("ssh_authorized_keys/admin"),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f admin\n",
    )
    .unwrap();
}

fn run(args: &[&str]) -> (i32, String) {
    let out = icos().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A disk image with a `setup_config` FAT partition at 1 MiB (as on SetupOS), 32 MiB.
fn image_with_config_partition(path: &Path) -> u64 {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(40 << 20).unwrap();
    drop(f);
    let st = Command::new("sgdisk")
        .args(["-n", "1:2048:+32M", "-c", "1:setup_config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut fat =
        boot_slots::Esp::format(disk_layout::Window::new(f, 1 << 20, 32 << 20), 7, "CONFIG")
            .unwrap();
    fat.write_file("config.ini", &mut &b"ipv6_prefix=\n"[..])
        .unwrap();
    fat.close().unwrap();
    1 << 20
}

fn sha(path: &Path) -> String {
    sha256_of(path)
}

#[test]
fn check_config_accepts_a_good_folder_and_names_every_problem_of_a_bad_one() {
    let dir = run_dir().join("check-config");
    write_folder(&dir, "2a00:fb01:400:200");
    let (code, out) = run(&["setupos", "check-config", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("ok: deployment testnet"), "{out}");
    std::fs::write(
        dir.join("config.ini"),
        "ipv6_prefx=2a00::\r\nipv6_gateway=nope\n",
    )
    .unwrap();
    std::fs::remove_file(dir.join("deployment.json")).unwrap();
    let (code, out) = run(&["setupos", "check-config", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    for want in [
        "config.ini:1: ipv6_prefx: found an unknown key",
        "did you mean `ipv6_prefix`?",
        "config.ini: ipv6_prefix: found no such key",
        "config.ini:2: ipv6_gateway: found `nope`",
        "deployment.json: found no such file",
        "problem(s): SetupOS would refuse this config",
    ] {
        assert!(out.contains(want), "missing `{want}` in:\n{out}");
    }
}

#[test]
fn inject_config_writes_the_partition_refuses_a_bad_folder_and_hand_edits_read_back() {
    let dir = run_dir().join("inject");
    let folder: PathBuf = dir.join("config");
    write_folder(&folder, "2a00:fb01:400:200");
    let img = dir.join("setupos.img");
    let offset = image_with_config_partition(&img);
    let (code, out) = run(&["setupos", "check-config", "--image", img.to_str().unwrap()]);
    assert_eq!(
        code, 1,
        "the template on a fresh image is not a config: {out}"
    );
    let (code, out) = run(&[
        "setupos",
        "inject-config",
        "--image",
        img.to_str().unwrap(),
        "--config",
        folder.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(&["setupos", "check-config", "--image", img.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("2a00:fb01:400:200::/64") && out.contains("1 admin SSH key"),
        "{out}"
    );

    // A bad folder is refused and the image is not touched.
    let bad = dir.join("bad");
    write_folder(&bad, "not-a-prefix");
    let before = sha(&img);
    let (code, out) = run(&[
        "setupos",
        "inject-config",
        "--image",
        img.to_str().unwrap(),
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("config.ini:2: ipv6_prefix") && out.contains("nothing was written"),
        "{out}"
    );
    assert_eq!(sha(&img), before);

    // A hand edit with mtools (any OS's FAT driver would do the same) is what SetupOS reads.
    let edited = dir.join("config.ini");
    std::fs::write(
        &edited,
        "ipv6_prefix=2a00:fb01:400:300\r\nipv6_gateway=fe80::1\r\n",
    )
    .unwrap();
    let st = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{offset}", img.display()))
        .arg(&edited)
        .arg("::config.ini")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (code, out) = run(&["setupos", "check-config", "--image", img.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2a00:fb01:400:300::/64"), "{out}");
    // fsck.fat finds nothing wrong with the partition after both writers.
    let part = dir.join("config-partition.img");
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&part, &bytes[offset as usize..offset as usize + (32 << 20)]).unwrap();
    let st = Command::new("fsck.fat")
        .arg("-n")
        .arg(&part)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}{}",
        String::from_utf8_lossy(&st.stdout),
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
