//! The DHT scenario of issue 10, generic over the DHT under test: N nodes join via a few
//! bootstraps, each publishes its record under its node id, name and overlay address, then
//! lookups of random targets by each kind of key; 30 % of the nodes churn (down, back with the
//! same or a fresh state, or gone) and lookups run again after republishing; 10 % of the nodes
//! lie (their replies are rewritten to far-away contacts, no values) and disjoint lookups run.
//!
//! Owns the phases, the choice of sources and targets (all from the seed) and the figures. It
//! never reads a clock: wall-time figures are the caller's.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand_core::{RngCore, SeedableRng};
use serde::Serialize;

use super::wire::{MessageNode, WireNode};
use super::{NetConfig, NetStats, Sim, SimConfig, SimStats};
use crate::clock::Now;
use crate::rand::SeededRng;
use crate::transport::{Budget, FrameKey, KIND_DHT};

/// STOREs of the attack phase's flood.
pub const FLOOD: usize = 200;

/// What a found record says, as far as the scenario checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The node the record belongs to.
    pub owner: [u8; 32],
    /// Its sequence number.
    pub seq: u64,
}

/// The end of one lookup.
#[derive(Debug, Clone, Copy)]
pub struct LookupResult {
    /// The id returned by [`DhtUnderTest::lookup`].
    pub id: u64,
    /// The record found (highest seq), if any.
    pub found: Option<Published>,
    /// The closest node that answered.
    pub closest: Option<[u8; 32]>,
    /// Hops to the answer (1 = a node of our own table had it).
    pub hops: u32,
    /// Requests sent.
    pub queried: u32,
    /// Virtual time from start to end.
    pub elapsed: Duration,
}

/// What the scenario needs from a DHT node (implemented by the reference [`super::kad::Kad`]
/// and by an adapter around the production `Dht`).
pub trait DhtUnderTest: MessageNode {
    /// Joins through `bootstraps` (addresses only).
    fn join(&mut self, bootstraps: &[SocketAddr], now: Now, rng: &mut dyn RngCore);
    /// Publishes (and from then on republishes) the node's own record with `seq`.
    fn publish(&mut self, seq: u64, now: Now, rng: &mut dyn RngCore);
    /// Starts a record lookup of `key`, over disjoint paths if `disjoint`.
    fn lookup(&mut self, key: [u8; 32], disjoint: bool, now: Now, rng: &mut dyn RngCore) -> u64;
    /// The next finished lookup.
    fn poll_result(&mut self) -> Option<LookupResult>;
    /// How a lying node rewrites an outgoing message (None: sent unchanged).
    fn lie(&self, msg: &[u8]) -> Option<Vec<u8>>;
    /// Turns the node into a liar from within (a DHT whose messages are authenticated cannot
    /// be rewritten on the wire; the production `Dht` lies itself, with its own keys).
    fn set_liar(&mut self, _on: bool) {}
    /// Contacts in the routing table.
    fn table_len(&self) -> usize;
    /// Records held.
    fn stored_len(&self) -> usize;
    /// Attack phase: this node's own record with `seq`, signed by its own key (what anyone
    /// can capture from the wire). `None`: the DHT has no signed records (the reference model),
    /// and the attack phase is skipped.
    fn own_record(&self, _seq: u64, _now: Now) -> Option<Vec<u8>> {
        None
    }
    /// Attack phase: the records held, as `(key, owner node id, seq)`.
    fn held(&self, _now: Now) -> Vec<([u8; 32], [u8; 32], u64)> {
        Vec::new()
    }
    /// Attack phase: how many held records `source` stored, and the per-source bound.
    fn held_from(&self, _source: &[u8; 32]) -> (usize, usize) {
        (0, 0)
    }
    /// Attack phase: sends a STORE of `record` (any bytes) under `key` to the node with DHT
    /// key `to` at `addr`, authenticated as this node.
    fn attack_store(
        &mut self,
        _to: [u8; 32],
        _addr: SocketAddr,
        _key: [u8; 32],
        _record: Vec<u8>,
        _now: Now,
        _rng: &mut dyn RngCore,
    ) -> bool {
        false
    }
    /// The node's own counters by name (summed over the nodes up at the end; none by default).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A DHT node that may be switched into a liar.
pub struct Member<D> {
    /// The DHT node.
    pub dht: D,
    /// Rewrite replies with [`DhtUnderTest::lie`].
    pub liar: bool,
}

impl<D: DhtUnderTest> MessageNode for Member<D> {
    fn handle_message(&mut self, src: SocketAddr, msg: &[u8], now: Now, rng: &mut dyn RngCore) {
        self.dht.handle_message(src, msg, now, rng);
    }
    fn handle_timeout(&mut self, now: Now, rng: &mut dyn RngCore) {
        self.dht.handle_timeout(now, rng);
    }
    fn poll_timeout(&self) -> Option<Duration> {
        self.dht.poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        let (dst, msg) = self.dht.poll_transmit()?;
        if self.liar {
            if let Some(m) = self.dht.lie(&msg) {
                return Some((dst, m));
            }
        }
        Some((dst, msg))
    }
}

/// Settings of the scenario.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ScenarioConfig {
    /// Nodes.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Bootstrap nodes (the first ones).
    pub bootstraps: usize,
    /// Lookups per measured phase.
    pub lookups: usize,
    /// Fraction of nodes that churn.
    pub churn: f64,
    /// Fraction of nodes that lie in the liar phase.
    pub liars: f64,
    /// Joins are spread over this window.
    #[serde(serialize_with = "crate::sim::secs")]
    pub join_window: Duration,
    /// Time to run after churn so republishing restores the records.
    #[serde(serialize_with = "crate::sim::secs")]
    pub republish_wait: Duration,
    /// The underlay.
    pub net: NetConfig,
}

