//! The DHT wire codec: PING/PONG, FIND_NODE/NODES, FIND_VALUE/VALUE, STORE/STORED and
//! HELLO/HELLO_ACK under the magic `"SMDH"`, version 1.
//!
//! Owns only the byte layout and its bounds: every length is checked before it is read, every
//! count has a maximum, and a malformed message is a [`WireError`], never a panic. It must never
//! decide whether a message is authentic (see [`super::auth`]) or act on one (see [`super::node`]).
//!
//! Layout (all integers little-endian):
//! `magic "SMDH" | version u8 = 1 | type u8 | flags u8 | sender node id [32] | txid u64 |
//!  [cert u16 len + bytes, if FLAG_CERT] | body | tag [16]`.
//! The tag is HMAC-SHA256 under the pairwise key over every byte before it (see `auth`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::key::Key;
use crate::cert::MAX_CERT_LEN;
use crate::identity::Reader;

/// Protocol magic of DHT messages.
pub const MAGIC: &[u8; 4] = b"SMDH";
/// Wire version.
pub const VERSION: u8 = 1;
/// Length of the fixed header (magic, version, type, flags, sender, txid).
pub const HEADER_LEN: usize = 4 + 1 + 1 + 1 + 32 + 8;
/// Length of the authentication tag at the end of every message.
pub const TAG_LEN: usize = 16;
/// Largest DHT message accepted or produced (a STORE of a full-cert record plus the sender's
/// certificate); the control transport carries up to 64 KiB.
pub const MAX_MESSAGE_LEN: usize = 48 * 1024;
/// Most contacts in one NODES / VALUE reply.
pub const MAX_CONTACTS: usize = 32;
/// Largest encoded record carried in VALUE / STORE (the record codec's own bound).
pub const MAX_RECORD_BYTES: usize = super::record::MAX_RECORD_LEN;
/// Encoded length of one contact: node id, X25519 key, address (family, IPv6, port) at most.
pub const CONTACT_MAX_LEN: usize = 32 + 32 + 1 + 16 + 2;

/// Most candidate addresses in an INTRODUCE or INTRODUCTION.
pub const MAX_CANDIDATES: usize = 9;
/// Length of a punch token.
pub const TOKEN_LEN: usize = 16;
/// The sender accepts to be in routing tables (a reachable, non-NATed server).
pub const FLAG_SERVER: u8 = 0x01;
/// The sender's full certificate follows the header.
pub const FLAG_CERT: u8 = 0x02;
/// The sender lacks the receiver's certificate: the reply must carry it.
pub const FLAG_NEED_CERT: u8 = 0x04;
const KNOWN_FLAGS: u8 = FLAG_SERVER | FLAG_CERT | FLAG_NEED_CERT;

/// Message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// First contact by address only (untagged; carries the sender's certificate).
    Hello = 1,
    /// Reply to HELLO: the responder's certificate, tagged.
    HelloAck = 2,
    /// Liveness / address confirmation.
    Ping = 3,
    /// Reply to PING.
    Pong = 4,
    /// Asks for the contacts closest to a target.
    FindNode = 5,
    /// Reply to FIND_NODE.
    Nodes = 6,
    /// Asks for the record under a key (or closer contacts).
    FindValue = 7,
    /// Reply to FIND_VALUE.
    Value = 8,
    /// Asks the receiver to store a record under a key.
    Store = 9,
    /// Reply to STORE.
    Stored = 10,
    /// Asks a home node to introduce the sender to a node bound there (NAT traversal).
    Introduce = 11,
    /// Reply to INTRODUCE: whether it was passed on.
    Introduced = 12,
    /// A home node passes an introduction on to a node bound to it.
    Introduction = 13,
    /// Reply to INTRODUCTION.
    IntroductionAck = 14,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Hello,
            2 => Self::HelloAck,
            3 => Self::Ping,
            4 => Self::Pong,
            5 => Self::FindNode,
            6 => Self::Nodes,
            7 => Self::FindValue,
            8 => Self::Value,
            9 => Self::Store,
            10 => Self::Stored,
            11 => Self::Introduce,
            12 => Self::Introduced,
            13 => Self::Introduction,
            14 => Self::IntroductionAck,
            _ => return None,
        })
    }

    /// Whether this type is a request (odd numbers) rather than a reply.
    #[must_use]
    pub fn is_request(self) -> bool {
        (self as u8) % 2 == 1
    }
}

