//! The handshake driver without sockets: two in-memory nodes exchange control datagrams through
//! a hand-run "network", and the tests check what each asks of its dataplane.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::rand::SystemRng;
use shadowmesh_ipc::{DownMsg, InstallSession, Slot, UpMsg};

use super::{Driver, PeerSpec, Settings, MAX_PENDING_PER_PEER};
use crate::cert::{Ca, NodeCert, NodeCertRequest};
use crate::clock::Now;
use crate::handshake::{Initiator, InitiatorOptions};
use crate::identity::Identity;
use crate::transport::{fragment, FrameKey, KIND_HANDSHAKE};

const T0: Duration = Duration::from_secs(1_800_000_000);

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, i], 51820))
}

fn cert(ca: &Ca, id: &Identity, name: &str, i: u8) -> NodeCert {
    cert_valid(ca, id, name, i, 60)
}

/// A certificate valid from `slack` seconds before T0 to a day after.
fn cert_valid(ca: &Ca, id: &Identity, name: &str, i: u8, slack: u64) -> NodeCert {
    let t = T0.as_secs();
    ca.sign(NodeCertRequest {
        public: id.public().clone(),
        name: name.into(),
        ipv4: vec![(Ipv4Addr::new(100, 64, 0, i), 10)],
        ipv6: vec![(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i)), 64)],
        subnets: vec![],
        groups: vec![],
        not_before: t - slack,
        not_after: t + 86_400,
    })
    .unwrap()
}

struct Net {
    ca: Ca,
    a: Identity,
    a_cert: NodeCert,
    b: Identity,
    b_cert: NodeCert,
}

fn net() -> Net {
    let ca = Ca::generate("test-net").unwrap();
    let a = Identity::generate().unwrap();
    let b = Identity::generate().unwrap();
    let a_cert = cert(&ca, &a, "alpha", 1);
    let b_cert = cert(&ca, &b, "beta", 2);
    Net {
        ca,
        a,
        a_cert,
        b,
        b_cert,
    }
}

fn driver<'a>(id: &'a Identity, me: &NodeCert, n: &Net, peers: Vec<(NodeCert, u8)>) -> Driver<'a> {
    let specs = peers
        .into_iter()
        .map(|(c, i)| PeerSpec {
            name: None,
            cert: c,
            endpoint: addr(i),
        })
        .collect();
    Driver::new(
        id,
        me.clone(),
        n.ca.public().clone(),
        specs,
        Settings::default(),
        T0,
        Box::new(SystemRng::new()),
    )
    .unwrap()
}

/// B, always under load (every initiation counts as load: cookies first).
fn driver_under_load(n: &Net, peers: Vec<PeerSpec>) -> Driver<'_> {
    let settings = Settings {
        load_threshold: 0,
        ..Settings::default()
    };
    Driver::new(
        &n.b,
        n.b_cert.clone(),
        n.ca.public().clone(),
        peers,
        settings,
        T0,
        Box::new(SystemRng::new()),
    )
    .unwrap()
}

/// Everything a node asked of its dataplane, split into datagrams to send and the rest.
#[derive(Default)]
struct Log {
    installs: Vec<InstallSession>,
    other: Vec<DownMsg>,
}

/// Delivers datagrams between `a` (198.51.100.1) and `b` (198.51.100.2) until both are quiet.
/// `drop` says which datagrams the network loses (by sender index 0/1 and sequence number).
fn pump(
    a: &mut Driver<'_>,
    b: &mut Driver<'_>,
    mut from_a: Vec<DownMsg>,
    mut from_b: Vec<DownMsg>,
    now: impl Into<Now>,
    drop: &mut dyn FnMut(usize, usize) -> bool,
) -> (Log, Log) {
    let now: Now = now.into();
    let (mut la, mut lb) = (Log::default(), Log::default());
    let mut seq = 0usize;
    // What each side's dataplane holds as pending (`Next`): local index → peer id. When the
    // other side installs the matching `Current`, its keepalive confirms the session (the
    // dataplane's `SessionConfirmed`), unless the network drops it.
    let mut next_of: [std::collections::HashMap<u32, u32>; 2] = Default::default();
    // Bounded: a handshake is a few dozen datagrams.
    for _ in 0..200 {
        if from_a.is_empty() && from_b.is_empty() {
            return (la, lb);
        }
        let mut next_a = Vec::new();
        let mut next_b = Vec::new();
        for (sender, msgs) in [
            (0usize, std::mem::take(&mut from_a)),
            (1, std::mem::take(&mut from_b)),
        ] {
            for m in msgs {
                match m {
                    DownMsg::SendControl { dst, payload } => {
                        seq += 1;
                        assert!(payload.len() <= 1500 && payload.first() == Some(&5));
                        if drop(sender, seq) {
                            continue;
                        }
                        let ev = |src: u8| UpMsg::ControlReceived {
                            src: addr(src),
                            payload: payload.clone(),
                        };
                        if sender == 0 {
                            assert_eq!(dst, addr(2));
                            next_b.extend(b.handle_event(ev(1), now));
                        } else {
                            assert_eq!(dst, addr(1));
                            next_a.extend(a.handle_event(ev(2), now));
                        }
                    }
                    DownMsg::InstallSession(s) => {
                        if s.slot == Slot::Next {
                            next_of[sender].insert(s.local_index, s.peer);
                        } else if let Some(peer) = next_of[1 - sender].remove(&s.remote_index) {
                            seq += 1;
                            if !drop(sender, seq) {
                                if sender == 0 {
                                    next_b.extend(b.handle_session_confirmed(
                                        peer,
                                        s.remote_index,
                                        now,
                                    ));
                                } else {
                                    next_a.extend(a.handle_session_confirmed(
                                        peer,
                                        s.remote_index,
                                        now,
                                    ));
                                }
                            }
                        }
                        if sender == 0 { &mut la } else { &mut lb }.installs.push(s);
                    }
                    other => if sender == 0 { &mut la } else { &mut lb }
                        .other
                        .push(other),
                }
            }
        }
        from_a = next_a;
        from_b = next_b;
    }
    panic!("the exchange did not settle");
}

