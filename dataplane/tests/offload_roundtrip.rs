//! Segmentation ↔ coalescing round trips on generated TCP super-packets, checked with a
//! naive checksum written here (independent of the crate's fast one), and no-panic
//! properties of both directions on arbitrary input.

use std::ops::Range;

use proptest::prelude::*;
use shadowmesh_dataplane::offload::{
    coalesce_in_place, coalesce_in_place_counted, emit_vnet_before, CoalesceCounters, Coalesced,
    Segmenter, VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4, VNET_HDR_LEN,
};

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// Textbook RFC 1071 over big-endian words, folding as it goes.
fn naive_sum(parts: &[&[u8]]) -> u16 {
    let mut bytes = Vec::new();
    for p in parts {
        bytes.extend_from_slice(p);
    }
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut s: u32 = 0;
    for w in bytes.chunks(2) {
        s += u32::from(u16::from_be_bytes([w[0], w[1]]));
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(pkt: &[u8], proto: u8, l4_len: usize) -> Vec<u8> {
    let mut ph = Vec::new();
    if pkt[0] >> 4 == 4 {
        ph.extend_from_slice(&pkt[12..20]);
        ph.extend_from_slice(&[0, proto]);
        ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        ph.extend_from_slice(&pkt[8..40]);
        ph.extend_from_slice(&(l4_len as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, proto]);
    }
    ph
}

/// Asserts the IP header and L4 checksums of a complete packet verify.
fn assert_checksums_ok(pkt: &[u8]) {
    let (iph, proto) = if pkt[0] >> 4 == 4 {
        let iph = usize::from(pkt[0] & 0xf) * 4;
        assert_eq!(naive_sum(&[&pkt[..iph]]), 0xffff, "IPv4 header checksum");
        assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
        (iph, pkt[9])
    } else {
        assert_eq!(
            usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40,
            pkt.len()
        );
        (40, pkt[6])
    };
    let ph = pseudo(pkt, proto, pkt.len() - iph);
    assert_eq!(naive_sum(&[&ph, &pkt[iph..]]), 0xffff, "L4 checksum");
}

#[derive(Debug, Clone)]
struct Spec {
    v6: bool,
    udp: bool,
    opts: usize,
    payload: usize,
    gso: u16,
    flags: u8,
    seq: u32,
    id: u16,
    port: u16,
}

/// A super-packet as the kernel hands it to us: lengths for the whole packet, L4 checksum
/// field = pseudo-header seed, plus its vnet header.
fn build(s: &Spec) -> (VirtioNetHdr, Vec<u8>) {
    let iph = if s.v6 { 40 } else { 20 };
    let l4h = if s.udp { 8 } else { 20 + s.opts };
    let total = iph + l4h + s.payload;
    let mut p = vec![0u8; total];
    let proto = if s.udp { 17 } else { 6 };
    if s.v6 {
        p[0] = 0x60;
        p[1] = 0x0a;
        p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        p[6] = proto;
        p[7] = 64;
        p[8] = 0xfd;
        p[23] = 1;
        p[24] = 0xfd;
        p[39] = 2;
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&s.id.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 7, 9]);
        let c = !naive_sum(&[&p[..20]]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p[iph..iph + 2].copy_from_slice(&s.port.to_be_bytes());
    p[iph + 2..iph + 4].copy_from_slice(&443u16.to_be_bytes());
    let csum_off = if s.udp {
        p[iph + 4..iph + 6].copy_from_slice(&((total - iph) as u16).to_be_bytes());
        6
    } else {
        p[iph + 4..iph + 8].copy_from_slice(&s.seq.to_be_bytes());
        p[iph + 8..iph + 12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        p[iph + 12] = ((l4h / 4) as u8) << 4;
        p[iph + 13] = s.flags;
        p[iph + 14..iph + 16].copy_from_slice(&512u16.to_be_bytes());
        for (i, b) in p[iph + 20..iph + l4h].iter_mut().enumerate() {
            *b = if i % 4 == 0 { 1 } else { 8 }; // NOPs and a fake option kind
        }
        16
    };
    for (i, b) in p[iph + l4h..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let seed = naive_sum(&[&pseudo(&p, proto, total - iph)]);
    p[iph + csum_off..iph + csum_off + 2].copy_from_slice(&seed.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: match (s.udp, s.v6) {
            (true, _) => VIRTIO_NET_HDR_GSO_UDP_L4,
            (false, false) => VIRTIO_NET_HDR_GSO_TCPV4,
            (false, true) => VIRTIO_NET_HDR_GSO_TCPV6,
        },
        hdr_len: (iph + l4h) as u16,
        gso_size: s.gso,
        csum_start: iph as u16,
        csum_offset: csum_off as u16,
    };
    (hdr, p)
}

fn segment_all(hdr: &VirtioNetHdr, pkt: &[u8]) -> Vec<Vec<u8>> {
    let mut s = Segmenter::new(hdr, pkt).expect("valid super-packet");
    let count = s.segment_count();
    let mut out = vec![0u8; s.max_segment_len()];
    let mut segs = Vec::new();
    while let Some(r) = s.next_into(&mut out) {
        let n = r.expect("segment fits");
        segs.push(out[..n].to_vec());
        assert!(segs.len() <= count);
    }
    assert_eq!(segs.len(), count);
    segs
}

/// Lays packets out as the engine would after decrypting a GRO batch in place: each behind
/// a 16-byte data header and followed by a 16-byte tag.
fn lay_out(pkts: &[Vec<u8>]) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut buf = Vec::new();
    let mut ranges = Vec::new();
    for p in pkts {
        buf.extend_from_slice(&[0xee; 16]);
        ranges.push(buf.len()..buf.len() + p.len());
        buf.extend_from_slice(p);
        buf.extend_from_slice(&[0xdd; 16]);
    }
    (buf, ranges)
}

/// Turns coalesced output back into plain packets (re-segmenting super-packets).
fn expand(buf: &mut [u8], outs: &[Coalesced]) -> Vec<Vec<u8>> {
    let mut pkts = Vec::new();
    for c in outs {
        let w = emit_vnet_before(buf, c).expect("headroom");
        let hdr = VirtioNetHdr::parse(&buf[w.start..]).expect("10 bytes were just written");
        assert_eq!(hdr, c.hdr);
        let pkt = &buf[w.start + VNET_HDR_LEN..w.end];
        pkts.extend(segment_all(&hdr, pkt));
    }
    pkts
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        0usize..=10,
        1usize..=20_000,
        prop_oneof![Just(1380u16), Just(1200), Just(536), 1u16..=3000],
        prop_oneof![Just(ACK), Just(ACK | PSH)],
        any::<u32>(),
        any::<u16>(),
    )
        .prop_map(|(v6, opts, payload, gso, flags, seq, id)| Spec {
            v6,
            udp: false,
            opts: opts * 4,
            payload,
            gso,
            flags,
            seq,
            id,
            port: 40000,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// split → coalesce gives back the kernel's super-packet byte for byte (and its vnet
    /// header), and every segment verifies with the naive checksum.
    #[test]
    fn tcp_split_coalesce_round_trip(s in spec()) {
        let (hdr, orig) = build(&s);
        let segs = segment_all(&hdr, &orig);
        let iph = if s.v6 { 40 } else { 20 };
        let hl = iph + 20 + s.opts;
        let mut payload = Vec::new();
        for seg in &segs {
            assert_checksums_ok(seg);
            prop_assert!(seg.len() <= hl + usize::from(s.gso));
            payload.extend_from_slice(&seg[hl..]);
        }
        prop_assert_eq!(&payload[..], &orig[hl..]);

        let (mut buf, ranges) = lay_out(&segs);
        let mut out = vec![Coalesced::default(); ranges.len()];
        let mut counters = CoalesceCounters::default();
        let n = coalesce_in_place_counted(&mut buf, &ranges, &mut out, &mut counters);
        prop_assert_eq!(n, 1);
        let c = &out[0];
        if segs.len() == 1 {
            prop_assert_eq!(c.hdr, VirtioNetHdr::NONE);
            prop_assert_eq!(&buf[c.range.clone()], &segs[0][..]);
        } else {
            prop_assert_eq!(&buf[c.range.clone()], &orig[..]);
            prop_assert_eq!(c.hdr, hdr);
            prop_assert_eq!(counters.merged as usize, segs.len() - 1);
        }
        let again = expand(&mut buf, &out[..n]);
        prop_assert_eq!(again, segs);
    }

    /// Any TCP flags, two flows back to back, one corrupted segment: the packets that come
    /// out of coalesce (re-segmented) are exactly the packets that went in, in order, and
    /// the corrupted one passes through unmerged.
    #[test]
    fn order_and_bytes_preserved(a in spec(), b in spec(), flags in any::<u8>(), corrupt in proptest::option::of(any::<prop::sample::Index>())) {
        let a = Spec { flags: flags | ACK, ..a };
        let b = Spec { port: 40001, ..b };
        let mut segs = segment_all(&build(&a).0, &build(&a).1);
        segs.extend(segment_all(&build(&b).0, &build(&b).1));
        let mut bad = None;
        if let Some(ix) = corrupt {
            let i = ix.index(segs.len());
            let last = segs[i].len() - 1;
            segs[i][last] ^= 0x5a; // payload byte: L4 checksum no longer verifies
            bad = Some(segs[i].clone());
        }
        let (mut buf, ranges) = lay_out(&segs);
        let mut out = vec![Coalesced::default(); ranges.len()];
        let n = coalesce_in_place(&mut buf, &ranges, &mut out);
        prop_assert!(n >= 1 && n <= segs.len());
        if let Some(bad) = bad {
            prop_assert!(out[..n].iter().any(|c| buf[c.range.clone()] == bad[..] && c.hdr == VirtioNetHdr::NONE));
        }
        let again = expand(&mut buf, &out[..n]);
        prop_assert_eq!(again, segs);
    }

    /// UDP super-packets (USO): every datagram verifies and carries its share of payload.
    #[test]
    fn udp_segments_verify(s in spec()) {
        let s = Spec { udp: true, payload: s.payload.min(65_000), ..s };
        let (hdr, orig) = build(&s);
        let segs = segment_all(&hdr, &orig);
        let hl = if s.v6 { 48 } else { 28 };
        let mut payload = Vec::new();
        for seg in &segs {
            assert_checksums_ok(seg);
            let iph = hl - 8;
            prop_assert_eq!(usize::from(u16::from_be_bytes([seg[iph + 4], seg[iph + 5]])), seg.len() - iph);
            payload.extend_from_slice(&seg[hl..]);
        }
        prop_assert_eq!(&payload[..], &orig[hl..]);
        // UDP is passed through by coalescing, one write per datagram.
        let (mut buf, ranges) = lay_out(&segs);
        let mut out = vec![Coalesced::default(); ranges.len()];
        prop_assert_eq!(coalesce_in_place(&mut buf, &ranges, &mut out), segs.len());
        prop_assert!(out.iter().all(|c| c.hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE));
    }

    /// The Segmenter never panics and never yields more than it announced, whatever the
    /// header and bytes.
    #[test]
    fn segmenter_never_panics(
        flags in 0u8..4, gso_type in prop_oneof![Just(0u8), Just(1), Just(3), Just(4), Just(5), Just(0x81), any::<u8>()],
        hdr_len in any::<u16>(), gso_size in prop_oneof![0u16..64, any::<u16>()],
        csum_start in prop_oneof![Just(20u16), Just(40), any::<u16>()], csum_offset in prop_oneof![Just(16u16), Just(6), any::<u16>()],
        mut bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        version in prop_oneof![Just(0x45u8), Just(0x60), Just(0x46), any::<u8>()],
        out_len in 0usize..4000,
    ) {
        if let Some(b) = bytes.first_mut() { *b = version; }
        let hdr = VirtioNetHdr { flags, gso_type, hdr_len, gso_size, csum_start, csum_offset };
        if let Ok(mut s) = Segmenter::new(&hdr, &bytes) {
            let count = s.segment_count();
            let mut out = vec![0u8; out_len];
            let mut k = 0;
            while let Some(r) = s.next_into(&mut out) {
                k += 1;
                prop_assert!(k <= count);
                if let Ok(n) = r { prop_assert!(n <= out.len()); }
            }
        }
    }

    /// Mutated real segments at mutated headers: the Segmenter either refuses or yields
    /// packets without panicking.
    #[test]
    fn segmenter_on_mutated_super_packets(s in spec(), at in any::<prop::sample::Index>(), x in 1u8..=255, gso in any::<u16>()) {
        let (mut hdr, mut p) = build(&Spec { payload: s.payload.min(4000), ..s });
        let i = at.index(p.len().min(80));
        p[i] ^= x;
        hdr.gso_size = gso;
        if let Ok(mut seg) = Segmenter::new(&hdr, &p) {
            let mut out = vec![0u8; 70_000];
            let mut k = 0;
            while let Some(r) = seg.next_into(&mut out) {
                prop_assert!(r.is_ok());
                k += 1;
                prop_assert!(k <= seg.segment_count());
            }
        }
    }

    /// coalesce_in_place never panics on random bytes and random in-bounds ranges (sorted
    /// or not, overlapping or not), and what it returns is in bounds with headroom.
    #[test]
    fn coalesce_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..4000),
        raw in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..1600), 0..40),
        sort in any::<bool>(), out_len in 0usize..50,
    ) {
        let mut buf = bytes;
        let len = buf.len();
        let mut ranges: Vec<Range<usize>> = raw
            .iter()
            .map(|(ix, l)| { let s = if len == 0 { 0 } else { ix.index(len) }; s..(s + l).min(len) })
            .collect();
        if sort { ranges.sort_by_key(|r| r.start); }
        let mut out = vec![Coalesced::default(); out_len];
        let n = coalesce_in_place(&mut buf, &ranges, &mut out);
        prop_assert!(n <= out_len.min(ranges.len()));
        for c in &out[..n] {
            prop_assert!(c.range.start >= VNET_HDR_LEN && c.range.end <= len);
            prop_assert!(emit_vnet_before(&mut buf, c).is_ok());
        }
    }

    /// Real segments with one random byte flipped anywhere: coalescing never panics and
    /// every super-packet it makes is accepted back by the Segmenter.
    #[test]
    fn coalesce_on_mutated_segments(s in spec(), at in any::<prop::sample::Index>(), x in 1u8..=255) {
        let (hdr, orig) = build(&Spec { payload: s.payload.min(8000), ..s });
        let segs = segment_all(&hdr, &orig);
        let (mut buf, ranges) = lay_out(&segs);
        let i = at.index(buf.len());
        buf[i] ^= x;
        let mut out = vec![Coalesced::default(); ranges.len()];
        let n = coalesce_in_place(&mut buf, &ranges, &mut out);
        for c in &out[..n] {
            let w = emit_vnet_before(&mut buf, c).unwrap();
            let pkt = &buf[w.start + VNET_HDR_LEN..w.end];
            if c.hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE {
                let mut seg = Segmenter::new(&c.hdr, pkt).unwrap();
                let mut o = vec![0u8; 70_000];
                while let Some(r) = seg.next_into(&mut o) {
                    let len = r.unwrap();
                    assert_checksums_ok(&o[..len]);
                }
            }
        }
    }
}

