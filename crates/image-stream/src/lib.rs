//! Writing disk images from a stream, the way SetupOS installs HostOS and GuestOS.
//!
//! A node's disk images are mostly zeros (empty B slots, the space the GuestOS fills later).
//! Hashing and writing gigabytes of zeros is the slow part of an install, and a whole-image
//! SHA-256 says only *that* something differs, not where. So the image builder records a
//! [`ChunkMap`]: the SHA-256 of every 1 MiB chunk, and which chunks are all zeros. The map
//! lives in the SetupOS root filesystem, under dm-verity, so it is authenticated; the images
//! themselves are plain zstd files on an unverified partition.
//!
//! [`write_image`] reads the decompressed image once and, chunk by chunk: a data chunk must
//! hash to its map entry before it is written; a zero chunk must be zeros, and its range is
//! zeroed on the target (`BLKZEROOUT` on a block device, a punched hole in a file) instead of
//! written. Any difference stops the write and names the chunk and its offset. A region can
//! be *held back* (zeroed on the target, its bytes returned): SetupOS holds the HostOS boot
//! partition's first megabytes until everything else is installed, so an install cut short
//! never leaves a disk the firmware would boot.
//!
//! ```
//! use image_stream::{ChunkMap, Target, WriteOptions, write_image};
//! let d = tempfile::tempdir().unwrap();
//! let img = d.path().join("disk.img");
//! let mut data = vec![0u8; 3 << 20];
//! data[(1 << 20) + 7] = 1; // one data chunk between two zero chunks
//! std::fs::write(&img, &data).unwrap();
//! let map = ChunkMap::of_file(&img).unwrap();
//! assert_eq!(map.data_bytes(), 1 << 20);
//! let target = d.path().join("target.img");
//! std::fs::write(&target, vec![0xffu8; 4 << 20]).unwrap();
//! let t = Target::open(&target).unwrap();
//! write_image(&mut data.as_slice(), &map, &t, 0, &WriteOptions::default()).unwrap();
//! assert_eq!(&std::fs::read(&target).unwrap()[..3 << 20], &data[..]);
//! let mut bad = data.clone();
//! bad[5] = 9;
//! let e = write_image(&mut bad.as_slice(), &map, &t, 0, &WriteOptions::default()).unwrap_err();
//! assert!(e.to_string().contains("chunk 0"), "{e}");
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use sha256_hex::Sha256Hex;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

/// Chunk size of every map.
pub const CHUNK: u64 = 1 << 20;
/// Where the image builder puts the SetupOS payload descriptor in the SetupOS root.
pub const PAYLOAD_FILE: &str = "/usr/lib/icos/setup-payload.json";

/// An image as chunks: the SHA-256 of each `chunk_size` bytes (the last chunk may be
/// shorter), `None` for a chunk of zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkMap {
    pub chunk_size: u64,
    pub size: u64,
    pub chunks: Vec<Option<Sha256Hex>>,
}

impl ChunkMap {
    /// The map of an image file; holes are found with `SEEK_DATA` and never read.
    pub fn of_file(path: &Path) -> io::Result<ChunkMap> {
        let f = File::open(path)?;
        let size = f.metadata()?.len();
        let data = data_regions(&f, size)?;
        let n = size.div_ceil(CHUNK);
        let mut chunks = Vec::with_capacity(n as usize);
        let mut buf = vec![0u8; CHUNK as usize];
        for i in 0..n {
            let off = i * CHUNK;
            let len = CHUNK.min(size - off) as usize;
            if !data.iter().any(|(a, b)| *a < off + len as u64 && *b > off) {
                chunks.push(None);
                continue;
            }
            f.read_exact_at(&mut buf[..len], off)?;
            chunks.push(chunk_digest(&buf[..len]));
        }
        Ok(ChunkMap {
            chunk_size: CHUNK,
            size,
            chunks,
        })
    }

    /// Bytes in data (non-zero) chunks.
    pub fn data_bytes(&self) -> u64 {
        (0..self.chunks.len())
            .filter(|i| self.chunks[*i].is_some())
            .map(|i| self.chunk_len(i))
            .sum()
    }

    fn chunk_len(&self, i: usize) -> u64 {
        self.chunk_size.min(self.size - i as u64 * self.chunk_size)
    }

    /// A map that contradicts itself is refused before anything is written.
    fn check(&self) -> Result<(), StreamError> {
        if self.chunk_size == 0 || self.chunks.len() as u64 != self.size.div_ceil(self.chunk_size) {
            return Err(StreamError::BadMap(format!(
                "{} chunks of {} bytes do not make {} bytes",
                self.chunks.len(),
                self.chunk_size,
                self.size
            )));
        }
        Ok(())
    }
}

