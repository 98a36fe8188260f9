//! A/B boot slots on the EFI System Partition, the way systemd-boot reads them.
//!
//! The ESP holds systemd-boot (`EFI/BOOT/BOOTX64.EFI`), `loader/loader.conf`, one Boot
//! Loader Specification entry per slot in `loader/entries/`, and each slot's kernel and
//! initrd under `icos/<slot>/`. Which slot boots is decided by systemd-boot alone:
//!
//! * entries are named `icos-<generation>-<slot>[+<left>[-<done>]].conf`;
//! * `loader.conf` says `default icos-*`, and systemd-boot picks the *last* matching entry
//!   in its sort order, which puts entries with no tries left first and otherwise sorts by
//!   name with numbers compared as numbers, so the highest generation wins;
//! * a freshly activated slot gets a higher generation and a `+N` tries counter;
//!   systemd-boot renames it on every attempt (`+2-1`, `+1-2`, `+0-3`); at `+0` it sorts
//!   first and the older slot boots again: the automatic rollback;
//! * blessing (confirming) a slot renames its entry to drop the counter.
//!
//! All ESP access goes through [`Esp`], which works on any `Read + Write + Seek` (a
//! [`disk_layout::Window`] onto a disk image or onto `/dev/vda1`), so the image builder,
//! the upgrade engine and the tests share one implementation and the ESP is never mounted.
//!
//! ```no_run
//! use boot_slots::{BootEntry, Esp};
//! use disk_layout::Slot;
//! let io = std::io::Cursor::new(vec![0u8; 64 << 20]);
//! let mut esp = Esp::format(io, 0x1c05_0001, "ESP").unwrap();
//! esp.write_entry(&BootEntry::new(Slot::A, 1, "GuestOS 1.0.0", "1.0.0", "console=ttyS0")).unwrap();
//! assert_eq!(esp.entries().unwrap().len(), 1);
//! ```

mod dots;

use disk_layout::Slot;
use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};
use std::io::{self, Read, Seek, Write};
use std::sync::{Arc, Mutex, PoisonError};

pub const ENTRIES_DIR: &str = "loader/entries";
pub const LOADER_CONF: &str = "loader/loader.conf";
pub const BOOTLOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// Which OS the disk holds (`{"kind":"guestos"}`), written by the image builder.
pub const IMAGE_INFO_PATH: &str = "icos/image.json";

/// Written to `loader/loader.conf`: no menu, no editor, no auto entries, newest icos entry.
pub const LOADER_CONF_CONTENT: &str = "\
# Written by icos. The slot to boot is chosen by entry order (see boot-slots).
timeout 0
default icos-*
editor no
auto-entries no
auto-firmware no
";

#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("ESP: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("ESP: boot entry `{file}` is malformed: {reason}")]
    BadEntry { file: String, reason: String },
    #[error("ESP: no boot entry for slot {0}")]
    NoEntry(Slot),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> EspError {
    let what = what.into();
    move |source| EspError::Io { what, source }
}

/// A FAT file system filling a file or a block device (config partitions and disks), opened
/// for reading and writing. One way to open them, whatever their size is or where it is known.
pub fn open_fat(
    path: &std::path::Path,
) -> Result<Esp<disk_layout::Window<std::fs::File>>, EspError> {
    let what = || format!("{}", path.display());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(what()))?;
    Esp::open(disk_layout::Window::whole(f).map_err(io_err(what()))?)
}

/// A new, empty FAT file system in a file of `size` bytes at `path` (created, or emptied if
/// it exists): config disks, and config partitions in tests.
pub fn create_fat(
    path: &std::path::Path,
    size: u64,
    volume_id: u32,
    label: &str,
) -> Result<Esp<std::fs::File>, EspError> {
    let what = || format!("{}", path.display());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err(what()))?;
    f.set_len(size).map_err(io_err(what()))?;
    Esp::format(f, volume_id, label)
}

/// [`open_fat`] without write access (nothing can be changed through it).
pub fn open_fat_read_only(
    path: &std::path::Path,
) -> Result<Esp<disk_layout::Window<disk_layout::ReadOnly<std::fs::File>>>, EspError> {
    let what = || format!("{}", path.display());
    let f = std::fs::File::open(path).map_err(io_err(what()))?;
    Esp::open(disk_layout::Window::whole(disk_layout::ReadOnly(f)).map_err(io_err(what()))?)
}

