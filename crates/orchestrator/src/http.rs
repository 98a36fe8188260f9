//! `/status` (JSON) and `/metrics` (Prometheus) of the orchestrator.

use crate::Shared;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

async fn status(State(s): State<Shared>) -> impl IntoResponse {
    let st = s.lock().expect("status lock").clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&st).expect("serializes"),
    )
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let st = s.lock().expect("status lock").clone();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&st),
    )
}

pub fn render(s: &crate::OrchestratorStatus) -> String {
    let mut o = daemon_support::metrics::Exposition::default();
    let slot = s.slot.map(|x| x.as_str()).unwrap_or("");
    o.single(
        "icos_orchestrator_info",
        "gauge",
        "Node and versions (value 1).",
        &[
            ("node_id", &s.node_id),
            ("guestos_version", &s.guestos_version),
            ("slot", slot),
            ("target", s.target_guestos.as_deref().unwrap_or("")),
        ],
        1,
    );
    o.single(
        "icos_orchestrator_registry_version",
        "gauge",
        "Registry version this node verified.",
        &[],
        s.registry_version,
    );
    o.single(
        "icos_orchestrator_registry_ok",
        "gauge",
        "0 while the registry cannot be synced.",
        &[],
        u8::from(s.registry_error.is_none()),
    );
    o.single(
        "icos_orchestrator_upgrade_attempts_total",
        "counter",
        "GuestOS upgrade attempts.",
        &[],
        s.upgrade.attempts,
    );
    o.single(
        "icos_orchestrator_firewall_rules",
        "gauge",
        "Registry firewall rules applied.",
        &[],
        s.firewall_rules,
    );
    o.finish()
}

pub fn spawn(
    listen: std::net::SocketAddr,
    shared: Shared,
) -> std::io::Result<std::net::SocketAddr> {
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared);
    http_guard::spawn(listen, app, http_guard::Limits::default()).map(|(addr, _)| addr)
}
