//! The icos registry model: what the network's single source of truth holds, how it
//! changes, and how anyone checks every change.
//!
//! * [`Registry`]: node operators, nodes, subnets (members, canister ranges, GuestOS
//!   version), the GuestOS version for unassigned nodes, elected GuestOS/HostOS versions
//!   (SHA-256, URLs), API boundary nodes, firewall rules, neurons and settings.
//! * [`Action`]: typed governance proposals, validated against the registry they apply to.
//! * [`Change`]: one registry version with its evidence — the genesis, an adopted proposal
//!   with its signed votes (yes > half of all voting power), or a node registration signed
//!   by its operator within its allowance — chained by hash to the previous change.
//! * [`change::verify_and_apply`]: the one function that decides whether a change is
//!   legitimate; servers, mirrors and clients all run it.
//! * [`SignedFreshness`]: the server's short-lived statement of its head, signed by an
//!   online key the registry itself names (so a frozen feed is noticed).
//!
//! ```
//! use registry_model::*;
//! let neuron_key = keys::generate();
//! let online = keys::generate();
//! let genesis = Genesis {
//!     network: "local".into(),
//!     settings: Settings { online_key: keys::public_hex(&online), proposal_deadline_secs: 3600, freshness_secs: 300 },
//!     neurons: vec![Neuron { id: 1, public_key: keys::public_hex(&neuron_key), voting_power: 100 }],
//!     operators: vec![],
//!     actions: vec![],
//! };
//! let g = Change::genesis(genesis, 0);
//! let reg = change::verify_and_apply(None, &g).unwrap();
//! let body = ProposalBody { proposer: 1, title: "elect".into(), nonce: 7, action: Action::ElectGuestos(Elected {
//!     version: "1.1.0".into(), sha256: "ab".repeat(32), size: None, urls: vec!["http://mirror/1.1.0.tar".into()] }) };
//! // The proposer's signature is its yes vote: with all the voting power, that is a majority.
//! let p = SignedProposal::sign(body, &neuron_key);
//! let c = Change { version: 2, prev_hash: g.hash(), timestamp: 0,
//!     evidence: Evidence::Proposal { id: 1, proposal: p, votes: vec![] } };
//! let next = change::verify_and_apply(Some((&reg, &g.hash(), 1)), &c).unwrap();
//! assert!(next.guestos_versions.contains_key("1.1.0"));
//! ```

pub mod api;
pub mod change;
pub mod keys;
pub mod registry;

