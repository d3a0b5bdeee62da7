//! Responder side of the handshake: checks mac1 (and mac2 under load) before any KEM work,
//! answers with a cookie reply or with M2, enforces the 3× amplification rule and refuses
//! replayed initiations (timestamps strictly increasing per node ID).
//!
//! Owns the per-responder tables: last timestamp per node ID, a bounded certificate cache, the
//! cookie secret and address budgets. It keeps no per-initiation state (a cookie reply is
//! stateless); it never reads a clock and never sends more than 3× what an unvalidated
//! address sent it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use aws_lc_rs::agreement::{self, X25519};
use rand_core::RngCore;

use super::initiator::{CERT_FULL, CERT_HASH};
use super::messages::{KIND_RESPONSE, M1, M2_LEN, MAC_LEN};
use super::{
    decaps, dh, encaps, CipherChoice, Established, HandshakeError, MAX_FUTURE_SKEW, PROLOGUE,
};
use crate::cert::{CaPublic, CertError, NodeCert};
use crate::cookie::{CookieChecker, StaticKeys};
use crate::handshake::kdf::{ct_eq, SymmetricState, TAG_LEN};
use crate::identity::{Identity, Reader};

/// Most certificates kept for "hash instead of certificate" initiations.
pub const MAX_CACHED_CERTS: usize = 1024;
/// Most node IDs whose last timestamp is remembered (bounded by the network size in practice;
/// beyond it an arbitrary entry is forgotten, see docs/protocol.md).
pub const MAX_TIMESTAMPS: usize = 65_536;

/// What to send back for an initiation.
#[derive(Debug)]
#[must_use]
pub enum ResponderOutput {
    /// Send `m2`; install `established` as a pending session (receive now, send after key
    /// confirmation); call [`Responder::commit`] with `commit` once it is confirmed.
    Reply {
        /// The response message.
        m2: Vec<u8>,
        /// What to commit after key confirmation.
        commit: Commit,
        /// Keys and peer data.
        established: Box<Established>,
    },
    /// Under load: send this cookie reply and keep nothing.
    CookieReply(Vec<u8>),
}

/// The outcome of [`Responder::admit`].
#[derive(Debug)]
#[must_use]
pub enum Admission {
    /// Under load without a valid cookie: send this cookie reply, do nothing else.
    CookieReply(Vec<u8>),
    /// Go on to [`Responder::respond`].
    Proceed {
        /// mac2 carried a valid cookie for the source address (the address is proven).
        cookie_valid: bool,
        /// The load signal was on (the caller's per-source rate limit applies).
        under_load: bool,
    },
}

/// The responder role for one local identity.
pub struct Responder<'a> {
    identity: &'a Identity,
    ca: CaPublic,
    keys: StaticKeys,
    cookies: CookieChecker,
    /// The caller's generator (cookie secrets and nonces).
    rng: Box<dyn RngCore + Send>,
    last_ts: HashMap<[u8; 32], [u8; 12]>,
    cert_cache: HashMap<[u8; 32], NodeCert>,
    ciphers: Vec<CipherChoice>,
    kem_ops: u64,
}

impl std::fmt::Debug for Responder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("kem_ops", &self.kem_ops)
            .finish_non_exhaustive()
    }
}

impl<'a> Responder<'a> {
    /// A responder for `identity`, whose certificate is `cert`, trusting `ca`; `rng` is the
    /// caller's generator (the system one in the daemon, a seeded one in the simulator).
    ///
    /// # Errors
    /// [`HandshakeError::Cert`] if `cert` does not belong to `identity` or to `ca`.
    pub fn new(
        identity: &'a Identity,
        cert: &NodeCert,
        ca: &CaPublic,
        mut rng: Box<dyn RngCore + Send>,
    ) -> Result<Self, HandshakeError> {
        if cert.body.public != *identity.public() {
            return Err(HandshakeError::Cert(CertError::Malformed(
                "our certificate to certify our own keys",
            )));
        }
        if cert.issuer != ca.id() {
            return Err(HandshakeError::Cert(CertError::WrongIssuer));
        }
        let keys = StaticKeys::new(identity.public());
        let cookies = CookieChecker::new(keys.clone(), &mut *rng);
        Ok(Self {
            identity,
            ca: ca.clone(),
            keys,
            cookies,
            rng,
            last_ts: HashMap::new(),
            cert_cache: HashMap::new(),
            ciphers: vec![CipherChoice::Aes256Gcm, CipherChoice::ChaCha20Poly1305],
            kem_ops: 0,
        })
    }

