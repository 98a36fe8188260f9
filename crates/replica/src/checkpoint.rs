//! Checkpoints: the replica's state on disk, written so that a power cut at any moment leaves
//! the previous checkpoint or the new one whole, never a mix.
//!
//! Layout under the state directory:
//! * `chunks/<sha256>`: 1 MiB pieces of Wasm modules, heaps and stable memories, named by
//!   their hash. A piece that did not change is not written again, so a checkpoint costs what
//!   changed, and every kept checkpoint shares the pieces it has in common with the others.
//! * `checkpoints/<height, 20 digits>.cbor`: a [`Manifest`] naming each canister's pieces and
//!   every request status still within its expiry.
//!
//! Every file is written under a temporary name, synced, renamed, and its directory synced;
//! each of those syncs ends a *durable step*, and [`Store::cut_after`] stops a write after any
//! of them, as a power cut would (the tests cut after every one). A checkpoint exists once its
//! manifest is renamed into place: pieces come first, the manifest last, and old checkpoints
//! and pieces no kept checkpoint names go only after that.
//!
//! [`Store::open`] takes the newest manifest whose pieces are all present and hash right,
//! sets aside manifests that are not (`<name>.corrupt`), removes unfinished files and unused
//! pieces, and says all of that in its [`Recovery`].

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Size of a piece.
pub const CHUNK: usize = 1 << 20;
/// Checkpoints kept: the newest, and the one before in case the newest is found damaged.
const KEEP: usize = 2;
/// The manifest format this code writes and reads.
pub(crate) const FORMAT: u32 = 1;
const TMP: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("no checkpoint here is sound, and starting empty would lose every canister: {0}")]
    NoneSound(String),
    #[error("checkpoint write stopped after durable step {0} (an injected power cut)")]
    Cut(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Bytes kept as pieces: their total length and each piece's SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Blob {
    pub len: u64,
    pub chunks: Vec<String>,
}

/// A mutable global's value: its type (0 i32, 1 i64, 2 f32, 3 f64) and bits.
pub type GlobalRecord = (u8, u64);

/// One canister in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanisterRecord {
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    pub settings: ic_management_canister_types::DefiniteCanisterSettings,
    pub wasm: Option<Blob>,
    pub heap: Blob,
    pub globals: Vec<GlobalRecord>,
    pub stable: Blob,
    #[serde(with = "serde_bytes")]
    pub certified_data: Vec<u8>,
    pub status: ic_management_canister_types::CanisterStatusType,
    pub version: u64,
}

/// How a recorded request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOutcome {
    Replied(#[serde(with = "serde_bytes")] Vec<u8>),
    Rejected {
        code: u64,
        message: String,
        error_code: String,
    },
}

/// One request status in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub sender: Vec<u8>,
    pub expiry: u64,
    pub outcome: RequestOutcome,
}

/// What a checkpoint holds besides the pieces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Executed calls when the checkpoint was taken.
    pub height: u64,
    pub canisters: Vec<CanisterRecord>,
    pub requests: Vec<RequestRecord>,
}

impl Manifest {
    fn chunks(&self) -> impl Iterator<Item = &String> {
        self.canisters.iter().flat_map(|c| {
            c.wasm
                .iter()
                .chain([&c.heap, &c.stable])
                .flat_map(|b| b.chunks.iter())
        })
    }
}

/// What opening the state directory found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The checkpoint taken up (its height), if there was one.
    pub height: Option<u64>,
    pub canisters: usize,
    pub requests: usize,
    /// What was set aside or removed, and why.
    pub discarded: Vec<String>,
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.height {
            Some(h) => write!(
                f,
                "recovered the checkpoint at height {h}: {} canister(s), {} request status(es)",
                self.canisters, self.requests
            )?,
            None => write!(f, "no checkpoint found: starting with an empty state")?,
        }
        if !self.discarded.is_empty() {
            write!(f, "; discarded: {}", self.discarded.join("; "))?;
        }
        Ok(())
    }
}

/// The state directory.
pub struct Store {
    dir: PathBuf,
    steps: usize,
    cut_at: Option<usize>,
}