/// Every file gets the same valid timestamp, 1980-01-01 00:00:00, so an ESP made from the same
/// files is byte-identical. (fatfs's own fallback without a clock is "month 0, day 0", which
/// the UEFI FAT driver rejects when systemd-boot renames an entry to count a boot try.)
#[derive(Debug)]
struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_TIME: FixedTime = FixedTime;

/// A Boot Loader Specification type #1 entry for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub slot: Slot,
    /// Higher generation boots first among entries with tries left.
    pub generation: u64,
    /// Boot counting: `None` = blessed (no counter), `Some(n)` = n tries left.
    pub tries_left: Option<u32>,
    pub tries_done: u32,
    pub title: String,
    pub version: String,
    /// Kernel command line (without `initrd=`, which systemd-boot adds).
    pub options: String,
}

/// Parsed form of an entry file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryName {
    pub generation: u64,
    pub slot: Slot,
    pub tries_left: Option<u32>,
    pub tries_done: u32,
}

impl EntryName {
    /// Parse `icos-<gen>-<slot>[+<left>[-<done>]].conf` (case-insensitive, as FAT is).
    pub fn parse(file: &str) -> Option<EntryName> {
        let lower = file.to_ascii_lowercase();
        let stem = lower.strip_prefix("icos-")?.strip_suffix(".conf")?;
        let (base, counter) = match stem.split_once('+') {
            Some((b, c)) => (b, Some(c)),
            None => (stem, None),
        };
        let (gen, slot) = base.split_once('-')?;
        let generation: u64 = gen.parse().ok()?;
        let slot = Slot::parse(slot)?;
        let (tries_left, tries_done) = match counter {
            None => (None, 0),
            Some(c) => {
                let (l, d) = match c.split_once('-') {
                    Some((l, d)) => (l, d.parse().ok()?),
                    None => (c, 0),
                };
                (Some(l.parse().ok()?), d)
            }
        };
        Some(EntryName {
            generation,
            slot,
            tries_left,
            tries_done,
        })
    }

    pub fn file_name(&self) -> String {
        let base = format!(
            "icos-{}-{}",
            self.generation,
            self.slot.as_str().to_ascii_lowercase()
        );
        match self.tries_left {
            None => format!("{base}.conf"),
            Some(l) if self.tries_done == 0 => format!("{base}+{l}.conf"),
            Some(l) => format!("{base}+{l}-{}.conf", self.tries_done),
        }
    }

    /// An entry whose tries are used up: systemd-boot will not pick it while another exists.
    pub fn is_bad(&self) -> bool {
        self.tries_left == Some(0)
    }
}

impl BootEntry {
    pub fn new(slot: Slot, generation: u64, title: &str, version: &str, options: &str) -> Self {
        BootEntry {
            slot,
            generation,
            tries_left: None,
            tries_done: 0,
            title: title.to_string(),
            version: version.to_string(),
            options: options.to_string(),
        }
    }

    pub fn name(&self) -> EntryName {
        EntryName {
            generation: self.generation,
            slot: self.slot,
            tries_left: self.tries_left,
            tries_done: self.tries_done,
        }
    }

    pub fn file_name(&self) -> String {
        self.name().file_name()
    }

    pub fn kernel_path(slot: Slot) -> String {
        format!("icos/{}/vmlinuz", slot.as_str().to_ascii_lowercase())
    }

    pub fn initrd_path(slot: Slot) -> String {
        format!("icos/{}/initrd.img", slot.as_str().to_ascii_lowercase())
    }

    /// The entry file's text.
    pub fn render(&self) -> String {
        format!(
            "title {}\nversion {}\nlinux /{}\ninitrd /{}\noptions {}\n",
            self.title,
            self.version,
            Self::kernel_path(self.slot),
            Self::initrd_path(self.slot),
            self.options
        )
    }

    /// Parse an entry file (name + text).
    pub fn parse(file: &str, text: &str) -> Result<BootEntry, EspError> {
        let bad = |reason: &str| EspError::BadEntry {
            file: file.to_string(),
            reason: reason.to_string(),
        };
        let name =
            EntryName::parse(file).ok_or_else(|| bad("name is not icos-<gen>-<slot>.conf"))?;
        let mut title = None;
        let mut version = None;
        let mut options: Vec<String> = Vec::new();
        let mut linux = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once(char::is_whitespace)
                .map(|(k, v)| (k, v.trim()))
                .unwrap_or((line, ""));
            match k {
                "title" => title = Some(v.to_string()),
                "version" => version = Some(v.to_string()),
                "options" => options.push(v.to_string()),
                "linux" => linux = Some(v.to_string()),
                _ => {}
            }
        }
        let linux = linux.ok_or_else(|| bad("no `linux` line"))?;
        if !linux
            .trim_start_matches('/')
            .eq_ignore_ascii_case(&Self::kernel_path(name.slot))
        {
            return Err(bad("kernel path does not belong to the entry's slot"));
        }
        Ok(BootEntry {
            slot: name.slot,
            generation: name.generation,
            tries_left: name.tries_left,
            tries_done: name.tries_done,
            title: title.unwrap_or_default(),
            version: version.ok_or_else(|| bad("no `version` line"))?,
            options: options.join(" "),
        })
    }
}

