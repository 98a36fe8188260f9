//! The IPv6 addresses configured on this machine, from `/proc/net/if_inet6`: what the
//! status documents report as the node's real addresses (next to the planned ones), and
//! what SetupOS waits on after it configured its own.

use std::net::Ipv6Addr;

/// One configured address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredIpv6 {
    pub addr: Ipv6Addr,
    /// Reaches beyond the link: global scope, or site-local (`fec0::/10`, deprecated but
    /// still what QEMU's user network and some operators' plans use; the kernel gives it its
    /// own scope, 0x40). Not link-local, not loopback.
    pub global: bool,
    /// Duplicate address detection still running.
    pub tentative: bool,
    /// Duplicate address detection found another host with this address.
    pub dad_failed: bool,
}

/// Parse the kernel's table: address (32 hex digits), interface index, prefix length,
/// scope, flags (0x40 tentative, 0x08 DAD failed), name. Malformed lines are skipped.
pub fn parse_if_inet6(table: &str) -> Vec<ConfiguredIpv6> {
    table
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let (hex, scope, flags) = (cols.first()?, cols.get(3)?, cols.get(4)?);
            if hex.len() != 32 {
                return None;
            }
            let n = u128::from_str_radix(hex, 16).ok()?;
            let flags = u32::from_str_radix(flags, 16).ok()?;
            Some(ConfiguredIpv6 {
                addr: Ipv6Addr::from(n),
                global: matches!(*scope, "00" | "40"),
                tentative: flags & 0x40 != 0,
                dad_failed: flags & 0x08 != 0,
            })
        })
        .collect()
}

/// The addresses on this machine now (empty where there is no IPv6).
pub fn configured_ipv6() -> Vec<ConfiguredIpv6> {
    parse_if_inet6(&std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default())
}

/// Every address with its state, for a console line: `fec0::1 (tentative), fe80::1 (link)`.
pub fn describe_ipv6() -> String {
    describe(&configured_ipv6())
}

fn describe(addrs: &[ConfiguredIpv6]) -> String {
    let list: Vec<String> = addrs
        .iter()
        .filter(|a| !a.addr.is_loopback())
        .map(|a| {
            let state = match (a.global, a.tentative, a.dad_failed) {
                (_, _, true) => " (duplicate: DAD failed)",
                (_, true, _) => " (tentative)",
                (false, _, _) => " (link)",
                _ => "",
            };
            format!("{}{state}", a.addr)
        })
        .collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// The global addresses, as text (what status documents carry).
pub fn global_ipv6() -> Vec<String> {
    configured_ipv6()
        .into_iter()
        .filter(|a| a.global)
        .map(|a| a.addr.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_table_lines() {
        let t = "\
fec0000000000000680f3dfffe231eab 02 40 40 80     eth0
fe80000000000000680f3dfffe231eab 02 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fec00000000000000000000000000005 02 40 40 08     eth0
2a00fb010400020000000000000000a1 02 40 00 80     eth0
garbage line
";
        let a = parse_if_inet6(t);
        assert_eq!(a.len(), 5);
        assert_eq!(
            a[0].addr,
            "fec0::680f:3dff:fe23:1eab".parse::<Ipv6Addr>().unwrap()
        );
        assert!(a[0].global && !a[0].tentative && !a[0].dad_failed);
        assert!(!a[1].global && !a[2].global);
        assert!(a[3].dad_failed);
        assert!(a[4].global);
        assert_eq!(
            describe(&a),
            "fec0::680f:3dff:fe23:1eab, fe80::680f:3dff:fe23:1eab (link), fec0::5 (duplicate: DAD failed), 2a00:fb01:400:200::a1"
        );
        assert_eq!(describe(&[]), "none");
    }
}
