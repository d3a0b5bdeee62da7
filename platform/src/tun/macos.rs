//! macOS TUN: a `utun` kernel-control socket, configured with ioctls.
//!
//! Owns: opening `com.apple.net.utun_control`, reading back the `utunN` name, setting MTU,
//! addresses and IFF_UP, and the 4-byte address-family header utun puts before every packet
//! (stripped on read, added on write, so callers see bare IP packets as on Linux). Must never
//! shell out to `ifconfig`/`route`. No multi-queue and no offloads exist here.
//!
//! Missing: routes for the configured prefixes (utun is point-to-point, so the kernel adds no
//! prefix route; a PF_ROUTE message is needed). Type-checked only in this repository's CI.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::{Offloads, PlatformError, Tun, TunConfig, TunQueue};
use crate::udp::set_nonblocking_cloexec;

const UTUN_CONTROL_NAME: &[u8] = b"com.apple.net.utun_control";
const SIOCSIFFLAGS: libc::c_ulong = 0x8020_6910;
const SIOCGIFFLAGS: libc::c_ulong = 0xc020_6911;
const SIOCSIFMTU: libc::c_ulong = 0x8020_6934;
const SIOCAIFADDR: libc::c_ulong = 0x8040_691a;
const SIOCAIFADDR_IN6: libc::c_ulong = 0x8080_691a;
const IN6_IFF_NODAD: libc::c_int = 0x0020;
const ND6_INFINITE_LIFETIME: u32 = 0xffff_ffff;

/// `struct in6_addrlifetime` from netinet6/in6_var.h.
#[repr(C)]
struct In6AddrLifetime {
    expire: libc::time_t,
    preferred: libc::time_t,
    vltime: u32,
    pltime: u32,
}

/// `struct in6_aliasreq` from netinet6/in6_var.h (128 bytes).
#[repr(C)]
struct In6AliasReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    addr: libc::sockaddr_in6,
    dstaddr: libc::sockaddr_in6,
    prefixmask: libc::sockaddr_in6,
    flags: libc::c_int,
    lifetime: In6AddrLifetime,
}

pub(super) fn create(cfg: &TunConfig) -> Result<Tun, PlatformError> {
    if cfg.queues != 1 {
        return Err(PlatformError::Unsupported {
            what: "multi-queue TUN (macOS utun has one queue)",
        });
    }
    let unit = utun_unit(&cfg.name).ok_or_else(|| PlatformError::BadName {
        name: cfg.name.clone(),
    })?;
    // SAFETY: plain syscall with constant arguments.
    let raw = unsafe { libc::socket(libc::PF_SYSTEM, libc::SOCK_DGRAM, libc::SYSPROTO_CONTROL) };
    if raw < 0 {
        return Err(PlatformError::last_os("socket(PF_SYSTEM)"));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    // SAFETY: ctl_info is plain C data; all-zero is valid.
    let mut info: libc::ctl_info = unsafe { mem::zeroed() };
    for (d, s) in info.ctl_name.iter_mut().zip(UTUN_CONTROL_NAME) {
        *d = *s as libc::c_char;
    }
    // SAFETY: CTLIOCGINFO reads and writes one ctl_info, live for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::CTLIOCGINFO, &raw mut info) } < 0 {
        return Err(PlatformError::last_os("CTLIOCGINFO utun_control"));
    }
    // SAFETY: sockaddr_ctl is plain C data; all-zero is valid.
    let mut sc: libc::sockaddr_ctl = unsafe { mem::zeroed() };
    sc.sc_len = mem::size_of::<libc::sockaddr_ctl>() as u8;
    sc.sc_family = libc::AF_SYSTEM as u8;
    sc.ss_sysaddr = libc::AF_SYS_CONTROL as u16;
    sc.sc_id = info.ctl_id;
    sc.sc_unit = unit;
    // SAFETY: `sc` is a live sockaddr_ctl and the length matches it.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const sc).cast(),
            mem::size_of::<libc::sockaddr_ctl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EBUSY) => PlatformError::NameTaken {
                name: cfg.name.clone(),
            },
            _ => PlatformError::os("connect utun", e),
        });
    }
    let name = utun_name(&fd)?;
    set_nonblocking_cloexec(&fd).map_err(|e| PlatformError::os("fcntl(O_NONBLOCK)", e))?;

    // SAFETY: plain syscall with constant arguments; the socket only carries ioctls.
    let ctl_raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if ctl_raw < 0 {
        return Err(PlatformError::last_os("socket(AF_INET) for ioctls"));
    }
    // SAFETY: fresh descriptor nobody else owns.
    let ctl = unsafe { OwnedFd::from_raw_fd(ctl_raw) };
    let mut ifr = ifreq_named(&name);
    ifr.ifr_ifru.ifru_mtu = cfg.mtu as libc::c_int;
    // SAFETY: SIOCSIFMTU reads one ifreq, live for the call.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), SIOCSIFMTU, &raw mut ifr) } < 0 {
        return Err(PlatformError::last_os("SIOCSIFMTU"));
    }
    for (a, len) in &cfg.ipv4 {
        add_v4(&ctl, &name, *a, *len)?;
    }
    if !cfg.ipv6.is_empty() {
        // SAFETY: as above.
        let raw6 = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0) };
        if raw6 < 0 {
            return Err(PlatformError::last_os("socket(AF_INET6) for ioctls"));
        }
        // SAFETY: fresh descriptor nobody else owns.
        let ctl6 = unsafe { OwnedFd::from_raw_fd(raw6) };
        for (a, len) in &cfg.ipv6 {
            add_v6(&ctl6, &name, *a, *len)?;
        }
    }
    let mut ifr = ifreq_named(&name);
    // SAFETY: SIOCGIFFLAGS writes one ifreq, live for the call.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), SIOCGIFFLAGS, &raw mut ifr) } < 0 {
        return Err(PlatformError::last_os("SIOCGIFFLAGS"));
    }
    // SAFETY: the kernel just filled the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads one ifreq, live for the call.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), SIOCSIFFLAGS, &raw mut ifr) } < 0 {
        return Err(PlatformError::last_os("SIOCSIFFLAGS"));
    }
    let c = std::ffi::CString::new(name.clone())
        .map_err(|_| PlatformError::BadName { name: name.clone() })?;
    // SAFETY: `c` is NUL-terminated and live for the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    Ok(Tun {
        name,
        index,
        mtu: cfg.mtu,
        offloads: Offloads::default(),
        queues: vec![TunQueue {
            fd,
            vnet_hdr: false,
        }],
    })
}

