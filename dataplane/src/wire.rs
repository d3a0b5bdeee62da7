//! Wire format of data messages and the first-byte classification of every datagram that
//! arrives on the data port, plus bounded views of the inner IP header.
//!
//! Owns: the 16-byte data header (`type 4 | lane u8 | reserved [0;2] | receiver_index u32 LE |
//! counter u64 LE`), the rules that tell a data message from a control datagram from garbage,
//! and the inner source/destination address extraction used by cryptokey routing.
//!
//! Must never: panic or allocate on any input, read past the caller's buffer, or interpret
//! control datagrams beyond their type byte (the control plane owns their format).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of the data message header; the header is also the AEAD associated data.
pub const HEADER_LEN: usize = 16;
/// Length of the AEAD authentication tag that ends every data message.
pub const TAG_LEN: usize = 16;
/// Type byte of a data message.
pub const MSG_DATA: u8 = 4;
/// Type byte that starts every control-plane datagram (handshake, cookie, DHT, NAT).
pub const MSG_CONTROL: u8 = 5;
/// Largest control datagram accepted on the data port; the control transport fragments above.
pub const MAX_CONTROL_LEN: usize = 1500;
/// Smallest control datagram: the type byte plus three bytes the control plane defines.
pub const MIN_CONTROL_LEN: usize = 4;
/// Smallest data message: a header and a tag around an empty payload (a keepalive).
pub const MIN_DATA_LEN: usize = HEADER_LEN + TAG_LEN;

/// Why a datagram was classified as garbage; `as usize` indexes a drop-counter array of
/// [`GarbageReason::COUNT`] entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GarbageReason {
    /// Zero-length datagram.
    Empty = 0,
    /// First byte is neither [`MSG_DATA`] nor [`MSG_CONTROL`].
    UnknownType = 1,
    /// Data message shorter than [`MIN_DATA_LEN`].
    DataTooShort = 2,
    /// Data message whose two reserved bytes are not zero.
    DataReservedNonZero = 3,
    /// Control datagram shorter than [`MIN_CONTROL_LEN`].
    ControlTooShort = 4,
    /// Control datagram longer than [`MAX_CONTROL_LEN`].
    ControlTooLong = 5,
}

impl GarbageReason {
    /// Number of reasons: the length of a drop-counter array indexed by `reason as usize`.
    pub const COUNT: usize = 6;
    /// Every reason, in counter-index order.
    pub const ALL: [GarbageReason; Self::COUNT] = [
        Self::Empty,
        Self::UnknownType,
        Self::DataTooShort,
        Self::DataReservedNonZero,
        Self::ControlTooShort,
        Self::ControlTooLong,
    ];

    /// A stable snake_case name for metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::UnknownType => "unknown_type",
            Self::DataTooShort => "data_too_short",
            Self::DataReservedNonZero => "data_reserved_nonzero",
            Self::ControlTooShort => "control_too_short",
            Self::ControlTooLong => "control_too_long",
        }
    }
}

/// Errors of the checked data-header parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer cannot hold a header and a tag.
    #[error("data message too short: expected at least {expected} bytes, got {got}")]
    TooShort {
        /// Minimum length.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// The type byte is not [`MSG_DATA`].
    #[error("expected message type {MSG_DATA} (data), found {found}")]
    WrongType {
        /// Type byte found.
        found: u8,
    },
    /// The reserved bytes are not zero.
    #[error("data header reserved bytes must be zero")]
    ReservedNonZero,
}

/// The parsed data message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataHeader {
    /// The receiver's session index (chosen by the receiver during the handshake).
    pub receiver_index: u32,
    /// The per-session message counter; also the AEAD nonce.
    pub counter: u64,
    /// The receive lane: the sending worker's number. The receiver's socket group steers on
    /// it (`SO_ATTACH_REUSEPORT_CBPF`), so a flow sent by one worker is received by one worker
    /// and a peer's flows spread over the receive cores. Authenticated like the rest of the
    /// header; it carries no secret.
    pub lane: u8,
}

impl DataHeader {
    /// Writes the header into `out` (type, zero reserved bytes, little-endian fields).
    #[inline]
    pub fn emit(&self, out: &mut [u8; HEADER_LEN]) {
        *out = self.to_bytes();
    }

