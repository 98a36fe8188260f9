//! GPT disk layouts for icos images.
//!
//! A layout is data (from an image recipe): an ordered list of [`PartitionSpec`]s with a
//! label, a type, a size, a fixed partition GUID and a [`Role`]. [`Layout::compute`] places
//! them on 1 MiB boundaries; [`Layout::write_gpt`] writes the table into a sparse disk file
//! with `sgdisk` (fixed disk and partition GUIDs, so the result is bit-for-bit repeatable);
//! [`read_partitions`] reads a GPT back (from a disk image or a block device) with the `gpt`
//! crate; [`Window`] gives `Read + Write + Seek` access to one partition's bytes so other
//! code (the ESP writer, the upgrade engine) never computes offsets by hand.
//!
//! ```no_run
//! use disk_layout::{Layout, PartitionSpec, read_partitions, Window};
//! # fn specs() -> Vec<PartitionSpec> { vec![] }
//! let layout = Layout::compute(uuid::Uuid::nil(), specs()).unwrap();
//! let disk = std::path::Path::new("disk.img");
//! layout.create_sparse(disk).unwrap();
//! layout.write_gpt(disk).unwrap();
//! let parts = read_partitions(disk).unwrap();
//! let esp = parts.iter().find(|p| p.label == "esp").unwrap();
//! let file = std::fs::OpenOptions::new().read(true).write(true).open(disk).unwrap();
//! let _window = Window::new(file, esp.start, esp.size);
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use uuid::Uuid;

mod window;
pub use window::Window;

/// Partitions start on 1 MiB boundaries (what every partitioning tool does for SSDs and RAID).
pub const ALIGN: u64 = 1024 * 1024;
/// Space reserved before the first and after the last partition for the GPT headers and arrays.
const GPT_RESERVE: u64 = ALIGN;
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("invalid size `{0}`: expected a number with a K, M, G or T suffix, e.g. 512M")]
    BadSize(String),
    #[error("partition `{label}`: size {size} is not a multiple of 1 MiB")]
    Unaligned { label: String, size: u64 },
    #[error("partition label `{0}` appears twice")]
    DuplicateLabel(String),
    #[error("partition GUID {0} appears twice")]
    DuplicateGuid(Uuid),
    #[error("partition label `{0}` is longer than the 36 characters GPT allows")]
    LabelTooLong(String),
    #[error("the layout has no partitions")]
    Empty,
    #[error("no partition named `{0}` in the layout")]
    UnknownPartition(String),
    #[error("partition `{label}`: {what} ({need} bytes) does not fit into its {size} bytes")]
    TooSmall {
        label: String,
        what: String,
        need: u64,
        size: u64,
    },
    #[error("writing the partition table of {path}: {source}")]
    Tool {
        path: String,
        #[source]
        source: host_tools::ToolError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the partition table of {path}: {message}")]
    Gpt { path: String, message: String },
}

/// The GPT partition type. Generic types only: discoverable types (root, var) would invite
/// systemd-gpt-auto-generator to mount partitions we manage ourselves per slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartType {
    /// EFI System Partition.
    Esp,
    /// Linux filesystem data.
    Linux,
}

impl PartType {
    pub fn guid(self) -> &'static str {
        match self {
            PartType::Esp => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            PartType::Linux => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        }
    }
}

/// A/B slot of an upgradable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" | "a" => Some(Slot::A),
            "B" | "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a partition holds; the builder and the upgrade engine find partitions by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "role", content = "slot")]
pub enum Role {
    /// EFI System Partition: systemd-boot, loader entries, each slot's kernel and initrd.
    Esp,
    /// Node configuration that survives upgrades.
    Config,
    /// A slot's read-only root filesystem followed by its dm-verity hash tree.
    Root(Slot),
    /// A slot's writable /var, wiped when a new version is installed into the slot.
    Var(Slot),
    /// Long-lived node data (the IC-OS "store").
    Data,
    /// HostOS: room for the GuestOS VM's disk.
    GuestDisk,
    /// SetupOS: the only (not A/B) root filesystem.
    SetupRoot,
    /// SetupOS: FAT partition the operator edits (config.ini and friends).
    SetupConfig,
    /// SetupOS: the HostOS and GuestOS images to install.
    SetupData,
}

/// One partition as written in a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSpec {
    pub label: String,
    #[serde(rename = "type")]
    pub part_type: PartType,
    /// Size in bytes (a multiple of [`ALIGN`]).
    pub size: u64,
    pub guid: Uuid,
    #[serde(flatten)]
    pub role: Role,
}

/// A partition placed on the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    #[serde(flatten)]
    pub spec: PartitionSpec,
    /// Byte offset of the first byte.
    pub start: u64,
}

impl Placed {
    pub fn size(&self) -> u64 {
        self.spec.size
    }
    pub fn end(&self) -> u64 {
        self.start + self.spec.size
    }
}

