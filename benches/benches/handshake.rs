//! Handshake costs: a full hybrid handshake (initiator M1 + responder M2 + initiator finish)
//! on one core, first contact and with a cached certificate, plus each primitive it uses
//! (ML-KEM-1024, ML-DSA-87, X25519, certificate verification). Prints the bytes on the wire.
//!
//! Run: `cargo bench -p shadowmesh-benches --bench handshake -- --warm-up-time 1 --measurement-time 3`.
#![allow(missing_docs)]

use std::cell::Cell;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use aws_lc_rs::agreement::{self, UnparsedPublicKey, X25519};
use aws_lc_rs::kem::{Ciphertext, DecapsulationKey, EncapsulationKey, ML_KEM_1024};
use aws_lc_rs::signature::{self, KeyPair, PqdsaKeyPair, ML_DSA_87, ML_DSA_87_SIGNING};
use criterion::{criterion_group, criterion_main, Criterion};
use shadowmesh_control::cert::{Ca, NodeCert, NodeCertRequest};
use shadowmesh_control::handshake::{
    messages::COOKIE_REPLY_LEN, Initiator, InitiatorOptions, Responder, ResponderOutput,
};
use shadowmesh_control::identity::Identity;
use shadowmesh_control::rand::SystemRng;
use shadowmesh_control::transport::{fragment, FrameKey};

const T0: u64 = 1_800_000_000;

fn req(id: &Identity, ip: u8) -> NodeCertRequest {
    NodeCertRequest {
        public: id.public().clone(),
        name: format!("node{ip}"),
        ipv4: vec![(Ipv4Addr::new(100, 64, 0, ip), 10)],
        ipv6: vec![("fd00::1".parse().expect("v6"), 64)],
        subnets: vec![],
        groups: vec!["bench".into()],
        not_before: T0 - 60,
        not_after: T0 + 86_400 * 365,
    }
}

struct Net {
    ca: Ca,
    a: Identity,
    a_cert: NodeCert,
    b: Identity,
    b_cert: NodeCert,
}

fn net() -> Net {
    let ca = Ca::generate("bench").expect("ca");
    let a = Identity::generate().expect("id");
    let b = Identity::generate().expect("id");
    let a_cert = ca.sign(req(&a, 1)).expect("cert");
    let b_cert = ca.sign(req(&b, 2)).expect("cert");
    Net {
        ca,
        a,
        a_cert,
        b,
        b_cert,
    }
}

/// One full handshake; returns (M1 bytes, M2 bytes).
fn handshake(n: &Net, r: &mut Responder<'_>, now: Duration, hash: bool) -> (usize, usize) {
    let src: SocketAddr = "198.51.100.1:51820".parse().expect("addr");
    let opts = InitiatorOptions {
        send_cert_hash: hash,
        ..Default::default()
    };
    let mut rng = SystemRng::new();
    let (mut i, m1) = Initiator::with_options(
        &n.a,
        &n.a_cert,
        &n.b_cert,
        n.ca.public(),
        1,
        now,
        &mut rng,
        opts,
    )
    .expect("m1");
    let ResponderOutput::Reply {
        m2,
        commit,
        established,
    } = r
        .handle_initiation(&m1, src, now, false, 2)
        .expect("responder")
    else {
        panic!("cookie reply without load");
    };
    // What key confirmation commits (caches a full certificate for the hash form).
    r.commit(&commit, &established.peer_cert);
    let e = i.handle_response(&m2, now).expect("finish");
    black_box(e);
    (m1.len(), m2.len())
}

fn print_sizes(n: &Net) {
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new()))
        .expect("responder");
    let mut line = String::new();
    for (k, hash) in [(0u64, false), (1, true)] {
        let (m1, m2) = handshake(n, &mut r, Duration::from_secs(T0 + k), hash);
        let key = FrameKey::for_network(&[0; 32]);
        let d1 = fragment(&key, 1, 0, &vec![0; m1]).expect("frag").len();
        let d2 = fragment(&key, 1, 0, &vec![0; m2]).expect("frag").len();
        let what = if hash { "cached cert" } else { "first contact" };
        line.push_str(&format!(
            "  {what}: M1 {m1} B ({d1} datagrams) + M2 {m2} B ({d2} datagrams) = {} B (+{} B frame headers and MACs)\n",
            m1 + m2,
            24 * (d1 + d2)
        ));
    }
    println!(
        "handshake bytes on the wire:\n{line}  cookie reply {COOKIE_REPLY_LEN} B; certificate {} B; WireGuard 148 + 92 = 240 B",
        n.a_cert.to_bytes().len()
    );
}

