//! The registry: the network's single source of truth, and the typed actions that change it.

use crate::ModelError;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub type NeuronId = u64;
pub type OperatorId = String;
pub type NodeId = String;
pub type SubnetId = String;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neuron {
    pub id: NeuronId,
    pub public_key: String,
    pub voting_power: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    pub id: OperatorId,
    pub public_key: String,
    /// How many nodes this operator may register without a vote.
    pub node_allowance: u32,
    #[serde(default)]
    pub nodes_added: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub id: NodeId,
    pub operator: OperatorId,
    pub public_key: String,
    pub ipv6: String,
    pub http_endpoint: String,
    /// HostOS version this node must run (set by a deploy proposal).
    #[serde(default)]
    pub hostos_version: Option<String>,
    /// Where the other nodes of its subnet reach its peer routes (the subnet's ordering);
    /// none: `http://[<ipv6>]:4100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_endpoint: Option<String>,
}

/// A range of canister indices (the 8-byte index inside an ICP canister principal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanisterRange {
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub id: SubnetId,
    pub nodes: Vec<NodeId>,
    pub canister_ranges: Vec<CanisterRange>,
    pub guestos_version: String,
    /// The subnet's certification key (present when the network has a root key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<crate::subnet_key::SubnetKey>,
    /// The nodes it was created with: they start its ordered log; nodes added later join
    /// the log the others already have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub founders: Vec<NodeId>,
}

/// An elected OS version: what nodes may download and install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Elected {
    pub version: String,
    pub sha256: sha256_hex::Sha256Hex,
    #[serde(default)]
    pub size: Option<u64>,
    pub urls: Vec<String>,
}

impl Elected {
    /// The order in which `node` tries the download URLs: see [`mirror_order`].
    pub fn urls_for(&self, node: &str) -> Vec<&String> {
        mirror_order(&self.urls, node)
    }
}

/// The order in which `node` tries `urls`: the list rotated by a node-specific offset, so a
/// fleet spreads its downloads over the mirrors and every URL is still tried.
pub fn mirror_order<'a>(urls: &'a [String], node: &str) -> Vec<&'a String> {
    if urls.is_empty() {
        return Vec::new();
    }
    let start = node.bytes().map(usize::from).sum::<usize>() % urls.len();
    urls[start..].iter().chain(&urls[..start]).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "scope", content = "id")]
pub enum FirewallScope {
    Global,
    Subnet(SubnetId),
    Node(NodeId),
}

