//! Handshake acceptance tests: key agreement for both AEADs, every-byte tamper checks of M1,
//! M2 and the cookie reply, replay, certificate refusals, load behaviour and the 3× rule.

use std::net::SocketAddr;
use std::time::Duration;

use crate::rand::SystemRng;

use super::messages::{M1, M2_MAC1_AT, MAC_LEN};
use super::*;
use crate::cert::tests::request;
use crate::cert::{Ca, CertError, NodeCert};
use crate::cookie::StaticKeys;
use crate::identity::Identity;

const NOW: Duration = Duration::from_secs(1_800_000_000);

struct Net {
    ca: Ca,
    a: Identity,
    a_cert: NodeCert,
    b: Identity,
    b_cert: NodeCert,
}

fn net() -> Net {
    let ca = Ca::generate("net").unwrap();
    let a = Identity::generate().unwrap();
    let b = Identity::generate().unwrap();
    let t = NOW.as_secs();
    let a_cert = ca.sign(request(&a, "a", t - 10, t + 3600)).unwrap();
    let b_cert = ca.sign(request(&b, "b", t - 10, t + 3600)).unwrap();
    Net {
        ca,
        a,
        a_cert,
        b,
        b_cert,
    }
}

fn src() -> SocketAddr {
    "198.51.100.7:40000".parse().unwrap()
}

fn start<'a>(n: &'a Net, opts: InitiatorOptions, now: Duration) -> (InitiatorState<'a>, Vec<u8>) {
    Initiator::with_options(
        &n.a,
        &n.a_cert,
        &n.b_cert,
        n.ca.public(),
        11,
        now,
        &mut SystemRng::new(),
        opts,
    )
    .unwrap()
}

fn reply(out: ResponderOutput) -> (Vec<u8>, Box<Established>) {
    let (m2, est, _) = reply_parts(out);
    (m2, est)
}

fn reply_parts(out: ResponderOutput) -> (Vec<u8>, Box<Established>, Commit) {
    match out {
        ResponderOutput::Reply {
            m2,
            established,
            commit,
        } => (m2, established, commit),
        ResponderOutput::CookieReply(_) => panic!("expected M2, got a cookie reply"),
    }
}

/// M2 for `m1`, then what key confirmation would commit.
fn reply_confirmed(
    r: &mut Responder<'_>,
    m1: &[u8],
    now: Duration,
    index: u32,
) -> (Vec<u8>, Box<Established>) {
    let (m2, est, c) = reply_parts(r.handle_initiation(m1, src(), now, false, index).unwrap());
    r.commit(&c, &est.peer_cert);
    (m2, est)
}

#[test]
fn both_sides_derive_the_same_keys_for_both_aeads() {
    let n = net();
    for cipher in [CipherChoice::Aes256Gcm, CipherChoice::ChaCha20Poly1305] {
        let mut r =
            Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
        let opts = InitiatorOptions {
            ciphers: vec![cipher],
            ..Default::default()
        };
        let (mut i, m1) = start(&n, opts, NOW);
        let (m2, re) = reply(r.handle_initiation(&m1, src(), NOW, false, 22).unwrap());
        let ie = i.handle_response(&m2, NOW).unwrap();
        assert_eq!(*ie.send_key, *re.recv_key);
        assert_eq!(*ie.recv_key, *re.send_key);
        assert_ne!(*ie.send_key, *ie.recv_key);
        assert_eq!((ie.cipher, re.cipher), (cipher, cipher));
        assert_eq!((ie.local_index, ie.remote_index), (11, 22));
        assert_eq!((re.local_index, re.remote_index), (22, 11));
        assert_eq!(ie.peer_id, n.b.node_id());
        assert_eq!(re.peer_id, n.a.node_id());
        assert!(ie.is_initiator && !ie.needs_confirmation);
        assert!(!re.is_initiator && re.needs_confirmation);
        assert_eq!(r.kem_ops(), 3);
        // A second M2 for a completed handshake is refused.
        assert!(matches!(
            i.handle_response(&m2, NOW),
            Err(HandshakeError::AlreadyEstablished)
        ));
    }
}

