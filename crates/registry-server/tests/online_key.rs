//! Attacks by whoever holds the registry server's online key (and its storage and mirrors),
//! and by hostile clients of its API. The online key signs freshness statements only: with
//! it, an attacker may withhold or delay the feed for a freshness period, never decide.

use registry_client::{Client, ClientConfig, ClientError};
use registry_model::*;
use registry_server::localnet::LocalGovernance;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::HttpServer;

struct Net {
    gov: LocalGovernance,
    server: Arc<registry_server::Registry>,
    base: String,
    genesis_hash: String,
    keydir: PathBuf,
    dir: tempfile::TempDir,
}

/// Neurons 40/30/20/10; the server's online keys are a folder holding the genesis key.
fn net(
    freshness_secs: u64,
    limits: registry_server::http::Limits,
) -> (Net, Arc<http_guard::Stats>) {
    let dir = tempfile::tempdir().unwrap();
    let gov = LocalGovernance::create(
        &dir.path().join("keys"),
        "test",
        &[40, 30, 20, 10],
        &[("op1", 8)],
        |k| Settings {
            online_key: k,
            proposal_deadline_secs: 3600,
            freshness_secs,
        },
    )
    .unwrap();
    let keydir = dir.path().join("online-keys");
    std::fs::create_dir_all(&keydir).unwrap();
    std::fs::copy(gov.dir.join("online.key"), keydir.join("genesis.key")).unwrap();
    let data = dir.path().join("data");
    let g = registry_server::Registry::init(&data, &gov.genesis).unwrap();
    let server = Arc::new(registry_server::Registry::open(&data, &keydir).unwrap());
    let (addr, stats) =
        registry_server::http::spawn_with(server.clone(), "127.0.0.1:0".parse().unwrap(), limits)
            .unwrap();
    (
        Net {
            gov,
            server,
            base: format!("http://{addr}"),
            genesis_hash: g.hash(),
            keydir,
            dir,
        },
        stats,
    )
}

impl Net {
    /// Adopt `action` (neurons 1 and 2: 70%); returns the change that executed it.
    fn adopt(&self, action: Action) -> Change {
        let body = self.server.new_proposal(1, "t", action).unwrap();
        let p = self
            .server
            .submit_proposal(SignedProposal::sign(body, &self.gov.neurons[0]))
            .unwrap();
        let r = self
            .server
            .vote(
                p.id,
                SignedVote::sign(&p.proposal.body.hash(), 2, Vote::Yes, &self.gov.neurons[1]),
            )
            .unwrap();
        let registry_model::api::ProposalStatus::Adopted { version } = r.status else {
            panic!("not adopted: {:?}", r.status)
        };
        self.change(version)
    }

    fn change(&self, version: u64) -> Change {
        let seg: Vec<Change> =
            serde_json::from_slice(&self.server.segment_json((version - 1) / 64).unwrap()).unwrap();
        seg.into_iter().find(|c| c.version == version).unwrap()
    }

    fn client(&self, name: &str) -> Client {
        Client::open(ClientConfig::new(
            vec![self.base.clone()],
            &self.genesis_hash,
            self.dir.path().join(name),
        ))
        .unwrap()
    }

