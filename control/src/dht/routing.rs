//! The Kademlia routing table: 256 k-buckets by XOR distance from our id, each with a
//! replacement cache.
//!
//! Owns which contacts we route through. Admission is decided by the caller (`node`): only
//! authenticated servers whose address was confirmed are ever passed to [`RoutingTable::observe`].
//! A full bucket never drops a live contact for a newcomer: the newcomer waits in the
//! replacement cache while the least recently seen contact is pinged, and takes its place only
//! if that ping fails. Never does I/O; time comes in as a monotonic `Duration`.

use std::net::SocketAddr;
use std::time::Duration;

use super::key::Key;

/// Number of buckets (one per bit of distance).
pub const BUCKETS: usize = 256;
/// Consecutive failed requests after which a contact is dropped (its place goes to the newest
/// replacement).
pub const MAX_FAILURES: u32 = 2;

/// One routing-table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// Node id.
    pub id: Key,
    /// Confirmed address.
    pub addr: SocketAddr,
    /// X25519 key of its verified certificate (carried in NODES so others can tag at once).
    pub x25519: [u8; 32],
    /// Monotonic time last heard from.
    pub last_seen: Duration,
    /// Consecutive failed requests.
    pub failures: u32,
}

/// What the table did with an observed contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Was present; refreshed (moved to most recently seen).
    Refreshed,
    /// Inserted into a bucket with room.
    Inserted,
    /// Bucket full: kept in the replacement cache; the caller should ping this oldest contact
    /// (and report with [`RoutingTable::ping_result`]).
    PingOldest(Contact),
    /// Bucket full and its oldest is already being pinged: kept in the replacement cache.
    Cached,
    /// Our own id: ignored.
    Own,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Least recently seen first.
    contacts: Vec<Contact>,
    /// Newest last; bounded to k.
    replacements: Vec<Contact>,
    last_refresh: Duration,
    pinging: Option<Key>,
}

/// The table.
#[derive(Debug)]
pub struct RoutingTable {
    own: Key,
    k: usize,
    buckets: Vec<Bucket>,
}

impl RoutingTable {
    /// An empty table around `own` with bucket size `k`.
    #[must_use]
    pub fn new(own: Key, k: usize) -> Self {
        Self {
            own,
            k: k.max(1),
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
        }
    }

    fn bucket_of(&self, id: &Key) -> Option<usize> {
        self.own.bucket_index(id).filter(|&i| i < BUCKETS)
    }

    /// Records that `c` (authenticated, address confirmed, a server) was heard from.
    pub fn observe(&mut self, c: Contact) -> Observed {
        let Some(i) = self.bucket_of(&c.id) else {
            return Observed::Own;
        };
        let k = self.k;
        let Some(b) = self.buckets.get_mut(i) else {
            return Observed::Own;
        };
        if let Some(pos) = b.contacts.iter().position(|x| x.id == c.id) {
            b.contacts.remove(pos);
            b.contacts.push(Contact { failures: 0, ..c });
            return Observed::Refreshed;
        }
        if b.contacts.len() < k {
            b.replacements.retain(|x| x.id != c.id);
            b.contacts.push(c);
            return Observed::Inserted;
        }
        b.replacements.retain(|x| x.id != c.id);
        if b.replacements.len() >= k {
            b.replacements.remove(0);
        }
        b.replacements.push(c);
        if b.pinging.is_some() {
            return Observed::Cached;
        }
        match b.contacts.first().copied() {
            Some(oldest) => {
                b.pinging = Some(oldest.id);
                Observed::PingOldest(oldest)
            }
            None => Observed::Cached,
        }
    }

    /// Outcome of the eviction ping of `id`: alive keeps it (most recently seen now), dead
    /// removes it and promotes the newest replacement.
    pub fn ping_result(&mut self, id: &Key, alive: bool, now: Duration) {
        let Some(i) = self.bucket_of(id) else { return };
        let Some(b) = self.buckets.get_mut(i) else {
            return;
        };
        if b.pinging == Some(*id) {
            b.pinging = None;
        }
        if let Some(pos) = b.contacts.iter().position(|x| x.id == *id) {
            if alive {
                let mut c = b.contacts.remove(pos);
                c.last_seen = now;
                c.failures = 0;
                b.contacts.push(c);
            } else {
                b.contacts.remove(pos);
                if let Some(r) = b.replacements.pop() {
                    b.contacts.push(r);
                }
            }
        }
    }

