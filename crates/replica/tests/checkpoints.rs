//! The replica's state on disk: a power cut after every durable step of a checkpoint leaves a
//! state that opens, is consistent (the counter's value matches the calls recorded) and says
//! what it recovered; damaged checkpoints are set aside for an older sound one, and with none
//! sound the replica refuses to start rather than start empty. Requests are real envelopes
//! signed by `ic-agent`, fed to the replica's library API.

use candid::{Decode, Encode};
use certified_state::BlsKey;
use ic_agent::identity::BasicIdentity;
use ic_agent::Agent;
use ic_principal::Principal;
use replica::checkpoint::Recovery;
use replica::{CallAnswer, Config, OpenError, Replica};
use std::path::Path;

const COUNTER: &str = example_canisters::COUNTER_WAT;

fn config() -> Config {
    let key = BlsKey::generate();
    let node_key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let node_der = ingress::ed25519_der(node_key.verifying_key().as_bytes());
    Config {
        subnet_id: Principal::self_authenticating(key.public_der()),
        root_key_der: key.public_der(),
        subnet_key: key,
        delegation: None,
        node_id: Principal::self_authenticating(&node_der),
        node_key,
        canister_range: (0, 0xfffff),
        subnet_size: 1,
        peer_node_keys: Vec::new(),
        runtime: Default::default(),
        ingress: Default::default(),
    }
}

fn open(dir: &Path) -> Result<(Replica, Recovery), OpenError> {
    Replica::open(config(), dir, Box::new(replica::system_time_nanos))
}

/// An agent that only signs (nothing listens at its URL).
fn signer() -> Agent {
    Agent::builder()
        .with_url("http://127.0.0.1:9")
        .with_identity(BasicIdentity::from_raw_key(&[3; 32]))
        .build()
        .unwrap()
}

fn first_canister() -> Principal {
    certified_state::canister_id(0)
}

fn call(
    r: &Replica,
    body: &[u8],
    effective: &Principal,
) -> Result<CallAnswer, replica::RequestError> {
    r.call(body, effective)
}

fn inc_body(a: &Agent) -> Vec<u8> {
    a.update(&first_canister(), "inc")
        .with_arg(Encode!().unwrap())
        .sign()
        .unwrap()
        .signed_update
}

fn value(r: &Replica, a: &Agent) -> u64 {
    let body = a
        .query(&first_canister(), "get")
        .with_arg(Encode!().unwrap())
        .sign()
        .unwrap()
        .signed_query;
    let reply = r.query(&body, &first_canister()).unwrap().outcome.unwrap();
    Decode!(&reply, u64).unwrap()
}

