//! The slot's /var: an ext4 partition that the upgrade engine wipes when it installs a
//! version, so the first boot of a slot creates the filesystem. The init sets /var up after
//! switching to the slot's (verified) root and runs that root's `mke2fs`, so the initramfs
//! carries no e2fsprogs.

use crate::InitError;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

/// Whether the device holds an ext2/3/4 superblock (magic 0xEF53 at byte 1080).
pub fn has_ext4(device: &Path) -> Result<bool, InitError> {
    let mut f = std::fs::File::open(device).map_err(|e| InitError::io("opening", device, e))?;
    let mut magic = [0u8; 2];
    f.seek(SeekFrom::Start(1080))
        .and_then(|_| f.read_exact(&mut magic))
        .map_err(|e| InitError::io("reading the superblock of", device, e))?;
    Ok(magic == [0x53, 0xef])
}

/// Make a new ext4 on `device` with the root's `mke2fs`.
pub fn make_fs(device: &Path) -> Result<(), InitError> {
    let mut cmd = Command::new("mke2fs");
    cmd.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        "var",
        "-E",
        "lazy_itable_init=1",
    ])
    .arg(device)
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let out = cmd
        .output()
        .map_err(|e| InitError::io("running mke2fs for", device, e))?;
    if !out.status.success() {
        return Err(InitError::Var(format!(
            "mke2fs on {} failed ({}): {}",
            device.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_an_ext4_superblock_from_a_wiped_partition() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("var.img");
        std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
        assert!(!has_ext4(&img).unwrap());
        make_fs(&img).unwrap();
        assert!(has_ext4(&img).unwrap());
        let short = d.path().join("short.img");
        std::fs::write(&short, [0u8; 100]).unwrap();
        assert!(has_ext4(&short)
            .unwrap_err()
            .to_string()
            .contains("superblock"));
    }
}
