//! Rate limits: one token bucket per client (an IPv4 address, or an IPv6 /64, since one
//! IPv6 host holds a whole /64) and one per subnet, from `governor`. A request over a limit
//! is answered 429 with `Retry-After`; the buckets of clients that went quiet are dropped
//! every few seconds, so a flood from many addresses does not grow memory without bound.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

/// Requests per second and burst, per client and per subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    pub per_client_per_sec: u32,
    pub per_client_burst: u32,
    pub per_subnet_per_sec: u32,
    pub per_subnet_burst: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            per_client_per_sec: 200,
            per_client_burst: 400,
            per_subnet_per_sec: 2000,
            per_subnet_burst: 4000,
        }
    }
}

/// Which limit a request hit, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Client(Duration),
    Subnet(Duration),
}

pub struct RateLimits {
    clients: DefaultKeyedRateLimiter<IpAddr>,
    subnets: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    /// Client buckets dropped so far (they went quiet).
    forgotten: std::sync::atomic::AtomicU64,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let nz = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
    Quota::per_second(nz(per_sec)).allow_burst(nz(burst.max(per_sec)))
}

impl RateLimits {
    pub fn new(c: RateConfig) -> RateLimits {
        RateLimits {
            clients: RateLimiter::keyed(quota(c.per_client_per_sec, c.per_client_burst)),
            subnets: RateLimiter::keyed(quota(c.per_subnet_per_sec, c.per_subnet_burst)),
            clock: DefaultClock::default(),
            forgotten: Default::default(),
        }
    }

    /// Take one token from `ip`'s bucket.
    pub fn client(&self, ip: IpAddr) -> Result<(), Limited> {
        self.clients
            .check_key(&client_key(ip))
            .map_err(|n| Limited::Client(n.wait_time_from(self.clock.now())))
    }

    /// Take one token from `subnet`'s bucket (subnets come from the routing table only, so
    /// no client can add keys here).
    pub fn subnet(&self, subnet: &str) -> Result<(), Limited> {
        self.subnets
            .check_key(&subnet.to_string())
            .map_err(|n| Limited::Subnet(n.wait_time_from(self.clock.now())))
    }

    /// Drop the buckets that are full again (their clients went quiet).
    pub fn forget_quiet(&self) {
        let before = self.clients.len();
        self.clients.retain_recent();
        let dropped = before.saturating_sub(self.clients.len()) as u64;
        self.forgotten
            .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        self.clients.shrink_to_fit();
        self.subnets.retain_recent();
    }

    /// Clients with a bucket now.
    pub fn tracked_clients(&self) -> usize {
        self.clients.len()
    }

    /// Client buckets dropped since the start.
    pub fn forgotten_clients(&self) -> u64 {
        self.forgotten.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64 (an IPv4-mapped
/// IPv6 address counts as the IPv4 one).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_burst_waits_and_others_do_not() {
        let l = RateLimits::new(RateConfig {
            per_client_per_sec: 5,
            per_client_burst: 5,
            per_subnet_per_sec: 1000,
            per_subnet_burst: 1000,
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..5 {
            l.client(a).unwrap();
        }
        match l.client(a) {
            Err(Limited::Client(wait)) => assert!(wait <= Duration::from_millis(200), "{wait:?}"),
            other => panic!("{other:?}"),
        }
        l.client(b).unwrap();
        // Two addresses of one IPv6 /64 share a bucket; another /64 has its own.
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        for _ in 0..5 {
            l.client(v6("2001:db8:0:1::1")).unwrap();
        }
        assert!(l.client(v6("2001:db8:0:1::ffff")).is_err());
        l.client(v6("2001:db8:0:2::1")).unwrap();
        assert_eq!(client_key(v6("::ffff:10.0.0.1")), a);
    }

    #[test]
    fn a_subnet_over_its_limit_is_limited_for_everyone() {
        let l = RateLimits::new(RateConfig {
            per_client_per_sec: 1000,
            per_client_burst: 1000,
            per_subnet_per_sec: 3,
            per_subnet_burst: 3,
        });
        for _ in 0..3 {
            l.subnet("s1").unwrap();
        }
        assert!(matches!(l.subnet("s1"), Err(Limited::Subnet(_))));
        l.subnet("s2").unwrap();
    }

    #[test]
    fn quiet_clients_are_forgotten() {
        let l = RateLimits::new(RateConfig {
            per_client_per_sec: 1000,
            per_client_burst: 1000,
            ..Default::default()
        });
        for i in 0..200u8 {
            l.client(IpAddr::from([10, 1, 0, i])).unwrap();
        }
        assert_eq!(l.tracked_clients(), 200);
        std::thread::sleep(Duration::from_millis(20));
        l.forget_quiet();
        assert_eq!(l.tracked_clients(), 0);
        assert_eq!(l.forgotten_clients(), 200);
    }
}
