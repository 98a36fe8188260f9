//! BLS12-381 keys as the interface uses them: signatures in G1 (48 bytes), public keys in G2
//! (96 bytes) wrapped in a fixed DER prefix (133 bytes in all), which is what `/api/v2/status`
//! gives as the root key and what `/subnet/<id>/public_key` holds.

use ic_verify_bls_signature::{PrivateKey, PublicKey, Signature};

/// The DER prefix of a BLS12-381 G2 public key (OIDs of the IC's BLS scheme and curve).
pub const BLS_DER_PREFIX: [u8; 37] = [
    0x30, 0x81, 0x82, 0x30, 0x1d, 0x06, 0x0d, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05,
    0x03, 0x01, 0x02, 0x01, 0x06, 0x0c, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xdc, 0x7c, 0x05, 0x03,
    0x02, 0x01, 0x03, 0x61, 0x00,
];

/// A key that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a BLS secret key is 32 bytes below the group order; found {0} bytes or out of range")]
    Secret(usize),
    #[error("a BLS public key in DER is {expected} bytes starting with the BLS prefix; found {found} bytes")]
    DerShape { expected: usize, found: usize },
    #[error("the BLS public key is not a point of the G2 subgroup")]
    Point,
    #[error("the BLS signature is not 48 bytes of a G1 point")]
    Signature,
    #[error("the BLS signature does not verify under this key")]
    Mismatch,
}

/// A BLS secret key: the network's root key, or a subnet's key.
pub struct BlsKey(PrivateKey);

impl std::fmt::Debug for BlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlsKey(public {:02x?}…)", &self.public_der()[37..41])
    }
}

impl BlsKey {
    /// A fresh key from the operating system's randomness.
    pub fn generate() -> BlsKey {
        BlsKey(PrivateKey::random(&mut rand::rngs::OsRng))
    }

    /// A key from its 32-byte big-endian encoding ([`BlsKey::to_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<BlsKey, KeyError> {
        PrivateKey::deserialize(bytes)
            .map(BlsKey)
            .map_err(|_| KeyError::Secret(bytes.len()))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.serialize()
    }

    /// The public key as the interface carries it (DER, 133 bytes).
    pub fn public_der(&self) -> Vec<u8> {
        [&BLS_DER_PREFIX[..], &self.0.public_key().serialize()[..]].concat()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 48] {
        self.0.sign(message).serialize()
    }
}

/// The 96-byte G2 point inside a DER public key.
pub fn public_key_from_der(der: &[u8]) -> Result<[u8; 96], KeyError> {
    let shape = KeyError::DerShape {
        expected: BLS_DER_PREFIX.len() + 96,
        found: der.len(),
    };
    let raw = der.strip_prefix(&BLS_DER_PREFIX[..]).ok_or(shape)?;
    raw.try_into().map_err(|_| KeyError::DerShape {
        expected: BLS_DER_PREFIX.len() + 96,
        found: der.len(),
    })
}

/// Check a signature against a DER public key.
pub fn verify_signature(der: &[u8], message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
    let key = PublicKey::deserialize(&public_key_from_der(der)?).map_err(|_| KeyError::Point)?;
    let sig = Signature::deserialize(signature).map_err(|_| KeyError::Signature)?;
    key.verify(message, &sig).map_err(|_| KeyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sign() {
        let k = BlsKey::generate();
        let again = BlsKey::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(k.public_der(), again.public_der());
        assert_eq!(k.public_der().len(), 133);
        let sig = k.sign(b"m");
        verify_signature(&k.public_der(), b"m", &sig).unwrap();
        assert!(matches!(
            verify_signature(&k.public_der(), b"n", &sig),
            Err(KeyError::Mismatch)
        ));
        let other = BlsKey::generate();
        assert!(verify_signature(&other.public_der(), b"m", &sig).is_err());
    }

    #[test]
    fn malformed_keys_are_named() {
        assert!(matches!(
            BlsKey::from_bytes(&[1; 31]),
            Err(KeyError::Secret(31))
        ));
        assert!(matches!(
            BlsKey::from_bytes(&[0xff; 32]),
            Err(KeyError::Secret(32))
        ));
        let der = BlsKey::generate().public_der();
        assert!(matches!(
            public_key_from_der(&der[1..]),
            Err(KeyError::DerShape { found: 132, .. })
        ));
        let mut bad = der.clone();
        bad[40] ^= 0xff;
        assert!(matches!(
            verify_signature(&bad, b"m", &[0; 48]),
            Err(KeyError::Point | KeyError::Signature)
        ));
        assert!(matches!(
            verify_signature(&der, b"m", &[0; 47]),
            Err(KeyError::Signature)
        ));
    }
}
