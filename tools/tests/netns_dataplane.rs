//! Root-only: two dataplanes in network namespaces, for both backends. Overlay ping both ways
//! over IPv4 and IPv6; a 200 MB TCP transfer whose SHA-256 matches at the other end while
//! garbage, forged and replayed datagrams hit the port (dropped and counted); with two workers,
//! both workers carry traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use shadowmesh_dataplane::ipc::DropCause;

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn two_nodes(backend: &str, tag: &str) {
    if !root_or_skip(&format!("two_nodes_{backend}")) {
        return;
    }
    let mut topo = star(tag, 2);
    let s0 = topo.start_dataplane(0, backend, 2).unwrap();
    let s1 = topo.start_dataplane(1, backend, 2).unwrap();
    install_mesh(&[s0.clone(), s1.clone()], &[0, 1]);
    let cli = topo.bin("shadowmesh");
    let cli = cli.as_str();

    for (from, dst) in [
        (0, "100.64.0.2"),
        (1, "100.64.0.1"),
        (0, "fd00::2"),
        (1, "fd00::1"),
    ] {
        // Up to ten probes: a loaded CI machine may delay the first ones; any reply proves the
        // path, and the transfer below proves it under load.
        if !topo.ping_until(from, dst, 10) {
            let logs: Vec<String> = (0..2)
                .map(|i| {
                    std::fs::read_to_string(topo.dir.join(format!("dp{i}.log"))).unwrap_or_default()
                })
                .collect();
            panic!(
                "ping {from} → {dst} failed\nstats 0: {:?}\nstats 1: {:?}\nlogs: {logs:?}",
                stats(&s0),
                stats(&s1)
            );
        }
    }

    // 200 MB over TCP through the tunnel, two flows in parallel so both TUN queues are used,
    // with hostile datagrams arriving at node 1's port meanwhile.
    let server_a = topo
        .spawn(
            1,
            &[cli, "bench", "bulk-server", "--listen", "100.64.0.2:7001"],
        )
        .unwrap();
    let server_b = topo
        .spawn(
            1,
            &[cli, "bench", "bulk-server", "--listen", "[fd00::2]:7002"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let client_a = topo
        .spawn(
            0,
            &[
                cli,
                "bench",
                "bulk-client",
                "--connect",
                "100.64.0.2:7001",
                "--bytes",
                "200M",
                "--seed",
                "7",
            ],
        )
        .unwrap();
    let client_b = topo
        .spawn(
            0,
            &[
                cli,
                "bench",
                "bulk-client",
                "--connect",
                "[fd00::2]:7002",
                "--bytes",
                "64M",
                "--seed",
                "9",
            ],
        )
        .unwrap();
    let recv_key = hex(&key(0, 1));
    let rx_index = index(1, 0).to_string();
    let junk = topo
        .exec(
            0,
            &[
                cli,
                "bench",
                "junk",
                "--to",
                "198.51.100.2:51820",
                "--receiver-index",
                &rx_index,
                "--key",
                &recv_key,
                "--count",
                "500",
            ],
        )
        .unwrap();
    assert!(
        junk.status.success(),
        "junk sender: {}",
        String::from_utf8_lossy(&junk.stderr)
    );

    // Ten small flows more: the TUN spreads flows over its queues by hash, so with twelve
    // flows both queues (and, through lane steering, both receive sockets) see traffic.
    let mut small = Vec::new();
    for k in 0..10u16 {
        let port = 7100 + k;
        let listen = format!("100.64.0.2:{port}");
        let srv = topo
            .spawn(1, &[cli, "bench", "bulk-server", "--listen", &listen])
            .unwrap();
        small.push((port, srv));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut small_clients = Vec::new();
    for (port, srv) in small {
        let connect = format!("100.64.0.2:{port}");
        let c = topo
            .spawn(
                0,
                &[
                    cli,
                    "bench",
                    "bulk-client",
                    "--connect",
                    &connect,
                    "--bytes",
                    "2M",
                    "--seed",
                    &port.to_string(),
                ],
            )
            .unwrap();
        small_clients.push((c, srv, format!("small flow {port}")));
    }
    let mut all = vec![
        (client_a, server_a, "IPv4 200M".to_string()),
        (client_b, server_b, "IPv6 64M".to_string()),
    ];
    all.extend(small_clients);
    for (client, server, what) in all {
        let c = topo.wait(client, Duration::from_secs(240)).unwrap();
        let s = topo.wait(server, Duration::from_secs(30)).unwrap();
        let (c, s) = (
            String::from_utf8_lossy(&c.stdout).to_string(),
            String::from_utf8_lossy(&s.stdout).to_string(),
        );
        let (ch, sh) = (field(&c, "sha256"), field(&s, "sha256"));
        assert!(
            ch.is_some() && ch == sh,
            "{what}: client {c:?} / server {s:?}"
        );
        assert_eq!(
            field(&c, "bytes"),
            field(&s, "bytes"),
            "{what}: byte counts differ"
        );
        eprintln!("{backend} {what}: {}", c.trim());
    }

    let st = stats(&s1);
    let drop = |cause: DropCause| {
        st.workers
            .iter()
            .map(|w| w.drops[cause.index()])
            .sum::<u64>()
    };
    assert!(
        drop(DropCause::Malformed) >= 500,
        "garbage not counted: {st:?}"
    );
    assert!(
        drop(DropCause::AuthFailed) >= 500,
        "forged not counted: {st:?}"
    );
    assert!(
        drop(DropCause::Replay) + drop(DropCause::SourceNotAllowed) >= 500,
        "replays not counted: {st:?}"
    );
    // Forged and replayed messages named the peer's receiver index: they count against it.
    let peer_drop = |cause: DropCause| st.peers.iter().map(|p| p.drops[cause.index()]).sum::<u64>();
    assert!(
        peer_drop(DropCause::AuthFailed) >= 500,
        "forged not counted against the peer: {st:?}"
    );
    assert!(
        peer_drop(DropCause::Replay) + peer_drop(DropCause::SourceNotAllowed) >= 500,
        "replays not counted against the peer: {st:?}"
    );
    assert!(
        peer_drop(DropCause::Malformed) < drop(DropCause::Malformed),
        "garbage with no receiver index counted against a peer: {st:?}"
    );
    let st0 = stats(&s0);
    for (node, st) in [(0, &st0), (1, &st)] {
        assert_eq!(st.workers.len(), 2, "node {node} should run 2 workers");
        for (w, ws) in st.workers.iter().enumerate() {
            assert!(
                ws.rx_packets + ws.tx_packets > 100,
                "node {node} worker {w} carried no traffic: {st:?}"
            );
        }
    }
}

#[test]
fn two_nodes_uring() {
    two_nodes("uring", "u");
}

#[test]
fn two_nodes_poll() {
    two_nodes("poll", "p");
}
