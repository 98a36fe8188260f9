//! `icos boundary serve`: the API boundary and HTTP gateway, with routes from the verified
//! registry.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BoundaryCmd {
    /// Serve the IC's HTTP interface for the whole network: each request goes to a healthy
    /// node of the subnet that holds its canister, as the registry (verified back to the
    /// genesis) says; `<canister-id>.<domain>` serves the canister's pages, verified.
    /// Prints `BOUNDARY serving on http(s)://ADDR` once listening.
    Serve {
        /// Registry servers or mirrors, tried in order (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        registry: Vec<String>,
        /// The genesis hash the registry must chain back to.
        #[arg(long)]
        genesis_hash: String,
        /// Where to serve (port 0: any free port, printed on start).
        #[arg(long, default_value = "[::]:443")]
        listen: SocketAddr,
        /// Where the verified registry is cached.
        #[arg(long, default_value = "/var/lib/icos/boundary")]
        state_dir: PathBuf,
        /// Requests per second one client (an IPv4 address or an IPv6 /64) may send.
        #[arg(long, default_value_t = 200)]
        client_rate: u32,
        /// Requests per second all clients together may send to one subnet.
        #[arg(long, default_value_t = 2000)]
        subnet_rate: u32,
        /// The HTTP gateway's domains (comma-separated): `<canister-id>.<domain>` is that
        /// canister's page, `<canister-id>.raw.<domain>` the same unverified. `localhost`
        /// always is one.
        #[arg(long, value_delimiter = ',')]
        domain: Vec<String>,
        /// Serve HTTPS with this certificate chain (PEM, leaf first).
        #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve HTTPS from a local CA made once in the state directory (`tls-ca.pem`, the
        /// file clients trust), which certifies localhost, the domains and every name under
        /// them as clients ask: for local networks.
        #[arg(long)]
        tls_self_signed: bool,
    },
    /// Serve as an API boundary node, as the GuestOS orchestrator starts it once governance
    /// made the node one: every setting from the spec it wrote (registry, domains, TLS).
    Run {
        #[arg(long, default_value = "/var/lib/icos/data/boundary/spec.json")]
        spec: PathBuf,
    },
}

pub fn boundary(cmd: BoundaryCmd) -> Result<i32> {
    match cmd {
        BoundaryCmd::Serve {
            registry,
            genesis_hash,
            listen,
            state_dir,
            client_rate,
            subnet_rate,
            domain,
            tls_cert,
            tls_key,
            tls_self_signed,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(boundary::TlsSetup::Files { cert, key }),
                _ if tls_self_signed => {
                    let mut names = vec!["localhost".to_string()];
                    names.extend(domain.iter().cloned());
                    Some(boundary::TlsSetup::LocalCa {
                        dir: state_dir.clone(),
                        names,
                    })
                }
                _ => None,
            };
            let mut config = boundary::Config::new(registry, &genesis_hash, state_dir, listen);
            config.domains = domain;
            config.tls = tls;
            config.rates = boundary::limits::RateConfig {
                per_client_per_sec: client_rate,
                per_client_burst: client_rate.saturating_mul(2),
                per_subnet_per_sec: subnet_rate,
                per_subnet_burst: subnet_rate.saturating_mul(2),
            };
            boundary::run(config).context("running the API boundary")?;
            Ok(0)
        }
        BoundaryCmd::Run { spec } => {
            use node_config::boundary::{BoundarySpec, Spec};
            let spec = BoundarySpec::read(&spec)?;
            let mut config = boundary::Config::new(
                spec.registry_urls,
                &spec.genesis_hash,
                spec.cache_dir,
                spec.listen,
            );
            config.domains = spec.domains;
            config.tls = spec.tls.map(|t| boundary::TlsSetup::Files {
                cert: t.cert,
                key: t.key,
            });
            config.host_loopback = spec.host_loopback;
            boundary::run(config).context("running the API boundary")?;
            Ok(0)
        }
    }
}
