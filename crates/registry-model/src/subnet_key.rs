//! A subnet's certification key as the registry carries it.
//!
//! The network's root BLS key is made at genesis; the genesis records its public key and
//! whoever made the genesis keeps the secret (as on the IC, whose NNS genesis starts from a
//! dealt key). To create a subnet, the root key's holder makes a BLS key for it and puts
//! three things in the create-subnet proposal: the subnet's public key, the root key's
//! delegation of it with the subnet's canister ranges (the certificate agents check), and
//! the subnet's secret key sealed to each of its nodes (a libsodium sealed box to the
//! X25519 form of the node's Ed25519 key, as `age` does for SSH keys: the node needs no
//! second key, and only it can open its box). The registry is public; the boxes are not
//! readable by anyone else.
//!
//! Governance adopting the proposal is what makes the key the subnet's: [`SubnetKey::check`]
//! refuses a delegation the root key did not sign, one for another key or other ranges,
//! and a subnet with a node that has no box. Until subnets replicate (threshold keys dealt
//! as shares), every node of a subnet holds the whole subnet key.

use crate::registry::{CanisterRange, NodeId};
use crate::ModelError;
use certified_state::{BlsKey, Delegation};
use ic_principal::Principal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The subnet key material in a create-subnet proposal and the subnet's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetKey {
    /// The subnet's BLS public key, DER, hex.
    pub public_key: String,
    /// The root key's delegation of `public_key` and the subnet's ranges (CBOR), hex.
    pub delegation: String,
    /// The subnet's secret key sealed to each node's key, hex.
    pub sealed: BTreeMap<NodeId, String>,
}

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::Invalid(format!("subnet key: {}", msg.into()))
}

/// The IC principal of a canister index range.
fn principals(ranges: &[CanisterRange]) -> Vec<(Principal, Principal)> {
    ranges
        .iter()
        .map(|r| {
            (
                certified_state::canister_id(r.start),
                certified_state::canister_id(r.end),
            )
        })
        .collect()
}

/// Seal `secret` to the node whose Ed25519 public key is `node_public_hex`.
pub fn seal(node_public_hex: &str, secret: &[u8]) -> Result<String, ModelError> {
    let node = crate::keys::parse_public(node_public_hex)?;
    let to = crypto_box::PublicKey::from(node.to_montgomery().to_bytes());
    to.seal(&mut rand_core::OsRng, secret)
        .map(hex::encode)
        .map_err(|_| bad("sealing failed"))
}

/// Open a box sealed to `key` by [`seal`].
pub fn open(key: &crate::keys::SecretKey, sealed_hex: &str) -> Result<Vec<u8>, ModelError> {
    let sealed = hex::decode(sealed_hex).map_err(|_| bad("a sealed key is not hex"))?;
    crypto_box::SecretKey::from(key.to_scalar_bytes())
        .unseal(&sealed)
        .map_err(|_| bad("this node's box does not open with its key"))
}

/// The public keys of `nodes` as the registry lists them, for [`SubnetKey::make`].
pub fn node_keys(
    reg: &crate::registry::Registry,
    nodes: &[NodeId],
) -> Result<Vec<(NodeId, String)>, ModelError> {
    nodes
        .iter()
        .map(|n| {
            reg.nodes
                .get(n)
                .map(|r| (n.clone(), r.public_key.clone()))
                .ok_or_else(|| bad(format!("node `{n}` is not registered")))
        })
        .collect()
}

/// Write a new BLS secret key file (a root or subnet key: 32 bytes as hex, mode 0600);
/// refuses to overwrite one.
pub fn write_bls_key(path: &std::path::Path, key: &BlsKey) -> Result<(), ModelError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| ModelError::Key(format!("{}: {e}", path.display()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(hex::encode(key.to_bytes()).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(err)
}

/// Read a key file written by [`write_bls_key`].
pub fn read_bls_key(path: &std::path::Path) -> Result<BlsKey, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ModelError::Key(format!("{}: {e}", path.display())))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|b| BlsKey::from_bytes(&b).ok())
        .ok_or_else(|| {
            ModelError::Key(format!(
                "{} is not a BLS secret key (64 hex digits)",
                path.display()
            ))
        })
}

impl SubnetKey {
    /// Make a key for a subnet of `nodes` (id, Ed25519 public key hex) owning `ranges`,
    /// delegated by `root`. Returns the material and the subnet's secret key.
    pub fn make(
        root: &BlsKey,
        nodes: &[(NodeId, String)],
        ranges: &[CanisterRange],
        now_nanos: u64,
    ) -> Result<(SubnetKey, BlsKey), ModelError> {
        let key = BlsKey::generate();
        let der = key.public_der();
        let subnet = Principal::self_authenticating(&der);
        let delegation =
            certified_state::delegate(root, subnet, &der, &principals(ranges), now_nanos)
                .map_err(|e| bad(e.to_string()))?;
        let encoded = serde_cbor::to_vec(&delegation).map_err(|e| bad(e.to_string()))?;
        let mut sealed = BTreeMap::new();
        for (id, public) in nodes {
            sealed.insert(id.clone(), seal(public, &key.to_bytes())?);
        }
        Ok((
            SubnetKey {
                public_key: hex::encode(der),
                delegation: hex::encode(encoded),
                sealed,
            },
            key,
        ))
    }

