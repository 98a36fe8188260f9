//! Catch-up by state transfer: a member that lacks the log behind the subnet's state (it
//! was down while the log was purged behind a snapshot, or it is new) takes up a snapshot
//! instead of replaying the log.
//!
//! A snapshot is small: the manifest of the sender's checkpoint (canisters, request
//! statuses, batch time, log position), which names the state's 1 MiB pieces by their
//! SHA-256 ([`crate::checkpoint`]). The sender pins that manifest, so its pieces outlive
//! later checkpoints. The taker fetches only the pieces it does not hold, from any member
//! (`POST /subnet/piece`, a peer route: only members, signing with their node keys, reach
//! it), checks each against its name, rebuilds the state from them, and takes it up only
//! when its root is confirmed by the subnet's members at that entry: at least one holds
//! it and none that answers holds another. Nothing local is replaced before that, so a
//! lying or broken sender costs the taker a retry, never its state.

use crate::checkpoint::{piece_name, CheckpointError, Manifest};
use crate::ordered::Ordered;
use crate::state::{RestoreError, State};
use crate::{Replica, RequestError};
use certified_state::StateTree;
use replication::Replicated;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The peer route that hands out pieces.
pub const PIECE_ROUTE: &str = "/subnet/piece";

/// Why a state could not be handed over or taken up.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("this replica keeps no state directory: it neither hands over nor takes up a state")]
    NoStore,
    #[error("the snapshot is not a checkpoint manifest: {0}")]
    NotAManifest(serde_cbor::Error),
    #[error("piece {name}: no member handed it over sound ({tried})")]
    Piece { name: String, tried: String },
    #[error("the snapshot's pieces: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the snapshot's state: {0}")]
    Restore(#[from] RestoreError),
    #[error("the snapshot's state at log entry {index} has root {root}, which the subnet's members do not confirm: {why}")]
    Unconfirmed {
        index: u64,
        root: String,
        why: String,
    },
    #[error("the state could not be made durable: {0}")]
    Durable(RequestError),
    #[error("this replica is not attached to its subnet's log yet")]
    NotAttached,
    #[error("a state is taken up on the log engine's runtime, and this thread has none")]
    NoRuntime,
}

/// Pieces a taker asks for at once: fetching, checking and writing overlap.
const IN_FLIGHT: usize = 8;

/// Where a taker gets what it lacks: pieces by name, and the subnet's word on a root.
pub trait Source {
    /// The pieces `names`, in their order (their bytes are checked against their names by
    /// the taker too).
    fn pieces(&mut self, names: &[String]) -> Result<Vec<Vec<u8>>, TransferError>;
    /// Ok when the subnet confirms `root` as the state's root at the snapshot's entry.
    fn confirm(&mut self, root: [u8; 32]) -> Result<(), TransferError>;
}

impl Replica {
    /// This state as a snapshot for members that lack the log behind it: the manifest of
    /// its durable checkpoint (CBOR, pinned so its pieces stay) and its log position.
    pub fn snapshot(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), TransferError> {
        let store = self.store.as_ref().ok_or(TransferError::NoStore)?;
        let mut state = self.lock();
        self.make_durable(&mut state)
            .map_err(TransferError::Durable)?;
        let (manifest, _) = state.manifest();
        store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pin(&manifest)?;
        let bytes =
            serde_cbor::to_vec(&manifest).map_err(|e| CheckpointError::Encode(e.to_string()))?;
        Ok((bytes, manifest.position))
    }

    /// A piece of this replica's checkpoints, for a member taking up the state.
    pub fn piece(&self, name: &str) -> Option<Vec<u8>> {
        self.store
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .piece(name)
    }

    /// Take up the snapshot `manifest` (CBOR) at log `position`: fetch the pieces this
    /// replica lacks from `source`, rebuild the state, have `source` confirm its root, then
    /// make it the newest checkpoint and the state served. Its root is returned.
    pub fn take_up(
        &self,
        manifest: &[u8],
        position: &[u8],
        source: &mut dyn Source,
    ) -> Result<[u8; 32], TransferError> {
        let store = self.store.as_ref().ok_or(TransferError::NoStore)?;
        let lock = || store.lock().unwrap_or_else(|p| p.into_inner());
        let mut m: Manifest =
            serde_cbor::from_slice(manifest).map_err(TransferError::NotAManifest)?;
        m.position = Some(position.to_vec());
        let mut missing: Vec<String> = {
            let s = lock();
            m.chunks().filter(|n| !s.has_piece(n)).cloned().collect()
        };
        missing.sort();
        missing.dedup();
        tracing::info!(
            pieces = missing.len(),
            height = m.height,
            "taking up the subnet's state"
        );
        for names in missing.chunks(IN_FLIGHT) {
            for (name, bytes) in names.iter().zip(source.pieces(names)?) {
                lock().put_piece(name, &bytes)?;
            }
        }
        let mut tree = StateTree::default();
        crate::subnet_facts(&mut tree, &self.config);
        let mut state = State::restore(&m, &lock(), &self.runtime, tree)?;
        state.tree.set_time(m.batch_time);
        let root = state.tree.root_hash();
        source.confirm(root)?;
        lock().adopt(&m)?;
        *self.lock() = state;
        Ok(root)
    }
}

