//! The SetupOS installer (`icos setupos install`, run once by `icos-setupos.service`).
//!
//! Eight steps in a fixed order, each announced on the console as
//! `SETUPOS [n/8] <step>: <what it found>`:
//!
//! 1. **config**: the operator's folder on the CONFIG partition, checked whole
//!    (`node_config::operator::check_folder`);
//! 2. **hardware**: the machine against the deployment's profile ([`hardware`]);
//! 3. **network and time**: the node's deterministic addresses derived and printed, the
//!    static network configured, the gateway answering, a registry URL answering within 3 s
//!    with a head that verifies back to the pinned genesis, and the clock within 30 s of the
//!    registry's signed time ([`network`]);
//! 4. **disks**: every disk but the one SetupOS booted from, big enough for the images and
//!    the profile ([`disks`]).
//!
//! Nothing is written before these four passed. Then:
//!
//! 5. **HostOS** onto the first target, every 1 MiB chunk checked against the map in the
//!    verified SetupOS root (`image-stream`), its boot partition's first megabytes held back;
//!    its `guestos` partition grown to the end of the disk;
//! 6. **GuestOS** onto an LVM volume over that partition and every further disk;
//! 7. **config handover**: `hostos.toml` written onto HostOS's config partition from the same
//!    typed config chain (the operator key, addresses, registry, resources);
//! 8. **reboot**: the held-back boot partition head written (the commit), a firmware boot
//!    entry added, `SETUPOS INSTALL COMPLETE`, reboot into HostOS.
//!
//! A failure prints `SETUPOS FAILED at <step>: <what> — <what to do>` and again every
//! minute; the machine halts there (no reboot loop). Until step 8's commit, no target disk
//! holds a boot partition the firmware would start, so a cut short install is never booted
//! half-made: the next boot from the stick starts over.

pub mod disks;
pub mod hardware;
pub mod install;
pub mod network;

use daemon_support::Console;
use image_stream::SetupPayload;
use node_config::operator::{check_folder, ConfigSource, OperatorConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Steps, in order, as the console names them.
pub const STEPS: [&str; 8] = [
    "config",
    "hardware",
    "network and time",
    "disks",
    "HostOS",
    "GuestOS",
    "config handover",
    "reboot",
];

/// A step that did not pass: what went wrong and what the operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} — {todo}")]
pub struct Failure {
    pub what: String,
    pub todo: String,
}

impl Failure {
    pub fn new(what: impl Into<String>, todo: impl Into<String>) -> Failure {
        Failure {
            what: what.into(),
            todo: todo.into(),
        }
    }
}

/// Where the installer finds its inputs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The operator-editable FAT partition (label CONFIG).
    pub config_partition: PathBuf,
    /// Where the SetupOS data partition (the zstd images) is mounted.
    pub setup_data: PathBuf,
    /// The payload descriptor in the verified root.
    pub payload: PathBuf,
    /// The kernel command line (for `icos.root=` and `icos.skip_hardware_check`).
    pub cmdline: String,
    pub console: Console,
    /// Reboot at the end (off in tests that look at the disks afterwards).
    pub reboot: bool,
}

/// The kernel argument of the install benchmark: after the install, write both images again
/// the plain way (`zstd -d | dd`) and print how long that took (the benchmark's floor).
pub const MEASURE_FLOOR_ARG: &str = "icos.setupos.measure_floor";

impl Default for Options {
    fn default() -> Self {
        Options {
            config_partition: "/dev/disk/by-partlabel/setup_config".into(),
            setup_data: "/run/icos/setup-data".into(),
            payload: image_stream::PAYLOAD_FILE.into(),
            cmdline: std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            console: Console::system(),
            reboot: true,
        }
    }
}

/// A config folder on the FAT config partition.
pub struct FatSource(pub PathBuf);

impl ConfigSource for FatSource {
    fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        let fat = boot_slots::open_fat_read_only(&self.0).map_err(std::io::Error::other)?;
        if !fat.exists(name) {
            return Ok(None);
        }
        fat.read_file(name).map(Some).map_err(std::io::Error::other)
    }
    fn describe(&self) -> String {
        format!("the CONFIG partition {}", self.0.display())
    }
}

