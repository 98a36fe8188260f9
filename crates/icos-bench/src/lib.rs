//! Benchmarks that run our code and a baseline in the same run and report the ratio.
//!
//! Boot time ([`boot_benchmark`]): the image's time from QEMU start to its
//! `<BANNER> BOOT SUCCESS` line, next to a baseline disk that takes the *same* path (OVMF,
//! the image's own systemd-boot and kernel) but whose initramfs is a one-line init printing a
//! marker. The ratio is what icos adds on top of firmware + boot loader + kernel: the
//! initramfs, dm-verity, and systemd up to the required units.
//!
//! The other benchmarks live in modules: [`install`] (upgrade install throughput against
//! `sha256sum` + `dd`), [`registry`] (sync, incremental sync, server throughput against
//! nginx), [`replica`] (queries and calls under load against a bare HTTP and CBOR floor,
//! one message against a direct wasmtime call), [`boundary`] (queries through the API
//! boundary against nginx as a reverse proxy to the same replica) and [`rollout`] (a testnet rollout from adoption until every node confirmed,
//! against one plain reboot of the same VM).
//!
//! ```no_run
//! let r = icos_bench::boot_benchmark(std::path::Path::new("out/guestos-1.0.0/disk.img"), "GUESTOS", "console=ttyS0", 3).unwrap();
//! println!("ratio {:.2}", r.ratio());
//! ```

pub mod boundary;
pub mod catchup;
pub mod install;
pub mod registry;
pub mod replica;
pub mod rollout;
pub mod setupos;
pub mod subnet;
pub mod wrk;

use boot_slots::{BootEntry, Esp};
use disk_layout::{Layout, PartType, PartitionSpec, Role, Slot, Window};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;
use vm_runner::{Vm, VmConfig, WaitOutcome};

