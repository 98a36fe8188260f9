//! The replica as the state machine of its subnet's ordered log ([`replication`]): every
//! committed entry is one [`Batch`] (CBOR), executed by [`Replica::execute_ordered`] with the
//! entry's position checkpointed alongside the state it produced; the answer is the height
//! and state root after it, which every member reaches alike.
//!
//! [`call`] is an ingress call on a node of such a subnet: checked here, ordered through
//! whichever node leads, executed by every node, and answered from this node's state once it
//! has applied the call's entry, so a call may enter through any node.

use crate::{Batch, CallAnswer, Checked, Executed, Ingress, Reject, Replica, RequestError};
use ic_principal::Principal;
use replication::{AppError, Replicated, ReplicationError, StateMachine};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What a batch came to, as the leader answers it: the same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchDone {
    pub height: u64,
    #[serde(with = "serde_bytes")]
    pub root: [u8; 32],
    /// What each message came to, in the batch's order.
    #[serde(default)]
    pub messages: Vec<MessageDone>,
}

/// What one message of a batch came to ([`Executed`] without its request id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageDone {
    Recorded,
    Duplicate,
    NotExecuted {
        code: u64,
        error_code: String,
        message: String,
    },
    Invalid(String),
}

impl From<&Executed> for MessageDone {
    fn from(e: &Executed) -> MessageDone {
        match e {
            Executed::Recorded(_) => MessageDone::Recorded,
            Executed::Duplicate(_) => MessageDone::Duplicate,
            Executed::NotExecuted(r) => MessageDone::NotExecuted {
                code: r.code,
                error_code: r.error_code.clone(),
                message: r.message.clone(),
            },
            Executed::Invalid(why) => MessageDone::Invalid(why.clone()),
        }
    }
}

/// Why a committed entry could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum OrderedError {
    #[error("entry {0}: not a batch: {1}")]
    NotABatch(String, serde_cbor::Error),
    #[error("the state could not be made durable: {0}")]
    Durable(crate::RequestError),
    #[error("state transfer: {0}")]
    Transfer(#[from] crate::transfer::TransferError),
}

/// The adapter: one replica, driven by the log, and the roots its recent entries left (the
/// subnet's members compare them: [`crate::compare`]).
pub struct Ordered {
    pub replica: Arc<Replica>,
    pub(crate) roots: crate::compare::Roots,
    /// The log's node, once started: whom a snapshot's pieces are fetched through.
    node: std::sync::OnceLock<Replicated>,
    /// Snapshots taken up since start.
    taken_up: std::sync::atomic::AtomicU64,
}

impl Ordered {
    /// Drive `replica` by the log; its current root (at the position it was opened at) is the
    /// first one it can be compared by.
    pub fn new(replica: Arc<Replica>) -> Ordered {
        let roots = crate::compare::Roots::default();
        if let Some(index) = replica
            .position()
            .and_then(|p| replication::applied_index_of(&p))
        {
            roots.record(index, replica.state_root().1);
        }
        Ordered {
            replica,
            roots,
            node: std::sync::OnceLock::new(),
            taken_up: Default::default(),
        }
    }

    /// How many snapshots this node took up since it started.
    pub fn taken_up(&self) -> u64 {
        self.taken_up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The log's node driving this state (set once, by [`crate::subnet::peer_routes`]
    /// before they are served): a snapshot is taken up through it.
    pub fn attach(&self, node: Replicated) {
        let _ = self.node.set(node);
    }
}

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
        let executed = self
            .replica
            .execute_ordered(batch.as_ref(), position)
            .map_err(OrderedError::Durable)?;
        let (height, root) = self.replica.state_root();
        if let Some(index) = replication::applied_index_of(position) {
            self.roots.record(index, root);
        }
        Ok(serde_cbor::to_vec(&BatchDone {
            height,
            root,
            messages: executed.iter().map(MessageDone::from).collect(),
        })?)
    }

    fn position(&self) -> Option<Vec<u8>> {
        self.replica.position()
    }

    fn snapshot(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), AppError> {
        Ok(self.replica.snapshot().map_err(OrderedError::from)?)
    }

    /// Runs on a blocking thread of the engine's runtime: the pieces are fetched from the
    /// members through it.
    fn restore(&self, state: &[u8], position: &[u8]) -> Result<(), AppError> {
        use crate::transfer::{Members, TransferError};
        let node = self.node.get().ok_or(TransferError::NotAttached)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| TransferError::NoRuntime)?;
        let mut members = Members::new(node.clone(), handle, position);
        let root = self
            .replica
            .take_up(state, position, &mut members)
            .map_err(OrderedError::from)?;
        if let Some(index) = replication::applied_index_of(position) {
            self.roots.record(index, root);
        }
        self.taken_up
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            member = node.id(),
            root = hex::encode(root),
            "took up the subnet's state"
        );
        Ok(())
    }
}

