//! Queries: executed on the canister's current memory (nothing kept), answered with the
//! node's Ed25519 signature over the response, as agents verify by default.

use crate::state::Reject;
use crate::{answer, canister, context, no_module, Replica, RequestError};
use canister_runtime::{Context, Entry};
use ed25519_dalek::Signer;
use ic_principal::Principal;
use ingress::EnvelopeContent;
use serde_cbor::Value;
use std::collections::BTreeMap;

/// The system API that reads a query's data certificate.
const DATA_CERTIFICATE_API: [&str; 3] = [
    "data_certificate_present",
    "data_certificate_size",
    "data_certificate_copy",
];

/// The domain separator of a response signature.
const RESPONSE_DOMAIN: &[u8] = b"\x0Bic-response";
pub(crate) fn node_public_der(key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    ingress::ed25519_der(key.verifying_key().as_bytes())
}

/// A query's answer, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryAnswer {
    pub outcome: Result<Vec<u8>, Reject>,
    pub timestamp: u64,
    pub signature: Vec<u8>,
    pub identity: Principal,
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

/// The response fields that are both sent and signed.
fn fields(outcome: &Result<Vec<u8>, Reject>) -> BTreeMap<Value, Value> {
    let mut m = BTreeMap::new();
    match outcome {
        Ok(reply) => {
            m.insert(text("status"), text("replied"));
            let arg = BTreeMap::from([(text("arg"), Value::Bytes(reply.clone()))]);
            m.insert(text("reply"), Value::Map(arg));
        }
        Err(r) => {
            m.insert(text("status"), text("rejected"));
            m.insert(text("reject_code"), Value::Integer(r.code.into()));
            m.insert(text("reject_message"), text(&r.message));
            m.insert(text("error_code"), text(&r.error_code));
        }
    }
    m
}

impl QueryAnswer {
    /// The response body (CBOR, self-described).
    pub fn to_cbor(&self) -> Vec<u8> {
        let mut m = fields(&self.outcome);
        let sig = BTreeMap::from([
            (text("timestamp"), Value::Integer(self.timestamp.into())),
            (text("signature"), Value::Bytes(self.signature.clone())),
            (
                text("identity"),
                Value::Bytes(self.identity.as_slice().to_vec()),
            ),
        ]);
        m.insert(text("signatures"), Value::Array(vec![Value::Map(sig)]));
        certified_state::to_cbor(&Value::Map(m)).expect("a CBOR value encodes")
    }
}

impl Replica {
    /// A query to `effective` (the canister in the URL).
    pub fn query(&self, body: &[u8], effective: &Principal) -> Result<QueryAnswer, RequestError> {
        let now = self.now();
        let auth = ingress::authenticate(body, now, &self.config.ingress)?;
        let EnvelopeContent::Query {
            canister_id,
            method_name,
            arg,
            ..
        } = &auth.content
        else {
            return Err(RequestError::BadRequest(
                "the request to /query is not a query (request_type must be \"query\")".into(),
            ));
        };
        let outcome = if *canister_id == Principal::management_canister() {
            self.management_query(&auth.sender, method_name, arg, effective, now)
        } else if canister_id != effective {
            Err(Reject::new(
                3,
                "IC0301",
                format!("the query is for canister {canister_id} but was sent to {effective}"),
            ))
        } else {
            self.run_query(&auth.sender, canister_id, method_name, arg, now)
        };
        self.sign(outcome, &auth.request_id, now)
    }

    fn management_query(
        &self,
        sender: &Principal,
        method: &str,
        arg: &[u8],
        effective: &Principal,
        now: u64,
    ) -> Result<Vec<u8>, Reject> {
        match crate::management::target(method, arg) {
            Some(t) if t != *effective => {
                return Err(Reject::new(
                    3,
                    "IC0301",
                    format!(
                    "the query to the management canister is about {t} but was sent to {effective}"
                ),
                ))
            }
            _ => {}
        }
        let state = self.lock();
        crate::management::query(
            &state,
            &crate::management::Call {
                runtime: &self.runtime,
                sender: *sender,
                method,
                arg,
                now,
                range: self.config.canister_range,
            },
        )
    }

    fn run_query(
        &self,
        sender: &Principal,
        id: &Principal,
        method: &str,
        arg: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, Reject> {
        // What the query needs is taken under the lock; it runs outside it, so queries run
        // side by side and never wait for one another.
        let mut state = self.lock();
        let installed = canister(&state, id)?
            .code
            .clone()
            .ok_or_else(|| no_module(id))?;
        // A BLS signature per query is the expensive part: only for modules that read it.
        let reads_certificate = DATA_CERTIFICATE_API
            .iter()
            .any(|name| installed.code.imports(name));
        let data_certificate = if reads_certificate {
            let cert_path = vec![
                b"canister".to_vec(),
                id.as_slice().to_vec(),
                b"certified_data".to_vec(),
            ];
            self.certificate(&mut state, &[cert_path], now).ok()
        } else {
            None
        };
        let c = canister(&state, id)?;
        let ctx = Context {
            data_certificate,
            ..context(c, sender, arg, now)
        };
        let memory = c.memory.clone();
        drop(state);
        let e = self
            .runtime
            .execute(&installed.code, &memory, &Entry::Query(method.into()), &ctx)
            .map_err(|e| Reject::new(1, "IC0502", e.to_string()))?;
        answer(id, e.outcome)
    }

    fn sign(
        &self,
        outcome: Result<Vec<u8>, Reject>,
        request_id: &[u8; 32],
        now: u64,
    ) -> Result<QueryAnswer, RequestError> {
        sign_answer(
            &self.config.node_key,
            self.config.node_id,
            outcome,
            request_id,
            now,
        )
    }
}

/// Sign a query's response as node `node_id`: Ed25519 over the domain and the hash of the
/// response map with the timestamp and the request id. Public so tests can play a node that
/// signs what it likes (a node's signature vouches only for what that node said).
pub fn sign_answer(
    node_key: &ed25519_dalek::SigningKey,
    node_id: Principal,
    outcome: Result<Vec<u8>, Reject>,
    request_id: &[u8; 32],
    now: u64,
) -> Result<QueryAnswer, RequestError> {
    let mut m = fields(&outcome);
    m.insert(text("timestamp"), Value::Integer(now.into()));
    m.insert(text("request_id"), Value::Bytes(request_id.to_vec()));
    let hash = ingress::hash_value(&Value::Map(m))
        .map_err(|e| RequestError::Internal(format!("hashing the response: {e}")))?;
    let signature = node_key.sign(&[RESPONSE_DOMAIN, &hash[..]].concat());
    Ok(QueryAnswer {
        outcome,
        timestamp: now,
        signature: signature.to_bytes().to_vec(),
        identity: node_id,
    })
}
