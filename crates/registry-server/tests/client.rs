//! The registry client against real servers and against mirrors an attacker controls: one
//! test per applicable attack from TUF's list.

use registry_client::{Client, ClientConfig, ClientError};
use registry_model::*;
use registry_server::localnet::LocalGovernance;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use test_support::HttpServer;

struct Net {
    gov: LocalGovernance,
    data: PathBuf,
    server: Arc<registry_server::Registry>,
    base: String,
    genesis_hash: String,
    dir: tempfile::TempDir,
}

fn net(freshness_secs: u64) -> Net {
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
    let data = dir.path().join("data");
    let g = registry_server::Registry::init(&data, &gov.genesis).unwrap();
    let server =
        Arc::new(registry_server::Registry::open(&data, &gov.dir.join("online.key")).unwrap());
    let addr =
        registry_server::http::spawn(server.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    Net {
        gov,
        data,
        server,
        base: format!("http://{addr}"),
        genesis_hash: g.hash(),
        dir,
    }
}

impl Net {
    /// Adopt an election (neurons 1 and 2: 70%).
    fn elect(&self, v: &str) {
        let action = Action::ElectGuestos(Elected {
            version: v.into(),
            sha256: "ab".repeat(32).parse().unwrap(),
            size: None,
            urls: vec!["http://m/x".into()],
        });
        let body = self.server.new_proposal(1, v, action).unwrap();
        let p = self
            .server
            .submit_proposal(SignedProposal::sign(body, &self.gov.neurons[0]))
            .unwrap();
        self.server
            .vote(
                p.id,
                SignedVote::sign(&p.proposal.body.hash(), 2, Vote::Yes, &self.gov.neurons[1]),
            )
            .unwrap();
    }

    fn client(&self, name: &str) -> Client {
        let mut cfg = ClientConfig::new(
            vec![self.base.clone()],
            &self.genesis_hash,
            self.dir.path().join(name),
        );
        cfg.skew = std::time::Duration::ZERO;
        Client::open(cfg).unwrap()
    }

    /// A static mirror of the current registry in `name`.
    fn mirror(&self, name: &str) -> PathBuf {
        let out = self.dir.path().join(name);
        self.server.export(&out).unwrap();
        out
    }
}

fn serve(dir: &Path) -> (HttpServer, String) {
    let s = HttpServer::serve_dir(dir.to_path_buf(), None);
    let url = s.url("");
    (s, url)
}

fn read_segment(mirror: &Path, k: u64) -> Vec<Change> {
    serde_json::from_slice(&std::fs::read(mirror.join(format!("v1/segments/{k}.json"))).unwrap())
        .unwrap()
}

fn write_segment(mirror: &Path, k: u64, changes: &[Change]) {
    std::fs::write(
        mirror.join(format!("v1/segments/{k}.json")),
        serde_json::to_vec(changes).unwrap(),
    )
    .unwrap();
}

fn write_head(mirror: &Path, f: Freshness, key: &keys::SecretKey) {
    std::fs::write(
        mirror.join("v1/head.json"),
        serde_json::to_vec(&SignedFreshness::sign(f, key)).unwrap(),
    )
    .unwrap();
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn syncs_verifies_caches_and_continues_incrementally() {
    let n = net(300);
    for v in ["1.0.0", "1.1.0"] {
        n.elect(v);
    }
    let mut c = n.client("cache");
    let r = c.sync().unwrap();
    assert_eq!((r.from_version, r.to_version), (0, 3));
    assert!(c.registry().guestos_versions.contains_key("1.1.0"));
    // A new client on the same cache starts where the last one stopped.
    drop(c);
    n.elect("1.2.0");
    let mut c = n.client("cache");
    assert_eq!(c.version(), 3);
    let r = c.sync().unwrap();
    assert_eq!((r.from_version, r.to_version), (3, 4));
    // A static mirror works the same.
    let m = n.mirror("mirror");
    let (_s, url) = serve(&m);
    let mut fresh = n.client("other");
    fresh.sync_from(&url).unwrap();
    assert_eq!(fresh.registry(), c.registry());
}

#[test]
fn forged_change_is_refused() {
    let n = net(300);
    n.elect("1.0.0");
    let m = n.mirror("m");
    let mut seg = read_segment(&m, 0);
    if let Evidence::Proposal { votes, .. } = &mut seg[1].evidence {
        let mut sig = votes[0].signature.clone().into_bytes();
        sig[10] = if sig[10] == b'a' { b'b' } else { b'a' };
        votes[0].signature = String::from_utf8(sig).unwrap();
    }
    write_segment(&m, 0, &seg);
    let (_s, url) = serve(&m);
    let e = n.client("c").sync_from(&url).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Invalid {
                version: 2,
                error: ModelError::BadSignature(_),
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn change_below_majority_is_refused_even_with_the_online_key() {
    // Key compromise below the threshold: the attacker holds neuron 4 (10%) and even the
    // server's online key, and publishes a change of its own.
    let n = net(300);
    n.elect("1.0.0");
    let m = n.mirror("m");
    let mut seg = read_segment(&m, 0);
    let action = Action::ElectGuestos(Elected {
        version: "6.6.6".into(),
        sha256: "ee".repeat(32).parse().unwrap(),
        size: None,
        urls: vec!["http://evil/x".into()],
    });
    let body = n.server.new_proposal(4, "evil", action).unwrap();
    let evil = Change {
        version: 3,
        prev_hash: seg[1].hash(),
        timestamp: now(),
        evidence: Evidence::Proposal {
            id: 9,
            proposal: SignedProposal::sign(body, &n.gov.neurons[3]),
            votes: vec![],
        },
    };
    let hash = evil.hash();
    seg.push(evil);
    write_segment(&m, 0, &seg);
    write_head(
        &m,
        Freshness {
            network: "test".into(),
            head_version: 3,
            head_hash: hash,
            issued_at: now(),
            expires_at: now() + 300,
        },
        &n.gov.online_key,
    );
    let (_s, url) = serve(&m);
    let e = n.client("c").sync_from(&url).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Invalid {
                version: 3,
                error: ModelError::NotAdopted {
                    yes: 10,
                    total: 100
                },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn rollback_to_an_older_version_is_refused() {
    let n = net(300);
    n.elect("1.0.0");
    let old = n.mirror("old");
    n.elect("1.1.0");
    let mut c = n.client("c");
    c.sync().unwrap();
    assert_eq!(c.version(), 3);
    // The old mirror's statement is validly signed and fresh, but older than what we have.
    let (_s, url) = serve(&old);
    let e = c.sync_from(&url).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Rollback {
                served: 2,
                have: 3,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(c.version(), 3);
}

#[test]
fn frozen_feed_is_refused() {
    let n = net(1);
    n.elect("1.0.0");
    let m = n.mirror("m");
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let (_s, url) = serve(&m);
    let mut c = n.client("c");
    let e = c.sync_from(&url).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Freshness {
                error: ModelError::Stale { head: 2, .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(c.version(), 0, "nothing is kept from a stale feed");
}

#[test]
fn mix_and_match_of_two_histories_is_refused() {
    let n = net(300);
    n.elect("1.0.0");
    // A second server started from a copy of the store at version 2; then each history gets
    // its own (valid) version 3.
    let copy = n.dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(
        n.data.join(registry_server::DB_FILE),
        copy.join(registry_server::DB_FILE),
    )
    .unwrap();
    n.elect("1.1.0");
    let head_a = n.mirror("a");
    let other = registry_server::Registry::open(&copy, &n.gov.dir.join("online.key")).unwrap();
    let action = Action::ElectGuestos(Elected {
        version: "2.0.0".into(),
        sha256: "cd".repeat(32).parse().unwrap(),
        size: None,
        urls: vec!["http://m/y".into()],
    });
    let body = other.new_proposal(1, "b", action).unwrap();
    let p = other
        .submit_proposal(SignedProposal::sign(body, &n.gov.neurons[0]))
        .unwrap();
    other
        .vote(
            p.id,
            SignedVote::sign(&p.proposal.body.hash(), 2, Vote::Yes, &n.gov.neurons[1]),
        )
        .unwrap();
    let b = n.dir.path().join("b");
    other.export(&b).unwrap();
    // Head of A (version 3) with the segments of B: B's version 3 is not A's.
    std::fs::copy(head_a.join("v1/head.json"), b.join("v1/head.json")).unwrap();
    let (_s, url) = serve(&b);
    let e = n.client("c").sync_from(&url).unwrap_err();
    assert!(matches!(e, ClientError::Fork { version: 3, .. }), "{e}");
}

#[test]
fn endless_data_is_refused() {
    let n = net(300);
    n.elect("1.0.0");
    let m = n.mirror("m");
    let big = vec![b'['; (registry_client::MAX_SEGMENT_BYTES + 10) as usize];
    std::fs::write(m.join("v1/segments/0.json"), &big).unwrap();
    let (_s, url) = serve(&m);
    let e = n.client("c").sync_from(&url).unwrap_err();
    assert!(matches!(e, ClientError::TooLarge { .. }), "{e}");
    std::fs::write(m.join("v1/head.json"), vec![b' '; 1 << 20]).unwrap();
    let e = n.client("c").sync_from(&url).unwrap_err();
    assert!(matches!(e, ClientError::TooLarge { .. }), "{e}");
}

#[test]
fn malicious_mirror_is_skipped_for_an_honest_one() {
    let n = net(300);
    n.elect("1.0.0");
    let bad = n.mirror("bad");
    std::fs::write(bad.join("v1/segments/0.json"), b"[]").unwrap();
    let good = n.mirror("good");
    let (_s1, bad_url) = serve(&bad);
    let (_s2, good_url) = serve(&good);
    let mut cfg = ClientConfig::new(
        vec![bad_url, good_url.clone()],
        &n.genesis_hash,
        n.dir.path().join("c"),
    );
    cfg.skew = std::time::Duration::ZERO;
    let mut c = Client::open(cfg).unwrap();
    let r = c.sync().unwrap();
    assert_eq!(r.mirror, good_url.trim_end_matches('/'));
    assert_eq!(r.to_version, 2);
}

#[test]
fn fast_forward_claim_without_changes_is_refused() {
    let n = net(300);
    n.elect("1.0.0");
    let m = n.mirror("m");
    write_head(
        &m,
        Freshness {
            network: "test".into(),
            head_version: 1_000_000,
            head_hash: "ff".repeat(32),
            issued_at: now(),
            expires_at: now() + 300,
        },
        &n.gov.online_key,
    );
    let (_s, url) = serve(&m);
    let mut c = n.client("c");
    let e = c.sync_from(&url).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Incomplete {
                claimed: 1_000_000,
                served: 2,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(c.version(), 0);
}

#[test]
fn another_networks_genesis_is_refused() {
    let n = net(300);
    let mut cfg = ClientConfig::new(
        vec![n.base.clone()],
        &"12".repeat(32),
        n.dir.path().join("c"),
    );
    cfg.skew = std::time::Duration::ZERO;
    let e = Client::open(cfg).unwrap().sync().unwrap_err();
    assert!(matches!(e, ClientError::WrongGenesis { .. }), "{e}");
}
