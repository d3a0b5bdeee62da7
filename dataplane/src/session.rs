//! Sessions: the transport keys of one handshake, their counters, replay window and
//! lifetimes, and the current / previous / next rotation of a peer's sessions.
//!
//! Owns: counter reservation for sending (one atomic `fetch_add` per batch), the send and
//! receive refusal rules (age and message-count limits), the receive path order (expiry,
//! tag, then replay) and seamless rekey rotation.
//!
//! Must never: read a clock (time is a `Duration` since an arbitrary monotonic epoch, passed
//! in), hand out a counter twice or past the reject limit, mark a counter in the replay
//! window before its tag verified, or keep raw key bytes (they are zeroized by
//! [`SessionKeys`]' drop; [`DataKey`] holds only the expanded key).

use core::ops::Range;
use core::time::Duration;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::{self, Cipher, CryptoError, DataKey};
use crate::replay::{ReplayWindow, WINDOW};

/// A peer's identifier inside the dataplane (assigned by the control plane).
pub type PeerId = u32;

/// The largest block [`Session::reserve`] hands out at once. Bounding it bounds how far the
/// counter can overshoot the reject limit when several workers race past it.
pub const MAX_RESERVE: u64 = 1 << 12;

/// The raw transport keys of one handshake, as received from the control plane. Zeroized
/// on drop; [`Session::new`] expands them and keeps no copy.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SessionKeys {
    /// The negotiated cipher.
    #[zeroize(skip)]
    pub cipher: Cipher,
    /// Key for messages we send.
    pub send: [u8; 32],
    /// Key for messages we receive.
    pub recv: [u8; 32],
}

impl core::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

/// Key lifetime limits (WireGuard's values by default; tests shorten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Age after which sending asks for a rekey (the key keeps working).
    pub rekey_after_time: Duration,
    /// Age after which the key is refused for sending.
    pub reject_after_time: Duration,
    /// Extra time receive keys live past `reject_after_time`, for packets in flight.
    pub receive_slack: Duration,
    /// Messages after which sending asks for a rekey.
    pub rekey_after_messages: u64,
    /// First counter that is never sent nor accepted.
    pub reject_after_messages: u64,
}

impl Limits {
    /// 120 s / 180 s / 10 s slack / 2^60 messages / `u64::MAX` less the replay window and
    /// a margin for racing reservations.
    pub const DEFAULT: Self = Self {
        rekey_after_time: Duration::from_secs(120),
        reject_after_time: Duration::from_secs(180),
        receive_slack: Duration::from_secs(10),
        rekey_after_messages: 1 << 60,
        reject_after_messages: u64::MAX - WINDOW - (1 << 24),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A block of counters reserved for sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Reservation {
    /// First counter of the block; the block is `first..first + count`.
    pub first: u64,
    /// Number of counters.
    pub count: u64,
    /// The session is past a rekey limit: ask the control plane for a new handshake.
    pub rekey_due: bool,
}

impl Reservation {
    /// The reserved counters.
    pub fn counters(&self) -> Range<u64> {
        self.first..self.first.saturating_add(self.count)
    }
}

/// Why a session refused to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendRefused {
    /// Older than `reject_after_time`.
    #[error("session expired for sending")]
    Expired,
    /// The counter reached `reject_after_messages`.
    #[error("session message counter exhausted")]
    CountersExhausted,
    /// A reservation of zero or more than [`MAX_RESERVE`] counters.
    #[error("reservation of {requested} counters: expected 1..={MAX_RESERVE}")]
    BadCount {
        /// Counters asked for.
        requested: u64,
    },
}

/// Why a received data message was dropped; `as usize` indexes a drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum OpenRefused {
    /// The receive key is older than `reject_after_time + receive_slack`.
    #[error("receive key expired")]
    Expired = 0,
    /// The header was malformed or named another session.
    #[error("malformed data message or wrong receiver index")]
    Malformed = 1,
    /// The tag did not verify.
    #[error("authentication failed")]
    BadTag = 2,
    /// The counter was already received, is too old, or is past the reject limit.
    #[error("replayed or out-of-window counter")]
    Replayed = 3,
}

