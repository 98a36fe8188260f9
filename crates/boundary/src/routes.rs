//! The routing table: which subnet holds a canister, and which nodes serve that subnet, as
//! the verified registry says. Rebuilt whole on every new registry version; requests see
//! one table or the next, never a mix.

use ic_principal::Principal;
use registry_model::Registry;
use std::net::IpAddr;
use std::sync::Arc;

/// A node a request can be sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoute {
    /// The node's id in the registry.
    pub id: String,
    /// Its HTTP endpoint from the registry, without a trailing slash.
    pub endpoint: String,
}

/// A subnet and its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRoute {
    /// The subnet's name in the registry.
    pub id: String,
    /// The subnet's principal (self-authenticating id of its public key), which agents put in
    /// `/api/v2/subnet/<id>/read_state`; none for a subnet without a key.
    pub principal: Option<Principal>,
    pub nodes: Vec<NodeRoute>,
}

/// Why a request has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("`{0}` is not a canister id this network assigns")]
    CanisterNotFound(String),
    #[error("`{0}` is not a subnet of this network")]
    SubnetNotFound(String),
}

/// One registry version's routes.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// The registry version the table was made from.
    pub version: u64,
    /// The network's root public key (DER), served by `/api/v2/status`.
    pub root_key: Option<Vec<u8>>,
    /// Shared, so a request holds its subnet's route without copying it.
    pub subnets: Vec<Arc<SubnetRoute>>,
    /// Canister index ranges, sorted by start, with the index of their subnet.
    ranges: Vec<(u64, u64, usize)>,
}

impl Table {
    /// The table of registry `version`. Nodes whose endpoint this boundary cannot use
    /// (anything but `http://host:port`) are left out and logged. With `host_loopback`, an
    /// endpoint on a loopback address is reached at that address instead (a boundary in a
    /// development network's VM, whose nodes register their host's forwarded ports).
    pub fn from_registry(reg: &Registry, version: u64, host_loopback: Option<IpAddr>) -> Table {
        let mut subnets = Vec::new();
        let mut ranges = Vec::new();
        for s in reg.subnets.values() {
            let principal = s
                .key
                .as_ref()
                .and_then(|k| hex::decode(&k.public_key).ok())
                .map(|der| Principal::self_authenticating(&der));
            let nodes = s
                .nodes
                .iter()
                .filter_map(|n| reg.nodes.get(n))
                .filter_map(|n| {
                    match registry_model::endpoint::reachable(&n.http_endpoint, host_loopback) {
                        Some(endpoint) => Some(NodeRoute {
                            id: n.id.clone(),
                            endpoint,
                        }),
                        None => {
                            tracing::warn!(
                            "node {} of {}: endpoint `{}` is not http://host:port; not routed to",
                            n.id,
                            s.id,
                            n.http_endpoint
                        );
                            None
                        }
                    }
                })
                .collect();
            for r in &s.canister_ranges {
                ranges.push((r.start, r.end, subnets.len()));
            }
            subnets.push(Arc::new(SubnetRoute {
                id: s.id.clone(),
                principal,
                nodes,
            }));
        }
        ranges.sort();
        Table {
            version,
            root_key: reg.root_key.as_ref().and_then(|k| hex::decode(k).ok()),
            subnets,
            ranges,
        }
    }

    /// The subnet whose ranges hold `canister` (binary search over the sorted ranges).
    pub fn by_canister(&self, canister: &Principal) -> Result<&Arc<SubnetRoute>, RouteError> {
        let not_found = || RouteError::CanisterNotFound(canister.to_text());
        let index = canister_index(canister).ok_or_else(not_found)?;
        let after = self.ranges.partition_point(|(start, _, _)| *start <= index);
        let (_, end, subnet) = after
            .checked_sub(1)
            .map(|i| self.ranges[i])
            .ok_or_else(not_found)?;
        if index > end {
            return Err(not_found());
        }
        Ok(&self.subnets[subnet])
    }

