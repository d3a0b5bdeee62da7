//! The hold queue through real workers: first packets to a destination with no route or no
//! session yet are held (not dropped), the control plane is asked, and once the route and the
//! session are installed they arrive intact and in order; under a flood the queue stays within
//! its bounds and counts what it pushes out; nothing is held past the hold time.

mod engine_common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use engine_common::*;
use shadowmesh_dataplane::engine::counters::DropCause;
use shadowmesh_dataplane::engine::hold::{
    HOLD_BYTES, HOLD_PACKETS, HOLD_TIME, NO_ROUTE_ASKS_PER_SEC,
};
use shadowmesh_dataplane::engine::{Command, Event, Slot};
use shadowmesh_dataplane::session::Limits;

/// A and B where A knows nothing of B yet (no route, no endpoint, no session): what a node
/// sees before a DHT lookup. B knows A (routes, endpoint) but has no session either.
fn unknown_peer(cfg: FakeConfig) -> Pair {
    let mut p = Pair::without_sessions(cfg);
    p.a.command(Command::RemovePeer { peer: PEER_B });
    p.settle_commands();
    p
}

/// What the control plane does on A once the lookup and the handshake are done: endpoint,
/// routes, sessions (A initiator, so `Current` on both sides here).
fn lookup_and_handshake_done(p: &Pair, seed: u8) {
    p.a.command(Command::SetEndpoint {
        peer: PEER_B,
        addr: B_ADDR,
    });
    p.a.command(Command::SetRoutes {
        peer: PEER_B,
        prefixes: Arc::from(vec![(B_V4, 32), (B_V6, 128)]),
    });
    let (sa, sb) = session_pair(A_INDEX, B_INDEX, seed, clock(), Limits::DEFAULT);
    p.install(sa, Slot::Current, sb, Slot::Current);
}

fn held(n: &Node) -> (usize, usize) {
    n.worker.held()
}

#[test]
fn first_packets_before_route_and_session_arrive_intact_and_in_order() {
    let mut p = unknown_peer(FakeConfig::plain());
    let sent: Vec<Vec<u8>> = (0..6u32)
        .map(|i| {
            let len = 64 + 200 * i as usize;
            if i % 2 == 0 {
                udp_packet(A_V4, B_V4, len, i)
            } else {
                udp_packet(A_V6, B_V6, len, i)
            }
        })
        .collect();
    for pkt in &sent {
        p.a.wire.inject_tun(pkt);
    }
    p.pump();
    assert_eq!(p.a.totals().udp_tx_datagrams, 0, "nothing can be sent yet");
    assert!(p.a.nonzero_drops().is_empty(), "{:?}", p.a.nonzero_drops());
    assert_eq!(p.a.totals().held, 6);
    let bytes: usize = sent.iter().map(Vec::len).sum();
    assert_eq!(held(&p.a), (6, bytes));
    // One ask per destination, with no peer: the control plane looks the address up.
    assert_eq!(
        p.a.take_events(),
        vec![
            Event::NoSession {
                peer: None,
                dst: B_V4
            },
            Event::NoSession {
                peer: None,
                dst: B_V6
            },
        ]
    );
    // The receive buffers went back at once: holding pins no frame of the backend.
    assert_eq!(p.a.wire.frames_in_use(), 0);

    advance(Duration::from_millis(800));
    lookup_and_handshake_done(&p, 3);
    // A packet read in the turn the commands arrive goes after the held ones.
    let later = udp_packet(A_V4, B_V4, 333, 99);
    p.a.wire.inject_tun(&later);
    p.pump();
    let mut want = sent.clone();
    want.push(later);
    assert_eq!(
        p.b.wire.take_tun(),
        want,
        "held packets changed or reordered"
    );
    assert_eq!(p.a.totals().hold_flushed, 6);
    assert_eq!(held(&p.a), (0, 0));
    for n in [&p.a, &p.b] {
        assert!(n.nonzero_drops().is_empty(), "{:?}", n.nonzero_drops());
    }
    p.assert_clean();
}

