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

    /// Run one blocking database stage off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StorageIOError::read_logs(&e))?
    }

    async fn meta<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>> {
        self.blocking(move |db| {
            let bad =
                |e: &dyn std::error::Error| StorageIOError::read_logs(&Wrapped(e.to_string()));
            let tx = db.begin_read().map_err(|e| bad(&e))?;
            let table = match tx.open_table(META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(bad(&e).into()),
            };
            match table.get(key).map_err(|e| bad(&e))? {
                Some(v) => Ok(Some(
                    serde_cbor::from_slice(v.value()).map_err(|e| bad(&e))?,
                )),
                None => Ok(None),
            }
        })
        .await
    }

    /// Write `key` in one durable transaction; `write` names what failed.
    async fn set_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
        write: fn(&Wrapped) -> StorageIOError<u64>,
    ) -> Result<()> {
        let bytes = encode(value).map_err(|e| write(&Wrapped(e.to_string())))?;
        self.blocking(move |db| {
            let fail = |e: &dyn std::error::Error| write(&Wrapped(e.to_string()));
            let tx = db.begin_write().map_err(|e| fail(&e))?;
            {
                let mut t = tx.open_table(META).map_err(|e| fail(&e))?;
                t.insert(key, bytes.as_slice()).map_err(|e| fail(&e))?;
            }
            tx.commit().map_err(|e| fail(&e))?;
            Ok(())
        })
        .await
    }

    /// Delete the entries in `range` (and set `purged` when given) in one transaction.
    async fn delete(&self, range: std::ops::Range<u64>, purged: Option<LogId>) -> Result<()> {
        let purged = purged
            .map(|p| encode(&p))
            .transpose()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.blocking(move |db| {
            let fail =
                |e: &dyn std::error::Error| StorageIOError::write_logs(&Wrapped(e.to_string()));
            let tx = db.begin_write().map_err(|e| fail(&e))?;
            {
                let mut log = tx.open_table(LOG).map_err(|e| fail(&e))?;
                log.retain_in(range, |_, _| false).map_err(|e| fail(&e))?;
                if let Some(p) = &purged {
                    let mut meta = tx.open_table(META).map_err(|e| fail(&e))?;
                    meta.insert("purged", p.as_slice()).map_err(|e| fail(&e))?;
                }
            }
            tx.commit().map_err(|e| fail(&e))?;
            Ok(())
        })
        .await
    }
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
        self.blocking(move |db| {
            let fail =
                |e: &dyn std::error::Error| StorageIOError::read_logs(&Wrapped(e.to_string()));
            let tx = db.begin_read().map_err(|e| fail(&e))?;
            let table = match tx.open_table(LOG) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(fail(&e).into()),
            };
            let mut out = Vec::new();
            for row in table.range::<u64>(range).map_err(|e| fail(&e))? {
                let (_, v) = row.map_err(|e| fail(&e))?;
                out.push(serde_cbor::from_slice(v.value()).map_err(|e| fail(&e))?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let purged: Option<LogId> = self.meta("purged").await?;
        let last = self
            .blocking(|db| {
                let fail =
                    |e: &dyn std::error::Error| StorageIOError::read_logs(&Wrapped(e.to_string()));
                let tx = db.begin_read().map_err(|e| fail(&e))?;
                let table = match tx.open_table(LOG) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(e) => return Err(fail(&e).into()),
                };
                let last = match table.last().map_err(|e| fail(&e))? {
                    Some((_, v)) => {
                        let e: Entry = serde_cbor::from_slice(v.value()).map_err(|e| fail(&e))?;
                        Some(e.log_id)
                    }
                    None => None,
                };
                Ok(last)
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
        self.set_meta("vote", vote, |e| StorageIOError::write_vote(e))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>> {
        self.meta("vote").await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<()> {
        self.set_meta("committed", &committed, |e| StorageIOError::write_logs(e))
            .await
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
            .blocking(move |db| {
                let fail =
                    |e: &dyn std::error::Error| StorageIOError::write_logs(&Wrapped(e.to_string()));
                let tx = db.begin_write().map_err(|e| fail(&e))?;
                {
                    let mut log = tx.open_table(LOG).map_err(|e| fail(&e))?;
                    for (index, bytes) in &rows {
                        log.insert(*index, bytes.as_slice()).map_err(|e| fail(&e))?;
                    }
                }
                tx.commit().map_err(|e| fail(&e))?;
                Ok(())
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
