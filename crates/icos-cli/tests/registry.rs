//! The registry server as a process: `kill -9` during a stream of votes loses no adopted
//! change and corrupts nothing; every acknowledged adoption is in the verified log.

mod common;
use common::*;
use registry_client::api::Api;
use registry_model::api::ProposalStatus;
use registry_model::subnet_key;
use registry_model::*;
use registry_server::localnet::LocalGovernance;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn kill_9_during_votes_loses_no_adopted_change() {
    let dir = tempfile::tempdir().unwrap();
    let gov = LocalGovernance::create(
        &dir.path().join("keys"),
        "durability",
        &[40, 30, 20, 10],
        &[],
        LocalGovernance::default_settings,
    )
    .unwrap();
    let genesis = dir.path().join("keys/genesis.toml");
    let data = dir.path().join("data");
    let out = icos()
        .args(["registry", "init", "--genesis"])
        .arg(&genesis)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let genesis_hash = String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let key = gov.dir.join("online.key");
    let neurons = Arc::new(gov.neurons);
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let mut next_version = 0u64;

    for round in 0..3u64 {
        let port = free_port();
        let mut server = start_registry_server(&data, &key, port);
        let api_url = format!("http://127.0.0.1:{port}");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (neurons2, acked2, stop2) = (neurons.clone(), acked.clone(), stop.clone());
        let base = round * 10_000;
        let streamer = std::thread::spawn(move || {
            let api = Api::new(&api_url);
            let mut i = base;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let version = format!("{}.0.0", i);
                let action = Action::ElectGuestos(Elected {
                    version: version.clone(),
                    sha256: "ab".repeat(32).parse().unwrap(),
                    size: None,
                    urls: vec!["http://m/x".into()],
                });
                let Ok(p) = api.propose(&neurons2[3], &version, action) else {
                    break;
                };
                let h = p.proposal.body.hash();
                for neuron in [1u64, 2] {
                    match api.vote(
                        p.id,
                        &SignedVote::sign(&h, neuron, Vote::Yes, &neurons2[neuron as usize - 1]),
                    ) {
                        Ok(r) => {
                            if let ProposalStatus::Adopted { version: v } = r.status {
                                acked2.lock().unwrap().push((v, version.clone()));
                            }
                        }
                        Err(_) => return,
                    }
                }
            }
        });
        std::thread::sleep(Duration::from_millis(700 + 400 * round));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        streamer.join().unwrap();
        let n = acked.lock().unwrap().len();
        assert!(
            n as u64 > next_version,
            "round {round}: no votes were acknowledged before the kill"
        );
        next_version = n as u64;
    }

    // After the last kill: restart, and verify the whole log from the genesis.
    let port = free_port();
    let mut server = start_registry_server(&data, &key, port);
    let cfg = registry_client::ClientConfig::new(
        vec![format!("http://127.0.0.1:{port}")],
        &genesis_hash,
        dir.path().join("client"),
    );
    let mut client = registry_client::Client::open(cfg).unwrap();
    client.sync().unwrap();
    let reg = client.registry().clone();
    let acked = acked.lock().unwrap();
    for (version, name) in acked.iter() {
        assert!(
            client.version() >= *version,
            "head {} lost adopted version {version}",
            client.version()
        );
        assert!(
            reg.guestos_versions.contains_key(name),
            "adopted {name} (version {version}) is missing after kill -9"
        );
    }
    eprintln!(
        "{} adoptions acknowledged across 3 kills; all present in the verified log (head {})",
        acked.len(),
        client.version()
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

/// `icos gov propose create-subnet --root-key` makes the subnet's key, delegates it and
/// seals it to each node; the registry takes it, each node opens its box, and a subnet
/// without a key or with one another root key delegated is refused with the reason.
#[test]
fn gov_creates_a_subnet_with_its_key_delegated_by_the_root_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gov = governed_registry(&dir.path().join("keys"), "subnets", &data);
    let port = free_port();
    let _server = Proc(start_registry_server(
        &data,
        &gov.dir.join("online.key"),
        port,
    ));
    let url = format!("http://127.0.0.1:{port}");
    let api = Api::new(&url);
    let node_keys: Vec<_> = (0..2).map(|_| keys::generate()).collect();
    for (i, k) in node_keys.iter().enumerate() {
        register_node(
            &api,
            &gov,
            k,
            i + 1,
            format!("http://[fd00::{}]:8080", i + 1),
            None,
        );
    }
    let ids: Vec<String> = node_keys
        .iter()
        .map(|k| node_id(&keys::public_hex(k)))
        .collect();
    let propose = |id: &str, extra: &[&std::ffi::OsStr]| {
        icos()
            .args(["gov", "propose", "create-subnet", "--id", id, "--nodes"])
            .arg(ids.join(","))
            .args([
                "--canister-range",
                "0-99",
                "--guestos",
                "1.0.0",
                "--registry",
                &url,
            ])
            .arg("--key")
            .arg(gov.dir.join("neuron_1.key"))
            .args(extra)
            .output()
            .unwrap()
    };
    // No key in a network with a root key: refused, saying what is missing.
    let out = propose("s0", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs its key"),
        "{err}"
    );
    // Delegated by a key that is not the genesis's root key: refused.
    let forged = dir.path().join("forged.bls");
    subnet_key::write_bls_key(&forged, &certified_state::BlsKey::generate()).unwrap();
    let out = propose("s0", &["--root-key".as_ref(), forged.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("root key"), "{err}");
    // With the root key: adopted, and each node opens the same subnet key.
    let root = gov.dir.join("root.bls");
    let kept = dir.path().join("s1.bls");
    let out = propose(
        "s1",
        &[
            "--root-key".as_ref(),
            root.as_os_str(),
            "--subnet-key-out".as_ref(),
            kept.as_os_str(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reg = api.snapshot(None).unwrap().registry;
    let material = reg.subnets["s1"]
        .key
        .clone()
        .expect("the subnet has its key");
    let secret = subnet_key::read_bls_key(&kept).unwrap();
    for (id, k) in ids.iter().zip(&node_keys) {
        assert_eq!(
            material.open_for(id, k).unwrap().to_bytes(),
            secret.to_bytes()
        );
    }
}