fn no_drop() -> impl FnMut(usize, usize) -> bool {
    |_, _| false
}

fn assert_pair(init: &InstallSession, resp: &InstallSession) {
    assert_eq!(init.slot, Slot::Current, "the initiator installs Current");
    assert_eq!(resp.slot, Slot::Next, "the responder installs Next");
    assert_eq!(init.local_index, resp.remote_index);
    assert_eq!(init.remote_index, resp.local_index);
    assert_eq!(*init.send_key, *resp.recv_key);
    assert_eq!(*init.recv_key, *resp.send_key);
    assert_ne!(*init.send_key, *init.recv_key);
    assert_eq!(init.cipher, resp.cipher);
    assert_eq!(init.rekey_after_secs, 120);
    assert_eq!(init.reject_after_secs, 180);
}

#[test]
fn one_side_initiates_and_both_install_matching_keys() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    let conn = a.on_connected(T0);
    assert!(conn.contains(&DownMsg::SetEndpoint {
        peer: 1,
        addr: addr(2)
    }));
    let routes = conn.iter().find_map(|m| match m {
        DownMsg::SetRoutes { peer: 1, prefixes } => Some(prefixes.clone()),
        _ => None,
    });
    // The certificate's addresses become host routes.
    assert_eq!(
        routes.unwrap(),
        vec![
            ("100.64.0.2".parse().unwrap(), 32),
            ("fd00::2".parse().unwrap(), 128)
        ]
    );
    let start = a.handle_timeout(T0);
    // A full-certificate M1 is ~12 KB: 11 fragments of at most 1200 bytes.
    assert_eq!(start.len(), 11);
    let (la, lb) = pump(&mut a, &mut b, start, vec![], T0, &mut no_drop());
    assert_eq!(la.installs.len(), 1);
    assert_eq!(lb.installs.len(), 1);
    assert_pair(&la.installs[0], &lb.installs[0]);
    assert_eq!(a.stats().completed_initiator, 1);
    assert_eq!(b.stats().completed_responder, 1);
    let pa = a.peers().get(1).unwrap();
    assert!(pa.in_flight.is_none() && pa.session.is_some() && pa.has_our_cert);
    // Nothing more to do until the rekey time.
    assert!(a.handle_timeout(T0 + Duration::from_secs(5)).is_empty());
    assert!(b.handle_timeout(T0 + Duration::from_secs(5)).is_empty());
}

#[test]
fn simultaneous_initiations_settle_on_one_shared_session() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    let sa = a.handle_timeout(T0);
    let sb = b.handle_timeout(T0);
    let (la, lb) = pump(&mut a, &mut b, sa, sb, T0, &mut no_drop());
    // Exactly one session each: no orphan `Next` session from the losing initiation.
    assert_eq!((la.installs.len(), lb.installs.len()), (1, 1));
    let ra = a.peers().get(1).unwrap().session.clone().unwrap();
    let rb = b.peers().get(1).unwrap().session.clone().unwrap();
    // The latest session on both sides is the same one, one side as initiator.
    assert_ne!(ra.initiator, rb.initiator);
    let (i, r) = if ra.initiator { (ra, rb) } else { (rb, ra) };
    assert_pair(&i.install, &r.install);
    assert!(a.peers().get(1).unwrap().in_flight.is_none());
    assert!(b.peers().get(1).unwrap().in_flight.is_none());
}

