//! The network CA and node certificates: a deterministic, versioned, bounded binary encoding,
//! signed with ML-DSA-87 by the CA, and the checks a peer runs before trusting one.
//!
//! Owns the certificate format and trust decisions (signature, validity window, node ID
//! binding, allowed prefixes). It must never accept a certificate it has not verified against a
//! CA public key, and the parser must never panic: every field is length-prefixed with a hard cap.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use aws_lc_rs::signature::{
    KeyPair, PqdsaKeyPair, UnparsedPublicKey, ML_DSA_87, ML_DSA_87_SIGNING,
};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::armor::{self, ArmorError};
use crate::handshake::kdf::sha256;
use crate::identity::{
    read_public_file, read_secret_file, sign_with, write_secret_file, IdentityError,
    IdentityPublic, Reader, MLDSA_PK_LEN, MLDSA_SIG_LEN, MLKEM_EK_LEN, NODE_ID_LEN,
};
use crate::intern::Interner;

/// Certificate format version.
pub const CERT_VERSION: u8 = 1;
/// Longest node or CA name, in bytes.
pub const MAX_NAME: usize = 64;
/// Most overlay addresses per family.
pub const MAX_ADDRS: usize = 8;
/// Most routed subnets.
pub const MAX_SUBNETS: usize = 64;
/// Most groups.
pub const MAX_GROUPS: usize = 16;
/// Longest group name, in bytes.
pub const MAX_GROUP_LEN: usize = 32;
/// Upper bound on an encoded certificate.
pub const MAX_CERT_LEN: usize = 16 * 1024;

/// Domain separation: a CA signature over a certificate can never be read as another message.
const SIGN_CONTEXT: &[u8] = b"shadowmesh node certificate v1\0";
const CERT_LABEL: &str = "NODE CERT";
const CA_KEY_LABEL: &str = "CA KEY";
const CA_PUB_LABEL: &str = "CA PUBLIC KEY";

/// Why a certificate was refused or could not be made.
#[derive(Debug, Error)]
pub enum CertError {
    /// The bytes do not follow the encoding (field named).
    #[error("malformed certificate: expected {0}")]
    Malformed(&'static str),
    /// A request or certificate field is over its cap.
    #[error("certificate field {0} over its limit")]
    TooLarge(&'static str),
    /// Issued by a different CA.
    #[error("certificate issued by another CA")]
    WrongIssuer,
    /// The CA signature did not verify.
    #[error("CA signature does not verify")]
    BadSignature,
    /// `now` is before `not_before`.
    #[error("certificate not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Start of validity (unix seconds).
        not_before: u64,
        /// The time passed in.
        now: u64,
    },
    /// `now` is after `not_after`.
    #[error("certificate expired at {not_after} (now {now})")]
    Expired {
        /// End of validity (unix seconds).
        not_after: u64,
        /// The time passed in.
        now: u64,
    },
    /// The node ID is not SHA-256 of the signing key.
    #[error("node ID does not match SHA-256 of the signing key")]
    NodeIdMismatch,
    /// Signing failed.
    #[error("CA signing failed")]
    Signing,
    /// A file or armour problem.
    #[error(transparent)]
    File(#[from] IdentityError),
}

impl From<ArmorError> for CertError {
    fn from(e: ArmorError) -> Self {
        Self::File(IdentityError::Armor(e))
    }
}

/// An IP prefix (address + length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prefix {
    /// IPv4 prefix.
    V4(Ipv4Addr, u8),
    /// IPv6 prefix.
    V6(Ipv6Addr, u8),
}

impl Prefix {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::V4(a, l) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
                out.push(*l);
            }
            Self::V6(a, l) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
                out.push(*l);
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, CertError> {
        let bad = || CertError::Malformed("prefix: family 4/6, address, length ≤ 32/128");
        let p = match r.u8() {
            Some(4) => Self::V4(
                Ipv4Addr::from(r.array::<4>().ok_or_else(bad)?),
                r.u8().ok_or_else(bad)?,
            ),
            Some(6) => Self::V6(
                Ipv6Addr::from(r.array::<16>().ok_or_else(bad)?),
                r.u8().ok_or_else(bad)?,
            ),
            _ => return Err(bad()),
        };
        if p.valid() {
            Ok(p)
        } else {
            Err(bad())
        }
    }

