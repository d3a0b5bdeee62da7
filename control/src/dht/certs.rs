//! A bounded cache of CA-verified node certificates, keyed by certificate hash.
//!
//! Owns the "verify once" rule: a certificate's ML-DSA-87 CA signature (~70 µs) is checked only
//! when its hash is not cached; a hit re-checks only the issuer and the validity window, so an
//! entry is worthless after its `not_after`. Must never hand out a certificate it has not
//! verified, and must stay bounded: eviction is deterministic (expired entries first, then the
//! oldest inserted), so the same inputs give the same cache in every run.

use std::collections::BTreeMap;

use crate::cert::{CaPublic, CertError, NodeCert};

/// Default capacity: one entry per node of a large network, ~4.5 KiB each.
pub const DEFAULT_CAPACITY: usize = 4096;

#[derive(Debug)]
struct Entry {
    cert: NodeCert,
    /// The CA the signature was verified against.
    ca_id: [u8; 32],
    /// Insertion number: the eviction order.
    seq: u64,
}

/// Counters of cache work (what a dashboard or a test asks "how often did we verify").
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CertCacheStats {
    /// ML-DSA verifications run (misses).
    pub verifications: u64,
    /// Lookups answered from the cache without a signature check.
    pub hits: u64,
    /// Certificates refused (bad signature, wrong CA, outside the validity window).
    pub refused: u64,
    /// Entries removed to make room or because they expired.
    pub evicted: u64,
}

/// Cache of verified certificates: hash -> certificate, bounded, deterministic.
#[derive(Debug)]
pub struct CertCache {
    capacity: usize,
    entries: BTreeMap<[u8; 32], Entry>,
    /// Insertion number -> hash, for oldest-out eviction.
    order: BTreeMap<u64, [u8; 32]>,
    next_seq: u64,
    stats: CertCacheStats,
}

