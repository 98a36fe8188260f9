//! A three-node subnet as dApp developers reach it: three replicas, each with its own state
//! folder, raft log and HTTP interface, their calls ordered by the `replication` crate over
//! real (signed) peer HTTP. The real `ic-agent` sends calls through any node and reads from
//! any node, with its default checks on (certificates under the subnet key delegated from the
//! root key; query answers signed by a node key read from the certified state).

mod common;

use candid::Encode;
use certified_state::{canister_id, delegate, BlsKey, Delegation};
use common::{create_counter, get, inc};
use ic_agent::identity::BasicIdentity;
use ic_agent::Agent;
use ic_principal::Principal;
use replica::compare;
use replica::ordered::Ordered;
use replica::{Config, Replica};
use replication::testing::{initialize, key, leader, until_all, Member};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

struct Subnet {
    root: BlsKey,
    subnet: BlsKey,
    delegation: Delegation,
    dir: tempfile::TempDir,
    members: Vec<Member>,
    replicas: Vec<Arc<Replica>>,
    /// Each node's log adapter, as last started.
    ordered: std::collections::BTreeMap<usize, Arc<Ordered>>,
    /// What each node says of itself on the health route (set by the tests that need it).
    health: Vec<replica::health::Own>,
    rt: tokio::runtime::Runtime,
}

impl Subnet {
    fn new() -> Subnet {
        Subnet::with_settings(replication::testing::settings())
    }

    /// Three nodes whose log engines run with `settings`.
    fn with_settings(settings: replication::Settings) -> Subnet {
        let root = BlsKey::generate();
        let subnet = BlsKey::generate();
        let id = Principal::self_authenticating(subnet.public_der());
        let delegation = delegate(
            &root,
            id,
            &subnet.public_der(),
            &[(canister_id(0), canister_id(0xfffff))],
            replica::system_time_nanos(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let members = (1..=3)
            .map(|id| {
                let mut m = Member::new(id, dir.path().join(format!("node{id}")));
                m.settings = settings.clone();
                m
            })
            .collect();
        let mut s = Subnet {
            root,
            subnet,
            delegation,
            dir,
            members,
            replicas: Vec::new(),
            ordered: Default::default(),
            health: (0..3).map(|_| Default::default()).collect(),
            rt: tokio::runtime::Runtime::new().unwrap(),
        };
        for i in 0..3 {
            let r = s.open(i);
            s.replicas.push(r);
            s.start(i);
        }
        initialize(&s.members);
        leader(&s.members);
        s
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{}", i + 1)).join("state")
    }

    /// Node `i`'s replica from its state folder.
    fn open(&self, i: usize) -> Arc<Replica> {
        Arc::new(self.open_at(i, &self.state_dir(i)))
    }

    /// A replica with node `i`'s configuration on the state folder `dir`.
    fn open_at(&self, i: usize, dir: &std::path::Path) -> Replica {
        let me = key(i as u64 + 1);
        let der = ingress::ed25519_der(me.verifying_key().as_bytes());
        let config = Config {
            subnet_id: Principal::self_authenticating(self.subnet.public_der()),
            subnet_key: BlsKey::from_bytes(&self.subnet.to_bytes()).unwrap(),
            delegation: Some(self.delegation.clone()),
            root_key_der: self.root.public_der(),
            node_id: Principal::self_authenticating(&der),
            node_key: me,
            canister_range: (0, 0xfffff),
            subnet_size: 3,
            peer_node_keys: (1..=3)
                .filter(|k| *k != i as u64 + 1)
                .map(|k| key(k).verifying_key().to_bytes())
                .collect(),
            runtime: Default::default(),
            ingress: Default::default(),
        };
        std::fs::create_dir_all(dir).unwrap();
        let clock = Box::new(replica::system_time_nanos);
        Replica::open(config, dir, clock).unwrap().0
    }

    /// Start member `i` over its replica, serving the replica's interface, with the root
    /// comparison on its peer routes and running in the background (as the GuestOS's
    /// replica runs them).
    fn start(&mut self, i: usize) {
        let r = self.replicas[i].clone();
        let ordered = Arc::new(Ordered::new(r.clone()));
        self.ordered.insert(i, ordered.clone());
        let (peer, health) = (ordered.clone(), self.health[i].clone());
        self.members[i].start_with(ordered.clone(), move |node| {
            replica::subnet::peer_routes(peer, node).merge(replica::health::routes(health))
        });
        let node = self.members[i].node().clone();
        let watched = node.clone();
        self.members[i].spawn(async move {
            compare::watch(ordered, watched, Duration::from_millis(200)).await;
        });
        self.members[i].serve(replica::http::subnet_router(r, node));
    }

    fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].api_port)
    }

    /// An agent of identity `seed` that talks to node `i` only.
    fn agent(&self, i: usize, seed: u8) -> Agent {
        let a = Agent::builder()
            .with_url(self.url(i))
            .with_identity(BasicIdentity::from_raw_key(&[seed; 32]))
            .with_max_polling_time(Duration::from_secs(20))
            .build()
            .unwrap();
        a.set_root_key(self.root.public_der());
        a
    }

    fn roots(&self) -> Vec<(u64, [u8; 32])> {
        self.replicas
            .iter()
            .zip(&self.members)
            .filter(|(_, m)| m.is_running())
            .map(|(r, _)| r.state_root())
            .collect()
    }

    /// Wait until every running node has the same root as node `i`.
    fn settle(&self, i: usize) {
        let want = self.replicas[i].state_root();
        let replicas = self.replicas.clone();
        until_all(&self.members, "the same root", move |m| {
            replicas[m.id as usize - 1].state_root() == want
        });
    }
}

