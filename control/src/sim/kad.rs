//! A small reference Kademlia (no authentication, no signatures) that the DHT scenario runs
//! until, and alongside, the production `Dht`: iterative lookups with `alpha` in flight and
//! S/Kademlia disjoint paths, k-buckets, STORE at the k closest, republish.
//!
//! It exists to test the simulator and the scenario harness end to end and to give a baseline
//! to compare the production DHT with; it is not a protocol of the project and must never
//! leave the simulator. Every parser is bounded (a malformed message is a counted drop).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand_core::RngCore;

use super::scenario::{DhtUnderTest, LookupResult, Published};
use super::wire::MessageNode;
use crate::clock::Now;

/// A 256-bit id or key.
pub type Id = [u8; 32];

const FIND: u8 = 1;
const NODES: u8 = 2;
const STORE: u8 = 3;
const STORED: u8 = 4;

/// Settings of the toy.
#[derive(Debug, Clone, Copy)]
pub struct KadConfig {
    /// Bucket size and replication.
    pub k: usize,
    /// Requests in flight per path.
    pub alpha: usize,
    /// Disjoint paths of a disjoint lookup.
    pub paths: usize,
    /// A request unanswered this long failed.
    pub timeout: Duration,
    /// Own records are stored again this often.
    pub republish: Duration,
}

impl Default for KadConfig {
    fn default() -> Self {
        Self {
            k: 20,
            alpha: 3,
            paths: 3,
            timeout: Duration::from_secs(2),
            republish: Duration::from_secs(20 * 60),
        }
    }
}

fn xor(a: &Id, b: &Id) -> Id {
    let mut d = [0u8; 32];
    for (i, x) in d.iter_mut().enumerate() {
        *x = a[i] ^ b[i];
    }
    d
}

fn bucket(a: &Id, b: &Id) -> Option<usize> {
    let d = xor(a, b);
    let lz: u32 = d
        .iter()
        .scan(false, |stop, x| {
            if *stop {
                return None;
            }
            if *x != 0 {
                *stop = true;
            }
            Some(x.leading_zeros())
        })
        .sum();
    (lz < 256).then_some(lz as usize)
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Contact {
    id: Id,
    addr: SocketAddr,
}

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(v) => {
            out.push(4);
            out.extend_from_slice(&v.octets());
        }
        IpAddr::V6(v) => {
            out.push(6);
            out.extend_from_slice(&v.octets());
        }
    }
    out.extend_from_slice(&a.port().to_le_bytes());
}

struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    fn id(&mut self) -> Option<Id> {
        self.take(32)?.try_into().ok()
    }
    fn addr(&mut self) -> Option<SocketAddr> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(self.take(4)?).ok()?)),
            6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(self.take(16)?).ok()?)),
            _ => return None,
        };
        let p = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        Some(SocketAddr::new(ip, p))
    }
}

/// A parsed message: (type, txid, sender, body reader).
fn header(msg: &[u8]) -> Option<(u8, u64, Id, Rd<'_>)> {
    let mut r = Rd(msg);
    let t = r.u8()?;
    let tx = r.u64()?;
    let from = r.id()?;
    Some((t, tx, from, r))
}

fn head(t: u8, tx: u64, from: &Id) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.push(t);
    m.extend_from_slice(&tx.to_le_bytes());
    m.extend_from_slice(from);
    m
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum St {
    New,
    Flight,
    Done,
    Failed,
}

struct Path {
    list: BTreeMap<Id, (Contact, St, u32)>, // by distance to the key
    flight: usize,
    done: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    User,
    Publish,
    Join,
}

struct Lookup {
    key: Id,
    want_value: bool,
    purpose: Purpose,
    started: Duration,
    paths: Vec<Path>,
    queried: BTreeSet<Id>,
    found: Option<(Published, u32)>,
    queries: u32,
}

struct Pending {
    lookup: Option<u64>,
    path: usize,
    contact: Option<Contact>,
    deadline: Duration,
}

/// Counters of the toy.
#[derive(Debug, Clone, Copy, Default)]
pub struct KadStats {
    /// Messages that failed to parse.
    pub malformed: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// STOREs accepted.
    pub stores: u64,
}

