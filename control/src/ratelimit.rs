//! Per-source token buckets for handshake initiations, in the manner of WireGuard's
//! `ratelimiter`: applied under load to initiations whose source address is proven (valid
//! cookie), so that one real address cannot make us do unbounded KEM work.
//!
//! Owns a bounded table of buckets keyed by the source's IPv4 address or IPv6 /64 (one host
//! usually owns a whole /64). Never reads a clock (time is passed in) and never grows past its
//! capacity: when full, idle buckets (which are full anyway) are forgotten first; if every
//! bucket is still busy, a new source is refused until one goes idle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Initiations per second a proven source may sustain under load (WireGuard: 20).
pub const DEFAULT_RATE: u32 = 20;
/// Initiations a proven source may send in a burst under load (WireGuard: 5).
pub const DEFAULT_BURST: u32 = 5;
/// Most sources tracked at once (WireGuard: 8192 per table).
pub const DEFAULT_CAPACITY: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl Key {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Key::V4(a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Key::V4(v4.octets()),
                None => {
                    let mut k = [0u8; 8];
                    k.copy_from_slice(&a.octets()[..8]);
                    Key::V6(k)
                }
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens in nanoseconds of credit (one initiation costs `1 s / rate`).
    credit: u64,
    last: Duration,
}

/// Counters of a [`RateLimiter`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitStats {
    /// Initiations let through.
    pub allowed: u64,
    /// Initiations refused because their source was over its rate.
    pub limited: u64,
    /// Initiations refused because the table was full of busy sources.
    pub table_full: u64,
}

/// A bounded table of per-source token buckets.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: HashMap<Key, Bucket>,
    cost: u64,
    max_credit: u64,
    capacity: usize,
    stats: RateLimitStats,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(DEFAULT_RATE, DEFAULT_BURST, DEFAULT_CAPACITY)
    }
}

impl RateLimiter {
    /// `rate` initiations per second with bursts of `burst`, for at most `capacity` sources.
    /// Zero arguments are raised to one.
    #[must_use]
    pub fn new(rate: u32, burst: u32, capacity: usize) -> Self {
        let cost = 1_000_000_000 / u64::from(rate.max(1));
        Self {
            buckets: HashMap::new(),
            cost,
            max_credit: cost * u64::from(burst.max(1)),
            capacity: capacity.max(1),
            stats: RateLimitStats::default(),
        }
    }

    /// Whether one more initiation from `src` may proceed at `now` (monotonic time).
    pub fn allow(&mut self, src: IpAddr, now: Duration) -> bool {
        let key = Key::of(src);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.capacity {
            self.forget_idle(now);
            if self.buckets.len() >= self.capacity {
                self.stats.table_full += 1;
                return false;
            }
        }
        let (cost, max) = (self.cost, self.max_credit);
        let b = self.buckets.entry(key).or_insert(Bucket {
            credit: max,
            last: now,
        });
        let elapsed = u64::try_from(now.saturating_sub(b.last).as_nanos()).unwrap_or(u64::MAX);
        b.credit = b.credit.saturating_add(elapsed).min(max);
        b.last = now;
        if b.credit >= cost {
            b.credit -= cost;
            self.stats.allowed += 1;
            true
        } else {
            self.stats.limited += 1;
            false
        }
    }

    /// Drops buckets that have refilled completely: they hold no information.
    fn forget_idle(&mut self, now: Duration) {
        let max = self.max_credit;
        self.buckets.retain(|_, b| {
            let elapsed = u64::try_from(now.saturating_sub(b.last).as_nanos()).unwrap_or(u64::MAX);
            b.credit.saturating_add(elapsed) < max
        });
    }

    /// Sources tracked now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no source is tracked.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> RateLimitStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_rate() {
        let mut r = RateLimiter::new(20, 5, 16);
        let t = Duration::from_secs(100);
        let a = ip("198.51.100.9");
        assert_eq!((0..10).filter(|_| r.allow(a, t)).count(), 5);
        // 50 ms later: one more token (1/20 s).
        assert!(r.allow(a, t + Duration::from_millis(50)));
        assert!(!r.allow(a, t + Duration::from_millis(50)));
        // Over one simulated second at 1000 attempts/s, about 20 get through.
        let ok = (1..=1000)
            .filter(|i| r.allow(a, t + Duration::from_millis(50 + i)))
            .count();
        assert!((19..=21).contains(&ok), "{ok}");
        // Another source is not affected.
        assert!(r.allow(ip("203.0.113.5"), t + Duration::from_millis(60)));
    }

    #[test]
    fn ipv6_sources_share_their_64() {
        let mut r = RateLimiter::new(1, 1, 16);
        let t = Duration::from_secs(1);
        assert!(r.allow(ip("2001:db8:1:2::1"), t));
        assert!(!r.allow(ip("2001:db8:1:2::ffff"), t));
        assert!(r.allow(ip("2001:db8:1:3::1"), t));
        // An IPv4-mapped address counts as its IPv4 address.
        assert!(r.allow(ip("198.51.100.1"), t));
        assert!(!r.allow(ip("::ffff:198.51.100.1"), t));
    }

    #[test]
    fn table_stays_bounded_and_idle_sources_make_room() {
        let mut r = RateLimiter::new(20, 5, 64);
        let t = Duration::from_secs(10);
        for i in 0..10_000u32 {
            #[allow(clippy::cast_possible_truncation)]
            // Distinct /64s inside the documentation prefix 2001:db8::/32.
            let a = IpAddr::from(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0, i as u16, 0, 0, 0, 1,
            ));
            let _ = r.allow(a, t);
            assert!(r.len() <= 64);
        }
        // After all buckets refilled, a new source finds room.
        assert!(r.allow(ip("203.0.113.200"), t + Duration::from_secs(1)));
        assert!(r.len() <= 64);
        // A busy full table refuses new sources rather than growing.
        let mut r = RateLimiter::new(20, 5, 2);
        assert!(r.allow(ip("198.51.100.1"), t));
        assert!(r.allow(ip("198.51.100.2"), t));
        assert!(!r.allow(ip("198.51.100.3"), t));
        assert_eq!(r.stats().table_full, 1);
    }
}
