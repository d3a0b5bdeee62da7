//! Shared harness of the root-only namespace tests: builds topologies out of network
//! namespaces and veth pairs (DESIGN.md addresses only), starts dataplanes in them, loads
//! static sessions over the real IPC socket, and removes everything on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use shadowmesh_dataplane::ipc::proto::{InstallSession, Slot, CIPHER_AES_256_GCM};
use shadowmesh_dataplane::ipc::{DownMsg, IpcClient, Stats, UpMsg};
use zeroize::Zeroizing;

/// The tests' one clock.
#[expect(
    clippy::disallowed_methods,
    reason = "the test harness's single clock wrapper"
)]
pub fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Whether the test may run; prints why not otherwise.
pub fn root_or_skip(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    let tools = ["ip", "ping"].iter().all(|t| which(t));
    if !root {
        eprintln!("SKIP {test}: needs root (network namespaces, TUN); CI runs it as root");
    } else if !tools {
        eprintln!("SKIP {test}: needs iproute2 and ping (scripts/test.sh installs them)");
    }
    root && tools
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Path of a workspace binary built beside the `shadowmesh` CLI.
pub fn bin(name: &str) -> PathBuf {
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_shadowmesh"));
    let p = cli.parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` (cargo test --workspace does)",
        p.display()
    );
    p
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A set of namespaces that is torn down on drop (processes killed, namespaces deleted).
pub struct Topology {
    pub ns: Vec<String>,
    pub dir: PathBuf,
    children: Vec<Child>,
}

impl Topology {
    /// `n` namespaces `sm<tag><pid>n<i>` on one shared bridge-less veth star: namespace i gets
    /// underlay 198.51.100.(i+1)/24 through a veth pair to a hub namespace.
    pub fn star(tag: &str, n: usize) -> Topology {
        let pid = std::process::id() % 100_000;
        let base = format!("sm{tag}{pid}");
        let dir = std::env::temp_dir().join(format!("{base}-dir"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut topo = Topology {
            ns: Vec::new(),
            dir,
            children: Vec::new(),
        };
        let hub = format!("{base}h");
        sh(&["ip", "netns", "add", &hub]);
        topo.ns.push(hub.clone());
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("{base}n{i}");
            sh(&["ip", "netns", "add", &ns]);
            topo.ns.push(ns.clone());
            let (a, b) = (format!("u{i}"), format!("p{i}"));
            sh(&[
                "ip", "-n", &ns, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns",
                &hub,
            ]);
            sh(&["ip", "-n", &hub, "link", "set", &b, "master", "br0"]);
            sh(&["ip", "-n", &hub, "link", "set", &b, "up"]);
            let addr = format!("198.51.100.{}/24", i + 1);
            sh(&["ip", "-n", &ns, "addr", "add", &addr, "dev", &a]);
            sh(&["ip", "-n", &ns, "link", "set", &a, "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        topo
    }

    /// Node i's namespace.
    pub fn node(&self, i: usize) -> &str {
        &self.ns[i + 1]
    }

    /// Runs a command inside node i's namespace.
    pub fn exec(&self, i: usize, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", self.node(i)];
        full.extend_from_slice(args);
        Command::new(full[0]).args(&full[1..]).output().unwrap()
    }

    /// Starts a command in node i's namespace in the background; killed on drop.
    pub fn spawn(&mut self, i: usize, args: &[&str]) -> usize {
        let child = Command::new("ip")
            .args(["netns", "exec", self.node(i)])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    /// Waits for a spawned command (bounded) and returns its output.
    pub fn wait(&mut self, handle: usize, timeout: Duration) -> Output {
        let deadline = now() + timeout;
        loop {
            if let Some(_status) = self.children[handle].try_wait().unwrap() {
                break;
            }
            if now() > deadline {
                let _ = self.children[handle].kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let child = std::mem::replace(
            &mut self.children[handle],
            Command::new("true").spawn().unwrap(),
        );
        child.wait_with_output().unwrap()
    }

    /// Starts a dataplane in node i: TUN sm0 with 100.64.0.(i+1)/24 and fd00::(i+1)/64, data
    /// port 51820. Returns its IPC socket path once it exists.
    pub fn start_dataplane(&mut self, i: usize, backend: &str, workers: usize) -> PathBuf {
        let sock = self.dir.join(format!("dp{i}.sock"));
        let _ = std::fs::remove_file(&sock);
        let exe = bin("shadowmesh-dataplane");
        let v4 = format!("100.64.0.{}/24", i + 1);
        let v6 = format!("fd00::{}/64", i + 1);
        let w = workers.to_string();
        let log = self.dir.join(format!("dp{i}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", self.node(i)])
            .arg(&exe)
            .args(["--tun", "sm0", "--addr", &v4, "--addr", &v6])
            .args([
                "--bind",
                "0.0.0.0:51820",
                "--workers",
                &w,
                "--backend",
                backend,
            ])
            .arg("--socket")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.children.push(child);
        for _ in 0..200 {
            if sock.exists() {
                return sock;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "dataplane in node {i} did not come up: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.ns {
            // Anything still running inside (spawned by `ip netns exec`) goes too.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A static key for the direction `from` → `to` (both ends know it; test only).
pub fn key(from: usize, to: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (from as u8).wrapping_mul(31) ^ (to as u8).wrapping_mul(17) ^ i as u8 ^ 0xa5;
    }
    k
}

/// Receiver index node `me` uses for its session with `peer`.
pub fn index(me: usize, peer: usize) -> u32 {
    (me as u32 + 1) * 1000 + peer as u32 + 1
}

/// Installs a full mesh of static sessions among `nodes` (ids = node numbers + 1).
pub fn install_mesh(sockets: &[PathBuf], nodes: &[usize]) {
    for (si, &me) in nodes.iter().enumerate() {
        let mut c = IpcClient::connect(&sockets[si]).unwrap();
        for &peer in nodes {
            if peer == me {
                continue;
            }
            install_peer(&mut c, me, peer);
        }
    }
}

fn install_peer(c: &mut IpcClient, me: usize, peer: usize) {
    let id = peer as u32 + 1;
    let reply = c
        .request(DownMsg::InstallSession(InstallSession {
            peer: id,
            slot: Slot::Current,
            local_index: index(me, peer),
            remote_index: index(peer, me),
            cipher: CIPHER_AES_256_GCM,
            send_key: Zeroizing::new(key(me, peer)),
            recv_key: Zeroizing::new(key(peer, me)),
            rekey_after_secs: 0,
            reject_after_secs: 0,
        }))
        .unwrap();
    assert_eq!(reply, UpMsg::Ack);
    let v4: IpAddr = format!("100.64.0.{}", peer + 1).parse().unwrap();
    let v6: IpAddr = format!("fd00::{}", peer + 1).parse().unwrap();
    let reply = c
        .request(DownMsg::SetRoutes {
            peer: id,
            prefixes: vec![(v4, 32), (v6, 128)],
        })
        .unwrap();
    assert_eq!(reply, UpMsg::Ack);
    let ep: SocketAddr = format!("198.51.100.{}:51820", peer + 1).parse().unwrap();
    let reply = c
        .request(DownMsg::SetEndpoint { peer: id, addr: ep })
        .unwrap();
    assert_eq!(reply, UpMsg::Ack);
}

/// Reads a dataplane's counters over IPC.
pub fn stats(socket: &Path) -> Stats {
    let mut c = IpcClient::connect(socket).unwrap();
    match c.request(DownMsg::GetStats { first_peer: 0 }).unwrap() {
        UpMsg::Stats(s) => s,
        other => panic!("GetStats answered {other:?}"),
    }
}

/// Pings `addr` from node i; true when all `count` replies came.
pub fn ping(topo: &Topology, i: usize, addr: &str, count: u32) -> bool {
    let c = count.to_string();
    let out = topo.exec(i, &["ping", "-c", &c, "-i", "0.2", "-W", "2", addr]);
    out.status.success()
}

/// Parses `key=value` words of a bench output line.
pub fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}