    fn valid(&self) -> bool {
        match self {
            Self::V4(_, l) => *l <= 32,
            Self::V6(_, l) => *l <= 128,
        }
    }
}

/// What a node asks the CA to certify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertRequest {
    /// The node's public keys.
    pub public: IdentityPublic,
    /// Human-readable name (≤ 64 bytes UTF-8).
    pub name: String,
    /// Overlay IPv4 addresses with their prefix length (≤ 8).
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    /// Overlay IPv6 addresses with their prefix length (≤ 8).
    pub ipv6: Vec<(Ipv6Addr, u8)>,
    /// Subnets routed through this node (≤ 64).
    pub subnets: Vec<Prefix>,
    /// Group names (≤ 16, each ≤ 32 bytes).
    pub groups: Vec<String>,
    /// Start of validity, unix seconds.
    pub not_before: u64,
    /// End of validity, unix seconds.
    pub not_after: u64,
}

/// A CA-signed node certificate. Construct by [`Ca::sign`] or [`NodeCert::from_bytes`]; trust
/// only after [`NodeCert::verify`].
///
/// Immutable and shared: a clone is a reference count, and every certificate parsed or signed
/// in this process with the same bytes is the same allocation (see [`CertData`]). A
/// post-quantum certificate is ~9 KB (twice that parsed), and a node holds the same one in
/// its routing cache, its record store (once per key) and its sessions; the simulator holds
/// each of its thousands of nodes' certificates in every node that met it.
#[derive(Clone)]
pub struct NodeCert(Arc<CertData>);

/// The contents of a [`NodeCert`] (reached through `Deref`: `cert.body.name`).
pub struct CertData {
    /// The certified contents.
    pub body: NodeCertRequest,
    /// SHA-256 of the issuing CA's public key.
    pub issuer: [u8; 32],
    /// ML-DSA-87 signature by the CA over the context string and the body encoding.
    pub signature: Vec<u8>,
    encoded: Vec<u8>,
    hash: [u8; 32],
    /// The id of the CA whose signature over these exact bytes verified. The check is a pure
    /// function of the bytes and the CA key, so it is done once per process; the validity
    /// window is checked on every [`NodeCert::verify`].
    verified_by: OnceLock<[u8; 32]>,
}

impl std::ops::Deref for NodeCert {
    type Target = CertData;
    fn deref(&self) -> &CertData {
        &self.0
    }
}

impl PartialEq for NodeCert {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.encoded == other.encoded
    }
}
impl Eq for NodeCert {}

impl std::fmt::Debug for NodeCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCert")
            .field("body", &self.body)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The process's certificates by SHA-256 of their encoding.
static CERTS: Interner<CertData> = Interner::new();

impl NodeCert {
    fn lookup(hash: &[u8; 32], bytes: &[u8]) -> Option<Self> {
        CERTS.get(hash, |live| live.encoded == bytes).map(Self)
    }

