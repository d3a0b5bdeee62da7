//! A NAT lab in network namespaces, for the NAT-traversal tests: an "internet" hub that routes
//! between public hosts and NAT routers, and sites whose host sits behind one or two routers
//! that translate with nftables (full cone, endpoint-independent mapping with
//! address-and-port-dependent filtering, symmetric, double NAT). Only the network: no VPN
//! logic lives here; tests start what they need in the hosts.
//!
//! Layout (only the documentation ranges of RFC 5737 are used):
//!
//! ```text
//!  public host 198.51.100.N ──┐                      ┌── router WAN 203.0.113.N ── LAN /29 ── host
//!                        pub0 198.51.100.254 [hub] pub1 203.0.113.254
//! ```
//!
//! LANs and the CGNAT link are /29s carved from 192.0.2.0/24 (block k: 192.0.2.8k/29, parent
//! .8k+1, child .8k+2). The hub has no route to them: the only way in is through the NAT, as
//! on the internet.
//!
//! Owns: the namespaces, links, addresses, routes and NAT rulesets of the lab, and removing
//! them (through [`Topology`]'s drop: processes killed, namespaces deleted). Must never: use
//! an address outside 198.51.100.0/24, 203.0.113.0/24 and 192.0.2.0/24, touch the caller's
//! own namespace, or wait without a bound.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::netns::{run, Topology};

/// The hub's address on `pub0`, the public hosts' gateway.
const PUB0_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The hub's address on `pub1`, the NAT routers' gateway.
const PUB1_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// /29 blocks in 192.0.2.0/24.
const BLOCKS: u8 = 32;
/// Name of every host's uplink interface (inside the host's namespace).
const UPLINK: &str = "up0";
/// nftables table of a router's NAT.
const NAT_TABLE: &str = "smnat";
/// nftables table of [`NatLab::cut`] when it filters instead of downing a link.
const CUT_TABLE: &str = "smcut";

/// How a site reaches the internet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// No NAT: the host is public, on 198.51.100.0/24.
    None,
    /// Endpoint-independent mapping and filtering: once the host sent from a port, anyone
    /// may reach it at the mapped port (nftables has no full cone; built from a dynamic map).
    FullCone,
    /// Endpoint-independent mapping (Linux `masquerade` keeps the port when it can),
    /// address-and-port-dependent filtering (only conntrack replies come in): the common home
    /// router.
    EimApdf,
    /// Endpoint-dependent mapping (`masquerade random`: a new port per destination) and
    /// address-and-port-dependent filtering.
    Symmetric,
    /// A carrier-grade NAT in front of a home router, both [`NatKind::EimApdf`].
    DoubleNat,
}

impl NatKind {
    /// Every kind, in a fixed order (for tables and loops).
    pub const ALL: [NatKind; 5] = [
        NatKind::None,
        NatKind::FullCone,
        NatKind::EimApdf,
        NatKind::Symmetric,
        NatKind::DoubleNat,
    ];

    /// A short lower-case name, e.g. for table rows.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "none",
            NatKind::FullCone => "fullcone",
            NatKind::EimApdf => "eim-apdf",
            NatKind::Symmetric => "symmetric",
            NatKind::DoubleNat => "double-nat",
        }
    }
}

/// One NAT router of a site.
#[derive(Clone, Debug)]
pub struct Router {
    /// Its namespace.
    pub ns: String,
    /// Its WAN address: on pub1 for the outermost router, on the CGNAT link for a home router
    /// behind a CGNAT.
    pub wan_ip: Ipv4Addr,
    /// Its LAN address (the gateway of whatever sits behind it).
    pub lan_ip: Ipv4Addr,
    /// The translation it does: [`NatKind::FullCone`], [`NatKind::EimApdf`] or
    /// [`NatKind::Symmetric`].
    pub nat: NatKind,
}

