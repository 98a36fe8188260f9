//! `icos gov ...` and `icos registry ...`: argument parsing and printing around the
//! registry-model, registry-server and registry-client libraries.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use registry_client::api::Api;
use registry_model::subnet_key::{self, SubnetKey};
use registry_model::{
    keys, Action, CanisterRange, Elected, FirewallRule, FirewallScope, Genesis, Registration,
    SignedRegistration, SignedVote, Vote,
};
use std::path::PathBuf;

const DEFAULT_REGISTRY: &str = "http://127.0.0.1:8180";

#[derive(Subcommand)]
pub enum GovCmd {
    /// Create an Ed25519 key (PKCS#8 PEM, mode 0600) and print its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Submit a proposal (signed with a neuron key; the proposer votes yes by signing).
    Propose {
        #[command(subcommand)]
        action: ProposeCmd,
        #[arg(long, global = true)]
        key: Option<PathBuf>,
        #[arg(long, global = true, default_value = "")]
        title: String,
        #[arg(long, global = true, env = "ICOS_REGISTRY", default_value = DEFAULT_REGISTRY)]
        registry: String,
    },
    /// Vote on a proposal.
    Vote {
        id: u64,
        /// yes or no
        vote: String,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "ICOS_REGISTRY", default_value = DEFAULT_REGISTRY)]
        registry: String,
    },
    /// Table of proposals: id, kind, status, yes/no power, deadline.
    Proposals {
        #[arg(long, env = "ICOS_REGISTRY", default_value = DEFAULT_REGISTRY)]
        registry: String,
        #[arg(long)]
        json: bool,
    },
    /// One proposal with its action and votes.
    Show {
        id: u64,
        #[arg(long, env = "ICOS_REGISTRY", default_value = DEFAULT_REGISTRY)]
        registry: String,
    },
}

#[derive(clap::Args)]
pub struct ElectArgs {
    #[arg(long)]
    version: String,
    /// SHA-256 of the update package (64 hex digits).
    #[arg(long)]
    sha256: update_package::Sha256Hex,
    /// Download URL (repeatable).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    #[arg(long)]
    size: Option<u64>,
}

impl From<ElectArgs> for Elected {
    fn from(a: ElectArgs) -> Elected {
        Elected {
            version: a.version,
            sha256: a.sha256,
            size: a.size,
            urls: a.urls,
        }
    }
}