    /// The delegation, decoded.
    pub fn delegation(&self) -> Result<Delegation, ModelError> {
        let bytes = hex::decode(&self.delegation).map_err(|_| bad("the delegation is not hex"))?;
        serde_cbor::from_slice(&bytes).map_err(|e| bad(format!("the delegation: {e}")))
    }

    /// The subnet's principal: self-authenticating from its public key, as on the IC.
    pub fn principal(&self) -> Result<Principal, ModelError> {
        let der = hex::decode(&self.public_key).map_err(|_| bad("the public key is not hex"))?;
        Ok(Principal::self_authenticating(der))
    }

    /// Check the material against the network's root key (DER, hex), the subnet's nodes and
    /// its canister ranges.
    pub fn check(
        &self,
        root_key_hex: &str,
        nodes: &[NodeId],
        ranges: &[CanisterRange],
    ) -> Result<(), ModelError> {
        let root = hex::decode(root_key_hex).map_err(|_| bad("the root key is not hex"))?;
        let der = hex::decode(&self.public_key).map_err(|_| bad("the public key is not hex"))?;
        certified_state::public_key_from_der(&der)
            .map_err(|e| bad(format!("the public key: {e}")))?;
        let d = certified_state::check_delegation(&root, &self.delegation()?)
            .map_err(|e| bad(e.to_string()))?;
        if d.subnet_id != Principal::self_authenticating(&der) {
            return Err(bad("the delegation is for another subnet id"));
        }
        if d.public_key_der != der {
            return Err(bad("the delegation names another public key"));
        }
        if d.ranges != principals(ranges) {
            return Err(bad("the delegation's canister ranges are not the subnet's"));
        }
        self.check_sealed(nodes)
    }

    /// Every node has exactly one box, and no one else has one.
    pub fn check_sealed(&self, nodes: &[NodeId]) -> Result<(), ModelError> {
        for n in nodes {
            let b = self
                .sealed
                .get(n)
                .ok_or_else(|| bad(format!("no sealed key for node `{n}`")))?;
            // A sealed box of a 32-byte key: 32 (ephemeral key) + 16 (tag) + 32 bytes.
            if b.len() != 2 * 80 {
                return Err(bad(format!(
                    "the sealed key for node `{n}` is not 80 bytes of hex"
                )));
            }
        }
        if let Some(extra) = self.sealed.keys().find(|k| !nodes.contains(k)) {
            return Err(bad(format!(
                "a sealed key for `{extra}`, which is not in the subnet"
            )));
        }
        Ok(())
    }

