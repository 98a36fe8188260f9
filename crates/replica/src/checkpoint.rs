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
//! Every file is written under a temporary name, synced and renamed; the directory is synced
//! after the pieces (always, so a piece renamed by an earlier, failed write is durable before
//! a manifest names it) and after the manifest. Each sync ends a *durable step*, and
//! [`Store::cut_after`] stops a write after any of them, as a power cut would (the tests cut
//! after every one). A checkpoint exists once its manifest is renamed into place; old
//! checkpoints and pieces no manifest names go only after that, and only when every
//! manifest in the directory could be read (a piece is never deleted on a guess).
//!
//! [`Store::open`] checks every piece against its name (a damaged one is moved to
//! `damaged/`), takes the newest manifest that is whole (it parses, its pieces are there with
//! the sizes it says, its ids and lengths make sense), sets aside newer ones that are damaged
//! (`<name>.corrupt`, still counted when pieces are collected), and says all of that in its
//! [`Recovery`]. It refuses to start rather than guess: on an I/O error, on a manifest from a
//! newer format, and when checkpoints exist but none is whole.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
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
/// The manifests last handed to the subnet's members as snapshots are kept in
/// `checkpoints/` as `snapshot-<height>.cbor`: never taken up at open (they are not named
/// by a height alone), but their pieces stay while they are there.
const PINNED: &str = "snapshot-";
/// Snapshots whose pieces are kept. The leader's stream to a member that is down keeps the
/// snapshot it fetched and sends it once the member is back, after newer ones were built:
/// a test saw it send the one before the newest.
const PINNED_KEPT: usize = 4;
/// Where pieces that fail their hash are moved.
const DAMAGED: &str = "damaged";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("{}: written in checkpoint format {format}; this replica reads format {FORMAT} (an older replica must not take up a newer one's state)", path.display())]
    NewerFormat { path: PathBuf, format: u32 },
    #[error("the checkpoint does not encode: {0}")]
    Encode(String),
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
    /// The time of the last batch executed (0 before any, and in checkpoints of replicas
    /// that ran no batches): part of the state root the subnet's nodes compare.
    #[serde(default)]
    pub batch_time: u64,
    /// Where the state stands in the subnet's ordered log (opaque, the `replication`
    /// crate's): kept in the same checkpoint as the state so the two never part.
    #[serde(default, with = "serde_bytes")]
    pub position: Option<Vec<u8>>,
}

impl Manifest {
    fn blobs(&self) -> impl Iterator<Item = &Blob> {
        self.canisters
            .iter()
            .flat_map(|c| c.wasm.iter().chain([&c.heap, &c.stable]))
    }

    /// Every piece it names (a piece shared by two blobs, twice).
    pub fn chunks(&self) -> impl Iterator<Item = &String> {
        self.blobs().flat_map(|b| b.chunks.iter())
    }

    /// Whether everything in the manifest makes sense against the pieces present (name to
    /// size): the reason when it does not.
    fn validate(&self, pieces: &BTreeMap<String, u64>) -> Result<(), String> {
        for b in self.blobs() {
            let mut total = 0u64;
            for (i, name) in b.chunks.iter().enumerate() {
                if !is_piece_name(name) {
                    return Err(format!("{name:?} is not a piece name"));
                }
                let size = *pieces
                    .get(name)
                    .ok_or_else(|| format!("piece {name} is missing or damaged"))?;
                if i + 1 < b.chunks.len() && size != CHUNK as u64 {
                    return Err(format!("piece {name} is {size} bytes inside a blob"));
                }
                total += size;
            }
            if total != b.len {
                return Err(format!(
                    "pieces hold {total} bytes, the blob says {}",
                    b.len
                ));
            }
        }
        for c in &self.canisters {
            ic_principal::Principal::try_from_slice(&c.id)
                .map_err(|e| format!("canister id {}: {e}", hex::encode(&c.id)))?;
            if let Some(g) = c
                .globals
                .iter()
                .find(|(kind, bits)| *kind > 3 || (*kind == 2 && *bits > u64::from(u32::MAX)))
            {
                return Err(format!("a global of unknown type or size {g:?}"));
            }
        }
        for r in &self.requests {
            if r.id.len() != 32 {
                return Err(format!("a request id of {} bytes", r.id.len()));
            }
            ic_principal::Principal::try_from_slice(&r.sender)
                .map_err(|e| format!("request sender {}: {e}", hex::encode(&r.sender)))?;
        }
        Ok(())
    }
}

