//! Deterministic execution: nodes of one subnet that execute the same batches (the same
//! calls, in the same order, at the same batch time) reach the same state root at the same
//! height, whatever their own clocks say; a node that missed a batch, or ran one at another
//! time, does not. Requests are real envelopes signed by `ic-agent`.

use candid::Encode;
use certified_state::BlsKey;
use ic_agent::identity::BasicIdentity;
use ic_agent::Agent;
use ic_principal::Principal;
use replica::{Batch, Config, Executed, Ingress, Replica};

/// A canister whose update stores `ic0.time` as its certified data: its state depends on
/// the time it runs at, and nothing else.
const STAMP: &str = r#"(module
  (import "ic0" "time" (func $time (result i64)))
  (import "ic0" "certified_data_set" (func $set (param i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory 1)
  (data (i32.const 100) "DIDL\00\00")
  (func (export "canister_update stamp")
    (i64.store (i32.const 0) (call $time))
    (call $set (i32.const 0) (i32.const 8))
    (call $append (i32.const 100) (i32.const 6))
    (call $reply)))"#;

const T0: u64 = 1_800_000_000_000_000_000;
const SECOND: u64 = 1_000_000_000;

/// Node `i` of a three-node subnet whose key is `subnet`; its clock is off by `skew`.
fn node(subnet: &BlsKey, i: u8, skew: u64) -> Replica {
    Replica::with_clock(config(subnet, i), Box::new(move || T0 + skew)).unwrap()
}

fn config(subnet: &BlsKey, i: u8) -> Config {
    let keys: Vec<ed25519_dalek::SigningKey> = (1..=3)
        .map(|k| ed25519_dalek::SigningKey::from_bytes(&[k; 32]))
        .collect();
    let me = keys[usize::from(i)].clone();
    let der = ingress::ed25519_der(me.verifying_key().as_bytes());
    Config {
        subnet_id: Principal::self_authenticating(subnet.public_der()),
        root_key_der: subnet.public_der(),
        subnet_key: BlsKey::from_bytes(&subnet.to_bytes()).unwrap(),
        delegation: None,
        node_id: Principal::self_authenticating(&der),
        node_key: me,
        canister_range: (0, 0xfffff),
        subnet_size: 3,
        peer_node_keys: keys
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != usize::from(i))
            .map(|(_, k)| k.verifying_key().to_bytes())
            .collect(),
        runtime: Default::default(),
        ingress: Default::default(),
    }
}

/// An agent that only signs, with expiries around `T0`.
fn signer(seed: u8) -> Agent {
    Agent::builder()
        .with_url("http://127.0.0.1:9")
        .with_identity(BasicIdentity::from_raw_key(&[seed; 32]))
        .with_ingress_expiry(std::time::Duration::from_secs(120))
        .build()
        .unwrap()
}

fn canister(index: u64) -> Principal {
    certified_state::canister_id(index)
}

fn ingress(a: &Agent, target: Principal, method: &str, arg: Vec<u8>, expiry: u64) -> Ingress {
    let mgmt = target == Principal::management_canister();
    let mut b = a
        .update(&target, method)
        .with_arg(arg)
        .expire_at(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(expiry));
    if mgmt {
        b = b.with_effective_canister_id(canister(0));
    }
    Ingress {
        body: b.sign().unwrap().signed_update,
        effective: if mgmt { canister(0) } else { target },
    }
}

/// The batches: create and install the stamp canister, then stamps, a replayed message, a
/// forged one and one for a canister that does not exist.
fn batches(a: &Agent) -> Vec<Batch> {
    let mgmt = Principal::management_canister();
    let exp = T0 + 60 * SECOND;
    let create = ingress(
        a,
        mgmt,
        "provisional_create_canister_with_cycles",
        Encode!(&ic_management_canister_types::ProvisionalCreateCanisterWithCyclesArgs::default())
            .unwrap(),
        exp,
    );
    let install = ingress(
        a,
        mgmt,
        "install_code",
        Encode!(&ic_management_canister_types::InstallCodeArgs {
            mode: ic_management_canister_types::CanisterInstallMode::Install,
            canister_id: canister(0),
            wasm_module: wat::parse_str(STAMP).unwrap(),
            arg: vec![],
            sender_canister_version: None,
        })
        .unwrap(),
        exp,
    );
    let stamp = |n: u64| ingress(a, canister(0), "stamp", Encode!(&n).unwrap(), exp);
    // The same envelope twice (ic-agent puts a fresh nonce in each one it signs).
    let first = stamp(1);
    let mut forged = stamp(99);
    let last = forged.body.len() - 1;
    forged.body[last] ^= 1;
    vec![
        Batch {
            time_ns: T0,
            messages: vec![create, install],
        },
        Batch {
            time_ns: T0 + SECOND,
            messages: vec![first.clone(), stamp(2)],
        },
        Batch {
            time_ns: T0 + 2 * SECOND,
            messages: vec![
                first,
                forged,
                ingress(a, canister(7), "stamp", Encode!().unwrap(), exp),
            ],
        },
    ]
}

