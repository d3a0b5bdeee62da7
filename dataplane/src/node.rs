//! The dataplane process, wired together: the TUN device, the SO_REUSEPORT socket group, the
//! engine's workers, and the IPC thread that applies the control plane's requests to the
//! engine and forwards its events up.
//!
//! Must never: hold a long-term secret (only session keys arrive, and they are zeroized after
//! being expanded), log key material, or exit without removing the TUN it created.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, SendTimeoutError, Sender};
use shadowmesh_platform::tun::{Tun, TunConfig};
use shadowmesh_platform::udp::{bind_group, steer_by_lane, UdpSocketConfig};

use crate::crypto::Cipher;
use crate::engine::counters::{DropCause, WorkerTotals};
use crate::engine::{
    choose_backend, BackendKind, Command, Engine, EngineConfig, Event, Slot, WorkerIo,
};
use crate::ipc::proto::{self, DownMsg, PeerStats, Stats, UpMsg, WorkerStats};
use crate::ipc::{IpcHandler, IpcServer, IpcWaker};
use crate::relay::RelayRoute;
use crate::session::{Limits, Session, SessionKeys};

/// Everything the dataplane process is started with.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// TUN interface name.
    pub tun_name: String,
    /// TUN MTU.
    pub mtu: u32,
    /// Overlay addresses of this node, with prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Underlay bind address (port 0 = any free port).
    pub bind: SocketAddr,
    /// Workers (0 = one per online core).
    pub workers: usize,
    /// Wanted backend (falls back to poll if io_uring is unavailable).
    pub backend: BackendKind,
    /// TUN/UDP offloads (io_uring backend only).
    pub offload: bool,
    /// Pin workers to cores.
    pub pin: bool,
    /// IPC socket path.
    pub socket: PathBuf,
    /// Socket buffer size to ask for.
    pub socket_buffer: usize,
}

