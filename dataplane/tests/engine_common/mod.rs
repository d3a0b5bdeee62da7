//! Shared harness of the `engine_*` tests: drives real [`Worker`]s with no root and no kernel
//! I/O.
//!
//! Owns: [`FakeIo`], an in-memory [`PacketIo`] keeping the real backends' buffer ownership
//! rules (a buffer is lent only while the engine holds it and no queued operation does; each
//! operation holds its own reference; `release` drops the engine's), its test-side handle
//! [`Wire`] (inject TUN reads and UDP receives, read back what the engine sent and wrote), a
//! fake clock, two workers A and B with static sessions ([`Pair`]) and packet builders.
//!
//! Must never: allocate per packet once built. Queues and byte arenas are preallocated and
//! overflowing one panics instead of growing, so the zero-allocation test measures the engine
//! alone.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use shadowmesh_dataplane::crypto::Cipher;
use shadowmesh_dataplane::engine::counters::{
    DropCause, PeerCounterRegistry, WorkerCounters, WorkerTotals,
};
use shadowmesh_dataplane::engine::worker::{Worker, WorkerSetup};
use shadowmesh_dataplane::engine::{Command, Event, Slot};
use shadowmesh_dataplane::offload::{
    Segmenter, VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use shadowmesh_dataplane::ratelimit::ControlLimits;
use shadowmesh_dataplane::session::{Limits, PeerId, Session, SessionKeys};
use shadowmesh_platform::io::{
    BufId, IoStats, PacketIo, Received, Source, PACKET_OFFSET, TAILROOM, VNET_HDR_LEN,
};

// ---------------------------------------------------------------------------------------------
// Clock

thread_local! {
    /// Nanoseconds of fake time. Thread-local rather than one process-wide static: libtest
    /// runs the tests of a binary on parallel threads and each test drives its workers on its
    /// own thread, so each test gets its own clock and none can move another's.
    static NOW_NANOS: Cell<u64> = const { Cell::new(0) };
}

/// The fake engine clock handed to every worker ([`WorkerSetup::clock`]).
pub fn clock() -> Duration {
    Duration::from_nanos(NOW_NANOS.with(Cell::get))
}

/// Sets the fake clock of the calling thread.
pub fn set_clock(t: Duration) {
    NOW_NANOS.with(|c| c.set(t.as_nanos() as u64));
}

/// Moves the fake clock of the calling thread forward.
pub fn advance(d: Duration) {
    set_clock(clock() + d);
}

// ---------------------------------------------------------------------------------------------
// FakeIo

/// Sizing and behaviour of a [`FakeIo`].
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Number of frames.
    pub frames: u32,
    /// Bytes per frame.
    pub frame_len: usize,
    /// TUN reads and writes carry a virtio-net header.
    pub vnet_hdr: bool,
    /// Where UDP data lands in its frame (0 like the poll backend; io_uring's multishot
    /// recvmsg puts a header first).
    pub udp_offset: usize,
    /// Capacity of every queue (incoming items, queued operations, recorded outputs).
    pub queue: usize,
    /// Capacity in bytes of each byte arena (incoming, sent datagrams, TUN writes).
    pub arena: usize,
}

impl FakeConfig {
    /// Like the poll backend: MTU-sized frames, no offloads.
    pub fn plain() -> Self {
        Self {
            frames: 256,
            frame_len: 2048,
            vnet_hdr: false,
            udp_offset: 0,
            queue: 4096,
            arena: 4 << 20,
        }
    }

