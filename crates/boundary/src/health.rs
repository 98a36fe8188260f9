//! Which nodes get requests: each node's `/api/v2/status` is probed every second (healthy,
//! certified height, round-trip time), and every forwarded request adds its own evidence (a
//! node that fails one is avoided until its next good probe). A node is a candidate when
//! its replica says it is healthy and its certified height is not behind the median of its
//! subnet by more than the allowed lag; among candidates, two are drawn at random and the
//! faster one wins, so load follows latency without all of it going to one node.

use crate::routes::{NodeRoute, SubnetRoute, Table};
pub use node_status::boundary::{NodeHealth, NodeState};
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

/// The fields of a replica's `/api/v2/status` the boundary uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub healthy: bool,
    pub certified_height: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("not a replica status: {0}")]
pub struct StatusError(String);

/// Parse a status answer (CBOR, self-describing tag optional).
pub fn parse_status(body: &[u8]) -> Result<ReplicaStatus, StatusError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        replica_health_status: Option<String>,
        certified_height: Option<u64>,
    }
    let raw: Raw = serde_cbor::from_slice(body).map_err(|e| StatusError(e.to_string()))?;
    Ok(ReplicaStatus {
        healthy: raw.replica_health_status.as_deref() == Some("healthy"),
        certified_height: raw.certified_height,
    })
}

/// Every routed node's health.
#[derive(Debug)]
pub struct Health {
    nodes: RwLock<HashMap<String, NodeHealth>>,
    /// How far behind its subnet's median height a node may be and still get requests.
    max_height_lag: u64,
}

impl Health {
    pub fn new(max_height_lag: u64) -> Health {
        Health {
            nodes: RwLock::new(HashMap::new()),
            max_height_lag,
        }
    }

    fn update(&self, node: &str, f: impl FnOnce(&mut NodeHealth)) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        f(nodes.entry(node.to_string()).or_default());
    }

    /// A probe's answer: the status it read and how long it took. (A failed probe is a
    /// [`Health::record_failure`].)
    pub fn record_status(&self, node: &str, status: ReplicaStatus, rtt: Duration) {
        self.update(node, |h| {
            h.height = status.certified_height.or(h.height);
            h.state = if status.healthy {
                NodeState::Healthy
            } else {
                NodeState::Unhealthy("its status is not healthy".into())
            };
            smooth(&mut h.latency_micros, rtt);
        });
    }

    /// A forwarded request's round-trip time.
    pub fn record_latency(&self, node: &str, rtt: Duration) {
        self.update(node, |h| smooth(&mut h.latency_micros, rtt));
    }

    /// A probe or a forwarded request failed at the node: avoid it until a probe says
    /// otherwise.
    pub fn record_failure(&self, node: &str, why: String) {
        self.update(node, |h| h.state = NodeState::Unhealthy(why));
    }

    /// Forget nodes `table` no longer routes to.
    pub fn retain(&self, table: &Table) {
        let routed: std::collections::HashSet<&str> =
            table.nodes().map(|(_, n)| n.id.as_str()).collect();
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|id, _| routed.contains(id.as_str()));
    }

    pub fn get(&self, node: &str) -> NodeHealth {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        nodes.get(node).cloned().unwrap_or_default()
    }

    /// The nodes of `subnet` that may get a request, with their latency (unknown: last).
    pub fn candidates<'a>(&self, subnet: &'a SubnetRoute) -> Vec<Candidate<'a>> {
        let nodes = self.nodes.read().unwrap_or_else(|e| e.into_inner());
        let unknown = NodeHealth::default();
        let health = |n: &NodeRoute| nodes.get(&n.id).unwrap_or(&unknown);
        let mut heights: Vec<u64> = subnet
            .nodes
            .iter()
            .map(health)
            .filter(|h| h.state == NodeState::Healthy)
            .filter_map(|h| h.height)
            .collect();
        heights.sort_unstable();
        let floor = heights
            .get(heights.len() / 2)
            .map(|median| median.saturating_sub(self.max_height_lag));
        subnet
            .nodes
            .iter()
            .filter(|n| {
                let h = health(n);
                match h.state {
                    NodeState::Healthy => floor.zip(h.height).is_none_or(|(f, height)| height >= f),
                    NodeState::Unknown => true,
                    NodeState::Unhealthy(_) => false,
                }
            })
            .map(|node| Candidate {
                node,
                latency_micros: health(node).latency_micros.unwrap_or(u64::MAX),
            })
            .collect()
    }
}

