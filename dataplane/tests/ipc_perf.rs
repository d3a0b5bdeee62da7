//! IPC figures on this machine (printed; run with `--nocapture` to see them): request
//! round-trip time through the server thread, and event throughput with and without the
//! waker. The assertions only check that nothing is lost or refused; the bounds are loose so
//! a loaded CI machine does not fail them.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadowmesh_dataplane::ipc::proto::{Slot, CIPHER_AES_256_GCM};
use shadowmesh_dataplane::ipc::{
    DownMsg, InstallSession, IpcClient, IpcServer, MemoryHandler, UpMsg,
};
use zeroize::Zeroizing;

#[expect(
    clippy::disallowed_methods,
    reason = "a measurement test: it times real I/O"
)]
fn now() -> Instant {
    Instant::now()
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sm-ipc-perf-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

#[test]
fn request_round_trip_and_event_throughput() {
    let dir = temp_path("rt");
    let sock = dir.join("dp.sock");
    let server = IpcServer::bind(&sock).unwrap();
    let waker = server.waker();
    let counters = server.counters();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::bounded::<UpMsg>(4096);
    let stop2 = Arc::clone(&stop);
    let t = std::thread::spawn(move || {
        let mut h = MemoryHandler::default();
        server.run(&mut h, rx, &stop2).unwrap();
        h.sessions.len()
    });
    let mut c = IpcClient::connect(&sock).unwrap();

    // 1. Request round trips (InstallSession, the largest routine request: 92 bytes).
    const REQUESTS: u32 = 5000;
    let start = now();
    for i in 0..REQUESTS {
        let msg = DownMsg::InstallSession(InstallSession {
            peer: i % 64,
            slot: Slot::Current,
            local_index: i,
            remote_index: i,
            cipher: CIPHER_AES_256_GCM,
            send_key: Zeroizing::new([7; 32]),
            recv_key: Zeroizing::new([8; 32]),
            rekey_after_secs: 120,
            reject_after_secs: 180,
        });
        assert_eq!(c.request(msg).unwrap(), UpMsg::Ack);
    }
    let rt = start.elapsed() / REQUESTS;
    println!("IPC request round trip (InstallSession -> Ack): {rt:?} per request over {REQUESTS}");

    // 2. Event latency, one at a time: with the waker vs. relying on the poll interval.
    for (label, wake) in [("with waker", true), ("without waker", false)] {
        let n = 50;
        let start = now();
        for i in 0..n {
            tx.send(UpMsg::RekeyNeeded {
                peer: i,
                local_index: i,
            })
            .unwrap();
            if wake {
                waker.wake();
            }
            let got = c.recv_event(Duration::from_secs(2)).unwrap();
            assert!(got.is_some(), "event {i} lost ({label})");
        }
        println!(
            "IPC event latency {label}: {:?} mean over {n}",
            start.elapsed() / n
        );
    }

    // 3. Event throughput: the client reads while the engine side pushes.
    const EVENTS: u32 = 20_000;
    let before_deferred = counters.events_deferred.load(Ordering::Relaxed);
    let pusher = {
        let tx = tx.clone();
        let waker = waker.clone();
        std::thread::spawn(move || {
            for i in 0..EVENTS {
                // Blocking send: the channel applies back-pressure when the IPC thread lags.
                tx.send(UpMsg::RekeyNeeded {
                    peer: i,
                    local_index: i,
                })
                .unwrap();
                if i % 64 == 0 {
                    waker.wake();
                }
            }
            waker.wake();
        })
    };
    let start = now();
    let mut got = 0u32;
    for _ in 0..EVENTS {
        match c.recv_event(Duration::from_millis(500)).unwrap() {
            Some(_) => got += 1,
            None => break,
        }
    }
    let elapsed = start.elapsed();
    pusher.join().unwrap();
    let deferred = counters.events_deferred.load(Ordering::Relaxed) - before_deferred;
    println!(
        "IPC event throughput: {got} events in {elapsed:?} ({:.0} events/s); the client's buffer was full {deferred} times",
        f64::from(got) / elapsed.as_secs_f64()
    );
    assert_eq!(got, EVENTS, "a slow reader gets back-pressure, not loss");

    stop.store(true, Ordering::Release);
    assert_eq!(t.join().unwrap(), REQUESTS as usize);
    std::fs::remove_dir_all(&dir).unwrap();
}
