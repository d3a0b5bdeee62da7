//! NAT traversal end to end without sockets: three [`Node`]s (the code the daemon runs) on a
//! seeded in-memory network in virtual time, two of them behind simulated NATs
//! (`shadowmesh_control::sim::nat`, RFC 4787 behaviours). Node 0 is the public bootstrap and
//! both NATed nodes' home. Node 1 connects to node 2 by name: the lookup finds node 2's record
//! (its observed address and its home), the home introduces node 1, both ends probe each
//! other's candidates, and the handshake goes through the holes they opened.
//!
//! Each case fails without hole punching (the NATs drop the initiation) and says which pairs
//! must end direct: every pair where at least one side's NAT has endpoint-independent
//! mapping and the other's filter lets the probes' replies in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::{cert, WALL0};
use shadowmesh_control::cert::{Ca, NodeCert};
use shadowmesh_control::clock::Now;
use shadowmesh_control::handshake::driver::Settings;
use shadowmesh_control::identity::Identity;
use shadowmesh_control::node::{Node, NodeConfig};
use shadowmesh_control::rand::{SeedableRng, SeededRng};
use shadowmesh_control::sim::nat::{Nat, NatConfig, NatKind};
use shadowmesh_ipc::{DownMsg, Slot, UpMsg};

const PORT: u16 = 51820;

/// Where node i's socket is bound (its own address; behind a NAT, a LAN address).
fn local(i: usize) -> SocketAddr {
    match i {
        0 => SocketAddr::from(([198, 51, 100, 1], PORT)),
        _ => SocketAddr::from(([192, 0, 2, 8 * u8::try_from(i).unwrap() + 2], PORT)),
    }
}

/// External address of node i's NAT.
fn external(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, u8::try_from(i).unwrap()))
}

struct World<'a> {
    nodes: Vec<Node<'a>>,
    /// The NAT in front of each node (none for the bootstrap).
    nats: Vec<Option<Nat>>,
    asked: Vec<Vec<DownMsg>>,
    /// Datagrams in flight: (sending node, destination, payload); one 10 ms step of latency.
    wire: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    mono: Duration,
    /// Datagrams the NATs dropped.
    nat_drops: u64,
    /// Each node's socket address now (a node that roams gets another).
    locals: Vec<SocketAddr>,
}

impl World<'_> {
    fn now(&self) -> Now {
        Now {
            mono: self.mono,
            wall: WALL0 + self.mono,
        }
    }

    fn absorb(&mut self, from: usize, out: Vec<DownMsg>) {
        for m in out {
            match m {
                DownMsg::SendControl { dst, payload } => self.wire.push_back((from, dst, payload)),
                other => self.asked[from].push(other),
            }
        }
    }

    /// Routes one datagram of node `from` to `dst` through both NATs: the receiver and the
    /// source it sees, or None when a NAT drops it (or nobody has that address).
    fn route(&mut self, from: usize, dst: SocketAddr) -> Option<(usize, SocketAddr)> {
        let now = self.mono;
        let here = self.locals[from];
        let src = match self.nats[from].as_mut() {
            Some(nat) => nat.outbound(now, here, dst)?,
            None => here,
        };
        if dst.ip() == IpAddr::from([198, 51, 100, 1]) && dst.port() == PORT {
            return Some((0, src));
        }
        let to = (1..self.nodes.len()).find(|&i| external(i) == dst.ip())?;
        let inner = self.nats[to]
            .as_mut()
            .and_then(|nat| nat.inbound(now, dst.port(), src).ok());
        match inner {
            Some(a) if a == self.locals[to] => Some((to, src)),
            _ => {
                self.nat_drops += 1;
                None
            }
        }
    }

    fn run(&mut self, span: Duration) {
        let end = self.mono + span;
        // Bounded: 10 ms steps; each step delivers what was sent before it.
        while self.mono < end {
            let batch: Vec<_> = self.wire.drain(..).collect();
            for (from, dst, payload) in batch {
                let Some((to, src)) = self.route(from, dst) else {
                    continue;
                };
                let now = self.now();
                let ev = UpMsg::ControlReceived { src, payload };
                let out = self.nodes[to].handle_event(ev, now);
                self.absorb(to, out);
            }
            self.mono += Duration::from_millis(10);
            for i in 0..self.nodes.len() {
                let now = self.now();
                if self.nodes[i].poll_timeout(now) <= now.mono {
                    let out = self.nodes[i].handle_timeout(now);
                    self.absorb(i, out);
                }
            }
        }
    }

    fn current_session_endpoint(&self, i: usize) -> Option<SocketAddr> {
        let installed = self.asked[i]
            .iter()
            .any(|m| matches!(m, DownMsg::InstallSession(s) if s.slot == Slot::Current));
        let endpoint = self.asked[i].iter().rev().find_map(|m| match m {
            DownMsg::SetEndpoint { addr, .. } => Some(*addr),
            _ => None,
        });
        installed.then_some(endpoint).flatten()
    }
}

