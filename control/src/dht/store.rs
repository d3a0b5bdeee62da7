//! The bounded store of node records this DHT node holds for others.
//!
//! Owns the replacement and bounding rules: a higher `seq` replaces, an equal or lower one is
//! refused; each source (the storing node) may hold at most `per_source` entries and the store
//! at most `total`, expired entries being dropped before a bound refuses. Must never verify
//! (the caller verified the record and checked `valid_under(key)`), never grow without bound,
//! and iterate only in key order (BTreeMap) so runs are reproducible.

use std::collections::BTreeMap;

use thiserror::Error;

use super::key::Key;
use super::record::NodeRecord;

/// Bounds of a [`RecordStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most entries one source may hold.
    pub per_source: usize,
    /// Most entries in total.
    pub total: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            per_source: 32,
            total: 8192,
        }
    }
}

/// What a successful [`RecordStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new key.
    New,
    /// A record with a lower seq was replaced.
    Replaced,
    /// The same record (equal seq) is held already: a republish; nothing changed.
    Unchanged,
}

/// Why a [`RecordStore::put`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StoreRefusal {
    /// The stored record has a higher seq.
    #[error("a record with a higher seq is stored")]
    Stale,
    /// The source holds its maximum number of entries.
    #[error("source is at its per-source bound")]
    SourceFull,
    /// The store is full.
    #[error("record store full")]
    Full,
    /// The record already expired.
    #[error("record expired")]
    Expired,
}

/// Counters of store decisions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// New keys stored.
    pub stored: u64,
    /// Records replaced by a higher seq.
    pub replaced: u64,
    /// Refused: lower seq.
    pub stale: u64,
    /// Equal seq: held already (republishes).
    pub unchanged: u64,
    /// Refused: source at its bound.
    pub source_full: u64,
    /// Refused: store full.
    pub full: u64,
    /// Refused: already expired.
    pub refused_expired: u64,
    /// Entries dropped on expiry.
    pub expired: u64,
}

#[derive(Debug)]
struct Entry {
    rec: NodeRecord,
    source: Key,
}

/// Records by key, bounded per source and in total.
#[derive(Debug)]
pub struct RecordStore {
    limits: StoreLimits,
    entries: BTreeMap<Key, Entry>,
    per_source: BTreeMap<Key, usize>,
    stats: StoreStats,
}

