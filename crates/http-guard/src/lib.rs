//! Serving HTTP to clients that may be hostile, with every resource bounded.
//!
//! `axum::serve` accepts every connection and keeps it as long as the client wants: about
//! 20,000 idle connections exhaust a process's descriptors, after which it can neither
//! answer nor write a file. [`serve`] puts an axum [`Router`] behind these limits:
//!
//! | limit | stops |
//! |---|---|
//! | connections in all ([`Limits::max_connections`]), kept below the descriptor limit with [`Limits::fd_reserve`] to spare | descriptor exhaustion; the process can still open files |
//! | connections per client address (an IPv6 client counts by its /64) | one client taking every slot |
//! | the request head must arrive within [`Limits::header_timeout`], also between keep-alive requests | slowloris, idle keep-alive |
//! | no byte in either direction for [`Limits::idle_timeout`] | stalled readers and writers, idle HTTP/2 |
//! | a connection lives at most [`Limits::max_age`] | slow-read of large answers |
//!
//! A connection over a cap is closed at once (the client sees a reset, not a hang) and
//! counted. [`serve_with`] adds TLS (rustls), its handshake under the header timeout.
//! Request bodies and handler time are the router's business (a body limit and a
//! timeout layer). Each connection gets its peer address as axum's `ConnectInfo`.
//!
//! ```
//! use axum::{routing::get, Router};
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! let limits = http_guard::Limits { max_connections: 64, ..Default::default() };
//! let (addr, stats) = http_guard::spawn("127.0.0.1:0".parse().unwrap(), app, limits).unwrap();
//! let mut s = std::net::TcpStream::connect(addr).unwrap();
//! use std::io::{Read, Write};
//! s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").unwrap();
//! let mut answer = String::new();
//! s.read_to_string(&mut answer).unwrap();
//! assert!(answer.ends_with("hello"));
//! assert_eq!(stats.snapshot().accepted, 1);
//! ```

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// What one server allows.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_age: Duration,
    /// Descriptors kept free for everything but connections (files, the database, logs).
    pub fd_reserve: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_client: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_age: Duration::from_secs(600),
            fd_reserve: 256,
        }
    }
}

/// Counters of one server, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused_full: AtomicU64,
    refused_per_client: AtomicU64,
    timed_out: AtomicU64,
    accept_errors: AtomicU64,
    tls_failed: AtomicU64,
    cap: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Connections open now.
    pub open: u64,
    pub accepted: u64,
    /// Closed at once because [`Limits::max_connections`] (or the descriptor limit) was reached.
    pub refused_full: u64,
    /// Closed at once because their client had [`Limits::max_connections_per_client`] open.
    pub refused_per_client: u64,
    /// Closed for passing [`Limits::max_age`].
    pub timed_out: u64,
    /// `accept` failures (e.g. out of descriptors), each followed by a short pause.
    pub accept_errors: u64,
    /// TLS handshakes that failed or did not finish within the header timeout.
    pub tls_failed: u64,
    /// The connection cap in force (the configured one, lowered to fit the descriptor limit).
    pub cap: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            open: l(&self.open),
            accepted: l(&self.accepted),
            refused_full: l(&self.refused_full),
            refused_per_client: l(&self.refused_per_client),
            timed_out: l(&self.timed_out),
            accept_errors: l(&self.accept_errors),
            tls_failed: l(&self.tls_failed),
            cap: l(&self.cap),
        }
    }
}

/// Raise the soft descriptor limit to the hard one; returns the soft limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// The connection cap that leaves `limits.fd_reserve` descriptors free.
fn effective_cap(limits: &Limits) -> usize {
    let fds = raise_fd_limit().saturating_sub(limits.fd_reserve);
    limits.max_connections.min(fds as usize).max(1)
}

/// The address a per-client limit counts by: an IPv4 address, or an IPv6 /64 (one
/// subscriber's allocation, which a single attacker holds whole).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

struct Tracker {
    cap: usize,
    per_client: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
    stats: Arc<Stats>,
}

/// A connection's place under the caps; released when dropped.
struct Slot {
    tracker: Arc<Tracker>,
    key: IpAddr,
}

