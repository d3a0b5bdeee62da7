//! The dataplane's IPC thread: serves one control connection at a time on the IPC socket,
//! hands each decoded request to an [`IpcHandler`] and forwards the engine's events up. Beside
//! it, one read-only observer connection (`shadowmesh stats`) may ask for statistics.
//!
//! It owns the connection's life cycle (peer check; Hello; a new control connection replacing
//! the old one only once its Hello arrives, so neither an observer nor a client that connects
//! and never greets can displace the control plane) and the server-side counters. It must
//! never block the engine: events come over bounded channels (when the client reads slowly
//! they wait there, so a full channel is the engine's signal to count a drop; with no client
//! they are dropped and counted here). Events and control datagrams may come on two channels
//! ([`IpcServer::run_split`]); events are always sent first, so a flood of datagrams delays
//! an event by at most one round. It
//! never logs message contents (keys) and never busy-spins: it sleeps in `poll` on the
//! listener, the client and an optional wake-up pipe ([`IpcServer::waker`]) for at most
//! [`POLL_INTERVAL`] between looks at the event channel and the stop flag.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use shadowmesh_platform::seqpacket::{
    self, PeerCred, PollFd, Ready, SeqpacketConn, SeqpacketError, SeqpacketListener, Wakeup,
};
use zeroize::{Zeroize, Zeroizing};

use super::proto::{self, DownFrame, DownMsg, ErrorCode, Hello, Role, UpFrame, UpMsg, MAX_MSG};
use super::{now, IpcError};

/// Longest sleep between looks at the event channel and the stop flag. Bounds both the stop
/// latency and the delay of an event that arrives while the socket is idle.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long a reply may wait for room in the client's socket buffer before the client is
/// considered stuck and dropped.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a new connection may take to send its Hello. Connections are taken from the
/// listen backlog one at a time, so a silent one delays the next by at most this much.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(1);
/// Most requests handled per wake-up, so events keep flowing under a request flood.
const REQUESTS_PER_ROUND: usize = 64;
/// Most events forwarded per wake-up, so requests keep being served under an event flood.
const EVENTS_PER_ROUND: usize = 256;

/// What the engine implements to act on control-plane requests.
pub trait IpcHandler {
    /// Applies one request. `Ok(None)` is acknowledged with `Ack`; `Ok(Some(reply))` sends
    /// `reply` (e.g. `Stats` for `GetStats`); `Err(why)` sends an `Error` carrying `why`
    /// (never put key material in it).
    fn handle(&mut self, msg: DownMsg) -> Result<Option<UpMsg>, String>;
}

/// Server-side counters, readable while [`IpcServer::run`] runs.
#[derive(Debug, Default)]
pub struct IpcCounters {
    /// Connections accepted (peer check passed).
    pub connections: AtomicU64,
    /// Connections refused by the peer-credential check.
    pub refused_peers: AtomicU64,
    /// Requests handed to the handler.
    pub requests: AtomicU64,
    /// Messages that failed to decode (answered with `Error`).
    pub malformed: AtomicU64,
    /// Messages larger than [`MAX_MSG`] (answered with `Error`).
    pub too_large: AtomicU64,
    /// Events forwarded to a client.
    pub events_sent: AtomicU64,
    /// Events dropped because no client was connected.
    pub events_dropped_no_client: AtomicU64,
    /// Times an event had to wait because the client's socket buffer was full (it is sent
    /// later; meanwhile newer events wait in the channel).
    pub events_deferred: AtomicU64,
}