/// Errors that stop the dataplane from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Opening or configuring the TUN or the sockets failed.
    #[error(transparent)]
    Platform(#[from] shadowmesh_platform::tun::PlatformError),
    /// The IPC socket failed.
    #[error(transparent)]
    Ipc(#[from] crate::ipc::IpcError),
    /// A worker or thread failed.
    #[error("dataplane I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the dataplane until `stop` is set, a `Shutdown` request arrives, or a worker fails.
/// `ready` is called once everything is up, with the bound underlay address.
pub fn run(
    cfg: &NodeConfig,
    clock: fn() -> Duration,
    stop: &AtomicBool,
    ready: impl FnOnce(SocketAddr, BackendKind),
) -> Result<(), NodeError> {
    let workers = if cfg.workers == 0 {
        shadowmesh_platform::pin::online_cores().max(1)
    } else {
        cfg.workers
    };
    let (backend, why) = choose_backend(cfg.backend);
    if let Some(why) = why {
        tracing::warn!("{why}: using the poll backend");
    }
    let offload = cfg.offload && backend == BackendKind::Uring;
    let mut ipv4 = Vec::new();
    let mut ipv6 = Vec::new();
    for &(addr, len) in &cfg.addresses {
        match addr {
            IpAddr::V4(a) => ipv4.push((a, len)),
            IpAddr::V6(a) => ipv6.push((a, len)),
        }
    }
    let tun = Tun::create(&TunConfig {
        name: cfg.tun_name.clone(),
        queues: workers,
        mtu: cfg.mtu,
        ipv4,
        ipv6,
        offload,
    })?;
    let socks = bind_group(
        &UdpSocketConfig {
            bind: cfg.bind,
            reuseport: true,
            gso: offload,
            gro: offload,
            recv_buf: cfg.socket_buffer,
            send_buf: cfg.socket_buffer,
        },
        workers,
    )?;
    let local = socks.first().map(|s| s.local_addr()).unwrap_or(cfg.bind);
    if let Some(w) = socks.first().and_then(|s| s.buffer_warning()) {
        tracing::warn!("{w}");
    }
    // Receive each flow on the worker that sent it (lane byte), not all of a peer on one.
    if let Err(e) = steer_by_lane(&socks) {
        tracing::warn!(
            "reuseport lane steering unavailable ({e}): a peer's traffic is received by one worker"
        );
    }
    let tun_offload = tun.offloads().vnet_hdr;
    let ios = tun
        .into_queues()
        .into_iter()
        .zip(socks)
        .map(|(tun, udp)| WorkerIo { tun, udp })
        .collect::<Vec<_>>();
    let engine = Engine::start(
        &EngineConfig {
            backend,
            vnet_hdr: tun_offload,
            pin: cfg.pin,
            ..EngineConfig::default()
        },
        ios,
        clock,
    )?;
    tracing::info!(
        tun = %cfg.tun_name,
        %local,
        workers,
        backend = ?backend,
        offload = tun_offload,
        "dataplane up"
    );

    let server = IpcServer::bind(&cfg.socket)?;
    let waker = server.waker();
    // Events and control datagrams travel on separate queues all the way to the socket, each
    // with its own forwarder, so a datagram flood that fills its queue (and blocks its
    // forwarder) holds no event back.
    let (up_tx, up_rx) = bounded::<UpMsg>(4096);
    let (dgram_tx, dgram_rx) = bounded::<UpMsg>(4096);
    let ipc_stop = AtomicBool::new(false);
    ready(local, backend);
    let result = std::thread::scope(|scope| {
        // Events wake the IPC thread at once (a confirmation or rekey should not wait out its
        // poll interval); datagrams, which may come in floods, are picked up on its next look.
        let forwarder = scope.spawn(|| {
            forward_events(engine.events(), &up_tx, &ipc_stop, Some(&waker));
        });
        let dgram_forwarder = scope.spawn(|| {
            forward_events(engine.control_datagrams(), &dgram_tx, &ipc_stop, None);
        });
        let ipc = scope.spawn(|| {
            let mut handler = EngineHandler {
                engine: &engine,
                clock,
                relay_keys: HashSet::new(),
            };
            server.run_split(&mut handler, up_rx, dgram_rx, &ipc_stop)
        });
        // Supervise: stop on request, on Shutdown, or when a worker ends.
        let mut outcome: Result<(), NodeError> = Ok(());
        loop {
            if stop.load(Ordering::Relaxed) || ipc.is_finished() {
                break;
            }
            if engine.any_finished() {
                outcome = Err(NodeError::Io(std::io::Error::other(
                    "a dataplane worker stopped unexpectedly",
                )));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ipc_stop.store(true, Ordering::Relaxed);
        if let Ok(Err(e)) = ipc.join() {
            tracing::warn!("IPC server: {e}");
        }
        let _ = forwarder.join();
        let _ = dgram_forwarder.join();
        outcome
    });
    let stopped = engine.stop();
    result?;
    stopped?;
    Ok(())
}

/// Turns engine events into IPC events until `stop`.
fn forward_events(
    events: &Receiver<Event>,
    up: &Sender<UpMsg>,
    stop: &AtomicBool,
    wake: Option<&IpcWaker>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(e) = events.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let msg = match e {
            Event::ControlReceived { src, payload } => UpMsg::ControlReceived { src, payload },
            Event::NoSession { peer, dst } => UpMsg::NoSession { peer, dst },
            Event::RekeyNeeded { peer, local_index } => UpMsg::RekeyNeeded { peer, local_index },
            Event::EndpointChanged { peer, addr } => UpMsg::EndpointChanged { peer, addr },
            Event::SessionConfirmed { peer, local_index } => {
                UpMsg::SessionConfirmed { peer, local_index }
            }
        };
        // Back-pressure instead of loss: while the IPC thread is behind, this waits (a message
        // once taken is never dropped here), the engine's bounded queue fills, and the workers
        // count what they drop (or owe it and say it again).
        let mut msg = msg;
        loop {
            match up.send_timeout(msg, Duration::from_millis(100)) {
                Ok(()) => {
                    if let Some(w) = wake {
                        w.wake();
                    }
                    break;
                }
                Err(SendTimeoutError::Timeout(m)) if !stop.load(Ordering::Relaxed) => msg = m,
                Err(_) => return,
            }
        }
    }
}

/// Applies IPC requests to the engine.
struct EngineHandler<'a> {
    engine: &'a Engine,
    clock: fn() -> Duration,
    /// The relay routes the workers hold (to bound them and answer removals).
    relay_keys: HashSet<(SocketAddr, u32)>,
}

impl IpcHandler for EngineHandler<'_> {
    fn handle(&mut self, msg: DownMsg) -> Result<Option<UpMsg>, String> {
        match msg {
            DownMsg::InstallSession(s) => {
                let cipher = Cipher::from_code(s.cipher)
                    .ok_or_else(|| format!("unknown cipher code {}", s.cipher))?;
                let keys = SessionKeys {
                    cipher,
                    send: *s.send_key,
                    recv: *s.recv_key,
                };
                let secs = |v: u32, d: Duration| {
                    if v == 0 {
                        d
                    } else {
                        Duration::from_secs(u64::from(v))
                    }
                };
                let limits = Limits {
                    rekey_after_time: secs(s.rekey_after_secs, Limits::DEFAULT.rekey_after_time),
                    reject_after_time: secs(s.reject_after_secs, Limits::DEFAULT.reject_after_time),
                    ..Limits::DEFAULT
                };
                let session = Session::new(
                    s.local_index,
                    s.remote_index,
                    s.peer,
                    &keys,
                    (self.clock)(),
                    limits,
                )
                .map_err(|e| format!("session keys refused: {e}"))?;
                let slot = match s.slot {
                    proto::Slot::Next => Slot::Next,
                    proto::Slot::Current => Slot::Current,
                };
                self.engine.broadcast(&Command::InstallSession {
                    peer: s.peer,
                    slot,
                    session: Arc::new(session),
                });
                if slot == Slot::Current {
                    // Key confirmation for the responder, whose `next` session waits for our
                    // first authenticated packet before it may send.
                    self.engine.send_keepalive(s.peer);
                }
                Ok(None)
            }
            DownMsg::RemoveSession { local_index } => {
                self.engine
                    .broadcast(&Command::RemoveSession { local_index });
                Ok(None)
            }
            DownMsg::RemovePeer { peer } => {
                self.engine.broadcast(&Command::RemovePeer { peer });
                Ok(None)
            }
            DownMsg::SetRoutes { peer, prefixes } => {
                for &(addr, len) in &prefixes {
                    let max = if addr.is_ipv4() { 32 } else { 128 };
                    if len > max {
                        return Err(format!("prefix {addr}/{len}: length must be at most {max}"));
                    }
                }
                self.engine.broadcast(&Command::SetRoutes {
                    peer,
                    prefixes: prefixes.into(),
                });
                Ok(None)
            }
            DownMsg::SetSources { peer, prefixes } => {
                for &(addr, len) in &prefixes {
                    let max = if addr.is_ipv4() { 32 } else { 128 };
                    if len > max {
                        return Err(format!("prefix {addr}/{len}: length must be at most {max}"));
                    }
                }
                self.engine.broadcast(&Command::SetSources {
                    peer,
                    prefixes: prefixes.into(),
                });
                Ok(None)
            }
            DownMsg::SetEndpoint { peer, addr } => {
                self.engine.broadcast(&Command::SetEndpoint { peer, addr });
                Ok(None)
            }
            DownMsg::SendControl { dst, payload } => {
                if payload.first() != Some(&crate::wire::MSG_CONTROL) {
                    return Err("a control datagram must start with type byte 5".into());
                }
                self.engine.send_control(dst, payload);
                Ok(None)
            }
            DownMsg::SetRelay {
                from,
                index,
                to,
                rate_bytes_per_sec,
            } => {
                if from == to {
                    return Err(format!(
                        "a relay route from {from} back to itself would loop"
                    ));
                }
                if !self.relay_keys.contains(&(from, index))
                    && self.relay_keys.len() >= proto::MAX_RELAY_ROUTES
                {
                    return Err(format!(
                        "relay table full ({} routes): remove some first",
                        proto::MAX_RELAY_ROUTES
                    ));
                }
                self.relay_keys.insert((from, index));
                self.engine.broadcast(&Command::SetRelay {
                    from,
                    index,
                    route: RelayRoute::new(to, rate_bytes_per_sec),
                });
                Ok(None)
            }
            DownMsg::RemoveRelay { from, index } => {
                if !self.relay_keys.remove(&(from, index)) {
                    return Err(format!("no relay route from {from} with index {index}"));
                }
                self.engine.broadcast(&Command::RemoveRelay { from, index });
                Ok(None)
            }
            DownMsg::GetStats { first_peer } => Ok(Some(UpMsg::Stats(self.stats(first_peer)))),
            DownMsg::Shutdown => Ok(None),
        }
    }
}

impl EngineHandler<'_> {
    fn stats(&self, first_peer: u32) -> Stats {
        let workers = self
            .engine
            .worker_totals()
            .iter()
            .take(proto::MAX_STATS_WORKERS)
            .map(worker_stats)
            .collect();
        let mut peers: Vec<_> = self
            .engine
            .peer_totals()
            .into_iter()
            .filter(|(p, _)| *p >= first_peer)
            .collect();
        peers.sort_by_key(|(p, _)| *p);
        let next_peer = peers.get(proto::MAX_STATS_PEERS).map(|(p, _)| *p);
        let peers = peers
            .into_iter()
            .take(proto::MAX_STATS_PEERS)
            .map(|(peer, t)| PeerStats {
                peer,
                rx_packets: t.rx_packets,
                rx_bytes: t.rx_bytes,
                tx_packets: t.tx_packets,
                tx_bytes: t.tx_bytes,
                drops: ipc_drops(&t.drops),
                last_rx_ms: (t.last_rx_nanos > 0).then_some(t.last_rx_nanos / 1_000_000),
            })
            .collect();
        Stats {
            workers,
            peers,
            next_peer,
        }
    }
}

