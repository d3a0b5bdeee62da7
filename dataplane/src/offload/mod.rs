//! TUN segmentation offload, sans-IO: the `virtio_net_hdr` that prefixes every TUN read and
//! write (IFF_VNET_HDR), Internet checksums, splitting a TSO/USO super-packet read from the
//! TUN into wire-sized IP packets ([`Segmenter`]), and coalescing decrypted TCP segments of one
//! flow back into a super-packet for one TUN write ([`coalesce_in_place`]).
//!
//! Owns: the rules that make a super-packet valid (header lengths, checksum layout, IP
//! version and protocol per GSO type), the per-segment header fix-ups (lengths, IPv4 ID, TCP
//! sequence numbers and flags, checksums), and the merge rules for coalescing.
//!
//! Must never: perform I/O, read a clock, allocate on the per-packet path, or panic on any
//! input — malformed headers are an [`OffloadError`] (segmenting) or a pass-through / counted
//! drop (coalescing).
//!
//! Byte order of the vnet header: this module always reads and writes it little-endian. The
//! kernel uses the host's native order for TUN unless `TUNSETVNETLE` is set, so this is right
//! as is on x86-64 and little-endian ARM; a big-endian host must enable `TUNSETVNETLE`.

mod checksum;
mod coalesce;
mod error;
mod layout;
mod segment;
mod vnet;

pub use checksum::{
    checksum, fold, ipv4_header_checksum, pseudo_header_sum_v4, pseudo_header_sum_v6, sum_bytes,
    update_u16, update_u32,
};
pub use coalesce::{
    coalesce_in_place, coalesce_in_place_counted, emit_vnet_before, CoalesceCounters, Coalesced,
};
pub use error::OffloadError;
pub use segment::Segmenter;
pub use vnet::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_UDP_L4, VNET_HDR_LEN,
};

/// Largest IP packet (headers included) that a super-packet or a coalesced packet may be.
/// IPv4 `total length` is 16 bits; IPv6 could carry 65535 bytes of payload plus its 40-byte
/// header, but we keep one bound for both so a coalesced packet is valid either way.
pub const MAX_SUPER_PACKET: usize = 65535;
