//! A simulated node that speaks through the real control transport: its messages are
//! fragmented, MAC'd, acknowledged and repaired exactly as in production
//! ([`crate::transport::Transport`]), under one message kind.
//!
//! Owns the node's transport and message-id counter; the message logic is a [`MessageNode`].
//! Datagrams of another kind or that fail the transport are counted drops.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use rand_core::RngCore;

use super::SimNode;
use crate::clock::Now;
use crate::transport::FrameKey;
use crate::transport::{Budget, Transmit, Transport, TransportConfig};

/// Message-level sans-IO logic (a DHT, a toy): whole messages in and out.
pub trait MessageNode {
    /// One reassembled message of our kind from `src`.
    fn handle_message(&mut self, src: SocketAddr, msg: &[u8], now: Now, rng: &mut dyn RngCore);
    /// Its timer fired.
    fn handle_timeout(&mut self, now: Now, rng: &mut dyn RngCore);
    /// When its timer wants to fire (monotonic, absolute).
    fn poll_timeout(&self) -> Option<Duration>;
    /// The next message to send.
    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)>;
}

/// Counters of a [`WireNode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WireStats {
    /// Messages handed to the transport.
    pub messages_sent: u64,
    /// Messages the transport refused to frame (too large).
    pub unsendable: u64,
    /// Messages delivered to the logic.
    pub messages_received: u64,
    /// Messages of another kind (dropped).
    pub other_kind: u64,
    /// Datagrams the transport dropped (bad MAC, malformed, over its caps).
    pub transport_drops: u64,
}

/// A node = a real [`Transport`] + message logic `M`.
pub struct WireNode<M> {
    /// The message logic.
    pub inner: M,
    transport: Transport,
    kind: u8,
    budget: Budget,
    next_msg_id: u32,
    out: VecDeque<Transmit>,
    last_now: Duration,
    stats: WireStats,
}

impl<M: MessageNode> WireNode<M> {
    /// `inner` speaking kind `kind` through a transport keyed by `key`; each message may be
    /// repaired within `budget`.
    pub fn new(inner: M, key: FrameKey, kind: u8, budget: Budget) -> Self {
        Self {
            inner,
            transport: Transport::new(key, TransportConfig::default()),
            kind,
            budget,
            next_msg_id: 1,
            out: VecDeque::new(),
            last_now: Duration::ZERO,
            stats: WireStats::default(),
        }
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> WireStats {
        self.stats
    }

    /// The transport (its counters).
    #[must_use]
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Frames what the logic queued. Call after driving `inner` directly.
    pub fn pump(&mut self, now: Duration) {
        self.last_now = self.last_now.max(now);
        while let Some((dst, msg)) = self.inner.poll_transmit() {
            let id = self.next_msg_id;
            self.next_msg_id = self.next_msg_id.wrapping_add(1).max(1);
            match self
                .transport
                .send(dst, self.kind, id, &msg, self.budget, None, Some(now))
            {
                Ok(t) => {
                    self.stats.messages_sent += 1;
                    self.out.extend(t);
                }
                Err(_) => self.stats.unsendable += 1,
            }
        }
    }
}

impl<M: MessageNode> SimNode for WireNode<M> {
    fn handle_datagram(&mut self, src: SocketAddr, d: &[u8], now: Now, rng: &mut dyn RngCore) {
        self.last_now = self.last_now.max(now.mono);
        let mut acks = Vec::new();
        let r = self.transport.handle_datagram(src, d, now.mono, &mut acks);
        self.out.extend(acks);
        match r {
            Ok(Some(m)) if m.kind == self.kind => {
                self.stats.messages_received += 1;
                self.inner.handle_message(src, &m.payload, now, rng);
            }
            Ok(Some(_)) => self.stats.other_kind += 1,
            Ok(None) => {}
            Err(_) => self.stats.transport_drops += 1,
        }
        self.pump(now.mono);
    }

    fn handle_timeout(&mut self, now: Now, rng: &mut dyn RngCore) {
        self.last_now = self.last_now.max(now.mono);
        let mut out = Vec::new();
        self.transport.handle_timeout(now.mono, &mut out);
        self.out.extend(out);
        if self.inner.poll_timeout().is_some_and(|t| t <= now.mono) {
            self.inner.handle_timeout(now, rng);
        }
        self.pump(now.mono);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        [
            self.transport.poll_timeout(self.last_now),
            self.inner.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front().map(|t| (t.dst, t.payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{node_addr, NetConfig, Sim, SimConfig};
    use crate::transport::KIND_DHT;

    /// Sends one big message to a peer at start and echoes what it receives once.
    struct Echo {
        to: Option<SocketAddr>,
        size: usize,
        got: Vec<(SocketAddr, usize, Duration)>,
        out: VecDeque<(SocketAddr, Vec<u8>)>,
    }

    impl MessageNode for Echo {
        fn handle_message(&mut self, src: SocketAddr, msg: &[u8], now: Now, _: &mut dyn RngCore) {
            self.got.push((src, msg.len(), now.mono));
            if msg.first() == Some(&0) {
                let mut r = msg.to_vec();
                r[0] = 1;
                self.out.push_back((src, r));
            }
        }
        fn handle_timeout(&mut self, _: Now, _: &mut dyn RngCore) {
            if let Some(to) = self.to.take() {
                let m: Vec<u8> = (0..self.size)
                    .map(|i| if i == 0 { 0 } else { i as u8 })
                    .collect();
                self.out.push_back((to, m));
            }
        }
        fn poll_timeout(&self) -> Option<Duration> {
            self.to.map(|_| Duration::from_millis(1))
        }
        fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
            self.out.pop_front()
        }
    }

    fn run(loss_ppm: u32, seed: u64) -> Sim<WireNode<Echo>> {
        let mut c = SimConfig::new(seed);
        c.net = NetConfig {
            loss_ppm,
            ..NetConfig::default()
        };
        let mut sim = Sim::new(c);
        let key = FrameKey::for_network(&[3; 32]);
        for i in 0..2 {
            let e = Echo {
                to: (i == 0).then(|| node_addr(1)),
                size: 9_000,
                got: Vec::new(),
                out: VecDeque::new(),
            };
            sim.add_node(WireNode::new(e, key.clone(), KIND_DHT, Budget::INITIATION));
        }
        sim.run_until(Duration::from_secs(20));
        sim
    }

    #[test]
    fn a_fragmented_message_crosses_and_is_echoed() {
        let sim = run(0, 1);
        let a = sim.node(0).unwrap();
        let b = sim.node(1).unwrap();
        assert_eq!(b.inner.got.len(), 1);
        assert_eq!(b.inner.got[0].1, 9_000);
        assert_eq!(a.inner.got.len(), 1);
        // Arrived one RTT after the send.
        let rtt = sim.net().rtt(0, 1);
        assert_eq!(a.inner.got[0].2, Duration::from_millis(1) + rtt);
        // 8 fragments each way plus ACKs, every datagram within 1200 bytes.
        assert!(a.transport().sender().stats().sent >= 8);
        assert_eq!(a.stats().transport_drops + b.stats().transport_drops, 0);
    }

    #[test]
    fn repairs_carry_it_through_loss() {
        // 20 % loss: the 8 fragments rarely all arrive first time; repair finishes the job.
        let mut ok = 0;
        for seed in 0..10 {
            let sim = run(200_000, seed);
            let a = sim.node(0).unwrap();
            if a.inner.got.len() == 1 {
                ok += 1;
            }
            assert!(a.transport().sender().stats().resent > 0 || seed > 0);
        }
        assert!(ok >= 8, "{ok}");
    }
}
