//! A sans-IO model of a UDP NAT router for the simulator: mapping (endpoint-independent or
//! endpoint-dependent), filtering (endpoint-independent, address-dependent or
//! address-and-port-dependent), binding timeouts, a bounded table and its counters.
//!
//! Owns one NAT's translation table and its seeded port generator; it never holds node state,
//! never reads a clock (time is passed in) and never iterates a `HashMap` (tables are
//! `BTreeMap`s, so a run replays exactly by its seed). Placing NATs on a network is the
//! caller's job: `control/tests/nat_traversal.rs` puts one in front of each NATed node; the
//! simulator's engines (`mesh`, `kad`) do not place NATs yet.
//!
//! Choices (RFC 4787 terms; docs/protocol.md §9.3 uses them):
//! - One binding timeout per mapping, refreshed by outbound traffic and by every inbound
//!   datagram the filter admits (Linux conntrack refreshes a flow on packets in both
//!   directions). Expired bindings are removed lazily, when looked up or when room is needed.
//! - Endpoint-independent mapping preserves the internal port when it is free on the external
//!   address; otherwise, and always for endpoint-dependent mapping, the port is drawn from the
//!   NAT's own seeded generator (1024–65535, a bounded number of tries, then a bounded scan).
//! - No hairpinning rule: a datagram a host sends to its own NAT's external address is the
//!   caller's to drop (as Linux `masquerade` without a hairpin rule does).
//! - At most [`NatConfig::max_mappings`] bindings: the least recently used one is evicted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_core::RngCore;
use serde::Serialize;

use crate::rand::SeededRng;

/// Remote endpoints remembered per mapping for filtering (a mapping used with more peers
/// forgets the least recently used one: the table stays bounded).
pub const PEERS_PER_MAPPING: usize = 64;

/// Lowest external port a NAT allocates when it does not preserve the internal one.
const PORT_MIN: u16 = 1024;
/// Random draws before falling back to a scan for a free port.
const PORT_TRIES: u32 = 64;

/// How a NAT maps and filters (RFC 4787 behaviours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering ("full cone"): once a host has sent, anyone
    /// may reach it at its mapped address.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: only IP addresses the host
    /// has sent to may reach it (from any port).
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (Linux
    /// `masquerade`'s default): only the exact endpoints the host has sent to may reach it.
    PortRestricted,
    /// Endpoint-dependent mapping ("symmetric"): a new external port per destination endpoint,
    /// address-and-port-dependent filtering.
    Symmetric,
}

impl NatKind {
    /// Every kind, for tests and scenarios that try each.
    pub const ALL: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// Whether the external port depends only on the internal endpoint.
    #[must_use]
    pub fn independent_mapping(self) -> bool {
        self != NatKind::Symmetric
    }
}

/// Settings of one NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NatConfig {
    /// Mapping and filtering behaviour.
    pub kind: NatKind,
    /// A binding expires after this long without traffic that refreshes it.
    #[serde(serialize_with = "crate::sim::secs")]
    pub timeout: Duration,
    /// Most bindings held at once (the least recently used is evicted beyond).
    pub max_mappings: usize,
}

impl NatConfig {
    /// The defaults of `kind`: 30 s bindings for the strictest (symmetric, as Linux conntrack's
    /// unreplied UDP timeout), 120 s for the others (conntrack's UDP stream timeout), 4096
    /// bindings.
    #[must_use]
    pub fn new(kind: NatKind) -> Self {
        let timeout = if kind == NatKind::Symmetric {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(120)
        };
        Self {
            kind,
            timeout,
            max_mappings: 4096,
        }
    }
}

/// What a NAT did with the datagrams it saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NatStats {
    /// Outbound datagrams whose source was translated.
    pub translated_out: u64,
    /// Inbound datagrams admitted and translated back.
    pub translated_in: u64,
    /// Inbound datagrams refused by the filter (a binding exists, the sender is not allowed).
    pub filtered: u64,
    /// Inbound datagrams to an external port with no binding.
    pub no_mapping: u64,
    /// Bindings removed because their timeout passed.
    pub expired: u64,
    /// Bindings removed to make room (the table was full).
    pub evicted: u64,
    /// Datagrams a host sent to its own NAT's external address (dropped: no hairpinning).
    pub hairpin_dropped: u64,
    /// Outbound datagrams dropped because no external port was free.
    pub ports_exhausted: u64,
}

