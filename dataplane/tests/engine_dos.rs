//! The engine's defences against forged initiations and control floods (issue 9), over real
//! workers on the fake backend:
//! - forged responder sessions (installed by a control plane that answered forged
//!   initiations) cannot displace the real pending one, and key confirmation promotes the real
//!   one, drops the others and is reported exactly once, even across workers;
//! - a pending session of a peer the dataplane knows nothing else about still confirms;
//! - control datagrams are rate-limited per source before they cost a copy, and counted;
//! - events travel on a queue a datagram flood cannot fill; an event lost to a full queue
//!   (rekey, confirmation) is asked or reported again.

mod engine_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use engine_common::*;
use shadowmesh_dataplane::engine::counters::DropCause;
use shadowmesh_dataplane::engine::{Command, Event, Slot};
use shadowmesh_dataplane::session::{Limits, Session, MAX_PENDING};

/// Where the attacker sends from (documentation range, never leaves the fake wire).
const ATTACKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)), 4444);
/// B's local index of the real new session.
const REAL_B: u32 = 0xB000_0100;
/// A's local index of the real new session.
const REAL_A: u32 = 0xA000_0100;

/// B's local index of forged session `i`.
fn forged_index(i: u32) -> u32 {
    0xB000_0200 + i
}

/// A responder-side session whose keys nobody else holds (what the control plane installs
/// after answering a forged initiation: the forger cannot derive its keys).
fn forged(i: u32) -> Arc<Session> {
    let (_, kb) = keys(100 + i as u8);
    Arc::new(
        Session::new(
            forged_index(i),
            0xDEAD_0000 + i,
            PEER_A,
            &kb,
            clock(),
            Limits::DEFAULT,
        )
        .expect("key"),
    )
}

fn install_pending(n: &Node, s: Arc<Session>) {
    n.command(Command::InstallSession {
        peer: PEER_A,
        slot: Slot::Next,
        session: s,
    });
}

fn confirmations(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::SessionConfirmed { peer, local_index } => {
                assert_eq!(*peer, PEER_A);
                Some(*local_index)
            }
            _ => None,
        })
        .collect()
}

/// A control datagram (type 5) of `len` bytes.
fn control(len: usize, tag: u8) -> Vec<u8> {
    let mut d = vec![tag; len];
    d[0] = 5;
    d[1..4].fill(0);
    d
}

/// Runs `n`'s worker until its backend holds nothing (bounded).
fn drain(n: &mut Node) {
    for _ in 0..256 {
        n.turn();
        if n.wire.idle() {
            return;
        }
    }
    panic!("worker did not settle");
}

/// A, B established; then B answers a rekey from A (`REAL_*`) with forged pending sessions
/// installed before and after it. Returns the pair with A sending on the new session.
fn rekey_among_forgeries(before: u32, after: u32) -> (Pair, Arc<Session>) {
    let mut p = Pair::new(FakeConfig::plain(), Limits::DEFAULT);
    p.settle_commands();
    let (sa, sb) = session_pair(REAL_A, REAL_B, 42, clock(), Limits::DEFAULT);
    for i in 0..before {
        install_pending(&p.b, forged(i));
    }
    install_pending(&p.b, Arc::clone(&sb));
    for i in before..before + after {
        install_pending(&p.b, forged(i));
    }
    p.a.command(Command::InstallSession {
        peer: PEER_B,
        slot: Slot::Current,
        session: sa,
    });
    p.settle_commands();
    (p, sb)
}