/// A contact as carried in NODES / VALUE: its id, the X25519 key of its certificate (so the
/// first request to it can already be tagged), and its confirmed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireContact {
    /// Node id.
    pub id: Key,
    /// X25519 public key from the contact's certificate (as claimed by the reporter).
    pub x25519: [u8; 32],
    /// The contact's address.
    pub addr: SocketAddr,
}

/// Result code of a STORE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StoreResult {
    /// Stored (new or replacing a lower sequence).
    Ok = 0,
    /// Equal or lower sequence than the one held.
    Stale = 1,
    /// The per-source or total bound refused it.
    Full = 2,
    /// Signature, certificate, expiry or key check failed.
    Invalid = 3,
}

/// A message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// HELLO (no body).
    Hello,
    /// HELLO_ACK: the requester's address as seen by the responder.
    HelloAck {
        /// Observed address of the requester.
        observed: SocketAddr,
    },
    /// PING (no body).
    Ping,
    /// PONG.
    Pong {
        /// Observed address of the requester.
        observed: SocketAddr,
    },
    /// FIND_NODE.
    FindNode {
        /// Target id.
        target: Key,
    },
    /// NODES.
    Nodes {
        /// Observed address of the requester.
        observed: SocketAddr,
        /// Closest contacts known to the responder.
        nodes: Vec<WireContact>,
    },
    /// FIND_VALUE.
    FindValue {
        /// Record key.
        key: Key,
    },
    /// VALUE: the record if held, and closer contacts in any case.
    Value {
        /// Observed address of the requester.
        observed: SocketAddr,
        /// Encoded record (full-cert form), if the responder holds one.
        record: Option<Vec<u8>>,
        /// Closest contacts known to the responder.
        nodes: Vec<WireContact>,
    },
    /// STORE.
    Store {
        /// Key to store under.
        key: Key,
        /// Encoded record (full-cert form).
        record: Vec<u8>,
    },
    /// STORED.
    Stored {
        /// Observed address of the requester.
        observed: SocketAddr,
        /// Outcome.
        result: StoreResult,
    },
    /// INTRODUCE: "tell `target` that I want to reach it, with this token, at these
    /// addresses".
    Introduce {
        /// Node id of the node bound to the receiver.
        target: Key,
        /// The requester's punch token (secret between the two ends and the home).
        token: [u8; TOKEN_LEN],
        /// The requester's own candidates (at most [`MAX_CANDIDATES`]).
        candidates: Vec<SocketAddr>,
    },
    /// INTRODUCED.
    Introduced {
        /// Observed address of the requester.
        observed: SocketAddr,
        /// The target was bound here and the introduction went out.
        forwarded: bool,
    },
    /// INTRODUCTION: "`from` wants to reach you".
    Introduction {
        /// Node id of the node that asked (authenticated by the home).
        from: Key,
        /// Its punch token.
        token: [u8; TOKEN_LEN],
        /// Its candidates: first the address the home saw it at, then its own list.
        candidates: Vec<SocketAddr>,
    },
    /// INTRODUCTION_ACK.
    IntroductionAck {
        /// Observed address of the requester (the home).
        observed: SocketAddr,
    },
}

impl Body {
    /// The message type of this body.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            Self::Hello => Kind::Hello,
            Self::HelloAck { .. } => Kind::HelloAck,
            Self::Ping => Kind::Ping,
            Self::Pong { .. } => Kind::Pong,
            Self::FindNode { .. } => Kind::FindNode,
            Self::Nodes { .. } => Kind::Nodes,
            Self::FindValue { .. } => Kind::FindValue,
            Self::Value { .. } => Kind::Value,
            Self::Store { .. } => Kind::Store,
            Self::Stored { .. } => Kind::Stored,
            Self::Introduce { .. } => Kind::Introduce,
            Self::Introduced { .. } => Kind::Introduced,
            Self::Introduction { .. } => Kind::Introduction,
            Self::IntroductionAck { .. } => Kind::IntroductionAck,
        }
    }
}

