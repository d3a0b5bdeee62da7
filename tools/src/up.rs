//! `shadowmesh up` / `shadowmesh down`: run one node as two supervised processes.
//!
//! `up` checks the configuration, keys and certificates, starts `shadowmesh-dataplane` with
//! the `[dataplane]` settings (overlay addresses from our certificate), waits for its IPC
//! socket, starts `shadowmesh-control`, and then supervises both: a process that exits is
//! restarted with backoff (a restarted dataplane is refilled by the control plane; a restarted
//! control plane reconnects and handshakes anew) and the reason is logged. SIGTERM/SIGINT stop
//! both. A pid file lets `down` stop it.
//!
//! Owns process supervision only; it never touches keys beyond checking they load, and never
//! leaves a child running when it exits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use shadowmesh_control::config::Config;
use shadowmesh_control::daemon;

use crate::keys::unix_now;

/// Supervisor tick: the signal wait and the child checks happen this often.
const TICK: Duration = Duration::from_millis(200);
/// First restart delay; doubled per crash up to [`MAX_RESTART_DELAY`].
const MIN_RESTART_DELAY: Duration = Duration::from_secs(1);
/// Longest restart delay.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);
/// A process that ran this long resets its backoff. Short: a dataplane that came up, took
/// its sessions and ran for seconds is healthy, and a second crash soon after must not cost
/// a 16–30 s outage (measured by tools/tests/netns_faults.rs with 60 s here); a process that
/// dies at start-up still backs off, since it never reaches this.
const HEALTHY_RUN: Duration = Duration::from_secs(5);
/// How long the dataplane gets to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopped process gets before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

fn ticks(d: Duration) -> u64 {
    u64::try_from(d.as_millis() / TICK.as_millis()).unwrap_or(u64::MAX)
}

/// Finds `name`: the configured path, else next to the running `shadowmesh` executable.
///
/// # Errors
/// The binary does not exist there.
pub fn find_binary(name: &str, configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let p = match configured {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating the shadowmesh executable")?
            .parent()
            .context("the shadowmesh executable has no directory")?
            .join(name),
    };
    if !p.is_file() {
        bail!(
            "{} not found (build it, install it next to shadowmesh, or set its path in the config)",
            p.display()
        );
    }
    Ok(p)
}

fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True if `pid` exists and is not a zombie (an exited `up` whose parent has not reaped it
/// yet counts as stopped).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// One supervised process.
struct Proc {
    what: &'static str,
    cmd: Vec<std::ffi::OsString>,
    child: Option<Child>,
    started_tick: u64,
    restart_tick: Option<u64>,
    delay: Duration,
}

impl Proc {
    fn new(what: &'static str, cmd: Vec<std::ffi::OsString>) -> Self {
        Self {
            what,
            cmd,
            child: None,
            started_tick: 0,
            restart_tick: None,
            delay: MIN_RESTART_DELAY,
        }
    }

    fn start(&mut self, now_tick: u64) -> anyhow::Result<()> {
        let (bin, args) = self.cmd.split_first().context("empty command")?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.what))?;
        eprintln!("shadowmesh up: started {} (pid {})", self.what, child.id());
        self.child = Some(child);
        self.started_tick = now_tick;
        self.restart_tick = None;
        Ok(())
    }

    /// Reaps the child if it exited and schedules its restart.
    fn check(&mut self, now_tick: u64) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        if now_tick.saturating_sub(self.started_tick) >= ticks(HEALTHY_RUN) {
            self.delay = MIN_RESTART_DELAY;
        }
        eprintln!(
            "shadowmesh up: {} exited ({status}); restarting in {} s",
            self.what,
            self.delay.as_secs()
        );
        self.restart_tick = Some(now_tick + ticks(self.delay));
        self.delay = (self.delay * 2).min(MAX_RESTART_DELAY);
        Some(status)
    }

    fn due(&self, now_tick: u64) -> bool {
        self.child.is_none() && self.restart_tick.is_some_and(|t| now_tick >= t)
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "-TERM");
        for _ in 0..ticks(STOP_TIMEOUT) {
            if matches!(child.try_wait(), Ok(Some(_))) {
                eprintln!("shadowmesh up: {} stopped", self.what);
                return;
            }
            std::thread::sleep(TICK);
        }
        eprintln!(
            "shadowmesh up: {} did not stop within 5 s; killing it",
            self.what
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Removes the pid file when `up` returns, however it returns.
struct PidFile(PathBuf);

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_pid_file(path: &Path) -> anyhow::Result<PidFile> {
    if let Ok(old) = std::fs::read_to_string(path) {
        if let Ok(pid) = old.trim().parse::<u32>() {
            if pid != std::process::id() && alive(pid) {
                bail!(
                    "already running (pid {pid}, pid file {}); stop it with `shadowmesh down`",
                    path.display()
                );
            }
        }
    }
    if let Some(d) = path.parent() {
        // Usually also the sockets' directory (/run/shadowmesh): created 0700, as the
        // dataplane and control plane would create it (they refuse one others can write).
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
        .with_context(|| format!("writing the pid file {}", path.display()))?;
    Ok(PidFile(path.to_path_buf()))
}

fn wait_for_socket(sock: &Path, dp: &mut Proc) -> anyhow::Result<()> {
    for _ in 0..ticks(START_TIMEOUT) {
        if sock.exists() {
            return Ok(());
        }
        if let Some(child) = dp.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                dp.child = None;
                bail!("the dataplane exited during start-up ({status}); see its log above");
            }
        }
        std::thread::sleep(TICK);
    }
    bail!(
        "the dataplane did not create {} within {} s",
        sock.display(),
        START_TIMEOUT.as_secs()
    )
}

