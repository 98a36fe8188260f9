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
        sha256: "ab".repeat(32).parse().unwrap(),
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
        let body = self.server.new_proposal(neuron, "test", action).unwrap();
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
    let body = n.server.new_proposal(2, "forged", elect("2.0.0")).unwrap();
    let e = err(n
        .api
        .submit_proposal(&SignedProposal::sign(body, &n.gov.neurons[0])));
    assert!(e.contains("403") && e.contains("signature"), "{e}");
    // Unknown neuron.
    let body = n.server.new_proposal(77, "x", elect("2.0.0")).unwrap();
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
        let r = n
            .server
            .new_registration(
                op_id,
                keys::public_hex(&keys::generate()),
                format!("fd00::{nonce}"),
                "http://[fd00::10]:8080".into(),
            )
            .unwrap();
        SignedRegistration::sign(r, key)
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

/// Decisions the server can tell are unusable are refused when they arrive, with a
/// message the signer can act on (the chain would refuse them later anyway).
#[test]
fn proposals_and_registrations_for_elsewhere_or_outside_their_window_are_refused() {
    let n = net(3600);
    let submit = |f: &dyn Fn(&mut ProposalBody)| {
        let mut body = n.server.new_proposal(1, "t", elect("3.0.0")).unwrap();
        f(&mut body);
        err(n
            .api
            .submit_proposal(&SignedProposal::sign(body, &n.gov.neurons[0])))
    };
    let e = submit(&|b| b.network = "ab".repeat(32));
    assert!(e.contains("400") && e.contains("for network"), "{e}");
    let e = submit(&|b| b.expires_at = 1000);
    assert!(e.contains("400") && e.contains("expired at 1000"), "{e}");
    let e = submit(&|b| b.expires_at += 86_400 * 365);
    assert!(e.contains("400") && e.contains("clock ahead"), "{e}");
    let e = submit(&|b| b.base_version = 50);
    assert!(e.contains("400") && e.contains("head is version 1"), "{e}");
    let (op_id, op_key) = &n.gov.operators[0];
    let mut r = n
        .server
        .new_registration(
            op_id,
            keys::public_hex(&keys::generate()),
            "fd00::5".into(),
            "http://[fd00::5]:8080".into(),
        )
        .unwrap();
    r.expires_at = 5;
    let e = err(n.api.register(&SignedRegistration::sign(r, op_key)));
    assert!(e.contains("400") && e.contains("expired at 5"), "{e}");
    assert_eq!(n.head(), 1);
    assert!(n.api.proposals().unwrap().is_empty());
}

/// Whatever goes wrong, the answer is JSON with an `error` naming it — also for what axum
/// itself refuses (unknown paths, wrong methods, unparsable ids and queries).
#[test]
fn every_error_is_answered_as_json() {
    let n = net(3600);
    let call = |method: &str, path: &str| {
        let r = ureq::request(method, &format!("{}{path}", n.base)).call();
        let (code, resp) = match r {
            Ok(r) => (r.status(), r),
            Err(ureq::Error::Status(c, r)) => (c, r),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(resp.content_type(), "application/json", "{method} {path}");
        let v: serde_json::Value = serde_json::from_str(&resp.into_string().unwrap()).unwrap();
        (code, v["error"].as_str().unwrap_or_default().to_string())
    };
    let (c, e) = call("GET", "/v2/nothing");
    assert_eq!(c, 404);
    assert!(e.contains("/v2/nothing"), "{e}");
    let (c, e) = call("GET", "/v1/proposals/abc");
    assert_eq!(c, 400);
    assert!(e.contains("`abc` is not a number"), "{e}");
    let (c, e) = call("DELETE", "/v1/proposals");
    assert_eq!(c, 405, "{e}");
    assert!(!e.is_empty());
    let (c, e) = call("GET", "/v1/changes?since=x");
    assert_eq!(c, 400);
    assert!(e.contains("`since` must be a number"), "{e}");
    let (c, e) = call("GET", "/v1/segments/7.json");
    assert_eq!(c, 404);
    assert!(e.contains("segment 7"), "{e}");
}

#[test]
fn one_neuron_cannot_flood_the_store_with_proposals() {
    let n = net(3600);
    for i in 0..registry_server::MAX_OPEN_PER_NEURON {
        n.propose(4, elect(&format!("5.{i}.0"))).unwrap();
    }
    let e = err(n.propose(4, elect("5.99.0")));
    assert!(e.contains("409") && e.contains("16 open proposals"), "{e}");
    // Others are not affected.
    n.propose(3, elect("5.99.0")).unwrap();
}

/// Historical snapshots replay the log from the genesis: a client asking for many at once
/// gets at most two computed, the rest a 503 to retry, and the server keeps answering.
#[test]
fn historical_snapshots_are_computed_two_at_a_time() {
    let n = net(3600);
    for i in 0..300 {
        n.propose(1, elect(&format!("7.{i}.0")))
            .and_then(|p| n.vote(p.id, 2, Vote::Yes))
            .unwrap();
    }
    let at = n.head() - 1;
    let t = std::time::Instant::now();
    n.server.snapshot(at).unwrap();
    eprintln!("one replay of {at} versions: {:?}", t.elapsed());
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let results: Vec<_> = (0..8)
        .map(|_| {
            let (server, barrier) = (n.server.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                server.snapshot(at).map(|r| r.guestos_versions.len())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let busy = results
        .iter()
        .filter(|r| matches!(r, Err(registry_server::ServerError::Busy(_))))
        .count();
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(
        busy >= 1 && !ok.is_empty() && busy + ok.len() == 8,
        "{results:?}"
    );
    assert!(ok.iter().all(|v| **v == 299));
    let e = match ureq::get(&format!("{}/v1/snapshot?at=2", n.base)).call() {
        Ok(r) => r.status().to_string(),
        Err(ureq::Error::Status(c, r)) => format!("{c} {:?}", r.header("retry-after")),
        Err(e) => panic!("{e}"),
    };
    assert!(e == "200" || e == "503 Some(\"5\")", "{e}");
}
