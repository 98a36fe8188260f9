//! The local network end to end (TCG): two nodes boot, register and follow governance
//! through good, broken, forged and not-adopted upgrades, a firewall change and a HostOS
//! assignment; each runs its subnet's replica, and once node2 leaves the subnet node1 serves
//! the counter through a governed upgrade and a power cut; then the registry goes away.
//!
//! One testnet serves every scenario in order: booting nodes under TCG is the expensive
//! part, and each scenario starts from the state the previous one left.

mod common;
use common::*;
use node_status::hostos::AgentStatus;
use node_status::orchestrator::{
    BoundaryState, HostosRequest, OrchestratorStatus, ReplicaState, UpgradeState,
};
use registry_model::api::ProposalStatus;
use registry_model::{Action, Elected, Vote};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testnet::{Health, NodeRow, RolloutOutcome, State};

const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(900);

/// Stops the testnet however the test ends: on a panic (drop), and on SIGTERM, which nextest
/// sends when the test runs out of time and after which no drop runs (the VMs, agents,
/// registry and mirror are detached and would run on, starving the tests after it).
struct Down(PathBuf);

impl Down {
    fn new(dir: PathBuf) -> Down {
        let on_term = dir.clone();
        std::thread::spawn(move || {
            use tokio::signal::unix::{signal, SignalKind};
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(mut term) = signal(SignalKind::terminate()) else {
                    return;
                };
                term.recv().await;
                eprintln!("testnet test: SIGTERM (out of time?): stopping the testnet");
                if on_term.join("testnet.json").exists() {
                    let _ = testnet::down(&on_term, &testnet::Stderr);
                }
                std::process::exit(1);
            });
        });
        Down(dir)
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.join("testnet.json").exists() {
            let _ = testnet::down(&self.0, &testnet::Stderr);
        }
    }
}