/// How a host is attached right now (changes with [`NatLab::reattach`]).
#[derive(Clone, Debug)]
struct Attachment {
    kind: NatKind,
    local_ip: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
    /// Outermost first; empty for a public host.
    routers: Vec<Router>,
    /// The LAN /29 the host sits in (NAT sites only).
    block: Option<u8>,
    /// The far end of the host's uplink: (namespace, interface), what [`NatLab::cut`] downs.
    far: (String, String),
}

/// One host of the lab.
#[derive(Clone, Debug)]
struct Host {
    name: String,
    att: Attachment,
}

/// The lab: a hub, public hosts and NAT sites, all removed on drop.
///
/// Host indices are the [`Topology`] node numbers of [`NatLab::topo`], so the per-node helpers
/// there (`spawn_logged`, `wait`, `start_node`, `pids_named`, …) work on lab hosts directly.
pub struct NatLab {
    topo: Topology,
    base: String,
    hosts: Vec<Host>,
    next_public: u8,
    next_wan: u8,
    next_block: u8,
    next_router: usize,
    next_link: usize,
}

impl NatLab {
    /// An empty lab: the hub namespace `nl<tag><pid>h` with its two bridges, forwarding on.
    /// `bin_dir` is where the ShadowMesh binaries are (for [`NatLab::bin`]).
    pub fn new(tag: &str, bin_dir: &Path) -> anyhow::Result<NatLab> {
        let pid = std::process::id() % 100_000;
        let base = format!("nl{tag}{pid}");
        let topo = Topology::bare(&base, bin_dir)?;
        let lab = NatLab {
            topo,
            base,
            hosts: Vec::new(),
            next_public: 1,
            next_wan: 1,
            next_block: 0,
            next_router: 0,
            next_link: 0,
        };
        let hub = lab.hub().to_string();
        for (br, gw) in [("pub0", PUB0_GW), ("pub1", PUB1_GW)] {
            run(&["ip", "-n", &hub, "link", "add", br, "type", "bridge"])?;
            run(&[
                "ip",
                "-n",
                &hub,
                "addr",
                "add",
                &format!("{gw}/24"),
                "dev",
                br,
            ])?;
            run(&["ip", "-n", &hub, "link", "set", br, "up"])?;
        }
        forwarding_on(&hub)?;
        Ok(lab)
    }

    /// The hub namespace (the "internet" router).
    pub fn hub(&self) -> &str {
        self.topo.ns.first().map_or("", String::as_str)
    }

    /// The topology underneath: its node i is host i.
    pub fn topo(&self) -> &Topology {
        &self.topo
    }

    /// The topology underneath, mutable (to spawn and wait through its helpers).
    pub fn topo_mut(&mut self) -> &mut Topology {
        &mut self.topo
    }

    /// Path of a ShadowMesh binary.
    pub fn bin(&self, name: &str) -> String {
        self.topo.bin(name)
    }

    /// Adds a public host on pub0 (198.51.100.N/24); returns its host index.
    pub fn add_public(&mut self, name: &str) -> anyhow::Result<usize> {
        self.add_site(name, NatKind::None)
    }

    /// Adds a site of `kind`: its router(s) and a host behind them (for [`NatKind::None`],
    /// a public host). Returns the host's index.
    pub fn add_site(&mut self, name: &str, kind: NatKind) -> anyhow::Result<usize> {
        let node = self.hosts.len();
        let ns = format!("{}n{node}", self.base);
        let i = self.topo.add_node_ns(&ns)?;
        if i != node {
            bail!("the lab's hosts and its topology's nodes disagree ({i} against {node})");
        }
        let att = self.attach(&ns, kind)?;
        self.hosts.push(Host {
            name: name.to_string(),
            att,
        });
        Ok(node)
    }