/// The console lines of a run.
struct Progress<'a> {
    console: &'a Console,
    step: usize,
}

impl Progress<'_> {
    fn start(&mut self, n: usize) {
        self.step = n;
    }

    fn say(&self, what: &str) {
        self.console.line(&format!(
            "SETUPOS [{}/{}] {}: {what}",
            self.step,
            STEPS.len(),
            STEPS[self.step - 1]
        ));
    }
}

/// Run the installation; returns only after `SETUPOS INSTALL COMPLETE` (and the reboot
/// request), or never: a failure is repeated every minute until someone acts.
pub fn run(opts: &Options) {
    let mut p = Progress {
        console: &opts.console,
        step: 0,
    };
    match install(opts, &mut p) {
        Ok(()) => {}
        Err(f) => halt(&opts.console, STEPS[p.step.max(1) - 1], &f),
    }
}

fn halt(console: &Console, step: &str, f: &Failure) -> ! {
    let line = format!("SETUPOS FAILED at {step}: {f}");
    loop {
        console.line(&line);
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The eight steps.
fn install(opts: &Options, p: &mut Progress) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    p.start(1);
    let payload = read_payload(&opts.payload)?;
    if let Some(w) = age_warning(&payload.released, daemon_support::unix_now()) {
        opts.console.line(&format!("SETUPOS WARNING {w}"));
        std::thread::sleep(Duration::from_secs(300));
    }
    let cfg = read_config(&opts.config_partition)?;
    p.say(&describe_config(&cfg));

    p.start(2);
    let machine = hardware::Machine::probe().map_err(|e| {
        Failure::new(
            format!("cannot read the machine's description: {e}"),
            "report this",
        )
    })?;
    if skip_hardware_check(&opts.cmdline) {
        p.say(&format!(
            "{} (checks skipped: icos.skip_hardware_check)",
            machine.summary()
        ));
    } else {
        let missing = hardware::check(&machine, cfg.deployment.hardware_profile);
        if !missing.is_empty() {
            return Err(Failure::new(
                format!("this machine does not meet the {:?} profile: {}", cfg.deployment.hardware_profile, missing.join("; ")),
                "install on a machine that meets it, or set hardware_profile in deployment.json for a test machine (or boot with icos.skip_hardware_check)",
            ));
        }
        p.say(&format!(
            "{} meets the {:?} profile",
            machine.summary(),
            cfg.deployment.hardware_profile
        ));
    }

    p.start(3);
    let plan = network::Plan::derive(&cfg)?;
    p.say(&plan.describe());
    let checked = network::bring_up_and_check(&cfg, &plan)?;
    p.say(&checked);

    p.start(4);
    let targets = disks::select(
        &opts.cmdline,
        &payload,
        &machine,
        cfg.deployment.hardware_profile,
    )?;
    p.say(&targets.describe());

    p.start(5);
    let hostos = install::hostos(opts, &payload, &targets)?;
    p.say(&hostos.describe());

    p.start(6);
    let guestos = install::guestos(opts, &payload, &targets, &hostos)?;
    p.say(&guestos);

    p.start(7);
    let handed = install::handover(&cfg, &plan, &payload, &targets)?;
    p.say(&handed);

    p.start(8);
    let done = install::commit(&hostos, &targets)?;
    p.say(&done);
    opts.console.line(&format!(
        "SETUPOS INSTALL COMPLETE in {:.1} s: HostOS {} and GuestOS {} on {}; rebooting into HostOS",
        started.elapsed().as_secs_f64(),
        payload.hostos.version,
        payload.guestos.version,
        targets.names()
    ));
    if opts
        .cmdline
        .split_whitespace()
        .any(|a| a == MEASURE_FLOOR_ARG)
    {
        opts.console
            .line(&install::measure_floor(opts, &payload, &targets));
    }
    if opts.reboot {
        if let Err(e) = daemon_support::reboot() {
            opts.console.line(&format!(
                "SETUPOS cannot reboot ({e}): power-cycle the machine"
            ));
        }
    }
    Ok(())
}

fn read_config(partition: &Path) -> Result<OperatorConfig, Failure> {
    let src = FatSource(partition.to_path_buf());
    check_folder(&src).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        Failure::new(
            format!("{} problem(s) in the config folder: {}", list.len(), list.join("; ")),
            "correct the files on the CONFIG partition (`icos setupos check-config DIR` lists the same problems on a laptop) and boot again",
        )
    })
}

