//! The hold queue: first packets to a destination a worker cannot send to yet, kept until the
//! control plane has looked the destination up and finished a handshake, so that a first ping
//! loses nothing (WireGuard stages up to 128 packets per peer the same way).
//!
//! Owns: one worker's held TUN reads, copied into a byte ring allocated once at start
//! ([`HOLD_BYTES`]), at most [`HOLD_PACKETS`] of them, oldest first out, each for at most
//! [`HOLD_TIME`]; and [`NoRouteAsks`], the bounded table that rate-limits the "no session" asks
//! for destinations no route covers.
//!
//! What is held: a TUN read (virtio-net header included, so a TSO super-packet is kept whole and
//! split as usual when it is sent) whose destination has no route inside the overlay
//! ([`in_overlay`]: 100.64.0.0/10, fd00::/8), or routes to a peer with no sending session or no
//! endpoint yet. A destination outside the overlay with no route is dropped at once: no lookup
//! could ever find it. Held bytes are copies: the receive buffers (io_uring's provided-buffer
//! ring, the poll backend's frames) go back at once, so holding never starves the receive path.
//!
//! Must never: allocate after [`HoldQueue::new`], hold more than its bounds, reorder the packets
//! of one destination, or keep a packet past [`HOLD_TIME`] (expired packets are counted drops).

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Duration;

/// Most packets one worker holds (the oldest is dropped, counted, to make room).
pub const HOLD_PACKETS: usize = 64;
/// Bytes of held packets one worker keeps, allocated once at start.
pub const HOLD_BYTES: usize = 256 * 1024;
/// Largest TUN read that is held: half the ring, so a 64 KiB TSO super-packet fits with room
/// for others; a larger one is dropped with its original cause.
pub const HOLD_MAX_PACKET: usize = HOLD_BYTES / 2;
/// How long a packet is held before it is dropped (counted as expired): a DHT lookup and a
/// handshake take well under this, and a sender that waited longer has retransmitted anyway.
pub const HOLD_TIME: Duration = Duration::from_secs(3);
/// Entries of the table that rate-limits "no session" asks for unrouted destinations.
pub const NO_ROUTE_SLOTS: usize = 256;
/// At most one ask per unrouted destination per this interval.
pub const NO_ROUTE_ASK_INTERVAL: Duration = Duration::from_secs(1);
/// At most this many asks for unrouted destinations per worker per second, whatever the
/// destinations (a scan of the overlay must not flood the control plane).
pub const NO_ROUTE_ASKS_PER_SEC: u32 = 64;

/// Whether `ip` lies in the overlay (100.64.0.0/10 or fd00::/8): only there can a lookup find
/// the peer that owns an address.
pub fn in_overlay(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 100 && (o[1] & 0xc0) == 64
        }
        IpAddr::V6(v6) => v6.octets()[0] == 0xfd,
    }
}

/// One held packet: where its bytes lie in the ring.
#[derive(Clone, Copy, Debug)]
struct Held {
    start: usize,
    len: usize,
    /// When it was held (engine clock).
    at: Duration,
    /// Its inner destination.
    dst: IpAddr,
    /// False once sent: its bytes are reclaimed when the ring's head passes them.
    live: bool,
}

/// Why a packet was not held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotHeld {
    /// Larger than [`HOLD_MAX_PACKET`].
    TooLarge,
}

/// One worker's held packets, oldest first.
#[derive(Debug)]
pub struct HoldQueue {
    mem: Box<[u8]>,
    entries: VecDeque<Held>,
    live: usize,
    live_bytes: usize,
}

