//! The node configuration file (TOML): what `shadowmesh-control` and `shadowmesh up` read.
//!
//! Owns parsing and validation only: every error names the file, the line, the key and what
//! was expected. It never opens a key, certificate or socket (callers load those with the
//! paths resolved here, relative paths being relative to the configuration file).
//!
//! ```toml
//! [node]
//! name = "alpha"
//! key = "alpha.key"          # NODE KEY file, mode 0600
//! cert = "alpha.cert"        # our NODE CERT, signed by the CA below
//! ca = "ca.pub"              # CA PUBLIC KEY file
//!
//! [dataplane]
//! socket = "/run/shadowmesh/dataplane.sock"
//! tun = "shadowmesh0"
//! mtu = 1420
//! listen_port = 51820
//! bind = "0.0.0.0"
//! workers = 0                # 0 = one per core
//! backend = "uring"          # or "poll"
//! pin = true                 # pin workers to cores; false when nodes share a machine
//! # binary = "/usr/local/bin/shadowmesh-dataplane"
//!
//! [control]
//! admin_socket = "/run/shadowmesh/admin.sock"
//! log_level = "info"
//! rekey_after_secs = 120
//! reject_after_secs = 180
//!
//! [discovery]
//! bootstrap = ["198.51.100.1:51820"]  # DHT nodes to join through (none: wait to be joined)
//! # advertise = ["203.0.113.7:51820"]  # endpoints to publish (default: local + observed)
//! # server = true                      # enter others' routing tables (default: true)
//!
//! [[peer]]                  # optional with discovery
//! cert = "beta.cert"
//! endpoint = "198.51.100.2:51820"
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

/// Default admin API socket.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/shadowmesh/admin.sock";
/// Default dataplane IPC socket.
pub const DEFAULT_DATAPLANE_SOCKET: &str = "/run/shadowmesh/dataplane.sock";
/// Default data port.
pub const DEFAULT_PORT: u16 = 51820;
/// Largest accepted configuration file (it names files; it never holds keys).
pub const MAX_CONFIG_LEN: usize = 1 << 20;
/// Most static peers.
pub const MAX_PEERS: usize = 4096;
/// Most bootstrap or advertised addresses.
pub const MAX_DISCOVERY_ADDRS: usize = 16;

