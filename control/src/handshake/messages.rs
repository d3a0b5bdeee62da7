//! Wire layouts of the handshake messages (M1, M2, cookie reply): offsets, sizes and bounded
//! views. All integers little-endian. See `docs/protocol.md` for the authoritative tables.
//!
//! Owns length checks only: a view is built once by `parse`, which checks every length and the
//! reserved bytes; accessors after that cannot fail or panic. It never does crypto.

use super::HandshakeError;
use crate::handshake::kdf::TAG_LEN;
use crate::identity::{MLKEM_CT_LEN, MLKEM_EK_LEN, X25519_LEN};

/// Message kind byte of an initiation.
pub const KIND_INITIATION: u8 = 1;
/// Message kind byte of a response.
pub const KIND_RESPONSE: u8 = 2;
/// Message kind byte of a cookie reply.
pub const KIND_COOKIE_REPLY: u8 = 3;

/// MAC length (mac1, mac2, cookie).
pub const MAC_LEN: usize = 16;

/// M1 fixed prefix: kind, reserved[3], sender u32, e_I, E_I, ct1, identity payload length u16.
pub const M1_FIXED: usize = 1 + 3 + 4 + X25519_LEN + MLKEM_EK_LEN + MLKEM_CT_LEN + 2;
/// Largest M1 identity payload (mode, a full certificate with its length, and the tag).
pub const M1_MAX_PAYLOAD: usize = crate::cert::MAX_CERT_LEN + 64 + TAG_LEN;
/// Plaintext of M1's second payload: timestamp [12], AEAD preferences [2] (0 = none).
pub const M1_TS_PLAIN: usize = 12 + 2;
/// M1's second payload on the wire: sealed under a key that includes X25519(s_I, s_R).
pub const M1_TS_PAYLOAD: usize = M1_TS_PLAIN + TAG_LEN;
/// Largest M1.
pub const M1_MAX_LEN: usize = M1_FIXED + M1_MAX_PAYLOAD + M1_TS_PAYLOAD + 2 * MAC_LEN;
/// Smallest M1 (an empty identity payload, which then fails to decrypt).
pub const M1_MIN_LEN: usize = M1_FIXED + TAG_LEN + M1_TS_PAYLOAD + 2 * MAC_LEN;

/// M2 payload plaintext length (chosen AEAD id).
pub const M2_PAYLOAD_PLAIN: usize = 1;
/// M2 length (fixed).
pub const M2_LEN: usize =
    1 + 3 + 4 + 4 + X25519_LEN + 2 * MLKEM_CT_LEN + M2_PAYLOAD_PLAIN + TAG_LEN + 2 * MAC_LEN;
/// Cookie reply length: kind, reserved[3], receiver u32, nonce[12], sealed cookie[16 + 16].
pub const COOKIE_REPLY_LEN: usize = 1 + 3 + 4 + 12 + MAC_LEN + TAG_LEN;

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn check_header(b: &[u8], kind: u8) -> Result<(), HandshakeError> {
    match b.first() {
        None => return Err(HandshakeError::Malformed("a non-empty message")),
        Some(&k) if k != kind => {
            return Err(HandshakeError::WrongKind {
                expected: kind,
                got: k,
            })
        }
        Some(_) => {}
    }
    if b.get(1..4) != Some(&[0, 0, 0][..]) {
        return Err(HandshakeError::Malformed("zero reserved bytes"));
    }
    Ok(())
}

/// A checked view of an M1.
#[derive(Debug, Clone, Copy)]
pub struct M1<'a> {
    /// The whole message.
    pub bytes: &'a [u8],
    /// Initiator's session index.
    pub sender: u32,
    /// Ephemeral X25519 public key.
    pub e: &'a [u8],
    /// Ephemeral ML-KEM-1024 encapsulation key.
    pub ek: &'a [u8],
    /// Encapsulation to the responder's static KEM key.
    pub ct1: &'a [u8],
    /// Encrypted identity payload (certificate or its hash, with tag), sealed under the chain
    /// up to `kem1`.
    pub payload: &'a [u8],
    /// Encrypted timestamp payload (timestamp, AEAD preferences, tag), sealed under the chain
    /// after `ss`: only the holder of the initiator's static X25519 key can make it.
    pub payload_ts: &'a [u8],
    /// Offset of mac1 (mac1 covers `bytes[..mac1_at]`, mac2 covers `bytes[..mac1_at + 16]`).
    pub mac1_at: usize,
}

impl<'a> M1<'a> {
    /// Checks kind, reserved bytes and every length.
    ///
    /// # Errors
    /// [`HandshakeError::Malformed`] / [`HandshakeError::WrongKind`].
    pub fn parse(b: &'a [u8]) -> Result<Self, HandshakeError> {
        check_header(b, KIND_INITIATION)?;
        if b.len() < M1_MIN_LEN || b.len() > M1_MAX_LEN {
            return Err(HandshakeError::Malformed(
                "an initiation of 3256..=19.8k bytes",
            ));
        }
        let plen = b
            .get(M1_FIXED - 2..M1_FIXED)
            .map_or(0, |s| usize::from(u16::from_le_bytes([s[0], s[1]])));
        if plen < TAG_LEN || M1_FIXED + plen + M1_TS_PAYLOAD + 2 * MAC_LEN != b.len() {
            return Err(HandshakeError::Malformed(
                "payload length matching the message",
            ));
        }
        let e_at = 8;
        let ek_at = e_at + X25519_LEN;
        let ct_at = ek_at + MLKEM_EK_LEN;
        let mac1_at = M1_FIXED + plen + M1_TS_PAYLOAD;
        let slice = |a: usize, n: usize| b.get(a..a + n).unwrap_or_default();
        Ok(Self {
            bytes: b,
            sender: le32(b, 4),
            e: slice(e_at, X25519_LEN),
            ek: slice(ek_at, MLKEM_EK_LEN),
            ct1: slice(ct_at, MLKEM_CT_LEN),
            payload: slice(M1_FIXED, plen),
            payload_ts: slice(M1_FIXED + plen, M1_TS_PAYLOAD),
            mac1_at,
        })
    }

