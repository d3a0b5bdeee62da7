//! Root-only: the hostile network. Two nodes run by `shadowmesh up` reach each other only
//! through `shadowmesh bench impair` in a middle namespace (each node's configured endpoint for
//! the other is one of the forwarder's faces), which loses 10 %, reorders 25 %, duplicates 5 %
//! and delays 50 ms ± 20 ms every datagram, both ways (this kernel has no netem). The
//! handshake completes and a checked TCP transfer arrives intact, and the forwarder's counters
//! show that the traffic really crossed it at those rates.
//!
//! The seed is `SHADOWMESH_IMPAIR_SEED` (default 1), so a failing run can be repeated. A
//! second test (no root needed) checks the forwarder's socket loop on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use shadowmesh::netns::{transfer_intact, MeshOptions};

/// The test's one clock.
#[expect(clippy::disallowed_methods, reason = "the test's single clock wrapper")]
fn clock() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// The last stats line the forwarder printed to its log.
fn last_stats(log: &std::path::Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| l.starts_with("impair t="))
        .unwrap_or_default()
        .to_string()
}

fn num(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn handshake_and_transfer_survive_loss_reordering_duplication_and_jitter() {
    if !root_or_skip("handshake_and_transfer_survive_loss_reordering_duplication_and_jitter") {
        return;
    }
    let seed = std::env::var("SHADOWMESH_IMPAIR_SEED").unwrap_or_else(|_| "1".into());
    // Node 2 is the middle: it runs only the forwarder.
    let mut topo = star("i", 3);
    let cli = topo.bin("shadowmesh");
    for i in [0, 1] {
        topo.certify(i, "ca").unwrap();
    }
    let face_a: SocketAddr = "198.51.100.3:40001".parse().unwrap();
    let face_b: SocketAddr = "198.51.100.3:40002".parse().unwrap();
    let flog = topo.dir.join("impair.log");
    let (fa, fb) = (face_a.to_string(), face_b.to_string());
    topo.spawn_logged(
        2,
        &[
            &cli,
            "bench",
            "impair",
            "--node-a",
            "198.51.100.1:51820",
            "--face-a",
            &fa,
            "--node-b",
            "198.51.100.2:51820",
            "--face-b",
            &fb,
            "--loss",
            "10",
            "--reorder",
            "25",
            "--dup",
            "5",
            "--delay-ms",
            "50",
            "--jitter-ms",
            "20",
            "--seed",
            &seed,
            "--duration",
            "400",
        ],
        &flog,
    )
    .unwrap();

    let t0 = clock();
    let opts = |peer: usize, face: SocketAddr| MeshOptions {
        peer_endpoints: vec![(peer, face)],
        ..MeshOptions::default()
    };
    let n0 = topo.start_node(0, "ca", &[0, 1], &opts(1, face_a)).unwrap();
    let n1 = topo.start_node(1, "ca", &[0, 1], &opts(0, face_b)).unwrap();

    // The handshake: both nodes report a session with the other. Bounded generously (today
    // a first contact under 10 % loss took ~2 s; retries are paced by the control plane).
    let has_session = |i: usize, node: &shadowmesh::netns::MeshNode| {
        topo.status_json(i, node).is_ok_and(|st| {
            st["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| !p["session_age_secs"].is_null()))
        })
    };
    let mut handshake = None;
    for _ in 0..1200 {
        if has_session(0, &n0) && has_session(1, &n1) {
            handshake = Some(clock() - t0);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let handshake = handshake.unwrap_or_else(|| {
        panic!(
            "no session within 120 s through the impaired path; forwarder: {}",
            last_stats(&flog)
        )
    });
    eprintln!(
        "handshake through the impaired path: {:.1} s after start (seed {seed})",
        handshake.as_secs_f64()
    );

    // A checked TCP transfer through the tunnel, over the impaired underlay.
    let bytes = std::env::var("SHADOWMESH_IMPAIR_BYTES").unwrap_or_else(|_| "4M".into());
    let want = shadowmesh::bench::parse_size(&bytes).unwrap();
    let t1 = clock();
    let (server, client) = topo
        .start_bulk(
            1,
            0,
            "100.64.0.2:7001",
            &["--timeout", "240"],
            &["--bytes", &bytes, "--connect-timeout", "60"],
        )
        .unwrap();
    let c = topo.wait(client, Duration::from_secs(300)).unwrap();
    let s = topo.wait(server, Duration::from_secs(20)).unwrap();
    let took = clock() - t1;
    let (c, s) = (
        String::from_utf8_lossy(&c.stdout).to_string() + &String::from_utf8_lossy(&c.stderr),
        String::from_utf8_lossy(&s.stdout).to_string() + &String::from_utf8_lossy(&s.stderr),
    );
    let stats = last_stats(&flog);
    assert!(
        transfer_intact(&c, &s),
        "transfer through the impaired path corrupted or incomplete: client {c:?} / server {s:?}; forwarder: {stats}"
    );
    assert_eq!(field(&s, "bytes"), Some(want.to_string().as_str()), "{s}");
    eprintln!(
        "transfer of {bytes} through the impaired path: {:.1} s ({:.2} Mbit/s)",
        took.as_secs_f64(),
        want as f64 * 8.0 / took.as_secs_f64() / 1e6
    );

    // The traffic really crossed the forwarder, impaired at the configured rates (the
    // forwarder prints its counters every second; wait for a line after the transfer).
    std::thread::sleep(Duration::from_millis(1500));
    let stats = last_stats(&flog);
    eprintln!("forwarder: {stats}");
    for tag in ["ab", "ba"] {
        let got = |k: &str| num(&stats, &format!("{tag}_{k}"));
        let (inn, lost, dup, reord) = (got("in"), got("lost"), got("dup"), got("reord"));
        assert!(
            inn > 1000,
            "{tag}: only {inn} datagrams crossed the forwarder"
        );
        let pct = |x: u64, of: u64| x as f64 * 100.0 / of as f64;
        let kept = inn - lost;
        assert!((7.0..13.0).contains(&pct(lost, inn)), "{tag} loss: {stats}");
        assert!((3.0..7.0).contains(&pct(dup, kept)), "{tag} dup: {stats}");
        assert!(
            (21.0..29.0).contains(&pct(reord, kept + dup)),
            "{tag} reorder: {stats}"
        );
        assert_eq!(
            got("overflow"),
            0,
            "{tag}: the forwarder's queue overflowed"
        );
    }
    // Node 0 sent the stream: what left the forwarder towards B carried at least its bytes.
    assert!(
        num(&stats, "ab_bytes") >= want,
        "the transfer did not cross the forwarder: {stats}"
    );
}

/// Not root: the forwarder's socket loop on loopback. Every datagram from node A reaches node
/// B through the faces no earlier than the delay, duplicated when told to, with the face as
/// its source; B's answer comes back the other way; a stranger's datagram is not forwarded.
#[test]
fn the_forwarder_loop_delays_duplicates_and_forwards_both_ways() {
    use std::net::UdpSocket;
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    // Free ports for the faces (bound and released: a small race with other binders).
    let free = || {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (face_a, face_b) = (free(), free());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_shadowmesh"))
        .args(["bench", "impair", "--node-a"])
        .arg(a.local_addr().unwrap().to_string())
        .args(["--face-a", &face_a.to_string(), "--node-b"])
        .arg(b.local_addr().unwrap().to_string())
        .args(["--face-b", &face_b.to_string()])
        .args(["--dup", "100", "--delay-ms", "50", "--duration", "8"])
        .args(["--stats-every", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (bounded) until the forwarder answers: a probe from A arrives at B.
    let mut buf = [0u8; 64];
    let mut up = false;
    for _ in 0..20 {
        a.send_to(b"probe", face_a).unwrap();
        if let Ok((n, from)) = b.recv_from(&mut buf) {
            assert_eq!((&buf[..n], from), (&b"probe"[..], face_b));
            up = true;
            break;
        }
    }
    assert!(up, "the forwarder did not come up");
    std::thread::sleep(Duration::from_millis(200));
    while b.recv_from(&mut buf).is_ok() {} // the probes' copies
    stranger.send_to(b"not yours", face_a).unwrap();
    let n = 20u8;
    let mut got = Vec::new();
    for i in 0..n {
        let t = clock();
        a.send_to(&[i], face_a).unwrap();
        for _ in 0..2 {
            let (len, from) = b.recv_from(&mut buf).unwrap();
            assert!(clock() - t >= Duration::from_millis(50), "released early");
            assert_eq!((len, from), (1, face_b));
            got.push(buf[0]);
        }
    }
    assert_eq!(got, (0..n).flat_map(|i| [i, i]).collect::<Vec<_>>());
    b.send_to(b"back", face_b).unwrap();
    let (len, from) = a.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..len], from), (&b"back"[..], face_a));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(field(last, "strangers"), Some("1"), "{last}");
    assert_eq!(field(last, "ba_out"), Some("2"), "{last}");
    assert_eq!(num(last, "ab_out"), 2 * num(last, "ab_in"), "{last}");
}