/// Run `f` on the blocking pool (Wasm and signing never stall the server's tasks).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RequestError> + Send + 'static,
) -> Result<T, RequestError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        RequestError::Internal(format!("the request failed inside the replica: {e}"))
    })?
}

fn unordered(e: ReplicationError) -> RequestError {
    RequestError::Unavailable(format!(
        "the subnet did not order the call ({e}); sending the same request again is safe: a call is never executed twice"
    ))
}

/// How long a call whose proposal went down with its leader is proposed again.
const PROPOSE_AGAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Order `batch`, proposing it again when the leader it went to could not be reached or
/// answer (it rebooted or crashed, perhaps with the proposal in hand). Safe because the replica executes
/// a request id once: a batch ordered twice is answered the second time as `Duplicate`, from
/// the first one's record.
async fn propose(node: &Replicated, batch: Vec<u8>) -> Result<replication::Proposed, RequestError> {
    let deadline = tokio::time::Instant::now() + PROPOSE_AGAIN_WITHIN;
    loop {
        match node.propose(batch.clone()).await {
            // (A proposal that found no leader has already waited for an election.)
            Err(e @ ReplicationError::NoLeader(_)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("proposing a call again: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            other => return other.map_err(unordered),
        }
    }
}

/// An ingress call to `effective` through `node`, a member of the subnet: checked at this
/// node's time, ordered as a batch of its own, and answered from this node's state once it
/// has applied that batch.
pub async fn call(
    replica: Arc<Replica>,
    node: &Replicated,
    body: Vec<u8>,
    effective: Principal,
) -> Result<CallAnswer, RequestError> {
    let check = || {
        let (r, b) = (replica.clone(), body.clone());
        blocking(move || r.check_call(&b, &effective))
    };
    let mut checked = check().await?;
    if matches!(checked, Checked::Answered(CallAnswer::NotExecuted(_))) {
        // Refused by this node's state, which may lag the subnet's (a canister installed
        // through another node a moment ago): catch up with what is committed, ask again.
        if node.read_barrier().await.is_ok() {
            checked = check().await?;
        }
    }
    let (request_id, time_ns) = match checked {
        Checked::Answered(a) => return Ok(a),
        Checked::Admitted {
            request_id,
            time_ns,
        } => (request_id, time_ns),
    };
    let batch = Batch {
        time_ns,
        messages: vec![Ingress { body, effective }],
    };
    let proposed = propose(node, encode(&batch)).await?;
    let done: BatchDone = serde_cbor::from_slice(&proposed.answer).map_err(|e| {
        RequestError::Internal(format!(
            "the subnet's answer to the call is not a batch's: {e}"
        ))
    })?;
    node.wait_applied(proposed.index).await.map_err(unordered)?;
    match done.messages.into_iter().next() {
        Some(MessageDone::Recorded | MessageDone::Duplicate) => {
            blocking(move || replica.call_answer(&request_id)).await
        }
        Some(MessageDone::NotExecuted {
            code,
            error_code,
            message,
        }) => Ok(CallAnswer::NotExecuted(Reject {
            code,
            error_code,
            message,
        })),
        Some(MessageDone::Invalid(why)) => Err(RequestError::BadRequest(why)),
        None => Err(RequestError::Internal(
            "the subnet answered the call's batch without its message".into(),
        )),
    }
}
