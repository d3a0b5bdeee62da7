//! The DHT state machine of one node: requests and replies, lookups, the routing table, the
//! record store, publishing. Sans-IO in the quinn-proto style: feed it with
//! [`Dht::handle_message`] / [`Dht::handle_timeout`], take datagrams with
//! [`Dht::poll_transmit`] and events with [`Dht::poll_event`].
//!
//! Rules it enforces (see `docs/protocol.md §8`):
//! - Every message is authenticated ([`super::auth`]) before anything else; a failure is a
//!   counted drop that changes no state.
//! - A reply counts only for a request we sent: same txid, from the address it went to, from
//!   the node it was meant for (any member for a HELLO). Anything else is a counted drop.
//! - A node enters the routing table only when authenticated, flagged `server`, and its
//!   address confirmed: it answered a request we sent to that address, or it answered the
//!   PING we send back to the source of its request.
//! - STORE: the record verified (CA-valid certificate, signature, expiry) and valid under the
//!   key, bounded per source and in total ([`RecordStore`]); a lower sequence is refused.
//! - Bounded: requests in flight ([`MAX_REQUESTS`]), lookups ([`MAX_LOOKUPS`]), published
//!   records ([`MAX_PUBLISHED`]), confirmations in flight, the lookup log.
//!
//! It never reads a clock, creates a random source or touches a socket.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand_core::RngCore;

use super::auth::{Auth, Sender, DEFAULT_PAIR_CAP};
use super::bindings::Bindings;
use super::certs::CertCache;
use super::key::Key;
use super::lookup::{Candidate, Lookup, LookupKind};
use super::messages::{
    encode, parse, Body, Kind, Message, StoreResult, WireContact, FLAG_NEED_CERT, FLAG_SERVER,
    MAX_CANDIDATES, TOKEN_LEN,
};
use super::record::NodeRecord;
use super::routing::{Contact, Observed, RoutingTable};
use super::store::{RecordStore, StoreLimits};
use crate::cert::{CaPublic, NodeCert};
use crate::clock::Now;
use crate::identity::Identity;

pub use super::lookup::LookupId;

/// Requests in flight at most (more are not sent; lookups wait for answers or timeouts).
pub const MAX_REQUESTS: usize = 4096;
/// Lookups at once.
pub const MAX_LOOKUPS: usize = 256;
/// Own records republished at most.
pub const MAX_PUBLISHED: usize = 4;
/// Address confirmations (PINGs to a new server's source) in flight at most.
pub const MAX_CONFIRMING: usize = 256;
/// Finished lookups kept for status.
pub const RECENT_LOOKUPS: usize = 32;
/// A node's address is confirmed at most once per this interval.
pub const CONFIRM_INTERVAL: Duration = Duration::from_secs(60);
/// A contact heard from within this long is good: a full bucket of good contacts admits no
/// newcomer (BEP 5's 15 minutes, our bucket refresh interval).
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// Nodes remembered as recently confirmed.
pub const MAX_CONFIRMED: usize = 4096;
/// Least time between a publish round and an early one (see `Dht::early_republish`).
pub const EARLY_REPUBLISH: Duration = Duration::from_secs(30);

/// Tunables.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// Bucket size and replication factor.
    pub k: usize,
    /// Requests in flight per lookup path.
    pub alpha: usize,
    /// Disjoint lookup paths (S/Kademlia).
    pub disjoint_paths: usize,
    /// A request unanswered this long has failed.
    pub request_timeout: Duration,
    /// Buckets not looked up this long are refreshed.
    pub refresh_interval: Duration,
    /// Own records are stored again this often (new closest nodes, churn).
    pub republish_interval: Duration,
    /// We offer to enter other nodes' routing tables.
    pub server: bool,
    /// Record store bounds.
    pub store_limits: StoreLimits,
    /// Simulation only: answer lookups with the farthest contacts and no record (a lying
    /// member, for the simulator's attack phase). Never set by the daemon.
    pub liar: bool,
}

impl Default for DhtConfig {
    fn default() -> Self {
        Self {
            k: 20,
            alpha: 3,
            disjoint_paths: 3,
            request_timeout: Duration::from_secs(2),
            refresh_interval: Duration::from_secs(15 * 60),
            republish_interval: Duration::from_secs(20 * 60),
            server: true,
            store_limits: StoreLimits::default(),
            liar: false,
        }
    }
}

/// What the DHT reports to its owner.
// Events are few (one per lookup or ping): no point boxing the record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum DhtEvent {
    /// A lookup started by [`Dht::find_node`], [`Dht::find_record`] or [`Dht::join`] ended.
    LookupDone {
        /// Its id.
        id: LookupId,
        /// What was looked up.
        key: Key,
        /// The valid record with the highest sequence seen (value lookups).
        record: Option<NodeRecord>,
        /// The closest nodes that answered.
        closest: Vec<(Key, SocketAddr)>,
        /// Hops of the path that ended it.
        hops: u32,
        /// Nodes queried.
        queried: u32,
        /// How long it took.
        elapsed: Duration,
    },
    /// A reply told us the address it saw our request come from (STUN-like).
    ObservedAddr {
        /// Our address as seen.
        addr: SocketAddr,
        /// Who said so.
        reporter: Key,
        /// The reporter's address (the one our request went to).
        from: SocketAddr,
    },
    /// A home we are bound to passes on that `from` wants to reach us (NAT traversal).
    Introduction {
        /// The home that passed it on (authenticated).
        home: Key,
        /// Who wants to reach us (as the home authenticated it).
        from: Key,
        /// Its punch token.
        token: [u8; TOKEN_LEN],
        /// Its candidate addresses, the one the home saw first.
        candidates: Vec<SocketAddr>,
    },
    /// The answer to [`Dht::introduce`].
    IntroduceResult {
        /// The node we asked to be introduced to.
        target: Key,
        /// The home we asked.
        home: Key,
        /// The home passed it on (false: the target is not bound there, or no answer).
        forwarded: bool,
    },
    /// The answer to [`Dht::ping`].
    PingResult {
        /// The node pinged.
        node: Key,
        /// Where.
        addr: SocketAddr,
        /// It answered.
        ok: bool,
        /// Round-trip time when it answered.
        rtt: Option<Duration>,
    },
}

