//! The bridge between the blocking dataplane IPC client and the tokio control plane: one
//! dedicated std thread owns the [`IpcClient`], (re)connects with backoff, executes requests
//! from a channel and forwards dataplane events up a tokio channel.
//!
//! Owns the IPC connection's life only. It never interprets events (the driver does) and never
//! asks the dataplane to shut down: sessions must outlive the control plane.
//!
//! Engine events (`NoSession`, `RekeyNeeded`, `EndpointChanged`, `SessionConfirmed`) and the
//! connection's state are delivered with back-pressure and never dropped here; control
//! datagrams (`ControlReceived`) are offered without waiting and dropped (counted, logged)
//! when their channel is full, so a datagram flood can neither block the bridge nor push an
//! event out. With [`Bridge::spawn_split`] datagrams also get a channel of their own, so they
//! cannot fill the one events need either.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use shadowmesh_ipc::{DownMsg, IpcClient, IpcError, UpMsg};
use shadowmesh_platform::seqpacket::{poll_readable, Wakeup};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Commands queued to the bridge thread before it refuses more (the driver re-sends state on
/// reconnect, so a full queue loses nothing that matters for long).
pub const COMMAND_QUEUE: usize = 4096;
/// Longest sleep of the bridge thread when neither an event nor a command arrives (it wakes
/// at once for either).
pub const IDLE_POLL: Duration = Duration::from_secs(1);
/// First reconnection delay; doubled up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnection delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the bridge reports up.
#[derive(Debug)]
pub enum BridgeEvent {
    /// Connected (or reconnected) and greeted: send routes, endpoints and sessions.
    Connected,
    /// The connection was lost (the reason, for the log).
    Disconnected(String),
    /// An event from the dataplane.
    Event(UpMsg),
}

/// The reply to a [`Bridge::request`]: the dataplane's answer, or why there is none.
pub type Reply = Result<UpMsg, String>;

enum Command {
    Send(DownMsg),
    Request(DownMsg, oneshot::Sender<Reply>),
}

/// Handle to the bridge thread; cheap to clone. The thread stops when every handle is gone.
#[derive(Clone, Debug)]
pub struct Bridge {
    tx: Sender<Command>,
    // Wakes the thread from its poll on the IPC socket when a command is queued.
    wake: Arc<Wakeup>,
}

impl Bridge {
    /// Starts the bridge thread for the dataplane socket at `socket`.
    ///
    /// # Errors
    /// The OS refused to start a thread.
    /// Events and control datagrams share `events`; datagrams are dropped when it is full.
    ///
    /// # Errors
    /// The OS refused to start a thread.
    pub fn spawn(
        socket: PathBuf,
        events: mpsc::Sender<BridgeEvent>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let datagrams = events.clone();
        Self::spawn_split(socket, events, datagrams)
    }

    /// Like [`Bridge::spawn`], with control datagrams (`BridgeEvent::Event(ControlReceived)`)
    /// on `datagrams` and everything else on `events`. Read `events` first (e.g. a `biased`
    /// `select!` with it as the first branch): then nothing a flood of datagrams does can
    /// delay an event by more than one datagram's handling.
    ///
    /// # Errors
    /// The OS refused to start a thread.
    pub fn spawn_split(
        socket: PathBuf,
        events: mpsc::Sender<BridgeEvent>,
        datagrams: mpsc::Sender<BridgeEvent>,
    ) -> std::io::Result<(Self, JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
        let wake = Arc::new(Wakeup::new().map_err(std::io::Error::other)?);
        let w = Arc::clone(&wake);
        let up = Up { events, datagrams };
        let handle = std::thread::Builder::new()
            .name("dataplane-ipc".into())
            .spawn(move || run(&socket, &rx, &up, &w))?;
        Ok((Self { tx, wake }, handle))
    }

    /// Queues a request whose reply only matters if it fails (logged by the thread).
    /// False if the queue is full or the thread is gone.
    pub fn send(&self, msg: DownMsg) -> bool {
        match self.tx.try_send(Command::Send(msg)) {
            Ok(()) => {
                self.wake.wake();
                true
            }
            Err(TrySendError::Full(_)) => {
                warn!("dataplane command queue full; request dropped");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Sends a request and waits for its reply.
    pub async fn request(&self, msg: DownMsg) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send(Command::Request(msg, tx))
            .map_err(|_| "the dataplane command queue is full or closed".to_string())?;
        self.wake.wake();
        rx.await
            .map_err(|_| "the dataplane bridge stopped".to_string())?
    }
}

/// Where the bridge delivers what the dataplane says.
struct Up {
    events: mpsc::Sender<BridgeEvent>,
    datagrams: mpsc::Sender<BridgeEvent>,
}

fn run(socket: &std::path::Path, rx: &Receiver<Command>, up: &Up, wake: &Wakeup) {
    let events = &up.events;
    let mut backoff = MIN_BACKOFF;
    let mut logged_down = false;
    loop {
        match IpcClient::connect_with_timeout(socket, Duration::from_secs(2)) {
            Ok(client) => {
                info!(socket = %socket.display(), "connected to the dataplane");
                backoff = MIN_BACKOFF;
                logged_down = false;
                if events.blocking_send(BridgeEvent::Connected).is_err() {
                    return;
                }
                match serve(client, rx, up, wake) {
                    Ok(()) => return,
                    Err(e) => {
                        warn!("dataplane connection lost: {e}; reconnecting");
                        if events
                            .blocking_send(BridgeEvent::Disconnected(e.to_string()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                if !logged_down {
                    info!(
                        socket = %socket.display(),
                        "dataplane not reachable ({e}); retrying with backoff"
                    );
                    logged_down = true;
                }
            }
        }
        // Wait out the backoff while refusing requests: nothing queued now can reach a
        // dataplane that is not there, and the driver re-sends its state on reconnect.
        let until = backoff;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        match rx.recv_timeout(until) {
            Ok(cmd) => refuse(cmd),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(cmd) = rx.try_recv() {
            refuse(cmd);
        }
    }
}

fn refuse(cmd: Command) {
    if let Command::Request(_, reply) = cmd {
        let _ = reply.send(Err("the dataplane is not connected".into()));
    }
}

/// True for errors that mean the connection is unusable (as opposed to one refused request).
fn fatal(e: &IpcError) -> bool {
    !matches!(e, IpcError::Remote { .. })
}

/// Serves one connection until it fails (`Err`) or every bridge handle is dropped (`Ok`).
fn serve(
    mut client: IpcClient,
    rx: &Receiver<Command>,
    up: &Up,
    wake: &Wakeup,
) -> Result<(), IpcError> {
    let mut ready = [false; 2];
    let mut reported_drops = 0;
    let mut datagrams_dropped: u64 = 0;
    let mut reported_datagram_drops = 0;
    loop {
        // Drain the wake pipe before the queue: a command queued after the queue looks empty
        // leaves the pipe readable, so the poll below returns at once for it.
        wake.drain();
        loop {
            match rx.try_recv() {
                Ok(Command::Send(msg)) => {
                    let what = kind(&msg);
                    match client.request(msg) {
                        Ok(_) => {}
                        Err(e) if fatal(&e) => return Err(e),
                        Err(e) => warn!("dataplane refused {what}: {e}"),
                    }
                }
                Ok(Command::Request(msg, reply)) => match client.request(msg) {
                    Ok(up) => {
                        let _ = reply.send(Ok(up));
                    }
                    Err(e) if fatal(&e) => {
                        let _ = reply.send(Err(e.to_string()));
                        return Err(e);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                },
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
        // Everything already received (including events queued while waiting for replies),
        // without waiting: a zero timeout only reads what is there.
        // The client hands out engine events before datagrams.
        while let Some(ev) = client.recv_event(Duration::ZERO)? {
            if matches!(ev, UpMsg::ControlReceived { .. }) {
                match up.datagrams.try_send(BridgeEvent::Event(ev)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => datagrams_dropped += 1,
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                }
            } else if up.events.blocking_send(BridgeEvent::Event(ev)).is_err() {
                return Ok(());
            }
        }
        // Logged at each doubling, so a flood cannot flood the log too.
        if datagrams_dropped > 0 && datagrams_dropped >= reported_datagram_drops * 2 {
            warn!(
                dropped = datagrams_dropped,
                "control datagrams dropped: the control plane is behind"
            );
            reported_datagram_drops = datagrams_dropped;
        }
        let dropped = client.events_dropped();
        if dropped > reported_drops {
            warn!(dropped, "IPC events dropped by the client queue");
            reported_drops = dropped;
        }
        // Sleeps until the dataplane sends something (or hangs up) or a command is queued.
        poll_readable(
            &[client.raw_conn().as_fd(), wake.as_fd()],
            IDLE_POLL,
            &mut ready,
        )
        .map_err(IpcError::from)?;
    }
}

fn kind(m: &DownMsg) -> &'static str {
    match m {
        DownMsg::InstallSession(_) => "InstallSession",
        DownMsg::RemoveSession { .. } => "RemoveSession",
        DownMsg::RemovePeer { .. } => "RemovePeer",
        DownMsg::SetRoutes { .. } => "SetRoutes",
        DownMsg::SetSources { .. } => "SetSources",
        DownMsg::SetEndpoint { .. } => "SetEndpoint",
        DownMsg::SendControl { .. } => "SendControl",
        DownMsg::GetStats { .. } => "GetStats",
        DownMsg::Shutdown => "Shutdown",
        DownMsg::SetRelay { .. } => "SetRelay",
        DownMsg::RemoveRelay { .. } => "RemoveRelay",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_ipc::{IpcServer, MemoryHandler};
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Server {
        stop: Arc<AtomicBool>,
        up: crossbeam_channel::Sender<UpMsg>,
        thread: JoinHandle<MemoryHandler>,
    }

    fn serve(path: &std::path::Path) -> Server {
        let server = IpcServer::bind(path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (up, up_rx) = crossbeam_channel::bounded(16);
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut h = MemoryHandler::default();
            server.run(&mut h, up_rx, &s).unwrap();
            h
        });
        Server { stop, up, thread }
    }

    async fn next(rx: &mut mpsc::Receiver<BridgeEvent>) -> BridgeEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no bridge event within 10 s")
            .expect("bridge gone")
    }

    #[test]
    fn forwards_both_ways_and_reconnects_after_a_dataplane_restart() {
        let dir = std::env::temp_dir().join(format!("sm-bridge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dp.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (ev_tx, mut ev_rx) = mpsc::channel(16);
        let (bridge, _thread) = Bridge::spawn(path.clone(), ev_tx).unwrap();
        // No dataplane yet: a request is refused, not stuck.
        let r = rt.block_on(bridge.request(DownMsg::GetStats { first_peer: 0 }));
        assert!(r.is_err());

        let server = serve(&path);
        assert!(matches!(
            rt.block_on(next(&mut ev_rx)),
            BridgeEvent::Connected
        ));
        let routes = vec![("100.64.0.2".parse().unwrap(), 32)];
        assert!(bridge.send(DownMsg::SetRoutes {
            peer: 1,
            prefixes: routes.clone(),
        }));
        let r = rt.block_on(bridge.request(DownMsg::GetStats { first_peer: 0 }));
        assert!(matches!(r, Ok(UpMsg::Stats(_))), "{r:?}");
        let ev = UpMsg::NoSession {
            peer: Some(1),
            dst: "100.64.0.2".parse().unwrap(),
        };
        server.up.send(ev.clone()).unwrap();
        match rt.block_on(next(&mut ev_rx)) {
            BridgeEvent::Event(e) => assert_eq!(e, ev),
            other => panic!("expected the event, got {other:?}"),
        }
        server.stop.store(true, Ordering::Release);
        let handler = server.thread.join().unwrap();
        // The fire-and-forget request was executed before the stats request's reply.
        assert_eq!(handler.routes.get(&1), Some(&routes));
        assert!(matches!(
            rt.block_on(next(&mut ev_rx)),
            BridgeEvent::Disconnected(_)
        ));

        // The dataplane comes back: the bridge reconnects by itself.
        let server = serve(&path);
        assert!(matches!(
            rt.block_on(next(&mut ev_rx)),
            BridgeEvent::Connected
        ));
        server.stop.store(true, Ordering::Release);
        let _ = server.thread.join();
        drop(bridge);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn events_are_not_held_back_by_datagrams_nobody_reads() {
        let dir = std::env::temp_dir().join(format!("sm-bridge-split-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dp.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let server = serve(&path);
        let (ev_tx, mut ev_rx) = mpsc::channel(16);
        // The daemon is busy: it never reads datagrams in this test.
        let (dg_tx, dg_rx) = mpsc::channel(4);
        let (bridge, _thread) = Bridge::spawn_split(path.clone(), ev_tx, dg_tx).unwrap();
        assert!(matches!(
            rt.block_on(next(&mut ev_rx)),
            BridgeEvent::Connected
        ));
        // Make sure the server holds the bridge as its control connection.
        let r = rt.block_on(bridge.request(DownMsg::GetStats { first_peer: 0 }));
        assert!(matches!(r, Ok(UpMsg::Stats(_))), "{r:?}");
        let src = "203.0.113.66:4444".parse().unwrap();
        let server_up = server.up.clone();
        let feeder = std::thread::spawn(move || {
            for _ in 0..200 {
                server_up
                    .send(UpMsg::ControlReceived {
                        src,
                        payload: vec![5; 100],
                    })
                    .unwrap();
            }
            server_up
                .send(UpMsg::RekeyNeeded {
                    peer: 1,
                    local_index: 2,
                })
                .unwrap();
        });
        match rt.block_on(next(&mut ev_rx)) {
            BridgeEvent::Event(UpMsg::RekeyNeeded {
                peer: 1,
                local_index: 2,
            }) => {}
            other => panic!("expected the event, got {other:?}"),
        }
        feeder.join().unwrap();
        assert_eq!(dg_rx.len(), 4, "datagrams beyond their channel are dropped");
        server.stop.store(true, Ordering::Release);
        let _ = server.thread.join();
        drop(bridge);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
