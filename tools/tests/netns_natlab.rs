//! Root-only: the NAT lab (`shadowmesh::natlab`) behaves as its kinds say. Two public hosts run
//! `bench udp-reflect` (each also answering from a second port); one host behind each kind of
//! NAT runs `bench nat-probe` at both, and what the reflectors saw is checked against the kind:
//! no NAT shows the host's own address; a full cone keeps the port for both servers and lets the
//! unsolicited answer from the other port in; EIM-APDF keeps one mapping but filters that
//! answer; a symmetric NAT shows each server another port; a double NAT shows the CGNAT's
//! address. A second test cuts, restores, renumbers and re-attaches a host. Prints the table
//! `perf-scripts/natlab` shows.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::root_or_skip;
use shadowmesh::natlab::{NatKind, NatLab};
use shadowmesh::netns::have;

/// The reflectors' port, and the port their second socket answers from.
const REFLECT_PORT: u16 = 3478;
const OTHER_PORT: u16 = 3479;
/// The probe's local port (a full cone and EIM must keep it).
const PROBE_PORT: u16 = 40000;

/// What one `nat-probe` printed.
#[derive(Debug, Default)]
struct Probe {
    ok: bool,
    observed: Vec<SocketAddr>,
    others: Vec<SocketAddr>,
    mapping: String,
    filtering: String,
    raw: String,
}

fn parse(out: &std::process::Output) -> Probe {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut p = Probe {
        ok: out.status.success(),
        raw: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        ..Probe::default()
    };
    for line in text.lines() {
        let observed = || {
            shadowmesh::netns::field(line, "observed").and_then(|o| o.parse::<SocketAddr>().ok())
        };
        if line.starts_with("server=") {
            p.observed.extend(observed());
        } else if line.starts_with("other=") {
            p.others.extend(observed());
        } else if let Some(m) = line.strip_prefix("mapping: ") {
            p.mapping = m.to_string();
        } else if let Some(f) = line.strip_prefix("filtering: ") {
            p.filtering = f.to_string();
        }
    }
    p
}

fn prerequisites(test: &str) -> bool {
    if !root_or_skip(test) {
        return false;
    }
    if !have("nft") || !have("sysctl") {
        eprintln!(
            "SKIP {test}: needs nft (nftables) and sysctl (procps); scripts/test.sh installs them"
        );
        return false;
    }
    true
}

/// The lab, using the `shadowmesh` cargo built for the test, or the one in
/// `$SHADOWMESH_NATLAB_BIN` (what `perf-scripts/natlab --bin DIR` passes).
fn lab(tag: &str) -> NatLab {
    let dir = match std::env::var_os("SHADOWMESH_NATLAB_BIN") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_BIN_EXE_shadowmesh"))
            .parent()
            .unwrap()
            .to_path_buf(),
    };
    NatLab::new(tag, &dir).unwrap()
}

/// Starts a reflector on each of `hosts` (port REFLECT_PORT, also answering from OTHER_PORT);
/// returns their addresses.
fn start_reflectors(lab: &mut NatLab, hosts: &[usize]) -> Vec<SocketAddr> {
    let cli = lab.bin("shadowmesh");
    let mut servers = Vec::new();
    for &h in hosts {
        let ip = lab.local_ip(h).unwrap();
        let listen = format!("{ip}:{REFLECT_PORT}");
        let other = format!("{ip}:{OTHER_PORT}");
        lab.spawn(
            h,
            &[
                &cli,
                "bench",
                "udp-reflect",
                "--listen",
                &listen,
                "--also-from",
                &other,
                "--duration",
                "40",
            ],
        )
        .unwrap();
        servers.push(listen.parse().unwrap());
    }
    // The probe resends every 250 ms, so a late reflector costs a resend, not the test.
    std::thread::sleep(Duration::from_millis(200));
    servers
}