    /// A static mirror of the current registry, which the attacker then extends.
    fn mirror(&self, name: &str) -> PathBuf {
        let out = self.dir.path().join(name);
        self.server.export(&out).unwrap();
        out
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn elected(v: &str) -> Elected {
    Elected {
        version: v.into(),
        sha256: "ab".repeat(32).parse().unwrap(),
        size: None,
        urls: vec!["http://m/x".into()],
    }
}

/// The attacker's move: append `evidence` after the mirror's head (correctly chained, dated
/// `timestamp`) and sign a fresh head for it with `online_key`.
fn append(mirror: &Path, evidence: Evidence, timestamp: u64, online_key: &keys::SecretKey) {
    let seg_path = mirror.join("v1/segments/0.json");
    let mut seg: Vec<Change> = serde_json::from_slice(&std::fs::read(&seg_path).unwrap()).unwrap();
    let last = seg.last().unwrap();
    let c = Change {
        version: last.version + 1,
        prev_hash: last.hash(),
        timestamp,
        evidence,
    };
    let head = Freshness {
        network: "test".into(),
        head_version: c.version,
        head_hash: c.hash(),
        issued_at: now(),
        expires_at: now() + 60,
    };
    seg.push(c);
    std::fs::write(&seg_path, serde_json::to_vec(&seg).unwrap()).unwrap();
    std::fs::write(
        mirror.join("v1/head.json"),
        serde_json::to_vec(&SignedFreshness::sign(head, online_key)).unwrap(),
    )
    .unwrap();
}

fn serve(dir: &Path) -> (HttpServer, String) {
    let s = HttpServer::serve_dir(dir.to_path_buf(), None);
    let url = s.url("");
    (s, url)
}

fn is_replay(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Invalid {
            error: ModelError::Replay(_),
            ..
        }
    )
}

#[test]
fn replayed_adopted_changes_are_refused() {
    let (n, _) = net(300, Default::default());
    let reg_req = n
        .server
        .new_registration(
            "op1",
            keys::public_hex(&keys::generate()),
            "fd00::1".into(),
            "http://[fd00::1]:8080".into(),
        )
        .unwrap();
    let (node, _) = n
        .server
        .register(SignedRegistration::sign(reg_req, &n.gov.operators[0].1))
        .unwrap();
    n.adopt(Action::ElectHostos(elected("1.0.0")));
    n.adopt(Action::ElectHostos(elected("1.1.0")));
    let deploy_old = n.adopt(Action::DeployHostosToNodes {
        nodes: vec![node.clone()],
        version: "1.0.0".into(),
    });
    let fw_old = n.adopt(Action::SetFirewallRules {
        scope: FirewallScope::Global,
        rules: vec![FirewallRule {
            action: FwAction::Allow,
            protocol: Protocol::Tcp,
            ports: vec![22],
            sources: vec!["::/0".into()],
            comment: "old".into(),
        }],
    });
    let add_neuron = n.adopt(Action::ChangeGovernance {
        upsert_neurons: vec![Neuron {
            id: 5,
            public_key: keys::public_hex(&keys::generate()),
            voting_power: 5,
        }],
        remove_neurons: vec![],
        online_key: None,
        proposal_deadline_secs: None,
        freshness_secs: None,
    });
    n.adopt(Action::DeployHostosToNodes {
        nodes: vec![node.clone()],
        version: "1.1.0".into(),
    });
    n.adopt(Action::SetFirewallRules {
        scope: FirewallScope::Global,
        rules: vec![],
    });
    n.adopt(Action::ChangeGovernance {
        upsert_neurons: vec![],
        remove_neurons: vec![5],
        online_key: None,
        proposal_deadline_secs: None,
        freshness_secs: None,
    });
    let mut synced = n.client("synced");
    synced.sync().unwrap();
    assert_eq!(
        synced.registry().hostos_for_node(&node).unwrap().version,
        "1.1.0"
    );
    for (what, old) in [
        ("old deploy-hostos", deploy_old),
        ("old firewall", fw_old),
        ("removed neuron's addition", add_neuron),
    ] {
        let m = n.mirror(&format!("m-{}", what.len()));
        append(&m, old.evidence.clone(), now(), &n.gov.online_key);
        let (_s, url) = serve(&m);
        let e = synced.sync_from(&url).unwrap_err();
        assert!(is_replay(&e), "{what}: {e}");
        let e = n
            .client(&format!("fresh-{}", what.len()))
            .sync_from(&url)
            .unwrap_err();
        assert!(is_replay(&e), "{what} (new client): {e}");
    }
    // The synced node still has what governance decided last.
    let r = synced.registry();
    assert_eq!(r.hostos_for_node(&node).unwrap().version, "1.1.0");
    assert!(r.firewall.is_empty() && !r.neurons.contains_key(&5));
}

#[test]
fn a_rotated_out_online_key_cannot_come_back() {
    let (n, _) = net(300, Default::default());
    let b = keys::generate();
    let c = keys::generate();
    keys::write_key(&n.keydir.join("b.key"), &b).unwrap();
    keys::write_key(&n.keydir.join("c.key"), &c).unwrap();
    let rotate = |k: &keys::SecretKey| {
        n.adopt(Action::ChangeGovernance {
            upsert_neurons: vec![],
            remove_neurons: vec![],
            online_key: Some(keys::public_hex(k)),
            proposal_deadline_secs: None,
            freshness_secs: None,
        })
    };
    let to_b = rotate(&b);
    rotate(&c);
    let mut synced = n.client("synced");
    synced.sync().unwrap();
    let head = synced.version();
    // Holding B, replay the change that installed B and sign the head with B.
    let m = n.mirror("m");
    append(&m, to_b.evidence.clone(), now(), &b);
    let (_s, url) = serve(&m);
    let e = synced.sync_from(&url).unwrap_err();
    assert!(is_replay(&e), "{e}");
    // Holding the genesis key, sign a fresh head for the history it was valid for.
    let old = n.dir.path().join("old");
    n.server.export(&old).unwrap();
    let segs: Vec<Change> =
        serde_json::from_slice(&std::fs::read(old.join("v1/segments/0.json")).unwrap()).unwrap();
    let before_b = &segs[to_b.version as usize - 2];
    std::fs::write(
        old.join("v1/segments/0.json"),
        serde_json::to_vec(&segs[..to_b.version as usize - 1]).unwrap(),
    )
    .unwrap();
    let f = Freshness {
        network: "test".into(),
        head_version: before_b.version,
        head_hash: before_b.hash(),
        issued_at: now(),
        expires_at: now() + 60,
    };
    std::fs::write(
        old.join("v1/head.json"),
        serde_json::to_vec(&SignedFreshness::sign(f, &n.gov.online_key)).unwrap(),
    )
    .unwrap();
    let (_s2, url) = serve(&old);
    let e = synced.sync_from(&url).unwrap_err();
    assert!(matches!(e, ClientError::Rollback { .. }), "{e}");
    assert_eq!(synced.version(), head);
}

#[test]
fn a_freshness_statement_longer_than_the_genesis_allows_is_refused() {
    let (n, _) = net(20, Default::default());
    n.adopt(Action::ElectGuestos(elected("1.0.0")));
    let m = n.mirror("m");
    let head = n.server.head();
    let f = Freshness {
        network: "test".into(),
        head_version: head.0,
        head_hash: head.1,
        issued_at: now(),
        expires_at: now() + 3600,
    };
    std::fs::write(
        m.join("v1/head.json"),
        serde_json::to_vec(&SignedFreshness::sign(f, &n.gov.online_key)).unwrap(),
    )
    .unwrap();
    let (_s, url) = serve(&m);
    let e = n.client("c").sync_from(&url).unwrap_err();
    assert!(
        e.to_string()
            .contains("valid for 3600 s; the registry allows 20 s"),
        "{e}"
    );
}

/// A decision whose votes the server held back, released later: outside its window the
/// chain refuses it; inside, a client that already saw a newer head refuses it as
/// back-dated; a change dated in the future is refused too.
#[test]
fn held_back_and_misdated_decisions_are_refused() {
    let (n, _) = net(300, Default::default());
    n.adopt(Action::ElectGuestos(elected("1.0.0")));
    // The client sees the head a second after the last change.
    std::thread::sleep(Duration::from_millis(1100));
    let mut synced = Client::open({
        let mut cfg = ClientConfig::new(
            vec![n.base.clone()],
            &n.genesis_hash,
            n.dir.path().join("synced"),
        );
        cfg.skew = Duration::ZERO;
        cfg
    })
    .unwrap();
    synced.sync().unwrap();
    let seen_at = now();
    let version = n.server.head().0;
    let body = ProposalBody {
        network: n.genesis_hash.clone(),
        base_version: version,
        expires_at: seen_at + 600,
        proposer: 1,
        title: "withheld".into(),
        action: Action::ElectGuestos(elected("6.6.6")),
        nonce: 1,
    };
    let h = body.hash();
    let evidence = Evidence::Proposal {
        id: 9,
        proposal: SignedProposal::sign(body.clone(), &n.gov.neurons[0]),
        votes: vec![SignedVote::sign(&h, 2, Vote::Yes, &n.gov.neurons[1])],
    };
    let chain_time = n.server.registry().time;
    // Back-dated to the last change's time, before the head this client verified.
    let m = n.mirror("m1");
    append(&m, evidence.clone(), chain_time, &n.gov.online_key);
    let (_s, url) = serve(&m);
    let e = synced.sync_from(&url).unwrap_err();
    assert!(
        matches!(e, ClientError::Time { ref problem, .. } if problem.contains("back-dated")),
        "{e}"
    );
    // Dated in the future.
    let m = n.mirror("m2");
    append(&m, evidence.clone(), now() + 500, &n.gov.online_key);
    let (_s2, url) = serve(&m);
    let e = synced.sync_from(&url).unwrap_err();
    assert!(
        matches!(e, ClientError::Time { ref problem, .. } if problem.contains("future")),
        "{e}"
    );
    // After its window: refused by every client, new ones included.
    let late = ProposalBody {
        expires_at: chain_time,
        nonce: 2,
        ..body
    };
    let h = late.hash();
    let m = n.mirror("m3");
    append(
        &m,
        Evidence::Proposal {
            id: 10,
            proposal: SignedProposal::sign(late, &n.gov.neurons[0]),
            votes: vec![SignedVote::sign(&h, 2, Vote::Yes, &n.gov.neurons[1])],
        },
        chain_time + 1,
        &n.gov.online_key,
    );
    let (_s3, url) = serve(&m);
    let e = n.client("new").sync_from(&url).unwrap_err();
    assert!(is_replay(&e), "{e}");
    assert_eq!(synced.version(), version);
}

#[test]
fn a_genesis_whose_voting_power_overflows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gov = LocalGovernance::create(
        &dir.path().join("keys"),
        "test",
        // TOML integers stop at i64::MAX; three of those overflow a u64.
        &[i64::MAX as u64, i64::MAX as u64, i64::MAX as u64],
        &[],
        LocalGovernance::default_settings,
    )
    .unwrap();
    let e = registry_server::Registry::init(&dir.path().join("data"), &gov.genesis)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not fit in 64 bits"), "{e}");
    assert!(!dir
        .path()
        .join("data")
        .join(registry_server::DB_FILE)
        .exists());
}

