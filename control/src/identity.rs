//! Node identities: an ML-DSA-87 signing key (node ID = SHA-256 of its public key), a static
//! ML-KEM-1024 decapsulation key and a static X25519 key, and the 0600 key files that hold them.
//!
//! Owns long-term node secrets and their on-disk form. Every exported copy of a secret is in
//! `Zeroizing` storage; ML-DSA keys are stored in seed form (PKCS#8 v1). This module must never
//! write a secret with wider permissions than 0600, nor read one that is group/other readable.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::agreement::{self, X25519};
use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
use aws_lc_rs::kem::{DecapsulationKey, EncapsulationKey, ML_KEM_1024};
use aws_lc_rs::signature::{KeyPair, PqdsaKeyPair, ML_DSA_87_SIGNING};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::armor::{self, ArmorError};
use crate::handshake::kdf::sha256;

/// ML-DSA-87 public key length.
pub const MLDSA_PK_LEN: usize = 2592;
/// ML-DSA-87 signature length.
pub const MLDSA_SIG_LEN: usize = 4627;
/// ML-KEM-1024 encapsulation (public) key length.
pub const MLKEM_EK_LEN: usize = 1568;
/// ML-KEM-1024 decapsulation (secret) key length.
pub const MLKEM_DK_LEN: usize = 3168;
/// ML-KEM-1024 ciphertext length.
pub const MLKEM_CT_LEN: usize = 1568;
/// X25519 public key length.
pub const X25519_LEN: usize = 32;
/// Node ID length (SHA-256).
pub const NODE_ID_LEN: usize = 32;

const SECRET_LABEL: &str = "NODE KEY";
const PUBLIC_LABEL: &str = "NODE PUBLIC KEY";
const FILE_VERSION: u8 = 1;
/// Upper bound on a PKCS#8 ML-DSA document (seed form is ~54 bytes, expanded ~4.9 KB).
const MAX_PKCS8: usize = 8192;

/// Errors loading, saving or using an identity or CA key.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// A cryptographic library call failed (key generation, parsing a key).
    #[error("crypto operation failed: {0}")]
    Crypto(&'static str),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The secret key file is readable by group or others.
    #[error("{path}: secret key file has mode {mode:o}, expected 0600 (run `chmod 600 {path}`)")]
    Permissions {
        /// The file concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key path is not a regular file (a directory, device, FIFO or socket).
    #[error("{path}: expected a regular key file")]
    NotAFile {
        /// The path concerned.
        path: PathBuf,
    },
    /// The ML-KEM encapsulation key stored in a secret key file is not the one inside its
    /// decapsulation key: the file was damaged or tampered with.
    #[error(
        "inconsistent ML-KEM-1024 key in the secret key file: {0}; the file is damaged or was \
         tampered with (restore it from a backup, or generate a new identity and certificate)"
    )]
    KemKeyMismatch(&'static str),
    /// The armoured envelope was malformed.
    #[error("armour: {0}")]
    Armor(#[from] ArmorError),
    /// The decoded bytes were not a key of the expected shape.
    #[error("malformed key file: expected {0}")]
    Malformed(&'static str),
}

/// Writes `text` to `path` atomically with mode 0600 (temporary file + rename).
pub(crate) fn write_secret_file(path: &Path, text: &str) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A stale temporary could carry wider permissions; never reuse it.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)
}

/// Largest secret key file read (node keys are ~7 KB of base64, CA keys less); a bigger one
/// is refused instead of read into memory.
pub(crate) const MAX_SECRET_FILE: usize = 64 * 1024;

/// Reads a secret file, refusing it if it is not a regular file, if group/other permission
/// bits are set, or if it is larger than [`MAX_SECRET_FILE`].
///
/// The checks are made on the open file (`fstat` of the descriptor), never on the path
/// before opening it: a path checked first could be swapped for another file between the
/// check and the open.
pub(crate) fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    read_secret_from(fs::File::open(path).map_err(io)?, path)
}

