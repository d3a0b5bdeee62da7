//! Segmentation: one TUN read (vnet header + IP super-packet) → the wire-sized IP packets it
//! stands for, each written straight into the caller's buffer (so it can land at the
//! plaintext offset of an encryption frame).
//!
//! Owns: validating the vnet header against the packet, and the per-segment fix-ups the
//! kernel would have done in `tcp_gso_segment` / `__udp_gso_segment`: IPv4 total length,
//! ID (+i) and header checksum, IPv6 payload length, TCP sequence number, FIN/PSH only on
//! the last segment, CWR only on the first, UDP length, and the full L4 checksum.
//!
//! Must never: allocate, panic on any header/packet pair, or emit more than
//! `ceil(payload / gso_size)` segments (≤ 64 KiB / gso_size + 1).

use super::checksum::{checksum, ipv4_header_checksum};
use super::layout::{
    be16, be32, parse_ip, pseudo_addr_sum, put16, put32, tcp_hdr_len, IPV6_HDR_LEN, PROTO_TCP,
    PROTO_UDP, TCP_CSUM_OFFSET, TCP_CWR, TCP_FIN, TCP_FLAGS, TCP_PSH, UDP_CSUM_OFFSET,
};
use super::vnet::{
    VirtioNetHdr, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
};
use super::{OffloadError, MAX_SUPER_PACKET};

/// Splits one TUN read into IP packets.
///
/// Drive it as an iterator over caller buffers: build it with [`Segmenter::new`] (which
/// validates everything up front), then call [`Segmenter::next_into`] until it returns
/// `None`. An error from `next_into` (only [`OffloadError::OutputTooSmall`] in practice) ends
/// the iteration.
#[derive(Debug, Clone)]
pub struct Segmenter<'a> {
    packet: &'a [u8],
    mode: Mode,
    done: bool,
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// GSO_NONE without NEEDS_CSUM: hand the packet on unchanged.
    AsIs,
    /// GSO_NONE with NEEDS_CSUM: one packet, checksum from `start` stored at `field`.
    CompleteCsum { start: usize, field: usize },
    /// A TCP or UDP super-packet.
    Gso(Gso),
}

#[derive(Debug, Clone, Copy)]
struct Gso {
    v6: bool,
    tcp: bool,
    ip_hdr_len: usize,
    /// IP + L4 header length, recomputed from the packet (the vnet `hdr_len` is only a hint:
    /// wireguard-go learned the kernel's value cannot be trusted).
    hdr_len: usize,
    gso_size: usize,
    /// Offset in `packet` of the next segment's payload.
    next: usize,
    /// Segments written so far.
    index: u16,
    seq0: u32,
    ip_id0: u16,
    /// Pseudo-header sum without the length.
    addr_sum: u64,
}