impl Default for HoldQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl HoldQueue {
    /// An empty queue with all its storage allocated.
    pub fn new() -> Self {
        Self {
            mem: vec![0u8; HOLD_BYTES].into_boxed_slice(),
            entries: VecDeque::with_capacity(HOLD_PACKETS),
            live: 0,
            live_bytes: 0,
        }
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes of the packets held.
    pub fn bytes(&self) -> usize {
        self.live_bytes
    }

    /// Slots to walk with [`HoldQueue::dst`] (held and already sent ones), oldest first.
    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    /// The destination of the packet held in slot `i`, if it is still held.
    pub fn dst(&self, i: usize) -> Option<IpAddr> {
        self.entries.get(i).filter(|e| e.live).map(|e| e.dst)
    }

    /// The bytes of the packet held in slot `i`, if it is still held.
    pub fn packet(&self, i: usize) -> Option<&[u8]> {
        let e = self.entries.get(i).filter(|e| e.live)?;
        self.mem.get(e.start..e.start + e.len)
    }

    /// Forgets the packet in slot `i` (it was sent). Slots keep their numbers until
    /// [`HoldQueue::compact`].
    pub fn take(&mut self, i: usize) {
        if let Some(e) = self.entries.get_mut(i) {
            if e.live {
                e.live = false;
                self.live -= 1;
                self.live_bytes -= e.len;
            }
        }
    }

    /// Drops the slots of sent packets from both ends (their bytes become free).
    pub fn compact(&mut self) {
        while self.entries.front().is_some_and(|e| !e.live) {
            self.entries.pop_front();
        }
        while self.entries.back().is_some_and(|e| !e.live) {
            self.entries.pop_back();
        }
    }

    /// Holds a copy of `packet` (to `dst`, read at `now`). Returns how many older packets were
    /// dropped to make room (overflow: oldest first).
    pub fn push(&mut self, packet: &[u8], dst: IpAddr, now: Duration) -> Result<usize, NotHeld> {
        let len = packet.len();
        if len > HOLD_MAX_PACKET || len == 0 {
            return Err(NotHeld::TooLarge);
        }
        let mut evicted = 0;
        // Each round removes a slot or places the packet: bounded by the slot count.
        let start = loop {
            self.compact();
            if self.entries.len() >= HOLD_PACKETS {
                if self.live < self.entries.len() {
                    // Sent packets in the middle still take slots: reclaim them.
                    self.entries.retain(|e| e.live);
                } else {
                    evicted += usize::from(self.pop_oldest());
                }
                continue;
            }
            match self.place(len) {
                Some(at) => break at,
                None => evicted += usize::from(self.pop_oldest()),
            }
        };
        let Some(slot) = self.mem.get_mut(start..start + len) else {
            // `place` only returns ranges inside the ring.
            return Err(NotHeld::TooLarge);
        };
        slot.copy_from_slice(packet);
        self.entries.push_back(Held {
            start,
            len,
            at: now,
            dst,
            live: true,
        });
        self.live += 1;
        self.live_bytes += len;
        Ok(evicted)
    }

    /// Drops what has been held for [`HOLD_TIME`] or longer; returns how many packets.
    pub fn expire(&mut self, now: Duration) -> usize {
        let mut expired = 0;
        // Oldest first: stop at the first one still young.
        while let Some(e) = self.entries.front() {
            if e.live && now.saturating_sub(e.at) < HOLD_TIME {
                break;
            }
            expired += usize::from(self.pop_oldest());
        }
        self.compact();
        expired
    }

    /// Removes the oldest slot; returns whether it still held a packet.
    fn pop_oldest(&mut self) -> bool {
        match self.entries.pop_front() {
            Some(e) if e.live => {
                self.live -= 1;
                self.live_bytes -= e.len;
                true
            }
            _ => false,
        }
    }

    /// Where `len` contiguous bytes fit after the newest slot without touching the oldest.
    fn place(&self, len: usize) -> Option<usize> {
        let (Some(front), Some(back)) = (self.entries.front(), self.entries.back()) else {
            return (len <= self.mem.len()).then_some(0);
        };
        let head = front.start;
        let tail = back.start + back.len;
        if tail > head {
            // In use: [head, tail). Free: [tail, end) and [0, head).
            if self.mem.len() - tail >= len {
                Some(tail)
            } else if head >= len {
                Some(0)
            } else {
                None
            }
        } else if head - tail >= len {
            // Wrapped: in use [head, end) and [0, tail). Free: [tail, head).
            Some(tail)
        } else {
            None
        }
    }
}

/// Rate limit of the "no session" asks for destinations no route covers: per destination once
/// per [`NO_ROUTE_ASK_INTERVAL`] in a direct-mapped table of [`NO_ROUTE_SLOTS`] (randomly keyed,
/// so no one can aim destinations at one slot; a collision only asks again early), and at most
/// [`NO_ROUTE_ASKS_PER_SEC`] in all.
#[derive(Debug)]
pub struct NoRouteAsks {
    slots: Box<[Option<(IpAddr, Duration)>]>,
    hasher: RandomState,
    window: Duration,
    in_window: u32,
}

impl Default for NoRouteAsks {
    fn default() -> Self {
        Self::new()
    }
}

impl NoRouteAsks {
    /// An empty table (allocated once).
    pub fn new() -> Self {
        Self {
            slots: vec![None; NO_ROUTE_SLOTS].into_boxed_slice(),
            hasher: RandomState::new(),
            window: Duration::ZERO,
            in_window: 0,
        }
    }

