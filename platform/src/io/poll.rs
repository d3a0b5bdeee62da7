//! The portable poll backend: readiness with `poll(2)`, then batched non-blocking calls
//! (`recvmmsg`/`sendmmsg` on Linux through [`UdpSock`], plain calls elsewhere) and one
//! `read`/`write` per TUN packet. No io_uring, and by default no offloads: this is the
//! fallback on kernels without io_uring and the backend for macOS.
//!
//! Sends and writes queued by the engine are carried out at the start of the next
//! [`PacketIo::submit_and_wait`], so, as with io_uring, one loop turn batches them.
//!
//! All memory here is plain safe Rust; the only `unsafe` is the `poll` call.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::{BufId, IoStats, PacketIo, Received, Source, PACKET_OFFSET, TAILROOM, VNET_HDR_LEN};
use crate::tun::TunQueue;
use crate::udp::{RecvMeta, Transmit, UdpSock};

/// Datagrams moved per `recvmmsg`/`sendmmsg`.
const BATCH: usize = 32;
/// TUN packets read per loop turn at most (bounds the turn's latency).
const TUN_READS_PER_TURN: usize = 64;

/// Sizing of the poll backend.
#[derive(Clone, Debug)]
pub struct PollConfig {
    /// Number of frames.
    pub frames: u32,
    /// Size of every frame (MTU + headers without offloads, 64 KiB + with them).
    pub frame_len: usize,
    /// TUN reads start with a virtio-net header.
    pub vnet_hdr: bool,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            frames: 512,
            frame_len: 2048,
            vnet_hdr: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct FrameState {
    /// Out of the free list (held by the engine and/or queued operations).
    taken: bool,
    engine: bool,
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

/// The poll backend for one worker.
pub struct PollIo {
    tun: TunQueue,
    udp: UdpSock,
    mem: Vec<u8>,
    frame_len: usize,
    frames: Vec<FrameState>,
    free: Vec<u32>,
    ops: Vec<Op>,
    vnet_hdr: bool,
    stats: IoStats,
}

impl PollIo {
    /// A backend over a TUN queue and a bound non-blocking UDP socket.
    pub fn new(tun: TunQueue, udp: UdpSock, cfg: PollConfig) -> Self {
        let n = cfg.frames as usize;
        Self {
            tun,
            udp,
            mem: vec![0; n * cfg.frame_len],
            frame_len: cfg.frame_len,
            frames: vec![FrameState::default(); n],
            free: (0..cfg.frames).rev().collect(),
            ops: Vec::with_capacity(n * 2),
            vnet_hdr: cfg.vnet_hdr,
            stats: IoStats::default(),
        }
    }

    fn range_of(&self, id: BufId) -> Range<usize> {
        let start = id as usize * self.frame_len;
        start..start + self.frame_len
    }

    fn lendable(&self, id: BufId) -> bool {
        self.frames
            .get(id as usize)
            .is_some_and(|s| s.taken && s.engine && s.ops == 0)
    }

    fn owns(&self, id: BufId) -> bool {
        self.frames
            .get(id as usize)
            .is_some_and(|s| s.taken && s.engine)
    }

    fn take(&mut self) -> Option<BufId> {
        let id = self.free.pop()?;
        if let Some(s) = self.frames.get_mut(id as usize) {
            *s = FrameState {
                taken: true,
                engine: true,
                ops: 0,
            };
        }
        Some(id)
    }

    fn maybe_free(&mut self, id: BufId) {
        if let Some(s) = self.frames.get_mut(id as usize) {
            if s.taken && !s.engine && s.ops == 0 {
                s.taken = false;
                self.free.push(id);
            }
        }
    }

    /// Carries out every queued send and write; each finished one drops its buffer reference.
    fn flush(&mut self) {
        let ops = std::mem::take(&mut self.ops);
        let mut i = 0;
        while i < ops.len() {
            if ops[i].dst.is_none() {
                let op = &ops[i];
                let data = self
                    .mem
                    .get(self.range_of(op.buf))
                    .and_then(|f| f.get(op.data.clone()));
                if let Some(data) = data {
                    if self.tun.write(data).is_err() {
                        self.stats.tx_errors += 1;
                    }
                }
                i += 1;
                continue;
            }
            // A run of UDP sends: one sendmmsg per BATCH.
            let mut txs = [Transmit {
                dst: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
                data: &[],
                segment_size: None,
            }; BATCH];
            let mut n = 0;
            let mut j = i;
            while j < ops.len() && n < BATCH {
                let op = &ops[j];
                let Some(dst) = op.dst else { break };
                let start = op.buf as usize * self.frame_len;
                if let Some(data) = self.mem.get(start + op.data.start..start + op.data.end) {
                    txs[n] = Transmit {
                        dst,
                        data,
                        segment_size: op.segment_size,
                    };
                    n += 1;
                }
                j += 1;
            }
            let mut sent = 0;
            // Bounded retries when the socket buffer is full: wait for room, then give up.
            for _ in 0..8 {
                match self.udp.send_batch(&txs[sent..n]) {
                    Ok(k) => {
                        sent += k;
                        if sent >= n {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.stats.enters += 1;
                        let _ = poll_fds(&[(self.udp.as_raw_fd(), libc::POLLOUT)], 5);
                    }
                    Err(_) => break,
                }
            }
            self.stats.enters += 1;
            self.stats.tx_errors += (n - sent.min(n)) as u64;
            i = j;
        }
        for op in &ops {
            if let Some(s) = self.frames.get_mut(op.buf as usize) {
                s.ops = s.ops.saturating_sub(1);
            }
            self.maybe_free(op.buf);
        }
        let mut ops = ops;
        ops.clear();
        self.ops = ops;
    }

    fn read_tun(&mut self, rx: &mut Vec<Received>) {
        let offset = if self.vnet_hdr {
            PACKET_OFFSET - VNET_HDR_LEN
        } else {
            PACKET_OFFSET
        };
        for _ in 0..TUN_READS_PER_TURN {
            if rx.len() >= rx.capacity() {
                return;
            }
            let Some(id) = self.take() else {
                self.stats.rx_no_buffer += 1;
                return;
            };
            let range = self.range_of(id);
            let Some(frame) = self.mem.get_mut(range) else {
                return;
            };
            let end = frame.len() - TAILROOM;
            self.stats.enters += 1;
            match self.tun.read(&mut frame[offset..end]) {
                Ok(n) if n > 0 => {
                    self.stats.rx_completions += 1;
                    rx.push(Received {
                        buf: id,
                        data: offset..offset + n,
                        source: Source::Tun,
                    });
                }
                _ => {
                    self.release(id);
                    return;
                }
            }
        }
    }

    fn recv_udp(&mut self, rx: &mut Vec<Received>) {
        let room = (rx.capacity() - rx.len()).min(BATCH).min(self.free.len());
        if room == 0 {
            return;
        }
        let mut ids = [0u32; BATCH];
        for slot in ids.iter_mut().take(room) {
            if let Some(id) = self.take() {
                *slot = id;
            }
        }
        let mut meta = [RecvMeta::default(); BATCH];
        let got = {
            // Lend the chosen frames as disjoint slices, in id order.
            let mut sorted = ids;
            sorted[..room].sort_unstable();
            let mut bufs: [&mut [u8]; BATCH] = Default::default();
            let mut k = 0;
            for (i, chunk) in self.mem.chunks_mut(self.frame_len).enumerate() {
                if k < room && sorted[k] as usize == i {
                    bufs[k] = chunk;
                    k += 1;
                }
            }
            ids = sorted;
            self.stats.enters += 1;
            self.udp
                .recv_batch(&mut bufs[..k], &mut meta[..k])
                .unwrap_or(0)
        };
        for (i, m) in meta.iter().enumerate().take(room) {
            let id = ids[i];
            if i < got && m.len > 0 {
                self.stats.rx_completions += 1;
                rx.push(Received {
                    buf: id,
                    data: 0..m.len,
                    source: Source::Udp {
                        src: m.src,
                        segment_size: m.segment_size.max(1),
                    },
                });
            } else {
                if i < got {
                    self.stats.rx_truncated += 1;
                }
                self.release(id);
            }
        }
    }
}

fn poll_fds(fds: &[(i32, i16)], timeout_ms: i32) -> io::Result<[i16; 2]> {
    let mut pfds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 2];
    for (p, &(fd, ev)) in pfds.iter_mut().zip(fds) {
        p.fd = fd;
        p.events = ev;
    }
    let n = fds.len().min(2);
    // SAFETY: `pfds` is a valid array of `n` pollfd structs that outlives the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([0, 0]);
        }
        return Err(e);
    }
    Ok([pfds[0].revents, pfds[1].revents])
}