/// `utun` → 0 (any free unit), `utunN` → N + 1 (the control unit numbering).
fn utun_unit(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("utun")?;
    if rest.is_empty() || rest == "%d" {
        return Some(0);
    }
    rest.parse::<u32>().ok()?.checked_add(1)
}

fn utun_name(fd: &OwnedFd) -> Result<String, PlatformError> {
    let mut buf = [0u8; libc::IFNAMSIZ];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf`/`len` are live and `len` states the buffer size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SYSPROTO_CONTROL,
            libc::UTUN_OPT_IFNAME,
            buf.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(PlatformError::last_os("getsockopt(UTUN_OPT_IFNAME)"));
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(buf.get(..n).unwrap_or(&[])).into_owned())
}

fn ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain C data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    ifr
}

fn sin(a: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr_in is plain C data; all-zero is valid.
    let mut s: libc::sockaddr_in = unsafe { mem::zeroed() };
    s.sin_len = mem::size_of::<libc::sockaddr_in>() as u8;
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_addr = libc::in_addr {
        s_addr: u32::from_ne_bytes(a.octets()),
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes and plain data.
    unsafe { mem::transmute::<libc::sockaddr_in, libc::sockaddr>(s) }
}

fn sin6(a: Ipv6Addr) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain C data; all-zero is valid.
    let mut s: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    s.sin6_len = mem::size_of::<libc::sockaddr_in6>() as u8;
    s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    s.sin6_addr = libc::in6_addr {
        s6_addr: a.octets(),
    };
    s
}

fn add_v4(ctl: &OwnedFd, name: &str, a: Ipv4Addr, len: u8) -> Result<(), PlatformError> {
    let mask = Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0));
    // SAFETY: ifaliasreq is plain C data; all-zero is valid.
    let mut req: libc::ifaliasreq = unsafe { mem::zeroed() };
    for (d, s) in req
        .ifra_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    req.ifra_addr = sin(a);
    req.ifra_broadaddr = sin(a); // point-to-point: the peer side is ourselves
    req.ifra_mask = sin(mask);
    // SAFETY: SIOCAIFADDR reads one ifaliasreq, live for the call.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), SIOCAIFADDR, &raw mut req) } < 0 {
        return Err(PlatformError::last_os("SIOCAIFADDR"));
    }
    Ok(())
}

fn add_v6(ctl: &OwnedFd, name: &str, a: Ipv6Addr, len: u8) -> Result<(), PlatformError> {
    let mask = Ipv6Addr::from(u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0));
    // SAFETY: In6AliasReq is a repr(C) struct of plain data; all-zero is valid.
    let mut req: In6AliasReq = unsafe { mem::zeroed() };
    for (d, s) in req
        .name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    req.addr = sin6(a);
    req.prefixmask = sin6(mask);
    req.flags = IN6_IFF_NODAD;
    req.lifetime.vltime = ND6_INFINITE_LIFETIME;
    req.lifetime.pltime = ND6_INFINITE_LIFETIME;
    // SAFETY: SIOCAIFADDR_IN6 reads one in6_aliasreq, which `req` mirrors, live for the call.
    if unsafe { libc::ioctl(ctl.as_raw_fd(), SIOCAIFADDR_IN6, &raw mut req) } < 0 {
        return Err(PlatformError::last_os("SIOCAIFADDR_IN6"));
    }
    Ok(())
}

impl TunQueue {
    /// Reads one packet, dropping utun's 4-byte address-family header.
    pub(super) fn read_os(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut hdr = [0u8; 4];
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        // SAFETY: both iovecs point at live, exclusively borrowed buffers of the given sizes.
        let n = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((n as usize).saturating_sub(hdr.len()))
    }

    /// Writes one bare IP packet, adding utun's address-family header from its version nibble.
    pub(super) fn write_os(&self, buf: &[u8]) -> io::Result<usize> {
        let af = match buf.first().map(|b| b >> 4) {
            Some(4) => libc::AF_INET,
            Some(6) => libc::AF_INET6,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not an IPv4/IPv6 packet",
                ))
            }
        };
        let hdr = (af as u32).to_be_bytes();
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr().cast_mut().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_ptr().cast_mut().cast(),
                iov_len: buf.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers the kernel only reads.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((n as usize).saturating_sub(hdr.len()))
    }
}