    /// Like the io_uring backend with offloads: 96.5 KiB frames, virtio-net headers.
    pub fn offload() -> Self {
        Self {
            frames: 160,
            frame_len: 96 * 1024 + 512,
            vnet_hdr: true,
            udp_offset: 64,
            queue: 4096,
            arena: 16 << 20,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Frame {
    /// Out of the free list.
    taken: bool,
    /// The engine holds a reference.
    engine: bool,
    /// Queued operations holding a reference.
    ops: u16,
}

#[derive(Clone, Debug)]
struct Op {
    buf: BufId,
    data: Range<usize>,
    /// None: a TUN write.
    dst: Option<SocketAddr>,
    segment_size: Option<u16>,
}

#[derive(Clone, Debug)]
struct Pending {
    /// None: a TUN read; Some: a UDP receive from that address.
    src: Option<SocketAddr>,
    segment_size: usize,
    bytes: Range<usize>,
}

/// One UDP send the engine queued, as the fake completed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Destination.
    pub dst: SocketAddr,
    /// The bytes (several datagrams back to back with GSO).
    pub bytes: Vec<u8>,
    /// GSO segment size, if any.
    pub segment_size: Option<u16>,
}

impl Sent {
    /// The individual datagrams of this send.
    pub fn datagrams(&self) -> Vec<Vec<u8>> {
        let seg = self.segment_size.map_or(self.bytes.len(), usize::from);
        self.bytes.chunks(seg.max(1)).map(<[u8]>::to_vec).collect()
    }
}

#[derive(Clone, Copy, Debug)]
struct SentRec {
    dst: SocketAddr,
    segment_size: Option<u16>,
    start: usize,
    end: usize,
}

/// Everything about a fake backend except its frame memory, shared with the test's [`Wire`].
struct Shared {
    cfg: FakeConfig,
    frames: Vec<Frame>,
    free: Vec<u32>,
    ops: Vec<Op>,
    incoming: VecDeque<Pending>,
    in_arena: Vec<u8>,
    udp_out: Vec<SentRec>,
    udp_arena: Vec<u8>,
    tun_out: Vec<Range<usize>>,
    tun_arena: Vec<u8>,
    gso: bool,
    stats: IoStats,
    /// Breaches of the ownership rules by the engine (first one described).
    violations: u64,
    first_violation: Option<&'static str>,
    /// `buf_mut`/`buf_pair` calls refused because the engine did not own the buffer.
    refused_lends: u64,
}

impl Shared {
    fn new(cfg: FakeConfig) -> Self {
        let n = cfg.frames as usize;
        Self {
            frames: vec![Frame::default(); n],
            free: (0..cfg.frames).rev().collect(),
            ops: Vec::with_capacity(cfg.queue),
            incoming: VecDeque::with_capacity(cfg.queue),
            in_arena: Vec::with_capacity(cfg.arena),
            udp_out: Vec::with_capacity(cfg.queue),
            udp_arena: Vec::with_capacity(cfg.arena),
            tun_out: Vec::with_capacity(cfg.queue),
            tun_arena: Vec::with_capacity(cfg.arena),
            gso: true,
            stats: IoStats::default(),
            violations: 0,
            first_violation: None,
            refused_lends: 0,
            cfg,
        }
    }

    fn violation(&mut self, what: &'static str) {
        self.violations += 1;
        self.first_violation.get_or_insert(what);
    }

    fn lendable(&self, id: BufId) -> bool {
        self.frames
            .get(id as usize)
            .is_some_and(|f| f.taken && f.engine && f.ops == 0)
    }

    fn owns(&self, id: BufId) -> bool {
        self.frames
            .get(id as usize)
            .is_some_and(|f| f.taken && f.engine)
    }

    fn take(&mut self) -> Option<BufId> {
        let id = self.free.pop()?;
        self.frames[id as usize] = Frame {
            taken: true,
            engine: true,
            ops: 0,
        };
        Some(id)
    }

    fn maybe_free(&mut self, id: BufId) {
        let f = &mut self.frames[id as usize];
        if f.taken && !f.engine && f.ops == 0 {
            f.taken = false;
            self.free.push(id);
        }
    }

    fn queue(&mut self, op: Op) {
        if !self.owns(op.buf) {
            self.violation("send/write queued on a buffer the engine does not hold");
            return;
        }
        if op.data.start > op.data.end || op.data.end > self.cfg.frame_len {
            self.violation("send/write range outside its frame");
            return;
        }
        assert!(
            self.ops.len() < self.ops.capacity(),
            "fake: operation queue full (raise FakeConfig::queue)"
        );
        self.frames[op.buf as usize].ops += 1;
        self.stats.tx_ops += 1;
        self.ops.push(op);
    }
}

/// Appends `bytes` to a preallocated arena; panics rather than grow it.
fn arena_push(arena: &mut Vec<u8>, bytes: &[u8]) -> Range<usize> {
    assert!(
        arena.len() + bytes.len() <= arena.capacity(),
        "fake: byte arena full (drain outputs more often or raise FakeConfig::arena)"
    );
    let start = arena.len();
    arena.extend_from_slice(bytes);
    start..arena.len()
}

/// An in-memory [`PacketIo`]: frames in one `Vec`, "kernel" queues in [`Shared`].
pub struct FakeIo {
    mem: Vec<u8>,
    frame_len: usize,
    shared: Rc<RefCell<Shared>>,
}

/// Builds a fake backend and the test's handle to it.
pub fn fake(cfg: FakeConfig) -> (FakeIo, Wire) {
    let mem = vec![0u8; cfg.frames as usize * cfg.frame_len];
    let frame_len = cfg.frame_len;
    let shared = Rc::new(RefCell::new(Shared::new(cfg)));
    (
        FakeIo {
            mem,
            frame_len,
            shared: Rc::clone(&shared),
        },
        Wire(shared),
    )
}

impl FakeIo {
    fn frame(&self, id: BufId) -> Range<usize> {
        let start = id as usize * self.frame_len;
        start..start + self.frame_len
    }
}

impl PacketIo for FakeIo {
    fn submit_and_wait(
        &mut self,
        _timeout: Duration,
        rx: &mut Vec<Received>,
    ) -> std::io::Result<()> {
        let mut s = self.shared.borrow_mut();
        let s = &mut *s;
        s.stats.enters += 1;
        // "The kernel" carries out every queued operation; each drops its reference.
        let mut ops = std::mem::take(&mut s.ops);
        for op in &ops {
            let frame = &self.mem[self.frame(op.buf)];
            let bytes = &frame[op.data.clone()];
            match op.dst {
                Some(dst) => {
                    assert!(s.udp_out.len() < s.udp_out.capacity(), "fake: udp_out full");
                    let r = arena_push(&mut s.udp_arena, bytes);
                    s.udp_out.push(SentRec {
                        dst,
                        segment_size: op.segment_size,
                        start: r.start,
                        end: r.end,
                    });
                }
                None => {
                    assert!(s.tun_out.len() < s.tun_out.capacity(), "fake: tun_out full");
                    let r = arena_push(&mut s.tun_arena, bytes);
                    s.tun_out.push(r);
                }
            }
            s.frames[op.buf as usize].ops -= 1;
            s.maybe_free(op.buf);
        }
        ops.clear();
        s.ops = ops;
        // Then completes receives into free frames, never growing `rx`.
        let tun_offset = if s.cfg.vnet_hdr {
            PACKET_OFFSET - VNET_HDR_LEN
        } else {
            PACKET_OFFSET
        };
        while rx.len() < rx.capacity() {
            let Some(p) = s.incoming.front().cloned() else {
                break;
            };
            let len = p.bytes.len();
            let (offset, room) = match p.src {
                None => (tun_offset, self.frame_len - tun_offset - TAILROOM),
                Some(_) => (s.cfg.udp_offset, self.frame_len - s.cfg.udp_offset),
            };
            if len > room {
                s.stats.rx_truncated += 1;
                s.incoming.pop_front();
                continue;
            }
            let Some(id) = s.take() else {
                s.stats.rx_no_buffer += 1;
                break;
            };
            s.incoming.pop_front();
            let start = id as usize * self.frame_len + offset;
            self.mem[start..start + len].copy_from_slice(&s.in_arena[p.bytes]);
            s.stats.rx_completions += 1;
            rx.push(Received {
                buf: id,
                data: offset..offset + len,
                source: match p.src {
                    None => Source::Tun,
                    Some(src) => Source::Udp {
                        src,
                        segment_size: p.segment_size,
                    },
                },
            });
        }
        if s.incoming.is_empty() {
            s.in_arena.clear();
        }
        Ok(())
    }

    fn buf_mut(&mut self, id: BufId) -> Option<&mut [u8]> {
        if !self.shared.borrow().lendable(id) {
            self.shared.borrow_mut().refused_lends += 1;
            return None;
        }
        let r = self.frame(id);
        self.mem.get_mut(r)
    }

    fn buf_pair(&mut self, src: BufId, dst: BufId) -> Option<(&[u8], &mut [u8])> {
        {
            let s = self.shared.borrow();
            if src == dst || !s.lendable(src) || !s.lendable(dst) {
                drop(s);
                self.shared.borrow_mut().refused_lends += 1;
                return None;
            }
        }
        let len = self.frame_len;
        let (lo, hi) = (src.min(dst) as usize, src.max(dst) as usize);
        let (a, b) = self.mem.split_at_mut(hi * len);
        let low = &mut a[lo * len..lo * len + len];
        let high = &mut b[..len];
        Some(if src < dst {
            (&*low, high)
        } else {
            (&*high, low)
        })
    }

    fn alloc(&mut self) -> Option<BufId> {
        self.shared.borrow_mut().take()
    }

    fn buf_len(&self) -> usize {
        self.frame_len
    }

    fn release(&mut self, id: BufId) {
        let mut s = self.shared.borrow_mut();
        if !s.owns(id) {
            s.violation("release of a buffer the engine does not hold");
            return;
        }
        s.frames[id as usize].engine = false;
        s.maybe_free(id);
    }

    fn send_udp(
        &mut self,
        id: BufId,
        data: Range<usize>,
        dst: SocketAddr,
        segment_size: Option<u16>,
    ) {
        self.shared.borrow_mut().queue(Op {
            buf: id,
            data,
            dst: Some(dst),
            segment_size,
        });
    }

    fn write_tun(&mut self, id: BufId, data: Range<usize>) {
        self.shared.borrow_mut().queue(Op {
            buf: id,
            data,
            dst: None,
            segment_size: None,
        });
    }

    fn gso_enabled(&self) -> bool {
        self.shared.borrow().gso
    }

    fn stats(&self) -> IoStats {
        self.shared.borrow().stats
    }
}

/// The test's side of a [`FakeIo`]: the "kernel" queues.
#[derive(Clone)]
pub struct Wire(Rc<RefCell<Shared>>);

impl Wire {
    /// Queues a TUN read (with the virtio-net header first when offloads are on).
    pub fn inject_tun(&self, bytes: &[u8]) {
        let mut s = self.0.borrow_mut();
        assert!(
            s.incoming.len() < s.incoming.capacity(),
            "fake: incoming full"
        );
        let r = arena_push(&mut s.in_arena, bytes);
        s.incoming.push_back(Pending {
            src: None,
            segment_size: 0,
            bytes: r,
        });
    }

    /// Queues a UDP receive from `src`: one datagram, or a GRO batch of `segment_size`-byte
    /// datagrams back to back (the last may be shorter).
    pub fn inject_udp(&self, src: SocketAddr, bytes: &[u8], segment_size: usize) {
        let mut s = self.0.borrow_mut();
        assert!(
            s.incoming.len() < s.incoming.capacity(),
            "fake: incoming full"
        );
        let r = arena_push(&mut s.in_arena, bytes);
        s.incoming.push_back(Pending {
            src: Some(src),
            segment_size,
            bytes: r,
        });
    }

    /// Lets the engine use UDP GSO, or not (as after the kernel refused it).
    pub fn set_gso(&self, on: bool) {
        self.0.borrow_mut().gso = on;
    }

    /// Receives not yet delivered to the engine.
    pub fn pending_in(&self) -> usize {
        self.0.borrow().incoming.len()
    }

    /// Operations queued by the engine, not yet carried out.
    pub fn pending_ops(&self) -> usize {
        self.0.borrow().ops.len()
    }

    /// Nothing queued either way.
    pub fn idle(&self) -> bool {
        self.pending_in() == 0 && self.pending_ops() == 0
    }

    /// Frames out of the free list (held by the engine or by operations).
    pub fn frames_in_use(&self) -> usize {
        let s = self.0.borrow();
        s.frames.len() - s.free.len()
    }

    /// Ownership breaches so far and the first one's description.
    pub fn violations(&self) -> (u64, Option<&'static str>) {
        let s = self.0.borrow();
        (s.violations, s.first_violation)
    }

    /// Lends the engine asked for and did not get (it asked for a buffer it did not own).
    pub fn refused_lends(&self) -> u64 {
        self.0.borrow().refused_lends
    }

    /// The backend's own counters.
    pub fn stats(&self) -> IoStats {
        self.0.borrow().stats
    }

    /// Hands every completed UDP send to `f` (dst, bytes, segment size) and forgets them.
    /// Allocates nothing.
    pub fn drain_udp(&self, mut f: impl FnMut(SocketAddr, &[u8], Option<u16>)) {
        let mut s = self.0.borrow_mut();
        let s = &mut *s;
        for r in &s.udp_out {
            f(r.dst, &s.udp_arena[r.start..r.end], r.segment_size);
        }
        s.udp_out.clear();
        s.udp_arena.clear();
    }

    /// Hands every completed TUN write to `f` and forgets them. Allocates nothing.
    pub fn drain_tun(&self, mut f: impl FnMut(&[u8])) {
        let mut s = self.0.borrow_mut();
        let s = &mut *s;
        for r in &s.tun_out {
            f(&s.tun_arena[r.clone()]);
        }
        s.tun_out.clear();
        s.tun_arena.clear();
    }

    /// The completed UDP sends, copied out.
    pub fn take_udp(&self) -> Vec<Sent> {
        let mut v = Vec::new();
        self.drain_udp(|dst, b, segment_size| {
            v.push(Sent {
                dst,
                bytes: b.to_vec(),
                segment_size,
            })
        });
        v
    }

    /// The completed TUN writes, copied out.
    pub fn take_tun(&self) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        self.drain_tun(|b| v.push(b.to_vec()));
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Workers A and B

/// A's underlay address.
pub const A_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)), 51820);
/// B's underlay address.
pub const B_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 51820);
/// A's id in B's tables.
pub const PEER_A: PeerId = 1;
/// B's id in A's tables.
pub const PEER_B: PeerId = 2;
/// A's overlay IPv4 address.
pub const A_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
/// B's overlay IPv4 address.
pub const B_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
/// A's overlay IPv6 address.
pub const A_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
/// B's overlay IPv6 address.
pub const B_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
/// Local index of the first session on A (B's remote index).
pub const A_INDEX: u32 = 0xA000_0001;
/// Local index of the first session on B (A's remote index).
pub const B_INDEX: u32 = 0xB000_0001;
/// Epoch of the fake clock in these tests (the sessions' creation time).
pub const T0: Duration = Duration::from_secs(1000);

