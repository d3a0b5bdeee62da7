//! The admin API: HTTP/1.1 + JSON over a Unix socket (mode 0600 in a directory others cannot
//! write; peers other than root and our user are closed unanswered), one request per
//! connection.
//!
//! Routes: `GET /health`, `GET /v1/status`, `GET /v1/peers`, `POST /v1/connect
//! {"peer": NAME}`, `POST /v1/disconnect {"peer": NAME}`. Also the JSON types (shared with the
//! `shadowmesh` CLI, which deserializes them) and a small blocking client.
//!
//! A hand-written server rather than hyper/axum: five routes, no keep-alive, no TLS; a bounded
//! parser (8 KiB head, 4 KiB body, 5 s to send it) is easier to audit than a framework's
//! defaults. It owns request parsing and rendering; it never holds keys or touches the
//! dataplane except through the bridge's `GetStats`, and malformed input is a 4xx, never a
//! panic.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::daemon::ipc_bridge::Bridge;
use shadowmesh_ipc::{DownMsg, DropCause, PeerStats, UpMsg};
use shadowmesh_platform::seqpacket::{self, PeerCred, PeerPolicy, SeqpacketError};

/// Largest request head (request line + headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 4 * 1024;
/// Time a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response the client accepts.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Why a request was refused (each maps to a 4xx status).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// Not HTTP/1.x as expected.
    #[error("malformed request: expected {0}")]
    Malformed(&'static str),
    /// Head or body over its limit.
    #[error("request {0} too large")]
    TooLarge(&'static str),
    /// A valid HTTP feature this server does not do.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

impl RequestError {
    /// The HTTP status for this refusal.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::Malformed(_) => 400,
            Self::TooLarge(_) => 413,
            Self::Unsupported(_) => 501,
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target (query strings are not used and kept as they are).
    pub path: String,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a request from the bytes received so far: `Ok(None)` means "need more bytes".
///
/// # Errors
/// [`RequestError`] for anything malformed or over a limit (the connection is answered with
/// its status and closed).
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, RequestError> {
    let Some(head_len) = find_head_end(buf) else {
        if buf.len() > MAX_HEAD {
            return Err(RequestError::TooLarge("head"));
        }
        return Ok(None);
    };
    if head_len > MAX_HEAD {
        return Err(RequestError::TooLarge("head"));
    }
    let head = std::str::from_utf8(buf.get(..head_len).unwrap_or_default())
        .map_err(|_| RequestError::Malformed("an ASCII request head"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::Malformed("METHOD SP PATH SP HTTP/1.x"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RequestError::Malformed("an upper-case method"));
    }
    if !path.starts_with('/') {
        return Err(RequestError::Malformed("a path starting with '/'"));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(RequestError::Malformed("HTTP/1.0 or HTTP/1.1"));
    }
    let mut content_length: Option<usize> = None;
    for h in lines.filter(|l| !l.is_empty()) {
        let (name, value) = h
            .split_once(':')
            .ok_or(RequestError::Malformed("headers as `Name: value`"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| RequestError::Malformed("a decimal Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(RequestError::Malformed("one Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::Unsupported(
                "Transfer-Encoding (send Content-Length)",
            ));
        }
    }
    let n = content_length.unwrap_or(0);
    if n > MAX_BODY {
        return Err(RequestError::TooLarge("body"));
    }
    let Some(body) = buf.get(head_len..head_len + n) else {
        return Ok(None);
    };
    if buf.len() > head_len + n {
        return Err(RequestError::Malformed(
            "one request per connection (no pipelining)",
        ));
    }
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        body: body.to_vec(),
    }))
}

/// The admin routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /health`.
    Health,
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/peers`.
    Peers,
    /// `POST /v1/connect`.
    Connect,
    /// `POST /v1/disconnect`.
    Disconnect,
    /// `GET /v1/dht`.
    Dht,
    /// `GET /v1/netcheck`.
    Netcheck,
}

/// Maps a method and path to a route: 404 for an unknown path, 405 for a known path with
/// another method.
///
/// # Errors
/// `(status, message)`.
pub fn route(method: &str, path: &str) -> Result<Route, (u16, &'static str)> {
    let (want, r) = match path {
        "/health" => ("GET", Route::Health),
        "/v1/status" => ("GET", Route::Status),
        "/v1/peers" => ("GET", Route::Peers),
        "/v1/connect" => ("POST", Route::Connect),
        "/v1/disconnect" => ("POST", Route::Disconnect),
        "/v1/dht" => ("GET", Route::Dht),
        "/v1/netcheck" => ("GET", Route::Netcheck),
        _ => return Err((404, "no such path")),
    };
    if method == want {
        Ok(r)
    } else if want == "GET" {
        Err((405, "method not allowed (use GET)"))
    } else {
        Err((405, "method not allowed (use POST)"))
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Renders a complete response with a JSON body.
#[must_use]
pub fn render(status: u16, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn error_body(msg: &str) -> String {
    serde_json::to_string(&ErrorReply {
        error: msg.to_string(),
    })
    .unwrap_or_else(|_| "{}".into())
}

/// `{"error": ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong.
    pub error: String,
}

/// Body of `/v1/connect` and `/v1/disconnect`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRequest {
    /// Peer name (or node id hex prefix of ≥ 8 characters).
    pub peer: String,
}

/// This node, in `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NodeInfo {
    /// Name from the configuration.
    pub name: String,
    /// Node id, hex (first 8 bytes).
    pub node_id: String,
    /// Overlay addresses from our certificate.
    pub addresses: Vec<String>,
    /// Certificate expiry (unix seconds).
    pub cert_not_after: u64,
}

