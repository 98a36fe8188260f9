//! Ingress: what a replica does with a request body before anything runs. The envelope is
//! decoded (CBOR, bounded), its request id computed over the content exactly as sent, the
//! expiry checked against the replica's clock, and the sender authenticated: the anonymous
//! principal with no signature, or a self-authenticating principal whose key (directly or
//! through a chain of at most 20 delegations, each unexpired and allowing this canister and
//! request kind) signed the request id.
//!
//! | attack | refused by |
//! |---|---|
//! | a body too large, too deep, not CBOR, not an envelope | [`IngressError::Malformed`], [`IngressError::TooLarge`] |
//! | a signature by another key, a sender that is not the key's principal | [`IngressError::Signature`], [`IngressError::SenderMismatch`] |
//! | a request replayed after its expiry, or with an expiry far ahead | [`IngressError::Expiry`] (replays before expiry are the replica's: it keeps request ids until they expire) |
//! | a delegation stretched beyond its expiry, targets or permissions | [`IngressError::Delegation`] |
//! | a signature with no key, a key with no signature | [`IngressError::MissingSignature`] |
//!
//! ```
//! // The anonymous sender needs no signature.
//! use ic_transport_types::{Envelope, EnvelopeContent};
//! let content = EnvelopeContent::Query {
//!     ingress_expiry: 1_000_000_000_000,
//!     sender: ic_principal::Principal::anonymous(),
//!     canister_id: ic_principal::Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 1, 1, 1]),
//!     method_name: "read".into(),
//!     arg: vec![],
//!     nonce: None,
//!     sender_info: None,
//! };
//! let body = Envelope { content: std::borrow::Cow::Borrowed(&content), sender_pubkey: None, sender_sig: None, sender_delegation: None }.encode_bytes();
//! let ok = ingress::authenticate(&body, 999_000_000_000, &ingress::Limits::default()).unwrap();
//! assert_eq!(ok.request_id, *content.to_request_id());
//! ```

mod hash;
mod keys;

pub use hash::{hash_value, HashError};
pub use ic_transport_types::{EnvelopeContent, SignedDelegation};
pub use keys::{ed25519_der, KeyError, PublicKey};

use ic_principal::Principal;
use serde::Deserialize;

/// The domain separators of request and delegation signatures.
const REQUEST_DOMAIN: &[u8] = b"\x0Aic-request";

/// Bounds on what a client may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Envelope bytes (the IC accepts 3.5 MiB of ingress; calls carry the argument).
    pub max_envelope_bytes: usize,
    pub max_delegations: usize,
    /// How far ahead of the replica's clock an expiry may be (the interface: 5 minutes).
    pub max_expiry_ahead_nanos: u64,
    /// Clock difference tolerated between client and replica.
    pub clock_drift_nanos: u64,
    pub max_nonce_bytes: usize,
    pub max_paths: usize,
    pub max_path_labels: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_envelope_bytes: 3_670_016,
            max_delegations: 20,
            max_expiry_ahead_nanos: 5 * 60 * 1_000_000_000,
            clock_drift_nanos: 30 * 1_000_000_000,
            max_nonce_bytes: 32,
            max_paths: 1000,
            max_path_labels: 127,
        }
    }
}

/// Why a request was refused before it ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    #[error("request body of {found} bytes exceeds the limit of {limit}")]
    TooLarge { found: usize, limit: usize },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("invalid request expiry: {0}")]
    Expiry(String),
    #[error("the sender {sender} is not the principal of the given public key ({derived})")]
    SenderMismatch { sender: String, derived: String },
    #[error("{0}")]
    MissingSignature(&'static str),
    #[error("invalid signature: {0}")]
    Signature(KeyError),
    #[error("invalid delegation {index}: {why}")]
    Delegation { index: usize, why: String },
}

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub request_id: [u8; 32],
    pub content: EnvelopeContent,
    pub sender: Principal,
}

#[derive(Deserialize)]
struct RawEnvelope {
    content: serde_cbor::Value,
    #[serde(default, with = "serde_bytes")]
    sender_pubkey: Option<Vec<u8>>,
    #[serde(default, with = "serde_bytes")]
    sender_sig: Option<Vec<u8>>,
    #[serde(default)]
    sender_delegation: Option<Vec<SignedDelegation>>,
}

/// Decode, check and authenticate one request body at `now_nanos`.
pub fn authenticate(
    body: &[u8],
    now_nanos: u64,
    limits: &Limits,
) -> Result<Authenticated, IngressError> {
    let raw = decode(body, limits)?;
    let request_id =
        hash_value(&raw.content).map_err(|e| IngressError::Malformed(format!("content: {e}")))?;
    let content: EnvelopeContent = serde_cbor::value::from_value(raw.content.clone())
        .map_err(|e| IngressError::Malformed(format!("content: {e}")))?;
    check_shape(&content, limits)?;
    check_expiry(content.ingress_expiry(), now_nanos, limits)?;
    let sender = *content.sender();
    authenticate_sender(&raw, &content, &request_id, now_nanos, limits)?;
    Ok(Authenticated {
        request_id,
        content,
        sender,
    })
}

fn decode(body: &[u8], limits: &Limits) -> Result<RawEnvelope, IngressError> {
    if body.len() > limits.max_envelope_bytes {
        return Err(IngressError::TooLarge {
            found: body.len(),
            limit: limits.max_envelope_bytes,
        });
    }
    serde_cbor::from_slice(body)
        .map_err(|e| IngressError::Malformed(format!("not a CBOR request envelope: {e}")))
}