/// The checks and the read of [`read_secret_file`] on an already open `file` (named `path`
/// in errors).
fn read_secret_from(file: fs::File, path: &Path) -> Result<Zeroizing<String>, IdentityError> {
    use std::io::Read;
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.file_type().is_file() {
        return Err(IdentityError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // Read into storage sized once for the largest accepted file, so no reallocation leaves
    // an unwiped copy of the key behind; one byte more tells an oversized file.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_SECRET_FILE + 1));
    file.take(MAX_SECRET_FILE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() > MAX_SECRET_FILE {
        return Err(IdentityError::Malformed(
            "a key file of at most 65536 bytes",
        ));
    }
    match String::from_utf8(std::mem::take(&mut *buf)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            Zeroizing::new(e.into_bytes());
            Err(IdentityError::Malformed(
                "an armoured (UTF-8 text) key file",
            ))
        }
    }
}

/// Reads a public (non-secret) text file.
pub(crate) fn read_public_file(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A bounded reader over decoded bytes; every read is checked, never indexed.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|b| b.try_into().ok())
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The public half of an identity: what a certificate binds and peers need.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityPublic {
    /// ML-DSA-87 public key (2592 bytes).
    pub sign_pk: Vec<u8>,
    /// Static ML-KEM-1024 encapsulation key (1568 bytes).
    pub kem_ek: Vec<u8>,
    /// Static X25519 public key.
    pub x25519: [u8; X25519_LEN],
}

impl std::fmt::Debug for IdentityPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityPublic({})", hex(&self.node_id()[..8]))
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl IdentityPublic {
    /// Node ID = SHA-256(ML-DSA public key).
    #[must_use]
    pub fn node_id(&self) -> [u8; NODE_ID_LEN] {
        sha256(&[&self.sign_pk])
    }

    /// Binary form: `version u8 | sign_pk | kem_ek | x25519`.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        [
            &[FILE_VERSION][..],
            &self.sign_pk,
            &self.kem_ek,
            &self.x25519,
        ]
        .concat()
    }

    /// Parses [`Self::to_bytes`] output.
    ///
    /// # Errors
    /// [`IdentityError::Malformed`] on a wrong version or length.
    pub fn from_bytes(b: &[u8]) -> Result<Self, IdentityError> {
        let mut r = Reader(b);
        if r.u8() != Some(FILE_VERSION) {
            return Err(IdentityError::Malformed("public key file version 1"));
        }
        let bad = || IdentityError::Malformed("public key of 4193 bytes after the version");
        let sign_pk = r.take(MLDSA_PK_LEN).ok_or_else(bad)?.to_vec();
        let kem_ek = r.take(MLKEM_EK_LEN).ok_or_else(bad)?.to_vec();
        let x25519 = r.array().ok_or_else(bad)?;
        if !r.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            sign_pk,
            kem_ek,
            x25519,
        })
    }

    /// Armoured text (`NODE PUBLIC KEY`).
    #[must_use]
    pub fn to_armor(&self) -> String {
        armor::armor(PUBLIC_LABEL, &self.to_bytes()).to_string()
    }

    /// Parses armoured text.
    ///
    /// # Errors
    /// Armour or shape errors.
    pub fn from_armor(text: &str) -> Result<Self, IdentityError> {
        Self::from_bytes(&armor::dearmor(PUBLIC_LABEL, text)?)
    }
}

/// A node's long-term secret keys.
pub struct Identity {
    signing: PqdsaKeyPair,
    kem_dk: DecapsulationKey,
    x25519: agreement::PrivateKey,
    public: IdentityPublic,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", hex(&self.node_id()[..8]))
    }
}

impl Identity {
    /// Generates fresh keys from the library's system RNG.
    ///
    /// # Errors
    /// [`IdentityError::Crypto`] if a key generation fails.
    pub fn generate() -> Result<Self, IdentityError> {
        let signing = PqdsaKeyPair::generate(&ML_DSA_87_SIGNING)
            .map_err(|_| IdentityError::Crypto("ML-DSA-87 key generation"))?;
        let kem_dk = DecapsulationKey::generate(&ML_KEM_1024)
            .map_err(|_| IdentityError::Crypto("ML-KEM-1024 key generation"))?;
        let x25519 = agreement::PrivateKey::generate(&X25519)
            .map_err(|_| IdentityError::Crypto("X25519 key generation"))?;
        Self::assemble(signing, kem_dk, None, x25519)
    }

    fn assemble(
        signing: PqdsaKeyPair,
        kem_dk: DecapsulationKey,
        kem_ek: Option<Vec<u8>>,
        x25519: agreement::PrivateKey,
    ) -> Result<Self, IdentityError> {
        let kem_ek = match kem_ek {
            Some(ek) => ek,
            None => kem_dk
                .encapsulation_key()
                .and_then(|ek| ek.key_bytes())
                .map_err(|_| IdentityError::Crypto("ML-KEM-1024 public key export"))?
                .as_ref()
                .to_vec(),
        };
        let xpub = x25519
            .compute_public_key()
            .map_err(|_| IdentityError::Crypto("X25519 public key"))?;
        let public = IdentityPublic {
            sign_pk: signing.public_key().as_ref().to_vec(),
            kem_ek,
            x25519: xpub
                .as_ref()
                .try_into()
                .map_err(|_| IdentityError::Crypto("X25519 public key length"))?,
        };
        Ok(Self {
            signing,
            kem_dk,
            x25519,
            public,
        })
    }

