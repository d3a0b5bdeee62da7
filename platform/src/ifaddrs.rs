//! The host's own interface addresses (`getifaddrs`), for the endpoints a node publishes.
//!
//! Owns only the read of the kernel's list; the policy of which addresses to publish lives in
//! the control plane.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The addresses of interfaces that are up, without loopback, link-local and unspecified
/// ones, in the kernel's order (duplicates removed).
///
/// # Errors
/// The OS error of `getifaddrs`.
pub fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into a valid pointer; freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    // Bounded: the kernel's list is finite; cap it anyway.
    for _ in 0..4096 {
        if cur.is_null() {
            break;
        }
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        let up = ifa.ifa_flags & (libc::IFF_UP as libc::c_uint) != 0;
        if !up || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr of the family it names.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let ip = if family == libc::AF_INET {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
            IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
        } else if family == libc::AF_INET6 {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
            IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
        } else {
            continue;
        };
        let skip = ip.is_loopback()
            || ip.is_unspecified()
            || match ip {
                IpAddr::V4(a) => a.is_link_local(),
                IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
            };
        if !skip && !out.contains(&ip) {
            out.push(ip);
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_without_loopback() {
        let addrs = super::local_addresses().expect("getifaddrs");
        assert!(addrs.iter().all(|a| !a.is_loopback()), "{addrs:?}");
    }
}
