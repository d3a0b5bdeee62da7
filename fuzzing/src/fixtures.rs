//! The fixed network every target runs in: a CA, node A (the initiator) and node B (the
//! responder), with certificates valid around [`NOW`].
//!
//! The keys are committed under `fuzzing/fixtures/` (throw-away test keys, used by nothing
//! but the fuzzer) so that a committed M1 or M2 stays valid from one run to the next: mac1 is
//! keyed by the receiver's public key, and a fresh identity per run would turn every seed into
//! junk that stops at the first check. They are loaded once per process ([`net`]).
//! [`generate`] makes a new set (`gen_corpus --new-keys`), after which the corpus must be
//! regenerated too.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use shadowmesh_control::armor::dearmor;
use shadowmesh_control::cert::{Ca, CaPublic, NodeCert, NodeCertRequest, Prefix};
use shadowmesh_control::identity::Identity;

/// The clock of every target: 2027-01-15, inside the fixture certificates' validity.
pub const NOW: Duration = Duration::from_secs(1_800_000_000);

/// The fixture certificates are valid from a day before [`NOW`] ...
pub const NOT_BEFORE: u64 = 1_800_000_000 - 86_400;
/// ... to about ten years after it.
pub const NOT_AFTER: u64 = 1_800_000_000 + 10 * 365 * 86_400;

/// The session index the initiator target uses (M2 and cookie reply seeds name it).
pub const INITIATOR_INDEX: u32 = 11;
/// The session index the responder targets hand to `handle_initiation`.
pub const RESPONDER_INDEX: u32 = 22;

/// The underlay source address the targets attribute datagrams to.
#[must_use]
pub fn src() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(198, 51, 100, 7), 40_000))
}

/// The fixture network.
pub struct Net {
    /// The CA's public key (what nodes trust).
    pub ca: CaPublic,
    /// Node A, the initiator in the handshake targets.
    pub a: Identity,
    /// A's certificate.
    pub a_cert: NodeCert,
    /// Node B, the responder in the handshake targets.
    pub b: Identity,
    /// B's certificate.
    pub b_cert: NodeCert,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").finish_non_exhaustive()
    }
}

const CA_PUB: &str = include_str!("../fixtures/ca.pub");
const A_KEY: &str = include_str!("../fixtures/a.key");
const A_CERT: &str = include_str!("../fixtures/a.cert");
const B_KEY: &str = include_str!("../fixtures/b.key");
const B_CERT: &str = include_str!("../fixtures/b.cert");

fn identity(text: &str) -> Identity {
    let bytes = dearmor("NODE KEY", text).expect("committed fixture key is armoured");
    Identity::from_secret_bytes(&bytes).expect("committed fixture key parses")
}

/// The fixture network, loaded once per process from the committed files.
///
/// # Panics
/// If the committed fixtures do not load (a broken checkout, or a key format change: then
/// run `cargo run -p shadowmesh-fuzzing --example gen_corpus -- --new-keys`).
pub fn net() -> &'static Net {
    static NET: OnceLock<Net> = OnceLock::new();
    NET.get_or_init(|| Net {
        ca: CaPublic::from_armor(CA_PUB).expect("committed fixture CA parses"),
        a: identity(A_KEY),
        a_cert: NodeCert::from_armor(A_CERT).expect("committed fixture cert A parses"),
        b: identity(B_KEY),
        b_cert: NodeCert::from_armor(B_CERT).expect("committed fixture cert B parses"),
    })
}

fn request(id: &Identity, name: &str, host: u8) -> NodeCertRequest {
    NodeCertRequest {
        public: id.public().clone(),
        name: name.into(),
        ipv4: vec![(Ipv4Addr::new(100, 64, 0, host), 10)],
        ipv6: vec![(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(host)), 64)],
        subnets: vec![Prefix::V4(Ipv4Addr::new(100, 65, host, 0), 24)],
        groups: vec!["fuzz".into()],
        not_before: NOT_BEFORE,
        not_after: NOT_AFTER,
    }
}

/// Writes a new fixture set (CA key and public key, A and B keys and certificates) to `dir`.
///
/// # Errors
/// Key generation, signing or I/O failures, as text.
pub fn generate(dir: &Path) -> Result<(), String> {
    let e = |what: &str, err: &dyn std::fmt::Display| format!("{what}: {err}");
    std::fs::create_dir_all(dir).map_err(|err| e("fixtures dir", &err))?;
    let ca = Ca::generate("fuzz-ca").map_err(|err| e("CA", &err))?;
    ca.save_secret(&dir.join("ca.key"))
        .map_err(|err| e("ca.key", &err))?;
    ca.public()
        .save(&dir.join("ca.pub"))
        .map_err(|err| e("ca.pub", &err))?;
    for (name, host) in [("a", 1), ("b", 2)] {
        let id = Identity::generate().map_err(|err| e("identity", &err))?;
        let cert = ca
            .sign(request(&id, name, host))
            .map_err(|err| e("sign", &err))?;
        id.save_secret(&dir.join(format!("{name}.key")))
            .map_err(|err| e("key", &err))?;
        cert.save(&dir.join(format!("{name}.cert")))
            .map_err(|err| e("cert", &err))?;
    }
    Ok(())
}