/// One finished lookup, for status.
#[derive(Debug, Clone)]
pub struct LookupSummary {
    /// What was looked up.
    pub key: Key,
    /// A record was found.
    pub found: bool,
    /// Hops.
    pub hops: u32,
    /// Nodes queried.
    pub queried: u32,
    /// Duration.
    pub elapsed: Duration,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct DhtStats {
    /// Messages received.
    pub received: u64,
    /// Messages sent.
    pub sent: u64,
    /// Dropped: did not parse.
    pub malformed: u64,
    /// Dropped: failed authentication (not a member, bad tag, forged id, ...).
    pub unauthenticated: u64,
    /// Dropped: a reply we did not ask for (txid, source or sender mismatch).
    pub unexpected: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests not sent because too many were in flight.
    pub request_limit: u64,
    /// Records stored for others.
    pub stored: u64,
    /// STOREs refused (invalid, lower seq, over a bound).
    pub store_refused: u64,
    /// STOREs of a record held already (equal seq: republishes); not refusals.
    pub store_unchanged: u64,
    /// Records in VALUE replies that did not verify.
    pub bad_records: u64,
    /// Lookups finished.
    pub lookups: u64,
    /// INTRODUCEs passed on to a node bound here.
    pub introductions_forwarded: u64,
    /// INTRODUCEs refused: target not bound here, or the requester's budget spent.
    pub introductions_refused: u64,
    /// INTRODUCTIONs received from homes.
    pub introductions_received: u64,
    /// Messages sent, by type (index: type number - 1, see [`Kind`]).
    pub sent_by_kind: [u64; KIND_COUNT],
}

/// Number of message types.
pub const KIND_COUNT: usize = 14;

impl DhtStats {
    /// `(name, value)` pairs for status output.
    #[must_use]
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("received", self.received),
            ("sent", self.sent),
            ("dropped_malformed", self.malformed),
            ("dropped_unauthenticated", self.unauthenticated),
            ("dropped_unexpected", self.unexpected),
            ("timeouts", self.timeouts),
            ("request_limit", self.request_limit),
            ("stored", self.stored),
            ("store_refused", self.store_refused),
            ("store_unchanged", self.store_unchanged),
            ("bad_records", self.bad_records),
            ("lookups", self.lookups),
            ("introductions_forwarded", self.introductions_forwarded),
            ("introductions_refused", self.introductions_refused),
            ("introductions_received", self.introductions_received),
        ]
    }

    /// `(type name, messages sent)` for every message type.
    #[must_use]
    pub fn sent_named(&self) -> Vec<(&'static str, u64)> {
        KIND_NAMES
            .iter()
            .zip(self.sent_by_kind)
            .map(|(n, v)| (*n, v))
            .collect()
    }
}

const KIND_NAMES: [&str; KIND_COUNT] = [
    "hello",
    "hello_ack",
    "ping",
    "pong",
    "find_node",
    "nodes",
    "find_value",
    "value",
    "store",
    "stored",
    "introduce",
    "introduced",
    "introduction",
    "introduction_ack",
];

impl DhtStats {
    fn count_sent(&mut self, kind: Kind) {
        self.sent += 1;
        if let Some(c) = self
            .sent_by_kind
            .get_mut(usize::from(kind as u8).saturating_sub(1))
        {
            *c += 1;
        }
    }
}

/// What a lookup looks for, and over how many disjoint paths.
#[derive(Debug, Clone, Copy)]
struct Search {
    target: Key,
    kind: LookupKind,
    paths: usize,
}

/// Why a request was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A query of a lookup path.
    Lookup(LookupId, usize),
    /// The owner's liveness ping.
    UserPing,
    /// A full bucket checks its least-recently-seen contact.
    BucketCheck,
    /// A new server's source address, confirmed before it enters the table.
    Confirm,
    /// First contact by address (bootstrap).
    Hello,
    /// A STORE of one of our records.
    Store,
    /// Our INTRODUCE to a home, for the target.
    Introduce(Key),
    /// An INTRODUCTION we pass on as a home.
    Forward,
}

#[derive(Debug, Clone, Copy)]
struct Request {
    /// The node it is for (`None`: a HELLO to an address).
    to: Option<Key>,
    addr: SocketAddr,
    sent: Duration,
    purpose: Purpose,
}

/// Why a lookup runs.
#[derive(Debug, Clone)]
enum Goal {
    /// The owner's (reported as [`DhtEvent::LookupDone`]).
    Report,
    /// Publishing: STORE the record under the target at the closest nodes.
    Publish(Box<NodeRecord>),
    /// Bucket refresh (silent).
    Refresh,
}

/// The DHT of one node.
pub struct Dht<'a> {
    own: Key,
    cert: NodeCert,
    ca: CaPublic,
    config: DhtConfig,
    auth: Auth<'a>,
    certs: CertCache,
    table: RoutingTable,
    store: RecordStore,
    requests: BTreeMap<u64, Request>,
    /// When we last sent each node an address confirmation.
    confirmed: BTreeMap<Key, Duration>,
    lookups: BTreeMap<LookupId, (Lookup, Goal)>,
    next_lookup: u64,
    bootstrap: Vec<SocketAddr>,
    /// A join waits for the first HELLO_ACK (its lookup id).
    join_pending: Option<LookupId>,
    published: Vec<NodeRecord>,
    next_republish: Option<Duration>,
    /// Fewest nodes one key of the last publish round was stored at (None: none ended yet),
    /// and when that round started: a node that published into a nearly empty table (the
    /// first nodes of a network, bootstraps starting together) stores again as soon as it
    /// knows more nodes than its records reached, not a republish interval later.
    publish_reach: Option<usize>,
    last_publish: Duration,
    next_refresh: Duration,
    recent: VecDeque<LookupSummary>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<DhtEvent>,
    /// Nodes bound to us as their home (NAT traversal).
    bindings: Bindings,
    stats: DhtStats,
}