    fn intern(data: CertData) -> Self {
        Self(CERTS.intern(data.hash, data, |a, b| a.encoded == b.encoded))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Callers checked the caps, so the length fits a byte.
    out.push(u8::try_from(s.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(s.as_bytes());
}

fn get_str(r: &mut Reader<'_>, cap: usize, what: &'static str) -> Result<String, CertError> {
    let n = usize::from(r.u8().ok_or(CertError::Malformed(what))?);
    if n > cap {
        return Err(CertError::TooLarge(what));
    }
    let b = r.take(n).ok_or(CertError::Malformed(what))?;
    String::from_utf8(b.to_vec()).map_err(|_| CertError::Malformed(what))
}

fn count(r: &mut Reader<'_>, cap: usize, what: &'static str) -> Result<usize, CertError> {
    let n = usize::from(r.u8().ok_or(CertError::Malformed(what))?);
    if n > cap {
        return Err(CertError::TooLarge(what));
    }
    Ok(n)
}

impl NodeCertRequest {
    fn check_caps(&self) -> Result<(), CertError> {
        let caps = [
            (self.name.len() > MAX_NAME, "name"),
            (self.ipv4.len() > MAX_ADDRS, "ipv4"),
            (self.ipv6.len() > MAX_ADDRS, "ipv6"),
            (self.subnets.len() > MAX_SUBNETS, "subnets"),
            (self.groups.len() > MAX_GROUPS, "groups"),
            (
                self.groups.iter().any(|g| g.len() > MAX_GROUP_LEN),
                "group name",
            ),
            (self.ipv4.iter().any(|(_, l)| *l > 32), "ipv4 prefix length"),
            (
                self.ipv6.iter().any(|(_, l)| *l > 128),
                "ipv6 prefix length",
            ),
            (
                self.subnets.iter().any(|p| !p.valid()),
                "subnet prefix length",
            ),
            (
                self.public.sign_pk.len() != MLDSA_PK_LEN,
                "signing key length",
            ),
            (self.public.kem_ek.len() != MLKEM_EK_LEN, "KEM key length"),
        ];
        match caps.into_iter().find(|(over, _)| *over) {
            Some((_, what)) => Err(CertError::TooLarge(what)),
            None => Ok(()),
        }
    }

    /// The to-be-signed encoding (all integers little-endian):
    /// `version u8 | node_id [32] | name (len u8) | sign_pk [2592] | kem_ek [1568] | x25519 [32]
    /// | n4 u8 × (addr [4], len u8) | n6 u8 × (addr [16], len u8) | nsub u8 × prefix
    /// | ngroups u8 × (len u8, bytes) | not_before u64 | not_after u64 | issuer [32]`.
    fn encode_tbs(&self, issuer: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4400);
        out.push(CERT_VERSION);
        out.extend_from_slice(&self.public.node_id());
        put_str(&mut out, &self.name);
        out.extend_from_slice(&self.public.sign_pk);
        out.extend_from_slice(&self.public.kem_ek);
        out.extend_from_slice(&self.public.x25519);
        out.push(u8::try_from(self.ipv4.len()).unwrap_or(u8::MAX));
        for (a, l) in &self.ipv4 {
            out.extend_from_slice(&a.octets());
            out.push(*l);
        }
        out.push(u8::try_from(self.ipv6.len()).unwrap_or(u8::MAX));
        for (a, l) in &self.ipv6 {
            out.extend_from_slice(&a.octets());
            out.push(*l);
        }
        out.push(u8::try_from(self.subnets.len()).unwrap_or(u8::MAX));
        for p in &self.subnets {
            p.encode(&mut out);
        }
        out.push(u8::try_from(self.groups.len()).unwrap_or(u8::MAX));
        for g in &self.groups {
            put_str(&mut out, g);
        }
        out.extend_from_slice(&self.not_before.to_le_bytes());
        out.extend_from_slice(&self.not_after.to_le_bytes());
        out.extend_from_slice(issuer);
        out
    }
}

impl NodeCert {
    /// The full encoding: to-be-signed bytes, then `sig_len u16 | signature`.
    #[must_use]
    pub fn to_bytes(&self) -> &[u8] {
        &self.encoded
    }

    /// SHA-256 of [`Self::to_bytes`]: what a peer sends instead of the certificate when the
    /// other side has it cached.
    #[must_use]
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The certified node ID (SHA-256 of the signing key; checked by [`Self::verify`]).
    #[must_use]
    pub fn node_id(&self) -> [u8; NODE_ID_LEN] {
        self.body.public.node_id()
    }

    /// Parses a certificate (no trust implied).
    ///
    /// # Errors
    /// [`CertError::Malformed`] / [`CertError::TooLarge`] naming the field, or
    /// [`CertError::NodeIdMismatch`] when the stored node ID is not SHA-256 of the signing key.
    pub fn from_bytes(b: &[u8]) -> Result<Self, CertError> {
        if b.len() > MAX_CERT_LEN {
            return Err(CertError::TooLarge("certificate"));
        }
        let hash = sha256(&[b]);
        if let Some(known) = Self::lookup(&hash, b) {
            return Ok(known);
        }
        let mut r = Reader(b);
        if r.u8() != Some(CERT_VERSION) {
            return Err(CertError::Malformed("version 1"));
        }
        let m = CertError::Malformed;
        let node_id: [u8; 32] = r.array().ok_or(m("node ID"))?;
        let name = get_str(&mut r, MAX_NAME, "name")?;
        let sign_pk = r.take(MLDSA_PK_LEN).ok_or(m("signing key"))?.to_vec();
        let kem_ek = r.take(MLKEM_EK_LEN).ok_or(m("KEM key"))?.to_vec();
        let x25519 = r.array().ok_or(m("X25519 key"))?;
        let mut ipv4 = Vec::new();
        for _ in 0..count(&mut r, MAX_ADDRS, "ipv4")? {
            let a = r.array::<4>().ok_or(m("ipv4 address"))?;
            let l = r.u8().filter(|l| *l <= 32).ok_or(m("ipv4 prefix ≤ 32"))?;
            ipv4.push((Ipv4Addr::from(a), l));
        }
        let mut ipv6 = Vec::new();
        for _ in 0..count(&mut r, MAX_ADDRS, "ipv6")? {
            let a = r.array::<16>().ok_or(m("ipv6 address"))?;
            let l = r.u8().filter(|l| *l <= 128).ok_or(m("ipv6 prefix ≤ 128"))?;
            ipv6.push((Ipv6Addr::from(a), l));
        }
        let mut subnets = Vec::new();
        for _ in 0..count(&mut r, MAX_SUBNETS, "subnets")? {
            subnets.push(Prefix::decode(&mut r)?);
        }
        let mut groups = Vec::new();
        for _ in 0..count(&mut r, MAX_GROUPS, "groups")? {
            groups.push(get_str(&mut r, MAX_GROUP_LEN, "group name")?);
        }
        let not_before = r.u64().ok_or(m("not_before"))?;
        let not_after = r.u64().ok_or(m("not_after"))?;
        let issuer = r.array().ok_or(m("issuer"))?;
        let sig_len = usize::from(r.u16().ok_or(m("signature length"))?);
        if sig_len != MLDSA_SIG_LEN {
            return Err(m("ML-DSA-87 signature of 4627 bytes"));
        }
        let signature = r.take(sig_len).ok_or(m("signature"))?.to_vec();
        if !r.is_empty() {
            return Err(m("end of certificate after the signature"));
        }
        let public = IdentityPublic {
            sign_pk,
            kem_ek,
            x25519,
        };
        if public.node_id() != node_id {
            return Err(CertError::NodeIdMismatch);
        }
        Ok(Self::intern(CertData {
            body: NodeCertRequest {
                public,
                name,
                ipv4,
                ipv6,
                subnets,
                groups,
                not_before,
                not_after,
            },
            issuer,
            signature,
            encoded: b.to_vec(),
            hash,
            verified_by: OnceLock::new(),
        }))
    }

    /// Checks the CA signature, the issuer, the validity window at `now` (unix seconds) and
    /// that the node ID is SHA-256 of the signing key.
    ///
    /// # Errors
    /// The first failed check.
    pub fn verify(&self, ca: &CaPublic, now: u64) -> Result<(), CertError> {
        let ca_id = ca.id();
        if self.issuer != ca_id {
            return Err(CertError::WrongIssuer);
        }
        if self.verified_by.get() == Some(&ca_id) {
            return self.check_validity(now);
        }
        let tbs = self.body.encode_tbs(&self.issuer);
        // The stored encoding must be exactly what was signed (no malleable re-encodings).
        if !self.encoded.starts_with(&tbs) {
            return Err(CertError::Malformed("canonical encoding"));
        }
        UnparsedPublicKey::new(&ML_DSA_87, &ca.sign_pk)
            .verify(&[SIGN_CONTEXT, &tbs].concat(), &self.signature)
            .map_err(|_| CertError::BadSignature)?;
        // The node ID as signed (bytes 1..33 of the encoding) must be SHA-256 of the signing key.
        if self.encoded.get(1..1 + NODE_ID_LEN) != Some(&self.body.public.node_id()[..]) {
            return Err(CertError::NodeIdMismatch);
        }
        // Only a full success is remembered; the issuer is fixed, so no other CA can race in.
        let _ = self.verified_by.set(ca_id);
        self.check_validity(now)
    }

    /// Checks only the validity window at `now`: for a certificate whose signature was already
    /// verified (e.g. one held in a verified cache), this skips the ~70 µs ML-DSA verification.
    ///
    /// # Errors
    /// [`CertError::NotYetValid`] / [`CertError::Expired`].
    pub fn check_validity(&self, now: u64) -> Result<(), CertError> {
        if now < self.body.not_before {
            return Err(CertError::NotYetValid {
                not_before: self.body.not_before,
                now,
            });
        }
        if now > self.body.not_after {
            return Err(CertError::Expired {
                not_after: self.body.not_after,
                now,
            });
        }
        Ok(())
    }

    /// The prefixes this peer may source traffic from: its overlay addresses (as host routes
    /// /32 and /128) and its routed subnets.
    #[must_use]
    pub fn allowed_prefixes(&self) -> Vec<Prefix> {
        let b = &self.body;
        b.ipv4
            .iter()
            .map(|(a, _)| Prefix::V4(*a, 32))
            .chain(b.ipv6.iter().map(|(a, _)| Prefix::V6(*a, 128)))
            .chain(b.subnets.iter().copied())
            .collect()
    }

    /// Armoured text (`NODE CERT`).
    #[must_use]
    pub fn to_armor(&self) -> String {
        armor::armor(CERT_LABEL, &self.encoded).to_string()
    }

    /// Parses armoured text (no trust implied).
    ///
    /// # Errors
    /// Armour or encoding errors.
    pub fn from_armor(text: &str) -> Result<Self, CertError> {
        Self::from_bytes(&armor::dearmor(CERT_LABEL, text)?)
    }

    /// Reads an armoured certificate file (no trust implied: call [`Self::verify`]).
    ///
    /// # Errors
    /// I/O, armour or encoding errors.
    pub fn load(path: &Path) -> Result<Self, CertError> {
        Self::from_armor(&read_public_file(path)?)
    }

    /// Writes the armoured certificate (public data, default permissions).
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> Result<(), CertError> {
        write_public_file(path, &self.to_armor())
    }
}

fn write_public_file(path: &Path, text: &str) -> Result<(), CertError> {
    std::fs::write(path, text).map_err(|source| {
        CertError::File(IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// The CA's public key: what every node is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPublic {
    /// CA name (≤ 64 bytes).
    pub name: String,
    /// ML-DSA-87 public key.
    pub sign_pk: Vec<u8>,
}

impl CaPublic {
    /// CA ID = SHA-256(public key); certificates name their issuer by it.
    #[must_use]
    pub fn id(&self) -> [u8; 32] {
        sha256(&[&self.sign_pk])
    }

    /// `version | name (len u8) | sign_pk`.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![CERT_VERSION];
        put_str(&mut out, &self.name);
        out.extend_from_slice(&self.sign_pk);
        out
    }

    /// Parses [`Self::to_bytes`] output.
    ///
    /// # Errors
    /// [`CertError::Malformed`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, CertError> {
        let mut r = Reader(b);
        if r.u8() != Some(CERT_VERSION) {
            return Err(CertError::Malformed("CA public key version 1"));
        }
        let name = get_str(&mut r, MAX_NAME, "CA name")?;
        let sign_pk = r
            .take(MLDSA_PK_LEN)
            .ok_or(CertError::Malformed("CA key"))?
            .to_vec();
        if !r.is_empty() {
            return Err(CertError::Malformed("end after the CA key"));
        }
        Ok(Self { name, sign_pk })
    }

    /// Armoured text (`CA PUBLIC KEY`).
    #[must_use]
    pub fn to_armor(&self) -> String {
        armor::armor(CA_PUB_LABEL, &self.to_bytes()).to_string()
    }

    /// Parses armoured text.
    ///
    /// # Errors
    /// Armour or encoding errors.
    pub fn from_armor(text: &str) -> Result<Self, CertError> {
        Self::from_bytes(&armor::dearmor(CA_PUB_LABEL, text)?)
    }

    /// Reads an armoured CA public key file.
    ///
    /// # Errors
    /// I/O, armour or encoding errors.
    pub fn load(path: &Path) -> Result<Self, CertError> {
        Self::from_armor(&read_public_file(path)?)
    }

    /// Writes the armoured CA public key.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> Result<(), CertError> {
        write_public_file(path, &self.to_armor())
    }
}

/// A network CA: an ML-DSA-87 key that signs node certificates.
pub struct Ca {
    name: String,
    key: PqdsaKeyPair,
    public: CaPublic,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ca({})", self.name)
    }
}

impl Ca {
    /// Generates a new CA key.
    ///
    /// # Errors
    /// [`CertError::TooLarge`] for a name over 64 bytes, [`CertError::Signing`] on key failure.
    pub fn generate(name: &str) -> Result<Self, CertError> {
        if name.len() > MAX_NAME {
            return Err(CertError::TooLarge("CA name"));
        }
        let key = PqdsaKeyPair::generate(&ML_DSA_87_SIGNING).map_err(|_| CertError::Signing)?;
        Ok(Self::from_key(name.to_owned(), key))
    }

