//! Three members over real HTTP on this machine ([`replication::testing`]: killing one ends
//! its server, connections and engine at once), each with its log and state in its folder.
//!
//! The application is a list of commands kept in a file (written whole, then renamed, with
//! its position): the commands every node applied, in order, are its whole state, so "the
//! same state everywhere" is list equality. A command seen before is not applied again, as
//! the replica does with request ids: a client may resend a command it got no answer for.

use replication::auth::Identity;
use replication::testing::{initialize, key, leader, members_keys, until_all, Member};
use replication::{AppError, StateMachine};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default, serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
struct ListState {
    commands: Vec<String>,
    position: Option<Vec<u8>>,
}

struct List {
    path: PathBuf,
    state: Mutex<ListState>,
}

impl List {
    fn open(path: PathBuf) -> List {
        let state = std::fs::read(&path)
            .ok()
            .map(|b| serde_json::from_slice(&b).expect("the test's own state file"))
            .unwrap_or_default();
        List {
            path,
            state: Mutex::new(state),
        }
    }

    fn write(&self, s: &ListState) -> Result<(), AppError> {
        let tmp = self.path.with_extension("tmp");
        let f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&f, s)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }

    fn commands(&self) -> Vec<String> {
        self.state.lock().unwrap().commands.clone()
    }
}

impl StateMachine for List {
    fn apply(&self, command: Option<&[u8]>, position: &[u8]) -> Result<Vec<u8>, AppError> {
        let mut s = self.state.lock().unwrap();
        let mut next = s.clone();
        let mut answer = b"duplicate".to_vec();
        if let Some(c) = command {
            let c = String::from_utf8(c.to_vec())?;
            if !next.commands.contains(&c) {
                next.commands.push(c);
                answer = next.commands.len().to_string().into_bytes();
            }
        }
        next.position = Some(position.to_vec());
        self.write(&next)?;
        *s = next;
        Ok(answer)
    }

    fn position(&self) -> Option<Vec<u8>> {
        self.state.lock().unwrap().position.clone()
    }

    fn snapshot(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), AppError> {
        let s = self.state.lock().unwrap();
        Ok((serde_json::to_vec(&s.commands)?, s.position.clone()))
    }

    fn restore(&self, state: &[u8], position: &[u8]) -> Result<(), AppError> {
        let next = ListState {
            commands: serde_json::from_slice(state)?,
            position: Some(position.to_vec()),
        };
        self.write(&next)?;
        *self.state.lock().unwrap() = next;
        Ok(())
    }
}

/// A member's application, read back from its folder (the running node's is the same
/// file's content).
fn list(m: &Member) -> Arc<List> {
    Arc::new(List::open(m.dir.join("state.json")))
}

/// Each member's app, by index: kept so the test reads what the node applied.
struct Cluster {
    members: Vec<Member>,
    apps: Vec<Arc<List>>,
}

impl Cluster {
    fn new(dir: &Path) -> Cluster {
        let mut members: Vec<Member> = (1..=3)
            .map(|id| Member::new(id, dir.join(format!("node{id}"))))
            .collect();
        let mut apps = Vec::new();
        for m in &mut members {
            let app = list(m);
            m.start(app.clone());
            apps.push(app);
        }
        initialize(&members);
        Cluster { members, apps }
    }

    fn start(&mut self, i: usize) {
        let app = list(&self.members[i]);
        self.members[i].start(app.clone());
        self.apps[i] = app;
    }

    fn propose(&self, i: usize, c: &str) -> Result<Vec<u8>, replication::ReplicationError> {
        self.members[i].propose(c.as_bytes().to_vec())
    }

    fn commands(&self, i: usize) -> Vec<String> {
        self.apps[i].commands()
    }

    fn leader(&self) -> usize {
        leader(&self.members) as usize - 1
    }

    /// Wait until every running member holds `want`.
    fn converge(&self, want: &[String]) {
        until_all(&self.members, &format!("{} commands", want.len()), |m| {
            self.apps[m.id as usize - 1].commands() == want
        });
    }

