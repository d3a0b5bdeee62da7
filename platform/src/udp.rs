//! UDP sockets of the data port: SO_REUSEPORT groups, buffer sizing, GSO/GRO and batched I/O.
//!
//! Owns: creating the per-worker sockets on one port, probing UDP_SEGMENT/UDP_GRO once at
//! start-up, and moving datagrams between caller buffers and the kernel in batches
//! (`sendmmsg`/`recvmmsg` on Linux, `sendto`/`recvfrom` loops elsewhere).
//! Must never allocate on the send/receive path (all message headers, iovecs, addresses and
//! control buffers live on the stack), never block (sockets are non-blocking), and never read
//! or interpret packet contents.
//!
//! Degradation is one-way, as in wireguard-go and quinn-udp: if the kernel answers a GSO send
//! with EIO (a NIC or route that cannot segment), GSO is turned off for good on that socket and
//! the same datagrams go out one segment per datagram.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::tun::PlatformError;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(not(target_os = "linux"))]
mod portable;

/// Most datagrams moved by one `sendmmsg`/`recvmmsg` call. The header arrays of that size live
/// on the stack (about 8 KiB), which is why it is not larger.
pub const BATCH: usize = 32;

/// Most segments in one GSO send (the kernel's UDP_MAX_SEGMENTS on every kernel with GSO).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Largest UDP payload we ever put in one (GSO) send: below the 65507-byte IPv4 limit.
const MAX_SEND_BYTES: usize = 65_000;

/// How to open the data-port sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpSocketConfig {
    /// Address to bind. Port 0 picks a free port (shared by the whole group). `[::]` gives a
    /// dual-stack socket that also receives IPv4.
    pub bind: SocketAddr,
    /// Set SO_REUSEPORT (always set when the group has more than one socket).
    pub reuseport: bool,
    /// Use UDP_SEGMENT for `Transmit::segment_size` when the kernel supports it.
    pub gso: bool,
    /// Ask the kernel to coalesce received datagrams (UDP_GRO); receive buffers must then hold
    /// up to 64 KiB.
    pub gro: bool,
    /// Receive buffer to ask for in bytes (0 keeps the kernel default).
    pub recv_buf: usize,
    /// Send buffer to ask for in bytes (0 keeps the kernel default).
    pub send_buf: usize,
}

impl Default for UdpSocketConfig {
    fn default() -> Self {
        UdpSocketConfig {
            bind: SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            reuseport: true,
            gso: true,
            gro: true,
            recv_buf: 4 << 20,
            send_buf: 4 << 20,
        }
    }
}

/// One datagram (or, with `segment_size`, several equally sized datagrams) to send.
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    /// Destination. An IPv4 destination on a dual-stack socket is sent v4-mapped.
    pub dst: SocketAddr,
    /// Payload. With `segment_size`, segments back to back; only the last may be shorter.
    pub data: &'a [u8],
    /// Segment size for GSO; `None` (or `Some(0)`) sends `data` as one datagram.
    pub segment_size: Option<u16>,
}

/// What the kernel told us about one received datagram (or GRO-coalesced train).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Sender. v4-mapped IPv6 senders on a dual-stack socket are reported as IPv4.
    pub src: SocketAddr,
    /// Bytes written into the buffer. 0 for a datagram that did not fit the buffer (it is
    /// dropped and counted in [`UdpStats::recv_truncated`]).
    pub len: usize,
    /// Size of each coalesced segment (from the UDP_GRO control message); equals `len` when the
    /// kernel did not coalesce.
    pub segment_size: usize,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            src: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            len: 0,
            segment_size: 0,
        }
    }
}

/// Counters of datagrams this socket dropped instead of returning an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Sends refused with EMSGSIZE (datagram larger than the path MTU or the UDP limit).
    pub send_emsgsize: u64,
    /// Sends refused for a per-destination reason (unreachable, refused, wrong family, ...).
    pub send_other: u64,
    /// Received datagrams larger than the caller's buffer.
    pub recv_truncated: u64,
}

#[derive(Debug, Default)]
struct Counters {
    send_emsgsize: AtomicU64,
    send_other: AtomicU64,
    recv_truncated: AtomicU64,
}