/// Node 1 (behind `a`) connects to node 2 (behind `b`) by name; returns the endpoint node 1's
/// session with node 2 uses, if one was established, how many datagrams the NATs dropped and
/// how many punches succeeded.
fn connect_through(a: NatKind, b: NatKind, seed: u64) -> (Option<SocketAddr>, u64, u64) {
    let ca = Ca::generate("nat-net").expect("ca");
    let ids: Vec<Identity> = (0..3).map(|_| Identity::generate().expect("id")).collect();
    let mut w = world(&ca, &ids, a, b, seed);
    let r = connect(&mut w);
    (r.0, r.1, r.2)
}

/// Node 1 connects to node 2 by name in `w` (set up by [`world`]).
fn connect(w: &mut World<'_>) -> (Option<SocketAddr>, u64, u64) {
    let drops_before = w.nat_drops;
    let now = w.now();
    let (_, out) = w.nodes[1].connect("n2", now).expect("connect");
    w.absorb(1, out);
    w.run(Duration::from_secs(6));
    let (stats, _) = w.nodes[1].punch_stats();
    (
        w.current_session_endpoint(1),
        w.nat_drops - drops_before,
        stats.succeeded,
    )
}

/// Three joined nodes: the public bootstrap, node 1 behind `a`, node 2 behind `b`.
fn world<'a>(ca: &Ca, ids: &'a [Identity], a: NatKind, b: NatKind, seed: u64) -> World<'a> {
    let certs: Vec<NodeCert> = (0..3).map(|i| cert(ca, &ids[i], i)).collect();
    let nodes = (0..3)
        .map(|i| {
            let config = NodeConfig {
                bootstrap: if i == 0 { vec![] } else { vec![local(0)] },
                local: vec![local(i)],
                server: i == 0,
                ..NodeConfig::default()
            };
            Node::new(
                &ids[i],
                certs[i].clone(),
                ca.public().clone(),
                vec![],
                Settings::default(),
                config,
                Now {
                    mono: Duration::ZERO,
                    wall: WALL0,
                },
                Box::new(SeededRng::seed_from_u64(seed + i as u64)),
            )
            .expect("node")
        })
        .collect();
    let nat = |kind, i: usize| {
        Some(Nat::new(
            NatConfig::new(kind),
            external(i),
            SeededRng::seed_from_u64(seed * 100 + i as u64),
        ))
    };
    let mut w = World {
        nodes,
        nats: vec![None, nat(a, 1), nat(b, 2)],
        asked: vec![Vec::new(); 3],
        wire: VecDeque::new(),
        mono: Duration::ZERO,
        nat_drops: 0,
        locals: (0..3).map(local).collect(),
    };
    for i in 0..3 {
        let now = w.now();
        let out = w.nodes[i].on_connected(now);
        w.absorb(i, out);
        w.run(Duration::from_millis(200));
    }
    w.run(Duration::from_secs(8));
    for i in 1..3 {
        assert_eq!(
            w.nodes[i].homes().len(),
            1,
            "node {i} did not take the bootstrap as its home"
        );
        let (endpoints, seq) = w.nodes[i].published();
        assert!(seq > 0, "node {i} did not publish");
        assert!(
            endpoints.iter().any(|e| e.ip() == external(i))
                || !a.independent_mapping()
                || !b.independent_mapping(),
            "node {i} does not publish its NAT's address: {endpoints:?}"
        );
    }
    w
}

#[test]
fn two_port_restricted_nats_punch_through_and_handshake() {
    let (endpoint, drops, punched) =
        connect_through(NatKind::PortRestricted, NatKind::PortRestricted, 1);
    let endpoint = endpoint.expect("no session from node 1 to node 2");
    assert_eq!(endpoint.ip(), external(2), "direct: to node 2's NAT");
    assert!(
        drops > 0,
        "the NATs dropped nothing: this did not test a NAT"
    );
    assert!(punched >= 1, "no punch succeeded");
}

