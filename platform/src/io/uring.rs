//! The io_uring backend: one ring per worker, created on (and used only by) that worker's
//! thread (`SINGLE_ISSUER`, plus `DEFER_TASKRUN` where the kernel has it).
//!
//! Receives never name a buffer: the TUN queue is read with one multishot read and the UDP
//! socket with one multishot recvmsg, each drawing from its own provided-buffer ring (buffer
//! groups 0 and 1) over the worker's frame memory. Sends (UDP `sendmsg` with a `UDP_SEGMENT`
//! control message) and TUN writes are queued as SQEs and go to the kernel together with the
//! wait for the next completions: one `io_uring_enter` per loop turn serves a whole batch.
//!
//! Ownership: a frame is either in a buffer ring (the kernel may write it at any time), held by
//! the engine, held by in-flight operations, or free in the transmit pool. [`UringIo::buf_mut`]
//! lends a frame only while the engine holds it and no operation does, which is what keeps the
//! shared memory sound. The ring is dropped before the memory and the fds (field order), and the
//! kernel cancels outstanding requests when the ring closes.
//!
//! Must never: block the thread without a timeout, allocate per packet, or lend a frame the
//! kernel may touch.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use crate::slab::Slab;
use crate::udp::UdpSock;

use super::{BufId, IoStats, PacketIo, Received, Source, PACKET_OFFSET, TAILROOM, VNET_HDR_LEN};

/// Sizing and features of one worker's ring.
#[derive(Clone, Debug)]
pub struct UringConfig {
    /// Frames in the TUN receive ring (a power of two).
    pub tun_frames: u16,
    /// Frames in the UDP receive ring (a power of two).
    pub udp_frames: u16,
    /// Frames for building outgoing datagrams.
    pub tx_frames: u32,
    /// Size of every frame: room for a 64 KiB GSO/GRO batch when offloads are on.
    pub frame_len: usize,
    /// TUN reads start with a virtio-net header.
    pub vnet_hdr: bool,
    /// UDP GSO may be used.
    pub gso: bool,
    /// In-flight send/write operations at most.
    pub max_ops: u32,
}

impl UringConfig {
    /// Sizes for a worker with TUN/UDP offloads on (~96 KiB frames, ~19 MiB per worker).
    pub fn offload() -> Self {
        Self {
            tun_frames: 64,
            udp_frames: 64,
            tx_frames: 64,
            // A 64 KiB GRO batch plus the recvmsg header; and a TSO super-packet split into
            // sealed datagrams (each segment gains its IP/TCP header and 32 bytes of framing)
            // fits one transmit frame for any segment size above ~300 bytes.
            frame_len: 96 * 1024 + 512,
            vnet_hdr: true,
            gso: true,
            max_ops: 512,
        }
    }
}

const KIND_TUN_READ: u64 = 1;
const KIND_UDP_RECV: u64 = 2;
const KIND_OP: u64 = 3;
const TUN_GROUP: u16 = 0;
const UDP_GROUP: u16 = 1;
/// Bytes reserved for the sender's address in each multishot recvmsg buffer.
const NAME_LEN: u32 = size_of::<libc::sockaddr_in6>() as u32;
/// Bytes reserved for control messages (the UDP_GRO segment size).
const CONTROL_LEN: usize = 32;
/// Single-shot TUN reads kept in flight where multishot read is missing.
const TUN_SINGLE_READS: usize = 16;

/// Who holds a frame right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// In a provided-buffer ring: the kernel may write it.
    Ring,
    /// In the transmit pool.
    Free,
    /// Engine and/or operations hold it (see `FrameState`).
    Held,
}

#[derive(Clone, Copy, Debug)]
struct FrameState {
    holder: Holder,
    engine: bool,
    ops: u16,
}

/// The frames live in the worker's [`Slab`]: one page-aligned mapping the kernel reads and
/// writes through the buffer rings and the queued operations. This backend tracks who holds
/// each frame itself (ring, engine, operations), so it uses the slab for memory only.
struct FrameMem {
    slab: Slab,
    frame_len: usize,
}

