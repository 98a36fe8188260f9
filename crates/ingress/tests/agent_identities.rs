//! Requests signed by `ic-agent`'s own identities (what dApp developers' tools send), checked
//! by [`ingress::authenticate`]; and each way of forging, stretching or replaying one, refused.

use ic_agent::identity::{
    BasicIdentity, DelegatedIdentity, Delegation, Prime256v1Identity, Secp256k1Identity,
    SignedDelegation,
};
use ic_agent::Identity;
use ic_principal::Principal;
use ic_transport_types::{Envelope, EnvelopeContent};
use ingress::{authenticate, IngressError, Limits};
use std::borrow::Cow;

const NOW: u64 = 1_800_000_000_000_000_000;
const MINUTE: u64 = 60_000_000_000;

fn canister(i: u8) -> Principal {
    Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, i, 1, 1])
}

fn call(sender: Principal, to: Principal) -> EnvelopeContent {
    EnvelopeContent::Call {
        nonce: Some(vec![1, 2, 3]),
        ingress_expiry: NOW + 3 * MINUTE,
        sender,
        canister_id: to,
        method_name: "inc".into(),
        arg: b"DIDL\x00\x00".to_vec(),
        sender_info: None,
    }
}

fn query(sender: Principal, to: Principal) -> EnvelopeContent {
    EnvelopeContent::Query {
        ingress_expiry: NOW + 3 * MINUTE,
        sender,
        canister_id: to,
        method_name: "read".into(),
        arg: vec![],
        nonce: None,
        sender_info: None,
    }
}

fn signed(id: &dyn Identity, content: &EnvelopeContent) -> Vec<u8> {
    let s = id.sign(content).unwrap();
    Envelope {
        content: Cow::Borrowed(content),
        sender_pubkey: s.public_key,
        sender_sig: s.signature,
        sender_delegation: s.delegations,
    }
    .encode_bytes()
}

fn ed25519(seed: u8) -> BasicIdentity {
    BasicIdentity::from_raw_key(&[seed; 32])
}

fn identities() -> Vec<(&'static str, Box<dyn Identity>)> {
    vec![
        ("Ed25519", Box::new(ed25519(1))),
        (
            "secp256k1",
            Box::new(Secp256k1Identity::from_private_key(
                k256::SecretKey::from_slice(&[7; 32]).unwrap(),
            )),
        ),
        (
            "P-256",
            Box::new(Prime256v1Identity::from_private_key(
                p256::SecretKey::from_slice(&[9; 32]).unwrap(),
            )),
        ),
    ]
}

#[test]
fn every_agent_key_kind_is_accepted_and_the_request_id_is_the_agents() {
    for (name, id) in identities() {
        let content = call(id.sender().unwrap(), canister(1));
        let ok = authenticate(&signed(id.as_ref(), &content), NOW, &Limits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ok.request_id, *content.to_request_id(), "{name}");
        assert_eq!(ok.sender, id.sender().unwrap());
    }
}

#[test]
fn a_signature_by_another_key_or_for_another_sender_is_refused() {
    let (a, b) = (ed25519(1), ed25519(2));
    // b signs a request claiming to come from a.
    let content = call(a.sender().unwrap(), canister(1));
    let mut env: Envelope = serde_cbor::from_slice(&signed(&a, &content)).unwrap();
    env.sender_sig = b.sign(&content).unwrap().signature;
    assert!(matches!(
        authenticate(&env.encode_bytes(), NOW, &Limits::default()),
        Err(IngressError::Signature(_))
    ));
    // b's key and signature, a's principal as sender.
    env.sender_pubkey = b.public_key();
    assert!(matches!(
        authenticate(&env.encode_bytes(), NOW, &Limits::default()),
        Err(IngressError::SenderMismatch { .. })
    ));
    // A changed argument under a's genuine signature.
    let other = call(a.sender().unwrap(), canister(2));
    let mut env: Envelope = serde_cbor::from_slice(&signed(&a, &content)).unwrap();
    env.content = Cow::Owned(other);
    assert!(matches!(
        authenticate(&env.encode_bytes(), NOW, &Limits::default()),
        Err(IngressError::Signature(_))
    ));
    // No signature at all for a non-anonymous sender.
    env.sender_sig = None;
    env.sender_pubkey = None;
    assert!(matches!(
        authenticate(&env.encode_bytes(), NOW, &Limits::default()),
        Err(IngressError::MissingSignature(_))
    ));
}

