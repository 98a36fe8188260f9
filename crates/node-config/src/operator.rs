//! The node provider's config folder, as written on a laptop and put on the SetupOS stick:
//!
//! | file | what |
//! |---|---|
//! | `config.ini` | the node's network (`ipv6_prefix`, `ipv6_gateway`, optional `ipv4_address`, `ipv4_gateway`, `ipv4_prefix_length`, `domain_name`), `node_reward_type`, `verbose` |
//! | `deployment.json` | deployment name, the registry (URLs, genesis hash), network mode, management MAC override, VM resources, hardware profile |
//! | `node_operator_private_key.pem` | the node operator's key the registry knows (Ed25519, PKCS#8 PEM: `icos gov keygen`) |
//! | `ssh_authorized_keys/admin` | optional: SSH public keys for the `admin` account |
//!
//! [`check_folder`] reads all of it and returns either the typed [`OperatorConfig`] or every
//! problem at once, each naming file, line and key, what was found and what is expected.
//! Unknown keys in `config.ini` are refused (with the nearest known key), not ignored: a
//! misspelt optional key would otherwise silently leave a setting unset on a machine nobody
//! looks at again.

use crate::{NetworkMode, Problem};
use node_identity::Mac;
use serde::{Deserialize, Serialize};
use sha256_hex::Sha256Hex;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const CONFIG_INI: &str = "config.ini";
pub const DEPLOYMENT_JSON: &str = "deployment.json";
pub const OPERATOR_KEY: &str = "node_operator_private_key.pem";
pub const SSH_ADMIN_KEYS: &str = "ssh_authorized_keys/admin";

/// Where a config folder is read from: a directory, or the FAT config partition.
pub trait ConfigSource {
    /// The file's bytes, `Ok(None)` if it does not exist.
    fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>>;
    /// How to name the source in messages.
    fn describe(&self) -> String;
}

impl ConfigSource for std::path::PathBuf {
    fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn describe(&self) -> String {
        self.display().to_string()
    }
}

/// IPv4 settings (all three, or none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv4Config {
    pub address: Ipv4Addr,
    pub prefix_length: u8,
    pub gateway: Ipv4Addr,
}

/// The node's network from `config.ini`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// The /64 prefix, e.g. `2a00:fb01:400:200`.
    pub ipv6_prefix: String,
    pub ipv6_gateway: Ipv6Addr,
    pub ipv4: Option<Ipv4Config>,
    pub domain_name: Option<String>,
}

/// Which hardware checks SetupOS applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HardwareProfile {
    /// IC-OS's thresholds for a production node.
    Production,
    /// What the test VMs have.
    Vm,
}

/// The registry a node follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryRef {
    pub urls: Vec<String>,
    pub genesis_hash: Sha256Hex,
}

/// GuestOS VM resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmResources {
    pub memory_mib: u32,
    pub vcpus: u32,
}

/// `deployment.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub name: String,
    /// The server's management MAC; absent: the MAC of the first Ethernet interface.
    pub mgmt_mac: Option<Mac>,
    pub registry: RegistryRef,
    pub network: NetworkMode,
    pub resources: VmResources,
    pub hardware_profile: HardwareProfile,
}

/// Everything in the folder, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    pub network: NetworkConfig,
    pub node_reward_type: Option<String>,
    pub verbose: bool,
    pub deployment: Deployment,
    pub operator_key_pem: String,
    /// The operator's public key (hex): how the registry knows the operator.
    pub operator_public_key: String,
    pub ssh_admin_keys: Vec<String>,
}

const KNOWN_KEYS: &[&str] = &[
    "ipv6_prefix",
    "ipv6_gateway",
    "ipv4_address",
    "ipv4_gateway",
    "ipv4_prefix_length",
    "domain_name",
    "node_reward_type",
    "verbose",
    "enable_trusted_execution_environment",
];