#[test]
fn forged_pending_sessions_do_not_displace_the_real_one() {
    // 3 forged before the real one, 4 after: 8 pending, all kept.
    let (mut p, sb) = rekey_among_forgeries(3, MAX_PENDING as u32 - 4);
    {
        let t = p.b.worker.tables();
        let s = &t.peers[&PEER_A].sessions;
        assert_eq!(s.pending().len(), MAX_PENDING);
        assert_eq!(s.current.as_ref().map(|s| s.local_index), Some(B_INDEX));
        for i in 0..7 {
            assert!(t.by_index.contains_key(&forged_index(i)));
        }
    }
    // B still sends on the established session while the new one waits.
    let pkt = udp_packet(B_V4, A_V4, 100, 1);
    p.b.wire.inject_tun(&pkt);
    p.pump();
    assert_eq!(p.a.wire.take_tun(), vec![pkt]);

    // A's first packet on the real new session confirms it.
    let pkt = udp_packet(A_V4, B_V4, 100, 2);
    p.a.wire.inject_tun(&pkt);
    p.pump();
    assert_eq!(p.b.wire.take_tun(), vec![pkt]);
    assert!(sb.confirmed());
    let t = p.b.worker.tables();
    let s = &t.peers[&PEER_A].sessions;
    assert_eq!(s.current.as_ref().map(|s| s.local_index), Some(REAL_B));
    assert_eq!(s.previous.as_ref().map(|s| s.local_index), Some(B_INDEX));
    assert!(s.pending().is_empty(), "the forged pending sessions stay");
    for i in 0..7 {
        assert!(
            !t.by_index.contains_key(&forged_index(i)),
            "forged session {i} still mapped"
        );
    }
    assert_eq!(confirmations(&p.b.take_events()), vec![REAL_B]);
    // More traffic on it reports nothing more.
    let pkt = udp_packet(A_V4, B_V4, 100, 3);
    p.a.wire.inject_tun(&pkt);
    p.pump();
    assert_eq!(p.b.wire.take_tun(), vec![pkt]);
    assert!(confirmations(&p.b.take_events()).is_empty());
    // B answers on the new session.
    let before = p.a.totals().tun_tx_packets;
    let pkt = udp_packet(B_V4, A_V4, 100, 4);
    p.b.wire.inject_tun(&pkt);
    p.b.turn();
    p.b.turn();
    let sent = p.b.wire.take_udp();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        u32::from_le_bytes(sent[0].bytes[4..8].try_into().unwrap()),
        REAL_A
    );
    for s in sent {
        p.a.wire.inject_udp(B_ADDR, &s.bytes, s.bytes.len());
    }
    p.pump();
    assert_eq!(p.a.totals().tun_tx_packets, before + 1);
    assert_eq!(p.b.totals().total_drops(), 0, "{:?}", p.b.nonzero_drops());
    p.assert_clean();
}

#[test]
fn more_pending_sessions_than_places_push_out_the_oldest_only() {
    // The real one first, then MAX_PENDING forged: the real one is the oldest and goes.
    let (mut p, sb) = rekey_among_forgeries(0, MAX_PENDING as u32);
    {
        let t = p.b.worker.tables();
        let s = &t.peers[&PEER_A].sessions;
        assert_eq!(s.pending().len(), MAX_PENDING);
        assert!(
            !t.by_index.contains_key(&REAL_B),
            "evicted index still mapped"
        );
        // current and previous are never touched by pending sessions.
        assert_eq!(s.current.as_ref().map(|s| s.local_index), Some(B_INDEX));
    }
    p.a.wire.inject_tun(&udp_packet(A_V4, B_V4, 100, 1));
    p.pump();
    assert_eq!(p.b.drops(DropCause::UnknownIndex), 1);
    assert!(!sb.confirmed());
    assert!(confirmations(&p.b.take_events()).is_empty());
}

