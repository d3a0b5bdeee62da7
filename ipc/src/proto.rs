//! The IPC message codec: a versioned, bounded, hand-written binary encoding of everything the
//! control plane and the dataplane say to each other. Sans-IO: bytes in, messages out.
//!
//! This module owns the wire format and its limits. It must never panic on any input (every
//! read is bounds-checked; malformed input is a [`DecodeError`]), never allocate more than the
//! input can justify (counts are checked against the bytes left), and never print a key
//! (`Debug` of [`InstallSession`] redacts them; keys live in [`Zeroizing`] buffers).
//!
//! # Wire format (all integers little-endian)
//! One message per seqpacket datagram, at most [`MAX_MSG`] bytes. Byte 0 is the frame kind:
//!
//! | kind | direction | layout after the kind byte |
//! | --- | --- | --- |
//! | `0x01` Hello | both | `version u16, role u8` (1 control, 2 dataplane, 3 observer) — this layout is frozen for all versions |
//! | `0x02` Request | down | `id u32, tag u8, fields` ([`DownMsg`]) |
//! | `0x03` Reply | up | `id u32, tag u8, fields` ([`UpMsg`]: `Ack`, `Error`, `Stats`) |
//! | `0x04` Event | up | `tag u8, fields` (unsolicited [`UpMsg`]) |
//!
//! Up tags: 1 Ack, 2 Error, 3 Stats, 4 ControlReceived, 5 NoSession, 6 RekeyNeeded,
//! 7 EndpointChanged, 8 SessionConfirmed (`peer u32, local_index u32`; since version 2).
//!
//! Fields: an IP address is `family u8 (4|6)` + 4 or 16 bytes; a socket address is an IP
//! address + `port u16` (+ `scope_id u32` for IPv6); an optional `u32` is `present u8` + `u32`;
//! byte strings and lists carry a `u16` count. The first message each way is a Hello; a
//! different version is [`DecodeError::VersionMismatch`] naming both versions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use zeroize::Zeroizing;

/// The IPC protocol version this build speaks. Decoders refuse unknown tags and a `drops`
/// array of another length, so any new message or drop cause is a new version.
///
/// - 1: the first.
/// - 2: `SessionConfirmed` event (tag 8); drop cause `ControlRateLimited` (index 12, 13 causes).
/// - 3: drop causes `HoldExpired` and `HoldOverflow` (indices 13, 14; 15 causes); worker
///   stats end with `held u64, hold_flushed u64`.
/// - 4: relays: `SetRelay` (tag 10) and `RemoveRelay` (tag 11); drop cause `RelayRateLimited`
///   (index 15, 16 causes); worker stats end with `relayed_packets u64, relayed_bytes u64`;
///   at most 200 peers per `Stats` page.
pub const PROTOCOL_VERSION: u16 = 4;
/// Largest message, in bytes, either way.
pub const MAX_MSG: usize = 64 * 1024;
/// Most relay routes a dataplane holds (`SetRelay` beyond it is refused).
pub const MAX_RELAY_ROUTES: usize = 65_536;
/// Most prefixes in one `SetRoutes`.
pub const MAX_ROUTES: usize = 2048;
/// Largest control datagram payload (`SendControl`, `ControlReceived`).
pub const MAX_CONTROL_PAYLOAD: usize = 1500;
/// Longest error message, in bytes (longer ones are cut at a character boundary).
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Most worker entries in one `Stats`.
pub const MAX_STATS_WORKERS: usize = 128;
/// Most peer entries in one `Stats`; more are paged with `GetStats { first_peer }`. (200,
/// not 256, since version 4: a full page of 128 workers and 256 peers outgrew [`MAX_MSG`].)
pub const MAX_STATS_PEERS: usize = 200;
/// Length of a session key.
pub const KEY_LEN: usize = 32;

/// `InstallSession::cipher` value for AES-256-GCM.
pub const CIPHER_AES_256_GCM: u8 = 1;
/// `InstallSession::cipher` value for ChaCha20-Poly1305.
pub const CIPHER_CHACHA20_POLY1305: u8 = 2;

const KIND_HELLO: u8 = 0x01;
const KIND_REQUEST: u8 = 0x02;
const KIND_REPLY: u8 = 0x03;
const KIND_EVENT: u8 = 0x04;

