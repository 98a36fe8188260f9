//! Directories made through [`Esp`] pass `fsck.fat`, on FAT12, FAT16 and FAT32 (fatfs 0.3
//! alone writes long-name entries in front of `.` and `..`, which fsck rejects).

use boot_slots::Esp;
use std::process::Command;

/// `fsck.fat -n` finds nothing to repair.
fn fsck(img: &std::path::Path, fat_bits: &str) {
    let out = Command::new("fsck.fat")
        .arg("-n")
        .arg(img)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fsck.fat on {fat_bits}:\n{text}");
}

fn check(size: u64, fat_bits: &str) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fat.img");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&img)
        .unwrap();
    f.set_len(size).unwrap();
    let mut esp = Esp::format(f, 0x1c05_0002, "CONFIG").unwrap();
    for path in [
        "ssh_authorized_keys/admin",
        "ssh_authorized_keys/backup",
        "icos/a/vmlinuz",
        "icos/b/deep/er/file.txt",
        "loader/entries/icos-1-a.conf",
    ] {
        esp.write_file(path, &mut &b"content\n"[..]).unwrap();
    }
    esp.create_dirs("empty/dir").unwrap();
    esp.close().unwrap();

    fsck(&img, fat_bits);
    let file = Command::new("file").arg(&img).output().unwrap();
    assert!(
        String::from_utf8_lossy(&file.stdout).contains(fat_bits),
        "expected {fat_bits}: {}",
        String::from_utf8_lossy(&file.stdout)
    );

    // fatfs still reads everything back, and a second session adds to a repaired directory.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let mut esp = Esp::open(f).unwrap();
    assert_eq!(
        esp.read_file("icos/b/deep/er/file.txt").unwrap(),
        b"content\n"
    );
    esp.write_file("ssh_authorized_keys/third", &mut &b"x"[..])
        .unwrap();
    esp.write_file("new/dir/file", &mut &b"y"[..]).unwrap();
    esp.close().unwrap();
    fsck(&img, fat_bits);
    let esp = Esp::open(std::fs::File::open(&img).map(ReadWrite).unwrap()).unwrap();
    assert_eq!(
        esp.read_file("ssh_authorized_keys/admin").unwrap(),
        b"content\n"
    );
    assert_eq!(esp.read_file("new/dir/file").unwrap(), b"y");
}

/// Read-only file that refuses writes (the third open must not need any).
struct ReadWrite(std::fs::File);
impl std::io::Read for ReadWrite {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}
impl std::io::Write for ReadWrite {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("read only"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl std::io::Seek for ReadWrite {
    fn seek(&mut self, p: std::io::SeekFrom) -> std::io::Result<u64> {
        self.0.seek(p)
    }
}

#[test]
fn new_directories_pass_fsck_on_fat12() {
    check(2 << 20, "FAT (12 bit)");
}

#[test]
fn new_directories_pass_fsck_on_fat16() {
    check(64 << 20, "FAT (16 bit)");
}

#[test]
fn new_directories_pass_fsck_on_fat32() {
    check(600 << 20, "FAT (32 bit)");
}
