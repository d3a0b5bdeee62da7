//! Root-only: NAT traversal on the namespace NAT lab (`shadowmesh::natlab`, nftables NATs),
//! with whole nodes (`shadowmesh up`) and no `[[peer]]` lists. One public node is everyone's
//! bootstrap and home; the others sit behind NATs. A ping to another node's overlay address
//! looks its record up, the home introduces the two, both punch, and the handshake and all
//! traffic go directly between the two NATs (the bootstrap relays nothing: it has no relay
//! routes and is no peer of theirs).
//!
//! Pairs (the CI subset of `perf-scripts/natlab`): EIM-APDF ↔ EIM-APDF (Linux `masquerade`
//! on both sides: fails without punching, each NAT drops the other's first packet), double
//! NAT → full cone, symmetric → full cone; symmetric ↔ symmetric has no direct path and, with
//! no relay path yet, stays unconnected (asserted, so the day it connects this test says so).
//! A 64 MB TCP transfer crosses the EIM-APDF pair with its SHA-256 intact; then a second one
//! continues intact while one end moves to another LAN address (roaming: its NAT maps it to
//! another port, it punches again, the other end follows its authenticated packets).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{bin_dir, root_or_skip};
use shadowmesh::natlab::{NatKind, NatLab};
use shadowmesh::netns::{have, MeshNode, MeshOptions};

fn overlay(i: usize) -> String {
    format!("100.64.0.{}", i + 1)
}