/// A whole DHT message (the tag is handled by [`encode`] / [`parse`] callers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Flags (`FLAG_*`); `FLAG_CERT` is set by [`encode`] from `cert`.
    pub flags: u8,
    /// Sender node id.
    pub sender: [u8; 32],
    /// Transaction id (a reply echoes its request's).
    pub txid: u64,
    /// The sender's encoded certificate, if carried.
    pub cert: Option<Vec<u8>>,
    /// The body.
    pub body: Body,
}

/// Why a message could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("message too long")]
    TooLong,
    /// Not "SMDH".
    #[error("bad magic")]
    BadMagic,
    /// Unknown version.
    #[error("unsupported version")]
    BadVersion,
    /// Unknown message type or flag.
    #[error("unknown type or flag")]
    Unknown,
    /// Truncated, over a bound, or trailing bytes.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

fn put_addr(v: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            v.push(4);
            v.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            v.push(6);
            v.extend_from_slice(&ip.octets());
        }
    }
    v.extend_from_slice(&a.port().to_le_bytes());
}

fn get_addr(r: &mut Reader<'_>) -> Result<SocketAddr, WireError> {
    let bad = WireError::Malformed("address");
    let ip = match r.u8().ok_or(bad)? {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>().ok_or(bad)?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>().ok_or(bad)?)),
        _ => return Err(bad),
    };
    Ok(SocketAddr::new(ip, r.u16().ok_or(bad)?))
}

fn put_contacts(v: &mut Vec<u8>, nodes: &[WireContact]) {
    let n = nodes.len().min(MAX_CONTACTS);
    v.push(n as u8);
    for c in nodes.iter().take(n) {
        v.extend_from_slice(&c.id.0);
        v.extend_from_slice(&c.x25519);
        put_addr(v, &c.addr);
    }
}

fn get_contacts(r: &mut Reader<'_>) -> Result<Vec<WireContact>, WireError> {
    let bad = WireError::Malformed("contacts");
    let n = usize::from(r.u8().ok_or(bad)?);
    if n > MAX_CONTACTS {
        return Err(bad);
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let id = Key(r.array().ok_or(bad)?);
        let x25519 = r.array().ok_or(bad)?;
        let addr = get_addr(r)?;
        out.push(WireContact { id, x25519, addr });
    }
    Ok(out)
}

fn put_candidates(v: &mut Vec<u8>, c: &[SocketAddr]) {
    let n = c.len().min(MAX_CANDIDATES);
    v.push(n as u8);
    for a in c.iter().take(n) {
        put_addr(v, a);
    }
}