    /// The subnet with principal `id`.
    pub fn by_subnet(&self, id: &Principal) -> Result<&Arc<SubnetRoute>, RouteError> {
        self.subnets
            .iter()
            .find(|s| s.principal.as_ref() == Some(id))
            .ok_or_else(|| RouteError::SubnetNotFound(id.to_text()))
    }

    /// Every routed node with its subnet.
    pub fn nodes(&self) -> impl Iterator<Item = (&SubnetRoute, &NodeRoute)> {
        self.subnets
            .iter()
            .flat_map(|s| s.nodes.iter().map(move |n| (&**s, n)))
    }
}

/// The index inside a canister principal (8 bytes, big-endian, then `01 01`), the number
/// the registry's ranges count in.
pub fn canister_index(p: &Principal) -> Option<u64> {
    match p.as_slice() {
        [index @ .., 1, 1] if index.len() == 8 => {
            Some(u64::from_be_bytes(index.try_into().expect("8 bytes")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry_model::{CanisterRange, Node, Subnet};

    fn canister(index: u64) -> Principal {
        let mut b = index.to_be_bytes().to_vec();
        b.extend([1, 1]);
        Principal::from_slice(&b)
    }

    fn registry() -> Registry {
        let mut reg = Registry::default();
        for (id, endpoint) in [
            ("a", "http://127.0.0.1:8001"),
            ("b", "http://[::1]:8002/"),
            ("c", "https://example.org:443"),
            ("d", "http://no-port.example"),
        ] {
            reg.nodes.insert(
                id.into(),
                Node {
                    id: id.into(),
                    operator: "op".into(),
                    public_key: String::new(),
                    ipv6: String::new(),
                    http_endpoint: endpoint.into(),
                    hostos_version: None,
                    peer_endpoint: None,
                },
            );
        }
        for (id, nodes, ranges) in [
            ("s1", vec!["a"], vec![(0, 99), (300, 399)]),
            ("s2", vec!["b", "c", "d"], vec![(100, 199)]),
        ] {
            reg.subnets.insert(
                id.into(),
                Subnet {
                    id: id.into(),
                    nodes: nodes.into_iter().map(String::from).collect(),
                    canister_ranges: ranges
                        .into_iter()
                        .map(|(start, end)| CanisterRange { start, end })
                        .collect(),
                    guestos_version: "1".into(),
                    key: None,
                    founders: Vec::new(),
                },
            );
        }
        reg
    }

    #[test]
    fn canisters_route_to_the_subnet_whose_range_holds_them() {
        let t = Table::from_registry(&registry(), 7, None);
        assert_eq!(t.version, 7);
        for (index, subnet) in [(0, "s1"), (99, "s1"), (100, "s2"), (199, "s2"), (350, "s1")] {
            assert_eq!(
                t.by_canister(&canister(index)).unwrap().id,
                subnet,
                "{index}"
            );
        }
        for index in [200, 299, 400, u64::MAX] {
            assert!(matches!(
                t.by_canister(&canister(index)),
                Err(RouteError::CanisterNotFound(_))
            ));
        }
        // The management canister and user principals are not canister ids.
        for p in [Principal::management_canister(), Principal::anonymous()] {
            assert!(t.by_canister(&p).is_err());
        }
    }

    #[test]
    fn only_plain_http_endpoints_with_a_port_are_routed() {
        let t = Table::from_registry(&registry(), 1, None);
        let s2 = t.by_canister(&canister(150)).unwrap();
        assert_eq!(
            s2.nodes.clone(),
            vec![NodeRoute {
                id: "b".into(),
                endpoint: "http://[::1]:8002".into()
            }]
        );
        assert_eq!(t.nodes().count(), 2);
    }

    #[test]
    fn a_development_boundary_reaches_loopback_endpoints_through_its_host() {
        let via: IpAddr = "10.0.2.2".parse().unwrap();
        let t = Table::from_registry(&registry(), 1, Some(via));
        let endpoints: Vec<_> = t.nodes().map(|(_, n)| n.endpoint.clone()).collect();
        assert_eq!(endpoints, ["http://10.0.2.2:8001", "http://10.0.2.2:8002"]);
    }
}
