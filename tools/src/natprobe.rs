//! `shadowmesh bench udp-reflect` and `bench nat-probe`: a small STUN-like pair that tells how
//! the NAT in front of a host behaves, for the NAT lab ([`crate::natlab`]) and for checking a
//! real network by hand.
//!
//! The reflector answers every datagram with the address it came from, as text
//! (`seen 203.0.113.5:40000`), from the socket it arrived on; with `--also-from` it sends a
//! second answer from another socket (another port), announced in the first
//! (`seen … also-from ADDR`), which the NAT lets through only when its filtering is
//! endpoint-independent. The probe sends from one socket to several reflectors, and from the
//! addresses they saw decides the mapping (one external address for all = endpoint-independent)
//! and, when an answer from another port was announced, the filtering.
//!
//! The reply format and the verdicts are plain functions ([`reply_text`], [`parse_reply`],
//! [`Report`]); the socket loops around them are thin and every one is bounded by a deadline.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context};

/// How often the probe resends to reflectors that have not answered (datagrams get lost).
const RESEND: Duration = Duration::from_millis(250);
/// Longest a socket read blocks, so deadlines are checked this often.
const READ_STEP: Duration = Duration::from_millis(50);
/// What the probe sends; the reflector answers anything, this just names the sender in a
/// packet capture.
const PROBE: &[u8] = b"smprobe";

/// `bench udp-reflect`: answers each datagram with the sender's address.
#[derive(clap::Args, Debug, Clone)]
pub struct ReflectArgs {
    /// Address to listen on (and answer from).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Also answer from this second address (another port, say): tests the NAT's filtering.
    #[arg(long)]
    pub also_from: Option<SocketAddr>,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
}

/// `bench nat-probe`: asks reflectors what address they see; prints the NAT's behaviour.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Local address of the one socket used for every server.
    #[arg(long)]
    pub bind: SocketAddr,
    /// A reflector (`bench udp-reflect`); give two or more to judge the mapping.
    #[arg(long = "server", required = true)]
    pub servers: Vec<SocketAddr>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout: u64,
}

/// The reflector's answer to a datagram from `seen`; `also_from` names the address it will
/// answer from as well.
pub fn reply_text(seen: SocketAddr, also_from: Option<SocketAddr>) -> String {
    match also_from {
        Some(a) => format!("seen {seen} also-from {a}"),
        None => format!("seen {seen}"),
    }
}

/// A parsed reflector answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The address the reflector saw the probe come from.
    pub seen: SocketAddr,
    /// The other address the reflector answers from too, if any.
    pub also_from: Option<SocketAddr>,
}

/// Parses a reflector answer; `None` for anything else.
pub fn parse_reply(datagram: &[u8]) -> Option<Reply> {
    let text = std::str::from_utf8(datagram).ok()?;
    let mut words = text.split_whitespace();
    if words.next()? != "seen" {
        return None;
    }
    let seen = words.next()?.parse().ok()?;
    let also_from = match (words.next(), words.next()) {
        (Some("also-from"), Some(a)) => Some(a.parse().ok()?),
        _ => None,
    };
    Some(Reply { seen, also_from })
}

/// What a probe learnt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Per server, in the order given: the address it saw, if it answered.
    pub observed: Vec<(SocketAddr, Option<SocketAddr>)>,
    /// Answers that came from another address than any server's (the `also-from` sockets):
    /// (where from, what it saw).
    pub others: Vec<(SocketAddr, SocketAddr)>,
    /// Whether some server announced an answer from another address.
    pub other_announced: bool,
}

impl Report {
    /// A report for `servers`, nothing heard yet.
    pub fn new(servers: &[SocketAddr]) -> Report {
        Report {
            observed: servers.iter().map(|&s| (s, None)).collect(),
            others: Vec::new(),
            other_announced: false,
        }
    }

    /// Takes in one datagram from `from`.
    pub fn handle(&mut self, from: SocketAddr, datagram: &[u8]) {
        let Some(reply) = parse_reply(datagram) else {
            return;
        };
        if let Some(slot) = self.observed.iter_mut().find(|(s, _)| *s == from) {
            slot.1 = Some(reply.seen);
            self.other_announced |= reply.also_from.is_some();
        } else if !self.others.iter().any(|(f, _)| *f == from) {
            self.others.push((from, reply.seen));
        }
    }

    /// Servers that have not answered.
    pub fn missing(&self) -> Vec<SocketAddr> {
        self.observed
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(s, _)| *s)
            .collect()
    }

    /// Whether there is nothing more to wait for: every server answered, and an announced
    /// answer from another address came (if it was announced).
    pub fn complete(&self) -> bool {
        self.missing().is_empty() && (!self.other_announced || !self.others.is_empty())
    }

    /// `endpoint-independent` when every server saw one address, `endpoint-dependent` when
    /// they saw several; `None` with fewer than two answers.
    pub fn mapping(&self) -> Option<&'static str> {
        let seen: Vec<SocketAddr> = self.observed.iter().filter_map(|(_, o)| *o).collect();
        if seen.len() < 2 {
            return None;
        }
        Some(if seen.iter().all(|s| *s == seen[0]) {
            "endpoint-independent"
        } else {
            "endpoint-dependent"
        })
    }

    /// `endpoint-independent` when an answer from another address got in,
    /// `address-and-port-dependent` when one was announced and did not; `None` when none was
    /// announced (nothing to judge by).
    pub fn filtering(&self) -> Option<&'static str> {
        if !self.others.is_empty() {
            Some("endpoint-independent")
        } else if self.other_announced {
            Some("address-and-port-dependent")
        } else {
            None
        }
    }

    /// The lines `nat-probe` prints.
    pub fn lines(&self, local: SocketAddr) -> Vec<String> {
        let mut out = vec![format!("local={local}")];
        for (s, o) in &self.observed {
            match o {
                Some(o) => out.push(format!("server={s} observed={o}")),
                None => out.push(format!("server={s} observed=none")),
            }
        }
        for (f, o) in &self.others {
            out.push(format!("other={f} observed={o}"));
        }
        out.push(format!(
            "mapping: {}",
            self.mapping()
                .unwrap_or("unknown (fewer than two servers answered)")
        ));
        if let Some(f) = self.filtering() {
            out.push(format!("filtering: {f}"));
        }
        out
    }
}

