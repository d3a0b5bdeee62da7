//! `shadowmesh status`, `shadowmesh peers`, `shadowmesh connect`, `shadowmesh disconnect`:
//! the operator's view, through the control plane's admin API (the dataplane serves one IPC
//! client, the control plane, so status never talks to it directly).
//!
//! Owns formatting only (a table like `tailscale status`, blocks like `wg show`, or the raw
//! JSON with `--json`); it never changes state except through the API's connect/disconnect.

use std::path::PathBuf;

use clap::Args;
use shadowmesh_control::api::{self, DhtInfo, NatInfo, PeerInfo, PeersReply, StatusReply};
use shadowmesh_control::config::{Config, DEFAULT_ADMIN_SOCKET};
use shadowmesh_control::nat::FamilyView;

/// Where to find the admin socket.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The admin socket (default: from --config, else /run/shadowmesh/admin.sock).
    #[arg(long)]
    pub admin: Option<PathBuf>,
    /// A node configuration to take the admin socket from.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of a table (for scripts).
    #[arg(long)]
    pub json: bool,
}

impl AdminArgs {
    /// The admin socket path.
    ///
    /// # Errors
    /// The configuration does not load.
    pub fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(a) = &self.admin {
            return Ok(a.clone());
        }
        if let Some(c) = &self.config {
            return Ok(Config::load(c)?.control.admin_socket);
        }
        Ok(PathBuf::from(DEFAULT_ADMIN_SOCKET))
    }
}

/// Human-readable byte count (binary units).
#[must_use]
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "5s ago", "3m ago", "never".
#[must_use]
pub fn ago(secs: Option<u64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) if s < 7200 => format!("{}m ago", s / 60),
        Some(s) => format!("{}h ago", s / 3600),
    }
}

fn state(p: &PeerInfo) -> String {
    if !p.enabled {
        "disconnected".into()
    } else if p.reachable == Some(false) {
        "unreachable".into()
    } else if let (Some(c), Some(age)) = (&p.cipher, p.session_age_secs) {
        format!("{c} {age}s")
    } else if p.handshaking {
        "handshaking".into()
    } else if p.failures > 0 {
        format!("unreachable ({} tries)", p.failures)
    } else {
        "idle".into()
    }
}

/// Renders the status table.
#[must_use]
pub fn render_status(s: &StatusReply) -> String {
    let mut out = format!(
        "node {} ({})  {}\ndataplane: {}\nhandshakes: {} initiations, {} completed as initiator, {} as responder, {} refused, {} given up\n",
        s.node.name,
        s.node.node_id,
        s.node.addresses.join(", "),
        if s.dataplane.connected {
            format!(
                "connected ({} workers, {})",
                s.dataplane.workers.map_or("?".into(), |w| w.to_string()),
                s.dataplane.socket
            )
        } else {
            format!("NOT connected ({})", s.dataplane.socket)
        },
        s.handshakes.initiations_sent,
        s.handshakes.completed_initiator,
        s.handshakes.completed_responder,
        s.handshakes.refused,
        s.handshakes.gave_up,
    );
    out.push_str(&format!("nat: {}\n", nat_summary(&s.nat)));
    if s.peers.is_empty() {
        out.push_str("no peers\n");
        return out;
    }
    out.push_str(&format!(
        "\n{:<16} {:<18} {:<24} {:<8} {:>8} {:<22} {:<10} {:>11} {:>11}\n",
        "PEER", "ADDRESS", "ENDPOINT", "PATH", "RTT", "SESSION", "HANDSHAKE", "RX", "TX"
    ));
    for p in &s.peers {
        out.push_str(&format!(
            "{:<16} {:<18} {:<24} {:<8} {:>8} {:<22} {:<10} {:>11} {:>11}\n",
            p.name,
            p.allowed_ips.first().map_or("-", String::as_str),
            p.endpoint.as_deref().unwrap_or("-"),
            p.path.as_deref().unwrap_or("-"),
            p.rtt_ms.map_or("-".into(), |r| format!("{r:.1}ms")),
            state(p),
            ago(p.last_handshake_secs),
            bytes(p.rx_bytes),
            bytes(p.tx_bytes),
        ));
    }
    out
}