    /// The public half.
    #[must_use]
    pub fn public(&self) -> &IdentityPublic {
        &self.public
    }

    /// Node ID = SHA-256(ML-DSA public key).
    #[must_use]
    pub fn node_id(&self) -> [u8; NODE_ID_LEN] {
        self.public.node_id()
    }

    /// Signs `msg` with ML-DSA-87 (empty context string).
    ///
    /// # Errors
    /// [`IdentityError::Crypto`] if signing fails.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
        sign_with(&self.signing, msg)
    }

    pub(crate) fn kem_dk(&self) -> &DecapsulationKey {
        &self.kem_dk
    }

    pub(crate) fn x25519(&self) -> &agreement::PrivateKey {
        &self.x25519
    }

    /// Secret binary form: `version | pkcs8_len u16 | ML-DSA PKCS#8 v1 (seed) | KEM dk | KEM ek |
    /// X25519 private`. Zeroized on drop.
    ///
    /// # Errors
    /// [`IdentityError::Crypto`] if a key cannot be exported.
    pub fn to_secret_bytes(&self) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
        let pkcs8 = self
            .signing
            .to_pkcs8v1()
            .map_err(|_| IdentityError::Crypto("ML-DSA-87 PKCS#8 export"))?;
        let dk = self
            .kem_dk
            .key_bytes()
            .map_err(|_| IdentityError::Crypto("ML-KEM-1024 secret export"))?;
        let x: Curve25519SeedBin<'static> = self
            .x25519
            .as_be_bytes()
            .map_err(|_| IdentityError::Crypto("X25519 secret export"))?;
        let len = u16::try_from(pkcs8.as_ref().len())
            .map_err(|_| IdentityError::Crypto("PKCS#8 length"))?;
        let mut out = Zeroizing::new(Vec::with_capacity(8000));
        out.push(FILE_VERSION);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(pkcs8.as_ref());
        out.extend_from_slice(dk.as_ref());
        out.extend_from_slice(&self.public.kem_ek);
        out.extend_from_slice(x.as_ref());
        Ok(out)
    }

    /// Parses [`Self::to_secret_bytes`] output.
    ///
    /// # Errors
    /// [`IdentityError::Malformed`] or [`IdentityError::Crypto`] on a bad key.
    pub fn from_secret_bytes(b: &[u8]) -> Result<Self, IdentityError> {
        let mut r = Reader(b);
        if r.u8() != Some(FILE_VERSION) {
            return Err(IdentityError::Malformed("secret key file version 1"));
        }
        let short = || IdentityError::Malformed("complete secret key (file truncated)");
        let len = usize::from(r.u16().ok_or_else(short)?);
        if len > MAX_PKCS8 {
            return Err(IdentityError::Malformed("PKCS#8 length under 8192"));
        }
        let pkcs8 = r.take(len).ok_or_else(short)?;
        let dk = r.take(MLKEM_DK_LEN).ok_or_else(short)?;
        let ek = r.take(MLKEM_EK_LEN).ok_or_else(short)?;
        let x = r.take(X25519_LEN).ok_or_else(short)?;
        if !r.is_empty() {
            return Err(IdentityError::Malformed("no bytes after the X25519 key"));
        }
        let signing = PqdsaKeyPair::from_pkcs8(&ML_DSA_87_SIGNING, pkcs8)
            .map_err(|_| IdentityError::Malformed("an ML-DSA-87 PKCS#8 key"))?;
        check_kem_pair(dk, ek)?;
        let kem_dk = DecapsulationKey::new(&ML_KEM_1024, dk)
            .map_err(|_| IdentityError::Malformed("an ML-KEM-1024 decapsulation key"))?;
        // FIPS 203's modulus check on the stored ek.
        EncapsulationKey::new(&ML_KEM_1024, ek)
            .map_err(|_| IdentityError::Malformed("an ML-KEM-1024 encapsulation key"))?;
        let x25519 = agreement::PrivateKey::from_private_key(&X25519, x)
            .map_err(|_| IdentityError::Malformed("an X25519 private key"))?;
        Self::assemble(signing, kem_dk, Some(ek.to_vec()), x25519)
    }

    /// Writes the armoured secret key to `path` with mode 0600, atomically.
    ///
    /// # Errors
    /// Export or I/O errors.
    pub fn save_secret(&self, path: &Path) -> Result<(), IdentityError> {
        let text = armor::armor(SECRET_LABEL, &self.to_secret_bytes()?);
        write_secret_file(path, &text)
    }

    /// Reads an armoured secret key, refusing a file readable by group or others.
    ///
    /// # Errors
    /// [`IdentityError::Permissions`] naming the `chmod` fix, I/O, armour or shape errors.
    pub fn load_secret(path: &Path) -> Result<Self, IdentityError> {
        let text = read_secret_file(path)?;
        Self::from_secret_bytes(&armor::dearmor(SECRET_LABEL, &text)?)
    }

    /// Writes the armoured public key (`NODE PUBLIC KEY`) to `path`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save_public(&self, path: &Path) -> Result<(), IdentityError> {
        fs::write(path, self.public.to_armor()).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads an armoured public key file.
    ///
    /// # Errors
    /// I/O, armour or shape errors.
    pub fn load_public(path: &Path) -> Result<IdentityPublic, IdentityError> {
        IdentityPublic::from_armor(&read_public_file(path)?)
    }
}

