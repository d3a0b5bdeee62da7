//! Cryptokey routing: the allowed-IPs table mapping overlay prefixes to peers.
//!
//! Owns: longest-prefix match of IPv4 and IPv6 addresses to a value (a peer id), used
//! outbound (inner destination picks the peer) and inbound (the inner source must map back
//! to the peer that sent the packet, as WireGuard's allowedips does).
//!
//! Structure: one path-compressed binary trie per address family (a PATRICIA trie as in
//! WireGuard's allowedips), nodes kept in one `Vec` and linked by `u32` indices so a lookup
//! walks a compact array with one XOR + leading-zero count per node. The depth is bounded by the number
//! of branching points on the path (about log2 of the number of prefixes for random sets),
//! not by the address width.
//!
//! Must never: allocate or lock in [`RoutingTable::lookup`] / [`RoutingTable::allows`].
//! Updates (from the control plane) may allocate; removals leave value-less nodes behind and
//! the trie is rebuilt once those outnumber the live entries, so memory stays bounded.
//! IPv4-mapped IPv6 addresses are treated as IPv6: callers pass what the packet carries.

use core::net::IpAddr;

/// Errors of route updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The prefix length exceeds the address width.
    #[error("prefix length {got} too long: expected at most {max} for this address family")]
    PrefixTooLong {
        /// The family's width (32 or 128).
        max: u8,
        /// The length given.
        got: u8,
    },
    /// The table reached its node limit (`u32` indices).
    #[error("routing table full")]
    TableFull,
}

/// Link value meaning "no child"; `Vec::get` on it returns `None`, which ends a walk.
const NIL: u32 = u32::MAX;
/// Rebuild after removals once this many dead nodes exist beyond the live count.
const REBUILD_SLACK: usize = 64;

/// An address family's key: a big-endian address as an unsigned integer.
trait Key: Copy + Eq {
    const BITS: u8;
    /// The mask of the first `len` bits (`len <= BITS`).
    fn mask(len: u8) -> Self;
    fn and(self, other: Self) -> Self;
    /// Bit `i` counted from the most significant (`i < BITS`), as a child index.
    fn bit(self, i: u8) -> usize;
    /// Number of leading bits equal in both.
    fn common(self, other: Self) -> u8;
    /// The `s` bits after the first `c` (`c + s <= BITS`, `s <= 16`), as a table index.
    fn index(self, c: u8, s: u8) -> usize;
    /// `self` with the `s` bits after the first `c` replaced by `e`.
    fn with_index(self, c: u8, s: u8, e: usize) -> Self;
}

impl Key for u32 {
    const BITS: u8 = 32;
    #[inline]
    fn mask(len: u8) -> Self {
        u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0)
    }
    #[inline]
    fn and(self, other: Self) -> Self {
        self & other
    }
    #[inline]
    fn bit(self, i: u8) -> usize {
        (self.wrapping_shr(31u32.wrapping_sub(u32::from(i))) & 1) as usize
    }
    #[inline]
    fn common(self, other: Self) -> u8 {
        (self ^ other).leading_zeros() as u8
    }
    #[inline]
    fn index(self, c: u8, s: u8) -> usize {
        let v = self.checked_shl(u32::from(c)).unwrap_or(0);
        v.checked_shr(32 - u32::from(s)).unwrap_or(0) as usize
    }
    #[inline]
    fn with_index(self, c: u8, s: u8, e: usize) -> Self {
        let shift = 32 - u32::from(c) - u32::from(s);
        let field = Self::mask(c + s) & !Self::mask(c);
        (self & !field) | ((e as u32).checked_shl(shift).unwrap_or(0) & field)
    }
}

impl Key for u128 {
    const BITS: u8 = 128;
    #[inline]
    fn mask(len: u8) -> Self {
        u128::MAX
            .checked_shl(128 - u32::from(len.min(128)))
            .unwrap_or(0)
    }
    #[inline]
    fn and(self, other: Self) -> Self {
        self & other
    }
    #[inline]
    fn bit(self, i: u8) -> usize {
        (self.wrapping_shr(127u32.wrapping_sub(u32::from(i))) & 1) as usize
    }
    #[inline]
    fn common(self, other: Self) -> u8 {
        (self ^ other).leading_zeros() as u8
    }
    #[inline]
    fn index(self, c: u8, s: u8) -> usize {
        let v = self.checked_shl(u32::from(c)).unwrap_or(0);
        v.checked_shr(128 - u32::from(s)).unwrap_or(0) as usize
    }
    #[inline]
    fn with_index(self, c: u8, s: u8, e: usize) -> Self {
        let shift = 128 - u32::from(c) - u32::from(s);
        let field = Self::mask(c + s) & !Self::mask(c);
        (self & !field) | ((e as u128).checked_shl(shift).unwrap_or(0) & field)
    }
}

