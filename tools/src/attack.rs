//! `shadowmesh bench attack`: what an attacker on the underlay who holds only public data (two
//! nodes' certificates and the network CA's public key) can send at a node, for the namespace
//! test of issue 9 and for rigs:
//! - initiations forged in the victim's peer's name (the attacker's own keys, the peer's
//!   certificate, a timestamp ten years ahead), in both certificate forms;
//! - cookie-reply-shaped datagrams for initiations the attacker cannot see;
//! - a flood of control fragments (random message ids, partial messages) and copies of the
//!   forged initiation, as fast as the socket takes them, up to a rate cap.
//!
//! Every loop is bounded by the deadline and by a datagram count.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use shadowmesh_control::cert::{CaPublic, NodeCert};
use shadowmesh_control::handshake::messages::COOKIE_REPLY_LEN;
use shadowmesh_control::handshake::{Initiator, InitiatorOptions};
use shadowmesh_control::identity::Identity;
use shadowmesh_control::rand::SystemRng;
use shadowmesh_control::transport::{fragment, FrameKey, KIND_HANDSHAKE, MAX_FRAGMENTS};

/// What to attack and how hard (the `shadowmesh bench attack` arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct AttackPlan {
    /// The victim's data port.
    #[arg(long)]
    pub to: SocketAddr,
    /// The victim's certificate (public).
    #[arg(long)]
    pub victim_cert: PathBuf,
    /// The certificate of the peer to impersonate (public).
    #[arg(long = "as")]
    pub as_cert: PathBuf,
    /// The network CA's public key.
    #[arg(long)]
    pub ca: PathBuf,
    /// Seconds to attack.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Flood datagrams per second at most (0: forged messages only).
    #[arg(long, default_value_t = 20_000)]
    pub flood_pps: u64,
}

/// Counts of what was sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct AttackReport {
    /// Forged initiations (whole messages).
    pub forged: u64,
    /// Cookie-reply-shaped datagrams.
    pub cookie_replies: u64,
    /// Flood datagrams.
    pub flood: u64,
}

fn random_u32(rng: &SystemRandom) -> u32 {
    let mut b = [0u8; 4];
    let _ = rng.fill(&mut b);
    u32::from_le_bytes(b)
}

/// Runs the attack until the deadline; `clock` is the CLI's monotonic clock (pacing), the
/// forged initiations carry wall-clock time (certificate validity).
///
/// # Errors
/// Files that do not load, or a socket that cannot be opened.
pub fn run(plan: &AttackPlan, clock: fn() -> Duration) -> anyhow::Result<AttackReport> {
    let victim = NodeCert::load(&plan.victim_cert)
        .with_context(|| format!("victim certificate {}", plan.victim_cert.display()))?;
    let claimed = NodeCert::load(&plan.as_cert)
        .with_context(|| format!("impersonated certificate {}", plan.as_cert.display()))?;
    let ca = CaPublic::load(&plan.ca).with_context(|| format!("CA {}", plan.ca.display()))?;
    // The fragment MAC is keyed by the CA's ID, which the attacker has: its frames pass it.
    let key = FrameKey::for_network(&ca.id());
    let mallory = Identity::generate().context("generating the attacker's keys")?;
    let rng = SystemRandom::new();
    let bind: SocketAddr = if plan.to.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind).context("attacker socket")?;
    sock.set_nonblocking(true)?;
    let start = clock();
    let end = start + Duration::from_secs(plan.secs);
    let mut report = AttackReport::default();
    let mut next_forge = start;
    let mut flood_sent_at = start;
    let mut flood_credit = 0u64;
    // A hard cap besides the deadline.
    let max_datagrams = plan.flood_pps.max(100).saturating_mul(plan.secs.max(1)) * 2 + 10_000;
    let mut sent = 0u64;
    let mut forged_frames: Vec<Vec<u8>> = Vec::new();
    let mut partial: Vec<Vec<u8>> = Vec::new();
    while clock() < end && sent < max_datagrams {
        let now = clock();
        if now >= next_forge {
            next_forge = now + Duration::from_millis(200);
            let wall = crate::keys::unix_now();
            let opts = InitiatorOptions {
                send_cert_hash: report.forged % 2 == 1,
                timestamp: Some(wall + Duration::from_secs(10 * 365 * 86_400)),
                ..InitiatorOptions::default()
            };
            let (_, m1) = Initiator::with_options(
                &mallory,
                &claimed,
                &victim,
                &ca,
                random_u32(&rng),
                wall,
                &mut SystemRng::new(),
                opts,
            )
            .context("building a forged initiation")?;
            forged_frames = fragment(&key, KIND_HANDSHAKE, random_u32(&rng), &m1)?;
            for f in &forged_frames {
                let _ = sock.send_to(f, plan.to);
                sent += 1;
            }
            report.forged += 1;
            let mut reply = vec![0u8; COOKIE_REPLY_LEN];
            let _ = rng.fill(&mut reply);
            reply[..4].copy_from_slice(&[3, 0, 0, 0]);
            for f in fragment(&key, KIND_HANDSHAKE, random_u32(&rng), &reply)? {
                let _ = sock.send_to(&f, plan.to);
                sent += 1;
            }
            report.cookie_replies += 1;
            // A fresh large message each round; all its fragments but the last.
            let mut msg = vec![0u8; (MAX_FRAGMENTS - 1) * 1000];
            let _ = rng.fill(&mut msg);
            let mut frames = fragment(&key, KIND_HANDSHAKE, random_u32(&rng), &msg)?;
            frames.pop();
            partial.extend(frames);
            if partial.len() > 4 * MAX_FRAGMENTS {
                partial.drain(..partial.len() - 4 * MAX_FRAGMENTS);
            }
        }
        if plan.flood_pps == 0 {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        // Token bucket for the flood, refilled from elapsed time.
        let elapsed = now.saturating_sub(flood_sent_at);
        flood_sent_at = now;
        let per_ns = plan.flood_pps as f64 / 1e9;
        flood_credit = (flood_credit + (elapsed.as_nanos() as f64 * per_ns) as u64).min(1000);
        if flood_credit == 0 || partial.is_empty() {
            std::thread::sleep(Duration::from_micros(500));
            continue;
        }
        for _ in 0..flood_credit {
            // Half fragments of large partial messages (never completed: they take
            // reassembly state if accepted), half copies of the forged initiation.
            let i = usize::try_from(sent).unwrap_or(0);
            let frame = if i % 2 == 0 || forged_frames.is_empty() {
                &partial[(i / 2) % partial.len()]
            } else {
                &forged_frames[(i / 2) % forged_frames.len()]
            };
            match sock.send_to(frame, plan.to) {
                Ok(_) => report.flood += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {}
            }
            sent += 1;
        }
        flood_credit = 0;
    }
    Ok(report)
}
