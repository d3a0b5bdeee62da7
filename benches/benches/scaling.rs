//! Per-packet forwarding cost against the number of installed peers (issue 5, item 3): the
//! outbound path of one packet is a cryptokey route lookup (inner destination -> the peer's
//! current session index), a session lookup by index, a counter reservation and a seal.
//! Measured with 1, 100 and 10,000 peers, destinations spread over all of them (so a large
//! table is not served from one hot cache line), for 64- and 1420-byte payloads; plus the two
//! lookups alone, where the peer count is the only variable.
//!
//! Run: `cargo bench -p shadowmesh-benches --bench scaling -- --warm-up-time 1 --measurement-time 2`.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadowmesh_dataplane::crypto::Cipher;
use shadowmesh_dataplane::engine::tables::IdHasher;
use shadowmesh_dataplane::routing::RoutingTable;
use shadowmesh_dataplane::session::{Limits, Session, SessionKeys};
use shadowmesh_dataplane::wire::{HEADER_LEN, TAG_LEN};

const PEER_COUNTS: [u32; 3] = [1, 100, 10_000];
const SIZES: [usize; 2] = [64, 1420];
/// Destinations cycled through by the benchmark loop (a power of two: index by mask).
const DESTS: usize = 4096;

/// The engine's index map type: local session index -> session.
type IndexMap = HashMap<u32, Arc<Session>, BuildHasherDefault<IdHasher>>;

/// Peer `i`'s overlay address: 100.64.0.0/10 + i + 1 (a /32 route each).
fn peer_addr(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)) + i))
}

/// Local index of peer `i`'s session: scattered, as the control plane assigns random ones.
fn local_index(i: u32) -> u32 {
    i.wrapping_mul(0x9E37_79B1) | 1
}

/// `n` peers: a route and one session each.
fn install(n: u32, now: Duration) -> (RoutingTable<u32>, IndexMap) {
    let mut routes = RoutingTable::new();
    let mut sessions = IndexMap::default();
    for i in 0..n {
        let idx = local_index(i);
        routes.insert(peer_addr(i), 32, idx).expect("route");
        let keys = SessionKeys {
            cipher: Cipher::Aes256Gcm,
            send: [(i % 251) as u8; 32],
            recv: [7; 32],
        };
        let s = Session::new(idx, idx ^ 0x5555, i, &keys, now, Limits::DEFAULT).expect("session");
        sessions.insert(idx, Arc::new(s));
    }
    (routes, sessions)
}

/// Destinations spread over all installed peers (xorshift, deterministic).
fn destinations(n: u32) -> Vec<IpAddr> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..DESTS)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            peer_addr((x % u64::from(n)) as u32)
        })
        .collect()
}

fn forwarding(c: &mut Criterion) {
    let now = Duration::from_secs(5);
    for n in PEER_COUNTS {
        let (routes, sessions) = install(n, now);
        let dests = destinations(n);

        let mut g = c.benchmark_group("lookup");
        g.throughput(Throughput::Elements(1));
        let mut k = 0usize;
        g.bench_function(format!("route+index/peers={n}"), |b| {
            b.iter(|| {
                k = (k + 1) & (DESTS - 1);
                let idx = routes.lookup(black_box(dests[k])).expect("route");
                black_box(sessions.get(&idx).expect("session").remote_index)
            })
        });
        g.finish();

        for size in SIZES {
            let mut g = c.benchmark_group(format!("forward/{size}"));
            g.throughput(Throughput::Elements(1));
            let mut frame = vec![0x5au8; HEADER_LEN + size + TAG_LEN];
            let mut k = 0usize;
            g.bench_function(format!("peers={n}"), |b| {
                b.iter(|| {
                    k = (k + 1) & (DESTS - 1);
                    let idx = routes.lookup(black_box(dests[k])).expect("route");
                    let s = sessions.get(&idx).expect("session");
                    let r = s.reserve(1, now).expect("reserve");
                    black_box(s.seal(r.first, &mut frame, size).expect("seal"))
                })
            });
            g.finish();
        }
    }
}

criterion_group!(benches, forwarding);
criterion_main!(benches);