/// One entry of the root stride table: where to continue the walk for addresses whose
/// next `tbits` bits after the root prefix equal the entry's index, and the best value
/// already matched above that point.
#[derive(Clone, Copy)]
struct Bucket {
    start: u32,
    /// Node index of the deepest valued node above `start`, or [`NIL`].
    best: u32,
}

/// Largest stride table: 2^16 entries of 8 bytes.
const MAX_TABLE_BITS: u8 = 16;
/// Below this many prefixes a plain walk is short enough; no table.
const MIN_TABLE_ENTRIES: usize = 32;

/// Table width for `live` prefixes: 4 to 8 entries per prefix, capped.
fn table_bits_for(live: usize) -> u8 {
    if live < MIN_TABLE_ENTRIES {
        return 0;
    }
    let log2 = (usize::BITS - 1 - live.leading_zeros()) as u8;
    (log2 + 2).min(MAX_TABLE_BITS)
}

#[derive(Clone)]
struct Node<K> {
    /// The prefix, host bits zero.
    key: K,
    child: [u32; 2],
    len: u8,
    /// Whether `values[this node]` holds a value. Values live in a parallel array so a
    /// node stays small (16 bytes for IPv4, 32 for IPv6: never straddling a cache line).
    has_value: bool,
}

/// Where a link lives: the root pointer or one of a node's two children.
#[derive(Clone, Copy)]
enum Slot {
    Root,
    Child(u32, usize),
}

#[derive(Clone)]
struct Trie<K, T> {
    nodes: Vec<Node<K>>,
    /// Parallel to `nodes`.
    values: Vec<Option<T>>,
    root: u32,
    live: usize,
    /// Root stride table: indexed by the `tbits` address bits that follow the root node's
    /// prefix (`tbase` bits long), it skips the top of the walk, where random prefix sets
    /// put most of their branching. Empty when `tbits == 0`.
    table: Vec<Bucket>,
    tbase: u8,
    tbits: u8,
}

impl<K: Key, T: Copy + Eq> Trie<K, T> {
    fn new() -> Self {
        Self {
            nodes: Vec::new(),
            values: Vec::new(),
            root: NIL,
            live: 0,
            table: Vec::new(),
            tbase: 0,
            tbits: 0,
        }
    }

    #[inline]
    fn lookup(&self, key: K) -> Option<T> {
        let (mut i, mut found) = (self.root, NIL);
        if self.tbits > 0 {
            let root = self.nodes.get(self.root as usize)?;
            if key.common(root.key) < root.len {
                // Every prefix lies under the root's: nothing can match.
                return None;
            }
            let b = self.table.get(key.index(self.tbase, self.tbits))?;
            (i, found) = (b.start, b.best);
        }
        // Remember the deepest valued node and read its value once at the end.
        while let Some(n) = self.nodes.get(i as usize) {
            if key.common(n.key) < n.len {
                break;
            }
            if n.has_value {
                found = i;
            }
            if n.len >= K::BITS {
                break;
            }
            i = n.child[key.bit(n.len) & 1];
        }
        self.values.get(found as usize).copied().flatten()
    }

    fn get_slot(&self, s: Slot) -> u32 {
        match s {
            Slot::Root => self.root,
            Slot::Child(p, d) => self.nodes.get(p as usize).map_or(NIL, |n| n.child[d & 1]),
        }
    }

    fn set_slot(&mut self, s: Slot, v: u32) {
        match s {
            Slot::Root => self.root = v,
            Slot::Child(p, d) => {
                if let Some(n) = self.nodes.get_mut(p as usize) {
                    n.child[d & 1] = v;
                }
            }
        }
    }