#[test]
fn nodes_that_execute_the_same_batches_reach_the_same_root_whatever_their_clocks() {
    let subnet = BlsKey::generate();
    let a = signer(5);
    let batches = batches(&a);
    // Three nodes whose clocks disagree by up to a minute.
    let nodes = [
        node(&subnet, 0, 0),
        node(&subnet, 1, 7 * SECOND),
        node(&subnet, 2, 59 * SECOND),
    ];
    let mut outcomes = Vec::new();
    for n in &nodes {
        let mut mine = Vec::new();
        for b in &batches {
            mine.push(n.execute_batch(b).unwrap());
        }
        outcomes.push(mine);
    }
    assert!(outcomes.iter().all(|o| o == &outcomes[0]), "{outcomes:#?}");
    let o = &outcomes[0];
    assert!(
        o[0].iter().all(|e| matches!(e, Executed::Recorded(_))),
        "{o:?}"
    );
    assert!(
        o[1].iter().all(|e| matches!(e, Executed::Recorded(_))),
        "{o:?}"
    );
    // The replayed stamp is not executed again; the forged envelope is refused by its
    // signature; the missing canister is a reject, not a divergence.
    assert!(matches!(o[2][0], Executed::Duplicate(_)), "{:?}", o[2][0]);
    assert!(
        matches!(&o[2][1], Executed::Invalid(why) if why.contains("signature")),
        "{:?}",
        o[2][1]
    );
    assert!(
        matches!(&o[2][2], Executed::NotExecuted(r) if r.error_code == "IC0301"),
        "{:?}",
        o[2][2]
    );
    let roots: Vec<_> = nodes.iter().map(Replica::state_root).collect();
    assert_eq!(roots[0].0, 4, "create, install and two stamps");
    assert!(roots.iter().all(|r| r == &roots[0]), "{roots:?}");

    // A node that missed the last batch, or ran a batch at another time, is told apart by
    // its root.
    let behind = node(&subnet, 0, 0);
    for b in &batches[..2] {
        behind.execute_batch(b).unwrap();
    }
    let late = node(&subnet, 1, 0);
    for (i, b) in batches.iter().enumerate() {
        let mut b = b.clone();
        if i == 1 {
            b.time_ns += 1;
        }
        late.execute_batch(&b).unwrap();
    }
    assert_eq!(behind.state_root().0, 4);
    assert_ne!(behind.state_root(), roots[0]);
    assert_eq!(late.state_root().0, 4);
    assert_ne!(late.state_root(), roots[0]);
}

#[test]
fn a_call_sent_to_one_node_of_a_subnet_is_still_refused() {
    let subnet = BlsKey::generate();
    let a = signer(6);
    let m = ingress(
        &a,
        canister(0),
        "stamp",
        Encode!().unwrap(),
        T0 + 60 * SECOND,
    );
    let answer = node(&subnet, 0, 0).call(&m.body, &m.effective).unwrap();
    assert!(
        matches!(&answer, replica::CallAnswer::NotExecuted(r) if r.error_code == "IC0208"),
        "{answer:?}"
    );
}