/// The entry systemd-boot will boot next, given the entries on the ESP: entries with tries
/// left (or blessed) beat used-up ones, then the highest generation wins.
pub fn next_boot(entries: &[BootEntry]) -> Option<&BootEntry> {
    entries
        .iter()
        .max_by_key(|e| (!e.name().is_bad(), e.generation, e.slot))
}

/// The EFI System Partition, accessed through fatfs.
pub struct Esp<IO: Read + Write + Seek> {
    fs: FileSystem<Shared<IO>>,
    /// The same device, kept to repair new directories after fatfs lets go of it.
    io: Shared<IO>,
    made_dirs: bool,
}

/// One device handed to fatfs and kept by [`Esp`] too. fatfs seeks before every access,
/// so the two users never depend on each other's position.
struct Shared<IO>(Arc<Mutex<IO>>);

impl<IO> Shared<IO> {
    fn with<T>(&self, f: impl FnOnce(&mut IO) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl<IO: Read> Read for Shared<IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.with(|io| io.read(buf))
    }
}

impl<IO: Write> Write for Shared<IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.with(|io| io.write(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.with(|io| io.flush())
    }
}

impl<IO: Seek> Seek for Shared<IO> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        self.with(|io| io.seek(pos))
    }
}

impl<IO: Read + Write + Seek> Esp<IO> {
    /// Make a new FAT filesystem on `io` (its whole length) and open it.
    pub fn format(mut io: IO, volume_id: u32, label: &str) -> Result<Self, EspError> {
        let mut lbl = [b' '; 11];
        for (d, s) in lbl.iter_mut().zip(label.bytes()) {
            *d = s.to_ascii_uppercase();
        }
        fatfs::format_volume(
            &mut io,
            FormatVolumeOptions::new()
                .volume_id(volume_id)
                .volume_label(lbl),
        )
        .map_err(io_err("formatting FAT"))?;
        Self::open(io)
    }

    /// Open an existing FAT filesystem.
    pub fn open(io: IO) -> Result<Self, EspError> {
        let io = Shared(Arc::new(Mutex::new(io)));
        let fs = FileSystem::new(
            Shared(Arc::clone(&io.0)),
            FsOptions::new().time_provider(&FIXED_TIME),
        )
        .map_err(io_err("opening FAT filesystem"))?;
        Ok(Esp {
            fs,
            io,
            made_dirs: false,
        })
    }

    fn ensure_parent(&mut self, path: &str) -> Result<(), EspError> {
        let mut dir = self.fs.root_dir();
        let parts: Vec<&str> = path.split('/').collect();
        for comp in &parts[..parts.len().saturating_sub(1)] {
            dir = match dir.open_dir(comp) {
                Ok(d) => d,
                Err(_) => {
                    self.made_dirs = true;
                    dir.create_dir(comp)
                        .map_err(io_err(format!("creating directory {comp} for {path}")))?
                }
            };
        }
        Ok(())
    }

    /// Make the directories of `path` (`a/b/c` makes `a`, `a/b` and `a/b/c`).
    pub fn create_dirs(&mut self, path: &str) -> Result<(), EspError> {
        self.ensure_parent(&format!("{}/", path.trim_end_matches('/')))
    }

    /// Write a file (replacing it), streaming from `src`. Returns the bytes written.
    pub fn write_file(&mut self, path: &str, src: &mut dyn Read) -> Result<u64, EspError> {
        self.ensure_parent(path)?;
        let root = self.fs.root_dir();
        let mut f = root
            .create_file(path)
            .map_err(io_err(format!("creating {path}")))?;
        f.truncate().map_err(io_err(format!("truncating {path}")))?;
        let n = io::copy(src, &mut f).map_err(io_err(format!("writing {path}")))?;
        f.flush().map_err(io_err(format!("flushing {path}")))?;
        Ok(n)
    }

    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, EspError> {
        let mut f = self
            .fs
            .root_dir()
            .open_file(path)
            .map_err(io_err(format!("opening {path}")))?;
        let mut v = Vec::new();
        f.read_to_end(&mut v)
            .map_err(io_err(format!("reading {path}")))?;
        Ok(v)
    }

