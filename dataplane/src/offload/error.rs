//! The one error type of the offload boundary. Owns: saying what was expected when a
//! super-packet or a vnet header is inconsistent. Must never: carry packet bytes (errors are
//! counted and logged on the hot path, so they stay `Copy`).

/// Why a vnet header / super-packet pair was refused, or why a segment could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// A buffer ended before a header that must be there.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// Which header was cut short.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// `gso_type` is not one we enable with TUNSETOFFLOAD.
    #[error("unsupported gso_type {0:#04x}: expected NONE, TCPV4, TCPV6 or UDP_L4")]
    UnsupportedGsoType(u8),
    /// A GSO type with `gso_size == 0`.
    #[error("gso_size is 0 for a GSO packet: expected the segment payload size")]
    ZeroGsoSize,
    /// `hdr_len` points beyond the packet.
    #[error("hdr_len {hdr_len} lies beyond the {len}-byte packet")]
    HdrLenBeyondPacket {
        /// The header's `hdr_len`.
        hdr_len: u16,
        /// Packet length.
        len: usize,
    },
    /// `csum_start + csum_offset + 2` lies beyond the packet.
    #[error("checksum field at {csum_start}+{csum_offset} lies beyond the {len}-byte packet")]
    CsumBeyondPacket {
        /// The header's `csum_start`.
        csum_start: u16,
        /// The header's `csum_offset`.
        csum_offset: u16,
        /// Packet length.
        len: usize,
    },
    /// The IP version nibble is not the one the GSO type implies (or not 4/6 at all).
    #[error("IP version {found}: expected {expected}")]
    IpVersionMismatch {
        /// Version the GSO type requires (0 = "4 or 6").
        expected: u8,
        /// Version nibble found.
        found: u8,
    },
    /// IPv4 IHL below 5 words.
    #[error("IPv4 header length {0} words: expected at least 5")]
    BadIpv4HeaderLen(u8),
    /// The IP header's length field disagrees with the buffer.
    #[error("IP header declares {declared} bytes but the packet has {actual}")]
    IpLengthMismatch {
        /// Length the IP header declares (whole packet).
        declared: usize,
        /// Bytes actually present.
        actual: usize,
    },
    /// An IPv4 fragment cannot be a GSO packet.
    #[error("IPv4 fragment: expected an unfragmented packet for GSO")]
    Ipv4Fragment,
    /// IPv6 with an extension header (or any next header other than TCP/UDP).
    #[error("IPv6 next header {0}: expected TCP (6) or UDP (17) with no extension headers")]
    Ipv6ExtensionHeader(u8),
    /// The L4 protocol does not match the GSO type.
    #[error("L4 protocol {found}: expected {expected}")]
    ProtocolMismatch {
        /// Protocol number the GSO type requires.
        expected: u8,
        /// Protocol number found.
        found: u8,
    },
    /// TCP data offset below 5 words.
    #[error("TCP data offset {0} words: expected at least 5")]
    BadTcpDataOffset(u8),
    /// `csum_start`/`csum_offset` disagree with the headers actually present.
    #[error(
        "csum_start/csum_offset {csum_start}/{csum_offset}: expected {expected_start}/{expected_offset}"
    )]
    CsumLayoutMismatch {
        /// The header's `csum_start`.
        csum_start: u16,
        /// The header's `csum_offset`.
        csum_offset: u16,
        /// Offset of the L4 header in the packet.
        expected_start: u16,
        /// Offset of the checksum field in the L4 header (16 TCP, 6 UDP).
        expected_offset: u16,
    },
    /// A GSO packet with nothing after its headers.
    #[error("GSO packet carries no payload after its {0} header bytes")]
    EmptyGsoPayload(usize),
    /// The packet exceeds [`super::MAX_SUPER_PACKET`].
    #[error("packet of {0} bytes exceeds the 65535-byte super-packet bound")]
    TooLarge(usize),
    /// The caller's output buffer cannot hold the next segment.
    #[error("output buffer of {have} bytes cannot hold a {need}-byte segment")]
    OutputTooSmall {
        /// Segment length.
        need: usize,
        /// Output buffer length.
        have: usize,
    },
    /// A [`super::Coalesced`] range without room for the vnet header before it.
    #[error("range {start}..{end} in a {len}-byte buffer leaves no room for the vnet header")]
    NoHeadroom {
        /// Range start.
        start: usize,
        /// Range end.
        end: usize,
        /// Buffer length.
        len: usize,
    },
}