/// The toy Kademlia node.
pub struct Kad {
    id: Id,
    cfg: KadConfig,
    buckets: Vec<Vec<Contact>>,
    store: BTreeMap<Id, Published>,
    own: Option<Published>,
    own_keys: Vec<Id>,
    next_republish: Option<Duration>,
    lookups: BTreeMap<u64, Lookup>,
    pending: BTreeMap<u64, Pending>,
    deadlines: BTreeSet<(Duration, u64)>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    results: VecDeque<LookupResult>,
    next_lookup: u64,
    recent_finds: VecDeque<(u64, Id)>,
    /// Counters.
    pub stats: KadStats,
}

impl Kad {
    /// A node with id `id`, publishing `own` under `own_keys` when asked.
    #[must_use]
    pub fn new(id: Id, cfg: KadConfig, own: Published, own_keys: Vec<Id>) -> Self {
        Self {
            id,
            cfg,
            buckets: vec![Vec::new(); 256],
            store: BTreeMap::new(),
            own: Some(own),
            own_keys,
            next_republish: None,
            lookups: BTreeMap::new(),
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            out: VecDeque::new(),
            results: VecDeque::new(),
            next_lookup: 1,
            recent_finds: VecDeque::new(),
            stats: KadStats::default(),
        }
    }

    fn learn(&mut self, c: Contact) {
        let Some(b) = bucket(&self.id, &c.id) else {
            return;
        };
        let k = self.cfg.k;
        let Some(v) = self.buckets.get_mut(b) else {
            return;
        };
        if let Some(pos) = v.iter().position(|x| x.id == c.id) {
            // Most recently seen last.
            let mut x = v.remove(pos);
            x.addr = c.addr;
            v.push(x);
        } else if v.len() < k {
            v.push(c);
        }
    }

    fn forget(&mut self, id: &Id) {
        if let Some(v) = bucket(&self.id, id).and_then(|b| self.buckets.get_mut(b)) {
            v.retain(|c| c.id != *id);
        }
    }

    fn closest(&self, key: &Id, n: usize) -> Vec<Contact> {
        let mut all: Vec<(Id, Contact)> = self
            .buckets
            .iter()
            .flatten()
            .map(|c| (xor(&c.id, key), *c))
            .collect();
        all.sort();
        all.into_iter().take(n).map(|(_, c)| c).collect()
    }

    /// The contacts of the routing table farthest from `key` (what a liar answers).
    fn farthest(&self, key: &Id, n: usize) -> Vec<Contact> {
        let mut all: Vec<(Id, Contact)> = self
            .buckets
            .iter()
            .flatten()
            .map(|c| (xor(&c.id, key), *c))
            .collect();
        all.sort();
        all.into_iter().rev().take(n).map(|(_, c)| c).collect()
    }

    fn request(&mut self, dst: SocketAddr, msg: Vec<u8>, p: Pending, tx: u64) {
        self.deadlines.insert((p.deadline, tx));
        self.pending.insert(tx, p);
        self.out.push_back((dst, msg));
    }

    fn start(
        &mut self,
        key: Id,
        want_value: bool,
        purpose: Purpose,
        paths: usize,
        now: Now,
    ) -> u64 {
        let id = self.next_lookup;
        self.next_lookup += 1;
        let paths = paths.max(1);
        let mut l = Lookup {
            key,
            want_value,
            purpose,
            started: now.mono,
            paths: (0..paths)
                .map(|_| Path {
                    list: BTreeMap::new(),
                    flight: 0,
                    done: false,
                })
                .collect(),
            queried: BTreeSet::new(),
            found: None,
            queries: 0,
        };
        // Own record: found at once, zero hops.
        if want_value {
            if let Some(r) = self.store.get(&key) {
                l.found = Some((*r, 0));
            }
        }
        for (j, c) in self.closest(&key, self.cfg.k).into_iter().enumerate() {
            if let Some(p) = l.paths.get_mut(j % paths) {
                p.list.insert(xor(&c.id, &key), (c, St::New, 0));
            }
        }
        self.lookups.insert(id, l);
        id
    }

