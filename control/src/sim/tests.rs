//! Tests of the engine with the toy ping node: determinism, latency, loss, partitions,
//! churn, the size limit and the event budget.

use std::time::Duration;

use super::toy::PingNode;
use super::*;

fn ping_sim(seed: u64, n: usize, net: NetConfig, trace: bool) -> Sim<PingNode> {
    let mut c = SimConfig::new(seed);
    c.net = net;
    c.record_trace = trace;
    let mut sim = Sim::new(c);
    let addrs: Vec<_> = (0..n).map(node_addr).collect();
    for i in 0..n {
        let peers = addrs.iter().copied().filter(|a| *a != addrs[i]).collect();
        sim.add_node(PingNode::new(peers, Duration::from_secs(1)));
    }
    sim
}

fn summary(sim: &Sim<PingNode>) -> (u64, NetStats, Vec<Vec<Duration>>) {
    let rtts = (0..sim.len())
        .filter_map(|i| sim.node(i).map(|n| n.rtts.clone()))
        .collect();
    (sim.trace_hash(), sim.net().stats(), rtts)
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let net = NetConfig {
        loss_ppm: 50_000,
        ..NetConfig::default()
    };
    let run = |seed| {
        let mut s = ping_sim(seed, 50, net, true);
        assert!(s.run_until(Duration::from_secs(20)));
        (summary(&s), s.trace().to_vec())
    };
    let (a, ta) = run(7);
    let (b, tb) = run(7);
    assert_eq!(a, b);
    assert_eq!(ta, tb);
    assert!(ta.len() > 1000, "{}", ta.len());
    let (c, _) = run(8);
    assert_ne!(a.0, c.0);
}

#[test]
fn measured_rtts_are_the_network_rtts() {
    let mut sim = ping_sim(1, 10, NetConfig::default(), false);
    sim.run_until(Duration::from_secs(30));
    let mut all: Vec<Duration> = Vec::new();
    for i in 0..10 {
        let n = sim.node(i).unwrap();
        assert!(n.pings >= 29 && n.pings <= 31, "{}", n.pings);
        all.extend(&n.rtts);
    }
    // Every RTT is one of the pair RTTs of node pairs and in 10..=300 ms.
    let pair_rtts: std::collections::BTreeSet<_> = (0..10)
        .flat_map(|a| (0..10).filter(move |b| *b != a).map(move |b| (a, b)))
        .map(|(a, b)| sim.net().rtt(a, b))
        .collect();
    assert!(all.len() > 250);
    for r in &all {
        assert!(pair_rtts.contains(r), "{r:?}");
    }
    let s = sim.net().stats();
    assert_eq!(
        s.lost + s.partitioned + s.too_big + s.to_down_node + s.no_route,
        0
    );
}

#[test]
fn a_partition_cuts_a_group_off_and_healing_restores_it() {
    let mut sim = ping_sim(2, 20, NetConfig::default(), false);
    sim.run_until(Duration::from_secs(5));
    for i in 0..10 {
        sim.net_mut().set_partition(i, 1);
    }
    let before = sim.net().stats().partitioned;
    let pongs = |s: &Sim<PingNode>| (0..20).map(|i| s.node(i).unwrap().pongs_sent).sum::<u64>();
    let p0 = pongs(&sim);
    sim.run_until(Duration::from_secs(25));
    let cut = sim.net().stats().partitioned - before;
    // About half of all pings (and none of the pongs in flight) cross the cut.
    assert!(cut > 100, "{cut}");
    let p1 = pongs(&sim);
    assert!(p1 - p0 < 400 - 100, "{}", p1 - p0);
    sim.net_mut().heal();
    let healed = sim.net().stats().partitioned;
    sim.run_until(Duration::from_secs(35));
    assert_eq!(sim.net().stats().partitioned, healed);
}

#[test]
fn a_down_node_gets_nothing_and_comes_back() {
    let mut sim = ping_sim(3, 5, NetConfig::default(), false);
    sim.run_until(Duration::from_secs(5));
    let old = sim.take_down(0).unwrap();
    assert!(!sim.is_up(0));
    sim.run_until(Duration::from_secs(15));
    assert!(sim.net().stats().to_down_node > 0);
    // Back with a fresh state: its counters start from zero.
    let fresh = PingNode::new(old.peers_for_test(), Duration::from_secs(1));
    sim.bring_up(0, fresh);
    sim.run_until(Duration::from_secs(25));
    let n = sim.node(0).unwrap();
    assert!(n.pings >= 9 && n.pings <= 11, "{}", n.pings);
    assert!(old.pings >= 4 && old.pings <= 6, "{}", old.pings);
    // Node-seconds: 4 nodes × 25 s + 5 s + 10 s.
    assert!(
        (sim.node_seconds() - 115.0).abs() < 1e-6,
        "{}",
        sim.node_seconds()
    );
    assert_eq!((sim.stats().downs, sim.stats().ups), (1, 1));
}

#[test]
fn oversized_datagrams_are_dropped_and_counted() {
    let mut sim = ping_sim(
        4,
        3,
        NetConfig {
            max_datagram: 100,
            ..NetConfig::default()
        },
        false,
    );
    sim.with_node(0, |n, _, _| n.padding = 200);
    sim.run_until(Duration::from_secs(10));
    let s = sim.net().stats();
    assert_eq!(s.too_big, sim.node(0).unwrap().pings);
    assert!(s.too_big > 5);
    assert!(sim.node(0).unwrap().rtts.is_empty());
    assert!(!sim.node(1).unwrap().rtts.is_empty());
}

#[test]
fn the_event_budget_bounds_a_run() {
    let mut c = SimConfig::new(5);
    c.event_budget = 100;
    let mut sim = Sim::new(c);
    for i in 0..10 {
        let peers = (0..10).filter(|j| *j != i).map(node_addr).collect();
        sim.add_node(PingNode::new(peers, Duration::from_millis(10)));
    }
    assert!(!sim.run_until(Duration::from_secs(100)));
    assert_eq!(sim.stats().events, 100);
}

/// A node whose timeout never advances cannot stall virtual time.
#[test]
fn a_node_stuck_in_the_past_does_not_stall_time() {
    struct Stuck(u64);
    impl SimNode for Stuck {
        fn handle_datagram(&mut self, _: SocketAddr, _: &[u8], _: Now, _: &mut dyn RngCore) {}
        fn handle_timeout(&mut self, _: Now, _: &mut dyn RngCore) {
            self.0 += 1;
        }
        fn poll_timeout(&self) -> Option<Duration> {
            Some(Duration::ZERO)
        }
        fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
            None
        }
    }
    let mut c = SimConfig::new(6);
    c.event_budget = 1_000_000;
    let mut sim = Sim::new(c);
    sim.add_node(Stuck(0));
    assert!(sim.run_until(Duration::from_micros(100)));
    let n = sim.node(0).unwrap().0;
    assert!(n > 100 && n < 100_000, "{n}");
}
