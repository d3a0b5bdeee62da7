//! One dataplane worker: the per-packet logic between its TUN queue and its UDP socket.
//!
//! Outbound (TUN → UDP): route the inner destination to a peer, reserve counters for the whole
//! batch with one atomic add, seal in place (a plain packet is sealed in the very buffer it was
//! read into) or, for a TSO super-packet, split it straight into a transmit buffer as
//! back-to-back datagrams and send them with one GSO `sendmsg`.
//! Inbound (UDP → TUN): walk the GRO batch, open each datagram in place, check replay and the
//! inner source against the peer's prefixes, then coalesce consecutive TCP segments back into
//! super-packets written to the TUN with a virtio-net header.
//!
//! A TUN packet that cannot be sent yet (no route in the overlay, no session, no endpoint) is
//! copied into the worker's hold queue ([`super::hold`]) and the control plane is asked; held
//! packets go, oldest first, as soon as a command or a confirmation makes them sendable, and a
//! newer packet to the same place never overtakes them.
//!
//! Control datagrams pass the worker's token buckets ([`crate::ratelimit`]) before they are
//! copied and queued on their own channel. Events go on another; the first authenticated packet
//! on a pending session promotes it and is reported once; an event that found its queue full
//! is asked again (rekey) or owed and retried each turn (confirmation, new endpoint).
//!
//! Must never: allocate, lock, or make a system call per packet (the backend batches them);
//! reorder one flow; panic on anything that arrives.

use std::collections::hash_map::RandomState;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use shadowmesh_platform::io::{BufId, PacketIo, Received, Source, PACKET_OFFSET, VNET_HDR_LEN};

use crate::offload::{self, Coalesced, Segmenter, VirtioNetHdr};
use crate::ratelimit::{ControlLimiter, ControlLimits, Verdict};
use crate::session::{PeerId, Session, MAX_RESERVE};
use crate::wire::{self, Datagram, HEADER_LEN, TAG_LEN};

use super::counters::{DropCause, PeerCounterRegistry, PeerCounters, WorkerCounters, WorkerTotals};
use super::hold::{self, HoldQueue, NoRouteAsks};
use super::tables::{Command, Tables};
use super::Event;

/// Largest UDP payload one GSO `sendmsg` may carry.
const GSO_MAX_BYTES: usize = 65000;
/// Most segments one GSO `sendmsg` may carry (the kernel's UDP_MAX_SEGMENTS in older kernels).
const GSO_MAX_SEGMENTS: usize = 64;
/// Receives handled per loop turn.
const RX_BATCH: usize = 256;
/// Datagrams one GRO batch may hold.
const GRO_MAX: usize = 128;
/// How long the worker sleeps in the kernel when idle (bounds command latency).
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// At most one "no session" event per peer per this interval.
const NO_SESSION_EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// While packets are held, how often the worker checks whether they can go even though no
/// command reached it (a pending session confirmed by another worker's receive).
const HOLD_SCAN_INTERVAL: Duration = Duration::from_millis(10);
/// A session that still needs a rekey is asked for again after this long: the first request
/// may have been lost between here and the control plane, or its handshake may have failed.
/// The control plane ignores requests while a handshake is in flight, so repeats are cheap.
pub const REKEY_REASK_INTERVAL: Duration = Duration::from_secs(5);

/// What a worker needs besides its I/O backend.
pub struct WorkerSetup {
    /// Worker number (for logs and stats).
    pub id: usize,
    /// TUN reads and writes carry a virtio-net header.
    pub vnet_hdr: bool,
    /// Table changes from the IPC thread.
    pub commands: Receiver<Command>,
    /// Events for the control plane (never a control datagram).
    pub events: Sender<Event>,
    /// Control datagrams for the control plane ([`Event::ControlReceived`] only): a queue of
    /// their own, so a flood of them cannot crowd out the events.
    pub control: Sender<Event>,
    /// Rate limits for control datagrams from the network.
    pub control_limits: ControlLimits,
    /// Where this worker publishes its counters.
    pub counters: Arc<WorkerCounters>,
    /// Where per-peer counters are registered so the IPC thread can read them.
    pub peer_counters: PeerCounterRegistry,
    /// The engine clock (time since an arbitrary epoch); the only clock the worker reads.
    pub clock: fn() -> Duration,
}

/// One worker: owns its backend and its private tables.
pub struct Worker<I: PacketIo> {
    io: I,
    setup: WorkerSetup,
    tables: Tables,
    totals: WorkerTotals,
    rx: Vec<Received>,
    plain: Vec<Range<usize>>,
    /// Datagrams of the current receive buffer to relay, with their destinations.
    forward: Vec<(Range<usize>, SocketAddr)>,
    coalesced: Vec<Coalesced>,
    /// Plain packets of this turn sealed back to back for one GSO send (see [`TxBatch`]).
    batch: Option<TxBatch>,
    /// Token buckets for control datagrams.
    limiter: ControlLimiter<RandomState>,
    /// Some peer entry owes the control plane an event its queue had no room for.
    owed: bool,
    /// Packets waiting for a route, a session or an endpoint ([`hold`]).
    hold: HoldQueue,
    /// Rate limit of the "no session" asks for unrouted overlay destinations.
    asks: NoRouteAsks,
    /// Something changed that may let held packets go: flush before the next TUN packet.
    hold_due: bool,
    /// A flush stopped for want of a buffer: newer packets are held behind the older ones
    /// (order) until a flush completes.
    hold_blocked: bool,
    /// When the held packets were last checked.
    last_hold_scan: Duration,
}

