//! Whole nodes in the simulator: the daemon's sans-IO [`Node`] (handshake driver, DHT,
//! discovery policy and peer liveness, the code `shadowmesh-control` runs) on every simulated
//! node, with a minimal model of its dataplane. The mesh scenario joins N nodes through a few
//! bootstraps, then opens sessions between random pairs the two ways an operator can — a packet
//! to an overlay address nobody routes, and `connect NAME` — and measures how many became
//! usable and how fast; then it kills some peers and checks that they are shown unreachable and
//! come back by themselves.
//!
//! The dataplane model does what the real one does at the interface (IPC `DownMsg` in, `UpMsg`
//! out) and nothing more: it keeps sessions by receiver index, routes and endpoints by peer,
//! holds packets to unrouted destinations (64, 3 s: the real hold queue's bounds) and raises
//! `NoSession`, sends a keepalive when a `Current` session is installed, and reports key
//! confirmation when a `Next` session's first authenticated message arrives. Its data messages
//! are `[4, kind, receiver index, sender index, tag]`, the tag a MAC under the session's send
//! key, checked with the receiver's receive key: a session whose two halves disagree, or whose
//! peer is not the node that sent, is counted, never delivered. Sender indices are for the
//! figures only (they tell the scenario which pair a delivery belongs to).
//!
//! Owns the per-node model and the scenario's phases; never reads a clock.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use zeroize::Zeroizing;

use super::ids::{node_name, overlay_v4, IdsError, SimNetwork};
use super::scenario::pct;
use super::{node_addr, NetConfig, NetStats, Sim, SimConfig, SimNode, SimStats, WALL_EPOCH};
use crate::clock::Now;
use crate::digest::{ct_eq, mac16};
use crate::handshake::driver::Settings;
use crate::node::{ConnectFailure, Node, NodeConfig, NodeEvent};
use crate::peers::prefixes_overlap;
use crate::rand::SeededRng;
use shadowmesh_ipc::{DownMsg, Slot, UpMsg};

/// First byte of the model's data messages (the data message type of the real wire format).
pub const SIM_DATA: u8 = 4;
/// Packets held per node while their destination is looked up (the real hold queue's bound).
pub const HOLD_PACKETS: usize = 64;
/// How long a held packet waits before it is dropped (the real hold queue's bound).
pub const HOLD_FOR: Duration = Duration::from_secs(3);

const DATA_LEN: usize = 26;
const KIND_KEEPALIVE: u8 = 0;
const KIND_PACKET: u8 = 1;

struct DpSession {
    peer: u32,
    remote_index: u32,
    send_key: Zeroizing<[u8; 32]>,
    recv_key: Zeroizing<[u8; 32]>,
    pending: bool,
}

#[derive(Default)]
struct DpPeer {
    endpoint: Option<SocketAddr>,
    routes: Vec<(IpAddr, u8)>,
    current: Option<u32>,
    keepalive_due: bool,
}

/// One authenticated data message the model delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The sender's simulation index.
    pub from: usize,
    /// A held packet (true) or a keepalive (false).
    pub packet: bool,
    /// Virtual time of arrival.
    pub at: Duration,
}

/// Counters of one node's dataplane model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DpStats {
    /// Data messages sent (keepalives and packets).
    pub data_sent: u64,
    /// Data messages that authenticated and were delivered.
    pub data_delivered: u64,
    /// Data messages refused: malformed, unknown receiver index or bad tag.
    pub data_refused: u64,
    /// Data messages that authenticated on a session whose peer is not the node that sent
    /// (keys bound to the wrong identity: must stay 0).
    pub misbound: u64,
    /// Packets held for a destination without a session.
    pub held: u64,
    /// Held packets dropped (the queue was full or the wait ran out).
    pub held_dropped: u64,
    /// Key confirmations reported to the control plane.
    pub confirmed: u64,
}

/// One simulated node: the control plane's [`Node`] and a model of its dataplane.
pub struct MeshNode<'a> {
    node: Node<'a>,
    sessions: BTreeMap<u32, DpSession>,
    peers: BTreeMap<u32, DpPeer>,
    held: VecDeque<(IpAddr, Duration)>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    delivered: Vec<Delivery>,
    connects: BTreeMap<u64, Result<String, ConnectFailure>>,
    index: usize,
    last: Now,
    stats: DpStats,
}

