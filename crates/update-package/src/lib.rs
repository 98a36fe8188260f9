//! The icos update package.
//!
//! A package is an uncompressed POSIX tar with exactly these members, in this order:
//!
//! | member        | what                                                          |
//! |---------------|---------------------------------------------------------------|
//! | `manifest.json` | [`UpdateManifest`]: image kind, version, each part's size and SHA-256, verity parameters, kernel command line |
//! | `vmlinuz`     | the slot's kernel                                               |
//! | `initrd.img`  | the slot's initramfs                                            |
//! | `root.img`    | erofs root filesystem, then its dm-verity hash tree at `verity.hash_offset` |
//!
//! Plain tar (not compressed) because every big part is already compressed (erofs lz4hc,
//! zstd initramfs, compressed kernel): an installer can stream each member straight onto its
//! partition while hashing it, and the bytes it writes are the bytes it hashed. The manifest
//! comes first so the installer knows sizes and hashes before any data arrives. The package's
//! own SHA-256 is what governance elects; the manifest inside is authenticated by it.
//!
//! Members are written with mtime 0, uid/gid 0 and mode 0644, so the same parts always give
//! the same package bytes.
//!
//! ```no_run
//! use update_package::{write_package, read_manifest};
//! # let manifest: update_package::UpdateManifest = todo!();
//! let parts = update_package::PartFiles {
//!     vmlinuz: "vmlinuz".into(), initrd: "initrd.img".into(), root: "root.img".into(),
//! };
//! write_package(std::path::Path::new("update.tar"), &manifest, &parts).unwrap();
//! let m = read_manifest(std::path::Path::new("update.tar")).unwrap();
//! assert_eq!(m.version, manifest.version);
//! ```

pub mod reader;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use sha256_hex::Sha256Hex;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Version of the package layout; readers refuse packages of a format they do not know.
pub const FORMAT: u32 = 1;
/// Upper bound for the manifest member: a manifest is a few hundred bytes; anything large is
/// hostile or broken and must not be buffered.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
pub const MEMBER_ORDER: [&str; 4] = ["manifest.json", "vmlinuz", "initrd.img", "root.img"];

/// Which operating system an image or package is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    Guestos,
    Hostos,
    Setupos,
}

impl ImageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageKind::Guestos => "guestos",
            ImageKind::Hostos => "hostos",
            ImageKind::Setupos => "setupos",
        }
    }
    /// The prefix of the console status line, e.g. `GUESTOS BOOT SUCCESS`.
    pub fn banner(self) -> &'static str {
        match self {
            ImageKind::Guestos => "GUESTOS",
            ImageKind::Hostos => "HOSTOS",
            ImageKind::Setupos => "SETUPOS",
        }
    }
    pub fn parse(s: &str) -> Option<ImageKind> {
        match s {
            "guestos" => Some(ImageKind::Guestos),
            "hostos" => Some(ImageKind::Hostos),
            "setupos" => Some(ImageKind::Setupos),
            _ => None,
        }
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// dm-verity parameters of `root.img` (no on-disk superblock: everything the kernel needs
/// is here and in the boot entry, so nothing unauthenticated on disk is trusted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    pub root_hash: Sha256Hex,
    pub salt: String,
    pub hash_algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    /// Byte offset of the hash tree inside `root.img` (= size of the filesystem data).
    pub hash_offset: u64,
}

/// One member of the package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Hex,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateManifest {
    pub format: u32,
    pub kind: ImageKind,
    pub version: String,
    /// Kernel command line shared by both slots; the slot-specific arguments (which
    /// partitions, verity hash) are added when the boot entry is written.
    pub cmdline: String,
    pub kernel_version: String,
    pub verity: Verity,
    /// In member order: vmlinuz, initrd.img, root.img.
    pub parts: Vec<Part>,
}

impl UpdateManifest {
    /// The kernel command line of a boot entry for this package installed in a slot:
    /// the image's own arguments plus which partitions to use and the verity parameters.
    /// `slot` and `var_partuuid` are `None` for SetupOS (no A/B, /var in memory).
    pub fn boot_options(
        &self,
        slot: Option<&str>,
        root_partuuid: &str,
        var_partuuid: Option<&str>,
    ) -> String {
        boot_options(
            &self.cmdline,
            self.kind,
            &self.verity,
            slot,
            root_partuuid,
            var_partuuid,
        )
    }