/// Consecutive plain packets to one endpoint, sealed back to back in one transmit buffer and
/// sent as one UDP_SEGMENT sendmsg: a stream of small or MTU-sized packets (UDP, ACKs, ICMP)
/// then costs one trip through the kernel's UDP stack per batch instead of per packet, as
/// TSO super-packets already do. Flushed when the endpoint or size changes, when full, and at
/// the end of every loop turn, so order is kept and nothing waits.
#[derive(Clone, Copy, Debug)]
struct TxBatch {
    buf: BufId,
    endpoint: SocketAddr,
    /// Size of every datagram but possibly the last.
    stride: usize,
    used: usize,
    count: usize,
}

impl<I: PacketIo> Worker<I> {
    /// A worker over `io`.
    pub fn new(io: I, setup: WorkerSetup) -> Self {
        Self {
            io,
            tables: Tables::default(),
            totals: WorkerTotals::default(),
            rx: Vec::with_capacity(RX_BATCH),
            plain: Vec::with_capacity(GRO_MAX),
            forward: Vec::with_capacity(GRO_MAX),
            coalesced: vec![Coalesced::default(); GRO_MAX],
            batch: None,
            // Randomly keyed per worker, so no one can aim sources at one set of the table.
            limiter: ControlLimiter::new(setup.control_limits, RandomState::new()),
            owed: false,
            hold: HoldQueue::new(),
            asks: NoRouteAsks::new(),
            hold_due: false,
            hold_blocked: false,
            last_hold_scan: Duration::ZERO,
            setup,
        }
    }

