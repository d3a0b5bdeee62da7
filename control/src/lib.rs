//! The ShadowMesh control plane: identities and certificates, post-quantum handshakes, the
//! control transport, and the hand-off of session keys to the dataplane.
//!
//! Protocol logic is sans-IO: functions of (state, input bytes, now) returning outputs.
//! The wire formats and the key schedule are specified in `docs/protocol.md`.
#![forbid(unsafe_code)]

pub mod api;
pub mod armor;
pub mod cert;
pub mod clock;
pub mod config;
pub mod cookie;
pub mod daemon;
pub mod dht;
pub mod digest;
pub mod handshake;
pub mod identity;
pub mod intern;
pub mod nat;
pub mod node;
pub mod peers;
pub mod punch;
pub mod rand;
pub mod ratelimit;
pub mod sim;
pub mod transport;
