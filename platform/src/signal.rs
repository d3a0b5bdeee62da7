//! Termination signals (SIGINT, SIGTERM, SIGHUP) as a value to wait for, not a handler.
//!
//! The main thread blocks them before it spawns any thread (threads inherit the mask), then
//! polls for a pending one with a bounded wait. No async-signal-safety puzzles, no global
//! handler state, and the same code on Linux and macOS.

use std::io;
use std::time::Duration;

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn termination_set() -> io::Result<libc::sigset_t> {
    // SAFETY: sigemptyset initialises the set it is given; a zeroed sigset_t is valid storage.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid, initialised storage for the duration of these calls.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    Ok(set)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and every thread it spawns later),
/// so they stay pending until [`wait_termination`] takes them.
pub fn block_termination_signals() -> io::Result<()> {
    let set = termination_set()?;
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits up to `timeout` for a blocked termination signal; returns its number if one came.
pub fn wait_termination(timeout: Duration) -> io::Result<Option<i32>> {
    let set = termination_set()?;
    let step = Duration::from_millis(20);
    let mut waited = Duration::ZERO;
    loop {
        // SAFETY: a zeroed sigset_t is valid storage that sigpending fills in.
        let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `pending` is valid storage.
        if unsafe { libc::sigpending(&mut pending) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let is_pending = |sig: libc::c_int| {
            // SAFETY: `pending` was filled by sigpending.
            unsafe { libc::sigismember(&pending, sig) == 1 }
        };
        if SIGNALS.iter().any(|&s| is_pending(s)) {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialised and one of its signals is pending, so this returns
            // at once with that signal in `sig`.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            return Ok(Some(sig));
        }
        if waited >= timeout {
            return Ok(None);
        }
        std::thread::sleep(step.min(timeout - waited));
        waited += step;
    }
}
