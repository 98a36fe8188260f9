//! The certificates this crate makes, checked by the verifier dApp developers run:
//! `ic-agent`'s own `Agent::verify` (signature, delegation, canister ranges, freshness).

use certified_state::{
    canister_id, certify, delegate, to_cbor, BlsKey, Certificate, Delegation, Path, StateTree,
};
use ic_agent::{Agent, AgentError};
use ic_principal::Principal;

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

struct Net {
    root: BlsKey,
    subnet: BlsKey,
    subnet_id: Principal,
    delegation: Delegation,
}

/// A root key, one subnet key, and the root's delegation of canister indexes 0..2^20 to it.
fn net() -> Net {
    let (root, subnet) = (BlsKey::generate(), BlsKey::generate());
    let subnet_id = Principal::self_authenticating(subnet.public_der());
    let ranges = [(
        canister_id(0),
        canister_id(certified_state::RANGE_BLOCK - 1),
    )];
    let delegation =
        delegate(&root, subnet_id, &subnet.public_der(), &ranges, now_nanos()).unwrap();
    Net {
        root,
        subnet,
        subnet_id,
        delegation,
    }
}

fn agent(root: &BlsKey) -> Agent {
    // No request is ever sent: `verify` works on the certificate alone.
    let a = Agent::builder()
        .with_url("http://127.0.0.1:9")
        .build()
        .unwrap();
    a.set_root_key(root.public_der());
    a
}

fn state(time: u64) -> (StateTree, Path) {
    let mut t = StateTree::default();
    t.set_time(time);
    let c = canister_id(5);
    let p = vec![
        b"canister".to_vec(),
        c.as_slice().to_vec(),
        b"certified_data".to_vec(),
    ];
    t.set(&p, b"hello".to_vec());
    for i in 0..50u8 {
        t.set(
            &[b"request_status".to_vec(), vec![i; 32], b"status".to_vec()],
            b"replied".to_vec(),
        );
    }
    (t, p)
}

/// A certificate as it travels: CBOR, then decoded by the agent's types.
fn wire(c: &Certificate) -> Certificate {
    serde_cbor::from_slice(&to_cbor(c).unwrap()).unwrap()
}

#[test]
fn ic_agent_accepts_a_delegated_certificate_for_a_canister_in_range() {
    let n = net();
    let (t, p) = state(now_nanos());
    let cert =
        wire(&certify(&t, std::slice::from_ref(&p), &n.subnet, Some(&n.delegation)).unwrap());
    agent(&n.root).verify(&cert, canister_id(5)).unwrap();
    agent(&n.root)
        .verify_for_subnet(&cert, n.subnet_id)
        .unwrap();
    assert_eq!(
        cert.tree.lookup_path(&p),
        ic_certification::LookupResult::Found(b"hello")
    );
}

#[test]
fn ic_agent_accepts_an_undelegated_certificate_under_the_root_key() {
    let n = net();
    let (t, p) = state(now_nanos());
    let cert = wire(&certify(&t, &[p], &n.root, None).unwrap());
    agent(&n.root).verify(&cert, canister_id(5)).unwrap();
}

#[test]
fn a_canister_outside_the_delegated_ranges_is_not_certified_by_this_subnet() {
    let n = net();
    let (t, p) = state(now_nanos());
    let cert = wire(&certify(&t, &[p], &n.subnet, Some(&n.delegation)).unwrap());
    let e = agent(&n.root)
        .verify(&cert, canister_id(certified_state::RANGE_BLOCK))
        .unwrap_err();
    assert!(matches!(e, AgentError::CertificateNotAuthorized()), "{e:?}");
}

#[test]
fn forged_and_tampered_certificates_are_refused() {
    let n = net();
    let (t, p) = state(now_nanos());
    let a = agent(&n.root);
    // Signed by a key the root never delegated to.
    let rogue = BlsKey::generate();
    let forged = wire(&certify(&t, std::slice::from_ref(&p), &rogue, Some(&n.delegation)).unwrap());
    assert!(matches!(
        a.verify(&forged, canister_id(5)),
        Err(AgentError::CertificateVerificationFailed())
    ));
    // A delegation from another network's root.
    let other = net();
    let foreign = wire(
        &certify(
            &t,
            std::slice::from_ref(&p),
            &n.subnet,
            Some(&other.delegation),
        )
        .unwrap(),
    );
    assert!(a.verify(&foreign, canister_id(5)).is_err());
    // The subnet key signing without the delegation: the root key does not know it.
    let bare = wire(&certify(&t, std::slice::from_ref(&p), &n.subnet, None).unwrap());
    assert!(a.verify(&bare, canister_id(5)).is_err());
    // A changed answer under a genuine signature.
    let mut t2 = t.clone();
    t2.set(&p, b"hacked".to_vec());
    let mut tampered =
        certify(&t, std::slice::from_ref(&p), &n.subnet, Some(&n.delegation)).unwrap();
    tampered.tree = t2.witness(&[p]);
    assert!(matches!(
        a.verify(&wire(&tampered), canister_id(5)),
        Err(AgentError::CertificateVerificationFailed())
    ));
}

#[test]
fn an_old_certificate_is_refused_as_outdated() {
    let n = net();
    let (t, p) = state(now_nanos() - 10 * 60 * 1_000_000_000);
    let cert = wire(&certify(&t, &[p], &n.subnet, Some(&n.delegation)).unwrap());
    assert!(matches!(
        agent(&n.root).verify(&cert, canister_id(5)),
        Err(AgentError::CertificateOutdated(_))
    ));
}

#[test]
fn the_delegation_names_the_subnet_key_and_ranges_where_agents_look() {
    let n = net();
    let inner: Certificate = serde_cbor::from_slice(&n.delegation.certificate).unwrap();
    let sid = n.subnet_id.as_slice();
    let key = inner.tree.lookup_path([&b"subnet"[..], sid, b"public_key"]);
    assert_eq!(
        key,
        ic_certification::LookupResult::Found(&n.subnet.public_der())
    );
    for p in [
        vec![&b"subnet"[..], sid, b"canister_ranges"],
        vec![&b"canister_ranges"[..], sid, canister_id(0).as_slice()],
    ] {
        let ic_certification::LookupResult::Found(v) = inner.tree.lookup_path(&p) else {
            panic!("no ranges at {p:?}");
        };
        let ranges: Vec<(Principal, Principal)> = serde_cbor::from_slice(v).unwrap();
        assert_eq!(ranges[0].0, canister_id(0));
    }
}
