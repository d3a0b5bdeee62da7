//! Root-only: faults. During one checked TCP transfer between two nodes run by `shadowmesh
//! up`, `kill -9` hits a dataplane or a control plane (node and plane drawn from a seeded RNG)
//! at random moments, 20 times. After every kill the supervisor must heal the node within a
//! bound — the killed process has a new pid, and the transfer's bytes flow through the
//! receiving dataplane again (after a control-plane kill the new control plane also answers
//! its admin API and holds a session) — and the transfer completes with its SHA-256 intact,
//! having spanned every kill.
//!
//! `SHADOWMESH_FAULTS_SEED` (default 1) and `SHADOWMESH_FAULTS_KILLS` (default 20) change the
//! run; `perf-scripts/faults` runs longer variants.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use shadowmesh::netns::{transfer_intact, MeshNode, MeshOptions};

/// The test's one clock.
#[expect(clippy::disallowed_methods, reason = "the test's single clock wrapper")]
fn clock() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// SplitMix64, seeded: the kill schedule is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes node 1's dataplane has received from its peers, if it answers.
fn rx_bytes(node: &MeshNode) -> Option<u64> {
    shadowmesh::netns::stats(&node.dataplane)
        .ok()
        .map(|s| s.peers.iter().map(|p| p.rx_bytes).sum())
}

