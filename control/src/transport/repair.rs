//! The sender's half of fragment repair: keeps recently sent messages and, on a backoff timer,
//! resends only the fragments the receiver has not acknowledged, within a per-message budget.
//!
//! Owns the repair state of sent messages (bounded in count, bytes and lifetime). It only ever
//! sends a message's fragments to that message's original destination, never to the source of
//! an ACK (an ACK from any other address than the destination matches nothing), and never more
//! than the message's budget: a forged or replayed ACK can at most stop a repair. It never reads
//! a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use super::fragment::{mask, Ack};
use super::Transmit;

/// How much a message may be sent, its first send included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most sends of any one fragment.
    pub per_fragment: u8,
    /// Most bytes sent for the message in total, in whole copies of its datagrams.
    pub copies: u8,
}

impl Budget {
    /// Sent once, never repaired.
    pub const ONCE: Self = Self {
        per_fragment: 1,
        copies: 1,
    };
    /// A reply to an address not yet validated (M2, cookie reply): at most 3 copies' worth of
    /// bytes in all, which keeps the 3× anti-amplification rule because the reply is never
    /// larger than the message it answers (M2 3229 B < M1 ≥ 3274 B).
    pub const UNVALIDATED_REPLY: Self = Self {
        per_fragment: 6,
        copies: 3,
    };
    /// Our own initiation: each fragment at most 9 times (8 repairs).
    pub const INITIATION: Self = Self {
        per_fragment: 9,
        copies: 9,
    };
}

