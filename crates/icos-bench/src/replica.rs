//! The replica under load (issue 12), each measurement next to its floor in the same run:
//!
//! * **HTTP**: queries (`/api/v2/.../query`) and update calls (`/api/v3/.../call`, answered
//!   with a certificate after the call's checkpoint) per second, with p50 and p99 latency, at
//!   1 and 64 concurrent clients. The floor is the same HTTP stack (axum behind `http-guard`)
//!   that decodes each CBOR envelope and answers a CBOR reply, with no authentication,
//!   execution, certification or checkpoint. Requests are signed by `ic-agent` beforehand
//!   (each update with its own nonce), so signing is not measured; every client keeps one
//!   connection open, as agents do.
//! * **Execution**: one query through the replica's runtime (a fresh instance, memory
//!   restored, the system API's checks) against calling the same exported function of the
//!   same module on one wasmtime instance kept alive, with stub imports.

use crate::BenchError;
use std::sync::Arc;
use std::time::{Duration, Instant};

const COUNTER: &str = example_canisters::COUNTER_WAT;

fn err(what: &str) -> impl FnOnce(String) -> BenchError + '_ {
    move |message| BenchError::Replica {
        what: what.to_string(),
        message,
    }
}

/// Throughput and latency of one run.
#[derive(Debug, Clone)]
pub struct Measured {
    pub per_sec: f64,
    pub p50: Duration,
    pub p99: Duration,
}

/// One kind of request at one concurrency, ours next to the floor.
#[derive(Debug, Clone)]
pub struct Row {
    pub kind: &'static str,
    pub clients: usize,
    pub ours: Measured,
    pub floor: Measured,
}

#[derive(Debug, Clone)]
pub struct ReplicaReport {
    pub rows: Vec<Row>,
    /// One query through the replica's runtime, nanoseconds.
    pub message_ns: f64,
    /// The same function called directly on a live wasmtime instance, nanoseconds.
    pub direct_ns: f64,
}

/// Run it all; `requests` is the number of each kind per client count (at least 64).
pub fn replica_benchmark(requests: usize) -> Result<ReplicaReport, BenchError> {
    let tmp = tempfile::tempdir().map_err(|e| err("a temporary directory")(e.to_string()))?;
    let (replica, _) = replica::local::open(tmp.path(), Default::default())
        .map_err(|e| err("opening the replica")(e.to_string()))?;
    let replica = Arc::new(replica);
    let signer = signer()?;
    let canister = install_counter(&replica, &signer)?;
    let limits = http_guard::Limits {
        max_connections_per_client: 256,
        ..Default::default()
    };
    let (ours, _) = http_guard::spawn(
        "127.0.0.1:0".parse().expect("an address"),
        replica::http::router(replica.clone()),
        limits.clone(),
    )
    .map_err(|e| err("serving the replica")(e.to_string()))?;
    let (floor, _) = http_guard::spawn(
        "127.0.0.1:0".parse().expect("an address"),
        floor_router(),
        limits,
    )
    .map_err(|e| err("serving the floor")(e.to_string()))?;

    let query = signer
        .query(&canister, "get")
        .with_arg(candid_empty())
        .sign()
        .map_err(|e| err("signing a query")(e.to_string()))?
        .signed_query;
    let query_path = format!("/api/v2/canister/{canister}/query");
    let call_path = format!("/api/v3/canister/{canister}/call");
    let mut rows = Vec::new();
    for clients in [1usize, 64] {
        let n = requests.max(clients);
        let queries = vec![query.clone(); n];
        rows.push(Row {
            kind: "query",
            clients,
            floor: load(&format!("http://{floor}{query_path}"), &queries, clients)?,
            ours: load(&format!("http://{ours}{query_path}"), &queries, clients)?,
        });
        let calls = sign_updates(&signer, &canister, n)?;
        rows.push(Row {
            kind: "update",
            clients,
            floor: load(&format!("http://{floor}{call_path}"), &calls, clients)?,
            ours: load(&format!("http://{ours}{call_path}"), &calls, clients)?,
        });
    }
    let (message_ns, direct_ns) = per_message(requests.max(1000))?;
    Ok(ReplicaReport {
        rows,
        message_ns,
        direct_ns,
    })
}

