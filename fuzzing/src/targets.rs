//! The target bodies: one function per parser, each taking arbitrary bytes. `fuzz/` wraps each
//! in `fuzz_target!`; `tests/replay.rs` runs every committed corpus and regression file
//! through the same function, so the stable suite checks what the fuzzer found.
//!
//! A body must never panic on any input; a panic here is a bug in the code under test (or a
//! broken invariant). Bodies are thin, on public APIs, so they follow format changes easily.
//! Invariants are asserted where cheap: round trips, caps, and "only CA-signed certificates are
//! ever accepted".

use std::cell::RefCell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use shadowmesh_control::api;
use shadowmesh_control::armor;
use shadowmesh_control::cert::{CaPublic, NodeCert};
use shadowmesh_control::clock::Now;
use shadowmesh_control::config::Config;
use shadowmesh_control::cookie::{CookieChecker, StaticKeys};
use shadowmesh_control::dht::auth::Auth;
use shadowmesh_control::dht::certs::CertCache;
use shadowmesh_control::dht::key::Key;
use shadowmesh_control::dht::messages as dht_wire;
use shadowmesh_control::dht::record::{NodeRecord, MAX_RECORD_LEN};
use shadowmesh_control::dht::{Dht, DhtConfig};
use shadowmesh_control::handshake::messages::{
    CookieReply, COOKIE_REPLY_LEN, M1, M2, M2_LEN, M2_MAC1_AT, MAC_LEN,
};
use shadowmesh_control::handshake::{
    Established, HandshakeError, Initiator, InitiatorEvent, InitiatorState, Responder,
    ResponderOutput,
};
use shadowmesh_control::identity::{Identity, IdentityPublic};
use shadowmesh_control::rand::SystemRng;
use shadowmesh_control::transport::{
    FrameKey, Incoming, Reassembler, ReassemblyLimits, ENTRY_OVERHEAD, MAX_FRAGMENTS,
    MAX_FRAGMENT_PAYLOAD,
};
use shadowmesh_dataplane::ipc::proto::{decode_down, decode_up, encode_down, encode_up};
use shadowmesh_dataplane::wire::{self, Datagram, MAX_CONTROL_LEN, MIN_CONTROL_LEN, MSG_CONTROL};

use crate::fixtures::{net, src, INITIATOR_INDEX, NOW, RESPONDER_INDEX};
use crate::seal::{sealer, CERT_HASH};

/// A target body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_classify", wire_classify),
    ("handshake_m1", handshake_m1),
    ("handshake_m1_payload", handshake_m1_payload),
    ("handshake_initiator", handshake_initiator),
    ("transport_reassembly", transport_reassembly),
    ("cert", cert),
    ("armor", armor),
    ("ipc", ipc),
    ("config", config),
    ("api_request", api_request),
    ("dht_record", dht_record),
    ("dht_message", dht_message),
];

/// The target called `name`.
#[must_use]
pub fn by_name(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Data port classification (`dataplane::wire::classify`) and the inner-address reader.
pub fn wire_classify(data: &[u8]) {
    match wire::classify(data) {
        Datagram::Data(h) => {
            assert!(data.len() >= wire::MIN_DATA_LEN);
            assert_eq!(Some(&h.to_bytes()[..]), data.get(..wire::HEADER_LEN));
        }
        Datagram::Control => {
            assert_eq!(data.first(), Some(&MSG_CONTROL));
            assert!((MIN_CONTROL_LEN..=MAX_CONTROL_LEN).contains(&data.len()));
        }
        Datagram::Garbage(reason) => {
            let _ = reason.name();
        }
    }
    let _ = wire::inner_addrs(data);
    let _ = wire::inner_addrs(data.get(wire::HEADER_LEN..).unwrap_or_default());
}

fn responder() -> Responder<'static> {
    let n = net();
    Responder::new(&n.b, &n.b_cert, &n.ca, Box::new(SystemRng::new())).expect("fixture responder")
}