/// The root is a function of the state alone: a node restarted from its checkpoint (whose
/// tree is rebuilt in another order than the calls built it) has the root of a node that
/// never stopped, so it can rejoin its subnet's comparison.
#[test]
fn a_node_restarted_from_its_checkpoint_has_the_same_root() {
    let subnet = BlsKey::generate();
    let a = signer(7);
    let batches = batches(&a);
    let dir = tempfile::tempdir().unwrap();
    let open = |skew: u64| {
        Replica::open(config(&subnet, 1), dir.path(), Box::new(move || T0 + skew))
            .unwrap()
            .0
    };
    let steady = node(&subnet, 0, 0);
    let restarted = open(3 * SECOND);
    for b in &batches {
        steady.execute_batch(b).unwrap();
        restarted.execute_batch(b).unwrap();
    }
    // A batch of nothing but time moves the root, and is kept too.
    let tick = Batch {
        time_ns: batches.last().unwrap().time_ns + SECOND,
        messages: vec![],
    };
    steady.execute_batch(&tick).unwrap();
    restarted.execute_batch(&tick).unwrap();
    let root = steady.state_root();
    assert_eq!(restarted.state_root(), root);
    drop(restarted);
    let back = open(40 * SECOND);
    assert_eq!(back.state_root(), root);
    // And it goes on with the others.
    let next = Batch {
        time_ns: tick.time_ns + SECOND,
        messages: vec![],
    };
    steady.execute_batch(&next).unwrap();
    back.execute_batch(&next).unwrap();
    assert_eq!(back.state_root(), steady.state_root());
}

/// Three replicas whose batches are ordered by the `replication` crate over real HTTP:
/// batches sent through different nodes reach every node in one order, and every node
/// reaches the same root at the same height whatever its clock; a node killed while the
/// others go on comes back from its folders (checkpoint and log) and catches up to the
/// same root.
#[test]
fn a_subnet_ordered_by_raft_reaches_one_root_through_any_node_and_after_a_restart() {
    use replica::ordered::{encode, BatchDone, Ordered};
    use replication::testing::{initialize, leader, until_all, Member};
    use std::sync::Arc;

    let subnet = BlsKey::generate();
    let a = signer(8);
    let dir = tempfile::tempdir().unwrap();
    let open = |i: u8, skew: u64| {
        let state = dir.path().join(format!("node{}", i + 1)).join("state");
        std::fs::create_dir_all(&state).unwrap();
        let clock = Box::new(move || T0 + skew);
        Arc::new(Replica::open(config(&subnet, i), &state, clock).unwrap().0)
    };
    let mut members: Vec<Member> = (1..=3)
        .map(|id| Member::new(id, dir.path().join(format!("node{id}"))))
        .collect();
    let mut replicas = Vec::new();
    for (i, m) in members.iter_mut().enumerate() {
        let r = open(i as u8, i as u64 * 7 * SECOND);
        m.start(Arc::new(Ordered::new(r.clone())));
        replicas.push(r);
    }
    initialize(&members);
    leader(&members);
    let propose = |members: &[Member], via: usize, b: &Batch| -> BatchDone {
        let answer = members[via]
            .propose(encode(b))
            .unwrap_or_else(|e| panic!("via node {}: {e}", via + 1));
        serde_cbor::from_slice(&answer).unwrap()
    };
    let mut done = None;
    for (i, b) in batches(&a).iter().enumerate() {
        done = Some(propose(&members, i % 3, b));
    }
    let done = done.unwrap();
    assert_eq!(done.height, 4, "create, install and two stamps");
    let same_root = |replicas: &[Arc<Replica>], want: &BatchDone| {
        let replicas = replicas.to_vec();
        let want = (want.height, want.root);
        move |m: &Member| replicas[m.id as usize - 1].state_root() == want
    };
    until_all(&members, "the leader's root", same_root(&replicas, &done));

    // Node 3 is killed; the two others go on with more stamps.
    members[2].kill();
    let exp = T0 + 60 * SECOND;
    let mut last = done;
    for n in 0..4u64 {
        let b = Batch {
            time_ns: T0 + (3 + n) * SECOND,
            messages: vec![ingress(
                &a,
                canister(0),
                "stamp",
                Encode!(&(10 + n)).unwrap(),
                exp,
            )],
        };
        last = propose(&members, (n % 2) as usize, &b);
    }
    assert_eq!(last.height, 8);
    // Back from its checkpoint and its log, with another clock: the same root.
    replicas[2] = open(2, 59 * SECOND);
    members[2].start(Arc::new(Ordered::new(replicas[2].clone())));
    until_all(
        &members,
        "the leader's root after a restart",
        same_root(&replicas, &last),
    );
    for m in &mut members {
        m.kill();
    }
}