fn candid_empty() -> Vec<u8> {
    b"DIDL\0\0".to_vec()
}

/// An agent that only signs (nothing listens at its URL), as a fixed Ed25519 identity.
pub(crate) fn signer() -> Result<ic_agent::Agent, BenchError> {
    signing_agent(Some(ic_agent::identity::BasicIdentity::from_raw_key(
        &[21; 32],
    )))
}

/// An agent that only signs, as the anonymous principal.
pub(crate) fn anonymous_signer() -> Result<ic_agent::Agent, BenchError> {
    signing_agent(None)
}

fn signing_agent(
    identity: Option<ic_agent::identity::BasicIdentity>,
) -> Result<ic_agent::Agent, BenchError> {
    let builder = ic_agent::Agent::builder()
        .with_url("http://127.0.0.1:9")
        .with_ingress_expiry(Duration::from_secs(240));
    match identity {
        Some(i) => builder.with_identity(i),
        None => builder,
    }
    .build()
    .map_err(|e| err("an agent to sign with")(e.to_string()))
}

pub(crate) fn sign_updates(
    signer: &ic_agent::Agent,
    canister: &ic_principal::Principal,
    n: usize,
) -> Result<Vec<Vec<u8>>, BenchError> {
    (0..n)
        .map(|_| {
            signer
                .update(canister, "inc")
                .with_arg(candid_empty())
                .sign()
                .map(|s| s.signed_update)
                .map_err(|e| err("signing a call")(e.to_string()))
        })
        .collect()
}

/// Create the counter and install it, through the replica's call path.
pub(crate) fn install_counter(
    replica: &replica::Replica,
    signer: &ic_agent::Agent,
) -> Result<ic_principal::Principal, BenchError> {
    let wasm = wat::parse_str(COUNTER).map_err(|e| err("the counter")(e.to_string()))?;
    install(replica, signer, 0, wasm)
}

/// Create canister number `index` and install `wasm` in it, through the replica's call
/// path.
pub(crate) fn install(
    replica: &replica::Replica,
    signer: &ic_agent::Agent,
    index: u64,
    wasm: Vec<u8>,
) -> Result<ic_principal::Principal, BenchError> {
    let (id, envelopes) = install_envelopes(signer, index, wasm)?;
    for (method, body) in envelopes {
        match replica.call(&body, &id) {
            Ok(replica::CallAnswer::Certified(_)) => {}
            other => return Err(err(method)(format!("{other:?}"))),
        }
    }
    Ok(id)
}