impl ScenarioConfig {
    /// The case for `nodes` nodes.
    #[must_use]
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            bootstraps: 4.min(nodes),
            lookups: 2000.min(nodes * 2),
            churn: 0.3,
            liars: 0.1,
            join_window: Duration::from_secs(120),
            republish_wait: Duration::from_secs(25 * 60),
            net: NetConfig::default(),
        }
    }
}

/// Figures of one lookup phase, with the counts they come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseStats {
    /// Lookups started.
    pub started: u64,
    /// Lookups that ended (the others had their source churn or never ended).
    pub finished: u64,
    /// Lookups that found the target's record.
    pub found: u64,
    /// found / started.
    pub success: f64,
    /// Median hops of successful lookups.
    pub hops_median: u32,
    /// 99th percentile of hops of successful lookups.
    pub hops_p99: u32,
    /// Largest hop count seen.
    pub hops_max: u32,
    /// Median lookup time of successful lookups, ms.
    pub time_p50_ms: f64,
    /// 99th percentile of lookup time, ms.
    pub time_p99_ms: f64,
    /// Mean requests sent per lookup.
    pub queried_mean: f64,
    /// Lookups per kind of key: node id, name, overlay IPv4.
    pub by_kind_found: [u64; 3],
}

/// What happened to the churned nodes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChurnStats {
    /// Nodes taken down.
    pub down: u64,
    /// Came back with their old state.
    pub back_same: u64,
    /// Came back with a fresh state (rejoined, republished with a higher seq).
    pub back_fresh: u64,
    /// Stayed down (their records are not looked up).
    pub gone: u64,
    /// Lookups after the churn and the republish wait.
    pub after: PhaseStats,
}

/// The liar phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LiarStats {
    /// Nodes lying.
    pub liars: u64,
    /// Disjoint lookups.
    pub disjoint: PhaseStats,
    /// The same lookups over a single path (for comparison).
    pub single_path: PhaseStats,
}

/// The scenario's summary: identical for identical seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The DHT under test.
    pub dht: &'static str,
    /// Settings.
    pub config: ScenarioConfig,
    /// Median RTT of 10 000 random node pairs, ms.
    pub median_rtt_ms: f64,
    /// Median routing-table size after joining.
    pub table_median: usize,
    /// Median records held per node after publishing.
    pub stored_median: usize,
    /// Lookups after every node joined and published.
    pub lookups: PhaseStats,
    /// Churn.
    pub churn: ChurnStats,
    /// Liars.
    pub liars: LiarStats,
    /// The DHT's own counters summed over the nodes up at the end (messages sent by type, drops).
    pub counters: BTreeMap<String, u64>,
    /// Attack checks the DHT adapter ran (forged / lower-seq / flood), by name.
    pub attacks: BTreeMap<String, serde_json::Value>,
    /// p50 lookup time / median RTT (first phase).
    pub time_p50_over_rtt: f64,
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

/// The `q` quantile of `v` (sorts it; the default for an empty slice).
pub(crate) fn pct<T: Copy + Ord + Default>(v: &mut [T], q: f64) -> T {
    if v.is_empty() {
        return T::default();
    }
    v.sort_unstable();
    let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v.get(i).copied().unwrap_or_default()
}

