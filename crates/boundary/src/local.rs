//! The gateway in front of one local replica (`icos replica run --gateway`), as `dfx start`
//! serves pages next to its replica: the same [`gateway`](crate::gateway) and API routing as
//! a network's boundary, with routes from a one-node registry made here instead of a verified
//! one (the replica is its own subnet and its own root of trust).

use crate::routes::Table;
use crate::{gateway, Boundary, BoundaryError, Config};
use registry_model::{CanisterRange, Node, Registry, Subnet};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A registry naming one node at `endpoint` that holds `range`, under `root_key_der`.
pub fn single_node_registry(root_key_der: &[u8], endpoint: &str, range: (u64, u64)) -> Registry {
    let mut reg = Registry {
        root_key: Some(hex::encode(root_key_der)),
        ..Default::default()
    };
    reg.nodes.insert(
        "node".into(),
        Node {
            id: "node".into(),
            operator: "local".into(),
            public_key: String::new(),
            ipv6: String::new(),
            http_endpoint: endpoint.into(),
            hostos_version: None,
            peer_endpoint: None,
        },
    );
    reg.subnets.insert(
        "local".into(),
        Subnet {
            id: "local".into(),
            nodes: vec!["node".into()],
            canister_ranges: vec![CanisterRange {
                start: range.0,
                end: range.1,
            }],
            guestos_version: "local".into(),
            key: None,
            founders: Vec::new(),
        },
    );
    reg
}

/// Serve the gateway for the replica at `endpoint` on `listen`, on a thread of its own
/// (probes included); returns the bound address. Runs until the process ends.
pub fn spawn(
    listen: SocketAddr,
    endpoint: &str,
    root_key_der: &[u8],
    range: (u64, u64),
    state_dir: PathBuf,
) -> Result<SocketAddr, BoundaryError> {
    let mut config = Config::new(Vec::new(), "", state_dir, listen);
    // One developer, one address: only the generous defaults of a network are too tight.
    config.rates.per_client_per_sec = 10_000;
    config.rates.per_client_burst = 20_000;
    let b = Boundary::new(config.clone());
    b.set_table(Table::from_registry(
        &single_node_registry(root_key_der, endpoint, range),
        1,
        None,
    ));
    let app = gateway::app(gateway::Gateway::new(b.clone(), Vec::new())?);
    let (addr, _) = http_guard::spawn(listen, app, config.http.clone()).map_err(|source| {
        BoundaryError::Io {
            what: format!("listening on {listen}"),
            source,
        }
    })?;
    std::thread::Builder::new()
        .name("gateway upkeep".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                tracing::error!("the gateway's probes have no runtime; failed nodes stay out");
                return;
            };
            rt.block_on(b.maintain());
        })
        .map_err(|source| BoundaryError::Io {
            what: "starting the upkeep thread".into(),
            source,
        })?;
    Ok(addr)
}
