//! Iterative Kademlia lookups over disjoint paths (S/Kademlia).
//!
//! Owns the shortlists of one lookup: which candidate each path queries next, with at most
//! `alpha` requests in flight per path, and the rule that a node is queried by at most one path
//! (a node learnt by two paths stays with the first), so `d` paths fail together only if every
//! one meets a liar. A path ends when the `k` closest candidates it knows have answered or
//! failed; the lookup ends when every path has, or (FIND_VALUE) when a valid record arrived.
//! Never sends anything itself and never verifies records (the node does, before
//! [`Lookup::found`]); holds no clock.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::key::Key;
use super::record::NodeRecord;

/// Most candidates kept per path (the farthest beyond this are forgotten).
pub const PATH_CAP_FACTOR: usize = 3;
/// Most queries one lookup sends in all (a bound against endless lists of fresh fake ids).
pub const MAX_QUERIES: u32 = 256;

/// Identifies a lookup of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LookupId(pub u64);

/// What is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// The k closest nodes to a target.
    Node,
    /// A record under a key.
    Value,
}

/// A candidate to query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Node id.
    pub id: Key,
    /// Address to query.
    pub addr: SocketAddr,
    /// X25519 key to tag the first request with (verified or as claimed by the reporter).
    pub x25519: [u8; 32],
    /// Hop at which it is queried (1 = from our own table).
    pub hops: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    InFlight,
    Answered,
    Failed,
}

#[derive(Debug, Default)]
struct Path {
    /// Closest first.
    cands: Vec<(Candidate, State)>,
    in_flight: usize,
}

/// One iterative lookup.
#[derive(Debug)]
pub struct Lookup {
    /// Its id.
    pub id: LookupId,
    /// Target key.
    pub target: Key,
    /// Node or value.
    pub kind: LookupKind,
    /// Monotonic start time.
    pub started: Duration,
    /// Queries sent so far.
    pub queried: u32,
    /// Best record found (highest sequence) and the hop it came from.
    pub record: Option<(NodeRecord, u32)>,
    paths: Vec<Path>,
    seen: BTreeSet<Key>,
    own: Key,
    k: usize,
    alpha: usize,
}

