//! Real, valid inputs for every target, built with the project's own encoders (the initiator,
//! the responder, the fragmenter, the CA, the armourer, the IPC encoder), so the corpus starts
//! where the interesting code is. `examples/gen_corpus.rs` writes them to `fuzz/corpus/`;
//! re-run it whenever a format changes (see `docs/fuzzing.md`).
//!
//! Handshake messages carry fresh ephemeral keys, so their bytes differ from run to run; the
//! structure (and whether they are accepted) does not.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use shadowmesh_control::armor;
use shadowmesh_control::handshake::{
    tai64n, CipherChoice, Initiator, InitiatorOptions, Responder, ResponderOutput,
};
use shadowmesh_control::rand::SystemRng;
use shadowmesh_control::transport::{fragment, FrameKey, KIND_DHT, KIND_HANDSHAKE};
use shadowmesh_dataplane::ipc::proto::{
    encode_down, encode_up, DownFrame, DownMsg, ErrorCode, Hello, InstallSession, PeerStats, Role,
    Slot, Stats, UpFrame, UpMsg, WorkerStats, CIPHER_AES_256_GCM, DROP_CAUSES,
};
use shadowmesh_dataplane::wire::{DataHeader, MSG_CONTROL};
use zeroize::Zeroizing;

use crate::fixtures::{net, src, INITIATOR_INDEX, NOW, RESPONDER_INDEX};
use crate::seal::{default_plaintext, plaintext};

/// One seed: the target it is for, a file name, the bytes.
pub type Seed = (&'static str, String, Vec<u8>);

/// Named seeds of one target.
type Named = Vec<(&'static str, Vec<u8>)>;

/// Every seed of every target.
#[must_use]
pub fn all() -> Vec<Seed> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, items: Vec<(&str, Vec<u8>)>| {
        out.extend(
            items
                .into_iter()
                .map(|(name, bytes)| (target, format!("seed-{name}"), bytes)),
        );
    };
    add("wire_classify", wire());
    let (m1s, m2, cookie) = handshakes();
    add("handshake_m1", m1s.clone());
    add("handshake_m1_payload", payloads());
    add(
        "handshake_initiator",
        vec![("m2", m2), ("cookie-reply", cookie)],
    );
    add("transport_reassembly", reassembly(&m1s[0].1));
    add("cert", certs());
    add("armor", armoured());
    add("ipc", ipc());
    add("config", configs());
    add("api_request", requests());
    add("dht_record", dht_records());
    add("dht_message", dht_messages());
    out
}

fn ipv4_packet(dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 100, 64, 0, 1];
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]);
    p
}

fn wire() -> Named {
    let h = DataHeader {
        receiver_index: 7,
        counter: 42,
        lane: 1,
    };
    let mut data = h.to_bytes().to_vec();
    data.extend_from_slice(&ipv4_packet(Ipv4Addr::new(100, 64, 0, 2)));
    data.extend_from_slice(&[0xaa; 16]);
    let mut reserved = data.clone();
    reserved[2] = 1;
    let mut control = vec![MSG_CONTROL, 1, 0, 0, 0, 0, 0, 1];
    control.extend_from_slice(&[0x55; 100]);
    vec![
        ("data", data),
        ("data-reserved", reserved),
        ("data-short", h.to_bytes().to_vec()),
        ("control", control),
        ("control-short", vec![MSG_CONTROL, 1]),
        ("unknown-type", vec![9; 40]),
        ("inner-v4", ipv4_packet(Ipv4Addr::new(100, 64, 0, 3))),
    ]
}

