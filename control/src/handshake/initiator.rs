//! Initiator side of the handshake: builds M1, then consumes M2 (→ keys) or a cookie reply
//! (→ the same M1 again, now with mac2).
//!
//! Owns the initiator's ephemeral X25519 and ML-KEM keys until the handshake completes; a
//! failed M2 (junk, tampering) leaves the state untouched so a genuine M2 can still complete it.
//! Never reads a clock: `now` is passed in.

use std::time::Duration;

use aws_lc_rs::agreement::{self, X25519};
use aws_lc_rs::kem::{DecapsulationKey, ML_KEM_1024};
use rand_core::RngCore;
use zeroize::Zeroizing;

use super::messages::{
    CookieReply, KIND_COOKIE_REPLY, KIND_INITIATION, KIND_RESPONSE, M1_TS_PLAIN, M2, MAC_LEN,
};
use super::{decaps, dh, encaps, tai64n, CipherChoice, Established, HandshakeError, PROLOGUE};
use crate::cert::{CaPublic, NodeCert};
use crate::cookie::{open_cookie_reply, StaticKeys};
use crate::handshake::kdf::{ct_eq, mac16, SymmetricState};
use crate::identity::Identity;

/// Cert mode byte: full certificate follows.
pub(crate) const CERT_FULL: u8 = 0;
/// Cert mode byte: SHA-256 of the certificate follows.
pub(crate) const CERT_HASH: u8 = 1;

/// Choices for an initiation.
#[derive(Debug, Clone)]
pub struct InitiatorOptions {
    /// Send only our certificate's hash (the responder is known to have it cached).
    pub send_cert_hash: bool,
    /// AEAD preferences, most preferred first (1 or 2 entries).
    pub ciphers: Vec<CipherChoice>,
    /// A cookie from an earlier cookie reply of this responder (fills mac2).
    pub cookie: Option<[u8; MAC_LEN]>,
    /// The timestamp to send (time since the Unix epoch) instead of `now`: the caller keeps
    /// timestamps increasing across a backward jump of the wall clock.
    pub timestamp: Option<Duration>,
}

impl Default for InitiatorOptions {
    fn default() -> Self {
        Self {
            send_cert_hash: false,
            ciphers: vec![CipherChoice::Aes256Gcm, CipherChoice::ChaCha20Poly1305],
            cookie: None,
            timestamp: None,
        }
    }
}

/// Entry point for the initiator role.
#[derive(Debug)]
pub struct Initiator;

/// What a datagram did to an in-progress initiation.
#[derive(Debug)]
#[must_use]
pub enum InitiatorEvent {
    /// M2 accepted: install the keys; the initiator may send at once.
    Established(Box<Established>),
    /// Cookie reply accepted: send this M1 (same handshake, now with mac2).
    Resend(Vec<u8>),
}

/// An initiation waiting for its response.
pub struct InitiatorState<'a> {
    identity: &'a Identity,
    my_keys: StaticKeys,
    peer_keys: StaticKeys,
    peer_cert: NodeCert,
    local_index: u32,
    ss: SymmetricState,
    /// Ephemeral secrets, dropped as soon as the handshake completes (forward secrecy).
    ephemeral: Option<(agreement::PrivateKey, DecapsulationKey)>,
    ciphers: Vec<CipherChoice>,
    m1: Vec<u8>,
    mac1_at: usize,
    cookie: Option<[u8; MAC_LEN]>,
    /// A cookie reply was accepted for this initiation (a second one is refused).
    cookie_taken: bool,
    done: bool,
}

