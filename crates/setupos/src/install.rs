//! The writing steps: HostOS, GuestOS, the config handover and the commit. They run only
//! after config, hardware, network and disks passed.
//!
//! How a cut short install stays unbootable: every target's first and last MiB are zeroed
//! first (no old partition table or volume label survives), and the first megabytes of the
//! HostOS boot partition (its FAT boot sector and tables) are held back in memory and written
//! only by [`commit`], after the GuestOS and the config are on disk. Until then the firmware
//! finds no boot loader on any target; a power cut means booting the stick again.

use crate::disks::Targets;
use crate::network::Plan;
use crate::{Failure, Options};
use image_stream::{commit_held, open_zstd, write_image, SetupPayload, Target, WriteOptions};
use node_config::hostos::HostosConfig;
use node_config::operator::OperatorConfig;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The LVM volume group and volume of the GuestOS disk.
pub const VOLUME_GROUP: &str = "hostlvm";
pub const GUEST_VOLUME: &str = "/dev/hostlvm/guestos";
/// SetupOS's root is read-only (dm-verity), so LVM's metadata archive and backup under
/// /etc/lvm cannot be written; lvcreate treats a failed archive as fatal. The metadata
/// itself lives on every PV, so nothing is lost by turning the copies off.
const LVM_CONFIG: &str = "--config=backup { backup = 0 archive = 0 }";
/// Bytes of the HostOS boot partition held back until the commit.
const HOLD: u64 = 4 << 20;

/// HostOS, written but not yet bootable.
#[derive(Debug)]
pub struct HostosWritten {
    pub version: String,
    pub disk: PathBuf,
    pub held: (u64, Vec<u8>),
    pub data_bytes: u64,
    pub size: u64,
    /// The grown `guestos` partition (the first physical volume of the GuestOS volume).
    pub guest_partition: PathBuf,
    pub guest_partition_size: u64,
}

impl HostosWritten {
    pub fn describe(&self) -> String {
        format!(
            "HostOS {} written to {} ({:.1} GiB, {} MiB of data, every chunk verified); its guestos partition {} grown to {:.1} GiB; boot partition held back until the end",
            self.version,
            self.disk.display(),
            self.size as f64 / (1u64 << 30) as f64,
            self.data_bytes >> 20,
            self.guest_partition.display(),
            self.guest_partition_size as f64 / (1u64 << 30) as f64
        )
    }
}

fn fail(what: impl std::fmt::Display) -> Failure {
    Failure::new(
        what.to_string(),
        "nothing bootable was left on the target disks: check the disks (and the stick) and boot SetupOS again",
    )
}

