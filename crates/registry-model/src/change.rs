//! The change log: every registry version is a [`Change`] carrying its evidence (the genesis,
//! an adopted proposal with enough valid votes, or a node registration signed by its
//! operator) and the hash of the change before it. Anyone holding the genesis hash can
//! replay the log and check every step: nothing depends on trusting the server.

use crate::keys::{self, SigCheck};
use crate::registry::{
    node_id, Action, Neuron, NeuronId, Node, Operator, OperatorId, Registry, Settings,
};
use crate::ModelError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest accepted serialized change (a proposal with every neuron's vote fits easily).
pub const MAX_CHANGE_BYTES: usize = 256 * 1024;
/// Largest accepted request body (proposal, vote, registration).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The genesis: initial neurons, node operators and settings (and optionally versions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub network: String,
    pub settings: Settings,
    pub neurons: Vec<Neuron>,
    #[serde(default)]
    pub operators: Vec<Operator>,
    #[serde(default)]
    pub actions: Vec<Action>,
    /// The network's root BLS public key (DER, hex); its secret stays with whoever made the
    /// genesis, who delegates each subnet's key from it ([`crate::subnet_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key: Option<String>,
}

impl Genesis {
    /// Parse `genesis.toml`.
    pub fn from_toml(text: &str) -> Result<Genesis, ModelError> {
        toml::from_str(text).map_err(|e| ModelError::Invalid(format!("genesis: {e}")))
    }

    /// The registry the genesis describes.
    pub fn registry(&self) -> Result<Registry, ModelError> {
        let mut r = Registry {
            settings: Some(self.settings.clone()),
            ..Registry::default()
        };
        if self.network.is_empty() || self.network.len() > 64 {
            return Err(ModelError::Invalid(
                "genesis: network name must be 1-64 characters".into(),
            ));
        }
        keys::parse_public(&self.settings.online_key)?;
        if let Some(root) = &self.root_key {
            hex::decode(root)
                .ok()
                .and_then(|der| certified_state::public_key_from_der(&der).ok())
                .ok_or_else(|| {
                    ModelError::Invalid("genesis: root_key is not a hex DER BLS public key".into())
                })?;
            r.root_key = Some(root.clone());
        }
        if self.settings.proposal_deadline_secs == 0 || self.settings.freshness_secs == 0 {
            return Err(ModelError::Invalid(
                "genesis: deadlines must be above 0".into(),
            ));
        }
        for n in &self.neurons {
            keys::parse_public(&n.public_key)?;
            if r.neurons.insert(n.id, n.clone()).is_some() {
                return Err(ModelError::Invalid(format!(
                    "genesis: neuron {} twice",
                    n.id
                )));
            }
        }
        match r.total_voting_power() {
            Ok(0) => return Err(ModelError::Invalid("genesis: no voting power".into())),
            Ok(_) => {}
            Err(_) => {
                return Err(ModelError::Invalid(
                    "genesis: the total voting power does not fit in 64 bits".into(),
                ))
            }
        }
        for o in &self.operators {
            r.apply(&Action::AddOperator {
                id: o.id.clone(),
                public_key: o.public_key.clone(),
                node_allowance: o.node_allowance,
            })?;
        }
        for a in &self.actions {
            r.apply(a)?;
        }
        Ok(r)
    }
}

/// What a neuron proposes. Signed by the proposer; its hash is what votes sign.
///
/// Besides the action, the body binds the decision to one place in one network's history,
/// so that whoever relays it (the server, holding only the online key) cannot use it
/// anywhere else: `network` names the genesis, `base_version` the registry version the
/// proposer saw (it cannot be executed at or before it), `expires_at` the chain time after
/// which it cannot be executed at all. While it can be executed, its hash is remembered in
/// [`Registry::executed`], so it executes at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalBody {
    /// Hash of the genesis change of the network this proposal is for.
    pub network: String,
    /// The registry version the proposal was made on top of.
    pub base_version: u64,
    /// Seconds since the epoch after which the proposal cannot be executed.
    pub expires_at: u64,
    pub proposer: NeuronId,
    pub title: String,
    pub action: Action,
    /// Chosen by the proposer so that two identical proposals have different hashes.
    pub nonce: u64,
}

