//! The control plane ↔ dataplane IPC: one Unix `SOCK_SEQPACKET` socket (mode 0600, peers
//! checked with `SO_PEERCRED`), one bounded, versioned message per datagram.
//!
//! - [`proto`]: the sans-IO codec (wire format, limits, message types).
//! - [`server`]: the dataplane's IPC thread, which feeds requests to an [`IpcHandler`] and
//!   forwards the engine's events up.
//! - [`client`]: the blocking client used by the control plane's driver and the CLI.
//!
//! This module never touches a data packet and never logs key material; sockets and `unsafe`
//! live in `shadowmesh_platform::seqpacket`.

pub mod client;
pub mod proto;
pub mod server;

use std::time::Duration;

use shadowmesh_platform::seqpacket::SeqpacketError;

pub use client::IpcClient;
pub use proto::{
    DownMsg, DropCause, ErrorCode, InstallSession, PeerStats, Slot, Stats, UpMsg, WorkerStats,
    MAX_MSG, PROTOCOL_VERSION,
};
pub use server::{IpcCounters, IpcHandler, IpcServer, IpcWaker, MemoryHandler, StopReason};

/// The one place the IPC reads the clock. The IPC threads are I/O drivers, not protocol logic:
/// the clock only bounds how long they wait (for a reply, for a Hello).
#[expect(
    clippy::disallowed_methods,
    reason = "I/O driver deadlines for blocking IPC waits; no protocol state depends on them"
)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

/// Errors of the IPC server and client.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    /// The socket layer failed.
    #[error("IPC socket: {0}")]
    Socket(#[from] SeqpacketError),
    /// A message could not be encoded (a limit of the format).
    #[error("IPC encode: {0}")]
    Encode(#[from] proto::EncodeError),
    /// A received message could not be decoded.
    #[error("IPC decode: {0}")]
    Decode(proto::DecodeError),
    /// The other side speaks another protocol version.
    #[error(
        "IPC protocol version mismatch: this side speaks version {ours}, the other side speaks version {theirs}"
    )]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// The other side broke the message sequence.
    #[error("IPC protocol error: expected {expected}, got {got}")]
    Protocol {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// No answer within the timeout.
    #[error("IPC timeout: no {what} within {after:?}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The dataplane answered the request with an error.
    #[error("dataplane refused request {id}: {message} (code {})", code.0)]
    Remote {
        /// Request id (0 if the dataplane could not read it).
        id: u32,
        /// Error class.
        code: ErrorCode,
        /// The dataplane's explanation.
        message: String,
    },
    /// The other side closed the connection.
    #[error("IPC connection closed by the other side")]
    Closed,
}

impl From<proto::DecodeError> for IpcError {
    fn from(e: proto::DecodeError) -> Self {
        match e {
            proto::DecodeError::VersionMismatch { ours, theirs } => {
                IpcError::VersionMismatch { ours, theirs }
            }
            other => IpcError::Decode(other),
        }
    }
}