fn run(program: &str, args: &[&str]) -> Result<String, Failure> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        // Some tools (LVM among them) say the cause on stdout and only a summary on stderr.
        let said = [&out.stderr, &out.stdout]
            .iter()
            .map(|b| String::from_utf8_lossy(b).trim().to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(fail(format!(
            "`{program} {}` failed ({}): {said}",
            args.join(" "),
            out.status,
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Zero each target's first and last MiB: old partition tables and LVM labels go.
fn wipe_heads(targets: &Targets) -> Result<(), Failure> {
    for d in &targets.disks {
        let t = Target::open(&d.path).map_err(fail)?;
        let mib = 1u64 << 20;
        t.zero(0, mib.min(t.size())).map_err(fail)?;
        t.zero(t.size().saturating_sub(mib), mib.min(t.size()))
            .map_err(fail)?;
        t.sync().map_err(fail)?;
    }
    Ok(())
}

/// Step 5.
pub fn hostos(
    opts: &Options,
    payload: &SetupPayload,
    targets: &Targets,
) -> Result<HostosWritten, Failure> {
    wipe_heads(targets)?;
    let img = &payload.hostos;
    let disk = targets.disks[0].path.clone();
    let target = Target::open(&disk).map_err(fail)?;
    let (esp_start, esp_size) = *img
        .partitions
        .get("esp")
        .ok_or_else(|| fail("the HostOS payload names no esp partition"))?;
    let mut source = open_zstd(&opts.setup_data.join(&img.file)).map_err(fail)?;
    let written = write_image(
        &mut source,
        &img.map,
        &target,
        0,
        &WriteOptions {
            hold: Some((esp_start, HOLD.min(esp_size))),
            progress: None,
        },
    )
    .map_err(|e| fail(format!("writing HostOS to {}: {e}", disk.display())))?;
    let (guest_partition, guest_partition_size) = grow_guest_partition(&disk)?;
    Ok(HostosWritten {
        version: img.version.clone(),
        disk,
        held: written.held.expect("a hold was asked for"),
        data_bytes: written.data_bytes,
        size: img.map.size,
        guest_partition,
        guest_partition_size,
    })
}

/// Move the backup GPT to the disk's end and let the `guestos` partition (the last) take
/// the rest of the disk; returns its device and size.
fn grow_guest_partition(disk: &Path) -> Result<(PathBuf, u64), Failure> {
    let parts = disk_layout::read_partitions(disk).map_err(fail)?;
    let g = parts
        .iter()
        .find(|p| p.label == "guestos")
        .ok_or_else(|| fail("the written HostOS has no guestos partition"))?;
    let d = disk.display().to_string();
    run("sgdisk", &["-e", &d])?;
    let n = g.number;
    run(
        "sgdisk",
        &[
            &format!("--delete={n}"),
            &format!("--new={n}:{}:0", g.start / 512),
            &format!("--typecode={n}:{}", g.type_guid),
            &format!("--change-name={n}:guestos"),
            &format!("--partition-guid={n}:{}", g.guid),
            &d,
        ],
    )?;
    let _ = run("partx", &["-u", &d]);
    let grown = disk_layout::read_partitions(disk)
        .map_err(fail)?
        .into_iter()
        .find(|p| p.number == n)
        .ok_or_else(|| fail("the guestos partition is gone after growing it"))?;
    let dev = partition_device(disk, n)?;
    Ok((dev, grown.size))
}

/// The device of partition `n` of `disk` (vdb → vdb7, nvme0n1 → nvme0n1p7), once udev has
/// made it.
fn partition_device(disk: &Path, n: u32) -> Result<PathBuf, Failure> {
    let name = disk
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(rd) = std::fs::read_dir(format!("/sys/block/{name}")) {
            for e in rd.flatten() {
                let p = e.path().join("partition");
                if std::fs::read_to_string(&p).is_ok_and(|x| x.trim() == n.to_string()) {
                    let dev = PathBuf::from("/dev").join(e.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if Instant::now() > end {
            return Err(fail(format!(
                "partition {n} of {} did not appear",
                disk.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Step 6: the GuestOS volume over the grown partition and every further disk, and the
/// GuestOS image on it.
pub fn guestos(
    opts: &Options,
    payload: &SetupPayload,
    targets: &Targets,
    h: &HostosWritten,
) -> Result<String, Failure> {
    let mut pvs: Vec<String> = vec![h.guest_partition.display().to_string()];
    pvs.extend(
        targets.disks[1..]
            .iter()
            .map(|d| d.path.display().to_string()),
    );
    let pv_args: Vec<&str> = pvs.iter().map(String::as_str).collect();
    run(
        "pvcreate",
        &[&[LVM_CONFIG, "-ff", "-y", "--zero", "y"][..], &pv_args].concat(),
    )?;
    run(
        "vgcreate",
        &[&[LVM_CONFIG, "-y", VOLUME_GROUP][..], &pv_args].concat(),
    )?;
    run(
        "lvcreate",
        &[
            LVM_CONFIG,
            "-y",
            "-n",
            "guestos",
            "-l",
            "100%FREE",
            "--wipesignatures",
            "y",
            "--zero",
            "n",
            VOLUME_GROUP,
        ],
    )?;
    let lv = Path::new(GUEST_VOLUME);
    let end = Instant::now() + Duration::from_secs(20);
    while !lv.exists() {
        if Instant::now() > end {
            return Err(fail(format!(
                "{GUEST_VOLUME} did not appear after lvcreate"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let target = Target::open(lv).map_err(fail)?;
    let img = &payload.guestos;
    let mut source = open_zstd(&opts.setup_data.join(&img.file)).map_err(fail)?;
    let w = write_image(&mut source, &img.map, &target, 0, &WriteOptions::default())
        .map_err(|e| fail(format!("writing GuestOS to {GUEST_VOLUME}: {e}")))?;
    Ok(format!(
        "GuestOS {} written to {GUEST_VOLUME} ({:.1} GiB volume over {}; {} MiB of data, every chunk verified)",
        img.version,
        target.size() as f64 / (1u64 << 30) as f64,
        pvs.join(" + "),
        w.data_bytes >> 20
    ))
}

/// Step 7: `hostos.toml` on HostOS's config partition, from the typed chain.
pub fn handover(
    cfg: &OperatorConfig,
    plan: &Plan,
    payload: &SetupPayload,
    targets: &Targets,
) -> Result<String, Failure> {
    let host = HostosConfig::installed(cfg, plan.mgmt_mac, plan.uplink.1, Path::new(GUEST_VOLUME));
    let text = host.render();
    let (start, size) = *payload
        .hostos
        .partitions
        .get("config")
        .ok_or_else(|| fail("the HostOS payload names no config partition"))?;
    let disk = &targets.disks[0].path;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|e| fail(format!("{}: {e}", disk.display())))?;
    let mut fat = boot_slots::Esp::open(disk_layout::Window::new(f, start, size)).map_err(fail)?;
    fat.write_file(node_config::hostos::CONFIG_FILE, &mut text.as_bytes())
        .map_err(fail)?;
    fat.close().map_err(fail)?;
    Target::open(disk).map_err(fail)?.sync().map_err(fail)?;
    Ok(format!(
        "{} written to HostOS's config partition: deployment {}, HostOS {} {}, GuestOS {} {}, registry of {} URL(s), the operator key, {} admin SSH key(s)",
        node_config::hostos::CONFIG_FILE,
        cfg.deployment.name,
        plan.hostos.0,
        plan.hostos.1,
        plan.guestos.0,
        plan.guestos.1,
        cfg.deployment.registry.urls.len(),
        cfg.ssh_admin_keys.len()
    ))
}

/// Step 8: the held-back boot partition head makes HostOS bootable; then a firmware boot
/// entry (a VM's firmware may forget it; the disk boots through the fallback path anyway).
pub fn commit(h: &HostosWritten, _targets: &Targets) -> Result<String, Failure> {
    let target = Target::open(&h.disk).map_err(fail)?;
    commit_held(&target, 0, &h.held).map_err(fail)?;
    let d = h.disk.display().to_string();
    let entry = match run(
        "efibootmgr",
        &[
            "--create",
            "--disk",
            &d,
            "--part",
            "1",
            "--label",
            "icos HostOS",
            "--loader",
            "\\EFI\\BOOT\\BOOTX64.EFI",
        ],
    ) {
        Ok(_) => "firmware boot entry `icos HostOS` added".to_string(),
        Err(e) => format!(
            "no firmware boot entry ({}); the disk boots by the firmware's fallback path",
            e.what
        ),
    };
    Ok(format!("HostOS boot partition committed on {d}; {entry}"))
}

/// The benchmark's floor: both images decompressed and copied with `zstd -d | dd`, onto the
/// same places, timed (see [`crate::MEASURE_FLOOR_ARG`]).
pub fn measure_floor(opts: &Options, payload: &SetupPayload, targets: &Targets) -> String {
    let t = Instant::now();
    let jobs = [
        (
            &payload.hostos.file,
            targets.disks[0].path.display().to_string(),
        ),
        (&payload.guestos.file, GUEST_VOLUME.to_string()),
    ];
    for (file, dst) in jobs {
        let src = opts.setup_data.join(file);
        let cmd = format!(
            "zstd -dc '{}' | dd of='{dst}' bs=1M conv=fsync status=none",
            src.display()
        );
        if let Err(e) = run("sh", &["-c", &cmd]) {
            return format!("SETUPOS FLOOR failed: {}", e.what);
        }
    }
    format!(
        "SETUPOS FLOOR zstd -d | dd of both images: {:.1} s",
        t.elapsed().as_secs_f64()
    )
}