/// Read and check a config folder: the typed config, or every problem found.
pub fn check_folder(src: &dyn ConfigSource) -> Result<OperatorConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    let text = |name: &str, problems: &mut Vec<Problem>| match src.read(name) {
        Ok(Some(b)) => match String::from_utf8(b) {
            Ok(t) => Some(t),
            Err(_) => {
                problems.push(Problem::file(
                    name,
                    "bytes that are not UTF-8 text",
                    "a text file",
                ));
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            problems.push(Problem::file(
                name,
                format!("an unreadable file ({e})"),
                "a readable file",
            ));
            None
        }
    };
    let ini = text(CONFIG_INI, &mut problems);
    let dep = text(DEPLOYMENT_JSON, &mut problems);
    let key = text(OPERATOR_KEY, &mut problems);
    let ssh = text(SSH_ADMIN_KEYS, &mut problems);
    let missing = |name: &str, what: &str, problems: &mut Vec<Problem>| {
        problems.push(Problem::file(name, "no such file", what));
    };
    let ini = match &ini {
        Some(t) => check_ini(t, &mut problems),
        None => {
            missing(
                CONFIG_INI,
                "the node's network settings (see the config folder of the SetupOS image)",
                &mut problems,
            );
            None
        }
    };
    let deployment = match &dep {
        Some(t) => check_deployment(t, &mut problems),
        None => {
            missing(
                DEPLOYMENT_JSON,
                "the deployment: name, registry URLs and genesis hash",
                &mut problems,
            );
            None
        }
    };
    let operator = match &key {
        Some(pem) => check_operator_key(pem, &mut problems),
        None => {
            missing(
                OPERATOR_KEY,
                "the node operator's Ed25519 key (PKCS#8 PEM, as `icos gov keygen` writes)",
                &mut problems,
            );
            None
        }
    };
    let ssh_admin_keys = ssh
        .map(|t| check_ssh_keys(&t, &mut problems))
        .unwrap_or_default();
    match (ini, deployment, operator) {
        (Some((network, node_reward_type, verbose)), Some(deployment), Some((pem, public)))
            if problems.is_empty() =>
        {
            Ok(OperatorConfig {
                network,
                node_reward_type,
                verbose,
                deployment,
                operator_key_pem: pem,
                operator_public_key: public,
                ssh_admin_keys,
            })
        }
        _ => Err(problems),
    }
}

/// The edit distance of two short strings (for "did you mean").
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

type IniResult = (NetworkConfig, Option<String>, bool);

