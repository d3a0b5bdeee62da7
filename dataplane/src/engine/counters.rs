//! Per-worker and per-peer counters: packets, bytes, and drops by cause.
//!
//! Each counter has one writer (its worker) and is read by the IPC thread for stats, so the
//! worker keeps plain local sums on the hot path and publishes them with relaxed stores once
//! per loop turn: no locked instruction per packet, no shared cache line between workers.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::session::OpenRefused;
use crate::wire::GarbageReason;

/// Why the engine dropped a packet; `as usize` indexes the drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DropCause {
    /// Datagram was neither data nor control, or malformed (see [`GarbageReason`]).
    Garbage = 0,
    /// Data message naming a receiver index we do not have.
    UnknownIndex = 1,
    /// Tag did not verify.
    BadTag = 2,
    /// Counter replayed or outside the window.
    Replayed = 3,
    /// Receive key expired.
    Expired = 4,
    /// Decrypted packet whose inner source is not in the peer's allowed prefixes.
    SourceNotAllowed = 5,
    /// Decrypted packet that is not a valid IPv4/IPv6 packet.
    BadInnerPacket = 6,
    /// TUN packet whose destination matches no route and lies outside the overlay (an
    /// overlay destination is held instead, see [`super::hold`]).
    NoRoute = 7,
    /// TUN packet for a peer with no usable session that could not be held (see
    /// [`super::hold`]).
    NoSession = 8,
    /// TUN packet for a peer with no known endpoint that could not be held.
    NoEndpoint = 9,
    /// TUN packet with an inconsistent virtio-net header or super-packet.
    BadOffload = 10,
    /// No free buffer to build datagrams in.
    NoBuffer = 11,
    /// Event for the control plane dropped because its queue was full.
    EventQueueFull = 12,
    /// Session refused to send (expired or counters exhausted).
    SendRefused = 13,
    /// Control datagram over its source's or the worker's rate (see [`crate::ratelimit`]).
    ControlRateLimited = 14,
    /// Held TUN packet dropped after [`super::hold::HOLD_TIME`] with no route or session.
    HoldExpired = 15,
    /// Held TUN packet dropped, oldest first, to make room in the bounded hold queue.
    HoldOverflow = 16,
    /// Relayed datagram over its route's rate limit (see [`crate::relay`]).
    RelayRateLimited = 17,
}

impl DropCause {
    /// Number of causes.
    pub const COUNT: usize = 18;
    /// Every cause, in counter-index order.
    pub const ALL: [DropCause; Self::COUNT] = [
        Self::Garbage,
        Self::UnknownIndex,
        Self::BadTag,
        Self::Replayed,
        Self::Expired,
        Self::SourceNotAllowed,
        Self::BadInnerPacket,
        Self::NoRoute,
        Self::NoSession,
        Self::NoEndpoint,
        Self::BadOffload,
        Self::NoBuffer,
        Self::EventQueueFull,
        Self::SendRefused,
        Self::ControlRateLimited,
        Self::HoldExpired,
        Self::HoldOverflow,
        Self::RelayRateLimited,
    ];

    /// A stable snake_case name for status output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Garbage => "garbage",
            Self::UnknownIndex => "unknown_index",
            Self::BadTag => "bad_tag",
            Self::Replayed => "replayed",
            Self::Expired => "expired",
            Self::SourceNotAllowed => "source_not_allowed",
            Self::BadInnerPacket => "bad_inner_packet",
            Self::NoRoute => "no_route",
            Self::NoSession => "no_session",
            Self::NoEndpoint => "no_endpoint",
            Self::BadOffload => "bad_offload",
            Self::NoBuffer => "no_buffer",
            Self::EventQueueFull => "event_queue_full",
            Self::SendRefused => "send_refused",
            Self::ControlRateLimited => "control_rate_limited",
            Self::HoldExpired => "hold_expired",
            Self::HoldOverflow => "hold_overflow",
            Self::RelayRateLimited => "relay_rate_limited",
        }
    }
}

impl From<OpenRefused> for DropCause {
    fn from(r: OpenRefused) -> Self {
        match r {
            OpenRefused::Expired => Self::Expired,
            OpenRefused::Malformed => Self::Garbage,
            OpenRefused::BadTag => Self::BadTag,
            OpenRefused::Replayed => Self::Replayed,
        }
    }
}

/// A worker's counters as plain numbers (the hot path's local copy, and the stats snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerTotals {
    /// Packets read from the TUN (after segmentation: one per segment).
    pub tun_rx_packets: u64,
    /// Bytes read from the TUN.
    pub tun_rx_bytes: u64,
    /// Packets written to the TUN (before coalescing: one per decrypted packet).
    pub tun_tx_packets: u64,
    /// Bytes written to the TUN.
    pub tun_tx_bytes: u64,
    /// Datagrams received on the UDP socket.
    pub udp_rx_datagrams: u64,
    /// Datagrams sent on the UDP socket.
    pub udp_tx_datagrams: u64,
    /// Control datagrams handed to the control plane.
    pub control_rx: u64,
    /// Keepalives (empty data messages) received.
    pub keepalives_rx: u64,
    /// System calls entering the kernel (`io_uring_enter` or `poll`).
    pub enters: u64,
    /// TUN packets put in the hold queue (no route or session yet).
    pub held: u64,
    /// Held packets sent once their route and session existed.
    pub hold_flushed: u64,
    /// Datagrams forwarded for others (relay).
    pub relayed_packets: u64,
    /// Bytes of those.
    pub relayed_bytes: u64,
    /// Drops, indexed by [`DropCause`].
    pub drops: [u64; DropCause::COUNT],
    /// Garbage drops, indexed by [`GarbageReason`].
    pub garbage: [u64; GarbageReason::COUNT],
}

