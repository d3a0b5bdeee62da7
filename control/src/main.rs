//! `shadowmesh-control`: the control plane of one node. Loads the configuration, identity and
//! certificates, keeps the dataplane filled with routes, endpoints and sessions, runs the
//! post-quantum handshakes, and serves the admin API. Stopping it does not stop traffic: the
//! sessions live in the dataplane until they expire.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use shadowmesh_control::clock::Now;
use shadowmesh_control::config::Config;
use shadowmesh_control::daemon;

/// The ShadowMesh control plane.
#[derive(Parser, Debug)]
#[command(name = "shadowmesh-control", version, about)]
struct Args {
    /// The node configuration (TOML).
    #[arg(long, short)]
    config: PathBuf,
    /// Check the configuration, keys and certificates, then exit.
    #[arg(long)]
    check: bool,
}

/// The binary's one clock: monotonic time since the process started (every timer) and
/// wall-clock time since the Unix epoch (certificate validity and handshake timestamps).
#[expect(
    clippy::disallowed_methods,
    reason = "the binary's single clock wrapper"
)]
fn clock() -> Now {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    Now {
        // Offset by a day so that "never" (zero) is far in the past for every timer.
        mono: Instant::now().duration_since(start) + Duration::from_secs(86_400),
        wall: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO),
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("shadowmesh-control: error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::load(&args.config)?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHADOWMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.control.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let loaded = daemon::load(config)?;
    if args.check {
        loaded
            .cert
            .verify(&loaded.ca, clock().wall.as_secs())
            .with_context(|| format!("{}", loaded.config.node.cert.display()))?;
        println!("configuration, key and certificates OK");
        return Ok(());
    }
    // Before any thread starts: every thread inherits the mask, and the daemon's signal
    // thread takes the signals with sigwait.
    shadowmesh_platform::signal::block_termination_signals()
        .context("blocking termination signals")?;
    // Two threads: the daemon's loop (handshake crypto) on this one, the admin API on the
    // worker, so that an initiation flood never delays the API.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(daemon::run(loaded, clock))?;
    Ok(())
}
