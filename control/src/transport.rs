//! The control transport: frames control messages (handshake, cookie, later DHT and NAT) into
//! datagrams whose first byte is 5, fragments them to ≤ 1200 bytes, reassembles them with
//! bounded memory, and schedules handshake retransmissions with exponential backoff.
//!
//! Frame (little-endian, 8-byte header):
//! `type u8 = 5 | kind u8 | msg_id u32 | frag_index u8 | frag_count u8 | payload (1..=1192)`.
//!
//! Owns reassembly state and retransmission timers. It never reads a clock (time is passed
//! in), never lets reassembly memory exceed its configured caps (oldest partial message evicted
//! first) and never panics on a datagram: malformed input is a counted drop.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

/// First byte of every control datagram (the dataplane hands these to the control plane).
pub const CONTROL_TYPE: u8 = 5;
/// Frame header length.
pub const HEADER_LEN: usize = 8;
/// Largest datagram we emit.
pub const MAX_DATAGRAM: usize = 1200;
/// Largest fragment payload.
pub const MAX_FRAGMENT_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN;
/// Largest control message.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most fragments of one message.
pub const MAX_FRAGMENTS: usize = MAX_MESSAGE_LEN.div_ceil(MAX_FRAGMENT_PAYLOAD);
/// Bytes charged per partial message on top of its payload (bookkeeping estimate), so that a
/// flood of one-byte fragments cannot hold unbounded entries.
pub const ENTRY_OVERHEAD: usize = 128;

/// Message kind: handshake messages (M1, M2, cookie reply).
pub const KIND_HANDSHAKE: u8 = 1;
/// Message kind: DHT.
pub const KIND_DHT: u8 = 2;
/// Message kind: NAT traversal.
pub const KIND_NAT: u8 = 3;

/// Why a control datagram was dropped or a message could not be framed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TransportError {
    /// First byte is not 5.
    #[error("not a control datagram: expected first byte 5")]
    NotControl,
    /// A header field is out of range.
    #[error("malformed control frame: expected {0}")]
    Malformed(&'static str),
    /// The message is larger than [`MAX_MESSAGE_LEN`].
    #[error("control message of {0} bytes exceeds {MAX_MESSAGE_LEN}")]
    TooLarge(usize),
    /// A fragment disagrees with earlier fragments of the same message (fragment count).
    #[error("fragment count disagrees with earlier fragments of the message")]
    Inconsistent,
    /// The fragment was dropped to keep reassembly memory within its caps.
    #[error("fragment dropped: reassembly memory limit")]
    OverLimit,
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message kind.
    pub kind: u8,
    /// Sender-chosen message id (unique per sender for the reassembly timeout).
    pub msg_id: u32,
    /// This fragment's index.
    pub frag_index: u8,
    /// Number of fragments.
    pub frag_count: u8,
}

impl FrameHeader {
    /// Parses and range-checks a frame, returning the header and the payload.
    ///
    /// # Errors
    /// [`TransportError::NotControl`] / [`TransportError::Malformed`].
    pub fn parse(d: &[u8]) -> Result<(Self, &[u8]), TransportError> {
        if d.first() != Some(&CONTROL_TYPE) {
            return Err(TransportError::NotControl);
        }
        let (h, payload) = d
            .split_at_checked(HEADER_LEN)
            .ok_or(TransportError::Malformed("an 8-byte header"))?;
        let hdr = Self {
            kind: h[1],
            msg_id: u32::from_le_bytes([h[2], h[3], h[4], h[5]]),
            frag_index: h[6],
            frag_count: h[7],
        };
        if hdr.frag_count == 0 || usize::from(hdr.frag_count) > MAX_FRAGMENTS {
            return Err(TransportError::Malformed("fragment count 1..=55"));
        }
        if hdr.frag_index >= hdr.frag_count {
            return Err(TransportError::Malformed("fragment index below the count"));
        }
        if payload.is_empty() || payload.len() > MAX_FRAGMENT_PAYLOAD {
            return Err(TransportError::Malformed("payload of 1..=1192 bytes"));
        }
        Ok((hdr, payload))
    }
}

