//! The API boundary under load (issue 13), next to nginx in the same run: `wrk` sends the
//! same signed query (so neither side may answer from a cache) through our boundary and
//! through nginx configured as a reverse proxy with keep-alive to the same replica; the
//! replica alone is the floor both stand on. Rounds alternate between the two so drift of
//! the machine hits both. Also measured: identical anonymous queries, which our boundary
//! answers from its one-second cache (nginx has no equivalent without a cache key that
//! would break query signatures).
//!
//! Also: pages per second through the HTTP gateway, each answer checked with response
//! verification (the asset canister's page, by its `Host`).
//!
//! Both proxies serve HTTPS with the same self-signed certificate (rustls on our side,
//! OpenSSL in nginx; TLS 1.2 and 1.3 on both, wrk keeps its connections, so the handshake is
//! paid once per connection); the replica behind them speaks plain HTTP.

use crate::wrk::{wrk, WrkResult};
use crate::BenchError;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn err(what: &str) -> impl FnOnce(String) -> BenchError + '_ {
    move |message| BenchError::Replica {
        what: format!("boundary benchmark: {what}"),
        message,
    }
}

#[derive(Debug, Clone)]
pub struct BoundaryReport {
    /// Per round: (boundary, nginx).
    pub rounds: Vec<(WrkResult, WrkResult)>,
    /// The replica without anything in front.
    pub direct: WrkResult,
    /// Identical anonymous queries through the boundary (its cache answers).
    pub cached: WrkResult,
    /// Pages through the HTTP gateway, every one verified.
    pub gateway: WrkResult,
    /// The same with the boundary's query cache off: every page a query at the replica.
    pub gateway_uncached: WrkResult,
}

impl BoundaryReport {
    fn median(&self, f: impl Fn(&(WrkResult, WrkResult)) -> f64) -> f64 {
        let mut v: Vec<f64> = self.rounds.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }
    /// Median over rounds of boundary throughput / nginx throughput.
    pub fn throughput_ratio(&self) -> f64 {
        self.median(|(b, n)| b.per_sec / n.per_sec)
    }
    /// Median over rounds of boundary p99 / nginx p99.
    pub fn p99_ratio(&self) -> f64 {
        self.median(|(b, n)| b.p99_ms / n.p99_ms)
    }
}

