//! The outer fallback of the control transport: exponential-backoff timers for handshake
//! initiations. A retry is a whole new initiation (new M1); fragment repair inside one message
//! is [`super::repair`]'s job, so the first retry waits until that repair has had its chance.
//!
//! Owns one timer per key. It never reads a clock.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// Retransmission schedule settings.
#[derive(Debug, Clone, Copy)]
pub struct RetransmitConfig {
    /// First retry interval.
    pub initial: Duration,
    /// Interval cap.
    pub max_interval: Duration,
    /// Retries before giving up.
    pub max_retries: u32,
}

impl Default for RetransmitConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max_interval: Duration::from_secs(16),
            max_retries: 6,
        }
    }
}

/// What a timer expiry asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum RetransmitEvent<K> {
    /// Send a fresh initiation for `key` (a new M1: the old timestamp would now be a replay if
    /// the first reached the responder). `attempt` counts from 1.
    Retransmit {
        /// The handshake.
        key: K,
        /// Retry number.
        attempt: u32,
    },
    /// Stop trying.
    GiveUp {
        /// The handshake.
        key: K,
    },
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    deadline: Duration,
    interval: Duration,
    attempt: u32,
}

/// Exponential-backoff timers for handshake initiations (sans-IO: `poll_timeout`,
/// `handle_timeout`).
#[derive(Debug)]
pub struct Retransmitter<K> {
    config: RetransmitConfig,
    timers: HashMap<K, Timer>,
}

impl<K: Copy + Eq + Hash> Retransmitter<K> {
    /// An empty schedule.
    #[must_use]
    pub fn new(config: RetransmitConfig) -> Self {
        Self {
            config,
            timers: HashMap::new(),
        }
    }

    /// Arms the timer for `key`: the initiation was just sent at `now`.
    pub fn start(&mut self, key: K, now: Duration) {
        self.timers.insert(
            key,
            Timer {
                deadline: now + self.config.initial,
                interval: self.config.initial,
                attempt: 0,
            },
        );
    }

    /// The handshake completed (or was abandoned): stop its timer. True if one was armed.
    pub fn cancel(&mut self, key: K) -> bool {
        self.timers.remove(&key).is_some()
    }

    /// The earliest deadline, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.timers.values().map(|t| t.deadline).min()
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) -> Vec<RetransmitEvent<K>> {
        let mut out = Vec::new();
        let max = self.config.max_interval;
        let retries = self.config.max_retries;
        self.timers.retain(|&key, t| {
            if t.deadline > now {
                return true;
            }
            if t.attempt >= retries {
                out.push(RetransmitEvent::GiveUp { key });
                return false;
            }
            t.attempt += 1;
            t.interval = (t.interval * 2).min(max);
            t.deadline = now + t.interval;
            out.push(RetransmitEvent::Retransmit {
                key,
                attempt: t.attempt,
            });
            true
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_gives_up() {
        let mut t = Retransmitter::new(RetransmitConfig {
            initial: Duration::from_secs(1),
            max_interval: Duration::from_secs(4),
            max_retries: 4,
        });
        t.start(7u32, Duration::ZERO);
        let mut now = Duration::ZERO;
        let mut gaps = Vec::new();
        let mut gave_up = false;
        for _ in 0..10 {
            let Some(next) = t.poll_timeout() else { break };
            gaps.push((next - now).as_secs());
            now = next;
            for ev in t.handle_timeout(now) {
                if ev == (RetransmitEvent::GiveUp { key: 7 }) {
                    gave_up = true;
                }
            }
        }
        assert_eq!(gaps, vec![1, 2, 4, 4, 4]);
        assert!(gave_up);
        t.start(8, now);
        assert!(t.cancel(8));
        assert_eq!(t.poll_timeout(), None);
    }
}
