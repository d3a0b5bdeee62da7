//! Per-packet costs of the dataplane core: framed seal/open (header + AEAD in place) beside
//! raw aws-lc-rs `LessSafeKey` on the same buffers, the replay window, and cryptokey route
//! lookups with 10,000 prefixes.
//!
//! Run: `cargo bench -p shadowmesh-benches --bench packet -- --warm-up-time 1 --measurement-time 2`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shadowmesh_dataplane::crypto::{self, nonce_for, Cipher, DataKey};
use shadowmesh_dataplane::replay::ReplayWindow;
use shadowmesh_dataplane::routing::RoutingTable;
use shadowmesh_dataplane::session::{Limits, Session, SessionKeys};
use shadowmesh_dataplane::wire::{DataHeader, HEADER_LEN, TAG_LEN};

const SIZES: [usize; 4] = [64, 512, 1420, 65536];
const CIPHERS: [(Cipher, &aead::Algorithm); 2] = [
    (Cipher::Aes256Gcm, &aead::AES_256_GCM),
    (Cipher::ChaCha20Poly1305, &aead::CHACHA20_POLY1305),
];

fn raw_key(alg: &'static aead::Algorithm, k: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(alg, k).expect("key"))
}

fn aead_benches(c: &mut Criterion) {
    let kb = [7u8; 32];
    for (cipher, alg) in CIPHERS {
        let framed = DataKey::new(cipher, &kb).expect("key");
        let raw = raw_key(alg, &kb);
        for size in SIZES {
            let mut g = c.benchmark_group(format!("seal/{cipher}"));
            g.throughput(Throughput::Bytes(size as u64));
            let mut frame = vec![0x5au8; HEADER_LEN + size + TAG_LEN];
            let mut counter = 0u64;
            g.bench_function(format!("framed/{size}"), |b| {
                b.iter(|| {
                    counter += 1;
                    black_box(crypto::seal(&framed, 9, counter, &mut frame, size).expect("seal"))
                })
            });
            g.bench_function(format!("raw/{size}"), |b| {
                b.iter(|| {
                    counter += 1;
                    let hdr = DataHeader {
                        receiver_index: 9,
                        counter,
                        lane: 0,
                    }
                    .to_bytes();
                    let tag = raw
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce_for(counter)),
                            Aad::from(&hdr),
                            &mut frame[HEADER_LEN..HEADER_LEN + size],
                        )
                        .expect("seal");
                    black_box(tag)
                })
            });
            g.finish();

            // Open: each iteration opens a fresh copy of one sealed datagram (the copy is
            // made outside the timed section by iter_batched_ref).
            let mut g = c.benchmark_group(format!("open/{cipher}"));
            g.throughput(Throughput::Bytes(size as u64));
            let mut sealed = vec![0x5au8; HEADER_LEN + size + TAG_LEN];
            let n = crypto::seal(&framed, 9, 1234, &mut sealed, size).expect("seal");
            sealed.truncate(n);
            g.bench_function(format!("framed/{size}"), |b| {
                b.iter_batched_ref(
                    || sealed.clone(),
                    |d| black_box(crypto::open(&framed, d).expect("open")),
                    BatchSize::SmallInput,
                )
            });
            g.bench_function(format!("raw/{size}"), |b| {
                b.iter_batched_ref(
                    || sealed.clone(),
                    |d| {
                        let mut hdr = [0u8; HEADER_LEN];
                        hdr.copy_from_slice(&d[..HEADER_LEN]);
                        let p = raw
                            .open_in_place(
                                Nonce::assume_unique_for_key(nonce_for(1234)),
                                Aad::from(&hdr),
                                &mut d[HEADER_LEN..],
                            )
                            .expect("open");
                        black_box(p.len());
                    },
                    BatchSize::SmallInput,
                )
            });
            g.finish();
        }
    }
}