impl<'a> MeshNode<'a> {
    /// Node `i` of `net`, joining through `bootstrap`, with its own generator from `seed`.
    ///
    /// # Errors
    /// The node could not be built (as [`Node::new`]).
    pub fn new(
        net: &'a SimNetwork,
        i: usize,
        bootstrap: Vec<SocketAddr>,
        seed: u64,
    ) -> Result<Self, crate::daemon::DaemonError> {
        let id = &net.nodes[i];
        let now = Now {
            mono: Duration::ZERO,
            wall: WALL_EPOCH,
        };
        let config = NodeConfig {
            bootstrap,
            local: vec![node_addr(i)],
            server: true,
            ..NodeConfig::default()
        };
        let rng = SeededRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let node = Node::new(
            &id.identity,
            id.cert.clone(),
            net.ca_public.clone(),
            Vec::new(),
            Settings::default(),
            config,
            now,
            Box::new(rng),
        )?;
        Ok(Self {
            node,
            sessions: BTreeMap::new(),
            peers: BTreeMap::new(),
            held: VecDeque::new(),
            out: VecDeque::new(),
            delivered: Vec::new(),
            connects: BTreeMap::new(),
            index: i,
            last: now,
            stats: DpStats::default(),
        })
    }

    /// The control plane.
    #[must_use]
    pub fn node(&self) -> &Node<'a> {
        &self.node
    }

    /// The dataplane model's counters.
    #[must_use]
    pub fn stats(&self) -> DpStats {
        self.stats
    }

    /// Authenticated data messages delivered so far, in arrival order.
    #[must_use]
    pub fn delivered(&self) -> &[Delivery] {
        &self.delivered
    }

    /// How `connect` with this ticket ended, if it did.
    #[must_use]
    pub fn connect_result(&self, ticket: u64) -> Option<&Result<String, ConnectFailure>> {
        self.connects.get(&ticket)
    }

    /// The dataplane came up: the node joins and publishes.
    pub fn start(&mut self, now: Now) {
        self.last = now;
        let out = self.node.on_connected(now);
        self.apply(out);
    }

    /// The operator runs `shadowmesh connect query`; the ticket of a lookup, if one started.
    pub fn connect(&mut self, query: &str, now: Now) -> Option<u64> {
        self.last = now;
        match self.node.connect(query, now) {
            Ok((start, out)) => {
                self.apply(out);
                match start {
                    crate::node::ConnectStart::LookingUp(t) => Some(t),
                    crate::node::ConnectStart::Known => None,
                }
            }
            Err(_) => None,
        }
    }

    /// A local program sends a packet to overlay address `dst` (the TUN side).
    pub fn send_packet(&mut self, dst: IpAddr, now: Now) {
        self.last = now;
        let route = self.route(dst);
        if let Some((peer, true)) = route {
            self.send_data(peer, KIND_PACKET);
            return;
        }
        if self.held.len() >= HOLD_PACKETS {
            self.stats.held_dropped += 1;
            return;
        }
        self.held.push_back((dst, now.mono));
        self.stats.held += 1;
        let ev = UpMsg::NoSession {
            peer: route.map(|(p, _)| p),
            dst,
        };
        let out = self.node.handle_event(ev, now);
        self.apply(out);
    }

    /// The peer routing `dst`, and whether it has a current session and an endpoint.
    fn route(&self, dst: IpAddr) -> Option<(u32, bool)> {
        let host = (dst, if dst.is_ipv4() { 32 } else { 128 });
        self.peers.iter().find_map(|(id, p)| {
            p.routes
                .iter()
                .any(|r| prefixes_overlap(*r, host))
                .then_some((*id, p.current.is_some() && p.endpoint.is_some()))
        })
    }

    fn send_data(&mut self, peer: u32, kind: u8) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let (Some(idx), Some(dst)) = (p.current, p.endpoint) else {
            return;
        };
        let Some(s) = self.sessions.get(&idx) else {
            return;
        };
        let mut d = Vec::with_capacity(DATA_LEN);
        d.push(SIM_DATA);
        d.push(kind);
        d.extend_from_slice(&s.remote_index.to_le_bytes());
        d.extend_from_slice(&u32::try_from(self.index).unwrap_or(u32::MAX).to_le_bytes());
        let tag = mac16(&s.send_key[..], &[b"shadowmesh sim data", &d]);
        d.extend_from_slice(&tag);
        self.out.push_back((dst, d));
        self.stats.data_sent += 1;
    }

    /// Sends the held packets that have a session now.
    fn release(&mut self) {
        let mut keep = VecDeque::new();
        while let Some((dst, since)) = self.held.pop_front() {
            match self.route(dst) {
                Some((peer, true)) => self.send_data(peer, KIND_PACKET),
                _ => keep.push_back((dst, since)),
            }
        }
        self.held = keep;
    }

    /// Carries out what the control plane asked of its dataplane.
    fn apply(&mut self, out: Vec<DownMsg>) {
        let mut queue: VecDeque<DownMsg> = out.into();
        // Bounded: each confirmation adds at most one batch; 10 000 requests per call at most.
        for _ in 0..10_000 {
            let Some(m) = queue.pop_front() else {
                break;
            };
            match m {
                DownMsg::SendControl { dst, payload } => self.out.push_back((dst, payload)),
                DownMsg::InstallSession(s) => {
                    let current = s.slot == Slot::Current;
                    self.sessions.insert(
                        s.local_index,
                        DpSession {
                            peer: s.peer,
                            remote_index: s.remote_index,
                            send_key: s.send_key.clone(),
                            recv_key: s.recv_key.clone(),
                            pending: !current,
                        },
                    );
                    if current {
                        let p = self.peers.entry(s.peer).or_default();
                        p.current = Some(s.local_index);
                        // The real dataplane's keepalive: key confirmation for the responder.
                        if p.endpoint.is_some() {
                            self.send_data(s.peer, KIND_KEEPALIVE);
                        } else {
                            p.keepalive_due = true;
                        }
                        self.release();
                    }
                }
                DownMsg::RemoveSession { local_index } => {
                    self.sessions.remove(&local_index);
                    for p in self.peers.values_mut() {
                        if p.current == Some(local_index) {
                            p.current = None;
                        }
                    }
                }
                DownMsg::RemovePeer { peer } => {
                    self.peers.remove(&peer);
                    self.sessions.retain(|_, s| s.peer != peer);
                }
                DownMsg::SetRoutes { peer, prefixes } => {
                    self.peers.entry(peer).or_default().routes = prefixes;
                    self.release();
                }
                DownMsg::SetEndpoint { peer, addr } => {
                    let p = self.peers.entry(peer).or_default();
                    p.endpoint = Some(addr);
                    if std::mem::take(&mut p.keepalive_due) {
                        self.send_data(peer, KIND_KEEPALIVE);
                    }
                    self.release();
                }
                // No relaying in this model yet (issue 11).
                DownMsg::SetSources { .. }
                | DownMsg::GetStats { .. }
                | DownMsg::Shutdown
                | DownMsg::SetRelay { .. }
                | DownMsg::RemoveRelay { .. } => {}
            }
        }
        while let Some(ev) = self.node.poll_event() {
            let NodeEvent::ConnectDone { ticket, result } = ev;
            self.connects.insert(ticket, result);
        }
    }

    fn on_data(&mut self, src: SocketAddr, d: &[u8], now: Now) {
        if d.len() != DATA_LEN {
            self.stats.data_refused += 1;
            return;
        }
        let (head, tag) = d.split_at(DATA_LEN - 16);
        let mut idx = [0u8; 4];
        idx.copy_from_slice(&head[2..6]);
        let mut from = [0u8; 4];
        from.copy_from_slice(&head[6..10]);
        let from = u32::from_le_bytes(from) as usize;
        let Some(s) = self.sessions.get_mut(&u32::from_le_bytes(idx)) else {
            self.stats.data_refused += 1;
            return;
        };
        let want = mac16(&s.recv_key[..], &[b"shadowmesh sim data", head]);
        if !ct_eq(&want, tag) {
            self.stats.data_refused += 1;
            return;
        }
        let peer = s.peer;
        let confirm = std::mem::take(&mut s.pending);
        let local_index = u32::from_le_bytes(idx);
        if confirm {
            // Key confirmation (a responder's new peer exists in the driver only from now on).
            let p = self.peers.entry(peer).or_default();
            p.current = Some(local_index);
            if p.endpoint.is_none() {
                p.endpoint = Some(src);
            }
            self.stats.confirmed += 1;
            let out = self
                .node
                .handle_event(UpMsg::SessionConfirmed { peer, local_index }, now);
            self.apply(out);
            self.release();
        }
        // The session must belong to the node that sent (the keys bind the identity).
        let named = self
            .node
            .driver()
            .peers()
            .get(peer)
            .is_some_and(|p| p.name == node_name(from));
        if !named {
            self.stats.misbound += 1;
            return;
        }
        self.stats.data_delivered += 1;
        self.delivered.push(Delivery {
            from,
            packet: head[1] == KIND_PACKET,
            at: now.mono,
        });
    }
}

