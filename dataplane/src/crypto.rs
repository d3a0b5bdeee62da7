//! In-place AEAD sealing and opening of data messages, over aws-lc-rs only.
//!
//! Owns: the cipher choice ([`Cipher`]), the per-direction data key ([`DataKey`]), the nonce
//! construction and the framing of a data message around the AEAD (header as associated
//! data, tag after the ciphertext).
//!
//! Must never: allocate, copy the payload, keep a copy of raw key bytes (aws-lc-rs holds the
//! expanded key and clears it on drop), or accept a datagram whose tag did not verify.
//!
//! Nonce: 12 bytes = 4 zero bytes followed by the 64-bit counter in little-endian order. The
//! counter is unique per key (the session hands out each value once and refuses to send
//! before it could wrap), which is all a GCM / ChaCha20-Poly1305 nonce needs; the zero prefix
//! matches WireGuard's construction, so the nonce costs no per-packet state.

use core::fmt;
use core::ops::Range;
use core::str::FromStr;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};

use crate::wire::{DataHeader, WireError, HEADER_LEN, TAG_LEN};

/// The negotiated data cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Cipher {
    /// AES-256-GCM, the default where the CPU has AES instructions.
    Aes256Gcm = 1,
    /// ChaCha20-Poly1305, for CPUs without AES instructions.
    ChaCha20Poly1305 = 2,
}

impl Cipher {
    /// The one-byte code used on the IPC wire.
    #[inline]
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The cipher for an IPC code, `None` for an unknown code.
    #[inline]
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Aes256Gcm),
            2 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// The canonical name, as accepted by [`FromStr`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::Aes256Gcm => "aes-256-gcm",
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::Aes256Gcm => &aead::AES_256_GCM,
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u8> for Cipher {
    type Error = CryptoError;
    fn try_from(code: u8) -> Result<Self, Self::Error> {
        Self::from_code(code).ok_or(CryptoError::UnknownCipherCode { code })
    }
}

impl FromStr for Cipher {
    type Err = CryptoError;
    /// Accepts `aes-256-gcm` / `aes256gcm` and `chacha20-poly1305` / `chacha20poly1305`,
    /// case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("aes-256-gcm") || t.eq_ignore_ascii_case("aes256gcm") {
            Ok(Self::Aes256Gcm)
        } else if t.eq_ignore_ascii_case("chacha20-poly1305")
            || t.eq_ignore_ascii_case("chacha20poly1305")
        {
            Ok(Self::ChaCha20Poly1305)
        } else {
            Err(CryptoError::UnknownCipherName)
        }
    }
}

/// Errors of the data-message AEAD boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// An IPC cipher code that names no cipher.
    #[error("unknown cipher code {code}: expected 1 (aes-256-gcm) or 2 (chacha20-poly1305)")]
    UnknownCipherCode {
        /// The code received.
        code: u8,
    },
    /// A cipher name that names no cipher.
    #[error("unknown cipher name: expected \"aes-256-gcm\" or \"chacha20-poly1305\"")]
    UnknownCipherName,
    /// aws-lc-rs refused the key bytes.
    #[error("the AEAD implementation rejected the 32-byte key")]
    KeyRejected,
    /// The frame cannot hold header + payload + tag.
    #[error("frame too small: expected at least {needed} bytes, got {available}")]
    FrameTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The datagram is not a well-formed data message.
    #[error("malformed data message: {0}")]
    Malformed(#[from] WireError),
    /// The authentication tag did not verify (wrong key, tampering, or corruption).
    #[error("authentication tag did not verify")]
    BadTag,
    /// Sealing failed inside aws-lc-rs (not expected for in-range lengths).
    #[error("the AEAD implementation failed to seal")]
    SealFailed,
}

