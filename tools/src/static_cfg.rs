//! Static mode: sessions, routes and endpoints read from a TOML file and pushed to the
//! dataplane over IPC, with no handshake. This is the test path until the handshake exists,
//! and a way to drive the dataplane in benchmarks.
//!
//! It owns the static file format and its validation. It must never print a key (errors name
//! the peer and the key, never its value) and never keep key text after parsing: the file
//! contents and every key string are zeroized once decoded (the TOML parser's own
//! temporaries are outside our reach).
//!
//! # Format
//! One `[[peer]]` table per peer; unknown keys are errors.
//!
//! ```toml
//! [[peer]]
//! id = 2                                         # peer id, unique, u32
//! endpoint = "198.51.100.2:51820"                # underlay address:port
//! allowed_ips = ["100.64.0.2/32", "fd00::2/128"] # overlay prefixes (bare address = host)
//! cipher = "aes-256-gcm"                         # or "chacha20-poly1305"
//! local_index = 1002                             # our receiver index, unique, u32
//! remote_index = 2001                            # the peer's receiver index, u32
//! send_key = "000102...1f"                       # 64 hex chars (32 bytes)
//! recv_key = "202122...3f"                       # 64 hex chars; the peer's send_key
//! rekey_after_secs = 120                         # optional, default 120
//! reject_after_secs = 180                        # optional, default 180
//! ```
//!
//! Each peer becomes three requests, in this order: `InstallSession` (slot current),
//! `SetRoutes`, `SetEndpoint`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shadowmesh_dataplane::ipc::proto::{
    InstallSession, Slot, CIPHER_AES_256_GCM, CIPHER_CHACHA20_POLY1305, KEY_LEN, MAX_ROUTES,
};
use shadowmesh_dataplane::ipc::{DownMsg, IpcClient, IpcError};
use zeroize::{Zeroize, Zeroizing};

/// Default `rekey_after_secs` (DESIGN.md: rekey asked after 120 s).
pub const DEFAULT_REKEY_AFTER_SECS: u32 = 120;
/// Default `reject_after_secs` (DESIGN.md: a key is refused for sending after 180 s).
pub const DEFAULT_REJECT_AFTER_SECS: u32 = 180;

/// Errors of static mode. Each names the file, the peer and key, and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum StaticCfgError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of this format (the message names the key and position).
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's explanation.
        message: String,
    },
    /// The file lists no peer.
    #[error("{file}: no [[peer]] table: expected at least one peer")]
    NoPeers {
        /// The file.
        file: PathBuf,
    },
    /// A value is invalid.
    #[error("{file}: peer {peer}: key `{key}`: expected {expected}, found {found}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The peer's id.
        peer: u32,
        /// The key.
        key: &'static str,
        /// What was expected.
        expected: &'static str,
        /// What was found (for keys: only their length, never their value).
        found: String,
    },
    /// Two peers share an id or a local index.
    #[error("{file}: peer {peer}: key `{key}`: value {value} is already used by another peer; expected unique values")]
    Duplicate {
        /// The file.
        file: PathBuf,
        /// The second peer using it.
        peer: u32,
        /// `id` or `local_index`.
        key: &'static str,
        /// The repeated value.
        value: u32,
    },
    /// The dataplane refused or did not answer a request.
    #[error("applying request {index} ({what}): {source}")]
    Apply {
        /// Position in the list given to [`apply`].
        index: usize,
        /// The request, without keys (e.g. "InstallSession peer 2").
        what: String,
        /// The IPC error.
        #[source]
        source: IpcError,
    },
}

/// A key string that wipes itself when dropped.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(KeyText)
    }
}

impl Drop for KeyText {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    peer: Vec<PeerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerEntry {
    id: u32,
    endpoint: String,
    allowed_ips: Vec<String>,
    cipher: String,
    local_index: u32,
    remote_index: u32,
    send_key: KeyText,
    recv_key: KeyText,
    rekey_after_secs: Option<u32>,
    reject_after_secs: Option<u32>,
}

/// Reads and validates a static file into the requests that configure the dataplane.
pub fn load(path: &Path) -> Result<Vec<DownMsg>, StaticCfgError> {
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| StaticCfgError::Read {
                file: path.to_path_buf(),
                source,
            })?,
        );
    parse(path, &text)
}

