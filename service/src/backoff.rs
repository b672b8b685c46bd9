//! Capped exponential backoff with jitter: the one reconnect schedule of every wsmq program
//! (the gateway's link to the bridge, the bridge's and the workers' broker connections).

use std::time::Duration;

use rand::Rng;

/// Delays between connection attempts: `initial`, doubling per failed attempt up to `max`,
/// each scaled by a random factor in `[0.5, 1.0]` so that many peers cut off together
/// do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays starting at `initial`, never above `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// Back to `initial`, after a connection that worked.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        jittered(ceiling, rand::rng().random_range(0.5..=1.0))
    }

    /// The un-jittered delay for the current attempt.
    fn ceiling(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// `ceiling` scaled by `factor`, clamped to `[0, 1]` so the result never exceeds `ceiling`.
fn jittered(ceiling: Duration, factor: f64) -> Duration {
    ceiling.mul_f64(factor.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn ceiling_doubles_from_initial_up_to_max() {
        let mut backoff = Backoff::new(INITIAL, MAX);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling());
            backoff.next_delay();
        }
        let ms: Vec<u128> = ceilings.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]);
    }

    #[test]
    fn ceiling_stays_capped_after_very_many_attempts() {
        let mut backoff = Backoff::new(INITIAL, MAX);
        backoff.attempt = u32::MAX - 1;
        for _ in 0..3 {
            assert_eq!(backoff.ceiling(), MAX);
            assert!(backoff.next_delay() <= MAX);
        }
    }

    #[test]
    fn delays_stay_between_half_and_full_ceiling() {
        let mut backoff = Backoff::new(INITIAL, MAX);
        for _ in 0..50 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
            assert!(delay >= ceiling / 2, "{delay:?} < half of {ceiling:?}");
        }
    }

    #[test]
    fn reset_starts_again_from_initial() {
        let mut backoff = Backoff::new(INITIAL, MAX);
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), INITIAL);
    }

    #[test]
    fn jitter_never_exceeds_the_ceiling() {
        assert_eq!(jittered(MAX, 1.0), MAX);
        assert_eq!(jittered(MAX, 7.0), MAX);
        assert_eq!(jittered(MAX, -1.0), Duration::ZERO);
        assert_eq!(jittered(MAX, 0.5), MAX / 2);
    }
}
