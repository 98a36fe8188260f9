//! The GuestOS data partition: where the node's state lives across upgrades and rollbacks
//! (it belongs to no slot), encrypted with LUKS2.
//!
//! **The key.** 64 bytes from the kernel's random source, made on the first boot and kept as
//! `data.key` on the GuestOS config partition (FAT, never touched by upgrades), as IC-OS
//! keeps its store key when it runs without SEV. What that protects: the data partition
//! alone (a copied or discarded disk region, a backup of that partition, a disk returned
//! without its config partition) reads as noise. What it does not protect: whoever holds
//! the whole disk, or the HostOS (it can read the config partition): with SEV-SNP the key
//! would be sealed to the guest's measurement instead; that hardware is not here. The key
//! has full entropy, so the key derivation is PBKDF2 at its minimum: a slow KDF protects
//! guessable passphrases, and under emulation Argon2's default would cost seconds of every
//! first boot for nothing.
//!
//! **Never lose what is there.** Each boot, in order ([`open`]): read or make the key;
//! the partition is formatted only when it holds no signature at all; a LUKS2 volume the
//! key does not open is an error (never a reformat, which would destroy the state); the
//! volume is opened; ext4 is made inside only when the opened volume holds no signature;
//! it is mounted. Each stage checks what the previous left, so a power cut between any two
//! continues on the next boot. A partition holding something else is refused, named.
//!
//! Everything is done by Debian's tools (`cryptsetup`, `blkid`, `mke2fs`, `mount`); the
//! stages that need no device mapper are tested on plain files with the real tools.

use host_tools::{Tool, ToolError};
use std::path::{Path, PathBuf};
use std::process::Command;
use zeroize::Zeroizing;

/// The key's file on the config partition.
pub const KEY_FILE: &str = "data.key";
/// The key's length in bytes.
pub const KEY_LEN: usize = 64;

const CRYPTSETUP: Tool = Tool::new("cryptsetup", "cryptsetup-bin");
const BLKID: Tool = Tool::new("blkid", "util-linux");
const MOUNT: Tool = Tool::new("mount", "mount");

/// Where the volume is and where it goes.
#[derive(Debug, Clone)]
pub struct DataVolume {
    /// The config partition (FAT) that holds the key.
    pub config_store: PathBuf,
    /// The raw data partition.
    pub device: PathBuf,
    /// The device-mapper name of the opened volume (`/dev/mapper/<name>`).
    pub name: String,
    pub mount_point: PathBuf,
}

impl Default for DataVolume {
    /// The GuestOS's own partitions.
    fn default() -> Self {
        DataVolume {
            config_store: "/dev/disk/by-partlabel/config".into(),
            device: "/dev/disk/by-partlabel/data".into(),
            name: "icos-data".into(),
            mount_point: "/var/lib/icos/data".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("the data key {KEY_FILE} on {store}: {message}")]
    Key { store: PathBuf, message: String },
    #[error(
        "{device} holds a {found} signature, not LUKS2: refusing to format it, which would \
         destroy what it holds"
    )]
    Foreign { device: PathBuf, found: String },
    #[error(
        "the key {KEY_FILE} on {store} does not open the LUKS2 volume on {device}; it is not \
         formatted again (that would destroy the node's state): restore {KEY_FILE} from a \
         backup of the config partition"
    )]
    WrongKey { device: PathBuf, store: PathBuf },
    #[error(
        "the opened volume {mapper} holds a {found} filesystem, not ext4: refusing to format it"
    )]
    ForeignInside { mapper: PathBuf, found: String },
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a stage found its work done or did it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Existing,
    New,
}

impl Found {
    pub fn as_str(self) -> &'static str {
        match self {
            Found::Existing => "existing",
            Found::New => "new",
        }
    }
}

/// What [`open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub key: Found,
    pub volume: Found,
    pub filesystem: Found,
    pub mount_point: PathBuf,
}

impl std::fmt::Display for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "luks2={} filesystem={} key={} at {}",
            self.volume.as_str(),
            self.filesystem.as_str(),
            self.key.as_str(),
            self.mount_point.display()
        )
    }
}

/// Every stage, in order; see the crate doc.
pub fn open(v: &DataVolume) -> Result<Opened, DataError> {
    let (key, key_found) = load_or_create_key(&v.config_store)?;
    let volume = prepare_volume(&v.device, &v.config_store, &key)?;
    let mapper = open_volume(&v.device, &v.name, &key)?;
    let filesystem = prepare_filesystem(&mapper)?;
    mount(&mapper, &v.mount_point)?;
    Ok(Opened {
        key: key_found,
        volume,
        filesystem,
        mount_point: v.mount_point.clone(),
    })
}