impl<'a> Segmenter<'a> {
    /// Validates `hdr` against `packet` (the bytes after the vnet header) and prepares the
    /// split. Refuses: an unsupported `gso_type` (UFO included), `hdr_len` or the checksum
    /// field beyond the packet, `gso_size == 0` with a GSO type, an IP version or L4
    /// protocol that does not match the GSO type, IPv4 fragments, IPv6 extension headers,
    /// IP lengths larger than the buffer, `csum_start`/`csum_offset` that disagree with the
    /// headers, and GSO packets without payload. IPv4 options are copied to every segment
    /// (as the kernel does). Bytes after the IP-declared length are ignored.
    pub fn new(hdr: &VirtioNetHdr, packet: &'a [u8]) -> Result<Self, OffloadError> {
        let len = packet.len();
        if usize::from(hdr.hdr_len) > len {
            return Err(OffloadError::HdrLenBeyondPacket {
                hdr_len: hdr.hdr_len,
                len,
            });
        }
        let gso_type = hdr.gso_type & !VIRTIO_NET_HDR_GSO_ECN;
        let (want_version, want_proto) = match gso_type {
            VIRTIO_NET_HDR_GSO_NONE => {
                let mode = if hdr.needs_csum() {
                    let start = usize::from(hdr.csum_start);
                    let field = start + usize::from(hdr.csum_offset);
                    if field + 2 > len {
                        return Err(OffloadError::CsumBeyondPacket {
                            csum_start: hdr.csum_start,
                            csum_offset: hdr.csum_offset,
                            len,
                        });
                    }
                    Mode::CompleteCsum { start, field }
                } else {
                    Mode::AsIs
                };
                return Ok(Self {
                    packet,
                    mode,
                    done: false,
                });
            }
            VIRTIO_NET_HDR_GSO_TCPV4 => (Some(false), PROTO_TCP),
            VIRTIO_NET_HDR_GSO_TCPV6 => (Some(true), PROTO_TCP),
            VIRTIO_NET_HDR_GSO_UDP_L4 => (None, PROTO_UDP),
            other => return Err(OffloadError::UnsupportedGsoType(other)),
        };
        if hdr.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let ip = parse_ip(packet)?;
        if let Some(v6) = want_version {
            if v6 != ip.v6 {
                return Err(OffloadError::IpVersionMismatch {
                    expected: if v6 { 6 } else { 4 },
                    found: if ip.v6 { 6 } else { 4 },
                });
            }
        }
        if ip.fragment {
            return Err(OffloadError::Ipv4Fragment);
        }
        if ip.v6 && ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
            return Err(OffloadError::Ipv6ExtensionHeader(ip.proto));
        }
        if ip.proto != want_proto {
            return Err(OffloadError::ProtocolMismatch {
                expected: want_proto,
                found: ip.proto,
            });
        }
        let packet = packet
            .get(..ip.total_len)
            .ok_or(OffloadError::IpLengthMismatch {
                declared: ip.total_len,
                actual: len,
            })?;
        let tcp = want_proto == PROTO_TCP;
        let (l4_len, csum_off) = if tcp {
            (
                tcp_hdr_len(packet, ip.hdr_len, ip.total_len)?,
                TCP_CSUM_OFFSET,
            )
        } else {
            if ip.hdr_len + 8 > ip.total_len {
                return Err(OffloadError::Truncated {
                    what: "UDP header",
                    need: ip.hdr_len + 8,
                    have: ip.total_len,
                });
            }
            (8, UDP_CSUM_OFFSET)
        };
        if hdr.needs_csum()
            && (usize::from(hdr.csum_start) != ip.hdr_len
                || usize::from(hdr.csum_offset) != csum_off)
        {
            return Err(OffloadError::CsumLayoutMismatch {
                csum_start: hdr.csum_start,
                csum_offset: hdr.csum_offset,
                expected_start: ip.hdr_len as u16,
                expected_offset: csum_off as u16,
            });
        }
        let hdr_len = ip.hdr_len + l4_len;
        let payload = ip.total_len - hdr_len;
        if payload == 0 {
            return Err(OffloadError::EmptyGsoPayload(hdr_len));
        }
        let gso_size = usize::from(hdr.gso_size);
        // The segment bound of the brief, checked rather than implied.
        if payload > MAX_SUPER_PACKET
            || payload.div_ceil(gso_size) > MAX_SUPER_PACKET.div_ceil(gso_size)
        {
            return Err(OffloadError::TooLarge(ip.total_len));
        }
        let truncated = OffloadError::Truncated {
            what: "IP header",
            need: hdr_len,
            have: ip.total_len,
        };
        let gso = Gso {
            v6: ip.v6,
            tcp,
            ip_hdr_len: ip.hdr_len,
            hdr_len,
            gso_size,
            next: hdr_len,
            index: 0,
            seq0: if tcp {
                be32(packet, ip.hdr_len + 4).ok_or(truncated)?
            } else {
                0
            },
            ip_id0: if ip.v6 {
                0
            } else {
                be16(packet, 4).ok_or(truncated)?
            },
            addr_sum: pseudo_addr_sum(packet, ip.v6, ip.proto).ok_or(truncated)?,
        };
        Ok(Self {
            packet,
            mode: Mode::Gso(gso),
            done: false,
        })
    }

    /// How many packets this super-packet yields in total.
    pub fn segment_count(&self) -> usize {
        match self.mode {
            Mode::AsIs | Mode::CompleteCsum { .. } => 1,
            Mode::Gso(g) => (self.packet.len() - g.hdr_len).div_ceil(g.gso_size),
        }
    }

    /// Length of the largest packet [`Self::next_into`] will write (size `out` to this).
    pub fn max_segment_len(&self) -> usize {
        match self.mode {
            Mode::AsIs | Mode::CompleteCsum { .. } => self.packet.len(),
            Mode::Gso(g) => (g.hdr_len + g.gso_size).min(self.packet.len()),
        }
    }

    /// Writes the next IP packet to the start of `out` and returns its length; `None` once
    /// every segment was written (or after an error).
    pub fn next_into(&mut self, out: &mut [u8]) -> Option<Result<usize, OffloadError>> {
        if self.done {
            return None;
        }
        let packet = self.packet;
        let result = match &mut self.mode {
            Mode::AsIs => {
                self.done = true;
                copy_whole(packet, out)
            }
            Mode::CompleteCsum { start, field } => {
                self.done = true;
                complete_csum(packet, out, *start, *field)
            }
            Mode::Gso(g) => {
                let r = write_segment(packet, g, out);
                if g.next >= packet.len() {
                    self.done = true;
                }
                r
            }
        };
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }
}

