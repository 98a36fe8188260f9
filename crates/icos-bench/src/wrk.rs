//! `wrk` (Debian package `wrk`), the load generator of the HTTP benchmarks: one run's
//! throughput and latency percentiles.

use crate::BenchError;
use std::path::Path;
use std::process::Command;

/// One `wrk` run.
#[derive(Debug, Clone, Copy)]
pub struct WrkResult {
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `wrk` with two threads and `connections` connections for `secs` (the request as `script`
/// sets it, else a GET); throughput and latency percentiles. Any non-2xx answer or socket
/// error is an error.
pub fn wrk(
    url: &str,
    script: Option<&Path>,
    secs: u64,
    connections: usize,
) -> Result<WrkResult, BenchError> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .args(
            script
                .iter()
                .flat_map(|s| [std::ffi::OsStr::new("-s"), s.as_os_str()]),
        )
        .arg(url)
        .output()
        .map_err(crate::io(
            "running wrk (Debian package wrk; scripts/setup.sh installs it)",
            Path::new("wrk"),
        ))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(BenchError::Wrk(format!(
            "{url}: errors in the run:\n{text}"
        )));
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
    };
    let per_sec = field("Requests/sec:").and_then(|v| v.parse().ok());
    let (p50, p99) = (
        field("50%").and_then(|v| ms(&v)),
        field("99%").and_then(|v| ms(&v)),
    );
    match (per_sec, p50, p99) {
        (Some(per_sec), Some(p50_ms), Some(p99_ms)) => Ok(WrkResult {
            per_sec,
            p50_ms,
            p99_ms,
        }),
        _ => Err(BenchError::Wrk(format!(
            "{url}: unreadable output:\n{text}"
        ))),
    }
}

/// wrk's latency (`850.00us`, `1.23ms`, `2.01s`) in milliseconds.
fn ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_latencies_read_in_milliseconds() {
        assert_eq!(super::ms("850.00us"), Some(0.85));
        assert_eq!(super::ms("1.50ms"), Some(1.5));
        assert_eq!(super::ms("2.00s"), Some(2000.0));
        assert_eq!(super::ms("fast"), None);
    }
}