    /// Runs until `stop` is set (checked at least every [`IDLE_WAIT`]).
    pub fn run(&mut self, stop: &AtomicBool) -> std::io::Result<()> {
        let mut last_expire = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            self.turn()?;
            let now = (self.setup.clock)();
            if now.saturating_sub(last_expire) >= Duration::from_secs(1) {
                self.tables.expire(now);
                last_expire = now;
            }
        }
        Ok(())
    }

    /// One loop turn: apply table changes, submit queued I/O and wait for completions, handle
    /// every completed receive, publish counters.
    pub fn turn(&mut self) -> std::io::Result<()> {
        if self.apply_commands() && !self.hold.is_empty() {
            // Held packets go out in this turn's submission, before anything read later.
            let now = (self.setup.clock)();
            self.service_hold(now, true);
            flush_batch(&mut self.io, &mut self.totals, &mut self.batch);
        }
        self.io.submit_and_wait(IDLE_WAIT, &mut self.rx)?;
        let now = (self.setup.clock)();
        if !self.hold.is_empty() {
            let scan =
                self.hold_blocked || now.saturating_sub(self.last_hold_scan) >= HOLD_SCAN_INTERVAL;
            self.service_hold(now, scan);
        }
        let mut rx = std::mem::take(&mut self.rx);
        for r in rx.drain(..) {
            match r.source {
                Source::Tun => self.on_tun(r.buf, r.data, now),
                Source::Udp { src, segment_size } => {
                    self.on_udp(r.buf, r.data, src, segment_size, now)
                }
            }
        }
        self.rx = rx;
        if self.hold_due {
            self.flush_hold(now);
        }
        if self.owed {
            self.pay_owed_events();
        }
        flush_batch(&mut self.io, &mut self.totals, &mut self.batch);
        self.totals.enters = self.io.stats().enters;
        self.setup.counters.publish(&self.totals);
        Ok(())
    }

    /// The worker's tables (for tests).
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Packets held by this worker (for tests and stats).
    pub fn held(&self) -> (usize, usize) {
        (self.hold.len(), self.hold.bytes())
    }

    /// Drops what was held too long, then sends what can go now if `flush`.
    fn service_hold(&mut self, now: Duration, flush: bool) {
        let expired = self.hold.expire(now);
        self.totals.drops[DropCause::HoldExpired as usize] += expired as u64;
        if self.hold.is_empty() {
            // Nothing left to keep newer packets behind.
            self.hold_blocked = false;
        }
        if flush || self.hold_due {
            self.flush_hold(now);
        }
    }

    /// Sends, oldest first, every held packet whose destination now has a route, a sending
    /// session and an endpoint; the others stay. Each goes through the usual send path from a
    /// transmit buffer (a super-packet is split there as usual).
    fn flush_hold(&mut self, now: Duration) {
        self.hold_due = false;
        self.hold_blocked = false;
        self.last_hold_scan = now;
        let off = if self.setup.vnet_hdr {
            PACKET_OFFSET - VNET_HDR_LEN
        } else {
            PACKET_OFFSET
        };
        // Bounded by the slot count (at most hold::HOLD_PACKETS); sending never adds slots.
        for i in 0..self.hold.slots() {
            let Some(dst) = self.hold.dst(i) else {
                continue;
            };
            if !sendable(&mut self.tables, dst) {
                continue;
            }
            let Some(buf) = self.io.alloc() else {
                // Tried again next turn; newer packets queue behind (see hold_blocked).
                self.hold_blocked = true;
                break;
            };
            let copied = match (self.io.buf_mut(buf), self.hold.packet(i)) {
                (Some(frame), Some(p)) => frame.get_mut(off..off + p.len()).map(|d| {
                    d.copy_from_slice(p);
                    off..off + p.len()
                }),
                _ => None,
            };
            self.hold.take(i);
            match copied {
                Some(range) => {
                    self.totals.hold_flushed += 1;
                    if let Err(cause) = self.send_tun_packet(buf, range, now, false) {
                        self.totals.drop(cause);
                    }
                }
                None => self.totals.drop(DropCause::NoBuffer),
            }
            self.io.release(buf);
        }
        self.hold.compact();
    }

    /// Applies queued commands; returns whether a table changed (held packets may go).
    fn apply_commands(&mut self) -> bool {
        let mut changed = false;
        // Bounded so a flood of commands cannot starve the packets.
        for _ in 0..256 {
            let Ok(cmd) = self.setup.commands.try_recv() else {
                break;
            };
            match &cmd {
                Command::SendControl { dst, payload } => {
                    self.send_control(*dst, payload);
                    continue;
                }
                Command::Keepalive { peer } => {
                    self.send_keepalive(*peer);
                    continue;
                }
                _ => {}
            }
            changed = true;
            let registry = &self.setup.peer_counters;
            self.tables.apply(cmd, &mut |peer| {
                let c = Arc::new(PeerCounters::default());
                registry
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((peer, Arc::clone(&c)));
                c
            });
        }
        changed
    }

    fn send_control(&mut self, dst: SocketAddr, payload: &[u8]) {
        let Some(id) = self.io.alloc() else {
            self.totals.drop(DropCause::NoBuffer);
            return;
        };
        let n = match self.io.buf_mut(id) {
            Some(buf) if payload.len() <= buf.len() => {
                buf[..payload.len()].copy_from_slice(payload);
                payload.len()
            }
            _ => 0,
        };
        if n > 0 {
            self.io.send_udp(id, 0..n, dst, None);
            self.totals.udp_tx_datagrams += 1;
        }
        self.io.release(id);
    }

    fn send_keepalive(&mut self, peer: PeerId) {
        let now = (self.setup.clock)();
        let Some(entry) = self.tables.peers.get(&peer) else {
            return;
        };
        let (Some(session), Some(endpoint)) = (entry.sessions.sending(), entry.endpoint) else {
            return;
        };
        let Ok(r) = session.reserve(1, now) else {
            return;
        };
        let Some(id) = self.io.alloc() else {
            self.totals.drop(DropCause::NoBuffer);
            return;
        };
        let sealed = self
            .io
            .buf_mut(id)
            .and_then(|b| b.get_mut(..HEADER_LEN + TAG_LEN))
            .and_then(|b| {
                session
                    .seal_on_lane(self.setup.id as u8, r.first, b, 0)
                    .ok()
            });
        if let Some(n) = sealed {
            self.io.send_udp(id, 0..n, endpoint, None);
            self.totals.udp_tx_datagrams += 1;
        }
        self.io.release(id);
    }

    /// Retries the events that found the queue full (a confirmation, a new endpoint): the
    /// control plane must learn them, and nothing else would say them again. Retries are not
    /// counted as drops again.
    fn pay_owed_events(&mut self) {
        let mut still = false;
        for (&peer, entry) in self.tables.peers.iter_mut() {
            if let Some(local_index) = entry.owed_confirm {
                let e = Event::SessionConfirmed { peer, local_index };
                if self.setup.events.try_send(e).is_ok() {
                    entry.owed_confirm = None;
                } else {
                    still = true;
                }
            }
            if entry.owed_endpoint {
                match entry.endpoint {
                    Some(addr) => {
                        let e = Event::EndpointChanged { peer, addr };
                        if self.setup.events.try_send(e).is_ok() {
                            entry.owed_endpoint = false;
                        } else {
                            still = true;
                        }
                    }
                    None => entry.owed_endpoint = false,
                }
            }
        }
        self.owed = still;
    }

    /// A packet (or super-packet) read from the TUN.
    fn on_tun(&mut self, buf: BufId, data: Range<usize>, now: Duration) {
        if self.hold_due {
            // Held packets first: a session just became usable, and they are older.
            self.flush_hold(now);
        }
        let outcome = self.send_tun_packet(buf, data, now, true);
        if let Err(cause) = outcome {
            self.totals.drop(cause);
        }
        if self.hold_due {
            self.flush_hold(now);
        }
        self.io.release(buf);
    }

    /// Routes, seals and sends one TUN read; with `may_hold`, a packet that cannot be sent yet
    /// (no route in the overlay, no session, no endpoint) is held instead of dropped.
    fn send_tun_packet(
        &mut self,
        buf: BufId,
        data: Range<usize>,
        now: Duration,
        may_hold: bool,
    ) -> Result<(), DropCause> {
        let Worker {
            io,
            setup,
            tables,
            totals,
            batch,
            hold,
            asks,
            hold_due,
            hold_blocked,
            ..
        } = self;
        let read = data.clone();
        let frame = io.buf_mut(buf).ok_or(DropCause::NoBuffer)?;
        let (hdr, pkt) = if setup.vnet_hdr {
            let hdr = frame
                .get(data.start..data.end)
                .and_then(|b| VirtioNetHdr::parse(b).ok())
                .ok_or(DropCause::BadOffload)?;
            (hdr, data.start + VNET_HDR_LEN..data.end)
        } else {
            (VirtioNetHdr::NONE, data)
        };
        let packet = frame.get(pkt.clone()).ok_or(DropCause::BadInnerPacket)?;
        let dst = wire::inner_dst(packet).ok_or(DropCause::BadInnerPacket)?;
        let Some(peer) = tables.routes.lookup(dst) else {
            if !(may_hold && hold::in_overlay(dst)) {
                return Err(DropCause::NoRoute);
            }
            // Ask the control plane to look the destination up, and keep the packet.
            if asks.due(dst, now) {
                emit(&setup.events, totals, Event::NoSession { peer: None, dst });
            }
            return hold_packet(hold, totals, frame.get(read), dst, now)
                .map_err(|()| DropCause::NoRoute);
        };
        // A pending session the peer has used (seen by another worker) is confirmed: promote
        // it before sending. One length check when nothing is pending.
        let confirmed_pending = tables
            .peers
            .get(&peer)
            .and_then(|e| e.sessions.confirmed_pending());
        let promoted = confirmed_pending.is_some_and(|idx| tables.confirm(peer, idx));
        let entry = tables.peers.get_mut(&peer).ok_or(DropCause::NoRoute)?;
        let Some(session) = entry.sessions.sending() else {
            let due = entry
                .last_no_session_event
                .is_none_or(|t| now.saturating_sub(t) >= NO_SESSION_EVENT_INTERVAL);
            if due {
                entry.last_no_session_event = Some(now);
                let e = Event::NoSession {
                    peer: Some(peer),
                    dst,
                };
                emit(&setup.events, totals, e);
            }
            if may_hold && hold_packet(hold, totals, frame.get(read), dst, now).is_ok() {
                return Ok(());
            }
            entry.counters.count_drop(DropCause::NoSession);
            return Err(DropCause::NoSession);
        };
        let Some(endpoint) = entry.endpoint else {
            if may_hold && hold_packet(hold, totals, frame.get(read), dst, now).is_ok() {
                return Ok(());
            }
            entry.counters.count_drop(DropCause::NoEndpoint);
            return Err(DropCause::NoEndpoint);
        };
        // Older packets may still be held for this destination: a session promoted just now
        // (they go at once, see on_tun), or a flush that ran out of buffers. This one queues
        // behind them so that a flow keeps its order.
        if may_hold
            && (*hold_blocked || (promoted && !hold.is_empty()))
            && hold_packet(hold, totals, frame.get(read.clone()), dst, now).is_ok()
        {
            *hold_due |= promoted;
            return Ok(());
        }
        // Borrowed, not cloned: an Arc clone per packet would bounce the refcount's cache
        // line between workers.
        let tx = Tx {
            session,
            lane: setup.id as u8,
            endpoint,
            now,
            counters: &entry.counters,
        };
        let result = if hdr.gso_type != offload::VIRTIO_NET_HDR_GSO_NONE {
            // A super-packet fills its own GSO sends: first send what is batched, in order.
            flush_batch(io, totals, batch);
            send_segmented(io, totals, buf, pkt, &hdr, &tx)
        } else if io.gso_enabled() {
            send_batched(io, totals, batch, buf, pkt, &hdr, &tx)
        } else {
            send_single(io, totals, buf, pkt, &hdr, &tx)
        };
        if let Err(cause) = result {
            entry.counters.count_drop(cause);
        }
        let rekey = match result {
            Ok(rekey_due) => rekey_due,
            // Past its limits: ask for a handshake as a missing session would.
            Err(DropCause::SendRefused) => true,
            Err(_) => false,
        };
        let local_index = session.local_index;
        let ask = rekey
            && entry.rekey_asked.is_none_or(|(asked, at)| {
                asked != local_index || now.saturating_sub(at) >= REKEY_REASK_INTERVAL
            });
        // Marked as asked only once queued: a request lost to a full queue is asked again by
        // the next packet.
        if ask
            && emit(
                &setup.events,
                totals,
                Event::RekeyNeeded { peer, local_index },
            )
        {
            entry.rekey_asked = Some((local_index, now));
        }
        result.map(|_| ())
    }

    /// A UDP receive: one datagram, or a GRO batch of `segment_size`-byte datagrams.
    fn on_udp(
        &mut self,
        buf: BufId,
        data: Range<usize>,
        src: SocketAddr,
        segment_size: usize,
        now: Duration,
    ) {
        self.plain.clear();
        self.forward.clear();
        let segment_size = segment_size.max(1);
        let mut roamed: Option<(PeerId, SocketAddr)> = None;
        {
            let Some(frame) = self.io.buf_mut(buf) else {
                return;
            };
            let mut off = data.start;
            while off < data.end {
                let end = (off + segment_size).min(data.end);
                let dgram = off..end;
                off = end;
                self.totals.udp_rx_datagrams += 1;
                let Some(bytes) = frame.get_mut(dgram.clone()) else {
                    break;
                };
                match wire::classify(bytes) {
                    Datagram::Data(header) => {
                        // Relayed traffic first: a route names this source and index, so it
                        // is another peer's message and ours to forward, not to open.
                        if !self.tables.relays.is_empty() {
                            if let Some(route) =
                                self.tables.relays.get(&(src, header.receiver_index))
                            {
                                if !route.rate.take(bytes.len(), now) {
                                    self.totals.drop(DropCause::RelayRateLimited);
                                } else if self.forward.len() == self.forward.capacity() {
                                    self.totals.drop(DropCause::NoBuffer);
                                } else {
                                    self.forward.push((dgram.clone(), route.to));
                                }
                                continue;
                            }
                        }
                        let Some(&peer) = self.tables.by_index.get(&header.receiver_index) else {
                            self.totals.drop(DropCause::UnknownIndex);
                            continue;
                        };
                        let Some(entry) = self.tables.peers.get_mut(&peer) else {
                            self.totals.drop(DropCause::UnknownIndex);
                            continue;
                        };
                        let Some(session) = entry.sessions.find(header.receiver_index) else {
                            self.totals.drop(DropCause::UnknownIndex);
                            continue;
                        };
                        let (range, first) = match session.open_confirming(bytes, now) {
                            Ok(r) => r,
                            Err(e) => {
                                self.totals.drop_for(&entry.counters, e.into());
                                continue;
                            }
                        };
                        let promoted = entry.sessions.is_pending(header.receiver_index)
                            && self.tables.confirm(peer, header.receiver_index);
                        if promoted && !self.hold.is_empty() {
                            // The peer's held packets can go now, before any newer one.
                            self.hold_due = true;
                        }
                        let Some(entry) = self.tables.peers.get_mut(&peer) else {
                            continue;
                        };
                        if first && promoted {
                            // Key confirmation of a responder session. Only the worker that
                            // authenticated first reports it (the swap in `open_confirming`),
                            // and it owes the report until the queue takes it.
                            let local_index = header.receiver_index;
                            let e = Event::SessionConfirmed { peer, local_index };
                            if !emit(&self.setup.events, &mut self.totals, e) {
                                entry.owed_confirm = Some(local_index);
                                self.owed = true;
                            }
                        }
                        entry
                            .counters
                            .last_rx_nanos
                            .store(now.as_nanos() as u64, Ordering::Relaxed);
                        if entry.endpoint != Some(src) {
                            roamed = Some((peer, src));
                        }
                        if range.is_empty() {
                            self.totals.keepalives_rx += 1;
                            continue;
                        }
                        let plain = dgram.start + range.start..dgram.start + range.end;
                        let Some(inner_src) = bytes.get(range.clone()).and_then(wire::inner_src)
                        else {
                            self.totals
                                .drop_for(&entry.counters, DropCause::BadInnerPacket);
                            continue;
                        };
                        if !self.tables.routes.allows(peer, inner_src)
                            && !entry.sources_allow(inner_src)
                        {
                            self.totals
                                .drop_for(&entry.counters, DropCause::SourceNotAllowed);
                            continue;
                        }
                        if self.plain.len() == self.plain.capacity() {
                            // More datagrams than one GRO batch can hold (the kernel sends 64).
                            self.totals.drop_for(&entry.counters, DropCause::NoBuffer);
                            continue;
                        }
                        PeerCounters::bump(&entry.counters.rx_packets, 1);
                        PeerCounters::bump(&entry.counters.rx_bytes, plain.len() as u64);
                        self.totals.tun_tx_packets += 1;
                        self.totals.tun_tx_bytes += plain.len() as u64;
                        self.plain.push(plain);
                    }
                    Datagram::Control => {
                        // Charged before the copy and the queue slot it would cost.
                        if self.limiter.check(src.ip(), now) != Verdict::Allow {
                            self.totals.drop(DropCause::ControlRateLimited);
                            continue;
                        }
                        let payload = bytes.to_vec();
                        self.totals.control_rx += 1;
                        if let Err(TrySendError::Full(_)) = self
                            .setup
                            .control
                            .try_send(Event::ControlReceived { src, payload })
                        {
                            self.totals.drop(DropCause::EventQueueFull);
                        }
                    }
                    Datagram::Garbage(reason) => {
                        self.totals.drop(DropCause::Garbage);
                        self.totals.garbage[reason as usize] += 1;
                    }
                }
            }
        }
        if let Some((peer, addr)) = roamed {
            self.roam(peer, addr);
        }
        self.relay_forward(buf);
        self.write_plain(buf);
        self.io.release(buf);
    }

    /// Sends the datagrams of one receive buffer that are relayed, unchanged, from the buffer
    /// itself (no copy). Runs of equal-size datagrams, back to back in the buffer and bound
    /// for one destination (a GRO batch of one flow), go out as one GSO send.
    fn relay_forward(&mut self, buf: BufId) {
        let gso = self.io.gso_enabled();
        let mut i = 0;
        // Bounded: each pass consumes at least one entry of `forward` (≤ GRO_MAX).
        while let Some((first, to)) = self.forward.get(i).cloned() {
            let size = first.len();
            let mut end = first.end;
            let mut n = 1;
            if gso {
                while let Some((r, t)) = self.forward.get(i + n) {
                    // The last segment of a GSO send may be shorter, never longer.
                    if *t != to
                        || r.start != end
                        || r.len() > size
                        || n >= GSO_MAX_SEGMENTS
                        || r.end - first.start > GSO_MAX_BYTES
                    {
                        break;
                    }
                    end = r.end;
                    n += 1;
                    if r.len() < size {
                        break;
                    }
                }
            }
            let segment = (n > 1).then(|| u16::try_from(size).unwrap_or(u16::MAX));
            self.io.send_udp(buf, first.start..end, to, segment);
            self.totals.udp_tx_datagrams += n as u64;
            self.totals.relayed_packets += n as u64;
            self.totals.relayed_bytes += (end - first.start) as u64;
            i += n;
        }
    }

    /// An authenticated packet came from a new address: send there from now on (roaming).
    fn roam(&mut self, peer: PeerId, addr: SocketAddr) {
        let Some(entry) = self.tables.peers.get_mut(&peer) else {
            return;
        };
        entry.endpoint = Some(addr);
        let e = Event::EndpointChanged { peer, addr };
        if !emit(&self.setup.events, &mut self.totals, e) {
            // Owed: the endpoint is already switched here, so no later packet would say it.
            entry.owed_endpoint = true;
            self.owed = true;
        }
    }

    /// Writes the decrypted packets of one receive buffer to the TUN.
    fn write_plain(&mut self, buf: BufId) {
        if self.plain.is_empty() {
            return;
        }
        if !self.setup.vnet_hdr {
            for i in 0..self.plain.len() {
                let r = self.plain[i].clone();
                self.io.write_tun(buf, r);
            }
            return;
        }
        let Some(frame) = self.io.buf_mut(buf) else {
            return;
        };
        let n = offload::coalesce_in_place(frame, &self.plain, &mut self.coalesced);
        // The vnet headers go in the headroom before each packet; the ranges to write are kept
        // in `plain` (reused: coalescing never yields more outputs than inputs).
        self.plain.clear();
        for c in self.coalesced.iter().take(n) {
            if let Ok(r) = offload::emit_vnet_before(frame, c) {
                self.plain.push(r);
            }
        }
        for i in 0..self.plain.len() {
            let r = self.plain[i].clone();
            self.io.write_tun(buf, r);
        }
    }
}