impl FrameMem {
    fn new(frames: usize, frame_len: usize) -> io::Result<Self> {
        let slab = Slab::new(frame_len, frames).map_err(|e| io::Error::other(e.to_string()))?;
        let frame_len = slab.frame_size();
        Ok(Self { slab, frame_len })
    }

    fn addr(&self, frame: u32) -> *mut u8 {
        // In bounds for every frame index below the slab's frame count, which is all callers
        // pass; wrapping_add keeps this safe code either way.
        self.slab
            .base_ptr()
            .wrapping_add(frame as usize * self.frame_len)
    }
}

/// A provided-buffer ring: the kernel takes buffers from its head, we add at the tail.
struct BufRing {
    entries: NonNull<BufRingEntry>,
    layout: Layout,
    mask: u16,
    tail: u16,
    /// Buffers added since the tail was last published.
    unpublished: u16,
    /// Buffers the kernel can take right now (published or not).
    available: u16,
}

impl BufRing {
    fn new(entries: u16) -> io::Result<Self> {
        if !entries.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring size must be a power of two",
            ));
        }
        let layout = Layout::from_size_align(entries as usize * size_of::<BufRingEntry>(), 4096)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: non-zero size (entries ≥ 1 since it is a power of two).
        let raw = unsafe { alloc_zeroed(layout) };
        let entries_ptr = NonNull::new(raw.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Self {
            entries: entries_ptr,
            layout,
            mask: entries - 1,
            tail: 0,
            unpublished: 0,
            available: 0,
        })
    }

    fn push(&mut self, addr: *mut u8, len: u32, bid: u16) {
        let slot = (self.tail.wrapping_add(self.unpublished) & self.mask) as usize;
        // SAFETY: `slot` ≤ mask < number of entries; the kernel reads only entries between
        // its head and the published tail, and this slot lies beyond the published tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(slot) };
        entry.set_addr(addr as u64);
        entry.set_len(len);
        entry.set_bid(bid);
        self.unpublished += 1;
        self.available += 1;
    }

    fn publish(&mut self) {
        if self.unpublished == 0 {
            return;
        }
        self.tail = self.tail.wrapping_add(self.unpublished);
        self.unpublished = 0;
        // SAFETY: the tail field overlays entry 0's reserved field (io_uring ABI), the memory
        // is live and aligned; the kernel reads it with acquire semantics.
        let tail = unsafe { &*BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this exact layout.
        unsafe { dealloc(self.entries.as_ptr().cast(), self.layout) }
    }
}

/// Storage an in-flight send or write points into; lives in a boxed slice that never moves.
struct OpSlot {
    frame: u32,
    msg: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_in6,
    control: [u64; 4],
}

/// The io_uring backend for one worker. Create it on the thread that will use it.
pub struct UringIo {
    // Field order matters: the ring closes (cancelling requests) before memory and fds go.
    ring: IoUring,
    tun_ring: BufRing,
    udp_ring: BufRing,
    mem: FrameMem,
    ops: Box<[OpSlot]>,
    tun: OwnedFd,
    udp: UdpSock,
    udp_v6: bool,
    recv_msg: Box<libc::msghdr>,
    frames: Box<[FrameState]>,
    free_tx: Vec<u32>,
    free_ops: Vec<u32>,
    stash: VecDeque<Received>,
    cfg: UringConfig,
    tun_armed: usize,
    udp_armed: bool,
    multishot_read: bool,
    gso: bool,
    stats: IoStats,
    queued: usize,
}

