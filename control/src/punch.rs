//! Hole punching, sans-IO: the probes two nodes send each other's candidate addresses at the
//! same time after a home introduced them, so that each side's NAT opens a mapping for the
//! other (docs/protocol.md §9.3).
//!
//! A probe is a control message of kind [`crate::transport::KIND_NAT`]: `type u8 (1 probe, 2
//! reply) | token [16]`, 17 bytes (41 on the wire). The token is a random value the initiator
//! chose and sent only in authenticated DHT messages (to the home, and from the home to the
//! target); those are tagged, not encrypted, so a probe that carries it comes from one of the
//! two ends, the home, or someone on one of those paths. Its source address is where the other
//! end's NAT maps it *for us*: the address to try the handshake at, also when that NAT is
//! endpoint-dependent. A probe therefore only ever starts a handshake (which authenticates
//! both ends); it never moves an established session (`Driver::punched`).
//!
//! Cost for a stranger: a probe with an unknown token is a counted drop; nothing is stored
//! or sent. Every punch is bounded in rounds, targets and lifetime, and the table in size.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::dht::messages::{MAX_CANDIDATES, TOKEN_LEN};

/// Probe type byte: a probe.
pub const PROBE: u8 = 1;
/// Probe type byte: the answer to a probe.
pub const PROBE_REPLY: u8 = 2;
/// Length of a probe message.
pub const PROBE_LEN: usize = 1 + TOKEN_LEN;
/// Rounds of probes to every candidate (the first at once).
pub const ROUNDS: u32 = 10;
/// Time between two rounds: short enough that the two ends' probes cross within a round trip
/// or two of the introduction, long enough that 10 rounds cover 2 s of NAT and path delay.
pub const ROUND_INTERVAL: Duration = Duration::from_millis(200);
/// A punch is forgotten this long after it started (its token is no longer accepted).
pub const LIFETIME: Duration = Duration::from_secs(30);
/// Most punches at once.
pub const MAX_PUNCHES: usize = 64;

/// Which end of an introduction we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We asked to be introduced (we will handshake).
    Initiator,
    /// A home introduced someone to us.
    Responder,
}

#[derive(Debug)]
struct Punch {
    peer_node: [u8; 32],
    role: Role,
    targets: Vec<SocketAddr>,
    rounds_left: u32,
    next: Duration,
    started: Duration,
    answered_from: Option<SocketAddr>,
}

/// What a valid probe told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Punched {
    /// Node id of the other end.
    pub peer_node: [u8; 32],
    /// Our role in this punch.
    pub role: Role,
    /// Where the probe came from: the other end's address as its NAT maps it for us.
    pub from: SocketAddr,
    /// The first valid probe of this punch (later ones change nothing).
    pub first: bool,
    /// The reply to send back to `from` (for a probe; none for a reply).
    pub reply: Option<[u8; PROBE_LEN]>,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PunchStats {
    /// Punches started (as either end).
    pub started: u64,
    /// Probes sent.
    pub probes_sent: u64,
    /// Valid probes and replies received.
    pub probes_received: u64,
    /// Punches that got a valid probe or reply.
    pub succeeded: u64,
    /// Dropped: malformed, or a token we do not hold.
    pub probes_dropped: u64,
    /// Punches not started because the table was full.
    pub refused: u64,
}

/// The punches in progress.
#[derive(Debug, Default)]
pub struct Punches {
    by_token: BTreeMap<[u8; TOKEN_LEN], Punch>,
    stats: PunchStats,
}

/// Encodes a probe or reply.
#[must_use]
pub fn encode(kind: u8, token: &[u8; TOKEN_LEN]) -> [u8; PROBE_LEN] {
    let mut b = [0u8; PROBE_LEN];
    b[0] = kind;
    b[1..].copy_from_slice(token);
    b
}

impl Punches {
    /// Counters.
    #[must_use]
    pub fn stats(&self) -> PunchStats {
        self.stats
    }

    /// Punches in progress.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    /// No punch in progress.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }

    /// Whether a punch with `peer_node` is still probing: unanswered and within its rounds.
    #[must_use]
    pub fn active_with(&self, peer_node: &[u8; 32], now: Duration) -> bool {
        self.by_token.values().any(|p| {
            p.peer_node == *peer_node
                && p.answered_from.is_none()
                && now.saturating_sub(p.started) < ROUND_INTERVAL * ROUNDS
        })
    }

    /// Whether the punch with `peer_node` (any role) got a valid probe, and from where.
    #[must_use]
    pub fn answered(&self, peer_node: &[u8; 32]) -> Option<SocketAddr> {
        self.by_token
            .values()
            .filter(|p| p.peer_node == *peer_node)
            .find_map(|p| p.answered_from)
    }

    /// Starts probing `targets` (deduplicated, at most [`MAX_CANDIDATES`]) under `token`;
    /// the first round is due at once. False when the table is full of live punches or the
    /// token is in use.
    pub fn start(
        &mut self,
        token: [u8; TOKEN_LEN],
        peer_node: [u8; 32],
        role: Role,
        targets: &[SocketAddr],
        now: Duration,
    ) -> bool {
        self.expire(now);
        if self.by_token.len() >= MAX_PUNCHES || self.by_token.contains_key(&token) {
            self.stats.refused += 1;
            return false;
        }
        let mut t: Vec<SocketAddr> = Vec::new();
        for a in targets {
            if !t.contains(a) && t.len() < MAX_CANDIDATES {
                t.push(*a);
            }
        }
        self.stats.started += 1;
        self.by_token.insert(
            token,
            Punch {
                peer_node,
                role,
                targets: t,
                rounds_left: ROUNDS,
                next: now,
                started: now,
                answered_from: None,
            },
        );
        true
    }