/// Runs the reflector until its deadline.
pub fn reflect(args: &ReflectArgs, clock: fn() -> Duration) -> anyhow::Result<()> {
    let main = UdpSocket::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let other = match args.also_from {
        Some(a) => Some(UdpSocket::bind(a).with_context(|| format!("binding --also-from {a}"))?),
        None => None,
    };
    let also = match &other {
        Some(s) => Some(s.local_addr()?),
        None => None,
    };
    main.set_read_timeout(Some(READ_STEP * 4))?;
    let end = clock() + Duration::from_secs(args.duration);
    let mut buf = [0u8; 2048];
    let mut answered = 0u64;
    while clock() < end {
        let Ok((_, from)) = main.recv_from(&mut buf) else {
            continue;
        };
        // A send that fails (no route, say) is the prober's problem, not a reason to stop.
        let _ = main.send_to(reply_text(from, also).as_bytes(), from);
        if let Some(o) = &other {
            let _ = o.send_to(reply_text(from, None).as_bytes(), from);
        }
        answered += 1;
    }
    println!("answered={answered}");
    Ok(())
}

/// Probes the servers from one socket until every answer is in or the timeout passes.
pub fn probe(args: &ProbeArgs, clock: fn() -> Duration) -> anyhow::Result<Report> {
    if args.servers.is_empty() {
        bail!("nat-probe needs at least one --server");
    }
    let s = UdpSocket::bind(args.bind).with_context(|| format!("binding {}", args.bind))?;
    s.set_read_timeout(Some(READ_STEP))?;
    let local = s.local_addr()?;
    let start = clock();
    let deadline = start + Duration::from_millis(args.timeout);
    let mut report = Report::new(&args.servers);
    let mut last_send: Option<Duration> = None;
    let mut buf = [0u8; 2048];
    while !report.complete() {
        let now = clock();
        if now >= deadline {
            break;
        }
        if last_send.is_none_or(|t| now.saturating_sub(t) >= RESEND) {
            for server in report.missing() {
                s.send_to(PROBE, server)
                    .with_context(|| format!("sending to {server} from {local}"))?;
            }
            last_send = Some(now);
        }
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            report.handle(from, &buf[..n]);
        }
    }
    for line in report.lines(local) {
        println!("{line}");
    }
    let missing = report.missing();
    if !missing.is_empty() {
        bail!(
            "no answer within {} ms from {missing:?} (is `bench udp-reflect` running there, and \
             is there a route?)",
            args.timeout
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn replies_round_trip_and_garbage_is_ignored() {
        let seen = a("203.0.113.5:40000");
        let also = a("198.51.100.1:3479");
        assert_eq!(
            parse_reply(reply_text(seen, Some(also)).as_bytes()),
            Some(Reply {
                seen,
                also_from: Some(also)
            })
        );
        assert_eq!(
            parse_reply(reply_text(seen, None).as_bytes()),
            Some(Reply {
                seen,
                also_from: None
            })
        );
        for junk in [
            &b""[..],
            b"seen",
            b"seen nonsense",
            b"\xff\xfe",
            b"hello 198.51.100.4:5",
        ] {
            assert_eq!(parse_reply(junk), None);
        }
    }

    #[test]
    fn verdicts_follow_what_the_servers_saw() {
        let (s1, s2, o1) = (
            a("198.51.100.1:3478"),
            a("198.51.100.2:3478"),
            a("198.51.100.1:3479"),
        );
        let mut r = Report::new(&[s1, s2]);
        assert_eq!(r.mapping(), None);
        r.handle(s1, b"seen 203.0.113.1:40000 also-from 198.51.100.1:3479");
        assert!(!r.complete());
        r.handle(s2, b"seen 203.0.113.1:40000");
        assert_eq!(r.mapping(), Some("endpoint-independent"));
        assert_eq!(r.filtering(), Some("address-and-port-dependent"));
        assert!(!r.complete(), "the announced answer is still awaited");
        r.handle(o1, b"seen 203.0.113.1:40000");
        assert!(r.complete());
        assert_eq!(r.filtering(), Some("endpoint-independent"));

        let mut r = Report::new(&[s1, s2]);
        r.handle(s1, b"seen 203.0.113.1:40000");
        r.handle(s2, b"seen 203.0.113.1:40001");
        assert_eq!(r.mapping(), Some("endpoint-dependent"));
        assert_eq!(r.filtering(), None);
        assert!(r
            .lines(a("0.0.0.0:1"))
            .iter()
            .all(|l| !l.starts_with("filtering")));
    }
}