/// Errors decoding a received message. Each says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message is empty.
    #[error("empty message: expected at least a kind byte")]
    Empty,
    /// The message is longer than [`MAX_MSG`].
    #[error("message of {len} bytes: expected at most {MAX_MSG}")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The message ended before a field.
    #[error("message truncated: expected {need} more bytes for {what}, found {have}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// The frame kind byte is not one this direction uses.
    #[error("unknown frame kind {0:#04x}: expected Hello, Request (down) or Reply/Event (up)")]
    UnknownKind(u8),
    /// The message tag is unknown.
    #[error("unknown {direction} message tag {tag}")]
    UnknownTag {
        /// "down" or "up".
        direction: &'static str,
        /// The tag byte.
        tag: u8,
    },
    /// A field has a value outside its range.
    #[error("invalid {what}: {value} ({expected})")]
    BadValue {
        /// The field.
        what: &'static str,
        /// The value found.
        value: u64,
        /// What was expected.
        expected: &'static str,
    },
    /// A list or byte string is longer than allowed.
    #[error("{what} has {count} entries: expected at most {max}")]
    TooMany {
        /// The field.
        what: &'static str,
        /// Entries found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes left over after the last field.
    #[error("{count} trailing bytes after the message: expected none")]
    Trailing {
        /// How many.
        count: usize,
    },
    /// A string field is not UTF-8.
    #[error("{what} is not valid UTF-8")]
    BadUtf8 {
        /// The field.
        what: &'static str,
    },
    /// The peer's Hello names another protocol version.
    #[error("IPC protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}")]
    VersionMismatch {
        /// Our [`PROTOCOL_VERSION`].
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
}

/// Errors encoding a message: a limit of the format would be broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A list or byte string is longer than allowed.
    #[error("{what} has {count} entries: at most {max} fit in one message")]
    TooMany {
        /// The field.
        what: &'static str,
        /// Entries given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A field has a value outside its range.
    #[error("invalid {what}: {value} ({expected})")]
    BadValue {
        /// The field.
        what: &'static str,
        /// The value given.
        value: u64,
        /// What was expected.
        expected: &'static str,
    },
    /// The encoded message exceeds [`MAX_MSG`].
    #[error("encoded message is {len} bytes: at most {MAX_MSG} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
    },
}

/// Which end of the IPC a Hello comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The control plane (or the CLI's static mode).
    Control,
    /// The dataplane.
    Dataplane,
    /// A read-only client (`shadowmesh stats`): may only ask for statistics, gets no events
    /// and never displaces the control connection.
    Observer,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Control => 1,
            Role::Dataplane => 2,
            Role::Observer => 3,
        }
    }
}

/// The first message each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version spoken.
    pub version: u16,
    /// Who says it.
    pub role: Role,
}

impl Hello {
    /// Our own Hello for `role`.
    pub fn ours(role: Role) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            role,
        }
    }
}

/// Which session slot of a peer an installed key goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Installed beside the current one; promoted on its first authenticated packet.
    Next,
    /// Replaces the current session (the previous one is kept for stragglers).
    Current,
}

/// A session's keys and parameters, as the control plane derived them.
#[derive(Clone, PartialEq, Eq)]
pub struct InstallSession {
    /// Peer id (control plane's numbering).
    pub peer: u32,
    /// Slot to install into.
    pub slot: Slot,
    /// Our receiver index for this session (what peers put in data messages to us).
    pub local_index: u32,
    /// The peer's receiver index (what we put in data messages to it).
    pub remote_index: u32,
    /// [`CIPHER_AES_256_GCM`] or [`CIPHER_CHACHA20_POLY1305`].
    pub cipher: u8,
    /// Key for sealing.
    pub send_key: Zeroizing<[u8; KEY_LEN]>,
    /// Key for opening.
    pub recv_key: Zeroizing<[u8; KEY_LEN]>,
    /// Ask for a rekey after this many seconds.
    pub rekey_after_secs: u32,
    /// Refuse to send with this key after this many seconds.
    pub reject_after_secs: u32,
}

impl std::fmt::Debug for InstallSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallSession")
            .field("peer", &self.peer)
            .field("slot", &self.slot)
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("cipher", &self.cipher)
            .field("send_key", &"<redacted>")
            .field("recv_key", &"<redacted>")
            .field("rekey_after_secs", &self.rekey_after_secs)
            .field("reject_after_secs", &self.reject_after_secs)
            .finish()
    }
}

/// Requests, control plane → dataplane. Each is answered by a Reply with the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownMsg {
    /// Install a session's keys.
    InstallSession(InstallSession),
    /// Remove the session with this receiver index.
    RemoveSession {
        /// Our receiver index of the session.
        local_index: u32,
    },
    /// Remove a peer with its sessions, routes and endpoint.
    RemovePeer {
        /// Peer id.
        peer: u32,
    },
    /// Replace the peer's allowed prefixes (cryptokey routing).
    SetRoutes {
        /// Peer id.
        peer: u32,
        /// (network address, prefix length), at most [`MAX_ROUTES`].
        prefixes: Vec<(IpAddr, u8)>,
    },
    /// Prefixes a peer that has no routes may send from (the inbound check only, never
    /// outbound routing): the certified addresses of a node whose pending responder session
    /// waits for key confirmation, so that the data packet that confirms it is delivered, not
    /// dropped before its routes arrive. Packets must still authenticate under that peer's
    /// session keys. Tag 9 (since version 3).
    SetSources {
        /// Peer id.
        peer: u32,
        /// (network address, prefix length), at most [`MAX_ROUTES`].
        prefixes: Vec<(IpAddr, u8)>,
    },
    /// Set the peer's underlay endpoint.
    SetEndpoint {
        /// Peer id.
        peer: u32,
        /// Its address.
        addr: SocketAddr,
    },
    /// Send a control datagram (handshake, DHT, NAT probe) from the data port.
    SendControl {
        /// Destination.
        dst: SocketAddr,
        /// Datagram, at most [`MAX_CONTROL_PAYLOAD`] bytes.
        payload: Vec<u8>,
    },
    /// Relay: forward every data message that arrives from `from` with receiver index
    /// `index` to `to`, unchanged and unread (the relay holds no key of it), at most
    /// `rate_bytes_per_sec` (0: unlimited). Replaces an earlier route of the same key. Tag 10
    /// (since version 4).
    SetRelay {
        /// Where the relayed peer's datagrams come from (as this node sees it).
        from: SocketAddr,
        /// The receiver index (chosen by the destination peer) its data messages carry.
        index: u32,
        /// Where they go.
        to: SocketAddr,
        /// Byte rate limit of this route (0: none).
        rate_bytes_per_sec: u64,
    },
    /// Stop relaying what comes from `from` with receiver index `index`. Tag 11 (since
    /// version 4).
    RemoveRelay {
        /// As in [`DownMsg::SetRelay`].
        from: SocketAddr,
        /// As in [`DownMsg::SetRelay`].
        index: u32,
    },
    /// Ask for counters; answered by [`UpMsg::Stats`].
    GetStats {
        /// Report peers with id ≥ this (paging; 0 for the first page).
        first_peer: u32,
    },
    /// Stop the dataplane.
    Shutdown,
}

