//! Helpers for the system tests.
//!
//! [`HttpServer`]: a small HTTP/1.1 file server on loopback — GET of mapped files or of a
//! directory tree, `Range: bytes=N-` requests, optional throttling — standing in for package
//! mirrors and registry mirrors (including malicious ones whose files a test edits).
//!
//! ```no_run
//! let s = test_support::HttpServer::serve_dir("/tmp/mirror".into(), None);
//! println!("http://127.0.0.1:{}/v1/head.json", s.port);
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Resolver = Arc<dyn Fn(&str) -> Option<PathBuf> + Send + Sync>;

pub struct HttpServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
}

impl HttpServer {
    /// Serve `files` (URL path → file). `bytes_per_sec` throttles every response.
    pub fn start(files: Vec<(&str, PathBuf)>, bytes_per_sec: Option<u64>) -> HttpServer {
        let map: std::collections::HashMap<String, PathBuf> =
            files.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        Self::with_resolver(Arc::new(move |p| map.get(p).cloned()), bytes_per_sec)
    }

    /// Serve every file under `root` at its relative path.
    pub fn serve_dir(root: PathBuf, bytes_per_sec: Option<u64>) -> HttpServer {
        Self::with_resolver(
            Arc::new(move |p| {
                let rel = p.trim_start_matches('/');
                if rel.split('/').any(|c| c == ".." || c.is_empty()) {
                    return None;
                }
                let f = root.join(rel);
                f.is_file().then_some(f)
            }),
            bytes_per_sec,
        )
    }

    fn with_resolver(resolve: Resolver, bytes_per_sec: Option<u64>) -> HttpServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let sent = Arc::new(AtomicU64::new(0));
        let sent2 = sent.clone();
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let (conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                let resolve = resolve.clone();
                let stop3 = stop2.clone();
                let sent3 = sent2.clone();
                std::thread::spawn(move || {
                    serve_one(conn, &*resolve, bytes_per_sec, &stop3, &sent3)
                });
            }
        });
        HttpServer { port, stop, sent }
    }

    /// Body bytes written to clients so far, over all responses: a test waits on this to know
    /// a client is in the middle of a download instead of guessing with a sleep.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Wait until at least `bytes` body bytes have been sent; false on timeout.
    pub fn wait_sent(&self, bytes: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.bytes_sent() < bytes {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    /// URL of a path as a QEMU guest sees the host (user networking).
    pub fn guest_url(&self, path: &str) -> String {
        format!("http://10.0.2.2:{}{path}", self.port)
    }

    /// URL of a path on this machine.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_one(
    conn: std::net::TcpStream,
    resolve: &(dyn Fn(&str) -> Option<PathBuf> + Send + Sync),
    bytes_per_sec: Option<u64>,
    stop: &AtomicBool,
    total: &AtomicU64,
) {
    conn.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    // One request per connection (Connection: close), like a minimal static server.
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let mut range_start = 0u64;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let path = first
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let mut w = conn;
    let Some(file) = resolve(&path) else {
        let _ = w
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let Ok(mut f) = File::open(&file) else {
        let _ = w
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let head = if range_start > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n",
            len.saturating_sub(range_start),
            range_start,
            len.saturating_sub(1),
            len
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    if w.write_all(head.as_bytes()).is_err() || f.seek(SeekFrom::Start(range_start)).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).is_err() {
            return;
        }
        sent += n as u64;
        total.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(bps) = bytes_per_sec {
            let due = Duration::from_secs_f64(sent as f64 / bps as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
}