/// One non-blocking UDP socket of the data port, owned by one worker.
#[derive(Debug)]
pub struct UdpSock {
    fd: OwnedFd,
    local: SocketAddr,
    /// The socket is AF_INET6 (IPv4 peers are v4-mapped).
    v6: bool,
    /// GSO is usable: probed at start-up, configured on, and not yet disabled by an EIO.
    gso: AtomicBool,
    gro: bool,
    buffer_warning: Option<String>,
    counters: Counters,
}

/// Opens `n` sockets on the same port with SO_REUSEPORT (the first binds `cfg.bind`; when its
/// port is 0 the others reuse the port the kernel chose), non-blocking, dual-stack on `[::]`.
///
/// # Errors
/// [`PlatformError::PortInUse`] when the port is held by a socket without SO_REUSEPORT (or by
/// another user), [`PlatformError::AddrNotAvailable`] for a foreign bind address,
/// [`PlatformError::BadGroupSize`] for `n == 0` or absurdly large `n`.
pub fn bind_group(cfg: &UdpSocketConfig, n: usize) -> Result<Vec<UdpSock>, PlatformError> {
    if n == 0 || n > 1024 {
        return Err(PlatformError::BadGroupSize { n });
    }
    // SO_REUSEPORT would let a second dataplane of the same user silently join our group and
    // take half our traffic: first make sure nobody holds the port at all.
    if cfg.bind.port() != 0 {
        if let Err(e) = std::net::UdpSocket::bind(cfg.bind) {
            return Err(match e.raw_os_error() {
                Some(libc::EADDRINUSE) => PlatformError::PortInUse {
                    port: cfg.bind.port(),
                },
                Some(libc::EADDRNOTAVAIL) => PlatformError::AddrNotAvailable { addr: cfg.bind },
                Some(libc::EACCES) => PlatformError::PrivilegedPort {
                    port: cfg.bind.port(),
                },
                _ => PlatformError::os("bind", e),
            });
        }
    }
    let gso_ok = cfg.gso && gso_supported(cfg.bind.is_ipv6());
    let mut out = Vec::with_capacity(n);
    let mut addr = cfg.bind;
    for _ in 0..n {
        let s = UdpSock::open(cfg, addr, cfg.reuseport || n > 1, gso_ok)?;
        addr.set_port(s.local.port());
        out.push(s);
    }
    Ok(out)
}

/// Byte of every datagram (after the UDP header) that names the receive lane: the data
/// message's second byte carries the sending worker's number.
pub const LANE_BYTE: u32 = 1;

/// Steers each datagram to the socket (worker) its lane byte names, modulo the group size, with
/// a classic-BPF `SO_ATTACH_REUSEPORT_CBPF` program on the group. A flow that one sending worker
/// handles is then received by the same-numbered worker: flows spread over the receive cores
/// while each stays in order on one. Without it every datagram of one peer would land on one
/// socket (the kernel hashes the 4-tuple, which is the same for all of a peer's flows).
///
/// # Errors
/// The OS error when the kernel refuses the program (the group then keeps hashing).
pub fn steer_by_lane(group: &[UdpSock]) -> io::Result<()> {
    let n = group.len();
    let Some(first) = group.first() else {
        return Ok(());
    };
    if n < 2 {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        // ld b[LANE_BYTE]; mod #n; ret a. A datagram too short for the load makes the program
        // return 0 (socket 0), which is harmless: it is garbage anyway.
        let prog = [
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: LANE_BYTE,
            },
            libc::sock_filter {
                code: (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: n as u32,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_A) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr().cast_mut(),
        };
        // SAFETY: `fprog` points at `prog`, both live across the call; the kernel copies the
        // program; the length passed is the size of `fprog`.
        let rc = unsafe {
            libc::setsockopt(
                first.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_REUSEPORT_CBPF,
                (&raw const fprog).cast(),
                mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = first;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "reuseport steering exists only on Linux",
        ))
    }
}

