//! The handshake driver: turns dataplane events, received control datagrams and time into
//! dataplane requests (send this datagram, install this session, set these routes).
//!
//! Sans-IO, in the quinn-proto style: feed it with [`Driver::handle_event`] /
//! [`Driver::handle_timeout`] / [`Driver::on_connected`] / [`Driver::connect`] /
//! [`Driver::disconnect`]; each returns the [`DownMsg`]s to send to the dataplane, in order.
//! [`Driver::poll_timeout`] says when to call `handle_timeout` next. `now` is always the time
//! since the Unix epoch (certificates and handshake timestamps are in wall-clock time).
//!
//! Policy it owns: one initiation in flight per peer (retransmitted as a *new* M1 on the
//! transport's backoff, abandoned after its last retry and tried again later), a handshake for
//! every enabled peer without a live session, a rekey when the latest session is older than
//! `rekey_after` (or the dataplane asks), responder sessions installed as `Next` and initiator
//! sessions as `Current`, a tie-break for simultaneous initiations (the node with the larger
//! node id yields), random unique session indices. It never reads a clock, opens a socket or
//! logs key material.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use shadowmesh_dataplane::ipc::{DownMsg, InstallSession, Slot, UpMsg};
use tracing::{debug, info, warn};

use super::peers::{refill, PeerTable, SessionRecord};
use super::DaemonError;
use crate::cert::{CaPublic, NodeCert};
use crate::handshake::messages::{KIND_COOKIE_REPLY, KIND_INITIATION, KIND_RESPONSE};
use crate::handshake::{
    CipherChoice, Established, Initiator, InitiatorEvent, InitiatorOptions, InitiatorState,
    Responder, ResponderOutput,
};
use crate::identity::Identity;
use crate::transport::{
    Budget, FrameKey, RetransmitConfig, RetransmitEvent, Retransmitter, Transport, TransportConfig,
    KIND_HANDSHAKE,
};

/// How long past the rekey time the responder of a session waits for its initiator to renew
/// it before initiating itself.
pub const RESPONDER_GRACE: Duration = Duration::from_secs(15);

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
}

