//! Where a package comes from: a local file or an HTTP(S) URL. HTTP downloads resume with
//! `Range` requests when the connection breaks mid-stream, so a flaky link costs a retry,
//! not a restart; the bytes still flow through the caller's hashing exactly once.

use std::fs::File;
use std::io::{self, Read};
use std::time::Duration;

/// A package byte stream and its announced length (if any).
pub struct Source {
    pub reader: Box<dyn Read + Send>,
    pub length: Option<u64>,
    pub description: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("opening package {path}: {source}")]
    File {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("downloading {url}: {message}")]
    Http { url: String, message: String },
}

/// Open a file path or an `http://` / `https://` URL.
pub fn open(spec: &str) -> Result<Source, SourceError> {
    if spec.starts_with("http://") || spec.starts_with("https://") {
        let r = HttpReader::new(spec)?;
        let length = r.length;
        return Ok(Source {
            reader: Box::new(r),
            length,
            description: spec.to_string(),
        });
    }
    let f = File::open(spec).map_err(|source| SourceError::File {
        path: spec.to_string(),
        source,
    })?;
    let length = f.metadata().ok().map(|m| m.len());
    Ok(Source {
        reader: Box::new(f),
        length,
        description: spec.to_string(),
    })
}

const RETRIES: u32 = 5;

/// Streams an HTTP body; on a broken connection re-requests the rest with `Range`.
pub struct HttpReader {
    agent: ureq::Agent,
    url: String,
    pos: u64,
    length: Option<u64>,
    body: Option<Box<dyn Read + Send + Sync>>,
    retries_left: u32,
}

impl HttpReader {
    pub fn new(url: &str) -> Result<Self, SourceError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(30))
            .build();
        let mut r = HttpReader {
            agent,
            url: url.to_string(),
            pos: 0,
            length: None,
            body: None,
            retries_left: RETRIES,
        };
        // The network may still be coming up (or the mirror briefly away): retry the first
        // connection with a growing pause before giving up.
        let mut attempt = 0;
        loop {
            match r.connect() {
                Ok(()) => return Ok(r),
                Err(e) if attempt + 1 < RETRIES && !e.to_string().starts_with("HTTP ") => {
                    attempt += 1;
                    tracing::warn!(
                        url,
                        attempt,
                        "cannot reach the package server ({e}); retrying"
                    );
                    std::thread::sleep(Duration::from_secs(2 * attempt as u64));
                }
                Err(e) => {
                    return Err(SourceError::Http {
                        url: url.to_string(),
                        message: e.to_string(),
                    })
                }
            }
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        let mut req = self.agent.get(&self.url);
        if self.pos > 0 {
            req = req.set("Range", &format!("bytes={}-", self.pos));
        }
        let resp = req.call().map_err(|e| io::Error::other(describe(&e)))?;
        let status = resp.status();
        if self.pos > 0 && status != 206 {
            return Err(io::Error::other(format!(
                "server answered {status} to a range request; cannot resume at byte {}",
                self.pos
            )));
        }
        if self.pos == 0 {
            self.length = resp.header("Content-Length").and_then(|v| v.parse().ok());
        }
        self.body = Some(Box::new(resp.into_reader()));
        Ok(())
    }
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, resp) => format!("HTTP {code} {}", resp.status_text()),
        ureq::Error::Transport(t) => t.to_string(),
    }
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let body = match self.body.as_mut() {
                Some(b) => b,
                None => {
                    self.connect()?;
                    continue;
                }
            };
            match body.read(buf) {
                Ok(0) => {
                    // A short body (the server closed early) is a broken transfer if we know
                    // the length: resume; otherwise it is the end.
                    match self.length {
                        Some(len) if self.pos < len && self.retries_left > 0 => {}
                        _ => return Ok(0),
                    }
                }
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if self.retries_left == 0 => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "download of {} broke at byte {} after {RETRIES} resumes: {e}",
                            self.url, self.pos
                        ),
                    ))
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, pos = self.pos, "download interrupted ({e}); resuming")
                }
            }
            self.retries_left = self.retries_left.saturating_sub(1);
            self.body = None;
            std::thread::sleep(Duration::from_millis(
                500 * u64::from(RETRIES - self.retries_left),
            ));
        }
    }
}
