//! Linux batched UDP I/O: `sendmmsg` with UDP_SEGMENT control messages, `recvmmsg` reading the
//! UDP_GRO segment size.
//!
//! Owns: building message headers on the stack and interpreting the kernel's answers. Must
//! never allocate: every array here is a fixed-size local of [`BATCH`] entries.

use std::io;
use std::mem;
use std::os::fd::AsRawFd;

use super::{
    classify_send_error, from_sockaddr, to_sockaddr_for, zeroed_storage, Cursor, RecvMeta,
    SendErrorAction, Transmit, UdpSock, Unit, BATCH,
};

/// Control-message space for one `u16` (UDP_SEGMENT) or one `c_int` (UDP_GRO), with room to
/// spare for anything else the kernel may attach; 8-byte aligned as `cmsghdr` requires.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

impl UdpSock {
    pub(super) fn send_batch_impl(&self, msgs: &[Transmit<'_>]) -> io::Result<usize> {
        let mut cur = Cursor { msg: 0, off: 0 };
        let progress = |c: &Cursor| c.msg + usize::from(c.off > 0);
        // SAFETY: mmsghdr, iovec and sockaddr_storage are plain C structs for which all-zero
        // (null pointers, zero lengths) is a valid value.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut addrs = [zeroed_storage(); BATCH];
        let mut cmsgs = [CmsgBuf([0; 64]); BATCH];
        let mut units: [Option<Unit>; BATCH] = [None; BATCH];

        while cur.msg < msgs.len() {
            let gso = self.gso_enabled();
            let mut c = cur;
            let mut n = 0;
            for (((hdr, iov), (addr, cmsg)), slot) in hdrs
                .iter_mut()
                .zip(iovs.iter_mut())
                .zip(addrs.iter_mut().zip(cmsgs.iter_mut()))
                .zip(units.iter_mut())
            {
                let Some(u) = c.next_unit(msgs, gso) else {
                    break;
                };
                let Some(t) = msgs.get(u.msg) else { break };
                let data = t.data.get(u.off..u.off + u.len).unwrap_or(&[]);
                iov.iov_base = data.as_ptr().cast_mut().cast();
                iov.iov_len = data.len();
                let alen = to_sockaddr_for(&t.dst, self.v6, addr);
                let mh = &mut hdr.msg_hdr;
                *mh = zeroed_msghdr();
                mh.msg_name = (addr as *mut libc::sockaddr_storage).cast();
                mh.msg_namelen = alen;
                mh.msg_iov = iov;
                mh.msg_iovlen = 1;
                if let Some(seg) = u.gso {
                    write_segment_cmsg(mh, cmsg, seg);
                }
                hdr.msg_len = 0;
                *slot = Some(u);
                c.advance(&u);
                n += 1;
            }
            if n == 0 {
                break;
            }
            // SAFETY: the first `n` headers point at live iovecs, addresses and control buffers
            // declared above, whose iovecs point into `msgs` (borrowed for this call); the
            // kernel only reads them for the duration of the call.
            let rc = unsafe {
                libc::sendmmsg(self.fd.as_raw_fd(), hdrs.as_mut_ptr(), n as libc::c_uint, 0)
            };
            if rc >= 0 {
                for u in units.iter().take(rc as usize).flatten() {
                    cur.advance(u);
                }
                continue;
            }
            let err = io::Error::last_os_error();
            let Some(first) = units.first().copied().flatten() else {
                break;
            };
            match classify_send_error(&err, first.gso.is_some()) {
                SendErrorAction::Retry => {}
                SendErrorAction::DisableGso => self.disable_gso(),
                SendErrorAction::Skip => {
                    self.note_send_error(&err);
                    cur.advance(&first);
                }
                SendErrorAction::Stop | SendErrorAction::Fail => {
                    return match progress(&cur) {
                        0 => Err(err),
                        p => Ok(p),
                    };
                }
            }
        }
        Ok(progress(&cur).min(msgs.len()))
    }

    pub(super) fn recv_batch_impl(
        &self,
        bufs: &mut [&mut [u8]],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        // SAFETY: plain C structs, all-zero is valid (see send_batch_impl).
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut iovs: [libc::iovec; BATCH] = unsafe { mem::zeroed() };
        let mut addrs = [zeroed_storage(); BATCH];
        let mut cmsgs = [CmsgBuf([0; 64]); BATCH];
        let mut n = 0;
        for (((hdr, iov), (addr, cmsg)), buf) in hdrs
            .iter_mut()
            .zip(iovs.iter_mut())
            .zip(addrs.iter_mut().zip(cmsgs.iter_mut()))
            .zip(bufs.iter_mut())
            .take(meta.len())
        {
            iov.iov_base = buf.as_mut_ptr().cast();
            iov.iov_len = buf.len();
            let mh = &mut hdr.msg_hdr;
            mh.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            mh.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            mh.msg_iov = iov;
            mh.msg_iovlen = 1;
            mh.msg_control = cmsg.0.as_mut_ptr().cast();
            mh.msg_controllen = cmsg.0.len();
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        let got = loop {
            // SAFETY: the first `n` headers point at live iovecs (over the caller's exclusively
            // borrowed buffers), address storage and control buffers declared above.
            let rc = unsafe {
                libc::recvmmsg(
                    self.fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    n as libc::c_uint,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break rc as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        for ((hdr, addr), m) in hdrs.iter().zip(addrs.iter()).zip(meta.iter_mut()).take(got) {
            let mh = &hdr.msg_hdr;
            let len = hdr.msg_len as usize;
            m.src = from_sockaddr(addr, mh.msg_namelen).unwrap_or_default_addr();
            if mh.msg_flags & libc::MSG_TRUNC != 0 {
                self.note_truncated();
                m.len = 0;
                m.segment_size = 0;
                continue;
            }
            m.len = len;
            m.segment_size = gro_segment_size(mh).unwrap_or(len);
        }
        Ok(got)
    }
}

trait OrDefaultAddr {
    fn unwrap_or_default_addr(self) -> std::net::SocketAddr;
}

impl OrDefaultAddr for Option<std::net::SocketAddr> {
    fn unwrap_or_default_addr(self) -> std::net::SocketAddr {
        self.unwrap_or_else(|| RecvMeta::default().src)
    }
}

fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is a plain C struct; all-zero (null pointers, zero lengths) is valid.
    unsafe { mem::zeroed() }
}

fn write_segment_cmsg(mh: &mut libc::msghdr, buf: &mut CmsgBuf, seg: u16) {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
    mh.msg_control = buf.0.as_mut_ptr().cast();
    mh.msg_controllen = space.min(buf.0.len());
    // SAFETY: msg_control points at `buf` (8-aligned, 64 bytes >= CMSG_SPACE(2) = 24), so
    // CMSG_FIRSTHDR returns a pointer inside it with room for the header and a u16.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(mh);
        if c.is_null() {
            return;
        }
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
    }
}

/// The UDP_GRO segment size the kernel attached, if any.
fn gro_segment_size(mh: &libc::msghdr) -> Option<usize> {
    // SAFETY: `mh` was filled by recvmmsg: msg_control points at our control buffer and the
    // kernel set msg_controllen to the bytes it wrote; the CMSG_* walkers stay within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(mh);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).ok().filter(|&s| s > 0);
            }
            c = libc::CMSG_NXTHDR(mh, c);
        }
    }
    None
}
