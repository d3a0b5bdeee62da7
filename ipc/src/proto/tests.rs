//! Codec tests: fixed vectors for the frozen Hello layout, limits, and proptests (round trip
//! of random messages; random and truncated bytes never panic).

use super::*;
use proptest::prelude::*;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn sockaddr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(o, p)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(o), p))),
        (any::<[u8; 16]>(), any::<u16>(), any::<u32>())
            .prop_map(|(o, p, s)| SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(o), p, 0, s))),
    ]
}

fn prefix() -> impl Strategy<Value = (IpAddr, u8)> {
    ip().prop_flat_map(|ip| {
        let max = if ip.is_ipv4() { 32u8 } else { 128 };
        (Just(ip), 0..=max)
    })
}

fn install() -> impl Strategy<Value = InstallSession> {
    (
        any::<u32>(),
        any::<bool>(),
        any::<(u32, u32)>(),
        prop_oneof![Just(CIPHER_AES_256_GCM), Just(CIPHER_CHACHA20_POLY1305)],
        any::<([u8; 32], [u8; 32])>(),
        any::<(u32, u32)>(),
    )
        .prop_map(
            |(peer, next, (l, r), cipher, (sk, rk), (a, b))| InstallSession {
                peer,
                slot: if next { Slot::Next } else { Slot::Current },
                local_index: l,
                remote_index: r,
                cipher,
                send_key: Zeroizing::new(sk),
                recv_key: Zeroizing::new(rk),
                rekey_after_secs: a,
                reject_after_secs: b,
            },
        )
}

fn down_msg() -> impl Strategy<Value = DownMsg> {
    prop_oneof![
        install().prop_map(DownMsg::InstallSession),
        any::<u32>().prop_map(|local_index| DownMsg::RemoveSession { local_index }),
        any::<u32>().prop_map(|peer| DownMsg::RemovePeer { peer }),
        (any::<u32>(), prop::collection::vec(prefix(), 0..40))
            .prop_map(|(peer, prefixes)| DownMsg::SetRoutes { peer, prefixes }),
        (any::<u32>(), prop::collection::vec(prefix(), 0..8))
            .prop_map(|(peer, prefixes)| DownMsg::SetSources { peer, prefixes }),
        (any::<u32>(), sockaddr()).prop_map(|(peer, addr)| DownMsg::SetEndpoint { peer, addr }),
        (
            sockaddr(),
            prop::collection::vec(any::<u8>(), 0..=MAX_CONTROL_PAYLOAD)
        )
            .prop_map(|(dst, payload)| DownMsg::SendControl { dst, payload }),
        any::<u32>().prop_map(|first_peer| DownMsg::GetStats { first_peer }),
        Just(DownMsg::Shutdown),
        (sockaddr(), any::<u32>(), sockaddr(), any::<u64>()).prop_map(
            |(from, index, to, rate_bytes_per_sec)| DownMsg::SetRelay {
                from,
                index,
                to,
                rate_bytes_per_sec,
            }
        ),
        (sockaddr(), any::<u32>()).prop_map(|(from, index)| DownMsg::RemoveRelay { from, index }),
    ]
}

fn worker_stats() -> impl Strategy<Value = WorkerStats> {
    (
        any::<[u64; 4]>(),
        any::<[u64; DROP_CAUSES]>(),
        any::<[u64; 5]>(),
    )
        .prop_map(|(c, drops, u)| WorkerStats {
            rx_packets: c[0],
            rx_bytes: c[1],
            tx_packets: c[2],
            tx_bytes: c[3],
            drops,
            uring_enters: u[0],
            held: u[1],
            hold_flushed: u[2],
            relayed_packets: u[3],
            relayed_bytes: u[4],
        })
}

fn peer_stats() -> impl Strategy<Value = PeerStats> {
    (
        any::<u32>(),
        any::<[u64; 4]>(),
        any::<[u64; DROP_CAUSES]>(),
        any::<Option<u64>>(),
    )
        .prop_map(|(peer, c, drops, last_rx_ms)| PeerStats {
            peer,
            rx_packets: c[0],
            rx_bytes: c[1],
            tx_packets: c[2],
            tx_bytes: c[3],
            drops,
            last_rx_ms,
        })
}