/// Checks what a responder answered: M2 of the right size naming our index, or a cookie reply;
/// an accepted peer always holds A's CA-signed certificate (never B's own).
fn check_responder_output(out: &ResponderOutput) {
    let n = net();
    match out {
        ResponderOutput::Reply {
            m2, established, ..
        } => {
            assert_eq!(m2.len(), M2_LEN);
            let parsed = M2::parse(m2).expect("our own M2 parses");
            assert_eq!(parsed.sender, RESPONDER_INDEX);
            check_established(established, false);
            let h = established.peer_cert.hash();
            // Only A: a certificate the CA never signed, and B's own (a reflection), are
            // refused.
            assert!(
                h == n.a_cert.hash(),
                "a certificate other than A's was accepted"
            );
        }
        ResponderOutput::CookieReply(c) => {
            assert_eq!(c.len(), COOKIE_REPLY_LEN);
            assert!(CookieReply::parse(c).is_ok());
        }
    }
}

fn check_established(e: &Established, initiator: bool) {
    assert_eq!(e.is_initiator, initiator);
    assert_eq!(e.needs_confirmation, !initiator);
    assert_eq!(e.peer_id, e.peer_cert.node_id());
}

/// An initiation (M1) as received by the responder B, three ways: as it is, under load (a
/// cookie reply, no KEM work), and with mac1 recomputed so that mutations get past the mac1
/// check to the KEM, X25519 and AEAD work (mac1 is keyed by B's public key, so anyone can).
pub fn handshake_m1(data: &[u8]) {
    for under_load in [false, true] {
        if let Ok(out) =
            responder().handle_initiation(data, src(), NOW, under_load, RESPONDER_INDEX)
        {
            check_responder_output(&out);
        }
    }
    let Ok(m1) = M1::parse(data) else {
        return;
    };
    let mac1 = StaticKeys::new(net().b.public()).mac1(data.get(..m1.mac1_at).unwrap_or_default());
    let mut fixed = data.to_vec();
    if let Some(slot) = fixed.get_mut(m1.mac1_at..m1.mac1_at + MAC_LEN) {
        slot.copy_from_slice(&mac1);
    }
    if fixed != data {
        if let Ok(out) = responder().handle_initiation(&fixed, src(), NOW, false, RESPONDER_INDEX) {
            check_responder_output(&out);
        }
    }
}

/// The responder's parser of the *decrypted* M1 payload: `data` is the plaintext, sealed into a
/// genuine-looking M1 from A by [`crate::seal`]. When it names a certificate by hash, B has A's
/// certificate cached (as after a first contact).
pub fn handshake_m1_payload(data: &[u8]) {
    let Some(m1) = sealer().seal(data) else {
        return;
    };
    let mut r = responder();
    if data.first() == Some(&CERT_HASH) {
        r.cache_cert(net().a_cert.clone(), NOW)
            .expect("fixture certificate verifies");
    }
    if let Ok(out) = r.handle_initiation(&m1, src(), NOW, false, RESPONDER_INDEX) {
        check_responder_output(&out);
    }
}

thread_local! {
    /// One initiation from A to B per thread, kept across inputs (building one costs an ML-KEM
    /// key generation and a certificate check); replaced when an input completes it.
    static INITIATION: RefCell<Option<InitiatorState<'static>>> = const { RefCell::new(None) };
}

fn new_initiation() -> InitiatorState<'static> {
    let n = net();
    let (state, _m1) = Initiator::new(
        &n.a,
        &n.a_cert,
        &n.b_cert,
        &n.ca,
        INITIATOR_INDEX,
        NOW,
        &mut SystemRng::new(),
    )
    .expect("fixture initiation");
    state
}

fn initiator_feed(state: &mut InitiatorState<'static>, msg: &[u8]) -> bool {
    let before = state.initiation().to_vec();
    match state.handle_message(msg, NOW) {
        Ok(InitiatorEvent::Established(e)) => {
            check_established(&e, true);
            assert_eq!(e.peer_cert.hash(), net().b_cert.hash());
            true
        }
        Ok(InitiatorEvent::Resend(m1)) => {
            // Only mac2 may change: the initiation itself is the same handshake.
            let keep = before.len() - MAC_LEN;
            assert_eq!(m1.len(), before.len());
            assert_eq!(m1.get(..keep), before.get(..keep));
            assert_eq!(state.initiation(), &m1[..]);
            false
        }
        Err(_) => {
            assert_eq!(
                state.initiation(),
                &before[..],
                "a refused message changed M1"
            );
            false
        }
    }
}