/// Real M1s (full certificate, certificate hash, one AEAD, with a cookie), a real M2 and a
/// real cookie reply for [`INITIATOR_INDEX`].
fn handshakes() -> (Named, Vec<u8>, Vec<u8>) {
    let n = net();
    let start = |opts: InitiatorOptions| {
        Initiator::with_options(
            &n.a,
            &n.a_cert,
            &n.b_cert,
            &n.ca,
            INITIATOR_INDEX,
            NOW,
            &mut SystemRng::new(),
            opts,
        )
        .expect("fixture initiation")
    };
    let (mut state, m1_full) = start(InitiatorOptions::default());
    let (_, m1_hash) = start(InitiatorOptions {
        send_cert_hash: true,
        ..Default::default()
    });
    let (_, m1_chacha) = start(InitiatorOptions {
        ciphers: vec![CipherChoice::ChaCha20Poly1305],
        ..Default::default()
    });
    let mut r = Responder::new(&n.b, &n.b_cert, &n.ca, Box::new(SystemRng::new()))
        .expect("fixture responder");
    let cookie = match r.handle_initiation(&m1_full, src(), NOW, true, RESPONDER_INDEX) {
        Ok(ResponderOutput::CookieReply(c)) => c,
        other => panic!("expected a cookie reply under load, got {other:?}"),
    };
    let m1_mac2 = state
        .handle_cookie_reply(&cookie)
        .expect("cookie reply opens");
    let m2 = match r.handle_initiation(&m1_full, src(), NOW, false, RESPONDER_INDEX) {
        Ok(ResponderOutput::Reply { m2, .. }) => m2,
        other => panic!("expected M2, got {other:?}"),
    };
    let m1s = vec![
        ("m1-full-cert", m1_full),
        ("m1-cert-hash", m1_hash),
        ("m1-chacha", m1_chacha),
        ("m1-mac2", m1_mac2),
    ];
    (m1s, m2, cookie)
}

fn payloads() -> Named {
    let n = net();
    let ts = tai64n(NOW);
    let mut trailing = default_plaintext(false);
    trailing.push(0);
    vec![
        ("full-cert", default_plaintext(false)),
        ("cert-hash", default_plaintext(true)),
        ("one-cipher", plaintext(&n.a_cert, false, ts, &[2])),
        ("unknown-cipher", plaintext(&n.a_cert, true, ts, &[9])),
        ("own-cert", plaintext(&n.b_cert, false, ts, &[1, 2])),
        ("old-timestamp", plaintext(&n.a_cert, true, [0; 12], &[1])),
        ("trailing-byte", trailing),
    ]
}