/// One direction's data key: an expanded aws-lc-rs AEAD key and its cipher.
///
/// Built from 32 raw bytes that the caller owns; the caller must zeroize its copy after
/// [`DataKey::new`] returns (this type keeps no raw copy; aws-lc-rs clears its expanded key
/// when dropped).
pub struct DataKey {
    key: LessSafeKey,
    cipher: Cipher,
}

impl DataKey {
    /// Expands `key` for `cipher`. The caller zeroizes `key` afterwards.
    pub fn new(cipher: Cipher, key: &[u8; 32]) -> Result<Self, CryptoError> {
        let unbound =
            UnboundKey::new(cipher.algorithm(), key).map_err(|_| CryptoError::KeyRejected)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            cipher,
        })
    }

    /// The cipher this key is for.
    #[inline]
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("DataKey")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

/// The 12-byte nonce for `counter`: 4 zero bytes then the counter little-endian.
#[inline]
pub fn nonce_for(counter: u64) -> [u8; NONCE_LEN] {
    let c = counter.to_le_bytes();
    [0, 0, 0, 0, c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]
}

/// Seals a data message in place on lane 0; see [`seal_on_lane`].
#[inline]
pub fn seal(
    key: &DataKey,
    receiver_index: u32,
    counter: u64,
    frame: &mut [u8],
    payload_len: usize,
) -> Result<usize, CryptoError> {
    seal_on_lane(key, 0, receiver_index, counter, frame, payload_len)
}

/// Seals a data message in place, its header naming receive `lane`.
///
/// The plaintext sits at `frame[HEADER_LEN..HEADER_LEN + payload_len]`; the header is written
/// at the front and the tag after the ciphertext. Returns the datagram length
/// (`HEADER_LEN + payload_len + TAG_LEN`). The caller guarantees `counter` is never reused
/// with this key (see [`crate::session::Session::reserve`]).
#[inline]
pub fn seal_on_lane(
    key: &DataKey,
    lane: u8,
    receiver_index: u32,
    counter: u64,
    frame: &mut [u8],
    payload_len: usize,
) -> Result<usize, CryptoError> {
    let total = HEADER_LEN
        .checked_add(payload_len)
        .and_then(|n| n.checked_add(TAG_LEN))
        .unwrap_or(usize::MAX);
    let available = frame.len();
    let Some(frame) = frame.get_mut(..total) else {
        return Err(CryptoError::FrameTooSmall {
            needed: total,
            available,
        });
    };
    let header = DataHeader {
        receiver_index,
        counter,
        lane,
    }
    .to_bytes();
    let (head, rest) = frame.split_at_mut(HEADER_LEN);
    head.copy_from_slice(&header);
    let (payload, tag_out) = rest.split_at_mut(payload_len);
    let tag = key
        .key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce_for(counter)),
            Aad::from(&header),
            payload,
        )
        .map_err(|_| CryptoError::SealFailed)?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(total)
}

