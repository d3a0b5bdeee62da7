//! The ShadowMesh dataplane: moves overlay IP packets between TUN queues and UDP sockets,
//! encrypting and decrypting them in place.
//!
//! The packet logic here is sans-IO: functions over byte buffers and state, with time passed
//! in. The engine and platform backends only move buffers.
#![deny(unsafe_code)]

pub mod crypto;
pub mod engine;
/// The IPC with the control plane (its own crate, so the control plane does not link the
/// dataplane); re-exported under its old path.
pub use shadowmesh_ipc as ipc;
pub mod node;
pub mod offload;
pub mod ratelimit;
pub mod relay;
pub mod replay;
pub mod routing;
pub mod session;
pub mod wire;
