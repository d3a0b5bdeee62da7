//! The control plane's side of the IPC peer check: an impostor dataplane run by another user
//! (uid 65534, started from this test binary) listens on the socket path, and the client must
//! refuse it by its `SO_PEERCRED` before sending anything — no Hello, so no session key.
//! Needs root (to run the impostor as another uid); says so and passes trivially otherwise.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shadowmesh_dataplane::ipc::{IpcClient, IpcError};
use shadowmesh_platform::seqpacket::{self, SeqpacketError, SeqpacketListener};

const NOBODY: u32 = 65534;

/// Run as uid 65534 by `client_refuses_a_dataplane_of_another_user`: listens on the path in
/// `SM_IMPOSTOR_SOCK`, takes two connections and reports whether anything arrived on each.
#[test]
#[ignore = "helper run as another uid by client_refuses_a_dataplane_of_another_user"]
fn impostor_server_child() {
    let Ok(path) = std::env::var("SM_IMPOSTOR_SOCK") else {
        return;
    };
    let l = SeqpacketListener::bind(Path::new(&path), 0o666).expect("impostor bind");
    l.set_nonblocking(true).unwrap();
    // The parent connects only after this line: a connect between bind and listen, or after
    // this helper has exited, would be refused by the kernel instead of by the peer check.
    println!("IMPOSTOR listening");
    // Two clients (control and observer), each bounded: 500 × 10 ms to arrive.
    for _ in 0..2 {
        let mut conn = None;
        for _ in 0..500 {
            match l.accept() {
                Ok((c, _)) => {
                    conn = Some(c);
                    break;
                }
                Err(SeqpacketError::TimedOut { .. }) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("impostor accept: {e}"),
            }
        }
        let Some(conn) = conn else {
            println!("IMPOSTOR no-connection");
            return;
        };
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = vec![0u8; 65536];
        match conn.recv(&mut buf) {
            Ok(n) => println!("IMPOSTOR received {n} bytes"),
            Err(SeqpacketError::Closed) => println!("IMPOSTOR closed-empty"),
            Err(e) => println!("IMPOSTOR error {e}"),
        }
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn client_refuses_a_dataplane_of_another_user() {
    if seqpacket::current_uid() != 0 {
        eprintln!("not root: cannot run the impostor as another uid; skipped");
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(format!("sm-ipc-impostor-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir(&dir.0).unwrap();
    std::os::unix::fs::chown(&dir.0, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.0.join("dp.sock");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "impostor_server_child",
            "--nocapture",
        ])
        .env("SM_IMPOSTOR_SOCK", &path)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the impostor to say it listens (the read ends if it dies: stdout closes).
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    // libtest prints its own header first; bounded: at most 20 lines.
    let mut seen = String::new();
    let mut listening = false;
    for _ in 0..20 {
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stdout, &mut line).unwrap_or(0) == 0 {
            break;
        }
        seen.push_str(&line);
        if line.trim() == "IMPOSTOR listening" {
            listening = true;
            break;
        }
    }
    assert!(listening, "impostor did not start: {seen}");
    let result = IpcClient::connect(&path);
    let observer = IpcClient::connect_observer(&path);
    let pid = child.id();
    // The impostor takes two connections and exits; collect what it saw of them.
    let out = {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        let _ = child.wait();
        s
    };
    let err = result.unwrap_err();
    match &err {
        IpcError::Socket(SeqpacketError::PeerRefused { uid, pid: p, .. }) => {
            assert_eq!(*uid, NOBODY);
            assert_eq!(*p as u32, pid);
        }
        other => panic!("expected a refused peer, got {other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("uid 65534") && text.contains(&format!("pid {pid}")),
        "{text}"
    );
    assert!(matches!(
        observer,
        Err(IpcError::Socket(SeqpacketError::PeerRefused { .. }))
    ));
    // Nothing at all reached the impostor: both connections closed before any Hello.
    assert_eq!(
        out.matches("IMPOSTOR closed-empty").count(),
        2,
        "impostor saw: {out}"
    );
}