/// One worker with its fake backend and its channels.
pub struct Node {
    /// The worker.
    pub worker: Worker<FakeIo>,
    /// Its backend's queues.
    pub wire: Wire,
    /// Table changes.
    pub cmd: Sender<Command>,
    /// Events it emitted (never a control datagram).
    pub events: Receiver<Event>,
    /// Control datagrams it passed up.
    pub control: Receiver<Event>,
    /// Its published counters.
    pub counters: Arc<WorkerCounters>,
    /// Its per-peer counters.
    pub peer_counters: PeerCounterRegistry,
    /// Its underlay address.
    pub addr: SocketAddr,
}

/// Queue sizes and limits of a test [`Node`].
#[derive(Clone, Copy, Debug)]
pub struct NodeOptions {
    /// Bound of the event queue.
    pub event_queue: usize,
    /// Bound of the control-datagram queue.
    pub control_queue: usize,
    /// Control datagram rate limits.
    pub control_limits: ControlLimits,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            event_queue: 64,
            control_queue: 256,
            control_limits: ControlLimits::DEFAULT,
        }
    }
}

impl Node {
    /// A worker over a fresh fake backend.
    pub fn new(id: usize, cfg: FakeConfig, addr: SocketAddr) -> Self {
        Self::with_options(id, cfg, addr, NodeOptions::default())
    }