    fn push(&mut self, key: K, len: u8, value: Option<T>) -> Result<u32, RouteError> {
        let idx = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&i| i < NIL)
            .ok_or(RouteError::TableFull)?;
        let mask = K::mask(len);
        self.nodes.push(Node {
            key: key.and(mask),
            child: [NIL, NIL],
            len,
            has_value: value.is_some(),
        });
        self.values.push(value);
        Ok(idx)
    }

    fn set_child(&mut self, node: u32, dir: usize, to: u32) {
        if let Some(n) = self.nodes.get_mut(node as usize) {
            n.child[dir & 1] = to;
        }
    }

    fn insert(&mut self, key: K, len: u8, value: T) -> Result<Option<T>, RouteError> {
        let (old, changed_key, changed_len) = self.insert_node(key, len, value)?;
        if table_bits_for(self.live) != self.tbits {
            self.rebuild_table();
        } else {
            self.refresh_table(changed_key, changed_len);
        }
        Ok(old)
    }

    /// Trie insert; returns the old value and the prefix of the subtree that changed.
    fn insert_node(&mut self, key: K, len: u8, value: T) -> Result<(Option<T>, K, u8), RouteError> {
        let key = key.and(K::mask(len));
        let mut slot = Slot::Root;
        loop {
            let cur = self.get_slot(slot);
            let Some(n) = self.nodes.get_mut(cur as usize) else {
                let leaf = self.push(key, len, Some(value))?;
                self.set_slot(slot, leaf);
                self.live += 1;
                return Ok((None, key, len));
            };
            let (nkey, nlen) = (n.key, n.len);
            let common = key.common(nkey).min(len).min(nlen);
            if common == nlen {
                if nlen == len {
                    n.has_value = true;
                    let old = self
                        .values
                        .get_mut(cur as usize)
                        .and_then(|v| v.replace(value));
                    if old.is_none() {
                        self.live += 1;
                    }
                    return Ok((old, key, len));
                }
                slot = Slot::Child(cur, key.bit(nlen));
                continue;
            }
            if common == len {
                // The new prefix covers the existing node: it becomes its parent.
                let new = self.push(key, len, Some(value))?;
                self.set_child(new, nkey.bit(len), cur);
                self.set_slot(slot, new);
                self.live += 1;
                return Ok((None, key, len));
            }
            // Diverge below both: a value-less branching node at the common length.
            let mid = self.push(key, common, None)?;
            let leaf = self.push(key, len, Some(value))?;
            self.set_child(mid, key.bit(common), leaf);
            self.set_child(mid, nkey.bit(common), cur);
            self.set_slot(slot, mid);
            self.live += 1;
            return Ok((None, key.and(K::mask(common)), common));
        }
    }

    fn find_exact(&self, key: K, len: u8) -> Option<usize> {
        let key = key.and(K::mask(len));
        let mut i = self.root;
        while let Some(n) = self.nodes.get(i as usize) {
            if n.len > len || key.common(n.key) < n.len {
                return None;
            }
            if n.len == len {
                return Some(i as usize);
            }
            i = n.child[key.bit(n.len) & 1];
        }
        None
    }

    fn remove(&mut self, key: K, len: u8) -> Option<T> {
        let i = self.find_exact(key, len)?;
        self.nodes.get_mut(i)?.has_value = false;
        let old = self.values.get_mut(i)?.take();
        if old.is_some() {
            self.live -= 1;
            if !self.maybe_rebuild() {
                self.refresh_table(key.and(K::mask(len)), len);
            }
        }
        old
    }

    fn remove_value(&mut self, value: T) -> usize {
        let mut removed = 0;
        for (n, v) in self.nodes.iter_mut().zip(self.values.iter_mut()) {
            if *v == Some(value) {
                *v = None;
                n.has_value = false;
                removed += 1;
            }
        }
        self.live -= removed;
        if removed > 0 && !self.maybe_rebuild() {
            self.rebuild_table();
        }
        removed
    }

    /// Rebuilds the trie without dead nodes once they dominate; returns whether it did.
    fn maybe_rebuild(&mut self) -> bool {
        if self.nodes.len() <= 2 * self.live + REBUILD_SLACK {
            return false;
        }
        let entries: Vec<(K, u8, T)> = self.entries().collect();
        let mut fresh = Self::new();
        for (k, l, v) in entries {
            // Cannot fail: the fresh trie needs no more nodes than the old one had.
            let _ = fresh.insert_node(k, l, v);
        }
        *self = fresh;
        self.rebuild_table();
        true
    }

    /// Recomputes the whole stride table (its width follows the prefix count).
    fn rebuild_table(&mut self) {
        self.table.clear();
        self.tbits = 0;
        let Some(root) = self.nodes.get(self.root as usize) else {
            return;
        };
        let bits = table_bits_for(self.live).min(K::BITS - root.len);
        if bits == 0 {
            self.table.shrink_to_fit();
            return;
        }
        self.tbase = root.len;
        self.tbits = bits;
        self.table.resize(
            1 << bits,
            Bucket {
                start: NIL,
                best: NIL,
            },
        );
        for e in 0..self.table.len() {
            self.fill_bucket(e);
        }
    }

    /// Recomputes the buckets whose addresses can fall under `key/len` after a change there.
    fn refresh_table(&mut self, key: K, len: u8) {
        if self.tbits == 0 {
            return;
        }
        let root_changed = self
            .nodes
            .get(self.root as usize)
            .is_none_or(|r| r.len != self.tbase);
        if root_changed || len < self.tbase {
            self.rebuild_table();
            return;
        }
        let end = self.tbase + self.tbits;
        let first = key.index(self.tbase, self.tbits);
        let count = if len >= end { 1 } else { 1usize << (end - len) };
        for e in first..first.saturating_add(count).min(self.table.len()) {
            self.fill_bucket(e);
        }
    }

    /// Walks the nodes shorter than the table's end for bucket `e`: they are decided by the
    /// bucket's bits alone. The first node at or past the end is where lookups continue.
    fn fill_bucket(&mut self, e: usize) {
        let Some(root) = self.nodes.get(self.root as usize) else {
            return;
        };
        let end = self.tbase + self.tbits;
        let k = root.key.with_index(self.tbase, self.tbits, e);
        let (mut i, mut best) = (self.root, NIL);
        while let Some(n) = self.nodes.get(i as usize) {
            if n.len >= end {
                break;
            }
            if k.common(n.key) < n.len {
                i = NIL;
                break;
            }
            if n.has_value {
                best = i;
            }
            i = n.child[k.bit(n.len) & 1];
        }
        if let Some(b) = self.table.get_mut(e) {
            *b = Bucket { start: i, best };
        }
    }

    fn entries(&self) -> impl Iterator<Item = (K, u8, T)> + '_ {
        self.nodes
            .iter()
            .zip(self.values.iter())
            .filter_map(|(n, v)| v.map(|v| (n.key, n.len, v)))
    }
}

