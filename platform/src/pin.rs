//! CPU pinning for dataplane workers.
//!
//! Owns: pinning the calling thread to one core and counting online cores. Must never fail
//! the caller: pinning is an optimisation, so failure is reported as `false`, not an error.

/// Pins the calling thread to core `core` (an index into the online core list).
///
/// Returns `false` when the core does not exist or the OS refused (e.g. macOS, which has no
/// hard affinity, or a cpuset that excludes the core); the thread then keeps running unpinned.
pub fn pin_current_thread(core: usize) -> bool {
    match core_affinity::get_core_ids() {
        Some(ids) => ids
            .get(core)
            .is_some_and(|id| core_affinity::set_for_current(*id)),
        None => false,
    }
}

/// Number of cores this process may run on (at least 1), the default worker count.
#[must_use]
pub fn online_cores() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_cores_is_positive() {
        assert!(online_cores() >= 1);
    }

    #[test]
    fn pin_to_missing_core_is_false() {
        let r = std::thread::spawn(|| pin_current_thread(usize::MAX / 2))
            .join()
            .unwrap();
        assert!(!r);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pin_to_core_zero_sticks() {
        // In a child thread so the test runner's threads keep their affinity.
        let r = std::thread::spawn(|| {
            let ok = pin_current_thread(0);
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = unsafe { libc::sched_getcpu() };
            (ok, cpu)
        })
        .join()
        .unwrap();
        let first = core_affinity::get_core_ids().unwrap()[0].id as i32;
        assert!(r.0);
        assert_eq!(r.1, first);
    }
}
