//! `shadowmesh bench impair`: a UDP impairment forwarder for the hostile-network tests. This
//! kernel has no `netem`, so loss, reordering, duplication and delay with jitter come from
//! here: a forwarder in a middle namespace that two nodes use as each other's endpoint.
//!
//! Two parts. [`Impairer`] is the sans-IO core: it is handed each datagram with the time and
//! decides its fate (lost, or queued once or twice with a release time) from a seeded RNG, so a
//! run is reproducible from its seed; it holds the queue and releases datagrams when asked at
//! or after their time. [`run`] is the thin socket loop: one UDP socket per side ("face"),
//! `poll` until a datagram arrives or the next release is due, bounded by a duration.
//!
//! Semantics follow `netem` where it has one:
//! - loss: each datagram is dropped with probability `loss`;
//! - delay and jitter: a kept datagram is released after `delay` ± a uniform `jitter` (drawn
//!   per datagram, so jitter reorders too, as netem's does);
//! - reorder: with probability `reorder` a datagram skips the delay and leaves at once,
//!   overtaking those still queued (netem's `reorder`; it needs a delay to have an effect);
//! - duplication: with probability `dup` a kept datagram gets a second copy with its own
//!   delay and reorder draws.
//!
//! Owns the impairment decisions and the forwarding queue only; it never reads a clock (time is
//! passed in), never parses what it forwards, and its queue is bounded in datagrams and bytes
//! (a full queue drops the newcomer and counts it, like a router's tail drop).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{bail, Context};

/// Probabilities are kept in parts per million: exact, comparable to an integer draw.
const PPM: u64 = 1_000_000;
/// Queue bound in datagrams.
pub const QUEUE_DATAGRAMS: usize = 16_384;
/// Queue bound in bytes.
pub const QUEUE_BYTES: usize = 32 << 20;
/// Largest datagram forwarded (the largest UDP payload).
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams read from one socket per wake-up, so one busy side cannot starve the other.
const RECV_BURST: usize = 256;
/// Longest poll when nothing is queued: the deadline and the stats line are checked this often.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Which way a datagram travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// From node A (arrived on face A) to node B (leaves through face B).
    AtoB = 0,
    /// From node B to node A.
    BtoA = 1,
}

/// The impairment applied to each direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Impairment {
    loss_ppm: u64,
    reorder_ppm: u64,
    dup_ppm: u64,
    delay: Duration,
    jitter: Duration,
}

impl Impairment {
    /// Loss, reorder and duplication in percent (0..=100, fractions allowed); delay and jitter
    /// (jitter at most the delay, so a release time is never before the arrival).
    ///
    /// # Errors
    /// A percentage outside 0..=100 (or not a number), or jitter larger than the delay.
    pub fn new(
        loss_pct: f64,
        reorder_pct: f64,
        dup_pct: f64,
        delay: Duration,
        jitter: Duration,
    ) -> Result<Self, String> {
        let ppm = |what: &str, pct: f64| -> Result<u64, String> {
            if !(0.0..=100.0).contains(&pct) {
                return Err(format!("{what}: {pct} is not a percentage in 0..=100"));
            }
            // In range by the check above: 0..=1e6.
            Ok((pct * 10_000.0).round() as u64)
        };
        if jitter > delay {
            return Err(format!(
                "jitter {jitter:?} exceeds delay {delay:?} (a datagram cannot leave before it came)"
            ));
        }
        Ok(Self {
            loss_ppm: ppm("loss", loss_pct)?,
            reorder_ppm: ppm("reorder", reorder_pct)?,
            dup_ppm: ppm("dup", dup_pct)?,
            delay,
            jitter,
        })
    }

