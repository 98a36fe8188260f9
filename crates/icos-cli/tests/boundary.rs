//! `icos boundary serve` in front of a real network on this machine: a registry server
//! under local governance, two subnets made by proposals with keys delegated by the root key
//! (`s1` with node a, `s2` with nodes b and c), each node's `icos replica serve` started
//! from the spec its orchestrator would write. Agents get only the boundary's URL:
//! DFINITY's `ic-agent` and `@dfinity/agent` create, install, call and query through it
//! with every certificate and query signature checked; a node killed during a stream of
//! queries costs none of them; with no node left the boundary says so; a node that comes
//! back gets requests again.

mod common;
use candid::{Decode, Encode};
use common::*;
use ic_agent::identity::BasicIdentity;
use ic_agent::{Agent, AgentError};
use ic_principal::Principal;
use ic_utils::interfaces::ManagementCanister;
use node_status::boundary::{BoundaryStatus, NodeState};
use orchestrator::replica::{desired, Desired, ReplicaPlace};
use registry_client::api::Api;
use registry_model::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Start `cmd` and read its stdout until a line starts with `prefix`; the rest of that line.
fn start_until(mut cmd: Command, prefix: &str) -> (Proc, String) {
    // Owned by the guard from the start, so it is killed and reaped on every path.
    let mut proc = Proc(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(proc.0.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("{cmd:?} ended after printing {said:?}");
        };
        if let Some(rest) = line.strip_prefix(prefix) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return (proc, rest.trim().to_string());
        }
        said.push(line);
    }
}

fn canister_index_id(index: u64) -> Principal {
    let mut b = index.to_be_bytes().to_vec();
    b.extend([1, 1]);
    Principal::from_slice(&b)
}

const S2_FIRST: u64 = 1 << 20;

/// One node: its id, key, port and replica spec.
struct NodeSpec {
    id: String,
    port: u16,
    spec: PathBuf,
}

struct Net {
    _registry: Proc,
    registry_url: String,
    genesis_hash: String,
    root_key: Vec<u8>,
    nodes: Vec<NodeSpec>,
    dir: PathBuf,
}

