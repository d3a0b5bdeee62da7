//! Armoured text files: `-----BEGIN SHADOWMESH <LABEL> v1-----`, a `Version:` line, standard
//! base64 (RFC 4648, padded) in 64-column lines, `-----END ... -----`.
//!
//! Owns the text envelope only; it never interprets the bytes inside. A small base64 codec is
//! written here (≈60 lines) rather than pulling a crate, because the workspace list has none and
//! we want the decoder bounded and strict (no whitespace tolerance beyond line breaks). Decoded
//! secret bytes are returned in `Zeroizing` so that no copy of a key outlives its use.
//! It must never panic on input: every malformed file is an [`ArmorError`].

use thiserror::Error;
use zeroize::Zeroizing;

/// Largest armoured body accepted, in decoded bytes (bigger than any key or certificate we emit).
pub const MAX_ARMOR_BYTES: usize = 64 * 1024;

/// Version written to and required from the `Version:` line.
pub const ARMOR_VERSION: u32 = 1;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why an armoured text could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ArmorError {
    /// The first non-empty line was not `-----BEGIN SHADOWMESH <label> v1-----`.
    #[error("expected the line `-----BEGIN SHADOWMESH {expected} v1-----`")]
    MissingBegin {
        /// The label that was expected.
        expected: &'static str,
    },
    /// No matching `-----END ...-----` line.
    #[error("expected the line `-----END SHADOWMESH {expected} v1-----`")]
    MissingEnd {
        /// The label that was expected.
        expected: &'static str,
    },
    /// The `Version:` line is missing or names a version this build does not read.
    #[error("expected `Version: {ARMOR_VERSION}` after the BEGIN line")]
    BadVersion,
    /// A character outside the base64 alphabet, or bad padding.
    #[error("expected base64 (A-Z a-z 0-9 + / with = padding) in the body")]
    BadBase64,
    /// The body decodes to more than [`MAX_ARMOR_BYTES`].
    #[error("armoured body larger than {MAX_ARMOR_BYTES} bytes")]
    TooLarge,
}

/// Encodes `data` as padded standard base64.
#[must_use]
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn decode_char(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes padded standard base64; the result is zeroized on drop because it may be a secret.
///
/// # Errors
/// [`ArmorError::BadBase64`] on a bad character, length or padding; [`ArmorError::TooLarge`]
/// beyond [`MAX_ARMOR_BYTES`].
pub fn base64_decode(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, ArmorError> {
    if text.len() % 4 != 0 {
        return Err(ArmorError::BadBase64);
    }
    if text.len() / 4 * 3 > MAX_ARMOR_BYTES {
        return Err(ArmorError::TooLarge);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3));
    let quads = text.len() / 4;
    for (qi, quad) in text.chunks_exact(4).enumerate() {
        let last = qi + 1 == quads;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err(ArmorError::BadBase64);
        }
        let mut n = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                decode_char(c).ok_or(ArmorError::BadBase64)?
            };
            n = (n << 6) | v;
        }
        let bytes = n.to_be_bytes();
        // Canonical encoding: the bits dropped by padding must be zero.
        if (pad == 1 && bytes[3] != 0) || (pad == 2 && (bytes[2] != 0 || bytes[3] != 0)) {
            return Err(ArmorError::BadBase64);
        }
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Ok(out)
}

/// Wraps `data` in an armoured envelope with the given label (e.g. `NODE KEY`).
#[must_use]
pub fn armor(label: &str, data: &[u8]) -> Zeroizing<String> {
    let b64 = Zeroizing::new(base64_encode(data));
    let mut out = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 128));
    out.push_str("-----BEGIN SHADOWMESH ");
    out.push_str(label);
    out.push_str(" v1-----\nVersion: 1\n");
    for line in b64.as_bytes().chunks(64) {
        // The base64 alphabet is ASCII, so every chunk boundary is a char boundary.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END SHADOWMESH ");
    out.push_str(label);
    out.push_str(" v1-----\n");
    out
}

/// Reads an armoured envelope with the expected label and returns the decoded bytes.
///
/// # Errors
/// An [`ArmorError`] saying which part of the envelope was not as expected.
pub fn dearmor(label: &'static str, text: &str) -> Result<Zeroizing<Vec<u8>>, ArmorError> {
    let begin = format!("-----BEGIN SHADOWMESH {label} v1-----");
    let end = format!("-----END SHADOWMESH {label} v1-----");
    let mut lines = text.lines().map(str::trim_end).skip_while(|l| l.is_empty());
    if lines.next() != Some(begin.as_str()) {
        return Err(ArmorError::MissingBegin { expected: label });
    }
    match lines.next().and_then(|l| l.strip_prefix("Version:")) {
        Some(v) if v.trim().parse::<u32>().ok() == Some(ARMOR_VERSION) => {}
        _ => return Err(ArmorError::BadVersion),
    }
    let mut body = Zeroizing::new(Vec::new());
    for line in lines.by_ref() {
        if line == end {
            return base64_decode(&body);
        }
        if body.len() + line.len() > MAX_ARMOR_BYTES / 3 * 4 + 4 {
            return Err(ArmorError::TooLarge);
        }
        body.extend_from_slice(line.as_bytes());
    }
    Err(ArmorError::MissingEnd { expected: label })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_known_vectors() {
        // RFC 4648 section 10.
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(
                base64_decode(enc.as_bytes()).unwrap().as_slice(),
                plain.as_bytes()
            );
        }
    }

    #[test]
    fn base64_rejects_malformed() {
        for bad in ["Zg=", "Z===", "Zg==Zg==", "Zh==", "Zm9*", "Zm=v"] {
            assert_eq!(
                base64_decode(bad.as_bytes()),
                Err(ArmorError::BadBase64),
                "{bad}"
            );
        }
    }

    #[test]
    fn armor_round_trip_and_label_check() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let text = armor("NODE KEY", &data);
        assert!(text.starts_with("-----BEGIN SHADOWMESH NODE KEY v1-----\nVersion: 1\n"));
        assert_eq!(
            dearmor("NODE KEY", &text).unwrap().as_slice(),
            data.as_slice()
        );
        assert_eq!(
            dearmor("NODE CERT", &text),
            Err(ArmorError::MissingBegin {
                expected: "NODE CERT"
            })
        );
        let v2 = text.replace("Version: 1", "Version: 2");
        assert_eq!(dearmor("NODE KEY", &v2), Err(ArmorError::BadVersion));
        let cut = &text[..text.len() - 10];
        assert_eq!(
            dearmor("NODE KEY", cut),
            Err(ArmorError::MissingEnd {
                expected: "NODE KEY"
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn base64_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let enc = base64_encode(&data);
            let dec = base64_decode(enc.as_bytes()).unwrap();
            proptest::prop_assert_eq!(dec.as_slice(), data.as_slice());
        }
    }
}
