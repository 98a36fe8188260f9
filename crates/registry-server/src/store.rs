//! Durable storage in one redb file: the change log (version → canonical change bytes) and
//! proposal records. Every write is one transaction committed with fsync: a `kill -9` at any
//! moment leaves either the old or the new state, never half of a change.

use crate::ServerError;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
pub use registry_model::api::{ProposalRecord, ProposalStatus};
use std::path::Path;

const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const PROPOSALS: TableDefinition<u64, &[u8]> = TableDefinition::new("proposals");

pub struct Store {
    db: Database,
}

fn db_err(e: impl std::fmt::Display) -> ServerError {
    ServerError::Storage(e.to_string())
}

impl Store {
    /// Create a new store holding only the genesis change.
    pub fn create(path: &Path, genesis: &[u8]) -> Result<Store, ServerError> {
        if path.exists() {
            return Err(ServerError::Storage(format!(
                "{} already exists; refusing to overwrite a registry",
                path.display()
            )));
        }
        let db = Database::create(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(CHANGES).map_err(db_err)?;
            t.insert(1u64, genesis).map_err(db_err)?;
            tx.open_table(PROPOSALS).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    pub fn open(path: &Path) -> Result<Store, ServerError> {
        if !path.exists() {
            return Err(ServerError::Storage(format!(
                "{} does not exist (run `icos registry init` first)",
                path.display()
            )));
        }
        let db = Database::open(path).map_err(db_err)?;
        Ok(Store { db })
    }

    pub fn head_version(&self) -> Result<u64, ServerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CHANGES).map_err(db_err)?;
        t.len().map_err(db_err)
    }

    /// Canonical bytes of changes `from..=to` (clamped to what exists).
    pub fn changes(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>, ServerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CHANGES).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.range(from..=to).map_err(db_err)? {
            let (_, v) = item.map_err(db_err)?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    pub fn proposal(&self, id: u64) -> Result<Option<ProposalRecord>, ServerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(PROPOSALS).map_err(db_err)?;
        match t.get(id).map_err(db_err)? {
            None => Ok(None),
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(db_err)?)),
        }
    }

    pub fn proposals(&self) -> Result<Vec<ProposalRecord>, ServerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(PROPOSALS).map_err(db_err)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (_, v) = item.map_err(db_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(db_err)?);
        }
        Ok(out)
    }

    pub fn next_proposal_id(&self) -> Result<u64, ServerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(PROPOSALS).map_err(db_err)?;
        let last = t
            .last()
            .map_err(db_err)?
            .map(|(k, _)| k.value())
            .unwrap_or(0);
        Ok(last + 1)
    }

    /// Write proposal records and, if given, append one change: all in one transaction.
    pub fn commit(
        &self,
        records: &[&ProposalRecord],
        change: Option<(u64, &[u8])>,
    ) -> Result<(), ServerError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut p = tx.open_table(PROPOSALS).map_err(db_err)?;
            for r in records {
                let bytes = serde_json::to_vec(r).map_err(db_err)?;
                p.insert(r.id, bytes.as_slice()).map_err(db_err)?;
            }
            if let Some((version, bytes)) = change {
                let mut c = tx.open_table(CHANGES).map_err(db_err)?;
                let head = c.len().map_err(db_err)?;
                if version != head + 1 {
                    return Err(ServerError::Storage(format!(
                        "appending version {version} after {head}"
                    )));
                }
                c.insert(version, bytes).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }
}