#[test]
fn unconfigured_node_of_the_same_ca_becomes_a_dynamic_peer() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![]);
    let start = a.handle_timeout(T0);
    let (la, lb) = pump(&mut a, &mut b, start, vec![], T0, &mut no_drop());
    assert_pair(&la.installs[0], &lb.installs[0]);
    let p = b.peers().get(1).unwrap();
    assert!(p.dynamic);
    assert_eq!(p.name, "alpha");
    assert!(lb.other.contains(&DownMsg::SetEndpoint {
        peer: 1,
        addr: addr(1)
    }));
    assert!(lb
        .other
        .iter()
        .any(|m| matches!(m, DownMsg::SetRoutes { peer: 1, .. })));
}

#[test]
fn peer_of_another_ca_is_refused() {
    let n = net();
    let other = Ca::generate("other").unwrap();
    let c = Identity::generate().unwrap();
    let c_cert = cert(&other, &c, "mallory", 3);
    let a = driver(
        &n.a,
        &n.a_cert,
        &n,
        vec![(c_cert.clone(), 3), (n.b_cert.clone(), 2)],
    );
    assert_eq!(a.peers().len(), 1);
    assert_eq!(a.peers().get(1).unwrap().name, "beta");
    // Our own expired certificate is refused at start.
    let expired = Driver::new(
        &n.a,
        n.a_cert.clone(),
        n.ca.public().clone(),
        vec![],
        Settings::default(),
        T0 + Duration::from_secs(90_000),
        Box::new(SystemRng::new()),
    );
    assert!(expired.unwrap_err().to_string().contains("expired"));
}

#[test]
fn unanswered_initiations_back_off_give_up_and_retry_later() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let count = |v: &[DownMsg]| {
        v.iter()
            .filter(|m| matches!(m, DownMsg::SendControl { .. }))
            .count()
    };
    let mut sent_at = vec![];
    let mut t = T0;
    // Bounded walk through 2 minutes of virtual time in 250 ms steps. New initiations only:
    // the transport's fragment repairs of each one come in between.
    for _ in 0..480 {
        let before = a.stats().initiations_sent;
        let out = a.handle_timeout(t);
        if a.stats().initiations_sent > before {
            assert!(count(&out) > 0);
            sent_at.push(t.saturating_sub(T0).as_millis());
        }
        t += Duration::from_millis(250);
    }
    // First try, 6 retries at 1, 2, 4, 8, 16, 16 s intervals, give-up 16 s later, then 30 s
    // of quiet before the next first try.
    assert_eq!(sent_at[..7], [0, 1000, 3000, 7000, 15_000, 31_000, 47_000]);
    assert_eq!(sent_at[7], 63_000 + 30_000);
    assert_eq!(a.stats().gave_up, 1);
    // Retries send the full certificate (11 fragments), never a stale M1.
    assert_eq!(a.stats().initiations_sent as usize, sent_at.len());
}

#[test]
fn retransmission_after_loss_completes() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    let start = a.handle_timeout(T0);
    // The first M1 loses one fragment.
    let (la, _) = pump(&mut a, &mut b, start, vec![], T0, &mut |s, q| {
        s == 0 && q == 3
    });
    assert!(la.installs.is_empty());
    let t1 = T0 + Duration::from_secs(1);
    let retry = a.handle_timeout(t1);
    assert!(!retry.is_empty());
    let (la, lb) = pump(&mut a, &mut b, retry, vec![], t1, &mut no_drop());
    assert_pair(&la.installs[0], &lb.installs[0]);
}

#[test]
fn rekey_on_time_and_on_request() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    let start = a.handle_timeout(T0);
    let (la, _) = pump(&mut a, &mut b, start, vec![], T0, &mut no_drop());
    let first = la.installs[0].clone();

    // The dataplane asks for a rekey: a new handshake (hash of our certificate this time:
    // 3 fragments), old session kept as previous.
    let t = T0 + Duration::from_secs(60);
    let stale = a.handle_event(
        UpMsg::RekeyNeeded {
            peer: 1,
            local_index: first.local_index ^ 1,
        },
        t,
    );
    assert!(stale.is_empty(), "a rekey for an old index is ignored");
    let out = a.handle_event(
        UpMsg::RekeyNeeded {
            peer: 1,
            local_index: first.local_index,
        },
        t,
    );
    assert_eq!(out.len(), 3);
    let (la, lb) = pump(&mut a, &mut b, out, vec![], t, &mut no_drop());
    assert_pair(&la.installs[0], &lb.installs[0]);
    assert_ne!(la.installs[0].local_index, first.local_index);
    let p = a.peers().get(1).unwrap();
    assert_eq!(
        p.previous.as_ref().unwrap().install.local_index,
        first.local_index
    );

    // The responder's dataplane asks too, at the same age: it leaves the renewal to the
    // initiator unless the initiator is late by the grace period.
    let rb = b.peers().get(1).unwrap().session.clone().unwrap();
    assert!(!rb.initiator);
    let ask = UpMsg::RekeyNeeded {
        peer: 1,
        local_index: rb.install.local_index,
    };
    assert!(b
        .handle_event(ask.clone(), t + Duration::from_secs(120))
        .is_empty());
    assert!(!b.handle_event(ask, t + Duration::from_secs(135)).is_empty());

    // Time-based: 120 s after the latest handshake the initiator renews it.
    assert!(a.handle_timeout(t + Duration::from_secs(119)).is_empty());
    assert!(!a.handle_timeout(t + Duration::from_secs(120)).is_empty());
}

