//! The handshake driver: turns dataplane events, received control datagrams and time into
//! dataplane requests (send this datagram, install this session, set these routes).
//!
//! Sans-IO, in the quinn-proto style: feed it with [`Driver::handle_event`] /
//! [`Driver::handle_timeout`] / [`Driver::on_connected`] / [`Driver::connect`] /
//! [`Driver::disconnect`]; each returns the [`DownMsg`]s to send to the dataplane, in order.
//! [`Driver::poll_timeout`] says when to call `handle_timeout` next. `now` is a [`Now`]: every
//! timer runs on its monotonic part; its wall-clock part is used only for certificate validity
//! and handshake timestamps, so a jump of the wall clock moves no timer.
//!
//! Policy it owns: one initiation in flight per peer (retransmitted as a *new* M1 on the
//! transport's backoff, abandoned after its last retry and tried again later), a handshake for
//! every enabled peer without a live session, a rekey when the latest session is older than
//! `rekey_after` (or the dataplane asks), initiator sessions installed as `Current`, a
//! tie-break for simultaneous initiations (the node with the smaller node id does not answer),
//! random unique session indices.
//!
//! As responder it commits **nothing** on an initiation (M1): the session goes to the
//! dataplane as one of up to [`MAX_PENDING_PER_PEER`] pending (`Next`) sessions, with no
//! route, endpoint, dynamic peer, timestamp, record rotation or cancelled initiation, until the
//! dataplane reports key confirmation (`handle_session_confirmed`: the initiator's first data
//! packet authenticated under the new keys). Unconfirmed sessions live as long as their keys
//! could (`reject_after`), as in WireGuard: the initiator's keepalive may be lost and its next
//! data packet confirm the session much later. So an initiation forged from public certificates changes no state
//! that outlives it. It never reads a clock, opens a socket or logs key material.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand_core::{RngCore, SeedableRng};
use shadowmesh_ipc::{DownMsg, InstallSession, Slot, UpMsg};
use tracing::{debug, info, warn};

use crate::cert::{CaPublic, NodeCert};
pub use crate::clock::Now;
use crate::daemon::DaemonError;
use crate::handshake::messages::{KIND_COOKIE_REPLY, KIND_INITIATION, KIND_RESPONSE};
use crate::handshake::{
    Admission, CipherChoice, Commit, Established, Initiator, InitiatorEvent, InitiatorOptions,
    InitiatorState, Responder, ResponderOutput,
};
use crate::identity::Identity;
use crate::peers::{prefixes_overlap, PeerTable, SessionRecord};
use crate::ratelimit::RateLimiter;
use crate::transport::{
    Budget, FrameKey, RetransmitConfig, RetransmitEvent, Retransmitter, Transport, TransportConfig,
    KIND_HANDSHAKE,
};

/// How long past the rekey time the responder of a session waits for its initiator to renew
/// it before initiating itself.
pub const RESPONDER_GRACE: Duration = Duration::from_secs(15);

/// Pending (unconfirmed) responder sessions kept per peer: a forged initiation takes one slot
/// and never displaces the others; the oldest goes first when all are taken. Matches the
/// dataplane's `session::MAX_PENDING`.
pub const MAX_PENDING_PER_PEER: usize = 8;
/// Pending responder sessions kept in all (bounds memory and dataplane state under a flood).
pub const MAX_PENDING_TOTAL: usize = 1024;
/// Nodes we have not configured that may hold pending sessions at once.
pub const MAX_CANDIDATES: usize = 256;

/// Tunables of the driver.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Renew sessions older than this.
    pub rekey_after: Duration,
    /// The dataplane refuses to send with a key older than this.
    pub reject_after: Duration,
    /// After giving up on a peer, wait this long before trying again.
    pub retry_later: Duration,
    /// Least time between two on-demand (`NoSession`) initiations to one peer.
    pub on_demand_interval: Duration,
    /// Initiations per second above which the responder asks for cookies.
    pub load_threshold: u32,
    /// Retransmission schedule of initiations.
    pub retransmit: RetransmitConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rekey_after: Duration::from_secs(120),
            reject_after: Duration::from_secs(180),
            retry_later: Duration::from_secs(30),
            on_demand_interval: Duration::from_secs(2),
            load_threshold: 200,
            retransmit: RetransmitConfig::default(),
        }
    }
}

/// A statically configured peer, certificate already loaded.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    /// Name override (default: the certificate's name).
    pub name: Option<String>,
    /// Its certificate (verified by [`Driver::new`]).
    pub cert: NodeCert,
    /// Its underlay address.
    pub endpoint: SocketAddr,
}

/// Counters of the driver (for logs and the admin API).
#[derive(Debug, Clone, Copy, Default)]
pub struct DriverStats {
    /// Initiations sent (including retries).
    pub initiations_sent: u64,
    /// Handshakes completed as initiator.
    pub completed_initiator: u64,
    /// Handshakes completed as responder.
    pub completed_responder: u64,
    /// Handshake messages refused (bad mac, replay, unknown index, ...).
    pub refused: u64,
    /// Control datagrams that did not reassemble (malformed, evicted).
    pub dropped_datagrams: u64,
    /// Initiations abandoned after the last retry.
    pub gave_up: u64,
    /// Initiations refused by the per-source rate limit (under load, proven sources).
    pub rate_limited: u64,
    /// Responder sessions never confirmed by their initiator (forged, or their peer went away).
    pub pending_expired: u64,
    /// Confirmations refused because the peer's routes overlap another peer's.
    pub route_conflicts: u64,
    /// Control messages of other protocols (DHT, NAT) queued while the queue was full.
    pub other_dropped: u64,
}

/// Control messages of other kinds queued for [`Driver::poll_message`] at most.
pub const MAX_OTHER_MESSAGES: usize = 1024;

