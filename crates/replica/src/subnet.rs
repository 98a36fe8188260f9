//! A replica of a replicated subnet, as the GuestOS runs it from its spec
//! ([`node_config::replica::RaftSpec`]): the replica driven by the subnet's ordered log, its
//! peer routes (the log's and the root comparison's) on the peer port, its interface on the
//! payload port, and these background duties:
//!
//! * **start** the log, on the one node the spec names (the first founder still in the
//!   subnet); every other node waits for the leader to add it;
//! * **membership**: hear the subnet's members and, while they leave, the log's; ask the
//!   leader to make the registry's members the log's (a change asked with an older registry
//!   view than the leader's newest is refused, so a lagging node cannot undo one);
//! * **catch-up** by state transfer ([`crate::transfer`]): snapshots every few thousand
//!   entries, the log purged behind them, a member that lacks the purged entries takes up
//!   the snapshot's state from the members;
//! * **comparison** of state roots ([`crate::compare`]): on a divergence the node stops
//!   serving, sets its state folder aside and ends with an error, and its supervisor (systemd)
//!   starts it again on an empty folder, which the log replays into the subnet's state;
//! * **status**: `status.json` next to the spec every second
//!   ([`node_status::replica::ReplicaStatus`]), with what the other members said of
//!   themselves ([`crate::health`]);
//! * **drain** on a stop signal: answer for [`crate::health::DRAIN`] more while saying
//!   "stopping", then leave the log and end (a reboot costs clients nothing).

use crate::compare;
use crate::health::{self, Own};
use crate::ordered::Ordered;
use crate::Replica;
use node_config::replica::{Membership, ReplicaSpec};
use node_config::spec::Spec;
use node_status::replica::{LogRole, PeerHealth, ReplicaStatus, STATUS_FILE};
use replication::{auth::Identity, Replicated, Settings};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a replicated replica could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error("the replica spec's raft section: {0}")]
    Spec(String),
    #[error("the subnet's log: {0}")]
    Log(#[from] replication::ReplicationError),
    #[error("no async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("serving on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}; its state was set aside at {1}")]
    Diverged(compare::Divergence, PathBuf),
    #[error("{0}; and setting its state aside failed: {1}")]
    SetAside(compare::Divergence, std::io::Error),
    #[error("the subnet's log stopped: {0}; the replica ends, and its restart resumes from its last durable state")]
    Stopped(String),
    /// Told to stop, it drained and left: not a failure.
    #[error("stopped on request, after {:?} of saying so", health::DRAIN)]
    Drained,
}

/// The replica's own peer routes beside the log's `node`: the root comparison and the
/// pieces of its state for members taking it up. `ordered` is attached to `node` first, so
/// a snapshot that arrives through these routes finds the members to fetch from.
pub fn peer_routes(ordered: Arc<Ordered>, node: &Replicated) -> axum::Router {
    ordered.attach(node.clone());
    compare::routes(ordered.clone()).merge(crate::transfer::routes(ordered))
}

/// Where a started replicated replica serves.
pub struct Addresses {
    pub api: SocketAddr,
    pub peers: SocketAddr,
}

/// [`start`] on a runtime of its own, until the replica stops: `started` hears where it
/// serves; the return value says why it stopped (it never stops otherwise).
pub fn run(
    spec: &ReplicaSpec,
    replica: Replica,
    settings: Settings,
    started: impl FnOnce(&Addresses),
) -> SubnetError {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return SubnetError::Runtime(e),
    };
    rt.block_on(async {
        match start(spec, replica, settings, stop_signal()).await {
            Ok((at, stopped)) => {
                started(&at);
                stopped.await
            }
            Err(e) => e,
        }
    })
}

/// SIGTERM (systemd stopping the unit, as a reboot does) or SIGINT; never, if neither can be
/// listened for (the replica then ends as it did before: at once).
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Hex Ed25519 public keys of the membership's peers, by member id.
fn peer_keys(m: &Membership) -> Result<BTreeMap<u64, [u8; 32]>, SubnetError> {
    m.peers
        .iter()
        .map(|p| {
            let key: [u8; 32] = hex::decode(&p.public_key)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| {
                    SubnetError::Spec(format!("peer {}'s key is not 32 bytes of hex", p.id))
                })?;
            Ok((p.id, key))
        })
        .collect()
}