/// Repair timers and caps.
#[derive(Debug, Clone, Copy)]
pub struct RepairConfig {
    /// First repair this long after the first send.
    pub initial_rto: Duration,
    /// Repair interval cap (the interval grows ×1.5 per round).
    pub max_rto: Duration,
    /// A message is forgotten this long after its first send (shorter than the receiver's
    /// memory of completed messages).
    pub lifetime: Duration,
    /// Most messages kept for repair (oldest forgotten first).
    pub max_messages: usize,
    /// Most datagram bytes kept for repair.
    pub max_bytes: usize,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            initial_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(1),
            lifetime: Duration::from_secs(15),
            max_messages: 256,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Counters of the sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairStats {
    /// Fragments sent the first time.
    pub sent: u64,
    /// Fragments sent again.
    pub resent: u64,
    /// ACKs that matched a message kept for repair.
    pub acks_matched: u64,
    /// ACKs that matched nothing (unknown, other source, other count).
    pub acks_unmatched: u64,
    /// Messages fully acknowledged.
    pub acknowledged: u64,
    /// Messages forgotten with fragments unacknowledged and no budget left.
    pub exhausted: u64,
    /// Messages forgotten at the end of their lifetime.
    pub expired: u64,
    /// Messages forgotten to respect a cap.
    pub evicted: u64,
    /// Messages replaced by a newer one of the same class to the same destination.
    pub superseded: u64,
}

type Key = (SocketAddr, u8, u32);

struct Outgoing {
    frags: Vec<Vec<u8>>,
    sends: Vec<u8>,
    acked: u64,
    bytes_sent: usize,
    max_bytes: usize,
    per_fragment: u8,
    held_bytes: usize,
    class: Option<u8>,
    seq: u64,
    rto: Duration,
    first_sent: Option<Duration>,
    deadline: Option<Duration>,
    expires: Duration,
}

/// Repair state of recently sent messages (sans-IO: `poll_timeout`, `handle_timeout`).
pub struct Sender {
    config: RepairConfig,
    msgs: HashMap<Key, Outgoing>,
    by_seq: BTreeMap<u64, Key>,
    timers: BTreeSet<(Duration, u64)>,
    unarmed: Vec<u64>,
    bytes: usize,
    next_seq: u64,
    stats: RepairStats,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("messages", &self.msgs.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// No messages kept yet.
    #[must_use]
    pub fn new(config: RepairConfig) -> Self {
        Self {
            config,
            msgs: HashMap::new(),
            by_seq: BTreeMap::new(),
            timers: BTreeSet::new(),
            unarmed: Vec::new(),
            bytes: 0,
            next_seq: 0,
            stats: RepairStats::default(),
        }
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> RepairStats {
        self.stats
    }

    /// Messages kept for repair and their datagram bytes.
    #[must_use]
    pub fn held(&self) -> (usize, usize) {
        (self.msgs.len(), self.bytes)
    }

    fn remove(&mut self, key: &Key) -> Option<Outgoing> {
        let m = self.msgs.remove(key)?;
        self.by_seq.remove(&m.seq);
        if let Some(t) = m.deadline {
            self.timers.remove(&(t, m.seq));
        } else {
            self.unarmed.retain(|s| *s != m.seq);
        }
        self.bytes -= m.held_bytes;
        Some(m)
    }

    /// Sends the datagrams `frags` of message (`kind`, `msg_id`) to `dst` and keeps them for
    /// repair within `budget`. A message of the same `class` kept for `dst` is forgotten (a
    /// new initiation makes the previous one useless). `now` may be unknown to the caller
    /// (`None`): the repair timer is then armed at the next
    /// [`handle_timeout`](Self::handle_timeout), which [`poll_timeout`](Self::poll_timeout)
    /// asks for at once.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        dst: SocketAddr,
        kind: u8,
        msg_id: u32,
        frags: Vec<Vec<u8>>,
        budget: Budget,
        class: Option<u8>,
        now: Option<Duration>,
    ) -> Vec<Transmit> {
        if let Some(c) = class {
            let old: Vec<Key> = self
                .msgs
                .iter()
                .filter(|(k, m)| k.0 == dst && m.class == Some(c))
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                self.remove(&k);
                self.stats.superseded += 1;
            }
        }
        let key = (dst, kind, msg_id);
        self.remove(&key);
        let out: Vec<Transmit> = frags
            .iter()
            .map(|p| Transmit {
                dst,
                payload: p.clone(),
            })
            .collect();
        self.stats.sent += out.len() as u64;
        let total: usize = frags.iter().map(Vec::len).sum();
        let count = frags.len();
        if budget.per_fragment <= 1
            || budget.copies <= 1
            || count == 0
            || count > 64
            || total > self.config.max_bytes
        {
            return out;
        }
        while self.msgs.len() >= self.config.max_messages.max(1)
            || self.bytes + total > self.config.max_bytes
        {
            let Some(oldest) = self.by_seq.values().next().copied() else {
                break;
            };
            self.remove(&oldest);
            self.stats.evicted += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let rto = self.config.initial_rto;
        let (deadline, first_sent, expires) = match now {
            Some(t) => (Some(t + rto), Some(t), t + self.config.lifetime),
            None => (None, None, Duration::MAX),
        };
        match deadline {
            Some(d) => {
                self.timers.insert((d, seq));
            }
            None => self.unarmed.push(seq),
        }
        self.msgs.insert(
            key,
            Outgoing {
                frags,
                sends: vec![1; count],
                acked: 0,
                bytes_sent: total,
                max_bytes: total.saturating_mul(usize::from(budget.copies)),
                per_fragment: budget.per_fragment,
                held_bytes: total,
                class,
                seq,
                rto,
                first_sent,
                deadline,
                expires,
            },
        );
        self.by_seq.insert(seq, key);
        self.bytes += total;
        out
    }

    /// A verified ACK arrived from `src`: marks the fragments it holds. It never causes a
    /// send; an ACK that does not match a message sent to `src` is ignored.
    pub fn on_ack(&mut self, src: SocketAddr, ack: Ack, now: Duration) {
        let key = (src, ack.kind, ack.msg_id);
        let Some(m) = self.msgs.get_mut(&key) else {
            self.stats.acks_unmatched += 1;
            return;
        };
        if m.frags.len() != usize::from(ack.frag_count) {
            self.stats.acks_unmatched += 1;
            return;
        }
        self.stats.acks_matched += 1;
        if m.acked == 0 {
            // The first ACK measures how long an ACK takes to come back (RTT + the receiver's
            // delay); repairing faster than that only resends what is still in flight.
            if let Some(t) = m.first_sent {
                let sample = now.saturating_sub(t);
                m.rto = m.rto.max(sample + sample / 2);
            }
        }
        m.acked |= ack.held;
        if m.acked & mask(ack.frag_count) == mask(ack.frag_count) {
            self.remove(&key);
            self.stats.acknowledged += 1;
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run: `now` if a message waits
    /// for its timer to be armed.
    #[must_use]
    pub fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        if self.unarmed.is_empty() {
            self.timers.first().map(|(t, _)| *t)
        } else {
            Some(now)
        }
    }

    /// Arms new timers and resends, to each message's own destination, the unacknowledged
    /// fragments whose repair is due and whose budget allows.
    pub fn handle_timeout(&mut self, now: Duration, out: &mut Vec<Transmit>) {
        for seq in std::mem::take(&mut self.unarmed) {
            let Some(key) = self.by_seq.get(&seq).copied() else {
                continue;
            };
            if let Some(m) = self.msgs.get_mut(&key) {
                let d = now + m.rto;
                m.deadline = Some(d);
                m.first_sent = Some(now);
                m.expires = now + self.config.lifetime;
                self.timers.insert((d, seq));
            }
        }
        while let Some(&(t, seq)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, seq));
            let Some(key) = self.by_seq.get(&seq).copied() else {
                continue;
            };
            let Some(m) = self.msgs.get_mut(&key) else {
                continue;
            };
            m.deadline = None;
            if m.expires <= now {
                self.remove(&key);
                self.stats.expired += 1;
                continue;
            }
            let mut resent = 0u64;
            let mut left = false;
            for (i, f) in m.frags.iter().enumerate() {
                if m.acked & (1u64 << i) != 0 {
                    continue;
                }
                if m.sends[i] >= m.per_fragment || m.bytes_sent + f.len() > m.max_bytes {
                    continue;
                }
                m.sends[i] += 1;
                m.bytes_sent += f.len();
                resent += 1;
                left |= m.sends[i] < m.per_fragment;
                out.push(Transmit {
                    dst: key.0,
                    payload: f.clone(),
                });
            }
            self.stats.resent += resent;
            if resent == 0 || !left {
                // Nothing more may be sent: keep no state for it.
                self.remove(&key);
                self.stats.exhausted += 1;
                continue;
            }
            m.rto = (m.rto + m.rto / 2).min(self.config.max_rto.max(m.rto));
            let d = now + m.rto;
            m.deadline = Some(d);
            self.timers.insert((d, seq));
        }
    }
}