#[test]
fn responder_preference_falls_back_and_no_common_cipher_fails() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    r.set_ciphers(vec![CipherChoice::ChaCha20Poly1305]);
    let (mut i, m1) = start(&n, InitiatorOptions::default(), NOW);
    let (m2, re) = reply(r.handle_initiation(&m1, src(), NOW, false, 1).unwrap());
    assert_eq!(re.cipher, CipherChoice::ChaCha20Poly1305);
    assert_eq!(i.handle_response(&m2, NOW).unwrap().cipher, re.cipher);
    let opts = InitiatorOptions {
        ciphers: vec![CipherChoice::Aes256Gcm],
        ..Default::default()
    };
    let (_, m1) = start(&n, opts, NOW + Duration::from_secs(1));
    assert!(matches!(
        r.handle_initiation(&m1, src(), NOW + Duration::from_secs(1), false, 2),
        Err(HandshakeError::NoCommonCipher)
    ));
}

#[test]
fn cached_certificate_hash_first_contact_then_hash() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    let hash_opts = InitiatorOptions {
        send_cert_hash: true,
        ..Default::default()
    };
    let (_, m1) = start(&n, hash_opts.clone(), NOW);
    assert!(matches!(
        r.handle_initiation(&m1, src(), NOW, false, 1),
        Err(HandshakeError::UnknownCertHash)
    ));
    let (_, full) = start(
        &n,
        InitiatorOptions::default(),
        NOW + Duration::from_secs(1),
    );
    // The full certificate is cached only once that session is confirmed.
    let (_, est, c) = reply_parts(
        r.handle_initiation(&full, src(), NOW + Duration::from_secs(1), false, 1)
            .unwrap(),
    );
    let t = NOW + Duration::from_secs(2);
    let (_, early) = start(&n, hash_opts.clone(), t);
    assert!(matches!(
        r.handle_initiation(&early, src(), t, false, 1),
        Err(HandshakeError::UnknownCertHash)
    ));
    r.commit(&c, &est.peer_cert);
    let (mut i, m1) = start(&n, hash_opts, t);
    assert!(
        m1.len() < full.len() - 8000,
        "hash form {} vs full {}",
        m1.len(),
        full.len()
    );
    let (m2, re) = reply(r.handle_initiation(&m1, src(), t, false, 2).unwrap());
    assert_eq!(*i.handle_response(&m2, t).unwrap().send_key, *re.recv_key);
}

#[test]
fn certificate_cache_verifies_on_insert_and_rechecks_validity() {
    let n = net();
    let t = NOW.as_secs();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    r.mark_validated(src());
    let other = Ca::generate("other").unwrap();
    let foreign = other.sign(request(&n.a, "a", t - 10, t + 10)).unwrap();
    assert!(matches!(
        r.cache_cert(foreign, NOW),
        Err(HandshakeError::Cert(CertError::WrongIssuer))
    ));
    // A short-lived certificate, cached while valid, is refused by hash once expired.
    let short = n.ca.sign(request(&n.a, "a", t - 10, t + 5)).unwrap();
    r.cache_cert(short.clone(), NOW).unwrap();
    let hash_opts = InitiatorOptions {
        send_cert_hash: true,
        ..Default::default()
    };
    let start_with = |now: Duration| {
        Initiator::with_options(
            &n.a,
            &short,
            &n.b_cert,
            n.ca.public(),
            1,
            now,
            &mut SystemRng::new(),
            hash_opts.clone(),
        )
        .unwrap()
        .1
    };
    let _ = reply(
        r.handle_initiation(&start_with(NOW), src(), NOW, false, 1)
            .unwrap(),
    );
    let later = NOW + Duration::from_secs(6);
    assert!(matches!(
        r.handle_initiation(&start_with(later), src(), later, false, 2),
        Err(HandshakeError::Cert(CertError::Expired { .. }))
    ));
}