/// Renders `wg show`-style peer blocks.
#[must_use]
pub fn render_peers(peers: &[PeerInfo]) -> String {
    let mut out = String::new();
    for p in peers {
        out.push_str(&format!("peer: {} ({})\n", p.name, p.node_id));
        out.push_str(&format!(
            "  endpoint: {}\n",
            p.endpoint.as_deref().unwrap_or("(none)")
        ));
        if let Some(path) = &p.path {
            out.push_str(&format!(
                "  path: {path}{}\n",
                p.rtt_ms
                    .map_or(String::new(), |r| format!(", rtt {r:.1} ms"))
            ));
        }
        out.push_str(&format!("  allowed ips: {}\n", p.allowed_ips.join(", ")));
        out.push_str(&format!(
            "  latest handshake: {}{}\n",
            ago(p.last_handshake_secs),
            p.role
                .as_ref()
                .map_or(String::new(), |r| format!(" (as {r})"))
        ));
        out.push_str(&format!("  session: {}\n", state(p)));
        out.push_str(&format!(
            "  transfer: {} received ({} packets), {} sent ({} packets)\n",
            bytes(p.rx_bytes),
            p.rx_packets,
            bytes(p.tx_bytes),
            p.tx_packets
        ));
        if !p.drops.is_empty() {
            let list: Vec<String> = p.drops.iter().map(|(c, n)| format!("{n} {c}")).collect();
            out.push_str(&format!("  dropped: {}\n", list.join(", ")));
        }
        if p.dynamic {
            out.push_str("  (learned from its handshake, not configured)\n");
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("no peers\n");
    }
    out
}

/// `shadowmesh status`.
///
/// # Errors
/// The control plane is unreachable or answered an error.
pub fn status(a: &AdminArgs) -> anyhow::Result<()> {
    let (s, body): (StatusReply, _) = api::get_json(&a.socket()?, "/v1/status")?;
    if a.json {
        println!("{body}");
    } else {
        print!("{}", render_status(&s));
    }
    Ok(())
}

/// `shadowmesh peers`.
///
/// # Errors
/// The control plane is unreachable or answered an error.
pub fn peers(a: &AdminArgs) -> anyhow::Result<()> {
    let (p, body): (PeersReply, _) = api::get_json(&a.socket()?, "/v1/peers")?;
    if a.json {
        println!("{body}");
    } else {
        print!("{}", render_peers(&p.peers));
    }
    Ok(())
}

/// Renders `GET /v1/dht`: our record, the routing table, stored records, recent lookups.
#[must_use]
pub fn render_dht(d: &DhtInfo) -> String {
    let mut out = format!(
        "dht: {} mode, {} contacts, {} stored records
bootstrap: {}
observed: {}
published: {} (seq {})
",
        if d.server { "server" } else { "client" },
        d.contacts.len(),
        d.records.len(),
        list_or_none(&d.bootstrap),
        if d.observed.is_empty() {
            "(none yet)".to_string()
        } else {
            d.observed
                .iter()
                .map(|(a, n)| format!("{a} (by {n})"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        list_or_none(&d.published),
        d.record_seq,
    );
    out.push_str(&format!(
        "
{:<18} {:<28} {:>6} {:>10}
",
        "CONTACT", "ADDRESS", "BUCKET", "SEEN"
    ));
    for c in &d.contacts {
        out.push_str(&format!(
            "{:<18} {:<28} {:>6} {:>10}
",
            c.node_id,
            c.addr,
            c.bucket,
            ago(Some(c.last_seen_secs))
        ));
    }
    out.push_str(&format!(
        "
{:<18} {:<16} {:<18} {:>14} {:>9}  {}
",
        "KEY", "NAME", "NODE", "SEQ", "EXPIRES", "ENDPOINTS"
    ));
    for r in &d.records {
        out.push_str(&format!(
            "{:<18} {:<16} {:<18} {:>14} {:>8}s  {}
",
            r.key,
            r.name,
            r.node_id,
            r.seq,
            r.expires_in_secs,
            r.endpoints.join(", ")
        ));
    }
    out.push_str(&format!(
        "
{:<40} {:<12} {:<6} {:>5} {:>8} {:>8}
",
        "LOOKUP", "WHY", "FOUND", "HOPS", "QUERIED", "MS"
    ));
    for l in &d.lookups {
        out.push_str(&format!(
            "{:<40} {:<12} {:<6} {:>5} {:>8} {:>8}
",
            l.target,
            l.purpose,
            if l.found { "yes" } else { "no" },
            l.hops,
            l.queried,
            l.millis
        ));
    }
    if !d.stats.is_empty() {
        let s: Vec<String> = d.stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "
counters: {}
",
            s.join(" ")
        ));
    }
    out
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

/// One family's view in a few words: "endpoint-independent, public 198.51.100.9:4500 (port
/// kept), 3 reporters".
fn family_line(v: &FamilyView) -> String {
    let mut s = v.mapping.as_str().to_string();
    if let Some(p) = v.public {
        s.push_str(&format!(", public {p}"));
        match v.port_preserved {
            Some(true) => s.push_str(" (port kept)"),
            Some(false) => s.push_str(" (port changed)"),
            None => {}
        }
    }
    s.push_str(&format!(
        ", {} reporter{}",
        v.reporters,
        if v.reporters == 1 { "" } else { "s" }
    ));
    if v.distinct > 1 {
        s.push_str(&format!(", {} addresses seen", v.distinct));
    }
    s
}

/// Both families on one line, for `status`.
fn nat_summary(n: &NatInfo) -> String {
    let parts: Vec<String> = [("IPv4", &n.ipv4), ("IPv6", &n.ipv6)]
        .into_iter()
        .filter_map(|(f, v)| v.as_ref().map(|v| format!("{f} {}", family_line(v))))
        .collect();
    if parts.is_empty() {
        "no reports yet (needs replies from DHT nodes)".into()
    } else {
        parts.join("; ")
    }
}

/// Renders `GET /v1/netcheck`: the classification per family, then every report.
#[must_use]
pub fn render_netcheck(n: &NatInfo) -> String {
    let mut out = format!("local: {}\n", list_or_none(&n.local));
    for (f, v) in [("IPv4", &n.ipv4), ("IPv6", &n.ipv6)] {
        match v {
            Some(v) => out.push_str(&format!("{f}: {}\n", family_line(v))),
            None => out.push_str(&format!("{f}: no reports\n")),
        }
    }
    if n.homes.is_empty() {
        out.push_str("homes: none (no bootstrap node answered yet, or this node is one)\n");
    }
    for h in &n.homes {
        out.push_str(&format!(
            "home: {} ({}), rtt {}\n",
            h.addr,
            h.node_id,
            h.rtt_ms
                .map_or("not measured yet".into(), |r| format!("{r:.1} ms"))
        ));
    }
    let counter = |k: &str| n.punch.get(k).copied().unwrap_or(0);
    out.push_str(&format!(
        "hole punching: {} started, {} succeeded, {} probes sent, {} received, {} dropped\n",
        counter("started"),
        counter("succeeded"),
        counter("probes_sent"),
        counter("probes_received"),
        counter("probes_dropped"),
    ));
    out.push_str("port mapping: not supported yet (NAT-PMP/PCP/UPnP are not built)\n");
    if n.reports.is_empty() {
        out.push_str("\nno reports yet: the node has not heard back from a DHT node\n");
        return out;
    }
    out.push_str(&format!(
        "\n{:<18} {:<44} {:<44} {:>6}\n",
        "REPORTER", "REPORTER ADDRESS", "SAW US AT", "AGE"
    ));
    for r in &n.reports {
        out.push_str(&format!(
            "{:<18} {:<44} {:<44} {:>5}s\n",
            r.node_id, r.reporter, r.observed, r.age_secs
        ));
    }
    out
}

/// `shadowmesh netcheck`.
///
/// # Errors
/// The control plane is unreachable or answered an error.
pub fn netcheck(a: &AdminArgs) -> anyhow::Result<()> {
    let (n, body): (NatInfo, _) = api::get_json(&a.socket()?, "/v1/netcheck")?;
    if a.json {
        println!("{body}");
    } else {
        print!("{}", render_netcheck(&n));
    }
    Ok(())
}

/// `shadowmesh dht`.
///
/// # Errors
/// The control plane is unreachable or answered an error.
pub fn dht(a: &AdminArgs) -> anyhow::Result<()> {
    let (d, body): (DhtInfo, _) = api::get_json(&a.socket()?, "/v1/dht")?;
    if a.json {
        println!("{body}");
    } else {
        print!("{}", render_dht(&d));
    }
    Ok(())
}

/// `shadowmesh connect NAME|IP` / `shadowmesh disconnect NAME`.
///
/// # Errors
/// Unknown peer, unreachable control plane.
pub fn connect(a: &AdminArgs, peer: &str, up: bool) -> anyhow::Result<()> {
    api::post_peer(&a.socket()?, peer, up)?;
    println!("{} {peer}", if up { "connecting" } else { "disconnected" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadowmesh_control::api::NatReportRow;
    use shadowmesh_control::nat::Mapping;

    #[test]
    fn netcheck_names_the_mapping_the_public_address_and_each_report() {
        let empty = NatInfo::default();
        assert!(render_netcheck(&empty).contains("no reports yet"));
        assert!(nat_summary(&empty).contains("no reports yet"));
        let n = NatInfo {
            local: vec!["192.0.2.10:4500".into()],
            ipv4: Some(FamilyView {
                mapping: Mapping::EndpointIndependent,
                public: Some("198.51.100.9:4500".parse().unwrap()),
                port_preserved: Some(true),
                reporters: 3,
                distinct: 2,
            }),
            ipv6: None,
            reports: vec![NatReportRow {
                node_id: "00112233aabbccdd".into(),
                reporter: "203.0.113.1:4500".into(),
                observed: "198.51.100.9:4500".into(),
                age_secs: 4,
            }],
            homes: vec![shadowmesh_control::api::HomeRow {
                node_id: "99887766aabbccdd".into(),
                addr: "198.51.100.1:51820".into(),
                rtt_ms: Some(1.25),
            }],
            punch: [("started".to_string(), 2), ("succeeded".to_string(), 1)].into(),
        };
        let t = render_netcheck(&n);
        assert!(
            t.contains("home: 198.51.100.1:51820 (99887766aabbccdd), rtt 1.2 ms"),
            "{t}"
        );
        assert!(t.contains("hole punching: 2 started, 1 succeeded"), "{t}");
        assert!(
            t.contains(
                "IPv4: endpoint-independent, public 198.51.100.9:4500 (port kept), 3 reporters, 2 addresses seen"
            ),
            "{t}"
        );
        assert!(t.contains("IPv6: no reports"), "{t}");
        assert!(t.contains("203.0.113.1:4500") && t.contains("4s"), "{t}");
        assert!(nat_summary(&n).starts_with("IPv4 endpoint-independent"));
    }

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(ago(None), "never");
        assert_eq!(ago(Some(5)), "5s ago");
        assert_eq!(ago(Some(600)), "10m ago");
        let s = StatusReply {
            peers: vec![PeerInfo {
                name: "beta".into(),
                enabled: true,
                cipher: Some("aes-256-gcm".into()),
                session_age_secs: Some(7),
                last_handshake_secs: Some(7),
                allowed_ips: vec!["100.64.0.2/32".into()],
                rx_bytes: 2048,
                drops: [("replay".to_string(), 3)].into_iter().collect(),
                ..PeerInfo::default()
            }],
            ..StatusReply::default()
        };
        let t = render_status(&s);
        assert!(
            t.contains("beta") && t.contains("aes-256-gcm 7s") && t.contains("2.0 KiB"),
            "{t}"
        );
        assert!(t.contains("NOT connected"));
        let p = render_peers(&s.peers);
        assert!(
            p.contains("allowed ips: 100.64.0.2/32")
                && p.contains("7s ago")
                && p.contains("dropped: 3 replay"),
            "{p}"
        );
    }
}