/// Parses static-file `text`; `file` is only used in error messages.
pub fn parse(file: &Path, text: &str) -> Result<Vec<DownMsg>, StaticCfgError> {
    let parsed: File = toml::from_str(text).map_err(|e| StaticCfgError::Parse {
        file: file.to_path_buf(),
        message: e.to_string(),
    })?;
    if parsed.peer.is_empty() {
        return Err(StaticCfgError::NoPeers {
            file: file.to_path_buf(),
        });
    }
    let mut ids = BTreeSet::new();
    let mut indices = BTreeSet::new();
    let mut msgs = Vec::with_capacity(parsed.peer.len() * 3);
    for p in &parsed.peer {
        let invalid =
            |key: &'static str, expected: &'static str, found: String| StaticCfgError::Invalid {
                file: file.to_path_buf(),
                peer: p.id,
                key,
                expected,
                found,
            };
        let duplicate = |key: &'static str, value: u32| StaticCfgError::Duplicate {
            file: file.to_path_buf(),
            peer: p.id,
            key,
            value,
        };
        if !ids.insert(p.id) {
            return Err(duplicate("id", p.id));
        }
        if !indices.insert(p.local_index) {
            return Err(duplicate("local_index", p.local_index));
        }
        let endpoint: SocketAddr = p.endpoint.parse().map_err(|_| {
            invalid(
                "endpoint",
                "an address:port such as \"198.51.100.2:51820\" or \"[fd00::2]:51820\"",
                format!("{:?}", p.endpoint),
            )
        })?;
        if p.allowed_ips.len() > MAX_ROUTES {
            return Err(invalid(
                "allowed_ips",
                "at most 2048 prefixes",
                format!("{} prefixes", p.allowed_ips.len()),
            ));
        }
        let mut prefixes = Vec::with_capacity(p.allowed_ips.len());
        for s in &p.allowed_ips {
            prefixes.push(
                parse_prefix(s)
                    .map_err(|expected| invalid("allowed_ips", expected, format!("{s:?}")))?,
            );
        }
        let cipher = match p.cipher.as_str() {
            "aes-256-gcm" => CIPHER_AES_256_GCM,
            "chacha20-poly1305" => CIPHER_CHACHA20_POLY1305,
            other => {
                return Err(invalid(
                    "cipher",
                    "\"aes-256-gcm\" or \"chacha20-poly1305\"",
                    format!("{other:?}"),
                ))
            }
        };
        let send_key = parse_key(&p.send_key.0)
            .map_err(|found| invalid("send_key", "64 hex characters (a 32-byte key)", found))?;
        let recv_key = parse_key(&p.recv_key.0)
            .map_err(|found| invalid("recv_key", "64 hex characters (a 32-byte key)", found))?;
        let rekey_after_secs = p.rekey_after_secs.unwrap_or(DEFAULT_REKEY_AFTER_SECS);
        let reject_after_secs = p.reject_after_secs.unwrap_or(DEFAULT_REJECT_AFTER_SECS);
        if reject_after_secs < rekey_after_secs {
            return Err(invalid(
                "reject_after_secs",
                "a value ≥ rekey_after_secs (a key is refused only after the rekey was asked)",
                reject_after_secs.to_string(),
            ));
        }
        msgs.push(DownMsg::InstallSession(InstallSession {
            peer: p.id,
            slot: Slot::Current,
            local_index: p.local_index,
            remote_index: p.remote_index,
            cipher,
            send_key,
            recv_key,
            rekey_after_secs,
            reject_after_secs,
        }));
        msgs.push(DownMsg::SetRoutes {
            peer: p.id,
            prefixes,
        });
        msgs.push(DownMsg::SetEndpoint {
            peer: p.id,
            addr: endpoint,
        });
    }
    Ok(msgs)
}

/// Sends `msgs` in order, stopping at the first refusal.
pub fn apply(client: &mut IpcClient, msgs: Vec<DownMsg>) -> Result<(), StaticCfgError> {
    for (index, msg) in msgs.into_iter().enumerate() {
        let what = describe(&msg);
        client
            .request(msg)
            .map_err(|source| StaticCfgError::Apply {
                index,
                what,
                source,
            })?;
    }
    Ok(())
}

