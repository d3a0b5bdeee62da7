//! Network-namespace topologies for the demo and the root-only tests: a hub namespace with a
//! bridge, and nodes each joined to it by a veth pair (underlay 198.51.100.0/24), dataplanes
//! started inside them, and everything removed on drop — also when the caller fails.
//!
//! Only addresses of DESIGN.md's test topology are used; every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use shadowmesh_dataplane::ipc::proto::{InstallSession, Slot, CIPHER_AES_256_GCM};
use shadowmesh_dataplane::ipc::{DownMsg, IpcClient, Stats, UpMsg};
use zeroize::Zeroizing;

/// Polling step of every bounded wait.
const STEP: Duration = Duration::from_millis(25);

/// Whether we run as root (namespaces and TUN devices need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// Runs a command to completion; an error names the command and its output.
pub fn run(args: &[&str]) -> anyhow::Result<Output> {
    let (prog, rest) = args.split_first().context("empty command")?;
    let out = Command::new(prog)
        .args(rest)
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Creates namespace `name` with its loopback up, noted in `made` as soon as it exists so
/// that drop removes it even when a later step fails.
fn add_ns(made: &mut Vec<String>, name: &str) -> anyhow::Result<()> {
    run(&["ip", "netns", "add", name])?;
    made.push(name.to_string());
    run(&["ip", "-n", name, "link", "set", "lo", "up"])?;
    Ok(())
}

/// A set of namespaces, torn down on drop (processes killed, namespaces deleted).
pub struct Topology {
    /// Namespace names: the hub first, then the nodes.
    pub ns: Vec<String>,
    /// Scratch directory (sockets, logs), removed on drop.
    pub dir: PathBuf,
    /// Where the ShadowMesh binaries are.
    pub bin_dir: PathBuf,
    /// Namespaces that are not nodes (e.g. the NAT routers of [`crate::natlab`]): removed on
    /// drop like the nodes, but outside the node numbering.
    infra: Vec<String>,
    children: Vec<Option<Child>>,
}

impl Topology {
    /// `n` nodes named `sm<tag><pid>n<i>`; node i gets underlay 198.51.100.(i+1)/24.
    pub fn star(tag: &str, n: usize, bin_dir: &Path) -> anyhow::Result<Topology> {
        if n == 0 || n > 200 {
            bail!("a topology has 1..=200 nodes, not {n}");
        }
        let pid = std::process::id() % 100_000;
        let base = format!("sm{tag}{pid}");
        let mut topo = Topology::bare(&base, bin_dir)?;
        let hub = topo.ns[0].clone();
        run(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{base}n{i}");
            topo.add_node_ns(&ns)?;
            let (a, b) = (format!("u{i}"), format!("p{i}"));
            run(&[
                "ip", "-n", &ns, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns",
                &hub,
            ])?;
            run(&["ip", "-n", &hub, "link", "set", &b, "master", "br0"])?;
            run(&["ip", "-n", &hub, "link", "set", &b, "up"])?;
            let addr = format!("198.51.100.{}/24", i + 1);
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", &a])?;
            run(&["ip", "-n", &ns, "link", "set", &a, "up"])?;
        }
        Ok(topo)
    }

    /// An empty topology: the scratch directory and the hub namespace `<base>h` (no bridge,
    /// no nodes), for builders that lay out their own network ([`crate::natlab`]). Nodes
    /// added with [`Topology::add_node_ns`] are numbered as in [`Topology::star`], so every
    /// per-node helper works on them.
    pub fn bare(base: &str, bin_dir: &Path) -> anyhow::Result<Topology> {
        let dir = std::env::temp_dir().join(format!("{base}-dir"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut topo = Topology {
            ns: Vec::new(),
            dir,
            bin_dir: bin_dir.to_path_buf(),
            infra: Vec::new(),
            children: Vec::new(),
        };
        add_ns(&mut topo.ns, &format!("{base}h"))?;
        Ok(topo)
    }

    /// Creates namespace `name` (loopback up) as the next node; returns its node number.
    pub fn add_node_ns(&mut self, name: &str) -> anyhow::Result<usize> {
        add_ns(&mut self.ns, name)?;
        Ok(self.ns.len() - 2)
    }

    /// Creates namespace `name` (loopback up) outside the node numbering (a router, say);
    /// it is removed on drop like the nodes.
    pub fn add_infra_ns(&mut self, name: &str) -> anyhow::Result<()> {
        add_ns(&mut self.infra, name)
    }

    /// Node i's namespace name.
    pub fn node(&self, i: usize) -> &str {
        self.ns.get(i + 1).map_or("", String::as_str)
    }

    /// Path of a ShadowMesh binary.
    pub fn bin(&self, name: &str) -> String {
        self.bin_dir.join(name).to_string_lossy().into_owned()
    }

    /// Runs a command inside node i and waits for it.
    pub fn exec(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        self.exec_in(self.node(i), args)
            .with_context(|| format!("in node {i}"))
    }

    /// Runs a command inside namespace `ns` (a node or not) and waits for it.
    pub fn exec_in(&self, ns: &str, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .with_context(|| format!("running {args:?} in {ns}"))
    }

    /// Starts a command inside node i; it is killed on drop. Returns a handle for `wait`.
    pub fn spawn(&mut self, i: usize, args: &[&str]) -> anyhow::Result<usize> {
        let ns = self.node(i).to_string();
        self.spawn_in(&ns, args)
            .with_context(|| format!("in node {i}"))
    }

    /// Starts a command inside namespace `ns` (a node or not); it is killed on drop.
    /// Returns a handle for `wait`.
    pub fn spawn_in(&mut self, ns: &str, args: &[&str]) -> anyhow::Result<usize> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {args:?} in {ns}"))?;
        self.children.push(Some(child));
        Ok(self.children.len() - 1)
    }

    /// Starts a long-running command inside node i with its output going to `log` (a pipe
    /// nobody reads would stall a chatty process); it is killed on drop.
    pub fn spawn_logged(&mut self, i: usize, args: &[&str], log: &Path) -> anyhow::Result<usize> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", self.node(i)])
            .args(args)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {args:?} in node {i}"))?;
        self.children.push(Some(child));
        Ok(self.children.len() - 1)
    }

    /// Whether a spawned command is still running (false once it exited or was waited for).
    pub fn is_running(&mut self, handle: usize) -> bool {
        self.children
            .get_mut(handle)
            .and_then(Option::as_mut)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for a spawned command at most `timeout` (then kills it) and returns its output.
    pub fn wait(&mut self, handle: usize, timeout: Duration) -> anyhow::Result<Output> {
        let mut child = self
            .children
            .get_mut(handle)
            .and_then(Option::take)
            .context("no such process handle")?;
        let steps = (timeout.as_millis() / STEP.as_millis()).max(1);
        for _ in 0..steps {
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(STEP);
        }
        if child.try_wait()?.is_none() {
            let _ = child.kill();
        }
        Ok(child.wait_with_output()?)
    }

    /// Starts a dataplane in node i (TUN `sm0`, 100.64.0.(i+1)/24 and fd00::(i+1)/64, data
    /// port 51820) and returns its IPC socket once it is ready.
    pub fn start_dataplane(
        &mut self,
        i: usize,
        backend: &str,
        workers: usize,
    ) -> anyhow::Result<PathBuf> {
        let sock = self.dir.join(format!("dp{i}.sock"));
        let _ = std::fs::remove_file(&sock);
        let v4 = format!("100.64.0.{}/24", i + 1);
        let v6 = format!("fd00::{}/64", i + 1);
        let w = workers.to_string();
        let log = self.dir.join(format!("dp{i}.log"));
        let child = Command::new("ip")
            .args(["netns", "exec", self.node(i)])
            .arg(self.bin("shadowmesh-dataplane"))
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
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting shadowmesh-dataplane")?;
        self.children.push(Some(child));
        for _ in 0..400 {
            if sock.exists() {
                return Ok(sock);
            }
            std::thread::sleep(STEP);
        }
        bail!(
            "the dataplane in node {i} did not come up within 10 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.ns.iter().chain(&self.infra) {
            // Anything still running inside (spawned through `ip netns exec`) goes too.
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

/// A static key for the direction `from` → `to` (static mode: both ends know it).
pub fn static_key(from: usize, to: usize) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (from as u8).wrapping_mul(31) ^ (to as u8).wrapping_mul(17) ^ i as u8 ^ 0xa5;
    }
    k
}

/// Receiver index node `me` uses for its session with `peer`.
pub fn static_index(me: usize, peer: usize) -> u32 {
    (me as u32 + 1) * 1000 + peer as u32 + 1
}

/// Installs a full mesh of static sessions among `nodes` (peer ids = node numbers + 1) over
/// each node's IPC socket.
pub fn install_static_mesh(sockets: &[PathBuf], nodes: &[usize]) -> anyhow::Result<()> {
    for (sock, &me) in sockets.iter().zip(nodes) {
        let mut c = IpcClient::connect(sock)
            .with_context(|| format!("connecting to {}", sock.display()))?;
        for &peer in nodes.iter().filter(|&&p| p != me) {
            let id = peer as u32 + 1;
            let v4: IpAddr = format!("100.64.0.{}", peer + 1).parse()?;
            let v6: IpAddr = format!("fd00::{}", peer + 1).parse()?;
            let ep: SocketAddr = format!("198.51.100.{}:51820", peer + 1).parse()?;
            for msg in [
                DownMsg::InstallSession(InstallSession {
                    peer: id,
                    slot: Slot::Current,
                    local_index: static_index(me, peer),
                    remote_index: static_index(peer, me),
                    cipher: CIPHER_AES_256_GCM,
                    send_key: Zeroizing::new(static_key(me, peer)),
                    recv_key: Zeroizing::new(static_key(peer, me)),
                    rekey_after_secs: 0,
                    reject_after_secs: 0,
                }),
                DownMsg::SetRoutes {
                    peer: id,
                    prefixes: vec![(v4, 32), (v6, 128)],
                },
                DownMsg::SetEndpoint { peer: id, addr: ep },
            ] {
                let reply = c.request(msg)?;
                if reply != UpMsg::Ack {
                    bail!("the dataplane refused a static session request: {reply:?}");
                }
            }
        }
    }
    Ok(())
}

/// Reads a dataplane's counters over IPC (as an observer: a control connection stays).
pub fn stats(socket: &Path) -> anyhow::Result<Stats> {
    let mut c = IpcClient::connect_observer(socket)?;
    match c.request(DownMsg::GetStats { first_peer: 0 })? {
        UpMsg::Stats(s) => Ok(s),
        other => bail!("GetStats answered {other:?}"),
    }
}

/// The value of `key=value` in a bench output line.
pub fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Whether a bulk client's and server's outputs (`shadowmesh bench bulk-*`) name the same
/// SHA-256: the transfer arrived whole and intact.
#[must_use]
pub fn transfer_intact(client_out: &str, server_out: &str) -> bool {
    field(server_out, "sha256").is_some()
        && field(client_out, "sha256") == field(server_out, "sha256")
}

/// How to set up a mesh of nodes run by `shadowmesh up`.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// Dataplane workers per node.
    pub workers: usize,
    /// Dataplane backend.
    pub backend: String,
    /// Rekey interval of the control plane.
    pub rekey_after_secs: u32,
    /// Endpoints this node is given for some peers instead of the peer's own underlay address
    /// (e.g. an impairment forwarder in between): `(peer node, address)`.
    pub peer_endpoints: Vec<(usize, SocketAddr)>,
    /// Nodes whose underlay address goes into `[discovery] bootstrap`.
    pub bootstrap: Vec<usize>,
    /// Bootstrap addresses given as such (e.g. a NAT lab's public host), added to those of
    /// `bootstrap` (start the bootstrap node itself without them).
    pub bootstrap_addrs: Vec<SocketAddr>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            backend: "uring".into(),
            rekey_after_secs: 120,
            peer_endpoints: Vec::new(),
            bootstrap: Vec::new(),
            bootstrap_addrs: Vec::new(),
        }
    }
}

