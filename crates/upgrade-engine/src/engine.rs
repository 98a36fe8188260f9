//! The engine proper: one node disk (a disk image file or the running system's disk), its
//! slots, its ESP, and the operations install → activate → confirm / rollback. Installing
//! is in [`install`].

mod install;

use crate::health::HealthCheck;
use crate::state::{
    self, Confirmed, ImageInfo, InProgress, InstallResult, Pending, Rollback, State,
};
use crate::verity::VerityError;
use boot_slots::{next_boot, BootEntry, EntryName, Esp, EspError, ENTRIES_DIR};
use disk_layout::{FoundPartition, Slot, Window};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use update_package::reader::ReadError;
use update_package::{ImageKind, PackageError, Sha256Hex, UpdateManifest};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Esp(#[from] EspError),
    #[error(transparent)]
    Layout(#[from] disk_layout::LayoutError),
    #[error("this disk has no partition `{0}`; it is not an icos A/B disk")]
    MissingPartition(String),
    #[error("the running system's disk could not be found: {0}")]
    NoRunningDisk(String),
    #[error("the running slot {slot} is not confirmed yet (entry {entry}): confirm or roll back before installing")]
    NotConfirmed { slot: Slot, entry: String },
    #[error("slot {0} has no boot entry: the disk has nothing to run")]
    NoEntry(Slot),
    #[error("refusing to write slot {0}: it is the running slot")]
    RunningSlot(Slot),
    #[error("package is for {package}, this disk runs {node}")]
    WrongKind { package: ImageKind, node: ImageKind },
    #[error("update package: {0}")]
    Package(#[from] PackageError),
    #[error("update package is truncated: it ended after {bytes} bytes, while reading {what}")]
    Truncated { bytes: u64, what: String },
    #[error("update package is larger than {limit} bytes, more than this disk's slot can hold; refusing to read further")]
    Oversized { limit: u64 },
    #[error("update package SHA-256 is {actual}, expected {expected}")]
    PackageHash {
        expected: Sha256Hex,
        actual: Sha256Hex,
    },
    #[error("update package part {part}: {detail}")]
    Part { part: String, detail: String },
    #[error("{what} needs {need} bytes, partition `{partition}` has {have}")]
    NoRoom {
        what: String,
        partition: String,
        need: u64,
        have: u64,
    },
    #[error(transparent)]
    Verity(#[from] VerityError),
    #[error("nothing is installed in slot {0} to activate (run `icos upgrade install` first)")]
    NothingInstalled(Slot),
    #[error("cannot roll back: slot {slot} {why}")]
    NoFallback { slot: Slot, why: String },
    #[error("another icos upgrade operation is running on {0}")]
    Busy(PathBuf),
    #[error("the state file {0} is not valid JSON: {1}")]
    State(String, String),
}

impl From<ReadError> for EngineError {
    fn from(e: ReadError) -> EngineError {
        match e {
            ReadError::Package(p) => EngineError::Package(p),
            ReadError::Truncated { bytes, what } => EngineError::Truncated { bytes, what },
            ReadError::Oversized { limit } => EngineError::Oversized { limit },
            ReadError::Io { what, error } => EngineError::Io {
                what: format!("reading {what} from"),
                path: PathBuf::from("the package"),
                source: error,
            },
        }
    }
}

fn io_err(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> EngineError {
    let what = what.into();
    let path = path.to_path_buf();
    move |source| EngineError::Io { what, path, source }
}

/// Whether the engine acts on the system it runs on, or on a disk image offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The booted slot (from the kernel command line).
    Running(Slot),
    /// A disk image: the "current" slot is the one that would boot next.
    Offline,
}

/// What a slot holds, as seen from its boot entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// Blessed: boots without counting.
    Confirmed,
    /// On trial: `tries_left` boots before systemd-boot gives up on it.
    Trial { tries_left: u32 },
    /// Tries used up: systemd-boot will not pick it.
    Bad,
    /// No boot entry.
    Empty,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    pub version: Option<String>,
    pub state: SlotState,
    pub entry: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub kind: ImageKind,
    pub disk: String,
    pub mode: String,
    pub current_slot: Slot,
    pub current_version: Option<String>,
    pub next_boot: Option<Slot>,
    pub slots: Vec<SlotStatus>,
    /// Human-readable notes: interrupted operations, pending trials, last results.
    pub notes: Vec<String>,
    pub state: State,
}

/// Result of [`Engine::install`].
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    pub slot: Slot,
    pub version: String,
    pub package_bytes: u64,
    pub package_sha256: Sha256Hex,
}

/// Result of [`Engine::confirm`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ConfirmOutcome {
    /// The running slot was already confirmed; nothing to do.
    AlreadyConfirmed,
    /// The trial slot passed its health check and is now confirmed.
    Confirmed { version: String },
    /// The health check failed: the other slot boots next (reboot to use it).
    RolledBack { reason: String },
}

