//! `icos replica run` as a developer runs it, reached with DFINITY's `ic-agent`: the process
//! is killed (SIGKILL) during a stream of update calls, started again on the same directory,
//! says what it recovered, and no answered call is lost or run twice.

mod common;
use candid::{Decode, Encode};
use common::counter_get;
use ic_agent::identity::BasicIdentity;
use ic_agent::Agent;
use ic_principal::Principal;
use ic_utils::interfaces::ManagementCanister;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const COUNTER: &str = example_canisters::COUNTER_WAT;

/// A running `icos replica run`: the process, its URL, and what it printed before listening.
struct Running {
    child: Child,
    url: String,
    said: Vec<String>,
    /// The gateway's port (`--gateway`).
    gateway: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_icos"))
        .args([
            "replica",
            "run",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut said = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("the replica ended after printing {said:?}"))
            .unwrap();
        if let Some(rest) = line.strip_prefix("replica: listening on ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        said.push(line);
    };
    let gateway = said
        .iter()
        .find_map(|l| l.strip_prefix("replica: gateway on http://localhost:"))
        .and_then(|rest| rest.split(':').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no gateway line in {said:?}"));
    Running {
        child,
        url,
        said,
        gateway,
    }
}

async fn agent(url: &str) -> Agent {
    let a = Agent::builder()
        .with_url(url)
        .with_identity(BasicIdentity::from_raw_key(&[5; 32]))
        .with_ingress_expiry(Duration::from_secs(240))
        .build()
        .unwrap();
    a.fetch_root_key().await.unwrap();
    a
}

async fn inc(a: &Agent, id: &Principal) -> Result<u64, ic_agent::AgentError> {
    let r = a
        .update(id, "inc")
        .with_arg(Encode!().unwrap())
        .call_and_wait()
        .await?;
    Ok(Decode!(&r, u64).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_during_a_stream_of_calls_the_replica_restarts_with_every_answered_call() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replica");
    let first = start(&dir);
    assert!(
        first.said[0].contains("no checkpoint found"),
        "{:?}",
        first.said
    );
    let a = agent(&first.url).await;
    let mgmt = ManagementCanister::create(&a);
    let (id,) = mgmt
        .create_canister()
        .as_provisional_create_with_amount(None)
        .with_effective_canister_id(certified_state::canister_id(0))
        .call_and_wait()
        .await
        .unwrap();
    mgmt.install_code(&id, &wat::parse_str(COUNTER).unwrap())
        .call_and_wait()
        .await
        .unwrap();

    // Two clients increment until the process dies under them.
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (a, answered) = (a.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            while inc(&a, &id).await.is_ok() {
                answered.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    while answered.load(Ordering::SeqCst) < 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL: no chance to flush anything
    first.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let answered = answered.load(Ordering::SeqCst);

    let second = start(&dir);
    let a = agent(&second.url).await;
    let value = counter_get(&a, &id).await;
    // Answered calls were checkpointed before their answer; each client may have had one more
    // executed and checkpointed whose answer the kill cut off.
    assert!(
        (answered..=answered + 2).contains(&value),
        "{answered} calls answered before the kill, the counter says {value}"
    );
    let said = second.said.join("\n");
    assert!(
        said.contains(&format!(
            "recovered the checkpoint at height {}: 1 canister(s)",
            value + 2
        )),
        "{said}"
    );
    assert_eq!(inc(&a, &id).await.unwrap(), value + 1);
}

#[test]
fn a_damaged_key_file_stops_the_start_and_says_which() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("node.ed25519"), b"short").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_icos"))
        .args(["replica", "run", "--listen", "127.0.0.1:0", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("node.ed25519") && err.contains("not a 32-byte key (5 bytes)"),
        "{err}"
    );
}

/// `icos canister ...` against the running replica; the output a developer reads.
fn canister_cmd(url: &str, identity: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_icos"))
        .args(["canister", "--url", url, "--identity"])
        .arg(identity)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn the_canister_commands_create_install_call_query_upgrade_and_show_status() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("replica"));
    let me = tmp.path().join("me.pem");
    let run = |args: &[&str]| {
        let (ok, out, err) = canister_cmd(&node.url, &me, args);
        assert!(ok, "icos canister {args:?}: {err}");
        out
    };
    let principal = run(&["whoami"]);
    assert!(std::fs::read_to_string(&me)
        .unwrap()
        .contains("PRIVATE KEY"));
    let id = run(&["create"]);
    let wat_file = tmp.path().join("counter.wat");
    std::fs::write(&wat_file, COUNTER).unwrap();
    run(&["install", &id, wat_file.to_str().unwrap()]);
    assert_eq!(run(&["call", &id, "inc"]), "(1 : nat64)");
    assert_eq!(run(&["call", &id, "inc"]), "(2 : nat64)");
    assert_eq!(run(&["query", &id, "get"]), "(2 : nat64)");
    // An upgrade keeps what the counter keeps in stable memory.
    run(&[
        "install",
        &id,
        wat_file.to_str().unwrap(),
        "--mode",
        "upgrade",
    ]);
    assert_eq!(run(&["query", &id, "get"]), "(2 : nat64)");
    let status = run(&["status", &id]);
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        wat::parse_str(COUNTER).unwrap(),
    ));
    assert!(status.contains("status: Running"), "{status}");
    assert!(status.contains(&format!("module hash: {hash}")), "{status}");
    assert!(
        status.contains(&format!("controllers: {principal}")),
        "{status}"
    );

    // What goes wrong is said: another identity is no controller, a canister that does not
    // exist, a module that is not one, an argument that is not Candid.
    let other = tmp.path().join("other.pem");
    let (ok, _, err) = canister_cmd(&node.url, &other, &["status", &id]);
    assert!(
        !ok && err.contains("only the controllers of canister"),
        "{err}"
    );
    let (ok, _, err) = canister_cmd(&node.url, &me, &["call", "aaaaa-aa", "nothing"]);
    assert!(!ok && err.contains("calling nothing on aaaaa-aa"), "{err}");
    let missing = Principal::from_slice(&[0, 0, 0, 0, 0, 0, 0, 9, 1, 1]).to_text();
    let (ok, _, err) = canister_cmd(&node.url, &me, &["call", &missing, "inc"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let junk = tmp.path().join("junk.wasm");
    std::fs::write(&junk, b"\x01\x02 not a module").unwrap();
    let (ok, _, err) = canister_cmd(&node.url, &me, &["install", &id, junk.to_str().unwrap()]);
    assert!(
        !ok && err.contains("is neither Wasm nor WebAssembly text"),
        "{err}"
    );
    let (ok, _, err) = canister_cmd(&node.url, &me, &["call", &id, "inc", "--arg-hex", "00ff"]);
    assert!(!ok && err.contains("must be Candid bytes"), "{err}");
    let (ok, _, err) = canister_cmd(&node.url, &me, &["call", &id, "inc", "--arg", "(1 +"]);
    assert!(!ok && err.contains("is not Candid text"), "{err}");

    // The asset canister: the examples as Wasm, a site uploaded from a directory, pages that
    // are shown only once they verify, an argument given as Candid text.
    let examples = tmp.path().join("examples");
    run(&["examples", examples.to_str().unwrap()]);
    let assets = run(&["create"]);
    run(&[
        "install",
        &assets,
        examples.join("assets.wasm").to_str().unwrap(),
    ]);
    let (ok, page, err) = canister_cmd(&node.url, &me, &["http", &assets]);
    assert!(ok && page.contains("Hello from an icos canister"), "{err}");
    assert!(
        err.contains("HTTP 200") && err.contains("body verified"),
        "{err}"
    );
    let site = tmp.path().join("site");
    std::fs::create_dir_all(site.join("css")).unwrap();
    std::fs::write(site.join("index.html"), "<h1>My dApp</h1>").unwrap();
    std::fs::write(site.join("css/site.css"), "h1 { color: teal }").unwrap();
    let uploaded = run(&["upload", &assets, site.to_str().unwrap()]);
    assert!(
        uploaded.contains("/css/site.css (18 bytes, text/css; charset=utf-8)"),
        "{uploaded}"
    );
    assert_eq!(run(&["http", &assets, "/"]), "<h1>My dApp</h1>");
    assert_eq!(
        run(&["http", &assets, "/css/site.css"]),
        "h1 { color: teal }"
    );
    run(&[
        "call",
        &assets,
        "put",
        "--arg",
        r#"("/hi.txt", "text/plain", blob "hi\0a")"#,
    ]);
    assert_eq!(run(&["http", &assets, "/hi.txt"]), "hi");
    // A file larger than one message goes up in pieces and is published whole; it comes
    // back in chunks, checked together against the certified hash.
    let large: String = (0..120_000)
        .map(|i| format!("line {i:07} of a large file\n"))
        .collect();
    assert!(large.len() > 3 << 20);
    let media = tmp.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("large.txt"), &large).unwrap();
    let uploaded = run(&[
        "upload",
        &assets,
        media.to_str().unwrap(),
        "--prefix",
        "/media",
    ]);
    assert!(
        uploaded.contains(&format!("/media/large.txt ({} bytes", large.len())),
        "{uploaded}"
    );
    assert!(
        run(&["http", &assets, "/media/large.txt"]) == large.trim_end(),
        "the large file came back changed"
    );
    // A token for no asset, or past the body's end, is refused by name.
    for (token, says) in [
        (
            r#"(record { key = "/nope"; index = 1 : nat64 })"#,
            "no asset has this path",
        ),
        (
            r#"(record { key = "/media/large.txt"; index = 9 : nat64 })"#,
            "past the body",
        ),
        (
            r#"(record { key = "/media/large.txt" })"#,
            "no key or no index",
        ),
    ] {
        let (ok, _, err) = canister_cmd(
            &node.url,
            &me,
            &[
                "query",
                &assets,
                "http_request_streaming_callback",
                "--arg",
                token,
            ],
        );
        assert!(!ok && err.contains(says), "{token}: {err}");
    }
    // One upload at a time: a `put` of another path drops the staged pieces, so a later
    // `put` publishes only its own piece, never a mix.
    let put = |args: &str, method: &str| run(&["call", &assets, method, "--arg", args]);
    put(r#"("/a.txt", blob "staged ")"#, "put_chunk");
    put(r#"("/b.txt", "text/plain", blob "b")"#, "put");
    put(r#"("/a.txt", "text/plain", blob "last")"#, "put");
    assert_eq!(run(&["http", &assets, "/a.txt"]), "last");
    // Over the 64 MiB a canister takes: refused before anything is sent.
    let too_big = std::fs::File::create(site.join("big.bin")).unwrap();
    too_big.set_len((64 << 20) + 1).unwrap();
    std::fs::write(site.join("index.html"), "<h1>changed</h1>").unwrap();
    let (ok, _, err) = canister_cmd(&node.url, &me, &["upload", &assets, site.to_str().unwrap()]);
    assert!(!ok && err.contains("big.bin is 67108865 bytes"), "{err}");
    assert_eq!(
        run(&["http", &assets, "/"]),
        "<h1>My dApp</h1>",
        "a refused upload changed the site"
    );
    // The same site in a browser's way, through the replica's gateway: by host and by
    // ?canisterId=, verified; the counter has no pages, and the gateway says so.
    let page = |host: &str, path: &str| match ureq::get(&format!(
        "http://127.0.0.1:{}{path}",
        node.gateway
    ))
    .set("host", host)
    .call()
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let r = page(&format!("{assets}.localhost"), "/css/site.css");
    assert_eq!(r.header("x-icos-verification"), Some("verified (v1)"));
    assert_eq!(r.into_string().unwrap(), "h1 { color: teal }");
    let r = page("localhost", &format!("/?canisterId={assets}"));
    assert_eq!(r.into_string().unwrap(), "<h1>My dApp</h1>");
    // The large file streams: no length known ahead, chunk after chunk, verified.
    let r = page(&format!("{assets}.localhost"), "/media/large.txt");
    assert_eq!(r.header("x-icos-verification"), Some("verified (v1)"));
    assert_eq!(r.header("content-length"), None);
    let mut got = String::new();
    std::io::Read::read_to_string(&mut r.into_reader(), &mut got).unwrap();
    assert!(
        got == large,
        "the large file came through the gateway changed"
    );
    let r = page(&format!("{id}.localhost"), "/");
    assert_eq!(r.status(), 502);
    assert_eq!(r.header("x-ic-error-cause"), Some("canister_reject"));
    // A canister that asks for its page to go through consensus (`upgrade = true`): the
    // gateway sends `http_request_update` as a call and serves its certified reply.
    let upgrading = run(&["create"]);
    let wat = tmp.path().join("upgrading.wat");
    std::fs::write(&wat, upgrading_canister()).unwrap();
    run(&["install", &upgrading, wat.to_str().unwrap()]);
    let r = page(&format!("{upgrading}.localhost"), "/");
    assert_eq!(
        r.header("x-icos-verification"),
        Some("update (certified reply)")
    );
    assert_eq!(r.into_string().unwrap(), "answered by a call");
    // A canister that is no asset canister has no page to verify.
    let (ok, _, err) = canister_cmd(&node.url, &me, &["http", &id, "/"]);
    assert!(
        !ok && err.contains("`http_request` failed") && err.contains("no method"),
        "{err}"
    );
}

/// The same story from JavaScript: `js/agent-test/story.mjs` on DFINITY's `@dfinity/agent`
/// 3.4 (installed by `scripts/setup.sh` from the lockfile), its default checks on.
#[test]
fn dfinity_agent_js_creates_installs_calls_queries_reads_state_and_is_refused_where_it_should() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../js/agent-test");
    assert!(
        js.join("node_modules/@dfinity/agent").is_dir(),
        "@dfinity/agent is not installed in {}: ./scripts/setup.sh installs it (npm ci)",
        js.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp.path().join("replica"));
    let other = start(&tmp.path().join("other"));
    let wasm = tmp.path().join("counter.wasm");
    std::fs::write(&wasm, wat::parse_str(COUNTER).unwrap()).unwrap();
    let out = Command::new("node")
        .arg(js.join("story.mjs"))
        .arg(&node.url)
        .arg(&wasm)
        .arg(&other.url)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("js: story complete"),
        "{stdout}\n{stderr}"
    );
}

/// A canister whose `http_request` query always asks for an upgrade and whose
/// `http_request_update` answers with a fixed page: WebAssembly text with both Candid
/// replies as data.
fn upgrading_canister() -> String {
    use ic_http_certification::HttpResponse;
    let query = Encode!(&HttpResponse::builder().with_upgrade(true).build()).unwrap();
    let update = Encode!(&HttpResponse::builder()
        .with_status_code(ic_http_certification::StatusCode::OK)
        .with_headers(vec![("content-type".into(), "text/plain".into())])
        .with_body(b"answered by a call".to_vec())
        .build())
    .unwrap();
    let data = |b: &[u8]| b.iter().map(|x| format!("\\{x:02x}")).collect::<String>();
    format!(
        r#"(module
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (memory 1)
  (data (i32.const 0) "{q}")
  (data (i32.const 4096) "{u}")
  (func (export "canister_query http_request")
    (call $append (i32.const 0) (i32.const {ql})) (call $reply))
  (func (export "canister_update http_request_update")
    (call $append (i32.const 4096) (i32.const {ul})) (call $reply)))"#,
        q = data(&query),
        u = data(&update),
        ql = query.len(),
        ul = update.len(),
    )
}
