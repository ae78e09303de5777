//! A per-second budget for WARN logs about bad input, so a flood cannot flood the journal.

use std::time::Duration;

use tokio::time::Instant;

/// Lets one log line through per interval and counts the events it held back.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    interval: Duration,
    next_allowed: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// At most one log line per second.
    pub(crate) fn per_second() -> WarnLimiter {
        WarnLimiter { interval: Duration::from_secs(1), next_allowed: None, suppressed: 0 }
    }

    /// Records one event at `now`. `Some(n)` means "log it now", where `n` events were held
    /// back since the previous log line; `None` means the event was only counted.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.next_allowed {
            Some(next_allowed) if now < next_allowed => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next_allowed = Some(now + self.interval);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// Events held back since the last log line, resetting the count (for a final summary).
    pub(crate) fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_limiter_lets_one_event_per_second_through_and_counts_the_rest() {
        let start = Instant::now();
        let mut limiter = WarnLimiter::per_second();
        assert_eq!(limiter.allow(start), Some(0));
        assert_eq!(limiter.allow(start + Duration::from_millis(10)), None);
        assert_eq!(limiter.allow(start + Duration::from_millis(999)), None);
        assert_eq!(limiter.allow(start + Duration::from_millis(1000)), Some(2));
        assert_eq!(limiter.allow(start + Duration::from_millis(1500)), None);
        assert_eq!(limiter.take_suppressed(), 1);
        assert_eq!(limiter.take_suppressed(), 0);
    }
}
