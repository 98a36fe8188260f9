//! A subnet's nodes agree on one order of commands with [openraft] (Raft: crash faults, a
//! majority of the members must be up and connected to make progress; it does not tolerate
//! a lying member, which the subnet's threshold certification will bound later).
//!
//! * [`log_store`]: the log and the vote in redb, each write durable before it is
//!   acknowledged;
//! * [`state_machine`]: committed commands go to the application's [`StateMachine`] one at a
//!   time, with the [`state_machine::Position`] it stores in the same write as its state;
//! * [`auth`]: peers prove who they are with their node keys; only trusted members are heard;
//! * [`network`]: peers over HTTP with CBOR bodies; a command sent to a follower is forwarded
//!   to the leader, and a follower answers linearizable reads after asking the leader for its
//!   commit point ([`Replicated::read_barrier`]).
//!
//! This crate knows nothing of canisters: the replica plugs its batch execution in as the
//! [`StateMachine`], so the same engine orders anything deterministic.
//!
//! ```no_run
//! # async fn example(app: std::sync::Arc<dyn replication::StateMachine>) -> Result<(), Box<dyn std::error::Error>> {
//! use replication::{auth::Identity, Replicated, Settings};
//! // The node's key, and the other members' public keys from the subnet's record.
//! let identity = Identity::new(1, ed25519_dalek::SigningKey::from_bytes(&[7; 32]), [].into());
//! let node = Replicated::start(1, "/var/lib/node/raft.redb".as_ref(), app, identity, Settings::default()).await?;
//! // Serve `node.router()` on the address the other members know this node by, then, on one
//! // node only, once: node.initialize([(1, "http://[::1]:4100".to_string())].into()).await?;
//! let answer = node.propose(b"command".to_vec()).await?;
//! # Ok(()) }
//! ```

// openraft's storage and RPC errors are large by design and its traits return them; boxing
// each at our stages would only add allocations on the error path.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod testing;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A command as the application encoded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// The index of the last entry applied at `position` (a position the application stored),
/// if it parses and holds one.
pub fn applied_index_of(position: &[u8]) -> Option<u64> {
    state_machine::Position::from_bytes(position)
        .ok()?
        .last_applied
        .map(|l| l.index)
}

/// The voters (id → peer URL) in force at a position the application stored (empty when
/// it is not one): whom a member taking up a snapshot can ask, before its own view knows.
pub fn members_of(position: &[u8]) -> BTreeMap<u64, String> {
    let Ok(p) = state_machine::Position::from_bytes(position) else {
        return BTreeMap::new();
    };
    let m = p.membership.membership();
    let voters: std::collections::BTreeSet<u64> = m.voter_ids().collect();
    m.nodes()
        .filter(|(id, _)| voters.contains(id))
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect()
}

/// A command ordered and applied: its entry's index and the application's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    pub index: u64,
    #[serde(with = "serde_bytes")]
    pub answer: Vec<u8>,
}

/// What the application answered for a command, as it encoded it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(#[serde(with = "serde_bytes")] pub Vec<u8>);

openraft::declare_raft_types!(
    /// The types this crate runs openraft with: node ids are `u64`, nodes are known by the
    /// base URL of their peer routes.
    pub TypeConfig:
        D = Command,
        R = Applied,
);

pub type Node = openraft::BasicNode;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, Node>;

/// An application error, as the application describes it.
pub type AppError = Box<dyn std::error::Error + Send + Sync>;

/// The deterministic application the log drives. Every node applies the same commands in the
/// same order; the application must reach the same state from them on every node.
pub trait StateMachine: Send + Sync + 'static {
    /// Apply `command` (`None`: an entry with none, a new leader's or a membership change)
    /// and keep `position` with the resulting state, durably, in one write: after a crash the
    /// state and the position it reports belong together.
    fn apply(&self, command: Option<&[u8]>, position: &[u8]) -> Result<Vec<u8>, AppError>;
    /// The position last stored (`None`: nothing applied yet).
    fn position(&self) -> Option<Vec<u8>>;
    /// The whole state and its position (`None`: nothing applied yet), for a node that lacks
    /// the log behind it.
    fn snapshot(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), AppError>;
    /// Replace the whole state by one taken with [`StateMachine::snapshot`].
    fn restore(&self, state: &[u8], position: &[u8]) -> Result<(), AppError>;
}

/// How long the leader waits for a member to take up a snapshot.
pub const TAKE_UP_TIMEOUT: Duration = Duration::from_secs(600);

/// Timing of the protocol.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The leader's heartbeat; followers start an election after 3 to 6 of them are missed.
    pub heartbeat: Duration,
    /// How long a proposal or a read waits for the subnet before it is refused.
    pub request_timeout: Duration,
    /// Entries between snapshots: after each, the log behind the snapshot is purged but
    /// for [`Settings::keep_behind`] entries, and a member that lacks what was purged takes
    /// up the snapshot instead ([`StateMachine::restore`]).
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot, for members a little behind to catch up from the log.
    pub keep_behind: u64,
}