impl Store {
    /// Open (creating if needed) the state directory and take up its newest sound checkpoint.
    pub fn open(dir: &Path) -> Result<(Store, Option<Manifest>, Recovery), CheckpointError> {
        let store = Store {
            dir: dir.to_path_buf(),
            steps: 0,
            cut_at: None,
        };
        for d in [store.chunk_dir(), store.manifest_dir()] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let mut discarded = store.remove_unfinished()?;
        let mut found = None;
        let mut newer_damaged = Vec::new();
        for (height, path) in store.manifests()?.into_iter().rev() {
            match store.check(&path) {
                Ok(m) if found.is_none() => found = Some((height, m)),
                Ok(_) => {}
                Err(e) if found.is_none() => newer_damaged.push((path, e)),
                Err(_) => {}
            }
        }
        if found.is_none() && !newer_damaged.is_empty() {
            // Starting empty would throw every canister away: refuse, and say why.
            let reasons: Vec<String> = newer_damaged.iter().map(|(_, e)| e.to_string()).collect();
            return Err(CheckpointError::NoneSound(reasons.join("; ")));
        }
        for (path, e) in newer_damaged {
            let aside = path.with_extension("cbor.corrupt");
            std::fs::rename(&path, &aside).map_err(io(&path))?;
            discarded.push(format!("{e} (set aside as {})", aside.display()));
        }
        let manifest = found.map(|(_, m)| m);
        discarded.extend(store.collect_garbage(manifest.as_ref())?);
        let recovery = Recovery {
            height: manifest.as_ref().map(|m| m.height),
            canisters: manifest.as_ref().map_or(0, |m| m.canisters.len()),
            requests: manifest.as_ref().map_or(0, |m| m.requests.len()),
            discarded,
        };
        Ok((store, manifest, recovery))
    }

    /// Stop every later write after `step` more durable steps, as a power cut would.
    pub fn cut_after(&mut self, step: usize) {
        self.steps = 0;
        self.cut_at = Some(step);
    }

    /// Durable steps since the last [`Store::cut_after`] (or since opening).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Write `manifest` as the newest checkpoint; `data` gives the bytes of each blob it
    /// names, in the order [`Manifest`] lists them (wasm if any, heap, stable per canister).
    pub fn write(&mut self, manifest: &Manifest, data: &[&[u8]]) -> Result<(), CheckpointError> {
        let mut written = false;
        let present = self.present_chunks()?;
        for bytes in data {
            for piece in bytes.chunks(CHUNK) {
                let name = hex::encode(Sha256::digest(piece));
                if !present.contains(&name) {
                    self.write_file(&self.chunk_dir(), &name, piece)?;
                    written = true;
                }
            }
        }
        if written {
            self.sync_dir(&self.chunk_dir())?;
        }
        let bytes = serde_cbor::to_vec(manifest).map_err(|e| CheckpointError::Damaged {
            path: self.manifest_dir(),
            reason: format!("the manifest does not encode: {e}"),
        })?;
        self.write_file(
            &self.manifest_dir(),
            &manifest_name(manifest.height),
            &bytes,
        )?;
        self.sync_dir(&self.manifest_dir())?;
        self.prune()
    }

    /// The bytes of `blob`, each piece checked against its hash.
    pub fn read(&self, blob: &Blob) -> Result<Vec<u8>, CheckpointError> {
        let mut out = Vec::with_capacity(blob.len as usize);
        for name in &blob.chunks {
            out.extend(self.read_chunk(name)?);
        }
        if out.len() as u64 != blob.len {
            return Err(CheckpointError::Damaged {
                path: self.chunk_dir(),
                reason: format!(
                    "pieces hold {} bytes, the manifest says {}",
                    out.len(),
                    blob.len
                ),
            });
        }
        Ok(out)
    }

    /// The pieces `bytes` is cut into, as a manifest names them.
    pub fn blob_of(bytes: &[u8]) -> Blob {
        Blob {
            len: bytes.len() as u64,
            chunks: bytes
                .chunks(CHUNK)
                .map(|c| hex::encode(Sha256::digest(c)))
                .collect(),
        }
    }

    fn chunk_dir(&self) -> PathBuf {
        self.dir.join("chunks")
    }