impl Drop for UringIo {
    /// Cancels every request and reaps the completions before the ring closes. In-flight
    /// requests (above all the multishot receives) hold references to the TUN queue and the
    /// socket; left to the kernel's asynchronous ring teardown, the data port would stay bound
    /// for a moment after the process exits, and an immediate restart would find it "in use".
    fn drop(&mut self) {
        let any = io_uring::types::CancelBuilder::any();
        let _ = self
            .ring
            .submitter()
            .register_sync_cancel(Some(Timespec::new().nsec(200_000_000)), any);
        for _ in 0..20 {
            let in_flight = self.tun_armed > 0
                || self.udp_armed
                || self.free_ops.len() < self.cfg.max_ops as usize;
            if !in_flight {
                break;
            }
            let ts = Timespec::new().nsec(10_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
            // Reaped receives are ours now; nothing will use them.
            self.stash.clear();
        }
    }
}

/// What the kernel offers, probed once.
#[derive(Clone, Copy, Debug, Default)]
pub struct UringFeatures {
    /// `IORING_SETUP_DEFER_TASKRUN` accepted.
    pub defer_taskrun: bool,
    /// `IORING_OP_READ_MULTISHOT` present (kernel 6.7+).
    pub multishot_read: bool,
}

/// Checks that this kernel and process can run the io_uring backend (ring set-up, the opcodes
/// it needs, extended wait arguments), without opening any device.
pub fn probe() -> io::Result<UringFeatures> {
    let (_ring, features) = build_ring()?;
    Ok(features)
}

fn build_ring() -> io::Result<(IoUring, UringFeatures)> {
    let entries = 1024;
    let mut features = UringFeatures::default();
    let ring = match IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(8192)
        .build(entries)
    {
        Ok(r) => {
            features.defer_taskrun = true;
            r
        }
        Err(_) => IoUring::builder()
            .setup_single_issuer()
            .setup_cqsize(8192)
            .build(entries)?,
    };
    if !ring.params().is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks IORING_FEAT_EXT_ARG (kernel < 5.11)",
        ));
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    features.multishot_read = probe.is_supported(opcode::ReadMulti::CODE);
    for (code, name) in [
        (opcode::RecvMsg::CODE, "recvmsg"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::Write::CODE, "write"),
        (opcode::Read::CODE, "read"),
    ] {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks the {name} opcode"),
            ));
        }
    }
    Ok((ring, features))
}

