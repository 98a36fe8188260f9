//! The host-guest channel.
//!
//! One protocol for every transport (virtio-serial here, vsock on hardware that has it): a
//! byte stream carrying JSON lines. A request is `{"v":1,"id":N,"req":{...}}`, an answer
//! `{"v":1,"id":N,"ok":{...}}` or `{"v":1,"id":N,"err":"..."}`. Lines are at most
//! [`MAX_LINE`] bytes; a longer line is discarded up to its newline and answered with an
//! error, so one bad message never desynchronizes the stream. Only the requests of
//! [`Request`] exist — protocol version, HostOS version, notify, request a HostOS upgrade —
//! and an upgrade request carries no URL or hash: the host decides from its own verified
//! registry view, so a compromised guest can at most trigger what governance approved.
//!
//! [`Server`] answers requests through a [`Host`] implementation with a rate limit per
//! request kind (a flooding guest is throttled and logged, never served faster);
//! [`Client`] is the guest side.
//!
//! ```
//! use host_channel::{Client, Host, Limits, Refusal, Reply, Request, Server, UpgradeAnswer};
//! struct H;
//! impl Host for H {
//!     fn hostos_version(&self) -> String { "1.0.0".into() }
//!     fn notify(&self, _m: &str) {}
//!     fn request_hostos_upgrade(&self) -> Result<UpgradeAnswer, Refusal> { Ok(UpgradeAnswer::UpToDate { version: "1.0.0".into() }) }
//! }
//! let mut server = Server::new(H, Limits::default());
//! let input = b"{\"v\":1,\"id\":1,\"req\":{\"type\":\"hostos-version\"}}\n".to_vec();
//! let mut out = Vec::new();
//! server.serve(&mut input.as_slice(), &mut out).unwrap();
//! assert!(String::from_utf8(out).unwrap().contains("\"version\":\"1.0.0\""));
//! ```

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

pub const PROTOCOL_VERSION: u32 = 1;
/// Longest line (request or answer) either side accepts, newline excluded.
pub const MAX_LINE: usize = 4096;
/// Longest notify message.
pub const MAX_NOTIFY: usize = 1024;
/// Name of the virtio-serial port (`/dev/virtio-ports/<name>` in the guest).
pub const PORT_NAME: &str = "org.icos.host.0";
/// vsock port on hardware with vsock.
pub const VSOCK_PORT: u32 = 19090;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    // Empty struct variants (not unit variants) so that unknown fields are refused.
    ProtocolVersion {},
    HostosVersion {},
    /// A message shown on the host console (and its log).
    Notify {
        message: String,
    },
    /// Ask the host to bring HostOS to the version governance assigned to this node.
    RequestHostosUpgrade {},
}

