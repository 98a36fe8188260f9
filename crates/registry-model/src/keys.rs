//! Ed25519 keys for neurons, node operators, nodes and the registry's online key.
//! Secret keys are stored as PKCS#8 PEM (readable by OpenSSL), mode 0600.

use crate::ModelError;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::path::Path;

pub use ed25519_dalek::SigningKey as SecretKey;

pub fn generate() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// Public key as lowercase hex (the form used everywhere in the registry).
pub fn public_hex(k: &SigningKey) -> String {
    hex::encode(k.verifying_key().to_bytes())
}

/// Write a new key file; refuses to overwrite an existing one.
pub fn write_key(path: &Path, key: &SigningKey) -> Result<(), ModelError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| ModelError::Key(format!("encoding key: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ModelError::Key(format!("{}: {e}", path.display())))?;
    f.write_all(pem.as_bytes())
        .map_err(|e| ModelError::Key(format!("{}: {e}", path.display())))
}

/// Parse a PKCS#8 PEM key held in memory.
pub fn parse_key_pem(pem: &str) -> Result<SigningKey, ModelError> {
    SigningKey::from_pkcs8_pem(pem)
        .map_err(|e| ModelError::Key(format!("not an Ed25519 PKCS#8 key: {e}")))
}

/// The key as PKCS#8 PEM.
pub fn key_pem(key: &SigningKey) -> Result<String, ModelError> {
    key.to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map(|p| p.to_string())
        .map_err(|e| ModelError::Key(format!("encoding key: {e}")))
}

pub fn read_key(path: &Path) -> Result<SigningKey, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Key(format!("{}: {e}", path.display())))?;
    SigningKey::from_pkcs8_pem(&text).map_err(|e| {
        ModelError::Key(format!(
            "{} is not an Ed25519 PKCS#8 key: {e}",
            path.display()
        ))
    })
}

pub fn parse_public(hex_key: &str) -> Result<VerifyingKey, ModelError> {
    let bytes: [u8; 32] = hex::decode(hex_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ModelError::Key(format!("`{hex_key}` is not a 32-byte hex public key")))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| ModelError::Key(format!("invalid public key {hex_key}: {e}")))
}

pub fn sign(key: &SigningKey, msg: &[u8]) -> String {
    hex::encode(key.sign(msg).to_bytes())
}

pub fn parse_signature(sig_hex: &str) -> Result<Signature, ModelError> {
    let bytes: [u8; 64] = hex::decode(sig_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ModelError::BadSignature("not a 64-byte hex signature".into()))?;
    Ok(Signature::from_bytes(&bytes))
}

pub fn verify(public_hex: &str, msg: &[u8], sig_hex: &str, what: &str) -> Result<(), ModelError> {
    let pk = parse_public(public_hex)?;
    let sig = parse_signature(sig_hex)?;
    pk.verify(msg, &sig)
        .map_err(|_| ModelError::BadSignature(what.to_string()))
}

/// One signature to check: public key (hex), message, signature (hex), what it is and the
/// registry version it belongs to (for the error message).
#[derive(Debug, Clone)]
pub struct SigCheck {
    pub public_key: String,
    pub message: Vec<u8>,
    pub signature: String,
    pub what: String,
    pub version: u64,
}

/// A signature that did not verify, with the registry version it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {version}: {error}")]
pub struct BadSignatureAt {
    pub version: u64,
    pub error: ModelError,
}

impl From<BadSignatureAt> for ModelError {
    fn from(b: BadSignatureAt) -> ModelError {
        b.error
    }
}

fn check_one(c: &SigCheck) -> Result<(), BadSignatureAt> {
    verify(&c.public_key, &c.message, &c.signature, &c.what).map_err(|error| BadSignatureAt {
        version: c.version,
        error,
    })
}

/// Verify many signatures at once (batch verification is faster than one by one); on
/// failure, name the first bad one and the version it belongs to.
pub fn verify_all(items: &[SigCheck]) -> Result<(), BadSignatureAt> {
    if items.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(items.len());
    let mut sigs = Vec::with_capacity(items.len());
    for c in items {
        let parsed =
            parse_public(&c.public_key).and_then(|k| Ok((k, parse_signature(&c.signature)?)));
        let (k, s) = parsed.map_err(|error| BadSignatureAt {
            version: c.version,
            error,
        })?;
        keys.push(k);
        sigs.push(s);
    }
    let msgs: Vec<&[u8]> = items.iter().map(|c| c.message.as_slice()).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok() {
        return Ok(());
    }
    items.iter().try_for_each(check_one)?;
    // The batch failed but each one verifies: cannot happen with valid inputs.
    Err(BadSignatureAt {
        version: items[0].version,
        error: ModelError::BadSignature("batch verification failed".into()),
    })
}

/// A random 64-bit number from the operating system; an error (never zeros) when the
/// system's random source fails.
pub fn random_u64() -> Result<u64, ModelError> {
    use rand_core::RngCore;
    let mut b = [0u8; 8];
    rand_core::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| ModelError::Key(format!("the system's random source failed: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

/// [`verify_all`] spread over the machine's cores, in chunks.
pub fn verify_parallel(items: &[SigCheck]) -> Result<(), BadSignatureAt> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    if threads <= 1 || items.len() < 256 {
        return verify_all(items);
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(move || verify_all(c)))
            .collect();
        let mut result = Ok(());
        for h in handles {
            let r = h.join().unwrap_or_else(|_| {
                Err(BadSignatureAt {
                    version: 0,
                    error: ModelError::BadSignature("verifier thread failed".into()),
                })
            });
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_roundtrip_and_refuse_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("alice.key");
        let k = generate();
        write_key(&p, &k).unwrap();
        assert_eq!(read_key(&p).unwrap().to_bytes(), k.to_bytes());
        assert!(write_key(&p, &generate()).is_err());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(d.path().join("junk.key"), "not a key").unwrap();
        assert!(read_key(&d.path().join("junk.key"))
            .unwrap_err()
            .to_string()
            .contains("junk.key"));
    }

    #[test]
    fn signatures_verify_and_forgeries_do_not() {
        let k = generate();
        let s = sign(&k, b"hello");
        verify(&public_hex(&k), b"hello", &s, "test").unwrap();
        assert!(verify(&public_hex(&k), b"hellO", &s, "test").is_err());
        assert!(verify(&public_hex(&generate()), b"hello", &s, "test").is_err());
        let check = |m: &[u8], signed: &[u8], what: &str| SigCheck {
            public_key: public_hex(&k),
            message: m.to_vec(),
            signature: sign(&k, signed),
            what: what.into(),
            version: m.len() as u64,
        };
        let items = vec![check(b"a", b"a", "first"), check(b"b", b"x", "second")];
        assert!(verify_all(&items)
            .unwrap_err()
            .to_string()
            .contains("second"));
        let many: Vec<SigCheck> = (0..600u32)
            .map(|i| check(&i.to_le_bytes(), &i.to_le_bytes(), "ok"))
            .collect();
        verify_parallel(&many).unwrap();
        let mut bad = many.clone();
        bad[450] = check(b"y", b"z", "number 450");
        bad[450].version = 451;
        let e = verify_parallel(&bad).unwrap_err();
        assert_eq!(e.version, 451, "{e}");
        assert!(e.to_string().contains("number 450"), "{e}");
    }
}