impl RecordStore {
    /// An empty store with these bounds (each at least 1).
    #[must_use]
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits: StoreLimits {
                per_source: limits.per_source.max(1),
                total: limits.total.max(1),
            },
            entries: BTreeMap::new(),
            per_source: BTreeMap::new(),
            stats: StoreStats::default(),
        }
    }

    fn source_count(&self, source: &Key) -> usize {
        self.per_source.get(source).copied().unwrap_or(0)
    }

    fn charge(&mut self, source: Key) {
        *self.per_source.entry(source).or_insert(0) += 1;
    }

    fn release(&mut self, source: &Key) {
        if let Some(n) = self.per_source.get_mut(source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(source);
            }
        }
    }

    /// Stores `rec` under `key` on behalf of `source`. The caller has verified the record and
    /// checked `rec.valid_under(&key)`. A replacement is charged to the new source.
    ///
    /// # Errors
    /// [`StoreRefusal`]; a bound refuses only after expired entries were dropped.
    pub fn put(
        &mut self,
        key: Key,
        rec: NodeRecord,
        source: Key,
        now_wall_secs: u64,
    ) -> Result<Stored, StoreRefusal> {
        if rec.expires <= now_wall_secs {
            self.stats.refused_expired += 1;
            return Err(StoreRefusal::Expired);
        }
        let old = self
            .entries
            .get(&key)
            .filter(|e| e.rec.expires > now_wall_secs)
            .map(|e| (e.rec.seq, e.source));
        if let Some((seq, _)) = old {
            if rec.seq == seq {
                self.stats.unchanged += 1;
                return Ok(Stored::Unchanged);
            }
            if rec.seq < seq {
                self.stats.stale += 1;
                return Err(StoreRefusal::Stale);
            }
        }
        let same_source = matches!(old, Some((_, s)) if s == source);
        if !same_source && self.source_count(&source) >= self.limits.per_source {
            self.expire(now_wall_secs);
            if self.source_count(&source) >= self.limits.per_source {
                self.stats.source_full += 1;
                return Err(StoreRefusal::SourceFull);
            }
        }
        let present = self.entries.contains_key(&key);
        if !present && self.entries.len() >= self.limits.total {
            self.expire(now_wall_secs);
            if self.entries.len() >= self.limits.total {
                self.stats.full += 1;
                return Err(StoreRefusal::Full);
            }
        }
        let replaced = self.entries.insert(key, Entry { rec, source });
        match replaced {
            Some(e) => {
                self.release(&e.source);
                self.charge(source);
                // An expired entry overwritten counts as new, as if expiry had run first.
                if old.is_some() {
                    self.stats.replaced += 1;
                    Ok(Stored::Replaced)
                } else {
                    self.stats.stored += 1;
                    Ok(Stored::New)
                }
            }
            None => {
                self.charge(source);
                self.stats.stored += 1;
                Ok(Stored::New)
            }
        }
    }

    /// The unexpired record under `key`.
    #[must_use]
    pub fn get(&self, key: &Key, now_wall_secs: u64) -> Option<&NodeRecord> {
        self.entries
            .get(key)
            .map(|e| &e.rec)
            .filter(|r| r.expires > now_wall_secs)
    }

    /// Drops every expired entry.
    pub fn expire(&mut self, now_wall_secs: u64) {
        let dead: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| e.rec.expires <= now_wall_secs)
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            if let Some(e) = self.entries.remove(&k) {
                self.release(&e.source);
                self.stats.expired += 1;
            }
        }
    }

    /// Number of entries (expired ones included until [`Self::expire`]).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in key order (expired ones included until [`Self::expire`]).
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &NodeRecord)> + '_ {
        self.entries.iter().map(|(k, e)| (k, &e.rec))
    }

    /// The bounds in force.
    #[must_use]
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// Entries held for `source`.
    #[must_use]
    pub fn held_for(&self, source: &Key) -> usize {
        self.source_count(source)
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::request;
    use crate::cert::{Ca, NodeCert};
    use crate::identity::Identity;

    const T: u64 = 1_800_000_000;

    struct Fix {
        id: Identity,
        cert: NodeCert,
    }

    fn fix() -> Fix {
        let ca = Ca::generate("net").unwrap();
        let id = Identity::generate().unwrap();
        let cert = ca.sign(request(&id, "a", T - 10, T + 7200)).unwrap();
        Fix { id, cert }
    }

    fn rec(f: &Fix, seq: u64, expires: u64) -> NodeRecord {
        NodeRecord::sign(&f.id, &f.cert, vec![], vec![], seq, expires).unwrap()
    }

    fn k(i: u8) -> Key {
        Key([i; 32])
    }

    #[test]
    fn higher_seq_wins_equal_is_held_lower_refused() {
        let f = fix();
        let mut s = RecordStore::new(StoreLimits::default());
        assert_eq!(s.put(k(1), rec(&f, 5, T + 60), k(100), T), Ok(Stored::New));
        assert_eq!(
            s.put(k(1), rec(&f, 5, T + 90), k(100), T),
            Ok(Stored::Unchanged)
        );
        assert_eq!(s.stats().unchanged, 1);
        // The held one stays as it was.
        assert_eq!(s.get(&k(1), T).map(|r| r.expires), Some(T + 60));
        assert_eq!(
            s.put(k(1), rec(&f, 4, T + 90), k(101), T),
            Err(StoreRefusal::Stale)
        );
        assert_eq!(
            s.put(k(1), rec(&f, 4, T + 90), k(101), T),
            Err(StoreRefusal::Stale)
        );
        assert_eq!(s.get(&k(1), T).map(|r| r.seq), Some(5));
        assert_eq!(
            s.put(k(1), rec(&f, 6, T + 90), k(101), T),
            Ok(Stored::Replaced)
        );
        assert_eq!(s.get(&k(1), T).map(|r| r.seq), Some(6));
        // The replacement is charged to the new source.
        assert_eq!(s.held_for(&k(100)), 0);
        assert_eq!(s.held_for(&k(101)), 1);
        assert_eq!(s.stats().stale, 2);
        assert_eq!(
            s.put(k(2), rec(&f, 1, T), k(100), T),
            Err(StoreRefusal::Expired)
        );
    }

    #[test]
    fn flooding_source_is_capped_others_still_store() {
        let f = fix();
        let r = rec(&f, 1, T + 60);
        let mut s = RecordStore::new(StoreLimits {
            per_source: 4,
            total: 10,
        });
        let flooder = k(200);
        let mut refused = 0;
        for i in 0..50u8 {
            if s.put(k(i), r.clone(), flooder, T) == Err(StoreRefusal::SourceFull) {
                refused += 1;
            }
        }
        assert_eq!(refused, 46);
        assert_eq!(s.held_for(&flooder), 4);
        // Honest sources still store until the total bound.
        for i in 0..6u8 {
            assert_eq!(s.put(k(100 + i), r.clone(), k(210 + i), T), Ok(Stored::New));
        }
        assert_eq!(s.len(), 10);
        assert_eq!(s.put(k(150), r.clone(), k(230), T), Err(StoreRefusal::Full));
        assert_eq!(s.stats().source_full, 46);
        assert_eq!(s.stats().full, 1);
        // Deterministic iteration: key order.
        let keys: Vec<Key> = s.iter().map(|(k, _)| *k).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn expired_are_evicted_before_refusing() {
        let f = fix();
        let mut s = RecordStore::new(StoreLimits {
            per_source: 2,
            total: 3,
        });
        s.put(k(1), rec(&f, 1, T + 10), k(100), T).unwrap();
        s.put(k(2), rec(&f, 1, T + 100), k(100), T).unwrap();
        s.put(k(3), rec(&f, 1, T + 100), k(101), T).unwrap();
        // At T+20 k(1) expired: source 100 has room again, and the total too.
        assert_eq!(s.get(&k(1), T + 20), None);
        assert_eq!(
            s.put(k(4), rec(&f, 1, T + 100), k(100), T + 20),
            Ok(Stored::New)
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s.stats().expired, 1);
        // Total bound with nothing expired: refused.
        assert_eq!(
            s.put(k(5), rec(&f, 1, T + 100), k(102), T + 20),
            Err(StoreRefusal::Full)
        );
        // An expired entry no longer blocks a lower seq under its key (a restarted node's
        // counter), and expiry releases the sources' charges.
        assert_eq!(
            s.put(k(2), rec(&f, 0, T + 200), k(100), T + 100),
            Ok(Stored::New)
        );
        s.expire(T + 200);
        assert!(s.is_empty());
        assert_eq!(s.held_for(&k(100)), 0);
    }
}
