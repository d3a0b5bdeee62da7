//! Coalescing: decrypted IP packets → as few TUN writes as possible, by merging consecutive
//! TCP segments of one flow into a vnet-header super-packet (GSO_TCPV4/TCPV6) in place.
//!
//! Owns: the merge rules (same flow and header fields, contiguous sequence numbers, ACK-only
//! flags with PSH allowed on the last merged segment, equal payload sizes except a shorter
//! final one, ≤ 65535 bytes, valid incoming checksum) and the fix-ups of the merged packet.
//! UDP is passed through unmerged (each datagram is its own write; UDP GRO towards the TUN
//! is not worth the reordering risk yet).
//!
//! Must never: allocate, move bytes to higher addresses (payloads only move down, so a
//! merge cannot overwrite a packet not yet read), reorder packets, or panic on any buffer
//! and range list — bad ranges are counted drops, odd packets pass through unchanged.

use core::ops::Range;

use super::checksum::{checksum, fold, ipv4_header_checksum};
use super::layout::{
    be32, parse_ip, pseudo_addr_sum, put16, tcp_hdr_len, IPV6_HDR_LEN, PROTO_TCP, TCP_ACK,
    TCP_CSUM_OFFSET, TCP_FLAGS, TCP_PSH,
};
use super::vnet::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR_LEN,
};
use super::{OffloadError, MAX_SUPER_PACKET};

/// One TUN write prepared by [`coalesce_in_place`]: the IP packet at `range` of the buffer,
/// to be preceded by `hdr` (see [`emit_vnet_before`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Coalesced {
    /// The IP packet (merged or passed through) inside the buffer.
    pub range: Range<usize>,
    /// Its vnet header: GSO_TCPV4/6 with NEEDS_CSUM for a merged packet, all zero otherwise.
    pub hdr: VirtioNetHdr,
}

/// What [`coalesce_in_place_counted`] did with its input, added to the caller's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoalesceCounters {
    /// Segments absorbed into an earlier packet of the same flow.
    pub merged: u64,
    /// Super-packets written (runs of ≥ 2 segments).
    pub super_packets: u64,
    /// Packets written unchanged with a GSO_NONE header.
    pub passed_through: u64,
    /// Ranges dropped: out of the buffer, empty, unsorted/overlapping, or without
    /// [`VNET_HDR_LEN`] bytes of headroom after the previous packet.
    pub dropped_bad_range: u64,
    /// Packets dropped because `out` was full.
    pub dropped_out_full: u64,
}

/// [`coalesce_in_place_counted`] without counters. Returns how many entries of `out` were
/// written.
pub fn coalesce_in_place(buf: &mut [u8], packets: &[Range<usize>], out: &mut [Coalesced]) -> usize {
    coalesce_in_place_counted(buf, packets, out, &mut CoalesceCounters::default())
}

/// Merges runs of consecutive (in `packets`) TCP segments of one flow inside `buf` and
/// writes one [`Coalesced`] per resulting TUN write into `out`, in input order; returns how
/// many were written.
///
/// `packets` are plain IP packets in `buf`, sorted ascending, non-overlapping, each with at
/// least [`VNET_HDR_LEN`] free bytes before it; ranges breaking that are dropped (counted).
/// Size `out` ≥ `packets.len()`: packets that find `out` full are dropped (counted). A merged
/// run lives at its first packet's start; the bytes of the absorbed packets are garbage
/// afterwards.
pub fn coalesce_in_place_counted(
    buf: &mut [u8],
    packets: &[Range<usize>],
    out: &mut [Coalesced],
    counters: &mut CoalesceCounters,
) -> usize {
    let mut n = 0usize;
    let mut floor = 0usize;
    let mut run: Option<Run> = None;
    for r in packets {
        let ok = r.start < r.end
            && r.end <= buf.len()
            && r.start >= floor.saturating_add(VNET_HDR_LEN)
            && r.start >= VNET_HDR_LEN;
        if !ok {
            counters.dropped_bad_range += 1;
            continue;
        }
        floor = r.end;
        let seg = buf.get(r.clone()).and_then(TcpSeg::parse);
        if let (Some(cur), Some(seg)) = (run.as_mut(), seg.as_ref()) {
            if cur.try_merge(buf, r, seg) {
                counters.merged += 1;
                continue;
            }
        }
        if let Some(done) = run.take() {
            finish(buf, done, out, &mut n, counters);
        }
        if n >= out.len() {
            counters.dropped_out_full += 1;
            continue;
        }
        match seg {
            Some(seg) if seg.can_head() => run = Some(Run::new(r.start, &seg)),
            _ => {
                if let Some(slot) = out.get_mut(n) {
                    *slot = Coalesced {
                        range: r.clone(),
                        hdr: VirtioNetHdr::NONE,
                    };
                    n += 1;
                    counters.passed_through += 1;
                }
            }
        }
    }
    if let Some(done) = run.take() {
        finish(buf, done, out, &mut n, counters);
    }
    n
}

