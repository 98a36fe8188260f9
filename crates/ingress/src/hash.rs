//! The representation-independent hash of a CBOR value: what a request id is. Computed over
//! the content as the client sent it (every field, known or not), so a field this replica
//! does not know still counts in the id the client signed.

use serde_cbor::Value;
use sha2::{Digest, Sha256};

/// A value that has no representation-independent hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    #[error("a {0} has no request-id hash (only blobs, text, natural numbers, arrays and maps)")]
    Kind(&'static str),
    #[error("map keys must be text")]
    MapKey,
    #[error("only natural numbers below 2^64 have a request-id hash")]
    Number,
}

/// SHA-256 of the representation-independent form of `v`.
pub fn hash_value(v: &Value) -> Result<[u8; 32], HashError> {
    Ok(match v {
        Value::Bytes(b) => Sha256::digest(b).into(),
        Value::Text(s) => Sha256::digest(s.as_bytes()).into(),
        Value::Integer(n) => {
            let n = u64::try_from(*n).map_err(|_| HashError::Number)?;
            let mut bytes = Vec::with_capacity(10);
            leb128::write::unsigned(&mut bytes, n).expect("writing to a Vec cannot fail");
            Sha256::digest(bytes).into()
        }
        Value::Array(items) => {
            let mut h = Sha256::new();
            for i in items {
                h.update(hash_value(i)?);
            }
            h.finalize().into()
        }
        Value::Map(m) => {
            let mut pairs = Vec::with_capacity(m.len());
            for (k, v) in m {
                let Value::Text(k) = k else {
                    return Err(HashError::MapKey);
                };
                let mut pair = Vec::with_capacity(64);
                pair.extend_from_slice(&Sha256::digest(k.as_bytes()));
                pair.extend_from_slice(&hash_value(v)?);
                pairs.push(pair);
            }
            pairs.sort();
            let mut h = Sha256::new();
            for p in pairs {
                h.update(p);
            }
            h.finalize().into()
        }
        Value::Tag(_, inner) => hash_value(inner)?,
        Value::Null => return Err(HashError::Kind("null")),
        Value::Bool(_) => return Err(HashError::Kind("boolean")),
        Value::Float(_) => return Err(HashError::Kind("float")),
        _ => return Err(HashError::Kind("value of an unknown kind")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The interface specification's worked example of a request id.
    #[test]
    fn the_specification_example() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            Value::Text("request_type".into()),
            Value::Text("call".into()),
        );
        m.insert(
            Value::Text("canister_id".into()),
            Value::Bytes(vec![0, 0, 0, 0, 0, 0, 0x04, 0xD2]),
        );
        m.insert(
            Value::Text("method_name".into()),
            Value::Text("hello".into()),
        );
        m.insert(
            Value::Text("arg".into()),
            Value::Bytes(b"DIDL\x00\xFD*".to_vec()),
        );
        let id = hash_value(&Value::Map(m)).unwrap();
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "8781291c347db32a9d8c10eb62b710fce5a93be676474c42babc74c51858f94b"
        );
    }

    #[test]
    fn values_without_a_hash_are_named() {
        assert_eq!(hash_value(&Value::Null), Err(HashError::Kind("null")));
        assert_eq!(hash_value(&Value::Integer(-1)), Err(HashError::Number));
        let mut m = std::collections::BTreeMap::new();
        m.insert(Value::Integer(1), Value::Null);
        assert_eq!(hash_value(&Value::Map(m)), Err(HashError::MapKey));
    }
}
