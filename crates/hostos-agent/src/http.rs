//! The agent's HTTP endpoint: status, metrics, and the operator's way to ask for the
//! HostOS upgrade through the same code path a guest request takes.

use crate::upgrader::Upgrader;
use crate::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

#[derive(Clone)]
struct Ctx {
    shared: Shared,
    upgrader: Arc<Upgrader>,
}

async fn status(State(c): State<Ctx>) -> Response {
    let mut s = c.shared.lock().expect("status lock").clone();
    // Read when asked: the network may come up after the agent started.
    s.node.configured_ipv6 = daemon_support::net::global_ipv6();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&s).expect("serializes"),
    )
        .into_response()
}

async fn metrics(State(c): State<Ctx>) -> Response {
    let s = c.shared.lock().expect("status lock").clone();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics(&s),
    )
        .into_response()
}

async fn request_upgrade(State(c): State<Ctx>) -> Response {
    let r = tokio::task::spawn_blocking(move || c.upgrader.request()).await;
    let (status, body) = match r {
        Ok(Ok(a)) => (StatusCode::OK, serde_json::to_vec(&a).expect("serializes")),
        Ok(Err(e)) => (
            StatusCode::CONFLICT,
            serde_json::to_vec(&serde_json::json!({ "error": e.to_string() })).expect("serializes"),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::to_vec(&serde_json::json!({ "error": e.to_string() })).expect("serializes"),
        ),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Serve status, metrics and the upgrade request on `listen` (on a thread of its own, under
/// `http-guard`'s limits); a taken port is an error for the caller.
pub fn spawn(
    listen: std::net::SocketAddr,
    shared: Shared,
    upgrader: Arc<Upgrader>,
) -> std::io::Result<std::net::SocketAddr> {
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/request-hostos-upgrade", post(request_upgrade))
        .with_state(Ctx { shared, upgrader });
    http_guard::spawn(listen, app, http_guard::Limits::default()).map(|(addr, _)| addr)
}