/// Writes the vnet header of `c` into the [`VNET_HDR_LEN`] bytes before `c.range` and returns
/// the range (header + packet) to hand to write(2).
pub fn emit_vnet_before(buf: &mut [u8], c: &Coalesced) -> Result<Range<usize>, OffloadError> {
    let bad = OffloadError::NoHeadroom {
        start: c.range.start,
        end: c.range.end,
        len: buf.len(),
    };
    let start = c.range.start.checked_sub(VNET_HDR_LEN).ok_or(bad)?;
    if c.range.end > buf.len() || c.range.end < c.range.start {
        return Err(bad);
    }
    c.hdr.emit(buf.get_mut(start..c.range.start).ok_or(bad)?)?;
    Ok(start..c.range.end)
}

/// A TCP segment that passed the structural checks for merging.
#[derive(Debug, Clone, Copy)]
struct TcpSeg {
    v6: bool,
    /// IP header length (20 or 40: no options or extensions are merged).
    iph: usize,
    /// TCP header length.
    tcph: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

impl TcpSeg {
    /// Parses `pkt` as a mergeable TCP segment: IPv4 without options and not fragmented, or
    /// IPv6 with TCP as the next header; IP length equal to the range; valid TCP checksum
    /// (the kernel recomputes it for a merged packet, so a corrupt segment must not be
    /// laundered into a good one).
    fn parse(pkt: &[u8]) -> Option<Self> {
        let ip = parse_ip(pkt).ok()?;
        let plain = if ip.v6 {
            ip.hdr_len == IPV6_HDR_LEN
        } else {
            ip.hdr_len == 20 && !ip.fragment
        };
        if !plain || ip.proto != PROTO_TCP || ip.total_len != pkt.len() {
            return None;
        }
        if !ip.v6 && checksum(pkt.get(..20)?, 0) != 0 {
            return None;
        }
        let tcph = tcp_hdr_len(pkt, ip.hdr_len, pkt.len()).ok()?;
        let l4_len = pkt.len() - ip.hdr_len;
        let sum = pseudo_addr_sum(pkt, ip.v6, PROTO_TCP)? + l4_len as u64;
        if checksum(pkt.get(ip.hdr_len..)?, sum) != 0 {
            return None;
        }
        Some(Self {
            v6: ip.v6,
            iph: ip.hdr_len,
            tcph,
            payload: l4_len - tcph,
            seq: be32(pkt, ip.hdr_len + 4)?,
            flags: *pkt.get(ip.hdr_len + TCP_FLAGS)?,
        })
    }

    /// Whether this segment may start a run: ACK only, with payload.
    fn can_head(&self) -> bool {
        self.flags == TCP_ACK && self.payload > 0
    }

    fn hdr_len(&self) -> usize {
        self.iph + self.tcph
    }
}

/// A run being merged at `start` in the buffer.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: usize,
    v6: bool,
    iph: usize,
    tcph: usize,
    gso_size: usize,
    /// End of the merged bytes so far.
    end: usize,
    next_seq: u32,
    segments: usize,
    /// A PSH or a short segment ended the run.
    closed: bool,
    psh: bool,
}

impl Run {
    fn new(start: usize, s: &TcpSeg) -> Self {
        Self {
            start,
            v6: s.v6,
            iph: s.iph,
            tcph: s.tcph,
            gso_size: s.payload,
            end: start + s.hdr_len() + s.payload,
            next_seq: s.seq.wrapping_add(s.payload as u32),
            segments: 1,
            closed: false,
            psh: false,
        }
    }

