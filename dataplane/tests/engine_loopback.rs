//! Two real workers, A and B, back to back over the in-memory fake backend (no root, no
//! kernel I/O): what A reads from its TUN must come out of B's TUN, byte for byte or (with
//! offloads) segment for segment; whatever is forged, replayed, malformed or not allowed must
//! be dropped under the right cause while good traffic keeps flowing; and the events for the
//! control plane (no session, rekey, roaming) must come once, when due.

mod engine_common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use engine_common::*;
use shadowmesh_dataplane::engine::counters::DropCause;
use shadowmesh_dataplane::engine::{Command, Event, Slot};
use shadowmesh_dataplane::offload::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VNET_HDR_LEN,
};
use shadowmesh_dataplane::session::{Limits, Session};
use shadowmesh_dataplane::wire::{GarbageReason, HEADER_LEN, TAG_LEN};

const GSO: u16 = 1380;

fn plain_pair() -> Pair {
    let mut p = Pair::new(FakeConfig::plain(), Limits::DEFAULT);
    p.settle_commands();
    p
}

fn offload_pair() -> Pair {
    let mut p = Pair::new(FakeConfig::offload(), Limits::DEFAULT);
    p.settle_commands();
    p
}

/// The receiver index of a data message.
fn receiver_index(d: &[u8]) -> u32 {
    u32::from_le_bytes(d[4..8].try_into().expect("4 bytes"))
}

/// Reads `pkt` on A's TUN and returns the datagrams A sends, without delivering them.
fn capture_from_a(p: &mut Pair, pkt: &[u8]) -> Vec<Sent> {
    p.a.wire.inject_tun(pkt);
    p.a.turn(); // handles the read, queues the send
    p.a.turn(); // the fake carries the send out
    p.a.wire.take_udp()
}

/// Sends one plain IPv4 packet A → B and asserts it arrives unchanged.
fn assert_flows(p: &mut Pair, seed: u32) {
    let pkt = udp_packet(A_V4, B_V4, 300, seed);
    p.a.wire.inject_tun(&pkt);
    p.pump();
    assert_eq!(
        p.b.wire.take_tun(),
        vec![pkt],
        "good traffic no longer flows"
    );
}

#[test]
fn plain_ipv4_and_ipv6_arrive_byte_identical_without_offloads() {
    let mut p = plain_pair();
    let mut a_to_b = Vec::new();
    let mut b_to_a = Vec::new();
    for (i, len) in [0usize, 1, 7, 100, 555, 1000, 1372].into_iter().enumerate() {
        let i = i as u32;
        a_to_b.push(udp_packet(A_V4, B_V4, len, i));
        a_to_b.push(udp_packet(A_V6, B_V6, len, 100 + i));
        a_to_b.push(tcp_packet(A_V4, B_V4, 1000 * i, &pattern(i, len), false));
        b_to_a.push(udp_packet(B_V6, A_V6, len, 200 + i));
        b_to_a.push(udp_packet(B_V4, A_V4, len, 300 + i));
    }
    for pkt in &a_to_b {
        p.a.wire.inject_tun(pkt);
    }
    for pkt in &b_to_a {
        p.b.wire.inject_tun(pkt);
    }
    p.pump();
    assert_eq!(p.b.wire.take_tun(), a_to_b);
    assert_eq!(p.a.wire.take_tun(), b_to_a);
    for n in [&p.a, &p.b] {
        assert!(n.nonzero_drops().is_empty(), "{:?}", n.nonzero_drops());
    }
    let (ta, tb) = (p.a.totals(), p.b.totals());
    assert_eq!(ta.tun_rx_packets, a_to_b.len() as u64);
    assert_eq!(ta.udp_tx_datagrams, a_to_b.len() as u64);
    assert_eq!(tb.udp_rx_datagrams, a_to_b.len() as u64);
    assert_eq!(tb.tun_tx_packets, a_to_b.len() as u64);
    assert_eq!(
        tb.tun_tx_bytes,
        a_to_b.iter().map(|x| x.len() as u64).sum::<u64>()
    );
    p.assert_clean();
}

#[test]
fn datagrams_on_the_wire_are_sealed_data_messages() {
    let mut p = plain_pair();
    let pkt = udp_packet(A_V4, B_V4, 500, 9);
    let sent = capture_from_a(&mut p, &pkt);
    assert_eq!(sent.len(), 1);
    let s = &sent[0];
    assert_eq!(s.dst, B_ADDR);
    assert_eq!(s.segment_size, None);
    assert_eq!(s.bytes.len(), HEADER_LEN + pkt.len() + TAG_LEN);
    assert_eq!(s.bytes[0], 4, "type: data");
    assert_eq!(&s.bytes[2..4], &[0, 0], "reserved");
    assert_eq!(receiver_index(&s.bytes), B_INDEX);
    // Not the plaintext: the payload was encrypted.
    assert_ne!(&s.bytes[HEADER_LEN..HEADER_LEN + pkt.len()], &pkt[..]);
}

