//! `icos canister`: a developer's commands against a node or network URL, on DFINITY's
//! `ic-agent` and `ic-utils` (so what works here works with every other agent).

use crate::assets;
use anyhow::{bail, Context, Result};
use candid::IDLArgs;
use clap::{Args, Subcommand, ValueEnum};
use ic_agent::identity::BasicIdentity;
use ic_agent::{Agent, Identity};
use ic_principal::Principal;
use ic_utils::interfaces::management_canister::builders::CanisterInstallMode;
use ic_utils::interfaces::ManagementCanister;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct CanisterArgs {
    /// The node or boundary to talk to.
    #[arg(
        long,
        global = true,
        env = "ICOS_URL",
        default_value = "http://127.0.0.1:4943"
    )]
    url: String,
    /// Ed25519 identity, PKCS#8 PEM (a dfx identity works). Made on first use if missing.
    #[arg(
        long,
        global = true,
        env = "ICOS_IDENTITY",
        default_value = "out/identity.pem"
    )]
    identity: PathBuf,
    #[command(subcommand)]
    cmd: CanisterCmd,
}

#[derive(Subcommand)]
enum CanisterCmd {
    /// Print the identity's principal.
    Whoami,
    /// Create an empty canister (provisional, as local networks allow) controlled by the
    /// identity; prints its id.
    Create {
        /// Any canister id of the subnet to create on.
        #[arg(long, default_value = "rwlgt-iiaaa-aaaaa-aaaaa-cai")]
        effective: Principal,
    },
    /// Install a module (.wasm, or .wat text) on a canister.
    Install {
        canister: Principal,
        module: PathBuf,
        #[arg(long, value_enum, default_value = "install")]
        mode: Mode,
        #[command(flatten)]
        arg: CandidArg,
    },
    /// An update call; prints the reply as Candid.
    Call(MethodArgs),
    /// A query (its signature checked against the node key); prints the reply as Candid.
    Query(MethodArgs),
    /// Status, module hash, controllers and memory of a canister (controllers only).
    Status { canister: Principal },
    /// GET a path from a canister's `http_request`, as an HTTP gateway does: the body is
    /// printed only if it verifies against the subnet's certificate.
    Http {
        canister: Principal,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Upload every file under a directory to an asset canister (its `put` method; a file
    /// over 1 MiB in pieces with `put_chunk`, published whole by the last), each with the
    /// content type its name implies.
    Upload {
        canister: Principal,
        dir: PathBuf,
        /// The path the directory's files are served under.
        #[arg(long, default_value = "/")]
        prefix: String,
    },
    /// Write the example canisters' Wasm modules (counter.wasm, assets.wasm) into a directory.
    Examples { dir: PathBuf },
}

#[derive(Args)]
struct MethodArgs {
    canister: Principal,
    method: String,
    #[command(flatten)]
    arg: CandidArg,
}

/// A message's argument: Candid text or Candid bytes; no arguments when neither is given.
#[derive(Args)]
struct CandidArg {
    /// The argument as Candid text, e.g. '(42 : nat64, "text", blob "\\00\\01")'.
    #[arg(long)]
    arg: Option<String>,
    /// The argument as Candid bytes in hex.
    #[arg(long, conflicts_with = "arg")]
    arg_hex: Option<String>,
}

impl CandidArg {
    fn bytes(&self) -> Result<Vec<u8>> {
        match (&self.arg, &self.arg_hex) {
            (Some(text), _) => candid_arg(text),
            (None, Some(h)) => hex_arg(h),
            (None, None) => Ok(candid::encode_args(()).expect("no arguments always encode")),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Install,
    Reinstall,
    Upgrade,
}

pub fn canister(a: CanisterArgs) -> Result<i32> {
    if let CanisterCmd::Examples { dir } = &a.cmd {
        return write_examples(dir);
    }
    let identity = load_identity(&a.identity)?;
    if let CanisterCmd::Whoami = a.cmd {
        println!(
            "{}",
            identity.sender().map_err(anyhow::Error::msg)?.to_text()
        );
        return Ok(0);
    }
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let agent = connect(&a.url, identity).await?;
        run(&agent, a.cmd).await
    })
}

async fn connect(url: &str, identity: BasicIdentity) -> Result<Agent> {
    let agent = Agent::builder()
        .with_url(url)
        .with_identity(identity)
        .build()
        .with_context(|| format!("the URL {url}"))?;
    // Every network but the IC itself has its own root key, which its status serves.
    if !is_mainnet(url) {
        agent
            .fetch_root_key()
            .await
            .with_context(|| format!("fetching the root key from {url}/api/v2/status"))?;
    }
    Ok(agent)
}

fn is_mainnet(url: &str) -> bool {
    ["ic0.app", "icp0.io", "icp-api.io"]
        .iter()
        .any(|h| url.contains(h))
}

async fn run(agent: &Agent, cmd: CanisterCmd) -> Result<i32> {
    let mgmt = ManagementCanister::create(agent);
    match cmd {
        CanisterCmd::Whoami | CanisterCmd::Examples { .. } => {
            unreachable!("answered without a network")
        }
        CanisterCmd::Create { effective } => {
            let (id,) = mgmt
                .create_canister()
                .as_provisional_create_with_amount(None)
                .with_effective_canister_id(effective)
                .call_and_wait()
                .await
                .context("creating a canister")?;
            println!("{id}");
        }
        CanisterCmd::Install {
            canister,
            module,
            mode,
            arg,
        } => {
            let wasm = read_module(&module)?;
            let mode = match mode {
                Mode::Install => CanisterInstallMode::Install,
                Mode::Reinstall => CanisterInstallMode::Reinstall,
                Mode::Upgrade => CanisterInstallMode::Upgrade(None),
            };
            mgmt.install_code(&canister, &wasm)
                .with_mode(mode)
                .with_raw_arg(arg.bytes()?)
                .call_and_wait()
                .await
                .with_context(|| format!("installing {} on {canister}", module.display()))?;
            println!("installed {} on {canister}", module.display());
        }
        CanisterCmd::Call(m) => {
            let reply = agent
                .update(&m.canister, &m.method)
                .with_arg(m.arg.bytes()?)
                .call_and_wait()
                .await
                .with_context(|| format!("calling {} on {}", m.method, m.canister))?;
            println!("{}", candid_text(&reply));
        }
        CanisterCmd::Query(m) => {
            let reply = agent
                .query(&m.canister, &m.method)
                .with_arg(m.arg.bytes()?)
                .call()
                .await
                .with_context(|| format!("querying {} on {}", m.method, m.canister))?;
            println!("{}", candid_text(&reply));
        }
        CanisterCmd::Status { canister } => {
            let (s,) = mgmt
                .canister_status(&canister)
                .call()
                .await
                .with_context(|| format!("the status of {canister}"))?;
            println!("status: {:?}", s.status);
            println!(
                "module hash: {}",
                s.module_hash
                    .as_deref()
                    .map(hex::encode)
                    .unwrap_or_else(|| "none (no module installed)".into())
            );
            let controllers: Vec<String> = s
                .settings
                .controllers
                .iter()
                .map(Principal::to_text)
                .collect();
            println!("controllers: {}", controllers.join(", "));
            println!("memory size: {} bytes", s.memory_size);
        }
        CanisterCmd::Http { canister, path } => {
            let assets::Page {
                page,
                root_key_hash,
            } = assets::http_get(agent, &canister, &path).await?;
            let how = match page.verification {
                canister_http::Verification::Verified { version: 1 } => {
                    "body verified (response verification v1, which certifies the body only)"
                        .to_string()
                }
                canister_http::Verification::Verified { version } => {
                    format!("verified (response verification v{version})")
                }
                canister_http::Verification::Update => {
                    "certified as the reply of an update call".to_string()
                }
                canister_http::Verification::Unverified => "not verified".to_string(),
            };
            eprintln!(
                "HTTP {} from {canister}{path}: {how} against the root key with sha256 {root_key_hash}...",
                page.status
            );
            for (name, value) in &page.headers {
                eprintln!("{name}: {}", assets::abbreviate(value));
            }
            std::io::Write::write_all(&mut std::io::stdout(), &page.body)
                .context("writing the body to stdout")?;
        }
        CanisterCmd::Upload {
            canister,
            dir,
            prefix,
        } => {
            for f in assets::upload(agent, &canister, &dir, &prefix).await? {
                println!("{} ({} bytes, {})", f.path, f.size, f.content_type);
            }
        }
    }
    Ok(0)
}

fn write_examples(dir: &Path) -> Result<i32> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, wasm) in example_canisters::all() {
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, wasm).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(0)
}