/// The name of a piece holding `bytes`: their SHA-256 in lowercase hex.
pub fn piece_name(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Pieces are named by their SHA-256 in lowercase hex; nothing else in `chunks/` is ours.
fn is_piece_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
    /// The durable steps of the current write, by name.
    steps: Vec<&'static str>,
    cut_at: Option<usize>,
    /// The piece files, read from the directory once at open and kept up to date, so a
    /// checkpoint does not list a directory of thousands of pieces.
    present: BTreeSet<String>,
}

impl Store {
    /// Open (creating if needed) the state directory and take up its newest whole checkpoint.
    pub fn open(dir: &Path) -> Result<(Store, Option<Manifest>, Recovery), CheckpointError> {
        let mut store = Store {
            dir: dir.to_path_buf(),
            steps: Vec::new(),
            cut_at: None,
            present: BTreeSet::new(),
        };
        for d in [store.chunk_dir(), store.manifest_dir()] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let mut discarded = store.remove_unfinished()?;
        let (pieces, damaged) = store.verify_pieces()?;
        discarded.extend(damaged);
        store.present = pieces.keys().cloned().collect();
        let mut newer_damaged: Vec<(PathBuf, CheckpointError)> = Vec::new();
        let mut found = None;
        for (_, path) in store.manifests()?.into_iter().rev() {
            let checked = store.check(&path, &pieces);
            match checked {
                Ok(m) if found.is_none() => found = Some(m),
                Ok(_) => {}
                // Not damage: what is on disk may be fine. Refuse rather than set it aside.
                Err(e @ (CheckpointError::Io { .. } | CheckpointError::NewerFormat { .. })) => {
                    return Err(e)
                }
                Err(e) if found.is_none() => newer_damaged.push((path, e)),
                Err(e) => discarded.push(format!("an older checkpoint is damaged too: {e}")),
            }
        }
        if found.is_none() && !newer_damaged.is_empty() {
            // Starting empty would throw every canister away: refuse, and say why.
            let reasons: Vec<String> = newer_damaged.iter().map(|(_, e)| e.to_string()).collect();
            return Err(CheckpointError::NoneSound(reasons.join("; ")));
        }
        for (path, e) in newer_damaged {
            let aside = set_aside(&path)?;
            discarded.push(format!("{e} (set aside as {})", aside.display()));
        }
        let recovery = Recovery {
            height: found.as_ref().map(|m| m.height),
            canisters: found.as_ref().map_or(0, |m| m.canisters.len()),
            requests: found.as_ref().map_or(0, |m| m.requests.len()),
            discarded,
        };
        Ok((store, found, recovery))
    }

    /// Stop the writes after `step` more durable steps, as a power cut would.
    pub fn cut_after(&mut self, step: usize) {
        self.steps.clear();
        self.cut_at = Some(step);
    }

    /// The durable steps of the last write (or since [`Store::cut_after`]), by name.
    pub fn steps(&self) -> &[&'static str] {
        &self.steps
    }

    /// Write `manifest` as the newest checkpoint; `data` gives the bytes of each blob it
    /// names, in the order [`Manifest`] lists them (wasm if any, heap, stable per canister),
    /// cut and named as [`Store::blob_of`] does.
    /// Ok once the manifest is durable (a failed clean-up after that is logged).
    pub fn write(&mut self, manifest: &Manifest, data: &[&[u8]]) -> Result<(), CheckpointError> {
        if self.cut_at.is_none() {
            self.steps.clear();
        }
        // The manifest names each piece already (its hash): no second pass over the bytes.
        debug_assert_eq!(manifest.blobs().count(), data.len());
        for (blob, bytes) in manifest.blobs().zip(data) {
            for (name, piece) in blob.chunks.iter().zip(bytes.chunks(CHUNK)) {
                if !self.present.contains(name) {
                    self.write_file(&self.chunk_dir(), name, piece, "piece")?;
                    self.present.insert(name.clone());
                }
            }
        }
        self.sync_dir(&self.chunk_dir(), "pieces directory")?;
        self.commit(manifest)
    }