fn get_candidates(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, WireError> {
    let n = usize::from(r.u8().ok_or(WireError::Malformed("candidates"))?);
    if n > MAX_CANDIDATES {
        return Err(WireError::Malformed("candidates"));
    }
    (0..n).map(|_| get_addr(r)).collect()
}

fn put_blob(v: &mut Vec<u8>, b: &[u8]) {
    // Callers bound blobs below 64 KiB (certs, records); a longer one would not parse back
    // and is truncated to an invalid length rather than wrapping silently.
    let n = u16::try_from(b.len()).unwrap_or(u16::MAX);
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(b.get(..usize::from(n)).unwrap_or(b));
}

fn get_blob<'a>(r: &mut Reader<'a>, max: usize, what: &'static str) -> Result<&'a [u8], WireError> {
    let n = usize::from(r.u16().ok_or(WireError::Malformed(what))?);
    if n == 0 || n > max {
        return Err(WireError::Malformed(what));
    }
    r.take(n).ok_or(WireError::Malformed(what))
}

/// Encodes `m` without its tag; the caller appends [`TAG_LEN`] bytes (see `auth::seal`).
#[must_use]
pub fn encode(m: &Message) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    v.extend_from_slice(MAGIC);
    v.push(VERSION);
    v.push(m.body.kind() as u8);
    let flags = (m.flags & !FLAG_CERT) | if m.cert.is_some() { FLAG_CERT } else { 0 };
    v.push(flags);
    v.extend_from_slice(&m.sender);
    v.extend_from_slice(&m.txid.to_le_bytes());
    if let Some(c) = &m.cert {
        put_blob(&mut v, c);
    }
    match &m.body {
        Body::Hello | Body::Ping => {}
        Body::HelloAck { observed } | Body::Pong { observed } => put_addr(&mut v, observed),
        Body::FindNode { target: k } | Body::FindValue { key: k } => v.extend_from_slice(&k.0),
        Body::Nodes { observed, nodes } => {
            put_addr(&mut v, observed);
            put_contacts(&mut v, nodes);
        }
        Body::Value {
            observed,
            record,
            nodes,
        } => {
            put_addr(&mut v, observed);
            match record {
                Some(r) => {
                    v.push(1);
                    put_blob(&mut v, r);
                }
                None => v.push(0),
            }
            put_contacts(&mut v, nodes);
        }
        Body::Store { key, record } => {
            v.extend_from_slice(&key.0);
            put_blob(&mut v, record);
        }
        Body::Stored { observed, result } => {
            put_addr(&mut v, observed);
            v.push(*result as u8);
        }
        Body::Introduce {
            target: k,
            token,
            candidates,
        }
        | Body::Introduction {
            from: k,
            token,
            candidates,
        } => {
            v.extend_from_slice(&k.0);
            v.extend_from_slice(token);
            put_candidates(&mut v, candidates);
        }
        Body::Introduced {
            observed,
            forwarded,
        } => {
            put_addr(&mut v, observed);
            v.push(u8::from(*forwarded));
        }
        Body::IntroductionAck { observed } => put_addr(&mut v, observed),
    }
    v
}

/// A parsed message and where its tag starts.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The message.
    pub msg: Message,
    /// The bytes the tag covers (everything before it).
    pub signed: &'a [u8],
    /// The tag.
    pub tag: &'a [u8; TAG_LEN],
}

