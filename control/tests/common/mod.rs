//! What the sans-IO node tests share: the virtual wall clock's origin and the certificate of
//! test node i (name `n<i>`, overlay 100.64.0.(i+1)/32 and fd00::(i+1)/128, valid a day).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use shadowmesh_control::cert::{Ca, NodeCert, NodeCertRequest};
use shadowmesh_control::identity::Identity;

/// Wall-clock time at virtual time zero.
pub const WALL0: Duration = Duration::from_secs(1_800_000_000);

/// Node i's certificate from `ca`.
pub fn cert(ca: &Ca, id: &Identity, i: usize) -> NodeCert {
    let t = WALL0.as_secs();
    let b = u8::try_from(i + 1).expect("node index below 255");
    ca.sign(NodeCertRequest {
        public: id.public().clone(),
        name: format!("n{i}"),
        ipv4: vec![(Ipv4Addr::new(100, 64, 0, b), 32)],
        ipv6: vec![(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(b)), 128)],
        subnets: vec![],
        groups: vec![],
        not_before: t - 60,
        not_after: t + 86_400,
    })
    .expect("sign")
}
