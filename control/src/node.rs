//! One node's control plane without sockets or clocks: the handshake [`Driver`] (which owns
//! the control transport), the Kademlia [`Dht`], and the discovery policy that joins them.
//!
//! The daemon drives it with the dataplane's events and the binary's clock; the simulator
//! drives many of them on virtual time. Every input returns the [`DownMsg`]s to send to the
//! dataplane, in order.
//!
//! Policy it owns:
//! - **Join and publish**: with bootstrap addresses it joins the DHT, then publishes a record
//!   of its certificate and endpoints (the configured `advertise` list, else the local ones
//!   and those other nodes observed), re-signed with a higher sequence number before it
//!   expires and whenever the endpoints change.
//! - **On demand**: a packet to an overlay address no peer routes (`NoSession` without a peer)
//!   starts a lookup of that address's record (at most one per address per
//!   [`LOOKUP_INTERVAL`], at most [`MAX_DESTINATION_LOOKUPS`] at once); a record found under
//!   it becomes a dynamic peer and is handshaken at once, while the dataplane holds the packets.
//! - **Connect by name or address**: an operator `connect` of a name or overlay address no
//!   peer has looks it up the same way.
//! - **Liveness**: every enabled peer is pinged over the DHT every [`PROBE_INTERVAL`]; after
//!   [`PROBE_MISSES`] unanswered probes in a row it is shown unreachable (within
//!   `PROBE_INTERVAL × PROBE_MISSES + request timeout`); the first answer makes it reachable
//!   again and starts a fresh handshake (it may have restarted); a dynamic peer's record is
//!   looked up again while it is unreachable (it may have moved).
//!
//! It never reads a clock, opens a socket or logs key material.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_core::RngCore;
use shadowmesh_ipc::{DownMsg, UpMsg};
use tracing::{debug, info, warn};

use crate::cert::{CaPublic, NodeCert};
use crate::clock::Now;
use crate::daemon::DaemonError;
use crate::dht::key::Key;
use crate::dht::record::{NodeRecord, MAX_TTL};
use crate::dht::{Dht, DhtConfig, DhtEvent, LookupId};
use crate::handshake::driver::{Driver, PeerSpec, Settings};
use crate::identity::{hex, Identity};
use crate::nat::{FamilyView, Mapping, Observations, Report};
use crate::punch::{PunchStats, Punches, Role};
use crate::transport::{Budget, KIND_DHT, KIND_NAT};

/// Least time between two lookups for the same destination address.
pub const LOOKUP_INTERVAL: Duration = Duration::from_secs(2);
/// Destination lookups in flight at once (more destinations wait for the next packet).
pub const MAX_DESTINATION_LOOKUPS: usize = 64;
/// Destinations remembered for [`LOOKUP_INTERVAL`] (bounds the table under a scan).
pub const MAX_DESTINATIONS: usize = 4096;
/// How often each peer is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes in a row after which a peer is shown unreachable.
pub const PROBE_MISSES: u32 = 3;
/// Our record is re-signed and published again this long before it expires.
pub const REPUBLISH_BEFORE_EXPIRY: Duration = Duration::from_secs(20 * 60);
/// Most endpoints in our record.
pub const MAX_ENDPOINTS: usize = 8;
/// Operator lookups (`connect NAME|IP`) waiting at once.
pub const MAX_CONNECT_LOOKUPS: usize = 64;
/// How often a node pings its homes: below the strictest common UDP binding timeout of NATs
/// (30 s; RFC 4787 asks for ≥ 2 min, many home routers keep 30–60 s), so the home can always
/// reach it, and below the home's [`crate::dht::bindings::BIND_TIMEOUT`].
pub const HOME_KEEPALIVE: Duration = Duration::from_secs(25);
/// Most homes a node keeps (and lists in its record).
pub const MAX_HOMES: usize = 2;

/// What discovery needs from the configuration and the host.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// DHT nodes to join through, by address.
    pub bootstrap: Vec<SocketAddr>,
    /// Endpoints to publish instead of the local and observed ones.
    pub advertise: Vec<SocketAddr>,
    /// Our local underlay addresses with the data port (the daemon reads the interfaces).
    pub local: Vec<SocketAddr>,
    /// Offer to enter other nodes' routing tables.
    pub server: bool,
    /// DHT tunables.
    pub dht: DhtConfig,
}

/// Why a lookup runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A packet to this overlay address found no peer.
    Destination(IpAddr),
    /// The operator asked to connect to this name or address (ticket for the answer).
    Connect(String, u64),
    /// A dynamic peer is unreachable: where is it now?
    Refresh(u32),
    /// Joining the DHT (our own id).
    Join,
}