/// Named causes of dropped packets; the index into the `drops` arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DropCause {
    /// Too short or malformed data message.
    Malformed = 0,
    /// Receiver index not known.
    UnknownIndex = 1,
    /// Counter replayed or too old.
    Replay = 2,
    /// AEAD tag did not verify.
    AuthFailed = 3,
    /// Session key expired.
    KeyExpired = 4,
    /// No route for the inner destination.
    NoRoute = 5,
    /// A route but no usable session.
    NoSession = 6,
    /// Inner source outside the peer's allowed prefixes.
    SourceNotAllowed = 7,
    /// Writing to the TUN failed.
    TunWrite = 8,
    /// Sending on the UDP socket failed.
    UdpSend = 9,
    /// A queue or buffer ring was full.
    QueueFull = 10,
    /// Packet too large for the path.
    TooLarge = 11,
    /// A control datagram over its source's or the worker's rate limit.
    ControlRateLimited = 12,
    /// A packet held for a route or session (see the dataplane's hold queue) waited too long.
    HoldExpired = 13,
    /// A held packet pushed out, oldest first, by newer ones (the hold queue is bounded).
    HoldOverflow = 14,
    /// A relayed datagram over its route's rate limit.
    RelayRateLimited = 15,
}

/// How many [`DropCause`]s there are (the length of `drops` arrays).
pub const DROP_CAUSES: usize = 16;

impl DropCause {
    /// All causes, in index order.
    pub const ALL: [DropCause; DROP_CAUSES] = [
        DropCause::Malformed,
        DropCause::UnknownIndex,
        DropCause::Replay,
        DropCause::AuthFailed,
        DropCause::KeyExpired,
        DropCause::NoRoute,
        DropCause::NoSession,
        DropCause::SourceNotAllowed,
        DropCause::TunWrite,
        DropCause::UdpSend,
        DropCause::QueueFull,
        DropCause::TooLarge,
        DropCause::ControlRateLimited,
        DropCause::HoldExpired,
        DropCause::HoldOverflow,
        DropCause::RelayRateLimited,
    ];

    /// Index into a `drops` array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name (for status output and metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            DropCause::Malformed => "malformed",
            DropCause::UnknownIndex => "unknown_index",
            DropCause::Replay => "replay",
            DropCause::AuthFailed => "auth_failed",
            DropCause::KeyExpired => "key_expired",
            DropCause::NoRoute => "no_route",
            DropCause::NoSession => "no_session",
            DropCause::SourceNotAllowed => "source_not_allowed",
            DropCause::TunWrite => "tun_write",
            DropCause::UdpSend => "udp_send",
            DropCause::QueueFull => "queue_full",
            DropCause::TooLarge => "too_large",
            DropCause::ControlRateLimited => "control_rate_limited",
            DropCause::HoldExpired => "hold_expired",
            DropCause::HoldOverflow => "hold_overflow",
            DropCause::RelayRateLimited => "relay_rate_limited",
        }
    }
}

/// Counters of one worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Data packets received (authenticated).
    pub rx_packets: u64,
    /// Bytes of those.
    pub rx_bytes: u64,
    /// Data packets sent.
    pub tx_packets: u64,
    /// Bytes of those.
    pub tx_bytes: u64,
    /// Drops by [`DropCause`] index.
    pub drops: [u64; DROP_CAUSES],
    /// `io_uring_enter` calls (0 on the poll backend).
    pub uring_enters: u64,
    /// Packets held for a route or session (the dataplane's hold queue).
    pub held: u64,
    /// Held packets sent once their route and session existed.
    pub hold_flushed: u64,
    /// Datagrams forwarded for others (relay).
    pub relayed_packets: u64,
    /// Bytes of those.
    pub relayed_bytes: u64,
}

/// Counters of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Peer id.
    pub peer: u32,
    /// Data packets received (authenticated).
    pub rx_packets: u64,
    /// Bytes of those.
    pub rx_bytes: u64,
    /// Data packets sent.
    pub tx_packets: u64,
    /// Bytes of those.
    pub tx_bytes: u64,
    /// Drops by [`DropCause`] index.
    pub drops: [u64; DROP_CAUSES],
    /// Time of the last authenticated packet, in ms on the dataplane's clock; `None` = never.
    pub last_rx_ms: Option<u64>,
}