#[test]
fn on_demand_is_rate_limited_and_disconnect_stops_handshakes() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let ev = || UpMsg::NoSession {
        peer: Some(1),
        dst: "100.64.0.2".parse().unwrap(),
    };
    assert!(!a.handle_event(ev(), T0).is_empty());
    assert!(
        a.handle_event(ev(), T0).is_empty(),
        "one initiation in flight per peer"
    );
    assert_eq!(
        a.disconnect("beta").unwrap(),
        vec![DownMsg::RemovePeer { peer: 1 }]
    );
    assert!(a.handle_event(ev(), T0 + Duration::from_secs(5)).is_empty());
    assert!(a.handle_timeout(T0 + Duration::from_secs(60)).is_empty());
    assert!(a.disconnect("nobody").is_err());
    let out = a.connect("beta", T0 + Duration::from_secs(61)).unwrap();
    assert!(matches!(out[0], DownMsg::SetRoutes { peer: 1, .. }));
    assert!(out.contains(&DownMsg::SetEndpoint {
        peer: 1,
        addr: addr(2)
    }));
    assert!(out.iter().any(|m| matches!(m, DownMsg::SendControl { .. })));
}

#[test]
fn junk_datagrams_are_counted_drops() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let src = addr(9);
    let key = crate::transport::FrameKey::for_network(&n.ca.public().id());
    for (i, mut junk) in [
        vec![],
        vec![5],
        vec![5, 1, 0, 0, 0, 0, 0, 1, 9],
        vec![5, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0],
        vec![5, 1, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0],
        vec![5, 1, 0, 0, 0, 0, 0, 1, 3],
        vec![5, 7, 0, 0, 0, 0, 0, 1, 1],
    ]
    .into_iter()
    .enumerate()
    {
        // Without the network's fragment MAC nothing gets past the transport; with it, the
        // handshake layer refuses the junk.
        assert!(a.handle_datagram(src, &junk, T0).is_empty());
        // Distinct message ids: a repeated one would be a duplicate of a delivered message.
        if let Some(b) = junk.get_mut(2) {
            *b = i as u8;
        }
        let sealed = key.seal(junk);
        let _ = a.handle_datagram(src, &sealed, T0);
    }
    let s = a.stats();
    assert!(s.dropped_datagrams >= 9 && s.refused >= 4, "{s:?}");
}

#[test]
fn crossing_initiations_with_the_winner_lost_settle_on_retry() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    // The side with the smaller node id keeps its initiation; lose all of it.
    let winner = usize::from(a.my_cert().node_id() > b.my_cert().node_id());
    let sa = a.handle_timeout(T0);
    let sb = b.handle_timeout(T0);
    let (la, lb) = pump(&mut a, &mut b, sa, sb, T0, &mut |s, _| s == winner);
    assert!(la.installs.is_empty() && lb.installs.is_empty());
    // Both retry after 1 s (the loser's initiation was never answered either).
    let t1 = T0 + Duration::from_secs(1);
    let ra = a.handle_timeout(t1);
    let rb = b.handle_timeout(t1);
    assert!(!ra.is_empty() || !rb.is_empty());
    let (la, lb) = pump(&mut a, &mut b, ra, rb, t1, &mut no_drop());
    assert_eq!((la.installs.len(), lb.installs.len()), (1, 1));
    let (i, r) = if la.installs[0].slot == Slot::Current {
        (&la.installs[0], &lb.installs[0])
    } else {
        (&lb.installs[0], &la.installs[0])
    };
    assert_pair(i, r);
}

#[test]
fn under_load_the_responder_asks_for_a_cookie_first() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver_under_load(&n, vec![]);
    let start = a.handle_timeout(T0);
    let mut seen = Vec::new();
    let (la, lb) = pump(&mut a, &mut b, start, vec![], T0, &mut |s, q| {
        seen.push((s, q));
        false
    });
    // M1 (11) → cookie reply (1) → M1 with mac2 (11) → M2 (3), each message answered by one
    // transport ACK, then A's confirming keepalive.
    assert_eq!(seen.len(), 26 + 4 + 1, "{seen:?}");
    assert_pair(&la.installs[0], &lb.installs[0]);
}

