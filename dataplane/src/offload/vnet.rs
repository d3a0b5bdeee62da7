//! The `virtio_net_hdr` (uapi `include/uapi/linux/virtio_net.h`) that starts every TUN read
//! and write once the device is opened with IFF_VNET_HDR. Owns: its 10-byte encoding. Must
//! never: interpret the packet behind it (that is [`super::Segmenter`]'s job).
//!
//! Encoding is little-endian (see the module comment of [`super`] for the TUNSETVNETLE rule).

use super::OffloadError;

/// Size of `struct virtio_net_hdr` (without the `num_buffers` of the mergeable variant).
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum from `csum_start` to the end must be completed; the field at
/// `csum_start + csum_offset` holds the pseudo-header sum.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was already validated (receive side only).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `gso_type`: not a GSO packet.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4 (TSO4).
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO); deprecated, never enabled by us.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6 (TSO6).
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation offload (USO4/USO6), segments are whole UDP datagrams.
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the super-packet had CWR set (TSO_ECN).
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// The virtio-net header, field for field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct VirtioNetHdr {
    /// `VIRTIO_NET_HDR_F_*` bits.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` value, possibly with [`VIRTIO_NET_HDR_GSO_ECN`].
    pub gso_type: u8,
    /// Length of the IP + L4 headers (a hint; [`super::Segmenter`] recomputes it).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Offset of the L4 header, where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// The header of a plain packet whose checksums are complete (all zero).
    pub const NONE: Self = Self {
        flags: 0,
        gso_type: VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Decodes the first [`VNET_HDR_LEN`] bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Self, OffloadError> {
        let b: &[u8; VNET_HDR_LEN] = buf
            .get(..VNET_HDR_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(OffloadError::Truncated {
                what: "virtio_net_hdr",
                need: VNET_HDR_LEN,
                have: buf.len(),
            })?;
        Ok(Self {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16::from_le_bytes([b[2], b[3]]),
            gso_size: u16::from_le_bytes([b[4], b[5]]),
            csum_start: u16::from_le_bytes([b[6], b[7]]),
            csum_offset: u16::from_le_bytes([b[8], b[9]]),
        })
    }

    /// Encodes into the first [`VNET_HDR_LEN`] bytes of `buf`; returns the bytes written, or
    /// an error if `buf` is shorter than that.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, OffloadError> {
        let have = buf.len();
        let b: &mut [u8; VNET_HDR_LEN] = buf
            .get_mut(..VNET_HDR_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(OffloadError::Truncated {
                what: "virtio_net_hdr output",
                need: VNET_HDR_LEN,
                have,
            })?;
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        Ok(VNET_HDR_LEN)
    }

    /// Whether the NEEDS_CSUM flag is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_little_endian() {
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
            hdr_len: 0x0102,
            gso_size: 1380,
            csum_start: 40,
            csum_offset: 16,
        };
        let mut b = [0u8; 12];
        assert_eq!(h.emit(&mut b), Ok(VNET_HDR_LEN));
        assert_eq!(&b[..4], &[1, 4, 0x02, 0x01]);
        assert_eq!(&b[4..6], &1380u16.to_le_bytes());
        assert_eq!(VirtioNetHdr::parse(&b), Ok(h));
    }

    #[test]
    fn short_buffers_are_errors() {
        assert!(matches!(
            VirtioNetHdr::parse(&[0; 9]),
            Err(OffloadError::Truncated {
                need: 10,
                have: 9,
                ..
            })
        ));
        assert!(VirtioNetHdr::NONE.emit(&mut [0; 3]).is_err());
    }
}
