//! Subnets under load (issue 14): update calls per second with p50 and p99 latency through
//! replicated subnets of 1, 3 and 4 nodes, next to the single-node replica that executes
//! calls directly, in the same run. Each node is what the GuestOS runs (`replica::subnet`
//! from a spec and a membership file): its own state folder and raft log, its peer routes
//! and its interface on loopback HTTP, its own runtime. Calls are signed beforehand
//! (`ic-agent`, one nonce each) and spread over the subnet's nodes, one kept-alive
//! connection per client, as agents behind a boundary would send them.

use crate::replica::{load_spread, Measured};
use crate::BenchError;
use node_config::replica::{
    member_id, Membership, RaftPeer, RaftSpec, ReplicaSpec, MEMBERSHIP_FILE,
};
use node_config::spec::Spec;
use std::path::Path;
use std::time::{Duration, Instant};

/// A replica-side failure of `what`.
pub(crate) fn err(what: &str) -> impl FnOnce(String) -> BenchError + '_ {
    move |message| BenchError::Replica {
        what: what.to_string(),
        message,
    }
}

/// One subnet size at one concurrency.
#[derive(Debug, Clone)]
pub struct Row {
    /// Nodes in the subnet (0: the single-node replica without a log, the baseline).
    pub nodes: usize,
    pub clients: usize,
    pub measured: Measured,
}

/// Every row, the baseline's first for each concurrency.
#[derive(Debug, Clone)]
pub struct SubnetReport {
    pub rows: Vec<Row>,
}

impl SubnetReport {
    /// The baseline's rate at `clients`.
    pub fn baseline(&self, clients: usize) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.nodes == 0 && r.clients == clients)
            .map(|r| r.measured.per_sec)
    }
}

/// Keys and delegation every node of a bench subnet shares.
pub(crate) struct Keys {
    pub(crate) root: certified_state::BlsKey,
    pub(crate) subnet: certified_state::BlsKey,
    pub(crate) delegation: String,
}

pub(crate) fn keys() -> Result<Keys, BenchError> {
    let root = certified_state::BlsKey::generate();
    let subnet = certified_state::BlsKey::generate();
    let id = ic_principal::Principal::self_authenticating(subnet.public_der());
    let d = certified_state::delegate(
        &root,
        id,
        &subnet.public_der(),
        &[(
            certified_state::canister_id(0),
            certified_state::canister_id(0xffff),
        )],
        replica::system_time_nanos(),
    )
    .map_err(|e| err("a delegation")(e.to_string()))?;
    let delegation =
        hex::encode(serde_cbor::to_vec(&d).map_err(|e| err("a delegation")(e.to_string()))?);
    Ok(Keys {
        root,
        subnet,
        delegation,
    })
}

fn free_port() -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| err("a free port")(e.to_string()))
}