    /// Restricts the AEADs this responder accepts.
    pub fn set_ciphers(&mut self, ciphers: Vec<CipherChoice>) {
        self.ciphers = ciphers;
    }

    /// Number of KEM operations (encapsulations + decapsulations) done so far.
    #[must_use]
    pub fn kem_ops(&self) -> u64 {
        self.kem_ops
    }

    /// Marks `src` validated (the caller saw an authenticated data packet from it).
    pub fn mark_validated(&mut self, src: SocketAddr) {
        self.cookies.validate(src);
    }

    /// `(bytes received, bytes sent)` accounted for `src`.
    #[must_use]
    pub fn address_counts(&self, src: SocketAddr) -> (u64, u64) {
        self.cookies.counts(src)
    }

    /// Adds a certificate to the cache (e.g. one fetched from the DHT) after verifying it
    /// against the CA at `now`. Cached certificates are trusted by signature; only their
    /// validity window is re-checked when an initiation names them by hash.
    ///
    /// # Errors
    /// The verification failure; nothing is cached.
    pub fn cache_cert(&mut self, cert: NodeCert, now: Duration) -> Result<(), HandshakeError> {
        cert.verify(&self.ca, now.as_secs())?;
        self.insert_cached(cert);
        Ok(())
    }

    fn insert_cached(&mut self, cert: NodeCert) {
        if self.cert_cache.len() >= MAX_CACHED_CERTS {
            if let Some(k) = self.cert_cache.keys().next().copied() {
                self.cert_cache.remove(&k);
            }
        }
        self.cert_cache.insert(cert.hash(), cert);
    }

    /// Handles an initiation from `src` at `now` (since the Unix epoch). With `under_load`, an
    /// initiation without a valid mac2 gets a cookie reply and no KEM work is done. This is
    /// [`Responder::admit`] followed by [`Responder::respond`].
    ///
    /// # Errors
    /// Any refusal; the caller drops the datagram and sends nothing.
    pub fn handle_initiation(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        now: Duration,
        under_load: bool,
        local_index: u32,
    ) -> Result<ResponderOutput, HandshakeError> {
        match self.admit(msg, src, now, &mut || under_load)? {
            Admission::CookieReply(reply) => Ok(ResponderOutput::CookieReply(reply)),
            Admission::Proceed { .. } => self.respond(msg, src, now, local_index),
        }
    }

    /// The cheap first stage of an initiation: parse, mac1, byte accounting, mac2, and the
    /// cookie reply under load. `under_load` is asked only after mac1 verified, so junk does
    /// not count towards the load signal. No X25519 or KEM work happens here.
    ///
    /// # Errors
    /// Malformed, bad mac1, bad mac2 (when not under load), amplification limit.
    pub fn admit(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        now: Duration,
        under_load: &mut dyn FnMut() -> bool,
    ) -> Result<Admission, HandshakeError> {
        let m1 = M1::parse(msg)?;
        let covered1 = msg.get(..m1.mac1_at).unwrap_or_default();
        if !ct_eq(&self.keys.mac1(covered1), m1.mac1()) {
            return Err(HandshakeError::BadMac1);
        }
        let under_load = under_load();
        self.cookies.on_receive(src, msg.len(), now);
        let covered2 = msg.get(..m1.mac1_at + MAC_LEN).unwrap_or_default();
        let mac2_present = m1.mac2() != [0u8; MAC_LEN];
        let mac2_ok = mac2_present && self.cookies.mac2_valid(src, now, covered2, m1.mac2());
        if mac2_present && !mac2_ok && !under_load {
            // A stale or forged mac2 is junk; under load it just earns a fresh cookie.
            return Err(HandshakeError::BadMac2);
        }
        if mac2_ok {
            self.cookies.validate(src);
        }
        if under_load && !mac2_ok {
            let reply = self
                .cookies
                .cookie_reply(src, now, m1.sender, m1.mac1(), &mut *self.rng)
                .map_err(|_| HandshakeError::Crypto("cookie reply"))?;
            if !self.cookies.try_send(src, reply.len()) {
                return Err(HandshakeError::AmplificationLimit);
            }
            return Ok(Admission::CookieReply(reply));
        }
        Ok(Admission::Proceed {
            cookie_valid: mac2_ok,
            under_load,
        })
    }

