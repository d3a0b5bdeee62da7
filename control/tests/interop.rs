//! Interoperability of aws-lc-rs (production) with PQClean via pqcrypto (independent
//! implementation): ML-KEM-1024 both directions, ML-DSA-87 both directions.
//!
//! Encodings line up byte for byte: ML-KEM ek 1568 / ct 1568 / shared secret 32, ML-DSA-87
//! public key 2592 / signature 4627 (FIPS 203/204 raw encodings). aws-lc-rs signs "pure"
//! ML-DSA with an empty context string; pqcrypto's `detached_sign` is the same (its `_ctx`
//! variants take a context, which must then be empty to interoperate).

use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_1024};
use aws_lc_rs::signature::{
    KeyPair, PqdsaKeyPair, UnparsedPublicKey, ML_DSA_87, ML_DSA_87_SIGNING,
};
use pqcrypto_mldsa::mldsa87;
use pqcrypto_mlkem::mlkem1024;
use pqcrypto_traits::kem::{Ciphertext as _, PublicKey as _, SharedSecret as _};
use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _};

#[test]
fn mlkem1024_aws_encapsulates_pqclean_decapsulates() {
    let (pk, sk) = mlkem1024::keypair();
    assert_eq!(pk.as_bytes().len(), 1568);
    let ek = EncapsulationKey::new(&ML_KEM_1024, pk.as_bytes()).unwrap();
    let (ct, ss) = ek.encapsulate().unwrap();
    assert_eq!(ct.as_ref().len(), 1568);
    let ct2 = mlkem1024::Ciphertext::from_bytes(ct.as_ref()).unwrap();
    let ss2 = mlkem1024::decapsulate(&ct2, &sk);
    assert_eq!(ss.as_ref(), ss2.as_bytes());
    assert_eq!(ss.as_ref().len(), 32);
}

#[test]
fn mlkem1024_pqclean_encapsulates_aws_decapsulates() {
    let dk = DecapsulationKey::generate(&ML_KEM_1024).unwrap();
    let ek = dk.encapsulation_key().unwrap().key_bytes().unwrap();
    let pk = mlkem1024::PublicKey::from_bytes(ek.as_ref()).unwrap();
    let (ss, ct) = mlkem1024::encapsulate(&pk);
    let ours = dk.decapsulate(Ciphertext::from(ct.as_bytes())).unwrap();
    assert_eq!(ours.as_ref(), ss.as_bytes());
    // A modified ciphertext gives a different (implicitly rejected) secret on our side.
    let mut bad = ct.as_bytes().to_vec();
    bad[0] ^= 1;
    let rej = dk.decapsulate(Ciphertext::from(bad.as_slice())).unwrap();
    assert_ne!(rej.as_ref(), ss.as_bytes());
}

#[test]
fn mldsa87_aws_signs_pqclean_verifies() {
    let kp = PqdsaKeyPair::generate(&ML_DSA_87_SIGNING).unwrap();
    let msg = b"shadowmesh interop message";
    let mut sig = vec![0u8; ML_DSA_87_SIGNING.signature_len()];
    let n = kp.sign(msg, &mut sig).unwrap();
    assert_eq!(n, 4627);
    let pk = mldsa87::PublicKey::from_bytes(kp.public_key().as_ref()).unwrap();
    let ds = mldsa87::DetachedSignature::from_bytes(&sig[..n]).unwrap();
    mldsa87::verify_detached_signature(&ds, msg, &pk).unwrap();
    mldsa87::verify_detached_signature_ctx(&ds, msg, b"", &pk).unwrap();
    // Context strings are part of the signed message: a non-empty one does not verify.
    assert!(mldsa87::verify_detached_signature_ctx(&ds, msg, b"x", &pk).is_err());
    assert!(mldsa87::verify_detached_signature(&ds, b"other", &pk).is_err());
}

#[test]
fn mldsa87_pqclean_signs_aws_verifies() {
    let (pk, sk) = mldsa87::keypair();
    assert_eq!(pk.as_bytes().len(), 2592);
    let msg = b"shadowmesh interop message";
    let sig = mldsa87::detached_sign(msg, &sk);
    assert_eq!(sig.as_bytes().len(), 4627);
    let vk = UnparsedPublicKey::new(&ML_DSA_87, pk.as_bytes());
    vk.verify(msg, sig.as_bytes()).unwrap();
    assert!(vk.verify(b"other", sig.as_bytes()).is_err());
    let with_ctx = mldsa87::detached_sign_ctx(msg, b"ctx", &sk);
    assert!(vk.verify(msg, with_ctx.as_bytes()).is_err());
}
