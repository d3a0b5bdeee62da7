//! Unit and property tests of the control transport: framing and MAC, reassembly bounds,
//! repair between two endpoints under loss, duplication and reordering in virtual time, and
//! the attacker's cases (forged and replayed ACKs, floods from many sources).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use proptest::prelude::*;

use super::*;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, (i % 250) as u8 + 1], 1000 + i))
}

fn key() -> FrameKey {
    FrameKey::for_network(&[7; 32])
}

fn reassembler() -> Reassembler {
    Reassembler::new(key(), ReassemblyLimits::default())
}

/// Feeds `frags` from `src`, returning the delivered messages and the ACKs sent.
fn feed(
    r: &mut Reassembler,
    src: SocketAddr,
    frags: &[Vec<u8>],
    now: Duration,
) -> (Vec<Message>, Vec<Transmit>) {
    let mut msgs = Vec::new();
    let mut acks = Vec::new();
    for f in frags {
        if let Ok(Incoming::Message(m)) = r.handle_datagram(src, f, now, &mut acks) {
            msgs.push(m);
        }
    }
    (msgs, acks)
}

#[test]
fn fragment_and_reassemble_out_of_order() {
    let msg: Vec<u8> = (0..12_345u32).map(|i| (i * 7) as u8).collect();
    let mut frags = fragment(&key(), KIND_HANDSHAKE, 9, &msg).unwrap();
    assert_eq!(frags.len(), 11);
    assert!(frags
        .iter()
        .all(|f| f.len() <= MAX_DATAGRAM && f[0] == CONTROL_TYPE));
    frags.reverse();
    let mut r = reassembler();
    let (msgs, acks) = feed(&mut r, addr(1), &frags, Duration::ZERO);
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!((m.kind, m.msg_id, &m.payload), (KIND_HANDSHAKE, 9, &msg));
    assert_eq!((r.entries(), r.memory_used()), (0, 0));
    // One ACK, for the whole message, to its source.
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].dst, addr(1));
    assert_eq!(
        parse(&key(), &acks[0].payload).unwrap(),
        Frame::Ack(Ack::complete(KIND_HANDSHAKE, 9, 11))
    );
}

#[test]
fn a_fragment_of_another_network_takes_no_state() {
    let other = FrameKey::for_network(&[8; 32]);
    let frags = fragment(&other, KIND_HANDSHAKE, 1, &[1u8; 5000]).unwrap();
    let mut r = reassembler();
    let mut out = Vec::new();
    for f in &frags {
        assert_eq!(
            r.handle_datagram(addr(1), f, Duration::ZERO, &mut out),
            Err(TransportError::BadMac)
        );
    }
    // A bit flip in a fragment of our own network fails too.
    let mut ours = fragment(&key(), KIND_HANDSHAKE, 1, &[1u8; 5000]).unwrap();
    ours[0][20] ^= 1;
    assert_eq!(
        r.handle_datagram(addr(1), &ours[0], Duration::ZERO, &mut out),
        Err(TransportError::BadMac)
    );
    assert_eq!(r.stats().bad_mac, frags.len() as u64 + 1);
    assert_eq!((r.entries(), r.memory_used(), out.len()), (0, 0, 0));
    assert_eq!(r.poll_timeout(), None);
}