/// Whether a packet to `dst` can be sent now: a route, a sending session (promoting a pending
/// one another worker confirmed) and an endpoint.
fn sendable(tables: &mut Tables, dst: std::net::IpAddr) -> bool {
    let Some(peer) = tables.routes.lookup(dst) else {
        return false;
    };
    if let Some(idx) = tables
        .peers
        .get(&peer)
        .and_then(|e| e.sessions.confirmed_pending())
    {
        let _ = tables.confirm(peer, idx);
    }
    tables
        .peers
        .get(&peer)
        .is_some_and(|e| e.endpoint.is_some() && e.sessions.sending().is_some())
}

/// Holds a copy of a TUN read (`Err` if it could not be: too large, or out of its frame);
/// older packets pushed out to make room are counted as overflow drops.
fn hold_packet(
    hold: &mut HoldQueue,
    totals: &mut WorkerTotals,
    read: Option<&[u8]>,
    dst: std::net::IpAddr,
    now: Duration,
) -> Result<(), ()> {
    let bytes = read.ok_or(())?;
    let evicted = hold.push(bytes, dst, now).map_err(|_| ())?;
    totals.held += 1;
    totals.drops[DropCause::HoldOverflow as usize] += evicted as u64;
    Ok(())
}

/// Queues an event; returns whether it was queued (a full queue counts a drop).
fn emit(events: &Sender<Event>, totals: &mut WorkerTotals, e: Event) -> bool {
    match events.try_send(e) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            totals.drop(DropCause::EventQueueFull);
            false
        }
        // Nobody listens (shutting down): nothing to retry.
        Err(TrySendError::Disconnected(_)) => true,
    }
}