pub use change::{
    Change, Evidence, Freshness, Genesis, ProposalBody, Registration, SignedFreshness,
    SignedProposal, SignedRegistration, SignedVote, Tally, Vote,
};
pub use registry::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("key: {0}")]
    Key(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("unknown neuron {0}")]
    UnknownNeuron(NeuronId),
    #[error("neuron {0} voted twice")]
    DuplicateVote(NeuronId),
    #[error("proposal not adopted: yes votes {yes} of {total} voting power is not a majority")]
    NotAdopted { yes: u64, total: u64 },
    #[error("change log: {0}")]
    Chain(String),
    #[error("the registry feed is stale: its freshness statement for version {head} expired {expired_secs_ago} s ago")]
    Stale { head: u64, expired_secs_ago: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use change::verify_and_apply;

    /// Four neurons with 40/30/20/10 voting power, one operator allowed two nodes.
    struct Net {
        keys: Vec<keys::SecretKey>,
        op: keys::SecretKey,
        chain: Vec<Change>,
        reg: Registry,
    }

    impl Net {
        fn new() -> Net {
            let keys: Vec<_> = (0..4).map(|_| keys::generate()).collect();
            let op = keys::generate();
            let genesis = Genesis {
                network: "test".into(),
                settings: Settings {
                    online_key: keys::public_hex(&keys::generate()),
                    proposal_deadline_secs: 60,
                    freshness_secs: 60,
                },
                neurons: keys
                    .iter()
                    .zip([40u64, 30, 20, 10])
                    .enumerate()
                    .map(|(i, (k, p))| Neuron {
                        id: i as u64 + 1,
                        public_key: keys::public_hex(k),
                        voting_power: p,
                    })
                    .collect(),
                operators: vec![Operator {
                    id: "op1".into(),
                    public_key: keys::public_hex(&op),
                    node_allowance: 2,
                    nodes_added: 0,
                }],
                actions: vec![],
            };
            let g = Change::genesis(genesis, 0);
            let reg = verify_and_apply(None, &g).unwrap();
            Net {
                keys,
                op,
                chain: vec![g],
                reg,
            }
        }

        fn head(&self) -> (&Registry, String, u64) {
            let c = self.chain.last().unwrap();
            (&self.reg, c.hash(), c.version)
        }

        fn proposal_change(&self, action: Action, voters: &[(u64, Vote)]) -> Change {
            let body = ProposalBody {
                proposer: voters[0].0,
                title: "t".into(),
                action,
                nonce: self.chain.len() as u64,
            };
            let p = SignedProposal::sign(body, &self.keys[voters[0].0 as usize - 1]);
            let h = p.body.hash();
            // The proposer (first voter) votes by signing the proposal.
            let votes = voters[1..]
                .iter()
                .map(|(n, v)| SignedVote::sign(&h, *n, *v, &self.keys[*n as usize - 1]))
                .collect();
            let (_, hash, version) = self.head();
            Change {
                version: version + 1,
                prev_hash: hash,
                timestamp: 0,
                evidence: Evidence::Proposal {
                    id: 1,
                    proposal: p,
                    votes,
                },
            }
        }

        fn push(&mut self, c: Change) -> Result<(), ModelError> {
            let (reg, hash, version) = self.head();
            let next = verify_and_apply(Some((reg, &hash, version)), &c)?;
            self.reg = next;
            self.chain.push(c);
            Ok(())
        }
    }

    fn elect(v: &str) -> Action {
        Action::ElectGuestos(Elected {
            version: v.into(),
            sha256: "cd".repeat(32),
            size: None,
            urls: vec!["https://m/x.tar".into()],
        })
    }

    #[test]
    fn majority_adopts_minority_does_not() {
        let mut n = Net::new();
        // 40 + 20 = 60 of 100: adopted.
        let c = n.proposal_change(elect("1.1.0"), &[(1, Vote::Yes), (3, Vote::Yes)]);
        n.push(c).unwrap();
        assert!(n.reg.guestos_versions.contains_key("1.1.0"));
        // 40 + 10 = 50: not more than half.
        let c = n.proposal_change(elect("1.2.0"), &[(1, Vote::Yes), (4, Vote::Yes)]);
        assert!(matches!(
            n.push(c),
            Err(ModelError::NotAdopted {
                yes: 50,
                total: 100
            })
        ));
        // Yes votes of 60 but one of them forged (signed by another key).
        let mut c = n.proposal_change(elect("1.3.0"), &[(1, Vote::Yes), (2, Vote::Yes)]);
        if let Evidence::Proposal {
            votes, proposal, ..
        } = &mut c.evidence
        {
            votes[0] = SignedVote::sign(&proposal.body.hash(), 2, Vote::Yes, &n.keys[3]);
        }
        assert!(matches!(n.push(c), Err(ModelError::BadSignature(_))));
        // A vote copied from another proposal does not count for this one.
        let c1 = n.proposal_change(elect("1.4.0"), &[(1, Vote::Yes), (2, Vote::Yes)]);
        let mut c2 = n.proposal_change(elect("1.5.0"), &[(1, Vote::Yes)]);
        if let (Evidence::Proposal { votes: v1, .. }, Evidence::Proposal { votes: v2, .. }) =
            (&c1.evidence, &mut c2.evidence)
        {
            v2.push(v1[0].clone());
        }
        assert!(matches!(n.push(c2), Err(ModelError::BadSignature(_))));
    }

    #[test]
    fn duplicate_and_unknown_voters_are_refused() {
        let n = Net::new();
        let c = n.proposal_change(
            elect("1.1.0"),
            &[(2, Vote::Yes), (1, Vote::Yes), (1, Vote::Yes)],
        );
        let (reg, h, v) = n.head();
        assert!(matches!(
            verify_and_apply(Some((reg, &h, v)), &c),
            Err(ModelError::DuplicateVote(1))
        ));
        // The proposer voting again.
        let c = n.proposal_change(elect("1.1.0"), &[(2, Vote::Yes), (2, Vote::Yes)]);
        assert!(matches!(
            verify_and_apply(Some((reg, &h, v)), &c),
            Err(ModelError::DuplicateVote(2))
        ));
        let mut c = n.proposal_change(elect("1.1.0"), &[(1, Vote::Yes), (2, Vote::Yes)]);
        if let Evidence::Proposal { votes, .. } = &mut c.evidence {
            votes[0].neuron = 99;
        }
        assert!(matches!(
            verify_and_apply(Some((reg, &h, v)), &c),
            Err(ModelError::UnknownNeuron(99))
        ));
    }

    #[test]
    fn chain_breaks_are_refused() {
        let mut n = Net::new();
        let mut c = n.proposal_change(elect("1.1.0"), &[(1, Vote::Yes), (2, Vote::Yes)]);
        c.prev_hash = "11".repeat(32);
        assert!(matches!(n.push(c), Err(ModelError::Chain(_))));
        let mut c = n.proposal_change(elect("1.1.0"), &[(1, Vote::Yes), (2, Vote::Yes)]);
        c.version += 1;
        assert!(matches!(n.push(c), Err(ModelError::Chain(_))));
        let g = n.chain[0].clone();
        let mut second = g.clone();
        second.version = 2;
        second.prev_hash = g.hash();
        assert!(matches!(n.push(second), Err(ModelError::Chain(_))));
    }

    #[test]
    fn deploying_an_unelected_version_is_refused() {
        let mut n = Net::new();
        let c = n.proposal_change(
            Action::DeployGuestosToUnassigned {
                version: "9.9.9".into(),
            },
            &[(1, Vote::Yes), (2, Vote::Yes)],
        );
        let err = n.push(c).unwrap_err().to_string();
        assert!(
            err.contains("9.9.9") && err.contains("not elected"),
            "{err}"
        );
    }

    #[test]
    fn registrations_need_the_operator_key_and_respect_the_allowance() {
        let mut n = Net::new();
        let reg_change = |n: &Net, key: &keys::SecretKey, nonce: u64| {
            let r = Registration {
                operator: "op1".into(),
                node_public_key: keys::public_hex(&keys::generate()),
                ipv6: format!("fd00::{}", nonce + 1),
                http_endpoint: "http://[fd00::1]:8080".into(),
                nonce,
            };
            let (_, hash, version) = n.head();
            Change {
                version: version + 1,
                prev_hash: hash,
                timestamp: 0,
                evidence: Evidence::Registration {
                    request: SignedRegistration::sign(r, key),
                },
            }
        };
        let forged = reg_change(&n, &n.keys[0], 1);
        assert!(matches!(n.push(forged), Err(ModelError::BadSignature(_))));
        let first = reg_change(&n, &n.op, 0);
        n.push(first).unwrap();
        // A second node may not take an address already registered (hosts find their
        // node by it).
        let taken = reg_change(&n, &n.op, 0);
        let e = n.push(taken).unwrap_err().to_string();
        assert!(e.contains("fd00::1 is already registered"), "{e}");
        let second = reg_change(&n, &n.op, 1);
        n.push(second).unwrap();
        assert_eq!(n.reg.nodes.len(), 2);
        let c = reg_change(&n, &n.op, 9);
        assert!(n.push(c).unwrap_err().to_string().contains("allowance"));

        // Queries: a subnet with both nodes, its GuestOS, its canister range, its firewall.
        let ids: Vec<String> = n.reg.nodes.keys().cloned().collect();
        for a in [
            elect("1.0.0"),
            Action::CreateSubnet {
                id: "s1".into(),
                nodes: ids.clone(),
                canister_ranges: vec![CanisterRange { start: 0, end: 999 }],
                guestos_version: "1.0.0".into(),
            },
            Action::SetFirewallRules {
                scope: FirewallScope::Subnet("s1".into()),
                rules: vec![FirewallRule {
                    action: FwAction::Allow,
                    protocol: Protocol::Tcp,
                    ports: vec![8080],
                    sources: vec!["::/0".into()],
                    comment: "api".into(),
                }],
            },
        ] {
            let c = n.proposal_change(a, &[(1, Vote::Yes), (2, Vote::Yes)]);
            n.push(c).unwrap();
        }
        assert_eq!(n.reg.guestos_for_node(&ids[0]).unwrap().version, "1.0.0");
        assert_eq!(n.reg.nodes_for_canister(5).unwrap().1.len(), 2);
        assert!(n.reg.nodes_for_canister(1000).is_none());
        assert_eq!(n.reg.firewall_for_node(&ids[1])[0].ports, vec![8080]);
        // Overlapping canister ranges and nodes in two subnets are refused.
        let bad = Action::CreateSubnet {
            id: "s2".into(),
            nodes: vec![ids[0].clone()],
            canister_ranges: vec![CanisterRange {
                start: 500,
                end: 2000,
            }],
            guestos_version: "1.0.0".into(),
        };
        assert!(n.reg.validate(&bad).is_err());
    }

    #[test]
    fn freshness_is_signed_by_the_online_key_and_expires() {
        let online = keys::generate();
        let reg = Registry {
            settings: Some(Settings {
                online_key: keys::public_hex(&online),
                proposal_deadline_secs: 1,
                freshness_secs: 1,
            }),
            ..Registry::default()
        };
        let f = Freshness {
            network: "t".into(),
            head_version: 3,
            head_hash: "aa".repeat(32),
            issued_at: 100,
            expires_at: 160,
        };
        let s = SignedFreshness::sign(f.clone(), &online);
        s.verify(&reg, 150).unwrap();
        assert!(matches!(s.verify(&reg, 161), Err(ModelError::Stale { .. })));
        let forged = SignedFreshness::sign(f, &keys::generate());
        assert!(matches!(
            forged.verify(&reg, 150),
            Err(ModelError::BadSignature(_))
        ));
    }

    #[test]
    fn canonical_encoding_roundtrips() {
        let n = Net::new();
        let c = n.proposal_change(elect("1.1.0"), &[(1, Vote::Yes)]);
        let bytes = change::canonical(&c);
        let back: Change = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.hash(), c.hash());
        // Unknown fields are refused rather than silently dropped (they would change the hash).
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Change>(v).is_err());
    }
}
