//! A minimal rtnetlink client: set MTU and link flags (RTM_NEWLINK) and add addresses
//! (RTM_NEWADDR), each request acknowledged.
//!
//! Owns: encoding those few requests and decoding the kernel's acknowledgement. Must never
//! trust the reply's lengths: every field is read through bounds-checked slices, and anything
//! malformed is an error, never a panic. Used at start-up only.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFF_UP: u32 = 0x1;

/// Size of the request buffers: the largest request (an IPv6 address) takes 64 bytes.
const REQ_LEN: usize = 128;

/// An open NETLINK_ROUTE socket with a request sequence counter.
pub(super) struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub(super) fn open() -> io::Result<Netlink> {
        // SAFETY: plain syscall with constant arguments.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Replies must not hang start-up forever if the kernel never answers.
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: `tv` is a live timeval and the length matches it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1 })
    }

    /// Sets the MTU and, with `up`, the IFF_UP flag of interface `index`.
    pub(super) fn set_link(&mut self, index: u32, mtu: Option<u32>, up: bool) -> io::Result<()> {
        let mut buf = [0u8; REQ_LEN];
        let seq = self.next_seq();
        let len = encode_newlink(&mut buf, seq, index, mtu, up);
        self.request(buf.get(..len).unwrap_or(&[]), seq)
    }

    /// Adds `addr/prefix` to interface `index` (IPv6 without duplicate address detection, so
    /// the address is usable at once).
    pub(super) fn add_addr(&mut self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let mut buf = [0u8; REQ_LEN];
        let seq = self.next_seq();
        let len = encode_newaddr(&mut buf, seq, index, addr, prefix);
        self.request(buf.get(..len).unwrap_or(&[]), seq)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn request(&self, msg: &[u8], seq: u32) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain C data; zero means "the kernel" (pid 0, no groups).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `sa` are live for the call and the lengths match them.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 8192];
        // Bounded: unrelated messages (other sequence numbers) are skipped a few times at most.
        for _ in 0..16 {
            // SAFETY: `reply` is a live writable buffer of the given length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    reply.as_mut_ptr().cast(),
                    reply.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            match parse_ack(reply.get(..n as usize).unwrap_or(&[]), seq)? {
                Some(Ok(())) => return Ok(()),
                Some(Err(errno)) => return Err(io::Error::from_raw_os_error(errno)),
                None => continue,
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no rtnetlink acknowledgement",
        ))
    }
}