/// Files of one node started with `shadowmesh up`.
#[derive(Clone, Debug)]
pub struct MeshNode {
    /// Its configuration file.
    pub config: PathBuf,
    /// Its admin API socket.
    pub admin: PathBuf,
    /// Its dataplane's IPC socket.
    pub dataplane: PathBuf,
    /// Handle of its `shadowmesh up` process.
    pub up: usize,
}

impl Topology {
    /// Creates a network CA named `ca_name` (files `<dir>/<ca_name>.key/.pub`) unless it exists.
    pub fn ensure_ca(&self, ca_name: &str) -> anyhow::Result<PathBuf> {
        let prefix = self.dir.join(ca_name);
        let key = prefix.with_extension("key");
        if !key.exists() {
            let out = self.dir.join(ca_name);
            run(&[
                &self.bin("shadowmesh"),
                "ca",
                "init",
                "--name",
                ca_name,
                "--out",
                out.to_str().context("non-UTF-8 path")?,
            ])?;
        }
        Ok(prefix)
    }

    /// Gives node i an identity and a certificate from CA `ca_name` (name `n<i>`, overlay
    /// 100.64.0.(i+1)/24 and fd00::(i+1)/64).
    pub fn certify(&self, i: usize, ca_name: &str) -> anyhow::Result<()> {
        let ca = self.ensure_ca(ca_name)?;
        let node = self.dir.join(format!("n{i}"));
        let node_s = node.to_str().context("non-UTF-8 path")?;
        run(&[
            &self.bin("shadowmesh"),
            "keygen",
            "--out",
            node_s,
            "--force",
        ])?;
        run(&[
            &self.bin("shadowmesh"),
            "ca",
            "sign",
            "--ca",
            &format!("{}.key", ca.display()),
            "--node",
            &format!("{node_s}.pub"),
            "--name",
            &format!("n{i}"),
            "--addr",
            &format!("100.64.0.{}/24", i + 1),
            "--addr",
            &format!("fd00::{}/64", i + 1),
            "--out",
            &format!("{node_s}.cert"),
            "--force",
        ])?;
        Ok(())
    }