impl UdpSock {
    fn open(
        cfg: &UdpSocketConfig,
        bind: SocketAddr,
        reuseport: bool,
        gso: bool,
    ) -> Result<UdpSock, PlatformError> {
        let v6 = bind.is_ipv6();
        let fd = new_udp_socket(v6).map_err(|e| PlatformError::os("socket(SOCK_DGRAM)", e))?;
        if v6 {
            // Dual-stack only for the wildcard; a specific v6 address keeps the default.
            let only = i32::from(!bind.ip().is_unspecified());
            setsockopt_int(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, only)
                .map_err(|e| PlatformError::os("setsockopt(IPV6_V6ONLY)", e))?;
        }
        if reuseport {
            setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
                .map_err(|e| PlatformError::os("setsockopt(SO_REUSEPORT)", e))?;
        }
        let mut warnings = Vec::new();
        if cfg.recv_buf > 0 {
            warnings.extend(set_buffer(&fd, cfg.recv_buf, false));
        }
        if cfg.send_buf > 0 {
            warnings.extend(set_buffer(&fd, cfg.send_buf, true));
        }
        let buffer_warning = (!warnings.is_empty()).then(|| warnings.join("; "));
        if let Some(w) = &buffer_warning {
            tracing::warn!("{w}");
        }

        let mut ss = zeroed_storage();
        let len = to_sockaddr(&bind, &mut ss);
        // SAFETY: `ss` holds a valid sockaddr of `len` bytes for the socket's family.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const ss).cast(), len) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EADDRINUSE) => PlatformError::PortInUse { port: bind.port() },
                Some(libc::EADDRNOTAVAIL) => PlatformError::AddrNotAvailable { addr: bind },
                Some(libc::EACCES) => PlatformError::PrivilegedPort { port: bind.port() },
                _ => PlatformError::os("bind", e),
            });
        }
        let local = local_addr_of(&fd).map_err(|e| PlatformError::os("getsockname", e))?;
        let gro = cfg.gro && enable_gro(&fd);
        Ok(UdpSock {
            fd,
            local,
            v6,
            gso: AtomicBool::new(gso),
            gro,
            buffer_warning,
            counters: Counters::default(),
        })
    }

    /// The address the socket is bound to (with the port the kernel chose).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether sends currently use UDP_SEGMENT (false if unsupported or disabled after EIO).
    #[must_use]
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Most segments one GSO send may carry right now (1 when GSO is off).
    #[must_use]
    pub fn max_gso_segments(&self) -> usize {
        if self.gso_enabled() {
            MAX_GSO_SEGMENTS
        } else {
            1
        }
    }

    /// Whether UDP_GRO was enabled (received buffers may hold several segments).
    #[must_use]
    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    /// Set when the kernel clamped a buffer size; names the sysctl to raise.
    #[must_use]
    pub fn buffer_warning(&self) -> Option<&str> {
        self.buffer_warning.as_deref()
    }

    /// Datagrams dropped instead of failing a batch.
    #[must_use]
    pub fn stats(&self) -> UdpStats {
        UdpStats {
            send_emsgsize: self.counters.send_emsgsize.load(Ordering::Relaxed),
            send_other: self.counters.send_other.load(Ordering::Relaxed),
            recv_truncated: self.counters.recv_truncated.load(Ordering::Relaxed),
        }
    }

    /// Sends a batch without allocating. Returns how many leading `msgs` were handed to the
    /// kernel or dropped as undeliverable (EMSGSIZE, unreachable: counted in [`Self::stats`],
    /// as a lost datagram would be); the caller retries the rest when the socket is writable.
    ///
    /// # Errors
    /// `WouldBlock` when the socket buffer is full before the first message; other errors only
    /// when the socket itself is unusable.
    pub fn send_batch(&self, msgs: &[Transmit<'_>]) -> io::Result<usize> {
        self.send_batch_impl(msgs)
    }

    /// Receives up to `min(bufs.len(), meta.len(), BATCH)` datagrams without allocating, filling
    /// `meta[i]` for `bufs[i]`. Returns how many were received. With GRO enabled a buffer
    /// receives a whole coalesced train (up to 64 KiB; `meta.segment_size` says how to split
    /// it), so buffers should be 65536 bytes; a datagram that does not fit is reported with
    /// `len == 0` and counted.
    ///
    /// # Errors
    /// `WouldBlock` when nothing is queued.
    pub fn recv_batch(&self, bufs: &mut [&mut [u8]], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.recv_batch_impl(bufs, meta)
    }

    fn note_send_error(&self, e: &io::Error) {
        let c = if e.raw_os_error() == Some(libc::EMSGSIZE) {
            &self.counters.send_emsgsize
        } else {
            &self.counters.send_other
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn note_truncated(&self) {
        self.counters.recv_truncated.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn disable_gso(&self) {
        if self.gso.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                local = %self.local,
                "UDP GSO send failed with EIO: disabling GSO on this socket for good"
            );
        }
    }
}

impl AsRawFd for UdpSock {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for UdpSock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What to do after a send error on the first datagram of a kernel call.
#[derive(Debug, PartialEq, Eq)]
enum SendErrorAction {
    /// Try the same call again (EINTR).
    Retry,
    /// Stop and report progress (or the error when there is none): buffer full.
    Stop,
    /// The datagram was GSO and the kernel cannot segment: disable GSO, rebuild, retry.
    DisableGso,
    /// This datagram cannot be delivered: drop it, count it, go on with the next.
    Skip,
    /// The socket is broken: return the error.
    Fail,
}

fn classify_send_error(e: &io::Error, was_gso: bool) -> SendErrorAction {
    match e.raw_os_error() {
        Some(libc::EINTR) => SendErrorAction::Retry,
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) => SendErrorAction::Stop,
        Some(libc::EIO) if was_gso => SendErrorAction::DisableGso,
        Some(libc::EBADF) | Some(libc::ENOTSOCK) | Some(libc::EFAULT) => SendErrorAction::Fail,
        _ => SendErrorAction::Skip,
    }
}

/// One kernel datagram cut out of a [`Transmit`]: `data[off..off+len]`, GSO with `seg` if set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit {
    msg: usize,
    off: usize,
    len: usize,
    /// UDP_SEGMENT value, only when the unit holds more than one segment.
    gso: Option<u16>,
    /// Last unit of its transmit.
    last: bool,
}

