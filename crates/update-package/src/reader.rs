//! Reading a package in one pass, as it streams in: members in the fixed order, the manifest
//! first (bounded, validated), each part handed to a [`PackageSink`] and checked against the
//! manifest (size and SHA-256) as it passes, the whole stream counted and hashed, and
//! nothing read past a limit. The sink only writes; every check is here, once.
//!
//! ```
//! use update_package::reader::{read_package, PackageSink, ReadError};
//! use update_package::{Part, UpdateManifest};
//! /// Counts the bytes of each part.
//! struct Count(Vec<(String, u64)>);
//! impl PackageSink for Count {
//!     type Error = ReadError;
//!     fn manifest(&mut self, _m: &UpdateManifest) -> Result<(), ReadError> { Ok(()) }
//!     fn part(&mut self, p: &Part, data: &mut dyn std::io::Read) -> Result<(), ReadError> {
//!         let n = std::io::copy(data, &mut std::io::sink()).map_err(|e| ReadError::io("a part", e))?;
//!         self.0.push((p.name.clone(), n));
//!         Ok(())
//!     }
//! }
//! // Not a package: refused before the sink sees anything.
//! let e = read_package(&mut &b"not a tar"[..], 1 << 20, &mut Count(vec![])).unwrap_err();
//! assert!(e.to_string().contains("package"), "{e}");
//! ```

use crate::{PackageError, Part, UpdateManifest, MAX_MANIFEST_BYTES, MEMBER_ORDER};
use sha2::{Digest, Sha256};
use sha256_hex::Sha256Hex;
use std::io::{self, Read};

/// Where the members of a package go.
pub trait PackageSink {
    type Error: From<ReadError>;
    /// The validated manifest, before any part: the sink decides whether it can take it.
    fn manifest(&mut self, m: &UpdateManifest) -> Result<(), Self::Error>;
    /// One part's bytes; the sink reads them all. Size and SHA-256 are checked afterwards
    /// (a part that fails is reported as failed whatever the sink made of it).
    fn part(&mut self, part: &Part, data: &mut dyn Read) -> Result<(), Self::Error>;
    /// Called once a part passed its checks.
    fn part_checked(&mut self, _part: &Part) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("update package is truncated: it ended after {bytes} bytes, while reading {what}")]
    Truncated { bytes: u64, what: String },
    #[error("update package is larger than {limit} bytes, more than this disk's slot can hold; refusing to read further")]
    Oversized { limit: u64 },
    #[error("reading {what} from the package: {error}")]
    Io { what: String, error: io::Error },
}

impl ReadError {
    /// An I/O error while reading `what` (a truncated stream or the size limit are named
    /// as such).
    pub fn io(what: &str, e: io::Error) -> ReadError {
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Oversize>()) {
            return ReadError::Oversized { limit: inner.0 };
        }
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return ReadError::Truncated {
                bytes: 0,
                what: what.to_string(),
            };
        }
        ReadError::Io {
            what: what.to_string(),
            error: e,
        }
    }
}

/// What was read.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub manifest: UpdateManifest,
    /// The whole stream, tar end blocks included.
    pub bytes: u64,
    pub sha256: Sha256Hex,
}

/// Read a package from `source` into `sink`, refusing to read more than `limit` bytes.
pub fn read_package<S: PackageSink>(
    source: &mut dyn Read,
    limit: u64,
    sink: &mut S,
) -> Result<Streamed, S::Error> {
    let mut pkg = Counted {
        inner: source,
        hash: Sha256::new(),
        bytes: 0,
        limit,
    };
    let manifest = read_members(&mut pkg, sink)?;
    // The rest of the stream (tar end blocks) belongs to the package hash too.
    io::copy(&mut pkg, &mut io::sink()).map_err(|e| ReadError::io("the end of the package", e))?;
    Ok(Streamed {
        manifest,
        bytes: pkg.bytes,
        sha256: Sha256Hex::from_bytes(pkg.hash.finalize().into()),
    })
}