/// Splits `msg` into control datagrams of at most [`MAX_DATAGRAM`] bytes.
///
/// # Errors
/// [`TransportError::TooLarge`] above [`MAX_MESSAGE_LEN`]; `Malformed` for an empty message.
pub fn fragment(kind: u8, msg_id: u32, msg: &[u8]) -> Result<Vec<Vec<u8>>, TransportError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(TransportError::TooLarge(msg.len()));
    }
    if msg.is_empty() {
        return Err(TransportError::Malformed("a non-empty message"));
    }
    let chunks: Vec<&[u8]> = msg.chunks(MAX_FRAGMENT_PAYLOAD).collect();
    let count = u8::try_from(chunks.len()).map_err(|_| TransportError::TooLarge(msg.len()))?;
    Ok(chunks
        .iter()
        .zip(0u8..)
        .map(|(c, i)| {
            let mut d = Vec::with_capacity(HEADER_LEN + c.len());
            d.push(CONTROL_TYPE);
            d.push(kind);
            d.extend_from_slice(&msg_id.to_le_bytes());
            d.push(i);
            d.push(count);
            d.extend_from_slice(c);
            d
        })
        .collect())
}

/// A reassembled control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub src: SocketAddr,
    /// Message kind.
    pub kind: u8,
    /// Message id.
    pub msg_id: u32,
    /// The message bytes.
    pub payload: Vec<u8>,
}

/// Caps on reassembly state.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyLimits {
    /// Bytes of partial messages held per source address.
    pub per_source_bytes: usize,
    /// Partial messages held per source address.
    pub per_source_entries: usize,
    /// Bytes of partial messages held in total.
    pub total_bytes: usize,
    /// Partial messages held in total.
    pub total_entries: usize,
    /// A partial message older than this is dropped.
    pub timeout: Duration,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            per_source_bytes: 2 * (MAX_MESSAGE_LEN + ENTRY_OVERHEAD),
            per_source_entries: 8,
            total_bytes: 8 * 1024 * 1024,
            total_entries: 4096,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Drop counters (read by metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Malformed frames.
    pub malformed: u64,
    /// Fragments whose count disagreed with their message.
    pub inconsistent: u64,
    /// Duplicate fragments ignored.
    pub duplicates: u64,
    /// Partial messages evicted to respect a cap.
    pub evicted: u64,
    /// Partial messages dropped by timeout.
    pub timed_out: u64,
    /// Messages completed.
    pub completed: u64,
}

type Key = (SocketAddr, u8, u32);

struct Entry {
    frags: Vec<Option<Vec<u8>>>,
    received: usize,
    charged: usize,
    started: Duration,
    seq: u64,
}

#[derive(Default)]
struct SourceUse {
    bytes: usize,
    entries: Vec<(u64, Key)>,
}

/// Bounded reassembly of fragmented control messages from many sources.
pub struct Reassembler {
    limits: ReassemblyLimits,
    entries: HashMap<Key, Entry>,
    order: BTreeMap<u64, Key>,
    sources: HashMap<SocketAddr, SourceUse>,
    total_bytes: usize,
    next_seq: u64,
    stats: ReassemblyStats,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("entries", &self.entries.len())
            .field("bytes", &self.total_bytes)
            .finish_non_exhaustive()
    }
}