    /// The subnet's secret key, opened by the node `node` holding `key`.
    pub fn open_for(&self, node: &str, key: &crate::keys::SecretKey) -> Result<BlsKey, ModelError> {
        let b = self
            .sealed
            .get(node)
            .ok_or_else(|| bad(format!("no sealed key for node `{node}`")))?;
        let secret = open(key, b)?;
        let k = BlsKey::from_bytes(&secret).map_err(|e| bad(format!("the opened key: {e}")))?;
        if hex::encode(k.public_der()) != self.public_key {
            return Err(bad("the opened key is not the subnet's public key"));
        }
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> (crate::keys::SecretKey, NodeId, String) {
        let k = crate::keys::generate();
        let public = crate::keys::public_hex(&k);
        (k, crate::node_id(&public), public)
    }

    const RANGES: [CanisterRange; 1] = [CanisterRange {
        start: 0,
        end: 0xfffff,
    }];

    #[test]
    fn made_material_checks_and_opens_only_for_its_nodes() {
        let root = BlsKey::generate();
        let root_hex = hex::encode(root.public_der());
        let (k1, id1, p1) = node();
        let (k2, id2, p2) = node();
        let (m, secret) =
            SubnetKey::make(&root, &[(id1.clone(), p1), (id2.clone(), p2)], &RANGES, 1).unwrap();
        m.check(&root_hex, &[id1.clone(), id2.clone()], &RANGES)
            .unwrap();
        assert_eq!(m.open_for(&id1, &k1).unwrap().to_bytes(), secret.to_bytes());
        assert_eq!(m.open_for(&id2, &k2).unwrap().to_bytes(), secret.to_bytes());
        // Node 2's key does not open node 1's box.
        let mut swapped = m.clone();
        swapped.sealed.insert(id2.clone(), m.sealed[&id1].clone());
        assert!(swapped
            .open_for(&id2, &k2)
            .unwrap_err()
            .to_string()
            .contains("does not open"));
        assert_eq!(
            m.principal().unwrap(),
            Principal::self_authenticating(secret.public_der())
        );
    }

    #[test]
    fn forged_or_mismatched_material_is_refused() {
        let root = BlsKey::generate();
        let root_hex = hex::encode(root.public_der());
        let (_, id1, p1) = node();
        let (_, id2, _) = node();
        let one = std::slice::from_ref(&id1);
        let nodes = vec![(id1.clone(), p1)];
        let (m, _) = SubnetKey::make(&root, &nodes, &RANGES, 1).unwrap();
        let err = |m: &SubnetKey, nodes: &[NodeId], ranges: &[CanisterRange]| {
            m.check(&root_hex, nodes, ranges).unwrap_err().to_string()
        };
        // Delegated by a key that is not the root.
        let (forged, _) = SubnetKey::make(&BlsKey::generate(), &nodes, &RANGES, 1).unwrap();
        assert!(err(&forged, one, &RANGES).contains("not signed by the network's root key"));
        // Another subnet's public key with this delegation.
        let (other, _) = SubnetKey::make(&root, &nodes, &RANGES, 1).unwrap();
        let mixed = SubnetKey {
            public_key: other.public_key,
            ..m.clone()
        };
        assert!(err(&mixed, one, &RANGES).contains("another subnet id"));
        // Ranges the delegation does not name.
        let wider = [CanisterRange {
            start: 0,
            end: 0x1fffff,
        }];
        assert!(err(&m, one, &wider).contains("canister ranges"));
        // A node of the subnet without a box; a box for a node outside it.
        assert!(err(&m, &[id1.clone(), id2.clone()], &RANGES)
            .contains(&format!("no sealed key for node `{id2}`")));
        assert!(err(&m, &[], &RANGES).contains("not in the subnet"));
        // Garbage delegation.
        let garbage = SubnetKey {
            delegation: "00".into(),
            ..m.clone()
        };
        assert!(err(&garbage, &[id1], &RANGES).contains("delegation"));
    }

    #[test]
    fn a_network_with_a_root_key_takes_only_subnets_with_their_key() {
        use crate::registry::{Action, Elected, Node, Registry};
        let root = BlsKey::generate();
        let mut reg = Registry {
            root_key: Some(hex::encode(root.public_der())),
            ..Registry::default()
        };
        let nodes: Vec<_> = (0..3).map(|_| node()).collect();
        for (_, id, public) in &nodes {
            reg.nodes.insert(
                id.clone(),
                Node {
                    id: id.clone(),
                    operator: "op".into(),
                    public_key: public.clone(),
                    ipv6: "::1".into(),
                    http_endpoint: String::new(),
                    hostos_version: None,
                    peer_endpoint: None,
                },
            );
        }
        reg.apply(&Action::ElectGuestos(Elected {
            version: "1.0.0".into(),
            sha256: "00".repeat(32).parse().unwrap(),
            size: None,
            urls: vec!["http://m/p".into()],
        }))
        .unwrap();
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.1.clone()).collect();
        let pairs: Vec<(NodeId, String)> = nodes[..2]
            .iter()
            .map(|n| (n.1.clone(), n.2.clone()))
            .collect();
        let create = |key| Action::CreateSubnet {
            id: "s1".into(),
            nodes: ids[..2].to_vec(),
            canister_ranges: RANGES.to_vec(),
            guestos_version: "1.0.0".into(),
            key,
        };
        let e = reg.validate(&create(None)).unwrap_err().to_string();
        assert!(e.contains("needs its key"), "{e}");
        let (forged, _) = SubnetKey::make(&BlsKey::generate(), &pairs, &RANGES, 1).unwrap();
        let e = reg.validate(&create(Some(forged))).unwrap_err().to_string();
        assert!(e.contains("root key"), "{e}");
        let (good, secret) = SubnetKey::make(&root, &pairs, &RANGES, 1).unwrap();
        reg.apply(&create(Some(good))).unwrap();
        // A node joins only with its box; a removed node's box goes with it.
        let add = |sealed_keys| Action::AddNodesToSubnet {
            subnet: "s1".into(),
            nodes: vec![ids[2].clone()],
            sealed_keys,
        };
        let e = reg.validate(&add(BTreeMap::new())).unwrap_err().to_string();
        assert!(e.contains("no sealed key"), "{e}");
        let boxed = BTreeMap::from([(
            ids[2].clone(),
            seal(&nodes[2].2, &secret.to_bytes()).unwrap(),
        )]);
        reg.apply(&add(boxed)).unwrap();
        let k = reg.subnets["s1"].key.clone().unwrap();
        assert_eq!(
            k.open_for(&ids[2], &nodes[2].0).unwrap().to_bytes(),
            secret.to_bytes()
        );
        reg.apply(&Action::RemoveNodesFromSubnet {
            subnet: "s1".into(),
            nodes: vec![ids[0].clone()],
        })
        .unwrap();
        assert!(!reg.subnets["s1"]
            .key
            .as_ref()
            .unwrap()
            .sealed
            .contains_key(&ids[0]));
    }
}