/// Walks the transmits of a batch as kernel datagrams, without allocating: one unit per
/// transmit, or per GSO train (at most `MAX_GSO_SEGMENTS` segments and `MAX_SEND_BYTES`), or per
/// segment when GSO is off. The cursor is (transmit, byte offset), so it survives a change of
/// the GSO setting mid-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    msg: usize,
    off: usize,
}

impl Cursor {
    fn next_unit(&self, msgs: &[Transmit<'_>], gso: bool) -> Option<Unit> {
        let t = msgs.get(self.msg)?;
        let total = t.data.len();
        let rest = total.saturating_sub(self.off);
        let len = match t.segment_size {
            Some(seg) if seg > 0 && rest > usize::from(seg) => {
                let seg = usize::from(seg);
                if gso {
                    let per = (MAX_SEND_BYTES / seg).clamp(1, MAX_GSO_SEGMENTS);
                    rest.min(per * seg)
                } else {
                    seg
                }
            }
            _ => rest,
        };
        let gso_val = match t.segment_size {
            Some(seg) if gso && seg > 0 && len > usize::from(seg) => Some(seg),
            _ => None,
        };
        Some(Unit {
            msg: self.msg,
            off: self.off,
            len,
            gso: gso_val,
            last: self.off + len >= total,
        })
    }

    fn advance(&mut self, u: &Unit) {
        if u.last {
            self.msg = u.msg + 1;
            self.off = 0;
        } else {
            self.off = u.off + u.len;
        }
    }
}

/// Probes UDP_SEGMENT on a throwaway socket (setting it on the real socket would make it the
/// default segment size for every send), as quinn-udp does.
fn gso_supported(v6: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(fd) = new_udp_socket(v6) else {
            return false;
        };
        setsockopt_int(&fd, libc::SOL_UDP, libc::UDP_SEGMENT, 1500).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = v6;
        false
    }
}

fn enable_gro(fd: &OwnedFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        match setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1) {
            Ok(()) => true,
            Err(e) => {
                tracing::info!("UDP_GRO unavailable ({e}); receiving one datagram per buffer");
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        false
    }
}

