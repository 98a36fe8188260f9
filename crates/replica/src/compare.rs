//! The members of a subnet compare their state roots: every node keeps the roots its recent
//! log entries left ([`Roots`]) and answers a member that asks for the root at an index
//! (`POST /subnet/root`, a peer route: only the subnet's members, signing with their node
//! keys, reach it). [`watch`] asks the others, now and then, for the root at this node's last
//! applied entry. When a majority of the whole subnet, not counting this node, agrees on
//! another root, this node's state is wrong (a bug, a bad disk, a hand that changed it): it
//! stops serving at once, says why, and its supervisor sets the state aside
//! ([`set_aside`]) and starts again from the log, which replays every entry into a fresh
//! state.
//!
//! A node that finds itself in a minority of one is never told it is right: with three
//! members, one dissenting peer and one silent peer decide nothing, and a node never stops on
//! a root a majority does not hold.

use crate::ordered::Ordered;
use replication::Replicated;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Roots kept: enough for a member a little behind or ahead to find the index it asks for.
const KEPT: usize = 4096;

/// The peer route of the comparison.
pub const ROOT_ROUTE: &str = "/subnet/root";

/// The roots of the last [`KEPT`] entries this node applied, by log index.
#[derive(Default)]
pub struct Roots(Mutex<BTreeMap<u64, [u8; 32]>>);

impl Roots {
    pub(crate) fn record(&self, index: u64, root: [u8; 32]) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(index, root);
        while m.len() > KEPT {
            m.pop_first();
        }
    }

    fn at(&self, index: u64) -> Option<[u8; 32]> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&index)
            .copied()
    }

    fn latest(&self) -> Option<(u64, [u8; 32])> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_key_value()
            .map(|(i, r)| (*i, *r))
    }
}

/// This node's state is not the subnet's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this node's state diverged from its subnet's at log entry {index}: its root is {}, while members {members:?} (a majority of the subnet) have {}; it stops serving and resyncs from the log", hex::encode(mine), hex::encode(subnet))]
pub struct Divergence {
    pub index: u64,
    pub mine: [u8; 32],
    pub subnet: [u8; 32],
    pub members: Vec<u64>,
}

/// What one round of comparison found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing applied yet.
    Nothing,
    /// At `index`, `members` have this node's root.
    Agreed {
        index: u64,
        members: Vec<u64>,
    },
    /// No majority against this node, nor anyone with it (peers behind, silent, or split).
    Undecided {
        index: u64,
        answers: usize,
    },
    Diverged(Divergence),
}

/// The peer route: the root this node's entry at the asked index left, if it still has it.
pub fn routes(ordered: Arc<Ordered>) -> axum::Router {
    use axum::body::Bytes;
    use axum::http::StatusCode;
    let answer = move |body: Bytes| {
        let ordered = ordered.clone();
        async move {
            let index: u64 = serde_cbor::from_slice(&body).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("the body is not a log index: {e}"),
                )
            })?;
            let root = ordered.roots.at(index).map(serde_bytes::ByteBuf::from);
            serde_cbor::to_vec(&root)
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
    };
    axum::Router::new().route(ROOT_ROUTE, axum::routing::post(answer))
}

/// Ask every other member for the root at this node's last applied entry, and judge.
pub async fn compare(ordered: &Ordered, node: &Replicated) -> Verdict {
    let Some((index, mine)) = ordered.roots.latest() else {
        return Verdict::Nothing;
    };
    let members = node.members();
    let held = held_at(node, &members, index).await;
    judge(index, mine, held, members.len())
}

/// Who of `members` (but `node` itself) holds which root at `index`; members that do not
/// answer or no longer have that entry's root are left out.
pub async fn held_at(
    node: &Replicated,
    members: &BTreeMap<u64, String>,
    index: u64,
) -> BTreeMap<[u8; 32], Vec<u64>> {
    let mut held: BTreeMap<[u8; 32], Vec<u64>> = BTreeMap::new();
    for (id, url) in members.iter().filter(|(id, _)| **id != node.id()) {
        match node
            .ask::<u64, Option<serde_bytes::ByteBuf>>(url, ROOT_ROUTE, &index)
            .await
        {
            Ok(Some(root)) => match <[u8; 32]>::try_from(root.as_ref()) {
                Ok(root) => held.entry(root).or_default().push(*id),
                Err(_) => tracing::warn!(member = id, "a root that is not 32 bytes"),
            },
            Ok(None) => {}
            Err(e) => tracing::debug!(member = id, "no root from it: {e}"),
        }
    }
    held
}