fn check_ini(text: &str, problems: &mut Vec<Problem>) -> Option<IniResult> {
    let (entries, mut p) = crate::ini::parse(CONFIG_INI, text);
    problems.append(&mut p);
    let before = problems.len();
    for e in &entries {
        // `domain` is the key older IC-OS releases use.
        if !KNOWN_KEYS.contains(&e.key.as_str()) && e.key != "domain" {
            let near = KNOWN_KEYS
                .iter()
                .min_by_key(|k| distance(k, &e.key))
                .expect("keys");
            let hint = if distance(near, &e.key) <= 3 {
                format!("; did you mean `{near}`?")
            } else {
                String::new()
            };
            problems.push(Problem::at(
                CONFIG_INI,
                e.line,
                Some(&e.key),
                "an unknown key".to_string(),
                &format!("one of {}{hint}", KNOWN_KEYS.join(", ")),
            ));
        }
    }
    let get = |k: &str| entries.iter().find(|e| e.key == k);
    let required = |k: &str, what: &str, problems: &mut Vec<Problem>| match get(k) {
        Some(e) if !e.value.is_empty() => Some(e.clone()),
        Some(e) => {
            problems.push(Problem::at(
                CONFIG_INI,
                e.line,
                Some(k),
                "an empty value".into(),
                what,
            ));
            None
        }
        None => {
            problems.push(Problem::key(CONFIG_INI, k, "no such key", what));
            None
        }
    };
    let prefix_what = "the node's IPv6 /64 prefix, like 2a00:fb01:400:200";
    let prefix = required("ipv6_prefix", prefix_what, problems).and_then(|e| {
        match node_identity::parse_prefix(&e.value) {
            Ok(p) => Some(format!("{:x}:{:x}:{:x}:{:x}", p[0], p[1], p[2], p[3])),
            Err(_) => {
                problems.push(Problem::at(
                    CONFIG_INI,
                    e.line,
                    Some("ipv6_prefix"),
                    format!("`{}`", e.value),
                    prefix_what,
                ));
                None
            }
        }
    });
    let gw_what = "the IPv6 gateway's address, like 2a00:fb01:400:200::1 or fe80::1";
    let gateway = required("ipv6_gateway", gw_what, problems).and_then(|e| {
        match e.value.parse::<Ipv6Addr>() {
            Ok(a) if !a.is_unspecified() && !a.is_multicast() && !a.is_loopback() => Some(a),
            _ => {
                problems.push(Problem::at(
                    CONFIG_INI,
                    e.line,
                    Some("ipv6_gateway"),
                    format!("`{}`", e.value),
                    gw_what,
                ));
                None
            }
        }
    });
    let ipv4 = check_ipv4(&entries, problems);
    let domain = get("domain_name").or_else(|| get("domain"));
    let domain_name = domain.and_then(|e| {
        if valid_domain(&e.value) {
            Some(e.value.to_ascii_lowercase())
        } else {
            problems.push(Problem::at(
                CONFIG_INI,
                e.line,
                Some(&e.key),
                format!("`{}`", e.value),
                "a domain name like node1.example.com",
            ));
            None
        }
    });
    if let (Some(Some(_)), None) = (&ipv4, &domain_name) {
        if domain.is_none() {
            problems.push(Problem::key(
                CONFIG_INI,
                "domain_name",
                "no such key",
                "a domain name when IPv4 is configured",
            ));
        }
    }
    let reward = get("node_reward_type").and_then(|e| {
        let ok = e.value.strip_prefix("type").is_some_and(|r| {
            !r.is_empty()
                && r.split('.')
                    .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        });
        if ok {
            Some(e.value.clone())
        } else {
            problems.push(Problem::at(
                CONFIG_INI,
                e.line,
                Some("node_reward_type"),
                format!("`{}`", e.value),
                "a reward type like type3.1",
            ));
            None
        }
    });
    let verbose = get("verbose")
        .map(|e| bool_value(e, problems))
        .unwrap_or(false);
    if let Some(e) = get("enable_trusted_execution_environment") {
        if bool_value(e, problems) {
            problems.push(Problem::at(
                CONFIG_INI,
                e.line,
                Some(&e.key),
                "true".into(),
                "false: this release does not run the GuestOS in a trusted execution environment",
            ));
        }
    }
    if problems.len() > before {
        return None;
    }
    Some((
        NetworkConfig {
            ipv6_prefix: prefix?,
            ipv6_gateway: gateway?,
            ipv4: ipv4.flatten(),
            domain_name,
        },
        reward,
        verbose,
    ))
}

fn bool_value(e: &crate::ini::Entry, problems: &mut Vec<Problem>) -> bool {
    match e.value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => true,
        "false" | "no" | "0" | "off" | "" => false,
        _ => {
            problems.push(Problem::at(
                CONFIG_INI,
                e.line,
                Some(&e.key),
                format!("`{}`", e.value),
                "true or false",
            ));
            false
        }
    }
}