/// `None` for zeros, else the SHA-256.
fn chunk_digest(data: &[u8]) -> Option<Sha256Hex> {
    if is_zero(data) {
        None
    } else {
        Some(Sha256Hex::from_bytes(Sha256::digest(data).into()))
    }
}

fn is_zero(data: &[u8]) -> bool {
    // Compare in words: this runs over gigabytes of zeros on every install.
    let (head, words, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|b| *b == 0) && words.iter().all(|w| *w == 0) && tail.iter().all(|b| *b == 0)
}

/// Byte ranges of a file that hold data (everything else is a hole).
fn data_regions(f: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on a file descriptor we own; no memory is passed.
        let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after pos
            }
            // A file system without SEEK_DATA: all of it is data.
            return Ok(vec![(0, size)]);
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let end = if end < 0 { size as i64 } else { end };
        out.push((start as u64, end as u64));
        pos = end;
    }
    Ok(out)
}

/// What goes wrong while writing an image.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the chunk map is inconsistent: {0}")]
    BadMap(String),
    #[error("the image is {need} bytes but the target has {have} bytes from offset {offset}")]
    TargetTooSmall { need: u64, have: u64, offset: u64 },
    #[error("chunk {chunk} (image offset {offset}) does not match the verified map: SHA-256 {actual}, expected {expected}")]
    Mismatch {
        chunk: usize,
        offset: u64,
        expected: String,
        actual: String,
    },
    #[error("the image ended after {at} of {size} bytes (truncated)")]
    Truncated { at: u64, size: u64 },
    #[error("the image has more than the {size} bytes its map describes")]
    TooLong { size: u64 },
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StreamError {
    let what = what.into();
    move |error| StreamError::Io { what, error }
}

/// Where an image is written: a block device or a regular file.
pub struct Target {
    path: PathBuf,
    file: File,
    block: bool,
    size: u64,
}

impl Target {
    pub fn open(path: &Path) -> Result<Target, StreamError> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let block = file
            .metadata()
            .map_err(io_err(format!("inspecting {}", path.display())))?
            .file_type()
            .is_block_device();
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(io_err(format!("sizing {}", path.display())))?;
        Ok(Target {
            path: path.to_path_buf(),
            file,
            block,
            size,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write_at(&self, data: &[u8], off: u64) -> Result<(), StreamError> {
        self.file
            .write_all_at(data, off)
            .map_err(io_err(format!("writing {} at {off}", self.path.display())))
    }

    /// Make `[off, off + len)` read as zeros without writing them: `BLKZEROOUT` on a block
    /// device (the device zeroes or unmaps), a punched hole in a file.
    pub fn zero(&self, off: u64, len: u64) -> Result<(), StreamError> {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        let ok = if self.block {
            let range = [off, len];
            // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer.
            unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) == 0 }
        } else {
            // SAFETY: fallocate on our descriptor; no memory is passed.
            unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    off as i64,
                    len as i64,
                ) == 0
            }
        };
        if ok {
            return Ok(());
        }
        // Neither is supported: write the zeros.
        let zeros = vec![0u8; CHUNK.min(len) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], off + done)?;
            done += n as u64;
        }
        Ok(())
    }

    pub fn sync(&self) -> Result<(), StreamError> {
        self.file
            .sync_all()
            .map_err(io_err(format!("syncing {}", self.path.display())))
    }
}

/// `_IO(0x12, 127)`: zero a byte range of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// How [`write_image`] writes.
#[derive(Default)]
pub struct WriteOptions<'a> {
    /// Image byte range `(start, len)` to hold back: zeroed on the target, returned.
    pub hold: Option<(u64, u64)>,
    /// Called after each chunk with the image bytes done.
    pub progress: Option<&'a dyn Fn(u64)>,
}

/// What [`write_image`] did.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub data_bytes: u64,
    pub zero_bytes: u64,
    /// The held-back range's image offset and bytes; write them with [`commit_held`].
    pub held: Option<(u64, Vec<u8>)>,
}