#[derive(Subcommand)]
pub enum ProposeCmd {
    ElectGuestos(ElectArgs),
    ElectHostos(ElectArgs),
    RetireGuestos {
        #[arg(long)]
        version: String,
    },
    RetireHostos {
        #[arg(long)]
        version: String,
    },
    /// Deploy a GuestOS version to a subnet, or with --unassigned to unassigned nodes.
    DeployGuestos {
        #[arg(long)]
        version: String,
        #[arg(long, conflicts_with = "unassigned")]
        subnet: Option<String>,
        #[arg(long)]
        unassigned: bool,
    },
    DeployHostos {
        #[arg(long)]
        version: String,
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    AddOperator {
        #[arg(long)]
        id: String,
        #[arg(long)]
        public_key: String,
        #[arg(long)]
        allowance: u32,
    },
    RemoveOperator {
        #[arg(long)]
        id: String,
    },
    CreateSubnet {
        #[arg(long)]
        id: String,
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// Canister index range START-END (repeatable).
        #[arg(long = "canister-range")]
        ranges: Vec<String>,
        #[arg(long)]
        guestos: String,
        /// The network's root key (`root.bls` of the genesis maker): makes the subnet's key,
        /// delegates it, and seals it to each node. Required when the genesis has a root key.
        #[arg(long)]
        root_key: Option<PathBuf>,
        /// Keep the subnet's secret key here (mode 0600): adding nodes later needs it.
        #[arg(long)]
        subnet_key_out: Option<PathBuf>,
    },
    AddNodes {
        #[arg(long)]
        subnet: String,
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
        /// The subnet's secret key (from `create-subnet --subnet-key-out`), sealed to each
        /// new node. Required when the subnet has a key.
        #[arg(long)]
        subnet_key: Option<PathBuf>,
    },
    RemoveNodes {
        #[arg(long)]
        subnet: String,
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    /// Replace the firewall rules of a scope (global, subnet:ID or node:ID) with a JSON list.
    SetFirewall {
        #[arg(long)]
        scope: String,
        #[arg(long)]
        rules: PathBuf,
    },
    AddApiBoundaryNodes {
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    RemoveApiBoundaryNodes {
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    /// Any action as JSON (e.g. change-governance).
    Action {
        #[arg(long)]
        json: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum RegistryCmd {
    /// Create a registry from a genesis file.
    Init {
        #[arg(long)]
        genesis: PathBuf,
        #[arg(long)]
        data: PathBuf,
    },
    /// Serve the registry over HTTP (and optionally publish it as static files).
    Serve {
        #[arg(long)]
        data: PathBuf,
        /// Where to listen (repeat for more addresses, e.g. `127.0.0.1:8180` and `[::1]:8180`).
        #[arg(long, default_value = "127.0.0.1:8180")]
        listen: Vec<std::net::SocketAddr>,
        /// The online key (signs freshness statements): a key file, or a folder of `*.key`
        /// files from which the key the registry names is taken (read again after
        /// governance rotates it, so the next key can be added without a restart); default
        /// DATA/online.key.
        #[arg(long)]
        online_key: Option<PathBuf>,
        /// Also keep a static copy for mirrors in this folder, refreshed periodically.
        #[arg(long)]
        publish: Option<PathBuf>,
    },
    /// Write the static files a mirror serves.
    Export {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        online_key: Option<PathBuf>,
    },
    /// Show registry records (the server's answer; `verify` checks it).
    Get {
        /// subnets, nodes, versions, operators, firewall, neurons or all
        what: String,
        #[arg(long)]
        at: Option<u64>,
        #[arg(long)]
        json: bool,
        #[arg(long, env = "ICOS_REGISTRY", default_value = DEFAULT_REGISTRY)]
        registry: String,
    },
    /// Sync from a server or mirror and check every change back to the genesis.
    Verify {
        #[arg(long)]
        from: String,
        /// The genesis hash to pin (without it the genesis is only printed, not checked).
        #[arg(long)]
        genesis_hash: Option<String>,
    },
    /// Register a node (signed by its operator's key; no vote needed within the allowance).
    Register {
        #[arg(long)]
        operator: String,
        #[arg(long)]
        operator_key: PathBuf,
        /// The node's public key (hex), or a key file with --node-key.
        #[arg(long)]
        node_public_key: Option<String>,
        #[arg(long)]
        node_key: Option<PathBuf>,
        #[arg(long)]
        ipv6: String,
        #[arg(long)]
        http: String,
        #[arg(long, env = "ICOS_REGISTRY", default_value = DEFAULT_REGISTRY)]
        registry: String,
    },
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The neuron id a key belongs to, looked up in the registry.
fn neuron_of(api: &Api, key: &keys::SecretKey) -> Result<u64> {
    let pk = keys::public_hex(key);
    let snap = api.snapshot(None)?;
    snap.registry
        .neurons
        .values()
        .find(|n| n.public_key == pk)
        .map(|n| n.id)
        .with_context(|| format!("no neuron in the registry has the public key {pk}"))
}

fn action_of(cmd: ProposeCmd, api: &Api) -> Result<Action> {
    Ok(match cmd {
        ProposeCmd::ElectGuestos(a) => Action::ElectGuestos(a.into()),
        ProposeCmd::ElectHostos(a) => Action::ElectHostos(a.into()),
        ProposeCmd::RetireGuestos { version } => Action::RetireGuestos { version },
        ProposeCmd::RetireHostos { version } => Action::RetireHostos { version },
        ProposeCmd::DeployGuestos {
            version,
            subnet: Some(subnet),
            ..
        } => Action::DeployGuestosToSubnet { subnet, version },
        ProposeCmd::DeployGuestos {
            version,
            subnet: None,
            unassigned: true,
        } => Action::DeployGuestosToUnassigned { version },
        ProposeCmd::DeployGuestos { .. } => {
            bail!("deploy-guestos needs --subnet ID or --unassigned")
        }
        ProposeCmd::DeployHostos { version, nodes } => {
            Action::DeployHostosToNodes { nodes, version }
        }
        ProposeCmd::AddOperator {
            id,
            public_key,
            allowance,
        } => Action::AddOperator {
            id,
            public_key,
            node_allowance: allowance,
        },
        ProposeCmd::RemoveOperator { id } => Action::RemoveOperator { id },
        ProposeCmd::CreateSubnet {
            id,
            nodes,
            ranges,
            guestos,
            root_key,
            subnet_key_out,
        } => {
            let canister_ranges = ranges
                .iter()
                .map(|r| {
                    let (a, b) = r
                        .split_once('-')
                        .with_context(|| format!("canister range `{r}`: expected START-END"))?;
                    Ok(CanisterRange {
                        start: a.parse().context("range start")?,
                        end: b.parse().context("range end")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let key = match root_key {
                Some(path) => {
                    let root = subnet_key::read_bls_key(&path)?;
                    let reg = api.snapshot(None)?.registry;
                    let (material, secret) = SubnetKey::make(
                        &root,
                        &subnet_key::node_keys(&reg, &nodes)?,
                        &canister_ranges,
                        now_nanos(),
                    )?;
                    if let Some(out) = subnet_key_out {
                        subnet_key::write_bls_key(&out, &secret)?;
                    }
                    Some(material)
                }
                None => None,
            };
            Action::CreateSubnet {
                id,
                nodes,
                canister_ranges,
                guestos_version: guestos,
                key,
            }
        }
        ProposeCmd::AddNodes {
            subnet,
            nodes,
            subnet_key,
        } => {
            let mut sealed_keys = std::collections::BTreeMap::new();
            if let Some(path) = subnet_key {
                let secret = subnet_key::read_bls_key(&path)?;
                let reg = api.snapshot(None)?.registry;
                for (id, public) in subnet_key::node_keys(&reg, &nodes)? {
                    sealed_keys.insert(id, subnet_key::seal(&public, &secret.to_bytes())?);
                }
            }
            Action::AddNodesToSubnet {
                subnet,
                nodes,
                sealed_keys,
            }
        }
        ProposeCmd::RemoveNodes { subnet, nodes } => {
            Action::RemoveNodesFromSubnet { subnet, nodes }
        }
        ProposeCmd::SetFirewall { scope, rules } => {
            let scope = match scope.split_once(':') {
                None if scope == "global" => FirewallScope::Global,
                Some(("subnet", id)) => FirewallScope::Subnet(id.into()),
                Some(("node", id)) => FirewallScope::Node(id.into()),
                _ => bail!("--scope `{scope}`: expected global, subnet:ID or node:ID"),
            };
            let text = std::fs::read_to_string(&rules)
                .with_context(|| format!("reading {}", rules.display()))?;
            let rules: Vec<FirewallRule> = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a list of firewall rules", rules.display()))?;
            Action::SetFirewallRules { scope, rules }
        }
        ProposeCmd::AddApiBoundaryNodes { nodes } => Action::AddApiBoundaryNodes { nodes },
        ProposeCmd::RemoveApiBoundaryNodes { nodes } => Action::RemoveApiBoundaryNodes { nodes },
        ProposeCmd::Action { json } => {
            let text = std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a proposal action", json.display()))?
        }
    })
}

fn print_record(r: &registry_model::api::ProposalRecord) {
    println!(
        "proposal {}: {} \"{}\" — {}; yes {} / no {} of {} voting power",
        r.id,
        r.proposal.body.action.kind(),
        r.proposal.body.title,
        r.status,
        r.tally.yes,
        r.tally.no,
        r.tally.total
    );
}

pub fn gov(cmd: GovCmd) -> Result<i32> {
    match cmd {
        GovCmd::Keygen { out } => {
            let k = keys::generate();
            keys::write_key(&out, &k)?;
            println!("{}", keys::public_hex(&k));
        }
        GovCmd::Propose {
            action,
            key,
            title,
            registry,
        } => {
            let key_path = key.context("--key NEURON_KEY is required")?;
            let key = keys::read_key(&key_path)?;
            let api = Api::new(&registry);
            let action = action_of(action, &api)?;
            let r = api.propose(&key, &title, action)?;
            print_record(&r);
        }
        GovCmd::Vote {
            id,
            vote,
            key,
            registry,
        } => {
            let vote = match vote.as_str() {
                "yes" => Vote::Yes,
                "no" => Vote::No,
                other => bail!("vote `{other}`: expected yes or no"),
            };
            let key = keys::read_key(&key)?;
            let api = Api::new(&registry);
            let neuron = neuron_of(&api, &key)?;
            let rec = api.proposal(id)?;
            let v = SignedVote::sign(&rec.proposal.body.hash(), neuron, vote, &key);
            let r = api.vote(id, &v)?;
            print_record(&r);
        }
        GovCmd::Proposals { registry, json } => {
            let list = Api::new(&registry).proposals()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:>4}  {:<28} {:<12} {:>10} {:>10} {:>10}  deadline",
                    "id", "kind", "status", "yes", "no", "total"
                );
                for p in list {
                    let status = serde_json::to_value(&p.status)?["state"]
                        .as_str()
                        .unwrap_or("?")
                        .to_string();
                    println!(
                        "{:>4}  {:<28} {:<12} {:>10} {:>10} {:>10}  {}",
                        p.id, p.kind, status, p.yes, p.no, p.total, p.deadline
                    );
                }
            }
        }
        GovCmd::Show { id, registry } => {
            let r = Api::new(&registry).proposal(id)?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
    }
    Ok(0)
}

fn online_key_path(data: &std::path::Path, given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| data.join("online.key"))
}

pub fn registry(cmd: RegistryCmd) -> Result<i32> {
    match cmd {
        RegistryCmd::Init { genesis, data } => {
            let text = std::fs::read_to_string(&genesis)
                .with_context(|| format!("reading {}", genesis.display()))?;
            let g = Genesis::from_toml(&text).with_context(|| format!("{}", genesis.display()))?;
            let c = registry_server::Registry::init(&data, &g)?;
            println!(
                "registry created in {}; genesis hash {}",
                data.display(),
                c.hash()
            );
        }
        RegistryCmd::Serve {
            data,
            listen,
            online_key,
            publish,
        } => {
            let key = online_key_path(&data, online_key);
            let reg = std::sync::Arc::new(
                registry_server::Registry::open(&data, &key)
                    .with_context(|| format!("opening the registry in {}", data.display()))?,
            );
            let (v, h) = reg.head();
            let addrs: Vec<String> = listen.iter().map(|a| format!("http://{a}")).collect();
            eprintln!(
                "registry {}: head version {v} ({h}), listening on {}",
                data.display(),
                addrs.join(" ")
            );
            let rt = tokio::runtime::Runtime::new()?;
            if let Some(dir) = publish {
                let r = reg.clone();
                let every = r
                    .registry()
                    .settings
                    .map(|s| (s.freshness_secs / 3).max(1))
                    .unwrap_or(60);
                std::thread::spawn(move || loop {
                    if let Err(e) = r.export(&dir) {
                        tracing::error!("publishing to {}: {e}", dir.display());
                    }
                    std::thread::sleep(std::time::Duration::from_secs(every));
                });
            }
            rt.block_on(async move {
                let mut servers = tokio::task::JoinSet::new();
                for addr in listen {
                    servers.spawn(registry_server::http::serve(
                        reg.clone(),
                        addr,
                        registry_server::http::Limits::default(),
                    ));
                }
                // Any listener failing (its address taken) stops the whole server.
                while let Some(r) = servers.join_next().await {
                    r.context("a registry listener panicked")??;
                }
                anyhow::Ok(())
            })?;
        }
        RegistryCmd::Export {
            data,
            out,
            online_key,
        } => {
            let key = online_key_path(&data, online_key);
            let reg = registry_server::Registry::open(&data, &key)?;
            let files = reg.export(&out)?;
            println!("wrote {} files to {}", files.len(), out.display());
        }
        RegistryCmd::Get {
            what,
            at,
            json,
            registry,
        } => {
            let snap = Api::new(&registry).snapshot(at)?;
            let r = &snap.registry;
            let value = match what.as_str() {
                "subnets" => serde_json::to_value(&r.subnets)?,
                "nodes" => serde_json::to_value(&r.nodes)?,
                "versions" => serde_json::json!({
                    "guestos": r.guestos_versions, "hostos": r.hostos_versions,
                    "unassigned_guestos": r.unassigned_guestos_version }),
                "operators" => serde_json::to_value(&r.operators)?,
                "firewall" => serde_json::to_value(&r.firewall)?,
                "neurons" => serde_json::to_value(&r.neurons)?,
                "all" => serde_json::to_value(r)?,
                other => bail!("unknown record type `{other}`: subnets, nodes, versions, operators, firewall, neurons or all"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("registry version {}", snap.version);
                print_table(&what, r);
            }
        }
        RegistryCmd::Verify { from, genesis_hash } => {
            let dir = std::env::temp_dir().join(format!("icos-verify-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let pinned = match &genesis_hash {
                Some(h) => h.clone(),
                None => {
                    // Read the genesis to show its hash; without a pin we can only report it.
                    let g = fetch_genesis_hash(&from)?;
                    eprintln!("warning: genesis not pinned; the server's genesis hash is {g} (pass --genesis-hash to check it)");
                    g
                }
            };
            let cfg = registry_client::ClientConfig::new(vec![from.clone()], &pinned, dir.clone());
            let mut c = registry_client::Client::open(cfg)?;
            let t = std::time::Instant::now();
            let res = c.sync();
            let _ = std::fs::remove_dir_all(&dir);
            let r = res.with_context(|| format!("verifying {from}"))?;
            println!(
                "verified {} changes from genesis {} in {:.2} s: head version {} ({}), fresh until {}",
                r.to_version,
                pinned,
                t.elapsed().as_secs_f64(),
                r.to_version,
                c.verified().map(|v| v.hash.clone()).unwrap_or_default(),
                r.fresh_until
            );
        }
        RegistryCmd::Register {
            operator,
            operator_key,
            node_public_key,
            node_key,
            ipv6,
            http,
            registry,
        } => {
            let op = keys::read_key(&operator_key)?;
            let node_pk = match (node_public_key, node_key) {
                (Some(pk), None) => pk,
                (None, Some(p)) => keys::public_hex(&keys::read_key(&p)?),
                _ => bail!("give exactly one of --node-public-key and --node-key"),
            };
            let api = Api::new(&registry);
            let snap = api.snapshot(None)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let reg = Registration::new(&snap.registry, operator, node_pk, ipv6, http, now)?;
            let r = api.register(&SignedRegistration::sign(reg, &op))?;
            println!("registered {} at registry version {}", r.node_id, r.version);
        }
    }
    Ok(0)
}

/// The hash of version 1 as the server presents it (for unpinned display only).
fn fetch_genesis_hash(base: &str) -> Result<String> {
    let url = format!("{}/v1/segments/0.json", base.trim_end_matches('/'));
    let body = ureq::get(&url)
        .call()
        .with_context(|| url.clone())?
        .into_string()?;
    let changes: Vec<registry_model::Change> =
        serde_json::from_str(&body).with_context(|| url.clone())?;
    Ok(changes.first().context("empty segment 0")?.hash())
}

fn print_table(what: &str, r: &registry_model::Registry) {
    let all = what == "all";
    if all || what == "versions" {
        println!("{:<8} {:<12} {:<64} urls", "os", "version", "sha256");
        for (os, m) in [
            ("guestos", &r.guestos_versions),
            ("hostos", &r.hostos_versions),
        ] {
            for e in m.values() {
                println!(
                    "{:<8} {:<12} {:<64} {}",
                    os,
                    e.version,
                    e.sha256,
                    e.urls.join(" ")
                );
            }
        }
        println!(
            "unassigned nodes run GuestOS {}",
            r.unassigned_guestos_version.as_deref().unwrap_or("-")
        );
    }
    if all || what == "subnets" {
        println!(
            "{:<12} {:<10} {:<24} nodes",
            "subnet", "guestos", "canister ranges"
        );
        for s in r.subnets.values() {
            let ranges: Vec<String> = s
                .canister_ranges
                .iter()
                .map(|c| format!("{}-{}", c.start, c.end))
                .collect();
            println!(
                "{:<12} {:<10} {:<24} {}",
                s.id,
                s.guestos_version,
                ranges.join(","),
                s.nodes.join(",")
            );
        }
    }
    if all || what == "nodes" {
        println!(
            "{:<22} {:<10} {:<26} {:<10} http",
            "node", "operator", "ipv6", "hostos"
        );
        for n in r.nodes.values() {
            println!(
                "{:<22} {:<10} {:<26} {:<10} {}",
                n.id,
                n.operator,
                n.ipv6,
                n.hostos_version.as_deref().unwrap_or("-"),
                n.http_endpoint
            );
        }
    }
    if all || what == "operators" {
        println!(
            "{:<12} {:>9} {:>6}  public key",
            "operator", "allowance", "added"
        );
        for o in r.operators.values() {
            println!(
                "{:<12} {:>9} {:>6}  {}",
                o.id, o.node_allowance, o.nodes_added, o.public_key
            );
        }
    }
    if all || what == "neurons" {
        println!("{:>6} {:>12}  public key", "neuron", "power");
        for n in r.neurons.values() {
            println!("{:>6} {:>12}  {}", n.id, n.voting_power, n.public_key);
        }
    }
    if all || what == "firewall" {
        for (scope, rules) in &r.firewall {
            for x in rules {
                println!(
                    "{scope:<24} {:?} {:?} ports {:?} from {}",
                    x.action,
                    x.protocol,
                    x.ports,
                    x.sources.join(",")
                );
            }
        }
    }
}
