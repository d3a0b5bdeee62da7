//! Seals fuzzer-chosen M1 *payloads* (the two encrypted parts: certificate or hash; timestamp
//! and cipher list) so that the responder's payload parsers see them at all. Without this,
//! every mutated byte of an M1's ciphertext fails the AEAD and the code after it is never
//! reached.
//!
//! It mirrors the initiator's key schedule (`control/src/handshake/initiator.rs`,
//! `Initiator::with_options`) with public APIs: the chain up to `kem1` needs only public key
//! material; the timestamp part needs A's static X25519 secret (protocol v2's `ss`), taken
//! from A's secret-key encoding (its last 32 bytes, docs/protocol.md §2). When the handshake
//! format changes, this mirror must follow: the test
//! `seal::tests::sealed_real_payload_is_accepted` fails until it does.
//!
//! Input layout of a sealed plaintext: `timestamp [12] | cipher ids [2] | identity part`
//! (the wire carries them in the other order, in two AEADs).
//!
//! The expensive part (ephemeral keys, the encapsulation to B, the chain up to the payload key)
//! is done once per process; each input costs one AEAD seal and one mac1.

use std::sync::OnceLock;

use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use aws_lc_rs::kem::{DecapsulationKey, EncapsulationKey, ML_KEM_1024};
use shadowmesh_control::cert::NodeCert;
use shadowmesh_control::cookie::StaticKeys;
use shadowmesh_control::handshake::kdf::{SymmetricState, KEY_LEN};
use shadowmesh_control::handshake::messages::{KIND_INITIATION, M1_TS_PLAIN, MAC_LEN};
use shadowmesh_control::handshake::{tai64n, CipherChoice, PROLOGUE};
use shadowmesh_control::identity::{Identity, IdentityPublic};
use zeroize::Zeroizing;

use crate::fixtures::{net, INITIATOR_INDEX, NOW};

/// Payload certificate mode: the full certificate follows (as the initiator's `CERT_FULL`).
pub const CERT_FULL: u8 = 0;
/// Payload certificate mode: the certificate's SHA-256 follows (`CERT_HASH`).
pub const CERT_HASH: u8 = 1;

/// The M1 state up to the payload seal, for one responder.
pub struct M1Sealer {
    /// kind, reserved, sender, e_I, E_I, ct1 (everything before `payload_len`).
    prefix: Vec<u8>,
    ss: SymmetricState,
    k: Zeroizing<[u8; KEY_LEN]>,
    /// X25519(s_A, s_B): the static-static secret mixed in before the timestamp part.
    ss_dh: Zeroizing<Vec<u8>>,
    to: StaticKeys,
}

impl std::fmt::Debug for M1Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("M1Sealer").finish_non_exhaustive()
    }
}

impl M1Sealer {
    /// Runs the initiator's chain to `to` up to the payload key, with fresh ephemeral keys.
    ///
    /// # Panics
    /// If aws-lc cannot generate keys or `to` holds invalid public keys (fixtures only).
    #[must_use]
    pub fn new(from: &Identity, to: &IdentityPublic, sender: u32) -> Self {
        let keys = StaticKeys::new(to);
        let mut ss = SymmetricState::new(PROLOGUE);
        ss.mix_hash(&keys.static_hash);
        let mut prefix = vec![KIND_INITIATION, 0, 0, 0];
        prefix.extend_from_slice(&sender.to_le_bytes());
        ss.mix_hash(&prefix);
        let e = agreement::PrivateKey::generate(&X25519).expect("X25519 keygen");
        let e_pub = e.compute_public_key().expect("X25519 public key");
        ss.mix_hash(e_pub.as_ref());
        let _ = ss.mix_key(b"e", e_pub.as_ref());
        let ekem = DecapsulationKey::generate(&ML_KEM_1024).expect("ML-KEM keygen");
        let ek = ekem
            .encapsulation_key()
            .and_then(|k| k.key_bytes())
            .expect("ML-KEM ek");
        ss.mix_hash(ek.as_ref());
        let es = agreement::agree(&e, UnparsedPublicKey::new(&X25519, &to.x25519), (), |s| {
            Ok(Zeroizing::new(s.to_vec()))
        })
        .expect("X25519 agreement with a fixture key");
        let _ = ss.mix_key(b"es", &es);
        let (ct1, k1) = EncapsulationKey::new(&ML_KEM_1024, &to.kem_ek)
            .expect("fixture ML-KEM key")
            .encapsulate()
            .expect("encapsulation to a fixture key");
        ss.mix_hash(ct1.as_ref());
        let k = ss.mix_key(b"kem1", k1.as_ref());
        prefix.extend_from_slice(e_pub.as_ref());
        prefix.extend_from_slice(ek.as_ref());
        prefix.extend_from_slice(ct1.as_ref());
        let secret = from.to_secret_bytes().expect("fixture secret key");
        let s_from = agreement::PrivateKey::from_private_key(
            &X25519,
            secret
                .get(secret.len() - 32..)
                .expect("32-byte X25519 secret"),
        )
        .expect("fixture X25519 secret");
        let ss_dh = agreement::agree(
            &s_from,
            UnparsedPublicKey::new(&X25519, &to.x25519),
            (),
            |s| Ok(Zeroizing::new(s.to_vec())),
        )
        .expect("X25519 agreement with a fixture key");
        Self {
            prefix,
            ss,
            k,
            ss_dh,
            to: keys,
        }
    }