/// Flipping any byte of M1 makes the responder refuse it, with the original mac1 (caught by
/// mac1) and with mac1 recomputed by an attacker who knows the responder's public keys
/// (caught by the transcript/AEAD). The untouched M1 is accepted afterwards.
#[test]
fn every_byte_of_m1_is_authenticated() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    let (_, m1) = start(&n, InitiatorOptions::default(), NOW);
    let keys = StaticKeys::new(n.b.public());
    let mac1_at = M1::parse(&m1).unwrap().mac1_at;
    for pos in 0..m1.len() {
        let mut bad = m1.clone();
        bad[pos] ^= 0x80;
        assert!(
            r.handle_initiation(&bad, src(), NOW, false, 1).is_err(),
            "flip at {pos}"
        );
        if pos < mac1_at {
            let mac = keys.mac1(&bad[..mac1_at]);
            bad[mac1_at..mac1_at + MAC_LEN].copy_from_slice(&mac);
            assert!(
                r.handle_initiation(&bad, src(), NOW, false, 1).is_err(),
                "flip at {pos} with recomputed mac1"
            );
        }
    }
    r.mark_validated(src());
    let _ = reply(r.handle_initiation(&m1, src(), NOW, false, 1).unwrap());
}

#[test]
fn every_byte_of_m2_is_authenticated() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    let (mut i, m1) = start(&n, InitiatorOptions::default(), NOW);
    let (m2, re) = reply(r.handle_initiation(&m1, src(), NOW, false, 5).unwrap());
    let keys = StaticKeys::new(n.a.public());
    for pos in 0..m2.len() {
        let mut bad = m2.clone();
        bad[pos] ^= 0x01;
        assert!(i.handle_response(&bad, NOW).is_err(), "flip at {pos}");
        if pos < M2_MAC1_AT {
            let mac = keys.mac1(&bad[..M2_MAC1_AT]);
            bad[M2_MAC1_AT..M2_MAC1_AT + MAC_LEN].copy_from_slice(&mac);
            assert!(
                i.handle_response(&bad, NOW).is_err(),
                "flip at {pos}, mac1 recomputed"
            );
        }
    }
    for cut in [0, 1, 12, M2_MAC1_AT, m2.len() - 1] {
        assert!(i.handle_response(&m2[..cut], NOW).is_err());
    }
    // The state survived all of that: the genuine M2 still completes it.
    assert_eq!(*i.handle_response(&m2, NOW).unwrap().send_key, *re.recv_key);
}

#[test]
fn cookie_round_trip_and_every_byte_of_the_reply_is_authenticated() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    let (mut i, m1) = start(&n, InitiatorOptions::default(), NOW);
    let cookie_reply = match r.handle_initiation(&m1, src(), NOW, true, 3).unwrap() {
        ResponderOutput::CookieReply(c) => c,
        ResponderOutput::Reply { .. } => panic!("under load without mac2 must get a cookie"),
    };
    assert_eq!(cookie_reply.len(), messages::COOKIE_REPLY_LEN);
    assert_eq!(r.kem_ops(), 0);
    for pos in 0..cookie_reply.len() {
        let mut bad = cookie_reply.clone();
        bad[pos] ^= 0x01;
        assert!(i.handle_cookie_reply(&bad).is_err(), "flip at {pos}");
    }
    assert!(i.cookie().is_none());
    let m1b = match i.handle_message(&cookie_reply, NOW).unwrap() {
        InitiatorEvent::Resend(m) => m,
        InitiatorEvent::Established(_) => panic!("cookie reply cannot establish"),
    };
    assert_eq!(m1b[..m1b.len() - MAC_LEN], m1[..m1.len() - MAC_LEN]);
    assert_ne!(m1b[m1b.len() - MAC_LEN..], [0u8; MAC_LEN]);
    // A cookie for another address is useless.
    let other: SocketAddr = "198.51.100.8:40000".parse().unwrap();
    assert!(matches!(
        r.handle_initiation(&m1b, other, NOW, true, 3).unwrap(),
        ResponderOutput::CookieReply(_)
    ));
    assert_eq!(r.kem_ops(), 0);
    let (m2, re) = reply(r.handle_initiation(&m1b, src(), NOW, true, 3).unwrap());
    let ie = match i.handle_message(&m2, NOW).unwrap() {
        InitiatorEvent::Established(e) => e,
        InitiatorEvent::Resend(_) => panic!("M2 must establish"),
    };
    assert_eq!(*ie.send_key, *re.recv_key);
}

