//! TUN devices: Linux multi-queue TUN with vnet_hdr offloads, macOS utun.
//!
//! Owns: creating the overlay interface, enabling offloads the kernel accepts, configuring
//! MTU, addresses and link state (rtnetlink on Linux, ioctls on macOS), and handing each worker
//! its own non-blocking queue. Must never shell out (no `ip`/`ifconfig`), never block on a
//! queue, and never parse packets: a queue moves raw bytes (with the 10-byte virtio-net header
//! in front when [`Offloads::vnet_hdr`] is set; the dataplane's offload code owns that header).
//!
//! Lifetime: the device is not persistent, so the kernel deletes it when the last queue is
//! closed (dropping [`Tun`] or the last [`TunQueue`]).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

mod error;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "linux")]
mod netlink;

pub use error::PlatformError;

/// Length of the `virtio_net_hdr` that precedes every packet on a queue with
/// [`Offloads::vnet_hdr`] (set with TUNSETVNETHDRSZ; no mergeable-buffers field).
pub const VNET_HDR_LEN: usize = 10;

/// Smallest MTU accepted (the IPv4 minimum datagram every host must take).
pub const MIN_MTU: u32 = 576;
/// Largest MTU accepted.
pub const MAX_MTU: u32 = 65535;
/// Most queues one multi-queue TUN accepts here (the kernel's MAX_TAP_QUEUES is 256).
pub const MAX_QUEUES: usize = 256;

/// How to create the overlay interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunConfig {
    /// Interface name, 1..=15 bytes; may contain one `%d` for the kernel to number (Linux).
    /// On macOS it must be `utun` (any free unit) or `utunN`.
    pub name: String,
    /// Number of queues, one per worker (macOS: must be 1).
    pub queues: usize,
    /// MTU in bytes, 576..=65535.
    pub mtu: u32,
    /// IPv4 addresses with prefix length (the prefix route points into the TUN).
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    /// IPv6 addresses with prefix length (added without duplicate address detection).
    pub ipv6: Vec<(Ipv6Addr, u8)>,
    /// Ask for IFF_VNET_HDR and TSO/USO/checksum offloads (Linux only).
    pub offload: bool,
}

/// Which offloads the kernel accepted for the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Every packet on a queue carries a [`VNET_HDR_LEN`]-byte virtio-net header.
    pub vnet_hdr: bool,
    /// Packets may arrive with a partial checksum (TUN_F_CSUM).
    pub csum: bool,
    /// TCP/IPv4 super-packets up to 64 KiB (TUN_F_TSO4).
    pub tso4: bool,
    /// TCP/IPv6 super-packets (TUN_F_TSO6).
    pub tso6: bool,
    /// UDP/IPv4 super-packets (TUN_F_USO4, Linux 6.2+).
    pub uso4: bool,
    /// UDP/IPv6 super-packets (TUN_F_USO6, Linux 6.2+).
    pub uso6: bool,
}

/// A created TUN device and its queues. Dropping it (with all queues) deletes the device.
#[derive(Debug)]
pub struct Tun {
    name: String,
    index: u32,
    mtu: u32,
    offloads: Offloads,
    queues: Vec<TunQueue>,
}

/// One queue of a TUN device: a non-blocking fd owned by one worker.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
    vnet_hdr: bool,
}

impl Tun {
    /// Creates and configures the device (queues, offloads, MTU, addresses, link up).
    ///
    /// # Errors
    /// [`PlatformError::NoNetAdmin`] without CAP_NET_ADMIN, [`PlatformError::NameTaken`] when
    /// another live interface has the name, [`PlatformError::MtuOutOfRange`],
    /// [`PlatformError::BadName`], [`PlatformError::BadPrefix`],
    /// [`PlatformError::BadQueueCount`], [`PlatformError::NoTunDevice`], or
    /// [`PlatformError::Os`] naming the step that failed.
    pub fn create(cfg: &TunConfig) -> Result<Tun, PlatformError> {
        validate(cfg)?;
        Self::create_os(cfg)
    }

    #[cfg(target_os = "linux")]
    fn create_os(cfg: &TunConfig) -> Result<Tun, PlatformError> {
        linux::create(cfg)
    }

    #[cfg(target_os = "macos")]
    fn create_os(cfg: &TunConfig) -> Result<Tun, PlatformError> {
        macos::create(cfg)
    }

    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    fn create_os(_cfg: &TunConfig) -> Result<Tun, PlatformError> {
        Err(PlatformError::Unsupported { what: "TUN device" })
    }

    /// The interface name the kernel assigned (resolves a `%d` pattern).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index.
    #[must_use]
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The MTU that was configured.
    #[must_use]
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// Offloads the kernel accepted.
    #[must_use]
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The queues, in creation order.
    #[must_use]
    pub fn queues(&self) -> &[TunQueue] {
        &self.queues
    }

