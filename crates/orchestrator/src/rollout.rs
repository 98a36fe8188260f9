//! Rolling GuestOS upgrades within a subnet: when governance deploys a version to a subnet,
//! its nodes reboot into it a few at a time, so that the subnet keeps a majority serving the
//! whole way through.
//!
//! Coordinated through the subnet, without a lock: every replica asks the others what they
//! are (`replica::health`, every 2 s over the signed peer route) and writes the answers into
//! its `status.json`; from that, each orchestrator decides alone with the same rule:
//!
//! * at most `lose` = max(1, (n − 1) / 2) voters may be away at a time (what a subnet of n
//!   can lose and still order calls; 1 for subnets of one or two, which cannot keep a
//!   majority through any reboot and so go one node at a time);
//! * the voters that have not finished (a finished member runs the target, serves, and is
//!   caught up) take their turns in member-id order: only the first `lose` of them may go;
//! * and only while the others that are away, plus this node, are at most `lose`.
//!
//! A node that finished says so only once it is back, serving and caught up, so the next one
//! starts after that. A node whose upgrade failed runs the old version and holds it: the
//! rollout stops behind it, as it should, until governance deploys another version. A node
//! whose own replica does not serve costs the subnet nothing more by rebooting, and goes.

use node_status::replica::{LogRole, PeerReport, ReplicaStatus, Serving};

/// Entries a member may be behind the most advanced one heard and still count as caught up.
pub const CAUGHT_UP: u64 = 100;

/// Whether this node may reboot into the target now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    Go(String),
    Wait(String),
}

