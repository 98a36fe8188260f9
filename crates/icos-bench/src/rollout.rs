//! Rollout benchmark: on a fresh testnet of N nodes, the time from the adoption of a deploy
//! proposal until every node runs the new GuestOS confirmed, next to one plain reboot of a
//! node's VM measured in the same run (the ratio is the figure: how much an upgrade costs
//! over the reboot it cannot avoid).
//!
//! The reboot baseline is a QMP `system_reset` of node 1's VM, timed until the orchestrator
//! in it answers again with a new boot id on its confirmed slot and the HostOS agent has seen
//! the boot succeed: firmware, kernel, initramfs, systemd and the orchestrator, with no
//! download, install or health gate.

use crate::BenchError;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use testnet::{NodeRow, Report, State};

#[derive(Debug, Clone, serde::Serialize)]
pub struct RolloutBench {
    pub nodes: usize,
    pub reboot_secs: f64,
    pub rollout_secs: f64,
    pub per_node: Vec<(String, f64)>,
}

impl RolloutBench {
    pub fn ratio(&self) -> f64 {
        self.rollout_secs / self.reboot_secs
    }
}

pub struct Params {
    pub icos: PathBuf,
    pub work: PathBuf,
    pub images: PathBuf,
    pub recipes: PathBuf,
    pub from: String,
    pub to: String,
}

struct Down<'a>(&'a Path, &'a dyn Report);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = testnet::down(self.0, self.1);
    }
}

fn fail(m: String) -> BenchError {
    BenchError::Testnet(testnet::TestnetError::Msg(m))
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Result<(), BenchError> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(fail(format!(
        "timed out after {timeout:?} waiting for {what}"
    )))
}

fn settled(rows: &[NodeRow], version: &str) -> bool {
    rows.iter().all(|r| r.runs_confirmed(version))
}

fn boot_id(r: &NodeRow) -> Option<String> {
    r.orchestrator.as_ref().map(|o| o.boot_id.clone())
}

/// One plain reboot (reset) of node 1's VM, in seconds.
fn reboot(state: &State) -> Result<f64, BenchError> {
    let node = &state.nodes[0];
    let before = testnet::status(state)
        .into_iter()
        .next()
        .and_then(|r| boot_id(&r))
        .ok_or_else(|| fail("node1 reports no boot id".into()))?;
    let t = Instant::now();
    vm_runner::qmp_command(&node.dir.join("state/qmp.sock"), "system_reset")?;
    wait(
        "node1 to come back after the reset",
        Duration::from_secs(900),
        || {
            testnet::status(state).first().is_some_and(|r| {
                boot_id(r).is_some_and(|b| b != before)
                    && r.running()
                    && r.orchestrator.as_ref().is_some_and(|o| o.confirmed)
            })
        },
    )?;
    Ok(t.elapsed().as_secs_f64())
}

/// Run the benchmark for `nodes` nodes: up, baseline reboot, rollout, down.
pub fn rollout_benchmark(
    p: &Params,
    nodes: usize,
    report: &dyn Report,
) -> Result<RolloutBench, BenchError> {
    let dir = p.work.join(format!("n{nodes}"));
    let spec = testnet::Spec {
        dir: dir.clone(),
        nodes,
        subnets: 1,
        boundary_nodes: 0,
        version: p.from.clone(),
        icos: p.icos.clone(),
        images: Some(p.images.clone()),
        recipes: p.recipes.clone(),
        vcpus: 1,
        memory_mib: 1024,
    };
    // Build the target first so the build does not run next to the measurements.
    let target = testnet::image(&p.images, &p.recipes, &p.to, report)?;
    let _down = Down(&dir, report);
    let state = testnet::up(&spec, report)?;
    wait(
        "every node confirmed on the first version",
        Duration::from_secs(900),
        || settled(&testnet::status(&state), &p.from),
    )?;
    report.line("baseline: resetting node1's VM");
    let reboot_secs = reboot(&state)?;
    report.line(&format!("baseline: node1 back in {reboot_secs:.1} s"));
    wait("every node settled again", Duration::from_secs(300), || {
        settled(&testnet::status(&state), &p.from)
    })?;

    let sha = state.publish(&target, &p.to)?;
    let r = state.elect_guestos(&p.to, &sha, &[2])?;
    report.line(&format!("proposal {} (elect {}): {}", r.id, p.to, r.status));
    let r = state.propose(
        1,
        &[2],
        "deploy (benchmark)",
        registry_model::Action::DeployGuestosToSubnet {
            subnet: "subnet-1".into(),
            version: p.to.clone(),
        },
    )?;
    if !matches!(
        r.status,
        registry_model::api::ProposalStatus::Adopted { .. }
    ) {
        return Err(fail(format!("deploy proposal not adopted: {}", r.status)));
    }
    let results = testnet::follow(&state, "subnet-1", &p.to, Duration::from_secs(1800), report)?;
    if let Some(bad) = results
        .iter()
        .find(|r| r.outcome != testnet::RolloutOutcome::Confirmed)
    {
        return Err(fail(format!("{}: {}", bad.node, bad.outcome)));
    }
    let rollout_secs = results.iter().map(|r| r.seconds).fold(0.0, f64::max);
    Ok(RolloutBench {
        nodes,
        reboot_secs,
        rollout_secs,
        per_node: results.into_iter().map(|r| (r.node, r.seconds)).collect(),
    })
}