    /// No impairment: every datagram forwarded at once, in order.
    #[must_use]
    pub fn none() -> Self {
        Self {
            loss_ppm: 0,
            reorder_ppm: 0,
            dup_ppm: 0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

/// SplitMix64: tiny, fast, statistically good enough for test impairments, and reproducible
/// from a seed (no dependency needed for that).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `ppm` / 1e6.
    fn chance(&mut self, ppm: u64) -> bool {
        ppm > 0 && self.next_u64() % PPM < ppm
    }

    /// Uniform in 0..=n (n well below 2^64, so the modulo bias is negligible).
    fn upto(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % (n + 1)
        }
    }
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirCounters {
    /// Datagrams offered.
    pub received: u64,
    /// Dropped by the configured loss.
    pub lost: u64,
    /// Extra copies queued by the configured duplication.
    pub duplicated: u64,
    /// Copies that skipped the delay (configured reordering).
    pub reordered: u64,
    /// Dropped because the queue was full (not configured: a bound was hit).
    pub overflow: u64,
    /// Copies released to be sent.
    pub released: u64,
    /// Bytes released to be sent.
    pub released_bytes: u64,
}

/// A datagram due to be sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    /// Its direction.
    pub dir: Dir,
    /// When it was due (the caller may be late; the core never is early).
    pub due: Duration,
    /// Its bytes, unchanged.
    pub payload: Vec<u8>,
}

/// What happened to one offered datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fate {
    /// Dropped by the configured loss.
    pub lost: bool,
    /// Copies queued (0 if lost or the queue was full, 2 if duplicated).
    pub copies: u8,
}

/// A queued copy: (due, arrival sequence, direction, bytes), ordered by due time and then
/// arrival, so ties leave in arrival order.
type Queued = Reverse<(Duration, u64, Dir, Vec<u8>)>;

/// The sans-IO impairment core: decides each datagram's fate and holds the release queue.
#[derive(Debug)]
pub struct Impairer {
    cfg: Impairment,
    rng: Rng,
    queue: BinaryHeap<Queued>,
    seq: u64,
    queued_bytes: usize,
    counters: [DirCounters; 2],
}

impl Impairer {
    /// A core applying `cfg` to both directions, its draws determined by `seed`.
    #[must_use]
    pub fn new(cfg: Impairment, seed: u64) -> Self {
        Self {
            cfg,
            rng: Rng(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            queued_bytes: 0,
            counters: [DirCounters::default(); 2],
        }
    }

    /// Counters of one direction.
    #[must_use]
    pub fn counters(&self, dir: Dir) -> DirCounters {
        self.counters[dir as usize]
    }

    /// Datagrams waiting in the queue.
    #[must_use]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Takes a datagram that arrived at `now` going `dir`: loses it or queues one or two
    /// copies with their release times.
    pub fn offer(&mut self, now: Duration, dir: Dir, datagram: &[u8]) -> Fate {
        let c = &mut self.counters[dir as usize];
        c.received += 1;
        if self.rng.chance(self.cfg.loss_ppm) {
            c.lost += 1;
            return Fate {
                lost: true,
                copies: 0,
            };
        }
        let copies = if self.rng.chance(self.cfg.dup_ppm) {
            2
        } else {
            1
        };
        let mut queued = 0;
        for copy in 0..copies {
            if self.queue.len() >= QUEUE_DATAGRAMS
                || self.queued_bytes + datagram.len() > QUEUE_BYTES
            {
                self.counters[dir as usize].overflow += 1;
                continue;
            }
            let due = if self.rng.chance(self.cfg.reorder_ppm) {
                self.counters[dir as usize].reordered += 1;
                now
            } else {
                let j = self.cfg.jitter.as_micros() as u64;
                // delay - jitter + uniform(0..=2 jitter): never below zero (jitter <= delay).
                let offset = Duration::from_micros(self.rng.upto(2 * j));
                now + self.cfg.delay - self.cfg.jitter + offset
            };
            if copy == 1 {
                self.counters[dir as usize].duplicated += 1;
            }
            self.seq += 1;
            self.queued_bytes += datagram.len();
            self.queue
                .push(Reverse((due, self.seq, dir, datagram.to_vec())));
            queued += 1;
        }
        Fate {
            lost: false,
            copies: queued,
        }
    }

    /// When the next queued datagram is due, if any.
    #[must_use]
    pub fn next_due(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse((due, ..))| *due)
    }

