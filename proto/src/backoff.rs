//! How long a device waits before reconnecting to the jump host: shared by the agent and the
//! benchmark's load generator, so the reconnect-storm figure models the real fleet.

use std::time::Duration;

use crate::limits::{RECONNECT_MAX_BACKOFF, RECONNECT_MIN_BACKOFF};

/// Delay before reconnect attempt `failures` (1, 2, …): "full jitter", uniform in
/// `[0, min(cap, base · 2^failures)]`, so a fleet that lost the jump host at the same moment
/// spreads its returns from the very first retry instead of arriving in lockstep.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.min(20);
    let ceiling = RECONNECT_MIN_BACKOFF
        .saturating_mul(1u32 << exp)
        .min(RECONNECT_MAX_BACKOFF);
    let max = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_within_a_growing_capped_ceiling() {
        for failures in 1..40 {
            let ceiling =
                (RECONNECT_MIN_BACKOFF * 2u32.pow(failures.min(20))).min(RECONNECT_MAX_BACKOFF);
            for _ in 0..50 {
                let d = backoff(failures);
                assert!(d <= ceiling, "{failures}: {d:?} above {ceiling:?}");
            }
        }
        // The first retry after a loss is already spread, not a fixed delay for the fleet.
        let first: Vec<_> = (0..200).map(|_| backoff(1)).collect();
        assert!(first.iter().any(|d| *d < RECONNECT_MIN_BACKOFF));
        assert!(first.iter().any(|d| *d > RECONNECT_MIN_BACKOFF));
        // Late attempts spread over the whole range, not all at the cap.
        let late: Vec<_> = (0..200).map(|_| backoff(30)).collect();
        assert!(late.iter().any(|d| *d < RECONNECT_MAX_BACKOFF / 2));
        assert!(late.iter().any(|d| *d > RECONNECT_MAX_BACKOFF / 2));
    }
}
