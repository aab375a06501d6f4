//! The one retry schedule of the consumers.

use std::time::Duration;

use rand::Rng;

use crate::config::ConsumersConfig;

/// Doubling waits from `retry_initial_ms` up to `retry_max_ms`, each with up
/// to `retry_jitter` of itself added at random.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
    next: Duration,
}

impl Backoff {
    pub fn new(cfg: &ConsumersConfig) -> Self {
        let initial = Duration::from_millis(cfg.retry_initial_ms.max(1));
        Self {
            initial,
            max: Duration::from_millis(cfg.retry_max_ms).max(initial),
            jitter: cfg.retry_jitter.clamp(0.0, 1.0),
            next: initial,
        }
    }

    /// The wait before the next attempt; later waits double up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let extra = if self.jitter > 0.0 {
            rand::rng().random_range(0.0..=self.jitter)
        } else {
            0.0
        };
        base.mul_f64(1.0 + extra)
    }

    /// Back to the first wait (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(initial: u64, max: u64, jitter: f64) -> ConsumersConfig {
        ConsumersConfig {
            retry_initial_ms: initial,
            retry_max_ms: max,
            retry_jitter: jitter,
            ..ConsumersConfig::default()
        }
    }

    #[test]
    fn waits_double_up_to_the_cap_without_jitter() {
        let mut b = Backoff::new(&cfg(100, 1_000, 0.0));
        let waits: Vec<u128> = (0..6).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000]);
        b.reset();
        assert_eq!(b.next_wait().as_millis(), 100);
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let mut b = Backoff::new(&cfg(1_000, 1_000, 0.5));
        let waits: Vec<u128> = (0..200).map(|_| b.next_wait().as_millis()).collect();
        assert!(
            waits.iter().all(|w| (1_000..=1_500).contains(w)),
            "{waits:?}"
        );
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 50, "the waits vary: {}", distinct.len());
    }
}