/// A signed call and its method's name.
pub(crate) type Envelope = (&'static str, Vec<u8>);

/// The signed management calls that create canister number `index` and install `wasm` in
/// it, in order, each with its method's name; and the canister's id (their effective id).
pub(crate) fn install_envelopes(
    signer: &ic_agent::Agent,
    index: u64,
    wasm: Vec<u8>,
) -> Result<(ic_principal::Principal, Vec<Envelope>), BenchError> {
    use candid::Encode;
    use ic_management_canister_types as mgmt;
    let id = certified_state::canister_id(index);
    let management = ic_principal::Principal::management_canister();
    let create = Encode!(&mgmt::ProvisionalCreateCanisterWithCyclesArgs::default())
        .map_err(|e| err("encoding create")(e.to_string()))?;
    let install = Encode!(&mgmt::InstallCodeArgs {
        mode: mgmt::CanisterInstallMode::Install,
        canister_id: id,
        wasm_module: wasm,
        arg: vec![],
        sender_canister_version: None,
    })
    .map_err(|e| err("encoding install")(e.to_string()))?;
    let envelopes = [
        ("provisional_create_canister_with_cycles", create),
        ("install_code", install),
    ]
    .into_iter()
    .map(|(method, arg)| Ok((method, sign_call(signer, &management, &id, method, arg)?)))
    .collect::<Result<_, BenchError>>()?;
    Ok((id, envelopes))
}

/// `method` of `canister` with `arg`, signed by `signer` for the effective canister.
pub(crate) fn sign_call(
    signer: &ic_agent::Agent,
    canister: &ic_principal::Principal,
    effective: &ic_principal::Principal,
    method: &str,
    arg: Vec<u8>,
) -> Result<Vec<u8>, BenchError> {
    signer
        .update(canister, method)
        .with_effective_canister_id(*effective)
        .with_arg(arg)
        .sign()
        .map(|s| s.signed_update)
        .map_err(|e| err("signing")(e.to_string()))
}

/// One call, signed by `signer`, through the replica's call path; certified or an error.
pub(crate) fn call(
    replica: &replica::Replica,
    signer: &ic_agent::Agent,
    canister: &ic_principal::Principal,
    effective: &ic_principal::Principal,
    method: &str,
    arg: Vec<u8>,
) -> Result<(), BenchError> {
    let body = sign_call(signer, canister, effective, method, arg)?;
    match replica.call(&body, effective) {
        Ok(replica::CallAnswer::Certified(_)) => Ok(()),
        other => Err(err(method)(format!("{other:?}"))),
    }
}

/// The floor: the same HTTP stack, CBOR in and out, nothing else.
fn floor_router() -> axum::Router {
    use axum::body::Bytes;
    use axum::http::{header, StatusCode};
    use axum::routing::post;
    async fn answer(body: Bytes) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
        let kind = match serde_cbor::from_slice::<serde_cbor::Value>(&body) {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::BAD_REQUEST,
        };
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            serde_cbor::Value::Text("status".into()),
            serde_cbor::Value::Text("replied".into()),
        );
        m.insert(
            serde_cbor::Value::Text("reply".into()),
            serde_cbor::Value::Bytes(b"DIDL\0\x01\x78\x01\0\0\0\0\0\0\0".to_vec()),
        );
        let out = serde_cbor::to_vec(&serde_cbor::Value::Map(m)).unwrap_or_default();
        (kind, [(header::CONTENT_TYPE, "application/cbor")], out)
    }
    axum::Router::new()
        .route("/api/v2/status", axum::routing::get(|| async { "up" }))
        .route("/api/v2/canister/{id}/query", post(answer))
        .route("/api/v3/canister/{id}/call", post(answer))
        .layer(axum::extract::DefaultBodyLimit::max(4 << 20))
}

/// Send `bodies` to `url` from `clients` threads, each on one kept-alive connection opened
/// (with a status request) before the clock starts.
fn load(url: &str, bodies: &[Vec<u8>], clients: usize) -> Result<Measured, BenchError> {
    load_spread(&[url.to_string()], bodies, clients)
}

/// [`load`] with client `i` sending to `urls[i % urls.len()]` (a subnet's nodes).
pub(crate) fn load_spread(
    urls: &[String],
    bodies: &[Vec<u8>],
    clients: usize,
) -> Result<Measured, BenchError> {
    let parts: Vec<&[Vec<u8>]> = bodies.chunks(bodies.len().div_ceil(clients)).collect();
    let ready = std::sync::Barrier::new(parts.len() + 1);
    let (results, wall) = std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                let ready = &ready;
                let url = urls[i % urls.len()].as_str();
                s.spawn(move || client(url, part, ready))
            })
            .collect();
        ready.wait();
        let start = Instant::now();
        let results: Vec<Result<Vec<Duration>, BenchError>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(err("a client")("panicked".into())))
            })
            .collect();
        (results, start.elapsed())
    });
    let mut lat = Vec::with_capacity(bodies.len());
    for r in results {
        lat.extend(r?);
    }
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    Ok(Measured {
        per_sec: lat.len() as f64 / wall.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    })
}

fn client(
    url: &str,
    bodies: &[Vec<u8>],
    ready: &std::sync::Barrier,
) -> Result<Vec<Duration>, BenchError> {
    let agent = ureq::AgentBuilder::new().max_idle_connections(1).build();
    let origin = url.split("/api/").next().unwrap_or(url);
    let warm = agent.get(&format!("{origin}/api/v2/status")).call();
    ready.wait();
    warm.map_err(|e| err(origin)(e.to_string()))?;
    let mut out = Vec::with_capacity(bodies.len());
    for b in bodies {
        let t = Instant::now();
        let resp = agent
            .post(url)
            .set("content-type", "application/cbor")
            .send_bytes(b)
            .map_err(|e| err(url)(e.to_string()))?;
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut resp.into_reader(), &mut sink)
            .map_err(|e| err(url)(e.to_string()))?;
        out.push(t.elapsed());
    }
    Ok(out)
}

