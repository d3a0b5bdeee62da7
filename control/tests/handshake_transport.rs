//! A full first-contact handshake carried by the control transport: M1 with the initiator's
//! full certificate is fragmented to ≤ 1200-byte datagrams (type byte 5), delivered out of
//! order, reassembled, answered; M2 goes back the same way. Then a second handshake with the
//! certificate hash, and the byte counts on the wire.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use shadowmesh_control::cert::{Ca, NodeCertRequest};
use shadowmesh_control::handshake::{
    Initiator, InitiatorEvent, InitiatorOptions, Responder, ResponderOutput,
};
use shadowmesh_control::identity::Identity;
use shadowmesh_control::rand::SystemRng;
use shadowmesh_control::transport::{
    fragment, FrameKey, Incoming, Reassembler, ReassemblyLimits, CONTROL_TYPE, KIND_HANDSHAKE,
    MAX_DATAGRAM,
};

fn req(id: &Identity, name: &str, ip: u8, now: u64) -> NodeCertRequest {
    NodeCertRequest {
        public: id.public().clone(),
        name: name.into(),
        ipv4: vec![(Ipv4Addr::new(100, 64, 0, ip), 10)],
        ipv6: vec![],
        subnets: vec![],
        groups: vec![],
        not_before: now - 60,
        not_after: now + 86_400,
    }
}

fn carry(frags: &[Vec<u8>], from: SocketAddr, r: &mut Reassembler, now: Duration) -> Vec<u8> {
    let mut out = None;
    // Deliver in reverse order to exercise reassembly.
    for f in frags.iter().rev() {
        assert!(f.len() <= MAX_DATAGRAM && f[0] == CONTROL_TYPE);
        let mut acks = Vec::new();
        if let Incoming::Message(m) = r
            .handle_datagram(from, f, now, &mut acks)
            .expect("valid fragment")
        {
            assert_eq!(m.kind, KIND_HANDSHAKE);
            out = Some(m.payload);
        }
    }
    out.expect("message completes")
}

#[test]
fn handshake_over_fragmented_transport() {
    let now = Duration::from_secs(1_800_000_000);
    let ca = Ca::generate("net").unwrap();
    let a = Identity::generate().unwrap();
    let b = Identity::generate().unwrap();
    let a_cert = ca.sign(req(&a, "a", 1, now.as_secs())).unwrap();
    let b_cert = ca.sign(req(&b, "b", 2, now.as_secs())).unwrap();
    let a_addr: SocketAddr = "198.51.100.1:51820".parse().unwrap();
    let b_addr: SocketAddr = "198.51.100.2:51820".parse().unwrap();
    let key = FrameKey::for_network(&ca.public().id());
    let mut ra = Reassembler::new(key.clone(), ReassemblyLimits::default());
    let mut rb = Reassembler::new(key.clone(), ReassemblyLimits::default());
    let mut resp = Responder::new(&b, &b_cert, ca.public(), Box::new(SystemRng::new())).unwrap();
    let mut rng = SystemRng::new();

    let mut sizes = Vec::new();
    for (k, hash) in [(0u32, false), (1, true)] {
        let t = now + Duration::from_secs(u64::from(k));
        let opts = InitiatorOptions {
            send_cert_hash: hash,
            ..Default::default()
        };
        let (mut init, m1) = Initiator::with_options(
            &a,
            &a_cert,
            &b_cert,
            ca.public(),
            100 + k,
            t,
            &mut rng,
            opts,
        )
        .unwrap();
        let f1 = fragment(&key, KIND_HANDSHAKE, k, &m1).unwrap();
        let got = carry(&f1, a_addr, &mut rb, t);
        let (m2, re) = match resp
            .handle_initiation(&got, a_addr, t, false, 200 + k)
            .unwrap()
        {
            ResponderOutput::Reply {
                m2,
                established,
                commit,
            } => {
                // What key confirmation commits (caches the full certificate for round 2).
                resp.commit(&commit, &established.peer_cert);
                (m2, established)
            }
            ResponderOutput::CookieReply(_) => panic!("not under load"),
        };
        let f2 = fragment(&key, KIND_HANDSHAKE, k, &m2).unwrap();
        let got2 = carry(&f2, b_addr, &mut ra, t);
        let ie = match init.handle_message(&got2, t).unwrap() {
            InitiatorEvent::Established(e) => e,
            InitiatorEvent::Resend(_) => panic!("expected M2"),
        };
        assert_eq!(*ie.send_key, *re.recv_key);
        assert_eq!(*ie.recv_key, *re.send_key);
        let wire1: usize = f1.iter().map(Vec::len).sum();
        let wire2: usize = f2.iter().map(Vec::len).sum();
        sizes.push((m1.len(), f1.len(), wire1, m2.len(), f2.len(), wire2));
    }
    for (m1, n1, w1, m2, n2, w2) in &sizes {
        println!("M1 {m1} B in {n1} datagrams ({w1} B), M2 {m2} B in {n2} datagrams ({w2} B)");
    }
    assert!(sizes[1].0 < sizes[0].0);
    assert_eq!((rb.entries(), ra.entries()), (0, 0));
}