/// A key-free description of a request, for errors.
fn describe(msg: &DownMsg) -> String {
    match msg {
        DownMsg::InstallSession(s) => {
            format!(
                "InstallSession peer {} local_index {}",
                s.peer, s.local_index
            )
        }
        DownMsg::SetRoutes { peer, prefixes } => {
            format!("SetRoutes peer {peer} ({} prefixes)", prefixes.len())
        }
        DownMsg::SetSources { peer, prefixes } => {
            format!("SetSources peer {peer} ({} prefixes)", prefixes.len())
        }
        DownMsg::SetEndpoint { peer, addr } => format!("SetEndpoint peer {peer} {addr}"),
        DownMsg::RemoveSession { local_index } => format!("RemoveSession {local_index}"),
        DownMsg::RemovePeer { peer } => format!("RemovePeer {peer}"),
        DownMsg::SendControl { dst, .. } => format!("SendControl to {dst}"),
        DownMsg::GetStats { .. } => "GetStats".into(),
        DownMsg::Shutdown => "Shutdown".into(),
        DownMsg::SetRelay {
            from, index, to, ..
        } => format!("SetRelay from {from} index {index} to {to}"),
        DownMsg::RemoveRelay { from, index } => format!("RemoveRelay from {from} index {index}"),
    }
}

/// Parses "addr/len" (or a bare address, meaning the host) with host bits clear.
fn parse_prefix(s: &str) -> Result<(IpAddr, u8), &'static str> {
    const EXPECTED: &str =
        "prefixes such as \"100.64.0.2/32\" or \"fd00::/64\" (length ≤ 32 / 128, host bits zero)";
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| EXPECTED)?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().map_err(|_| EXPECTED)?,
        None => max,
    };
    if len > max {
        return Err(EXPECTED);
    }
    let host_bits_clear = match ip {
        IpAddr::V4(a) => len == 32 || u32::from(a) & (u32::MAX >> len) == 0,
        IpAddr::V6(a) => len == 128 || u128::from(a) & (u128::MAX >> len) == 0,
    };
    if !host_bits_clear {
        return Err(EXPECTED);
    }
    Ok((ip, len))
}

