//! The boundary in one process, in front of stand-in nodes that fail in ways a real replica
//! cannot be made to fail on cue: a node that drops the connection after reading the
//! request (a crash mid-request), a closed port, a node behind in height. What each test
//! shows is the boundary's own behaviour: which requests are sent again and which never
//! are, what a bad or flooding client gets, what is cached. The whole path with real
//! replicas, registry and agents is `crates/icos-cli/tests/boundary.rs`.

use axum::routing::{get, post};
use boundary::proxy::{CACHE_STATUS, ERROR_CAUSE};
use boundary::routes::Table;
use boundary::{Boundary, Config};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use registry_model::{CanisterRange, Node, Registry, Subnet};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A stand-in node and how many requests reached it.
struct Stand {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

/// Answers its status (healthy at `height`) and every API request with 200 and its name.
fn answering(name: &'static str, height: u64) -> Stand {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let status = move || async move {
        let mut m = std::collections::BTreeMap::new();
        let t = |s: &str| serde_cbor::Value::Text(s.into());
        m.insert(t("replica_health_status"), t("healthy"));
        m.insert(
            t("certified_height"),
            serde_cbor::Value::Integer(height.into()),
        );
        serde_cbor::to_vec(&serde_cbor::Value::Map(m)).unwrap()
    };
    let app = axum::Router::new()
        .route("/api/v2/status", get(status))
        .fallback(post(move || {
            h.fetch_add(1, Ordering::SeqCst);
            async move { ([("content-type", "application/cbor")], name) }
        }));
    let (addr, _) =
        http_guard::spawn("127.0.0.1:0".parse().unwrap(), app, Default::default()).unwrap();
    Stand { addr, hits }
}

/// Reads a request and closes the connection without answering.
fn dropping() -> Stand {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            let mut buf = [0; 4096];
            if s.read(&mut buf).unwrap_or(0) > 0 {
                h.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    Stand { addr, hits }
}

/// A port nothing listens on.
fn closed() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn canister(index: u64) -> String {
    let mut b = index.to_be_bytes().to_vec();
    b.extend([1, 1]);
    ic_principal::Principal::from_slice(&b).to_text()
}

/// A boundary whose subnet `s` (canisters 0..=99) has `nodes`, served on a free port.
fn boundary(nodes: &[SocketAddr], tweak: impl FnOnce(&mut Config)) -> (Arc<Boundary>, String) {
    let mut reg = Registry {
        root_key: Some("ab".repeat(10)),
        ..Default::default()
    };
    for (i, addr) in nodes.iter().enumerate() {
        reg.nodes.insert(
            format!("n{i}"),
            Node {
                id: format!("n{i}"),
                operator: "op".into(),
                public_key: String::new(),
                ipv6: String::new(),
                http_endpoint: format!("http://{addr}"),
                hostos_version: None,
                peer_endpoint: None,
            },
        );
    }
    reg.subnets.insert(
        "s".into(),
        Subnet {
            id: "s".into(),
            nodes: (0..nodes.len()).map(|i| format!("n{i}")).collect(),
            canister_ranges: vec![CanisterRange { start: 0, end: 99 }],
            guestos_version: "1".into(),
            key: None,
            founders: Vec::new(),
        },
    );
    let mut config = Config::new(
        vec![],
        "00",
        std::env::temp_dir(),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.body_timeout = Duration::from_secs(1);
    tweak(&mut config);
    let b = Boundary::new(config);
    b.set_table(Table::from_registry(&reg, 1, None));
    let (addr, _) = http_guard::spawn(
        "127.0.0.1:0".parse().unwrap(),
        boundary::proxy::router(b.clone()),
        Default::default(),
    )
    .unwrap();
    (b, format!("http://{addr}"))
}

fn envelope(kind: &str, sender: &[u8]) -> Vec<u8> {
    use serde_cbor::Value;
    let mut content = std::collections::BTreeMap::new();
    content.insert(Value::Text("request_type".into()), Value::Text(kind.into()));
    content.insert(Value::Text("sender".into()), Value::Bytes(sender.to_vec()));
    let mut env = std::collections::BTreeMap::new();
    env.insert(Value::Text("content".into()), Value::Map(content));
    serde_cbor::to_vec(&Value::Tag(55799, Box::new(Value::Map(env)))).unwrap()
}

const ANONYMOUS: &[u8] = &[4];
const SIGNED: &[u8] = &[7; 29];

struct Answer {
    status: u16,
    cause: Option<String>,
    cache: Option<String>,
    retry_after: Option<u64>,
    body: String,
}

async fn send(base: &str, method: &str, path: &str, body: Vec<u8>, from: Option<IpAddr>) -> Answer {
    let mut c = HttpConnector::new();
    c.set_local_address(from);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(c);
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/cbor")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (cause, cache, retry_after) = (
        header(ERROR_CAUSE),
        header(CACHE_STATUS),
        header("retry-after").map(|v| v.parse().unwrap()),
    );
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        cause,
        cache,
        retry_after,
        body: String::from_utf8_lossy(&body).into(),
    }
}

