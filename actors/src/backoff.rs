//! Capped exponential backoff with jitter: the one formula every retry in the service uses
//! (tenant actor restarts, batches waiting out a database outage, upstream calls).
//!
//! Jitter spreads tenants that failed together (a shared database restarting) so they do
//! not retry in lockstep; it is derived from a hash of a seed and the attempt, so it needs
//! no random-number generator and stays reproducible under a paused clock.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// A capped exponential schedule: `initial * 2^(attempt-1)`, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The capped exponential step for `attempt` (counting from 1), before jitter.
    pub fn step(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max)
    }

    /// The step scaled by a jitter factor in `[low, high)` drawn from `(seed, attempt)`.
    pub fn jittered(
        &self,
        hasher: &RandomState,
        seed: &[u8],
        attempt: u32,
        low: f64,
        high: f64,
    ) -> Duration {
        let mut h = hasher.build_hasher();
        h.write(seed);
        h.write_u32(attempt);
        let frac = (h.finish() % 1000) as f64 / 1000.0;
        self.step(attempt).mul_f64(low + (high - low) * frac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_and_stops_at_the_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.step(1), Duration::from_millis(100));
        assert_eq!(b.step(2), Duration::from_millis(200));
        assert_eq!(b.step(4), Duration::from_millis(800));
        assert_eq!(b.step(5), Duration::from_secs(1));
        assert_eq!(b.step(500), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(10));
        let h = RandomState::new();
        for attempt in 1..20 {
            let d = b.jittered(&h, b"acme", attempt, 1.0, 1.25);
            assert!(d >= b.step(attempt) && d <= b.step(attempt).mul_f64(1.25));
        }
    }
}