#[test]
fn plain_packets_with_vnet_hdr_arrive_byte_identical() {
    let mut p = offload_pair();
    let mut sent = Vec::new();
    for (i, len) in [0usize, 1, 1200, 1400].into_iter().enumerate() {
        sent.push(udp_packet(A_V4, B_V4, len, i as u32));
        sent.push(udp_packet(A_V6, B_V6, len, 50 + i as u32));
    }
    for pkt in &sent {
        p.a.wire.inject_tun(&with_vnet_none(pkt));
    }
    p.pump();
    let writes = p.b.wire.take_tun();
    assert_eq!(writes.len(), sent.len());
    for (w, pkt) in writes.iter().zip(&sent) {
        assert_eq!(&w[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN], "GSO_NONE header");
        assert_eq!(&w[VNET_HDR_LEN..], &pkt[..]);
    }
    assert!(p.b.nonzero_drops().is_empty(), "{:?}", p.b.nonzero_drops());
    p.assert_clean();
}

#[test]
fn partial_checksum_is_completed_before_sealing() {
    // GSO_NONE + NEEDS_CSUM: the kernel left only the pseudo-header sum in the TCP checksum.
    let mut p = offload_pair();
    for v6 in [false, true] {
        let (src, dst, iph) = if v6 {
            (A_V6, B_V6, 40)
        } else {
            (A_V4, B_V4, 20)
        };
        let payload = pattern(77, 900);
        let partial = tcp_packet(src, dst, 4242, &payload, true);
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_NONE,
            hdr_len: 0,
            gso_size: 0,
            csum_start: iph,
            csum_offset: 16,
        };
        let mut read = vec![0u8; VNET_HDR_LEN];
        hdr.emit(&mut read).expect("10 bytes");
        read.extend_from_slice(&partial);
        p.a.wire.inject_tun(&read);
        p.pump();
        let writes = p.b.wire.take_tun();
        assert_eq!(writes.len(), 1);
        let got = &writes[0][VNET_HDR_LEN..];
        assert_checksums(got);
        assert_eq!(got, &tcp_packet(src, dst, 4242, &payload, false)[..]);
    }
    p.assert_clean();
}

/// Payload sizes from 1 to 64000: boundaries around the segment size, then a sweep.
fn tso_sizes() -> Vec<usize> {
    let mut v = vec![
        1, 2, 1379, 1380, 1381, 2759, 2760, 2761, 4000, 13_800, 32_768, 50_001, 63_999, 64_000,
    ];
    v.extend((1..=64_000).step_by(2_741));
    v
}

/// Feeds a TCP stream as TSO super-packets (one per size) to A and checks B's TUN writes:
/// re-segmented, they are exactly the segments the super-packets stand for, and their
/// payloads are the stream. Returns B's writes.
fn tso_stream(p: &mut Pair, v6: bool, sizes: &[usize], gso_size: u16) -> Vec<Vec<u8>> {
    let mut seq = 0x1000_0000u32;
    let mut stream = Vec::new();
    let mut expected = Vec::new();
    let mut writes = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let payload = pattern(i as u32 * 31, n);
        let read = tso_read(v6, seq, &payload, gso_size);
        expected.extend(segments_of(&read));
        stream.extend_from_slice(&payload);
        seq = seq.wrapping_add(n as u32);
        p.a.wire.inject_tun(&read);
        p.pump();
        writes.extend(p.b.wire.take_tun());
    }
    let mut got = Vec::new();
    for w in &writes {
        let hdr = VirtioNetHdr::parse(w).expect("vnet header");
        if hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE {
            let want = if v6 {
                VIRTIO_NET_HDR_GSO_TCPV6
            } else {
                VIRTIO_NET_HDR_GSO_TCPV4
            };
            assert_eq!(hdr.gso_type, want);
            assert_eq!(hdr.gso_size, gso_size);
            assert!(hdr.needs_csum());
        }
        got.extend(segments_of(w));
    }
    assert_eq!(got.len(), expected.len(), "segment count");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "segment {i} differs");
        assert_checksums(g);
    }
    let payload: Vec<u8> = got.iter().flat_map(|s| tcp_payload(s).to_vec()).collect();
    assert_eq!(payload, stream, "the TCP stream came out changed");
    for n in [&p.a, &p.b] {
        assert!(n.nonzero_drops().is_empty(), "{:?}", n.nonzero_drops());
    }
    assert_eq!(p.a.totals().tun_rx_packets, expected.len() as u64);
    assert_eq!(p.b.totals().tun_tx_packets, expected.len() as u64);
    p.assert_clean();
    writes
}

#[test]
fn tso4_stream_arrives_coalesced_and_intact() {
    let mut p = offload_pair();
    let writes = tso_stream(&mut p, false, &tso_sizes(), GSO);
    let supers = writes
        .iter()
        .filter(|w| w[1] == VIRTIO_NET_HDR_GSO_TCPV4)
        .count();
    assert!(supers >= 10, "only {supers} coalesced writes");
}