    /// The expensive second stage, for an initiation [`Responder::admit`] let through:
    /// reserves M2's bytes in `src`'s amplification budget (refused: no KEM work), then does
    /// the key agreement and builds M2. Commits nothing (see [`Responder::commit`]).
    ///
    /// # Errors
    /// Any refusal: amplification limit, decryption, certificate, replay, clock skew, cipher.
    pub fn respond(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        now: Duration,
        local_index: u32,
    ) -> Result<ResponderOutput, HandshakeError> {
        let m1 = M1::parse(msg)?;
        if !self.cookies.try_send(src, M2_LEN) {
            return Err(HandshakeError::AmplificationLimit);
        }
        self.process(&m1, now, local_index)
    }

    fn process(
        &mut self,
        m1: &M1<'_>,
        now: Duration,
        local_index: u32,
    ) -> Result<ResponderOutput, HandshakeError> {
        let mut ss = SymmetricState::new(PROLOGUE);
        ss.mix_hash(&self.keys.static_hash);
        ss.mix_hash(m1.bytes.get(..8).unwrap_or_default());
        ss.mix_hash(m1.e);
        let _ = ss.mix_key(b"e", m1.e);
        ss.mix_hash(m1.ek);
        let es = dh(self.identity.x25519(), m1.e)?;
        let _ = ss.mix_key(b"es", es.as_slice());
        self.kem_ops += 1;
        let k1 = decaps(self.identity.kem_dk(), m1.ct1)?;
        ss.mix_hash(m1.ct1);
        let k = ss.mix_key(b"kem1", &k1);
        let plain = ss
            .decrypt_and_hash(&k, m1.payload)
            .ok_or(HandshakeError::Decrypt)?;

        // Everything up to here can be computed by anyone holding our public certificate.
        // The claimed identity is only parsed (no signature check yet): the static-static DH
        // below proves the sender holds its X25519 key before we pay for an ML-DSA verify.
        let mut r = Reader(&plain);
        let bad = HandshakeError::Malformed;
        let (peer_cert, fresh) = match r.u8() {
            Some(CERT_FULL) => {
                let n = usize::from(r.u16().ok_or(bad("certificate length"))?);
                let c = NodeCert::from_bytes(r.take(n).ok_or(bad("certificate"))?)?;
                (c, true)
            }
            Some(CERT_HASH) => {
                let h: [u8; 32] = r.array().ok_or(bad("certificate hash"))?;
                let c = self
                    .cert_cache
                    .get(&h)
                    .cloned()
                    .ok_or(HandshakeError::UnknownCertHash)?;
                (c, false)
            }
            _ => return Err(bad("certificate mode 0 or 1")),
        };
        if !r.is_empty() {
            return Err(bad("end of the identity payload after the certificate"));
        }
        let peer_id = peer_cert.node_id();
        if peer_id == self.identity.node_id() {
            return Err(HandshakeError::OwnCertificate);
        }
        let ss_dh = dh(self.identity.x25519(), &peer_cert.body.public.x25519)?;
        let k_ss = ss.mix_key(b"ss", ss_dh.as_slice());
        let ts_plain = ss
            .decrypt_and_hash(&k_ss, m1.payload_ts)
            .ok_or(HandshakeError::Decrypt)?;
        let mut ts = [0u8; 12];
        let prefs = match ts_plain.split_at_checked(12) {
            Some((t, p)) if p.len() == 2 => {
                ts.copy_from_slice(t);
                p
            }
            _ => return Err(bad("a 14-byte timestamp payload")),
        };
        if fresh {
            peer_cert.verify(&self.ca, now.as_secs())?;
        } else {
            // Cached certificates were verified when cached; only the window is re-checked.
            peer_cert.check_validity(now.as_secs())?;
        }
        if self.last_ts.get(&peer_id).is_some_and(|last| ts <= *last) {
            return Err(HandshakeError::Replay);
        }
        // At most MAX_FUTURE_SKEW ahead of our clock, or of the last timestamp we accepted
        // from that node: initiators keep their timestamps increasing when their wall clock
        // jumps back, and if ours jumped back with theirs this still lets them in.
        let sent_at = super::tai64n_time(&ts).ok_or(bad("a valid timestamp"))?;
        let reference = self
            .last_ts
            .get(&peer_id)
            .and_then(super::tai64n_time)
            .map_or(now, |last| last.max(now));
        if sent_at > reference + MAX_FUTURE_SKEW {
            return Err(HandshakeError::FutureTimestamp {
                ahead_secs: sent_at.saturating_sub(now).as_secs(),
                max_secs: MAX_FUTURE_SKEW.as_secs(),
            });
        }
        let cipher = prefs
            .iter()
            .filter_map(|&id| CipherChoice::from_id(id))
            .find(|c| self.ciphers.contains(c))
            .ok_or(HandshakeError::NoCommonCipher)?;

        // M2.
        let peer_pub = &peer_cert.body.public;
        let mut m2 = Vec::with_capacity(M2_LEN);
        m2.extend_from_slice(&[KIND_RESPONSE, 0, 0, 0]);
        m2.extend_from_slice(&local_index.to_le_bytes());
        m2.extend_from_slice(&m1.sender.to_le_bytes());
        ss.mix_hash(&m2);
        let e = agreement::PrivateKey::generate(&X25519)
            .map_err(|_| HandshakeError::Crypto("X25519 ephemeral"))?;
        let e_pub = e
            .compute_public_key()
            .map_err(|_| HandshakeError::Crypto("X25519 ephemeral"))?;
        ss.mix_hash(e_pub.as_ref());
        let _ = ss.mix_key(b"e", e_pub.as_ref());
        let ee = dh(&e, m1.e)?;
        let _ = ss.mix_key(b"ee", ee.as_slice());
        let se = dh(&e, &peer_pub.x25519)?;
        let _ = ss.mix_key(b"se", se.as_slice());
        self.kem_ops += 1;
        let (ct2, k2) = encaps(m1.ek)?;
        ss.mix_hash(&ct2);
        let _ = ss.mix_key(b"kem2", &k2);
        self.kem_ops += 1;
        let (ct3, k3) = encaps(&peer_pub.kem_ek)?;
        ss.mix_hash(&ct3);
        let k = ss.mix_key(b"kem3", &k3);
        let payload = ss
            .encrypt_and_hash(&k, &[cipher.id()])
            .ok_or(HandshakeError::Crypto("AEAD seal"))?;
        debug_assert_eq!(payload.len(), 1 + TAG_LEN);
        m2.extend_from_slice(e_pub.as_ref());
        m2.extend_from_slice(&ct2);
        m2.extend_from_slice(&ct3);
        m2.extend_from_slice(&payload);
        let mac1 = StaticKeys::new(peer_pub).mac1(&m2);
        m2.extend_from_slice(&mac1);
        m2.extend_from_slice(&[0u8; MAC_LEN]);
        let (i2r, r2i) = ss.split();

        // Nothing is committed here: the caller installs the session as pending and calls
        // [`Responder::commit`] only after key confirmation (the initiator's first data packet
        // authenticated under `T_i2r`), so a forged initiation changes no state.
        Ok(ResponderOutput::Reply {
            m2,
            commit: Commit {
                peer_id,
                timestamp: ts,
                new_cert: fresh,
            },
            established: Box::new(Established {
                peer_id,
                peer_cert,
                local_index,
                remote_index: m1.sender,
                cipher,
                send_key: r2i,
                recv_key: i2r,
                is_initiator: false,
                needs_confirmation: true,
            }),
        })
    }

