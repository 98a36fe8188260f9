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
//!     root_key: None,
//! };
//! let g = Change::genesis(genesis, 0);
//! let reg = change::verify_and_apply(None, &g).unwrap();
//! // A proposal names the network (its genesis hash), the version it was made on and when
//! // it expires; `ProposalBody::new` fills them in from the registry it is made on.
//! let action = Action::ElectGuestos(Elected {
//!     version: "1.1.0".into(), sha256: "ab".repeat(32).parse().unwrap(), size: None, urls: vec!["http://mirror/1.1.0.tar".into()] });
//! let body = ProposalBody::new(&reg, 1, 1, "elect".into(), action, 0).unwrap();
//! // The proposer's signature is its yes vote: with all the voting power, that is a majority.
//! let p = SignedProposal::sign(body, &neuron_key);
//! let c = Change { version: 2, prev_hash: g.hash(), timestamp: 0,
//!     evidence: Evidence::Proposal { id: 1, proposal: p, votes: vec![] } };
//! let next = change::verify_and_apply(Some((&reg, &g.hash(), 1)), &c).unwrap();
//! assert!(next.guestos_versions.contains_key("1.1.0"));
//! // The same decision a second time is a replay, whoever signs the head it comes with.
//! let again = Change { version: 3, prev_hash: c.hash(), ..c.clone() };
//! assert!(matches!(change::verify_and_apply(Some((&next, &c.hash(), 2)), &again), Err(ModelError::Replay(_))));
//! ```

