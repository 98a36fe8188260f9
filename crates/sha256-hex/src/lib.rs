//! A SHA-256 digest as text: exactly 64 hex digits, kept in lowercase.
//!
//! Elected versions, update package manifests, verity root hashes and command lines all
//! carry digests as hex. [`Sha256Hex`] checks the text once, where it enters (parsing,
//! deserializing), so nothing downstream compares an unchecked string with a digest.
//!
//! ```
//! use sha256_hex::Sha256Hex;
//! let d: Sha256Hex = "AB".repeat(32).parse().unwrap();
//! assert_eq!(d.as_str(), "ab".repeat(32));          // stored in lowercase
//! let empty: Sha256Hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap();
//! assert_eq!(Sha256Hex::of(b""), empty);
//! assert!("abc".parse::<Sha256Hex>().unwrap_err().to_string().contains("64 hex digits"));
//! ```

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// 64 lowercase hex digits of a SHA-256 digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a SHA-256 digest (64 hex digits)")]
pub struct NotADigest(pub String);

impl Sha256Hex {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Sha256Hex {
        Sha256Hex::from_bytes(Sha256::digest(data).into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Sha256Hex {
        Sha256Hex(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Checked when made: 64 hex digits always decode to 32 bytes.
        hex::decode_to_slice(&self.0, &mut out).expect("validated digest");
        out
    }
}

impl FromStr for Sha256Hex {
    type Err = NotADigest;
    fn from_str(s: &str) -> Result<Self, NotADigest> {
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256Hex(s.to_ascii_lowercase()))
        } else {
            // Bound what an error message repeats of hostile input.
            Err(NotADigest(s.chars().take(80).collect()))
        }
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = NotADigest;
    fn try_from(s: String) -> Result<Self, NotADigest> {
        s.parse()
    }
}

impl From<Sha256Hex> for String {
    fn from(d: Sha256Hex) -> String {
        d.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Sha256Hex {
    fn eq(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_hex_digits_are_digests() {
        for bad in [
            "",
            "ab",
            &"g".repeat(64),
            &"a".repeat(63),
            &"a".repeat(65),
            &format!("{} ", "a".repeat(63)),
        ] {
            assert!(bad.parse::<Sha256Hex>().is_err(), "{bad:?}");
        }
        let d = Sha256Hex::of(b"icos");
        assert_eq!(d.as_str().parse::<Sha256Hex>().unwrap(), d);
        assert_eq!(Sha256Hex::from_bytes(d.to_bytes()), d);
        assert!(d == *d.as_str().to_uppercase());
    }

    #[test]
    fn serde_checks_on_the_way_in() {
        let d = Sha256Hex::of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Sha256Hex>(&json).unwrap(), d);
        let e = serde_json::from_str::<Sha256Hex>("\"zz\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a SHA-256 digest"), "{e}");
    }
}