    fn step(&mut self, lid: u64, now: Now, rng: &mut dyn RngCore) {
        let (k, alpha, timeout) = (self.cfg.k, self.cfg.alpha, self.cfg.timeout);
        let Some(mut l) = self.lookups.remove(&lid) else {
            return;
        };
        let mut sends = Vec::new();
        if l.found.is_none() || !l.want_value {
            for (pi, p) in l.paths.iter_mut().enumerate() {
                if p.done {
                    continue;
                }
                let mut considered = 0;
                let mut all_done = true;
                for (_, (c, st, depth)) in p.list.iter_mut() {
                    if considered >= k {
                        break;
                    }
                    if *st == St::Failed {
                        continue;
                    }
                    considered += 1;
                    if *st == St::New && p.flight < alpha && l.queried.insert(c.id) {
                        *st = St::Flight;
                        p.flight += 1;
                        sends.push((pi, *c, *depth));
                    }
                    if *st != St::Done {
                        all_done = false;
                    }
                }
                if all_done || (p.flight == 0 && sends.iter().all(|s| s.0 != pi)) {
                    p.done = true;
                }
            }
        }
        let finished = (l.want_value && l.found.is_some()) || l.paths.iter().all(|p| p.done);
        for (pi, c, _) in sends {
            let tx = rng.next_u64();
            let mut m = head(FIND, tx, &self.id);
            m.extend_from_slice(&l.key);
            m.push(u8::from(l.want_value));
            l.queries += 1;
            self.request(
                c.addr,
                m,
                Pending {
                    lookup: Some(lid),
                    path: pi,
                    contact: Some(c),
                    deadline: now.mono + timeout,
                },
                tx,
            );
        }
        if finished {
            self.finish(lid, l, now, rng);
        } else {
            self.lookups.insert(lid, l);
        }
    }

    fn finish(&mut self, lid: u64, l: Lookup, now: Now, rng: &mut dyn RngCore) {
        let elapsed = now.mono.saturating_sub(l.started);
        let mut answered: Vec<(Id, Contact, u32)> = l
            .paths
            .iter()
            .flat_map(|p| p.list.iter())
            .filter(|(_, (_, st, _))| *st == St::Done)
            .map(|(d, (c, _, depth))| (*d, *c, *depth))
            .collect();
        answered.sort();
        answered.dedup_by(|a, b| a.1.id == b.1.id);
        match l.purpose {
            Purpose::User => {
                let hops = l
                    .found
                    .map(|f| f.1)
                    .or_else(|| answered.first().map(|a| a.2 + 1))
                    .unwrap_or(0);
                self.results.push_back(LookupResult {
                    id: lid,
                    found: l.found.map(|f| f.0),
                    closest: answered.first().map(|a| a.1.id),
                    hops,
                    queried: l.queries,
                    elapsed,
                });
            }
            Purpose::Publish => {
                if let Some(rec) = self.own {
                    for (_, c, _) in answered.iter().take(self.cfg.k) {
                        let tx = rng.next_u64();
                        let mut m = head(STORE, tx, &self.id);
                        m.extend_from_slice(&l.key);
                        m.extend_from_slice(&rec.owner);
                        m.extend_from_slice(&rec.seq.to_le_bytes());
                        self.request(
                            c.addr,
                            m,
                            Pending {
                                lookup: None,
                                path: 0,
                                contact: Some(*c),
                                deadline: now.mono + self.cfg.timeout,
                            },
                            tx,
                        );
                    }
                    // Our own copy, so we answer for it too when we are among the closest.
                    self.store.insert(l.key, rec);
                }
            }
            Purpose::Join => {}
        }
    }