/// Where the attacker sends from: an address on the underlay that is neither node.
fn mallory() -> SocketAddr {
    SocketAddr::from(([203, 0, 113, 66], 4444))
}

/// An initiation as `from` to `to`, built with `from`'s keys — what a quantum attacker (who
/// can compute the static X25519 secret from the public key, but not the ML-KEM secret) can
/// send — delivered to `d` from the attacker's address.
fn forge(
    d: &mut Driver<'_>,
    from: &Identity,
    from_cert: &NodeCert,
    to_cert: &NodeCert,
    n: &Net,
    timestamp: Duration,
    now: impl Into<Now>,
) -> Vec<DownMsg> {
    let now: Now = now.into();
    let (_, m1) = Initiator::with_options(
        from,
        from_cert,
        to_cert,
        n.ca.public(),
        0x0bad_0000 | (timestamp.subsec_nanos() & 0xffff),
        now.wall,
        &mut SystemRng::new(),
        InitiatorOptions {
            timestamp: Some(timestamp),
            ..InitiatorOptions::default()
        },
    )
    .unwrap();
    let mut out = Vec::new();
    let key = FrameKey::for_network(&n.ca.public().id());
    // A message id per forgery (the transport delivers one message id from a source once).
    #[allow(clippy::cast_possible_truncation)]
    let msg_id = timestamp.as_millis() as u32;
    for f in fragment(&key, KIND_HANDSHAKE, msg_id, &m1).unwrap() {
        out.extend(d.handle_datagram(mallory(), &f, now));
    }
    out
}

/// What B's table says about A, to compare before and after an attack.
fn state_of(d: &Driver<'_>, peer: u32) -> (Option<u32>, Option<u32>, Option<u32>, bool) {
    let p = d.peers().get(peer).unwrap();
    (
        p.session.as_ref().map(|s| s.install.local_index),
        p.previous.as_ref().map(|s| s.install.local_index),
        p.in_flight,
        p.endpoint == Some(addr(1)),
    )
}

/// Forged initiations (even ones that pass every cryptographic check an outsider could make
/// pass with a quantum computer) change nothing on the responder: no timestamp, no record
/// rotation, no route or endpoint, no cancelled initiation; its pending session expires; the
/// real rekeys before and after go through.
#[test]
fn forged_initiations_between_real_rekeys_change_nothing() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    let start = a.handle_timeout(T0);
    let _ = pump(&mut a, &mut b, start, vec![], T0, &mut no_drop());
    assert_eq!(b.stats().completed_responder, 1);
    let a_id = n.a_cert.node_id();
    let committed = b.responder().last_timestamp(&a_id);
    let before = state_of(&b, 1);
    // Two forgeries, one with a timestamp far ahead (within the skew bound, so that only the
    // "commit nothing" rule protects the next real initiation), one at about now.
    let t1 = T0 + Duration::from_secs(1);
    for ts in [T0 + Duration::from_secs(250), t1] {
        let out = forge(&mut b, &n.a, &n.a_cert, &n.b_cert, &n, ts, t1);
        // B answers the attacker (it cannot tell) and installs a pending session; nothing else.
        assert!(out.iter().any(|m| matches!(m,
            DownMsg::InstallSession(s) if s.slot == Slot::Next && s.peer == 1)));
        assert!(
            out.iter().all(|m| match m {
                DownMsg::SendControl { dst, .. } => *dst == mallory(),
                DownMsg::InstallSession(s) => s.slot == Slot::Next,
                _ => false,
            }),
            "{out:?}"
        );
        assert_eq!(b.responder().last_timestamp(&a_id), committed);
        assert_eq!(state_of(&b, 1), before);
    }
    assert_eq!(b.pending_responder_sessions(), 2);
    // The real rekey (timestamp ≈ now, below the forged 250 s one) is accepted beside them and
    // confirmed; the forged pending sessions go with the confirmation.
    let t3 = T0 + Duration::from_secs(120);
    let ask = a.handle_timeout(t3);
    assert!(!ask.is_empty());
    let (la, lb) = pump(&mut a, &mut b, ask, vec![], t3, &mut no_drop());
    assert_eq!(la.installs.len(), 1);
    assert_eq!(lb.installs.len(), 1);
    assert_eq!(b.stats().completed_responder, 2);
    assert_eq!(b.pending_responder_sessions(), 0);
    let after = state_of(&b, 1);
    assert_eq!(after.0, Some(lb.installs[0].local_index));
    assert_eq!(
        after.1, before.0,
        "the real session before the forgeries is now previous"
    );
    assert!(b.responder().last_timestamp(&a_id) > committed);
    // Forgeries nobody confirms leave the dataplane when their keys would have expired.
    let t4 = t3 + Duration::from_secs(1);
    let state = state_of(&b, 1);
    for ts in [t4, t4 + Duration::from_millis(1)] {
        let _ = forge(&mut b, &n.a, &n.a_cert, &n.b_cert, &n, ts, t4);
    }
    let out = b.handle_timeout(t4 + b.settings().reject_after);
    assert_eq!(
        out.iter()
            .filter(|m| matches!(m, DownMsg::RemoveSession { .. }))
            .count(),
        2
    );
    assert_eq!(b.pending_responder_sessions(), 0);
    assert_eq!(b.stats().pending_expired, 2);
    assert_eq!(state_of(&b, 1).0, state.0);
}

