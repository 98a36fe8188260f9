//! The replica follows subnet membership: governance puts the node in a subnet, the
//! orchestrator opens the subnet key sealed to this node, writes the replica's spec onto
//! the data partition and starts the `icos-replica` unit; governance takes the node out, the
//! orchestrator stops the unit and deletes the replica's folder (spec and state).
//!
//! Decisions rest on the verified registry only. A registry that cannot be reached changes
//! nothing (the replica keeps serving what it has); only a verified registry version that no
//! longer lists the node in a subnet deletes state.

use node_config::replica::{ReplicaSpec, SPEC_FILE};
use node_status::orchestrator::ReplicaState;
use registry_model::{keys, Registry};
use std::path::PathBuf;
use std::process::Command;

/// The port the replica serves the IC's HTTP interface on (the payload port).
pub const REPLICA_PORT: u16 = 8080;

/// What the node's replica should be, by the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// In no subnet.
    None,
    /// In a subnet whose key opens for this node.
    Run(Box<ReplicaSpec>),
    /// In a subnet, but no replica can run: why.
    Cannot { subnet: String, reason: String },
}

/// Where the replica lives and how it is started.
#[derive(Debug, Clone)]
pub struct ReplicaPlace {
    /// The replica's folder on the data partition (spec and state).
    pub dir: PathBuf,
    pub listen: std::net::SocketAddr,
    /// The systemd unit that runs `icos replica serve` (none: tests, which drive the spec
    /// and the folder only).
    pub unit: Option<String>,
    /// The encrypted data partition's mount point: nothing (the subnet's secret least of
    /// all) is written unless a file system is mounted there, so a node whose data volume
    /// did not open never leaves the key on its unencrypted `/var`.
    pub data_mount: Option<PathBuf>,
}

impl Default for ReplicaPlace {
    fn default() -> Self {
        ReplicaPlace {
            dir: "/var/lib/icos/data/replica".into(),
            listen: std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, REPLICA_PORT)),
            unit: Some("icos-replica.service".into()),
            data_mount: Some("/var/lib/icos/data".into()),
        }
    }
}

/// The replica `node` (holding `key`) should run by `reg`.
pub fn desired(reg: &Registry, node: &str, key: &keys::SecretKey, place: &ReplicaPlace) -> Desired {
    let Some(s) = reg
        .subnets
        .values()
        .find(|s| s.nodes.iter().any(|n| n == node))
    else {
        return Desired::None;
    };
    let cannot = |reason: String| Desired::Cannot {
        subnet: s.id.clone(),
        reason,
    };
    let (Some(material), Some(root)) = (&s.key, &reg.root_key) else {
        return cannot(
            "the subnet has no key in the registry (a network without a root key)".into(),
        );
    };
    let Some(range) = s.canister_ranges.first() else {
        return cannot("the subnet has no canister range".into());
    };
    let secret = match material.open_for(node, key) {
        Ok(k) => k,
        Err(e) => return cannot(e.to_string()),
    };
    Desired::Run(Box::new(ReplicaSpec {
        subnet: s.id.clone(),
        subnet_secret_key: hex::encode(secret.to_bytes()),
        delegation: material.delegation.clone(),
        root_key: root.clone(),
        node_key: hex::encode(key.to_bytes()),
        canister_range: (range.start, range.end),
        subnet_size: s.nodes.len(),
        subnet_nodes: s
            .nodes
            .iter()
            .filter_map(|n| reg.nodes.get(n).map(|n| n.public_key.clone()))
            .collect(),
        listen: place.listen,
        state_dir: place.dir.join("state"),
    }))
}

/// Why the replica could not be put in the state the registry asks for.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Spec(#[from] node_config::replica::SpecError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a mounted file system (the encrypted data partition did not open: see `journalctl -u icos-data`); the replica waits for it", path.display())]
    NotMounted { path: PathBuf },
    #[error("systemctl {action} {unit}: {why}")]
    Unit {
        action: &'static str,
        unit: String,
        why: String,
    },
}

/// What [`apply`] did, for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    Started { subnet: String },
    Restarted { subnet: String },
    Removed,
}