/// Where and with what an outbound packet goes.
struct Tx<'a> {
    session: &'a Session,
    /// Receive lane written into every header: this worker's number.
    lane: u8,
    endpoint: SocketAddr,
    now: Duration,
    counters: &'a PeerCounters,
}

/// Seals one plain packet in the buffer it was read into and queues its send.
/// Returns whether the session asks for a rekey.
fn send_single<I: PacketIo>(
    io: &mut I,
    totals: &mut WorkerTotals,
    buf: BufId,
    pkt: Range<usize>,
    hdr: &VirtioNetHdr,
    tx: &Tx<'_>,
) -> Result<bool, DropCause> {
    let reservation = tx
        .session
        .reserve(1, tx.now)
        .map_err(|_| DropCause::SendRefused)?;
    let frame = io.buf_mut(buf).ok_or(DropCause::NoBuffer)?;
    let len = pkt.len();
    if hdr.needs_csum() {
        complete_checksum(
            frame.get_mut(pkt.clone()).ok_or(DropCause::BadOffload)?,
            hdr,
        )?;
    }
    // The packet sits at PACKET_OFFSET = HEADER_LEN, so it is sealed where it lies.
    debug_assert_eq!(pkt.start, PACKET_OFFSET);
    let start = pkt
        .start
        .checked_sub(HEADER_LEN)
        .ok_or(DropCause::NoBuffer)?;
    let out = frame
        .get_mut(start..pkt.end + TAG_LEN)
        .ok_or(DropCause::NoBuffer)?;
    let n = tx
        .session
        .seal_on_lane(tx.lane, reservation.first, out, len)
        .map_err(|_| DropCause::NoBuffer)?;
    io.send_udp(buf, start..start + n, tx.endpoint, None);
    totals.tun_rx_packets += 1;
    totals.tun_rx_bytes += len as u64;
    totals.udp_tx_datagrams += 1;
    PeerCounters::bump(&tx.counters.tx_packets, 1);
    PeerCounters::bump(&tx.counters.tx_bytes, len as u64);
    Ok(reservation.rekey_due)
}