impl ProposalBody {
    /// A proposal on top of `reg` at `version`, open for the registry's proposal deadline
    /// from `now`, with a random nonce.
    pub fn new(
        reg: &Registry,
        version: u64,
        proposer: NeuronId,
        title: String,
        action: Action,
        now: u64,
    ) -> Result<ProposalBody, ModelError> {
        Ok(ProposalBody {
            network: reg.genesis_hash.clone(),
            base_version: version,
            expires_at: now.saturating_add(reg.proposal_deadline_secs()),
            proposer,
            title,
            action,
            nonce: keys::random_u64()?,
        })
    }

    pub fn hash(&self) -> [u8; 32] {
        domain_hash(b"icos-proposal", &canonical(self))
    }
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedProposal {
    pub body: ProposalBody,
    pub signature: String,
}

impl SignedProposal {
    pub fn sign(body: ProposalBody, key: &keys::SecretKey) -> Self {
        let signature = keys::sign(key, &body.hash());
        SignedProposal { body, signature }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    Yes,
    No,
}

/// A neuron's vote: a signature over the proposal hash and the choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedVote {
    pub neuron: NeuronId,
    pub vote: Vote,
    pub signature: String,
}

pub fn vote_message(proposal_hash: &[u8; 32], vote: Vote) -> Vec<u8> {
    let mut m = b"icos-vote\0".to_vec();
    m.extend_from_slice(proposal_hash);
    m.push(match vote {
        Vote::Yes => 1,
        Vote::No => 0,
    });
    m
}

impl SignedVote {
    pub fn sign(
        proposal_hash: &[u8; 32],
        neuron: NeuronId,
        vote: Vote,
        key: &keys::SecretKey,
    ) -> Self {
        SignedVote {
            neuron,
            vote,
            signature: keys::sign(key, &vote_message(proposal_hash, vote)),
        }
    }
}

/// A node operator's request to add a node (no vote needed within the allowance). Bound
/// to a network and a time window like a proposal, and executed at most once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Hash of the genesis change of the network this registration is for.
    pub network: String,
    /// Seconds since the epoch after which the registration cannot be executed.
    pub expires_at: u64,
    pub operator: OperatorId,
    pub node_public_key: String,
    pub ipv6: String,
    pub http_endpoint: String,
    pub nonce: u64,
    /// Where the node's subnet peers reach it (see [`crate::Node::peer_endpoint`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_endpoint: Option<String>,
}

/// How long a registration request stays valid after it is signed.
pub const REGISTRATION_VALID_SECS: u64 = 3600;
/// How far a proposer's or operator's clock may be ahead of the chain's when it sets a
/// decision's expiry.
pub const CLOCK_SKEW_SECS: u64 = 300;

impl Registration {
    /// A registration for the network of `reg`, valid for [`REGISTRATION_VALID_SECS`] from
    /// `now`, with a random nonce.
    pub fn new(
        reg: &Registry,
        operator: OperatorId,
        node_public_key: String,
        ipv6: String,
        http_endpoint: String,
        now: u64,
    ) -> Result<Registration, ModelError> {
        Ok(Registration {
            network: reg.genesis_hash.clone(),
            expires_at: now.saturating_add(REGISTRATION_VALID_SECS),
            operator,
            node_public_key,
            ipv6,
            http_endpoint,
            nonce: keys::random_u64()?,
            peer_endpoint: None,
        })
    }