/// The answer to `GetStats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Per worker, at most [`MAX_STATS_WORKERS`].
    pub workers: Vec<WorkerStats>,
    /// Per peer, ascending ids, at most [`MAX_STATS_PEERS`].
    pub peers: Vec<PeerStats>,
    /// Ask again with `first_peer` = this for the next page; `None` = last page.
    pub next_peer: Option<u32>,
}

/// A numeric error class carried by [`UpMsg::Error`]; unknown values are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The request could not be decoded.
    pub const MALFORMED: ErrorCode = ErrorCode(1);
    /// The request was larger than [`MAX_MSG`].
    pub const TOO_LARGE: ErrorCode = ErrorCode(2);
    /// The handler refused the request (message says why).
    pub const REJECTED: ErrorCode = ErrorCode(3);
    /// A request arrived before the Hello, or a second Hello.
    pub const PROTOCOL: ErrorCode = ErrorCode(4);
}

/// Messages dataplane → control plane: replies (Ack, Error, Stats) and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpMsg {
    /// The request succeeded.
    Ack,
    /// The request failed.
    Error {
        /// Error class.
        code: ErrorCode,
        /// Human-readable cause, at most [`MAX_ERROR_MESSAGE`] bytes.
        message: String,
    },
    /// Counters (reply to `GetStats`).
    Stats(Stats),
    /// A control datagram arrived on the data port.
    ControlReceived {
        /// Its source.
        src: SocketAddr,
        /// The datagram, at most [`MAX_CONTROL_PAYLOAD`] bytes.
        payload: Vec<u8>,
    },
    /// A packet to `dst` found no usable session (start a handshake).
    NoSession {
        /// The peer whose route matched, if any.
        peer: Option<u32>,
        /// The inner destination.
        dst: IpAddr,
    },
    /// A session reached its rekey time or counter.
    RekeyNeeded {
        /// Peer id.
        peer: u32,
        /// The session's receiver index.
        local_index: u32,
    },
    /// A peer's authenticated packets now come from a new address (roaming).
    EndpointChanged {
        /// Peer id.
        peer: u32,
        /// The new address.
        addr: SocketAddr,
    },
    /// Key confirmation: the first authenticated packet arrived on a session installed with
    /// [`Slot::Next`]. It is now the peer's current one, and the peer's other pending sessions
    /// are gone from the dataplane. Sent once per session; never for [`Slot::Current`] ones.
    SessionConfirmed {
        /// Peer id.
        peer: u32,
        /// The session's receiver index.
        local_index: u32,
    },
}

impl UpMsg {
    /// An `Error` whose message is cut to [`MAX_ERROR_MESSAGE`] bytes at a char boundary.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        UpMsg::Error { code, message }
    }
}

/// A whole message control plane → dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownFrame {
    /// Version announcement (first message).
    Hello(Hello),
    /// A request.
    Request {
        /// Request id, echoed in the reply.
        id: u32,
        /// The request.
        msg: DownMsg,
    },
}

/// A whole message dataplane → control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpFrame {
    /// Version announcement (first message).
    Hello(Hello),
    /// The answer to request `id`.
    Reply {
        /// Request id.
        id: u32,
        /// `Ack`, `Error` or `Stats`.
        msg: UpMsg,
    },
    /// An unsolicited event.
    Event(UpMsg),
}

// ---------------------------------------------------------------- encoding

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn count(&mut self, what: &'static str, count: usize, max: usize) -> Result<(), EncodeError> {
        if count > max || count > u16::MAX as usize {
            return Err(EncodeError::TooMany { what, count, max });
        }
        self.u16(count as u16);
        Ok(())
    }
    fn bytes(&mut self, what: &'static str, b: &[u8], max: usize) -> Result<(), EncodeError> {
        self.count(what, b.len(), max)?;
        self.out.extend_from_slice(b);
        Ok(())
    }
    fn ip(&mut self, ip: &IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                self.u8(4);
                self.out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                self.u8(6);
                self.out.extend_from_slice(&a.octets());
            }
        }
    }
    fn sockaddr(&mut self, sa: &SocketAddr) {
        self.ip(&sa.ip());
        self.u16(sa.port());
        if let SocketAddr::V6(v6) = sa {
            self.u32(v6.scope_id());
        }
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u32(v);
            }
            None => {
                self.u8(0);
                self.u32(0);
            }
        }
    }
    fn drops(&mut self, drops: &[u64; DROP_CAUSES]) {
        self.u8(DROP_CAUSES as u8);
        for d in drops {
            self.u64(*d);
        }
    }
}