    /// A worker over a fresh fake backend, with `opts`.
    pub fn with_options(id: usize, cfg: FakeConfig, addr: SocketAddr, opts: NodeOptions) -> Self {
        let vnet_hdr = cfg.vnet_hdr;
        let (io, wire) = fake(cfg);
        let (cmd, commands) = unbounded();
        let (events_tx, events) = bounded(opts.event_queue);
        let (control_tx, control) = bounded(opts.control_queue);
        let counters = Arc::new(WorkerCounters::default());
        let peer_counters: PeerCounterRegistry = Arc::new(Mutex::new(Vec::new()));
        let worker = Worker::new(
            io,
            WorkerSetup {
                id,
                vnet_hdr,
                commands,
                events: events_tx,
                control: control_tx,
                control_limits: opts.control_limits,
                counters: Arc::clone(&counters),
                peer_counters: Arc::clone(&peer_counters),
                clock,
            },
        );
        Self {
            worker,
            wire,
            cmd,
            events,
            control,
            counters,
            peer_counters,
            addr,
        }
    }

    /// Sends a table change (applied at the start of the next turn).
    pub fn command(&self, c: Command) {
        self.cmd.send(c).expect("worker alive");
    }

    /// One loop turn.
    pub fn turn(&mut self) {
        self.worker.turn().expect("the fake backend never fails");
    }