    /// A request to `id` timed out; after [`MAX_FAILURES`] in a row it is dropped.
    pub fn failed(&mut self, id: &Key) {
        let Some(i) = self.bucket_of(id) else { return };
        let Some(b) = self.buckets.get_mut(i) else {
            return;
        };
        b.replacements.retain(|x| x.id != *id);
        let Some(pos) = b.contacts.iter().position(|x| x.id == *id) else {
            return;
        };
        let dead = b.contacts.get_mut(pos).is_some_and(|c| {
            c.failures += 1;
            c.failures >= MAX_FAILURES
        });
        if dead {
            b.contacts.remove(pos);
            if b.pinging == Some(*id) {
                b.pinging = None;
            }
            if let Some(r) = b.replacements.pop() {
                b.contacts.push(r);
            }
        }
    }

    /// Removes `id` (e.g. it now says it is not a server).
    pub fn remove(&mut self, id: &Key) {
        let Some(i) = self.bucket_of(id) else { return };
        if let Some(b) = self.buckets.get_mut(i) {
            b.contacts.retain(|x| x.id != *id);
            b.replacements.retain(|x| x.id != *id);
            if let Some(r) = (b.contacts.len() < self.k)
                .then(|| b.replacements.pop())
                .flatten()
            {
                b.contacts.push(r);
            }
        }
    }

    /// Whether `id` could enter its bucket now: it is there already, the bucket has room, or
    /// the bucket's least recently seen contact has not been heard from for `good_for` (BEP 5's
    /// "questionable" node, worth an eviction ping). A bucket full of good contacts turns
    /// newcomers away without a ping to anyone.
    #[must_use]
    pub fn could_admit(&self, id: &Key, now: Duration, good_for: Duration) -> bool {
        let Some(b) = self.bucket_of(id).and_then(|i| self.buckets.get(i)) else {
            return false;
        };
        b.contacts.len() < self.k
            || b.contacts.iter().any(|c| c.id == *id)
            || b.contacts
                .first()
                .is_some_and(|oldest| now.saturating_sub(oldest.last_seen) >= good_for)
    }

    /// The contact `id`, if in a bucket.
    #[must_use]
    pub fn get(&self, id: &Key) -> Option<&Contact> {
        let i = self.bucket_of(id)?;
        self.buckets.get(i)?.contacts.iter().find(|c| c.id == *id)
    }

    /// The `n` contacts closest to `target`, closest first (ties cannot occur: ids differ).
    #[must_use]
    pub fn closest(&self, target: &Key, n: usize) -> Vec<Contact> {
        let mut all: Vec<Contact> = self.iter().copied().collect();
        all.sort_by_key(|c| c.id.distance(target));
        all.truncate(n);
        all
    }

