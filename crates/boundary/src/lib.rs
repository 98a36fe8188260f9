//! The API boundary (`icos boundary serve`): the IC's HTTP interface for a whole network at
//! one address, so an agent talks to one URL instead of a list of nodes.
//!
//! - **Routes** ([`routes`]) come only from the verified registry (`registry-client`, pinned
//!   to the genesis hash): canister ranges → subnet → the subnet's nodes and their
//!   endpoints, and the root key that `/api/v2/status` serves. A new registry version
//!   replaces the whole table.
//! - **Health** ([`health`]): every node's `/api/v2/status` each second; a node gets requests
//!   while healthy and not behind its subnet's median certified height; of two random
//!   candidates the faster is chosen.
//! - **Forwarding** ([`proxy`]): queries and `read_state` are retried on another node when
//!   one fails; a call is sent again only when it never left (no connection).
//! - **Protection**: per-client and per-subnet rate limits ([`limits`], 429 with
//!   `Retry-After`), body size and time limits, connection limits and timeouts from
//!   `http-guard`, a one-second cache of identical anonymous queries ([`cache`]).
//! - **Errors** name their cause in `x-ic-error-cause` and in the body, as the IC's boundary
//!   does: `error: no_healthy_nodes\ndetails: no node of subnet subnet-1 is healthy`.
//! - **The HTTP gateway** ([`gateway`]): `<canister-id>.<domain>` is the canister's page,
//!   fetched through this boundary's own API in process and served only once response
//!   verification accepts it; otherwise an error page naming the cause.
//! - **TLS** ([`tls`]): rustls, from certificate files or a local network's own CA.
//!
//! ```
//! use boundary::routes::Table;
//! use registry_model::{CanisterRange, Registry, Subnet};
//! let mut reg = Registry::default();
//! reg.subnets.insert("s1".into(), Subnet {
//!     id: "s1".into(), nodes: vec![], guestos_version: "1".into(), key: None, founders: vec![],
//!     canister_ranges: vec![CanisterRange { start: 0, end: 1_048_575 }],
//! });
//! let table = Table::from_registry(&reg, 1, None);
//! let counter = ic_principal::Principal::from_text("rwlgt-iiaaa-aaaaa-aaaaa-cai").unwrap();
//! assert_eq!(table.by_canister(&counter).unwrap().id, "s1");
//! ```

pub mod cache;
pub mod gateway;
pub mod health;
pub mod limits;
pub mod local;
pub mod proxy;
pub mod routes;
pub mod tls;

use bytes::Bytes;
use health::{Health, ReplicaStatus};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use node_status::boundary::{BoundaryStatus, RoutedNode, RoutedSubnet};
use routes::Table;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Everything the boundary is told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Registry servers or mirrors (untrusted: everything is verified to the genesis).
    pub registry_urls: Vec<String>,
    pub genesis_hash: String,
    /// Where the verified registry is cached between starts.
    pub cache_dir: PathBuf,
    pub listen: SocketAddr,
    pub rates: limits::RateConfig,
    /// Request bodies (the IC accepts 3.5 MiB of ingress, plus the envelope).
    pub max_body_bytes: usize,
    /// How long a client may take to send its body.
    pub body_timeout: Duration,
    /// Answers from nodes.
    pub max_answer_bytes: usize,
    /// How long a node may take to answer a query or `read_state`.
    pub read_timeout: Duration,
    /// How long a node may take to answer a call (v3/v4 calls wait for the result).
    pub call_timeout: Duration,
    /// Nodes tried for one idempotent request.
    pub max_attempts: usize,
    pub probe_interval: Duration,
    pub sync_interval: Duration,
    /// Certified heights a node may trail its subnet's median by.
    pub max_height_lag: u64,
    pub cache_ttl: Duration,
    pub http: http_guard::Limits,
    /// The HTTP gateway's domains: `<canister-id>.<domain>` is a canister's page
    /// (`localhost` always is one).
    pub domains: Vec<String>,
    /// Serve HTTPS; plain HTTP when `None`.
    pub tls: Option<TlsSetup>,
    /// Development networks: reach endpoints on a loopback address at this address instead
    /// (see [`routes::Table::from_registry`]).
    pub host_loopback: Option<std::net::IpAddr>,
}