fn describe_config(c: &OperatorConfig) -> String {
    let d = &c.deployment;
    format!(
        "deployment {} ({:?} network, {:?} hardware), registry {} URL(s) with genesis {}, operator key {}…, IPv6 prefix {}::/64 via {}{}{}",
        d.name,
        d.network,
        d.hardware_profile,
        d.registry.urls.len(),
        &d.registry.genesis_hash.as_str()[..12],
        &c.operator_public_key[..12],
        c.network.ipv6_prefix,
        c.network.ipv6_gateway,
        c.network
            .ipv4
            .as_ref()
            .map(|v| format!(", IPv4 {}/{} via {}", v.address, v.prefix_length, v.gateway))
            .unwrap_or_default(),
        if c.ssh_admin_keys.is_empty() {
            String::new()
        } else {
            format!(", {} admin SSH key(s)", c.ssh_admin_keys.len())
        }
    )
}

fn read_payload(path: &Path) -> Result<SetupPayload, Failure> {
    let text = std::fs::read(path).map_err(|e| {
        Failure::new(
            format!("{}: {e}", path.display()),
            "this SetupOS image is broken: write it to the stick again",
        )
    })?;
    serde_json::from_slice(&text).map_err(|e| {
        Failure::new(
            format!("{}: {e}", path.display()),
            "this SetupOS image is broken: write it to the stick again",
        )
    })
}

fn skip_hardware_check(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|a| a == "icos.skip_hardware_check" || a == "icos.skip_hardware_check=1")
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
pub fn days_of(date: &str) -> Option<i64> {
    let mut it = date.split('-');
    let (y, m, d): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=month_days).contains(&d) || it.next().is_some() {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// How old a SetupOS release is allowed to be before it warns (its HostOS and GuestOS are
/// then likely not the versions governance runs any more).
pub const MAX_AGE_DAYS: i64 = 42;

/// The warning for a release of `released` (YYYY-MM-DD) at `now` (Unix seconds), if stale.
pub fn age_warning(released: &str, now: u64) -> Option<String> {
    let age = (now / 86_400) as i64 - days_of(released)?;
    (age > MAX_AGE_DAYS).then(|| {
        format!(
            "this SetupOS was released on {released}, {age} days ago (more than {MAX_AGE_DAYS}): a newer release likely installs the versions the network runs now; continuing in 5 minutes"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_the_age_warning() {
        assert_eq!(days_of("1970-01-01"), Some(0));
        assert_eq!(days_of("2026-11-30"), Some(20_787));
        assert_eq!(days_of("2024-02-29"), Some(19_782));
        assert_eq!(days_of("2026-13-01"), None);
        assert_eq!(days_of("2026-02-29"), None);
        assert_eq!(days_of("2026-04-31"), None);
        assert_eq!(days_of("yesterday"), None);
        let now = 20_787 * 86_400 + 3600;
        assert!(age_warning("2026-11-01", now).is_none());
        let w = age_warning("2026-07-11", now).unwrap();
        assert!(w.contains("142 days ago"), "{w}");
    }

    #[test]
    fn the_failure_line_says_what_and_what_to_do() {
        let f = Failure::new("no registry answered", "check the uplink");
        assert_eq!(f.to_string(), "no registry answered — check the uplink");
        assert!(skip_hardware_check(
            "quiet icos.skip_hardware_check panic=10"
        ));
        assert!(!skip_hardware_check("quiet icos.skip_hardware_checks"));
    }
}