fn reply_msg() -> impl Strategy<Value = UpMsg> {
    prop_oneof![
        Just(UpMsg::Ack),
        (any::<u16>(), "\\PC{0,200}").prop_map(|(c, m)| UpMsg::error(ErrorCode(c), m)),
        (
            prop::collection::vec(worker_stats(), 0..8),
            prop::collection::vec(peer_stats(), 0..20),
            any::<Option<u32>>()
        )
            .prop_map(|(workers, peers, next_peer)| UpMsg::Stats(Stats {
                workers,
                peers,
                next_peer
            })),
    ]
}

fn event_msg() -> impl Strategy<Value = UpMsg> {
    prop_oneof![
        (
            sockaddr(),
            prop::collection::vec(any::<u8>(), 0..=MAX_CONTROL_PAYLOAD)
        )
            .prop_map(|(src, payload)| UpMsg::ControlReceived { src, payload }),
        (any::<Option<u32>>(), ip()).prop_map(|(peer, dst)| UpMsg::NoSession { peer, dst }),
        any::<(u32, u32)>()
            .prop_map(|(peer, local_index)| UpMsg::RekeyNeeded { peer, local_index }),
        (any::<u32>(), sockaddr()).prop_map(|(peer, addr)| UpMsg::EndpointChanged { peer, addr }),
        any::<(u32, u32)>()
            .prop_map(|(peer, local_index)| UpMsg::SessionConfirmed { peer, local_index }),
    ]
}

fn hello() -> impl Strategy<Value = Hello> {
    prop_oneof![
        Just(Role::Control),
        Just(Role::Dataplane),
        Just(Role::Observer)
    ]
    .prop_map(Hello::ours)
}

fn down_frame() -> impl Strategy<Value = DownFrame> {
    prop_oneof![
        hello().prop_map(DownFrame::Hello),
        (any::<u32>(), down_msg()).prop_map(|(id, msg)| DownFrame::Request { id, msg }),
    ]
}

fn up_frame() -> impl Strategy<Value = UpFrame> {
    prop_oneof![
        hello().prop_map(UpFrame::Hello),
        (any::<u32>(), reply_msg()).prop_map(|(id, msg)| UpFrame::Reply { id, msg }),
        event_msg().prop_map(UpFrame::Event),
    ]
}

proptest! {
    #[test]
    fn down_round_trip(frame in down_frame()) {
        let mut buf = Vec::new();
        encode_down(&frame, &mut buf).unwrap();
        prop_assert!(buf.len() <= MAX_MSG);
        prop_assert_eq!(decode_down(&buf).unwrap(), frame.clone());
        if let DownFrame::Request { id, .. } = frame {
            prop_assert_eq!(request_id(&buf), Some(id));
        }
    }

    #[test]
    fn up_round_trip(frame in up_frame()) {
        let mut buf = Vec::new();
        encode_up(&frame, &mut buf).unwrap();
        prop_assert!(buf.len() <= MAX_MSG);
        prop_assert_eq!(decode_up(&buf).unwrap(), frame);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_down(&bytes);
        let _ = decode_up(&bytes);
        let _ = request_id(&bytes);
    }

    #[test]
    fn valid_kind_random_body_never_panics(
        kind in 1u8..=4,
        tag in 0u8..=9,
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = vec![kind, 1, 0, 0, 0, tag];
        bytes.extend_from_slice(&body);
        let _ = decode_down(&bytes);
        let _ = decode_up(&bytes);
        bytes.remove(1); // Event frames have no id.
        let _ = decode_up(&bytes);
    }

    #[test]
    fn every_truncation_is_an_error(frame in down_frame(), up in up_frame()) {
        let mut buf = Vec::new();
        encode_down(&frame, &mut buf).unwrap();
        for cut in 0..buf.len() {
            prop_assert!(decode_down(&buf[..cut]).is_err(), "prefix of {} bytes decoded", cut);
        }
        let mut extended = buf.clone();
        extended.push(0);
        let trailing = matches!(decode_down(&extended), Err(DecodeError::Trailing { count: 1 }));
        prop_assert!(trailing, "one trailing byte is refused");
        let mut buf = Vec::new();
        encode_up(&up, &mut buf).unwrap();
        for cut in 0..buf.len() {
            prop_assert!(decode_up(&buf[..cut]).is_err());
        }
    }
}

