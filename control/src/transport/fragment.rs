//! Framing of control datagrams: the frame header, the per-datagram MAC keyed by the
//! network's CA ID, splitting a message into fragments and the selective ACK frame.
//!
//! Owns the wire format of §6 of docs/protocol.md. It never allocates for a datagram whose MAC
//! does not verify and never panics on input: a bad frame is an error the caller counts.

use aws_lc_rs::hmac;

use super::{
    TransportError, CONTROL_TYPE, HEADER_LEN, KIND_ACK, MAC_LEN, MAX_DATAGRAM, MAX_FRAGMENTS,
    MAX_FRAGMENT_PAYLOAD, MAX_MESSAGE_LEN,
};
use crate::handshake::kdf::{ct_eq, sha256};

/// Domain separation label of the fragment MAC key.
pub const FRAME_MAC_LABEL: &[u8] = b"shadowmesh fragment mac v1";

/// The key of the per-datagram MAC: `SHA-256("shadowmesh fragment mac v1" || CA ID)`.
///
/// It is made of public data (anyone holding the CA's public key can compute it), so the MAC
/// only keeps datagrams not aimed at this network out of reassembly and repair state, like
/// mac1 does for the handshake; it proves nothing about the sender.
#[derive(Clone)]
pub struct FrameKey(hmac::Key);

impl std::fmt::Debug for FrameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameKey(..)")
    }
}

impl FrameKey {
    /// The key of the network whose CA has ID `ca_id` ([`crate::cert::CaPublic::id`]).
    #[must_use]
    pub fn for_network(ca_id: &[u8; 32]) -> Self {
        let k = sha256(&[FRAME_MAC_LABEL, ca_id]);
        Self(hmac::Key::new(hmac::HMAC_SHA256, &k))
    }

    fn tag(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let t = hmac::sign(&self.0, data);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(&t.as_ref()[..MAC_LEN]);
        out
    }

    /// Appends the MAC over `frame` (header and payload).
    #[must_use]
    pub fn seal(&self, mut frame: Vec<u8>) -> Vec<u8> {
        let t = self.tag(&frame);
        frame.extend_from_slice(&t);
        frame
    }

    /// Checks the type byte, the length bounds and the MAC (constant time) of a datagram and
    /// returns it without the MAC.
    ///
    /// # Errors
    /// [`TransportError::NotControl`], [`TransportError::Malformed`] (length) or
    /// [`TransportError::BadMac`].
    pub fn open<'d>(&self, d: &'d [u8]) -> Result<&'d [u8], TransportError> {
        if d.first() != Some(&CONTROL_TYPE) {
            return Err(TransportError::NotControl);
        }
        if d.len() < HEADER_LEN + 1 + MAC_LEN || d.len() > MAX_DATAGRAM {
            return Err(TransportError::Malformed("a datagram of 25..=1200 bytes"));
        }
        let (body, mac) = d.split_at(d.len() - MAC_LEN);
        if !ct_eq(&self.tag(body), mac) {
            return Err(TransportError::BadMac);
        }
        Ok(body)
    }
}

/// A parsed data frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message kind (never [`KIND_ACK`]).
    pub kind: u8,
    /// Sender-chosen message id (unique per sender and kind for a while).
    pub msg_id: u32,
    /// This fragment's index.
    pub frag_index: u8,
    /// Number of fragments.
    pub frag_count: u8,
}

/// A selective acknowledgement: which fragments of one message the receiver holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Kind of the acknowledged message.
    pub kind: u8,
    /// Its message id.
    pub msg_id: u32,
    /// Its fragment count.
    pub frag_count: u8,
    /// Bit `i` set: fragment `i` is held (or the whole message was delivered).
    pub held: u64,
}

impl Ack {
    /// An ACK for every fragment of a message.
    #[must_use]
    pub fn complete(kind: u8, msg_id: u32, frag_count: u8) -> Self {
        Self {
            kind,
            msg_id,
            frag_count,
            held: mask(frag_count),
        }
    }

    /// Bytes of the encoded frame (for amplification accounting).
    #[must_use]
    pub fn wire_len(frag_count: u8) -> usize {
        HEADER_LEN + usize::from(frag_count).div_ceil(8) + MAC_LEN
    }