impl Tracker {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = client_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if self.stats.open.load(Ordering::Relaxed) as usize >= self.cap {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let n = counts.entry(key).or_insert(0);
        if *n >= self.per_client {
            self.stats
                .refused_per_client
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Slot {
            tracker: self.clone(),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .tracker
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
        self.tracker.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve `app` on `listener` under `limits` until the listener fails for good.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<Stats>,
) -> io::Result<()> {
    serve_with(listener, app, limits, stats, None).await
}

/// [`serve`] over TLS when `tls` is given: the handshake must finish within the header
/// timeout, and ALPN (as `tls` offers it) picks HTTP/2 or HTTP/1.1.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<Stats>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let cap = effective_cap(&limits);
    stats.cap.store(cap as u64, Ordering::Relaxed);
    let tracker = Arc::new(Tracker {
        cap,
        per_client: limits.max_connections_per_client.max(1),
        counts: Mutex::new(HashMap::new()),
        stats: stats.clone(),
    });
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or a transient network error: pause rather than spin.
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = tracker.admit(peer.ip()) else {
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                let s = stats.snapshot();
                tracing::warn!(
                    "refusing connections: {} open of {cap}; refused so far {} (server full), {} (per client, latest {})",
                    s.open, s.refused_full, s.refused_per_client, peer.ip()
                );
                last_refusal_log = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let app = app.clone();
        let limits = limits.clone();
        let stats = stats.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            // Until the first byte, the header timeout applies (HTTP/1 or HTTP/2 is decided
            // only after reading, before hyper's own header timer runs).
            let io = IdleGuard::new(stream, limits.header_timeout, limits.idle_timeout);
            let Some(tls) = tls else {
                return serve_connection(io, peer, app, &limits, &stats).await;
            };
            match tokio::time::timeout(limits.header_timeout, tls.accept(io)).await {
                Ok(Ok(io)) => serve_connection(io, peer, app, &limits, &stats).await,
                Ok(Err(e)) => {
                    stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                }
                Err(_) => {
                    stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "TLS handshake not done within {:?}", limits.header_timeout);
                }
            }
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    stats: &Stats,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(64 * 1024);
    let conn = builder.serve_connection(io, svc);
    match tokio::time::timeout(limits.max_age, conn).await {
        Err(_) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection closed: older than {:?}", limits.max_age);
        }
        Ok(Err(e)) => tracing::debug!(%peer, "connection ended: {e}"),
        Ok(Ok(())) => {}
    }
}

/// Serve on a background thread with its own runtime (daemons, tests, embedding); returns
/// the bound address and the server's counters. The server runs until the process ends.
pub fn spawn(
    listen: SocketAddr,
    app: Router,
    limits: Limits,
) -> io::Result<(SocketAddr, Arc<Stats>)> {
    spawn_with(listen, app, limits, None)
}

/// [`spawn`], over TLS when `tls` is given (see [`serve_with`]).
pub fn spawn_with(
    listen: SocketAddr,
    app: Router,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<(SocketAddr, Arc<Stats>)> {
    let std_listener = std::net::TcpListener::bind(listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let stats = Arc::new(Stats::default());
    let s = stats.clone();
    std::thread::Builder::new()
        .name(format!("http {addr}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("HTTP server on {addr}: no runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => {
                        if let Err(e) = serve_with(l, app, limits, s, tls).await {
                            tracing::error!("HTTP server on {addr}: {e}");
                        }
                    }
                    Err(e) => tracing::error!("HTTP server on {addr}: {e}"),
                }
            });
        })?;
    Ok((addr, stats))
}

/// A stream that fails with `TimedOut` when no byte arrived within `first`, or later when no
/// byte moved either way for `idle`.
struct IdleGuard {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl IdleGuard {
    fn new(inner: TcpStream, first: Duration, idle: Duration) -> Self {
        IdleGuard {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(first)),
        }
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Called when the inner stream is not ready: ready with an error once idle too long.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }

    /// A write's outcome: bytes written are progress; not ready past the deadline is an error.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn idle_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
}

