//! Process-wide interning of large immutable values (certificates, record signatures) by the
//! SHA-256 of their bytes.
//!
//! A post-quantum certificate is ~9 KB parsed and a record signature 4.6 KB; a node holds the
//! same one in its certificate cache, its record store (once per key) and its sessions, and the
//! simulator holds thousands of nodes in one process. Interning makes every copy after the
//! first a reference count. Owns only weak references: a value nobody holds any more goes, and
//! dead entries are swept when the table has doubled since the last sweep, so the table stays
//! within twice the live values. A hit is confirmed by comparing the full bytes, so a hash
//! collision (or a forged value sharing a hash slot) can cost a miss, never a wrong value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

struct Table<T> {
    map: HashMap<[u8; 32], Weak<T>>,
    sweep_at: usize,
}

/// A table of live `T`s by SHA-256 of their bytes; use as a `static`.
pub struct Interner<T> {
    table: OnceLock<Mutex<Table<T>>>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Interner<T> {
    /// An empty table.
    #[must_use]
    pub const fn new() -> Self {
        Self {
            table: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table<T>> {
        self.table
            .get_or_init(|| {
                Mutex::new(Table {
                    map: HashMap::new(),
                    sweep_at: 1024,
                })
            })
            .lock()
            // The map holds no invariant a panicking holder could break half-way.
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live value whose hash is `hash` and for which `same` holds (the caller compares
    /// the full bytes).
    pub fn get(&self, hash: &[u8; 32], same: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        let live = self.lock().map.get(hash)?.upgrade()?;
        same(&live).then_some(live)
    }

    /// The live value equal to `value` (by `same`) if there is one, else `value`, now shared.
    pub fn intern(&self, hash: [u8; 32], value: T, same: impl Fn(&T, &T) -> bool) -> Arc<T> {
        let mut t = self.lock();
        if let Some(live) = t.map.get(&hash).and_then(Weak::upgrade) {
            if same(&live, &value) {
                return live;
            }
        }
        let arc = Arc::new(value);
        t.map.insert(hash, Arc::downgrade(&arc));
        if t.map.len() >= t.sweep_at {
            t.map.retain(|_, w| w.strong_count() > 0);
            t.sweep_at = (t.map.len() * 2).max(1024);
        }
        arc
    }

    /// Entries in the table (live or not yet swept).
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Whether the table is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_and_dead_ones_go() {
        static T: Interner<Vec<u8>> = Interner::new();
        let same = |a: &Vec<u8>, b: &Vec<u8>| a == b;
        let a = T.intern([1; 32], vec![1, 2, 3], same);
        let b = T.intern([1; 32], vec![1, 2, 3], same);
        assert!(Arc::ptr_eq(&a, &b));
        // Same hash slot, other bytes: not confused with the live value.
        let c = T.intern([1; 32], vec![9], same);
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(T.get(&[1; 32], |v| v == &[1, 2, 3]).is_none());
        assert_eq!(T.get(&[1; 32], |v| v == &[9]).as_deref(), Some(&vec![9]));
        drop(c);
        assert!(T.get(&[1; 32], |_| true).is_none(), "dead value handed out");
        // Sweeping keeps the table near the live count.
        let live: Vec<_> = (0..3000u32)
            .map(|i| {
                let mut h = [0; 32];
                h[..4].copy_from_slice(&i.to_le_bytes());
                T.intern(h, vec![0; 1], same)
            })
            .collect();
        drop(live);
        for i in 0..3000u32 {
            let mut h = [0; 32];
            h[..4].copy_from_slice(&(i + 10_000).to_le_bytes());
            drop(T.intern(h, vec![0; 1], same));
        }
        assert!(T.len() < 3000, "table kept {} dead entries", T.len());
    }
}
