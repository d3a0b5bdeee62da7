//! A worker's own view of the peers: sessions by receiver index, routes, endpoints.
//!
//! Every worker keeps a private copy, changed only by [`Command`]s that the IPC thread sends
//! to all workers; sessions themselves are shared `Arc`s (one send counter, one replay window).
//! So the per-packet path reads plain maps with no lock. Changes may allocate (they come from
//! the control plane); lookups never do.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::relay::RelayRoute;
use crate::routing::RoutingTable;
use crate::session::{PeerId, PeerSessions, Session, MAX_PENDING};

use super::counters::PeerCounters;

/// Which slot a new session goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Responder side: pending, usable for receiving now, for sending once the peer
    /// confirmed it. A peer may have up to [`MAX_PENDING`] at once (the oldest is pushed
    /// out), even a peer with no routes and no endpoint yet; the first authenticated packet on
    /// one promotes it and drops the others ([`super::Event::SessionConfirmed`]).
    Next,
    /// Initiator side: used for sending at once.
    Current,
}

/// A change to the workers' tables, sent by the IPC thread to every worker.
#[derive(Clone, Debug)]
pub enum Command {
    /// Installs a session for a peer (creating the peer if new).
    InstallSession {
        /// The peer.
        peer: PeerId,
        /// Where it goes.
        slot: Slot,
        /// The session, shared by all workers.
        session: Arc<Session>,
    },
    /// Removes the session with this local index.
    RemoveSession {
        /// Its local (receiver) index.
        local_index: u32,
    },
    /// Removes a peer with its sessions and routes.
    RemovePeer {
        /// The peer.
        peer: PeerId,
    },
    /// Replaces a peer's allowed prefixes.
    SetRoutes {
        /// The peer.
        peer: PeerId,
        /// Its prefixes, shared by all workers.
        prefixes: Arc<[(IpAddr, u8)]>,
    },
    /// Prefixes a peer without routes may send from (inbound check only; see
    /// `DownMsg::SetSources`).
    SetSources {
        /// The peer.
        peer: PeerId,
        /// Its certified prefixes, shared by all workers.
        prefixes: Arc<[(IpAddr, u8)]>,
    },
    /// Sets where a peer's datagrams go.
    SetEndpoint {
        /// The peer.
        peer: PeerId,
        /// Its underlay address.
        addr: SocketAddr,
    },
    /// Sends a keepalive (an empty data message) to a peer on its current session, so a
    /// responder sees key confirmation at once (given to one worker only).
    Keepalive {
        /// The peer.
        peer: PeerId,
    },
    /// Relays data messages from `from` with receiver index `index` (see [`crate::relay`]).
    SetRelay {
        /// Source address of the relayed peer.
        from: SocketAddr,
        /// Receiver index its data messages carry.
        index: u32,
        /// Where they go, and the limit, shared by all workers.
        route: RelayRoute,
    },
    /// Stops relaying from `from` with receiver index `index`.
    RemoveRelay {
        /// Source address of the relayed peer.
        from: SocketAddr,
        /// Receiver index.
        index: u32,
    },
    /// Sends a control datagram from the data port (given to one worker only).
    SendControl {
        /// Destination.
        dst: SocketAddr,
        /// The datagram.
        payload: Vec<u8>,
    },
}

/// One peer, as a worker sees it.
#[derive(Debug)]
pub struct PeerEntry {
    /// Its current / previous / pending sessions.
    pub sessions: PeerSessions,
    /// Where its datagrams go (None until known).
    pub endpoint: Option<SocketAddr>,
    /// This worker's counters for it.
    pub counters: Arc<PeerCounters>,
    /// When this worker last asked for a handshake with it (rate limit).
    pub last_no_session_event: Option<Duration>,
    /// The session a rekey was last asked for, and when: set only once the event was queued,
    /// so a request lost to a full queue is asked again, and again after an interval while
    /// the session still needs it (the control plane may have lost it further up).
    pub rekey_asked: Option<(u32, Duration)>,
    /// A `SessionConfirmed` this worker owes the control plane (its queue was full).
    pub owed_confirm: Option<u32>,
    /// An `EndpointChanged` this worker owes the control plane (its queue was full).
    pub owed_endpoint: bool,
    /// Sources it may send from while it has no routes (a pending responder session's
    /// certified addresses); empty for peers with routes.
    pub sources: Arc<[(IpAddr, u8)]>,
}

