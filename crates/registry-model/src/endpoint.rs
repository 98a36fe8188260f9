//! The endpoints nodes register (their HTTP interface, their peer routes), as another
//! machine reaches them: a local network's nodes register endpoints on their host's
//! loopback, which a guest reaches through the address its host is at (QEMU's user network:
//! 10.0.2.2).

use std::net::{IpAddr, SocketAddr};

/// `http://host:port` with the trailing slash removed and a loopback host replaced by
/// `host_loopback` when given; none for anything else (another scheme, no port, a path,
/// user info).
pub fn reachable(e: &str, host_loopback: Option<IpAddr>) -> Option<String> {
    let e = e.trim_end_matches('/');
    let rest = e.strip_prefix("http://")?;
    if rest.contains(['/', '@', '?', '#']) {
        return None;
    }
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let loopback = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok()?.is_loopback(),
        None if host.is_empty() || host.contains(['[', ']', ':']) => return None,
        None => host == "localhost" || host.parse::<IpAddr>().is_ok_and(|a| a.is_loopback()),
    };
    match host_loopback {
        Some(via) if loopback => Some(format!("http://{}", SocketAddr::new(via, port))),
        _ => Some(e.to_string()),
    }
}

/// The host part of an endpoint [`reachable`] accepted, as an address (none: a name).
pub fn host_addr(e: &str) -> Option<IpAddr> {
    let rest = e.strip_prefix("http://")?;
    let (host, _) = rest.rsplit_once(':')?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_endpoints_are_reached_through_the_host_and_others_where_they_are() {
        let via: IpAddr = "10.0.2.2".parse().unwrap();
        for (given, want) in [
            ("http://localhost:9/", "http://10.0.2.2:9"),
            ("http://127.5.0.1:9", "http://10.0.2.2:9"),
            ("http://[::1]:9", "http://10.0.2.2:9"),
            ("http://192.0.2.7:9", "http://192.0.2.7:9"),
            ("http://[2001:db8::1]:9", "http://[2001:db8::1]:9"),
        ] {
            assert_eq!(
                reachable(given, Some(via)).as_deref(),
                Some(want),
                "{given}"
            );
        }
        assert_eq!(
            reachable("http://127.0.0.1:9", None).as_deref(),
            Some("http://127.0.0.1:9")
        );
        for bad in [
            "http://localhost",
            "https://a:1",
            "http://a:1/x",
            "http://u@a:1",
            "http://:1",
            "http://[zz]:1",
            "http://a:99999",
        ] {
            assert_eq!(reachable(bad, Some(via)), None, "{bad}");
        }
        assert_eq!(
            host_addr("http://[fd00::1]:4100"),
            Some("fd00::1".parse().unwrap())
        );
        assert_eq!(host_addr("http://node.example:4100"), None);
    }
}