/// The URLs of `ids`, from the membership's peers (an id without one is left out).
fn urls(m: &Membership, ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, String> {
    ids.into_iter()
        .filter_map(|id| {
            m.peers
                .iter()
                .find(|p| p.id == id)
                .map(|p| (id, p.url.clone()))
        })
        .collect()
}

/// The membership file, once it is there and whole (the orchestrator writes it next to the
/// spec; a replica started first waits for it).
async fn first_membership(path: &std::path::Path) -> Membership {
    let mut said = false;
    loop {
        match Membership::read(path) {
            Ok(m) => return m,
            Err(e) if !said => {
                tracing::warn!("waiting for the subnet's membership: {e}");
                said = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Start the replica of `spec` on the current tokio runtime; returns where it serves and a
/// future that ends only with the reason it stopped (a divergence, after setting the state
/// aside; or `stop`, after draining).
pub async fn start(
    spec: &ReplicaSpec,
    replica: Replica,
    settings: Settings,
    stop: impl std::future::Future<Output = ()> + Send,
) -> Result<(Addresses, impl std::future::Future<Output = SubnetError>), SubnetError> {
    let raft = spec
        .raft
        .clone()
        .ok_or_else(|| SubnetError::Spec("missing".into()))?;
    let members = first_membership(&raft.membership).await;
    let keys = peer_keys(&members)?;
    let replica = Arc::new(replica);
    let trusted = keys
        .iter()
        .filter(|(id, _)| members.members.contains(id))
        .map(|(id, k)| (*id, *k))
        .collect();
    let identity = Identity::new(raft.id, replica.config().node_key.clone(), trusted);
    let ordered = Arc::new(Ordered::new(replica.clone()));
    let node = Replicated::start(raft.id, &raft.log, ordered.clone(), identity, settings).await?;
    let own = Own::default();
    let peer_router =
        node.router_with(peer_routes(ordered.clone(), &node).merge(health::routes(own.clone())));
    let (peers, _) = http_guard::spawn(raft.listen, peer_router, http_guard::Limits::default())
        .map_err(|e| SubnetError::Listen(raft.listen, e))?;
    let api_router = crate::http::subnet_router(replica.clone(), node.clone());
    let (api, _) = http_guard::spawn(spec.listen, api_router, http_guard::Limits::default())
        .map_err(|e| SubnetError::Listen(spec.listen, e))?;
    if raft.bootstrap {
        node.initialize(urls(&members, members.members.iter().copied()))
            .await?;
    }
    let folder = spec.state_dir.clone();
    let status_file = folder
        .parent()
        .map(|p| p.join(STATUS_FILE))
        .unwrap_or_else(|| PathBuf::from(STATUS_FILE));
    tokio::spawn(membership(node.clone(), raft.membership.clone(), members));
    let version = spec.guestos_version.clone();
    tokio::spawn(status(
        node.clone(),
        replica.clone(),
        own,
        version,
        status_file,
    ));
    let watched = async move {
        let d = tokio::select! {
            d = compare::watch(ordered, node.clone(), Duration::from_secs(2)) => d,
            why = node.fatal() => return SubnetError::Stopped(why),
            () = stop => return drain(&replica, &node).await,
        };
        node.shutdown().await;
        match compare::set_aside(&folder) {
            Ok(aside) => SubnetError::Diverged(d, aside),
            Err(e) => SubnetError::SetAside(d, e),
        }
    };
    Ok((Addresses { api, peers }, watched))
}

/// Every 2 s: take up the orchestrator's newest membership file (a damaged one is named and
/// the last good one kept), hear the registry's members and the log's (a leaving member is
/// heard until it has left), and ask the leader for the registry's membership when the
/// log's differs.
async fn membership(node: Replicated, path: PathBuf, mut current: Membership) {
    let mut said = String::new();
    let mut say = |now: String| {
        if now != said {
            tracing::info!("{now}");
            said = now;
        }
    };
    loop {
        match Membership::read(&path) {
            Ok(m) => current = m,
            Err(e) => say(format!("keeping the last membership: {e}")),
        }
        let keys = match peer_keys(&current) {
            Ok(k) => k,
            Err(e) => {
                say(format!("keeping the keys heard so far: {e}"));
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let want: std::collections::BTreeSet<u64> = current.members.iter().copied().collect();
        let view = node.view();
        let heard = keys
            .iter()
            .filter(|(id, _)| {
                want.contains(id) || view.voters.contains(id) || view.learners.contains(id)
            })
            .map(|(id, k)| (*id, *k))
            .collect();
        node.trust(heard);
        let voters: std::collections::BTreeSet<u64> = view.voters.iter().copied().collect();
        if view.leader.is_some() && voters != want && want.contains(&node.id()) {
            let asked = node
                .request_members(current.time, urls(&current, want.iter().copied()))
                .await;
            say(match asked {
                Ok(()) => format!("the log's members are now {want:?}"),
                Err(e) => format!("asking for members {want:?}: {e}"),
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Keep answering for [`health::DRAIN`] while saying "stopping", then leave the log.
async fn drain(replica: &Replica, node: &Replicated) -> SubnetError {
    tracing::info!("told to stop: draining for {:?}", health::DRAIN);
    replica.drain();
    tokio::time::sleep(health::DRAIN).await;
    node.shutdown().await;
    SubnetError::Drained
}

/// Every second: `status.json` from the log's view and the replica's serving state; every
/// [`health::ASK_EVERY`], what the other members say of themselves.
async fn status(node: Replicated, replica: Arc<Replica>, own: Own, version: String, file: PathBuf) {
    let id = node.id();
    let mut peers = BTreeMap::new();
    let mut asked = tokio::time::Instant::now() - health::ASK_EVERY;
    loop {
        if asked.elapsed() >= health::ASK_EVERY {
            peers = health::ask_members(&node).await;
            asked = tokio::time::Instant::now();
        }
        let view = node.view();
        // A member taken out never hears of it: ask the others when no leader is heard.
        let role = if view.leader.is_none() && node.let_go().await {
            LogRole::Outside
        } else if view.voters.contains(&id) {
            LogRole::Voter
        } else if view.learners.contains(&id) {
            LogRole::Learner
        } else {
            LogRole::Outside
        };
        let s = ReplicaStatus {
            member_id: id,
            role,
            leader: view.leader,
            term: view.term,
            applied: view.applied,
            voters: view.voters,
            serving: replica.serving(),
            written_at: daemon_support::unix_now(),
            guestos_version: version.clone(),
            peers: peers.clone(),
        };
        own.set(PeerHealth {
            member_id: id,
            role,
            applied: s.applied,
            serving: s.serving.clone(),
            guestos_version: version.clone(),
        });
        let bytes = serde_json::to_vec_pretty(&s).unwrap_or_default();
        if let Err(e) = daemon_support::write_private(&file, &bytes) {
            tracing::warn!("writing {}: {e}", file.display());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
