//! Catch-up by state transfer (issue 14): the time a node of a three-node subnet takes to
//! catch up a canister state of a given size it lacks entirely, against copying the same
//! state folder on the same disk, in the same run.
//!
//! The node is down while the ballast canister grows to the size (64 MiB per call) and the
//! log is purged behind the subnet's snapshots, so back up it can only take up the state:
//! the manifest from the leader, every 1 MiB piece from the members over the signed peer
//! routes (each checked against its hash), the state rebuilt, its root confirmed by the
//! members, then made durable. It counts as caught up when its root is the leader's. The
//! baseline is `cp -r` of the leader's state folder followed by `sync`: the bytes alone,
//! without checking, rebuilding or agreeing on anything.

use crate::subnet::err;
use crate::BenchError;
use replica::ordered::Ordered;
use replication::testing::{key, Member};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run measured.
#[derive(Debug, Clone)]
pub struct CatchUpReport {
    /// The canister's stable memory, MiB.
    pub mib: u64,
    /// Pieces the node took up.
    pub pieces: usize,
    /// Snapshots it took up on the way (a second one when the leader snapshots again
    /// and purges while the node takes up the first).
    pub snapshots: u64,
    pub catch_up: Duration,
    pub copy: Duration,
}

/// A node: its member (log engine), replica and log adapter.
struct Node {
    member: Member,
    replica: Arc<replica::Replica>,
    ordered: Arc<Ordered>,
}

/// The engine's timing for nodes busy hashing a large state after every call: heartbeats
/// that such a node keeps up with, a call waits as long as growing the canister takes,
/// snapshots often, so the log is soon purged.
fn settings() -> replication::Settings {
    replication::Settings {
        heartbeat: Duration::from_millis(500),
        request_timeout: Duration::from_secs(300),
        snapshot_every: 4,
        keep_behind: 1,
    }
}

