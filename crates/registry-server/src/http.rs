//! The HTTP API. Read paths under `/v1/` are the same ones a static mirror serves
//! (`head.json`, `segments/<k>.json`); write paths take signed JSON bodies of at most
//! 64 KiB and answer 4xx with `{"error": "..."}` naming what was wrong, storing nothing.
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | GET | `/v1/head.json` | signed freshness statement |
//! | GET | `/v1/segments/<k>.json` | changes `k*64+1 ..= k*64+64` |
//! | GET | `/v1/changes?since=N&limit=L` | changes after N |
//! | GET | `/v1/snapshot?at=N` | the registry at version N |
//! | GET | `/v1/proposals`, `/v1/proposals/<id>` | proposal summaries / one record |
//! | POST | `/v1/proposals` | `SignedProposal` → the new record |
//! | POST | `/v1/proposals/<id>/votes` | `SignedVote` → the updated record |
//! | POST | `/v1/registrations` | `SignedRegistration` → `{node_id, version}` |

use crate::{Registry, ServerError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use registry_model::change::MAX_BODY_BYTES;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;

type Shared = Arc<Registry>;

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": self.to_string() }).to_string(),
        )
            .into_response()
    }
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    json_bytes(status, serde_json::to_vec(v).expect("serializes"))
}

fn parse<T: DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ServerError> {
    serde_json::from_slice(body)
        .map_err(|e| ServerError::BadRequest(format!("malformed {what}: {e}")))
}

/// Run blocking registry work (redb commits fsync) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Storage(format!("worker failed: {e}")))?
}

async fn head(State(r): State<Shared>) -> Response {
    json(StatusCode::OK, &r.freshness())
}

async fn segment(
    State(r): State<Shared>,
    Path(file): Path<String>,
) -> Result<Response, ServerError> {
    let k: u64 = file
        .strip_suffix(".json")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ServerError::NotFound(format!("segment `{file}`")))?;
    let bytes = blocking(move || r.segment_json(k)).await?;
    Ok(json_bytes(StatusCode::OK, bytes))
}

async fn changes(
    State(r): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ServerError> {
    let num = |k: &str, d: u64| -> Result<u64, ServerError> {
        q.get(k)
            .map(|v| {
                v.parse()
                    .map_err(|_| ServerError::BadRequest(format!("`{k}` must be a number")))
            })
            .unwrap_or(Ok(d))
    };
    let (since, limit) = (num("since", 0)?, num("limit", 1024)?);
    let bytes = blocking(move || r.changes_json(since, limit)).await?;
    Ok(json_bytes(StatusCode::OK, bytes))
}

async fn snapshot(
    State(r): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ServerError> {
    let at = match q.get("at") {
        Some(v) => v
            .parse()
            .map_err(|_| ServerError::BadRequest("`at` must be a number".into()))?,
        None => r.head().0,
    };
    let reg = blocking(move || r.snapshot(at)).await?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "version": at, "registry": reg }),
    ))
}

async fn proposals(State(r): State<Shared>) -> Result<Response, ServerError> {
    Ok(json(
        StatusCode::OK,
        &blocking(move || r.proposals()).await?,
    ))
}

async fn proposal(State(r): State<Shared>, Path(id): Path<u64>) -> Result<Response, ServerError> {
    Ok(json(
        StatusCode::OK,
        &blocking(move || r.proposal(id)).await?,
    ))
}

async fn submit(State(r): State<Shared>, body: Bytes) -> Result<Response, ServerError> {
    let p = parse(&body, "proposal")?;
    Ok(json(
        StatusCode::CREATED,
        &blocking(move || r.submit_proposal(p)).await?,
    ))
}

async fn vote(
    State(r): State<Shared>,
    Path(id): Path<u64>,
    body: Bytes,
) -> Result<Response, ServerError> {
    let v = parse(&body, "vote")?;
    Ok(json(
        StatusCode::OK,
        &blocking(move || r.vote(id, v)).await?,
    ))
}

async fn register(State(r): State<Shared>, body: Bytes) -> Result<Response, ServerError> {
    let req = parse(&body, "registration")?;
    let (node_id, version) = blocking(move || r.register(req)).await?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({ "node_id": node_id, "version": version }),
    ))
}

/// How much of an oversized body is read (and dropped) before answering 413. A client
/// that writes its whole body before reading (most do) would otherwise get a broken pipe
/// instead of the answer; beyond this the connection is simply closed.
const DRAIN_BYTES: u64 = 1 << 20;

/// Refuse a declared body over [`MAX_BODY_BYTES`] with a 413 that names the limit.
/// Bodies without a length are still cut by `DefaultBodyLimit`.
async fn refuse_oversized(req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY_BYTES as u64 => {
            if n <= DRAIN_BYTES {
                let drain = axum::body::to_bytes(req.into_body(), DRAIN_BYTES as usize);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
            }
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({
                    "error": format!("body of {n} bytes is over the limit of {MAX_BODY_BYTES} bytes")
                })
                .to_string(),
            )
                .into_response()
        }
        _ => next.run(req).await,
    }
}

pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/v1/head.json", get(head))
        .route("/v1/segments/{file}", get(segment))
        .route("/v1/changes", get(changes))
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/proposals", get(proposals).post(submit))
        .route("/v1/proposals/{id}", get(proposal))
        .route("/v1/proposals/{id}/votes", post(vote))
        .route("/v1/registrations", post(register))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .with_state(registry)
}

/// Serve until the process is stopped.
pub async fn serve(registry: Arc<Registry>, listen: std::net::SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "registry listening");
    axum::serve(listener, router(registry)).await
}

/// Serve on a background thread with its own runtime (tests, benchmarks, embedding).
/// Returns the bound address; the server runs until the process ends.
pub fn spawn(
    registry: Arc<Registry>,
    listen: std::net::SocketAddr,
) -> std::io::Result<std::net::SocketAddr> {
    let std_listener = std::net::TcpListener::bind(listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            let _ = axum::serve(listener, router(registry)).await;
        });
    });
    Ok(addr)
}