/// The dataplane, in `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DataplaneInfo {
    /// IPC connected.
    pub connected: bool,
    /// IPC socket path.
    pub socket: String,
    /// Worker count (from its stats; `None` when not connected).
    pub workers: Option<usize>,
}

/// Handshake counters, in `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HandshakeInfo {
    /// Initiations sent, retries included.
    pub initiations_sent: u64,
    /// Completed as initiator.
    pub completed_initiator: u64,
    /// Completed as responder.
    pub completed_responder: u64,
    /// Handshake messages refused.
    pub refused: u64,
    /// Initiations abandoned.
    pub gave_up: u64,
    /// Control datagrams that did not reassemble (malformed, evicted, timed out).
    #[serde(default)]
    pub dropped_datagrams: u64,
    /// Initiations refused by the per-source rate limit under load.
    #[serde(default)]
    pub rate_limited: u64,
    /// Responder sessions never confirmed (forged, or the initiator went away).
    #[serde(default)]
    pub pending_expired: u64,
    /// Responder sessions waiting for key confirmation now.
    #[serde(default)]
    pub pending: u64,
    /// New peers refused because their addresses overlap a known peer's.
    #[serde(default)]
    pub route_conflicts: u64,
}

/// One peer, in `/v1/status` and `/v1/peers`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PeerInfo {
    /// Dataplane peer id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Node id, hex (first 8 bytes).
    pub node_id: String,
    /// Underlay endpoint.
    pub endpoint: Option<String>,
    /// False after `disconnect`.
    pub enabled: bool,
    /// Learned from an initiation, not configured.
    pub dynamic: bool,
    /// Allowed overlay prefixes (from its certificate).
    pub allowed_ips: Vec<String>,
    /// Seconds since the last completed handshake.
    pub last_handshake_secs: Option<u64>,
    /// Age of the latest session, seconds.
    pub session_age_secs: Option<u64>,
    /// `initiator` or `responder` (our role in the latest session).
    pub role: Option<String>,
    /// Negotiated AEAD.
    pub cipher: Option<String>,
    /// An initiation is in flight.
    pub handshaking: bool,
    /// Consecutive unanswered initiations.
    pub failures: u32,
    /// Liveness probe result: `None` not probed yet, `false` unreachable (see
    /// `docs/operating.md`: shown within 17 s of the peer going away).
    #[serde(default)]
    pub reachable: Option<bool>,
    /// How traffic reaches it: `direct` (its endpoint as configured or discovered) or
    /// `punched` (direct, through a hole punched after a home's introduction).
    #[serde(default)]
    pub path: Option<String>,
    /// Round-trip time of the latest liveness probe, milliseconds.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// Bytes received (dataplane counters).
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets dropped, by cause (only causes with a count; dataplane counters).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StatusReply {
    /// This node.
    pub node: NodeInfo,
    /// The dataplane.
    pub dataplane: DataplaneInfo,
    /// Handshake counters.
    pub handshakes: HandshakeInfo,
    /// Per-peer summary.
    pub peers: Vec<PeerInfo>,
    /// The DHT (also `GET /v1/dht`).
    #[serde(default)]
    pub dht: DhtInfo,
    /// What other nodes see of us (also `GET /v1/netcheck`).
    #[serde(default)]
    pub nat: NatInfo,
}