impl IpcCounters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why [`IpcServer::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The stop flag was set.
    StopFlag,
    /// The client sent `Shutdown` and the handler accepted it.
    Shutdown,
}

/// The IPC server: a bound, listening socket (mode 0600) plus counters.
#[derive(Debug)]
pub struct IpcServer {
    listener: SeqpacketListener,
    counters: Arc<IpcCounters>,
    our_uid: u32,
    wakeup: Arc<Wakeup>,
}

/// Wakes a running [`IpcServer`] so that events just queued on its channel are forwarded at
/// once instead of within [`POLL_INTERVAL`]. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct IpcWaker(Arc<Wakeup>);

impl IpcWaker {
    /// Call after sending one or more events on the server's channel.
    pub fn wake(&self) {
        self.0.wake();
    }
}

/// A connection: the control client, the observer, or one not yet greeted.
struct Client {
    conn: SeqpacketConn,
    cred: PeerCred,
    /// What its Hello said; `None` until then.
    role: Option<Role>,
    /// When it was accepted.
    since: Instant,
}

/// The connections the server holds.
#[derive(Default)]
struct Conns {
    /// The greeted control connection: requests and events.
    control: Option<Client>,
    /// The connection accepted last, until its Hello says what it is (the next one waits in
    /// the listen backlog meanwhile).
    newcomer: Option<Client>,
    /// The greeted read-only connection: `GetStats` only, no events.
    observer: Option<Client>,
}

impl IpcServer {
    /// Binds the IPC socket at `path` with mode 0600 from its creation on (a stale socket
    /// file is replaced; a live one is an error). The mode and the peer-uid check guard the
    /// socket, the directory guards the path: a missing one is created 0700, one that group
    /// or others can write (or another user owns) is refused.
    pub fn bind(path: &Path) -> Result<Self, IpcError> {
        let listener = SeqpacketListener::bind(path, 0o600)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            counters: Arc::new(IpcCounters::default()),
            our_uid: seqpacket::current_uid(),
            wakeup: Arc::new(Wakeup::new()?),
        })
    }

    /// A handle that wakes the server after events were queued (optional: without it events
    /// are picked up within [`POLL_INTERVAL`]).
    pub fn waker(&self) -> IpcWaker {
        IpcWaker(Arc::clone(&self.wakeup))
    }

    /// The counters, shared with the running server.
    pub fn counters(&self) -> Arc<IpcCounters> {
        Arc::clone(&self.counters)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.listener.path()
    }

    /// Serves until `stop` is set (noticed within [`POLL_INTERVAL`]) or a `Shutdown` request
    /// is accepted. Returns an error only if the listening socket itself fails; a failing
    /// client connection is dropped and the server waits for the next one.
    pub fn run(
        self,
        handler: &mut impl IpcHandler,
        up: Receiver<UpMsg>,
        stop: &AtomicBool,
    ) -> Result<StopReason, IpcError> {
        self.run_split(handler, up, crossbeam_channel::never(), stop)
    }

    /// [`IpcServer::run`] with a second channel for control datagrams (`ControlReceived`):
    /// whatever waits on `events` is always sent before anything from `datagrams`, so a
    /// flood of datagrams cannot hold events back behind it.
    pub fn run_split(
        self,
        handler: &mut impl IpcHandler,
        events: Receiver<UpMsg>,
        datagrams: Receiver<UpMsg>,
        stop: &AtomicBool,
    ) -> Result<StopReason, IpcError> {
        let up = Up {
            events: &events,
            datagrams: &datagrams,
        };
        let mut conns = Conns::default();
        // Requests may carry keys: the receive and send buffers are wiped on drop, and the
        // received bytes after each message.
        let mut buf = Zeroizing::new(vec![0u8; MAX_MSG]);
        let mut out = Zeroizing::new(Vec::with_capacity(4096));
        // An event the client's socket had no room for; sent before any newer one so the
        // stream keeps its order, while the channel holds the rest (back-pressure).
        let mut pending: Option<Vec<u8>> = None;
        let mut flow = Flow::Idle;
        let mut ready = [Ready::default(); 5];
        while !stop.load(Ordering::Acquire) {
            // With events left over from the last round, only look at the sockets.
            let wait = if flow == Flow::Backlog {
                Duration::ZERO
            } else {
                POLL_INTERVAL
            };
            if conns
                .newcomer
                .as_ref()
                .is_some_and(|c| now().saturating_duration_since(c.since) > HELLO_TIMEOUT)
            {
                tracing::info!("IPC connection sent no Hello within {HELLO_TIMEOUT:?}; closed");
                conns.newcomer = None;
            }
            let fds = [
                PollFd {
                    // While a newcomer has yet to greet, the next connection waits (the poll
                    // timeout brings us back to check the newcomer's deadline).
                    fd: conns.newcomer.is_none().then(|| self.listener.as_fd()),
                    write: false,
                },
                PollFd {
                    fd: Some(self.wakeup.as_fd()),
                    write: false,
                },
                PollFd {
                    fd: conns.control.as_ref().map(|c| c.conn.as_fd()),
                    write: flow == Flow::Blocked,
                },
                PollFd {
                    fd: conns.newcomer.as_ref().map(|c| c.conn.as_fd()),
                    write: false,
                },
                PollFd {
                    fd: conns.observer.as_ref().map(|c| c.conn.as_fd()),
                    write: false,
                },
            ];
            seqpacket::poll(&fds, wait, &mut ready)?;
            if ready[0].readable {
                self.accept_pending(&mut conns.newcomer)?;
            }
            if ready[1].readable {
                self.wakeup.drain();
            }
            let slots = [
                (2, &mut conns.control),
                (3, &mut conns.newcomer),
                (4, &mut conns.observer),
            ];
            for (i, slot) in slots {
                if !ready[i].readable {
                    continue;
                }
                if let Some(c) = slot.as_mut() {
                    match self.serve_requests(c, handler, &mut buf, &mut out) {
                        Ok(false) => {}
                        Ok(true) => return Ok(StopReason::Shutdown),
                        Err(e) => {
                            tracing::info!(pid = c.cred.pid, uid = c.cred.uid, error = %e, "IPC client disconnected");
                            *slot = None;
                        }
                    }
                }
            }
            self.promote_newcomer(&mut conns);
            flow = self.forward_events(&mut conns.control, &up, &mut pending, &mut out);
        }
        Ok(StopReason::StopFlag)
    }

    /// Accepts the next permitted connection into `newcomer` (where it waits for its Hello),
    /// refusing any with the wrong peer credentials on the way.
    fn accept_pending(&self, newcomer: &mut Option<Client>) -> Result<(), IpcError> {
        // Bounded: a flood of refused connects cannot starve the current client.
        for _ in 0..8 {
            let (conn, cred) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(SeqpacketError::TimedOut { .. }) => return Ok(()),
                Err(e) if e.is_transient_accept_error() => {
                    tracing::warn!(error = %e, "IPC accept failed; will retry");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            if cred.uid != 0 && cred.uid != self.our_uid {
                IpcCounters::bump(&self.counters.refused_peers);
                tracing::warn!(
                    pid = cred.pid,
                    uid = cred.uid,
                    our_uid = self.our_uid,
                    "refusing IPC connection: uid is neither 0 nor ours"
                );
                continue;
            }
            // The server only reads with MSG_DONTWAIT; the read timeout is a second guard
            // that no blocking read can ever hold the IPC thread.
            let timeouts = conn
                .set_write_timeout(Some(REPLY_TIMEOUT))
                .and_then(|()| conn.set_read_timeout(Some(REPLY_TIMEOUT)));
            if let Err(e) = timeouts {
                tracing::warn!(error = %e, "IPC connection setup failed");
                continue;
            }
            IpcCounters::bump(&self.counters.connections);
            *newcomer = Some(Client {
                conn,
                cred,
                role: None,
                since: now(),
            });
            return Ok(());
        }
        Ok(())
    }

    /// Handles the waiting requests of `c`. `Ok(true)` = shutdown accepted; `Err` = drop
    /// the connection.
    fn serve_requests(
        &self,
        c: &mut Client,
        handler: &mut impl IpcHandler,
        buf: &mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, IpcError> {
        for _ in 0..REQUESTS_PER_ROUND {
            let n = match c.conn.try_recv(buf) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(false),
                Err(SeqpacketError::MessageTooLarge { len, max }) => {
                    // Seqpacket discarded the rest, so framing is intact: answer and go on.
                    IpcCounters::bump(&self.counters.too_large);
                    let id = proto::request_id(buf).unwrap_or(0);
                    buf.zeroize();
                    let msg = UpMsg::error(
                        ErrorCode::TOO_LARGE,
                        format!("message too large: {len} bytes, expected at most {max}"),
                    );
                    send(c, &UpFrame::Reply { id, msg }, out)?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let msg = buf.get(..n).unwrap_or_default();
            let decoded = proto::decode_down(msg);
            let id = proto::request_id(msg).unwrap_or(0);
            // The decoded message owns its own (zeroizing) copies of any keys.
            buf.get_mut(..n).unwrap_or_default().zeroize();
            match decoded {
                Ok(DownFrame::Hello(hello)) => self.on_hello(c, hello, out)?,
                Err(proto::DecodeError::VersionMismatch { .. }) if c.role.is_some() => {
                    // Versions were settled by the first Hello; a later one is only noise.
                    IpcCounters::bump(&self.counters.malformed);
                    let msg = UpMsg::error(ErrorCode::PROTOCOL, "second Hello on one connection");
                    send(c, &UpFrame::Reply { id: 0, msg }, out)?;
                }
                Err(proto::DecodeError::VersionMismatch { ours, theirs }) => {
                    tracing::warn!(
                        ours,
                        theirs,
                        pid = c.cred.pid,
                        "IPC client speaks another protocol version; closing"
                    );
                    // Tell the client our version so it can report both, then hang up.
                    send(c, &UpFrame::Hello(Hello::ours(Role::Dataplane)), out)?;
                    return Err(IpcError::VersionMismatch { ours, theirs });
                }
                Ok(DownFrame::Request { .. }) if c.role.is_none() => {
                    let msg =
                        UpMsg::error(ErrorCode::PROTOCOL, "expected Hello before any request");
                    send(c, &UpFrame::Reply { id, msg }, out)?;
                    return Err(IpcError::Protocol {
                        expected: "Hello",
                        got: "a request".into(),
                    });
                }
                Ok(DownFrame::Request { id, msg })
                    if c.role == Some(Role::Observer)
                        && !matches!(msg, DownMsg::GetStats { .. }) =>
                {
                    let msg = UpMsg::error(
                        ErrorCode::REJECTED,
                        "read-only (observer) connection: only GetStats is allowed",
                    );
                    send(c, &UpFrame::Reply { id, msg }, out)?;
                }
                Ok(DownFrame::Request { id, msg }) => {
                    IpcCounters::bump(&self.counters.requests);
                    let shutdown = matches!(msg, DownMsg::Shutdown);
                    let result = handler.handle(msg);
                    let accepted = result.is_ok();
                    self.reply(c, id, result, out)?;
                    if shutdown && accepted {
                        return Ok(true);
                    }
                }
                Err(e) => {
                    IpcCounters::bump(&self.counters.malformed);
                    tracing::debug!(error = %e, id, "malformed IPC message");
                    let msg = UpMsg::error(ErrorCode::MALFORMED, e.to_string());
                    send(c, &UpFrame::Reply { id, msg }, out)?;
                }
            }
        }
        Ok(false)
    }

    /// Moves a greeted newcomer into its slot: a control connection replaces the old one,
    /// an observer the old observer.
    fn promote_newcomer(&self, conns: &mut Conns) {
        let Some(new) = conns.newcomer.take_if(|c| c.role.is_some()) else {
            return;
        };
        // `on_hello` admits only these two roles.
        let role = new.role;
        let slot = if role == Some(Role::Control) {
            &mut conns.control
        } else {
            &mut conns.observer
        };
        match slot.take() {
            Some(old) => tracing::info!(
                old_pid = old.cred.pid,
                new_pid = new.cred.pid,
                ?role,
                "new IPC connection replaces the old one"
            ),
            None => tracing::info!(
                pid = new.cred.pid,
                uid = new.cred.uid,
                ?role,
                "IPC connection"
            ),
        }
        *slot = Some(new);
    }

    fn on_hello(&self, c: &mut Client, hello: Hello, out: &mut Vec<u8>) -> Result<(), IpcError> {
        if c.role.is_some() {
            let msg = UpMsg::error(ErrorCode::PROTOCOL, "second Hello on one connection");
            return send(c, &UpFrame::Reply { id: 0, msg }, out);
        }
        if !matches!(hello.role, Role::Control | Role::Observer) {
            let msg = UpMsg::error(
                ErrorCode::PROTOCOL,
                "expected a Hello with role control or observer",
            );
            send(c, &UpFrame::Reply { id: 0, msg }, out)?;
            return Err(IpcError::Protocol {
                expected: "role control or observer",
                got: format!("{:?}", hello.role),
            });
        }
        c.role = Some(hello.role);
        send(c, &UpFrame::Hello(Hello::ours(Role::Dataplane)), out)
    }

    fn reply(
        &self,
        c: &mut Client,
        id: u32,
        result: Result<Option<UpMsg>, String>,
        out: &mut Vec<u8>,
    ) -> Result<(), IpcError> {
        let (reply, extra_event) = match result {
            Ok(None) => (UpMsg::Ack, None),
            Ok(Some(m @ (UpMsg::Ack | UpMsg::Error { .. } | UpMsg::Stats(_)))) => (m, None),
            // A handler answering with an event type: acknowledge, then send it as an event.
            Ok(Some(event)) => (UpMsg::Ack, Some(event)),
            Err(why) => (UpMsg::error(ErrorCode::REJECTED, why), None),
        };
        match send(c, &UpFrame::Reply { id, msg: reply }, out) {
            Err(IpcError::Encode(e)) => {
                let msg = UpMsg::error(
                    ErrorCode::REJECTED,
                    format!("reply could not be encoded: {e}"),
                );
                send(c, &UpFrame::Reply { id, msg }, out)?;
            }
            other => other?,
        }
        if let Some(event) = extra_event {
            send(c, &UpFrame::Event(event), out)?;
        }
        Ok(())
    }

    /// Forwards up to [`EVENTS_PER_ROUND`] events. With no greeted client they are dropped
    /// and counted; when the client's socket is full the event waits in `pending` and the
    /// rest stay in the channel, so the engine sees back-pressure rather than silent loss.
    fn forward_events(
        &self,
        client: &mut Option<Client>,
        up: &Up<'_>,
        pending: &mut Option<Vec<u8>>,
        scratch: &mut Vec<u8>,
    ) -> Flow {
        let Some(c) = client.as_mut().filter(|c| c.role == Some(Role::Control)) else {
            if pending.take().is_some() {
                IpcCounters::bump(&self.counters.events_dropped_no_client);
            }
            for _ in 0..EVENTS_PER_ROUND {
                if up.try_recv().is_err() {
                    return Flow::Idle;
                }
                IpcCounters::bump(&self.counters.events_dropped_no_client);
            }
            return if up.is_empty() {
                Flow::Idle
            } else {
                Flow::Backlog
            };
        };
        for _ in 0..EVENTS_PER_ROUND {
            let frame = match pending.take() {
                Some(bytes) => bytes,
                None => {
                    let event = match up.try_recv() {
                        Ok(ev) => ev,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Flow::Idle,
                    };
                    scratch.clear();
                    if let Err(e) = proto::encode_up(&UpFrame::Event(event), scratch) {
                        tracing::warn!(error = %e, "IPC event could not be encoded; dropped");
                        continue;
                    }
                    std::mem::take(scratch)
                }
            };
            match c.conn.try_send(&frame) {
                Ok(true) => {
                    IpcCounters::bump(&self.counters.events_sent);
                    // Hand the buffer back for reuse.
                    *scratch = frame;
                }
                Ok(false) => {
                    IpcCounters::bump(&self.counters.events_deferred);
                    *pending = Some(frame);
                    return Flow::Blocked;
                }
                Err(e) => {
                    tracing::info!(pid = c.cred.pid, error = %e, "IPC client gone while sending an event");
                    IpcCounters::bump(&self.counters.events_dropped_no_client);
                    *client = None;
                    return Flow::Idle;
                }
            }
        }
        if up.is_empty() {
            Flow::Idle
        } else {
            Flow::Backlog
        }
    }
}

/// The two channels events come up on: events first, then datagrams.
struct Up<'a> {
    events: &'a Receiver<UpMsg>,
    datagrams: &'a Receiver<UpMsg>,
}

impl Up<'_> {
    /// The next message: an event if one waits, else a datagram.
    fn try_recv(&self) -> Result<UpMsg, TryRecvError> {
        match self.events.try_recv() {
            Ok(m) => Ok(m),
            Err(_) => self.datagrams.try_recv(),
        }
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.datagrams.is_empty()
    }
}

/// The state of event forwarding after a round, which decides how the next poll waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Channel empty: sleep up to [`POLL_INTERVAL`].
    Idle,
    /// Events left in the channel: do not sleep.
    Backlog,
    /// The client's socket is full: also wait for it to become writable.
    Blocked,
}

fn send(c: &mut Client, frame: &UpFrame, out: &mut Vec<u8>) -> Result<(), IpcError> {
    out.clear();
    proto::encode_up(frame, out)?;
    c.conn.send(out)?;
    Ok(())
}

/// An in-memory [`IpcHandler`] for tests and dry runs: records what it is told.
#[derive(Debug, Default)]
pub struct MemoryHandler {
    /// Installed sessions by local index.
    pub sessions: std::collections::BTreeMap<u32, proto::InstallSession>,
    /// Allowed prefixes by peer.
    pub routes: std::collections::BTreeMap<u32, Vec<(std::net::IpAddr, u8)>>,
    /// Endpoints by peer.
    pub endpoints: std::collections::BTreeMap<u32, std::net::SocketAddr>,
    /// Control datagrams it was asked to send.
    pub sent_control: Vec<(std::net::SocketAddr, Vec<u8>)>,
    /// Relay routes: (from, index) → (to, rate).
    pub relays:
        std::collections::BTreeMap<(std::net::SocketAddr, u32), (std::net::SocketAddr, u64)>,
    /// What `GetStats` answers.
    pub stats: proto::Stats,
    /// Whether `Shutdown` was received.
    pub shutdown: bool,
}

impl IpcHandler for MemoryHandler {
    fn handle(&mut self, msg: DownMsg) -> Result<Option<UpMsg>, String> {
        match msg {
            DownMsg::InstallSession(s) => {
                self.sessions.insert(s.local_index, s);
            }
            DownMsg::RemoveSession { local_index } => {
                if self.sessions.remove(&local_index).is_none() {
                    return Err(format!("no session with local index {local_index}"));
                }
            }
            DownMsg::RemovePeer { peer } => {
                let before = self.sessions.len();
                self.sessions.retain(|_, s| s.peer != peer);
                let had_sessions = before != self.sessions.len();
                let had_routes = self.routes.remove(&peer).is_some();
                let had_endpoint = self.endpoints.remove(&peer).is_some();
                let had = had_sessions || had_routes || had_endpoint;
                if !had {
                    return Err(format!("no peer {peer}"));
                }
            }
            DownMsg::SetRoutes { peer, prefixes } => {
                self.routes.insert(peer, prefixes);
            }
            DownMsg::SetSources { .. } => {}
            DownMsg::SetEndpoint { peer, addr } => {
                self.endpoints.insert(peer, addr);
            }
            DownMsg::SendControl { dst, payload } => self.sent_control.push((dst, payload)),
            DownMsg::GetStats { first_peer } => {
                let mut page = self.stats.clone();
                page.peers.retain(|p| p.peer >= first_peer);
                return Ok(Some(UpMsg::Stats(page)));
            }
            DownMsg::Shutdown => self.shutdown = true,
            DownMsg::SetRelay {
                from,
                index,
                to,
                rate_bytes_per_sec,
            } => {
                self.relays.insert((from, index), (to, rate_bytes_per_sec));
            }
            DownMsg::RemoveRelay { from, index } => {
                if self.relays.remove(&(from, index)).is_none() {
                    return Err(format!("no relay route from {from} with index {index}"));
                }
            }
        }
        Ok(None)
    }
}
