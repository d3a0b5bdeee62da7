//! The control transport: frames control messages (handshake, cookie, later DHT and NAT) into
//! MAC'd datagrams whose first byte is 5, fragments them to ≤ 1200 bytes, reassembles them with
//! bounded memory, repairs lost fragments (selective ACKs, resends of only what is missing) and
//! schedules handshake retries with exponential backoff. The wire format and rules are §6 of
//! docs/protocol.md.
//!
//! Data frame: `5 | kind u8 | msg_id u32 | frag_index u8 | frag_count u8 | payload (1..=1176) |
//! mac [16]`; ACK frame: `5 | 0 | msg_id u32 | acked kind u8 | frag_count u8 | bitmap | mac`.
//! The MAC is HMAC-SHA256 truncated to 16 bytes under a key made from the CA's ID
//! ([`FrameKey`]): it keeps traffic not aimed at this network out of reassembly state; it is
//! not an authenticity guarantee (the CA's public key is public).
//!
//! Owns reassembly, repair and retry state. It never reads a clock (time is passed in), never
//! lets its memory exceed the configured caps, never sends to an address it was not asked to
//! (repairs go to the message's destination, ACKs to the fragments' source) and never panics
//! on a datagram: malformed input is a counted drop.

pub mod fragment;
pub mod reassembly;
pub mod repair;
pub mod retransmit;

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

pub use fragment::{fragment, parse, Ack, Frame, FrameHeader, FrameKey};
pub use reassembly::{Incoming, Message, Reassembler, ReassemblyLimits, ReassemblyStats};
pub use repair::{Budget, RepairConfig, RepairStats, Sender};
pub use retransmit::{RetransmitConfig, RetransmitEvent, Retransmitter};

/// First byte of every control datagram (the dataplane hands these to the control plane).
pub const CONTROL_TYPE: u8 = 5;
/// Frame header length.
pub const HEADER_LEN: usize = 8;
/// Length of the MAC at the end of every control datagram.
pub const MAC_LEN: usize = 16;
/// Largest datagram we emit or accept.
pub const MAX_DATAGRAM: usize = 1200;
/// Largest fragment payload.
pub const MAX_FRAGMENT_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN - MAC_LEN;
/// Largest control message.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Most fragments of one message.
pub const MAX_FRAGMENTS: usize = MAX_MESSAGE_LEN.div_ceil(MAX_FRAGMENT_PAYLOAD);
/// Bytes charged per partial message on top of its payload (bookkeeping estimate), so that a
/// flood of one-byte fragments cannot hold unbounded entries.
pub const ENTRY_OVERHEAD: usize = 128;
/// Most bytes sent to an unvalidated address per byte received from it for one message.
pub const AMPLIFICATION: usize = 3;

/// Frame kind of a selective ACK.
pub const KIND_ACK: u8 = 0;
/// Message kind: handshake messages (M1, M2, cookie reply).
pub const KIND_HANDSHAKE: u8 = 1;
/// Message kind: DHT.
pub const KIND_DHT: u8 = 2;
/// Message kind: NAT traversal.
pub const KIND_NAT: u8 = 3;

/// Why a control datagram was dropped or a message could not be framed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TransportError {
    /// First byte is not 5.
    #[error("not a control datagram: expected first byte 5")]
    NotControl,
    /// The MAC keyed by the network's CA ID does not verify.
    #[error("control datagram MAC does not verify (not for this network)")]
    BadMac,
    /// A header field or the length is out of range.
    #[error("malformed control frame: expected {0}")]
    Malformed(&'static str),
    /// The message is larger than [`MAX_MESSAGE_LEN`].
    #[error("control message of {0} bytes exceeds {MAX_MESSAGE_LEN}")]
    TooLarge(usize),
    /// A fragment disagrees with earlier fragments of the same message (fragment count).
    #[error("fragment count disagrees with earlier fragments of the message")]
    Inconsistent,
    /// The fragment was dropped to keep reassembly memory within its caps.
    #[error("fragment dropped: reassembly memory limit")]
    OverLimit,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub dst: SocketAddr,
    /// The whole datagram (type byte 5 first).
    pub payload: Vec<u8>,
}

/// Settings of a [`Transport`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TransportConfig {
    /// Reassembly caps and ACK timers.
    pub reassembly: ReassemblyLimits,
    /// Repair timers and caps.
    pub repair: RepairConfig,
}

/// Both halves of the control transport for one node: reassembly (with ACKs) and repair.
#[derive(Debug)]
pub struct Transport {
    key: FrameKey,
    reassembler: Reassembler,
    sender: Sender,
}

impl Transport {
    /// A transport for the network of `key`.
    #[must_use]
    pub fn new(key: FrameKey, config: TransportConfig) -> Self {
        Self {
            reassembler: Reassembler::new(key.clone(), config.reassembly),
            sender: Sender::new(config.repair),
            key,
        }
    }

    /// Fragments `msg` and returns its datagrams for `dst`; keeps them for repair within
    /// `budget` (see [`Sender::send`] for `class` and `now`).
    ///
    /// # Errors
    /// As [`fragment()`].
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        dst: SocketAddr,
        kind: u8,
        msg_id: u32,
        msg: &[u8],
        budget: Budget,
        class: Option<u8>,
        now: Option<Duration>,
    ) -> Result<Vec<Transmit>, TransportError> {
        let frags = fragment(&self.key, kind, msg_id, msg)?;
        Ok(self
            .sender
            .send(dst, kind, msg_id, frags, budget, class, now))
    }

    /// Takes one control datagram from `src`; returns a message when it completes one. ACKs to
    /// send back to `src` are appended to `out`.
    ///
    /// # Errors
    /// A counted drop (see [`Reassembler::handle_datagram`]).
    pub fn handle_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        now: Duration,
        out: &mut Vec<Transmit>,
    ) -> Result<Option<Message>, TransportError> {
        match self.reassembler.handle_datagram(src, datagram, now, out)? {
            Incoming::Nothing => Ok(None),
            Incoming::Message(m) => Ok(Some(m)),
            Incoming::Ack(a) => {
                self.sender.on_ack(src, a, now);
                Ok(None)
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run next.
    #[must_use]
    pub fn poll_timeout(&self, now: Duration) -> Option<Duration> {
        [
            self.reassembler.poll_timeout(),
            self.sender.poll_timeout(now),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now`: reassembly timeouts, ACKs, repairs.
    pub fn handle_timeout(&mut self, now: Duration, out: &mut Vec<Transmit>) {
        self.reassembler.handle_timeout(now, out);
        self.sender.handle_timeout(now, out);
    }

    /// The receiving half.
    #[must_use]
    pub fn reassembler(&self) -> &Reassembler {
        &self.reassembler
    }

    /// The sending half.
    #[must_use]
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The frame key.
    #[must_use]
    pub fn key(&self) -> &FrameKey {
        &self.key
    }
}

#[cfg(test)]
mod tests;
