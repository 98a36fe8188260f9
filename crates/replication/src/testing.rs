//! Members of a group on one machine, for tests: each on its own runtime, serving its peer
//! routes over real HTTP on loopback, with its log in its own folder. [`Member::kill`]
//! drops the runtime, so its server, its connections and its engine end at once, as when
//! its process dies; [`Member::start`] brings it back from its folder on the same port.

use crate::{Replicated, ReplicationError, Settings, StateMachine};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One member: its id, port and folder, and while it runs, its runtime and node.
pub struct Member {
    pub id: u64,
    pub port: u16,
    /// The port of the application's interface ([`Member::serve`]; 0 until served).
    pub api_port: u16,
    pub dir: PathBuf,
    /// The engine's timing and snapshots ([`settings`] unless a test changes them).
    pub settings: Settings,
    running: Option<(tokio::runtime::Runtime, Replicated)>,
}

/// Member `id`'s node key (fixed, so a restarted member has the same).
pub fn key(id: u64) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[id as u8; 32])
}

/// The public keys of members 1 to 7: the members of every test group.
pub fn members_keys() -> BTreeMap<u64, [u8; 32]> {
    (1..=7)
        .map(|id| (id, key(id).verifying_key().to_bytes()))
        .collect()
}

/// Fast elections, so that tests spend little time waiting for a leader.
pub fn settings() -> Settings {
    Settings {
        heartbeat: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
        ..Settings::default()
    }
}

impl Member {
    /// A member keeping its files in `dir` (made if missing), not started.
    pub fn new(id: u64, dir: PathBuf) -> Member {
        std::fs::create_dir_all(&dir).expect("a member's folder");
        Member {
            id,
            port: 0,
            api_port: 0,
            dir,
            settings: settings(),
            running: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Start (or restart) over `app`, serving the engine's peer routes only.
    pub fn start(&mut self, app: Arc<dyn StateMachine>) {
        self.start_with(app, |_| axum::Router::new());
    }

    /// Start (or restart) over `app`, the log in `raft.redb` of its folder, serving the
    /// engine's peer routes and the application's (`extra`, made from the node). A killed
    /// member's port and database may stay held a moment while its last tasks end: both
    /// are retried for a few seconds.
    pub fn start_with(
        &mut self,
        app: Arc<dyn StateMachine>,
        extra: impl FnOnce(&Replicated) -> axum::Router,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let listener = retry(self.id, || {
            rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port)))
                .map_err(|e| e.to_string())
        });
        self.port = listener.local_addr().expect("a bound port").port();
        let log = self.dir.join("raft.redb");
        let node = retry(self.id, || {
            let identity = crate::auth::Identity::new(self.id, key(self.id), members_keys());
            match rt.block_on(Replicated::start(
                self.id,
                &log,
                app.clone(),
                identity,
                self.settings.clone(),
            )) {
                Ok(n) => Ok(n),
                Err(e @ ReplicationError::OpenLog { .. }) => Err(e.to_string()),
                Err(e) => panic!("node {}: {e}", self.id),
            }
        });
        let router = node.router_with(extra(&node));
        rt.spawn(async move { axum::serve(listener, router).await });
        self.running = Some((rt, node));
    }

    /// End it at once, as a killed process (tasks are dropped; blocking disk writes get a
    /// moment to finish, as a dying process's last write would reach the disk or not).
    pub fn kill(&mut self) {
        if let Some((rt, node)) = self.running.take() {
            drop(node);
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// The running node.
    pub fn node(&self) -> &Replicated {
        &self.running.as_ref().expect("a running member").1
    }

    /// Run `f` on this member's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.running
            .as_ref()
            .expect("a running member")
            .0
            .block_on(f)
    }

    /// Propose `command` through this member: the application's answer.
    pub fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ReplicationError> {
        self.block_on(self.node().propose(command))
            .map(|p| p.answer)
    }

    /// Run `f` in the background on this member's runtime (it ends when the member is killed).
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.running.as_ref().expect("a running member").0.spawn(f);
    }

    /// Serve `router` (the application's own interface) on this member's runtime, on the
    /// port it had before if it served one: it ends when the member is killed.
    pub fn serve(&mut self, router: axum::Router) -> u16 {
        let rt = &self.running.as_ref().expect("a running member").0;
        let listener = retry(self.id, || {
            rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.api_port)))
                .map_err(|e| e.to_string())
        });
        self.api_port = listener.local_addr().expect("a bound port").port();
        rt.spawn(async move { axum::serve(listener, router).await });
        self.api_port
    }
}

fn retry<T>(id: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(t) => return t,
            Err(e) if Instant::now() < deadline => {
                eprintln!("node {id}: {e}; again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("node {id}: {e}"),
        }
    }
}

/// Make the running `members` one group (through the first).
pub fn initialize(members: &[Member]) {
    let all: BTreeMap<u64, String> = members.iter().map(|m| (m.id, m.url())).collect();
    members[0]
        .block_on(members[0].node().initialize(all))
        .expect("initializing the group");
}

/// The leader the running members agree on (waits up to 20 s).
pub fn leader(members: &[Member]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<Option<u64>> = members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| m.node().leader())
            .collect();
        if let Some(Some(l)) = seen.first() {
            let runs = members.iter().any(|m| m.id == *l && m.is_running());
            if runs && seen.iter().all(|s| *s == Some(*l)) {
                return *l;
            }
        }
        assert!(Instant::now() < deadline, "no agreed leader: {seen:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait (up to 30 s) until `done` holds for every running member.
pub fn until_all(members: &[Member], what: &str, done: impl Fn(&Member) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !members.iter().filter(|m| m.is_running()).all(&done) {
        assert!(Instant::now() < deadline, "not every member: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