/// A datagram as received by the initiator A waiting for B's answer (M2 or cookie reply): as
/// it is; with the receiver index, mac1 and mac2 of an M2 fixed up (so mutations reach the
/// X25519, KEM and AEAD work); and, for a cookie-reply-shaped input, as a genuine cookie reply
/// sealed under B's public cookie key for A's current mac1 (which must be accepted).
pub fn handshake_initiator(data: &[u8]) {
    INITIATION.with(|cell| {
        let mut slot = cell.borrow_mut();
        let state = slot.get_or_insert_with(new_initiation);
        let mut done = initiator_feed(state, data);
        if !done && M2::parse(data).is_ok() {
            let mut fixed = data.to_vec();
            if let Some(r) = fixed.get_mut(8..12) {
                r.copy_from_slice(&INITIATOR_INDEX.to_le_bytes());
            }
            let mac1 =
                StaticKeys::new(net().a.public()).mac1(fixed.get(..M2_MAC1_AT).unwrap_or_default());
            if let Some(m) = fixed.get_mut(M2_MAC1_AT..) {
                m[..MAC_LEN].copy_from_slice(&mac1);
                m[MAC_LEN..].fill(0);
            }
            done = initiator_feed(state, &fixed);
        }
        if !done && CookieReply::parse(data).is_ok() {
            let mut fixed = data.to_vec();
            if let Some(r) = fixed.get_mut(4..8) {
                r.copy_from_slice(&INITIATOR_INDEX.to_le_bytes());
            }
            let _ = initiator_feed(state, &fixed);
            genuine_cookie_reply(state, data);
            // That initiation took its one cookie: start a fresh one for the next input.
            done = true;
        }
        if done {
            *slot = None;
        }
    });
}

/// B's cookie reply to A's current initiation, with a cookie secret and nonce of its own: the
/// initiator must accept it and resend the same M1 with a new mac2. The fuzzer's bytes pick
/// the source address the cookie is bound to.
fn genuine_cookie_reply(state: &mut InitiatorState<'static>, data: &[u8]) {
    let mut rng = SystemRng::new();
    let checker = CookieChecker::new(StaticKeys::new(net().b.public()), &mut rng);
    let Ok(m1) = M1::parse(state.initiation()) else {
        panic!("our own M1 does not parse");
    };
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let port = u16::from_le_bytes([byte(8), byte(9)]);
    let from = SocketAddr::from((Ipv4Addr::new(203, 0, 113, byte(10)), port));
    let Ok(reply) = checker.cookie_reply(from, NOW, INITIATOR_INDEX, m1.mac1(), &mut rng) else {
        return;
    };
    let before = state.initiation().to_vec();
    match state.handle_message(&reply, NOW) {
        Ok(InitiatorEvent::Resend(m1)) => {
            let keep = before.len() - MAC_LEN;
            assert_eq!(m1.get(..keep), before.get(..keep));
            assert!(state.cookie().is_some());
        }
        other => panic!("a genuine cookie reply was refused: {other:?}"),
    }
    // One cookie reply per initiation: the same reply again (a replay) is refused and
    // nothing is resent.
    let resent = state.initiation().to_vec();
    assert!(matches!(
        state.handle_message(&reply, NOW),
        Err(HandshakeError::CookieAlreadyTaken)
    ));
    assert_eq!(state.initiation(), &resent[..]);
}

/// Sources the reassembly target spreads datagrams over.
const SOURCES: usize = 4;