/// Folds the engine's drop counters into the IPC's coarser causes.
fn ipc_drops(engine: &[u64; DropCause::COUNT]) -> [u64; proto::DROP_CAUSES] {
    let mut drops = [0u64; proto::DROP_CAUSES];
    for cause in DropCause::ALL {
        let i = ipc_drop_index(cause);
        if let Some(d) = drops.get_mut(i) {
            *d += engine[cause as usize];
        }
    }
    drops
}

fn worker_stats(t: &WorkerTotals) -> WorkerStats {
    let drops = ipc_drops(&t.drops);
    WorkerStats {
        rx_packets: t.tun_tx_packets,
        rx_bytes: t.tun_tx_bytes,
        tx_packets: t.tun_rx_packets,
        tx_bytes: t.tun_rx_bytes,
        drops,
        uring_enters: t.enters,
        held: t.held,
        hold_flushed: t.hold_flushed,
        relayed_packets: t.relayed_packets,
        relayed_bytes: t.relayed_bytes,
    }
}

/// Where an engine drop cause is counted in the IPC's drop array.
fn ipc_drop_index(cause: DropCause) -> usize {
    use proto::DropCause as P;
    let p = match cause {
        DropCause::Garbage | DropCause::BadInnerPacket | DropCause::BadOffload => P::Malformed,
        DropCause::UnknownIndex => P::UnknownIndex,
        DropCause::Replayed => P::Replay,
        DropCause::BadTag => P::AuthFailed,
        DropCause::Expired | DropCause::SendRefused => P::KeyExpired,
        DropCause::NoRoute | DropCause::NoEndpoint => P::NoRoute,
        DropCause::NoSession => P::NoSession,
        DropCause::SourceNotAllowed => P::SourceNotAllowed,
        DropCause::NoBuffer | DropCause::EventQueueFull => P::QueueFull,
        DropCause::ControlRateLimited => P::ControlRateLimited,
        DropCause::HoldExpired => P::HoldExpired,
        DropCause::HoldOverflow => P::HoldOverflow,
        DropCause::RelayRateLimited => P::RelayRateLimited,
    };
    p.index()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_control_datagrams_show_in_ipc_stats() {
        let mut engine = [0u64; DropCause::COUNT];
        engine[DropCause::ControlRateLimited as usize] = 936;
        engine[DropCause::EventQueueFull as usize] = 3;
        let ipc = ipc_drops(&engine);
        assert_eq!(ipc[proto::DropCause::ControlRateLimited.index()], 936);
        assert_eq!(ipc[proto::DropCause::QueueFull.index()], 3);
        // Every engine cause lands somewhere: nothing counted is lost on the way up.
        let all = [1u64; DropCause::COUNT];
        assert_eq!(ipc_drops(&all).iter().sum::<u64>(), DropCause::COUNT as u64);
    }
}