/// Run `rounds` alternating rounds of `secs` seconds each, `connections` clients.
pub fn boundary_benchmark(
    work: &Path,
    rounds: usize,
    secs: u64,
    connections: usize,
) -> Result<BoundaryReport, BenchError> {
    std::fs::create_dir_all(work).map_err(crate::io("creating", work))?;
    let (replica, _) = replica::local::open(&work.join("replica"), Default::default())
        .map_err(|e| err("opening the replica")(e.to_string()))?;
    let replica = Arc::new(replica);
    let signer = crate::replica::signer()?;
    let canister = crate::replica::install_counter(&replica, &signer)?;
    let assets = crate::replica::install(
        &replica,
        &signer,
        1,
        example_canisters::ASSETS_WASM.to_vec(),
    )?;
    use candid::Encode;
    let page = Encode!(
        &"/index.html",
        &"text/html; charset=utf-8",
        &serde_bytes::ByteBuf::from(vec![b'x'; 4096])
    )
    .map_err(|e| err("encoding the page")(e.to_string()))?;
    crate::replica::call(&replica, &signer, &assets, &assets, "put", page)?;
    let limits = http_guard::Limits {
        max_connections_per_client: 1024,
        ..Default::default()
    };
    let (node, _) = http_guard::spawn(
        "127.0.0.1:0".parse().expect("an address"),
        replica::http::router(replica.clone()),
        limits.clone(),
    )
    .map_err(|e| err("serving the replica")(e.to_string()))?;

    // The boundary, routes from a registry naming this one node (the registry's own
    // syncing is measured by the registry benchmark); a second one without its cache.
    let registry = boundary::local::single_node_registry(
        &replica.config().root_key_der,
        &format!("http://{node}"),
        replica::local::LOCAL_RANGE,
    );
    let (cert, key) = self_signed(work)?;
    let tls = boundary::tls::load(&cert, &key)
        .map_err(|e| err("loading the certificate")(e.to_string()))?;
    let serve = |name: &str, cache_ttl: Duration| -> Result<std::net::SocketAddr, BenchError> {
        let mut config = boundary::Config::new(
            vec![],
            "",
            work.join(name),
            "127.0.0.1:0".parse().expect("an address"),
        );
        // One load generator is one client address: lift the per-client limit.
        config.rates.per_client_per_sec = 10_000_000;
        config.rates.per_client_burst = 10_000_000;
        config.rates.per_subnet_per_sec = 10_000_000;
        config.rates.per_subnet_burst = 10_000_000;
        config.cache_ttl = cache_ttl;
        let b = boundary::Boundary::new(config);
        b.set_table(boundary::routes::Table::from_registry(&registry, 1, None));
        let gateway = boundary::gateway::Gateway::new(b, vec![])
            .map_err(|e| err("the gateway's agent")(e.to_string()))?;
        let (addr, _) = http_guard::spawn_with(
            "127.0.0.1:0".parse().expect("an address"),
            boundary::gateway::app(gateway),
            limits.clone(),
            Some(tls.clone()),
        )
        .map_err(|e| err("serving the boundary")(e.to_string()))?;
        Ok(addr)
    };
    let ours = serve("boundary", Duration::from_secs(1))?;
    let uncached = serve("boundary-uncached", Duration::ZERO)?;
    let nginx = Nginx::start(work, node, &cert, &key)?;

    let signed = signer
        .query(&canister, "get")
        .with_arg(b"DIDL\0\0".to_vec())
        .sign()
        .map_err(|e| err("signing a query")(e.to_string()))?
        .signed_query;
    let anonymous = crate::replica::anonymous_signer()?
        .query(&canister, "get")
        .with_arg(b"DIDL\0\0".to_vec())
        .sign()
        .map_err(|e| err("signing an anonymous query")(e.to_string()))?
        .signed_query;
    let path = format!("/api/v2/canister/{canister}/query");
    let script = |name: &str, body: &[u8]| -> Result<std::path::PathBuf, BenchError> {
        let body_file = work.join(format!("{name}.cbor"));
        std::fs::write(&body_file, body).map_err(crate::io("writing", &body_file))?;
        let lua = work.join(format!("{name}.lua"));
        let mut f = std::fs::File::create(&lua).map_err(crate::io("writing", &lua))?;
        writeln!(
            f,
            "local f = io.open(\"{}\", \"rb\")\nwrk.method = \"POST\"\nwrk.body = f:read(\"*all\")\nf:close()\nwrk.headers[\"Content-Type\"] = \"application/cbor\"",
            body_file.display()
        )
        .map_err(crate::io("writing", &lua))?;
        Ok(lua)
    };
    let signed_lua = script("signed", &signed)?;
    let anonymous_lua = script("anonymous", &anonymous)?;
    let run =
        |base: String, lua: &Path| wrk(&format!("{base}{path}"), Some(lua), secs, connections);
    let direct = run(format!("http://{node}"), &signed_lua)?;
    let mut all = Vec::new();
    for _ in 0..rounds.max(1) {
        let ours = run(format!("https://{ours}"), &signed_lua)?;
        let theirs = run(format!("https://127.0.0.1:{}", nginx.port), &signed_lua)?;
        all.push((ours, theirs));
    }
    let cached = run(format!("https://{ours}"), &anonymous_lua)?;
    let host_lua = work.join("host.lua");
    std::fs::write(
        &host_lua,
        format!("wrk.headers[\"Host\"] = \"{assets}.localhost\"\n"),
    )
    .map_err(crate::io("writing", &host_lua))?;
    let page = |addr| {
        wrk(
            &format!("https://{addr}/index.html"),
            Some(&host_lua),
            secs,
            connections,
        )
    };
    let gateway = page(ours)?;
    let gateway_uncached = page(uncached)?;
    drop(nginx);
    Ok(BoundaryReport {
        rounds: all,
        direct,
        cached,
        gateway,
        gateway_uncached,
    })
}

/// One certificate for both proxies (files, as nginx needs them).
fn self_signed(work: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), BenchError> {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| err("making the certificate")(e.to_string()))?;
    let (cert, key) = (work.join("tls-cert.pem"), work.join("tls-key.pem"));
    std::fs::write(&cert, pair.cert.pem()).map_err(crate::io("writing", &cert))?;
    std::fs::write(&key, pair.key_pair.serialize_pem()).map_err(crate::io("writing", &key))?;
    Ok((cert, key))
}

/// nginx as a reverse proxy to `upstream`, keeping connections to it open, as a
/// production proxy in front of a replica would be configured.
struct Nginx {
    child: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start(
        work: &Path,
        upstream: std::net::SocketAddr,
        cert: &Path,
        key: &Path,
    ) -> Result<Nginx, BenchError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(crate::io("finding a free port", work))?
            .port();
        let conf = work.join("nginx-proxy.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes 2; pid {pid}; error_log {log};\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; client_body_temp_path {tmp};\n\
                   upstream replica {{ server {upstream}; keepalive 128; }}\n\
                   server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert};\n\
                     ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;\n\
                     location / {{ proxy_pass http://replica; proxy_http_version 1.1;\n\
                       proxy_set_header Connection \"\"; proxy_buffering on; }} }} }}\n",
                pid = work.join("nginx-proxy.pid").display(),
                log = work.join("nginx-proxy.err").display(),
                tmp = work.display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .map_err(crate::io("writing", &conf))?;
        let child = host_tools::tools::NGINX
            .command()?
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(work)
            .spawn()
            .map_err(crate::io(
                "starting nginx (Debian package nginx-light; scripts/setup.sh installs it)",
                &conf,
            ))?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Nginx { child, port });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(err("starting nginx")(format!(
            "not listening on {port}; see {}",
            work.join("nginx-proxy.err").display()
        )))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGQUIT,
        );
        let _ = self.child.wait();
    }
}