    fn from_key(name: String, key: PqdsaKeyPair) -> Self {
        let public = CaPublic {
            name: name.clone(),
            sign_pk: key.public_key().as_ref().to_vec(),
        };
        Self { name, key, public }
    }

    /// The CA's public part.
    #[must_use]
    pub fn public(&self) -> &CaPublic {
        &self.public
    }

    /// Signs a certificate request.
    ///
    /// # Errors
    /// [`CertError::TooLarge`] when a field is over its cap, [`CertError::Malformed`] when
    /// `not_after < not_before`, [`CertError::Signing`] on failure.
    pub fn sign(&self, req: NodeCertRequest) -> Result<NodeCert, CertError> {
        req.check_caps()?;
        if req.not_after < req.not_before {
            return Err(CertError::Malformed("not_after ≥ not_before"));
        }
        let issuer = self.public.id();
        let tbs = req.encode_tbs(&issuer);
        let signature =
            sign_with(&self.key, &[SIGN_CONTEXT, &tbs].concat()).map_err(|_| CertError::Signing)?;
        let sig_len = u16::try_from(signature.len()).map_err(|_| CertError::Signing)?;
        let mut encoded = tbs;
        encoded.extend_from_slice(&sig_len.to_le_bytes());
        encoded.extend_from_slice(&signature);
        let hash = sha256(&[&encoded]);
        Ok(NodeCert::intern(CertData {
            body: req,
            issuer,
            signature,
            encoded,
            hash,
            verified_by: OnceLock::new(),
        }))
    }