/// Sets SO_RCVBUF/SO_SNDBUF, first with the *FORCE variant (CAP_NET_ADMIN may exceed the
/// sysctl limit), and returns a warning when the kernel gave less than asked.
fn set_buffer(fd: &OwnedFd, want: usize, send: bool) -> Option<String> {
    let want_i = i32::try_from(want).unwrap_or(i32::MAX);
    let (opt, _force, sysctl, what) = if send {
        (libc::SO_SNDBUF, SO_SNDBUFFORCE, "net.core.wmem_max", "send")
    } else {
        (
            libc::SO_RCVBUF,
            SO_RCVBUFFORCE,
            "net.core.rmem_max",
            "receive",
        )
    };
    #[cfg(target_os = "linux")]
    let forced = setsockopt_int(fd, libc::SOL_SOCKET, _force, want_i).is_ok();
    #[cfg(not(target_os = "linux"))]
    let forced = false;
    if !forced {
        if let Err(e) = setsockopt_int(fd, libc::SOL_SOCKET, opt, want_i) {
            return Some(format!(
                "could not set UDP {what} buffer to {want} bytes: {e}"
            ));
        }
    }
    // Linux reports twice the value set (bookkeeping overhead), hence the halving.
    let got = getsockopt_int(fd, libc::SOL_SOCKET, opt).ok()?;
    let got = usize::try_from(got).unwrap_or(0);
    let effective = if cfg!(target_os = "linux") {
        got / 2
    } else {
        got
    };
    (effective < want).then(|| {
        format!(
            "UDP {what} buffer clamped to {effective} bytes (asked {want}): \
             run `sysctl -w {sysctl}={want}` or grant CAP_NET_ADMIN"
        )
    })
}

#[cfg(target_os = "linux")]
const SO_RCVBUFFORCE: libc::c_int = 33;
#[cfg(target_os = "linux")]
const SO_SNDBUFFORCE: libc::c_int = 32;
#[cfg(not(target_os = "linux"))]
const SO_RCVBUFFORCE: libc::c_int = 0;
#[cfg(not(target_os = "linux"))]
const SO_SNDBUFFORCE: libc::c_int = 0;