/// A GET by hand from a chosen loopback source address.
fn get_from(source: &str, addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let src: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&src.into())?;
    sock.connect(&addr.into())?;
    let mut s = std::net::TcpStream::from(sock);
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn a_flood_of_idle_connections_leaves_the_api_and_publishing_working() {
    let limits = registry_server::http::Limits {
        max_connections: 500,
        max_connections_per_client: 100,
        header_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let (n, stats) = net(300, limits);
    let addr: std::net::SocketAddr = n.base.trim_start_matches("http://").parse().unwrap();
    // 3000 idle connections from one address, opened within a few seconds.
    let t = Instant::now();
    let mut flood = Vec::new();
    for _ in 0..3000 {
        let Ok(s) = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None) else {
            break;
        };
        let src: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
        if s.bind(&src.into()).is_ok() && s.connect(&addr.into()).is_ok() {
            flood.push(s);
        }
    }
    assert!(flood.len() > 2500, "only {} connections", flood.len());
    let opened_in = t.elapsed();
    eprintln!("{} idle connections in {opened_in:?}", flood.len());
    let s = stats.snapshot();
    assert!(s.open <= 100, "{s:?}");
    // Meanwhile the API answers another client, proposals are taken, publishing works.
    let head = ureq::get(&format!("{}/v1/head.json", n.base))
        .call()
        .unwrap();
    assert_eq!(head.status(), 200);
    let api = registry_client::api::Api::new(&n.base);
    let p = api
        .propose(
            &n.gov.neurons[3],
            "over http",
            Action::ElectGuestos(elected("0.9.0")),
        )
        .unwrap();
    assert_eq!(p.status, registry_model::api::ProposalStatus::Open);
    n.adopt(Action::ElectGuestos(elected("1.0.0")));
    n.server.export(&n.dir.path().join("published")).unwrap();
    let mut c = n.client("c");
    assert_eq!(c.sync().unwrap().to_version, 2);
    // Once the header timeout closed them, the flooding address is served again.
    std::thread::sleep(Duration::from_millis(2500));
    let answer = get_from("127.0.0.2", addr, "/v1/head.json").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // One address holds at most 100 connections at a time and each is closed by the 2 s
    // header timeout, so however slowly the flood was opened, the server can have taken at
    // most 100 per 2 s of it (plus this test's own few requests); it refused the rest.
    let s = stats.snapshot();
    let windows = (opened_in.as_secs_f64() / 2.0).ceil() as u64 + 1;
    let allowed = 100 * windows + 10;
    assert!(s.accepted <= allowed, "{s:?}, at most {allowed} allowed");
    assert!(
        s.refused_per_client + s.accepted >= flood.len() as u64,
        "{s:?}: every flooding connection is either taken or refused"
    );
    assert!(s.refused_per_client > 0, "{s:?}");
    drop(flood);
}