fn encode_down_msg(w: &mut Writer<'_>, msg: &DownMsg) -> Result<(), EncodeError> {
    match msg {
        DownMsg::InstallSession(s) => {
            if s.cipher != CIPHER_AES_256_GCM && s.cipher != CIPHER_CHACHA20_POLY1305 {
                return Err(EncodeError::BadValue {
                    what: "cipher",
                    value: u64::from(s.cipher),
                    expected: "1 (aes-256-gcm) or 2 (chacha20-poly1305)",
                });
            }
            w.u8(1);
            w.u32(s.peer);
            w.u8(match s.slot {
                Slot::Next => 0,
                Slot::Current => 1,
            });
            w.u32(s.local_index);
            w.u32(s.remote_index);
            w.u8(s.cipher);
            w.out.extend_from_slice(&s.send_key[..]);
            w.out.extend_from_slice(&s.recv_key[..]);
            w.u32(s.rekey_after_secs);
            w.u32(s.reject_after_secs);
        }
        DownMsg::RemoveSession { local_index } => {
            w.u8(2);
            w.u32(*local_index);
        }
        DownMsg::RemovePeer { peer } => {
            w.u8(3);
            w.u32(*peer);
        }
        DownMsg::SetRoutes { peer, prefixes } | DownMsg::SetSources { peer, prefixes } => {
            w.u8(if matches!(msg, DownMsg::SetRoutes { .. }) {
                4
            } else {
                9
            });
            w.u32(*peer);
            w.count("SetRoutes prefixes", prefixes.len(), MAX_ROUTES)?;
            for (ip, len) in prefixes {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if *len > max {
                    return Err(EncodeError::BadValue {
                        what: "prefix length",
                        value: u64::from(*len),
                        expected: "at most 32 for IPv4, 128 for IPv6",
                    });
                }
                w.ip(ip);
                w.u8(*len);
            }
        }
        DownMsg::SetEndpoint { peer, addr } => {
            w.u8(5);
            w.u32(*peer);
            w.sockaddr(addr);
        }
        DownMsg::SendControl { dst, payload } => {
            w.u8(6);
            w.sockaddr(dst);
            w.bytes("SendControl payload", payload, MAX_CONTROL_PAYLOAD)?;
        }
        DownMsg::GetStats { first_peer } => {
            w.u8(7);
            w.u32(*first_peer);
        }
        DownMsg::Shutdown => w.u8(8),
        DownMsg::SetRelay {
            from,
            index,
            to,
            rate_bytes_per_sec,
        } => {
            w.u8(10);
            w.sockaddr(from);
            w.u32(*index);
            w.sockaddr(to);
            w.u64(*rate_bytes_per_sec);
        }
        DownMsg::RemoveRelay { from, index } => {
            w.u8(11);
            w.sockaddr(from);
            w.u32(*index);
        }
    }
    Ok(())
}

fn encode_up_msg(w: &mut Writer<'_>, msg: &UpMsg) -> Result<(), EncodeError> {
    match msg {
        UpMsg::Ack => w.u8(1),
        UpMsg::Error { code, message } => {
            w.u8(2);
            w.u16(code.0);
            w.bytes("Error message", message.as_bytes(), MAX_ERROR_MESSAGE)?;
        }
        UpMsg::Stats(s) => {
            w.u8(3);
            w.count("Stats workers", s.workers.len(), MAX_STATS_WORKERS)?;
            for ws in &s.workers {
                w.u64(ws.rx_packets);
                w.u64(ws.rx_bytes);
                w.u64(ws.tx_packets);
                w.u64(ws.tx_bytes);
                w.drops(&ws.drops);
                w.u64(ws.uring_enters);
                w.u64(ws.held);
                w.u64(ws.hold_flushed);
                w.u64(ws.relayed_packets);
                w.u64(ws.relayed_bytes);
            }
            w.count("Stats peers", s.peers.len(), MAX_STATS_PEERS)?;
            for ps in &s.peers {
                w.u32(ps.peer);
                w.u64(ps.rx_packets);
                w.u64(ps.rx_bytes);
                w.u64(ps.tx_packets);
                w.u64(ps.tx_bytes);
                w.drops(&ps.drops);
                match ps.last_rx_ms {
                    Some(t) => {
                        w.u8(1);
                        w.u64(t);
                    }
                    None => {
                        w.u8(0);
                        w.u64(0);
                    }
                }
            }
            w.opt_u32(s.next_peer);
        }
        UpMsg::ControlReceived { src, payload } => {
            w.u8(4);
            w.sockaddr(src);
            w.bytes("ControlReceived payload", payload, MAX_CONTROL_PAYLOAD)?;
        }
        UpMsg::NoSession { peer, dst } => {
            w.u8(5);
            w.opt_u32(*peer);
            w.ip(dst);
        }
        UpMsg::RekeyNeeded { peer, local_index } => {
            w.u8(6);
            w.u32(*peer);
            w.u32(*local_index);
        }
        UpMsg::EndpointChanged { peer, addr } => {
            w.u8(7);
            w.u32(*peer);
            w.sockaddr(addr);
        }
        UpMsg::SessionConfirmed { peer, local_index } => {
            w.u8(8);
            w.u32(*peer);
            w.u32(*local_index);
        }
    }
    Ok(())
}

fn encode_hello(w: &mut Writer<'_>, h: &Hello) {
    w.u8(KIND_HELLO);
    w.u16(h.version);
    w.u8(h.role.to_u8());
}

fn finish(out: &mut Vec<u8>, start: usize) -> Result<(), EncodeError> {
    let len = out.len() - start;
    if len > MAX_MSG {
        // Do not leave a half-written (and maybe key-bearing) message behind.
        zeroize::Zeroize::zeroize(&mut out[start..]);
        out.truncate(start);
        return Err(EncodeError::TooLarge { len });
    }
    Ok(())
}

