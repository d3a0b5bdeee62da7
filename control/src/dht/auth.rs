//! Cheap authentication of DHT messages between members of one network.
//!
//! Every pair of nodes A, B shares `K_AB = HKDF-SHA256(salt = "shadowmesh dht pair v1",
//! ikm = X25519(s_A, x_B), info = min(id_A, id_B) || max(id_A, id_B))`, where `x_B` comes from
//! B's CA-signed certificate. It is computed once per pair and cached (bounded, least recently
//! used out); each message then costs one HMAC-SHA256 (tag truncated to 16 bytes) over all its
//! bytes. A sender's certificate travels only until the peer has shown (by a valid tag with
//! `FLAG_NEED_CERT` clear) that it holds it.
//!
//! Owns the pairwise keys (zeroized on drop) and the per-peer "has our certificate" bit. It
//! must never trust an X25519 key that did not come from a certificate verified against the
//! CA for *inbound* messages: keys claimed by third parties (NODES replies) are used only to
//! tag our own first request, never to accept anything.

use std::collections::BTreeMap;

use aws_lc_rs::hkdf::{KeyType, Salt, HKDF_SHA256};
use zeroize::Zeroizing;

use super::certs::CertCache;
use super::key::Key;
use super::messages::{Kind, Parsed, FLAG_NEED_CERT, FLAG_SERVER, TAG_LEN};
use crate::cert::{CaPublic, NodeCert};
use crate::digest::{ct_eq, mac16};
use crate::identity::Identity;

/// Label of the pairwise key derivation.
pub const PAIR_LABEL: &[u8] = b"shadowmesh dht pair v1";
/// Default bound of the pairwise key cache.
pub const DEFAULT_PAIR_CAP: usize = 4096;

/// Why an inbound message failed authentication (each is a counted drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDrop {
    /// Claims our own node id (a reflected message).
    SelfSender,
    /// No certificate carried and none known for the sender.
    UnknownSender,
    /// The carried certificate does not parse, is not signed by our CA, or is not valid now.
    BadCert,
    /// The certificate's node id is not the header's sender id.
    ForgedId,
    /// The tag does not verify under the pairwise key.
    BadTag,
}

/// What authentication established about a sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// Node id (certified).
    pub id: Key,
    /// X25519 key of its certificate.
    pub x25519: [u8; 32],
    /// The sender asked to be in routing tables.
    pub server: bool,
    /// The sender lacks our certificate.
    pub need_cert: bool,
    /// False only for HELLO, which is untagged: its certificate is CA-valid but possession of
    /// the key is not yet proven, so nothing may be admitted on its strength.
    pub proven: bool,
}

struct Peer {
    x25519: [u8; 32],
    cert_hash: [u8; 32],
    not_after: u64,
    key: Zeroizing<[u8; 32]>,
    has_our_cert: bool,
    used: u64,
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The pairwise key cache and tagger.
pub struct Auth<'a> {
    identity: &'a Identity,
    own: [u8; 32],
    peers: BTreeMap<[u8; 32], Peer>,
    cap: usize,
    tick: u64,
    /// X25519 agreements performed (a cost figure for stats).
    pub agreements: u64,
}

impl<'a> Auth<'a> {
    /// A cache for `identity`, bounded to `cap` peers.
    #[must_use]
    pub fn new(identity: &'a Identity, cap: usize) -> Self {
        Self {
            identity,
            own: identity.public().node_id(),
            peers: BTreeMap::new(),
            cap: cap.max(1),
            tick: 0,
            agreements: 0,
        }
    }

