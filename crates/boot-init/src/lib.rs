//! The icos initramfs.
//!
//! Every icos image boots the same way: the kernel runs `/init` from the initramfs, which is
//! the `icos-init` binary of this crate (static, no shell, no udev). It
//!
//! 1. mounts /proc, /sys and devtmpfs;
//! 2. checks the `icos.*` kernel arguments ([`args::BootArgs`]) written by the boot entry;
//! 3. loads the kernel modules listed at build time, in dependency order ([`modules`]);
//! 4. finds the slot's root partition by PARTUUID by reading GPTs ([`disks`]), opens it as
//!    the read-only dm-verity device `/dev/mapper/root` ([`dm`]) and mounts its erofs;
//! 5. mounts the slot's /var, creating its ext4 on the slot's first boot ([`var`]), or a
//!    tmpfs when the image has none (SetupOS);
//! 6. makes the new root `/` and executes systemd.
//!
//! Any failure prints `<BANNER> BOOT FAILURE initramfs: <what and where>` on the console
//! and reboots after `panic=` seconds, so the boot loader's tries move the node to its
//! other slot. It replaced initramfs-tools' shell scripts, which cost about a second of
//! every boot under emulation (a shell, `blkid` polling, `dmsetup`).
//!
//! The builder side is [`pack::Initramfs`]: it resolves the modules against the image's
//! kernel and writes a reproducible newc archive.
//!
//! ```no_run
//! let modules = std::path::Path::new("rootfs/usr/lib/modules/6.1.0-50-cloud-amd64");
//! let wanted = vec!["virtio_blk".to_string(), "dm_verity".to_string(), "erofs".to_string()];
//! let initramfs = boot_init::pack::Initramfs::new("target/icos-init".into(), modules, &wanted).unwrap();
//! initramfs.write(std::path::Path::new("initrd.img")).unwrap();
//! ```

pub mod args;
pub mod disks;
pub mod dm;
pub mod init;
pub mod modules;
pub mod pack;
pub mod var;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Args(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel modules: {0}")]
    Modules(String),
    #[error("{0}")]
    Disk(String),
    #[error("device-mapper: {0}")]
    Dm(String),
    #[error("{0}")]
    Mount(String),
    #[error("/var: {0}")]
    Var(String),
}

impl InitError {
    pub(crate) fn io(what: &'static str, path: &Path, source: std::io::Error) -> InitError {
        InitError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}
