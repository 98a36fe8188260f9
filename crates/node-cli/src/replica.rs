//! `icos replica`: a replica on its own, as a developer runs one locally (`run`), or the one
//! the orchestrator starts on a GuestOS assigned to a subnet (`serve`).

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
        /// Also serve the HTTP gateway here: a canister's pages at
        /// `http://<canister-id>.localhost:PORT/`, verified, and the API.
        #[arg(long)]
        gateway: Option<SocketAddr>,
    },
    /// Serve the replica the orchestrator describes in SPEC (a GuestOS in a subnet; the
    /// `icos-replica` unit runs this): the subnet's key and delegation from the verified
    /// registry, the state on the data partition.
    Serve {
        #[arg(long, default_value = "/var/lib/icos/data/replica/spec.json")]
        spec: PathBuf,
    },
}

pub fn replica(cmd: ReplicaCmd) -> Result<i32> {
    match cmd {
        ReplicaCmd::Run {
            dir,
            listen,
            gateway,
        } => run(dir, listen, gateway),
        ReplicaCmd::Serve { spec } => serve(&spec),
    }
}

fn serve(path: &std::path::Path) -> Result<i32> {
    use node_config::spec::Spec;
    let spec = node_config::replica::ReplicaSpec::read(path)?;
    let (r, recovery) = replica::node::open(&spec, Default::default())
        .with_context(|| format!("starting the replica of {}", spec.subnet))?;
    println!("replica: {recovery}");
    println!(
        "replica: {} (subnet id {}, {} node(s)), node {}",
        spec.subnet,
        r.config().subnet_id,
        spec.subnet_size,
        r.config().node_id
    );
    if spec.raft.is_some() {
        return serve_replicated(&spec, r);
    }
    let addr = serve_on(r, spec.listen)?;
    println!(
        "replica: listening on http://{addr} (agents: fetch the root key from /api/v2/status)"
    );
    park()
}

/// A replica of a replicated subnet: until its state is found diverged from the subnet's
/// (then set aside, and the process ends with an error for systemd to start it again), or
/// until it is told to stop (it drains first, then ends well).
fn serve_replicated(spec: &node_config::replica::ReplicaSpec, r: replica::Replica) -> Result<i32> {
    let why = replica::subnet::run(spec, r, Default::default(), |at| {
        println!(
            "replica: peer routes on http://{} (the subnet's log, signed by members)",
            at.peers
        );
        println!(
            "replica: listening on http://{} (agents: fetch the root key from /api/v2/status)",
            at.api
        );
    });
    match why {
        replica::subnet::SubnetError::Drained => {
            println!("replica: {why}");
            Ok(0)
        }
        why => Err(why).with_context(|| format!("the replica of {} stopped serving", spec.subnet)),
    }
}

fn run(dir: PathBuf, listen: SocketAddr, gateway: Option<SocketAddr>) -> Result<i32> {
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
    let root_key = c.root_key_der.clone();
    let addr = serve_on(r, listen)?;
    if let Some(gateway) = gateway {
        let at = boundary::local::spawn(
            gateway,
            &format!("http://{addr}"),
            &root_key,
            replica::local::LOCAL_RANGE,
            dir.join("gateway"),
        )
        .context("starting the gateway")?;
        println!(
            "replica: gateway on http://localhost:{port}: a canister's pages at \
             http://<canister-id>.localhost:{port}/ (verified)",
            port = at.port()
        );
    }
    println!(
        "replica: listening on http://{addr} (agents: fetch the root key from /api/v2/status)"
    );
    park()
}

fn park() -> ! {
    loop {
        std::thread::park();
    }
}

/// Serve `r` on `listen` (until the process ends); the bound address.
fn serve_on(r: replica::Replica, listen: SocketAddr) -> Result<SocketAddr> {
    let (addr, _) = http_guard::spawn(
        listen,
        replica::http::router(Arc::new(r)),
        http_guard::Limits::default(),
    )
    .with_context(|| format!("listening on {listen}"))?;
    Ok(addr)
}
