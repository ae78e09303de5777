//! The processing clock, and the watch over the wall clock.
//!
//! Processing time (the ingest time stamped on each log chunk: micro-batches, processing-time
//! windows, idle closes, the outbox `ttl`) runs on `CLOCK_BOOTTIME`, which no `date -s`, NTP
//! step or wrong RTC moves, and which counts a suspended board. It is anchored to the wall
//! clock once, at start:
//!
//! - a new store starts at the wall clock, whatever it says;
//! - a store that has run before continues from the processing time it stored, except that a
//!   *trusted* wall clock ahead of it wins (the downtime is then counted). An untrusted clock,
//!   or a trusted one that went backwards, is not followed.
//!
//! While eddy runs the processing clock never jumps: a wall-clock step in either direction is
//! detected here (the wall clock and `CLOCK_BOOTTIME` disagree about the time elapsed), logged
//! once with its size and counted (`eddy_clock_jumps_total`), and changes nothing. When the
//! wall clock becomes trusted while the processing clock is behind it (a gateway that started
//! at 1970), the difference is reported (`/status` `clock.processing_behind_ms`); the labels
//! of processing-time results catch up at the next start.

use std::sync::atomic::Ordering;

use eddy_common::{boottime_ms, wall_clock_ms, GatewayClock};

use crate::stats::{rfc3339_ms, ClockStats, JUMP_THRESHOLD_MS};

/// Processing time in ms since the epoch: monotonic, never jumping while eddy runs.
#[derive(Debug)]
pub(crate) struct ProcessingClock {
    /// Processing time at `base_boot_ms`.
    base_ms: i64,
    /// `CLOCK_BOOTTIME` when the clock was anchored.
    base_boot_ms: i64,
    /// The last time read (never goes back).
    last_ms: i64,
}

/// How a processing clock was anchored at start, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// A new store: the wall clock.
    NewStore,
    /// The trusted wall clock, ahead of the stored processing time by `downtime_ms`.
    TrustedWall { downtime_ms: i64 },
    /// The stored processing time (the wall clock is not trusted, or behind it).
    Stored,
}

impl ProcessingClock {
    /// Anchors the clock: `stored_ms` is the processing time the store holds (0: a new store),
    /// `wall_ms` the wall clock now and `trusted` whether it is believed.
    pub(crate) fn anchored(stored_ms: i64, wall_ms: i64, trusted: bool) -> (ProcessingClock, Anchor) {
        let (start_ms, anchor) = if stored_ms <= 0 {
            (wall_ms, Anchor::NewStore)
        } else if trusted && wall_ms > stored_ms {
            (wall_ms, Anchor::TrustedWall { downtime_ms: wall_ms - stored_ms })
        } else {
            (stored_ms, Anchor::Stored)
        };
        (ProcessingClock::starting_at(start_ms), anchor)
    }

    /// A clock reading `start_ms` now.
    pub(crate) fn starting_at(start_ms: i64) -> ProcessingClock {
        ProcessingClock { base_ms: start_ms, base_boot_ms: boottime_ms(), last_ms: start_ms }
    }

    /// The current processing time, ms.
    pub(crate) fn now_ms(&mut self) -> i64 {
        let elapsed = boottime_ms().saturating_sub(self.base_boot_ms).max(0);
        self.last_ms = self.last_ms.max(self.base_ms.saturating_add(elapsed));
        self.last_ms
    }
}

/// Watches the wall clock from the ingest task's tick: refreshes whether it is trusted,
/// detects jumps, and logs each change once.
#[derive(Debug)]
pub(crate) struct ClockWatch {
    clock: GatewayClock,
    stats: std::sync::Arc<ClockStats>,
    last_wall_ms: i64,
    last_boot_ms: i64,
    trusted: Option<bool>,
}

impl ClockWatch {
    /// A watch over `clock`, reporting into `stats`.
    pub(crate) fn new(clock: GatewayClock, stats: std::sync::Arc<ClockStats>) -> ClockWatch {
        let mut watch = ClockWatch {
            clock,
            stats,
            last_wall_ms: wall_clock_ms(),
            last_boot_ms: boottime_ms(),
            trusted: None,
        };
        watch.check(None);
        watch
    }

