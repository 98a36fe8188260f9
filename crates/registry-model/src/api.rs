//! Types of the registry server's HTTP API, shared by the server and its clients.

use crate::{SignedProposal, SignedVote, Tally};

/// Changes per published segment: `v1/segments/<k>.json` holds versions `k*64+1 ..= k*64+64`.
/// Servers publish and clients fetch by it.
pub const SEGMENT: u64 = 64;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum ProposalStatus {
    Open,
    Adopted {
        version: u64,
    },
    Rejected,
    Expired,
    /// Adopted, but the action no longer applied to the registry when it was executed.
    Failed {
        reason: String,
    },
}

impl std::fmt::Display for ProposalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposalStatus::Open => write!(f, "open"),
            ProposalStatus::Adopted { version } => {
                write!(f, "adopted (registry version {version})")
            }
            ProposalStatus::Rejected => write!(f, "rejected"),
            ProposalStatus::Expired => write!(f, "expired"),
            ProposalStatus::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalRecord {
    pub id: u64,
    pub proposal: SignedProposal,
    pub votes: Vec<SignedVote>,
    pub submitted_at: u64,
    pub deadline: u64,
    pub status: ProposalStatus,
    pub tally: Tally,
}

/// Summary of a proposal for listings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProposalSummary {
    pub id: u64,
    pub kind: String,
    pub title: String,
    pub status: ProposalStatus,
    pub yes: u64,
    pub no: u64,
    pub total: u64,
    pub deadline: u64,
}

impl From<&ProposalRecord> for ProposalSummary {
    fn from(r: &ProposalRecord) -> Self {
        ProposalSummary {
            id: r.id,
            kind: r.proposal.body.action.kind().to_string(),
            title: r.proposal.body.title.clone(),
            status: r.status.clone(),
            yes: r.tally.yes,
            no: r.tally.no,
            total: r.tally.total,
            deadline: r.deadline,
        }
    }
}