#[test]
fn tso6_stream_arrives_coalesced_and_intact() {
    let mut p = offload_pair();
    let writes = tso_stream(&mut p, true, &tso_sizes(), GSO);
    let supers = writes
        .iter()
        .filter(|w| w[1] == VIRTIO_NET_HDR_GSO_TCPV6)
        .count();
    assert!(supers >= 10, "only {supers} coalesced writes");
}

#[test]
fn tso_sends_use_gso_within_kernel_limits() {
    let mut p = offload_pair();
    let read = tso_read(false, 1, &pattern(1, 64_000), GSO);
    let sent = capture_from_a(&mut p, &read);
    let stride = HEADER_LEN + 20 + 20 + usize::from(GSO) + TAG_LEN;
    let mut datagrams = 0;
    for s in &sent {
        assert_eq!(s.dst, B_ADDR);
        assert!(
            s.bytes.len() <= 65_000,
            "GSO send of {} bytes",
            s.bytes.len()
        );
        if let Some(seg) = s.segment_size {
            assert_eq!(usize::from(seg), stride);
            assert!(s.bytes.len().div_ceil(stride) <= 64);
        }
        datagrams += s.datagrams().len();
    }
    assert_eq!(datagrams, 64_000usize.div_ceil(usize::from(GSO)));
    assert!(sent.len() < datagrams, "GSO was not used");
}

#[test]
fn tso_with_tiny_segments_spans_several_transmit_buffers() {
    // 640 segments of 172-byte datagrams overflow one 96.5 KiB transmit buffer, so the engine
    // takes a second pass over the super-packet.
    let mut p = offload_pair();
    tso_stream(&mut p, false, &[64_000, 30_000], 100);
}

#[test]
fn gso_disabled_still_delivers() {
    let mut p = offload_pair();
    p.a.wire.set_gso(false);
    let read = tso_read(true, 77, &pattern(5, 64_000), GSO);
    let sent = capture_from_a(&mut p, &read);
    assert_eq!(sent.len(), 47);
    assert!(sent.iter().all(|s| s.segment_size.is_none()));
    // And end to end, through a stream (a fresh pair: the counters start at zero).
    let mut p = offload_pair();
    p.a.wire.set_gso(false);
    let writes = tso_stream(&mut p, false, &[64_000, 1, 5_000, 63_999], GSO);
    // Without GRO at B every datagram is its own receive: nothing to coalesce.
    assert!(writes.iter().all(|w| w[1] == VIRTIO_NET_HDR_GSO_NONE));
}

#[test]
fn gro_batch_yields_coalesced_writes() {
    for v6 in [false, true] {
        let mut p = offload_pair();
        p.a.wire.set_gso(false);
        let payload = pattern(3, 64_000);
        let read = tso_read(v6, 9_999, &payload, GSO);
        let expected = segments_of(&read);
        let sent = capture_from_a(&mut p, &read);
        assert_eq!(sent.len(), 47);
        // What the kernel's UDP GRO makes of them: one buffer, equal-size datagrams back to
        // back, the last shorter.
        let seg = sent[0].bytes.len();
        let batch: Vec<u8> = sent.iter().flat_map(|s| s.bytes.clone()).collect();
        p.b.wire.inject_udp(A_ADDR, &batch, seg);
        p.pump();
        let writes = p.b.wire.take_tun();
        assert_eq!(writes.len(), 1, "47 segments of one flow make one write");
        let hdr = VirtioNetHdr::parse(&writes[0]).expect("vnet header");
        let want = if v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        assert_eq!(hdr.gso_type, want);
        assert_eq!(hdr.gso_size, GSO);
        assert!(hdr.needs_csum());
        assert_eq!(segments_of(&writes[0]), expected);
        let t = p.b.totals();
        assert_eq!(t.udp_rx_datagrams, 47);
        assert_eq!(t.tun_tx_packets, 47);
        assert!(p.b.nonzero_drops().is_empty(), "{:?}", p.b.nonzero_drops());
        p.assert_clean();
    }
}

#[test]
fn gro_batch_with_a_bad_datagram_delivers_the_rest() {
    let mut p = offload_pair();
    p.a.wire.set_gso(false);
    let read = tso_read(false, 1, &pattern(8, 20_000), GSO);
    let expected = segments_of(&read);
    let sent = capture_from_a(&mut p, &read);
    let seg = sent[0].bytes.len();
    let mut batch: Vec<u8> = sent.iter().flat_map(|s| s.bytes.clone()).collect();
    // Forge the tag of the 5th datagram.
    batch[5 * seg - 1] ^= 0x80;
    p.b.wire.inject_udp(A_ADDR, &batch, seg);
    p.pump();
    let got: Vec<Vec<u8>> =
        p.b.wire
            .take_tun()
            .iter()
            .flat_map(|w| segments_of(w))
            .collect();
    let mut want = expected.clone();
    want.remove(4);
    assert_eq!(got, want);
    assert_eq!(p.b.drops(DropCause::BadTag), 1);
    p.assert_clean();
}

