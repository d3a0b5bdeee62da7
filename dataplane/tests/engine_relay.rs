//! A relay between two real workers: A and B each send to R's address, and R forwards by its
//! relay routes, byte for byte, without holding any key of their session. What R forwards
//! must arrive intact and authenticate at the far end; what nobody registered (another
//! source, another index, a removed route) must not be forwarded; and a route's rate limit
//! must hold.

mod engine_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use engine_common::*;
use shadowmesh_dataplane::engine::counters::DropCause;
use shadowmesh_dataplane::engine::Command;
use shadowmesh_dataplane::relay::{RelayRoute, MIN_BURST_BYTES};
use shadowmesh_dataplane::session::Limits;

const R_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)), 51820);
const STRANGER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), 51820);

/// A and B with their session, both sending to R; R relays with `rate` bytes/s per route.
struct Relayed {
    pair: Pair,
    r: Node,
}

impl Relayed {
    fn new(cfg: FakeConfig, rate: u64) -> Self {
        let pair = Pair::new(cfg.clone(), Limits::DEFAULT);
        pair.a.command(Command::SetEndpoint {
            peer: PEER_B,
            addr: R_ADDR,
        });
        pair.b.command(Command::SetEndpoint {
            peer: PEER_A,
            addr: R_ADDR,
        });
        let r = Node::new(2, cfg, R_ADDR);
        r.command(Command::SetRelay {
            from: A_ADDR,
            index: B_INDEX,
            route: RelayRoute::new(B_ADDR, rate),
        });
        r.command(Command::SetRelay {
            from: B_ADDR,
            index: A_INDEX,
            route: RelayRoute::new(A_ADDR, rate),
        });
        let mut t = Self { pair, r };
        t.turns();
        t
    }

    fn turns(&mut self) {
        self.pair.a.turn();
        self.pair.b.turn();
        self.r.turn();
    }

    /// Carries datagrams A/B → R and R → A/B until nothing moves; returns how many R got.
    fn pump(&mut self) -> usize {
        let mut to_r = 0;
        for _ in 0..256 {
            self.turns();
            let mut moved = 0;
            for (from, node) in [(A_ADDR, &self.pair.a), (B_ADDR, &self.pair.b)] {
                for s in node.wire.take_udp() {
                    assert_eq!(s.dst, R_ADDR, "a relayed peer sent around the relay");
                    let seg = s.segment_size.map_or(s.bytes.len(), usize::from);
                    self.r.wire.inject_udp(from, &s.bytes, seg);
                    moved += 1;
                    to_r += 1;
                }
            }
            for s in self.r.wire.take_udp() {
                let seg = s.segment_size.map_or(s.bytes.len(), usize::from);
                let node = if s.dst == A_ADDR {
                    &self.pair.a
                } else {
                    assert_eq!(s.dst, B_ADDR, "the relay sent somewhere else");
                    &self.pair.b
                };
                node.wire.inject_udp(R_ADDR, &s.bytes, seg);
                moved += 1;
            }
            if moved == 0
                && self.pair.a.wire.idle()
                && self.pair.b.wire.idle()
                && self.r.wire.idle()
            {
                return to_r;
            }
        }
        panic!("relay pump did not settle");
    }
}

#[test]
fn relayed_traffic_flows_both_ways_byte_for_byte_and_the_relay_reads_none_of_it() {
    let mut t = Relayed::new(FakeConfig::plain(), 0);
    t.pump(); // the keepalives of key confirmation
    let mut sent_ab = Vec::new();
    let mut sent_ba = Vec::new();
    for seed in 0..20 {
        let ab = udp_packet(A_V4, B_V4, 200 + seed as usize * 50, seed);
        let ba = udp_packet(B_V4, A_V4, 1200, 1000 + seed);
        t.pair.a.wire.inject_tun(&ab);
        t.pair.b.wire.inject_tun(&ba);
        sent_ab.push(ab);
        sent_ba.push(ba);
        t.pump();
    }
    assert_eq!(t.pair.b.wire.take_tun(), sent_ab);
    assert_eq!(t.pair.a.wire.take_tun(), sent_ba);
    let r = t.r.totals();
    assert!(r.relayed_packets >= 40, "{r:?}");
    assert_eq!(r.tun_tx_packets, 0, "the relay wrote something to its TUN");
    assert_eq!(t.r.nonzero_drops(), vec![]);
    // The ends see the relay as the peer's endpoint and drop nothing.
    assert_eq!(t.pair.a.nonzero_drops(), vec![]);
    assert_eq!(t.pair.b.nonzero_drops(), vec![]);
    t.r.assert_ownership_kept();
    assert_eq!(t.r.wire.frames_in_use(), 0, "a frame leaked at the relay");
}

