//! The icos A/B upgrade engine.
//!
//! [`Engine`] works on one node disk, either the running system's ([`Engine::open_running`])
//! or a disk image file ([`Engine::open_disk`]); the same code drives both.
//!
//! * **install** streams an update package (file or HTTP, see [`source`]) once: the manifest
//!   first (validated, right image kind, fits the slot), then kernel and initrd onto the ESP
//!   and `root.img` onto the inactive slot's root partition, hashing everything on the way:
//!   the package SHA-256 (compared with the expected one), every part's SHA-256 (compared
//!   with the manifest) and the dm-verity tree (level-0 hashes computed from the data
//!   written, the stored tree read back and checked up to the manifest's root hash). The
//!   target slot's boot entry is removed before anything is written, so a half-written slot
//!   can never boot. Memory: one 1 MiB copy buffer plus the verity tree's upper levels
//!   (1/16384 of the root image), a few MiB in all.
//! * **activate** writes the slot's boot entry with a higher generation and `+N` tries.
//! * **confirm** (at boot) blesses a trial slot once the health check passes, or rolls back.
//! * **rollback** promotes the other slot and marks a trial slot bad.
//! * **reconcile** (at boot) notices a trial that systemd-boot gave up on and records it.
//!
//! Every write is followed by a sync and counts as a step; built with the `crash-points`
//! feature (test builds only, never images), `ICOS_UPGRADE_CRASH_AT=N` makes the process die
//! right after step N, which the crash tests use to cut power everywhere.
//!
//! [`elected::install_elected`] installs a version from a list of download URLs with its
//! elected SHA-256 (what the orchestrator and the HostOS agent do).
//!
//! ```no_run
//! use upgrade_engine::{Engine, source};
//! let mut e = Engine::open_disk(std::path::Path::new("node.img")).unwrap();
//! let mut src = source::open("http://10.0.2.2:8080/update.tar").unwrap();
//! let sha256 = "<64 hex digits>".parse().unwrap();
//! let report = e.install(&mut src.reader, &sha256).unwrap();
//! e.activate(3).unwrap();
//! println!("{} installed into slot {}", report.version, report.slot);
//! ```

pub mod elected;
mod engine;
pub mod health;
pub mod metrics;
pub mod source;
pub mod state;
pub mod verity;

pub use engine::{
    parse_cmdline, ConfirmOutcome, Engine, EngineError, InstallReport, Mode, SlotState, SlotStatus,
    Status,
};