#[test]
fn bad_frames_are_counted_drops() {
    let k = key();
    let mut r = reassembler();
    let mut out = Vec::new();
    let sealed = |b: &[u8]| k.seal(b.to_vec());
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        sealed(&[4, 1, 0, 0, 0, 0, 0, 1, 9]),
        sealed(&[5, 1, 0, 0, 0, 0, 0, 0, 9]),
        sealed(&[5, 1, 0, 0, 0, 0, 2, 2, 9]),
        sealed(&[5, 1, 0, 0, 0, 0, 0, 57, 9]),
        // ACK: bitmap of the wrong length, a bit above the count, an ACK of an ACK.
        sealed(&[5, 0, 0, 0, 0, 0, 1, 9, 1]),
        sealed(&[5, 0, 0, 0, 0, 0, 1, 3, 8]),
        sealed(&[5, 0, 0, 0, 0, 0, 0, 3, 1]),
        vec![5; MAX_DATAGRAM + 1],
    ];
    for c in &cases {
        assert!(r
            .handle_datagram(addr(1), c, Duration::ZERO, &mut out)
            .is_err());
    }
    let s = r.stats();
    assert_eq!(s.malformed, cases.len() as u64);
    // Inconsistent count.
    r.handle_datagram(
        addr(1),
        &sealed(&[5, 1, 1, 0, 0, 0, 0, 3, 9]),
        Duration::ZERO,
        &mut out,
    )
    .unwrap();
    assert_eq!(
        r.handle_datagram(
            addr(1),
            &sealed(&[5, 1, 1, 0, 0, 0, 1, 4, 9]),
            Duration::ZERO,
            &mut out
        ),
        Err(TransportError::Inconsistent)
    );
    assert_eq!(r.entries(), 0);
    assert!(fragment(&k, 1, 1, &vec![0; MAX_MESSAGE_LEN + 1]).is_err());
    assert!(fragment(&k, KIND_ACK, 1, &[1]).is_err());
    assert!(out.is_empty());
}

#[test]
fn partial_messages_time_out_when_idle_and_are_acked_meanwhile() {
    let mut r = reassembler();
    let f = fragment(&key(), KIND_DHT, 1, &[7u8; 3000]).unwrap();
    let t = Duration::from_secs(10);
    let mut out = Vec::new();
    r.handle_datagram(addr(1), &f[0], t, &mut out).unwrap();
    assert!(out.is_empty(), "a partial message is ACKed after a delay");
    assert_eq!(r.poll_timeout(), Some(t + Duration::from_millis(30)));
    r.handle_timeout(t + Duration::from_millis(30), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        parse(&key(), &out[0].payload).unwrap(),
        Frame::Ack(Ack {
            kind: KIND_DHT,
            msg_id: 1,
            frag_count: 3,
            held: 0b001
        })
    );
    // A repaired fragment later keeps it alive (idle timeout from the last new fragment).
    r.handle_datagram(addr(1), &f[2], t + Duration::from_secs(4), &mut out)
        .unwrap();
    r.handle_timeout(t + Duration::from_secs(8), &mut out);
    assert_eq!(r.entries(), 1);
    r.handle_timeout(t + Duration::from_secs(9), &mut out);
    assert_eq!(
        (r.entries(), r.memory_used(), r.stats().timed_out),
        (0, 0, 1)
    );
}

#[test]
fn a_delivered_message_is_never_delivered_again_and_is_re_acked() {
    let mut r = reassembler();
    let frags = fragment(&key(), KIND_HANDSHAKE, 5, &[3u8; 4000]).unwrap();
    let single = fragment(&key(), KIND_HANDSHAKE, 6, &[3u8; 52]).unwrap();
    let (m, _) = feed(&mut r, addr(1), &frags, Duration::ZERO);
    assert_eq!(m.len(), 1);
    let (m, _) = feed(&mut r, addr(1), &single, Duration::ZERO);
    assert_eq!(m.len(), 1);
    let t = Duration::from_secs(10);
    let (m, acks) = feed(&mut r, addr(1), &frags, t);
    assert!(m.is_empty());
    assert_eq!(acks.len(), frags.len());
    let (m, acks) = feed(&mut r, addr(1), &single, t);
    assert!(m.is_empty() && acks.len() == 1);
    assert!(acks.iter().all(|a| a.dst == addr(1)));
    // The same message id from another source is another message.
    let (m, _) = feed(&mut r, addr(2), &frags, t);
    assert_eq!(m.len(), 1);
    // After the record's lifetime it is forgotten (the sender gave up long before).
    r.handle_timeout(Duration::from_secs(31), &mut Vec::new());
    assert_eq!(r.remembered().0, 1);
}

