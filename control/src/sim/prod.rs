//! The production [`Dht`] in the scenario: real node records signed with ML-DSA-87, real
//! certificates of the simulation's CA, real pairwise authentication; only sockets and clocks
//! are simulated. Lying nodes lie from within (their own keys tag the lies).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand_core::RngCore;

use super::ids::{overlay_v4, SimNetwork};
use super::scenario::{DhtUnderTest, Keys, LookupResult, Published, ScenarioConfig, Summary};
use super::wire::MessageNode;
use super::WALL_EPOCH;
use crate::cert::NodeCert;
use crate::clock::Now;
use crate::dht::key::Key;
use crate::dht::record::{NodeRecord, MAX_TTL};
use crate::dht::{Dht, DhtConfig, DhtEvent};
use crate::identity::Identity;

/// One simulated node running the production DHT.
pub struct ProdDht<'a> {
    dht: Dht<'a>,
    net: &'a SimNetwork,
    identity: &'a Identity,
    cert: &'a NodeCert,
    ids: BTreeMap<u64, u64>,
    results: VecDeque<LookupResult>,
}

impl<'a> ProdDht<'a> {
    /// A node with `identity` and `cert` of `net`'s CA.
    #[must_use]
    pub fn new(net: &'a SimNetwork, i: usize) -> Self {
        let n = &net.nodes[i];
        // The daemon's settings; the scenario's measured lookups choose their paths per phase.
        let config = DhtConfig::default();
        Self {
            dht: Dht::new(&n.identity, n.cert.clone(), net.ca_public.clone(), config),
            net,
            identity: &n.identity,
            cert: &n.cert,
            ids: BTreeMap::new(),
            results: VecDeque::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(ev) = self.dht.poll_event() {
            if let DhtEvent::LookupDone {
                id,
                record,
                closest,
                hops,
                queried,
                elapsed,
                ..
            } = ev
            {
                let Some(ours) = self.ids.remove(&id.0) else {
                    continue;
                };
                self.results.push_back(LookupResult {
                    id: ours,
                    found: record.map(|r| Published {
                        owner: r.node_id(),
                        seq: r.seq,
                    }),
                    closest: closest.first().map(|(k, _)| k.0),
                    hops,
                    queried,
                    elapsed,
                });
            }
        }
    }
}

impl MessageNode for ProdDht<'_> {
    fn handle_message(&mut self, src: SocketAddr, msg: &[u8], now: Now, rng: &mut dyn RngCore) {
        self.dht.handle_message(src, msg, now, rng);
        self.drain();
    }
    fn handle_timeout(&mut self, now: Now, rng: &mut dyn RngCore) {
        self.dht.handle_timeout(now, rng);
        self.drain();
    }
    fn poll_timeout(&self) -> Option<Duration> {
        self.dht.poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.dht.poll_transmit()
    }
}

impl DhtUnderTest for ProdDht<'_> {
    fn join(&mut self, bootstraps: &[SocketAddr], now: Now, rng: &mut dyn RngCore) {
        for b in bootstraps {
            self.dht.add_bootstrap(*b);
        }
        self.dht.join(now, rng);
        self.drain();
    }
    fn publish(&mut self, seq: u64, now: Now, rng: &mut dyn RngCore) {
        let expires = now.wall.as_secs() + MAX_TTL.as_secs();
        if let Ok(rec) = NodeRecord::sign(
            self.identity,
            self.cert,
            Vec::new(),
            Vec::new(),
            seq,
            expires,
        ) {
            self.dht.publish(rec, now, rng);
        }
        self.drain();
    }
    fn lookup(&mut self, key: [u8; 32], disjoint: bool, now: Now, rng: &mut dyn RngCore) -> u64 {
        let paths = if disjoint {
            DhtConfig::default().disjoint_paths
        } else {
            1
        };
        let id = self.dht.find_record_over(Key(key), paths, now, rng);
        self.ids.insert(id.0, id.0);
        self.drain();
        id.0
    }
    fn poll_result(&mut self) -> Option<LookupResult> {
        self.results.pop_front()
    }
    fn lie(&self, _msg: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn set_liar(&mut self, on: bool) {
        self.dht.set_liar(on);
    }
    fn table_len(&self) -> usize {
        self.dht.routing_table().count()
    }
    fn stored_len(&self) -> usize {
        self.dht.store().len()
    }
    fn own_record(&self, seq: u64, now: Now) -> Option<Vec<u8>> {
        let expires = now.wall.as_secs() + MAX_TTL.as_secs();
        NodeRecord::sign(
            self.identity,
            self.cert,
            Vec::new(),
            Vec::new(),
            seq,
            expires,
        )
        .ok()
        .map(|r| r.encode(true))
    }
    fn held(&self, now: Now) -> Vec<([u8; 32], [u8; 32], u64)> {
        let wall = now.wall.as_secs();
        self.dht
            .store()
            .iter()
            .filter(|(_, r)| r.expires > wall)
            .map(|(k, r)| (k.0, r.node_id(), r.seq))
            .collect()
    }
    fn held_from(&self, source: &[u8; 32]) -> (usize, usize) {
        (
            self.dht.store().held_for(&Key::for_node(source)),
            self.dht.store().limits().per_source,
        )
    }
    fn attack_store(
        &mut self,
        to: [u8; 32],
        addr: SocketAddr,
        key: [u8; 32],
        record: Vec<u8>,
        now: Now,
        rng: &mut dyn RngCore,
    ) -> bool {
        // The victim's certificate is public: an attacker that never met it still has its key.
        let x25519 = self
            .net
            .nodes
            .iter()
            .find(|n| n.cert.node_id() == to)
            .map(|n| n.cert.body.public.x25519);
        self.dht
            .send_store_raw(Key(to), x25519, addr, Key(key), record, now, rng)
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let st = self.dht.stats();
        let mut v = st.named();
        v.extend(st.sent_named());
        v
    }
}

/// The record keys of the production DHT.
pub struct ProdKeys<'a>(&'a SimNetwork);

impl Keys for ProdKeys<'_> {
    fn keys(&self, i: usize) -> [[u8; 32]; 3] {
        let c = &self.0.nodes[i].cert;
        [
            Key::for_node(&c.node_id()).0,
            Key::for_name(&c.body.name).0,
            Key::for_addr(IpAddr::V4(overlay_v4(i))).0,
        ]
    }
    fn node_id(&self, i: usize) -> [u8; 32] {
        self.0.nodes[i].cert.node_id()
    }
}

/// Runs the scenario on the production DHT (identities built on `threads` threads).
///
/// # Errors
/// Building the identities failed.
pub fn run_scenario(
    cfg: &ScenarioConfig,
    threads: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Summary, super::ids::IdsError> {
    let net = SimNetwork::build(cfg.nodes, cfg.seed, WALL_EPOCH.as_secs() - 60, threads)?;
    progress("identities built");
    let keys = ProdKeys(&net);
    let net_ref = &net;
    let make = |i: usize| ProdDht::new(net_ref, i);
    Ok(super::scenario::run(
        "production",
        cfg,
        make,
        &keys,
        progress,
    ))
}