    /// Last published counters.
    pub fn totals(&self) -> WorkerTotals {
        self.counters.snapshot()
    }

    /// Drops counted under `cause`.
    pub fn drops(&self, cause: DropCause) -> u64 {
        self.totals().drops[cause as usize]
    }

    /// Drops this node's worker counted against `peer` under `cause` (0 if it never saw it).
    pub fn peer_drops(&self, peer: PeerId, cause: DropCause) -> u64 {
        self.peer_counters
            .lock()
            .expect("registry")
            .iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, c)| c.drops[cause as usize].load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// Every drop counter that is not zero, by name (for assertion messages).
    pub fn nonzero_drops(&self) -> Vec<(&'static str, u64)> {
        let t = self.totals();
        DropCause::ALL
            .iter()
            .filter(|c| t.drops[**c as usize] != 0)
            .map(|c| (c.name(), t.drops[*c as usize]))
            .collect()
    }

    /// Events emitted so far (drained).
    pub fn take_events(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Events emitted so far other than `SessionConfirmed` (drained; for tests about other
    /// events, which key confirmation of the harness's sessions would otherwise interleave).
    pub fn take_events_but_confirmations(&self) -> Vec<Event> {
        self.events
            .try_iter()
            .filter(|e| !matches!(e, Event::SessionConfirmed { .. }))
            .collect()
    }

    /// Control datagrams passed up so far (drained).
    pub fn take_control(&self) -> Vec<Event> {
        self.control.try_iter().collect()
    }

    /// Asserts the engine kept the ownership rules of the backend.
    pub fn assert_ownership_kept(&self) {
        let (n, first) = self.wire.violations();
        assert_eq!(n, 0, "ownership rule broken: {first:?}");
        assert_eq!(
            self.wire.refused_lends(),
            0,
            "engine asked to borrow a buffer it did not own"
        );
    }
}

/// Test keys of a session pair: (A's, B's). A sends with what B receives with.
pub fn keys(seed: u8) -> (SessionKeys, SessionKeys) {
    let k1 = [seed; 32];
    let k2 = [seed ^ 0xff; 32];
    (
        SessionKeys {
            cipher: Cipher::Aes256Gcm,
            send: k1,
            recv: k2,
        },
        SessionKeys {
            cipher: Cipher::Aes256Gcm,
            send: k2,
            recv: k1,
        },
    )
}

/// A session on A (local `a_index`) and its counterpart on B (local `b_index`).
pub fn session_pair(
    a_index: u32,
    b_index: u32,
    seed: u8,
    created: Duration,
    limits: Limits,
) -> (Arc<Session>, Arc<Session>) {
    let (ka, kb) = keys(seed);
    let a = Session::new(a_index, b_index, PEER_B, &ka, created, limits).expect("valid key");
    let b = Session::new(b_index, a_index, PEER_A, &kb, created, limits).expect("valid key");
    (Arc::new(a), Arc::new(b))
}

/// Workers A and B wired back to back.
pub struct Pair {
    /// Worker A (overlay 100.64.0.1 / fd00::1).
    pub a: Node,
    /// Worker B (overlay 100.64.0.2 / fd00::2).
    pub b: Node,
    /// When set, B sees A's datagrams coming from this address (A roamed, or a NAT rebound).
    pub a_seen_from: Option<SocketAddr>,
    /// Datagrams sent to an address that is neither node.
    pub lost: u64,
}

/// Upper bound on pump rounds (each round: a turn of A, a turn of B, transfers).
const MAX_ROUNDS: usize = 256;

impl Pair {
    /// A and B with routes and endpoints set and a `Current` session on each side, created
    /// at [`T0`] with `limits`; the clock is set to [`T0`].
    pub fn new(cfg: FakeConfig, limits: Limits) -> Self {
        let pair = Self::without_sessions(cfg);
        let (sa, sb) = session_pair(A_INDEX, B_INDEX, 7, T0, limits);
        pair.install(sa, Slot::Current, sb, Slot::Current);
        pair
    }

    /// A and B with routes and endpoints but no session.
    pub fn without_sessions(cfg: FakeConfig) -> Self {
        Self::without_sessions_with(cfg, NodeOptions::default())
    }

    /// [`Pair::without_sessions`] with `opts` for both nodes.
    pub fn without_sessions_with(cfg: FakeConfig, opts: NodeOptions) -> Self {
        set_clock(T0);
        let a = Node::with_options(0, cfg.clone(), A_ADDR, opts);
        let b = Node::with_options(1, cfg, B_ADDR, opts);
        a.command(Command::SetEndpoint {
            peer: PEER_B,
            addr: B_ADDR,
        });
        a.command(Command::SetRoutes {
            peer: PEER_B,
            prefixes: Arc::from(vec![(B_V4, 32), (B_V6, 128)]),
        });
        b.command(Command::SetEndpoint {
            peer: PEER_A,
            addr: A_ADDR,
        });
        b.command(Command::SetRoutes {
            peer: PEER_A,
            prefixes: Arc::from(vec![(A_V4, 32), (A_V6, 128)]),
        });
        Self {
            a,
            b,
            a_seen_from: None,
            lost: 0,
        }
    }

    /// Installs `sa` on A and `sb` on B.
    pub fn install(&self, sa: Arc<Session>, slot_a: Slot, sb: Arc<Session>, slot_b: Slot) {
        self.a.command(Command::InstallSession {
            peer: PEER_B,
            slot: slot_a,
            session: sa,
        });
        self.b.command(Command::InstallSession {
            peer: PEER_A,
            slot: slot_b,
            session: sb,
        });
    }

    /// Moves completed sends of each node to the other's socket; returns how many moved.
    pub fn transfer(&mut self) -> usize {
        let mut moved = 0;
        let mut lost = 0;
        let a_src = self.a_seen_from.unwrap_or(self.a.addr);
        let (a, b) = (&self.a, &self.b);
        a.wire.drain_udp(|dst, bytes, seg| {
            if dst == b.addr {
                b.wire
                    .inject_udp(a_src, bytes, seg.map_or(bytes.len(), usize::from));
                moved += 1;
            } else {
                lost += 1;
            }
        });
        b.wire.drain_udp(|dst, bytes, seg| {
            if dst == a.addr || Some(dst) == self.a_seen_from {
                a.wire
                    .inject_udp(b.addr, bytes, seg.map_or(bytes.len(), usize::from));
                moved += 1;
            } else {
                lost += 1;
            }
        });
        self.lost += lost;
        moved
    }

    /// Runs both workers and carries datagrams between them until nothing is left in flight.
    /// TUN writes stay in each node's wire for the test to read. Allocates nothing itself.
    pub fn pump(&mut self) {
        for _ in 0..MAX_ROUNDS {
            self.a.turn();
            self.b.turn();
            let moved = self.transfer();
            if moved == 0 && self.a.wire.idle() && self.b.wire.idle() {
                return;
            }
        }
        panic!("pump did not settle in {MAX_ROUNDS} rounds");
    }

    /// Turns each worker once without carrying anything: applies queued commands.
    pub fn settle_commands(&mut self) {
        self.a.turn();
        self.b.turn();
    }

    /// Asserts both engines kept the ownership rules and, everything delivered, hold no frame.
    pub fn assert_clean(&self) {
        for n in [&self.a, &self.b] {
            n.assert_ownership_kept();
            assert!(n.wire.idle(), "traffic still queued");
            assert_eq!(n.wire.frames_in_use(), 0, "a frame leaked");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Packets

/// Textbook RFC 1071 sum over big-endian words, folded, not complemented.
pub fn naive_sum(parts: &[&[u8]]) -> u16 {
    let mut s: u64 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                None => odd = Some(b),
                Some(hi) => s += u64::from(u16::from_be_bytes([hi, b])),
            }
        }
    }
    if let Some(hi) = odd {
        s += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize) -> Vec<u8> {
    let mut ph = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&[0, proto]);
            ph.extend_from_slice(&(l4_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&(l4_len as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    ph
}

/// An IP header for `l4_len` bytes of `proto` from `src` to `dst` (IPv4 with a valid header
/// checksum).
fn ip_header(src: IpAddr, dst: IpAddr, proto: u8, l4_len: usize, id: u16) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
            h[4..6].copy_from_slice(&id.to_be_bytes());
            h[6] = 0x40;
            h[8] = 64;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = !naive_sum(&[&h]);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            h[6] = proto;
            h[7] = 64;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            h
        }
        _ => panic!("mixed address families"),
    }
}

/// Deterministic payload bytes, not periodic over short spans.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// A complete UDP packet with valid checksums and `payload_len` bytes of payload.
pub fn udp_packet(src: IpAddr, dst: IpAddr, payload_len: usize, seed: u32) -> Vec<u8> {
    let l4_len = 8 + payload_len;
    let mut l4 = vec![0u8; 8];
    l4[0..2].copy_from_slice(&5353u16.to_be_bytes());
    l4[2..4].copy_from_slice(&9u16.to_be_bytes());
    l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    l4.extend_from_slice(&pattern(seed, payload_len));
    let c = !naive_sum(&[&pseudo(src, dst, 17, l4_len), &l4]);
    l4[6..8].copy_from_slice(&c.to_be_bytes());
    let mut p = ip_header(src, dst, 17, l4_len, seed as u16);
    p.extend_from_slice(&l4);
    p
}

/// TCP flags used below.
pub const TCP_ACK: u8 = 0x10;

/// A TCP packet from `src:40000` to `dst:443` with `payload` at sequence `seq`. With
/// `partial_csum` the checksum field holds only the pseudo-header sum, as the kernel leaves
/// it for an offloaded packet (NEEDS_CSUM); otherwise it is complete.
pub fn tcp_packet(
    src: IpAddr,
    dst: IpAddr,
    seq: u32,
    payload: &[u8],
    partial_csum: bool,
) -> Vec<u8> {
    let l4_len = 20 + payload.len();
    let mut l4 = vec![0u8; 20];
    l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&443u16.to_be_bytes());
    l4[4..8].copy_from_slice(&seq.to_be_bytes());
    l4[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    l4[12] = 5 << 4;
    l4[13] = TCP_ACK;
    l4[14..16].copy_from_slice(&512u16.to_be_bytes());
    l4.extend_from_slice(payload);
    let ph = pseudo(src, dst, 6, l4_len);
    let c = if partial_csum {
        naive_sum(&[&ph])
    } else {
        !naive_sum(&[&ph, &l4])
    };
    l4[16..18].copy_from_slice(&c.to_be_bytes());
    let mut p = ip_header(src, dst, 6, l4_len, (seq >> 3) as u16);
    p.extend_from_slice(&l4);
    p
}

/// `pkt` behind an all-zero (GSO_NONE, checksums complete) virtio-net header.
pub fn with_vnet_none(pkt: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; VNET_HDR_LEN];
    v.extend_from_slice(pkt);
    v
}

/// A TSO super-packet as a TUN read with offloads yields it: virtio-net header
/// (GSO_TCPV4/6, NEEDS_CSUM, `gso_size`) then the packet with a partial checksum.
pub fn tso_read(v6: bool, seq: u32, payload: &[u8], gso_size: u16) -> Vec<u8> {
    let (src, dst, iph) = if v6 {
        (A_V6, B_V6, 40)
    } else {
        (A_V4, B_V4, 20)
    };
    let pkt = tcp_packet(src, dst, seq, payload, true);
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: if v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        },
        hdr_len: (iph + 20) as u16,
        gso_size,
        csum_start: iph as u16,
        csum_offset: 16,
    };
    let mut v = vec![0u8; VNET_HDR_LEN];
    hdr.emit(&mut v).expect("10 bytes");
    v.extend_from_slice(&pkt);
    v
}

