//! Assemble the image's root tree from the cached base and the recipe, and pack its
//! initramfs (the `icos-init` binary and the kernel modules the recipe names).

use crate::{BuildError, Package};
use host_tools::tools;
use image_recipe::Recipe;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel, initramfs and facts taken from the assembled tree.
pub struct Tree {
    pub kernel_version: String,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub bootloader: PathBuf,
}

/// Copy the base into `work/rootfs` (reflinks where the filesystem can).
pub fn copy_base(base: &Path, work: &Path) -> Result<PathBuf, BuildError> {
    let root = work.join("rootfs");
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg("--reflink=auto").arg(base).arg(&root);
    host_tools::run(&mut cmd, "copy the Debian base")?;
    Ok(root)
}

/// Copy one overlay folder onto the tree: files keep their mode, everything is root-owned.
pub fn apply_overlay(overlay: &Path, root: &Path) -> Result<usize, BuildError> {
    let mut n = 0;
    for src in image_recipe::walk(overlay).map_err(BuildError::Recipe)? {
        let rel = src.strip_prefix(overlay).expect("walk stays inside");
        if rel.file_name().is_some_and(|f| f == ".keep") {
            continue;
        }
        let dst = root.join(rel);
        let meta = std::fs::symlink_metadata(&src)
            .map_err(|e| BuildError::io("reading overlay file", &src, e))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&dst).map_err(|e| BuildError::io("creating", &dst, e))?;
            continue;
        }
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BuildError::io("creating", parent, e))?;
        }
        // Replace whatever is there (Debian's /etc/os-release is a symlink, for instance).
        if std::fs::symlink_metadata(&dst).is_ok() {
            std::fs::remove_file(&dst).map_err(|e| BuildError::io("replacing", &dst, e))?;
        }
        if meta.file_type().is_symlink() {
            let target =
                std::fs::read_link(&src).map_err(|e| BuildError::io("reading link", &src, e))?;
            symlink(&target, &dst).map_err(|e| BuildError::io("creating link", &dst, e))?;
        } else {
            std::fs::copy(&src, &dst)
                .map_err(|e| BuildError::io("copying overlay file to", &dst, e))?;
            let mode = meta.permissions().mode() & 0o7777;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))
                .map_err(|e| BuildError::io("setting mode of", &dst, e))?;
        }
        std::os::unix::fs::lchown(&dst, Some(0), Some(0))
            .map_err(|e| BuildError::io("chown", &dst, e))?;
        n += 1;
    }
    Ok(n)
}

fn write(path: &Path, text: &str) -> Result<(), BuildError> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| BuildError::io("creating", p, e))?;
    }
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        std::fs::remove_file(path).map_err(|e| BuildError::io("replacing", path, e))?;
    }
    std::fs::write(path, text).map_err(|e| BuildError::io("writing", path, e))
}

fn chroot(root: &Path, args: &[&str], purpose: &str) -> Result<String, BuildError> {
    let mut cmd = tools::CHROOT.command()?;
    cmd.arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("SOURCE_DATE_EPOCH", "0")
        .env("LC_ALL", "C");
    Ok(host_tools::run(&mut cmd, purpose)?)
}

/// Everything the recipe says about the tree, except stripping (done after the initramfs).
pub fn customize(
    recipe: &Recipe,
    root: &Path,
    version: &str,
    packages: &[Package],
    icos_bin: &Path,
) -> Result<(), BuildError> {
    for overlay in &recipe.overlay_dirs {
        apply_overlay(overlay, root)?;
    }
    let dest = root.join("usr/bin/icos");
    std::fs::copy(icos_bin, &dest)
        .map_err(|e| BuildError::io("copying the icos binary to", &dest, e))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| BuildError::io("chmod", &dest, e))?;
    if let Some(h) = &recipe.health {
        // The engine's own type, so the file is what `icos upgrade confirm` reads.
        let check = upgrade_engine::health::HealthCheck {
            required_units: recipe.boot.required_units.clone(),
            command: h.command.clone(),
            url: h.url.clone(),
            deadline_secs: h.deadline_secs,
            ..Default::default()
        };
        write(
            &root.join("usr/lib/icos/health.json"),
            &(serde_json::to_string_pretty(&check).expect("json") + "\n"),
        )?;
    }
    let release = daemon_support::release::Release {
        image: recipe.kind.to_string(),
        banner: recipe.kind.banner().to_string(),
        version: version.to_string(),
    };
    write(&root.join("usr/lib/icos/release"), &release.render())?;
    // The SBOM, inside the image too, so a node can say what it runs.
    let sbom: String = packages
        .iter()
        .map(|p| format!("{}\t{}\t{}\n", p.name, p.version, p.arch))
        .collect();
    write(&root.join("usr/lib/icos/packages.tsv"), &sbom)?;
    // os-release: standard IMAGE_ID / IMAGE_VERSION fields.
    let os_release = root.join("usr/lib/os-release");
    let mut osr = std::fs::read_to_string(&os_release)
        .map_err(|e| BuildError::io("reading", &os_release, e))?;
    osr.push_str(&format!(
        "IMAGE_ID=icos-{}\nIMAGE_VERSION={version}\n",
        recipe.kind
    ));
    write(&os_release, &osr)?;

    // The boot status line waits for the required units; a failure of any of them reports it.
    let req = recipe.boot.required_units.join(" ");
    write(
        &root.join("etc/systemd/system/icos-boot-status.service.d/10-required.conf"),
        &format!("[Unit]\nRequires={req}\nAfter={req}\n"),
    )?;
    for unit in &recipe.boot.required_units {
        write(
            &root.join(format!("etc/systemd/system/{unit}.d/10-icos-failure.conf")),
            "[Unit]\nOnFailure=icos-boot-failure@%n.service\n",
        )?;
    }
    for unit in &recipe.rootfs.enable {
        chroot(
            root,
            &["systemctl", "enable", unit],
            &format!("enable {unit}"),
        )?;
    }
    chroot(
        root,
        &["systemctl", "set-default", &recipe.rootfs.default_target],
        "set the default target",
    )?;
    for unit in &recipe.rootfs.mask {
        chroot(root, &["systemctl", "mask", unit], &format!("mask {unit}"))?;
    }
    let gens = root.join("etc/systemd/system-generators");
    for g in &recipe.rootfs.mask_generators {
        std::fs::create_dir_all(&gens).map_err(|e| BuildError::io("creating", &gens, e))?;
        let link = gens.join(g);
        let _ = std::fs::remove_file(&link);
        symlink("/dev/null", &link).map_err(|e| BuildError::io("masking generator", &link, e))?;
    }
    // A read-only root boots with an empty machine-id (systemd makes a transient one).
    write(&root.join("etc/machine-id"), "")?;
    let _ = std::fs::remove_file(root.join("var/lib/dbus/machine-id"));
    normalize_shadow(root)?;

    Ok(())
}