#[test]
fn hello_layout_is_frozen() {
    let mut buf = Vec::new();
    encode_down(&DownFrame::Hello(Hello::ours(Role::Control)), &mut buf).unwrap();
    assert_eq!(buf, [0x01, 0x04, 0x00, 0x01]);
}

#[test]
fn session_confirmed_vector() {
    let mut buf = Vec::new();
    let ev = UpMsg::SessionConfirmed {
        peer: 0x0102_0304,
        local_index: 0xB000_0001,
    };
    encode_up(&UpFrame::Event(ev.clone()), &mut buf).unwrap();
    assert_eq!(
        buf,
        [0x04, 8, 0x04, 0x03, 0x02, 0x01, 0x01, 0x00, 0x00, 0xB0]
    );
    assert_eq!(decode_up(&buf), Ok(UpFrame::Event(ev.clone())));
    // An event, never a reply.
    let mut buf = Vec::new();
    assert!(encode_up(&UpFrame::Reply { id: 1, msg: ev }, &mut buf).is_err());
    assert!(decode_up(&[0x03, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
    // Truncated fields are refused.
    assert!(decode_up(&[0x04, 8, 1, 2, 3, 4, 5, 6, 7]).is_err());
}

#[test]
fn drop_cause_indices_are_stable() {
    assert_eq!(DropCause::ALL.len(), DROP_CAUSES);
    assert_eq!(DropCause::ControlRateLimited.index(), 12);
    assert_eq!(DropCause::ControlRateLimited.name(), "control_rate_limited");
    assert_eq!(DropCause::HoldExpired.index(), 13);
    assert_eq!(DropCause::HoldExpired.name(), "hold_expired");
    assert_eq!(DropCause::HoldOverflow.index(), 14);
    assert_eq!(DropCause::HoldOverflow.name(), "hold_overflow");
    assert_eq!(DropCause::RelayRateLimited.index(), 15);
    assert_eq!(DropCause::RelayRateLimited.name(), "relay_rate_limited");
    for (i, c) in DropCause::ALL.iter().enumerate() {
        assert_eq!(c.index(), i);
    }
}

#[test]
fn version_mismatch_names_both_versions() {
    let err = decode_up(&[0x01, 0x07, 0x00, 0x02]).unwrap_err();
    assert_eq!(
        err,
        DecodeError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 7
        }
    );
    let text = err.to_string();
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}")) && text.contains("version 7"),
        "{text}"
    );
    // A future Hello may be longer; the version is still found and reported.
    let err = decode_down(&[0x01, 0x05, 0x00, 0x01, 0xff, 0xff]).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::VersionMismatch { theirs: 5, .. }
    ));
}

#[test]
fn install_session_debug_redacts_keys() {
    let s = InstallSession {
        peer: 1,
        slot: Slot::Current,
        local_index: 2,
        remote_index: 3,
        cipher: CIPHER_AES_256_GCM,
        send_key: Zeroizing::new([0xab; 32]),
        recv_key: Zeroizing::new([0xcd; 32]),
        rekey_after_secs: 120,
        reject_after_secs: 180,
    };
    let text = format!("{:?}", DownMsg::InstallSession(s));
    assert!(text.contains("redacted"));
    assert!(!text.contains("171") && !text.contains("ab, ab") && !text.contains("205"));
}