/// `shadowmesh up --config FILE`: runs until SIGTERM/SIGINT.
///
/// # Errors
/// Configuration, key or certificate problems, missing binaries, a dataplane that does not
/// start the first time.
pub fn up(config_path: &Path) -> anyhow::Result<()> {
    let config_path = std::fs::canonicalize(config_path)
        .with_context(|| format!("{}: cannot open the configuration", config_path.display()))?;
    let config = Config::load(&config_path)?;
    let loaded = daemon::load(config.clone())?;
    loaded
        .cert
        .verify(&loaded.ca, unix_now().as_secs())
        .with_context(|| {
            format!(
                "{} does not verify against the CA {}",
                config.node.cert.display(),
                config.node.ca.display()
            )
        })?;
    let body = &loaded.cert.body;
    let mut addrs: Vec<String> = body.ipv4.iter().map(|(a, l)| format!("{a}/{l}")).collect();
    addrs.extend(body.ipv6.iter().map(|(a, l)| format!("{a}/{l}")));
    drop(loaded);

    let dp_bin = find_binary("shadowmesh-dataplane", config.dataplane.binary.as_deref())?;
    let cp_bin = find_binary("shadowmesh-control", config.control.binary.as_deref())?;
    let d = &config.dataplane;
    let mut dp_cmd: Vec<std::ffi::OsString> = vec![
        dp_bin.into(),
        "--tun".into(),
        d.tun.clone().into(),
        "--mtu".into(),
        d.mtu.to_string().into(),
        "--bind".into(),
        d.bind_addr().to_string().into(),
        "--workers".into(),
        d.workers.to_string().into(),
        "--backend".into(),
        d.backend.as_str().into(),
        "--socket".into(),
        d.socket.clone().into(),
    ];
    if !d.pin {
        dp_cmd.push("--no-pin".into());
    }
    for a in &addrs {
        dp_cmd.push("--addr".into());
        dp_cmd.push(a.into());
    }
    let cp_cmd = vec![cp_bin.into(), "--config".into(), config_path.clone().into()];

    let _pid = write_pid_file(&config.control.pid_file)?;
    // Blocked before any child starts; std's spawn clears the mask in children.
    shadowmesh_platform::signal::block_termination_signals()
        .context("blocking termination signals")?;

    let mut dp = Proc::new("dataplane", dp_cmd);
    let mut cp = Proc::new("control plane", cp_cmd);
    let sock = d.socket.clone();
    // A socket file left by a crashed dataplane would pass for a ready one.
    let _ = std::fs::remove_file(&sock);
    dp.start(0)?;
    if let Err(e) = wait_for_socket(&sock, &mut dp) {
        dp.stop();
        return Err(e);
    }
    if let Err(e) = cp.start(0) {
        dp.stop();
        return Err(e);
    }
    eprintln!(
        "shadowmesh up: node {:?} running (addresses {}); Ctrl-C or `shadowmesh down --config {}` stops it",
        config.node.name,
        addrs.join(", "),
        config_path.display()
    );
    let mut tick = 0u64;
    loop {
        match shadowmesh_platform::signal::wait_termination(TICK) {
            Ok(Some(sig)) => {
                eprintln!(
                    "shadowmesh up: signal {sig}: stopping the control plane and the dataplane"
                );
                break;
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("shadowmesh up: waiting for signals: {e}");
                std::thread::sleep(TICK);
            }
        }
        tick += 1;
        let _ = dp.check(tick);
        let _ = cp.check(tick);
        if dp.due(tick) {
            let _ = std::fs::remove_file(&sock);
            if let Err(e) = dp.start(tick) {
                eprintln!("shadowmesh up: {e:#}");
                dp.restart_tick = Some(tick + ticks(dp.delay));
            }
        }
        if cp.due(tick) {
            if let Err(e) = cp.start(tick) {
                eprintln!("shadowmesh up: {e:#}");
                cp.restart_tick = Some(tick + ticks(cp.delay));
            }
        }
    }
    // Control plane first: it never stops the dataplane itself, and it must not race a
    // restart of the dataplane we are about to stop.
    cp.stop();
    dp.stop();
    Ok(())
}