/// Write the image read from `source` at `offset` of `target`, checking every chunk
/// against `map` (see the crate documentation). Nothing is trusted that was not checked:
/// a chunk is written only after it matched.
pub fn write_image(
    source: &mut dyn Read,
    map: &ChunkMap,
    target: &Target,
    offset: u64,
    opts: &WriteOptions,
) -> Result<Written, StreamError> {
    map.check()?;
    if target.size < offset || target.size - offset < map.size {
        return Err(StreamError::TargetTooSmall {
            need: map.size,
            have: target.size.saturating_sub(offset),
            offset,
        });
    }
    let mut out = Written::default();
    let mut held = opts
        .hold
        .map(|(start, len)| (start, vec![0u8; len as usize]));
    let mut buf = vec![0u8; map.chunk_size as usize];
    for (i, expected) in map.chunks.iter().enumerate() {
        let off = i as u64 * map.chunk_size;
        let len = map.chunk_len(i) as usize;
        read_chunk(source, &mut buf[..len], off, map.size)?;
        let chunk = &buf[..len];
        verify_chunk(i, off, chunk, expected)?;
        let keep = held.as_mut().and_then(|h| take_held(h, off, chunk));
        if expected.is_none() || keep.is_some() {
            // Zeros, or data that waits for the commit: the target reads zeros meanwhile.
            target.zero(offset + off, len as u64)?;
            if let Some((s, e)) = keep.filter(|_| expected.is_some()) {
                // The parts of a data chunk outside the held range are written now.
                if s > 0 {
                    target.write_at(&chunk[..s], offset + off)?;
                }
                if e < len {
                    target.write_at(&chunk[e..], offset + off + e as u64)?;
                }
            }
        } else {
            target.write_at(chunk, offset + off)?;
        }
        if expected.is_some() {
            out.data_bytes += len as u64;
        } else {
            out.zero_bytes += len as u64;
        }
        if let Some(p) = opts.progress {
            p(off + len as u64);
        }
    }
    let mut extra = [0u8; 1];
    if source
        .read(&mut extra)
        .map_err(io_err("reading past the image's end"))?
        > 0
    {
        return Err(StreamError::TooLong { size: map.size });
    }
    target.sync()?;
    out.held = held;
    Ok(out)
}

fn read_chunk(
    source: &mut dyn Read,
    buf: &mut [u8],
    off: u64,
    size: u64,
) -> Result<(), StreamError> {
    let mut got = 0;
    while got < buf.len() {
        match source.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(StreamError::Truncated {
                    at: off + got as u64,
                    size,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(format!("reading the image at {}", off + got as u64))(e)),
        }
    }
    Ok(())
}

fn verify_chunk(
    i: usize,
    off: u64,
    chunk: &[u8],
    expected: &Option<Sha256Hex>,
) -> Result<(), StreamError> {
    let actual = chunk_digest(chunk);
    if &actual == expected {
        return Ok(());
    }
    let name = |d: &Option<Sha256Hex>| match d {
        Some(h) => h.to_string(),
        None => "(all zeros)".to_string(),
    };
    Err(StreamError::Mismatch {
        chunk: i,
        offset: off,
        expected: name(expected),
        actual: name(&actual),
    })
}

/// Copy the part of `chunk` (at image offset `off`) inside the held range into it; returns
/// the chunk-relative range held, if any.
fn take_held(held: &mut (u64, Vec<u8>), off: u64, chunk: &[u8]) -> Option<(usize, usize)> {
    let (start, ref mut bytes) = *held;
    let end = start + bytes.len() as u64;
    let (a, b) = (off.max(start), (off + chunk.len() as u64).min(end));
    if a >= b {
        return None;
    }
    bytes[(a - start) as usize..(b - start) as usize]
        .copy_from_slice(&chunk[(a - off) as usize..(b - off) as usize]);
    Some(((a - off) as usize, (b - off) as usize))
}

/// Write a held-back range (image offset, bytes) at `offset` of `target`, durably.
pub fn commit_held(target: &Target, offset: u64, held: &(u64, Vec<u8>)) -> Result<(), StreamError> {
    target.write_at(&held.1, offset + held.0)?;
    target.sync()
}

/// A zstd-compressed image file as a stream.
pub fn open_zstd(path: &Path) -> Result<impl Read, StreamError> {
    let f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    zstd::stream::read::Decoder::new(f).map_err(io_err(format!("reading {}", path.display())))
}

/// One image SetupOS installs, as the SetupOS root describes it (authenticated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadImage {
    pub version: String,
    /// The zstd file on the SetupOS data partition.
    pub file: String,
    pub map: ChunkMap,
    /// The image's partitions by label: `(start, size)` in bytes.
    pub partitions: BTreeMap<String, (u64, u64)>,
}

