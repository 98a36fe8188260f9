//! Install throughput: `icos upgrade install` of a 1 GiB package into a disk image, against
//! `sha256sum` of the package followed by `dd` of it into the same disk image (with fsync,
//! as the engine syncs too). The package is synthetic but real: random root data with a
//! verity tree made by `veritysetup`, so the engine runs every check it runs in production.

use crate::BenchError;
use boot_slots::{BootEntry, Esp};
use disk_layout::{Layout, PartType, PartitionSpec, Role, Slot, Window};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use update_package::{ImageKind, Part, PartFiles, UpdateManifest, Verity};

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.to_path_buf();
    move |source| BenchError::Io { what, path, source }
}

fn run(cmd: &mut Command, what: &str) -> Result<String, BenchError> {
    Ok(host_tools::run(cmd, what)?)
}

/// Make a package of about `root_mib` MiB and a disk to install it into.
pub fn make_fixture(
    work: &Path,
    root_mib: u64,
) -> Result<(PathBuf, update_package::Sha256Hex, PathBuf), BenchError> {
    std::fs::create_dir_all(work).map_err(io("creating", work))?;
    let root = work.join("root.img");
    let data_len = root_mib << 20;
    // Random data (incompressible, like an erofs image), streamed to the file: the benchmark
    // process stays small, so its children's peak RSS is their own.
    let out = std::fs::File::create(&root).map_err(io("creating", &root))?;
    let st = Command::new("head")
        .arg("-c")
        .arg(data_len.to_string())
        .arg("/dev/urandom")
        .stdout(out)
        .status()
        .map_err(io("reading /dev/urandom for", &root))?;
    if !st.success() {
        return Err(BenchError::Io {
            what: "filling",
            path: root.clone(),
            source: std::io::Error::other(st.to_string()),
        });
    }
    let salt = "5a".repeat(32);
    let mut v = host_tools::tools::VERITYSETUP.command()?;
    v.args([
        "format",
        "--no-superblock",
        "--hash=sha256",
        "--data-block-size=4096",
        "--hash-block-size=4096",
    ])
    .arg(format!("--data-blocks={}", data_len / 4096))
    .arg(format!("--hash-offset={data_len}"))
    .arg(format!("--salt={salt}"))
    .arg(&root)
    .arg(&root);
    let text = run(
        &mut v,
        "compute the verity tree of the benchmark root image",
    )?;
    let root_hash = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Root hash:")
                .and_then(|h| h.trim().parse().ok())
        })
        .ok_or_else(|| BenchError::Io {
            what: "reading the root hash veritysetup printed for",
            path: root.clone(),
            source: std::io::Error::other(text.clone()),
        })?;
    let kernel = work.join("vmlinuz");
    let initrd = work.join("initrd.img");
    std::fs::write(&kernel, vec![0x4bu8; 8 << 20]).map_err(io("writing", &kernel))?;
    std::fs::write(&initrd, vec![0x49u8; 16 << 20]).map_err(io("writing", &initrd))?;
    let part = |name: &str, p: &Path| -> Result<Part, BenchError> {
        let (sha256, size) = update_package::hash_file(p).map_err(io("hashing", p))?;
        Ok(Part {
            name: name.into(),
            size,
            sha256,
        })
    };
    let manifest = UpdateManifest {
        format: update_package::FORMAT,
        kind: ImageKind::Guestos,
        version: "bench".into(),
        cmdline: "console=ttyS0".into(),
        kernel_version: "bench".into(),
        verity: Verity {
            root_hash,
            salt,
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: data_len / 4096,
            hash_offset: data_len,
        },
        parts: vec![
            part("vmlinuz", &kernel)?,
            part("initrd.img", &initrd)?,
            part("root.img", &root)?,
        ],
    };
    let pkg = work.join("update.tar");
    update_package::write_package(
        &pkg,
        &manifest,
        &PartFiles {
            vmlinuz: kernel.clone(),
            initrd: initrd.clone(),
            root: root.clone(),
        },
    )
    .map_err(|e| BenchError::Io {
        what: "writing the benchmark package",
        path: pkg.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    for p in [&root, &kernel, &initrd] {
        let _ = std::fs::remove_file(p);
    }
    let (sha, _) = update_package::hash_file(&pkg).map_err(io("hashing", &pkg))?;

    // A GuestOS-shaped disk: slot A confirmed, slot B big enough for the package.
    let slot_size = ((root_mib + root_mib / 64 + 64) << 20).next_multiple_of(1 << 20);
    let spec = |label: &str, ty: PartType, size: u64, role: Role, n: u128| PartitionSpec {
        label: label.into(),
        part_type: ty,
        size,
        guid: uuid::Uuid::from_u128(0xbe00 + n),
        role,
    };
    let layout = Layout::compute(
        uuid::Uuid::from_u128(0xbe00),
        vec![
            spec("esp", PartType::Esp, 128 << 20, Role::Esp, 1),
            spec("A_root", PartType::Linux, 64 << 20, Role::Root(Slot::A), 2),
            spec("A_var", PartType::Linux, 8 << 20, Role::Var(Slot::A), 3),
            spec("B_root", PartType::Linux, slot_size, Role::Root(Slot::B), 4),
            spec("B_var", PartType::Linux, 8 << 20, Role::Var(Slot::B), 5),
        ],
    )?;
    let disk = work.join("disk.img");
    layout.create_sparse(&disk)?;
    layout.write_gpt(&disk)?;
    let esp_part = &layout.partitions[0];
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .map_err(io("opening", &disk))?;
    let mut esp = Esp::format(Window::new(f, esp_part.start, esp_part.size()), 0xbe, "ESP")?;
    esp.write_loader_conf()?;
    esp.write_file(
        boot_slots::IMAGE_INFO_PATH,
        &mut &b"{\"kind\":\"guestos\"}\n"[..],
    )?;
    esp.write_file(&BootEntry::kernel_path(Slot::A), &mut &b"kernel"[..])?;
    esp.write_file(&BootEntry::initrd_path(Slot::A), &mut &b"initrd"[..])?;
    esp.write_entry(&BootEntry::new(Slot::A, 1, "bench A", "0", "console=ttyS0"))?;
    esp.close()?;
    Ok((pkg, sha, disk))
}

/// Run a command and return (success, stderr, peak RSS in KiB) of exactly that process,
/// from `wait4`'s resource usage.
fn run_measured(cmd: &mut Command) -> std::io::Result<(bool, String, u64)> {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let mut status = 0;
    // SAFETY: plain FFI call with valid pointers; the pid is our own unreaped child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, err, ru.ru_maxrss as u64))
}

/// One measured run of each side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallBench {
    pub package_bytes: u64,
    pub icos_secs: Vec<f64>,
    pub icos_peak_rss_kib: u64,
    pub baseline_secs: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

impl InstallBench {
    pub fn icos_mib_s(&self) -> f64 {
        self.package_bytes as f64 / (1 << 20) as f64 / median(&self.icos_secs)
    }
    pub fn baseline_mib_s(&self) -> f64 {
        self.package_bytes as f64 / (1 << 20) as f64 / median(&self.baseline_secs)
    }
    /// icos throughput relative to sha256sum+dd (1.0 = as fast).
    pub fn ratio(&self) -> f64 {
        self.icos_mib_s() / self.baseline_mib_s()
    }
}

/// Run the benchmark: `icos` is the binary to measure.
pub fn install_benchmark(
    icos: &Path,
    work: &Path,
    root_mib: u64,
    runs: usize,
) -> Result<InstallBench, BenchError> {
    let (pkg, sha, disk) = make_fixture(work, root_mib)?;
    let package_bytes = std::fs::metadata(&pkg).map_err(io("reading", &pkg))?.len();
    let b_root = disk_layout::read_partitions(&disk)?
        .into_iter()
        .find(|p| p.label == "B_root")
        .expect("fixture has B_root");
    let mut r = InstallBench {
        package_bytes,
        icos_secs: Vec::new(),
        icos_peak_rss_kib: 0,
        baseline_secs: Vec::new(),
    };
    // Warm-up (not measured): allocate the target blocks and warm the page cache, so the
    // first measured run of either side does not pay for that.
    let dd = || {
        let mut d = Command::new("dd");
        d.arg(format!("if={}", pkg.display()))
            .arg(format!("of={}", disk.display()))
            .arg("bs=1M")
            .arg(format!("seek={}", b_root.start))
            .args(["oflag=seek_bytes", "conv=notrunc,fsync", "status=none"]);
        d
    };
    run(&mut dd(), "warm up")?;
    for i in 0..runs {
        // Baseline: hash the package, then copy it onto the target partition.
        let t = Instant::now();
        let mut c = Command::new("sha256sum");
        c.arg(&pkg);
        run(&mut c, "hash the package (baseline)")?;
        run(&mut dd(), "copy the package (baseline)")?;
        let base = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let (ok, stderr, max_rss_kib) = run_measured(
            Command::new(icos)
                .args(["upgrade", "--disk"])
                .arg(&disk)
                .arg("install")
                .arg(&pkg)
                .arg("--sha256")
                .arg(sha.as_str()),
        )
        .map_err(io("running", icos))?;
        let ours = t.elapsed().as_secs_f64();
        if !ok {
            return Err(BenchError::Io {
                what: "icos upgrade install in the benchmark",
                path: disk.clone(),
                source: std::io::Error::other(stderr),
            });
        }
        r.icos_peak_rss_kib = r.icos_peak_rss_kib.max(max_rss_kib);
        let _ = std::io::stderr().write_all(
            format!(
                "run {}/{runs}: icos {ours:.2} s, sha256sum+dd {base:.2} s\n",
                i + 1
            )
            .as_bytes(),
        );
        r.icos_secs.push(ours);
        r.baseline_secs.push(base);
    }
    Ok(r)
}
