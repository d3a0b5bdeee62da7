//! `shadowmesh-dataplane`: the per-core packet engine of one node. Needs CAP_NET_ADMIN (it
//! creates the TUN device); holds no long-term secret; takes its sessions, routes and
//! endpoints from the control plane over the IPC socket.
#![deny(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use shadowmesh_dataplane::engine::BackendKind;
use shadowmesh_dataplane::node::{self, NodeConfig};

/// The ShadowMesh dataplane.
#[derive(Parser, Debug)]
#[command(name = "shadowmesh-dataplane", version, about)]
struct Args {
    /// TUN interface name.
    #[arg(long, default_value = "shadowmesh0")]
    tun: String,
    /// TUN MTU (576..=65535). 1420 leaves room for the 32-byte framing and UDP/IPv6 headers
    /// on a 1500-byte underlay.
    #[arg(long, default_value_t = 1420)]
    mtu: u32,
    /// Overlay address with prefix length, e.g. 100.64.0.1/10 or fd00::1/64 (repeatable).
    #[arg(long = "addr", value_parser = parse_prefix)]
    addresses: Vec<(IpAddr, u8)>,
    /// Underlay address and port to bind the data port on.
    #[arg(long, default_value = "[::]:51820")]
    bind: SocketAddr,
    /// Workers (0 = one per online core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// I/O backend: uring (Linux default) or poll (portable).
    #[arg(long, default_value = "uring")]
    backend: BackendKind,
    /// Turn TUN/UDP segmentation offloads off.
    #[arg(long)]
    no_offload: bool,
    /// Do not pin workers to cores.
    #[arg(long)]
    no_pin: bool,
    /// IPC socket path (created with mode 0600).
    #[arg(long, default_value = "/run/shadowmesh/dataplane.sock")]
    socket: PathBuf,
    /// UDP socket buffer size to ask for, bytes.
    #[arg(long, default_value_t = 8 << 20)]
    socket_buffer: usize,
    /// Print one line `ready <bound address> <backend>` on stdout once up (for supervisors).
    #[arg(long)]
    print_ready: bool,
}

fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDRESS/PREFIX-LENGTH, e.g. 100.64.0.1/10"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not an IP address: {e}"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{len:?} is not a prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("prefix length {len} is above {max} for {addr}"));
    }
    Ok((addr, len))
}

/// The dataplane's one clock: time since the process started. Everything below it is sans-IO
/// and is handed this function.
#[expect(
    clippy::disallowed_methods,
    reason = "the binary's single clock wrapper"
)]
fn clock() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("shadowmesh-dataplane: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHADOWMESH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = clock();
    // Blocked before any thread starts, so every thread inherits the mask and the signal
    // waits for the main thread.
    shadowmesh_platform::signal::block_termination_signals()
        .context("blocking termination signals")?;
    // The IPC server's bind creates a missing socket directory 0700 and refuses an unsafe one.
    let cfg = NodeConfig {
        tun_name: args.tun.clone(),
        mtu: args.mtu,
        addresses: args.addresses.clone(),
        bind: args.bind,
        workers: args.workers,
        backend: args.backend,
        offload: !args.no_offload,
        pin: !args.no_pin,
        socket: args.socket.clone(),
        socket_buffer: args.socket_buffer,
    };
    let stop = AtomicBool::new(false);
    let print_ready = args.print_ready;
    std::thread::scope(|scope| {
        let node = scope.spawn(|| {
            node::run(&cfg, clock, &stop, |local, backend| {
                if print_ready {
                    println!("ready {local} {backend:?}");
                }
            })
        });
        while !node.is_finished() {
            match shadowmesh_platform::signal::wait_termination(Duration::from_millis(200)) {
                Ok(Some(sig)) => {
                    tracing::info!(signal = sig, "stopping: draining workers, removing the TUN");
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("waiting for signals: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        match node.join() {
            Ok(r) => r.map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!("the dataplane thread panicked")),
        }
    })?;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
