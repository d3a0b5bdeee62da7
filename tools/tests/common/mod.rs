//! Shared harness of the root-only namespace tests, over `shadowmesh::netns`.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]

use std::path::{Path, PathBuf};

pub use shadowmesh::netns::{
    field, static_index as index, static_key as key, transfer_intact, Topology,
};
use shadowmesh_dataplane::ipc::Stats;

/// Whether the test may run; prints why not otherwise.
pub fn root_or_skip(test: &str) -> bool {
    use shadowmesh::netns::{have, is_root};
    if !is_root() {
        eprintln!("SKIP {test}: needs root (network namespaces, TUN); CI runs it as root");
        return false;
    }
    if !["ip", "ping"].iter().all(|t| have(t)) {
        eprintln!("SKIP {test}: needs iproute2 and ping (scripts/test.sh installs them)");
        return false;
    }
    true
}

/// Where the workspace binaries are (beside the `shadowmesh` CLI cargo built for the tests).
pub fn bin_dir() -> PathBuf {
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_shadowmesh"));
    let dir = cli.parent().unwrap().to_path_buf();
    assert!(
        dir.join("shadowmesh-dataplane").exists(),
        "shadowmesh-dataplane is not built: run `cargo build --workspace --bins` (cargo test --workspace does)"
    );
    dir
}

/// A star topology of `n` nodes using the test binaries.
pub fn star(tag: &str, n: usize) -> Topology {
    Topology::star(tag, n, &bin_dir()).unwrap()
}

/// Installs a full static mesh among `nodes`.
pub fn install_mesh(sockets: &[PathBuf], nodes: &[usize]) {
    shadowmesh::netns::install_static_mesh(sockets, nodes).unwrap();
}

/// Reads a dataplane's counters.
pub fn stats(socket: &Path) -> Stats {
    shadowmesh::netns::stats(socket).unwrap()
}

/// Pings `addr` from node i; true when all `count` replies came.
pub fn ping(topo: &Topology, i: usize, addr: &str, count: u32) -> bool {
    let c = count.to_string();
    let out = topo
        .exec(i, &["ping", "-c", &c, "-i", "0.2", "-W", "2", addr])
        .unwrap();
    out.status.success()
}