    /// Writes node i's configuration (CA `ca_name`, static peers `peers`) and starts
    /// `shadowmesh up` in its namespace. Call [`Topology::certify`] for i and every peer first.
    pub fn start_node(
        &mut self,
        i: usize,
        ca_name: &str,
        peers: &[usize],
        opts: &MeshOptions,
    ) -> anyhow::Result<MeshNode> {
        let d = self.dir.clone();
        let admin = d.join(format!("admin{i}.sock"));
        // pin = false: every node of a topology shares this machine's cores; pinned, each
        // node's worker i would sit on core i beside every other node's worker i.
        let mut cfg = format!(
            "[node]\nname = \"n{i}\"\nkey = \"n{i}.key\"\ncert = \"n{i}.cert\"\nca = \"{ca_name}.pub\"\n\n\
             [dataplane]\nsocket = \"{}\"\ntun = \"sm0\"\nlisten_port = 51820\nworkers = {}\nbackend = \"{}\"\npin = false\n\n\
             [control]\nadmin_socket = \"{}\"\nrekey_after_secs = {}\n",
            d.join(format!("dp{i}.sock")).display(),
            opts.workers,
            opts.backend,
            admin.display(),
            opts.rekey_after_secs,
        );
        let mut boot: Vec<String> = opts
            .bootstrap
            .iter()
            .filter(|&&b| b != i)
            .map(|b| format!("\"198.51.100.{}:51820\"", b + 1))
            .collect();
        boot.extend(opts.bootstrap_addrs.iter().map(|a| format!("\"{a}\"")));
        if !boot.is_empty() {
            cfg.push_str(&format!(
                "\n[discovery]\nbootstrap = [{}]\n",
                boot.join(", ")
            ));
        }
        for &p in peers.iter().filter(|&&p| p != i) {
            let endpoint = opts
                .peer_endpoints
                .iter()
                .find(|(q, _)| *q == p)
                .map_or_else(
                    || format!("198.51.100.{}:51820", p + 1),
                    |(_, a)| a.to_string(),
                );
            cfg.push_str(&format!(
                "\n[[peer]]\ncert = \"n{p}.cert\"\nendpoint = \"{endpoint}\"\n"
            ));
        }
        let config = d.join(format!("n{i}.toml"));
        std::fs::write(&config, cfg)?;
        let cli = self.bin("shadowmesh");
        let config_s = config.to_str().context("non-UTF-8 path")?.to_string();
        let log = d.join(format!("up{i}.log"));
        let up = self.spawn_logged(i, &[&cli, "up", "--config", &config_s], &log)?;
        for _ in 0..600 {
            if admin.exists() {
                return Ok(MeshNode {
                    config,
                    admin,
                    dataplane: d.join(format!("dp{i}.sock")),
                    up,
                });
            }
            std::thread::sleep(STEP);
        }
        bail!(
            "node {i}: `shadowmesh up` did not open its admin socket within 15 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    }

    /// Starts a checked bulk transfer: `shadowmesh bench bulk-server --listen addr` in node
    /// `server` (with `server_args`), then `bulk-client --connect addr` in node `client` (with
    /// `client_args`). Returns the (server, client) handles for [`Topology::wait`].
    pub fn start_bulk(
        &mut self,
        server: usize,
        client: usize,
        addr: &str,
        server_args: &[&str],
        client_args: &[&str],
    ) -> anyhow::Result<(usize, usize)> {
        let cli = self.bin("shadowmesh");
        let mut sa = vec![cli.as_str(), "bench", "bulk-server", "--listen", addr];
        sa.extend_from_slice(server_args);
        let s = self.spawn(server, &sa)?;
        std::thread::sleep(Duration::from_millis(300));
        let mut ca = vec![cli.as_str(), "bench", "bulk-client", "--connect", addr];
        ca.extend_from_slice(client_args);
        let c = self.spawn(client, &ca)?;
        Ok((s, c))
    }

    /// Waits for a transfer of [`Topology::start_bulk`] (the client for up to `timeout`, the
    /// server 30 s more) and checks it: `Ok(client's summary line)` when both ends saw the
    /// same SHA-256, an error naming both outputs otherwise.
    pub fn finish_bulk(
        &mut self,
        server: usize,
        client: usize,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let c = self.wait(client, timeout)?;
        let s = self.wait(server, Duration::from_secs(30))?;
        let (c, s) = (
            String::from_utf8_lossy(&c.stdout).to_string(),
            String::from_utf8_lossy(&s.stdout).to_string(),
        );
        if !transfer_intact(&c, &s) {
            bail!("transfer incomplete or corrupted: client {c:?} / server {s:?}");
        }
        Ok(c.trim().to_string())
    }

    /// Node i's `shadowmesh status --json`, parsed.
    pub fn status_json(&self, i: usize, node: &MeshNode) -> anyhow::Result<serde_json::Value> {
        let admin = node.admin.to_str().context("non-UTF-8 path")?;
        let out = self.exec(
            i,
            &[
                &self.bin("shadowmesh"),
                "status",
                "--admin",
                admin,
                "--json",
            ],
        )?;
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Pids of processes in node i whose command name starts with `comm`.
    pub fn pids_named(&self, i: usize, comm: &str) -> Vec<String> {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", self.node(i)])
            .output()
        else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim().starts_with(comm))
            })
            .map(str::to_string)
            .collect()
    }

