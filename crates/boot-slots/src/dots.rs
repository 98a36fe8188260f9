//! Repair of the `.` and `..` entries that fatfs 0.3 writes into a new directory.
//!
//! fatfs 0.3.6 gives `.` and `..` a long-name entry each (its short-name check refuses a
//! dot), so a new directory starts `[LFN, ".", LFN, ".."]`. The FAT specification wants the
//! two short entries first; `fsck.fat` reports the directory as broken and some firmware
//! refuses to walk it. The fix upstream is unreleased, so after a session that created
//! directories [`crate::Esp::close`] walks the directory tree here and moves the two short
//! entries to the front, marking the long ones deleted. Only directories are visited (found
//! from the root by their entries), never file data, and every chain is bounded by the
//! cluster count, so a damaged filesystem cannot loop us.

use std::collections::BTreeSet;
use std::io::{self, Read, Seek, SeekFrom, Write};

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0F;
const ATTR_DIR: u8 = 0x10;
const DELETED: u8 = 0xE5;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";

#[derive(Clone, Copy, PartialEq, Debug)]
enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

/// The geometry read from the boot sector.
struct Geometry {
    cluster_bytes: u64,
    fat_offset: u64,
    /// FAT12/16 keep the root directory in a fixed region.
    root_region: Option<(u64, u64)>,
    root_cluster: u32,
    data_offset: u64,
    clusters: u32,
    kind: FatKind,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("FAT boot sector: {what}"),
    )
}

fn u16_at(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

impl Geometry {
    fn read<IO: Read + Seek>(io: &mut IO) -> io::Result<Geometry> {
        let mut b = [0u8; 512];
        io.seek(SeekFrom::Start(0))?;
        io.read_exact(&mut b)?;
        let sector = u16_at(&b, 11);
        let per_cluster = u64::from(b[13]);
        let reserved = u16_at(&b, 14);
        let fats = u64::from(b[16]);
        let root_entries = u16_at(&b, 17);
        let total = match u16_at(&b, 19) {
            0 => u32_at(&b, 32),
            n => n,
        };
        let fat_sectors = match u16_at(&b, 22) {
            0 => u32_at(&b, 36),
            n => n,
        };
        if !(512..=4096).contains(&sector) || per_cluster == 0 || fats == 0 {
            return Err(bad("sector or cluster size is not valid"));
        }
        let root_sectors = (root_entries * ENTRY as u64).div_ceil(sector);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        let clusters = total
            .checked_sub(data_sector)
            .ok_or_else(|| bad("data region starts past the end"))?
            / per_cluster;
        let kind = match clusters {
            0..4085 => FatKind::Fat12,
            4085..65525 => FatKind::Fat16,
            _ => FatKind::Fat32,
        };
        let root_offset = (reserved + fats * fat_sectors) * sector;
        Ok(Geometry {
            cluster_bytes: per_cluster * sector,
            fat_offset: reserved * sector,
            root_region: (kind != FatKind::Fat32)
                .then_some((root_offset, root_entries * ENTRY as u64)),
            root_cluster: u32_at(&b, 44) as u32,
            data_offset: data_sector * sector,
            clusters: u32::try_from(clusters).map_err(|_| bad("too many clusters"))?,
            kind,
        })
    }

    fn first_cluster(&self, entry: &[u8]) -> u32 {
        let hi = if self.kind == FatKind::Fat32 {
            u16_at(entry, 20) << 16
        } else {
            0
        };
        (hi | u16_at(entry, 26)) as u32
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + u64::from(c - 2) * self.cluster_bytes
    }

    fn valid(&self, c: u32) -> bool {
        c >= 2 && c < self.clusters + 2
    }

    /// The next cluster of a chain, or `None` at its end (or at anything that is not a
    /// cluster of this filesystem).
    fn next<IO: Read + Seek>(&self, io: &mut IO, c: u32) -> io::Result<Option<u32>> {
        let mut b = [0u8; 4];
        let (at, len) = match self.kind {
            FatKind::Fat12 => (u64::from(c) + u64::from(c) / 2, 2),
            FatKind::Fat16 => (u64::from(c) * 2, 2),
            FatKind::Fat32 => (u64::from(c) * 4, 4),
        };
        io.seek(SeekFrom::Start(self.fat_offset + at))?;
        io.read_exact(&mut b[..len])?;
        let raw = u32::from_le_bytes(b);
        let n = match self.kind {
            FatKind::Fat12 if c % 2 == 1 => raw >> 4,
            FatKind::Fat12 => raw & 0xFFF,
            FatKind::Fat16 => raw & 0xFFFF,
            FatKind::Fat32 => raw & 0x0FFF_FFFF,
        };
        Ok(self.valid(n).then_some(n))
    }

    /// The byte ranges of a directory's chain, bounded by the cluster count.
    fn chain<IO: Read + Seek>(&self, io: &mut IO, first: u32) -> io::Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut c = Some(first);
        while let Some(cl) = c {
            if out.len() > self.clusters as usize {
                return Err(bad("a directory's cluster chain loops"));
            }
            out.push((self.cluster_offset(cl), self.cluster_bytes));
            c = self.next(io, cl)?;
        }
        Ok(out)
    }
}