pub mod api;
pub mod change;
pub mod endpoint;
pub mod keys;
pub mod registry;
pub mod subnet_key;

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
    #[error("replay refused: {0}")]
    Replay(String),
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
                root_key: None,
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
                network: self.reg.genesis_hash.clone(),
                base_version: self.chain.len() as u64,
                expires_at: 60,
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
            sha256: "cd".repeat(32).parse().unwrap(),
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
                network: n.reg.genesis_hash.clone(),
                expires_at: 60,
                operator: "op1".into(),
                node_public_key: keys::public_hex(&keys::generate()),
                ipv6: format!("fd00::{}", nonce + 1),
                http_endpoint: "http://[fd00::1]:8080".into(),
                nonce,
                peer_endpoint: None,
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
                key: None,
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
            key: None,
        };
        assert!(n.reg.validate(&bad).is_err());

        // A node runs one payload: a subnet member cannot be an API boundary node, nor the
        // other way round.
        let e = n
            .reg
            .validate(&Action::AddApiBoundaryNodes {
                nodes: vec![ids[0].clone()],
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be in none"), "{e}");
        let c = n.proposal_change(
            Action::RemoveNodesFromSubnet {
                subnet: "s1".into(),
                nodes: vec![ids[1].clone()],
            },
            &[(1, Vote::Yes), (2, Vote::Yes)],
        );
        n.push(c).unwrap();
        let c = n.proposal_change(
            Action::AddApiBoundaryNodes {
                nodes: vec![ids[1].clone()],
            },
            &[(1, Vote::Yes), (2, Vote::Yes)],
        );
        n.push(c).unwrap();
        let e = n
            .reg
            .validate(&Action::AddNodesToSubnet {
                subnet: "s1".into(),
                nodes: vec![ids[1].clone()],
                sealed_keys: Default::default(),
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("is an API boundary node"), "{e}");
    }

    #[test]
    fn freshness_is_signed_by_the_online_key_and_expires() {
        let online = keys::generate();
        let reg = Registry {
            settings: Some(Settings {
                online_key: keys::public_hex(&online),
                proposal_deadline_secs: 1,
                freshness_secs: 60,
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
        s.verify(&reg, 150, 0).unwrap();
        // Expired: the message says by how much, not by how much beyond the skew allowance.
        match s.verify(&reg, 200, 30) {
            Err(ModelError::Stale {
                head: 3,
                expired_secs_ago: 40,
            }) => {}
            other => panic!("{other:?}"),
        }
        // Within the skew allowance on either side.
        s.verify(&reg, 185, 30).unwrap();
        s.verify(&reg, 80, 30).unwrap();
        let e = s.verify(&reg, 60, 30).unwrap_err().to_string();
        assert!(e.contains("40 s in the future"), "{e}");
        let forged = SignedFreshness::sign(f.clone(), &keys::generate());
        assert!(matches!(
            forged.verify(&reg, 150, 0),
            Err(ModelError::BadSignature(_))
        ));
        // Signed by the right key but valid for longer than the registry allows.
        let long = SignedFreshness::sign(
            Freshness {
                expires_at: 100 + 3600,
                ..f.clone()
            },
            &online,
        );
        let e = long.verify(&reg, 150, 0).unwrap_err().to_string();
        assert!(
            e.contains("valid for 3600 s; the registry allows 60 s"),
            "{e}"
        );
        let backwards = SignedFreshness::sign(
            Freshness {
                expires_at: 99,
                ..f
            },
            &online,
        );
        assert!(backwards.verify(&reg, 99, 0).is_err());
    }

    impl Net {
        /// The change that executes `p` (already signed) with `votes` at the head.
        fn execute(&self, p: &SignedProposal, votes: &[(u64, Vote)], timestamp: u64) -> Change {
            let h = p.body.hash();
            let (_, hash, version) = self.head();
            Change {
                version: version + 1,
                prev_hash: hash,
                timestamp,
                evidence: Evidence::Proposal {
                    id: 1,
                    proposal: p.clone(),
                    votes: votes
                        .iter()
                        .map(|(n, v)| SignedVote::sign(&h, *n, *v, &self.keys[*n as usize - 1]))
                        .collect(),
                },
            }
        }
    }

    /// The attacks of someone who holds the server's online key and its storage: every
    /// signature they replay is genuine, so only the binding of each decision to one place
    /// in one network's history can stop them.
    #[test]
    fn replayed_decisions_are_refused() {
        let mut n = Net::new();
        let c = n.proposal_change(elect("1.1.0"), &[(1, Vote::Yes), (2, Vote::Yes)]);
        n.push(c.clone()).unwrap();
        let retire = n.proposal_change(
            Action::RetireGuestos {
                version: "1.1.0".into(),
            },
            &[(1, Vote::Yes), (2, Vote::Yes)],
        );
        n.push(retire).unwrap();
        // The same adopted election appended again (it would apply: 1.1.0 is retired).
        let (_, hash, version) = n.head();
        let again = Change {
            version: version + 1,
            prev_hash: hash,
            ..c.clone()
        };
        let e = n.push(again).unwrap_err();
        assert!(
            matches!(e, ModelError::Replay(ref m) if m.contains("already executed")),
            "{e}"
        );

        // The same decision altered and signed again by its proposer: for another network,
        // executed after its window, placed at or before its base version, or claiming a
        // window longer than governance allows (3600 s for registrations plus 300 s of clock
        // skew is the longest here; the executed set must stay bounded).
        let Evidence::Proposal { proposal, .. } = &c.evidence else {
            unreachable!()
        };
        type Alter = fn(&mut ProposalBody, u64);
        let cases: [(&str, Alter, u64, &str); 4] = [
            (
                "other network",
                |b, v| {
                    b.network = "ee".repeat(32);
                    b.base_version = v
                },
                0,
                "for network",
            ),
            ("late", |b, v| b.base_version = v, 61, "expired at 60"),
            (
                "early",
                |b, v| b.base_version = v + 1,
                0,
                "made on top of version",
            ),
            (
                "long",
                |b, v| {
                    b.base_version = v;
                    b.expires_at = 10_000
                },
                0,
                "beyond the longest allowed window",
            ),
        ];
        for (i, (what, alter, timestamp, expected)) in cases.into_iter().enumerate() {
            let mut body = proposal.body.clone();
            body.nonce = 100 + i as u64;
            alter(&mut body, version);
            let p = SignedProposal::sign(body, &n.keys[0]);
            let e = n
                .push(n.execute(&p, &[(2, Vote::Yes)], timestamp))
                .unwrap_err();
            assert!(e.to_string().contains(expected), "{what}: {e}");
        }
        // Back-dated: a change older than the one it follows.
        let c = n.proposal_change(elect("1.2.0"), &[(1, Vote::Yes), (2, Vote::Yes)]);
        let c = Change { timestamp: 30, ..c };
        n.push(c).unwrap();
        let c = n.proposal_change(elect("1.3.0"), &[(1, Vote::Yes), (2, Vote::Yes)]);
        let c = Change { timestamp: 29, ..c };
        let e = n.push(c).unwrap_err();
        assert!(
            matches!(e, ModelError::Chain(ref m) if m.contains("before the change it follows")),
            "{e}"
        );
    }

    #[test]
    fn the_executed_set_forgets_only_what_its_window_refuses() {
        let mut n = Net::new();
        let c = n.proposal_change(elect("1.1.0"), &[(1, Vote::Yes), (2, Vote::Yes)]);
        n.push(c.clone()).unwrap();
        assert_eq!(n.reg.executed.len(), 1);
        let retire = n.proposal_change(
            Action::RetireGuestos {
                version: "1.1.0".into(),
            },
            &[(1, Vote::Yes), (2, Vote::Yes)],
        );
        let retire = Change {
            timestamp: 61,
            ..retire
        };
        // Its own window (60) is over at 61: refused, and nothing changed.
        let e = n.push(retire.clone()).unwrap_err();
        assert!(matches!(e, ModelError::Replay(_)), "{e}");
        let mut body = match &retire.evidence {
            Evidence::Proposal { proposal, .. } => proposal.body.clone(),
            _ => unreachable!(),
        };
        body.expires_at = 200;
        let p = SignedProposal::sign(body, &n.keys[0]);
        n.push(n.execute(&p, &[(2, Vote::Yes)], 61)).unwrap();
        // The election's window closed at 60: forgotten, yet a replay is still refused.
        assert_eq!(n.reg.executed.len(), 1);
        let (_, hash, version) = n.head();
        let again = Change {
            version: version + 1,
            prev_hash: hash,
            timestamp: 61,
            ..c
        };
        let e = n.push(again).unwrap_err();
        assert!(
            matches!(e, ModelError::Replay(ref m) if m.contains("expired")),
            "{e}"
        );
    }

    #[test]
    fn a_registration_is_executed_once_and_only_on_its_network() {
        let mut n = Net::new();
        let r = Registration {
            network: n.reg.genesis_hash.clone(),
            expires_at: 60,
            operator: "op1".into(),
            node_public_key: keys::public_hex(&keys::generate()),
            ipv6: "fd00::1".into(),
            http_endpoint: "http://[fd00::1]:8080".into(),
            nonce: 1,
            peer_endpoint: Some("http://[fd00::1]:4100".into()),
        };
        let change = |n: &Net, r: &Registration| {
            let (_, hash, version) = n.head();
            Change {
                version: version + 1,
                prev_hash: hash,
                timestamp: 0,
                evidence: Evidence::Registration {
                    request: SignedRegistration::sign(r.clone(), &n.op),
                },
            }
        };
        // A peer endpoint that is no URL is refused, naming it.
        let bad = Registration {
            peer_endpoint: Some("4100".into()),
            ..r.clone()
        };
        let e = n.push(change(&n, &bad)).unwrap_err();
        assert!(
            e.to_string().contains("`4100` is not an http(s) endpoint"),
            "{e}"
        );
        n.push(change(&n, &r)).unwrap();
        assert!(n
            .reg
            .nodes
            .values()
            .any(|x| x.peer_endpoint.as_deref() == Some("http://[fd00::1]:4100")));
        let e = n.push(change(&n, &r)).unwrap_err();
        assert!(matches!(e, ModelError::Replay(_)), "{e}");
        let elsewhere = Registration {
            network: "00".repeat(32),
            nonce: 2,
            ..r
        };
        let e = n.push(change(&n, &elsewhere)).unwrap_err();
        assert!(
            matches!(e, ModelError::Replay(ref m) if m.contains("for network")),
            "{e}"
        );
    }

    #[test]
    fn voting_power_arithmetic_never_wraps() {
        // A genesis whose total does not fit is refused.
        let k = keys::generate();
        let neuron = |id, p| Neuron {
            id,
            public_key: keys::public_hex(&k),
            voting_power: p,
        };
        let g = Genesis {
            network: "t".into(),
            settings: Settings {
                online_key: keys::public_hex(&k),
                proposal_deadline_secs: 60,
                freshness_secs: 60,
            },
            neurons: vec![
                neuron(1, u64::MAX - 1),
                neuron(2, u64::MAX - 1),
                neuron(3, 3),
            ],
            operators: vec![],
            actions: vec![],
            root_key: None,
        };
        let e = verify_and_apply(None, &Change::genesis(g.clone(), 0)).unwrap_err();
        assert!(e.to_string().contains("does not fit in 64 bits"), "{e}");
        // Large but fitting powers: the majority rule holds at the edge.
        let t = Tally {
            yes: u64::MAX / 2 + 1,
            no: 0,
            total: u64::MAX,
        };
        assert!(t.adopted());
        let t = Tally {
            yes: 3,
            no: u64::MAX / 2,
            total: u64::MAX,
        };
        assert!(!t.adopted() && !t.rejected());
        // A registry that holds an overflowing set anyway (built by hand) makes the tally
        // fail instead of letting a neuron with power 3 adopt alone.
        let mut reg = Genesis {
            neurons: vec![neuron(3, 3)],
            ..g.clone()
        }
        .registry()
        .unwrap();
        reg.neurons.insert(1, neuron(1, u64::MAX - 1));
        reg.neurons.insert(2, neuron(2, u64::MAX - 1));
        let body = ProposalBody::new(&reg, 1, 3, "t".into(), elect("1.0.0"), 0).unwrap();
        let p = SignedProposal::sign(body, &k);
        assert!(change::tally(&reg, &p, &[]).is_err());
        // Governance cannot add power that overflows.
        let mut n = Net::new();
        let c = n.proposal_change(
            Action::ChangeGovernance {
                upsert_neurons: vec![neuron(9, u64::MAX - 50)],
                remove_neurons: vec![],
                online_key: None,
                proposal_deadline_secs: None,
                freshness_secs: None,
            },
            &[(1, Vote::Yes), (2, Vote::Yes)],
        );
        let e = n.push(c).unwrap_err();
        assert!(e.to_string().contains("does not fit in 64 bits"), "{e}");
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