#[test]
fn forged_replayed_garbage_and_unknown_index_are_dropped() {
    let mut p = plain_pair();
    let pkt = udp_packet(A_V4, B_V4, 200, 1);
    let genuine = capture_from_a(&mut p, &pkt).remove(0).bytes;

    // Forged: one bit of the tag flipped.
    let mut forged = genuine.clone();
    *forged.last_mut().expect("not empty") ^= 1;
    p.b.wire.inject_udp(A_ADDR, &forged, forged.len());
    p.pump();
    assert_eq!(p.b.drops(DropCause::BadTag), 1);
    // Forged: ciphertext changed.
    let mut forged = genuine.clone();
    forged[HEADER_LEN + 3] ^= 0x40;
    p.b.wire.inject_udp(A_ADDR, &forged, forged.len());
    p.pump();
    assert_eq!(p.b.drops(DropCause::BadTag), 2);
    assert!(p.b.wire.take_tun().is_empty());

    // The genuine datagram still opens (a forgery must not burn its counter) ...
    p.b.wire.inject_udp(A_ADDR, &genuine, genuine.len());
    p.pump();
    assert_eq!(p.b.wire.take_tun(), vec![pkt.clone()]);
    // ... once: the same bytes again are a replay.
    p.b.wire.inject_udp(A_ADDR, &genuine, genuine.len());
    p.pump();
    assert_eq!(p.b.drops(DropCause::Replayed), 1);
    assert!(p.b.wire.take_tun().is_empty());

    // Garbage: unknown type, a data message too short, reserved bytes set.
    p.b.wire.inject_udp(A_ADDR, &[0x07, 1, 2, 3, 4, 5], 6);
    p.b.wire.inject_udp(A_ADDR, &[4, 0, 0, 0, 1, 2, 3, 4], 8);
    let mut reserved = genuine.clone();
    reserved[2] = 1;
    p.b.wire.inject_udp(A_ADDR, &reserved, reserved.len());
    p.pump();
    assert_eq!(p.b.drops(DropCause::Garbage), 3);
    let g = p.b.totals().garbage;
    assert_eq!(g[GarbageReason::UnknownType as usize], 1);
    assert_eq!(g[GarbageReason::DataTooShort as usize], 1);
    assert_eq!(g[GarbageReason::DataReservedNonZero as usize], 1);

    // A well-formed data message for a receiver index nobody has.
    let mut unknown = genuine.clone();
    unknown[4..8].copy_from_slice(&0x0bad_cafeu32.to_le_bytes());
    p.b.wire.inject_udp(A_ADDR, &unknown, unknown.len());
    p.pump();
    assert_eq!(p.b.drops(DropCause::UnknownIndex), 1);

    assert!(p.b.wire.take_tun().is_empty());
    assert_eq!(p.b.totals().total_drops(), 7, "{:?}", p.b.nonzero_drops());
    // What named one of A's sessions is A's to answer for; garbage and unknown indices are not.
    assert_eq!(p.b.peer_drops(PEER_A, DropCause::BadTag), 2);
    assert_eq!(p.b.peer_drops(PEER_A, DropCause::Replayed), 1);
    assert_eq!(p.b.peer_drops(PEER_A, DropCause::Garbage), 0);
    assert_eq!(p.b.peer_drops(PEER_A, DropCause::UnknownIndex), 0);
    assert!(
        p.b.take_events().is_empty(),
        "a bad datagram raised an event"
    );
    assert_flows(&mut p, 2);
    p.assert_clean();
}

#[test]
fn inner_source_outside_the_peers_prefixes_is_dropped() {
    let mut p = plain_pair();
    let spoof4 = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 99));
    let spoof6: IpAddr = "fd00::99".parse().expect("address");
    // B's own address as source is not A's either.
    for (i, src) in [spoof4, spoof6, B_V4].into_iter().enumerate() {
        let dst = if src.is_ipv4() { B_V4 } else { B_V6 };
        p.a.wire.inject_tun(&udp_packet(src, dst, 64, i as u32));
    }
    p.pump();
    assert!(p.b.wire.take_tun().is_empty());
    assert_eq!(p.b.drops(DropCause::SourceNotAllowed), 3);
    assert_eq!(p.b.peer_drops(PEER_A, DropCause::SourceNotAllowed), 3);
    assert_eq!(p.b.totals().total_drops(), 3);
    assert_flows(&mut p, 3);
    p.assert_clean();
}