    /// Samples the clocks; `processing_ms` is the processing clock now (for `/status`).
    pub(crate) fn check(&mut self, processing_ms: Option<i64>) {
        let (wall_ms, boot_ms) = (wall_clock_ms(), boottime_ms());
        let step_ms = (wall_ms - self.last_wall_ms) - (boot_ms - self.last_boot_ms);
        (self.last_wall_ms, self.last_boot_ms) = (wall_ms, boot_ms);
        if step_ms.abs() > JUMP_THRESHOLD_MS {
            self.stats.jumps.fetch_add(1, Ordering::Relaxed);
            self.stats.last_jump_ms.store(step_ms, Ordering::Relaxed);
            tracing::warn!(
                jump_ms = step_ms,
                jump = %signed_duration(step_ms),
                now = %rfc3339_ms(wall_ms),
                "Wall clock jumped; processing time keeps its pace and nothing stored changes."
            );
        }
        if let Some(processing_ms) = processing_ms {
            self.stats.processing_ms.store(processing_ms, Ordering::Relaxed);
        }
        let trusted = self.clock.refresh();
        if self.trusted == Some(trusted) {
            return;
        }
        self.trusted = Some(trusted);
        if trusted {
            self.stats.set_synchronized(true, boot_ms, wall_ms);
            let behind = processing_ms.map_or(0, |processing| wall_ms - processing);
            if behind > JUMP_THRESHOLD_MS {
                tracing::warn!(
                    now = %rfc3339_ms(wall_ms),
                    processing_behind = %signed_duration(behind),
                    "Wall clock synchronised; future timestamps are judged by it again. Processing time stays \
                     monotonic: labels of micro-batches and processing-time windows catch up at the next start."
                );
            } else {
                tracing::info!(now = %rfc3339_ms(wall_ms), "Wall clock synchronised; future timestamps are judged by it.");
            }
        } else {
            self.stats.set_synchronized(false, boot_ms, wall_ms);
            let reason = self.clock.distrust_reason().unwrap_or_default();
            tracing::warn!(
                now = %rfc3339_ms(wall_ms),
                %reason,
                "Wall clock not synchronised: no reading is refused for being ahead of it; each sensor's \
                 readings are judged against that sensor's own clock."
            );
        }
    }
}

/// `ms` as a signed human duration (`+20y 1d`, `-3s`).
fn signed_duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "+" };
    let magnitude = std::time::Duration::from_millis(ms.unsigned_abs());
    format!("{sign}{}", humantime::format_duration(std::time::Duration::from_secs(magnitude.as_secs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_starts_at_the_wall_clock_whatever_it_says() {
        let (mut clock, anchor) = ProcessingClock::anchored(0, 1_000, false);
        assert_eq!(anchor, Anchor::NewStore);
        assert!((1_000..1_500).contains(&clock.now_ms()));
    }

    #[test]
    fn a_trusted_clock_ahead_of_the_store_counts_the_downtime() {
        let (mut clock, anchor) = ProcessingClock::anchored(5_000, 65_000, true);
        assert_eq!(anchor, Anchor::TrustedWall { downtime_ms: 60_000 });
        assert!(clock.now_ms() >= 65_000);
    }

    #[test]
    fn an_untrusted_or_backward_clock_is_not_followed_at_start() {
        // Booted at 1970 (untrusted): continue from the store.
        let (mut clock, anchor) = ProcessingClock::anchored(1_700_000_000_000, 1_000, false);
        assert_eq!(anchor, Anchor::Stored);
        assert!((1_700_000_000_000..1_700_000_000_500).contains(&clock.now_ms()));
        // Leapt 20 years ahead but untrusted: not followed either.
        let (_, anchor) = ProcessingClock::anchored(1_700_000_000_000, 2_330_000_000_000, false);
        assert_eq!(anchor, Anchor::Stored);
        // Trusted but behind the store (the store was written during a forward glitch).
        let (_, anchor) = ProcessingClock::anchored(2_330_000_000_000, 1_700_000_000_000, true);
        assert_eq!(anchor, Anchor::Stored);
    }

    #[test]
    fn the_processing_clock_keeps_real_pace_and_never_goes_back() {
        let mut clock = ProcessingClock::starting_at(10_000);
        let first = clock.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let second = clock.now_ms();
        assert!((45..1_000).contains(&(second - first)), "{first} -> {second}");
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_ms(2_082_758_400_000), "2036-01-01T00:00:00.000Z");
        assert_eq!(signed_duration(-3_000), "-3s");
    }

    #[test]
    fn the_watch_reports_an_untrusted_clock_with_its_reason() {
        let stats = std::sync::Arc::new(ClockStats::default());
        let clock = GatewayClock::with_floor(eddy_common::ClockTrust::Always, None, i64::MAX);
        let mut watch = ClockWatch::new(clock.clone(), stats.clone());
        watch.check(Some(42));
        let snapshot = stats.snapshot();
        assert!(!snapshot.synchronized);
        assert_eq!(snapshot.processing_ms, 42);
        assert!(snapshot.unsynchronized_since_ms.is_some());
        let warning = stats.warning(&clock).unwrap();
        assert!(warning.starts_with("clock not synchronised since "), "{warning}");
        assert!(warning.contains("earlier than this eddy was built"), "{warning}");
        assert_eq!(snapshot.jumps, 0);
    }
}