impl SimNode for MeshNode<'_> {
    fn handle_datagram(&mut self, src: SocketAddr, d: &[u8], now: Now, _rng: &mut dyn RngCore) {
        self.last = now;
        if d.first() == Some(&SIM_DATA) {
            self.on_data(src, d, now);
            return;
        }
        let ev = UpMsg::ControlReceived {
            src,
            payload: d.to_vec(),
        };
        let out = self.node.handle_event(ev, now);
        self.apply(out);
    }

    fn handle_timeout(&mut self, now: Now, _rng: &mut dyn RngCore) {
        self.last = now;
        let before = self.held.len();
        self.held
            .retain(|(_, since)| now.mono.saturating_sub(*since) < HOLD_FOR);
        self.stats.held_dropped += (before - self.held.len()) as u64;
        if self.node.poll_timeout(now) <= now.mono {
            let out = self.node.handle_timeout(now);
            self.apply(out);
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        let hold = self.held.front().map(|(_, since)| *since + HOLD_FOR);
        let t = self.node.poll_timeout(self.last);
        Some(hold.map_or(t, |h| h.min(t)))
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }
}

/// Settings of the mesh scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeshConfig {
    /// Nodes.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Bootstrap nodes (the first ones).
    pub bootstraps: usize,
    /// Pairs that open a session (half by packet, half by `connect NAME`).
    pub pairs: usize,
    /// Joins are spread over this window.
    #[serde(serialize_with = "crate::sim::secs")]
    pub join_window: Duration,
    /// Peers killed in the liveness phase.
    pub killed: usize,
    /// The underlay.
    pub net: NetConfig,
}

