//! The interface over HTTP: `/api/v2/status`; calls on v2 (asynchronous: 202), v3 and v4
//! (synchronous: the certificate); queries and `read_state` on v2 and v3. Work that runs
//! Wasm or signs runs on the blocking pool, so a long message never stalls the server.

use crate::{CallAnswer, Replica, RequestError};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use ic_principal::Principal;
use serde_cbor::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the routes serve: a replica, and the subnet ordering its calls if it has one.
struct Serving {
    replica: Arc<Replica>,
    subnet: Option<replication::Replicated>,
}

type Served = State<Arc<Serving>>;

/// The routes of a replica that is a subnet of its own.
pub fn router(replica: Arc<Replica>) -> Router {
    routes(Serving {
        replica,
        subnet: None,
    })
}

/// The routes of a replica whose subnet orders its calls through `node` (its member of the
/// subnet's log): a call may enter through any node.
pub fn subnet_router(replica: Arc<Replica>, node: replication::Replicated) -> Router {
    routes(Serving {
        replica,
        subnet: Some(node),
    })
}

fn routes(serving: Serving) -> Router {
    let limit = serving.replica.config.ingress.max_envelope_bytes + 1024;
    Router::new()
        .route("/api/v2/status", get(status))
        .route("/api/{version}/canister/{id}/call", post(call))
        .route("/api/{version}/canister/{id}/query", post(query))
        .route(
            "/api/{version}/canister/{id}/read_state",
            post(read_canister),
        )
        .route("/api/{version}/subnet/{id}/read_state", post(read_subnet))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            serving.replica.clone(),
            unless_stopped,
        ))
        .with_state(Arc::new(serving))
}

/// A replica that stopped serving (its state is not its subnet's) answers 503 with the
/// reason to everything but the status.
async fn unless_stopped(
    State(r): State<Arc<Replica>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match r.stopped() {
        Some(why) if req.uri().path() != "/api/v2/status" => {
            text_error(StatusCode::SERVICE_UNAVAILABLE, why)
        }
        _ => next.run(req).await,
    }
}

fn cbor(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/cbor")], body).into_response()
}

fn text_error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain")], msg.into()).into_response()
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let status = match &self {
            RequestError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RequestError::Forbidden(_) => StatusCode::FORBIDDEN,
            RequestError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RequestError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        text_error(status, self.to_string())
    }
}

fn t(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn encode(m: BTreeMap<Value, Value>) -> Vec<u8> {
    certified_state::to_cbor(&Value::Map(m)).expect("a CBOR value encodes")
}

async fn status(State(s): Served) -> Response {
    let r = &s.replica;
    let m = BTreeMap::from([
        (
            t("impl_version"),
            t(concat!("icos-", env!("CARGO_PKG_VERSION"))),
        ),
        (
            t("replica_health_status"),
            t(match r.serving() {
                node_status::replica::Serving::Diverged { .. } => "diverged",
                node_status::replica::Serving::Draining => "stopping",
                node_status::replica::Serving::Serving => "healthy",
            }),
        ),
        (t("root_key"), Value::Bytes(r.config.root_key_der.clone())),
        (t("certified_height"), Value::Integer(r.height().into())),
    ]);
    cbor(StatusCode::OK, encode(m))
}

/// An HTTP error before the replica is asked: status and text.
type Refusal = (StatusCode, String);

fn refused((status, text): Refusal) -> Response {
    text_error(status, text)
}

fn principal(id: &str) -> Result<Principal, Refusal> {
    Principal::from_text(id).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("`{id}` in the URL is not a principal: {e}"),
        )
    })
}

/// Run `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RequestError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into_response()),
        Err(e) => Err(text_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request failed inside the replica: {e}"),
        )),
    }
}

fn reject_map(r: &crate::state::Reject) -> BTreeMap<Value, Value> {
    BTreeMap::from([
        (t("reject_code"), Value::Integer(r.code.into())),
        (t("reject_message"), t(&r.message)),
        (t("error_code"), t(&r.error_code)),
    ])
}

async fn call(
    State(s): Served,
    Path((version, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let sync = match version.as_str() {
        "v2" => false,
        "v3" | "v4" => true,
        _ => {
            return text_error(
                StatusCode::NOT_FOUND,
                format!("no call endpoint /api/{version}"),
            )
        }
    };
    let ecid = match principal(&id) {
        Ok(p) => p,
        Err(r) => return refused(r),
    };
    let r = s.replica.clone();
    let answered = match &s.subnet {
        Some(node) => crate::ordered::call(r, node, body.to_vec(), ecid)
            .await
            .map_err(IntoResponse::into_response),
        None => blocking(move || r.call(&body, &ecid)).await,
    };
    let answer = match answered {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    match (answer, sync) {
        (CallAnswer::Certified(_), false) => StatusCode::ACCEPTED.into_response(),
        (CallAnswer::Certified(cert), true) => {
            let m = BTreeMap::from([
                (t("status"), t("replied")),
                (t("certificate"), Value::Bytes(cert)),
            ]);
            cbor(StatusCode::OK, encode(m))
        }
        (CallAnswer::NotExecuted(rej), false) => cbor(StatusCode::OK, encode(reject_map(&rej))),
        (CallAnswer::NotExecuted(rej), true) => {
            let mut m = reject_map(&rej);
            m.insert(t("status"), t("non_replicated_rejection"));
            cbor(StatusCode::OK, encode(m))
        }
    }
}

fn read_version(version: &str, what: &str) -> Result<(), Refusal> {
    match version {
        "v2" | "v3" => Ok(()),
        _ => Err((
            StatusCode::NOT_FOUND,
            format!("no {what} endpoint /api/{version}"),
        )),
    }
}

async fn query(
    State(s): Served,
    Path((version, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if let Err(r) = read_version(&version, "query") {
        return refused(r);
    }
    let ecid = match principal(&id) {
        Ok(p) => p,
        Err(r) => return refused(r),
    };
    let r = s.replica.clone();
    match blocking(move || r.query(&body, &ecid)).await {
        Ok(a) => cbor(StatusCode::OK, a.to_cbor()),
        Err(resp) => resp,
    }
}

async fn read_state(
    r: Arc<Replica>,
    version: String,
    id: String,
    body: Bytes,
    subnet: bool,
) -> Response {
    if let Err(r) = read_version(&version, "read_state") {
        return refused(r);
    }
    let target = match principal(&id) {
        Ok(p) => p,
        Err(r) => return refused(r),
    };
    match blocking(move || r.read_state(&body, &target, subnet)).await {
        Ok(cert) => {
            let m = BTreeMap::from([(t("certificate"), Value::Bytes(cert))]);
            cbor(StatusCode::OK, encode(m))
        }
        Err(resp) => resp,
    }
}

async fn read_canister(
    State(s): Served,
    Path((version, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    read_state(s.replica.clone(), version, id, body, false).await
}

async fn read_subnet(
    State(s): Served,
    Path((version, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    read_state(s.replica.clone(), version, id, body, true).await
}