impl Purpose {
    /// Its name in status output.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Destination(_) => "destination",
            Self::Connect(..) => "connect",
            Self::Refresh(_) => "refresh",
            Self::Join => "join",
        }
    }
}

/// One finished lookup, for status.
#[derive(Debug, Clone)]
pub struct LookupLog {
    /// What was looked up.
    pub target: String,
    /// Why.
    pub purpose: &'static str,
    /// A valid record came back.
    pub found: bool,
    /// Hops.
    pub hops: u32,
    /// Nodes queried.
    pub queried: u32,
    /// How long it took.
    pub elapsed: Duration,
}

/// Lookups kept for status.
pub const LOOKUP_LOG: usize = 32;

/// An answer for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A `connect` lookup ended: `Ok(peer name)` or why not.
    ConnectDone {
        /// The ticket [`Node::connect`] returned.
        ticket: u64,
        /// The peer's name, or what went wrong.
        result: Result<String, ConnectFailure>,
    },
}

/// Why a `connect` by name or address failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectFailure {
    /// No valid record under that name or address.
    #[error("no node of this network has that name or address (DHT lookup found no record)")]
    NotFound,
    /// The record's node could not become a peer.
    #[error(
        "the node was found but refused as a peer (certificate, address overlap or disconnected)"
    )]
    Refused,
    /// Too many lookups wait already.
    #[error("too many lookups in progress; try again")]
    Busy,
}

/// How [`Node::connect`] proceeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectStart {
    /// A known peer: handshaking now.
    Known,
    /// Looking it up; a [`NodeEvent::ConnectDone`] with this ticket follows.
    LookingUp(u64),
}

#[derive(Debug, Default)]
struct Liveness {
    misses: u32,
    next_probe: Duration,
    outstanding: bool,
    rtt: Option<Duration>,
}

/// What a node's record said about reaching it through NATs: its homes' node ids and its
/// endpoints (kept to punch to it again after we move).
type Traversal = (Vec<[u8; 32]>, Vec<SocketAddr>);