impl Reassembler {
    /// An empty reassembler with these caps.
    #[must_use]
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            sources: HashMap::new(),
            total_bytes: 0,
            next_seq: 0,
            stats: ReassemblyStats::default(),
        }
    }

    /// Bytes charged for partial messages now held.
    #[must_use]
    pub fn memory_used(&self) -> usize {
        self.total_bytes
    }

    /// Partial messages now held.
    #[must_use]
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Drop counters.
    #[must_use]
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&e.seq);
            self.total_bytes -= e.charged;
            if let Some(s) = self.sources.get_mut(&key.0) {
                s.bytes -= e.charged;
                s.entries.retain(|(seq, _)| *seq != e.seq);
                if s.entries.is_empty() {
                    self.sources.remove(&key.0);
                }
            }
        }
    }

    /// Earliest time at which a partial message times out.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.order
            .values()
            .next()
            .and_then(|k| self.entries.get(k))
            .map(|e| e.started + self.limits.timeout)
    }

    /// Drops partial messages that timed out by `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        // Entries are created in time order when `now` is monotonic, so the front is oldest.
        while let Some((_, key)) = self.order.first_key_value().map(|(s, k)| (*s, *k)) {
            match self.entries.get(&key) {
                Some(e) if e.started + self.limits.timeout <= now => {
                    self.remove(&key);
                    self.stats.timed_out += 1;
                }
                _ => break,
            }
        }
    }

    /// Takes one control datagram from `src`; returns a message when it completes one.
    ///
    /// # Errors
    /// A counted drop: malformed, inconsistent or over-limit fragment.
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        now: Duration,
    ) -> Result<Option<Message>, TransportError> {
        self.handle_timeout(now);
        let (h, payload) = FrameHeader::parse(datagram).inspect_err(|_| {
            self.stats.malformed += 1;
        })?;
        if h.frag_count == 1 {
            self.stats.completed += 1;
            return Ok(Some(Message {
                src,
                kind: h.kind,
                msg_id: h.msg_id,
                payload: payload.to_vec(),
            }));
        }
        let key = (src, h.kind, h.msg_id);
        let idx = usize::from(h.frag_index);
        let mut charge = payload.len();
        match self.entries.get(&key) {
            Some(e) if e.frags.len() != usize::from(h.frag_count) => {
                self.remove(&key);
                self.stats.inconsistent += 1;
                return Err(TransportError::Inconsistent);
            }
            Some(e) if e.frags.get(idx).is_some_and(Option::is_some) => {
                self.stats.duplicates += 1;
                return Ok(None);
            }
            Some(_) => {}
            None => charge += ENTRY_OVERHEAD,
        }
        if !self.make_room(&key, charge) {
            self.stats.evicted += 1;
            return Err(TransportError::OverLimit);
        }
        if !self.entries.contains_key(&key) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.entries.insert(
                key,
                Entry {
                    frags: vec![None; usize::from(h.frag_count)],
                    received: 0,
                    charged: 0,
                    started: now,
                    seq,
                },
            );
            self.order.insert(seq, key);
            self.sources
                .entry(src)
                .or_default()
                .entries
                .push((seq, key));
        }
        let done = {
            let Some(e) = self.entries.get_mut(&key) else {
                return Err(TransportError::OverLimit);
            };
            if let Some(slot) = e.frags.get_mut(idx) {
                *slot = Some(payload.to_vec());
            }
            e.received += 1;
            e.charged += charge;
            e.received == e.frags.len()
        };
        self.total_bytes += charge;
        self.sources.entry(src).or_default().bytes += charge;
        if !done {
            return Ok(None);
        }
        let payload = self
            .entries
            .get(&key)
            .map(|e| e.frags.iter().flatten().flatten().copied().collect())
            .unwrap_or_default();
        self.remove(&key);
        self.stats.completed += 1;
        Ok(Some(Message {
            src,
            kind: h.kind,
            msg_id: h.msg_id,
            payload,
        }))
    }

    /// Evicts oldest partial messages until `charge` more bytes (and possibly a new entry for
    /// `key`) fit every cap. False if `key`'s own entry had to go or it can never fit.
    fn make_room(&mut self, key: &Key, charge: usize) -> bool {
        let l = self.limits;
        let is_new = !self.entries.contains_key(key);
        if charge > l.per_source_bytes || charge > l.total_bytes {
            return false;
        }
        loop {
            let s = self.sources.get(&key.0);
            let (sb, se) = s.map_or((0, 0), |s| (s.bytes, s.entries.len()));
            let over_source =
                sb + charge > l.per_source_bytes || (is_new && se + 1 > l.per_source_entries);
            let over_total = self.total_bytes + charge > l.total_bytes
                || (is_new && self.entries.len() + 1 > l.total_entries);
            let victim = if over_source {
                s.and_then(|s| {
                    s.entries
                        .iter()
                        .min_by_key(|(seq, _)| *seq)
                        .map(|(_, k)| *k)
                })
            } else if over_total {
                self.order.values().next().copied()
            } else {
                return true;
            };
            let Some(victim) = victim else {
                return false;
            };
            self.remove(&victim);
            if victim == *key {
                return false;
            }
            self.stats.evicted += 1;
        }
    }
}

