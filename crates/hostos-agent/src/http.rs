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
    let s = c.shared.lock().expect("status lock").clone();
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
    match r {
        Ok(Ok(a)) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&a).expect("serializes"),
        )
            .into_response(),
        Ok(Err(e)) => (
            StatusCode::CONFLICT,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": e }).to_string(),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

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
    serve_in_thread(listen, app, "agent-http")
}

/// Bind `listen` now (so a taken port is an error for the caller) and serve `app` on a
/// thread of its own with a one-worker runtime: the agents' loops stay plain threads.
pub fn serve_in_thread(
    listen: std::net::SocketAddr,
    app: Router,
    name: &str,
) -> std::io::Result<std::net::SocketAddr> {
    let std_listener = std::net::TcpListener::bind(listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let what = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return tracing::error!("{what}: no async runtime: {e}"),
            };
            rt.block_on(async move {
                let served = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(listener) => axum::serve(listener, app).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    tracing::error!("{what} endpoint stopped: {e}");
                }
            });
        })?;
    Ok(addr)
}
