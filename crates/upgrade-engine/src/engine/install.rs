//! Installing a package into the inactive slot: the stages around the one-pass read
//! (`update_package::reader`), and the sink that writes each part where it belongs — kernel
//! and initrd onto the ESP, `root.img` onto the slot's root partition with its verity
//! level-0 hashes computed on the way.

use super::{io_err, slot_lower, Engine, EngineError, InstallReport, Mode};
use crate::state::{self, InProgress, InstallResult, Installed};
use crate::verity::{self, Level0};
use boot_slots::EspError;
use disk_layout::{FoundPartition, Slot, Window};
use std::io::Read;
use std::os::unix::fs::FileExt;
use update_package::reader::{read_package, PackageSink, ReadError};
use update_package::{Part, Sha256Hex, UpdateManifest};

/// Copy buffer for the root image; with the tar reader's and fatfs's small buffers, the
/// engine's memory stays within a few MiB whatever the package size.
const CHUNK: usize = 1 << 20;
/// Durability points while writing a root image (also crash-test cut points).
const SYNC_EVERY: u64 = 32 << 20;
/// Bytes wiped at each end of a slot's /var (filesystem signatures live there).
const VAR_WIPE: u64 = 1 << 20;

impl Engine {
    /// Stream a package into the inactive slot. See the crate documentation for the checks.
    pub fn install(
        &mut self,
        source: &mut dyn Read,
        expected: &Sha256Hex,
    ) -> Result<InstallReport, EngineError> {
        self.lock()?;
        let target = self.begin_install()?;
        let result = self.stream_package(source, expected, target);
        self.finish_install(target, result)
    }

    /// Check the slots, record the start, and take the target slot's boot entries away: from
    /// here on it cannot boot until the install is complete.
    fn begin_install(&mut self) -> Result<Slot, EngineError> {
        let entries = self.entries()?;
        let cur = self.require_confirmed_current(&entries)?;
        let target = cur.other();
        if let Mode::Running(r) = self.mode {
            if r == target {
                return Err(EngineError::RunningSlot(target));
            }
        }
        let mut st = self.read_state()?;
        st.in_progress = Some(InProgress {
            operation: "install".into(),
            slot: target,
            version: None,
            started_unix: state::now_unix(),
        });
        if st.installed.as_ref().is_some_and(|i| i.slot == target) {
            st.installed = None;
        }
        if st.pending.as_ref().is_some_and(|p| p.slot == target) {
            st.pending = None;
        }
        self.write_state(&st, "record install start")?;
        self.with_esp(|esp| Ok(esp.remove_entries(target)?))?;
        self.step("remove the target slot's boot entries")?;
        Ok(target)
    }

    /// Record the outcome; only a complete, verified install gets a fresh `/var`.
    fn finish_install(
        &mut self,
        target: Slot,
        result: Result<(InstallReport, String), EngineError>,
    ) -> Result<InstallReport, EngineError> {
        let mut st = self.read_state()?;
        st.in_progress = None;
        match result {
            Ok((report, boot_options)) => {
                self.wipe_var(target)?;
                st.installed = Some(Installed {
                    slot: target,
                    version: report.version.clone(),
                    package_sha256: report.package_sha256.to_string(),
                    boot_options,
                });
                st.last_install = Some(InstallResult {
                    version: Some(report.version.clone()),
                    slot: target,
                    ok: true,
                    message: format!("installed {} bytes", report.package_bytes),
                    unix: state::now_unix(),
                });
                self.write_state(&st, "record install done")?;
                Ok(report)
            }
            Err(e) => {
                st.last_install = Some(InstallResult {
                    version: None,
                    slot: target,
                    ok: false,
                    message: e.to_string(),
                    unix: state::now_unix(),
                });
                // Best effort: the error itself matters more than recording it.
                let _ = self.write_state(&st, "record install failure");
                Err(e)
            }
        }
    }

    fn wipe_var(&mut self, slot: Slot) -> Result<(), EngineError> {
        let p = self.partition(&format!("{slot}_var"))?.clone();
        let zeros = vec![0u8; VAR_WIPE as usize];
        for off in [p.start, p.start + p.size - VAR_WIPE] {
            self.file
                .write_all_at(&zeros, off)
                .map_err(io_err("wiping /var of the target slot on", &self.disk))?;
        }
        self.step("wipe the target slot's /var")
    }