struct Pending<'a> {
    peer: u32,
    state: InitiatorState<'a>,
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
    settings: Settings,
    rng: SystemRandom,
    next_msg_id: u32,
    load_window: (u64, u32),
    stats: DriverStats,
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
    /// A driver for `identity` with certificate `my_cert`, trusting `ca`, with static `peers`.
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
        now: Duration,
    ) -> Result<Self, DaemonError> {
        my_cert
            .verify(&ca, now.as_secs())
            .map_err(|e| DaemonError::OwnCert(e.to_string()))?;
        let responder = Responder::new(identity, &my_cert, &ca)
            .map_err(|e| DaemonError::OwnCert(e.to_string()))?;
        let rng = SystemRandom::new();
        let mut seed = [0u8; 4];
        rng.fill(&mut seed)
            .map_err(|_| DaemonError::Crypto("random message id"))?;
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
            settings,
            rng,
            next_msg_id: u32::from_le_bytes(seed),
            load_window: (0, 0),
            stats: DriverStats::default(),
        };
        for p in peers {
            if let Err(e) = p.cert.verify(&d.ca, now.as_secs()) {
                warn!(endpoint = %p.endpoint, "peer certificate refused: {e}");
                continue;
            }
            if p.cert.node_id() == d.my_node_id {
                warn!(endpoint = %p.endpoint, "peer certificate is our own; ignored");
                continue;
            }
            let name = p.name.unwrap_or_else(|| p.cert.body.name.clone());
            // Verified just above; a failure here cannot happen and would only cost a full-cert M1.
            let _ = d.responder.cache_cert(p.cert.clone(), now);
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

    /// The dataplane (re)connected: routes and endpoints of every enabled peer, then every
    /// live session again (a restarted dataplane has none).
    #[must_use]
    pub fn on_connected(&mut self, now: Duration) -> Vec<DownMsg> {
        let mut out = Vec::new();
        let reject = self.settings.reject_after;
        for p in self.peers.iter().filter(|p| p.enabled) {
            out.push(DownMsg::SetRoutes {
                peer: p.id,
                prefixes: p.routes(),
            });
            if let Some(addr) = p.endpoint {
                out.push(DownMsg::SetEndpoint { peer: p.id, addr });
            }
            // Previous first: installing the latest as Current then moves nothing it needs.
            for rec in [p.previous.as_ref(), p.session.as_ref()]
                .into_iter()
                .flatten()
            {
                if rec.age(now) < reject {
                    out.push(DownMsg::InstallSession(refill(rec, now)));
                }
            }
        }
        out
    }

    /// Handles one event from the dataplane.
    #[must_use]
    pub fn handle_event(&mut self, ev: UpMsg, now: Duration) -> Vec<DownMsg> {
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
                            now.saturating_sub(t) >= self.settings.on_demand_interval
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
                                    || s.age(now) >= self.settings.rekey_after + RESPONDER_GRACE)
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
        }
        out
    }

    /// Feeds one received control datagram (type byte 5).
    #[must_use]
    pub fn handle_datagram(&mut self, src: SocketAddr, d: &[u8], now: Duration) -> Vec<DownMsg> {
        let mut out = Vec::new();
        self.on_datagram(src, d, now, &mut out);
        out
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next (at the latest one
    /// second from `now`: the peer timers are checked once a second).
    #[must_use]
    pub fn poll_timeout(&self, now: Duration) -> Duration {
        let tick = now + Duration::from_secs(1);
        [
            self.retransmit.poll_timeout(),
            self.transport.poll_timeout(now),
        ]
        .into_iter()
        .flatten()
        .fold(tick, Duration::min)
    }

    /// Runs the timers due at `now`: retransmissions and give-ups, reassembly timeouts,
    /// handshakes for peers without a live session, time-based rekeys, forgetting expired
    /// sessions.
    #[must_use]
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<DownMsg> {
        let mut out = Vec::new();
        let mut tx = Vec::new();
        self.transport.handle_timeout(now, &mut tx);
        out.extend(tx.into_iter().map(|t| DownMsg::SendControl {
            dst: t.dst,
            payload: t.payload,
        }));
        for ev in self.retransmit.handle_timeout(now) {
            match ev {
                RetransmitEvent::Retransmit { key, attempt } => {
                    debug!(
                        peer = key,
                        attempt, "initiation unanswered; sending a new one"
                    );
                    self.initiate(key, now, true, &mut out);
                }
                RetransmitEvent::GiveUp { key } => self.give_up(key, now),
            }
        }
        let reject = self.settings.reject_after;
        let rekey = self.settings.rekey_after;
        let mut due = Vec::new();
        for p in self.peers.iter_mut() {
            // Forget sessions the dataplane no longer uses (indices become free again).
            for slot in [&mut p.previous, &mut p.session] {
                if slot
                    .as_ref()
                    .is_some_and(|s| s.age(now) >= reject + Duration::from_secs(10))
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
                None => now >= p.next_attempt,
                // The initiator of a session renews it; the responder steps in only if the
                // initiator has not (it may be down), so both rarely initiate at once.
                Some(s) if s.initiator => s.age(now) >= rekey,
                Some(s) => s.age(now) >= rekey + RESPONDER_GRACE,
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
    pub fn connect(&mut self, name: &str, now: Duration) -> Result<Vec<DownMsg>, DaemonError> {
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
            p.next_attempt = now;
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
        for i in freed {
            self.pending.remove(&i);
            self.used_indices.remove(&i);
        }
        Ok(vec![DownMsg::RemovePeer { peer: id }])
    }

    fn fresh_index(&mut self) -> Option<u32> {
        // Bounded: with at most a few thousand indices in use, a collision is ~1e-6 per try.
        for _ in 0..16 {
            let mut b = [0u8; 4];
            self.rng.fill(&mut b).ok()?;
            let i = u32::from_le_bytes(b);
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

    fn drop_pending(&mut self, peer: u32) {
        let idx = self.peers.get_mut(peer).and_then(|p| p.in_flight.take());
        if let Some(i) = idx {
            self.pending.remove(&i);
            self.used_indices.remove(&i);
        }
    }

    /// Starts (or, for a retry, restarts with a fresh M1) an initiation to `peer`.
    fn initiate(&mut self, peer: u32, now: Duration, retry: bool, out: &mut Vec<DownMsg>) {
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
            ..InitiatorOptions::default()
        };
        match Initiator::with_options(
            self.identity,
            &self.my_cert,
            &cert,
            &self.ca,
            index,
            now,
            &self.rng,
            opts,
        ) {
            Ok((state, m1)) => {
                self.pending.insert(index, Pending { peer, state });
                if let Some(p) = self.peers.get_mut(peer) {
                    p.in_flight = Some(index);
                    p.last_started = Some(now);
                }
                if !retry {
                    self.retransmit.start(peer, now);
                }
                self.stats.initiations_sent += 1;
                self.send(dst, &m1, out);
            }
            Err(e) => {
                self.used_indices.remove(&index);
                self.retransmit.cancel(peer);
                warn!(endpoint = %dst, "cannot initiate: {e}");
                if let Some(p) = self.peers.get_mut(peer) {
                    p.next_attempt = now + self.settings.retry_later;
                }
            }
        }
    }

    fn give_up(&mut self, peer: u32, now: Duration) {
        self.drop_pending(peer);
        self.stats.gave_up += 1;
        if let Some(p) = self.peers.get_mut(peer) {
            p.failures = p.failures.saturating_add(1);
            p.next_attempt = now + self.settings.retry_later;
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

    fn on_datagram(&mut self, src: SocketAddr, d: &[u8], now: Duration, out: &mut Vec<DownMsg>) {
        let mut acks = Vec::new();
        let res = self.transport.handle_datagram(src, d, now, &mut acks);
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
            debug!(%src, kind = msg.kind, "control message of a kind not handled yet");
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

    fn under_load(&mut self, now: Duration) -> bool {
        let sec = now.as_secs();
        if self.load_window.0 != sec {
            self.load_window = (sec, 0);
        }
        self.load_window.1 = self.load_window.1.saturating_add(1);
        self.load_window.1 > self.settings.load_threshold
    }

    fn on_initiation(&mut self, src: SocketAddr, m1: &[u8], now: Duration, out: &mut Vec<DownMsg>) {
        let under_load = self.under_load(now);
        let Some(index) = self.fresh_index() else {
            return;
        };
        let res = self
            .responder
            .handle_initiation(m1, src, now, under_load, index);
        match res {
            Ok(ResponderOutput::CookieReply(reply)) => {
                self.used_indices.remove(&index);
                self.send(src, &reply, out);
            }
            Ok(ResponderOutput::Reply { m2, established }) => {
                if self.accept_as_responder(src, &established, now, out) {
                    self.send(src, &m2, out);
                    self.install(*established, src, now, out);
                } else {
                    self.used_indices.remove(&index);
                }
            }
            Err(e) => {
                self.used_indices.remove(&index);
                self.stats.refused += 1;
                debug!(%src, "initiation refused: {e}");
            }
        }
    }

    /// Finds (or, for an unconfigured node of our CA, adds) the peer of a verified initiation;
    /// false if the operator disconnected it.
    fn accept_as_responder(
        &mut self,
        src: SocketAddr,
        est: &Established,
        now: Duration,
        out: &mut Vec<DownMsg>,
    ) -> bool {
        let id = match self.peers.by_node(&est.peer_id) {
            Some(id) => id,
            None => {
                // Same CA, not configured: nothing per pair is needed (as in Nebula). Its
                // endpoint is where the initiation came from.
                let name = est.peer_cert.body.name.clone();
                let Some(id) = self.peers.add(name, est.peer_cert.clone(), Some(src)) else {
                    return false;
                };
                info!(%src, "new peer from an initiation");
                if let Some(p) = self.peers.get_mut(id) {
                    p.dynamic = true;
                    out.push(DownMsg::SetRoutes {
                        peer: id,
                        prefixes: p.routes(),
                    });
                    out.push(DownMsg::SetEndpoint {
                        peer: id,
                        addr: src,
                    });
                }
                id
            }
        };
        let Some(p) = self.peers.get(id) else {
            return false;
        };
        if !p.enabled {
            debug!(%src, "initiation from a disconnected peer ignored");
            return false;
        }
        // Simultaneous initiations: the larger node id yields (drops its own initiation and
        // answers), the smaller keeps its own and does not answer, so both end with the same
        // single session. If the kept initiation was lost, its retransmission settles it.
        if p.in_flight.is_some() {
            if self.my_node_id > p.node_id {
                self.retransmit.cancel(id);
                self.drop_pending(id);
            } else {
                debug!(%src, "crossing initiation: ours wins, theirs is not answered");
                return false;
            }
        }
        let _ = now;
        true
    }

    fn on_initiator_message(
        &mut self,
        src: SocketAddr,
        idx: Option<u32>,
        msg: &[u8],
        now: Duration,
        out: &mut Vec<DownMsg>,
    ) {
        let Some(pending) = idx.and_then(|i| self.pending.get_mut(&i)) else {
            self.stats.refused += 1;
            debug!(%src, "handshake answer for no initiation of ours");
            return;
        };
        let peer = pending.peer;
        match pending.state.handle_message(msg, now) {
            Ok(InitiatorEvent::Resend(m1)) => {
                debug!(%src, "cookie reply; resending the initiation with mac2");
                self.send(src, &m1, out);
            }
            Ok(InitiatorEvent::Established(est)) => {
                if let Some(i) = idx {
                    self.pending.remove(&i);
                }
                self.retransmit.cancel(peer);
                if let Some(p) = self.peers.get_mut(peer) {
                    p.in_flight = None;
                }
                self.install(*est, src, now, out);
            }
            Err(e) => {
                self.stats.refused += 1;
                debug!(%src, "handshake answer refused: {e}");
            }
        }
    }

    fn install(
        &mut self,
        est: Established,
        src: SocketAddr,
        now: Duration,
        out: &mut Vec<DownMsg>,
    ) {
        let Some(id) = self.peers.by_node(&est.peer_id) else {
            self.used_indices.remove(&est.local_index);
            return;
        };
        let cipher = match est.cipher {
            CipherChoice::Aes256Gcm => shadowmesh_dataplane::ipc::proto::CIPHER_AES_256_GCM,
            CipherChoice::ChaCha20Poly1305 => {
                shadowmesh_dataplane::ipc::proto::CIPHER_CHACHA20_POLY1305
            }
        };
        let install = InstallSession {
            peer: id,
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
        };
        if est.is_initiator {
            self.stats.completed_initiator += 1;
        } else {
            self.stats.completed_responder += 1;
        }
        let Some(p) = self.peers.get_mut(id) else {
            return;
        };
        info!(
            peer = %p.name,
            %src,
            role = if est.is_initiator { "initiator" } else { "responder" },
            cipher = ?est.cipher,
            "handshake complete"
        );
        // Our previous-previous session leaves the dataplane when this one is installed.
        let older = p.previous.take();
        p.previous = p.session.take();
        p.session = Some(SessionRecord {
            install: install.clone(),
            established_at: now,
            initiator: est.is_initiator,
        });
        p.last_handshake = Some(now);
        p.has_our_cert = true;
        p.failures = 0;
        if let Some(o) = older {
            self.used_indices.remove(&o.install.local_index);
        }
        out.push(DownMsg::InstallSession(install));
    }
}
