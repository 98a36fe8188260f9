//! `icos replica`: a replica on its own, as a developer runs one locally.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum ReplicaCmd {
    /// Serve the IC's HTTP interface from one node that is its own subnet. Keys are made on
    /// first start and kept in DIR with the checkpoints; agents fetch the root key from
    /// /api/v2/status. Every executed call is checkpointed before it is answered.
    Run {
        /// The replica's keys and state.
        #[arg(long, default_value = "out/replica")]
        dir: PathBuf,
        /// Where to serve (port 0: any free port, printed on start).
        #[arg(long, default_value = "127.0.0.1:4943")]
        listen: SocketAddr,
    },
}

pub fn replica(cmd: ReplicaCmd) -> Result<i32> {
    match cmd {
        ReplicaCmd::Run { dir, listen } => run(dir, listen),
    }
}

fn run(dir: PathBuf, listen: SocketAddr) -> Result<i32> {
    let (r, recovery) = replica::local::open(&dir, Default::default())
        .with_context(|| format!("opening the replica in {}", dir.display()))?;
    println!("replica: {recovery}");
    let c = r.config();
    let (first, last) = replica::local::LOCAL_RANGE;
    println!(
        "replica: subnet {}, node {}, canister ids {} to {}",
        c.subnet_id,
        c.node_id,
        certified_state::canister_id(first),
        certified_state::canister_id(last)
    );
    let (addr, _) = http_guard::spawn(
        listen,
        replica::http::router(Arc::new(r)),
        http_guard::Limits::default(),
    )
    .with_context(|| format!("listening on {listen}"))?;
    println!(
        "replica: listening on http://{addr} (agents: fetch the root key from /api/v2/status)"
    );
    loop {
        std::thread::park();
    }
}