impl MeshConfig {
    /// The default case for `nodes` nodes.
    #[must_use]
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            bootstraps: 4.min(nodes),
            pairs: 200.min(nodes * 2),
            join_window: Duration::from_secs(60),
            killed: (nodes / 20).clamp(1, 20),
            net: NetConfig::default(),
        }
    }
}

/// Sessions opened one way (by packet or by name), with the counts the figures come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OpenStats {
    /// Pairs started.
    pub started: u64,
    /// Pairs whose responder received an authenticated message from the initiator on a session
    /// of theirs (a keepalive or the held packet).
    pub usable: u64,
    /// usable / started.
    pub success: f64,
    /// By packet: the held first packet itself arrived (not lost).
    pub first_packet_delivered: u64,
    /// By name: `connect` reported the peer found.
    pub connect_ok: u64,
    /// By name: `connect` reported no record.
    pub connect_not_found: u64,
    /// Median time from the start to the responder's first authenticated message, ms.
    pub time_p50_ms: f64,
    /// 99th percentile of that time, ms.
    pub time_p99_ms: f64,
}

/// The liveness phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LivenessStats {
    /// Nodes killed.
    pub killed: u64,
    /// (node, killed peer) pairs where the node had the killed one as a peer.
    pub watchers: u64,
    /// Of those, shown unreachable 25 s after the kill.
    pub shown_unreachable: u64,
    /// Of those, reachable again 60 s after the killed nodes restarted (same state).
    pub back_reachable: u64,
}

/// Handshake counters summed over the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeTotals {
    /// Initiations sent, retries included.
    pub initiations_sent: u64,
    /// Completed as initiator.
    pub completed_initiator: u64,
    /// Completed as responder.
    pub completed_responder: u64,
    /// Handshake messages refused.
    pub refused: u64,
    /// Initiations given up.
    pub gave_up: u64,
}

/// The mesh scenario's summary: identical for identical seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshSummary {
    /// Settings.
    pub config: MeshConfig,
    /// Median RTT of random pairs, ms.
    pub median_rtt_ms: f64,
    /// Nodes that published a record and have contacts after joining.
    pub joined: u64,
    /// Median routing-table size after joining.
    pub table_median: usize,
    /// Sessions opened by a packet to an unrouted overlay address.
    pub by_packet: OpenStats,
    /// Sessions opened by `connect NAME`.
    pub by_name: OpenStats,
    /// Killed peers shown unreachable, and back.
    pub liveness: LivenessStats,
    /// Handshakes.
    pub handshakes: HandshakeTotals,
    /// The dataplane models' counters, summed.
    pub dataplane: DpStats,
    /// The DHT's counters summed over the nodes up at the end (messages sent by type, drops).
    pub dht: BTreeMap<String, u64>,
    /// Network counters.
    pub net: NetStats,
    /// Engine counters.
    pub sim: SimStats,
    /// Simulated node-seconds.
    pub node_seconds: f64,
    /// Virtual seconds simulated.
    pub virtual_seconds: f64,
    /// Hash of every event (hex).
    pub trace_hash: String,
}

