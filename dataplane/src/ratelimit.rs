//! Token buckets for control datagrams (type byte 5) before they are copied and queued up to
//! the control plane: one bucket per source address in a bounded table, and one global bucket
//! per worker.
//!
//! Owns: the bucket arithmetic (integer nanoseconds of credit, as WireGuard's ratelimiter),
//! the source table (fixed size, set-associative, least recently seen evicted), and the
//! default rates with their reasons ([`ControlLimits::DEFAULT`]).
//!
//! Must never: read a clock (the caller passes `now`, a `Duration` since its monotonic
//! epoch), allocate after construction, or grow with the number of sources an attacker can
//! spoof. Eviction only ever hands an evicted source a fresh, full bucket (lenient to it),
//! and the global bucket bounds what any number of sources can push up together.

use core::hash::BuildHasher;
use core::time::Duration;
use std::net::IpAddr;

/// A token bucket's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Datagrams let through at once from a full bucket.
    pub burst: u32,
    /// Datagrams per second in the long run.
    pub per_second: u32,
}

/// The limits a worker applies to control datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlLimits {
    /// Per source address (IPv4 address, IPv6 /64).
    pub per_source: Rate,
    /// All sources together, per worker.
    pub global: Rate,
    /// Sources tracked at once (rounded up to a multiple of [`WAYS`]).
    pub sources: usize,
}

impl ControlLimits {
    /// Per source: burst 64, 200 datagrams/s. A first contact is ~14 fragments of at most
    /// 1200 B each way, and a retransmission of a whole message doubles that, so 64 lets two
    /// nodes' complete first contacts with retransmissions (or a few nodes behind one NAT
    /// address starting at once) through without a wait; 200/s sustains ~14 first contacts
    /// per second from one address, far above what honest peers do (one rekey per peer per
    /// 120 s), while a line-rate flood from one source (10^5–10^6 datagrams/s) is cut by three
    /// to four orders of magnitude before it costs a copy or a queue slot.
    ///
    /// Global: burst 512, 4000 datagrams/s per worker: ~285 first contacts per second per
    /// worker, with room for DHT and NAT traffic, and at most ~4.8 MB/s of control datagrams
    /// per worker for the control plane to check; a flood from many (spoofed) sources, which
    /// per-source buckets cannot stop, is bounded by this.
    ///
    /// 4096 sources: 160 KiB per worker; a table this size holds every peer of a large mesh,
    /// and sources beyond it only cost each other fresh buckets, which the global cap bounds.
    pub const DEFAULT: Self = Self {
        per_source: Rate {
            burst: 64,
            per_second: 200,
        },
        global: Rate {
            burst: 512,
            per_second: 4000,
        },
        sources: 4096,
    };
}

impl Default for ControlLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Entries per set of the source table: a source may sit in any of the `WAYS` entries of the
/// set its hash picks, so a few colliding sources do not evict each other.
pub const WAYS: usize = 4;

const NANOS: u64 = 1_000_000_000;

/// A token bucket holding credit in nanoseconds: each datagram costs `1 s / per_second`, the
/// bucket holds at most `burst` datagrams' worth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    credit: u64,
    last: u64,
}

impl Bucket {
    /// A full bucket at `now`.
    pub fn full(rate: Rate, now: u64) -> Self {
        Self {
            credit: capacity(rate),
            last: now,
        }
    }

    /// Refills for the time since the last call and takes one datagram's cost if there is
    /// enough credit. A clock that went backwards adds nothing.
    #[inline]
    pub fn take(&mut self, rate: Rate, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        self.credit = self.credit.saturating_add(elapsed).min(capacity(rate));
        let c = cost(rate);
        if self.credit >= c {
            self.credit -= c;
            true
        } else {
            false
        }
    }
}

#[inline]
fn cost(rate: Rate) -> u64 {
    NANOS / u64::from(rate.per_second.max(1))
}

