//! A replica on a GuestOS, started by the orchestrator from a [`ReplicaSpec`]: the subnet's
//! key and the root key's delegation come from the verified registry, the node key is the
//! node's own, and the state lives on the data partition.
//!
//! The spec is checked again here before anything is served: the delegation must be signed
//! by the root key, for this subnet key, and cover the range the replica hands out, so a
//! replica never answers under a key an agent would refuse.

use crate::{Config, OpenError, Replica};
use certified_state::{BlsKey, Delegation};
use ic_principal::Principal;
use node_config::replica::ReplicaSpec;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the replica spec's {what}: {why}")]
    Bad { what: &'static str, why: String },
    #[error(transparent)]
    Open(#[from] OpenError),
}

fn bad(what: &'static str, why: impl ToString) -> SpecError {
    SpecError::Bad {
        what,
        why: why.to_string(),
    }
}

fn hex_field(what: &'static str, v: &str) -> Result<Vec<u8>, SpecError> {
    hex::decode(v).map_err(|e| bad(what, e))
}

/// The replica's configuration from `spec`, after checking the delegation.
pub fn config(spec: &ReplicaSpec, runtime: canister_runtime::Limits) -> Result<Config, SpecError> {
    let subnet_key = BlsKey::from_bytes(&hex_field("subnet key", &spec.subnet_secret_key)?)
        .map_err(|e| bad("subnet key", e))?;
    let root_key_der = hex_field("root key", &spec.root_key)?;
    let delegation: Delegation =
        serde_cbor::from_slice(&hex_field("delegation", &spec.delegation)?)
            .map_err(|e| bad("delegation", e))?;
    let d = certified_state::check_delegation(&root_key_der, &delegation)
        .map_err(|e| bad("delegation", e))?;
    if d.public_key_der != subnet_key.public_der() {
        return Err(bad(
            "delegation",
            "it names another key than the subnet key",
        ));
    }
    let (first, last) = spec.canister_range;
    let covered = d.ranges.iter().any(|(a, b)| {
        certified_state::canister_index(a).is_some_and(|a| a <= first)
            && certified_state::canister_index(b).is_some_and(|b| last <= b)
    });
    if first > last || !covered {
        return Err(bad(
            "canister range",
            format!("{first}..={last} is not inside the delegated ranges"),
        ));
    }
    let node: [u8; 32] = hex_field("node key", &spec.node_key)?
        .try_into()
        .map_err(|_| bad("node key", "not 32 bytes"))?;
    let node_key = ed25519_dalek::SigningKey::from_bytes(&node);
    let node_der = ingress::ed25519_der(node_key.verifying_key().as_bytes());
    let mut peer_node_keys = Vec::new();
    for k in &spec.subnet_nodes {
        let key: [u8; 32] = hex_field("subnet node key", k)?
            .try_into()
            .map_err(|_| bad("subnet node key", format!("{k} is not 32 bytes")))?;
        if key != node_key.verifying_key().to_bytes() && !peer_node_keys.contains(&key) {
            peer_node_keys.push(key);
        }
    }
    Ok(Config {
        subnet_id: d.subnet_id,
        subnet_key,
        delegation: Some(delegation),
        root_key_der,
        node_id: Principal::self_authenticating(&node_der),
        node_key,
        canister_range: spec.canister_range,
        subnet_size: spec.subnet_size,
        peer_node_keys,
        runtime,
        ingress: Default::default(),
    })
}

/// Open the replica `spec` describes on its state directory; what the directory held is in
/// the returned [`Recovery`](crate::checkpoint::Recovery).
pub fn open(
    spec: &ReplicaSpec,
    runtime: canister_runtime::Limits,
) -> Result<(Replica, crate::checkpoint::Recovery), SpecError> {
    let config = config(spec, runtime)?;
    std::fs::create_dir_all(&spec.state_dir).map_err(|e| bad("state directory", e))?;
    Ok(Replica::open(
        config,
        &spec.state_dir,
        Box::new(crate::system_time_nanos),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(root: &BlsKey, range: (u64, u64)) -> ReplicaSpec {
        let subnet = BlsKey::generate();
        let id = Principal::self_authenticating(subnet.public_der());
        let ranges = [(
            certified_state::canister_id(range.0),
            certified_state::canister_id(range.1),
        )];
        let d = certified_state::delegate(root, id, &subnet.public_der(), &ranges, 1).unwrap();
        ReplicaSpec {
            subnet: "subnet-1".into(),
            subnet_secret_key: hex::encode(subnet.to_bytes()),
            delegation: hex::encode(serde_cbor::to_vec(&d).unwrap()),
            root_key: hex::encode(root.public_der()),
            node_key: "07".repeat(32),
            canister_range: range,
            subnet_size: 1,
            subnet_nodes: Vec::new(),
            guestos_version: String::new(),
            listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: "/nonexistent".into(),
            raft: None,
        }
    }

    #[test]
    fn a_spec_is_served_only_under_a_delegation_agents_accept() {
        let root = BlsKey::generate();
        let good = spec(&root, (0, 99));
        let c = config(&good, Default::default()).unwrap();
        assert_eq!(c.root_key_der, root.public_der());
        assert_eq!(
            c.subnet_id,
            Principal::self_authenticating(c.subnet_key.public_der())
        );
        let err = |s: &ReplicaSpec| match config(s, Default::default()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted"),
        };
        // Another root key than the one that delegated.
        let other = BlsKey::generate();
        let wrong_root = ReplicaSpec {
            root_key: hex::encode(other.public_der()),
            ..good.clone()
        };
        assert!(err(&wrong_root).contains("not signed by the network's root key"));
        // Another subnet's secret with this delegation.
        let swapped = ReplicaSpec {
            subnet_secret_key: spec(&root, (0, 99)).subnet_secret_key,
            ..good.clone()
        };
        assert!(err(&swapped).contains("another key"));
        // A range beyond the delegated one.
        let wide = ReplicaSpec {
            canister_range: (0, 100),
            ..good.clone()
        };
        assert!(err(&wide).contains("not inside the delegated ranges"));
        let garbage = ReplicaSpec {
            delegation: "zz".into(),
            ..good
        };
        assert!(err(&garbage).contains("delegation"));
    }
}
