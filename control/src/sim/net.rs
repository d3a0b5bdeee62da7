//! The simulated underlay: addresses, per-pair latency, loss, partitions, a datagram size limit
//! and the counters of what happened to every datagram.
//!
//! Owns only the network's model and its counters; it never holds node state and never reads a
//! clock. Latency is a pure function of (network key, pair), loss is drawn from the network's
//! own seeded generator, so a run is replayed exactly by its seed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand_core::RngCore;
use serde::Serialize;

use crate::rand::SeededRng;

/// UDP port every simulated node listens on.
pub const SIM_PORT: u16 = 4500;

/// The underlay address of node `i`: 198.51.100.1–254, then 203.0.113.1–254, then
/// 2001:db8::/32 (documentation ranges only).
#[must_use]
pub fn node_addr(i: usize) -> SocketAddr {
    let ip = if i < 254 {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, (i + 1) as u8))
    } else if i < 508 {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i - 254 + 1) as u8))
    } else {
        let j = (i - 508) as u64;
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0x0db8,
            0,
            0,
            0,
            (j >> 32) as u16,
            (j >> 16) as u16,
            j as u16,
        ))
    };
    SocketAddr::new(ip, SIM_PORT)
}

/// How the simulated underlay behaves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NetConfig {
    /// Shortest one-way latency of a pair.
    #[serde(serialize_with = "crate::sim::secs")]
    pub min_one_way: Duration,
    /// Longest one-way latency of a pair.
    #[serde(serialize_with = "crate::sim::secs")]
    pub max_one_way: Duration,
    /// Probability that a datagram is lost, in parts per million.
    pub loss_ppm: u32,
    /// Largest datagram delivered; larger ones are dropped and counted.
    pub max_datagram: usize,
}

impl Default for NetConfig {
    /// RTTs from 10 to 300 ms, no loss, 1500-byte datagrams.
    fn default() -> Self {
        Self {
            min_one_way: Duration::from_millis(5),
            max_one_way: Duration::from_millis(150),
            loss_ppm: 0,
            max_datagram: 1500,
        }
    }
}

/// What happened to the datagrams sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NetStats {
    /// Datagrams handed to the network by nodes.
    pub sent: u64,
    /// Bytes handed to the network.
    pub sent_bytes: u64,
    /// Datagrams delivered to a running node.
    pub delivered: u64,
    /// Lost at random.
    pub lost: u64,
    /// Dropped because sender and receiver are in different partitions.
    pub partitioned: u64,
    /// Dropped because the destination was down when it arrived.
    pub to_down_node: u64,
    /// Dropped because no node has the destination address.
    pub no_route: u64,
    /// Dropped because larger than [`NetConfig::max_datagram`].
    pub too_big: u64,
}

/// Why a datagram is not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver after this one-way latency.
    Deliver(Duration),
    /// Dropped (already counted).
    Drop,
}

/// The underlay model.
#[derive(Debug)]
pub struct Network {
    config: NetConfig,
    latency_key: u64,
    rng: SeededRng,
    partition: Vec<u32>,
    stats: NetStats,
}