impl UringIo {
    /// Builds the ring, the buffer rings and the frame memory, and arms the receives.
    /// `tun` must be a non-blocking TUN queue fd; UDP GSO is used only if `udp` has it too.
    pub fn new(tun: OwnedFd, udp: UdpSock, cfg: UringConfig) -> io::Result<(Self, UringFeatures)> {
        let (ring, features) = build_ring()?;

        let total = cfg.tun_frames as usize + cfg.udp_frames as usize + cfg.tx_frames as usize;
        let mem = FrameMem::new(total, cfg.frame_len)?;
        let mut tun_ring = BufRing::new(cfg.tun_frames)?;
        let mut udp_ring = BufRing::new(cfg.udp_frames)?;
        // SAFETY: the ring memory lives in `tun_ring`/`udp_ring`, which are dropped after `ring`
        // (field order), so it stays valid while registered.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                tun_ring.entries.as_ptr() as u64,
                cfg.tun_frames,
                TUN_GROUP,
                0,
            )?;
            ring.submitter().register_buf_ring_with_flags(
                udp_ring.entries.as_ptr() as u64,
                cfg.udp_frames,
                UDP_GROUP,
                0,
            )?;
        }
        let mut frames = vec![
            FrameState {
                holder: Holder::Ring,
                engine: false,
                ops: 0
            };
            total
        ]
        .into_boxed_slice();
        let tun_read_offset = tun_read_offset(cfg.vnet_hdr);
        for i in 0..cfg.tun_frames {
            let addr = mem.addr(u32::from(i)).wrapping_add(tun_read_offset);
            tun_ring.push(addr, tun_read_len(&cfg) as u32, i);
        }
        for i in 0..cfg.udp_frames {
            let frame = u32::from(cfg.tun_frames) + u32::from(i);
            udp_ring.push(mem.addr(frame), cfg.frame_len as u32, i);
        }
        tun_ring.publish();
        udp_ring.publish();
        let first_tx = u32::from(cfg.tun_frames) + u32::from(cfg.udp_frames);
        let mut free_tx = Vec::with_capacity(cfg.tx_frames as usize);
        for f in (first_tx..first_tx + cfg.tx_frames).rev() {
            if let Some(s) = frames.get_mut(f as usize) {
                s.holder = Holder::Free;
            }
            free_tx.push(f);
        }
        // SAFETY: an all-zero msghdr/sockaddr_in6/iovec is a valid (empty) value.
        let ops: Box<[OpSlot]> = (0..cfg.max_ops)
            .map(|_| unsafe {
                OpSlot {
                    frame: 0,
                    msg: zeroed(),
                    iov: zeroed(),
                    addr: zeroed(),
                    control: [0; 4],
                }
            })
            .collect();
        let free_ops = (0..cfg.max_ops).rev().collect();
        // SAFETY: as above, all-zero is a valid msghdr.
        let mut recv_msg: Box<libc::msghdr> = Box::new(unsafe { zeroed() });
        recv_msg.msg_namelen = NAME_LEN;
        recv_msg.msg_controllen = CONTROL_LEN as _;
        let udp_v6 = udp.local_addr().is_ipv6();
        let stash = VecDeque::with_capacity(total + 64);
        let gso = cfg.gso && udp.gso_enabled();
        let io = Self {
            ring,
            tun_ring,
            udp_ring,
            mem,
            ops,
            tun,
            udp,
            udp_v6,
            recv_msg,
            frames,
            free_tx,
            free_ops,
            stash,
            cfg,
            tun_armed: 0,
            udp_armed: false,
            multishot_read: features.multishot_read,
            gso,
            stats: IoStats::default(),
            queued: 0,
        };
        Ok((io, features))
    }

    fn push_sqe(&mut self, sqe: &squeue::Entry) {
        // SAFETY: every SQE we build points only into memory owned by `self` (frames, op slots,
        // the recv msghdr) that outlives the request, as the module comment explains.
        while unsafe { self.ring.submission().push(sqe) }.is_err() {
            // Submission queue full: hand what we have to the kernel and try again.
            self.stats.enters += 1;
            if self.ring.submit().is_err() {
                break;
            }
        }
        self.queued += 1;
    }

    fn arm_receives(&mut self) {
        self.tun_ring.publish();
        self.udp_ring.publish();
        if self.multishot_read {
            if self.tun_armed == 0 && self.tun_ring.available > 0 {
                let sqe = opcode::ReadMulti::new(Fd(self.tun.as_raw_fd()), 0, TUN_GROUP)
                    .build()
                    .user_data(KIND_TUN_READ << 32);
                self.push_sqe(&sqe);
                self.tun_armed = 1;
            }
        } else {
            while self.tun_armed < TUN_SINGLE_READS.min(self.tun_ring.available as usize) {
                let sqe = opcode::Read::new(
                    Fd(self.tun.as_raw_fd()),
                    std::ptr::null_mut(),
                    tun_read_len(&self.cfg) as u32,
                )
                .buf_group(TUN_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(KIND_TUN_READ << 32);
                self.push_sqe(&sqe);
                self.tun_armed += 1;
            }
        }
        if !self.udp_armed && self.udp_ring.available > 0 {
            let sqe = opcode::RecvMsgMulti::new(
                Fd(self.udp.as_raw_fd()),
                &*self.recv_msg as *const libc::msghdr,
                UDP_GROUP,
            )
            .build()
            .user_data(KIND_UDP_RECV << 32);
            self.push_sqe(&sqe);
            self.udp_armed = true;
        }
    }

    /// Moves every completion into the stash (receives) or finishes it (sends, writes).
    fn reap(&mut self) {
        const CHUNK: usize = 256;
        let mut batch: [(u64, i32, u32); CHUNK] = [(0, 0, 0); CHUNK];
        loop {
            let mut n = 0;
            {
                let mut cq = self.ring.completion();
                for cqe in &mut cq {
                    batch[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                    n += 1;
                    if n == CHUNK {
                        break;
                    }
                }
            }
            for &(user_data, res, flags) in &batch[..n] {
                self.complete(user_data, res, flags);
            }
            if n < CHUNK {
                break;
            }
        }
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) {
        let kind = user_data >> 32;
        let index = (user_data & 0xffff_ffff) as u32;
        match kind {
            KIND_TUN_READ => {
                if !self.multishot_read || !cqueue::more(flags) {
                    self.tun_armed = self.tun_armed.saturating_sub(1);
                }
                let Some(bid) = cqueue::buffer_select(flags) else {
                    if res == -libc::ENOBUFS {
                        self.stats.rx_no_buffer += 1;
                    }
                    return;
                };
                self.tun_ring.available = self.tun_ring.available.saturating_sub(1);
                let frame = u32::from(bid);
                mark_engine(&mut self.frames, frame);
                if res <= 0 {
                    self.recycle_rx(frame);
                    return;
                }
                let start = tun_read_offset(self.cfg.vnet_hdr);
                self.stats.rx_completions += 1;
                self.stash.push_back(Received {
                    buf: frame,
                    data: start..start + res as usize,
                    source: Source::Tun,
                });
            }
            KIND_UDP_RECV => {
                if !cqueue::more(flags) {
                    self.udp_armed = false;
                }
                let Some(bid) = cqueue::buffer_select(flags) else {
                    if res == -libc::ENOBUFS {
                        self.stats.rx_no_buffer += 1;
                    }
                    return;
                };
                self.udp_ring.available = self.udp_ring.available.saturating_sub(1);
                let frame = u32::from(self.cfg.tun_frames) + u32::from(bid);
                mark_engine(&mut self.frames, frame);
                let parsed = if res > 0 {
                    // SAFETY: the kernel just filled `res` bytes of this frame, which left
                    // the ring and is ours now; nothing else aliases it.
                    let bytes =
                        unsafe { std::slice::from_raw_parts(self.mem.addr(frame), res as usize) };
                    parse_recvmsg(bytes, &self.recv_msg)
                } else {
                    None
                };
                match parsed {
                    Some((src, data, segment_size, false)) => {
                        self.stats.rx_completions += 1;
                        self.stash.push_back(Received {
                            buf: frame,
                            data,
                            source: Source::Udp { src, segment_size },
                        });
                    }
                    other => {
                        if matches!(other, Some((.., true))) {
                            self.stats.rx_truncated += 1;
                        }
                        self.recycle_rx(frame);
                    }
                }
            }
            KIND_OP => {
                if res < 0 {
                    self.stats.tx_errors += 1;
                    let was_gso = self
                        .ops
                        .get(index as usize)
                        .is_some_and(|o| o.msg.msg_controllen > 0);
                    if res == -libc::EIO && was_gso {
                        // The path cannot do UDP GSO: stop using it for good, as
                        // wireguard-go does.
                        self.gso = false;
                    }
                }
                self.finish_op(index);
            }
            _ => {}
        }
    }

    fn recycle_rx(&mut self, frame: u32) {
        recycle_to_ring(
            &mut self.frames,
            &mut self.tun_ring,
            &mut self.udp_ring,
            &self.mem,
            &self.cfg,
            frame,
        );
    }

    fn finish_op(&mut self, op: u32) {
        let Some(slot) = self.ops.get(op as usize) else {
            return;
        };
        let frame = slot.frame;
        self.free_ops.push(op);
        if let Some(s) = self.frames.get_mut(frame as usize) {
            s.ops = s.ops.saturating_sub(1);
        }
        self.maybe_recycle(frame);
    }

    fn maybe_recycle(&mut self, frame: u32) {
        let Some(s) = self.frames.get(frame as usize).copied() else {
            return;
        };
        if s.holder != Holder::Held || s.engine || s.ops > 0 {
            return;
        }
        let rx_frames = u32::from(self.cfg.tun_frames) + u32::from(self.cfg.udp_frames);
        if frame < rx_frames {
            self.recycle_rx(frame);
        } else if let Some(s) = self.frames.get_mut(frame as usize) {
            s.holder = Holder::Free;
            self.free_tx.push(frame);
        }
    }

    /// Takes an op slot, waiting for completions if all are in flight.
    fn take_op(&mut self) -> Option<u32> {
        for _ in 0..64 {
            if let Some(op) = self.free_ops.pop() {
                return Some(op);
            }
            self.stats.enters += 1;
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.queued = 0;
            self.reap();
        }
        None
    }

    /// The engine holds `id` and no operation does: it may be lent out.
    fn lendable(&self, id: BufId) -> bool {
        self.frames
            .get(id as usize)
            .is_some_and(|s| s.holder == Holder::Held && s.engine && s.ops == 0)
    }

    fn engine_owns(&self, id: BufId) -> bool {
        self.frames
            .get(id as usize)
            .is_some_and(|s| s.holder == Holder::Held && s.engine)
    }
}

fn tun_read_offset(vnet_hdr: bool) -> usize {
    if vnet_hdr {
        PACKET_OFFSET - VNET_HDR_LEN
    } else {
        PACKET_OFFSET
    }
}

fn tun_read_len(cfg: &UringConfig) -> usize {
    cfg.frame_len - tun_read_offset(cfg.vnet_hdr) - TAILROOM
}

fn mark_engine(frames: &mut [FrameState], frame: u32) {
    if let Some(s) = frames.get_mut(frame as usize) {
        *s = FrameState {
            holder: Holder::Held,
            engine: true,
            ops: 0,
        };
    }
}

/// Gives a receive frame back to the ring it came from.
fn recycle_to_ring(
    frames: &mut [FrameState],
    tun_ring: &mut BufRing,
    udp_ring: &mut BufRing,
    mem: &FrameMem,
    cfg: &UringConfig,
    frame: u32,
) {
    let Some(s) = frames.get_mut(frame as usize) else {
        return;
    };
    s.holder = Holder::Ring;
    s.engine = false;
    s.ops = 0;
    let tun_frames = u32::from(cfg.tun_frames);
    if frame < tun_frames {
        let addr = mem.addr(frame).wrapping_add(tun_read_offset(cfg.vnet_hdr));
        tun_ring.push(addr, tun_read_len(cfg) as u32, frame as u16);
    } else {
        udp_ring.push(
            mem.addr(frame),
            cfg.frame_len as u32,
            (frame - tun_frames) as u16,
        );
    }
}

/// Splits a multishot recvmsg buffer into (source, payload range, GRO segment size, truncated).
fn parse_recvmsg(
    bytes: &[u8],
    msg: &libc::msghdr,
) -> Option<(SocketAddr, Range<usize>, usize, bool)> {
    let out = RecvMsgOut::parse(bytes, msg).ok()?;
    let src = sockaddr_from_bytes(out.name_data())?;
    let payload = out.payload_data();
    let start = (payload.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
    let len = payload.len();
    let truncated = out.is_payload_truncated();
    let segment_size = gro_segment_size(out.control_data()).unwrap_or(len).max(1);
    Some((src, start..start + len, segment_size, truncated))
}

/// Reads the UDP_GRO segment size out of a control-message buffer.
fn gro_segment_size(control: &[u8]) -> Option<usize> {
    let hdr_len = size_of::<libc::cmsghdr>();
    let mut off = 0usize;
    while off + hdr_len <= control.len() {
        // SAFETY: bounds checked just above; read_unaligned copes with any alignment.
        let hdr: libc::cmsghdr =
            unsafe { std::ptr::read_unaligned(control.as_ptr().add(off).cast()) };
        let len = hdr.cmsg_len as usize;
        if len < hdr_len || off + len > control.len() {
            return None;
        }
        if hdr.cmsg_level == libc::SOL_UDP && hdr.cmsg_type == libc::UDP_GRO {
            let data = control.get(off + hdr_len..off + len)?;
            let v = match data.len() {
                n if n >= 4 => u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize,
                n if n >= 2 => u16::from_ne_bytes([data[0], data[1]]) as usize,
                _ => return None,
            };
            return Some(v);
        }
        off += (len + 7) & !7;
    }
    None
}

fn sockaddr_from_bytes(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    match i32::from(family) {
        libc::AF_INET if name.len() >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: length checked; read_unaligned copes with alignment.
            let sin: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(name.as_ptr().cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if name.len() >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: length checked; read_unaligned copes with alignment.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read_unaligned(name.as_ptr().cast()) };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            // Dual-stack sockets report IPv4 peers as v4-mapped addresses.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, sin6.sin6_scope_id)),
            })
        }
        _ => None,
    }
}