/// Appends bytes at `*at`, ignoring what would not fit (the callers size `buf` generously and
/// the tests check the exact lengths).
fn put(buf: &mut [u8], at: &mut usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(*at..*at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
    *at += bytes.len();
}

fn put_attr(buf: &mut [u8], at: &mut usize, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    put(buf, at, &(len as u16).to_ne_bytes());
    put(buf, at, &ty.to_ne_bytes());
    put(buf, at, data);
    // Attributes are 4-byte aligned.
    *at = (*at + 3) & !3;
}

fn put_header(buf: &mut [u8], ty: u16, flags: u16, seq: u32) -> usize {
    let mut at = 0;
    put(buf, &mut at, &0u32.to_ne_bytes()); // length, patched by finish()
    put(buf, &mut at, &ty.to_ne_bytes());
    put(
        buf,
        &mut at,
        &(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes(),
    );
    put(buf, &mut at, &seq.to_ne_bytes());
    put(buf, &mut at, &0u32.to_ne_bytes()); // port id: the kernel fills it in
    at
}

fn finish(buf: &mut [u8], len: usize) -> usize {
    if let Some(dst) = buf.get_mut(0..4) {
        dst.copy_from_slice(&(len as u32).to_ne_bytes());
    }
    len
}

fn encode_newlink(buf: &mut [u8], seq: u32, index: u32, mtu: Option<u32>, up: bool) -> usize {
    let mut at = put_header(buf, RTM_NEWLINK, 0, seq);
    // ifinfomsg: family, pad, type, index, flags, change
    put(buf, &mut at, &[libc::AF_UNSPEC as u8, 0]);
    put(buf, &mut at, &0u16.to_ne_bytes());
    put(buf, &mut at, &index.to_ne_bytes());
    let flags = if up { IFF_UP } else { 0 };
    put(buf, &mut at, &flags.to_ne_bytes());
    put(
        buf,
        &mut at,
        &(if up { IFF_UP } else { 0u32 }).to_ne_bytes(),
    );
    if let Some(mtu) = mtu {
        put_attr(buf, &mut at, IFLA_MTU, &mtu.to_ne_bytes());
    }
    finish(buf, at)
}

fn encode_newaddr(buf: &mut [u8], seq: u32, index: u32, addr: IpAddr, prefix: u8) -> usize {
    let mut at = put_header(buf, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq);
    let family = match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    };
    // ifaddrmsg: family, prefixlen, flags, scope (universe), index
    put(buf, &mut at, &[family, prefix, 0, 0]);
    put(buf, &mut at, &index.to_ne_bytes());
    match addr {
        IpAddr::V4(a) => {
            put_attr(buf, &mut at, IFA_LOCAL, &a.octets());
            put_attr(buf, &mut at, IFA_ADDRESS, &a.octets());
        }
        IpAddr::V6(a) => {
            put_attr(buf, &mut at, IFA_ADDRESS, &a.octets());
            put_attr(buf, &mut at, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
        }
    }
    finish(buf, at)
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?.try_into().ok().map(u32::from_ne_bytes)
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)?.try_into().ok().map(u16::from_ne_bytes)
}

/// Looks for the acknowledgement of `seq` in one netlink datagram. `Some(Ok)` for success,
/// `Some(Err(errno))` for a refusal, `None` when the datagram holds no answer to `seq`.
///
/// # Errors
/// `InvalidData` when a message header is truncated or claims an impossible length.
fn parse_ack(mut b: &[u8], seq: u32) -> io::Result<Option<Result<(), i32>>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed rtnetlink reply");
    while !b.is_empty() {
        let len = read_u32(b, 0).ok_or_else(bad)? as usize;
        let ty = read_u16(b, 4).ok_or_else(bad)?;
        let mseq = read_u32(b, 8).ok_or_else(bad)?;
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(bad());
        }
        if mseq == seq {
            match ty {
                NLMSG_ERROR => {
                    let code = read_u32(b, NLMSG_HDRLEN).ok_or_else(bad)? as i32;
                    return Ok(Some(if code == 0 {
                        Ok(())
                    } else {
                        Err(code.saturating_neg())
                    }));
                }
                NLMSG_DONE => return Ok(Some(Ok(()))),
                _ => {}
            }
        }
        let step = (len + 3) & !3;
        b = b.get(step..).unwrap_or(&[]);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&36u32.to_ne_bytes());
        v.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&code.to_ne_bytes());
        v.extend_from_slice(&[0u8; 16]); // the echoed request header
        v
    }

    #[test]
    fn newaddr_v4_layout() {
        let mut b = [0u8; REQ_LEN];
        let n = encode_newaddr(&mut b, 7, 3, "100.64.0.1".parse().unwrap(), 24);
        assert_eq!(n, 16 + 8 + 8 + 8);
        assert_eq!(read_u32(&b, 0), Some(n as u32));
        assert_eq!(read_u16(&b, 4), Some(RTM_NEWADDR));
        assert_eq!(
            read_u16(&b, 6),
            Some(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)
        );
        assert_eq!(read_u32(&b, 8), Some(7));
        assert_eq!(&b[16..20], &[libc::AF_INET as u8, 24, 0, 0]);
        assert_eq!(read_u32(&b, 20), Some(3));
        assert_eq!(read_u16(&b, 24), Some(8));
        assert_eq!(read_u16(&b, 26), Some(IFA_LOCAL));
        assert_eq!(&b[28..32], &[100, 64, 0, 1]);
    }

    #[test]
    fn newaddr_v6_and_newlink_lengths() {
        let mut b = [0u8; REQ_LEN];
        let n = encode_newaddr(&mut b, 1, 3, "fd00::1".parse().unwrap(), 64);
        assert_eq!(n, 16 + 8 + 20 + 8);
        assert_eq!(read_u32(&b, 0), Some(n as u32));
        let n = encode_newlink(&mut b, 2, 9, Some(1400), true);
        assert_eq!(n, 16 + 16 + 8);
        assert_eq!(read_u32(&b, 20), Some(9));
        assert_eq!(read_u32(&b, 24), Some(IFF_UP));
        assert_eq!(read_u32(&b, 36), Some(1400));
    }

    #[test]
    fn ack_decoding() {
        assert_eq!(parse_ack(&ack(5, 0), 5).unwrap(), Some(Ok(())));
        assert_eq!(
            parse_ack(&ack(5, -libc::EEXIST), 5).unwrap(),
            Some(Err(libc::EEXIST))
        );
        assert_eq!(parse_ack(&ack(4, 0), 5).unwrap(), None);
        let mut two = ack(4, 0);
        two.extend(ack(5, -libc::EPERM));
        assert_eq!(parse_ack(&two, 5).unwrap(), Some(Err(libc::EPERM)));
        assert!(parse_ack(&ack(5, 0)[..10], 5).is_err());
        let mut lying = ack(5, 0);
        lying[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_ack(&lying, 5).is_err());
        lying[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse_ack(&lying, 5).is_err());
    }

    proptest! {
        #[test]
        fn ack_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200), seq: u32) {
            let _ = parse_ack(&b, seq);
        }
    }
}
