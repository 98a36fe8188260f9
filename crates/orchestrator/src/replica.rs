//! The replica follows subnet membership: governance puts the node in a subnet, the
//! orchestrator opens the subnet key sealed to this node, writes the replica's spec onto
//! the data partition and starts the `icos-replica` unit; governance takes the node out, the
//! orchestrator stops the unit and deletes the replica's folder (spec and state).
//!
//! Decisions rest on the verified registry only. A registry that cannot be reached changes
//! nothing (the replica keeps serving what it has); only a verified registry version that no
//! longer lists the node in a subnet deletes state.

use crate::payload::{self, Change, PayloadError, Place};
use node_config::replica::{
    member_id, Membership, RaftPeer, RaftSpec, ReplicaSpec, MEMBERSHIP_FILE, PEER_PORT,
};
use node_config::spec::Spec;
use node_status::orchestrator::ReplicaState;
use registry_model::{keys, Registry};

/// The port the replica serves the IC's HTTP interface on (the payload port).
pub const REPLICA_PORT: u16 = 8080;

/// What the node's replica should be, by the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// In no subnet.
    None,
    /// In a subnet whose key opens for this node: the replica's spec, and who is in the
    /// subnet's log (kept up to date without a restart).
    Run {
        spec: Box<ReplicaSpec>,
        membership: Membership,
    },
    /// In a subnet, but no replica can run: why.
    Cannot { subnet: String, reason: String },
}

/// Where the replica lives and how it is started.
#[derive(Debug, Clone)]
pub struct ReplicaPlace {
    pub payload: Place,
    pub listen: std::net::SocketAddr,
    /// Where the replica serves its subnet peers (the ordered log, the root comparison).
    pub peer_listen: std::net::SocketAddr,
    /// Development networks: where this guest reaches its host's loopback, at which a local
    /// network's nodes register their endpoints.
    pub host_loopback: Option<std::net::IpAddr>,
    /// The GuestOS version this node runs, which its replica tells the subnet's members.
    pub guestos_version: String,
}

impl Default for ReplicaPlace {
    fn default() -> Self {
        ReplicaPlace {
            payload: Place::in_guestos("replica"),
            listen: std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, REPLICA_PORT)),
            peer_listen: std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, PEER_PORT)),
            host_loopback: None,
            guestos_version: String::new(),
        }
    }
}

/// Where `n`'s subnet peers reach it: its registered peer endpoint, else its IPv6 address on
/// [`PEER_PORT`]; through the host when the endpoint is on a local network's loopback.
pub fn peer_url(
    n: &registry_model::Node,
    host_loopback: Option<std::net::IpAddr>,
) -> Option<String> {
    let given = n
        .peer_endpoint
        .clone()
        .unwrap_or_else(|| format!("http://[{}]:{PEER_PORT}", n.ipv6));
    registry_model::endpoint::reachable(&given, host_loopback)
}

