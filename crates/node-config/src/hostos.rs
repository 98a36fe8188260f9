//! The HostOS config (`hostos.toml`, on the HostOS config partition): what SetupOS writes
//! for an installed node, and the development override written by hand or by the local
//! network — the same type, rendered by [`HostosConfig::render`] and read back by
//! [`HostosConfig::parse`]. Every field has a default except the GuestOS disk; a malformed
//! field is named, reported, and replaced by its default, so the agent brings up what it
//! can. Fields a newer version adds are ignored by an older reader, and `config_version`
//! says which version wrote the file.

use crate::operator::Ipv4Config;
use crate::NetworkMode;
use node_identity::{Mac, NodeType};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::{Ipv6Addr, SocketAddr};
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryConfig {
    pub urls: Vec<String>,
    pub genesis_hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostosConfig {
    /// The format version that wrote the file (0: before versions were written).
    pub config_version: u32,
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
    /// How the node gets its addresses.
    pub network_mode: NetworkMode,
    /// The IPv6 gateway of `ipv6_prefix`.
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// The permanent MAC of the interface that carries the node (SetupOS records it); other
    /// interfaces keep the image's fallback. Absent: every Ethernet interface.
    pub uplink_mac: Option<Mac>,
    /// The GuestOS's IPv4 settings, when the operator gave them.
    pub guest_ipv4: Option<Ipv4Config>,
    pub domain_name: Option<String>,
    /// Node operator key handed to the guest for registration (PEM file; development).
    pub operator_key_file: Option<PathBuf>,
    /// The same key inline (what SetupOS writes).
    pub operator_key_pem: Option<String>,
    /// SSH public keys for the `admin` account, from the operator's config.
    pub ssh_admin_keys: Vec<String>,
    pub operator_id: Option<String>,
    /// The node's public HTTP endpoint, passed to the guest for its registration.
    pub http_endpoint: Option<String>,
    /// Where the node's subnet peers reach its peer routes, passed to the guest for its
    /// registration (none: `http://[<ipv6>]:4100`).
    pub peer_endpoint: Option<String>,
    /// Prefixes allowed to reach the guest's SSH and status ports.
    pub admin_prefixes: Vec<String>,
    /// Registry URLs for the guest when it reaches the registry at another address than the
    /// host does (user-mode networking: the host is 10.0.2.2 to its guest); empty = the
    /// host's own `registry.urls`.
    pub guest_registry_urls: Vec<String>,
    /// Settings for the guest's API boundary, should governance make the node one
    /// (`[boundary]`: `domains`, `tls_cert_file`, `tls_key_file`).
    pub boundary_domains: Vec<String>,
    pub boundary_tls_cert_file: Option<PathBuf>,
    pub boundary_tls_key_file: Option<PathBuf>,
    /// Development: where the guest reaches this host's loopback (`guest_config.host_loopback`;
    /// QEMU's user network: 10.0.2.2).
    pub guest_host_loopback: Option<std::net::IpAddr>,
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
        match key.split_once('.') {
            Some((section, field)) => self.root.get(section)?.as_table()?.get(field),
            None => self.root.get(key),
        }
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

    /// A value that parses as `T`; a bad one is named and dropped.
    fn parsed<T: std::str::FromStr>(&mut self, key: &str, what: &str) -> Option<T> {
        let v = self.string(key)?;
        match v.parse() {
            Ok(x) => Some(x),
            Err(_) => {
                self.problems
                    .push(format!("field `{key}`: `{v}` is not {what}; ignored"));
                None
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
        let network_mode = match r.string("network.mode").as_deref() {
            None => NetworkMode::default(),
            Some("static") => NetworkMode::Static,
            Some("dhcp") => NetworkMode::Dhcp,
            Some(other) => {
                r.problems.push(format!(
                    "field `network.mode`: `{other}` is not static or dhcp; using dhcp"
                ));
                NetworkMode::Dhcp
            }
        };
        let ipv6_gateway = r.parsed("network.ipv6_gateway", "an IPv6 address");
        let uplink_mac = r.parsed("network.uplink_mac", "a MAC address");
        let guest_ipv4 = match (
            r.parsed("network.ipv4_address", "an IPv4 address"),
            r.number("network.ipv4_prefix_length", 0, 0, 32),
            r.parsed("network.ipv4_gateway", "an IPv4 address"),
        ) {
            (Some(address), prefix_length, Some(gateway)) if prefix_length > 0 => {
                Some(Ipv4Config {
                    address,
                    prefix_length: prefix_length as u8,
                    gateway,
                })
            }
            (None, 0, None) => None,
            _ => {
                r.problems.push("fields `network.ipv4_*`: address, prefix length and gateway go together; IPv4 is not configured".into());
                None
            }
        };
        let c = HostosConfig {
            config_version: r.number("config_version", 0, 0, u32::MAX as u64) as u32,
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
            network_mode,
            ipv6_gateway,
            uplink_mac,
            guest_ipv4,
            domain_name: r.string("network.domain_name"),
            operator_key_file: r
                .string("guest_config.operator_key_file")
                .map(PathBuf::from),
            operator_key_pem: r.string("guest_config.operator_key_pem"),
            ssh_admin_keys: r.strings("guest_config.ssh_admin_keys"),
            operator_id: r.string("guest_config.operator_id"),
            http_endpoint: r.string("node.http_endpoint"),
            peer_endpoint: r.string("node.peer_endpoint"),
            admin_prefixes: r.strings("guest_config.admin_prefixes"),
            guest_registry_urls: r.strings("guest_config.registry_urls"),
            boundary_domains: r.strings("boundary.domains"),
            boundary_tls_cert_file: r.string("boundary.tls_cert_file").map(PathBuf::from),
            boundary_tls_key_file: r.string("boundary.tls_key_file").map(PathBuf::from),
            guest_host_loopback: r.parsed("guest_config.host_loopback", "an IP address"),
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

    /// What SetupOS hands over for an installed node: the operator's config, the management
    /// MAC the addresses derive from, and where the GuestOS volume is.
    pub fn installed(
        op: &crate::operator::OperatorConfig,
        management_mac: Mac,
        uplink_mac: Mac,
        guest_disk: &Path,
    ) -> HostosConfig {
        let mut c = HostosConfig::parse("", "setupos").expect("empty config parses");
        let d = &op.deployment;
        c.config_version = crate::CONFIG_VERSION;
        c.deployment = d.name.clone();
        c.management_mac = management_mac;
        c.ipv6_prefix = Some(op.network.ipv6_prefix.clone());
        c.network_mode = d.network;
        c.ipv6_gateway = Some(op.network.ipv6_gateway);
        c.uplink_mac = Some(uplink_mac);
        c.guest_ipv4 = op.network.ipv4.clone();
        c.domain_name = op.network.domain_name.clone();
        c.guest_disk = Some(guest_disk.to_path_buf());
        c.vcpus = d.resources.vcpus;
        c.memory_mib = d.resources.memory_mib;
        c.registry = Some(RegistryConfig {
            urls: d.registry.urls.clone(),
            genesis_hash: d.registry.genesis_hash.to_string(),
        });
        c.hostos_disk = Some(HostosDisk::Running);
        // The status port answers on the node's addresses (the firewall decides who may ask).
        c.listen = "0.0.0.0:9100".parse().expect("static");
        c.console = true;
        // Values are read back trimmed: hand over the key as it will be read.
        c.operator_key_pem = Some(op.operator_key_pem.trim().to_string());
        c.ssh_admin_keys = op.ssh_admin_keys.clone();
        c.problems.clear();
        c
    }

    /// The file's text: every field, in the sections [`HostosConfig::parse`] reads, so that
    /// `parse(render(c)) == c`. What SetupOS writes and the local network generates.
    pub fn render(&self) -> String {
        use toml::Value as V;
        fn table(items: Vec<(&str, Option<V>)>) -> toml::Table {
            items
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .collect()
        }
        let s = |x: &str| Some(V::String(x.to_string()));
        let opt = |x: &Option<String>| x.as_deref().and_then(s);
        let path = |p: &Option<PathBuf>| p.as_ref().and_then(|p| s(&p.display().to_string()));
        let n = |x: u64| Some(V::Integer(x as i64));
        let list = |v: &[String]| {
            (!v.is_empty()).then(|| V::Array(v.iter().map(|x| V::String(x.clone())).collect()))
        };
        let mut root = toml::Table::new();
        root.insert(
            "config_version".into(),
            V::Integer(i64::from(crate::CONFIG_VERSION)),
        );
        root.insert(
            "node".into(),
            V::Table(table(vec![
                ("deployment", s(&self.deployment)),
                ("management_mac", s(&self.management_mac.to_string())),
                ("ipv6_prefix", opt(&self.ipv6_prefix)),
                ("node_id", opt(&self.node_id)),
                ("hostos_version", opt(&self.hostos_version)),
                ("http_endpoint", opt(&self.http_endpoint)),
                ("peer_endpoint", opt(&self.peer_endpoint)),
            ])),
        );
        let ipv4 = self.guest_ipv4.as_ref();
        root.insert(
            "network".into(),
            V::Table(table(vec![
                (
                    "mode",
                    s(match self.network_mode {
                        NetworkMode::Static => "static",
                        NetworkMode::Dhcp => "dhcp",
                    }),
                ),
                (
                    "ipv6_gateway",
                    self.ipv6_gateway.and_then(|g| s(&g.to_string())),
                ),
                (
                    "uplink_mac",
                    self.uplink_mac.and_then(|m| s(&m.to_string())),
                ),
                ("ipv4_address", ipv4.and_then(|i| s(&i.address.to_string()))),
                (
                    "ipv4_prefix_length",
                    ipv4.and_then(|i| n(u64::from(i.prefix_length))),
                ),
                ("ipv4_gateway", ipv4.and_then(|i| s(&i.gateway.to_string()))),
                ("domain_name", opt(&self.domain_name)),
            ])),
        );
        let forwards: Vec<String> = self
            .forwards
            .iter()
            .map(|(h, g)| format!("{h}:{g}"))
            .collect();
        root.insert(
            "guest".into(),
            V::Table(table(vec![
                ("disk", path(&self.guest_disk)),
                ("vcpus", n(u64::from(self.vcpus))),
                ("memory_mib", n(u64::from(self.memory_mib))),
                ("boot_timeout_secs", n(self.boot_timeout_secs)),
                ("max_restarts", n(u64::from(self.max_restarts))),
                ("forwards", list(&forwards)),
            ])),
        );
        if let Some(r) = &self.registry {
            root.insert(
                "registry".into(),
                V::Table(table(vec![
                    ("urls", list(&r.urls)),
                    ("genesis_hash", s(&r.genesis_hash)),
                ])),
            );
        }
        if let Some(d) = &self.hostos_disk {
            let disk = match d {
                HostosDisk::Running => "running".to_string(),
                HostosDisk::Image(p) => p.display().to_string(),
            };
            root.insert(
                "upgrade".into(),
                V::Table(table(vec![("hostos_disk", s(&disk))])),
            );
        }
        root.insert(
            "agent".into(),
            V::Table(table(vec![
                ("state_dir", s(&self.state_dir.display().to_string())),
                ("listen", s(&self.listen.to_string())),
                ("console", Some(V::Boolean(self.console))),
            ])),
        );
        root.insert(
            "guest_config".into(),
            V::Table(table(vec![
                ("operator_id", opt(&self.operator_id)),
                ("operator_key_file", path(&self.operator_key_file)),
                ("operator_key_pem", opt(&self.operator_key_pem)),
                ("ssh_admin_keys", list(&self.ssh_admin_keys)),
                ("admin_prefixes", list(&self.admin_prefixes)),
                ("registry_urls", list(&self.guest_registry_urls)),
                (
                    "host_loopback",
                    opt(&self.guest_host_loopback.map(|a| a.to_string())),
                ),
            ])),
        );
        root.insert(
            "boundary".into(),
            V::Table(table(vec![
                ("domains", list(&self.boundary_domains)),
                ("tls_cert_file", path(&self.boundary_tls_cert_file)),
                ("tls_key_file", path(&self.boundary_tls_key_file)),
            ])),
        );
        let ports: Vec<String> = self
            .extra_ports
            .iter()
            .map(|(n, p)| format!("{n}={}", p.display()))
            .collect();
        if !ports.is_empty() {
            root.insert(
                "dev".into(),
                V::Table(table(vec![("extra_ports", list(&ports))])),
            );
        }
        let mut out = String::from("# icos HostOS configuration (node-config, version ");
        let _ = writeln!(out, "{})", crate::CONFIG_VERSION);
        out.push_str(&toml::to_string(&root).expect("a TOML table serializes"));
        out
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

    /// The HostOS's own MAC address.
    pub fn hostos_mac(&self) -> Mac {
        node_identity::deterministic_mac(
            &self.management_mac,
            &self.deployment,
            NodeType::HostOs,
            0,
        )
    }

    /// The HostOS's static IPv6 address, when a prefix is configured.
    pub fn hostos_ipv6(&self) -> Option<Ipv6Addr> {
        let p = node_identity::parse_prefix(self.ipv6_prefix.as_ref()?).ok()?;
        Some(node_identity::ipv6_address(&p, &self.hostos_mac()))
    }

    /// What HostOS writes for systemd-networkd at boot: its MAC, its static IPv6 address and
    /// gateway (IPv6 only, as on IC-OS), DHCP only in `dhcp` mode.
    pub fn network_plan(&self) -> crate::network::NetworkPlan {
        crate::network::NetworkPlan {
            uplink: self.uplink_mac,
            mac: Some(self.hostos_mac()),
            mode: self.network_mode,
            ipv6: self.hostos_ipv6().zip(self.ipv6_gateway),
            ipv4: None,
            domain_name: None,
        }
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

    /// What SetupOS writes is read back as the same config, field by field.
    #[test]
    fn the_rendered_file_reads_back_the_same() {
        let mut c = HostosConfig::parse(
            "[node]\nmanagement_mac = \"70:b5:e8:e8:25:de\"\nipv6_prefix = \"2a00:fb01:400:200\"\n[guest]\ndisk = \"/dev/hostlvm/guestos\"\nforwards = [\"8080:80\"]\n",
            "t",
        )
        .unwrap();
        c.config_version = crate::CONFIG_VERSION;
        // IC-OS's published vector: management MAC 70:b5:e8:e8:25:de, deployment testnet.
        c.deployment = "testnet".into();
        c.network_mode = NetworkMode::Static;
        c.ipv6_gateway = Some("fe80::1".parse().unwrap());
        c.uplink_mac = Some("52:54:00:12:34:56".parse().unwrap());
        c.guest_ipv4 = Some(Ipv4Config {
            address: "192.0.2.10".parse().unwrap(),
            prefix_length: 24,
            gateway: "192.0.2.1".parse().unwrap(),
        });
        c.domain_name = Some("n.example".into());
        c.operator_key_pem =
            Some("-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----".into());
        c.ssh_admin_keys = vec!["ssh-ed25519 AAAA a".into()];
        c.registry = Some(RegistryConfig {
            urls: vec!["http://[fec0::2]:8180".into()],
            genesis_hash: "ab".repeat(32),
        });
        c.hostos_disk = Some(HostosDisk::Running);
        c.extra_ports = vec![("org.icos.test.0".into(), PathBuf::from("/tmp/t.sock"))];
        let text = c.render();
        let back = HostosConfig::parse(&text, "rendered").unwrap();
        assert!(back.problems.is_empty(), "{:?}\n{text}", back.problems);
        assert_eq!(back, c, "{text}");
        assert_eq!(
            back.hostos_ipv6().unwrap().to_string(),
            "2a00:fb01:400:200:6800:f8ff:fe87:a48a"
        );
        let plan = back.network_plan();
        assert_eq!(plan.ipv6.unwrap().1, "fe80::1".parse::<Ipv6Addr>().unwrap());
    }

    /// A file of version 0 (no `config_version`, none of the later fields) and one from a
    /// newer version (fields this one does not know) both read.
    #[test]
    fn older_and_newer_files_read() {
        let v0 = "[node]\nmanagement_mac = \"02:00:00:00:00:01\"\n[guest]\ndisk = \"/dev/vdb\"\n";
        let c = HostosConfig::parse(v0, "v0").unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!((c.config_version, c.network_mode), (0, NetworkMode::Dhcp));
        let v9 = format!("config_version = 9\n{v0}[network]\nmode = \"dhcp\"\nfuture_field = 1\n[a_new_section]\nx = 2\n");
        let c = HostosConfig::parse(&v9, "v9").unwrap();
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        assert_eq!((c.config_version, c.network_mode), (9, NetworkMode::Dhcp));
    }
}
