//! `icos`: the command-line entry point. Thin: parses arguments and calls the libraries.

mod assets;
mod canister;
mod gov;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "icos",
    version,
    about = "icos: build, run and verify Internet Computer node OS images"
)]
struct Cli {
    /// Log level for diagnostics (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "warn", env = "ICOS_LOG")]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// What runs on a node (the same commands as the node binary).
    #[command(flatten)]
    Node(node_cli::NodeCmd),
    /// Build a disk image (and update package) from its recipe.
    Build(BuildArgs),
    /// Run images in QEMU.
    Vm {
        #[command(subcommand)]
        cmd: VmCmd,
    },
    /// Governance: keys, proposals, votes.
    Gov {
        #[command(subcommand)]
        cmd: gov::GovCmd,
    },
    /// The registry: create, serve, publish, query, verify, register nodes.
    Registry {
        #[command(subcommand)]
        cmd: gov::RegistryCmd,
    },
    /// A whole network on this machine.
    Testnet {
        #[command(subcommand)]
        cmd: TestnetCmd,
        /// The testnet's folder.
        #[arg(long, global = true, default_value = "out/testnet")]
        dir: PathBuf,
    },
    /// A developer's commands against a node or network: create, install, call, query, status.
    Canister(canister::CanisterArgs),
    /// Benchmarks (each runs a baseline in the same run and prints the ratio).
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
    /// Rebuild an image from the inputs in its manifest and compare bit for bit.
    VerifyBuild {
        /// The manifest.json of the build to check.
        manifest: PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Subcommand)]
enum VmCmd {
    /// Boot a disk image (UEFI). Serial console on the terminal unless --serial-log is given.
    Run(VmRunArgs),
}