/// The cryptokey routing table: overlay prefixes (IPv4 and IPv6) to values, usually
/// [`crate::session::PeerId`]s.
#[derive(Clone)]
pub struct RoutingTable<T: Copy + Eq> {
    v4: Trie<u32, T>,
    v6: Trie<u128, T>,
}

impl<T: Copy + Eq> Default for RoutingTable<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Eq> core::fmt::Debug for RoutingTable<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RoutingTable")
            .field("v4", &self.v4.live)
            .field("v6", &self.v6.live)
            .finish()
    }
}

impl<T: Copy + Eq> RoutingTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            v4: Trie::new(),
            v6: Trie::new(),
        }
    }

    /// Maps `addr/prefix_len` to `value` (host bits of `addr` are ignored). Returns the value
    /// the same prefix had before, if any.
    pub fn insert(
        &mut self,
        addr: IpAddr,
        prefix_len: u8,
        value: T,
    ) -> Result<Option<T>, RouteError> {
        match addr {
            IpAddr::V4(a) => {
                check_len(prefix_len, 32)?;
                self.v4.insert(u32::from(a), prefix_len, value)
            }
            IpAddr::V6(a) => {
                check_len(prefix_len, 128)?;
                self.v6.insert(u128::from(a), prefix_len, value)
            }
        }
    }

    /// Removes exactly `addr/prefix_len`; returns its value if it was present.
    pub fn remove(&mut self, addr: IpAddr, prefix_len: u8) -> Option<T> {
        match addr {
            IpAddr::V4(a) if prefix_len <= 32 => self.v4.remove(u32::from(a), prefix_len),
            IpAddr::V6(a) if prefix_len <= 128 => self.v6.remove(u128::from(a), prefix_len),
            _ => None,
        }
    }

    /// Removes every prefix mapped to `value` (all of a peer's routes); returns how many.
    pub fn remove_value(&mut self, value: T) -> usize {
        self.v4.remove_value(value) + self.v6.remove_value(value)
    }

    /// Longest-prefix match. Never allocates.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// Inbound cryptokey check: whether `src` routes back to `peer`.
    #[inline]
    pub fn allows(&self, peer: T, src: IpAddr) -> bool {
        self.lookup(src) == Some(peer)
    }

    /// Number of prefixes in the table.
    pub fn len(&self) -> usize {
        self.v4.live + self.v6.live
    }

    /// Whether the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every `(prefix, length, value)` in the table, in no particular order (allocates
    /// nothing itself; meant for status reports).
    pub fn entries(&self) -> impl Iterator<Item = (IpAddr, u8, T)> + '_ {
        let v4 = self
            .v4
            .entries()
            .map(|(k, l, v)| (IpAddr::from(core::net::Ipv4Addr::from(k)), l, v));
        let v6 = self
            .v6
            .entries()
            .map(|(k, l, v)| (IpAddr::from(core::net::Ipv6Addr::from(k)), l, v));
        v4.chain(v6)
    }
}

