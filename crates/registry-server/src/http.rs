//! The HTTP API. Read paths under `/v1/` are the same ones a static mirror serves
//! (`head.json`, `segments/<k>.json`); write paths take signed JSON bodies of at most
//! 64 KiB and answer 4xx with `{"error": "..."}` naming what was wrong, storing nothing.
//! Every error, including unknown paths, wrong methods and malformed parameters, is
//! answered the same way. Connections are served by `http-guard` (connection caps,
//! header/idle/lifetime timeouts); each request must finish within [`REQUEST_TIMEOUT`]
//! (body included); at most [`crate::MAX_REPLAYS`] historical snapshots are computed at once.
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

pub use http_guard::Limits;

type Shared = Arc<Registry>;

/// How long one request may take, from its head to its answer (a trickled body included).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        let mut r = error_json(status, &self.to_string());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        }
        r
    }
}

fn error_json(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// Errors produced outside our handlers (axum's rejections of a path or query it cannot
/// parse, a wrong method) come as plain text: answer them as JSON like every other error.
async fn errors_as_json(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text.trim().to_string()
    };
    let mut r = error_json(status, &message);
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            r.headers_mut().insert(k.clone(), v.clone());
        }
    }
    r
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error_json(
        StatusCode::NOT_FOUND,
        &format!("no such path: {}", uri.path()),
    )
}

async fn with_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error_json(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the request did not complete within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
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

async fn head(State(r): State<Shared>) -> Result<Response, ServerError> {
    Ok(json(
        StatusCode::OK,
        &blocking(move || r.freshness()).await?,
    ))
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

fn proposal_id(id: &str) -> Result<u64, ServerError> {
    id.parse()
        .map_err(|_| ServerError::BadRequest(format!("proposal id `{id}` is not a number")))
}

async fn proposal(
    State(r): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, ServerError> {
    let id = proposal_id(&id)?;
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
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ServerError> {
    let id = proposal_id(&id)?;
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
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::from_fn(with_timeout))
        .layer(axum::middleware::map_response(errors_as_json))
        .with_state(registry)
}

/// Serve until the process is stopped, under `limits`.
pub async fn serve(
    registry: Arc<Registry>,
    listen: std::net::SocketAddr,
    limits: http_guard::Limits,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "registry listening");
    http_guard::serve(
        listener,
        router(registry),
        limits,
        Arc::new(http_guard::Stats::default()),
    )
    .await
}

/// Serve on a background thread with its own runtime (tests, benchmarks, embedding), with
/// the default limits. Returns the bound address; the server runs until the process ends.
pub fn spawn(
    registry: Arc<Registry>,
    listen: std::net::SocketAddr,
) -> std::io::Result<std::net::SocketAddr> {
    spawn_with(registry, listen, http_guard::Limits::default()).map(|(a, _)| a)
}

/// [`spawn`] with chosen limits; also returns the connection counters.
pub fn spawn_with(
    registry: Arc<Registry>,
    listen: std::net::SocketAddr,
    limits: http_guard::Limits,
) -> std::io::Result<(std::net::SocketAddr, Arc<http_guard::Stats>)> {
    http_guard::spawn(listen, router(registry), limits)
}