/// Sends what `batch` holds as one GSO sendmsg (a plain send for a single datagram).
fn flush_batch<I: PacketIo>(io: &mut I, totals: &mut WorkerTotals, batch: &mut Option<TxBatch>) {
    if let Some(b) = batch.take() {
        if b.count > 0 {
            let segment = (b.count > 1).then_some(b.stride as u16);
            io.send_udp(b.buf, 0..b.used, b.endpoint, segment);
            totals.udp_tx_datagrams += b.count as u64;
        }
        io.release(b.buf);
    }
}

/// Seals one plain packet into the turn's GSO batch (see [`TxBatch`]). Returns whether the
/// session asks for a rekey.
fn send_batched<I: PacketIo>(
    io: &mut I,
    totals: &mut WorkerTotals,
    batch: &mut Option<TxBatch>,
    buf: BufId,
    pkt: Range<usize>,
    hdr: &VirtioNetHdr,
    tx: &Tx<'_>,
) -> Result<bool, DropCause> {
    let len = pkt.len();
    let dlen = HEADER_LEN + len + TAG_LEN;
    if dlen > GSO_MAX_BYTES {
        return Err(DropCause::BadInnerPacket);
    }
    if hdr.needs_csum() {
        let frame = io.buf_mut(buf).ok_or(DropCause::NoBuffer)?;
        complete_checksum(
            frame.get_mut(pkt.clone()).ok_or(DropCause::BadOffload)?,
            hdr,
        )?;
    }
    // A datagram joins the open batch if it goes to the same endpoint, is no longer than the
    // batch's stride (only the last may be shorter) and the batch has room.
    if let Some(b) = batch {
        let fits = b.endpoint == tx.endpoint
            && dlen <= b.stride
            && b.count < GSO_MAX_SEGMENTS
            && b.used + dlen <= GSO_MAX_BYTES.min(io.buf_len());
        if !fits {
            flush_batch(io, totals, batch);
        }
    }
    if batch.is_none() {
        let out = io.alloc().ok_or(DropCause::NoBuffer)?;
        *batch = Some(TxBatch {
            buf: out,
            endpoint: tx.endpoint,
            stride: dlen,
            used: 0,
            count: 0,
        });
    }
    let Some(b) = batch.as_mut() else {
        return Err(DropCause::NoBuffer);
    };
    let reservation = tx
        .session
        .reserve(1, tx.now)
        .map_err(|_| DropCause::SendRefused)?;
    let (src, dst) = io.buf_pair(buf, b.buf).ok_or(DropCause::NoBuffer)?;
    let plain = src.get(pkt).ok_or(DropCause::BadInnerPacket)?;
    let slot = dst
        .get_mut(b.used..b.used + dlen)
        .ok_or(DropCause::NoBuffer)?;
    slot[HEADER_LEN..HEADER_LEN + len].copy_from_slice(plain);
    let n = tx
        .session
        .seal_on_lane(tx.lane, reservation.first, slot, len)
        .map_err(|_| DropCause::NoBuffer)?;
    b.used += n;
    b.count += 1;
    let short = n < b.stride;
    totals.tun_rx_packets += 1;
    totals.tun_rx_bytes += len as u64;
    PeerCounters::bump(&tx.counters.tx_packets, 1);
    PeerCounters::bump(&tx.counters.tx_bytes, len as u64);
    if short {
        // Only the last datagram of a GSO send may be shorter: this one ends the batch.
        flush_batch(io, totals, batch);
    }
    Ok(reservation.rekey_due)
}