/// Fragment reassembly (`control::transport::Reassembler`) over a sequence of datagrams from a
/// few sources, checking its memory caps after every datagram.
///
/// Input: byte 0 picks the limits (even: small caps that the input can hit; odd: the
/// defaults), then records of `src u8` (low 2 bits: which source), `advance u8` (time step in
/// 50 ms units), `len u16 LE`, `len` datagram bytes (cut short at the end of the input).
pub fn transport_reassembly(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let limits = if mode % 2 == 0 {
        ReassemblyLimits {
            per_source_bytes: 3 * (MAX_FRAGMENT_PAYLOAD + ENTRY_OVERHEAD),
            per_source_entries: 2,
            total_bytes: 6 * (MAX_FRAGMENT_PAYLOAD + ENTRY_OVERHEAD),
            total_entries: 5,
            timeout: Duration::from_secs(5),
            ..ReassemblyLimits::default()
        }
    } else {
        ReassemblyLimits::default()
    };
    let sources: Vec<SocketAddr> = (0..SOURCES)
        .map(|i| {
            let last = u16::try_from(i).unwrap_or(0);
            SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last + 1), 51820))
        })
        .collect();
    let mut seen = [false; SOURCES];
    let mut r = Reassembler::new(FrameKey::for_network(&net().ca.id()), limits);
    let mut acks = Vec::new();
    let mut now = NOW;
    let mut last = r.stats();
    while let [s, adv, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (datagram, next) = tail.split_at(len);
        rest = next;
        let which = usize::from(*s) % SOURCES;
        seen[which] = true;
        now += Duration::from_millis(50 * u64::from(*adv));
        let from = sources[which];
        acks.clear();
        if let Ok(Incoming::Message(m)) = r.handle_datagram(from, datagram, now, &mut acks) {
            assert_eq!(m.src, from);
            assert!(!m.payload.is_empty());
            assert!(m.payload.len() <= MAX_FRAGMENTS * MAX_FRAGMENT_PAYLOAD);
        }
        let active = seen.iter().filter(|s| **s).count();
        assert!(r.memory_used() <= limits.total_bytes);
        assert!(r.entries() <= limits.total_entries);
        assert!(r.memory_used() <= active * limits.per_source_bytes);
        assert!(r.entries() <= active * limits.per_source_entries);
        assert!(r.memory_used() >= r.entries() * ENTRY_OVERHEAD);
        let st = r.stats();
        assert!(st.malformed >= last.malformed && st.completed >= last.completed);
        assert!(st.evicted >= last.evicted && st.timed_out >= last.timed_out);
        last = st;
        // ACKs go only to the datagram's source and are small.
        assert!(acks.iter().all(|a| a.dst == from && a.payload.len() <= 64));
        r.handle_timeout(now, &mut acks);
        if r.poll_timeout().is_some_and(|t| t <= now) {
            panic!("a timer due at {now:?} survived handle_timeout");
        }
    }
    r.handle_timeout(now + limits.timeout, &mut acks);
    assert_eq!(r.entries(), 0);
    assert_eq!(r.memory_used(), 0);
}

/// Binary certificate and key formats: `NodeCert::from_bytes` and `verify` (only the two
/// fixture certificates may verify: their exact bytes), `CaPublic`, `IdentityPublic` and the
/// secret key format.
pub fn cert(data: &[u8]) {
    let n = net();
    if let Ok(c) = NodeCert::from_bytes(data) {
        assert_eq!(c.to_bytes(), data);
        let _ = c.allowed_prefixes();
        let _ = c.check_validity(NOW.as_secs());
        if c.verify(&n.ca, NOW.as_secs()).is_ok() {
            assert!(
                data == n.a_cert.to_bytes() || data == n.b_cert.to_bytes(),
                "a certificate the CA never signed verifies"
            );
        }
        let again = NodeCert::from_bytes(c.to_bytes()).expect("re-parse");
        assert_eq!(again, c);
    }
    if let Ok(ca) = CaPublic::from_bytes(data) {
        let again = CaPublic::from_bytes(&ca.to_bytes()).expect("re-parse CA key");
        assert_eq!(again.id(), ca.id());
    }
    if let Ok(p) = IdentityPublic::from_bytes(data) {
        let again = IdentityPublic::from_bytes(&p.to_bytes()).expect("re-parse public key");
        assert_eq!(again.node_id(), p.node_id());
    }
    let _ = Identity::from_secret_bytes(data);
}

