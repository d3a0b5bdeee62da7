//! `shadowmesh selfcheck`: runs the packet core on real data and prints what it costs.
//!
//! Each packet goes the whole way a data packet goes in the engine: route lookup of the inner
//! destination among 10,000 prefixes, counter reservation, seal in place, classify, open in
//! place with the replay check, and the inbound source check. Every packet is verified to come
//! back byte-identical; any failure makes the command exit non-zero.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use shadowmesh_dataplane::crypto::Cipher;
use shadowmesh_dataplane::routing::RoutingTable;
use shadowmesh_dataplane::session::{Limits, Session, SessionKeys};
use shadowmesh_dataplane::wire::{self, Datagram, HEADER_LEN, TAG_LEN};

/// One row of the report.
pub struct Row {
    /// Cipher used.
    pub cipher: Cipher,
    /// Inner packet size.
    pub size: usize,
    /// Nanoseconds per packet, whole path.
    pub ns_per_packet: f64,
    /// Payload throughput on one core.
    pub gbit_per_s: f64,
}

/// Runs `packets` packets per (cipher, size) through the core; `clock` measures.
pub fn run(packets: u64, clock: fn() -> Duration) -> anyhow::Result<Vec<Row>> {
    let mut routes = RoutingTable::new();
    // 10,000 /32 routes in 100.64.0.0/10, one of which is our peer.
    for i in 0..10_000u32 {
        let a = Ipv4Addr::from(0x6440_0000u32 + i * 7 + 1);
        routes
            .insert(IpAddr::V4(a), 32, i)
            .context("building the route table")?;
    }
    let peer_ip = Ipv4Addr::from(0x6440_0000u32 + 4242 * 7 + 1);
    let our_ip = Ipv4Addr::new(100, 64, 0, 0);
    routes.insert(IpAddr::V4(our_ip), 32, 4242)?;
    let mut rows = Vec::new();
    for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
        for size in [64usize, 512, 1420] {
            rows.push(run_one(
                cipher, size, packets, &routes, peer_ip, our_ip, clock,
            )?);
        }
    }
    Ok(rows)
}

fn run_one(
    cipher: Cipher,
    size: usize,
    packets: u64,
    routes: &RoutingTable<u32>,
    peer_ip: Ipv4Addr,
    our_ip: Ipv4Addr,
    clock: fn() -> Duration,
) -> anyhow::Result<Row> {
    let k1 = [0x11u8; 32];
    let k2 = [0x22u8; 32];
    let now = Duration::from_secs(1);
    let a = Arc::new(Session::new(
        1,
        2,
        4242,
        &SessionKeys {
            cipher,
            send: k1,
            recv: k2,
        },
        now,
        Limits::DEFAULT,
    )?);
    let b = Session::new(
        2,
        1,
        4242,
        &SessionKeys {
            cipher,
            send: k2,
            recv: k1,
        },
        now,
        Limits::DEFAULT,
    )?;
    // A minimal IPv4 packet: version/IHL, total length, src (ours), dst (the peer).
    let mut packet = vec![0u8; size];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    packet[9] = 17;
    packet[12..16].copy_from_slice(&our_ip.octets());
    packet[16..20].copy_from_slice(&peer_ip.octets());
    for (i, byte) in packet.iter_mut().enumerate().skip(20) {
        *byte = i as u8;
    }
    let mut frame = vec![0u8; HEADER_LEN + size + TAG_LEN];
    let start = clock();
    for _ in 0..packets {
        frame[HEADER_LEN..HEADER_LEN + size].copy_from_slice(&packet);
        let dst = wire::inner_dst(&frame[HEADER_LEN..HEADER_LEN + size]);
        let Some(peer) = dst.and_then(|d| routes.lookup(d)) else {
            bail!("route lookup failed for {dst:?}");
        };
        let r = a.reserve(1, now)?;
        let n = a.seal(r.first, &mut frame, size)?;
        let Datagram::Data(_) = wire::classify(&frame[..n]) else {
            bail!("a sealed datagram was not classified as data");
        };
        let plain = b
            .open(&mut frame[..n], now)
            .map_err(|e| anyhow::anyhow!("open failed: {e}"))?;
        let src = wire::inner_src(&frame[plain.clone()]);
        // Inbound: the source must route back to the sending peer (here: our own /32 maps to
        // the same id, as the peer's allowed prefix would).
        if !src.is_some_and(|s| routes.allows(peer, s)) {
            bail!("inbound source check failed");
        }
        if frame[plain] != packet[..] {
            bail!("a packet did not survive the round trip");
        }
    }
    let elapsed = clock().saturating_sub(start).as_secs_f64().max(1e-9);
    let ns = elapsed * 1e9 / packets as f64;
    Ok(Row {
        cipher,
        size,
        ns_per_packet: ns,
        gbit_per_s: (size as f64 * 8.0 * packets as f64) / elapsed / 1e9,
    })
}