impl WorkerTotals {
    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, cause: DropCause) {
        self.drops[cause as usize] += 1;
    }

    /// Counts one drop here and against the peer it concerns.
    #[inline]
    pub fn drop_for(&mut self, peer: &PeerCounters, cause: DropCause) {
        self.drop(cause);
        peer.count_drop(cause);
    }

    /// Adds another worker's totals (for a node-wide sum).
    pub fn add(&mut self, o: &WorkerTotals) {
        self.tun_rx_packets += o.tun_rx_packets;
        self.tun_rx_bytes += o.tun_rx_bytes;
        self.tun_tx_packets += o.tun_tx_packets;
        self.tun_tx_bytes += o.tun_tx_bytes;
        self.udp_rx_datagrams += o.udp_rx_datagrams;
        self.udp_tx_datagrams += o.udp_tx_datagrams;
        self.control_rx += o.control_rx;
        self.keepalives_rx += o.keepalives_rx;
        self.enters += o.enters;
        self.held += o.held;
        self.hold_flushed += o.hold_flushed;
        self.relayed_packets += o.relayed_packets;
        self.relayed_bytes += o.relayed_bytes;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        for (a, b) in self.garbage.iter_mut().zip(o.garbage.iter()) {
            *a += b;
        }
    }

    /// All drops together.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

const SCALARS: usize = 13;

/// The published copy of a worker's counters, read by the IPC thread.
#[derive(Debug)]
#[repr(align(64))]
pub struct WorkerCounters {
    scalars: [AtomicU64; SCALARS],
    drops: [AtomicU64; DropCause::COUNT],
    garbage: [AtomicU64; GarbageReason::COUNT],
}

impl Default for WorkerCounters {
    fn default() -> Self {
        Self {
            scalars: std::array::from_fn(|_| AtomicU64::new(0)),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            garbage: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl WorkerCounters {
    /// Publishes the worker's local totals (single writer: plain relaxed stores).
    pub fn publish(&self, t: &WorkerTotals) {
        let scalars = [
            t.tun_rx_packets,
            t.tun_rx_bytes,
            t.tun_tx_packets,
            t.tun_tx_bytes,
            t.udp_rx_datagrams,
            t.udp_tx_datagrams,
            t.control_rx,
            t.keepalives_rx,
            t.enters,
            t.held,
            t.hold_flushed,
            t.relayed_packets,
            t.relayed_bytes,
        ];
        for (a, v) in self.scalars.iter().zip(scalars) {
            a.store(v, Ordering::Relaxed);
        }
        for (a, v) in self.drops.iter().zip(t.drops) {
            a.store(v, Ordering::Relaxed);
        }
        for (a, v) in self.garbage.iter().zip(t.garbage) {
            a.store(v, Ordering::Relaxed);
        }
    }

    /// Reads the last published totals.
    pub fn snapshot(&self) -> WorkerTotals {
        let s: [u64; SCALARS] = std::array::from_fn(|i| self.scalars[i].load(Ordering::Relaxed));
        WorkerTotals {
            tun_rx_packets: s[0],
            tun_rx_bytes: s[1],
            tun_tx_packets: s[2],
            tun_tx_bytes: s[3],
            udp_rx_datagrams: s[4],
            udp_tx_datagrams: s[5],
            control_rx: s[6],
            keepalives_rx: s[7],
            enters: s[8],
            held: s[9],
            hold_flushed: s[10],
            relayed_packets: s[11],
            relayed_bytes: s[12],
            drops: std::array::from_fn(|i| self.drops[i].load(Ordering::Relaxed)),
            garbage: std::array::from_fn(|i| self.garbage[i].load(Ordering::Relaxed)),
        }
    }
}

/// One peer's traffic as seen by one worker (single writer, read by the IPC thread).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PeerCounters {
    /// Data bytes received (decrypted payload).
    pub rx_bytes: AtomicU64,
    /// Data packets received.
    pub rx_packets: AtomicU64,
    /// Data bytes sent (plaintext payload).
    pub tx_bytes: AtomicU64,
    /// Data packets sent.
    pub tx_packets: AtomicU64,
    /// Time of the last authenticated packet, in nanoseconds of the engine clock (0 = never).
    pub last_rx_nanos: AtomicU64,
    /// Packets to or from this peer dropped, indexed by [`DropCause`]: on send, those routed
    /// to the peer; on receive, those that named one of its sessions.
    pub drops: [AtomicU64; DropCause::COUNT],
}

impl PeerCounters {
    /// Adds to a counter that only this worker writes (no locked instruction).
    #[inline]
    pub fn bump(counter: &AtomicU64, by: u64) {
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(by),
            Ordering::Relaxed,
        );
    }

    /// Counts one drop for this peer (single writer, like [`PeerCounters::bump`]).
    #[inline]
    pub fn count_drop(&self, cause: DropCause) {
        Self::bump(&self.drops[cause as usize], 1);
    }
}

/// Where a worker registers the counters of each peer it sees, so the IPC thread can read
/// them (locked only when a peer first appears and when stats are read).
pub type PeerCounterRegistry =
    std::sync::Arc<std::sync::Mutex<Vec<(crate::session::PeerId, std::sync::Arc<PeerCounters>)>>>;