    /// Size of a file, without reading it.
    pub fn file_size(&self, path: &str) -> Option<u64> {
        use std::io::SeekFrom;
        let mut f = self.fs.root_dir().open_file(path).ok()?;
        f.seek(SeekFrom::End(0)).ok()
    }

    pub fn exists(&self, path: &str) -> bool {
        self.fs.root_dir().open_file(path).is_ok()
    }

    pub fn remove(&mut self, path: &str) -> Result<(), EspError> {
        self.fs
            .root_dir()
            .remove(path)
            .map_err(io_err(format!("removing {path}")))
    }

    /// Free space in bytes.
    pub fn free_bytes(&self) -> Result<u64, EspError> {
        let st = self.fs.stats().map_err(io_err("reading FAT statistics"))?;
        Ok(u64::from(st.free_clusters()) * u64::from(st.cluster_size()))
    }

    pub fn write_loader_conf(&mut self) -> Result<(), EspError> {
        self.write_file(LOADER_CONF, &mut LOADER_CONF_CONTENT.as_bytes())?;
        Ok(())
    }

    /// Names of the files in `loader/entries` (empty if the directory is missing).
    pub fn entry_files(&self) -> Result<Vec<String>, EspError> {
        let dir = match self.fs.root_dir().open_dir(ENTRIES_DIR) {
            Ok(d) => d,
            Err(_) => return Ok(Vec::new()),
        };
        let mut names = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(io_err("listing loader/entries"))?;
            let n = e.file_name();
            if n != "." && n != ".." && e.is_file() {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }

    /// All icos entries on the ESP (other files in the directory are ignored).
    pub fn entries(&self) -> Result<Vec<BootEntry>, EspError> {
        let mut out = Vec::new();
        for name in self.entry_files()? {
            if EntryName::parse(&name).is_none() {
                continue;
            }
            let text = self.read_file(&format!("{ENTRIES_DIR}/{name}"))?;
            let text = String::from_utf8_lossy(&text);
            out.push(BootEntry::parse(&name, &text)?);
        }
        Ok(out)
    }

    pub fn entry_for(&self, slot: Slot) -> Result<BootEntry, EspError> {
        self.entries()?
            .into_iter()
            .find(|e| e.slot == slot)
            .ok_or(EspError::NoEntry(slot))
    }

    /// Write an entry. The text goes to a `.tmp` name first (ignored by systemd-boot) and is
    /// then renamed, so a power cut leaves either no entry or a complete one.
    pub fn write_entry(&mut self, entry: &BootEntry) -> Result<(), EspError> {
        let final_name = format!("{ENTRIES_DIR}/{}", entry.file_name());
        let tmp = format!("{final_name}.tmp");
        self.write_file(&tmp, &mut entry.render().as_bytes())?;
        if self.exists(&final_name) {
            self.remove(&final_name)?;
        }
        self.rename(&tmp, &final_name)
    }

    /// Remove every entry of `slot` (used before overwriting that slot).
    pub fn remove_entries(&mut self, slot: Slot) -> Result<usize, EspError> {
        let mut n = 0;
        for name in self.entry_files()? {
            let matches = EntryName::parse(&name)
                .map(|e| e.slot == slot)
                .unwrap_or(false)
                || EntryName::parse(name.trim_end_matches(".tmp"))
                    .map(|e| e.slot == slot && name.ends_with(".tmp"))
                    .unwrap_or(false);
            if matches {
                self.remove(&format!("{ENTRIES_DIR}/{name}"))?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn rename(&mut self, from: &str, to: &str) -> Result<(), EspError> {
        let root = self.fs.root_dir();
        root.rename(from, &root, to)
            .map_err(io_err(format!("renaming {from} to {to}")))
    }

    /// Rename an entry in place (boot counting, blessing) without rewriting its text.
    pub fn rename_entry(&mut self, from: &EntryName, to: &EntryName) -> Result<(), EspError> {
        self.rename(
            &format!("{ENTRIES_DIR}/{}", from.file_name()),
            &format!("{ENTRIES_DIR}/{}", to.file_name()),
        )
    }

    /// Flush FAT and FSInfo, then put the `.` and `..` entries of directories made in this
    /// session where the FAT specification wants them (see `dots`).
    pub fn close(self) -> Result<(), EspError> {
        self.fs.unmount().map_err(io_err("unmounting FAT"))?;
        if self.made_dirs {
            self.io
                .with(dots::repair)
                .map_err(io_err("ordering the entries of new directories"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn entry_names_roundtrip() {
        for (name, gen, slot, left, done) in [
            ("icos-1-a.conf", 1, Slot::A, None, 0),
            ("icos-12-b+3.conf", 12, Slot::B, Some(3), 0),
            ("icos-2-b+1-2.conf", 2, Slot::B, Some(1), 2),
            ("icos-2-b+0-3.conf", 2, Slot::B, Some(0), 3),
        ] {
            let n = EntryName::parse(name).unwrap();
            assert_eq!(
                (n.generation, n.slot, n.tries_left, n.tries_done),
                (gen, slot, left, done)
            );
            assert_eq!(n.file_name(), name);
        }
        assert!(EntryName::parse("icos-1-a+3.conf.tmp").is_none());
        assert!(EntryName::parse("other.conf").is_none());
        assert!(EntryName::parse("icos-x-a.conf").is_none());
        assert!(EntryName::parse("icos-1-c.conf").is_none());
        assert!(EntryName::parse("ICOS-1-A.CONF").is_some());
    }

    #[test]
    fn next_boot_follows_systemd_boot_order() {
        let mut a = BootEntry::new(Slot::A, 1, "t", "1.0.0", "");
        let mut b = BootEntry::new(Slot::B, 2, "t", "1.1.0", "");
        b.tries_left = Some(3);
        assert_eq!(next_boot(&[a.clone(), b.clone()]).unwrap().slot, Slot::B);
        b.tries_left = Some(0);
        b.tries_done = 3;
        assert_eq!(next_boot(&[a.clone(), b.clone()]).unwrap().slot, Slot::A);
        a.generation = 3;
        b.tries_left = None;
        assert_eq!(next_boot(&[a, b]).unwrap().slot, Slot::A);
    }

    #[test]
    fn esp_entries_write_read_rename() {
        let mut esp = Esp::format(Cursor::new(vec![0u8; 40 << 20]), 0x1234, "ESP").unwrap();
        esp.write_loader_conf().unwrap();
        esp.write_file("icos/a/vmlinuz", &mut &b"kernel"[..])
            .unwrap();
        let mut e = BootEntry::new(
            Slot::A,
            1,
            "GuestOS 1.0.0",
            "1.0.0",
            "console=ttyS0 icos.slot=A",
        );
        e.tries_left = Some(3);
        esp.write_entry(&e).unwrap();
        let got = esp.entries().unwrap();
        assert_eq!(got, vec![e.clone()]);
        let blessed = EntryName {
            tries_left: None,
            tries_done: 0,
            ..e.name()
        };
        esp.rename_entry(&e.name(), &blessed).unwrap();
        assert_eq!(
            esp.entry_files().unwrap(),
            vec!["icos-1-a.conf".to_string()]
        );
        assert_eq!(esp.entry_for(Slot::A).unwrap().tries_left, None);
        assert!(matches!(
            esp.entry_for(Slot::B),
            Err(EspError::NoEntry(Slot::B))
        ));
        assert_eq!(esp.remove_entries(Slot::A).unwrap(), 1);
        assert!(esp.entries().unwrap().is_empty());
        assert_eq!(esp.read_file("icos/a/vmlinuz").unwrap(), b"kernel");
        esp.close().unwrap();
    }

    #[test]
    fn malformed_entry_is_reported_with_its_name() {
        let err = BootEntry::parse("icos-1-a.conf", "title x\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("icos-1-a.conf") && err.contains("linux"),
            "{err}"
        );
        let err = BootEntry::parse("icos-1-a.conf", "linux /icos/b/vmlinuz\nversion 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("slot"), "{err}");
    }

    #[test]
    fn formatting_is_deterministic() {
        let build = || {
            let mut disk = Cursor::new(vec![0u8; 40 << 20]);
            let mut esp = Esp::format(&mut disk, 0x42, "ESP").unwrap();
            esp.write_loader_conf().unwrap();
            esp.write_file("icos/a/initrd.img", &mut &[7u8; 100_000][..])
                .unwrap();
            esp.write_entry(&BootEntry::new(Slot::A, 1, "x", "1", "o"))
                .unwrap();
            esp.close().unwrap();
            disk.into_inner()
        };
        let (one, two) = (build(), build());
        assert!(one == two, "two ESPs made from the same files differ");
    }
}
