//! What a home node remembers for NAT traversal: the nodes that sent it an authenticated
//! request lately (and from where), so that it can pass an introduction on to them, and how
//! many introductions each node asked for, so that nobody can make it a traffic source.
//!
//! A node behind a NAT keeps its binding (and its NAT's mapping) fresh by pinging its homes
//! every [`crate::node::HOME_KEEPALIVE`]; a binding older than [`BIND_TIMEOUT`] is not used
//! (the NAT may have forgotten the mapping). Both tables are bounded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::key::Key;

/// A binding is used for this long after the node's last authenticated request.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(60);
/// Most nodes bound at once.
pub const MAX_BINDINGS: usize = 4096;
/// Introductions one node may ask for per [`INTRO_WINDOW`].
pub const INTROS_PER_WINDOW: u32 = 16;
/// Window of the per-node introduction budget.
pub const INTRO_WINDOW: Duration = Duration::from_secs(10);

/// Nodes bound to us, and their introduction budgets.
#[derive(Debug, Default)]
pub struct Bindings {
    bound: BTreeMap<Key, (SocketAddr, Duration)>,
    budget: BTreeMap<Key, (Duration, u32)>,
}

impl Bindings {
    /// `id` sent an authenticated request from `addr` at `now`. When the table is full, the
    /// expired bindings go; if none has expired, a new node is not bound (the ones that keep
    /// their bindings fresh are not pushed out by a flood of new members).
    pub fn touch(&mut self, id: Key, addr: SocketAddr, now: Duration) {
        if !self.bound.contains_key(&id) && self.bound.len() >= MAX_BINDINGS {
            self.bound
                .retain(|_, (_, t)| now.saturating_sub(*t) < BIND_TIMEOUT);
            if self.bound.len() >= MAX_BINDINGS {
                return;
            }
        }
        self.bound.insert(id, (addr, now));
    }

    /// Where `id` is bound now, if it is.
    #[must_use]
    pub fn get(&self, id: &Key, now: Duration) -> Option<SocketAddr> {
        self.bound
            .get(id)
            .filter(|(_, t)| now.saturating_sub(*t) < BIND_TIMEOUT)
            .map(|(a, _)| *a)
    }

    /// Nodes bound now.
    #[must_use]
    pub fn len(&self, now: Duration) -> usize {
        self.bound
            .values()
            .filter(|(_, t)| now.saturating_sub(*t) < BIND_TIMEOUT)
            .count()
    }

    /// Charges one introduction to `id`; false when its budget for this window is spent (or
    /// the budget table is full of live windows).
    pub fn charge(&mut self, id: Key, now: Duration) -> bool {
        if !self.budget.contains_key(&id) && self.budget.len() >= MAX_BINDINGS {
            self.budget
                .retain(|_, (start, _)| now.saturating_sub(*start) < INTRO_WINDOW);
            if self.budget.len() >= MAX_BINDINGS {
                return false;
            }
        }
        let e = self.budget.entry(id).or_insert((now, 0));
        if now.saturating_sub(e.0) >= INTRO_WINDOW {
            *e = (now, 0);
        }
        if e.1 >= INTROS_PER_WINDOW {
            return false;
        }
        e.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u16) -> Key {
        let mut b = [0u8; 32];
        b[..2].copy_from_slice(&i.to_le_bytes());
        Key(b)
    }

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 7], p))
    }

    #[test]
    fn a_binding_expires_and_follows_the_newest_address() {
        let mut b = Bindings::default();
        let t = Duration::from_secs(100);
        b.touch(k(1), a(1), t);
        assert_eq!(b.get(&k(1), t + Duration::from_secs(59)), Some(a(1)));
        assert_eq!(b.get(&k(1), t + BIND_TIMEOUT), None);
        b.touch(k(1), a(2), t + Duration::from_secs(30));
        assert_eq!(b.get(&k(1), t + Duration::from_secs(60)), Some(a(2)));
        assert_eq!(b.get(&k(2), t), None);
    }

    #[test]
    fn a_full_table_keeps_fresh_bindings_and_takes_new_ones_after_expiry() {
        let mut b = Bindings::default();
        let t = Duration::from_secs(10);
        for i in 0..MAX_BINDINGS {
            b.touch(k(i as u16), a(1), t);
        }
        b.touch(k(60_000), a(2), t + Duration::from_secs(1));
        assert_eq!(b.get(&k(60_000), t + Duration::from_secs(1)), None);
        assert_eq!(b.get(&k(5), t + Duration::from_secs(1)), Some(a(1)));
        let later = t + BIND_TIMEOUT;
        b.touch(k(60_000), a(2), later);
        assert_eq!(b.get(&k(60_000), later), Some(a(2)));
        assert_eq!(b.len(later), 1);
    }

    #[test]
    fn the_introduction_budget_refills_per_window() {
        let mut b = Bindings::default();
        let t = Duration::from_secs(1);
        for _ in 0..INTROS_PER_WINDOW {
            assert!(b.charge(k(1), t));
        }
        assert!(!b.charge(k(1), t + Duration::from_secs(9)));
        assert!(b.charge(k(2), t), "budgets are per node");
        assert!(b.charge(k(1), t + INTRO_WINDOW));
    }
}
