//! The commands that run on a node: `upgrade` (the A/B engine), `hostos` (the HostOS agent),
//! `orchestrator` (the GuestOS orchestrator), `data` (the GuestOS data partition), `replica` (the IC's interface), `boundary` (the API boundary), `channel` (the guest side of the host
//! channel) and `setupos` (check and inject an operator's config, install a node). The node binary (`icos-node`, installed as `/usr/bin/icos` in every image) has
//! only these; the developer tool `icos` flattens the same [`NodeCmd`] into its own commands,
//! so both speak the same words.
//!
//! ```
//! use clap::Parser;
//! #[derive(Parser)]
//! struct Cli {
//!     #[command(subcommand)]
//!     cmd: node_cli::NodeCmd,
//! }
//! let cli = Cli::try_parse_from(["icos", "upgrade", "status", "--json"]).unwrap();
//! assert!(matches!(cli.cmd, node_cli::NodeCmd::Upgrade { .. }));
//! assert!(Cli::try_parse_from(["icos", "testnet", "up"]).is_err());
//! ```

mod boundary;
mod channel;
mod data;
mod hostos;
mod orchestrator;
mod replica;
mod report;
mod setupos;
mod upgrade;

pub use boundary::BoundaryCmd;
pub use channel::ChannelCmd;
pub use data::DataCmd;
pub use hostos::HostosCmd;
pub use orchestrator::OrchestratorCmd;
pub use replica::ReplicaCmd;
pub use report::report;
pub use setupos::SetuposCmd;
pub use upgrade::UpgradeCmd;

use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum NodeCmd {
    /// The A/B upgrade engine (on the running system, or on a disk image with --disk).
    Upgrade {
        #[command(subcommand)]
        cmd: UpgradeCmd,
        /// Act on this disk image instead of the running system.
        #[arg(long, global = true)]
        disk: Option<PathBuf>,
        /// Seconds a change (install, activate, confirm, rollback) waits for another
        /// operation to finish, e.g. the boot-time confirmation of a trial; 0 fails at once.
        #[arg(long, global = true, default_value_t = 600)]
        wait: u64,
    },
    /// The HostOS agent: run it, ask it for status.
    Hostos {
        #[command(subcommand)]
        cmd: HostosCmd,
    },
    /// The GuestOS orchestrator.
    Orchestrator {
        #[command(subcommand)]
        cmd: OrchestratorCmd,
    },
    /// SetupOS: check and inject the operator's config, install a node.
    Setupos {
        #[command(subcommand)]
        cmd: SetuposCmd,
    },
    /// The GuestOS data partition (LUKS2, key on the config partition).
    Data {
        #[command(subcommand)]
        cmd: DataCmd,
    },
    /// The IC's HTTP interface: a local replica (`run`), or a subnet's on a GuestOS (`serve`).
    Replica {
        #[command(subcommand)]
        cmd: ReplicaCmd,
    },
    /// The API boundary: one address for the whole network, routed by the verified registry.
    Boundary {
        #[command(subcommand)]
        cmd: BoundaryCmd,
    },
    /// Guest side of the host-guest channel.
    Channel {
        #[command(subcommand)]
        cmd: ChannelCmd,
        /// The channel device (virtio-serial port).
        #[arg(
            long,
            global = true,
            default_value = "/dev/virtio-ports/org.icos.host.0"
        )]
        device: PathBuf,
    },
}

/// Run a node command; the exit code on success.
pub fn run(cmd: NodeCmd) -> anyhow::Result<i32> {
    match cmd {
        NodeCmd::Upgrade { cmd, disk, wait } => {
            upgrade::upgrade(cmd, disk, std::time::Duration::from_secs(wait))
        }
        NodeCmd::Hostos { cmd } => hostos::hostos(cmd),
        NodeCmd::Orchestrator { cmd } => orchestrator::orchestrator(cmd),
        NodeCmd::Channel { cmd, device } => channel::channel(cmd, device),
        NodeCmd::Setupos { cmd } => setupos::setupos(cmd),
        NodeCmd::Data { cmd } => data::data(cmd),
        NodeCmd::Replica { cmd } => replica::replica(cmd),
        NodeCmd::Boundary { cmd } => boundary::boundary(cmd),
    }
}

/// Log to stderr at `filter` (e.g. `info`, `icos=debug`). rustls warns about every odd
/// handshake a client sends (an IP address as SNI, say): what anyone on the internet
/// controls must not fill the journal, so it logs errors only unless `filter` names it.
pub fn init_logging(filter: &str) {
    let filter = if filter.contains("rustls") {
        filter.to_string()
    } else {
        format!("{filter},rustls=error")
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

/// End the process with `result`: its exit code, or the error said once on stderr and 1.
pub fn exit(result: anyhow::Result<i32>) -> ! {
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", report(&e));
            std::process::exit(1);
        }
    }
}
