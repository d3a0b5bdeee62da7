//! What other nodes see of us: the addresses DHT replies echo back (as STUN does), kept per
//! reporter, and the NAT behaviour they imply.
//!
//! Every reply to one of our DHT requests carries the source address the replier saw. One
//! reporter's view says where *that* node reaches us; several reporters at different
//! addresses tell whether our NAT maps one local socket to one public address for everyone
//! (endpoint-independent mapping: hole punching works, the address is worth publishing) or to
//! a new one per destination (endpoint-dependent, "symmetric": each address is good for its
//! reporter only, and a peer behind another such NAT needs a relay).
//!
//! Only authenticated answers to our own requests reach this module (the DHT checks the
//! reply came from the address asked, from the member asked), so an attacker with public data
//! cannot add reports; a lying *member* can add one report, its latest, and is outvoted by
//! the others (see [`Observations::report`]). Sans-IO: time comes from the caller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Reporters remembered (the oldest report is forgotten beyond this).
pub const MAX_REPORTERS: usize = 32;
/// A report older than this no longer counts: the NAT may have dropped the binding, or we moved.
pub const REPORT_TTL: Duration = Duration::from_secs(30 * 60);

/// How a NAT maps one local socket to public addresses, as far as the reports show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// Fewer than two reporters (at distinct addresses) of this address family.
    Unknown,
    /// The reporters see one of our local addresses: no NAT on the way.
    NoNat,
    /// Most reporters see one public address: endpoint-independent mapping.
    EndpointIndependent,
    /// No address is seen by most reporters: the NAT maps per destination (symmetric).
    EndpointDependent,
}

impl Mapping {
    /// A short name for status lines.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::NoNat => "no NAT",
            Self::EndpointIndependent => "endpoint-independent",
            Self::EndpointDependent => "endpoint-dependent",
        }
    }
}

/// One reporter's latest view of us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Where the reporter saw our request come from.
    pub observed: SocketAddr,
    /// The reporter's own address (the one we sent to).
    pub reporter_addr: SocketAddr,
    /// When the report arrived (monotonic).
    pub at: Duration,
}

/// What the reports of one address family say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyView {
    /// The mapping behaviour.
    pub mapping: Mapping,
    /// The public address most reporters agree on, if any.
    pub public: Option<SocketAddr>,
    /// Whether that address kept our local port (`None`: no agreed address or no local port).
    pub port_preserved: Option<bool>,
    /// Distinct reporter addresses that count.
    pub reporters: usize,
    /// Distinct observed addresses among them.
    pub distinct: usize,
}

/// The reports of every reporter, newest per reporter.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    by_reporter: BTreeMap<[u8; 32], Report>,
}

impl Observations {
    /// Records `reporter`'s view. A reporter's newer report replaces its older one (it
    /// follows us when we move), so one member, honest or lying, is one vote; beyond
    /// [`MAX_REPORTERS`] the oldest report is forgotten. Returns whether anything changed.
    pub fn report(&mut self, reporter: [u8; 32], report: Report) -> bool {
        if let Some(old) = self.by_reporter.get_mut(&reporter) {
            let changed = old.observed != report.observed;
            *old = report;
            return changed;
        }
        if self.by_reporter.len() >= MAX_REPORTERS {
            // Bounded: MAX_REPORTERS entries to scan.
            if let Some(oldest) = self
                .by_reporter
                .iter()
                .min_by_key(|(k, r)| (r.at, **k))
                .map(|(k, _)| *k)
            {
                self.by_reporter.remove(&oldest);
            }
        }
        self.by_reporter.insert(reporter, report);
        true
    }

    /// Forgets reports older than [`REPORT_TTL`]. Returns whether any went.
    pub fn expire(&mut self, now: Duration) -> bool {
        let before = self.by_reporter.len();
        self.by_reporter
            .retain(|_, r| now.saturating_sub(r.at) < REPORT_TTL);
        before != self.by_reporter.len()
    }

    /// The current reports, by reporter.
    pub fn reports(&self) -> impl Iterator<Item = (&[u8; 32], &Report)> {
        self.by_reporter.iter()
    }

    /// Each observed address with the number of reporters that see it, in address order.
    #[must_use]
    pub fn addresses(&self) -> Vec<(SocketAddr, usize)> {
        let mut m: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for r in self.by_reporter.values() {
            *m.entry(r.observed).or_default() += 1;
        }
        m.into_iter().collect()
    }