#[test]
fn replayed_and_stale_initiations_are_refused() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    let (_, m1) = start(&n, InitiatorOptions::default(), NOW);
    // Before confirmation nothing is committed: the same M1 is still answerable (the driver
    // refuses duplicates of a pending initiation itself).
    let _ = reply(r.handle_initiation(&m1, src(), NOW, false, 1).unwrap());
    assert!(r.last_timestamp(&n.a_cert.node_id()).is_none());
    r.mark_validated(src());
    let _ = reply_confirmed(&mut r, &m1, NOW, 1);
    assert!(r.last_timestamp(&n.a_cert.node_id()).is_some());
    let later = NOW + Duration::from_secs(5);
    assert!(matches!(
        r.handle_initiation(&m1, src(), later, false, 2),
        Err(HandshakeError::Replay)
    ));
    // A fresh handshake stamped earlier than the accepted one is stale too.
    let (_, old) = start(
        &n,
        InitiatorOptions::default(),
        NOW - Duration::from_nanos(1),
    );
    assert!(matches!(
        r.handle_initiation(&old, src(), later, false, 3),
        Err(HandshakeError::Replay)
    ));
    let (_, newer) = start(
        &n,
        InitiatorOptions::default(),
        NOW + Duration::from_nanos(1),
    );
    r.mark_validated(src());
    let _ = reply(r.handle_initiation(&newer, src(), later, false, 4).unwrap());
}

#[test]
fn other_ca_expired_and_not_yet_valid_certificates_are_refused() {
    let n = net();
    let other = Ca::generate("other").unwrap();
    let t = NOW.as_secs();
    // Initiator refuses a responder certificate from another CA.
    let b_other = other.sign(request(&n.b, "b", t - 10, t + 10)).unwrap();
    let err = Initiator::new(
        &n.a,
        &n.a_cert,
        &b_other,
        n.ca.public(),
        1,
        NOW,
        &mut SystemRng::new(),
    )
    .unwrap_err();
    assert!(matches!(err, HandshakeError::Cert(CertError::WrongIssuer)));
    // Responder refuses initiator certificates that are foreign, expired, or not yet valid.
    let cases = [
        (
            other.sign(request(&n.a, "a", t - 10, t + 10)).unwrap(),
            "other CA",
        ),
        (
            n.ca.sign(request(&n.a, "a", t - 100, t - 1)).unwrap(),
            "expired",
        ),
        (
            n.ca.sign(request(&n.a, "a", t + 1, t + 100)).unwrap(),
            "not yet valid",
        ),
    ];
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    r.mark_validated(src());
    for (k, (cert, what)) in cases.iter().enumerate() {
        let now = NOW + Duration::from_nanos(k as u64);
        let (_, m1) = Initiator::new(
            &n.a,
            cert,
            &n.b_cert,
            n.ca.public(),
            1,
            now,
            &mut SystemRng::new(),
        )
        .unwrap();
        let res = r.handle_initiation(&m1, src(), now, false, 1);
        let ok = matches!(
            (&res, k),
            (Err(HandshakeError::Cert(CertError::WrongIssuer)), 0)
                | (Err(HandshakeError::Cert(CertError::Expired { .. })), 1)
                | (Err(HandshakeError::Cert(CertError::NotYetValid { .. })), 2)
        );
        assert!(ok, "{what}: {res:?}");
    }
    // Expired responder certificate: the initiator refuses to start.
    let b_old = n.ca.sign(request(&n.b, "b", t - 100, t - 1)).unwrap();
    assert!(Initiator::new(
        &n.a,
        &n.a_cert,
        &b_old,
        n.ca.public(),
        1,
        NOW,
        &mut SystemRng::new()
    )
    .is_err());
}