/// Where the boundary's TLS certificates come from.
#[derive(Debug, Clone)]
pub enum TlsSetup {
    /// A certificate chain and its key (PEM), as a node's config disk holds them.
    Files { cert: PathBuf, key: PathBuf },
    /// A local CA kept in `dir` (`tls-ca.pem`), minting a leaf for each name under `names`.
    LocalCa { dir: PathBuf, names: Vec<String> },
}

impl Config {
    pub fn new(
        registry_urls: Vec<String>,
        genesis_hash: &str,
        cache_dir: PathBuf,
        listen: SocketAddr,
    ) -> Config {
        Config {
            registry_urls,
            genesis_hash: genesis_hash.to_string(),
            cache_dir,
            listen,
            rates: Default::default(),
            max_body_bytes: 4 << 20,
            body_timeout: Duration::from_secs(30),
            max_answer_bytes: 16 << 20,
            read_timeout: Duration::from_secs(15),
            call_timeout: Duration::from_secs(60),
            max_attempts: 3,
            probe_interval: Duration::from_secs(1),
            sync_interval: Duration::from_secs(5),
            max_height_lag: 50,
            cache_ttl: Duration::from_secs(1),
            http: Default::default(),
            domains: Vec::new(),
            tls: None,
            host_loopback: None,
        }
    }
}

