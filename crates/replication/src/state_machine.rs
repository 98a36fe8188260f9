//! openraft's state machine over the application's [`StateMachine`]: committed commands are
//! handed over one at a time with their [`Position`], which the application keeps with its
//! state in the same durable write, so after a restart the node resumes exactly after the
//! last command its state holds (none replayed twice, none skipped). A snapshot is the
//! application's whole state at its position, taken when openraft asks for one (a member
//! lacks entries no longer in the log) and kept in memory until the next.

use crate::log_store::Wrapped;
use crate::{Applied, Entry, LogId, Node, Snapshot, SnapshotMeta, StateMachine, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership};
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::{Arc, Mutex};

/// Where the application's state stands in the log: the last entry it holds and the
/// membership in force there. Opaque to the application, which stores it as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<u64, Node>,
}

impl Position {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_cbor::to_vec(self).expect("a position always encodes")
    }

    pub fn from_bytes(b: &[u8]) -> Result<Position, serde_cbor::Error> {
        serde_cbor::from_slice(b)
    }
}

/// The last snapshot built or installed: its description and the state's bytes.
type Kept = Arc<Mutex<Option<(SnapshotMeta, Vec<u8>)>>>;

/// The adapter openraft drives.
pub struct Machine {
    app: Arc<dyn StateMachine>,
    kept: Kept,
}

impl Machine {
    pub fn new(app: Arc<dyn StateMachine>) -> Machine {
        Machine {
            app,
            kept: Kept::default(),
        }
    }

    fn position(&self) -> Result<Position, StorageError<u64>> {
        match self.app.position() {
            None => Ok(Position::default()),
            Some(b) => {
                Position::from_bytes(&b).map_err(|e| StorageIOError::read_state_machine(&e).into())
            }
        }
    }

    /// The application's state and position now, as a snapshot.
    fn current(&self) -> Result<Snapshot, StorageError<u64>> {
        let (state, pos) = self
            .app
            .snapshot()
            .map_err(|e| StorageIOError::read_snapshot(None, &Wrapped(e.to_string())))?;
        let pos = match pos {
            None => Position::default(),
            Some(b) => {
                Position::from_bytes(&b).map_err(|e| StorageIOError::read_snapshot(None, &e))?
            }
        };
        let id = match &pos.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".into(),
        };
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: pos.last_applied,
                last_membership: pos.membership,
                snapshot_id: id,
            },
            snapshot: Box::new(Cursor::new(state)),
        })
    }
}

/// Takes the application's whole state as a snapshot and keeps it.
pub struct Builder {
    app: Arc<dyn StateMachine>,
    kept: Kept,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError<u64>> {
        let m = Machine {
            app: self.app.clone(),
            kept: self.kept.clone(),
        };
        let s = m.current()?;
        let data = s.snapshot.get_ref().clone();
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some((s.meta.clone(), data));
        Ok(s)
    }
}

impl RaftStateMachine<TypeConfig> for Machine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, Node>), StorageError<u64>> {
        let p = self.position()?;
        Ok((p.last_applied, p.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut pos = self.position()?;
        let mut out = Vec::new();
        for entry in entries {
            pos.last_applied = Some(entry.log_id);
            let command = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(c) => Some(c.0),
                EntryPayload::Membership(m) => {
                    pos.membership = StoredMembership::new(Some(entry.log_id), m);
                    None
                }
            };
            let app = self.app.clone();
            let bytes = pos.to_bytes();
            let result = tokio::task::spawn_blocking(move || app.apply(command.as_deref(), &bytes))
                .await
                .map_err(|e| StorageIOError::apply(entry.log_id, &e))?
                .map_err(|e| StorageIOError::apply(entry.log_id, &Wrapped(e.to_string())))?;
            out.push(Applied(result));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            app: self.app.clone(),
            kept: self.kept.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let pos = Position {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let app = self.app.clone();
        let state = snapshot.into_inner();
        let signature = meta.signature();
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), state.clone()));
        tokio::task::spawn_blocking(move || app.restore(&state, &pos.to_bytes()))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature.clone()), &e))?
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(signature), &Wrapped(e.to_string()))
            })?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError<u64>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(kept.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