    /// What the reports of the IPv4 (`v6 == false`) or IPv6 family say, given our local
    /// addresses (with the data port).
    ///
    /// Reporters are counted by their address, not their id, so that one host running
    /// several nodes is one vote. Rule: no NAT when the agreed address is a local one;
    /// endpoint-independent when more than half of at least two reporters agree on one
    /// address; endpoint-dependent when at least two report and no address has a majority
    /// (a lone liar can make two honest reporters look endpoint-dependent; with three, it is
    /// outvoted).
    #[must_use]
    pub fn classify(&self, v6: bool, local: &[SocketAddr]) -> FamilyView {
        // Latest report per reporter address.
        let mut per_addr: BTreeMap<SocketAddr, Report> = BTreeMap::new();
        for r in self.by_reporter.values() {
            if r.observed.is_ipv6() != v6 || r.reporter_addr.is_ipv6() != v6 {
                continue;
            }
            let e = per_addr.entry(r.reporter_addr).or_insert(*r);
            if r.at > e.at {
                *e = *r;
            }
        }
        let mut votes: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for r in per_addr.values() {
            *votes.entry(r.observed).or_default() += 1;
        }
        let reporters = per_addr.len();
        let distinct = votes.len();
        // Most votes; ties broken by the lowest address, so the answer is deterministic.
        let top = votes
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(a, n)| (*a, *n));
        let majority = top.filter(|(_, n)| reporters >= 2 && 2 * n > reporters);
        let public = majority.map(|(a, _)| a);
        let mapping = match (reporters, majority) {
            (0 | 1, _) => {
                // One reporter cannot tell the mapping, but it can show there is no NAT.
                match top {
                    Some((a, _)) if local.contains(&a) => Mapping::NoNat,
                    _ => Mapping::Unknown,
                }
            }
            (_, Some((a, _))) if local.contains(&a) => Mapping::NoNat,
            (_, Some(_)) => Mapping::EndpointIndependent,
            (_, None) => Mapping::EndpointDependent,
        };
        let port_preserved = public.and_then(|p| {
            let ports: Vec<u16> = local
                .iter()
                .filter(|l| l.is_ipv6() == v6)
                .map(SocketAddr::port)
                .collect();
            (!ports.is_empty()).then(|| ports.contains(&p.port()))
        });
        FamilyView {
            mapping,
            public,
            port_preserved,
            reporters,
            distinct,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn id(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn rep(observed: &str, reporter: &str, at: u64) -> Report {
        Report {
            observed: sa(observed),
            reporter_addr: sa(reporter),
            at: Duration::from_secs(at),
        }
    }

    const LOCAL: &str = "192.0.2.10:4500";

    #[test]
    fn one_reporter_cannot_tell_the_mapping() {
        let mut o = Observations::default();
        o.report(id(1), rep("198.51.100.9:4500", "203.0.113.1:4500", 1));
        let v = o.classify(false, &[sa(LOCAL)]);
        assert_eq!(v.mapping, Mapping::Unknown);
        assert_eq!((v.public, v.reporters), (None, 1));
    }

    #[test]
    fn agreeing_reporters_mean_endpoint_independent_and_port_preservation_is_seen() {
        let mut o = Observations::default();
        o.report(id(1), rep("198.51.100.9:4500", "203.0.113.1:4500", 1));
        o.report(id(2), rep("198.51.100.9:4500", "203.0.113.2:4500", 2));
        let v = o.classify(false, &[sa(LOCAL)]);
        assert_eq!(v.mapping, Mapping::EndpointIndependent);
        assert_eq!(v.public, Some(sa("198.51.100.9:4500")));
        assert_eq!(v.port_preserved, Some(true));
        // Another port outside: not preserved.
        let mut o = Observations::default();
        o.report(id(1), rep("198.51.100.9:61000", "203.0.113.1:4500", 1));
        o.report(id(2), rep("198.51.100.9:61000", "203.0.113.2:4500", 2));
        assert_eq!(o.classify(false, &[sa(LOCAL)]).port_preserved, Some(false));
    }

    #[test]
    fn a_mapping_per_destination_is_endpoint_dependent() {
        let mut o = Observations::default();
        for i in 1..=4u8 {
            o.report(
                id(i),
                rep(
                    &format!("198.51.100.9:{}", 40000 + u16::from(i)),
                    &format!("203.0.113.{i}:4500"),
                    u64::from(i),
                ),
            );
        }
        let v = o.classify(false, &[sa(LOCAL)]);
        assert_eq!(v.mapping, Mapping::EndpointDependent);
        assert_eq!((v.public, v.distinct, v.reporters), (None, 4, 4));
    }

    #[test]
    fn our_local_address_seen_means_no_nat() {
        let mut o = Observations::default();
        o.report(id(1), rep("198.51.100.7:4500", "203.0.113.1:4500", 1));
        let local = [sa("198.51.100.7:4500")];
        assert_eq!(o.classify(false, &local).mapping, Mapping::NoNat);
        o.report(id(2), rep("198.51.100.7:4500", "203.0.113.2:4500", 1));
        assert_eq!(o.classify(false, &local).mapping, Mapping::NoNat);
    }

    #[test]
    fn a_lying_member_is_one_vote_and_is_outvoted_by_three() {
        let mut o = Observations::default();
        for i in 1..=3u8 {
            o.report(
                id(i),
                rep("198.51.100.9:4500", &format!("203.0.113.{i}:4500"), 1),
            );
        }
        // The liar reports a new address every time: it keeps one report.
        for k in 0..100u16 {
            o.report(
                id(66),
                rep(
                    &format!("198.51.100.66:{}", 1000 + k),
                    "203.0.113.66:4500",
                    2,
                ),
            );
        }
        assert_eq!(o.reports().count(), 4);
        let v = o.classify(false, &[sa(LOCAL)]);
        assert_eq!(v.mapping, Mapping::EndpointIndependent);
        assert_eq!(v.public, Some(sa("198.51.100.9:4500")));
        assert_eq!(o.addresses().len(), 2);
    }

    #[test]
    fn several_ids_at_one_address_are_one_vote() {
        let mut o = Observations::default();
        o.report(id(1), rep("198.51.100.9:4500", "203.0.113.1:4500", 1));
        // Ten members on one host all claim another mapping: still one reporter address.
        for i in 10..20u8 {
            o.report(id(i), rep("198.51.100.66:1", "203.0.113.66:4500", 2));
        }
        let v = o.classify(false, &[sa(LOCAL)]);
        assert_eq!(v.reporters, 2);
        assert_eq!(v.mapping, Mapping::EndpointDependent);
    }

    #[test]
    fn reports_are_bounded_and_expire() {
        let mut o = Observations::default();
        for i in 0..200u8 {
            o.report(
                id(i),
                rep("198.51.100.9:4500", "203.0.113.1:4500", u64::from(i)),
            );
        }
        assert_eq!(o.reports().count(), MAX_REPORTERS);
        // The newest stayed.
        assert!(o.reports().any(|(k, _)| *k == id(199)));
        assert!(!o.expire(Duration::from_secs(199)));
        assert!(o.expire(Duration::from_secs(199) + REPORT_TTL));
        assert_eq!(o.reports().count(), 0);
    }

    #[test]
    fn a_newer_report_replaces_the_reporters_older_one() {
        let mut o = Observations::default();
        assert!(o.report(id(1), rep("198.51.100.9:4500", "203.0.113.1:4500", 1)));
        assert!(!o.report(id(1), rep("198.51.100.9:4500", "203.0.113.1:4500", 5)));
        assert!(o.report(id(1), rep("203.0.113.50:4500", "203.0.113.1:4500", 9)));
        assert_eq!(o.addresses(), vec![(sa("203.0.113.50:4500"), 1)]);
    }

    #[test]
    fn families_are_classified_apart() {
        let mut o = Observations::default();
        o.report(id(1), rep("198.51.100.9:4500", "203.0.113.1:4500", 1));
        o.report(id(2), rep("198.51.100.9:4500", "203.0.113.2:4500", 1));
        o.report(id(3), rep("[2001:db8::9]:4500", "[2001:db8::1]:4500", 1));
        assert_eq!(
            o.classify(false, &[sa(LOCAL)]).mapping,
            Mapping::EndpointIndependent
        );
        let v6 = o.classify(true, &[sa("[2001:db8::9]:4500")]);
        assert_eq!((v6.mapping, v6.reporters), (Mapping::NoNat, 1));
    }
}