#[test]
fn unrouted_destination_is_held_in_the_overlay_and_no_route_outside() {
    let mut p = plain_pair();
    let c4: IpAddr = "100.64.9.9".parse().expect("addr");
    let c6: IpAddr = "fd00::9".parse().expect("addr");
    p.a.wire.inject_tun(&udp_packet(A_V4, c4, 64, 1));
    p.a.wire.inject_tun(&udp_packet(A_V6, c6, 64, 2));
    // Outside the overlay: no lookup can find it, dropped at once.
    p.a.wire.inject_tun(&udp_packet(
        A_V4,
        "203.0.113.9".parse().expect("addr"),
        64,
        3,
    ));
    // Not an IP packet at all.
    p.a.wire.inject_tun(&[0x00; 40]);
    p.pump();
    assert_eq!(p.a.drops(DropCause::NoRoute), 1);
    assert_eq!(p.a.drops(DropCause::BadInnerPacket), 1);
    assert_eq!(p.a.totals().held, 2);
    assert_eq!(p.a.totals().udp_tx_datagrams, 0);
    // The control plane is asked to look both destinations up (no peer known).
    assert_eq!(
        p.a.take_events(),
        vec![
            Event::NoSession {
                peer: None,
                dst: c4
            },
            Event::NoSession {
                peer: None,
                dst: c6
            }
        ]
    );
    // Nobody answers: they expire.
    advance(Duration::from_secs(3));
    p.pump();
    assert_eq!(p.a.drops(DropCause::HoldExpired), 2);
    assert_eq!(p.a.worker.held(), (0, 0));
    assert_flows(&mut p, 4);
    p.assert_clean();
}

#[test]
fn no_session_event_at_most_once_per_second() {
    let mut p = Pair::without_sessions(FakeConfig::plain());
    p.settle_commands();
    let mut events = Vec::new();
    let mut sent = Vec::new();
    // 3.5 s of traffic, one packet every 100 ms: events at 0, 1, 2 and 3 s.
    for i in 0..=35 {
        let pkt = udp_packet(A_V4, B_V4, 64, i);
        p.a.wire.inject_tun(&pkt);
        sent.push(pkt);
        p.pump();
        events.extend(p.a.take_events());
        advance(Duration::from_millis(100));
    }
    let want = Event::NoSession {
        peer: Some(PEER_B),
        dst: B_V4,
    };
    assert_eq!(events, vec![want; 4]);
    // Held, not dropped; at the last turn (3.5 s) those read at 0..=0.5 s were 3 s old: expired.
    assert_eq!(p.a.drops(DropCause::NoSession), 0);
    assert_eq!(p.a.totals().held, 36);
    assert_eq!(p.a.drops(DropCause::HoldExpired), 6);
    assert_eq!(p.a.totals().udp_tx_datagrams, 0);
    // The handshake completes: the held packets arrive in order, traffic flows, no more events.
    let (sa, sb) = session_pair(A_INDEX, B_INDEX, 9, clock(), Limits::DEFAULT);
    p.install(sa, Slot::Current, sb, Slot::Current);
    p.pump();
    // At 3.6 s the one read at 0.6 s has expired too; the 29 younger ones arrive.
    assert_eq!(p.a.drops(DropCause::HoldExpired), 7);
    assert_eq!(p.b.wire.take_tun(), sent[7..].to_vec());
    assert_eq!(p.a.totals().hold_flushed, 29);
    assert_flows(&mut p, 50);
    assert!(p.a.take_events().is_empty());
    p.assert_clean();
}

#[test]
fn no_session_event_for_a_peer_with_routes_only() {
    let mut p = plain_pair();
    const PEER_C: u32 = 3;
    let c_v4 = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 3));
    p.a.command(Command::SetRoutes {
        peer: PEER_C,
        prefixes: Arc::from(vec![(c_v4, 32)]),
    });
    p.settle_commands();
    p.a.wire.inject_tun(&udp_packet(A_V4, c_v4, 64, 1));
    p.pump();
    assert_eq!(
        p.a.take_events(),
        vec![Event::NoSession {
            peer: Some(PEER_C),
            dst: c_v4
        }],
        "drops: {:?}",
        p.a.nonzero_drops()
    );
}

#[test]
fn rekey_needed_once_when_the_session_ages() {
    let limits = Limits {
        rekey_after_time: Duration::from_secs(5),
        ..Limits::DEFAULT
    };
    let mut p = Pair::new(FakeConfig::plain(), limits);
    p.settle_commands();
    advance(Duration::from_secs(1));
    assert_flows(&mut p, 1);
    assert!(p.a.take_events().is_empty());
    advance(Duration::from_secs(5));
    for i in 0..5 {
        assert_flows(&mut p, 10 + i);
    }
    advance(Duration::from_secs(1));
    assert_flows(&mut p, 20);
    assert_eq!(
        p.a.take_events(),
        vec![Event::RekeyNeeded {
            peer: PEER_B,
            local_index: A_INDEX
        }]
    );
    // B never sent: it has nothing to ask.
    assert!(p.b.take_events().is_empty());
    p.assert_clean();
}

#[test]
fn session_past_reject_time_refuses_to_send_and_asks_for_rekey() {
    let mut p = plain_pair();
    advance(Duration::from_secs(181));
    p.a.wire.inject_tun(&udp_packet(A_V4, B_V4, 64, 1));
    p.pump();
    assert_eq!(p.a.drops(DropCause::SendRefused), 1);
    assert!(p.b.wire.take_tun().is_empty());
    assert_eq!(
        p.a.take_events(),
        vec![Event::RekeyNeeded {
            peer: PEER_B,
            local_index: A_INDEX
        }]
    );
}

