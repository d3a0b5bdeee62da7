//! Root-only: nodes run by `shadowmesh up` with certificates of one network CA and every session
//! key agreed by the hybrid post-quantum handshake. Full-mesh pings; a node certified by another
//! CA reaches nobody; a transfer across several rekeys arrives intact; killing the control
//! plane does not stop traffic; killing the dataplane is healed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use shadowmesh::netns::MeshOptions;

#[test]
fn ca_mesh_handshakes_rekeys_and_heals() {
    if !root_or_skip("ca_mesh_handshakes_rekeys_and_heals") {
        return;
    }
    let mut topo = star("c", 4);
    let opts = MeshOptions {
        workers: 2,
        rekey_after_secs: 10,
        ..MeshOptions::default()
    };
    let members = [0usize, 1, 2];
    for &i in &members {
        topo.certify(i, "ca").unwrap();
    }
    // Node 3 holds a certificate of another CA and knows the others' certificates and
    // endpoints; the members do not list it.
    topo.certify(3, "otherca").unwrap();
    let mut nodes = Vec::new();
    for &i in &members {
        nodes.push(topo.start_node(i, "ca", &members, &opts).unwrap());
    }
    let outsider = topo.start_node(3, "otherca", &members, &opts).unwrap();

    // Every pair of members, both directions, IPv4 and IPv6.
    for &a in &members {
        for &b in &members {
            if a != b {
                for dst in [format!("100.64.0.{}", b + 1), format!("fd00::{}", b + 1)] {
                    assert!(topo.ping_until(a, &dst, 20), "node {a} cannot reach {dst}");
                }
            }
        }
    }
    // The outsider reaches nobody, and nobody lists it as a peer with a session.
    for &b in &members {
        let dst = format!("100.64.0.{}", b + 1);
        assert!(
            !topo.ping_until(3, &dst, 3),
            "the other-CA node reached {dst}"
        );
    }
    let st = topo.status_json(3, &outsider).unwrap();
    for p in st["peers"].as_array().unwrap() {
        assert!(
            p["session_age_secs"].is_null(),
            "the other-CA node got a session: {p}"
        );
    }

    // A paced transfer of ~42 s (1000 MiB at 200 Mbit/s) across rekeys every 10 s (the
    // shortest interval the config allows); 33 s in, while it still runs, kill -9 node 0's
    // control plane: sessions keep forwarding in the dataplane.
    let before = completed(&topo.status_json(0, &nodes[0]).unwrap());
    let (server, client) = topo
        .start_bulk(
            1,
            0,
            "100.64.0.2:7001",
            &[],
            &["--bytes", "1000M", "--rate-mbit", "200"],
        )
        .unwrap();
    // Meanwhile read node 0's dataplane counters the way `shadowmesh stats` does, as an
    // observer beside the running control plane: the transfer shows in them, and the rekeys
    // below still happen (that the observer never displaces the control connection is
    // tested directly in dataplane/tests/ipc_server.rs).
    let mut last_tx = 0;
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(5500));
        let st = shadowmesh::netns::stats(&nodes[0].dataplane).unwrap();
        let tx: u64 = st.peers.iter().map(|p| p.tx_bytes).sum();
        assert!(tx > last_tx, "node 0's tx bytes did not grow: {st:?}");
        last_tx = tx;
    }
    let after = completed(&topo.status_json(0, &nodes[0]).unwrap());
    assert!(
        after >= before + 3,
        "expected ≥ 3 rekeys during the transfer, saw {} handshakes",
        after - before
    );
    let ctl = topo.pids_named(0, "shadowmesh-cont");
    assert!(!ctl.is_empty(), "no control plane process in node 0");
    for p in &ctl {
        let _ = std::process::Command::new("kill").args(["-9", p]).status();
    }
    // The transfer is still running after the kill: the dataplane keeps forwarding on its own.
    std::thread::sleep(Duration::from_secs(3));
    let st = shadowmesh::netns::stats(&nodes[0].dataplane).unwrap();
    let tx: u64 = st.peers.iter().map(|p| p.tx_bytes).sum();
    assert!(
        tx > last_tx,
        "no traffic left node 0 after its control plane was killed: {st:?}"
    );
    if let Err(e) = topo.finish_bulk(server, client, Duration::from_secs(90)) {
        panic!("across rekeys and a control-plane kill: {e}");
    }

    // kill -9 the dataplane of node 1: `up` restarts it, the control plane refills it, and
    // traffic resumes.
    let dp = topo.pids_named(1, "shadowmesh-data");
    assert!(!dp.is_empty(), "no dataplane process in node 1");
    for p in &dp {
        let _ = std::process::Command::new("kill").args(["-9", p]).status();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        topo.ping_until(0, "100.64.0.2", 40),
        "traffic did not resume after the dataplane was killed"
    );
    assert!(topo.ping_until(2, "fd00::2", 20));
}

/// Handshakes completed by a node, both roles.
fn completed(status: &serde_json::Value) -> u64 {
    let h = &status["handshakes"];
    h["completed_initiator"].as_u64().unwrap_or(0) + h["completed_responder"].as_u64().unwrap_or(0)
}
