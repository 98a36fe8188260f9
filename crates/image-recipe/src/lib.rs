//! Image recipes: what goes into an image, as data.
//!
//! Each image has a folder under `images/` with a `recipe.toml` (Debian base and package
//! list, overlay folders, units to enable and mask, paths to strip, required units for the
//! boot status line, kernel command line, initramfs modules, GPT layout) plus the overlay
//! files themselves. This crate parses and validates a recipe, resolving every path against
//! the recipe folder so a recipe that names a missing file fails before any work starts, and
//! hashes the recipe and its files so a build manifest can say exactly what it was built from.
//!
//! ```no_run
//! let recipe = image_recipe::Recipe::load(std::path::Path::new("images/guestos")).unwrap();
//! println!("{} has {} packages", recipe.name, recipe.base.packages.len());
//! ```

use disk_layout::{parse_size, PartType, PartitionSpec, Role, Slot};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use update_package::ImageKind;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("unknown image `{0}`: expected guestos, hostos or setupos")]
    UnknownImage(String),
    #[error("recipe {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recipe {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("recipe {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("recipe {path} names `{name}`, which does not exist at {missing}")]
    MissingFile {
        path: PathBuf,
        name: String,
        missing: PathBuf,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    pub suite: String,
    pub mirror: String,
    pub variant: String,
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    pub overlays: Vec<String>,
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub mask: Vec<String>,
    #[serde(default)]
    pub strip: Vec<String>,
    /// systemd's default target (e.g. multi-user.target).
    pub default_target: String,
    /// systemd generators masked in the image.
    #[serde(default)]
    pub mask_generators: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub required_units: Vec<String>,
}

/// The health gate for confirming a new version after its first boot (upgradable images).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// A shell command that must exit 0.
    pub command: Option<String>,
    /// A URL that must answer 2xx.
    pub url: Option<String>,
    /// How long a trial boot may take to become healthy before it is rolled back.
    pub deadline_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub cmdline: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    pub modules: Vec<String>,
}

/// Files written onto the image's FAT config partition (SetupOS: the operator's
/// `config.ini`; HostOS: the default `hostos.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPartition {
    pub files: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPartition {
    label: String,
    #[serde(rename = "type")]
    part_type: PartType,
    size: String,
    guid: Uuid,
    role: String,
    slot: Option<Slot>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisk {
    guid: Uuid,
    partitions: Vec<RawPartition>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipe {
    name: String,
    kind: ImageKind,
    description: String,
    base: Base,
    rootfs: Rootfs,
    boot: Boot,
    kernel: Kernel,
    initramfs: Initramfs,
    config_partition: Option<ConfigPartition>,
    health: Option<Health>,
    disk: RawDisk,
}

/// Partition size in a recipe: fixed, or sized to its content at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartSize {
    Fixed(u64),
    Auto,
}

/// A partition as the recipe describes it (size may still be `Auto`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipePartition {
    pub label: String,
    pub part_type: PartType,
    pub size: PartSize,
    pub guid: Uuid,
    pub role: Role,
}

impl RecipePartition {
    /// The placed-partition spec once the size is known.
    pub fn spec(&self, size: u64) -> PartitionSpec {
        PartitionSpec {
            label: self.label.clone(),
            part_type: self.part_type,
            size,
            guid: self.guid,
            role: self.role,
        }
    }
}

/// A validated recipe with absolute paths.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub dir: PathBuf,
    pub name: String,
    pub kind: ImageKind,
    pub description: String,
    pub base: Base,
    pub rootfs: Rootfs,
    /// Overlay folders, absolute, in application order.
    pub overlay_dirs: Vec<PathBuf>,
    pub boot: Boot,
    pub kernel: Kernel,
    pub initramfs: Initramfs,
    /// Upgradable images: how a new version proves it is healthy.
    pub health: Option<Health>,
    /// Folder whose files go onto the FAT config partition (required for SetupOS).
    pub config_dir: Option<PathBuf>,
    pub disk_guid: Uuid,
    pub partitions: Vec<RecipePartition>,
}

/// The images this project knows, and where their recipes live relative to the repo root.
pub fn recipe_dir(repo_root: &Path, image: &str) -> Result<PathBuf, RecipeError> {
    match ImageKind::parse(image) {
        Some(k) => Ok(repo_root.join("images").join(k.as_str())),
        None => Err(RecipeError::UnknownImage(image.to_string())),
    }
}