#[test]
fn packets_for_a_peer_without_a_session_wait_for_it() {
    // The route exists (a configured peer), the session does not: the ask names the peer.
    let mut p = Pair::without_sessions(FakeConfig::plain());
    p.settle_commands();
    // Without GSO (as the poll backend, or after the kernel refused it) each held packet is
    // sealed in its own transmit buffer.
    p.a.wire.set_gso(false);
    let sent: Vec<Vec<u8>> = (0..4).map(|i| udp_packet(A_V4, B_V4, 500, i)).collect();
    for pkt in &sent {
        p.a.wire.inject_tun(pkt);
    }
    p.pump();
    assert_eq!(
        p.a.take_events(),
        vec![Event::NoSession {
            peer: Some(PEER_B),
            dst: B_V4
        }]
    );
    assert_eq!(held(&p.a).0, 4);
    assert_eq!(p.a.drops(DropCause::NoSession), 0);
    let (sa, sb) = session_pair(A_INDEX, B_INDEX, 5, clock(), Limits::DEFAULT);
    p.install(sa, Slot::Current, sb, Slot::Current);
    p.pump();
    assert_eq!(p.b.wire.take_tun(), sent);
    p.assert_clean();
}

#[test]
fn held_packets_go_when_a_responder_session_is_confirmed_by_the_peer() {
    // A is the responder: its session is pending (not usable for sending) until B's first
    // packet confirms it. That confirmation comes from the network, not from a command.
    let mut p = Pair::without_sessions(FakeConfig::plain());
    let (sa, sb) = session_pair(A_INDEX, B_INDEX, 11, T0, Limits::DEFAULT);
    p.install(sa, Slot::Next, sb, Slot::Current);
    p.settle_commands();
    let sent: Vec<Vec<u8>> = (0..5).map(|i| udp_packet(A_V4, B_V4, 200, i)).collect();
    for pkt in &sent {
        p.a.wire.inject_tun(pkt);
    }
    p.pump();
    assert_eq!(held(&p.a).0, 5);
    assert!(p.b.wire.take_tun().is_empty());
    // B's first packet confirms A's session, and a reply A reads just after it goes behind
    // the held packets.
    let from_b = udp_packet(B_V4, A_V4, 100, 50);
    p.b.wire.inject_tun(&from_b);
    // (B's second turn hands its send to the fake kernel, so A reads both in one batch.)
    p.b.turn();
    p.b.turn();
    assert_eq!(p.transfer(), 1);
    let reply = udp_packet(A_V4, B_V4, 200, 51);
    p.a.wire.inject_tun(&reply);
    p.pump();
    assert_eq!(p.a.wire.take_tun(), vec![from_b]);
    let mut want = sent.clone();
    want.push(reply);
    assert_eq!(p.b.wire.take_tun(), want);
    assert_eq!(p.a.totals().hold_flushed, 5);
    p.assert_clean();
}

#[test]
fn a_held_tso_super_packet_is_split_as_usual_when_sent() {
    let mut p = unknown_peer(FakeConfig::offload());
    let stream = pattern(7, 20_000);
    let read = tso_read(false, 1, &stream, 1380);
    let small = with_vnet_none(&udp_packet(A_V4, B_V4, 300, 8));
    p.a.wire.inject_tun(&read);
    p.a.wire.inject_tun(&small);
    p.pump();
    assert_eq!(held(&p.a), (2, read.len() + small.len()));
    lookup_and_handshake_done(&p, 4);
    p.pump();
    let got: Vec<Vec<u8>> =
        p.b.wire
            .take_tun()
            .iter()
            .flat_map(|w| segments_of(w))
            .collect();
    let mut want = segments_of(&read);
    want.extend(segments_of(&small));
    assert_eq!(got.len(), want.len(), "segment count");
    assert_eq!(got, want, "the held super-packet came out changed");
    for g in &got {
        assert_checksums(g);
    }
    for n in [&p.a, &p.b] {
        assert!(n.nonzero_drops().is_empty(), "{:?}", n.nonzero_drops());
    }
    p.assert_clean();
}