    /// Whether to ask about `dst` now (and if so, remembers that it was asked).
    pub fn due(&mut self, dst: IpAddr, now: Duration) -> bool {
        let i = (self.hasher.hash_one(dst) as usize) % NO_ROUTE_SLOTS;
        let Some(slot) = self.slots.get_mut(i) else {
            return false;
        };
        if let Some((ip, at)) = *slot {
            if ip == dst && now.saturating_sub(at) < NO_ROUTE_ASK_INTERVAL {
                return false;
            }
        }
        if now.saturating_sub(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.in_window = 0;
        }
        if self.in_window >= NO_ROUTE_ASKS_PER_SEC {
            return false;
        }
        self.in_window += 1;
        *slot = Some((dst, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(100);

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([100, 64, 0, n])
    }

    #[test]
    fn overlay_ranges() {
        assert!(in_overlay("100.64.0.1".parse().unwrap()));
        assert!(in_overlay("100.127.255.255".parse().unwrap()));
        assert!(!in_overlay("100.128.0.1".parse().unwrap()));
        assert!(!in_overlay("100.63.255.255".parse().unwrap()));
        assert!(!in_overlay("198.51.100.1".parse().unwrap()));
        assert!(in_overlay("fd00::1".parse().unwrap()));
        assert!(in_overlay("fdff::1".parse().unwrap()));
        assert!(!in_overlay("fc00::1".parse().unwrap()));
        assert!(!in_overlay("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn keeps_bytes_and_order() {
        let mut q = HoldQueue::new();
        for n in 0..10u8 {
            assert_eq!(q.push(&[n; 100], ip(n), T), Ok(0));
        }
        assert_eq!((q.len(), q.bytes()), (10, 1000));
        for i in 0..q.slots() {
            assert_eq!(q.packet(i), Some(&[i as u8; 100][..]));
            assert_eq!(q.dst(i), Some(ip(i as u8)));
        }
    }

    #[test]
    fn count_bound_drops_the_oldest() {
        let mut q = HoldQueue::new();
        let mut evicted = 0;
        for n in 0..200u32 {
            evicted += q.push(&n.to_le_bytes(), ip(1), T).unwrap();
        }
        assert_eq!(q.len(), HOLD_PACKETS);
        assert_eq!(evicted, 200 - HOLD_PACKETS);
        // The newest are kept, in order.
        let first = u32::from_le_bytes(q.packet(0).unwrap().try_into().unwrap());
        assert_eq!(first, (200 - HOLD_PACKETS) as u32);
    }

    #[test]
    fn byte_bound_drops_the_oldest_and_wraps() {
        let mut q = HoldQueue::new();
        let mut evicted = 0;
        // 60 KiB packets: four fit in 256 KiB; the ring wraps many times.
        for n in 0..50u8 {
            evicted += q.push(&vec![n; 60 * 1024], ip(n), T).unwrap();
            assert!(q.bytes() <= HOLD_BYTES);
            let newest = q.packet(q.slots() - 1).unwrap();
            assert!(newest.iter().all(|b| *b == n), "copied intact");
        }
        assert_eq!(q.len(), 4);
        assert_eq!(evicted, 46);
        for i in 0..q.slots() {
            assert!(q.packet(i).unwrap().iter().all(|b| *b == 46 + i as u8));
        }
        assert_eq!(
            q.push(&vec![0; HOLD_MAX_PACKET + 1], ip(1), T),
            Err(NotHeld::TooLarge)
        );
    }

    #[test]
    fn sent_slots_in_the_middle_are_reclaimed() {
        let mut q = HoldQueue::new();
        // A packet to a destination not yet reachable, many that are sent, another unsent.
        q.push(&[1; 64], ip(1), T).unwrap();
        for _ in 0..HOLD_PACKETS - 2 {
            q.push(&[2; 64], ip(2), T).unwrap();
        }
        q.push(&[3; 64], ip(3), T).unwrap();
        for i in 1..q.slots() - 1 {
            q.take(i);
        }
        q.compact();
        assert_eq!(q.slots(), HOLD_PACKETS);
        // A new one takes a reclaimed slot: nothing unsent is dropped.
        assert_eq!(q.push(&[4; 64], ip(4), T), Ok(0));
        assert_eq!(q.len(), 3);
        let kept: Vec<u8> = (0..q.slots())
            .filter_map(|i| q.packet(i))
            .map(|p| p[0])
            .collect();
        assert_eq!(kept, vec![1, 3, 4]);
    }

    #[test]
    fn expires_after_the_hold_time() {
        let mut q = HoldQueue::new();
        q.push(&[1; 10], ip(1), T).unwrap();
        q.push(&[2; 10], ip(2), T + Duration::from_secs(1)).unwrap();
        assert_eq!(q.expire(T + HOLD_TIME - Duration::from_millis(1)), 0);
        assert_eq!(q.expire(T + HOLD_TIME), 1);
        assert_eq!(q.dst(0), Some(ip(2)));
        assert_eq!(q.expire(T + HOLD_TIME + Duration::from_secs(1)), 1);
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn asks_once_per_destination_per_interval_and_capped() {
        let mut a = NoRouteAsks::new();
        assert!(a.due(ip(1), T));
        assert!(!a.due(ip(1), T + Duration::from_millis(999)));
        assert!(a.due(ip(1), T + NO_ROUTE_ASK_INTERVAL));
        // A scan of many destinations within one second is capped.
        let t = T + Duration::from_secs(10);
        let asked = (0..=255u8)
            .flat_map(|x| (0..4u8).map(move |y| IpAddr::from([100, 64, x, y])))
            .filter(|d| a.due(*d, t))
            .count();
        assert_eq!(asked, NO_ROUTE_ASKS_PER_SEC as usize);
    }
}
