//! DoS defence for the handshake: mac1 keys, cookies bound to a source address, the cookie
//! reply, and the per-address amplification budget (3× rule).
//!
//! Owns the rotating cookie secret and the unvalidated-address byte counts. Everything here is
//! cheap (HMAC-SHA256, one AES-GCM seal) and must never do KEM or X25519 work: it runs before
//! any of that. Time is passed in; the secret rotates every [`COOKIE_ROTATION`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use rand_core::RngCore;
use zeroize::Zeroizing;

use crate::handshake::kdf::{ct_eq, mac16, sha256};
use crate::handshake::messages::{CookieReply, COOKIE_REPLY_LEN, KIND_COOKIE_REPLY, MAC_LEN};
use crate::identity::IdentityPublic;

/// How often the cookie secret changes; a cookie is accepted for this epoch and the one before.
pub const COOKIE_ROTATION: Duration = Duration::from_secs(120);
/// Before validation, bytes sent to an address stay ≤ this × bytes received from it.
pub const AMPLIFICATION_FACTOR: u64 = 3;
/// Most addresses tracked for the amplification budget (oldest evicted).
pub const MAX_TRACKED_ADDRS: usize = 4096;

/// Keys derived from one node's static public keys (mac1 and cookie-reply sealing).
#[derive(Clone)]
pub struct StaticKeys {
    /// SHA-256 over the node's X25519, ML-KEM and ML-DSA public keys.
    pub static_hash: [u8; 32],
    /// Key of mac1 for messages sent to this node.
    pub mac1_key: [u8; 32],
    /// Key sealing cookie replies sent by this node.
    pub cookie_key: [u8; 32],
}

impl StaticKeys {
    /// Derives the keys from a node's public keys.
    #[must_use]
    pub fn new(public: &IdentityPublic) -> Self {
        let static_hash = sha256(&[&public.x25519, &public.kem_ek, &public.sign_pk]);
        Self {
            static_hash,
            mac1_key: sha256(&[b"shadowmesh mac1----", &static_hash]),
            cookie_key: sha256(&[b"shadowmesh cookie--", &static_hash]),
        }
    }

    /// mac1 over `msg` (everything before the mac1 field).
    #[must_use]
    pub fn mac1(&self, msg: &[u8]) -> [u8; MAC_LEN] {
        mac16(&self.mac1_key, &[msg])
    }
}

fn addr_bytes(a: SocketAddr) -> Vec<u8> {
    let mut v = match a.ip() {
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    v.extend_from_slice(&a.port().to_le_bytes());
    v
}

#[derive(Debug, Clone, Copy, Default)]
struct Budget {
    rx: u64,
    tx: u64,
    validated: bool,
    last_seen: Duration,
}

/// Responder-side cookie and budget state.
pub struct CookieChecker {
    master: Zeroizing<[u8; 32]>,
    keys: StaticKeys,
    budgets: HashMap<SocketAddr, Budget>,
}

impl std::fmt::Debug for CookieChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieChecker({} addrs)", self.budgets.len())
    }
}

impl CookieChecker {
    /// A checker for the node with these static keys; `rng` (the caller's) seeds the rotating
    /// secret.
    #[must_use]
    pub fn new(keys: StaticKeys, rng: &mut dyn RngCore) -> Self {
        let mut master = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(master.as_mut_slice());
        Self {
            master,
            keys,
            budgets: HashMap::new(),
        }
    }

    fn secret(&self, epoch: u64) -> Zeroizing<[u8; 32]> {
        // Derived per epoch from one master secret: rotation needs no stored state or clock.
        Zeroizing::new(sha256(&[self.master.as_slice(), &epoch.to_le_bytes()]))
    }

    fn epoch(now: Duration) -> u64 {
        now.as_secs() / COOKIE_ROTATION.as_secs()
    }

    /// The cookie for `src` at `now`.
    #[must_use]
    pub fn cookie(&self, src: SocketAddr, now: Duration) -> [u8; MAC_LEN] {
        mac16(
            self.secret(Self::epoch(now)).as_slice(),
            &[&addr_bytes(src)],
        )
    }

    /// Whether `mac2` over `covered` is valid for `src` with this epoch's or the previous
    /// epoch's cookie.
    #[must_use]
    pub fn mac2_valid(&self, src: SocketAddr, now: Duration, covered: &[u8], mac2: &[u8]) -> bool {
        let e = Self::epoch(now);
        [e, e.saturating_sub(1)].into_iter().any(|epoch| {
            let c = mac16(self.secret(epoch).as_slice(), &[&addr_bytes(src)]);
            ct_eq(&mac16(&c, &[covered]), mac2)
        })
    }

