//! TUN offload costs: splitting a 64 KiB TSO super-packet (gso_size 1380) into 44 IP packets
//! placed at the plaintext offset of 1452-byte encryption frames, and coalescing those 44
//! decrypted segments back into one super-packet in place. Throughput is payload bytes
//! (criterion prints it in GiB/s).

use std::hint::black_box;
use std::ops::Range;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shadowmesh_dataplane::offload::{
    coalesce_in_place, Coalesced, Segmenter, VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
};

const GSO: usize = 1380;
const SEGMENTS: usize = 44;
const HDRS: usize = 40;
/// Data header + IP packet + tag: a 1420-byte-ish wire frame plus its 16-byte header.
const FRAME: usize = 16 + HDRS + GSO + 16;

/// A TSO4 super-packet as the kernel hands it over (TCP checksum field = pseudo seed; the
/// segmenter does not read it).
fn super_packet() -> (VirtioNetHdr, Vec<u8>) {
    let total = HDRS + GSO * SEGMENTS;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    p[20..22].copy_from_slice(&5201u16.to_be_bytes());
    p[22..24].copy_from_slice(&40000u16.to_be_bytes());
    p[24..28].copy_from_slice(&1u32.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x10;
    p[34..36].copy_from_slice(&512u16.to_be_bytes());
    for (i, b) in p[HDRS..].iter_mut().enumerate() {
        *b = (i * 31) as u8;
    }
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: HDRS as u16,
        gso_size: GSO as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, p)
}

/// Segments into consecutive frames of `arena`; returns the IP packet ranges.
fn segment(hdr: &VirtioNetHdr, pkt: &[u8], arena: &mut [u8], ranges: &mut Vec<Range<usize>>) {
    ranges.clear();
    let Ok(mut s) = Segmenter::new(hdr, pkt) else {
        return;
    };
    for frame in 0..SEGMENTS {
        let at = frame * FRAME + 16;
        let Some(out) = arena.get_mut(at..at + HDRS + GSO) else {
            return;
        };
        match s.next_into(out) {
            Some(Ok(n)) => ranges.push(at..at + n),
            _ => return,
        }
    }
}

fn bench(c: &mut Criterion) {
    let (hdr, pkt) = super_packet();
    let mut arena = vec![0u8; FRAME * SEGMENTS];
    let mut ranges = Vec::with_capacity(SEGMENTS);
    segment(&hdr, &pkt, &mut arena, &mut ranges);
    assert_eq!(ranges.len(), SEGMENTS);
    let template = arena.clone();
    let mut out = vec![Coalesced::default(); SEGMENTS];
    assert_eq!(coalesce_in_place(&mut arena.clone(), &ranges, &mut out), 1);

    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes((GSO * SEGMENTS) as u64));
    g.bench_function("segment_64k_tso4_gso1380", |b| {
        let mut rs = Vec::with_capacity(SEGMENTS);
        b.iter(|| {
            segment(black_box(&hdr), black_box(&pkt), &mut arena, &mut rs);
            black_box(rs.len())
        })
    });
    g.bench_function("coalesce_44_segments", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |buf| black_box(coalesce_in_place(buf, black_box(&ranges), &mut out)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