type Node<D> = WireNode<Member<D>>;

/// The three keys of node `i` (node id, name, overlay IPv4) and its node id.
pub trait Keys {
    /// Keys of node `i`: [by node id, by name, by overlay IPv4].
    fn keys(&self, i: usize) -> [[u8; 32]; 3];
    /// Node id of node `i`.
    fn node_id(&self, i: usize) -> [u8; 32];
}

struct Runner<'k, D, F, K> {
    sim: Sim<Node<D>>,
    make: F,
    keys: &'k K,
    key: FrameKey,
    rng: SeededRng,
    bootstraps: Vec<SocketAddr>,
    // Nodes taken down for good: neither sources nor targets.
    gone: Vec<bool>,
}

impl<D, F, K> Runner<'_, D, F, K>
where
    D: DhtUnderTest,
    F: FnMut(usize) -> D,
    K: Keys,
{
    fn wrap(&self, d: D) -> Node<D> {
        WireNode::new(
            Member {
                dht: d,
                liar: false,
            },
            self.key.clone(),
            KIND_DHT,
            Budget::UNVALIDATED_REPLY,
        )
    }

    /// One honest member `m` attacks one honest member `v` with STOREs: a forged record
    /// (another node's, seq raised, signature broken), a genuine but older record of that node,
    /// and a flood of genuine records of up to [`FLOOD`] other nodes. Empty when the DHT
    /// under test has no signed records.
    fn attacks(&mut self, progress: &mut dyn FnMut(&str)) -> BTreeMap<String, serde_json::Value> {
        let mut out = BTreeMap::new();
        let Some(v) = self.pick(None, true) else {
            return out;
        };
        let Some(m) = self.pick(Some(v), true) else {
            return out;
        };
        let now = self.sim.now();
        let m_id = self.keys.node_id(m);
        let v_key = self.keys.keys(v)[0];
        let Some(v_addr) = self.sim.addr(v) else {
            return out;
        };
        let held = self
            .sim
            .node(v)
            .map(|x| x.inner.dht.held(now))
            .unwrap_or_default();
        // A record v holds whose owner is neither party and is still up (it signs the replay).
        let owner_index =
            |id: &[u8; 32]| (0..self.sim.len()).find(|&i| self.keys.node_id(i) == *id);
        let Some((key, x, seq)) = held.iter().find_map(|(k, owner, seq)| {
            let i = owner_index(owner)?;
            (i != m && i != v && self.sim.node(i).is_some()).then_some((*k, i, *seq))
        }) else {
            return out;
        };
        let record = |r: &Self, i: usize, seq: u64| {
            r.sim.node(i).and_then(|n| n.inner.dht.own_record(seq, now))
        };
        let Some(mut forged) = record(self, x, seq + 100) else {
            return out;
        };
        if let Some(b) = forged.last_mut() {
            *b ^= 1; // The last byte of a record is its signature's.
        }
        let held_seq = |r: &Self| {
            let now = r.sim.now();
            r.sim.node(v).and_then(|n| {
                n.inner
                    .dht
                    .held(now)
                    .into_iter()
                    .find(|(k, _, _)| *k == key)
                    .map(|(_, _, s)| s)
            })
        };
        let mut attempt = |r: &mut Self, name: &str, bytes: Vec<u8>| {
            let sent = r
                .sim
                .with_node(m, |n, now, rng| {
                    let ok = n
                        .inner
                        .dht
                        .attack_store(v_key, v_addr, key, bytes, now, rng);
                    n.pump(now.mono);
                    ok
                })
                .unwrap_or(false);
            let t = r.sim.now().mono + Duration::from_secs(10);
            r.sim.run_until(t);
            let after = held_seq(r);
            out.insert(
                name.to_owned(),
                serde_json::json!({
                    "sent": sent,
                    "held_seq_before": seq,
                    "held_seq_after": after,
                    "refused": sent && after == Some(seq),
                }),
            );
        };
        attempt(self, "forged_record", forged);
        if seq > 0 {
            if let Some(older) = record(self, x, seq - 1) {
                attempt(self, "lower_seq_record", older);
            }
        }
        // The flood: genuine records of other nodes (seq 1, as first published), each under
        // its owner's node key, all from m.
        let before = self.sim.node(v).map_or(0, |n| n.inner.dht.stored_len());
        let mut sent = 0u64;
        for i in 0..self.sim.len() {
            if sent as usize >= FLOOD {
                break;
            }
            if i == m || i == v || !self.eligible(i) {
                continue;
            }
            let Some(bytes) = record(self, i, 1) else {
                continue;
            };
            let k = self.keys.keys(i)[0];
            let ok = self
                .sim
                .with_node(m, |n, now, rng| {
                    let ok = n.inner.dht.attack_store(v_key, v_addr, k, bytes, now, rng);
                    n.pump(now.mono);
                    ok
                })
                .unwrap_or(false);
            sent += u64::from(ok);
            let t = self.sim.now().mono + Duration::from_millis(50);
            self.sim.run_until(t);
        }
        let t = self.sim.now().mono + Duration::from_secs(10);
        self.sim.run_until(t);
        let after = self.sim.node(v).map_or(0, |n| n.inner.dht.stored_len());
        let (from_m, bound) = self
            .sim
            .node(v)
            .map_or((0, 0), |n| n.inner.dht.held_from(&m_id));
        out.insert(
            "store_flood".to_owned(),
            serde_json::json!({
                "sent": sent,
                "held_from_attacker": from_m,
                "per_source_bound": bound,
                "victim_records_before": before,
                "victim_records_after": after,
                "within_bound": from_m <= bound,
            }),
        );
        progress(&format!(
            "attacks: forged and older records {}, flood of {sent} held {from_m} (bound {bound})",
            if out
                .values()
                .filter_map(|v| v.get("refused"))
                .all(|r| r.as_bool() == Some(true))
            {
                "refused"
            } else {
                "NOT refused"
            }
        ));
        out
    }

    fn eligible(&self, i: usize) -> bool {
        self.sim.is_up(i) && !self.gone.get(i).copied().unwrap_or(true)
    }

    fn pick(&mut self, not: Option<usize>, honest: bool) -> Option<usize> {
        let n = self.sim.len() as u64;
        // Bounded retries; the eligible set is most of the nodes.
        for _ in 0..1000 {
            let i = (self.rng.next_u64() % n.max(1)) as usize;
            if Some(i) == not || !self.eligible(i) {
                continue;
            }
            if honest && self.sim.node(i).is_some_and(|x| x.inner.liar) {
                continue;
            }
            return Some(i);
        }
        None
    }

    /// Runs `count` lookups spread over 60 s, then waits 30 s for the stragglers.
    fn lookups(
        &mut self,
        count: usize,
        disjoint: bool,
        progress: &mut dyn FnMut(&str),
    ) -> PhaseStats {
        let start = self.sim.now().mono;
        let mut want: BTreeMap<(usize, u64), (usize, usize)> = BTreeMap::new();
        let mut st = PhaseStats::default();
        for j in 0..count {
            let t = start + Duration::from_millis(60_000 * j as u64 / count.max(1) as u64);
            self.sim.run_until(t);
            let (Some(src), kind) = (self.pick(None, true), j % 3) else {
                continue;
            };
            let Some(dst) = self.pick(Some(src), false) else {
                continue;
            };
            let key = self.keys.keys(dst)[kind];
            if let Some(lid) = self.sim.with_node(src, |n, now, rng| {
                let id = n.inner.dht.lookup(key, disjoint, now, rng);
                n.pump(now.mono);
                id
            }) {
                want.insert((src, lid), (dst, kind));
                st.started += 1;
            }
        }
        self.sim.run_until(start + Duration::from_secs(90));
        let (mut hops, mut times, mut queried) = (Vec::new(), Vec::new(), 0u64);
        let srcs: Vec<usize> = want
            .keys()
            .map(|k| k.0)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for s in srcs {
            let results: Vec<LookupResult> = self
                .sim
                .with_node(s, |n, _, _| {
                    let mut v = Vec::new();
                    while let Some(r) = n.inner.dht.poll_result() {
                        v.push(r);
                    }
                    v
                })
                .unwrap_or_default();
            for r in results {
                let Some(&(dst, kind)) = want.get(&(s, r.id)) else {
                    continue;
                };
                st.finished += 1;
                queried += u64::from(r.queried);
                if r.found.is_some_and(|f| f.owner == self.keys.node_id(dst)) {
                    st.found += 1;
                    if let Some(x) = st.by_kind_found.get_mut(kind) {
                        *x += 1;
                    }
                    hops.push(r.hops);
                    times.push(r.elapsed.as_micros() as u64);
                }
            }
        }
        st.success = st.found as f64 / st.started.max(1) as f64;
        st.hops_max = hops.iter().copied().max().unwrap_or(0);
        st.hops_median = pct(&mut hops, 0.5);
        st.hops_p99 = pct(&mut hops, 0.99);
        st.time_p50_ms = pct(&mut times, 0.5) as f64 / 1000.0;
        st.time_p99_ms = pct(&mut times, 0.99) as f64 / 1000.0;
        st.queried_mean = queried as f64 / st.finished.max(1) as f64;
        progress(&format!(
            "lookups (disjoint {disjoint}): {}/{} found, hops median {} p99 {}, p50 {:.0} ms",
            st.found, st.started, st.hops_median, st.hops_p99, st.time_p50_ms
        ));
        st
    }
}