/// GuestOS 1.0.0 and 1.1.0 (production recipe) and the broken 1.2.0, where the testnet
/// looks for them.
fn images() -> PathBuf {
    let dir = run_dir().join("testnet-images");
    std::fs::create_dir_all(&dir).unwrap();
    for (version, img) in [
        ("1.0.0", image("guestos")),
        ("1.1.0", image_version("guestos", "1.1.0")),
        ("1.2.0", broken_image()),
    ] {
        let link = dir.join(format!("guestos-{version}"));
        if !link.exists() {
            std::os::unix::fs::symlink(img, &link).unwrap();
        }
    }
    dir
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Everything a failure needs: each node's status, agent log and serial log.
fn diagnostics(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(state) = State::load(dir) {
        for r in testnet::status(&state) {
            out += &format!(
                "\n=== {} status: {}\n",
                r.name,
                serde_json::to_string(&r).unwrap()
            );
        }
        for n in &state.nodes {
            out += &format!(
                "=== {} agent log\n{}\n=== {} serial log\n{}\n",
                n.name,
                tail(&dir.join(format!("logs/{}-agent.log", n.name)), 30),
                n.name,
                tail(&n.dir.join("state/guest-serial.log"), 60)
            );
        }
    }
    out
}

fn check(dir: &Path, ok: bool, what: &str) {
    if !ok {
        panic!("{what}\n{}", diagnostics(dir));
    }
}

/// Propose with neuron 1, vote yes with neuron 2: adopted.
fn adopt(state: &State, title: &str, action: Action) {
    let r = state.propose(1, &[2], title, action).unwrap();
    assert!(
        matches!(r.status, ProposalStatus::Adopted { .. }),
        "{:?}",
        r.status
    );
}

/// `icos canister --url URL ARGS` with the testnet's identity.
fn canister(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    icos()
        .args(["canister", "--url", url, "--identity"])
        .arg(dir.join("identity.pem"))
        .args(args)
        .output()
        .unwrap()
}

/// What `icos testnet status` prints.
fn status_table(dir: &Path) -> String {
    let out = icos()
        .args(["testnet", "status", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The counter canister's value, by a query.
fn counter_value(dir: &Path, url: &str, id: &str) -> u64 {
    // The orchestrator says "serving" once the replica's unit is active, a moment before the
    // replica listens (it opens its state and its log first; CI saw a refused connection
    // right after a rollback): retry a connection that fails, never a wrong answer.
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = canister(dir, url, &["query", id, "get"]);
        let refused = String::from_utf8_lossy(&out.stderr).contains("error sending request");
        if out.status.success() || !refused || Instant::now() > deadline {
            break out;
        }
        eprintln!("{url}: not listening yet; again");
        std::thread::sleep(Duration::from_secs(1));
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Candid text: `(2 : nat64)`.
    text.trim()
        .trim_start_matches('(')
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a counter value: {text}"))
}

/// The root key a replica's `/api/v2/status` serves.
fn replica_root_key(url: &str) -> Vec<u8> {
    // The unit is active a moment before the replica listens (CI saw a reset): retry the
    // connection for a while, never a wrong answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let body = loop {
        match ureq::get(&format!("{url}/api/v2/status"))
            .timeout(Duration::from_secs(10))
            .call()
        {
            Ok(r) => break r.into_reader(),
            Err(ureq::Error::Transport(e)) if std::time::Instant::now() < deadline => {
                eprintln!("{url}: {e}; again");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => panic!("{url}: {e}"),
        }
    };
    let v: serde_cbor::Value = serde_cbor::from_reader(body).unwrap();
    let v = match v {
        serde_cbor::Value::Tag(_, inner) => *inner,
        v => v,
    };
    let serde_cbor::Value::Map(m) = v else {
        panic!("status is not a map")
    };
    match m.get(&serde_cbor::Value::Text("root_key".into())) {
        Some(serde_cbor::Value::Bytes(b)) => b.clone(),
        other => panic!("root_key: {other:?}"),
    }
}

fn rows(state: &State) -> Vec<NodeRow> {
    testnet::status(state)
}

/// The node's orchestrator status (a default one while it does not answer).
fn orch(r: &NodeRow) -> OrchestratorStatus {
    r.orchestrator.clone().unwrap_or_default()
}

/// How often a node asked the mirror for `file` (nginx access log).
fn served(dir: &Path, file: &str) -> usize {
    std::fs::read_to_string(dir.join("logs/nginx-access.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("GET /{file} ")))
        .count()
}

/// Every node runs `version` confirmed, its VM is up, and it says it wants `version`.
fn settled_on(rows: &[NodeRow], version: &str) -> bool {
    rows.iter()
        .all(|r| r.runs_confirmed(version) && orch(r).target_guestos.as_deref() == Some(version))
}

fn wait_until(dir: &Path, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}\n{}",
        diagnostics(dir)
    );
}

#[test]
fn testnet_nodes_follow_governance_through_good_broken_forged_and_rejected_upgrades() {
    let dir = run_dir().join("testnet");
    let _down = Down::new(dir.clone());
    let images = images();

    // --- Up: two nodes register and run 1.0.0. --------------------------------------
    let out = icos()
        .args([
            "testnet",
            "up",
            "--nodes",
            "2",
            "--boundary-nodes",
            "0",
            "--dir",
        ])
        .arg(&dir)
        .arg("--images")
        .arg(&images)
        .output()
        .unwrap();
    check(
        &dir,
        out.status.success(),
        &format!(
            "testnet up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("registry:") && text.contains("node2:"),
        "{text}"
    );
    let mut state = State::load(&dir).unwrap();
    let reg = state.api().snapshot(None).unwrap().registry;
    assert_eq!(reg.nodes.len(), 2, "{:?}", reg.nodes);
    assert_eq!(reg.subnets["subnet-1"].guestos_version, "1.0.0");
    // `up` returns once each orchestrator has seen itself registered and in its subnet, so
    // a status right after it never says "not registered".
    for r in rows(&state) {
        assert!(
            orch(&r).registered
                && orch(&r).subnet.as_deref() == Some("subnet-1")
                && orch(&r).replica != ReplicaState::NotAssigned,
            "right after up: {r:?}"
        );
    }
    wait_until(
        &dir,
        "both nodes settled on 1.0.0",
        Duration::from_secs(300),
        || settled_on(&rows(&state), "1.0.0"),
    );
    for r in rows(&state) {
        assert_eq!(r.subnet.as_deref(), Some("subnet-1"));
        assert_eq!(orch(&r).node_id, r.node_id);
        assert!(orch(&r).registered);
        assert!(orch(&r).firewall_rules >= 1, "{r:?}");
    }
    let json = icos()
        .args(["testnet", "status", "--json", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["health"]["health"] == "healthy"),
        "{listed}"
    );

    // --- Each node runs its subnet's replica under the key the root key delegated. -------
    wait_until(
        &dir,
        "both replicas serving subnet-1",
        Duration::from_secs(180),
        || {
            rows(&state).iter().all(|r| {
            matches!(&orch(r).replica, ReplicaState::Serving { subnet, .. } if subnet == "subnet-1")
        })
        },
    );
    let root_key = std::fs::read_to_string(dir.join("keys/genesis.toml")).unwrap();
    for n in &state.nodes {
        let url = format!("http://127.0.0.1:{}", n.payload_port);
        let served = replica_root_key(&url);
        assert!(
            root_key.contains(&hex::encode(&served)),
            "{}: /api/v2/status serves a root key the genesis does not name",
            n.name
        );
    }
    // --- subnet-1's two nodes order its calls in one log (VM to VM through the peer port): -
    // a counter made through node1 counts calls sent to either node, and both answer it.
    let urls: Vec<String> = state
        .nodes
        .iter()
        .map(|n| format!("http://127.0.0.1:{}", n.payload_port))
        .collect();
    let out = canister(&dir, &urls[0], &["create"]);
    check(
        &dir,
        out.status.success(),
        &format!(
            "create through node1 of a two-node subnet: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    let shared = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let counter_wat = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../canisters/counter.wat");
    let out = canister(
        &dir,
        &urls[1],
        &["install", &shared, counter_wat.to_str().unwrap()],
    );
    check(
        &dir,
        out.status.success(),
        &format!(
            "install through node2: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    for (want, via) in [("1", 1), ("2", 0), ("3", 1)] {
        let out = canister(&dir, &urls[via], &["call", &shared, "inc"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(want),
            "inc through node{}: {text}{}",
            via + 1,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for url in &urls {
        wait_until(&dir, "both nodes count 3", Duration::from_secs(30), || {
            counter_value(&dir, url, &shared) == 3
        });
    }

    let real = image_version("guestos", "1.1.0");
    let sha = state.publish(&real, "1.1.0").unwrap();
    std::fs::write(dir.join("packages/garbage.tar"), vec![0x5a; 1 << 20]).unwrap();
    let node_ids: Vec<String> = rows(&state).iter().map(|r| r.node_id.clone()).collect();
    let probe: Vec<String> = (0..3).map(|i| format!("{i}")).collect();
    let starts: Vec<usize> = node_ids
        .iter()
        .map(|n| {
            probe
                .iter()
                .position(|p| p == registry_model::mirror_order(&probe, n)[0])
                .unwrap()
        })
        .collect();
    let urls: Vec<String> = (0..3)
        .map(|i| {
            if starts.contains(&i) {
                state.mirror_url(if i == starts[0] {
                    "garbage.tar"
                } else {
                    "missing.tar"
                })
            } else {
                state.mirror_url("guestos-1.1.0.tar")
            }
        })
        .collect();
    adopt(
        &state,
        "elect GuestOS 1.1.0",
        Action::ElectGuestos(Elected {
            version: "1.1.0".into(),
            sha256: sha.clone(),
            size: None,
            urls,
        }),
    );

    // --- A minority's deploy proposal changes nothing. ----------------------------------
    let deploy_110 = Action::DeployGuestosToSubnet {
        subnet: "subnet-1".into(),
        version: "1.1.0".into(),
    };
    let minority = state
        .propose(3, &[], "deploy 1.1.0 (minority)", deploy_110.clone())
        .unwrap();
    assert_eq!(minority.status, ProposalStatus::Open);
    let v = state.api().snapshot(None).unwrap().version;
    // Let every node sync past the proposal a few times.
    wait_until(
        &dir,
        "nodes synced the registry",
        Duration::from_secs(120),
        || rows(&state).iter().all(|r| orch(r).registry_version >= v),
    );
    std::thread::sleep(Duration::from_secs(25));
    let rejected = state.vote(&minority, 1, Vote::No).unwrap();
    let rejected = state.vote(&rejected, 2, Vote::No).unwrap();
    assert_eq!(rejected.status, ProposalStatus::Rejected);
    let now = rows(&state);
    check(
        &dir,
        settled_on(&now, "1.0.0"),
        "a minority proposal moved a node",
    );
    assert!(
        now.iter()
            .all(|r| orch(r).upgrade.state == UpgradeState::Idle),
        "{now:?}"
    );
    assert_eq!(
        served(&dir, "guestos-1.1.0.tar") + served(&dir, "garbage.tar"),
        0
    );

    // --- A forged package (SHA-256 differs from the elected one) is refused. ------------
    let forged = dir.join("packages/guestos-1.3.0.tar");
    let mut bytes = std::fs::read(real.join("update.tar")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&forged, bytes).unwrap();
    let r = state.elect_guestos("1.3.0", &sha, &[2]).unwrap();
    assert!(
        matches!(r.status, ProposalStatus::Adopted { .. }),
        "{:?}",
        r.status
    );
    adopt(
        &state,
        "deploy 1.3.0",
        Action::DeployGuestosToSubnet {
            subnet: "subnet-1".into(),
            version: "1.3.0".into(),
        },
    );
    let res = testnet::follow(
        &state,
        "subnet-1",
        "1.3.0",
        ROLLOUT_TIMEOUT,
        &testnet::Stderr,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&dir)));
    for r in &res {
        check(
            &dir,
            matches!(&r.outcome, RolloutOutcome::Refused { reason } if reason.contains("SHA-256")),
            &format!("forged package: {r:?}"),
        );
    }
    let now = rows(&state);
    check(
        &dir,
        now.iter().all(|r| r.runs_confirmed("1.0.0")),
        "a node stopped running 1.0.0 after refusing a forged package",
    );

    // --- 1.1.0 is deployed: both nodes upgrade past the bad mirrors and confirm. --------
    adopt(&state, "deploy 1.1.0", deploy_110);
    let res = testnet::follow(
        &state,
        "subnet-1",
        "1.1.0",
        ROLLOUT_TIMEOUT,
        &testnet::Stderr,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&dir)));
    check(
        &dir,
        res.iter().all(|r| r.outcome == RolloutOutcome::Confirmed),
        &format!("1.1.0 rollout: {res:?}"),
    );
    let reg = state.api().snapshot(None).unwrap().registry;
    assert_eq!(reg.subnets["subnet-1"].guestos_version, "1.1.0");
    wait_until(
        &dir,
        "both nodes settled on 1.1.0",
        Duration::from_secs(120),
        || settled_on(&rows(&state), "1.1.0"),
    );
    // One node at a time: each rebooted into 1.1.0 only while the other served, caught up
    // (the orchestrator's rollout turn, from what its replica heard from the other).
    for n in &state.nodes {
        let logs = ["state/guest-serial.log.1", "state/guest-serial.log"]
            .map(|f| std::fs::read_to_string(n.dir.join(f)).unwrap_or_default())
            .concat();
        check(
            &dir,
            logs.contains("1.1.0 installed; rebooting (1 of 2 members away with this node"),
            &format!("{} rebooted into 1.1.0 without its turn", n.name),
        );
    }
    // Each node met a bad mirror first, and none of them installed what it served.
    assert!(
        served(&dir, "garbage.tar") >= 1,
        "nobody tried the garbage mirror"
    );
    assert!(
        served(&dir, "garbage.tar") + served(&dir, "missing.tar") >= 2,
        "a node skipped its bad mirror"
    );

    // --- Governance takes node2 out of subnet-1: its replica stops and its state goes; ----
    // node1's replica, now a subnet of one, takes calls: the counter through its port.
    adopt(
        &state,
        "unassigned nodes run 1.1.0",
        Action::DeployGuestosToUnassigned {
            version: "1.1.0".into(),
        },
    );
    let node2 = node_ids[1].clone();
    adopt(
        &state,
        "node2 leaves subnet-1",
        Action::RemoveNodesFromSubnet {
            subnet: "subnet-1".into(),
            nodes: vec![node2],
        },
    );
    wait_until(
        &dir,
        "node2's replica removed, node1's serving a subnet of one",
        Duration::from_secs(240),
        || {
            let now = rows(&state);
            orch(&now[1]).replica == ReplicaState::NotAssigned
                && now[1].subnet.is_none()
                && matches!(
                    orch(&now[0]).replica,
                    ReplicaState::Serving { nodes: 1, .. }
                )
        },
    );
    let serial2 = std::fs::read_to_string(state.nodes[1].dir.join("state/guest-serial.log"))
        .unwrap_or_default();
    assert!(
        serial2.contains("GUESTOS REPLICA stopped and its state deleted"),
        "{}",
        tail(&state.nodes[1].dir.join("state/guest-serial.log"), 30)
    );
    let url1 = format!("http://127.0.0.1:{}", state.nodes[0].payload_port);
    // The status table says where each replica answers.
    let table = status_table(&dir);
    let line = |node: &str| {
        table
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("no {node} row: {table}"))
            .to_string()
    };
    assert!(line("node1").contains(&url1), "{table}");
    assert!(!line("node2").contains("http://"), "{table}");
    let out = canister(&dir, &url1, &["create"]);
    check(
        &dir,
        out.status.success(),
        &format!("create on node1: {}", String::from_utf8_lossy(&out.stderr)),
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let counter = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../canisters/counter.wat");
    let out = canister(&dir, &url1, &["install", &id, counter.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in ["1", "2"] {
        let out = canister(&dir, &url1, &["call", &id, "inc"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(want), "{text}");
    }
    assert_eq!(counter_value(&dir, &url1, &id), 2);
    // The same counter through the network's API boundary: one URL for agents, the
    // canister's subnet and a healthy node of it found from the verified registry.
    let boundary = state.boundary_url().expect("the testnet runs a boundary");
    assert!(
        table.contains(&format!(
            "boundary {boundary}: routes from registry version"
        )),
        "{table}"
    );
    assert_eq!(counter_value(&dir, &boundary, &id), 2);

    // --- Governance makes node2 (in no subnet now) an API boundary node: its orchestrator --
    // starts the boundary on its payload port, configured from its config disk and the
    // verified registry, and it reaches node1 through its host. It becomes the agents' URL.
    let host_boundary = boundary;
    testnet::make_api_boundary(&mut state, &[1], &testnet::Stderr)
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&dir)));
    let boundary = state.boundary_url().unwrap();
    assert_eq!(
        boundary,
        format!("http://127.0.0.1:{}", state.nodes[1].payload_port)
    );
    let out = canister(&dir, &boundary, &["call", &id, "inc"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains('3'), "{text}");
    assert_eq!(counter_value(&dir, &boundary, &id), 3);
    let o2 = orch(&rows(&state)[1]);
    assert!(
        matches!(&o2.boundary, BoundaryState::Serving { https: false, .. }),
        "{o2:?}"
    );
    assert!(
        std::fs::read_to_string(state.nodes[1].dir.join("state/guest-serial.log"))
            .unwrap_or_default()
            .contains("GUESTOS BOUNDARY serving the network's API and pages"),
        "{}",
        tail(&state.nodes[1].dir.join("state/guest-serial.log"), 30)
    );
    // Its gateway: the counter has no pages, and the browser is told so.
    let page = ureq::get(&format!("{boundary}/"))
        .set("host", &format!("{id}.localhost"))
        .timeout(Duration::from_secs(20))
        .call();
    match page {
        Err(ureq::Error::Status(_, r)) => {
            assert_eq!(r.header("x-ic-error-cause"), Some("canister_reject"))
        }
        other => panic!("a page from a canister without pages: {other:?}"),
    }
    let table = status_table(&dir);
    assert!(
        table.lines().any(|l| l.starts_with("node2")
            && l.contains("api-bn")
            && l.contains(&format!("boundary {boundary}")))
            && table.contains(&format!(
                "boundary {boundary}: routes from registry version"
            )),
        "{table}"
    );

    // --- Broken 1.2.0 on subnet-1 (node1 now): it rolls back to 1.1.0 and holds, and the -
    // counter is still there after the trial and the rollback.
    let res = testnet::upgrade(&state, "subnet-1", "1.2.0", &testnet::Stderr)
        .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&dir)));
    check(
        &dir,
        res.len() == 1
            && matches!(&res[0].outcome, RolloutOutcome::RolledBack { to, .. } if to == "1.1.0"),
        &format!("broken 1.2.0: {res:?}"),
    );
    let fetched = served(&dir, "guestos-1.2.0.tar");
    assert!(fetched >= 1, "node1 downloaded 1.2.0");
    wait_until(
        &dir,
        "node1 holding on 1.1.0, its replica serving",
        Duration::from_secs(180),
        || {
            let o = orch(&rows(&state)[0]);
            o.upgrade.state == UpgradeState::Holding
                && o.guestos_version == "1.1.0"
                && o.confirmed
                && matches!(o.replica, ReplicaState::Serving { .. })
        },
    );
    assert_eq!(
        counter_value(&dir, &url1, &id),
        3,
        "the counter after the rollback"
    );
    // node1 said on its console why it went back: the health check's own words.
    let n = &state.nodes[0];
    let logs = ["state/guest-serial.log.1", "state/guest-serial.log"]
        .map(|f| std::fs::read_to_string(n.dir.join(f)).unwrap_or_default())
        .concat();
    let line = logs
        .lines()
        .find(|l| l.contains("GUESTOS UPGRADE ROLLBACK"))
        .unwrap_or_else(|| panic!("node1 printed no rollback line\n{}", diagnostics(&dir)));
    assert!(
        line.contains("from=1.2.0") && line.contains("to=1.1.0"),
        "{line}"
    );
    assert!(
        line.contains("health check failed") && line.contains("payload is not healthy"),
        "{line}"
    );
    // Holding: 1.2.0 is not tried again (the download count is checked again below, several
    // loop rounds later). node2, unassigned, never saw 1.2.0.
    let now = rows(&state);
    let (n1, n2) = (&now[0], &now[1]);
    let o = orch(n1);
    assert!(
        o.upgrade.failed_versions.iter().any(|v| v == "1.2.0"),
        "{n1:?}"
    );
    let last = o.upgrade.last_result.clone().unwrap_or_default();
    assert!(
        last.contains("1.2.0") && last.contains("not retrying"),
        "{last}"
    );
    check(
        &dir,
        n2.runs_confirmed("1.1.0") && orch(n2).upgrade.state == UpgradeState::Idle,
        &format!("node2 during 1.2.0: {n2:?}"),
    );

    // --- Governance tightens node1's firewall and assigns it a HostOS version. -----------
    let ruleset_before: Vec<Option<String>> = rows(&state)
        .iter()
        .map(|r| orch(r).firewall_ruleset)
        .collect();
    let node1 = node_ids[0].clone();
    adopt(
        &state,
        "firewall for node1",
        Action::SetFirewallRules {
            scope: registry_model::FirewallScope::Node(node1.clone()),
            rules: vec![registry_model::FirewallRule {
                action: registry_model::FwAction::Deny,
                protocol: registry_model::Protocol::Tcp,
                ports: vec![8080],
                sources: vec!["10.0.2.99/32".into()],
                comment: "block one peer".into(),
            }],
        },
    );
    // The host's HostOS package is never fetched here: the dev-machine agent answers the
    // request from its own registry view, which is what the orchestrator must record.
    adopt(
        &state,
        "elect HostOS 2.0.0",
        Action::ElectHostos(Elected {
            version: "2.0.0".into(),
            sha256: "ab".repeat(32).parse().unwrap(),
            size: None,
            urls: vec![state.mirror_url("hostos-2.0.0.tar")],
        }),
    );
    adopt(
        &state,
        "deploy HostOS 2.0.0 to node1",
        Action::DeployHostosToNodes {
            nodes: vec![node1.clone()],
            version: "2.0.0".into(),
        },
    );
    wait_until(
        &dir,
        "node1 applying its new firewall and asking its host for HostOS 2.0.0",
        Duration::from_secs(120),
        || {
            let o = orch(&rows(&state)[0]);
            o.firewall_ruleset != ruleset_before[0]
                && o.firewall_rules == 2
                && o.hostos_assigned.as_deref() == Some("2.0.0")
                && o.hostos_request.is_some()
        },
    );
    let now = rows(&state);
    let (n1, n2) = (&now[0], &now[1]);
    assert!(orch(n1).firewall_error.is_none(), "{n1:?}");
    let serial = std::fs::read_to_string(state.nodes[0].dir.join("state/guest-serial.log"))
        .unwrap_or_default();
    assert!(
        serial.contains("GUESTOS FIREWALL applied 2 registry rules"),
        "{}",
        tail(&state.nodes[0].dir.join("state/guest-serial.log"), 30)
    );
    // The host took nothing from the guest but the request: it found its node by the address
    // it gave its guest, read the assignment from its own registry view, and — a development
    // host without a HostOS disk — declined to install.
    match &orch(n1).hostos_request {
        Some(HostosRequest::Refused { error }) => {
            assert!(error.contains("upgrade.hostos_disk"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    let agent = |i: usize| -> AgentStatus {
        let url = format!("http://127.0.0.1:{}/v1/status", state.nodes[i].agent_port);
        node_status::fetch(&url, Duration::from_secs(5)).unwrap()
    };
    assert_eq!(agent(0).upgrade.requests, 1, "{:?}", agent(0));
    // node2: same firewall as before, nothing assigned, its host never asked.
    assert_eq!(orch(n2).firewall_ruleset, ruleset_before[1], "{n2:?}");
    assert!(orch(n2).hostos_assigned.is_none(), "{n2:?}");
    assert!(orch(n2).hostos_request.is_none(), "{n2:?}");
    assert_eq!(agent(1).upgrade.requests, 0, "{:?}", agent(1));
    let asked_at = Instant::now();

    // Several loop rounds later (before node1 gets a new target): 1.2.0 was not fetched
    // again, and node1's backoff kept it from asking its host twice.
    std::thread::sleep(Duration::from_secs(30).saturating_sub(asked_at.elapsed()));
    assert_eq!(
        served(&dir, "guestos-1.2.0.tar"),
        fetched,
        "1.2.0 was downloaded again"
    );
    assert_eq!(agent(0).upgrade.requests, 1, "{:?}", agent(0));

    // --- Governance moves subnet-1 to 1.0.0: node1 reboots into the other slot, and the ---
    // counter is still there (the data partition belongs to no slot).
    adopt(
        &state,
        "deploy 1.0.0 to subnet-1",
        Action::DeployGuestosToSubnet {
            subnet: "subnet-1".into(),
            version: "1.0.0".into(),
        },
    );
    let res = testnet::follow(
        &state,
        "subnet-1",
        "1.0.0",
        ROLLOUT_TIMEOUT,
        &testnet::Stderr,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", diagnostics(&dir)));
    check(
        &dir,
        res.len() == 1 && res[0].outcome == RolloutOutcome::Confirmed,
        &format!("1.0.0 on node1: {res:?}"),
    );
    let serving = || {
        let r = &rows(&state)[0];
        r.running() && matches!(orch(r).replica, ReplicaState::Serving { nodes: 1, .. })
    };
    wait_until(
        &dir,
        "node1's replica serving on 1.0.0",
        Duration::from_secs(180),
        serving,
    );
    assert_eq!(
        counter_value(&dir, &url1, &id),
        3,
        "the counter after the upgrade"
    );

    // --- A power cut (QEMU killed) during a stream of calls: every answered call is ---------
    // still counted after the HostOS agent restarts the VM, and the replica says what it
    // recovered.
    let boot_before = orch(&rows(&state)[0]).boot_id;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let streamer = {
        let (dir, url1, id) = (dir.clone(), url1.clone(), id.clone());
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if canister(&dir, &url1, &["call", &id, "inc"])
                    .status
                    .success()
                {
                    acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        })
    };
    wait_until(
        &dir,
        "three calls answered",
        Duration::from_secs(120),
        || acked.load(std::sync::atomic::Ordering::SeqCst) >= 3,
    );
    let qemus = testnet::stray_qemus(&state.nodes[0].dir);
    assert_eq!(qemus.len(), 1, "node1's QEMU: {qemus:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemus[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    streamer.join().unwrap();
    let answered = 3 + acked.load(std::sync::atomic::Ordering::SeqCst);
    wait_until(
        &dir,
        "node1 back after the power cut",
        Duration::from_secs(600),
        || serving() && orch(&rows(&state)[0]).boot_id != boot_before,
    );
    let value = counter_value(&dir, &url1, &id);
    // The call in flight at the cut may have run without its answer arriving.
    assert!(
        answered <= value && value <= answered + 1,
        "{answered} calls answered, the counter says {value}"
    );
    // The agent starts each VM on a fresh serial log: this one is the boot after the cut.
    let serial = state.nodes[0].dir.join("state/guest-serial.log");
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        log.contains("replica: recovered the checkpoint at height"),
        "{}",
        tail(&serial, 40)
    );

    // --- The registry goes away: nodes keep what they run and say so. ---------------------
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(state.registry_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until(
        &dir,
        "nodes reporting the registry unreachable",
        Duration::from_secs(120),
        || {
            rows(&state).iter().all(|r| {
                matches!(&r.health, Health::Unhealthy(p) if p.starts_with("registry:"))
                    && orch(r)
                        .registry_error
                        .is_some_and(|e| e.contains("retrying"))
            })
        },
    );
    for (r, version) in rows(&state).iter().zip(["1.0.0", "1.1.0"]) {
        check(
            &dir,
            r.runs_confirmed(version),
            &format!("without a registry: {r:?}"),
        );
    }
    // The boundaries (node2's and the process) keep routing by the last registry version
    // they verified.
    assert_eq!(counter_value(&dir, &boundary, &id), value);
    assert_eq!(counter_value(&dir, &host_boundary, &id), value);

    // --- Down: nothing left running. ---------------------------------------------------------
    let out = icos()
        .args(["testnet", "down", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in &state.nodes {
        assert!(
            !testnet::alive(n.agent_pid),
            "agent {} still running",
            n.agent_pid
        );
    }
    assert!(!testnet::alive(state.nginx_pid));
    assert!(!testnet::alive(state.boundary_pid));
    assert_eq!(testnet::stray_qemus(&dir), Vec::<u32>::new());
}