impl std::fmt::Debug for InitiatorState<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorState")
            .field("local_index", &self.local_index)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake to `peer` with default options (full certificate, AES-GCM first).
    /// `now` is time since the Unix epoch; `rng` supplies the ephemeral X25519 key.
    ///
    /// # Errors
    /// [`HandshakeError::Cert`] if `peer` does not verify against `ca` at `now`, key errors.
    // The quinn/boringtun-style shape asked for: a namespace whose `new` yields (state, M1).
    #[allow(clippy::new_ret_no_self)]
    pub fn new<'a>(
        identity: &'a Identity,
        my_cert: &NodeCert,
        peer: &NodeCert,
        ca: &CaPublic,
        local_index: u32,
        now: Duration,
        rng: &mut dyn RngCore,
    ) -> Result<(InitiatorState<'a>, Vec<u8>), HandshakeError> {
        Self::with_options(
            identity,
            my_cert,
            peer,
            ca,
            local_index,
            now,
            rng,
            InitiatorOptions::default(),
        )
    }

    /// [`Initiator::new`] with explicit options.
    ///
    /// # Errors
    /// As [`Initiator::new`]; [`HandshakeError::NoCommonCipher`] for an empty or over-long
    /// cipher list.
    #[allow(clippy::too_many_arguments)]
    pub fn with_options<'a>(
        identity: &'a Identity,
        my_cert: &NodeCert,
        peer: &NodeCert,
        ca: &CaPublic,
        local_index: u32,
        now: Duration,
        rng: &mut dyn RngCore,
        opts: InitiatorOptions,
    ) -> Result<(InitiatorState<'a>, Vec<u8>), HandshakeError> {
        peer.verify(ca, now.as_secs())?;
        if opts.ciphers.is_empty() || opts.ciphers.len() > 2 {
            return Err(HandshakeError::NoCommonCipher);
        }
        let peer_keys = StaticKeys::new(&peer.body.public);
        let mut ss = SymmetricState::new(PROLOGUE);
        ss.mix_hash(&peer_keys.static_hash);

        let mut header = vec![KIND_INITIATION, 0, 0, 0];
        header.extend_from_slice(&local_index.to_le_bytes());
        ss.mix_hash(&header);

        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(seed.as_mut_slice());
        let e = agreement::PrivateKey::from_private_key(&X25519, seed.as_slice())
            .map_err(|_| HandshakeError::Crypto("X25519 ephemeral"))?;
        let e_pub = e
            .compute_public_key()
            .map_err(|_| HandshakeError::Crypto("X25519 ephemeral"))?;
        ss.mix_hash(e_pub.as_ref());
        let _ = ss.mix_key(b"e", e_pub.as_ref());

        let ekem = DecapsulationKey::generate(&ML_KEM_1024)
            .map_err(|_| HandshakeError::Crypto("ML-KEM-1024 ephemeral"))?;
        let ek = ekem
            .encapsulation_key()
            .and_then(|k| k.key_bytes())
            .map_err(|_| HandshakeError::Crypto("ML-KEM-1024 ephemeral"))?;
        ss.mix_hash(ek.as_ref());

        let es = dh(&e, &peer.body.public.x25519)?;
        let _ = ss.mix_key(b"es", es.as_slice());
        let (ct1, k1) = encaps(&peer.body.public.kem_ek)?;
        ss.mix_hash(&ct1);
        let k = ss.mix_key(b"kem1", &k1);

        let mut plain = Zeroizing::new(Vec::with_capacity(my_cert.to_bytes().len() + 64));
        if opts.send_cert_hash {
            plain.push(CERT_HASH);
            plain.extend_from_slice(&my_cert.hash());
        } else {
            let len = u16::try_from(my_cert.to_bytes().len())
                .map_err(|_| HandshakeError::Malformed("a certificate under 64 KiB"))?;
            plain.push(CERT_FULL);
            plain.extend_from_slice(&len.to_le_bytes());
            plain.extend_from_slice(my_cert.to_bytes());
        }
        let payload = ss
            .encrypt_and_hash(&k, &plain)
            .ok_or(HandshakeError::Crypto("AEAD seal"))?;
        let plen = u16::try_from(payload.len())
            .map_err(|_| HandshakeError::Malformed("a payload under 64 KiB"))?;
        // The timestamp is sealed under a key that also mixes the static-static DH, so only
        // the holder of our static X25519 key can produce an initiation the responder accepts
        // (WireGuard's `ss`); everything before it can be computed from public certificates.
        let ss_dh = dh(identity.x25519(), &peer.body.public.x25519)?;
        let k_ss = ss.mix_key(b"ss", ss_dh.as_slice());
        let mut ts_plain = Zeroizing::new([0u8; M1_TS_PLAIN]);
        ts_plain[..12].copy_from_slice(&tai64n(opts.timestamp.unwrap_or(now)));
        for (slot, c) in ts_plain[12..].iter_mut().zip(&opts.ciphers) {
            *slot = c.id();
        }
        let payload_ts = ss
            .encrypt_and_hash(&k_ss, ts_plain.as_slice())
            .ok_or(HandshakeError::Crypto("AEAD seal"))?;

        let mut m1 = header;
        m1.extend_from_slice(e_pub.as_ref());
        m1.extend_from_slice(ek.as_ref());
        m1.extend_from_slice(&ct1);
        m1.extend_from_slice(&plen.to_le_bytes());
        m1.extend_from_slice(&payload);
        m1.extend_from_slice(&payload_ts);
        let mac1_at = m1.len();
        let mac1 = peer_keys.mac1(&m1);
        m1.extend_from_slice(&mac1);
        match opts.cookie {
            Some(c) => {
                let mac2 = mac16(&c, &[&m1]);
                m1.extend_from_slice(&mac2);
            }
            None => m1.extend_from_slice(&[0u8; MAC_LEN]),
        }
        let state = InitiatorState {
            identity,
            my_keys: StaticKeys::new(identity.public()),
            peer_keys,
            peer_cert: peer.clone(),
            local_index,
            ss,
            ephemeral: Some((e, ekem)),
            ciphers: opts.ciphers,
            m1: m1.clone(),
            mac1_at,
            cookie: opts.cookie,
            cookie_taken: false,
            done: false,
        };
        Ok((state, m1))
    }
}