#[test]
fn session_rotation_loses_no_packet() {
    let mut p = plain_pair();
    let mut next_seed = 0u32;
    let mut pkt_ab = || {
        next_seed += 1;
        udp_packet(A_V4, B_V4, 100, next_seed)
    };
    let mut expect_b = Vec::new();
    let mut expect_a = Vec::new();
    // Old session: some traffic, then packets left in flight both ways.
    let first = pkt_ab();
    p.a.wire.inject_tun(&first);
    expect_b.push(first);
    p.pump();
    let mut in_flight_ab = Vec::new();
    for _ in 0..5 {
        let pkt = pkt_ab();
        in_flight_ab.extend(capture_from_a(&mut p, &pkt));
        expect_b.push(pkt);
    }
    let mut in_flight_ba = Vec::new();
    for i in 0..5 {
        let pkt = udp_packet(B_V6, A_V6, 80, 500 + i);
        p.b.wire.inject_tun(&pkt);
        p.b.turn();
        p.b.turn();
        in_flight_ba.extend(p.b.wire.take_udp());
        expect_a.push(pkt);
    }
    assert!(in_flight_ab
        .iter()
        .all(|s| receiver_index(&s.bytes) == B_INDEX));

    // Handshake: B (responder) installs the new session as Next, A (initiator) as Current.
    const A2: u32 = 0xA000_0002;
    const B2: u32 = 0xB000_0002;
    let (sa, sb) = session_pair(A2, B2, 42, clock(), Limits::DEFAULT);
    p.b.command(Command::InstallSession {
        peer: PEER_A,
        slot: Slot::Next,
        session: sb,
    });
    p.b.turn();
    p.a.command(Command::InstallSession {
        peer: PEER_B,
        slot: Slot::Current,
        session: sa,
    });
    p.a.turn();

    // B has not seen the new key confirmed: it still sends on the old one.
    let pkt = udp_packet(B_V4, A_V4, 90, 600);
    p.b.wire.inject_tun(&pkt);
    p.b.turn();
    p.b.turn();
    let pre_confirm = p.b.wire.take_udp();
    assert_eq!(receiver_index(&pre_confirm[0].bytes), A_INDEX);
    in_flight_ba.extend(pre_confirm);
    expect_a.push(pkt);

    // A sends on the new session at once; that confirms it at B.
    let mut new_ab = Vec::new();
    for _ in 0..3 {
        let pkt = pkt_ab();
        new_ab.extend(capture_from_a(&mut p, &pkt));
        expect_b.push(pkt);
    }
    assert!(new_ab.iter().all(|s| receiver_index(&s.bytes) == B2));
    // New-key packets overtake the old ones in flight.
    for s in new_ab.iter().chain(&in_flight_ab) {
        p.b.wire.inject_udp(A_ADDR, &s.bytes, s.bytes.len());
    }
    for s in &in_flight_ba {
        p.a.wire.inject_udp(B_ADDR, &s.bytes, s.bytes.len());
    }
    p.pump();
    let got_b = p.b.wire.take_tun();
    assert_eq!(got_b.len(), expect_b.len());
    // Order: the first packet, then the three new ones, then the five old ones.
    let mut want_b = vec![expect_b[0].clone()];
    want_b.extend_from_slice(&expect_b[6..]);
    want_b.extend_from_slice(&expect_b[1..6]);
    assert_eq!(got_b, want_b);
    assert_eq!(p.a.wire.take_tun(), expect_a);

    // B promoted the new session and now sends on it.
    let peer = &p.b.worker.tables().peers[&PEER_A];
    assert_eq!(
        peer.sessions.current.as_ref().map(|s| s.local_index),
        Some(B2)
    );
    assert_eq!(
        peer.sessions.previous.as_ref().map(|s| s.local_index),
        Some(B_INDEX)
    );
    let pkt = udp_packet(B_V4, A_V4, 90, 700);
    p.b.wire.inject_tun(&pkt);
    p.b.turn();
    p.b.turn();
    let after = p.b.wire.take_udp();
    assert_eq!(receiver_index(&after[0].bytes), A2);
    p.a.wire
        .inject_udp(B_ADDR, &after[0].bytes, after[0].bytes.len());
    p.pump();
    assert_eq!(p.a.wire.take_tun(), vec![pkt]);
    for n in [&p.a, &p.b] {
        assert!(n.nonzero_drops().is_empty(), "{:?}", n.nonzero_drops());
    }
    p.assert_clean();
}