#[test]
fn bad_ranges_are_counted_drops() {
    let (_, p) = build(&Spec {
        v6: false,
        udp: false,
        opts: 0,
        payload: 100,
        gso: 50,
        flags: ACK,
        seq: 1,
        id: 1,
        port: 1,
    });
    let mut buf = vec![0u8; 400];
    buf[10..10 + p.len()].copy_from_slice(&p);
    buf[160..160 + p.len()].copy_from_slice(&p);
    let ranges = [
        10..10 + p.len(),
        5..30,              // before the previous end: overlapping
        160..160 + p.len(), // fine, headroom 10 after the first
        300..500,           // beyond the buffer
        300..300,           // empty
    ];
    let mut out = vec![Coalesced::default(); 5];
    let mut c = CoalesceCounters::default();
    let n = coalesce_in_place_counted(&mut buf, &ranges, &mut out, &mut c);
    assert_eq!(n, 2);
    assert_eq!(c.dropped_bad_range, 3);
    assert_eq!(
        c.passed_through, 2,
        "same seq twice: not contiguous, so no merge"
    );
    // out too small: the rest is a counted drop, never a panic
    let mut one = vec![Coalesced::default(); 1];
    let mut c = CoalesceCounters::default();
    assert_eq!(
        coalesce_in_place_counted(&mut buf, &ranges, &mut one, &mut c),
        1
    );
    assert_eq!(c.dropped_out_full, 1);
    // no headroom at the buffer start
    let mut c = CoalesceCounters::default();
    assert_eq!(
        coalesce_in_place_counted(&mut buf, &[Range { start: 0, end: 20 }], &mut one, &mut c),
        0
    );
    assert_eq!(c.dropped_bad_range, 1);
    assert!(emit_vnet_before(
        &mut buf,
        &Coalesced {
            range: 3..20,
            hdr: VirtioNetHdr::NONE
        }
    )
    .is_err());
}

