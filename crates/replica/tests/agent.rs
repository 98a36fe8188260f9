//! The replica as dApp developers reach it: DFINITY's `ic-agent` and `ic-utils` over real
//! HTTP, with their default checks on (certificates verified against the root key through
//! the subnet's delegation; query signatures verified against the node key read from the
//! certified state). Then what an attacker sends, byte for byte: forged signatures, expired
//! requests, requests for another canister, oversized bodies, replays.

mod common;

use candid::{Decode, Encode};
use certified_state::{canister_id, delegate, BlsKey};
use common::{create_counter, create_with, get, inc};
use ic_agent::identity::BasicIdentity;
use ic_agent::{Agent, AgentError};
use ic_http_certification::{HttpRequest, HttpResponse};
use ic_principal::Principal;
use ic_utils::interfaces::management_canister::builders::CanisterInstallMode;
use ic_utils::interfaces::ManagementCanister;
use replica::{Config, Replica};
use std::sync::Arc;

const COUNTER: &str = example_canisters::COUNTER_WAT;

struct Net {
    url: String,
    root_der: Vec<u8>,
}

fn start(subnet_size: usize) -> Net {
    let root = BlsKey::generate();
    let subnet = BlsKey::generate();
    let subnet_id = Principal::self_authenticating(subnet.public_der());
    let range = (0u64, 0xfffff);
    let delegation = delegate(
        &root,
        subnet_id,
        &subnet.public_der(),
        &[(canister_id(range.0), canister_id(range.1))],
        replica::system_time_nanos(),
    )
    .unwrap();
    let node_key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let node_der = ingress::ed25519_der(node_key.verifying_key().as_bytes());
    let root_der = root.public_der();
    let config = Config {
        subnet_id,
        subnet_key: subnet,
        delegation: Some(delegation),
        root_key_der: root_der.clone(),
        node_id: Principal::self_authenticating(&node_der),
        node_key,
        canister_range: range,
        subnet_size,
        peer_node_keys: Vec::new(),
        runtime: canister_runtime::Limits {
            instructions_per_message: 100_000_000,
            ..Default::default()
        },
        ingress: Default::default(),
    };
    let r = Arc::new(Replica::new(config).unwrap());
    let (addr, _) = http_guard::spawn(
        "127.0.0.1:0".parse().unwrap(),
        replica::http::router(r),
        http_guard::Limits::default(),
    )
    .unwrap();
    Net {
        url: format!("http://{addr}"),
        root_der,
    }
}

async fn agent(net: &Net, seed: u8) -> Agent {
    let a = Agent::builder()
        .with_url(&net.url)
        .with_identity(BasicIdentity::from_raw_key(&[seed; 32]))
        .build()
        .unwrap();
    a.fetch_root_key().await.unwrap();
    assert_eq!(
        a.read_root_key(),
        net.root_der,
        "status served another root key"
    );
    a
}

fn counter_wasm() -> Vec<u8> {
    wat::parse_str(COUNTER).unwrap()
}