/// Subdirectories named in a directory's entries (first clusters).
fn subdirs(g: &Geometry, data: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in data.chunks_exact(ENTRY) {
        match e[0] {
            0 => break,
            DELETED => continue,
            _ => {}
        }
        let attr = e[11];
        if attr == ATTR_LFN || attr & ATTR_DIR == 0 || e[..11] == *DOT || e[..11] == *DOTDOT {
            continue;
        }
        let c = g.first_cluster(e);
        if g.valid(c) {
            out.push(c);
        }
    }
    out
}

/// If a directory's first entries are fatfs's `[LFN, ".", LFN, ".."]`, the fixed form.
fn fixed_head(head: &[u8]) -> Option<Vec<u8>> {
    let e = |i: usize| &head[i * ENTRY..(i + 1) * ENTRY];
    let lfn = |i: usize| e(i)[11] == ATTR_LFN && e(i)[0] != DELETED;
    if !(lfn(0) && e(1)[..11] == *DOT && lfn(2) && e(3)[..11] == *DOTDOT) {
        return None;
    }
    let mut gone = [0u8; ENTRY];
    gone[0] = DELETED;
    Some([e(1), e(3), &gone[..], &gone[..]].concat())
}

/// Walk every directory and fix the ones fatfs created. Returns how many were fixed.
pub(crate) fn repair<IO: Read + Write + Seek>(io: &mut IO) -> io::Result<usize> {
    let g = Geometry::read(io)?;
    let read = |io: &mut IO, ranges: &[(u64, u64)]| -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        for &(at, len) in ranges {
            let mut b = vec![0u8; len as usize];
            io.seek(SeekFrom::Start(at))?;
            io.read_exact(&mut b)?;
            v.extend_from_slice(&b);
        }
        Ok(v)
    };
    let root = match g.root_region {
        Some(r) => vec![r],
        None => g.chain(io, g.root_cluster)?,
    };
    let mut todo = subdirs(&g, &read(io, &root)?);
    let mut seen = BTreeSet::new();
    let mut fixed = 0;
    while let Some(dir) = todo.pop() {
        if !seen.insert(dir) {
            continue;
        }
        let ranges = g.chain(io, dir)?;
        let data = read(io, &ranges)?;
        if data.len() >= 4 * ENTRY {
            let old = &data[..4 * ENTRY];
            let mut head = fixed_head(old).unwrap_or_else(|| old.to_vec());
            // On FAT32 a `..` that means the root says cluster 0; fatfs writes the root's.
            let dotdot = &mut head[ENTRY..2 * ENTRY];
            if g.kind == FatKind::Fat32
                && dotdot[..11] == *DOTDOT
                && g.first_cluster(dotdot) == g.root_cluster
            {
                dotdot[20..22].fill(0);
                dotdot[26..28].fill(0);
            }
            if head != old {
                io.seek(SeekFrom::Start(g.cluster_offset(dir)))?;
                io.write_all(&head)?;
                fixed += 1;
            }
        }
        todo.extend(subdirs(&g, &data));
    }
    io.flush()?;
    Ok(fixed)
}