/// Registry, three registered nodes, subnets s1 = {a} and s2 = {b, c} by proposals.
fn network(dir: &Path) -> Net {
    let data = dir.join("registry");
    let gov = governed_registry(&dir.join("keys"), "boundary", &data);
    let port = free_port();
    let registry = Proc(start_registry_server(
        &data,
        &gov.dir.join("online.key"),
        port,
    ));
    let url = format!("http://127.0.0.1:{port}");
    let api = Api::new(&url);
    let keys: Vec<_> = (0..3).map(|_| keys::generate()).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, (k, port)) in keys.iter().zip(&ports).enumerate() {
        register_node(&api, &gov, k, i + 1, format!("http://127.0.0.1:{port}"));
    }
    let ids: Vec<String> = keys.iter().map(|k| node_id(&keys::public_hex(k))).collect();
    for (subnet, nodes, range) in [
        ("s1", &ids[..1], format!("0-{}", S2_FIRST - 1)),
        ("s2", &ids[1..], format!("{S2_FIRST}-{}", 2 * S2_FIRST - 1)),
    ] {
        let out = icos()
            .args(["gov", "propose", "create-subnet", "--id", subnet, "--nodes"])
            .arg(nodes.join(","))
            .args(["--canister-range", &range, "--guestos", "1.0.0"])
            .args(["--registry", &url, "--key"])
            .arg(gov.dir.join("neuron_1.key"))
            .arg("--root-key")
            .arg(gov.dir.join("root.bls"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reg = api.snapshot(None).unwrap().registry;
    let nodes = ids
        .iter()
        .zip(&keys)
        .zip(&ports)
        .map(|((id, key), port)| {
            let place = ReplicaPlace {
                dir: dir.join(id),
                listen: format!("127.0.0.1:{port}").parse().unwrap(),
                unit: None,
                data_mount: None,
            };
            let Desired::Run(spec) = desired(&reg, id, key, &place) else {
                panic!("{id} has no replica to run")
            };
            std::fs::create_dir_all(&place.dir).unwrap();
            let path = place.dir.join("spec.json");
            spec.write(&path).unwrap();
            NodeSpec {
                id: id.clone(),
                port: *port,
                spec: path,
            }
        })
        .collect();
    Net {
        _registry: registry,
        registry_url: url,
        genesis_hash: reg.genesis_hash.clone(),
        root_key: hex::decode(reg.root_key.as_ref().unwrap()).unwrap(),
        nodes,
        dir: dir.to_path_buf(),
    }
}

fn start_replica(n: &NodeSpec) -> Proc {
    let mut cmd = icos();
    cmd.args(["replica", "serve", "--spec"]).arg(&n.spec);
    let (p, url) = start_until(cmd, "replica: listening on ");
    assert!(url.contains(&n.port.to_string()), "{url}");
    p
}

fn start_boundary(net: &Net) -> (Proc, String) {
    let mut cmd = icos();
    cmd.args(["boundary", "serve", "--registry", &net.registry_url])
        .args(["--genesis-hash", &net.genesis_hash])
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(net.dir.join("boundary"));
    start_until(cmd, "BOUNDARY serving on ")
}

fn boundary_status(url: &str) -> BoundaryStatus {
    let body = ureq::get(&format!("{url}/boundary/status"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Wait until the boundary sees every node of `nodes` in `want` (by a predicate).
fn wait_nodes(url: &str, what: &str, want: impl Fn(&str, &NodeState) -> bool) -> BoundaryStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = boundary_status(url);
        let all = s.subnets.iter().flat_map(|s| &s.nodes);
        if s.registry_version > 0 && all.clone().all(|n| want(&n.id, &n.health.state)) {
            return s;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn agent(url: &str, key: u8) -> Agent {
    let a = Agent::builder()
        .with_url(url)
        .with_identity(BasicIdentity::from_raw_key(&[key; 32]))
        .build()
        .unwrap();
    a.fetch_root_key().await.unwrap();
    a
}

/// A query to a canister of s2 that does not exist: a reject signed by whichever node of
/// s2 answered, which the agent checks against the node keys s2 certifies.
async fn s2_query(a: &Agent) -> Result<(), String> {
    match a
        .query(&canister_index_id(S2_FIRST + 5), "get")
        .call()
        .await
    {
        Err(AgentError::UncertifiedReject { reject, .. }) => {
            if reject.reject_message.contains("not found") {
                Ok(())
            } else {
                Err(format!("unexpected reject: {reject:?}"))
            }
        }
        other => Err(format!("{other:?}")),
    }
}

/// The node the boundary sends an s2 query to now (its `x-ic-node-id`).
fn who_answers(a: &Agent, url: &str) -> String {
    let q = a
        .query(&canister_index_id(S2_FIRST + 5), "get")
        .sign()
        .unwrap();
    let r = ureq::post(&format!(
        "{url}/api/v2/canister/{}/query",
        canister_index_id(S2_FIRST + 5)
    ))
    .set("content-type", "application/cbor")
    .send_bytes(&q.signed_query)
    .unwrap();
    r.header("x-ic-node-id").unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_reach_every_subnet_through_the_boundary_and_a_killed_node_costs_no_query() {
    let tmp = tempfile::tempdir().unwrap();
    let net = network(tmp.path());
    let mut replicas: Vec<Option<Proc>> =
        net.nodes.iter().map(|n| Some(start_replica(n))).collect();
    let (_boundary, url) = start_boundary(&net);
    wait_nodes(&url, "every node healthy", |_, s| *s == NodeState::Healthy);

    // @dfinity/agent's story through the boundary (another network's replica for the
    // wrong-root-key check). It creates the first canister of s1 and expects the second
    // not to exist yet.
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../js/agent-test");
    let other_dir = tmp.path().join("other");
    let mut other = icos();
    other
        .args(["replica", "run", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&other_dir);
    let (_other, other_url) = start_until(other, "replica: listening on ");
    let other_url = other_url.split_whitespace().next().unwrap().to_string();
    let wasm = tmp.path().join("counter.wasm");
    std::fs::write(
        &wasm,
        wat::parse_str(example_canisters::COUNTER_WAT).unwrap(),
    )
    .unwrap();
    let out = Command::new("node")
        .arg(js.join("story.mjs"))
        .arg(&url)
        .arg(&wasm)
        .arg(&other_url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("js: story complete"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // ic-agent with its defaults (certificates and query signatures checked) sees the
    // network's root key and reaches s1 through the one URL.
    let a = agent(&url, 5).await;
    assert_eq!(a.read_root_key(), net.root_key);
    let mgmt = ManagementCanister::create(&a);
    let (id,) = mgmt
        .create_canister()
        .as_provisional_create_with_amount(None)
        .with_effective_canister_id(canister_index_id(0))
        .call_and_wait()
        .await
        .unwrap();
    mgmt.install_code(
        &id,
        &wat::parse_str(example_canisters::COUNTER_WAT).unwrap(),
    )
    .call_and_wait()
    .await
    .unwrap();
    for want in 1..=2u64 {
        let r = a
            .update(&id, "inc")
            .with_arg(Encode!().unwrap())
            .call_and_wait()
            .await
            .unwrap();
        assert_eq!(Decode!(&r, u64).unwrap(), want);
    }
    assert_eq!(counter_get(&a, &id).await, 2);

    // s2 has two nodes. A stream of queries and read_state requests to it while node b is
    // killed: every one is answered (checked by the agent), none fails.
    s2_query(&a).await.unwrap();
    let s2 = Principal::from_text(
        boundary_status(&url)
            .subnets
            .iter()
            .find(|s| s.id == "s2")
            .unwrap()
            .principal
            .clone()
            .unwrap(),
    )
    .unwrap();
    // The node the boundary prefers now (the faster of the two) is the one killed.
    let serving = who_answers(&a, &url);
    let victim = net.nodes.iter().position(|n| n.id == serving).unwrap();
    assert!(victim == 1 || victim == 2, "{serving} is not in s2");
    let b_id = serving;
    let mut failures = Vec::new();
    for i in 0..120 {
        if i == 30 {
            replicas[victim] = None; // SIGKILL
        }
        if let Err(e) = s2_query(&a).await {
            failures.push(format!("query {i}: {e}"));
        }
        if let Err(e) = a.read_subnet_state_raw(vec![vec!["time".into()]], s2).await {
            failures.push(format!("read_state {i}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    wait_nodes(&url, "the killed node seen as down", |id, st| {
        id != b_id || matches!(st, NodeState::Unhealthy(_))
    });
    assert_ne!(who_answers(&a, &url), b_id);

    // With the other gone too, the boundary answers itself and says why.
    replicas[3 - victim] = None;
    wait_nodes(&url, "s2 without a healthy node", |id, st| {
        id == net.nodes[0].id || matches!(st, NodeState::Unhealthy(_))
    });
    let err = s2_query(&a).await.unwrap_err();
    assert!(err.contains("no_healthy_nodes"), "{err}");

    // The killed node comes back: requests go to it again.
    replicas[victim] = Some(start_replica(&net.nodes[victim]));
    wait_nodes(&url, "the killed node healthy again", |id, st| {
        id != b_id || *st == NodeState::Healthy
    });
    s2_query(&a).await.unwrap();
    assert_eq!(who_answers(&a, &url), b_id);
    // s1 was never affected.
    assert_eq!(counter_get(&a, &id).await, 2);
}
