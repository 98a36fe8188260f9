//! The API boundary's `/boundary/status`: the registry version its routes come from, and
//! every subnet's nodes with the health the boundary sees.

use serde::{Deserialize, Serialize};

/// What the last evidence says about a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum NodeState {
    /// Not probed yet: tried, but after nodes known to be healthy.
    Unknown,
    Healthy,
    /// Why not (a failed probe, an unhealthy status, a failed request).
    Unhealthy(String),
}

/// One node as the boundary sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    pub state: NodeState,
    /// The certified height its last status named.
    pub height: Option<u64>,
    /// Round-trip time, smoothed over probes and requests.
    pub latency_micros: Option<u64>,
}

impl Default for NodeHealth {
    fn default() -> Self {
        NodeHealth {
            state: NodeState::Unknown,
            height: None,
            latency_micros: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedNode {
    pub id: String,
    pub endpoint: String,
    pub health: NodeHealth,
    /// Whether requests go to it now (healthy or unknown, and not lagging its subnet).
    pub candidate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedSubnet {
    pub id: String,
    /// The subnet's principal, as agents name it.
    pub principal: Option<String>,
    pub nodes: Vec<RoutedNode>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundaryStatus {
    /// The verified registry version the routes come from (0: none verified yet).
    pub registry_version: u64,
    pub subnets: Vec<RoutedSubnet>,
    /// Client addresses (IPv6: /64s) with a rate-limit bucket now; quiet ones are dropped.
    #[serde(default)]
    pub clients_tracked: u64,
    /// Client buckets dropped since the start (their clients went quiet).
    #[serde(default)]
    pub clients_forgotten: u64,
}