#[test]
fn exactly_one_worker_reports_a_confirmation_and_every_worker_promotes() {
    set_clock(T0);
    let mut a = Node::new(0, FakeConfig::plain(), A_ADDR);
    let mut bs: Vec<Node> = (1..=3)
        .map(|id| Node::new(id, FakeConfig::plain(), B_ADDR))
        .collect();
    let (sa, sb) = session_pair(REAL_A, REAL_B, 42, T0, Limits::DEFAULT);
    a.command(Command::SetEndpoint {
        peer: PEER_B,
        addr: B_ADDR,
    });
    a.command(Command::SetRoutes {
        peer: PEER_B,
        prefixes: Arc::from(vec![(B_V4, 32)]),
    });
    a.command(Command::InstallSession {
        peer: PEER_B,
        slot: Slot::Current,
        session: sa,
    });
    for b in &mut bs {
        b.command(Command::SetRoutes {
            peer: PEER_A,
            prefixes: Arc::from(vec![(A_V4, 32)]),
        });
        b.command(Command::SetEndpoint {
            peer: PEER_A,
            addr: A_ADDR,
        });
        install_pending(b, forged(0));
        install_pending(b, Arc::clone(&sb));
        b.turn();
    }
    a.turn();
    // Two packets from A: the first reaches worker 1, the second worker 2.
    for (i, b) in bs.iter_mut().take(2).enumerate() {
        a.wire.inject_tun(&udp_packet(A_V4, B_V4, 64, i as u32));
        a.turn();
        a.turn();
        for s in a.wire.take_udp() {
            b.wire.inject_udp(A_ADDR, &s.bytes, s.bytes.len());
        }
        drain(b);
        assert_eq!(b.wire.take_tun().len(), 1);
    }
    assert_eq!(confirmations(&bs[0].take_events()), vec![REAL_B]);
    assert!(
        confirmations(&bs[1].take_events()).is_empty(),
        "a second worker reported the same confirmation"
    );
    for b in &bs[..2] {
        let s = &b.worker.tables().peers[&PEER_A].sessions;
        assert_eq!(s.current.as_ref().map(|s| s.local_index), Some(REAL_B));
        assert!(s.pending().is_empty());
    }
    // Worker 3 never received on it, yet promotes it when it first sends.
    let b3 = &mut bs[2];
    assert_eq!(
        b3.worker.tables().peers[&PEER_A].sessions.pending().len(),
        2
    );
    b3.wire.inject_tun(&udp_packet(B_V4, A_V4, 64, 9));
    b3.turn();
    b3.turn();
    let sent = b3.wire.take_udp();
    assert_eq!(sent.len(), 1, "drops {:?}", b3.nonzero_drops());
    assert_eq!(
        u32::from_le_bytes(sent[0].bytes[4..8].try_into().unwrap()),
        REAL_A
    );
    let t = b3.worker.tables();
    assert!(t.peers[&PEER_A].sessions.pending().is_empty());
    assert!(!t.by_index.contains_key(&forged_index(0)));
    assert!(confirmations(&b3.take_events()).is_empty());
}

#[test]
fn pending_session_of_a_peer_with_no_routes_and_no_endpoint_confirms() {
    // The control plane installs the responder session before it knows anything else of the
    // peer (it commits routes and endpoint only after confirmation).
    set_clock(T0);
    let mut a = Node::new(0, FakeConfig::plain(), A_ADDR);
    let mut b = Node::new(1, FakeConfig::plain(), B_ADDR);
    let (sa, sb) = session_pair(REAL_A, REAL_B, 42, T0, Limits::DEFAULT);
    install_pending(&b, forged(0));
    install_pending(&b, Arc::clone(&sb));
    b.turn();
    a.command(Command::SetEndpoint {
        peer: PEER_B,
        addr: B_ADDR,
    });
    a.command(Command::InstallSession {
        peer: PEER_B,
        slot: Slot::Current,
        session: sa,
    });
    a.command(Command::Keepalive { peer: PEER_B });
    a.turn();
    a.turn();
    let sent = a.wire.take_udp();
    assert_eq!(sent.len(), 1, "A sent no keepalive");
    b.wire
        .inject_udp(A_ADDR, &sent[0].bytes, sent[0].bytes.len());
    drain(&mut b);
    assert_eq!(b.totals().keepalives_rx, 1);
    assert_eq!(b.totals().total_drops(), 0, "{:?}", b.nonzero_drops());
    assert!(sb.confirmed());
    let events = b.take_events();
    assert_eq!(confirmations(&events), vec![REAL_B]);
    assert!(events.contains(&Event::EndpointChanged {
        peer: PEER_A,
        addr: A_ADDR
    }));
    let s = &b.worker.tables().peers[&PEER_A].sessions;
    assert_eq!(s.current.as_ref().map(|s| s.local_index), Some(REAL_B));
    assert!(s.pending().is_empty());
}