/// `None`: a problem was recorded; `Some(None)`: no IPv4; `Some(Some(_))`: IPv4.
fn check_ipv4(
    entries: &[crate::ini::Entry],
    problems: &mut Vec<Problem>,
) -> Option<Option<Ipv4Config>> {
    let get = |k: &str| entries.iter().find(|e| e.key == k && !e.value.is_empty());
    let (a, g, l) = (
        get("ipv4_address"),
        get("ipv4_gateway"),
        get("ipv4_prefix_length"),
    );
    if a.is_none() && g.is_none() && l.is_none() {
        return Some(None);
    }
    let mut ok = true;
    for (k, v) in [
        ("ipv4_address", a),
        ("ipv4_gateway", g),
        ("ipv4_prefix_length", l),
    ] {
        if v.is_none() {
            problems.push(Problem::key(
                CONFIG_INI,
                k,
                "no such key",
                "ipv4_address, ipv4_gateway and ipv4_prefix_length together, or none of them",
            ));
            ok = false;
        }
    }
    let addr = a.and_then(|e| match e.value.parse::<Ipv4Addr>() {
        Ok(x) if !x.is_unspecified() && !x.is_multicast() && !x.is_broadcast() => Some(x),
        _ => {
            problems.push(Problem::at(
                CONFIG_INI,
                e.line,
                Some(&e.key),
                format!("`{}`", e.value),
                "an IPv4 address like 192.0.2.10",
            ));
            None
        }
    });
    let gw = g.and_then(|e| match e.value.parse::<Ipv4Addr>() {
        Ok(x) => Some(x),
        _ => {
            problems.push(Problem::at(
                CONFIG_INI,
                e.line,
                Some(&e.key),
                format!("`{}`", e.value),
                "an IPv4 address like 192.0.2.1",
            ));
            None
        }
    });
    let len = l.and_then(|e| match e.value.parse::<u8>() {
        Ok(n) if (1..=32).contains(&n) => Some(n),
        _ => {
            problems.push(Problem::at(
                CONFIG_INI,
                e.line,
                Some(&e.key),
                format!("`{}`", e.value),
                "a prefix length from 1 to 32",
            ));
            None
        }
    });
    let (Some(address), Some(gateway), Some(prefix_length)) = (addr, gw, len) else {
        return None;
    };
    if !ok {
        return None;
    }
    let mask = if prefix_length == 32 {
        u32::MAX
    } else {
        !(u32::MAX >> prefix_length)
    };
    if u32::from(address) & mask != u32::from(gateway) & mask || address == gateway {
        problems.push(Problem::at(
            CONFIG_INI,
            g.expect("given").line,
            Some("ipv4_gateway"),
            format!("`{gateway}`, outside {address}/{prefix_length} or the node's own address"),
            "a gateway in the node's IPv4 subnet",
        ));
        return None;
    }
    Some(Some(Ipv4Config {
        address,
        prefix_length,
        gateway,
    }))
}

fn valid_domain(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').count() >= 2
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The line of the first occurrence of `"key"` in JSON text (for messages).
fn json_line(text: &str, key: &str) -> Option<usize> {
    let needle = format!("\"{key}\"");
    text.lines()
        .position(|l| l.contains(&needle))
        .map(|i| i + 1)
}

/// Checks of one JSON document, each problem named with its key and line.
struct Json<'a> {
    text: &'a str,
    v: serde_json::Value,
    problems: &'a mut Vec<Problem>,
}

impl Json<'_> {
    fn field(&self, path: &[&str]) -> Option<&serde_json::Value> {
        let mut cur = &self.v;
        for p in path {
            cur = cur.get(p)?;
        }
        Some(cur)
    }

    fn shown(&self, path: &[&str]) -> String {
        self.field(path)
            .map(|x| x.to_string())
            .unwrap_or_else(|| "nothing".into())
    }

    fn bad(&mut self, path: &[&str], found: String, expected: &str) {
        self.problems.push(Problem {
            file: DEPLOYMENT_JSON.into(),
            line: json_line(self.text, path.last().expect("a key")),
            key: Some(path.join(".")),
            found,
            expected: expected.into(),
        });
    }

    /// A number within bounds, `default` when absent.
    fn number(&mut self, path: &[&str], default: u64, min: u64, max: u64) -> u64 {
        match self.field(path).map(|x| (x.as_u64(), x.to_string())) {
            None => default,
            Some((Some(n), _)) if (min..=max).contains(&n) => n,
            Some((_, shown)) => {
                self.bad(path, shown, &format!("a number from {min} to {max}"));
                default
            }
        }
    }

    /// One of `choices` (string values), `default` when absent.
    fn choice<T: Copy>(
        &mut self,
        path: &[&str],
        default: T,
        choices: &[(&str, T)],
        expected: &str,
    ) -> Option<T> {
        let Some(x) = self.field(path) else {
            return Some(default);
        };
        let found = x
            .as_str()
            .and_then(|s| choices.iter().find(|(n, _)| *n == s));
        match found {
            Some((_, t)) => Some(*t),
            None => {
                let shown = self.shown(path);
                self.bad(path, shown, expected);
                None
            }
        }
    }
}

