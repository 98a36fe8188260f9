//! Registry benchmarks: a fresh client syncing and verifying N versions from a live server,
//! an incremental sync of one version, and the server's throughput for "changes since N"
//! under 64 concurrent clients next to nginx serving the same changes as published static
//! files (what a mirror serves), measured with wrk in the same run.

use crate::BenchError;
use registry_model::*;
use registry_server::localnet::LocalGovernance;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn err(what: &'static str) -> impl Fn(String) -> BenchError {
    move |m| BenchError::Io {
        what,
        path: "(registry bench)".into(),
        source: std::io::Error::other(m),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RegistryBench {
    pub versions: u64,
    pub full_sync_secs: Vec<f64>,
    pub incremental_ms: Vec<f64>,
    pub icos_rps: f64,
    pub nginx_rps: f64,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

impl RegistryBench {
    pub fn full_sync_median(&self) -> f64 {
        median(&self.full_sync_secs)
    }
    pub fn incremental_median_ms(&self) -> f64 {
        median(&self.incremental_ms)
    }
}

/// Submit a proposal from neuron 1 and vote yes with neuron 2 (70%: adopted).
fn adopt(
    reg: &registry_server::Registry,
    gov: &LocalGovernance,
    title: String,
    action: Action,
) -> Result<(), BenchError> {
    let e = err("adopting a proposal");
    let body = reg
        .new_proposal(1, &title, action)
        .map_err(|x| e(x.to_string()))?;
    let p = reg
        .submit_proposal(SignedProposal::sign(body, &gov.neurons[0]))
        .map_err(|x| e(x.to_string()))?;
    reg.vote(
        p.id,
        SignedVote::sign(&p.proposal.body.hash(), 2, Vote::Yes, &gov.neurons[1]),
    )
    .map_err(|x| e(x.to_string()))?;
    Ok(())
}

/// Build a registry with about `versions` versions: half adopted proposals (two signatures
/// each: the proposer's and one more vote), half node registrations.
fn populate(
    reg: &registry_server::Registry,
    gov: &LocalGovernance,
    versions: u64,
) -> Result<(), BenchError> {
    let e = err("populating the registry");
    let (op, opk) = &gov.operators[0];
    let mut i = 0u64;
    while reg.head().0 < versions {
        i += 1;
        if i.is_multiple_of(2) {
            let action = Action::ElectGuestos(Elected {
                version: format!("{i}.0.0"),
                sha256: "ab".repeat(32).parse().unwrap(),
                size: None,
                urls: vec!["http://mirror/x".into()],
            });
            adopt(reg, gov, format!("elect {i}"), action)?;
        } else {
            let r = reg
                .new_registration(
                    op,
                    keys::public_hex(&keys::generate()),
                    format!("fd00::{:x}", i % 65535),
                    "http://[fd00::1]:8080".into(),
                )
                .map_err(|x| e(x.to_string()))?;
            reg.register(SignedRegistration::sign(r, opk))
                .map_err(|x| e(x.to_string()))?;
        }
    }
    Ok(())
}

/// Requests per second of GETs of `url` from 64 connections.
fn wrk(url: &str, secs: u64) -> Result<f64, BenchError> {
    crate::wrk::wrk(url, None, secs, 64).map(|w| w.per_sec)
}

/// Run the registry benchmarks in `work` (removed afterwards by the caller).
pub fn registry_benchmark(work: &Path, versions: u64) -> Result<RegistryBench, BenchError> {
    let e = err("registry benchmark");
    let gov = LocalGovernance::create(
        &work.join("keys"),
        "bench",
        &[40, 30, 20, 10],
        &[("op1", u32::MAX)],
        LocalGovernance::default_settings,
    )
    .map_err(|x| e(x.to_string()))?;
    let data = work.join("data");
    let g = registry_server::Registry::init(&data, &gov.genesis).map_err(|x| e(x.to_string()))?;
    let reg = Arc::new(
        registry_server::Registry::open(&data, &gov.dir.join("online.key"))
            .map_err(|x| e(x.to_string()))?,
    );
    let t = Instant::now();
    populate(&reg, &gov, versions)?;
    eprintln!(
        "populated {} versions in {:.1} s",
        reg.head().0,
        t.elapsed().as_secs_f64()
    );
    let addr = registry_server::http::spawn(reg.clone(), "127.0.0.1:0".parse().expect("addr"))
        .map_err(|x| e(x.to_string()))?;
    let base = format!("http://{addr}");

    let mut full = Vec::new();
    for i in 0..3 {
        let cfg = registry_client::ClientConfig::new(
            vec![base.clone()],
            &g.hash(),
            work.join(format!("client-{i}")),
        );
        let mut c = registry_client::Client::open(cfg).map_err(|x| e(x.to_string()))?;
        let t = Instant::now();
        c.sync().map_err(|x| e(x.to_string()))?;
        full.push(t.elapsed().as_secs_f64());
        eprintln!(
            "full sync {}: {} versions verified in {:.3} s",
            i + 1,
            c.version(),
            full[i]
        );
    }

    let cfg =
        registry_client::ClientConfig::new(vec![base.clone()], &g.hash(), work.join("client-0"));
    let mut c = registry_client::Client::open(cfg).map_err(|x| e(x.to_string()))?;
    let mut incr = Vec::new();
    for i in 0..20u64 {
        let action = Action::ElectHostos(Elected {
            version: format!("h{i}"),
            sha256: "cd".repeat(32).parse().unwrap(),
            size: None,
            urls: vec!["http://m/h".into()],
        });
        adopt(&reg, &gov, "incremental".into(), action)?;
        let t = Instant::now();
        let r = c.sync().map_err(|x| e(x.to_string()))?;
        incr.push(t.elapsed().as_secs_f64() * 1000.0);
        if r.to_version != r.from_version + 1 {
            return Err(e(format!(
                "incremental sync went {} -> {}",
                r.from_version, r.to_version
            )));
        }
    }

    // Throughput: our server's "changes since N" (64 changes per answer) against nginx
    // serving the published segment holding the same 64 changes.
    let head = reg.head().0;
    let since = (head / 64 - 1) * 64;
    let www = work.join("www");
    reg.export(&www).map_err(|x| e(x.to_string()))?;
    let nginx_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|x| e(x.to_string()))?
        .port();
    let conf = work.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 2; pid {pid}; error_log {log};\nevents {{ worker_connections 1024; }}\nhttp {{ access_log off; sendfile on; server {{ listen 127.0.0.1:{nginx_port}; root {root}; }} }}\n",
            pid = work.join("nginx.pid").display(),
            log = work.join("nginx.err").display(),
            root = www.display()
        ),
    )
    .map_err(|x| e(x.to_string()))?;
    let mut nginx = host_tools::tools::NGINX
        .command()?
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|x| BenchError::Io {
            what: "starting nginx (Debian package nginx-light; scripts/setup.sh installs it)",
            path: conf.clone(),
            source: x,
        })?;
    std::thread::sleep(Duration::from_millis(500));
    let ours = wrk(&format!("{base}/v1/changes?since={since}&limit=64"), 10);
    let theirs = wrk(
        &format!(
            "http://127.0.0.1:{nginx_port}/v1/segments/{}.json",
            since / 64
        ),
        10,
    );
    // SIGTERM: the master stops its workers too (SIGKILL would orphan them).
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(nginx.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = nginx.wait();
    Ok(RegistryBench {
        versions: head,
        full_sync_secs: full,
        incremental_ms: incr,
        icos_rps: ours?,
        nginx_rps: theirs?,
    })
}