/// Our NAT as DHT replies show it, in `/v1/status` and `GET /v1/netcheck`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NatInfo {
    /// Our local underlay addresses with the data port.
    pub local: Vec<String>,
    /// What the IPv4 reports say (`None` before the first report).
    pub ipv4: Option<crate::nat::FamilyView>,
    /// What the IPv6 reports say (`None` before the first report).
    pub ipv6: Option<crate::nat::FamilyView>,
    /// Every reporter's latest view of us.
    pub reports: Vec<NatReportRow>,
    /// Our homes (they introduce others to us), with their keepalive round-trip time.
    #[serde(default)]
    pub homes: Vec<HomeRow>,
    /// Hole-punching counters.
    #[serde(default)]
    pub punch: std::collections::BTreeMap<String, u64>,
}

/// One home of ours.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct HomeRow {
    /// Its node id, hex (first 8 bytes).
    pub node_id: String,
    /// Its address.
    pub addr: String,
    /// Round-trip time of its latest keepalive answer, milliseconds.
    pub rtt_ms: Option<f64>,
}

/// One reporter's latest view of us.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct NatReportRow {
    /// Reporter node id, hex (first 8 bytes).
    pub node_id: String,
    /// The reporter's address.
    pub reporter: String,
    /// Where it saw us.
    pub observed: String,
    /// Seconds since the report.
    pub age_secs: u64,
}

/// The DHT, in `/v1/status` and `GET /v1/dht`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DhtInfo {
    /// We offer to enter others' routing tables.
    pub server: bool,
    /// Bootstrap addresses from the configuration.
    pub bootstrap: Vec<String>,
    /// Our addresses as other nodes saw them (STUN-like echoes), with how many reported each.
    pub observed: Vec<(String, u32)>,
    /// The endpoints our published record carries.
    pub published: Vec<String>,
    /// Sequence number of our published record (0: not published yet).
    pub record_seq: u64,
    /// The routing table.
    pub contacts: Vec<ContactRow>,
    /// Records we store for others.
    pub records: Vec<RecordRow>,
    /// The latest lookups, newest last.
    pub lookups: Vec<LookupRow>,
    /// Counters (messages, drops by cause, stores).
    pub stats: std::collections::BTreeMap<String, u64>,
}

/// One routing-table contact.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ContactRow {
    /// Node id, hex (first 8 bytes).
    pub node_id: String,
    /// Its address.
    pub addr: String,
    /// Bucket index (leading zero bits of the XOR distance to us).
    pub bucket: u32,
    /// Seconds since we last heard from it.
    pub last_seen_secs: u64,
}

/// One stored record.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RecordRow {
    /// The key it is stored under, hex (first 8 bytes).
    pub key: String,
    /// The record's node, hex (first 8 bytes).
    pub node_id: String,
    /// The node's certificate name.
    pub name: String,
    /// Sequence number.
    pub seq: u64,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
    /// Its endpoints.
    pub endpoints: Vec<String>,
}

