//! The blocking IPC client: connects to the dataplane's IPC socket, exchanges Hellos, sends
//! requests and waits for their replies, and queues the events that arrive meanwhile.
//!
//! It owns request ids and the bounded event queues: one for engine events, one for control
//! datagrams (`ControlReceived`), so a datagram flood pushes out only older datagrams, and
//! events are handed out first; it checks that the dataplane runs as root or our user before
//! it sends anything. It must never wait without a deadline
//! (every wait is bounded by the client's timeout) and never keep an encoded request (which
//! may hold keys) after sending it.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use shadowmesh_platform::seqpacket::{self, PeerPolicy, SeqpacketConn, SeqpacketError};
use zeroize::Zeroizing;

use super::proto::{self, DownFrame, DownMsg, Hello, Role, UpFrame, UpMsg, MAX_MSG};
use super::{now, IpcError};

/// Default wait for a Hello or a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most events kept while nobody reads them, and separately most control datagrams; older
/// ones are dropped (counted) first.
pub const EVENT_QUEUE_MAX: usize = 1024;

/// A connected, greeted IPC client.
#[derive(Debug)]
pub struct IpcClient {
    conn: SeqpacketConn,
    next_id: u32,
    timeout: Duration,
    events: VecDeque<UpMsg>,
    datagrams: VecDeque<UpMsg>,
    events_dropped: u64,
    buf: Vec<u8>,
}

impl IpcClient {
    /// Connects to the dataplane at `path` and exchanges Hellos (waits [`DEFAULT_TIMEOUT`]).
    pub fn connect(path: &Path) -> Result<Self, IpcError> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Like [`connect`](Self::connect), with `timeout` for the Hello and later replies.
    pub fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Self, IpcError> {
        Self::connect_with_policy(path, timeout, &PeerPolicy::current())
    }

    /// Like [`connect_with_timeout`](Self::connect_with_timeout), accepting a dataplane run by
    /// the users `policy` allows (e.g. root, ours and a configured dataplane uid).
    ///
    /// The server's credentials (`SO_PEERCRED`, recorded by the kernel) are checked before
    /// the Hello, so no request (and no session key) ever goes to a process of another user
    /// that bound the path first: that is a [`SeqpacketError::PeerRefused`] naming its uid
    /// and pid.
    pub fn connect_with_policy(
        path: &Path,
        timeout: Duration,
        policy: &PeerPolicy,
    ) -> Result<Self, IpcError> {
        let (conn, _cred) = SeqpacketConn::connect_checked(path, policy)?;
        Self::handshake(conn, timeout, Hello::ours(Role::Control))
    }

    /// Connects as a read-only observer: only `GetStats` is allowed, no events arrive, and
    /// the control plane's connection stays in place (what `shadowmesh stats` uses). The
    /// server is checked as in [`connect_with_policy`](Self::connect_with_policy), so the
    /// statistics come from a dataplane of root or our user.
    pub fn connect_observer(path: &Path) -> Result<Self, IpcError> {
        let (conn, _cred) = SeqpacketConn::connect_checked(path, &PeerPolicy::current())?;
        Self::handshake(conn, DEFAULT_TIMEOUT, Hello::ours(Role::Observer))
    }

    /// Sends `hello` on `conn` and waits for the dataplane's Hello. Exposed to tests (which
    /// send other versions) through [`connect_with_hello`](Self::connect_with_hello).
    fn handshake(conn: SeqpacketConn, timeout: Duration, hello: Hello) -> Result<Self, IpcError> {
        conn.set_write_timeout(Some(timeout))?;
        let mut client = Self {
            conn,
            next_id: 1,
            timeout,
            events: VecDeque::new(),
            datagrams: VecDeque::new(),
            events_dropped: 0,
            buf: vec![0u8; MAX_MSG],
        };
        let mut out = Vec::with_capacity(8);
        proto::encode_down(&DownFrame::Hello(hello), &mut out)?;
        client.conn.send(&out)?;
        let deadline = now() + timeout;
        match client.recv_frame(deadline, "Hello from the dataplane")? {
            // Compare with the version we announced (normally ours; tests announce others).
            UpFrame::Hello(h) if h.version != hello.version => Err(IpcError::VersionMismatch {
                ours: hello.version,
                theirs: h.version,
            }),
            UpFrame::Hello(h) if h.role == Role::Dataplane => Ok(client),
            UpFrame::Hello(h) => Err(IpcError::Protocol {
                expected: "a Hello with role dataplane",
                got: format!("role {:?}", h.role),
            }),
            UpFrame::Reply {
                id,
                msg: UpMsg::Error { code, message },
            } => Err(IpcError::Remote { id, code, message }),
            other => Err(IpcError::Protocol {
                expected: "Hello",
                got: frame_name(&other).into(),
            }),
        }
    }

    /// Connects and greets with an arbitrary Hello (tests of version handling).
    #[doc(hidden)]
    pub fn connect_with_hello(path: &Path, hello: Hello) -> Result<Self, IpcError> {
        let (conn, _cred) = SeqpacketConn::connect_checked(path, &PeerPolicy::current())?;
        Self::handshake(conn, DEFAULT_TIMEOUT, hello)
    }

