//! The HTTP side: the IC's API paths, answered by forwarding to a node of the right subnet.
//!
//! Order of checks for every request, cheapest first: the client's rate limit, the path,
//! the route (canister or subnet known to the registry), the body (size and time), the
//! envelope (CBOR of the kind the path names), the subnet's rate limit, the cache
//! (anonymous queries), then the node. Every refusal is an [`ApiError`]: a status, a cause in
//! `x-ic-error-cause` and the same cause with details in the body.

use crate::cache::{Cached, QueryCache};
use crate::health::choose;
use crate::limits::Limited;
use crate::routes::{NodeRoute, SubnetRoute, Table};
use crate::Boundary;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited as LimitedBody};
use ic_principal::Principal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The header that names why a request was not answered by a node.
pub const ERROR_CAUSE: &str = "x-ic-error-cause";
/// Which node answered, and of which subnet.
pub const NODE_ID: &str = "x-ic-node-id";
pub const SUBNET_ID: &str = "x-ic-subnet-id";
/// `HIT`, `MISS` or `BYPASS` for queries.
pub const CACHE_STATUS: &str = "x-ic-cache-status";

/// A request the boundary answers itself, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// A stable, machine-readable name (`no_healthy_nodes`, `rate_limited_client`, ...).
    pub cause: &'static str,
    pub details: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, cause: &'static str, details: impl Into<String>) -> ApiError {
        ApiError {
            status,
            cause,
            details: details.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            format!("error: {}\ndetails: {}\n", self.cause, self.details),
        )
            .into_response();
        r.headers_mut()
            .insert(ERROR_CAUSE, HeaderValue::from_static(self.cause));
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits that long gets a token.
            let secs = wait.as_millis().div_ceil(1000).max(1);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
        }
        r
    }
}

impl From<Limited> for ApiError {
    fn from(l: Limited) -> ApiError {
        let (cause, wait, who) = match l {
            Limited::Client(w) => ("rate_limited_client", w, "this client"),
            Limited::Subnet(w) => ("rate_limited_subnet", w, "this subnet"),
        };
        ApiError {
            retry_after: Some(wait),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                cause,
                format!(
                    "too many requests for {who}; retry after {} ms",
                    wait.as_millis()
                ),
            )
        }
    }
}

/// Marks a request the boundary's own HTTP gateway sends (in process): the gateway has
/// applied the browser's client limit already.
#[derive(Debug, Clone, Copy)]
pub struct Internal;

/// The three kinds of API request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Call,
    Query,
    ReadState,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "call" => Kind::Call,
            "query" => Kind::Query,
            "read_state" => Kind::ReadState,
            _ => return None,
        })
    }

    /// The envelope's `request_type` for this path.
    fn request_type(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Query => "query",
            Kind::ReadState => "read_state",
        }
    }

    /// Whether sending it twice is harmless (a call may execute once per send).
    pub fn idempotent(self) -> bool {
        self != Kind::Call
    }

    /// Which API versions serve this kind (the interface: v4 is calls only).
    fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::Call => &["v2", "v3", "v4"],
            Kind::Query | Kind::ReadState => &["v2", "v3"],
        }
    }
}