async fn query(base: &str, sender: &[u8]) -> Answer {
    let path = format!("/api/v2/canister/{}/query", canister(5));
    send(base, "POST", &path, envelope("query", sender), None).await
}

async fn call(base: &str) -> Answer {
    let path = format!("/api/v3/canister/{}/call", canister(5));
    send(base, "POST", &path, envelope("call", SIGNED), None).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_reached_a_node_is_never_sent_again_a_query_is() {
    let (a, b) = (dropping(), dropping());
    let hits = || a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst);
    let (_bd, url) = boundary(&[a.addr, b.addr], |_| {});
    let r = call(&url).await;
    assert_eq!(
        (r.status, r.cause.as_deref()),
        (502, Some("replica_error")),
        "{}",
        r.body
    );
    assert!(r.body.contains("not sent again"), "{}", r.body);
    assert_eq!(hits(), 1, "the call reached exactly one node");

    let (a, b) = (dropping(), dropping());
    let (_bd, url) = boundary(&[a.addr, b.addr], |_| {});
    let r = query(&url, SIGNED).await;
    assert_eq!(
        (r.status, r.cause.as_deref()),
        (502, Some("replica_unreachable"))
    );
    assert_eq!(
        (a.hits.load(Ordering::SeqCst), b.hits.load(Ordering::SeqCst)),
        (1, 1),
        "the query was tried on both nodes"
    );
    // Both failed: until a probe says otherwise, there is no node to send to.
    let r = query(&url, SIGNED).await;
    assert_eq!(
        (r.status, r.cause.as_deref()),
        (503, Some("no_healthy_nodes"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_move_off_failing_nodes_and_a_call_moves_only_if_never_sent() {
    let good = answering("good", 1);
    let bad = dropping();
    let (_b, url) = boundary(&[bad.addr, good.addr], |_| {});
    for _ in 0..20 {
        let r = query(&url, SIGNED).await;
        assert_eq!((r.status, r.body.as_str()), (200, "good"));
    }
    assert!(bad.hits.load(Ordering::SeqCst) <= 1);
    // A closed port: the call never left, so another node may take it.
    let good = answering("good", 1);
    let (_b, url) = boundary(&[closed(), good.addr], |_| {});
    for _ in 0..5 {
        let r = call(&url).await;
        assert_eq!((r.status, r.body.as_str()), (200, "good"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_keep_requests_off_unhealthy_and_lagging_nodes() {
    let (ahead, behind) = (answering("ahead", 100), answering("behind", 10));
    let third = answering("third", 99);
    let (b, url) = boundary(&[ahead.addr, behind.addr, third.addr, closed()], |_| {});
    b.probe_all().await;
    let status = b.status();
    let nodes = &status.subnets[0].nodes;
    let candidates: Vec<bool> = nodes.iter().map(|n| n.candidate).collect();
    assert_eq!(candidates, [true, false, true, false], "{nodes:#?}");
    assert!(matches!(
        &nodes[3].health.state,
        node_status::boundary::NodeState::Unhealthy(why) if why.contains("status")
    ));
    for _ in 0..30 {
        let r = query(&url, SIGNED).await;
        assert!(r.body == "ahead" || r.body == "third", "{}", r.body);
    }
    assert_eq!(behind.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_named_and_never_reach_a_node() {
    let node = answering("n", 1);
    let (_b, url) = boundary(&[node.addr], |c| c.max_body_bytes = 1 << 20);
    let q = format!("/api/v2/canister/{}/query", canister(5));
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            q.clone(),
            b"not cbor".to_vec(),
            400,
            "malformed_request",
        ),
        (
            "POST",
            q.clone(),
            envelope("call", SIGNED),
            400,
            "malformed_request",
        ),
        (
            "POST",
            format!("/api/v2/canister/{}/query", canister(500)),
            envelope("query", SIGNED),
            400,
            "canister_not_found",
        ),
        (
            "POST",
            "/api/v2/canister/not-a-principal/query".into(),
            envelope("query", SIGNED),
            400,
            "malformed_request",
        ),
        (
            "POST",
            format!("/api/v4/canister/{}/query", canister(5)),
            envelope("query", SIGNED),
            404,
            "not_found",
        ),
        ("GET", "/etc/passwd".into(), vec![], 404, "not_found"),
        // Escapes that decode to what no path may hold are named, not a crash.
        (
            "POST",
            "/api/v9%20x/canister/a%2Fb%00/query".into(),
            envelope("query", SIGNED),
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/api/v2/canister/{}%2F..%2F/query", canister(5)),
            envelope("query", SIGNED),
            400,
            "malformed_request",
        ),
        ("GET", q.clone(), vec![], 405, "method_not_allowed"),
        (
            "POST",
            q.clone(),
            vec![0; 2 << 20],
            413,
            "payload_too_large",
        ),
    ];
    for (method, path, body, status, cause) in cases {
        let r = send(&url, method, &path, body, None).await;
        assert_eq!(
            (r.status, r.cause.as_deref()),
            (status, Some(cause)),
            "{method} {path}: {}",
            r.body
        );
        assert!(r.body.starts_with(&format!("error: {cause}\ndetails: ")));
    }
    assert_eq!(node.hits.load(Ordering::SeqCst), 0);
}

#[test]
fn a_client_that_sends_its_body_slowly_is_cut_off() {
    use std::io::Write;
    let node = answering("n", 1);
    let (_b, url) = boundary(&[node.addr], |c| c.body_timeout = Duration::from_secs(1));
    let mut s = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    let path = format!("/api/v2/canister/{}/query", canister(5));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nabc"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"),
        "{answer}"
    );
    assert_eq!(node.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_client_gets_429_and_others_are_still_served() {
    let node = answering("n", 1);
    let (b, url) = boundary(&[node.addr], |c| {
        c.rates.per_client_per_sec = 20;
        c.rates.per_client_burst = 20;
    });
    let started = std::time::Instant::now();
    let mut limited = Vec::new();
    for _ in 0..200 {
        let a = query(&url, SIGNED).await;
        if a.status == 429 {
            limited.push(a);
        }
    }
    // Burst plus refill over the time the flood took, and no more.
    let allowed = 20 + (20.0 * started.elapsed().as_secs_f64()).ceil() as usize + 1;
    assert!(limited.len() + allowed >= 200, "{} limited", limited.len());
    assert!(!limited.is_empty());
    for a in &limited {
        assert_eq!(a.cause.as_deref(), Some("rate_limited_client"));
        assert!(a.retry_after.is_some_and(|s| s >= 1), "Retry-After");
    }
    // Another address is not held back by the flood.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let path = format!("/api/v2/canister/{}/query", canister(5));
    for _ in 0..10 {
        let r = send(&url, "POST", &path, envelope("query", SIGNED), Some(other)).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    drop(b);
    // All clients together are held to the subnet's limit.
    let (_b, url) = boundary(&[node.addr], |c| {
        c.rates.per_subnet_per_sec = 10;
        c.rates.per_subnet_burst = 10;
    });
    let mut subnet_limited = 0;
    let started = std::time::Instant::now();
    for i in 0..40u8 {
        let from: IpAddr = [127, 0, 1, i].into();
        let r = send(&url, "POST", &path, envelope("query", SIGNED), Some(from)).await;
        if r.status == 429 {
            assert_eq!(r.cause.as_deref(), Some("rate_limited_subnet"));
            subnet_limited += 1;
        }
    }
    let allowed = 10 + (10.0 * started.elapsed().as_secs_f64()).ceil() as usize + 1;
    assert!(subnet_limited + allowed >= 40, "{subnet_limited}");
    assert!(subnet_limited > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_anonymous_queries_are_answered_from_the_cache_for_a_second() {
    let node = answering("n", 1);
    let (_b, url) = boundary(&[node.addr], |_| {});
    let hits = || node.hits.load(Ordering::SeqCst);
    let first = query(&url, ANONYMOUS).await;
    let second = query(&url, ANONYMOUS).await;
    assert_eq!(
        (first.cache.as_deref(), second.cache.as_deref()),
        (Some("MISS"), Some("HIT"))
    );
    assert_eq!((second.status, second.body.as_str(), hits()), (200, "n", 1));
    // A signed query is the caller's own: never cached.
    for _ in 0..2 {
        assert_eq!(query(&url, SIGNED).await.cache.as_deref(), Some("BYPASS"));
    }
    assert_eq!(hits(), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(query(&url, ANONYMOUS).await.cache.as_deref(), Some("MISS"));
    assert_eq!(hits(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_serves_the_root_key_and_the_routes_are_published() {
    let node = answering("n", 1);
    let (_b, url) = boundary(&[node.addr], |_| {});
    let r = send(&url, "GET", "/api/v2/status", vec![], None).await;
    assert_eq!(r.status, 200);
    let raw = hyper_get_bytes(&format!("{url}/api/v2/status")).await;
    assert_eq!(
        raw[..3],
        [0xd9, 0xd9, 0xf7],
        "self-described CBOR (tag 55799)"
    );
    let serde_cbor::Value::Map(m) = serde_cbor::from_slice(&raw).unwrap() else {
        panic!("not a map")
    };
    assert_eq!(
        m[&serde_cbor::Value::Text("root_key".into())],
        serde_cbor::Value::Bytes(vec![0xab; 10])
    );
    let routes: node_status::boundary::BoundaryStatus =
        serde_json::from_slice(&hyper_get_bytes(&format!("{url}/boundary/status")).await).unwrap();
    assert_eq!(routes.registry_version, 1);
    assert_eq!(
        routes.subnets[0].nodes[0].endpoint,
        format!("http://{}", node.addr)
    );
}

async fn hyper_get_bytes(url: &str) -> Bytes {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = client
        .request(hyper::Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap();
    resp.into_body().collect().await.unwrap().to_bytes()
}