    /// Merges the segment at `r` if every rule holds; moves its payload down to `self.end`.
    fn try_merge(&mut self, buf: &mut [u8], r: &Range<usize>, s: &TcpSeg) -> bool {
        if self.closed
            || s.v6 != self.v6
            || s.iph != self.iph
            || s.tcph != self.tcph
            || s.seq != self.next_seq
            || (s.flags != TCP_ACK && s.flags != TCP_ACK | TCP_PSH)
            || s.payload == 0
            || s.payload > self.gso_size
            || (self.end - self.start) + s.payload > MAX_SUPER_PACKET
            || !self.same_flow(buf, r.start)
        {
            return false;
        }
        let src = r.start + s.hdr_len()..r.end;
        // Bounds: r is inside buf (checked by the caller) and self.end < r.start.
        if src.end > buf.len() || self.end > src.start {
            return false;
        }
        buf.copy_within(src, self.end);
        self.end += s.payload;
        self.next_seq = s.seq.wrapping_add(s.payload as u32);
        self.segments += 1;
        if s.flags & TCP_PSH != 0 {
            self.psh = true;
            self.closed = true;
        }
        if s.payload < self.gso_size {
            self.closed = true;
        }
        true
    }

    /// Compares every header byte that must match between the run's head and the segment
    /// at `other`: everything but the lengths, IPv4 ID and checksum, sequence number, flags
    /// and TCP checksum. The kernel copies the head's header to every segment it cuts.
    fn same_flow(&self, buf: &[u8], other: usize) -> bool {
        let eq = |a: usize, b: usize, len: usize| -> bool {
            match (buf.get(a..a + len), buf.get(b..b + len)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            }
        };
        let (h, o) = (self.start, other);
        let ip_ok = if self.v6 {
            // version/traffic class/flow label, next header + hop limit, addresses
            eq(h, o, 4) && eq(h + 6, o + 6, 2) && eq(h + 8, o + 8, 32)
        } else {
            // version/IHL/TOS, flags/fragment, TTL/protocol, addresses
            eq(h, o, 2) && eq(h + 6, o + 6, 4) && eq(h + 12, o + 12, 8)
        };
        let (th, to) = (h + self.iph, o + self.iph);
        ip_ok
            // ports
            && eq(th, to, 4)
            // ack number, data offset
            && eq(th + 8, to + 8, 5)
            // window
            && eq(th + 14, to + 14, 2)
            // urgent pointer and options
            && eq(th + 18, to + 18, self.tcph - 18)
    }
}

/// Fixes the head of a finished run and writes its output entry.
fn finish(
    buf: &mut [u8],
    run: Run,
    out: &mut [Coalesced],
    n: &mut usize,
    counters: &mut CoalesceCounters,
) {
    let Some(slot) = out.get_mut(*n) else {
        counters.dropped_out_full += 1;
        return;
    };
    let range = run.start..run.end;
    let hdr = if run.segments < 2 {
        counters.passed_through += 1;
        VirtioNetHdr::NONE
    } else {
        match fix_head(buf, &run) {
            Some(h) => {
                counters.super_packets += 1;
                h
            }
            // Unreachable by construction (the head was parsed in bounds); dropping keeps
            // a half-fixed packet off the TUN.
            None => {
                counters.dropped_bad_range += 1;
                return;
            }
        }
    };
    *slot = Coalesced { range, hdr };
    *n += 1;
}

fn fix_head(buf: &mut [u8], run: &Run) -> Option<VirtioNetHdr> {
    let pkt = buf.get_mut(run.start..run.end)?;
    let total = pkt.len();
    if run.v6 {
        put16(pkt, 4, (total - IPV6_HDR_LEN) as u16)?;
    } else {
        put16(pkt, 2, total as u16)?;
        put16(pkt, 10, 0)?;
        let c = ipv4_header_checksum(pkt.get(..run.iph)?);
        put16(pkt, 10, c)?;
    }
    if run.psh {
        // Set on the super-packet's header; the kernel keeps PSH on the last segment only.
        *pkt.get_mut(run.iph + TCP_FLAGS)? |= TCP_PSH;
    }
    let l4_len = total - run.iph;
    // The kernel completes the checksum from this pseudo-header seed (NEEDS_CSUM).
    let seed = fold(pseudo_addr_sum(pkt, run.v6, PROTO_TCP)? + l4_len as u64);
    put16(pkt, run.iph + TCP_CSUM_OFFSET, seed)?;
    Some(VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: if run.v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        },
        hdr_len: (run.iph + run.tcph) as u16,
        gso_size: run.gso_size as u16,
        csum_start: run.iph as u16,
        csum_offset: TCP_CSUM_OFFSET as u16,
    })
}