#[inline]
fn capacity(rate: Rate) -> u64 {
    cost(rate).saturating_mul(u64::from(rate.burst))
}

/// What [`ControlLimiter::check`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Its source is over its rate.
    SourceLimited,
    /// The worker's total is over its rate.
    GlobalLimited,
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    used: bool,
    key: u128,
    bucket: Bucket,
}

/// Per-source and global token buckets for one worker.
///
/// The hasher `S` picks a source's set: give it a per-process random key (`RandomState`) so a
/// remote party cannot aim many sources at one set to evict a chosen one.
#[derive(Debug)]
pub struct ControlLimiter<S> {
    limits: ControlLimits,
    table: Box<[Entry]>,
    sets: usize,
    hasher: S,
    global: Bucket,
    global_started: bool,
}

impl<S: BuildHasher> ControlLimiter<S> {
    /// A limiter with `limits`; the table is allocated here, once.
    pub fn new(limits: ControlLimits, hasher: S) -> Self {
        let sets = limits.sources.div_ceil(WAYS).max(1);
        Self {
            limits,
            table: vec![Entry::default(); sets * WAYS].into_boxed_slice(),
            sets,
            hasher,
            global: Bucket::default(),
            global_started: false,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> ControlLimits {
        self.limits
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.table.iter().filter(|e| e.used).count()
    }

    /// Decides for one datagram from `src` at `now`. The source's bucket is charged first, so
    /// a source over its own rate does not use up the global budget of the others.
    #[inline]
    pub fn check(&mut self, src: IpAddr, now: Duration) -> Verdict {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let key = source_key(src);
        let per_source = self.limits.per_source;
        let entry = self.entry(key, now);
        if !entry.bucket.take(per_source, now) {
            return Verdict::SourceLimited;
        }
        if !self.global_started {
            self.global = Bucket::full(self.limits.global, now);
            self.global_started = true;
        }
        if !self.global.take(self.limits.global, now) {
            return Verdict::GlobalLimited;
        }
        Verdict::Allow
    }

    /// The entry of `key`: found in its set, else a free one, else the least recently seen
    /// one of the set (evicted), started with a full bucket.
    fn entry(&mut self, key: u128, now: u64) -> &mut Entry {
        let set = (self.hasher.hash_one(key) as usize) % self.sets;
        let base = set * WAYS;
        let ways = &mut self.table[base..base + WAYS];
        let mut pick = 0;
        let mut found = false;
        for (i, e) in ways.iter().enumerate() {
            if e.used && e.key == key {
                pick = i;
                found = true;
                break;
            }
            if !e.used {
                if ways[pick].used {
                    pick = i;
                }
            } else if ways[pick].used && e.bucket.last < ways[pick].bucket.last {
                pick = i;
            }
        }
        let e = &mut ways[pick];
        if !found {
            *e = Entry {
                used: true,
                key,
                bucket: Bucket::full(self.limits.per_source, now),
            };
        }
        e
    }
}

/// The table key of a source: an IPv4 address (as its mapped IPv6 form), or an IPv6 /64
/// (one host usually holds a whole /64, so per-address buckets would be free to multiply).
fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(a) & !((1u128 << 64) - 1),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasherDefault;
    use std::net::{Ipv4Addr, Ipv6Addr};

    type Fixed = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

    fn limiter(limits: ControlLimits) -> ControlLimiter<Fixed> {
        ControlLimiter::new(limits, Fixed::default())
    }

    /// Source `n`: a distinct /64 of 2001:db8::/32 for each `n`.
    fn src(n: u32) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            (n >> 16) as u16,
            n as u16,
            0,
            0,
            0,
            1,
        ))
    }

    const T: Duration = Duration::from_secs(1000);

    #[test]
    fn burst_then_rate_per_source() {
        let mut l = limiter(ControlLimits::DEFAULT);
        let a = src(1);
        let allowed = (0..1000)
            .filter(|_| l.check(a, T) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 64, "a full bucket lets exactly the burst through");
        assert_eq!(l.check(a, T), Verdict::SourceLimited);
        // 5 ms is one datagram's worth at 200/s.
        assert_eq!(l.check(a, T + Duration::from_millis(5)), Verdict::Allow);
        assert_eq!(
            l.check(a, T + Duration::from_millis(5)),
            Verdict::SourceLimited
        );
        // Another source is not affected.
        assert_eq!(l.check(src(2), T), Verdict::Allow);
        // Over 10 s one source gets the burst back but not more: at most 64 at once.
        let later = T + Duration::from_secs(10);
        let allowed = (0..1000)
            .filter(|_| l.check(a, later) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 64);
    }

    #[test]
    fn sustained_rate_is_the_configured_one() {
        let mut l = limiter(ControlLimits::DEFAULT);
        let a = src(1);
        // 10 s of a flood at 10 datagrams per millisecond.
        let mut allowed = 0;
        for ms in 0..10_000u64 {
            for _ in 0..10 {
                if l.check(a, T + Duration::from_millis(ms)) == Verdict::Allow {
                    allowed += 1;
                }
            }
        }
        // Burst plus 200/s for ~10 s.
        assert!((64 + 1990..=64 + 2000).contains(&allowed), "{allowed}");
    }

    #[test]
    fn global_cap_bounds_many_sources() {
        let mut l = limiter(ControlLimits::DEFAULT);
        let allowed = (0..4000u32)
            .filter(|&n| l.check(src(n), T) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 512);
        assert_eq!(l.check(src(9999), T), Verdict::GlobalLimited);
    }

    #[test]
    fn ipv6_sources_share_a_slash_64() {
        let mut l = limiter(ControlLimits::DEFAULT);
        let mut allowed = 0;
        for host in 0..200u16 {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, host));
            if l.check(ip, T) == Verdict::Allow {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 64);
        let other = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert_eq!(l.check(other, T), Verdict::Allow);
        // A v4-mapped v6 source counts as the v4 address.
        let mut l = limiter(ControlLimits::DEFAULT);
        let a = Ipv4Addr::new(198, 51, 100, 7);
        for _ in 0..64 {
            assert_eq!(l.check(IpAddr::V4(a), T), Verdict::Allow);
        }
        assert_eq!(
            l.check(IpAddr::V6(a.to_ipv6_mapped()), T),
            Verdict::SourceLimited
        );
    }

    #[test]
    fn table_stays_bounded_and_evicts_the_least_recently_seen() {
        let limits = ControlLimits {
            sources: 8,
            global: Rate {
                burst: u32::MAX / 2,
                per_second: 1_000_000,
            },
            ..ControlLimits::DEFAULT
        };
        let mut l = limiter(limits);
        for n in 0..10_000u32 {
            let _ = l.check(src(n), T + Duration::from_nanos(u64::from(n)));
        }
        assert_eq!(l.tracked(), 8, "no more sources than the table holds");
        // An evicted source comes back with a full bucket (lenient), never an empty one.
        let a = src(1);
        for _ in 0..64 {
            let _ = l.check(a, T + Duration::from_secs(1));
        }
        assert_eq!(
            l.check(a, T + Duration::from_secs(1)),
            Verdict::SourceLimited
        );
        for n in 100..200u32 {
            let _ = l.check(src(n), T + Duration::from_secs(2));
        }
        assert_eq!(l.check(a, T + Duration::from_secs(2)), Verdict::Allow);
    }

    #[test]
    fn clock_going_backwards_adds_no_credit() {
        let mut b = Bucket::full(ControlLimits::DEFAULT.per_source, 10 * NANOS);
        let rate = ControlLimits::DEFAULT.per_source;
        for _ in 0..64 {
            assert!(b.take(rate, 10 * NANOS));
        }
        assert!(!b.take(rate, 5 * NANOS));
        assert!(!b.take(rate, 10 * NANOS));
    }
}