    /// Hands the queues out (one per worker). The device lives until the last one is dropped.
    #[must_use]
    pub fn into_queues(self) -> Vec<TunQueue> {
        self.queues
    }
}

impl TunQueue {
    /// Reads one packet (with its virtio-net header when [`Self::vnet_hdr`]) into `buf`.
    /// With offloads a packet can be a 64 KiB super-packet: size `buf` to
    /// `65536 + VNET_HDR_LEN`, or longer packets are cut short by the kernel.
    ///
    /// # Errors
    /// `WouldBlock` when no packet is queued; other errors from the kernel.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_os(buf)
    }

    /// Writes one packet (with its virtio-net header when [`Self::vnet_hdr`]).
    ///
    /// # Errors
    /// `WouldBlock` when the device queue is full; `EINVAL` for a malformed packet or header.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        self.write_os(buf)
    }

    /// Whether packets on this queue carry a [`VNET_HDR_LEN`]-byte virtio-net header.
    #[must_use]
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Gives up the wrapper and returns the fd (for an io_uring engine that owns it).
    #[must_use]
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    #[cfg(not(target_os = "macos"))]
    fn read_os(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a live, exclusively borrowed buffer of `buf.len()` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    #[cfg(not(target_os = "macos"))]
    fn write_os(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is a live buffer of `buf.len()` bytes, only read by the kernel.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for TunQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Checks a configuration before any syscall, so bad input never half-creates a device.
fn validate(cfg: &TunConfig) -> Result<(), PlatformError> {
    validate_name(&cfg.name)?;
    if cfg.queues == 0 || cfg.queues > MAX_QUEUES {
        return Err(PlatformError::BadQueueCount { queues: cfg.queues });
    }
    if !(MIN_MTU..=MAX_MTU).contains(&cfg.mtu) {
        return Err(PlatformError::MtuOutOfRange { mtu: cfg.mtu });
    }
    for (a, len) in &cfg.ipv4 {
        if *len > 32 {
            return Err(PlatformError::BadPrefix {
                addr: a.to_string(),
                len: *len,
            });
        }
    }
    for (a, len) in &cfg.ipv6 {
        if *len > 128 {
            return Err(PlatformError::BadPrefix {
                addr: a.to_string(),
                len: *len,
            });
        }
    }
    Ok(())
}

/// 1..=15 bytes (IFNAMSIZ - 1) of `[A-Za-z0-9_.-]`, at most one `%d`; never `.`/`..` or a
/// `/`, which the kernel would refuse (or a sysfs path would misread).
fn validate_name(name: &str) -> Result<(), PlatformError> {
    let bad = || PlatformError::BadName {
        name: name.to_owned(),
    };
    if name.is_empty() || name.len() > 15 || name == "." || name == ".." {
        return Err(bad());
    }
    let rest = name.replacen("%d", "", 1);
    if rest.contains('%') {
        return Err(bad());
    }
    if !rest
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TunConfig {
        TunConfig {
            name: "sm%d".into(),
            queues: 2,
            mtu: 1420,
            ipv4: vec![(Ipv4Addr::new(100, 64, 0, 1), 24)],
            ipv6: vec![("fd00::1".parse().unwrap(), 64)],
            offload: true,
        }
    }

    #[test]
    fn valid_config_passes() {
        validate(&cfg()).unwrap();
    }

    #[test]
    fn names_are_checked() {
        for ok in ["sm0", "sm%d", "a", "shadowmesh-0123", "wg_1.x"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "shadowmesh-01234",
            "a/b",
            "a b",
            "%d%d",
            "a%s",
            ".",
            "..",
            "tün",
        ] {
            assert!(
                matches!(validate_name(bad), Err(PlatformError::BadName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn mtu_range_is_enforced() {
        for (mtu, ok) in [
            (575, false),
            (576, true),
            (65535, true),
            (65536, false),
            (0, false),
        ] {
            let mut c = cfg();
            c.mtu = mtu;
            assert_eq!(validate(&c).is_ok(), ok, "{mtu}");
            if !ok {
                assert_eq!(
                    validate(&c).unwrap_err().to_string(),
                    format!("MTU {mtu} out of range 576..=65535")
                );
            }
        }
    }

    #[test]
    fn prefixes_and_queues_are_checked() {
        let mut c = cfg();
        c.ipv4[0].1 = 33;
        assert!(matches!(
            validate(&c),
            Err(PlatformError::BadPrefix { len: 33, .. })
        ));
        let mut c = cfg();
        c.ipv6[0].1 = 129;
        assert!(matches!(
            validate(&c),
            Err(PlatformError::BadPrefix { len: 129, .. })
        ));
        let mut c = cfg();
        c.queues = 0;
        assert!(matches!(
            validate(&c),
            Err(PlatformError::BadQueueCount { queues: 0 })
        ));
        c.queues = MAX_QUEUES + 1;
        assert!(matches!(
            validate(&c),
            Err(PlatformError::BadQueueCount { .. })
        ));
    }
}
