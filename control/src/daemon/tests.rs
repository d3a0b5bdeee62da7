//! The handshake driver without sockets: two in-memory nodes exchange control datagrams through
//! a hand-run "network", and the tests check what each asks of its dataplane.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use shadowmesh_dataplane::ipc::{DownMsg, InstallSession, Slot, UpMsg};

use super::sessions::{Driver, PeerSpec, Settings};
use crate::cert::{Ca, NodeCert, NodeCertRequest};
use crate::identity::Identity;

const T0: Duration = Duration::from_secs(1_800_000_000);

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, i], 51820))
}

fn cert(ca: &Ca, id: &Identity, name: &str, i: u8) -> NodeCert {
    let t = T0.as_secs();
    ca.sign(NodeCertRequest {
        public: id.public().clone(),
        name: name.into(),
        ipv4: vec![(Ipv4Addr::new(100, 64, 0, i), 10)],
        ipv6: vec![(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(i)), 64)],
        subnets: vec![],
        groups: vec![],
        not_before: t - 60,
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
    now: Duration,
    drop: &mut dyn FnMut(usize, usize) -> bool,
) -> (Log, Log) {
    let (mut la, mut lb) = (Log::default(), Log::default());
    let mut seq = 0usize;
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
fn rekey_on_time_and_on_request_and_refill_after_restart() {
    let n = net();
    let mut a = driver(&n.a, &n.a_cert, &n, vec![(n.b_cert.clone(), 2)]);
    let mut b = driver(&n.b, &n.b_cert, &n, vec![(n.a_cert.clone(), 1)]);
    let start = a.handle_timeout(T0);
    let (la, _) = pump(&mut a, &mut b, start, vec![], T0, &mut no_drop());
    let first = la.installs[0].clone();

    // A restarted dataplane gets routes, endpoint and the session back, with its remaining
    // lifetime.
    let t = T0 + Duration::from_secs(30);
    let refill = a.on_connected(t);
    let again = refill
        .iter()
        .find_map(|m| match m {
            DownMsg::InstallSession(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(again.local_index, first.local_index);
    assert_eq!(*again.send_key, *first.send_key);
    assert_eq!(again.slot, Slot::Current);
    assert_eq!(again.rekey_after_secs, 90);
    assert_eq!(again.reject_after_secs, 150);
    let b_refill = b.on_connected(t);
    assert!(b_refill
        .iter()
        .any(|m| matches!(m, DownMsg::InstallSession(s) if s.slot == Slot::Next)));

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
    let settings = Settings {
        load_threshold: 0,
        ..Settings::default()
    };
    let mut b = Driver::new(
        &n.b,
        n.b_cert.clone(),
        n.ca.public().clone(),
        vec![],
        settings,
        T0,
    )
    .unwrap();
    let start = a.handle_timeout(T0);
    let mut seen = Vec::new();
    let (la, lb) = pump(&mut a, &mut b, start, vec![], T0, &mut |s, q| {
        seen.push((s, q));
        false
    });
    // M1 (11) → cookie reply (1) → M1 with mac2 (11) → M2 (3), each message answered by one
    // transport ACK.
    assert_eq!(seen.len(), 26 + 4, "{seen:?}");
    assert_pair(&la.installs[0], &lb.installs[0]);
}