    /// The one pass over the package, then the checks that need all of it: the package's
    /// SHA-256 and the verity tree on the partition.
    fn stream_package(
        &mut self,
        source: &mut dyn Read,
        expected: &Sha256Hex,
        target: Slot,
    ) -> Result<(InstallReport, String), EngineError> {
        let root_part = self.partition(&format!("{target}_root"))?.clone();
        let esp_part = self.partition("esp")?.clone();
        // A valid package cannot be larger than what it fills plus tar overhead.
        let limit = root_part.size + esp_part.size + (1 << 20);
        let mut sink = SlotWriter {
            engine: self,
            target,
            root_part: root_part.clone(),
            manifest: None,
            level0: None,
        };
        let streamed = read_package(source, limit, &mut sink)?;
        let level0 = sink.level0.expect("root.img was read");
        if streamed.sha256 != *expected {
            return Err(EngineError::PackageHash {
                expected: expected.clone(),
                actual: streamed.sha256,
            });
        }
        let m = streamed.manifest;
        self.verify_written_tree(&m, &root_part, level0)?;
        let boot_options = self.boot_options_for(&m, target)?;
        Ok((
            InstallReport {
                slot: target,
                version: m.version.clone(),
                package_bytes: streamed.bytes,
                package_sha256: streamed.sha256,
            },
            boot_options,
        ))
    }

    /// The tree on the partition describes exactly the data written and ends in the
    /// manifest's root hash.
    fn verify_written_tree(
        &self,
        m: &UpdateManifest,
        root_part: &FoundPartition,
        (digest, data_blocks): ([u8; 32], u64),
    ) -> Result<(), EngineError> {
        if data_blocks != m.verity.data_blocks {
            return Err(EngineError::Part {
                part: "root.img".into(),
                detail: format!(
                    "{data_blocks} data blocks, the verity parameters say {}",
                    m.verity.data_blocks
                ),
            });
        }
        let salt = hex::decode(&m.verity.salt).expect("validated");
        let tree_len = verity::tree_bytes(m.verity.data_blocks);
        let f = self
            .file
            .try_clone()
            .map_err(io_err("opening", &self.disk))?;
        let mut tree = Window::new(f, root_part.start + m.verity.hash_offset, tree_len);
        verity::verify_tree(
            &mut tree,
            &salt,
            m.verity.data_blocks,
            &digest,
            m.verity.root_hash.as_str(),
        )?;
        Ok(())
    }

    /// Whether this disk can take the package: right kind, root image fits its partition
    /// and its verity tree, kernel and initrd fit the ESP.
    fn check_fits(
        &self,
        m: &UpdateManifest,
        target: Slot,
        root_part: &FoundPartition,
    ) -> Result<(), EngineError> {
        if m.kind != self.kind {
            return Err(EngineError::WrongKind {
                package: m.kind,
                node: self.kind,
            });
        }
        let root = m.part("root.img").expect("validated").size;
        if root > root_part.size {
            return Err(EngineError::NoRoom {
                what: format!("root.img of {}", m.version),
                partition: root_part.label.clone(),
                need: root,
                have: root_part.size,
            });
        }
        let tree = verity::tree_bytes(m.verity.data_blocks);
        if m.verity.hash_offset + tree != root {
            return Err(update_package::PackageError::BadManifest(format!(
                "root.img is {root} bytes but data plus hash tree are {}",
                m.verity.hash_offset + tree
            ))
            .into());
        }
        self.check_esp_room(m, target)
    }

    fn check_esp_room(&self, m: &UpdateManifest, target: Slot) -> Result<(), EngineError> {
        let need: u64 = ["vmlinuz", "initrd.img"]
            .iter()
            .map(|n| m.part(n).expect("validated").size)
            .sum();
        let (free, existing) = self.with_esp(|esp| {
            let mut existing = 0u64;
            for n in ["vmlinuz", "initrd.img"] {
                existing += esp
                    .file_size(&format!("icos/{}/{n}", slot_lower(target)))
                    .unwrap_or(0);
            }
            Ok((esp.free_bytes()?, existing))
        })?;
        // Cluster rounding: keep 1 MiB of slack.
        if need + (1 << 20) > free + existing {
            return Err(EngineError::NoRoom {
                what: format!("kernel and initrd of {}", m.version),
                partition: "esp".into(),
                need,
                have: free + existing,
            });
        }
        Ok(())
    }

