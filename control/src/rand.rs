//! Randomness handed to the sans-IO protocol code by its caller.
//!
//! Protocol logic (handshake driver, DHT, transport ids) never creates its own generator: it
//! takes `&mut dyn RngCore`, so the daemon passes [`SystemRng`] and the simulator a seeded
//! [`SeededRng`], and the same seed replays the same decisions. The key generation and KEM /
//! signature randomness inside aws-lc cannot be injected (its `SecureRandom` is sealed); those
//! bytes differ between runs, but no decision of ours depends on them.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
pub use rand_core::{RngCore, SeedableRng};

/// The seeded generator of the simulator and of tests (ChaCha8: portable, same stream on
/// every platform and version of `rand_chacha`).
pub type SeededRng = rand_chacha::ChaCha8Rng;

/// The operating system's generator (aws-lc's `SystemRandom`), as an [`RngCore`].
#[derive(Debug, Default)]
pub struct SystemRng(SystemRandom);

impl SystemRng {
    /// A handle to the system generator.
    #[must_use]
    pub fn new() -> Self {
        Self(SystemRandom::new())
    }
}

impl RngCore for SystemRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        // The system generator failing means the OS cannot supply entropy at all; nothing
        // secure can continue, so this aborts rather than hand out predictable bytes.
        self.0
            .fill(dst)
            .expect("the system random generator failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_generators_replay_and_differ_by_seed() {
        let draw = |seed| {
            let mut r = SeededRng::seed_from_u64(seed);
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn system_generator_fills() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        SystemRng::new().fill_bytes(&mut a);
        SystemRng::new().fill_bytes(&mut b);
        assert_ne!(a, b);
    }
}
