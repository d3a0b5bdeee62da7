//! The control plane's table of peers: who they are (verified certificate), where they are
//! (endpoint), whether the operator wants them connected, and the last sessions handed to the
//! dataplane for each (for rekey decisions and status; never handed to a dataplane again).
//!
//! Owns peer bookkeeping only; it never talks to the dataplane or reads a clock, and it never
//! logs key material (sessions' keys stay in `Zeroizing` storage inside `InstallSession`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use shadowmesh_ipc::InstallSession;

use crate::cert::{NodeCert, Prefix};
use crate::identity::hex;

/// A session handed to the dataplane.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// What was installed (keys included, zeroized on drop).
    pub install: InstallSession,
    /// When the handshake took effect (monotonic time).
    pub established_at: Duration,
    /// True if we initiated it.
    pub initiator: bool,
}

impl SessionRecord {
    /// Seconds since the handshake.
    #[must_use]
    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.established_at)
    }
}

/// One peer.
#[derive(Debug)]
pub struct Peer {
    /// Dataplane peer id (1-based, stable for the control plane's lifetime).
    pub id: u32,
    /// Name (configuration override or the certificate's).
    pub name: String,
    /// Verified certificate.
    pub cert: NodeCert,
    /// SHA-256 of its signing key.
    pub node_id: [u8; 32],
    /// Underlay endpoint (configured, learned from a handshake, or reported by roaming).
    pub endpoint: Option<SocketAddr>,
    /// False after `disconnect` (no handshakes, removed from the dataplane).
    pub enabled: bool,
    /// Learned from an initiation rather than configured.
    pub dynamic: bool,
    /// The latest session.
    pub session: Option<SessionRecord>,
    /// The session before it (the dataplane keeps it as `previous`).
    pub previous: Option<SessionRecord>,
    /// When the last handshake completed.
    pub last_handshake: Option<Duration>,
    /// Local index of our initiation in flight, if any.
    pub in_flight: Option<u32>,
    /// When the last initiation started (on-demand rate limit).
    pub last_started: Option<Duration>,
    /// No timer-driven initiation before this time (after a give-up).
    pub next_attempt: Duration,
    /// A handshake with it completed, so it has our certificate cached (send its hash).
    pub has_our_cert: bool,
    /// Consecutive initiations that got no answer.
    pub failures: u32,
    /// Liveness as last probed (`None`: not probed yet); see `crate::node`.
    pub reachable: Option<bool>,
}

impl Peer {
    /// A new, enabled peer.
    #[must_use]
    pub fn new(id: u32, name: String, cert: NodeCert, endpoint: Option<SocketAddr>) -> Self {
        Self {
            id,
            name,
            node_id: cert.node_id(),
            cert,
            endpoint,
            enabled: true,
            dynamic: false,
            session: None,
            previous: None,
            last_handshake: None,
            in_flight: None,
            last_started: None,
            next_attempt: Duration::ZERO,
            has_our_cert: false,
            failures: 0,
            reachable: None,
        }
    }

    /// Allowed prefixes in the dataplane's representation.
    #[must_use]
    pub fn routes(&self) -> Vec<(IpAddr, u8)> {
        self.cert
            .allowed_prefixes()
            .into_iter()
            .map(|p| match p {
                Prefix::V4(a, l) => (IpAddr::V4(a), l),
                Prefix::V6(a, l) => (IpAddr::V6(a), l),
            })
            .collect()
    }

    /// A short, loggable node id (first 8 bytes in hex).
    #[must_use]
    pub fn short_id(&self) -> String {
        hex(&self.node_id[..8])
    }

    /// Whether the latest session can still carry traffic at `now`.
    #[must_use]
    pub fn live_session(&self, now: Duration, reject_after: Duration) -> Option<&SessionRecord> {
        self.session.as_ref().filter(|s| s.age(now) < reject_after)
    }
}