#[test]
fn gap_acks_never_exceed_three_times_the_bytes_received() {
    // The smallest fragment that can open a partial message, then silence: the ACKs it
    // earns stay within 3× its size.
    let k = key();
    let d = k.seal(vec![5, 1, 1, 0, 0, 0, 0, 56, 0xaa]);
    assert_eq!(d.len(), 25);
    let mut r = reassembler();
    let mut out = Vec::new();
    r.handle_datagram(addr(1), &d, Duration::ZERO, &mut out)
        .unwrap();
    let mut now = Duration::ZERO;
    for _ in 0..100 {
        let Some(t) = r.poll_timeout() else { break };
        now = t;
        r.handle_timeout(now, &mut out);
    }
    let sent: usize = out.iter().map(|t| t.payload.len()).sum();
    assert!(sent <= 3 * d.len(), "{sent} bytes of ACKs for 25 received");
    assert!(r.stats().acks_limited >= 1);
    assert!(now <= Duration::from_secs(6));
}

#[test]
fn forged_and_replayed_acks_never_send_elsewhere_or_beyond_the_budget() {
    let k = key();
    let dst = addr(2);
    let mut s = Sender::new(RepairConfig::default());
    let msg = [9u8; 5000];
    let frags = fragment(&k, KIND_HANDSHAKE, 77, &msg).unwrap();
    let n = frags.len();
    let bytes: usize = frags.iter().map(Vec::len).sum();
    let mut sent = s.send(
        dst,
        KIND_HANDSHAKE,
        77,
        frags,
        Budget::UNVALIDATED_REPLY,
        None,
        Some(Duration::ZERO),
    );
    let mut now = Duration::ZERO;
    // The attacker (another address) ACKs nothing / everything; an ACK from elsewhere
    // matches nothing and never triggers a send.
    for (i, held) in [0u64, 0b1, u64::from(u8::MAX)].into_iter().enumerate() {
        let ack = Ack {
            kind: KIND_HANDSHAKE,
            msg_id: 77,
            frag_count: n as u8,
            held: held & fragment::mask(n as u8),
        };
        s.on_ack(addr(9 + i as u16), ack, now);
    }
    assert_eq!(s.stats().acks_matched, 0);
    // Replays of a partial ACK from the destination itself: still only the budget.
    for _ in 0..200 {
        let Some(t) = s.poll_timeout(now) else { break };
        now = t;
        s.on_ack(
            dst,
            Ack {
                kind: KIND_HANDSHAKE,
                msg_id: 77,
                frag_count: n as u8,
                held: 0,
            },
            now,
        );
        s.handle_timeout(now, &mut sent);
    }
    assert!(sent.iter().all(|t| t.dst == dst));
    let total: usize = sent.iter().map(|t| t.payload.len()).sum();
    assert!(total <= 3 * bytes, "{total} > 3 × {bytes}");
    assert_eq!(s.held(), (0, 0));
    // A forged "all held" ACK from the destination's address stops repair and nothing more.
    let frags = fragment(&k, KIND_HANDSHAKE, 78, &msg).unwrap();
    let first = s.send(
        dst,
        KIND_HANDSHAKE,
        78,
        frags,
        Budget::INITIATION,
        None,
        Some(now),
    );
    assert_eq!(first.len(), n);
    s.on_ack(dst, Ack::complete(KIND_HANDSHAKE, 78, n as u8), now);
    let mut out = Vec::new();
    s.handle_timeout(now + Duration::from_secs(20), &mut out);
    assert!(out.is_empty());
}

#[test]
fn a_new_initiation_supersedes_the_previous_one_to_the_same_destination() {
    let k = key();
    let mut s = Sender::new(RepairConfig::default());
    let f = |id| fragment(&k, KIND_HANDSHAKE, id, &[1u8; 3000]).unwrap();
    let _ = s.send(
        addr(2),
        1,
        1,
        f(1),
        Budget::INITIATION,
        Some(1),
        Some(Duration::ZERO),
    );
    let _ = s.send(
        addr(3),
        1,
        2,
        f(2),
        Budget::INITIATION,
        Some(1),
        Some(Duration::ZERO),
    );
    let _ = s.send(
        addr(2),
        1,
        3,
        f(3),
        Budget::INITIATION,
        Some(1),
        Some(Duration::ZERO),
    );
    assert_eq!(s.held().0, 2);
    assert_eq!(s.stats().superseded, 1);
    let mut out = Vec::new();
    s.handle_timeout(Duration::from_millis(200), &mut out);
    let ids: Vec<(SocketAddr, u32)> = out
        .iter()
        .map(|t| match parse(&k, &t.payload).unwrap() {
            Frame::Data(h, _) => (t.dst, h.msg_id),
            Frame::Ack(_) => panic!("a sender sends no ACK"),
        })
        .collect();
    assert!(ids.contains(&(addr(3), 2)) && ids.contains(&(addr(2), 3)));
    assert!(!ids.iter().any(|(_, id)| *id == 1));
}

