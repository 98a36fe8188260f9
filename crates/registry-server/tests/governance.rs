//! The registry server over real HTTP: governance lifecycle, registrations, and bad input
//! (every bad request is a 4xx naming the problem, nothing is stored, the server serves on).

use registry_client::api::Api;
use registry_model::api::ProposalStatus;
use registry_model::*;
use registry_server::localnet::LocalGovernance;
use std::sync::Arc;

struct Net {
    gov: LocalGovernance,
    api: Api,
    base: String,
    server: Arc<registry_server::Registry>,
    _dir: tempfile::TempDir,
}

/// Neurons with 40/30/20/10 voting power; operator op1 may add 2 nodes.
fn net(deadline_secs: u64) -> Net {
    let dir = tempfile::tempdir().unwrap();
    let gov = LocalGovernance::create(
        &dir.path().join("keys"),
        "test",
        &[40, 30, 20, 10],
        &[("op1", 2)],
        |k| Settings {
            online_key: k,
            proposal_deadline_secs: deadline_secs,
            freshness_secs: 300,
        },
    )
    .unwrap();
    let data = dir.path().join("data");
    registry_server::Registry::init(&data, &gov.genesis).unwrap();
    let server =
        Arc::new(registry_server::Registry::open(&data, &gov.dir.join("online.key")).unwrap());
    let addr =
        registry_server::http::spawn(server.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let base = format!("http://{addr}");
    Net {
        gov,
        api: Api::new(&base),
        base,
        server,
        _dir: dir,
    }
}

fn elect(v: &str) -> Action {
    Action::ElectGuestos(Elected {
        version: v.into(),
        sha256: "ab".repeat(32),
        size: None,
        urls: vec!["http://mirror/x.tar".into()],
    })
}

impl Net {
    fn propose(
        &self,
        neuron: u64,
        action: Action,
    ) -> Result<registry_model::api::ProposalRecord, registry_client::ClientError> {
        let body = ProposalBody {
            proposer: neuron,
            title: "test".into(),
            action,
            nonce: rand_nonce(),
        };
        self.api.submit_proposal(&SignedProposal::sign(
            body,
            &self.gov.neurons[neuron as usize - 1],
        ))
    }
    fn vote(
        &self,
        id: u64,
        neuron: u64,
        v: Vote,
    ) -> Result<registry_model::api::ProposalRecord, registry_client::ClientError> {
        let rec = self.api.proposal(id).unwrap();
        self.api.vote(
            id,
            &SignedVote::sign(
                &rec.proposal.body.hash(),
                neuron,
                v,
                &self.gov.neurons[neuron as usize - 1],
            ),
        )
    }
    fn head(&self) -> u64 {
        self.server.head().0
    }
}

fn rand_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn err(r: Result<impl std::fmt::Debug, registry_client::ClientError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn majority_adopts_and_executes_minority_changes_nothing() {
    let n = net(3600);
    let p = n.propose(1, elect("1.1.0")).unwrap();
    assert_eq!(p.status, ProposalStatus::Open);
    assert_eq!(n.head(), 1);
    // 40 + 10 = 50: not more than half.
    let r = n.vote(p.id, 4, Vote::Yes).unwrap();
    assert_eq!(r.status, ProposalStatus::Open);
    assert_eq!(n.head(), 1, "a minority changes nothing");
    // + 20 = 70: adopted and executed.
    let r = n.vote(p.id, 3, Vote::Yes).unwrap();
    assert_eq!(r.status, ProposalStatus::Adopted { version: 2 });
    assert!(n.server.registry().guestos_versions.contains_key("1.1.0"));

    // Rejected: no-votes reach half.
    let p2 = n.propose(4, elect("1.2.0")).unwrap();
    n.vote(p2.id, 1, Vote::No).unwrap();
    let r = n.vote(p2.id, 3, Vote::No).unwrap();
    assert_eq!(r.status, ProposalStatus::Rejected);
    assert!(!n.server.registry().guestos_versions.contains_key("1.2.0"));
    assert_eq!(n.head(), 2);

    // The listing says what happened.
    let list = n.api.proposals().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].yes, 70);
    assert_eq!(list[1].status, ProposalStatus::Rejected);
}

