//! The raft log and vote on disk, in one redb database: every append, truncation, purge and
//! vote is a committed (fsynced) write transaction before openraft hears it is done, so a
//! node that acknowledged an entry still has it after a power cut.

use crate::{Entry, LogId, TypeConfig, Vote};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader, StorageError, StorageIOError};
use redb::{Database, ReadableTable, TableDefinition};
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

/// Index → CBOR of the entry.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// `vote`, `committed`, `purged` → CBOR.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The log store; clones share the database (openraft reads through one while it writes
/// through another).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

type Result<T> = std::result::Result<T, StorageError<u64>>;

fn encode<T: serde::Serialize>(v: &T) -> std::result::Result<Vec<u8>, serde_cbor::Error> {
    serde_cbor::to_vec(v)
}

impl LogStore {
    /// Open (or create) the log in `path`.
    pub fn open(path: &Path) -> std::result::Result<LogStore, redb::DatabaseError> {
        let db = Database::create(path)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// Run one blocking database stage off the async workers; a failure becomes the
    /// storage error `kind` names.
    async fn blocking<T: Send + 'static>(
        &self,
        kind: fn(&Wrapped) -> StorageIOError<u64>,
        f: impl FnOnce(&Database) -> Stage<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        let done = tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| kind(&Wrapped(e.to_string())))?;
        done.map_err(|e| kind(&Wrapped(e.to_string())).into())
    }

    async fn meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>> {
        self.blocking(read_logs, move |db| {
            read(db, META, None, |t| match t.get(key)? {
                Some(v) => Ok(Some(serde_cbor::from_slice(v.value())?)),
                None => Ok(None),
            })
        })
        .await
    }

    /// Write `key` in one durable transaction; `kind` names what failed.
    async fn set_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        kind: fn(&Wrapped) -> StorageIOError<u64>,
    ) -> Result<()> {
        let bytes = encode(value).map_err(|e| kind(&Wrapped(e.to_string())))?;
        self.blocking(kind, move |db| {
            write(db, |tx| {
                tx.open_table(META)?.insert(key, bytes.as_slice())?;
                Ok(())
            })
        })
        .await
    }

    /// Delete the entries in `range` (and set `purged` when given) in one transaction.
    async fn delete(&self, range: std::ops::Range<u64>, purged: Option<LogId>) -> Result<()> {
        let purged = purged
            .map(|p| encode(&p))
            .transpose()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.blocking(write_logs, move |db| {
            write(db, |tx| {
                tx.open_table(LOG)?.retain_in(range, |_, _| false)?;
                if let Some(p) = &purged {
                    tx.open_table(META)?.insert("purged", p.as_slice())?;
                }
                Ok(())
            })
        })
        .await
    }
}

// The kinds of failure openraft tells apart, as plain functions (its constructors are
// generic, so they do not coerce to one function type).
fn read_logs(e: &Wrapped) -> StorageIOError<u64> {
    StorageIOError::read_logs(e)
}

fn write_logs(e: &Wrapped) -> StorageIOError<u64> {
    StorageIOError::write_logs(e)
}

fn write_vote(e: &Wrapped) -> StorageIOError<u64> {
    StorageIOError::write_vote(e)
}

/// What one stage on the database gives: its value, or any of redb's and CBOR's errors.
type Stage<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Read `def` in one read transaction (`empty` when the table was never written).
fn read<K: redb::Key + 'static, V: redb::Value + 'static, T>(
    db: &Database,
    def: TableDefinition<K, V>,
    empty: T,
    f: impl FnOnce(&redb::ReadOnlyTable<K, V>) -> Stage<T>,
) -> Stage<T> {
    let tx = db.begin_read()?;
    match tx.open_table(def) {
        Ok(t) => f(&t),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(empty),
        Err(e) => Err(e.into()),
    }
}

/// Run `f` in one write transaction and commit it (durable when this returns).
fn write(db: &Database, f: impl FnOnce(&redb::WriteTransaction) -> Stage<()>) -> Stage<()> {
    let tx = db.begin_write()?;
    f(&tx)?;
    tx.commit()?;
    Ok(())
}

/// An error's text, for openraft's error type (which wants `std::error::Error + 'static`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Wrapped(pub String);

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        self.blocking(read_logs, move |db| {
            read(db, LOG, Vec::new(), |t| {
                let mut out = Vec::new();
                for row in t.range::<u64>(range)? {
                    out.push(serde_cbor::from_slice(row?.1.value())?);
                }
                Ok(out)
            })
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let purged: Option<LogId> = self.meta("purged").await?;
        let last = self
            .blocking(read_logs, |db| {
                read(db, LOG, None, |t| match t.last()? {
                    Some((_, v)) => Ok(Some(serde_cbor::from_slice::<Entry>(v.value())?.log_id)),
                    None => Ok(None),
                })
            })
            .await?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<()> {
        self.set_meta("vote", vote, write_vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>> {
        self.meta("vote").await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<()> {
        self.set_meta("committed", &committed, write_logs).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>> {
        Ok(self.meta::<Option<LogId>>("committed").await?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| encode(&e).map(|b| (e.log_id.index, b)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let written = self
            .blocking(write_logs, move |db| {
                write(db, |tx| {
                    let mut log = tx.open_table(LOG)?;
                    for (index, bytes) in &rows {
                        log.insert(*index, bytes.as_slice())?;
                    }
                    Ok(())
                })
            })
            .await;
        // The entries are durable (or not) now: say so to openraft either way.
        callback.log_io_completed(
            written
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        written
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<()> {
        self.delete(log_id.index..u64::MAX, None).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<()> {
        self.delete(0..log_id.index + 1, Some(log_id)).await
    }
}