/// Bring the replica to `want`: write the spec and (re)start the unit when the spec changed,
/// start it when it is not running; stop it and delete the folder when the node left its
/// subnet.
pub fn apply(
    want: &Desired,
    place: &ReplicaPlace,
) -> Result<(Applied, ReplicaState), ReplicaError> {
    let spec_path = place.dir.join(SPEC_FILE);
    match want {
        Desired::None => {
            if !place.dir.exists() {
                return Ok((Applied::Nothing, ReplicaState::NotAssigned));
            }
            unit(place, "stop")?;
            std::fs::remove_dir_all(&place.dir).map_err(|source| ReplicaError::Io {
                path: place.dir.clone(),
                source,
            })?;
            Ok((Applied::Removed, ReplicaState::NotAssigned))
        }
        Desired::Cannot { subnet, reason } => Ok((
            Applied::Nothing,
            ReplicaState::Down {
                subnet: subnet.clone(),
                reason: reason.clone(),
            },
        )),
        Desired::Run(spec) => {
            if let Some(m) = &place.data_mount {
                if !is_mount_point(m) {
                    return Err(ReplicaError::NotMounted { path: m.clone() });
                }
            }
            let current = ReplicaSpec::read(&spec_path).ok();
            let applied = if current.as_ref() != Some(spec) {
                std::fs::create_dir_all(&place.dir).map_err(|source| ReplicaError::Io {
                    path: place.dir.clone(),
                    source,
                })?;
                spec.write(&spec_path)?;
                unit(place, "restart")?;
                match current {
                    Some(_) => Applied::Restarted {
                        subnet: spec.subnet.clone(),
                    },
                    None => Applied::Started {
                        subnet: spec.subnet.clone(),
                    },
                }
            } else {
                if !active(place) {
                    unit(place, "start")?;
                }
                Applied::Nothing
            };
            let state = if active(place) {
                ReplicaState::Serving {
                    subnet: spec.subnet.clone(),
                    nodes: spec.subnet_size,
                    listen: spec.listen.to_string(),
                }
            } else {
                ReplicaState::Down {
                    subnet: spec.subnet.clone(),
                    reason: "the replica unit is not running (see `journalctl -u icos-replica`)"
                        .into(),
                }
            };
            Ok((applied, state))
        }
    }
}