    /// Commits an accepted initiation after key confirmation: its timestamp becomes the one
    /// later initiations from that node must exceed, and a certificate sent in full is cached
    /// (so the next initiation may send its hash). `cert` is the `Established::peer_cert` of
    /// the same reply.
    pub fn commit(&mut self, commit: &Commit, cert: &NodeCert) {
        let peer_id = commit.peer_id;
        if self.last_ts.len() >= MAX_TIMESTAMPS && !self.last_ts.contains_key(&peer_id) {
            if let Some(k) = self.last_ts.keys().next().copied() {
                self.last_ts.remove(&k);
            }
        }
        let newer = self
            .last_ts
            .get(&peer_id)
            .is_none_or(|last| commit.timestamp > *last);
        if newer {
            self.last_ts.insert(peer_id, commit.timestamp);
        }
        if commit.new_cert && cert.node_id() == peer_id {
            self.insert_cached(cert.clone());
        }
    }

    /// The last committed timestamp of `node_id` (for tests and diagnostics).
    #[must_use]
    pub fn last_timestamp(&self, node_id: &[u8; 32]) -> Option<[u8; 12]> {
        self.last_ts.get(node_id).copied()
    }
}

/// What [`Responder::commit`] stores once the initiator confirmed the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// The initiator's node id.
    pub peer_id: [u8; 32],
    /// The initiation's timestamp.
    pub timestamp: [u8; 12],
    /// The initiation carried a full certificate (cache it on commit).
    pub new_cert: bool,
}