impl FirewallScope {
    pub fn key(&self) -> String {
        match self {
            FirewallScope::Global => "global".into(),
            FirewallScope::Subnet(s) => format!("subnet:{s}"),
            FirewallScope::Node(n) => format!("node:{n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FwAction {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallRule {
    pub action: FwAction,
    pub protocol: Protocol,
    pub ports: Vec<u16>,
    /// Source prefixes, e.g. `2001:db8::/32` or `10.0.0.0/8`.
    pub sources: Vec<String>,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Public key of the registry server's online key (signs freshness statements only).
    pub online_key: String,
    /// How long a proposal stays open.
    pub proposal_deadline_secs: u64,
    /// How long a freshness statement is valid.
    pub freshness_secs: u64,
}

/// The whole registry at one version.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub neurons: BTreeMap<NeuronId, Neuron>,
    pub operators: BTreeMap<OperatorId, Operator>,
    pub nodes: BTreeMap<NodeId, Node>,
    pub subnets: BTreeMap<SubnetId, Subnet>,
    pub unassigned_guestos_version: Option<String>,
    pub guestos_versions: BTreeMap<String, Elected>,
    pub hostos_versions: BTreeMap<String, Elected>,
    pub api_boundary_nodes: BTreeSet<NodeId>,
    /// Rules by scope key (`global`, `subnet:<id>`, `node:<id>`).
    pub firewall: BTreeMap<String, Vec<FirewallRule>>,
    pub settings: Option<Settings>,
    /// Hash of the genesis change: every proposal and registration names it.
    #[serde(default)]
    pub genesis_hash: String,
    /// The network's root BLS public key (DER, hex), from the genesis: every subnet's key is
    /// delegated from it, and agents trust it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key: Option<String>,
    /// Chain time: the timestamp of the newest change (changes never go back in time).
    #[serde(default)]
    pub time: u64,
    /// Proposals and registrations executed whose window is still open: hash → expiry.
    /// A second execution of one is refused; after its expiry it is refused by its window.
    #[serde(default)]
    pub executed: BTreeMap<String, u64>,
}

/// A typed governance proposal action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Action {
    ElectGuestos(Elected),
    RetireGuestos {
        version: String,
    },
    ElectHostos(Elected),
    RetireHostos {
        version: String,
    },
    DeployGuestosToSubnet {
        subnet: SubnetId,
        version: String,
    },
    DeployGuestosToUnassigned {
        version: String,
    },
    DeployHostosToNodes {
        nodes: Vec<NodeId>,
        version: String,
    },
    AddOperator {
        id: OperatorId,
        public_key: String,
        node_allowance: u32,
    },
    RemoveOperator {
        id: OperatorId,
    },
    CreateSubnet {
        id: SubnetId,
        nodes: Vec<NodeId>,
        canister_ranges: Vec<CanisterRange>,
        guestos_version: String,
        /// Required when the network has a root key; see [`crate::subnet_key`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<crate::subnet_key::SubnetKey>,
    },
    AddNodesToSubnet {
        subnet: SubnetId,
        nodes: Vec<NodeId>,
        /// The subnet's secret key sealed to each new node (when the subnet has a key).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        sealed_keys: BTreeMap<NodeId, String>,
    },
    RemoveNodesFromSubnet {
        subnet: SubnetId,
        nodes: Vec<NodeId>,
    },
    SetFirewallRules {
        scope: FirewallScope,
        rules: Vec<FirewallRule>,
    },
    AddApiBoundaryNodes {
        nodes: Vec<NodeId>,
    },
    RemoveApiBoundaryNodes {
        nodes: Vec<NodeId>,
    },
    ChangeGovernance {
        #[serde(default)]
        upsert_neurons: Vec<Neuron>,
        #[serde(default)]
        remove_neurons: Vec<NeuronId>,
        #[serde(default)]
        online_key: Option<String>,
        #[serde(default)]
        proposal_deadline_secs: Option<u64>,
        #[serde(default)]
        freshness_secs: Option<u64>,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::ElectGuestos(_) => "elect-guestos",
            Action::RetireGuestos { .. } => "retire-guestos",
            Action::ElectHostos(_) => "elect-hostos",
            Action::RetireHostos { .. } => "retire-hostos",
            Action::DeployGuestosToSubnet { .. } => "deploy-guestos-to-subnet",
            Action::DeployGuestosToUnassigned { .. } => "deploy-guestos-to-unassigned",
            Action::DeployHostosToNodes { .. } => "deploy-hostos-to-nodes",
            Action::AddOperator { .. } => "add-operator",
            Action::RemoveOperator { .. } => "remove-operator",
            Action::CreateSubnet { .. } => "create-subnet",
            Action::AddNodesToSubnet { .. } => "add-nodes-to-subnet",
            Action::RemoveNodesFromSubnet { .. } => "remove-nodes-from-subnet",
            Action::SetFirewallRules { .. } => "set-firewall-rules",
            Action::AddApiBoundaryNodes { .. } => "add-api-boundary-nodes",
            Action::RemoveApiBoundaryNodes { .. } => "remove-api-boundary-nodes",
            Action::ChangeGovernance { .. } => "change-governance",
        }
    }
}

fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::Invalid(msg.into())
}

/// A short name of ASCII letters, digits and the given punctuation.
fn check_name(v: &str, punctuation: &str, what: &str) -> Result<(), ModelError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || punctuation.contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("`{v}` is not a valid {what}")))
    }
}

pub(crate) fn check_version_name(v: &str) -> Result<(), ModelError> {
    check_name(v, ".+~-", "version name")
}

fn check_id(kind: &str, v: &str) -> Result<(), ModelError> {
    check_name(v, "-_.", &format!("{kind} id"))
}

fn check_elected(e: &Elected) -> Result<(), ModelError> {
    check_version_name(&e.version)?;
    if e.urls.is_empty() || e.urls.len() > 16 {
        return Err(invalid("an elected version needs 1 to 16 download URLs"));
    }
    for u in &e.urls {
        if !(u.starts_with("http://") || u.starts_with("https://"))
            || u.len() > 512
            || u.contains(char::is_whitespace)
        {
            return Err(invalid(format!("`{u}` is not an http(s) URL")));
        }
    }
    Ok(())
}

