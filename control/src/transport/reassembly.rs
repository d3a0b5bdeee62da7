//! Bounded reassembly of fragmented control messages from many sources, with the receiver's
//! half of fragment repair: selective ACKs and a bounded memory of recently completed messages.
//!
//! Owns partial messages, ACK timers and completed-message records. It checks each datagram's
//! MAC before it stores anything, never lets memory exceed its caps (oldest evicted first),
//! delivers a message at most once while its record is remembered, never sends an ACK anywhere
//! but to the source of the fragments it acknowledges, and never sends a source more than 3×
//! the bytes it received from it for one message. It never reads a clock and never panics on a
//! datagram: malformed input is a counted drop.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::fragment::{parse, Ack, Frame, FrameKey};
use super::{Transmit, TransportError, AMPLIFICATION, ENTRY_OVERHEAD, MAX_MESSAGE_LEN};

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

/// Caps and timers of reassembly.
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
    /// A partial message that gained no fragment for this long is dropped.
    pub timeout: Duration,
    /// Delay from a fragment's arrival to the ACK of a partial message (lets a burst land).
    pub ack_delay: Duration,
    /// While a partial message keeps a gap, its ACK is repeated at this interval.
    pub ack_repeat: Duration,
    /// Most ACKs of one partial message (the completion ACK and re-ACKs not counted).
    pub max_gap_acks: u8,
    /// Completed messages remembered per source (duplicates are re-ACKed, not delivered).
    pub done_per_source: usize,
    /// Completed messages remembered in total.
    pub done_total: usize,
    /// How long a completed message is remembered (longer than a sender repairs it).
    pub done_lifetime: Duration,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            per_source_bytes: 2 * (MAX_MESSAGE_LEN + ENTRY_OVERHEAD),
            per_source_entries: 8,
            total_bytes: 8 * 1024 * 1024,
            total_entries: 4096,
            timeout: Duration::from_secs(5),
            ack_delay: Duration::from_millis(30),
            ack_repeat: Duration::from_millis(250),
            max_gap_acks: 16,
            done_per_source: 16,
            done_total: 4096,
            done_lifetime: Duration::from_secs(30),
        }
    }
}

/// Drop and event counters (read by metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Datagrams whose MAC did not verify (dropped before any state was taken).
    pub bad_mac: u64,
    /// Malformed frames.
    pub malformed: u64,
    /// Fragments whose count disagreed with their message.
    pub inconsistent: u64,
    /// Duplicate fragments of a partial message ignored.
    pub duplicates: u64,
    /// Fragments of an already delivered message (re-ACKed, not delivered again).
    pub late_duplicates: u64,
    /// Partial messages evicted to respect a cap.
    pub evicted: u64,
    /// Partial messages dropped by timeout.
    pub timed_out: u64,
    /// Messages completed (each delivered once).
    pub completed: u64,
    /// ACK frames sent.
    pub acks_sent: u64,
    /// ACKs not sent because they would exceed 3× the bytes received for the message.
    pub acks_limited: u64,
}

/// What one datagram produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Stored (or a duplicate): nothing to hand up.
    Nothing,
    /// A message completed.
    Message(Message),
    /// A verified ACK frame, for the sender's repair state.
    Ack(Ack),
}

type Key = (SocketAddr, u8, u32);

struct Entry {
    frags: Vec<Option<Vec<u8>>>,
    held: u64,
    received: usize,
    charged: usize,
    rx_bytes: usize,
    ack_bytes: usize,
    gap_acks: u8,
    deadline: Duration,
    ack_due: Option<Duration>,
    seq: u64,
}

#[derive(Default)]
struct SourceUse {
    bytes: usize,
    entries: Vec<(u64, Key)>,
}

struct Done {
    count: u8,
    expires: Duration,
    seq: u64,
}