impl PeerEntry {
    fn new(counters: Arc<PeerCounters>) -> Self {
        Self {
            sessions: PeerSessions::new(),
            endpoint: None,
            counters,
            last_no_session_event: None,
            rekey_asked: None,
            owed_confirm: None,
            owed_endpoint: false,
            sources: Arc::from(Vec::new()),
        }
    }

    /// Whether `src` lies in one of the peer's [`sources`](Self::sources) (a few prefixes at
    /// most; checked only when the routing table does not allow `src`).
    #[must_use]
    pub fn sources_allow(&self, src: IpAddr) -> bool {
        self.sources
            .iter()
            .any(|&(net, len)| prefix_contains(net, len, src))
    }
}

/// Multiplicative hashing for the u32 keys the control plane assigns: fast, and the keys are
/// not attacker-chosen (an unknown index from the network is only ever looked up, never
/// inserted, so collisions cannot be forced into long chains).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// A worker's tables.
#[derive(Debug, Default)]
pub struct Tables {
    /// Peers by id.
    pub peers: IdMap<PeerEntry>,
    /// Which peer owns each local (receiver) index.
    pub by_index: IdMap<PeerId>,
    /// Cryptokey routing: inner address → peer.
    pub routes: RoutingTable<PeerId>,
    /// Session installs refused because their index was in use.
    pub refused_installs: u64,
    /// Relay routes by (source address, receiver index); empty unless this node relays.
    /// Looked up with addresses and indices from the network but only inserted by the
    /// control plane, so the default (keyed) hasher keeps lookups cheap and unforgeable.
    pub relays: HashMap<(SocketAddr, u32), RelayRoute>,
}

impl Tables {
    /// Applies a command; `new_counters` makes the counters of a peer seen for the first time
    /// (the IPC thread keeps the other handle to read them).
    pub fn apply(
        &mut self,
        cmd: Command,
        new_counters: &mut dyn FnMut(PeerId) -> Arc<PeerCounters>,
    ) {
        match cmd {
            Command::InstallSession {
                peer,
                slot,
                session,
            } => {
                // An index already in use is refused, never overwritten: under another peer
                // it would take over that peer's traffic, under the same peer it would restart
                // a key's send counter (nonce reuse) and replay window.
                if self.by_index.contains_key(&session.local_index) {
                    self.refused_installs += 1;
                    return;
                }
                let entry = self
                    .peers
                    .entry(peer)
                    .or_insert_with(|| PeerEntry::new(new_counters(peer)));
                self.by_index.insert(session.local_index, peer);
                let replaced = match slot {
                    Slot::Next => entry.sessions.install_next(session),
                    Slot::Current => entry.sessions.install_current(session),
                };
                // A session pushed out of every slot no longer receives.
                if let Some(old) = replaced {
                    if entry.sessions.find(old.local_index).is_none() {
                        self.by_index.remove(&old.local_index);
                    }
                }
                entry.last_no_session_event = None;
            }
            Command::RemoveSession { local_index } => {
                if let Some(peer) = self.by_index.remove(&local_index) {
                    if let Some(entry) = self.peers.get_mut(&peer) {
                        let _ = entry.sessions.remove(local_index);
                    }
                }
            }
            Command::RemovePeer { peer } => {
                if self.peers.remove(&peer).is_some() {
                    self.by_index.retain(|_, p| *p != peer);
                    self.routes.remove_value(peer);
                }
            }
            Command::SetRoutes { peer, prefixes } => {
                // A peer known only by its routes must exist, so that traffic to it asks for a
                // handshake instead of being dropped as unrouted.
                self.peers
                    .entry(peer)
                    .or_insert_with(|| PeerEntry::new(new_counters(peer)));
                self.routes.remove_value(peer);
                for &(addr, len) in prefixes.iter() {
                    // The IPC layer validated the prefixes; a bad one is skipped, not fatal.
                    let _ = self.routes.insert(addr, len, peer);
                }
            }
            Command::SetSources { peer, prefixes } => {
                self.peers
                    .entry(peer)
                    .or_insert_with(|| PeerEntry::new(new_counters(peer)))
                    .sources = prefixes;
            }
            Command::SetEndpoint { peer, addr } => {
                let entry = self
                    .peers
                    .entry(peer)
                    .or_insert_with(|| PeerEntry::new(new_counters(peer)));
                entry.endpoint = Some(addr);
            }
            Command::SetRelay { from, index, route } => {
                self.relays.insert((from, index), route);
            }
            Command::RemoveRelay { from, index } => {
                self.relays.remove(&(from, index));
            }
            Command::SendControl { .. } | Command::Keepalive { .. } => {}
        }
    }

