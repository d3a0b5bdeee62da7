//! Root-only: the dataplane's clear start-up errors (port in use, TUN name taken, MTU out of
//! range) and its shutdown: SIGTERM drains, removes the TUN, and a second start on the same
//! name works.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Runs a dataplane in node 0 that is expected to fail at start; returns its stderr.
fn failing_start(topo: &Topology, args: &[&str]) -> String {
    let exe = topo.bin("shadowmesh-dataplane");
    let sock = topo.dir.join("fail.sock");
    let mut full = vec![exe.as_str(), "--socket", sock.to_str().unwrap()];
    full.extend_from_slice(args);
    let out = topo.exec(0, &full).unwrap();
    assert!(!out.status.success(), "{args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn start_errors_name_the_cause_and_sigterm_cleans_up() {
    if !root_or_skip("start_errors_name_the_cause_and_sigterm_cleans_up") {
        return;
    }
    let mut topo = star("l", 1);
    let sock = topo.start_dataplane(0, "uring", 1).unwrap();
    assert!(sock.exists());

    let e = failing_start(&topo, &["--tun", "other0", "--bind", "0.0.0.0:51820"]);
    assert!(
        e.contains("51820") && e.contains("in use"),
        "port in use: {e}"
    );
    let e = failing_start(&topo, &["--tun", "sm0", "--bind", "0.0.0.0:51821"]);
    assert!(e.contains("sm0") && e.contains("taken"), "name taken: {e}");
    let e = failing_start(
        &topo,
        &["--tun", "mtu0", "--mtu", "100", "--bind", "0.0.0.0:51822"],
    );
    assert!(
        e.contains("MTU") && e.contains("100"),
        "MTU out of range: {e}"
    );

    // SIGTERM: the process exits 0, the TUN disappears, the same name starts again.
    let pids = Command::new("ip")
        .args(["netns", "pids", topo.node(0)])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&pids.stdout).to_string();
    let dp_pid = pids
        .split_whitespace()
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "shadowmesh-data")
                .unwrap_or(false)
        })
        .expect("the dataplane process")
        .to_string();
    Command::new("kill")
        .args(["-TERM", &dp_pid])
        .status()
        .unwrap();
    let mut gone = false;
    for _ in 0..200 {
        if !std::path::Path::new(&format!("/proc/{dp_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{dp_pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(gone, "the dataplane did not exit within 5 s of SIGTERM");
    // The kernel unregisters the device asynchronously once the last queue closes.
    let removed = (0..100).any(|_| {
        let present = topo
            .exec(0, &["ip", "link", "show", "sm0"])
            .unwrap()
            .status
            .success();
        if present {
            std::thread::sleep(Duration::from_millis(20));
        }
        !present
    });
    assert!(removed, "sm0 still exists 2 s after SIGTERM");
    assert!(!sock.exists(), "the IPC socket file was left behind");

    let again = Command::new("ip")
        .args(["netns", "exec", topo.node(0)])
        .arg(topo.bin("shadowmesh-dataplane"))
        .args(["--tun", "sm0", "--bind", "0.0.0.0:51820", "--workers", "1"])
        .arg("--socket")
        .arg(topo.dir.join("again.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let again_sock = topo.dir.join("again.sock");
    let mut up = false;
    for _ in 0..200 {
        if again_sock.exists() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let mut again = again;
    let _ = again.kill();
    let out = again.wait_with_output().unwrap();
    assert!(
        up,
        "a second start on the same name failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_io_uring_the_dataplane_falls_back_to_poll_with_one_warning() {
    if !root_or_skip("without_io_uring_the_dataplane_falls_back_to_poll_with_one_warning") {
        return;
    }
    let topo = star("f", 2);
    let mut children = Vec::new();
    let mut logs = Vec::new();
    for i in 0..2 {
        let sock = topo.dir.join(format!("fb{i}.sock"));
        let log = topo.dir.join(format!("fb{i}.log"));
        let v4 = format!("100.64.0.{}/24", i + 1);
        let child = Command::new("ip")
            .args(["netns", "exec", topo.node(i)])
            .arg("env")
            .arg("SHADOWMESH_NO_URING=1")
            .arg(topo.bin("shadowmesh-dataplane"))
            .args(["--tun", "sm0", "--addr", &v4, "--bind", "0.0.0.0:51820"])
            .args(["--workers", "1", "--backend", "uring", "--socket"])
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        children.push(child);
        logs.push((sock, log));
    }
    for (sock, _) in &logs {
        for _ in 0..200 {
            if sock.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    let sockets: Vec<_> = logs.iter().map(|(s, _)| s.clone()).collect();
    install_mesh(&sockets, &[0, 1]);
    let reached = ping(&topo, 0, "100.64.0.2", 3);
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(reached, "no traffic over the poll fallback");
    for (_, log) in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        let warnings = text
            .lines()
            .filter(|l| l.contains("using the poll backend"))
            .count();
        assert_eq!(warnings, 1, "expected exactly one fallback warning: {text}");
        assert!(
            text.contains("backend=Poll"),
            "did not run the poll backend: {text}"
        );
    }
}