/// A state directory with the counter created, installed and incremented `n` times.
fn counter_state(dir: &Path, a: &Agent, n: u64) {
    let (r, rec) = open(dir).unwrap();
    assert_eq!(rec.height, None, "{rec}");
    let mgmt = Principal::management_canister();
    let create = a
        .update(&mgmt, "provisional_create_canister_with_cycles")
        .with_effective_canister_id(first_canister())
        .with_arg(
            Encode!(
                &ic_management_canister_types::ProvisionalCreateCanisterWithCyclesArgs::default()
            )
            .unwrap(),
        )
        .sign()
        .unwrap();
    assert!(matches!(
        call(&r, &create.signed_update, &first_canister()).unwrap(),
        CallAnswer::Certified(_)
    ));
    let install = ic_management_canister_types::InstallCodeArgs {
        mode: ic_management_canister_types::CanisterInstallMode::Install,
        canister_id: first_canister(),
        wasm_module: wat::parse_str(COUNTER).unwrap(),
        arg: vec![],
        sender_canister_version: None,
    };
    let install = a
        .update(&mgmt, "install_code")
        .with_effective_canister_id(first_canister())
        .with_arg(Encode!(&install).unwrap())
        .sign()
        .unwrap();
    call(&r, &install.signed_update, &first_canister()).unwrap();
    for _ in 0..n {
        call(&r, &inc_body(a), &first_canister()).unwrap();
    }
    assert_eq!(value(&r, a), n);
    assert_eq!(r.height(), n + 2);
}

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn a_power_cut_after_any_durable_step_leaves_a_consistent_state_that_says_what_it_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let a = signer();
    counter_state(&base, &a, 3);
    let inc = inc_body(&a);
    let mut cuts = 0;
    let mut outcomes = std::collections::BTreeSet::new();
    for k in 1.. {
        let dir = tmp.path().join(format!("cut-{k}"));
        copy_dir(&base, &dir);
        let (r, rec) = open(&dir).unwrap();
        assert_eq!(rec.height, Some(5), "{rec}");
        r.cut_checkpoints_after(k);
        let answer = call(&r, &inc, &first_canister());
        drop(r);
        if answer.is_ok() {
            // The write ended before step k: every step has been cut at.
            break;
        }
        let e = answer.unwrap_err().to_string();
        assert!(e.contains("could not be checkpointed"), "{e}");
        cuts += 1;
        // Power back: the state opens, is one of the two checkpoints, and is consistent.
        let (r, rec) = open(&dir).unwrap();
        let height = rec.height.expect("a checkpoint");
        assert!(height == 5 || height == 6, "cut {k}: {rec}");
        assert_eq!(value(&r, &a), height - 2, "cut {k}: {rec}");
        let text = rec.to_string();
        assert!(
            text.starts_with(&format!(
                "recovered the checkpoint at height {height}: 1 canister(s)"
            )),
            "{text}"
        );
        if k == 1 {
            assert!(text.contains("unfinished write"), "{text}");
        }
        // The same request again: executed only if its checkpoint did not make it.
        call(&r, &inc, &first_canister()).unwrap();
        assert_eq!(
            value(&r, &a),
            4,
            "cut {k}: the request ran twice or not at all"
        );
        outcomes.insert(height);
        eprintln!("cut after step {k}: {text}");
    }
    assert!(cuts >= 4, "only {cuts} durable steps in a checkpoint");

    // The order that makes the cuts safe: pieces synced, their directory synced, then the
    // manifest and its directory, and only then old checkpoints removed.
    let dir = tmp.path().join("order");
    copy_dir(&base, &dir);
    let (r, _) = open(&dir).unwrap();
    call(&r, &inc, &first_canister()).unwrap();
    let steps = r.checkpoint_steps();
    let at = |name: &str| steps.iter().position(|s| *s == name).unwrap_or(usize::MAX);
    let last_piece = steps
        .iter()
        .rposition(|s| *s == "piece")
        .expect("a piece written");
    assert!(
        last_piece < at("pieces directory")
            && at("pieces directory") < at("manifest")
            && at("manifest") < at("checkpoints directory")
            && at("checkpoints directory") < at("old checkpoints removed")
            && at("old checkpoints removed") != usize::MAX,
        "{steps:?}"
    );
    assert_eq!(
        outcomes.into_iter().collect::<Vec<_>>(),
        vec![5, 6],
        "cuts should land both before and after the new checkpoint"
    );
}

#[test]
fn a_call_whose_checkpoint_failed_is_not_certified_until_one_is_written_and_runs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let a = signer();
    counter_state(&dir, &a, 3);
    let (r, _) = open(&dir).unwrap();
    let inc = inc_body(&a);
    r.cut_checkpoints_after(1);
    let e = call(&r, &inc, &first_canister()).unwrap_err();
    assert!(matches!(e, replica::RequestError::Unavailable(_)), "{e}");
    // Sent again while the disk still fails: still no certificate.
    let e = call(&r, &inc, &first_canister()).unwrap_err();
    assert!(e.to_string().contains("send the request again"), "{e}");
    // The disk is back: the same request is answered, from its record, executed once.
    r.cut_checkpoints_after(usize::MAX);
    assert!(matches!(
        call(&r, &inc, &first_canister()).unwrap(),
        CallAnswer::Certified(_)
    ));
    assert_eq!(value(&r, &a), 4);
    drop(r);
    let (r, rec) = open(&dir).unwrap();
    assert_eq!(rec.height, Some(6), "{rec}");
    assert_eq!(value(&r, &a), 4);
}