/// `shadowmesh down --config FILE`: stops the `up` named by the config's pid file.
///
/// # Errors
/// No pid file, or the process did not stop within 15 s.
pub fn down(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let pf = &config.control.pid_file;
    let text = std::fs::read_to_string(pf)
        .with_context(|| format!("{}: no pid file (is it running?)", pf.display()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: expected a process id, got {text:?}", pf.display()))?;
    if !alive(pid) {
        let _ = std::fs::remove_file(pf);
        bail!(
            "pid {pid} from {} is not running (stale pid file removed)",
            pf.display()
        );
    }
    if !signal(pid, "-TERM") {
        bail!("could not signal pid {pid} (permission?)");
    }
    // Bounded: 15 s for both children to stop (5 s each before SIGKILL) and `up` to exit.
    for _ in 0..ticks(Duration::from_secs(15)) {
        if !alive(pid) {
            println!("stopped {} (pid {pid})", config.node.name);
            return Ok(());
        }
        std::thread::sleep(TICK);
    }
    bail!("pid {pid} still running after 15 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_refuses_a_live_owner_and_replaces_a_dead_one() {
        let dir = std::env::temp_dir().join(format!("sm-up-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pf = dir.join("up.pid");
        // Our parent is alive: a second `up` must refuse.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&pf, format!("{}\n", std::os::unix::process::parent_id())).unwrap();
        let e = write_pid_file(&pf).err().unwrap().to_string();
        assert!(e.contains("already running"), "{e}");
        // A pid that cannot exist (above pid_max) is stale: replaced, and removed on drop.
        std::fs::write(&pf, "999999999\n").unwrap();
        {
            let _g = write_pid_file(&pf).unwrap();
            let own: u32 = std::fs::read_to_string(&pf)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert_eq!(own, std::process::id());
        }
        assert!(!pf.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn liveness_and_binaries() {
        assert!(alive(std::process::id()));
        assert!(!alive(999_999_999));
        let e = find_binary("x", Some(Path::new("/nonexistent/shadowmesh-x")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/shadowmesh-x not found"), "{e}");
        assert_eq!(ticks(Duration::from_secs(1)), 5);
    }
}