#[derive(Subcommand)]
enum TestnetCmd {
    /// Registry with local governance keys, images built or reused, one HostOS agent and
    /// GuestOS VM per node; prints where everything is.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value_t = 1)]
        subnets: usize,
        /// More nodes, made API boundary nodes by governance once registered (0: the boundary
        /// runs as a process on this machine instead, one VM fewer).
        #[arg(long, default_value_t = 1)]
        boundary_nodes: usize,
        #[arg(long, default_value = "1.0.0")]
        version: String,
        /// Folder with already built `guestos-<version>` images.
        #[arg(long)]
        images: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        #[arg(long, env = "ICOS_RECIPES")]
        recipes: Option<PathBuf>,
    },
    /// Table: node, subnet, GuestOS/HostOS version, slot, health.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Build a GuestOS version, propose and vote its election and deployment, follow the rollout.
    Upgrade {
        #[arg(long)]
        subnet: String,
        #[arg(long)]
        to: String,
    },
    /// Install one more node as a node provider does: a config folder for this network,
    /// `setupos check-config` and `inject-config` onto a SetupOS stick, SetupOS installing
    /// onto two blank VM disks, then the installed HostOS booted and its status shown.
    InstallNode {
        /// The HostOS and GuestOS versions on the stick (built if missing).
        #[arg(long, default_value = "1.0.0")]
        version: String,
    },
    /// Stop everything the testnet started.
    Down,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Registry: full sync of N versions, incremental sync, server throughput vs nginx.
    Registry {
        #[arg(long, default_value_t = 10_000)]
        versions: u64,
        #[arg(long, default_value = "/var/tmp/icos-bench-registry")]
        work: PathBuf,
    },
    /// Replica: queries and calls per second with p50/p99 at 1 and 64 clients against a bare
    /// HTTP + CBOR floor; one message through the runtime against a direct wasmtime call.
    Replica {
        /// Requests of each kind at each concurrency.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
    },
    /// Subnets: update calls per second with p50/p99 through replicated subnets of 1, 3
    /// and 4 nodes against the single-node replica, at 1 and 16 clients.
    Subnet {
        /// Calls at each subnet size and concurrency.
        #[arg(long, default_value_t = 500)]
        requests: usize,
    },
    /// Catch-up: a node of a three-node subnet takes up a canister state of MIB it lacks
    /// (its log purged behind the subnet's snapshots) against `cp -r` + `sync` of the same
    /// state folder.
    CatchUp {
        #[arg(long, default_value_t = 1024)]
        mib: u64,
    },
    /// API boundary: signed queries through it against nginx as a reverse proxy to the same
    /// replica (wrk, alternating rounds); the replica alone and cached anonymous queries too.
    Boundary {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 10)]
        secs: u64,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        #[arg(long, default_value = "/var/tmp/icos-bench-boundary")]
        work: PathBuf,
    },
    /// Install throughput of a package (default 1 GiB) against sha256sum + dd.
    Install {
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Work folder (needs about 3 x the package size).
        #[arg(long, default_value = "/var/tmp/icos-bench-install")]
        work: PathBuf,
    },
    /// Rollout: adoption of a deploy proposal until every node confirmed the new GuestOS,
    /// for each testnet size, against one plain reboot of a node VM in the same run.
    Rollout {
        /// Testnet sizes to measure (repeat the flag).
        #[arg(long = "nodes", default_values_t = [2usize, 4])]
        nodes: Vec<usize>,
        #[arg(long, default_value = "1.0.0")]
        from: String,
        #[arg(long, default_value = "1.1.0")]
        to: String,
        /// Folder with (or for) the `guestos-<version>` images.
        #[arg(long, default_value = "out/testnet/images")]
        images: PathBuf,
        #[arg(long, default_value = "/var/tmp/icos-bench-rollout")]
        work: PathBuf,
        #[arg(long, env = "ICOS_RECIPES")]
        recipes: Option<PathBuf>,
    },
    /// SetupOS install time (start to INSTALL COMPLETE) against `zstd -d | dd` of the same
    /// images in the same VM.
    Setupos {
        /// An `icos build setupos` output folder.
        image: PathBuf,
        #[arg(long, default_value = "/var/tmp/icos-bench-setupos")]
        work: PathBuf,
    },
    /// Boot time to the SUCCESS line against the same kernel with a one-line init.
    Boot {
        /// An image output folder (with disk.img and manifest.json).
        image: PathBuf,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

#[derive(clap::Args)]
struct VmRunArgs {
    disk: PathBuf,
    /// Write the serial console to this file instead of the terminal.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Stop after this many seconds (exit code 2).
    #[arg(long)]
    timeout: Option<u64>,
    /// Exit 0 as soon as a console line matches this regular expression, then stop the VM.
    #[arg(long)]
    until: Option<String>,
    /// auto (KVM if it truly works, else TCG), kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: String,
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Discard all writes to the disk when the VM stops.
    #[arg(long)]
    snapshot: bool,
    /// Host end of the host-guest virtio-serial channel (a Unix socket).
    #[arg(long)]
    channel: Option<PathBuf>,
    /// Forward a host TCP port to the guest: HOST:GUEST. Repeatable.
    #[arg(long = "forward", value_name = "HOST:GUEST")]
    forwards: Vec<String>,
    /// Exit instead of rebooting when the guest reboots.
    #[arg(long)]
    no_reboot: bool,
}

#[derive(clap::Args)]
struct CommonArgs {
    /// Folder with one recipe folder per image (default: ./images, else the source tree's).
    #[arg(long, env = "ICOS_RECIPES")]
    recipes: Option<PathBuf>,
    /// Cache for Debian bases (default: $ICOS_CACHE or ~/.cache/icos).
    #[arg(long, env = "ICOS_CACHE")]
    cache: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// guestos, hostos or setupos.
    image: String,
    #[arg(long)]
    version: String,
    #[arg(long)]
    out: PathBuf,
    /// Override a partition size: LABEL=SIZE (e.g. data=4G). Repeatable.
    #[arg(long = "size", value_name = "LABEL=SIZE")]
    sizes: Vec<String>,
    /// SetupOS: output folder of the HostOS build to install.
    #[arg(long)]
    hostos: Option<PathBuf>,
    /// SetupOS: output folder of the GuestOS build to install.
    #[arg(long)]
    guestos: Option<PathBuf>,
    /// SetupOS: its release date, YYYY-MM-DD (default today, UTC); SetupOS warns when a
    /// release is older than 42 days.
    #[arg(long)]
    released: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

fn recipes_root(arg: &Option<PathBuf>) -> PathBuf {
    if let Some(p) = arg {
        return p.clone();
    }
    let local = Path::new("images");
    if local.join("guestos/recipe.toml").is_file() {
        return local.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images")
}

fn parse_sizes(list: &[String]) -> Result<BTreeMap<String, u64>> {
    let mut m = BTreeMap::new();
    for s in list {
        let (label, size) = s
            .split_once('=')
            .with_context(|| format!("--size {s}: expected LABEL=SIZE, e.g. data=4G"))?;
        let bytes = disk_layout::parse_size(size).with_context(|| format!("--size {s}"))?;
        m.insert(label.to_string(), bytes);
    }
    Ok(m)
}

fn main() {
    let cli = Cli::parse();
    node_cli::init_logging(&cli.log);
    node_cli::exit(run(cli));
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Build(a) => {
            let root = recipes_root(&a.common.recipes);
            let dir = image_recipe::recipe_dir(root.parent().unwrap_or(Path::new(".")), &a.image)
                .map(|_| root.join(&a.image))?;
            let mut req = image_builder::BuildRequest::new(dir, &a.version, &a.out);
            if let Some(c) = a.common.cache {
                req.cache = c;
            }
            req.size_overrides = parse_sizes(&a.sizes)?;
            req.hostos = a.hostos;
            req.guestos = a.guestos;
            req.released = a.released;
            let m = image_builder::build(&req)
                .with_context(|| format!("building {} {}", a.image, a.version))?;
            println!("{}", a.out.join("disk.img").display());
            if m.outputs.contains_key("update.tar") {
                println!("{}", a.out.join("update.tar").display());
            }
            Ok(0)
        }
        Cmd::Vm { cmd: VmCmd::Run(a) } => vm_run(a),
        Cmd::Node(cmd) => node_cli::run(cmd),
        Cmd::Gov { cmd } => gov::gov(cmd),
        Cmd::Testnet { cmd, dir } => testnet_cmd(cmd, dir),
        Cmd::Registry { cmd } => gov::registry(cmd),
        Cmd::Canister(a) => canister::canister(a),
        Cmd::Bench {
            cmd:
                BenchCmd::Boundary {
                    rounds,
                    secs,
                    connections,
                    work,
                },
        } => {
            let _ = std::fs::remove_dir_all(&work);
            let r = icos_bench::boundary::boundary_benchmark(&work, rounds, secs, connections)?;
            let row = |what: &str, w: &icos_bench::wrk::WrkResult| {
                println!(
                    "{what:<28} {:>8.0}/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
                    w.per_sec, w.p50_ms, w.p99_ms
                )
            };
            row("replica alone", &r.direct);
            for (i, (ours, nginx)) in r.rounds.iter().enumerate() {
                row(&format!("round {}: icos boundary", i + 1), ours);
                row(&format!("round {}: nginx proxy", i + 1), nginx);
            }
            row("icos boundary, cached", &r.cached);
            row("gateway pages, verified", &r.gateway);
            row("same, no query cache", &r.gateway_uncached);
            println!(
                "boundary / nginx (median of {} rounds, {connections} connections): throughput {:.3}, p99 {:.3}",
                r.rounds.len(),
                r.throughput_ratio(),
                r.p99_ratio()
            );
            let _ = std::fs::remove_dir_all(&work);
            Ok(0)
        }
        Cmd::Bench {
            cmd: BenchCmd::Replica { requests },
        } => {
            let r = icos_bench::replica::replica_benchmark(requests)?;
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            for row in &r.rows {
                println!(
                    "{} x{:>2} clients: icos {:>7.0}/s p50 {:.2} ms p99 {:.2} ms | floor {:>7.0}/s p50 {:.2} ms p99 {:.2} ms | ratio {:.3}",
                    row.kind,
                    row.clients,
                    row.ours.per_sec,
                    ms(row.ours.p50),
                    ms(row.ours.p99),
                    row.floor.per_sec,
                    ms(row.floor.p50),
                    ms(row.floor.p99),
                    row.ours.per_sec / row.floor.per_sec
                );
            }
            println!(
                "one query message: through the runtime {:.1} us, direct wasmtime call {:.2} us, ratio {:.1}",
                r.message_ns / 1000.0,
                r.direct_ns / 1000.0,
                r.message_ns / r.direct_ns
            );
            Ok(0)
        }
        Cmd::Bench {
            cmd: BenchCmd::Subnet { requests },
        } => {
            let r = icos_bench::subnet::subnet_benchmark(requests)?;
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            for row in &r.rows {
                let what = match row.nodes {
                    0 => "single-node replica (no log)".to_string(),
                    n => format!("subnet of {n} node(s)"),
                };
                println!(
                    "{what:<30} x{:>2} clients: {:>7.1} calls/s p50 {:.2} ms p99 {:.2} ms | ratio to the single-node replica {:.2}",
                    row.clients,
                    row.measured.per_sec,
                    ms(row.measured.p50),
                    ms(row.measured.p99),
                    row.measured.per_sec / r.baseline(row.clients).unwrap_or(f64::NAN)
                );
            }
            Ok(0)
        }
        Cmd::Bench {
            cmd: BenchCmd::CatchUp { mib },
        } => {
            let r = icos_bench::catchup::catch_up_benchmark(mib)?;
            println!(
                "catch-up of {} MiB ({} pieces, {} snapshot(s)) by state transfer: {:.1} s; cp -r + sync of the same folder: {:.1} s; ratio {:.1}",
                r.mib,
                r.pieces,
                r.snapshots,
                r.catch_up.as_secs_f64(),
                r.copy.as_secs_f64(),
                r.catch_up.as_secs_f64() / r.copy.as_secs_f64()
            );
            Ok(0)
        }
        Cmd::Bench {
            cmd: BenchCmd::Registry { versions, work },
        } => {
            let _ = std::fs::remove_dir_all(&work);
            let r = icos_bench::registry::registry_benchmark(&work, versions)?;
            println!(
                "registry {} versions: full sync + verify median {:.3} s; incremental sync of one version median {:.2} ms; \
                 changes-since-N under 64 clients: icos {:.0} req/s, nginx static {:.0} req/s, ratio {:.2}",
                r.versions,
                r.full_sync_median(),
                r.incremental_median_ms(),
                r.icos_rps,
                r.nginx_rps,
                r.icos_rps / r.nginx_rps
            );
            let _ = std::fs::remove_dir_all(&work);
            Ok(0)
        }
        Cmd::Bench {
            cmd:
                BenchCmd::Rollout {
                    nodes,
                    from,
                    to,
                    images,
                    work,
                    recipes,
                },
        } => {
            let p = icos_bench::rollout::Params {
                icos: std::env::current_exe()?,
                work: work.clone(),
                images,
                recipes: recipes_root(&recipes),
                from,
                to,
            };
            for n in nodes {
                let r = icos_bench::rollout::rollout_benchmark(&p, n, &testnet::Stderr)?;
                println!(
                    "rollout {} -> {} on {n} nodes: adoption to all confirmed {:.1} s; one plain VM reboot {:.1} s; ratio {:.2}",
                    p.from, p.to, r.rollout_secs, r.reboot_secs, r.ratio()
                );
                for (node, secs) in &r.per_node {
                    println!("  {node}: confirmed {secs:.1} s after adoption");
                }
            }
            let _ = std::fs::remove_dir_all(&work);
            Ok(0)
        }
        Cmd::Bench {
            cmd: BenchCmd::Install { mib, runs, work },
        } => {
            let me = std::env::current_exe()?;
            let r = icos_bench::install::install_benchmark(&me, &work, mib, runs)?;
            println!(
                "install {} MiB package: icos {:.0} MiB/s (peak RSS {} MiB), sha256sum+dd {:.0} MiB/s, ratio {:.2} (runs: {runs})",
                r.package_bytes >> 20,
                r.icos_mib_s(),
                r.icos_peak_rss_kib / 1024,
                r.baseline_mib_s(),
                r.ratio()
            );
            let _ = std::fs::remove_dir_all(&work);
            Ok(0)
        }
        Cmd::Bench {
            cmd: BenchCmd::Setupos { image, work },
        } => {
            let _ = std::fs::remove_dir_all(&work);
            let me = std::env::current_exe()?;
            let r = icos_bench::setupos::setupos_benchmark(&me, &image, &work)?;
            println!(
                "setupos install {:.1} s (start to INSTALL COMPLETE), zstd -d | dd of the same images {:.1} s, ratio {:.2}",
                r.install_secs,
                r.floor_secs,
                r.ratio()
            );
            let _ = std::fs::remove_dir_all(&work);
            Ok(0)
        }
        Cmd::Bench {
            cmd: BenchCmd::Boot { image, runs },
        } => {
            let m = image_builder::BuildManifest::load(&image.join("manifest.json"))?;
            let banner = m.image.banner();
            let r = icos_bench::boot_benchmark(&image.join("disk.img"), banner, &m.cmdline, runs)?;
            println!(
                "boot {} {}: image median {:.2} s, one-line-init baseline median {:.2} s, ratio {:.2} (runs: {})",
                m.image,
                m.version,
                r.image_median(),
                r.baseline_median(),
                r.ratio(),
                runs
            );
            Ok(0)
        }
        Cmd::VerifyBuild { manifest, common } => {
            let root = recipes_root(&common.recipes);
            let cache = common
                .cache
                .unwrap_or_else(image_builder::default_cache_dir);
            let report = image_builder::verify_build(&manifest, &root, &cache)
                .with_context(|| format!("verifying {}", manifest.display()))?;
            for c in &report.compared {
                let bad = report.differences.iter().any(|d| &d.part == c);
                println!("{} {c}", if bad { "DIFFERS  " } else { "identical" });
            }
            for d in &report.differences {
                println!(
                    "DIFFERS: {}: expected {} got {}",
                    d.part, d.expected, d.actual
                );
            }
            if report.identical() {
                println!(
                    "{} {}: rebuild is bit-for-bit identical",
                    report.image, report.version
                );
                Ok(0)
            } else {
                bail!(
                    "{} {}: rebuild differs in {} part(s), first: {}",
                    report.image,
                    report.version,
                    report.differences.len(),
                    report.differences[0].part
                )
            }
        }
    }
}

fn vm_run(a: VmRunArgs) -> Result<i32> {
    use std::io::IsTerminal;
    use std::time::Duration;
    let accel = vm_runner::Accel::parse(&a.accel)
        .with_context(|| format!("--accel {}: expected auto, kvm or tcg", a.accel))?;
    let until = a
        .until
        .as_deref()
        .map(regex::Regex::new)
        .transpose()
        .context("--until is not a valid regular expression")?;
    let scratch = std::env::temp_dir().join(format!("icos-vm-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let on_terminal = a.serial_log.is_none();
    let log = a
        .serial_log
        .clone()
        .unwrap_or_else(|| scratch.join("serial.log"));
    let mut cfg = vm_runner::VmConfig::new(&a.disk, &log);
    cfg.accel = accel;
    cfg.memory_mib = a.memory;
    cfg.cpus = a.cpus;
    cfg.snapshot = a.snapshot;
    cfg.no_reboot = a.no_reboot;
    cfg.channel_socket = a.channel.clone();
    cfg.console_on_terminal = on_terminal;
    cfg.cache_dir = Some(image_builder::default_cache_dir());
    cfg.efi_vars = Some(scratch.join("efivars.fd"));
    cfg.qmp_socket = Some(scratch.join("qmp.sock"));
    let mut fwd = Vec::new();
    for f in &a.forwards {
        let (h, g) = f
            .split_once(':')
            .with_context(|| format!("--forward {f}: expected HOST:GUEST"))?;
        fwd.push((
            h.parse().with_context(|| format!("--forward {f}"))?,
            g.parse().with_context(|| format!("--forward {f}"))?,
        ));
    }
    cfg.network = Some(fwd);
    let mut vm =
        vm_runner::Vm::start(&cfg).with_context(|| format!("starting {}", a.disk.display()))?;
    if !on_terminal || !std::io::stderr().is_terminal() {
        eprintln!(
            "icos vm: {} started ({:?}), serial console: {}",
            a.disk.display(),
            vm.accel(),
            log.display()
        );
    }
    let timeout = a
        .timeout
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(u64::MAX / 4));
    let patterns: Vec<regex::Regex> = until.into_iter().collect();
    let outcome = vm.wait_for(&patterns, timeout)?;
    let code = match outcome {
        vm_runner::WaitOutcome::Matched { line, elapsed, .. } => {
            eprintln!(
                "icos vm: matched after {:.1} s: {line}",
                elapsed.as_secs_f64()
            );
            0
        }
        vm_runner::WaitOutcome::Exited { status, elapsed } => {
            if patterns.is_empty() {
                0
            } else {
                eprintln!(
                    "icos vm: QEMU exited ({status}) after {:.1} s before a line matched; last console lines:\n{}\nQEMU's own messages:\n{}",
                    elapsed.as_secs_f64(),
                    vm.serial_tail(30),
                    vm.qemu_tail(10)
                );
                3
            }
        }
        vm_runner::WaitOutcome::TimedOut { elapsed } => {
            eprintln!(
                "icos vm: timed out after {:.1} s; last console lines:\n{}",
                elapsed.as_secs_f64(),
                vm.serial_tail(30)
            );
            2
        }
    };
    vm.kill();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(code)
}

fn testnet_cmd(cmd: TestnetCmd, dir: PathBuf) -> Result<i32> {
    let report = testnet::Stderr;
    match cmd {
        TestnetCmd::Up {
            nodes,
            subnets,
            boundary_nodes,
            version,
            images,
            vcpus,
            memory,
            recipes,
        } => {
            let t = std::time::Instant::now();
            let spec = testnet::Spec {
                dir: dir.clone(),
                nodes,
                subnets,
                boundary_nodes,
                version,
                icos: std::env::current_exe()?,
                images,
                recipes: recipes_root(&recipes),
                vcpus,
                memory_mib: memory,
            };
            let state = match testnet::up(&spec, &report) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("testnet: {e}; stopping what was started");
                    let _ = testnet::down(&dir, &report);
                    return Err(e.into());
                }
            };
            println!(
                "testnet up in {:.0} s ({} node(s) in {} subnet(s), {} API boundary node(s)) in {}",
                t.elapsed().as_secs_f64(),
                nodes,
                subnets,
                boundary_nodes,
                dir.display()
            );
            println!(
                "  registry:       {}  (genesis {})",
                state.registry_url(),
                state.genesis_hash
            );
            println!("  package mirror: http://127.0.0.1:{}/", state.package_port);
            println!(
                "  keys:           {}/keys (neurons 1-3, operator op1)",
                dir.display()
            );
            for n in &state.nodes {
                println!(
                    "  {}: {} agent http://127.0.0.1:{}/v1/status, orchestrator http://127.0.0.1:{}/status, serial {}/state/guest-serial.log",
                    n.name,
                    n.node_id.as_deref().unwrap_or("-"),
                    n.agent_port,
                    n.status_port,
                    n.dir.display()
                );
            }
            if let Some(url) = state.boundary_url() {
                let port = url.rsplit(':').next().unwrap_or_default();
                println!(
                    "  API boundary:   {url}  (agents; pages at http://<canister-id>.localhost:{port}/)"
                );
            }
            println!("next: icos testnet status | icos testnet upgrade --subnet subnet-1 --to 1.1.0 | icos testnet down");
            Ok(0)
        }
        TestnetCmd::Status { json } => {
            let state = testnet::State::load(&dir)?;
            let rows = testnet::status(&state);
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                testnet::print_status(&rows);
                testnet::print_boundary(&state);
            }
            Ok(0)
        }
        TestnetCmd::Upgrade { subnet, to } => {
            let state = testnet::State::load(&dir)?;
            let t = std::time::Instant::now();
            let results = testnet::upgrade(&state, &subnet, &to, &report)?;
            for r in &results {
                println!("{}: {} ({:.0} s)", r.node, r.outcome, r.seconds);
            }
            println!(
                "rollout of {to} to {subnet} finished in {:.0} s",
                t.elapsed().as_secs_f64()
            );
            Ok(
                if results
                    .iter()
                    .all(|r| r.outcome == testnet::RolloutOutcome::Confirmed)
                {
                    0
                } else {
                    1
                },
            )
        }
        TestnetCmd::InstallNode { version } => {
            let state = testnet::State::load(&dir)?;
            let done = testnet::install_node(&state, &version, &report)?;
            let n = &done.status.node;
            let none = || "-".to_string();
            println!(
                "SetupOS installed the node in {:.0} s (its own count); the installed HostOS {} booted:",
                done.install_secs, done.status.hostos_version
            );
            println!(
                "  deployment {} ({} network, gateway {})",
                n.deployment,
                n.network,
                n.ipv6_gateway.clone().unwrap_or_else(none)
            );
            println!("  management MAC {}", n.management_mac);
            println!(
                "  HostOS  {} {}",
                n.hostos_mac,
                n.hostos_ipv6.clone().unwrap_or_else(none)
            );
            println!(
                "  GuestOS {} {}",
                n.guestos_mac,
                n.guestos_ipv6.clone().unwrap_or_else(none)
            );
            println!(
                "  config problems: {}",
                if done.status.config_problems.is_empty() {
                    "none".to_string()
                } else {
                    done.status.config_problems.join("; ")
                }
            );
            println!("  stick, disks and consoles in {}", done.dir.display());
            Ok(0)
        }
        TestnetCmd::Down => {
            testnet::down(&dir, &report)?;
            Ok(0)
        }
    }
}