#[test]
fn a_send_without_a_time_is_armed_at_the_next_timeout() {
    let mut t = Transport::new(key(), TransportConfig::default());
    let out = t
        .send(
            addr(2),
            KIND_HANDSHAKE,
            1,
            &[1u8; 3000],
            Budget::INITIATION,
            None,
            None,
        )
        .unwrap();
    assert_eq!(out.len(), 3);
    let now = Duration::from_secs(100);
    assert_eq!(t.poll_timeout(now), Some(now));
    let mut o = Vec::new();
    t.handle_timeout(now, &mut o);
    assert!(o.is_empty());
    assert_eq!(t.poll_timeout(now), Some(now + Duration::from_millis(200)));
}

/// A deterministic generator for the simulated network.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn chance(&mut self, percent: u8) -> bool {
        self.next() % 100 < u64::from(percent)
    }
}

struct Faults {
    loss: u8,
    dup: u8,
    reorder: u8,
}

/// Two transports exchanging messages over a lossy, duplicating, reordering network in virtual
/// time. Returns the messages each side delivered, keyed by (kind, msg_id), with counts.
fn simulate(
    seed: u64,
    faults: &Faults,
    a_msgs: &[(u32, Vec<u8>)],
    b_msgs: &[(u32, Vec<u8>)],
    budget: Budget,
) -> [HashMap<u32, (usize, Vec<u8>)>; 2] {
    let mut rng = Rng(seed | 1);
    let cfg = TransportConfig {
        repair: RepairConfig {
            lifetime: Duration::from_secs(60),
            max_rto: Duration::from_millis(500),
            ..RepairConfig::default()
        },
        reassembly: ReassemblyLimits {
            timeout: Duration::from_secs(20),
            max_gap_acks: 255,
            done_lifetime: Duration::from_secs(120),
            ..ReassemblyLimits::default()
        },
    };
    let mut ends = [Transport::new(key(), cfg), Transport::new(key(), cfg)];
    let addrs = [addr(1), addr(2)];
    let mut wire: BinaryHeap<(Reverse<Duration>, u64, usize, Vec<u8>)> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut got: [HashMap<u32, (usize, Vec<u8>)>; 2] = [HashMap::new(), HashMap::new()];
    let mut now = Duration::ZERO;
    let mut put =
        |wire: &mut BinaryHeap<_>, rng: &mut Rng, now: Duration, to: usize, t: Transmit| {
            assert_eq!(t.dst, addrs[to], "only ever sent to the peer");
            let copies = if rng.chance(faults.dup) { 2 } else { 1 };
            for _ in 0..copies {
                if rng.chance(faults.loss) {
                    continue;
                }
                let delay = if rng.chance(faults.reorder) {
                    Duration::from_millis(rng.next() % 200)
                } else {
                    Duration::from_millis(5)
                };
                seq += 1;
                wire.push((Reverse(now + delay), seq, to, t.payload.clone()));
            }
        };
    for (side, msgs) in [(0usize, a_msgs), (1, b_msgs)] {
        for (id, m) in msgs {
            let out = ends[side]
                .send(addrs[1 - side], KIND_DHT, *id, m, budget, None, Some(now))
                .unwrap();
            for t in out {
                put(&mut wire, &mut rng, now, 1 - side, t);
            }
        }
    }
    // Bounded in events and in virtual time.
    for _ in 0..200_000 {
        let next = [
            wire.peek().map(|w| w.0 .0),
            ends[0].poll_timeout(now),
            ends[1].poll_timeout(now),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { break };
        if next > Duration::from_secs(600) {
            break;
        }
        now = next.max(now);
        let mut out: [Vec<Transmit>; 2] = [Vec::new(), Vec::new()];
        while wire.peek().is_some_and(|w| w.0 .0 <= now) {
            let Some((_, _, to, d)) = wire.pop() else {
                break;
            };
            if let Ok(Some(m)) = ends[to].handle_datagram(addrs[1 - to], &d, now, &mut out[to]) {
                let e = got[to].entry(m.msg_id).or_insert((0, m.payload.clone()));
                e.0 += 1;
            }
        }
        for (side, o) in out.iter_mut().enumerate() {
            ends[side].handle_timeout(now, o);
        }
        for (side, o) in out.into_iter().enumerate() {
            for t in o {
                put(&mut wire, &mut rng, now, 1 - side, t);
            }
        }
    }
    for e in &ends {
        e.reassembler().check_invariants();
    }
    got
}

#[test]
fn a_first_contact_exchange_survives_thirty_percent_loss() {
    let m1 = vec![1u8; 12_184];
    let m2 = vec![2u8; 3229];
    let mut ok = 0;
    for seed in 0..100u64 {
        let faults = Faults {
            loss: 30,
            dup: 0,
            reorder: 0,
        };
        let got = simulate(seed, &faults, &[(1, m1.clone())], &[], Budget::INITIATION);
        let got2 = simulate(
            seed,
            &faults,
            &[],
            &[(2, m2.clone())],
            Budget::UNVALIDATED_REPLY,
        );
        if got[1].get(&1).is_some_and(|e| e.0 == 1) && got2[0].get(&2).is_some_and(|e| e.0 == 1) {
            ok += 1;
        }
    }
    // Without repair an 11-fragment message gets through 0.7^11 ≈ 2 % of the time.
    assert!(ok >= 95, "{ok} of 100");
}

proptest! {
    /// A flood of MAC-valid random fragments and ACKs from 300 sources never takes reassembly
    /// memory, entries or records above the caps, per source or in total, and the sender's
    /// repair state stays within its caps.
    #[test]
    fn memory_stays_bounded_under_a_flood(
        frames in proptest::collection::vec(
            (0u16..300, 0u8..4, 0u32..64, 0u8..60, 1u8..60, 1usize..1200),
            1..600,
        )
    ) {
        let limits = ReassemblyLimits {
            per_source_bytes: 20_000,
            per_source_entries: 4,
            total_bytes: 200_000,
            total_entries: 64,
            done_per_source: 3,
            done_total: 50,
            ..ReassemblyLimits::default()
        };
        let k = key();
        let cfg = TransportConfig {
            reassembly: limits,
            repair: RepairConfig { max_messages: 8, max_bytes: 40_000, ..RepairConfig::default() },
        };
        let mut t = Transport::new(k.clone(), cfg);
        for (i, (src, kind, id, idx, count, len)) in frames.into_iter().enumerate() {
            let now = Duration::from_millis(i as u64 * 7);
            if i % 5 == 0 {
                let _ = t.send(addr(src), KIND_DHT, id, &vec![1; len * 4], Budget::INITIATION, None, Some(now));
            }
            let mut d = vec![CONTROL_TYPE, kind];
            d.extend_from_slice(&id.to_le_bytes());
            d.extend_from_slice(&[idx, count]);
            d.resize(HEADER_LEN + len.min(MAX_FRAGMENT_PAYLOAD), 0xab);
            if kind == KIND_ACK {
                d.truncate(HEADER_LEN + usize::from(count).div_ceil(8));
            }
            let d = k.seal(d);
            let mut out = Vec::new();
            let _ = t.handle_datagram(addr(src), &d, now, &mut out);
            // Replies go to the datagram's source only.
            prop_assert!(out.iter().all(|o| o.dst == addr(src)));
            t.handle_timeout(now, &mut out);
            t.reassembler().check_invariants();
            let (n, b) = t.sender().held();
            prop_assert!(n <= 8 && b <= 40_000);
        }
    }

    /// Between two endpoints, with any loss below 100 % (here up to 60 %), duplication and
    /// reordering of fragments and ACKs, every message is delivered exactly once and intact
    /// when the budget allows enough repairs.
    #[test]
    fn every_message_is_delivered_exactly_once(
        seed in any::<u64>(),
        loss in 0u8..60,
        dup in 0u8..30,
        reorder in 0u8..50,
        a_lens in proptest::collection::vec(1usize..20_000, 1..6),
        b_lens in proptest::collection::vec(1usize..20_000, 0..6),
    ) {
        let mk = |lens: &[usize], base: u32| -> Vec<(u32, Vec<u8>)> {
            lens.iter()
                .zip(base..)
                .map(|(l, id)| (id, (0..*l).map(|i| (i as u32).wrapping_mul(id) as u8).collect()))
                .collect()
        };
        let a = mk(&a_lens, 100);
        let b = mk(&b_lens, 200);
        let budget = Budget { per_fragment: 60, copies: 60 };
        let got = simulate(seed, &Faults { loss, dup, reorder }, &a, &b, budget);
        for (side, sent) in [(1usize, &a), (0, &b)] {
            prop_assert_eq!(got[side].len(), sent.len());
            for (id, m) in sent {
                let e = got[side].get(id);
                prop_assert!(e.is_some_and(|e| e.0 == 1 && e.1 == *m), "message {} side {}", id, side);
            }
        }
    }

    /// Any sequence of ACKs — from any address, for any message id, any bitmap, replayed
    /// at any time — never makes the sender send to an address other than the message's
    /// destination, nor more than its budget.
    #[test]
    fn acks_never_redirect_or_exceed_the_budget(
        acks in proptest::collection::vec(
            (0u16..4, 0u32..3, 1u8..8, any::<u64>(), 0u64..3000),
            0..200,
        ),
        reply in any::<bool>(),
    ) {
        let k = key();
        let dst = addr(1);
        let budget = if reply { Budget::UNVALIDATED_REPLY } else { Budget::INITIATION };
        let mut s = Sender::new(RepairConfig::default());
        let frags = fragment(&k, KIND_HANDSHAKE, 1, &[4u8; 6000]).unwrap();
        let n = frags.len();
        let bytes: usize = frags.iter().map(Vec::len).sum();
        let mut sent = s.send(dst, KIND_HANDSHAKE, 1, frags, budget, None, Some(Duration::ZERO));
        let mut acks = acks;
        acks.sort_by_key(|a| a.4);
        for (src, id, count, held, at) in acks {
            let now = Duration::from_millis(at * 10);
            s.handle_timeout(now, &mut sent);
            let ack = Ack { kind: KIND_HANDSHAKE, msg_id: id, frag_count: count, held: held & fragment::mask(count) };
            s.on_ack(addr(src), ack, now);
        }
        s.handle_timeout(Duration::from_secs(60), &mut sent);
        prop_assert!(sent.iter().all(|t| t.dst == dst));
        let total: usize = sent.iter().map(|t| t.payload.len()).sum();
        prop_assert!(total <= usize::from(budget.copies) * bytes);
        let mut per = HashMap::new();
        for t in &sent {
            *per.entry(t.payload.clone()).or_insert(0u8) += 1;
        }
        prop_assert!(per.values().all(|c| *c <= budget.per_fragment));
        prop_assert!(per.len() <= n);
    }

    /// Whatever the loss (even 100 %), nothing is delivered twice and nothing goes beyond the
    /// budget.
    #[test]
    fn never_delivered_twice(seed in any::<u64>(), loss in 0u8..=100, dup in 0u8..50) {
        let a = vec![(1u32, vec![5u8; 9000]), (2, vec![6u8; 100])];
        let got = simulate(seed, &Faults { loss, dup, reorder: 20 }, &a, &[], Budget::INITIATION);
        prop_assert!(got[1].values().all(|e| e.0 == 1));
    }
}
