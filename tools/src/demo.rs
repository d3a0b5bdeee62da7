//! `shadowmesh demo`: shows the mesh working on this machine. A packet-core self-check, then
//! (as root) three nodes in network namespaces joined by veth pairs, each running the
//! dataplane; every pair pinged over IPv4 and IPv6; a checked bulk transfer and a latency
//! run through the tunnel; one table at the end. Everything it made is removed when it ends,
//! fails or is interrupted (Ctrl-C).
//!
//! The nodes are real: a fresh network CA certifies each node's ML-DSA-87 identity, and every
//! node runs `shadowmesh up` (dataplane + control plane), so every session key in the demo comes
//! from the hybrid X25519 + ML-KEM-1024 handshake.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::netns::{self, field, MeshOptions, Topology};
use crate::selfcheck;

/// Options of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Nodes in the mesh (2..=8).
    pub nodes: usize,
    /// Dataplane backend.
    pub backend: String,
    /// Workers per dataplane.
    pub workers: usize,
    /// Bytes of the bulk transfer.
    pub bulk_bytes: u64,
}

/// One line of the final table.
struct Line {
    what: String,
    result: String,
}

/// Runs the demo; `stop` is set when the user interrupts it.
pub fn run(opts: &DemoOptions, clock: fn() -> Duration, stop: &AtomicBool) -> anyhow::Result<()> {
    if !(2..=8).contains(&opts.nodes) {
        bail!("--nodes must be between 2 and 8, not {}", opts.nodes);
    }
    let steps = 7;
    let mut lines = Vec::new();
    let step = |n: usize, what: &str| println!("[{n}/{steps}] {what}");

    step(
        1,
        "packet-core self-check (route, seal, classify, open, replay, source check)",
    );
    let t = clock();
    let rows = selfcheck::run(50_000, clock)?;
    for r in &rows {
        if r.size == 1420 {
            lines.push(Line {
                what: format!("packet core, {} 1420 B, one core", r.cipher.name()),
                result: format!(
                    "{:.0} ns/packet, {:.2} Gbit/s",
                    r.ns_per_packet, r.gbit_per_s
                ),
            });
        }
    }
    println!("      ok ({:.1} s)", (clock() - t).as_secs_f64());

    if !netns::is_root() {
        print_table(&lines);
        println!(
            "\nThe mesh part of the demo needs root (network namespaces, TUN devices): \
             run `sudo bash scripts/demo.sh`."
        );
        return Ok(());
    }
    let missing: Vec<&str> = ["ip", "ping"]
        .into_iter()
        .filter(|t| !netns::have(t))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {} — install them with `apt-get install -y iproute2 iputils-ping`",
            missing.join(", ")
        );
    }
    let exe = std::env::current_exe().context("locating the shadowmesh binary")?;
    let bin_dir = exe.parent().context("locating the binaries' directory")?;
    if !bin_dir.join("shadowmesh-dataplane").exists() {
        bail!(
            "shadowmesh-dataplane is not next to {} — build everything with `cargo build --release --workspace --bins`",
            exe.display()
        );
    }
    let check = |stop: &AtomicBool| {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted: removing everything the demo made");
        }
        Ok(())
    };

    step(
        2,
        &format!(
            "creating {} nodes in network namespaces (underlay 198.51.100.0/24)",
            opts.nodes
        ),
    );
    let mut topo = Topology::star("demo", opts.nodes, bin_dir)?;
    check(stop)?;

    step(
        3,
        "creating a network CA and certifying each node's ML-DSA-87 identity",
    );
    for i in 0..opts.nodes {
        topo.certify(i, "ca")?;
    }
    check(stop)?;

    step(
        4,
        &format!(
            "starting {} nodes with `shadowmesh up` ({} backend, {} workers), no peer lists: \
             node 1 is the DHT bootstrap; peers are found by overlay address, handshakes are \
             hybrid X25519 + ML-KEM-1024",
            opts.nodes, opts.backend, opts.workers
        ),
    );
    let nodes: Vec<usize> = (0..opts.nodes).collect();
    let mesh = MeshOptions {
        workers: opts.workers,
        backend: opts.backend.clone(),
        bootstrap: vec![0],
        ..MeshOptions::default()
    };
    let mut started = Vec::new();
    for &i in &nodes {
        started.push(topo.start_node(i, "ca", &[], &mesh)?);
    }
    // The first packet to each node triggers a DHT lookup of its address and a handshake;
    // wait until node 1 reaches all.
    let t = clock();
    for b in 1..opts.nodes {
        if !topo.ping_until(0, &format!("100.64.0.{}", b + 1), 30) {
            bail!("node 1 could not reach node {} within 30 s", b + 1);
        }
        check(stop)?;
    }
    println!(
        "      all sessions up in {:.1} s; node 1's view (`shadowmesh status`):",
        (clock() - t).as_secs_f64()
    );
    let admin = started[0].admin.to_string_lossy().into_owned();
    let status = topo.exec(0, &[&topo.bin("shadowmesh"), "status", "--admin", &admin])?;
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        println!("      {line}");
    }
    check(stop)?;

    step(5, "pinging every pair over the overlay, IPv4 and IPv6");
    let mut failures = 0;
    for a in 0..opts.nodes {
        for b in 0..opts.nodes {
            if a == b {
                continue;
            }
            for dst in [format!("100.64.0.{}", b + 1), format!("fd00::{}", b + 1)] {
                let out = topo.exec(a, &["ping", "-c", "3", "-i", "0.2", "-W", "2", &dst])?;
                let text = String::from_utf8_lossy(&out.stdout);
                let rtt = text
                    .lines()
                    .find(|l| l.contains("min/avg/max"))
                    .and_then(|l| l.split('=').nth(1))
                    .and_then(|v| v.trim().split('/').nth(1))
                    .map(|avg| format!("avg RTT {avg} ms"));
                let ok = out.status.success();
                println!(
                    "      node {} → {dst:<12} {}",
                    a + 1,
                    if ok { "ok" } else { "FAILED" }
                );
                if !ok {
                    failures += 1;
                }
                if a == 0 && b == 1 {
                    lines.push(Line {
                        what: format!("ping node 1 → node 2 ({dst})"),
                        result: rtt.unwrap_or_else(|| "failed".into()),
                    });
                }
            }
            check(stop)?;
        }
    }
    let pairs = opts.nodes * (opts.nodes - 1) * 2;
    lines.push(Line {
        what: "overlay pings (every ordered pair, v4 + v6)".into(),
        result: format!("{}/{pairs} ok", pairs - failures),
    });

    step(
        6,
        "throughput and latency through the tunnel, node 1 → node 2",
    );
    let cli = topo.bin("shadowmesh");
    let bytes = opts.bulk_bytes.to_string();
    let server = topo.spawn(
        1,
        &[&cli, "bench", "bulk-server", "--listen", "100.64.0.2:7001"],
    )?;
    let echo = topo.spawn(
        1,
        &[
            &cli,
            "bench",
            "echo-server",
            "--listen",
            "100.64.0.2:7002",
            "--duration",
            "30",
        ],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let idle = topo.exec(
        0,
        &[
            &cli,
            "bench",
            "echo-client",
            "--connect",
            "100.64.0.2:7002",
            "--count",
            "500",
        ],
    )?;
    let client = topo.spawn(
        0,
        &[
            &cli,
            "bench",
            "bulk-client",
            "--connect",
            "100.64.0.2:7001",
            "--bytes",
            &bytes,
        ],
    )?;
    let loaded = topo.exec(
        0,
        &[
            &cli,
            "bench",
            "echo-client",
            "--connect",
            "100.64.0.2:7002",
            "--count",
            "300",
        ],
    )?;
    let c = topo.wait(client, Duration::from_secs(120))?;
    let s = topo.wait(server, Duration::from_secs(10))?;
    let _ = topo.wait(echo, Duration::from_millis(10));
    let (c, s) = (
        String::from_utf8_lossy(&c.stdout).into_owned(),
        String::from_utf8_lossy(&s.stdout).into_owned(),
    );
    let intact = field(&c, "sha256").is_some() && field(&c, "sha256") == field(&s, "sha256");
    lines.push(Line {
        what: format!(
            "TCP bulk transfer, {} MiB, SHA-256 checked",
            opts.bulk_bytes >> 20
        ),
        result: if intact {
            format!("{} Gbit/s, intact", field(&c, "gbit").unwrap_or("?"))
        } else {
            "FAILED: hashes differ or transfer incomplete".into()
        },
    });
    for (label, out) in [("idle", &idle), ("under load", &loaded)] {
        let text = String::from_utf8_lossy(&out.stdout);
        lines.push(Line {
            what: format!("UDP round trip {label} (p50 / p99)"),
            result: match (field(&text, "p50_us"), field(&text, "p99_us")) {
                (Some(p50), Some(p99)) => format!("{p50} µs / {p99} µs"),
                _ => "failed".into(),
            },
        });
    }
    step(7, "summary");
    let st = topo.status_json(0, &started[0])?;
    let h = &st["handshakes"];
    lines.push(Line {
        what: "node 1 handshakes completed (initiator + responder)".into(),
        result: format!(
            "{} (every session key post-quantum)",
            h["completed_initiator"].as_u64().unwrap_or(0)
                + h["completed_responder"].as_u64().unwrap_or(0)
        ),
    });
    print_table(&lines);
    drop(topo);
    println!("\nremoved the namespaces, devices and processes the demo made");
    if failures > 0 || !intact {
        bail!("the demo found failures (see the table)");
    }
    Ok(())
}

fn print_table(lines: &[Line]) {
    let w = lines.iter().map(|l| l.what.len()).max().unwrap_or(10);
    println!("\n{:<w$}  result", "ShadowMesh demo");
    println!("{}  {}", "-".repeat(w), "-".repeat(30));
    for l in lines {
        println!("{:<w$}  {}", l.what, l.result);
    }
}