    /// The header as its 16 wire bytes.
    #[inline]
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let idx = self.receiver_index.to_le_bytes();
        let ctr = self.counter.to_le_bytes();
        [
            MSG_DATA, self.lane, 0, 0, idx[0], idx[1], idx[2], idx[3], ctr[0], ctr[1], ctr[2],
            ctr[3], ctr[4], ctr[5], ctr[6], ctr[7],
        ]
    }

    /// Parses 16 header bytes, checking the type byte and the reserved bytes.
    #[inline]
    pub fn from_bytes(bytes: &[u8; HEADER_LEN]) -> Result<Self, WireError> {
        let [ty, lane, r1, r2, i0, i1, i2, i3, c0, c1, c2, c3, c4, c5, c6, c7] = *bytes;
        if ty != MSG_DATA {
            return Err(WireError::WrongType { found: ty });
        }
        if (r1 | r2) != 0 {
            return Err(WireError::ReservedNonZero);
        }
        Ok(Self {
            receiver_index: u32::from_le_bytes([i0, i1, i2, i3]),
            counter: u64::from_le_bytes([c0, c1, c2, c3, c4, c5, c6, c7]),
            lane,
        })
    }

    /// Checked view over a whole data message: the buffer must hold a header and a tag
    /// ([`MIN_DATA_LEN`]), the type must be [`MSG_DATA`] and the reserved bytes zero.
    #[inline]
    pub fn parse(datagram: &[u8]) -> Result<Self, WireError> {
        if datagram.len() < MIN_DATA_LEN {
            return Err(WireError::TooShort {
                expected: MIN_DATA_LEN,
                got: datagram.len(),
            });
        }
        match datagram.first_chunk::<HEADER_LEN>() {
            Some(h) => Self::from_bytes(h),
            None => Err(WireError::TooShort {
                expected: MIN_DATA_LEN,
                got: datagram.len(),
            }),
        }
    }
}

/// What a received datagram is, decided from its first bytes and its length alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// A well-formed data message header (the tag is not verified yet).
    Data(DataHeader),
    /// A control datagram for the control plane (type [`MSG_CONTROL`], bounded length).
    Control,
    /// Anything else; count it under the reason and drop it.
    Garbage(GarbageReason),
}

/// Classifies a datagram received on the data port. Never panics, never allocates.
#[inline]
pub fn classify(buf: &[u8]) -> Datagram {
    match buf.first() {
        None => Datagram::Garbage(GarbageReason::Empty),
        Some(&MSG_DATA) => match DataHeader::parse(buf) {
            Ok(h) => Datagram::Data(h),
            Err(WireError::ReservedNonZero) => {
                Datagram::Garbage(GarbageReason::DataReservedNonZero)
            }
            Err(_) => Datagram::Garbage(GarbageReason::DataTooShort),
        },
        Some(&MSG_CONTROL) => {
            if buf.len() < MIN_CONTROL_LEN {
                Datagram::Garbage(GarbageReason::ControlTooShort)
            } else if buf.len() > MAX_CONTROL_LEN {
                Datagram::Garbage(GarbageReason::ControlTooLong)
            } else {
                Datagram::Control
            }
        }
        Some(_) => Datagram::Garbage(GarbageReason::UnknownType),
    }
}

/// Minimum IPv4 header length (no options).
const IPV4_MIN_HEADER: usize = 20;
/// Fixed IPv6 header length.
const IPV6_HEADER: usize = 40;

/// The inner (overlay) source and destination addresses of an IP packet, IPv4 or IPv6.
/// `None` when the version nibble is neither 4 nor 6 or the packet is shorter than the
/// fixed header. Only the fixed header is read: the addresses sit at fixed offsets.
#[inline]
pub fn inner_addrs(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first()? >> 4 {
        4 => {
            let h = packet.first_chunk::<IPV4_MIN_HEADER>()?;
            let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
            let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
            Some((IpAddr::V4(src), IpAddr::V4(dst)))
        }
        6 => {
            let h = packet.first_chunk::<IPV6_HEADER>()?;
            let (src, dst) = (v6_at(h, 8), v6_at(h, 24));
            Some((IpAddr::V6(src), IpAddr::V6(dst)))
        }
        _ => None,
    }
}

/// Reads 16 address bytes at `off` of a fixed IPv6 header (off is 8 or 24, so in bounds).
#[inline]
fn v6_at(h: &[u8; IPV6_HEADER], off: usize) -> Ipv6Addr {
    let mut a = [0u8; 16];
    if let Some(s) = h.get(off..off + 16) {
        a.copy_from_slice(s);
    }
    Ipv6Addr::from(a)
}