/// Start `n` nodes of one subnet under `dir` (n = 0: one replica without a log); the URLs
/// of their interfaces once each answers and, for a subnet, a leader is elected.
fn start(dir: &Path, k: &Keys, n: usize) -> Result<Vec<String>, BenchError> {
    let count = n.max(1);
    let node_keys: Vec<[u8; 32]> = (0..count).map(|i| [40 + i as u8; 32]).collect();
    let ports: Vec<(u16, u16)> = (0..count)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_, BenchError>>()?;
    let names: Vec<String> = (0..count).map(|i| format!("bench-node-{i}")).collect();
    let membership = Membership {
        members: names.iter().map(|m| member_id(m)).collect(),
        peers: names
            .iter()
            .zip(&node_keys)
            .zip(&ports)
            .map(|((m, key), (_, peer))| RaftPeer {
                id: member_id(m),
                url: format!("http://127.0.0.1:{peer}"),
                public_key: hex::encode(
                    ed25519_dalek::SigningKey::from_bytes(key)
                        .verifying_key()
                        .to_bytes(),
                ),
            })
            .collect(),
        time: 1,
    };
    let mut urls = Vec::new();
    for i in 0..count {
        let folder = dir.join(format!("node{i}"));
        std::fs::create_dir_all(&folder).map_err(|e| err("a node folder")(e.to_string()))?;
        let raft = (n > 0).then(|| RaftSpec {
            id: member_id(&names[i]),
            listen: format!("127.0.0.1:{}", ports[i].1)
                .parse()
                .expect("an address"),
            log: folder.join("raft.redb"),
            membership: folder.join(MEMBERSHIP_FILE),
            bootstrap: i == 0,
        });
        if let Some(r) = &raft {
            membership
                .write(&r.membership)
                .map_err(|e| err("the membership")(e.to_string()))?;
        }
        let spec = ReplicaSpec {
            subnet: "bench".into(),
            subnet_secret_key: hex::encode(k.subnet.to_bytes()),
            delegation: k.delegation.clone(),
            root_key: hex::encode(k.root.public_der()),
            node_key: hex::encode(node_keys[i]),
            canister_range: (0, 0xffff),
            subnet_size: count,
            subnet_nodes: membership
                .peers
                .iter()
                .map(|p| p.public_key.clone())
                .collect(),
            guestos_version: String::new(),
            listen: format!("127.0.0.1:{}", ports[i].0)
                .parse()
                .expect("an address"),
            state_dir: folder.join("state"),
            raft,
        };
        std::fs::create_dir_all(&spec.state_dir)
            .map_err(|e| err("a state folder")(e.to_string()))?;
        let (r, _) = replica::node::open(&spec, Default::default())
            .map_err(|e| err("opening a replica")(e.to_string()))?;
        if spec.raft.is_none() {
            http_guard::spawn(
                spec.listen,
                replica::http::router(std::sync::Arc::new(r)),
                limits(),
            )
            .map_err(|e| err("serving the replica")(e.to_string()))?;
        } else {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let why = replica::subnet::run(&spec, r, Default::default(), |_| {
                    let _ = tx.send(());
                });
                tracing::error!("a bench node stopped: {why}");
            });
            rx.recv_timeout(Duration::from_secs(30))
                .map_err(|e| err("a node starting")(e.to_string()))?;
        }
        urls.push(format!("http://127.0.0.1:{}", ports[i].0));
    }
    Ok(urls)
}

fn limits() -> http_guard::Limits {
    http_guard::Limits {
        max_connections_per_client: 256,
        ..Default::default()
    }
}

/// POST a signed call to `url` until it is answered 200 (a subnet electing its first
/// leader answers 503 for a moment).
pub(crate) fn call_until_done(
    url: &str,
    effective: &ic_principal::Principal,
    body: &[u8],
) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = format!("{url}/api/v3/canister/{effective}/call");
    loop {
        match ureq::post(&target)
            .set("content-type", "application/cbor")
            .send_bytes(body)
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("{target}: {e}; again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(err("a call")(e.to_string())),
        }
    }
}

/// Create and install the counter through `url`.
fn install_counter(
    url: &str,
    signer: &ic_agent::Agent,
) -> Result<ic_principal::Principal, BenchError> {
    let wasm = wat::parse_str(example_canisters::COUNTER_WAT)
        .map_err(|e| err("the counter")(e.to_string()))?;
    let (id, envelopes) = crate::replica::install_envelopes(signer, 0, wasm)?;
    for (_, body) in envelopes {
        call_until_done(url, &id, &body)?;
    }
    Ok(id)
}

/// Run it all: `requests` update calls per subnet size and concurrency (1 and 16 clients).
pub fn subnet_benchmark(requests: usize) -> Result<SubnetReport, BenchError> {
    let tmp = tempfile::tempdir().map_err(|e| err("a temporary directory")(e.to_string()))?;
    let k = keys()?;
    let signer = crate::replica::signer()?;
    let mut rows = Vec::new();
    for n in [0usize, 1, 3, 4] {
        let urls = start(&tmp.path().join(format!("subnet{n}")), &k, n)?;
        let canister = install_counter(&urls[0], &signer)?;
        for clients in [1usize, 16] {
            let bodies = crate::replica::sign_updates(&signer, &canister, requests)?;
            let targets: Vec<String> = urls
                .iter()
                .map(|u| format!("{u}/api/v3/canister/{canister}/call"))
                .collect();
            let measured = load_spread(&targets, &bodies, clients)?;
            rows.push(Row {
                nodes: n,
                clients,
                measured,
            });
        }
    }
    Ok(SubnetReport { rows })
}