#[test]
fn proposals_expire_after_their_deadline() {
    let n = net(1);
    let p = n.propose(4, elect("1.1.0")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let e = err(n.vote(p.id, 1, Vote::Yes));
    assert!(e.contains("409") && e.contains("expired"), "{e}");
    assert_eq!(
        n.api.proposal(p.id).unwrap().status,
        ProposalStatus::Expired
    );
    assert_eq!(n.head(), 1);
}

#[test]
fn bad_requests_are_refused_and_nothing_is_stored() {
    let n = net(3600);
    let p = n.propose(1, elect("1.1.0")).unwrap();
    let proposals_before = n.api.proposals().unwrap().len();

    // Deploying a version that is not elected; a proposal about an unknown node.
    let e = err(n.propose(
        1,
        Action::DeployGuestosToUnassigned {
            version: "9.9.9".into(),
        },
    ));
    assert!(e.contains("400") && e.contains("not elected"), "{e}");
    let e = err(n.propose(
        1,
        Action::AddApiBoundaryNodes {
            nodes: vec!["node-nope".into()],
        },
    ));
    assert!(e.contains("400") && e.contains("unknown node"), "{e}");
    // A proposal signed by a key that is not the proposer's.
    let body = ProposalBody {
        proposer: 2,
        title: "forged".into(),
        action: elect("2.0.0"),
        nonce: 1,
    };
    let e = err(n
        .api
        .submit_proposal(&SignedProposal::sign(body, &n.gov.neurons[0])));
    assert!(e.contains("403") && e.contains("signature"), "{e}");
    // Unknown neuron.
    let body = ProposalBody {
        proposer: 77,
        title: "x".into(),
        action: elect("2.0.0"),
        nonce: 1,
    };
    let e = err(n
        .api
        .submit_proposal(&SignedProposal::sign(body, &n.gov.neurons[0])));
    assert!(e.contains("400") && e.contains("unknown neuron 77"), "{e}");
    // Votes: wrong signature, unknown neuron, duplicate, proposer again.
    let h = p.proposal.body.hash();
    let e = err(n
        .api
        .vote(p.id, &SignedVote::sign(&h, 2, Vote::Yes, &n.gov.neurons[3])));
    assert!(e.contains("403"), "{e}");
    let e = err(n.api.vote(
        p.id,
        &SignedVote::sign(&h, 42, Vote::Yes, &n.gov.neurons[3]),
    ));
    assert!(e.contains("unknown neuron 42"), "{e}");
    n.vote(p.id, 4, Vote::No).unwrap();
    let e = err(n.vote(p.id, 4, Vote::Yes));
    assert!(e.contains("409") && e.contains("twice"), "{e}");
    let e = err(n.vote(p.id, 1, Vote::Yes));
    assert!(
        e.contains("409"),
        "the proposer already voted by proposing: {e}"
    );
    let e = err(n
        .api
        .vote(999, &SignedVote::sign(&h, 2, Vote::Yes, &n.gov.neurons[1])));
    assert!(
        e.contains("404") && e.contains("unknown proposal 999"),
        "{e}"
    );
    // A vote after the decision.
    n.vote(p.id, 2, Vote::Yes).unwrap();
    let e = err(n.vote(p.id, 3, Vote::Yes));
    assert!(e.contains("409") && e.contains("decided"), "{e}");

    // Malformed and oversized bodies.
    let post = |path: &str, body: Vec<u8>| match ureq::post(&format!("{}{path}", n.base))
        .send_bytes(&body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let (code, body) = post("/v1/proposals", b"{not json".to_vec());
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("malformed proposal"), "{body}");
    // Repeated: the answer must not race the client still sending its body.
    for _ in 0..20 {
        let (code, body) = post("/v1/proposals", vec![b' '; 200_000]);
        assert_eq!(code, 413, "{body}");
        assert!(body.contains("over the limit of 65536 bytes"), "{body}");
    }
    let (code, body) = post("/v1/registrations", b"{\"registration\": 5}".to_vec());
    assert_eq!(code, 400, "{body}");

    // Only the one adopted proposal changed the registry; the bad ones left no record.
    assert_eq!(n.head(), 2);
    assert_eq!(n.api.proposals().unwrap().len(), proposals_before);
    // And the server still serves.
    assert!(ureq::get(&format!("{}/v1/head.json", n.base))
        .call()
        .is_ok());
}

#[test]
fn registrations_within_the_allowance_need_no_vote() {
    let n = net(3600);
    let (op_id, op_key) = &n.gov.operators[0];
    let reg = |key: &keys::SecretKey, nonce: u64| {
        SignedRegistration::sign(
            Registration {
                operator: op_id.clone(),
                node_public_key: keys::public_hex(&keys::generate()),
                ipv6: format!("fd00::{nonce}"),
                http_endpoint: "http://[fd00::10]:8080".into(),
                nonce,
            },
            key,
        )
    };
    let e = err(n.api.register(&reg(&n.gov.neurons[0], 1)));
    assert!(e.contains("403"), "signed by the wrong key: {e}");
    let a = n.api.register(&reg(op_key, 2)).unwrap();
    let b = n.api.register(&reg(op_key, 3)).unwrap();
    assert_eq!((a.version, b.version), (2, 3));
    let e = err(n.api.register(&reg(op_key, 4)));
    assert!(e.contains("400") && e.contains("allowance"), "{e}");
    let r = n.server.registry();
    assert_eq!(r.nodes.len(), 2);
    assert_eq!(r.operators[op_id].nodes_added, 2);
    assert!(r.nodes.contains_key(&a.node_id));
}

#[test]
fn every_past_version_stays_readable() {
    let n = net(3600);
    for v in ["1.1.0", "1.2.0", "1.3.0"] {
        n.propose(1, elect(v))
            .and_then(|p| n.vote(p.id, 2, Vote::Yes))
            .unwrap();
    }
    assert_eq!(n.head(), 4);
    for at in 1..=4u64 {
        let s = n.api.snapshot(Some(at)).unwrap();
        assert_eq!(
            s.registry.guestos_versions.len() as u64,
            at - 1,
            "version {at}"
        );
    }
    assert!(n
        .api
        .snapshot(Some(5))
        .unwrap_err()
        .to_string()
        .contains("404"));
}