    /// The next datagram due at or before `now`, if any (call until `None`).
    pub fn pop_due(&mut self, now: Duration) -> Option<Released> {
        if self.next_due()? > now {
            return None;
        }
        let Reverse((due, _, dir, payload)) = self.queue.pop()?;
        self.queued_bytes -= payload.len();
        let c = &mut self.counters[dir as usize];
        c.released += 1;
        c.released_bytes += payload.len() as u64;
        Some(Released { dir, due, payload })
    }

    /// One `key=value` line with both directions' counters (`ab_…`, `ba_…`), for logs and
    /// tests (parse with [`crate::netns::field`]).
    #[must_use]
    pub fn stats_line(&self, now: Duration) -> String {
        let mut s = format!("impair t={:.1} queued={}", now.as_secs_f64(), self.queued());
        for (tag, dir) in [("ab", Dir::AtoB), ("ba", Dir::BtoA)] {
            let c = self.counters(dir);
            s.push_str(&format!(
                " {tag}_in={} {tag}_lost={} {tag}_dup={} {tag}_reord={} {tag}_overflow={} {tag}_out={} {tag}_bytes={}",
                c.received, c.lost, c.duplicated, c.reordered, c.overflow, c.released, c.released_bytes
            ));
        }
        s
    }
}

/// The forwarder's command line.
#[derive(clap::Args, Debug, Clone)]
pub struct ImpairArgs {
    /// Node A's real underlay address (where B-to-A datagrams go).
    #[arg(long)]
    pub node_a: SocketAddr,
    /// The address node A sends to (A's configured endpoint for B); bound here.
    #[arg(long)]
    pub face_a: SocketAddr,
    /// Node B's real underlay address.
    #[arg(long)]
    pub node_b: SocketAddr,
    /// The address node B sends to (B's configured endpoint for A); bound here.
    #[arg(long)]
    pub face_b: SocketAddr,
    /// Loss, percent (both directions).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Share of datagrams sent at once, overtaking the delayed ones, percent.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Duplication, percent.
    #[arg(long, default_value_t = 0.0)]
    pub dup: f64,
    /// Delay, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Jitter (uniform ±), milliseconds; at most the delay.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Seed of the impairment draws (the same seed and traffic give the same fates).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub duration: u64,
    /// Print a stats line this often, seconds (0 = only at the end).
    #[arg(long, default_value_t = 1)]
    pub stats_every: u64,
}

