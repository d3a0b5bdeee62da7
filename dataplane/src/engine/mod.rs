//! The per-core engine: N pinned workers, each owning one TUN queue, one UDP socket of the
//! SO_REUSEPORT group and one I/O backend (io_uring, or poll as the fallback).
//!
//! Workers share nothing mutable on the packet path. Sessions are `Arc`s with atomic send
//! counters; routes and peers are per-worker copies changed by [`Command`]s broadcast from the
//! IPC thread; counters are per worker and published once per loop turn. What goes up to the control plane
//! leaves through two bounded channels: engine events ("no session", "rekey needed", roaming,
//! key confirmation) on one, control datagrams on another, so that a flood of datagrams
//! (already cut by per-source token buckets, [`crate::ratelimit`]) can never fill the queue
//! the events need.
//!
//! First packets to a destination a worker cannot send to yet wait in that worker's bounded
//! hold queue ([`hold`]) while the control plane looks the destination up and handshakes.
//!
//! Must never: let one flow's packets be handled by two workers at once (a TUN queue pairs with
//! one socket and one worker), block a worker without a time bound, or allocate per packet.

pub mod counters;
pub mod hold;
pub mod tables;
pub mod worker;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use shadowmesh_platform::io::poll::{PollConfig, PollIo};
#[cfg(target_os = "linux")]
use shadowmesh_platform::io::uring::{UringConfig, UringIo};
use shadowmesh_platform::tun::TunQueue;
use shadowmesh_platform::udp::UdpSock;

use crate::ratelimit::ControlLimits;
use crate::session::PeerId;
use counters::{PeerCounterRegistry, WorkerCounters, WorkerTotals};
pub use tables::{Command, Slot};
use worker::{Worker, WorkerSetup};

/// Something the control plane should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A control datagram (first byte 5) arrived on the data port.
    ControlReceived {
        /// Its sender.
        src: SocketAddr,
        /// The datagram.
        payload: Vec<u8>,
    },
    /// Traffic that cannot be sent yet and is held ([`hold`]): with a peer, the route points
    /// to it and it has no usable session (a handshake is wanted); without one, no route
    /// covers the overlay destination (look it up). Rate-limited per peer and per destination.
    NoSession {
        /// The peer the route points to, if any.
        peer: Option<PeerId>,
        /// The inner destination that was held.
        dst: IpAddr,
    },
    /// A session passed a rekey limit while sending.
    RekeyNeeded {
        /// The peer.
        peer: PeerId,
        /// The session's local index.
        local_index: u32,
    },
    /// An authenticated packet came from a new underlay address (roaming).
    EndpointChanged {
        /// The peer.
        peer: PeerId,
        /// Its new address.
        addr: SocketAddr,
    },
    /// Key confirmation: the first authenticated packet arrived on a pending (`Slot::Next`)
    /// session, which is now the peer's current one; the peer's other pending sessions are
    /// dropped. Emitted once per session, by whichever worker authenticated it first (never
    /// for a session installed as `Slot::Current`).
    SessionConfirmed {
        /// The peer.
        peer: PeerId,
        /// The session's local index.
        local_index: u32,
    },
}

/// Which I/O backend the workers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring (Linux), with TUN and UDP offloads.
    Uring,
    /// poll(2) with batched recvmmsg/sendmmsg, no offloads (portable).
    Poll,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uring" | "io_uring" | "io-uring" => Ok(Self::Uring),
            "poll" => Ok(Self::Poll),
            other => Err(format!(
                "unknown backend {other:?}: expected \"uring\" or \"poll\""
            )),
        }
    }
}

/// One worker's devices.
pub struct WorkerIo {
    /// Its TUN queue (non-blocking).
    pub tun: TunQueue,
    /// Its socket of the SO_REUSEPORT group (non-blocking).
    pub udp: UdpSock,
}

