//! The workspace's shape, checked: the layers in ARCHITECTURE.md (which crate may use which),
//! every crate under the workspace lints and its rust-version, and no dependency that needs
//! a newer Rust than the workspace declares. Fails when a forbidden edge appears.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn metadata(no_deps: bool) -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root());
    if no_deps {
        cmd.arg("--no-deps");
    }
    let out = cmd.output().expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One row of the layers table: its number, whether its crates are peers (may not use each
/// other), and its crates.
struct Layer {
    number: u32,
    peers: bool,
    crates: Vec<String>,
}

/// The table under `## Layers` in ARCHITECTURE.md: `| n | name | peers: yes/no | crates |`.
fn layers() -> (Vec<Layer>, Vec<String>) {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = text
        .split("\n## Layers")
        .nth(1)
        .expect("ARCHITECTURE.md has a `## Layers` section");
    let section = section.split("\n## ").next().unwrap();
    let mut layers = Vec::new();
    let mut test_only = Vec::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() != 4 || cells[0] == "layer" || cells[0].starts_with('-') {
            continue;
        }
        let crates: Vec<String> = cells[3]
            .split(',')
            .map(|c| c.trim().trim_matches('`').to_string())
            .filter(|c| !c.is_empty())
            .collect();
        if cells[0] == "test" {
            test_only = crates;
            continue;
        }
        layers.push(Layer {
            number: cells[0].parse().expect("layer number"),
            peers: cells[2] == "yes",
            crates,
        });
    }
    (layers, test_only)
}

#[test]
fn dependencies_follow_the_layers_in_architecture_md() {
    let (layers, test_only) = layers();
    let mut layer_of: BTreeMap<String, &Layer> = BTreeMap::new();
    for l in &layers {
        for c in &l.crates {
            assert!(
                layer_of.insert(c.clone(), l).is_none(),
                "{c} is in two layers"
            );
        }
    }
    let meta = metadata(true);
    let packages = meta["packages"].as_array().unwrap();
    let names: Vec<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let mut problems = Vec::new();
    for n in &names {
        if !layer_of.contains_key(n) && !test_only.contains(n) {
            problems.push(format!("crate {n} is in no layer of ARCHITECTURE.md"));
        }
    }
    for c in layer_of.keys().chain(&test_only) {
        if !names.contains(c) {
            problems.push(format!("ARCHITECTURE.md names {c}, which is not a crate"));
        }
    }
    for p in packages {
        let from = p["name"].as_str().unwrap();
        for d in p["dependencies"].as_array().unwrap() {
            let to = d["name"].as_str().unwrap();
            if !names.iter().any(|n| n == to) {
                continue;
            }
            let dev = d["kind"].as_str() == Some("dev");
            if test_only.iter().any(|t| t == to) {
                if !dev {
                    problems.push(format!(
                        "{from} uses the test-only crate {to} outside tests"
                    ));
                }
                continue;
            }
            let (Some(a), Some(b)) = (layer_of.get(from), layer_of.get(to)) else {
                continue;
            };
            let peer_edge = a.number == b.number && a.peers;
            // Tests may reach up (a crate's tests run the real parts above it), but never
            // across peers.
            let upward = b.number > a.number;
            if peer_edge || (upward && !dev) {
                problems.push(format!(
                    "{from} (layer {}) uses {to} (layer {}){}",
                    a.number,
                    b.number,
                    if peer_edge {
                        ": they are peers"
                    } else {
                        ": a lower layer may not use a higher one"
                    }
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_crate_uses_the_workspace_lints_and_rust_version() {
    let mut problems = Vec::new();
    for e in std::fs::read_dir(root().join("crates")).unwrap() {
        let manifest = e.unwrap().path().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        for needed in ["[lints]\nworkspace = true", "rust-version.workspace = true"] {
            if !text.contains(needed) {
                problems.push(format!("{}: no `{needed}`", manifest.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn version(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// What we declare is what we can build with: no dependency in the lock file declares a
/// newer minimum Rust than the workspace (clippy's `incompatible_msrv` covers our own code).
#[test]
fn no_dependency_needs_a_newer_rust_than_declared() {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let ours = text
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("workspace rust-version");
    let meta = metadata(false);
    let mut newer = Vec::new();
    for p in meta["packages"].as_array().unwrap() {
        if let Some(rv) = p["rust_version"].as_str() {
            if version(rv) > version(&ours) {
                newer.push(format!("{} {} needs Rust {rv}", p["name"], p["version"]));
            }
        }
    }
    assert!(
        newer.is_empty(),
        "the workspace declares rust-version {ours}, but:\n{}",
        newer.join("\n")
    );
}