fn read_members<S: PackageSink>(
    pkg: &mut Counted<'_>,
    sink: &mut S,
) -> Result<UpdateManifest, S::Error> {
    let mut manifest: Option<UpdateManifest> = None;
    let mut seen = 0usize;
    let mut archive = tar::Archive::new(pkg);
    let entries = archive
        .entries()
        .map_err(|e| ReadError::io("the package header", e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ReadError::io("a member header", e))?;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expected = MEMBER_ORDER
            .get(seen)
            .copied()
            .unwrap_or("(end of archive)");
        if name != expected {
            return Err(ReadError::from(PackageError::Malformed(format!(
                "member {} is `{name}`, expected `{expected}`",
                seen + 1
            )))
            .into());
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        match &manifest {
            None => {
                let m = read_manifest_member(&mut entry, size)?;
                sink.manifest(&m)?;
                manifest = Some(m);
            }
            Some(m) => {
                let part = m.part(&name).expect("validated manifest lists every part");
                read_part(&mut entry, size, part, sink)?;
            }
        }
        seen += 1;
    }
    if seen != MEMBER_ORDER.len() {
        return Err(ReadError::Truncated {
            bytes: 0,
            what: format!("the member list (got {:?})", &MEMBER_ORDER[..seen]),
        }
        .into());
    }
    Ok(manifest.expect("all members seen"))
}

fn read_manifest_member(entry: &mut dyn Read, size: u64) -> Result<UpdateManifest, ReadError> {
    if size > MAX_MANIFEST_BYTES {
        return Err(PackageError::Malformed(format!(
            "manifest.json is {size} bytes, more than {MAX_MANIFEST_BYTES}"
        ))
        .into());
    }
    let mut buf = Vec::new();
    entry
        .take(MAX_MANIFEST_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::io("manifest.json", e))?;
    let m: UpdateManifest =
        serde_json::from_slice(&buf).map_err(|e| PackageError::BadManifest(e.to_string()))?;
    m.validate()?;
    Ok(m)
}

fn read_part<S: PackageSink>(
    entry: &mut dyn Read,
    size: u64,
    part: &Part,
    sink: &mut S,
) -> Result<(), S::Error> {
    if size != part.size {
        return Err(ReadError::from(PackageError::PartSize {
            part: part.name.clone(),
            expected: part.size,
            actual: size,
        })
        .into());
    }
    let mut data = PartData {
        inner: entry,
        hash: Sha256::new(),
        bytes: 0,
        failed: None,
    };
    let result = sink.part(part, &mut data);
    // A failing source explains a failing sink better than the sink's own error does.
    if let Some(e) = data.failed.take() {
        return Err(match ReadError::io(&part.name, e) {
            ReadError::Truncated { what, .. } => ReadError::Truncated {
                bytes: data.bytes,
                what,
            },
            other => other,
        }
        .into());
    }
    result?;
    if data.bytes != part.size {
        return Err(ReadError::Truncated {
            bytes: data.bytes,
            what: format!("{} ({} of {} bytes)", part.name, data.bytes, part.size),
        }
        .into());
    }
    let actual = Sha256Hex::from_bytes(data.hash.finalize().into());
    if actual != part.sha256 {
        return Err(ReadError::from(PackageError::PartHash {
            part: part.name.clone(),
            expected: part.sha256.to_string(),
            actual: actual.to_string(),
        })
        .into());
    }
    sink.part_checked(part)
}

/// The size limit was reached (carried inside an `io::Error`).
#[derive(Debug)]
struct Oversize(u64);
impl std::fmt::Display for Oversize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "package exceeds {} bytes", self.0)
    }
}
impl std::error::Error for Oversize {}

/// Hashes and counts every byte of the package, and refuses to read past `limit`.
struct Counted<'a> {
    inner: &'a mut dyn Read,
    hash: Sha256,
    bytes: u64,
    limit: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes > self.limit {
            return Err(io::Error::other(Oversize(self.limit)));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// One part as the sink reads it: hashed, counted, and a failure of the source remembered.
struct PartData<'a> {
    inner: &'a mut dyn Read,
    hash: Sha256,
    bytes: u64,
    failed: Option<io::Error>,
}

impl Read for PartData<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.bytes += n as u64;
                self.hash.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }
}
