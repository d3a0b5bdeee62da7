//! Bounded views of the IP and L4 headers shared by segmentation and coalescing. Owns: the
//! one place that checks header lengths against the buffer. Must never: index past a buffer
//! (every read is a checked `get`).

use super::OffloadError;

/// IP protocol number of TCP.
pub(super) const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub(super) const PROTO_UDP: u8 = 17;
/// Offset of the checksum field in a TCP header.
pub(super) const TCP_CSUM_OFFSET: usize = 16;
/// Offset of the checksum field in a UDP header.
pub(super) const UDP_CSUM_OFFSET: usize = 6;
/// Offset of the flags byte in a TCP header.
pub(super) const TCP_FLAGS: usize = 13;
/// TCP FIN flag.
pub(super) const TCP_FIN: u8 = 0x01;
/// TCP PSH flag.
pub(super) const TCP_PSH: u8 = 0x08;
/// TCP ACK flag.
pub(super) const TCP_ACK: u8 = 0x10;
/// TCP CWR flag.
pub(super) const TCP_CWR: u8 = 0x80;
/// Length of the fixed IPv6 header.
pub(super) const IPV6_HDR_LEN: usize = 40;

/// Reads a big-endian u16 at `off`, if in bounds.
#[inline]
pub(super) fn be16(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Reads a big-endian u32 at `off`, if in bounds.
#[inline]
pub(super) fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Writes a big-endian u16 at `off`; `None` if out of bounds.
#[inline]
pub(super) fn put16(b: &mut [u8], off: usize, v: u16) -> Option<()> {
    b.get_mut(off..off.checked_add(2)?)?
        .copy_from_slice(&v.to_be_bytes());
    Some(())
}

/// Writes a big-endian u32 at `off`; `None` if out of bounds.
#[inline]
pub(super) fn put32(b: &mut [u8], off: usize, v: u32) -> Option<()> {
    b.get_mut(off..off.checked_add(4)?)?
        .copy_from_slice(&v.to_be_bytes());
    Some(())
}

/// What the IP header says, checked against the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct IpInfo {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// IP header length (IPv4 with options included; IPv6 fixed 40).
    pub hdr_len: usize,
    /// Protocol / next header.
    pub proto: u8,
    /// Whole packet length the IP header declares (≤ buffer length).
    pub total_len: usize,
    /// IPv4 MF set or fragment offset non-zero.
    pub fragment: bool,
}

/// Parses the IP header at the start of `pkt`. The declared length must fit in `pkt`
/// (bytes after it are ignored by the caller's choice).
pub(super) fn parse_ip(pkt: &[u8]) -> Result<IpInfo, OffloadError> {
    let first = *pkt.first().ok_or(OffloadError::Truncated {
        what: "IP header",
        need: 1,
        have: 0,
    })?;
    let truncated = |need| OffloadError::Truncated {
        what: "IP header",
        need,
        have: pkt.len(),
    };
    match first >> 4 {
        4 => {
            let ihl = first & 0x0f;
            if ihl < 5 {
                return Err(OffloadError::BadIpv4HeaderLen(ihl));
            }
            let hdr_len = usize::from(ihl) * 4;
            if pkt.len() < hdr_len {
                return Err(truncated(hdr_len));
            }
            let total = usize::from(be16(pkt, 2).ok_or(truncated(hdr_len))?);
            if total < hdr_len || total > pkt.len() {
                return Err(OffloadError::IpLengthMismatch {
                    declared: total,
                    actual: pkt.len(),
                });
            }
            let frag = be16(pkt, 6).ok_or(truncated(hdr_len))?;
            Ok(IpInfo {
                v6: false,
                hdr_len,
                proto: *pkt.get(9).ok_or(truncated(hdr_len))?,
                total_len: total,
                fragment: frag & 0x3fff != 0,
            })
        }
        6 => {
            if pkt.len() < IPV6_HDR_LEN {
                return Err(truncated(IPV6_HDR_LEN));
            }
            let payload = usize::from(be16(pkt, 4).ok_or(truncated(IPV6_HDR_LEN))?);
            let total = IPV6_HDR_LEN + payload;
            if total > pkt.len() {
                return Err(OffloadError::IpLengthMismatch {
                    declared: total,
                    actual: pkt.len(),
                });
            }
            Ok(IpInfo {
                v6: true,
                hdr_len: IPV6_HDR_LEN,
                proto: *pkt.get(6).ok_or(truncated(IPV6_HDR_LEN))?,
                total_len: total,
                fragment: false,
            })
        }
        v => Err(OffloadError::IpVersionMismatch {
            expected: 0,
            found: v,
        }),
    }
}

/// Length of the TCP header at `off` in `pkt[..end]`, checked against `end`.
pub(super) fn tcp_hdr_len(pkt: &[u8], off: usize, end: usize) -> Result<usize, OffloadError> {
    let truncated = OffloadError::Truncated {
        what: "TCP header",
        need: off.saturating_add(20),
        have: end,
    };
    if off.saturating_add(20) > end {
        return Err(truncated);
    }
    let doff = pkt.get(off + 12).ok_or(truncated)? >> 4;
    if doff < 5 {
        return Err(OffloadError::BadTcpDataOffset(doff));
    }
    let len = usize::from(doff) * 4;
    if off + len > end {
        return Err(OffloadError::Truncated {
            what: "TCP options",
            need: off + len,
            have: end,
        });
    }
    Ok(len)
}

/// The pseudo-header address+protocol sum of the packet (without the length, which differs
/// per segment).
pub(super) fn pseudo_addr_sum(pkt: &[u8], v6: bool, proto: u8) -> Option<u64> {
    if v6 {
        let src: &[u8; 16] = pkt.get(8..24)?.try_into().ok()?;
        let dst: &[u8; 16] = pkt.get(24..40)?.try_into().ok()?;
        Some(super::pseudo_header_sum_v6(src, dst, proto, 0))
    } else {
        let src: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
        let dst: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
        Some(super::pseudo_header_sum_v4(src, dst, proto, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_length_rules() {
        let mut p = [0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[9] = PROTO_TCP;
        let ip = parse_ip(&p).unwrap();
        assert_eq!(
            (ip.v6, ip.hdr_len, ip.total_len, ip.fragment),
            (false, 20, 40, false)
        );
        p[2..4].copy_from_slice(&41u16.to_be_bytes());
        assert!(matches!(
            parse_ip(&p),
            Err(OffloadError::IpLengthMismatch { declared: 41, .. })
        ));
        p[0] = 0x44;
        assert_eq!(parse_ip(&p), Err(OffloadError::BadIpv4HeaderLen(4)));
        p[0] = 0x4f; // 60-byte header in a 40-byte packet
        assert!(matches!(parse_ip(&p), Err(OffloadError::Truncated { .. })));
        assert!(parse_ip(&[]).is_err());
        assert!(matches!(
            parse_ip(&[0x20]),
            Err(OffloadError::IpVersionMismatch { found: 2, .. })
        ));
    }

    #[test]
    fn tcp_header_rules() {
        let mut p = [0u8; 40];
        p[12] = 0x50;
        assert_eq!(tcp_hdr_len(&p, 0, 40), Ok(20));
        p[12] = 0x40;
        assert_eq!(
            tcp_hdr_len(&p, 0, 40),
            Err(OffloadError::BadTcpDataOffset(4))
        );
        p[12] = 0xf0;
        assert!(tcp_hdr_len(&p, 0, 40).is_err());
        assert!(tcp_hdr_len(&p, 30, 40).is_err());
    }
}