/// Peers by dataplane id, with lookups by node id and name. Ids start at 1 and are never
/// reused; an id can be reserved (for a node whose handshake is not confirmed yet) before the
/// peer is inserted under it.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: BTreeMap<u32, Peer>,
    by_node: HashMap<[u8; 32], u32>,
    last_id: u32,
}

impl PeerTable {
    /// Adds a peer under a new id and returns it; `None` if its node id is already present.
    pub fn add(
        &mut self,
        name: String,
        cert: NodeCert,
        endpoint: Option<SocketAddr>,
    ) -> Option<u32> {
        if self.by_node.contains_key(&cert.node_id()) {
            return None;
        }
        let id = self.reserve_id();
        self.insert(Peer::new(id, name, cert, endpoint))
            .then_some(id)
    }

    /// A fresh id, not used by any peer yet (and never handed out again).
    pub fn reserve_id(&mut self) -> u32 {
        self.last_id = self.last_id.saturating_add(1);
        self.last_id
    }

    /// Inserts `peer` under its own (reserved) id; false if that id or its node id is taken.
    pub fn insert(&mut self, peer: Peer) -> bool {
        if self.peers.contains_key(&peer.id) || self.by_node.contains_key(&peer.node_id) {
            return false;
        }
        self.last_id = self.last_id.max(peer.id);
        self.by_node.insert(peer.node_id, peer.id);
        self.peers.insert(peer.id, peer);
        true
    }

    /// Peer by dataplane id.
    #[must_use]
    pub fn get(&self, id: u32) -> Option<&Peer> {
        self.peers.get(&id)
    }

    /// Mutable peer by dataplane id.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Peer> {
        self.peers.get_mut(&id)
    }

    /// Peer id by node id.
    #[must_use]
    pub fn by_node(&self, node_id: &[u8; 32]) -> Option<u32> {
        self.by_node.get(node_id).copied()
    }

    /// Peer id by name (or by node id hex prefix of at least 8 characters).
    #[must_use]
    pub fn by_name(&self, name: &str) -> Option<u32> {
        self.peers
            .values()
            .find(|p| p.name == name)
            .or_else(|| {
                (name.len() >= 8)
                    .then(|| {
                        self.peers
                            .values()
                            .find(|p| hex(&p.node_id).starts_with(name))
                    })
                    .flatten()
            })
            .map(|p| p.id)
    }

    /// All peers in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// All peers, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.peers.values_mut()
    }

    /// Number of peers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True without peers.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// Whether two prefixes share any address (one contains the other); different families never
/// overlap.
#[must_use]
pub fn prefixes_overlap(a: (IpAddr, u8), b: (IpAddr, u8)) -> bool {
    let len = a.1.min(b.1);
    match (a.0, b.0) {
        (IpAddr::V4(x), IpAddr::V4(y)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(x) & mask == u32::from(y) & mask
        }
        (IpAddr::V6(x), IpAddr::V6(y)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(x) & mask == u128::from(y) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::prefixes_overlap;

    fn p(s: &str) -> (std::net::IpAddr, u8) {
        let (a, l) = s.split_once('/').unwrap();
        (a.parse().unwrap(), l.parse().unwrap())
    }

    #[test]
    fn overlap_is_containment_either_way() {
        assert!(prefixes_overlap(p("100.64.0.2/32"), p("100.64.0.2/32")));
        assert!(prefixes_overlap(p("100.64.0.0/10"), p("100.64.0.2/32")));
        assert!(prefixes_overlap(p("100.64.0.2/32"), p("100.64.0.0/10")));
        assert!(!prefixes_overlap(p("100.64.0.2/32"), p("100.64.0.3/32")));
        assert!(prefixes_overlap(p("0.0.0.0/0"), p("198.51.100.1/32")));
        assert!(prefixes_overlap(p("fd00::/64"), p("fd00::2/128")));
        assert!(!prefixes_overlap(p("fd00::2/128"), p("fd00::3/128")));
        assert!(prefixes_overlap(p("::/0"), p("fd00::3/128")));
        assert!(!prefixes_overlap(p("100.64.0.2/32"), p("fd00::2/128")));
    }
}