/// The upgrade engine bound to one disk.
pub struct Engine {
    disk: PathBuf,
    file: File,
    partitions: Vec<FoundPartition>,
    kind: ImageKind,
    mode: Mode,
    console: bool,
    crash_at: Option<u64>,
    steps: u64,
    lock: Option<File>,
}

fn slot_lower(s: Slot) -> String {
    s.as_str().to_ascii_lowercase()
}

impl Engine {
    /// Open a disk image (offline servicing, tests).
    pub fn open_disk(path: &Path) -> Result<Engine, EngineError> {
        Self::open(path, Mode::Offline, false)
    }

    /// Open the disk of the running system: the slot comes from `icos.slot=` on the kernel
    /// command line, the disk is the one holding the `icos.root=PARTUUID=` partition.
    pub fn open_running() -> Result<Engine, EngineError> {
        let cmdline = std::fs::read_to_string("/proc/cmdline")
            .map_err(|e| EngineError::NoRunningDisk(format!("/proc/cmdline: {e}")))?;
        let (slot, partuuid) = parse_cmdline(&cmdline)?;
        let disk = find_disk_with_partuuid(&partuuid)?;
        Self::open(&disk, Mode::Running(slot), true)
    }

    /// Take the engine lock for changes to this disk: operations must not interleave. The
    /// running system locks a file in /run (udev holds short shared locks on block devices
    /// while it probes them, so the device itself is not used); a disk image locks itself.
    /// Read-only commands (status, metrics) do not take it.
    pub fn lock(&mut self) -> Result<(), EngineError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let (path, file) = match self.mode {
            Mode::Running(_) => {
                let dir = Path::new("/run/icos");
                std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
                let p = dir.join("upgrade.lock");
                let f = File::create(&p).map_err(io_err("creating", &p))?;
                (p, f)
            }
            Mode::Offline => (
                self.disk.clone(),
                self.file
                    .try_clone()
                    .map_err(io_err("opening", &self.disk))?,
            ),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(EngineError::Busy(self.disk.clone()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking", &path)(e)),
        }
        self.lock = Some(file);
        Ok(())
    }

    /// [`Engine::lock`], waiting up to `wait` while another operation holds the lock (the
    /// boot-time confirmation holds it until the trial is healthy, up to its deadline).
    /// `waiting` runs once, before the first wait, so a caller can say why it pauses.
    pub fn lock_within(
        &mut self,
        wait: Duration,
        waiting: impl FnOnce(),
    ) -> Result<(), EngineError> {
        let deadline = Instant::now() + wait;
        let mut waiting = Some(waiting);
        loop {
            match self.lock() {
                Err(EngineError::Busy(_)) if Instant::now() < deadline => {
                    if let Some(say) = waiting.take() {
                        say();
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }

    fn open(path: &Path, mode: Mode, console: bool) -> Result<Engine, EngineError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("opening disk", path))?;
        let partitions = disk_layout::read_partitions(path)?;
        // Test builds only: images ship without the crash harness.
        #[cfg(feature = "crash-points")]
        let crash_at = std::env::var("ICOS_UPGRADE_CRASH_AT")
            .ok()
            .and_then(|v| v.parse().ok());
        #[cfg(not(feature = "crash-points"))]
        let crash_at = None;
        let mut e = Engine {
            disk: path.to_path_buf(),
            file,
            partitions,
            kind: ImageKind::Guestos,
            mode,
            console,
            crash_at,
            steps: 0,
            lock: None,
        };
        for label in ["esp", "A_root", "B_root", "A_var", "B_var"] {
            e.partition(label)?;
        }
        let info = e.with_esp(|esp| Ok(esp.read_file(state::IMAGE_PATH)))?;
        e.kind = match info {
            Ok(bytes) => {
                serde_json::from_slice::<ImageInfo>(&bytes)
                    .map_err(|err| EngineError::State(state::IMAGE_PATH.into(), err.to_string()))?
                    .kind
            }
            Err(_) => {
                return Err(EngineError::MissingPartition(format!(
                    "esp:{}",
                    state::IMAGE_PATH
                )))
            }
        };
        Ok(e)
    }

    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Write steps taken so far (for the crash harness).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    fn partition(&self, label: &str) -> Result<&FoundPartition, EngineError> {
        self.partitions
            .iter()
            .find(|p| p.label == label)
            .ok_or_else(|| EngineError::MissingPartition(label.to_string()))
    }

    /// A durable write step: everything before it is on disk. With the `crash-points`
    /// feature and `ICOS_UPGRADE_CRASH_AT=N` the process dies right after step N, like a
    /// power cut (no cleanup runs).
    fn step(&mut self, what: &str) -> Result<(), EngineError> {
        self.file
            .sync_all()
            .map_err(io_err("syncing", &self.disk))?;
        self.steps += 1;
        tracing::debug!(step = self.steps, "{what}");
        if self.crash_at == Some(self.steps) {
            eprintln!(
                "icos upgrade: simulated power cut after step {} ({what})",
                self.steps
            );
            std::process::exit(137);
        }
        Ok(())
    }

    fn with_esp<T>(
        &self,
        f: impl FnOnce(&mut Esp<Window<File>>) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let p = self.partition("esp")?;
        let file = self
            .file
            .try_clone()
            .map_err(io_err("opening", &self.disk))?;
        let mut esp = Esp::open(Window::new(file, p.start, p.size))?;
        let out = f(&mut esp)?;
        esp.close()?;
        Ok(out)
    }

    pub fn read_state(&self) -> Result<State, EngineError> {
        match self.with_esp(|esp| Ok(esp.read_file(state::STATE_PATH)))? {
            Err(_) => Ok(State::default()),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| EngineError::State(state::STATE_PATH.into(), e.to_string())),
        }
    }

    /// Replace the state file (temporary name, then rename: old or new, never half).
    fn write_state(&mut self, s: &State, what: &str) -> Result<(), EngineError> {
        let json = serde_json::to_vec_pretty(s).expect("state serializes");
        self.with_esp(|esp| {
            let tmp = format!("{}.tmp", state::STATE_PATH);
            esp.write_file(&tmp, &mut json.as_slice())?;
            if esp.exists(state::STATE_PATH) {
                esp.remove(state::STATE_PATH)?;
            }
            esp.rename(&tmp, state::STATE_PATH)?;
            Ok(())
        })?;
        self.step(what)
    }

    pub fn entries(&self) -> Result<Vec<BootEntry>, EngineError> {
        self.with_esp(|esp| Ok(esp.entries()?))
    }

    /// The slot the engine treats as "running": the booted one, or offline the next to boot.
    pub fn current_slot(&self) -> Result<Slot, EngineError> {
        match self.mode {
            Mode::Running(s) => Ok(s),
            Mode::Offline => {
                let entries = self.entries()?;
                next_boot(&entries)
                    .map(|e| e.slot)
                    .ok_or(EngineError::NoEntry(Slot::A))
            }
        }
    }

    fn slot_status(entry: Option<&BootEntry>, slot: Slot) -> SlotStatus {
        match entry {
            None => SlotStatus {
                slot,
                version: None,
                state: SlotState::Empty,
                entry: None,
            },
            Some(e) => SlotStatus {
                slot,
                version: Some(e.version.clone()),
                state: match e.tries_left {
                    None => SlotState::Confirmed,
                    Some(0) => SlotState::Bad,
                    Some(n) => SlotState::Trial { tries_left: n },
                },
                entry: Some(e.file_name()),
            },
        }
    }

    pub fn status(&self) -> Result<Status, EngineError> {
        let entries = self.entries()?;
        let st = self.read_state()?;
        let current = self.current_slot()?;
        let slots: Vec<SlotStatus> = [Slot::A, Slot::B]
            .into_iter()
            .map(|s| Self::slot_status(entries.iter().find(|e| e.slot == s), s))
            .collect();
        let mut notes = Vec::new();
        if let Some(ip) = &st.in_progress {
            let entry = entries.iter().find(|e| e.slot == ip.slot);
            let what = ip.version.as_deref().unwrap_or("a package");
            let consequence = match (ip.operation.as_str(), entry) {
                ("install", _) => format!(
                    "slot {} has no boot entry and will not boot until a new install completes",
                    ip.slot
                ),
                ("activate", None) => format!(
                    "slot {} got no boot entry; it is still installed and can be activated again",
                    ip.slot
                ),
                ("activate", Some(_)) => format!(
                    "its boot entry was written: slot {} boots next, on trial",
                    ip.slot
                ),
                (_, Some(e)) => format!("slot {} is now {}", ip.slot, describe_entry(e)),
                (_, None) => format!("slot {} has no boot entry", ip.slot),
            };
            notes.push(format!(
                "{} of {what} (slot {}) was interrupted; {consequence}",
                ip.operation, ip.slot
            ));
        }
        if let Some(p) = &st.pending {
            let entry = entries.iter().find(|e| e.slot == p.slot);
            let what = match entry.map(|e| e.tries_left) {
                Some(Some(0)) => {
                    "its boot tries are used up; it will be rolled back at the next boot"
                        .to_string()
                }
                Some(Some(n)) => {
                    format!("on trial, {n} boot tries left, waiting for a healthy boot to confirm")
                }
                Some(None) => {
                    "booted and confirmed (record is finalized at the next check)".to_string()
                }
                None => "activation was interrupted before its boot entry was written".to_string(),
            };
            notes.push(format!("version {} in slot {}: {what}", p.version, p.slot));
        }
        if let Some(i) = &st.installed {
            if entries.iter().all(|e| e.slot != i.slot) {
                notes.push(format!(
                    "version {} is installed in slot {} and ready to activate",
                    i.version, i.slot
                ));
            }
        }
        if let Some(r) = st.rollbacks.last() {
            notes.push(format!(
                "last rollback: {} (slot {}) -> {} (slot {}): {}",
                r.from_version, r.from_slot, r.to_version, r.to_slot, r.reason
            ));
        }
        Ok(Status {
            kind: self.kind,
            disk: self.disk.display().to_string(),
            mode: match self.mode {
                Mode::Running(_) => "running".into(),
                Mode::Offline => "offline".into(),
            },
            current_slot: current,
            current_version: entries
                .iter()
                .find(|e| e.slot == current)
                .map(|e| e.version.clone()),
            next_boot: next_boot(&entries).map(|e| e.slot),
            slots,
            notes,
            state: st,
        })
    }

    fn say(&self, line: &str) {
        println!("{line}");
        if self.console {
            daemon_support::Console::system().line(line);
        } else {
            tracing::info!("{line}");
        }
    }

    fn require_confirmed_current(&self, entries: &[BootEntry]) -> Result<Slot, EngineError> {
        let cur = self.current_slot()?;
        let e = entries
            .iter()
            .find(|e| e.slot == cur)
            .ok_or(EngineError::NoEntry(cur))?;
        if e.tries_left.is_some() {
            return Err(EngineError::NotConfirmed {
                slot: cur,
                entry: e.file_name(),
            });
        }
        Ok(cur)
    }

    fn boot_options_for(&self, m: &UpdateManifest, slot: Slot) -> Result<String, EngineError> {
        let root = self.partition(&format!("{slot}_root"))?.guid.to_string();
        let var = self.partition(&format!("{slot}_var"))?.guid.to_string();
        Ok(m.boot_options(Some(slot.as_str()), &root, Some(&var)))
    }

    /// Make the installed slot boot next, on trial: `tries` boots to succeed before
    /// systemd-boot falls back to the current slot.
    pub fn activate(&mut self, tries: u32) -> Result<BootEntry, EngineError> {
        self.lock()?;
        let tries = tries.clamp(1, 9);
        let entries = self.entries()?;
        let cur = self.require_confirmed_current(&entries)?;
        let target = cur.other();
        let mut st = self.read_state()?;
        let installed = st
            .installed
            .clone()
            .filter(|i| i.slot == target)
            .ok_or(EngineError::NothingInstalled(target))?;
        if entries.iter().any(|e| e.slot == target) {
            return Err(EngineError::NothingInstalled(target));
        }
        let files_ok = self.with_esp(|esp| {
            Ok(esp.exists(&BootEntry::kernel_path(target))
                && esp.exists(&BootEntry::initrd_path(target)))
        })?;
        if !files_ok {
            return Err(EngineError::NothingInstalled(target));
        }
        let cur_version = entries
            .iter()
            .find(|e| e.slot == cur)
            .map(|e| e.version.clone())
            .unwrap_or_default();
        let generation = entries.iter().map(|e| e.generation).max().unwrap_or(0) + 1;
        let mut entry = BootEntry::new(
            target,
            generation,
            &format!("icos {} {}", self.kind, installed.version),
            &installed.version,
            &installed.boot_options,
        );
        entry.tries_left = Some(tries);
        st.pending = Some(Pending {
            slot: target,
            version: installed.version.clone(),
            from_slot: cur,
            from_version: cur_version,
            tries,
        });
        st.in_progress = Some(InProgress {
            operation: "activate".into(),
            slot: target,
            version: Some(installed.version.clone()),
            started_unix: state::now_unix(),
        });
        self.write_state(&st, "record activation")?;
        let final_name = format!("{ENTRIES_DIR}/{}", entry.file_name());
        let tmp = format!("{final_name}.tmp");
        self.with_esp(|esp| Ok(esp.write_file(&tmp, &mut entry.render().as_bytes())?))?;
        self.step("write the boot entry (temporary name)")?;
        self.with_esp(|esp| Ok(esp.rename(&tmp, &final_name)?))?;
        self.step("rename the boot entry into place")?;
        st.in_progress = None;
        self.write_state(&st, "record activation done")?;
        Ok(entry)
    }

    /// Called on every boot: record what happened to a pending trial that did not end on
    /// its slot (tries used up, or a rollback cut short), and finalize a confirmation that
    /// was cut short. Returns the rollback it recorded, if any.
    pub fn reconcile(&mut self) -> Result<Option<Rollback>, EngineError> {
        self.lock()?;
        let mut st = self.read_state()?;
        // At boot nothing can still be running: an operation in progress was cut short.
        if let Some(ip) = st.in_progress.take() {
            if ip.operation == "install" {
                st.last_install = Some(InstallResult {
                    version: ip.version.clone(),
                    slot: ip.slot,
                    ok: false,
                    message: "interrupted (power cut or crash) before it finished".into(),
                    unix: state::now_unix(),
                });
            }
            self.write_state(&st, "record the interrupted operation")?;
        }
        let Some(p) = st.pending.clone() else {
            return Ok(None);
        };
        let entries = self.entries()?;
        let cur = self.current_slot()?;
        let entry = entries.iter().find(|e| e.slot == p.slot).cloned();
        if cur == p.slot {
            if entry.as_ref().is_some_and(|e| e.tries_left.is_none()) {
                st.pending = None;
                st.in_progress = None;
                st.last_confirmed = Some(Confirmed {
                    slot: cur,
                    version: p.version.clone(),
                    unix: state::now_unix(),
                });
                self.write_state(&st, "finalize confirmation")?;
            }
            return Ok(None);
        }
        let reason = match entry.as_ref().map(|e| e.tries_left) {
            Some(Some(0)) => format!(
                "slot {} did not boot successfully in {} tries",
                p.slot, p.tries
            ),
            None => format!("the activation of slot {} was interrupted", p.slot),
            _ => format!("the trial boot of slot {} ended on slot {}", p.slot, cur),
        };
        let r = Rollback {
            from_slot: p.slot,
            from_version: p.version.clone(),
            to_slot: cur,
            to_version: entries
                .iter()
                .find(|e| e.slot == cur)
                .map(|e| e.version.clone())
                .unwrap_or_default(),
            reason,
            unix: state::now_unix(),
        };
        st.pending = None;
        st.in_progress = None;
        st.record_rollback(r.clone());
        self.write_state(&st, "record automatic rollback")?;
        self.say(&format!(
            "{} UPGRADE ROLLBACK from={} slot={} to={} slot={} reason={}",
            self.kind.banner(),
            r.from_version,
            r.from_slot,
            r.to_version,
            r.to_slot,
            r.reason
        ));
        Ok(Some(r))
    }

    /// Confirm the running slot if it is on trial and `health` passes (`None`: no health
    /// check, for offline servicing); roll back to the other slot if it does not.
    pub fn confirm(&mut self, health: Option<&HealthCheck>) -> Result<ConfirmOutcome, EngineError> {
        self.lock()?;
        self.reconcile()?;
        let entries = self.entries()?;
        let cur = self.current_slot()?;
        let entry = entries
            .iter()
            .find(|e| e.slot == cur)
            .cloned()
            .ok_or(EngineError::NoEntry(cur))?;
        if entry.tries_left.is_none() {
            return Ok(ConfirmOutcome::AlreadyConfirmed);
        }
        if let Some(h) = health {
            if let Err(why) = h.wait_healthy() {
                let reason = format!("health check failed: {why}");
                self.rollback(&reason)?;
                return Ok(ConfirmOutcome::RolledBack { reason });
            }
        }
        let mut st = self.read_state()?;
        st.in_progress = Some(InProgress {
            operation: "confirm".into(),
            slot: cur,
            version: Some(entry.version.clone()),
            started_unix: state::now_unix(),
        });
        self.write_state(&st, "record confirmation start")?;
        let blessed = EntryName {
            tries_left: None,
            tries_done: 0,
            ..entry.name()
        };
        self.with_esp(|esp| Ok(esp.rename_entry(&entry.name(), &blessed)?))?;
        self.step("bless the boot entry")?;
        st.in_progress = None;
        st.pending = None;
        st.last_confirmed = Some(Confirmed {
            slot: cur,
            version: entry.version.clone(),
            unix: state::now_unix(),
        });
        self.write_state(&st, "record confirmation")?;
        self.say(&format!(
            "{} UPGRADE CONFIRMED version={} slot={}",
            self.kind.banner(),
            entry.version,
            cur
        ));
        Ok(ConfirmOutcome::Confirmed {
            version: entry.version,
        })
    }

    /// Make the other slot boot next. A running slot on trial is marked bad, so systemd-boot
    /// will not pick it again.
    pub fn rollback(&mut self, reason: &str) -> Result<Rollback, EngineError> {
        self.lock()?;
        let entries = self.entries()?;
        let cur = self.current_slot()?;
        let other = cur.other();
        let target = entries
            .iter()
            .find(|e| e.slot == other)
            .cloned()
            .ok_or_else(|| EngineError::NoFallback {
                slot: other,
                why: "has no boot entry".into(),
            })?;
        if target.tries_left == Some(0) {
            return Err(EngineError::NoFallback {
                slot: other,
                why: format!("is marked bad ({})", target.file_name()),
            });
        }
        let cur_entry = entries.iter().find(|e| e.slot == cur).cloned();
        let mut st = self.read_state()?;
        st.in_progress = Some(InProgress {
            operation: "rollback".into(),
            slot: other,
            version: Some(target.version.clone()),
            started_unix: state::now_unix(),
        });
        self.write_state(&st, "record rollback start")?;
        let generation = entries.iter().map(|e| e.generation).max().unwrap_or(0) + 1;
        let promoted = EntryName {
            generation,
            ..target.name()
        };
        self.with_esp(|esp| Ok(esp.rename_entry(&target.name(), &promoted)?))?;
        self.step("promote the other slot's boot entry")?;
        if let Some(c) = cur_entry.as_ref().filter(|c| c.tries_left.is_some()) {
            let bad = EntryName {
                tries_left: Some(0),
                tries_done: c.tries_done.max(1),
                ..c.name()
            };
            self.with_esp(|esp| Ok(esp.rename_entry(&c.name(), &bad)?))?;
            self.step("mark the trial slot bad")?;
        }
        let r = Rollback {
            from_slot: cur,
            from_version: cur_entry.map(|e| e.version).unwrap_or_default(),
            to_slot: other,
            to_version: target.version.clone(),
            reason: reason.to_string(),
            unix: state::now_unix(),
        };
        st.in_progress = None;
        if st.pending.as_ref().is_some_and(|p| p.slot == cur) {
            st.pending = None;
        }
        st.record_rollback(r.clone());
        self.write_state(&st, "record rollback")?;
        self.say(&format!(
            "{} UPGRADE ROLLBACK from={} slot={} to={} slot={} reason={}",
            self.kind.banner(),
            r.from_version,
            r.from_slot,
            r.to_version,
            r.to_slot,
            r.reason
        ));
        Ok(r)
    }
}

fn describe_entry(e: &BootEntry) -> String {
    match e.tries_left {
        None => format!("confirmed ({})", e.version),
        Some(0) => format!("bad ({}, tries used up)", e.version),
        Some(n) => format!("on trial ({}, {n} tries left)", e.version),
    }
}

/// `icos.slot=` and the root PARTUUID from a kernel command line.
pub fn parse_cmdline(cmdline: &str) -> Result<(Slot, String), EngineError> {
    let mut slot = None;
    let mut root = None;
    for arg in cmdline.split_whitespace() {
        if let Some(s) = arg.strip_prefix("icos.slot=") {
            slot = Slot::parse(s);
        } else if let Some(r) = arg.strip_prefix("icos.root=PARTUUID=") {
            root = Some(r.to_string());
        }
    }
    match (slot, root) {
        (Some(s), Some(r)) => Ok((s, r)),
        _ => Err(EngineError::NoRunningDisk("the kernel command line has no icos.slot= and icos.root=PARTUUID= (not an icos A/B system)".into())),
    }
}

/// Find the whole disk (e.g. /dev/vda) whose GPT holds the partition with this PARTUUID.
fn find_disk_with_partuuid(partuuid: &str) -> Result<PathBuf, EngineError> {
    let want = partuuid.to_ascii_lowercase();
    let rd = std::fs::read_dir("/sys/block")
        .map_err(|e| EngineError::NoRunningDisk(format!("/sys/block: {e}")))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "dm-", "sr", "zram"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let dev = PathBuf::from("/dev").join(&name);
        if let Ok(parts) = disk_layout::read_partitions(&dev) {
            if parts.iter().any(|p| p.guid.to_string() == want) {
                return Ok(dev);
            }
        }
    }
    Err(EngineError::NoRunningDisk(format!(
        "no disk has a partition with PARTUUID {partuuid}"
    )))
}