/// Length of the K-PKE secret key at the start of an ML-KEM-1024 dk (384 · k, k = 4).
const MLKEM_DK_PKE_LEN: usize = 1536;

/// Checks that `ek` is the encapsulation key inside `dk`.
///
/// aws-lc-rs cannot derive the ek from a raw dk, but a FIPS 203 ML-KEM-1024 dk embeds it:
/// `dk = dk_pke (1536) || ek (1568) || H(ek) = SHA3-256(ek) (32) || z (32)`. A stored ek that
/// differs would be published in the certificate while decapsulation used another key (every
/// handshake to this node would fail), and a dk whose H(ek) slice does not match its ek
/// would derive wrong shared secrets.
fn check_kem_pair(dk: &[u8], ek: &[u8]) -> Result<(), IdentityError> {
    const EK_END: usize = MLKEM_DK_PKE_LEN + MLKEM_EK_LEN;
    const H_END: usize = EK_END + 32;
    let inner = dk
        .get(MLKEM_DK_PKE_LEN..EK_END)
        .ok_or(IdentityError::Malformed("an ML-KEM-1024 decapsulation key"))?;
    let hash = dk
        .get(EK_END..H_END)
        .ok_or(IdentityError::Malformed("an ML-KEM-1024 decapsulation key"))?;
    if inner != ek {
        return Err(IdentityError::KemKeyMismatch(
            "the stored encapsulation key differs from the one inside the decapsulation key",
        ));
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA3_256, inner);
    if digest.as_ref() != hash {
        return Err(IdentityError::KemKeyMismatch(
            "the decapsulation key's H(ek) is not SHA3-256 of its encapsulation key",
        ));
    }
    Ok(())
}

