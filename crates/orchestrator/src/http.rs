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

pub fn render(s: &crate::Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP icos_orchestrator_info Node and versions (value 1)."
    );
    let _ = writeln!(o, "# TYPE icos_orchestrator_info gauge");
    let _ = writeln!(
        o,
        "icos_orchestrator_info{{node_id=\"{}\",guestos_version=\"{}\",slot=\"{}\",target=\"{}\"}} 1",
        s.node_id,
        s.guestos_version,
        s.slot,
        s.target_guestos.as_deref().unwrap_or("")
    );
    let _ = writeln!(
        o,
        "# HELP icos_orchestrator_registry_version Registry version this node verified."
    );
    let _ = writeln!(o, "# TYPE icos_orchestrator_registry_version gauge");
    let _ = writeln!(
        o,
        "icos_orchestrator_registry_version {}",
        s.registry_version
    );
    let _ = writeln!(
        o,
        "# HELP icos_orchestrator_registry_ok 0 while the registry cannot be synced."
    );
    let _ = writeln!(o, "# TYPE icos_orchestrator_registry_ok gauge");
    let _ = writeln!(
        o,
        "icos_orchestrator_registry_ok {}",
        u8::from(s.registry_error.is_none())
    );
    let _ = writeln!(
        o,
        "# HELP icos_orchestrator_upgrade_attempts_total GuestOS upgrade attempts."
    );
    let _ = writeln!(o, "# TYPE icos_orchestrator_upgrade_attempts_total counter");
    let _ = writeln!(
        o,
        "icos_orchestrator_upgrade_attempts_total {}",
        s.upgrade.attempts
    );
    let _ = writeln!(
        o,
        "# HELP icos_orchestrator_firewall_rules Registry firewall rules applied."
    );
    let _ = writeln!(o, "# TYPE icos_orchestrator_firewall_rules gauge");
    let _ = writeln!(o, "icos_orchestrator_firewall_rules {}", s.firewall_rules);
    o
}

pub fn spawn(
    listen: std::net::SocketAddr,
    shared: Shared,
) -> std::io::Result<std::net::SocketAddr> {
    let app = Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared);
    hostos_agent::http::serve_in_thread(listen, app, "orchestrator-http")
}
