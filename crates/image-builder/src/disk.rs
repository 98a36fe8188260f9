//! Assemble `disk.img`: GPT, the root image in its partition, the ESP, and for SetupOS the
//! config and data partitions.

use crate::BuildError;
use boot_slots::{BootEntry, Esp};
use disk_layout::{Layout, Placed, Role, Slot, Window};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

const CHUNK: usize = 1 << 20;

fn open_rw(disk: &Path) -> Result<File, BuildError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| BuildError::io("opening", disk, e))
}

/// Copy a file into a partition, leaving all-zero chunks as holes (the disk is sparse).
pub fn write_into_partition(disk: &Path, part: &Placed, src: &Path) -> Result<u64, BuildError> {
    let len = std::fs::metadata(src)
        .map_err(|e| BuildError::io("reading size of", src, e))?
        .len();
    if len > part.size() {
        return Err(BuildError::TooSmall {
            partition: part.spec.label.clone(),
            what: src
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            need: len,
            size: part.size(),
        });
    }
    let out = open_rw(disk)?;
    let mut inp = File::open(src).map_err(|e| BuildError::io("opening", src, e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let n = read_full(&mut inp, &mut buf).map_err(|e| BuildError::io("reading", src, e))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            out.write_all_at(&buf[..n], part.start + off)
                .map_err(|e| BuildError::io("writing partition of", disk, e))?;
        }
        off += n as u64;
    }
    out.sync_all()
        .map_err(|e| BuildError::io("syncing", disk, e))?;
    Ok(off)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What goes onto the ESP.
pub struct EspContent<'a> {
    pub bootloader: &'a Path,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub entry: BootEntry,
    pub volume_id: u32,
    /// JSON describing the image (read by the upgrade engine).
    pub image_info: String,
}

fn open_file(p: &Path) -> Result<File, BuildError> {
    File::open(p).map_err(|e| BuildError::io("opening", p, e))
}

/// Format the ESP partition and write boot loader, loader.conf, the slot's kernel and
/// initrd, and its boot entry.
pub fn write_esp(disk: &Path, layout: &Layout, c: &EspContent) -> Result<(), BuildError> {
    let part = layout
        .by_role(Role::Esp)
        .ok_or_else(|| BuildError::Invalid("layout has no ESP".into()))?;
    let file = open_rw(disk)?;
    let window = Window::new(file, part.start, part.size());
    let mut esp = Esp::format(window, c.volume_id, "ESP")?;
    esp.write_file(boot_slots::BOOTLOADER_PATH, &mut open_file(c.bootloader)?)?;
    esp.write_loader_conf()?;
    let slot = c.entry.slot;
    // The other slot's folder is made now, so an upgrade only ever writes files: directory
    // creation is the one ESP change fatfs needs a repair pass for (see boot-slots `dots`).
    esp.create_dirs(&format!(
        "icos/{}",
        slot.other().as_str().to_ascii_lowercase()
    ))?;
    esp.write_file(&BootEntry::kernel_path(slot), &mut open_file(c.vmlinuz)?)?;
    esp.write_file(&BootEntry::initrd_path(slot), &mut open_file(c.initrd)?)?;
    esp.write_entry(&c.entry)?;
    esp.write_file(boot_slots::IMAGE_INFO_PATH, &mut c.image_info.as_bytes())?;
    esp.close()?;
    Ok(())
}

/// Format a FAT partition and copy the files of `dir` (flat) onto it.
pub fn write_fat_partition(
    disk: &Path,
    part: &Placed,
    label: &str,
    volume_id: u32,
    dir: &Path,
) -> Result<(), BuildError> {
    let file = open_rw(disk)?;
    let window = Window::new(file, part.start, part.size());
    let mut fat = Esp::format(window, volume_id, label)?;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| BuildError::io("listing", dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        fat.write_file(&n, &mut open_file(&dir.join(&n))?)?;
    }
    fat.close()?;
    Ok(())
}

/// The slot whose partitions the built image fills.
pub const BUILT_SLOT: Slot = Slot::A;

/// An empty ext4 filesystem image of `size` bytes, byte-for-byte reproducible: fixed UUID and
/// hash seed, root-owned, and e2fsprogs' fixed-clock mode for every timestamp.
pub fn make_ext4(img: &Path, size: u64, label: &str, uuid: &str) -> Result<(), BuildError> {
    let f = File::create(img).map_err(|e| BuildError::io("creating", img, e))?;
    f.set_len(size)
        .map_err(|e| BuildError::io("sizing", img, e))?;
    drop(f);
    let mut cmd = host_tools::tools::MKE2FS.command()?;
    cmd.env("E2FSPROGS_FAKE_TIME", "1")
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-U", uuid, "-E"])
        .arg(format!(
            "hash_seed={uuid},lazy_itable_init=1,root_owner=0:0"
        ))
        .arg(img);
    host_tools::run(&mut cmd, &format!("make the {label} filesystem"))?;
    Ok(())
}