/// Retransmission schedule settings.
#[derive(Debug, Clone, Copy)]
pub struct RetransmitConfig {
    /// First retry interval.
    pub initial: Duration,
    /// Interval cap.
    pub max_interval: Duration,
    /// Retries before giving up.
    pub max_retries: u32,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max_interval: Duration::from_secs(16),
            max_retries: 6,
        }
    }
}

/// What a timer expiry asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum RetransmitEvent<K> {
    /// Send a fresh initiation for `key` (a new M1: the old timestamp would now be a replay if
    /// the first reached the responder). `attempt` counts from 1.
    Retransmit {
        /// The handshake.
        key: K,
        /// Retry number.
        attempt: u32,
    },
    /// Stop trying.
    GiveUp {
        /// The handshake.
        key: K,
    },
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    deadline: Duration,
    interval: Duration,
    attempt: u32,
}

/// Exponential-backoff timers for handshake initiations (sans-IO: `poll_timeout`,
/// `handle_timeout`).
#[derive(Debug)]
pub struct Retransmitter<K> {
    config: RetransmitConfig,
    timers: HashMap<K, Timer>,
}

impl<K: Copy + Eq + Hash> Retransmitter<K> {
    /// An empty schedule.
    #[must_use]
    pub fn new(config: RetransmitConfig) -> Self {
        Self {
            config,
            timers: HashMap::new(),
        }
    }

    /// Arms the timer for `key`: the initiation was just sent at `now`.
    pub fn start(&mut self, key: K, now: Duration) {
        self.timers.insert(
            key,
            Timer {
                deadline: now + self.config.initial,
                interval: self.config.initial,
                attempt: 0,
            },
        );
    }

    /// The handshake completed (or was abandoned): stop its timer. True if one was armed.
    pub fn cancel(&mut self, key: K) -> bool {
        self.timers.remove(&key).is_some()
    }

