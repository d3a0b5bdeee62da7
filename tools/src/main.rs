//! `shadowmesh`: the command-line tool — self-check, static sessions, dataplane stats.
#![forbid(unsafe_code)]

use shadowmesh::{bench, demo, keys, selfcheck, static_cfg, status, up};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use shadowmesh_dataplane::ipc::{DownMsg, DropCause, IpcClient, UpMsg};

/// ShadowMesh: a post-quantum mesh VPN.
#[derive(Parser, Debug)]
#[command(name = "shadowmesh", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Shows the mesh working on this machine: self-check, then (as root) nodes in network
    /// namespaces, pings, a checked transfer and latency through the tunnel. Removes
    /// everything it made, also on Ctrl-C or failure.
    Demo {
        /// Nodes in the mesh (2..=8).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Dataplane backend: uring or poll.
        #[arg(long, default_value = "uring")]
        backend: String,
        /// Workers per dataplane.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Size of the checked bulk transfer (K, M, G suffixes).
        #[arg(long, default_value = "512M", value_parser = bench::parse_size)]
        bytes: u64,
    },
    /// Runs the packet core (route, seal, classify, open, replay, source check) on real data,
    /// verifies every packet, and prints ns/packet and Gbit/s per core.
    Selfcheck {
        /// Packets per cipher and size.
        #[arg(long, default_value_t = 200_000)]
        packets: u64,
    },
    /// Loads sessions, routes and endpoints from a file into a running dataplane (static mode,
    /// for tests and rigs; keys in the file).
    Static {
        /// The static configuration file (TOML).
        #[arg(long)]
        file: PathBuf,
        /// The dataplane's IPC socket.
        #[arg(long, default_value = "/run/shadowmesh/dataplane.sock")]
        socket: PathBuf,
    },
    /// Measuring tools for tests and rigs: checked bulk transfer, latency echo, hostile
    /// datagrams.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
    /// Prints a running dataplane's counters (per worker and per peer); read-only, safe beside
    /// a running control plane.
    Stats {
        /// The dataplane's IPC socket.
        #[arg(long, default_value = "/run/shadowmesh/dataplane.sock")]
        socket: PathBuf,
        /// Print key=value lines for scripts.
        #[arg(long)]
        raw: bool,
    },
    /// Generates a node identity: OUT.key (secret, 0600) and OUT.pub.
    Keygen {
        /// Output path prefix, e.g. /etc/shadowmesh/node.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// The network CA: `ca init` creates it, `ca sign` certifies a node.
    Ca {
        #[command(subcommand)]
        cmd: keys::CaCmd,
    },
    /// Starts the dataplane and the control plane of a node and supervises them.
    Up {
        /// The node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Stops the node started by `up` with this configuration.
    Down {
        /// The node configuration (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// This node, its dataplane and a table of its peers (via the admin API).
    Status(status::AdminArgs),
    /// Every peer in detail: endpoint, allowed IPs, handshake, session, transfer.
    Peers(status::AdminArgs),
    /// Enables a peer and handshakes with it now; a name or overlay address no peer has is
    /// looked up in the DHT first.
    Connect {
        /// Peer name, overlay address, or node id prefix (≥ 8 hex digits).
        peer: String,
        #[command(flatten)]
        admin: status::AdminArgs,
    },
    /// The DHT: our record, routing table, stored records and recent lookups.
    Dht(status::AdminArgs),
    /// This node's NAT as other nodes see it: mapping type, public address, every report.
    Netcheck(status::AdminArgs),
    /// Drops a peer's sessions and routes and stops handshaking with it.
    Disconnect {
        /// Peer name.
        peer: String,
        #[command(flatten)]
        admin: status::AdminArgs,
    },
}

/// The CLI's one clock.
#[expect(
    clippy::disallowed_methods,
    reason = "the binary's single clock wrapper"
)]
fn clock() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("shadowmesh: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Selfcheck { packets } => {
            let _ = clock();
            println!("ShadowMesh packet-core self-check: {packets} packets per row, one core");
            println!("path: route (10,000 prefixes) → reserve → seal → classify → open+replay → source check → verify");
            println!(
                "{:<20} {:>6} {:>12} {:>12}",
                "cipher", "bytes", "ns/packet", "Gbit/s"
            );
            for row in selfcheck::run(packets, clock)? {
                println!(
                    "{:<20} {:>6} {:>12.1} {:>12.2}",
                    row.cipher.name(),
                    row.size,
                    row.ns_per_packet,
                    row.gbit_per_s
                );
            }
            println!("all packets verified");
            Ok(())
        }
        Cmd::Static { file, socket } => {
            let msgs = static_cfg::load(&file)?;
            let n = msgs.len();
            let mut client = IpcClient::connect(&socket).with_context(|| {
                format!(
                    "connecting to the dataplane at {} (is shadowmesh-dataplane running?)",
                    socket.display()
                )
            })?;
            static_cfg::apply(&mut client, msgs)?;
            println!("applied {n} requests from {}", file.display());
            Ok(())
        }
        Cmd::Bench { cmd } => bench::run(cmd, clock),
        Cmd::Keygen { out, force } => keys::keygen(&out, force).map(|id| println!("node id {id}")),
        Cmd::Ca { cmd } => keys::ca(cmd),
        Cmd::Up { config } => up::up(&config),
        Cmd::Down { config } => up::down(&config),
        Cmd::Status(a) => status::status(&a),
        Cmd::Peers(a) => status::peers(&a),
        Cmd::Dht(a) => status::dht(&a),
        Cmd::Netcheck(a) => status::netcheck(&a),
        Cmd::Connect { peer, admin } => status::connect(&admin, &peer, true),
        Cmd::Disconnect { peer, admin } => status::connect(&admin, &peer, false),
        Cmd::Demo {
            nodes,
            backend,
            workers,
            bytes,
        } => {
            let _ = clock();
            // Interrupts become a flag the demo checks between steps; its namespaces are then
            // removed by the normal unwinding of the demo thread.
            shadowmesh_platform::signal::block_termination_signals()?;
            let stop = std::sync::atomic::AtomicBool::new(false);
            let opts = demo::DemoOptions {
                nodes,
                backend,
                workers,
                bulk_bytes: bytes,
            };
            std::thread::scope(|s| {
                let h = s.spawn(|| demo::run(&opts, clock, &stop));
                while !h.is_finished() {
                    if let Ok(Some(_)) =
                        shadowmesh_platform::signal::wait_termination(Duration::from_millis(100))
                    {
                        eprintln!("interrupted: cleaning up");
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the demo thread panicked")))
            })
        }
        Cmd::Stats { socket, raw } => {
            let mut client = IpcClient::connect_observer(&socket)
                .with_context(|| format!("connecting to the dataplane at {}", socket.display()))?;
            let UpMsg::Stats(stats) = client.request(DownMsg::GetStats { first_peer: 0 })? else {
                anyhow::bail!("the dataplane answered GetStats with something else");
            };
            for (i, w) in stats.workers.iter().enumerate() {
                if raw {
                    println!(
                        "worker={i} rx_packets={} rx_bytes={} tx_packets={} tx_bytes={} enters={} drops={} held={} hold_flushed={}",
                        w.rx_packets,
                        w.rx_bytes,
                        w.tx_packets,
                        w.tx_bytes,
                        w.uring_enters,
                        w.drops.iter().sum::<u64>(),
                        w.held,
                        w.hold_flushed
                    );
                } else {
                    println!(
                        "worker {i}: rx {} pkts / {} B, tx {} pkts / {} B, kernel entries {}, held {} (sent {})",
                        w.rx_packets,
                        w.rx_bytes,
                        w.tx_packets,
                        w.tx_bytes,
                        w.uring_enters,
                        w.held,
                        w.hold_flushed
                    );
                }
                print_drops(&w.drops, &format!("worker={i}"), raw);
            }
            for p in &stats.peers {
                if raw {
                    println!(
                        "peer={} rx_packets={} rx_bytes={} tx_packets={} tx_bytes={}",
                        p.peer, p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes
                    );
                } else {
                    println!(
                        "peer {}: rx {} pkts / {} B, tx {} pkts / {} B",
                        p.peer, p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes
                    );
                }
                print_drops(&p.drops, &format!("peer={}", p.peer), raw);
            }
            Ok(())
        }
    }
}

/// Prints the non-zero drop counters of one worker or peer (`key` starts each raw line).
fn print_drops(drops: &[u64], key: &str, raw: bool) {
    for cause in DropCause::ALL {
        let n = drops.get(cause.index()).copied().unwrap_or(0);
        if n == 0 {
            continue;
        }
        if raw {
            println!("{key} drop_{}={n}", cause.name());
        } else {
            println!("  dropped {n}: {}", cause.name());
        }
    }
}