/// Why a discovered node could not become a peer.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// Its certificate does not verify against our CA now.
    #[error("its certificate does not verify: {0}")]
    Cert(#[from] crate::cert::CertError),
    /// It is us.
    #[error("the record is our own")]
    OwnRecord,
    /// Its addresses overlap a known peer's (its dataplane id).
    #[error("its addresses overlap those of known peer {0}")]
    RouteConflict(u32),
    /// It was disconnected by the operator.
    #[error("it was disconnected by the operator (use connect)")]
    Disabled,
}

struct Pending<'a> {
    peer: u32,
    state: InitiatorState<'a>,
}

/// A responder session handed to the dataplane as `Next`, waiting for key confirmation.
struct PendingResponder {
    /// The dataplane peer id it was installed under (a configured or confirmed peer, or a
    /// reserved id for a node we do not know yet).
    peer: u32,
    /// True when `peer` is a reserved id: the node joins the peer table only on confirmation.
    candidate: bool,
    /// Where the initiation came from.
    src: SocketAddr,
    /// The initiator's verified certificate.
    cert: NodeCert,
    /// What the responder commits on confirmation.
    commit: Commit,
    /// What was installed (kept as the session record once confirmed).
    install: InstallSession,
    /// When it was installed (monotonic).
    created: Duration,
}

/// The handshake driver for one local identity.
pub struct Driver<'a> {
    identity: &'a Identity,
    my_cert: NodeCert,
    my_node_id: [u8; 32],
    ca: CaPublic,
    responder: Responder<'a>,
    transport: Transport,
    retransmit: Retransmitter<u32>,
    pending: HashMap<u32, Pending<'a>>,
    used_indices: HashSet<u32>,
    peers: PeerTable,
    /// Unconfirmed responder sessions by local index.
    pending_resp: HashMap<u32, PendingResponder>,
    /// Reserved peer ids of unconfigured nodes that hold pending sessions, by node id.
    candidates: HashMap<[u8; 32], u32>,
    ratelimit: RateLimiter,
    /// The last handshake timestamp we sent (wall time): later ones are strictly greater, even
    /// after the wall clock jumped back.
    last_timestamp: Duration,
    settings: Settings,
    /// The caller's generator: session indices, message ids, ephemeral keys.
    rng: Box<dyn RngCore + Send>,
    next_msg_id: u32,
    /// Reassembled control messages of other kinds (DHT, NAT), for their protocols.
    other: VecDeque<(SocketAddr, u8, Vec<u8>)>,
    load: LoadMeter,
    stats: DriverStats,
}

/// Counts mac1-valid initiations per second of monotonic time: the "under load" signal.
#[derive(Debug, Default)]
struct LoadMeter {
    window: (u64, u32),
    threshold: u32,
}

impl LoadMeter {
    fn hit(&mut self, mono: Duration) -> bool {
        let sec = mono.as_secs();
        if self.window.0 != sec {
            self.window = (sec, 0);
        }
        self.window.1 = self.window.1.saturating_add(1);
        self.window.1 > self.threshold
    }
}

