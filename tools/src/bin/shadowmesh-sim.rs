//! `shadowmesh-sim`: the seeded control-plane simulator's command line.
//!
//! `shadowmesh-sim dht --nodes 10000 --seed 7` runs the issue-10 DHT scenario and prints its
//! JSON summary on stdout: `summary` (identical for identical seeds) and `perf` (wall time and
//! simulated node-seconds per wall second, which vary with the machine). Progress goes to
//! stderr.
//!
//! `shadowmesh-sim mesh --nodes 1000` runs whole nodes (handshake driver, DHT, discovery and
//! liveness: the daemon's `Node`) over a model of the dataplane: join, sessions opened by a
//! packet to an unrouted overlay address and by `connect NAME`, killed peers shown unreachable
//! and back.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use shadowmesh_control::sim::ids::SimNetwork;
use shadowmesh_control::sim::mesh::{self, MeshConfig};
use shadowmesh_control::sim::scenario::ScenarioConfig;
use shadowmesh_control::sim::WALL_EPOCH;
use shadowmesh_control::sim::{kad, prod};

#[derive(Parser)]
#[command(
    name = "shadowmesh-sim",
    about = "Seeded, deterministic simulator of the ShadowMesh control plane"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Impl {
    /// The simulator's reference Kademlia (no authentication).
    Reference,
    /// The production `Dht` (real records, ML-DSA-87 signatures, pairwise authentication).
    Production,
}

#[derive(Subcommand)]
enum Cmd {
    /// The DHT scenario: join, publish, lookups, churn, liars.
    Dht {
        /// Number of nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// The seed of everything random.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Lookups per measured phase (default: 2000, at most 2 per node).
        #[arg(long)]
        lookups: Option<usize>,
        /// Packet loss in percent.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Which DHT to run.
        #[arg(long, value_enum, default_value_t = Impl::Production)]
        dht: Impl,
        /// Threads for building the production DHT's identities (the run itself is one thread).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// No progress lines on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// The mesh scenario: whole nodes (handshakes, DHT, discovery, liveness) over a dataplane
    /// model; sessions by packet and by name between random pairs, killed peers.
    Mesh {
        /// Number of nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// The seed of everything random.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Pairs that open a session (default: 200, at most 2 per node).
        #[arg(long)]
        pairs: Option<usize>,
        /// Packet loss in percent.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Threads for building the identities (the run itself is one thread).
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// No progress lines on stderr.
        #[arg(long)]
        quiet: bool,
    },
    /// Builds the identities and CA-signed certificates of N simulated nodes (real ML-DSA-87)
    /// and reports how long it took.
    Ids {
        /// Number of nodes.
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        /// The seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

/// Wall time since the first call: the binary's one clock wrapper. Only the `perf` figures and
/// progress lines use it; the simulation runs on virtual time.
#[expect(
    clippy::disallowed_methods,
    reason = "the binary's one clock wrapper, for the wall-time figures"
)]
fn wall_clock() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Dht {
            nodes,
            seed,
            lookups,
            loss,
            dht,
            threads,
            quiet,
        } => {
            anyhow::ensure!(nodes >= 2, "--nodes must be at least 2");
            anyhow::ensure!(
                (0.0..100.0).contains(&loss),
                "--loss is a percentage below 100"
            );
            let mut cfg = ScenarioConfig::new(nodes, seed);
            if let Some(l) = lookups {
                cfg.lookups = l;
            }
            cfg.net.loss_ppm = (loss * 10_000.0) as u32;
            let started = wall_clock();
            let mut progress = |line: &str| {
                if !quiet {
                    eprintln!("[{:7.1} s] {line}", (wall_clock() - started).as_secs_f64());
                }
            };
            let summary = match dht {
                Impl::Reference => kad::run_scenario(&cfg, &mut progress),
                Impl::Production => prod::run_scenario(&cfg, threads.max(1), &mut progress)?,
            };
            let wall = (wall_clock() - started).as_secs_f64();
            let out = serde_json::json!({
                "summary": summary,
                "perf": {
                    "wall_secs": wall,
                    "node_seconds_per_wall_second": summary.node_seconds / wall.max(1e-9),
                    "events_per_wall_second": summary.sim.events as f64 / wall.max(1e-9),
                },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Cmd::Mesh {
            nodes,
            seed,
            pairs,
            loss,
            threads,
            quiet,
        } => {
            anyhow::ensure!(nodes >= 2, "--nodes must be at least 2");
            anyhow::ensure!(
                (0.0..100.0).contains(&loss),
                "--loss is a percentage below 100"
            );
            let mut cfg = MeshConfig::new(nodes, seed);
            if let Some(p) = pairs {
                cfg.pairs = p;
            }
            cfg.net.loss_ppm = (loss * 10_000.0) as u32;
            let started = wall_clock();
            let mut progress = |line: &str| {
                if !quiet {
                    eprintln!("[{:7.1} s] {line}", (wall_clock() - started).as_secs_f64());
                }
            };
            let summary = mesh::run(&cfg, threads.max(1), &mut progress)?;
            let wall = (wall_clock() - started).as_secs_f64();
            let out = serde_json::json!({
                "summary": summary,
                "perf": {
                    "wall_secs": wall,
                    "node_seconds_per_wall_second": summary.node_seconds / wall.max(1e-9),
                    "events_per_wall_second": summary.sim.events as f64 / wall.max(1e-9),
                },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Cmd::Ids {
            nodes,
            seed,
            threads,
        } => {
            let started = wall_clock();
            let net = SimNetwork::build(nodes, seed, WALL_EPOCH.as_secs(), threads)?;
            let wall = (wall_clock() - started).as_secs_f64();
            let first = net
                .nodes
                .first()
                .map(|n| n.identity.node_id())
                .unwrap_or_default();
            let out = serde_json::json!({
                "nodes": net.nodes.len(),
                "threads": threads,
                "first_node_id": first.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                "wall_secs": wall,
                "per_node_ms": wall * 1000.0 / nodes.max(1) as f64,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}