impl Default for Settings {
    fn default() -> Self {
        // A second between heartbeats (an election after 3 to 6 missed): the rate the IC's
        // subnets make blocks at, and slack enough for nodes that are VMs under emulation.
        // A member down for more than a few thousand calls takes up the state rather than
        // replay every entry (and the log does not grow without end).
        Settings {
            heartbeat: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            snapshot_every: 5000,
            keep_behind: 1000,
        }
    }
}

/// Why a node could not start or a request was not done.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("opening the raft log {path}: {source}")]
    OpenLog {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("the raft settings: {0}")]
    Settings(#[source] Box<openraft::ConfigError>),
    #[error("the raft engine stopped: {0}")]
    Fatal(#[source] Box<openraft::error::Fatal<u64>>),
    #[error("initializing the subnet: {0}")]
    Initialize(String),
    #[error("changing the subnet's members: {0}")]
    Membership(String),
    /// No leader is known or the leader could not be reached: nothing was written, or it is
    /// unknown whether it was (the command may be sent again only if it is idempotent).
    #[error("the subnet has no reachable leader now: {0}")]
    NoLeader(String),
    /// No leader is elected yet: nothing was written.
    #[error("the subnet has no leader yet (an election is under way or no majority is up)")]
    Electing,
    #[error("the command was not committed: {0}")]
    NotCommitted(String),
    #[error("no answer from the subnet within {0:?}")]
    Timeout(Duration),
}

/// One member of a replicated group.
#[derive(Clone)]
pub struct Replicated {
    id: u64,
    raft: openraft::Raft<TypeConfig>,
    peers: network::Peers,
    identity: auth::Identity,
    settings: Settings,
    /// The newest membership time a change was made for while this node led: an older
    /// request (a member whose registry view lags) is refused.
    membership_time: Arc<std::sync::atomic::AtomicU64>,
}

/// The group as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub leader: Option<u64>,
    pub term: u64,
    pub applied: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The index of the last snapshot this node built or took up.
    #[serde(default)]
    pub snapshot: Option<u64>,
    /// The index up to which this node's log is purged.
    #[serde(default)]
    pub purged: Option<u64>,
}

/// A membership change a member asks the leader for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MembersRequest {
    time: u64,
    members: BTreeMap<u64, String>,
}

/// How long a proposal that found no leader waits before it asks again.
const NO_LEADER_PAUSE: Duration = Duration::from_millis(100);

type WriteError = openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, Node>>;