/// A forged initiation does not cancel the responder's own initiation in flight (even when
/// the responder's node id is the larger, which yields on a real crossing).
#[test]
fn forged_initiation_does_not_cancel_our_own() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    // Make whichever of the two has the larger node id the victim with an initiation in flight.
    let a_larger = n.a_cert.node_id() > n.b_cert.node_id();
    let (victim, other_id, other_cert, victim_cert) = if a_larger {
        (&mut a, &n.b, &n.b_cert, &n.a_cert)
    } else {
        (&mut b, &n.a, &n.a_cert, &n.b_cert)
    };
    let start = victim.handle_timeout(T0);
    assert!(!start.is_empty());
    let in_flight = victim.peers().get(1).unwrap().in_flight;
    assert!(in_flight.is_some());
    let t = T0 + Duration::from_millis(300);
    let out = forge(victim, other_id, other_cert, victim_cert, &n, t, t);
    assert!(out.iter().any(|m| matches!(m, DownMsg::InstallSession(_))));
    assert_eq!(victim.peers().get(1).unwrap().in_flight, in_flight);
}

/// An initiation from a node we do not know (same CA) takes no peer-table entry, route or
/// endpoint until confirmed; unconfirmed, its reserved peer leaves the dataplane again.
#[test]
fn unconfirmed_new_node_leaves_no_peer_route_or_endpoint() {
    let n = net();
    let c = Identity::generate().unwrap();
    let c_cert = cert(&n.ca, &c, "gamma", 3);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![]);
    let out = forge(&mut b, &c, &c_cert, &n.b_cert, &n, T0, T0);
    let reserved = out
        .iter()
        .find_map(|m| match m {
            DownMsg::InstallSession(s) => Some(s.peer),
            _ => None,
        })
        .expect("a pending session");
    // No route and no endpoint: only the pending session, its M2, and the certified source
    // prefixes for the inbound check of that session's packets (never outbound routing).
    assert!(out.iter().all(|m| matches!(
        m,
        DownMsg::InstallSession(_) | DownMsg::SendControl { .. } | DownMsg::SetSources { .. }
    )));
    let sources = out
        .iter()
        .find_map(|m| match m {
            DownMsg::SetSources { peer, prefixes } if *peer == reserved => Some(prefixes.clone()),
            _ => None,
        })
        .expect("the certified sources of the pending peer");
    // Exactly the certificate's own (host) addresses.
    let certified: Vec<std::net::IpAddr> = c_cert
        .body
        .ipv4
        .iter()
        .map(|(a, _)| std::net::IpAddr::V4(*a))
        .chain(
            c_cert
                .body
                .ipv6
                .iter()
                .map(|(a, _)| std::net::IpAddr::V6(*a)),
        )
        .collect();
    assert!(
        certified
            .iter()
            .all(|ip| sources.iter().any(|(a, _)| a == ip))
            && sources.iter().all(|(a, _)| certified.contains(a)),
        "{sources:?}"
    );
    assert!(b.peers().is_empty());
    let out = b.handle_timeout(T0 + b.settings().reject_after);
    assert!(out.contains(&DownMsg::RemovePeer { peer: reserved }));
    assert!(b.peers().is_empty());
}