impl Drop for Subnet {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

/// The counter's count on the node `a` talks to.
async fn counted(a: &Agent, id: &Principal) -> u64 {
    get(a, id)
        .await
        .unwrap_or_else(|e| panic!("query `get`: {e}"))
}

/// Members hear what the others say of themselves (for rolling upgrades) on the signed health
/// route: an answer given under another member's id, and no answer, count as unreachable;
/// anyone without a member's key is refused.
#[test]
fn members_hear_each_others_health_and_an_answer_under_another_id_counts_for_nothing() {
    use node_status::replica::{LogRole, PeerHealth, PeerReport, Serving};
    let s = Subnet::new();
    let says = |i: usize, member_id: u64| {
        s.health[i].set(PeerHealth {
            member_id,
            role: LogRole::Voter,
            applied: 7,
            serving: Serving::Serving,
            guestos_version: "1.1.0".into(),
        })
    };
    says(1, 2);
    // Node 3 relays node 2's answer as its own.
    says(2, 2);
    let heard =
        s.rt.block_on(replica::health::ask_members(s.members[0].node()));
    assert!(
        matches!(&heard[&2], PeerReport::Reached(h) if h.guestos_version == "1.1.0" && h.applied == 7),
        "{heard:?}"
    );
    assert!(
        matches!(&heard[&3], PeerReport::Unreachable { why } if why.contains("answered as member 2")),
        "{heard:?}"
    );
    assert!(
        !heard.contains_key(&1),
        "a member does not ask itself: {heard:?}"
    );
    // A member that has taken no status yet (node 1 here) answers 503: not counted healthy.
    let heard =
        s.rt.block_on(replica::health::ask_members(s.members[1].node()));
    assert!(
        matches!(&heard[&1], PeerReport::Unreachable { why } if why.contains("503")),
        "{heard:?}"
    );
    let unsigned = ureq::post(&format!(
        "{}{}",
        s.members[0].url(),
        replica::health::HEALTH_ROUTE
    ))
    .send_bytes(&serde_cbor::to_vec(&()).unwrap());
    assert!(
        matches!(unsigned, Err(ureq::Error::Status(401, _))),
        "{unsigned:?}"
    );
}

/// Calls through every node execute once on every node in one order: each node answers the
/// same count; a node killed during a stream of calls loses none that were acknowledged, and
/// back from its folders it catches up to the same state; two nodes down leave the third
/// unable to order a call, which it says.
#[test]
fn calls_through_any_node_reach_every_node_and_survive_a_killed_node() {
    let mut s = Subnet::new();
    let agents: Vec<Agent> = (0..3).map(|i| s.agent(i, 9)).collect();
    let id = s.rt.block_on(create_counter(&agents[0]));
    // Ten increments, through nodes 2, 3, 1, 2, ...: each answer counts every one before.
    for n in 1..=10u64 {
        let via = n as usize % 3;
        let got = s.rt.block_on(inc(&agents[via], &id)).unwrap();
        assert_eq!(got, n, "increment {n} through node {}", via + 1);
    }
    s.settle(0);
    for (i, a) in agents.iter().enumerate() {
        assert_eq!(
            s.rt.block_on(counted(a, &id)),
            10,
            "query on node {}",
            i + 1
        );
    }
    let roots = s.roots();
    assert!(roots.iter().all(|r| r == &roots[0]), "{roots:?}");

    // A stream of calls through all three nodes; the leader is killed in the middle of it.
    let victim = (leader(&s.members) - 1) as usize;
    let acked = Arc::new(AtomicU64::new(0));
    let sent = 24u64;
    let stream = {
        let (agents, acked) = (agents.clone(), acked.clone());
        s.rt.spawn(async move {
            for n in 0..sent {
                if inc(&agents[n as usize % 3], &id).await.is_ok() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    while acked.load(Ordering::SeqCst) < 4 {
        std::thread::sleep(Duration::from_millis(20));
    }
    s.members[victim].kill();
    s.rt.block_on(stream).unwrap();
    let acked = acked.load(Ordering::SeqCst);
    let alive = (victim + 1) % 3;
    let count = s.rt.block_on(counted(&agents[alive], &id));
    eprintln!(
        "node {} killed mid-stream: {acked} of {sent} calls acknowledged, the count is {count}",
        victim + 1
    );
    assert!(
        count >= 10 + acked && count <= 10 + sent,
        "{count} counted, {acked} acknowledged of {sent} sent after the first 10"
    );
    // The two nodes left went on ordering calls after the kill.
    assert!(acked >= 12, "only {acked} of {sent} acknowledged");

    // Back from its checkpoint and log: the same count, the same root.
    s.replicas[victim] = s.open(victim);
    s.start(victim);
    s.settle(alive);
    let back = s.agent(victim, 9);
    assert_eq!(s.rt.block_on(counted(&back, &id)), count);
    assert_eq!(s.rt.block_on(inc(&back, &id)).unwrap(), count + 1);

    // Two nodes down: the one left orders nothing and says why.
    let lone = (victim + 1) % 3;
    for i in 0..3 {
        if i != lone {
            s.members[i].kill();
        }
    }
    let err = s.rt.block_on(inc(&agents[lone], &id)).unwrap_err();
    let text = err.to_string();
    eprintln!("the lone node: {text}");
    assert!(
        text.contains("503") && text.contains("did not order the call"),
        "{text}"
    );
    // Queries still answer from the state it has.
    assert_eq!(s.rt.block_on(counted(&agents[lone], &id)), count + 1);
}

/// A node whose state was changed on disk while it was down (its checkpoint rewritten whole,
/// so it loads as sound) comes back with another root than the subnet's: the comparison
/// finds it, the node stops serving and says why, and set aside and started again it
/// replays the log into the subnet's state.
#[test]
fn a_node_whose_state_was_tampered_on_disk_stops_serving_and_resyncs() {
    let mut s = Subnet::new();
    let agents: Vec<Agent> = (0..3).map(|i| s.agent(i, 11)).collect();
    let id = s.rt.block_on(create_counter(&agents[0]));
    for n in 1..=5u64 {
        assert_eq!(s.rt.block_on(inc(&agents[n as usize % 3], &id)).unwrap(), n);
    }
    s.settle(0);

    // Node 3 goes down; its newest checkpoint gets another certified count, written whole.
    let victim = 2;
    s.members[victim].kill();
    let checkpoints = s.state_dir(victim).join("checkpoints");
    let newest = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cbor"))
        .max()
        .unwrap();
    let mut m: replica::checkpoint::Manifest =
        serde_cbor::from_slice(&std::fs::read(&newest).unwrap()).unwrap();
    m.canisters[0].certified_data = 500u64.to_le_bytes().to_vec();
    std::fs::write(&newest, serde_cbor::to_vec(&m).unwrap()).unwrap();

    s.replicas[victim] = s.open(victim);
    s.start(victim);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let why = loop {
        if let Some(why) = s.replicas[victim].stopped() {
            break why;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tampered node was not found out"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("node 3: {why}");
    assert!(
        why.contains("diverged") && why.contains("members [1, 2]"),
        "{why}"
    );
    // It answers nothing from that state, and says why.
    let err =
        s.rt.block_on(
            agents[victim]
                .query(&id, "get")
                .with_arg(Encode!().unwrap())
                .call(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("503") && err.contains("diverged"), "{err}");
    // The comparison's peer route hears members only.
    let raft = s.members[0].url();
    let unsigned = ureq::post(&format!("{raft}{}", compare::ROOT_ROUTE))
        .send_bytes(&serde_cbor::to_vec(&1u64).unwrap());
    assert!(
        matches!(unsigned, Err(ureq::Error::Status(401, _))),
        "{unsigned:?}"
    );
    // So does the one that hands out the state's pieces.
    let unsigned = ureq::post(&format!("{raft}{}", replica::transfer::PIECE_ROUTE))
        .send_bytes(&serde_cbor::to_vec(&"00".repeat(32)).unwrap());
    assert!(
        matches!(unsigned, Err(ureq::Error::Status(401, _))),
        "{unsigned:?}"
    );
    // The others never doubted themselves, and serve on.
    for i in 0..2 {
        assert_eq!(s.replicas[i].stopped(), None);
    }
    assert_eq!(s.rt.block_on(inc(&agents[0], &id)).unwrap(), 6);

    // Its supervisor sets the state aside and starts it again: the log replays into the
    // subnet's state.
    s.members[victim].kill();
    let aside = compare::set_aside(&s.state_dir(victim)).unwrap();
    assert!(aside.join("checkpoints").exists());
    s.replicas[victim] = s.open(victim);
    s.start(victim);
    s.settle(0);
    assert_eq!(s.replicas[victim].stopped(), None);
    assert_eq!(s.rt.block_on(counted(&agents[victim], &id)), 6);
    assert_eq!(s.rt.block_on(inc(&agents[victim], &id)).unwrap(), 7);
}

/// A node down while the subnet went on past a snapshot, the log purged behind it: back, it
/// cannot replay what was purged, so it takes up the subnet's state from the members
/// (only the pieces it lacks), confirmed against their roots, and serves the same count.
#[test]
fn a_node_behind_a_purged_log_takes_up_the_subnets_state_from_its_members() {
    let mut settings = replication::testing::settings();
    settings.snapshot_every = 8;
    settings.keep_behind = 2;
    let mut s = Subnet::with_settings(settings);
    let agents: Vec<Agent> = (0..3).map(|i| s.agent(i, 12)).collect();
    let id = s.rt.block_on(create_counter(&agents[0]));
    for n in 1..=3u64 {
        assert_eq!(s.rt.block_on(inc(&agents[n as usize % 2], &id)).unwrap(), n);
    }
    s.settle(0);
    let victim = 2;
    let behind = s.members[victim].node().view().applied;
    s.members[victim].kill();
    for n in 4..=30u64 {
        assert_eq!(s.rt.block_on(inc(&agents[n as usize % 2], &id)).unwrap(), n);
    }
    let view = s.members[0].node().view();
    eprintln!("node 1 after 30 calls: {view:?}; node 3 stopped at entry {behind}");
    assert!(
        view.purged.is_some_and(|p| p > behind),
        "node 1's log is not purged past node 3's last entry {behind}: {view:?}"
    );

    s.replicas[victim] = s.open(victim);
    s.start(victim);
    s.settle(0);
    let view = s.members[victim].node().view();
    // Once or twice: the leader's stream may first send the snapshot it fetched while node
    // 3 was down, then the newer one it has purged behind meanwhile.
    assert!(
        s.ordered[&victim].taken_up() >= 1,
        "node 3 did not take up the subnet's state: {view:?}"
    );
    assert!(view.snapshot.is_some_and(|i| i > behind), "{view:?}");
    assert_eq!(s.rt.block_on(counted(&agents[victim], &id)), 30);
    assert_eq!(s.rt.block_on(inc(&agents[victim], &id)).unwrap(), 31);
    // Started again from its folder it resumes from the state it took up.
    s.members[victim].kill();
    s.replicas[victim] = s.open(victim);
    s.start(victim);
    s.settle(0);
    assert_eq!(s.rt.block_on(counted(&agents[victim], &id)), 31);
}

/// What a member hands over as a snapshot, as the taker checks it: a piece whose bytes are
/// not its name is refused, a root the members do not confirm is refused, and neither
/// leaves anything of the offered state behind; an honest offer is taken up whole and
/// durable, even after the sender's later checkpoints (its pinned pieces stay).
#[test]
fn a_taker_refuses_a_forged_piece_and_an_unconfirmed_root_and_keeps_what_it_had() {
    use replica::transfer::{Source, TransferError};
    let s = Subnet::new();
    let agents: Vec<Agent> = (0..3).map(|i| s.agent(i, 13)).collect();
    let id = s.rt.block_on(create_counter(&agents[0]));
    for n in 1..=4u64 {
        assert_eq!(s.rt.block_on(inc(&agents[0], &id)).unwrap(), n);
    }
    s.settle(0);
    let sender = s.replicas[0].clone();
    let (manifest, position) = sender.snapshot().unwrap();
    let position = position.unwrap();
    let want = sender.state_root().1;
    // The sender goes on; its later checkpoints do not take the pinned pieces away.
    assert_eq!(s.rt.block_on(inc(&agents[0], &id)).unwrap(), 5);

    struct Offer {
        from: Arc<Replica>,
        forge: bool,
        confirm: bool,
    }
    impl Source for Offer {
        fn pieces(&mut self, names: &[String]) -> Result<Vec<Vec<u8>>, TransferError> {
            let piece = |name: &String| {
                let mut b = self
                    .from
                    .piece(name)
                    .expect("the sender keeps its pinned pieces");
                if self.forge {
                    b[0] ^= 1;
                }
                b
            };
            Ok(names.iter().map(piece).collect())
        }
        fn confirm(&mut self, _root: [u8; 32]) -> Result<(), TransferError> {
            if self.confirm {
                Ok(())
            } else {
                Err(TransferError::Unconfirmed {
                    index: 0,
                    root: String::new(),
                    why: "members [2] hold another root".into(),
                })
            }
        }
    }
    let dir = s.dir.path().join("taker");
    let taker = s.open_at(2, &dir);
    let empty = taker.state_root();
    for (forge, confirm, says) in [
        (true, true, "does not match its hash"),
        (false, false, "members [2] hold another root"),
    ] {
        let mut offer = Offer {
            from: sender.clone(),
            forge,
            confirm,
        };
        let e = taker
            .take_up(&manifest, &position, &mut offer)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{e}");
        assert_eq!(
            taker.state_root(),
            empty,
            "a refused offer changed the state"
        );
    }
    drop(taker);
    let reopened = s.open_at(2, &dir);
    assert_eq!(
        reopened.state_root(),
        empty,
        "a refused offer was checkpointed"
    );
    let mut honest = Offer {
        from: sender.clone(),
        forge: false,
        confirm: true,
    };
    let root = reopened.take_up(&manifest, &position, &mut honest).unwrap();
    assert_eq!(root, want);
    assert_eq!(reopened.state_root().1, want);
    drop(reopened);
    assert_eq!(s.open_at(2, &dir).state_root().1, want, "not durable");
}