impl Replicated {
    /// Open this node's log in `log_path` and start its engine over `app` (which resumes
    /// from the position it reports).
    pub async fn start(
        id: u64,
        log_path: &Path,
        app: Arc<dyn StateMachine>,
        identity: auth::Identity,
        settings: Settings,
    ) -> Result<Replicated, ReplicationError> {
        let log =
            log_store::LogStore::open(log_path).map_err(|source| ReplicationError::OpenLog {
                path: log_path.display().to_string(),
                source,
            })?;
        let beat = settings.heartbeat.as_millis().max(10) as u64;
        let config = openraft::Config {
            cluster_name: "icos-subnet".into(),
            heartbeat_interval: beat,
            election_timeout_min: beat * 3,
            election_timeout_max: beat * 6,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                settings.snapshot_every.max(1),
            ),
            max_in_snapshot_log_to_keep: settings.keep_behind,
            // A member answers a snapshot's last chunk once it has taken the state up
            // (fetched the pieces it lacks, rebuilt and confirmed it): minutes for a large
            // state, not openraft's 200 ms, or the leader sends it again and again meanwhile.
            install_snapshot_timeout: TAKE_UP_TIMEOUT.as_millis() as u64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ReplicationError::Settings(Box::new(e)))?;
        let network = network::Network {
            peers: network::Peers::new(identity.clone()),
        };
        let peers = network.peers.clone();
        let raft = openraft::Raft::new(
            id,
            Arc::new(config),
            network,
            log,
            state_machine::Machine::new(app),
        )
        .await
        .map_err(|e| ReplicationError::Fatal(Box::new(e)))?;
        Ok(Replicated {
            id,
            raft,
            peers,
            identity,
            settings,
            membership_time: Arc::default(),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The routes the other members call (serve them at the URL they know this node by).
    pub fn router(&self) -> axum::Router {
        self.router_with(axum::Router::new())
    }

    /// [`Replicated::router`] with the application's own peer routes (`extra`), which only
    /// trusted members reach, as the engine's own.
    pub fn router_with(&self, extra: axum::Router) -> axum::Router {
        let me = self.clone();
        let members = axum::Router::new().route(
            "/raft/members",
            axum::routing::post(move |body: axum::body::Bytes| async move {
                let answer = match serde_cbor::from_slice::<MembersRequest>(&body) {
                    Ok(r) => me
                        .change_members(r.time, r.members)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(format!("not a membership request: {e}")),
                };
                serde_cbor::to_vec(&answer).unwrap_or_default()
            }),
        );
        let me = self.clone();
        let view = axum::Router::new().route(
            "/raft/view",
            axum::routing::post(move || async move {
                serde_cbor::to_vec(&me.view()).unwrap_or_default()
            }),
        );
        network::router(
            self.raft.clone(),
            self.identity.clone(),
            extra.merge(members).merge(view),
        )
    }

    /// Whether the group has let this node go. A member taken out never hears of the final
    /// change (the leader stops sending to it), so its own view still counts it: it asks
    /// the others, and is out when it hears from no leader and every member that answers
    /// either no longer hears it (401) or counts it out. A node that reaches nobody is not
    /// out (it may be cut off, not removed).
    pub async fn let_go(&self) -> bool {
        let view = self.view();
        if !view.voters.contains(&self.id) && !view.learners.contains(&self.id) {
            return true;
        }
        if view.leader.is_some() {
            return false;
        }
        let mut answered = 0;
        for (id, url) in self.members() {
            if id == self.id {
                continue;
            }
            match self.ask::<(), View>(&url, "/raft/view", &()).await {
                Ok(v) if v.voters.contains(&self.id) || v.learners.contains(&self.id) => {
                    return false
                }
                Ok(_) | Err(network::PeerError::Status { status: 401, .. }) => answered += 1,
                Err(e) => tracing::debug!(member = id, "no view from it: {e}"),
            }
        }
        answered > 0
    }

    /// The group as this node sees it now.
    pub fn view(&self) -> View {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let learners = membership
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| !voters.contains(id))
            .collect();
        View {
            leader: m.current_leader,
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            voters,
            learners,
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
        }
    }

    /// Wait until the engine stops for good (a storage error: the application refused a
    /// command or a state); the reason. The node's supervisor then ends the process, and
    /// its restart resumes from what is durable.
    pub async fn fatal(&self) -> String {
        let mut rx = self.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow().running_state {
                return e.to_string();
            }
            if rx.changed().await.is_err() {
                return "the raft engine ended".into();
            }
        }
    }