    /// Writes the CA secret (`version | name | ML-DSA PKCS#8 v1 seed form`) 0600, atomically.
    ///
    /// # Errors
    /// Export or I/O errors.
    pub fn save_secret(&self, path: &Path) -> Result<(), CertError> {
        let pkcs8 = self.key.to_pkcs8v1().map_err(|_| CertError::Signing)?;
        let mut bytes = Zeroizing::new(vec![CERT_VERSION]);
        put_str(&mut bytes, &self.name);
        bytes.extend_from_slice(pkcs8.as_ref());
        write_secret_file(path, &armor::armor(CA_KEY_LABEL, &bytes))?;
        Ok(())
    }

    /// Reads a CA secret file, refusing one readable by group or others.
    ///
    /// # Errors
    /// Permission, I/O, armour or key errors.
    pub fn load_secret(path: &Path) -> Result<Self, CertError> {
        let text = read_secret_file(path)?;
        let bytes = armor::dearmor(CA_KEY_LABEL, &text)?;
        let mut r = Reader(&bytes);
        if r.u8() != Some(CERT_VERSION) {
            return Err(CertError::Malformed("CA key version 1"));
        }
        let name = get_str(&mut r, MAX_NAME, "CA name")?;
        let key = PqdsaKeyPair::from_pkcs8(&ML_DSA_87_SIGNING, r.0)
            .map_err(|_| CertError::Malformed("an ML-DSA-87 PKCS#8 key"))?;
        Ok(Self::from_key(name, key))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::Identity;

    pub(crate) fn request(id: &Identity, name: &str, nb: u64, na: u64) -> NodeCertRequest {
        NodeCertRequest {
            public: id.public().clone(),
            name: name.into(),
            ipv4: vec![(Ipv4Addr::new(100, 64, 0, 1), 10)],
            ipv6: vec![("fd00::1".parse().unwrap(), 64)],
            subnets: vec![Prefix::V4(Ipv4Addr::new(100, 65, 0, 0), 16)],
            groups: vec!["gw".into()],
            not_before: nb,
            not_after: na,
        }
    }

    #[test]
    fn sign_verify_and_windows() {
        let ca = Ca::generate("test-ca").unwrap();
        let other = Ca::generate("other").unwrap();
        let id = Identity::generate().unwrap();
        let cert = ca.sign(request(&id, "n1", 1000, 2000)).unwrap();
        cert.verify(ca.public(), 1500).unwrap();
        assert!(matches!(
            cert.verify(other.public(), 1500),
            Err(CertError::WrongIssuer)
        ));
        // Same issuer ID but a different key cannot happen; a forged issuer field fails the sig.
        let mut bytes = cert.to_bytes().to_vec();
        let at = bytes.len() - 2 - MLDSA_SIG_LEN - 32;
        bytes[at..at + 32].copy_from_slice(&other.public().id());
        let forged = NodeCert::from_bytes(&bytes).unwrap();
        assert_eq!(forged.issuer, other.public().id());
        assert!(forged.verify(other.public(), 1500).is_err());
        // A success is remembered per CA, and dates are still checked on every call.
        assert_eq!(cert.verified_by.get(), Some(&ca.public().id()));
        assert!(forged.verified_by.get().is_none());
        assert!(matches!(
            cert.verify(ca.public(), 999),
            Err(CertError::NotYetValid {
                not_before: 1000,
                now: 999
            })
        ));
        assert!(matches!(
            cert.verify(ca.public(), 2001),
            Err(CertError::Expired {
                not_after: 2000,
                now: 2001
            })
        ));
        let back = NodeCert::from_bytes(cert.to_bytes()).unwrap();
        assert_eq!(back, cert);
        assert_eq!(NodeCert::from_armor(&cert.to_armor()).unwrap(), cert);
        assert_eq!(back.node_id(), id.node_id());
        assert_eq!(cert.allowed_prefixes().len(), 3);
        assert!(cert
            .allowed_prefixes()
            .contains(&Prefix::V4(Ipv4Addr::new(100, 64, 0, 1), 32)));
    }

    #[test]
    fn equal_certificates_share_one_allocation() {
        let ca = Ca::generate("ca").unwrap();
        let id = Identity::generate().unwrap();
        let cert = ca.sign(request(&id, "n", 0, u64::MAX)).unwrap();
        let a = NodeCert::from_bytes(cert.to_bytes()).unwrap();
        let b = NodeCert::from_armor(&cert.to_armor()).unwrap();
        assert!(Arc::ptr_eq(&a.0, &cert.0) && Arc::ptr_eq(&b.0, &cert.0));
        assert_eq!(a.hash(), sha256(&[cert.to_bytes()]));
        // Once nobody holds it, it goes; a later parse builds it again.
        let weak = Arc::downgrade(&cert.0);
        let bytes = cert.to_bytes().to_vec();
        drop((a, b, cert));
        assert!(weak.upgrade().is_none());
        let again = NodeCert::from_bytes(&bytes).unwrap();
        assert_eq!(again.to_bytes(), &bytes[..]);
        assert!(again.verified_by.get().is_none());
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let ca = Ca::generate("ca").unwrap();
        let id = Identity::generate().unwrap();
        let cert = ca.sign(request(&id, "n", 0, u64::MAX)).unwrap();
        let b = cert.to_bytes().to_vec();
        // Every byte: parse errors or a failed verification, never acceptance, never a panic.
        for i in 0..b.len() {
            let mut m = b.clone();
            m[i] ^= 0x01;
            if let Ok(c) = NodeCert::from_bytes(&m) {
                assert!(c.verify(ca.public(), 5).is_err(), "flip at {i} accepted");
            }
        }
        for cut in 0..b.len() {
            if cut % 97 == 0 || cut + 8 > b.len() {
                assert!(NodeCert::from_bytes(&b[..cut]).is_err());
            }
        }
    }

    #[test]
    fn caps_enforced() {
        let ca = Ca::generate("ca").unwrap();
        let id = Identity::generate().unwrap();
        let mut r = request(&id, "n", 0, 10);
        r.groups = vec!["g".into(); MAX_GROUPS + 1];
        assert!(matches!(ca.sign(r), Err(CertError::TooLarge("groups"))));
        let mut r = request(&id, "n", 0, 10);
        r.name = "x".repeat(MAX_NAME + 1);
        assert!(matches!(ca.sign(r), Err(CertError::TooLarge("name"))));
    }

    #[test]
    fn ca_files_round_trip() {
        let d = std::env::temp_dir().join(format!("shadowmesh-ca-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("ca.key");
        let ca = Ca::generate("net").unwrap();
        ca.save_secret(&p).unwrap();
        let back = Ca::load_secret(&p).unwrap();
        assert_eq!(back.public(), ca.public());
        assert_eq!(
            CaPublic::from_armor(&ca.public().to_armor()).unwrap(),
            *ca.public()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
