//! RFC 1071 Internet checksum: the one's-complement sum, the IPv4 header checksum, the
//! TCP/UDP pseudo-header sums (IPv4 and IPv6) and RFC 1624 incremental updates.
//!
//! Owns: arithmetic only. Must never: allocate, or assume alignment of its input.
//!
//! Conventions: a *sum* is an unfolded one's-complement accumulator (`u64`) in network byte
//! order, so sums of different pieces can be added; [`fold`] reduces one to 16 bits; a
//! *checksum* is the complement of a folded sum, i.e. the value written to the wire.

/// Sums `data` as big-endian 16-bit words (a trailing odd byte is padded with zero) and
/// returns the folded, **not** complemented, 16-bit result.
///
/// Fast path: 8-byte chunks read in native order, split into two 32-bit halves added into a
/// 64-bit accumulator (no carries to chase, which lets the compiler vectorise). The
/// one's-complement sum is byte-order independent (RFC 1071 §2(B)), so the native-order
/// result is byte-swapped once at the end.
pub fn sum_bytes(data: &[u8]) -> u16 {
    // 2^32 additions of values < 2^32 cannot overflow 64 bits; blocks of 64 KiB keep far from it.
    const BLOCK: usize = 1 << 16;
    let mut acc: u64 = 0;
    for block in data.chunks(BLOCK) {
        let mut a: u64 = 0;
        let mut chunks = block.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            let v = u64::from_ne_bytes(w);
            a += (v & 0xffff_ffff) + (v >> 32);
        }
        let mut rest = chunks.remainder();
        if rest.len() >= 4 {
            let (head, tail) = rest.split_at(4);
            let mut w = [0u8; 4];
            w.copy_from_slice(head);
            a += u64::from(u32::from_ne_bytes(w));
            rest = tail;
        }
        if rest.len() >= 2 {
            let (head, tail) = rest.split_at(2);
            a += u64::from(u16::from_ne_bytes([head[0], head[1]]));
            rest = tail;
        }
        if let Some(&b) = rest.first() {
            // Padding goes after the byte in memory order, whatever the host order.
            a += u64::from(u16::from_ne_bytes([b, 0]));
        }
        acc += u64::from(fold_native(a));
    }
    u16::from_be(fold_native(acc))
}

/// Folds a 64-bit one's-complement accumulator to 16 bits (end-around carries).
#[inline]
fn fold_native(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    // After the folds above s < 2^16.
    s as u16
}

/// Folds a network-order one's-complement sum to 16 bits (not complemented).
#[inline]
pub fn fold(sum: u64) -> u16 {
    fold_native(sum)
}

/// The Internet checksum of `data` with `initial` (e.g. a pseudo-header sum) added in:
/// the value to store in the checksum field (which must read as zero inside `data`).
#[inline]
pub fn checksum(data: &[u8], initial: u64) -> u16 {
    !fold(initial + u64::from(sum_bytes(data)))
}

/// The IPv4 header checksum of `header` (its checksum field must read as zero).
#[inline]
pub fn ipv4_header_checksum(header: &[u8]) -> u16 {
    checksum(header, 0)
}

/// Pseudo-header sum for TCP/UDP over IPv4: addresses, protocol and L4 length.
#[inline]
pub fn pseudo_header_sum_v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: u16) -> u64 {
    u64::from(u32::from_be_bytes(src) >> 16)
        + u64::from(u32::from_be_bytes(src) & 0xffff)
        + u64::from(u32::from_be_bytes(dst) >> 16)
        + u64::from(u32::from_be_bytes(dst) & 0xffff)
        + u64::from(proto)
        + u64::from(l4_len)
}

/// Pseudo-header sum for TCP/UDP over IPv6 (RFC 8200 §8.1): addresses, upper-layer length,
/// next header.
#[inline]
pub fn pseudo_header_sum_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, l4_len: u32) -> u64 {
    u64::from(sum_bytes(src))
        + u64::from(sum_bytes(dst))
        + u64::from(l4_len >> 16)
        + u64::from(l4_len & 0xffff)
        + u64::from(proto)
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit field changed from `old` to `new`.
#[inline]
pub fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!csum) + u64::from(!old) + u64::from(new))
}

/// RFC 1624 eqn. 3 for a 32-bit field (e.g. a TCP sequence number or an IPv4 address).
#[inline]
pub fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let c = update_u16(csum, (old >> 16) as u16, (new >> 16) as u16);
    update_u16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Textbook RFC 1071: big-endian 16-bit words, 32-bit accumulator folded as it goes.
    fn naive_sum(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        let mut i = 0;
        while i < data.len() {
            let hi = u32::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |&b| u32::from(b));
            s += hi | lo;
            s = (s & 0xffff) + (s >> 16);
            i += 2;
        }
        s as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            sum_bytes(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn ipv4_header_known_value() {
        // A well-known example header (Wikipedia "IPv4 header checksum"): checksum b861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
    }

    proptest! {
        #[test]
        fn fast_sum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..3000), skip in 0usize..8) {
            let d = data.get(skip.min(data.len())..).unwrap_or(&[]);
            prop_assert_eq!(sum_bytes(d), naive_sum(d));
        }

        #[test]
        fn incremental_matches_recompute(mut data in proptest::collection::vec(any::<u8>(), 8..200),
                                         at in 0usize..100, new16 in any::<u16>(), new32 in any::<u32>()) {
            let at = (at % (data.len() / 2 - 1)) * 2;
            let c0 = checksum(&data, 0);
            let old16 = u16::from_be_bytes([data[at], data[at + 1]]);
            data[at..at + 2].copy_from_slice(&new16.to_be_bytes());
            let c1 = update_u16(c0, old16, new16);
            // 0x0000 and 0xffff are both "zero" in one's complement; compare the sums.
            prop_assert_eq!(fold(u64::from(!c1)) % 0xffff, fold(u64::from(!checksum(&data, 0))) % 0xffff);
            if at + 4 <= data.len() {
                let old32 = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
                data[at..at + 4].copy_from_slice(&new32.to_be_bytes());
                let c2 = update_u32(c1, old32, new32);
                prop_assert_eq!(fold(u64::from(!c2)) % 0xffff, fold(u64::from(!checksum(&data, 0))) % 0xffff);
            }
        }

        #[test]
        fn pseudo_v6_matches_naive(src in any::<[u8; 16]>(), dst in any::<[u8; 16]>(), len in any::<u32>()) {
            let mut ph = Vec::new();
            ph.extend_from_slice(&src);
            ph.extend_from_slice(&dst);
            ph.extend_from_slice(&len.to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, 6]);
            prop_assert_eq!(fold(pseudo_header_sum_v6(&src, &dst, 6, len)), naive_sum(&ph));
        }

        #[test]
        fn pseudo_v4_matches_naive(src in any::<[u8; 4]>(), dst in any::<[u8; 4]>(), len in any::<u16>()) {
            let mut ph = Vec::new();
            ph.extend_from_slice(&src);
            ph.extend_from_slice(&dst);
            ph.extend_from_slice(&[0, 17]);
            ph.extend_from_slice(&len.to_be_bytes());
            prop_assert_eq!(fold(pseudo_header_sum_v4(src, dst, 17, len)), naive_sum(&ph));
        }
    }
}
