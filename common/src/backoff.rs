//! Capped exponential backoff with jitter, for components that reconnect (serial and MQTT
//! sources).

use std::time::Duration;

/// Delays between reconnection attempts: `min`, doubled per failure up to `max`, each with
/// ±25 % jitter so that many gateways restarted together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and capped at `max` (before jitter).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff { min, max, next: min }
    }

    /// The delay before the next attempt; doubles the one after it.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // Jitter in [0.75, 1.25) of the base delay.
        base.mul_f64(0.75 + fastrand::f64() / 2.0)
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::backoff::Backoff;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let bases = [100u64, 200, 400, 800, 1000, 1000];
        for base in bases {
            let delay = backoff.next_delay();
            let base = Duration::from_millis(base);
            assert!(delay >= base.mul_f64(0.75) && delay < base.mul_f64(1.25), "{delay:?} for {base:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(125));
    }
}