    /// Write `manifest`, whose pieces are durable, as the newest checkpoint, then remove old
    /// ones. Ok once the manifest is durable (a failed clean-up after that is logged).
    fn commit(&mut self, manifest: &Manifest) -> Result<(), CheckpointError> {
        let bytes =
            serde_cbor::to_vec(manifest).map_err(|e| CheckpointError::Encode(e.to_string()))?;
        let name = manifest_name(manifest.height);
        self.write_file(&self.manifest_dir(), &name, &bytes, "manifest")?;
        self.sync_dir(&self.manifest_dir(), "checkpoints directory")?;
        match self.prune(manifest) {
            Err(CheckpointError::Cut(n)) => Err(CheckpointError::Cut(n)),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint {name} is written; removing old ones failed");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Keep `manifest`'s pieces until another manifest is pinned: the subnet's members
    /// fetch them from here while they take up the state it describes.
    pub fn pin(&mut self, manifest: &Manifest) -> Result<(), CheckpointError> {
        let bytes =
            serde_cbor::to_vec(manifest).map_err(|e| CheckpointError::Encode(e.to_string()))?;
        let name = format!("{PINNED}{}", manifest_name(manifest.height));
        self.write_file(&self.manifest_dir(), &name, &bytes, "pinned manifest")?;
        let mut pinned: Vec<(PathBuf, String)> = listing(&self.manifest_dir())?
            .into_iter()
            .filter(|(_, n)| n.starts_with(PINNED) && n.ends_with(".cbor"))
            .collect();
        pinned.sort_by(|a, b| b.1.cmp(&a.1));
        for (path, _) in pinned.iter().skip(PINNED_KEPT) {
            std::fs::remove_file(path).map_err(io(path))?;
        }
        self.sync_dir(&self.manifest_dir(), "checkpoints directory")
    }

    /// Whether the piece `name` is here.
    pub fn has_piece(&self, name: &str) -> bool {
        self.present.contains(name)
    }

    /// The piece `name`, checked against its name (none when it is not here or damaged).
    pub fn piece(&self, name: &str) -> Option<Vec<u8>> {
        if !self.present.contains(name) {
            return None;
        }
        self.read_chunk(name).ok()
    }

    /// Keep a piece fetched from another member: refused unless its bytes hash to its name
    /// and fit in a piece. Durable once [`Store::adopt`] syncs the directory.
    pub fn put_piece(&mut self, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let path = self.chunk_dir().join(name);
        if !is_piece_name(name) || bytes.len() > CHUNK {
            return Err(CheckpointError::Damaged {
                path,
                reason: format!("not a piece ({} bytes)", bytes.len()),
            });
        }
        if piece_name(bytes) != name {
            return Err(CheckpointError::Damaged {
                path,
                reason: "the piece's content does not match its hash".into(),
            });
        }
        if !self.present.contains(name) {
            self.write_file(&self.chunk_dir(), name, bytes, "piece")?;
            self.present.insert(name.to_string());
        }
        Ok(())
    }

    /// Make `manifest`, whose pieces are all here, the newest checkpoint. Checkpoints above
    /// its height are of a state that is not the subnet's: they are set aside.
    pub fn adopt(&mut self, manifest: &Manifest) -> Result<(), CheckpointError> {
        if self.cut_at.is_none() {
            self.steps.clear();
        }
        let mut sizes = BTreeMap::new();
        for name in manifest.chunks() {
            let path = self.chunk_dir().join(name);
            if let Ok(meta) = std::fs::metadata(&path) {
                sizes.insert(name.clone(), meta.len());
            }
        }
        manifest
            .validate(&sizes)
            .map_err(|reason| CheckpointError::Damaged {
                path: self.manifest_dir(),
                reason,
            })?;
        self.sync_dir(&self.chunk_dir(), "pieces directory")?;
        for (height, path) in self.manifests()? {
            if height > manifest.height {
                set_aside(&path)?;
            }
        }
        self.commit(manifest)
    }

    /// The bytes of `blob`, each piece checked against its hash.
    pub fn read(&self, blob: &Blob) -> Result<Vec<u8>, CheckpointError> {
        let mut out = Vec::new();
        for name in &blob.chunks {
            out.extend(self.read_chunk(name)?);
        }
        if out.len() as u64 != blob.len {
            return Err(CheckpointError::Damaged {
                path: self.manifest_dir(),
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
            chunks: bytes.chunks(CHUNK).map(piece_name).collect(),
        }
    }

    fn chunk_dir(&self) -> PathBuf {
        self.dir.join("chunks")
    }

    fn manifest_dir(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }

    fn step(&mut self, name: &'static str) -> Result<(), CheckpointError> {
        self.steps.push(name);
        match self.cut_at {
            Some(n) if self.steps.len() >= n => Err(CheckpointError::Cut(self.steps.len())),
            _ => Ok(()),
        }
    }

    fn write_file(
        &mut self,
        dir: &Path,
        name: &str,
        bytes: &[u8],
        step: &'static str,
    ) -> Result<(), CheckpointError> {
        let tmp = dir.join(format!("{TMP}{name}"));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        self.step(step)?;
        let path = dir.join(name);
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn sync_dir(&mut self, dir: &Path, step: &'static str) -> Result<(), CheckpointError> {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        self.step(step)
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

    /// Every piece file (by its name; files of other names are not ours and stay).
    fn present_chunks(&self) -> Result<BTreeSet<String>, CheckpointError> {
        Ok(listing(&self.chunk_dir())?
            .into_iter()
            .map(|(_, name)| name)
            .filter(|n| is_piece_name(n))
            .collect())
    }

    /// Read every piece and check it against its name: the sizes of the sound ones, and what
    /// was moved to `damaged/`.
    fn verify_pieces(&self) -> Result<(BTreeMap<String, u64>, Vec<String>), CheckpointError> {
        let mut sound = BTreeMap::new();
        let mut moved = Vec::new();
        for name in self.present_chunks()? {
            match self.read_chunk(&name) {
                Ok(bytes) => {
                    sound.insert(name, bytes.len() as u64);
                }
                Err(CheckpointError::Damaged { path, reason }) => {
                    let dir = self.dir.join(DAMAGED);
                    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                    let to = dir.join(&name);
                    std::fs::rename(&path, &to).map_err(io(&path))?;
                    moved.push(format!(
                        "{} {reason} (moved to {})",
                        path.display(),
                        to.display()
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((sound, moved))
    }

    fn read_chunk(&self, name: &str) -> Result<Vec<u8>, CheckpointError> {
        let path = self.chunk_dir().join(name);
        if !is_piece_name(name) {
            return Err(CheckpointError::Damaged {
                path,
                reason: "not a piece name".into(),
            });
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::Damaged {
                    path,
                    reason: "the piece is missing".into(),
                })
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if piece_name(&bytes) != name {
            return Err(CheckpointError::Damaged {
                path,
                reason: "the piece's content does not match its hash".into(),
            });
        }
        Ok(bytes)
    }

    /// A manifest that parses, is of our format and makes sense against the sound pieces.
    fn check(
        &self,
        path: &Path,
        pieces: &BTreeMap<String, u64>,
    ) -> Result<Manifest, CheckpointError> {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let damaged = |reason: String| CheckpointError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let m: Manifest = serde_cbor::from_slice(&bytes)
            .map_err(|e| damaged(format!("not a checkpoint manifest: {e}")))?;
        if m.format > FORMAT {
            return Err(CheckpointError::NewerFormat {
                path: path.to_path_buf(),
                format: m.format,
            });
        }
        if m.format != FORMAT {
            return Err(damaged(format!("unknown checkpoint format {}", m.format)));
        }
        m.validate(pieces).map_err(damaged)?;
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

    /// Keep the newest [`KEEP`] manifests and the pieces any manifest names.
    fn prune(&mut self, written: &Manifest) -> Result<(), CheckpointError> {
        let all = self.manifests()?;
        let old = all.len().saturating_sub(KEEP);
        for (_, path) in &all[..old] {
            std::fs::remove_file(path).map_err(io(path))?;
        }
        if old > 0 {
            self.sync_dir(&self.manifest_dir(), "old checkpoints removed")?;
        }
        self.collect_garbage(written)
    }

    /// Remove pieces that no manifest names, set-aside ones included; if any manifest cannot
    /// be read, remove nothing.
    fn collect_garbage(&mut self, written: &Manifest) -> Result<(), CheckpointError> {
        let mut used: BTreeSet<&str> = written.chunks().map(String::as_str).collect();
        let mut others = Vec::new();
        for (path, name) in listing(&self.manifest_dir())? {
            if name.ends_with(".cbor") || name.ends_with(".corrupt") {
                let parsed = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_cbor::from_slice::<Manifest>(&b).ok());
                match parsed {
                    Some(m) => others.push(m),
                    // A set-aside manifest may not parse: the pieces it named are gone with it.
                    None if name.ends_with(".corrupt") => {}
                    None => {
                        tracing::warn!(path = %path.display(), "unreadable manifest: no piece is removed");
                        return Ok(());
                    }
                }
            }
        }
        used.extend(others.iter().flat_map(|m| m.chunks().map(String::as_str)));
        let unused: Vec<String> = self
            .present
            .iter()
            .filter(|n| !used.contains(n.as_str()))
            .cloned()
            .collect();
        for name in unused {
            let path = self.chunk_dir().join(&name);
            std::fs::remove_file(&path).map_err(io(&path))?;
            self.present.remove(&name);
        }
        Ok(())
    }
}

/// Move a damaged manifest out of the way under a name no other one has.
fn set_aside(path: &Path) -> Result<PathBuf, CheckpointError> {
    let mut aside = path.with_extension("cbor.corrupt");
    let mut n = 1;
    while aside.exists() {
        aside = path.with_extension(format!("cbor.{n}.corrupt"));
        n += 1;
    }
    std::fs::rename(path, &aside).map_err(io(path))?;
    Ok(aside)
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