impl InitiatorState<'_> {
    /// Our session index.
    #[must_use]
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// The cookie received from the responder, if any (reuse it in the next initiation).
    #[must_use]
    pub fn cookie(&self) -> Option<[u8; MAC_LEN]> {
        self.cookie
    }

    /// The current M1 bytes (for retransmission).
    #[must_use]
    pub fn initiation(&self) -> &[u8] {
        &self.m1
    }

    /// Dispatches a handshake datagram by its kind byte.
    ///
    /// # Errors
    /// As the specific handlers; [`HandshakeError::WrongKind`] for any other kind.
    pub fn handle_message(
        &mut self,
        msg: &[u8],
        now: Duration,
    ) -> Result<InitiatorEvent, HandshakeError> {
        match msg.first() {
            Some(&KIND_RESPONSE) => self
                .handle_response(msg, now)
                .map(|e| InitiatorEvent::Established(Box::new(e))),
            Some(&KIND_COOKIE_REPLY) => self.handle_cookie_reply(msg).map(InitiatorEvent::Resend),
            Some(&k) => Err(HandshakeError::WrongKind {
                expected: KIND_RESPONSE,
                got: k,
            }),
            None => Err(HandshakeError::Malformed("a non-empty message")),
        }
    }

    /// Stores the cookie from a cookie reply and returns the M1 to resend, now with mac2.
    ///
    /// # Errors
    /// Malformed reply, wrong index, or a reply that does not open (tampered or not for us).
    pub fn handle_cookie_reply(&mut self, msg: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        if self.done {
            return Err(HandshakeError::AlreadyEstablished);
        }
        // One cookie reply per initiation: a replayed reply must not make us send the
        // (up to ~12 KB) initiation again.
        if self.cookie_taken {
            return Err(HandshakeError::CookieAlreadyTaken);
        }
        let reply = CookieReply::parse(msg)?;
        if reply.receiver != self.local_index {
            return Err(HandshakeError::UnknownIndex {
                expected: self.local_index,
                got: reply.receiver,
            });
        }
        let mac1 = self
            .m1
            .get(self.mac1_at..self.mac1_at + MAC_LEN)
            .ok_or(HandshakeError::Malformed("our own M1"))?;
        let cookie =
            open_cookie_reply(&self.peer_keys, &reply, mac1).ok_or(HandshakeError::Decrypt)?;
        let covered = self
            .m1
            .get(..self.mac1_at + MAC_LEN)
            .ok_or(HandshakeError::Malformed("our own M1"))?;
        let mac2 = mac16(&cookie, &[covered]);
        self.m1.truncate(self.mac1_at + MAC_LEN);
        self.m1.extend_from_slice(&mac2);
        self.cookie = Some(cookie);
        self.cookie_taken = true;
        Ok(self.m1.clone())
    }

    /// Consumes M2 and derives the transport keys. On error the state is unchanged.
    ///
    /// # Errors
    /// Malformed M2, bad mac1/mac2, wrong index, decryption failure, no common cipher.
    pub fn handle_response(
        &mut self,
        msg: &[u8],
        _now: Duration,
    ) -> Result<Established, HandshakeError> {
        let Some((e, ekem)) = self.ephemeral.as_ref() else {
            return Err(HandshakeError::AlreadyEstablished);
        };
        let m2 = M2::parse(msg)?;
        let covered = msg.get(..super::messages::M2_MAC1_AT).unwrap_or_default();
        if !ct_eq(&self.my_keys.mac1(covered), m2.mac1()) {
            return Err(HandshakeError::BadMac1);
        }
        // We never hand cookies to responders, so mac2 must be empty.
        if m2.mac2() != [0u8; MAC_LEN] {
            return Err(HandshakeError::BadMac2);
        }
        if m2.receiver != self.local_index {
            return Err(HandshakeError::UnknownIndex {
                expected: self.local_index,
                got: m2.receiver,
            });
        }
        let mut ss = self.ss.clone();
        ss.mix_hash(msg.get(..12).unwrap_or_default());
        ss.mix_hash(m2.e);
        let _ = ss.mix_key(b"e", m2.e);
        let ee = dh(e, m2.e)?;
        let _ = ss.mix_key(b"ee", ee.as_slice());
        let se = dh(self.identity.x25519(), m2.e)?;
        let _ = ss.mix_key(b"se", se.as_slice());
        let k2 = decaps(ekem, m2.ct2)?;
        ss.mix_hash(m2.ct2);
        let _ = ss.mix_key(b"kem2", &k2);
        let k3 = decaps(self.identity.kem_dk(), m2.ct3)?;
        ss.mix_hash(m2.ct3);
        let k = ss.mix_key(b"kem3", &k3);
        let plain = ss
            .decrypt_and_hash(&k, m2.payload)
            .ok_or(HandshakeError::Decrypt)?;
        let cipher = plain
            .first()
            .and_then(|&id| CipherChoice::from_id(id))
            .filter(|c| self.ciphers.contains(c))
            .ok_or(HandshakeError::NoCommonCipher)?;
        let (i2r, r2i) = ss.split();
        // aws-lc frees (and cleanses) the ephemeral keys here.
        self.ephemeral = None;
        self.done = true;
        Ok(Established {
            peer_id: self.peer_cert.node_id(),
            peer_cert: self.peer_cert.clone(),
            local_index: self.local_index,
            remote_index: m2.sender,
            cipher,
            send_key: i2r,
            recv_key: r2i,
            is_initiator: true,
            needs_confirmation: false,
        })
    }
}