/// A computed disk layout: fixed disk GUID, placed partitions, total size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub disk_guid: Uuid,
    pub partitions: Vec<Placed>,
    pub disk_size: u64,
}

/// Parse "512M", "1G", "64K", "2T" or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64, LayoutError> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        Some(c) if c.is_ascii_digit() => (t, 1),
        _ => return Err(LayoutError::BadSize(s.to_string())),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| LayoutError::BadSize(s.to_string()))?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| LayoutError::BadSize(s.to_string()))
}

/// Human-readable size, e.g. "512M".
pub fn format_size(bytes: u64) -> String {
    for (suffix, unit) in [
        ("T", 1u64 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{}", bytes / unit, suffix);
        }
    }
    format!("{bytes}")
}

impl Layout {
    /// Place the partitions in order on 1 MiB boundaries and validate labels and GUIDs.
    pub fn compute(disk_guid: Uuid, specs: Vec<PartitionSpec>) -> Result<Layout, LayoutError> {
        if specs.is_empty() {
            return Err(LayoutError::Empty);
        }
        let mut labels = std::collections::HashSet::new();
        let mut guids = std::collections::HashSet::new();
        let mut partitions = Vec::with_capacity(specs.len());
        let mut cursor = GPT_RESERVE;
        for spec in specs {
            if spec.label.encode_utf16().count() > 36 {
                return Err(LayoutError::LabelTooLong(spec.label));
            }
            if !labels.insert(spec.label.clone()) {
                return Err(LayoutError::DuplicateLabel(spec.label));
            }
            if !guids.insert(spec.guid) {
                return Err(LayoutError::DuplicateGuid(spec.guid));
            }
            if spec.size == 0 || !spec.size.is_multiple_of(ALIGN) {
                return Err(LayoutError::Unaligned {
                    label: spec.label,
                    size: spec.size,
                });
            }
            let start = cursor;
            cursor += spec.size;
            partitions.push(Placed { spec, start });
        }
        Ok(Layout {
            disk_guid,
            partitions,
            disk_size: cursor + GPT_RESERVE,
        })
    }

    pub fn by_label(&self, label: &str) -> Result<&Placed, LayoutError> {
        self.partitions
            .iter()
            .find(|p| p.spec.label == label)
            .ok_or_else(|| LayoutError::UnknownPartition(label.to_string()))
    }

    pub fn by_role(&self, role: Role) -> Option<&Placed> {
        self.partitions.iter().find(|p| p.spec.role == role)
    }

    /// Create (or truncate) a sparse file of the layout's size.
    pub fn create_sparse(&self, path: &Path) -> Result<(), LayoutError> {
        let f = std::fs::File::create(path).map_err(|source| LayoutError::Io {
            what: "creating disk image",
            path: path.display().to_string(),
            source,
        })?;
        f.set_len(self.disk_size).map_err(|source| LayoutError::Io {
            what: "sizing disk image",
            path: path.display().to_string(),
            source,
        })
    }

    /// Write protective MBR and GPT (primary and backup) with `sgdisk`.
    pub fn write_gpt(&self, path: &Path) -> Result<(), LayoutError> {
        let mut cmd = host_tools::tools::SGDISK
            .command()
            .map_err(|source| LayoutError::Tool {
                path: path.display().to_string(),
                source,
            })?;
        // Do not pass -q: with it sgdisk silently writes nothing (see machine.md).
        cmd.arg("--clear")
            .arg(format!("--disk-guid={}", self.disk_guid));
        for (i, p) in self.partitions.iter().enumerate() {
            let n = i + 1;
            let first = p.start / SECTOR;
            let last = p.end() / SECTOR - 1;
            cmd.arg(format!("--new={n}:{first}:{last}"))
                .arg(format!("--typecode={n}:{}", p.spec.part_type.guid()))
                .arg(format!("--change-name={n}:{}", p.spec.label))
                .arg(format!("--partition-guid={n}:{}", p.spec.guid));
        }
        cmd.arg(path);
        host_tools::run(&mut cmd, "write the GPT").map_err(|source| LayoutError::Tool {
            path: path.display().to_string(),
            source,
        })?;
        Ok(())
    }
}

/// A partition as found in an existing GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPartition {
    /// 1-based partition number (as in /dev/vda1).
    pub number: u32,
    pub label: String,
    pub guid: Uuid,
    pub type_guid: String,
    pub start: u64,
    pub size: u64,
}

/// Read the GPT of a disk image file or a block device.
pub fn read_partitions(path: &Path) -> Result<Vec<FoundPartition>, LayoutError> {
    let file = std::fs::File::open(path).map_err(|source| LayoutError::Io {
        what: "opening disk",
        path: path.display().to_string(),
        source,
    })?;
    read_partitions_from(file, &path.display().to_string())
}