/// Runs the forwarder until its duration ends; `clock` is the CLI's clock.
///
/// # Errors
/// Bad impairment values, or a face that cannot be bound.
pub fn run(args: &ImpairArgs, clock: fn() -> Duration) -> anyhow::Result<()> {
    use std::io::Write;

    let cfg = Impairment::new(
        args.loss,
        args.reorder,
        args.dup,
        Duration::from_millis(args.delay_ms),
        Duration::from_millis(args.jitter_ms),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let bind = |a: SocketAddr| -> anyhow::Result<UdpSocket> {
        let s = UdpSocket::bind(a).with_context(|| format!("binding {a}"))?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    let faces = [bind(args.face_a)?, bind(args.face_b)?];
    // What arrives on face i comes from node i and leaves through the other face.
    let nodes = [args.node_a, args.node_b];
    let mut core = Impairer::new(cfg, args.seed);
    let start = clock();
    let end = start + Duration::from_secs(args.duration);
    let every = Duration::from_secs(args.stats_every);
    let mut next_stats = start + every;
    let mut strangers = 0u64;
    let mut send_errors = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut out = std::io::stdout();
    eprintln!(
        "impair: {} <-> {} via {} / {}, {cfg:?}, seed {}",
        args.node_a, args.node_b, args.face_a, args.face_b, args.seed
    );
    loop {
        let now = clock();
        if now >= end {
            break;
        }
        let wait = core
            .next_due()
            .map_or(IDLE_WAIT, |d| d.saturating_sub(now).min(IDLE_WAIT));
        let mut ready = [false; 2];
        let fds = [faces[0].as_fd(), faces[1].as_fd()];
        shadowmesh_platform::seqpacket::poll_readable(&fds, wait, &mut ready)
            .map_err(|e| anyhow::anyhow!("poll: {e}"))?;
        let now = clock();
        for (i, face) in faces.iter().enumerate() {
            if !ready[i] {
                continue;
            }
            for _ in 0..RECV_BURST {
                match face.recv_from(&mut buf) {
                    Ok((n, from)) if from == nodes[i] => {
                        let dir = if i == 0 { Dir::AtoB } else { Dir::BtoA };
                        core.offer(now, dir, buf.get(..n).unwrap_or_default());
                    }
                    // Only the configured node may use its face: anything else is not ours
                    // to forward.
                    Ok(_) => strangers += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // An ICMP error reported on the socket; the next read goes on.
                        send_errors += 1;
                        break;
                    }
                }
            }
        }
        let now = clock();
        while let Some(r) = core.pop_due(now) {
            let (face, to) = match r.dir {
                Dir::AtoB => (&faces[1], nodes[1]),
                Dir::BtoA => (&faces[0], nodes[0]),
            };
            if face.send_to(&r.payload, to).is_err() {
                send_errors += 1;
            }
        }
        if args.stats_every > 0 && now >= next_stats {
            next_stats = now + every;
            let _ = writeln!(
                out,
                "{} strangers={strangers} errors={send_errors}",
                core.stats_line(now.saturating_sub(start))
            );
            let _ = out.flush();
        }
    }
    let now = clock().saturating_sub(start);
    println!(
        "{} strangers={strangers} errors={send_errors} done=1",
        core.stats_line(now)
    );
    if core.counters(Dir::AtoB).received + core.counters(Dir::BtoA).received == 0 {
        bail!("no datagram arrived in {} s", args.duration);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn issue_cfg() -> Impairment {
        Impairment::new(10.0, 25.0, 5.0, 50 * MS, 20 * MS).unwrap()
    }

    /// Offers `n` datagrams (payload = sequence number) one per millisecond going `dir`, then
    /// drains the queue; returns the releases in order.
    fn stream(core: &mut Impairer, n: u64, dir: Dir) -> Vec<Released> {
        let mut out = Vec::new();
        for i in 0..n {
            let now = ms(i);
            core.offer(now, dir, &i.to_le_bytes());
            while let Some(r) = core.pop_due(now) {
                out.push(r);
            }
        }
        while let Some(r) = core.pop_due(Duration::from_secs(u64::MAX / 4)) {
            out.push(r);
        }
        out
    }

    fn seq(r: &Released) -> u64 {
        u64::from_le_bytes(r.payload.as_slice().try_into().unwrap())
    }

    #[test]
    fn rates_hold_statistically_for_several_seeds() {
        // 200,000 datagrams: the standard deviation of a 10 % share is 0.07 points, so the
        // bounds below are > 5 sigma wide, and a wrong rate (say 9 % or 11 %) fails them.
        let n = 200_000u64;
        for seed in [1, 2, 0xdead_beef] {
            let mut core = Impairer::new(issue_cfg(), seed);
            let _ = stream(&mut core, n, Dir::AtoB);
            let c = core.counters(Dir::AtoB);
            let share = |x: u64, of: u64| x as f64 / of as f64 * 100.0;
            let kept = c.received - c.lost;
            assert_eq!(c.received, n);
            assert!((share(c.lost, n) - 10.0).abs() < 0.4, "{c:?}");
            assert!((share(c.duplicated, kept) - 5.0).abs() < 0.3, "{c:?}");
            // Reordering is drawn per copy.
            assert!(
                (share(c.reordered, kept + c.duplicated) - 25.0).abs() < 0.6,
                "{c:?}"
            );
            assert_eq!(c.overflow, 0);
        }
    }

    #[test]
    fn a_seed_reproduces_its_run_and_another_seed_differs() {
        let run = |seed| {
            let mut core = Impairer::new(issue_cfg(), seed);
            stream(&mut core, 5_000, Dir::BtoA)
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn a_delayed_datagram_is_released_at_its_time_never_before() {
        let cfg = Impairment::new(0.0, 0.0, 0.0, 50 * MS, Duration::ZERO).unwrap();
        let mut core = Impairer::new(cfg, 1);
        let t0 = Duration::from_secs(3);
        core.offer(t0, Dir::AtoB, b"x");
        assert_eq!(core.next_due(), Some(t0 + 50 * MS));
        assert_eq!(core.pop_due(t0 + 50 * MS - Duration::from_micros(1)), None);
        let r = core.pop_due(t0 + 50 * MS).unwrap();
        assert_eq!(
            (r.dir, r.due, r.payload.as_slice()),
            (Dir::AtoB, t0 + 50 * MS, &b"x"[..])
        );
        assert_eq!(core.pop_due(t0 + Duration::from_secs(9)), None);
        // A late caller still gets it, with the time it was due.
        core.offer(t0, Dir::BtoA, b"y");
        assert_eq!(core.pop_due(t0 + 80 * MS).unwrap().due, t0 + 50 * MS);
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_centres_on_the_delay() {
        let cfg = Impairment::new(0.0, 0.0, 0.0, 50 * MS, 20 * MS).unwrap();
        let mut core = Impairer::new(cfg, 3);
        let n = 10_000u64;
        let (mut lo, mut hi, mut sum) = (Duration::MAX, Duration::ZERO, Duration::ZERO);
        for i in 0..n {
            core.offer(ms(i), Dir::AtoB, &i.to_le_bytes());
        }
        while let Some(r) = core.pop_due(Duration::from_secs(3600)) {
            let d = r.due - ms(seq(&r));
            lo = lo.min(d);
            hi = hi.max(d);
            sum += d;
        }
        assert!(lo >= 30 * MS && hi <= 70 * MS, "{lo:?}..{hi:?}");
        // Uniform: the extremes are reached (to within a millisecond) and the mean is central.
        assert!(lo < 31 * MS && hi > 69 * MS, "{lo:?}..{hi:?}");
        let mean = sum / n as u32;
        assert!(mean > 49 * MS && mean < 51 * MS, "{mean:?}");
    }

    #[test]
    fn without_loss_every_datagram_arrives_exactly_once_and_intact() {
        // Reordering and jitter but no loss or duplication: a permutation of the input.
        let cfg = Impairment::new(0.0, 25.0, 0.0, 50 * MS, 20 * MS).unwrap();
        let mut core = Impairer::new(cfg, 11);
        let out = stream(&mut core, 10_000, Dir::AtoB);
        let mut got: Vec<u64> = out.iter().map(seq).collect();
        let in_order = got.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(in_order < got.len() - 1, "nothing was reordered");
        got.sort_unstable();
        assert_eq!(got, (0..10_000).collect::<Vec<_>>());
        assert_eq!(core.queued(), 0);
    }

    #[test]
    fn only_the_configured_loss_is_lost_and_duplicates_are_extra_copies() {
        let mut core = Impairer::new(issue_cfg(), 5);
        let n = 20_000u64;
        let out = stream(&mut core, n, Dir::AtoB);
        let c = core.counters(Dir::AtoB);
        let mut copies = vec![0u32; n as usize];
        for r in &out {
            copies[seq(r) as usize] += 1;
        }
        let missing = copies.iter().filter(|&&k| k == 0).count() as u64;
        let doubled = copies.iter().filter(|&&k| k == 2).count() as u64;
        assert!(copies.iter().all(|&k| k <= 2));
        assert_eq!(missing, c.lost, "lost beyond the configured loss");
        assert_eq!(doubled, c.duplicated);
        assert_eq!(out.len() as u64, n - c.lost + c.duplicated);
        assert_eq!(c.released, out.len() as u64);
    }

    #[test]
    fn reordered_datagrams_overtake_delayed_ones_and_no_reorder_keeps_order() {
        let cfg = Impairment::new(0.0, 25.0, 0.0, 50 * MS, Duration::ZERO).unwrap();
        let mut core = Impairer::new(cfg, 9);
        let out = stream(&mut core, 2_000, Dir::AtoB);
        // A datagram sent at once arrives before those sent in the 50 ms before it.
        let overtakes = out.windows(2).filter(|w| seq(&w[0]) > seq(&w[1])).count();
        assert!(overtakes > 100, "{overtakes}");
        let ordered = Impairment::new(0.0, 0.0, 0.0, 50 * MS, Duration::ZERO).unwrap();
        let mut core = Impairer::new(ordered, 9);
        let out = stream(&mut core, 2_000, Dir::AtoB);
        assert!(out.windows(2).all(|w| seq(&w[0]) < seq(&w[1])));
    }

    #[test]
    fn directions_are_counted_apart() {
        let mut core = Impairer::new(Impairment::none(), 1);
        core.offer(MS, Dir::AtoB, b"ab");
        core.offer(MS, Dir::BtoA, b"ba!");
        let a = core.pop_due(MS).unwrap();
        let b = core.pop_due(MS).unwrap();
        assert_eq!((a.dir, b.dir), (Dir::AtoB, Dir::BtoA));
        assert_eq!(core.counters(Dir::AtoB).released_bytes, 2);
        assert_eq!(core.counters(Dir::BtoA).released_bytes, 3);
        let line = core.stats_line(MS);
        assert_eq!(crate::netns::field(&line, "ba_bytes"), Some("3"));
    }

    #[test]
    fn the_queue_is_bounded_and_overflow_is_counted() {
        let cfg = Impairment::new(0.0, 0.0, 0.0, Duration::from_secs(10), Duration::ZERO).unwrap();
        let mut core = Impairer::new(cfg, 1);
        let big = vec![0u8; 4096];
        let n = QUEUE_BYTES / big.len() + 10;
        for _ in 0..n {
            core.offer(Duration::ZERO, Dir::AtoB, &big);
        }
        let c = core.counters(Dir::AtoB);
        assert_eq!(core.queued(), QUEUE_BYTES / big.len());
        assert_eq!(c.overflow, 10);
        // The byte bound is full: even one byte more is refused.
        assert_eq!(core.offer(Duration::ZERO, Dir::BtoA, b"s").copies, 0);
        let mut core = Impairer::new(cfg, 1);
        for _ in 0..QUEUE_DATAGRAMS + 5 {
            core.offer(Duration::ZERO, Dir::BtoA, b"s");
        }
        assert_eq!(core.queued(), QUEUE_DATAGRAMS);
        assert_eq!(core.counters(Dir::BtoA).overflow, 5);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Impairment::new(101.0, 0.0, 0.0, MS, MS).is_err());
        assert!(Impairment::new(-1.0, 0.0, 0.0, MS, MS).is_err());
        assert!(Impairment::new(f64::NAN, 0.0, 0.0, MS, MS).is_err());
        assert!(Impairment::new(0.0, 0.0, 0.0, MS, 2 * MS).is_err());
        let all = Impairment::new(100.0, 0.0, 0.0, MS, MS).unwrap();
        let mut core = Impairer::new(all, 1);
        assert!(core.offer(MS, Dir::AtoB, b"z").lost);
        assert_eq!(core.queued(), 0);
    }
}