impl NatStats {
    /// Adds `o`'s counters to these.
    pub fn add(&mut self, o: &NatStats) {
        self.translated_out += o.translated_out;
        self.translated_in += o.translated_in;
        self.filtered += o.filtered;
        self.no_mapping += o.no_mapping;
        self.expired += o.expired;
        self.evicted += o.evicted;
        self.hairpin_dropped += o.hairpin_dropped;
        self.ports_exhausted += o.ports_exhausted;
    }
}

/// Why an inbound datagram was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundDrop {
    /// No (live) binding on that external port.
    NoMapping,
    /// The binding exists but the filter refuses the sender.
    Filtered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    internal: SocketAddr,
    /// The destination, for endpoint-dependent mappings only.
    remote: Option<SocketAddr>,
    last: Duration,
    /// Remote endpoints the host sent to through this binding, with when (for filtering).
    peers: Vec<(SocketAddr, Duration)>,
}

/// One NAT's translation table (sans-IO: time is passed in).
#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    external: IpAddr,
    rng: SeededRng,
    /// External port → binding.
    by_port: BTreeMap<u16, Mapping>,
    /// (internal, destination if endpoint-dependent) → external port.
    by_key: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    stats: NatStats,
}

impl Nat {
    /// A NAT with external address `external`, its ports drawn from `rng` (its own stream).
    #[must_use]
    pub fn new(config: NatConfig, external: IpAddr, rng: SeededRng) -> Self {
        Self {
            config,
            external,
            rng,
            by_port: BTreeMap::new(),
            by_key: BTreeMap::new(),
            stats: NatStats::default(),
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// The external address (public, or in the outer NAT's private realm when nested).
    #[must_use]
    pub fn external(&self) -> IpAddr {
        self.external
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> NatStats {
        self.stats
    }

    /// Counts a datagram dropped because it was sent to this NAT's own external address.
    pub fn count_hairpin(&mut self) {
        self.stats.hairpin_dropped += 1;
    }

    /// Live bindings (expired ones not yet removed are counted too).
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_port.len()
    }

    /// No bindings.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_port.is_empty()
    }

    /// The external endpoint a datagram from `internal` to `remote` leaves with at `now`,
    /// creating or refreshing its binding. `None` (counted) if no external port is free.
    pub fn outbound(
        &mut self,
        now: Duration,
        internal: SocketAddr,
        remote: SocketAddr,
    ) -> Option<SocketAddr> {
        let key = (
            internal,
            (!self.config.kind.independent_mapping()).then_some(remote),
        );
        let port = match self.by_key.get(&key).copied() {
            Some(p) if !self.expire_if_stale(p, now) => p,
            _ => {
                let Some(p) = self.allocate(now, internal) else {
                    self.stats.ports_exhausted += 1;
                    return None;
                };
                self.by_port.insert(
                    p,
                    Mapping {
                        internal,
                        remote: key.1,
                        last: now,
                        peers: Vec::new(),
                    },
                );
                self.by_key.insert(key, p);
                p
            }
        };
        let m = self.by_port.get_mut(&port)?;
        m.last = now;
        if let Some(e) = m.peers.iter_mut().find(|(a, _)| *a == remote) {
            e.1 = now;
        } else {
            if m.peers.len() >= PEERS_PER_MAPPING {
                if let Some(oldest) = (0..m.peers.len()).min_by_key(|&j| m.peers[j].1) {
                    m.peers.swap_remove(oldest);
                }
            }
            m.peers.push((remote, now));
        }
        self.stats.translated_out += 1;
        Some(SocketAddr::new(self.external, port))
    }

    /// The internal endpoint a datagram from `remote` to external port `port` goes to at `now`,
    /// if a live binding exists and the filter admits `remote` (which refreshes the binding).
    ///
    /// # Errors
    /// Why it is dropped (counted).
    pub fn inbound(
        &mut self,
        now: Duration,
        port: u16,
        remote: SocketAddr,
    ) -> Result<SocketAddr, InboundDrop> {
        if !self.by_port.contains_key(&port) || self.expire_if_stale(port, now) {
            self.stats.no_mapping += 1;
            return Err(InboundDrop::NoMapping);
        }
        let kind = self.config.kind;
        let Some(m) = self.by_port.get_mut(&port) else {
            self.stats.no_mapping += 1;
            return Err(InboundDrop::NoMapping);
        };
        let admitted = match kind {
            NatKind::FullCone => true,
            NatKind::AddressRestricted => m.peers.iter().any(|(a, _)| a.ip() == remote.ip()),
            NatKind::PortRestricted | NatKind::Symmetric => {
                m.peers.iter().any(|(a, _)| *a == remote)
            }
        };
        if !admitted {
            self.stats.filtered += 1;
            return Err(InboundDrop::Filtered);
        }
        m.last = now;
        self.stats.translated_in += 1;
        Ok(m.internal)
    }

    /// The external port bound for `internal` (towards `remote` for endpoint-dependent
    /// mapping), if live at `now`; for tests and scenarios, changes nothing.
    #[must_use]
    pub fn mapped_port(
        &self,
        now: Duration,
        internal: SocketAddr,
        remote: SocketAddr,
    ) -> Option<u16> {
        let key = (
            internal,
            (!self.config.kind.independent_mapping()).then_some(remote),
        );
        let p = *self.by_key.get(&key)?;
        let m = self.by_port.get(&p)?;
        (now.saturating_sub(m.last) < self.config.timeout).then_some(p)
    }

    /// Removes the binding on `port` if its timeout has passed; true if it did.
    fn expire_if_stale(&mut self, port: u16, now: Duration) -> bool {
        let stale = self
            .by_port
            .get(&port)
            .is_some_and(|m| now.saturating_sub(m.last) >= self.config.timeout);
        if stale {
            self.remove(port);
            self.stats.expired += 1;
        }
        stale
    }

    fn remove(&mut self, port: u16) {
        if let Some(m) = self.by_port.remove(&port) {
            self.by_key.remove(&(m.internal, m.remote));
        }
    }

    /// A free external port for a new binding of `internal`, making room first if the table is
    /// full: expired bindings go (counted as expired), else the least recently used one
    /// (counted as evicted).
    fn allocate(&mut self, now: Duration, internal: SocketAddr) -> Option<u16> {
        if self.by_port.len() >= self.config.max_mappings.max(1) {
            let timeout = self.config.timeout;
            let stale: Vec<u16> = self
                .by_port
                .iter()
                .filter(|(_, m)| now.saturating_sub(m.last) >= timeout)
                .map(|(p, _)| *p)
                .collect();
            self.stats.expired += stale.len() as u64;
            for p in stale {
                self.remove(p);
            }
            while self.by_port.len() >= self.config.max_mappings.max(1) {
                let Some(oldest) = self
                    .by_port
                    .iter()
                    .min_by_key(|(p, m)| (m.last, **p))
                    .map(|(p, _)| *p)
                else {
                    break;
                };
                self.remove(oldest);
                self.stats.evicted += 1;
            }
        }
        if self.config.kind.independent_mapping() && !self.by_port.contains_key(&internal.port()) {
            return Some(internal.port());
        }
        let span = u32::from(u16::MAX - PORT_MIN) + 1;
        for _ in 0..PORT_TRIES {
            let p = PORT_MIN + (self.rng.next_u32() % span) as u16;
            if !self.by_port.contains_key(&p) {
                return Some(p);
            }
        }
        (PORT_MIN..=u16::MAX).find(|p| !self.by_port.contains_key(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use std::net::Ipv4Addr;

    fn ep(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
    }

    fn nat(kind: NatKind, seed: u64) -> Nat {
        Nat::new(
            NatConfig::new(kind),
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 200)),
            SeededRng::seed_from_u64(seed),
        )
    }

    const T0: Duration = Duration::from_secs(1);
    fn host() -> SocketAddr {
        ep(192, 0, 2, 2, 4500)
    }
    fn r1() -> SocketAddr {
        ep(198, 51, 100, 1, 4500)
    }
    fn r2() -> SocketAddr {
        ep(198, 51, 100, 2, 4500)
    }

    #[test]
    fn mapping_is_endpoint_independent_except_for_symmetric() {
        for kind in NatKind::ALL {
            let mut n = nat(kind, 1);
            let a = n.outbound(T0, host(), r1()).unwrap();
            let b = n.outbound(T0, host(), r2()).unwrap();
            assert_eq!(a.ip(), n.external());
            assert_eq!(a == b, kind != NatKind::Symmetric, "{kind:?}: {a} {b}");
            // The same destination again keeps its binding.
            assert_eq!(n.outbound(T0, host(), r1()).unwrap(), a, "{kind:?}");
        }
    }

    #[test]
    fn full_cone_preserves_a_free_port_and_allocates_on_conflict() {
        let mut n = nat(NatKind::FullCone, 1);
        let a = n.outbound(T0, host(), r1()).unwrap();
        assert_eq!(a.port(), 4500);
        // A second host with the same internal port cannot keep it.
        let b = n.outbound(T0, ep(192, 0, 2, 3, 4500), r1()).unwrap();
        assert_ne!(b.port(), 4500);
        assert!(b.port() >= PORT_MIN);
    }

    #[test]
    fn filtering_follows_the_kind() {
        // (other port of a contacted address, another address) admitted?
        let want = [
            (NatKind::FullCone, true, true),
            (NatKind::AddressRestricted, true, false),
            (NatKind::PortRestricted, false, false),
            (NatKind::Symmetric, false, false),
        ];
        for (kind, other_port, other_addr) in want {
            let mut n = nat(kind, 2);
            let m = n.outbound(T0, host(), r1()).unwrap();
            assert_eq!(n.inbound(T0, m.port(), r1()), Ok(host()), "{kind:?}");
            let p = n.inbound(T0, m.port(), ep(198, 51, 100, 1, 9999));
            assert_eq!(p.is_ok(), other_port, "{kind:?} other port");
            let a = n.inbound(T0, m.port(), r2());
            assert_eq!(a.is_ok(), other_addr, "{kind:?} other address");
            let refused = u64::from(!other_port) + u64::from(!other_addr);
            assert_eq!(n.stats().filtered, refused, "{kind:?}");
            // Nothing is bound on another port.
            assert_eq!(
                n.inbound(T0, m.port().wrapping_add(1), r1()),
                Err(InboundDrop::NoMapping)
            );
        }
    }

    #[test]
    fn bindings_expire_and_outbound_traffic_refreshes_them() {
        for kind in NatKind::ALL {
            let mut n = nat(kind, 3);
            let t = n.config().timeout;
            let m = n.outbound(T0, host(), r1()).unwrap();
            // Refreshed just before the timeout: still alive one timeout later.
            let t1 = T0 + t - Duration::from_millis(1);
            assert_eq!(n.outbound(t1, host(), r1()), Some(m), "{kind:?}");
            assert_eq!(n.inbound(t1 + t / 2, m.port(), r1()), Ok(host()));
            // Idle for a whole timeout: gone.
            let t2 = t1 + t / 2 + t;
            assert_eq!(n.inbound(t2, m.port(), r1()), Err(InboundDrop::NoMapping));
            assert_eq!(n.stats().expired, 1, "{kind:?}");
            assert!(n.is_empty());
        }
        assert_eq!(
            NatConfig::new(NatKind::Symmetric).timeout,
            Duration::from_secs(30)
        );
        assert_eq!(
            NatConfig::new(NatKind::PortRestricted).timeout,
            Duration::from_secs(120)
        );
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_least_recently_used() {
        let mut n = Nat::new(
            NatConfig {
                max_mappings: 8,
                ..NatConfig::new(NatKind::Symmetric)
            },
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 200)),
            SeededRng::seed_from_u64(4),
        );
        let first = n.outbound(T0, host(), ep(198, 51, 100, 100, 1)).unwrap();
        for i in 0..20u16 {
            let t = T0 + Duration::from_millis(u64::from(i) + 1);
            n.outbound(t, host(), ep(198, 51, 100, 1, 1000 + i))
                .unwrap();
            assert!(n.len() <= 8);
        }
        assert_eq!(n.len(), 8);
        assert_eq!(n.stats().evicted, 13);
        assert_eq!(
            n.inbound(T0, first.port(), ep(198, 51, 100, 100, 1)),
            Err(InboundDrop::NoMapping)
        );
    }

    #[test]
    fn same_seed_same_ports_other_seed_other_ports() {
        let ports = |seed| {
            let mut n = nat(NatKind::Symmetric, seed);
            (0..32u16)
                .map(|i| {
                    n.outbound(T0, host(), ep(198, 51, 100, 1, i + 1))
                        .unwrap()
                        .port()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(ports(5), ports(5));
        assert_ne!(ports(5), ports(6));
    }
}