/// Check a source prefix: an IPv4 or IPv6 address with an optional /length.
fn check_prefix(p: &str) -> Result<(), ModelError> {
    let (addr, len) = match p.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (p, None),
    };
    let max = match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => 32,
        Ok(std::net::IpAddr::V6(_)) => 128,
        Err(_) => return Err(invalid(format!("`{p}` is not an IP prefix"))),
    };
    if let Some(l) = len {
        match l.parse::<u8>() {
            Ok(n) if n <= max => {}
            _ => return Err(invalid(format!("`{p}` has an invalid prefix length"))),
        }
    }
    Ok(())
}

/// The sum of the neurons' voting power, or an error when it does not fit in 64 bits.
pub fn sum_voting_power<'a>(
    neurons: impl IntoIterator<Item = &'a Neuron>,
) -> Result<u64, ModelError> {
    neurons
        .into_iter()
        .try_fold(0u64, |sum, n| sum.checked_add(n.voting_power))
        .ok_or_else(|| invalid("the total voting power does not fit in 64 bits"))
}

impl Registry {
    /// All voting power; the registry never holds neurons whose total overflows (the genesis
    /// and governance changes refuse it), but callers still get an error rather than a wrap.
    pub fn total_voting_power(&self) -> Result<u64, ModelError> {
        sum_voting_power(self.neurons.values())
    }

    /// How long proposals stay open (a day when the registry has no settings yet).
    pub fn proposal_deadline_secs(&self) -> u64 {
        self.settings
            .as_ref()
            .map(|s| s.proposal_deadline_secs)
            .unwrap_or(86_400)
    }

    fn node_subnet(&self, node: &str) -> Option<&Subnet> {
        self.subnets
            .values()
            .find(|s| s.nodes.iter().any(|n| n == node))
    }

    fn not_api_boundary(&self, n: &str) -> Result<(), ModelError> {
        if self.api_boundary_nodes.contains(n) {
            return Err(invalid(format!(
                "node `{n}` is an API boundary node: remove it from them before it joins a subnet"
            )));
        }
        Ok(())
    }

    fn need_node(&self, n: &str) -> Result<(), ModelError> {
        if self.nodes.contains_key(n) {
            Ok(())
        } else {
            Err(invalid(format!("unknown node `{n}`")))
        }
    }

    fn need_subnet(&self, s: &str) -> Result<&Subnet, ModelError> {
        self.subnets
            .get(s)
            .ok_or_else(|| invalid(format!("unknown subnet `{s}`")))
    }

    fn need_guestos(&self, v: &str) -> Result<(), ModelError> {
        if self.guestos_versions.contains_key(v) {
            Ok(())
        } else {
            Err(invalid(format!("GuestOS version `{v}` is not elected")))
        }
    }

    fn ranges_overlap(
        &self,
        ranges: &[CanisterRange],
        except: Option<&str>,
    ) -> Result<(), ModelError> {
        let mut all: Vec<CanisterRange> = self
            .subnets
            .values()
            .filter(|s| Some(s.id.as_str()) != except)
            .flat_map(|s| s.canister_ranges.clone())
            .collect();
        for r in ranges {
            if r.start > r.end {
                return Err(invalid(format!(
                    "canister range {}..{} is empty",
                    r.start, r.end
                )));
            }
            all.push(*r);
        }
        all.sort();
        for w in all.windows(2) {
            if w[1].start <= w[0].end {
                return Err(invalid(format!(
                    "canister range {}..{} overlaps {}..{}",
                    w[1].start, w[1].end, w[0].start, w[0].end
                )));
            }
        }
        Ok(())
    }