    /// Pings `dst` from node i up to `tries` times (one probe each); true on the first reply.
    pub fn ping_until(&self, i: usize, dst: &str, tries: usize) -> bool {
        (0..tries).any(|_| {
            self.exec(i, &["ping", "-c", "1", "-W", "1", dst])
                .is_ok_and(|o| o.status.success())
        })
    }
}

impl Topology {
    /// Drops `percent` % of the UDP datagrams arriving at `port` in node i, at random
    /// (nftables `numgen random`; this kernel has no netem), replacing an earlier rule of
    /// ours. Set on both nodes of a pair, each direction loses `percent` %.
    pub fn set_udp_loss(&self, i: usize, port: u16, percent: u8) -> anyhow::Result<()> {
        if percent > 100 {
            bail!("a loss of 0..=100 %, not {percent}");
        }
        let ns = self.node(i);
        // Absent the first time: nothing to delete.
        let _ = Command::new("ip")
            .args([
                "netns", "exec", ns, "nft", "delete", "table", "inet", "smloss",
            ])
            .output();
        let rules = self.dir.join(format!("loss{i}.nft"));
        std::fs::write(
            &rules,
            format!(
                "table inet smloss {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
                 udp dport {port} numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
            ),
        )?;
        let path = rules.to_str().context("non-UTF-8 path")?;
        run(&["ip", "netns", "exec", ns, "nft", "-f", path])?;
        Ok(())
    }

