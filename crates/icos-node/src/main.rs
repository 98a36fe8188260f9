//! `icos` on a node: the commands of `node-cli`, nothing to build, test or serve a network.

use clap::Parser;

/// icos on a node: upgrade engine, HostOS agent, GuestOS orchestrator, host channel.
#[derive(Parser)]
#[command(name = "icos", version)]
struct Cli {
    /// Log filter (e.g. info, debug, icos=trace).
    #[arg(long, global = true, default_value = "warn", env = "ICOS_LOG")]
    log: String,
    #[command(subcommand)]
    cmd: node_cli::NodeCmd,
}

fn main() {
    let cli = Cli::parse();
    node_cli::init_logging(&cli.log);
    node_cli::exit(node_cli::run(cli.cmd));
}