/// The control plane of one node, sans-IO.
pub struct Node<'a> {
    identity: &'a Identity,
    driver: Driver<'a>,
    dht: Dht<'a>,
    rng: Box<dyn RngCore + Send>,
    config: NodeConfig,
    /// Our addresses as DHT replies echoed them, newest per reporter.
    observed: Observations,
    /// What our record carries now, and its sequence number.
    published: Vec<SocketAddr>,
    record_seq: u64,
    republish_at: Option<Duration>,
    joined: bool,
    lookups: BTreeMap<LookupId, Purpose>,
    /// When each destination was last looked up.
    destinations: BTreeMap<IpAddr, Duration>,
    liveness: BTreeMap<u32, Liveness>,
    next_ticket: u64,
    log: VecDeque<LookupLog>,
    events: VecDeque<NodeEvent>,
    /// The nodes that can always reach us (bound by our keepalives), listed in our record.
    homes: Vec<(Key, SocketAddr)>,
    next_home_ping: Option<Duration>,
    next_home_check: Duration,
    /// Hole punches in progress.
    punches: Punches,
    /// Introductions from nodes that are not our homes (dropped).
    stray_introductions: u64,
    /// Round-trip time of each home's latest keepalive answer.
    home_rtt: BTreeMap<Key, Duration>,
    /// Where each node's first valid punch probe came from (the hole we use), bounded.
    punched: BTreeMap<[u8; 32], SocketAddr>,
    /// The homes and endpoints of the nodes we punched to, to punch again after we move.
    traversals: BTreeMap<[u8; 32], Traversal>,
    /// Our endpoints changed (we moved, or our NAT remapped us): punch to everyone again.
    repunch_all: bool,
    /// Nodes to punch to again at the next timer run (found unreachable).
    repunch_due: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("driver", &self.driver)
            .field("lookups", &self.lookups.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Node<'a> {
    /// A node for `identity` (certificate `cert`, network `ca`) with static `peers`. `rng` is
    /// the caller's generator; the driver gets a child of it.
    ///
    /// # Errors
    /// As [`Driver::new`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        identity: &'a Identity,
        cert: NodeCert,
        ca: CaPublic,
        peers: Vec<PeerSpec>,
        settings: Settings,
        config: NodeConfig,
        now: impl Into<Now>,
        mut rng: Box<dyn RngCore + Send>,
    ) -> Result<Self, DaemonError> {
        use rand_core::SeedableRng;
        let now = now.into();
        let child = rand_chacha::ChaCha20Rng::from_rng(&mut rng);
        let driver = Driver::new(
            identity,
            cert.clone(),
            ca.clone(),
            peers,
            settings,
            now,
            Box::new(child),
        )?;
        let mut dht_config = config.dht.clone();
        dht_config.server = config.server;
        let mut dht = Dht::new(identity, cert, ca, dht_config);
        for b in &config.bootstrap {
            dht.add_bootstrap(*b);
        }
        Ok(Self {
            identity,
            driver,
            dht,
            rng,
            config,
            observed: Observations::default(),
            published: Vec::new(),
            record_seq: 0,
            republish_at: None,
            joined: false,
            lookups: BTreeMap::new(),
            destinations: BTreeMap::new(),
            liveness: BTreeMap::new(),
            next_ticket: 1,
            log: VecDeque::new(),
            events: VecDeque::new(),
            homes: Vec::new(),
            next_home_ping: None,
            next_home_check: Duration::ZERO,
            punches: Punches::default(),
            stray_introductions: 0,
            home_rtt: BTreeMap::new(),
            punched: BTreeMap::new(),
            traversals: BTreeMap::new(),
            repunch_all: false,
            repunch_due: Vec::new(),
        })
    }

    /// The handshake driver (peers, sessions, counters).
    #[must_use]
    pub fn driver(&self) -> &Driver<'a> {
        &self.driver
    }

    /// The DHT (routing table, stored records, counters).
    #[must_use]
    pub fn dht(&self) -> &Dht<'a> {
        &self.dht
    }

    /// Our addresses as others observed them, with the number of reporters that see each.
    pub fn observed(&self) -> impl Iterator<Item = (SocketAddr, usize)> + '_ {
        self.observed.addresses().into_iter()
    }

    /// Every reporter's latest view of us (reporter id, report).
    pub fn observations(&self) -> impl Iterator<Item = (&[u8; 32], &Report)> {
        self.observed.reports()
    }

    /// What the reports say of our NAT, for IPv4 and IPv6 (see [`Observations::classify`]).
    #[must_use]
    pub fn nat(&self) -> (FamilyView, FamilyView) {
        (
            self.observed.classify(false, &self.config.local),
            self.observed.classify(true, &self.config.local),
        )
    }

    /// The observed addresses worth publishing: per family, those most reporters see, and
    /// none when the mapping is endpoint-dependent (each address then serves its reporter
    /// only). One reporter's view counts until there are more.
    fn publishable_observed(&self) -> Vec<SocketAddr> {
        let mut v = Vec::new();
        for v6 in [false, true] {
            if self.observed.classify(v6, &self.config.local).mapping == Mapping::EndpointDependent
            {
                continue;
            }
            let votes: Vec<(SocketAddr, usize)> = self
                .observed
                .addresses()
                .into_iter()
                .filter(|(a, _)| a.is_ipv6() == v6)
                .collect();
            let top = votes.iter().map(|(_, n)| *n).max().unwrap_or(0);
            v.extend(votes.iter().filter(|(_, n)| *n == top).map(|(a, _)| *a));
        }
        v.sort();
        v
    }

    /// Our homes (node id, address): bootstrap nodes that answered, kept bound by pings.
    #[must_use]
    pub fn homes(&self) -> &[(Key, SocketAddr)] {
        &self.homes
    }

    /// The latest keepalive round-trip time to a home.
    #[must_use]
    pub fn home_rtt(&self, home: &Key) -> Option<Duration> {
        self.home_rtt.get(home).copied()
    }

    /// The latest liveness round-trip time to peer `id` (over the DHT, on its endpoint).
    #[must_use]
    pub fn peer_rtt(&self, id: u32) -> Option<Duration> {
        self.liveness.get(&id).and_then(|l| l.rtt)
    }

    /// Where the hole punched with `node_id` opened (its probe's source), if one was.
    #[must_use]
    pub fn punched_from(&self, node_id: &[u8; 32]) -> Option<SocketAddr> {
        self.punched.get(node_id).copied()
    }

    /// Hole-punching counters, and introductions refused because they did not come from a
    /// home of ours.
    #[must_use]
    pub fn punch_stats(&self) -> (PunchStats, u64) {
        (self.punches.stats(), self.stray_introductions)
    }

    /// The endpoints of our published record and its sequence number (0: none yet).
    #[must_use]
    pub fn published(&self) -> (&[SocketAddr], u64) {
        (&self.published, self.record_seq)
    }

    /// The latest finished lookups, oldest first.
    pub fn recent_lookups(&self) -> impl Iterator<Item = &LookupLog> {
        self.log.iter()
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The next answer for the operator.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// The dataplane (re)connected: see [`Driver::on_connected`]; then the DHT joins (or
    /// rejoins) through the bootstrap nodes.
    #[must_use]
    pub fn on_connected(&mut self, now: impl Into<Now>) -> Vec<DownMsg> {
        let now = now.into();
        let mut out = self.driver.on_connected(now);
        out.extend(self.driver.handle_timeout(now));
        if !self.joined {
            self.joined = true;
            if !self.config.bootstrap.is_empty() {
                self.dht.join(now, &mut *self.rng);
            }
            // A node nobody has joined yet still publishes (it is someone's bootstrap).
            self.publish(now);
        }
        self.pump(now, &mut out);
        out
    }

    /// One event of the dataplane.
    #[must_use]
    pub fn handle_event(&mut self, ev: UpMsg, now: impl Into<Now>) -> Vec<DownMsg> {
        let now = now.into();
        let mut out = Vec::new();
        match ev {
            UpMsg::NoSession { peer: None, dst } => self.on_unrouted(dst, now),
            other => out = self.driver.handle_event(other, now),
        }
        self.pump(now, &mut out);
        out
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next (monotonic).
    #[must_use]
    pub fn poll_timeout(&self, now: impl Into<Now>) -> Duration {
        let now = now.into();
        let probe = self.liveness.values().map(|l| l.next_probe).min();
        [
            self.dht.poll_timeout(),
            probe,
            self.republish_at,
            self.next_home_ping,
            (!self.config.bootstrap.is_empty()).then_some(self.next_home_check),
            self.punches.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .fold(self.driver.poll_timeout(now), Duration::min)
    }

    /// Runs the timers due at `now`.
    #[must_use]
    pub fn handle_timeout(&mut self, now: impl Into<Now>) -> Vec<DownMsg> {
        let now = now.into();
        let mut out = self.driver.handle_timeout(now);
        self.dht.handle_timeout(now, &mut *self.rng);
        // Stale reports go (we may have moved, the NAT may have dropped the binding); the
        // record follows at the next re-signing.
        if self.observed.expire(now.mono) && self.endpoints() != self.published {
            let soon = now.mono + Duration::from_secs(1);
            self.republish_at = Some(self.republish_at.map_or(soon, |t| t.min(soon)));
        }
        if self.republish_at.is_some_and(|t| now.mono >= t) {
            self.publish(now);
        }
        self.probe_peers(now);
        self.keep_homes(now);
        self.repunch(now, &mut out);
        self.send_probes(now, &mut out);
        self.pump(now, &mut out);
        out
    }

    /// Picks our homes among the bootstrap nodes in our routing table (they answered, so
    /// their address is confirmed) and pings them every [`HOME_KEEPALIVE`]; a change of homes
    /// re-signs our record.
    fn keep_homes(&mut self, now: Now) {
        if now.mono >= self.next_home_check && !self.config.bootstrap.is_empty() {
            // Every second until we have all the homes we can, then every minute.
            let complete = self.homes.len() >= MAX_HOMES.min(self.config.bootstrap.len());
            self.next_home_check = now.mono
                + if complete {
                    Duration::from_secs(60)
                } else {
                    Duration::from_secs(1)
                };
            self.choose_homes(now);
        }
        if self.next_home_ping.is_some_and(|t| now.mono >= t) {
            for (id, addr) in self.homes.clone() {
                self.dht.ping(id, addr, now, &mut *self.rng);
            }
            self.next_home_ping = Some(now.mono + HOME_KEEPALIVE);
        }
    }

    fn choose_homes(&mut self, now: Now) {
        let mut homes: Vec<(Key, SocketAddr)> = self
            .dht
            .routing_table()
            .filter(|c| self.config.bootstrap.contains(&c.addr))
            .map(|c| (c.id, c.addr))
            .collect();
        homes.sort_by_key(|(_, a)| *a);
        homes.truncate(MAX_HOMES);
        if homes != self.homes {
            info!(homes = ?homes.iter().map(|h| h.1).collect::<Vec<_>>(), "homes changed");
            self.homes = homes;
            let homes = &self.homes;
            self.home_rtt
                .retain(|k, _| homes.iter().any(|(h, _)| h == k));
            self.next_home_ping = (!self.homes.is_empty()).then_some(now.mono);
            if self.record_seq > 0 {
                let soon = now.mono + Duration::from_secs(1);
                self.republish_at = Some(self.republish_at.map_or(soon, |t| t.min(soon)));
            }
        }
    }

    /// Punches again towards the nodes found unreachable, and towards every node we punched
    /// to once our own endpoints changed.
    fn repunch(&mut self, now: Now, out: &mut Vec<DownMsg>) {
        let mut due = std::mem::take(&mut self.repunch_due);
        if std::mem::take(&mut self.repunch_all) {
            let peers = self.driver.peers();
            due.extend(
                self.traversals
                    .keys()
                    .filter(|n| peers.by_node(n).is_some())
                    .copied(),
            );
            if !due.is_empty() {
                info!(peers = due.len(), "our endpoints changed; punching again");
            }
        }
        for node_id in due {
            self.punch(node_id, now, out);
        }
    }

    /// Sends the punch probes that are due.
    fn send_probes(&mut self, now: Now, out: &mut Vec<DownMsg>) {
        for (dst, msg) in self.punches.due(now.mono) {
            out.extend(
                self.driver
                    .send_message(dst, KIND_NAT, &msg, Budget::ONCE, now.mono),
            );
        }
    }

    /// Starts a hole punch towards the node of `rec` (a dynamic peer now) when its record
    /// names homes: asks each home to introduce us (with a fresh token and our candidates)
    /// and probes the record's endpoints ourselves, so both NATs open for each other.
    fn traverse(&mut self, rec: &NodeRecord, now: Now, out: &mut Vec<DownMsg>) {
        let node_id = rec.node_id();
        if rec.relays.is_empty() {
            return;
        }
        let reject_after = self.driver.settings().reject_after;
        let live = self
            .driver
            .peers()
            .by_node(&node_id)
            .and_then(|id| self.driver.peers().get(id))
            .is_some_and(|p| p.live_session(now.mono, reject_after).is_some());
        // Remembered (bounded) so that the hole can be punched again when we move.
        if self.traversals.len() < MAX_DESTINATIONS || self.traversals.contains_key(&node_id) {
            self.traversals
                .insert(node_id, (rec.relays.clone(), rec.endpoints.clone()));
        }
        if !live {
            self.punch(node_id, now, out);
        }
    }

    /// Punches (again) towards `node_id` through the homes and at the endpoints its record
    /// named, unless a punch with it is under way.
    fn punch(&mut self, node_id: [u8; 32], now: Now, out: &mut Vec<DownMsg>) {
        let Some((homes, mut endpoints)) = self.traversals.get(&node_id).cloned() else {
            return;
        };
        // Where we reach it now first (after a move, that is the hole to reopen).
        let current = self
            .driver
            .peers()
            .by_node(&node_id)
            .and_then(|id| self.driver.peers().get(id))
            .and_then(|p| p.endpoint);
        if let Some(e) = current {
            endpoints.retain(|a| *a != e);
            endpoints.insert(0, e);
        }
        if self.punches.active_with(&node_id, now.mono) {
            return;
        }
        let mut token = [0u8; crate::dht::messages::TOKEN_LEN];
        self.rng.fill_bytes(&mut token);
        let ours = self.endpoints();
        let mut asked = 0;
        for home in homes.iter().take(MAX_HOMES) {
            let home = Key::for_node(home);
            let addr = self
                .dht
                .routing_table()
                .find(|c| c.id == home)
                .map(|c| c.addr);
            let Some(addr) = addr else {
                debug!("a home of the record is not in our routing table");
                continue;
            };
            if self.dht.introduce(
                home,
                addr,
                Key::for_node(&node_id),
                token,
                ours.clone(),
                now,
                &mut *self.rng,
            ) {
                asked += 1;
            }
        }
        debug!(homes = asked, "punching: introductions asked");
        self.punches
            .start(token, node_id, Role::Initiator, &endpoints, now.mono);
        self.send_probes(now, out);
    }

    /// A home passed on that `from` wants to reach us: probe its candidates at once.
    fn on_introduction(
        &mut self,
        home: Key,
        from: Key,
        token: [u8; crate::dht::messages::TOKEN_LEN],
        candidates: &[SocketAddr],
        now: Now,
        out: &mut Vec<DownMsg>,
    ) {
        if !self.homes.iter().any(|(h, _)| *h == home) {
            self.stray_introductions += 1;
            return;
        }
        // One punch per introducer at a time: a member cannot make us probe more than 9
        // addresses of its choosing per 2 s, however many introductions it asks for.
        if self.punches.active_with(&from.0, now.mono) {
            return;
        }
        debug!(candidates = ?candidates, "introduced by a home; punching");
        if self
            .punches
            .start(token, from.0, Role::Responder, candidates, now.mono)
        {
            self.send_probes(now, out);
        }
    }

    /// A control message of kind NAT: a punch probe or its reply.
    fn on_nat_message(&mut self, src: SocketAddr, msg: &[u8], now: Now, out: &mut Vec<DownMsg>) {
        let Some(p) = self.punches.on_probe(src, msg, now.mono) else {
            return;
        };
        if p.first
            && (self.punched.len() < MAX_DESTINATIONS || self.punched.contains_key(&p.peer_node))
        {
            self.punched.insert(p.peer_node, src);
        }
        if let Some(reply) = p.reply {
            out.extend(
                self.driver
                    .send_message(src, KIND_NAT, &reply, Budget::ONCE, now.mono),
            );
        }
        if p.first && p.role == Role::Initiator {
            if let Some(id) = self.driver.peers().by_node(&p.peer_node) {
                out.extend(self.driver.punched(id, src, now));
            }
        }
    }

    /// Operator request: connect to a peer by name (or node id prefix), or look up a name or
    /// overlay address no peer has yet.
    ///
    /// # Errors
    /// [`ConnectFailure::Busy`] when too many lookups wait.
    pub fn connect(
        &mut self,
        query: &str,
        now: impl Into<Now>,
    ) -> Result<(ConnectStart, Vec<DownMsg>), ConnectFailure> {
        let now = now.into();
        if self.driver.peers().by_name(query).is_some() {
            let out = self
                .driver
                .connect(query, now)
                .map_err(|_| ConnectFailure::NotFound)?;
            return Ok((ConnectStart::Known, out));
        }
        let key = match query.parse::<IpAddr>() {
            Ok(ip) => {
                if let Some(id) = self.peer_with_address(ip) {
                    let name = self.driver.peers().get(id).map(|p| p.name.clone());
                    if let Some(name) = name {
                        let out = self
                            .driver
                            .connect(&name, now)
                            .map_err(|_| ConnectFailure::NotFound)?;
                        return Ok((ConnectStart::Known, out));
                    }
                }
                Key::for_addr(ip)
            }
            Err(_) => Key::for_name(query),
        };
        let waiting = self
            .lookups
            .values()
            .filter(|p| matches!(p, Purpose::Connect(..)))
            .count();
        if waiting >= MAX_CONNECT_LOOKUPS {
            return Err(ConnectFailure::Busy);
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let id = self.dht.find_record(key, now, &mut *self.rng);
        self.lookups
            .insert(id, Purpose::Connect(query.to_string(), ticket));
        let mut out = Vec::new();
        self.pump(now, &mut out);
        Ok((ConnectStart::LookingUp(ticket), out))
    }

    /// Operator request: see [`Driver::disconnect`].
    ///
    /// # Errors
    /// [`DaemonError::UnknownPeer`].
    pub fn disconnect(&mut self, name: &str) -> Result<Vec<DownMsg>, DaemonError> {
        let id = self.driver.peers().by_name(name);
        let out = self.driver.disconnect(name)?;
        if let Some(id) = id {
            self.liveness.remove(&id);
        }
        Ok(out)
    }

    fn peer_with_address(&self, ip: IpAddr) -> Option<u32> {
        self.driver.peers().iter().find_map(|p| {
            p.routes()
                .iter()
                .any(|&(a, l)| crate::peers::prefixes_overlap((a, l), (ip, max_len(ip))))
                .then_some(p.id)
        })
    }

    /// A packet to `dst` found no peer: look its record up (rate-limited, bounded).
    fn on_unrouted(&mut self, dst: IpAddr, now: Now) {
        if self.peer_with_address(dst).is_some() {
            return;
        }
        if self
            .destinations
            .get(&dst)
            .is_some_and(|t| now.mono.saturating_sub(*t) < LOOKUP_INTERVAL)
        {
            return;
        }
        let in_flight = self
            .lookups
            .values()
            .filter(|p| matches!(p, Purpose::Destination(_)))
            .count();
        if in_flight >= MAX_DESTINATION_LOOKUPS {
            debug!(%dst, "too many destination lookups in flight; this one waits");
            return;
        }
        if self.destinations.len() >= MAX_DESTINATIONS {
            let cutoff = now.mono.saturating_sub(LOOKUP_INTERVAL);
            self.destinations.retain(|_, t| *t >= cutoff);
            if self.destinations.len() >= MAX_DESTINATIONS {
                return;
            }
        }
        self.destinations.insert(dst, now.mono);
        debug!(%dst, "no peer for this destination; looking it up");
        let id = self
            .dht
            .find_record(Key::for_addr(dst), now, &mut *self.rng);
        self.lookups.insert(id, Purpose::Destination(dst));
    }

    /// Signs and publishes our record with the endpoints we know now.
    fn publish(&mut self, now: Now) {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            debug!("no endpoint known yet; record not published");
            return;
        }
        // Strictly increasing across restarts without stored state: the wall clock in ms.
        let wall_ms = u64::try_from(now.wall.as_millis()).unwrap_or(u64::MAX);
        let seq = wall_ms.max(self.record_seq.saturating_add(1));
        let expires = now.wall.as_secs().saturating_add(MAX_TTL.as_secs());
        match NodeRecord::sign(
            self.identity,
            self.driver.my_cert(),
            endpoints.clone(),
            self.homes.iter().map(|(k, _)| k.0).collect(),
            seq,
            expires,
        ) {
            Ok(rec) => {
                info!(endpoints = ?endpoints, seq, "publishing our node record");
                self.dht.publish(rec, now, &mut *self.rng);
                let moved = !self.published.is_empty() && self.published != endpoints;
                if moved {
                    self.repunch_all = true;
                }
                self.published = endpoints;
                self.record_seq = seq;
                self.republish_at =
                    Some(now.mono + MAX_TTL.saturating_sub(REPUBLISH_BEFORE_EXPIRY));
            }
            Err(e) => {
                warn!("cannot sign our node record: {e}");
                self.republish_at = Some(now.mono + PROBE_INTERVAL);
            }
        }
    }

    /// The endpoints our record should carry: the configured ones, else local and observed.
    fn endpoints(&self) -> Vec<SocketAddr> {
        if !self.config.advertise.is_empty() {
            return self.config.advertise.clone();
        }
        // Observed first (what others reach us at), in address order so that the set, not
        // the order reports arrived in, decides when to republish.
        let observed = self.publishable_observed();
        let mut v: Vec<SocketAddr> = Vec::new();
        for a in &observed {
            if !v.contains(a) {
                v.push(*a);
            }
        }
        // Never our own overlay addresses (the TUN's): they are reachable only through us.
        let cert = self.driver.my_cert();
        let overlay = |ip: IpAddr| {
            cert.body
                .ipv4
                .iter()
                .map(|(a, l)| (IpAddr::V4(*a), *l))
                .chain(cert.body.ipv6.iter().map(|(a, l)| (IpAddr::V6(*a), *l)))
                .any(|p| crate::peers::prefixes_overlap(p, (ip, max_len(ip))))
        };
        for a in self.config.local.iter().chain(observed.iter()) {
            if !v.contains(a) && !overlay(a.ip()) {
                v.push(*a);
            }
        }
        v.retain(|a| !overlay(a.ip()));
        v.truncate(MAX_ENDPOINTS);
        v
    }

    /// Pings every enabled peer whose probe is due.
    fn probe_peers(&mut self, now: Now) {
        let peers: Vec<(u32, [u8; 32], Option<SocketAddr>, bool)> = self
            .driver
            .peers()
            .iter()
            .map(|p| (p.id, p.node_id, p.endpoint, p.enabled))
            .collect();
        self.liveness
            .retain(|id, _| peers.iter().any(|p| p.0 == *id && p.3));
        for (id, node_id, endpoint, enabled) in peers {
            let (true, Some(addr)) = (enabled, endpoint) else {
                continue;
            };
            let l = self.liveness.entry(id).or_insert_with(|| Liveness {
                next_probe: now.mono,
                ..Liveness::default()
            });
            if now.mono < l.next_probe {
                continue;
            }
            if l.outstanding {
                // The previous probe got no result within its interval: count it lost.
                l.misses = l.misses.saturating_add(1);
            }
            l.outstanding = true;
            l.next_probe = now.mono + PROBE_INTERVAL;
            let missed = l.misses;
            self.dht
                .ping(Key::for_node(&node_id), addr, now, &mut *self.rng);
            if missed >= PROBE_MISSES {
                let out = self.driver.set_reachable(id, false, now);
                debug_assert!(out.is_empty());
                self.repunch_due.push(node_id);
            }
        }
    }

    /// Moves messages between the driver and the DHT until neither has more; bounded.
    fn pump(&mut self, now: Now, out: &mut Vec<DownMsg>) {
        for _ in 0..64 {
            let mut moved = false;
            while let Some((src, kind, msg)) = self.driver.poll_message() {
                moved = true;
                if kind == KIND_DHT {
                    self.dht.handle_message(src, &msg, now, &mut *self.rng);
                } else if kind == KIND_NAT {
                    self.on_nat_message(src, &msg, now, out);
                } else {
                    debug!(%src, kind, "control message of a kind not handled yet");
                }
            }
            while let Some(ev) = self.dht.poll_event() {
                moved = true;
                self.on_dht_event(ev, now, out);
            }
            while let Some((dst, msg)) = self.dht.poll_transmit() {
                moved = true;
                // DHT replies may go to addresses not yet validated: at most 3 copies' worth.
                out.extend(self.driver.send_message(
                    dst,
                    KIND_DHT,
                    &msg,
                    Budget::UNVALIDATED_REPLY,
                    now.mono,
                ));
            }
            if !moved {
                return;
            }
        }
    }

    fn on_dht_event(&mut self, ev: DhtEvent, now: Now, out: &mut Vec<DownMsg>) {
        match ev {
            DhtEvent::ObservedAddr {
                addr,
                reporter,
                from,
            } => {
                // Bounded: one report per reporter, MAX_REPORTERS reporters.
                let changed = self.observed.report(
                    reporter.0,
                    Report {
                        observed: addr,
                        reporter_addr: from,
                        at: now.mono,
                    },
                );
                if changed && self.endpoints() != self.published {
                    // At most one re-signing per PROBE_INTERVAL while addresses settle.
                    let soon = now.mono + PROBE_INTERVAL.min(Duration::from_secs(1));
                    self.republish_at = Some(self.republish_at.map_or(soon, |t| t.min(soon)));
                }
            }
            DhtEvent::Introduction {
                home,
                from,
                token,
                candidates,
            } => self.on_introduction(home, from, token, &candidates, now, out),
            DhtEvent::IntroduceResult {
                target, forwarded, ..
            } => {
                debug!(target = %hex(&target.0[..8]), forwarded, "introduction answered");
            }
            DhtEvent::PingResult { node, ok, rtt, .. } => {
                if let (true, Some(rtt)) = (self.homes.iter().any(|(h, _)| *h == node), rtt) {
                    self.home_rtt.insert(node, rtt);
                }
                let Some(id) = self.driver.peers().by_node(&node.0) else {
                    return;
                };
                let Some(l) = self.liveness.get_mut(&id) else {
                    return;
                };
                l.outstanding = false;
                if ok {
                    l.misses = 0;
                    l.rtt = rtt;
                    out.extend(self.driver.set_reachable(id, true, now));
                } else {
                    l.misses = l.misses.saturating_add(1);
                    if l.misses >= PROBE_MISSES {
                        out.extend(self.driver.set_reachable(id, false, now));
                        // The hole may have closed (either end moved, a NAT forgot it).
                        self.punch(node.0, now, out);
                        let dynamic = self.driver.peers().get(id).is_some_and(|p| p.dynamic);
                        let refreshing = self.lookups.values().any(|p| *p == Purpose::Refresh(id));
                        if dynamic && !refreshing {
                            let lid = self.dht.find_record(node, now, &mut *self.rng);
                            self.lookups.insert(lid, Purpose::Refresh(id));
                        }
                    }
                }
            }
            DhtEvent::LookupDone {
                id,
                key,
                record,
                hops,
                queried,
                elapsed,
                ..
            } => {
                let purpose = self.lookups.remove(&id).unwrap_or(Purpose::Join);
                if purpose == Purpose::Join {
                    // Joined: the k closest nodes are known now, so the record lands there.
                    self.publish(now);
                }
                let target = match &purpose {
                    Purpose::Destination(ip) => ip.to_string(),
                    Purpose::Connect(q, _) => q.clone(),
                    Purpose::Refresh(_) | Purpose::Join => hex(&key.0[..8]),
                };
                if self.log.len() >= LOOKUP_LOG {
                    self.log.pop_front();
                }
                self.log.push_back(LookupLog {
                    target,
                    purpose: purpose.label(),
                    found: record.is_some(),
                    hops,
                    queried,
                    elapsed,
                });
                let result = match record {
                    Some(rec) => self.adopt(&rec, matches!(purpose, Purpose::Refresh(_)), now, out),
                    None => Err(ConnectFailure::NotFound),
                };
                match (&purpose, &result) {
                    (Purpose::Connect(_, ticket), _) => {
                        self.events.push_back(NodeEvent::ConnectDone {
                            ticket: *ticket,
                            result: result.clone(),
                        })
                    }
                    (Purpose::Destination(ip), Err(e)) => {
                        debug!(dst = %ip, "destination lookup: {e}")
                    }
                    _ => {}
                }
            }
        }
    }

    /// A record found by a lookup: its node becomes (or updates) a peer and is handshaken.
    fn adopt(
        &mut self,
        rec: &NodeRecord,
        replace: bool,
        now: Now,
        out: &mut Vec<DownMsg>,
    ) -> Result<String, ConnectFailure> {
        // Prefer the address the DHT reached it at (proven to answer), else its first endpoint.
        let node = Key::for_node(&rec.node_id());
        let seen = self
            .dht
            .routing_table()
            .find(|c| c.id == node)
            .map(|c| c.addr)
            .filter(|a| rec.endpoints.contains(a));
        let Some(endpoint) = seen.or_else(|| rec.endpoints.first().copied()) else {
            return Err(ConnectFailure::Refused);
        };
        match self
            .driver
            .add_discovered(rec.cert.clone(), endpoint, replace, now)
        {
            Ok((id, msgs)) => {
                out.extend(msgs);
                self.traverse(rec, now, out);
                Ok(self
                    .driver
                    .peers()
                    .get(id)
                    .map(|p| p.name.clone())
                    .unwrap_or_default())
            }
            Err(e) => {
                warn!(%endpoint, "discovered node not added: {e}");
                Err(ConnectFailure::Refused)
            }
        }
    }
}

fn max_len(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}
