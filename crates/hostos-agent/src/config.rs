//! The HostOS config (`hostos.toml`, on the HostOS config partition or a file in
//! development). Every field has a default except the GuestOS disk; a malformed field is
//! named, reported, and replaced by its default, so the agent brings up what it can.

use node_identity::{Mac, NodeType};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "hostos.toml";

/// The disk HostOS runs from, for its self-upgrades.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostosDisk {
    /// The booted system (`hostos_disk = "running"`): install, activate, reboot.
    Running,
    /// A disk image (tests, offline servicing): install and activate only.
    Image(PathBuf),
}

impl HostosDisk {
    fn parse(s: &str) -> HostosDisk {
        if s == "running" {
            HostosDisk::Running
        } else {
            HostosDisk::Image(PathBuf::from(s))
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RegistryConfig {
    pub urls: Vec<String>,
    pub genesis_hash: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostosConfig {
    pub deployment: String,
    pub management_mac: Mac,
    pub ipv6_prefix: Option<String>,
    pub node_id: Option<String>,
    /// HostOS version when not running on a HostOS image (development).
    pub hostos_version: Option<String>,
    pub guest_disk: Option<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub boot_timeout_secs: u64,
    pub max_restarts: u32,
    /// Development: host TCP ports forwarded to the guest (`HOST:GUEST`).
    pub forwards: Vec<(u16, u16)>,
    pub registry: Option<RegistryConfig>,
    /// The disk HostOS runs from, for self-upgrades (absent: no self-upgrade).
    pub hostos_disk: Option<HostosDisk>,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// Print guest notifications and status lines on /dev/console.
    pub console: bool,
    /// Node operator key handed to the guest for registration (PEM file).
    pub operator_key_file: Option<PathBuf>,
    pub operator_id: Option<String>,
    /// The node's public HTTP endpoint, passed to the guest for its registration.
    pub http_endpoint: Option<String>,
    /// Prefixes allowed to reach the guest's SSH and status ports.
    pub admin_prefixes: Vec<String>,
    /// Registry URLs for the guest when it reaches the registry at another address than the
    /// host does (user-mode networking: the host is 10.0.2.2 to its guest); empty = the
    /// host's own `registry.urls`.
    pub guest_registry_urls: Vec<String>,
    /// Development and tests: more virtio-serial ports for the guest (`name=socket`).
    pub extra_ports: Vec<(String, PathBuf)>,
    /// Problems found in the config, each naming its field.
    #[serde(skip)]
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("HostOS config {path}: {message}")]
    Read { path: String, message: String },
}

struct Reader<'a> {
    root: &'a toml::Table,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&toml::Value> {
        let (section, field) = key.split_once('.')?;
        self.root.get(section)?.as_table()?.get(field)
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.get(key) {
            None => None,
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(toml::Value::String(_)) => None,
            Some(other) => {
                self.problems.push(format!(
                    "field `{key}`: expected a string, got {}",
                    other.type_str()
                ));
                None
            }
        }
    }

    fn number(&mut self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.get(key) {
            None => default,
            Some(toml::Value::Integer(n))
                if (*n as u64) >= min && (*n as u64) <= max && *n >= 0 =>
            {
                *n as u64
            }
            Some(v) => {
                self.problems.push(format!("field `{key}`: expected a number from {min} to {max}, got {v}; using {default}"));
                default
            }
        }
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(toml::Value::Boolean(b)) => *b,
            Some(v) => {
                self.problems.push(format!(
                    "field `{key}`: expected true or false, got {v}; using {default}"
                ));
                default
            }
        }
    }

    fn strings(&mut self, key: &str) -> Vec<String> {
        match self.get(key).cloned() {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => {
                let mut out = Vec::new();
                for v in a {
                    match v.as_str() {
                        Some(s) => out.push(s.to_string()),
                        None => self
                            .problems
                            .push(format!("field `{key}`: {v} is not a string; ignored")),
                    }
                }
                out
            }
            Some(v) => {
                self.problems.push(format!(
                    "field `{key}`: expected a list of strings, got {v}"
                ));
                Vec::new()
            }
        }
    }
}