struct Pair {
    src: usize,
    dst: usize,
    by_name: bool,
    start: Duration,
    ticket: Option<u64>,
}

/// Why the mesh scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Building the identities failed.
    #[error(transparent)]
    Ids(#[from] IdsError),
    /// A node could not be built.
    #[error("node: {0}")]
    Node(#[from] crate::daemon::DaemonError),
}

/// Runs the mesh scenario (identities built on `threads` threads).
///
/// # Errors
/// Building the identities or a node failed.
pub fn run(
    cfg: &MeshConfig,
    threads: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<MeshSummary, MeshError> {
    let n = cfg.nodes;
    let net = SimNetwork::build(n, cfg.seed, WALL_EPOCH.as_secs() - 60, threads)?;
    progress("identities built");
    let mut sc = SimConfig::new(cfg.seed);
    sc.net = cfg.net;
    let mut sim: Sim<MeshNode<'_>> = Sim::new(sc);
    let boots: Vec<SocketAddr> = (0..cfg.bootstraps.min(n)).map(node_addr).collect();
    for i in 0..n {
        let bs = boots
            .iter()
            .copied()
            .filter(|b| *b != node_addr(i))
            .collect();
        sim.add_node(MeshNode::new(&net, i, bs, cfg.seed)?);
    }
    let mut rng = SeededRng::seed_from_u64(cfg.seed ^ 0x3e5_4a10);
    for i in 0..n {
        let t = if i < cfg.bootstraps {
            Duration::ZERO
        } else {
            cfg.join_window.mul_f64(i as f64 / n as f64)
        };
        sim.run_until(t);
        sim.with_node(i, |x, now, _| x.start(now));
    }
    sim.run_until(sim.now().mono + Duration::from_secs(60));
    let joined = (0..n)
        .filter(|&i| {
            sim.node(i).is_some_and(|x| {
                x.node.published().1 > 0 && x.node.dht().routing_table().count() > 0
            })
        })
        .count() as u64;
    let mut tables: Vec<usize> = (0..n)
        .filter_map(|i| sim.node(i).map(|x| x.node.dht().routing_table().count()))
        .collect();
    let table_median = pct(&mut tables, 0.5);
    let mut rtts: Vec<u64> = (0..10_000)
        .filter_map(|_| {
            let a = (rng.next_u64() % n as u64) as usize;
            let b = (rng.next_u64() % n as u64) as usize;
            (a != b).then(|| sim.net().rtt(a, b).as_micros() as u64)
        })
        .collect();
    let median_rtt_ms = pct(&mut rtts, 0.5) as f64 / 1000.0;
    progress(&format!("joined {joined}/{n}; table median {table_median}"));

    // Open sessions: 20 ms apart, alternately by packet and by name.
    let mut pairs: Vec<Pair> = Vec::new();
    for k in 0..cfg.pairs {
        let src = (rng.next_u64() % n as u64) as usize;
        let dst = (rng.next_u64() % n as u64) as usize;
        if src == dst {
            continue;
        }
        sim.run_until(sim.now().mono + Duration::from_millis(20));
        let by_name = k % 2 == 1;
        let start = sim.now().mono;
        let ticket = sim
            .with_node(src, |x, now, _| {
                if by_name {
                    x.connect(&node_name(dst), now)
                } else {
                    x.send_packet(IpAddr::V4(overlay_v4(dst)), now);
                    None
                }
            })
            .flatten();
        pairs.push(Pair {
            src,
            dst,
            by_name,
            start,
            ticket,
        });
    }
    sim.run_until(sim.now().mono + Duration::from_secs(30));
    let mut open = [OpenStats::default(), OpenStats::default()];
    let mut times: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for p in &pairs {
        let o = &mut open[usize::from(p.by_name)];
        o.started += 1;
        let Some(d) = sim.node(p.dst) else { continue };
        let first = d
            .delivered()
            .iter()
            .find(|x| x.from == p.src && x.at >= p.start);
        if let Some(f) = first {
            o.usable += 1;
            times[usize::from(p.by_name)].push((f.at - p.start).as_micros() as u64);
        }
        if !p.by_name
            && d.delivered()
                .iter()
                .any(|x| x.from == p.src && x.packet && x.at >= p.start)
        {
            o.first_packet_delivered += 1;
        }
        if let (Some(t), Some(s)) = (p.ticket, sim.node(p.src)) {
            match s.connect_result(t) {
                Some(Ok(_)) => o.connect_ok += 1,
                Some(Err(ConnectFailure::NotFound)) => o.connect_not_found += 1,
                _ => {}
            }
        } else if p.by_name {
            // A known peer: `connect` handshook at once, no lookup.
            o.connect_ok += 1;
        }
    }
    for (o, t) in open.iter_mut().zip(times.iter_mut()) {
        o.success = o.usable as f64 / o.started.max(1) as f64;
        o.time_p50_ms = pct(t, 0.5) as f64 / 1000.0;
        o.time_p99_ms = pct(t, 0.99) as f64 / 1000.0;
    }
    progress(&format!(
        "sessions: by packet {}/{}, by name {}/{}",
        open[0].usable, open[0].started, open[1].usable, open[1].started
    ));

    // Liveness: kill the responders of the first pairs (no bootstrap), watch their peers.
    let mut victims: Vec<usize> = Vec::new();
    for p in &pairs {
        if victims.len() >= cfg.killed {
            break;
        }
        if p.dst >= cfg.bootstraps && !victims.contains(&p.dst) {
            victims.push(p.dst);
        }
    }
    let watchers = |sim: &Sim<MeshNode<'_>>, v: usize| -> Vec<(usize, u32)> {
        (0..n)
            .filter(|&i| !victims.contains(&i))
            .filter_map(|i| {
                let peer = sim.node(i)?.node.driver().peers().by_name(&node_name(v))?;
                Some((i, peer))
            })
            .collect()
    };
    let watched: Vec<(usize, u32)> = victims.iter().flat_map(|&v| watchers(&sim, v)).collect();
    let reachable = |sim: &Sim<MeshNode<'_>>, (i, peer): (usize, u32)| {
        sim.node(i)
            .and_then(|x| x.node.driver().peers().get(peer).map(|p| p.reachable))
            .flatten()
    };
    let mut kept: Vec<(usize, MeshNode<'_>)> = Vec::new();
    for &v in &victims {
        if let Some(x) = sim.take_down(v) {
            kept.push((v, x));
        }
    }
    sim.run_until(sim.now().mono + Duration::from_secs(25));
    let shown_unreachable = watched
        .iter()
        .filter(|w| reachable(&sim, **w) == Some(false))
        .count() as u64;
    for (v, x) in kept {
        sim.bring_up(v, x);
    }
    sim.run_until(sim.now().mono + Duration::from_secs(60));
    let back_reachable = watched
        .iter()
        .filter(|w| reachable(&sim, **w) == Some(true))
        .count() as u64;
    let liveness = LivenessStats {
        killed: victims.len() as u64,
        watchers: watched.len() as u64,
        shown_unreachable,
        back_reachable,
    };
    progress(&format!(
        "liveness: {shown_unreachable}/{} unreachable, {back_reachable} back",
        watched.len()
    ));

    let mut handshakes = HandshakeTotals::default();
    let mut dataplane = DpStats::default();
    let mut dht: BTreeMap<String, u64> = BTreeMap::new();
    for x in (0..n).filter_map(|i| sim.node(i)) {
        let st = x.node.dht().stats();
        for (k, v) in st.named().into_iter().chain(st.sent_named()) {
            *dht.entry(k.to_string()).or_default() += v;
        }
        let s = x.node.driver().stats();
        handshakes.initiations_sent += s.initiations_sent;
        handshakes.completed_initiator += s.completed_initiator;
        handshakes.completed_responder += s.completed_responder;
        handshakes.refused += s.refused;
        handshakes.gave_up += s.gave_up;
        let d = x.stats();
        dataplane.data_sent += d.data_sent;
        dataplane.data_delivered += d.data_delivered;
        dataplane.data_refused += d.data_refused;
        dataplane.held += d.held;
        dataplane.held_dropped += d.held_dropped;
        dataplane.confirmed += d.confirmed;
        dataplane.misbound += d.misbound;
    }
    let [by_packet, by_name] = open;
    Ok(MeshSummary {
        config: *cfg,
        median_rtt_ms,
        joined,
        table_median,
        by_packet,
        by_name,
        liveness,
        handshakes,
        dataplane,
        dht,
        net: sim.net().stats(),
        sim: sim.stats(),
        node_seconds: sim.node_seconds(),
        virtual_seconds: sim.now().mono.as_secs_f64(),
        trace_hash: format!("{:016x}", sim.trace_hash()),
    })
}