/// The turn of the node whose replica wrote `own`, for the version `target`.
pub fn turn(own: &ReplicaStatus, target: &str) -> Turn {
    let me = own.member_id;
    if own.serving != Serving::Serving {
        return Turn::Go(
            "this node's replica does not serve: rebooting it costs the subnet nothing more".into(),
        );
    }
    if own.role != LogRole::Voter {
        return Turn::Go("this node is not a voter of its subnet's log yet".into());
    }
    let mut voters = own.voters.clone();
    if !voters.contains(&me) {
        voters.push(me);
    }
    voters.sort_unstable();
    let lose = ((voters.len() - 1) / 2).max(1);
    let most = own
        .peers
        .values()
        .filter_map(|r| match r {
            PeerReport::Reached(h) => Some(h.applied),
            PeerReport::Unreachable { .. } => None,
        })
        .chain([own.applied])
        .max()
        .unwrap_or(0);
    let health = |id: u64| match own.peers.get(&id) {
        Some(PeerReport::Reached(h))
            if h.serving == Serving::Serving && h.applied + CAUGHT_UP >= most =>
        {
            Some(h.guestos_version.as_str())
        }
        _ => None,
    };
    let pending: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|&v| v == me || health(v) != Some(target))
        .collect();
    let ahead: Vec<u64> = pending.iter().copied().take_while(|&v| v != me).collect();
    if ahead.len() >= lose {
        return Turn::Wait(format!(
            "member(s) {ahead:?} of the subnet go before this node ({lose} at a time) and have not come back on {target}, serving and caught up"
        ));
    }
    let away: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|&v| v != me && health(v).is_none())
        .collect();
    if away.len() + 1 > lose {
        return Turn::Wait(format!(
            "member(s) {away:?} of the subnet are not serving and caught up; the subnet of {} can spare {lose} at a time",
            voters.len()
        ));
    }
    Turn::Go(format!(
        "{} of {} members away with this node (at most {lose})",
        away.len() + 1,
        voters.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_status::replica::PeerHealth;

    /// What a member says: its version, last applied entry and serving state; `None` is a
    /// member that did not answer.
    type Said<'a> = Option<(&'a str, u64, Serving)>;

    /// Member `me`'s view of a subnet whose other members `others` said this.
    fn view(me: u64, applied: u64, others: &[(u64, Said)]) -> ReplicaStatus {
        let mut voters: Vec<u64> = [me].into_iter().chain(others.iter().map(|o| o.0)).collect();
        voters.sort_unstable();
        ReplicaStatus {
            member_id: me,
            role: LogRole::Voter,
            leader: Some(voters[0]),
            term: 3,
            applied,
            voters,
            serving: Serving::Serving,
            written_at: 0,
            guestos_version: "1.0.0".into(),
            peers: others
                .iter()
                .map(|(id, o)| {
                    let r = match o {
                        Some((v, applied, serving)) => PeerReport::Reached(PeerHealth {
                            member_id: *id,
                            role: LogRole::Voter,
                            applied: *applied,
                            serving: serving.clone(),
                            guestos_version: v.to_string(),
                        }),
                        None => PeerReport::Unreachable {
                            why: "connection refused".into(),
                        },
                    };
                    (*id, r)
                })
                .collect(),
        }
    }

    fn go(t: Turn) -> bool {
        matches!(t, Turn::Go(_))
    }

    const OK: Serving = Serving::Serving;

    #[test]
    fn three_nodes_go_one_at_a_time_in_member_order() {
        let on = |v, applied| Some((v, applied, OK));
        // Everyone on 1.0.0: member 1 is first.
        let v = view(1, 50, &[(2, on("1.0.0", 50)), (3, on("1.0.0", 50))]);
        assert!(go(turn(&v, "1.1.0")));
        // Member 2's view of the same: member 1 goes first.
        let v2 = view(2, 50, &[(1, on("1.0.0", 50)), (3, on("1.0.0", 50))]);
        assert!(matches!(turn(&v2, "1.1.0"), Turn::Wait(w) if w.contains("[1]")));
        // Member 1 is away (rebooting): member 2 waits for it.
        let away = view(2, 50, &[(1, None), (3, on("1.0.0", 50))]);
        assert!(!go(turn(&away, "1.1.0")));
        // Back on 1.1.0 but still catching up: still waiting.
        let behind = view(2, 500, &[(1, on("1.1.0", 100)), (3, on("1.0.0", 500))]);
        assert!(!go(turn(&behind, "1.1.0")));
        // Caught up: member 2's turn; member 3 still waits for member 2.
        let ready = view(2, 500, &[(1, on("1.1.0", 480)), (3, on("1.0.0", 500))]);
        assert!(go(turn(&ready, "1.1.0")));
        let third = view(3, 500, &[(1, on("1.1.0", 500)), (2, on("1.0.0", 500))]);
        assert!(!go(turn(&third, "1.1.0")));
    }

    #[test]
    fn no_node_goes_while_the_subnet_has_no_spare() {
        // Member 3 is down for its own reasons: member 1 (first in order) must not add to it.
        let v = view(1, 50, &[(2, Some(("1.0.0", 50, OK))), (3, None)]);
        assert!(matches!(turn(&v, "1.1.0"), Turn::Wait(w) if w.contains("[3]")));
        // A draining or diverged member counts as away too.
        let v = view(
            1,
            50,
            &[
                (2, Some(("1.0.0", 50, Serving::Draining))),
                (3, Some(("1.0.0", 50, OK))),
            ],
        );
        assert!(!go(turn(&v, "1.1.0")));
    }

    #[test]
    fn five_nodes_spare_two_and_a_failed_member_holds_the_rollout() {
        let on = Some(("1.0.0", 9, OK));
        // Member 1 and member 2 may be away together.
        let v2 = view(
            2,
            9,
            &[
                (1, on.clone()),
                (3, on.clone()),
                (4, on.clone()),
                (5, on.clone()),
            ],
        );
        assert!(go(turn(&v2, "1.1.0")));
        // Member 3 waits for them.
        let v3 = view(
            3,
            9,
            &[(1, None), (2, on.clone()), (4, on.clone()), (5, on.clone())],
        );
        assert!(!go(turn(&v3, "1.1.0")));
        // A member that rolled back stays on 1.0.0 and serving: the ones after it wait.
        let after = view(2, 9, &[(1, on)]);
        assert!(!go(turn(&after, "1.1.0")));
    }

    #[test]
    fn a_node_not_serving_or_not_voting_goes_at_once() {
        let mut v = view(1, 50, &[(2, None), (3, None)]);
        v.serving = Serving::Diverged {
            reason: "root differs".into(),
        };
        assert!(go(turn(&v, "1.1.0")));
        let mut v = view(1, 50, &[(2, None), (3, None)]);
        v.role = LogRole::Learner;
        assert!(go(turn(&v, "1.1.0")));
        // A subnet of one has nothing to wait for.
        assert!(go(turn(&view(1, 5, &[]), "1.1.0")));
    }
}