    /// Send `command` through `via` until it is acknowledged (a resend of an unanswered
    /// command is safe: the application drops duplicates); the number of tries.
    fn until_acked(&self, via: &[usize], command: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tries = 0;
        loop {
            let i = via[tries % via.len()];
            tries += 1;
            match self.propose(i, command) {
                Ok(_) => return tries,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{command} never acknowledged: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn stop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}

#[test]
fn commands_through_any_member_reach_all_in_one_order_and_survive_a_killed_leader() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path());
    c.leader();

    // Through every member in turn (followers forward to the leader).
    let mut acked = Vec::new();
    for i in 0..30 {
        let cmd = format!("call-{i}");
        c.propose(i % 3, &cmd)
            .unwrap_or_else(|e| panic!("{cmd} via node {}: {e}", i % 3 + 1));
        acked.push(cmd);
    }
    c.converge(&acked);

    // Kill the leader in the middle of a stream sent through the others.
    let victim = c.leader();
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let mut resent = 0;
    for i in 30..60 {
        if i == 40 {
            c.members[victim].kill();
        }
        let cmd = format!("call-{i}");
        resent += c.until_acked(&others, &cmd) - 1;
        acked.push(cmd);
    }
    eprintln!(
        "leader {} killed after call-39; {resent} resends",
        victim + 1
    );
    // Every acknowledged command is there, once, in the order it was acknowledged.
    c.converge(&acked);
    assert_ne!(c.leader(), victim);

    // The killed node comes back from its folder and catches up from the log.
    c.start(victim);
    c.converge(&acked);
    // A member restarted without missing anything applies nothing twice.
    let before = c.commands(others[0]);
    c.members[others[0]].kill();
    c.start(others[0]);
    assert_eq!(c.commands(others[0]), before);
    c.propose(others[0], "after-restart").unwrap();
    acked.push("after-restart".into());
    c.converge(&acked);

    // A read through a follower after a write sees the write.
    let l = c.leader();
    let follower = (0..3).find(|i| *i != l).unwrap();
    c.propose(l, "read-me").unwrap();
    let m = &c.members[follower];
    m.block_on(m.node().read_barrier()).unwrap();
    assert!(c.commands(follower).contains(&"read-me".to_string()));
    c.stop();
}

#[test]
fn a_minority_cut_off_from_the_rest_acknowledges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path());
    let l = c.leader();
    c.propose(l, "before").unwrap();
    // The leader alone: the two others are gone.
    for i in (0..3).filter(|i| *i != l) {
        c.members[i].kill();
    }
    let started = Instant::now();
    let r = c.propose(l, "alone");
    assert!(r.is_err(), "a lone leader acknowledged a command: {r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let m = &c.members[l];
    assert!(
        m.block_on(m.node().read_barrier()).is_err(),
        "a lone node answered a linearizable read"
    );
    // The others come back: the group goes on; the unacknowledged command may or may not
    // be there, but every member agrees.
    for i in (0..3).filter(|i| *i != l) {
        c.start(i);
    }
    let now = c.leader();
    c.propose(now, "after").unwrap();
    let want = c.commands(now);
    assert!(want.starts_with(&["before".to_string()]) && want.ends_with(&["after".to_string()]));
    c.converge(&want);
    c.stop();
}

/// POST `body` to `path` of `url`, signed by `by` (nothing: unsigned); the HTTP status.
fn post(url: &str, path: &str, body: &[u8], by: Option<&Identity>) -> u16 {
    let mut req = ureq::post(&format!("{url}{path}"));
    for (name, value) in by.map(|i| i.sign(path, body)).into_iter().flatten() {
        req = req.set(name, &value);
    }
    match req.send_bytes(body) {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{path}: {e}"),
    }
}

const ROUTES: [&str; 5] = [
    "/raft/append",
    "/raft/vote",
    "/raft/snapshot",
    "/raft/propose",
    "/raft/read-index",
];

#[test]
fn garbage_from_a_member_is_refused_and_the_member_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path());
    c.leader();
    let member = Identity::new(3, key(3), members_keys());
    for path in ROUTES {
        let status = post(
            &c.members[1].url(),
            path,
            b"\xff\xfe not CBOR",
            Some(&member),
        );
        assert_eq!(status, 400, "{path}");
    }
    c.propose(1, "still-fine").unwrap();
    c.converge(&["still-fine".to_string()]);
    c.stop();
}

