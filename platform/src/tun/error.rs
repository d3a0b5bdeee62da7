//! The one error type of the platform boundary.
//!
//! Owns: every failure TUN, UDP and slab set-up can report, each variant naming the cause and
//! the fix an operator can apply. Must never carry a secret or a packet's contents; hot-path
//! I/O (`read`/`write`/`send_batch`/`recv_batch`) returns plain `io::Error` instead, because
//! WouldBlock and EINTR are expected there and must stay cheap.

use std::io;

/// Why a platform resource (TUN device, UDP socket group, frame slab) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// The process lacks CAP_NET_ADMIN (EPERM/EACCES from the kernel).
    #[error("no CAP_NET_ADMIN while {what}: run as root or grant cap_net_admin (setcap cap_net_admin+ep <binary>)")]
    NoNetAdmin {
        /// The step that was refused.
        what: &'static str,
    },
    /// `/dev/net/tun` is missing (no tun module or a container without the device node).
    #[error("/dev/net/tun is missing: load the tun module (modprobe tun) or pass the device into the container")]
    NoTunDevice,
    /// Another live interface already uses the requested name.
    #[error("TUN name {name} is taken by another live interface: pick another name or remove it (ip link del {name})")]
    NameTaken {
        /// The requested interface name.
        name: String,
    },
    /// The interface name is empty, too long (IFNAMSIZ-1 = 15 bytes) or has forbidden bytes.
    #[error(
        "TUN name {name:?} is invalid: expected 1..=15 bytes of [A-Za-z0-9_.-] (optionally one %d)"
    )]
    BadName {
        /// The rejected name.
        name: String,
    },
    /// The MTU is outside the range the dataplane supports.
    #[error("MTU {mtu} out of range 576..=65535")]
    MtuOutOfRange {
        /// The rejected MTU.
        mtu: u32,
    },
    /// A prefix length is larger than the address family allows.
    #[error("prefix length /{len} out of range for {addr} (IPv4 allows /0..=32, IPv6 /0..=128)")]
    BadPrefix {
        /// The address the prefix belongs to, as text.
        addr: String,
        /// The rejected prefix length.
        len: u8,
    },
    /// The queue count is zero or above what a multi-queue TUN accepts.
    #[error("TUN queue count {queues} out of range 1..=256")]
    BadQueueCount {
        /// The rejected queue count.
        queues: usize,
    },
    /// A UDP port is already bound without SO_REUSEPORT by someone else.
    #[error("UDP port {port} in use: stop the other process or choose another listen port")]
    PortInUse {
        /// The port that was refused.
        port: u16,
    },
    /// A port below 1024 needs CAP_NET_BIND_SERVICE.
    #[error("UDP port {port} is privileged: run as root, grant cap_net_bind_service or listen on a port >= 1024")]
    PrivilegedPort {
        /// The port that was refused.
        port: u16,
    },
    /// The requested bind address is not configured on this host.
    #[error("cannot bind {addr}: address not available on this host (check the listen address)")]
    AddrNotAvailable {
        /// The bind address.
        addr: std::net::SocketAddr,
    },
    /// A socket group was asked for zero sockets.
    #[error("UDP socket group size {n} out of range 1..=1024")]
    BadGroupSize {
        /// The rejected group size.
        n: usize,
    },
    /// A slab geometry that cannot be allocated.
    #[error("slab of {frames} frames x {frame_size} bytes is invalid: expected 1..=2^24 frames of 1..=1 MiB each, total below isize::MAX")]
    BadSlabGeometry {
        /// Requested frame size.
        frame_size: usize,
        /// Requested frame count.
        frames: usize,
    },
    /// The allocator could not provide the slab memory.
    #[error(
        "out of memory allocating a {bytes}-byte frame slab: lower --workers or the frame count"
    )]
    SlabAlloc {
        /// Bytes requested.
        bytes: usize,
    },
    /// This operation is not available on the running OS.
    #[error("{what} is not supported on this operating system")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
    /// Any other OS error, with the step that failed.
    #[error("{what} failed: {source}")]
    Os {
        /// The step that failed (e.g. "TUNSETIFF", "RTM_NEWADDR").
        what: &'static str,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

impl PlatformError {
    /// Wraps an OS error, turning EPERM/EACCES into [`PlatformError::NoNetAdmin`] because that
    /// is by far the most common cause and has a precise fix.
    pub(crate) fn os(what: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => PlatformError::NoNetAdmin { what },
            _ => PlatformError::Os { what, source },
        }
    }

    /// Wraps the current `errno` (call right after a failing libc call).
    pub(crate) fn last_os(what: &'static str) -> Self {
        Self::os(what, io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_maps_to_no_net_admin() {
        let e = PlatformError::os("TUNSETIFF", io::Error::from_raw_os_error(libc::EPERM));
        assert!(matches!(e, PlatformError::NoNetAdmin { what: "TUNSETIFF" }));
        assert!(e.to_string().contains("cap_net_admin"));
    }

    #[test]
    fn other_errno_keeps_source() {
        let e = PlatformError::os("RTM_NEWADDR", io::Error::from_raw_os_error(libc::EEXIST));
        assert!(matches!(
            e,
            PlatformError::Os {
                what: "RTM_NEWADDR",
                ..
            }
        ));
    }

    #[test]
    fn messages_name_the_fix() {
        assert_eq!(
            PlatformError::MtuOutOfRange { mtu: 100 }.to_string(),
            "MTU 100 out of range 576..=65535"
        );
        let t = PlatformError::NameTaken { name: "sm0".into() }.to_string();
        assert!(t.contains("TUN name sm0 is taken"));
        assert!(PlatformError::PortInUse { port: 51820 }
            .to_string()
            .contains("UDP port 51820 in use"));
    }
}