impl PacketIo for PollIo {
    fn submit_and_wait(&mut self, timeout: Duration, rx: &mut Vec<Received>) -> io::Result<()> {
        self.flush();
        self.stats.enters += 1;
        // Rounded up: a sub-millisecond wait must not become poll(0) and spin.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        let [tun_ev, udp_ev] = poll_fds(
            &[
                (self.tun.as_raw_fd(), libc::POLLIN),
                (self.udp.as_raw_fd(), libc::POLLIN),
            ],
            ms,
        )?;
        if udp_ev & libc::POLLIN != 0 {
            self.recv_udp(rx);
        }
        if tun_ev & libc::POLLIN != 0 {
            self.read_tun(rx);
        }
        Ok(())
    }

    fn buf_mut(&mut self, id: BufId) -> Option<&mut [u8]> {
        if !self.lendable(id) {
            return None;
        }
        let range = self.range_of(id);
        self.mem.get_mut(range)
    }

    fn buf_pair(&mut self, src: BufId, dst: BufId) -> Option<(&[u8], &mut [u8])> {
        if src == dst || !self.lendable(src) || !self.lendable(dst) {
            return None;
        }
        let len = self.frame_len;
        let (lo, hi) = (src.min(dst) as usize, src.max(dst) as usize);
        let (a, b) = self.mem.split_at_mut(hi * len);
        let low = a.get_mut(lo * len..lo * len + len)?;
        let high = b.get_mut(..len)?;
        Some(if src < dst {
            (&*low, high)
        } else {
            (&*high, low)
        })
    }

    fn alloc(&mut self) -> Option<BufId> {
        self.take()
    }

    fn buf_len(&self) -> usize {
        self.frame_len
    }

    fn release(&mut self, id: BufId) {
        if !self.owns(id) {
            debug_assert!(false, "release of a buffer the engine does not hold");
            return;
        }
        if let Some(s) = self.frames.get_mut(id as usize) {
            s.engine = false;
        }
        self.maybe_free(id);
    }

    fn send_udp(
        &mut self,
        id: BufId,
        data: Range<usize>,
        dst: SocketAddr,
        segment_size: Option<u16>,
    ) {
        self.queue(id, data, Some(dst), segment_size);
    }

    fn write_tun(&mut self, id: BufId, data: Range<usize>) {
        self.queue(id, data, None, None);
    }

    fn gso_enabled(&self) -> bool {
        self.udp.gso_enabled()
    }

    fn stats(&self) -> IoStats {
        self.stats
    }
}

impl PollIo {
    fn queue(
        &mut self,
        id: BufId,
        data: Range<usize>,
        dst: Option<SocketAddr>,
        segment_size: Option<u16>,
    ) {
        if !self.owns(id) || data.start > data.end || data.end > self.frame_len {
            self.stats.tx_errors += 1;
            return;
        }
        if let Some(s) = self.frames.get_mut(id as usize) {
            s.ops += 1;
        }
        self.stats.tx_ops += 1;
        self.ops.push(Op {
            buf: id,
            data,
            dst,
            segment_size,
        });
    }
}