/// The key from the config partition, or a new one written there first. A key file of the
/// wrong length is an error, never replaced: a replaced key loses the volume.
pub fn load_or_create_key(store: &Path) -> Result<(Zeroizing<Vec<u8>>, Found), DataError> {
    let err = |m: &dyn std::fmt::Display| DataError::Key {
        store: store.to_path_buf(),
        message: m.to_string(),
    };
    let mut fat = boot_slots::open_fat(store).map_err(|e| err(&e))?;
    if let Ok(bytes) = fat.read_file(KEY_FILE) {
        let key = Zeroizing::new(bytes);
        if key.len() != KEY_LEN {
            return Err(err(&format_args!(
                "{} bytes, a key is {KEY_LEN}; the file is damaged",
                key.len()
            )));
        }
        return Ok((key, Found::Existing));
    }
    let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
    getrandom::getrandom(&mut key).map_err(|e| err(&format_args!("no random bytes: {e}")))?;
    fat.write_file(KEY_FILE, &mut key.as_slice())
        .map_err(|e| err(&e))?;
    fat.close().map_err(|e| err(&e))?;
    tracing::info!("made the data partition's key on {}", store.display());
    Ok((key, Found::New))
}

/// The type of the first signature `blkid` finds on `device` (a filesystem, LUKS, a
/// partition table), or `None` for a blank device.
pub fn signature(device: &Path) -> Result<Option<String>, DataError> {
    let mut cmd = BLKID.command()?;
    cmd.args(["-p", "-o", "value", "-s", "TYPE"]).arg(device);
    match host_tools::run(&mut cmd, "read the signature of the data partition") {
        Ok(out) => Ok(Some(out.trim().to_string()).filter(|s| !s.is_empty())),
        // blkid's exit status 2: nothing found.
        Err(ToolError::Failed { status, .. }) if status.code() == Some(2) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A blank device is formatted as LUKS2; a LUKS2 one must open with `key`.
pub fn prepare_volume(device: &Path, store: &Path, key: &[u8]) -> Result<Found, DataError> {
    match signature(device)?.as_deref() {
        None => {
            let mut cmd = CRYPTSETUP.command()?;
            cmd.args(["luksFormat", "--batch-mode", "--type", "luks2"])
                .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
                .args(["--label", "icos-data", "--key-file", "-"])
                .arg(device);
            host_tools::run_with_input(&mut cmd, key, "format the data partition as LUKS2")?;
            Ok(Found::New)
        }
        Some("crypto_LUKS") => {
            let mut cmd = CRYPTSETUP.command()?;
            cmd.args([
                "open",
                "--test-passphrase",
                "--type",
                "luks2",
                "--key-file",
                "-",
            ])
            .arg(device);
            match host_tools::run_with_input(&mut cmd, key, "check the data key") {
                Ok(_) => Ok(Found::Existing),
                // cryptsetup's exit status 2: no key slot opens with this key.
                Err(ToolError::Failed { status, .. }) if status.code() == Some(2) => {
                    Err(DataError::WrongKey {
                        device: device.to_path_buf(),
                        store: store.to_path_buf(),
                    })
                }
                Err(e) => Err(e.into()),
            }
        }
        Some(other) => Err(DataError::Foreign {
            device: device.to_path_buf(),
            found: other.to_string(),
        }),
    }
}

/// Opens the volume as `/dev/mapper/<name>` unless it is open already.
fn open_volume(device: &Path, name: &str, key: &[u8]) -> Result<PathBuf, DataError> {
    let mapper = Path::new("/dev/mapper").join(name);
    if mapper.exists() {
        return Ok(mapper);
    }
    let mut cmd = CRYPTSETUP.command()?;
    cmd.args(["open", "--type", "luks2", "--key-file", "-"])
        .arg(device)
        .arg(name);
    host_tools::run_with_input(&mut cmd, key, "open the data partition")?;
    Ok(mapper)
}

/// ext4 inside the volume, made only when the volume holds nothing yet.
pub fn prepare_filesystem(mapper: &Path) -> Result<Found, DataError> {
    match signature(mapper)?.as_deref() {
        None => {
            let mut cmd = host_tools::tools::MKE2FS.command()?;
            cmd.args(["-q", "-F", "-t", "ext4", "-L", "icos-data"])
                .arg(mapper);
            host_tools::run(&mut cmd, "make the data filesystem")?;
            Ok(Found::New)
        }
        Some("ext4") => Ok(Found::Existing),
        Some(other) => Err(DataError::ForeignInside {
            mapper: mapper.to_path_buf(),
            found: other.to_string(),
        }),
    }
}

fn mount(mapper: &Path, at: &Path) -> Result<(), DataError> {
    if is_mount_point(at)? {
        return Ok(());
    }
    std::fs::create_dir_all(at).map_err(|source| DataError::Io {
        what: "creating the mount point",
        path: at.to_path_buf(),
        source,
    })?;
    let mut cmd: Command = MOUNT.command()?;
    cmd.args(["-t", "ext4", "-o", "nodev,nosuid,noexec"])
        .arg(mapper)
        .arg(at);
    host_tools::run(&mut cmd, "mount the data filesystem")?;
    Ok(())
}

fn is_mount_point(at: &Path) -> Result<bool, DataError> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| DataError::Io {
        what: "reading",
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    let at = at.to_string_lossy();
    // Field 5 of each line is the mount point (spaces escaped as \040; ours has none).
    Ok(info
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(at.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_store(dir: &Path) -> PathBuf {
        let p = dir.join("config.img");
        boot_slots::create_fat(&p, 16 << 20, 1, "CONFIG")
            .unwrap()
            .close()
            .unwrap();
        p
    }

    fn blank(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::File::create(&p)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        p
    }

    fn digest(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    #[test]
    fn a_blank_partition_is_formatted_once_and_then_opened_with_the_kept_key() {
        let d = tempfile::tempdir().unwrap();
        let store = config_store(d.path());
        let dev = blank(d.path(), "data.img");
        let (key, found) = load_or_create_key(&store).unwrap();
        assert_eq!((key.len(), found), (KEY_LEN, Found::New));
        assert_eq!(prepare_volume(&dev, &store, &key).unwrap(), Found::New);
        assert_eq!(signature(&dev).unwrap().as_deref(), Some("crypto_LUKS"));
        // The next boot: the same key, the volume kept.
        let (again, found) = load_or_create_key(&store).unwrap();
        assert_eq!((again.as_slice(), found), (key.as_slice(), Found::Existing));
        let before = digest(&dev);
        assert_eq!(
            prepare_volume(&dev, &store, &again).unwrap(),
            Found::Existing
        );
        assert_eq!(digest(&dev), before, "an existing volume was written to");
    }

    #[test]
    fn a_volume_the_key_does_not_open_is_never_formatted_again() {
        let d = tempfile::tempdir().unwrap();
        let store = config_store(d.path());
        let dev = blank(d.path(), "data.img");
        let (key, _) = load_or_create_key(&store).unwrap();
        prepare_volume(&dev, &store, &key).unwrap();
        let before = digest(&dev);
        // A config partition with another key (replaced, or a key file restored from the
        // wrong node): the volume stays as it is.
        let wrong = Zeroizing::new(vec![7u8; KEY_LEN]);
        let e = prepare_volume(&dev, &store, &wrong).unwrap_err();
        assert!(matches!(e, DataError::WrongKey { .. }), "{e}");
        assert!(e.to_string().contains("restore data.key"), "{e}");
        assert_eq!(
            digest(&dev),
            before,
            "a volume that did not open was written to"
        );
    }

    #[test]
    fn a_partition_holding_anything_else_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let store = config_store(d.path());
        let dev = blank(d.path(), "data.img");
        let mut cmd = host_tools::tools::MKE2FS.command().unwrap();
        cmd.args(["-q", "-F", "-t", "ext4"]).arg(&dev);
        host_tools::run(&mut cmd, "make a plain filesystem").unwrap();
        let before = digest(&dev);
        let (key, _) = load_or_create_key(&store).unwrap();
        let e = prepare_volume(&dev, &store, &key).unwrap_err();
        assert!(
            matches!(&e, DataError::Foreign { found, .. } if found == "ext4"),
            "{e}"
        );
        assert!(e.to_string().contains("refusing to format it"), "{e}");
        assert_eq!(digest(&dev), before);
        // The same rule inside an opened volume: only a blank one gets a filesystem.
        let inside = prepare_filesystem(&dev).unwrap();
        assert_eq!(inside, Found::Existing, "ext4 inside is taken as it is");
        let swap = blank(d.path(), "swap.img");
        let mut cmd = std::process::Command::new("mkswap");
        cmd.arg(&swap);
        host_tools::run(&mut cmd, "make swap space").unwrap();
        let e = prepare_filesystem(&swap).unwrap_err();
        assert!(matches!(e, DataError::ForeignInside { .. }), "{e}");
    }

    #[test]
    fn a_damaged_key_file_is_named_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let store = config_store(d.path());
        let mut fat = boot_slots::open_fat(&store).unwrap();
        fat.write_file(KEY_FILE, &mut &b"short"[..]).unwrap();
        fat.close().unwrap();
        let e = load_or_create_key(&store).unwrap_err();
        assert!(
            e.to_string().contains("5 bytes, a key is 64") && e.to_string().contains("config.img"),
            "{e}"
        );
        let fat = boot_slots::open_fat(&store).unwrap();
        assert_eq!(
            fat.read_file(KEY_FILE).unwrap(),
            b"short",
            "the damaged key was replaced"
        );
        std::fs::write(&store, b"no filesystem").unwrap();
        let e = load_or_create_key(&store).unwrap_err();
        assert!(e.to_string().contains("config.img"), "{e}");
    }
}
