//! A subnet's certified state as the Internet Computer's HTTP interface defines it: the
//! state tree (`/time`, `/request_status`, `/canister`, `/subnet`, `/canister_ranges`), its
//! witnesses for the paths a client asks about, the certificate over its root signed with the
//! subnet's BLS key, and the delegation by which the network's root key vouches for that
//! subnet key and its canister ranges.
//!
//! Agents check all of it: `ic-agent` and `@dfinity/agent` verify the signature against the
//! root key they trust (through the delegation when there is one), check that the canister
//! they asked about lies in the delegated ranges, and read answers only from the witness.
//! The tree's hashing is DFINITY's `ic-certification` crate (its shape is ours, so that the
//! root depends only on the contents: see [`StateTree`]), the signatures its
//! `ic-verify-bls-signature`; this crate puts them together the way a replica serves them,
//! and the tests check the result with `ic-agent`'s own verifier.
//!
//! ```
//! use certified_state::{BlsKey, StateTree, certify, delegate, path};
//! use ic_principal::Principal;
//!
//! let root = BlsKey::generate();
//! let subnet = BlsKey::generate();
//! let subnet_id = Principal::self_authenticating(subnet.public_der());
//! let canister = certified_state::canister_id(5);
//! let ranges = [(certified_state::canister_id(0), certified_state::canister_id(0xfffff))];
//! let delegation = delegate(&root, subnet_id, &subnet.public_der(), &ranges, 1).unwrap();
//!
//! let mut tree = StateTree::default();
//! tree.set_time(1_700_000_000_000_000_000);
//! tree.set(&path(["canister", "x"]), b"v".to_vec());
//! let cert = certify(&tree, &[path(["canister", "x"])], &subnet, Some(&delegation)).unwrap();
//! assert_eq!(cert.tree.digest(), tree.root_hash());
//! # let _ = canister;
//! ```

mod keys;
mod tree;

pub use ic_certification::{Certificate, Delegation, HashTree};
pub use keys::{public_key_from_der, verify_signature, BlsKey, KeyError, BLS_DER_PREFIX};
pub use tree::{leb128, path, Path, StateTree};

use ic_principal::Principal;

/// The domain separator of a state root signature (`"\x0Dic-state-root"`).
pub const STATE_ROOT_DOMAIN: &[u8] = b"\x0Dic-state-root";

/// Canister ids are allotted to subnets in blocks of this many (as on the IC).
pub const RANGE_BLOCK: u64 = 1 << 20;

/// The canister id with this index: 8 bytes big-endian, then `01 01` (opaque id class).
pub fn canister_id(index: u64) -> Principal {
    let mut b = [0u8; 10];
    b[..8].copy_from_slice(&index.to_be_bytes());
    b[8] = 1;
    b[9] = 1;
    Principal::from_slice(&b)
}

/// The index of a canister id made by [`canister_id`]; `None` for any other principal.
pub fn canister_index(id: &Principal) -> Option<u64> {
    let b = id.as_slice();
    if b.len() != 10 || b[8..] != [1, 1] {
        return None;
    }
    Some(u64::from_be_bytes(b[..8].try_into().ok()?))
}

/// What could not be certified.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("encoding a certificate: {0}")]
    Encode(#[from] serde_cbor::Error),
    #[error("a delegation needs at least one canister range")]
    NoRanges,
}

/// CBOR with the self-describing tag 55799, as the interface sends every CBOR value.
pub fn to_cbor<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, serde_cbor::Error> {
    let mut out = Vec::new();
    let mut ser = serde_cbor::Serializer::new(&mut out);
    ser.self_describe()?;
    value.serialize(&mut ser)?;
    Ok(out)
}

/// A certificate for `paths` of `tree` (and always `/time`), signed with `key`.
pub fn certify(
    tree: &StateTree,
    paths: &[Path],
    key: &BlsKey,
    delegation: Option<&Delegation>,
) -> Result<Certificate, CertifyError> {
    let witness = tree.witness(paths);
    Ok(Certificate {
        tree: witness,
        signature: key.sign(&state_root_message(&tree.root_hash())).to_vec(),
        delegation: delegation.cloned(),
    })
}