    /// Promotes `local_index` from pending to `current` for `peer` if it is pending, forgetting
    /// the indices of the sessions that drop out (the peer's other pending sessions and the
    /// old `previous`). Returns whether a promotion happened.
    pub fn confirm(&mut self, peer: PeerId, local_index: u32) -> bool {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return false;
        };
        // At most the other pending sessions and the old previous drop out; collected on the
        // stack (no allocation) so each index is unmapped only if no slot still holds it.
        let mut gone = [0u32; MAX_PENDING + 1];
        let mut n = 0;
        let promoted = entry.sessions.confirm(local_index, |s| {
            if let Some(g) = gone.get_mut(n) {
                *g = s.local_index;
                n += 1;
            }
        });
        for idx in &gone[..n] {
            if entry.sessions.find(*idx).is_none() && self.by_index.get(idx) == Some(&peer) {
                self.by_index.remove(idx);
            }
        }
        promoted
    }

    /// Drops sessions whose receive keys expired.
    pub fn expire(&mut self, now: Duration) {
        let by_index = &mut self.by_index;
        for entry in self.peers.values_mut() {
            entry.sessions.expire(now, |gone| {
                by_index.remove(&gone.local_index);
            });
        }
    }
}

/// Whether `ip` lies in `net/len` (same family only).
fn prefix_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let len = u32::from(len.min(32));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let len = u32::from(len.min(128));
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Cipher;
    use crate::session::{Limits, SessionKeys};

    fn session(index: u32, peer: PeerId, key: u8) -> Arc<Session> {
        let keys = SessionKeys {
            cipher: Cipher::Aes256Gcm,
            send: [key; 32],
            recv: [key.wrapping_add(1); 32],
        };
        Arc::new(Session::new(index, 77, peer, &keys, Duration::ZERO, Limits::DEFAULT).unwrap())
    }

    #[test]
    fn an_index_in_use_is_refused_never_overwritten() {
        let mut t = Tables::default();
        let mut counters = |_| Arc::new(PeerCounters::default());
        let install =
            |t: &mut Tables, peer, slot, s, c: &mut dyn FnMut(PeerId) -> Arc<PeerCounters>| {
                t.apply(
                    Command::InstallSession {
                        peer,
                        slot,
                        session: s,
                    },
                    c,
                );
            };
        let first = session(5, 1, 1);
        install(&mut t, 1, Slot::Current, Arc::clone(&first), &mut counters);
        // Another peer's session with the same index does not take it over.
        install(&mut t, 2, Slot::Next, session(5, 2, 9), &mut counters);
        assert_eq!(t.by_index.get(&5), Some(&1));
        assert!(t.peers.get(&2).is_none_or(|e| e.sessions.find(5).is_none()));
        // Nor does the same peer's (it would restart the key's counter).
        install(&mut t, 1, Slot::Current, session(5, 1, 1), &mut counters);
        let kept = t.peers.get(&1).and_then(|e| e.sessions.find(5)).unwrap();
        assert!(Arc::ptr_eq(kept, &first));
        assert_eq!(t.refused_installs, 2);
    }
}