pub const BASELINE_MARKER: &str = "BASELINE BOOT DONE";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Vm(#[from] vm_runner::VmError),
    #[error(transparent)]
    Esp(#[from] boot_slots::EspError),
    #[error(transparent)]
    Layout(#[from] disk_layout::LayoutError),
    #[error(transparent)]
    Tool(#[from] host_tools::ToolError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{disk} did not reach `{pattern}` ({outcome}); last console lines:\n{tail}")]
    NoBoot {
        disk: PathBuf,
        pattern: String,
        outcome: String,
        tail: String,
    },
    #[error("testnet: {0}")]
    Testnet(#[from] testnet::TestnetError),
    #[error("replica benchmark: {what}: {message}")]
    Replica { what: String, message: String },
    #[error("wrk: {0}")]
    Wrk(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.to_path_buf();
    move |source| BenchError::Io { what, path, source }
}

/// Read a file from the ESP of a disk image.
pub fn read_from_esp(disk: &Path, file: &str) -> Result<Vec<u8>, BenchError> {
    let parts = disk_layout::read_partitions(disk)?;
    let esp = parts
        .iter()
        .find(|p| p.type_guid == PartType::Esp.guid())
        .ok_or_else(|| BenchError::Io {
            what: "finding the ESP of",
            path: disk.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no EFI system partition"),
        })?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io("opening", disk))?;
    let esp = Esp::open(Window::new(f, esp.start, esp.size))?;
    Ok(esp.read_file(file)?)
}

/// Build the baseline disk: the image's own boot loader, kernel and kernel command line
/// (`cmdline`, without the icos arguments), and an initramfs whose init prints
/// [`BASELINE_MARKER`] and powers off.
pub fn make_baseline_disk(
    image_disk: &Path,
    cmdline: &str,
    work: &Path,
) -> Result<PathBuf, BenchError> {
    std::fs::create_dir_all(work).map_err(io("creating", work))?;
    let kernel = read_from_esp(image_disk, &BootEntry::kernel_path(Slot::A))?;
    let loader = read_from_esp(image_disk, boot_slots::BOOTLOADER_PATH)?;

    // initramfs: /init (one line that matters), static busybox, /dev/console.
    let stage = work.join("initramfs");
    let _ = std::fs::remove_dir_all(&stage);
    for d in ["bin", "dev"] {
        std::fs::create_dir_all(stage.join(d)).map_err(io("creating", &stage))?;
    }
    let busybox = host_tools::tools::BUSYBOX.locate()?;
    std::fs::copy(&busybox, stage.join("bin/busybox")).map_err(io("copying", &busybox))?;
    let init = stage.join("init");
    std::fs::write(
        &init,
        format!("#!/bin/busybox sh\n/bin/busybox echo {BASELINE_MARKER} >/dev/console; /bin/busybox poweroff -f\n"),
    )
    .map_err(io("writing", &init))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", &init))?;
    let console = stage.join("dev/console");
    if !console.exists() {
        nix::sys::stat::mknod(
            &console,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(5, 1),
        )
        .map_err(|e| BenchError::Io {
            what: "mknod",
            path: console.clone(),
            source: e.into(),
        })?;
    }
    let initrd = work.join("baseline-initrd.img");
    let mut cmd = host_tools::tools::CPIO.command()?;
    cmd.current_dir(&stage);
    let script = format!(
        "find . | LC_ALL=C sort | {} --quiet -o -H newc > {}",
        cmd.get_program().to_string_lossy(),
        initrd.display()
    );
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c").arg(script).current_dir(&stage);
    host_tools::run(&mut sh, "pack the baseline initramfs")?;

    let disk = work.join("baseline.img");
    let layout = Layout::compute(
        uuid::Uuid::from_u128(0x1c05_ba5e),
        vec![PartitionSpec {
            label: "esp".into(),
            part_type: PartType::Esp,
            size: 96 << 20,
            guid: uuid::Uuid::from_u128(0x1c05_ba5e_0001),
            role: Role::Esp,
        }],
    )?;
    layout.create_sparse(&disk)?;
    layout.write_gpt(&disk)?;
    let part = &layout.partitions[0];
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .map_err(io("opening", &disk))?;
    let mut esp = Esp::format(Window::new(f, part.start, part.size()), 0xba5e, "ESP")?;
    esp.write_file(boot_slots::BOOTLOADER_PATH, &mut loader.as_slice())?;
    esp.write_loader_conf()?;
    esp.write_file(&BootEntry::kernel_path(Slot::A), &mut kernel.as_slice())?;
    let initrd_bytes = std::fs::read(&initrd).map_err(io("reading", &initrd))?;
    esp.write_file(
        &BootEntry::initrd_path(Slot::A),
        &mut initrd_bytes.as_slice(),
    )?;
    esp.write_entry(&BootEntry::new(
        Slot::A,
        1,
        "baseline",
        "0",
        &format!("{cmdline} panic=-1"),
    ))?;
    esp.close()?;
    Ok(disk)
}

/// Boot a disk once (snapshot mode) and return the time from QEMU start to the pattern.
pub fn time_boot(
    disk: &Path,
    pattern: &str,
    work: &Path,
    timeout: Duration,
) -> Result<Duration, BenchError> {
    let log = work.join(format!(
        "{}.serial.log",
        disk.file_stem().unwrap_or_default().to_string_lossy()
    ));
    let mut cfg = VmConfig::new(disk, &log);
    cfg.snapshot = true;
    cfg.no_reboot = true;
    cfg.accel = vm_runner::Accel::Tcg;
    let re = regex::Regex::new(&regex::escape(pattern)).expect("escaped");
    let mut vm = Vm::start(&cfg)?;
    let outcome = vm.wait_for(&[re], timeout)?;
    vm.kill();
    match outcome {
        WaitOutcome::Matched { elapsed, .. } => Ok(elapsed),
        other => Err(BenchError::NoBoot {
            disk: disk.to_path_buf(),
            pattern: pattern.to_string(),
            outcome: format!("{other:?}"),
            tail: vm_runner::serial_tail(&log, 30),
        }),
    }
}

/// Result of [`boot_benchmark`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootBench {
    pub image_runs: Vec<f64>,
    pub baseline_runs: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

impl BootBench {
    pub fn image_median(&self) -> f64 {
        median(&self.image_runs)
    }
    pub fn baseline_median(&self) -> f64 {
        median(&self.baseline_runs)
    }
    pub fn ratio(&self) -> f64 {
        self.image_median() / self.baseline_median()
    }
}

/// Boot the image and the baseline `runs` times each, alternating, under TCG.
pub fn boot_benchmark(
    image_disk: &Path,
    banner: &str,
    cmdline: &str,
    runs: usize,
) -> Result<BootBench, BenchError> {
    let work = std::env::temp_dir().join(format!("icos-bench-boot-{}", std::process::id()));
    let baseline = make_baseline_disk(image_disk, cmdline, &work)?;
    let marker = format!("{banner} BOOT SUCCESS");
    let mut r = BootBench {
        image_runs: Vec::new(),
        baseline_runs: Vec::new(),
    };
    let timeout = Duration::from_secs(300);
    for i in 0..runs {
        let b = time_boot(&baseline, BASELINE_MARKER, &work, timeout)?;
        let g = time_boot(image_disk, &marker, &work, timeout)?;
        eprintln!(
            "run {}/{runs}: image {:.2} s, baseline {:.2} s",
            i + 1,
            g.as_secs_f64(),
            b.as_secs_f64()
        );
        r.baseline_runs.push(b.as_secs_f64());
        r.image_runs.push(g.as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(r)
}
