//! Root-only: six nodes with no `[[peer]]` lists, one bootstrap. Every node finds every other
//! through the DHT by overlay address (IPv4 and IPv6) with no packet of the first ping lost
//! (the dataplane holds it during the lookup and handshake); `shadowmesh connect NAME` looks a
//! node up by name; a killed node is shown unreachable and recovers when it is restarted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::needless_range_loop,
    missing_docs
)]

mod common;

use std::time::Duration;

use common::*;
use shadowmesh::netns::MeshOptions;

const N: usize = 6;

fn peer<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["peers"]
        .as_array()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
}

/// Polls `cond` on node i's status every 250 ms for up to `secs`.
fn wait_status(
    topo: &Topology,
    i: usize,
    node: &shadowmesh::netns::MeshNode,
    secs: u64,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    // Bounded: 4 polls a second for `secs` (each poll a short CLI call).
    for _ in 0..secs * 4 {
        if let Ok(st) = topo.status_json(i, node) {
            if cond(&st) {
                return Some(st);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    None
}

#[test]
fn six_nodes_find_each_other_through_the_dht() {
    if !root_or_skip("six_nodes_find_each_other_through_the_dht") {
        return;
    }
    let mut topo = star("dh", N);
    let opts = MeshOptions {
        workers: 1,
        bootstrap: vec![0],
        ..MeshOptions::default()
    };
    for i in 0..N {
        topo.certify(i, "ca").unwrap();
    }
    let mut nodes = Vec::new();
    for i in 0..N {
        nodes.push(topo.start_node(i, "ca", &[], &opts).unwrap());
    }
    // Everyone joined and published (the bootstrap publishes as soon as it runs).
    for (i, node) in nodes.iter().enumerate() {
        let st = wait_status(&topo, i, node, 20, |s| {
            s["dht"]["record_seq"].as_u64().unwrap_or(0) > 0
                && !s["dht"]["contacts"].as_array().unwrap().is_empty()
        });
        assert!(
            st.is_some(),
            "node {i} did not join and publish: {:?}",
            topo.status_json(i, &nodes[i])
        );
    }
    // Let the last records reach their storers.
    std::thread::sleep(Duration::from_secs(2));

    // No NAT on this LAN: every node's reporters see one of its local addresses, and
    // `netcheck` says so.
    for (i, node) in nodes.iter().enumerate() {
        let st = wait_status(&topo, i, node, 10, |s| {
            s["nat"]["ipv4"]["mapping"].as_str() == Some("no-nat")
        });
        assert!(
            st.is_some(),
            "node {i} does not see itself un-NATed: {:?}",
            topo.status_json(i, &nodes[i])
        );
    }
    let admin3 = nodes[3].admin.to_str().unwrap().to_string();
    let out = topo
        .exec(
            3,
            &[&topo.bin("shadowmesh"), "netcheck", "--admin", &admin3],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("IPv4: no NAT"),
        "{text}"
    );
    assert!(
        text.contains("198.51.100.4:"),
        "node 3's own address: {text}"
    );

    // By name first: node 2 has no peer yet; `connect n4` looks it up and handshakes.
    let admin2 = nodes[2].admin.to_str().unwrap().to_string();
    let out = topo
        .exec(
            2,
            &[&topo.bin("shadowmesh"), "connect", "n4", "--admin", &admin2],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "connect n4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = wait_status(&topo, 2, &nodes[2], 10, |s| {
        peer(s, "n4").is_some_and(|p| !p["session_age_secs"].is_null())
    });
    assert!(st.is_some(), "no session with n4 after connect");
    // An unknown name is a clear error, not a hang.
    let out = topo
        .exec(
            2,
            &[
                &topo.bin("shadowmesh"),
                "connect",
                "nobody",
                "--admin",
                &admin2,
            ],
        )
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no node"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every ordered pair, IPv4 then IPv6: the very first echo request must be answered (one
    // probe, 5 s to answer), so nothing of the first ping is lost during lookup + handshake.
    for a in 0..N {
        for b in 0..N {
            if a == b {
                continue;
            }
            for dst in [format!("100.64.0.{}", b + 1), format!("fd00::{}", b + 1)] {
                let out = topo.exec(a, &["ping", "-c", "1", "-W", "5", &dst]).unwrap();
                assert!(
                    out.status.success(),
                    "node {a}: the first ping to {dst} was lost: {}\nits status: {}\nits log: {}",
                    String::from_utf8_lossy(&out.stdout),
                    topo.status_json(a, &nodes[a])
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    std::fs::read_to_string(topo.dir.join(format!("up{a}.log")))
                        .unwrap_or_default()
                );
            }
        }
    }
    let st = topo.status_json(1, &nodes[1]).unwrap();
    assert_eq!(st["peers"].as_array().unwrap().len(), N - 1, "{st}");

    // Kill node 3: node 1 shows it unreachable within the documented bound (17 s).
    topo.stop_node(3, &nodes[3]).unwrap();
    let st = wait_status(&topo, 1, &nodes[1], 25, |s| {
        peer(s, "n3").is_some_and(|p| p["reachable"] == serde_json::json!(false))
    });
    assert!(st.is_some(), "n3 not shown unreachable within 25 s");
    // Restart it: it is reachable again and answers pings, by itself.
    nodes[3] = topo.start_node(3, "ca", &[], &opts).unwrap();
    let st = wait_status(&topo, 1, &nodes[1], 30, |s| {
        peer(s, "n3").is_some_and(|p| p["reachable"] == serde_json::json!(true))
    });
    assert!(
        st.is_some(),
        "n3 not reachable again within 30 s of its restart"
    );
    assert!(
        topo.ping_until(1, "100.64.0.4", 10),
        "no ping to the restarted n3"
    );
    for (i, n) in nodes.iter().enumerate() {
        topo.stop_node(i, n).unwrap();
    }
}