/// Read a GPT from any seekable device (used by tests on in-memory disks too).
pub fn read_partitions_from<D>(device: D, name: &str) -> Result<Vec<FoundPartition>, LayoutError>
where
    D: Read + Write + Seek + fmt::Debug,
{
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(device)
        .map_err(|e| LayoutError::Gpt {
            path: name.to_string(),
            message: e.to_string(),
        })?;
    let mut out: Vec<FoundPartition> = disk
        .partitions()
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| FoundPartition {
            number: *n,
            label: p.name.clone(),
            guid: p.part_guid,
            type_guid: p.part_type_guid.guid.to_string().to_uppercase(),
            start: p.first_lba * SECTOR,
            size: (p.last_lba - p.first_lba + 1) * SECTOR,
        })
        .collect();
    out.sort_by_key(|p| p.number);
    Ok(out)
}

/// Adapter so a `File` opened read-only can be handed to the gpt crate (which wants `Write`).
#[derive(Debug)]
pub struct ReadOnly<R>(pub R);
impl<R: Read> Read for ReadOnly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl<R: Seek> Seek for ReadOnly<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}
impl<R> Write for ReadOnly<R> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "read-only device",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(label: &str, size: &str, role: Role, n: u128) -> PartitionSpec {
        PartitionSpec {
            label: label.into(),
            part_type: if role == Role::Esp {
                PartType::Esp
            } else {
                PartType::Linux
            },
            size: parse_size(size).unwrap(),
            guid: Uuid::from_u128(n),
            role,
        }
    }

    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("0M").is_err());
        assert_eq!(format_size(512 << 20), "512M");
        assert_eq!(format_size(3 << 30), "3G");
    }

    #[test]
    fn partitions_are_aligned_and_ordered() {
        let l = Layout::compute(
            Uuid::from_u128(9),
            vec![
                spec("esp", "100M", Role::Esp, 1),
                spec("A_root", "512M", Role::Root(Slot::A), 2),
                spec("B_root", "512M", Role::Root(Slot::B), 3),
            ],
        )
        .unwrap();
        assert_eq!(l.partitions[0].start, ALIGN);
        for w in l.partitions.windows(2) {
            assert_eq!(w[0].end(), w[1].start);
        }
        assert!(l.partitions.iter().all(|p| p.start % ALIGN == 0));
        assert_eq!(l.disk_size, l.partitions.last().unwrap().end() + ALIGN);
        assert_eq!(l.by_role(Role::Root(Slot::B)).unwrap().spec.label, "B_root");
    }

    #[test]
    fn bad_layouts_are_refused() {
        let dup = Layout::compute(
            Uuid::nil(),
            vec![
                spec("x", "1M", Role::Esp, 1),
                spec("x", "1M", Role::Data, 2),
            ],
        );
        assert!(matches!(dup, Err(LayoutError::DuplicateLabel(_))));
        let dupg = Layout::compute(
            Uuid::nil(),
            vec![
                spec("x", "1M", Role::Esp, 1),
                spec("y", "1M", Role::Data, 1),
            ],
        );
        assert!(matches!(dupg, Err(LayoutError::DuplicateGuid(_))));
        let mut s = spec("x", "1M", Role::Esp, 1);
        s.size = 1000;
        assert!(matches!(
            Layout::compute(Uuid::nil(), vec![s]),
            Err(LayoutError::Unaligned { .. })
        ));
        assert!(matches!(
            Layout::compute(Uuid::nil(), vec![]),
            Err(LayoutError::Empty)
        ));
    }

    #[test]
    fn gpt_roundtrip_with_fixed_guids() {
        if host_tools::tools::SGDISK.locate().is_err() {
            panic!("sgdisk missing: run scripts/setup.sh");
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.img");
        let l = Layout::compute(
            Uuid::from_u128(0xabc),
            vec![
                spec("esp", "8M", Role::Esp, 0x11),
                spec("A_root", "4M", Role::Root(Slot::A), 0x12),
                spec("data", "2M", Role::Data, 0x13),
            ],
        )
        .unwrap();
        l.create_sparse(&disk).unwrap();
        l.write_gpt(&disk).unwrap();
        let found = read_partitions(&disk).unwrap();
        assert_eq!(found.len(), 3);
        for (f, p) in found.iter().zip(&l.partitions) {
            assert_eq!(f.label, p.spec.label);
            assert_eq!(f.guid, p.spec.guid);
            assert_eq!(f.start, p.start);
            assert_eq!(f.size, p.size());
            assert_eq!(f.type_guid, p.spec.part_type.guid());
        }
        // Same layout written twice gives the same bytes.
        let first = std::fs::read(&disk).unwrap();
        let disk2 = dir.path().join("d2.img");
        l.create_sparse(&disk2).unwrap();
        l.write_gpt(&disk2).unwrap();
        assert_eq!(first, std::fs::read(&disk2).unwrap());
    }

    #[test]
    fn garbage_is_not_a_gpt() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("junk.img");
        std::fs::write(&disk, vec![0x5au8; 1 << 20]).unwrap();
        let err = read_partitions(&disk).unwrap_err().to_string();
        assert!(err.contains("junk.img"), "{err}");
    }
}