/// What SetupOS installs ([`PAYLOAD_FILE`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupPayload {
    /// The SetupOS release date (YYYY-MM-DD): SetupOS warns when it is stale.
    pub released: String,
    pub hostos: PayloadImage,
    pub guestos: PayloadImage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path, chunks: &[u8]) -> (PathBuf, Vec<u8>) {
        let mut data = Vec::new();
        for c in chunks {
            data.extend(std::iter::repeat_n(*c, CHUNK as usize));
        }
        data.truncate(data.len() - 1000); // a short last chunk
        let p = dir.join("img");
        std::fs::write(&p, &data).unwrap();
        (p, data)
    }

    #[test]
    fn a_sparse_file_maps_its_holes_without_reading_them() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"x", 40 << 20).unwrap();
        let m = ChunkMap::of_file(&p).unwrap();
        assert_eq!(m.chunks.len(), 64);
        assert_eq!(m.chunks.iter().filter(|c| c.is_some()).count(), 1);
        assert!(m.chunks[40].is_some());
    }

    #[test]
    fn writes_check_every_chunk_and_zero_what_is_zero() {
        let d = tempfile::tempdir().unwrap();
        let (p, data) = image(d.path(), &[0, 7, 0, 9]);
        let map = ChunkMap::of_file(&p).unwrap();
        let tp = d.path().join("t");
        std::fs::write(&tp, vec![0xaau8; 5 << 20]).unwrap();
        let t = Target::open(&tp).unwrap();
        let w = write_image(
            &mut data.as_slice(),
            &map,
            &t,
            1 << 20,
            &WriteOptions::default(),
        )
        .unwrap();
        assert_eq!(w.data_bytes, map.data_bytes());
        let got = std::fs::read(&tp).unwrap();
        assert_eq!(&got[1 << 20..(1 << 20) + data.len()], &data[..]);
        assert_eq!(got[0], 0xaa, "nothing before the offset is touched");
        // Truncated, too long, and a flipped byte in a zero chunk: each named.
        let e = write_image(
            &mut &data[..data.len() - 1],
            &map,
            &t,
            0,
            &WriteOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, StreamError::Truncated { .. }), "{e}");
        let mut long = data.clone();
        long.push(1);
        let e =
            write_image(&mut long.as_slice(), &map, &t, 0, &WriteOptions::default()).unwrap_err();
        assert!(matches!(e, StreamError::TooLong { .. }), "{e}");
        let mut bad = data.clone();
        bad[(2 << 20) + 3] = 1;
        let e =
            write_image(&mut bad.as_slice(), &map, &t, 0, &WriteOptions::default()).unwrap_err();
        assert!(matches!(e, StreamError::Mismatch { chunk: 2, .. }), "{e}");
        let small = d.path().join("small");
        std::fs::write(&small, vec![0u8; 1 << 20]).unwrap();
        let e = write_image(
            &mut data.as_slice(),
            &map,
            &Target::open(&small).unwrap(),
            0,
            &WriteOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, StreamError::TargetTooSmall { .. }), "{e}");
    }

    #[test]
    fn a_held_range_reads_as_zeros_until_committed() {
        let d = tempfile::tempdir().unwrap();
        let (p, data) = image(d.path(), &[3, 5, 7]);
        let map = ChunkMap::of_file(&p).unwrap();
        let tp = d.path().join("t");
        std::fs::write(&tp, vec![0xaau8; 3 << 20]).unwrap();
        let t = Target::open(&tp).unwrap();
        let hold = ((1 << 20) - 100, 300u64);
        let w = write_image(
            &mut data.as_slice(),
            &map,
            &t,
            0,
            &WriteOptions {
                hold: Some(hold),
                progress: None,
            },
        )
        .unwrap();
        let got = std::fs::read(&tp).unwrap();
        let (a, b) = (hold.0 as usize, (hold.0 + hold.1) as usize);
        assert!(got[a..b].iter().all(|x| *x == 0));
        assert_eq!(&got[..a], &data[..a]);
        assert_eq!(&got[b..data.len()], &data[b..]);
        let held = w.held.unwrap();
        commit_held(&t, 0, &held).unwrap();
        assert_eq!(&std::fs::read(&tp).unwrap()[..data.len()], &data[..]);
    }

    #[test]
    fn a_map_that_does_not_add_up_is_refused() {
        let map = ChunkMap {
            chunk_size: CHUNK,
            size: 3 << 20,
            chunks: vec![None],
        };
        let d = tempfile::tempdir().unwrap();
        let tp = d.path().join("t");
        std::fs::write(&tp, vec![0u8; 4 << 20]).unwrap();
        let e = write_image(
            &mut std::io::empty(),
            &map,
            &Target::open(&tp).unwrap(),
            0,
            &WriteOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, StreamError::BadMap(_)), "{e}");
    }
}
