//! Calls to a registry server's write and listing endpoints (proposals, votes,
//! registrations, snapshots). Errors carry the server's own explanation.

use crate::ClientError;
use registry_model::api::{ProposalRecord, ProposalSummary};
use registry_model::{
    keys, Action, ProposalBody, Registry, SignedProposal, SignedRegistration, SignedVote,
};
use serde::de::DeserializeOwned;
use std::io::Read;
use std::time::Duration;

const MAX_ANSWER: u64 = 64 << 20;

pub struct Api {
    base: String,
    agent: ureq::Agent,
}

#[derive(Debug, serde::Deserialize)]
pub struct Registered {
    pub node_id: String,
    pub version: u64,
}

#[derive(Debug, serde::Deserialize)]
pub struct Snapshot {
    pub version: u64,
    pub registry: Registry,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .build(),
        }
    }

    fn answer<T: DeserializeOwned>(
        &self,
        url: &str,
        r: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, ClientError> {
        let resp = match r {
            Ok(resp) => resp,
            Err(ureq::Error::Status(code, resp)) => {
                let mut body = String::new();
                let _ = resp.into_reader().take(64 * 1024).read_to_string(&mut body);
                let msg = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or(body);
                return Err(ClientError::Fetch {
                    url: url.to_string(),
                    message: format!("HTTP {code}: {msg}"),
                });
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(ClientError::Fetch {
                    url: url.to_string(),
                    message: t.to_string(),
                })
            }
        };
        let mut buf = Vec::new();
        resp.into_reader()
            .take(MAX_ANSWER)
            .read_to_end(&mut buf)
            .map_err(|e| ClientError::Fetch {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        serde_json::from_slice(&buf).map_err(|e| ClientError::Malformed {
            url: url.to_string(),
            message: e.to_string(),
        })
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self
            .agent
            .post(&url)
            .set("Content-Type", "application/json")
            .send_bytes(&serde_json::to_vec(body).expect("serializes"));
        self.answer(&url, r)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self.agent.get(&url).call();
        self.answer(&url, r)
    }

    pub fn submit_proposal(&self, p: &SignedProposal) -> Result<ProposalRecord, ClientError> {
        self.post("/v1/proposals", p)
    }

    pub fn vote(&self, id: u64, v: &SignedVote) -> Result<ProposalRecord, ClientError> {
        self.post(&format!("/v1/proposals/{id}/votes"), v)
    }

    pub fn register(&self, r: &SignedRegistration) -> Result<Registered, ClientError> {
        self.post("/v1/registrations", r)
    }

    pub fn proposals(&self) -> Result<Vec<ProposalSummary>, ClientError> {
        self.get("/v1/proposals")
    }

    pub fn proposal(&self, id: u64) -> Result<ProposalRecord, ClientError> {
        self.get(&format!("/v1/proposals/{id}"))
    }

    /// Make, sign and submit a proposal on top of the server's current head, as the neuron
    /// whose key `key` is. The server's word on the head only places the proposal (network,
    /// base version, expiry): a wrong word makes a proposal the chain refuses, nothing worse.
    pub fn propose(
        &self,
        key: &keys::SecretKey,
        title: &str,
        action: Action,
    ) -> Result<ProposalRecord, ClientError> {
        let snap = self.snapshot(None)?;
        let pk = keys::public_hex(key);
        let neuron = snap
            .registry
            .neurons
            .values()
            .find(|n| n.public_key == pk)
            .map(|n| n.id)
            .ok_or(ClientError::NotANeuron { public_key: pk })?;
        let title = if title.is_empty() {
            action.kind()
        } else {
            title
        };
        let body = ProposalBody::new(
            &snap.registry,
            snap.version,
            neuron,
            title.to_string(),
            action,
            crate::now(),
        )
        .map_err(ClientError::Model)?;
        self.submit_proposal(&SignedProposal::sign(body, key))
    }

    /// The registry at a version (the server's word: use [`crate::Client`] to verify).
    pub fn snapshot(&self, at: Option<u64>) -> Result<Snapshot, ClientError> {
        match at {
            Some(v) => self.get(&format!("/v1/snapshot?at={v}")),
            None => self.get("/v1/snapshot"),
        }
    }
}