pub(crate) fn sign_with(kp: &PqdsaKeyPair, msg: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let mut sig = vec![0u8; MLDSA_SIG_LEN];
    let n = kp
        .sign(msg, &mut sig)
        .map_err(|_| IdentityError::Crypto("ML-DSA-87 signing"))?;
    sig.truncate(n);
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shadowmesh-id-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn secret_round_trip_and_mode() {
        let d = tmpdir("rt");
        let p = d.join("node.key");
        let id = Identity::generate().unwrap();
        id.save_secret(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = Identity::load_secret(&p).unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(back.node_id(), id.node_id());
        // The reloaded keys still work: a signature by the copy verifies under the original.
        let sig = back.sign(b"m").unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ML_DSA_87,
            &id.public().sign_pk,
        )
        .verify(b"m", &sig)
        .unwrap();
        // Seed form: the PKCS#8 document is small (seed, not the 4896-byte expanded key).
        let bytes = id.to_secret_bytes().unwrap();
        let pk_len = usize::from(u16::from_le_bytes([bytes[1], bytes[2]]));
        assert!(
            pk_len < 100,
            "PKCS#8 v1 seed form expected, got {pk_len} bytes"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_group_readable_secret() {
        let d = tmpdir("perm");
        let p = d.join("node.key");
        Identity::generate().unwrap().save_secret(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        let err = Identity::load_secret(&p).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::Permissions { mode: 0o640, .. }
        ));
        assert!(err.to_string().contains("chmod 600"));
        fs::remove_dir_all(&d).unwrap();
    }

    /// Offset of the stored ek in [`Identity::to_secret_bytes`] output, and of the dk.
    fn kem_offsets(sb: &[u8]) -> (usize, usize) {
        let pk_len = usize::from(u16::from_le_bytes([sb[1], sb[2]]));
        let dk_at = 3 + pk_len;
        (dk_at, dk_at + MLKEM_DK_LEN)
    }

    #[test]
    fn key_file_with_a_swapped_kem_public_key_is_refused() {
        let d = tmpdir("ek");
        let p = d.join("node.key");
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let mut sb = a.to_secret_bytes().unwrap();
        let (dk_at, ek_at) = kem_offsets(&sb);
        // The layout this check relies on: aws-lc's dk embeds its ek at [1536..3104].
        assert_eq!(
            &sb[dk_at + MLKEM_DK_PKE_LEN..dk_at + MLKEM_DK_PKE_LEN + MLKEM_EK_LEN],
            &a.public().kem_ek[..]
        );
        // 1. Swap only the stored ek for another node's (valid, parseable) one.
        sb[ek_at..ek_at + MLKEM_EK_LEN].copy_from_slice(&b.public().kem_ek);
        write_secret_file(&p, &armor::armor(SECRET_LABEL, &sb)).unwrap();
        let err = Identity::load_secret(&p).unwrap_err();
        assert!(
            matches!(err, IdentityError::KemKeyMismatch(m) if m.contains("differs")),
            "{err}"
        );
        assert!(err.to_string().contains("tampered"), "{err}");
        // 2. Swap it inside the dk too: the dk's H(ek) no longer matches.
        let inner = dk_at + MLKEM_DK_PKE_LEN;
        sb[inner..inner + MLKEM_EK_LEN].copy_from_slice(&b.public().kem_ek);
        write_secret_file(&p, &armor::armor(SECRET_LABEL, &sb)).unwrap();
        let err = Identity::load_secret(&p).unwrap_err();
        assert!(
            matches!(err, IdentityError::KemKeyMismatch(m) if m.contains("H(ek)")),
            "{err}"
        );
        // The untouched file still loads.
        a.save_secret(&p).unwrap();
        assert_eq!(Identity::load_secret(&p).unwrap().public(), a.public());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn key_file_is_checked_on_the_open_descriptor() {
        let d = tmpdir("fd");
        let p = d.join("node.key");
        Identity::generate().unwrap().save_secret(&p).unwrap();
        // 0644 on the file the path names: refused with the chmod fix.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&p).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::Permissions { mode: 0o644, .. }
        ));
        assert!(err
            .to_string()
            .contains(&format!("chmod 600 {}", p.display())));
        // A symlink to it is judged by the file it opens, not by the link's own mode.
        let link = d.join("link.key");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(matches!(
            read_secret_file(&link),
            Err(IdentityError::Permissions { mode: 0o644, .. })
        ));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secret_file(&link).is_ok());
        // Not a regular file: a directory, a device.
        assert!(matches!(
            read_secret_file(&d),
            Err(IdentityError::NotAFile { .. })
        ));
        assert!(matches!(
            read_secret_file(Path::new("/dev/zero")),
            Err(IdentityError::NotAFile { .. })
        ));
        // The mode judged is the open file's: a 0644 file opened, then the path replaced by
        // a 0600 one (what a check by path before the open would have seen), is refused.
        let wide = d.join("wide.key");
        fs::write(&wide, "x").unwrap();
        fs::set_permissions(&wide, fs::Permissions::from_mode(0o644)).unwrap();
        let opened = fs::File::open(&wide).unwrap();
        fs::rename(&p, &wide).unwrap();
        assert_eq!(
            fs::metadata(&wide).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            read_secret_from(opened, &wide),
            Err(IdentityError::Permissions { mode: 0o644, .. })
        ));
        // Larger than any key file: refused, not read whole.
        let big = d.join("big.key");
        write_secret_file(&big, &"A".repeat(MAX_SECRET_FILE + 1)).unwrap();
        assert!(matches!(
            read_secret_file(&big),
            Err(IdentityError::Malformed(_))
        ));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn public_round_trip_and_truncation() {
        let id = Identity::generate().unwrap();
        let text = id.public().to_armor();
        assert_eq!(&IdentityPublic::from_armor(&text).unwrap(), id.public());
        let b = id.public().to_bytes();
        for cut in [0, 1, 100, b.len() - 1] {
            assert!(IdentityPublic::from_bytes(&b[..cut]).is_err());
        }
        let sb = id.to_secret_bytes().unwrap();
        for cut in [0, 1, 3, 60, sb.len() - 1] {
            assert!(Identity::from_secret_bytes(&sb[..cut]).is_err());
        }
    }
}