impl Default for CertCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl CertCache {
    /// An empty cache holding at most `capacity` certificates (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            stats: CertCacheStats::default(),
        }
    }

    /// Checks `cert` against `ca` at `now` (unix seconds): the full CA verification on a miss
    /// (then cached), only issuer and validity window on a hit. An expired cached entry is
    /// dropped and refused.
    ///
    /// # Errors
    /// The [`CertError`] of the failed check.
    pub fn verify(&mut self, cert: &NodeCert, ca: &CaPublic, now: u64) -> Result<(), CertError> {
        let hash = cert.hash();
        let ca_id = ca.id();
        if let Some(e) = self.entries.get(&hash) {
            if e.ca_id != ca_id {
                self.stats.refused += 1;
                return Err(CertError::WrongIssuer);
            }
            if let Err(err) = e.cert.check_validity(now) {
                self.stats.refused += 1;
                if matches!(err, CertError::Expired { .. }) {
                    self.remove(&hash);
                    self.stats.evicted += 1;
                }
                return Err(err);
            }
            self.stats.hits += 1;
            return Ok(());
        }
        self.stats.verifications += 1;
        if let Err(err) = cert.verify(ca, now) {
            self.stats.refused += 1;
            return Err(err);
        }
        self.insert(hash, cert.clone(), ca_id, now);
        Ok(())
    }

    /// The verified certificate with this hash, if cached. Its validity window is not checked
    /// here (no time given): trust it only through [`Self::verify`].
    #[must_use]
    pub fn get(&self, hash: &[u8; 32]) -> Option<&NodeCert> {
        self.entries.get(hash).map(|e| &e.cert)
    }

    /// Drops every entry whose certificate expired before `now`.
    pub fn expire(&mut self, now: u64) {
        let dead: Vec<[u8; 32]> = self
            .entries
            .iter()
            .filter(|(_, e)| e.cert.body.not_after < now)
            .map(|(h, _)| *h)
            .collect();
        for h in dead {
            self.remove(&h);
            self.stats.evicted += 1;
        }
    }

    /// Number of cached certificates.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> CertCacheStats {
        self.stats
    }

    fn remove(&mut self, hash: &[u8; 32]) {
        if let Some(e) = self.entries.remove(hash) {
            self.order.remove(&e.seq);
        }
    }

    fn insert(&mut self, hash: [u8; 32], cert: NodeCert, ca_id: [u8; 32], now: u64) {
        if self.entries.len() >= self.capacity {
            self.expire(now);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            self.stats.evicted += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, hash);
        self.entries.insert(hash, Entry { cert, ca_id, seq });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::request;
    use crate::cert::Ca;
    use crate::identity::Identity;

    const T: u64 = 1_800_000_000;

    #[test]
    fn verifies_once_then_hits_and_refuses_when_expired() {
        let ca = Ca::generate("net").unwrap();
        let id = Identity::generate().unwrap();
        let cert = ca.sign(request(&id, "a", T - 10, T + 100)).unwrap();
        let mut c = CertCache::new(8);
        for _ in 0..5 {
            c.verify(&cert, ca.public(), T).unwrap();
        }
        assert_eq!(c.stats().verifications, 1);
        assert_eq!(c.stats().hits, 4);
        assert_eq!(c.get(&cert.hash()), Some(&cert));
        // After not_after the cached entry is refused and dropped, without re-verifying.
        assert!(matches!(
            c.verify(&cert, ca.public(), T + 101),
            Err(CertError::Expired { .. })
        ));
        assert_eq!(c.stats().verifications, 1);
        assert!(c.get(&cert.hash()).is_none());
        // An expired, never-cached certificate is refused and not cached.
        assert!(c.verify(&cert, ca.public(), T + 101).is_err());
        assert!(c.is_empty());
    }

    #[test]
    fn refuses_other_ca_and_forged_signature() {
        let ca = Ca::generate("net").unwrap();
        let evil = Ca::generate("net").unwrap();
        let id = Identity::generate().unwrap();
        let foreign = evil.sign(request(&id, "a", T - 10, T + 100)).unwrap();
        let mut c = CertCache::new(8);
        assert!(matches!(
            c.verify(&foreign, ca.public(), T),
            Err(CertError::WrongIssuer)
        ));
        // A cert verified under one CA is not accepted from the cache under another.
        c.verify(&foreign, evil.public(), T).unwrap();
        assert!(matches!(
            c.verify(&foreign, ca.public(), T),
            Err(CertError::WrongIssuer)
        ));
        // Claiming our CA as issuer with the other CA's signature: signature check fails.
        let good = ca.sign(request(&id, "a", T - 10, T + 100)).unwrap();
        let mut b = good.to_bytes().to_vec();
        let n = b.len();
        b[n - 1] ^= 1;
        let forged = NodeCert::from_bytes(&b).unwrap();
        assert!(matches!(
            c.verify(&forged, ca.public(), T),
            Err(CertError::BadSignature)
        ));
        assert!(c.get(&forged.hash()).is_none());
    }

    #[test]
    fn bounded_with_deterministic_eviction_expired_first() {
        let ca = Ca::generate("net").unwrap();
        let certs: Vec<NodeCert> = (0..4)
            .map(|i| {
                let id = Identity::generate().unwrap();
                // cert 1 expires early; the others stay valid.
                let na = if i == 1 { T + 5 } else { T + 1000 };
                ca.sign(request(&id, "n", T - 10, na)).unwrap()
            })
            .collect();
        let mut c = CertCache::new(3);
        for cert in &certs[..3] {
            c.verify(cert, ca.public(), T).unwrap();
        }
        // Full at T+10: the expired cert 1 goes, not the oldest (cert 0).
        c.verify(&certs[3], ca.public(), T + 10).unwrap();
        assert_eq!(c.len(), 3);
        assert!(c.get(&certs[0].hash()).is_some());
        assert!(c.get(&certs[1].hash()).is_none());
        // Next insert with nothing expired evicts the oldest (cert 0).
        // An expired cert is refused and never takes a slot.
        c.verify(&certs[1], ca.public(), T + 10).unwrap_err();
        assert_eq!(c.len(), 3);
        let id = Identity::generate().unwrap();
        let fifth = ca.sign(request(&id, "e", T - 10, T + 1000)).unwrap();
        c.verify(&fifth, ca.public(), T + 10).unwrap();
        assert_eq!(c.len(), 3);
        assert!(c.get(&certs[0].hash()).is_none());
        assert!(c.get(&certs[2].hash()).is_some());
    }
}