#[test]
fn nothing_unregistered_is_forwarded() {
    let mut t = Relayed::new(FakeConfig::plain(), 0);
    t.pump();
    // A real data message of A's, replayed from another address: not A's route.
    let pkt = udp_packet(A_V4, B_V4, 300, 1);
    t.pair.a.wire.inject_tun(&pkt);
    t.pair.a.turn();
    t.pair.a.turn();
    let sent = t.pair.a.wire.take_udp();
    assert_eq!(sent.len(), 1);
    let before = t.r.totals().relayed_packets;
    t.r.wire
        .inject_udp(STRANGER, &sent[0].bytes, sent[0].bytes.len());
    t.r.turn();
    t.r.turn();
    assert!(t.r.wire.take_udp().is_empty(), "a stranger used A's route");
    assert_eq!(t.r.drops(DropCause::UnknownIndex), 1);
    // From A's address but another index: not a route either.
    let mut other = sent[0].bytes.clone();
    other[4..8].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    t.r.wire.inject_udp(A_ADDR, &other, other.len());
    t.r.turn();
    t.r.turn();
    assert!(t.r.wire.take_udp().is_empty());
    assert_eq!(t.r.drops(DropCause::UnknownIndex), 2);
    assert_eq!(t.r.totals().relayed_packets, before);
    // The genuine one still goes; after RemoveRelay it does not.
    t.r.wire
        .inject_udp(A_ADDR, &sent[0].bytes, sent[0].bytes.len());
    t.r.turn();
    t.r.turn();
    let fwd = t.r.wire.take_udp();
    assert_eq!(fwd.len(), 1);
    assert_eq!((fwd[0].dst, &fwd[0].bytes), (B_ADDR, &sent[0].bytes));
    t.r.command(Command::RemoveRelay {
        from: A_ADDR,
        index: B_INDEX,
    });
    t.r.wire
        .inject_udp(A_ADDR, &sent[0].bytes, sent[0].bytes.len());
    t.r.turn();
    t.r.turn();
    assert!(
        t.r.wire.take_udp().is_empty(),
        "a removed route still forwards"
    );
    assert_eq!(t.r.drops(DropCause::UnknownIndex), 3);
}

#[test]
fn a_routes_rate_limit_holds() {
    // 100 kB/s: the burst floor (128 KiB) passes, then about 100 bytes per ms.
    let mut t = Relayed::new(FakeConfig::plain(), 100_000);
    t.pump();
    let pkt = udp_packet(A_V4, B_V4, 1300, 5);
    t.pair.a.wire.inject_tun(&pkt);
    t.pair.a.turn();
    t.pair.a.turn();
    let d = t.pair.a.wire.take_udp().remove(0).bytes;
    // 300 copies at one instant (R forwards what passes; replays are B's business).
    for _ in 0..300 {
        t.r.wire.inject_udp(A_ADDR, &d, d.len());
        t.r.turn();
    }
    t.r.turn();
    let passed = t.r.wire.take_udp().len() as u64;
    let limited = t.r.drops(DropCause::RelayRateLimited);
    assert_eq!(passed + limited, 300);
    let burst = MIN_BURST_BYTES / d.len() as u64;
    assert!(
        passed >= burst - 1 && passed <= burst + 1,
        "{passed} vs {burst}"
    );
    // A second later 100 kB more may pass.
    advance(std::time::Duration::from_secs(1));
    for _ in 0..200 {
        t.r.wire.inject_udp(A_ADDR, &d, d.len());
        t.r.turn();
    }
    t.r.turn();
    let later = t.r.wire.take_udp().len() as u64;
    let expect = 100_000 / d.len() as u64;
    assert!(
        later >= expect - 1 && later <= expect + 1,
        "{later} vs {expect}"
    );
}

#[test]
fn a_gro_batch_of_one_flow_is_relayed_as_one_gso_send() {
    let mut t = Relayed::new(FakeConfig::offload(), 0);
    t.pump();
    // Ten equal data messages of A's, received by R as one GRO batch.
    let mut batch = Vec::new();
    let mut one = 0;
    for seed in 0..10 {
        let pkt = udp_packet(A_V4, B_V4, 1200, 50 + seed);
        t.pair.a.wire.inject_tun(&with_vnet_none(&pkt));
        t.pair.a.turn();
        t.pair.a.turn();
        for s in t.pair.a.wire.take_udp() {
            one = s.bytes.len();
            batch.extend_from_slice(&s.bytes);
        }
    }
    assert_eq!(batch.len(), one * 10);
    t.r.wire.inject_udp(A_ADDR, &batch, one);
    t.r.turn();
    t.r.turn();
    let out = t.r.wire.take_udp();
    assert_eq!(out.len(), 1, "one send for the batch");
    assert_eq!(out[0].segment_size, Some(one as u16));
    assert_eq!(out[0].bytes, batch);
    assert_eq!(t.r.totals().relayed_packets, 10);
}
