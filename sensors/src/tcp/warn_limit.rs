//! A per-second budget for WARN logs about bad input, so a flood cannot flood the journal.
//!
//! A limiter is either private (one source's accept loop) or shared by every holder of its
//! kind (`tcp.rejected_line`): a reconnect loop of a thousand clients, each sending one bad
//! line, still logs about one line per second of that kind, the rest counted and reported as
//! `suppressed` on the next line let through.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Rejected lines of every TCP connection.
pub(crate) const TCP_REJECTED_LINE: &str = "tcp.rejected_line";
/// Refused authentications of every TCP connection.
pub(crate) const TCP_AUTH_FAILED: &str = "tcp.auth_failed";
/// TCP connections closed by a timeout.
pub(crate) const TCP_TIMED_OUT: &str = "tcp.timed_out";
/// Rejected readings of MQTT messages.
pub(crate) const MQTT_REJECTED_READING: &str = "mqtt.rejected_reading";
/// Rejected lines of serial ports.
pub(crate) const SERIAL_REJECTED_LINE: &str = "serial.rejected_line";

/// The shared limiters, by kind.
static KINDS: Mutex<BTreeMap<&'static str, Arc<Mutex<Budget>>>> = Mutex::new(BTreeMap::new());

/// Lets one log line through per interval and counts the events it held back.
#[derive(Debug, Clone)]
pub(crate) struct WarnLimiter {
    budget: Arc<Mutex<Budget>>,
}

#[derive(Debug)]
struct Budget {
    interval: Duration,
    next_allowed: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// At most one log line per second, for this limiter alone.
    pub(crate) fn per_second() -> WarnLimiter {
        let budget = Budget { interval: Duration::from_secs(1), next_allowed: None, suppressed: 0 };
        WarnLimiter { budget: Arc::new(Mutex::new(budget)) }
    }

    /// At most one log line per second for all the limiters of `kind` in the process.
    pub(crate) fn shared(kind: &'static str) -> WarnLimiter {
        let mut kinds = KINDS.lock().expect("never poisoned");
        let budget = kinds.entry(kind).or_insert_with(|| WarnLimiter::per_second().budget);
        WarnLimiter { budget: budget.clone() }
    }

    /// Records one event at `now`. `Some(n)` means "log it now", where `n` events were held
    /// back since the previous log line; `None` means the event was only counted.
    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        let mut budget = self.budget.lock().expect("never poisoned");
        match budget.next_allowed {
            Some(next_allowed) if now < next_allowed => {
                budget.suppressed += 1;
                None
            }
            _ => {
                budget.next_allowed = Some(now + budget.interval);
                Some(std::mem::take(&mut budget.suppressed))
            }
        }
    }

    /// Events held back since the last log line, resetting the count (for a final summary).
    pub(crate) fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.budget.lock().expect("never poisoned").suppressed)
    }
}

/// The warnings of each shared kind held back since they were last reported, resetting the
/// counts: for the daemon's periodic summary, so a burst that ends is still told.
pub fn take_held_back_warnings() -> Vec<(&'static str, u64)> {
    let kinds = KINDS.lock().expect("never poisoned");
    kinds
        .iter()
        .filter_map(|(kind, budget)| {
            let held_back = std::mem::take(&mut budget.lock().expect("never poisoned").suppressed);
            (held_back > 0).then_some((*kind, held_back))
        })
        .collect()
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

    #[test]
    fn limiters_of_one_kind_share_one_budget() {
        let start = Instant::now();
        let kind = "test.shared_budget";
        let mut connections: Vec<WarnLimiter> = (0..100).map(|_| WarnLimiter::shared(kind)).collect();
        let allowed = connections.iter_mut().filter_map(|limiter| limiter.allow(start)).count();
        assert_eq!(allowed, 1);
        assert_eq!(WarnLimiter::shared(kind).allow(start + Duration::from_secs(1)), Some(99));
        assert_eq!(WarnLimiter::shared("test.other_kind").allow(start), Some(0));
    }

    #[test]
    fn held_back_warnings_are_reported_once() {
        let start = Instant::now();
        let mut limiter = WarnLimiter::shared("test.held_back");
        for _ in 0..4 {
            limiter.allow(start);
        }
        let held_back =
            |kinds: Vec<(&'static str, u64)>| kinds.into_iter().find(|(kind, _)| *kind == "test.held_back");
        assert_eq!(held_back(take_held_back_warnings()), Some(("test.held_back", 3)));
        assert_eq!(held_back(take_held_back_warnings()), None);
    }
}
