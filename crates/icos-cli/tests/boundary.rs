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
use orchestrator::payload::{Place, Spec};
use orchestrator::replica::{desired, Desired, ReplicaPlace};
use registry_client::api::Api;
use registry_model::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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

/// One node: its id, key, port and replica spec; `endpoint_port` is the port the registry
/// gives for it (the replica's own, or a front the test puts before it).
struct NodeSpec {
    id: String,
    key: registry_model::keys::SecretKey,
    port: u16,
    endpoint_port: u16,
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

/// Registry, three registered nodes, subnets s1 = {a} and s2 = {b, c} by proposals. With
/// `front_a`, node a's registered endpoint is another port than its replica's (a test puts
/// something in between).
fn network(dir: &Path, front_a: bool) -> Net {
    network_of(dir, front_a, &[("s1", 0..1), ("s2", 1..3)])
}

/// Registry, three registered nodes, and the subnets of `layout` (name, the nodes' indices;
/// the n-th subnet gets the n-th block of canister ids) by proposals.
fn network_of(dir: &Path, front_a: bool, layout: &[(&str, std::ops::Range<usize>)]) -> Net {
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
    let endpoint_ports: Vec<u16> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| if i == 0 && front_a { free_port() } else { *p })
        .collect();
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for (i, (k, port)) in keys.iter().zip(&endpoint_ports).enumerate() {
        let peer = format!("http://127.0.0.1:{}", peer_ports[i]);
        register_node(
            &api,
            &gov,
            k,
            i + 1,
            format!("http://127.0.0.1:{port}"),
            Some(peer),
        );
    }
    let ids: Vec<String> = keys.iter().map(|k| node_id(&keys::public_hex(k))).collect();
    for (n, (subnet, members)) in layout.iter().enumerate() {
        let n = n as u64;
        let nodes = &ids[members.clone()];
        let range = format!("{}-{}", n * S2_FIRST, (n + 1) * S2_FIRST - 1);
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
        .zip(ports.iter().zip(&endpoint_ports))
        .zip(&peer_ports)
        .map(|(((id, key), (port, endpoint_port)), peer_port)| {
            let place = ReplicaPlace {
                payload: Place {
                    dir: dir.join(id),
                    unit: None,
                    data_mount: None,
                },
                listen: format!("127.0.0.1:{port}").parse().unwrap(),
                peer_listen: format!("127.0.0.1:{peer_port}").parse().unwrap(),
                host_loopback: None,
                guestos_version: "1.0.0".into(),
            };
            let Desired::Run { spec, membership } = desired(&reg, id, key, &place) else {
                panic!("{id} has no replica to run")
            };
            std::fs::create_dir_all(&place.payload.dir).unwrap();
            let path = place.payload.spec_path();
            spec.write(&path).unwrap();
            membership
                .write(&spec.raft.as_ref().unwrap().membership)
                .unwrap();
            NodeSpec {
                id: id.clone(),
                key: key.clone(),
                port: *port,
                endpoint_port: *endpoint_port,
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

fn start_boundary(net: &Net, extra: &[&str]) -> (Proc, String) {
    let mut cmd = icos();
    cmd.args(["boundary", "serve", "--registry", &net.registry_url])
        .args(["--genesis-hash", &net.genesis_hash])
        .args(["--listen", "127.0.0.1:0", "--state-dir"])
        .arg(net.dir.join("boundary"))
        .args(extra);
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

/// A new canister in s1 with `wasm` installed, through `a`.
async fn install_in_s1(a: &Agent, wasm: &[u8]) -> Principal {
    install_at(a, wasm, 0).await
}

/// A canister with `wasm`, created in the subnet whose range holds `index`.
async fn install_at(a: &Agent, wasm: &[u8], index: u64) -> Principal {
    let mgmt = ManagementCanister::create(a);
    let (id,) = mgmt
        .create_canister()
        .as_provisional_create_with_amount(None)
        .with_effective_canister_id(canister_index_id(index))
        .call_and_wait()
        .await
        .unwrap();
    mgmt.install_code(&id, wasm).call_and_wait().await.unwrap();
    id
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
    let net = network(tmp.path(), false);
    let mut replicas: Vec<Option<Proc>> =
        net.nodes.iter().map(|n| Some(start_replica(n))).collect();
    let (_boundary, url) = start_boundary(&net, &[]);
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
    let id = install_in_s1(&a, &wat::parse_str(example_canisters::COUNTER_WAT).unwrap()).await;
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

    // s2 has two nodes, which order its calls in one log: a counter made through the
    // boundary counts calls sent to either node directly, and both nodes answer the count.
    let counter = wat::parse_str(example_canisters::COUNTER_WAT).unwrap();
    let s2_counter = install_at(&a, &counter, S2_FIRST).await;
    let mut direct = Vec::new();
    for n in &net.nodes[1..] {
        direct.push(agent(&format!("http://127.0.0.1:{}", n.port), 5).await);
    }
    for want in 1..=4u64 {
        let r = direct[want as usize % 2]
            .update(&s2_counter, "inc")
            .with_arg(Encode!().unwrap())
            .call_and_wait()
            .await
            .unwrap_or_else(|e| panic!("inc {want} through node {}: {e}", want % 2 + 2));
        assert_eq!(Decode!(&r, u64).unwrap(), want);
    }
    for d in &direct {
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter_get(d, &s2_counter).await != 4 {
            assert!(Instant::now() < deadline, "a node of s2 never saw 4 calls");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(counter_get(&a, &s2_counter).await, 4);

    // A stream of queries and read_state requests to s2 while node b is killed: every one
    // is answered (checked by the agent), none fails.
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
    // Back from its checkpoint and log, it still has every call s2 ordered.
    assert_eq!(counter_get(&direct[victim - 1], &s2_counter).await, 4);
    // s1 was never affected.
    assert_eq!(counter_get(&a, &id).await, 2);
}

/// A node that lies: in front of node a's replica, it passes every request on and, while
/// `forge` is set, rewrites `genuine` to `forged!` in query answers and signs them again
/// with node a's own key. Its signature is valid; only the subnet's certificate can tell.
struct LyingNode {
    forge: Arc<AtomicBool>,
    forged: Arc<AtomicU64>,
}

fn lying_node(node: &NodeSpec) -> LyingNode {
    let listener = std::net::TcpListener::bind(("127.0.0.1", node.endpoint_port)).unwrap();
    let forge = Arc::new(AtomicBool::new(false));
    let forged = Arc::new(AtomicU64::new(0));
    let (f, n) = (forge.clone(), forged.clone());
    let key = node.key.clone();
    let upstream = format!("http://127.0.0.1:{}", node.port);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let (f, n, key, upstream) = (f.clone(), n.clone(), key.clone(), upstream.clone());
            std::thread::spawn(move || relay(conn, &upstream, &key, &f, &n));
        }
    });
    LyingNode { forge, forged }
}

/// One request on `conn`, passed to `upstream`; the answer back, forged if asked.
fn relay(
    conn: std::net::TcpStream,
    upstream: &str,
    key: &registry_model::keys::SecretKey,
    forge: &AtomicBool,
    forged: &AtomicU64,
) {
    use std::io::{Read, Write};
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).unwrap_or(0) == 0 {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let url = format!("{upstream}{path}");
    let answer = if method == "POST" {
        ureq::post(&url)
            .set("content-type", "application/cbor")
            .send_bytes(&body)
    } else {
        ureq::get(&url).call()
    };
    let (status, mut out) = match answer {
        Ok(r) | Err(ureq::Error::Status(_, r)) => {
            let status = r.status();
            let mut b = Vec::new();
            r.into_reader().read_to_end(&mut b).unwrap();
            (status, b)
        }
        Err(_) => return, // the replica is gone: so is this node
    };
    if status == 200 && path.ends_with("/query") && forge.load(Ordering::SeqCst) {
        if let Some(lie) = forge_answer(&out, &body, key) {
            out = lie;
            forged.fetch_add(1, Ordering::SeqCst);
        }
    }
    let mut w = conn;
    let _ = write!(
        w,
        "HTTP/1.1 {status} X\r\ncontent-type: application/cbor\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        out.len()
    );
    let _ = w.write_all(&out);
}

/// The answer with `genuine` replaced in its reply, signed again by the node.
fn forge_answer(
    answer: &[u8],
    request: &[u8],
    key: &registry_model::keys::SecretKey,
) -> Option<Vec<u8>> {
    use serde_cbor::Value;
    let text = |s: &str| Value::Text(s.into());
    let Value::Map(m) = serde_cbor::from_slice(answer).ok()? else {
        return None;
    };
    let Some(Value::Map(reply)) = m.get(&text("reply")) else {
        return None;
    };
    let Some(Value::Bytes(arg)) = reply.get(&text("arg")) else {
        return None;
    };
    let at = arg.windows(7).position(|w| w == b"genuine")?;
    let mut lie = arg.clone();
    lie[at..at + 7].copy_from_slice(b"forged!");
    let Value::Map(envelope) = serde_cbor::from_slice(request).ok()? else {
        return None;
    };
    let request_id = ingress::hash_value(envelope.get(&text("content"))?).ok()?;
    let der = ingress::ed25519_der(key.verifying_key().as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let signed = replica::sign_answer(
        key,
        Principal::self_authenticating(&der),
        Ok(lie),
        &request_id,
        now,
    )
    .ok()?;
    Some(signed.to_cbor())
}

/// The page the test uploads: its text says it is genuine, and a script it runs writes a
/// line only a real browser produces.
const PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>icos page</title></head>\
<body><h1 id=\"t\">A genuine page from a canister</h1><p id=\"s\">not run</p>\
<script>document.getElementById('s').textContent = 'rendered by the browser';</script></body></html>";

/// Headless Chromium's DOM of `url` after scripts ran, and a screenshot of it in `png`.
/// The browser trusts `ca` (if any) and nothing else of ours: it is put in the NSS store of
/// a home made for this run, as an operator adds a CA to a browser.
fn chromium(url: &str, png: &Path, ca: Option<&Path>) -> String {
    let home = png.with_extension("home");
    let nssdb = home.join(".pki/nssdb");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    let mut steps = vec![vec!["-N", "-d", &db, "--empty-password"]];
    if ca.is_some() {
        steps.push(vec![
            "-A",
            "-d",
            &db,
            "-t",
            "C,,",
            "-n",
            "icos local network CA",
            "-i",
        ]);
    }
    for args in steps {
        let mut cmd = Command::new("certutil");
        cmd.args(&args);
        if let (Some(ca), "-A") = (ca, args[0]) {
            cmd.arg(ca);
        }
        let out = cmd
            .output()
            .expect("certutil runs (./scripts/setup.sh installs libnss3-tools)");
        assert!(
            out.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1024,600",
    ];
    let run = |extra: &str| {
        let out = Command::new("timeout")
            .arg("120")
            .arg("chromium")
            .args(base)
            .arg(format!(
                "--user-data-dir={}",
                home.join("profile").display()
            ))
            .arg(extra)
            .arg(url)
            .env("HOME", &home)
            .output()
            .expect("chromium runs (./scripts/setup.sh installs it)");
        assert!(
            out.status.success(),
            "chromium {extra} {url}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&format!("--screenshot={}", png.display()));
    run("--dump-dom")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_gets_verified_pages_over_tls_and_never_a_forged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let net = network(tmp.path(), true);
    let _replicas: Vec<Proc> = net.nodes.iter().map(start_replica).collect();
    let liar = lying_node(&net.nodes[0]);
    let (_boundary, url) = start_boundary(&net, &["--tls-self-signed", "--domain", "icp.local"]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(url.starts_with("https://"), "{url}");

    // Clients trust exactly the boundary's local CA, which certifies each name they ask for.
    let ca = net.dir.join("boundary/tls-ca.pem");
    let cert = std::fs::read(&ca).unwrap();
    let client = |host: &str| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&cert).unwrap()])
            .resolve(host, ([127, 0, 0, 1], port).into())
            .build()
            .unwrap()
    };
    let api = format!("https://localhost:{port}");
    // A GET of `path` on `host` (resolved to the boundary), trusting only its CA.
    let get = |host: String, path: String| {
        let c = client(&host);
        async move {
            c.get(format!("https://{host}:{port}{path}"))
                .send()
                .await
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s: BoundaryStatus = get("localhost".into(), "/boundary/status".into())
            .await
            .json()
            .await
            .unwrap();
        let all = s.subnets.iter().flat_map(|s| &s.nodes);
        if s.registry_version > 0 && all.clone().all(|n| n.health.state == NodeState::Healthy) {
            break;
        }
        assert!(Instant::now() < deadline, "nodes not healthy: {s:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // ic-agent over HTTPS: the asset canister in s1, a page uploaded.
    let a = Agent::builder()
        .with_url(&api)
        .with_http_client(client("localhost"))
        .with_identity(BasicIdentity::from_raw_key(&[9; 32]))
        .build()
        .unwrap();
    a.fetch_root_key().await.unwrap();
    assert_eq!(a.read_root_key(), net.root_key);
    let id = install_in_s1(&a, example_canisters::ASSETS_WASM).await;
    let put = Encode!(
        &"/index.html",
        &"text/html; charset=utf-8",
        &serde_bytes::ByteBuf::from(PAGE.as_bytes())
    )
    .unwrap();
    a.update(&id, "put")
        .with_arg(put)
        .call_and_wait()
        .await
        .unwrap();

    // The page through the gateway, over TLS and HTTP/2, verified.
    let host = format!("{id}.localhost");
    let page = get(host.clone(), "/index.html".into()).await;
    assert_eq!(page.version(), reqwest::Version::HTTP_2);
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-icos-verification"], "verified (v1)");
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.text().await.unwrap(), PAGE);
    // Under the configured domain, at its root (the canister's fallback page), and with
    // ?canisterId= on the bare host, the same page.
    let other = format!("{id}.icp.local");
    let same = get(other.clone(), "/".into()).await;
    assert_eq!(same.status(), 200);
    assert_eq!(same.text().await.unwrap(), PAGE);
    let by_query = get("localhost".into(), format!("/?canisterId={id}")).await;
    assert_eq!(by_query.text().await.unwrap(), PAGE);

    // A real browser renders it (the page's script runs) and the test keeps a screenshot.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let browser_url = format!("https://{id}.localhost:{port}/");
    let dom = chromium(&browser_url, &shots.join("gateway-page.png"), Some(&ca));
    assert!(dom.contains("A genuine page from a canister"), "{dom}");
    assert!(dom.contains("rendered by the browser"), "{dom}");
    // A browser that does not trust the local CA gets no page: the TLS check is real.
    let untrusting = chromium(&browser_url, &shots.join("gateway-untrusted.png"), None);
    assert!(!untrusting.contains("A genuine page"), "{untrusting}");
    let png = std::fs::read(shots.join("gateway-page.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 2000,
        "{} bytes",
        png.len()
    );

    // Node a starts lying. Its answers carry its valid signature, so the agent accepts them,
    // but the body is not what the subnet certified: the gateway refuses it.
    liar.forge.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the boundary's query cache
    let refused = get(host.clone(), "/index.html".into()).await;
    assert_eq!(refused.status(), 502);
    assert_eq!(
        refused.headers()["x-ic-error-cause"],
        "response_verification_failed"
    );
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("did not verify") && !text.contains("forged!"),
        "{text}"
    );
    let dom = chromium(&browser_url, &shots.join("gateway-refused.png"), Some(&ca));
    assert!(
        dom.contains("The canister's answer did not verify"),
        "{dom}"
    );
    assert!(
        !dom.contains("forged!") && !dom.contains("genuine page"),
        "{dom}"
    );
    assert!(liar.forged.load(Ordering::SeqCst) >= 2, "the lie was told");
    // The raw domain serves what the node said, unverified, and says so.
    let raw = format!("{id}.raw.icp.local");
    let lie = get(raw.clone(), "/index.html".into()).await;
    assert_eq!(lie.headers()["x-icos-verification"], "raw (not verified)");
    assert!(lie.text().await.unwrap().contains("A forged! page"));

    // Honest again: verified pages again.
    liar.forge.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let page = get(host.clone(), "/index.html".into()).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap(), PAGE);

    // A large page streams in chunks (no length ahead), each hashed as it passes and the
    // whole checked against the certified hash at the end.
    let large = format!("{}the genuine end\n", "filler line\n".repeat(220_000));
    for (i, piece) in large.as_bytes().chunks(512 << 10).enumerate() {
        let last = (i + 1) * (512 << 10) >= large.len();
        let arg = if last {
            Encode!(
                &"/large.txt",
                &"text/plain",
                &serde_bytes::ByteBuf::from(piece)
            )
        } else {
            Encode!(&"/large.txt", &serde_bytes::ByteBuf::from(piece))
        };
        let method = if last { "put" } else { "put_chunk" };
        a.update(&id, method)
            .with_arg(arg.unwrap())
            .call_and_wait()
            .await
            .unwrap();
    }
    let streamed = get(host.clone(), "/large.txt".into()).await;
    assert_eq!(streamed.status(), 200);
    assert_eq!(streamed.headers()["x-icos-verification"], "verified (v1)");
    assert!(streamed.headers().get("content-length").is_none());
    assert!(streamed.bytes().await.unwrap() == large.as_bytes());
    // Node a forges the last chunk (the word `genuine` is only there), signed with its own
    // key: the headers and the first chunks went out, but the transfer breaks before the
    // forged chunk does, so no client holds a complete forged file.
    liar.forge.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let told = liar.forged.load(Ordering::SeqCst);
    let broken = get(host.clone(), "/large.txt".into()).await;
    assert_eq!(broken.status(), 200);
    assert!(broken.bytes().await.is_err(), "a forged stream completed");
    assert!(
        liar.forged.load(Ordering::SeqCst) > told,
        "the lie was told"
    );
    liar.forge.store(false, Ordering::SeqCst);

    // A host that names no canister gets an error page that says so; a canister no subnet
    // holds gets the API's cause.
    let bad = "nope.icp.local";
    let r = get(bad.to_string(), "/".into()).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["x-ic-error-cause"], "canister_id_invalid");
    let far = format!("{}.icp.local", canister_index_id(5 * S2_FIRST));
    let r = get(far.clone(), "/".into()).await;
    assert_eq!(r.headers()["x-ic-error-cause"], "canister_not_found");
    assert!(r.text().await.unwrap().contains("<h1>"));
}

/// One request from source address `from` on its own connection; the status code.
fn request_from(
    from: std::net::Ipv4Addr,
    to: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> u16 {
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&std::net::SocketAddr::from((from, 0)).into())
        .unwrap();
    s.connect_timeout(&to.into(), Duration::from_secs(5))
        .unwrap();
    let mut s = std::net::TcpStream::from(s);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut answer = [0u8; 12];
    match s.read_exact(&mut answer) {
        Ok(()) => String::from_utf8_lossy(&answer[9..12]).parse().unwrap_or(0),
        Err(_) => 0, // reset: refused by a connection cap
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn floods_and_bad_requests_cost_their_senders_only_and_memory_stays_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let net = network(tmp.path(), false);
    let _replicas: Vec<Proc> = net.nodes.iter().map(start_replica).collect();
    let (boundary, url) = start_boundary(&net, &["--client-rate", "20"]);
    wait_nodes(&url, "every node healthy", |_, s| *s == NodeState::Healthy);
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let pid = boundary.0.id();
    let a = agent(&url, 7).await;
    s2_query(&a).await.unwrap();
    let before = rss_kib(pid);

    // 20,000 addresses each send a request that is no envelope, on four threads, while a
    // fifth address floods and an honest client keeps querying.
    let path = format!("/api/v2/canister/{}/query", canister_index_id(S2_FIRST + 5));
    let head = |len: usize| {
        format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/cbor\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n")
    };
    let flood = {
        let head = head(7);
        std::thread::spawn(move || {
            let mut codes = std::collections::BTreeMap::<u16, u32>::new();
            for _ in 0..400 {
                let code = request_from([127, 9, 9, 9].into(), addr, &head, b"garbage");
                *codes.entry(code).or_default() += 1;
            }
            codes
        })
    };
    let many: Vec<_> = (0..4u8)
        .map(|t| {
            let head = head(7);
            std::thread::spawn(move || {
                let mut bad = 0;
                for i in 0..5000u32 {
                    let from =
                        std::net::Ipv4Addr::new(127, 10 + t, (i / 250) as u8, (i % 250) as u8 + 1);
                    if request_from(from, addr, &head, b"garbage") != 400 {
                        bad += 1;
                    }
                }
                bad
            })
        })
        .collect();
    let mut honest_failures = Vec::new();
    while !many.iter().all(|h| h.is_finished()) {
        if let Err(e) = s2_query(&a).await {
            honest_failures.push(e);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let not_400: u32 = many.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        not_400, 0,
        "every no-envelope request gets 400 malformed_request"
    );
    let codes = flood.join().unwrap();
    assert!(
        codes.get(&429).copied().unwrap_or(0) > 100,
        "the flooder is limited: {codes:?}"
    );
    assert!(honest_failures.is_empty(), "{honest_failures:?}");

    // An oversized body and one that never finishes: refused, named.
    assert_eq!(
        request_from(
            [127, 8, 0, 1].into(),
            addr,
            &head(5 << 20),
            &vec![0; 5 << 20]
        ),
        413
    );
    // Every address got a bucket: tracked now, or already dropped as quiet (every ten
    // probe rounds; a flood slowed by a busy machine outlasts a round). A sweep counts what
    // it dropped as the map's size before less after, so buckets made during a sweep hide
    // as many dropped ones: the sum may fall short by those few (2 seen in CI), never more.
    let status = boundary_status(&url);
    let during = status.clients_tracked;
    assert!(
        during + status.clients_forgotten >= 19_800,
        "{during} clients tracked, {} forgotten",
        status.clients_forgotten
    );
    let grown = rss_kib(pid).saturating_sub(before);
    eprintln!("{during} clients tracked; resident memory grew {grown} KiB from {before} KiB; flooder: {codes:?}");
    assert!(
        grown < 16 * 1024,
        "20,000 clients grew the boundary by {grown} KiB"
    );

    // The quiet clients' buckets are dropped (every 10 probe rounds).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = boundary_status(&url).clients_tracked;
        if now < 100 {
            break;
        }
        assert!(Instant::now() < deadline, "still {now} clients tracked");
        std::thread::sleep(Duration::from_millis(500));
    }
    s2_query(&a).await.unwrap();
}

/// Node `n`'s spec made anew for the GuestOS version `version` (what its orchestrator
/// writes after rebooting into it).
fn respec(n: &NodeSpec, version: &str) {
    use node_config::spec::Spec;
    let mut spec = node_config::replica::ReplicaSpec::read(&n.spec).unwrap();
    spec.guestos_version = version.into();
    spec.write(&n.spec).unwrap();
}

/// What node `n`'s replica last wrote about itself and the members it heard.
fn replica_status(n: &NodeSpec) -> Option<node_status::replica::ReplicaStatus> {
    let file = n
        .spec
        .parent()
        .unwrap()
        .join(node_status::replica::STATUS_FILE);
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

/// SIGTERM (what systemd sends when the node reboots), then wait for the process to end.
fn stop_gracefully(p: &mut Proc) -> std::process::ExitStatus {
    let pid = p.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "replica {pid} did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One node's part of a rolling upgrade, as its orchestrator plays it: wait for the turn the
/// orchestrator's rule gives from the replica's `status.json`, then reboot into `target`
/// (the replica drains and ends on SIGTERM; the node is away a few seconds; the replica
/// starts again from its spec, now on `target`). Counts the nodes away at once.
fn take_turn(
    n: &NodeSpec,
    mut replica: Proc,
    target: &str,
    away: &AtomicU64,
    most_away: &AtomicU64,
) -> Proc {
    use orchestrator::rollout::{turn, Turn};
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut said = String::new();
    loop {
        assert!(Instant::now() < deadline, "{}: no turn came: {said}", n.id);
        let why = match replica_status(n).map(|s| turn(&s, target)) {
            Some(Turn::Go(why)) => why,
            Some(Turn::Wait(why)) => {
                if why != said {
                    eprintln!("rollout: {} waits: {why}", n.id);
                    said = why;
                }
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
            None => {
                std::thread::sleep(Duration::from_millis(300));
                continue;
            }
        };
        let now = away.fetch_add(1, Ordering::SeqCst) + 1;
        most_away.fetch_max(now, Ordering::SeqCst);
        eprintln!("rollout: {} reboots into {target}: {why}", n.id);
        let ended = stop_gracefully(&mut replica);
        assert!(
            ended.success(),
            "{}'s replica ended with {ended} on SIGTERM",
            n.id
        );
        drop(replica);
        std::thread::sleep(Duration::from_secs(2));
        respec(n, target);
        let replica = start_replica(n);
        // Away until it serves on the target, caught up, as the others will see it.
        let back = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = replica_status(n).is_some_and(|s| {
                s.guestos_version == target
                    && s.serving == node_status::replica::Serving::Serving
                    && s.peers.values().all(|p| match p {
                        node_status::replica::PeerReport::Reached(h) => {
                            s.applied + orchestrator::rollout::CAUGHT_UP >= h.applied
                        }
                        node_status::replica::PeerReport::Unreachable { .. } => true,
                    })
            });
            if ok {
                break;
            }
            assert!(
                Instant::now() < back,
                "{} did not come back on {target}",
                n.id
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        away.fetch_sub(1, Ordering::SeqCst);
        eprintln!("rollout: {} is back on {target}", n.id);
        return replica;
    }
}

/// A GuestOS rollout to a three-node subnet while a client sends calls and queries through
/// the boundary the whole time: every node waits for its turn by the orchestrator's rule
/// (read from what its replica heard from the others), reboots with a drain, and comes back
/// on the new version; no two are away at once, not one request fails, and every
/// acknowledged call is counted exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_upgrade_of_a_three_node_subnet_costs_no_request_through_the_boundary() {
    let tmp = tempfile::tempdir().unwrap();
    let net = network_of(tmp.path(), false, &[("s1", 0..3)]);
    let replicas: Vec<Proc> = net.nodes.iter().map(start_replica).collect();
    let (_boundary, url) = start_boundary(&net, &[]);
    wait_nodes(&url, "every node healthy", |_, s| *s == NodeState::Healthy);
    let a = agent(&url, 5).await;
    let id = install_in_s1(&a, &wat::parse_str(example_canisters::COUNTER_WAT).unwrap()).await;
    // Every member has heard the others before the rollout starts.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !net.nodes.iter().all(|n| {
        replica_status(n).is_some_and(|s| {
            s.peers.len() == 2
                && s.peers
                    .values()
                    .all(|p| matches!(p, node_status::replica::PeerReport::Reached(_)))
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "the members never heard each other"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut queries, mut failures) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                match a
                    .update(&id, "inc")
                    .with_arg(Encode!().unwrap())
                    .call_and_wait()
                    .await
                {
                    Ok(_) => acked += 1,
                    Err(e) => {
                        failures.push(format!("call {acked}: {e} after {:?}", started.elapsed()))
                    }
                }
                match a
                    .query(&id, "get")
                    .with_arg(Encode!().unwrap())
                    .call()
                    .await
                {
                    Ok(_) => queries += 1,
                    Err(e) => failures.push(format!("query {queries}: {e}")),
                }
            }
            (acked, queries, failures)
        })
    };

    let target = "1.1.0";
    let away = AtomicU64::new(0);
    let most_away = AtomicU64::new(0);
    let started = Instant::now();
    let replicas: Vec<Proc> = std::thread::scope(|s| {
        let turns: Vec<_> = net
            .nodes
            .iter()
            .zip(replicas)
            .map(|(n, r)| {
                let (away, most_away) = (&away, &most_away);
                s.spawn(move || take_turn(n, r, target, away, most_away))
            })
            .collect();
        turns.into_iter().map(|t| t.join().unwrap()).collect()
    });
    eprintln!("rollout: finished in {:?}", started.elapsed());
    wait_nodes(&url, "every node healthy after the rollout", |_, s| {
        *s == NodeState::Healthy
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let (acked, queries, failures) = client.await.unwrap();
    eprintln!("rollout: {acked} calls and {queries} queries answered meanwhile");

    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(most_away.load(Ordering::SeqCst), 1, "nodes away at once");
    assert!(
        acked >= 10 && queries >= 10,
        "{acked} calls, {queries} queries"
    );
    for n in &net.nodes {
        assert_eq!(
            replica_status(n).unwrap().guestos_version,
            target,
            "{}",
            n.id
        );
    }
    // Every acknowledged call counted once, on every node.
    assert_eq!(counter_get(&a, &id).await, acked);
    for n in &net.nodes {
        let direct = agent(&format!("http://127.0.0.1:{}", n.port), 5).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter_get(&direct, &id).await != acked {
            assert!(Instant::now() < deadline, "{} never counted {acked}", n.id);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(replicas);
}