    fn on_reply(
        &mut self,
        tx: u64,
        from: Id,
        src: SocketAddr,
        mut r: Rd<'_>,
        now: Now,
        rng: &mut dyn RngCore,
    ) {
        let Some(p) = self.pending.remove(&tx) else {
            return;
        };
        self.deadlines.remove(&(p.deadline, tx));
        if p.contact.is_some_and(|c| c.id != from) {
            return;
        }
        self.learn(Contact {
            id: from,
            addr: src,
        });
        let Some(lid) = p.lookup else {
            // A join seed answered: look ourselves up from what it told us.
            if p.contact.is_none() {
                if let Some(cs) = parse_nodes(&mut r) {
                    for c in cs.1 {
                        if c.id != self.id {
                            self.learn(c);
                        }
                    }
                }
                let id = self.id;
                let lid = self.start(id, false, Purpose::Join, 1, now);
                self.step(lid, now, rng);
            }
            return;
        };
        let Some((value, contacts)) = parse_nodes(&mut r) else {
            self.stats.malformed += 1;
            return;
        };
        let me = self.id;
        let k = self.cfg.k;
        let Some(l) = self.lookups.get_mut(&lid) else {
            return;
        };
        let key = l.key;
        let mut depth = 0;
        if let Some(path) = l.paths.get_mut(p.path) {
            if let Some(e) = path.list.get_mut(&xor(&from, &key)) {
                if e.1 == St::Flight {
                    path.flight = path.flight.saturating_sub(1);
                }
                e.1 = St::Done;
                depth = e.2 + 1;
            }
            for c in contacts.iter().take(k) {
                if c.id == me || l.queried.contains(&c.id) {
                    continue;
                }
                path.list
                    .entry(xor(&c.id, &key))
                    .or_insert((*c, St::New, depth));
            }
        }
        if let Some(v) = value {
            if l.want_value && l.found.is_none_or(|f| v.seq > f.0.seq) {
                l.found = Some((v, depth));
            }
        }
        for c in contacts {
            if c.id != me {
                self.learn(c);
            }
        }
        self.step(lid, now, rng);
    }
}

fn parse_nodes(r: &mut Rd<'_>) -> Option<(Option<Published>, Vec<Contact>)> {
    let value = match r.u8()? {
        0 => None,
        1 => Some(Published {
            owner: r.id()?,
            seq: r.u64()?,
        }),
        _ => return None,
    };
    let n = usize::from(r.u8()?).min(64);
    let mut cs = Vec::with_capacity(n);
    for _ in 0..n {
        let id = r.id()?;
        let addr = r.addr()?;
        cs.push(Contact { id, addr });
    }
    Some((value, cs))
}

fn nodes_msg(tx: u64, me: &Id, value: Option<&Published>, cs: &[Contact]) -> Vec<u8> {
    let mut m = head(NODES, tx, me);
    match value {
        Some(v) => {
            m.push(1);
            m.extend_from_slice(&v.owner);
            m.extend_from_slice(&v.seq.to_le_bytes());
        }
        None => m.push(0),
    }
    m.push(u8::try_from(cs.len()).unwrap_or(u8::MAX));
    for c in cs.iter().take(255) {
        m.extend_from_slice(&c.id);
        put_addr(&mut m, &c.addr);
    }
    m
}

impl MessageNode for Kad {
    fn handle_message(&mut self, src: SocketAddr, msg: &[u8], now: Now, rng: &mut dyn RngCore) {
        let Some((t, tx, from, mut r)) = header(msg) else {
            self.stats.malformed += 1;
            return;
        };
        match t {
            FIND => {
                let (Some(key), Some(want)) = (r.id(), r.u8()) else {
                    self.stats.malformed += 1;
                    return;
                };
                // Remembered (bounded) so the liar wrapper knows what the reply is about.
                if self.recent_finds.len() >= 64 {
                    self.recent_finds.pop_front();
                }
                self.recent_finds.push_back((tx, key));
                let value = if want == 1 {
                    self.store.get(&key).copied()
                } else {
                    None
                };
                let cs: Vec<Contact> = self
                    .closest(&key, self.cfg.k + 1)
                    .into_iter()
                    .filter(|c| c.id != from)
                    .take(self.cfg.k)
                    .collect();
                self.out
                    .push_back((src, nodes_msg(tx, &self.id, value.as_ref(), &cs)));
                self.learn(Contact {
                    id: from,
                    addr: src,
                });
            }
            STORE => {
                let (Some(key), Some(owner), Some(seq)) = (r.id(), r.id(), r.u64()) else {
                    self.stats.malformed += 1;
                    return;
                };
                let v = Published { owner, seq };
                if self.store.get(&key).is_none_or(|old| seq > old.seq) {
                    self.store.insert(key, v);
                    self.stats.stores += 1;
                }
                self.out.push_back((src, head(STORED, tx, &self.id)));
                self.learn(Contact {
                    id: from,
                    addr: src,
                });
            }
            NODES => self.on_reply(tx, from, src, r, now, rng),
            STORED => {
                if let Some(p) = self.pending.remove(&tx) {
                    self.deadlines.remove(&(p.deadline, tx));
                }
                self.learn(Contact {
                    id: from,
                    addr: src,
                });
            }
            _ => self.stats.malformed += 1,
        }
    }