    /// Number of hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the lab has no host yet.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    fn host(&self, host: usize) -> anyhow::Result<&Host> {
        self.hosts
            .get(host)
            .with_context(|| format!("no host {host} in the lab ({} hosts)", self.hosts.len()))
    }

    /// Host `host`'s namespace ("" for an unknown index).
    pub fn host_ns(&self, host: usize) -> &str {
        self.topo.node(host)
    }

    /// The name the host was added with ("" for an unknown index).
    pub fn name(&self, host: usize) -> &str {
        self.hosts.get(host).map_or("", |h| h.name.as_str())
    }

    /// How the host is attached now.
    pub fn kind(&self, host: usize) -> Option<NatKind> {
        self.hosts.get(host).map(|h| h.att.kind)
    }

    /// The host's own address (on its LAN behind a NAT, or its public one).
    pub fn local_ip(&self, host: usize) -> Option<Ipv4Addr> {
        self.hosts.get(host).map(|h| h.att.local_ip)
    }

    /// The address the internet sees the host at: the outermost router's WAN address behind
    /// a NAT, the host's own address when public.
    pub fn public_ip(&self, host: usize) -> Option<Ipv4Addr> {
        self.hosts
            .get(host)
            .map(|h| h.att.routers.first().map_or(h.att.local_ip, |r| r.wan_ip))
    }

    /// The host's routers, outermost first (empty for a public host).
    pub fn routers(&self, host: usize) -> &[Router] {
        self.hosts
            .get(host)
            .map_or(&[], |h| h.att.routers.as_slice())
    }

    /// Runs a command inside host `host` and waits for it (the exit status is the caller's to
    /// check).
    pub fn exec(&self, host: usize, args: &[&str]) -> anyhow::Result<Output> {
        self.host(host)?;
        self.topo.exec(host, args)
    }

    /// Starts a command inside host `host` (output piped; read it with [`NatLab::wait`]);
    /// it is killed on drop. Returns a handle.
    pub fn spawn(&mut self, host: usize, args: &[&str]) -> anyhow::Result<usize> {
        self.host(host)?;
        self.topo.spawn(host, args)
    }

    /// Waits for a spawned command at most `timeout` (then kills it); returns its output.
    pub fn wait(&mut self, handle: usize, timeout: Duration) -> anyhow::Result<Output> {
        self.topo.wait(handle, timeout)
    }

    /// The NAT rulesets of the host's routers as nftables lists them, outermost first (for
    /// logs when a test fails).
    pub fn rulesets(&self, host: usize) -> anyhow::Result<String> {
        let mut all = String::new();
        for r in self.routers(host) {
            let out = run(&["ip", "netns", "exec", &r.ns, "nft", "list", "ruleset"])?;
            all.push_str(&format!(
                "# {} ({})\n{}",
                r.ns,
                r.nat.name(),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        Ok(all)
    }

    /// Cuts the host's uplink: the far end of its veth (the hub's bridge port, or its router's
    /// LAN interface) goes down, so datagrams vanish silently in both directions as on a dead
    /// link, while the host keeps its address and routes and the routers keep their
    /// conntrack mappings. Undo with [`NatLab::restore`].
    pub fn cut(&self, host: usize) -> anyhow::Result<()> {
        let (ns, ifname) = &self.host(host)?.att.far;
        run(&["ip", "-n", ns, "link", "set", ifname, "down"])?;
        Ok(())
    }

    /// Brings back an uplink [`NatLab::cut`] took down (the kernel restores the connected
    /// routes of the far end's addresses; nothing else was removed).
    pub fn restore(&self, host: usize) -> anyhow::Result<()> {
        let (ns, ifname) = &self.host(host)?.att.far;
        run(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Drops everything the host sends or receives with an nftables rule inside the host
    /// (the link stays up: sends succeed and vanish). An alternative to [`NatLab::cut`] for
    /// code that must not see carrier changes; undo with [`NatLab::unblock`].
    pub fn block(&self, host: usize) -> anyhow::Result<()> {
        let ns = self.host_ns(host).to_string();
        self.host(host)?;
        let rules = format!(
            "table inet {CUT_TABLE} {{\n\
             \x20 chain input {{ type filter hook input priority -10; policy accept; iifname \"{UPLINK}\" drop; }}\n\
             \x20 chain output {{ type filter hook output priority -10; policy accept; oifname \"{UPLINK}\" drop; }}\n\
             }}\n"
        );
        self.load_rules(&ns, CUT_TABLE, "inet", &rules)
    }

    /// Removes the rule of [`NatLab::block`].
    pub fn unblock(&self, host: usize) -> anyhow::Result<()> {
        self.host(host)?;
        run(&[
            "ip",
            "netns",
            "exec",
            self.host_ns(host),
            "nft",
            "delete",
            "table",
            "inet",
            CUT_TABLE,
        ])?;
        Ok(())
    }

    /// Moves the host to another address on the same link — the next free one in its LAN /29
    /// behind a NAT (.8k+2 … .8k+6, cycling), a fresh 198.51.100.N when public — and puts its
    /// default route back. Its sockets bound to the old address break, as on a real renumber;
    /// the router's old mappings stay until they time out. Returns the new address.
    pub fn roam(&mut self, host: usize) -> anyhow::Result<Ipv4Addr> {
        let att = self.host(host)?.att.clone();
        let ns = self.host_ns(host).to_string();
        let new = match att.block {
            Some(b) => {
                let first = 8 * b + 2;
                let last = 8 * b + 6;
                let cur = att.local_ip.octets()[3];
                let next = if cur >= last { first } else { cur + 1 };
                Ipv4Addr::new(192, 0, 2, next)
            }
            None => self.next_public_ip()?,
        };
        let old = format!("{}/{}", att.local_ip, att.prefix);
        // Delete first: with the primary gone the kernel would also delete a secondary of the
        // same subnet (promote_secondaries is off by default), taking the new one with it.
        run(&["ip", "-n", &ns, "addr", "del", &old, "dev", UPLINK])?;
        let cidr = format!("{new}/{}", att.prefix);
        run(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", UPLINK])?;
        let gw = att.gateway.to_string();
        run(&["ip", "-n", &ns, "route", "replace", "default", "via", &gw])?;
        if let Some(h) = self.hosts.get_mut(host) {
            h.att.local_ip = new;
        }
        Ok(new)
    }

    /// Re-attaches the host to a new site of `kind` (new router(s), new public address), as a
    /// laptop moving from one network to another: its uplink is deleted and a fresh one made.
    /// The old routers stay, idle, until the lab is dropped.
    pub fn reattach(&mut self, host: usize, kind: NatKind) -> anyhow::Result<()> {
        self.host(host)?;
        let ns = self.host_ns(host).to_string();
        // Deleting one end of a veth deletes the other.
        run(&["ip", "-n", &ns, "link", "del", UPLINK])?;
        let att = self.attach(&ns, kind)?;
        if let Some(h) = self.hosts.get_mut(host) {
            h.att = att;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ building blocks

    /// Attaches namespace `ns` (which has no uplink yet) as a host of `kind`.
    fn attach(&mut self, ns: &str, kind: NatKind) -> anyhow::Result<Attachment> {
        match kind {
            NatKind::None => {
                let ip = self.next_public_ip()?;
                let hub = self.hub().to_string();
                let far = self.link_to_bridge(ns, UPLINK, "pub0")?;
                set_addr(ns, UPLINK, ip, 24, PUB0_GW)?;
                Ok(Attachment {
                    kind,
                    local_ip: ip,
                    prefix: 24,
                    gateway: PUB0_GW,
                    routers: Vec::new(),
                    block: None,
                    far: (hub, far),
                })
            }
            NatKind::FullCone | NatKind::EimApdf | NatKind::Symmetric => {
                let mut r = self.add_router(kind, None)?;
                let (block, gw, ip) = self.lan_link(&r.ns, ns, UPLINK)?;
                r.lan_ip = gw;
                Ok(Attachment {
                    kind,
                    local_ip: ip,
                    prefix: 29,
                    gateway: gw,
                    far: (r.ns.clone(), "lan".into()),
                    routers: vec![r],
                    block: Some(block),
                })
            }
            NatKind::DoubleNat => {
                let mut cgnat = self.add_router(NatKind::EimApdf, None)?;
                let (mut home, cgnat_gw) = self.add_router_behind(NatKind::EimApdf, &cgnat.ns)?;
                cgnat.lan_ip = cgnat_gw;
                let (block, gw, ip) = self.lan_link(&home.ns, ns, UPLINK)?;
                home.lan_ip = gw;
                Ok(Attachment {
                    kind,
                    local_ip: ip,
                    prefix: 29,
                    gateway: gw,
                    far: (home.ns.clone(), "lan".into()),
                    routers: vec![cgnat, home],
                    block: Some(block),
                })
            }
        }
    }

    /// A router doing `nat` with its WAN on pub1. Its LAN address is filled in when
    /// something is linked behind it.
    fn add_router(&mut self, nat: NatKind, behind: Option<&str>) -> anyhow::Result<Router> {
        let ns = format!("{}r{}", self.base, self.next_router);
        self.next_router += 1;
        self.topo.add_infra_ns(&ns)?;
        forwarding_on(&ns)?;
        let wan_ip = match behind {
            None => {
                let ip = self.next_wan_ip()?;
                self.link_to_bridge(&ns, "wan", "pub1")?;
                set_addr(&ns, "wan", ip, 24, PUB1_GW)?;
                ip
            }
            Some(parent) => self.lan_link(parent, &ns, "wan")?.2,
        };
        let rules = nat_ruleset(nat, wan_ip)?;
        self.load_rules(&ns, NAT_TABLE, "ip", &rules)?;
        Ok(Router {
            ns,
            wan_ip,
            lan_ip: Ipv4Addr::UNSPECIFIED,
            nat,
        })
    }

    /// A router doing `nat` with its WAN on the LAN of router `parent` (a home router behind
    /// a CGNAT). Returns it and the parent's LAN address.
    fn add_router_behind(
        &mut self,
        nat: NatKind,
        parent: &str,
    ) -> anyhow::Result<(Router, Ipv4Addr)> {
        let r = self.add_router(nat, Some(parent))?;
        // The link just made is the last block handed out; its first address is the parent's.
        let gw = Ipv4Addr::new(192, 0, 2, 8 * (self.next_block - 1) + 1);
        Ok((r, gw))
    }

    /// Links `child` (interface `child_if`) to `parent`'s `lan` over the next /29 block:
    /// parent .8k+1, child .8k+2 with its default route via the parent. Returns (k, parent
    /// IP, child IP).
    fn lan_link(
        &mut self,
        parent: &str,
        child: &str,
        child_if: &str,
    ) -> anyhow::Result<(u8, Ipv4Addr, Ipv4Addr)> {
        let b = self.next_block;
        if b >= BLOCKS {
            bail!("192.0.2.0/24 has no /29 left for another LAN");
        }
        self.next_block += 1;
        let gw = Ipv4Addr::new(192, 0, 2, 8 * b + 1);
        let ip = Ipv4Addr::new(192, 0, 2, 8 * b + 2);
        run(&[
            "ip", "-n", parent, "link", "add", "lan", "type", "veth", "peer", "name", child_if,
            "netns", child,
        ])?;
        run(&[
            "ip",
            "-n",
            parent,
            "addr",
            "add",
            &format!("{gw}/29"),
            "dev",
            "lan",
        ])?;
        run(&["ip", "-n", parent, "link", "set", "lan", "up"])?;
        set_addr(child, child_if, ip, 29, gw)?;
        Ok((b, gw, ip))
    }

    /// A veth from `ns` (interface `ifname`) to a port of the hub's `bridge`; returns the
    /// port's name (unique in the hub).
    fn link_to_bridge(&mut self, ns: &str, ifname: &str, bridge: &str) -> anyhow::Result<String> {
        let hub = self.hub().to_string();
        let port = format!("l{}", self.next_link);
        self.next_link += 1;
        run(&[
            "ip", "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", ifname,
            "netns", ns,
        ])?;
        run(&["ip", "-n", &hub, "link", "set", &port, "master", bridge])?;
        run(&["ip", "-n", &hub, "link", "set", &port, "up"])?;
        Ok(port)
    }

    fn next_public_ip(&mut self) -> anyhow::Result<Ipv4Addr> {
        let n = self.next_public;
        if n >= 254 {
            bail!("198.51.100.0/24 has no address left for another public host");
        }
        self.next_public += 1;
        Ok(Ipv4Addr::new(198, 51, 100, n))
    }

    fn next_wan_ip(&mut self) -> anyhow::Result<Ipv4Addr> {
        let n = self.next_wan;
        if n >= 254 {
            bail!("203.0.113.0/24 has no address left for another router");
        }
        self.next_wan += 1;
        Ok(Ipv4Addr::new(203, 0, 113, n))
    }

    /// Loads `rules` (which define table `family table`) into `ns`, replacing an earlier copy.
    fn load_rules(&self, ns: &str, table: &str, family: &str, rules: &str) -> anyhow::Result<()> {
        // Absent the first time: nothing to delete.
        let _ = self
            .topo
            .exec_in(ns, &["nft", "delete", "table", family, table]);
        let file = self.topo.dir.join(format!("{ns}-{table}.nft"));
        std::fs::write(&file, rules).with_context(|| format!("writing {}", file.display()))?;
        let path = file.to_str().context("non-UTF-8 path")?;
        run(&["ip", "netns", "exec", ns, "nft", "-f", path])
            .with_context(|| format!("loading nftables table {table} into {ns}:\n{rules}"))?;
        Ok(())
    }
}

/// The nftables ruleset (table `ip smnat`) of a router doing `nat` with WAN interface `wan`
/// and WAN address `wan_ip`.
///
/// - [`NatKind::EimApdf`]: `masquerade`. Linux keeps the source port whenever the translated
///   tuple is unique, so one internal endpoint gets one external port for every destination
///   (endpoint-independent mapping in practice); inbound datagrams are forwarded only when
///   conntrack knows the flow (address-and-port-dependent filtering; the forward chain makes
///   that explicit). Unsolicited datagrams to the router itself are dropped too, as a home
///   router's firewall does: accepted (and answered with ICMP), each would leave a conntrack
///   entry that holds its tuple, and the host's next flow to that sender would get another
///   port (`masquerade` keeps the port only while the tuple is free), so a peer's punch probe
///   arriving first would make the mapping look endpoint-dependent.
/// - [`NatKind::Symmetric`]: `masquerade random`: the port is randomised for every new flow,
///   hence per destination (endpoint-dependent mapping); same filtering.
/// - [`NatKind::FullCone`]: `snat` to the WAN address (port kept when free), plus a dynamic
///   map *external UDP port → internal address . port*, written after source NAT (so the key
///   is the port actually used) for every outbound datagram of a host-initiated flow, and a
///   prerouting `dnat` through that map: any sender reaches a mapped port
///   (endpoint-independent filtering), only mapped ports are open.
pub fn nat_ruleset(nat: NatKind, wan_ip: Ipv4Addr) -> anyhow::Result<String> {
    // The empty prerouting chain of the masquerading kinds registers the NAT hook there
    // (older kernels translate replies only with both hooks registered).
    let rules = match nat {
        NatKind::EimApdf | NatKind::Symmetric => {
            let random = if nat == NatKind::Symmetric {
                " random"
            } else {
                ""
            };
            format!(
                "table ip {NAT_TABLE} {{\n\
                 \x20   chain prerouting {{\n\
                 \x20       type nat hook prerouting priority dstnat; policy accept;\n\
                 \x20   }}\n\
                 \x20   chain postrouting {{\n\
                 \x20       type nat hook postrouting priority srcnat; policy accept;\n\
                 \x20       oifname \"wan\" masquerade{random}\n\
                 \x20   }}\n\
                 \x20   chain forward {{\n\
                 \x20       type filter hook forward priority filter; policy accept;\n\
                 \x20       iifname \"wan\" ct state established,related accept\n\
                 \x20       iifname \"wan\" drop\n\
                 \x20   }}\n\
                 \x20   chain input {{\n\
                 \x20       type filter hook input priority filter; policy accept;\n\
                 \x20       iifname \"wan\" ct state established,related accept\n\
                 \x20       iifname \"wan\" drop\n\
                 \x20   }}\n\
                 }}\n"
            )
        }
        NatKind::FullCone => format!(
            "table ip {NAT_TABLE} {{\n\
             \x20   map fullcone {{\n\
             \x20       type inet_service : ipv4_addr . inet_service\n\
             \x20       flags dynamic,timeout\n\
             \x20       timeout 300s\n\
             \x20       size 65536\n\
             \x20   }}\n\
             \x20   chain prerouting {{\n\
             \x20       type nat hook prerouting priority dstnat; policy accept;\n\
             \x20       iifname \"wan\" dnat ip to udp dport map @fullcone\n\
             \x20   }}\n\
             \x20   chain postrouting {{\n\
             \x20       type nat hook postrouting priority srcnat; policy accept;\n\
             \x20       oifname \"wan\" snat ip to {wan_ip}\n\
             \x20   }}\n\
             \x20   chain mapping {{\n\
             \x20       type filter hook postrouting priority srcnat + 10; policy accept;\n\
             \x20       oifname \"wan\" ct direction original meta l4proto udp update @fullcone {{ udp sport timeout 300s : ct original ip saddr . ct original proto-src }}\n\
             \x20   }}\n\
             }}\n"
        ),
        other => bail!("a router does full-cone, eim-apdf or symmetric NAT, not {other:?}"),
    };
    Ok(rules)
}

/// Gives `ifname` in `ns` the address `ip/prefix`, brings it up and routes by default via `gw`.
fn set_addr(ns: &str, ifname: &str, ip: Ipv4Addr, prefix: u8, gw: Ipv4Addr) -> anyhow::Result<()> {
    run(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{ip}/{prefix}"),
        "dev",
        ifname,
    ])?;
    run(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
    run(&[
        "ip",
        "-n",
        ns,
        "route",
        "replace",
        "default",
        "via",
        &gw.to_string(),
    ])?;
    Ok(())
}

/// Turns IPv4 forwarding on in `ns` (each namespace has its own switch, off by default).
fn forwarding_on(ns: &str) -> anyhow::Result<()> {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_name_the_translation_of_each_kind() {
        let wan = Ipv4Addr::new(203, 0, 113, 7);
        let eim = nat_ruleset(NatKind::EimApdf, wan).unwrap();
        assert!(eim.contains("masquerade\n") && eim.contains("iifname \"wan\" drop"));
        let sym = nat_ruleset(NatKind::Symmetric, wan).unwrap();
        assert!(sym.contains("masquerade random"));
        let fc = nat_ruleset(NatKind::FullCone, wan).unwrap();
        assert!(fc.contains("snat ip to 203.0.113.7") && fc.contains("dport map @fullcone"));
        assert!(!fc.contains(" drop"), "a full cone filters nothing");
        assert!(nat_ruleset(NatKind::None, wan).is_err());
        assert!(nat_ruleset(NatKind::DoubleNat, wan).is_err());
    }
}