impl std::fmt::Debug for Dht<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("contacts", &self.table.len())
            .field("records", &self.store.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// `d` scaled by a uniform factor in [0.75, 1.25): periodic work of nodes that started
/// together (a fleet restarted at once, every node of a simulation) spreads out instead of
/// arriving as one burst each period; the mean period stays `d`.
fn jittered(d: Duration, rng: &mut dyn RngCore) -> Duration {
    let nanos = d.as_nanos();
    let r = u128::from(rng.next_u32());
    let scaled = nanos * 3 / 4 + (((nanos / 2) * r) >> 32);
    Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
}

impl<'a> Dht<'a> {
    /// The DHT of `identity` (certificate `cert`, network `ca`).
    #[must_use]
    pub fn new(identity: &'a Identity, cert: NodeCert, ca: CaPublic, config: DhtConfig) -> Self {
        let own = Key::for_node(&cert.node_id());
        Self {
            own,
            table: RoutingTable::new(own, config.k),
            store: RecordStore::new(config.store_limits),
            auth: Auth::new(identity, DEFAULT_PAIR_CAP),
            certs: CertCache::new(4096),
            cert,
            ca,
            requests: BTreeMap::new(),
            confirmed: BTreeMap::new(),
            lookups: BTreeMap::new(),
            next_lookup: 1,
            bootstrap: Vec::new(),
            join_pending: None,
            published: Vec::new(),
            next_republish: None,
            publish_reach: None,
            last_publish: Duration::ZERO,
            next_refresh: config.refresh_interval,
            recent: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            bindings: Bindings::default(),
            stats: DhtStats::default(),
            config,
        }
    }

    /// A node to join through, by address (contacted with HELLO by [`join`](Self::join)).
    pub fn add_bootstrap(&mut self, addr: SocketAddr) {
        if !self.bootstrap.contains(&addr) && self.bootstrap.len() < 16 {
            self.bootstrap.push(addr);
        }
    }

    /// Simulation only: see [`DhtConfig::liar`].
    pub fn set_liar(&mut self, on: bool) {
        self.config.liar = on;
    }

    /// Our node id.
    #[must_use]
    pub fn own_id(&self) -> Key {
        self.own
    }

    /// The routing table's contacts.
    pub fn routing_table(&self) -> impl Iterator<Item = &Contact> + '_ {
        self.table.iter()
    }

    /// Records stored for others.
    #[must_use]
    pub fn store(&self) -> &RecordStore {
        &self.store
    }

    /// The latest finished lookups, oldest first.
    pub fn recent_lookups(&self) -> impl Iterator<Item = &LookupSummary> {
        self.recent.iter()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> DhtStats {
        self.stats
    }

    /// The next datagram payload to send (the caller sends it with the control transport,
    /// kind `KIND_DHT`).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next (monotonic).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        let req = self
            .requests
            .values()
            .map(|r| r.sent + self.config.request_timeout)
            .min();
        [
            req,
            self.next_republish,
            self.early_republish(),
            Some(self.next_refresh),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Joins: HELLO to every bootstrap address; the lookup of our own id starts at the first
    /// answer (at once when the table already has contacts).
    pub fn join(&mut self, now: Now, rng: &mut dyn RngCore) {
        // Nodes started together (a fleet rebooted, a simulation) must not refresh together.
        self.next_refresh = now.mono + jittered(self.config.refresh_interval, rng);
        let id = self.new_lookup_id();
        if self.table.is_empty() {
            self.join_pending = Some(id);
            for addr in self.bootstrap.clone() {
                self.send_hello(addr, Purpose::Hello, now, rng);
            }
        } else {
            self.start_lookup(
                id,
                Search {
                    target: self.own,
                    kind: LookupKind::Node,
                    paths: self.config.disjoint_paths,
                },
                Goal::Report,
                now,
                rng,
            );
        }
    }

    /// Looks up the nodes closest to `target`.
    pub fn find_node(&mut self, target: Key, now: Now, rng: &mut dyn RngCore) -> LookupId {
        let id = self.new_lookup_id();
        self.start_lookup(
            id,
            Search {
                target,
                kind: LookupKind::Node,
                paths: self.config.disjoint_paths,
            },
            Goal::Report,
            now,
            rng,
        );
        id
    }

    /// Simulation and tests only (never called by the daemon): sends a STORE of arbitrary
    /// `record` bytes under `key` to node `to` at `addr`, tagged as this node — what a member
    /// with valid credentials and bad intent can send (the simulator's attack phase).
    /// `to_x25519` is the X25519 key of `to`'s (public) certificate, for when `to` is not in
    /// this node's table. Returns whether it was sent.
    #[allow(clippy::too_many_arguments)]
    pub fn send_store_raw(
        &mut self,
        to: Key,
        to_x25519: Option<[u8; 32]>,
        addr: SocketAddr,
        key: Key,
        record: Vec<u8>,
        now: Now,
        rng: &mut dyn RngCore,
    ) -> bool {
        let x25519 = self.table.get(&to).map(|c| c.x25519).or(to_x25519);
        self.send_request(
            to,
            addr,
            x25519,
            Body::Store { key, record },
            Purpose::Store,
            now,
            rng,
        )
    }

    /// Looks up the record under `key` (verified, valid under the key, highest sequence).
    pub fn find_record(&mut self, key: Key, now: Now, rng: &mut dyn RngCore) -> LookupId {
        self.find_record_over(key, self.config.disjoint_paths, now, rng)
    }

    /// [`find_record`](Self::find_record) over `paths` disjoint paths (1: plain Kademlia), e.g.
    /// to compare both under attack.
    pub fn find_record_over(
        &mut self,
        key: Key,
        paths: usize,
        now: Now,
        rng: &mut dyn RngCore,
    ) -> LookupId {
        let id = self.new_lookup_id();
        self.start_lookup(
            id,
            Search {
                target: key,
                kind: LookupKind::Value,
                paths,
            },
            Goal::Report,
            now,
            rng,
        );
        id
    }

    /// Publishes our `record` under each of its keys at the k closest nodes, and keeps it to
    /// store again every `republish_interval` (a newer record of the same node replaces it).
    pub fn publish(&mut self, record: NodeRecord, now: Now, rng: &mut dyn RngCore) {
        let node = record.node_id();
        self.published.retain(|r| r.node_id() != node);
        if self.published.len() >= MAX_PUBLISHED {
            self.published.remove(0);
        }
        self.published.push(record.clone());
        self.next_republish = Some(now.mono + jittered(self.config.republish_interval, rng));
        self.store_everywhere(&record, now, rng);
    }

    /// Pings `node` at `addr` (a [`DhtEvent::PingResult`] follows). A node whose certificate
    /// we have not seen gets a HELLO, which its certificate answers.
    pub fn ping(&mut self, node: Key, addr: SocketAddr, now: Now, rng: &mut dyn RngCore) {
        if self.auth.known_x25519(&node).is_some() {
            self.send_request(node, addr, None, Body::Ping, Purpose::UserPing, now, rng);
        } else {
            self.send_hello_to(Some(node), addr, Purpose::UserPing, now, rng);
        }
    }

    /// Asks `home` (at `addr`) to introduce us to `target`, which is bound there, with our
    /// punch `token` and `candidates`; a [`DhtEvent::IntroduceResult`] follows. False when
    /// it could not be sent (no key for the home yet: it must have answered us before).
    #[allow(clippy::too_many_arguments)]
    pub fn introduce(
        &mut self,
        home: Key,
        addr: SocketAddr,
        target: Key,
        token: [u8; TOKEN_LEN],
        mut candidates: Vec<SocketAddr>,
        now: Now,
        rng: &mut dyn RngCore,
    ) -> bool {
        let claimed = if self.auth.known_x25519(&home).is_some() {
            None
        } else {
            match self.table.get(&home) {
                Some(c) => Some(c.x25519),
                None => return false,
            }
        };
        candidates.truncate(MAX_CANDIDATES);
        self.send_request(
            home,
            addr,
            claimed,
            Body::Introduce {
                target,
                token,
                candidates,
            },
            Purpose::Introduce(target),
            now,
            rng,
        )
    }

    /// Nodes bound to us as their home now.
    #[must_use]
    pub fn bound_nodes(&self, now: Duration) -> usize {
        self.bindings.len(now)
    }

    /// One reassembled DHT message from `src`.
    pub fn handle_message(&mut self, src: SocketAddr, msg: &[u8], now: Now, rng: &mut dyn RngCore) {
        self.stats.received += 1;
        let Ok(parsed) = parse(msg) else {
            self.stats.malformed += 1;
            return;
        };
        let sender = match self
            .auth
            .open(&parsed, &mut self.certs, &self.ca, now.wall.as_secs())
        {
            Ok(s) => s,
            Err(_) => {
                self.stats.unauthenticated += 1;
                return;
            }
        };
        let m = parsed.msg;
        if m.body.kind().is_request() {
            self.on_request(sender, src, m, now, rng);
        } else {
            self.on_reply(sender, src, m, now, rng);
        }
    }

    /// Timeouts of requests, bucket refresh, republishing.
    pub fn handle_timeout(&mut self, now: Now, rng: &mut dyn RngCore) {
        let deadline = self.config.request_timeout;
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| now.mono.saturating_sub(r.sent) >= deadline)
            .map(|(t, _)| *t)
            .collect();
        for txid in expired {
            if let Some(r) = self.requests.remove(&txid) {
                self.stats.timeouts += 1;
                self.on_failure(r, now, rng);
            }
        }
        let early = self.early_republish().is_some_and(|t| now.mono >= t);
        if early || self.next_republish.is_some_and(|t| now.mono >= t) {
            self.next_republish = Some(now.mono + jittered(self.config.republish_interval, rng));
            for rec in self.published.clone() {
                if rec.expires > now.wall.as_secs() {
                    self.store_everywhere(&rec, now, rng);
                }
            }
        }
        if now.mono >= self.next_refresh {
            self.next_refresh = now.mono
                + jittered(
                    self.config.refresh_interval.max(Duration::from_secs(1)),
                    rng,
                );
            for bucket in self
                .table
                .take_stale(now.mono, self.config.refresh_interval)
            {
                let mut r = [0u8; 32];
                rng.fill_bytes(&mut r);
                let target = self.table.random_id_in(bucket, r);
                let id = self.new_lookup_id();
                self.start_lookup(
                    id,
                    Search {
                        target,
                        kind: LookupKind::Node,
                        paths: self.config.disjoint_paths,
                    },
                    Goal::Refresh,
                    now,
                    rng,
                );
            }
            self.store.expire(now.wall.as_secs());
        }
    }

    fn new_lookup_id(&mut self) -> LookupId {
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        id
    }

    /// When an under-replicated publish stores again: [`EARLY_REPUBLISH`] after the last round,
    /// if that round reached fewer than k nodes for some key and the table now holds more.
    fn early_republish(&self) -> Option<Duration> {
        let reach = self.publish_reach?;
        (reach < self.config.k && self.table.len() > reach)
            .then_some(self.last_publish + EARLY_REPUBLISH)
    }

    fn store_everywhere(&mut self, record: &NodeRecord, now: Now, rng: &mut dyn RngCore) {
        self.publish_reach = None;
        self.last_publish = now.mono;
        for key in record.keys() {
            let id = self.new_lookup_id();
            self.start_lookup(
                id,
                Search {
                    target: key,
                    kind: LookupKind::Node,
                    paths: self.config.disjoint_paths,
                },
                Goal::Publish(Box::new(record.clone())),
                now,
                rng,
            );
        }
    }

    fn start_lookup(
        &mut self,
        id: LookupId,
        search: Search,
        goal: Goal,
        now: Now,
        rng: &mut dyn RngCore,
    ) {
        let Search {
            target,
            kind,
            paths,
        } = search;
        self.table.touch_bucket(&target, now.mono);
        if self.lookups.len() >= MAX_LOOKUPS {
            // Ends at once, empty: the owner sees a failed lookup rather than a silent one.
            let l = Lookup::new(id, target, kind, self.own, Vec::new(), 1, 1, 1, now.mono);
            self.finish(l, goal, now, rng);
            return;
        }
        let initial: Vec<Candidate> = self
            .table
            .closest(&target, self.config.k)
            .into_iter()
            .map(|c| Candidate {
                id: c.id,
                addr: c.addr,
                x25519: c.x25519,
                hops: 1,
            })
            .collect();
        let mut l = Lookup::new(
            id,
            target,
            kind,
            self.own,
            initial,
            self.config.k,
            self.config.alpha,
            paths.max(1),
            now.mono,
        );
        // A record we hold ourselves is as good as one fetched (it was verified on store).
        if kind == LookupKind::Value {
            if let Some(rec) = self.store.get(&target, now.wall.as_secs()) {
                l.record = Some((rec.clone(), 0));
            }
        }
        self.lookups.insert(id, (l, goal));
        self.advance(id, now, rng);
    }

    /// Sends the lookup's next queries, or finishes it.
    fn advance(&mut self, id: LookupId, now: Now, rng: &mut dyn RngCore) {
        let Some((l, _)) = self.lookups.get_mut(&id) else {
            return;
        };
        let queries = l.next_queries();
        let (target, kind) = (l.target, l.kind);
        for (path, c) in queries {
            let body = match kind {
                LookupKind::Node => Body::FindNode { target },
                LookupKind::Value => Body::FindValue { key: target },
            };
            if !self.send_request(
                c.id,
                c.addr,
                Some(c.x25519),
                body,
                Purpose::Lookup(id, path),
                now,
                rng,
            ) {
                if let Some((l, _)) = self.lookups.get_mut(&id) {
                    l.on_failure(path, &c.id);
                }
            }
        }
        if self.lookups.get(&id).is_some_and(|(l, _)| l.is_done()) {
            if let Some((l, goal)) = self.lookups.remove(&id) {
                self.finish(l, goal, now, rng);
            }
        }
    }

    fn finish(&mut self, l: Lookup, goal: Goal, now: Now, rng: &mut dyn RngCore) {
        let (closest, hops) = l.result();
        let elapsed = now.mono.saturating_sub(l.started);
        match goal {
            Goal::Report => {
                self.stats.lookups += 1;
                if self.recent.len() >= RECENT_LOOKUPS {
                    self.recent.pop_front();
                }
                self.recent.push_back(LookupSummary {
                    key: l.target,
                    found: l.record.is_some(),
                    hops,
                    queried: l.queried,
                    elapsed,
                });
                self.events.push_back(DhtEvent::LookupDone {
                    id: l.id,
                    key: l.target,
                    record: l.record.map(|(r, _)| r),
                    closest,
                    hops,
                    queried: l.queried,
                    elapsed,
                });
            }
            Goal::Publish(rec) => {
                let reached = closest.len();
                self.publish_reach = Some(self.publish_reach.map_or(reached, |r| r.min(reached)));
                let bytes = rec.encode(true);
                for (node, addr) in closest {
                    self.send_request(
                        node,
                        addr,
                        None,
                        Body::Store {
                            key: l.target,
                            record: bytes.clone(),
                        },
                        Purpose::Store,
                        now,
                        rng,
                    );
                }
            }
            Goal::Refresh => {}
        }
    }

    fn flags(&self, to: Option<&Key>) -> u8 {
        let mut f = if self.config.server { FLAG_SERVER } else { 0 };
        if to.is_none_or(|k| self.auth.known_x25519(k).is_none()) {
            f |= FLAG_NEED_CERT;
        }
        f
    }

    /// Sends a tagged request; false when it could not be (no key, too many in flight).
    #[allow(clippy::too_many_arguments)]
    fn send_request(
        &mut self,
        to: Key,
        addr: SocketAddr,
        claimed_x25519: Option<[u8; 32]>,
        body: Body,
        purpose: Purpose,
        now: Now,
        rng: &mut dyn RngCore,
    ) -> bool {
        if self.requests.len() >= MAX_REQUESTS {
            self.stats.request_limit += 1;
            return false;
        }
        let txid = self.fresh_txid(rng);
        let kind = body.kind();
        let m = Message {
            flags: self.flags(Some(&to)),
            sender: self.own.0,
            txid,
            cert: self
                .auth
                .must_send_cert(&to)
                .then(|| self.cert.to_bytes().to_vec()),
            body,
        };
        let Some(bytes) = self
            .auth
            .seal(encode(&m), kind, &to, claimed_x25519.as_ref())
        else {
            return false;
        };
        self.requests.insert(
            txid,
            Request {
                to: Some(to),
                addr,
                sent: now.mono,
                purpose,
            },
        );
        self.stats.count_sent(kind);
        self.out.push_back((addr, bytes));
        true
    }

    fn send_hello(&mut self, addr: SocketAddr, purpose: Purpose, now: Now, rng: &mut dyn RngCore) {
        self.send_hello_to(None, addr, purpose, now, rng);
    }

    fn send_hello_to(
        &mut self,
        to: Option<Key>,
        addr: SocketAddr,
        purpose: Purpose,
        now: Now,
        rng: &mut dyn RngCore,
    ) {
        if self.requests.len() >= MAX_REQUESTS {
            self.stats.request_limit += 1;
            return;
        }
        let txid = self.fresh_txid(rng);
        let m = Message {
            flags: self.flags(None),
            sender: self.own.0,
            txid,
            cert: Some(self.cert.to_bytes().to_vec()),
            body: Body::Hello,
        };
        let Some(bytes) = self.auth.seal(encode(&m), Kind::Hello, &self.own, None) else {
            return;
        };
        self.requests.insert(
            txid,
            Request {
                to,
                addr,
                sent: now.mono,
                purpose,
            },
        );
        self.stats.count_sent(Kind::Hello);
        self.out.push_back((addr, bytes));
    }

    fn fresh_txid(&self, rng: &mut dyn RngCore) -> u64 {
        // Bounded: a collision among ≤ 4096 in flight is ~2^-52 per draw.
        for _ in 0..8 {
            let t = rng.next_u64();
            if t != 0 && !self.requests.contains_key(&t) {
                return t;
            }
        }
        rng.next_u64() | 1
    }

    /// Sends a reply (tagged under the pair key the request just proved, carrying our
    /// certificate when the requester lacks it).
    fn reply(&mut self, to: &Sender, addr: SocketAddr, txid: u64, body: Body) {
        let kind = body.kind();
        let m = Message {
            flags: self.flags(Some(&to.id)),
            sender: self.own.0,
            txid,
            cert: (to.need_cert || self.auth.must_send_cert(&to.id))
                .then(|| self.cert.to_bytes().to_vec()),
            body,
        };
        if let Some(bytes) = self.auth.seal(encode(&m), kind, &to.id, Some(&to.x25519)) {
            self.stats.count_sent(kind);
            self.out.push_back((addr, bytes));
        }
    }

    fn contacts_for(&self, target: &Key, exclude: &Key) -> Vec<WireContact> {
        let mut all = self.table.closest(target, usize::MAX);
        if self.config.liar {
            all.reverse();
        }
        all.into_iter()
            .filter(|c| c.id != *exclude)
            .take(self.config.k)
            .map(|c| WireContact {
                id: c.id,
                x25519: c.x25519,
                addr: c.addr,
            })
            .collect()
    }

    fn on_request(
        &mut self,
        s: Sender,
        src: SocketAddr,
        m: Message,
        now: Now,
        rng: &mut dyn RngCore,
    ) {
        let is_ping = matches!(m.body, Body::Ping | Body::Hello);
        if s.proven {
            // Any authenticated request keeps the sender's binding (and its NAT's mapping
            // towards us) fresh; HELLO does not count, its key is not proven yet.
            self.bindings.touch(s.id, src, now.mono);
        }
        let body = match m.body {
            Body::Hello => Body::HelloAck { observed: src },
            Body::Ping => Body::Pong { observed: src },
            Body::FindNode { target } => Body::Nodes {
                observed: src,
                nodes: self.contacts_for(&target, &s.id),
            },
            Body::FindValue { key } => Body::Value {
                observed: src,
                record: self
                    .store
                    .get(&key, now.wall.as_secs())
                    .filter(|_| !self.config.liar)
                    .map(|r| r.encode(true)),
                nodes: self.contacts_for(&key, &s.id),
            },
            Body::Store { key, record } => {
                let result = self.on_store(&s, key, &record, now);
                Body::Stored {
                    observed: src,
                    result,
                }
            }
            Body::Introduce {
                target,
                token,
                candidates,
            } => Body::Introduced {
                observed: src,
                forwarded: self.forward_introduction(&s, src, target, token, candidates, now, rng),
            },
            Body::Introduction {
                from,
                token,
                candidates,
            } if s.proven => {
                self.stats.introductions_received += 1;
                self.events.push_back(DhtEvent::Introduction {
                    home: s.id,
                    from,
                    token,
                    candidates,
                });
                Body::IntroductionAck { observed: src }
            }
            _ => return,
        };
        self.reply(&s, src, m.txid, body);
        // A proven server enters our table once its address answers a PING of ours. Not for
        // a PING (it may be the other side's own confirmation: two nodes whose buckets are
        // full would confirm each other forever), and once per node per CONFIRM_INTERVAL.
        let recently = self
            .confirmed
            .get(&s.id)
            .is_some_and(|t| now.mono.saturating_sub(*t) < CONFIRM_INTERVAL);
        // Nor when its bucket is full of contacts heard from lately: it could not enter, and
        // pinging it (and the bucket's oldest) would be traffic for nothing (BEP 5).
        let room = self.table.could_admit(&s.id, now.mono, GOOD_FOR);
        if s.proven && s.server && !is_ping && !recently && room {
            match self.table.get(&s.id) {
                Some(c) if c.addr == src => {
                    self.admit(&s, src, now, rng);
                }
                _ => {
                    let confirming = self
                        .requests
                        .values()
                        .filter(|r| r.purpose == Purpose::Confirm)
                        .count();
                    let already = self
                        .requests
                        .values()
                        .any(|r| r.purpose == Purpose::Confirm && r.to == Some(s.id));
                    if confirming < MAX_CONFIRMING && !already {
                        if self.confirmed.len() >= MAX_CONFIRMED {
                            let cutoff = now.mono.saturating_sub(CONFIRM_INTERVAL);
                            self.confirmed.retain(|_, t| *t >= cutoff);
                        }
                        if self.confirmed.len() < MAX_CONFIRMED {
                            self.confirmed.insert(s.id, now.mono);
                        }
                        self.send_request(s.id, src, None, Body::Ping, Purpose::Confirm, now, rng);
                    }
                }
            }
        }
    }

    /// A home's side of INTRODUCE: pass it on to `target` if it is bound here, the requester
    /// proved its key and has budget left. The target learns the requester's node id as we
    /// authenticated it and, first among the candidates, the address we saw it at.
    #[allow(clippy::too_many_arguments)]
    fn forward_introduction(
        &mut self,
        s: &Sender,
        src: SocketAddr,
        target: Key,
        token: [u8; TOKEN_LEN],
        candidates: Vec<SocketAddr>,
        now: Now,
        rng: &mut dyn RngCore,
    ) -> bool {
        let bound = self.bindings.get(&target, now.mono);
        let ok = s.proven
            && target != s.id
            && target != self.own
            && self.auth.known_x25519(&target).is_some()
            && bound.is_some()
            && self.bindings.charge(s.id, now.mono);
        let Some(addr) = bound.filter(|_| ok) else {
            self.stats.introductions_refused += 1;
            return false;
        };
        let mut list = vec![src];
        list.extend(candidates.into_iter().filter(|a| *a != src));
        list.truncate(MAX_CANDIDATES);
        let sent = self.send_request(
            target,
            addr,
            None,
            Body::Introduction {
                from: s.id,
                token,
                candidates: list,
            },
            Purpose::Forward,
            now,
            rng,
        );
        if sent {
            self.stats.introductions_forwarded += 1;
        } else {
            self.stats.introductions_refused += 1;
        }
        sent
    }

    fn on_store(&mut self, s: &Sender, key: Key, bytes: &[u8], now: Now) -> StoreResult {
        if !s.proven {
            self.stats.store_refused += 1;
            return StoreResult::Invalid;
        }
        let certs = &self.certs;
        let rec = match NodeRecord::decode(bytes, &|h| certs.get(h).cloned()) {
            Ok(r) => r,
            Err(_) => {
                self.stats.store_refused += 1;
                return StoreResult::Invalid;
            }
        };
        if rec
            .verify(&self.ca, &mut self.certs, now.wall.as_secs())
            .is_err()
            || !rec.valid_under(&key)
        {
            self.stats.store_refused += 1;
            return StoreResult::Invalid;
        }
        match self.store.put(key, rec, s.id, now.wall.as_secs()) {
            Ok(super::store::Stored::Unchanged) => {
                self.stats.store_unchanged += 1;
                StoreResult::Ok
            }
            Ok(_) => {
                self.stats.stored += 1;
                StoreResult::Ok
            }
            Err(super::store::StoreRefusal::SourceFull | super::store::StoreRefusal::Full) => {
                self.stats.store_refused += 1;
                StoreResult::Full
            }
            Err(_) => {
                self.stats.store_refused += 1;
                StoreResult::Stale
            }
        }
    }

    /// Puts a confirmed, proven server into the table (pinging a full bucket's oldest).
    fn admit(&mut self, s: &Sender, addr: SocketAddr, now: Now, rng: &mut dyn RngCore) {
        if !s.server || !s.proven {
            return;
        }
        let c = Contact {
            id: s.id,
            addr,
            x25519: s.x25519,
            last_seen: now.mono,
            failures: 0,
        };
        if let Observed::PingOldest(old) = self.table.observe(c) {
            self.send_request(
                old.id,
                old.addr,
                None,
                Body::Ping,
                Purpose::BucketCheck,
                now,
                rng,
            );
        }
    }

    fn on_reply(
        &mut self,
        s: Sender,
        src: SocketAddr,
        m: Message,
        now: Now,
        rng: &mut dyn RngCore,
    ) {
        let Some(req) = self.requests.get(&m.txid).copied() else {
            self.stats.unexpected += 1;
            return;
        };
        let kind_ok = matches!(
            (req.purpose, &m.body),
            (Purpose::Hello, Body::HelloAck { .. })
                | (Purpose::UserPing, Body::HelloAck { .. } | Body::Pong { .. })
                | (Purpose::BucketCheck | Purpose::Confirm, Body::Pong { .. })
                | (Purpose::Lookup(..), Body::Nodes { .. } | Body::Value { .. })
                | (Purpose::Store, Body::Stored { .. })
                | (Purpose::Introduce(_), Body::Introduced { .. })
                | (Purpose::Forward, Body::IntroductionAck { .. })
        );
        if req.addr != src || req.to.is_some_and(|t| t != s.id) || !s.proven || !kind_ok {
            self.stats.unexpected += 1;
            return;
        }
        self.requests.remove(&m.txid);
        // It answered at the address we sent to: confirmed.
        self.admit(&s, src, now, rng);
        let observed = match &m.body {
            Body::HelloAck { observed }
            | Body::Pong { observed }
            | Body::Nodes { observed, .. }
            | Body::Value { observed, .. }
            | Body::Stored { observed, .. }
            | Body::Introduced { observed, .. }
            | Body::IntroductionAck { observed } => Some(*observed),
            _ => None,
        };
        if let Some(addr) = observed {
            self.events.push_back(DhtEvent::ObservedAddr {
                addr,
                reporter: s.id,
                from: src,
            });
        }
        match (req.purpose, m.body) {
            (Purpose::Hello, _) => {
                if let Some(id) = self.join_pending.take() {
                    self.start_lookup(
                        id,
                        Search {
                            target: self.own,
                            kind: LookupKind::Node,
                            paths: self.config.disjoint_paths,
                        },
                        Goal::Report,
                        now,
                        rng,
                    );
                }
            }
            (Purpose::UserPing, _) => self.events.push_back(DhtEvent::PingResult {
                node: s.id,
                addr: src,
                ok: true,
                rtt: Some(now.mono.saturating_sub(req.sent)),
            }),
            (Purpose::BucketCheck, _) => self.table.ping_result(&s.id, true, now.mono),
            (Purpose::Lookup(id, path), Body::Nodes { nodes, .. }) => {
                self.lookup_reply(id, path, &s.id, &nodes, None, now, rng);
            }
            (Purpose::Lookup(id, path), Body::Value { record, nodes, .. }) => {
                self.lookup_reply(id, path, &s.id, &nodes, record, now, rng);
            }
            (Purpose::Introduce(target), Body::Introduced { forwarded, .. }) => {
                self.events.push_back(DhtEvent::IntroduceResult {
                    target,
                    home: s.id,
                    forwarded,
                });
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn lookup_reply(
        &mut self,
        id: LookupId,
        path: usize,
        from: &Key,
        nodes: &[WireContact],
        record: Option<Vec<u8>>,
        now: Now,
        rng: &mut dyn RngCore,
    ) {
        let verified = record.and_then(|bytes| {
            let certs = &self.certs;
            let rec = NodeRecord::decode(&bytes, &|h| certs.get(h).cloned()).ok()?;
            let target = self.lookups.get(&id).map(|(l, _)| l.target)?;
            let ok = rec
                .verify(&self.ca, &mut self.certs, now.wall.as_secs())
                .is_ok()
                && rec.valid_under(&target);
            if !ok {
                self.stats.bad_records += 1;
            }
            ok.then_some(rec)
        });
        let Some((l, _)) = self.lookups.get_mut(&id) else {
            return;
        };
        if !l.expects(path, from) {
            return;
        }
        match verified {
            Some(rec) => l.found(path, from, rec),
            None => {
                let cands: Vec<Candidate> = nodes
                    .iter()
                    .map(|c| Candidate {
                        id: c.id,
                        addr: c.addr,
                        x25519: c.x25519,
                        hops: 0,
                    })
                    .collect();
                l.on_reply(path, from, &cands);
            }
        }
        self.advance(id, now, rng);
    }

    fn on_failure(&mut self, r: Request, now: Now, rng: &mut dyn RngCore) {
        if let Some(to) = r.to {
            self.auth.peer_may_lack_cert(&to);
        }
        match r.purpose {
            Purpose::Lookup(id, path) => {
                if let Some(to) = r.to {
                    self.table.failed(&to);
                    if let Some((l, _)) = self.lookups.get_mut(&id) {
                        l.on_failure(path, &to);
                    }
                }
                self.advance(id, now, rng);
            }
            Purpose::UserPing => {
                if let Some(to) = r.to {
                    self.events.push_back(DhtEvent::PingResult {
                        node: to,
                        addr: r.addr,
                        ok: false,
                        rtt: None,
                    });
                }
            }
            Purpose::BucketCheck => {
                if let Some(to) = r.to {
                    self.table.ping_result(&to, false, now.mono);
                }
            }
            Purpose::Hello => {
                // Every bootstrap silent: try the join again at the next HELLO round.
                let waiting = self.requests.values().any(|q| q.purpose == Purpose::Hello);
                if !waiting {
                    if let Some(id) = self.join_pending.take() {
                        // Report the failed join so the owner can retry later.
                        let l = Lookup::new(
                            id,
                            self.own,
                            LookupKind::Node,
                            self.own,
                            Vec::new(),
                            1,
                            1,
                            1,
                            now.mono,
                        );
                        self.finish(l, Goal::Report, now, rng);
                    }
                }
            }
            Purpose::Introduce(target) => {
                if let Some(home) = r.to {
                    self.events.push_back(DhtEvent::IntroduceResult {
                        target,
                        home,
                        forwarded: false,
                    });
                }
            }
            Purpose::Confirm | Purpose::Store | Purpose::Forward => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::request;
    use crate::cert::Ca;
    use crate::rand::{SeedableRng, SeededRng};

    const WALL: u64 = 1_800_000_000;

    #[test]
    fn periodic_work_is_spread_not_synchronized() {
        // The simulator found it: 1,000 nodes started together all refreshed at t = 15 min,
        // 267 MB of datagrams in flight at once. Jittered periods stay within ±25 % of the
        // documented one, average to it, and differ between nodes.
        let mut rng = SeededRng::seed_from_u64(3);
        let d = Duration::from_secs(900);
        let v: Vec<Duration> = (0..2000).map(|_| jittered(d, &mut rng)).collect();
        assert!(v.iter().all(|x| *x >= d * 3 / 4 && *x < d * 5 / 4));
        let mean = v.iter().sum::<Duration>() / 2000;
        assert!(mean > d * 97 / 100 && mean < d * 103 / 100, "{mean:?}");
        let distinct: std::collections::BTreeSet<_> = v.iter().map(Duration::as_secs).collect();
        assert!(distinct.len() > 400, "{} distinct seconds", distinct.len());
    }

    fn now(ms: u64) -> Now {
        Now {
            mono: Duration::from_millis(ms),
            wall: Duration::from_secs(WALL) + Duration::from_millis(ms),
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i], 51820))
    }

    struct Net {
        ca: Ca,
        ids: Vec<Identity>,
        certs: Vec<NodeCert>,
    }

    fn net(n: usize) -> Net {
        let ca = Ca::generate("net").unwrap();
        let ids: Vec<Identity> = (0..n).map(|_| Identity::generate().unwrap()).collect();
        let certs = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                ca.sign(request(id, &format!("n{i}"), WALL - 10, WALL + 86_400))
                    .unwrap()
            })
            .collect();
        Net { ca, ids, certs }
    }

    /// Delivers everything queued among `dhts` (instantly), bounded.
    fn pump(dhts: &mut [Dht<'_>], t: Now, rng: &mut SeededRng) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..dhts.len() {
                while let Some((dst, msg)) = dhts[i].poll_transmit() {
                    moved = true;
                    let Some(j) = (0..dhts.len()).find(|&j| addr(j as u8 + 1) == dst) else {
                        continue;
                    };
                    dhts[j].handle_message(addr(i as u8 + 1), &msg, t, rng);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn dht<'a>(n: &'a Net, i: usize, server: bool) -> Dht<'a> {
        let config = DhtConfig {
            server,
            ..DhtConfig::default()
        };
        Dht::new(&n.ids[i], n.certs[i].clone(), n.ca.public().clone(), config)
    }

    #[test]
    fn an_outsider_changes_nothing() {
        let n = net(1);
        let other = Ca::generate("other").unwrap();
        let m = Identity::generate().unwrap();
        let m_cert = other
            .sign(request(&m, "m", WALL - 10, WALL + 3600))
            .unwrap();
        let mut rng = SeededRng::seed_from_u64(1);
        let mut victim = dht(&n, 0, true);
        // The outsider runs a real DHT of its own CA and HELLOs, FIND_NODEs and STOREs.
        let mut outsider = Dht::new(
            &m,
            m_cert.clone(),
            other.public().clone(),
            DhtConfig::default(),
        );
        outsider.add_bootstrap(addr(1));
        outsider.join(now(0), &mut rng);
        let rec = NodeRecord::sign(&m, &m_cert, vec![addr(9)], vec![], 1, WALL + 600).unwrap();
        outsider.publish(rec, now(0), &mut rng);
        let mut sent = 0;
        while let Some((dst, msg)) = outsider.poll_transmit() {
            assert_eq!(dst, addr(1));
            victim.handle_message(addr(9), &msg, now(1), &mut rng);
            // Garbage and truncations too.
            victim.handle_message(addr(9), &msg[..msg.len() / 2], now(1), &mut rng);
            sent += 1;
        }
        assert!(sent > 0);
        assert!(victim.poll_transmit().is_none(), "answered an outsider");
        assert_eq!(victim.routing_table().count(), 0);
        assert!(victim.store().is_empty());
        assert!(victim.requests.is_empty());
        let st = victim.stats();
        assert_eq!(st.unauthenticated + st.malformed, 2 * sent);
    }

    #[test]
    fn replies_we_did_not_ask_for_are_dropped() {
        let n = net(2);
        let mut rng = SeededRng::seed_from_u64(2);
        let mut dhts = vec![dht(&n, 0, true), dht(&n, 1, true)];
        dhts[1].add_bootstrap(addr(1));
        dhts[1].join(now(0), &mut rng);
        pump(&mut dhts, now(1), &mut rng);
        assert_eq!(dhts[1].routing_table().count(), 1);
        // Node 0 pings node 1, and we replay node 1's PONG to node 0 a second time, and from
        // another address: both are unexpected.
        while dhts[0].poll_event().is_some() {}
        let one = dhts[1].own_id();
        dhts[0].ping(one, addr(2), now(2), &mut rng);
        let (dst, ping) = dhts[0].poll_transmit().unwrap();
        assert_eq!(dst, addr(2));
        dhts[1].handle_message(addr(1), &ping, now(3), &mut rng);
        let (_, pong) = dhts[1].poll_transmit().unwrap();
        dhts[0].handle_message(addr(7), &pong, now(4), &mut rng);
        assert_eq!(dhts[0].stats().unexpected, 1, "from another address");
        dhts[0].handle_message(addr(2), &pong, now(4), &mut rng);
        assert!(matches!(
            dhts[0].poll_event(),
            Some(DhtEvent::ObservedAddr { .. })
        ));
        assert!(matches!(
            dhts[0].poll_event(),
            Some(DhtEvent::PingResult { ok: true, .. })
        ));
        dhts[0].handle_message(addr(2), &pong, now(5), &mut rng);
        assert_eq!(dhts[0].stats().unexpected, 2, "the replay");
        assert!(dhts[0].poll_event().is_none());
    }

    #[test]
    fn clients_stay_out_of_routing_tables_and_servers_get_in() {
        let n = net(3);
        let mut rng = SeededRng::seed_from_u64(3);
        let mut dhts = vec![dht(&n, 0, true), dht(&n, 1, false), dht(&n, 2, true)];
        for i in [1, 2] {
            dhts[i].add_bootstrap(addr(1));
            dhts[i].join(now(0), &mut rng);
        }
        pump(&mut dhts, now(1), &mut rng);
        let ids: Vec<Key> = dhts[0].routing_table().map(|c| c.id).collect();
        assert!(!ids.contains(&dhts[1].own_id()), "a client entered a table");
        assert!(
            ids.contains(&dhts[2].own_id()),
            "a confirmed server is missing"
        );
        // The client still uses the DHT: it knows the servers.
        assert!(dhts[1].routing_table().count() >= 1);
    }

    #[test]
    fn forged_and_older_records_are_refused_and_the_newest_found() {
        let n = net(6);
        let mut rng = SeededRng::seed_from_u64(4);
        let mut dhts: Vec<Dht<'_>> = (0..6).map(|i| dht(&n, i, true)).collect();
        for i in 1..6 {
            dhts[i].add_bootstrap(addr(1));
            dhts[i].join(now(0), &mut rng);
            pump(&mut dhts, now(1), &mut rng);
        }
        let rec = |seq, ep: u8| {
            NodeRecord::sign(
                &n.ids[3],
                &n.certs[3],
                vec![addr(ep)],
                vec![],
                seq,
                WALL + 600,
            )
            .unwrap()
        };
        dhts[3].publish(rec(10, 4), now(2), &mut rng);
        pump(&mut dhts, now(3), &mut rng);
        let key = Key::for_node(&n.certs[3].node_id());
        let held = |dhts: &[Dht<'_>]| -> Vec<Option<u64>> {
            dhts.iter()
                .map(|d| d.store().get(&key, WALL).map(|r| r.seq))
                .collect()
        };
        let before = held(&dhts);
        assert!(before.contains(&Some(10)), "{before:?}");
        // Node 5 (a member) pushes node 3's older record and a forged one (node 3's cert,
        // signed by node 5's key) to everyone.
        let older = rec(5, 66);
        let forged = {
            let mut r = NodeRecord::sign(
                &n.ids[5],
                &n.certs[5],
                vec![addr(66)],
                vec![],
                99,
                WALL + 600,
            )
            .unwrap();
            r.cert = n.certs[3].clone();
            r
        };
        for bad in [older, forged] {
            for j in 0..5 {
                let to = dhts[j].own_id();
                let x = n.certs[j].body.public.x25519;
                dhts[5].send_request(
                    to,
                    addr(j as u8 + 1),
                    Some(x),
                    Body::Store {
                        key,
                        record: bad.encode(true),
                    },
                    Purpose::Store,
                    now(4),
                    &mut rng,
                );
            }
            pump(&mut dhts, now(5), &mut rng);
        }
        // The forged record is stored nowhere; the older one replaced nothing newer (a node
        // that held none may keep it: it cannot know of a newer one).
        let after = held(&dhts);
        for (b, a) in before.iter().zip(&after) {
            assert_ne!(*a, Some(99), "the forged record was stored");
            if *b == Some(10) {
                assert_eq!(*a, Some(10), "an older record replaced a newer one");
            }
        }
        let id = dhts[1].find_record(Key::for_name("n3"), now(6), &mut rng);
        pump(&mut dhts, now(7), &mut rng);
        let found = std::iter::from_fn(|| dhts[1].poll_event()).find_map(|e| match e {
            DhtEvent::LookupDone { id: i, record, .. } if i == id => Some(record),
            _ => None,
        });
        let found = found.expect("lookup finished").expect("record found");
        assert_eq!((found.seq, found.endpoints.clone()), (10, vec![addr(4)]));
    }

    #[test]
    fn a_record_published_into_an_empty_table_is_stored_once_there_are_nodes() {
        let n = net(2);
        let mut rng = SeededRng::seed_from_u64(5);
        let mut dhts: Vec<Dht<'_>> = (0..2).map(|i| dht(&n, i, true)).collect();
        // Node 0 starts alone (the network's first node) and publishes: its record reaches
        // nobody.
        let rec =
            NodeRecord::sign(&n.ids[0], &n.certs[0], vec![addr(1)], vec![], 1, WALL + 600).unwrap();
        dhts[0].publish(rec, now(0), &mut rng);
        pump(&mut dhts, now(0), &mut rng);
        // Node 1 joins through it.
        dhts[1].add_bootstrap(addr(1));
        dhts[1].join(now(1000), &mut rng);
        pump(&mut dhts, now(1000), &mut rng);
        assert_eq!(dhts[0].routing_table().count(), 1);
        let key = Key::for_node(&n.certs[0].node_id());
        assert!(dhts[1].store().get(&key, WALL).is_none());
        // Not a republish interval later: within EARLY_REPUBLISH of the first round.
        let t = now(u64::try_from(EARLY_REPUBLISH.as_millis()).unwrap() + 1);
        assert!(dhts[0].poll_timeout().is_some_and(|d| d <= t.mono));
        dhts[0].handle_timeout(t, &mut rng);
        pump(&mut dhts, t, &mut rng);
        assert_eq!(dhts[1].store().get(&key, WALL).map(|r| r.seq), Some(1));
        // Every key reached the one other node: no further early round.
        let later = now(2 * u64::try_from(EARLY_REPUBLISH.as_millis()).unwrap() + 2);
        assert!(dhts[0].poll_timeout().is_some_and(|d| d > later.mono));
    }
}