/// Waits until `min` more bytes of the transfer reached node 1's dataplane (a restarted
/// dataplane counts from zero: its first reading is the new baseline). Bounded by `limit`.
fn flows(node: &MeshNode, min: u64, limit: Duration) -> Option<Duration> {
    let t0 = clock();
    let mut base: Option<u64> = None;
    while clock() - t0 < limit {
        if let Some(rx) = rx_bytes(node) {
            match base {
                Some(b) if rx >= b + min => return Some(clock() - t0),
                Some(b) if rx < b => base = Some(rx),
                None => base = Some(rx),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn has_session(topo: &Topology, i: usize, node: &MeshNode) -> bool {
    topo.status_json(i, node).is_ok_and(|st| {
        st["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| !p["session_age_secs"].is_null()))
    })
}

/// What to show when a heal fails: the TCP connections, the tunnel devices and the
/// supervisors' logs of both nodes, and whether the overlay answers a ping.
fn diagnose(topo: &Topology) -> String {
    let mut d = String::new();
    for i in [0, 1] {
        for args in [
            &["ss", "-tin"][..],
            &["ip", "-br", "addr"][..],
            &["ip", "route"][..],
        ] {
            if let Ok(o) = topo.exec(i, args) {
                d += &format!(
                    "--- node {i} {args:?}\n{}",
                    String::from_utf8_lossy(&o.stdout)
                );
            }
        }
        let sock = topo.dir.join(format!("dp{i}.sock"));
        if let Ok(o) = topo.exec(
            i,
            &[
                &topo.bin("shadowmesh"),
                "stats",
                "--raw",
                "--socket",
                sock.to_str().unwrap_or(""),
            ],
        ) {
            d += &format!("--- node {i} stats\n{}", String::from_utf8_lossy(&o.stdout));
        }
        let log = std::fs::read_to_string(topo.dir.join(format!("up{i}.log"))).unwrap_or_default();
        // Our own stats polling (observer connections) would flood the tail.
        let me = format!("pid={} ", std::process::id());
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .filter(|l| !l.contains(&me))
            .take(40)
            .collect();
        d += &format!("--- node {i} up log (last lines)\n");
        for l in tail.iter().rev() {
            d += l;
            d.push('\n');
        }
    }
    let ping = topo.ping_until(0, "100.64.0.2", 2);
    d += &format!(
        "--- overlay ping 0 -> 1 now: {}\n",
        if ping { "answers" } else { "no answer" }
    );
    d
}

#[test]
fn kill_9_of_either_plane_20_times_during_a_transfer_is_healed_every_time() {
    if !root_or_skip("kill_9_of_either_plane_20_times_during_a_transfer_is_healed_every_time") {
        return;
    }
    let seed = env_u64("SHADOWMESH_FAULTS_SEED", 1);
    let kills = env_u64("SHADOWMESH_FAULTS_KILLS", 20);
    // Per kill: the killed process must be back, and traffic flowing, within this bound.
    let heal_limit = Duration::from_secs(env_u64("SHADOWMESH_FAULTS_HEAL_SECS", 40));
    let mut rng = Rng(seed);
    let mut topo = star("f", 2);
    for i in [0, 1] {
        topo.certify(i, "ca").unwrap();
    }
    // SHADOWMESH_FAULTS_REKEY_SECS (default 120) shortens the rekey interval, to see how the
    // rest heals while a restarted dataplane depends on the next rekey (see the test below).
    let opts = MeshOptions {
        rekey_after_secs: env_u64("SHADOWMESH_FAULTS_REKEY_SECS", 120) as u32,
        ..MeshOptions::default()
    };
    let nodes = [
        topo.start_node(0, "ca", &[0, 1], &opts).unwrap(),
        topo.start_node(1, "ca", &[0, 1], &opts).unwrap(),
    ];
    assert!(
        topo.ping_until(0, "100.64.0.2", 30),
        "no first contact between the nodes"
    );

    // A paced stream long enough to outlast the kills (it bursts to catch up after a stall).
    let rate = env_u64("SHADOWMESH_FAULTS_RATE_MBIT", 20);
    let secs = env_u64("SHADOWMESH_FAULTS_TRANSFER_SECS", 150);
    let bytes = (rate * secs * 1_000_000 / 8).to_string();
    let rate_s = rate.to_string();
    let (server, client) = topo
        .start_bulk(
            1,
            0,
            "100.64.0.2:7001",
            &["--timeout", "600"],
            &["--bytes", &bytes, "--rate-mbit", &rate_s],
        )
        .unwrap();
    let started = clock();
    assert!(
        flows(&nodes[1], 1 << 20, Duration::from_secs(20)).is_some(),
        "the transfer did not start"
    );

    let mut report = Vec::new();
    let mut last_kill = Duration::ZERO;
    for k in 0..kills {
        // A random moment: 0.3..3 s after the previous heal.
        std::thread::sleep(Duration::from_millis(300 + rng.next() % 2700));
        let node = (rng.next() % 2) as usize;
        let (plane, comm) = if rng.next() % 2 == 0 {
            ("dataplane", "shadowmesh-data")
        } else {
            ("control", "shadowmesh-cont")
        };
        // Every kill must land during the transfer: if the heals took longer than the paced
        // stream lasts, say so rather than "not flowing".
        assert!(
            topo.is_running(client),
            "the transfer ended before kill {k} ({:.0} s of kills and heals outlasted its {secs} s)",
            (clock() - started).as_secs_f64()
        );
        let old = topo.pids_named(node, comm);
        assert_eq!(
            old.len(),
            1,
            "kill {k}: node {node} runs {old:?} as {plane}"
        );
        let t_kill = clock();
        last_kill = t_kill - started;
        std::process::Command::new("kill")
            .args(["-9", &old[0]])
            .status()
            .unwrap();
        // Healed: a new pid for the killed plane ...
        let mut respawn = None;
        while clock() - t_kill < heal_limit {
            let now = topo.pids_named(node, comm);
            if now.len() == 1 && now != old {
                respawn = Some(clock() - t_kill);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let respawn = respawn.unwrap_or_else(|| {
            panic!("kill {k} ({plane} of node {node}): no new process within {heal_limit:?}")
        });
        // ... a control plane that answers and holds a session again ...
        if plane == "control" {
            let mut ok = false;
            while clock() - t_kill < heal_limit {
                if has_session(&topo, node, &nodes[node]) {
                    ok = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            assert!(
                ok,
                "kill {k}: node {node}'s new control plane has no session within {heal_limit:?}"
            );
        }
        // ... and the transfer's bytes flowing into node 1 again.
        let left = heal_limit.saturating_sub(clock() - t_kill);
        let flow = flows(&nodes[1], 256 << 10, left).unwrap_or_else(|| {
            panic!(
                "kill {k} ({plane} of node {node}): the transfer did not flow again within {heal_limit:?}\n{}",
                diagnose(&topo)
            )
        });
        let healed = clock() - t_kill;
        eprintln!(
            "kill {k:2}: {plane:9} of node {node}: new pid after {:.1} s, traffic flowing after {:.1} s",
            respawn.as_secs_f64(),
            healed.as_secs_f64()
        );
        let _ = flow;
        report.push((plane, node, respawn, healed));
    }

    let c = topo.wait(client, Duration::from_secs(secs + 120)).unwrap();
    let s = topo.wait(server, Duration::from_secs(30)).unwrap();
    let (c, s) = (
        String::from_utf8_lossy(&c.stdout).to_string() + &String::from_utf8_lossy(&c.stderr),
        String::from_utf8_lossy(&s.stdout).to_string() + &String::from_utf8_lossy(&s.stderr),
    );
    assert!(
        transfer_intact(&c, &s),
        "the transfer across {kills} kills is corrupted or incomplete: client {c:?} / server {s:?}"
    );
    assert_eq!(field(&s, "bytes"), Some(bytes.as_str()));
    // It spanned every kill (the client's clock starts when it starts sending).
    let client_secs: f64 = field(&c, "secs").unwrap().parse().unwrap();
    assert!(
        client_secs > last_kill.as_secs_f64(),
        "the transfer ended ({client_secs} s) before the last kill ({last_kill:?})"
    );
    let worst = report.iter().map(|r| r.3).max().unwrap_or_default();
    let dp = report.iter().filter(|r| r.0 == "dataplane").count();
    eprintln!(
        "{kills} kills ({dp} dataplane, {} control; seed {seed}) healed, worst {:.1} s; transfer intact: {c}",
        kills as usize - dp,
        worst.as_secs_f64()
    );
}

/// Authenticated packets node `i` dropped as replays (all peers).
fn replay_drops(node: &MeshNode) -> u64 {
    use shadowmesh_dataplane::ipc::DropCause;
    shadowmesh::netns::stats(&node.dataplane).map_or(0, |s| {
        s.peers
            .iter()
            .map(|p| p.drops.get(DropCause::Replay.index()).copied().unwrap_or(0))
            .sum()
    })
}

/// A dataplane restarted by `up` must not send under a key with counters it already used.
/// Today the control plane refills the restarted dataplane with the same session keys, whose
/// send counter restarts at 0: every packet repeats a (key, nonce) pair already on the wire
/// (AES-GCM / ChaCha20-Poly1305 nonce reuse), and the peer drops them all as replays until the
/// next rekey (up to `rekey_after_secs`, 120 s by default). The peer's replay counter is the
/// witness: on this path there are no network duplicates, so an authenticated packet it
/// rejects as a replay is a reused nonce.
#[test]
fn a_restarted_dataplane_never_reuses_a_send_counter() {
    if !root_or_skip("a_restarted_dataplane_never_reuses_a_send_counter") {
        return;
    }
    let mut topo = star("r", 2);
    for i in [0, 1] {
        topo.certify(i, "ca").unwrap();
    }
    let opts = MeshOptions::default();
    let nodes = [
        topo.start_node(0, "ca", &[0, 1], &opts).unwrap(),
        topo.start_node(1, "ca", &[0, 1], &opts).unwrap(),
    ];
    assert!(topo.ping_until(1, "100.64.0.1", 30), "no first contact");
    // Node 1 uses its send counter well past the start.
    assert!(ping(&topo, 1, "100.64.0.1", 20));
    assert!(ping(&topo, 0, "100.64.0.2", 5));
    assert_eq!(replay_drops(&nodes[0]), 0, "replays before any fault");

    let old = topo.pids_named(1, "shadowmesh-data");
    assert_eq!(old.len(), 1);
    let t_kill = clock();
    std::process::Command::new("kill")
        .args(["-9", &old[0]])
        .status()
        .unwrap();
    // The supervisor restarts it (1 s backoff) and the control plane refills it.
    let mut back = false;
    for _ in 0..200 {
        let now = topo.pids_named(1, "shadowmesh-data");
        if now.len() == 1 && now != old && nodes[1].dataplane.exists() {
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(back, "the dataplane was not restarted within 10 s");
    // Within 15 s (well below the 120 s rekey) node 0 reaches node 1 again, and node 0 saw
    // no packet from it that repeats a counter. Node 0 speaks first: node 1's refilled
    // session then answers whichever role it had (a responder's session is refilled as
    // `next` and promoted by node 0's packet; an initiator's is `current` at once). Were
    // node 1 to speak first it would find no session it may send on and handshake anew,
    // which hides the reuse.
    let answered = topo.ping_until(0, "100.64.0.2", 15);
    let replays = replay_drops(&nodes[0]);
    eprintln!(
        "after the dataplane restart: ping {} {:.1} s after the kill; node 0 dropped {replays} replayed packets",
        if answered { "answered" } else { "unanswered" },
        (clock() - t_kill).as_secs_f64()
    );
    assert_eq!(
        replays, 0,
        "the restarted dataplane of node 1 sent under its old key with counters it had already used (nonce reuse)"
    );
    assert!(
        answered,
        "node 1 does not reach node 0 after its dataplane restart"
    );
}