/// Starts `nat-probe` in `host` (bound to its local address) against `servers`.
fn spawn_probe(lab: &mut NatLab, host: usize, servers: &[SocketAddr], timeout_ms: u64) -> usize {
    let cli = lab.bin("shadowmesh");
    let bind = format!("{}:{PROBE_PORT}", lab.local_ip(host).unwrap());
    let t = timeout_ms.to_string();
    let mut args = vec![
        cli,
        "bench".into(),
        "nat-probe".into(),
        "--bind".into(),
        bind,
        "--timeout".into(),
        t,
    ];
    for s in servers {
        args.push("--server".into());
        args.push(s.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn(host, &args).unwrap()
}

fn probe(lab: &mut NatLab, host: usize, servers: &[SocketAddr], timeout_ms: u64) -> Probe {
    let h = spawn_probe(lab, host, servers, timeout_ms);
    parse(
        &lab.wait(h, Duration::from_millis(timeout_ms + 5000))
            .unwrap(),
    )
}

#[test]
fn each_nat_kind_maps_and_filters_as_its_name_says() {
    let test = "each_nat_kind_maps_and_filters_as_its_name_says";
    if !prerequisites(test) {
        return;
    }
    let mut lab = lab("k");
    let reflectors = [
        lab.add_public("reflector-a").unwrap(),
        lab.add_public("reflector-b").unwrap(),
    ];
    let sites: Vec<(NatKind, usize)> = NatKind::ALL
        .iter()
        .map(|&k| (k, lab.add_site(k.name(), k).unwrap()))
        .collect();
    let servers = start_reflectors(&mut lab, &reflectors);
    // All probes at once: the filtering verdict of the APDF kinds waits out the timeout.
    let handles: Vec<usize> = sites
        .iter()
        .map(|&(_, h)| spawn_probe(&mut lab, h, &servers, 1500))
        .collect();
    let results: Vec<Probe> = handles
        .into_iter()
        .map(|h| parse(&lab.wait(h, Duration::from_secs(8)).unwrap()))
        .collect();

    println!(
        "{:<11} {:<19} {:<15} {:<19} {:<19} {:<21} filtering",
        "kind", "local", "public", "seen by A", "seen by B", "mapping"
    );
    for (&(kind, h), p) in sites.iter().zip(&results) {
        let show = |i: usize| p.observed.get(i).map_or("-".into(), |a| a.to_string());
        println!(
            "{:<11} {:<19} {:<15} {:<19} {:<19} {:<21} {}",
            kind.name(),
            format!("{}:{PROBE_PORT}", lab.local_ip(h).unwrap()),
            lab.public_ip(h).unwrap().to_string(),
            show(0),
            show(1),
            p.mapping,
            if p.filtering.is_empty() {
                "-"
            } else {
                &p.filtering
            }
        );
    }

    for (&(kind, h), p) in sites.iter().zip(&results) {
        let why = || {
            format!(
                "{kind:?}: probe said:\n{}\nrules:\n{}",
                p.raw,
                lab.rulesets(h).unwrap_or_default()
            )
        };
        assert!(p.ok && p.observed.len() == 2, "{}", why());
        let public = lab.public_ip(h).unwrap();
        for o in &p.observed {
            assert_eq!(o.ip(), public, "{}", why());
        }
        let ports: Vec<u16> = p.observed.iter().map(SocketAddr::port).collect();
        match kind {
            NatKind::None => {
                let own: SocketAddr = format!("{}:{PROBE_PORT}", lab.local_ip(h).unwrap())
                    .parse()
                    .unwrap();
                assert!(p.observed.iter().all(|o| *o == own), "{}", why());
                assert_eq!(p.filtering, "endpoint-independent", "{}", why());
            }
            NatKind::FullCone => {
                assert_eq!(p.mapping, "endpoint-independent", "{}", why());
                assert_eq!(ports, [PROBE_PORT, PROBE_PORT], "{}", why());
                assert_eq!(p.filtering, "endpoint-independent", "{}", why());
                assert!(p.others.iter().all(|o| o.port() == PROBE_PORT), "{}", why());
            }
            NatKind::EimApdf | NatKind::DoubleNat => {
                assert_eq!(p.mapping, "endpoint-independent", "{}", why());
                assert_eq!(p.filtering, "address-and-port-dependent", "{}", why());
                assert!(p.others.is_empty(), "{}", why());
            }
            NatKind::Symmetric => {
                assert_eq!(p.mapping, "endpoint-dependent", "{}", why());
                assert_ne!(ports[0], ports[1], "{}", why());
                assert_eq!(p.filtering, "address-and-port-dependent", "{}", why());
            }
        }
        if kind == NatKind::DoubleNat {
            let routers = lab.routers(h);
            assert_eq!(routers.len(), 2, "{}", why());
            assert_eq!(public, routers[0].wan_ip, "the CGNAT's address: {}", why());
            assert_ne!(
                public,
                routers[1].wan_ip,
                "not the home router's: {}",
                why()
            );
        }
    }
}

#[test]
fn a_host_can_be_cut_off_restored_renumbered_and_moved() {
    let test = "a_host_can_be_cut_off_restored_renumbered_and_moved";
    if !prerequisites(test) {
        return;
    }
    let mut lab = lab("m");
    let reflectors = [
        lab.add_public("reflector-a").unwrap(),
        lab.add_public("reflector-b").unwrap(),
    ];
    let site = lab.add_site("roamer", NatKind::EimApdf).unwrap();
    let public = lab.add_public("public").unwrap();
    let servers = start_reflectors(&mut lab, &reflectors);
    for h in [site, public] {
        let before = probe(&mut lab, h, &servers, 1000);
        assert!(before.ok, "{}", before.raw);
        lab.cut(h).unwrap();
        let cut = probe(&mut lab, h, &servers, 600);
        assert!(!cut.ok && cut.observed.is_empty(), "{}", cut.raw);
        lab.restore(h).unwrap();
        let back = probe(&mut lab, h, &servers, 1500);
        assert!(back.ok, "after restore: {}", back.raw);
        lab.block(h).unwrap();
        let blocked = probe(&mut lab, h, &servers, 600);
        assert!(
            !blocked.ok && blocked.observed.is_empty(),
            "{}",
            blocked.raw
        );
        lab.unblock(h).unwrap();

        let old = lab.local_ip(h).unwrap();
        let new = lab.roam(h).unwrap();
        assert_ne!(old, new);
        let roamed = probe(&mut lab, h, &servers, 1500);
        assert!(roamed.ok, "after roaming: {}", roamed.raw);
        if h == public {
            assert_eq!(roamed.observed[0].ip(), new, "{}", roamed.raw);
        }
    }
    // Moving the site's host behind another NAT gives it another public address.
    let old_public = lab.public_ip(site).unwrap();
    lab.reattach(site, NatKind::Symmetric).unwrap();
    assert_ne!(lab.public_ip(site).unwrap(), old_public);
    let moved = probe(&mut lab, site, &servers, 1500);
    assert!(moved.ok, "after re-attaching: {}", moved.raw);
    assert_eq!(moved.mapping, "endpoint-dependent", "{}", moved.raw);
    assert_eq!(
        moved.observed[0].ip(),
        lab.public_ip(site).unwrap(),
        "{}",
        moved.raw
    );
    println!(
        "cut, restore, block, roam and re-attach: ok (site now {} behind {})",
        lab.local_ip(site).unwrap(),
        lab.public_ip(site).unwrap()
    );
}