fn too_small(need: usize, out: &[u8]) -> OffloadError {
    OffloadError::OutputTooSmall {
        need,
        have: out.len(),
    }
}

fn copy_whole(packet: &[u8], out: &mut [u8]) -> Result<usize, OffloadError> {
    let len = packet.len();
    let bad = too_small(len, out);
    out.get_mut(..len).ok_or(bad)?.copy_from_slice(packet);
    Ok(len)
}

/// Completes a partial checksum: the field holds the pseudo-header sum, the rest of the
/// packet from `start` is summed into it (what `skb_checksum_help` does).
fn complete_csum(
    packet: &[u8],
    out: &mut [u8],
    start: usize,
    field: usize,
) -> Result<usize, OffloadError> {
    let len = copy_whole(packet, out)?;
    let bad = too_small(len, out);
    let out = out.get_mut(..len).ok_or(bad)?;
    let initial = be16(out, field).ok_or(bad)?;
    put16(out, field, 0).ok_or(bad)?;
    let c = checksum(out.get(start..).ok_or(bad)?, u64::from(initial));
    // A computed 0 is sent as 0xffff: for UDP 0 would mean "no checksum".
    put16(out, field, if c == 0 { 0xffff } else { c }).ok_or(bad)?;
    Ok(len)
}

fn write_segment(packet: &[u8], g: &mut Gso, out: &mut [u8]) -> Result<usize, OffloadError> {
    let start = g.next;
    let end = (start + g.gso_size).min(packet.len());
    let total = g.hdr_len + (end - start);
    let bad = too_small(total, out);
    let out = out.get_mut(..total).ok_or(bad)?;
    let (hdrs, payload) = out.split_at_mut(g.hdr_len);
    hdrs.copy_from_slice(packet.get(..g.hdr_len).ok_or(bad)?);
    payload.copy_from_slice(packet.get(start..end).ok_or(bad)?);
    let last = end == packet.len();
    let l4 = g.ip_hdr_len;
    let l4_len = total - l4;

    if g.v6 {
        put16(out, 4, (total - IPV6_HDR_LEN) as u16).ok_or(bad)?;
    } else {
        put16(out, 2, total as u16).ok_or(bad)?;
        put16(out, 4, g.ip_id0.wrapping_add(g.index)).ok_or(bad)?;
        put16(out, 10, 0).ok_or(bad)?;
        let c = ipv4_header_checksum(out.get(..l4).ok_or(bad)?);
        put16(out, 10, c).ok_or(bad)?;
    }

    let field = if g.tcp {
        // Sequence numbers wrap; the offset is < 64 KiB.
        let seq = g.seq0.wrapping_add((start - g.hdr_len) as u32);
        put32(out, l4 + 4, seq).ok_or(bad)?;
        let flags = out.get_mut(l4 + TCP_FLAGS).ok_or(bad)?;
        if !last {
            *flags &= !(TCP_FIN | TCP_PSH);
        }
        if g.index > 0 {
            *flags &= !TCP_CWR;
        }
        l4 + TCP_CSUM_OFFSET
    } else {
        put16(out, l4 + 4, l4_len as u16).ok_or(bad)?;
        l4 + UDP_CSUM_OFFSET
    };
    put16(out, field, 0).ok_or(bad)?;
    let c = checksum(out.get(l4..).ok_or(bad)?, g.addr_sum + l4_len as u64);
    put16(out, field, if c == 0 { 0xffff } else { c }).ok_or(bad)?;

    g.next = end;
    g.index = g.index.wrapping_add(1);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::super::vnet::*;
    use super::*;

    fn tcp4(payload: usize, flags: u8) -> Vec<u8> {
        let total = 20 + 20 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0xfffeu16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = PROTO_TCP;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        p[20..22].copy_from_slice(&1234u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        p[32] = 0x50;
        p[33] = flags;
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        p
    }

    fn tso4(gso: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 40,
            gso_size: gso,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    #[test]
    fn tcp4_fixups() {
        let p = tcp4(2500, TCP_ACK_PSH_FIN_CWR);
        let mut s = Segmenter::new(&tso4(1000), &p).unwrap();
        assert_eq!(s.segment_count(), 3);
        let mut out = [0u8; 1100];
        let mut lens = vec![];
        let mut i = 0u32;
        while let Some(r) = s.next_into(&mut out) {
            let n = r.unwrap();
            lens.push(n);
            assert_eq!(be16(&out, 2), Some(n as u16));
            assert_eq!(
                be16(&out, 4),
                Some(0xfffeu16.wrapping_add(i as u16)),
                "ID wraps"
            );
            assert_eq!(be32(&out, 24), Some(0xffff_fff0u32.wrapping_add(1000 * i)));
            let f = out[33];
            assert_eq!(f & TCP_CWR != 0, i == 0, "CWR only first");
            assert_eq!(f & (TCP_FIN | TCP_PSH) != 0, i == 2, "FIN/PSH only last");
            assert_eq!(out[40], ((1000 * i) % 256) as u8);
            i += 1;
        }
        assert_eq!(lens, vec![1040, 1040, 540]);
        assert!(s.next_into(&mut out).is_none());
    }
    const TCP_ACK_PSH_FIN_CWR: u8 = 0x10 | 0x08 | 0x01 | 0x80;

    #[test]
    fn rejects_inconsistent_headers() {
        let p = tcp4(100, 0x10);
        let err = |h: VirtioNetHdr, p: &[u8]| Segmenter::new(&h, p).err();
        assert_eq!(
            err(
                VirtioNetHdr {
                    gso_size: 0,
                    ..tso4(10)
                },
                &p
            ),
            Some(OffloadError::ZeroGsoSize)
        );
        assert!(matches!(
            err(
                VirtioNetHdr {
                    hdr_len: 1000,
                    ..tso4(10)
                },
                &p
            ),
            Some(OffloadError::HdrLenBeyondPacket { .. })
        ));
        assert!(matches!(
            err(
                VirtioNetHdr {
                    csum_start: 24,
                    ..tso4(10)
                },
                &p
            ),
            Some(OffloadError::CsumLayoutMismatch { .. })
        ));
        assert!(matches!(
            err(
                VirtioNetHdr {
                    gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
                    ..tso4(10)
                },
                &p
            ),
            Some(OffloadError::IpVersionMismatch {
                expected: 6,
                found: 4
            })
        ));
        assert!(matches!(
            err(
                VirtioNetHdr {
                    gso_type: VIRTIO_NET_HDR_GSO_UDP_L4,
                    csum_offset: 6,
                    ..tso4(10)
                },
                &p
            ),
            Some(OffloadError::ProtocolMismatch { .. })
        ));
        assert_eq!(
            err(
                VirtioNetHdr {
                    gso_type: VIRTIO_NET_HDR_GSO_UDP,
                    ..tso4(10)
                },
                &p
            ),
            Some(OffloadError::UnsupportedGsoType(3))
        );
        assert_eq!(
            err(tso4(10), &tcp4(0, 0x10)),
            Some(OffloadError::EmptyGsoPayload(40))
        );
        let none_csum = VirtioNetHdr {
            gso_type: 0,
            csum_start: 130,
            ..tso4(0)
        };
        assert!(matches!(
            err(none_csum, &p),
            Some(OffloadError::CsumBeyondPacket { .. })
        ));
        let mut frag = p.clone();
        frag[6] = 0x20; // MF
        assert_eq!(err(tso4(10), &frag), Some(OffloadError::Ipv4Fragment));
    }

    #[test]
    fn output_too_small_ends_iteration() {
        let p = tcp4(2500, 0x10);
        let mut s = Segmenter::new(&tso4(1000), &p).unwrap();
        let mut out = [0u8; 1039];
        assert_eq!(
            s.next_into(&mut out),
            Some(Err(OffloadError::OutputTooSmall {
                need: 1040,
                have: 1039
            }))
        );
        assert!(s.next_into(&mut out).is_none());
    }

    #[test]
    fn gso_none_modes() {
        let mut p = tcp4(33, 0x10);
        // As-is: bytes unchanged, even garbage.
        let mut s = Segmenter::new(&VirtioNetHdr::NONE, &[1, 2, 3]).unwrap();
        let mut out = [0u8; 8];
        assert_eq!(s.next_into(&mut out), Some(Ok(3)));
        assert_eq!(&out[..3], &[1, 2, 3]);
        assert!(s.next_into(&mut out).is_none());
        // NEEDS_CSUM: the field holds the pseudo-header sum, we complete it.
        let ps = crate::offload::fold(crate::offload::pseudo_header_sum_v4(
            [100, 64, 0, 1],
            [100, 64, 0, 2],
            6,
            53,
        ));
        p[36..38].copy_from_slice(&ps.to_be_bytes());
        let h = VirtioNetHdr {
            gso_type: 0,
            gso_size: 0,
            hdr_len: 0,
            ..tso4(0)
        };
        let mut s = Segmenter::new(&h, &p).unwrap();
        let mut out = [0u8; 200];
        assert_eq!(s.next_into(&mut out), Some(Ok(p.len())));
        let mut want = p.clone();
        want[36..38].copy_from_slice(&[0, 0]);
        let c = checksum(
            &want[20..],
            crate::offload::pseudo_header_sum_v4([100, 64, 0, 1], [100, 64, 0, 2], 6, 53),
        );
        assert_eq!(be16(&out, 36), Some(c));
        assert_eq!(&out[..36], &p[..36]);
    }
}