    pub fn part(&self, name: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// Structural checks a reader performs before trusting any field.
    pub fn validate(&self) -> Result<(), PackageError> {
        let bad = |why: String| Err(PackageError::BadManifest(why));
        if self.format != FORMAT {
            return bad(format!(
                "format {} is not the supported format {FORMAT}",
                self.format
            ));
        }
        let names: Vec<&str> = self.parts.iter().map(|p| p.name.as_str()).collect();
        if names != MEMBER_ORDER[1..] {
            return bad(format!(
                "parts are {names:?}, expected {:?}",
                &MEMBER_ORDER[1..]
            ));
        }
        // Digests were checked when the manifest was parsed (`Sha256Hex`).
        let v = &self.verity;
        if hex::decode(&v.salt).is_err() {
            return bad("verity salt is malformed".into());
        }
        if v.data_block_size != 4096 || v.hash_block_size != 4096 || v.hash_algorithm != "sha256" {
            return bad("verity parameters other than sha256 with 4 KiB blocks".into());
        }
        let root = self.part("root.img").map(|p| p.size).unwrap_or(0);
        if v.data_blocks * v.data_block_size as u64 != v.hash_offset || v.hash_offset >= root {
            return bad("verity data size and hash offset do not fit root.img".into());
        }
        if self.version.is_empty()
            || self.version.len() > 64
            || self.version.contains(char::is_whitespace)
        {
            return bad(format!(
                "version `{}` is empty, too long or has spaces",
                self.version
            ));
        }
        Ok(())
    }
}

/// See [`UpdateManifest::boot_options`].
pub fn boot_options(
    cmdline: &str,
    kind: ImageKind,
    v: &Verity,
    slot: Option<&str>,
    root_partuuid: &str,
    var_partuuid: Option<&str>,
) -> String {
    let mut o = format!(
        // systemd.gpt_auto=0: the ESP must never be automounted; the upgrade engine is its
        // only writer.
        "{cmdline} root=/dev/mapper/root rootfstype=erofs ro systemd.gpt_auto=0 icos.banner={}",
        kind.banner()
    );
    if let Some(s) = slot {
        o.push_str(&format!(" icos.slot={s}"));
    }
    o.push_str(&format!(" icos.root=PARTUUID={root_partuuid}"));
    if let Some(v) = var_partuuid {
        o.push_str(&format!(" icos.var=PARTUUID={v}"));
    }
    o.push_str(&format!(
        " icos.roothash={} icos.verity={}:{}:{}",
        v.root_hash, v.data_blocks, v.hash_offset, v.salt
    ));
    o
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("update package manifest is invalid: {0}")]
    BadManifest(String),
    #[error("update package is malformed: {0}")]
    Malformed(String),
    #[error("update package part {part}: SHA-256 is {actual}, the manifest says {expected}")]
    PartHash {
        part: String,
        expected: String,
        actual: String,
    },
    #[error("update package part {part}: {actual} bytes, the manifest says {expected}")]
    PartSize {
        part: String,
        expected: u64,
        actual: u64,
    },
}

/// Paths of the parts to pack.
pub struct PartFiles {
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub root: PathBuf,
}

/// SHA-256 and size of a file, streamed.
pub fn hash_file(path: &Path) -> io::Result<(Sha256Hex, u64)> {
    let mut f = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((Sha256Hex::from_bytes(h.finalize().into()), n))
}