#[test]
fn the_online_key_rotates_without_an_outage() {
    let (n, _) = net(300, Default::default());
    let b = keys::generate();
    keys::write_key(&n.keydir.join("next.key"), &b).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let syncs = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let mut c = n.client(&format!("c{i}"));
            let (stop, syncs) = (stop.clone(), syncs.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = c.sync().expect("a sync failed during the rotation");
                    assert!(r.to_version >= last);
                    last = r.to_version;
                    syncs.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
                c
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    n.adopt(Action::ElectGuestos(elected("1.0.0")));
    n.adopt(Action::ChangeGovernance {
        upsert_neurons: vec![],
        remove_neurons: vec![],
        online_key: Some(keys::public_hex(&b)),
        proposal_deadline_secs: None,
        freshness_secs: None,
    });
    n.adopt(Action::ElectGuestos(elected("1.1.0")));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let c = c
            .join()
            .expect("a client failed to sync during the rotation");
        assert_eq!(c.version(), 4);
        let f = c.verified().unwrap().freshness.clone().unwrap();
        keys::verify(
            &keys::public_hex(&b),
            &f.freshness.message(),
            &f.signature,
            "head",
        )
        .unwrap();
    }
    assert!(syncs.load(Ordering::Relaxed) > 20);

    // A rotation to a key the server does not hold: the head says which key it needs, the
    // rest of the API serves on, and adding the key file is enough.
    let c = keys::generate();
    n.adopt(Action::ChangeGovernance {
        upsert_neurons: vec![],
        remove_neurons: vec![],
        online_key: Some(keys::public_hex(&c)),
        proposal_deadline_secs: None,
        freshness_secs: None,
    });
    let e = match ureq::get(&format!("{}/v1/head.json", n.base)).call() {
        Err(ureq::Error::Status(503, r)) => r.into_string().unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(
        e.contains(&keys::public_hex(&c)) && e.contains("put its key file into"),
        "{e}"
    );
    assert!(ureq::get(&format!("{}/v1/segments/0.json", n.base))
        .call()
        .is_ok());
    keys::write_key(&n.keydir.join("later.key"), &c).unwrap();
    let mut late = n.client("late");
    assert_eq!(late.sync().unwrap().to_version, 5);
}
