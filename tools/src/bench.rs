//! `shadowmesh bench …`: the measuring tools the tests and rigs use, so nothing depends on
//! hand-rolled shell: a checked bulk TCP transfer (SHA-256 at both ends), a UDP latency echo
//! with an HDR histogram, a sender of hostile datagrams (garbage, forged, replayed), and an
//! impairment forwarder (loss, reordering, duplication, jitter: [`crate::impair`]), and a
//! NAT probe with its reflector ([`crate::natprobe`]).
//!
//! Every loop here is bounded by a count and a deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context};
use aws_lc_rs::digest;
use clap::Subcommand;
use hdrhistogram::Histogram;
use shadowmesh_dataplane::crypto::{self, Cipher, DataKey};
use shadowmesh_dataplane::wire::{HEADER_LEN, MSG_DATA, TAG_LEN};

/// The bench subcommands.
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Accepts one TCP connection, reads it to the end, prints `bytes=N sha256=HEX`.
    BulkServer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Sends a deterministic pseudo-random stream, prints `bytes=N sha256=HEX secs=S gbit=G`.
    BulkClient {
        /// Server address.
        #[arg(long)]
        connect: SocketAddr,
        /// Bytes to send (suffixes K, M, G = powers of 1024).
        #[arg(long, value_parser = parse_size)]
        bytes: u64,
        /// Seed of the stream (the same seed gives the same bytes).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Keep retrying the connection this many seconds (the server may start late).
        #[arg(long, default_value_t = 10)]
        connect_timeout: u64,
        /// Pace the stream to this many Mbit/s (0 = as fast as possible), e.g. to make a
        /// transfer span several rekeys.
        #[arg(long, default_value_t = 0)]
        rate_mbit: u64,
    },
    /// Echoes UDP datagrams back to their sender until the deadline.
    EchoServer {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60)]
        duration: u64,
    },
    /// Measures UDP round trips through an echo server; prints percentiles in microseconds.
    EchoClient {
        /// Echo server address.
        #[arg(long)]
        connect: SocketAddr,
        /// Round trips to measure.
        #[arg(long, default_value_t = 2000)]
        count: u64,
        /// Pause between probes, microseconds.
        #[arg(long, default_value_t = 200)]
        interval_us: u64,
        /// Probe payload size.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Sends hostile datagrams at a dataplane port: garbage, forged data messages (right
    /// receiver index, wrong tag) and replays (correctly sealed, counters 0..N, long used).
    Junk {
        /// The dataplane's underlay address.
        #[arg(long)]
        to: SocketAddr,
        /// Receiver index of a live session there.
        #[arg(long)]
        receiver_index: u32,
        /// That session's receive key (64 hex chars) — the test knows it in static mode.
        #[arg(long)]
        key: String,
        /// Its cipher.
        #[arg(long, default_value = "aes-256-gcm")]
        cipher: String,
        /// Datagrams of each kind.
        #[arg(long, default_value_t = 1000)]
        count: u64,
    },
    /// Attacks a node's data port with only public data: initiations forged in a peer's
    /// name, cookie-reply-shaped datagrams, and a flood of control fragments; prints counts.
    Attack(crate::attack::AttackPlan),
    /// A UDP forwarder between two nodes that loses, reorders, duplicates and delays
    /// datagrams (seeded, reproducible): the hostile network of the tests, without netem.
    Impair(crate::impair::ImpairArgs),
    /// Answers each UDP datagram with the sender's address as text (`seen IP:PORT`), from
    /// the same socket and optionally also from a second one: the server side of `nat-probe`.
    UdpReflect(crate::natprobe::ReflectArgs),
    /// Asks reflectors from one socket which address they see; prints each, the NAT's
    /// mapping (`mapping: endpoint-independent|endpoint-dependent`) and, when a reflector
    /// answered from another port too, its filtering.
    NatProbe(crate::natprobe::ProbeArgs),
}

/// Parses sizes like 200M, 1G, 4096.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?}: expected a byte count like 4096, 200M or 1G"))
}

/// A deterministic xorshift64* stream: cheap, reproducible test data.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one bench subcommand; `clock` is the CLI's clock.
pub fn run(cmd: BenchCmd, clock: fn() -> Duration) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::BulkServer { listen, timeout } => bulk_server(listen, timeout),
        BenchCmd::BulkClient {
            connect,
            bytes,
            seed,
            connect_timeout,
            rate_mbit,
        } => bulk_client(connect, bytes, seed, connect_timeout, rate_mbit, clock),
        BenchCmd::EchoServer { listen, duration } => echo_server(listen, duration, clock),
        BenchCmd::EchoClient {
            connect,
            count,
            interval_us,
            size,
        } => echo_client(connect, count, interval_us, size, clock),
        BenchCmd::Junk {
            to,
            receiver_index,
            key,
            cipher,
            count,
        } => junk(to, receiver_index, &key, &cipher, count),
        BenchCmd::Attack(plan) => {
            let r = crate::attack::run(&plan, clock)?;
            println!(
                "forged={} cookie_replies={} flood={}",
                r.forged, r.cookie_replies, r.flood
            );
            Ok(())
        }
        BenchCmd::Impair(args) => crate::impair::run(&args, clock),
        BenchCmd::UdpReflect(args) => crate::natprobe::reflect(&args, clock),
        BenchCmd::NatProbe(args) => crate::natprobe::probe(&args, clock).map(|_| ()),
    }
}