#[test]
fn control_flood_from_one_source_is_limited_while_others_pass() {
    let mut p = Pair::new(FakeConfig::plain(), Limits::DEFAULT);
    p.settle_commands();
    let flood = control(1200, 0xAA);
    for _ in 0..1000 {
        p.b.wire.inject_udp(ATTACKER, &flood, flood.len());
    }
    drain(&mut p.b);
    // A first contact's worth (14 fragments) from A, meanwhile.
    let frag = control(1200, 0x11);
    for _ in 0..14 {
        p.b.wire.inject_udp(A_ADDR, &frag, frag.len());
    }
    drain(&mut p.b);
    let up = p.b.take_control();
    let from = |src: SocketAddr| {
        up.iter()
            .filter(|e| matches!(e, Event::ControlReceived { src: s, .. } if *s == src))
            .count()
    };
    assert_eq!(from(ATTACKER), 64, "the burst of one source");
    assert_eq!(from(A_ADDR), 14, "another source is not held back");
    assert_eq!(p.b.drops(DropCause::ControlRateLimited), 1000 - 64);
    assert_eq!(p.b.totals().control_rx, 64 + 14);
    assert_eq!(p.b.drops(DropCause::EventQueueFull), 0);
    // A second later the attacker gets at most a burst again, never the backlog.
    advance(Duration::from_secs(1));
    for _ in 0..1000 {
        p.b.wire.inject_udp(ATTACKER, &flood, flood.len());
    }
    drain(&mut p.b);
    assert_eq!(p.b.take_control().len(), 64);
    assert_eq!(p.b.drops(DropCause::ControlRateLimited), 2 * (1000 - 64));
    // Data traffic is not affected.
    let pkt = udp_packet(A_V4, B_V4, 100, 1);
    p.a.wire.inject_tun(&pkt);
    p.pump();
    assert_eq!(p.b.wire.take_tun(), vec![pkt]);
    p.assert_clean();
}

#[test]
fn events_arrive_while_the_control_datagram_queue_is_full() {
    let opts = NodeOptions {
        control_queue: 16,
        ..NodeOptions::default()
    };
    let mut p = Pair::without_sessions_with(FakeConfig::plain(), opts);
    let (sa, sb) = session_pair(REAL_A, REAL_B, 42, T0, Limits::DEFAULT);
    p.install(sa, Slot::Current, sb, Slot::Next);
    p.settle_commands();
    // 300 sources, one datagram each: past every per-source bucket, into a queue of 16.
    let d = control(200, 0xBB);
    for i in 0..300u32 {
        let src = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, (i % 250) as u8)),
            1000 + i as u16,
        );
        p.b.wire.inject_udp(src, &d, d.len());
    }
    drain(&mut p.b);
    assert!(p.b.drops(DropCause::EventQueueFull) > 0);
    assert_eq!(p.b.control.len(), 16, "the datagram queue is full");
    // Key confirmation still gets through.
    p.a.command(Command::Keepalive { peer: PEER_B });
    p.pump();
    assert_eq!(p.b.totals().keepalives_rx, 1);
    assert_eq!(confirmations(&p.b.take_events()), vec![REAL_B]);
    // And so does a "no session" ask for an unknown destination's peer.
    const PEER_C: u32 = 3;
    let c_v4 = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 3));
    p.b.command(Command::SetRoutes {
        peer: PEER_C,
        prefixes: Arc::from(vec![(c_v4, 32)]),
    });
    p.b.wire.inject_tun(&udp_packet(B_V4, c_v4, 64, 1));
    p.pump();
    assert_eq!(
        p.b.take_events(),
        vec![Event::NoSession {
            peer: Some(PEER_C),
            dst: c_v4
        }]
    );
}

/// Fills `n`'s event queue (capacity 1) with a "no session" event for a peer C.
fn fill_event_queue(p: &mut Pair, on_a: bool) -> Event {
    const PEER_C: u32 = 3;
    let c_v4 = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 3));
    let (n, src) = if on_a { (&p.a, A_V4) } else { (&p.b, B_V4) };
    n.command(Command::SetRoutes {
        peer: PEER_C,
        prefixes: Arc::from(vec![(c_v4, 32)]),
    });
    n.wire.inject_tun(&udp_packet(src, c_v4, 64, 77));
    p.pump();
    let n = if on_a { &p.a } else { &p.b };
    assert_eq!(n.events.len(), 1, "queue not full");
    Event::NoSession {
        peer: Some(PEER_C),
        dst: c_v4,
    }
}

