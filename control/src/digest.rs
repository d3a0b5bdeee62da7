//! Small keyed and unkeyed digests shared by every protocol part (certificates, identities,
//! cookies, transport MACs, the DHT): SHA-256, a truncated HMAC-SHA256, constant-time compare.

use aws_lc_rs::digest::{self, SHA256};
use aws_lc_rs::hmac;

/// SHA-256 of the concatenation of `parts`.
#[must_use]
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// HMAC-SHA256 of `data` under `key`, truncated to 16 bytes (for mac1, mac2 and cookies).
#[must_use]
pub fn mac16(key: &[u8], data: &[&[u8]]) -> [u8; 16] {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for d in data {
        ctx.update(d);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.sign().as_ref()[..16]);
    out
}

/// Constant-time equality for MACs.
#[must_use]
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}
