//! Peers talk over HTTP: `POST /raft/{append,vote,snapshot}` carry openraft's messages,
//! `POST /raft/propose` takes a command forwarded by a node that is not the leader, and
//! `POST /raft/read-index` gives a follower the leader's commit point for a linearizable
//! read. Every request is signed by its sender's node key and checked before anything else
//! ([`crate::auth`]: 401 otherwise). Bodies are CBOR, at most [`MAX_BODY`]; the answer is
//! the callee's `Result`, so a refusal (a stale term, "not the leader") reaches the caller's
//! openraft as the remote's error, not as a broken link.

use crate::auth::Identity;
use crate::{Command, Node, Proposed, TypeConfig};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::Router;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// The least time a peer gets to answer one of the engine's requests: openraft allows a
/// heartbeat's time, which a loaded node (a VM under emulation, a disk syncing) can miss
/// without being gone; a slow answer only delays the next heartbeat.
const MIN_RPC_TTL: Duration = Duration::from_secs(2);

/// The largest message a peer accepts (a batch of ingress messages, a snapshot chunk).
pub const MAX_BODY: usize = 64 << 20;

/// Why a peer could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("{url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("{url}: no answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url}: answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url}: an answer that is not CBOR of the expected shape: {why}")]
    Garbled { url: String, why: String },
}

/// One HTTP client for every peer (connections are kept and reused), signing as this node.
#[derive(Clone)]
pub struct Peers {
    client: Client<HttpConnector, Full<Bytes>>,
    identity: Identity,
}

impl Peers {
    pub fn new(identity: Identity) -> Peers {
        Peers {
            client: Client::builder(TokioExecutor::new()).build_http(),
            identity,
        }
    }

    /// POST `body` as CBOR to `{base}{path}` and decode the CBOR answer, within `ttl`.
    pub async fn post<Q: Serialize, A: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &Q,
        ttl: Duration,
    ) -> Result<A, PeerError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let bytes = serde_cbor::to_vec(body).map_err(|e| PeerError::Garbled {
            url: url.clone(),
            why: e.to_string(),
        })?;
        let mut req = hyper::Request::post(&url).header("content-type", "application/cbor");
        for (name, value) in self.identity.sign(path, &bytes) {
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| PeerError::Unreachable {
                url: url.clone(),
                why: e.to_string(),
            })?;
        let ask = async {
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| PeerError::Unreachable {
                    url: url.clone(),
                    why: e.to_string(),
                })?;
            let status = res.status();
            let body = http_body_util::Limited::new(res.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| PeerError::Unreachable {
                    url: url.clone(),
                    why: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(PeerError::Status {
                    url: url.clone(),
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
                });
            }
            serde_cbor::from_slice(&body).map_err(|e| PeerError::Garbled {
                url: url.clone(),
                why: e.to_string(),
            })
        };
        tokio::time::timeout(ttl, ask)
            .await
            .map_err(|_| PeerError::Timeout {
                url: url.clone(),
                after: ttl,
            })?
    }
}

/// openraft's factory: one [`Link`] per peer.
#[derive(Clone)]
pub struct Network {
    pub peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: u64, node: &Node) -> Link {
        Link {
            peers: self.peers.clone(),
            target,
            base: node.addr.clone(),
        }
    }
}

/// The way to one peer.
pub struct Link {
    peers: Peers,
    target: u64,
    base: String,
}

impl Link {
    async fn call<Q: Serialize, A: DeserializeOwned, E>(
        &self,
        path: &str,
        body: &Q,
        option: &RPCOption,
    ) -> Result<A, RPCError<u64, Node, RaftError<u64, E>>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<A, RaftError<u64, E>> = self
            .peers
            .post(&self.base, path, body, option.hard_ttl().max(MIN_RPC_TTL))
            .await
            .map_err(|e| match e {
                PeerError::Unreachable { .. } | PeerError::Timeout { .. } => {
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Node, RaftError<u64>>> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Node, RaftError<u64, InstallSnapshotError>>,
    > {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Node, RaftError<u64>>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}

type Raft_ = Raft<TypeConfig>;

/// Decode a CBOR request or answer 400 naming what was wrong.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, (hyper::StatusCode, String)> {
    serde_cbor::from_slice(body).map_err(|e| {
        (
            hyper::StatusCode::BAD_REQUEST,
            format!("not a CBOR message of the expected kind: {e}"),
        )
    })
}

fn cbor<T: Serialize>(v: &T) -> Result<Vec<u8>, (hyper::StatusCode, String)> {
    serde_cbor::to_vec(v).map_err(|e| (hyper::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

type Answer = Result<Vec<u8>, (hyper::StatusCode, String)>;

async fn append(State(raft): State<Raft_>, body: Bytes) -> Answer {
    let rpc: AppendEntriesRequest<TypeConfig> = decode(&body)?;
    cbor(&raft.append_entries(rpc).await)
}

async fn vote(State(raft): State<Raft_>, body: Bytes) -> Answer {
    let rpc: VoteRequest<u64> = decode(&body)?;
    cbor(&raft.vote(rpc).await)
}

async fn snapshot(State(raft): State<Raft_>, body: Bytes) -> Answer {
    let rpc: InstallSnapshotRequest<TypeConfig> = decode(&body)?;
    cbor(&raft.install_snapshot(rpc).await)
}

/// A command forwarded by a follower: written here if this node leads, else the caller
/// learns who does.
async fn propose(State(raft): State<Raft_>, body: Bytes) -> Answer {
    let command: Command = decode(&body)?;
    let r: Result<Proposed, RaftError<u64, ClientWriteError<u64, Node>>> =
        raft.client_write(command).await.map(|w| Proposed {
            index: w.log_id.index,
            answer: w.data.0,
        });
    cbor(&r)
}

/// The leader's commit point, once it has confirmed it still leads: a follower that has
/// applied up to it answers reads as of now.
async fn read_index(State(raft): State<Raft_>, body: Bytes) -> Answer {
    let () = decode(&body)?;
    let r = raft
        .get_read_log_id()
        .await
        .map(|(read, _)| read.map(|l| l.index).unwrap_or(0));
    cbor(&r)
}

/// Refuse (401, with the reason) any request not signed by a trusted member.
async fn authenticate(
    State(identity): State<Identity>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return (hyper::StatusCode::PAYLOAD_TOO_LARGE, e.to_string()).into_response();
        }
    };
    if let Err(e) = identity.check(parts.uri.path(), &parts.headers, &body) {
        tracing::warn!(path = parts.uri.path(), "peer request refused: {e}");
        return (hyper::StatusCode::UNAUTHORIZED, e.to_string()).into_response();
    }
    next.run(axum::extract::Request::from_parts(parts, body.into()))
        .await
}

/// The peer-facing routes of a node (the engine's and the application's `extra`), open only
/// to the members `identity` trusts.
pub fn router(raft: Raft_, identity: Identity, extra: Router) -> Router {
    let engine: Router = Router::new()
        .route("/raft/append", post(append))
        .route("/raft/vote", post(vote))
        .route("/raft/snapshot", post(snapshot))
        .route("/raft/propose", post(propose))
        .route("/raft/read-index", post(read_index))
        .with_state(raft);
    engine
        .merge(extra)
        .layer(axum::middleware::from_fn_with_state(identity, authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}
