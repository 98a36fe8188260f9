//! The network and time step: the node's deterministic addresses (printed, so the provider
//! can check them against their plan), SetupOS's own static network, the gateway, the
//! registry, and the clock.

use crate::Failure;
use node_config::network::{write_networkd, NetworkPlan, NETWORKD_FILE};
use node_config::operator::OperatorConfig;
use node_config::NetworkMode;
use node_identity::{Mac, NodeType};
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

/// How far the node's clock may be from the registry's signed time. Beyond the registry
/// client's own tolerance (30 s), a freshly signed head already looks expired or from the
/// future to the node, and it could not follow the registry.
pub const CLOCK_BOUND_SECS: u64 = 30;

/// The node's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mgmt_mac: Mac,
    pub mgmt_mac_from: &'static str,
    /// The interface that carries the node: the first Ethernet interface (name, MAC).
    pub uplink: (String, Mac),
    pub setupos: (Mac, Ipv6Addr),
    pub hostos: (Mac, Ipv6Addr),
    pub guestos: (Mac, Ipv6Addr),
}

impl Plan {
    /// From the config and the machine's first Ethernet interface (whose MAC is the
    /// management MAC when deployment.json names none).
    pub fn derive(cfg: &OperatorConfig) -> Result<Plan, Failure> {
        let uplink = first_ethernet()
            .map_err(|e| Failure::new(e, "connect the node's network interface"))?;
        let (mgmt, from) = match cfg.deployment.mgmt_mac {
            Some(m) => (m, "deployment.json"),
            None => (uplink.1, "the first Ethernet interface"),
        };
        Ok(Plan::for_mac(cfg, mgmt, from, uplink))
    }

    pub fn for_mac(
        cfg: &OperatorConfig,
        mgmt: Mac,
        from: &'static str,
        uplink: (String, Mac),
    ) -> Plan {
        let prefix =
            node_identity::parse_prefix(&cfg.network.ipv6_prefix).expect("checked with the config");
        let one = |t| {
            let mac = node_identity::deterministic_mac(&mgmt, &cfg.deployment.name, t, 0);
            (mac, node_identity::ipv6_address(&prefix, &mac))
        };
        Plan {
            mgmt_mac: mgmt,
            mgmt_mac_from: from,
            uplink,
            setupos: one(NodeType::SetupOs),
            hostos: one(NodeType::HostOs),
            guestos: one(NodeType::GuestOs),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "management MAC {} (from {}), uplink {} {}; SetupOS {} {}, HostOS {} {}, GuestOS {} {}",
            self.mgmt_mac,
            self.mgmt_mac_from,
            self.uplink.0,
            self.uplink.1,
            self.setupos.0,
            self.setupos.1,
            self.hostos.0,
            self.hostos.1,
            self.guestos.0,
            self.guestos.1
        )
    }
}

/// The first physical Ethernet interface, in the order the kernel found them (interface
/// index: PCI order, where names like enp0s10 < enp0s9 would mislead), and its MAC. Read
/// before anything sets a MAC, so this is the permanent one.
fn first_ethernet() -> Result<(String, Mac), String> {
    let sys = |n: &str, f: &str| std::fs::read_to_string(format!("/sys/class/net/{n}/{f}"));
    let mut found: Vec<(u32, String)> = std::fs::read_dir("/sys/class/net")
        .map_err(|e| format!("/sys/class/net: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| {
            sys(n, "type").is_ok_and(|t| t.trim() == "1")
                && std::path::Path::new(&format!("/sys/class/net/{n}/device")).exists()
        })
        .filter_map(|n| Some((sys(&n, "ifindex").ok()?.trim().parse().ok()?, n)))
        .collect();
    found.sort();
    let (_, n) = found
        .into_iter()
        .next()
        .ok_or("no Ethernet interface found")?;
    let mac = sys(&n, "address")
        .map_err(|e| format!("{n}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{n}: {e}"))?;
    Ok((n, mac))
}