#[test]
fn full_64k_super_packet_merges_back() {
    let s = Spec {
        v6: false,
        udp: false,
        opts: 12,
        payload: 65535 - 52,
        gso: 1380,
        flags: ACK | PSH,
        seq: u32::MAX - 10,
        id: 7,
        port: 9,
    };
    let (hdr, orig) = build(&s);
    let segs = segment_all(&hdr, &orig);
    assert_eq!(segs.len(), (65535usize - 52).div_ceil(1380));
    let (mut buf, ranges) = lay_out(&segs);
    let mut out = vec![Coalesced::default(); ranges.len()];
    assert_eq!(coalesce_in_place(&mut buf, &ranges, &mut out), 1);
    assert_eq!(&buf[out[0].range.clone()], &orig[..]);
    assert_eq!(out[0].hdr, hdr);
}

/// Recomputes the IPv4 header and TCP checksums of a plain packet (after a test edit).
fn fix_checksums(p: &mut [u8]) {
    let iph = if p[0] >> 4 == 4 {
        p[10..12].copy_from_slice(&[0, 0]);
        let c = !naive_sum(&[&p[..20]]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        20
    } else {
        40
    };
    p[iph + 16..iph + 18].copy_from_slice(&[0, 0]);
    let ph = pseudo(p, 6, p.len() - iph);
    let c = !naive_sum(&[&ph, &p[iph..]]);
    p[iph + 16..iph + 18].copy_from_slice(&c.to_be_bytes());
}

/// Each rule of the merge, broken on segment 2 of 4 ([0,1] [2] [3]: segment 3 no longer
/// matches 2 either): the run must split there, and what comes out must still be exactly
/// the packets that went in.
#[test]
fn merge_rules_split_runs() {
    type Edit = fn(&mut Vec<u8>, usize);
    let cases: [(&str, bool, Edit, usize); 11] = [
        (
            "seq gap",
            false,
            |p, t| p[t + 7] = p[t + 7].wrapping_add(1),
            3,
        ),
        ("ack differs", false, |p, t| p[t + 11] ^= 1, 3),
        ("window differs", false, |p, t| p[t + 15] ^= 1, 3),
        ("option differs", false, |p, t| p[t + 21] ^= 1, 3),
        ("dst port differs", false, |p, t| p[t + 3] ^= 1, 3),
        ("TTL differs", false, |p, _| p[8] -= 1, 3),
        ("TOS differs", false, |p, _| p[1] ^= 4, 3),
        ("flow label differs", true, |p, _| p[3] ^= 1, 3),
        ("hop limit differs", true, |p, _| p[7] -= 1, 3),
        // PSH on segment 1 closes the run after it: [0,1] [2,3]
        (
            "PSH in the middle",
            false,
            |p, _| {
                let t = 20;
                p[t + 13] |= PSH;
            },
            2,
        ),
        // URG/ECE/etc. on segment 2: it passes through: [0,1] [2] [3]
        ("other flag", false, |p, t| p[t + 13] |= 0x40, 3),
    ];
    for (name, v6, edit, want) in cases {
        let s = Spec {
            v6,
            udp: false,
            opts: 12,
            payload: 400,
            gso: 100,
            flags: ACK,
            seq: 5,
            id: 1,
            port: 7,
        };
        let (hdr, orig) = build(&s);
        let mut segs = segment_all(&hdr, &orig);
        let t = if v6 { 40 } else { 20 };
        let target = if name == "PSH in the middle" { 1 } else { 2 };
        edit(&mut segs[target], t);
        fix_checksums(&mut segs[target]);
        let (mut buf, ranges) = lay_out(&segs);
        let mut out = vec![Coalesced::default(); ranges.len()];
        let n = coalesce_in_place(&mut buf, &ranges, &mut out);
        assert_eq!(n, want, "{name}");
        assert_eq!(expand(&mut buf, &out[..n]), segs, "{name}");
    }
}

/// A shorter segment ends a run; a longer one cannot join it.
#[test]
fn payload_size_rules() {
    let s = Spec {
        v6: false,
        udp: false,
        opts: 0,
        payload: 250,
        gso: 100,
        flags: ACK,
        seq: 5,
        id: 1,
        port: 7,
    };
    let (hdr, orig) = build(&s);
    let first = segment_all(&hdr, &orig); // 100, 100, 50
    let next = Spec {
        seq: 255,
        id: 4,
        payload: 300,
        ..s
    };
    let (hdr2, orig2) = build(&next);
    let mut segs = first.clone();
    segs.extend(segment_all(&hdr2, &orig2)); // 100 100 100: contiguous seq, but after a short one
    let (mut buf, ranges) = lay_out(&segs);
    let mut out = vec![Coalesced::default(); ranges.len()];
    let n = coalesce_in_place(&mut buf, &ranges, &mut out);
    assert_eq!(n, 2);
    assert_eq!(&buf[out[0].range.clone()], &orig[..]);
    assert_eq!(expand(&mut buf, &out[..n]), segs);

    // head of 50 then 100: the bigger one cannot follow
    let small = Spec {
        payload: 50,
        gso: 50,
        ..s
    };
    let (h, o) = build(&small);
    let mut segs = segment_all(&h, &o);
    segs.extend(segment_all(
        &build(&Spec { seq: 55, ..s }).0,
        &build(&Spec { seq: 55, ..s }).1,
    ));
    let (mut buf, ranges) = lay_out(&segs);
    let mut out = vec![Coalesced::default(); ranges.len()];
    let n = coalesce_in_place(&mut buf, &ranges, &mut out);
    assert_eq!(n, 2);
    assert_eq!(expand(&mut buf, &out[..n]), segs);
}

/// Two contiguous 64 KiB super-packets of one flow cannot become one beyond 65535 bytes.
#[test]
fn super_packet_size_bound() {
    let a = Spec {
        v6: true,
        udp: false,
        opts: 0,
        payload: 1380 * 47,
        gso: 1380,
        flags: ACK,
        seq: 0,
        id: 0,
        port: 7,
    };
    let b = Spec {
        seq: 1380 * 47,
        ..a.clone()
    };
    let mut segs = segment_all(&build(&a).0, &build(&a).1);
    segs.extend(segment_all(&build(&b).0, &build(&b).1));
    let (mut buf, ranges) = lay_out(&segs);
    let mut out = vec![Coalesced::default(); ranges.len()];
    let n = coalesce_in_place(&mut buf, &ranges, &mut out);
    assert_eq!(n, 2);
    assert!(out[..n].iter().all(|c| c.range.len() <= 65535));
    assert_eq!(out[0].range.len(), 40 + 20 + 1380 * 47);
    assert_eq!(expand(&mut buf, &out[..n]), segs);
}