    /// `5 | 0 | msg_id u32 | acked kind u8 | frag_count u8 | bitmap (⌈count/8⌉ bytes, LSB
    /// first) | mac`.
    #[must_use]
    pub fn encode(&self, key: &FrameKey) -> Vec<u8> {
        let mut d = Vec::with_capacity(Self::wire_len(self.frag_count));
        d.extend_from_slice(&[CONTROL_TYPE, KIND_ACK]);
        d.extend_from_slice(&self.msg_id.to_le_bytes());
        d.extend_from_slice(&[self.kind, self.frag_count]);
        let bytes = self.held.to_le_bytes();
        d.extend_from_slice(&bytes[..usize::from(self.frag_count).div_ceil(8)]);
        key.seal(d)
    }
}

/// Bits `0..count` set.
#[must_use]
pub fn mask(count: u8) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    }
}

/// A verified, parsed control datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'d> {
    /// One fragment of a message.
    Data(FrameHeader, &'d [u8]),
    /// A selective ACK.
    Ack(Ack),
}

/// Verifies the MAC of `d`, then parses and range-checks it.
///
/// # Errors
/// As [`FrameKey::open`], then [`TransportError::Malformed`] for a header field out of range.
pub fn parse<'d>(key: &FrameKey, d: &'d [u8]) -> Result<Frame<'d>, TransportError> {
    let body = key.open(d)?;
    let (h, payload) = body
        .split_at_checked(HEADER_LEN)
        .ok_or(TransportError::Malformed("an 8-byte header"))?;
    let kind = h[1];
    let msg_id = u32::from_le_bytes([h[2], h[3], h[4], h[5]]);
    let (b6, count) = (h[6], h[7]);
    if count == 0 || usize::from(count) > MAX_FRAGMENTS {
        return Err(TransportError::Malformed("fragment count 1..=56"));
    }
    if kind == KIND_ACK {
        if b6 == KIND_ACK {
            return Err(TransportError::Malformed("an ACK of a data kind"));
        }
        if payload.len() != usize::from(count).div_ceil(8) {
            return Err(TransportError::Malformed(
                "an ACK bitmap of ⌈count/8⌉ bytes",
            ));
        }
        let mut b = [0u8; 8];
        b[..payload.len()].copy_from_slice(payload);
        let held = u64::from_le_bytes(b);
        if held & !mask(count) != 0 {
            return Err(TransportError::Malformed(
                "no ACK bit at or above the count",
            ));
        }
        return Ok(Frame::Ack(Ack {
            kind: b6,
            msg_id,
            frag_count: count,
            held,
        }));
    }
    if b6 >= count {
        return Err(TransportError::Malformed("fragment index below the count"));
    }
    if payload.is_empty() || payload.len() > MAX_FRAGMENT_PAYLOAD {
        return Err(TransportError::Malformed("payload of 1..=1176 bytes"));
    }
    Ok(Frame::Data(
        FrameHeader {
            kind,
            msg_id,
            frag_index: b6,
            frag_count: count,
        },
        payload,
    ))
}

/// Splits `msg` into MAC'd control datagrams of at most [`MAX_DATAGRAM`] bytes.
///
/// # Errors
/// [`TransportError::TooLarge`] above [`MAX_MESSAGE_LEN`]; `Malformed` for an empty message or
/// the ACK kind.
pub fn fragment(
    key: &FrameKey,
    kind: u8,
    msg_id: u32,
    msg: &[u8],
) -> Result<Vec<Vec<u8>>, TransportError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err(TransportError::TooLarge(msg.len()));
    }
    if msg.is_empty() {
        return Err(TransportError::Malformed("a non-empty message"));
    }
    if kind == KIND_ACK {
        return Err(TransportError::Malformed("a data kind, not the ACK kind"));
    }
    let chunks: Vec<&[u8]> = msg.chunks(MAX_FRAGMENT_PAYLOAD).collect();
    let count = u8::try_from(chunks.len()).map_err(|_| TransportError::TooLarge(msg.len()))?;
    Ok(chunks
        .iter()
        .zip(0u8..)
        .map(|(c, i)| {
            let mut d = Vec::with_capacity(HEADER_LEN + c.len() + MAC_LEN);
            d.extend_from_slice(&[CONTROL_TYPE, kind]);
            d.extend_from_slice(&msg_id.to_le_bytes());
            d.extend_from_slice(&[i, count]);
            d.extend_from_slice(c);
            key.seal(d)
        })
        .collect())
}