/// Configure SetupOS's static network, then check the gateway, the registry and the clock.
pub fn bring_up_and_check(cfg: &OperatorConfig, plan: &Plan) -> Result<String, Failure> {
    let dhcp = cfg.deployment.network == NetworkMode::Dhcp;
    let net = NetworkPlan {
        uplink: Some(plan.uplink.1),
        mac: Some(plan.setupos.0),
        mode: cfg.deployment.network,
        ipv6: Some((plan.setupos.1, cfg.network.ipv6_gateway)),
        ipv4: None,
        domain_name: None,
    };
    write_networkd(std::path::Path::new(NETWORKD_FILE), &net)
        .map_err(|e| Failure::new(format!("writing {NETWORKD_FILE}: {e}"), "report this"))?;
    // systemctl reaches PID 1 on its private socket; networkctl would need D-Bus.
    run("systemctl", &["restart", "systemd-networkd.service"])
        .map_err(|e| Failure::new(e, "report this"))?;
    let address = wait_for_address(plan.setupos.1, Duration::from_secs(30)).map_err(|e| {
        Failure::new(
            e,
            "check the network cable and that nothing else uses this address",
        )
    })?;
    if dhcp {
        wait_for_ipv4(Duration::from_secs(30))
            .map_err(|e| Failure::new(e, "check the DHCP server of the local network"))?;
    }
    ping_gateway(cfg.network.ipv6_gateway).map_err(|e| {
        Failure::new(
            e,
            "check ipv6_gateway in config.ini, the cable, and the switch port (the gateway must answer ping)",
        )
    })?;
    let registry = check_registry(cfg)?;
    Ok(format!(
        "{address} up; gateway {} answers; {registry}",
        cfg.network.ipv6_gateway
    ))
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Wait until `addr` is configured (and past duplicate address detection).
fn wait_for_address(addr: Ipv6Addr, timeout: Duration) -> Result<Ipv6Addr, String> {
    let end = Instant::now() + timeout;
    loop {
        let state = daemon_support::net::configured_ipv6()
            .into_iter()
            .find(|a| a.addr == addr)
            .map(|a| (a.dad_failed, a.tentative));
        match state {
            Some((true, _)) => {
                return Err(format!(
                    "{addr} is already used on this network (duplicate address detection failed)"
                ))
            }
            Some((false, false)) => return Ok(addr),
            _ if Instant::now() > end => {
                return Err(format!(
                    "{addr} was not configured within {} s",
                    timeout.as_secs()
                ))
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

fn wait_for_ipv4(timeout: Duration) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if run("ip", &["-4", "-o", "addr", "show", "scope", "global"])
            .is_ok_and(|o| !o.trim().is_empty())
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!(
        "no IPv4 address from DHCP within {} s",
        timeout.as_secs()
    ))
}

fn ping_gateway(gw: Ipv6Addr) -> Result<(), String> {
    let gws = gw.to_string();
    let mut last = String::new();
    for _ in 0..5 {
        match run("ping", &["-6", "-c", "1", "-W", "3", &gws]) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(format!("the IPv6 gateway {gw} does not answer: {last}"))
}

/// A registry URL answers within 3 s with a head that verifies back to the pinned
/// genesis, and the clock agrees with its signed time.
fn check_registry(cfg: &OperatorConfig) -> Result<String, Failure> {
    let r = &cfg.deployment.registry;
    let dir = std::env::temp_dir().join("icos-setupos-registry");
    let _ = std::fs::remove_dir_all(&dir);
    let mut c =
        registry_client::ClientConfig::new(r.urls.clone(), r.genesis_hash.as_str(), dir.clone());
    c.timeout = Duration::from_secs(3);
    let todo = "check the registry URLs and genesis hash in deployment.json, and that this network reaches them";
    let mut client =
        registry_client::Client::open(c).map_err(|e| Failure::new(e.to_string(), todo))?;
    let report = client.sync().map_err(|e| {
        Failure::new(
            format!("no registry URL gave a verifiable answer: {e}"),
            todo,
        )
    })?;
    let issued = client
        .verified()
        .and_then(|v| v.freshness.as_ref())
        .map(|f| f.freshness.issued_at)
        .unwrap_or(0);
    let now = daemon_support::unix_now();
    let off = now.abs_diff(issued);
    let _ = std::fs::remove_dir_all(&dir);
    if off > CLOCK_BOUND_SECS {
        return Err(Failure::new(
            format!("the clock says {now}, the registry signed its head at {issued}: {off} s apart (at most {CLOCK_BOUND_SECS})"),
            "set the machine's clock (firmware setup) to UTC and boot again",
        ));
    }
    Ok(format!(
        "registry {} verified to version {} from the pinned genesis; clock within {off} s of its signed time",
        report.mirror, report.to_version
    ))
}
