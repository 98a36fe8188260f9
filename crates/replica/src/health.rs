//! What the members of a subnet tell each other about themselves, for rolling upgrades: each
//! answers the signed peer route [`HEALTH_ROUTE`] with its [`PeerHealth`] (its place in the
//! log, the last entry it applied, whether it serves, the GuestOS version it runs), and asks
//! the others every [`ASK_EVERY`]. The answers go into `status.json`, where the orchestrator
//! decides from them whether it is this node's turn to reboot into a new version.
//!
//! Only members sign requests here (the log's own check), so only they learn this. What a
//! member says of itself is trusted as far as its log messages are: a member that lies can
//! make another upgrade early (the subnet then misses one more node for a reboot's time) or
//! hold a rollout; it cannot change any state.

use node_status::replica::{PeerHealth, PeerReport};
use replication::Replicated;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The peer route a member answers with its [`PeerHealth`].
pub const HEALTH_ROUTE: &str = "/subnet/health";

/// How often a member asks the others.
pub const ASK_EVERY: Duration = Duration::from_secs(2);

/// How long one answer may take: a member slower than this counts as unreachable.
const ANSWER_WITHIN: Duration = Duration::from_millis(1500);

/// How long a replica told to stop keeps answering while saying so: boundaries probe every
/// second, so after this none sends it a new request.
pub const DRAIN: Duration = Duration::from_secs(3);

/// This node's latest [`PeerHealth`], kept by the status loop and served to members.
#[derive(Clone, Default)]
pub struct Own(Arc<Mutex<Option<PeerHealth>>>);

impl Own {
    pub fn set(&self, h: PeerHealth) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
    }

    fn get(&self) -> Option<PeerHealth> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The peer route: this node's health, or 503 before the first status was taken.
pub fn routes(own: Own) -> axum::Router {
    use axum::http::StatusCode;
    let answer = move || {
        let own = own.clone();
        async move {
            let h = own.get().ok_or((
                StatusCode::SERVICE_UNAVAILABLE,
                "this member has not taken its status yet".to_string(),
            ))?;
            serde_cbor::to_vec(&h).map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
    };
    axum::Router::new().route(HEALTH_ROUTE, axum::routing::post(answer))
}

/// Ask every other member the log knows of, all at once, each within [`ANSWER_WITHIN`].
pub async fn ask_members(node: &Replicated) -> BTreeMap<u64, PeerReport> {
    let mut asks = tokio::task::JoinSet::new();
    for (id, url) in node.members() {
        if id == node.id() {
            continue;
        }
        let node = node.clone();
        asks.spawn(async move {
            let answer = tokio::time::timeout(
                ANSWER_WITHIN,
                node.ask::<(), PeerHealth>(&url, HEALTH_ROUTE, &()),
            )
            .await;
            let report = match answer {
                Ok(Ok(h)) if h.member_id == id => PeerReport::Reached(h),
                Ok(Ok(h)) => PeerReport::Unreachable {
                    why: format!("{url} answered as member {}", h.member_id),
                },
                Ok(Err(e)) => PeerReport::Unreachable { why: e.to_string() },
                Err(_) => PeerReport::Unreachable {
                    why: format!("{url} did not answer within {ANSWER_WITHIN:?}"),
                },
            };
            (id, report)
        });
    }
    let mut heard = BTreeMap::new();
    while let Some(done) = asks.join_next().await {
        if let Ok((id, report)) = done {
            heard.insert(id, report);
        }
    }
    heard
}