impl HostosConfig {
    /// Parse config text; never fails on a bad field (see `problems`), only on bad TOML.
    pub fn parse(text: &str, origin: &str) -> Result<HostosConfig, ConfigError> {
        let root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Read {
                path: origin.to_string(),
                message: e.to_string(),
            })?;
        let mut r = Reader {
            root: &root,
            problems: Vec::new(),
        };
        let deployment = r
            .string("node.deployment")
            .unwrap_or_else(|| "local".into());
        let management_mac = match r.string("node.management_mac") {
            Some(s) => match s.parse::<Mac>() {
                Ok(m) => m,
                Err(e) => {
                    r.problems.push(format!(
                        "field `node.management_mac`: {e}; using 02:00:00:00:00:01"
                    ));
                    Mac([2, 0, 0, 0, 0, 1])
                }
            },
            None => {
                r.problems.push("field `node.management_mac` is missing; using 02:00:00:00:00:01 (the GuestOS MAC will not be unique)".into());
                Mac([2, 0, 0, 0, 0, 1])
            }
        };
        let ipv6_prefix = r.string("node.ipv6_prefix");
        if let Some(p) = &ipv6_prefix {
            if let Err(e) = node_identity::parse_prefix(p) {
                r.problems.push(format!("field `node.ipv6_prefix`: {e}"));
            }
        }
        let guest_disk = r.string("guest.disk").map(PathBuf::from);
        if guest_disk.is_none() {
            r.problems
                .push("field `guest.disk` is missing: the GuestOS VM cannot be started".into());
        }
        let mut forwards = Vec::new();
        for f in r.strings("guest.forwards") {
            match f
                .split_once(':')
                .and_then(|(h, g)| Some((h.parse().ok()?, g.parse().ok()?)))
            {
                Some(p) => forwards.push(p),
                None => r.problems.push(format!(
                    "field `guest.forwards`: `{f}` is not HOST:GUEST; ignored"
                )),
            }
        }
        let urls = r.strings("registry.urls");
        let genesis = r.string("registry.genesis_hash");
        let registry = match (urls.is_empty(), genesis) {
            (false, Some(g)) => Some(RegistryConfig {
                urls,
                genesis_hash: g,
            }),
            (true, None) => None,
            (true, Some(_)) => {
                r.problems
                    .push("field `registry.urls` is missing: HostOS upgrades are disabled".into());
                None
            }
            (false, None) => {
                r.problems.push(
                    "field `registry.genesis_hash` is missing: HostOS upgrades are disabled".into(),
                );
                None
            }
        };
        let listen = match r.string("agent.listen") {
            None => "127.0.0.1:9100".parse().expect("static"),
            Some(s) => s.parse().unwrap_or_else(|_| {
                r.problems.push(format!(
                    "field `agent.listen`: `{s}` is not an address:port; using 127.0.0.1:9100"
                ));
                "127.0.0.1:9100".parse().expect("static")
            }),
        };
        let c = HostosConfig {
            deployment,
            management_mac,
            ipv6_prefix,
            node_id: r.string("node.node_id"),
            hostos_version: r.string("node.hostos_version"),
            guest_disk,
            vcpus: r.number("guest.vcpus", 2, 1, 64) as u32,
            memory_mib: r.number("guest.memory_mib", 1024, 256, 1 << 20) as u32,
            boot_timeout_secs: r.number("guest.boot_timeout_secs", 300, 1, 86_400),
            max_restarts: r.number("guest.max_restarts", 10, 1, 1000) as u32,
            forwards,
            registry,
            hostos_disk: r
                .string("upgrade.hostos_disk")
                .map(|d| HostosDisk::parse(&d)),
            state_dir: r
                .string("agent.state_dir")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/icos/hostos")),
            listen,
            console: r.bool("agent.console", false),
            operator_key_file: r
                .string("guest_config.operator_key_file")
                .map(PathBuf::from),
            operator_id: r.string("guest_config.operator_id"),
            http_endpoint: r.string("node.http_endpoint"),
            admin_prefixes: r.strings("guest_config.admin_prefixes"),
            guest_registry_urls: r.strings("guest_config.registry_urls"),
            extra_ports: Vec::new(),
            problems: Vec::new(),
        };
        let mut c = c;
        for p in r.strings("dev.extra_ports") {
            match p.split_once('=') {
                Some((name, sock)) if !name.is_empty() && !sock.is_empty() => {
                    c.extra_ports.push((name.to_string(), PathBuf::from(sock)))
                }
                _ => r.problems.push(format!(
                    "field `dev.extra_ports`: `{p}` is not NAME=SOCKET; ignored"
                )),
            }
        }
        c.problems = r.problems;
        Ok(c)
    }

    /// The config to run with when the file cannot be read or parsed at all: defaults (on a
    /// HostOS image the GuestOS disk is its `guestos` partition), with the error recorded so
    /// the agent still brings up what it can and says what was wrong.
    pub fn fallback(error: &ConfigError) -> HostosConfig {
        let on_hostos = daemon_support::release::Release::running_version_of("hostos").is_some();
        let text = if on_hostos {
            "[guest]\ndisk = \"/dev/disk/by-partlabel/guestos\"\n[agent]\nconsole = true\n"
        } else {
            ""
        };
        let mut c = HostosConfig::parse(text, "defaults").expect("static defaults parse");
        c.problems
            .insert(0, format!("{error}; running with defaults"));
        c
    }

    pub fn load(path: &Path) -> Result<HostosConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Read `hostos.toml` from a FAT config partition (a block device or an image file).
    pub fn load_from_fat(device: &Path) -> Result<HostosConfig, ConfigError> {
        let origin = format!("{}:{CONFIG_FILE}", device.display());
        let err = |message: String| ConfigError::Read {
            path: origin.clone(),
            message,
        };
        let fat = boot_slots::open_fat_read_only(device).map_err(|e| err(e.to_string()))?;
        let bytes = fat.read_file(CONFIG_FILE).map_err(|e| err(e.to_string()))?;
        Self::parse(&String::from_utf8_lossy(&bytes), &origin)
    }

    /// The GuestOS VM's MAC address.
    pub fn guest_mac(&self) -> Mac {
        node_identity::deterministic_mac(
            &self.management_mac,
            &self.deployment,
            NodeType::GuestOs,
            0,
        )
    }

    pub fn guest_ipv6(&self) -> Option<String> {
        let p = node_identity::parse_prefix(self.ipv6_prefix.as_ref()?).ok()?;
        Some(node_identity::ipv6_address(&p, &self.guest_mac()).to_string())
    }

    /// The address the GuestOS registers its node with: [`Self::guest_ipv6`], or the local
    /// `fd00::/64` address of the guest MAC when no prefix is configured.
    pub fn guest_registered_ipv6(&self) -> std::net::Ipv6Addr {
        self.guest_ipv6()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| node_identity::local_ipv6(&self.guest_mac()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config_parses() {
        let c = HostosConfig::parse(
            r#"
[node]
deployment = "testnet"
management_mac = "70:B5:E8:E8:25:DE"
ipv6_prefix = "2a00:fb01:400:200"
node_id = "node-1"
[guest]
disk = "/dev/disk/by-partlabel/guestos"
vcpus = 4
memory_mib = 2048
forwards = ["8080:8080"]
[registry]
urls = ["http://127.0.0.1:8180"]
genesis_hash = "ab"
"#,
            "test",
        )
        .unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!(c.guest_mac().to_string(), "6a:01:f8:87:a4:8a");
        assert_eq!(c.vcpus, 4);
        assert_eq!(c.forwards, vec![(8080, 8080)]);
        assert_eq!(
            c.guest_ipv6().unwrap(),
            "2a00:fb01:400:200:6801:f8ff:fe87:a48a"
        );
    }

    #[test]
    fn bad_fields_are_named_and_defaulted() {
        let c = HostosConfig::parse(
            "[node]\nmanagement_mac = \"nope\"\n[guest]\nvcpus = \"four\"\nmemory_mib = 1\n[registry]\nurls = [\"http://x\"]\n",
            "test",
        )
        .unwrap();
        let all = c.problems.join("\n");
        for field in [
            "node.management_mac",
            "guest.vcpus",
            "guest.memory_mib",
            "guest.disk",
            "registry.genesis_hash",
        ] {
            assert!(all.contains(field), "{field} not named in:\n{all}");
        }
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, 1024);
        assert!(c.registry.is_none());
        assert!(HostosConfig::parse("[[[", "x.toml")
            .unwrap_err()
            .to_string()
            .contains("x.toml"));
    }
}