    /// mac1 field.
    #[must_use]
    pub fn mac1(&self) -> &'a [u8] {
        self.bytes
            .get(self.mac1_at..self.mac1_at + MAC_LEN)
            .unwrap_or_default()
    }

    /// mac2 field.
    #[must_use]
    pub fn mac2(&self) -> &'a [u8] {
        self.bytes.get(self.mac1_at + MAC_LEN..).unwrap_or_default()
    }
}

/// A checked view of an M2.
#[derive(Debug, Clone, Copy)]
pub struct M2<'a> {
    /// The whole message.
    pub bytes: &'a [u8],
    /// Responder's session index.
    pub sender: u32,
    /// Initiator's session index, echoed.
    pub receiver: u32,
    /// Responder's ephemeral X25519 public key.
    pub e: &'a [u8],
    /// Encapsulation to the initiator's ephemeral KEM key.
    pub ct2: &'a [u8],
    /// Encapsulation to the initiator's static KEM key.
    pub ct3: &'a [u8],
    /// Encrypted payload (chosen AEAD + tag).
    pub payload: &'a [u8],
}

/// Offset of mac1 in M2.
pub const M2_MAC1_AT: usize = M2_LEN - 2 * MAC_LEN;

impl<'a> M2<'a> {
    /// Checks kind, reserved bytes and the length.
    ///
    /// # Errors
    /// [`HandshakeError::Malformed`] / [`HandshakeError::WrongKind`].
    pub fn parse(b: &'a [u8]) -> Result<Self, HandshakeError> {
        check_header(b, KIND_RESPONSE)?;
        if b.len() != M2_LEN {
            return Err(HandshakeError::Malformed(
                "a response of exactly M2_LEN bytes",
            ));
        }
        let slice = |a: usize, n: usize| b.get(a..a + n).unwrap_or_default();
        let e_at = 12;
        let ct2_at = e_at + X25519_LEN;
        let ct3_at = ct2_at + MLKEM_CT_LEN;
        let p_at = ct3_at + MLKEM_CT_LEN;
        Ok(Self {
            bytes: b,
            sender: le32(b, 4),
            receiver: le32(b, 8),
            e: slice(e_at, X25519_LEN),
            ct2: slice(ct2_at, MLKEM_CT_LEN),
            ct3: slice(ct3_at, MLKEM_CT_LEN),
            payload: slice(p_at, M2_PAYLOAD_PLAIN + TAG_LEN),
        })
    }

    /// mac1 field.
    #[must_use]
    pub fn mac1(&self) -> &'a [u8] {
        self.bytes
            .get(M2_MAC1_AT..M2_MAC1_AT + MAC_LEN)
            .unwrap_or_default()
    }

    /// mac2 field.
    #[must_use]
    pub fn mac2(&self) -> &'a [u8] {
        self.bytes.get(M2_MAC1_AT + MAC_LEN..).unwrap_or_default()
    }
}

/// A checked view of a cookie reply.
#[derive(Debug, Clone, Copy)]
pub struct CookieReply<'a> {
    /// The initiator's session index, echoed.
    pub receiver: u32,
    /// AEAD nonce.
    pub nonce: &'a [u8],
    /// The sealed cookie (16 bytes + tag).
    pub sealed: &'a [u8],
}

impl<'a> CookieReply<'a> {
    /// Checks kind, reserved bytes and the length.
    ///
    /// # Errors
    /// [`HandshakeError::Malformed`] / [`HandshakeError::WrongKind`].
    pub fn parse(b: &'a [u8]) -> Result<Self, HandshakeError> {
        check_header(b, KIND_COOKIE_REPLY)?;
        if b.len() != COOKIE_REPLY_LEN {
            return Err(HandshakeError::Malformed(
                "a cookie reply of exactly 52 bytes",
            ));
        }
        Ok(Self {
            receiver: le32(b, 4),
            nonce: b.get(8..20).unwrap_or_default(),
            sealed: b.get(20..).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_protocol_document() {
        assert_eq!(M1_FIXED, 3178);
        assert_eq!(M1_MIN_LEN, 3256);
        assert_eq!(M1_TS_PAYLOAD, 30);
        assert_eq!(M2_LEN, 3229);
        assert_eq!(COOKIE_REPLY_LEN, 52);
    }

    #[test]
    fn parsers_reject_short_and_long_inputs_without_panicking() {
        for n in [
            0usize,
            1,
            4,
            100,
            M1_FIXED,
            M2_LEN - 1,
            M2_LEN + 1,
            COOKIE_REPLY_LEN - 1,
        ] {
            let mut b = vec![0u8; n];
            for kind in [KIND_INITIATION, KIND_RESPONSE, KIND_COOKIE_REPLY] {
                if let Some(k) = b.first_mut() {
                    *k = kind;
                }
                assert!(M1::parse(&b).is_err() || kind == KIND_INITIATION);
                assert!(M2::parse(&b).is_err());
                assert!(CookieReply::parse(&b).is_err());
            }
        }
        let mut b = vec![0u8; M2_LEN];
        b[0] = KIND_RESPONSE;
        assert!(M2::parse(&b).is_ok());
        b[2] = 1;
        assert!(M2::parse(&b).is_err());
    }
}