/// One recent lookup.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LookupRow {
    /// What was looked up (a name, an address, a node id prefix).
    pub target: String,
    /// Why (`destination`, `connect`, `join`, `refresh`, `liveness`).
    pub purpose: String,
    /// A valid record was found.
    pub found: bool,
    /// Hops of the path that ended it.
    pub hops: u32,
    /// Nodes queried.
    pub queried: u32,
    /// Duration, milliseconds.
    pub millis: u64,
}

/// `GET /v1/peers`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PeersReply {
    /// Every peer.
    pub peers: Vec<PeerInfo>,
}

/// What the API asks of the daemon's core (which owns the peer table).
#[derive(Debug)]
pub enum ApiCall {
    /// A status snapshot (without dataplane counters; the API adds them).
    Snapshot(oneshot::Sender<StatusReply>),
    /// Enable a peer and handshake now.
    Connect(String, oneshot::Sender<Result<(), String>>),
    /// Disconnect a peer.
    Disconnect(String, oneshot::Sender<Result<(), String>>),
}

/// Binds the admin socket with mode 0600 from its creation on, replacing a stale socket file
/// but refusing to steal one a live daemon answers on. A missing directory is created 0700;
/// one that group or others can write (or another user owns) is refused. Call it inside a
/// tokio runtime.
///
/// # Errors
/// The socket is in use by a running daemon, the directory is unsafe, or an OS error.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let l = seqpacket::bind_stream_listener(path, 0o600).map_err(|e| match e {
        SeqpacketError::InUse { .. } => std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{}: another control plane answers there", path.display()),
        ),
        SeqpacketError::Io { source, .. } => source,
        other => std::io::Error::other(other),
    })?;
    l.set_nonblocking(true)?;
    UnixListener::from_std(l)
}

/// Counters of the admin socket, readable while [`serve`] runs.
#[derive(Debug, Default)]
pub struct AdminCounters {
    /// Connections closed unanswered because the peer was neither root nor our user.
    pub refused_peers: AtomicU64,
}

/// The process's admin counters: the ones [`serve`] updates.
pub fn admin_counters() -> &'static AdminCounters {
    static COUNTERS: AdminCounters = AdminCounters {
        refused_peers: AtomicU64::new(0),
    };
    &COUNTERS
}

/// Whether the peer of an accepted admin connection may use the API; counts and logs a
/// refusal (uid and pid only: nothing the peer sent is read).
fn admin_peer_allowed(stream: &UnixStream, policy: &PeerPolicy, counters: &AdminCounters) -> bool {
    let cred = match stream.peer_cred() {
        Ok(c) => PeerCred {
            pid: c.pid().unwrap_or(0),
            uid: c.uid(),
            gid: c.gid(),
        },
        Err(e) => {
            debug!("admin connection: reading its peer credentials failed: {e}");
            return false;
        }
    };
    if policy.allows(&cred) {
        return true;
    }
    let n = counters.refused_peers.fetch_add(1, Ordering::Relaxed) + 1;
    // Logged at 1, 2, 4, 8, ... so a local connect loop cannot flood the log.
    if n.is_power_of_two() {
        warn!(
            uid = cred.uid,
            pid = cred.pid,
            refused = n,
            "admin connection refused: peer is not {}",
            policy.describe()
        );
    } else {
        debug!(uid = cred.uid, pid = cred.pid, "admin connection refused");
    }
    false
}

/// Most admin connections served at once; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Accepts admin connections forever; each connection gets its own task (at most
/// [`MAX_CONNECTIONS`] at once). A connection whose peer (`SO_PEERCRED`) is neither root nor
/// our user is closed unanswered and counted in [`admin_counters`].
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<ApiCall>, bridge: Bridge) {
    serve_guarded(
        listener,
        calls,
        bridge,
        PeerPolicy::current(),
        admin_counters(),
    )
    .await;
}