fn check_deployment(text: &str, problems: &mut Vec<Problem>) -> Option<Deployment> {
    let v: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            problems.push(Problem::at(
                DEPLOYMENT_JSON,
                e.line(),
                None,
                format!("invalid JSON ({e})"),
                "a JSON object",
            ));
            return None;
        }
    };
    let before = problems.len();
    let mut j = Json { text, v, problems };
    let name = j
        .field(&["deployment", "name"])
        .and_then(|x| x.as_str())
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string);
    if name.is_none() {
        let shown = j.shown(&["deployment", "name"]);
        j.bad(
            &["deployment", "name"],
            shown,
            "a deployment name like mainnet (letters, digits, - and _)",
        );
    }
    let mgmt_mac = match j.field(&["deployment", "mgmt_mac"]).cloned() {
        None | Some(serde_json::Value::Null) => None,
        Some(x) => match x.as_str().map(str::parse::<Mac>) {
            Some(Ok(m)) => Some(m),
            _ => {
                j.bad(
                    &["deployment", "mgmt_mac"],
                    x.to_string(),
                    "a MAC address like 70:b5:e8:e8:25:de, or null",
                );
                None
            }
        },
    };
    let listed = j
        .field(&["registry", "urls"])
        .and_then(|u| u.as_array())
        .cloned()
        .unwrap_or_default();
    let urls: Vec<String> = listed
        .iter()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect();
    let urls_ok = !urls.is_empty()
        && urls.len() == listed.len()
        && urls.iter().all(|u| {
            (u.starts_with("http://") || u.starts_with("https://"))
                && !u.contains(char::is_whitespace)
                && u.len() <= 512
        });
    if !urls_ok {
        let shown = j.shown(&["registry", "urls"]);
        j.bad(
            &["registry", "urls"],
            shown,
            "a list of registry URLs like [\"https://registry.example\"]",
        );
    }
    let genesis = j
        .field(&["registry", "genesis_hash"])
        .and_then(|x| x.as_str())
        .and_then(|s| s.parse::<Sha256Hex>().ok());
    if genesis.is_none() {
        let shown = j.shown(&["registry", "genesis_hash"]);
        j.bad(
            &["registry", "genesis_hash"],
            shown,
            "the registry's genesis hash (64 hex digits, `icos registry init` prints it)",
        );
    }
    let network = j.choice(
        &["network"],
        NetworkMode::Static,
        &[("static", NetworkMode::Static), ("dhcp", NetworkMode::Dhcp)],
        "\"static\" (the addresses in config.ini) or \"dhcp\" (local networks only)",
    );
    let memory_mib = j.number(&["resources", "memory_mib"], 16384, 512, 1 << 22) as u32;
    let vcpus = j.number(&["resources", "vcpus"], 8, 1, 512) as u32;
    let hardware_profile = j.choice(
        &["hardware_profile"],
        HardwareProfile::Production,
        &[
            ("production", HardwareProfile::Production),
            ("vm", HardwareProfile::Vm),
        ],
        "\"production\" or \"vm\"",
    );
    let keys: Vec<String> =
        j.v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
    for k in keys {
        if ![
            "deployment",
            "registry",
            "network",
            "resources",
            "hardware_profile",
        ]
        .contains(&k.as_str())
        {
            j.bad(
                &[&k],
                "an unknown key".into(),
                "deployment, registry, network, resources or hardware_profile",
            );
        }
    }
    if problems.len() > before {
        return None;
    }
    Some(Deployment {
        name: name?,
        mgmt_mac,
        registry: RegistryRef {
            urls,
            genesis_hash: genesis?,
        },
        network: network?,
        resources: VmResources { memory_mib, vcpus },
        hardware_profile: hardware_profile?,
    })
}

fn check_operator_key(pem: &str, problems: &mut Vec<Problem>) -> Option<(String, String)> {
    match registry_model::keys::parse_key_pem(pem) {
        Ok(k) => Some((pem.to_string(), registry_model::keys::public_hex(&k))),
        Err(e) => {
            problems.push(Problem::file(OPERATOR_KEY, format!("not a usable key ({e})"), "the node operator's Ed25519 private key in PKCS#8 PEM (`icos gov keygen` writes one)"));
            None
        }
    }
}

