//! IPC server and client over a real Unix seqpacket socket in a temporary directory (no root
//! needed): Hello, version mismatch, requests against the in-memory handler, events up,
//! malformed and oversize messages, socket mode, peer replacement and the stop flag.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use shadowmesh_dataplane::ipc::proto::{
    self, Hello, Role, Slot, CIPHER_AES_256_GCM, CIPHER_CHACHA20_POLY1305, MAX_MSG,
};
use shadowmesh_dataplane::ipc::{
    DownMsg, ErrorCode, InstallSession, IpcClient, IpcCounters, IpcError, IpcServer, MemoryHandler,
    PeerStats, Stats, StopReason, UpMsg,
};
use shadowmesh_platform::seqpacket::SeqpacketConn;
use zeroize::Zeroizing;

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sm-ipc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server running on its own thread with a [`MemoryHandler`].
struct Running {
    _dir: TempDir,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    events: Sender<UpMsg>,
    counters: Arc<IpcCounters>,
    thread: Option<JoinHandle<(MemoryHandler, Result<StopReason, IpcError>)>>,
}

impl Running {
    fn start(tag: &str, handler: MemoryHandler) -> Self {
        let dir = TempDir::new(tag);
        let path = dir.0.join("dp.sock");
        let server = IpcServer::bind(&path).expect("bind IPC server");
        let counters = server.counters();
        let stop = Arc::new(AtomicBool::new(false));
        let (events, rx) = crossbeam_channel::bounded(64);
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut handler = handler;
            let res = server.run(&mut handler, rx, &stop2);
            (handler, res)
        });
        Self {
            _dir: dir,
            path,
            stop,
            events,
            counters,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> (MemoryHandler, Result<StopReason, IpcError>) {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take().expect("server thread still owned");
        thread.join().expect("server thread panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn session(peer: u32, local_index: u32) -> InstallSession {
    InstallSession {
        peer,
        slot: Slot::Current,
        local_index,
        remote_index: local_index + 1000,
        cipher: CIPHER_AES_256_GCM,
        send_key: Zeroizing::new([0x11; 32]),
        recv_key: Zeroizing::new([0x22; 32]),
        rekey_after_secs: 120,
        reject_after_secs: 180,
    }
}

/// Waits (bounded) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn socket_is_0600_and_removed_on_stop() {
    let srv = Running::start("mode", MemoryHandler::default());
    let mode = std::fs::metadata(&srv.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "IPC socket mode {mode:o}");
    let path = srv.path.clone();
    let (_, res) = srv.stop();
    assert_eq!(res.unwrap(), StopReason::StopFlag);
    assert!(!path.exists(), "socket file removed when the server stops");
}

#[test]
fn hello_install_remove_routes_endpoint_control_stats() {
    let handler = MemoryHandler {
        stats: Stats {
            workers: vec![Default::default(); 2],
            peers: vec![
                PeerStats {
                    peer: 1,
                    rx_packets: 5,
                    last_rx_ms: Some(42),
                    ..Default::default()
                },
                PeerStats {
                    peer: 9,
                    ..Default::default()
                },
            ],
            next_peer: None,
        },
        ..Default::default()
    };
    let srv = Running::start("reqs", handler);
    let mut c = IpcClient::connect(&srv.path).unwrap();

    assert_eq!(
        c.request(DownMsg::InstallSession(session(1, 7))).unwrap(),
        UpMsg::Ack
    );
    let mut s2 = session(2, 8);
    s2.slot = Slot::Next;
    s2.cipher = CIPHER_CHACHA20_POLY1305;
    c.request(DownMsg::InstallSession(s2)).unwrap();
    let routes = vec![
        ("100.64.0.2".parse::<IpAddr>().unwrap(), 32),
        ("fd00::2".parse().unwrap(), 128),
    ];
    c.request(DownMsg::SetRoutes {
        peer: 1,
        prefixes: routes.clone(),
    })
    .unwrap();
    let ep: SocketAddr = "198.51.100.2:51820".parse().unwrap();
    c.request(DownMsg::SetEndpoint { peer: 1, addr: ep })
        .unwrap();
    let dst: SocketAddr = "[fd00::3]:51820".parse().unwrap();
    c.request(DownMsg::SendControl {
        dst,
        payload: vec![1, 2, 3],
    })
    .unwrap();
    assert_eq!(
        c.request(DownMsg::RemoveSession { local_index: 8 })
            .unwrap(),
        UpMsg::Ack
    );
    // Removing it again is refused by the handler: an Error reply, connection kept.
    match c.request(DownMsg::RemoveSession { local_index: 8 }) {
        Err(IpcError::Remote { code, message, .. }) => {
            assert_eq!(code, ErrorCode::REJECTED);
            assert!(message.contains("local index 8"), "{message}");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    match c.request(DownMsg::GetStats { first_peer: 5 }).unwrap() {
        UpMsg::Stats(s) => {
            assert_eq!(s.workers.len(), 2);
            assert_eq!(s.peers.len(), 1, "paging by first_peer");
            assert_eq!(s.peers[0].peer, 9);
        }
        other => panic!("expected Stats, got {other:?}"),
    }

    let (h, res) = srv.stop();
    res.unwrap();
    assert_eq!(h.sessions.len(), 1);
    let s = &h.sessions[&7];
    assert_eq!((s.peer, s.remote_index, s.slot), (1, 1007, Slot::Current));
    assert_eq!(*s.send_key, [0x11; 32]);
    assert_eq!(*s.recv_key, [0x22; 32]);
    assert_eq!(h.routes[&1], routes);
    assert_eq!(h.endpoints[&1], ep);
    assert_eq!(h.sent_control, vec![(dst, vec![1, 2, 3])]);
}

#[test]
fn remove_peer_drops_its_state() {
    let srv = Running::start("rmpeer", MemoryHandler::default());
    let mut c = IpcClient::connect(&srv.path).unwrap();
    c.request(DownMsg::InstallSession(session(3, 30))).unwrap();
    c.request(DownMsg::InstallSession(session(4, 40))).unwrap();
    c.request(DownMsg::RemovePeer { peer: 3 }).unwrap();
    assert!(matches!(
        c.request(DownMsg::RemovePeer { peer: 3 }),
        Err(IpcError::Remote { .. })
    ));
    let (h, _) = srv.stop();
    assert_eq!(h.sessions.keys().copied().collect::<Vec<_>>(), vec![40]);
}

#[test]
fn version_mismatch_is_reported_with_both_versions() {
    let srv = Running::start("ver", MemoryHandler::default());
    let err = IpcClient::connect_with_hello(
        &srv.path,
        Hello {
            version: proto::PROTOCOL_VERSION + 1,
            role: Role::Control,
        },
    )
    .unwrap_err();
    match &err {
        IpcError::VersionMismatch { ours, theirs } => {
            // The client reports its own (announced) version and the server's.
            assert_eq!(*ours, proto::PROTOCOL_VERSION + 1);
            assert_eq!(*theirs, proto::PROTOCOL_VERSION);
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("version {}", proto::PROTOCOL_VERSION))
            && text.contains(&format!("version {}", proto::PROTOCOL_VERSION + 1)),
        "{text}"
    );
    // The server is still serving.
    IpcClient::connect(&srv.path).unwrap();
}

#[test]
fn up_events_are_delivered_and_queued_during_requests() {
    let srv = Running::start("events", MemoryHandler::default());
    let mut c = IpcClient::connect(&srv.path).unwrap();
    // Before the client said Hello nothing is lost; after it, events flow.
    let ev = UpMsg::RekeyNeeded {
        peer: 1,
        local_index: 7,
    };
    srv.events.send(ev.clone()).unwrap();
    assert_eq!(c.recv_event(Duration::from_secs(2)).unwrap(), Some(ev));

    // Events sent before a request's reply are queued, not lost.
    let e1 = UpMsg::NoSession {
        peer: None,
        dst: "100.64.0.9".parse().unwrap(),
    };
    let e2 = UpMsg::ControlReceived {
        src: "203.0.113.5:51820".parse().unwrap(),
        payload: vec![9; 100],
    };
    srv.events.send(e1.clone()).unwrap();
    srv.events.send(e2.clone()).unwrap();
    // Give the server a moment to forward them before the request goes out.
    wait_for("events forwarded", || {
        srv.counters.events_sent.load(Ordering::Relaxed) >= 3
    });
    c.request(DownMsg::SetEndpoint {
        peer: 1,
        addr: "198.51.100.2:1".parse().unwrap(),
    })
    .unwrap();
    assert_eq!(c.recv_event(Duration::ZERO).unwrap(), Some(e1));
    assert_eq!(c.recv_event(Duration::ZERO).unwrap(), Some(e2));
    assert_eq!(c.recv_event(Duration::from_millis(50)).unwrap(), None);
}

#[test]
fn events_without_a_client_are_dropped_and_counted() {
    let srv = Running::start("noclient", MemoryHandler::default());
    for i in 0..5 {
        srv.events
            .send(UpMsg::RekeyNeeded {
                peer: i,
                local_index: i,
            })
            .unwrap();
    }
    wait_for("drops counted", || {
        srv.counters
            .events_dropped_no_client
            .load(Ordering::Relaxed)
            == 5
    });
    // A client connecting later does not get them.
    let mut c = IpcClient::connect(&srv.path).unwrap();
    assert_eq!(c.recv_event(Duration::from_millis(100)).unwrap(), None);
}

#[test]
fn malformed_message_gets_error_and_connection_is_kept() {
    let srv = Running::start("malformed", MemoryHandler::default());
    let mut c = IpcClient::connect(&srv.path).unwrap();
    // A request with id 77 and an unknown tag.
    c.raw_conn().send(&[0x02, 77, 0, 0, 0, 0xee]).unwrap();
    // And one with a bad prefix length.
    let mut bad = vec![0x02, 78, 0, 0, 0, 4, 1, 0, 0, 0, 1, 0, 4, 100, 64, 0, 1, 33];
    c.raw_conn().send(&bad).unwrap();
    bad.clear();
    let mut buf = vec![0u8; MAX_MSG];
    for expect_id in [77, 78] {
        let n = c.raw_conn().recv(&mut buf).unwrap();
        match proto::decode_up(&buf[..n]).unwrap() {
            proto::UpFrame::Reply {
                id,
                msg: UpMsg::Error { code, message },
            } => {
                assert_eq!(id, expect_id);
                assert_eq!(code, ErrorCode::MALFORMED);
                assert!(!message.is_empty());
            }
            other => panic!("expected an Error reply, got {other:?}"),
        }
    }
    assert_eq!(srv.counters.malformed.load(Ordering::Relaxed), 2);
    // Same connection still works.
    assert_eq!(
        c.request(DownMsg::RemovePeer { peer: 1 })
            .map_err(|e| matches!(e, IpcError::Remote { .. })),
        Err(true)
    );
    c.request(DownMsg::InstallSession(session(1, 1))).unwrap();
}

#[test]
fn message_over_max_is_refused_and_connection_kept() {
    let srv = Running::start("big", MemoryHandler::default());
    let mut c = IpcClient::connect(&srv.path).unwrap();
    let mut big = vec![0u8; MAX_MSG + 100];
    big[..5].copy_from_slice(&[0x02, 5, 0, 0, 0]);
    c.raw_conn().send(&big).unwrap();
    let mut buf = vec![0u8; MAX_MSG];
    let n = c.raw_conn().recv(&mut buf).unwrap();
    match proto::decode_up(&buf[..n]).unwrap() {
        proto::UpFrame::Reply {
            id,
            msg: UpMsg::Error { code, message },
        } => {
            assert_eq!(id, 5, "the id is read from the truncated message");
            assert_eq!(code, ErrorCode::TOO_LARGE);
            assert!(message.contains("too large"), "{message}");
        }
        other => panic!("expected an Error reply, got {other:?}"),
    }
    assert_eq!(srv.counters.too_large.load(Ordering::Relaxed), 1);
    c.request(DownMsg::InstallSession(session(1, 1))).unwrap();
    // The client's encoder refuses to build an oversize message in the first place.
    let err = c
        .request(DownMsg::SetRoutes {
            peer: 1,
            prefixes: vec![("fd00::1".parse().unwrap(), 128); proto::MAX_ROUTES + 1],
        })
        .unwrap_err();
    assert!(matches!(err, IpcError::Encode(_)), "{err:?}");
}

#[test]
fn request_before_hello_is_refused() {
    let srv = Running::start("nohello", MemoryHandler::default());
    let conn = SeqpacketConn::connect(&srv.path).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut out = Vec::new();
    proto::encode_down(
        &proto::DownFrame::Request {
            id: 3,
            msg: DownMsg::Shutdown,
        },
        &mut out,
    )
    .unwrap();
    conn.send(&out).unwrap();
    let mut buf = vec![0u8; 1024];
    let n = conn.recv(&mut buf).unwrap();
    assert!(matches!(
        proto::decode_up(&buf[..n]).unwrap(),
        proto::UpFrame::Reply {
            id: 3,
            msg: UpMsg::Error {
                code: ErrorCode::PROTOCOL,
                ..
            }
        }
    ));
    // Then the server hangs up; it did not shut down.
    assert!(conn.recv(&mut buf).is_err());
    let (h, res) = srv.stop();
    assert!(!h.shutdown);
    assert_eq!(res.unwrap(), StopReason::StopFlag);
}

#[test]
fn new_connection_replaces_old_one() {
    let srv = Running::start("replace", MemoryHandler::default());
    let mut a = IpcClient::connect(&srv.path).unwrap();
    a.request(DownMsg::InstallSession(session(1, 1))).unwrap();
    let mut b = IpcClient::connect(&srv.path).unwrap();
    b.request(DownMsg::InstallSession(session(2, 2))).unwrap();
    a.set_timeout(Duration::from_millis(500)).unwrap();
    let err = a.request(DownMsg::Shutdown).unwrap_err();
    assert!(
        matches!(err, IpcError::Closed | IpcError::Socket(_)),
        "old connection closed: {err:?}"
    );
    // Events go to the new client.
    srv.events
        .send(UpMsg::EndpointChanged {
            peer: 2,
            addr: "203.0.113.9:4000".parse().unwrap(),
        })
        .unwrap();
    assert!(b.recv_event(Duration::from_secs(2)).unwrap().is_some());
    assert_eq!(srv.counters.connections.load(Ordering::Relaxed), 2);
}

#[test]
fn observer_reads_stats_without_displacing_the_control_connection() {
    let handler = MemoryHandler {
        stats: Stats {
            peers: vec![PeerStats {
                peer: 7,
                rx_packets: 42,
                ..PeerStats::default()
            }],
            ..Stats::default()
        },
        ..MemoryHandler::default()
    };
    let srv = Running::start("observer", handler);
    let mut control = IpcClient::connect(&srv.path).unwrap();
    control
        .request(DownMsg::InstallSession(session(1, 1)))
        .unwrap();

    // A connection that never says Hello does not take the control slot either (and the
    // observer behind it waits at most HELLO_TIMEOUT).
    let silent = SeqpacketConn::connect(&srv.path).unwrap();

    let mut obs = IpcClient::connect_observer(&srv.path).unwrap();
    match obs.request(DownMsg::GetStats { first_peer: 0 }).unwrap() {
        UpMsg::Stats(st) => assert_eq!(st.peers[0].rx_packets, 42),
        other => panic!("expected Stats, got {other:?}"),
    }
    // Read-only: anything else is refused, and nothing reaches the handler.
    for msg in [
        DownMsg::InstallSession(session(2, 2)),
        DownMsg::RemovePeer { peer: 1 },
        DownMsg::Shutdown,
    ] {
        match obs.request(msg) {
            Err(IpcError::Remote { code, .. }) => assert_eq!(code, ErrorCode::REJECTED),
            other => panic!("an observer's write was not refused: {other:?}"),
        }
    }

    // The control connection still works and still gets the events; the observer gets none.
    assert_eq!(
        control
            .request(DownMsg::InstallSession(session(3, 3)))
            .unwrap(),
        UpMsg::Ack
    );
    srv.events
        .send(UpMsg::EndpointChanged {
            peer: 1,
            addr: "203.0.113.9:4000".parse().unwrap(),
        })
        .unwrap();
    assert!(control
        .recv_event(Duration::from_secs(2))
        .unwrap()
        .is_some());
    assert!(obs
        .recv_event(Duration::from_millis(200))
        .unwrap()
        .is_none());
    // The silent connection was closed once its time to greet ran out.
    silent
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = vec![0u8; 64];
    assert!(
        silent.recv(&mut buf).is_err(),
        "a silent connection stayed open"
    );
    let (h, res) = srv.stop();
    assert_eq!(res.unwrap(), StopReason::StopFlag);
    assert!(!h.shutdown, "an observer shut the dataplane down");
    let installed: Vec<u32> = h.sessions.keys().copied().collect();
    assert_eq!(
        installed,
        vec![1, 3],
        "only the control connection installs"
    );
}

#[test]
fn shutdown_request_ends_the_server() {
    let srv = Running::start("shutdown", MemoryHandler::default());
    let mut c = IpcClient::connect(&srv.path).unwrap();
    assert_eq!(c.request(DownMsg::Shutdown).unwrap(), UpMsg::Ack);
    let t = srv.thread.as_ref().unwrap();
    wait_for("server thread exit", || t.is_finished());
    let (h, res) = srv.stop();
    assert!(h.shutdown);
    assert_eq!(res.unwrap(), StopReason::Shutdown);
}

#[test]
fn stop_flag_is_honoured_within_100ms() {
    let srv = Running::start("stop", MemoryHandler::default());
    // With a client connected and idle, too.
    let _c = IpcClient::connect(&srv.path).unwrap();
    let t = srv.thread.as_ref().unwrap();
    srv.stop.store(true, Ordering::Release);
    // 10 polls of 10 ms: the thread must be gone by then (bounded wait, no clock).
    let mut finished = false;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(10));
        if t.is_finished() {
            finished = true;
            break;
        }
    }
    assert!(finished, "server still running 100 ms after stop");
}

#[test]
fn second_server_on_live_socket_is_refused() {
    let srv = Running::start("inuse", MemoryHandler::default());
    let err = IpcServer::bind(&srv.path).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    // The first one still works.
    IpcClient::connect(&srv.path).unwrap();
}

#[test]
fn events_overtake_a_flood_of_control_datagrams() {
    let dir = TempDir::new("split");
    let path = dir.0.join("dp.sock");
    let server = IpcServer::bind(&path).expect("bind IPC server");
    let counters = server.counters();
    let stop = Arc::new(AtomicBool::new(false));
    let (ev_tx, ev_rx) = crossbeam_channel::bounded(64);
    let (dg_tx, dg_rx) = crossbeam_channel::bounded(4096);
    let stop2 = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        let mut handler = MemoryHandler::default();
        server.run_split(&mut handler, ev_rx, dg_rx, &stop2)
    });
    let mut c = IpcClient::connect(&path).unwrap();
    // A reply means the server holds us as its control connection.
    assert!(matches!(
        c.request(DownMsg::GetStats { first_peer: 0 }),
        Ok(UpMsg::Stats(_))
    ));
    const FLOOD: usize = 3000;
    let src: SocketAddr = "203.0.113.66:4444".parse().unwrap();
    for _ in 0..FLOOD {
        dg_tx
            .send(UpMsg::ControlReceived {
                src,
                payload: vec![5; 1200],
            })
            .unwrap();
    }
    // The socket to us is full of datagrams, thousands more wait; now an event comes.
    wait_for("the client's socket to fill", || {
        counters.events_deferred.load(Ordering::Relaxed) > 0
    });
    let want = UpMsg::RekeyNeeded {
        peer: 1,
        local_index: 2,
    };
    ev_tx.send(want.clone()).unwrap();
    let mut position = None;
    for n in 0..=FLOOD {
        match c.recv_event(Duration::from_secs(2)).unwrap() {
            Some(ev) if ev == want => {
                position = Some(n);
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    let position = position.expect("the event never arrived");
    println!("event handed out after {position} of {FLOOD} queued control datagrams");
    assert!(
        position < 1024,
        "the event waited behind {position} datagrams"
    );
    stop.store(true, Ordering::Release);
    thread.join().unwrap().unwrap();
}