#[test]
fn under_load_no_kem_work_for_unvalidated_sources() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    let (_, m1) = start(&n, InitiatorOptions::default(), NOW);
    for k in 0..50u16 {
        let s = SocketAddr::from(([203, 0, 113, (k % 200) as u8], 1000 + k));
        // Junk (bad mac1), valid M1 without mac2, and M1 with a forged mac2.
        let mut junk = m1.clone();
        junk[100] ^= 1;
        assert!(matches!(
            r.handle_initiation(&junk, s, NOW, true, 1),
            Err(HandshakeError::BadMac1)
        ));
        assert!(matches!(
            r.handle_initiation(&m1, s, NOW, true, 1).unwrap(),
            ResponderOutput::CookieReply(_)
        ));
        let mut forged = m1.clone();
        let l = forged.len();
        forged[l - 1] = 0x42;
        assert!(matches!(
            r.handle_initiation(&forged, s, NOW, true, 1).unwrap(),
            ResponderOutput::CookieReply(_)
        ));
    }
    assert_eq!(
        r.kem_ops(),
        0,
        "no KEM operation before the source is validated"
    );
}

#[test]
fn three_times_rule_holds_across_junk_and_valid_initiations() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    let addrs: Vec<SocketAddr> = (1..=4u8)
        .map(|k| SocketAddr::from(([198, 51, 100, k], 5000)))
        .collect();
    let mut rx = [0u64; 4];
    let mut tx = [0u64; 4];
    let mut rng = SystemRng::new();
    for step in 0..40u64 {
        let a = (step % 4) as usize;
        let now = NOW + Duration::from_millis(step * 10);
        let hash = step >= 8;
        let opts = InitiatorOptions {
            send_cert_hash: hash,
            ..Default::default()
        };
        let (_, mut msg) = Initiator::with_options(
            &n.a,
            &n.a_cert,
            &n.b_cert,
            n.ca.public(),
            1,
            now,
            &mut rng,
            opts,
        )
        .unwrap();
        match step % 5 {
            0 => msg.truncate(100), // short junk
            1 => msg[50] ^= 0xff,   // bad mac1
            _ => {}
        }
        rx[a] += msg.len() as u64;
        let under_load = step % 3 == 0;
        match r.handle_initiation(&msg, addrs[a], now, under_load, 1) {
            Ok(ResponderOutput::Reply { m2, .. }) => tx[a] += m2.len() as u64,
            Ok(ResponderOutput::CookieReply(c)) => tx[a] += c.len() as u64,
            Err(_) => {}
        }
        assert!(
            tx[a] <= 3 * rx[a],
            "step {step}: sent {} > 3 × {}",
            tx[a],
            rx[a]
        );
    }
    for (k, a) in addrs.iter().enumerate() {
        let (crx, ctx) = r.address_counts(*a);
        assert!(ctx <= 3 * crx);
        assert!(crx <= rx[k] && ctx >= tx[k]);
        assert!(tx[k] > 0, "every address got some answer in this sequence");
    }
}

#[test]
fn invalid_encapsulation_key_is_an_error_not_a_panic() {
    assert!(matches!(
        encaps(&[0xff; crate::identity::MLKEM_EK_LEN]),
        Err(HandshakeError::BadPublicKey(_))
    ));
    assert!(matches!(
        encaps(&[0; 10]),
        Err(HandshakeError::BadPublicKey(_))
    ));
}

#[test]
fn tai64n_orders_like_time() {
    let a = tai64n(Duration::new(5, 999_999_999));
    let b = tai64n(Duration::new(6, 0));
    assert!(a < b);
}