/// Encodes `(source, time advance, datagram)` records in the reassembly target's format.
fn records(mode: u8, items: &[(u8, u8, &[u8])]) -> Vec<u8> {
    let mut out = vec![mode];
    for (s, adv, d) in items {
        out.push(*s);
        out.push(*adv);
        out.extend_from_slice(&u16::try_from(d.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(d);
    }
    out
}

fn reassembly(m1: &[u8]) -> Named {
    let key = FrameKey::for_network(&net().ca.id());
    let frags = fragment(&key, KIND_HANDSHAKE, 1, m1).expect("fragment M1");
    let other = fragment(&key, KIND_DHT, 2, &[0x42; 3000]).expect("fragment DHT message");
    let in_order: Vec<(u8, u8, &[u8])> = frags.iter().map(|f| (0, 0, &f[..])).collect();
    let reversed: Vec<(u8, u8, &[u8])> = frags.iter().rev().map(|f| (0, 1, &f[..])).collect();
    let mut interleaved = Vec::new();
    for (i, f) in frags.iter().enumerate() {
        interleaved.push((1, 0, &f[..]));
        if let Some(o) = other.get(i) {
            interleaved.push((2, 0, &o[..]));
        }
    }
    // Half a message, then a pause past the timeout, then the rest (which cannot complete).
    let half = frags.len() / 2;
    let mut timed_out: Vec<(u8, u8, &[u8])> =
        frags[..half].iter().map(|f| (3, 0, &f[..])).collect();
    timed_out.push((3, 120, &frags[half][..]));
    timed_out.extend(frags[half + 1..].iter().map(|f| (3, 0, &f[..])));
    let mut dup_and_bad: Vec<(u8, u8, &[u8])> = vec![(0, 0, &other[0][..]), (0, 0, &other[0][..])];
    let mut inconsistent = other[1].clone();
    inconsistent[7] = 9;
    let single = fragment(&key, KIND_DHT, 3, b"hello").expect("fragment");
    dup_and_bad.push((0, 0, &inconsistent[..]));
    dup_and_bad.push((1, 0, &single[0][..]));
    dup_and_bad.push((1, 0, &[5, 1, 0, 0, 0, 0, 0, 0][..]));
    vec![
        ("in-order-small-caps", records(0, &in_order)),
        ("in-order-default", records(1, &in_order)),
        ("reversed", records(1, &reversed)),
        ("two-sources-small-caps", records(0, &interleaved)),
        ("two-sources-default", records(1, &interleaved)),
        ("timeout", records(1, &timed_out)),
        ("duplicate-inconsistent", records(0, &dup_and_bad)),
    ]
}

fn certs() -> Named {
    let n = net();
    vec![
        ("node-cert-a", n.a_cert.to_bytes().to_vec()),
        ("node-cert-b", n.b_cert.to_bytes().to_vec()),
        ("ca-public", n.ca.to_bytes()),
        ("node-public", n.a.public().to_bytes()),
        (
            "node-secret",
            n.a.to_secret_bytes().expect("export fixture key").to_vec(),
        ),
    ]
}

fn armoured() -> Named {
    let n = net();
    let secret = n.a.to_secret_bytes().expect("export fixture key");
    vec![
        ("node-cert", n.a_cert.to_armor().into_bytes()),
        ("ca-public", n.ca.to_armor().into_bytes()),
        ("node-public", n.a.public().to_armor().into_bytes()),
        (
            "node-key",
            armor::armor("NODE KEY", &secret).as_bytes().to_vec(),
        ),
        (
            "ca-key",
            include_str!("../fixtures/ca.key").as_bytes().to_vec(),
        ),
        ("base64", armor::base64_encode(b"shadowmesh").into_bytes()),
    ]
}

fn down(frame: &DownFrame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_down(frame, &mut out).expect("encode down");
    out
}

fn up(frame: &UpFrame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_up(frame, &mut out).expect("encode up");
    out
}

fn ipc() -> Named {
    let v4: SocketAddr = "198.51.100.2:51820".parse().expect("addr");
    let v6 = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2), 51820));
    let req = |id, msg| DownFrame::Request { id, msg };
    let install = InstallSession {
        peer: 1,
        slot: Slot::Next,
        local_index: 7,
        remote_index: 9,
        cipher: CIPHER_AES_256_GCM,
        send_key: Zeroizing::new([1; 32]),
        recv_key: Zeroizing::new([2; 32]),
        rekey_after_secs: 120,
        reject_after_secs: 180,
    };
    let stats = Stats {
        workers: vec![WorkerStats {
            rx_packets: 1,
            rx_bytes: 2,
            tx_packets: 3,
            tx_bytes: 4,
            drops: [5; DROP_CAUSES],
            uring_enters: 6,
            held: 7,
            hold_flushed: 8,
            relayed_packets: 9,
            relayed_bytes: 10,
        }],
        peers: vec![PeerStats {
            peer: 1,
            last_rx_ms: Some(99),
            ..Default::default()
        }],
        next_peer: Some(2),
    };
    vec![
        (
            "down-hello",
            down(&DownFrame::Hello(Hello::ours(Role::Control))),
        ),
        (
            "down-install",
            down(&req(1, DownMsg::InstallSession(install))),
        ),
        (
            "down-remove-session",
            down(&req(2, DownMsg::RemoveSession { local_index: 7 })),
        ),
        (
            "down-remove-peer",
            down(&req(3, DownMsg::RemovePeer { peer: 1 })),
        ),
        (
            "down-set-routes",
            down(&req(
                4,
                DownMsg::SetRoutes {
                    peer: 1,
                    prefixes: vec![
                        (IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)), 32),
                        (IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)), 128),
                    ],
                },
            )),
        ),
        (
            "down-set-endpoint",
            down(&req(5, DownMsg::SetEndpoint { peer: 1, addr: v6 })),
        ),
        (
            "down-send-control",
            down(&req(
                6,
                DownMsg::SendControl {
                    dst: v4,
                    payload: vec![5, 1, 0, 0, 0, 0, 0, 1, 9],
                },
            )),
        ),
        (
            "down-get-stats",
            down(&req(7, DownMsg::GetStats { first_peer: 0 })),
        ),
        ("down-shutdown", down(&req(8, DownMsg::Shutdown))),
        (
            "down-set-relay",
            down(&req(
                9,
                DownMsg::SetRelay {
                    from: v4,
                    index: 7,
                    to: v6,
                    rate_bytes_per_sec: 1_000_000,
                },
            )),
        ),
        (
            "down-remove-relay",
            down(&req(10, DownMsg::RemoveRelay { from: v4, index: 7 })),
        ),
        (
            "up-hello",
            up(&UpFrame::Hello(Hello::ours(Role::Dataplane))),
        ),
        (
            "up-ack",
            up(&UpFrame::Reply {
                id: 1,
                msg: UpMsg::Ack,
            }),
        ),
        (
            "up-error",
            up(&UpFrame::Reply {
                id: 2,
                msg: UpMsg::error(ErrorCode::REJECTED, "no such peer é"),
            }),
        ),
        (
            "up-stats",
            up(&UpFrame::Reply {
                id: 3,
                msg: UpMsg::Stats(stats),
            }),
        ),
        (
            "up-control-received",
            up(&UpFrame::Event(UpMsg::ControlReceived {
                src: v4,
                payload: vec![5; 20],
            })),
        ),
        (
            "up-no-session",
            up(&UpFrame::Event(UpMsg::NoSession {
                peer: Some(1),
                dst: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
            })),
        ),
        (
            "up-rekey-needed",
            up(&UpFrame::Event(UpMsg::RekeyNeeded {
                peer: 1,
                local_index: 7,
            })),
        ),
        (
            "up-endpoint-changed",
            up(&UpFrame::Event(UpMsg::EndpointChanged {
                peer: 1,
                addr: v6,
            })),
        ),
    ]
}