    fn handle_timeout(&mut self, now: Now, rng: &mut dyn RngCore) {
        // Bounded by the pending requests present now.
        while let Some(&(t, tx)) = self.deadlines.first() {
            if t > now.mono {
                break;
            }
            self.deadlines.pop_first();
            let Some(p) = self.pending.remove(&tx) else {
                continue;
            };
            self.stats.timeouts += 1;
            if let Some(c) = p.contact {
                self.forget(&c.id);
            }
            if let Some(lid) = p.lookup {
                if let Some(l) = self.lookups.get_mut(&lid) {
                    if let (Some(path), Some(c)) = (l.paths.get_mut(p.path), p.contact) {
                        if let Some(e) = path.list.get_mut(&xor(&c.id, &l.key)) {
                            e.1 = St::Failed;
                        }
                        path.flight = path.flight.saturating_sub(1);
                    }
                }
                self.step(lid, now, rng);
            }
        }
        if self.next_republish.is_some_and(|t| t <= now.mono) {
            self.next_republish = Some(now.mono + self.cfg.republish);
            for key in self.own_keys.clone() {
                let lid = self.start(key, false, Purpose::Publish, 1, now);
                self.step(lid, now, rng);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        [self.deadlines.first().map(|d| d.0), self.next_republish]
            .into_iter()
            .flatten()
            .min()
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }
}

impl DhtUnderTest for Kad {
    fn join(&mut self, bootstraps: &[SocketAddr], now: Now, rng: &mut dyn RngCore) {
        for b in bootstraps {
            let tx = rng.next_u64();
            let mut m = head(FIND, tx, &self.id);
            m.extend_from_slice(&self.id);
            m.push(0);
            self.request(
                *b,
                m,
                Pending {
                    lookup: None,
                    path: 0,
                    contact: None,
                    deadline: now.mono + self.cfg.timeout,
                },
                tx,
            );
        }
    }

    fn publish(&mut self, seq: u64, now: Now, rng: &mut dyn RngCore) {
        if let Some(o) = self.own.as_mut() {
            o.seq = seq;
        }
        // Republish from now on, at a random phase so the network's load spreads.
        let r = self.cfg.republish.as_micros().max(1) as u64;
        self.next_republish = Some(
            now.mono
                + self.cfg.republish / 2
                + Duration::from_micros(rng.next_u64() % (r / 2).max(1)),
        );
        for key in self.own_keys.clone() {
            let lid = self.start(key, false, Purpose::Publish, 1, now);
            self.step(lid, now, rng);
        }
    }

    fn lookup(&mut self, key: Id, disjoint: bool, now: Now, rng: &mut dyn RngCore) -> u64 {
        let paths = if disjoint { self.cfg.paths } else { 1 };
        let lid = self.start(key, true, Purpose::User, paths, now);
        self.step(lid, now, rng);
        lid
    }

    fn poll_result(&mut self) -> Option<LookupResult> {
        self.results.pop_front()
    }

    fn lie(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let (t, tx, _, _) = header(msg)?;
        if t != NODES {
            return None;
        }
        // A liar never returns the value and answers with the contacts farthest from the key.
        let key = self.recent_finds.iter().rev().find(|f| f.0 == tx)?.1;
        Some(nodes_msg(
            tx,
            &self.id,
            None,
            &self.farthest(&key, self.cfg.k),
        ))
    }

    fn table_len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    fn stored_len(&self) -> usize {
        self.store.len()
    }
}

/// Node ids and record keys of a toy network: ids from the seed, name and address keys hashed
/// as the contract's `Key::for_name` / `Key::for_addr` do.
pub struct KadKeys {
    ids: Vec<Id>,
}

impl KadKeys {
    /// Ids of `n` nodes from `seed`.
    #[must_use]
    pub fn new(n: usize, seed: u64) -> Self {
        use rand_core::SeedableRng;
        let mut r = crate::rand::SeededRng::seed_from_u64(seed ^ 0x0ad);
        Self {
            ids: (0..n)
                .map(|_| {
                    let mut id = [0u8; 32];
                    r.fill_bytes(&mut id);
                    id
                })
                .collect(),
        }
    }
}

impl super::scenario::Keys for KadKeys {
    fn keys(&self, i: usize) -> [Id; 3] {
        [
            self.node_id(i),
            crate::digest::sha256(&[
                b"shadowmesh dht name v1\0",
                super::ids::node_name(i).as_bytes(),
            ]),
            crate::digest::sha256(&[
                b"shadowmesh dht addr v1\0",
                &super::ids::overlay_v4(i).octets(),
            ]),
        ]
    }
    fn node_id(&self, i: usize) -> Id {
        self.ids.get(i).copied().unwrap_or_default()
    }
}

/// Runs the scenario on the reference Kademlia.
pub fn run_scenario(
    cfg: &super::scenario::ScenarioConfig,
    progress: &mut dyn FnMut(&str),
) -> super::scenario::Summary {
    use super::scenario::Keys;
    let keys = KadKeys::new(cfg.nodes, cfg.seed);
    let make = |i: usize| {
        let id = keys.node_id(i);
        Kad::new(
            id,
            KadConfig::default(),
            Published { owner: id, seq: 1 },
            keys.keys(i).to_vec(),
        )
    };
    super::scenario::run("reference-kademlia", cfg, make, &keys, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rand::SeededRng;
    use rand_core::SeedableRng;

    fn node(b: u8) -> Kad {
        let id = [b; 32];
        Kad::new(
            id,
            KadConfig::default(),
            Published { owner: id, seq: 1 },
            vec![id],
        )
    }

    fn sa(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i], 4500))
    }