impl Lookup {
    /// A lookup of `target` starting from `initial` (our closest contacts), dealt round-robin
    /// over `paths` disjoint paths.
    #[must_use]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: LookupId,
        target: Key,
        kind: LookupKind,
        own: Key,
        initial: Vec<Candidate>,
        k: usize,
        alpha: usize,
        paths: usize,
        now: Duration,
    ) -> Self {
        let mut l = Self {
            id,
            target,
            kind,
            started: now,
            queried: 0,
            record: None,
            paths: (0..paths.max(1)).map(|_| Path::default()).collect(),
            seen: BTreeSet::new(),
            own,
            k: k.max(1),
            alpha: alpha.max(1),
        };
        let n = l.paths.len();
        let mut i = 0;
        for c in initial {
            if c.id == own || !l.seen.insert(c.id) {
                continue;
            }
            if let Some(p) = l.paths.get_mut(i % n) {
                p.cands.push((Candidate { hops: 1, ..c }, State::Fresh));
            }
            i += 1;
        }
        for p in &mut l.paths {
            p.cands.sort_by_key(|(c, _)| c.id.distance(&target));
        }
        l
    }

    /// The next requests to send: `(path, candidate)`, each marked in flight.
    pub fn next_queries(&mut self) -> Vec<(usize, Candidate)> {
        let mut out = Vec::new();
        if self.is_done() {
            return out;
        }
        for (pi, p) in self.paths.iter_mut().enumerate() {
            let mut live = 0;
            for (c, s) in p.cands.iter_mut() {
                if live >= self.k || p.in_flight >= self.alpha || self.queried >= MAX_QUERIES {
                    break;
                }
                match s {
                    State::Failed => continue,
                    State::Fresh => {
                        *s = State::InFlight;
                        p.in_flight += 1;
                        self.queried += 1;
                        out.push((pi, *c));
                    }
                    State::InFlight | State::Answered => {}
                }
                live += 1;
            }
        }
        out
    }

    fn mark(&mut self, path: usize, id: &Key, to: State) -> Option<Candidate> {
        let p = self.paths.get_mut(path)?;
        let (c, s) = p.cands.iter_mut().find(|(c, _)| c.id == *id)?;
        if *s != State::InFlight {
            return None;
        }
        *s = to;
        p.in_flight = p.in_flight.saturating_sub(1);
        Some(*c)
    }

    /// `id` on `path` answered with closer contacts `nodes`.
    pub fn on_reply(&mut self, path: usize, id: &Key, nodes: &[Candidate]) {
        let Some(from) = self.mark(path, id, State::Answered) else {
            return;
        };
        let target = self.target;
        let cap = self.k * PATH_CAP_FACTOR;
        let Some(p) = self.paths.get_mut(path) else {
            return;
        };
        for n in nodes {
            if n.id == self.own || !self.seen.insert(n.id) {
                continue;
            }
            p.cands.push((
                Candidate {
                    hops: from.hops + 1,
                    ..*n
                },
                State::Fresh,
            ));
        }
        p.cands.sort_by_key(|(c, _)| c.id.distance(&target));
        // Forget the farthest candidates not in flight (an in-flight one must stay to be matched).
        while p.cands.len() > cap {
            match p.cands.iter().rposition(|(_, s)| *s != State::InFlight) {
                Some(i) => {
                    p.cands.remove(i);
                }
                None => break,
            }
        }
    }

    /// The request to `id` on `path` timed out or was refused.
    pub fn on_failure(&mut self, path: usize, id: &Key) {
        self.mark(path, id, State::Failed);
    }

    /// A verified record valid under the target arrived from `id` on `path` (which answered).
    pub fn found(&mut self, path: usize, id: &Key, record: NodeRecord) {
        let hops = self.mark(path, id, State::Answered).map_or(0, |c| c.hops);
        if self.record.as_ref().is_none_or(|(r, _)| record.seq > r.seq) {
            self.record = Some((record, hops));
        }
    }

    /// Whether the lookup has ended.
    #[must_use]
    pub fn is_done(&self) -> bool {
        if self.kind == LookupKind::Value && self.record.is_some() {
            return true;
        }
        self.paths.iter().all(|p| {
            if p.in_flight > 0 {
                return false;
            }
            if self.queried >= MAX_QUERIES {
                return true;
            }
            !p.cands
                .iter()
                .filter(|(_, s)| *s != State::Failed)
                .take(self.k)
                .any(|(_, s)| *s == State::Fresh)
        })
    }

    /// The `k` closest nodes that answered, closest first, and the hop count of the result
    /// (the hop of the record's source, else of the closest answering node).
    #[must_use]
    pub fn result(&self) -> (Vec<(Key, SocketAddr)>, u32) {
        let mut answered: Vec<Candidate> = self
            .paths
            .iter()
            .flat_map(|p| p.cands.iter())
            .filter(|(_, s)| *s == State::Answered)
            .map(|(c, _)| *c)
            .collect();
        answered.sort_by_key(|c| c.id.distance(&self.target));
        answered.truncate(self.k);
        let hops = match &self.record {
            Some((_, h)) => *h,
            None => answered.first().map_or(0, |c| c.hops),
        };
        (answered.iter().map(|c| (c.id, c.addr)).collect(), hops)
    }

    /// Whether `id` is in flight on `path` (a reply is expected from it).
    #[must_use]
    pub fn expects(&self, path: usize, id: &Key) -> bool {
        self.paths.get(path).is_some_and(|p| {
            p.cands
                .iter()
                .any(|(c, s)| c.id == *id && *s == State::InFlight)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(b: u8) -> Candidate {
        let mut id = [0u8; 32];
        id[0] = b;
        Candidate {
            id: Key(id),
            addr: SocketAddr::from(([198, 51, 100, b], 1)),
            x25519: [0; 32],
            hops: 0,
        }
    }

    #[test]
    fn alpha_in_flight_per_path_and_disjoint_paths() {
        let initial: Vec<_> = (1..=6).map(cand).collect();
        let mut l = Lookup::new(
            LookupId(1),
            Key([0; 32]),
            LookupKind::Node,
            Key([0xFF; 32]),
            initial,
            20,
            3,
            2,
            Duration::ZERO,
        );
        let first = l.next_queries();
        assert_eq!(first.len(), 6, "alpha = 3 on each of 2 paths");
        assert!(
            l.next_queries().is_empty(),
            "nothing more until something answers"
        );
        // A node one path already knows, reported on the other path, is not queried again.
        let (p0, c0) = first[0];
        let other = first.iter().find(|(p, _)| *p != p0).unwrap().1;
        l.on_reply(p0, &c0.id, &[other, cand(0x40)]);
        let next = l.next_queries();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].1.id, cand(0x40).id);
        assert_eq!(next[0].1.hops, 2);
    }

    #[test]
    fn ends_when_the_k_closest_answered_and_reports_them() {
        let mut l = Lookup::new(
            LookupId(1),
            Key([0; 32]),
            LookupKind::Node,
            Key([0xFF; 32]),
            (1..=4).map(cand).collect(),
            3,
            3,
            1,
            Duration::ZERO,
        );
        let q = l.next_queries();
        assert_eq!(q.len(), 3);
        assert!(!l.is_done());
        for (p, c) in &q {
            if c.id == cand(2).id {
                l.on_failure(*p, &c.id);
            } else {
                l.on_reply(*p, &c.id, &[]);
            }
        }
        // cand(2) failed: cand(4) is now among the 3 closest live ones and must be asked.
        assert!(!l.is_done());
        let q = l.next_queries();
        assert_eq!(q.len(), 1);
        l.on_reply(q[0].0, &q[0].1.id, &[]);
        assert!(l.is_done());
        let (closest, hops) = l.result();
        assert_eq!(
            closest.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![cand(1).id, cand(3).id, cand(4).id]
        );
        assert_eq!(hops, 1);
    }

    #[test]
    fn unexpected_replies_change_nothing() {
        let mut l = Lookup::new(
            LookupId(1),
            Key([0; 32]),
            LookupKind::Node,
            Key([0xFF; 32]),
            vec![cand(1)],
            3,
            3,
            1,
            Duration::ZERO,
        );
        // Not yet queried: a "reply" from it adds nothing.
        l.on_reply(0, &cand(1).id, &[cand(9)]);
        assert_eq!(l.next_queries().len(), 1);
        assert!(l.next_queries().is_empty());
        assert!(!l.expects(0, &cand(9).id));
    }
}