#[test]
fn a_symmetric_nat_reaches_a_full_cone_one_at_the_port_its_probe_came_from() {
    let (endpoint, _, punched) = connect_through(NatKind::Symmetric, NatKind::FullCone, 2);
    assert_eq!(endpoint.expect("no session").ip(), external(2));
    assert!(punched >= 1, "no punch succeeded");
    // And the other way round: the full-cone side initiates; the symmetric side's probe
    // arrives from the port its NAT chose for us, which is where the handshake goes.
    let (endpoint, _, punched) = connect_through(NatKind::FullCone, NatKind::Symmetric, 3);
    assert_eq!(endpoint.expect("no session").ip(), external(2));
    assert!(punched >= 1, "no punch succeeded");
}

#[test]
fn address_restricted_and_port_restricted_punch_through() {
    let (endpoint, _, _) = connect_through(NatKind::AddressRestricted, NatKind::PortRestricted, 4);
    assert_eq!(endpoint.expect("no session").ip(), external(2));
}

#[test]
fn two_symmetric_nats_cannot_punch_and_say_so() {
    // Neither side can guess the port the other's NAT picks for it: no direct path. (The
    // relay path is what connects these; without it there is no session at all.)
    let (endpoint, drops, punched) = connect_through(NatKind::Symmetric, NatKind::Symmetric, 5);
    assert_eq!(endpoint, None);
    assert!(drops > 0);
    assert_eq!(punched, 0);
}

#[test]
fn every_pair_of_nat_kinds_ends_as_the_model_predicts() {
    use NatKind::*;
    // Direct unless both sides are symmetric, or one is symmetric and the other filters by
    // port (it would have to guess the port the symmetric NAT picked for it).
    let expect = |a: NatKind, b: NatKind| match (a, b) {
        (Symmetric, Symmetric) => false,
        (Symmetric, o) | (o, Symmetric) => matches!(o, FullCone | AddressRestricted),
        _ => true,
    };
    let mut table = String::new();
    let mut wrong = Vec::new();
    for (i, a) in NatKind::ALL.into_iter().enumerate() {
        for (j, b) in NatKind::ALL.into_iter().enumerate() {
            let (endpoint, _, _) = connect_through(a, b, 10 + (i * 4 + j) as u64);
            let direct = endpoint.is_some_and(|e| e.ip() == external(2));
            table.push_str(&format!(
                "{a:?} -> {b:?}: {}\n",
                if direct { "direct" } else { "no direct path" }
            ));
            if direct != expect(a, b) {
                wrong.push(format!("{a:?} -> {b:?}"));
            }
        }
    }
    eprintln!("{table}");
    assert!(wrong.is_empty(), "unexpected: {wrong:?}\n{table}");
}

#[test]
fn a_node_that_moves_behind_its_nat_punches_again_and_its_peer_is_reachable_again() {
    let ca = Ca::generate("nat-net").expect("ca");
    let ids: Vec<Identity> = (0..3).map(|_| Identity::generate().expect("id")).collect();
    let mut w = world(
        &ca,
        &ids,
        NatKind::PortRestricted,
        NatKind::PortRestricted,
        21,
    );
    let (endpoint, _, punched) = connect(&mut w);
    assert_eq!(endpoint.expect("no session").ip(), external(2));
    assert!(punched >= 1);
    let peer = w.nodes[1].driver().peers().by_name("n2").expect("peer n2");
    w.run(Duration::from_secs(12));
    assert_eq!(
        w.nodes[1].driver().peers().get(peer).unwrap().reachable,
        Some(true),
        "liveness over the punched path"
    );
    // Node 1 gets another LAN address: its NAT maps it to another port (the old mapping
    // still holds the old one), which node 2's port-restricted NAT has never been sent to.
    w.locals[1] = SocketAddr::from(([192, 0, 2, 11], PORT));
    let mut went_down = false;
    let mut back = false;
    // Bounded: 60 one-second steps.
    for _ in 0..60 {
        w.run(Duration::from_secs(1));
        match w.nodes[1].driver().peers().get(peer).unwrap().reachable {
            Some(false) => went_down = true,
            Some(true) if went_down => {
                back = true;
                break;
            }
            _ => {}
        }
    }
    let (stats, _) = w.nodes[1].punch_stats();
    assert!(
        went_down,
        "the move did not break the path: this tested nothing"
    );
    assert!(
        back,
        "n2 did not become reachable again after the move: {stats:?}"
    );
    assert!(stats.succeeded > punched, "no second punch: {stats:?}");
}