fn new_udp_socket(v6: bool) -> io::Result<OwnedFd> {
    let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    #[cfg(target_os = "linux")]
    let ty = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    #[cfg(not(target_os = "linux"))]
    let ty = libc::SOCK_DGRAM;
    // SAFETY: plain syscall with constant arguments.
    let raw = unsafe { libc::socket(domain, ty, libc::IPPROTO_UDP) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly created descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    #[cfg(not(target_os = "linux"))]
    set_nonblocking_cloexec(&fd)?;
    Ok(fd)
}

/// Sets O_NONBLOCK and FD_CLOEXEC (for systems without SOCK_NONBLOCK/SOCK_CLOEXEC).
#[cfg_attr(target_os = "linux", allow(dead_code))]
pub(crate) fn set_nonblocking_cloexec(fd: &OwnedFd) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(crate) fn setsockopt_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `val` is a live c_int and the length passed matches its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw const val).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: &impl AsRawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<i32> {
    let mut val: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val`/`len` are live and `len` states the size of `val`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&raw mut val).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(val)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn local_addr_of(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let mut ss = zeroed_storage();
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is a writable sockaddr_storage and `len` its size.
    let rc = unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut ss).cast(), &raw mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    from_sockaddr(&ss, len).ok_or_else(|| io::Error::other("getsockname: unknown address family"))
}

pub(crate) fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
    unsafe { mem::zeroed() }
}

/// Writes `addr` into `out` as the C sockaddr for a socket of family `v6`-or-not, mapping IPv4
/// to `::ffff:a.b.c.d` on IPv6 sockets. Returns the sockaddr length.
fn to_sockaddr_for(
    addr: &SocketAddr,
    v6_socket: bool,
    out: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    match (addr, v6_socket) {
        (SocketAddr::V4(a), true) => {
            let m = SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0);
            to_sockaddr(&SocketAddr::V6(m), out)
        }
        _ => to_sockaddr(addr, out),
    }
}

/// Writes `addr` into `out` as a C sockaddr and returns its length.
pub(crate) fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    *out = zeroed_storage();
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
            {
                sin.sin_len = mem::size_of::<libc::sockaddr_in>() as u8;
            }
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
            {
                sin6.sin6_len = mem::size_of::<libc::sockaddr_in6>() as u8;
            }
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reads a C sockaddr; v4-mapped IPv6 addresses come back as IPv4. `None` for other families
/// or a length too short for the family.
pub(crate) fn from_sockaddr(
    ss: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(ss.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length say this storage holds a sockaddr_in.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family and length say this storage holds a sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), port),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lo_cfg() -> UdpSocketConfig {
        UdpSocketConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            reuseport: true,
            gso: true,
            gro: false,
            recv_buf: 1 << 20,
            send_buf: 1 << 20,
        }
    }

    fn units(msgs: &[Transmit<'_>], gso: bool) -> Vec<(usize, usize, usize, Option<u16>, bool)> {
        let mut c = Cursor { msg: 0, off: 0 };
        let mut v = Vec::new();
        while let Some(u) = c.next_unit(msgs, gso) {
            v.push((u.msg, u.off, u.len, u.gso, u.last));
            c.advance(&u);
            // Bounded: at most one unit per byte (segment size 1, no GSO) of a ≤ 20,000-byte input.
            assert!(v.len() <= 20_001);
        }
        v
    }

    #[test]
    fn sockaddr_round_trip_and_v4_mapping() {
        for a in ["198.51.100.7:51820", "[fd00::1]:9", "[2001:db8::5%3]:443"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut ss = zeroed_storage();
            let len = to_sockaddr(&a, &mut ss);
            assert_eq!(from_sockaddr(&ss, len), Some(a));
        }
        let v4: SocketAddr = "203.0.113.9:1000".parse().unwrap();
        let mut ss = zeroed_storage();
        let len = to_sockaddr_for(&v4, true, &mut ss);
        assert_eq!(i32::from(ss.ss_family), libc::AF_INET6);
        assert_eq!(from_sockaddr(&ss, len), Some(v4));
        assert_eq!(from_sockaddr(&ss, 4), None, "short length must not be read");
    }

    #[test]
    fn units_split_gso_trains_and_segments() {
        let data = [0u8; 2500];
        let t = [Transmit {
            dst: "127.0.0.1:1".parse().unwrap(),
            data: &data,
            segment_size: Some(1000),
        }];
        assert_eq!(units(&t, true), vec![(0, 0, 2500, Some(1000), true)]);
        assert_eq!(
            units(&t, false),
            vec![
                (0, 0, 1000, None, false),
                (0, 1000, 1000, None, false),
                (0, 2000, 500, None, true)
            ]
        );
        // A single segment needs no cmsg.
        let small = [Transmit {
            dst: t[0].dst,
            data: &data[..800],
            segment_size: Some(1000),
        }];
        assert_eq!(units(&small, true), vec![(0, 0, 800, None, true)]);
        // More than MAX_GSO_SEGMENTS (or 65000 bytes) is cut into several trains.
        let big = vec![0u8; 100 * 100];
        let t = [Transmit {
            dst: t[0].dst,
            data: &big,
            segment_size: Some(100),
        }];
        assert_eq!(
            units(&t, true),
            vec![
                (0, 0, 6400, Some(100), false),
                (0, 6400, 3600, Some(100), true)
            ]
        );
        // Empty datagram is one unit (a keepalive-sized send), then the next transmit.
        let two = [
            Transmit {
                dst: t[0].dst,
                data: &[],
                segment_size: None,
            },
            Transmit {
                dst: t[0].dst,
                data: &data[..10],
                segment_size: Some(0),
            },
        ];
        assert_eq!(
            units(&two, true),
            vec![(0, 0, 0, None, true), (1, 0, 10, None, true)]
        );
    }

    proptest::proptest! {
        /// Model: the units of one transmit tile its bytes in order; without GSO each is at most
        /// one segment; with GSO a train holds 2..=64 segments and at most 65000 bytes; every
        /// unit but the last ends on a segment boundary; only the last is marked last.
        #[test]
        fn units_tile_the_payload(len in 0usize..20_000, seg in proptest::option::of(0u16..3000), gso: bool) {
            let data = vec![0u8; len];
            let t = [Transmit { dst: "127.0.0.1:1".parse().unwrap(), data: &data, segment_size: seg }];
            let us = units(&t, gso);
            proptest::prop_assert!(!us.is_empty());
            let mut at = 0;
            for (i, &(msg, off, ulen, g, last)) in us.iter().enumerate() {
                proptest::prop_assert_eq!(msg, 0);
                proptest::prop_assert_eq!(off, at);
                proptest::prop_assert_eq!(last, i + 1 == us.len());
                match seg.filter(|&s| s > 0).map(usize::from) {
                    Some(s) => {
                        if !last {
                            proptest::prop_assert_eq!(ulen % s, 0);
                        }
                        match g {
                            Some(gs) => {
                                proptest::prop_assert!(gso);
                                proptest::prop_assert_eq!(usize::from(gs), s);
                                proptest::prop_assert!(ulen > s && ulen <= MAX_GSO_SEGMENTS * s && ulen <= MAX_SEND_BYTES);
                            }
                            None => proptest::prop_assert!(ulen <= s),
                        }
                    }
                    None => {
                        proptest::prop_assert_eq!(g, None);
                        proptest::prop_assert_eq!(ulen, len);
                    }
                }
                at += ulen;
            }
            proptest::prop_assert_eq!(at, len);
        }
    }

    #[test]
    fn send_error_policy() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(
            classify_send_error(&e(libc::EIO), true),
            SendErrorAction::DisableGso
        );
        assert_eq!(
            classify_send_error(&e(libc::EIO), false),
            SendErrorAction::Skip
        );
        assert_eq!(
            classify_send_error(&e(libc::EMSGSIZE), false),
            SendErrorAction::Skip
        );
        assert_eq!(
            classify_send_error(&e(libc::EAGAIN), false),
            SendErrorAction::Stop
        );
        assert_eq!(
            classify_send_error(&e(libc::EINTR), true),
            SendErrorAction::Retry
        );
        assert_eq!(
            classify_send_error(&e(libc::EBADF), false),
            SendErrorAction::Fail
        );
    }

    #[test]
    fn group_shares_one_port_and_is_nonblocking() {
        let g = bind_group(&lo_cfg(), 3).unwrap();
        let port = g[0].local_addr().port();
        assert_ne!(port, 0);
        assert!(g.iter().all(|s| s.local_addr().port() == port));
        let mut buf = [0u8; 100];
        let mut bufs = [&mut buf[..]];
        let mut meta = [RecvMeta::default()];
        let e = g[0].recv_batch(&mut bufs, &mut meta).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn port_in_use_is_named() {
        let mut cfg = lo_cfg();
        cfg.reuseport = false;
        let a = bind_group(&cfg, 1).unwrap();
        cfg.bind = a[0].local_addr();
        match bind_group(&cfg, 1) {
            Err(PlatformError::PortInUse { port }) => assert_eq!(port, cfg.bind.port()),
            other => panic!("expected PortInUse, got {other:?}"),
        }
        assert!(matches!(
            bind_group(&cfg, 0),
            Err(PlatformError::BadGroupSize { n: 0 })
        ));
    }

    #[test]
    fn batch_round_trip_on_loopback() {
        let rx = bind_group(&lo_cfg(), 1).unwrap().remove(0);
        let tx = bind_group(&lo_cfg(), 1).unwrap().remove(0);
        let payloads: [&[u8]; 3] = [b"one", b"two two", b""];
        let msgs: Vec<Transmit<'_>> = payloads
            .iter()
            .map(|p| Transmit {
                dst: rx.local_addr(),
                data: p,
                segment_size: None,
            })
            .collect();
        assert_eq!(tx.send_batch(&msgs).unwrap(), 3);
        let mut store = [[0u8; 64]; 4];
        let mut meta = [RecvMeta::default(); 4];
        let mut got = 0;
        for _ in 0..1000 {
            let mut bufs: Vec<&mut [u8]> = store[got..].iter_mut().map(|b| &mut b[..]).collect();
            match rx.recv_batch(&mut bufs, &mut meta[got..]) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
            if got >= 3 {
                break;
            }
        }
        assert_eq!(got, 3);
        for i in 0..3 {
            assert_eq!(&store[i][..meta[i].len], payloads[i]);
            assert_eq!(meta[i].src, tx.local_addr());
            assert_eq!(meta[i].segment_size, meta[i].len);
        }
    }

    #[test]
    fn truncated_datagram_reports_zero_and_counts() {
        let rx = bind_group(&lo_cfg(), 1).unwrap().remove(0);
        let tx = bind_group(&lo_cfg(), 1).unwrap().remove(0);
        let big = [7u8; 200];
        let m = [Transmit {
            dst: rx.local_addr(),
            data: &big,
            segment_size: None,
        }];
        assert_eq!(tx.send_batch(&m).unwrap(), 1);
        let mut small = [0u8; 50];
        let mut meta = [RecvMeta::default()];
        for _ in 0..1000 {
            match rx.recv_batch(&mut [&mut small[..]], &mut meta) {
                Ok(1) => break,
                Ok(_) => unreachable!(),
                Err(_) => std::thread::yield_now(),
            }
        }
        assert_eq!(meta[0].len, 0);
        assert_eq!(rx.stats().recv_truncated, 1);
    }

    #[test]
    fn emsgsize_is_dropped_counted_and_the_batch_goes_on() {
        let rx = bind_group(&lo_cfg(), 1).unwrap().remove(0);
        let tx = bind_group(&lo_cfg(), 1).unwrap().remove(0);
        let huge = vec![0u8; 70_000];
        let msgs = [
            Transmit {
                dst: rx.local_addr(),
                data: &huge,
                segment_size: None,
            },
            Transmit {
                dst: rx.local_addr(),
                data: b"after",
                segment_size: None,
            },
        ];
        assert_eq!(tx.send_batch(&msgs).unwrap(), 2);
        assert_eq!(tx.stats().send_emsgsize, 1);
        let mut b = [0u8; 64];
        let mut meta = [RecvMeta::default()];
        let mut n = 0;
        for _ in 0..1000 {
            if let Ok(k) = rx.recv_batch(&mut [&mut b[..]], &mut meta) {
                n = k;
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(n, 1);
        assert_eq!(&b[..meta[0].len], b"after");
    }

    #[test]
    fn without_gso_segments_go_out_as_separate_datagrams() {
        let rx = bind_group(&lo_cfg(), 1).unwrap().remove(0);
        let mut cfg = lo_cfg();
        cfg.gso = false;
        let tx = bind_group(&cfg, 1).unwrap().remove(0);
        assert!(!tx.gso_enabled());
        let data: Vec<u8> = (0..2500u32).map(|i| (i / 1000) as u8).collect();
        let t = [Transmit {
            dst: rx.local_addr(),
            data: &data,
            segment_size: Some(1000),
        }];
        assert_eq!(tx.send_batch(&t).unwrap(), 1);
        let mut store = [[0u8; 2000]; 4];
        let mut meta = [RecvMeta::default(); 4];
        let mut got = 0;
        for _ in 0..1000 {
            let mut bufs: Vec<&mut [u8]> = store[got..].iter_mut().map(|b| &mut b[..]).collect();
            if let Ok(n) = rx.recv_batch(&mut bufs, &mut meta[got..]) {
                got += n;
            }
            if got >= 3 {
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(got, 3);
        for (i, want) in [(0usize, 1000usize), (1, 1000), (2, 500)] {
            assert_eq!(meta[i].len, want);
            assert!(store[i][..want].iter().all(|&b| b == i as u8));
        }
    }

    #[test]
    fn dual_stack_receives_ipv4() {
        let mut cfg = lo_cfg();
        cfg.bind = "[::]:0".parse().unwrap();
        let rx = bind_group(&cfg, 1).unwrap().remove(0);
        let tx = bind_group(&lo_cfg(), 1).unwrap().remove(0);
        let dst = SocketAddr::from((Ipv4Addr::LOCALHOST, rx.local_addr().port()));
        assert_eq!(
            tx.send_batch(&[Transmit {
                dst,
                data: b"hi",
                segment_size: None
            }])
            .unwrap(),
            1
        );
        let mut b = [0u8; 16];
        let mut meta = [RecvMeta::default()];
        let mut n = 0;
        for _ in 0..1000 {
            if let Ok(k) = rx.recv_batch(&mut [&mut b[..]], &mut meta) {
                n = k;
                break;
            }
            std::thread::yield_now();
        }
        assert_eq!(n, 1);
        assert_eq!(
            meta[0].src,
            tx.local_addr(),
            "v4-mapped source must come back as IPv4"
        );
        // And the reply path: an IPv4 destination on the v6 socket is sent v4-mapped.
        assert_eq!(
            rx.send_batch(&[Transmit {
                dst: meta[0].src,
                data: b"yo",
                segment_size: None
            }])
            .unwrap(),
            1
        );
    }
}