/// [`serve`] with an explicit peer policy and counters (tests).
async fn serve_guarded(
    listener: UnixListener,
    calls: mpsc::Sender<ApiCall>,
    bridge: Bridge,
    policy: PeerPolicy,
    counters: &'static AdminCounters,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if !admin_peer_allowed(&stream, &policy, counters) {
            continue; // dropping the stream closes it
        }
        let Ok(permit) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            tokio::spawn(async move {
                let body = error_body("too many admin connections");
                let _ =
                    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&render(503, &body)))
                        .await;
            });
            continue;
        };
        let calls = calls.clone();
        let bridge = bridge.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_conn(stream, &calls, &bridge).await {
                debug!("admin connection: {e}");
            }
            drop(permit);
        });
    }
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, (u16, String)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| (400, e.to_string()))?;
        if n == 0 {
            return Err((400, "connection closed before a complete request".into()));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        match parse_request(&buf) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) if buf.len() <= MAX_HEAD + MAX_BODY => {}
            Ok(None) => return Err((413, "request too large".into())),
            Err(e) => return Err((e.status(), e.to_string())),
        }
    }
}

async fn handle_conn(
    mut stream: UnixStream,
    calls: &mpsc::Sender<ApiCall>,
    bridge: &Bridge,
) -> std::io::Result<()> {
    let (status, body) =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
            Err(_) => (408, error_body("request not received within 5 s")),
            Ok(Err((s, m))) => (s, error_body(&m)),
            Ok(Ok(req)) => match route(&req.method, &req.path) {
                Err((s, m)) => (s, error_body(m)),
                Ok(r) => dispatch(r, &req.body, calls, bridge).await,
            },
        };
    stream.write_all(&render(status, &body)).await?;
    stream.shutdown().await
}

/// Fetches all per-peer counters (paged) and the worker count; `None` if not connected.
async fn dataplane_stats(bridge: &Bridge) -> Option<(usize, Vec<PeerStats>)> {
    let mut first = 0u32;
    let mut peers = Vec::new();
    let mut workers = 0;
    // Bounded: 64 pages of 256 peers.
    for _ in 0..64 {
        match bridge
            .request(DownMsg::GetStats { first_peer: first })
            .await
        {
            Ok(UpMsg::Stats(s)) => {
                workers = workers.max(s.workers.len());
                peers.extend(s.peers);
                match s.next_peer {
                    Some(n) if n > first => first = n,
                    _ => break,
                }
            }
            _ => return None,
        }
    }
    Some((workers, peers))
}

async fn snapshot(calls: &mpsc::Sender<ApiCall>, bridge: &Bridge) -> Option<StatusReply> {
    let (tx, rx) = oneshot::channel();
    calls.send(ApiCall::Snapshot(tx)).await.ok()?;
    let mut s = rx.await.ok()?;
    if s.dataplane.connected {
        if let Some((workers, stats)) = dataplane_stats(bridge).await {
            s.dataplane.workers = Some(workers);
            for p in &mut s.peers {
                if let Some(st) = stats.iter().find(|st| st.peer == p.id) {
                    p.rx_bytes = st.rx_bytes;
                    p.tx_bytes = st.tx_bytes;
                    p.rx_packets = st.rx_packets;
                    p.tx_packets = st.tx_packets;
                    p.drops = DropCause::ALL
                        .iter()
                        .filter_map(|c| {
                            let n = st.drops.get(c.index()).copied().unwrap_or(0);
                            (n > 0).then(|| (c.name().to_string(), n))
                        })
                        .collect();
                }
            }
        }
    }
    Some(s)
}