/// Parses one message; every count and length is bounded, trailing bytes are refused.
///
/// # Errors
/// [`WireError`] for anything not exactly one well-formed message.
pub fn parse(b: &[u8]) -> Result<Parsed<'_>, WireError> {
    if b.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLong);
    }
    let split = b
        .len()
        .checked_sub(TAG_LEN)
        .filter(|&n| n >= HEADER_LEN)
        .ok_or(WireError::Malformed("short"))?;
    let (signed, tag) = b.split_at(split);
    let tag: &[u8; TAG_LEN] = tag.try_into().map_err(|_| WireError::Malformed("tag"))?;
    let mut r = Reader(signed);
    let short = WireError::Malformed("header");
    if r.take(4).ok_or(short)? != MAGIC {
        return Err(WireError::BadMagic);
    }
    if r.u8().ok_or(short)? != VERSION {
        return Err(WireError::BadVersion);
    }
    let kind = Kind::from_u8(r.u8().ok_or(short)?).ok_or(WireError::Unknown)?;
    let flags = r.u8().ok_or(short)?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(WireError::Unknown);
    }
    let sender = r.array().ok_or(short)?;
    let txid = r.u64().ok_or(short)?;
    let cert = if flags & FLAG_CERT != 0 {
        Some(get_blob(&mut r, MAX_CERT_LEN, "cert")?.to_vec())
    } else {
        None
    };
    let body = match kind {
        Kind::Hello => Body::Hello,
        Kind::Ping => Body::Ping,
        Kind::HelloAck => Body::HelloAck {
            observed: get_addr(&mut r)?,
        },
        Kind::Pong => Body::Pong {
            observed: get_addr(&mut r)?,
        },
        Kind::FindNode => Body::FindNode {
            target: Key(r.array().ok_or(WireError::Malformed("target"))?),
        },
        Kind::FindValue => Body::FindValue {
            key: Key(r.array().ok_or(WireError::Malformed("key"))?),
        },
        Kind::Nodes => {
            let observed = get_addr(&mut r)?;
            Body::Nodes {
                observed,
                nodes: get_contacts(&mut r)?,
            }
        }
        Kind::Value => {
            let observed = get_addr(&mut r)?;
            let record = match r.u8() {
                Some(0) => None,
                Some(1) => Some(get_blob(&mut r, MAX_RECORD_BYTES, "record")?.to_vec()),
                _ => return Err(WireError::Malformed("record flag")),
            };
            Body::Value {
                observed,
                record,
                nodes: get_contacts(&mut r)?,
            }
        }
        Kind::Store => {
            let key = Key(r.array().ok_or(WireError::Malformed("key"))?);
            Body::Store {
                key,
                record: get_blob(&mut r, MAX_RECORD_BYTES, "record")?.to_vec(),
            }
        }
        Kind::Stored => {
            let observed = get_addr(&mut r)?;
            let result = match r.u8() {
                Some(0) => StoreResult::Ok,
                Some(1) => StoreResult::Stale,
                Some(2) => StoreResult::Full,
                Some(3) => StoreResult::Invalid,
                _ => return Err(WireError::Malformed("store result")),
            };
            Body::Stored { observed, result }
        }
        Kind::Introduce | Kind::Introduction => {
            let k = Key(r.array().ok_or(WireError::Malformed("node id"))?);
            let token = r.array().ok_or(WireError::Malformed("token"))?;
            let candidates = get_candidates(&mut r)?;
            if kind == Kind::Introduce {
                Body::Introduce {
                    target: k,
                    token,
                    candidates,
                }
            } else {
                Body::Introduction {
                    from: k,
                    token,
                    candidates,
                }
            }
        }
        Kind::Introduced => {
            let observed = get_addr(&mut r)?;
            let forwarded = match r.u8() {
                Some(0) => false,
                Some(1) => true,
                _ => return Err(WireError::Malformed("forwarded flag")),
            };
            Body::Introduced {
                observed,
                forwarded,
            }
        }
        Kind::IntroductionAck => Body::IntroductionAck {
            observed: get_addr(&mut r)?,
        },
    };
    if !r.is_empty() {
        return Err(WireError::Malformed("trailing bytes"));
    }
    Ok(Parsed {
        msg: Message {
            flags,
            sender,
            txid,
            cert,
            body,
        },
        signed,
        tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn samples() -> Vec<Message> {
        let c = WireContact {
            id: Key([3; 32]),
            x25519: [4; 32],
            addr: sa("[2001:db8::1]:9"),
        };
        let bodies = vec![
            Body::Hello,
            Body::HelloAck {
                observed: sa("198.51.100.1:1"),
            },
            Body::Ping,
            Body::Pong {
                observed: sa("[2001:db8::2]:2"),
            },
            Body::FindNode {
                target: Key([9; 32]),
            },
            Body::Nodes {
                observed: sa("198.51.100.1:1"),
                nodes: vec![c; 20],
            },
            Body::FindValue { key: Key([8; 32]) },
            Body::Value {
                observed: sa("198.51.100.1:1"),
                record: Some(vec![5; 100]),
                nodes: vec![c],
            },
            Body::Value {
                observed: sa("198.51.100.1:1"),
                record: None,
                nodes: vec![],
            },
            Body::Store {
                key: Key([1; 32]),
                record: vec![6; 300],
            },
            Body::Stored {
                observed: sa("203.0.113.5:7"),
                result: StoreResult::Stale,
            },
            Body::Introduce {
                target: Key([2; 32]),
                token: [9; TOKEN_LEN],
                candidates: vec![sa("192.0.2.2:51820"), sa("[2001:db8::3]:4")],
            },
            Body::Introduced {
                observed: sa("203.0.113.5:7"),
                forwarded: true,
            },
            Body::Introduction {
                from: Key([5; 32]),
                token: [1; TOKEN_LEN],
                candidates: vec![sa("203.0.113.9:1"); MAX_CANDIDATES],
            },
            Body::Introduction {
                from: Key([5; 32]),
                token: [1; TOKEN_LEN],
                candidates: vec![],
            },
            Body::IntroductionAck {
                observed: sa("203.0.113.5:7"),
            },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(i, body)| Message {
                flags: FLAG_SERVER | if i % 2 == 0 { FLAG_CERT } else { 0 },
                sender: [i as u8; 32],
                txid: 0x0102_0304_0506_0708 + i as u64,
                cert: (i % 2 == 0).then(|| vec![7; 50]),
                body,
            })
            .collect()
    }

    fn with_tag(mut v: Vec<u8>) -> Vec<u8> {
        v.extend_from_slice(&[0xAA; TAG_LEN]);
        v
    }

    #[test]
    fn every_message_round_trips_and_sizes_are_as_documented() {
        for m in samples() {
            let b = with_tag(encode(&m));
            let p = parse(&b).unwrap();
            assert_eq!(p.msg, m);
            assert_eq!(p.signed.len() + TAG_LEN, b.len());
        }
        // Sizes quoted in docs/protocol.md §8 (no cert carried).
        let ping = Message {
            flags: 0,
            sender: [0; 32],
            txid: 1,
            cert: None,
            body: Body::Ping,
        };
        assert_eq!(with_tag(encode(&ping)).len(), 63);
        let nodes = Message {
            body: Body::Nodes {
                observed: sa("198.51.100.1:1"),
                nodes: vec![
                    WireContact {
                        id: Key([0; 32]),
                        x25519: [0; 32],
                        addr: sa("198.51.100.1:1"),
                    };
                    20
                ],
            },
            ..ping.clone()
        };
        assert_eq!(with_tag(encode(&nodes)).len(), 63 + 7 + 1 + 20 * 71);
    }

    #[test]
    fn every_truncation_and_every_extension_is_refused() {
        for m in samples() {
            let b = with_tag(encode(&m));
            for n in 0..b.len() {
                assert!(parse(&b[..n]).is_err() || n == b.len(), "prefix {n} parsed");
            }
            let mut longer = b.clone();
            longer.insert(b.len() - TAG_LEN, 0);
            assert!(parse(&longer).is_err());
        }
    }

    #[test]
    fn bounds_and_unknowns_are_refused() {
        let m = &samples()[5];
        let good = with_tag(encode(m));
        assert!(matches!(
            parse(&vec![0; MAX_MESSAGE_LEN + 1]),
            Err(WireError::TooLong)
        ));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(parse(&b).unwrap_err(), WireError::BadMagic);
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(parse(&b).unwrap_err(), WireError::BadVersion);
        let mut b = good.clone();
        b[5] = 15;
        assert_eq!(parse(&b).unwrap_err(), WireError::Unknown);
        let mut b = good.clone();
        b[6] |= 0x80;
        assert_eq!(parse(&b).unwrap_err(), WireError::Unknown);
        // A contact count over the bound, whatever follows.
        let mut b = good.clone();
        let count_at = HEADER_LEN + 7;
        assert_eq!(b[count_at], 20);
        b[count_at] = (MAX_CONTACTS + 1) as u8;
        assert!(parse(&b).is_err());
        // A candidate count over the bound.
        let intro = Message {
            body: Body::Introduce {
                target: Key([1; 32]),
                token: [2; TOKEN_LEN],
                candidates: vec![],
            },
            ..m.clone()
        };
        let mut b = with_tag(encode(&intro));
        let count_at = b.len() - TAG_LEN - 1;
        assert_eq!(b[count_at], 0);
        b[count_at] = (MAX_CANDIDATES + 1) as u8;
        assert_eq!(parse(&b).unwrap_err(), WireError::Malformed("candidates"));
        // A cert length of zero or over the bound.
        let mut m2 = m.clone();
        m2.cert = Some(vec![1; MAX_CERT_LEN + 1]);
        assert!(parse(&with_tag(encode(&m2))).is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand_core::{RngCore, SeedableRng};
        let mut rng = crate::rand::SeededRng::seed_from_u64(1);
        let base = with_tag(encode(&samples()[7]));
        for _ in 0..2000 {
            let mut b = base.clone();
            let i = (rng.next_u32() as usize) % b.len();
            b[i] = rng.next_u32() as u8;
            let n = (rng.next_u32() as usize) % (b.len() + 1);
            let _ = parse(&b[..n]);
        }
    }
}