/// A module file: Wasm bytes, or WebAssembly text compiled here.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    wat::parse_bytes(&bytes)
        .map(|w| w.into_owned())
        .with_context(|| format!("{} is neither Wasm nor WebAssembly text", path.display()))
}

fn hex_arg(s: &str) -> Result<Vec<u8>> {
    let bytes = hex::decode(s.trim()).with_context(|| format!("--arg-hex {s:?} is not hex"))?;
    if !bytes.starts_with(b"DIDL") {
        bail!("--arg-hex must be Candid bytes (they start with 4449444c, \"DIDL\")");
    }
    Ok(bytes)
}

fn candid_arg(text: &str) -> Result<Vec<u8>> {
    let args = candid_parser::parse_idl_args(text)
        .with_context(|| format!("--arg {text:?} is not Candid text"))?;
    args.to_bytes()
        .with_context(|| format!("--arg {text:?} could not be encoded"))
}

/// A reply as Candid text, or as hex when it is not Candid.
fn candid_text(reply: &[u8]) -> String {
    match IDLArgs::from_bytes(reply) {
        Ok(args) => args.to_string(),
        Err(_) => format!("(not Candid) {}", hex::encode(reply)),
    }
}

/// The identity in `path`, made (Ed25519, PKCS#8 PEM, mode 0600) if there is none.
fn load_identity(path: &Path) -> Result<BasicIdentity> {
    if !path.exists() {
        make_identity(path)?;
        eprintln!("made a new identity in {}", path.display());
    }
    BasicIdentity::from_pem_file(path)
        .with_context(|| format!("reading the identity {}", path.display()))
}

fn make_identity(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    registry_model::keys::write_key(path, &registry_model::keys::generate())?;
    Ok(())
}
