//! Linux TUN: `/dev/net/tun` queues with IFF_MULTI_QUEUE, vnet_hdr offloads, rtnetlink set-up.
//!
//! Owns: the TUNSETIFF / TUNSETVNETHDRSZ / TUNSETOFFLOAD ioctls and the order of set-up. Must
//! never leave a half-configured device behind on error: every fd opened so far is dropped,
//! which deletes the (non-persistent) device.

use std::ffi::CStr;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::netlink::Netlink;
use super::{Offloads, PlatformError, Tun, TunConfig, TunQueue, VNET_HDR_LEN};

/// IFF_TUN_EXCL: TUNSETIFF fails with EBUSY if the name exists. Used for the first queue so a
/// live device of the same name is reported instead of silently joined.
const IFF_TUN_EXCL: libc::c_int = 0x8000;

const BASE_OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
const USO_OFFLOADS: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

pub(super) fn create(cfg: &TunConfig) -> Result<Tun, PlatformError> {
    let mut flags = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
    if cfg.offload {
        flags |= libc::IFF_VNET_HDR;
    }
    let mut queues = Vec::with_capacity(cfg.queues);
    let (first, name) = open_queue(&cfg.name, flags | IFF_TUN_EXCL)?;
    let offloads = if cfg.offload {
        enable_offloads(&first)?
    } else {
        Offloads::default()
    };
    queues.push(TunQueue {
        fd: first,
        vnet_hdr: cfg.offload,
    });
    for _ in 1..cfg.queues {
        let (fd, _) = open_queue(&name, flags)?;
        queues.push(TunQueue {
            fd,
            vnet_hdr: cfg.offload,
        });
    }

    let index = if_index(&name).map_err(|e| PlatformError::os("if_nametoindex", e))?;
    let mut nl = Netlink::open().map_err(|e| PlatformError::os("rtnetlink socket", e))?;
    nl.set_link(index, Some(cfg.mtu), false)
        .map_err(|e| PlatformError::os("RTM_NEWLINK (set MTU)", e))?;
    let v4 = cfg.ipv4.iter().map(|(a, p)| (IpAddr::V4(*a), *p));
    let v6 = cfg.ipv6.iter().map(|(a, p)| (IpAddr::V6(*a), *p));
    for (addr, prefix) in v4.chain(v6) {
        nl.add_addr(index, addr, prefix)
            .map_err(|e| PlatformError::os("RTM_NEWADDR", e))?;
    }
    nl.set_link(index, None, true)
        .map_err(|e| PlatformError::os("RTM_NEWLINK (link up)", e))?;
    tracing::info!(name = %name, queues = cfg.queues, mtu = cfg.mtu, ?offloads, "TUN device up");
    Ok(Tun {
        name,
        index,
        mtu: cfg.mtu,
        offloads,
        queues,
    })
}

/// Opens `/dev/net/tun` non-blocking and attaches it to `name` with `flags`; returns the fd
/// and the name the kernel used.
fn open_queue(name: &str, flags: libc::c_int) -> Result<(OwnedFd, String), PlatformError> {
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a NUL-terminated string; flags are constants.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                PlatformError::NoTunDevice
            }
            _ => PlatformError::os("open /dev/net/tun", e),
        });
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut ifr = ifreq_named(name);
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `ifr` is, live for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut ifr) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            // EBUSY: exists (IFF_TUN_EXCL) or is a TUN with other flags; EINVAL: the name
            // belongs to a device of another kind.
            Some(libc::EBUSY) | Some(libc::EINVAL) => PlatformError::NameTaken {
                name: name.to_owned(),
            },
            _ => PlatformError::os("TUNSETIFF", e),
        });
    }
    // SAFETY: the kernel wrote a NUL-terminated name of at most IFNAMSIZ bytes into ifr_name,
    // and `ifreq_named` zero-filled it so a terminator exists within the array.
    let got = unsafe { CStr::from_ptr(ifr.ifr_name.as_ptr()) };
    Ok((fd, got.to_string_lossy().into_owned()))
}

/// Sets the vnet header size and the richest offload set the kernel accepts: with USO first,
/// then (on EINVAL, kernels before 6.2) without.
fn enable_offloads(fd: &OwnedFd) -> Result<Offloads, PlatformError> {
    let sz: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, live for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &raw const sz) } < 0 {
        return Err(PlatformError::last_os("TUNSETVNETHDRSZ"));
    }
    let mut chosen = None;
    for set in [BASE_OFFLOADS | USO_OFFLOADS, BASE_OFFLOADS] {
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long bit set).
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, set as libc::c_ulong) } == 0 {
            chosen = Some(set);
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(PlatformError::os("TUNSETOFFLOAD", e));
        }
    }
    let Some(set) = chosen else {
        return Err(PlatformError::os(
            "TUNSETOFFLOAD",
            io::Error::from_raw_os_error(libc::EINVAL),
        ));
    };
    Ok(offloads_from_bits(set))
}

fn offloads_from_bits(set: libc::c_uint) -> Offloads {
    Offloads {
        vnet_hdr: true,
        csum: set & libc::TUN_F_CSUM != 0,
        tso4: set & libc::TUN_F_TSO4 != 0,
        tso6: set & libc::TUN_F_TSO6 != 0,
        uso4: set & libc::TUN_F_USO4 != 0,
        uso6: set & libc::TUN_F_USO6 != 0,
    }
}

fn ifreq_named(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain C data; all-zero is valid (and NUL-terminates the name).
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // Names were validated to be at most 15 bytes, so the terminator survives.
    for (dst, src) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    ifr
}

fn if_index(name: &str) -> io::Result<u32> {
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated string live for the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offload_bits_are_reported() {
        let o = offloads_from_bits(BASE_OFFLOADS);
        assert!(o.vnet_hdr && o.csum && o.tso4 && o.tso6 && !o.uso4 && !o.uso6);
        let o = offloads_from_bits(BASE_OFFLOADS | USO_OFFLOADS);
        assert!(o.uso4 && o.uso6);
    }

    #[test]
    fn ifreq_name_is_terminated() {
        let ifr = ifreq_named("abcdefghijklmnopqrst");
        assert_eq!(ifr.ifr_name[15], 0);
        assert_eq!(ifr.ifr_name[0], b'a' as libc::c_char);
    }
}
