//! Static mode (`tools/src/static_cfg.rs`), compiled here through `#[path]` so its unit tests
//! run before the CLI declares the module, plus an end-to-end `load` + `apply` against a real
//! IPC server with the in-memory handler.

#[path = "../../tools/src/static_cfg.rs"]
mod static_cfg;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use shadowmesh_dataplane::ipc::{IpcClient, IpcServer, MemoryHandler};

const KEY_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY_B: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";

#[test]
fn load_and_apply_configures_the_dataplane() {
    let dir = std::env::temp_dir().join(format!("sm-ipc-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("static.toml");
    let text = format!(
        r#"
[[peer]]
id = 2
endpoint = "198.51.100.2:51820"
allowed_ips = ["100.64.0.2/32", "fd00::2/128"]
cipher = "chacha20-poly1305"
local_index = 1002
remote_index = 2001
send_key = "{KEY_A}"
recv_key = "{KEY_B}"

[[peer]]
id = 3
endpoint = "[fd00::3]:51820"
allowed_ips = ["100.64.0.0/24"]
cipher = "aes-256-gcm"
local_index = 1003
remote_index = 3001
send_key = "{KEY_B}"
recv_key = "{KEY_A}"
"#
    );
    std::fs::write(&cfg, text).unwrap();
    let msgs = static_cfg::load(&cfg).unwrap();
    assert_eq!(msgs.len(), 6);

    let sock = dir.join("dp.sock");
    let server = IpcServer::bind(&sock).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (_tx, rx) = crossbeam_channel::bounded(1);
    let stop2 = Arc::clone(&stop);
    let t = std::thread::spawn(move || {
        let mut h = MemoryHandler::default();
        server.run(&mut h, rx, &stop2).unwrap();
        h
    });
    let mut client = IpcClient::connect(&sock).unwrap();
    static_cfg::apply(&mut client, msgs).unwrap();

    // A refusal names the request that failed: removing an unknown session.
    let err = static_cfg::apply(
        &mut client,
        vec![shadowmesh_dataplane::ipc::DownMsg::RemoveSession { local_index: 9 }],
    )
    .unwrap_err();
    assert!(err.to_string().contains("RemoveSession 9"), "{err}");

    stop.store(true, Ordering::Release);
    let h = t.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(h.sessions.len(), 2);
    assert_eq!(h.sessions[&1002].peer, 2);
    assert_eq!(h.sessions[&1003].recv_key[0], 0x00);
    assert_eq!(h.routes[&3], vec![("100.64.0.0".parse().unwrap(), 24)]);
    assert_eq!(h.endpoints[&3], "[fd00::3]:51820".parse().unwrap());
}