    /// Kernel or initrd onto the target slot's folder on the ESP.
    fn write_boot_file(
        &mut self,
        target: Slot,
        part: &Part,
        data: &mut dyn Read,
    ) -> Result<(), EngineError> {
        let path = format!("icos/{}/{}", slot_lower(target), part.name);
        let written = self.with_esp(|esp| Ok(esp.write_file(&path, data)))?;
        match written {
            Ok(_) => Ok(()),
            // The reader names a source that ended early; anything else is the ESP's.
            Err(EspError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                Err(ReadError::io(&part.name, source).into())
            }
            Err(other) => Err(other.into()),
        }
    }

    /// `root.img` onto the slot's root partition in 1 MiB chunks, syncing every 32 MiB;
    /// returns the verity level-0 digest and the number of data blocks seen.
    fn write_root(
        &mut self,
        data: &mut dyn Read,
        m: &UpdateManifest,
        part: &FoundPartition,
    ) -> Result<([u8; 32], u64), EngineError> {
        let total = m.part("root.img").expect("validated").size;
        let salt = hex::decode(&m.verity.salt).expect("validated");
        let mut level0 = Level0::new(&salt);
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        let mut since_sync = 0u64;
        while off < total {
            let want = ((total - off) as usize).min(CHUNK);
            let n = read_full(data, &mut buf[..want])
                .map_err(|e| EngineError::from(ReadError::io("root.img", e)))?;
            if n == 0 {
                return Err(EngineError::Truncated {
                    bytes: off,
                    what: format!("root.img (byte {off} of {total})"),
                });
            }
            let chunk = &buf[..n];
            if off < m.verity.hash_offset {
                let data_end = (m.verity.hash_offset - off).min(n as u64) as usize;
                level0.update(&chunk[..data_end]);
            }
            self.file
                .write_all_at(chunk, part.start + off)
                .map_err(io_err(
                    format!("writing root.img into partition {} of", part.label),
                    &self.disk,
                ))?;
            off += n as u64;
            since_sync += n as u64;
            if since_sync >= SYNC_EVERY {
                since_sync = 0;
                self.step("write root.img")?;
            }
        }
        let (digest, blocks, aligned) = level0.finish();
        if !aligned {
            return Err(EngineError::Part {
                part: "root.img".into(),
                detail: "verity data area is not a whole number of 4 KiB blocks".into(),
            });
        }
        Ok((digest, blocks))
    }
}

/// The engine's sink for the package reader: each part to its place in the target slot.
struct SlotWriter<'e> {
    engine: &'e mut Engine,
    target: Slot,
    root_part: FoundPartition,
    manifest: Option<UpdateManifest>,
    level0: Option<([u8; 32], u64)>,
}

impl PackageSink for SlotWriter<'_> {
    type Error = EngineError;

    fn manifest(&mut self, m: &UpdateManifest) -> Result<(), EngineError> {
        self.engine.check_fits(m, self.target, &self.root_part)?;
        let mut st = self.engine.read_state()?;
        if let Some(ip) = st.in_progress.as_mut() {
            ip.version = Some(m.version.clone());
        }
        self.engine.write_state(&st, "record install version")?;
        self.manifest = Some(m.clone());
        Ok(())
    }

    fn part(&mut self, part: &Part, data: &mut dyn Read) -> Result<(), EngineError> {
        match part.name.as_str() {
            "root.img" => {
                let m = self.manifest.as_ref().expect("the manifest comes first");
                self.level0 = Some(self.engine.write_root(data, m, &self.root_part)?);
                Ok(())
            }
            _ => self.engine.write_boot_file(self.target, part, data),
        }
    }

    fn part_checked(&mut self, part: &Part) -> Result<(), EngineError> {
        self.engine.step(&format!("write {} (checked)", part.name))
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
