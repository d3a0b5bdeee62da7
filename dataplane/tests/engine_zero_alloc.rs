//! The engine's per-packet path allocates nothing: after a warm-up, 100,000 TUN reads (plain
//! packets of both families and TSO super-packets) go A → B through two real workers over
//! the fake backend — route, seal, GSO send, GRO receive, open, replay and source checks,
//! coalescing, TUN writes — and the allocation count of this thread must not move.
//!
//! A counting `#[global_allocator]` counts only on the thread that armed it (libtest's own
//! threads may allocate meanwhile); the fake backend preallocates all its queues and arenas.
#![allow(unsafe_code)]

mod engine_common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use engine_common::*;
use shadowmesh_dataplane::engine::counters::DropCause;
use shadowmesh_dataplane::engine::{Command, Slot};
use shadowmesh_dataplane::session::Limits;

struct Counting;

thread_local! {
    // `const` initialisers without destructors: reading them never allocates, so they are
    // safe to touch from inside the allocator.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; counting touches only
// destructor-free thread-locals and has no effect on the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded contract, see the impl's SAFETY note.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded contract, see the impl's SAFETY note.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
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

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

fn arm(on: bool) {
    ARMED.with(|a| a.set(on));
}

/// TUN reads per pump round.
const PER_ROUND: usize = 32;
/// TUN reads measured.
const PACKETS: usize = 100_000;

#[test]
fn steady_state_allocates_nothing() {
    let mut p = Pair::new(FakeConfig::offload(), Limits::DEFAULT);
    p.settle_commands();

    // The schedule of reads: mostly plain packets, every 8th a TSO super-packet.
    let mut schedule: Vec<(Vec<u8>, u64)> = Vec::new();
    let tso = [
        (false, 4_140),
        (true, 13_800),
        (false, 64_000),
        (true, 30_000),
    ];
    for i in 0..64u32 {
        if i % 8 == 7 {
            let (v6, n) = tso[(i as usize / 8) % tso.len()];
            let read = tso_read(v6, i * 100_000, &pattern(i, n), 1380);
            schedule.push((read, n.div_ceil(1380) as u64));
        } else {
            let (src, dst) = if i % 2 == 0 {
                (A_V4, B_V4)
            } else {
                (A_V6, B_V6)
            };
            let len = [1200usize, 64, 1400, 500][i as usize % 4];
            schedule.push((with_vnet_none(&udp_packet(src, dst, len, i)), 1));
        }
    }

    let mut next = 0usize;
    let mut round = |p: &mut Pair, reads: &mut usize, segments: &mut u64, written: &mut u64| {
        for _ in 0..PER_ROUND {
            let (read, segs) = &schedule[next % schedule.len()];
            p.a.wire.inject_tun(read);
            *segments += segs;
            next += 1;
        }
        *reads += PER_ROUND;
        p.pump();
        p.b.wire.drain_tun(|w| *written += w.len() as u64);
    };

    // Warm-up: channels, maps and the fake's queues reach their steady sizes.
    let (mut reads, mut segments, mut written) = (0usize, 0u64, 0u64);
    for _ in 0..32 {
        round(&mut p, &mut reads, &mut segments, &mut written);
    }
    let warm_segments = segments;
    let warm_rx = p.b.totals().tun_tx_packets;
    assert_eq!(warm_rx, warm_segments, "warm-up lost packets");

    arm(true);
    let before = allocs();
    let (mut reads, mut segments, mut written) = (0usize, 0u64, 0u64);
    while reads < PACKETS {
        round(&mut p, &mut reads, &mut segments, &mut written);
    }
    let after = allocs();
    arm(false);

    let t = p.b.totals();
    assert_eq!(
        t.tun_tx_packets - warm_rx,
        segments,
        "packets lost: drops {:?}",
        p.b.nonzero_drops()
    );
    assert!(written > segments * 64, "B wrote only {written} bytes");
    assert!(p.a.nonzero_drops().is_empty(), "{:?}", p.a.nonzero_drops());
    assert!(p.b.nonzero_drops().is_empty(), "{:?}", p.b.nonzero_drops());
    p.assert_clean();
    assert_eq!(
        after - before,
        0,
        "{} allocations while {reads} TUN reads ({segments} packets) went A -> B",
        after - before
    );
    // The counter really counts on this thread.
    arm(true);
    let v = std::hint::black_box(vec![0u8; 16]);
    assert!(allocs() > after);
    arm(false);
    drop(v);
}

/// One cycle of holding and flushing: A loses its session to B, reads `k` packets to B and
/// `k` to unrouted overlay destinations (all held, the control plane asked), gets the session
/// back (the `k` to B flushed and delivered) and lets the rest expire.
fn hold_cycle(
    p: &mut Pair,
    session: &Arc<shadowmesh_dataplane::session::Session>,
    k: usize,
    reads: &[Vec<u8>],
    unrouted: &[Vec<u8>],
) -> u64 {
    p.a.command(Command::RemoveSession {
        local_index: A_INDEX,
    });
    p.settle_commands();
    for i in 0..k {
        p.a.wire.inject_tun(&reads[i % reads.len()]);
        p.a.wire.inject_tun(&unrouted[i % unrouted.len()]);
    }
    p.pump();
    let _ = p.a.events.try_iter().count();
    p.a.command(Command::InstallSession {
        peer: PEER_B,
        slot: Slot::Current,
        session: Arc::clone(session),
    });
    p.pump();
    let mut delivered = 0u64;
    p.b.wire.drain_tun(|_| delivered += 1);
    advance(Duration::from_secs(4));
    p.pump();
    delivered
}

#[test]
fn holding_and_flushing_allocate_nothing_per_packet() {
    let mut p = Pair::without_sessions(FakeConfig::offload());
    // Long-lived keys: the cycles take minutes of fake time.
    let limits = Limits {
        rekey_after_time: Duration::from_secs(100_000),
        reject_after_time: Duration::from_secs(100_000),
        ..Limits::DEFAULT
    };
    let (sa, sb) = session_pair(A_INDEX, B_INDEX, 21, T0, limits);
    p.install(Arc::clone(&sa), Slot::Current, sb, Slot::Current);
    p.settle_commands();
    let reads: Vec<Vec<u8>> = (0..16u32)
        .map(|i| with_vnet_none(&udp_packet(A_V4, B_V4, 100 + 50 * i as usize, i)))
        .collect();
    let unrouted: Vec<Vec<u8>> = (0..16u8)
        .map(|i| with_vnet_none(&udp_packet(A_V4, IpAddr::from([100, 64, 200, i]), 600, 0)))
        .collect();
    for _ in 0..8 {
        hold_cycle(&mut p, &sa, 30, &reads, &unrouted);
    }
    // The same number of cycles (hence of commands, whose channel allocates in blocks) with
    // 1 and with 30 packets of each kind: the allocations must not depend on the packets.
    const CYCLES: usize = 31;
    let measure = |p: &mut Pair, k: usize| {
        arm(true);
        let before = allocs();
        let mut delivered = 0;
        for _ in 0..CYCLES {
            delivered += hold_cycle(p, &sa, k, &reads, &unrouted);
        }
        let n = allocs() - before;
        arm(false);
        assert_eq!(delivered, (CYCLES * k) as u64, "held packets lost");
        n
    };
    let few = measure(&mut p, 1);
    let many = measure(&mut p, 30);
    assert_eq!(
        many, few,
        "holding 30 packets per cycle allocated {many}, holding 1 allocated {few}"
    );
    assert!(
        few <= 2 * CYCLES as u64,
        "{few} allocations in {CYCLES} cycles"
    );
    assert!(p.a.totals().held > 0 && p.a.totals().hold_flushed > 0);
    assert!(p.a.drops(DropCause::HoldExpired) > 0);
    p.assert_clean();
}
