//! The hybrid, KEM-authenticated 1-RTT handshake (pqIK pattern): X25519 (es, ee, se) and
//! ML-KEM-1024 (responder static, initiator ephemeral, initiator static) chained through one
//! HKDF-SHA384 transcript. `docs/protocol.md` is the specification.
//!
//! How to drive it (sans-IO):
//! - initiator: [`Initiator::new`] → send M1; on a datagram call
//!   [`InitiatorState::handle_message`] (or the specific `handle_response` /
//!   `handle_cookie_reply`), which yields [`Established`] or an M1 to resend with mac2.
//! - responder: [`Responder::handle_initiation`] → [`ResponderOutput::Reply`] (send M2,
//!   install keys, wait for the initiator's first data packet before sending) or
//!   [`ResponderOutput::CookieReply`] (send it, keep no state).
//!
//! This module owns the handshake state machines; it never reads a clock, opens a socket or
//! keeps a secret beyond the state that needs it (all in `Zeroizing` storage).

pub mod driver;
pub mod initiator;
pub mod kdf;
pub mod messages;
pub mod responder;

use std::time::Duration;

use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_1024};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::cert::{CertError, NodeCert};

pub use initiator::{Initiator, InitiatorEvent, InitiatorOptions, InitiatorState};
pub use responder::{Admission, Commit, Responder, ResponderOutput};

/// Prologue mixed into every handshake transcript. v2: M1's timestamp is sealed under a key
/// that includes X25519(s_I, s_R) (docs/protocol.md §4).
pub const PROLOGUE: &[u8] = b"shadowmesh handshake v2";

/// How far ahead of the responder's clock an initiation's timestamp may be. Certificates
/// already need roughly synchronised clocks; the bound keeps a stored timestamp from being
/// pushed far into the future (docs/protocol.md §4.4).
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(300);

/// Why a handshake message was refused. Every refusal is a drop for the caller; none panics.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// Wrong length, reserved bytes or field.
    #[error("malformed handshake message: expected {0}")]
    Malformed(&'static str),
    /// A different message kind than this call handles.
    #[error("expected handshake message kind {expected}, got {got}")]
    WrongKind {
        /// Expected kind byte.
        expected: u8,
        /// Received kind byte.
        got: u8,
    },
    /// mac1 did not verify (junk or meant for another node): dropped before any KEM work.
    #[error("mac1 does not verify")]
    BadMac1,
    /// mac2 present but invalid (or invalid under load after a cookie).
    #[error("mac2 does not verify")]
    BadMac2,
    /// The message names a session index we did not issue.
    #[error("receiver index {got} is not ours ({expected})")]
    UnknownIndex {
        /// Our index.
        expected: u32,
        /// The index in the message.
        got: u32,
    },
    /// AEAD or transcript mismatch: a tampered message or wrong keys.
    #[error("handshake payload does not decrypt (tampered, or wrong keys)")]
    Decrypt,
    /// The peer certificate was refused.
    #[error("peer certificate refused: {0}")]
    Cert(#[from] CertError),
    /// The initiator sent a certificate hash we do not have cached.
    #[error("initiator sent a certificate hash we do not have cached; it must send the full certificate")]
    UnknownCertHash,
    /// The timestamp is not greater than the last one accepted from that node.
    #[error("replayed or stale initiation (timestamp not newer than the last accepted)")]
    Replay,
    /// The timestamp is further ahead of our clock than [`MAX_FUTURE_SKEW`].
    #[error(
        "initiation timestamp {ahead_secs} s ahead of our clock (more than {max_secs} s): \
         check the clocks (NTP) of this node and the peer"
    )]
    FutureTimestamp {
        /// How far ahead it was.
        ahead_secs: u64,
        /// The bound.
        max_secs: u64,
    },
    /// The initiation carries our own certificate: a reflection, never a peer.
    #[error("initiation carries our own certificate")]
    OwnCertificate,
    /// A second cookie reply for an initiation that already took one (a replay).
    #[error("cookie reply for an initiation that already took one")]
    CookieAlreadyTaken,
    /// Answering would send more than 3× the bytes received from an unvalidated address.
    #[error("answer withheld: 3x amplification limit for an unvalidated address")]
    AmplificationLimit,
    /// No AEAD both sides accept.
    #[error("no AEAD in common")]
    NoCommonCipher,
    /// An encapsulation or public key failed its validity check (FIPS 203 ek check, X25519).
    #[error("invalid public key: {0}")]
    BadPublicKey(&'static str),
    /// A crypto call failed for a reason other than input (RNG, allocation).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
    /// This initiator already completed.
    #[error("handshake already complete")]
    AlreadyEstablished,
}