#[test]
fn rekey_needed_lost_to_a_full_queue_is_asked_again() {
    let opts = NodeOptions {
        event_queue: 1,
        ..NodeOptions::default()
    };
    let limits = Limits {
        rekey_after_time: Duration::from_secs(5),
        ..Limits::DEFAULT
    };
    let mut p = Pair::without_sessions_with(FakeConfig::plain(), opts);
    let (sa, sb) = session_pair(A_INDEX, B_INDEX, 7, T0, limits);
    p.install(sa, Slot::Current, sb, Slot::Current);
    p.settle_commands();
    let filler = fill_event_queue(&mut p, true);
    advance(Duration::from_secs(6));
    let send = |p: &mut Pair, seed| {
        let pkt = udp_packet(A_V4, B_V4, 100, seed);
        p.a.wire.inject_tun(&pkt);
        p.pump();
        assert_eq!(p.b.wire.take_tun(), vec![pkt]);
    };
    send(&mut p, 1);
    assert_eq!(p.a.drops(DropCause::EventQueueFull), 1, "the ask was lost");
    assert_eq!(p.a.take_events(), vec![filler]);
    let want = Event::RekeyNeeded {
        peer: PEER_B,
        local_index: A_INDEX,
    };
    send(&mut p, 2);
    assert_eq!(p.a.take_events(), vec![want.clone()], "not asked again");
    // Asked once, not per packet...
    for seed in 3..10 {
        send(&mut p, seed);
    }
    assert!(p.a.take_events().is_empty());
    // ...but again after the re-ask interval while the session still needs it.
    advance(Duration::from_secs(5));
    send(&mut p, 10);
    assert_eq!(p.a.take_events(), vec![want]);
    p.assert_clean();
}

#[test]
fn confirmation_lost_to_a_full_queue_is_reported_later() {
    let opts = NodeOptions {
        event_queue: 1,
        ..NodeOptions::default()
    };
    let mut p = Pair::without_sessions_with(FakeConfig::plain(), opts);
    let (sa, sb) = session_pair(REAL_A, REAL_B, 42, T0, Limits::DEFAULT);
    p.install(sa, Slot::Current, sb, Slot::Next);
    p.settle_commands();
    let filler = fill_event_queue(&mut p, false);
    p.a.command(Command::Keepalive { peer: PEER_B });
    p.pump();
    assert_eq!(p.b.totals().keepalives_rx, 1);
    assert_eq!(p.b.drops(DropCause::EventQueueFull), 1);
    assert_eq!(p.b.take_events(), vec![filler]);
    // Promoted at once; reported as soon as the queue has room.
    assert_eq!(
        p.b.worker.tables().peers[&PEER_A]
            .sessions
            .current
            .as_ref()
            .map(|s| s.local_index),
        Some(REAL_B)
    );
    p.b.turn();
    assert_eq!(
        p.b.take_events(),
        vec![Event::SessionConfirmed {
            peer: PEER_A,
            local_index: REAL_B
        }]
    );
    p.b.turn();
    assert!(p.b.take_events().is_empty(), "reported twice");
}

#[test]
fn endpoint_change_lost_to_a_full_queue_is_reported_later() {
    let opts = NodeOptions {
        event_queue: 1,
        ..NodeOptions::default()
    };
    let mut p = Pair::without_sessions_with(FakeConfig::plain(), opts);
    let (sa, sb) = session_pair(A_INDEX, B_INDEX, 7, T0, Limits::DEFAULT);
    p.install(sa, Slot::Current, sb, Slot::Current);
    p.settle_commands();
    let filler = fill_event_queue(&mut p, false);
    let roamed: SocketAddr = "198.51.100.9:40000".parse().unwrap();
    p.a_seen_from = Some(roamed);
    let pkt = udp_packet(A_V4, B_V4, 100, 1);
    p.a.wire.inject_tun(&pkt);
    p.pump();
    assert_eq!(p.b.wire.take_tun(), vec![pkt]);
    assert_eq!(p.b.take_events(), vec![filler]);
    p.b.turn();
    assert_eq!(
        p.b.take_events(),
        vec![Event::EndpointChanged {
            peer: PEER_A,
            addr: roamed
        }]
    );
}
