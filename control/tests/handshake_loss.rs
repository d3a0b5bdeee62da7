//! Handshakes under loss, in virtual time: two drivers (each configured with the other, so
//! both initiate at once, as two nodes started by `shadowmesh up`) exchange control datagrams
//! over a network that drops each one at random, in both directions. Counts how many fresh
//! first-contact handshakes complete (the initiator installs its session) within a deadline.
//!
//! Before fragment repair one lost fragment cost the whole message: at 30 % loss an
//! 11-fragment M1 got through 0.7^11 ≈ 2 % of the time and the handshake did not complete in
//! 120 s. The namespace test (tools/tests/netns_loss.rs) and perf-scripts/handshake-loss
//! measure the same on real sockets.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use shadowmesh_control::cert::{Ca, NodeCert, NodeCertRequest};
use shadowmesh_control::handshake::driver::{Driver, PeerSpec, Settings};
use shadowmesh_control::identity::Identity;
use shadowmesh_ipc::{DownMsg, Slot, UpMsg};

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
        ipv6: vec![],
        subnets: vec![],
        groups: vec![],
        not_before: t - 60,
        not_after: t + 86_400,
    })
    .expect("sign")
}

struct Rng(u64);

impl Rng {
    fn chance(&mut self, percent: u64) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % 100 < percent
    }
}

/// One fresh first contact at `loss` %; the time until an initiator installs its session, or
/// None within `limit`.
fn first_contact(seed: u64, loss: u64, limit: Duration) -> Option<Duration> {
    let ca = Ca::generate("loss-net").expect("ca");
    let ids = [
        Identity::generate().expect("identity"),
        Identity::generate().expect("identity"),
    ];
    let certs = [
        cert(&ca, &ids[0], "alpha", 1),
        cert(&ca, &ids[1], "beta", 2),
    ];
    let mk = |me: usize| {
        Driver::new(
            &ids[me],
            certs[me].clone(),
            ca.public().clone(),
            vec![PeerSpec {
                name: None,
                cert: certs[1 - me].clone(),
                endpoint: addr(2 - me as u8),
            }],
            Settings::default(),
            T0,
            Box::new(shadowmesh_control::rand::SystemRng::new()),
        )
        .expect("driver")
    };
    let mut d = [mk(0), mk(1)];
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut wire: BinaryHeap<(Reverse<Duration>, u64, usize, Vec<u8>)> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut now = T0;
    // Timed from the first initiation (the driver starts at its first timer tick).
    let mut start: Option<Duration> = None;
    let mut pending: [Vec<DownMsg>; 2] = [d[0].on_connected(now), d[1].on_connected(now)];
    // Bounded: at most this many steps of virtual time.
    for _ in 0..100_000 {
        for (side, msgs) in pending.iter_mut().enumerate() {
            for m in std::mem::take(msgs) {
                match m {
                    DownMsg::SendControl { dst, payload } => {
                        start.get_or_insert(now);
                        assert_eq!(dst, addr(2 - side as u8));
                        if !rng.chance(loss) {
                            seq += 1;
                            wire.push((
                                Reverse(now + Duration::from_millis(1)),
                                seq,
                                1 - side,
                                payload,
                            ));
                        }
                    }
                    DownMsg::InstallSession(s) if s.slot == Slot::Current => {
                        return start.map(|t| now - t);
                    }
                    _ => {}
                }
            }
        }
        // The driver's deadline is relative to the `now` it is asked at (at most 1 s ahead).
        let due = [d[0].poll_timeout(now), d[1].poll_timeout(now)];
        let next = [wire.peek().map(|w| w.0 .0), Some(due[0]), Some(due[1])]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        now = next.max(now);
        if start.is_some_and(|t| now - t > limit) || now - T0 > limit + limit {
            return None;
        }
        while wire.peek().is_some_and(|w| w.0 .0 <= now) {
            let Some((_, _, to, payload)) = wire.pop() else {
                break;
            };
            let ev = UpMsg::ControlReceived {
                src: addr(2 - to as u8),
                payload,
            };
            let out = d[to].handle_event(ev, now);
            pending[to].extend(out);
        }
        for side in 0..2 {
            if due[side] <= now {
                let out = d[side].handle_timeout(now);
                pending[side].extend(out);
            }
        }
    }
    None
}

fn run(loss: u64, runs: u64, limit: Duration) -> (usize, Vec<Duration>) {
    let mut times: Vec<Duration> = (0..runs)
        .filter_map(|s| first_contact(s, loss, limit))
        .collect();
    times.sort();
    let med = times.get(times.len() / 2).copied().unwrap_or_default();
    println!(
        "{loss}% loss: {} of {runs} within {limit:?}; median {med:?}, worst {:?}",
        times.len(),
        times.last().copied().unwrap_or_default()
    );
    (times.len(), times)
}

#[test]
fn first_contact_completes_within_10_s_at_30_percent_loss() {
    let (ok, _) = run(30, 100, Duration::from_secs(10));
    assert!(ok >= 95, "{ok} of 100");
}

#[test]
fn first_contact_completes_within_60_s_at_50_percent_loss() {
    let (ok, _) = run(50, 40, Duration::from_secs(60));
    assert!(ok >= 38, "{ok} of 40");
}
