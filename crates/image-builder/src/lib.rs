//! Builds icos disk images and update packages from the recipes in `images/`.
//!
//! A build ([`build`]) goes: Debian base (debootstrap, cached under a key of its inputs) →
//! root tree (overlays, units, release file, SBOM) → initramfs (made inside the tree with
//! the image's own initramfs-tools) → erofs root + dm-verity hash tree → GPT disk with the
//! root in slot A and an ESP holding systemd-boot, the slot's kernel, initrd and boot entry
//! → update package → `manifest.json` and `SHA256SUMS`. Everything is written into a
//! partial directory next to the output and renamed into place only when complete, so a
//! failed build never leaves output that looks valid.
//!
//! [`verify_build`] rebuilds from the inputs recorded in a manifest and names every part
//! that differs.
//!
//! ```no_run
//! use image_builder::{build, BuildRequest};
//! let req = BuildRequest::new("images/guestos", "1.0.0", "out/guestos-1.0.0");
//! let manifest = build(&req).unwrap();
//! println!("root hash {}", manifest.verity.root_hash);
//! ```

mod base;
mod binary;
mod disk;
mod pipeline;
pub mod progress;
mod rootfs;
mod rootimg;

pub use binary::default_source_dir;
pub use rootimg::verify_root_image;

use disk_layout::{Layout, LayoutError, PartitionSpec, Role};
use image_recipe::{PartSize, Recipe, RecipeError};
use progress::Progress;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use update_package::{ImageKind, Part, PartFiles, Sha256Hex, UpdateManifest, Verity};
use uuid::Uuid;