impl AsyncRead for IdleGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for IdleGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::io::{Read, Write};

    fn get_from(addr: SocketAddr, source: &str) -> io::Result<String> {
        let sock = socket_from(source)?;
        sock.connect(&addr.into())?;
        let mut s = std::net::TcpStream::from(sock);
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// A TCP socket bound to a loopback source address (127.0.0.0/8 is all ours).
    fn socket_from(source: &str) -> io::Result<socket2::Socket> {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        let src: SocketAddr = format!("{source}:0").parse().expect("address");
        sock.bind(&src.into())?;
        Ok(sock)
    }

    fn app() -> Router {
        Router::new().route(
            "/who",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
    }

    #[test]
    fn a_flood_from_one_client_leaves_room_for_others_and_drains() {
        let limits = Limits {
            max_connections: 300,
            max_connections_per_client: 40,
            header_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let (addr, stats) = spawn("127.0.0.1:0".parse().unwrap(), app(), limits).unwrap();
        // 1000 idle connections from one address: they connect (the kernel accepts them)
        // but only 40 get a slot; the rest are closed at once.
        let t = std::time::Instant::now();
        let flood: Vec<_> = (0..1000)
            .filter_map(|_| {
                let s = socket_from("127.0.0.2").ok()?;
                s.connect(&addr.into()).ok()?;
                Some(s)
            })
            .collect();
        let opened_in = t.elapsed();
        assert!(flood.len() > 900, "only {} connected", flood.len());
        let n = flood.len() as u64;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while {
            let s = stats.snapshot();
            s.accepted + s.refused_per_client < n
        } && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Slots freed by the header timeout while the flood went on were taken again, but
        // never more than 40 at a time: at most 40 per second of the flood (however slowly
        // this machine opened it), and the rest refused.
        let s = stats.snapshot();
        assert!(s.open <= 40, "{s:?}");
        let allowed = 40 * (opened_in.as_secs() + 2);
        assert!(s.accepted <= allowed, "{s:?}, at most {allowed} allowed");
        assert!(s.refused_per_client > 0, "{s:?}");
        // Another client is answered at once, while the flood still holds its slots.
        assert!(get_from(addr, "127.0.0.3").unwrap().ends_with("127.0.0.3"));
        // The flooding client's idle connections are closed by the header timeout, after
        // which it is served again.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(stats.snapshot().open, 0, "{:?}", stats.snapshot());
        assert!(get_from(addr, "127.0.0.2").unwrap().ends_with("127.0.0.2"));
        drop(flood);
    }

    #[test]
    fn the_global_cap_holds_and_a_trickled_head_times_out() {
        let limits = Limits {
            max_connections: 10,
            max_connections_per_client: 10,
            header_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let (addr, stats) = spawn("127.0.0.1:0".parse().unwrap(), app(), limits).unwrap();
        let held: Vec<_> = (0..30)
            .map(|i| {
                let s = socket_from(&format!("127.0.1.{}", i + 1)).unwrap();
                s.connect(&addr.into()).unwrap();
                s
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stats.snapshot().refused_full < 20 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = stats.snapshot();
        assert_eq!((s.open, s.refused_full, s.cap), (10, 20, 10), "{s:?}");
        drop(held);
        // A head trickled one byte every 200 ms, never complete: cut after 1 s.
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        for b in b"GET /who HTTP/1.1\r\nhost: x\r\n" {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mut rest = Vec::new();
        let r = slow.read_to_end(&mut rest);
        assert!(
            !matches!(&r, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
            "the trickled head was not cut: {r:?}"
        );
        assert!(get_from(addr, "127.0.0.1").unwrap().ends_with("127.0.0.1"));
    }

    #[test]
    fn a_tls_handshake_that_stalls_or_is_garbage_is_cut_and_others_are_served() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = CertificateDer::from(pair.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(pair.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let limits = Limits {
            header_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let (addr, stats) = spawn_with(
            "127.0.0.1:0".parse().unwrap(),
            app(),
            limits,
            Some(Arc::new(server)),
        )
        .unwrap();
        // Connected, never a byte: closed after the header timeout, counted.
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let r = silent.read(&mut buf);
        assert!(
            matches!(r, Ok(0) | Err(_)) && started.elapsed() < Duration::from_secs(4),
            "{r:?}"
        );
        // Not TLS at all: refused, counted.
        let mut plain = std::net::TcpStream::connect(addr).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        plain
            .write_all(b"GET /who HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = plain.read_to_end(&mut out);
        assert!(
            !String::from_utf8_lossy(&out).contains("127.0.0.1"),
            "served without TLS"
        );
        // The server counts a failed handshake after closing it: give the count a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stats.snapshot().tls_failed < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(stats.snapshot().tls_failed, 2, "{:?}", stats.snapshot());
        // A real TLS client is served.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            Arc::new(client),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let sock = std::net::TcpStream::connect(addr).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(b"GET /who HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = tls.read_to_string(&mut answer);
        assert!(answer.ends_with("127.0.0.1"), "{answer}");
    }
}