impl OpenRefused {
    /// Number of variants, for drop-counter arrays.
    pub const COUNT: usize = 4;
}

/// One handshake's keys and state, shared by the workers through an `Arc`.
#[derive(Debug)]
pub struct Session {
    /// Our index: peers put it in the `receiver_index` of messages to us.
    pub local_index: u32,
    /// The peer's index: we put it in messages we send.
    pub remote_index: u32,
    /// The peer this session belongs to.
    pub peer: PeerId,
    /// When the handshake completed (since the caller's monotonic epoch).
    pub created: Duration,
    /// Lifetime limits.
    pub limits: Limits,
    send_key: DataKey,
    recv_key: DataKey,
    send_counter: AtomicU64,
    /// Set once sending was refused for exhaustion, so no thread adds to the counter again.
    send_dead: AtomicBool,
    /// Set by the first authenticated receive (key confirmation).
    confirmed: AtomicBool,
    replay: Mutex<ReplayWindow>,
}

impl Session {
    /// Builds a session from the handshake's keys. The caller drops (and so zeroizes)
    /// `keys` when it no longer needs them.
    pub fn new(
        local_index: u32,
        remote_index: u32,
        peer: PeerId,
        keys: &SessionKeys,
        created: Duration,
        limits: Limits,
    ) -> Result<Self, CryptoError> {
        Ok(Self {
            local_index,
            remote_index,
            peer,
            created,
            limits,
            send_key: DataKey::new(keys.cipher, &keys.send)?,
            recv_key: DataKey::new(keys.cipher, &keys.recv)?,
            send_counter: AtomicU64::new(0),
            send_dead: AtomicBool::new(false),
            confirmed: AtomicBool::new(false),
            replay: Mutex::new(ReplayWindow::new()),
        })
    }

    /// The session's cipher.
    pub fn cipher(&self) -> Cipher {
        self.send_key.cipher()
    }