/// The armour labels of the project's files (certificate, CA public and secret key, node
/// public and secret key).
pub const LABELS: [&str; 5] = [
    "NODE CERT",
    "CA PUBLIC KEY",
    "CA KEY",
    "NODE PUBLIC KEY",
    "NODE KEY",
];

/// Armoured files (`control::armor::dearmor`, base64) and the typed loaders on top.
pub fn armor(data: &[u8]) {
    if let Ok(decoded) = armor::base64_decode(data) {
        let enc = armor::base64_encode(&decoded);
        let again = armor::base64_decode(enc.as_bytes()).expect("re-decode");
        assert_eq!(again.as_slice(), decoded.as_slice());
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for label in LABELS {
        if let Ok(bytes) = armor::dearmor(label, text) {
            let again = armor::dearmor(label, &armor::armor(label, &bytes)).expect("re-armour");
            assert_eq!(again.as_slice(), bytes.as_slice());
        }
    }
    let _ = NodeCert::from_armor(text);
    let _ = CaPublic::from_armor(text);
    let _ = IdentityPublic::from_armor(text);
    if let Ok(bytes) = armor::dearmor("NODE KEY", text) {
        let _ = Identity::from_secret_bytes(&bytes);
    }
}

/// The IPC codec, both directions: whatever decodes re-encodes, and the encoding decodes to
/// the same message and is canonical (encoding it again gives the same bytes).
pub fn ipc(data: &[u8]) {
    if let Ok(f) = decode_down(data) {
        let mut out = Vec::new();
        encode_down(&f, &mut out).expect("a decoded down message re-encodes");
        assert_eq!(decode_down(&out).expect("re-decode down"), f);
        let mut out2 = Vec::new();
        encode_down(&f, &mut out2).expect("encode twice");
        assert_eq!(out, out2);
        if let shadowmesh_dataplane::ipc::proto::DownFrame::Request { id, .. } = f {
            assert_eq!(shadowmesh_dataplane::ipc::proto::request_id(data), Some(id));
        }
    }
    if let Ok(f) = decode_up(data) {
        let mut out = Vec::new();
        encode_up(&f, &mut out).expect("a decoded up message re-encodes");
        assert_eq!(decode_up(&out).expect("re-decode up"), f);
    }
}

/// The configuration file parser (`Config::parse`) on any UTF-8 text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::parse(Path::new("/etc/shadowmesh/fuzz.toml"), text);
}

/// The admin API's request parser (`api::parse_request`), routing, and the JSON body of
/// connect/disconnect. A complete request stops being complete one byte shorter.
pub fn api_request(data: &[u8]) {
    let Ok(Some(req)) = api::parse_request(data) else {
        return;
    };
    assert!(req.body.len() <= api::MAX_BODY);
    assert!(!req.method.is_empty() && req.path.starts_with('/'));
    if let Some(shorter) = data.get(..data.len().saturating_sub(1)) {
        assert!(
            !matches!(api::parse_request(shorter), Ok(Some(_))),
            "a request parsed complete with its last byte missing"
        );
    }
    let _ = api::route(&req.method, &req.path);
    // The server reads the body of connect/disconnect this way (api.rs, `dispatch`).
    let _ = serde_json::from_slice::<api::PeerRequest>(&req.body);
}

