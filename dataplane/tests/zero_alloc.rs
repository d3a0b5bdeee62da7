//! The per-packet path allocates nothing: after setup, a million packets go through
//! reserve → seal → classify → session open (tag + replay) → inner address parse → route
//! lookup + inbound check, and the global allocator's counter must not move.
//!
//! A counting `#[global_allocator]` wraps the system allocator; the loop runs on this thread
//! only, and the test harness's other threads are idle while it runs (one test per binary).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shadowmesh_dataplane::crypto::Cipher;
use shadowmesh_dataplane::routing::RoutingTable;
use shadowmesh_dataplane::session::{Limits, PeerId, Session, SessionKeys};
use shadowmesh_dataplane::wire::{classify, inner_dst, inner_src, Datagram, HEADER_LEN, TAG_LEN};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counter has no effect on
// the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract, see the impl's SAFETY note.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract, see the impl's SAFETY note.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract, see the impl's SAFETY note.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract, see the impl's SAFETY note.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PACKETS: u64 = 1_000_000;
const BATCH: u64 = 64;

/// A minimal IPv4 or IPv6 packet from `src` to `dst` of `len` bytes written at `out`.
fn write_packet(out: &mut [u8], src: IpAddr, dst: IpAddr, len: usize) {
    out[..len].fill(0);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out[0] = 0x45;
            out[12..16].copy_from_slice(&s.octets());
            out[16..20].copy_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out[0] = 0x60;
            out[8..24].copy_from_slice(&s.octets());
            out[24..40].copy_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
}

#[test]
fn million_packets_no_allocation() {
    // Setup (may allocate): two peers' sessions, a routing table with many prefixes.
    let t0 = Duration::from_secs(10);
    let keys_a = SessionKeys {
        cipher: Cipher::Aes256Gcm,
        send: [1; 32],
        recv: [2; 32],
    };
    let keys_b = SessionKeys {
        cipher: Cipher::Aes256Gcm,
        send: [2; 32],
        recv: [1; 32],
    };
    const PEER_A: PeerId = 1;
    let a = Session::new(11, 22, 2, &keys_a, t0, Limits::DEFAULT).unwrap();
    let b = Session::new(22, 11, PEER_A, &keys_b, t0, Limits::DEFAULT).unwrap();
    drop((keys_a, keys_b));

    let mut routes: RoutingTable<PeerId> = RoutingTable::new();
    for i in 0..2000u32 {
        let v4 = Ipv4Addr::from(0x6440_0000 | (i << 8));
        routes.insert(IpAddr::V4(v4), 24, 100 + i).unwrap();
        let v6 = Ipv6Addr::from((0xfd00u128 << 112) | (u128::from(i) << 64));
        routes.insert(IpAddr::V6(v6), 64, 100 + i).unwrap();
    }
    let a_v4 = IpAddr::V4(Ipv4Addr::new(100, 127, 0, 1));
    let a_v6: IpAddr = "fd00:ffff::1".parse().unwrap();
    routes.insert(a_v4, 32, PEER_A).unwrap();
    routes.insert(a_v6, 128, PEER_A).unwrap();
    let b_v4 = IpAddr::V4(Ipv4Addr::new(100, 64, 3, 9));
    let b_v6: IpAddr = "fd00:0:0:3::9".parse().unwrap();

    let payload = 96usize;
    let mut frame = vec![0u8; HEADER_LEN + payload + TAG_LEN];
    let mut delivered = 0u64;
    let mut checksum = 0u64;

    let before = ALLOCS.load(Ordering::SeqCst);
    let mut sent = 0u64;
    while sent < PACKETS {
        let now = t0 + Duration::from_millis(sent / 10_000);
        let r = a.reserve(BATCH, now).unwrap();
        for counter in r.counters() {
            let (src, dst) = if counter % 2 == 0 {
                (a_v4, b_v4)
            } else {
                (a_v6, b_v6)
            };
            write_packet(&mut frame[HEADER_LEN..], src, dst, payload);
            // Sender: outbound route of the inner destination must exist.
            let dst_peer = routes.lookup(inner_dst(&frame[HEADER_LEN..]).unwrap());
            assert!(dst_peer.is_some());
            let n = a.seal(counter, &mut frame, payload).unwrap();
            let dgram = &mut frame[..n];
            let Datagram::Data(h) = classify(dgram) else {
                panic!("not data")
            };
            assert_eq!(h.receiver_index, b.local_index);
            let range = b.open(dgram, now).unwrap();
            let inner = &dgram[range];
            let src = inner_src(inner).unwrap();
            assert!(routes.allows(b.peer, src));
            checksum = checksum.wrapping_add(u64::from(inner[0]));
            delivered += 1;
        }
        sent += r.count;
    }
    let after = ALLOCS.load(Ordering::SeqCst);
    assert_eq!(delivered, PACKETS);
    assert!(checksum > 0);
    assert_eq!(
        after - before,
        0,
        "the packet path allocated {} times",
        after - before
    );
    // The counter really counts: a deliberate allocation moves it.
    let v = std::hint::black_box(vec![0u8; 16]);
    assert!(ALLOCS.load(Ordering::SeqCst) > after);
    drop(v);
}
