//! Bodies that come in chunks: a canister answers a large body's first chunk with a
//! streaming strategy, and the rest is fetched by calling its callback query with the
//! token it gave, one chunk at a time.
//!
//! Checked without holding the body: response verification version 1 certifies the
//! SHA-256 of the whole body, so before the first byte goes out the certificate is
//! checked (the subnet's signature and delegation, its time, the canister's certified data
//! against the witness) and the certified hash is looked up; each chunk is hashed as it
//! passes, and after the last one the hash must match. A stream whose hash does not match
//! ends in an error instead of its end, so a client sees a broken transfer, never a
//! complete forged body. `ic-response-verification` takes whole bodies only, which is why
//! this check is ours; it is the same lookup that crate does for version 1.

use crate::FetchError;
use base64::Engine;
use ic_agent::hash_tree::{HashTree, LookupResult};
use ic_agent::{Agent, Certificate};
use ic_principal::Principal;
use ic_utils::call::SyncCall;
use ic_utils::interfaces::http_request::{HttpRequestCanister, Token};
use sha2::{Digest, Sha256};

/// The most callbacks one body may take (1 GiB at the asset canister's 1 MiB chunks).
pub const MAX_CALLBACKS: usize = 1024;

/// The chunks still to come of a streamed body, checked as they come when `expected` is
/// set (verified mode).
pub struct Rest {
    agent: Agent,
    canister: Principal,
    method: String,
    token: Option<Token>,
    hasher: Sha256,
    expected: Option<[u8; 32]>,
    calls: usize,
    path: String,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("canister", &self.canister)
            .field("method", &self.method)
            .field("calls", &self.calls)
            .field("verified", &self.expected.is_some())
            .finish()
    }
}

impl Rest {
    pub(crate) fn new(
        agent: &Agent,
        canister: Principal,
        method: String,
        token: Token,
        first: &[u8],
        expected: Option<[u8; 32]>,
        path: String,
    ) -> Rest {
        let mut hasher = Sha256::new();
        hasher.update(first);
        Rest {
            agent: agent.clone(),
            canister,
            method,
            token: Some(token),
            hasher,
            expected,
            calls: 0,
            path,
        }
    }

    /// The next chunk, or `None` once the body is complete (and, in verified mode, its hash
    /// matched the certified one).
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, FetchError> {
        let Some(token) = self.token.take() else {
            return Ok(None);
        };
        self.calls += 1;
        if self.calls > MAX_CALLBACKS {
            return Err(self.broken(format!(
                "the body takes more than {MAX_CALLBACKS} callbacks"
            )));
        }
        let canister = HttpRequestCanister::create(&self.agent, self.canister);
        let (answer,) = canister
            .http_request_stream_callback(&self.method, token)
            .call()
            .await
            .map_err(|source| FetchError::Agent {
                canister: self.canister,
                method: "http_request_streaming_callback",
                source: Box::new(source),
            })?;
        self.hasher.update(&answer.body);
        self.token = answer.token;
        if self.token.is_none() {
            self.finish()?;
        }
        Ok(Some(answer.body))
    }

    /// Everything left, after `first`, in one buffer of at most `max` bytes.
    pub async fn collect(mut self, mut first: Vec<u8>, max: usize) -> Result<Vec<u8>, FetchError> {
        while let Some(chunk) = self.next().await? {
            if first.len() + chunk.len() > max {
                return Err(self.broken(format!("the body is larger than {max} bytes")));
            }
            first.extend(chunk);
        }
        Ok(first)
    }

    fn finish(&mut self) -> Result<(), FetchError> {
        let Some(expected) = self.expected else {
            return Ok(());
        };
        let got: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if got == expected {
            Ok(())
        } else {
            Err(self.broken(format!(
                "the streamed body's SHA-256 is {}, the certified one {}",
                hex::encode(got),
                hex::encode(expected)
            )))
        }
    }

    fn broken(&self, why: String) -> FetchError {
        FetchError::Stream {
            canister: self.canister,
            path: self.path.clone(),
            why,
        }
    }
}

/// The parts of an `IC-Certificate` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CertificateHeader {
    pub certificate: Vec<u8>,
    pub tree: Vec<u8>,
    /// `version=N` (absent: 1).
    pub version: u16,
}

/// Parses `certificate=:<base64>:, tree=:<base64>:[, version=N][, expr_path=:...:]`.
pub(crate) fn parse_header(value: &str) -> Result<CertificateHeader, String> {
    let (mut certificate, mut tree, mut version) = (None, None, 1);
    for part in value.split(',') {
        let Some((name, v)) = part.trim().split_once('=') else {
            return Err(format!("`{part}` is not name=value"));
        };
        let bytes = |v: &str| {
            let inner = v
                .strip_prefix(':')
                .and_then(|v| v.strip_suffix(':'))
                .ok_or_else(|| format!("`{name}` is not :base64:"))?;
            base64::engine::general_purpose::STANDARD
                .decode(inner)
                .map_err(|e| format!("`{name}`: {e}"))
        };
        match name {
            "certificate" => certificate = Some(bytes(v)?),
            "tree" => tree = Some(bytes(v)?),
            "version" => version = v.parse().map_err(|_| format!("version `{v}`"))?,
            _ => {}
        }
    }
    Ok(CertificateHeader {
        certificate: certificate.ok_or("no certificate")?,
        tree: tree.ok_or("no tree")?,
        version,
    })
}