/// The transport AEAD negotiated by the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherChoice {
    /// AES-256-GCM (default where the CPU has AES instructions).
    Aes256Gcm,
    /// ChaCha20-Poly1305.
    ChaCha20Poly1305,
}

impl CipherChoice {
    /// Wire id.
    #[must_use]
    pub fn id(self) -> u8 {
        match self {
            Self::Aes256Gcm => 1,
            Self::ChaCha20Poly1305 => 2,
        }
    }

    /// From a wire id.
    #[must_use]
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(Self::Aes256Gcm),
            2 => Some(Self::ChaCha20Poly1305),
            _ => None,
        }
    }
}

/// The result of a completed handshake: what the dataplane session needs.
pub struct Established {
    /// SHA-256 of the peer's ML-DSA public key.
    pub peer_id: [u8; 32],
    /// The peer's verified certificate (its addresses are the allowed prefixes).
    pub peer_cert: NodeCert,
    /// Our session index (the peer puts it in data messages to us).
    pub local_index: u32,
    /// The peer's session index (we put it in data messages to the peer).
    pub remote_index: u32,
    /// Negotiated AEAD.
    pub cipher: CipherChoice,
    /// Key for data we send.
    pub send_key: Zeroizing<[u8; 32]>,
    /// Key for data we receive.
    pub recv_key: Zeroizing<[u8; 32]>,
    /// True on the initiator side.
    pub is_initiator: bool,
    /// True on the responder side: it must not send data until a data packet from the peer
    /// authenticated under `recv_key` (key confirmation, as in WireGuard).
    pub needs_confirmation: bool,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("peer", &crate::identity::hex(&self.peer_id[..8]))
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("cipher", &self.cipher)
            .field("is_initiator", &self.is_initiator)
            .finish_non_exhaustive()
    }
}

/// The time a TAI64N-like timestamp names (inverse of [`tai64n`]); `None` for one before
/// 1970 or with nanoseconds out of range.
#[must_use]
pub fn tai64n_time(t: &[u8; 12]) -> Option<Duration> {
    let mut s = [0u8; 8];
    s.copy_from_slice(&t[..8]);
    let mut n = [0u8; 4];
    n.copy_from_slice(&t[8..]);
    let secs = u64::from_be_bytes(s).checked_sub(1u64 << 62)?;
    let nanos = u32::from_be_bytes(n);
    (nanos < 1_000_000_000).then(|| Duration::new(secs, nanos))
}

/// TAI64N-like 12-byte timestamp: `2^62 + secs` (u64 BE) then nanoseconds (u32 BE), so that
/// byte order is time order.
#[must_use]
pub fn tai64n(now: Duration) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..8].copy_from_slice(&((1u64 << 62).wrapping_add(now.as_secs())).to_be_bytes());
    t[8..].copy_from_slice(&now.subsec_nanos().to_be_bytes());
    t
}

/// X25519 between our private key and a peer public key; the result is zeroized.
pub(crate) fn dh(
    ours: &agreement::PrivateKey,
    peer: &[u8],
) -> Result<Zeroizing<[u8; 32]>, HandshakeError> {
    agreement::agree(
        ours,
        UnparsedPublicKey::new(&X25519, peer),
        HandshakeError::BadPublicKey("X25519"),
        |s| {
            let mut out = Zeroizing::new([0u8; 32]);
            if s.len() != 32 {
                return Err(HandshakeError::BadPublicKey("X25519"));
            }
            out.copy_from_slice(s);
            Ok(out)
        },
    )
}

/// ML-KEM-1024 encapsulation to `ek`; the ek validity check happens here (aws-lc-rs checks
/// keys only when encapsulating), so its failure is an input error.
pub(crate) fn encaps(ek: &[u8]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), HandshakeError> {
    let ek = EncapsulationKey::new(&ML_KEM_1024, ek)
        .map_err(|_| HandshakeError::BadPublicKey("ML-KEM-1024 encapsulation key"))?;
    let (ct, ss) = ek
        .encapsulate()
        .map_err(|_| HandshakeError::BadPublicKey("ML-KEM-1024 encapsulation key"))?;
    Ok((ct.as_ref().to_vec(), Zeroizing::new(ss.as_ref().to_vec())))
}

/// ML-KEM-1024 decapsulation (implicit rejection: a bad ciphertext yields a random-looking
/// secret, caught later by the AEAD).
pub(crate) fn decaps(
    dk: &DecapsulationKey,
    ct: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HandshakeError> {
    let ss = dk
        .decapsulate(Ciphertext::from(ct))
        .map_err(|_| HandshakeError::Malformed("an ML-KEM-1024 ciphertext"))?;
    Ok(Zeroizing::new(ss.as_ref().to_vec()))
}

#[cfg(test)]
mod tests;