fn check_shape(content: &EnvelopeContent, limits: &Limits) -> Result<(), IngressError> {
    let nonce = match content {
        EnvelopeContent::Call { nonce, .. } | EnvelopeContent::Query { nonce, .. } => {
            nonce.as_ref()
        }
        EnvelopeContent::ReadState { paths, .. } => {
            if paths.len() > limits.max_paths {
                return Err(IngressError::Malformed(format!(
                    "{} paths exceed the limit of {}",
                    paths.len(),
                    limits.max_paths
                )));
            }
            if let Some(p) = paths.iter().find(|p| p.len() > limits.max_path_labels) {
                return Err(IngressError::Malformed(format!(
                    "a path of {} labels exceeds the limit of {}",
                    p.len(),
                    limits.max_path_labels
                )));
            }
            None
        }
    };
    match nonce {
        Some(n) if n.len() > limits.max_nonce_bytes => Err(IngressError::Malformed(format!(
            "a nonce of {} bytes exceeds the limit of {}",
            n.len(),
            limits.max_nonce_bytes
        ))),
        _ => Ok(()),
    }
}

fn check_expiry(expiry: u64, now: u64, limits: &Limits) -> Result<(), IngressError> {
    let earliest = now.saturating_sub(limits.clock_drift_nanos);
    let latest = now
        .saturating_add(limits.max_expiry_ahead_nanos)
        .saturating_add(limits.clock_drift_nanos);
    if expiry < earliest {
        return Err(IngressError::Expiry(format!(
            "the request expired at {expiry} ns, {} s before the replica's time {now} ns",
            (now - expiry) / 1_000_000_000
        )));
    }
    if expiry > latest {
        return Err(IngressError::Expiry(format!(
            "expiry {expiry} ns is more than {} s after the replica's time {now} ns",
            (limits.max_expiry_ahead_nanos + limits.clock_drift_nanos) / 1_000_000_000
        )));
    }
    Ok(())
}

fn authenticate_sender(
    raw: &RawEnvelope,
    content: &EnvelopeContent,
    request_id: &[u8; 32],
    now: u64,
    limits: &Limits,
) -> Result<(), IngressError> {
    let sender = content.sender();
    let (Some(pubkey), Some(sig)) = (&raw.sender_pubkey, &raw.sender_sig) else {
        if raw.sender_pubkey.is_some() || raw.sender_sig.is_some() {
            return Err(IngressError::MissingSignature(
                "a sender public key needs a signature and a signature needs a public key",
            ));
        }
        if *sender == Principal::anonymous() {
            return Ok(());
        }
        return Err(IngressError::MissingSignature(
            "a request from a non-anonymous sender must be signed",
        ));
    };
    let derived = Principal::self_authenticating(pubkey);
    if derived != *sender {
        return Err(IngressError::SenderMismatch {
            sender: sender.to_text(),
            derived: derived.to_text(),
        });
    }
    let signer = follow_delegations(
        pubkey,
        raw.sender_delegation.as_deref().unwrap_or_default(),
        content,
        now,
        limits,
    )?;
    let message = [REQUEST_DOMAIN, &request_id[..]].concat();
    PublicKey::from_der(&signer)
        .and_then(|k| k.verify(&message, sig))
        .map_err(IngressError::Signature)
}

/// Walk a delegation chain from the sender's key; the key that must sign the request.
fn follow_delegations(
    sender_key: &[u8],
    chain: &[SignedDelegation],
    content: &EnvelopeContent,
    now: u64,
    limits: &Limits,
) -> Result<Vec<u8>, IngressError> {
    if chain.len() > limits.max_delegations {
        return Err(IngressError::Delegation {
            index: limits.max_delegations,
            why: format!(
                "a chain of {} delegations exceeds the limit of {}",
                chain.len(),
                limits.max_delegations
            ),
        });
    }
    let mut key = sender_key.to_vec();
    let mut seen = vec![key.clone()];
    for (index, d) in chain.iter().enumerate() {
        let err = |why: String| IngressError::Delegation { index, why };
        PublicKey::from_der(&key)
            .and_then(|k| k.verify(&d.delegation.signable(), &d.signature))
            .map_err(|e| err(e.to_string()))?;
        if d.delegation.expiration < now {
            return Err(err(format!(
                "expired at {} ns, before the replica's time {now} ns",
                d.delegation.expiration
            )));
        }
        check_targets(&d.delegation, content).map_err(err)?;
        if seen.contains(&d.delegation.pubkey) {
            return Err(err("a key appears twice in the chain".into()));
        }
        key = d.delegation.pubkey.clone();
        seen.push(key.clone());
    }
    Ok(key)
}

fn check_targets(
    d: &ic_transport_types::Delegation,
    content: &EnvelopeContent,
) -> Result<(), String> {
    use ic_transport_types::DelegationPermissions;
    if let (
        Some(targets),
        EnvelopeContent::Call { canister_id, .. } | EnvelopeContent::Query { canister_id, .. },
    ) = (&d.targets, content)
    {
        if !targets.contains(canister_id) {
            return Err(format!("canister {canister_id} is not among its targets"));
        }
    }
    if d.permissions == Some(DelegationPermissions::Queries)
        && matches!(content, EnvelopeContent::Call { .. })
    {
        return Err("it permits queries and read_state only, and this is a call".into());
    }
    Ok(())
}