/// Runs the scenario. `make(i)` builds a fresh DHT node for node `i` (also when it comes back
/// with a fresh state); `keys` names the records' keys. `progress` gets a line per phase.
pub fn run<D, F, K>(
    name: &'static str,
    cfg: &ScenarioConfig,
    make: F,
    keys: &K,
    progress: &mut dyn FnMut(&str),
) -> Summary
where
    D: DhtUnderTest,
    F: FnMut(usize) -> D,
    K: Keys,
{
    let mut sc = SimConfig::new(cfg.seed);
    sc.net = cfg.net;
    let mut r = Runner {
        sim: Sim::new(sc),
        make,
        keys,
        key: FrameKey::for_network(&[0x5e; 32]),
        rng: SeededRng::seed_from_u64(cfg.seed ^ 0x5ce_4a10),
        bootstraps: Vec::new(),
        gone: vec![false; cfg.nodes],
    };
    let n = cfg.nodes;
    for i in 0..n {
        let d = (r.make)(i);
        let node = r.wrap(d);
        r.sim.add_node(node);
    }
    r.bootstraps = (0..cfg.bootstraps.min(n))
        .filter_map(|i| r.sim.addr(i))
        .collect();
    // Join: bootstraps first (to each other), then everyone spread over the window.
    for i in 0..n {
        let t = if i < cfg.bootstraps {
            Duration::ZERO
        } else {
            cfg.join_window.mul_f64(i as f64 / n as f64)
        };
        r.sim.run_until(t);
        let own = r.sim.addr(i);
        let bs: Vec<SocketAddr> = r
            .bootstraps
            .iter()
            .copied()
            .filter(|b| Some(*b) != own)
            .collect();
        r.sim.with_node(i, |x, now, rng| {
            x.inner.dht.join(&bs, now, rng);
            x.pump(now.mono);
        });
        if i % 1000 == 999 {
            progress(&format!("joined {}/{n}", i + 1));
        }
    }
    let t0 = r.sim.now().mono + Duration::from_secs(30);
    // Publish, spread over 60 s.
    for i in 0..n {
        r.sim
            .run_until(t0 + Duration::from_millis(60_000 * i as u64 / n.max(1) as u64));
        r.sim.with_node(i, |x, now, rng| {
            x.inner.dht.publish(1, now, rng);
            x.pump(now.mono);
        });
    }
    r.sim.run_until(r.sim.now().mono + Duration::from_secs(60));
    let mut tables: Vec<usize> = (0..n)
        .filter_map(|i| r.sim.node(i).map(|x| x.inner.dht.table_len()))
        .collect();
    let mut stored: Vec<usize> = (0..n)
        .filter_map(|i| r.sim.node(i).map(|x| x.inner.dht.stored_len()))
        .collect();
    progress(&format!(
        "published; table median {}",
        pct(&mut tables.clone(), 0.5)
    ));
    let mut rtts: Vec<u64> = (0..10_000)
        .filter_map(|_| {
            let a = (r.rng.next_u64() % n.max(1) as u64) as usize;
            let b = (r.rng.next_u64() % n.max(1) as u64) as usize;
            (a != b).then(|| r.sim.net().rtt(a, b).as_micros() as u64)
        })
        .collect();
    let median_rtt_ms = pct(&mut rtts, 0.5) as f64 / 1000.0;

    let lookups = r.lookups(cfg.lookups, false, progress);

    // Churn: down over 2 minutes; after 5 minutes a third returns as it was, a third with a
    // fresh state, a third stays gone.
    let mut churn = ChurnStats::default();
    let candidates: Vec<usize> = (cfg.bootstraps..n).collect();
    let want = ((n as f64) * cfg.churn) as usize;
    let mut chosen: Vec<usize> = Vec::new();
    let mut taken = vec![false; n];
    for _ in 0..want * 10 {
        if chosen.len() >= want || candidates.is_empty() {
            break;
        }
        let c = candidates[(r.rng.next_u64() % candidates.len() as u64) as usize];
        if !taken[c] {
            taken[c] = true;
            chosen.push(c);
        }
    }
    let start = r.sim.now().mono;
    let mut saved: BTreeMap<usize, Node<D>> = BTreeMap::new();
    for (j, &c) in chosen.iter().enumerate() {
        r.sim.run_until(
            start + Duration::from_millis(120_000 * j as u64 / chosen.len().max(1) as u64),
        );
        if let Some(node) = r.sim.take_down(c) {
            saved.insert(c, node);
            churn.down += 1;
        }
    }
    r.sim.run_until(r.sim.now().mono + Duration::from_secs(300));
    for (j, (&c, _)) in chosen.iter().zip(0..).enumerate() {
        let Some(old) = saved.remove(&c) else {
            continue;
        };
        match j % 3 {
            0 => {
                r.sim.bring_up(c, old);
                churn.back_same += 1;
            }
            1 => {
                drop(old);
                let d = (r.make)(c);
                let node = r.wrap(d);
                r.sim.bring_up(c, node);
                let bs = r.bootstraps.clone();
                r.sim.with_node(c, |x, now, rng| {
                    x.inner.dht.join(&bs, now, rng);
                    x.pump(now.mono);
                });
                churn.back_fresh += 1;
            }
            _ => {
                if let Some(g) = r.gone.get_mut(c) {
                    *g = true;
                }
                churn.gone += 1;
            }
        }
    }
    // Fresh nodes publish a higher seq once they have joined.
    r.sim.run_until(r.sim.now().mono + Duration::from_secs(30));
    for (j, &c) in chosen.iter().enumerate() {
        if j % 3 == 1 {
            r.sim.with_node(c, |x, now, rng| {
                x.inner.dht.publish(2, now, rng);
                x.pump(now.mono);
            });
        }
    }
    progress(&format!(
        "churned {} nodes; waiting for republish",
        churn.down
    ));
    let wait_end = r.sim.now().mono + cfg.republish_wait;
    let mut t = r.sim.now().mono;
    while t < wait_end {
        t = (t + Duration::from_secs(60)).min(wait_end);
        r.sim.run_until(t);
    }
    churn.after = r.lookups(cfg.lookups, false, progress);

    // Liars: 10 % of the eligible nodes, bootstraps excepted.
    let mut liars = LiarStats::default();
    let want = ((n as f64) * cfg.liars) as usize;
    for _ in 0..want * 10 {
        if liars.liars as usize >= want {
            break;
        }
        let c = (r.rng.next_u64() % n.max(1) as u64) as usize;
        if c < cfg.bootstraps || !r.eligible(c) {
            continue;
        }
        let newly = r
            .sim
            .with_node(c, |x, _, _| {
                x.inner.dht.set_liar(true);
                !std::mem::replace(&mut x.inner.liar, true)
            })
            .unwrap_or(false);
        if newly {
            liars.liars += 1;
        }
    }
    let mut saved_rng = r.rng.clone();
    liars.disjoint = r.lookups(cfg.lookups, true, progress);
    std::mem::swap(&mut r.rng, &mut saved_rng);
    liars.single_path = r.lookups(cfg.lookups, false, progress);

    let attacks = r.attacks(progress);
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..n {
        if let Some(x) = r.sim.node(i) {
            for (k, v) in x.inner.dht.counters() {
                *counters.entry(k.to_owned()).or_default() += v;
            }
        }
    }
    let time_p50_over_rtt = lookups.time_p50_ms / median_rtt_ms.max(1e-9);
    let summary = Summary {
        dht: name,
        config: *cfg,
        median_rtt_ms,
        table_median: pct(&mut tables, 0.5),
        stored_median: pct(&mut stored, 0.5),
        lookups,
        churn,
        liars,
        counters,
        attacks,
        time_p50_over_rtt,
        net: r.sim.net().stats(),
        sim: r.sim.stats(),
        node_seconds: r.sim.node_seconds(),
        virtual_seconds: r.sim.now().mono.as_secs_f64(),
        trace_hash: format!("{:016x}", r.sim.trace_hash()),
    };
    summary
}