    fn store_msg(from: u8, key: Id, owner: Id, seq: u64) -> Vec<u8> {
        let mut m = head(STORE, 1, &[from; 32]);
        m.extend_from_slice(&key);
        m.extend_from_slice(&owner);
        m.extend_from_slice(&seq.to_le_bytes());
        m
    }

    #[test]
    fn a_lower_or_equal_seq_does_not_replace_a_record() {
        let mut n = node(1);
        let mut rng = SeededRng::seed_from_u64(1);
        let now = Now::both(Duration::ZERO);
        let key = [9; 32];
        n.handle_message(sa(2), &store_msg(2, key, [9; 32], 5), now, &mut rng);
        n.handle_message(sa(3), &store_msg(3, key, [9; 32], 4), now, &mut rng);
        n.handle_message(sa(3), &store_msg(3, key, [9; 32], 5), now, &mut rng);
        assert_eq!(n.store.get(&key).map(|p| p.seq), Some(5));
        assert_eq!(n.stats.stores, 1);
        // Truncated messages are counted drops.
        let m = store_msg(2, key, [9; 32], 6);
        for cut in 0..m.len() {
            n.handle_message(sa(2), &m[..cut], now, &mut rng);
        }
        assert_eq!(n.stats.malformed as usize, m.len());
        assert_eq!(n.store.get(&key).map(|p| p.seq), Some(5));
    }

    #[test]
    fn a_liar_answers_without_the_value_and_with_far_contacts() {
        let mut n = node(0);
        let mut rng = SeededRng::seed_from_u64(2);
        let now = Now::both(Duration::ZERO);
        for b in 1..=40u8 {
            n.learn(Contact {
                id: [b; 32],
                addr: sa(b),
            });
        }
        let key = [1; 32];
        n.handle_message(sa(50), &store_msg(50, key, [1; 32], 1), now, &mut rng);
        let mut find = head(FIND, 77, &[50; 32]);
        find.extend_from_slice(&key);
        find.push(1);
        n.handle_message(sa(50), &find, now, &mut rng);
        let mut reply = None;
        while let Some((_, m)) = n.poll_transmit() {
            if m.first() == Some(&NODES) {
                reply = Some(m);
            }
        }
        let reply = reply.unwrap();
        let honest = parse_nodes(&mut header(&reply).unwrap().3).unwrap();
        assert!(honest.0.is_some());
        let lie = n.lie(&reply).unwrap();
        let (t, tx, _, mut r) = header(&lie).unwrap();
        assert_eq!((t, tx), (NODES, 77));
        let lied = parse_nodes(&mut r).unwrap();
        assert!(lied.0.is_none());
        let worst_honest = honest.1.iter().map(|c| xor(&c.id, &key)).max().unwrap();
        assert!(lied.1.iter().all(|c| xor(&c.id, &key) > worst_honest));
        // Other messages pass unchanged.
        assert!(n.lie(&store_msg(1, key, key, 1)).is_none());
    }
}