    fn derive(&mut self, peer: &[u8; 32], x25519: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        self.agreements += 1;
        let shared = crate::handshake::dh(self.identity.x25519(), x25519).ok()?;
        let (lo, hi) = if self.own <= *peer {
            (&self.own, peer)
        } else {
            (peer, &self.own)
        };
        let prk = Salt::new(HKDF_SHA256, PAIR_LABEL).extract(shared.as_ref());
        let info = [&lo[..], &hi[..]];
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&info, Len32).ok()?.fill(out.as_mut()).ok()?;
        Some(out)
    }

    /// The verified X25519 key of `id`, if its certificate is known.
    #[must_use]
    pub fn known_x25519(&self, id: &Key) -> Option<[u8; 32]> {
        self.peers.get(&id.0).map(|p| p.x25519)
    }

    /// Whether a message to `id` must carry our certificate.
    #[must_use]
    pub fn must_send_cert(&self, id: &Key) -> bool {
        !self.peers.get(&id.0).is_some_and(|p| p.has_our_cert)
    }

    /// After a timeout: the peer may have lost our certificate, so the next message carries it.
    pub fn peer_may_lack_cert(&mut self, id: &Key) {
        if let Some(p) = self.peers.get_mut(&id.0) {
            p.has_our_cert = false;
        }
    }

    /// Number of cached pairs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no pair is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Appends the tag to `bytes` (an encoded message without tag). HELLO gets a zero tag (the
    /// receiver's key is unknown); other messages are tagged under the pair key of `to`, using
    /// its verified certificate key when known, else `claimed_x25519` (from a NODES reply).
    /// Returns `None` if no key can be formed (a bad claimed key).
    pub fn seal(
        &mut self,
        mut bytes: Vec<u8>,
        kind: Kind,
        to: &Key,
        claimed_x25519: Option<&[u8; 32]>,
    ) -> Option<Vec<u8>> {
        if kind == Kind::Hello {
            bytes.extend_from_slice(&[0; TAG_LEN]);
            return Some(bytes);
        }
        self.tick += 1;
        let tick = self.tick;
        let key = if let Some(p) = self.peers.get_mut(&to.0) {
            p.used = tick;
            p.key.clone()
        } else {
            let x = *claimed_x25519?;
            self.derive(&to.0, &x)?
        };
        let tag = mac16(key.as_ref(), &[&bytes]);
        bytes.extend_from_slice(&tag);
        Some(bytes)
    }

    /// Authenticates a parsed message. On success with a valid tag, the sender's certificate
    /// key and pair key are cached; on any failure nothing here changes except that a
    /// CA-valid certificate may enter `certs` (a cache of verified public data).
    ///
    /// # Errors
    /// The [`AuthDrop`] cause.
    pub fn open(
        &mut self,
        p: &Parsed<'_>,
        certs: &mut CertCache,
        ca: &CaPublic,
        now_wall: u64,
    ) -> Result<Sender, AuthDrop> {
        let m = &p.msg;
        if m.sender == self.own {
            return Err(AuthDrop::SelfSender);
        }
        let id = Key(m.sender);
        // The sender's certified X25519 key and validity, from the carried cert or the cache.
        let (x25519, cert_hash, not_after) = match &m.cert {
            Some(bytes) => {
                let cert = NodeCert::from_bytes(bytes).map_err(|_| AuthDrop::BadCert)?;
                if cert.node_id() != m.sender {
                    return Err(AuthDrop::ForgedId);
                }
                certs
                    .verify(&cert, ca, now_wall)
                    .map_err(|_| AuthDrop::BadCert)?;
                (cert.body.public.x25519, cert.hash(), cert.body.not_after)
            }
            None => {
                let peer = self.peers.get(&m.sender).ok_or(AuthDrop::UnknownSender)?;
                if now_wall > peer.not_after {
                    return Err(AuthDrop::BadCert);
                }
                (peer.x25519, peer.cert_hash, peer.not_after)
            }
        };
        let sender = Sender {
            id,
            x25519,
            server: m.flags & FLAG_SERVER != 0,
            need_cert: m.flags & FLAG_NEED_CERT != 0,
            proven: m.body.kind() != Kind::Hello,
        };
        if !sender.proven {
            return Ok(sender);
        }
        let key = match self.peers.get(&m.sender) {
            Some(peer) if peer.cert_hash == cert_hash => peer.key.clone(),
            _ => self.derive(&m.sender, &x25519).ok_or(AuthDrop::BadCert)?,
        };
        if !ct_eq(&mac16(key.as_ref(), &[p.signed]), p.tag) {
            return Err(AuthDrop::BadTag);
        }
        self.tick += 1;
        if !self.peers.contains_key(&m.sender) && self.peers.len() >= self.cap {
            // Least recently used out; ties cannot occur (ticks are unique).
            if let Some(old) = self
                .peers
                .iter()
                .min_by_key(|(_, p)| p.used)
                .map(|(k, _)| *k)
            {
                self.peers.remove(&old);
            }
        }
        self.peers.insert(
            m.sender,
            Peer {
                x25519,
                cert_hash,
                not_after,
                key,
                has_our_cert: !sender.need_cert,
                used: self.tick,
            },
        );
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::request;
    use crate::cert::Ca;
    use crate::dht::messages::{encode, parse, Body, Message, FLAG_SERVER};

    const NOW: u64 = 1_800_000_000;

    struct Net {
        ca: Ca,
        a: Identity,
        a_cert: NodeCert,
        b: Identity,
        b_cert: NodeCert,
        m: Identity,
        m_cert: NodeCert,
    }

    fn net() -> Net {
        let ca = Ca::generate("net").unwrap();
        let other = Ca::generate("other").unwrap();
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let m = Identity::generate().unwrap();
        let a_cert = ca.sign(request(&a, "a", NOW - 10, NOW + 3600)).unwrap();
        let b_cert = ca.sign(request(&b, "b", NOW - 10, NOW + 3600)).unwrap();
        let m_cert = other.sign(request(&m, "m", NOW - 10, NOW + 3600)).unwrap();
        Net {
            ca,
            a,
            a_cert,
            b,
            b_cert,
            m,
            m_cert,
        }
    }

    fn msg(sender: [u8; 32], cert: Option<&NodeCert>, body: Body) -> Message {
        Message {
            flags: FLAG_SERVER,
            sender,
            txid: 7,
            cert: cert.map(|c| c.to_bytes().to_vec()),
            body,
        }
    }

    #[test]
    fn non_members_bad_tags_and_forged_ids_are_refused_and_leave_no_pair() {
        let n = net();
        let mut a = Auth::new(&n.a, 16);
        let mut b = Auth::new(&n.b, 16);
        let mut mal = Auth::new(&n.m, 16);
        let mut certs = CertCache::new(16);
        let b_id = Key(n.b_cert.node_id());
        let bx = n.b_cert.body.public.x25519;
        let open = |b: &mut Auth<'_>, certs: &mut CertCache, bytes: &[u8]| {
            b.open(&parse(bytes).unwrap(), certs, n.ca.public(), NOW)
        };

        // A member of another CA, with a correct tag under its own key.
        let m = msg(n.m_cert.node_id(), Some(&n.m_cert), Body::Ping);
        let bytes = mal
            .seal(encode(&m), m.body.kind(), &b_id, Some(&bx))
            .unwrap();
        assert_eq!(open(&mut b, &mut certs, &bytes), Err(AuthDrop::BadCert));

        // A valid member's message with one flipped bit in the tag.
        let m = msg(n.a_cert.node_id(), Some(&n.a_cert), Body::Ping);
        let mut bytes = a.seal(encode(&m), m.body.kind(), &b_id, Some(&bx)).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        assert_eq!(open(&mut b, &mut certs, &bytes), Err(AuthDrop::BadTag));
        // A member's certificate replayed by someone without its X25519 key.
        let m = msg(n.a_cert.node_id(), Some(&n.a_cert), Body::Ping);
        let bytes = mal
            .seal(encode(&m), m.body.kind(), &b_id, Some(&bx))
            .unwrap();
        assert_eq!(open(&mut b, &mut certs, &bytes), Err(AuthDrop::BadTag));
        // A's certificate under another sender id.
        let m = msg([9; 32], Some(&n.a_cert), Body::Ping);
        let bytes = a.seal(encode(&m), m.body.kind(), &b_id, Some(&bx)).unwrap();
        assert_eq!(open(&mut b, &mut certs, &bytes), Err(AuthDrop::ForgedId));
        // No certificate and an unknown sender; a reflected message claiming B itself.
        let m = msg(n.a_cert.node_id(), None, Body::Ping);
        let bytes = a.seal(encode(&m), m.body.kind(), &b_id, Some(&bx)).unwrap();
        assert_eq!(
            open(&mut b, &mut certs, &bytes),
            Err(AuthDrop::UnknownSender)
        );
        let m = msg(n.b_cert.node_id(), Some(&n.b_cert), Body::Ping);
        let bytes = a.seal(encode(&m), m.body.kind(), &b_id, Some(&bx)).unwrap();
        assert_eq!(open(&mut b, &mut certs, &bytes), Err(AuthDrop::SelfSender));
        assert!(b.is_empty(), "no failed message created a pair");

        // The genuine message passes; afterwards A may omit its certificate.
        let m = msg(n.a_cert.node_id(), Some(&n.a_cert), Body::Ping);
        let bytes = a.seal(encode(&m), m.body.kind(), &b_id, Some(&bx)).unwrap();
        let s = open(&mut b, &mut certs, &bytes).unwrap();
        assert!(s.proven && s.server);
        assert_eq!(s.id, Key(n.a_cert.node_id()));
        let m = msg(n.a_cert.node_id(), None, Body::Ping);
        let bytes = a.seal(encode(&m), m.body.kind(), &b_id, Some(&bx)).unwrap();
        assert!(open(&mut b, &mut certs, &bytes).is_ok());
        // After the certificate expires, the cached pair no longer authenticates.
        let p = parse(&bytes).unwrap();
        assert_eq!(
            b.open(&p, &mut certs, n.ca.public(), NOW + 7200),
            Err(AuthDrop::BadCert)
        );
    }

    #[test]
    fn both_sides_derive_the_same_key_and_the_cache_is_bounded() {
        let n = net();
        let mut a = Auth::new(&n.a, 1);
        let mut b = Auth::new(&n.b, 1);
        let mut certs = CertCache::new(16);
        let a_id = Key(n.a_cert.node_id());
        let b_id = Key(n.b_cert.node_id());
        let m = msg(a_id.0, Some(&n.a_cert), Body::Ping);
        let bytes = a
            .seal(
                encode(&m),
                m.body.kind(),
                &b_id,
                Some(&n.b_cert.body.public.x25519),
            )
            .unwrap();
        b.open(&parse(&bytes).unwrap(), &mut certs, n.ca.public(), NOW)
            .unwrap();
        // B answers with its certificate; A verifies it and caches the pair (one X25519 each).
        let r = msg(b_id.0, Some(&n.b_cert), Body::Ping);
        let bytes = b.seal(encode(&r), r.body.kind(), &a_id, None).unwrap();
        a.open(&parse(&bytes).unwrap(), &mut certs, n.ca.public(), NOW)
            .unwrap();
        assert_eq!(a.known_x25519(&b_id), Some(n.b_cert.body.public.x25519));
        assert_eq!((a.agreements, b.agreements), (2, 1));
        assert_eq!(a.len(), 1);
    }
}