/// The router of the API paths.
pub fn router(b: Arc<Boundary>) -> Router {
    Router::new()
        .route("/api/v2/status", get(status))
        .route("/api/{version}/canister/{id}/{kind}", post(canister))
        .route("/api/{version}/subnet/{id}/read_state", post(subnet))
        .route("/boundary/status", get(boundary_status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(b)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{method} {} is not an IC API path", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}

/// `/api/v2/status`, answered by the boundary itself with the network's root key.
async fn status(State(b): State<Arc<Boundary>>) -> Response {
    use serde_cbor::Value;
    let table = b.table();
    let t = |s: &str| Value::Text(s.to_string());
    let mut m = std::collections::BTreeMap::new();
    m.insert(t("ic_api_version"), t("0.18.0"));
    m.insert(
        t("impl_version"),
        t(concat!("icos-boundary ", env!("CARGO_PKG_VERSION"))),
    );
    let healthy = table.version > 0 && table.root_key.is_some();
    m.insert(
        t("replica_health_status"),
        t(if healthy { "healthy" } else { "starting" }),
    );
    if let Some(k) = &table.root_key {
        m.insert(t("root_key"), Value::Bytes(k.clone()));
    }
    let body = certified_state::to_cbor(&Value::Map(m)).expect("a CBOR map encodes");
    ([(header::CONTENT_TYPE, "application/cbor")], body).into_response()
}

async fn boundary_status(State(b): State<Arc<Boundary>>) -> Response {
    axum::Json(b.status()).into_response()
}

fn principal(what: &'static str, text: &str) -> Result<Principal, ApiError> {
    Principal::from_text(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_request",
            format!("`{text}` is not a {what} id: {e}"),
        )
    })
}

async fn canister(
    State(b): State<Arc<Boundary>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    internal: Option<Extension<Internal>>,
    uri: axum::http::Uri,
    Path((version, id, kind)): Path<(String, String, String)>,
    body: Body,
) -> Response {
    let path = format!("/api/{version}/canister/{id}/{kind}");
    let kind = match Kind::parse(&kind) {
        Some(k) if k.versions().contains(&version.as_str()) => k,
        _ => return not_found(Method::POST, uri).await.into_response(),
    };
    let route = |t: &Table| -> Result<Arc<SubnetRoute>, ApiError> {
        let c = principal("canister", &id)?;
        t.by_canister(&c).cloned().map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "canister_not_found", e.to_string())
        })
    };
    let client = internal.is_none().then_some(peer);
    handle(&b, client, kind, path, route, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn subnet(
    State(b): State<Arc<Boundary>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    internal: Option<Extension<Internal>>,
    uri: axum::http::Uri,
    Path((version, id)): Path<(String, String)>,
    body: Body,
) -> Response {
    let path = format!("/api/{version}/subnet/{id}/read_state");
    if !Kind::ReadState.versions().contains(&version.as_str()) {
        return not_found(Method::POST, uri).await.into_response();
    }
    let route = |t: &Table| -> Result<Arc<SubnetRoute>, ApiError> {
        let s = principal("subnet", &id)?;
        t.by_subnet(&s)
            .cloned()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "subnet_not_found", e.to_string()))
    };
    let client = internal.is_none().then_some(peer);
    handle(&b, client, Kind::ReadState, path, route, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// One API request, from the client's limit (none for the gateway's own) to the node's
/// answer.
async fn handle(
    b: &Boundary,
    client: Option<SocketAddr>,
    kind: Kind,
    path: String,
    route: impl Fn(&Table) -> Result<Arc<SubnetRoute>, ApiError>,
    body: Body,
) -> Result<Response, ApiError> {
    if let Some(peer) = client {
        b.limits.client(peer.ip())?;
    }
    let table = b.table();
    if table.version == 0 {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            "the boundary has not verified a registry version yet",
        ));
    }
    let subnet = route(&table)?;
    drop(table);
    let body = read_body(b, body).await?;
    let anonymous = inspect(&body, kind)?;
    b.limits.subnet(&subnet.id)?;
    let cacheable = kind == Kind::Query && anonymous;
    let key = cacheable.then(|| QueryCache::key(&path, &body));
    if let Some(hit) = key.as_ref().and_then(|k| b.cache.get(k)) {
        return Ok(answer(&subnet, hit, Some("HIT")));
    }
    let got = forward(b, &subnet, kind, &path, body).await?;
    if let Some(key) = key.filter(|_| got.status == 200) {
        b.cache.put(key, got.clone());
    }
    let cache = match kind {
        Kind::Query if cacheable => Some("MISS"),
        Kind::Query => Some("BYPASS"),
        _ => None,
    };
    Ok(answer(&subnet, got, cache))
}