/// The inner source address (inbound cryptokey check), see [`inner_addrs`].
#[inline]
pub fn inner_src(packet: &[u8]) -> Option<IpAddr> {
    inner_addrs(packet).map(|(s, _)| s)
}

/// The inner destination address (outbound peer selection), see [`inner_addrs`].
#[inline]
pub fn inner_dst(packet: &[u8]) -> Option<IpAddr> {
    inner_addrs(packet).map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trip_and_layout() {
        let h = DataHeader {
            receiver_index: 0x0403_0201,
            counter: 0x0c0b_0a09_0807_0605,
            lane: 3,
        };
        let mut b = [0xffu8; HEADER_LEN];
        h.emit(&mut b);
        assert_eq!(b, [4, 3, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(DataHeader::from_bytes(&b), Ok(h));
    }

    #[test]
    fn classify_boundaries() {
        let mut d = [0u8; MIN_DATA_LEN];
        d[0] = MSG_DATA;
        assert!(matches!(classify(&d), Datagram::Data(_)));
        assert_eq!(
            classify(&d[..MIN_DATA_LEN - 1]),
            Datagram::Garbage(GarbageReason::DataTooShort)
        );
        d[2] = 1;
        assert_eq!(
            classify(&d),
            Datagram::Garbage(GarbageReason::DataReservedNonZero)
        );
        assert_eq!(classify(&[]), Datagram::Garbage(GarbageReason::Empty));
        assert_eq!(
            classify(&[9, 0, 0, 0]),
            Datagram::Garbage(GarbageReason::UnknownType)
        );
        let c = [MSG_CONTROL; MAX_CONTROL_LEN + 1];
        assert_eq!(classify(&c[..MIN_CONTROL_LEN]), Datagram::Control);
        assert_eq!(classify(&c[..MAX_CONTROL_LEN]), Datagram::Control);
        assert_eq!(
            classify(&c[..MIN_CONTROL_LEN - 1]),
            Datagram::Garbage(GarbageReason::ControlTooShort)
        );
        assert_eq!(
            classify(&c),
            Datagram::Garbage(GarbageReason::ControlTooLong)
        );
    }

    #[test]
    fn garbage_reasons_index_counters() {
        for (i, r) in GarbageReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn inner_addresses_v4_v6() {
        let mut p4 = [0u8; 20];
        p4[0] = 0x45;
        p4[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p4[16..20].copy_from_slice(&[100, 64, 0, 2]);
        assert_eq!(inner_src(&p4), Some("100.64.0.1".parse().unwrap()));
        assert_eq!(inner_dst(&p4), Some("100.64.0.2".parse().unwrap()));
        assert_eq!(inner_dst(&p4[..19]), None);
        let mut p6 = [0u8; 40];
        p6[0] = 0x60;
        p6[8] = 0xfd;
        p6[23] = 1;
        p6[24] = 0xfd;
        p6[39] = 2;
        assert_eq!(inner_src(&p6), Some("fd00::1".parse().unwrap()));
        assert_eq!(inner_dst(&p6), Some("fd00::2".parse().unwrap()));
        assert_eq!(inner_src(&p6[..39]), None);
        assert_eq!(inner_src(&[0x50; 64]), None);
        assert_eq!(inner_src(&[]), None);
    }

    proptest! {
        #[test]
        fn classify_never_panics_and_agrees_with_parse(buf in proptest::collection::vec(any::<u8>(), 0..1600)) {
            match classify(&buf) {
                Datagram::Data(h) => prop_assert_eq!(DataHeader::parse(&buf), Ok(h)),
                Datagram::Control => {
                    prop_assert_eq!(buf[0], MSG_CONTROL);
                    prop_assert!(buf.len() >= MIN_CONTROL_LEN && buf.len() <= MAX_CONTROL_LEN);
                }
                Datagram::Garbage(_) => prop_assert!(DataHeader::parse(&buf).is_err()),
            }
            let _ = inner_addrs(&buf);
        }

        #[test]
        fn classify_data_type_prefix(rest in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = vec![MSG_DATA, 0, 0, 0];
            buf.extend_from_slice(&rest);
            let got = classify(&buf);
            if buf.len() >= MIN_DATA_LEN {
                prop_assert!(matches!(got, Datagram::Data(_)));
            } else {
                prop_assert_eq!(got, Datagram::Garbage(GarbageReason::DataTooShort));
            }
        }
    }
}