#[test]
fn a_flood_stays_within_the_bounds_and_the_oldest_are_dropped_and_counted() {
    let mut p = unknown_peer(FakeConfig::plain());
    // 5,000 packets to as many unrouted overlay destinations (a scan), in rounds of 50.
    let n = 5_000u32;
    let mut last = Vec::new();
    for i in 0..n {
        let dst = IpAddr::from([100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8]);
        let pkt = udp_packet(A_V4, dst, 1200, i);
        p.a.wire.inject_tun(&pkt);
        if i >= n - HOLD_PACKETS as u32 {
            last.push(pkt);
        }
        if i % 50 == 49 {
            p.pump();
            let (count, bytes) = held(&p.a);
            assert!(count <= HOLD_PACKETS && bytes <= HOLD_BYTES);
        }
    }
    p.pump();
    assert_eq!(held(&p.a).0, HOLD_PACKETS);
    assert_eq!(p.a.totals().held, u64::from(n));
    assert_eq!(
        p.a.drops(DropCause::HoldOverflow),
        u64::from(n) - HOLD_PACKETS as u64
    );
    // The asks are capped too: a scan cannot flood the control plane.
    let asks = p.a.take_events().len();
    assert!(asks <= NO_ROUTE_ASKS_PER_SEC as usize, "{asks} asks");
    assert!(asks > 0);
    // The receive path is not starved: no frame is pinned by the held packets, and traffic
    // the other way still flows.
    assert_eq!(p.a.wire.frames_in_use(), 0);
    assert_eq!(p.a.drops(DropCause::NoBuffer), 0);
    // The newest are the ones kept: a route covering them all lets exactly those go, in order.
    p.a.command(Command::SetEndpoint {
        peer: PEER_B,
        addr: B_ADDR,
    });
    p.a.command(Command::SetRoutes {
        peer: PEER_B,
        prefixes: Arc::from(vec![(IpAddr::from([100, 64, 0, 0]), 10), (B_V6, 128)]),
    });
    let (sa, sb) = session_pair(A_INDEX, B_INDEX, 6, clock(), Limits::DEFAULT);
    p.install(sa, Slot::Current, sb, Slot::Current);
    p.pump();
    // B accepts only A's own addresses as sources; the destinations are B's to judge, not
    // its TUN's: it writes them all.
    assert_eq!(p.b.wire.take_tun(), last);
    p.assert_clean();
}

#[test]
fn large_packets_hit_the_byte_bound_first() {
    let mut p = unknown_peer(FakeConfig::offload());
    // 40 KiB super-packets: six fit in 256 KiB, fewer than the 64-packet bound.
    let reads: Vec<Vec<u8>> = (0..20u32)
        .map(|i| tso_read(false, i * 100_000, &pattern(i, 40 * 1024), 1380))
        .collect();
    for r in &reads {
        p.a.wire.inject_tun(r);
        p.pump();
        assert!(held(&p.a).1 <= HOLD_BYTES);
    }
    let (count, bytes) = held(&p.a);
    assert!(
        count < 20 && count >= HOLD_BYTES / reads[0].len() - 1,
        "{count}"
    );
    assert_eq!(bytes, count * reads[0].len());
    assert_eq!(p.a.drops(DropCause::HoldOverflow), (20 - count) as u64);
    lookup_and_handshake_done(&p, 8);
    p.pump();
    let got: Vec<Vec<u8>> =
        p.b.wire
            .take_tun()
            .iter()
            .flat_map(|w| segments_of(w))
            .collect();
    let want: Vec<Vec<u8>> = reads[20 - count..]
        .iter()
        .flat_map(|r| segments_of(r))
        .collect();
    assert_eq!(got, want, "the newest super-packets, intact and in order");
    p.assert_clean();
}

#[test]
fn held_packets_expire_after_the_hold_time() {
    let mut p = unknown_peer(FakeConfig::plain());
    let first = udp_packet(A_V4, B_V4, 100, 1);
    p.a.wire.inject_tun(&first);
    p.pump();
    advance(HOLD_TIME / 2);
    let second = udp_packet(A_V4, B_V4, 100, 2);
    p.a.wire.inject_tun(&second);
    p.pump();
    // Just before the first one's time: both still held.
    advance(HOLD_TIME / 2 - Duration::from_millis(1));
    p.pump();
    assert_eq!(held(&p.a).0, 2);
    assert_eq!(p.a.drops(DropCause::HoldExpired), 0);
    // At its time the first one goes; the second, younger, stays.
    advance(Duration::from_millis(1));
    p.pump();
    assert_eq!(held(&p.a).0, 1);
    assert_eq!(p.a.drops(DropCause::HoldExpired), 1);
    // A late lookup delivers only what had not expired.
    lookup_and_handshake_done(&p, 9);
    p.pump();
    assert_eq!(p.b.wire.take_tun(), vec![second]);
    // And later, nothing held expires on its own.
    advance(HOLD_TIME * 2);
    p.pump();
    assert_eq!(p.a.drops(DropCause::HoldExpired), 1);
    assert_eq!(p.a.totals().hold_flushed, 1);
    p.assert_clean();
}

#[test]
fn destinations_outside_the_overlay_are_not_held() {
    let mut p = unknown_peer(FakeConfig::plain());
    p.a.wire.inject_tun(&udp_packet(
        A_V4,
        "203.0.113.7".parse().expect("addr"),
        64,
        1,
    ));
    p.a.wire.inject_tun(&udp_packet(
        A_V6,
        "2001:db8::7".parse().expect("addr"),
        64,
        2,
    ));
    p.pump();
    assert_eq!(p.a.drops(DropCause::NoRoute), 2);
    assert_eq!(held(&p.a).0, 0);
    assert!(p.a.take_events().is_empty());
}