/// The whole per-packet session path: reserve a counter, seal, open on the peer's session
/// (expiry check, tag, replay window under its mutex). Compare with seal + open above.
fn session_benches(c: &mut Criterion) {
    let now = std::time::Duration::from_secs(5);
    for (cipher, _) in CIPHERS {
        let ka = SessionKeys {
            cipher,
            send: [1; 32],
            recv: [2; 32],
        };
        let kb = SessionKeys {
            cipher,
            send: [2; 32],
            recv: [1; 32],
        };
        let a = Session::new(1, 2, 9, &ka, now, Limits::DEFAULT).expect("session");
        let b = Session::new(2, 1, 8, &kb, now, Limits::DEFAULT).expect("session");
        let mut g = c.benchmark_group(format!("session_seal_open/{cipher}"));
        for size in [64usize, 1420] {
            g.throughput(Throughput::Bytes(size as u64));
            let mut frame = vec![0x5au8; HEADER_LEN + size + TAG_LEN];
            g.bench_function(format!("{size}"), |bch| {
                bch.iter(|| {
                    let r = a.reserve(1, now).expect("reserve");
                    let n = a.seal(r.first, &mut frame, size).expect("seal");
                    black_box(b.open(&mut frame[..n], now).expect("open"))
                })
            });
        }
        g.finish();
    }
}

fn replay_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(1));
    let mut w = ReplayWindow::new();
    let mut ctr = 0u64;
    g.bench_function("check+update/in_order", |b| {
        b.iter(|| {
            ctr += 1;
            let c = black_box(ctr);
            black_box(w.check(c) && w.update(c))
        })
    });
    let mut w = ReplayWindow::new();
    let mut i = 0u64;
    g.bench_function("check+update/reordered", |b| {
        b.iter(|| {
            i += 1;
            // Permute within blocks of 64: out of order but each counter once.
            let c = black_box((i & !63) | ((i * 37) & 63));
            black_box(w.check(c) && w.update(c))
        })
    });
    g.finish();
}

/// xorshift64*: a tiny deterministic generator so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn v4(x: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(x))
}
fn v6(x: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(x))
}

/// Lookup addresses: half inside installed prefixes (random host bits), half uniformly random.
fn probes(rng: &mut Rng, installed: &[(IpAddr, u8)]) -> Vec<IpAddr> {
    (0..8192)
        .map(|i| {
            let (a, l) = installed[rng.below(installed.len() as u64) as usize];
            let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            match a {
                IpAddr::V4(a) => {
                    let host = u32::MAX.checked_shr(u32::from(l)).unwrap_or(0);
                    let base = if i % 2 == 0 { u32::from(a) } else { r as u32 };
                    v4((base & !host) | (r as u32 & host))
                }
                IpAddr::V6(a) => {
                    let host = u128::MAX.checked_shr(u32::from(l)).unwrap_or(0);
                    let base = if i % 2 == 0 { u128::from(a) } else { r };
                    v6((base & !host) | (r & host))
                }
            }
        })
        .collect()
}

fn route_benches(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sets: Vec<(&str, Vec<(IpAddr, u8)>)> = Vec::new();
    // Random prefixes of random lengths anywhere in the address space.
    sets.push((
        "v4_random_len8-32",
        (0..10_000)
            .map(|_| (v4(rng.next() as u32), 8 + rng.below(25) as u8))
            .collect(),
    ));
    sets.push((
        "v6_random_len16-128",
        (0..10_000)
            .map(|_| {
                let a = (u128::from(rng.next()) << 64) | u128::from(rng.next());
                (v6(a), 16 + rng.below(113) as u8)
            })
            .collect(),
    ));
    // What a mesh holds: host routes and a few subnets inside the overlay ranges.
    sets.push((
        "overlay_mix_v4+v6",
        (0..10_000)
            .map(|i| {
                if i % 2 == 0 {
                    let a = 0x6440_0000 | (rng.next() as u32 & 0x003f_ffff);
                    (v4(a), if i % 10 == 0 { 24 } else { 32 })
                } else {
                    let a = (0xfdu128 << 120)
                        | ((u128::from(rng.next()) << 64) >> 8)
                        | u128::from(rng.next());
                    (v6(a), if i % 10 == 1 { 64 } else { 128 })
                }
            })
            .collect(),
    ));
    let mut g = c.benchmark_group("route_lookup_10k");
    g.throughput(Throughput::Elements(1));
    for (name, prefixes) in &sets {
        let mut t: RoutingTable<u32> = RoutingTable::new();
        for (i, &(a, l)) in prefixes.iter().enumerate() {
            t.insert(a, l, i as u32).expect("insert");
        }
        let addrs = probes(&mut rng, prefixes);
        let mut i = 0usize;
        g.bench_function(*name, |b| {
            b.iter(|| {
                i = (i + 1) & 8191;
                black_box(t.lookup(black_box(addrs[i])))
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    aead_benches,
    session_benches,
    replay_benches,
    route_benches
);
criterion_main!(benches);