/// Splits a TSO/USO super-packet straight into a transmit buffer as back-to-back sealed
/// datagrams and queues them as GSO sends. Returns whether the session asks for a rekey.
fn send_segmented<I: PacketIo>(
    io: &mut I,
    totals: &mut WorkerTotals,
    buf: BufId,
    pkt: Range<usize>,
    hdr: &VirtioNetHdr,
    tx: &Tx<'_>,
) -> Result<bool, DropCause> {
    let (count, max_seg) = {
        let frame = io.buf_mut(buf).ok_or(DropCause::NoBuffer)?;
        let seg = Segmenter::new(hdr, frame.get(pkt.clone()).ok_or(DropCause::BadOffload)?)
            .map_err(|_| DropCause::BadOffload)?;
        (seg.segment_count(), seg.max_segment_len())
    };
    // More segments than one counter reservation covers is no real TSO packet (the kernel's
    // segments are far larger): a malformed read, not a reason to rekey.
    if count == 0 || count as u64 > MAX_RESERVE {
        return Err(DropCause::BadOffload);
    }
    let stride = HEADER_LEN + max_seg + TAG_LEN;
    let per_send = (GSO_MAX_BYTES / stride).clamp(1, GSO_MAX_SEGMENTS);
    let per_buf = (io.buf_len() / stride).max(1);
    let reservation = tx
        .session
        .reserve(count as u64, tx.now)
        .map_err(|_| DropCause::SendRefused)?;
    let gso = io.gso_enabled();
    let mut done = 0usize;
    let mut payload_bytes = 0u64;
    // Usually one pass; a super-packet of tiny segments that overflows a transmit buffer takes
    // more, each re-walking the segmenter past what earlier passes sent.
    while done < count {
        let out = io.alloc().ok_or(DropCause::NoBuffer)?;
        let (used, datagrams, failed) = match io.buf_pair(buf, out) {
            Some((src, dst)) => fill_segments(
                src.get(pkt.clone()).unwrap_or(&[]),
                dst,
                hdr,
                &Fill {
                    session: tx.session,
                    lane: tx.lane,
                    first_counter: reservation.first,
                    skip: done,
                    take: per_buf.min(count - done),
                    stride,
                    max_seg,
                },
                &mut payload_bytes,
            ),
            None => (0, 0, true),
        };
        // Chunks of `per_send` datagrams, each one GSO sendmsg (one each without GSO).
        let mut first = 0;
        while first < datagrams {
            let n = if gso {
                per_send.min(datagrams - first)
            } else {
                1
            };
            let start = first * stride;
            let end = if first + n == datagrams {
                used
            } else {
                (first + n) * stride
            };
            let segment = (gso && n > 1).then_some(stride as u16);
            io.send_udp(out, start..end, tx.endpoint, segment);
            first += n;
        }
        io.release(out);
        totals.udp_tx_datagrams += datagrams as u64;
        done += datagrams;
        if failed || datagrams == 0 {
            totals.tun_rx_packets += done as u64;
            return Err(DropCause::BadOffload);
        }
    }
    totals.tun_rx_packets += count as u64;
    totals.tun_rx_bytes += payload_bytes;
    PeerCounters::bump(&tx.counters.tx_packets, count as u64);
    PeerCounters::bump(&tx.counters.tx_bytes, payload_bytes);
    Ok(reservation.rekey_due)
}