/// Nanoseconds per query: through the replica's runtime, and directly in wasmtime.
fn per_message(n: usize) -> Result<(f64, f64), BenchError> {
    use canister_runtime::{CanisterMemory, Context, Entry, Runtime};
    let wasm = wat::parse_str(COUNTER).map_err(|e| err("the counter")(e.to_string()))?;
    let runtime = Runtime::new(Default::default()).map_err(|e| err("runtime")(e.to_string()))?;
    let code = runtime
        .compile(&wasm)
        .map_err(|e| err("compiling")(e.to_string()))?;
    let ctx = Context {
        canister_id: certified_state::canister_id(0).as_slice().to_vec(),
        caller: vec![4],
        arg: candid_empty(),
        time_ns: 1,
        controllers: vec![],
        status: 1,
        version: 1,
        data_certificate: None,
    };
    let init = runtime
        .execute(&code, &CanisterMemory::default(), &Entry::Init, &ctx)
        .map_err(|e| err("init")(e.to_string()))?;
    let memory = init.memory.unwrap_or_default();
    let query = Entry::Query("get".into());
    let t = Instant::now();
    for _ in 0..n {
        runtime
            .execute(&code, &memory, &query, &ctx)
            .map_err(|e| err("a query")(e.to_string()))?;
    }
    let ours = t.elapsed().as_nanos() as f64 / n as f64;
    let direct = direct_calls(&wasm, n)?;
    Ok((ours, direct))
}

/// The same export called `n` times on one live instance, imports stubbed (the reply is
/// copied out, as a reply must be).
fn direct_calls(wasm: &[u8], n: usize) -> Result<f64, BenchError> {
    use wasmtime::{Caller, Engine, Linker, Module, Store};
    let engine = Engine::default();
    let module = Module::new(&engine, wasm).map_err(|e| err("wasmtime")(e.to_string()))?;
    let mut linker: Linker<Vec<u8>> = Linker::new(&engine);
    let w = |e: wasmtime::Error| err("linking stubs")(e.to_string());
    linker
        .func_wrap("ic0", "msg_reply", |_: Caller<'_, Vec<u8>>| {})
        .map_err(w)?;
    linker
        .func_wrap(
            "ic0",
            "msg_reply_data_append",
            |mut c: Caller<'_, Vec<u8>>, src: i32, size: i32| {
                if let Some(wasmtime::Extern::Memory(m)) = c.get_export("memory") {
                    let mut buf = vec![0u8; size.max(0) as usize];
                    if m.read(&c, src as usize, &mut buf).is_ok() {
                        c.data_mut().extend(buf);
                    }
                }
            },
        )
        .map_err(w)?;
    linker
        .func_wrap(
            "ic0",
            "certified_data_set",
            |_: Caller<'_, Vec<u8>>, _: i32, _: i32| {},
        )
        .map_err(w)?;
    linker
        .func_wrap("ic0", "stable64_size", |_: Caller<'_, Vec<u8>>| 0i64)
        .map_err(w)?;
    linker
        .func_wrap("ic0", "stable64_grow", |_: Caller<'_, Vec<u8>>, _: i64| {
            0i64
        })
        .map_err(w)?;
    linker
        .func_wrap(
            "ic0",
            "stable64_read",
            |_: Caller<'_, Vec<u8>>, _: i64, _: i64, _: i64| {},
        )
        .map_err(w)?;
    linker
        .func_wrap(
            "ic0",
            "stable64_write",
            |_: Caller<'_, Vec<u8>>, _: i64, _: i64, _: i64| {},
        )
        .map_err(w)?;
    linker
        .func_wrap("ic0", "trap", |_: Caller<'_, Vec<u8>>, _: i32, _: i32| {})
        .map_err(w)?;
    let mut store = Store::new(&engine, Vec::new());
    let instance = linker.instantiate(&mut store, &module).map_err(w)?;
    let get = instance
        .get_typed_func::<(), ()>(&mut store, "canister_query get")
        .map_err(w)?;
    let t = Instant::now();
    for _ in 0..n {
        store.data_mut().clear();
        get.call(&mut store, ()).map_err(w)?;
    }
    Ok(t.elapsed().as_nanos() as f64 / n as f64)
}