/// The SHA-256 version 1 certifies for `path`: the canister's certified data must be the
/// witness's root, and the witness must hold `http_assets/<path>`; only when it proves
/// that path absent may it hold `/index.html` instead (the fallback of version 1).
pub(crate) fn certified_hash(
    tree: &HashTree<Vec<u8>>,
    certified_data: &[u8],
    path: &str,
) -> Result<[u8; 32], String> {
    if tree.digest().as_slice() != certified_data {
        return Err("the witness is not what the canister certified".into());
    }
    let leaf = |p: &str| tree.lookup_path([b"http_assets".as_slice(), p.as_bytes()]);
    let found = match leaf(path) {
        LookupResult::Found(v) => v,
        LookupResult::Absent => match leaf("/index.html") {
            LookupResult::Found(v) => v,
            _ => return Err(format!("neither {path} nor /index.html is certified")),
        },
        _ => {
            return Err(format!(
                "the witness does not show whether {path} is certified"
            ))
        }
    };
    found
        .try_into()
        .map_err(|_| "the certified value is no SHA-256".to_string())
}

/// Checks the certificate of a version 1 answer for `path` from `canister` (signature,
/// delegation, time, the witness against the certified data) and returns the body's
/// certified SHA-256.
pub(crate) fn check_v1(
    agent: &Agent,
    canister: &Principal,
    header: &CertificateHeader,
    path: &str,
) -> Result<[u8; 32], String> {
    let cert: Certificate =
        serde_cbor::from_slice(&header.certificate).map_err(|e| format!("certificate: {e}"))?;
    agent
        .verify(&cert, *canister)
        .map_err(|e| format!("certificate: {e}"))?;
    let data = match cert.tree.lookup_path([
        b"canister".as_slice(),
        canister.as_slice(),
        b"certified_data".as_slice(),
    ]) {
        LookupResult::Found(d) => d.to_vec(),
        _ => return Err("the certificate holds no certified data for the canister".into()),
    };
    let tree: HashTree<Vec<u8>> =
        serde_cbor::from_slice(&header.tree).map_err(|e| format!("witness: {e}"))?;
    certified_hash(&tree, &data, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ic_agent::hash_tree::{fork, label, leaf, pruned, Label};

    fn sha(b: &[u8]) -> [u8; 32] {
        Sha256::digest(b).into()
    }

    #[test]
    fn headers_parse_and_junk_is_named() {
        let h = parse_header("certificate=:AAE=:, tree=:AgM=:").unwrap();
        assert_eq!(
            (h.certificate, h.tree, h.version),
            (vec![0, 1], vec![2, 3], 1)
        );
        let h =
            parse_header("certificate=:AA==:, tree=:AA==:, version=2, expr_path=:AA==:").unwrap();
        assert_eq!(h.version, 2);
        for bad in [
            "tree=:AA==:",
            "certificate=AA==, tree=:AA==:",
            "certificate=:!!:, tree=:AA==:",
            "x",
        ] {
            assert!(parse_header(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_certified_hash_is_the_paths_and_falls_back_only_on_proven_absence() {
        let (big, index) = (sha(b"big"), sha(b"index"));
        let assets: HashTree<Vec<u8>> = fork(
            label(Label::from("/big.bin"), leaf(big.to_vec())),
            label(Label::from("/index.html"), leaf(index.to_vec())),
        );
        let tree = label(Label::from("http_assets"), assets);
        let root = tree.digest();
        assert_eq!(certified_hash(&tree, &root, "/big.bin").unwrap(), big);
        // A path the full tree proves absent falls back to /index.html.
        assert_eq!(certified_hash(&tree, &root, "/nope").unwrap(), index);
        // A witness that prunes the path away cannot swap /index.html in for it.
        let hidden: HashTree<Vec<u8>> = label(
            Label::from("http_assets"),
            fork(
                pruned(
                    label::<Vec<u8>, _, _>(Label::from("/big.bin"), leaf(big.to_vec())).digest(),
                ),
                label(Label::from("/index.html"), leaf(index.to_vec())),
            ),
        );
        assert_eq!(hidden.digest(), root);
        let e = certified_hash(&hidden, &root, "/big.bin").unwrap_err();
        assert!(e.contains("does not show"), "{e}");
        // A witness for other certified data is refused.
        let e = certified_hash(&tree, &[0; 32], "/big.bin").unwrap_err();
        assert!(e.contains("not what the canister certified"), "{e}");
    }
}