/// Exponentially weighted: the last sample counts for 30 %.
fn smooth(avg: &mut Option<u64>, sample: Duration) {
    let s = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
    *avg = Some(match *avg {
        Some(a) => (a.saturating_mul(7) / 10).saturating_add(s.saturating_mul(3) / 10),
        None => s,
    });
}

/// A node that may get a request.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub node: &'a NodeRoute,
    pub latency_micros: u64,
}

/// Pick a node not in `tried`: of two drawn at random, the faster.
pub fn choose<'a>(
    candidates: &[Candidate<'a>],
    tried: &[String],
    rng: &mut impl rand::Rng,
) -> Option<&'a NodeRoute> {
    let left: Vec<&Candidate<'a>> = candidates
        .iter()
        .filter(|c| !tried.contains(&c.node.id))
        .collect();
    let pair: Vec<&&Candidate<'a>> = left.choose_multiple(rng, 2).collect();
    pair.into_iter()
        .min_by_key(|c| c.latency_micros)
        .map(|c| c.node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn subnet(n: usize) -> SubnetRoute {
        SubnetRoute {
            id: "s".into(),
            principal: None,
            nodes: (0..n)
                .map(|i| NodeRoute {
                    id: format!("n{i}"),
                    endpoint: format!("http://127.0.0.1:{}", 9000 + i),
                })
                .collect(),
        }
    }

    fn status(height: u64) -> ReplicaStatus {
        ReplicaStatus {
            healthy: true,
            certified_height: Some(height),
        }
    }

    fn ids(c: &[Candidate]) -> Vec<String> {
        c.iter().map(|c| c.node.id.clone()).collect()
    }

    #[test]
    fn unhealthy_failed_and_lagging_nodes_get_no_requests() {
        let s = subnet(5);
        let h = Health::new(10);
        assert_eq!(ids(&h.candidates(&s)).len(), 5, "unknown nodes are tried");
        let ms = Duration::from_millis(1);
        h.record_status("n0", status(100), ms);
        h.record_status("n1", status(95), ms);
        h.record_status("n2", status(80), ms);
        h.record_status(
            "n3",
            ReplicaStatus {
                healthy: false,
                certified_height: Some(100),
            },
            ms,
        );
        h.record_failure("n4", "connection refused".into());
        // Median of the healthy heights is 95: n2 (80) is more than 10 behind.
        assert_eq!(ids(&h.candidates(&s)), ["n0", "n1"]);
        h.record_failure("n0", "HTTP 500".into());
        assert_eq!(ids(&h.candidates(&s)), ["n1"]);
        h.record_status("n0", status(101), ms);
        assert_eq!(ids(&h.candidates(&s)), ["n0", "n1"]);
    }

    #[test]
    fn the_faster_node_gets_most_requests_and_tried_nodes_none() {
        let s = subnet(3);
        let h = Health::new(10);
        h.record_status("n0", status(1), Duration::from_millis(50));
        h.record_status("n1", status(1), Duration::from_millis(5));
        h.record_status("n2", status(1), Duration::from_millis(20));
        let c = h.candidates(&s);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut count = HashMap::new();
        for _ in 0..3000 {
            *count
                .entry(choose(&c, &[], &mut rng).unwrap().id.clone())
                .or_insert(0) += 1;
        }
        // Power of two choices: the fastest wins 2 of 3 pairs, the slowest none.
        assert!(count["n1"] > 1800, "{count:?}");
        assert!(!count.contains_key("n0"), "{count:?}");
        let tried = vec!["n1".to_string(), "n2".to_string()];
        assert_eq!(choose(&c, &tried, &mut rng).unwrap().id, "n0");
        let all = vec!["n0".into(), "n1".into(), "n2".into()];
        assert!(choose(&c, &all, &mut rng).is_none());
    }

    #[test]
    fn statuses_parse_and_garbage_is_named() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            serde_cbor::Value::Text("replica_health_status".into()),
            serde_cbor::Value::Text("healthy".into()),
        );
        m.insert(
            serde_cbor::Value::Text("certified_height".into()),
            serde_cbor::Value::Integer(42),
        );
        let body = serde_cbor::to_vec(&serde_cbor::Value::Tag(
            55799,
            Box::new(serde_cbor::Value::Map(m)),
        ))
        .unwrap();
        assert_eq!(parse_status(&body).unwrap(), status(42));
        assert!(parse_status(b"<html>")
            .unwrap_err()
            .to_string()
            .contains("not a replica status"));
    }
}
