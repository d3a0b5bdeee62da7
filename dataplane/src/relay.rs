//! Relaying: forwarding other peers' data messages, unread, by a mapping the control plane
//! installs.
//!
//! A relay route says: a data message that arrives from `from` carrying receiver index
//! `index` goes, byte for byte, to `to`. The receiver index is the destination peer's own
//! (it chose it in the handshake), and the relay holds no key of the session: it cannot read,
//! forge or replay-check what it forwards, and the endpoints need no relay header (no MTU
//! lost, no change to their send path: a relayed peer's endpoint is simply the relay's
//! address). Keying by the source address as well as the index means a stranger who knows
//! an index still cannot use the route, short of spoofing the registered source address; and
//! then the destination drops what it cannot authenticate, at a cost bounded by the route's
//! rate limit.
//!
//! Each route carries one [`SharedRate`], shared by every worker (one flow hashes to one
//! worker, but a peer's several flows may not), so a peer gets its configured rate, not
//! rate × workers. The limiter is one atomic compare-and-swap per datagram on a line only
//! that route's traffic touches: no lock.
//!
//! Must never: allocate per packet, panic, or forward a datagram without a route.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How much burst a rate limit allows: this long at the full rate.
pub const BURST: Duration = Duration::from_millis(50);
/// Least burst in bytes, so that a slow route still passes a GSO batch of full datagrams.
pub const MIN_BURST_BYTES: u64 = 128 * 1024;

/// A byte-rate limit shared by the workers: GCRA (a token bucket kept as one "theoretical
/// arrival time"), so taking credit is one compare-and-swap.
#[derive(Debug)]
#[repr(align(64))]
pub struct SharedRate {
    /// Nanoseconds of link time one byte costs (0: unlimited).
    ns_per_kib: u64,
    /// How far the theoretical arrival time may run ahead of now.
    tolerance_ns: u64,
    /// Theoretical arrival time, in nanoseconds on the workers' clock.
    tat: AtomicU64,
}

impl SharedRate {
    /// A limit of `bytes_per_sec` (0: unlimited).
    #[must_use]
    pub fn new(bytes_per_sec: u64) -> Self {
        if bytes_per_sec == 0 {
            return Self {
                ns_per_kib: 0,
                tolerance_ns: 0,
                tat: AtomicU64::new(0),
            };
        }
        // Per KiB so that rates above 1 GB/s keep a non-zero cost.
        let ns_per_kib = (1_024_000_000_000u64 / bytes_per_sec).max(1);
        let burst_bytes =
            (bytes_per_sec.saturating_mul(BURST.as_millis() as u64) / 1000).max(MIN_BURST_BYTES);
        Self {
            ns_per_kib,
            tolerance_ns: burst_bytes.saturating_mul(ns_per_kib) / 1024,
            tat: AtomicU64::new(0),
        }
    }

    /// Takes credit for `bytes` at `now`; false when over the limit (nothing is taken then).
    pub fn take(&self, bytes: usize, now: Duration) -> bool {
        if self.ns_per_kib == 0 {
            return true;
        }
        let now = now.as_nanos() as u64;
        let cost = (bytes as u64).saturating_mul(self.ns_per_kib) / 1024;
        let mut tat = self.tat.load(Ordering::Relaxed);
        // Bounded: a lost race means another worker took credit; after a few, refuse (the
        // sender retransmits) rather than spin.
        for _ in 0..8 {
            let start = tat.max(now);
            let next = start.saturating_add(cost);
            if next.saturating_sub(now) > self.tolerance_ns.saturating_add(cost) {
                return false;
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
        false
    }
}

/// Where a relayed datagram goes, and its limit.
#[derive(Debug, Clone)]
pub struct RelayRoute {
    /// Destination address.
    pub to: SocketAddr,
    /// The route's rate limit, shared by all workers.
    pub rate: Arc<SharedRate>,
}

impl RelayRoute {
    /// A route to `to` limited to `bytes_per_sec` (0: unlimited).
    #[must_use]
    pub fn new(to: SocketAddr, bytes_per_sec: u64) -> Self {
        Self {
            to,
            rate: Arc::new(SharedRate::new(bytes_per_sec)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn unlimited_takes_everything() {
        let r = SharedRate::new(0);
        for i in 0..10_000u32 {
            assert!(r.take(65_535, MS * i));
        }
    }

    #[test]
    fn the_long_run_rate_holds_and_the_burst_is_bounded() {
        // 1 MB/s, offered 1400-byte datagrams every 0.1 ms (14 MB/s) for 2 s.
        let rate = 1_000_000u64;
        let r = SharedRate::new(rate);
        let mut passed = 0u64;
        for i in 0..20_000u64 {
            if r.take(1400, Duration::from_micros(100 * i)) {
                passed += 1400;
            }
        }
        // 2 s at 1 MB/s plus at most one burst (128 KiB floor here).
        assert!(passed >= 2 * rate - 2 * 1400, "{passed}");
        assert!(passed <= 2 * rate + MIN_BURST_BYTES + 1400, "{passed}");
        // At once from idle: the burst, not more.
        let r = SharedRate::new(rate);
        let t = Duration::from_secs(10);
        let mut burst = 0u64;
        for _ in 0..1000 {
            if r.take(1400, t) {
                burst += 1400;
            }
        }
        assert!(
            (MIN_BURST_BYTES - 1400..=MIN_BURST_BYTES + 1400).contains(&burst),
            "{burst}"
        );
    }

    #[test]
    fn a_refused_take_costs_nothing() {
        let r = SharedRate::new(100_000);
        let t = Duration::from_secs(1);
        while r.take(1000, t) {}
        let tat = r.tat.load(Ordering::Relaxed);
        for _ in 0..100 {
            assert!(!r.take(1000, t));
        }
        assert_eq!(r.tat.load(Ordering::Relaxed), tat);
        // Credit returns with time: 10 ms at 100 kB/s is 1000 bytes.
        assert!(r.take(1000, t + Duration::from_millis(11)));
    }

    #[test]
    fn workers_share_one_limit() {
        let r = Arc::new(SharedRate::new(1_000_000));
        let passed = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let r = &r;
                let passed = &passed;
                s.spawn(move || {
                    for i in 0..5_000u64 {
                        // All four offer at the same virtual times: 4 × 14 MB/s for 0.5 s.
                        if r.take(1400, Duration::from_micros(100 * i)) {
                            passed.fetch_add(1400, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let p = passed.load(Ordering::Relaxed);
        // Half a second at 1 MB/s plus one burst, whatever the interleaving.
        assert!(p <= 500_000 + MIN_BURST_BYTES + 4 * 1400, "{p}");
        assert!(p >= 400_000, "{p}");
    }
}