fn bulk_server(listen: SocketAddr, timeout: u64) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let (mut s, peer) = l.accept().context("accepting the bulk connection")?;
    s.set_read_timeout(Some(Duration::from_secs(timeout)))?;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s
            .read(&mut buf)
            .with_context(|| format!("reading from {peer} after {total} bytes"))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        total += n as u64;
    }
    println!("bytes={total} sha256={}", hex(ctx.finish().as_ref()));
    Ok(())
}

fn bulk_client(
    connect: SocketAddr,
    bytes: u64,
    seed: u64,
    connect_timeout: u64,
    rate_mbit: u64,
    clock: fn() -> Duration,
) -> anyhow::Result<()> {
    let deadline = clock() + Duration::from_secs(connect_timeout);
    let mut s = loop {
        match TcpStream::connect_timeout(&connect, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(_) if clock() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e).with_context(|| format!("connecting to {connect}")),
        }
    };
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut gen = Stream(seed | 1);
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let start = clock();
    let mut left = bytes;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        gen.fill(&mut buf[..n]);
        ctx.update(&buf[..n]);
        s.write_all(&buf[..n])
            .with_context(|| format!("sending to {connect} with {left} bytes left"))?;
        left -= n as u64;
        if rate_mbit > 0 {
            // Sleep until the bytes sent so far fit the rate.
            let sent_bits = (bytes - left) as f64 * 8.0;
            let due = Duration::from_secs_f64(sent_bits / (rate_mbit as f64 * 1e6));
            let elapsed = clock().saturating_sub(start);
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the server to close: the bytes are then all delivered.
    let mut sink = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let _ = s.read(&mut sink);
    let secs = clock().saturating_sub(start).as_secs_f64().max(1e-9);
    println!(
        "bytes={bytes} sha256={} secs={secs:.3} gbit={:.3}",
        hex(ctx.finish().as_ref()),
        bytes as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

fn echo_server(listen: SocketAddr, duration: u64, clock: fn() -> Duration) -> anyhow::Result<()> {
    let s = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let end = clock() + Duration::from_secs(duration);
    let mut buf = [0u8; 2048];
    while clock() < end {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    }
    Ok(())
}

fn echo_client(
    connect: SocketAddr,
    count: u64,
    interval_us: u64,
    size: usize,
    clock: fn() -> Duration,
) -> anyhow::Result<()> {
    let bind: SocketAddr = if connect.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(connect)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let size = size.clamp(8, 1400);
    let mut probe = vec![0u8; size];
    let mut back = vec![0u8; 2048];
    let mut lost = 0u64;
    for seq in 0..count {
        probe[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = clock();
        s.send(&probe)?;
        // Skip stale answers to earlier (timed-out) probes.
        let got = loop {
            match s.recv(&mut back) {
                Ok(n) if n >= 8 && back[..8] == seq.to_le_bytes() => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        if got {
            let us = clock().saturating_sub(t0).as_micros().max(1) as u64;
            hist.record(us.min(10_000_000))?;
        } else {
            lost += 1;
        }
        std::thread::sleep(Duration::from_micros(interval_us));
    }
    if hist.is_empty() {
        bail!("no echo came back from {connect} ({count} probes)");
    }
    println!(
        "count={} lost={lost} p50_us={} p99_us={} p999_us={} max_us={}",
        hist.len(),
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
    Ok(())
}

fn junk(
    to: SocketAddr,
    receiver_index: u32,
    key: &str,
    cipher: &str,
    count: u64,
) -> anyhow::Result<()> {
    let cipher: Cipher = cipher
        .parse()
        .map_err(|e| anyhow::anyhow!("--cipher: {e}"))?;
    let mut raw = [0u8; 32];
    let key = key.trim();
    if key.len() != 64 {
        bail!("--key: expected 64 hex characters, got {}", key.len());
    }
    for (i, b) in raw.iter_mut().enumerate() {
        *b = u8::from_str_radix(&key[2 * i..2 * i + 2], 16)
            .map_err(|_| anyhow::anyhow!("--key: not hexadecimal"))?;
    }
    let dk = DataKey::new(cipher, &raw)?;
    raw.fill(0);
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let s = UdpSocket::bind(bind)?;
    let mut gen = Stream(0x5eed);
    let mut buf = [0u8; 256];
    for i in 0..count {
        // Garbage: a random length and first byte that is neither data (4) nor control (5).
        gen.fill(&mut buf);
        let len = 1 + (buf[1] as usize % 200);
        buf[0] = if buf[0] == MSG_DATA || buf[0] == 5 {
            9
        } else {
            buf[0]
        };
        s.send_to(&buf[..len], to)?;
        // Forged: a well-formed header for the live session, random ciphertext and tag.
        gen.fill(&mut buf);
        buf[0] = MSG_DATA;
        buf[1..4].fill(0);
        buf[4..8].copy_from_slice(&receiver_index.to_le_bytes());
        buf[8..16].copy_from_slice(&(1u64 << 40 | i).to_le_bytes());
        s.send_to(&buf[..HEADER_LEN + 64 + TAG_LEN], to)?;
        // Replayed: correctly sealed with a counter the real sender used long ago.
        let mut frame = [0u8; HEADER_LEN + 20 + TAG_LEN];
        frame[HEADER_LEN] = 0x45;
        let n = crypto::seal(&dk, receiver_index, i % 64, &mut frame, 20)?;
        s.send_to(&frame[..n], to)?;
    }
    println!("sent garbage={count} forged={count} replayed={count} to {to}");
    Ok(())
}