    /// Builds a cookie reply for the initiation whose sender index and mac1 are given.
    ///
    /// # Errors
    /// `Unspecified` if the AEAD fails.
    pub fn cookie_reply(
        &self,
        src: SocketAddr,
        now: Duration,
        receiver: u32,
        m1_mac1: &[u8],
        rng: &mut dyn RngCore,
    ) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.keys.cookie_key)?);
        let mut sealed = self.cookie(src, now).to_vec();
        // AD = the initiation's mac1: only the sender of that initiation can use the reply.
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(m1_mac1),
            &mut sealed,
        )?;
        let mut out = Vec::with_capacity(COOKIE_REPLY_LEN);
        out.extend_from_slice(&[KIND_COOKIE_REPLY, 0, 0, 0]);
        out.extend_from_slice(&receiver.to_le_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Counts `n` bytes received from `src`.
    pub fn on_receive(&mut self, src: SocketAddr, n: usize, now: Duration) {
        if !self.budgets.contains_key(&src) && self.budgets.len() >= MAX_TRACKED_ADDRS {
            // Evicting forgets rx and tx together, so the 3× ratio holds per entry lifetime
            // and therefore in total.
            if let Some(old) = self
                .budgets
                .iter()
                .min_by_key(|(_, b)| b.last_seen)
                .map(|(a, _)| *a)
            {
                self.budgets.remove(&old);
            }
        }
        let b = self.budgets.entry(src).or_default();
        b.rx = b.rx.saturating_add(n as u64);
        b.last_seen = now;
    }

    /// Marks `src` validated (valid mac2, or an authenticated data packet from it).
    pub fn validate(&mut self, src: SocketAddr) {
        self.budgets.entry(src).or_default().validated = true;
    }

    /// Whether `src` is validated.
    #[must_use]
    pub fn is_validated(&self, src: SocketAddr) -> bool {
        self.budgets.get(&src).is_some_and(|b| b.validated)
    }

    /// Reserves `n` bytes to send to `src`; false if that would break the 3× rule.
    #[must_use]
    pub fn try_send(&mut self, src: SocketAddr, n: usize) -> bool {
        let Some(b) = self.budgets.get_mut(&src) else {
            return false;
        };
        let n = n as u64;
        if !b.validated && b.tx.saturating_add(n) > b.rx.saturating_mul(AMPLIFICATION_FACTOR) {
            return false;
        }
        b.tx = b.tx.saturating_add(n);
        true
    }

    /// `(received, sent)` bytes counted for `src` (test and metrics hook).
    #[must_use]
    pub fn counts(&self, src: SocketAddr) -> (u64, u64) {
        self.budgets.get(&src).map_or((0, 0), |b| (b.rx, b.tx))
    }
}

/// Initiator side: opens a cookie reply sent by the node with `keys`, for the initiation whose
/// mac1 was `m1_mac1`. Returns the cookie.
#[must_use]
pub fn open_cookie_reply(
    keys: &StaticKeys,
    reply: &CookieReply<'_>,
    m1_mac1: &[u8],
) -> Option<[u8; MAC_LEN]> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &keys.cookie_key).ok()?);
    let nonce: [u8; 12] = reply.nonce.try_into().ok()?;
    let mut buf = reply.sealed.to_vec();
    let pt = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(m1_mac1),
            &mut buf,
        )
        .ok()?;
    pt.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rand::SystemRng;

    fn checker() -> CookieChecker {
        let keys = StaticKeys {
            static_hash: [1; 32],
            mac1_key: [2; 32],
            cookie_key: [3; 32],
        };
        CookieChecker::new(keys, &mut SystemRng::new())
    }

    #[test]
    fn cookie_binds_address_and_rotates() {
        let c = checker();
        let a: SocketAddr = "198.51.100.1:51820".parse().unwrap();
        let b: SocketAddr = "198.51.100.1:51821".parse().unwrap();
        let t = Duration::from_secs(1_000_000);
        let ck = c.cookie(a, t);
        let mac2 = mac16(&ck, &[b"msg"]);
        assert!(c.mac2_valid(a, t, b"msg", &mac2));
        assert!(!c.mac2_valid(b, t, b"msg", &mac2));
        assert!(!c.mac2_valid(a, t, b"msG", &mac2));
        // Still valid in the next epoch, not two epochs later.
        assert!(c.mac2_valid(a, t + COOKIE_ROTATION, b"msg", &mac2));
        assert!(!c.mac2_valid(a, t + COOKIE_ROTATION * 2, b"msg", &mac2));
    }

    #[test]
    fn three_times_rule() {
        let mut c = checker();
        let a: SocketAddr = "203.0.113.5:9".parse().unwrap();
        assert!(
            !c.try_send(a, 1),
            "nothing may go to an address we never heard from"
        );
        c.on_receive(a, 100, Duration::ZERO);
        assert!(c.try_send(a, 300));
        assert!(!c.try_send(a, 1));
        c.validate(a);
        assert!(c.try_send(a, 10_000));
    }

    #[test]
    fn budget_table_is_bounded() {
        let mut c = checker();
        for i in 0..(MAX_TRACKED_ADDRS as u32 + 100) {
            let a = SocketAddr::from(([198, 51, 100, (i % 250) as u8], (i / 250) as u16 + 1));
            c.on_receive(a, 10, Duration::from_secs(u64::from(i)));
        }
        assert_eq!(c.budgets.len(), MAX_TRACKED_ADDRS);
    }
}
