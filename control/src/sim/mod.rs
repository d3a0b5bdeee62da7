//! A deterministic, seeded discrete-event simulator of the control plane.
//!
//! Virtual time only: events are ordered by (time, sequence number) in a `BTreeMap`, nodes see
//! time as [`Now`] (`wall` = [`WALL_EPOCH`] + `mono`), and every random decision comes from a
//! [`SeededRng`] derived from the one `u64` seed: the network's loss stream and latency key, and
//! one ChaCha8 stream per node. The same seed therefore replays the same run, event for event
//! (the trace hash and the summaries of two runs are equal; see the tests).
//!
//! Owns the event queue, the simulated [`Network`] and the nodes' slots (up or down, timer,
//! generator). Nodes are anything implementing [`SimNode`], the sans-IO shape the daemon's
//! nodes have (handle a datagram, handle a timeout, poll the timeout, poll transmits). It never
//! reads a clock, never iterates a `HashMap` and never sends to a real socket.
//!
//! Scenarios: [`toy`] (a ping node that tests the engine) and [`dht`] (the real DHT, transport
//! and certificates on thousands of nodes).

// pub mod dht;
pub mod ids;
pub mod kad;
pub mod mesh;
pub mod nat;
pub mod net;
pub mod prod;
pub mod scenario;
pub mod toy;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use rand_core::{RngCore, SeedableRng};

use crate::clock::Now;
use crate::rand::SeededRng;
pub use net::{node_addr, NetConfig, NetStats, Network, Verdict};

/// Wall-clock reading at virtual time zero: 2026-09-22 (unix seconds 1 790 000 000), so
/// certificates and records have realistic validity windows.
pub const WALL_EPOCH: Duration = Duration::from_secs(1_790_000_000);

/// Most timeouts a node may ask for at one instant before the engine defers it by 1 µs (a node
/// whose `poll_timeout` never advances must not stall virtual time).
const SAME_INSTANT_TIMEOUTS: u32 = 64;

/// Serialises a duration as fractional seconds (summaries are read by people and scripts).
///
/// # Errors
/// The serialiser's.
pub fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// A simulated node: the sans-IO interface of the control plane's state machines.
pub trait SimNode {
    /// One datagram from `src` arrived.
    fn handle_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        now: Now,
        rng: &mut dyn RngCore,
    );
    /// The time asked for by [`poll_timeout`](Self::poll_timeout) has come.
    fn handle_timeout(&mut self, now: Now, rng: &mut dyn RngCore);
    /// When to call [`handle_timeout`](Self::handle_timeout) next (monotonic, absolute).
    fn poll_timeout(&self) -> Option<Duration>;
    /// The next datagram to send.
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)>;
}

/// Settings of a simulation.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// The seed of everything random.
    pub seed: u64,
    /// The underlay.
    pub net: NetConfig,
    /// Most events a run may process (a bound on every run loop).
    pub event_budget: u64,
    /// Keep a readable line per event (tests; costly on big runs).
    pub record_trace: bool,
}

impl SimConfig {
    /// Default network, 2^40 events, no recorded trace.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            net: NetConfig::default(),
            event_budget: 1 << 40,
            record_trace: false,
        }
    }
}

enum Event {
    Deliver {
        dst: usize,
        src_idx: usize,
        src: SocketAddr,
        data: Vec<u8>,
    },
    Timer {
        node: usize,
        generation: u64,
    },
}

struct Slot<N> {
    addr: SocketAddr,
    node: Option<N>,
    rng: SeededRng,
    timer: Option<Duration>,
    generation: u64,
    same_instant: (Duration, u32),
    up_since: Option<Duration>,
    up_total: Duration,
}

/// Counters of the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SimStats {
    /// Events processed.
    pub events: u64,
    /// Timeouts handed to nodes.
    pub timeouts: u64,
    /// Timer events that were stale (the node had asked for another time since).
    pub stale_timers: u64,
    /// Times a node was taken down.
    pub downs: u64,
    /// Times a node was brought (back) up.
    pub ups: u64,
    /// Most datagram bytes in flight at once (a burst of many nodes acting together shows
    /// here: the simulator holds every datagram in flight in memory).
    pub in_flight_bytes_peak: u64,
    /// When that peak was reached (virtual milliseconds).
    pub in_flight_peak_at_ms: u64,
}

/// The engine: nodes, network and the event queue.
pub struct Sim<N> {
    now: Duration,
    seq: u64,
    events: BTreeMap<(Duration, u64), Event>,
    /// Bytes of the datagrams in `events`.
    in_flight: u64,
    slots: Vec<Slot<N>>,
    // Looked up by address only, never iterated.
    by_addr: HashMap<SocketAddr, usize>,
    net: Network,
    node_seed: [u8; 32],
    budget: u64,
    trace_hash: u64,
    trace: Option<Vec<String>>,
    stats: SimStats,
}