fn role_of(raw: &RawPartition) -> Option<Role> {
    Some(match (raw.role.as_str(), raw.slot) {
        ("esp", None) => Role::Esp,
        ("config", None) => Role::Config,
        ("data", None) => Role::Data,
        ("guest-disk", None) => Role::GuestDisk,
        ("setup-root", None) => Role::SetupRoot,
        ("setup-config", None) => Role::SetupConfig,
        ("setup-data", None) => Role::SetupData,
        ("root", Some(s)) => Role::Root(s),
        ("var", Some(s)) => Role::Var(s),
        _ => return None,
    })
}

/// The partition label the upgrade engine expects for a slot role.
pub fn slot_label(role: Role) -> Option<String> {
    match role {
        Role::Root(s) => Some(format!("{s}_root")),
        Role::Var(s) => Some(format!("{s}_var")),
        _ => None,
    }
}

impl Recipe {
    /// Load `dir/recipe.toml` and validate it against the files in `dir`.
    pub fn load(dir: &Path) -> Result<Recipe, RecipeError> {
        let dir = dir.canonicalize().map_err(|source| RecipeError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join("recipe.toml");
        let text = std::fs::read_to_string(&path).map_err(|source| RecipeError::Read {
            path: path.clone(),
            source,
        })?;
        let raw: RawRecipe = toml::from_str(&text).map_err(|e| RecipeError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Self::from_raw(dir, path, raw)
    }

    fn from_raw(dir: PathBuf, path: PathBuf, raw: RawRecipe) -> Result<Recipe, RecipeError> {
        let invalid = |message: String| RecipeError::Invalid {
            path: path.clone(),
            message,
        };
        if raw.name != raw.kind.as_str() {
            return Err(invalid(format!(
                "name `{}` does not match kind `{}`",
                raw.name, raw.kind
            )));
        }
        if raw.base.packages.is_empty() {
            return Err(invalid("base.packages is empty".into()));
        }
        for p in &raw.base.packages {
            let ok = !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
            if !ok {
                return Err(invalid(format!("`{p}` is not a Debian package name")));
            }
        }
        let mut overlay_dirs = Vec::new();
        for o in &raw.rootfs.overlays {
            let d = dir.join(o);
            if !d.is_dir() {
                return Err(RecipeError::MissingFile {
                    path: path.clone(),
                    name: o.clone(),
                    missing: d,
                });
            }
            overlay_dirs.push(d.canonicalize().map_err(|source| RecipeError::Read {
                path: d.clone(),
                source,
            })?);
        }
        // Every unit to enable must come from an overlay or be a well-known Debian unit.
        for unit in &raw.rootfs.enable {
            let in_overlay = overlay_dirs.iter().any(|d| {
                d.join("usr/lib/systemd/system").join(unit).is_file()
                    || d.join("etc/systemd/system").join(unit).is_file()
            });
            // systemd's own units, and instances of its getty templates.
            let systemd_unit = ["systemd-", "serial-getty@", "getty@"]
                .iter()
                .any(|p| unit.starts_with(p));
            if !in_overlay && !systemd_unit {
                return Err(invalid(format!(
                    "unit `{unit}` to enable is in no overlay (and is not a systemd unit)"
                )));
            }
        }
        for s in &raw.rootfs.strip {
            if s.starts_with('/') || s.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(invalid(format!(
                    "strip path `{s}` must be relative, without `..`"
                )));
            }
        }
        if raw.boot.required_units.is_empty() {
            return Err(invalid("boot.required_units is empty".into()));
        }
        if raw.kernel.cmdline.contains("icos.") || raw.kernel.cmdline.contains("root=") {
            return Err(invalid(
                "kernel.cmdline must not set root= or icos.* arguments: the builder adds them per slot".into(),
            ));
        }
        let config_dir = match &raw.config_partition {
            Some(c) => {
                let d = dir.join(&c.files);
                if !d.is_dir() {
                    return Err(RecipeError::MissingFile {
                        path: path.clone(),
                        name: c.files.clone(),
                        missing: d,
                    });
                }
                Some(d)
            }
            None if raw.kind == ImageKind::Setupos => {
                return Err(invalid(
                    "SetupOS needs a [config_partition] section (the operator's config.ini)".into(),
                ))
            }
            None => None,
        };

        match (&raw.health, raw.kind) {
            (None, ImageKind::Guestos | ImageKind::Hostos) => {
                return Err(invalid("upgradable images need a [health] section".into()))
            }
            (Some(_), ImageKind::Setupos) => {
                return Err(invalid("[health] is only for upgradable images".into()))
            }
            (Some(h), _) if h.deadline_secs == 0 => {
                return Err(invalid("health.deadline_secs must be above 0".into()))
            }
            _ => {}
        }

        let mut partitions = Vec::new();
        for p in &raw.disk.partitions {
            let role = role_of(p).ok_or_else(|| {
                invalid(format!(
                    "partition `{}`: role `{}`{} is not valid",
                    p.label,
                    p.role,
                    p.slot
                        .map(|s| format!(" with slot {s}"))
                        .unwrap_or_default()
                ))
            })?;
            if let Some(want) = slot_label(role) {
                if p.label != want {
                    return Err(invalid(format!(
                        "partition `{}` has role {:?} and must be labelled `{want}`",
                        p.label, role
                    )));
                }
            }
            let size = if p.size == "auto" {
                if role != Role::SetupData {
                    return Err(invalid(format!(
                        "partition `{}`: only the SetupOS data partition may be sized `auto`",
                        p.label
                    )));
                }
                PartSize::Auto
            } else {
                PartSize::Fixed(
                    parse_size(&p.size)
                        .map_err(|e| invalid(format!("partition `{}`: {e}", p.label)))?,
                )
            };
            if (role == Role::Esp) != (p.part_type == PartType::Esp) {
                return Err(invalid(format!(
                    "partition `{}`: the ESP role and the esp type go together",
                    p.label
                )));
            }
            partitions.push(RecipePartition {
                label: p.label.clone(),
                part_type: p.part_type,
                size,
                guid: p.guid,
                role,
            });
        }
        let has = |r: Role| partitions.iter().any(|p| p.role == r);
        let needed: Vec<Role> = match raw.kind {
            ImageKind::Guestos | ImageKind::Hostos => vec![
                Role::Esp,
                Role::Config,
                Role::Root(Slot::A),
                Role::Var(Slot::A),
                Role::Root(Slot::B),
                Role::Var(Slot::B),
            ],
            ImageKind::Setupos => vec![
                Role::Esp,
                Role::SetupRoot,
                Role::SetupConfig,
                Role::SetupData,
            ],
        };
        for r in needed {
            if !has(r) {
                return Err(invalid(format!(
                    "the disk layout lacks a partition with role {r:?}"
                )));
            }
        }
        if raw.kind == ImageKind::Guestos && !has(Role::Data) {
            return Err(invalid("GuestOS needs a data partition".into()));
        }
        if raw.kind == ImageKind::Hostos && !has(Role::GuestDisk) {
            return Err(invalid(
                "HostOS needs room for the GuestOS disk (role guest-disk)".into(),
            ));
        }

        Ok(Recipe {
            dir,
            name: raw.name,
            kind: raw.kind,
            description: raw.description,
            base: raw.base,
            rootfs: raw.rootfs,
            overlay_dirs,
            boot: raw.boot,
            kernel: raw.kernel,
            initramfs: raw.initramfs,
            health: raw.health,
            config_dir,
            disk_guid: raw.disk.guid,
            partitions,
        })
    }

    /// Apply `label=size` overrides (from the command line).
    pub fn override_sizes(&mut self, overrides: &BTreeMap<String, u64>) -> Result<(), RecipeError> {
        for (label, size) in overrides {
            let p = self
                .partitions
                .iter_mut()
                .find(|p| &p.label == label)
                .ok_or_else(|| RecipeError::Invalid {
                    path: self.dir.join("recipe.toml"),
                    message: format!("size override for unknown partition `{label}`"),
                })?;
            p.size = PartSize::Fixed(*size);
        }
        Ok(())
    }

    /// Key of the cached Debian base: everything debootstrap's result depends on.
    pub fn base_key(&self, debootstrap_version: &str) -> String {
        let mut pkgs = self.base.packages.clone();
        pkgs.sort();
        let mut h = Sha256::new();
        for part in [
            "icos-base-v1",
            &self.base.suite,
            &self.base.mirror,
            &self.base.variant,
            &pkgs.join(","),
            debootstrap_version,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..16])
    }