    /// Every contact, bucket by bucket (farthest bucket first), least recently seen first.
    pub fn iter(&self) -> impl Iterator<Item = &Contact> + '_ {
        self.buckets.iter().flat_map(|b| b.contacts.iter())
    }

    /// (bucket index, contact) pairs.
    pub fn iter_indexed(&self) -> impl Iterator<Item = (usize, &Contact)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.contacts.iter().map(move |c| (i, c)))
    }

    /// Number of contacts.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.contacts.len()).sum()
    }

    /// Whether the table is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of replacement-cache entries.
    #[must_use]
    pub fn replacements(&self) -> usize {
        self.buckets.iter().map(|b| b.replacements.len()).sum()
    }

    /// Marks the bucket holding `target` as refreshed (a lookup went through it).
    pub fn touch_bucket(&mut self, target: &Key, now: Duration) {
        if let Some(b) = self.bucket_of(target).and_then(|i| self.buckets.get_mut(i)) {
            b.last_refresh = now;
        }
    }

    /// Non-empty buckets not refreshed within `interval` (they each get a lookup of a random id
    /// in their range), marked refreshed now.
    pub fn take_stale(&mut self, now: Duration, interval: Duration) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, b) in self.buckets.iter_mut().enumerate() {
            if !b.contacts.is_empty() && now.saturating_sub(b.last_refresh) >= interval {
                b.last_refresh = now;
                out.push(i);
            }
        }
        out
    }

    /// A random id whose distance from ours has exactly `i` leading zeros.
    #[must_use]
    pub fn random_id_in(&self, i: usize, random: [u8; 32]) -> Key {
        let mut d = random;
        let i = i.min(BUCKETS - 1);
        for (byte, x) in d.iter_mut().enumerate() {
            for bit in 0..8 {
                let pos = byte * 8 + bit;
                let mask = 0x80u8 >> bit;
                if pos < i {
                    *x &= !mask;
                } else if pos == i {
                    *x |= mask;
                }
            }
        }
        let mut id = self.own;
        for (a, b) in id.0.iter_mut().zip(d) {
            *a ^= b;
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(first: u8, last: u8) -> Key {
        let mut k = [0u8; 32];
        k[0] = first;
        k[31] = last;
        Key(k)
    }

    fn contact(id: Key, t: u64) -> Contact {
        Contact {
            id,
            addr: SocketAddr::from(([198, 51, 100, id.0[31]], 4000)),
            x25519: [0; 32],
            last_seen: Duration::from_secs(t),
            failures: 0,
        }
    }

    /// 2 per bucket so buckets fill quickly; every id with top bit set lands in bucket 0.
    fn full_bucket() -> RoutingTable {
        let mut t = RoutingTable::new(Key([0; 32]), 2);
        assert_eq!(t.observe(contact(key(0x80, 1), 1)), Observed::Inserted);
        assert_eq!(t.observe(contact(key(0x81, 2), 2)), Observed::Inserted);
        t
    }

    #[test]
    fn a_bucket_full_of_good_contacts_admits_no_newcomer() {
        let t = full_bucket(); // contacts last seen at 1 s and 2 s
        let good = Duration::from_secs(900);
        let newcomer = key(0x82, 3);
        assert!(!t.could_admit(&newcomer, Duration::from_secs(100), good));
        // A member is always welcome back; another bucket has room.
        assert!(t.could_admit(&key(0x80, 1), Duration::from_secs(100), good));
        assert!(t.could_admit(&key(0x40, 4), Duration::from_secs(100), good));
        // Once the oldest is questionable, a newcomer is worth its eviction ping.
        assert!(t.could_admit(&newcomer, Duration::from_secs(901), good));
        assert!(!t.could_admit(&Key([0; 32]), Duration::from_secs(901), good));
    }

    #[test]
    fn full_bucket_keeps_its_old_contact_when_it_answers_the_ping() {
        let mut t = full_bucket();
        let newcomer = contact(key(0x82, 3), 3);
        let Observed::PingOldest(oldest) = t.observe(newcomer) else {
            panic!("expected an eviction ping")
        };
        assert_eq!(oldest.id, key(0x80, 1));
        // A second newcomer while the ping is out does not trigger another.
        assert_eq!(t.observe(contact(key(0x83, 4), 4)), Observed::Cached);
        t.ping_result(&oldest.id, true, Duration::from_secs(5));
        assert!(t.get(&key(0x80, 1)).is_some());
        assert!(t.get(&key(0x82, 3)).is_none());
        assert_eq!(t.len(), 2);
        // It is now the most recently seen: the next eviction candidate is the other one.
        let Observed::PingOldest(next) = t.observe(contact(key(0x84, 5), 5)) else {
            panic!()
        };
        assert_eq!(next.id, key(0x81, 2));
    }

    #[test]
    fn full_bucket_replaces_its_oldest_only_after_a_failed_ping() {
        let mut t = full_bucket();
        let Observed::PingOldest(oldest) = t.observe(contact(key(0x82, 3), 3)) else {
            panic!()
        };
        assert!(
            t.get(&oldest.id).is_some(),
            "nothing evicted before the ping fails"
        );
        t.ping_result(&oldest.id, false, Duration::from_secs(5));
        assert!(t.get(&oldest.id).is_none());
        assert!(t.get(&key(0x82, 3)).is_some());
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn replacement_cache_is_bounded_and_own_id_is_never_stored() {
        let mut t = full_bucket();
        for i in 0..50 {
            t.observe(contact(key(0x90, i), 10));
        }
        assert_eq!(t.replacements(), 2);
        assert_eq!(t.observe(contact(Key([0; 32]), 1)), Observed::Own);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn failures_drop_a_contact_and_promote_a_replacement() {
        let mut t = full_bucket();
        t.observe(contact(key(0x82, 3), 3));
        t.failed(&key(0x81, 2));
        assert!(t.get(&key(0x81, 2)).is_some());
        t.failed(&key(0x81, 2));
        assert!(t.get(&key(0x81, 2)).is_none());
        assert!(t.get(&key(0x82, 3)).is_some());
    }

    #[test]
    fn closest_sorts_by_xor_distance_and_random_ids_land_in_their_bucket() {
        let mut t = RoutingTable::new(Key([0; 32]), 20);
        for i in 1..=40u8 {
            t.observe(contact(key(i, i), 0));
        }
        let c = t.closest(&key(3, 0), 3);
        assert_eq!(
            c.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![key(3, 3), key(2, 2), key(1, 1)]
        );
        for i in [0, 1, 7, 8, 100, 255] {
            let id = t.random_id_in(i, [0xA5; 32]);
            assert_eq!(Key([0; 32]).bucket_index(&id), Some(i));
        }
    }
}