pub const MANIFEST_FORMAT: u32 = 1;
/// Free space a build needs next to its output (base copy, root image, package, disk).
pub const MIN_FREE_BYTES: u64 = 1536 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Tool(#[from] host_tools::ToolError),
    #[error(transparent)]
    Esp(#[from] boot_slots::EspError),
    #[error(transparent)]
    Package(#[from] update_package::PackageError),
    #[error("{what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("debootstrap could not build the Debian base ({suite} from {mirror}): {detail}")]
    Debootstrap {
        suite: String,
        mirror: String,
        detail: String,
    },
    #[error("not enough free space in {path}: a build needs at least {need_mib} MiB, {have_mib} MiB are free")]
    NoSpace {
        path: PathBuf,
        need_mib: u64,
        have_mib: u64,
    },
    #[error("partition `{partition}`: {what} ({need} bytes) does not fit into {size} bytes; raise its size in the recipe or with --size {partition}=...")]
    TooSmall {
        partition: String,
        what: String,
        need: u64,
        size: u64,
    },
    #[error("invalid version `{0}`: use 1-64 characters from [0-9A-Za-z.+~-], e.g. 1.0.0")]
    BadVersion(String),
    #[error("{0}")]
    Invalid(String),
    #[error("manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
}

impl BuildError {
    pub(crate) fn io(what: &str, path: &Path, source: std::io::Error) -> Self {
        BuildError::Io {
            what: what.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One installed Debian package (the SBOM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// Size and SHA-256 of a file or byte range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digested {
    pub size: u64,
    pub sha256: Sha256Hex,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeRef {
    /// Recipe folder relative to the recipes root (`images/`).
    pub name: String,
    pub content_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRef {
    pub key: String,
    pub suite: String,
    pub mirror: String,
    pub variant: String,
    pub debootstrap: String,
}

/// An input image of a SetupOS build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// Path of the input's output folder, relative to this output's parent when possible.
    pub path: String,
    pub version: String,
    pub manifest_sha256: Sha256Hex,
}

/// `manifest.json`: what was built, from what, and the hash of every part. It holds no
/// timestamps or machine-specific paths, so it is itself reproducible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildManifest {
    pub format: u32,
    pub image: ImageKind,
    pub version: String,
    pub builder: String,
    pub recipe: RecipeRef,
    pub base: BaseRef,
    pub size_overrides: BTreeMap<String, u64>,
    pub inputs: BTreeMap<String, InputRef>,
    /// The icos binaries the image carries (`icos-node`, `icos-init`), as built: a later
    /// build from a changed source tree is told apart without unpacking the root image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub binaries: BTreeMap<String, Digested>,
    /// SetupOS only: its release date (an input, like the version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<String>,
    pub kernel_version: String,
    pub cmdline: String,
    pub boot_options: String,
    pub verity: Verity,
    pub layout: Layout,
    /// vmlinuz, initrd.img, root.img, esp (the ESP partition's bytes), and for SetupOS the
    /// config and data partitions.
    pub parts: BTreeMap<String, Digested>,
    /// disk.img and (GuestOS, HostOS) update.tar.
    pub outputs: BTreeMap<String, Digested>,
    /// The SBOM: every installed Debian package with its exact version.
    pub packages: Vec<Package>,
}

impl BuildManifest {
    pub fn load(path: &Path) -> Result<BuildManifest, BuildError> {
        let text = std::fs::read_to_string(path).map_err(|e| BuildError::io("reading", path, e))?;
        let m: BuildManifest = serde_json::from_str(&text).map_err(|e| BuildError::Manifest {
            path: path.to_path_buf(),
            message: format!("not a build manifest: {e}"),
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(BuildError::Manifest {
                path: path.to_path_buf(),
                message: format!("format {} is not the supported {MANIFEST_FORMAT}", m.format),
            });
        }
        Ok(m)
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub recipe_dir: PathBuf,
    pub version: String,
    pub out: PathBuf,
    pub cache: PathBuf,
    pub size_overrides: BTreeMap<String, u64>,
    /// SetupOS only: the HostOS and GuestOS output folders to put on the data partition.
    pub hostos: Option<PathBuf>,
    pub guestos: Option<PathBuf>,
    /// The icos source tree, to build the `icos` binary the image carries.
    pub source: PathBuf,
    /// SetupOS only: its release date (YYYY-MM-DD; default today, UTC). An input like the
    /// version: SetupOS warns when it is stale, and a rebuild uses the recorded date.
    pub released: Option<String>,
}

impl BuildRequest {
    /// Whether `out` already holds a build of this recipe and of the icos source as they are
    /// now (the manifest's recipe content hash and binary digests; the binaries are built to
    /// compare, which cargo makes a no-op when nothing changed). A missing or unreadable
    /// manifest is no build; a folder built from an older recipe or source is stale.
    pub fn is_built(&self) -> Result<bool, BuildError> {
        let Ok(built) = BuildManifest::load(&self.out.join("manifest.json")) else {
            return Ok(false);
        };
        if built.recipe.content_hash != Recipe::load(&self.recipe_dir)?.content_hash()? {
            return Ok(false);
        }
        if built.binaries.is_empty() {
            return Ok(false);
        }
        let progress = progress::Progress::new(
            &format!("{} {} (is it current?)", built.image, built.version),
            1,
        );
        progress.detail("building the icos binaries to compare");
        let bins = binary::build_binaries(&self.source, &self.cache, &progress)?;
        Ok(bins.digests()? == built.binaries)
    }

    pub fn new(recipe_dir: impl Into<PathBuf>, version: &str, out: impl Into<PathBuf>) -> Self {
        BuildRequest {
            recipe_dir: recipe_dir.into(),
            version: version.to_string(),
            out: out.into(),
            cache: default_cache_dir(),
            size_overrides: BTreeMap::new(),
            hostos: None,
            guestos: None,
            source: default_source_dir(),
            released: None,
        }
    }
}

/// `$ICOS_CACHE`, else `$XDG_CACHE_HOME/icos`, else `~/.cache/icos`: outside the checkout,
/// so CI can keep it between runs.
pub fn default_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("ICOS_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("icos");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/icos")
}

pub fn validate_version(v: &str) -> Result<(), BuildError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c))
        && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(BuildError::BadVersion(v.to_string()))
    }
}

/// A fixed 16-byte value derived from the image identity (filesystem UUIDs, verity salt).
fn derive(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().into()
}

fn derive_uuid(parts: &[&str]) -> Uuid {
    let d = derive(parts);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// SHA-256 and length of a byte range of a file.
pub fn digest_range(path: &Path, start: u64, len: u64) -> Result<Digested, BuildError> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| BuildError::io("opening", path, e))?;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| BuildError::io("seeking", path, e))?;
    let mut r = f.take(len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r
            .read(&mut buf)
            .map_err(|e| BuildError::io("reading", path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok(Digested {
        size: n,
        sha256: Sha256Hex::from_bytes(h.finalize().into()),
    })
}

pub fn digest_file(path: &Path) -> Result<Digested, BuildError> {
    let len = std::fs::metadata(path)
        .map_err(|e| BuildError::io("reading size of", path, e))?
        .len();
    digest_range(path, 0, len)
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Removes a directory when dropped unless disarmed: failed builds leave nothing behind.
struct Cleanup(Option<PathBuf>);
impl Cleanup {
    fn disarm(&mut self) {
        self.0 = None;
    }
}
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

fn relative_to(path: &Path, base: &Path) -> String {
    let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    match abs.strip_prefix(&base) {
        Ok(r) => r.display().to_string(),
        Err(_) => abs.display().to_string(),
    }
}

struct SetupInput {
    name: &'static str,
    dir: PathBuf,
    manifest: BuildManifest,
    manifest_sha256: Sha256Hex,
}

fn load_setup_input(
    name: &'static str,
    dir: Option<&PathBuf>,
    kind: ImageKind,
) -> Result<SetupInput, BuildError> {
    let dir = dir.ok_or_else(|| {
        BuildError::Invalid(format!(
            "SetupOS needs --{name} <output folder of an icos build {name}>"
        ))
    })?;
    let mpath = dir.join("manifest.json");
    let manifest = BuildManifest::load(&mpath)?;
    if manifest.image != kind {
        return Err(BuildError::Manifest {
            path: mpath,
            message: format!(
                "is a {} build, --{name} needs a {kind} build",
                manifest.image
            ),
        });
    }
    let disk = dir.join("disk.img");
    let want = manifest
        .outputs
        .get("disk.img")
        .ok_or_else(|| BuildError::Manifest {
            path: mpath.clone(),
            message: "lists no disk.img".into(),
        })?;
    let size = std::fs::metadata(&disk)
        .map_err(|e| BuildError::io("reading", &disk, e))?
        .len();
    if size != want.size {
        return Err(BuildError::Manifest {
            path: mpath,
            message: format!("disk.img is {size} bytes, the manifest says {}", want.size),
        });
    }
    let manifest_sha256 = digest_file(&dir.join("manifest.json"))?.sha256;
    Ok(SetupInput {
        name,
        dir: dir.clone(),
        manifest,
        manifest_sha256,
    })
}

/// Build an image. See the crate documentation for the steps.
pub fn build(req: &BuildRequest) -> Result<BuildManifest, BuildError> {
    pipeline::run(req)
}

/// SetupOS data: an erofs holding each input's disk image (zstd) and manifest, plus
/// SHA256SUMS over them; and the payload descriptor for the SetupOS root (each image's chunk
/// map and partitions), which is what the installer trusts.
fn build_setup_payload(
    inputs: &[SetupInput],
    released: &str,
    work: &Path,
    progress: &Progress,
) -> Result<(PathBuf, image_stream::SetupPayload), BuildError> {
    let stage = work.join("setup-data");
    std::fs::create_dir_all(&stage).map_err(|e| BuildError::io("creating", &stage, e))?;
    let mut sums = String::new();
    let mut images = BTreeMap::new();
    for i in inputs {
        progress.detail(&format!(
            "compressing and mapping the {} {} disk image",
            i.name, i.manifest.version
        ));
        let file = format!("{}.img.zst", i.name);
        let img = stage.join(&file);
        let disk = i.dir.join("disk.img");
        let mut cmd = host_tools::tools::ZSTD.command()?;
        cmd.arg("-q")
            .arg("-3")
            .arg("-T2")
            .arg("-f")
            .arg(&disk)
            .arg("-o")
            .arg(&img);
        host_tools::run(&mut cmd, &format!("compress the {} disk image", i.name))?;
        let map = image_stream::ChunkMap::of_file(&disk)
            .map_err(|e| BuildError::io("mapping", &disk, e))?;
        let partitions = i
            .manifest
            .layout
            .partitions
            .iter()
            .map(|p| (p.spec.label.clone(), (p.start, p.size())))
            .collect();
        images.insert(
            i.name,
            image_stream::PayloadImage {
                version: i.manifest.version.clone(),
                file,
                map,
                partitions,
            },
        );
        let m = stage.join(format!("{}-manifest.json", i.name));
        std::fs::copy(i.dir.join("manifest.json"), &m)
            .map_err(|e| BuildError::io("copying", &m, e))?;
        for f in [&img, &m] {
            let d = digest_file(f)?;
            sums.push_str(&format!(
                "{}  {}\n",
                d.sha256,
                f.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
    }
    std::fs::write(stage.join("SHA256SUMS"), sums)
        .map_err(|e| BuildError::io("writing", &stage, e))?;
    let out = work.join("setup-data.erofs");
    let mut cmd = host_tools::tools::MKFS_EROFS.command()?;
    cmd.arg("-T0")
        .arg(format!("-U{}", derive_uuid(&["icos-setup-data"])))
        .arg("--all-root")
        .arg("--quiet")
        .arg(&out)
        .arg(&stage);
    host_tools::run(&mut cmd, "build the SetupOS data filesystem")?;
    let mut take = |name: &str| {
        images
            .remove(name)
            .ok_or_else(|| BuildError::Invalid(format!("SetupOS needs a {name} input")))
    };
    let payload = image_stream::SetupPayload {
        released: released.to_string(),
        hostos: take("hostos")?,
        guestos: take("guestos")?,
    };
    Ok((out, payload))
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let days = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        / 86_400) as i64;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A release date must be a date.
fn validate_released(d: &str) -> Result<(), BuildError> {
    let ok = d.len() == 10
        && d.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
        && (1..=12).contains(&d[5..7].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&d[8..10].parse::<u32>().unwrap_or(0));
    if ok {
        Ok(())
    } else {
        Err(BuildError::Invalid(format!(
            "release date `{d}` is not a date like 2026-11-30"
        )))
    }
}

/// One part that came out differently in a rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub part: String,
    pub expected: String,
    pub actual: String,
}

/// Result of a rebuild-and-compare.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub image: ImageKind,
    pub version: String,
    pub compared: Vec<String>,
    pub differences: Vec<Difference>,
}

impl VerifyReport {
    pub fn identical(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Rebuild the image a manifest describes and compare every part.
///
/// `recipes` is the recipes root (`images/`); the recipe must be unchanged since the build
/// (its content hash is compared first). SetupOS inputs are looked up at the recorded paths.
pub fn verify_build(
    manifest_path: &Path,
    recipes: &Path,
    cache: &Path,
) -> Result<VerifyReport, BuildError> {
    let original = BuildManifest::load(manifest_path)?;
    let recipe_dir = recipes.join(&original.recipe.name);
    let recipe = Recipe::load(&recipe_dir)?;
    let now = recipe.content_hash()?;
    if now != original.recipe.content_hash {
        return Err(BuildError::Manifest {
            path: manifest_path.to_path_buf(),
            message: format!(
                "recipe {} changed since this build (content hash {} now, {} then): check out the sources it was built from",
                recipe_dir.display(),
                &now[..12],
                &original.recipe.content_hash[..12]
            ),
        });
    }
    let out_dir = manifest_path
        .canonicalize()
        .map_err(|e| BuildError::io("resolving", manifest_path, e))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let parent = out_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let input = |name: &str| -> Option<PathBuf> {
        original.inputs.get(name).map(|i| {
            let p = PathBuf::from(&i.path);
            if p.is_absolute() {
                p
            } else {
                parent.join(p)
            }
        })
    };
    for (name, i) in &original.inputs {
        let p = input(name).expect("listed");
        let sha = digest_file(&p.join("manifest.json"))?.sha256;
        if sha != i.manifest_sha256 {
            return Err(BuildError::Manifest {
                path: manifest_path.to_path_buf(),
                message: format!(
                    "input {name} at {} is not the one this build used",
                    p.display()
                ),
            });
        }
    }
    let scratch = parent.join(format!(".verify-{}-{}", original.image, std::process::id()));
    let _cleanup = Cleanup(Some(scratch.clone()));
    std::fs::create_dir_all(&scratch).map_err(|e| BuildError::io("creating", &scratch, e))?;
    // Keep the same output folder name so relative input paths come out the same.
    let out = scratch.join(out_dir.file_name().unwrap_or_default());
    let req = BuildRequest {
        recipe_dir,
        version: original.version.clone(),
        out: out.clone(),
        cache: cache.to_path_buf(),
        size_overrides: original.size_overrides.clone(),
        hostos: input("hostos"),
        guestos: input("guestos"),
        source: default_source_dir(),
        released: original.released.clone(),
    };
    let rebuilt = build(&req)?;
    Ok(compare(&original, &rebuilt))
}

/// Compare two manifests part by part, most specific parts first.
pub fn compare(a: &BuildManifest, b: &BuildManifest) -> VerifyReport {
    let mut differences = Vec::new();
    let mut compared = Vec::new();
    compared.push("packages".to_string());
    let pa: BTreeMap<&str, &str> = a
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    let pb: BTreeMap<&str, &str> = b
        .packages
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    for (name, va) in &pa {
        match pb.get(name) {
            Some(vb) if vb == va => {}
            Some(vb) => differences.push(Difference {
                part: format!("package {name}"),
                expected: va.to_string(),
                actual: vb.to_string(),
            }),
            None => differences.push(Difference {
                part: format!("package {name}"),
                expected: va.to_string(),
                actual: "absent".into(),
            }),
        }
    }
    for (name, vb) in &pb {
        if !pa.contains_key(name) {
            differences.push(Difference {
                part: format!("package {name}"),
                expected: "absent".into(),
                actual: vb.to_string(),
            });
        }
    }
    let describe = |part: &str| match part {
        "vmlinuz" => "kernel (vmlinuz)".to_string(),
        "initrd.img" => "initramfs (initrd.img)".to_string(),
        "root.img" => "root filesystem with verity tree (root.img)".to_string(),
        "esp" => "EFI system partition".to_string(),
        "config" => "config partition".to_string(),
        "data" => "SetupOS data partition".to_string(),
        "icos" => "node binary (/usr/bin/icos)".to_string(),
        other => other.to_string(),
    };
    if a.verity.root_hash != b.verity.root_hash {
        differences.push(Difference {
            part: "verity root hash".into(),
            expected: a.verity.root_hash.to_string(),
            actual: b.verity.root_hash.to_string(),
        });
    }
    compared.push("verity root hash".into());
    for (section_a, section_b) in [(&a.parts, &b.parts), (&a.outputs, &b.outputs)] {
        for (name, da) in section_a {
            compared.push(describe(name));
            match section_b.get(name) {
                Some(db) if db == da => {}
                Some(db) => differences.push(Difference {
                    part: describe(name),
                    expected: da.sha256.to_string(),
                    actual: db.sha256.to_string(),
                }),
                None => differences.push(Difference {
                    part: describe(name),
                    expected: da.sha256.to_string(),
                    actual: "missing".into(),
                }),
            }
        }
    }
    VerifyReport {
        image: a.image,
        version: a.version.clone(),
        compared,
        differences,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        for ok in ["1.0.0", "1.1.0-rc1", "2024.10.1+dev"] {
            validate_version(ok).unwrap();
        }
        for bad in ["", "-1", "1.0 0", "../x", &"9".repeat(65)] {
            assert!(validate_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derive_uuid(&["a", "1"]), derive_uuid(&["a", "1"]));
        assert_ne!(derive_uuid(&["a", "1"]), derive_uuid(&["a", "2"]));
        assert_ne!(derive(&["ab", "c"]), derive(&["a", "bc"]));
    }

    #[test]
    fn release_dates() {
        let t = today();
        validate_released(&t).unwrap();
        assert!(t.starts_with("20"), "{t}");
        for bad in ["2026-13-01", "26-11-30", "2026/11/30", "tomorrow"] {
            assert!(validate_released(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_range_hashes_the_range() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        let r = digest_range(&p, 2, 3).unwrap();
        assert_eq!(r.size, 3);
        assert_eq!(r.sha256, Sha256Hex::of(b"234"));
    }
}