/// /etc/shadow records the day each password was last changed, i.e. the day debootstrap
/// ran. Clear that field (password aging off) so the tree does not depend on the date.
fn normalize_shadow(root: &Path) -> Result<(), BuildError> {
    let p = root.join("etc/shadow");
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(());
    };
    let out: String = text
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(':').collect();
            if f.len() > 2 {
                f[2] = "";
            }
            format!("{}\n", f.join(":"))
        })
        .collect();
    let mode = std::fs::metadata(&p)
        .map(|m| m.permissions().mode())
        .unwrap_or(0o640);
    std::fs::write(&p, out).map_err(|e| BuildError::io("writing", &p, e))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| BuildError::io("chmod", &p, e))
}

/// Pack the initramfs and take kernel and boot loader from the tree.
pub fn build_initramfs(
    recipe: &Recipe,
    root: &Path,
    init: &Path,
    work: &Path,
) -> Result<Tree, BuildError> {
    let modules = root.join("usr/lib/modules");
    let mut kvers: Vec<String> = std::fs::read_dir(&modules)
        .map_err(|e| BuildError::io("listing kernels in", &modules, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    kvers.sort();
    let kernel_version = match kvers.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(BuildError::Invalid(
                "the base has no kernel (add a linux-image package)".into(),
            ))
        }
        many => {
            return Err(BuildError::Invalid(format!(
                "the base has several kernels ({}); keep exactly one",
                many.join(", ")
            )))
        }
    };
    let vmlinuz_src = root.join(format!("boot/vmlinuz-{kernel_version}"));
    let vmlinuz = work.join("vmlinuz");
    std::fs::copy(&vmlinuz_src, &vmlinuz)
        .map_err(|e| BuildError::io("copying kernel", &vmlinuz_src, e))?;
    let initrd = work.join("initrd.img");
    boot_init::pack::Initramfs::new(
        init.to_path_buf(),
        &modules.join(&kernel_version),
        &recipe.initramfs.modules,
    )
    .and_then(|i| i.write(&initrd))
    .map_err(|e| BuildError::Invalid(format!("packing the initramfs: {e}")))?;
    let efi = root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if !efi.is_file() {
        return Err(BuildError::Invalid(
            "the base has no systemd-boot (add the systemd-boot-efi package)".into(),
        ));
    }
    let bootloader = work.join("systemd-bootx64.efi");
    std::fs::copy(&efi, &bootloader).map_err(|e| BuildError::io("copying boot loader", &efi, e))?;
    Ok(Tree {
        kernel_version,
        vmlinuz,
        initrd,
        bootloader,
    })
}

/// Empty the recipe's strip paths (the directories themselves stay).
pub fn strip(recipe: &Recipe, root: &Path) -> Result<(), BuildError> {
    for rel in &recipe.rootfs.strip {
        let p = root.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| BuildError::io("listing", &p, e))? {
                let e = e.map_err(|e| BuildError::io("listing", &p, e))?;
                let path = e.path();
                let r = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                r.map_err(|e| BuildError::io("stripping", &path, e))?;
            }
        } else {
            std::fs::remove_file(&p).map_err(|e| BuildError::io("stripping", &p, e))?;
        }
    }
    Ok(())
}
