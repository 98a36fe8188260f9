//! The replica as the state machine of its subnet's ordered log ([`replication`]): every
//! committed entry is one [`Batch`] (CBOR), executed by [`Replica::execute_ordered`] with the
//! entry's position checkpointed alongside the state it produced; the answer is the height
//! and state root after it, which every member reaches alike.

use crate::{Batch, Replica};
use replication::{AppError, StateMachine};
use std::sync::Arc;

/// What a batch came to, as the leader answers it: the same on every node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchDone {
    pub height: u64,
    #[serde(with = "serde_bytes")]
    pub root: [u8; 32],
}

/// Why a committed entry could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum OrderedError {
    #[error("entry {0}: not a batch: {1}")]
    NotABatch(String, serde_cbor::Error),
    #[error("the state could not be made durable: {0}")]
    Durable(crate::RequestError),
    #[error("this replica cannot hand over or take up a whole state yet: a member that lacks the log behind the state catches up only from the log")]
    NoStateTransfer,
}

/// The adapter: one replica, driven by the log.
pub struct Ordered(pub Arc<Replica>);

/// The bytes of one log entry for `batch`.
pub fn encode(batch: &Batch) -> Vec<u8> {
    serde_cbor::to_vec(batch).expect("a batch always encodes")
}

impl StateMachine for Ordered {
    fn apply(&self, command: Option<&[u8]>, position: &[u8]) -> Result<Vec<u8>, AppError> {
        let batch = command
            .map(|c| {
                serde_cbor::from_slice::<Batch>(c)
                    .map_err(|e| OrderedError::NotABatch(format!("{} bytes", c.len()), e))
            })
            .transpose()?;
        self.0
            .execute_ordered(batch.as_ref(), position)
            .map_err(OrderedError::Durable)?;
        let (height, root) = self.0.state_root();
        Ok(serde_cbor::to_vec(&BatchDone { height, root })?)
    }

    fn position(&self) -> Option<Vec<u8>> {
        self.0.position()
    }

    fn snapshot(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), AppError> {
        Err(OrderedError::NoStateTransfer.into())
    }

    fn restore(&self, _state: &[u8], _position: &[u8]) -> Result<(), AppError> {
        Err(OrderedError::NoStateTransfer.into())
    }
}