fn bench_handshake(c: &mut Criterion) {
    let n = net();
    print_sizes(&n);
    let mut r = Responder::new(&n.b, &n.b_cert, n.ca.public(), Box::new(SystemRng::new()))
        .expect("responder");
    // The cached-certificate case needs the initiator's certificate in the responder's cache.
    r.cache_cert(n.a_cert.clone(), Duration::from_secs(T0))
        .expect("cache");
    // Timestamps must strictly increase per initiator, so each iteration advances 1 µs.
    let t = Cell::new(Duration::from_secs(T0 + 10));
    let tick = || {
        let now = t.get() + Duration::from_micros(1);
        t.set(now);
        now
    };
    let mut g = c.benchmark_group("handshake");
    g.bench_function("full_cached_cert", |b| {
        b.iter(|| handshake(&n, &mut r, tick(), true))
    });
    g.bench_function("full_first_contact", |b| {
        b.iter(|| handshake(&n, &mut r, tick(), false))
    });
    let src: SocketAddr = "198.51.100.1:51820".parse().expect("addr");
    let mut rng = SystemRng::new();
    g.bench_function("initiator_m1", |b| {
        b.iter(|| {
            Initiator::new(
                &n.a,
                &n.a_cert,
                &n.b_cert,
                n.ca.public(),
                1,
                tick(),
                &mut rng,
            )
            .expect("m1")
            .1
        })
    });
    g.bench_function("responder_cookie_reply_under_load", |b| {
        let (_, m1) = Initiator::new(
            &n.a,
            &n.a_cert,
            &n.b_cert,
            n.ca.public(),
            1,
            tick(),
            &mut rng,
        )
        .expect("m1");
        b.iter(|| {
            r.handle_initiation(black_box(&m1), src, Duration::from_secs(T0), true, 2)
                .expect("cookie")
        })
    });
    g.bench_function("cert_verify", |b| {
        b.iter(|| n.a_cert.verify(n.ca.public(), T0).expect("verify"))
    });
    g.finish();
}

fn bench_primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitives");
    let dk = DecapsulationKey::generate(&ML_KEM_1024).expect("kem");
    let ek_bytes = dk
        .encapsulation_key()
        .and_then(|e| e.key_bytes())
        .expect("ek");
    let ek = EncapsulationKey::new(&ML_KEM_1024, ek_bytes.as_ref()).expect("ek");
    let (ct, _) = ek.encapsulate().expect("encaps");
    g.bench_function("mlkem1024_keygen", |b| {
        b.iter(|| DecapsulationKey::generate(&ML_KEM_1024).expect("kem"))
    });
    g.bench_function("mlkem1024_encaps", |b| {
        b.iter(|| {
            EncapsulationKey::new(&ML_KEM_1024, ek_bytes.as_ref())
                .expect("ek")
                .encapsulate()
                .expect("encaps")
        })
    });
    g.bench_function("mlkem1024_decaps", |b| {
        b.iter(|| {
            dk.decapsulate(Ciphertext::from(ct.as_ref()))
                .expect("decaps")
        })
    });
    let kp = PqdsaKeyPair::generate(&ML_DSA_87_SIGNING).expect("dsa");
    let msg = [7u8; 4400];
    let mut sig = vec![0u8; ML_DSA_87_SIGNING.signature_len()];
    kp.sign(&msg, &mut sig).expect("sign");
    g.bench_function("mldsa87_sign_4400B", |b| {
        let mut s = vec![0u8; ML_DSA_87_SIGNING.signature_len()];
        b.iter(|| kp.sign(black_box(&msg), &mut s).expect("sign"))
    });
    g.bench_function("mldsa87_verify_4400B", |b| {
        let pk = signature::UnparsedPublicKey::new(&ML_DSA_87, kp.public_key().as_ref());
        b.iter(|| pk.verify(black_box(&msg), &sig).expect("verify"))
    });
    let x = agreement::PrivateKey::generate(&X25519).expect("x");
    let peer = agreement::PrivateKey::generate(&X25519)
        .and_then(|k| k.compute_public_key())
        .expect("x");
    g.bench_function("x25519_agree", |b| {
        b.iter(|| {
            agreement::agree(
                &x,
                UnparsedPublicKey::new(&X25519, peer.as_ref()),
                (),
                |s| Ok(s[0]),
            )
            .expect("agree")
        })
    });
    g.bench_function("x25519_keygen", |b| {
        b.iter(|| {
            agreement::PrivateKey::generate(&X25519)
                .and_then(|k| k.compute_public_key())
                .expect("x")
        })
    });
    g.finish();
}

criterion_group!(benches, bench_handshake, bench_primitives);
criterion_main!(benches);
