//! The host side of the host-guest channel: what the agent answers, and the connection to
//! QEMU's virtio-serial socket (kept up across guest reboots).

use crate::config::HostosConfig;
use crate::upgrader::Upgrader;
use crate::Shared;
use host_channel::{Host, Limits, Refusal, Server, UpgradeAnswer};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Answers guest requests. The rate limits live in one [`Server`] per agent, so a guest
/// cannot reset them by reconnecting.
pub struct AgentHost {
    pub cfg: HostosConfig,
    pub shared: Shared,
    pub upgrader: Arc<Upgrader>,
}

impl AgentHost {
    pub fn new(cfg: HostosConfig, shared: Shared, upgrader: Arc<Upgrader>) -> Self {
        AgentHost {
            cfg,
            shared,
            upgrader,
        }
    }
}

/// The [`Host`] the channel server calls (a handle shared with the supervisor).
pub struct HostHandle(pub Arc<AgentHost>);

impl Host for HostHandle {
    fn hostos_version(&self) -> String {
        crate::hostos_version(&self.0.cfg)
    }

    fn notify(&self, message: &str) {
        tracing::info!("guest notify: {message}");
        crate::console(&self.0.cfg).line(&format!("GUESTOS NOTIFY: {message}"));
        let mut s = self.0.shared.lock().expect("status lock");
        s.notifications += 1;
        s.last_notification = Some(message.to_string());
    }

    fn request_hostos_upgrade(&self) -> Result<UpgradeAnswer, Refusal> {
        self.0
            .upgrader
            .request()
            .map_err(|e| Refusal(e.to_string()))
    }

    fn answered(&self, stats: &host_channel::Stats) {
        self.0.shared.lock().expect("status lock").channel = stats.clone();
    }
}

/// Serve the channel of one VM life until `stop`: connect to QEMU's socket, serve, and
/// reconnect when the connection drops.
pub fn serve_channel(sock: &Path, host: Arc<AgentHost>, stop: &AtomicBool) {
    let mut server = Server::new(HostHandle(host.clone()), Limits::default());
    while !stop.load(Ordering::Relaxed) {
        let stream = match vm_runner::socket_path(sock).and_then(|p| {
            UnixStream::connect(&p).map_err(|e| vm_runner::VmError::Io {
                what: "connecting to",
                path: p,
                source: e,
            })
        }) {
            Ok(s) => s,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        // Short read timeouts let the loop notice `stop`; a timeout is not an error.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut reader = TimeoutReader {
            inner: stream.try_clone().expect("clone socket"),
            stop,
        };
        let mut writer = stream;
        if let Err(e) = server.serve(&mut reader, &mut writer) {
            tracing::debug!("host channel connection ended: {e}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Turns read timeouts into retries, and into end-of-stream once asked to stop.
struct TimeoutReader<'a> {
    inner: UnixStream,
    stop: &'a AtomicBool,
}

impl std::io::Read for TimeoutReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::Relaxed) {
                        return Ok(0);
                    }
                }
                other => return other,
            }
        }
    }
}
