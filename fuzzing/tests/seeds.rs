//! The committed seeds are what they claim to be: real messages that the code under test
//! accepts, so the fuzzer starts past the first checks. A format change makes these fail until
//! the corpus is regenerated (`cargo run -p shadowmesh-fuzzing --example gen_corpus`).

use std::path::Path;

use shadowmesh_control::handshake::{Responder, ResponderOutput};
use shadowmesh_control::transport::{FrameKey, Incoming, Reassembler, ReassemblyLimits};
use shadowmesh_dataplane::ipc::proto::{decode_down, decode_up};
use shadowmesh_fuzzing::fixtures::{net, src, NOW, RESPONDER_INDEX};

fn seed(target: &str, name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn committed_m1_is_answered_with_m2() {
    let n = net();
    for name in ["seed-m1-full-cert", "seed-m1-chacha"] {
        let mut r = Responder::new(
            &n.b,
            &n.b_cert,
            &n.ca,
            Box::new(shadowmesh_control::rand::SystemRng::new()),
        )
        .unwrap();
        let out = r
            .handle_initiation(
                &seed("handshake_m1", name),
                src(),
                NOW,
                false,
                RESPONDER_INDEX,
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(matches!(out, ResponderOutput::Reply { .. }), "{name}");
    }
}

#[test]
fn committed_fragments_reassemble() {
    let rec = seed("transport_reassembly", "seed-in-order-default");
    let mut rest = &rec[1..];
    let mut r = Reassembler::new(
        FrameKey::for_network(&net().ca.id()),
        ReassemblyLimits::default(),
    );
    let mut done = 0;
    while let [_, _, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1]));
        if matches!(
            r.handle_datagram(src(), &tail[..len], NOW, &mut Vec::new()),
            Ok(Incoming::Message(_))
        ) {
            done += 1;
        }
        rest = &tail[len..];
    }
    assert_eq!(done, 1);
}

#[test]
fn committed_ipc_frames_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ipc");
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let b = std::fs::read(e.path()).unwrap();
        if name.starts_with("seed-down") {
            decode_down(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("seed-up") {
            decode_up(&b).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn committed_config_and_request_parse() {
    let text = String::from_utf8(seed("config", "seed-full")).unwrap();
    shadowmesh_control::config::Config::parse(Path::new("/etc/shadowmesh/x.toml"), &text).unwrap();
    let req = shadowmesh_control::api::parse_request(&seed("api_request", "seed-connect"))
        .unwrap()
        .unwrap();
    assert_eq!(req.path, "/v1/connect");
}

#[test]
fn committed_dht_records_verify() {
    use shadowmesh_control::dht::certs::CertCache;
    use shadowmesh_control::dht::record::NodeRecord;
    let n = net();
    let by_hash = |h: &[u8; 32]| {
        [&n.a_cert, &n.b_cert]
            .into_iter()
            .find(|c| &c.hash() == h)
            .cloned()
    };
    let mut certs = CertCache::new(4);
    for name in [
        "seed-a-full",
        "seed-a-hash",
        "seed-b-relays-hash",
        "seed-max-endpoints-full",
    ] {
        let rec = NodeRecord::decode(&seed("dht_record", name), &by_hash)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        rec.verify(&n.ca, &mut certs, NOW.as_secs())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert_eq!(certs.stats().verifications, 2);
}
