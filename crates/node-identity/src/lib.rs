//! Deterministic node addresses.
//!
//! Every OS of a node gets a MAC address derived from the server's management MAC and the
//! deployment name, so addresses are stable across reinstalls and predictable by the
//! operator: `seed = lowercase management MAC ("aa:bb:cc:dd:ee:ff") + deployment + "\n"`,
//! `h = SHA-256(seed)`, `MAC = 6a : (type | slot << 4) : h[0] : h[1] : h[2] : h[3]`. The IPv6
//! address is the node's /64 prefix plus the EUI-64 interface id of that MAC.
//!
//! ```
//! use node_identity::{Mac, NodeType, deterministic_mac};
//! let mgmt: Mac = "70:B5:E8:E8:25:DE".parse().unwrap();
//! let mac = deterministic_mac(&mgmt, "testnet", NodeType::HostOs, 0);
//! assert_eq!(mac.to_string(), "6a:00:f8:87:a4:8a");
//! ```

use sha2::{Digest, Sha256};
use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("`{0}` is not a MAC address (expected six hex bytes like 70:b5:e8:e8:25:de)")]
    BadMac(String),
    #[error("`{0}` is not an IPv6 /64 prefix (expected e.g. 2a00:fb01:400:200 or 2a00:fb01:400:200::/64)")]
    BadPrefix(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Mac, IdentityError> {
        let parts: Vec<&str> = s.trim().split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(IdentityError::BadMac(s.into()));
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(IdentityError::BadMac(s.into()));
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| IdentityError::BadMac(s.into()))?;
        }
        Ok(Mac(b))
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Which OS of the node the address is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    SetupOs,
    HostOs,
    GuestOs,
    /// The GuestOS VM started for a GuestOS upgrade (kept distinct from the running one).
    UpgradeGuestOs,
}

impl NodeType {
    pub fn index(self) -> u8 {
        match self {
            NodeType::SetupOs => 0x0f,
            NodeType::HostOs => 0x00,
            NodeType::GuestOs => 0x01,
            NodeType::UpgradeGuestOs => 0x02,
        }
    }
}

/// The MAC of one OS of a node. `host_slot` tells apart several hosts sharing one
/// management MAC (0 normally).
pub fn deterministic_mac(
    management: &Mac,
    deployment: &str,
    node_type: NodeType,
    host_slot: u8,
) -> Mac {
    let seed = format!("{}{deployment}\n", management);
    let h = Sha256::digest(seed.as_bytes());
    Mac([
        0x6a,
        node_type.index() | (host_slot << 4),
        h[0],
        h[1],
        h[2],
        h[3],
    ])
}

/// Parse a /64 prefix given as `a:b:c:d`, `a:b:c:d::` or `a:b:c:d::/64`.
pub fn parse_prefix(s: &str) -> Result<[u16; 4], IdentityError> {
    let t = s.trim().trim_end_matches("/64");
    let full = if t.contains("::") {
        t.to_string()
    } else {
        format!("{t}::")
    };
    let addr: Ipv6Addr = full
        .parse()
        .map_err(|_| IdentityError::BadPrefix(s.into()))?;
    let seg = addr.segments();
    if seg[4..].iter().any(|x| *x != 0) {
        return Err(IdentityError::BadPrefix(s.into()));
    }
    Ok([seg[0], seg[1], seg[2], seg[3]])
}

/// The /64 a node uses when its config gives no routable prefix (local networks): `fd00::/64`.
pub const LOCAL_PREFIX: [u16; 4] = [0xfd00, 0, 0, 0];

/// The address a GuestOS registers with when it has no routable prefix. The host computes
/// the same from the MAC it gave its guest, which is how it finds its node in the registry.
pub fn local_ipv6(mac: &Mac) -> Ipv6Addr {
    ipv6_address(&LOCAL_PREFIX, mac)
}

/// The node's IPv6 address: prefix + EUI-64 of the MAC.
pub fn ipv6_address(prefix: &[u16; 4], mac: &Mac) -> Ipv6Addr {
    let m = mac.0;
    let eui = [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
    Ipv6Addr::new(
        prefix[0],
        prefix[1],
        prefix[2],
        prefix[3],
        u16::from_be_bytes([eui[0], eui[1]]),
        u16::from_be_bytes([eui[2], eui[3]]),
        u16::from_be_bytes([eui[4], eui[5]]),
        u16::from_be_bytes([eui[6], eui[7]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        let mgmt: Mac = "70:B5:E8:E8:25:DE".parse().unwrap();
        assert_eq!(
            deterministic_mac(&mgmt, "testnet", NodeType::HostOs, 0).to_string(),
            "6a:00:f8:87:a4:8a"
        );
        assert_eq!(
            deterministic_mac(&mgmt, "testnet", NodeType::GuestOs, 0).to_string(),
            "6a:01:f8:87:a4:8a"
        );
        assert_eq!(
            deterministic_mac(&mgmt, "testnet", NodeType::SetupOs, 1).to_string(),
            "6a:1f:f8:87:a4:8a"
        );
        assert_ne!(
            deterministic_mac(&mgmt, "mainnet", NodeType::HostOs, 0),
            deterministic_mac(&mgmt, "testnet", NodeType::HostOs, 0)
        );
    }

    #[test]
    fn eui64_address() {
        let mac: Mac = "6a:00:f8:87:a4:8a".parse().unwrap();
        let p = parse_prefix("2a00:fb01:400:200").unwrap();
        assert_eq!(
            ipv6_address(&p, &mac).to_string(),
            "2a00:fb01:400:200:6800:f8ff:fe87:a48a"
        );
        assert_eq!(parse_prefix("2a00:fb01:400:200::/64").unwrap(), p);
    }

    #[test]
    fn bad_input_is_named() {
        assert!("70:b5:e8"
            .parse::<Mac>()
            .unwrap_err()
            .to_string()
            .contains("70:b5:e8"));
        assert!("zz:b5:e8:e8:25:de".parse::<Mac>().is_err());
        assert!(parse_prefix("2a00:fb01:400:200:1::").is_err());
        assert!(parse_prefix("not-a-prefix")
            .unwrap_err()
            .to_string()
            .contains("not-a-prefix"));
    }
}
