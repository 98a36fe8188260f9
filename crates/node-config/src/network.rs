//! The systemd-networkd file each OS writes at boot (into `/run/systemd/network`, ahead of
//! the image's DHCP fallback) from its stage of the config chain: the node's deterministic
//! MAC on the Ethernet interface, the static IPv6 address (prefix + EUI-64 of that MAC) and
//! gateway, static IPv4 when given, DHCP only in `dhcp` mode.

use crate::operator::Ipv4Config;
use crate::NetworkMode;
use node_identity::Mac;
use std::fmt::Write;
use std::net::Ipv6Addr;

/// Where the file goes: read before the image's own `80-icos-dhcp.network`.
pub const NETWORKD_FILE: &str = "/run/systemd/network/10-icos.network";

/// One OS's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The interface to configure, by permanent MAC (it survives setting `mac`); `None`:
    /// every Ethernet interface (a VM's single NIC).
    pub uplink: Option<Mac>,
    /// Set on the interface (the deterministic MAC of this OS), when given.
    pub mac: Option<Mac>,
    pub mode: NetworkMode,
    /// The static IPv6 address (/64) and its gateway.
    pub ipv6: Option<(Ipv6Addr, Ipv6Addr)>,
    pub ipv4: Option<Ipv4Config>,
    pub domain_name: Option<String>,
}

/// The `.network` file for `plan`.
pub fn networkd(plan: &NetworkPlan) -> String {
    let mut s = String::from("# Written at boot by icos from the node's configuration.\n[Match]\n");
    match plan.uplink {
        Some(m) => {
            let _ = writeln!(s, "PermanentMACAddress={m}\n");
        }
        None => s.push_str("Type=ether\n\n"),
    }
    if let Some(m) = plan.mac {
        let _ = writeln!(s, "[Link]\nMACAddress={m}\n");
    }
    s.push_str("[Network]\n");
    match plan.mode {
        NetworkMode::Dhcp => s.push_str("DHCP=ipv4\n"),
        NetworkMode::Static => s.push_str("DHCP=no\n"),
    }
    if let Some((addr, gw)) = plan.ipv6 {
        // Static addresses only: no router advertisements deciding otherwise.
        let _ = writeln!(s, "IPv6AcceptRA=no\nAddress={addr}/64\nGateway={gw}");
    }
    if let Some(v4) = &plan.ipv4 {
        let _ = writeln!(
            s,
            "Address={}/{}\nGateway={}",
            v4.address, v4.prefix_length, v4.gateway
        );
    }
    if let Some(d) = &plan.domain_name {
        let _ = writeln!(s, "Domains={d}");
    }
    s
}

/// Write `plan` to `path` (a temporary file renamed into place).
pub fn write_networkd(path: &std::path::Path, plan: &NetworkPlan) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, networkd(plan))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dhcp_files() {
        let plan = NetworkPlan {
            uplink: Some("52:54:00:12:34:56".parse().unwrap()),
            mac: Some("6a:00:f8:87:a4:8a".parse().unwrap()),
            mode: NetworkMode::Static,
            ipv6: Some((
                "2a00:fb01:400:200:6800:f8ff:fe87:a48a".parse().unwrap(),
                "fe80::1".parse().unwrap(),
            )),
            ipv4: Some(Ipv4Config {
                address: "192.0.2.10".parse().unwrap(),
                prefix_length: 24,
                gateway: "192.0.2.1".parse().unwrap(),
            }),
            domain_name: Some("node.example.com".into()),
        };
        let f = networkd(&plan);
        for want in [
            "[Match]\nPermanentMACAddress=52:54:00:12:34:56\n",
            "MACAddress=6a:00:f8:87:a4:8a",
            "DHCP=no",
            "Address=2a00:fb01:400:200:6800:f8ff:fe87:a48a/64",
            "Gateway=fe80::1",
            "Address=192.0.2.10/24",
            "Gateway=192.0.2.1",
            "IPv6AcceptRA=no",
        ] {
            assert!(f.contains(want), "{want} missing:\n{f}");
        }
        let dhcp = networkd(&NetworkPlan {
            mode: NetworkMode::Dhcp,
            ipv6: None,
            ipv4: None,
            mac: None,
            uplink: None,
            domain_name: None,
        });
        assert!(
            dhcp.contains("DHCP=ipv4") && dhcp.contains("Type=ether") && !dhcp.contains("Address="),
            "{dhcp}"
        );
    }
}