    /// Datagrams dropped so far by node i's loss rule ([`Topology::set_udp_loss`]).
    pub fn udp_loss_drops(&self, i: usize) -> anyhow::Result<u64> {
        let out = run(&[
            "ip",
            "netns",
            "exec",
            self.node(i),
            "nft",
            "list",
            "table",
            "inet",
            "smloss",
        ])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let n = text
            .split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .context("no counter in the loss rule")?;
        Ok(n)
    }

    /// Stops node i's `shadowmesh up` and everything it started (kill -9) and removes its
    /// sockets, so that [`Topology::start_node`] starts it afresh: a fresh start has no
    /// session and no cached certificate, so its next handshake is a first contact.
    pub fn stop_node(&mut self, i: usize, node: &MeshNode) -> anyhow::Result<()> {
        let _ = self.wait(node.up, Duration::ZERO);
        // Bounded: 160 × 25 ms.
        for _ in 0..160 {
            let left = self.pids_named(i, "shadowmesh");
            if left.is_empty() {
                let _ = std::fs::remove_file(&node.admin);
                let _ = std::fs::remove_file(&node.dataplane);
                return Ok(());
            }
            for p in &left {
                let _ = Command::new("kill").args(["-9", p]).status();
            }
            std::thread::sleep(STEP);
        }
        bail!("node {i}: shadowmesh processes still running 4 s after kill -9")
    }
}