    /// Changes the wait for replies and events.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<(), IpcError> {
        self.conn.set_write_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sends a request and waits for its reply: `Ack` or the reply message (`Stats`). An
    /// `Error` reply becomes [`IpcError::Remote`]. Events that arrive meanwhile are queued.
    pub fn request(&mut self, msg: DownMsg) -> Result<UpMsg, IpcError> {
        let id = self.next_id;
        // 0 is the id of replies to requests whose id could not be read; never use it.
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        {
            // The encoding may hold session keys: wipe it once sent.
            let mut out = Zeroizing::new(Vec::with_capacity(256));
            proto::encode_down(&DownFrame::Request { id, msg }, &mut out)?;
            self.conn.send(&out)?;
        }
        let deadline = now() + self.timeout;
        loop {
            match self.recv_frame(deadline, "reply")? {
                UpFrame::Reply { id: rid, msg } if rid == id || rid == 0 => {
                    return match msg {
                        UpMsg::Error { code, message } => Err(IpcError::Remote {
                            id: rid,
                            code,
                            message,
                        }),
                        other => Ok(other),
                    };
                }
                UpFrame::Reply { id: rid, .. } => {
                    // A late reply to an earlier request that timed out.
                    tracing::debug!(expected = id, got = rid, "stale IPC reply ignored");
                }
                UpFrame::Event(ev) => self.queue_event(ev),
                UpFrame::Hello(_) => {
                    return Err(IpcError::Protocol {
                        expected: "a reply",
                        got: "a second Hello".into(),
                    })
                }
            }
        }
    }

    /// Returns the next event, waiting up to `timeout`; `Ok(None)` if none came. What the
    /// socket already holds is read first, and engine events are handed out before control
    /// datagrams, so an event is never stuck behind a flood of datagrams.
    pub fn recv_event(&mut self, timeout: Duration) -> Result<Option<UpMsg>, IpcError> {
        // Only while both queues have room: a reader that falls behind gets back-pressure
        // (the server waits), not loss here.
        for _ in 0..EVENT_QUEUE_MAX {
            if self.events.len() >= EVENT_QUEUE_MAX || self.datagrams.len() >= EVENT_QUEUE_MAX {
                break;
            }
            match self.recv_frame(now(), "event") {
                Ok(UpFrame::Event(ev)) => self.queue_event(ev),
                Ok(UpFrame::Reply { id, .. }) => {
                    tracing::debug!(id, "stale IPC reply ignored");
                }
                Ok(UpFrame::Hello(_)) => {
                    return Err(IpcError::Protocol {
                        expected: "an event",
                        got: "a second Hello".into(),
                    })
                }
                Err(IpcError::Timeout { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        if let Some(ev) = self
            .events
            .pop_front()
            .or_else(|| self.datagrams.pop_front())
        {
            return Ok(Some(ev));
        }
        let deadline = now() + timeout;
        loop {
            match self.recv_frame(deadline, "event") {
                Ok(UpFrame::Event(ev)) => return Ok(Some(ev)),
                Ok(UpFrame::Reply { id, .. }) => {
                    tracing::debug!(id, "stale IPC reply ignored");
                }
                Ok(UpFrame::Hello(_)) => {
                    return Err(IpcError::Protocol {
                        expected: "an event",
                        got: "a second Hello".into(),
                    })
                }
                Err(IpcError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// The underlying connection (e.g. to send raw bytes in tests).
    #[doc(hidden)]
    pub fn raw_conn(&self) -> &SeqpacketConn {
        &self.conn
    }

    fn queue_event(&mut self, ev: UpMsg) {
        let queue = if matches!(ev, UpMsg::ControlReceived { .. }) {
            &mut self.datagrams
        } else {
            &mut self.events
        };
        if queue.len() >= EVENT_QUEUE_MAX {
            queue.pop_front();
            self.events_dropped += 1;
        }
        queue.push_back(ev);
    }

    /// Receives and decodes one frame before `deadline`. A frame already waiting is
    /// returned even if the deadline has passed (so a zero timeout still drains the socket).
    fn recv_frame(&mut self, deadline: Instant, what: &'static str) -> Result<UpFrame, IpcError> {
        let mut ready = [false];
        loop {
            match self.conn.try_recv(&mut self.buf) {
                Ok(Some(n)) => {
                    let bytes = self.buf.get(..n).unwrap_or_default();
                    return Ok(proto::decode_up(bytes)?);
                }
                Ok(None) => {}
                Err(SeqpacketError::Closed) => return Err(IpcError::Closed),
                Err(e) => return Err(e.into()),
            }
            let left = deadline.saturating_duration_since(now());
            if left.is_zero() {
                return Err(IpcError::Timeout {
                    what,
                    after: self.timeout,
                });
            }
            seqpacket::poll_readable(&[self.conn.as_fd()], left, &mut ready)?;
        }
    }
}

fn frame_name(f: &UpFrame) -> &'static str {
    match f {
        UpFrame::Hello(_) => "Hello",
        UpFrame::Reply { .. } => "a reply",
        UpFrame::Event(_) => "an event",
    }
}