/// How to run the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Backend to use.
    pub backend: BackendKind,
    /// TUN queues carry virtio-net headers (offloads on; io_uring backend).
    pub vnet_hdr: bool,
    /// Pin worker i to core i (modulo the core count).
    pub pin: bool,
    /// Bound of the event queue towards the control plane (events other than datagrams).
    pub event_queue: usize,
    /// Bound of the control-datagram queue towards the control plane.
    pub control_queue: usize,
    /// Rate limits for control datagrams, per worker.
    pub control_limits: ControlLimits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Uring,
            vnet_hdr: true,
            pin: true,
            event_queue: 4096,
            control_queue: 4096,
            control_limits: ControlLimits::DEFAULT,
        }
    }
}

/// A running engine.
pub struct Engine {
    commands: Vec<Sender<Command>>,
    events: Receiver<Event>,
    control: Receiver<Event>,
    counters: Vec<Arc<WorkerCounters>>,
    peer_counters: Vec<PeerCounterRegistry>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    stop: Arc<AtomicBool>,
    backend: BackendKind,
}

/// Per-peer totals summed over the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTotals {
    /// Decrypted bytes received.
    pub rx_bytes: u64,
    /// Data packets received.
    pub rx_packets: u64,
    /// Plaintext bytes sent.
    pub tx_bytes: u64,
    /// Data packets sent.
    pub tx_packets: u64,
    /// Engine-clock time of the last authenticated packet (ns; 0 = never).
    pub last_rx_nanos: u64,
    /// Drops attributed to this peer, indexed by [`counters::DropCause`].
    pub drops: [u64; counters::DropCause::COUNT],
}

impl Engine {
    /// Starts one worker per entry of `ios`. The backend is built on each worker's own thread
    /// (io_uring rings are single-issuer); choose it with [`choose_backend`] first, so that a
    /// kernel without io_uring falls back to poll before any device is opened.
    pub fn start(
        cfg: &EngineConfig,
        ios: Vec<WorkerIo>,
        clock: fn() -> Duration,
    ) -> std::io::Result<Engine> {
        let (event_tx, event_rx) = bounded(cfg.event_queue);
        let (control_tx, control_rx) = bounded(cfg.control_queue);
        let stop = Arc::new(AtomicBool::new(false));
        let cores = shadowmesh_platform::pin::online_cores().max(1);
        let mut engine = Engine {
            commands: Vec::new(),
            events: event_rx,
            control: control_rx,
            counters: Vec::new(),
            peer_counters: Vec::new(),
            threads: Vec::new(),
            stop: Arc::clone(&stop),
            backend: cfg.backend,
        };
        for (id, wio) in ios.into_iter().enumerate() {
            let (cmd_tx, cmd_rx) = unbounded();
            let counters = Arc::new(WorkerCounters::default());
            let registry = Arc::new(Mutex::new(Vec::new()));
            let setup = WorkerSetup {
                id,
                vnet_hdr: cfg.vnet_hdr,
                commands: cmd_rx,
                events: event_tx.clone(),
                control: control_tx.clone(),
                control_limits: cfg.control_limits,
                counters: Arc::clone(&counters),
                peer_counters: Arc::clone(&registry),
                clock,
            };
            let stop = Arc::clone(&stop);
            let backend = cfg.backend;
            let pin = cfg.pin;
            let handle = std::thread::Builder::new()
                .name(format!("sm-worker-{id}"))
                .spawn(move || {
                    if pin && !shadowmesh_platform::pin::pin_current_thread(id % cores) {
                        tracing::warn!(worker = id, "could not pin worker to core {}", id % cores);
                    }
                    run_worker(backend, wio, setup, &stop)
                })?;
            engine.commands.push(cmd_tx);
            engine.counters.push(counters);
            engine.peer_counters.push(registry);
            engine.threads.push(handle);
        }
        Ok(engine)
    }

    /// Sends a table change to every worker.
    pub fn broadcast(&self, cmd: &Command) {
        for tx in &self.commands {
            let _ = tx.send(cmd.clone());
        }
    }

    /// Sends a control datagram from the data port (through worker 0's socket).
    pub fn send_control(&self, dst: SocketAddr, payload: Vec<u8>) {
        if let Some(tx) = self.commands.first() {
            let _ = tx.send(Command::SendControl { dst, payload });
        }
    }

    /// Sends a keepalive to `peer` on its current session (through worker 0).
    pub fn send_keepalive(&self, peer: PeerId) {
        if let Some(tx) = self.commands.first() {
            let _ = tx.send(Command::Keepalive { peer });
        }
    }