#[test]
fn roaming_updates_the_endpoint_after_an_authenticated_packet() {
    let mut p = plain_pair();
    let roamed: SocketAddr = "203.0.113.7:40000".parse().expect("addr");
    let stranger: SocketAddr = "203.0.113.99:1".parse().expect("addr");

    // A forged datagram from a new address changes nothing.
    let genuine = capture_from_a(&mut p, &udp_packet(A_V4, B_V4, 64, 1))
        .remove(0)
        .bytes;
    let mut forged = genuine.clone();
    *forged.last_mut().expect("not empty") ^= 1;
    p.b.wire.inject_udp(stranger, &forged, forged.len());
    p.pump();
    assert!(p.b.take_events().is_empty());
    assert_eq!(p.b.worker.tables().peers[&PEER_A].endpoint, Some(A_ADDR));

    // A genuine one from the new address moves the endpoint, with one event.
    p.a_seen_from = Some(roamed);
    p.b.wire.inject_udp(roamed, &genuine, genuine.len());
    for i in 0..3 {
        p.a.wire.inject_tun(&udp_packet(A_V4, B_V4, 64, 10 + i));
    }
    p.pump();
    assert_eq!(p.b.wire.take_tun().len(), 4);
    assert_eq!(
        p.b.take_events(),
        vec![Event::EndpointChanged {
            peer: PEER_A,
            addr: roamed
        }]
    );
    assert_eq!(p.b.worker.tables().peers[&PEER_A].endpoint, Some(roamed));

    // A replay of it from yet another address does not move it back.
    p.b.wire.inject_udp(stranger, &genuine, genuine.len());
    p.pump();
    assert!(p.b.take_events().is_empty());
    assert_eq!(p.b.drops(DropCause::Replayed), 1);

    // B's replies go to the new address.
    let pkt = udp_packet(B_V4, A_V4, 64, 99);
    p.b.wire.inject_tun(&pkt);
    p.b.turn();
    p.b.turn();
    let sent = p.b.wire.take_udp();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].dst, roamed);
    p.a.wire
        .inject_udp(B_ADDR, &sent[0].bytes, sent[0].bytes.len());
    p.pump();
    assert_eq!(p.a.wire.take_tun(), vec![pkt]);
    assert_eq!(p.lost, 0);
    p.assert_clean();
}

#[test]
fn control_datagrams_go_up_and_out() {
    let mut p = plain_pair();
    let ctl = [5u8, 0, 0, 0, 1, 2, 3, 4, 5];
    p.b.wire.inject_udp(A_ADDR, &ctl, ctl.len());
    p.pump();
    assert_eq!(
        p.b.take_control(),
        vec![Event::ControlReceived {
            src: A_ADDR,
            payload: ctl.to_vec()
        }]
    );
    assert!(
        p.b.take_events().is_empty(),
        "datagrams go on their own queue"
    );
    assert_eq!(p.b.totals().control_rx, 1);
    p.b.command(Command::SendControl {
        dst: A_ADDR,
        payload: ctl.to_vec(),
    });
    p.b.turn();
    p.b.turn();
    let sent = p.b.wire.take_udp();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].dst, A_ADDR);
    assert_eq!(sent[0].bytes, ctl);
    p.assert_clean();
}

#[test]
fn keepalive_is_counted_not_written() {
    let mut p = plain_pair();
    // A keepalive sealed with A's sending key (the same keys as A's session, far-ahead counter).
    let (ka, _) = keys(7);
    let a_twin = Session::new(A_INDEX, B_INDEX, PEER_B, &ka, T0, Limits::DEFAULT).expect("key");
    let mut frame = vec![0u8; HEADER_LEN + TAG_LEN];
    let n = a_twin.seal(1_000, &mut frame, 0).expect("fits");
    assert_eq!(n, HEADER_LEN + TAG_LEN);
    p.b.wire.inject_udp(A_ADDR, &frame, n);
    p.pump();
    assert!(p.b.wire.take_tun().is_empty());
    assert_eq!(p.b.totals().keepalives_rx, 1);
    assert_eq!(p.b.totals().total_drops(), 0);
    assert_flows(&mut p, 1);
    p.assert_clean();
}

#[test]
fn expired_receive_key_is_dropped_as_expired() {
    let mut p = plain_pair();
    let genuine = capture_from_a(&mut p, &udp_packet(A_V4, B_V4, 64, 1))
        .remove(0)
        .bytes;
    // Past reject_after_time + receive_slack (180 s + 10 s).
    advance(Duration::from_secs(191));
    p.b.wire.inject_udp(A_ADDR, &genuine, genuine.len());
    p.pump();
    assert_eq!(p.b.drops(DropCause::Expired), 1);
    assert!(p.b.wire.take_tun().is_empty());
    p.assert_clean();
}

#[test]
fn malformed_tun_reads_with_offloads_are_bad_offload() {
    let mut p = offload_pair();
    // Shorter than a virtio-net header.
    p.a.wire.inject_tun(&[0u8; 5]);
    // GSO_TCPV4 over an IPv6 packet.
    let mut wrong = tso_read(true, 1, &pattern(1, 5_000), GSO);
    wrong[1] = VIRTIO_NET_HDR_GSO_TCPV4;
    p.a.wire.inject_tun(&wrong);
    // gso_size 0.
    let mut zero = tso_read(false, 1, &pattern(1, 5_000), GSO);
    zero[4] = 0;
    zero[5] = 0;
    p.a.wire.inject_tun(&zero);
    p.pump();
    assert_eq!(
        p.a.drops(DropCause::BadOffload),
        3,
        "{:?}",
        p.a.nonzero_drops()
    );
    assert_eq!(p.a.totals().udp_tx_datagrams, 0);
    p.a.wire
        .inject_tun(&with_vnet_none(&udp_packet(A_V4, B_V4, 100, 1)));
    p.pump();
    assert_eq!(p.b.wire.take_tun().len(), 1);
    p.assert_clean();
}