/// The addresses the other nodes of `node`'s subnet reach its peer port from: their peer
/// endpoints' hosts, and those of the nodes the replica's log still counts (`log_voters`,
/// member ids): a node taken out of the subnet, or the last one left when this one is taken
/// out, must still reach this one until the log has let it go, or a two-node subnet could
/// never shrink.
pub fn peer_addresses(
    reg: &Registry,
    node: &str,
    host_loopback: Option<std::net::IpAddr>,
    log_voters: &[u64],
) -> Vec<std::net::IpAddr> {
    let in_subnet = reg
        .subnets
        .values()
        .find(|s| s.nodes.iter().any(|n| n == node))
        .map(|s| s.nodes.clone())
        .unwrap_or_default();
    let mut v: Vec<std::net::IpAddr> = reg
        .nodes
        .values()
        .filter(|n| n.id != node)
        .filter(|n| in_subnet.contains(&n.id) || log_voters.contains(&member_id(&n.id)))
        .filter_map(|n| peer_url(n, host_loopback))
        .filter_map(|u| registry_model::endpoint::host_addr(&u))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// How `node` takes part in the log of subnet `s`: the members by the registry, every
/// registered node with a usable peer endpoint (a node leaving the log is still heard
/// until it has left), and whether this node starts the log.
fn raft_spec(s: &registry_model::Subnet, node: &str, place: &ReplicaPlace) -> RaftSpec {
    let starter = s
        .founders
        .iter()
        .filter(|f| s.nodes.contains(f))
        .min_by_key(|f| member_id(f));
    RaftSpec {
        id: member_id(node),
        listen: place.peer_listen,
        log: place.payload.dir.join("raft.redb"),
        membership: place.payload.dir.join(MEMBERSHIP_FILE),
        bootstrap: starter.is_some_and(|f| f == node),
    }
}

/// Who is in the log of subnet `s` by `reg`: its nodes, and every registered node with a
/// usable peer endpoint as one that may be heard (a node leaving the log is heard until it
/// has left).
fn membership(reg: &Registry, s: &registry_model::Subnet, place: &ReplicaPlace) -> Membership {
    let peers = reg
        .nodes
        .values()
        .filter_map(|n| {
            peer_url(n, place.host_loopback).map(|url| RaftPeer {
                id: member_id(&n.id),
                url,
                public_key: n.public_key.clone(),
            })
        })
        .collect();
    Membership {
        members: s.nodes.iter().map(|n| member_id(n)).collect(),
        peers,
        time: reg.time,
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
    let spec = Box::new(ReplicaSpec {
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
        state_dir: place.payload.dir.join("state"),
        raft: Some(raft_spec(s, node, place)),
        guestos_version: place.guestos_version.clone(),
    });
    Desired::Run {
        spec,
        membership: membership(reg, s, place),
    }
}

/// How long a node taken out of its subnet keeps its replica for the subnet's log to let
/// it go (a two-node subnet cannot shrink without the leaving node's vote).
pub const LEAVE_GRACE: std::time::Duration = std::time::Duration::from_secs(180);

/// The running replica's own account of its log (`status.json`), when it wrote it in the
/// last 30 s.
pub fn log_status(place: &ReplicaPlace) -> Option<node_status::replica::ReplicaStatus> {
    use node_status::replica::{ReplicaStatus, STATUS_FILE};
    let bytes = std::fs::read(place.payload.dir.join(STATUS_FILE)).ok()?;
    let status: ReplicaStatus = serde_json::from_slice(&bytes).ok()?;
    let fresh = daemon_support::unix_now().saturating_sub(status.written_at) <= 30;
    (fresh && payload::active(&place.payload)).then_some(status)
}

/// The subnet whose log still counts on this node's replica (a voter or learner by its
/// fresh status), if any.
pub fn still_counted(place: &ReplicaPlace) -> Option<String> {
    use node_config::spec::Spec;
    use node_status::replica::LogRole;
    let status = log_status(place)?;
    if status.role == LogRole::Outside {
        return None;
    }
    ReplicaSpec::read(&place.payload.spec_path())
        .ok()
        .map(|s| s.subnet)
}

/// What [`apply`] did, for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    Started { subnet: String },
    Restarted { subnet: String },
    Removed,
}

/// Bring the replica to `want`: written and (re)started when its spec changed, started
/// when it is not running; stopped and its folder deleted when the node left its subnet.
pub fn apply(
    want: &Desired,
    place: &ReplicaPlace,
) -> Result<(Applied, ReplicaState), PayloadError> {
    match want {
        Desired::None => {
            let applied = match payload::remove(&place.payload)? {
                Change::Removed => Applied::Removed,
                _ => Applied::Nothing,
            };
            Ok((applied, ReplicaState::NotAssigned))
        }
        Desired::Cannot { subnet, reason } => Ok((
            Applied::Nothing,
            ReplicaState::Down {
                subnet: subnet.clone(),
                reason: reason.clone(),
            },
        )),
        Desired::Run { spec, membership } => {
            let subnet = spec.subnet.clone();
            let applied = match payload::ensure(&place.payload, &**spec, &[])? {
                Change::Started => Applied::Started { subnet },
                Change::Restarted => Applied::Restarted { subnet },
                Change::Nothing | Change::Removed => Applied::Nothing,
            };
            // The replica reads it every few seconds: a change needs no restart.
            let path = place.payload.dir.join(MEMBERSHIP_FILE);
            if Membership::read(&path).ok().as_ref() != Some(membership) {
                membership.write(&path)?;
            }
            let state = if payload::active(&place.payload) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use certified_state::BlsKey;
    use node_config::spec::Spec;
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
            peer_endpoint: None,
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
            payload: Place {
                dir: d.path().join("replica"),
                unit: None,
                data_mount: None,
            },
            ..ReplicaPlace::default()
        };
        // Unassigned: nothing runs, nothing is made.
        let want = desired(&reg, &me.id, &mine, &place);
        assert_eq!(want, Desired::None);
        assert_eq!(apply(&want, &place).unwrap().0, Applied::Nothing);
        assert!(!place.payload.dir.exists());

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
        let Desired::Run { spec, membership } = &want else {
            panic!("{want:?}")
        };
        assert_eq!(spec.subnet_secret_key, hex::encode(secret.to_bytes()));
        assert_eq!((spec.subnet_size, spec.canister_range), (2, (0, 99)));
        // Its part in the subnet's log: both nodes members, both heard, one of the two
        // founders starts the log.
        let raft = spec.raft.as_ref().unwrap();
        let ids = [member_id(&me.id), member_id(&them.id)];
        assert_eq!(raft.id, ids[0]);
        assert_eq!(membership.members, ids);
        assert_eq!(membership.time, reg.time);
        assert_eq!(raft.bootstrap, ids[0] < ids[1]);
        assert_eq!(raft.log, place.payload.dir.join("raft.redb"));
        assert_eq!(raft.membership, place.payload.dir.join(MEMBERSHIP_FILE));
        assert_eq!(membership.peers.len(), 2);
        assert!(membership
            .peers
            .iter()
            .all(|p| p.url == "http://[::1]:4100"));
        let theirs = desired(&reg, &them.id, &other, &place);
        let Desired::Run {
            spec: their_spec, ..
        } = &theirs
        else {
            panic!("{theirs:?}")
        };
        assert_ne!(raft.bootstrap, their_spec.raft.as_ref().unwrap().bootstrap);
        // A node added later never starts the log, even with the smallest id.
        let mut grown = reg.clone();
        let s1 = grown.subnets.get_mut("s1").unwrap();
        s1.nodes.push("late".into());
        let s1 = s1.clone();
        assert!(!raft_spec(&s1, "late", &place).bootstrap);
        assert_eq!(s1.founders, [me.id.clone(), them.id.clone()]);
        // A local network's loopback endpoints are reached through the host; the firewall
        // opens the peer port to the other node only.
        let mut local = reg.clone();
        local.nodes.get_mut(&them.id).unwrap().peer_endpoint = Some("http://127.0.0.1:7001".into());
        let via: std::net::IpAddr = "10.0.2.2".parse().unwrap();
        let dev = ReplicaPlace {
            host_loopback: Some(via),
            ..place.clone()
        };
        let Desired::Run {
            membership: dev, ..
        } = desired(&local, &me.id, &mine, &dev)
        else {
            panic!()
        };
        let urls: Vec<_> = dev.peers.iter().map(|p| p.url.clone()).collect();
        assert!(
            urls.contains(&"http://10.0.2.2:7001".to_string()),
            "{urls:?}"
        );
        assert_eq!(peer_addresses(&local, &me.id, Some(via), &[]), vec![via]);
        assert_eq!(
            peer_addresses(&reg, &me.id, None, &[]),
            vec!["::1".parse::<std::net::IpAddr>().unwrap()]
        );
        // Taken out of the subnet, either side still opens the port to the nodes its log
        // counts, until the log has let them go.
        let mut shrunk = reg.clone();
        shrunk
            .subnets
            .get_mut("s1")
            .unwrap()
            .nodes
            .retain(|n| *n == me.id);
        assert!(peer_addresses(&shrunk, &me.id, None, &[]).is_empty());
        let counted = [member_id(&me.id), member_id(&them.id)];
        assert_eq!(
            peer_addresses(&shrunk, &me.id, None, &counted),
            peer_addresses(&reg, &me.id, None, &[])
        );
        assert_eq!(
            peer_addresses(&shrunk, &them.id, None, &counted),
            peer_addresses(&reg, &them.id, None, &[])
        );
        let (done, state) = apply(&want, &place).unwrap();
        assert_eq!(
            done,
            Applied::Started {
                subnet: "s1".into()
            }
        );
        assert!(matches!(state, ReplicaState::Serving { .. }), "{state:?}");
        assert_eq!(
            &ReplicaSpec::read(&place.payload.spec_path()).unwrap(),
            &**spec
        );
        let written = Membership::read(&place.payload.dir.join(MEMBERSHIP_FILE)).unwrap();
        assert_eq!(&written, membership);
        // With the data partition not mounted, nothing is written (the key least of all).
        let unmounted = ReplicaPlace {
            payload: Place {
                dir: d.path().join("elsewhere"),
                data_mount: Some(d.path().to_path_buf()),
                unit: None,
            },
            ..place.clone()
        };
        let e = apply(&want, &unmounted).unwrap_err().to_string();
        assert!(e.contains("is not a mounted file system"), "{e}");
        assert!(!unmounted.payload.dir.exists());
        assert!(payload::is_mount_point(std::path::Path::new("/")));
        // The same registry again changes nothing.
        assert_eq!(apply(&want, &place).unwrap().0, Applied::Nothing);
        // A newer registry view rewrites the membership the replica reads, without a restart.
        let mut later = reg.clone();
        later.time += 5;
        let again = desired(&later, &me.id, &mine, &place);
        assert_eq!(apply(&again, &place).unwrap().0, Applied::Nothing);
        let written = Membership::read(&place.payload.dir.join(MEMBERSHIP_FILE)).unwrap();
        assert_eq!(written.time, later.time);
        std::fs::create_dir_all(&spec.state_dir).unwrap();
        std::fs::write(spec.state_dir.join("checkpoint"), b"x").unwrap();

        // The other node leaves: a new spec (one node), the replica restarts.
        reg.apply(&Action::RemoveNodesFromSubnet {
            subnet: "s1".into(),
            nodes: vec![them.id.clone()],
        })
        .unwrap();
        let want = desired(&reg, &me.id, &mine, &place);
        let Desired::Run {
            spec: alone,
            membership: left,
        } = &want
        else {
            panic!("{want:?}")
        };
        assert!(
            alone.raft.as_ref().unwrap().bootstrap,
            "the one founder left starts the log"
        );
        assert_eq!(left.members, [member_id(&me.id)]);
        assert!(
            left.peers.len() == 2,
            "the leaving node is still heard while it leaves"
        );
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
        assert!(!place.payload.dir.exists());
    }
}