    pub fn hash(&self) -> [u8; 32] {
        domain_hash(b"icos-registration", &canonical(self))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRegistration {
    pub registration: Registration,
    pub signature: String,
}

impl SignedRegistration {
    pub fn sign(registration: Registration, operator_key: &keys::SecretKey) -> Self {
        let signature = keys::sign(operator_key, &registration.hash());
        SignedRegistration {
            registration,
            signature,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum Evidence {
    Genesis {
        genesis: Genesis,
    },
    Proposal {
        id: u64,
        proposal: SignedProposal,
        votes: Vec<SignedVote>,
    },
    Registration {
        request: SignedRegistration,
    },
}

/// One registry version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub version: u64,
    /// Hash of the previous change (all zeros for the genesis).
    pub prev_hash: String,
    /// When the server appended it (seconds since the epoch; informational).
    pub timestamp: u64,
    pub evidence: Evidence,
}

/// Canonical bytes of a value: serde_json of our types is deterministic (struct field
/// order, BTreeMaps, no floats), so any party computes the same bytes from the same value.
pub fn canonical<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("registry types serialize")
}

fn domain_hash(domain: &[u8], bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(domain);
    h.update([0]);
    h.update(bytes);
    h.finalize().into()
}

pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl Change {
    pub fn hash(&self) -> String {
        hex::encode(domain_hash(b"icos-change", &canonical(self)))
    }

    pub fn genesis(genesis: Genesis, timestamp: u64) -> Change {
        Change {
            version: 1,
            prev_hash: ZERO_HASH.into(),
            timestamp,
            evidence: Evidence::Genesis { genesis },
        }
    }
}

/// Outcome of counting votes on a proposal against a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub yes: u64,
    pub no: u64,
    pub total: u64,
}

impl Tally {
    /// Adopted when yes-votes exceed half of all voting power (in 128 bits: `2 * yes`
    /// cannot overflow).
    pub fn adopted(&self) -> bool {
        2 * u128::from(self.yes) > u128::from(self.total)
    }
    /// Rejected when no-votes reach half.
    pub fn rejected(&self) -> bool {
        2 * u128::from(self.no) >= u128::from(self.total)
    }
}

/// Check a proposal's and its votes' signatures against the registry's neurons and count.
/// The proposer's signature on the proposal is the proposer's yes vote (as in the NNS).
/// Unknown neurons, duplicate votes (including a separate vote by the proposer) and bad
/// signatures are errors.
pub fn tally(
    reg: &Registry,
    proposal: &SignedProposal,
    votes: &[SignedVote],
) -> Result<Tally, ModelError> {
    let mut sigs = Vec::new();
    let t = tally_deferred(reg, proposal, votes, 0, &mut sigs)?;
    keys::verify_all(&sigs)?;
    Ok(t)
}

/// [`tally`] with the signature checks appended to `sigs` (tagged with `version`, the
/// change they belong to) instead of done.
pub fn tally_deferred(
    reg: &Registry,
    proposal: &SignedProposal,
    votes: &[SignedVote],
    version: u64,
    sigs: &mut Vec<SigCheck>,
) -> Result<Tally, ModelError> {
    let hash = proposal.body.hash();
    let proposer = reg
        .neurons
        .get(&proposal.body.proposer)
        .ok_or(ModelError::UnknownNeuron(proposal.body.proposer))?;
    sigs.push(SigCheck {
        public_key: proposer.public_key.clone(),
        message: hash.to_vec(),
        signature: proposal.signature.clone(),
        what: format!("proposal signature of neuron {}", proposer.id),
        version,
    });
    let mut seen = std::collections::BTreeSet::from([proposer.id]);
    let mut t = Tally {
        yes: proposer.voting_power,
        no: 0,
        total: reg.total_voting_power()?,
    };
    let overflow = || ModelError::Invalid("voting power does not fit in 64 bits".into());
    for v in votes {
        let n = reg
            .neurons
            .get(&v.neuron)
            .ok_or(ModelError::UnknownNeuron(v.neuron))?;
        if !seen.insert(v.neuron) {
            return Err(ModelError::DuplicateVote(v.neuron));
        }
        sigs.push(SigCheck {
            public_key: n.public_key.clone(),
            message: vote_message(&hash, v.vote),
            signature: v.signature.clone(),
            what: format!("vote of neuron {}", v.neuron),
            version,
        });
        let side = match v.vote {
            Vote::Yes => &mut t.yes,
            Vote::No => &mut t.no,
        };
        *side = side.checked_add(n.voting_power).ok_or_else(overflow)?;
    }
    Ok(t)
}

/// Check a change against the registry it applies to and return the next registry.
/// This is the whole trust model: servers and mirrors are not trusted, this function is.
pub fn verify_and_apply(
    prev: Option<(&Registry, &str, u64)>,
    change: &Change,
) -> Result<Registry, ModelError> {
    let mut next = prev.map(|(r, _, _)| r.clone()).unwrap_or_default();
    let mut sigs = Vec::new();
    apply_change(&mut next, prev.map(|(_, h, v)| (h, v)), change, &mut sigs)?;
    keys::verify_all(&sigs)?;
    Ok(next)
}

/// [`verify_and_apply`] in place, for replaying long logs: `reg` is changed directly and
/// the signature checks are appended to `sigs` for the caller to verify (in parallel, in
/// batches). If this returns an error, or the signatures later fail, `reg` must be thrown
/// away: it may hold a partly applied or unauthenticated change.
pub fn apply_change(
    reg: &mut Registry,
    prev: Option<(&str, u64)>,
    change: &Change,
    sigs: &mut Vec<SigCheck>,
) -> Result<(), ModelError> {
    match (prev, &change.evidence) {
        (None, Evidence::Genesis { genesis }) => {
            if change.version != 1 || change.prev_hash != ZERO_HASH {
                return Err(ModelError::Chain(
                    "the genesis must be version 1 with a zero previous hash".into(),
                ));
            }
            *reg = genesis.registry()?;
            reg.genesis_hash = change.hash();
            reg.time = change.timestamp;
            Ok(())
        }
        (None, _) => Err(ModelError::Chain(
            "the first change must be the genesis".into(),
        )),
        (Some(_), Evidence::Genesis { .. }) => Err(ModelError::Chain(format!(
            "version {} is a second genesis",
            change.version
        ))),
        (Some((prev_hash, prev_version)), evidence) => {
            if change.version != prev_version + 1 {
                return Err(ModelError::Chain(format!(
                    "version {} follows version {prev_version}",
                    change.version
                )));
            }
            if change.prev_hash != prev_hash {
                return Err(ModelError::Chain(format!(
                    "version {} does not continue the chain (previous hash {}, expected {prev_hash})",
                    change.version, change.prev_hash
                )));
            }
            if change.timestamp < reg.time {
                return Err(ModelError::Chain(format!(
                    "version {} is dated {}, before the change it follows ({})",
                    change.version, change.timestamp, reg.time
                )));
            }
            reg.time = change.timestamp;
            // Decisions whose window closed can no longer be executed anyway (the window is
            // checked below), so they need not be remembered.
            reg.executed
                .retain(|_, expires| *expires >= change.timestamp);
            match evidence {
                Evidence::Proposal {
                    proposal, votes, ..
                } => {
                    let body = &proposal.body;
                    let hash = body.hash_hex();
                    check_binding(reg, change, &hash, &body.network, body.expires_at)?;
                    if body.base_version >= change.version {
                        return Err(ModelError::Replay(format!(
                            "proposal {hash} was made on top of version {}, so it cannot be version {}",
                            body.base_version, change.version
                        )));
                    }
                    let t = tally_deferred(reg, proposal, votes, change.version, sigs)?;
                    if !t.adopted() {
                        return Err(ModelError::NotAdopted {
                            yes: t.yes,
                            total: t.total,
                        });
                    }
                    reg.apply(&body.action)?;
                    reg.executed.insert(hash, body.expires_at);
                }
                Evidence::Registration { request } => {
                    let r = &request.registration;
                    let hash = hex::encode(r.hash());
                    check_binding(reg, change, &hash, &r.network, r.expires_at)?;
                    registration_deferred(reg, request, change.version, sigs)?;
                    reg.executed.insert(hash, r.expires_at);
                }
                Evidence::Genesis { .. } => unreachable!("matched above"),
            }
            Ok(())
        }
    }
}

/// The replay rules shared by proposals and registrations: made for this network, executed
/// within its window, not executed before, and not claiming a window longer than the
/// registry allows (which bounds how long [`Registry::executed`] must remember it).
fn check_binding(
    reg: &Registry,
    change: &Change,
    hash: &str,
    network: &str,
    expires_at: u64,
) -> Result<(), ModelError> {
    if network != reg.genesis_hash {
        return Err(ModelError::Replay(format!(
            "decision {hash} is for network {network}, not this one ({})",
            reg.genesis_hash
        )));
    }
    if reg.executed.contains_key(hash) {
        return Err(ModelError::Replay(format!(
            "decision {hash} was already executed"
        )));
    }
    if change.timestamp > expires_at {
        return Err(ModelError::Replay(format!(
            "decision {hash} expired at {expires_at}, before version {} ({})",
            change.version, change.timestamp
        )));
    }
    let longest = change
        .timestamp
        .saturating_add(reg.proposal_deadline_secs().max(REGISTRATION_VALID_SECS))
        .saturating_add(CLOCK_SKEW_SECS);
    if expires_at > longest {
        return Err(ModelError::Invalid(format!(
            "decision {hash} claims to stay valid until {expires_at}, beyond the longest allowed window (until {longest})"
        )));
    }
    Ok(())
}

/// Check a node registration (allowance, key, address, endpoint) and add the node; the
/// operator's signature is appended to `sigs`.
fn registration_deferred(
    reg: &mut Registry,
    req: &SignedRegistration,
    version: u64,
    sigs: &mut Vec<SigCheck>,
) -> Result<Node, ModelError> {
    let r = &req.registration;
    let op = reg
        .operators
        .get(&r.operator)
        .ok_or_else(|| ModelError::Invalid(format!("unknown node operator `{}`", r.operator)))?;
    sigs.push(SigCheck {
        public_key: op.public_key.clone(),
        message: r.hash().to_vec(),
        signature: req.signature.clone(),
        what: format!("registration signature of operator {}", r.operator),
        version,
    });
    keys::parse_public(&r.node_public_key)?;
    if op.nodes_added >= op.node_allowance {
        return Err(ModelError::Invalid(format!(
            "operator `{}` has used its allowance of {} nodes",
            r.operator, op.node_allowance
        )));
    }
    let id = node_id(&r.node_public_key);
    if reg.nodes.contains_key(&id) {
        return Err(ModelError::Invalid(format!(
            "node `{id}` is already registered"
        )));
    }
    let Ok(addr) = r.ipv6.parse::<std::net::Ipv6Addr>() else {
        return Err(ModelError::Invalid(format!(
            "`{}` is not an IPv6 address",
            r.ipv6
        )));
    };
    // Hosts find their node by the address they gave their guest: it must stay unique.
    if let Some(other) = reg.nodes_with_ipv6(addr).next() {
        return Err(ModelError::Invalid(format!(
            "IPv6 address {addr} is already registered for node `{}`",
            other.id
        )));
    }
    for e in std::iter::once(&r.http_endpoint).chain(&r.peer_endpoint) {
        if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() > 256 {
            return Err(ModelError::Invalid(format!(
                "`{e}` is not an http(s) endpoint"
            )));
        }
    }
    let node = Node {
        id: id.clone(),
        operator: r.operator.clone(),
        public_key: r.node_public_key.clone(),
        ipv6: r.ipv6.clone(),
        http_endpoint: r.http_endpoint.clone(),
        hostos_version: None,
        peer_endpoint: r.peer_endpoint.clone(),
    };
    reg.nodes.insert(id, node.clone());
    reg.operators
        .get_mut(&r.operator)
        .expect("checked")
        .nodes_added += 1;
    Ok(node)
}

/// The server's signed statement of its newest version, valid for a short time: a client
/// that keeps getting an old or expired statement knows its feed is frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freshness {
    pub network: String,
    pub head_version: u64,
    pub head_hash: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedFreshness {
    pub freshness: Freshness,
    pub signature: String,
}

impl Freshness {
    pub fn message(&self) -> Vec<u8> {
        domain_hash(b"icos-freshness", &canonical(self)).to_vec()
    }
}

impl SignedFreshness {
    pub fn sign(freshness: Freshness, online_key: &keys::SecretKey) -> Self {
        let signature = keys::sign(online_key, &freshness.message());
        SignedFreshness {
            freshness,
            signature,
        }
    }

    /// Check the statement against the registry at its head: signed with that registry's
    /// online key, valid for no longer than its `freshness_secs`, not issued in the future and
    /// not expired at `now`, with `skew` seconds of clock difference tolerated either way.
    pub fn verify(&self, reg_at_head: &Registry, now: u64, skew: u64) -> Result<(), ModelError> {
        let settings = reg_at_head
            .settings
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("registry has no settings".into()))?;
        keys::verify(
            &settings.online_key,
            &self.freshness.message(),
            &self.signature,
            "freshness statement",
        )?;
        let f = &self.freshness;
        let span = f.expires_at.checked_sub(f.issued_at).ok_or_else(|| {
            ModelError::Invalid(format!(
                "freshness statement expires ({}) before it is issued ({})",
                f.expires_at, f.issued_at
            ))
        })?;
        if span > settings.freshness_secs {
            return Err(ModelError::Invalid(format!(
                "freshness statement is valid for {span} s; the registry allows {} s",
                settings.freshness_secs
            )));
        }
        if f.issued_at > now.saturating_add(skew) {
            return Err(ModelError::Invalid(format!(
                "freshness statement is issued {} s in the future",
                f.issued_at - now
            )));
        }
        if now > f.expires_at.saturating_add(skew) {
            return Err(ModelError::Stale {
                head: f.head_version,
                expired_secs_ago: now - f.expires_at,
            });
        }
        Ok(())
    }
}
