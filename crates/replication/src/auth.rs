//! Who may speak on the peer routes: only the members the node was told to trust (the
//! subnet's nodes, from the verified registry), each proving it with its node key.
//!
//! Every peer request carries `x-raft-from` (the sender's member id), `x-raft-time` (Unix
//! milliseconds) and `x-raft-signature`: Ed25519 over the domain `icos-raft-v1`, the path,
//! the sender, the time and the body's SHA-256. A request whose sender is unknown, whose
//! signature does not verify, or whose time is more than [`SKEW`] from the receiver's clock
//! is refused with 401 and never reaches openraft. A replay inside that window repeats a
//! message the sender did send; Raft's messages carry their term and log position, so a
//! repeated one changes nothing (openraft treats duplicates as it treats a resend).

use axum::body::Bytes;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How far a peer's clock may be from ours.
pub const SKEW: Duration = Duration::from_secs(30);

pub const FROM: &str = "x-raft-from";
pub const TIME: &str = "x-raft-time";
pub const SIGNATURE: &str = "x-raft-signature";

/// Why a peer request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no {0} header")]
    Missing(&'static str),
    #[error("{0} is not well-formed")]
    Malformed(&'static str),
    #[error("member {0} is not one this node trusts")]
    Unknown(u64),
    #[error("the request's time is {0} ms from this node's clock (at most {max} ms)", max = SKEW.as_millis())]
    Stale(u64),
    #[error("the signature does not verify with member {0}'s key")]
    BadSignature(u64),
}

/// This node's key and the keys of the members it trusts; shared by its client and its
/// server, and updated when the subnet's record changes.
#[derive(Clone)]
pub struct Identity {
    id: u64,
    key: Arc<SigningKey>,
    trusted: Arc<RwLock<BTreeMap<u64, VerifyingKey>>>,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn message(path: &str, from: u64, time: u64, body: &[u8]) -> Vec<u8> {
    let mut m = b"icos-raft-v1\0".to_vec();
    m.extend_from_slice(path.as_bytes());
    m.push(0);
    m.extend_from_slice(&from.to_be_bytes());
    m.extend_from_slice(&time.to_be_bytes());
    m.extend_from_slice(&Sha256::digest(body));
    m
}

impl Identity {
    /// Member `id` holding `key`, trusting `members` (id → Ed25519 public key; its own is
    /// added).
    pub fn new(id: u64, key: SigningKey, members: BTreeMap<u64, [u8; 32]>) -> Identity {
        let me = Identity {
            id,
            key: Arc::new(key),
            trusted: Arc::default(),
        };
        me.trust(members);
        me
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Trust exactly `members` (and this node) from now on. A key that does not parse is
    /// left out and logged: that member cannot speak until its record is fixed.
    pub fn trust(&self, members: BTreeMap<u64, [u8; 32]>) {
        let mut keys = BTreeMap::new();
        for (id, k) in members {
            match VerifyingKey::from_bytes(&k) {
                Ok(v) => {
                    keys.insert(id, v);
                }
                Err(e) => tracing::warn!(member = id, "not an Ed25519 public key: {e}"),
            }
        }
        keys.insert(self.id, self.key.verifying_key());
        *self.trusted.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// The headers that prove this node sent `body` to `path` now.
    pub fn sign(&self, path: &str, body: &[u8]) -> [(&'static str, String); 3] {
        let time = unix_ms();
        let sig = self.key.sign(&message(path, self.id, time, body));
        [
            (FROM, self.id.to_string()),
            (TIME, time.to_string()),
            (SIGNATURE, hex::encode(sig.to_bytes())),
        ]
    }

    /// Check a request to `path` with `headers` and `body`: the sender when it holds.
    pub fn check(
        &self,
        path: &str,
        headers: &axum::http::HeaderMap,
        body: &Bytes,
    ) -> Result<u64, AuthError> {
        let get = |name: &'static str| {
            headers
                .get(name)
                .ok_or(AuthError::Missing(name))?
                .to_str()
                .map_err(|_| AuthError::Malformed(name))
        };
        let from: u64 = get(FROM)?.parse().map_err(|_| AuthError::Malformed(FROM))?;
        let time: u64 = get(TIME)?.parse().map_err(|_| AuthError::Malformed(TIME))?;
        let sig: [u8; 64] = hex::decode(get(SIGNATURE)?)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AuthError::Malformed(SIGNATURE))?;
        let key = *self
            .trusted
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&from)
            .ok_or(AuthError::Unknown(from))?;
        let off = unix_ms().abs_diff(time);
        if off > SKEW.as_millis() as u64 {
            return Err(AuthError::Stale(off));
        }
        key.verify(
            &message(path, from, time, body),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| AuthError::BadSignature(from))?;
        Ok(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(h: &[(&'static str, String)]) -> axum::http::HeaderMap {
        h.iter()
            .map(|(k, v)| (axum::http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn only_a_trusted_member_signing_this_path_and_body_now_passes() {
        let a = SigningKey::from_bytes(&[1; 32]);
        let b = SigningKey::from_bytes(&[2; 32]);
        let outsider = SigningKey::from_bytes(&[3; 32]);
        let members: BTreeMap<u64, [u8; 32]> = [(2, b.verifying_key().to_bytes())].into();
        let me = Identity::new(1, a, members);
        let peer = Identity::new(2, b, BTreeMap::new());
        let body = Bytes::from_static(b"entries");
        let h = headers(&peer.sign("/raft/append", &body));
        assert_eq!(me.check("/raft/append", &h, &body), Ok(2));
        // Another path or body: the signature no longer covers it.
        assert_eq!(
            me.check("/raft/vote", &h, &body),
            Err(AuthError::BadSignature(2))
        );
        assert_eq!(
            me.check("/raft/append", &h, &Bytes::from_static(b"other")),
            Err(AuthError::BadSignature(2))
        );
        // An outsider, under its own id or a member's.
        let o = Identity::new(9, outsider.clone(), BTreeMap::new());
        let h9 = headers(&o.sign("/raft/append", &body));
        assert_eq!(
            me.check("/raft/append", &h9, &body),
            Err(AuthError::Unknown(9))
        );
        let posing = Identity::new(2, outsider, BTreeMap::new());
        let hp = headers(&posing.sign("/raft/append", &body));
        assert_eq!(
            me.check("/raft/append", &hp, &body),
            Err(AuthError::BadSignature(2))
        );
        // An old message.
        let mut old = peer.sign("/raft/append", &body);
        let t: u64 = old[1].1.parse().unwrap();
        old[1].1 = (t - 60_000).to_string();
        assert!(matches!(
            me.check("/raft/append", &headers(&old), &body),
            Err(AuthError::Stale(_))
        ));
        // Nothing, or garbage.
        assert_eq!(
            me.check("/raft/append", &headers(&[]), &body),
            Err(AuthError::Missing(FROM))
        );
        let mut bad = peer.sign("/raft/append", &body);
        bad[2].1 = "zz".into();
        assert_eq!(
            me.check("/raft/append", &headers(&bad), &body),
            Err(AuthError::Malformed(SIGNATURE))
        );
        // A member taken out is no longer heard.
        me.trust(BTreeMap::new());
        assert_eq!(
            me.check("/raft/append", &h, &body),
            Err(AuthError::Unknown(2))
        );
    }
}