const FULL_CONFIG: &str = r#"[node]
name = "alpha"
key  = "node.key"
cert = "node.cert"
ca   = "ca.pub"

[dataplane]
socket = "/run/shadowmesh/dataplane.sock"
tun = "shadowmesh0"
mtu = 1420
listen_port = 51820
bind = "0.0.0.0"
workers = 0
backend = "uring"
pin = true
binary = "/usr/local/bin/shadowmesh-dataplane"

[control]
admin_socket = "/run/shadowmesh/admin.sock"
log_level = "info"
rekey_after_secs = 120
reject_after_secs = 180
pid_file = "/run/shadowmesh/admin.pid"
binary = "/usr/local/bin/shadowmesh-control"

[[peer]]
cert = "beta.cert"
endpoint = "198.51.100.2:51820"
name = "beta"

[[peer]]
cert = "/etc/shadowmesh/gamma.cert"
endpoint = "[2001:db8::3]:51820"
"#;

const MINIMAL_CONFIG: &str = r#"[node]
name = "n"
key = "k"
cert = "c"
ca = "a"
"#;

fn configs() -> Named {
    vec![
        ("full", FULL_CONFIG.as_bytes().to_vec()),
        ("minimal", MINIMAL_CONFIG.as_bytes().to_vec()),
        (
            "bad-values",
            MINIMAL_CONFIG
                .replace(
                    "name = \"n\"",
                    "name = \"  \"\n[control]\nrekey_after_secs = 999\nreject_after_secs = 1",
                )
                .into_bytes(),
        ),
    ]
}