#[test]
fn expired_and_far_future_requests_are_refused() {
    let id = ed25519(1);
    let mut content = query(id.sender().unwrap(), canister(1));
    let body = signed(&id, &content);
    let late = NOW + 10 * MINUTE;
    let e = authenticate(&body, late, &Limits::default()).unwrap_err();
    assert!(matches!(e, IngressError::Expiry(_)), "{e}");
    if let EnvelopeContent::Query { ingress_expiry, .. } = &mut content {
        *ingress_expiry = NOW + 60 * MINUTE;
    }
    let e = authenticate(&signed(&id, &content), NOW, &Limits::default()).unwrap_err();
    assert!(e.to_string().contains("after the replica's time"), "{e}");
}

/// A session key delegated from the user's key (what Internet Identity-style logins and
/// `DelegatedIdentity` produce).
fn delegated(targets: Option<Vec<Principal>>, expiration: u64) -> DelegatedIdentity {
    let (user, session) = (ed25519(1), ed25519(3));
    let d = Delegation {
        pubkey: session.public_key().unwrap(),
        expiration,
        targets,
        permissions: None,
    };
    let sig = user.sign_delegation(&d).unwrap().signature.unwrap();
    DelegatedIdentity::new_unchecked(
        user.public_key().unwrap(),
        Box::new(session),
        vec![SignedDelegation {
            delegation: d,
            signature: sig,
        }],
    )
}

#[test]
fn a_delegation_chain_is_followed_within_its_expiry_and_targets() {
    let id = delegated(Some(vec![canister(1)]), NOW + 60 * MINUTE);
    let user = ed25519(1).sender().unwrap();
    assert_eq!(id.sender().unwrap(), user);
    let ok = authenticate(
        &signed(&id, &call(user, canister(1))),
        NOW,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(ok.sender, user);
    // Another canister than the delegation names.
    let e = authenticate(
        &signed(&id, &call(user, canister(2))),
        NOW,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, IngressError::Delegation { index: 0, .. }),
        "{e}"
    );
    // An expired delegation.
    let old = delegated(None, NOW - MINUTE);
    let e = authenticate(
        &signed(&old, &call(user, canister(1))),
        NOW,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    // A delegation whose signature was not made by the user's key.
    let mut env: Envelope = serde_cbor::from_slice(&signed(&id, &call(user, canister(1)))).unwrap();
    env.sender_delegation.as_mut().unwrap()[0]
        .delegation
        .expiration += 1;
    let e = authenticate(&env.encode_bytes(), NOW, &Limits::default()).unwrap_err();
    assert!(
        matches!(e, IngressError::Delegation { index: 0, .. }),
        "{e}"
    );
}

#[test]
fn malformed_and_oversized_bodies_are_named() {
    let limits = Limits::default();
    for body in [&b""[..], b"\xff\xff", b"\xd9\xd9\xf7\xa0"] {
        let e = authenticate(body, NOW, &limits).unwrap_err();
        assert!(matches!(e, IngressError::Malformed(_)), "{e}");
    }
    let big = vec![0u8; limits.max_envelope_bytes + 1];
    assert!(matches!(
        authenticate(&big, NOW, &limits),
        Err(IngressError::TooLarge { .. })
    ));
    // A nonce beyond 32 bytes.
    let id = ed25519(1);
    let mut c = call(id.sender().unwrap(), canister(1));
    if let EnvelopeContent::Call { nonce, .. } = &mut c {
        *nonce = Some(vec![0; 33]);
    }
    let e = authenticate(&signed(&id, &c), NOW, &limits).unwrap_err();
    assert!(e.to_string().contains("nonce"), "{e}");
}