/// Node `id`'s replica on its state folder under `dir`.
fn open(
    dir: &Path,
    keys: &crate::subnet::Keys,
    id: u64,
) -> Result<Arc<replica::Replica>, BenchError> {
    let spec = node_config::replica::ReplicaSpec {
        subnet: "bench".into(),
        subnet_secret_key: hex::encode(keys.subnet.to_bytes()),
        delegation: keys.delegation.clone(),
        root_key: hex::encode(keys.root.public_der()),
        node_key: hex::encode(key(id).to_bytes()),
        canister_range: (0, 0xffff),
        subnet_size: 3,
        subnet_nodes: (1..=3)
            .map(|k| hex::encode(key(k).verifying_key().to_bytes()))
            .collect(),
        guestos_version: String::new(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        state_dir: dir.join(format!("node{id}/state")),
        raft: None,
    };
    std::fs::create_dir_all(&spec.state_dir).map_err(|e| err("a state folder")(e.to_string()))?;
    let (r, _) = replica::node::open(&spec, Default::default())
        .map_err(|e| err("opening a replica")(e.to_string()))?;
    Ok(Arc::new(r))
}

impl Node {
    fn new(dir: &Path, keys: &crate::subnet::Keys, id: u64) -> Result<Node, BenchError> {
        let mut member = Member::new(id, dir.join(format!("node{id}")));
        member.settings = settings();
        let replica = open(dir, keys, id)?;
        let ordered = Arc::new(Ordered::new(replica.clone()));
        Ok(Node {
            member,
            replica,
            ordered,
        })
    }

    /// Start its engine over its replica, with the replica's peer routes, serving the
    /// interface; the interface's URL.
    fn start(&mut self) -> String {
        let peer = self.ordered.clone();
        self.member.start_with(self.ordered.clone(), move |node| {
            replica::subnet::peer_routes(peer, node)
        });
        let node = self.member.node().clone();
        let port = self
            .member
            .serve(replica::http::subnet_router(self.replica.clone(), node));
        format!("http://127.0.0.1:{port}")
    }
}

/// Run it: a canister of `mib` MiB (rounded up to 64), caught up by a node that lacks it.
pub fn catch_up_benchmark(mib: u64) -> Result<CatchUpReport, BenchError> {
    let tmp = tempfile::tempdir().map_err(|e| err("a temporary directory")(e.to_string()))?;
    let keys = crate::subnet::keys()?;
    let mut nodes = (1..=3)
        .map(|id| Node::new(tmp.path(), &keys, id))
        .collect::<Result<Vec<_>, _>>()?;
    let urls: Vec<String> = nodes.iter_mut().map(Node::start).collect();
    let members: Vec<&Member> = nodes.iter().map(|n| &n.member).collect();
    initialize_and_elect(&members)?;

    let signer = crate::replica::signer()?;
    let (id, envelopes) =
        crate::replica::install_envelopes(&signer, 0, example_canisters::ballast_wasm())?;
    for (_, body) in envelopes {
        crate::subnet::call_until_done(&urls[0], &id, &body)?;
    }
    // Node 3 goes down before the canister grows: it lacks every piece.
    let lagging = nodes[2].member.node().view().applied;
    nodes[2].member.kill();
    let calls = mib.div_ceil(64);
    for n in 0..calls {
        let body = crate::replica::sign_call(&signer, &id, &id, "grow", b"DIDL\0\0".to_vec())?;
        crate::subnet::call_until_done(&urls[0], &id, &body)?;
        tracing::info!("the canister holds {} MiB", (n + 1) * 64);
    }
    // Entries that change nothing, until the log is purged past what node 3 has.
    let mut purged = nodes[0].member.node().view().purged;
    for _ in 0..16 {
        if purged.is_some_and(|p| p > lagging) {
            break;
        }
        let body = crate::replica::sign_call(&signer, &id, &id, "size", b"DIDL\0\0".to_vec())?;
        crate::subnet::call_until_done(&urls[0], &id, &body)?;
        purged = nodes[0].member.node().view().purged;
    }
    if purged.is_none_or(|p| p <= lagging) {
        return Err(err("the log")(format!(
            "not purged past node 3's last entry {lagging} ({purged:?}): it would replay the log"
        )));
    }

    let started = Instant::now();
    nodes[2].replica = open(tmp.path(), &keys, 3)?;
    nodes[2].ordered = Arc::new(Ordered::new(nodes[2].replica.clone()));
    nodes[2].start();
    let want = nodes[0].replica.state_root();
    while nodes[2].replica.state_root() != want {
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(err("catching up")(
                "node 3 did not reach the leader's root in 30 min".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let catch_up = started.elapsed();
    let pieces = std::fs::read_dir(tmp.path().join("node3/state/chunks"))
        .map(|d| d.count())
        .unwrap_or(0);

    let copy = copy_folder(
        &tmp.path().join("node1/state"),
        &tmp.path().join("copy-of-node1-state"),
    )?;
    // Read after the copy: the count goes up a moment after the state is swapped in.
    let snapshots = nodes[2].ordered.taken_up();
    for n in &mut nodes {
        n.member.kill();
    }
    if snapshots == 0 {
        return Err(err("catching up")(
            "node 3 caught up without taking up a snapshot".into(),
        ));
    }
    Ok(CatchUpReport {
        mib: calls * 64,
        pieces,
        snapshots,
        catch_up,
        copy,
    })
}

/// Make the members one group and wait for a leader.
fn initialize_and_elect(members: &[&Member]) -> Result<(), BenchError> {
    let first = members[0];
    let all = members.iter().map(|m| (m.id, m.url())).collect();
    first
        .block_on(first.node().initialize(all))
        .map_err(|e| err("initializing the subnet")(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while members.iter().any(|m| m.node().leader().is_none()) {
        if Instant::now() > deadline {
            return Err(err("electing a leader")("none within 30 s".into()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `cp -r from to` then `sync`: the time.
fn copy_folder(from: &Path, to: &Path) -> Result<Duration, BenchError> {
    let started = Instant::now();
    for (what, cmd) in [
        (
            "cp -r",
            std::process::Command::new("cp")
                .arg("-r")
                .arg(from)
                .arg(to)
                .status(),
        ),
        ("sync", std::process::Command::new("sync").status()),
    ] {
        match cmd {
            Ok(s) if s.success() => {}
            other => return Err(err(what)(format!("{other:?}"))),
        }
    }
    Ok(started.elapsed())
}