async fn dispatch(
    r: Route,
    body: &[u8],
    calls: &mpsc::Sender<ApiCall>,
    bridge: &Bridge,
) -> (u16, String) {
    let json = |v: Result<String, serde_json::Error>| match v {
        Ok(s) => (200, s),
        Err(e) => (500, error_body(&e.to_string())),
    };
    match r {
        Route::Health => (200, "{\"ok\":true}".into()),
        Route::Status => match snapshot(calls, bridge).await {
            Some(s) => json(serde_json::to_string(&s)),
            None => (503, error_body("the control plane is shutting down")),
        },
        Route::Peers => match snapshot(calls, bridge).await {
            Some(s) => json(serde_json::to_string(&PeersReply { peers: s.peers })),
            None => (503, error_body("the control plane is shutting down")),
        },
        Route::Dht => match snapshot(calls, bridge).await {
            Some(s) => json(serde_json::to_string(&s.dht)),
            None => (503, error_body("the control plane is shutting down")),
        },
        Route::Netcheck => match snapshot(calls, bridge).await {
            Some(s) => json(serde_json::to_string(&s.nat)),
            None => (503, error_body("the control plane is shutting down")),
        },
        Route::Connect | Route::Disconnect => {
            let req: PeerRequest = match serde_json::from_slice(body) {
                Ok(r) => r,
                Err(e) => {
                    return (
                        400,
                        error_body(&format!("expected a body {{\"peer\": NAME}}: {e}")),
                    )
                }
            };
            let (tx, rx) = oneshot::channel();
            let call = if r == Route::Connect {
                ApiCall::Connect(req.peer, tx)
            } else {
                ApiCall::Disconnect(req.peer, tx)
            };
            if calls.send(call).await.is_err() {
                return (503, error_body("the control plane is shutting down"));
            }
            match rx.await {
                Ok(Ok(())) => (200, "{\"ok\":true}".into()),
                Ok(Err(e)) => (404, error_body(&e)),
                Err(_) => (503, error_body("the control plane is shutting down")),
            }
        }
    }
}

/// Why an admin API call from the CLI failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error(
        "cannot reach the control plane at {path} (is `shadowmesh up` running? try --admin PATH)"
    )]
    Connect {
        /// Socket path.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("admin API I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not an HTTP response.
    #[error("malformed admin API response: expected {0}")]
    Malformed(&'static str),
    /// The control plane answered with an error status.
    #[error("the control plane answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Its `error` field (or the body).
        message: String,
    },
    /// The body was not the expected JSON.
    #[error("admin API response is not the expected JSON: {0}")]
    Decode(String),
}