    /// Ask the leader to make `members` (id → peer URL) the group, as a registry of `time`
    /// has it. A leader that made a change for a newer time refuses: the asker's view lags.
    pub async fn request_members(
        &self,
        time: u64,
        members: BTreeMap<u64, String>,
    ) -> Result<(), ReplicationError> {
        let leader = self.leader().ok_or(ReplicationError::Electing)?;
        if leader == self.id {
            return self.change_members(time, members).await;
        }
        let url = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| ReplicationError::NoLeader(format!("leader {leader} has no address")))?;
        let answer: Result<(), String> = self
            .ask(&url, "/raft/members", &MembersRequest { time, members })
            .await
            .map_err(|e| ReplicationError::NoLeader(e.to_string()))?;
        answer.map_err(ReplicationError::Membership)
    }

    /// On the leader: [`Replicated::set_members`] unless a newer time's change was made.
    async fn change_members(
        &self,
        time: u64,
        members: BTreeMap<u64, String>,
    ) -> Result<(), ReplicationError> {
        use std::sync::atomic::Ordering;
        let newest = self.membership_time.fetch_max(time, Ordering::SeqCst);
        if time < newest {
            return Err(ReplicationError::Membership(format!(
                "a membership of registry time {newest} is newer than the one asked for ({time})"
            )));
        }
        self.set_members(members).await
    }

    /// The members (id → peer URL) of the group as this node knows it.
    pub fn members(&self) -> BTreeMap<u64, String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: std::collections::BTreeSet<u64> = m.membership().voter_ids().collect();
        m.membership()
            .nodes()
            .filter(|(id, _)| voters.contains(id))
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// Ask member `url` on the application's peer route `path` (signed by this node, as the
    /// engine's own requests).
    pub async fn ask<Q: Serialize, A: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        body: &Q,
    ) -> Result<A, network::PeerError> {
        self.peers
            .post(url, path, body, self.settings.request_timeout)
            .await
    }

    /// Hear exactly `members` (id → Ed25519 public key, from the subnet's record) from now on.
    pub fn trust(&self, members: BTreeMap<u64, [u8; 32]>) {
        self.identity.trust(members);
    }

    /// The current term (how many elections this node has seen).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Start a new group with `members` (id → peer URL). Run once, on one node; doing it
    /// again with the same members is harmless.
    pub async fn initialize(&self, members: BTreeMap<u64, String>) -> Result<(), ReplicationError> {
        let nodes: BTreeMap<u64, Node> = members
            .into_iter()
            .map(|(id, addr)| (id, Node { addr }))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(e) => Err(ReplicationError::Initialize(e.to_string())),
        }
    }

    /// Order `command` and apply it everywhere: the application's answer from this subnet's
    /// state once a majority holds the command, and the index of its entry (this node has
    /// applied it once [`Replicated::wait_applied`] returns). Sent to a follower, it goes to
    /// the leader.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Proposed, ReplicationError> {
        // An election takes a few heartbeats: a command that finds no leader waits for one,
        // within the request timeout, rather than fail at once.
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        loop {
            match self.propose_once(command.clone()).await {
                Err(ReplicationError::Electing)
                    if tokio::time::Instant::now() + NO_LEADER_PAUSE < deadline =>
                {
                    tracing::debug!("no leader yet; again");
                    tokio::time::sleep(NO_LEADER_PAUSE).await;
                }
                other => return other,
            }
        }
    }

    async fn propose_once(&self, command: Vec<u8>) -> Result<Proposed, ReplicationError> {
        let command = Command(command);
        let local = tokio::time::timeout(
            self.settings.request_timeout,
            self.raft.client_write(command.clone()),
        )
        .await
        .map_err(|_| ReplicationError::Timeout(self.settings.request_timeout))?;
        let leader = match local {
            Ok(w) => {
                return Ok(Proposed {
                    index: w.log_id.index,
                    answer: w.data.0,
                })
            }
            Err(e) => forward_target(&e)?,
        };
        let remote: Result<Proposed, WriteError> = self
            .peers
            .post(
                &leader.addr,
                "/raft/propose",
                &command,
                self.settings.request_timeout,
            )
            .await
            .map_err(|e| ReplicationError::NoLeader(e.to_string()))?;
        match remote {
            Ok(p) => Ok(p),
            Err(e) => {
                // The leader moved on meanwhile, nothing was written: ask again.
                forward_target(&e)?;
                Err(ReplicationError::Electing)
            }
        }
    }

    /// Wait until this node has applied the entry at `index` (a command proposed anywhere
    /// is then part of this node's state).
    pub async fn wait_applied(&self, index: u64) -> Result<(), ReplicationError> {
        let t = self.settings.request_timeout;
        self.raft
            .wait(Some(t))
            .applied_index_at_least(Some(index), "a proposed entry")
            .await
            .map_err(|_| ReplicationError::Timeout(t))?;
        Ok(())
    }

    /// Wait until this node's state holds every command committed before the call: a read
    /// after it sees them all (the leader's read index, then local apply).
    pub async fn read_barrier(&self) -> Result<(), ReplicationError> {
        let t = self.settings.request_timeout;
        let index = match self.raft.get_read_log_id().await {
            Ok((read, _)) => read.map(|l| l.index).unwrap_or(0),
            Err(e) => {
                let Some(leader) = e.forward_to_leader().and_then(|f| f.leader_node.clone()) else {
                    return Err(ReplicationError::NoLeader(e.to_string()));
                };
                let remote: Result<
                    u64,
                    openraft::error::RaftError<u64, openraft::error::CheckIsLeaderError<u64, Node>>,
                > = self
                    .peers
                    .post(&leader.addr, "/raft/read-index", &(), t)
                    .await
                    .map_err(|e| ReplicationError::NoLeader(e.to_string()))?;
                remote.map_err(|e| ReplicationError::NoLeader(e.to_string()))?
            }
        };
        self.wait_applied(index).await
    }

    /// Make `members` (id → peer URL) the group: new ones join as learners, catch up, then
    /// vote; missing ones leave. Run on the leader.
    pub async fn set_members(
        &self,
        members: BTreeMap<u64, String>,
    ) -> Result<(), ReplicationError> {
        let err = |e: &dyn std::fmt::Display| ReplicationError::Membership(e.to_string());
        let known = self.raft.metrics().borrow().membership_config.clone();
        for (id, addr) in &members {
            if known.membership().get_node(id).is_none() {
                self.raft
                    .add_learner(*id, Node { addr: addr.clone() }, true)
                    .await
                    .map_err(|e| err(&e))?;
            }
        }
        let voters: std::collections::BTreeSet<u64> = members.keys().copied().collect();
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| err(&e))?;
        Ok(())
    }

    /// The leader this node knows of, if any.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// The index of the last entry this node applied.
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// Stop the engine (the log and the application's state stay as they are).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node = self.id, "stopping the raft engine: {e}");
        }
    }
}

/// The leader a refused write should go to, or why there is none.
fn forward_target(e: &WriteError) -> Result<Node, ReplicationError> {
    match e.forward_to_leader::<Node>() {
        Some(f) => f.leader_node.clone().ok_or(ReplicationError::Electing),
        None => Err(ReplicationError::NotCommitted(e.to_string())),
    }
}
