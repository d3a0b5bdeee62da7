//! The batched UDP path must not allocate: a counting global allocator watches the test
//! thread while `send_batch`/`recv_batch` move datagrams over loopback (127.0.0.1, an
//! ephemeral port; no root needed, nothing configured on the host).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::net::SocketAddr;

use shadowmesh_platform::udp::{bind_group, RecvMeta, Transmit, UdpSocketConfig, BATCH};

struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers every operation to the system allocator; only bumps a thread-local counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if ON.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        if ON.with(Cell::get) {
            COUNT.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn send_and_recv_batches_do_not_allocate() {
    let cfg = UdpSocketConfig {
        bind: "127.0.0.1:0".parse::<SocketAddr>().expect("literal"),
        reuseport: true,
        gso: true,
        gro: true,
        recv_buf: 1 << 20,
        send_buf: 1 << 20,
    };
    let rx = bind_group(&cfg, 1).expect("rx").remove(0);
    let tx = bind_group(&cfg, 1).expect("tx").remove(0);
    let payload = vec![0xabu8; 3 * 1000];
    let dst = rx.local_addr();
    let mut msgs = [Transmit {
        dst,
        data: &payload[..100],
        segment_size: None,
    }; 8];
    // One GSO train (or three datagrams where the kernel lacks GSO) in every batch.
    msgs[7] = Transmit {
        dst,
        data: &payload,
        segment_size: Some(1000),
    };
    let mut store = vec![[0u8; 4096]; BATCH];
    let mut meta = [RecvMeta::default(); BATCH];
    let mut received = 0usize;

    ON.with(|o| o.set(true));
    for _ in 0..200 {
        let sent = tx.send_batch(&msgs).expect("send");
        assert_eq!(sent, msgs.len());
        for _ in 0..100 {
            let mut it = store.iter_mut();
            let mut bufs: [&mut [u8]; 4] = [
                it.next().expect("buf"),
                it.next().expect("buf"),
                it.next().expect("buf"),
                it.next().expect("buf"),
            ];
            match rx.recv_batch(&mut bufs, &mut meta) {
                Ok(n) => received += meta[..n].iter().map(|m| m.len).sum::<usize>(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
    ON.with(|o| o.set(false));
    let allocations = COUNT.with(Cell::get);
    assert_eq!(
        allocations, 0,
        "batched UDP I/O allocated {allocations} times"
    );
    assert!(received > 0, "nothing received over loopback");
}