/// Writes `dst` as a sockaddr for a socket of the given family; returns its length.
fn fill_sockaddr(dst: SocketAddr, v6_socket: bool, out: &mut libc::sockaddr_in6) -> u32 {
    // SAFETY: all-zero is a valid sockaddr_in6.
    *out = unsafe { zeroed() };
    match dst {
        SocketAddr::V4(a) if !v6_socket => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in is smaller than sockaddr_in6, both plain data.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_in6).cast(), sin) };
            size_of::<libc::sockaddr_in>() as u32
        }
        _ => {
            let (ip, port, scope) = match dst {
                SocketAddr::V4(a) => (a.ip().to_ipv6_mapped(), a.port(), 0),
                SocketAddr::V6(a) => (*a.ip(), a.port(), a.scope_id()),
            };
            out.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            out.sin6_port = port.to_be();
            out.sin6_addr.s6_addr = ip.octets();
            out.sin6_scope_id = scope;
            size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

impl PacketIo for UringIo {
    fn submit_and_wait(&mut self, timeout: Duration, rx: &mut Vec<Received>) -> io::Result<()> {
        self.arm_receives();
        if self.stash.is_empty() {
            let ts = Timespec::from(timeout);
            let args = SubmitArgs::new().timespec(&ts);
            self.stats.enters += 1;
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
        } else if self.queued > 0 {
            self.stats.enters += 1;
            self.ring.submit()?;
        }
        self.queued = 0;
        self.reap();
        while rx.len() < rx.capacity() {
            match self.stash.pop_front() {
                Some(r) => rx.push(r),
                None => break,
            }
        }
        Ok(())
    }

    fn buf_mut(&mut self, id: BufId) -> Option<&mut [u8]> {
        if !self.lendable(id) {
            return None;
        }
        // SAFETY: the engine holds this frame and no operation does, so the kernel cannot
        // touch it; the &mut borrow of self prevents a second lending.
        Some(unsafe { std::slice::from_raw_parts_mut(self.mem.addr(id), self.mem.frame_len) })
    }

    fn buf_pair(&mut self, src: BufId, dst: BufId) -> Option<(&[u8], &mut [u8])> {
        if src == dst || !self.lendable(src) || !self.lendable(dst) {
            return None;
        }
        let len = self.mem.frame_len;
        // SAFETY: both frames are held by the engine with no operation in flight, so the kernel
        // cannot touch them; they are different frames, so the slices do not overlap; the &mut
        // borrow of self prevents further lending while they live.
        unsafe {
            Some((
                std::slice::from_raw_parts(self.mem.addr(src), len),
                std::slice::from_raw_parts_mut(self.mem.addr(dst), len),
            ))
        }
    }

    fn alloc(&mut self) -> Option<BufId> {
        let f = self.free_tx.pop()?;
        mark_engine(&mut self.frames, f);
        Some(f)
    }

    fn buf_len(&self) -> usize {
        self.mem.frame_len
    }

    fn release(&mut self, id: BufId) {
        if !self.engine_owns(id) {
            debug_assert!(false, "release of a buffer the engine does not hold");
            return;
        }
        if let Some(s) = self.frames.get_mut(id as usize) {
            s.engine = false;
        }
        self.maybe_recycle(id);
    }

    fn send_udp(
        &mut self,
        id: BufId,
        data: Range<usize>,
        dst: SocketAddr,
        segment_size: Option<u16>,
    ) {
        if !self.engine_owns(id) || data.end > self.mem.frame_len || data.start > data.end {
            self.stats.tx_errors += 1;
            return;
        }
        let Some(op) = self.take_op() else {
            self.stats.tx_errors += 1;
            return;
        };
        let v6 = self.udp_v6;
        let base = self.mem.addr(id);
        let use_gso = self.gso && segment_size.is_some_and(|s| (s as usize) < data.len());
        let Some(slot) = self.ops.get_mut(op as usize) else {
            return;
        };
        slot.frame = id;
        let addr_len = fill_sockaddr(dst, v6, &mut slot.addr);
        slot.iov = libc::iovec {
            iov_base: base.wrapping_add(data.start).cast(),
            iov_len: data.len(),
        };
        // SAFETY: all-zero is a valid msghdr.
        slot.msg = unsafe { zeroed() };
        slot.msg.msg_name = (&mut slot.addr as *mut libc::sockaddr_in6).cast();
        slot.msg.msg_namelen = addr_len;
        slot.msg.msg_iov = &mut slot.iov;
        slot.msg.msg_iovlen = 1;
        if let (true, Some(seg)) = (use_gso, segment_size) {
            slot.control = [0; 4];
            slot.msg.msg_control = slot.control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure size computation.
            slot.msg.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
            // SAFETY: msg_control points at 32 bytes, enough for one cmsg of a u16; the
            // CMSG_* helpers stay within msg_controllen.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&slot.msg);
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), seg);
            }
        }
        let sqe = opcode::SendMsg::new(Fd(self.udp.as_raw_fd()), &slot.msg)
            .build()
            .user_data((KIND_OP << 32) | u64::from(op));
        if let Some(s) = self.frames.get_mut(id as usize) {
            s.ops += 1;
        }
        self.stats.tx_ops += 1;
        self.push_sqe(&sqe);
    }

    fn write_tun(&mut self, id: BufId, data: Range<usize>) {
        if !self.engine_owns(id) || data.end > self.mem.frame_len || data.start > data.end {
            self.stats.tx_errors += 1;
            return;
        }
        let Some(op) = self.take_op() else {
            self.stats.tx_errors += 1;
            return;
        };
        let ptr = self.mem.addr(id).wrapping_add(data.start);
        if let Some(slot) = self.ops.get_mut(op as usize) {
            slot.frame = id;
            slot.msg.msg_controllen = 0;
        }
        let sqe = opcode::Write::new(Fd(self.tun.as_raw_fd()), ptr, data.len() as u32)
            .build()
            .user_data((KIND_OP << 32) | u64::from(op));
        if let Some(s) = self.frames.get_mut(id as usize) {
            s.ops += 1;
        }
        self.stats.tx_ops += 1;
        self.push_sqe(&sqe);
    }

    fn gso_enabled(&self) -> bool {
        self.gso
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gro_segment_size_is_read_from_a_control_message() {
        let mut buf = [0u8; 32];
        let hdr_len = size_of::<libc::cmsghdr>();
        // SAFETY: writing a cmsghdr into a 32-byte buffer.
        unsafe {
            let hdr = libc::cmsghdr {
                cmsg_len: (hdr_len + 4) as _,
                cmsg_level: libc::SOL_UDP,
                cmsg_type: libc::UDP_GRO,
            };
            std::ptr::write_unaligned(buf.as_mut_ptr().cast(), hdr);
        }
        buf[hdr_len..hdr_len + 4].copy_from_slice(&1452u32.to_ne_bytes());
        assert_eq!(gro_segment_size(&buf), Some(1452));
        assert_eq!(gro_segment_size(&[0u8; 3]), None);
        // A cmsg_len running past the buffer is refused, not read.
        buf[0] = 200;
        assert_eq!(gro_segment_size(&buf), None);
    }

    #[test]
    fn v4_mapped_sources_come_back_as_v4() {
        let mut raw = [0u8; 28];
        // SAFETY: all-zero is a valid sockaddr_in6.
        let mut sin6: libc::sockaddr_in6 = unsafe { zeroed() };
        fill_sockaddr("198.51.100.7:4000".parse().unwrap(), true, &mut sin6);
        // SAFETY: copying a plain struct into a byte array of its size.
        unsafe { std::ptr::write_unaligned(raw.as_mut_ptr().cast(), sin6) };
        assert_eq!(
            sockaddr_from_bytes(&raw),
            Some("198.51.100.7:4000".parse().unwrap())
        );
    }
}