impl std::fmt::Debug for Driver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("peers", &self.peers.len())
            .field("pending", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl<'a> Driver<'a> {
    /// A driver for `identity` with certificate `my_cert`, trusting `ca`, with static `peers`;
    /// `rng` is the caller's generator (`crate::rand::SystemRng` in the daemon, a seeded one
    /// in the simulator and tests), so the same seed makes the same decisions.
    /// Our certificate must verify at `now`; a peer whose certificate does not verify (other
    /// CA, expired) is refused and logged by address, never added.
    ///
    /// # Errors
    /// [`DaemonError::OwnCert`] if our certificate does not verify or does not carry our keys.
    pub fn new(
        identity: &'a Identity,
        my_cert: NodeCert,
        ca: CaPublic,
        peers: Vec<PeerSpec>,
        settings: Settings,
        now: impl Into<Now>,
        mut rng: Box<dyn RngCore + Send>,
    ) -> Result<Self, DaemonError> {
        let now = now.into();
        my_cert
            .verify(&ca, now.wall.as_secs())
            .map_err(|e| DaemonError::OwnCert(e.to_string()))?;
        // The responder's own stream (cookie secrets) is a ChaCha20 child of the caller's.
        let child = rand_chacha::ChaCha20Rng::from_rng(&mut rng);
        let responder = Responder::new(identity, &my_cert, &ca, Box::new(child))
            .map_err(|e| DaemonError::OwnCert(e.to_string()))?;
        let seed = rng.next_u32().to_le_bytes();
        let frame_key = FrameKey::for_network(&ca.id());
        let mut d = Self {
            identity,
            my_node_id: my_cert.node_id(),
            my_cert,
            ca,
            responder,
            transport: Transport::new(frame_key, TransportConfig::default()),
            retransmit: Retransmitter::new(settings.retransmit),
            pending: HashMap::new(),
            used_indices: HashSet::new(),
            peers: PeerTable::default(),
            pending_resp: HashMap::new(),
            candidates: HashMap::new(),
            ratelimit: RateLimiter::default(),
            last_timestamp: Duration::ZERO,
            settings,
            rng,
            next_msg_id: u32::from_le_bytes(seed),
            other: VecDeque::new(),
            load: LoadMeter {
                window: (0, 0),
                threshold: settings.load_threshold,
            },
            stats: DriverStats::default(),
        };
        for p in peers {
            if let Err(e) = p.cert.verify(&d.ca, now.wall.as_secs()) {
                warn!(endpoint = %p.endpoint, "peer certificate refused: {e}");
                continue;
            }
            if p.cert.node_id() == d.my_node_id {
                warn!(endpoint = %p.endpoint, "peer certificate is our own; ignored");
                continue;
            }
            let name = p.name.unwrap_or_else(|| p.cert.body.name.clone());
            // Verified just above; a failure here cannot happen and would only cost a full-cert M1.
            let _ = d.responder.cache_cert(p.cert.clone(), now.wall);
            if d.peers.add(name, p.cert, Some(p.endpoint)).is_none() {
                warn!(endpoint = %p.endpoint, "the same peer certificate is configured twice");
            }
        }
        Ok(d)
    }

    /// The peer table (read-only, for status).
    #[must_use]
    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Our certificate.
    #[must_use]
    pub fn my_cert(&self) -> &NodeCert {
        &self.my_cert
    }

    /// Settings in use.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Responder sessions waiting for key confirmation.
    #[must_use]
    pub fn pending_responder_sessions(&self) -> usize {
        self.pending_resp.len()
    }

    /// The responder (read-only: committed timestamps, cache, counters).
    #[must_use]
    pub fn responder(&self) -> &Responder<'a> {
        &self.responder
    }

    /// The dataplane (re)connected: routes and endpoints of every enabled peer; then every
    /// session is handshaken anew (call [`handle_timeout`](Self::handle_timeout) right after,
    /// it initiates at once).
    ///
    /// No key is ever handed to a dataplane twice: a restarted dataplane's send counters would
    /// start again at 0 under the same key (AES-GCM nonce reuse) and its replay windows would
    /// accept the old packets again. So our session records and pending responder sessions
    /// are forgotten here; a dataplane that only lost its IPC connection keeps forwarding on
    /// its sessions until the new handshakes replace them.
    #[must_use]
    pub fn on_connected(&mut self, now: impl Into<Now>) -> Vec<DownMsg> {
        let now = now.into().mono;
        let mut out = Vec::new();
        let mut freed = Vec::new();
        for p in self.peers.iter_mut() {
            if p.enabled {
                out.push(DownMsg::SetRoutes {
                    peer: p.id,
                    prefixes: p.routes(),
                });
                if let Some(addr) = p.endpoint {
                    out.push(DownMsg::SetEndpoint { peer: p.id, addr });
                }
            }
            for rec in [p.previous.take(), p.session.take()].into_iter().flatten() {
                freed.push(rec.install.local_index);
                p.next_attempt = now;
            }
        }
        for i in freed {
            self.used_indices.remove(&i);
        }
        let pending: Vec<u32> = self.pending_resp.keys().copied().collect();
        for i in pending {
            self.evict_pending(i, &mut out);
        }
        out
    }

    /// Handles one event from the dataplane.
    #[must_use]
    pub fn handle_event(&mut self, ev: UpMsg, now: impl Into<Now>) -> Vec<DownMsg> {
        let now = now.into();
        let mut out = Vec::new();
        match ev {
            UpMsg::ControlReceived { src, payload } => {
                self.on_datagram(src, &payload, now, &mut out)
            }
            UpMsg::NoSession { peer: Some(id), .. } => {
                let due = self.peers.get(id).is_some_and(|p| {
                    p.enabled
                        && p.in_flight.is_none()
                        && p.last_started.is_none_or(|t| {
                            now.mono.saturating_sub(t) >= self.settings.on_demand_interval
                        })
                });
                if due {
                    self.initiate(id, now, false, &mut out);
                }
            }
            UpMsg::NoSession { peer: None, dst } => {
                debug!(%dst, "no peer routes this destination");
            }
            UpMsg::RekeyNeeded { peer, local_index } => {
                // Both dataplanes ask at the same age; as in WireGuard only the initiator of
                // the session renews it, so the two sides do not cross initiations at every
                // rekey. The responder's timer steps in later if the initiator does not.
                let due = self.peers.get(peer).is_some_and(|p| {
                    p.enabled
                        && p.in_flight.is_none()
                        && p.session.as_ref().is_some_and(|s| {
                            s.install.local_index == local_index
                                && (s.initiator
                                    || s.age(now.mono)
                                        >= self.settings.rekey_after + RESPONDER_GRACE)
                        })
                });
                if due {
                    self.initiate(peer, now, false, &mut out);
                }
            }
            UpMsg::EndpointChanged { peer, addr } => {
                if let Some(p) = self.peers.get_mut(peer) {
                    info!(peer = %p.name, %addr, "peer roamed");
                    p.endpoint = Some(addr);
                }
            }
            UpMsg::Ack | UpMsg::Error { .. } | UpMsg::Stats(_) => {}
            UpMsg::SessionConfirmed { peer, local_index } => {
                out = self.handle_session_confirmed(peer, local_index, now);
            }
        }
        out
    }

    /// Feeds one received control datagram (type byte 5).
    #[must_use]
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        d: &[u8],
        now: impl Into<Now>,
    ) -> Vec<DownMsg> {
        let mut out = Vec::new();
        self.on_datagram(src, d, now.into(), &mut out);
        out
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next, in monotonic time (at
    /// the latest one second from `now`: the peer timers are checked once a second).
    #[must_use]
    pub fn poll_timeout(&self, now: impl Into<Now>) -> Duration {
        let mono = now.into().mono;
        let tick = mono + Duration::from_secs(1);
        let pending = self
            .pending_resp
            .values()
            .map(|p| p.created + self.settings.reject_after)
            .min();
        [
            self.retransmit.poll_timeout(),
            self.transport.poll_timeout(mono),
            pending,
        ]
        .into_iter()
        .flatten()
        .fold(tick, Duration::min)
    }

    /// Runs the timers due at `now`: retransmissions and give-ups, reassembly timeouts,
    /// unconfirmed responder sessions, handshakes for peers without a live session, time-based
    /// rekeys, forgetting expired sessions. All on the monotonic clock.
    #[must_use]
    pub fn handle_timeout(&mut self, now: impl Into<Now>) -> Vec<DownMsg> {
        let now = now.into();
        let mono = now.mono;
        let mut out = Vec::new();
        let mut tx = Vec::new();
        self.transport.handle_timeout(mono, &mut tx);
        out.extend(tx.into_iter().map(|t| DownMsg::SendControl {
            dst: t.dst,
            payload: t.payload,
        }));
        for ev in self.retransmit.handle_timeout(mono) {
            match ev {
                RetransmitEvent::Retransmit { key, attempt } => {
                    debug!(
                        peer = key,
                        attempt, "initiation unanswered; sending a new one"
                    );
                    self.initiate(key, now, true, &mut out);
                }
                RetransmitEvent::GiveUp { key } => self.give_up(key, mono),
            }
        }
        self.expire_pending(mono, &mut out);
        let reject = self.settings.reject_after;
        let rekey = self.settings.rekey_after;
        let mut due = Vec::new();
        for p in self.peers.iter_mut() {
            // Forget sessions the dataplane no longer uses (indices become free again).
            for slot in [&mut p.previous, &mut p.session] {
                if slot
                    .as_ref()
                    .is_some_and(|s| s.age(mono) >= reject + Duration::from_secs(10))
                {
                    if let Some(s) = slot.take() {
                        self.used_indices.remove(&s.install.local_index);
                    }
                }
            }
            if !p.enabled || p.in_flight.is_some() {
                continue;
            }
            let needs = match p.session.as_ref() {
                None => mono >= p.next_attempt,
                // The initiator of a session renews it; the responder steps in only if the
                // initiator has not (it may be down), so both rarely initiate at once.
                Some(s) if s.initiator => s.age(mono) >= rekey,
                Some(s) => s.age(mono) >= rekey + RESPONDER_GRACE,
            };
            if needs {
                due.push(p.id);
            }
        }
        for id in due {
            self.initiate(id, now, false, &mut out);
        }
        out
    }

    /// Operator request: enable `name` and handshake now.
    ///
    /// # Errors
    /// [`DaemonError::UnknownPeer`].
    pub fn connect(
        &mut self,
        name: &str,
        now: impl Into<Now>,
    ) -> Result<Vec<DownMsg>, DaemonError> {
        let now = now.into();
        let id = self
            .peers
            .by_name(name)
            .ok_or_else(|| DaemonError::UnknownPeer(name.to_string()))?;
        let mut out = Vec::new();
        if let Some(p) = self.peers.get_mut(id) {
            if !p.enabled {
                p.enabled = true;
                out.push(DownMsg::SetRoutes {
                    peer: id,
                    prefixes: p.routes(),
                });
                if let Some(addr) = p.endpoint {
                    out.push(DownMsg::SetEndpoint { peer: id, addr });
                }
            }
            p.next_attempt = now.mono;
            p.failures = 0;
            if p.in_flight.is_some() {
                return Ok(out);
            }
        }
        self.initiate(id, now, false, &mut out);
        Ok(out)
    }

    /// Operator request: drop `name`'s sessions and routes and stop handshaking with it.
    ///
    /// # Errors
    /// [`DaemonError::UnknownPeer`].
    pub fn disconnect(&mut self, name: &str) -> Result<Vec<DownMsg>, DaemonError> {
        let id = self
            .peers
            .by_name(name)
            .ok_or_else(|| DaemonError::UnknownPeer(name.to_string()))?;
        self.retransmit.cancel(id);
        let mut freed = Vec::new();
        if let Some(p) = self.peers.get_mut(id) {
            p.enabled = false;
            freed.extend(p.in_flight.take());
            freed.extend(p.session.take().map(|s| s.install.local_index));
            freed.extend(p.previous.take().map(|s| s.install.local_index));
        }
        freed.extend(self.take_pending_of(id, None));
        for i in freed {
            self.pending.remove(&i);
            self.used_indices.remove(&i);
        }
        Ok(vec![DownMsg::RemovePeer { peer: id }])
    }

    /// The dataplane authenticated the first data packet on the pending responder session
    /// `local_index` of `peer` (key confirmation): only now does the handshake take effect —
    /// the responder commits the initiation's timestamp (and caches a full certificate), an
    /// unconfigured node joins the peer table with its routes and endpoint, the peer's
    /// session records rotate, and a crossing initiation of ours is dropped. The peer's
    /// other pending sessions (the dataplane dropped them) are forgotten.
    #[must_use]
    pub fn handle_session_confirmed(
        &mut self,
        peer: u32,
        local_index: u32,
        now: impl Into<Now>,
    ) -> Vec<DownMsg> {
        let now = now.into();
        let mut out = Vec::new();
        let Some(pend) = self.pending_resp.remove(&local_index) else {
            debug!(
                peer,
                "confirmation for no pending session (expired or replaced)"
            );
            return out;
        };
        if pend.peer != peer {
            // Cannot happen with our own dataplane; keep the index reserved until it expires.
            warn!(
                peer,
                "confirmation names another peer than the pending session"
            );
            self.pending_resp.insert(local_index, pend);
            return out;
        }
        for i in self.take_pending_of(peer, Some(local_index)) {
            self.used_indices.remove(&i);
        }
        self.responder.commit(&pend.commit, &pend.cert);
        if pend.candidate {
            self.candidates.remove(&pend.commit.peer_id);
            if !self.admit_new_peer(&pend, &mut out) {
                self.used_indices.remove(&local_index);
                out.push(DownMsg::RemovePeer { peer });
                return out;
            }
        }
        if self.peers.get(peer).is_some_and(|p| p.in_flight.is_some()) {
            // Simultaneous initiations: theirs is confirmed, so ours is superseded.
            self.retransmit.cancel(peer);
            self.drop_pending(peer);
        }
        self.stats.completed_responder += 1;
        self.record_session(peer, pend.install, pend.src, false, now.mono);
        out
    }

    /// Adds a confirmed, unconfigured node to the peer table under its reserved id, with its
    /// routes and endpoint; false (nothing added) when its routes overlap a configured or
    /// confirmed peer's, which it must not take over.
    fn admit_new_peer(&mut self, pend: &PendingResponder, out: &mut Vec<DownMsg>) -> bool {
        let name = pend.cert.body.name.clone();
        let mut probe = crate::peers::Peer::new(pend.peer, name, pend.cert.clone(), None);
        probe.dynamic = true;
        let routes = probe.routes();
        let clash = self.peers.iter().find(|p| {
            p.routes()
                .iter()
                .any(|a| routes.iter().any(|b| prefixes_overlap(*a, *b)))
        });
        if let Some(other) = clash {
            self.stats.route_conflicts += 1;
            warn!(
                src = %pend.src,
                other = %other.name,
                "new peer refused: its addresses overlap those of a known peer"
            );
            return false;
        }
        probe.endpoint = Some(pend.src);
        if !self.peers.insert(probe) {
            return false;
        }
        info!(src = %pend.src, "new peer confirmed");
        out.push(DownMsg::SetRoutes {
            peer: pend.peer,
            prefixes: routes,
        });
        out.push(DownMsg::SetEndpoint {
            peer: pend.peer,
            addr: pend.src,
        });
        true
    }

    /// Removes the pending responder sessions of `peer` (but `keep`) from our table and
    /// returns their local indices; the caller frees them.
    fn take_pending_of(&mut self, peer: u32, keep: Option<u32>) -> Vec<u32> {
        let gone: Vec<u32> = self
            .pending_resp
            .iter()
            .filter(|(i, p)| p.peer == peer && Some(**i) != keep)
            .map(|(i, _)| *i)
            .collect();
        for i in &gone {
            self.pending_resp.remove(i);
        }
        gone
    }

    /// Drops responder sessions whose initiator never confirmed them.
    fn expire_pending(&mut self, mono: Duration, out: &mut Vec<DownMsg>) {
        let expired: Vec<u32> = self
            .pending_resp
            .iter()
            .filter(|(_, p)| mono.saturating_sub(p.created) >= self.settings.reject_after)
            .map(|(i, _)| *i)
            .collect();
        for i in expired {
            self.stats.pending_expired += 1;
            self.evict_pending(i, out);
        }
    }

    /// Forgets one pending responder session, in the dataplane too; a reserved peer id with
    /// no pending session left is released.
    fn evict_pending(&mut self, local_index: u32, out: &mut Vec<DownMsg>) {
        let Some(p) = self.pending_resp.remove(&local_index) else {
            return;
        };
        self.used_indices.remove(&local_index);
        out.push(DownMsg::RemoveSession { local_index });
        if p.candidate && !self.pending_resp.values().any(|o| o.peer == p.peer) {
            self.candidates.remove(&p.commit.peer_id);
            out.push(DownMsg::RemovePeer { peer: p.peer });
        }
    }

    fn fresh_index(&mut self) -> Option<u32> {
        // Bounded: with at most a few thousand indices in use, a collision is ~1e-6 per try.
        for _ in 0..16 {
            let i = self.rng.next_u32();
            if i != 0 && self.used_indices.insert(i) {
                return Some(i);
            }
        }
        None
    }

    fn send(&mut self, dst: SocketAddr, msg: &[u8], out: &mut Vec<DownMsg>) {
        let id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        // The transport repairs lost fragments within a budget: our own initiation may be
        // resent more; M2 and cookie replies go to addresses not yet validated, so they get
        // 3 copies' worth at most (the 3× rule). A newer message of the same type to the same
        // address replaces the older one's repair (its handshake state is gone).
        let (budget, class) = match msg.first() {
            Some(&KIND_INITIATION) => (Budget::INITIATION, Some(KIND_INITIATION)),
            Some(&k) => (Budget::UNVALIDATED_REPLY, Some(k)),
            None => (Budget::ONCE, None),
        };
        // `None`: the driver's send paths do not all carry the time; the transport arms the
        // repair timer at the next `handle_timeout`, which `poll_timeout` asks for at once.
        match self
            .transport
            .send(dst, KIND_HANDSHAKE, id, msg, budget, class, None)
        {
            Ok(frags) => out.extend(frags.into_iter().map(|t| DownMsg::SendControl {
                dst: t.dst,
                payload: t.payload,
            })),
            Err(e) => warn!(%dst, "handshake message not sent: {e}"),
        }
    }

    /// A reassembled control message of a kind other than the handshake's (the DHT's), in
    /// arrival order, for the protocol that owns it.
    pub fn poll_message(&mut self) -> Option<(SocketAddr, u8, Vec<u8>)> {
        self.other.pop_front()
    }

    /// Sends `msg` of `kind` (another protocol's: the DHT) through the control transport,
    /// repaired within `budget`; the datagrams are returned as dataplane requests.
    #[must_use]
    pub fn send_message(
        &mut self,
        dst: SocketAddr,
        kind: u8,
        msg: &[u8],
        budget: Budget,
        now: Duration,
    ) -> Vec<DownMsg> {
        let id = self.next_msg_id;
        self.next_msg_id = self.next_msg_id.wrapping_add(1);
        match self
            .transport
            .send(dst, kind, id, msg, budget, None, Some(now))
        {
            Ok(frags) => frags
                .into_iter()
                .map(|t| DownMsg::SendControl {
                    dst: t.dst,
                    payload: t.payload,
                })
                .collect(),
            Err(e) => {
                warn!(%dst, kind, "control message not sent: {e}");
                Vec::new()
            }
        }
    }

    /// A node found by discovery (its record's certificate and endpoint) becomes a peer, or an
    /// existing peer gets the endpoint when it has none or `replace` is set; a handshake
    /// starts at once unless one is in flight or a session is live. Returns its peer id.
    ///
    /// # Errors
    /// [`DiscoverError`]: the certificate does not verify, it is us, its addresses overlap a
    /// known peer's, or the operator disconnected it.
    pub fn add_discovered(
        &mut self,
        cert: NodeCert,
        endpoint: SocketAddr,
        replace: bool,
        now: impl Into<Now>,
    ) -> Result<(u32, Vec<DownMsg>), DiscoverError> {
        let now = now.into();
        let mut out = Vec::new();
        cert.verify(&self.ca, now.wall.as_secs())?;
        let node_id = cert.node_id();
        if node_id == self.my_node_id {
            return Err(DiscoverError::OwnRecord);
        }
        let id = match self.peers.by_node(&node_id) {
            Some(id) => {
                let Some(p) = self.peers.get_mut(id) else {
                    return Err(DiscoverError::Disabled);
                };
                if !p.enabled {
                    return Err(DiscoverError::Disabled);
                }
                if p.endpoint.is_none() || (replace && p.endpoint != Some(endpoint)) {
                    p.endpoint = Some(endpoint);
                    out.push(DownMsg::SetEndpoint {
                        peer: id,
                        addr: endpoint,
                    });
                }
                id
            }
            None => {
                let mut peer = crate::peers::Peer::new(
                    self.peers.reserve_id(),
                    cert.body.name.clone(),
                    cert.clone(),
                    Some(endpoint),
                );
                peer.dynamic = true;
                let routes = peer.routes();
                if let Some(other) = self.peers.iter().find(|p| {
                    p.routes()
                        .iter()
                        .any(|a| routes.iter().any(|b| prefixes_overlap(*a, *b)))
                }) {
                    self.stats.route_conflicts += 1;
                    return Err(DiscoverError::RouteConflict(other.id));
                }
                let id = peer.id;
                if !self.peers.insert(peer) {
                    return Err(DiscoverError::OwnRecord);
                }
                info!(%endpoint, "peer discovered");
                // Verified just above: the responder may take it as cached.
                let _ = self.responder.cache_cert(cert, now.wall);
                out.push(DownMsg::SetRoutes {
                    peer: id,
                    prefixes: routes,
                });
                out.push(DownMsg::SetEndpoint {
                    peer: id,
                    addr: endpoint,
                });
                id
            }
        };
        let idle = self.peers.get(id).is_some_and(|p| {
            p.in_flight.is_none()
                && p.live_session(now.mono, self.settings.reject_after)
                    .is_none()
        });
        if idle {
            if let Some(p) = self.peers.get_mut(id) {
                p.next_attempt = now.mono;
                p.failures = 0;
            }
            self.initiate(id, now, false, &mut out);
        }
        Ok((id, out))
    }

    /// A punch probe of `peer` arrived from `addr` (NAT traversal): that is where its NAT
    /// lets us reach it, so it becomes the peer's endpoint and a handshake starts at once,
    /// unless an initiation to that address is in flight. A peer with a live session is left
    /// alone: a probe proves only knowledge of a token that crossed the network in
    /// authenticated but unencrypted DHT messages, so it must not move an established session
    /// (the dataplane follows the peer's authenticated packets to a new address instead).
    #[must_use]
    pub fn punched(&mut self, peer: u32, addr: SocketAddr, now: impl Into<Now>) -> Vec<DownMsg> {
        let now = now.into();
        let mut out = Vec::new();
        let reject_after = self.settings.reject_after;
        let Some(p) = self.peers.get_mut(peer) else {
            return out;
        };
        if !p.enabled || p.live_session(now.mono, reject_after).is_some() {
            return out;
        }
        let moved = p.endpoint != Some(addr);
        if moved {
            info!(peer = %p.name, %addr, "punched through: new endpoint");
            p.endpoint = Some(addr);
            out.push(DownMsg::SetEndpoint { peer, addr });
        }
        // An initiation in flight to this very address is left alone (it got through, or
        // its retries will): a second one would only be refused as a duplicate.
        if p.in_flight.is_none() || moved {
            p.next_attempt = now.mono;
            p.failures = 0;
            self.initiate(peer, now, false, &mut out);
        }
        out
    }

    /// Liveness as probed by the node (shown in status); a peer that comes back after being
    /// unreachable is handshaken anew at once (it may have restarted and lost its sessions).
    #[must_use]
    pub fn set_reachable(
        &mut self,
        peer: u32,
        reachable: bool,
        now: impl Into<Now>,
    ) -> Vec<DownMsg> {
        let now = now.into();
        let mut out = Vec::new();
        let Some(p) = self.peers.get_mut(peer) else {
            return out;
        };
        let was = p.reachable.replace(reachable);
        if reachable && was == Some(false) && p.enabled {
            info!(peer = %p.name, "peer reachable again; handshaking anew");
            p.next_attempt = now.mono;
            p.failures = 0;
            if p.in_flight.is_none() {
                self.initiate(peer, now, false, &mut out);
            }
        } else if !reachable && was != Some(false) {
            info!(peer = %p.name, endpoint = ?p.endpoint, "peer unreachable");
        }
        out
    }

    fn drop_pending(&mut self, peer: u32) {
        let idx = self.peers.get_mut(peer).and_then(|p| p.in_flight.take());
        if let Some(i) = idx {
            self.pending.remove(&i);
            self.used_indices.remove(&i);
        }
    }

    /// The timestamp for a new initiation: the wall clock, but always after the last one we
    /// sent, so a wall clock that jumped back does not make the peer refuse us as a replay.
    fn next_timestamp(&mut self, wall: Duration) -> Duration {
        let t = wall.max(self.last_timestamp + Duration::from_micros(1));
        self.last_timestamp = t;
        t
    }

    /// Starts (or, for a retry, restarts with a fresh M1) an initiation to `peer`.
    fn initiate(&mut self, peer: u32, now: Now, retry: bool, out: &mut Vec<DownMsg>) {
        self.drop_pending(peer);
        let Some(p) = self.peers.get(peer) else {
            return;
        };
        let Some(dst) = p.endpoint else {
            debug!(peer = %p.name, "no endpoint known; cannot initiate");
            return;
        };
        let cert = p.cert.clone();
        // Send only our certificate's hash when the peer has it cached, but the full one on
        // retries: the peer may have restarted and lost its cache.
        let send_cert_hash = p.has_our_cert && !retry;
        let Some(index) = self.fresh_index() else {
            warn!("no free session index");
            return;
        };
        let opts = InitiatorOptions {
            send_cert_hash,
            timestamp: Some(self.next_timestamp(now.wall)),
            ..InitiatorOptions::default()
        };
        match Initiator::with_options(
            self.identity,
            &self.my_cert,
            &cert,
            &self.ca,
            index,
            now.wall,
            &mut *self.rng,
            opts,
        ) {
            Ok((state, m1)) => {
                self.pending.insert(index, Pending { peer, state });
                if let Some(p) = self.peers.get_mut(peer) {
                    p.in_flight = Some(index);
                    p.last_started = Some(now.mono);
                }
                if !retry {
                    self.retransmit.start(peer, now.mono);
                }
                self.stats.initiations_sent += 1;
                self.send(dst, &m1, out);
            }
            Err(e) => {
                self.used_indices.remove(&index);
                self.retransmit.cancel(peer);
                warn!(endpoint = %dst, "cannot initiate: {e}");
                if let Some(p) = self.peers.get_mut(peer) {
                    p.next_attempt = now.mono + self.settings.retry_later;
                }
            }
        }
    }

    fn give_up(&mut self, peer: u32, mono: Duration) {
        self.drop_pending(peer);
        self.stats.gave_up += 1;
        if let Some(p) = self.peers.get_mut(peer) {
            p.failures = p.failures.saturating_add(1);
            p.next_attempt = mono + self.settings.retry_later;
            // It may have lost our certificate (restart): send the full one next time.
            p.has_our_cert = false;
            info!(
                peer = %p.name,
                endpoint = ?p.endpoint,
                "no handshake answer; retrying in {}s",
                self.settings.retry_later.as_secs()
            );
        }
    }

    fn on_datagram(&mut self, src: SocketAddr, d: &[u8], now: Now, out: &mut Vec<DownMsg>) {
        let mut acks = Vec::new();
        let res = self.transport.handle_datagram(src, d, now.mono, &mut acks);
        out.extend(acks.into_iter().map(|t| DownMsg::SendControl {
            dst: t.dst,
            payload: t.payload,
        }));
        let msg = match res {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                self.stats.dropped_datagrams += 1;
                debug!(%src, "control datagram dropped: {e}");
                return;
            }
        };
        if msg.kind != KIND_HANDSHAKE {
            // Another protocol's message (the DHT): its owner takes it with `poll_message`.
            if self.other.len() >= MAX_OTHER_MESSAGES {
                self.stats.other_dropped += 1;
            } else {
                self.other.push_back((src, msg.kind, msg.payload));
            }
            return;
        }
        match msg.payload.first() {
            Some(&KIND_INITIATION) => self.on_initiation(src, &msg.payload, now, out),
            Some(&KIND_RESPONSE) => {
                let idx = read_u32(&msg.payload, 8);
                self.on_initiator_message(src, idx, &msg.payload, now, out);
            }
            Some(&KIND_COOKIE_REPLY) => {
                let idx = read_u32(&msg.payload, 4);
                self.on_initiator_message(src, idx, &msg.payload, now, out);
            }
            _ => {
                self.stats.refused += 1;
                debug!(%src, "unknown handshake message kind");
            }
        }
    }

    fn on_initiation(&mut self, src: SocketAddr, m1: &[u8], now: Now, out: &mut Vec<DownMsg>) {
        let load = &mut self.load;
        let admitted = self
            .responder
            .admit(m1, src, now.wall, &mut || load.hit(now.mono));
        match admitted {
            Ok(Admission::CookieReply(reply)) => {
                self.send(src, &reply, out);
                return;
            }
            Ok(Admission::Proceed {
                cookie_valid,
                under_load,
            }) => {
                // Under load only proven sources get here; each may cost us KEM work at a
                // bounded rate (WireGuard's rate limiter).
                if under_load && cookie_valid && !self.ratelimit.allow(src.ip(), now.mono) {
                    self.stats.rate_limited += 1;
                    debug!(%src, "initiation over the per-source rate limit");
                    return;
                }
            }
            Err(e) => {
                self.stats.refused += 1;
                debug!(%src, "initiation refused: {e}");
                return;
            }
        }
        let Some(index) = self.fresh_index() else {
            return;
        };
        match self.responder.respond(m1, src, now.wall, index) {
            Ok(ResponderOutput::Reply {
                m2,
                commit,
                established,
            }) => {
                if !self.accept_pending(src, &m2, commit, *established, now.mono, out) {
                    self.used_indices.remove(&index);
                }
            }
            Ok(ResponderOutput::CookieReply(reply)) => {
                self.used_indices.remove(&index);
                self.send(src, &reply, out);
            }
            Err(e) => {
                self.used_indices.remove(&index);
                self.stats.refused += 1;
                debug!(%src, "initiation refused: {e}");
            }
        }
    }

    /// Installs a verified initiation's session as pending (`Next`) and sends M2, changing no
    /// other state; false if it is not answered (disconnected peer, crossing initiation that
    /// ours wins, a duplicate, no room for an unknown node).
    fn accept_pending(
        &mut self,
        src: SocketAddr,
        m2: &[u8],
        commit: Commit,
        est: Established,
        mono: Duration,
        out: &mut Vec<DownMsg>,
    ) -> bool {
        // The same initiation again (the timestamp is unique per initiation): a replay of a
        // pending one; answering it would only add a session nobody can confirm.
        if self
            .pending_resp
            .values()
            .any(|p| p.commit.peer_id == commit.peer_id && p.commit.timestamp == commit.timestamp)
        {
            self.stats.refused += 1;
            debug!(%src, "initiation already pending");
            return false;
        }
        let (peer, candidate) = match self.peers.by_node(&est.peer_id) {
            Some(id) => {
                let Some(p) = self.peers.get(id) else {
                    return false;
                };
                if !p.enabled {
                    debug!(%src, "initiation from a disconnected peer ignored");
                    return false;
                }
                // Simultaneous initiations: the smaller node id keeps its own and does not
                // answer; the larger answers, and drops its own only once this session is
                // confirmed. If the kept initiation was lost, its retransmission settles it.
                if p.in_flight.is_some() && self.my_node_id < p.node_id {
                    debug!(%src, "crossing initiation: ours wins, theirs is not answered");
                    return false;
                }
                (id, false)
            }
            None => match self.candidates.get(&est.peer_id) {
                Some(&id) => (id, true),
                None => {
                    if self.candidates.len() >= MAX_CANDIDATES {
                        debug!(%src, "too many unconfirmed new nodes; initiation ignored");
                        return false;
                    }
                    let id = self.peers.reserve_id();
                    self.candidates.insert(est.peer_id, id);
                    (id, true)
                }
            },
        };
        // Bounded per peer and in total: the oldest pending session goes first.
        let oldest_of = |it: &mut dyn Iterator<Item = (&u32, &PendingResponder)>| {
            it.min_by_key(|(_, p)| p.created).map(|(i, _)| *i)
        };
        if self
            .pending_resp
            .values()
            .filter(|p| p.peer == peer)
            .count()
            >= MAX_PENDING_PER_PEER
        {
            if let Some(i) =
                oldest_of(&mut self.pending_resp.iter().filter(|(_, p)| p.peer == peer))
            {
                self.evict_pending(i, out);
            }
        }
        if self.pending_resp.len() >= MAX_PENDING_TOTAL {
            if let Some(i) = oldest_of(&mut self.pending_resp.iter()) {
                self.evict_pending(i, out);
            }
        }
        // The eviction may have released a reserved id of this same node: take it again.
        if candidate && !self.candidates.contains_key(&est.peer_id) {
            self.candidates.insert(est.peer_id, peer);
        }
        let install = self.install_message(&est, peer);
        if candidate {
            // Inbound only: the confirming data packet (authenticated under these keys, so
            // from the certificate's owner) is delivered from the certified addresses;
            // outbound routes wait for confirmation.
            out.push(DownMsg::SetSources {
                peer,
                prefixes: crate::peers::Peer::new(peer, String::new(), est.peer_cert.clone(), None)
                    .routes(),
            });
        }
        out.push(DownMsg::InstallSession(install.clone()));
        self.send(src, m2, out);
        self.pending_resp.insert(
            est.local_index,
            PendingResponder {
                peer,
                candidate,
                src,
                cert: est.peer_cert,
                commit,
                install,
                created: mono,
            },
        );
        true
    }

    fn on_initiator_message(
        &mut self,
        src: SocketAddr,
        idx: Option<u32>,
        msg: &[u8],
        now: Now,
        out: &mut Vec<DownMsg>,
    ) {
        let Some(pending) = idx.and_then(|i| self.pending.get_mut(&i)) else {
            self.stats.refused += 1;
            debug!(%src, "handshake answer for no initiation of ours");
            return;
        };
        let peer = pending.peer;
        match pending.state.handle_message(msg, now.wall) {
            Ok(InitiatorEvent::Resend(m1)) => {
                // Only to the peer's endpoint, never to the reply's source: a cookie reply is
                // small and unauthenticated, and must not aim our initiation anywhere else.
                let Some(dst) = self.peers.get(peer).and_then(|p| p.endpoint) else {
                    return;
                };
                debug!(%src, %dst, "cookie reply; resending the initiation with mac2");
                self.send(dst, &m1, out);
            }
            Ok(InitiatorEvent::Established(est)) => {
                if let Some(i) = idx {
                    self.pending.remove(&i);
                }
                self.retransmit.cancel(peer);
                if let Some(p) = self.peers.get_mut(peer) {
                    p.in_flight = None;
                }
                if self.peers.by_node(&est.peer_id) != Some(peer) {
                    self.used_indices.remove(&est.local_index);
                    return;
                }
                let install = self.install_message(&est, peer);
                out.push(DownMsg::InstallSession(install.clone()));
                self.stats.completed_initiator += 1;
                self.record_session(peer, install, src, true, now.mono);
            }
            Err(e) => {
                self.stats.refused += 1;
                debug!(%src, "handshake answer refused: {e}");
            }
        }
    }

    /// The dataplane's install message for a completed handshake: `Current` for the
    /// initiator, `Next` (pending key confirmation) for the responder.
    fn install_message(&self, est: &Established, peer: u32) -> InstallSession {
        let cipher = match est.cipher {
            CipherChoice::Aes256Gcm => shadowmesh_ipc::proto::CIPHER_AES_256_GCM,
            CipherChoice::ChaCha20Poly1305 => shadowmesh_ipc::proto::CIPHER_CHACHA20_POLY1305,
        };
        InstallSession {
            peer,
            slot: if est.is_initiator {
                Slot::Current
            } else {
                Slot::Next
            },
            local_index: est.local_index,
            remote_index: est.remote_index,
            cipher,
            send_key: est.send_key.clone(),
            recv_key: est.recv_key.clone(),
            rekey_after_secs: u32::try_from(self.settings.rekey_after.as_secs())
                .unwrap_or(u32::MAX),
            reject_after_secs: u32::try_from(self.settings.reject_after.as_secs())
                .unwrap_or(u32::MAX),
        }
    }

    /// A session took effect (initiator: M2 accepted; responder: confirmed): it becomes the
    /// peer's latest record, the latest becomes the previous, and the one before leaves.
    fn record_session(
        &mut self,
        peer: u32,
        install: InstallSession,
        src: SocketAddr,
        initiator: bool,
        mono: Duration,
    ) {
        let Some(p) = self.peers.get_mut(peer) else {
            self.used_indices.remove(&install.local_index);
            return;
        };
        info!(
            peer = %p.name,
            %src,
            role = if initiator { "initiator" } else { "responder" },
            cipher = install.cipher,
            "handshake complete"
        );
        let older = p.previous.take();
        p.previous = p.session.take();
        p.session = Some(SessionRecord {
            install,
            established_at: mono,
            initiator,
        });
        p.last_handshake = Some(mono);
        p.has_our_cert = true;
        p.failures = 0;
        if let Some(o) = older {
            self.used_indices.remove(&o.install.local_index);
        }
    }
}

#[cfg(test)]
mod tests;