    /// A complete M1 (valid mac1, empty mac2) carrying `plain` as its encrypted payload;
    /// `None` when the payload is too long for the u16 length field.
    #[must_use]
    pub fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        // The timestamp part has a fixed size on the wire: pad or cut the fuzzer's bytes.
        let mut ts_part = [0u8; M1_TS_PLAIN];
        let cut = plain.len().min(M1_TS_PLAIN);
        ts_part[..cut].copy_from_slice(&plain[..cut]);
        let identity = plain.get(cut..).unwrap_or_default();
        let mut ss = self.ss.clone();
        let payload = ss.encrypt_and_hash(&self.k, identity)?;
        let k_ss = ss.mix_key(b"ss", &self.ss_dh);
        let payload_ts = ss.encrypt_and_hash(&k_ss, &ts_part)?;
        let plen = u16::try_from(payload.len()).ok()?;
        let mut m1 = self.prefix.clone();
        m1.extend_from_slice(&plen.to_le_bytes());
        m1.extend_from_slice(&payload);
        m1.extend_from_slice(&payload_ts);
        let mac1 = self.to.mac1(&m1);
        m1.extend_from_slice(&mac1);
        m1.extend_from_slice(&[0u8; MAC_LEN]);
        Some(m1)
    }
}

/// The process-wide sealer from A to B.
pub fn sealer() -> &'static M1Sealer {
    static SEALER: OnceLock<M1Sealer> = OnceLock::new();
    SEALER.get_or_init(|| M1Sealer::new(&net().a, net().b.public(), INITIATOR_INDEX))
}

/// A well-formed M1 plaintext in the sealer's input layout: the 12-byte timestamp, two cipher
/// ids (0 = none; more than two are cut), then the identity part as the initiator builds it:
/// mode, certificate (with a u16 length) or its hash.
#[must_use]
pub fn plaintext(cert: &NodeCert, by_hash: bool, ts: [u8; 12], ciphers: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&ts);
    let mut ids = [0u8; 2];
    for (slot, c) in ids.iter_mut().zip(ciphers) {
        *slot = *c;
    }
    p.extend_from_slice(&ids);
    if by_hash {
        p.push(CERT_HASH);
        p.extend_from_slice(&cert.hash());
    } else {
        p.push(CERT_FULL);
        let bytes = cert.to_bytes();
        p.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(0).to_le_bytes());
        p.extend_from_slice(bytes);
    }
    p
}

/// The plaintext of A's default initiation at [`NOW`].
#[must_use]
pub fn default_plaintext(by_hash: bool) -> Vec<u8> {
    plaintext(
        &net().a_cert,
        by_hash,
        tai64n(NOW),
        &[
            CipherChoice::Aes256Gcm.id(),
            CipherChoice::ChaCha20Poly1305.id(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{src, RESPONDER_INDEX};
    use shadowmesh_control::handshake::{Responder, ResponderOutput};

    #[test]
    fn sealed_real_payload_is_accepted() {
        let n = net();
        for by_hash in [false, true] {
            let mut r = Responder::new(
                &n.b,
                &n.b_cert,
                &n.ca,
                Box::new(shadowmesh_control::rand::SystemRng::new()),
            )
            .expect("responder");
            r.cache_cert(n.a_cert.clone(), NOW).expect("cache A");
            let m1 = sealer().seal(&default_plaintext(by_hash)).expect("seal");
            let out = r
                .handle_initiation(&m1, src(), NOW, false, RESPONDER_INDEX)
                .expect("the mirror's M1 is accepted: if not, the handshake format changed");
            assert!(matches!(out, ResponderOutput::Reply { .. }));
        }
    }

    #[test]
    fn sealed_tampered_payload_is_refused() {
        let n = net();
        let mut r = Responder::new(
            &n.b,
            &n.b_cert,
            &n.ca,
            Box::new(shadowmesh_control::rand::SystemRng::new()),
        )
        .expect("responder");
        let mut plain = default_plaintext(false);
        plain.push(0); // one byte after the certificate
        let m1 = sealer().seal(&plain).expect("seal");
        assert!(r
            .handle_initiation(&m1, src(), NOW, false, RESPONDER_INDEX)
            .is_err());
    }
}
