//! The control-plane process: loads the configuration, identity and certificates, keeps the
//! dataplane filled (routes, endpoints, sessions) over the IPC bridge, runs handshakes through
//! the sans-IO [`Node`] (handshakes, DHT, discovery), and serves the admin API.
//!
//! Owns the wiring and the one event loop; the protocol decisions live in [`crate::node`] and below. It never
//! stops the dataplane (sessions outlive a control-plane restart) and never logs key material.

pub mod ipc_bridge;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::api::{
    self, ApiCall, ContactRow, DataplaneInfo, DhtInfo, HandshakeInfo, HomeRow, LookupRow, NatInfo,
    NatReportRow, NodeInfo, PeerInfo, RecordRow, StatusReply,
};
use crate::cert::{CaPublic, CertError, NodeCert};
use crate::clock::Now;
use crate::config::{Config, ConfigError};
use crate::handshake::driver::{PeerSpec, Settings};
use crate::identity::{hex, Identity, IdentityError};
use crate::node::{ConnectStart, Node, NodeConfig, NodeEvent};
use ipc_bridge::{Bridge, BridgeEvent};

/// Why the control plane could not start.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The configuration file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Our secret key file (`node.key` in the config).
    #[error("node.key {path}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why (the permission error carries the chmod fix).
        source: IdentityError,
    },
    /// A certificate or CA file could not be loaded.
    #[error("{what} {path}")]
    CertFile {
        /// Which key of the config named it.
        what: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: CertError,
    },
    /// Our own certificate is not usable (expired, other CA, not our keys).
    #[error("our certificate is not usable: {0}")]
    OwnCert(String),
    /// No peer of that name.
    #[error("no peer named {0:?}")]
    UnknownPeer(String),
    /// A crypto primitive failed (RNG).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
    /// Socket or thread setup.
    #[error("{what}")]
    Io {
        /// What was being set up.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Everything loaded from the files named by the configuration.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Our identity (secret keys).
    pub identity: Identity,
    /// Our certificate.
    pub cert: NodeCert,
    /// The network CA.
    pub ca: CaPublic,
    /// Static peers with their certificates (not yet verified).
    pub peers: Vec<PeerSpec>,
}

/// Loads the identity, certificates and CA named by `config`.
///
/// # Errors
/// [`DaemonError`] naming the file and what is wrong with it.
pub fn load(config: Config) -> Result<Loaded, DaemonError> {
    let identity = Identity::load_secret(&config.node.key).map_err(|source| DaemonError::Key {
        path: config.node.key.clone(),
        source,
    })?;
    let cert_err = |what: &str, path: &PathBuf| {
        let what = what.to_string();
        let path = path.clone();
        move |source| DaemonError::CertFile { what, path, source }
    };
    let cert =
        NodeCert::load(&config.node.cert).map_err(cert_err("node.cert", &config.node.cert))?;
    let ca = CaPublic::load(&config.node.ca).map_err(cert_err("node.ca", &config.node.ca))?;
    if cert.body.public != *identity.public() {
        return Err(DaemonError::OwnCert(format!(
            "{} certifies other keys than {} (sign this node's .pub)",
            config.node.cert.display(),
            config.node.key.display()
        )));
    }
    let mut peers = Vec::with_capacity(config.peers.len());
    for (i, p) in config.peers.iter().enumerate() {
        let c = NodeCert::load(&p.cert).map_err(cert_err(&format!("peer[{i}].cert"), &p.cert))?;
        peers.push(PeerSpec {
            name: p.name.clone(),
            cert: c,
            endpoint: p.endpoint,
        });
    }
    Ok(Loaded {
        config,
        identity,
        cert,
        ca,
        peers,
    })
}

/// Driver settings from the configuration.
#[must_use]
pub fn settings(config: &Config) -> Settings {
    Settings {
        rekey_after: Duration::from_secs(u64::from(config.control.rekey_after_secs)),
        reject_after: Duration::from_secs(u64::from(config.control.reject_after_secs)),
        ..Settings::default()
    }
}