/// Bounded reassembly of fragmented control messages from many sources.
pub struct Reassembler {
    key: FrameKey,
    limits: ReassemblyLimits,
    entries: HashMap<Key, Entry>,
    by_age: BTreeMap<u64, Key>,
    expiry: BTreeSet<(Duration, u64)>,
    ack_at: BTreeSet<(Duration, u64)>,
    sources: HashMap<SocketAddr, SourceUse>,
    total_bytes: usize,
    done: HashMap<Key, Done>,
    done_fifo: VecDeque<(u64, Key)>,
    done_src: HashMap<SocketAddr, VecDeque<(u64, Key)>>,
    next_seq: u64,
    stats: ReassemblyStats,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("entries", &self.entries.len())
            .field("bytes", &self.total_bytes)
            .field("done", &self.done.len())
            .finish_non_exhaustive()
    }
}

impl Reassembler {
    /// An empty reassembler for the network of `key` with these caps.
    #[must_use]
    pub fn new(key: FrameKey, limits: ReassemblyLimits) -> Self {
        Self {
            key,
            limits,
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
            expiry: BTreeSet::new(),
            ack_at: BTreeSet::new(),
            sources: HashMap::new(),
            total_bytes: 0,
            done: HashMap::new(),
            done_fifo: VecDeque::new(),
            done_src: HashMap::new(),
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

    /// Completed messages now remembered (and the length of their bookkeeping queue).
    #[must_use]
    pub fn remembered(&self) -> (usize, usize) {
        (self.done.len(), self.done_fifo.len())
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// The limits in use.
    #[must_use]
    pub fn limits(&self) -> &ReassemblyLimits {
        &self.limits
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.by_age.remove(&e.seq);
        self.expiry.remove(&(e.deadline, e.seq));
        if let Some(t) = e.ack_due {
            self.ack_at.remove(&(t, e.seq));
        }
        self.total_bytes -= e.charged;
        if let Some(s) = self.sources.get_mut(&key.0) {
            s.bytes -= e.charged;
            s.entries.retain(|(seq, _)| *seq != e.seq);
            if s.entries.is_empty() {
                self.sources.remove(&key.0);
            }
        }
        Some(e)
    }

    /// Earliest time at which a partial message times out, an ACK is due or a record expires.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        [
            self.expiry.first().map(|(t, _)| *t),
            self.ack_at.first().map(|(t, _)| *t),
            self.done_fifo
                .front()
                .and_then(|(_, k)| self.done.get(k))
                .map(|d| d.expires),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Drops what timed out by `now` and sends the ACKs due (to the fragments' source only).
    pub fn handle_timeout(&mut self, now: Duration, out: &mut Vec<Transmit>) {
        self.expire(now);
        while let Some(&(t, seq)) = self.ack_at.first() {
            if t > now {
                break;
            }
            self.ack_at.remove(&(t, seq));
            let Some(key) = self.by_age.get(&seq).copied() else {
                continue;
            };
            let l = self.limits;
            let Some(e) = self.entries.get_mut(&key) else {
                continue;
            };
            e.ack_due = None;
            let count = u8::try_from(e.frags.len()).unwrap_or(u8::MAX);
            let len = Ack::wire_len(count);
            if e.ack_bytes + len > AMPLIFICATION * e.rx_bytes {
                self.stats.acks_limited += 1;
                continue;
            }
            e.ack_bytes += len;
            e.gap_acks = e.gap_acks.saturating_add(1);
            if e.gap_acks < l.max_gap_acks {
                let next = now + l.ack_repeat;
                e.ack_due = Some(next);
                self.ack_at.insert((next, seq));
            }
            let ack = Ack {
                kind: key.1,
                msg_id: key.2,
                frag_count: count,
                held: e.held,
            };
            self.stats.acks_sent += 1;
            out.push(Transmit {
                dst: key.0,
                payload: ack.encode(&self.key),
            });
        }
    }

    fn expire(&mut self, now: Duration) {
        while let Some(&(t, seq)) = self.expiry.first() {
            if t > now {
                break;
            }
            if let Some(key) = self.by_age.get(&seq).copied() {
                self.remove(&key);
                self.stats.timed_out += 1;
            } else {
                self.expiry.remove(&(t, seq));
            }
        }
        while let Some(&(seq, key)) = self.done_fifo.front() {
            match self.done.get(&key) {
                Some(d) if d.seq == seq && d.expires > now => break,
                Some(d) if d.seq == seq => {
                    self.done.remove(&key);
                    self.pop_done_src(key.0, seq);
                }
                // Stale: already evicted by the per-source cap.
                _ => {}
            }
            self.done_fifo.pop_front();
        }
    }

    fn pop_done_src(&mut self, src: SocketAddr, seq: u64) {
        if let Some(q) = self.done_src.get_mut(&src) {
            q.retain(|(s, _)| *s != seq);
            if q.is_empty() {
                self.done_src.remove(&src);
            }
        }
    }

    fn remember_done(&mut self, key: Key, count: u8, now: Duration) {
        if self.done.contains_key(&key) || self.limits.done_total == 0 {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.done.insert(
            key,
            Done {
                count,
                expires: now + self.limits.done_lifetime,
                seq,
            },
        );
        self.done_fifo.push_back((seq, key));
        let q = self.done_src.entry(key.0).or_default();
        q.push_back((seq, key));
        if q.len() > self.limits.done_per_source {
            if let Some((s, k)) = q.pop_front() {
                if self.done.get(&k).is_some_and(|d| d.seq == s) {
                    self.done.remove(&k);
                }
            }
        }
        while self.done.len() > self.limits.done_total {
            let Some((s, k)) = self.done_fifo.pop_front() else {
                break;
            };
            if self.done.get(&k).is_some_and(|d| d.seq == s) {
                self.done.remove(&k);
                self.pop_done_src(k.0, s);
            }
        }
        // Per-source evictions leave stale queue entries behind; compact so the queue stays
        // within a constant factor of the cap.
        if self.done_fifo.len() > 2 * self.limits.done_total + 16 {
            let done = &self.done;
            self.done_fifo
                .retain(|(s, k)| done.get(k).is_some_and(|d| d.seq == *s));
        }
    }

    fn ack_to(&mut self, dst: SocketAddr, ack: Ack, out: &mut Vec<Transmit>) {
        self.stats.acks_sent += 1;
        out.push(Transmit {
            dst,
            payload: ack.encode(&self.key),
        });
    }

    /// Takes one control datagram from `src`. A completed message is delivered once and ACKed;
    /// a partial one gets an ACK later (from [`handle_timeout`](Self::handle_timeout)); a
    /// fragment of a remembered completed message is re-ACKed. ACK frames are verified and
    /// returned for the sender.
    ///
    /// # Errors
    /// A counted drop: bad MAC, malformed, inconsistent or over-limit fragment.
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        now: Duration,
        out: &mut Vec<Transmit>,
    ) -> Result<Incoming, TransportError> {
        self.expire(now);
        let frame = parse(&self.key, datagram).inspect_err(|e| {
            if *e == TransportError::BadMac {
                self.stats.bad_mac += 1;
            } else {
                self.stats.malformed += 1;
            }
        })?;
        let (h, payload) = match frame {
            Frame::Ack(a) => return Ok(Incoming::Ack(a)),
            Frame::Data(h, p) => (h, p),
        };
        let key = (src, h.kind, h.msg_id);
        if let Some(d) = self.done.get(&key) {
            self.stats.late_duplicates += 1;
            if d.count != h.frag_count {
                self.stats.inconsistent += 1;
                return Err(TransportError::Inconsistent);
            }
            // One small ACK per received datagram of at least 25 bytes: ≤ 31 bytes, far
            // below 3×.
            let ack = Ack::complete(h.kind, h.msg_id, d.count);
            self.ack_to(src, ack, out);
            return Ok(Incoming::Nothing);
        }
        if h.frag_count == 1 {
            self.stats.completed += 1;
            self.remember_done(key, 1, now);
            self.ack_to(src, Ack::complete(h.kind, h.msg_id, 1), out);
            return Ok(Incoming::Message(Message {
                src,
                kind: h.kind,
                msg_id: h.msg_id,
                payload: payload.to_vec(),
            }));
        }
        let idx = usize::from(h.frag_index);
        let mut charge = payload.len();
        match self.entries.get_mut(&key) {
            Some(e) if e.frags.len() != usize::from(h.frag_count) => {
                self.remove(&key);
                self.stats.inconsistent += 1;
                return Err(TransportError::Inconsistent);
            }
            Some(e) if e.held & (1u64 << idx) != 0 => {
                // A repair crossed our ACK: ACK again soon so the sender stops.
                e.rx_bytes += datagram.len();
                let seq = e.seq;
                self.stats.duplicates += 1;
                self.schedule_ack(&key, seq, now);
                return Ok(Incoming::Nothing);
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
            let deadline = now + self.limits.timeout;
            self.entries.insert(
                key,
                Entry {
                    frags: vec![None; usize::from(h.frag_count)],
                    held: 0,
                    received: 0,
                    charged: 0,
                    rx_bytes: 0,
                    ack_bytes: 0,
                    gap_acks: 0,
                    deadline,
                    ack_due: None,
                    seq,
                },
            );
            self.by_age.insert(seq, key);
            self.expiry.insert((deadline, seq));
            self.sources
                .entry(src)
                .or_default()
                .entries
                .push((seq, key));
        }
        let timeout = self.limits.timeout;
        let (done, seq) = {
            let Some(e) = self.entries.get_mut(&key) else {
                return Err(TransportError::OverLimit);
            };
            if let Some(slot) = e.frags.get_mut(idx) {
                *slot = Some(payload.to_vec());
            }
            e.held |= 1u64 << idx;
            e.received += 1;
            e.charged += charge;
            e.rx_bytes += datagram.len();
            // Idle timeout: a message under repair stays while fragments keep coming.
            self.expiry.remove(&(e.deadline, e.seq));
            e.deadline = now + timeout;
            self.expiry.insert((e.deadline, e.seq));
            (e.received == e.frags.len(), e.seq)
        };
        self.total_bytes += charge;
        self.sources.entry(src).or_default().bytes += charge;
        if !done {
            self.schedule_ack(&key, seq, now);
            return Ok(Incoming::Nothing);
        }
        let Some(e) = self.remove(&key) else {
            return Err(TransportError::OverLimit);
        };
        let payload = e.frags.into_iter().flatten().flatten().collect();
        self.stats.completed += 1;
        self.remember_done(key, h.frag_count, now);
        self.ack_to(src, Ack::complete(h.kind, h.msg_id, h.frag_count), out);
        Ok(Incoming::Message(Message {
            src,
            kind: h.kind,
            msg_id: h.msg_id,
            payload,
        }))
    }

    /// ACK a partial message `ack_delay` from now, unless one is due sooner.
    fn schedule_ack(&mut self, key: &Key, seq: u64, now: Duration) {
        let at = now + self.limits.ack_delay;
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if e.gap_acks >= self.limits.max_gap_acks {
            return;
        }
        match e.ack_due {
            Some(t) if t <= at => {}
            other => {
                if let Some(t) = other {
                    self.ack_at.remove(&(t, seq));
                }
                e.ack_due = Some(at);
                self.ack_at.insert((at, seq));
            }
        }
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
                self.by_age.values().next().copied()
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

    /// Checks the internal accounting (tests).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let l = self.limits;
        assert!(self.total_bytes <= l.total_bytes);
        assert!(self.entries.len() <= l.total_entries);
        let naive: usize = self.entries.values().map(|e| e.charged).sum();
        assert_eq!(naive, self.total_bytes);
        for s in self.sources.values() {
            assert!(s.bytes <= l.per_source_bytes);
            assert!(s.entries.len() <= l.per_source_entries);
        }
        assert!(self.done.len() <= l.done_total);
        assert!(self.done_fifo.len() <= 2 * l.done_total + 16);
        for q in self.done_src.values() {
            assert!(q.len() <= l.done_per_source);
        }
        assert!(self.by_age.len() == self.entries.len());
        assert!(self.expiry.len() == self.entries.len());
        assert!(self.ack_at.len() <= self.entries.len());
    }
}