/// The verdict at `index` on this node's root `mine`, given who of a subnet of `size`
/// members holds which root there.
fn judge(index: u64, mine: [u8; 32], held: BTreeMap<[u8; 32], Vec<u64>>, size: usize) -> Verdict {
    let answers = held.values().map(Vec::len).sum();
    if let Some(with) = held.get(&mine) {
        return Verdict::Agreed {
            index,
            members: with.clone(),
        };
    }
    let majority = size / 2 + 1;
    match held.into_iter().find(|(_, ids)| ids.len() >= majority) {
        Some((subnet, ids)) => Verdict::Diverged(Divergence {
            index,
            mine,
            subnet,
            members: ids,
        }),
        None => Verdict::Undecided { index, answers },
    }
}

/// Compare every `every` until this node is found diverged; then it stops serving (every
/// interface route but the status answers 503 with the reason) and the divergence is
/// returned for the supervisor to resync.
pub async fn watch(ordered: Arc<Ordered>, node: Replicated, every: Duration) -> Divergence {
    loop {
        match compare(&ordered, &node).await {
            Verdict::Diverged(d) => {
                tracing::error!("{d}");
                ordered.replica.stop_serving(d.to_string());
                return d;
            }
            v => tracing::trace!(?v, "root comparison"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Move a diverged state folder aside (to `<folder>.diverged-<unix seconds>`, kept for a
/// look at what went wrong) and leave an empty one in its place: the replica opened on it
/// next takes up every entry of the log again.
pub fn set_aside(state_dir: &Path) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut name = state_dir.as_os_str().to_owned();
    name.push(format!(".diverged-{secs}"));
    let aside = PathBuf::from(name);
    std::fs::rename(state_dir, &aside)?;
    std::fs::create_dir_all(state_dir)?;
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(roots: &[(u8, &[u64])]) -> BTreeMap<[u8; 32], Vec<u64>> {
        roots
            .iter()
            .map(|(r, ids)| ([*r; 32], ids.to_vec()))
            .collect()
    }

    #[test]
    fn a_node_stops_only_on_a_root_a_majority_of_the_subnet_holds() {
        let mine = [1; 32];
        // Three members: both others on another root.
        assert!(matches!(
            judge(9, mine, held(&[(2, &[2, 3])]), 3),
            Verdict::Diverged(Divergence { index: 9, ref members, .. }) if members == &[2, 3]
        ));
        // One liar (or one broken peer) and one silent: nothing is decided.
        assert_eq!(
            judge(9, mine, held(&[(2, &[3])]), 3),
            Verdict::Undecided {
                index: 9,
                answers: 1
            }
        );
        // One liar, one with this node: agreed.
        assert!(matches!(
            judge(9, mine, held(&[(1, &[2]), (2, &[3])]), 3),
            Verdict::Agreed { .. }
        ));
        // Four members: two others against this node are not a majority of four.
        assert!(matches!(
            judge(9, mine, held(&[(2, &[2, 3])]), 4),
            Verdict::Undecided { .. }
        ));
        assert!(matches!(
            judge(9, mine, held(&[(2, &[2, 3, 4])]), 4),
            Verdict::Diverged(_)
        ));
        // Two others split between two roots: no majority anywhere.
        assert!(matches!(
            judge(9, mine, held(&[(2, &[2]), (3, &[3])]), 3),
            Verdict::Undecided { .. }
        ));
    }

    #[test]
    fn only_the_last_roots_are_kept() {
        let r = Roots::default();
        for i in 0..(KEPT as u64 + 10) {
            r.record(i, [i as u8; 32]);
        }
        assert_eq!(r.at(9), None);
        assert_eq!(r.at(10), Some([10; 32]));
        assert_eq!(r.latest().map(|l| l.0), Some(KEPT as u64 + 9));
    }
}
