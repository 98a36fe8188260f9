//! Kernel modules: which files the initramfs needs, in which order (decided at build time
//! from the kernel's `modules.dep`), and loading them at boot with `finit_module`.
//!
//! The order is fixed when the image is built, so the init does no dependency resolution and
//! runs no `modprobe`: it loads each listed file once, in order.

use crate::InitError;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Name of the list of module files (one per line, load order) inside the initramfs.
pub const ORDER_FILE: &str = "lib/modules/load-order";

/// A module's name as the kernel and modprobe compare them (`-` and `_` are the same).
fn canonical(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The modules to load for `wanted`, dependencies first, as paths relative to
/// `modules_dir` (`/usr/lib/modules/<version>` of the image's tree). Modules built into the
/// kernel are skipped; an unknown name is an error naming it.
pub fn load_order(modules_dir: &Path, wanted: &[String]) -> Result<Vec<PathBuf>, InitError> {
    let read = |f: &str| {
        let p = modules_dir.join(f);
        std::fs::read_to_string(&p).map_err(|e| InitError::io("reading", &p, e))
    };
    let dep_text = read("modules.dep")?;
    let builtin: BTreeSet<String> = read("modules.builtin")?.lines().map(canonical).collect();
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep_text.lines() {
        let Some((file, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(
            canonical(file),
            (
                file.to_string(),
                rest.split_whitespace().map(canonical).collect(),
            ),
        );
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        let c = canonical(name);
        if builtin.contains(&c) {
            continue;
        }
        if !deps.contains_key(&c) {
            return Err(InitError::Modules(format!(
                "module {name} is neither built into the kernel nor in {}",
                modules_dir.join("modules.dep").display()
            )));
        }
        visit(&c, &deps, &mut seen, &mut order);
    }
    Ok(order.into_iter().map(PathBuf::from).collect())
}

/// Depth-first, dependencies before the module (post-order).
fn visit(
    name: &str,
    deps: &BTreeMap<String, (String, Vec<String>)>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(name.to_string()) {
        return;
    }
    if let Some((file, needs)) = deps.get(name) {
        for d in needs {
            visit(d, deps, seen, order);
        }
        order.push(file.clone());
    }
}

/// Load every module named in the order file under `root`; a module the kernel already has
/// is fine.
pub fn load_all(root: &Path) -> Result<usize, InitError> {
    let list = root.join(ORDER_FILE);
    let text = std::fs::read_to_string(&list).map_err(|e| InitError::io("reading", &list, e))?;
    let mut n = 0;
    for name in text.lines().filter(|l| !l.trim().is_empty()) {
        let path = root.join("lib/modules").join(name);
        let f =
            std::fs::File::open(&path).map_err(|e| InitError::io("opening module", &path, e))?;
        use std::os::fd::AsRawFd;
        // SAFETY: a valid fd and a NUL-terminated empty parameter string.
        let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(InitError::Modules(format!("loading {name}: {e}")));
            }
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("modules.dep"),
            "kernel/drivers/md/dm-mod.ko:\n\
             kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko\n\
             kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/reed_solomon/reed_solomon.ko\n\
             kernel/lib/reed_solomon/reed_solomon.ko:\n\
             kernel/drivers/virtio/virtio.ko:\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n",
        )
        .unwrap();
        std::fs::write(d.path().join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        d
    }

    #[test]
    fn dependencies_come_first_once_and_builtins_are_skipped() {
        let d = tree();
        let wanted: Vec<String> = ["virtio_blk", "dm_verity", "dm_mod", "ext4"]
            .map(String::from)
            .into();
        let order: Vec<String> = load_order(d.path(), &wanted)
            .unwrap()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let pos = |m: &str| order.iter().position(|p| p.ends_with(m)).unwrap();
        assert_eq!(order.len(), 7, "{order:?}");
        assert!(pos("virtio_ring.ko") < pos("virtio_blk.ko"));
        assert!(pos("virtio.ko") < pos("virtio_blk.ko"));
        assert!(pos("dm-mod.ko") < pos("dm-bufio.ko"));
        assert!(pos("dm-bufio.ko") < pos("dm-verity.ko"));
        assert!(pos("reed_solomon.ko") < pos("dm-verity.ko"));
    }

    #[test]
    fn an_unknown_module_is_named() {
        let d = tree();
        let e = load_order(d.path(), &["nvme".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("module nvme is neither built into the kernel"),
            "{e}"
        );
    }
}
