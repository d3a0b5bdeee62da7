//! Root-only: `shadowmesh demo` runs end to end (self-check, three nodes in namespaces, every
//! pair pinged, checked transfer, latency) and exits zero, leaving no namespace behind.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;

#[test]
fn demo_runs_and_cleans_up() {
    if !common::root_or_skip("demo_runs_and_cleans_up") {
        return;
    }
    let _ = common::bin_dir();
    let child = Command::new(env!("CARGO_BIN_EXE_shadowmesh"))
        .args(["demo", "--bytes", "32M", "--workers", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The demo names its namespaces `smdemo<pid mod 100000>…`.
    let marker = format!("smdemo{}", child.id() % 100_000);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("12/12 ok"), "not every pair answered: {text}");
    assert!(
        text.contains("intact"),
        "the transfer was not verified: {text}"
    );
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains(&marker),
        "the demo left namespaces behind"
    );
}