/// Opens a data message in place: checks the header, verifies the tag and decrypts.
///
/// Returns the header and the plaintext range within `datagram`
/// (`HEADER_LEN..datagram.len() - TAG_LEN`). On error the ciphertext may have been
/// overwritten and the datagram must be dropped. Replay checking is the caller's job, after
/// this succeeded.
#[inline]
pub fn open(key: &DataKey, datagram: &mut [u8]) -> Result<(DataHeader, Range<usize>), CryptoError> {
    let header = DataHeader::parse(datagram)?;
    let aad = header.to_bytes();
    let end = datagram.len().saturating_sub(TAG_LEN);
    let Some(sealed) = datagram.get_mut(HEADER_LEN..) else {
        return Err(CryptoError::Malformed(WireError::TooShort {
            expected: HEADER_LEN + TAG_LEN,
            got: 0,
        }));
    };
    key.key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce_for(header.counter)),
            Aad::from(&aad),
            sealed,
        )
        .map_err(|_| CryptoError::BadTag)?;
    Ok((header, HEADER_LEN..end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{classify, Datagram};

    const CIPHERS: [Cipher; 2] = [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305];

    fn key(c: Cipher, b: u8) -> DataKey {
        DataKey::new(c, &[b; 32]).unwrap()
    }

    #[test]
    fn cipher_codes_and_names() {
        for c in CIPHERS {
            assert_eq!(Cipher::from_code(c.code()), Some(c));
            assert_eq!(Cipher::try_from(c.code()), Ok(c));
            assert_eq!(c.name().parse::<Cipher>(), Ok(c));
            assert_eq!(c.to_string().to_uppercase().parse::<Cipher>(), Ok(c));
        }
        assert_eq!(Cipher::from_code(0), None);
        assert!(Cipher::try_from(3).is_err());
        assert!("aes-128-gcm".parse::<Cipher>().is_err());
    }

    #[test]
    fn round_trip_every_size_both_ciphers() {
        let mut frame = vec![0u8; HEADER_LEN + 1420 + TAG_LEN];
        for c in CIPHERS {
            let k = key(c, 7);
            for len in 0..=1420usize {
                let plain: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
                frame[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&plain);
                let n = seal(&k, 0xdead_beef, len as u64 * 3, &mut frame, len).unwrap();
                assert_eq!(n, HEADER_LEN + len + TAG_LEN);
                if len >= 16 {
                    assert_ne!(&frame[HEADER_LEN..HEADER_LEN + len], &plain[..]);
                }
                assert!(matches!(classify(&frame[..n]), Datagram::Data(_)));
                let (h, r) = open(&k, &mut frame[..n]).unwrap();
                assert_eq!(h.receiver_index, 0xdead_beef);
                assert_eq!(h.counter, len as u64 * 3);
                assert_eq!(r, HEADER_LEN..HEADER_LEN + len);
                assert_eq!(&frame[r], &plain[..]);
            }
        }
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        for c in CIPHERS {
            let k = key(c, 9);
            let len = 40;
            let mut sealed = vec![0u8; HEADER_LEN + len + TAG_LEN];
            for (i, b) in sealed[HEADER_LEN..HEADER_LEN + len].iter_mut().enumerate() {
                *b = i as u8;
            }
            let n = seal(&k, 5, 77, &mut sealed, len).unwrap();
            for bit in 0..n * 8 {
                let mut d = sealed.clone();
                d[bit / 8] ^= 1 << (bit % 8);
                assert!(open(&k, &mut d).is_err(), "bit {bit} flip accepted ({c})");
            }
            // And the unmodified one still opens.
            let mut d = sealed.clone();
            assert!(open(&k, &mut d).is_ok());
        }
    }

    #[test]
    fn wrong_key_and_cipher_rejected() {
        let mut f = vec![0u8; HEADER_LEN + 10 + TAG_LEN];
        let n = seal(&key(Cipher::Aes256Gcm, 1), 1, 1, &mut f, 10).unwrap();
        let mut g = f.clone();
        assert_eq!(
            open(&key(Cipher::Aes256Gcm, 2), &mut f[..n]),
            Err(CryptoError::BadTag)
        );
        assert_eq!(
            open(&key(Cipher::ChaCha20Poly1305, 1), &mut g[..n]),
            Err(CryptoError::BadTag)
        );
    }

    #[test]
    fn small_frames_are_errors() {
        let k = key(Cipher::Aes256Gcm, 1);
        let mut f = [0u8; 40];
        assert_eq!(
            seal(&k, 1, 1, &mut f, 9),
            Err(CryptoError::FrameTooSmall {
                needed: 41,
                available: 40
            })
        );
        assert!(seal(&k, 1, 1, &mut f, usize::MAX).is_err());
        assert!(matches!(
            open(&k, &mut f[..31]),
            Err(CryptoError::Malformed(_))
        ));
    }

    #[test]
    fn nonce_layout() {
        assert_eq!(
            nonce_for(0x0807_0605_0403_0201),
            [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
    }
}