/// The peer route: a piece by name (CBOR text), answered as CBOR bytes or null.
pub fn routes(ordered: Arc<Ordered>) -> axum::Router {
    use axum::body::Bytes;
    use axum::http::StatusCode;
    let answer = move |body: Bytes| {
        let ordered = ordered.clone();
        async move {
            let name: String = serde_cbor::from_slice(&body).map_err(|e| {
                (
                    StatusCode::BAD_REQUEST,
                    format!("the body is not a piece name: {e}"),
                )
            })?;
            let replica = ordered.replica.clone();
            let piece = tokio::task::spawn_blocking(move || replica.piece(&name))
                .await
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            serde_cbor::to_vec(&piece.map(serde_bytes::ByteBuf::from))
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
    };
    axum::Router::new().route(PIECE_ROUTE, axum::routing::post(answer))
}

/// The subnet's members as a [`Source`], asked over their peer routes from a blocking
/// thread of `handle`'s runtime (where the log's engine takes up snapshots).
pub struct Members {
    node: Replicated,
    handle: tokio::runtime::Handle,
    members: BTreeMap<u64, String>,
    index: u64,
}

impl Members {
    /// The members `node` knows, and those in force at `position` (a new member's own view
    /// may know nobody yet).
    pub fn new(node: Replicated, handle: tokio::runtime::Handle, position: &[u8]) -> Members {
        let mut members = replication::members_of(position);
        members.extend(node.members());
        members.remove(&node.id());
        Members {
            node,
            handle,
            members,
            index: replication::applied_index_of(position).unwrap_or(0),
        }
    }
}

impl Source for Members {
    fn pieces(&mut self, names: &[String]) -> Result<Vec<Vec<u8>>, TransferError> {
        let asks: Vec<_> = names
            .iter()
            .map(|name| {
                let (node, members, name) = (self.node.clone(), self.members.clone(), name.clone());
                self.handle
                    .spawn(async move { fetch(&node, &members, &name).await })
            })
            .collect();
        self.handle.block_on(async move {
            let mut out = Vec::with_capacity(asks.len());
            for ask in asks {
                out.push(ask.await.map_err(|e| TransferError::Piece {
                    name: String::new(),
                    tried: format!("the fetch stopped: {e}"),
                })??);
            }
            Ok(out)
        })
    }

    fn confirm(&mut self, root: [u8; 32]) -> Result<(), TransferError> {
        let held = self.handle.block_on(crate::compare::held_at(
            &self.node,
            &self.members,
            self.index,
        ));
        confirmed(self.index, root, &held)
    }
}

/// The piece `name` from the first of `members` (asked through `node`) that hands it over
/// sound, starting at one picked by the name so the load spreads over the members.
async fn fetch(
    node: &Replicated,
    members: &BTreeMap<u64, String>,
    name: &str,
) -> Result<Vec<u8>, TransferError> {
    let all: Vec<(&u64, &String)> = members.iter().collect();
    let first = name.bytes().map(usize::from).sum::<usize>() % all.len().max(1);
    let mut tried = Vec::new();
    for (id, url) in all.iter().cycle().skip(first).take(all.len()) {
        match node
            .ask::<&str, Option<serde_bytes::ByteBuf>>(url, PIECE_ROUTE, &name)
            .await
        {
            Ok(Some(b)) if piece_name(&b) == name => return Ok(b.into_vec()),
            Ok(Some(_)) => tried.push(format!("member {id} sent bytes of another hash")),
            Ok(None) => tried.push(format!("member {id} does not have it")),
            Err(e) => tried.push(format!("member {id}: {e}")),
        }
    }
    Err(TransferError::Piece {
        name: name.to_string(),
        tried: if tried.is_empty() {
            "no member known".into()
        } else {
            tried.join("; ")
        },
    })
}

/// The rule: some member holds `root` at `index`, and no member that answered holds another.
fn confirmed(
    index: u64,
    root: [u8; 32],
    held: &BTreeMap<[u8; 32], Vec<u64>>,
) -> Result<(), TransferError> {
    let unconfirmed = |why: String| TransferError::Unconfirmed {
        index,
        root: hex::encode(root),
        why,
    };
    let others: Vec<String> = held
        .iter()
        .filter(|(r, _)| **r != root)
        .map(|(r, ids)| format!("members {ids:?} hold {}", hex::encode(r)))
        .collect();
    if !others.is_empty() {
        return Err(unconfirmed(others.join("; ")));
    }
    if held.get(&root).is_none_or(|ids| ids.is_empty()) {
        return Err(unconfirmed("no member answered with a root there".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_is_confirmed_by_one_member_and_refused_by_any_other() {
        let mine = [1; 32];
        let held = |v: &[([u8; 32], &[u64])]| -> BTreeMap<[u8; 32], Vec<u64>> {
            v.iter().map(|(r, ids)| (*r, ids.to_vec())).collect()
        };
        assert!(confirmed(5, mine, &held(&[(mine, &[2])])).is_ok());
        assert!(confirmed(5, mine, &held(&[(mine, &[2, 3])])).is_ok());
        // One member on another root: refused, naming it.
        let e = confirmed(5, mine, &held(&[(mine, &[2]), ([9; 32], &[3])])).unwrap_err();
        assert!(e.to_string().contains("members [3] hold 0909"), "{e}");
        // Nobody answering confirms nothing.
        let e = confirmed(5, mine, &held(&[])).unwrap_err();
        assert!(e.to_string().contains("no member answered"), "{e}");
    }
}