#[test]
fn limits_are_enforced_both_ways() {
    let too_many = DownMsg::SetRoutes {
        peer: 1,
        prefixes: vec![(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 32); MAX_ROUTES + 1],
    };
    let mut buf = vec![9, 9];
    let err = encode_down(
        &DownFrame::Request {
            id: 1,
            msg: too_many,
        },
        &mut buf,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        EncodeError::TooMany {
            max: MAX_ROUTES,
            ..
        }
    ));
    assert_eq!(buf, [9, 9], "a failed encode leaves the buffer as it was");

    let max_routes = DownMsg::SetRoutes {
        peer: 1,
        prefixes: vec![(IpAddr::V6(Ipv6Addr::LOCALHOST), 128); MAX_ROUTES],
    };
    let mut buf = Vec::new();
    encode_down(
        &DownFrame::Request {
            id: 1,
            msg: max_routes,
        },
        &mut buf,
    )
    .unwrap();
    assert!(buf.len() <= MAX_MSG, "2048 IPv6 routes fit in one message");

    let big = DownMsg::SendControl {
        dst: "198.51.100.2:51820".parse().unwrap(),
        payload: vec![0; MAX_CONTROL_PAYLOAD + 1],
    };
    assert!(encode_down(&DownFrame::Request { id: 1, msg: big }, &mut Vec::new()).is_err());

    let bad_len = DownMsg::SetRoutes {
        peer: 1,
        prefixes: vec![(IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 33)],
    };
    assert!(encode_down(
        &DownFrame::Request {
            id: 1,
            msg: bad_len
        },
        &mut Vec::new()
    )
    .is_err());

    // Decoder side: a forged route count larger than the limit.
    let mut forged = vec![KIND_REQUEST, 1, 0, 0, 0, 4, 1, 0, 0, 0];
    forged.extend_from_slice(&((MAX_ROUTES as u16) + 1).to_le_bytes());
    assert!(matches!(
        decode_down(&forged),
        Err(DecodeError::TooMany {
            max: MAX_ROUTES,
            ..
        })
    ));
    // A count within the limit but beyond the bytes present is Truncated, before allocating.
    let mut forged = vec![KIND_REQUEST, 1, 0, 0, 0, 4, 1, 0, 0, 0];
    forged.extend_from_slice(&2000u16.to_le_bytes());
    assert!(matches!(
        decode_down(&forged),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        decode_down(&vec![0u8; MAX_MSG + 1]),
        Err(DecodeError::TooLarge { .. })
    ));
    assert_eq!(decode_down(&[]), Err(DecodeError::Empty));
}

#[test]
fn full_stats_page_fits() {
    let stats = Stats {
        workers: vec![WorkerStats::default(); MAX_STATS_WORKERS],
        peers: vec![
            PeerStats {
                last_rx_ms: Some(1),
                ..PeerStats::default()
            };
            MAX_STATS_PEERS
        ],
        next_peer: Some(7),
    };
    let mut buf = Vec::new();
    encode_up(
        &UpFrame::Reply {
            id: 3,
            msg: UpMsg::Stats(stats.clone()),
        },
        &mut buf,
    )
    .unwrap();
    assert!(buf.len() <= MAX_MSG);
    assert_eq!(
        decode_up(&buf).unwrap(),
        UpFrame::Reply {
            id: 3,
            msg: UpMsg::Stats(stats)
        }
    );
}

#[test]
fn replies_and_events_are_not_confused() {
    assert!(encode_up(&UpFrame::Event(UpMsg::Ack), &mut Vec::new()).is_err());
    let ev = UpMsg::RekeyNeeded {
        peer: 1,
        local_index: 2,
    };
    assert!(encode_up(&UpFrame::Reply { id: 1, msg: ev }, &mut Vec::new()).is_err());
    // Hand-made Event frame holding an Ack.
    assert!(decode_up(&[KIND_EVENT, 1]).is_err());
    assert!(decode_up(&[KIND_REPLY, 1, 0, 0, 0, 1]).is_ok());
    // Down frames are not up frames.
    assert_eq!(
        decode_down(&[KIND_REPLY, 1, 0, 0, 0, 1]),
        Err(DecodeError::UnknownKind(KIND_REPLY))
    );
}

#[test]
fn error_message_is_cut_at_a_char_boundary() {
    let long = "é".repeat(MAX_ERROR_MESSAGE); // 2 bytes each
    let UpMsg::Error { message, .. } = UpMsg::error(ErrorCode::REJECTED, long) else {
        panic!("not an error");
    };
    assert!(message.len() <= MAX_ERROR_MESSAGE);
    assert!(message.len() >= MAX_ERROR_MESSAGE - 1);
}