/// SplitMix64's finaliser: a cheap, well-mixed, portable hash of a u64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Network {
    /// A network for `nodes` nodes; its latency key and loss stream come from `rng`.
    #[must_use]
    pub fn new(config: NetConfig, nodes: usize, rng: &mut SeededRng) -> Self {
        let latency_key = rng.next_u64();
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self {
            config,
            latency_key,
            rng: rand_core::SeedableRng::from_seed(seed),
            partition: vec![0; nodes],
            stats: NetStats::default(),
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Changes the loss probability (parts per million).
    pub fn set_loss_ppm(&mut self, ppm: u32) {
        self.config.loss_ppm = ppm;
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Makes room for node index `i`.
    pub(crate) fn ensure(&mut self, n: usize) {
        if self.partition.len() < n {
            self.partition.resize(n, 0);
        }
    }

    /// One-way latency between nodes `a` and `b` (symmetric, fixed for the run).
    #[must_use]
    pub fn one_way(&self, a: usize, b: usize) -> Duration {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let h = mix(self.latency_key ^ mix(((lo as u64) << 32) | hi as u64));
        let min = self.config.min_one_way.as_micros() as u64;
        let max = self.config.max_one_way.as_micros() as u64;
        let span = max.saturating_sub(min) + 1;
        Duration::from_micros(min + h % span)
    }

    /// Round-trip time between `a` and `b`.
    #[must_use]
    pub fn rtt(&self, a: usize, b: usize) -> Duration {
        self.one_way(a, b) * 2
    }

    /// Puts node `i` in partition `p` (nodes talk only within their partition; all start in 0).
    pub fn set_partition(&mut self, i: usize, p: u32) {
        self.ensure(i + 1);
        if let Some(x) = self.partition.get_mut(i) {
            *x = p;
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.partition.iter_mut().for_each(|p| *p = 0);
    }

    /// Decides the fate of a datagram of `len` bytes from `src` to `dst` (node indices),
    /// counting it.
    pub(crate) fn route(&mut self, src: usize, dst: usize, len: usize) -> Verdict {
        self.stats.sent += 1;
        self.stats.sent_bytes += len as u64;
        if len > self.config.max_datagram {
            self.stats.too_big += 1;
            return Verdict::Drop;
        }
        if self.partition.get(src) != self.partition.get(dst) {
            self.stats.partitioned += 1;
            return Verdict::Drop;
        }
        if self.config.loss_ppm > 0 && self.rng.next_u32() % 1_000_000 < self.config.loss_ppm {
            self.stats.lost += 1;
            return Verdict::Drop;
        }
        Verdict::Deliver(self.one_way(src, dst))
    }

    pub(crate) fn count_no_route(&mut self, len: usize) {
        self.stats.sent += 1;
        self.stats.sent_bytes += len as u64;
        self.stats.no_route += 1;
    }

    pub(crate) fn count_delivered(&mut self) {
        self.stats.delivered += 1;
    }

    pub(crate) fn count_to_down(&mut self) {
        self.stats.to_down_node += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn addresses_are_distinct_and_documentation_only() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..20_000 {
            let a = node_addr(i);
            assert!(seen.insert(a));
            match a.ip() {
                IpAddr::V4(v) => {
                    let o = v.octets();
                    assert!(matches!((o[0], o[1], o[2]), (198, 51, 100) | (203, 0, 113)));
                    assert!(o[3] != 0 && o[3] != 255);
                }
                IpAddr::V6(v) => assert_eq!(&v.segments()[..2], &[0x2001, 0x0db8]),
            }
        }
    }

    #[test]
    fn latency_is_symmetric_fixed_and_spans_the_range() {
        let mut rng = SeededRng::seed_from_u64(1);
        let net = Network::new(NetConfig::default(), 1000, &mut rng);
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for a in 0..200 {
            for b in 0..200 {
                if a == b {
                    continue;
                }
                let r = net.rtt(a, b);
                assert_eq!(r, net.rtt(b, a));
                assert!(r >= Duration::from_millis(10) && r <= Duration::from_millis(300));
                lo = lo.min(r);
                hi = hi.max(r);
            }
        }
        assert!(lo < Duration::from_millis(15), "{lo:?}");
        assert!(hi > Duration::from_millis(295), "{hi:?}");
        // A different seed gives a different matrix.
        let mut rng2 = SeededRng::seed_from_u64(2);
        let net2 = Network::new(NetConfig::default(), 1000, &mut rng2);
        assert!((0..50).any(|b| net.one_way(0, b + 1) != net2.one_way(0, b + 1)));
    }

    #[test]
    fn loss_partition_and_size_are_counted() {
        let mut rng = SeededRng::seed_from_u64(3);
        let mut net = Network::new(
            NetConfig {
                loss_ppm: 100_000,
                max_datagram: 1200,
                ..NetConfig::default()
            },
            4,
            &mut rng,
        );
        let mut lost = 0;
        for _ in 0..10_000 {
            if net.route(0, 1, 100) == Verdict::Drop {
                lost += 1;
            }
        }
        // 10 % ± a generous margin.
        assert!((800..1200).contains(&lost), "{lost}");
        assert_eq!(net.route(0, 1, 1201), Verdict::Drop);
        net.set_loss_ppm(0);
        net.set_partition(2, 1);
        assert_eq!(net.route(0, 2, 10), Verdict::Drop);
        assert!(matches!(net.route(2, 2, 10), Verdict::Deliver(_)));
        net.heal();
        assert!(matches!(net.route(0, 2, 10), Verdict::Deliver(_)));
        let s = net.stats();
        assert_eq!(s.lost, lost);
        assert_eq!((s.too_big, s.partitioned), (1, 1));
        assert_eq!(s.sent, 10_004);
    }
}