/// Polls node i's status 4 times a second for up to `secs` until `cond` holds.
fn wait_status(
    lab: &NatLab,
    i: usize,
    node: &MeshNode,
    secs: u64,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    for _ in 0..secs * 4 {
        if let Ok(st) = lab.topo().status_json(i, node) {
            if cond(&st) {
                return Some(st);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

fn peer<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
}

/// Pings `to`'s overlay address from `from` (one ping a second, `tries` at most); returns the
/// seconds until the first reply.
fn ping_time(lab: &NatLab, from: usize, to: usize, tries: usize) -> Option<f64> {
    let t0 = clock();
    lab.topo()
        .ping_until(from, &overlay(to), tries)
        .then(|| (clock() - t0).as_secs_f64())
}

/// The test's one clock.
#[expect(clippy::disallowed_methods, reason = "the test's single clock wrapper")]
fn clock() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

#[test]
fn nodes_behind_nats_punch_through_and_talk_directly() {
    if !root_or_skip("nodes_behind_nats_punch_through_and_talk_directly") {
        return;
    }
    if !have("nft") {
        eprintln!("SKIP: needs nft (scripts/test.sh installs nftables)");
        return;
    }
    // `perf-scripts/natlab --bin DIR` passes its binaries in $SHADOWMESH_NATLAB_BIN.
    let bins = std::env::var_os("SHADOWMESH_NATLAB_BIN").map_or_else(bin_dir, Into::into);
    let mut lab = NatLab::new("tv", &bins).unwrap();
    let boot = lab.add_public("boot").unwrap();
    let a = lab.add_site("a", NatKind::EimApdf).unwrap();
    let b = lab.add_site("b", NatKind::EimApdf).unwrap();
    let cone = lab.add_site("cone", NatKind::FullCone).unwrap();
    let dbl = lab.add_site("dbl", NatKind::DoubleNat).unwrap();
    let s1 = lab.add_site("sym1", NatKind::Symmetric).unwrap();
    let s2 = lab.add_site("sym2", NatKind::Symmetric).unwrap();
    let all = [boot, a, b, cone, dbl, s1, s2];
    for &i in &all {
        lab.topo().certify(i, "ca").unwrap();
    }
    let boot_addr = SocketAddr::new(lab.public_ip(boot).unwrap().into(), 51820);
    let base = MeshOptions {
        workers: 1,
        ..MeshOptions::default()
    };
    let natted = MeshOptions {
        bootstrap_addrs: vec![boot_addr],
        ..base.clone()
    };
    let mut nodes = std::collections::BTreeMap::new();
    nodes.insert(
        boot,
        lab.topo_mut().start_node(boot, "ca", &[], &base).unwrap(),
    );
    for &i in &all[1..] {
        nodes.insert(i, lab.topo_mut().start_node(i, "ca", &[], &natted).unwrap());
    }
    // Every NATed node joined, took the bootstrap as its home and published.
    for &i in &all[1..] {
        let st = wait_status(&lab, i, &nodes[&i], 20, |s| {
            s["dht"]["record_seq"].as_u64().unwrap_or(0) > 0
                && s["nat"]["homes"].as_array().is_some_and(|h| !h.is_empty())
        });
        assert!(
            st.is_some(),
            "node {i} ({}) has no home or record: {:?}",
            lab.name(i),
            lab.topo().status_json(i, &nodes[&i])
        );
    }
    // The record names the home only after the re-signing that follows choosing it.
    std::thread::sleep(Duration::from_secs(3));

    let mut table = String::new();
    for (from, to) in [(a, b), (dbl, cone), (s1, cone)] {
        let t = ping_time(&lab, from, to, 20);
        let name = format!("n{to}");
        // The admin API's snapshot may lag the ping by a moment.
        let st = wait_status(&lab, from, &nodes[&from], 5, |s| {
            peer(s, &name).is_some_and(|p| p["session_age_secs"].is_u64())
        })
        .unwrap_or_else(|| lab.topo().status_json(from, &nodes[&from]).unwrap());
        let p = peer(&st, &name).cloned().unwrap_or_default();
        table.push_str(&format!(
            "{:>10} -> {:<10} first reply {:>6}  path {:<8} endpoint {}\n",
            lab.name(from),
            lab.name(to),
            t.map_or("none".into(), |t| format!("{t:.1}s")),
            p["path"].as_str().unwrap_or("-"),
            p["endpoint"].as_str().unwrap_or("-"),
        ));
        if t.is_none() {
            let dump = |i: usize| {
                let log = lab.topo().dir.join(format!("up{i}.log"));
                format!(
                    "--- {} status: {}\n--- log:\n{}",
                    lab.name(i),
                    lab.topo()
                        .status_json(i, &nodes[&i])
                        .map_or_else(|e| e.to_string(), |v| v.to_string()),
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            };
            panic!(
                "{} cannot reach {}\n{table}\n{}\n{}",
                lab.name(from),
                lab.name(to),
                dump(from),
                dump(to)
            );
        }
        // Direct: the endpoint is the other NAT's public address, never the bootstrap's.
        let endpoint: SocketAddr = p["endpoint"]
            .as_str()
            .and_then(|e| e.parse().ok())
            .unwrap_or_else(|| panic!("no endpoint for {name}: {table}\n{st}"));
        assert_eq!(
            endpoint.ip(),
            std::net::IpAddr::from(lab.public_ip(to).unwrap()),
            "{table}"
        );
    }
    // The EIM-APDF pair needed the punch (each NAT drops the other's unsolicited packets).
    let st = lab.topo().status_json(a, &nodes[&a]).unwrap();
    assert_eq!(
        peer(&st, &format!("n{b}")).unwrap()["path"].as_str(),
        Some("punched"),
        "{st}"
    );
    assert!(
        st["nat"]["punch"]["succeeded"].as_u64().unwrap_or(0) >= 1,
        "{st}"
    );

    // Symmetric ↔ symmetric: no direct path, and no relay path yet.
    let t = ping_time(&lab, s1, s2, 8);
    table.push_str(&format!(
        "{:>10} -> {:<10} first reply {:>6}\n",
        lab.name(s1),
        lab.name(s2),
        t.map_or("none".into(), |t| format!("{t:.1}s"))
    ));
    eprintln!("{table}");
    assert!(t.is_none(), "symmetric <-> symmetric connected: {table}");

    // A checked transfer across the punched EIM-APDF pair.
    let listen = format!("{}:5201", overlay(b));
    let (server, client) = lab
        .topo_mut()
        .start_bulk(b, a, &listen, &[], &["--bytes", "64M", "--seed", "5"])
        .unwrap();
    let c = lab
        .topo_mut()
        .finish_bulk(server, client, Duration::from_secs(120))
        .unwrap();
    eprintln!("punched transfer: {c}");
    // Roaming: node a gets another LAN address in the middle of a transfer. Its NAT maps the
    // new address to another port (the old conntrack entries hold the old one), which b's
    // NAT has never been sent to: a finds b unreachable, punches again through the home, and
    // b's dataplane follows a's authenticated packets to the new address.
    let listen = format!("{}:5202", overlay(b));
    let (server, client) = lab
        .topo_mut()
        .start_bulk(
            b,
            a,
            &listen,
            &[],
            &["--bytes", "48M", "--seed", "6", "--rate-mbit", "24"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let new_ip = lab.roam(a).unwrap();
    let c = match lab
        .topo_mut()
        .finish_bulk(server, client, Duration::from_secs(180))
    {
        Ok(c) => c,
        Err(e) => panic!("across a's move to {new_ip}: {e}"),
    };
    eprintln!("transfer across a's move to {new_ip}: {c}");
    let st = lab.topo().status_json(b, &nodes[&b]).unwrap();
    let seen: SocketAddr = peer(&st, &format!("n{a}")).unwrap()["endpoint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(seen.ip(), std::net::IpAddr::from(lab.public_ip(a).unwrap()));
    eprintln!("b now reaches a at {seen}");

    // The bootstrap forwarded none of it: it holds no session with either.
    let st = lab.topo().status_json(boot, &nodes[&boot]).unwrap();
    for n in [a, b] {
        let p = peer(&st, &format!("n{n}"));
        assert!(
            p.is_none_or(|p| p["rx_bytes"].as_u64().unwrap_or(0) < 1_000_000),
            "the bootstrap carried traffic of n{n}: {p:?}"
        );
    }
}