/// SplitMix64's finaliser (the trace hash's mixing step).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl<N: SimNode> Sim<N> {
    /// An empty simulation at virtual time zero.
    #[must_use]
    pub fn new(config: SimConfig) -> Self {
        let mut master = SeededRng::seed_from_u64(config.seed);
        let net = Network::new(config.net, 0, &mut master);
        let mut node_seed = [0u8; 32];
        master.fill_bytes(&mut node_seed);
        Self {
            now: Duration::ZERO,
            seq: 0,
            events: BTreeMap::new(),
            in_flight: 0,
            slots: Vec::new(),
            by_addr: HashMap::new(),
            net,
            node_seed,
            budget: config.event_budget,
            trace_hash: mix(config.seed),
            trace: config.record_trace.then(Vec::new),
            stats: SimStats::default(),
        }
    }

    /// The generator of node `i`: its own ChaCha8 stream of the simulation's node seed, so
    /// adding nodes never changes the draws of the others.
    #[must_use]
    pub fn node_rng(&self, i: usize) -> SeededRng {
        let mut r = SeededRng::from_seed(self.node_seed);
        r.set_stream(i as u64 + 1);
        r
    }

    /// Virtual time as nodes see it.
    #[must_use]
    pub fn now(&self) -> Now {
        Now {
            mono: self.now,
            wall: WALL_EPOCH + self.now,
        }
    }

    /// The network (latencies, partitions, counters).
    #[must_use]
    pub fn net(&self) -> &Network {
        &self.net
    }

    /// The network, to change partitions or loss.
    pub fn net_mut(&mut self) -> &mut Network {
        &mut self.net
    }

    /// Engine counters.
    #[must_use]
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// A hash of every event so far (time, kind, endpoints, length): equal for equal runs.
    #[must_use]
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash
    }

    /// The recorded trace lines (when [`SimConfig::record_trace`] is set).
    #[must_use]
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Number of nodes (up or down).
    #[must_use]
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// No nodes yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The underlay address of node `i`.
    #[must_use]
    pub fn addr(&self, i: usize) -> Option<SocketAddr> {
        self.slots.get(i).map(|s| s.addr)
    }

    /// The index of the node at `addr`.
    #[must_use]
    pub fn index_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.by_addr.get(addr).copied()
    }

    /// Whether node `i` is running.
    #[must_use]
    pub fn is_up(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.node.is_some())
    }

    /// Node `i`, if running.
    #[must_use]
    pub fn node(&self, i: usize) -> Option<&N> {
        self.slots.get(i).and_then(|s| s.node.as_ref())
    }

    /// Simulated node-seconds so far (each running node counts one per virtual second).
    #[must_use]
    pub fn node_seconds(&self) -> f64 {
        self.slots
            .iter()
            .map(|s| {
                let cur = s.up_since.map_or(Duration::ZERO, |t| self.now - t);
                (s.up_total + cur).as_secs_f64()
            })
            .sum()
    }

    fn record(&mut self, words: [u64; 5], line: impl FnOnce() -> String) {
        for w in words {
            self.trace_hash = mix(self.trace_hash ^ w);
        }
        if let Some(t) = self.trace.as_mut() {
            t.push(line());
        }
    }

    /// Adds a running node at [`node_addr`]`(len())`; returns its index.
    pub fn add_node(&mut self, node: N) -> usize {
        let i = self.slots.len();
        self.add_node_at(node_addr(i), node)
    }

    /// Adds a running node at `addr`; returns its index.
    pub fn add_node_at(&mut self, addr: SocketAddr, node: N) -> usize {
        let i = self.slots.len();
        let rng = self.node_rng(i);
        self.slots.push(Slot {
            addr,
            node: Some(node),
            rng,
            timer: None,
            generation: 0,
            same_instant: (Duration::ZERO, 0),
            up_since: Some(self.now),
            up_total: Duration::ZERO,
        });
        self.by_addr.insert(addr, i);
        self.net.ensure(i + 1);
        self.flush(i);
        i
    }

    /// Takes node `i` down (a crash: in-flight datagrams to it are dropped, its timers
    /// cancelled). Returns its state, which [`bring_up`](Self::bring_up) may reuse.
    pub fn take_down(&mut self, i: usize) -> Option<N> {
        let now = self.now;
        let slot = self.slots.get_mut(i)?;
        let node = slot.node.take()?;
        slot.timer = None;
        slot.generation += 1;
        if let Some(t) = slot.up_since.take() {
            slot.up_total += now - t;
        }
        self.stats.downs += 1;
        self.record([now.as_micros() as u64, 3, i as u64, 0, 0], || {
            format!("{now:?} down {i}")
        });
        Some(node)
    }

    /// Brings node `i` back with `node` (its old state or a fresh one).
    pub fn bring_up(&mut self, i: usize, node: N) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        slot.node = Some(node);
        slot.up_since = Some(now);
        self.stats.ups += 1;
        self.record([now.as_micros() as u64, 4, i as u64, 0, 0], || {
            format!("{now:?} up {i}")
        });
        self.flush(i);
    }

    /// Runs `f` on node `i` (if up) at the current time with its generator, then sends what it
    /// queued and re-arms its timer.
    pub fn with_node<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut N, Now, &mut dyn RngCore) -> R,
    ) -> Option<R> {
        let now = self.now();
        let slot = self.slots.get_mut(i)?;
        let node = slot.node.as_mut()?;
        let r = f(node, now, &mut slot.rng);
        self.flush(i);
        Some(r)
    }

    fn push(&mut self, at: Duration, ev: Event) {
        if let Event::Deliver { data, .. } = &ev {
            self.in_flight += data.len() as u64;
            if self.in_flight > self.stats.in_flight_bytes_peak {
                self.stats.in_flight_bytes_peak = self.in_flight;
                self.stats.in_flight_peak_at_ms = self.now.as_millis() as u64;
            }
        }
        self.events.insert((at, self.seq), ev);
        self.seq += 1;
    }

    /// Sends node `i`'s queued datagrams and re-arms its timer.
    fn flush(&mut self, i: usize) {
        let now = self.now;
        let mut out = Vec::new();
        let want = {
            let Some(slot) = self.slots.get_mut(i) else {
                return;
            };
            let Some(node) = slot.node.as_mut() else {
                return;
            };
            while let Some(t) = node.poll_transmit() {
                out.push(t);
            }
            node.poll_timeout()
        };
        let src = self.slots.get(i).map(|s| s.addr);
        for (dst, data) in out {
            let Some(src) = src else { break };
            let len = data.len();
            let Some(&d) = self.by_addr.get(&dst) else {
                self.net.count_no_route(len);
                continue;
            };
            match self.net.route(i, d, len) {
                Verdict::Deliver(lat) => {
                    self.push(
                        now + lat,
                        Event::Deliver {
                            dst: d,
                            src_idx: i,
                            src,
                            data,
                        },
                    );
                }
                Verdict::Drop => {
                    self.record(
                        [now.as_micros() as u64, 2, i as u64, d as u64, len as u64],
                        || format!("{now:?} drop {i}->{d} {len}"),
                    );
                }
            }
        }
        self.arm(i, want);
    }

    fn arm(&mut self, i: usize, want: Option<Duration>) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        if want == slot.timer {
            return;
        }
        slot.timer = want;
        slot.generation += 1;
        let generation = slot.generation;
        if let Some(mut t) = want {
            if t <= now {
                t = now;
                if slot.same_instant.0 == now {
                    slot.same_instant.1 += 1;
                    if slot.same_instant.1 > SAME_INSTANT_TIMEOUTS {
                        t = now + Duration::from_micros(1);
                    }
                } else {
                    slot.same_instant = (now, 1);
                }
                slot.timer = Some(t);
            }
            self.push(
                t,
                Event::Timer {
                    node: i,
                    generation,
                },
            );
        }
    }

    /// Time of the next event.
    #[must_use]
    pub fn next_event_time(&self) -> Option<Duration> {
        self.events.keys().next().map(|k| k.0)
    }

    /// Processes every event up to and including virtual time `until`, then sets the clock to
    /// `until`. False if the event budget ran out first.
    pub fn run_until(&mut self, until: Duration) -> bool {
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > until {
                break;
            }
            if self.budget == 0 {
                return false;
            }
            self.budget -= 1;
            let ((t, _), ev) = entry.remove_entry();
            self.now = t;
            if let Event::Deliver { data, .. } = &ev {
                self.in_flight -= data.len() as u64;
            }
            self.stats.events += 1;
            self.dispatch(ev);
        }
        self.now = self.now.max(until);
        true
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) -> bool {
        self.run_until(self.now + d)
    }

    fn dispatch(&mut self, ev: Event) {
        let now = self.now();
        match ev {
            Event::Deliver {
                dst,
                src_idx,
                src,
                data,
            } => {
                let len = data.len();
                let up = self.slots.get(dst).is_some_and(|s| s.node.is_some());
                let t = now.mono;
                self.record(
                    [
                        t.as_micros() as u64,
                        u64::from(up),
                        src_idx as u64,
                        dst as u64,
                        len as u64,
                    ],
                    || {
                        format!(
                            "{t:?} recv {src_idx}->{dst} {len}{}",
                            if up { "" } else { " (down)" }
                        )
                    },
                );
                if !up {
                    self.net.count_to_down();
                    return;
                }
                self.net.count_delivered();
                if let Some(slot) = self.slots.get_mut(dst) {
                    if let Some(n) = slot.node.as_mut() {
                        n.handle_datagram(src, &data, now, &mut slot.rng);
                    }
                }
                self.flush(dst);
            }
            Event::Timer { node, generation } => {
                let live = self
                    .slots
                    .get(node)
                    .is_some_and(|s| s.generation == generation && s.node.is_some());
                if !live {
                    self.stats.stale_timers += 1;
                    return;
                }
                self.stats.timeouts += 1;
                if let Some(slot) = self.slots.get_mut(node) {
                    slot.timer = None;
                    if let Some(n) = slot.node.as_mut() {
                        n.handle_timeout(now, &mut slot.rng);
                    }
                }
                self.flush(node);
            }
        }
    }
}

#[cfg(test)]
mod tests;
