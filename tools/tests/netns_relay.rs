//! Root-only: a relay in the dataplane. Nodes 0 and 1 share a session but cannot reach each
//! other (a blackhole route each way); both send to node 2, whose dataplane holds no key of
//! their session and forwards by its relay routes. Overlay ping both ways over IPv4 and IPv6,
//! a 256 MB TCP transfer whose SHA-256 matches at the far end, the relay's counters (all
//! relayed, nothing written to its TUN), and after `RemoveRelay` the path is gone; then the
//! same session moves to the direct path and carries the same transfer again (both rates
//! printed, for relayed against direct in one run).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use shadowmesh_dataplane::ipc::{DownMsg, IpcClient, UpMsg};

const PORT: u16 = 51820;

fn underlay(i: usize) -> SocketAddr {
    format!("198.51.100.{}:{PORT}", i + 1).parse().unwrap()
}

fn request(c: &mut IpcClient, msg: DownMsg) {
    let reply = c.request(msg).unwrap();
    assert_eq!(reply, UpMsg::Ack, "the relay refused a request");
}

#[test]
fn two_nodes_talk_through_a_relay_that_cannot_read_them() {
    if !root_or_skip("two_nodes_talk_through_a_relay_that_cannot_read_them") {
        return;
    }
    let mut topo = star("rl", 3);
    let s0 = topo.start_dataplane(0, "uring", 1).unwrap();
    let s1 = topo.start_dataplane(1, "uring", 1).unwrap();
    let s2 = topo.start_dataplane(2, "uring", 2).unwrap();
    install_mesh(&[s0.clone(), s1.clone()], &[0, 1]);
    // No direct path between 0 and 1.
    for (i, other) in [(0, 1), (1, 0)] {
        let dst = format!("198.51.100.{}/32", other + 1);
        let out = topo
            .exec(i, &["ip", "route", "add", "blackhole", &dst])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    // Each sends to the relay instead (peer ids are node numbers + 1).
    for (sock, peer) in [(&s0, 2u32), (&s1, 1u32)] {
        let mut c = IpcClient::connect(sock).unwrap();
        request(
            &mut c,
            DownMsg::SetEndpoint {
                peer,
                addr: underlay(2),
            },
        );
    }
    // The relay: what 0 sends with 1's receiver index goes to 1, and back.
    let mut relay = IpcClient::connect(&s2).unwrap();
    for (from, to) in [(0, 1), (1, 0)] {
        request(
            &mut relay,
            DownMsg::SetRelay {
                from: underlay(from),
                index: index(to, from),
                to: underlay(to),
                rate_bytes_per_sec: 0,
            },
        );
    }
    // A route back to its own source is refused with a reason.
    let loopback = relay.request(DownMsg::SetRelay {
        from: underlay(0),
        index: 1,
        to: underlay(0),
        rate_bytes_per_sec: 0,
    });
    assert!(
        loopback
            .as_ref()
            .is_err_and(|e| e.to_string().contains("loop")),
        "{loopback:?}"
    );

    for (from, dst) in [
        (0, "100.64.0.2"),
        (1, "100.64.0.1"),
        (0, "fd00::2"),
        (1, "fd00::1"),
    ] {
        assert!(
            topo.ping_until(from, dst, 10),
            "ping {from} → {dst} through the relay failed\nrelay: {:?}",
            stats(&s2)
        );
    }

    let relayed_out = bulk(&mut topo, 7001, "256M");
    eprintln!("relayed: {relayed_out}");

    let st = stats(&s2);
    let relayed: u64 = st.workers.iter().map(|w| w.relayed_packets).sum();
    let bytes: u64 = st.workers.iter().map(|w| w.relayed_bytes).sum();
    let tun: u64 = st.workers.iter().map(|w| w.rx_packets + w.tx_packets).sum();
    assert!(
        relayed > 40_000 && bytes > 64 << 20,
        "relay counters: {st:?}"
    );
    assert_eq!(
        tun, 0,
        "the relay decrypted or sent something itself: {st:?}"
    );
    assert!(st.peers.is_empty(), "the relay has peers: {st:?}");

    // Without its routes the relay forwards nothing, and 0 cannot reach 1.
    for (from, to) in [(0, 1), (1, 0)] {
        request(
            &mut relay,
            DownMsg::RemoveRelay {
                from: underlay(from),
                index: index(to, from),
            },
        );
    }
    // Stragglers of the transfer (last ACKs) may still have been forwarded before the
    // removal: count from here.
    std::thread::sleep(Duration::from_millis(500));
    let relayed_sum = |st: &shadowmesh_dataplane::ipc::Stats| -> u64 {
        st.workers.iter().map(|w| w.relayed_packets).sum()
    };
    let before = relayed_sum(&stats(&s2));
    assert!(
        !ping(&topo, 0, "100.64.0.2", 2),
        "a path survived RemoveRelay"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        relayed_sum(&stats(&s2)),
        before,
        "forwarded after RemoveRelay"
    );

    // The same session, moved to the direct path (no handshake: sessions do not depend on
    // the path), for a figure of relayed against direct in the same run.
    for (i, other) in [(0, 1), (1, 0)] {
        let dst = format!("198.51.100.{}/32", other + 1);
        let out = topo
            .exec(i, &["ip", "route", "del", "blackhole", &dst])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    for (sock, peer, other) in [(&s0, 2u32, 1), (&s1, 1u32, 0)] {
        let mut c = IpcClient::connect(sock).unwrap();
        request(
            &mut c,
            DownMsg::SetEndpoint {
                peer,
                addr: underlay(other),
            },
        );
    }
    assert!(topo.ping_until(0, "100.64.0.2", 10), "no direct path");
    let direct_out = bulk(&mut topo, 7002, "256M");
    eprintln!("direct: {direct_out}");
    let gbit = |o: &str| field(o, "gbit").and_then(|g| g.parse::<f64>().ok());
    if let (Some(r), Some(d)) = (gbit(&relayed_out), gbit(&direct_out)) {
        eprintln!("relayed / direct: {:.0} %", 100.0 * r / d);
    }
}

/// A bulk TCP transfer 0 → 1 over the overlay; asserts it arrived intact and returns the
/// client's summary line.
fn bulk(topo: &mut Topology, port: u16, bytes: &str) -> String {
    let listen = format!("100.64.0.2:{port}");
    let (server, client) = topo
        .start_bulk(1, 0, &listen, &[], &["--bytes", bytes, "--seed", "3"])
        .unwrap();
    topo.finish_bulk(server, client, Duration::from_secs(240))
        .unwrap()
}
