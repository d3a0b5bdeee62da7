//! A toy node that exercises the engine: it pings a random known peer every interval and
//! records the round-trip times of the pongs it gets back.
//!
//! Owns nothing beyond its peer list and samples; it is for testing the simulator (latency,
//! loss, partitions, churn, determinism), not a protocol of the project.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use rand_core::RngCore;

use super::SimNode;
use crate::clock::Now;

const PING: u8 = 0;
const PONG: u8 = 1;

/// A node that pings random peers.
#[derive(Debug, Clone)]
pub struct PingNode {
    peers: Vec<SocketAddr>,
    interval: Duration,
    next: Option<Duration>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Pings sent.
    pub pings: u64,
    /// Pongs sent in answer to pings.
    pub pongs_sent: u64,
    /// Round-trip times measured (time of the pong minus the time carried in it).
    pub rtts: Vec<Duration>,
    /// Datagrams that were neither a ping nor a pong.
    pub malformed: u64,
    /// Extra bytes added to each ping (to test the datagram size limit).
    pub padding: usize,
}

impl PingNode {
    /// A node that pings one of `peers` every `interval`, starting after a random fraction
    /// of the interval.
    #[must_use]
    pub fn new(peers: Vec<SocketAddr>, interval: Duration) -> Self {
        Self {
            peers,
            interval,
            next: None,
            out: VecDeque::new(),
            pings: 0,
            pongs_sent: 0,
            rtts: Vec::new(),
            malformed: 0,
            padding: 0,
        }
    }
}

impl SimNode for PingNode {
    fn handle_datagram(&mut self, src: SocketAddr, d: &[u8], now: Now, rng: &mut dyn RngCore) {
        if self.next.is_none() {
            self.handle_timeout(now, rng);
        }
        let stamp = d
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes);
        match (d.first(), stamp) {
            (Some(&PING), Some(s)) => {
                let mut r = vec![PONG];
                r.extend_from_slice(&s.to_le_bytes());
                self.out.push_back((src, r));
                self.pongs_sent += 1;
            }
            (Some(&PONG), Some(s)) => {
                self.rtts
                    .push(now.mono.saturating_sub(Duration::from_micros(s)));
            }
            _ => self.malformed += 1,
        }
    }

    fn handle_timeout(&mut self, now: Now, rng: &mut dyn RngCore) {
        match self.next {
            None => {
                // Spread the first pings over one interval.
                let us = self.interval.as_micros().max(1) as u64;
                self.next = Some(now.mono + Duration::from_micros(rng.next_u64() % us));
            }
            Some(t) if t <= now.mono => {
                if !self.peers.is_empty() {
                    let p = self.peers[(rng.next_u64() % self.peers.len() as u64) as usize];
                    let mut m = vec![PING];
                    m.extend_from_slice(&(now.mono.as_micros() as u64).to_le_bytes());
                    m.resize(m.len() + self.padding, 0);
                    self.out.push_back((p, m));
                    self.pings += 1;
                }
                self.next = Some(now.mono + self.interval);
            }
            Some(_) => {}
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        // Before the first timeout the node wants one at once, to draw its start time.
        Some(self.next.unwrap_or(Duration::ZERO))
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }
}

impl PingNode {
    /// The peers (tests rebuild a fresh node with them).
    #[must_use]
    pub fn peers_for_test(&self) -> Vec<SocketAddr> {
        self.peers.clone()
    }
}