/// Appends the encoding of `frame` to `out`. On error `out` is left as it was.
///
/// `out` may end up holding key bytes: callers pass a `Zeroizing<Vec<u8>>` or clear it.
pub fn encode_down(frame: &DownFrame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let mut w = Writer { out };
    let res = match frame {
        DownFrame::Hello(h) => {
            encode_hello(&mut w, h);
            Ok(())
        }
        DownFrame::Request { id, msg } => {
            w.u8(KIND_REQUEST);
            w.u32(*id);
            encode_down_msg(&mut w, msg)
        }
    };
    if let Err(e) = res {
        zeroize::Zeroize::zeroize(&mut out[start..]);
        out.truncate(start);
        return Err(e);
    }
    finish(out, start)
}

/// Appends the encoding of `frame` to `out`. On error `out` is left as it was.
pub fn encode_up(frame: &UpFrame, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    let mut w = Writer { out };
    let res = match frame {
        UpFrame::Hello(h) => {
            encode_hello(&mut w, h);
            Ok(())
        }
        UpFrame::Reply { id, msg } => {
            if !matches!(msg, UpMsg::Ack | UpMsg::Error { .. } | UpMsg::Stats(_)) {
                Err(EncodeError::BadValue {
                    what: "reply message",
                    value: 0,
                    expected: "Ack, Error or Stats (events go in Event frames)",
                })
            } else {
                w.u8(KIND_REPLY);
                w.u32(*id);
                encode_up_msg(&mut w, msg)
            }
        }
        UpFrame::Event(msg) => {
            if matches!(msg, UpMsg::Ack | UpMsg::Error { .. } | UpMsg::Stats(_)) {
                Err(EncodeError::BadValue {
                    what: "event message",
                    value: 0,
                    expected: "ControlReceived, NoSession, RekeyNeeded, EndpointChanged or SessionConfirmed",
                })
            } else {
                w.u8(KIND_EVENT);
                encode_up_msg(&mut w, msg)
            }
        }
    };
    if let Err(e) = res {
        out.truncate(start);
        return Err(e);
    }
    finish(out, start)
}

// ---------------------------------------------------------------- decoding

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// A u16 count, checked against `max` and against the bytes left (each entry needs at
    /// least `min_entry` bytes), so a forged count never drives a large allocation.
    fn count(
        &mut self,
        what: &'static str,
        max: usize,
        min_entry: usize,
    ) -> Result<usize, DecodeError> {
        let count = usize::from(self.u16(what)?);
        if count > max {
            return Err(DecodeError::TooMany { what, count, max });
        }
        let need = count.saturating_mul(min_entry);
        if need > self.buf.len() {
            return Err(DecodeError::Truncated {
                what,
                need,
                have: self.buf.len(),
            });
        }
        Ok(count)
    }
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let n = self.count(what, max, 1)?;
        self.take(n, what)
    }
    fn ip(&mut self, what: &'static str) -> Result<IpAddr, DecodeError> {
        match self.u8(what)? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?))),
            f => Err(DecodeError::BadValue {
                what,
                value: u64::from(f),
                expected: "address family 4 or 6",
            }),
        }
    }
    fn sockaddr(&mut self, what: &'static str) -> Result<SocketAddr, DecodeError> {
        let ip = self.ip(what)?;
        let port = self.u16(what)?;
        Ok(match ip {
            IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, port)),
            IpAddr::V6(a) => {
                let scope = self.u32(what)?;
                SocketAddr::V6(SocketAddrV6::new(a, port, 0, scope))
            }
        })
    }
    fn flag(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadValue {
                what,
                value: u64::from(v),
                expected: "0 or 1",
            }),
        }
    }
    fn opt_u32(&mut self, what: &'static str) -> Result<Option<u32>, DecodeError> {
        let present = self.flag(what)?;
        let v = self.u32(what)?;
        Ok(present.then_some(v))
    }
    fn drops(&mut self) -> Result<[u64; DROP_CAUSES], DecodeError> {
        let n = usize::from(self.u8("drop cause count")?);
        if n != DROP_CAUSES {
            return Err(DecodeError::BadValue {
                what: "drop cause count",
                value: n as u64,
                expected: "the number of drop causes of this version (13)",
            });
        }
        let mut d = [0u64; DROP_CAUSES];
        for slot in d.iter_mut() {
            *slot = self.u64("drop counter")?;
        }
        Ok(d)
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing {
                count: self.buf.len(),
            })
        }
    }
}

fn start(buf: &[u8]) -> Result<(u8, Reader<'_>), DecodeError> {
    if buf.len() > MAX_MSG {
        return Err(DecodeError::TooLarge { len: buf.len() });
    }
    let (&kind, rest) = buf.split_first().ok_or(DecodeError::Empty)?;
    Ok((kind, Reader { buf: rest }))
}