fn checked(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String, ClientError> {
    let (status, body) = call(socket, method, path, body)?;
    if status != 200 {
        let message = serde_json::from_str::<ErrorReply>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        return Err(ClientError::Status { status, message });
    }
    Ok(body)
}

/// `GET path` decoded as `T`; also returns the raw JSON (for `--json`).
///
/// # Errors
/// [`ClientError`].
pub fn get_json<T: serde::de::DeserializeOwned>(
    socket: &Path,
    path: &str,
) -> Result<(T, String), ClientError> {
    let body = checked(socket, "GET", path, None)?;
    let v = serde_json::from_str(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
    Ok((v, body))
}

/// `POST /v1/connect` (`connect` true) or `/v1/disconnect` for `peer`.
///
/// # Errors
/// [`ClientError`] (404 status for an unknown peer).
pub fn post_peer(socket: &Path, peer: &str, connect: bool) -> Result<(), ClientError> {
    let body = serde_json::to_string(&PeerRequest {
        peer: peer.to_string(),
    })
    .map_err(|e| ClientError::Decode(e.to_string()))?;
    let path = if connect {
        "/v1/connect"
    } else {
        "/v1/disconnect"
    };
    checked(socket, "POST", path, Some(&body)).map(|_| ())
}

/// Blocking admin API call: returns the status and the body.
///
/// # Errors
/// [`ClientError`].
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let mut s =
        std::os::unix::net::UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: shadowmesh\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    s.take(u64::try_from(MAX_RESPONSE).unwrap_or(u64::MAX))
        .read_to_end(&mut resp)?;
    let head_end = find_head_end(&resp).ok_or(ClientError::Malformed("a response head"))?;
    let head = std::str::from_utf8(resp.get(..head_end).unwrap_or_default())
        .map_err(|_| ClientError::Malformed("an ASCII response head"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ClientError::Malformed("`HTTP/1.1 STATUS REASON`"))?;
    let body = String::from_utf8_lossy(resp.get(head_end..).unwrap_or_default()).into_owned();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_and_post_with_body() {
        let r = parse_request(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/v1/status"));
        assert!(r.body.is_empty());
        let raw = b"POST /v1/connect HTTP/1.1\r\nContent-Length: 14\r\n\r\n{\"peer\":\"b\"}  ";
        let r = parse_request(raw).unwrap().unwrap();
        assert_eq!(r.body, b"{\"peer\":\"b\"}  ");
    }

    #[test]
    fn incomplete_requests_ask_for_more() {
        assert_eq!(parse_request(b"GET /health HTTP/1.1\r\n").unwrap(), None);
        let raw = b"POST /v1/connect HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"peer\"";
        assert_eq!(parse_request(raw).unwrap(), None);
    }

    #[test]
    fn malformed_requests_are_400() {
        for raw in [
            &b"GET\r\n\r\n"[..],
            b"GET /health\r\n\r\n",
            b"get /health HTTP/1.1\r\n\r\n",
            b"GET health HTTP/1.1\r\n\r\n",
            b"GET /health HTTP/2\r\n\r\n",
            b"GET /health HTTP/1.1 extra\r\n\r\n",
            b"GET /health HTTP/1.1\r\nNoColon\r\n\r\n",
            b"POST /v1/connect HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"POST /v1/connect HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"GET /health HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            let e = parse_request(raw).unwrap_err();
            assert_eq!(e.status(), 400, "{:?} -> {e}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn limits_are_enforced() {
        let big_head = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse_request(big_head.as_bytes()).unwrap_err().status(),
            413
        );
        // Without the end of the head, a long prefix is refused too (no unbounded buffering).
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(parse_request(&endless).unwrap_err().status(), 413);
        let big_body = format!(
            "POST /v1/connect HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(
            parse_request(big_body.as_bytes()).unwrap_err().status(),
            413
        );
        let chunked = b"POST /v1/connect HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_request(chunked).unwrap_err().status(), 501);
    }

    #[test]
    fn routes_404_and_405() {
        assert_eq!(route("GET", "/health"), Ok(Route::Health));
        assert_eq!(route("POST", "/v1/disconnect"), Ok(Route::Disconnect));
        assert_eq!(route("GET", "/v2/status").unwrap_err().0, 404);
        assert_eq!(route("POST", "/v1/status").unwrap_err().0, 405);
        assert_eq!(route("GET", "/v1/connect").unwrap_err().0, 405);
    }

    #[test]
    fn render_sets_length_and_status() {
        let r = String::from_utf8(render(404, "{}")).unwrap();
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(r.contains("Content-Length: 2\r\n"));
        assert!(r.ends_with("\r\n\r\n{}"));
    }

    #[test]
    fn server_answers_over_a_unix_socket() {
        let dir = std::env::temp_dir().join(format!("sm-api-test-{}", std::process::id()));
        let path = dir.join("admin.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (calls_tx, mut calls_rx) = mpsc::channel(4);
        let (ev_tx, _ev_rx) = mpsc::channel(4);
        // A bridge to a socket nobody serves: stats requests fail, the API still answers.
        let (bridge, _h) = Bridge::spawn(dir.join("none.sock"), ev_tx).unwrap();
        let _guard = rt.enter();
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        rt.spawn(serve(listener, calls_tx, bridge));
        rt.spawn(async move {
            while let Some(c) = calls_rx.recv().await {
                match c {
                    ApiCall::Snapshot(tx) => {
                        let _ = tx.send(StatusReply {
                            node: NodeInfo {
                                name: "alpha".into(),
                                ..NodeInfo::default()
                            },
                            ..StatusReply::default()
                        });
                    }
                    ApiCall::Connect(n, tx) | ApiCall::Disconnect(n, tx) => {
                        let _ = tx.send(if n == "beta" {
                            Ok(())
                        } else {
                            Err(format!("no peer named {n:?}"))
                        });
                    }
                }
            }
        });
        let p = path.clone();
        let results = rt.block_on(async move {
            tokio::task::spawn_blocking(move || {
                (
                    call(&p, "GET", "/health", None).unwrap(),
                    call(&p, "GET", "/v1/status", None).unwrap(),
                    call(&p, "POST", "/v1/connect", Some("{\"peer\":\"beta\"}")).unwrap(),
                    call(&p, "POST", "/v1/connect", Some("{\"peer\":\"zeta\"}")).unwrap(),
                    call(&p, "POST", "/v1/connect", Some("nonsense")).unwrap(),
                    call(&p, "DELETE", "/v1/peers", None).unwrap(),
                )
            })
            .await
            .unwrap()
        });
        assert_eq!(results.0 .0, 200);
        assert_eq!(results.1 .0, 200);
        let s: StatusReply = serde_json::from_str(&results.1 .1).unwrap();
        assert_eq!(s.node.name, "alpha");
        assert_eq!(results.2 .0, 200);
        assert_eq!(results.3 .0, 404);
        assert!(results.3 .1.contains("zeta"));
        assert_eq!(results.4 .0, 400);
        assert_eq!(results.5 .0, 405);
        // A second daemon must not steal the live socket.
        assert!(bind(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Run as uid 65534 by `admin_closes_a_peer_of_another_user_unanswered`: connects to the
    /// socket named in `SM_API_PROBE`, sends a request and prints how many bytes came back.
    #[test]
    #[ignore = "helper run as another uid by admin_closes_a_peer_of_another_user_unanswered"]
    fn admin_probe_child() {
        let Ok(path) = std::env::var("SM_API_PROBE") else {
            return;
        };
        let mut s = std::os::unix::net::UnixStream::connect(&path).expect("probe connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // The server may close before or after the write: either way no answer may come.
        let _ = s.write_all(b"GET /health HTTP/1.1\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        println!("PROBE-RESULT bytes={}", buf.len());
    }

    #[test]
    fn admin_closes_a_peer_of_another_user_unanswered() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        if seqpacket::current_uid() != 0 {
            eprintln!("not root: cannot connect as another uid; skipped");
            return;
        }
        let dir = std::env::temp_dir().join(format!("sm-api-peer-{}", std::process::id()));
        let path = dir.join("admin.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (calls_tx, _calls_rx) = mpsc::channel(4);
        let (ev_tx, _ev_rx) = mpsc::channel(4);
        let (bridge, _h) = Bridge::spawn(dir.join("none.sock"), ev_tx).unwrap();
        let _guard = rt.enter();
        let listener = bind(&path).unwrap();
        // bind made the new directory 0700 and the socket 0600 ...
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
        // ... which alone keep uid 65534 out. Widen them, as a careless operator might, so
        // only the SO_PEERCRED check stands in its way.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        static COUNTERS: AdminCounters = AdminCounters {
            refused_peers: AtomicU64::new(0),
        };
        rt.spawn(serve_guarded(
            listener,
            calls_tx,
            bridge,
            PeerPolicy::current(),
            &COUNTERS,
        ));
        let p = path.clone();
        let (child, ours) = rt.block_on(async move {
            tokio::task::spawn_blocking(move || {
                let child = std::process::Command::new(std::env::current_exe().unwrap())
                    .args(["--ignored", "--exact", "api::tests::admin_probe_child"])
                    .arg("--nocapture")
                    .env("SM_API_PROBE", &p)
                    .uid(65534)
                    .gid(65534)
                    .output()
                    .unwrap();
                (child, call(&p, "GET", "/health", None).unwrap())
            })
            .await
            .unwrap()
        });
        let out = String::from_utf8_lossy(&child.stdout);
        assert!(child.status.success(), "probe failed: {out}");
        assert!(
            out.contains("PROBE-RESULT bytes=0"),
            "probe got an answer: {out}"
        );
        assert_eq!(COUNTERS.refused_peers.load(Ordering::Relaxed), 1);
        // Root (our user here) is still served.
        assert_eq!(ours.0, 200);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