fn requests() -> Named {
    let connect = b"POST /v1/connect HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"peer\":\"beta\"}\n";
    vec![
        (
            "health",
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("status", b"GET /v1/status HTTP/1.0\r\n\r\n".to_vec()),
        (
            "peers",
            b"GET /v1/peers HTTP/1.1\r\nAccept: */*\r\n\r\n".to_vec(),
        ),
        ("connect", connect.to_vec()),
        (
            "disconnect",
            b"POST /v1/disconnect HTTP/1.1\r\ncontent-length: 15\r\n\r\n{\"peer\":\"beta\"}"
                .to_vec(),
        ),
        (
            "chunked",
            b"POST /v1/connect HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        ),
        ("partial", b"GET /v1/status HTTP/1.1\r\nHo".to_vec()),
    ]
}

/// Node records signed by the fixture nodes: full-cert and hash form, with relays, the
/// endpoint maximum.
fn dht_records() -> Named {
    use shadowmesh_control::dht::record::{NodeRecord, MAX_ENDPOINTS};
    let n = net();
    let t = NOW.as_secs();
    let eps = vec![
        src(),
        SocketAddr::new(IpAddr::V6("2001:db8::7".parse().expect("v6")), 51_820),
    ];
    let a =
        NodeRecord::sign(&n.a, &n.a_cert, eps.clone(), vec![], 1, t + 600).expect("sign record A");
    let b = NodeRecord::sign(&n.b, &n.b_cert, eps, vec![n.a.node_id(); 2], 7, t + 3000)
        .expect("sign record B");
    let many = NodeRecord::sign(
        &n.a,
        &n.a_cert,
        vec![src(); MAX_ENDPOINTS],
        vec![],
        2,
        t + 60,
    )
    .expect("sign record max");
    vec![
        ("a-full", a.encode(true)),
        ("a-hash", a.encode(false)),
        ("b-relays-hash", b.encode(false)),
        ("max-endpoints-full", many.encode(true)),
    ]
}

/// One DHT message of every kind from B to A, sealed under their real pair key (HELLO
/// untagged), the STORE and VALUE carrying a real record.
fn dht_messages() -> Named {
    use shadowmesh_control::dht::auth::Auth;
    use shadowmesh_control::dht::key::Key;
    use shadowmesh_control::dht::messages::{
        self as wire, Body, Message, StoreResult, WireContact,
    };
    use shadowmesh_control::dht::record::NodeRecord;
    let n = net();
    let t = NOW.as_secs();
    let record = NodeRecord::sign(&n.b, &n.b_cert, vec![src()], vec![], 3, t + 600)
        .expect("sign record B")
        .encode(true);
    let b_key = Key::for_node(&n.b_cert.node_id());
    let a_key = Key::for_node(&n.a_cert.node_id());
    let contact = WireContact {
        id: a_key,
        x25519: n.a_cert.body.public.x25519,
        addr: src(),
    };
    let bodies = vec![
        ("hello", Body::Hello),
        ("hello-ack", Body::HelloAck { observed: src() }),
        ("ping", Body::Ping),
        ("pong", Body::Pong { observed: src() }),
        ("find-node", Body::FindNode { target: a_key }),
        (
            "nodes",
            Body::Nodes {
                observed: src(),
                nodes: vec![contact],
            },
        ),
        ("find-value", Body::FindValue { key: b_key }),
        (
            "value",
            Body::Value {
                observed: src(),
                record: Some(record.clone()),
                nodes: vec![contact],
            },
        ),
        ("store", Body::Store { key: b_key, record }),
        (
            "stored",
            Body::Stored {
                observed: src(),
                result: StoreResult::Ok,
            },
        ),
        (
            "introduce",
            Body::Introduce {
                target: b_key,
                token: [7; wire::TOKEN_LEN],
                candidates: vec![src()],
            },
        ),
        (
            "introduced",
            Body::Introduced {
                observed: src(),
                forwarded: true,
            },
        ),
        (
            "introduction",
            Body::Introduction {
                from: a_key,
                token: [7; wire::TOKEN_LEN],
                candidates: vec![src(), src()],
            },
        ),
        (
            "introduction-ack",
            Body::IntroductionAck { observed: src() },
        ),
    ];
    let mut auth = Auth::new(&n.b, 4);
    bodies
        .into_iter()
        .map(|(name, body)| {
            let kind = body.kind();
            let msg = Message {
                flags: 0,
                sender: n.b_cert.node_id(),
                txid: 42,
                cert: Some(n.b_cert.to_bytes().to_vec()),
                body,
            };
            let sealed = auth
                .seal(
                    wire::encode(&msg),
                    kind,
                    &a_key,
                    Some(&n.a_cert.body.public.x25519),
                )
                .expect("seal");
            (name, sealed)
        })
        .collect()
}