/// Someone outside the group, or posing as a member without its key, or replaying a
/// member's old message, is not heard: a vote request for a far higher term would otherwise
/// depose the leader, an append would rewrite the log.
#[test]
fn forged_unsigned_and_stale_peer_messages_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path());
    let l = c.leader();
    c.propose(l, "before").unwrap();
    let term = c.members[l].node().term();
    let coup = openraft::raft::VoteRequest::new(openraft::Vote::new(term + 1000, 9), None);
    let body = serde_cbor::to_vec(&coup).unwrap();
    let outsider = Identity::new(9, key(9), members_keys());
    let posing = Identity::new(2, key(9), members_keys());
    let url = c.members[l].url();
    for path in ROUTES {
        assert_eq!(post(&url, path, &body, None), 401, "unsigned {path}");
        // Member 9 is not in the group (it trusts 1 to 7).
        assert_eq!(
            post(&url, path, &body, Some(&outsider)),
            401,
            "outsider {path}"
        );
        assert_eq!(post(&url, path, &body, Some(&posing)), 401, "posing {path}");
    }
    // A trusted key's genuine message, but from the past.
    let stale = Identity::new(3, key(3), members_keys());
    let mut h = stale.sign("/raft/vote", &body);
    h[1].1 = (h[1].1.parse::<u64>().unwrap() - 120_000).to_string();
    let mut req = ureq::post(&format!("{url}/raft/vote"));
    for (name, value) in &h {
        req = req.set(name, value);
    }
    assert!(matches!(
        req.send_bytes(&body),
        Err(ureq::Error::Status(401, _))
    ));
    assert_eq!(c.leader(), l, "the leader was deposed");
    assert_eq!(c.members[l].node().term(), term, "the term moved");
    c.propose(l, "after").unwrap();
    c.converge(&["before".to_string(), "after".to_string()]);
    c.stop();
}

/// Membership follows the registry through any member: a follower asks the leader to drop
/// a member (the dropped one is still heard until it has left, so even the last vote it
/// casts counts), a request made from an older registry view is refused and changes
/// nothing, and the dropped member is added back and catches up from the log.
#[test]
fn membership_changes_go_through_the_leader_and_an_older_registry_view_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(dir.path());
    let l = c.leader();
    c.propose(l, "first").unwrap();
    let urls = |ids: &[usize]| -> std::collections::BTreeMap<u64, String> {
        ids.iter()
            .map(|i| (c.members[*i].id, c.members[*i].url()))
            .collect()
    };
    let follower = (l + 1) % 3;
    let dropped = (l + 2) % 3;
    let voters = |i: usize| c.members[i].node().view().voters;
    let m = &c.members[follower];
    m.block_on(m.node().request_members(20, urls(&[l, follower])))
        .unwrap();
    let want: Vec<u64> = {
        let mut v = vec![c.members[l].id, c.members[follower].id];
        v.sort();
        v
    };
    let kept = [c.members[l].id, c.members[follower].id];
    until_all(&c.members, "two voters", |m| {
        !kept.contains(&m.id) || m.node().view().voters == want
    });
    // The dropped member never hears of the final change; it learns it was let go by
    // asking the others. The others were not.
    let gone = &c.members[dropped];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gone.block_on(gone.node().let_go()) {
        assert!(
            Instant::now() < deadline,
            "the dropped member never learned it was let go"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in [l, follower] {
        let k = &c.members[i];
        assert!(!k.block_on(k.node().let_go()));
    }
    // A member whose view of the registry is older asks for all three back: refused.
    let e = m
        .block_on(m.node().request_members(10, urls(&[0, 1, 2])))
        .unwrap_err();
    assert!(
        e.to_string().contains("newer than the one asked for"),
        "{e}"
    );
    assert_eq!(voters(l), want);
    // The two go on without the third.
    c.propose(l, "second").unwrap();
    // A newer view adds it back: it catches up from the log and votes again.
    m.block_on(m.node().request_members(30, urls(&[0, 1, 2])))
        .unwrap();
    let all: Vec<u64> = (1..=3).collect();
    until_all(&c.members, "three voters", |m| {
        m.node().view().voters == all
    });
    c.converge(&["first".to_string(), "second".to_string()]);
    assert_eq!(c.commands(dropped), ["first", "second"]);
    c.stop();
}
