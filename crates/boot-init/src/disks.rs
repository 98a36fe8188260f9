//! Finding a partition by its GPT partition GUID (PARTUUID) without udev: the kernel lists
//! disks and partitions in sysfs and devtmpfs makes their nodes; the GUIDs come from reading
//! each disk's GPT.

use crate::InitError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A partition found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Device node, e.g. `/dev/vda3`.
    pub node: PathBuf,
    /// "major:minor", how device-mapper tables name it.
    pub devno: String,
}

/// Disks the kernel has registered (`/sys/block`), skipping those that never carry a GPT
/// of ours (loop, ram, device-mapper, zram, CD-ROM).
fn disks(sys_block: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(sys_block)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    !["loop", "ram", "dm-", "zram", "sr"]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Look once: the partition of any disk under `sys_block` whose GUID is `guid`; device
/// nodes are taken to be under `dev`.
pub fn find_once(sys_block: &Path, dev: &Path, guid: Uuid) -> Option<Found> {
    for disk in disks(sys_block) {
        let Ok(parts) = disk_layout::read_partitions(&dev.join(&disk)) else {
            continue;
        };
        let Some(p) = parts.iter().find(|p| p.guid == guid) else {
            continue;
        };
        // The partition's own sysfs entry: the child folder whose `partition` file holds its number.
        let Ok(children) = std::fs::read_dir(sys_block.join(&disk)) else {
            continue;
        };
        for c in children.filter_map(|e| e.ok()) {
            let number = std::fs::read_to_string(c.path().join("partition")).unwrap_or_default();
            if number.trim().parse::<u32>().ok() == Some(p.number) {
                let devno = std::fs::read_to_string(c.path().join("dev")).unwrap_or_default();
                let node = dev.join(c.file_name());
                if !devno.trim().is_empty() && node.exists() {
                    return Some(Found {
                        node,
                        devno: devno.trim().to_string(),
                    });
                }
            }
        }
    }
    None
}

/// Wait up to `timeout` for the partition to appear (drivers probe disks asynchronously;
/// USB sticks take seconds).
pub fn wait_for(guid: Uuid, what: &str, timeout: Duration) -> Result<Found, InitError> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(f) = find_once(Path::new("/sys/block"), Path::new("/dev"), guid) {
            return Ok(f);
        }
        if Instant::now() > end {
            let seen = disks(Path::new("/sys/block"));
            return Err(InitError::Disk(format!(
                "{what} partition PARTUUID={guid} not found within {} s (disks seen: {})",
                timeout.as_secs(),
                if seen.is_empty() {
                    "none".into()
                } else {
                    seen.join(", ")
                }
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_layout::{Layout, PartType, PartitionSpec, Role};

    /// A fake sysfs + /dev: one real GPT disk image as `vda`, its partitions' sysfs folders.
    #[test]
    fn finds_the_partition_with_the_guid_on_a_real_gpt() {
        let d = tempfile::tempdir().unwrap();
        let (sys, dev) = (d.path().join("sys/block"), d.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        let guid = |n: u128| Uuid::from_u128(0x1c05_0000 + n);
        let spec = |n: u128, label: &str| PartitionSpec {
            label: label.into(),
            part_type: PartType::Linux,
            size: 1 << 20,
            guid: guid(n),
            role: Role::Data,
        };
        let layout = Layout::compute(guid(0), vec![spec(1, "one"), spec(2, "two")]).unwrap();
        layout.create_sparse(&dev.join("vda")).unwrap();
        layout.write_gpt(&dev.join("vda")).unwrap();
        for (n, name) in [(1, "vda1"), (2, "vda2")] {
            let p = sys.join("vda").join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("partition"), format!("{n}\n")).unwrap();
            std::fs::write(p.join("dev"), format!("254:{n}\n")).unwrap();
            std::fs::write(dev.join(name), "").unwrap();
        }
        std::fs::create_dir_all(sys.join("loop0")).unwrap();

        let found = find_once(&sys, &dev, guid(2)).unwrap();
        assert_eq!(found.node, dev.join("vda2"));
        assert_eq!(found.devno, "254:2");
        assert_eq!(find_once(&sys, &dev, guid(9)), None);
        // The node not there yet (devtmpfs lags the sysfs entry): not found, try again later.
        std::fs::remove_file(dev.join("vda1")).unwrap();
        assert_eq!(find_once(&sys, &dev, guid(1)), None);
    }
}
