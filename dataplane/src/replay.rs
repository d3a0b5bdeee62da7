//! Anti-replay window for received data messages, a ring bitmap in the style of RFC 6479.
//!
//! Owns: which counters of one receive key have been accepted. The bitmap is a ring of
//! 64-bit words; moving the window forward clears only the words that now represent new
//! counters (at most the whole ring, so a far jump costs a bounded ~2 KiB clear), and one
//! word of the ring is slack so that the window never aliases the word being filled.
//!
//! Must never: be updated with a counter whose tag did not verify (callers run
//! [`ReplayWindow::update`] only after [`crate::crypto::open`] succeeded), allocate, or loop
//! more than [`BITMAP_WORDS`] times.

/// Words in the ring; a power of two so the word index is a mask, not a division.
pub const BITMAP_WORDS: usize = 256;
/// Bits in the ring.
pub const BITMAP_BITS: u64 = BITMAP_WORDS as u64 * 64;
/// How far behind the highest accepted counter a counter may be and still be accepted:
/// the ring less one word of slack (RFC 6479). 16320 ≥ the 8192 the design asks for.
pub const WINDOW: u64 = BITMAP_BITS - 64;

const WORD_MASK: u64 = BITMAP_WORDS as u64 - 1;

/// The replay window of one receive key.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest accepted counter plus one; 0 while nothing has been accepted. Storing +1 lets
    /// counter 0 be accepted without a separate "empty" flag.
    top: u64,
    bitmap: [u64; BITMAP_WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest())
            .finish_non_exhaustive()
    }
}

impl ReplayWindow {
    /// An empty window: every counter below `u64::MAX` would be accepted.
    pub const fn new() -> Self {
        Self {
            top: 0,
            bitmap: [0; BITMAP_WORDS],
        }
    }

    /// The highest counter accepted so far, if any.
    #[inline]
    pub fn highest(&self) -> Option<u64> {
        self.top.checked_sub(1)
    }

    /// Whether `counter` would be accepted now (not seen, not too old). Does not mark it.
    #[inline]
    pub fn check(&self, counter: u64) -> bool {
        let Some(n) = counter.checked_add(1) else {
            return false;
        };
        if n > self.top {
            return true;
        }
        if n.saturating_add(WINDOW) < self.top {
            return false;
        }
        let (word, bit) = Self::position(n);
        self.bitmap.get(word).is_some_and(|w| w & bit == 0)
    }

    /// Marks `counter` as received. Returns false (and changes nothing) if it was already
    /// received or lies more than [`WINDOW`] behind the highest accepted counter.
    /// `u64::MAX` is never accepted (sessions stop far below it).
    #[inline]
    pub fn update(&mut self, counter: u64) -> bool {
        let Some(n) = counter.checked_add(1) else {
            return false;
        };
        if n.saturating_add(WINDOW) < self.top {
            return false;
        }
        if n > self.top {
            // Clear the words strictly after the current top's word up to n's word: they
            // held counters that are now out of the window.
            let current = self.top >> 6;
            let target = n >> 6;
            let steps = (target - current).min(BITMAP_WORDS as u64);
            for i in 1..=steps {
                let idx = ((current + i) & WORD_MASK) as usize;
                if let Some(w) = self.bitmap.get_mut(idx) {
                    *w = 0;
                }
            }
            self.top = n;
        }
        let (word, bit) = Self::position(n);
        match self.bitmap.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }

    #[inline]
    fn position(n: u64) -> (usize, u64) {
        (((n >> 6) & WORD_MASK) as usize, 1u64 << (n & 63))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The naive model: a set of accepted counters and the highest one.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
        max: Option<u64>,
    }

    impl Model {
        fn accepts(&self, c: u64) -> bool {
            if c == u64::MAX || self.seen.contains(&c) {
                return false;
            }
            match self.max {
                Some(m) => c > m || m - c <= WINDOW,
                None => true,
            }
        }
        fn update(&mut self, c: u64) -> bool {
            let ok = self.accepts(c);
            if ok {
                self.seen.insert(c);
                self.max = Some(self.max.map_or(c, |m| m.max(c)));
            }
            ok
        }
    }

    #[test]
    fn basic_sequence() {
        let mut w = ReplayWindow::new();
        assert!(w.check(0));
        assert!(w.update(0));
        assert!(!w.update(0));
        assert!(!w.check(0));
        assert!(w.update(2));
        assert!(w.update(1));
        assert!(!w.update(1));
        assert_eq!(w.highest(), Some(2));
    }

    #[test]
    fn window_edge_and_far_jump() {
        let mut w = ReplayWindow::new();
        let top = 100_000u64;
        assert!(w.update(top));
        assert!(w.check(top - WINDOW));
        assert!(!w.check(top - WINDOW - 1));
        assert!(w.update(top - WINDOW));
        assert!(!w.update(top - WINDOW));
        // Far jump: everything older is out of the window, nothing new is marked.
        let far = top + 10 * BITMAP_BITS + 17;
        assert!(w.update(far));
        assert!(!w.update(top));
        for c in far - WINDOW..far {
            assert!(w.check(c), "counter {c} should be fresh after a far jump");
        }
        assert!(!w.update(u64::MAX));
    }

    #[test]
    fn word_wrap_keeps_old_bits_in_window() {
        let mut w = ReplayWindow::new();
        for c in 0..(BITMAP_BITS * 3) {
            if c % 3 == 0 {
                assert!(w.update(c));
            }
        }
        let top = BITMAP_BITS * 3 - 3;
        for c in top - WINDOW..=top {
            assert_eq!(w.check(c), c % 3 != 0, "counter {c}");
        }
    }

    fn op() -> impl Strategy<Value = u64> {
        prop_oneof![
            4 => 0u64..64,                    // small deltas (reordering)
            2 => 0u64..(2 * BITMAP_BITS),    // word wraps
            1 => 0u64..(1 << 40),             // far jumps
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn matches_set_model(deltas in proptest::collection::vec((op(), any::<bool>(), any::<bool>()), 1..400)) {
            let mut w = ReplayWindow::new();
            let mut m = Model::default();
            let mut cur: u64 = 0;
            for (d, back, dup) in deltas {
                // Walk forward or backward from the current position, sometimes repeating.
                let c = if dup { cur } else if back { cur.saturating_sub(d) } else { cur.saturating_add(d) };
                prop_assert_eq!(w.check(c), m.accepts(c), "check {}", c);
                prop_assert_eq!(w.update(c), m.update(c), "update {}", c);
                cur = c;
            }
        }
    }
}