    fn manifest_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    fn step(&mut self) -> Result<(), CheckpointError> {
        self.steps += 1;
        match self.cut_at {
            Some(n) if self.steps >= n => Err(CheckpointError::Cut(self.steps)),
            _ => Ok(()),
        }
    }

    fn write_file(&mut self, dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let tmp = dir.join(format!("{TMP}{name}"));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        self.step()?;
        let path = dir.join(name);
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn sync_dir(&mut self, dir: &Path) -> Result<(), CheckpointError> {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        self.step()
    }

    /// Manifests by height, oldest first.
    fn manifests(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let mut out: Vec<(u64, PathBuf)> = listing(&self.manifest_dir())?
            .into_iter()
            .filter_map(|(path, name)| {
                let h = name.strip_suffix(".cbor")?.parse().ok()?;
                Some((h, path))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn present_chunks(&self) -> Result<BTreeSet<String>, CheckpointError> {
        Ok(listing(&self.chunk_dir())?
            .into_iter()
            .map(|(_, name)| name)
            .filter(|n| !n.starts_with(TMP))
            .collect())
    }

    fn read_chunk(&self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let path = self.chunk_dir().join(name);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if hex::encode(Sha256::digest(&bytes)) != name {
            return Err(CheckpointError::Damaged {
                path,
                reason: "the piece's content does not match its hash".into(),
            });
        }
        Ok(bytes)
    }

    /// A manifest that parses, is of our format, and whose pieces are all sound.
    fn check(&self, path: &Path) -> Result<Manifest, CheckpointError> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let damaged = |reason: String| CheckpointError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let m: Manifest = serde_cbor::from_slice(&bytes)
            .map_err(|e| damaged(format!("not a checkpoint manifest: {e}")))?;
        if m.format != FORMAT {
            return Err(damaged(format!(
                "manifest format {} (this replica reads {FORMAT})",
                m.format
            )));
        }
        for name in m.chunks() {
            self.read_chunk(name)?;
        }
        Ok(m)
    }

    /// Files a cut write left under temporary names.
    fn remove_unfinished(&self) -> Result<Vec<String>, CheckpointError> {
        let mut out = Vec::new();
        for dir in [self.chunk_dir(), self.manifest_dir()] {
            for (path, name) in listing(&dir)? {
                if name.starts_with(TMP) {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                    out.push(format!("unfinished write {}", path.display()));
                }
            }
        }
        Ok(out)
    }

    /// Keep the newest [`KEEP`] manifests and the pieces they name.
    fn prune(&mut self) -> Result<(), CheckpointError> {
        let all = self.manifests()?;
        let old = all.len().saturating_sub(KEEP);
        for (_, path) in &all[..old] {
            std::fs::remove_file(path).map_err(io(path))?;
        }
        if old > 0 {
            self.sync_dir(&self.manifest_dir())?;
        }
        self.collect_garbage(None).map(|_| ())
    }

    /// Remove pieces no kept manifest names (`taken` is the one just taken up, when other
    /// manifests may not parse).
    fn collect_garbage(&self, taken: Option<&Manifest>) -> Result<Vec<String>, CheckpointError> {
        let mut used: BTreeSet<String> = taken.iter().flat_map(|m| m.chunks()).cloned().collect();
        for (_, path) in self.manifests()? {
            if let Ok(bytes) = std::fs::read(&path) {
                if let Ok(m) = serde_cbor::from_slice::<Manifest>(&bytes) {
                    used.extend(m.chunks().cloned());
                }
            }
        }
        let unused: Vec<String> = self
            .present_chunks()?
            .into_iter()
            .filter(|c| !used.contains(c))
            .collect();
        for name in &unused {
            let path = self.chunk_dir().join(name);
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(if unused.is_empty() {
            Vec::new()
        } else {
            vec![format!("{} piece(s) no checkpoint names", unused.len())]
        })
    }
}

/// The files in `dir` with their names (names that are not UTF-8 are no file of ours).
fn listing(dir: &Path) -> Result<Vec<(PathBuf, String)>, CheckpointError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = e.map_err(io(dir))?.path();
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            let name = name.to_string();
            out.push((path, name));
        }
    }
    Ok(out)
}

fn manifest_name(height: u64) -> String {
    format!("{height:020}.cbor")
}