fn answer(subnet: &SubnetRoute, c: Cached, cache: Option<&'static str>) -> Response {
    let mut r = Response::new(Body::from(c.body));
    *r.status_mut() = StatusCode::from_u16(c.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    if let Some(ct) = c.content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(&c.node) {
        h.insert(NODE_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&subnet.id) {
        h.insert(SUBNET_ID, v);
    }
    if let Some(s) = cache {
        h.insert(CACHE_STATUS, HeaderValue::from_static(s));
    }
    r
}

/// The whole body, within the size and time limits.
pub(crate) async fn read_body(b: &Boundary, body: Body) -> Result<Bytes, ApiError> {
    let limit = b.config.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds {limit} bytes"),
        )
    };
    let read = LimitedBody::new(body, limit).collect();
    match tokio::time::timeout(b.config.body_timeout, read).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                b.config.body_timeout.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_error",
            format!("reading the request body: {e}"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// Check that `body` is a CBOR envelope of the kind its path names; returns whether its
/// sender is anonymous. The node checks everything else (signatures, expiry).
fn inspect(body: &[u8], kind: Kind) -> Result<bool, ApiError> {
    #[derive(serde::Deserialize)]
    struct Envelope {
        content: Content,
    }
    #[derive(serde::Deserialize)]
    struct Content {
        request_type: String,
        sender: serde_cbor::Value,
    }
    let bad = |d: String| ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", d);
    let e: Envelope = serde_cbor::from_slice(body)
        .map_err(|e| bad(format!("not a CBOR request envelope: {e}")))?;
    if e.content.request_type != kind.request_type() {
        return Err(bad(format!(
            "a `{}` request sent to a {} path",
            e.content.request_type,
            kind.request_type()
        )));
    }
    Ok(
        matches!(&e.content.sender, serde_cbor::Value::Bytes(b) if b == Principal::anonymous().as_slice()),
    )
}

/// Why one attempt at a node failed.
enum Failure {
    /// The request never left (no connection): safe to send elsewhere, even a call.
    NotSent(String),
    /// Sent, then no usable answer (timeout, broken connection, a 5xx): the node may have
    /// acted on it.
    AfterSent(String),
}

/// Send to nodes of `subnet` until one answers: idempotent requests on up to
/// `max_attempts` nodes; a call to another node only if it was never sent.
async fn forward(
    b: &Boundary,
    subnet: &SubnetRoute,
    kind: Kind,
    path: &str,
    body: Bytes,
) -> Result<Cached, ApiError> {
    let mut tried: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    while tried.len() < b.config.max_attempts {
        let candidates = b.health.candidates(subnet);
        let Some(node) = choose(&candidates, &tried, &mut rand::thread_rng()) else {
            break;
        };
        tried.push(node.id.clone());
        let (why, sent) = match send(b, node, kind, path, body.clone()).await {
            Ok(answer) => return Ok(answer),
            Err(Failure::NotSent(why)) => (why, false),
            Err(Failure::AfterSent(why)) => (why, true),
        };
        b.health.record_failure(&node.id, why.clone());
        failures.push(format!("{}: {why}", node.id));
        if sent && !kind.idempotent() {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "replica_error",
                format!(
                    "{} (the call may have been accepted: not sent again; read its status)",
                    failures.join("; ")
                ),
            ));
        }
    }
    if failures.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_nodes",
            format!("no node of subnet {} is healthy", subnet.id),
        ));
    }
    Err(ApiError::new(
        StatusCode::BAD_GATEWAY,
        "replica_unreachable",
        failures.join("; "),
    ))
}

/// One attempt at `node`.
async fn send(
    b: &Boundary,
    node: &NodeRoute,
    kind: Kind,
    path: &str,
    body: Bytes,
) -> Result<Cached, Failure> {
    let request = hyper::Request::post(format!("{}{path}", node.endpoint))
        .header(header::CONTENT_TYPE, "application/cbor")
        .body(Full::new(body))
        .map_err(|e| Failure::NotSent(format!("building the request: {e}")))?;
    let timeout = match kind {
        Kind::Call => b.config.call_timeout,
        _ => b.config.read_timeout,
    };
    let started = Instant::now();
    let exchange = async {
        let resp = b.client.request(request).await.map_err(|e| {
            if e.is_connect() {
                Failure::NotSent(format!("connecting: {e}"))
            } else {
                Failure::AfterSent(format!("sending: {e}"))
            }
        })?;
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let body = LimitedBody::new(resp.into_body(), b.config.max_answer_bytes)
            .collect()
            .await
            .map_err(|e| Failure::AfterSent(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, Failure>((status, content_type, body))
    };
    let (status, content_type, body) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Failure::AfterSent(format!("no answer within {} s", timeout.as_secs())))??;
    // A node that cannot serve now (5xx) is another node's job for requests that may be
    // sent twice; a call's answer goes back as it is.
    if status.is_server_error() && kind.idempotent() {
        return Err(Failure::AfterSent(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )));
    }
    b.health.record_latency(&node.id, started.elapsed());
    Ok(Cached {
        status: status.as_u16(),
        content_type,
        body,
        node: node.id.clone(),
    })
}