/// A flood of forged initiations for one peer keeps at most MAX_PENDING_PER_PEER pending
/// sessions; a real one that arrives in between is not displaced by fewer forgeries than that.
#[test]
fn pending_sessions_are_bounded_per_peer_and_the_real_one_survives() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    // A's real M1 reaches B; hold B's M2 back.
    let m1 = a.handle_timeout(T0);
    let mut m2 = Vec::new();
    for m in m1 {
        if let DownMsg::SendControl { payload, .. } = m {
            m2.extend(b.handle_event(
                UpMsg::ControlReceived {
                    src: addr(1),
                    payload,
                },
                T0,
            ));
        }
    }
    // MAX_PENDING_PER_PEER - 1 forgeries arrive before the M2 gets back.
    for k in 1..MAX_PENDING_PER_PEER {
        let t = T0 + Duration::from_millis(k as u64);
        let _ = forge(&mut b, &n.a, &n.a_cert, &n.b_cert, &n, t, t);
    }
    assert_eq!(b.pending_responder_sessions(), MAX_PENDING_PER_PEER);
    // The real one completes: A installs, B confirms it, and the forged ones go with it.
    let (la, _) = pump(&mut a, &mut b, vec![], m2, T0, &mut no_drop());
    assert_eq!(la.installs.len(), 1);
    assert_eq!(b.stats().completed_responder, 1);
    assert_eq!(b.pending_responder_sessions(), 0);
    // A flood never exceeds the bound.
    for k in 0..3 * MAX_PENDING_PER_PEER {
        let t = T0 + Duration::from_millis(100 + k as u64);
        let _ = forge(&mut b, &n.a, &n.a_cert, &n.b_cert, &n, t, t);
        assert!(b.pending_responder_sessions() <= MAX_PENDING_PER_PEER);
    }
}

/// A replayed cookie reply makes the initiator send nothing; an accepted one makes it resend
/// its initiation only to the peer's endpoint, whatever the reply's source.
#[test]
fn cookie_replies_are_taken_once_and_resends_go_to_the_endpoint() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver_under_load(&n, vec![]);
    let mut reply = Vec::new();
    for m in a.handle_timeout(T0) {
        if let DownMsg::SendControl { payload, .. } = m {
            reply.extend(b.handle_datagram(addr(1), &payload, T0));
        }
    }
    // B's answer: its transport's ACK of the M1 and the cookie reply.
    let is_ack = |p: &[u8]| p.get(1) == Some(&crate::transport::KIND_ACK);
    let frames: Vec<Vec<u8>> = reply
        .into_iter()
        .filter_map(|m| match m {
            DownMsg::SendControl { payload, .. } if !is_ack(&payload) => Some(payload),
            _ => None,
        })
        .collect();
    assert_eq!(frames.len(), 1, "one cookie reply datagram");
    // Sends other than our transport's small ACKs (to the datagram's source, never larger
    // than what came in).
    let sends = |out: Vec<DownMsg>| -> Vec<SocketAddr> {
        out.into_iter()
            .filter_map(|m| match m {
                DownMsg::SendControl { dst, payload } if !is_ack(&payload) => Some(dst),
                _ => None,
            })
            .collect()
    };
    // Delivered from the attacker's address: the resend still goes to B's endpoint.
    let resend = sends(a.handle_datagram(mallory(), &frames[0], T0));
    assert!(!resend.is_empty());
    assert!(resend.iter().all(|d| *d == addr(2)), "{resend:?}");
    // The same reply again, from anywhere: nothing is sent.
    assert!(sends(a.handle_datagram(mallory(), &frames[0], T0)).is_empty());
    assert!(sends(a.handle_datagram(addr(2), &frames[0], T0)).is_empty());
}