impl Request {
    fn kind(&self) -> usize {
        match self {
            Request::ProtocolVersion {} => 0,
            Request::HostosVersion {} => 1,
            Request::Notify { .. } => 2,
            Request::RequestHostosUpgrade {} => 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Reply {
    ProtocolVersion { version: u32 },
    HostosVersion { version: String },
    Notified,
    HostosUpgrade(UpgradeAnswer),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case", deny_unknown_fields)]
pub enum UpgradeAnswer {
    /// The host already runs the assigned version.
    UpToDate { version: String },
    /// An upgrade to the assigned version started (the host reboots when it is ready).
    Started { version: String },
    /// An upgrade is already under way.
    InProgress { version: String },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLine {
    v: u32,
    id: u64,
    req: Request,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AnswerLine {
    v: u32,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    ok: Option<Reply>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    err: Option<String>,
}

/// Why the host did not do what the guest asked; its text is what the guest is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// What the host does for each request.
pub trait Host {
    fn hostos_version(&self) -> String;
    fn notify(&self, message: &str);
    fn request_hostos_upgrade(&self) -> Result<UpgradeAnswer, Refusal>;
    /// Called after every answer with the server's counters (for status and metrics).
    fn answered(&self, _stats: &Stats) {}
}

/// Token buckets per request kind: `burst` requests at once, then one per `every`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub burst: [u32; 4],
    pub every: [Duration; 4],
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // protocol-version, hostos-version, notify, request-hostos-upgrade
            burst: [20, 20, 10, 3],
            every: [
                Duration::from_millis(100),
                Duration::from_millis(100),
                Duration::from_secs(1),
                Duration::from_secs(60),
            ],
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Counters of what the server did (for status and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub answered: u64,
    pub errors: u64,
    pub throttled: u64,
    pub oversized: u64,
}

pub struct Server<H: Host> {
    host: H,
    limits: Limits,
    buckets: [Bucket; 4],
    pub stats: Stats,
    last_throttle_log: Option<Instant>,
}

impl<H: Host> Server<H> {
    pub fn new(host: H, limits: Limits) -> Self {
        let now = Instant::now();
        let buckets = std::array::from_fn(|i| Bucket {
            tokens: f64::from(limits.burst[i]),
            last: now,
        });
        Server {
            host,
            limits,
            buckets,
            stats: Stats::default(),
            last_throttle_log: None,
        }
    }

    pub fn host(&self) -> &H {
        &self.host
    }

    fn allow(&mut self, kind: usize) -> bool {
        let b = &mut self.buckets[kind];
        let now = Instant::now();
        let refill =
            now.duration_since(b.last).as_secs_f64() / self.limits.every[kind].as_secs_f64();
        b.tokens = (b.tokens + refill).min(f64::from(self.limits.burst[kind]));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Answer one request line (without its newline).
    pub fn answer(&mut self, line: &[u8]) -> Vec<u8> {
        let (id, result) = self.handle(line);
        let a = match result {
            Ok(reply) => AnswerLine {
                v: PROTOCOL_VERSION,
                id,
                ok: Some(reply),
                err: None,
            },
            Err(e) => {
                self.stats.errors += 1;
                AnswerLine {
                    v: PROTOCOL_VERSION,
                    id,
                    ok: None,
                    err: Some(e),
                }
            }
        };
        self.stats.answered += 1;
        self.host.answered(&self.stats);
        let mut out = serde_json::to_vec(&a).expect("answers serialize");
        out.push(b'\n');
        out
    }

    fn handle(&mut self, line: &[u8]) -> (u64, Result<Reply, String>) {
        // Find the id even in a request we cannot otherwise accept, to answer it properly.
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return (0, Err(format!("malformed request: {e}"))),
        };
        let id = value.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
        let version = value.get("v").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(PROTOCOL_VERSION) {
            return (
                id,
                Err(format!(
                    "unsupported protocol version {version} (this host speaks {PROTOCOL_VERSION})"
                )),
            );
        }
        let req: RequestLine = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => return (id, Err(format!("malformed request: {e}"))),
        };
        if !self.allow(req.req.kind()) {
            self.stats.throttled += 1;
            let now = Instant::now();
            if self
                .last_throttle_log
                .is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
            {
                tracing::warn!(
                    throttled = self.stats.throttled,
                    "guest is flooding the host channel; requests are being refused"
                );
                self.last_throttle_log = Some(now);
            }
            return (
                id,
                Err("rate limited: too many requests of this kind".into()),
            );
        }
        let result = match req.req {
            Request::ProtocolVersion {} => Ok(Reply::ProtocolVersion {
                version: PROTOCOL_VERSION,
            }),
            Request::HostosVersion {} => Ok(Reply::HostosVersion {
                version: self.host.hostos_version(),
            }),
            Request::Notify { message } => {
                if message.len() > MAX_NOTIFY {
                    Err(format!(
                        "notify message is {} bytes, at most {MAX_NOTIFY}",
                        message.len()
                    ))
                } else if message.chars().any(|c| c.is_control() && c != '\n') {
                    Err("notify message contains control characters".into())
                } else {
                    self.host.notify(&message);
                    Ok(Reply::Notified)
                }
            }
            Request::RequestHostosUpgrade {} => self
                .host
                .request_hostos_upgrade()
                .map(Reply::HostosUpgrade)
                .map_err(|r| r.0),
        };
        (id, result)
    }

    /// Serve a stream until it ends. Over-long lines are discarded to their newline and
    /// answered with an error; the stream stays usable.
    pub fn serve(&mut self, input: &mut dyn Read, output: &mut dyn Write) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(MAX_LINE + 2, input);
        loop {
            match read_line_limited(&mut reader, MAX_LINE)? {
                Line::Eof => return Ok(()),
                Line::TooLong => {
                    self.stats.oversized += 1;
                    self.stats.errors += 1;
                    self.host.answered(&self.stats);
                    let a = AnswerLine {
                        v: PROTOCOL_VERSION,
                        id: 0,
                        ok: None,
                        err: Some(format!("request longer than {MAX_LINE} bytes")),
                    };
                    let mut out = serde_json::to_vec(&a).expect("serializes");
                    out.push(b'\n');
                    output.write_all(&out)?;
                }
                Line::Data(l) => {
                    if l.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    let out = self.answer(&l);
                    output.write_all(&out)?;
                }
            }
            output.flush()?;
        }
    }
}

enum Line {
    Data(Vec<u8>),
    TooLong,
    Eof,
}

/// Read up to a newline, keeping at most `max` bytes; longer lines are skipped entirely.
fn read_line_limited(r: &mut dyn BufRead, max: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(if buf.is_empty() && !too_long {
                Line::Eof
            } else if too_long {
                Line::TooLong
            } else {
                Line::Data(buf)
            });
        }
        match avail.iter().position(|b| *b == b'\n') {
            Some(i) => {
                if !too_long && buf.len() + i <= max {
                    buf.extend_from_slice(&avail[..i]);
                } else {
                    too_long = true;
                }
                r.consume(i + 1);
                return Ok(if too_long {
                    Line::TooLong
                } else {
                    Line::Data(buf)
                });
            }
            None => {
                let n = avail.len();
                if !too_long && buf.len() + n <= max {
                    buf.extend_from_slice(avail);
                } else {
                    too_long = true;
                    buf.clear();
                }
                r.consume(n);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("host channel: {0}")]
    Io(#[from] io::Error),
    #[error("host channel: the host answered with an error: {0}")]
    Host(String),
    #[error("host channel: malformed answer: {0}")]
    Malformed(String),
    #[error("host channel: the host closed the channel")]
    Closed,
}

/// The guest side: send requests, read answers (answers to other ids are skipped).
pub struct Client<S: Read + Write> {
    stream: BufReader<S>,
    next_id: u64,
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Self {
        // Start ids from the clock so answers meant for an earlier client on the same port
        // are never taken for ours.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Client {
            stream: BufReader::new(stream),
            next_id: start,
        }
    }

    pub fn call(&mut self, req: Request) -> Result<Reply, ChannelError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut line = serde_json::to_vec(&RequestLine {
            v: PROTOCOL_VERSION,
            id,
            req,
        })
        .expect("serializes");
        line.push(b'\n');
        self.stream.get_mut().write_all(&line)?;
        self.stream.get_mut().flush()?;
        loop {
            match read_line_limited(&mut self.stream, MAX_LINE)? {
                Line::Eof => return Err(ChannelError::Closed),
                Line::TooLong => return Err(ChannelError::Malformed("answer too long".into())),
                Line::Data(l) => {
                    let a: AnswerLine = serde_json::from_slice(&l)
                        .map_err(|e| ChannelError::Malformed(e.to_string()))?;
                    if a.id != id {
                        continue;
                    }
                    return match (a.ok, a.err) {
                        (Some(r), None) => Ok(r),
                        (None, Some(e)) => Err(ChannelError::Host(e)),
                        _ => Err(ChannelError::Malformed(
                            "answer has neither ok nor err".into(),
                        )),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct TestHost {
        notes: RefCell<Vec<String>>,
    }

    impl Host for TestHost {
        fn hostos_version(&self) -> String {
            "1.0.0".into()
        }
        fn notify(&self, m: &str) {
            self.notes.borrow_mut().push(m.to_string());
        }
        fn request_hostos_upgrade(&self) -> Result<UpgradeAnswer, Refusal> {
            Ok(UpgradeAnswer::Started {
                version: "1.1.0".into(),
            })
        }
    }

    fn serve(input: &[u8]) -> (Vec<serde_json::Value>, Server<TestHost>) {
        let mut s = Server::new(TestHost::default(), Limits::default());
        let mut out = Vec::new();
        s.serve(&mut &input[..], &mut out).unwrap();
        let answers = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        (answers, s)
    }

    #[test]
    fn allowlisted_requests_are_answered() {
        let input = b"{\"v\":1,\"id\":1,\"req\":{\"type\":\"protocol-version\"}}\n{\"v\":1,\"id\":2,\"req\":{\"type\":\"hostos-version\"}}\n{\"v\":1,\"id\":3,\"req\":{\"type\":\"notify\",\"message\":\"hello host\"}}\n{\"v\":1,\"id\":4,\"req\":{\"type\":\"request-hostos-upgrade\"}}\n";
        let (a, s) = serve(input);
        assert_eq!(a[0]["ok"]["version"], 1);
        assert_eq!(a[1]["ok"]["version"], "1.0.0");
        assert_eq!(a[2]["ok"]["type"], "notified");
        assert_eq!(a[3]["ok"]["state"], "started");
        assert_eq!(s.host().notes.borrow().as_slice(), ["hello host"]);
    }

    #[test]
    fn bad_requests_get_errors_and_the_stream_goes_on() {
        let mut input = Vec::new();
        input.extend_from_slice(b"this is not json\n");
        input.extend_from_slice(b"{\"v\":2,\"id\":5,\"req\":{\"type\":\"hostos-version\"}}\n");
        input.extend_from_slice(b"{\"v\":1,\"id\":6,\"req\":{\"type\":\"upgrade\",\"url\":\"http://evil\",\"sha256\":\"00\"}}\n");
        input.extend_from_slice(
            b"{\"v\":1,\"id\":7,\"req\":{\"type\":\"hostos-version\",\"extra\":1}}\n",
        );
        input.extend_from_slice(&vec![b'x'; 10_000]);
        input.push(b'\n');
        let long_note = format!(
            "{{\"v\":1,\"id\":8,\"req\":{{\"type\":\"notify\",\"message\":\"{}\"}}}}\n",
            "y".repeat(2000)
        );
        input.extend_from_slice(long_note.as_bytes());
        input.extend_from_slice(b"{\"v\":1,\"id\":9,\"req\":{\"type\":\"hostos-version\"}}\n");
        let (a, s) = serve(&input);
        assert!(a[0]["err"].as_str().unwrap().contains("malformed"));
        assert!(a[1]["err"].as_str().unwrap().contains("protocol version 2"));
        assert_eq!(a[1]["id"], 5);
        assert!(
            a[2]["err"].as_str().unwrap().contains("unknown variant"),
            "{}",
            a[2]
        );
        assert!(
            a[3]["err"].as_str().unwrap().contains("unknown field"),
            "{}",
            a[3]
        );
        assert!(a[4]["err"].as_str().unwrap().contains("longer than 4096"));
        assert!(a[5]["err"].as_str().unwrap().contains("at most 1024"));
        assert_eq!(
            a[6]["ok"]["version"], "1.0.0",
            "still in sync after all that"
        );
        assert_eq!(s.stats.oversized, 1);
        assert!(s.host().notes.borrow().is_empty());
    }

    #[test]
    fn flooding_is_throttled() {
        let one = b"{\"v\":1,\"id\":1,\"req\":{\"type\":\"notify\",\"message\":\"spam\"}}\n";
        let input: Vec<u8> = one.iter().copied().cycle().take(one.len() * 100).collect();
        let (a, s) = serve(&input);
        let ok = a.iter().filter(|x| x.get("ok").is_some()).count();
        assert_eq!(ok, 10, "only the burst is served");
        assert_eq!(s.stats.throttled, 90);
        assert!(a[50]["err"].as_str().unwrap().contains("rate limited"));
    }

    #[test]
    fn client_and_server_talk() {
        // A duplex pipe: the client's writes go to the server, the server's to the client.
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut s = Server::new(TestHost::default(), Limits::default());
            let mut r = b.try_clone().unwrap();
            let mut w = b;
            s.serve(&mut r, &mut w).unwrap();
        });
        let mut c = Client::new(a);
        assert_eq!(
            c.call(Request::HostosVersion {}).unwrap(),
            Reply::HostosVersion {
                version: "1.0.0".into()
            }
        );
        let e = c
            .call(Request::Notify {
                message: "z".repeat(2000),
            })
            .unwrap_err();
        assert!(e.to_string().contains("at most 1024"), "{e}");
        drop(c);
        t.join().unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any bytes at all: the server never panics, answers at most one line per input
        /// line, and a valid request after them (on a fresh line) is answered correctly.
        #[test]
        fn decoder_survives_arbitrary_input(garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..6000)) {
            let mut input = garbage.clone();
            input.push(b'\n');
            input.extend_from_slice(b"{\"v\":1,\"id\":424242,\"req\":{\"type\":\"hostos-version\"}}\n");
            let mut s = Server::new(TestHost::default(), Limits::default());
            let mut out = Vec::new();
            s.serve(&mut input.as_slice(), &mut out).unwrap();
            let lines: Vec<&[u8]> = out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
            let input_lines = input.split(|b| *b == b'\n').count();
            proptest::prop_assert!(lines.len() <= input_lines);
            let last: serde_json::Value = serde_json::from_slice(lines.last().unwrap()).unwrap();
            proptest::prop_assert_eq!(&last["id"], 424242);
            proptest::prop_assert_eq!(&last["ok"]["version"], "1.0.0");
        }

        /// Valid JSON with random structure is refused cleanly too.
        #[test]
        fn random_json_requests_are_answered(id in 0u64..1000, t in "[a-z-]{0,30}", m in ".{0,40}") {
            let line = serde_json::json!({"v": 1, "id": id, "req": {"type": t, "message": m}});
            let mut s = Server::new(TestHost::default(), Limits::default());
            let out = s.answer(line.to_string().as_bytes());
            let a: serde_json::Value = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
            proptest::prop_assert_eq!(&a["id"], id);
            proptest::prop_assert!(a.get("ok").is_some() != a.get("err").is_some());
        }
    }
}
