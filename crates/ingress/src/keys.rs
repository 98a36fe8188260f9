//! Sender public keys (DER, as agents send them) and their signatures: Ed25519, and ECDSA on
//! secp256k1 and on P-256, each over SHA-256 of the message as the interface defines.

/// DER heads of the key kinds we accept; the raw key follows.
pub(crate) const ED25519: &[u8] = &[
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
const SECP256K1: &[u8] = &[
    0x30, 0x56, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x0a, 0x03, 0x42, 0x00,
];
const P256: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// The algorithm OID of canister signatures (1.3.6.1.4.1.56387.1.2), as Internet Identity
/// uses them: recognised so the error can say what it is.
const CANISTER_SIG_OID: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xb8, 0x43, 0x01, 0x02];

/// A key or signature that was refused, and why.
/// An Ed25519 public key as DER (how agents send it and how node keys are published).
pub fn ed25519_der(raw: &[u8; 32]) -> Vec<u8> {
    [ED25519, &raw[..]].concat()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("canister signature keys (Internet Identity) are not supported by this replica")]
    CanisterSignature,
    #[error(
        "unsupported public key: not DER of Ed25519, ECDSA secp256k1 or ECDSA P-256 ({0} bytes)"
    )]
    Unsupported(usize),
    #[error("the {0} public key is not a valid point")]
    Point(&'static str),
    #[error("the {0} signature is malformed")]
    Malformed(&'static str),
    #[error("the {0} signature does not verify under the sender's key")]
    Mismatch(&'static str),
}

/// A parsed sender key.
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    Secp256k1(k256::ecdsa::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    pub fn from_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        if let Some(raw) = der.strip_prefix(ED25519) {
            let raw: &[u8; 32] = raw.try_into().map_err(|_| KeyError::Point("Ed25519"))?;
            return ed25519_dalek::VerifyingKey::from_bytes(raw)
                .map(PublicKey::Ed25519)
                .map_err(|_| KeyError::Point("Ed25519"));
        }
        if let Some(raw) = der.strip_prefix(SECP256K1) {
            return k256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                .map(PublicKey::Secp256k1)
                .map_err(|_| KeyError::Point("secp256k1"));
        }
        if let Some(raw) = der.strip_prefix(P256) {
            return p256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                .map(PublicKey::P256)
                .map_err(|_| KeyError::Point("P-256"));
        }
        if der
            .windows(CANISTER_SIG_OID.len())
            .any(|w| w == CANISTER_SIG_OID)
        {
            return Err(KeyError::CanisterSignature);
        }
        Err(KeyError::Unsupported(der.len()))
    }

    fn name(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "Ed25519",
            PublicKey::Secp256k1(_) => "secp256k1",
            PublicKey::P256(_) => "P-256",
        }
    }

    /// Check `sig` over `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), KeyError> {
        use ed25519_dalek::Verifier as _;
        let name = self.name();
        let malformed = |_| KeyError::Malformed(name);
        let ok = match self {
            PublicKey::Ed25519(k) => {
                let s = ed25519_dalek::Signature::from_slice(sig).map_err(malformed)?;
                k.verify_strict(message, &s).is_ok()
            }
            PublicKey::Secp256k1(k) => {
                let s = k256::ecdsa::Signature::from_slice(sig).map_err(malformed)?;
                k.verify(message, &s).is_ok()
            }
            PublicKey::P256(k) => {
                let s = p256::ecdsa::Signature::from_slice(sig).map_err(malformed)?;
                k.verify(message, &s).is_ok()
            }
        };
        if ok {
            Ok(())
        } else {
            Err(KeyError::Mismatch(name))
        }
    }
}