/// Every timer runs on the monotonic clock: wall-clock jumps either way cause no rekey,
/// retransmission or expiry, and handshakes go on after the wall clock went back past the
/// last timestamp (initiators keep timestamps increasing).
#[test]
fn wall_clock_jumps_move_no_timer_and_handshakes_go_on() {
    let n = net();
    // Certificates valid long enough either side of T0 for the jumps below.
    let a_cert = cert_valid(&n.ca, &n.a, "alpha", 1, 3 * 86_400);
    let b_cert = cert_valid(&n.ca, &n.b, "beta", 2, 3 * 86_400);
    let mut a = driver(&n.a, &a_cert, &n, vec![(b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &b_cert, &n, vec![(a_cert.clone(), 1)]);
    let start = a.handle_timeout(T0);
    let _ = pump(&mut a, &mut b, start, vec![], T0, &mut no_drop());
    let sessions = (state_of(&a, 1), state_of(&b, 1));
    let hour = Duration::from_secs(3600);
    for (mono, wall) in [
        (T0 + Duration::from_secs(5), T0 + 24 * hour),
        (T0 + Duration::from_secs(10), T0 - 24 * hour),
        (T0 + Duration::from_secs(60), T0 + 300 * hour),
    ] {
        let now = Now { mono, wall };
        assert!(a.handle_timeout(now).is_empty(), "{now:?}");
        assert!(b.handle_timeout(now).is_empty(), "{now:?}");
        assert!(a.poll_timeout(now) <= mono + Duration::from_secs(1));
        assert_eq!((state_of(&a, 1), state_of(&b, 1)), sessions);
    }
    // Both wall clocks went back a day; at the monotonic rekey time A renews, and B accepts
    // its timestamp although it lies a day ahead of B's wall clock: it is just after the one
    // B accepted last.
    let now = Now {
        mono: T0 + Duration::from_secs(120),
        wall: T0 - 24 * hour,
    };
    let ask = a.handle_timeout(now);
    assert!(!ask.is_empty());
    let (la, lb) = pump(&mut a, &mut b, ask, vec![], now, &mut no_drop());
    assert_eq!((la.installs.len(), lb.installs.len()), (1, 1));
    assert_eq!(b.stats().completed_responder, 2);
}

/// Under load, a source that proved its address (valid cookie) still gets only a bounded rate
/// of KEM work: WireGuard's per-source token bucket (burst 5, then 20 per second).
#[test]
fn under_load_a_proven_source_is_rate_limited() {
    use crate::transport::{Reassembler, ReassemblyLimits};
    let n = net();
    let mut b = driver_under_load(
        &n,
        vec![PeerSpec {
            name: None,
            cert: n.a_cert.clone(),
            endpoint: addr(1),
        }],
    );
    let mut rng = SystemRng::new();
    let opts = |k: u32, cookie| InitiatorOptions {
        cookie,
        timestamp: Some(T0 + Duration::from_micros(u64::from(k))),
        ..InitiatorOptions::default()
    };
    let key = FrameKey::for_network(&n.ca.public().id());
    let deliver = |b: &mut Driver<'_>, m1: &[u8], id: u32| {
        let mut out = Vec::new();
        for f in fragment(&key, KIND_HANDSHAKE, id, m1).unwrap() {
            out.extend(b.handle_datagram(addr(1), &f, T0));
        }
        out
    };
    let (mut st, m1) = Initiator::with_options(
        &n.a,
        &n.a_cert,
        &n.b_cert,
        n.ca.public(),
        1,
        T0,
        &mut rng,
        opts(0, None),
    )
    .unwrap();
    let mut rx = Reassembler::new(key.clone(), ReassemblyLimits::default());
    let reply = deliver(&mut b, &m1, 1)
        .into_iter()
        .find_map(|m| match m {
            DownMsg::SendControl { payload, .. } => {
                match rx.handle_datagram(addr(2), &payload, T0, &mut Vec::new()) {
                    Ok(crate::transport::Incoming::Message(m)) => Some(m),
                    _ => None,
                }
            }
            _ => None,
        })
        .expect("a cookie reply");
    let _ = st.handle_cookie_reply(&reply.payload).unwrap();
    let cookie = st.cookie();
    let mut answered = 0;
    for k in 1..=40u32 {
        let (_, m1) = Initiator::with_options(
            &n.a,
            &n.a_cert,
            &n.b_cert,
            n.ca.public(),
            10 + k,
            T0,
            &mut rng,
            opts(k, cookie),
        )
        .unwrap();
        let out = deliver(&mut b, &m1, 100 + k);
        answered += usize::from(out.iter().any(|m| matches!(m, DownMsg::InstallSession(_))));
    }
    assert_eq!(
        answered, 5,
        "the burst, then nothing within the same instant"
    );
    assert_eq!(b.stats().rate_limited, 35);
}

/// A dataplane that comes back (restarted, or only reconnected) never gets a key it had
/// before — its send counters would restart at 0 under that key — but routes, endpoints and a
/// fresh handshake at once, which completes and is confirmed as usual.
#[test]
fn dataplane_reconnect_never_reinstalls_a_key_and_handshakes_anew() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    let start = a.handle_timeout(T0);
    let (la, lb) = pump(&mut a, &mut b, start, vec![], T0, &mut no_drop());
    let old_keys = [
        la.installs[0].send_key.clone(),
        lb.installs[0].send_key.clone(),
    ];
    let t = T0 + Duration::from_secs(30);
    for (d, peer_addr) in [(&mut a, addr(2)), (&mut b, addr(1))] {
        let refill = d.on_connected(t);
        assert!(refill.contains(&DownMsg::SetEndpoint {
            peer: 1,
            addr: peer_addr
        }));
        assert!(
            !refill
                .iter()
                .any(|m| matches!(m, DownMsg::InstallSession(_))),
            "a session key was handed to the dataplane again"
        );
    }
    // B's dataplane restarted: B handshakes at once, as initiator this time.
    let again = b.handle_timeout(t);
    assert!(!again.is_empty());
    let (la, lb) = pump(&mut a, &mut b, vec![], again, t, &mut no_drop());
    assert_eq!((la.installs.len(), lb.installs.len()), (1, 1));
    assert_pair(&lb.installs[0], &la.installs[0]);
    for k in [&la.installs[0].send_key, &lb.installs[0].send_key] {
        assert!(old_keys.iter().all(|o| **o != **k));
    }
}
