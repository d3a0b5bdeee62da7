//! Time as the control plane's protocol logic sees it: a monotonic reading for every timer and
//! a wall-clock reading for what is defined in wall time (certificate validity, handshake
//! timestamps).
//!
//! Owns only the pair type; it never reads a clock itself (the binary's one clock wrapper
//! does), so tests and simulations pass any time they like, including wall-clock jumps.

use std::time::Duration;

/// The two clocks at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time since an arbitrary origin: retransmissions, rekeys, expiry, rate
    /// limits. Never jumps.
    pub mono: Duration,
    /// Wall-clock time since the Unix epoch: certificate validity and handshake timestamps
    /// only. May jump either way (NTP, an operator, a suspended VM).
    pub wall: Duration,
}

impl Now {
    /// Both clocks at the same reading (tests, simulations).
    #[must_use]
    pub fn both(t: Duration) -> Self {
        Self { mono: t, wall: t }
    }

    /// This moment `d` later on both clocks.
    #[must_use]
    pub fn plus(self, d: Duration) -> Self {
        Self {
            mono: self.mono + d,
            wall: self.wall + d,
        }
    }
}

/// A bare `Duration` is both clocks at that reading (tests, simulations).
impl From<Duration> for Now {
    fn from(t: Duration) -> Self {
        Self::both(t)
    }
}