#[test]
fn damaged_checkpoints_are_set_aside_and_with_none_sound_the_replica_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let a = signer();
    counter_state(&dir, &a, 2);
    assert_eq!(manifests(&dir).len(), 2, "two checkpoints are kept");

    // A truncated newest manifest: the one before is taken up, and the report says why.
    let truncated = tmp.path().join("truncated");
    copy_dir(&dir, &truncated);
    let newest = manifests(&truncated).pop().unwrap();
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    std::fs::write(truncated.join("chunks/.tmp-half-written"), b"x").unwrap();
    let (r, rec) = open(&truncated).unwrap();
    let text = rec.to_string();
    assert_eq!(rec.height, Some(3), "{text}");
    assert_eq!(value(&r, &a), 1);
    assert!(text.contains("not a checkpoint manifest"), "{text}");
    assert!(text.contains("set aside as"), "{text}");
    assert!(text.contains("unfinished write"), "{text}");
    assert!(newest.with_extension("cbor.corrupt").is_file());

    // A flipped byte in a piece the newest checkpoint alone names: the same.
    // The piece is moved to damaged/, the manifest naming it set aside.
    let flipped = tmp.path().join("flipped");
    copy_dir(&dir, &flipped);
    let piece = newest_only_piece(&flipped);
    let mut bytes = std::fs::read(&piece).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&piece, bytes).unwrap();
    std::fs::write(flipped.join("chunks/README"), b"not ours").unwrap();
    let (r, rec) = open(&flipped).unwrap();
    let text = rec.to_string();
    assert_eq!(rec.height, Some(3), "{text}");
    assert_eq!(value(&r, &a), 1);
    assert!(text.contains("does not match its hash (moved to"), "{text}");
    assert!(text.contains("is missing or damaged"), "{text}");
    assert!(flipped
        .join("damaged")
        .join(piece.file_name().unwrap())
        .is_file());
    // The next checkpoint collects pieces but keeps those the set-aside manifest names, and
    // files in chunks/ that are not pieces.
    let aside_pieces = pieces_of(&flipped.join("checkpoints/00000000000000000004.cbor.corrupt"));
    call(&r, &inc_body(&a), &first_canister()).unwrap();
    for p in aside_pieces
        .iter()
        .filter(|p| **p != *piece.file_name().unwrap())
    {
        assert!(
            flipped.join("chunks").join(p).is_file(),
            "piece {p:?} was collected"
        );
    }
    assert!(flipped.join("chunks/README").is_file());

    // A piece name that is no hash (a path, say) is damage, never a file to read.
    let named = tmp.path().join("named");
    copy_dir(&dir, &named);
    rewrite_newest(&named, |m| {
        m.canisters[0].heap.chunks[0] = "../../keys/root.bls".into()
    });
    let (_, rec) = open(&named).unwrap();
    assert_eq!(rec.height, Some(3), "{rec}");
    assert!(rec.to_string().contains("is not a piece name"), "{rec}");

    // A newer format: no start, and nothing set aside (a newer replica may read it).
    let newer = tmp.path().join("newer");
    copy_dir(&dir, &newer);
    rewrite_newest(&newer, |m| m.format = 2);
    let e = open(&newer)
        .err()
        .expect("an older replica must not take up newer state");
    assert!(e.to_string().contains("checkpoint format 2"), "{e}");
    assert_eq!(manifests(&newer).len(), 2);

    // Every checkpoint damaged: no start, and the error names each one.
    let ruined = tmp.path().join("ruined");
    copy_dir(&dir, &ruined);
    for m in manifests(&ruined) {
        std::fs::write(&m, b"\xff not cbor").unwrap();
    }
    let e = open(&ruined)
        .err()
        .expect("an empty start would lose the canister");
    let text = e.to_string();
    assert!(text.contains("no checkpoint here is sound"), "{text}");
    assert_eq!(
        text.matches("not a checkpoint manifest").count(),
        2,
        "{text}"
    );
}

fn read_manifest(p: &Path) -> replica::checkpoint::Manifest {
    serde_cbor::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn pieces_of(p: &Path) -> Vec<std::ffi::OsString> {
    read_manifest(p)
        .canisters
        .iter()
        .flat_map(|c| c.wasm.iter().chain([&c.heap, &c.stable]))
        .flat_map(|b| b.chunks.iter().map(std::ffi::OsString::from))
        .collect()
}

/// The checkpoint manifests in `dir`, oldest first (set-aside ones are not).
fn manifests(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut all: Vec<_> = std::fs::read_dir(dir.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cbor"))
        .collect();
    all.sort();
    all
}

/// Change the newest manifest in place.
fn rewrite_newest(dir: &Path, change: impl FnOnce(&mut replica::checkpoint::Manifest)) {
    let newest = manifests(dir).pop().unwrap();
    let mut m = read_manifest(&newest);
    change(&mut m);
    std::fs::write(&newest, serde_cbor::to_vec(&m).unwrap()).unwrap();
}

/// A piece the newest checkpoint names and the one before does not.
fn newest_only_piece(dir: &Path) -> std::path::PathBuf {
    let all = manifests(dir);
    let (older, newer) = (pieces_of(&all[0]), pieces_of(&all[1]));
    let only = newer
        .into_iter()
        .find(|p| !older.contains(p))
        .expect("the newest checkpoint has a piece of its own");
    dir.join("chunks").join(only)
}
