//! The node's firewall from the registry's rules (node, then subnet, then global), as one
//! nftables table replaced atomically: only what the rules allow reaches the payload ports;
//! SSH and the status/metrics port only from the configured admin prefixes.

use node_config::replica::PEER_PORT;
use registry_model::{FirewallRule, FwAction, Protocol};
use sha2::{Digest, Sha256};
use std::net::IpAddr;

pub const TABLE: &str = "icos_filter";
/// Ports only the admin prefixes may reach (SSH, orchestrator status and metrics).
pub const ADMIN_PORTS: [u16; 2] = [22, 9100];

fn is_v6(prefix: &str) -> bool {
    prefix.contains(':')
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn set(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().collect();
    format!("{{ {} }}", v.join(", "))
}

/// The nft script: deletes and recreates our table in one transaction. The subnet's peer
/// port is open to `peers` (the addresses the subnet's other nodes come from) before the
/// registry's rules; everyone else reaches it only if a registry rule allows.
pub fn render(rules: &[FirewallRule], admin_prefixes: &[String], peers: &[IpAddr]) -> String {
    let mut lines = vec![
        format!("table inet {TABLE}"),
        format!("delete table inet {TABLE}"),
        format!("table inet {TABLE} {{"),
        "  chain input {".to_string(),
        "    type filter hook input priority 0; policy drop;".to_string(),
        "    ct state established,related accept".to_string(),
        "    ct state invalid drop".to_string(),
        "    iif \"lo\" accept".to_string(),
        // Numbers, not names: the image has no /etc/protocols.
        "    meta l4proto { 1, 58 } accept comment \"ICMP, ICMPv6\"".to_string(),
        "    udp dport { 68, 546 } accept comment \"DHCP client\"".to_string(),
    ];
    let admin_ports = set(ADMIN_PORTS.iter().map(|p| p.to_string()));
    for family in ["ip", "ip6"] {
        let prefixes = of_family(admin_prefixes, family);
        if !prefixes.is_empty() {
            lines.push(format!(
                "    {family} saddr {} tcp dport {admin_ports} accept comment \"admin\"",
                set(prefixes)
            ));
        }
    }
    for family in ["ip", "ip6"] {
        let from: Vec<String> = peers
            .iter()
            .filter(|a| a.is_ipv6() == (family == "ip6"))
            .map(|a| a.to_string())
            .collect();
        if !from.is_empty() {
            lines.push(format!(
                "    {family} saddr {} tcp dport {PEER_PORT} accept comment \"subnet peers\"",
                set(from)
            ));
        }
    }
    for (i, r) in rules.iter().enumerate() {
        let verdict = match r.action {
            FwAction::Allow => "accept",
            FwAction::Deny => "drop",
        };
        let ports = set(r.ports.iter().map(|p| p.to_string()));
        let comment = format!(
            "registry rule {}{}",
            i + 1,
            if r.comment.is_empty() {
                String::new()
            } else {
                format!(": {}", r.comment.replace('"', "'"))
            }
        );
        if r.sources.is_empty() {
            lines.push(format!(
                "    {} dport {ports} {verdict} comment \"{comment}\"",
                proto(r.protocol)
            ));
            continue;
        }
        for family in ["ip", "ip6"] {
            let prefixes = of_family(&r.sources, family);
            if !prefixes.is_empty() {
                lines.push(format!(
                    "    {family} saddr {} {} dport {ports} {verdict} comment \"{comment}\"",
                    set(prefixes),
                    proto(r.protocol)
                ));
            }
        }
    }
    lines.push("  }".into());
    lines.push("}".into());
    lines.join("\n") + "\n"
}

/// The prefixes of one nftables family (`ip` or `ip6`).
fn of_family(prefixes: &[String], family: &str) -> Vec<String> {
    prefixes
        .iter()
        .filter(|p| is_v6(p) == (family == "ip6"))
        .cloned()
        .collect()
}

pub fn digest(script: &str) -> String {
    hex::encode(&Sha256::digest(script.as_bytes())[..8])
}

/// Apply with `nft -f` (atomic: the old table stays if the new one is refused).
pub fn apply(script: &str) -> Result<(), crate::OrchestratorError> {
    apply_inner(script).map_err(crate::OrchestratorError::Firewall)
}

fn apply_inner(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (package nftables): {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_render_per_family_in_order() {
        let rules = vec![
            FirewallRule {
                action: FwAction::Deny,
                protocol: Protocol::Tcp,
                ports: vec![8080],
                sources: vec!["10.0.2.99/32".into()],
                comment: "node".into(),
            },
            FirewallRule {
                action: FwAction::Allow,
                protocol: Protocol::Tcp,
                ports: vec![8080, 4444],
                sources: vec!["10.0.2.0/24".into(), "fd00::/8".into()],
                comment: "".into(),
            },
        ];
        let peers: Vec<IpAddr> = vec!["fd00::2".parse().unwrap(), "10.0.2.2".parse().unwrap()];
        let s = render(&rules, &["192.168.1.0/24".into()], &peers);
        let peer4 = s
            .find("ip saddr { 10.0.2.2 } tcp dport 4100 accept comment \"subnet peers\"")
            .unwrap();
        let peer6 = s
            .find("ip6 saddr { fd00::2 } tcp dport 4100 accept")
            .unwrap();
        assert!(s.contains("policy drop"));
        assert!(s.contains("ip saddr { 192.168.1.0/24 } tcp dport { 22, 9100 } accept"));
        let deny = s
            .find("ip saddr { 10.0.2.99/32 } tcp dport { 8080 } drop")
            .unwrap();
        let allow4 = s
            .find("ip saddr { 10.0.2.0/24 } tcp dport { 8080, 4444 } accept")
            .unwrap();
        let allow6 = s
            .find("ip6 saddr { fd00::/8 } tcp dport { 8080, 4444 } accept")
            .unwrap();
        assert!(deny < allow4 && allow4 < allow6, "node rules come first");
        assert!(
            peer4 < deny && peer6 < deny,
            "the subnet's peers before the registry's rules"
        );
        assert!(!s.contains("ip6 saddr { } "), "no empty sets");
        assert_eq!(
            digest(&s),
            digest(&render(&rules, &["192.168.1.0/24".into()], &peers))
        );
    }
}