/// Why a configuration file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the configuration")]
    Io {
        /// The configuration file.
        file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_LEN`].
    #[error("{file}: configuration of {len} bytes, expected at most {MAX_CONFIG_LEN}")]
    TooLarge {
        /// The configuration file.
        file: PathBuf,
        /// Its size.
        len: usize,
    },
    /// TOML syntax, a missing or unknown key, or a value of the wrong type.
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// The configuration file.
        file: PathBuf,
        /// 1-based line (0 when the parser gave no position).
        line: usize,
        /// The parser's message (names the key and the expected type).
        message: String,
    },
    /// A well-typed value that is out of range or does not parse.
    #[error("{file}:{line}: key `{key}`: expected {expected}, got {got:?}")]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// Dotted key, e.g. `peer[1].endpoint`.
        key: String,
        /// What would have been accepted.
        expected: &'static str,
        /// What the file says.
        got: String,
    },
}

/// I/O backend of the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// io_uring (Linux).
    Uring,
    /// poll/epoll (portable).
    Poll,
}

impl Backend {
    /// The name the dataplane's `--backend` flag takes.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uring => "uring",
            Self::Poll => "poll",
        }
    }
}

/// `[node]`: who we are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSection {
    /// Node name (for logs and the admin API; the certificate's name is authoritative).
    pub name: String,
    /// Secret key file (`shadowmesh keygen`).
    pub key: PathBuf,
    /// Our certificate (`shadowmesh ca sign`).
    pub cert: PathBuf,
    /// The network CA's public key.
    pub ca: PathBuf,
}

/// `[dataplane]`: how `shadowmesh up` starts the dataplane and where the control plane finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneSection {
    /// IPC socket.
    pub socket: PathBuf,
    /// TUN interface name.
    pub tun: String,
    /// TUN MTU.
    pub mtu: u32,
    /// Data port.
    pub listen_port: u16,
    /// Underlay address to bind.
    pub bind: IpAddr,
    /// Workers (0 = one per core).
    pub workers: usize,
    /// I/O backend.
    pub backend: Backend,
    /// Pin each worker to its own core (the default; turn off when several nodes share one
    /// machine's cores, as in the demo, so their workers are not stacked on the same cores).
    pub pin: bool,
    /// Explicit path of `shadowmesh-dataplane` (default: next to `shadowmesh`).
    pub binary: Option<PathBuf>,
}

impl DataplaneSection {
    /// The address:port the dataplane binds.
    #[must_use]
    pub fn bind_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.listen_port)
    }
}

/// `[control]`: the control plane's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSection {
    /// Admin API socket (mode 0600).
    pub admin_socket: PathBuf,
    /// `tracing` filter level.
    pub log_level: String,
    /// Sessions older than this are renewed.
    pub rekey_after_secs: u32,
    /// Sessions older than this are refused for sending by the dataplane.
    pub reject_after_secs: u32,
    /// Explicit path of `shadowmesh-control` (default: next to `shadowmesh`).
    pub binary: Option<PathBuf>,
    /// Where `shadowmesh up` writes its pid (for `shadowmesh down`).
    pub pid_file: PathBuf,
}

/// One `[[peer]]`: a statically known peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// Name override (default: the certificate's name).
    pub name: Option<String>,
    /// The peer's certificate file.
    pub cert: PathBuf,
    /// Its underlay address.
    pub endpoint: SocketAddr,
    /// 1-based line of the entry (for later error messages, e.g. a refused certificate).
    pub line: usize,
}

/// A parsed and validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// `[node]`.
    pub node: NodeSection,
    /// `[dataplane]`.
    pub dataplane: DataplaneSection,
    /// `[control]`.
    pub control: ControlSection,
    /// `[[peer]]` entries in file order.
    pub peers: Vec<PeerEntry>,
    /// `[discovery]`.
    pub discovery: DiscoverySection,
}

/// `[discovery]`: the DHT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiscoverySection {
    /// DHT nodes to join through, by address.
    pub bootstrap: Vec<SocketAddr>,
    /// Endpoints to publish in our record instead of the local and observed ones.
    pub advertise: Vec<SocketAddr>,
    /// Whether we offer to enter other nodes' routing tables (a node behind NAT says false).
    pub server: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    dataplane: RawDataplane,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    peer: Vec<Spanned<RawPeer>>,
    #[serde(default)]
    discovery: RawDiscovery,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    #[serde(default)]
    bootstrap: Vec<Spanned<String>>,
    #[serde(default)]
    advertise: Vec<Spanned<String>>,
    server: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    key: Spanned<String>,
    cert: Spanned<String>,
    ca: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    socket: Option<Spanned<String>>,
    tun: Option<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
    listen_port: Option<Spanned<i64>>,
    bind: Option<Spanned<String>>,
    workers: Option<Spanned<i64>>,
    backend: Option<Spanned<String>>,
    pin: Option<Spanned<bool>>,
    binary: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    admin_socket: Option<Spanned<String>>,
    log_level: Option<Spanned<String>>,
    rekey_after_secs: Option<Spanned<i64>>,
    reject_after_secs: Option<Spanned<i64>>,
    binary: Option<Spanned<String>>,
    pid_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Option<Spanned<String>>,
    cert: Spanned<String>,
    endpoint: Spanned<String>,
}

/// Turns byte offsets into line numbers and resolves relative paths.
struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text
            .as_bytes()
            .get(..end)
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
            + 1
    }

    fn invalid<T>(
        &self,
        span: &Range<usize>,
        key: impl Into<String>,
        expected: &'static str,
        got: impl ToString,
    ) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(span),
            key: key.into(),
            expected,
            got: got.to_string(),
        })
    }

    fn path(&self, v: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        if v.get_ref().is_empty() {
            return self.invalid(&v.span(), key, "a non-empty path", "");
        }
        let p = PathBuf::from(v.get_ref());
        if p.is_absolute() {
            return Ok(p);
        }
        // Relative paths are relative to the configuration file, not to the working
        // directory, so that `up` works from anywhere.
        Ok(self.file.parent().unwrap_or(Path::new(".")).join(p))
    }

    fn int<T: TryFrom<i64>>(
        &self,
        v: &Spanned<i64>,
        key: &str,
        range: Range<i64>,
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let n = *v.get_ref();
        if !range.contains(&n) {
            return self.invalid(&v.span(), key, expected, n);
        }
        match T::try_from(n) {
            Ok(t) => Ok(t),
            Err(_) => self.invalid(&v.span(), key, expected, n),
        }
    }
}

impl Config {
    /// Reads and validates `file`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line, key and expectation.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let meta = std::fs::metadata(file).map_err(|source| ConfigError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        let len = usize::try_from(meta.len()).unwrap_or(usize::MAX);
        if len > MAX_CONFIG_LEN {
            return Err(ConfigError::TooLarge {
                file: file.to_path_buf(),
                len,
            });
        }
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(file, &text)
    }

    /// Parses `text` as if read from `file` (relative paths resolve against its directory).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line, key and expectation.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_LEN {
            return Err(ConfigError::TooLarge {
                file: file.to_path_buf(),
                len: text.len(),
            });
        }
        let cx = Ctx { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_path_buf(),
            line: e.span().map_or(0, |s| cx.line(&s)),
            message: e.message().trim().to_string(),
        })?;

        let n = &raw.node;
        let name = n.name.get_ref().trim().to_string();
        if name.is_empty() || name.len() > crate::cert::MAX_NAME {
            return cx.invalid(&n.name.span(), "node.name", "a name of 1..=64 bytes", &name);
        }
        let node = NodeSection {
            name: name.clone(),
            key: cx.path(&n.key, "node.key")?,
            cert: cx.path(&n.cert, "node.cert")?,
            ca: cx.path(&n.ca, "node.ca")?,
        };

        let d = &raw.dataplane;
        let backend = match d.backend.as_ref() {
            None => Backend::Uring,
            Some(b) => match b.get_ref().as_str() {
                "uring" => Backend::Uring,
                "poll" => Backend::Poll,
                other => {
                    return cx.invalid(
                        &b.span(),
                        "dataplane.backend",
                        "\"uring\" or \"poll\"",
                        other,
                    )
                }
            },
        };
        let bind = match d.bind.as_ref() {
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(b) => match b.get_ref().parse::<IpAddr>() {
                Ok(a) => a,
                Err(_) => {
                    return cx.invalid(
                        &b.span(),
                        "dataplane.bind",
                        "an IP address without port, e.g. \"0.0.0.0\" or \"::\"",
                        b.get_ref(),
                    )
                }
            },
        };
        let tun = match d.tun.as_ref() {
            None => "shadowmesh0".to_string(),
            Some(t) => {
                let s = t.get_ref();
                // IFNAMSIZ is 16 including the terminating NUL.
                if s.is_empty() || s.len() > 15 || s.contains(['/', ' ', '\0']) {
                    return cx.invalid(
                        &t.span(),
                        "dataplane.tun",
                        "an interface name of 1..=15 bytes without '/' or spaces",
                        s,
                    );
                }
                s.clone()
            }
        };
        let dataplane = DataplaneSection {
            socket: match d.socket.as_ref() {
                Some(s) => cx.path(s, "dataplane.socket")?,
                None => PathBuf::from(DEFAULT_DATAPLANE_SOCKET),
            },
            tun,
            mtu: match d.mtu.as_ref() {
                Some(v) => cx.int(v, "dataplane.mtu", 576..65_536, "an MTU in 576..=65535")?,
                None => 1420,
            },
            listen_port: match d.listen_port.as_ref() {
                Some(v) => cx.int(v, "dataplane.listen_port", 1..65_536, "a port in 1..=65535")?,
                None => DEFAULT_PORT,
            },
            bind,
            workers: match d.workers.as_ref() {
                Some(v) => cx.int(
                    v,
                    "dataplane.workers",
                    0..1025,
                    "a worker count in 0..=1024 (0 = one per core)",
                )?,
                None => 0,
            },
            backend,
            pin: d.pin.as_ref().is_none_or(|p| *p.get_ref()),
            binary: d
                .binary
                .as_ref()
                .map(|b| cx.path(b, "dataplane.binary"))
                .transpose()?,
        };

        let c = &raw.control;
        let log_level = match c.log_level.as_ref() {
            None => "info".to_string(),
            Some(l) => {
                let s = l.get_ref().to_ascii_lowercase();
                if !["error", "warn", "info", "debug", "trace"].contains(&s.as_str()) {
                    return cx.invalid(
                        &l.span(),
                        "control.log_level",
                        "one of error, warn, info, debug, trace",
                        l.get_ref(),
                    );
                }
                s
            }
        };
        let rekey_after_secs: u32 = match c.rekey_after_secs.as_ref() {
            Some(v) => cx.int(
                v,
                "control.rekey_after_secs",
                10..86_401,
                "seconds in 10..=86400",
            )?,
            None => 120,
        };
        let reject_after_secs: u32 = match c.reject_after_secs.as_ref() {
            Some(v) => {
                let r: u32 = cx.int(
                    v,
                    "control.reject_after_secs",
                    10..86_401,
                    "seconds in 10..=86400",
                )?;
                if r <= rekey_after_secs {
                    return cx.invalid(
                        &v.span(),
                        "control.reject_after_secs",
                        "a value above control.rekey_after_secs (a key must outlive its rekey)",
                        r,
                    );
                }
                r
            }
            None => rekey_after_secs.saturating_add(60).max(180),
        };
        let admin_socket = match c.admin_socket.as_ref() {
            Some(s) => cx.path(s, "control.admin_socket")?,
            None => PathBuf::from(DEFAULT_ADMIN_SOCKET),
        };
        let control = ControlSection {
            log_level,
            rekey_after_secs,
            reject_after_secs,
            binary: c
                .binary
                .as_ref()
                .map(|b| cx.path(b, "control.binary"))
                .transpose()?,
            // Beside the admin socket by default: that path is unique per running node
            // already (the API refuses to take over a live socket) and its directory is one
            // the node may write.
            pid_file: match c.pid_file.as_ref() {
                Some(s) => cx.path(s, "control.pid_file")?,
                None => admin_socket.with_extension("pid"),
            },
            admin_socket,
        };

        if raw.peer.len() > MAX_PEERS {
            return cx.invalid(
                &(0..0),
                "peer",
                "at most 4096 [[peer]] entries",
                raw.peer.len(),
            );
        }
        let mut peers = Vec::with_capacity(raw.peer.len());
        for (i, p) in raw.peer.iter().enumerate() {
            let line = cx.line(&p.span());
            let p = p.get_ref();
            let key = |k: &str| format!("peer[{i}].{k}");
            let endpoint = match p.endpoint.get_ref().parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => a,
                _ => {
                    return cx.invalid(
                        &p.endpoint.span(),
                        key("endpoint"),
                        "\"IP:PORT\" (IPv6 as \"[addr]:port\"), not 0.0.0.0 and not port 0",
                        p.endpoint.get_ref(),
                    )
                }
            };
            let name = match p.name.as_ref() {
                Some(n) if n.get_ref().is_empty() || n.get_ref().len() > crate::cert::MAX_NAME => {
                    return cx.invalid(
                        &n.span(),
                        key("name"),
                        "a name of 1..=64 bytes",
                        n.get_ref(),
                    )
                }
                Some(n) => {
                    let dup = peers
                        .iter()
                        .any(|e: &PeerEntry| e.name.as_deref() == Some(n.get_ref().as_str()));
                    if dup {
                        return cx.invalid(
                            &n.span(),
                            key("name"),
                            "a name not used by another [[peer]]",
                            n.get_ref(),
                        );
                    }
                    Some(n.get_ref().clone())
                }
                None => None,
            };
            peers.push(PeerEntry {
                name,
                cert: cx.path(&p.cert, &key("cert"))?,
                endpoint,
                line,
            });
        }
        let disc = &raw.discovery;
        let addrs = |list: &[Spanned<String>], key: &str| -> Result<Vec<SocketAddr>, ConfigError> {
            if list.len() > MAX_DISCOVERY_ADDRS {
                return cx.invalid(
                    &list[MAX_DISCOVERY_ADDRS].span(),
                    key,
                    "at most 16 addresses",
                    list.len(),
                );
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                match v.get_ref().parse::<SocketAddr>() {
                    Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => out.push(a),
                    _ => {
                        return cx.invalid(
                            &v.span(),
                            format!("{key}[{i}]"),
                            "\"IP:PORT\" (IPv6 as \"[addr]:port\"), not 0.0.0.0 and not port 0",
                            v.get_ref(),
                        )
                    }
                }
            }
            Ok(out)
        };
        let discovery = DiscoverySection {
            bootstrap: addrs(&disc.bootstrap, "discovery.bootstrap")?,
            advertise: addrs(&disc.advertise, "discovery.advertise")?,
            server: disc.server.unwrap_or(true),
        };
        Ok(Self {
            file: file.to_path_buf(),
            node,
            dataplane,
            control,
            peers,
            discovery,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "alpha"
key = "alpha.key"
cert = "/etc/sm/alpha.cert"
ca = "ca.pub"

[dataplane]
socket = "/tmp/dp.sock"
listen_port = 51821
bind = "198.51.100.1"
workers = 2
backend = "poll"

[control]
admin_socket = "/tmp/admin.sock"
rekey_after_secs = 60

[[peer]]
cert = "beta.cert"
endpoint = "198.51.100.2:51820"

[[peer]]
name = "gamma"
cert = "gamma.cert"
endpoint = "[fd00::3]:51820"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/sm/node.toml"), text)
    }

    #[test]
    fn parses_a_full_file_and_resolves_relative_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node.name, "alpha");
        assert_eq!(c.node.key, PathBuf::from("/etc/sm/alpha.key"));
        assert_eq!(c.node.cert, PathBuf::from("/etc/sm/alpha.cert"));
        assert_eq!(c.dataplane.backend, Backend::Poll);
        assert!(
            c.dataplane.pin,
            "workers are pinned unless the file says otherwise"
        );
        let unpinned = parse(&GOOD.replace("workers = 2", "workers = 2\npin = false")).unwrap();
        assert!(!unpinned.dataplane.pin);
        assert_eq!(
            c.dataplane.bind_addr(),
            "198.51.100.1:51821".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(c.dataplane.workers, 2);
        assert_eq!(c.dataplane.mtu, 1420);
        assert_eq!(c.control.rekey_after_secs, 60);
        assert_eq!(c.control.pid_file, PathBuf::from("/tmp/admin.pid"));
        // Default reject time stays above the rekey time.
        assert_eq!(c.control.reject_after_secs, 180);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[0].name, None);
        assert_eq!(c.peers[0].line, 19);
        assert_eq!(c.peers[1].name.as_deref(), Some("gamma"));
        assert_eq!(
            c.peers[1].endpoint,
            "[fd00::3]:51820".parse::<SocketAddr>().unwrap()
        );
    }

    #[test]
    fn defaults_when_sections_are_missing() {
        let c = parse("[node]\nname='a'\nkey='k'\ncert='c'\nca='ca'\n").unwrap();
        assert_eq!(c.control.admin_socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(c.dataplane.socket, PathBuf::from(DEFAULT_DATAPLANE_SOCKET));
        assert_eq!(c.dataplane.listen_port, DEFAULT_PORT);
        assert_eq!(c.control.rekey_after_secs, 120);
        assert_eq!(c.control.reject_after_secs, 180);
        assert_eq!(
            c.control.pid_file,
            PathBuf::from("/run/shadowmesh/admin.pid")
        );
        assert!(c.peers.is_empty());
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_endpoint_names_file_line_key_and_expectation() {
        let t = GOOD.replace("198.51.100.2:51820", "198.51.100.2");
        let e = err(&t);
        assert!(e.starts_with("/etc/sm/node.toml:21:"), "{e}");
        assert!(e.contains("peer[0].endpoint"), "{e}");
        assert!(e.contains("IP:PORT"), "{e}");
        assert!(e.contains("\"198.51.100.2\""), "{e}");
    }

    #[test]
    fn bad_backend_and_ranges() {
        let e = err(&GOOD.replace("\"poll\"", "\"epoll\""));
        assert!(e.contains(":13:") && e.contains("dataplane.backend"), "{e}");
        assert!(e.contains("\"uring\" or \"poll\""), "{e}");
        let e = err(&GOOD.replace("listen_port = 51821", "listen_port = 70000"));
        assert!(
            e.contains(":10:") && e.contains("dataplane.listen_port"),
            "{e}"
        );
        let e = err(&GOOD.replace(
            "rekey_after_secs = 60",
            "rekey_after_secs = 60\nreject_after_secs = 30",
        ));
        assert!(e.contains("control.reject_after_secs"), "{e}");
        let e = err(&GOOD.replace("bind = \"198.51.100.1\"", "bind = \"198.51.100.1:9\""));
        assert!(
            e.contains("dataplane.bind") && e.contains("without port"),
            "{e}"
        );
    }

    #[test]
    fn missing_unknown_and_mistyped_keys_name_the_line() {
        let e = err("[node]\nname='a'\nkey='k'\ncert='c'\n");
        assert!(e.contains("node.toml:") && e.contains("ca"), "{e}");
        let e = err(&GOOD.replace("workers = 2", "workerz = 2"));
        assert!(e.contains(":12:") && e.contains("workerz"), "{e}");
        let e = err(&GOOD.replace("workers = 2", "workers = \"two\""));
        assert!(e.contains(":12:"), "{e}");
        let e = err(&GOOD.replace("workers = 2", "workers = 2\npin = \"no\""));
        assert!(e.contains(":13:"), "{e}");
        let e = err("[node\nname='a'");
        assert!(e.contains("node.toml:1:"), "{e}");
    }

    #[test]
    fn duplicate_peer_names_are_refused() {
        let t = format!(
            "{GOOD}\n[[peer]]\nname = \"gamma\"\ncert = \"g2\"\nendpoint = \"198.51.100.9:1\"\n"
        );
        let e = err(&t);
        assert!(
            e.contains("peer[2].name") && e.contains("not used by another"),
            "{e}"
        );
    }

    #[test]
    fn discovery_section_parses_and_names_bad_addresses() {
        let ok = parse(&format!(
            "{GOOD}\n[discovery]\nbootstrap = [\"198.51.100.9:51820\", \"[2001:db8::9]:51820\"]\nserver = false\n"
        ))
        .unwrap();
        assert_eq!(ok.discovery.bootstrap.len(), 2);
        assert!(!ok.discovery.server);
        assert!(parse(GOOD).unwrap().discovery.server, "server by default");
        let e = err(&format!(
            "{GOOD}\n[discovery]\nbootstrap = [\"198.51.100.9:51820\", \"198.51.100.9\"]\n"
        ));
        assert!(e.contains("discovery.bootstrap[1]"), "{e}");
        assert!(e.contains("IP:PORT"), "{e}");
    }

    #[test]
    fn missing_file_names_it() {
        let e = Config::load(Path::new("/nonexistent/sm.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/nonexistent/sm.toml: cannot read"), "{e}");
    }
}