/// What a state root signature signs.
pub fn state_root_message(root: &[u8; 32]) -> Vec<u8> {
    [STATE_ROOT_DOMAIN, &root[..]].concat()
}

/// The root key's word for a subnet: a certificate signed by `root` holding the subnet's
/// public key at `/subnet/<id>/public_key` and its canister ranges both where `/api/v4`
/// clients look (`/canister_ranges/<id>/<first canister>`) and where older ones do
/// (`/subnet/<id>/canister_ranges`).
pub fn delegate(
    root: &BlsKey,
    subnet_id: Principal,
    subnet_public_der: &[u8],
    ranges: &[(Principal, Principal)],
    time_nanos: u64,
) -> Result<Delegation, CertifyError> {
    let first = ranges.first().ok_or(CertifyError::NoRanges)?;
    let sid = subnet_id.as_slice();
    let encoded = to_cbor(&ranges)?;
    let mut tree = StateTree::default();
    tree.set_time(time_nanos);
    tree.set(
        &[b"subnet".to_vec(), sid.to_vec(), b"public_key".to_vec()],
        subnet_public_der.to_vec(),
    );
    tree.set(
        &[
            b"subnet".to_vec(),
            sid.to_vec(),
            b"canister_ranges".to_vec(),
        ],
        encoded.clone(),
    );
    tree.set(
        &[
            b"canister_ranges".to_vec(),
            sid.to_vec(),
            first.0.as_slice().to_vec(),
        ],
        encoded,
    );
    let cert = certify(&tree, &[vec![]], root, None)?;
    Ok(Delegation {
        subnet_id: sid.to_vec(),
        certificate: to_cbor(&cert)?,
    })
}

/// What a checked delegation says: the subnet, its public key and its canister ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegated {
    pub subnet_id: Principal,
    pub public_key_der: Vec<u8>,
    pub ranges: Vec<(Principal, Principal)>,
}

/// Why a delegation was refused.
#[derive(Debug, thiserror::Error)]
pub enum DelegationError {
    #[error("the delegation's certificate is not CBOR of a certificate: {0}")]
    Decode(String),
    #[error("the delegation's certificate is itself delegated (only the root key may delegate)")]
    Nested,
    #[error("the delegation is not signed by the network's root key: {0}")]
    Signature(KeyError),
    #[error("the delegation's certificate has no {0}")]
    Missing(&'static str),
    #[error("the delegation's canister ranges are not CBOR of principal pairs")]
    Ranges,
}

/// Check a delegation as an agent does: signed by the root key (`root_der`), naming its
/// subnet's public key and canister ranges. Returns what it delegates.
pub fn check_delegation(
    root_der: &[u8],
    delegation: &Delegation,
) -> Result<Delegated, DelegationError> {
    let cert: Certificate = serde_cbor::from_slice(&delegation.certificate)
        .map_err(|e| DelegationError::Decode(e.to_string()))?;
    if cert.delegation.is_some() {
        return Err(DelegationError::Nested);
    }
    verify_signature(
        root_der,
        &state_root_message(&cert.tree.digest()),
        &cert.signature,
    )
    .map_err(DelegationError::Signature)?;
    let sid = delegation.subnet_id.as_slice();
    let found =
        |label: &'static str| match cert.tree.lookup_path([b"subnet", sid, label.as_bytes()]) {
            ic_certification::LookupResult::Found(v) => Ok(v.to_vec()),
            _ => Err(DelegationError::Missing(label)),
        };
    let public_key_der = found("public_key")?;
    let ranges: Vec<(Principal, Principal)> =
        serde_cbor::from_slice(&found("canister_ranges")?).map_err(|_| DelegationError::Ranges)?;
    Ok(Delegated {
        subnet_id: Principal::try_from_slice(sid)
            .map_err(|_| DelegationError::Missing("valid subnet id"))?,
        public_key_der,
        ranges,
    })
}