/// Why the boundary could not start.
#[derive(Debug, thiserror::Error)]
pub enum BoundaryError {
    #[error("registry: {0}")]
    Registry(#[from] registry_client::ClientError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("the HTTP gateway's agent: {0}")]
    Agent(#[from] ic_agent::AgentError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The boundary's shared state: the routes, node health, limits, cache and the HTTP client
/// to the nodes.
pub struct Boundary {
    config: Config,
    table: RwLock<Arc<Table>>,
    health: Health,
    limits: limits::RateLimits,
    cache: cache::QueryCache,
    client: Client<HttpConnector, Full<Bytes>>,
    probe_client: Client<HttpConnector, Empty<Bytes>>,
}

impl Boundary {
    pub fn new(config: Config) -> Arc<Boundary> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Arc::new(Boundary {
            health: Health::new(config.max_height_lag),
            limits: limits::RateLimits::new(config.rates),
            cache: cache::QueryCache::new(config.cache_ttl, 10_000, 64 << 20),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector.clone()),
            probe_client: Client::builder(TokioExecutor::new()).build(connector),
            table: RwLock::new(Arc::new(Table::default())),
            config,
        })
    }

    /// The routes in force.
    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replace the routes (a new verified registry version).
    pub fn set_table(&self, t: Table) {
        self.health.retain(&t);
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
    }

    /// The routes and every node's health, for `/boundary/status`.
    pub fn status(&self) -> BoundaryStatus {
        let t = self.table();
        BoundaryStatus {
            registry_version: t.version,
            clients_tracked: self.limits.tracked_clients() as u64,
            clients_forgotten: self.limits.forgotten_clients(),
            subnets: t
                .subnets
                .iter()
                .map(|s| {
                    let candidates = self.health.candidates(s);
                    RoutedSubnet {
                        id: s.id.clone(),
                        principal: s.principal.map(|p| p.to_text()),
                        nodes: s
                            .nodes
                            .iter()
                            .map(|n| RoutedNode {
                                id: n.id.clone(),
                                endpoint: n.endpoint.clone(),
                                health: self.health.get(&n.id),
                                candidate: candidates.iter().any(|c| c.node.id == n.id),
                            })
                            .collect(),
                    }
                })
                .collect(),
        }
    }

    /// Keep health and limits current until the process ends: every node probed each
    /// `probe_interval`, quiet clients' buckets dropped every ten rounds.
    pub async fn maintain(self: Arc<Self>) {
        let mut round = 0u64;
        loop {
            self.probe_all().await;
            round += 1;
            if round.is_multiple_of(10) {
                self.limits.forget_quiet();
            }
            tokio::time::sleep(self.config.probe_interval).await;
        }
    }

    /// Probe every routed node once, all at the same time.
    pub async fn probe_all(self: &Arc<Self>) {
        let table = self.table();
        let mut set = tokio::task::JoinSet::new();
        for (_, node) in table.nodes() {
            let b = self.clone();
            let node = node.clone();
            set.spawn(async move {
                match b.probe(&node.endpoint).await {
                    Ok((status, rtt)) => b.health.record_status(&node.id, status, rtt),
                    Err(why) => b.health.record_failure(&node.id, why),
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    async fn probe(&self, endpoint: &str) -> Result<(ReplicaStatus, Duration), String> {
        let request = hyper::Request::get(format!("{endpoint}/api/v2/status"))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let exchange = async {
            let resp = self
                .probe_client
                .request(request)
                .await
                .map_err(|e| format!("status: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("status: HTTP {}", resp.status()));
            }
            let body = http_body_util::Limited::new(resp.into_body(), 64 << 10)
                .collect()
                .await
                .map_err(|e| format!("status: {e}"))?
                .to_bytes();
            health::parse_status(&body).map_err(|e| e.to_string())
        };
        let status = tokio::time::timeout(Duration::from_secs(2), exchange)
            .await
            .map_err(|_| "status: no answer within 2 s".to_string())??;
        Ok((status, started.elapsed()))
    }
}

/// Follow the registry on this thread: every verified version becomes the routing table.
fn follow(b: Arc<Boundary>, mut client: registry_client::Client, interval: Duration) {
    let mut last_error = String::new();
    loop {
        match client.sync() {
            Ok(_) => {
                last_error.clear();
                if client.version() != b.table().version {
                    let t = Table::from_registry(
                        client.registry(),
                        client.version(),
                        b.config.host_loopback,
                    );
                    tracing::info!(
                        "routes from registry version {}: {} subnet(s), {} node(s)",
                        t.version,
                        t.subnets.len(),
                        t.nodes().count()
                    );
                    b.set_table(t);
                }
            }
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(
                        "registry sync failed (routes stay at version {}): {e}",
                        b.table().version
                    );
                    last_error = e;
                }
            }
        }
        std::thread::sleep(interval);
    }
}

/// Run the boundary until the process ends: routes from the cached registry at once (if
/// any), then from every sync; probes every `probe_interval`; serves on `config.listen`.
pub fn run(config: Config) -> Result<(), BoundaryError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |source| BoundaryError::Io { what, source }
    };
    std::fs::create_dir_all(&config.cache_dir)
        .map_err(io(&format!("creating {}", config.cache_dir.display())))?;
    let client = registry_client::Client::open(registry_client::ClientConfig::new(
        config.registry_urls.clone(),
        &config.genesis_hash,
        config.cache_dir.clone(),
    ))?;
    let tls = match &config.tls {
        Some(TlsSetup::Files { cert, key }) => Some(tls::load(cert, key)?),
        Some(TlsSetup::LocalCa { dir, names }) => {
            let (config, ca) = tls::local_ca(dir, names)?;
            tracing::info!(
                "TLS from the local CA {} (clients trust that file)",
                ca.display()
            );
            Some(config)
        }
        None => None,
    };
    let b = Boundary::new(config.clone());
    if client.version() > 0 {
        b.set_table(Table::from_registry(
            client.registry(),
            client.version(),
            config.host_loopback,
        ));
    }
    let follower = b.clone();
    std::thread::Builder::new()
        .name("registry".into())
        .spawn(move || follow(follower, client, config.sync_interval))
        .map_err(io("starting the registry thread"))?;
    http_guard::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io("starting the runtime"))?;
    runtime.block_on(async move {
        tokio::spawn(b.clone().maintain());
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(io(&format!("listening on {}", config.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(io("reading the listening address"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        // The line tests and operators wait for.
        println!("BOUNDARY serving on {scheme}://{addr}");
        let app = gateway::app(gateway::Gateway::new(b, config.domains.clone())?);
        let stats = Arc::new(http_guard::Stats::default());
        http_guard::serve_with(listener, app, config.http.clone(), stats, tls)
            .await
            .map_err(io("serving"))
    })
}