/// Whether a file system is mounted at `path` (it lies on another device than its parent).
fn is_mount_point(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(path);
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// Run `systemctl <action> <unit>` (nothing without a unit).
fn unit(place: &ReplicaPlace, action: &'static str) -> Result<(), ReplicaError> {
    let Some(u) = &place.unit else { return Ok(()) };
    let err = |why: String| ReplicaError::Unit {
        action,
        unit: u.clone(),
        why,
    };
    let out = Command::new("systemctl")
        .args([action, u.as_str()])
        .output()
        .map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Whether the unit runs (without a unit: whether the spec is in place).
fn active(place: &ReplicaPlace) -> bool {
    match &place.unit {
        Some(u) => Command::new("systemctl")
            .args(["is-active", "--quiet", u.as_str()])
            .status()
            .is_ok_and(|s| s.success()),
        None => place.dir.join(SPEC_FILE).exists(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certified_state::BlsKey;
    use registry_model::subnet_key::SubnetKey;
    use registry_model::{Action, CanisterRange, Elected, Node};

    fn node_record(key: &keys::SecretKey) -> Node {
        let public = keys::public_hex(key);
        Node {
            id: registry_model::node_id(&public),
            operator: "op".into(),
            public_key: public,
            ipv6: "::1".into(),
            http_endpoint: String::new(),
            hostos_version: None,
        }
    }

    #[test]
    fn the_replica_follows_subnet_membership_and_leaves_no_state_behind() {
        let root = BlsKey::generate();
        let mine = keys::generate();
        let other = keys::generate();
        let (me, them) = (node_record(&mine), node_record(&other));
        let mut reg = Registry {
            root_key: Some(hex::encode(root.public_der())),
            ..Registry::default()
        };
        for n in [&me, &them] {
            reg.nodes.insert(n.id.clone(), n.clone());
        }
        reg.apply(&Action::ElectGuestos(Elected {
            version: "1".into(),
            sha256: "00".repeat(32).parse().unwrap(),
            size: None,
            urls: vec!["http://m/p".into()],
        }))
        .unwrap();
        let d = tempfile::tempdir().unwrap();
        let place = ReplicaPlace {
            dir: d.path().join("replica"),
            unit: None,
            data_mount: None,
            ..ReplicaPlace::default()
        };
        // Unassigned: nothing runs, nothing is made.
        let want = desired(&reg, &me.id, &mine, &place);
        assert_eq!(want, Desired::None);
        assert_eq!(apply(&want, &place).unwrap().0, Applied::Nothing);
        assert!(!place.dir.exists());

        // Governance makes a subnet of both nodes: the spec holds the opened subnet key.
        let range = CanisterRange { start: 0, end: 99 };
        let (material, secret) = SubnetKey::make(
            &root,
            &[
                (me.id.clone(), me.public_key.clone()),
                (them.id.clone(), them.public_key.clone()),
            ],
            &[range],
            1,
        )
        .unwrap();
        reg.apply(&Action::CreateSubnet {
            id: "s1".into(),
            nodes: vec![me.id.clone(), them.id.clone()],
            canister_ranges: vec![range],
            guestos_version: "1".into(),
            key: Some(material),
        })
        .unwrap();
        let want = desired(&reg, &me.id, &mine, &place);
        let Desired::Run(spec) = &want else {
            panic!("{want:?}")
        };
        assert_eq!(spec.subnet_secret_key, hex::encode(secret.to_bytes()));
        assert_eq!((spec.subnet_size, spec.canister_range), (2, (0, 99)));
        let (done, state) = apply(&want, &place).unwrap();
        assert_eq!(
            done,
            Applied::Started {
                subnet: "s1".into()
            }
        );
        assert!(matches!(state, ReplicaState::Serving { .. }), "{state:?}");
        assert_eq!(
            &ReplicaSpec::read(&place.dir.join(SPEC_FILE)).unwrap(),
            &**spec
        );
        // With the data partition not mounted, nothing is written (the key least of all).
        let unmounted = ReplicaPlace {
            dir: d.path().join("elsewhere"),
            data_mount: Some(d.path().to_path_buf()),
            ..place.clone()
        };
        let e = apply(&want, &unmounted).unwrap_err().to_string();
        assert!(e.contains("is not a mounted file system"), "{e}");
        assert!(!unmounted.dir.exists());
        assert!(is_mount_point(std::path::Path::new("/")));
        // The same registry again changes nothing.
        assert_eq!(apply(&want, &place).unwrap().0, Applied::Nothing);
        std::fs::create_dir_all(&spec.state_dir).unwrap();
        std::fs::write(spec.state_dir.join("checkpoint"), b"x").unwrap();

        // The other node leaves: a new spec (one node), the replica restarts.
        reg.apply(&Action::RemoveNodesFromSubnet {
            subnet: "s1".into(),
            nodes: vec![them.id.clone()],
        })
        .unwrap();
        let want = desired(&reg, &me.id, &mine, &place);
        assert_eq!(
            apply(&want, &place).unwrap().0,
            Applied::Restarted {
                subnet: "s1".into()
            }
        );

        // A node whose box does not open with its key says why and runs nothing new.
        let mut forged = reg.clone();
        let sealed = &mut forged
            .subnets
            .get_mut("s1")
            .unwrap()
            .key
            .as_mut()
            .unwrap()
            .sealed;
        let theirs = registry_model::subnet_key::seal(&them.public_key, b"not for me").unwrap();
        sealed.insert(me.id.clone(), theirs);
        let want = desired(&forged, &me.id, &mine, &place);
        assert!(
            matches!(&want, Desired::Cannot { reason, .. } if reason.contains("does not open")),
            "{want:?}"
        );

        // Governance takes this node out too (the subnet gets the other back first): the
        // replica stops and its state is deleted.
        reg.subnets.get_mut("s1").unwrap().nodes = vec![them.id.clone()];
        let want = desired(&reg, &me.id, &mine, &place);
        assert_eq!(want, Desired::None);
        assert_eq!(apply(&want, &place).unwrap().0, Applied::Removed);
        assert!(!place.dir.exists());
    }
}