    /// Age at `now` (zero if `now` is before creation).
    #[inline]
    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.created)
    }

    /// Whether an authenticated message has been received on this session.
    pub fn confirmed(&self) -> bool {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Counters handed out so far (the next counter to be reserved).
    pub fn sent(&self) -> u64 {
        self.send_counter.load(Ordering::Relaxed)
    }

    /// Reserves `n` consecutive counters with one `fetch_add`.
    #[inline]
    pub fn reserve(&self, n: u64, now: Duration) -> Result<Reservation, SendRefused> {
        if n == 0 || n > MAX_RESERVE {
            return Err(SendRefused::BadCount { requested: n });
        }
        let age = self.age(now);
        if age >= self.limits.reject_after_time {
            return Err(SendRefused::Expired);
        }
        if self.send_dead.load(Ordering::Relaxed) {
            return Err(SendRefused::CountersExhausted);
        }
        // Relaxed is enough: uniqueness comes from the atomic read-modify-write itself.
        let first = self.send_counter.fetch_add(n, Ordering::Relaxed);
        // first + n cannot wrap: the counter stops growing once past the limit (send_dead),
        // and racing threads overshoot by at most threads * MAX_RESERVE < the margin.
        let end = first.saturating_add(n);
        if end > self.limits.reject_after_messages {
            self.send_dead.store(true, Ordering::Relaxed);
            return Err(SendRefused::CountersExhausted);
        }
        Ok(Reservation {
            first,
            count: n,
            rekey_due: age >= self.limits.rekey_after_time
                || end > self.limits.rekey_after_messages,
        })
    }

    /// Seals one message with a reserved counter (see [`crypto::seal`]).
    #[inline]
    pub fn seal(
        &self,
        counter: u64,
        frame: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, CryptoError> {
        crypto::seal(
            &self.send_key,
            self.remote_index,
            counter,
            frame,
            payload_len,
        )
    }

    /// [`Session::seal`] with the header naming receive `lane` (the sending worker).
    #[inline]
    pub fn seal_on_lane(
        &self,
        lane: u8,
        counter: u64,
        frame: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, CryptoError> {
        crypto::seal_on_lane(
            &self.send_key,
            lane,
            self.remote_index,
            counter,
            frame,
            payload_len,
        )
    }

    /// Whether received messages are still accepted at `now`.
    #[inline]
    pub fn receive_alive(&self, now: Duration) -> bool {
        self.age(now)
            < self
                .limits
                .reject_after_time
                .saturating_add(self.limits.receive_slack)
    }

    /// Opens a received data message addressed to this session: expiry check, tag
    /// verification, then the replay window. Returns the plaintext range. Marks the session
    /// confirmed (see [`Session::open_confirming`] to learn whether this call did).
    #[inline]
    pub fn open(&self, datagram: &mut [u8], now: Duration) -> Result<Range<usize>, OpenRefused> {
        self.open_confirming(datagram, now).map(|(range, _)| range)
    }

    /// Expiry check, tag verification, then the replay window.
    #[inline]
    fn open_unconfirmed(
        &self,
        datagram: &mut [u8],
        now: Duration,
    ) -> Result<Range<usize>, OpenRefused> {
        if !self.receive_alive(now) {
            return Err(OpenRefused::Expired);
        }
        let (header, range) = crypto::open(&self.recv_key, datagram).map_err(|e| match e {
            CryptoError::BadTag => OpenRefused::BadTag,
            _ => OpenRefused::Malformed,
        })?;
        if header.receiver_index != self.local_index {
            return Err(OpenRefused::Malformed);
        }
        if header.counter >= self.limits.reject_after_messages {
            return Err(OpenRefused::Replayed);
        }
        let fresh = self
            .replay
            .lock()
            // The window holds no invariant a panicking holder could break half-way.
            .unwrap_or_else(PoisonError::into_inner)
            .update(header.counter);
        if !fresh {
            return Err(OpenRefused::Replayed);
        }
        Ok(range)
    }

    /// [`Session::open`], and whether this call confirmed the session: the first
    /// authenticated message on it, across all workers. Exactly one call per session ever
    /// returns `true` (an atomic swap decides), so exactly one worker reports it; the swap is
    /// only tried while the flag is clear, so confirmed sessions cost a plain load per packet.
    #[inline]
    pub fn open_confirming(
        &self,
        datagram: &mut [u8],
        now: Duration,
    ) -> Result<(Range<usize>, bool), OpenRefused> {
        let range = self.open_unconfirmed(datagram, now)?;
        let first = !self.confirmed.load(Ordering::Relaxed)
            && !self.confirmed.swap(true, Ordering::Relaxed);
        Ok((range, first))
    }
}

/// Most responder sessions one peer may have awaiting key confirmation at once. A forged
/// initiation can make the control plane install a pending session whose keys nobody holds;
/// with room for several, it can only push out the oldest pending one, never `current` or
/// `previous`, and a real initiation answered after up to `MAX_PENDING - 1` forged ones is
/// still there when the initiator's first packet arrives.
pub const MAX_PENDING: usize = 8;

/// A peer's sessions during rotation.
///
/// The responder installs each new session as *pending* (it may not send on it before key
/// confirmation; up to [`MAX_PENDING`], the oldest pushed out first); the first authenticated
/// packet on a pending session promotes it to `current` and drops the other pending ones. The
/// initiator installs directly as `current`. The displaced `current` becomes `previous` so
/// packets still in flight on it are received. Methods hand back (by return value or through
/// a `gone` callback) every session that dropped out entirely, so the caller can unmap its
/// index.
#[derive(Debug, Default, Clone)]
pub struct PeerSessions {
    /// The session used for sending.
    pub current: Option<Arc<Session>>,
    /// The session replaced by `current`, kept for receiving in-flight packets.
    pub previous: Option<Arc<Session>>,
    /// Responder sessions awaiting key confirmation, oldest first, at most [`MAX_PENDING`].
    /// Private so that bound holds; empty on the hot path almost always, so every scan of it
    /// is guarded by its length (no walk over empty slots per packet).
    pending: Vec<Arc<Session>>,
}

impl PeerSessions {
    /// No sessions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a responder-side session awaiting confirmation. Returns the session that dropped
    /// out: a pending one with the same index (replaced), or else, when all [`MAX_PENDING`]
    /// places are taken, the oldest pending one. `current` and `previous` are untouched.
    pub fn install_next(&mut self, s: Arc<Session>) -> Option<Arc<Session>> {
        let gone = if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.local_index == s.local_index)
        {
            Some(self.pending.remove(i))
        } else if self.pending.len() >= MAX_PENDING {
            Some(self.pending.remove(0))
        } else {
            None
        };
        if self.pending.capacity() == 0 {
            // One allocation for the peer's life, on the control path.
            self.pending.reserve_exact(MAX_PENDING);
        }
        self.pending.push(s);
        gone
    }

    /// Installs an initiator-side session as `current`; the old current becomes `previous`.
    /// Returns the old `previous`, now gone. Pending sessions are untouched.
    pub fn install_current(&mut self, s: Arc<Session>) -> Option<Arc<Session>> {
        let old_current = self.current.replace(s);
        core::mem::replace(&mut self.previous, old_current)
    }

    /// The sessions awaiting confirmation, oldest first.
    pub fn pending(&self) -> &[Arc<Session>] {
        &self.pending
    }

    /// The session with `local_index`, whichever slot it is in.
    #[inline]
    pub fn find(&self, local_index: u32) -> Option<&Arc<Session>> {
        for s in [&self.current, &self.previous].into_iter().flatten() {
            if s.local_index == local_index {
                return Some(s);
            }
        }
        if self.pending.is_empty() {
            return None;
        }
        self.pending.iter().find(|s| s.local_index == local_index)
    }

    /// Whether `local_index` is a pending session (a receive on it must then call
    /// [`PeerSessions::confirm`]).
    #[inline]
    pub fn is_pending(&self, local_index: u32) -> bool {
        !self.pending.is_empty() && self.pending.iter().any(|s| s.local_index == local_index)
    }

    /// The local index of a pending session that some worker has already seen authenticated
    /// (so it should be promoted here too before sending). Costs one length check when nothing
    /// is pending.
    #[inline]
    pub fn confirmed_pending(&self) -> Option<u32> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending
            .iter()
            .find(|s| s.confirmed())
            .map(|s| s.local_index)
    }

    /// Call after a message authenticated on `local_index`: if it is pending, promote it to
    /// `current` (old current → previous) and drop every other pending session. Calls `gone`
    /// for each session that dropped out (the other pending ones and the old `previous`).
    /// Returns whether a promotion happened.
    pub fn confirm(&mut self, local_index: u32, mut gone: impl FnMut(Arc<Session>)) -> bool {
        let Some(i) = self
            .pending
            .iter()
            .position(|s| s.local_index == local_index)
        else {
            return false;
        };
        let promoted = self.pending.swap_remove(i);
        for other in self.pending.drain(..) {
            gone(other);
        }
        if let Some(old) = self.install_current(promoted) {
            gone(old);
        }
        true
    }

    /// Removes the session with `local_index` from whichever slot holds it.
    pub fn remove(&mut self, local_index: u32) -> Option<Arc<Session>> {
        for slot in [&mut self.current, &mut self.previous] {
            if slot.as_ref().is_some_and(|s| s.local_index == local_index) {
                return slot.take();
            }
        }
        let i = self
            .pending
            .iter()
            .position(|s| s.local_index == local_index)?;
        Some(self.pending.remove(i))
    }

    /// Every session of the peer: current, previous, then the pending ones.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Session>> {
        [&self.current, &self.previous]
            .into_iter()
            .flatten()
            .chain(self.pending.iter())
    }

    /// The session to send on, if any.
    #[inline]
    pub fn sending(&self) -> Option<&Arc<Session>> {
        self.current.as_ref()
    }

    /// Drops sessions whose receive keys expired at `now`; calls `gone` for each.
    pub fn expire(&mut self, now: Duration, mut gone: impl FnMut(Arc<Session>)) {
        for slot in [&mut self.current, &mut self.previous] {
            if slot.as_ref().is_some_and(|s| !s.receive_alive(now)) {
                if let Some(s) = slot.take() {
                    gone(s);
                }
            }
        }
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].receive_alive(now) {
                i += 1;
            } else {
                gone(self.pending.remove(i));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{classify, Datagram, HEADER_LEN, TAG_LEN};

    const T0: Duration = Duration::from_secs(1000);

    fn keys(seed: u8, swap: bool) -> SessionKeys {
        let (a, b) = ([seed; 32], [seed.wrapping_add(100); 32]);
        let (send, recv) = if swap { (b, a) } else { (a, b) };
        SessionKeys {
            cipher: Cipher::Aes256Gcm,
            send,
            recv,
        }
    }

    /// A pair of sessions (initiator side, responder side) sharing keys.
    fn pair(seed: u8, i_idx: u32, r_idx: u32, limits: Limits) -> (Arc<Session>, Arc<Session>) {
        pair_at(seed, i_idx, r_idx, limits, T0)
    }

    fn pair_at(
        seed: u8,
        i_idx: u32,
        r_idx: u32,
        limits: Limits,
        at: Duration,
    ) -> (Arc<Session>, Arc<Session>) {
        let i = Session::new(i_idx, r_idx, 2, &keys(seed, false), at, limits).unwrap();
        let r = Session::new(r_idx, i_idx, 1, &keys(seed, true), at, limits).unwrap();
        (Arc::new(i), Arc::new(r))
    }

    fn send(s: &Session, now: Duration, tag: u8) -> Vec<u8> {
        let r = s.reserve(1, now).unwrap();
        let mut f = vec![0u8; HEADER_LEN + 4 + TAG_LEN];
        f[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&[tag; 4]);
        let n = s.seal(r.first, &mut f, 4).unwrap();
        f.truncate(n);
        f
    }

    /// Receives through a PeerSessions the way the engine will.
    fn recv(ps: &mut PeerSessions, mut d: Vec<u8>, now: Duration) -> Result<u8, OpenRefused> {
        let Datagram::Data(h) = classify(&d) else {
            return Err(OpenRefused::Malformed);
        };
        let s = ps
            .find(h.receiver_index)
            .ok_or(OpenRefused::Malformed)?
            .clone();
        let r = s.open(&mut d, now)?;
        let _ = ps.confirm(h.receiver_index, drop);
        Ok(d[r][0])
    }

    #[test]
    fn reserve_is_unique_and_flags_rekey() {
        let limits = Limits {
            rekey_after_messages: 10,
            reject_after_messages: 20,
            ..Limits::DEFAULT
        };
        let (s, _) = pair(1, 1, 2, limits);
        let a = s.reserve(4, T0).unwrap();
        let b = s.reserve(4, T0).unwrap();
        assert_eq!((a.counters(), b.counters()), (0..4, 4..8));
        assert!(!b.rekey_due);
        assert!(s.reserve(4, T0).unwrap().rekey_due);
        assert!(s.reserve(8, T0).is_ok()); // ends exactly at 20
        assert_eq!(s.reserve(1, T0), Err(SendRefused::CountersExhausted));
        assert_eq!(s.reserve(1, T0), Err(SendRefused::CountersExhausted));
        assert_eq!(s.sent(), 21, "no counter added once dead");
        assert!(matches!(
            s.reserve(0, T0),
            Err(SendRefused::BadCount { .. })
        ));
        assert!(s.reserve(MAX_RESERVE + 1, T0).is_err());
    }

    #[test]
    fn time_limits() {
        let (s, r) = pair(1, 1, 2, Limits::DEFAULT);
        assert!(
            !s.reserve(1, T0 + Duration::from_secs(119))
                .unwrap()
                .rekey_due
        );
        assert!(
            s.reserve(1, T0 + Duration::from_secs(120))
                .unwrap()
                .rekey_due
        );
        assert_eq!(
            s.reserve(1, T0 + Duration::from_secs(180)),
            Err(SendRefused::Expired)
        );
        // Sent just before expiry, received within the slack: accepted.
        let mut d = send(&s, T0 + Duration::from_secs(179), 1);
        assert!(r.open(&mut d, T0 + Duration::from_secs(189)).is_ok());
        let mut d = send(&s, T0 + Duration::from_secs(179), 1);
        assert_eq!(
            r.open(&mut d, T0 + Duration::from_secs(190)),
            Err(OpenRefused::Expired)
        );
    }

    #[test]
    fn open_order_tag_then_replay() {
        let (s, r) = pair(3, 10, 20, Limits::DEFAULT);
        let d = send(&s, T0, 7);
        let mut bad = d.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(r.open(&mut bad, T0), Err(OpenRefused::BadTag));
        assert!(!r.confirmed());
        // The forged copy did not burn the counter.
        let mut good = d.clone();
        assert!(r.open(&mut good, T0).is_ok());
        assert!(r.confirmed());
        let mut again = d.clone();
        assert_eq!(r.open(&mut again, T0), Err(OpenRefused::Replayed));
        // Wrong receiver index for this session.
        let mut wrong = d.clone();
        assert_eq!(s.open(&mut wrong, T0), Err(OpenRefused::BadTag));
    }

    #[test]
    fn concurrent_reservations_never_overlap() {
        let (s, _) = pair(1, 1, 2, Limits::DEFAULT);
        let got: Vec<Vec<u64>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    sc.spawn(|| {
                        (0..1000)
                            .map(|_| s.reserve(3, T0).unwrap().first)
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = got.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (0..4000).map(|i| i * 3).collect::<Vec<_>>());
    }

    #[test]
    fn rekey_rotation_loses_nothing() {
        // A = initiator, B = responder. Session 1 established and confirmed.
        let (a1, b1) = pair(1, 100, 200, Limits::DEFAULT);
        let mut a = PeerSessions::new();
        let mut b = PeerSessions::new();
        assert!(a.install_current(a1.clone()).is_none());
        assert!(b.install_next(b1.clone()).is_none());
        let now = T0 + Duration::from_secs(1);
        assert_eq!(recv(&mut b, send(&a1, now, 1), now), Ok(1));
        assert_eq!(b.current.as_ref().unwrap().local_index, 200);

        // Packets in flight on session 1 both ways.
        let now = T0 + Duration::from_secs(121);
        let a_old: Vec<_> = (0..5).map(|i| send(&a1, now, 10 + i)).collect();
        let b_old: Vec<_> = (0..5)
            .map(|i| send(b.sending().unwrap(), now, 20 + i))
            .collect();

        // Rekey: B answers the handshake (next), A completes it (current).
        let (a2, b2) = pair_at(2, 101, 201, Limits::DEFAULT, now);
        assert!(b.install_next(b2.clone()).is_none());
        assert!(a.install_current(a2.clone()).is_none());
        assert_eq!(a.previous.as_ref().unwrap().local_index, 100);
        // B still sends on session 1 until confirmation.
        assert_eq!(b.sending().unwrap().local_index, 200);
        let b_mid = send(b.sending().unwrap(), now, 30);

        // A sends on session 2; interleave with old packets arriving late.
        let a_new: Vec<_> = (0..5)
            .map(|i| send(a.sending().unwrap(), now, 40 + i))
            .collect();
        let mut got_b = Vec::new();
        for (o, n) in a_old.into_iter().zip(a_new) {
            got_b.push(recv(&mut b, n, now).unwrap());
            got_b.push(recv(&mut b, o, now).unwrap());
        }
        assert_eq!(b.current.as_ref().unwrap().local_index, 201);
        assert_eq!(b.previous.as_ref().unwrap().local_index, 200);
        assert!(b.pending().is_empty());
        got_b.sort_unstable();
        assert_eq!(got_b, vec![10, 11, 12, 13, 14, 40, 41, 42, 43, 44]);

        // B now sends on session 2; its old packets still reach A through `previous`.
        let b_new = send(b.sending().unwrap(), now, 50);
        let mut got_a = vec![recv(&mut a, b_new, now).unwrap()];
        for d in b_old.into_iter().chain([b_mid]) {
            got_a.push(recv(&mut a, d, now).unwrap());
        }
        got_a.sort_unstable();
        assert_eq!(got_a, vec![20, 21, 22, 23, 24, 30, 50]);

        // Session 1 expires; session 2 keeps working.
        let later = T0 + Duration::from_secs(191);
        let mut gone = Vec::new();
        a.expire(later, |s| gone.push(s.local_index));
        assert_eq!(gone, vec![100]);
        assert_eq!(a.sending().unwrap().local_index, 101);
        let d = send(&b2, later, 60);
        assert_eq!(recv(&mut a, d, later), Ok(60));
    }

    fn lone(idx: u32, at: Duration) -> Arc<Session> {
        Arc::new(Session::new(idx, idx, 1, &keys(9, false), at, Limits::DEFAULT).unwrap())
    }

    fn indices(v: &[Arc<Session>]) -> Vec<u32> {
        v.iter().map(|s| s.local_index).collect()
    }

    #[test]
    fn pending_sessions_are_bounded_oldest_out_and_confirm_drops_the_rest() {
        let mut ps = PeerSessions::new();
        assert!(ps.install_current(lone(1, T0)).is_none());
        for i in 0..MAX_PENDING as u32 {
            assert!(ps.install_next(lone(100 + i, T0)).is_none());
        }
        assert_eq!(ps.pending().len(), MAX_PENDING);
        // Full: the oldest pending one goes; current is untouched.
        let gone = ps.install_next(lone(200, T0)).unwrap();
        assert_eq!(gone.local_index, 100);
        assert_eq!(ps.current.as_ref().unwrap().local_index, 1);
        assert!(ps.previous.is_none());
        // The same index again replaces, not duplicates.
        assert_eq!(ps.install_next(lone(103, T0)).unwrap().local_index, 103);
        assert_eq!(ps.pending().len(), MAX_PENDING);
        assert!(ps.is_pending(105) && !ps.is_pending(100));
        assert!(ps.confirmed_pending().is_none());
        let mut dropped = Vec::new();
        assert!(ps.confirm(105, |s| dropped.push(s.local_index)));
        dropped.sort_unstable();
        assert_eq!(dropped, vec![101, 102, 103, 104, 106, 107, 200]);
        assert_eq!(ps.current.as_ref().unwrap().local_index, 105);
        assert_eq!(ps.previous.as_ref().unwrap().local_index, 1);
        assert!(ps.pending().is_empty());
        assert!(!ps.confirm(105, |_| panic!("nothing pending")));
    }

    #[test]
    fn remove_and_expire_cover_pending_sessions() {
        let mut ps = PeerSessions::new();
        ps.install_next(lone(1, T0));
        ps.install_next(lone(2, T0 + Duration::from_secs(100)));
        ps.install_next(lone(3, T0));
        assert_eq!(ps.remove(3).unwrap().local_index, 3);
        assert!(ps.remove(3).is_none());
        let mut gone = Vec::new();
        ps.expire(T0 + Duration::from_secs(191), |s| gone.push(s.local_index));
        assert_eq!(gone, vec![1]);
        assert_eq!(indices(ps.pending()), vec![2]);
        assert!(ps.find(2).is_some() && ps.find(1).is_none());
    }

    #[test]
    fn only_the_first_open_reports_confirmation() {
        let (s, r) = pair(4, 10, 20, Limits::DEFAULT);
        let mut d1 = send(&s, T0, 1);
        let mut d2 = send(&s, T0, 2);
        let mut bad = send(&s, T0, 3);
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(r.open_confirming(&mut bad, T0), Err(OpenRefused::BadTag));
        assert!(!r.confirmed(), "a forged packet confirms nothing");
        assert!(r.open_confirming(&mut d1, T0).unwrap().1);
        assert!(!r.open_confirming(&mut d2, T0).unwrap().1);
        assert!(r.confirmed());
    }

    /// The naive model of [`PeerSessions`]: indices only.
    #[derive(Default, Debug)]
    struct Model {
        current: Option<u32>,
        previous: Option<u32>,
        pending: Vec<u32>,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Next(u32),
        Current(u32),
        Confirm(u32),
        Remove(u32),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u32..14).prop_map(Op::Next),
            1 => (0u32..14).prop_map(Op::Current),
            2 => (0u32..14).prop_map(Op::Confirm),
            1 => (0u32..14).prop_map(Op::Remove),
        ]
    }

    proptest::proptest! {
        #[test]
        fn peer_sessions_match_a_naive_model(ops in proptest::collection::vec(op(), 0..60)) {
            let mut ps = PeerSessions::new();
            let mut m = Model::default();
            for op in ops {
                let mut gone: Vec<u32> = Vec::new();
                let mut want: Vec<u32> = Vec::new();
                match op {
                    Op::Next(i) => {
                        gone.extend(ps.install_next(lone(i, T0)).map(|s| s.local_index));
                        if let Some(p) = m.pending.iter().position(|&x| x == i) {
                            want.push(m.pending.remove(p));
                        } else if m.pending.len() >= MAX_PENDING {
                            want.push(m.pending.remove(0));
                        }
                        m.pending.push(i);
                    }
                    Op::Current(i) => {
                        gone.extend(ps.install_current(lone(i, T0)).map(|s| s.local_index));
                        want.extend(m.previous.take());
                        m.previous = m.current.replace(i);
                    }
                    Op::Confirm(i) => {
                        let promoted = ps.confirm(i, |s| gone.push(s.local_index));
                        let model_promotes = m.pending.contains(&i);
                        proptest::prop_assert_eq!(promoted, model_promotes);
                        if model_promotes {
                            want.extend(m.pending.drain(..).filter(|&x| x != i));
                            want.extend(m.previous.take());
                            m.previous = m.current.replace(i);
                        }
                    }
                    Op::Remove(i) => {
                        gone.extend(ps.remove(i).map(|s| s.local_index));
                        if m.current == Some(i) {
                            want.extend(m.current.take());
                        } else if m.previous == Some(i) {
                            want.extend(m.previous.take());
                        } else if let Some(p) = m.pending.iter().position(|&x| x == i) {
                            want.push(m.pending.remove(p));
                        }
                    }
                }
                gone.sort_unstable();
                want.sort_unstable();
                proptest::prop_assert_eq!(gone, want);
                proptest::prop_assert_eq!(ps.current.as_ref().map(|s| s.local_index), m.current);
                proptest::prop_assert_eq!(ps.previous.as_ref().map(|s| s.local_index), m.previous);
                proptest::prop_assert_eq!(indices(ps.pending()), m.pending.clone());
                proptest::prop_assert!(ps.pending().len() <= MAX_PENDING);
                for i in 0..14 {
                    let model_has = m.current == Some(i)
                        || m.previous == Some(i)
                        || m.pending.contains(&i);
                    proptest::prop_assert_eq!(ps.find(i).is_some(), model_has);
                    proptest::prop_assert_eq!(ps.is_pending(i), m.pending.contains(&i));
                }
                proptest::prop_assert_eq!(ps.all().count(),
                    usize::from(m.current.is_some()) + usize::from(m.previous.is_some())
                        + m.pending.len());
            }
        }
    }

    #[test]
    fn find_and_confirm_only_next() {
        let (_, b1) = pair(1, 1, 2, Limits::DEFAULT);
        let mut ps = PeerSessions::new();
        ps.install_current(b1);
        assert!(ps.find(2).is_some());
        assert!(ps.find(3).is_none());
        assert!(!ps.confirm(2, drop));
        assert_eq!(ps.current.as_ref().unwrap().local_index, 2);
    }
}