    /// Check that `action` can be applied to this registry (the same check runs when a
    /// proposal is submitted and again when it is executed).
    pub fn validate(&self, action: &Action) -> Result<(), ModelError> {
        match action {
            Action::ElectGuestos(e) | Action::ElectHostos(e) => {
                check_elected(e)?;
                let map = if matches!(action, Action::ElectGuestos(_)) {
                    &self.guestos_versions
                } else {
                    &self.hostos_versions
                };
                if map.contains_key(&e.version) {
                    return Err(invalid(format!(
                        "version `{}` is already elected",
                        e.version
                    )));
                }
            }
            Action::RetireGuestos { version } => {
                self.need_guestos(version)?;
                let used = self.subnets.values().any(|s| &s.guestos_version == version)
                    || self.unassigned_guestos_version.as_ref() == Some(version);
                if used {
                    return Err(invalid(format!("GuestOS `{version}` is still deployed")));
                }
            }
            Action::RetireHostos { version } => {
                if !self.hostos_versions.contains_key(version) {
                    return Err(invalid(format!(
                        "HostOS version `{version}` is not elected"
                    )));
                }
                if self
                    .nodes
                    .values()
                    .any(|n| n.hostos_version.as_ref() == Some(version))
                {
                    return Err(invalid(format!("HostOS `{version}` is still deployed")));
                }
            }
            Action::DeployGuestosToSubnet { subnet, version } => {
                self.need_subnet(subnet)?;
                self.need_guestos(version)?;
            }
            Action::DeployGuestosToUnassigned { version } => self.need_guestos(version)?,
            Action::DeployHostosToNodes { nodes, version } => {
                if nodes.is_empty() {
                    return Err(invalid("no nodes given"));
                }
                for n in nodes {
                    self.need_node(n)?;
                }
                if !self.hostos_versions.contains_key(version) {
                    return Err(invalid(format!(
                        "HostOS version `{version}` is not elected"
                    )));
                }
            }
            Action::AddOperator { id, public_key, .. } => {
                check_id("operator", id)?;
                crate::keys::parse_public(public_key)?;
                if self.operators.contains_key(id) {
                    return Err(invalid(format!("operator `{id}` exists")));
                }
            }
            Action::RemoveOperator { id } => {
                if !self.operators.contains_key(id) {
                    return Err(invalid(format!("unknown operator `{id}`")));
                }
                if self.nodes.values().any(|n| &n.operator == id) {
                    return Err(invalid(format!("operator `{id}` still has nodes")));
                }
            }
            Action::CreateSubnet {
                id,
                nodes,
                canister_ranges,
                guestos_version,
                key,
            } => {
                check_id("subnet", id)?;
                match (&self.root_key, key) {
                    (Some(root), Some(k)) => k.check(root, nodes, canister_ranges)?,
                    (Some(_), None) => {
                        return Err(invalid(
                            "this network has a root key: a new subnet needs its key (delegated by the root key, sealed to each node)",
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(invalid(
                            "a subnet key in a network without a root key (nothing could verify it)",
                        ))
                    }
                    (None, None) => {}
                }
                if self.subnets.contains_key(id) {
                    return Err(invalid(format!("subnet `{id}` exists")));
                }
                if nodes.is_empty() {
                    return Err(invalid("a subnet needs nodes"));
                }
                let mut seen = BTreeSet::new();
                for n in nodes {
                    self.need_node(n)?;
                    if !seen.insert(n) {
                        return Err(invalid(format!("node `{n}` listed twice")));
                    }
                    if let Some(s) = self.node_subnet(n) {
                        return Err(invalid(format!(
                            "node `{n}` is already in subnet `{}`",
                            s.id
                        )));
                    }
                    self.not_api_boundary(n)?;
                }
                self.need_guestos(guestos_version)?;
                self.ranges_overlap(canister_ranges, None)?;
            }
            Action::AddNodesToSubnet {
                subnet,
                nodes,
                sealed_keys,
            } => {
                let s = self.need_subnet(subnet)?;
                match &s.key {
                    Some(k) => crate::subnet_key::SubnetKey {
                        sealed: sealed_keys.clone(),
                        ..k.clone()
                    }
                    .check_sealed(nodes)?,
                    None if !sealed_keys.is_empty() => {
                        return Err(invalid(format!(
                            "sealed keys for subnet `{subnet}`, which has no key"
                        )))
                    }
                    None => {}
                }
                for n in nodes {
                    self.need_node(n)?;
                    if let Some(s) = self.node_subnet(n) {
                        return Err(invalid(format!(
                            "node `{n}` is already in subnet `{}`",
                            s.id
                        )));
                    }
                    self.not_api_boundary(n)?;
                }
            }
            Action::RemoveNodesFromSubnet { subnet, nodes } => {
                let s = self.need_subnet(subnet)?;
                for n in nodes {
                    if !s.nodes.contains(n) {
                        return Err(invalid(format!("node `{n}` is not in subnet `{subnet}`")));
                    }
                }
                if s.nodes.len() <= nodes.len() {
                    return Err(invalid(format!(
                        "subnet `{subnet}` would have no nodes left"
                    )));
                }
            }
            Action::SetFirewallRules { scope, rules } => {
                match scope {
                    FirewallScope::Global => {}
                    FirewallScope::Subnet(s) => {
                        self.need_subnet(s)?;
                    }
                    FirewallScope::Node(n) => self.need_node(n)?,
                }
                if rules.len() > 256 {
                    return Err(invalid("at most 256 firewall rules per scope"));
                }
                for r in rules {
                    if r.ports.is_empty() || r.ports.contains(&0) {
                        return Err(invalid("a firewall rule needs ports between 1 and 65535"));
                    }
                    for p in &r.sources {
                        check_prefix(p)?;
                    }
                }
            }
            Action::AddApiBoundaryNodes { nodes } | Action::RemoveApiBoundaryNodes { nodes } => {
                for n in nodes {
                    self.need_node(n)?;
                }
                // A node runs one payload: a boundary is a node in no subnet, as on the IC.
                if let Action::AddApiBoundaryNodes { .. } = action {
                    for n in nodes {
                        if let Some(s) = self.node_subnet(n) {
                            return Err(invalid(format!(
                                "node `{n}` is in subnet `{}`: an API boundary node must be in none",
                                s.id
                            )));
                        }
                    }
                }
                if let Action::RemoveApiBoundaryNodes { .. } = action {
                    for n in nodes {
                        if !self.api_boundary_nodes.contains(n) {
                            return Err(invalid(format!("node `{n}` is not an API boundary node")));
                        }
                    }
                }
            }
            Action::ChangeGovernance {
                upsert_neurons,
                remove_neurons,
                online_key,
                proposal_deadline_secs,
                freshness_secs,
            } => {
                let mut after = self.neurons.clone();
                for n in upsert_neurons {
                    crate::keys::parse_public(&n.public_key)?;
                    after.insert(n.id, n.clone());
                }
                for id in remove_neurons {
                    if after.remove(id).is_none() {
                        return Err(invalid(format!("unknown neuron {id}")));
                    }
                }
                if sum_voting_power(after.values())? == 0 {
                    return Err(invalid("governance would have no voting power left"));
                }
                if let Some(k) = online_key {
                    crate::keys::parse_public(k)?;
                }
                if proposal_deadline_secs == &Some(0) || freshness_secs == &Some(0) {
                    return Err(invalid("deadlines must be above 0"));
                }
            }
        }
        Ok(())
    }

    /// Apply a validated action.
    pub fn apply(&mut self, action: &Action) -> Result<(), ModelError> {
        self.validate(action)?;
        match action.clone() {
            Action::ElectGuestos(e) => {
                self.guestos_versions.insert(e.version.clone(), e);
            }
            Action::ElectHostos(e) => {
                self.hostos_versions.insert(e.version.clone(), e);
            }
            Action::RetireGuestos { version } => {
                self.guestos_versions.remove(&version);
            }
            Action::RetireHostos { version } => {
                self.hostos_versions.remove(&version);
            }
            Action::DeployGuestosToSubnet { subnet, version } => {
                self.subnets
                    .get_mut(&subnet)
                    .expect("validated")
                    .guestos_version = version;
            }
            Action::DeployGuestosToUnassigned { version } => {
                self.unassigned_guestos_version = Some(version)
            }
            Action::DeployHostosToNodes { nodes, version } => {
                for n in nodes {
                    self.nodes.get_mut(&n).expect("validated").hostos_version =
                        Some(version.clone());
                }
            }
            Action::AddOperator {
                id,
                public_key,
                node_allowance,
            } => {
                self.operators.insert(
                    id.clone(),
                    Operator {
                        id,
                        public_key,
                        node_allowance,
                        nodes_added: 0,
                    },
                );
            }
            Action::RemoveOperator { id } => {
                self.operators.remove(&id);
            }
            Action::CreateSubnet {
                id,
                nodes,
                canister_ranges,
                guestos_version,
                key,
            } => {
                self.subnets.insert(
                    id.clone(),
                    Subnet {
                        id,
                        founders: nodes.clone(),
                        nodes,
                        canister_ranges,
                        guestos_version,
                        key,
                    },
                );
            }
            Action::AddNodesToSubnet {
                subnet,
                nodes,
                sealed_keys,
            } => {
                let s = self.subnets.get_mut(&subnet).expect("validated");
                s.nodes.extend(nodes);
                if let Some(k) = &mut s.key {
                    k.sealed.extend(sealed_keys);
                }
            }
            Action::RemoveNodesFromSubnet { subnet, nodes } => {
                let s = self.subnets.get_mut(&subnet).expect("validated");
                s.nodes.retain(|n| !nodes.contains(n));
                if let Some(k) = &mut s.key {
                    k.sealed.retain(|n, _| !nodes.contains(n));
                }
            }
            Action::SetFirewallRules { scope, rules } => {
                if rules.is_empty() {
                    self.firewall.remove(&scope.key());
                } else {
                    self.firewall.insert(scope.key(), rules);
                }
            }
            Action::AddApiBoundaryNodes { nodes } => self.api_boundary_nodes.extend(nodes),
            Action::RemoveApiBoundaryNodes { nodes } => {
                for n in nodes {
                    self.api_boundary_nodes.remove(&n);
                }
            }
            Action::ChangeGovernance {
                upsert_neurons,
                remove_neurons,
                online_key,
                proposal_deadline_secs,
                freshness_secs,
            } => {
                for n in upsert_neurons {
                    self.neurons.insert(n.id, n);
                }
                for id in remove_neurons {
                    self.neurons.remove(&id);
                }
                if let Some(s) = self.settings.as_mut() {
                    if let Some(k) = online_key {
                        s.online_key = k;
                    }
                    if let Some(d) = proposal_deadline_secs {
                        s.proposal_deadline_secs = d;
                    }
                    if let Some(f) = freshness_secs {
                        s.freshness_secs = f;
                    }
                }
            }
        }
        Ok(())
    }

    // ---- queries used by nodes, host agents and boundary nodes ----

    /// The GuestOS a node must run: its subnet's, or the unassigned nodes' one.
    pub fn guestos_for_node(&self, node: &str) -> Option<&Elected> {
        let version = match self.node_subnet(node) {
            Some(s) => Some(&s.guestos_version),
            None => self.unassigned_guestos_version.as_ref(),
        }?;
        self.guestos_versions.get(version)
    }

    /// The HostOS a node must run.
    pub fn hostos_for_node(&self, node: &str) -> Option<&Elected> {
        let v = self.nodes.get(node)?.hostos_version.as_ref()?;
        self.hostos_versions.get(v)
    }

    /// Nodes registered with `addr` (however its text was written). Registration keeps
    /// addresses unique, which is how a host finds the node of the guest it runs.
    pub fn nodes_with_ipv6(&self, addr: std::net::Ipv6Addr) -> impl Iterator<Item = &Node> {
        self.nodes
            .values()
            .filter(move |n| n.ipv6.parse::<std::net::Ipv6Addr>().ok() == Some(addr))
    }

    /// The subnet hosting a canister index, and its nodes.
    pub fn nodes_for_canister(&self, canister: u64) -> Option<(&Subnet, Vec<&Node>)> {
        let s = self.subnets.values().find(|s| {
            s.canister_ranges
                .iter()
                .any(|r| r.start <= canister && canister <= r.end)
        })?;
        Some((
            s,
            s.nodes.iter().filter_map(|n| self.nodes.get(n)).collect(),
        ))
    }

    /// Firewall rules for a node: its own rules first, then its subnet's, then the global ones.
    pub fn firewall_for_node(&self, node: &str) -> Vec<FirewallRule> {
        let mut out = Vec::new();
        let mut keys = vec![FirewallScope::Node(node.to_string()).key()];
        if let Some(s) = self.node_subnet(node) {
            keys.push(FirewallScope::Subnet(s.id.clone()).key());
        }
        keys.push(FirewallScope::Global.key());
        for k in keys {
            if let Some(r) = self.firewall.get(&k) {
                out.extend(r.iter().cloned());
            }
        }
        out
    }
}

/// The node id derived from a node's public key (so it cannot be chosen freely).
pub fn node_id(node_public_key: &str) -> NodeId {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest([b"icos-node-id\0".as_slice(), node_public_key.as_bytes()].concat());
    format!("node-{}", &hex::encode(h)[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_rotated_per_node_and_all_tried() {
        let urls: Vec<String> = (0..3).map(|i| format!("http://m{i}/p.tar")).collect();
        let mut firsts = std::collections::BTreeSet::new();
        for node in ["a", "b", "c", "node-xyz"] {
            let order = mirror_order(&urls, node);
            assert_eq!(order.len(), 3);
            let mut sorted: Vec<_> = order.iter().map(|s| s.as_str()).collect();
            sorted.sort();
            assert_eq!(
                sorted,
                ["http://m0/p.tar", "http://m1/p.tar", "http://m2/p.tar"]
            );
            firsts.insert(order[0].clone());
        }
        assert!(firsts.len() > 1, "every node starts at the same mirror");
        assert!(mirror_order(&[], "a").is_empty());
    }
}