fn check_ssh_keys(text: &str, problems: &mut Vec<Problem>) -> Vec<String> {
    const TYPES: &[&str] = &[
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut parts = l.split_whitespace();
        let (kind, body) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let b64_ok = !body.is_empty()
            && body.len() % 4 == 0
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
        if TYPES.contains(&kind) && b64_ok {
            keys.push(l.to_string());
        } else {
            let shown: String = l.chars().take(40).collect();
            problems.push(Problem::at(
                SSH_ADMIN_KEYS,
                i + 1,
                None,
                format!("`{shown}`"),
                "an SSH public key line like `ssh-ed25519 AAAA... comment`",
            ));
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Folder(Vec<(&'static str, String)>);

    impl ConfigSource for Folder {
        fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
            Ok(self
                .0
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, t)| t.clone().into_bytes()))
        }
        fn describe(&self) -> String {
            "test folder".into()
        }
    }

    fn key_pem() -> String {
        registry_model::keys::key_pem(&registry_model::keys::generate()).unwrap()
    }

    fn deployment() -> String {
        format!(
            r#"{{
  "deployment": {{ "name": "mainnet", "mgmt_mac": "70:B5:E8:E8:25:DE" }},
  "registry": {{ "urls": ["https://registry.example"], "genesis_hash": "{}" }},
  "network": "static",
  "resources": {{ "memory_mib": 4096, "vcpus": 2 }},
  "hardware_profile": "vm"
}}"#,
            "ab".repeat(32)
        )
    }

    fn folder(ini: &str, dep: &str) -> Folder {
        Folder(vec![
            (CONFIG_INI, ini.to_string()),
            (DEPLOYMENT_JSON, dep.to_string()),
            (OPERATOR_KEY, key_pem()),
        ])
    }

    fn problems(f: &Folder) -> Vec<String> {
        check_folder(f)
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn a_config_written_with_crlf_comments_and_odd_spacing_is_accepted() {
        let ini = "# node 1\r\n\r\n IPV6_PREFIX = 2a00:fb01:400:200 \r\n\tipv6_gateway=\"fe80::1\"\r\n; ipv4\r\nipv4_address = 192.0.2.10\r\nipv4_gateway=192.0.2.1\r\nipv4_prefix_length= 24\r\nDomain_Name = Node1.Example.com\r\nnode_reward_type=type3.1\r\nverbose = yes\r\n";
        let mut f = folder(ini, &deployment());
        f.0.push((
            SSH_ADMIN_KEYS,
            "# admins\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f admin@laptop\n\n".into(),
        ));
        let c = check_folder(&f).unwrap();
        assert_eq!(c.network.ipv6_prefix, "2a00:fb01:400:200");
        assert_eq!(
            c.network.ipv6_gateway,
            "fe80::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(c.network.ipv4.as_ref().unwrap().prefix_length, 24);
        assert_eq!(c.network.domain_name.as_deref(), Some("node1.example.com"));
        assert_eq!(c.node_reward_type.as_deref(), Some("type3.1"));
        assert!(c.verbose);
        assert_eq!(c.ssh_admin_keys.len(), 1);
        assert_eq!(
            c.deployment.mgmt_mac.unwrap().to_string(),
            "70:b5:e8:e8:25:de"
        );
        assert_eq!(c.deployment.hardware_profile, HardwareProfile::Vm);
        // The older key name for the domain is accepted too.
        let old = "ipv6_prefix=2a00:fb01:400:200::/64\nipv6_gateway=2a00:fb01:400:200::1\ndomain=x.example\n";
        assert!(check_folder(&folder(old, &deployment())).is_ok());
    }

    #[test]
    fn every_problem_in_config_ini_is_named_with_its_line_and_key() {
        let ini = "ipv6_prefix=2a00:fb01:400:200:1::\nipv6_gatway=fe80::1\nipv4_address=192.0.2.10\nipv4_prefix_length=40\nnode_reward_type=gold\nverbose=maybe\nenable_trusted_execution_environment=true\ndomain_name=-bad-.example\nnot a line\nipv6_prefix=2a00::\n";
        let p = problems(&folder(ini, &deployment()));
        let all = p.join("\n");
        for want in [
            "config.ini:1: ipv6_prefix: found `2a00:fb01:400:200:1::`",
            "config.ini:2: ipv6_gatway: found an unknown key; expected one of",
            "did you mean `ipv6_gateway`?",
            "config.ini: ipv6_gateway: found no such key",
            "config.ini: ipv4_gateway: found no such key",
            "config.ini:4: ipv4_prefix_length: found `40`",
            "config.ini:5: node_reward_type: found `gold`",
            "config.ini:6: verbose: found `maybe`; expected true or false",
            "config.ini:7: enable_trusted_execution_environment: found true",
            "config.ini:8: domain_name: found `-bad-.example`",
            "config.ini:9: found `not a line`",
            "config.ini:10: ipv6_prefix: found a second `ipv6_prefix` (the first is on line 1)",
        ] {
            assert!(all.contains(want), "missing `{want}` in:\n{all}");
        }
    }

    #[test]
    fn ipv4_must_be_complete_and_its_gateway_in_its_subnet() {
        let base = "ipv6_prefix=2a00:fb01:400:200\nipv6_gateway=fe80::1\n";
        let outside = format!("{base}ipv4_address=192.0.2.10\nipv4_gateway=198.51.100.1\nipv4_prefix_length=24\ndomain_name=a.example\n");
        let all = problems(&folder(&outside, &deployment())).join("\n");
        assert!(
            all.contains("config.ini:4: ipv4_gateway") && all.contains("outside 192.0.2.10/24"),
            "{all}"
        );
        let no_domain = format!(
            "{base}ipv4_address=192.0.2.10\nipv4_gateway=192.0.2.1\nipv4_prefix_length=24\n"
        );
        let all = problems(&folder(&no_domain, &deployment())).join("\n");
        assert!(
            all.contains(
                "domain_name: found no such key; expected a domain name when IPv4 is configured"
            ),
            "{all}"
        );
    }

    #[test]
    fn deployment_json_problems_name_their_key_and_line() {
        let ini = "ipv6_prefix=2a00:fb01:400:200\nipv6_gateway=fe80::1\n";
        let bad = r#"{
  "deployment": { "name": "main net", "mgmt_mac": "70:b5" },
  "registry": { "urls": ["ftp://x"], "genesis_hash": "abc" },
  "network": "bridged",
  "resources": { "memory_mib": 1, "vcpus": 0 },
  "hardware_profile": "laptop",
  "extra": 1
}"#;
        let all = problems(&folder(ini, bad)).join("\n");
        for want in [
            "deployment.json:2: deployment.name: found \"main net\"",
            "deployment.json:2: deployment.mgmt_mac: found \"70:b5\"",
            "deployment.json:3: registry.urls",
            "deployment.json:3: registry.genesis_hash: found \"abc\"",
            "deployment.json:4: network: found \"bridged\"",
            "deployment.json:5: resources.memory_mib: found 1; expected a number from 512",
            "deployment.json:5: resources.vcpus: found 0",
            "deployment.json:6: hardware_profile: found \"laptop\"",
            "deployment.json:7: extra: found an unknown key",
        ] {
            assert!(all.contains(want), "missing `{want}` in:\n{all}");
        }
        let all = problems(&folder(ini, "{\n  \"deployment\": \n")).join("\n");
        assert!(
            all.contains("deployment.json:3: found invalid JSON"),
            "{all}"
        );
    }

    #[test]
    fn missing_files_and_bad_keys_are_all_reported_together() {
        let all = problems(&Folder(vec![(OPERATOR_KEY, "-----BEGIN junk".into())])).join("\n");
        for want in [
            "config.ini: found no such file",
            "deployment.json: found no such file",
            "node_operator_private_key.pem: found not a usable key",
        ] {
            assert!(all.contains(want), "missing `{want}` in:\n{all}");
        }
        let mut f = folder(
            "ipv6_prefix=2a00:fb01:400:200\nipv6_gateway=fe80::1\n",
            &deployment(),
        );
        f.0.push((
            SSH_ADMIN_KEYS,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f\nssh-dss AAAAB3Nza old\n".into(),
        ));
        let all = problems(&f).join("\n");
        assert!(
            all.contains("ssh_authorized_keys/admin:2: found `ssh-dss AAAAB3Nza old`"),
            "{all}"
        );
        f.0.push((CONFIG_INI, String::new()));
        assert!(distance("ipv6_gatway", "ipv6_gateway") == 1);
    }
}