/// DHT node records: `NodeRecord::decode` (full-cert and hash form, the fixture certificates
/// known by hash), the re-encoding round trip, `verify` at [`NOW`] (only records whose
/// certificate is a fixture one may verify) and `keys`/`valid_under`.
pub fn dht_record(data: &[u8]) {
    let n = net();
    let by_hash = |h: &[u8; 32]| {
        [&n.a_cert, &n.b_cert]
            .into_iter()
            .find(|c| &c.hash() == h)
            .cloned()
    };
    let Ok(rec) = NodeRecord::decode(data, &by_hash) else {
        return;
    };
    assert!(data.len() <= MAX_RECORD_LEN);
    // The re-decode of the hash-only form needs the record's own certificate, which a mutated
    // full-certificate record carries but the fixture network does not know.
    let own = |h: &[u8; 32]| (&rec.cert.hash() == h).then(|| rec.cert.clone());
    for full in [true, false] {
        let again = NodeRecord::decode(&rec.encode(full), &own).expect("re-decode");
        assert_eq!(again, rec);
    }
    let keys = rec.keys();
    assert!(keys.iter().all(|k| rec.valid_under(k)));
    let mut certs = CertCache::new(4);
    if rec.verify(&n.ca, &mut certs, NOW.as_secs()).is_ok() {
        assert!(
            rec.cert == n.a_cert || rec.cert == n.b_cert,
            "a record under a certificate the CA never signed verifies"
        );
    }
}

/// One DHT datagram into node A's [`Dht`], twice: as the fuzzer wrote it (whose tag essentially
/// never verifies, so this exercises parse and authentication) and, when it parses, re-sealed by
/// B under the real pair key with B's certificate (so the body reaches the state machine as
/// from an authenticated member). Invariants: the parse is canonical (re-encoding gives the
/// same bytes), and an input that fails authentication changes nothing and sends nothing,
/// except that a CA-valid HELLO is answered (it is untagged by design).
pub fn dht_message(data: &[u8]) {
    use rand_core::SeedableRng;
    let n = net();
    let now = Now {
        mono: Duration::from_secs(100),
        wall: NOW,
    };
    let mut rng = shadowmesh_control::rand::SeededRng::seed_from_u64(7);
    let src: SocketAddr = "198.51.100.2:51820".parse().expect("literal");
    let mut dht = Dht::new(&n.a, n.a_cert.clone(), n.ca.clone(), DhtConfig::default());
    let parsed = dht_wire::parse(data).ok().map(|p| {
        assert_eq!(
            dht_wire::encode(&p.msg),
            p.signed,
            "the parse is not canonical"
        );
        p.msg
    });

    dht.handle_message(src, data, now, &mut rng);
    let st = dht.stats();
    if st.unauthenticated + st.malformed == 1 {
        assert_eq!(
            dht.routing_table().count(),
            0,
            "unauthenticated input entered the table"
        );
        assert_eq!(
            dht.store().len(),
            0,
            "unauthenticated input stored a record"
        );
        assert!(
            dht.poll_transmit().is_none(),
            "unauthenticated input was answered"
        );
    }
    while dht.poll_transmit().is_some() {}
    while dht.poll_event().is_some() {}

    let Some(mut msg) = parsed else {
        return;
    };
    msg.sender = n.b_cert.node_id();
    msg.cert = Some(n.b_cert.to_bytes().to_vec());
    let kind = msg.body.kind();
    let mut b = Auth::new(&n.b, 4);
    let a_id = Key::for_node(&n.a_cert.node_id());
    let Some(sealed) = b.seal(
        dht_wire::encode(&msg),
        kind,
        &a_id,
        Some(&n.a_cert.body.public.x25519),
    ) else {
        return;
    };
    if sealed.len() > dht_wire::MAX_MESSAGE_LEN {
        return; // B's certificate made it longer than any message may be.
    }
    let before = dht.stats();
    dht.handle_message(src, &sealed, now, &mut rng);
    let after = dht.stats();
    assert_eq!(
        (after.malformed, after.unauthenticated),
        (before.malformed, before.unauthenticated),
        "B's re-sealed message did not authenticate"
    );
    for _ in 0..64 {
        if dht.poll_transmit().is_none() {
            break;
        }
    }
    while dht.poll_event().is_some() {}
    let later = Now {
        mono: now.mono + Duration::from_secs(30),
        wall: now.wall + Duration::from_secs(30),
    };
    dht.handle_timeout(later, &mut rng);
    assert!(
        dht.store().len() <= 1,
        "one STORE stored more than one record"
    );
}