/// Decodes 64 hex characters into a zeroizing key. The error says only what shape the text
/// had, never its value.
fn parse_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, String> {
    let bytes = text.as_bytes();
    if bytes.len() != KEY_LEN * 2 {
        return Err(format!("{} characters", bytes.len()));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    for (out, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = hex_val(pair.first().copied());
        let lo = hex_val(pair.get(1).copied());
        match (hi, lo) {
            (Some(h), Some(l)) => *out = (h << 4) | l,
            _ => return Err("a non-hex character".into()),
        }
    }
    Ok(key)
}

fn hex_val(c: Option<u8>) -> Option<u8> {
    match c? {
        c @ b'0'..=b'9' => Some(c - b'0'),
        c @ b'a'..=b'f' => Some(c - b'a' + 10),
        c @ b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const KEY_B: &str = "202122232425262728292A2B2C2D2E2F303132333435363738393a3b3c3d3e3f";

    fn peer(id: u32, local_index: u32, extra: &str) -> String {
        format!(
            r#"
[[peer]]
id = {id}
endpoint = "198.51.100.{id}:51820"
allowed_ips = ["100.64.0.{id}/32", "fd00::{id}/128"]
cipher = "aes-256-gcm"
local_index = {local_index}
remote_index = 2001
send_key = "{KEY_A}"
recv_key = "{KEY_B}"
{extra}
"#
        )
    }

    fn err_text(text: &str) -> String {
        parse(Path::new("static.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn parses_peers_into_install_routes_endpoint() {
        let text = peer(2, 1002, "")
            + &peer(3, 1003, "cipher2 = 1").replace(
                "cipher2 = 1",
                "rekey_after_secs = 10\nreject_after_secs = 20",
            );
        let msgs = parse(Path::new("static.toml"), &text).unwrap();
        assert_eq!(msgs.len(), 6);
        match &msgs[0] {
            DownMsg::InstallSession(s) => {
                assert_eq!((s.peer, s.local_index, s.remote_index), (2, 1002, 2001));
                assert_eq!(s.slot, Slot::Current);
                assert_eq!(s.cipher, CIPHER_AES_256_GCM);
                assert_eq!(s.send_key[0], 0x00);
                assert_eq!(s.send_key[31], 0x1f);
                assert_eq!(s.recv_key[10], 0x2a, "upper-case hex accepted");
                assert_eq!(
                    (s.rekey_after_secs, s.reject_after_secs),
                    (DEFAULT_REKEY_AFTER_SECS, DEFAULT_REJECT_AFTER_SECS)
                );
            }
            other => panic!("expected InstallSession, got {other:?}"),
        }
        assert_eq!(
            msgs[1],
            DownMsg::SetRoutes {
                peer: 2,
                prefixes: vec![
                    ("100.64.0.2".parse().unwrap(), 32),
                    ("fd00::2".parse().unwrap(), 128)
                ]
            }
        );
        assert_eq!(
            msgs[2],
            DownMsg::SetEndpoint {
                peer: 2,
                addr: "198.51.100.2:51820".parse().unwrap()
            }
        );
        match &msgs[3] {
            DownMsg::InstallSession(s) => {
                assert_eq!((s.rekey_after_secs, s.reject_after_secs), (10, 20))
            }
            other => panic!("expected InstallSession, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_file_peer_key_and_expectation_but_never_the_key() {
        let bad_key = peer(2, 1, "").replace(KEY_A, "00112233deadbeef");
        let t = err_text(&bad_key);
        assert!(t.contains("static.toml") && t.contains("peer 2") && t.contains("send_key"));
        assert!(t.contains("64 hex") && t.contains("16 characters"), "{t}");
        assert!(!t.contains("deadbeef"), "key text leaked: {t}");

        let non_hex = peer(2, 1, "").replace(KEY_B, &"zz".repeat(32));
        let t = err_text(&non_hex);
        assert!(
            t.contains("recv_key") && t.contains("non-hex") && !t.contains("zz"),
            "{t}"
        );

        let t = err_text(&peer(4, 1, "").replace("aes-256-gcm", "rot13"));
        assert!(
            t.contains("peer 4") && t.contains("`cipher`") && t.contains("chacha20"),
            "{t}"
        );

        let t = err_text(&peer(2, 1, "").replace("198.51.100.2:51820", "198.51.100.2"));
        assert!(
            t.contains("`endpoint`") && t.contains("address:port"),
            "{t}"
        );

        let t = err_text(&peer(2, 1, "").replace("100.64.0.2/32", "100.64.0.2/24"));
        assert!(t.contains("allowed_ips") && t.contains("host bits"), "{t}");
        let t = err_text(&peer(2, 1, "").replace("fd00::2/128", "fd00::2/129"));
        assert!(t.contains("allowed_ips"), "{t}");

        let t = err_text(&(peer(2, 1, "") + &peer(2, 5, "")));
        assert!(t.contains("`id`") && t.contains("unique"), "{t}");
        let t = err_text(&(peer(2, 1, "") + &peer(3, 1, "")));
        assert!(t.contains("`local_index`") && t.contains("peer 3"), "{t}");

        let t = err_text(&peer(2, 1, "reject_after_secs = 5"));
        assert!(
            t.contains("reject_after_secs") && t.contains("rekey_after_secs"),
            "{t}"
        );

        let t = err_text(&peer(2, 1, "colour = \"blue\""));
        assert!(t.contains("static.toml") && t.contains("colour"), "{t}");

        let t = err_text(&peer(2, 1, "").replace("local_index = 1\n", ""));
        assert!(t.contains("local_index"), "{t}");

        assert!(err_text("").contains("no [[peer]]"));
    }

    #[test]
    fn bare_address_is_a_host_route_and_networks_are_accepted() {
        assert_eq!(
            parse_prefix("100.64.0.9").unwrap(),
            ("100.64.0.9".parse().unwrap(), 32)
        );
        assert_eq!(
            parse_prefix("100.64.0.0/10").unwrap(),
            ("100.64.0.0".parse().unwrap(), 10)
        );
        assert_eq!(
            parse_prefix("fd00::/8").unwrap(),
            ("fd00::".parse().unwrap(), 8)
        );
        assert_eq!(parse_prefix("0.0.0.0/0").unwrap().1, 0);
        assert!(parse_prefix("100.64.0.1/10").is_err());
        assert!(parse_prefix("100.64.0.0/x").is_err());
        assert!(parse_prefix("nonsense").is_err());
    }

    #[test]
    fn missing_file_is_named() {
        let e = load(Path::new("/nonexistent/static.toml")).unwrap_err();
        let t = e.to_string();
        assert!(
            t.contains("/nonexistent/static.toml") && t.contains("cannot read"),
            "{t}"
        );
    }
}
