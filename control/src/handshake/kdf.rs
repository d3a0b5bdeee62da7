//! The handshake's symmetric state: an HKDF-SHA384 chaining key `ck` and a SHA-384 transcript
//! hash `h`, in the manner of the Noise framework's `SymmetricState`, plus the one-shot AEAD
//! used inside handshake messages and the final split into transport keys.
//!
//! Owns every intermediate secret of the key schedule; each is held in `Zeroizing` storage and
//! never copied out except as the two transport keys returned by [`SymmetricState::split`].
//! It must never read a clock or do I/O.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::digest::{self, SHA384};
use aws_lc_rs::hkdf::{KeyType, Salt, HKDF_SHA384};
use zeroize::Zeroizing;

pub use crate::digest::{ct_eq, mac16, sha256};

/// Length of `ck` and `h` (SHA-384 output).
pub const HASH_LEN: usize = 48;
/// Length of an AEAD key and of each transport key.
pub const KEY_LEN: usize = 32;
/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;

/// The protocol name hashed into the initial state (changing any primitive changes the name).
pub const PROTOCOL_NAME: &[u8] = b"ShadowMesh_pqIK_v2_X25519_MLKEM1024_HKDF-SHA384_AES256GCM";

struct Len(usize);
impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA384 (RFC 5869) with `salt`, `ikm` and `info`, filling `out`.
fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    let prk = Salt::new(HKDF_SHA384, salt).extract(ikm);
    let info = [info];
    // `fill` only fails when `out` exceeds 255 × 48 bytes; every caller passes ≤ 48.
    if let Ok(okm) = prk.expand(&info, Len(out.len())) {
        let _ = okm.fill(out);
    }
}

/// AES-256-GCM seal with a key used exactly once (so a zero nonce is safe).
pub(crate) fn seal_once(key: &[u8; KEY_LEN], ad: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let mut buf = plaintext.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([0; 12]),
        Aad::from(ad),
        &mut buf,
    )
    .ok()?;
    Some(buf)
}

/// AES-256-GCM open with a key used exactly once; the plaintext is zeroized on drop.
pub(crate) fn open_once(
    key: &[u8; KEY_LEN],
    ad: &[u8],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let len = k
        .open_in_place(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::from(ad),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(len);
    Some(buf)
}

/// Chaining key + transcript hash. Cloned only in tests; dropped state is zeroized.
#[derive(Clone)]
pub struct SymmetricState {
    ck: Zeroizing<[u8; HASH_LEN]>,
    h: [u8; HASH_LEN],
}

impl SymmetricState {
    /// `h = ck = SHA-384(PROTOCOL_NAME)`, then `h = SHA-384(h || prologue)`.
    #[must_use]
    pub fn new(prologue: &[u8]) -> Self {
        let mut h = [0u8; HASH_LEN];
        h.copy_from_slice(digest::digest(&SHA384, PROTOCOL_NAME).as_ref());
        let mut s = Self {
            ck: Zeroizing::new(h),
            h,
        };
        s.mix_hash(prologue);
        s
    }

    /// `h = SHA-384(h || data)`: binds public values (keys, ciphertexts, message bytes).
    pub fn mix_hash(&mut self, data: &[u8]) {
        let mut ctx = digest::Context::new(&SHA384);
        ctx.update(&self.h);
        ctx.update(data);
        self.h.copy_from_slice(ctx.finish().as_ref());
    }

    /// `ck, k = HKDF-SHA384(salt = ck, ikm = input, info = label || h)`; returns `k`.
    ///
    /// Every shared secret goes through here, so the final keys depend on all of them, and
    /// `h` in `info` binds each step to the transcript so far.
    pub fn mix_key(&mut self, label: &[u8], input: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let mut okm = Zeroizing::new([0u8; HASH_LEN + KEY_LEN]);
        let info = Zeroizing::new([b"shadowmesh mix ".as_slice(), label, &self.h].concat());
        hkdf(self.ck.as_slice(), input, &info, okm.as_mut_slice());
        self.ck.copy_from_slice(&okm[..HASH_LEN]);
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&okm[HASH_LEN..]);
        k
    }

    /// Encrypts `plaintext` under `k` with `h` as associated data, then mixes the ciphertext.
    pub fn encrypt_and_hash(&mut self, k: &[u8; KEY_LEN], plaintext: &[u8]) -> Option<Vec<u8>> {
        let ct = seal_once(k, &self.h, plaintext)?;
        self.mix_hash(&ct);
        Some(ct)
    }

    /// Opens `ciphertext` under `k` with `h` as associated data, then mixes the ciphertext.
    pub fn decrypt_and_hash(
        &mut self,
        k: &[u8; KEY_LEN],
        ciphertext: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let pt = open_once(k, &self.h, ciphertext)?;
        self.mix_hash(ciphertext);
        Some(pt)
    }

    /// The transcript hash so far.
    #[must_use]
    pub fn hash(&self) -> &[u8; HASH_LEN] {
        &self.h
    }

    /// Final split: `(initiator→responder, responder→initiator)` keys, bound to the whole
    /// transcript through `h`.
    #[must_use]
    pub fn split(self) -> (Zeroizing<[u8; KEY_LEN]>, Zeroizing<[u8; KEY_LEN]>) {
        let mut i2r = Zeroizing::new([0u8; KEY_LEN]);
        let mut r2i = Zeroizing::new([0u8; KEY_LEN]);
        let info_i = [b"shadowmesh transport i2r ".as_slice(), &self.h].concat();
        let info_r = [b"shadowmesh transport r2i ".as_slice(), &self.h].concat();
        hkdf(self.ck.as_slice(), &[], &info_i, i2r.as_mut_slice());
        hkdf(self.ck.as_slice(), &[], &info_r, r2i.as_mut_slice());
        (i2r, r2i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::hmac;

    #[test]
    fn hkdf_sha384_matches_rfc5869_style_vector() {
        // Cross-check against an independent HMAC-based computation of HKDF (RFC 5869 §2).
        let (salt, ikm, info) = (b"salt".as_slice(), b"ikm".as_slice(), b"info".as_slice());
        let mut ours = [0u8; 48];
        hkdf(salt, ikm, info, &mut ours);
        let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA384, salt), ikm);
        let t1 = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA384, prk.as_ref()),
            &[info, &[1u8]].concat(),
        );
        assert_eq!(&ours[..], t1.as_ref());
    }

    #[test]
    fn every_input_changes_the_keys() {
        let base = {
            let mut s = SymmetricState::new(b"p");
            s.mix_key(b"a", b"secret");
            s.mix_hash(b"pub");
            s.split()
        };
        let variants = [
            (b"q".as_slice(), b"secret".as_slice(), b"pub".as_slice()),
            (b"p", b"secreT", b"pub"),
            (b"p", b"secret", b"puB"),
        ];
        for (p, sec, public) in variants {
            let mut s = SymmetricState::new(p);
            s.mix_key(b"a", sec);
            s.mix_hash(public);
            let (a, b) = s.split();
            assert_ne!(*a, *base.0);
            assert_ne!(*b, *base.1);
        }
        assert_ne!(*base.0, *base.1);
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let mut a = SymmetricState::new(b"x");
        let mut b = a.clone();
        let k = a.mix_key(b"k", b"s");
        let kb = b.mix_key(b"k", b"s");
        let ct = a.encrypt_and_hash(&k, b"hello").unwrap();
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(b.clone().decrypt_and_hash(&kb, &bad).is_none());
        assert_eq!(b.decrypt_and_hash(&kb, &ct).unwrap().as_slice(), b"hello");
        assert_eq!(a.hash(), b.hash());
    }
}