/// One pass of [`fill_segments`]: which segments go where.
struct Fill<'a> {
    session: &'a Session,
    lane: u8,
    first_counter: u64,
    /// Segments earlier passes already sent.
    skip: usize,
    /// Segments to write in this pass.
    take: usize,
    stride: usize,
    max_seg: usize,
}

/// Writes up to `f.take` sealed segments (after skipping `f.skip`) into `dst` at `f.stride`
/// intervals. Returns (bytes used, datagrams written, whether segmenting failed).
fn fill_segments(
    packet: &[u8],
    dst: &mut [u8],
    hdr: &VirtioNetHdr,
    f: &Fill<'_>,
    payload_bytes: &mut u64,
) -> (usize, usize, bool) {
    let Ok(mut seg) = Segmenter::new(hdr, packet) else {
        return (0, 0, true);
    };
    for _ in 0..f.skip {
        // The first slot serves as scratch; it is overwritten below.
        if let Some(scratch) = dst.get_mut(HEADER_LEN..HEADER_LEN + f.max_seg) {
            let _ = seg.next_into(scratch);
        }
    }
    let mut used = 0;
    for i in 0..f.take {
        let off = i * f.stride;
        let Some(slot) = dst.get_mut(off..off + f.stride) else {
            return (used, i, true);
        };
        let n = match seg.next_into(&mut slot[HEADER_LEN..HEADER_LEN + f.max_seg]) {
            Some(Ok(n)) => n,
            _ => return (used, i, true),
        };
        match f
            .session
            .seal_on_lane(f.lane, f.first_counter + (f.skip + i) as u64, slot, n)
        {
            Ok(dlen) => {
                used = off + dlen;
                *payload_bytes += n as u64;
            }
            Err(_) => return (used, i, true),
        }
    }
    (used, f.take, false)
}

/// Completes a partial checksum the kernel left for us (`VIRTIO_NET_HDR_F_NEEDS_CSUM` on a
/// packet that is not segmented): sum from `csum_start` to the end, over the pseudo-header sum
/// the kernel already put in the checksum field.
fn complete_checksum(packet: &mut [u8], hdr: &VirtioNetHdr) -> Result<(), DropCause> {
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > packet.len() {
        return Err(DropCause::BadOffload);
    }
    let sum = offload::checksum(packet.get(start..).ok_or(DropCause::BadOffload)?, 0);
    packet[field..field + 2].copy_from_slice(&sum.to_be_bytes());
    Ok(())
}