    /// SHA-256 over recipe.toml and every file of the overlays and config folder (path,
    /// mode, content), in sorted order: what `verify-build` checks before rebuilding.
    pub fn content_hash(&self) -> Result<String, RecipeError> {
        let mut h = Sha256::new();
        let add_file = |h: &mut Sha256, rel: &str, p: &Path| -> Result<(), RecipeError> {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::symlink_metadata(p).map_err(|source| RecipeError::Read {
                path: p.to_path_buf(),
                source,
            })?;
            h.update(rel.as_bytes());
            h.update([0]);
            h.update(meta.permissions().mode().to_le_bytes());
            if meta.file_type().is_symlink() {
                let t = std::fs::read_link(p).map_err(|source| RecipeError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                h.update(t.as_os_str().as_encoded_bytes());
            } else if meta.is_file() {
                let data = std::fs::read(p).map_err(|source| RecipeError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                h.update((data.len() as u64).to_le_bytes());
                h.update(&data);
            }
            Ok(())
        };
        add_file(&mut h, "recipe.toml", &self.dir.join("recipe.toml"))?;
        let mut roots: Vec<&PathBuf> = self.overlay_dirs.iter().collect();
        if let Some(c) = &self.config_dir {
            roots.push(c);
        }
        for (i, root) in roots.iter().enumerate() {
            for f in walk(root)? {
                let rel = f
                    .strip_prefix(root)
                    .unwrap_or(&f)
                    .to_string_lossy()
                    .into_owned();
                add_file(&mut h, &format!("{i}/{rel}"), &f)?;
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// All entries under `root` (files, symlinks and directories), sorted, without `root` itself.
pub fn walk(root: &Path) -> Result<Vec<PathBuf>, RecipeError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| RecipeError::Read {
            path: d.clone(),
            source,
        })?;
        for e in rd {
            let e = e.map_err(|source| RecipeError::Read {
                path: d.clone(),
                source,
            })?;
            let p = e.path();
            let ft = e.file_type().map_err(|source| RecipeError::Read {
                path: p.clone(),
                source,
            })?;
            if ft.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_images() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images")
    }

    #[test]
    fn shipped_recipes_are_valid() {
        for name in ["guestos", "hostos", "setupos"] {
            let r = Recipe::load(&repo_images().join(name)).unwrap();
            assert_eq!(r.name, name);
            assert!(!r.content_hash().unwrap().is_empty());
        }
    }

    #[test]
    fn unknown_image_is_named() {
        let err = recipe_dir(Path::new("."), "windows")
            .unwrap_err()
            .to_string();
        assert!(err.contains("windows") && err.contains("guestos"), "{err}");
    }

    fn copy_recipe(name: &str) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let src = repo_images();
        for sub in [name, "common"] {
            let status = std::process::Command::new("cp")
                .arg("-a")
                .arg(src.join(sub))
                .arg(t.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        t
    }

    fn edit(dir: &Path, from: &str, to: &str) {
        let p = dir.join("recipe.toml");
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "fixture lacks {from}");
        std::fs::write(&p, s.replacen(from, to, 1)).unwrap();
    }

    #[test]
    fn recipe_naming_a_missing_overlay_is_refused() {
        let t = copy_recipe("guestos");
        let d = t.path().join("guestos");
        edit(&d, "\"files\"]", "\"no-such-dir\"]");
        let err = Recipe::load(&d).unwrap_err().to_string();
        assert!(err.contains("no-such-dir"), "{err}");
    }

    #[test]
    fn malformed_recipe_reports_the_file() {
        let t = copy_recipe("guestos");
        let d = t.path().join("guestos");
        edit(&d, "[kernel]", "[kernel\n");
        let err = Recipe::load(&d).unwrap_err().to_string();
        assert!(err.contains("recipe.toml"), "{err}");
    }

    #[test]
    fn layout_rules_are_enforced() {
        let t = copy_recipe("guestos");
        let d = t.path().join("guestos");
        edit(&d, "label = \"B_root\"", "label = \"B_rootfs\"");
        let err = Recipe::load(&d).unwrap_err().to_string();
        assert!(err.contains("B_root"), "{err}");

        let t = copy_recipe("guestos");
        let d = t.path().join("guestos");
        edit(&d, "size = \"1G\"", "size = \"auto\"");
        assert!(Recipe::load(&d).unwrap_err().to_string().contains("auto"));

        let t = copy_recipe("guestos");
        let d = t.path().join("guestos");
        edit(&d, "\"systemd-sysv\"", "\"Bad Package\"");
        assert!(Recipe::load(&d)
            .unwrap_err()
            .to_string()
            .contains("Bad Package"));

        let t = copy_recipe("guestos");
        let d = t.path().join("guestos");
        edit(&d, "panic=10", "panic=10 root=/dev/sda");
        assert!(Recipe::load(&d).unwrap_err().to_string().contains("root="));
    }

    #[test]
    fn content_hash_tracks_overlay_files() {
        let t = copy_recipe("guestos");
        let d = t.path().join("guestos");
        let r = Recipe::load(&d).unwrap();
        let before = r.content_hash().unwrap();
        std::fs::write(t.path().join("common/files/etc/hostname"), "changed\n").unwrap();
        assert_ne!(before, r.content_hash().unwrap());
    }

    #[test]
    fn base_key_ignores_package_order_but_not_content() {
        let mut r = Recipe::load(&repo_images().join("guestos")).unwrap();
        let k1 = r.base_key("1.0.128");
        r.base.packages.reverse();
        assert_eq!(k1, r.base_key("1.0.128"));
        r.base.packages.push("vim".into());
        assert_ne!(k1, r.base_key("1.0.128"));
        assert_ne!(
            k1,
            Recipe::load(&repo_images().join("guestos"))
                .unwrap()
                .base_key("1.0.129")
        );
    }
}
