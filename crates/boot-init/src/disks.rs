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

/// Look once: for each of `guids`, the partition of any disk under `sys_block` that has
/// it (device nodes under `dev`). Each disk's GPT is read once per look.
pub fn find_once(sys_block: &Path, dev: &Path, guids: &[Uuid]) -> Vec<Option<Found>> {
    let mut found: Vec<Option<Found>> = vec![None; guids.len()];
    for disk in disks(sys_block) {
        let Ok(parts) = disk_layout::read_partitions(&dev.join(&disk)) else {
            continue;
        };
        for (slot, guid) in found.iter_mut().zip(guids) {
            if slot.is_some() {
                continue;
            }
            if let Some(p) = parts.iter().find(|p| p.guid == *guid) {
                *slot = partition_node(sys_block, dev, &disk, p.number);
            }
        }
    }
    found
}

/// The device node and number of partition `number` of `disk`: its sysfs entry is the
/// child folder whose `partition` file holds that number.
fn partition_node(sys_block: &Path, dev: &Path, disk: &str, number: u32) -> Option<Found> {
    for c in std::fs::read_dir(sys_block.join(disk))
        .ok()?
        .filter_map(|e| e.ok())
    {
        let n = std::fs::read_to_string(c.path().join("partition")).unwrap_or_default();
        if n.trim().parse::<u32>().ok() != Some(number) {
            continue;
        }
        let devno = std::fs::read_to_string(c.path().join("dev")).unwrap_or_default();
        let node = dev.join(c.file_name());
        // devtmpfs can lag the sysfs entry: then not yet, look again.
        if !devno.trim().is_empty() && node.exists() {
            return Some(Found {
                node,
                devno: devno.trim().to_string(),
            });
        }
    }
    None
}

/// Wait up to `timeout` for every `(guid, what)` partition to appear (drivers probe disks
/// asynchronously; USB sticks take seconds); the error names the first one missing.
pub fn wait_for(wanted: &[(Uuid, &str)], timeout: Duration) -> Result<Vec<Found>, InitError> {
    let guids: Vec<Uuid> = wanted.iter().map(|(g, _)| *g).collect();
    let end = Instant::now() + timeout;
    loop {
        let found = find_once(Path::new("/sys/block"), Path::new("/dev"), &guids);
        if found.iter().all(Option::is_some) {
            return Ok(found.into_iter().flatten().collect());
        }
        if Instant::now() > end {
            let (guid, what) = wanted
                .iter()
                .zip(&found)
                .find_map(|(w, f)| f.is_none().then_some(*w))
                .expect("one is missing");
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

        let found = find_once(&sys, &dev, &[guid(2), guid(9), guid(1)]);
        let found2 = found[0].as_ref().unwrap();
        assert_eq!(found2.node, dev.join("vda2"));
        assert_eq!(found2.devno, "254:2");
        assert_eq!(found[1], None);
        assert_eq!(found[2].as_ref().unwrap().node, dev.join("vda1"));
        // The node not there yet (devtmpfs lags the sysfs entry): not found, try again later.
        std::fs::remove_file(dev.join("vda1")).unwrap();
        assert_eq!(find_once(&sys, &dev, &[guid(1)]), vec![None]);
    }
}