fn header_for(name: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_path(name).expect("member names are short ASCII");
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

/// Write a package. The manifest's part list must already describe the files.
pub fn write_package(
    out: &Path,
    manifest: &UpdateManifest,
    parts: &PartFiles,
) -> Result<(), PackageError> {
    manifest.validate()?;
    let io_err = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| PackageError::Io { what, path, source }
    };
    let file = File::create(out).map_err(io_err("creating", out))?;
    let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
    let json = serde_json::to_vec_pretty(manifest).expect("manifest serializes");
    builder
        .append(
            &header_for("manifest.json", json.len() as u64),
            json.as_slice(),
        )
        .map_err(io_err("writing", out))?;
    for (name, path) in [
        ("vmlinuz", &parts.vmlinuz),
        ("initrd.img", &parts.initrd),
        ("root.img", &parts.root),
    ] {
        let expected = manifest.part(name).expect("validated");
        let f = File::open(path).map_err(io_err("opening", path))?;
        let len = f.metadata().map_err(io_err("reading size of", path))?.len();
        if len != expected.size {
            return Err(PackageError::PartSize {
                part: name.into(),
                expected: expected.size,
                actual: len,
            });
        }
        builder
            .append(&header_for(name, len), BufReader::with_capacity(1 << 20, f))
            .map_err(io_err("writing", out))?;
    }
    let mut w = builder.into_inner().map_err(io_err("finishing", out))?;
    w.flush().map_err(io_err("flushing", out))?;
    w.into_inner()
        .map_err(|e| PackageError::Io {
            what: "flushing",
            path: out.to_path_buf(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(io_err("syncing", out))?;
    Ok(())
}

/// Read and validate the manifest (the first member) of a package.
pub fn read_manifest(path: &Path) -> Result<UpdateManifest, PackageError> {
    let f = File::open(path).map_err(|source| PackageError::Io {
        what: "opening",
        path: path.to_path_buf(),
        source,
    })?;
    read_manifest_from(f)
}

/// Read the manifest from the start of a package stream.
pub fn read_manifest_from<R: Read>(r: R) -> Result<UpdateManifest, PackageError> {
    let mut archive = tar::Archive::new(r);
    let mut entries = archive
        .entries()
        .map_err(|e| PackageError::Malformed(format!("not a tar archive: {e}")))?;
    let mut first = entries
        .next()
        .ok_or_else(|| PackageError::Malformed("empty archive".into()))?
        .map_err(|e| PackageError::Malformed(format!("first member unreadable: {e}")))?;
    let name = first
        .path()
        .map_err(|e| PackageError::Malformed(e.to_string()))?
        .to_string_lossy()
        .into_owned();
    if name != "manifest.json" {
        return Err(PackageError::Malformed(format!(
            "first member is `{name}`, expected manifest.json"
        )));
    }
    let size = first.header().size().unwrap_or(u64::MAX);
    if size > MAX_MANIFEST_BYTES {
        return Err(PackageError::Malformed(format!(
            "manifest.json is {size} bytes, more than the {MAX_MANIFEST_BYTES} allowed"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    (&mut first)
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| PackageError::Malformed(format!("manifest.json truncated: {e}")))?;
    let m: UpdateManifest = serde_json::from_slice(&buf)
        .map_err(|e| PackageError::BadManifest(format!("not valid JSON for a manifest: {e}")))?;
    m.validate()?;
    Ok(m)
}

/// Fully check a package file: member order, each part's size and SHA-256 (the same
/// one-pass reader an installer uses, with a sink that keeps nothing).
pub fn verify_package(path: &Path) -> Result<reader::Streamed, reader::ReadError> {
    struct Discard;
    impl reader::PackageSink for Discard {
        type Error = reader::ReadError;
        fn manifest(&mut self, _: &UpdateManifest) -> Result<(), reader::ReadError> {
            Ok(())
        }
        fn part(&mut self, p: &Part, data: &mut dyn Read) -> Result<(), reader::ReadError> {
            io::copy(data, &mut io::sink())
                .map(|_| ())
                .map_err(|e| reader::ReadError::io(&p.name, e))
        }
    }
    let f = File::open(path).map_err(|source| PackageError::Io {
        what: "opening",
        path: path.to_path_buf(),
        source,
    })?;
    reader::read_package(
        &mut BufReader::with_capacity(1 << 20, f),
        u64::MAX,
        &mut Discard,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(dir: &Path) -> (UpdateManifest, PartFiles) {
        let k = dir.join("k");
        let i = dir.join("i");
        let r = dir.join("r");
        std::fs::write(&k, b"kernel bytes").unwrap();
        std::fs::write(&i, b"initrd bytes").unwrap();
        std::fs::write(&r, vec![3u8; 8192 + 4096]).unwrap();
        let part = |name: &str, p: &Path| {
            let (sha256, size) = hash_file(p).unwrap();
            Part {
                name: name.into(),
                size,
                sha256,
            }
        };
        let m = UpdateManifest {
            format: FORMAT,
            kind: ImageKind::Guestos,
            version: "1.0.0".into(),
            cmdline: "console=ttyS0".into(),
            kernel_version: "6.1.0".into(),
            verity: Verity {
                root_hash: "ab".repeat(32).parse().unwrap(),
                salt: "00".repeat(32),
                hash_algorithm: "sha256".into(),
                data_block_size: 4096,
                hash_block_size: 4096,
                data_blocks: 2,
                hash_offset: 8192,
            },
            parts: vec![
                part("vmlinuz", &k),
                part("initrd.img", &i),
                part("root.img", &r),
            ],
        };
        (
            m,
            PartFiles {
                vmlinuz: k,
                initrd: i,
                root: r,
            },
        )
    }

    #[test]
    fn package_roundtrip_and_determinism() {
        let d = tempfile::tempdir().unwrap();
        let (m, parts) = fixture(d.path());
        let p1 = d.path().join("u1.tar");
        let p2 = d.path().join("u2.tar");
        write_package(&p1, &m, &parts).unwrap();
        write_package(&p2, &m, &parts).unwrap();
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        assert_eq!(read_manifest(&p1).unwrap(), m);
        let v = verify_package(&p1).unwrap();
        assert_eq!(v.manifest, m);
        assert_eq!(v.bytes, std::fs::metadata(&p1).unwrap().len());
        assert_eq!(v.sha256, hash_file(&p1).unwrap().0);
    }

    #[test]
    fn flipped_byte_and_truncation_are_detected() {
        let d = tempfile::tempdir().unwrap();
        let (m, parts) = fixture(d.path());
        let p = d.path().join("u.tar");
        write_package(&p, &m, &parts).unwrap();
        let good = std::fs::read(&p).unwrap();

        // Flip a byte inside root.img's data (last member, before the tar trailer).
        let mut bad = good.clone();
        let at = bad.len() - 1024 - 100;
        bad[at] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        let err = verify_package(&p).unwrap_err();
        assert!(
            matches!(err, reader::ReadError::Package(PackageError::PartHash { ref part, .. }) if part == "root.img"),
            "{err}"
        );

        std::fs::write(&p, &good[..good.len() / 2]).unwrap();
        let err = verify_package(&p).unwrap_err().to_string();
        assert!(err.contains("truncated") || err.contains("bytes"), "{err}");
    }

    #[test]
    fn hostile_manifests_are_refused() {
        let (mut m, _) = fixture(tempfile::tempdir().unwrap().path());
        m.format = 99;
        assert!(m.validate().unwrap_err().to_string().contains("format"));
        let (mut m, _) = fixture(tempfile::tempdir().unwrap().path());
        m.parts.swap(0, 1);
        assert!(m.validate().is_err());
        let (mut m, _) = fixture(tempfile::tempdir().unwrap().path());
        m.verity.hash_offset = 1 << 40;
        assert!(m
            .validate()
            .unwrap_err()
            .to_string()
            .contains("hash offset"));
        let (mut m, _) = fixture(tempfile::tempdir().unwrap().path());
        m.version = "1.0 ; rm".into();
        assert!(m.validate().is_err());
    }

    #[test]
    fn oversized_or_misplaced_manifest_is_refused() {
        let mut tarball = tar::Builder::new(Vec::new());
        let big = vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize];
        tarball
            .append(
                &header_for("manifest.json", big.len() as u64),
                big.as_slice(),
            )
            .unwrap();
        let bytes = tarball.into_inner().unwrap();
        let err = read_manifest_from(bytes.as_slice())
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than"), "{err}");

        let mut tarball = tar::Builder::new(Vec::new());
        tarball
            .append(&header_for("root.img", 3), &b"abc"[..])
            .unwrap();
        let bytes = tarball.into_inner().unwrap();
        let err = read_manifest_from(bytes.as_slice())
            .unwrap_err()
            .to_string();
        assert!(err.contains("first member"), "{err}");

        let err = read_manifest_from(&b"not a tar at all"[..])
            .unwrap_err()
            .to_string();
        assert!(!err.is_empty());
    }
}