fn decode_hello(r: &mut Reader<'_>) -> Result<Hello, DecodeError> {
    let version = r.u16("Hello version")?;
    if version != PROTOCOL_VERSION {
        // Only the version is frozen across versions: check it before anything else.
        return Err(DecodeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    let role = match r.u8("Hello role")? {
        1 => Role::Control,
        2 => Role::Dataplane,
        3 => Role::Observer,
        v => {
            return Err(DecodeError::BadValue {
                what: "Hello role",
                value: u64::from(v),
                expected: "1 (control), 2 (dataplane) or 3 (observer)",
            })
        }
    };
    r.end()?;
    Ok(Hello { version, role })
}

fn decode_down_msg(r: &mut Reader<'_>) -> Result<DownMsg, DecodeError> {
    let tag = r.u8("request tag")?;
    let msg = match tag {
        1 => {
            let peer = r.u32("InstallSession peer")?;
            let slot = match r.u8("InstallSession slot")? {
                0 => Slot::Next,
                1 => Slot::Current,
                v => {
                    return Err(DecodeError::BadValue {
                        what: "InstallSession slot",
                        value: u64::from(v),
                        expected: "0 (next) or 1 (current)",
                    })
                }
            };
            let local_index = r.u32("InstallSession local_index")?;
            let remote_index = r.u32("InstallSession remote_index")?;
            let cipher = r.u8("InstallSession cipher")?;
            if cipher != CIPHER_AES_256_GCM && cipher != CIPHER_CHACHA20_POLY1305 {
                return Err(DecodeError::BadValue {
                    what: "InstallSession cipher",
                    value: u64::from(cipher),
                    expected: "1 (aes-256-gcm) or 2 (chacha20-poly1305)",
                });
            }
            // Copy keys straight into zeroizing storage; no plain temporaries.
            let mut send_key = Zeroizing::new([0u8; KEY_LEN]);
            send_key.copy_from_slice(r.take(KEY_LEN, "InstallSession send_key")?);
            let mut recv_key = Zeroizing::new([0u8; KEY_LEN]);
            recv_key.copy_from_slice(r.take(KEY_LEN, "InstallSession recv_key")?);
            let rekey_after_secs = r.u32("InstallSession rekey_after_secs")?;
            let reject_after_secs = r.u32("InstallSession reject_after_secs")?;
            DownMsg::InstallSession(InstallSession {
                peer,
                slot,
                local_index,
                remote_index,
                cipher,
                send_key,
                recv_key,
                rekey_after_secs,
                reject_after_secs,
            })
        }
        2 => DownMsg::RemoveSession {
            local_index: r.u32("RemoveSession local_index")?,
        },
        3 => DownMsg::RemovePeer {
            peer: r.u32("RemovePeer peer")?,
        },
        tag @ (4 | 9) => {
            let peer = r.u32("SetRoutes peer")?;
            // Smallest entry: family + 4 bytes + length.
            let n = r.count("SetRoutes prefixes", MAX_ROUTES, 6)?;
            let mut prefixes = Vec::with_capacity(n);
            for _ in 0..n {
                let ip = r.ip("SetRoutes prefix")?;
                let len = r.u8("SetRoutes prefix length")?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if len > max {
                    return Err(DecodeError::BadValue {
                        what: "SetRoutes prefix length",
                        value: u64::from(len),
                        expected: "at most 32 for IPv4, 128 for IPv6",
                    });
                }
                prefixes.push((ip, len));
            }
            if tag == 4 {
                DownMsg::SetRoutes { peer, prefixes }
            } else {
                DownMsg::SetSources { peer, prefixes }
            }
        }
        5 => DownMsg::SetEndpoint {
            peer: r.u32("SetEndpoint peer")?,
            addr: r.sockaddr("SetEndpoint addr")?,
        },
        6 => {
            let dst = r.sockaddr("SendControl dst")?;
            let payload = r
                .bytes("SendControl payload", MAX_CONTROL_PAYLOAD)?
                .to_vec();
            DownMsg::SendControl { dst, payload }
        }
        7 => DownMsg::GetStats {
            first_peer: r.u32("GetStats first_peer")?,
        },
        8 => DownMsg::Shutdown,
        10 => DownMsg::SetRelay {
            from: r.sockaddr("SetRelay from")?,
            index: r.u32("SetRelay index")?,
            to: r.sockaddr("SetRelay to")?,
            rate_bytes_per_sec: r.u64("SetRelay rate_bytes_per_sec")?,
        },
        11 => DownMsg::RemoveRelay {
            from: r.sockaddr("RemoveRelay from")?,
            index: r.u32("RemoveRelay index")?,
        },
        tag => {
            return Err(DecodeError::UnknownTag {
                direction: "down",
                tag,
            })
        }
    };
    r.end()?;
    Ok(msg)
}

fn decode_up_msg(r: &mut Reader<'_>) -> Result<UpMsg, DecodeError> {
    let tag = r.u8("up message tag")?;
    let msg = match tag {
        1 => UpMsg::Ack,
        2 => {
            let code = ErrorCode(r.u16("Error code")?);
            let raw = r.bytes("Error message", MAX_ERROR_MESSAGE)?;
            let message = std::str::from_utf8(raw)
                .map_err(|_| DecodeError::BadUtf8 {
                    what: "Error message",
                })?
                .to_owned();
            UpMsg::Error { code, message }
        }
        3 => {
            const WORKER_LEN: usize = 4 * 8 + 1 + DROP_CAUSES * 8 + 5 * 8;
            const PEER_LEN: usize = 4 + 4 * 8 + 1 + DROP_CAUSES * 8 + 9;
            let nw = r.count("Stats workers", MAX_STATS_WORKERS, WORKER_LEN)?;
            let mut workers = Vec::with_capacity(nw);
            for _ in 0..nw {
                workers.push(WorkerStats {
                    rx_packets: r.u64("worker rx_packets")?,
                    rx_bytes: r.u64("worker rx_bytes")?,
                    tx_packets: r.u64("worker tx_packets")?,
                    tx_bytes: r.u64("worker tx_bytes")?,
                    drops: r.drops()?,
                    uring_enters: r.u64("worker uring_enters")?,
                    held: r.u64("worker held")?,
                    hold_flushed: r.u64("worker hold_flushed")?,
                    relayed_packets: r.u64("worker relayed_packets")?,
                    relayed_bytes: r.u64("worker relayed_bytes")?,
                });
            }
            let np = r.count("Stats peers", MAX_STATS_PEERS, PEER_LEN)?;
            let mut peers = Vec::with_capacity(np);
            for _ in 0..np {
                let peer = r.u32("peer id")?;
                let rx_packets = r.u64("peer rx_packets")?;
                let rx_bytes = r.u64("peer rx_bytes")?;
                let tx_packets = r.u64("peer tx_packets")?;
                let tx_bytes = r.u64("peer tx_bytes")?;
                let drops = r.drops()?;
                let has_rx = r.flag("peer last_rx present")?;
                let t = r.u64("peer last_rx_ms")?;
                peers.push(PeerStats {
                    peer,
                    rx_packets,
                    rx_bytes,
                    tx_packets,
                    tx_bytes,
                    drops,
                    last_rx_ms: has_rx.then_some(t),
                });
            }
            let next_peer = r.opt_u32("Stats next_peer")?;
            UpMsg::Stats(Stats {
                workers,
                peers,
                next_peer,
            })
        }
        4 => {
            let src = r.sockaddr("ControlReceived src")?;
            let payload = r
                .bytes("ControlReceived payload", MAX_CONTROL_PAYLOAD)?
                .to_vec();
            UpMsg::ControlReceived { src, payload }
        }
        5 => UpMsg::NoSession {
            peer: r.opt_u32("NoSession peer")?,
            dst: r.ip("NoSession dst")?,
        },
        6 => UpMsg::RekeyNeeded {
            peer: r.u32("RekeyNeeded peer")?,
            local_index: r.u32("RekeyNeeded local_index")?,
        },
        7 => UpMsg::EndpointChanged {
            peer: r.u32("EndpointChanged peer")?,
            addr: r.sockaddr("EndpointChanged addr")?,
        },
        8 => UpMsg::SessionConfirmed {
            peer: r.u32("SessionConfirmed peer")?,
            local_index: r.u32("SessionConfirmed local_index")?,
        },
        tag => {
            return Err(DecodeError::UnknownTag {
                direction: "up",
                tag,
            })
        }
    };
    r.end()?;
    Ok(msg)
}

/// Decodes one message control plane → dataplane.
pub fn decode_down(buf: &[u8]) -> Result<DownFrame, DecodeError> {
    let (kind, mut r) = start(buf)?;
    match kind {
        KIND_HELLO => Ok(DownFrame::Hello(decode_hello(&mut r)?)),
        KIND_REQUEST => {
            let id = r.u32("request id")?;
            let msg = decode_down_msg(&mut r)?;
            Ok(DownFrame::Request { id, msg })
        }
        k => Err(DecodeError::UnknownKind(k)),
    }
}

/// Decodes one message dataplane → control plane.
pub fn decode_up(buf: &[u8]) -> Result<UpFrame, DecodeError> {
    let (kind, mut r) = start(buf)?;
    match kind {
        KIND_HELLO => Ok(UpFrame::Hello(decode_hello(&mut r)?)),
        KIND_REPLY => {
            let id = r.u32("reply id")?;
            let msg = decode_up_msg(&mut r)?;
            if !matches!(msg, UpMsg::Ack | UpMsg::Error { .. } | UpMsg::Stats(_)) {
                return Err(DecodeError::BadValue {
                    what: "reply message",
                    value: 0,
                    expected: "Ack, Error or Stats",
                });
            }
            Ok(UpFrame::Reply { id, msg })
        }
        KIND_EVENT => {
            let msg = decode_up_msg(&mut r)?;
            if matches!(msg, UpMsg::Ack | UpMsg::Error { .. } | UpMsg::Stats(_)) {
                return Err(DecodeError::BadValue {
                    what: "event message",
                    value: 0,
                    expected: "ControlReceived, NoSession, RekeyNeeded, EndpointChanged or SessionConfirmed",
                });
            }
            Ok(UpFrame::Event(msg))
        }
        k => Err(DecodeError::UnknownKind(k)),
    }
}

/// The request id of a down message whose body may be malformed, so that an error reply can
/// name it; `None` if the message is not a Request or is too short to carry an id.
pub fn request_id(buf: &[u8]) -> Option<u32> {
    match buf {
        [KIND_REQUEST, a, b, c, d, ..] => Some(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