#[test]
fn rotated_out_sessions_leave_the_index_map() {
    let mut p = plain_pair();
    for (k, seed) in [(2u32, 50u8), (3, 51)] {
        let (sa, sb) = session_pair(
            0xA000_0000 + k,
            0xB000_0000 + k,
            seed,
            clock(),
            Limits::DEFAULT,
        );
        p.b.command(Command::InstallSession {
            peer: PEER_A,
            slot: Slot::Next,
            session: sb,
        });
        p.b.turn();
        p.a.command(Command::InstallSession {
            peer: PEER_B,
            slot: Slot::Current,
            session: sa,
        });
        // A's first packet on the new session confirms it at B.
        assert_flows(&mut p, k);
    }
    let t = p.b.worker.tables();
    let peer = &t.peers[&PEER_A];
    assert_eq!(
        peer.sessions.current.as_ref().map(|s| s.local_index),
        Some(0xB000_0003)
    );
    assert_eq!(
        peer.sessions.previous.as_ref().map(|s| s.local_index),
        Some(0xB000_0002)
    );
    assert!(
        !t.by_index.contains_key(&B_INDEX),
        "the first session left every slot but its index is still mapped"
    );
}

#[test]
fn oversized_segment_count_is_not_a_rekey() {
    let mut p = offload_pair();
    // 50,000 bytes in 10-byte segments: 5,000 segments (the Segmenter accepts it).
    p.a.wire
        .inject_tun(&tso_read(false, 1, &pattern(1, 50_000), 10));
    p.pump();
    assert!(
        p.a.take_events().is_empty(),
        "drops {:?}",
        p.a.nonzero_drops()
    );
}

#[test]
fn keepalive_command_confirms_the_responders_next_session() {
    // A handshake just finished: A (initiator) holds `Current`, B (responder) holds `Next`,
    // which B may not send on until A's first authenticated packet arrives.
    let mut p = Pair::without_sessions(FakeConfig::plain());
    let (sa, sb) = session_pair(A_INDEX, B_INDEX, 9, T0, Limits::DEFAULT);
    p.install(sa, Slot::Current, Arc::clone(&sb), Slot::Next);
    p.settle_commands();
    assert!(!sb.confirmed());
    p.a.command(Command::Keepalive { peer: PEER_B });
    p.pump();
    assert_eq!(p.b.totals().keepalives_rx, 1);
    assert!(
        sb.confirmed(),
        "the keepalive did not confirm B's next session"
    );
    assert!(
        p.b.wire.take_tun().is_empty(),
        "a keepalive must not reach the TUN"
    );
    // B now sends on the promoted session.
    assert_flows(&mut p, 1);
    p.assert_clean();
}

#[test]
fn plain_packets_of_one_turn_leave_as_one_gso_send_and_arrive_in_order() {
    // 96 KiB transmit frames (the io_uring sizing): a whole turn's packets fit one batch.
    // (With 2 KiB frames each batch holds one datagram; other tests cover that delivery.)
    {
        let mut p = Pair::new(FakeConfig::offload(), Limits::DEFAULT);
        p.settle_commands();
        // 40 equal-size UDP packets, then one shorter (it ends the batch), read in one turn.
        let mut pkts: Vec<Vec<u8>> = (0..40).map(|i| udp_packet(A_V4, B_V4, 1200, i)).collect();
        pkts.push(udp_packet(A_V4, B_V4, 100, 99));
        for pkt in &pkts {
            p.a.wire.inject_tun(&with_vnet_none(pkt));
        }
        p.a.turn();
        p.a.turn();
        let sent = p.a.wire.take_udp();
        assert_eq!(sent.len(), 1, "expected one GSO send, got {}", sent.len());
        let stride = HEADER_LEN + pkts[0].len() + TAG_LEN;
        assert_eq!(sent[0].segment_size, Some(stride as u16));
        let datagrams = sent[0].datagrams();
        assert_eq!(datagrams.len(), 41);
        assert_eq!(datagrams[40].len(), HEADER_LEN + pkts[40].len() + TAG_LEN);
        // Delivered to B as a GRO train: every packet, in order, byte-identical.
        p.b.wire.inject_udp(A_ADDR, &sent[0].bytes, stride);
        p.pump();
        let writes = p.b.wire.take_tun();
        let plain: Vec<Vec<u8>> = writes.iter().map(|w| w[VNET_HDR_LEN..].to_vec()).collect();
        assert_eq!(plain, pkts);
        p.assert_clean();
    }
}
