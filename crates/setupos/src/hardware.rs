//! The hardware step: what the machine has, against what its profile needs.
//!
//! `production` holds IC-OS's thresholds for a node: two sockets of AMD EPYC of a known
//! generation with SEV, at least 64 threads, more than 510 GiB of memory (disk sizes are the
//! disks step's). `vm` is what the test VMs get. Every requirement not met is named with the
//! value found; the kernel argument `icos.skip_hardware_check` skips the step, as IC-OS's
//! does, for machines that are known to be fine.

use node_config::operator::HardwareProfile;

/// What the machine has (from `/proc/cpuinfo` and `/proc/meminfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub cpu_model: String,
    pub sockets: usize,
    pub threads: usize,
    pub sev: bool,
    pub memory_bytes: u64,
}

/// An AMD EPYC generation, from the model number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// EPYC 7xx2 / 7xx3 (Rome, Milan).
    Gen1,
    /// EPYC 9xx4 (Genoa).
    Gen2,
}

impl Machine {
    /// Read the running machine.
    pub fn probe() -> std::io::Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
        let meminfo = std::fs::read_to_string("/proc/meminfo")?;
        let sev = std::fs::read_to_string("/sys/module/kvm_amd/parameters/sev")
            .is_ok_and(|s| matches!(s.trim(), "Y" | "1"));
        Ok(Machine::parse(&cpuinfo, &meminfo, sev))
    }

    pub fn parse(cpuinfo: &str, meminfo: &str, sev_enabled: bool) -> Machine {
        let field = |l: &str, k: &str| {
            l.split_once(':')
                .filter(|(a, _)| a.trim() == k)
                .map(|(_, v)| v.trim().to_string())
        };
        let mut sockets = std::collections::BTreeSet::new();
        let mut threads = 0;
        let mut model = String::new();
        let mut sev_flag = false;
        for l in cpuinfo.lines() {
            if field(l, "processor").is_some() {
                threads += 1;
            }
            if let Some(p) = field(l, "physical id") {
                sockets.insert(p);
            }
            if let Some(m) = field(l, "model name") {
                model = m;
            }
            if let Some(f) = field(l, "flags") {
                sev_flag |= f.split_whitespace().any(|x| x == "sev");
            }
        }
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or(0);
        Machine {
            cpu_model: model,
            sockets: sockets.len().max(1),
            threads,
            sev: sev_flag && sev_enabled,
            memory_bytes,
        }
    }

    /// The EPYC generation, if the CPU is one IC-OS knows.
    pub fn generation(&self) -> Option<Generation> {
        let m = self.cpu_model.to_ascii_uppercase();
        let rest = m.split("EPYC").nth(1)?;
        let number: String = rest
            .trim()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        match (number.len(), number.chars().next(), number.chars().last()) {
            (4, Some('7'), Some('2' | '3')) => Some(Generation::Gen1),
            (4, Some('9'), Some('4')) => Some(Generation::Gen2),
            _ => None,
        }
    }

    /// What the machine has, in one line for the console.
    pub fn summary(&self) -> String {
        format!(
            "{} ({} socket(s), {} threads, SEV {}), {:.1} GiB memory",
            if self.cpu_model.is_empty() {
                "unknown CPU"
            } else {
                &self.cpu_model
            },
            self.sockets,
            self.threads,
            if self.sev { "on" } else { "off" },
            self.memory_bytes as f64 / (1u64 << 30) as f64
        )
    }
}

/// Every requirement of `profile` the machine does not meet, each with the value found.
pub fn check(m: &Machine, profile: HardwareProfile) -> Vec<String> {
    let mut out = Vec::new();
    match profile {
        HardwareProfile::Production => {
            if m.generation().is_none() {
                out.push(format!(
                    "CPU: an AMD EPYC of generation 1 (7xx2/7xx3) or 2 (9xx4) is required; found `{}`",
                    m.cpu_model
                ));
            }
            if m.sockets != 2 {
                out.push(format!("CPU sockets: 2 required; found {}", m.sockets));
            }
            if m.threads < 64 {
                out.push(format!(
                    "CPU threads: at least 64 required; found {}",
                    m.threads
                ));
            }
            if !m.sev {
                out.push(
                    "SEV: AMD SEV must be enabled (firmware setting and the kvm_amd module); found off"
                        .into(),
                );
            }
            if m.memory_bytes <= 510 << 30 {
                out.push(format!(
                    "memory: more than 510 GiB required; found {:.1} GiB",
                    m.memory_bytes as f64 / (1u64 << 30) as f64
                ));
            }
        }
        HardwareProfile::Vm => {
            if m.threads < 2 {
                out.push(format!(
                    "CPU threads: at least 2 required; found {}",
                    m.threads
                ));
            }
            if m.memory_bytes < 1536 << 20 {
                out.push(format!(
                    "memory: at least 1.5 GiB required; found {:.1} GiB",
                    m.memory_bytes as f64 / (1u64 << 30) as f64
                ));
            }
        }
    }
    out
}

/// The smallest data disk and total the profile needs, in bytes (the images' own sizes are
/// checked on top of this by the disks step).
pub fn disk_requirement(m: &Machine, profile: HardwareProfile) -> (u64, u64) {
    const TB: u64 = 1_000_000_000_000;
    match profile {
        HardwareProfile::Production => match m.generation() {
            Some(Generation::Gen2) => (6_400_000_000_000, 32 * TB),
            _ => (3_200_000_000_000, 32 * TB),
        },
        HardwareProfile::Vm => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpuinfo(model: &str, sockets: usize, threads_per_socket: usize, sev: bool) -> String {
        let mut s = String::new();
        let mut n = 0;
        for p in 0..sockets {
            for _ in 0..threads_per_socket {
                s.push_str(&format!(
                    "processor\t: {n}\nmodel name\t: {model}\nphysical id\t: {p}\nflags\t\t: fpu vme{}\n\n",
                    if sev { " sev sev_es" } else { "" }
                ));
                n += 1;
            }
        }
        s
    }

    #[test]
    fn a_production_node_passes_and_a_vm_does_not() {
        let m = Machine::parse(
            &cpuinfo("AMD EPYC 7313 16-Core Processor", 2, 32, true),
            "MemTotal:       540000000 kB\n",
            true,
        );
        assert_eq!(m.generation(), Some(Generation::Gen1));
        assert!(check(&m, HardwareProfile::Production).is_empty(), "{m:?}");
        let vm = Machine::parse(
            &cpuinfo("QEMU Virtual CPU version 2.5+", 1, 2, false),
            "MemTotal:        2030000 kB\n",
            false,
        );
        let problems = check(&vm, HardwareProfile::Production);
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems
            .iter()
            .any(|p| p.contains("found `QEMU Virtual CPU")));
        assert!(problems
            .iter()
            .any(|p| p.contains("CPU threads: at least 64 required; found 2")));
        assert!(check(&vm, HardwareProfile::Vm).is_empty());
        let genoa = Machine::parse(
            &cpuinfo("AMD EPYC 9354 32-Core Processor", 2, 64, true),
            "MemTotal: 1 kB",
            true,
        );
        assert_eq!(genoa.generation(), Some(Generation::Gen2));
        assert_eq!(
            disk_requirement(&genoa, HardwareProfile::Production).0,
            6_400_000_000_000
        );
        // SEV in the CPU flags but not enabled in KVM is off.
        let off = Machine::parse(
            &cpuinfo("AMD EPYC 7313", 2, 32, true),
            "MemTotal: 1 kB",
            false,
        );
        assert!(!off.sev);
    }
}