/// An attacker holding only public data (both certificates, the CA's public key) builds an M1
/// claiming to be A, with a far-future timestamp: everything it can compute is right except
/// the static-static DH, so B refuses it before any state changes, and A's real initiation
/// that follows is accepted.
#[test]
fn initiation_forged_from_public_certificates_is_refused_and_changes_nothing() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    r.mark_validated(src());
    let mallory = Identity::generate().unwrap();
    let future = NOW + Duration::from_secs(10 * 365 * 86_400);
    for send_cert_hash in [false, true] {
        let (_, forged) = Initiator::with_options(
            &mallory,
            &n.a_cert,
            &n.b_cert,
            n.ca.public(),
            66,
            NOW,
            &mut SystemRng::new(),
            InitiatorOptions {
                send_cert_hash,
                timestamp: Some(future),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(M1::parse(&forged).is_ok());
        let err = r
            .handle_initiation(&forged, src(), NOW, false, 9)
            .unwrap_err();
        // The full-certificate form fails at the timestamp payload; the hash form earlier,
        // since B has not cached A's certificate.
        assert!(
            matches!(
                err,
                HandshakeError::Decrypt | HandshakeError::UnknownCertHash
            ),
            "{err}"
        );
    }
    assert!(r.last_timestamp(&n.a_cert.node_id()).is_none());
    let (mut i, m1) = start(&n, InitiatorOptions::default(), NOW);
    let (m2, re) = reply_confirmed(&mut r, &m1, NOW, 10);
    assert_eq!(*i.handle_response(&m2, NOW).unwrap().send_key, *re.recv_key);
    // Once A's certificate is cached, the hash form of the forgery fails at the DH too.
    let (_, forged) = Initiator::with_options(
        &mallory,
        &n.a_cert,
        &n.b_cert,
        n.ca.public(),
        67,
        NOW,
        &mut SystemRng::new(),
        InitiatorOptions {
            send_cert_hash: true,
            timestamp: Some(future),
            ..Default::default()
        },
    )
    .unwrap();
    let before = r.last_timestamp(&n.a_cert.node_id());
    assert!(matches!(
        r.handle_initiation(&forged, src(), NOW, false, 11),
        Err(HandshakeError::Decrypt)
    ));
    assert_eq!(r.last_timestamp(&n.a_cert.node_id()), before);
}

#[test]
fn timestamps_too_far_ahead_of_our_clock_are_refused() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    r.mark_validated(src());
    let opts = |ahead: Duration| InitiatorOptions {
        timestamp: Some(NOW + ahead),
        ..Default::default()
    };
    let (_, m1) = start(&n, opts(MAX_FUTURE_SKEW + Duration::from_secs(1)), NOW);
    let err = r.handle_initiation(&m1, src(), NOW, false, 1).unwrap_err();
    assert!(
        matches!(err, HandshakeError::FutureTimestamp { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("NTP"));
    let (_, m1) = start(&n, opts(MAX_FUTURE_SKEW - Duration::from_secs(1)), NOW);
    let _ = reply(r.handle_initiation(&m1, src(), NOW, false, 2).unwrap());
}

#[test]
fn our_own_certificate_from_the_network_is_refused() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    r.mark_validated(src());
    // B's own identity and certificate, aimed at B (a reflection).
    let (_, m1) = Initiator::new(
        &n.b,
        &n.b_cert,
        &n.b_cert,
        n.ca.public(),
        3,
        NOW,
        &mut SystemRng::new(),
    )
    .unwrap();
    assert!(matches!(
        r.handle_initiation(&m1, src(), NOW, false, 4),
        Err(HandshakeError::OwnCertificate)
    ));
}

#[test]
fn a_second_cookie_reply_for_one_initiation_is_refused() {
    let n = net();
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new())).unwrap();
    let (mut i, m1) = start(&n, InitiatorOptions::default(), NOW);
    let ResponderOutput::CookieReply(c) = r.handle_initiation(&m1, src(), NOW, true, 3).unwrap()
    else {
        panic!("under load without mac2 must get a cookie");
    };
    assert!(matches!(
        i.handle_message(&c, NOW),
        Ok(InitiatorEvent::Resend(_))
    ));
    // The same reply again (replayed by anyone on the path) makes us send nothing.
    assert!(matches!(
        i.handle_message(&c, NOW),
        Err(HandshakeError::CookieAlreadyTaken)
    ));
}
