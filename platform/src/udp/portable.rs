//! Portable batched UDP I/O (macOS, BSDs): one `sendto`/`recvmsg` per datagram, no offloads.
//!
//! Owns: the same batch contract as the Linux module over plain syscalls. Must never allocate.

use std::io;
use std::mem;
use std::os::fd::AsRawFd;

use super::{
    classify_send_error, from_sockaddr, to_sockaddr_for, zeroed_storage, Cursor, RecvMeta,
    SendErrorAction, Transmit, UdpSock,
};

impl UdpSock {
    pub(super) fn send_batch_impl(&self, msgs: &[Transmit<'_>]) -> io::Result<usize> {
        let mut cur = Cursor { msg: 0, off: 0 };
        let progress = |c: &Cursor| c.msg + usize::from(c.off > 0);
        let mut addr = zeroed_storage();
        // GSO is never enabled here, so every segment is its own datagram.
        while let Some(u) = cur.next_unit(msgs, false) {
            let Some(t) = msgs.get(u.msg) else { break };
            let data = t.data.get(u.off..u.off + u.len).unwrap_or(&[]);
            let alen = to_sockaddr_for(&t.dst, self.v6, &mut addr);
            // SAFETY: `data` and `addr` are live for the call and the lengths match them.
            let rc = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    0,
                    (&raw const addr).cast(),
                    alen,
                )
            };
            if rc >= 0 {
                cur.advance(&u);
                continue;
            }
            let err = io::Error::last_os_error();
            match classify_send_error(&err, false) {
                SendErrorAction::Retry | SendErrorAction::DisableGso => {}
                SendErrorAction::Skip => {
                    self.note_send_error(&err);
                    cur.advance(&u);
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
        let mut got = 0;
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(super::BATCH) {
            let mut addr = zeroed_storage();
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: msghdr is plain C data; all-zero is valid.
            let mut mh: libc::msghdr = unsafe { mem::zeroed() };
            mh.msg_name = (&raw mut addr).cast();
            mh.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            mh.msg_iov = &raw mut iov;
            mh.msg_iovlen = 1;
            let rc = loop {
                // SAFETY: `mh` points at live `addr` and `iov` (over the caller's buffer).
                let rc = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut mh, 0) };
                if rc >= 0 {
                    break rc;
                }
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return if got == 0 { Err(err) } else { Ok(got) };
                }
            };
            m.src = from_sockaddr(&addr, mh.msg_namelen).unwrap_or(RecvMeta::default().src);
            if mh.msg_flags & libc::MSG_TRUNC != 0 {
                self.note_truncated();
                m.len = 0;
                m.segment_size = 0;
            } else {
                m.len = rc as usize;
                m.segment_size = rc as usize;
            }
            got += 1;
        }
        Ok(got)
    }
}