    /// The earliest deadline, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.values().map(|t| t.deadline).min()
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<RetransmitEvent<K>> {
        let mut out = Vec::new();
        let max = self.config.max_interval;
        let retries = self.config.max_retries;
        self.timers.retain(|&key, t| {
            if t.deadline > now {
                return true;
            }
            if t.attempt >= retries {
                out.push(RetransmitEvent::GiveUp { key });
                return false;
            }
            t.attempt += 1;
            t.interval = (t.interval * 2).min(max);
            t.deadline = now + t.interval;
            out.push(RetransmitEvent::Retransmit {
                key,
                attempt: t.attempt,
            });
            true
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, (i % 250) as u8 + 1], 1000 + i))
    }

    #[test]
    fn fragment_and_reassemble_out_of_order() {
        let msg: Vec<u8> = (0..12_345u32).map(|i| (i * 7) as u8).collect();
        let mut frags = fragment(KIND_HANDSHAKE, 9, &msg).unwrap();
        assert_eq!(frags.len(), 11);
        assert!(frags
            .iter()
            .all(|f| f.len() <= MAX_DATAGRAM && f[0] == CONTROL_TYPE));
        frags.reverse();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut got = None;
        for f in &frags {
            if let Some(m) = r.handle_datagram(addr(1), f, Duration::ZERO).unwrap() {
                got = Some(m);
            }
        }
        let m = got.unwrap();
        assert_eq!((m.kind, m.msg_id, m.payload), (KIND_HANDSHAKE, 9, msg));
        assert_eq!((r.entries(), r.memory_used()), (0, 0));
    }

    #[test]
    fn bad_frames_are_counted_drops() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let cases: [&[u8]; 5] = [
            &[],
            &[4, 1, 0, 0, 0, 0, 0, 1, 9],
            &[5, 1, 0, 0, 0, 0, 0, 0, 9],
            &[5, 1, 0, 0, 0, 0, 2, 2, 9],
            &[5, 1, 0, 0, 0, 0, 0, 1],
        ];
        for c in cases {
            assert!(r.handle_datagram(addr(1), c, Duration::ZERO).is_err());
        }
        assert_eq!(r.stats().malformed, 5);
        // Inconsistent count.
        r.handle_datagram(addr(1), &[5, 1, 1, 0, 0, 0, 0, 3, 9], Duration::ZERO)
            .unwrap();
        assert_eq!(
            r.handle_datagram(addr(1), &[5, 1, 1, 0, 0, 0, 1, 4, 9], Duration::ZERO),
            Err(TransportError::Inconsistent)
        );
        assert_eq!(r.entries(), 0);
        assert!(fragment(1, 1, &vec![0; MAX_MESSAGE_LEN + 1]).is_err());
    }

    #[test]
    fn partial_messages_time_out() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let f = fragment(KIND_DHT, 1, &[7u8; 3000]).unwrap();
        r.handle_datagram(addr(1), &f[0], Duration::from_secs(10))
            .unwrap();
        assert_eq!(r.poll_timeout(), Some(Duration::from_secs(15)));
        r.handle_timeout(Duration::from_secs(14));
        assert_eq!(r.entries(), 1);
        r.handle_timeout(Duration::from_secs(15));
        assert_eq!(
            (r.entries(), r.memory_used(), r.stats().timed_out),
            (0, 0, 1)
        );
    }

    #[test]
    fn backoff_doubles_caps_and_gives_up() {
        let mut t = Retransmitter::new(RetransmitConfig {
            initial: Duration::from_secs(1),
            max_interval: Duration::from_secs(4),
            max_retries: 4,
        });
        t.start(7u32, Duration::ZERO);
        let mut now = Duration::ZERO;
        let mut gaps = Vec::new();
        let mut gave_up = false;
        for _ in 0..10 {
            let Some(next) = t.poll_timeout() else { break };
            gaps.push((next - now).as_secs());
            now = next;
            for ev in t.handle_timeout(now) {
                if ev == (RetransmitEvent::GiveUp { key: 7 }) {
                    gave_up = true;
                }
            }
        }
        assert_eq!(gaps, vec![1, 2, 4, 4, 4]);
        assert!(gave_up);
        t.start(8, now);
        assert!(t.cancel(8));
        assert_eq!(t.poll_timeout(), None);
    }

    proptest! {
        /// A flood of random fragments from many sources never takes reassembly memory or
        /// entries above the caps, per source or in total.
        #[test]
        fn reassembly_memory_stays_bounded(
            frames in proptest::collection::vec(
                (0u16..300, 0u8..4, 0u32..64, 0u8..60, 1u8..60, 1usize..1300),
                1..600,
            )
        ) {
            let limits = ReassemblyLimits {
                per_source_bytes: 20_000,
                per_source_entries: 4,
                total_bytes: 200_000,
                total_entries: 64,
                timeout: Duration::from_secs(5),
            };
            let mut r = Reassembler::new(limits);
            for (k, (src, kind, id, idx, count, len)) in frames.into_iter().enumerate() {
                let mut d = vec![CONTROL_TYPE, kind];
                d.extend_from_slice(&id.to_le_bytes());
                d.extend_from_slice(&[idx, count]);
                d.resize(HEADER_LEN + len, 0xab);
                let _ = r.handle_datagram(addr(src), &d, Duration::from_millis(k as u64));
                prop_assert!(r.memory_used() <= limits.total_bytes);
                prop_assert!(r.entries() <= limits.total_entries);
                for s in r.sources.values() {
                    prop_assert!(s.bytes <= limits.per_source_bytes);
                    prop_assert!(s.entries.len() <= limits.per_source_entries);
                }
                // Accounting matches a naive recount.
                let naive: usize = r.entries.values().map(|e| e.charged).sum();
                prop_assert_eq!(naive, r.memory_used());
            }
        }

        /// Any message survives fragmentation and reassembly in any fragment order.
        #[test]
        fn fragments_reassemble_in_any_order(
            msg in proptest::collection::vec(any::<u8>(), 1..20_000),
            seed in any::<u64>(),
        ) {
            let mut frags = fragment(KIND_NAT, 3, &msg).unwrap();
            let n = frags.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                frags.swap(i, j);
            }
            let mut r = Reassembler::new(ReassemblyLimits::default());
            let mut out = None;
            for f in &frags {
                if let Some(m) = r.handle_datagram(addr(2), f, Duration::ZERO).unwrap() {
                    prop_assert!(out.is_none());
                    out = Some(m.payload);
                }
            }
            prop_assert_eq!(out, Some(msg));
        }
    }
}
