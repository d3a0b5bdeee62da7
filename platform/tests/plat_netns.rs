//! Root-only integration tests of the TUN and UDP edges, each inside a private network
//! namespace (`unshare(CLONE_NEWNET)` in a child thread), so the host's interfaces, routes and
//! addresses are never touched: the namespace and everything in it disappear with the thread.
//! Without root the tests print why they skip and pass.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use shadowmesh_platform::tun::{PlatformError, Tun, TunConfig, TunQueue, VNET_HDR_LEN};
use shadowmesh_platform::udp::{bind_group, RecvMeta, Transmit, UdpSocketConfig};

/// Runs `f` on a thread inside a fresh network namespace with `lo` up. `None` (after printing
/// the reason) when not root or namespaces are unavailable.
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIP: needs root (CAP_NET_ADMIN for TUN, CAP_SYS_ADMIN for unshare(CLONE_NEWNET))"
        );
        return None;
    }
    std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "SKIP: unshare(CLONE_NEWNET) failed: {}",
                io::Error::last_os_error()
            );
            return None;
        }
        let st = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        if !st.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("SKIP: `ip link set lo up` failed in the test namespace: {st:?}");
            return None;
        }
        Some(f())
    })
    .join()
    .expect("netns test thread panicked")
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cfg(name: &str) -> TunConfig {
    TunConfig {
        name: name.into(),
        queues: 2,
        mtu: 1400,
        ipv4: vec![(Ipv4Addr::new(100, 64, 0, 1), 24)],
        ipv6: vec![("fd00::1".parse().expect("literal"), 64)],
        offload: true,
    }
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in b.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        s += u32::from(w);
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4 ICMP echo request `src -> dst` behind an all-zero virtio-net header (no offload).
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut icmp = vec![8u8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(b"shadowmesh-echo!");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut pkt = vec![0u8; VNET_HDR_LEN];
    pkt.extend_from_slice(&ip);
    pkt.extend_from_slice(&icmp);
    pkt
}

/// Reads from all queues (bounded: ~3 s) until `want` accepts an IPv4 packet (vnet header
/// stripped); returns it.
fn read_until(queues: &[TunQueue], want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536 + VNET_HDR_LEN];
    for _ in 0..300 {
        for q in queues {
            loop {
                match q.read(&mut buf) {
                    Ok(n) => {
                        let ip = &buf[VNET_HDR_LEN..n];
                        if ip.first().is_some_and(|b| b >> 4 == 4) && want(ip) {
                            return Some(ip.to_vec());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("TUN read: {e}"),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn tun_two_queues_offload_addresses_icmp_and_recreate() {
    let Some(()) = in_netns(|| {
        let tun = Tun::create(&cfg("smtest0")).expect("create TUN");
        assert_eq!(tun.name(), "smtest0");
        assert_eq!(tun.queues().len(), 2);
        let o = tun.offloads();
        eprintln!("offloads enabled: {o:?}");
        assert!(o.vnet_hdr && o.csum && o.tso4 && o.tso6, "{o:?}");
        assert!(tun.queues().iter().all(TunQueue::vnet_hdr));

        // Read the configuration back from the kernel.
        let link = ip(&["-o", "link", "show", "dev", "smtest0"]);
        assert!(link.contains("mtu 1400"), "{link}");
        assert!(link.contains("UP"), "{link}");
        assert!(link.contains("multi_queue") || !ip(&["-d", "link", "show", "smtest0"]).is_empty());
        let addrs = ip(&["-o", "addr", "show", "dev", "smtest0"]);
        assert!(addrs.contains("inet 100.64.0.1/24"), "{addrs}");
        assert!(addrs.contains("inet6 fd00::1/64"), "{addrs}");

        // A live device's name is refused with a clear error.
        match Tun::create(&cfg("smtest0")) {
            Err(e @ PlatformError::NameTaken { .. }) => {
                assert!(e.to_string().contains("TUN name smtest0 is taken"))
            }
            other => panic!("expected NameTaken, got {other:?}"),
        }
        // So is the name of a device of another kind.
        assert!(matches!(
            Tun::create(&cfg("lo")),
            Err(PlatformError::NameTaken { .. })
        ));

        // The kernel routes a ping of a peer in the /24 into the TUN.
        // SAFETY: plain socket creation.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(raw >= 0, "raw socket: {}", io::Error::last_os_error());
        let req = echo_request(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, 0x4242);
        let icmp = &req[VNET_HDR_LEN + 20..];
        // SAFETY: sockaddr_in is plain data.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_ne_bytes([100, 64, 0, 2]);
        // SAFETY: buffers and address are live for the call with matching lengths.
        let rc = unsafe {
            libc::sendto(
                raw,
                icmp.as_ptr().cast(),
                icmp.len(),
                0,
                (&raw const sin).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert!(rc > 0, "sendto: {}", io::Error::last_os_error());
        // SAFETY: closing the fd we created.
        unsafe { libc::close(raw) };
        let got = read_until(tun.queues(), |ip| {
            ip[9] == 1 && ip[16..20] == [100, 64, 0, 2] && ip[20] == 8
        })
        .expect("echo request to 100.64.0.2 read from the TUN");
        assert_eq!(&got[12..16], &[100, 64, 0, 1], "source is the TUN address");
        assert_eq!(&got[24..26], &0x4242u16.to_be_bytes());

        // IPv6 too: a datagram to a peer in fd00::/64 is routed into the TUN.
        let u6 = std::net::UdpSocket::bind("[fd00::1]:0").expect("bind fd00::1");
        u6.send_to(b"v6", "[fd00::2]:9").expect("send to fd00::2");
        let mut buf6 = vec![0u8; 2048];
        let mut seen6 = false;
        for _ in 0..300 {
            for q in tun.queues() {
                while let Ok(n) = q.read(&mut buf6) {
                    let p = &buf6[VNET_HDR_LEN..n];
                    // IPv6, next header UDP, destination fd00::2.
                    if p.len() >= 48
                        && p[0] >> 4 == 6
                        && p[6] == 17
                        && p[24..40]
                            == "fd00::2"
                                .parse::<std::net::Ipv6Addr>()
                                .expect("literal")
                                .octets()
                    {
                        seen6 = true;
                    }
                }
            }
            if seen6 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(seen6, "UDP/IPv6 datagram to fd00::2 read from the TUN");

        // A packet written into queue 1 reaches the stack, which answers into the TUN.
        let pkt = echo_request(
            Ipv4Addr::new(100, 64, 0, 2),
            Ipv4Addr::new(100, 64, 0, 1),
            0x5151,
        );
        assert_eq!(tun.queues()[1].write(&pkt).expect("TUN write"), pkt.len());
        let reply = read_until(tun.queues(), |ip| {
            ip[9] == 1 && ip[20] == 0 && ip[24..26] == 0x5151u16.to_be_bytes()
        })
        .expect("echo reply from the kernel");
        assert_eq!(&reply[12..16], &[100, 64, 0, 1]);
        assert_eq!(&reply[16..20], &[100, 64, 0, 2]);
        assert_eq!(&reply[28..], b"shadowmesh-echo!");

        // Queues can be handed out; the device lives until the last one is dropped.
        let mut qs = tun.into_queues();
        let last = qs.pop().expect("two queues");
        drop(qs);
        assert!(ip(&["-o", "link", "show", "dev", "smtest0"]).contains("smtest0"));
        drop(last);
        // Unregistering a netdev finishes asynchronously (RCU): give it up to 2 s.
        let gone = (0..100).any(|_| {
            let present = ip(&["-o", "link", "show"]).contains("smtest0");
            if present {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            !present
        });
        assert!(gone, "device removed with last queue");

        // The same name can be created again right away, and a %d pattern is resolved.
        let again = Tun::create(&cfg("smtest0")).expect("re-create after drop");
        assert_eq!(again.name(), "smtest0");
        let mut c = cfg("smq%d");
        c.offload = false;
        c.queues = 1;
        c.ipv4 = vec![(Ipv4Addr::new(100, 64, 1, 1), 24)];
        c.ipv6 = vec![("fd00:1::1".parse().expect("literal"), 64)];
        let numbered = Tun::create(&c).expect("create smq%d");
        assert!(numbered.name().starts_with("smq"), "{}", numbered.name());
        assert!(!numbered.offloads().vnet_hdr);
    }) else {
        return;
    };
}

#[test]
fn udp_gso_three_segments_arrive_as_one_gro_train() {
    let Some(()) = in_netns(|| {
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let base = UdpSocketConfig {
            bind: lo,
            reuseport: true,
            gso: true,
            gro: true,
            recv_buf: 1 << 20,
            send_buf: 1 << 20,
        };
        let rx = bind_group(&base, 1).expect("rx").remove(0);
        let tx = bind_group(&base, 1).expect("tx").remove(0);
        assert!(rx.gro_enabled(), "UDP_GRO must be available on this kernel");
        assert!(
            tx.gso_enabled(),
            "UDP_SEGMENT must be available on this kernel"
        );
        // As root, SO_RCVBUFFORCE gets around rmem_max: no warning expected.
        assert_eq!(rx.buffer_warning(), None);

        let mut data = vec![0u8; 3 * 1200];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i / 1200) as u8 + 1;
        }
        let t = [Transmit {
            dst: rx.local_addr(),
            data: &data,
            segment_size: Some(1200),
        }];
        let group = [rx];
        assert_eq!(tx.send_batch(&t).expect("GSO send"), 1);
        let mut buf = vec![0u8; 65536];
        let mut meta = [RecvMeta::default()];
        let mut got = None;
        for _ in 0..300 {
            match group[0].recv_batch(&mut [&mut buf[..]], &mut meta) {
                Ok(1) => {
                    got = Some(meta[0]);

                    break;
                }
                Ok(n) => panic!("unexpected count {n}"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        let m = got.expect("GRO train received within 3 s ");
        assert_eq!(m.src, tx.local_addr());
        assert_eq!(m.len, 3600);
        assert_eq!(
            m.segment_size, 1200,
            "UDP_GRO control message must report the segment size"
        );
        assert_eq!(&buf[..3600], &data[..]);
    }) else {
        return;
    };
}

/// Turns transmit checksum offload off on `dev` (ETHTOOL_STXCSUM), which makes the kernel
/// refuse UDP GSO sends through it with EIO.
fn tx_csum_off(dev: &str) -> io::Result<()> {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_STXCSUM: u32 = 0x17;
    let mut ev = EthtoolValue {
        cmd: ETHTOOL_STXCSUM,
        data: 0,
    };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut ev).cast();
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCETHTOOL reads the ifreq and the ethtool_value it points at, both live.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut ifr) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the fd we created.
    unsafe { libc::close(fd) };
    if rc < 0 {
        Err(err)
    } else {
        Ok(())
    }
}

#[test]
fn gso_through_a_device_without_tx_checksum_still_delivers_every_segment() {
    let Some(()) = in_netns(|| {
        for cmd in [
            &[
                "link", "add", "smva", "type", "veth", "peer", "name", "smvb",
            ][..],
            &["addr", "add", "198.51.100.1/24", "dev", "smva"],
            &["link", "set", "smva", "up"],
            &["link", "set", "smvb", "up"],
            // A static neighbour, so the datagrams leave without waiting for ARP.
            &[
                "neigh",
                "add",
                "198.51.100.2",
                "lladdr",
                "02:00:00:00:00:02",
                "dev",
                "smva",
            ],
        ] {
            let st = Command::new("ip").args(cmd).status().expect("run ip");
            assert!(st.success(), "ip {cmd:?}");
        }
        tx_csum_off("smva").expect("ETHTOOL_STXCSUM off");
        let cfg = UdpSocketConfig {
            bind: "198.51.100.1:0".parse().expect("literal"),
            reuseport: false,
            gso: true,
            gro: false,
            recv_buf: 0,
            send_buf: 0,
        };
        let tx = bind_group(&cfg, 1).expect("tx").remove(0);
        assert!(tx.gso_enabled());
        let tx_packets = || -> u64 {
            let s = ip(&["-s", "-o", "link", "show", "dev", "smva"]);
            // "... TX: bytes packets ..." -> the second number after "TX:".
            s.split("TX:")
                .nth(1)
                .and_then(|t| t.split_whitespace().filter_map(|w| w.parse().ok()).nth(1))
                .unwrap_or(0)
        };
        let before = tx_packets();
        let data = vec![7u8; 3 * 1000];
        let dst: SocketAddr = "198.51.100.2:9".parse().expect("literal");
        let t = [
            Transmit {
                dst,
                data: &data,
                segment_size: Some(1000),
            },
            Transmit {
                dst,
                data: &data[..10],
                segment_size: None,
            },
        ];
        assert_eq!(tx.send_batch(&t).expect("send after EIO fallback"), 2);
        // Kernels before 6.11 refuse GSO without checksum offload (EIO): the socket must then
        // have turned GSO off and sent the segments one by one. Newer kernels checksum in
        // software and segment the train. Either way four datagrams leave, none dropped.
        eprintln!(
            "GSO still enabled after a send through a no-csum device: {}",
            tx.gso_enabled()
        );
        if !tx.gso_enabled() {
            assert_eq!(tx.max_gso_segments(), 1);
        }
        assert_eq!(tx.stats().send_other, 0, "nothing may be dropped");
        let sent = tx_packets() - before;
        assert!(
            sent >= 4,
            "3 segments + 1 datagram expected on the wire, saw {sent}"
        );
    }) else {
        return;
    };
}

/// Clears CAP_NET_ADMIN and CAP_NET_BIND_SERVICE from this thread's effective set
/// (capabilities are per thread, so the rest of the test process keeps them).
fn drop_net_caps() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const CAP_NET_BIND_SERVICE: u32 = 10;
    const CAP_NET_ADMIN: u32 = 12;
    let mut hdr = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget/capset with a v3 header read/write two Data structs, both live.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &raw mut hdr, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !((1 << CAP_NET_ADMIN) | (1 << CAP_NET_BIND_SERVICE));
        assert_eq!(
            libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()),
            0
        );
    }
}

#[test]
fn missing_capabilities_give_errors_that_name_the_fix() {
    let Some(()) = in_netns(|| {
        drop_net_caps();
        match Tun::create(&cfg("smcap0")) {
            Err(e @ PlatformError::NoNetAdmin { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("no CAP_NET_ADMIN") && msg.contains("cap_net_admin"),
                    "{msg}"
                );
            }
            other => panic!("expected NoNetAdmin, got {other:?}"),
        }
        let cfg = UdpSocketConfig {
            bind: "127.0.0.1:99".parse().expect("literal"),
            reuseport: false,
            gso: false,
            gro: false,
            recv_buf: 0,
            send_buf: 0,
        };
        match bind_group(&cfg, 1) {
            Err(e @ PlatformError::PrivilegedPort { port: 99 }) => {
                assert!(e.to_string().contains("cap_net_bind_service"))
            }
            other => panic!("expected PrivilegedPort, got {other:?}"),
        }
        // Without CAP_NET_ADMIN the *FORCE buffer options fail; the fallback must still work
        // and name the sysctl when the kernel clamps (rmem_max is far below 1 GiB).
        let cfg = UdpSocketConfig {
            bind: "127.0.0.1:0".parse().expect("literal"),
            recv_buf: 1 << 30,
            ..cfg
        };
        let s = bind_group(&cfg, 1)
            .expect("bind with clamped buffer")
            .remove(0);
        let w = s.buffer_warning().expect("clamp warning");
        assert!(w.contains("sysctl -w net.core.rmem_max="), "{w}");
    }) else {
        return;
    };
}