/// What discovery needs from the configuration and the host: bootstrap and advertised
/// addresses, and our local addresses with the data port (all interface addresses when the
/// dataplane binds the wildcard).
#[must_use]
pub fn node_config(config: &Config) -> NodeConfig {
    let port = config.dataplane.listen_port;
    let bind = config.dataplane.bind;
    let local = if bind.is_unspecified() {
        match shadowmesh_platform::ifaddrs::local_addresses() {
            Ok(a) => a
                .into_iter()
                // A v4 wildcard socket does not receive IPv6.
                .filter(|ip| bind.is_ipv6() || ip.is_ipv4())
                .map(|ip| std::net::SocketAddr::new(ip, port))
                .collect(),
            Err(e) => {
                warn!("cannot list local addresses: {e}");
                Vec::new()
            }
        }
    } else {
        vec![std::net::SocketAddr::new(bind, port)]
    };
    NodeConfig {
        bootstrap: config.discovery.bootstrap.clone(),
        advertise: config.discovery.advertise.clone(),
        local,
        server: config.discovery.server,
        dht: crate::dht::DhtConfig::default(),
    }
}

fn dht_info(n: &Node<'_>, now: Now) -> DhtInfo {
    let short = |b: &[u8]| hex(b.get(..8).unwrap_or(b));
    let me = crate::dht::key::Key::for_node(&n.driver().my_cert().node_id());
    let (published, record_seq) = n.published();
    DhtInfo {
        server: n.config().server,
        bootstrap: n
            .config()
            .bootstrap
            .iter()
            .map(ToString::to_string)
            .collect(),
        observed: n
            .observed()
            .map(|(a, c)| (a.to_string(), u32::try_from(c).unwrap_or(u32::MAX)))
            .collect(),
        published: published.iter().map(ToString::to_string).collect(),
        record_seq,
        contacts: n
            .dht()
            .routing_table()
            .map(|c| ContactRow {
                node_id: short(&c.id.0),
                addr: c.addr.to_string(),
                bucket: me
                    .bucket_index(&c.id)
                    .map_or(0, |b| u32::try_from(b).unwrap_or(0)),
                last_seen_secs: now.mono.saturating_sub(c.last_seen).as_secs(),
            })
            .collect(),
        records: n
            .dht()
            .store()
            .iter()
            .map(|(k, r)| RecordRow {
                key: short(&k.0),
                node_id: short(&r.node_id()),
                name: r.cert.body.name.clone(),
                seq: r.seq,
                expires_in_secs: r.expires.saturating_sub(now.wall.as_secs()),
                endpoints: r.endpoints.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        lookups: n
            .recent_lookups()
            .map(|l| LookupRow {
                target: l.target.clone(),
                purpose: l.purpose.to_string(),
                found: l.found,
                hops: l.hops,
                queried: l.queried,
                millis: u64::try_from(l.elapsed.as_millis()).unwrap_or(u64::MAX),
            })
            .collect(),
        stats: n
            .dht()
            .stats()
            .named()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    }
}

fn snapshot(n: &Node<'_>, name: &str, connected: bool, socket: &str, now: Now) -> StatusReply {
    let d = n.driver();
    let dht = dht_info(n, now);
    let cert = d.my_cert();
    let st = d.stats();
    let now = now.mono;
    let secs = |t: Duration| now.saturating_sub(t).as_secs();
    StatusReply {
        node: NodeInfo {
            name: name.to_string(),
            node_id: hex(&cert.node_id()[..8]),
            addresses: cert
                .body
                .ipv4
                .iter()
                .map(|(a, l)| format!("{a}/{l}"))
                .chain(cert.body.ipv6.iter().map(|(a, l)| format!("{a}/{l}")))
                .collect(),
            cert_not_after: cert.body.not_after,
        },
        dataplane: DataplaneInfo {
            connected,
            socket: socket.to_string(),
            workers: None,
        },
        handshakes: HandshakeInfo {
            initiations_sent: st.initiations_sent,
            completed_initiator: st.completed_initiator,
            completed_responder: st.completed_responder,
            refused: st.refused,
            gave_up: st.gave_up,
            dropped_datagrams: st.dropped_datagrams,
            rate_limited: st.rate_limited,
            pending_expired: st.pending_expired,
            pending: d.pending_responder_sessions() as u64,
            route_conflicts: st.route_conflicts,
        },
        peers: d
            .peers()
            .iter()
            .map(|p| {
                let s = p.live_session(now, d.settings().reject_after);
                PeerInfo {
                    id: p.id,
                    name: p.name.clone(),
                    node_id: p.short_id(),
                    endpoint: p.endpoint.map(|e| e.to_string()),
                    enabled: p.enabled,
                    dynamic: p.dynamic,
                    allowed_ips: p.routes().iter().map(|(a, l)| format!("{a}/{l}")).collect(),
                    last_handshake_secs: p.last_handshake.map(secs),
                    session_age_secs: s.map(|s| s.age(now).as_secs()),
                    role: s.map(|s| {
                        if s.initiator {
                            "initiator"
                        } else {
                            "responder"
                        }
                        .to_string()
                    }),
                    cipher: s.map(|s| {
                        match s.install.cipher {
                            1 => "aes-256-gcm",
                            2 => "chacha20-poly1305",
                            _ => "unknown",
                        }
                        .to_string()
                    }),
                    handshaking: p.in_flight.is_some(),
                    failures: p.failures,
                    reachable: p.reachable,
                    path: p.endpoint.map(|e| {
                        if n.punched_from(&p.node_id) == Some(e) {
                            "punched"
                        } else {
                            "direct"
                        }
                        .to_string()
                    }),
                    rtt_ms: n.peer_rtt(p.id).map(millis),
                    ..PeerInfo::default()
                }
            })
            .collect(),
        dht,
        nat: nat_info(n, now),
    }
}

fn nat_info(n: &Node<'_>, now: Duration) -> NatInfo {
    let (v4, v6) = n.nat();
    let seen = |v: crate::nat::FamilyView| (v.reporters > 0).then_some(v);
    NatInfo {
        local: n.config().local.iter().map(ToString::to_string).collect(),
        ipv4: seen(v4),
        ipv6: seen(v6),
        reports: n
            .observations()
            .map(|(id, r)| NatReportRow {
                node_id: hex(&id[..8]),
                reporter: r.reporter_addr.to_string(),
                observed: r.observed.to_string(),
                age_secs: now.saturating_sub(r.at).as_secs(),
            })
            .collect(),
        homes: n
            .homes()
            .iter()
            .map(|(k, a)| HomeRow {
                node_id: hex(&k.0[..8]),
                addr: a.to_string(),
                rtt_ms: n.home_rtt(k).map(millis),
            })
            .collect(),
        punch: {
            let (p, stray) = n.punch_stats();
            [
                ("started", p.started),
                ("probes_sent", p.probes_sent),
                ("probes_received", p.probes_received),
                ("succeeded", p.succeeded),
                ("probes_dropped", p.probes_dropped),
                ("refused", p.refused),
                ("stray_introductions", stray),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
        },
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Waits for SIGTERM/SIGINT/SIGHUP, which the binary blocked before starting any thread (so
/// they stay pending for this thread whether or not a supervisor already blocked them; tokio's
/// handlers would never run under a mask inherited from `shadowmesh up`).
fn wait_signals(tx: &mpsc::Sender<i32>) {
    loop {
        match shadowmesh_platform::signal::wait_termination(Duration::from_millis(200)) {
            Ok(Some(sig)) => {
                let _ = tx.blocking_send(sig);
                return;
            }
            Ok(None) if tx.is_closed() => return,
            Ok(None) => {}
            Err(e) => {
                warn!("waiting for signals: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Applies one event of the IPC bridge.
fn on_bridge_event(
    ev: BridgeEvent,
    driver: &mut Node<'_>,
    bridge: &Bridge,
    connected: &mut bool,
    clock: fn() -> Now,
) {
    let send_all = |msgs: Vec<_>| {
        for m in msgs {
            bridge.send(m);
        }
    };
    match ev {
        BridgeEvent::Connected => {
            *connected = true;
            let now = clock();
            // Routes and endpoints, handshakes at once with peers that have no session, and
            // (the first time) joining the DHT.
            send_all(driver.on_connected(now));
        }
        BridgeEvent::Disconnected(why) => {
            *connected = false;
            warn!("dataplane disconnected: {why}");
        }
        BridgeEvent::Event(ev) => send_all(driver.handle_event(ev, clock())),
    }
}

/// How often, at most, the loop republishes the status the admin API serves.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(100);

/// Answers the admin API's status requests from the last published snapshot, so a busy
/// handshake loop never delays them; connect/disconnect go on to the loop.
async fn serve_calls(
    mut calls: mpsc::Receiver<ApiCall>,
    to_loop: mpsc::Sender<ApiCall>,
    status: tokio::sync::watch::Receiver<StatusReply>,
) {
    while let Some(call) = calls.recv().await {
        match call {
            ApiCall::Snapshot(tx) => {
                let _ = tx.send(status.borrow().clone());
            }
            other => {
                if to_loop.send(other).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs the control plane until SIGTERM/SIGINT. The caller must have blocked the termination
/// signals (`shadowmesh_platform::signal::block_termination_signals`) before starting threads,
/// and runs this on a multi-threaded runtime: this loop does the handshake crypto, while the
/// admin API and its status answers run on the runtime's other thread. `clock` is the
/// binary's one clock.
///
/// # Errors
/// Start-up failures ([`DaemonError`]); once running, problems are logged and retried.
pub async fn run(loaded: Loaded, clock: fn() -> Now) -> Result<(), DaemonError> {
    let Loaded {
        config,
        identity,
        cert,
        ca,
        peers,
    } = loaded;
    let now = clock();
    let mut driver = Node::new(
        &identity,
        cert,
        ca,
        peers,
        settings(&config),
        node_config(&config),
        now,
        Box::new(crate::rand::SystemRng::new()),
    )
    .map_err(|e| match e {
        DaemonError::OwnCert(m) => DaemonError::OwnCert(format!(
            "{}: {m} (CA {})",
            config.node.cert.display(),
            config.node.ca.display()
        )),
        other => other,
    })?;
    info!(
        node = %config.node.name,
        id = %hex(&identity.node_id()[..8]),
        peers = driver.driver().peers().len(),
        bootstrap = driver.config().bootstrap.len(),
        "control plane starting"
    );
    let io = |what: &str| {
        let what = what.to_string();
        move |source| DaemonError::Io { what, source }
    };
    // Engine events and control datagrams on separate channels, events read first: a flood
    // of datagrams cannot delay a key confirmation or a rekey request.
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let (dg_tx, mut dg_rx) = mpsc::channel(1024);
    let (bridge, _bridge_thread) =
        Bridge::spawn_split(config.dataplane.socket.clone(), ev_tx, dg_tx)
            .map_err(io("starting the IPC thread"))?;
    let listener = api::bind(&config.control.admin_socket).map_err(io(&format!(
        "admin socket {}",
        config.control.admin_socket.display()
    )))?;
    info!(admin = %config.control.admin_socket.display(), "admin API listening");
    let socket_name = config.dataplane.socket.display().to_string();
    let mut connected = false;
    let (status_tx, status_rx) = tokio::sync::watch::channel(snapshot(
        &driver,
        &config.node.name,
        connected,
        &socket_name,
        now,
    ));
    let (api_tx, api_rx) = mpsc::channel(64);
    let (call_tx, mut call_rx) = mpsc::channel(64);
    let api_task = tokio::spawn(api::serve(listener, api_tx, bridge.clone()));
    let calls_task = tokio::spawn(serve_calls(api_rx, call_tx, status_rx));
    let (sig_tx, mut sig_rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait_signals(&sig_tx))
        .map_err(io("starting the signal thread"))?;

    let send_all = |bridge: &Bridge, msgs: Vec<_>| {
        for m in msgs {
            bridge.send(m);
        }
    };
    let mut published = now.mono;
    // Operator `connect`s waiting for a DHT lookup, by ticket.
    let mut waiting: std::collections::BTreeMap<
        u64,
        tokio::sync::oneshot::Sender<Result<(), String>>,
    > = std::collections::BTreeMap::new();
    loop {
        while let Some(NodeEvent::ConnectDone { ticket, result }) = driver.poll_event() {
            if let Some(tx) = waiting.remove(&ticket) {
                let _ = tx.send(result.map(|_| ()).map_err(|e| e.to_string()));
            }
        }
        let now = clock();
        if now.mono.saturating_sub(published) >= SNAPSHOT_INTERVAL {
            published = now.mono;
            let s = snapshot(&driver, &config.node.name, connected, &socket_name, now);
            let _ = status_tx.send(s);
        }
        // Timers run only while the dataplane is there (below); without it, past deadlines
        // would otherwise spin this loop. Never sleep past the next status refresh.
        let wait = if connected {
            driver.poll_timeout(now).saturating_sub(now.mono)
        } else {
            Duration::from_secs(1)
        }
        .min(SNAPSHOT_INTERVAL);
        tokio::select! {
            // Signals and timers first: a flood of datagrams must not starve them.
            biased;
            sig = sig_rx.recv() => {
                info!(signal = sig.unwrap_or(0), "stopping (the dataplane keeps its sessions)");
                break;
            }
            () = tokio::time::sleep(wait) => {
                // Without a dataplane nothing can be sent: no handshakes until it is back.
                if connected {
                    send_all(&bridge, driver.handle_timeout(clock()));
                }
            }
            call = call_rx.recv() => match call {
                Some(ApiCall::Snapshot(tx)) => {
                    let _ = tx.send(snapshot(&driver, &config.node.name, connected, &socket_name, clock()));
                }
                Some(ApiCall::Connect(name, tx)) => {
                    match driver.connect(&name, clock()) {
                        Ok((ConnectStart::Known, m)) => {
                            send_all(&bridge, m);
                            let _ = tx.send(Ok(()));
                        }
                        Ok((ConnectStart::LookingUp(ticket), m)) => {
                            send_all(&bridge, m);
                            // Answered when the lookup ends (the DHT's timeouts bound it).
                            waiting.insert(ticket, tx);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                        }
                    }
                    published = Duration::ZERO;
                }
                Some(ApiCall::Disconnect(name, tx)) => {
                    let r = driver.disconnect(&name).map(|m| send_all(&bridge, m));
                    let _ = tx.send(r.map_err(|e| e.to_string()));
                    published = Duration::ZERO;
                }
                None => break,
            },
            ev = ev_rx.recv() => match ev {
                Some(ev) => on_bridge_event(ev, &mut driver, &bridge, &mut connected, clock),
                None => {
                    warn!("the IPC thread stopped");
                    break;
                }
            },
            dg = dg_rx.recv() => match dg {
                Some(ev) => on_bridge_event(ev, &mut driver, &bridge, &mut connected, clock),
                None => {
                    warn!("the IPC thread stopped");
                    break;
                }
            },
        }
    }
    api_task.abort();
    calls_task.abort();
    let _ = std::fs::remove_file(&config.control.admin_socket);
    Ok(())
}
