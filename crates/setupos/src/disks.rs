//! The disks step: which disks are targets (every disk but the one SetupOS booted from),
//! and whether they are enough for the images and the profile — decided before anything
//! is written.

use crate::hardware::{disk_requirement, Machine};
use crate::Failure;
use image_stream::SetupPayload;
use node_config::operator::HardwareProfile;
use std::path::{Path, PathBuf};

/// One disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. `vdb`, `nvme1n1`.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

/// The chosen targets: HostOS goes to the first, the GuestOS volume spans the rest of it and
/// all the others.
#[derive(Debug, Clone)]
pub struct Targets {
    pub boot_disk: String,
    pub disks: Vec<Disk>,
}

impl Targets {
    pub fn names(&self) -> String {
        self.disks
            .iter()
            .map(|d| d.path.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn describe(&self) -> String {
        let list: Vec<String> = self
            .disks
            .iter()
            .map(|d| format!("{} {:.1} GiB", d.path.display(), gib(d.size)))
            .collect();
        format!(
            "targets {} (the boot disk {} is left alone); HostOS goes to {}",
            list.join(", "),
            self.boot_disk,
            self.disks[0].path.display()
        )
    }
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// Disks of the machine (no partitions, loop, RAM, optical or device-mapper devices).
pub fn list_disks(sys_block: &Path) -> Vec<Disk> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(sys_block) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "sr", "dm-", "md", "fd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let sectors: u64 = std::fs::read_to_string(e.path().join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        out.push(Disk {
            path: PathBuf::from("/dev").join(&name),
            name,
            size: sectors * 512,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The disk holding the partition SetupOS booted from (`icos.root=PARTUUID=` of the
/// kernel command line).
fn boot_disk(cmdline: &str, disks: &[Disk]) -> Option<String> {
    let uuid = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("icos.root=PARTUUID="))?
        .to_ascii_lowercase();
    disks
        .iter()
        .find(|d| {
            disk_layout::read_partitions(&d.path)
                .is_ok_and(|ps| ps.iter().any(|p| p.guid.to_string() == uuid))
        })
        .map(|d| d.name.clone())
}

/// LVM metadata and alignment take a little of each physical volume.
const LVM_OVERHEAD: u64 = 8 << 20;

/// Choose the targets among `disks` and check them against the images and the profile.
pub fn choose(
    disks: Vec<Disk>,
    boot: &str,
    payload: &SetupPayload,
    machine: &Machine,
    profile: HardwareProfile,
) -> Result<Targets, Failure> {
    let targets: Vec<Disk> = disks.into_iter().filter(|d| d.name != boot).collect();
    let todo = "add or replace disks so the machine meets the requirement";
    let Some(first) = targets.first() else {
        return Err(Failure::new(
            format!("no disk to install onto besides the boot disk {boot}"),
            todo,
        ));
    };
    let hostos = payload.hostos.map.size;
    let guest_start = payload
        .hostos
        .partitions
        .get("guestos")
        .map(|(start, _)| *start)
        .unwrap_or(hostos);
    if first.size < hostos {
        return Err(Failure::new(
            format!(
                "{} has {:.1} GiB; HostOS needs {:.1} GiB",
                first.path.display(),
                gib(first.size),
                gib(hostos)
            ),
            todo,
        ));
    }
    let volume: u64 = (first.size - guest_start).saturating_sub(LVM_OVERHEAD)
        + targets[1..]
            .iter()
            .map(|d| d.size.saturating_sub(LVM_OVERHEAD))
            .sum::<u64>();
    let guest = payload.guestos.map.size;
    if volume < guest {
        return Err(Failure::new(
            format!(
                "the GuestOS volume would have {:.1} GiB; GuestOS needs {:.1} GiB",
                gib(volume),
                gib(guest)
            ),
            todo,
        ));
    }
    let (min_each, min_total) = disk_requirement(machine, profile);
    let small: Vec<String> = targets
        .iter()
        .filter(|d| d.size < min_each)
        .map(|d| format!("{} ({:.1} GB)", d.path.display(), d.size as f64 / 1e9))
        .collect();
    if !small.is_empty() {
        return Err(Failure::new(
            format!(
                "the {profile:?} profile needs every data disk above {:.1} TB; smaller: {}",
                min_each as f64 / 1e12,
                small.join(", ")
            ),
            todo,
        ));
    }
    let total: u64 = targets.iter().map(|d| d.size).sum();
    if total < min_total {
        return Err(Failure::new(
            format!(
                "the {profile:?} profile needs more than {:.0} TB in all; the disks have {:.1} TB",
                min_total as f64 / 1e12,
                total as f64 / 1e12
            ),
            todo,
        ));
    }
    Ok(Targets {
        boot_disk: boot.to_string(),
        disks: targets,
    })
}

/// The disks step on the running machine.
pub fn select(
    cmdline: &str,
    payload: &SetupPayload,
    machine: &Machine,
    profile: HardwareProfile,
) -> Result<Targets, Failure> {
    let disks = list_disks(Path::new("/sys/block"));
    let boot = boot_disk(cmdline, &disks).ok_or_else(|| {
        Failure::new(
            "cannot tell which disk SetupOS booted from (no disk holds its root partition)",
            "boot SetupOS from its own stick, as written by `icos build setupos`",
        )
    })?;
    choose(disks, &boot, payload, machine, profile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_stream::{ChunkMap, PayloadImage};

    fn image(size: u64, parts: &[(&str, u64, u64)]) -> PayloadImage {
        PayloadImage {
            version: "1.0.0".into(),
            file: "x.img.zst".into(),
            map: ChunkMap {
                chunk_size: 1 << 20,
                size,
                chunks: vec![None; size.div_ceil(1 << 20) as usize],
            },
            partitions: parts
                .iter()
                .map(|(l, s, z)| (l.to_string(), (*s, *z)))
                .collect(),
        }
    }

    fn disk(name: &str, gib: u64) -> Disk {
        Disk {
            name: name.into(),
            path: PathBuf::from(format!("/dev/{name}")),
            size: gib << 30,
        }
    }

    #[test]
    fn targets_leave_the_boot_disk_and_must_hold_both_images() {
        let payload = SetupPayload {
            released: "2026-11-30".into(),
            hostos: image(6 << 30, &[("guestos", 2 << 30, 4 << 30)]),
            guestos: image(3 << 30, &[]),
        };
        let vm = Machine {
            cpu_model: "QEMU".into(),
            sockets: 1,
            threads: 2,
            sev: false,
            memory_bytes: 2 << 30,
        };
        let t = choose(
            vec![disk("vda", 1), disk("vdb", 8), disk("vdc", 2)],
            "vda",
            &payload,
            &vm,
            HardwareProfile::Vm,
        )
        .unwrap();
        assert_eq!(t.names(), "/dev/vdb, /dev/vdc");
        let e = choose(
            vec![disk("vda", 1), disk("vdb", 5)],
            "vda",
            &payload,
            &vm,
            HardwareProfile::Vm,
        )
        .unwrap_err();
        assert!(e.what.contains("HostOS needs 6.0 GiB"), "{e}");
        let e = choose(
            vec![disk("vda", 1)],
            "vda",
            &payload,
            &vm,
            HardwareProfile::Vm,
        )
        .unwrap_err();
        assert!(e.what.contains("no disk to install onto"), "{e}");
        let big_guest = SetupPayload {
            released: "2026-11-30".into(),
            hostos: image(6 << 30, &[("guestos", 2 << 30, 4 << 30)]),
            guestos: image(5 << 30, &[]),
        };
        let e = choose(
            vec![disk("vda", 1), disk("vdb", 6)],
            "vda",
            &big_guest,
            &vm,
            HardwareProfile::Vm,
        )
        .unwrap_err();
        assert!(e.what.contains("GuestOS volume would have"), "{e}");
        let e = choose(
            vec![disk("vda", 1), disk("vdb", 8)],
            "vda",
            &payload,
            &vm,
            HardwareProfile::Production,
        )
        .unwrap_err();
        assert!(e.what.contains("above 3.2 TB"), "{e}");
    }
}
