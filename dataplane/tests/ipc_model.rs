//! Model test of the whole IPC path: random sequences of requests, interleaved with random
//! malformed messages, go through a real socket to a server with a [`MemoryHandler`]; the
//! same valid requests go straight to a second `MemoryHandler` (the model). Every reply must
//! match what the model's handler said, every malformed message must get an `Error` reply on
//! the same connection, and the final states must be equal.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use shadowmesh_dataplane::ipc::proto::{
    self, ErrorCode, Slot, UpFrame, CIPHER_AES_256_GCM, MAX_MSG,
};
use shadowmesh_dataplane::ipc::{
    DownMsg, InstallSession, IpcClient, IpcError, IpcHandler, IpcServer, MemoryHandler, UpMsg,
};
use zeroize::Zeroizing;

#[derive(Debug, Clone)]
enum Op {
    Request(DownMsg),
    Garbage(Vec<u8>),
}

fn request() -> impl Strategy<Value = DownMsg> {
    // Small id spaces so removes hit existing entries often.
    prop_oneof![
        (0u32..4, 0u32..8, any::<u8>()).prop_map(|(peer, local_index, k)| {
            DownMsg::InstallSession(InstallSession {
                peer,
                slot: if k % 2 == 0 {
                    Slot::Next
                } else {
                    Slot::Current
                },
                local_index,
                remote_index: local_index + 100,
                cipher: CIPHER_AES_256_GCM,
                send_key: Zeroizing::new([k; 32]),
                recv_key: Zeroizing::new([k ^ 0xff; 32]),
                rekey_after_secs: 120,
                reject_after_secs: 180,
            })
        }),
        (0u32..8).prop_map(|local_index| DownMsg::RemoveSession { local_index }),
        (0u32..4).prop_map(|peer| DownMsg::RemovePeer { peer }),
        (
            0u32..4,
            prop::collection::vec((any::<[u8; 4]>(), 0u8..=32), 0..5)
        )
            .prop_map(|(peer, v)| DownMsg::SetRoutes {
                peer,
                prefixes: v
                    .into_iter()
                    .map(|(o, l)| (IpAddr::V4(Ipv4Addr::from(o)), l))
                    .collect(),
            }),
        (0u32..4, any::<u16>()).prop_map(|(peer, port)| DownMsg::SetEndpoint {
            peer,
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), port),
        }),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|payload| DownMsg::SendControl {
            dst: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 51820),
            payload,
        }),
        (0u32..4).prop_map(|first_peer| DownMsg::GetStats { first_peer }),
    ]
}

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..200),
        // Request-shaped: right kind and an id, random body.
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..120)).prop_map(|(id, body)| {
            let mut v = vec![0x02];
            v.extend_from_slice(&id.to_le_bytes());
            v.extend_from_slice(&body);
            v
        }),
    ]
    // Only what does not decode: a random Shutdown or second Hello is not garbage.
    .prop_filter("must not decode", |b| proto::decode_down(b).is_err())
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => request().prop_map(Op::Request),
        1 => garbage().prop_map(Op::Garbage),
    ]
}

fn temp_sock() -> (std::path::PathBuf, std::path::PathBuf) {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sm-ipc-model-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let sock = dir.join("dp.sock");
    (dir, sock)
}

fn snapshot(h: &MemoryHandler) -> String {
    // Debug output of the sessions redacts keys, so compare keys separately.
    let keys: Vec<_> = h
        .sessions
        .values()
        .map(|s| (*s.send_key, *s.recv_key))
        .collect();
    format!(
        "{:?} {:?} {:?} {:?} {:?} {keys:?}",
        h.sessions, h.routes, h.endpoints, h.sent_control, h.shutdown
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn server_matches_direct_handler(ops in prop::collection::vec(op(), 1..60)) {
        let (dir, sock) = temp_sock();
        let server = IpcServer::bind(&sock).unwrap();
        let counters = server.counters();
        let stop = Arc::new(AtomicBool::new(false));
        let (_tx, rx) = crossbeam_channel::bounded(1);
        let stop2 = Arc::clone(&stop);
        let t = std::thread::spawn(move || {
            let mut h = MemoryHandler::default();
            server.run(&mut h, rx, &stop2).unwrap();
            h
        });
        let mut client = IpcClient::connect(&sock).unwrap();
        let mut model = MemoryHandler::default();
        let mut buf = vec![0u8; MAX_MSG];
        let mut garbage_sent = 0u64;
        for op in ops {
            match op {
                Op::Request(msg) => {
                    let expected = model.handle(msg.clone());
                    let got = client.request(msg);
                    match (expected, got) {
                        (Ok(None), Ok(UpMsg::Ack)) => {}
                        (Ok(Some(m)), Ok(r)) => prop_assert_eq!(m, r),
                        (Err(why), Err(IpcError::Remote { code, message, .. })) => {
                            prop_assert_eq!(code, ErrorCode::REJECTED);
                            prop_assert_eq!(why, message);
                        }
                        (e, g) => prop_assert!(false, "model {:?} vs server {:?}", e, g),
                    }
                }
                Op::Garbage(bytes) => {
                    garbage_sent += 1;
                    client.raw_conn().send(&bytes).unwrap();
                    let n = client.raw_conn().recv(&mut buf).unwrap();
                    let reply = proto::decode_up(&buf[..n]).unwrap();
                    let is_error = matches!(
                        reply,
                        UpFrame::Reply { msg: UpMsg::Error { code: ErrorCode::MALFORMED | ErrorCode::PROTOCOL, .. }, .. }
                    );
                    prop_assert!(is_error, "garbage answered with {:?}", reply);
                    if let UpFrame::Reply { id, .. } = reply {
                        prop_assert_eq!(Some(id), proto::request_id(&bytes).or(Some(0)));
                    }
                }
            }
        }
        // A final round trip proves the connection survived everything.
        prop_assert_eq!(client.request(DownMsg::GetStats { first_peer: 0 }).is_ok(), true);
        stop.store(true, Ordering::Release);
        let served = t.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        prop_assert_eq!(snapshot(&served), snapshot(&model));
        prop_assert_eq!(counters.malformed.load(Ordering::Relaxed), garbage_sent);
        prop_assert_eq!(counters.connections.load(Ordering::Relaxed), 1);
    }
}