    /// When [`due`](Self::due) has work next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.by_token
            .values()
            .map(|p| {
                if p.rounds_left > 0 && p.answered_from.is_none() {
                    p.next
                } else {
                    p.started + LIFETIME
                }
            })
            .min()
    }

    /// The probes due at `now`, as (destination, message); expired punches go.
    pub fn due(&mut self, now: Duration) -> Vec<(SocketAddr, [u8; PROBE_LEN])> {
        self.expire(now);
        let mut out = Vec::new();
        for (token, p) in &mut self.by_token {
            if p.answered_from.is_some() || p.rounds_left == 0 || now < p.next {
                continue;
            }
            p.rounds_left -= 1;
            p.next = now + ROUND_INTERVAL;
            for dst in &p.targets {
                out.push((*dst, encode(PROBE, token)));
            }
        }
        self.stats.probes_sent += out.len() as u64;
        out
    }

    /// A probe or reply from `src`. Unknown tokens and malformed messages are counted drops.
    pub fn on_probe(&mut self, src: SocketAddr, msg: &[u8], now: Duration) -> Option<Punched> {
        let parsed = match msg {
            [kind @ (PROBE | PROBE_REPLY), rest @ ..] if rest.len() == TOKEN_LEN => {
                let mut token = [0u8; TOKEN_LEN];
                token.copy_from_slice(rest);
                Some((*kind, token))
            }
            _ => None,
        };
        let found = parsed.and_then(|(kind, token)| {
            let p = self
                .by_token
                .get_mut(&token)
                .filter(|p| now.saturating_sub(p.started) < LIFETIME)?;
            Some((kind, token, p))
        });
        let Some((kind, token, p)) = found else {
            self.stats.probes_dropped += 1;
            return None;
        };
        self.stats.probes_received += 1;
        let first = p.answered_from.is_none();
        if first {
            p.answered_from = Some(src);
            self.stats.succeeded += 1;
        }
        Some(Punched {
            peer_node: p.peer_node,
            role: p.role,
            from: src,
            first,
            reply: (kind == PROBE).then(|| encode(PROBE_REPLY, &token)),
        })
    }

    fn expire(&mut self, now: Duration) {
        self.by_token
            .retain(|_, p| now.saturating_sub(p.started) < LIFETIME);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 9], p))
    }

    const T0: Duration = Duration::from_secs(100);

    #[test]
    fn probes_go_to_every_target_each_round_until_answered() {
        let mut p = Punches::default();
        assert!(p.start([1; 16], [7; 32], Role::Initiator, &[a(1), a(2), a(1)], T0));
        let first = p.due(T0);
        assert_eq!(first.len(), 2, "deduplicated targets");
        assert!(p.due(T0 + Duration::from_millis(100)).is_empty());
        assert_eq!(p.due(T0 + ROUND_INTERVAL).len(), 2);
        let got = p.on_probe(a(9), &encode(PROBE, &[1; 16]), T0).unwrap();
        assert!(got.first && got.role == Role::Initiator && got.from == a(9));
        assert_eq!(got.reply, Some(encode(PROBE_REPLY, &[1; 16])));
        assert!(
            p.due(T0 + 2 * ROUND_INTERVAL).is_empty(),
            "answered: no more"
        );
        let again = p
            .on_probe(a(9), &encode(PROBE_REPLY, &[1; 16]), T0)
            .unwrap();
        assert!(!again.first && again.reply.is_none());
        assert_eq!(p.answered(&[7; 32]), Some(a(9)));
    }

    #[test]
    fn rounds_are_bounded_and_the_punch_expires() {
        let mut p = Punches::default();
        p.start([2; 16], [7; 32], Role::Responder, &[a(1)], T0);
        let mut sent = 0;
        for i in 0..100 {
            sent += p.due(T0 + ROUND_INTERVAL * i).len();
        }
        assert_eq!(sent, ROUNDS as usize);
        assert!(p.active_with(&[7; 32], T0));
        assert!(!p.active_with(&[7; 32], T0 + ROUND_INTERVAL * ROUNDS));
        assert!(p
            .on_probe(a(1), &encode(PROBE, &[2; 16]), T0 + LIFETIME)
            .is_none());
        p.due(T0 + LIFETIME);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_stranger_stores_and_sends_nothing() {
        let mut p = Punches::default();
        p.start([3; 16], [7; 32], Role::Initiator, &[a(1)], T0);
        for m in [
            &encode(PROBE, &[4; 16])[..],
            &[PROBE][..],
            &[9u8; PROBE_LEN][..],
            &[][..],
            &[PROBE; PROBE_LEN + 1][..],
        ] {
            assert!(p.on_probe(a(5), m, T0).is_none());
        }
        assert_eq!(p.stats().probes_dropped, 5);
        assert_eq!(p.answered(&[7; 32]), None);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut p = Punches::default();
        for i in 0..MAX_PUNCHES {
            let mut t = [0u8; 16];
            t[0] = i as u8;
            assert!(p.start(t, [0; 32], Role::Responder, &[a(1)], T0));
        }
        assert!(!p.start([0xff; 16], [0; 32], Role::Responder, &[a(1)], T0));
        assert!(p.start([0xff; 16], [0; 32], Role::Responder, &[a(1)], T0 + LIFETIME));
    }
}
