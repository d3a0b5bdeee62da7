//! Batched packet I/O for one dataplane worker: one TUN queue and one UDP socket.
//!
//! The engine (in `shadowmesh-dataplane`) owns the packet logic; a backend here only moves
//! buffers between the kernel and that logic. Buffers belong to the backend and are named by a
//! [`BufId`]; the engine borrows one with [`PacketIo::buf_mut`] while it owns it, and gives it
//! back by handing it to a send/write (the backend keeps it alive until the kernel is done) or
//! by [`PacketIo::release`]. A buffer the kernel may still touch is never lent out, so the API
//! is safe even though the io_uring backend shares memory with the kernel.
//!
//! Layout rule both backends keep: a TUN read lands so that the IP packet starts at
//! [`PACKET_OFFSET`] (the virtio-net header, when enabled, sits in the 10 bytes before it), which
//! leaves room for the 16-byte data header in front and a 16-byte tag behind: the engine seals
//! in place and sends the same buffer.
//!
//! Must never: allocate per packet, block without a bound, or hand out a buffer twice.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

pub mod poll;
#[cfg(target_os = "linux")]
pub mod uring;

/// Names a buffer owned by a backend.
pub type BufId = u32;

/// Where the IP packet of a TUN read starts inside its buffer (room for the data header).
pub const PACKET_OFFSET: usize = 16;
/// Bytes kept free behind every TUN read (room for the AEAD tag).
pub const TAILROOM: usize = 16;
/// Length of the virtio-net header that precedes each TUN packet when offloads are on.
pub const VNET_HDR_LEN: usize = 10;

/// Where a received buffer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Read from the TUN queue; with offloads the range starts with the virtio-net header.
    Tun,
    /// Received on the UDP socket; with GRO the range holds several datagrams of
    /// `segment_size` bytes back to back (the last may be shorter).
    Udp {
        /// Sender's address.
        src: SocketAddr,
        /// Size of each coalesced datagram (equals the range length without GRO).
        segment_size: usize,
    },
}

/// One completed receive, lent to the engine until it sends, writes or releases the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The buffer holding the data.
    pub buf: BufId,
    /// Where the received bytes lie within the buffer.
    pub data: Range<usize>,
    /// Where they came from.
    pub source: Source,
}

/// Counters a backend keeps about itself (read by the engine for stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// System calls that entered the kernel to submit or wait (`io_uring_enter`, `poll`).
    pub enters: u64,
    /// Receive completions delivered to the engine.
    pub rx_completions: u64,
    /// Send and write operations issued.
    pub tx_ops: u64,
    /// Operations that failed in the kernel (counted, never fatal).
    pub tx_errors: u64,
    /// Receives lost because no buffer was free.
    pub rx_no_buffer: u64,
    /// Datagrams truncated because they did not fit a buffer.
    pub rx_truncated: u64,
}

/// What a worker needs from its I/O backend.
pub trait PacketIo {
    /// Submits everything queued, then waits up to `timeout` for at least one completion.
    /// Completed receives are appended to `rx` without growing it past its capacity (the rest
    /// stay queued for the next call).
    fn submit_and_wait(&mut self, timeout: Duration, rx: &mut Vec<Received>) -> io::Result<()>;

    /// Borrows a buffer the engine owns (a received one, or one from [`PacketIo::alloc`]);
    /// `None` if the engine does not own `id` right now.
    fn buf_mut(&mut self, id: BufId) -> Option<&mut [u8]>;

    /// Borrows two different buffers the engine owns at once: `src` to read, `dst` to write
    /// (e.g. segmenting a TSO packet into a transmit buffer). `None` if either is not the
    /// engine's or they are the same buffer.
    fn buf_pair(&mut self, src: BufId, dst: BufId) -> Option<(&[u8], &mut [u8])>;

    /// Takes a free buffer for building datagrams (e.g. segments of a TSO packet).
    fn alloc(&mut self) -> Option<BufId>;

    /// Size of every buffer.
    fn buf_len(&self) -> usize;

    /// Hands the engine's reference to `id` back to the backend.
    fn release(&mut self, id: BufId);

    /// Queues a UDP send of `data` within buffer `id` to `dst`. With `segment_size`, `data` is
    /// several datagrams of that size back to back (UDP GSO). The send holds its own reference
    /// to the buffer: the engine still calls `release` when it is done with `id` itself.
    fn send_udp(
        &mut self,
        id: BufId,
        data: Range<usize>,
        dst: SocketAddr,
        segment_size: Option<u16>,
    );

    /// Queues a write of `data` within buffer `id` to the TUN queue (one packet, or one
    /// virtio-net super-packet). Holds its own reference like [`PacketIo::send_udp`].
    fn write_tun(&mut self, id: BufId, data: Range<usize>);

    /// Whether UDP GSO may be used (false once the kernel refused it).
    fn gso_enabled(&self) -> bool;

    /// Counters about the backend itself.
    fn stats(&self) -> IoStats;
}
