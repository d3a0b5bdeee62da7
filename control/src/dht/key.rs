//! DHT keys: 256-bit identifiers in one XOR metric space shared by node ids and record keys.
//!
//! Owns how a node id, a node name and an overlay address map to a key (domain-separated
//! SHA-256, so a name can never collide with an address or a node id by construction) and the
//! XOR distance Kademlia routes by. Must never depend on anything but its input bytes: every
//! node has to derive the same key for the same name.

use std::net::IpAddr;

use aws_lc_rs::digest;

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// Domain separation for name keys.
const NAME_CONTEXT: &[u8] = b"shadowmesh dht name v1\0";
/// Domain separation for overlay address keys.
const ADDR_CONTEXT: &[u8] = b"shadowmesh dht addr v1\0";

/// A node id or a record key: a point in the 256-bit XOR space. Ordered as big-endian bytes,
/// so `Ord` on [`Key::distance`] arrays and on keys agree.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Key(pub [u8; KEY_LEN]);

fn sha256(parts: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl Key {
    /// XOR distance to `other`; compare the arrays as big-endian numbers (their `Ord`).
    #[must_use]
    pub fn distance(&self, other: &Key) -> [u8; KEY_LEN] {
        let mut d = [0u8; KEY_LEN];
        for ((o, a), b) in d.iter_mut().zip(self.0.iter()).zip(other.0.iter()) {
            *o = a ^ b;
        }
        d
    }

    /// The k-bucket `other` falls into as seen from `self`: the number of leading zero bits of
    /// the distance (0 = differs in the top bit, 255 = differs only in the last), `None` when
    /// the keys are equal (a node never buckets itself).
    #[must_use]
    pub fn bucket_index(&self, other: &Key) -> Option<usize> {
        let d = self.distance(other);
        let mut zeros = 0usize;
        for byte in d {
            if byte == 0 {
                zeros += 8;
            } else {
                // leading_zeros of a nonzero u8 is 0..=7.
                return Some(zeros + byte.leading_zeros() as usize);
            }
        }
        None
    }

    /// The key of a node: its node id itself (SHA-256 of its ML-DSA key already).
    #[must_use]
    pub fn for_node(node_id: &[u8; KEY_LEN]) -> Key {
        Key(*node_id)
    }

    /// The key a node's record is stored under for its certified name:
    /// SHA-256("shadowmesh dht name v1\0" || name).
    #[must_use]
    pub fn for_name(name: &str) -> Key {
        Key(sha256(&[NAME_CONTEXT, name.as_bytes()]))
    }

    /// The key a node's record is stored under for one of its overlay addresses:
    /// SHA-256("shadowmesh dht addr v1\0" || 4 or 16 address bytes). An IPv4-mapped IPv6
    /// address is a different key from the IPv4 address: certificates carry the two families
    /// separately and lookups use the address as the packet carries it.
    #[must_use]
    pub fn for_addr(ip: IpAddr) -> Key {
        match ip {
            IpAddr::V4(a) => Key(sha256(&[ADDR_CONTEXT, &a.octets()])),
            IpAddr::V6(a) => Key(sha256(&[ADDR_CONTEXT, &a.octets()])),
        }
    }
}

impl std::fmt::Display for Key {
    /// The first 8 bytes in hex: enough to tell keys apart in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0.iter().take(8) {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn bucket_index_counts_leading_zero_bits() {
        let a = Key([0; 32]);
        assert_eq!(a.bucket_index(&a), None);
        let mut b = [0u8; 32];
        b[0] = 0x80;
        assert_eq!(a.bucket_index(&Key(b)), Some(0));
        b[0] = 0x01;
        assert_eq!(a.bucket_index(&Key(b)), Some(7));
        let mut c = [0u8; 32];
        c[31] = 1;
        assert_eq!(a.bucket_index(&Key(c)), Some(255));
        c[31] = 0;
        c[1] = 0x10;
        assert_eq!(a.bucket_index(&Key(c)), Some(11));
    }

    #[test]
    fn keys_are_domain_separated_and_stable() {
        // A name that spells an address's bytes is still a different key from the address.
        let ip = Ipv4Addr::new(100, 64, 0, 1);
        let as_name = String::from_utf8(ip.octets().to_vec()).unwrap_or_default();
        assert_ne!(Key::for_name(&as_name), Key::for_addr(IpAddr::V4(ip)));
        assert_ne!(Key::for_name("a"), Key::for_name("b"));
        assert_eq!(Key::for_name("alpha"), Key::for_name("alpha"));
        // Mapped IPv6 is not the IPv4 key.
        assert_ne!(
            Key::for_addr(IpAddr::V4(ip)),
            Key::for_addr(IpAddr::V6(ip.to_ipv6_mapped()))
        );
        // Known answer: pins the derivation so every node computes the same key.
        let k = Key::for_name("alpha");
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"shadowmesh dht name v1\0alpha");
        assert_eq!(&k.0[..], ctx.finish().as_ref());
        let k6 = Key::for_addr(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)));
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"shadowmesh dht addr v1\0");
        ctx.update(&Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).octets());
        assert_eq!(&k6.0[..], ctx.finish().as_ref());
        assert_eq!(Key::for_node(&[7; 32]), Key([7; 32]));
    }

    proptest! {
        #[test]
        fn xor_metric_properties(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), c in any::<[u8; 32]>()) {
            let (a, b, c) = (Key(a), Key(b), Key(c));
            prop_assert_eq!(a.distance(&b), b.distance(&a));
            prop_assert_eq!(a.distance(&a), [0u8; 32]);
            // d(a,b) XOR d(b,c) = d(a,c): the unidirectional property lookups rely on.
            let ab = a.distance(&b);
            let bc = b.distance(&c);
            let mut x = [0u8; 32];
            for i in 0..32 { x[i] = ab[i] ^ bc[i]; }
            prop_assert_eq!(x, a.distance(&c));
            prop_assert_eq!(a.bucket_index(&b).is_none(), a == b);
            if let Some(i) = a.bucket_index(&b) {
                prop_assert!(i < 256);
                // The bit at position i is the first that differs.
                prop_assert_eq!((a.0[i / 8] ^ b.0[i / 8]) >> (7 - i % 8) & 1, 1);
            }
        }
    }
}