fn check_len(got: u8, max: u8) -> Result<(), RouteError> {
    if got > max {
        Err(RouteError::PrefixTooLong { max, got })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use proptest::prelude::*;

    /// Linear-scan model: the longest matching prefix wins; later inserts replace.
    #[derive(Default)]
    struct Model {
        v: Vec<(IpAddr, u8, u32)>,
    }

    fn masked(a: IpAddr, l: u8) -> IpAddr {
        match a {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & <u32 as Key>::mask(l))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & <u128 as Key>::mask(l))),
        }
    }

    impl Model {
        fn insert(&mut self, a: IpAddr, l: u8, v: u32) -> Option<u32> {
            let a = masked(a, l);
            for e in &mut self.v {
                if e.0 == a && e.1 == l {
                    let old = e.2;
                    e.2 = v;
                    return Some(old);
                }
            }
            self.v.push((a, l, v));
            None
        }
        fn remove(&mut self, a: IpAddr, l: u8) -> Option<u32> {
            let a = masked(a, l);
            let i = self.v.iter().position(|e| e.0 == a && e.1 == l)?;
            Some(self.v.swap_remove(i).2)
        }
        fn remove_value(&mut self, v: u32) -> usize {
            let n = self.v.len();
            self.v.retain(|e| e.2 != v);
            n - self.v.len()
        }
        fn lookup(&self, a: IpAddr) -> Option<u32> {
            self.v
                .iter()
                .filter(|e| e.0.is_ipv4() == a.is_ipv4() && masked(a, e.1) == e.0)
                .max_by_key(|e| e.1)
                .map(|e| e.2)
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = RoutingTable::new();
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        t.insert(a("100.64.0.0"), 10, 1).unwrap();
        t.insert(a("100.64.1.0"), 24, 2).unwrap();
        t.insert(a("100.64.1.7"), 32, 3).unwrap();
        t.insert(a("fd00::"), 8, 4).unwrap();
        t.insert(a("fd00:1::"), 32, 5).unwrap();
        assert_eq!(t.lookup(a("100.64.1.7")), Some(3));
        assert_eq!(t.lookup(a("100.64.1.8")), Some(2));
        assert_eq!(t.lookup(a("100.100.0.1")), Some(1));
        assert_eq!(t.lookup(a("100.128.0.1")), None);
        assert_eq!(t.lookup(a("fd00:1::9")), Some(5));
        assert_eq!(t.lookup(a("fd77::1")), Some(4));
        assert_eq!(t.lookup(a("fe80::1")), None);
        assert!(t.allows(3, a("100.64.1.7")));
        assert!(!t.allows(2, a("100.64.1.7")));
        assert_eq!(t.len(), 5);
        assert_eq!(t.insert(a("100.64.1.99"), 24, 9).unwrap(), Some(2));
        assert_eq!(t.remove(a("100.64.1.7"), 32), Some(3));
        assert_eq!(t.lookup(a("100.64.1.7")), Some(9));
        assert_eq!(t.remove_value(9), 1);
        assert_eq!(t.lookup(a("100.64.1.7")), Some(1));
        assert_eq!(
            t.insert(a("1.2.3.4"), 33, 1),
            Err(RouteError::PrefixTooLong { max: 32, got: 33 })
        );
        assert!(t.insert(a("::"), 129, 1).is_err());
        t.insert(a("0.0.0.0"), 0, 7).unwrap();
        assert_eq!(t.lookup(a("8.8.8.8")), Some(7));
        assert_eq!(t.entries().count(), t.len());
    }

    /// Thousands of prefixes (so the stride table is wide and partly refreshed on every
    /// change) against the model, with removals interleaved.
    #[test]
    fn large_table_with_stride_matches_model() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = RoutingTable::new();
        let mut m = Model::default();
        for i in 0..3000u32 {
            let r = rnd();
            let (a, l) = if r % 2 == 0 {
                // Clustered under 100.64.0.0/10 with some short covering prefixes.
                let a = 0x6440_0000 | (rnd() as u32 & 0x003f_ffff);
                (
                    IpAddr::V4(Ipv4Addr::from(a)),
                    [10, 16, 24, 32][(r >> 8) as usize % 4],
                )
            } else {
                let a = (u128::from(rnd()) << 64) | u128::from(rnd());
                (IpAddr::V6(Ipv6Addr::from(a)), (r >> 8) as u8 % 129)
            };
            assert_eq!(t.insert(a, l, i % 50).unwrap(), m.insert(a, l, i % 50));
            if i % 7 == 0 {
                let (ra, rl, _) = m.v[(rnd() % m.v.len() as u64) as usize];
                assert_eq!(t.remove(ra, rl), m.remove(ra, rl));
            }
            if i % 997 == 0 {
                assert_eq!(t.remove_value(i % 50), m.remove_value(i % 50));
            }
        }
        assert_eq!(t.len(), m.v.len());
        for &(a, l, _) in &m.v {
            // Inside each stored prefix, at a random host part.
            let probe = match a {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(
                    u32::from(a) | (rnd() as u32 & !<u32 as Key>::mask(l)),
                )),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(
                    u128::from(a) | (u128::from(rnd()) & !<u128 as Key>::mask(l)),
                )),
            };
            assert_eq!(t.lookup(probe), m.lookup(probe), "probe {probe}");
        }
        for _ in 0..3000 {
            let p = IpAddr::V4(Ipv4Addr::from(0x6440_0000 | (rnd() as u32 & 0x003f_ffff)));
            assert_eq!(t.lookup(p), m.lookup(p));
            let q = IpAddr::V6(Ipv6Addr::from(u128::from(rnd()) << 64));
            assert_eq!(t.lookup(q), m.lookup(q));
        }
    }

    fn addr() -> impl Strategy<Value = IpAddr> {
        // Few distinct top bits so prefixes nest and collide often.
        prop_oneof![
            (0u32..16, any::<u32>())
                .prop_map(|(hi, lo)| IpAddr::V4(Ipv4Addr::from((hi << 28) | (lo >> 4)))),
            (0u128..16, any::<u128>())
                .prop_map(|(hi, lo)| IpAddr::V6(Ipv6Addr::from((hi << 124) | (lo >> 4)))),
        ]
    }

    fn prefix() -> impl Strategy<Value = (IpAddr, u8)> {
        addr().prop_flat_map(|a| {
            let max = if a.is_ipv4() { 32u8 } else { 128 };
            (Just(a), 0..=max)
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(IpAddr, u8, u32),
        Remove(IpAddr, u8),
        RemoveValue(u32),
        Lookup(IpAddr),
    }

    fn ops() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (prefix(), 0u32..8).prop_map(|((a, l), v)| Op::Insert(a, l, v)),
            2 => prefix().prop_map(|(a, l)| Op::Remove(a, l)),
            1 => (0u32..8).prop_map(Op::RemoveValue),
            6 => addr().prop_map(Op::Lookup),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_linear_model(seq in proptest::collection::vec(ops(), 1..300)) {
            let mut t = RoutingTable::new();
            let mut m = Model::default();
            for op in seq {
                match op {
                    Op::Insert(a, l, v) => prop_assert_eq!(t.insert(a, l, v).unwrap(), m.insert(a, l, v)),
                    Op::Remove(a, l) => prop_assert_eq!(t.remove(a, l), m.remove(a, l)),
                    Op::RemoveValue(v) => prop_assert_eq!(t.remove_value(v), m.remove_value(v)),
                    Op::Lookup(a) => prop_assert_eq!(t.lookup(a), m.lookup(a), "lookup {}", a),
                }
                prop_assert_eq!(t.len(), m.v.len());
            }
            // Every stored prefix's own address resolves as the model says.
            for &(a, _, _) in &m.v {
                prop_assert_eq!(t.lookup(a), m.lookup(a));
            }
        }
    }
}