fn reject_text(e: AgentError) -> String {
    match e {
        AgentError::CertifiedReject { reject, .. }
        | AgentError::UncertifiedReject { reject, .. } => {
            format!(
                "{:?} {} {:?}",
                reject.reject_code, reject.reject_message, reject.error_code
            )
        }
        other => format!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ic_agent_creates_installs_calls_queries_reads_state_and_upgrades() {
    let net = start(1);
    let a = agent(&net, 1).await;
    let id = create_counter(&a).await;
    for want in 1..=3 {
        assert_eq!(inc(&a, &id).await.unwrap(), want);
    }
    // Signed by the node key; the agent checks the signature (its default).
    assert_eq!(get(&a, &id).await.unwrap(), 3);

    let hash = a.read_state_canister_info(id, "module_hash").await.unwrap();
    use sha2::Digest;
    assert_eq!(hash, sha2::Sha256::digest(counter_wasm()).to_vec());
    let data = a
        .read_state_canister_info(id, "certified_data")
        .await
        .unwrap();
    assert_eq!(data, 3u64.to_le_bytes().to_vec());

    let mgmt = ManagementCanister::create(&a);
    let (status,) = mgmt.canister_status(&id).call().await.unwrap();
    let (as_update,) = mgmt.canister_status(&id).as_update().call().await.unwrap();
    assert_eq!(status, as_update);
    assert_eq!(format!("{:?}", status.status), "Running", "{status:?}");
    assert_eq!(status.module_hash, Some(hash));
    assert_eq!(
        status.settings.controllers,
        vec![a.get_principal().unwrap()]
    );

    // Upgrade: the value travels through stable memory.
    mgmt.install_code(&id, &counter_wasm())
        .with_mode(CanisterInstallMode::Upgrade(None))
        .call_and_wait()
        .await
        .unwrap();
    assert_eq!(get(&a, &id).await.unwrap(), 3);
    assert_eq!(inc(&a, &id).await.unwrap(), 4);

    // Someone else is not a controller; their call is executed and rejected, certified.
    let b = agent(&net, 2).await;
    let e = ManagementCanister::create(&b)
        .install_code(&id, &counter_wasm())
        .with_mode(CanisterInstallMode::Reinstall)
        .call_and_wait()
        .await
        .unwrap_err();
    let text = reject_text(e);
    assert!(
        text.contains("IC0512") && text.contains("only the controllers"),
        "{text}"
    );
    assert_eq!(
        get(&b, &id).await.unwrap(),
        4,
        "the refused reinstall changed the canister"
    );

    // A method that does not exist, a canister that does not exist.
    let e = a
        .query(&id, "nope")
        .with_arg(Encode!().unwrap())
        .call()
        .await
        .unwrap_err();
    assert!(reject_text(e).contains("has no method `nope`"));
    let e = inc(&a, &canister_id(77)).await.unwrap_err();
    assert!(reject_text(e).contains("not found"), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_looping_canister_is_stopped_and_the_replica_serves_everyone_else() {
    let net = start(1);
    let a = agent(&net, 1).await;
    let counter = create_counter(&a).await;
    let wasm = wat::parse_str(
        r#"(module (memory (export "memory") 1)
        (func (export "canister_update spin") (loop $l (br $l)))
        (func (export "canister_update eat")
          (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) unreachable))"#,
    )
    .unwrap();
    let spin = create_with(&a, &wasm).await;
    let e = a
        .update(&spin, "spin")
        .with_arg(Encode!().unwrap())
        .call_and_wait()
        .await
        .unwrap_err();
    let text = reject_text(e);
    assert!(
        text.contains("IC0522") && text.contains("instruction limit"),
        "{text}"
    );
    let e = a
        .update(&spin, "eat")
        .with_arg(Encode!().unwrap())
        .call_and_wait()
        .await
        .unwrap_err();
    assert!(reject_text(e).contains("unreachable"));
    assert_eq!(inc(&a, &counter).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subnet_of_several_nodes_refuses_calls_until_it_replicates() {
    let net = start(3);
    let a = agent(&net, 1).await;
    let e = ManagementCanister::create(&a)
        .create_canister()
        .as_provisional_create_with_amount(None)
        .with_effective_canister_id(canister_id(0))
        .call_and_wait()
        .await
        .unwrap_err();
    let text = reject_text(e);
    assert!(text.contains("without the subnet's ordered log"), "{text}");
}

/// POST raw bytes; the status and body.
fn post(url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let r = ureq::post(url)
        .set("content-type", "application/cbor")
        .send_bytes(body);
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let status = resp.status();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut out).unwrap();
    (status, out)
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_expired_misrouted_oversized_and_replayed_requests_are_refused() {
    let net = start(1);
    let a = agent(&net, 1).await;
    let id = create_counter(&a).await;
    let call_url = |cid: &Principal| format!("{}/api/v3/canister/{cid}/call", net.url);

    let signed = a
        .update(&id, "inc")
        .with_arg(Encode!().unwrap())
        .sign()
        .unwrap();
    let body = signed.signed_update.clone();

    // A forged signature: one bit of the signature flipped.
    let mut forged = body.clone();
    let sig_at = forged
        .windows(10)
        .position(|w| w == b"sender_sig")
        .expect("the envelope has a signature");
    let last = sig_at + 10 + 2 + 40;
    forged[last] ^= 1;
    let (status, text) = tokio::task::block_in_place(|| post(&call_url(&id), &forged));
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&text));
    assert!(String::from_utf8_lossy(&text).contains("invalid signature"));

    // Sent to another canister's URL.
    let (status, text) = tokio::task::block_in_place(|| post(&call_url(&canister_id(9)), &body));
    assert_eq!(status, 200);
    let v: serde_cbor::Value = serde_cbor::from_slice(&text).unwrap();
    let text = format!("{v:?}");
    assert!(
        text.contains("non_replicated_rejection") && text.contains("was sent to"),
        "{text}"
    );

    // The real one, then its replay: executed once.
    let (status, _) = tokio::task::block_in_place(|| post(&call_url(&id), &body));
    assert_eq!(status, 200);
    let (status, _) = tokio::task::block_in_place(|| post(&call_url(&id), &body));
    assert_eq!(status, 200);
    assert_eq!(
        get(&a, &id).await.unwrap(),
        1,
        "the replay was executed again"
    );
    // Only its sender may read how it ended.
    let b = agent(&net, 2).await;
    let e = b
        .request_status_raw(&signed.request_id, id)
        .await
        .unwrap_err();
    assert!(format!("{e}").contains("403"), "{e}");
    a.request_status_raw(&signed.request_id, id).await.unwrap();

    // Expired ten minutes ago.
    let old = a
        .update(&id, "inc")
        .with_arg(Encode!().unwrap())
        .expire_at(std::time::SystemTime::now() - std::time::Duration::from_secs(600))
        .sign()
        .unwrap();
    let (status, text) = tokio::task::block_in_place(|| post(&call_url(&id), &old.signed_update));
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&text).contains("expired"),
        "{}",
        String::from_utf8_lossy(&text)
    );

    // More than the ingress limit: 413. The server stops reading at the limit, so a client
    // still sending may instead see the connection closed under it; either way nothing ran.
    let huge = vec![0u8; 4 << 20];
    let refused = tokio::task::block_in_place(|| {
        match ureq::post(&call_url(&id))
            .set("content-type", "application/cbor")
            .send_bytes(&huge)
        {
            Err(ureq::Error::Status(413, _)) => "413".to_string(),
            Err(ureq::Error::Transport(t)) if t.kind() == ureq::ErrorKind::Io => {
                format!("closed mid-body: {t}")
            }
            other => panic!("a 4 MiB body was not refused: {other:?}"),
        }
    });
    eprintln!("4 MiB body: {refused}");
    assert_eq!(get(&a, &id).await.unwrap(), 1);
}

/// `http_request` as an HTTP gateway sends it, through ic-agent's query (signature checked).
async fn http_get(
    a: &Agent,
    id: &Principal,
    url: &str,
) -> (HttpRequest<'static>, HttpResponse<'static>) {
    let request = HttpRequest::get(url).with_certificate_version(2).build();
    let reply = a
        .query(id, "http_request")
        .with_arg(Encode!(&request).unwrap())
        .call()
        .await
        .unwrap();
    (request, Decode!(&reply, HttpResponse<'static>).unwrap())
}

/// What a gateway does before it serves an answer: DFINITY's response verification, against
/// the network's root key, for canister `id`.
fn verify(
    net: &Net,
    id: &Principal,
    request: HttpRequest<'static>,
    response: HttpResponse<'static>,
) -> Result<Vec<u8>, ic_response_verification::ResponseVerificationError> {
    let info = ic_response_verification::verify_request_response_pair(
        request,
        response,
        id.as_slice(),
        replica::system_time_nanos() as u128,
        300_000_000_000,
        &net.root_der,
        ic_response_verification::MIN_VERIFICATION_VERSION,
    )?;
    assert_eq!(info.verification_version, 1);
    Ok(info
        .response
        .expect("a verified answer carries its body")
        .body)
}

fn respond(status: u16, headers: Vec<(String, String)>, body: &[u8]) -> HttpResponse<'static> {
    HttpResponse::builder()
        .with_status_code(status.try_into().unwrap())
        .with_headers(headers)
        .with_body(body.to_vec())
        .build()
}

async fn put_asset(
    a: &Agent,
    id: &Principal,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Result<(), AgentError> {
    a.update(id, "put")
        .with_arg(Encode!(&path, &content_type, &serde_bytes::ByteBuf::from(body)).unwrap())
        .call_and_wait()
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_asset_canister_serves_bodies_that_response_verification_accepts() {
    let net = start(1);
    let a = agent(&net, 7).await;
    let id = create_with(&a, example_canisters::ASSETS_WASM).await;

    // The page it is installed with, for `/` (the index fallback, as the verifier applies it).
    let (request, response) = http_get(&a, &id, "/").await;
    assert_eq!(response.status_code().as_u16(), 200);
    let header = |r: &HttpResponse, name: &str| {
        r.headers()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header(&response, "content-type").unwrap(),
        "text/html; charset=utf-8"
    );
    let body = verify(&net, &id, request, response).unwrap();
    assert!(String::from_utf8_lossy(&body).contains("Hello from an icos canister"));

    // A new asset, with a query string and percent-encoding in the URL.
    put_asset(&a, &id, "/app v1.js", "text/javascript", b"console.log(1)")
        .await
        .unwrap();
    let (request, response) = http_get(&a, &id, "/app%20v1.js?cache=no").await;
    assert_eq!(
        header(&response, "content-type").unwrap(),
        "text/javascript"
    );
    assert_eq!(
        verify(&net, &id, request, response).unwrap(),
        b"console.log(1)"
    );

    // Replaced in place (shorter), and replaced by a longer one (moved): both certified.
    put_asset(&a, &id, "/app v1.js", "text/javascript", b"go()")
        .await
        .unwrap();
    let (request, response) = http_get(&a, &id, "/app%20v1.js").await;
    assert_eq!(verify(&net, &id, request, response).unwrap(), b"go()");
    let long = vec![b'x'; 300_000];
    put_asset(&a, &id, "/app v1.js", "text/javascript", &long)
        .await
        .unwrap();
    let (request, response) = http_get(&a, &id, "/app%20v1.js").await;
    assert_eq!(verify(&net, &id, request, response).unwrap(), long);

    // A body changed on the way: refused. So is a true answer presented as another canister's.
    let (request, response) = http_get(&a, &id, "/index.html").await;
    let tampered = respond(200, response.headers().to_vec(), b"<h1>pay here</h1>");
    let refused = verify(&net, &id, request.clone(), tampered).unwrap_err();
    assert!(
        format!("{refused:?}").contains("InvalidResponseBody"),
        "{refused:?}"
    );
    let other = create_with(&a, example_canisters::ASSETS_WASM).await;
    put_asset(&a, &other, "/index.html", "text/html", b"<h1>pay here</h1>")
        .await
        .unwrap();
    let (_, forged) = http_get(&a, &other, "/index.html").await;
    assert!(verify(&net, &id, request.clone(), forged.clone()).is_err());
    let borrowed = respond(200, forged.headers().to_vec(), forged.body());
    let refused = verify(&net, &id, request.clone(), borrowed).unwrap_err();
    eprintln!("another canister's certified page presented as this one's: {refused}");
    let mut headers = response.headers().to_vec();
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case("ic-certificate"));
    let stripped = respond(200, headers, response.body());
    assert!(verify(&net, &id, request, stripped).is_err());

    // Only controllers change assets; bad paths and content types are named and refused.
    let stranger = agent(&net, 8).await;
    let e = reject_text(
        put_asset(&stranger, &id, "/index.html", "text/html", b"x")
            .await
            .unwrap_err(),
    );
    assert!(e.contains("put: only a controller"), "{e}");
    for (path, content_type, why) in [
        ("index.html", "text/html", "must start with '/'"),
        ("/a b?c", "text/html", "may not hold"),
        ("/x", "text/html\r\nset-cookie: a=b", "printable ASCII"),
        ("/x", "", "1 to 95 bytes"),
    ] {
        let e = reject_text(
            put_asset(&a, &id, path, content_type, b"x")
                .await
                .unwrap_err(),
        );
        assert!(e.contains(why), "{path:?} {content_type:?}: {e}");
    }
    let e = reject_text(
        put_asset(
            &a,
            &id,
            "/big",
            "application/octet-stream",
            &vec![0; (1 << 20) + 1],
        )
        .await
        .unwrap_err(),
    );
    assert!(e.contains("at most 1 MiB"), "{e}");
    for (arg, why) in [
        (b"GET / HTTP/1.1".to_vec(), "not Candid"),
        (Encode!(&"/").unwrap(), "expected an HttpRequest record"),
        (b"DIDL\x01\x6c\x01\x00\x7f\x01\x00".to_vec(), "has no url"),
        (
            b"DIDL\x01\x6d\x00\x01\x00\x05".to_vec(),
            "expected an HttpRequest record",
        ),
        (
            b"DIDL\x00\x01\x71\xff\xff\xff\xff\x0f".to_vec(),
            "expected an HttpRequest record",
        ),
    ] {
        let e = reject_text(
            a.query(&id, "http_request")
                .with_arg(arg)
                .call()
                .await
                .unwrap_err(),
        );
        assert!(e.contains(why), "{why}: {e}");
    }

    // A code upgrade keeps every asset (they live in stable memory) and their certification.
    ManagementCanister::create(&a)
        .install_code(&id, example_canisters::ASSETS_WASM)
        .with_mode(CanisterInstallMode::Upgrade(None))
        .call_and_wait()
        .await
        .unwrap();
    let (request, response) = http_get(&a, &id, "/app%20v1.js").await;
    assert_eq!(verify(&net, &id, request, response).unwrap(), long);

    // Deleted: the path falls back to the index page, still verified.
    a.update(&id, "delete")
        .with_arg(Encode!(&"/app v1.js").unwrap())
        .call_and_wait()
        .await
        .unwrap();
    let (request, response) = http_get(&a, &id, "/app%20v1.js").await;
    let body = verify(&net, &id, request, response).unwrap();
    assert!(String::from_utf8_lossy(&body).contains("Hello from an icos canister"));
}
