//! Packing the initramfs at build time: the init binary, the modules in load order, and
//! the few directories the init mounts on, as an uncompressed newc archive whose bytes
//! depend only on its contents (mtime 0, root-owned, inodes numbered in order).
//!
//! Uncompressed because it is small (about 2 MiB) and decompressing costs more boot time
//! under emulation than reading the extra bytes.

use crate::{modules, InitError};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What goes into an initramfs.
#[derive(Debug, Clone)]
pub struct Initramfs {
    pub init: PathBuf,
    /// Module files (absolute paths in the image tree), in load order.
    pub modules: Vec<PathBuf>,
}

impl Initramfs {
    /// Resolve `wanted` modules against the kernel's module folder in the image tree.
    pub fn new(
        init: PathBuf,
        modules_dir: &Path,
        wanted: &[String],
    ) -> Result<Initramfs, InitError> {
        let order = modules::load_order(modules_dir, wanted)?;
        Ok(Initramfs {
            init,
            modules: order.iter().map(|p| modules_dir.join(p)).collect(),
        })
    }

    /// Write the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<(), InitError> {
        let file = std::fs::File::create(out).map_err(|e| InitError::io("creating", out, e))?;
        let mut w = std::io::BufWriter::new(file);
        self.write_to(&mut w)
            .map_err(|e| InitError::io("writing", out, e))?;
        w.into_inner()
            .map_err(|e| InitError::io("writing", out, e.into_error()))?
            .sync_all()
            .map_err(|e| InitError::io("syncing", out, e))
    }

    fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let mut a = Archive {
            w,
            ino: 0,
            written: 0,
        };
        for dir in [".", "dev", "proc", "sys", "root", "lib", "lib/modules"] {
            a.entry(dir, 0o040755, (0, 0), &[])?;
        }
        // The kernel opens /dev/console for the init's stdio before anything is mounted.
        a.entry("dev/console", 0o020600, (5, 1), &[])?;
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        a.entry("init", 0o100755, (0, 0), &read(&self.init)?)?;
        let mut order = String::new();
        for m in &self.modules {
            let name = m
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            a.entry(&format!("lib/modules/{name}"), 0o100644, (0, 0), &read(m)?)?;
            order.push_str(&name);
            order.push('\n');
        }
        a.entry(modules::ORDER_FILE, 0o100644, (0, 0), order.as_bytes())?;
        a.entry(TRAILER, 0, (0, 0), &[])?;
        // Padded to 512 bytes, as cpio pads its archives.
        a.pad(512)
    }
}

/// The newc ("070701") format: a 110-byte ASCII header of thirteen 8-digit hex fields, the
/// NUL-terminated name, padding to 4 bytes, the data, padding to 4 bytes. Written here, not
/// with a cpio crate or GNU cpio, so every header field is ours to fix for reproducibility.
struct Archive<'a, W: Write> {
    w: &'a mut W,
    ino: u32,
    written: u64,
}

impl<W: Write> Archive<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.written += bytes.len() as u64;
        self.w.write_all(bytes)
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        let trailer = name == TRAILER;
        if !trailer {
            self.ino += 1;
        }
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{name} is too large for an initramfs")))?;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let ino = if trailer { 0 } else { self.ino };
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08X}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad(4)?;
        self.put(data)?;
        self.pad(4)
    }

    fn pad(&mut self, to: u64) -> std::io::Result<()> {
        let n = (to - self.written % to) % to;
        self.put(&vec![0; n as usize])
    }
}

const TRAILER: &str = "TRAILER!!!";

#[cfg(test)]
mod tests {
    use super::*;

    /// GNU cpio (a real reader) lists and extracts what we wrote, modes and devices intact.
    #[test]
    fn gnu_cpio_reads_the_archive_back() {
        let d = tempfile::tempdir().unwrap();
        let kdir = d.path().join("modules");
        std::fs::create_dir_all(kdir.join("kernel")).unwrap();
        std::fs::write(
            kdir.join("modules.dep"),
            "kernel/a.ko:\nkernel/b-c.ko: kernel/a.ko\n",
        )
        .unwrap();
        std::fs::write(kdir.join("modules.builtin"), "").unwrap();
        std::fs::write(kdir.join("kernel/a.ko"), b"AAA").unwrap();
        std::fs::write(kdir.join("kernel/b-c.ko"), b"BBBBB").unwrap();
        let init = d.path().join("icos-init");
        std::fs::write(&init, b"#!init").unwrap();
        let ird = Initramfs::new(init, &kdir, &["b_c".into()]).unwrap();
        let out = d.path().join("initrd.img");
        ird.write(&out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        // Same inputs, same bytes.
        let again = d.path().join("again.img");
        ird.write(&again).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), bytes);

        let x = d.path().join("x");
        std::fs::create_dir_all(&x).unwrap();
        let cpio = host_tools::tools::CPIO.locate().unwrap();
        let list = std::process::Command::new(&cpio)
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        let list = String::from_utf8_lossy(&list.stdout);
        assert!(
            list.lines().any(|l| l.starts_with("crw-------")
                && l.contains("5,")
                && l.ends_with("dev/console")),
            "{list}"
        );
        assert!(
            list.lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with(" init")),
            "{list}"
        );
        let ok = std::process::Command::new(&cpio)
            .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&out)
            .arg("init")
            .arg("lib/modules/*")
            .current_dir(&x)
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(std::fs::read(x.join("init")).unwrap(), b"#!init");
        assert_eq!(
            std::fs::read(x.join("lib/modules/b-c.ko")).unwrap(),
            b"BBBBB"
        );
        assert_eq!(
            std::fs::read_to_string(x.join(modules::ORDER_FILE)).unwrap(),
            "a.ko\nb-c.ko\n"
        );
    }
}