    /// Events for the control plane (never [`Event::ControlReceived`]).
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Control datagrams for the control plane ([`Event::ControlReceived`] only).
    pub fn control_datagrams(&self) -> &Receiver<Event> {
        &self.control
    }

    /// The backend the engine was asked to use.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.commands.len()
    }

    /// Each worker's last published counters.
    pub fn worker_totals(&self) -> Vec<WorkerTotals> {
        self.counters.iter().map(|c| c.snapshot()).collect()
    }

    /// Per-peer counters summed over the workers.
    pub fn peer_totals(&self) -> Vec<(PeerId, PeerTotals)> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out: Vec<(PeerId, PeerTotals)> = Vec::new();
        for registry in &self.peer_counters {
            let list = registry.lock().unwrap_or_else(PoisonError::into_inner);
            for (peer, c) in list.iter() {
                let idx = match out.iter().position(|(p, _)| p == peer) {
                    Some(i) => i,
                    None => {
                        out.push((*peer, PeerTotals::default()));
                        out.len() - 1
                    }
                };
                let t = &mut out[idx].1;
                t.rx_bytes += c.rx_bytes.load(Relaxed);
                t.rx_packets += c.rx_packets.load(Relaxed);
                t.tx_bytes += c.tx_bytes.load(Relaxed);
                t.tx_packets += c.tx_packets.load(Relaxed);
                t.last_rx_nanos = t.last_rx_nanos.max(c.last_rx_nanos.load(Relaxed));
                for (sum, d) in t.drops.iter_mut().zip(c.drops.iter()) {
                    *sum += d.load(Relaxed);
                }
            }
        }
        out
    }

    /// Whether any worker thread has ended (crashed or failed).
    pub fn any_finished(&self) -> bool {
        self.threads.iter().any(|t| t.is_finished())
    }

    /// Stops the workers and waits for them; returns the first worker error, if any.
    pub fn stop(self) -> std::io::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut first_err = None;
        for t in self.threads {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(std::io::Error::other("worker panicked"));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The backend to use: `wanted`, or poll (with the reason) when io_uring cannot be set up here
/// (old kernel, `kernel.io_uring_disabled`, seccomp, another OS, or `SHADOWMESH_NO_URING=1`).
pub fn choose_backend(wanted: BackendKind) -> (BackendKind, Option<String>) {
    if wanted == BackendKind::Poll {
        return (BackendKind::Poll, None);
    }
    // An override to exercise the fallback where io_uring works (tests, bug hunts).
    if std::env::var_os("SHADOWMESH_NO_URING").is_some_and(|v| v != "0") {
        return (
            BackendKind::Poll,
            Some("io_uring disabled by SHADOWMESH_NO_URING".to_string()),
        );
    }
    #[cfg(target_os = "linux")]
    match shadowmesh_platform::io::uring::probe() {
        Ok(_) => (BackendKind::Uring, None),
        Err(e) => (
            BackendKind::Poll,
            Some(format!("io_uring unavailable ({e})")),
        ),
    }
    #[cfg(not(target_os = "linux"))]
    (
        BackendKind::Poll,
        Some("io_uring exists only on Linux".to_string()),
    )
}

fn run_worker(
    backend: BackendKind,
    wio: WorkerIo,
    setup: WorkerSetup,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    let id = setup.id;
    #[cfg(target_os = "linux")]
    if backend == BackendKind::Uring {
        let cfg = UringConfig {
            vnet_hdr: setup.vnet_hdr,
            ..UringConfig::offload()
        };
        let (io, features) = UringIo::new(wio.tun.into_fd(), wio.udp, cfg)?;
        tracing::debug!(
            worker = id,
            defer_taskrun = features.defer_taskrun,
            multishot_read = features.multishot_read,
            "io_uring backend ready"
        );
        return Worker::new(io, setup).run(stop);
    }
    let _ = backend;
    let io = PollIo::new(
        wio.tun,
        wio.udp,
        PollConfig {
            vnet_hdr: setup.vnet_hdr,
            ..PollConfig::default()
        },
    );
    Worker::new(io, setup).run(stop)
}
