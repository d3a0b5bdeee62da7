//! Discovery end to end without sockets: five [`Node`]s (handshake driver + DHT + discovery
//! policy, the code the daemon runs) on an instant in-memory network in virtual time, seeded.
//! Node 0 is the bootstrap; nobody has a `[[peer]]` list. A packet to an overlay address no
//! peer routes (`NoSession` without a peer) makes the node look that address up in the DHT,
//! add the record's node as a peer and handshake with it; `connect NAME` does the same by
//! name; an unknown name ends in `NotFound`.

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
use shadowmesh_control::node::{ConnectFailure, ConnectStart, Node, NodeConfig, NodeEvent};
use shadowmesh_control::rand::{SeedableRng, SeededRng};
use shadowmesh_ipc::{DownMsg, Slot, UpMsg};

const N: usize = 5;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, u8::try_from(i + 1).unwrap()], 51820))
}

fn overlay(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(100, 64, 0, u8::try_from(i + 1).unwrap()))
}

struct World<'a> {
    nodes: Vec<Node<'a>>,
    /// Everything each node asked of its dataplane (but datagrams), in order.
    asked: Vec<Vec<DownMsg>>,
    wire: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    mono: Duration,
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

    /// Delivers datagrams (instantly) and runs timers for `span` of virtual time.
    fn run(&mut self, span: Duration) {
        let end = self.mono + span;
        // Bounded: 10 ms steps, and at most 100 000 datagrams per step.
        while self.mono < end {
            for _ in 0..100_000 {
                let Some((from, dst, payload)) = self.wire.pop_front() else {
                    break;
                };
                let Some(to) = (0..N).find(|&i| addr(i) == dst) else {
                    continue;
                };
                let now = self.now();
                let ev = UpMsg::ControlReceived {
                    src: addr(from),
                    payload,
                };
                let out = self.nodes[to].handle_event(ev, now);
                self.absorb(to, out);
            }
            self.mono += Duration::from_millis(10);
            for i in 0..N {
                let now = self.now();
                if self.nodes[i].poll_timeout(now) <= now.mono {
                    let out = self.nodes[i].handle_timeout(now);
                    self.absorb(i, out);
                }
            }
        }
    }

    /// The dataplane of `i` reports key confirmation for every pending session it was given
    /// (as the real one does on the initiator's first data packet).
    fn confirm_all(&mut self, i: usize) {
        let pending: Vec<(u32, u32)> = self.asked[i]
            .iter()
            .filter_map(|m| match m {
                DownMsg::InstallSession(s) if s.slot == Slot::Next => Some((s.peer, s.local_index)),
                _ => None,
            })
            .collect();
        for (peer, local_index) in pending {
            let now = self.now();
            let out =
                self.nodes[i].handle_event(UpMsg::SessionConfirmed { peer, local_index }, now);
            self.absorb(i, out);
        }
    }

    /// The peer id `i` routes `ip` to, from its SetRoutes requests.
    fn routed_peer(&self, i: usize, ip: IpAddr) -> Option<u32> {
        self.asked[i].iter().find_map(|m| match m {
            DownMsg::SetRoutes { peer, prefixes } if prefixes.iter().any(|(a, _)| *a == ip) => {
                Some(*peer)
            }
            _ => None,
        })
    }

    fn has_current_session(&self, i: usize, peer: u32) -> bool {
        self.asked[i].iter().any(|m| {
            matches!(m, DownMsg::InstallSession(s) if s.peer == peer && s.slot == Slot::Current)
        })
    }
}

#[test]
fn a_packet_to_an_unknown_overlay_address_finds_and_handshakes_its_node() {
    let ca = Ca::generate("disc-net").expect("ca");
    let ids: Vec<Identity> = (0..N).map(|_| Identity::generate().expect("id")).collect();
    let certs: Vec<NodeCert> = (0..N).map(|i| cert(&ca, &ids[i], i)).collect();
    let nodes = (0..N)
        .map(|i| {
            let config = NodeConfig {
                bootstrap: if i == 0 { vec![] } else { vec![addr(0)] },
                local: vec![addr(i)],
                server: true,
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
                Box::new(SeededRng::seed_from_u64(u64::try_from(i).unwrap())),
            )
            .expect("node")
        })
        .collect();
    let mut w = World {
        nodes,
        asked: vec![Vec::new(); N],
        wire: VecDeque::new(),
        mono: Duration::ZERO,
    };
    for i in 0..N {
        let now = w.now();
        let out = w.nodes[i].on_connected(now);
        w.absorb(i, out);
        w.run(Duration::from_millis(200));
    }
    w.run(Duration::from_secs(5));
    for i in 0..N {
        assert!(w.nodes[i].published().1 > 0, "node {i} did not publish");
        assert!(
            w.nodes[i].dht().routing_table().count() > 0,
            "node {i} has no contacts"
        );
    }

    // Node 1 sends to node 3's overlay address: lookup, peer, handshake.
    let now = w.now();
    let out = w.nodes[1].handle_event(
        UpMsg::NoSession {
            peer: None,
            dst: overlay(3),
        },
        now,
    );
    w.absorb(1, out);
    w.run(Duration::from_secs(3));
    let peer = w
        .routed_peer(1, overlay(3))
        .expect("node 1 routes 100.64.0.4 after the lookup");
    assert!(
        w.has_current_session(1, peer),
        "node 1 has no session with node 3"
    );
    assert!(
        w.asked[3]
            .iter()
            .any(|m| matches!(m, DownMsg::InstallSession(s) if s.slot == Slot::Next)),
        "node 3 got no pending session"
    );
    w.confirm_all(3);
    assert!(
        w.routed_peer(3, overlay(1)).is_some(),
        "node 3 does not route node 1 once confirmed"
    );

    // By name: node 4 connects to "n2".
    let now = w.now();
    let (start, out) = w.nodes[4].connect("n2", now).expect("connect");
    w.absorb(4, out);
    let ConnectStart::LookingUp(ticket) = start else {
        panic!("n2 is not a peer of node 4 yet: {start:?}");
    };
    w.run(Duration::from_secs(3));
    let ev = w.nodes[4].poll_event();
    assert_eq!(
        ev,
        Some(NodeEvent::ConnectDone {
            ticket,
            result: Ok("n2".into())
        })
    );
    let peer = w.routed_peer(4, overlay(2)).expect("node 4 routes n2");
    assert!(w.has_current_session(4, peer));

    // An unknown name: a clear NotFound, no peer.
    let now = w.now();
    let (start, out) = w.nodes[4].connect("nobody", now).expect("connect");
    w.absorb(4, out);
    let ConnectStart::LookingUp(ticket) = start else {
        panic!("{start:?}");
    };
    w.run(Duration::from_secs(10));
    assert_eq!(
        w.nodes[4].poll_event(),
        Some(NodeEvent::ConnectDone {
            ticket,
            result: Err(ConnectFailure::NotFound)
        })
    );
}