/// The wire-sized IP packets a TUN read/write with a virtio-net header stands for.
pub fn segments_of(read: &[u8]) -> Vec<Vec<u8>> {
    let hdr = VirtioNetHdr::parse(read).expect("vnet header");
    let pkt = &read[VNET_HDR_LEN..];
    if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE && !hdr.needs_csum() {
        return vec![pkt.to_vec()];
    }
    let mut seg = Segmenter::new(&hdr, pkt).expect("valid super-packet");
    let mut out = vec![0u8; seg.max_segment_len()];
    let mut v = Vec::new();
    while let Some(r) = seg.next_into(&mut out) {
        v.push(out[..r.expect("segment fits")].to_vec());
    }
    v
}

/// The TCP payload of a plain IPv4/IPv6 TCP packet (no IP options or extension headers).
pub fn tcp_payload(pkt: &[u8]) -> &[u8] {
    let iph = if pkt[0] >> 4 == 4 {
        usize::from(pkt[0] & 0xf) * 4
    } else {
        40
    };
    let doff = usize::from(pkt[iph + 12] >> 4) * 4;
    &pkt[iph + doff..]
}

/// Asserts the IPv4 header checksum and the TCP/UDP checksum of a complete packet verify.
pub fn assert_checksums(pkt: &[u8]) {
    let (iph, proto, src, dst) = if pkt[0] >> 4 == 4 {
        let iph = usize::from(pkt[0] & 0xf) * 4;
        assert_eq!(naive_sum(&[&pkt[..iph]]), 0xffff, "IPv4 header checksum");
        let s: [u8; 4] = pkt[12..16].try_into().expect("4 bytes");
        let d: [u8; 4] = pkt[16..20].try_into().expect("4 bytes");
        (iph, pkt[9], IpAddr::from(s), IpAddr::from(d))
    } else {
        let s: [u8; 16] = pkt[8..24].try_into().expect("16 bytes");
        let d: [u8; 16] = pkt[24..40].try_into().expect("16 bytes");
        (40, pkt[6], IpAddr::from(s), IpAddr::from(d))
    };
    let ph = pseudo(src, dst, proto, pkt.len() - iph);
    assert_eq!(naive_sum(&[&ph, &pkt[iph..]]), 0xffff, "L4 checksum");
}
