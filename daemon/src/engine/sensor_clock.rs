//! Per-sensor clocks: holding a reading far ahead of its sensor's clock so that one wild
//! timestamp cannot move the sensor's event-time watermark, and an estimate of each sensor's
//! clock offset against the processing clock.
//!
//! The rules (the engine module documentation states them for users):
//!
//! - The *reference* of a sensor is its newest applied reading: the largest event time applied
//!   and the ingest time of that reading. A reading ingested at `ingest` is an *outlier* when
//!   `ts > ref_ts + (ingest - ref_ingest) + outlier_after`: the sensor's clock is predicted to
//!   have moved as far as the processing clock did, so a sensor silent for ten minutes that
//!   resumes is not an outlier. A sensor with no reference (its first reading) has none.
//! - An outlier is *held*: kept here, in arrival order, not given to event-time windows.
//! - *Confirmation*: `outlier_confirm` consecutive readings (by arrival) that are all outliers
//!   with non-decreasing event times mean the sensor's clock really moved: the last of them
//!   (ingested now) becomes the reference, and the release rule below applies the held
//!   readings it covers, in arrival order.
//! - *Release*: before and after each reading of the sensor, the held readings whose event
//!   time the sensor's predicted clock (`ref_ts + (ingest - ref_ingest)`, at that reading's
//!   ingest time) has reached are applied, in arrival order. Reached, not merely come within
//!   `outlier_after`: released that early, a reading would still close the sensor's open
//!   windows up to `outlier_after` too soon.
//! - *Bound*: at most `max(outlier_confirm, 4)` readings are held per sensor; one more drops
//!   the oldest held reading, counted: never confirmed, applied it would move the watermark
//!   as far as its wild timestamp went.
//! - *Idle*: when the sensor goes idle (no reading, held or applied, for `idle_timeout`), its
//!   held readings that the predicted clock has reached by then are applied, before its
//!   windows close, in the same step; the others are dropped, counted.
//!
//! Everything is judged at ingest times from the log, never at tick times (ticks are not
//! replayed), so a replay holds and releases exactly what the live run did.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::Reading;

use crate::engine::state::{HeldReadingV1, SensorClockV1};

/// Length of one offset period: the offset estimate is the largest `ts - ingest` of the
/// applied readings of the current and the previous period, so it forgets a corrected clock
/// within 10 to 20 minutes.
const OFFSET_PERIOD_MS: i64 = 600_000;

/// How long a sensor counts as recently seen for [`crate::engine::Engine::sensor_clocks`]:
/// the span its offset estimate covers.
pub(crate) const RECENT_MS: i64 = 2 * OFFSET_PERIOD_MS;

/// Fewest readings a sensor may hold, whatever `outlier_confirm` is.
const MIN_HELD: usize = 4;

/// The hold's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HoldRules {
    /// How far ahead of its predicted clock a reading must be to be held, ms (> 0).
    after_ms: i64,
    /// Consecutive consistent outliers that confirm a clock jump (≥ 1).
    confirm: u32,
    /// Most readings held per sensor.
    max_held: usize,
}

impl HoldRules {
    /// The rules for `outlier_after` (None: no hold) and `outlier_confirm`. There is no hold
    /// either without event-time windows: nothing else has a watermark to protect.
    pub(crate) fn new(after: Option<Duration>, confirm: u32, has_event_windows: bool) -> Option<HoldRules> {
        let after_ms = i64::try_from(after?.as_millis()).unwrap_or(i64::MAX);
        (after_ms > 0 && has_event_windows).then(|| {
            let confirm = confirm.max(1);
            let max_held = usize::try_from(confirm).unwrap_or(usize::MAX).max(MIN_HELD);
            HoldRules { after_ms, confirm, max_held }
        })
    }
}

/// What to do with an arriving reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Apply it now, by the usual rules.
    Apply,
    /// It was held (an outlier).
    Held,
}

/// A held reading and the ingest time it came with.
#[derive(Debug, Clone)]
pub(crate) struct HeldReading {
    pub(crate) ingest_ms: i64,
    pub(crate) reading: Reading,
}

/// One sensor's clock.
#[derive(Debug, Default)]
pub(crate) struct SensorClock {
    /// Event time and ingest time of the newest applied reading.
    reference: Option<(i64, i64)>,
    /// Ingest time of the latest reading, held or applied.
    last_seen_ms: Option<i64>,
    /// Consecutive outliers by arrival with non-decreasing event times.
    streak: u32,
    /// Event time of the last outlier of the streak.
    streak_last_ts_ms: i64,
    /// Held readings in arrival order.
    held: VecDeque<HeldReading>,
    offset: OffsetEstimate,
}

/// The largest `ts - ingest` over the applied readings of two consecutive offset periods.
/// Network and queueing delay only make `ts - ingest` smaller, so the largest value is the
/// reading that waited least: the best bound of the sensor's true offset.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct OffsetEstimate {
    /// The period of `current_ms` (ingest time / [`OFFSET_PERIOD_MS`]).
    period: i64,
    current_ms: Option<i64>,
    previous_ms: Option<i64>,
}

impl OffsetEstimate {
    fn observe(&mut self, ingest_ms: i64, ts_ms: i64) {
        let offset_ms = ts_ms.saturating_sub(ingest_ms);
        let period = ingest_ms.div_euclid(OFFSET_PERIOD_MS);
        let slot = if period > self.period || (self.current_ms.is_none() && self.previous_ms.is_none()) {
            self.previous_ms = if period == self.period.saturating_add(1) { self.current_ms } else { None };
            self.current_ms = None;
            self.period = period;
            &mut self.current_ms
        } else if period == self.period {
            &mut self.current_ms
        } else if period == self.period.saturating_sub(1) {
            // A held reading applied after its period ended.
            &mut self.previous_ms
        } else {
            return;
        };
        *slot = Some(slot.map_or(offset_ms, |max| max.max(offset_ms)));
    }

    fn estimate_ms(&self) -> Option<i64> {
        match (self.current_ms, self.previous_ms) {
            (Some(current), Some(previous)) => Some(current.max(previous)),
            (current, previous) => current.or(previous),
        }
    }
}

impl SensorClock {
    /// Judges an arriving reading ingested at `ingest_ms`; an outlier is held (a clone is
    /// kept), and a confirmed clock jump moves the reference. Call [`SensorClock::next_due`]
    /// before (for readings the elapsed time released) and after.
    pub(crate) fn judge(&mut self, rules: Option<&HoldRules>, ingest_ms: i64, reading: &Reading) -> Verdict {
        self.last_seen_ms = Some(self.last_seen_ms.map_or(ingest_ms, |seen| seen.max(ingest_ms)));
        let Some(rules) = rules else { return Verdict::Apply };
        let Some(limit_ms) = self.limit_ms(rules, ingest_ms) else { return Verdict::Apply };
        if reading.ts_ms <= limit_ms {
            self.streak = 0;
            return Verdict::Apply;
        }
        self.streak =
            if self.streak > 0 && reading.ts_ms >= self.streak_last_ts_ms { self.streak + 1 } else { 1 };
        self.streak_last_ts_ms = reading.ts_ms;
        self.held.push_back(HeldReading { ingest_ms, reading: reading.clone() });
        if self.streak >= rules.confirm {
            // The sensor's clock really moved: the newest of the streak, ingested now, is where
            // it is. The release rule then applies the held readings this covers.
            self.reference = Some((reading.ts_ms, ingest_ms));
            self.streak = 0;
        }
        Verdict::Held
    }

    /// The next held reading due at `ingest_ms`, and whether it is to be dropped (forced out by the
    /// bound: the oldest if more than the bound are held, else the first (in arrival order)
    /// that the sensor's predicted clock has reached. Without rules (the hold was turned off since the reading
    /// was held), every held reading is due.
    pub(crate) fn next_due(
        &mut self,
        rules: Option<&HoldRules>,
        ingest_ms: i64,
    ) -> Option<(HeldReading, bool)> {
        if self.held.is_empty() {
            return None;
        }
        let Some(rules) = rules else { return self.held.pop_front().map(|held| (held, false)) };
        if self.held.len() > rules.max_held {
            return self.held.pop_front().map(|held| (held, true));
        }
        let predicted_ms = self.predicted_ms(ingest_ms)?;
        let idx = self.held.iter().position(|held| held.reading.ts_ms <= predicted_ms)?;
        self.held.remove(idx).map(|held| (held, false))
    }

    /// Takes every held reading, in arrival order (the sensor went idle at `now_ms`), each
    /// with whether the sensor's predicted clock has reached it by then (else it is dropped).
    /// Without rules (the hold was turned off) every one counts as reached.
    pub(crate) fn take_held(&mut self, rules: Option<&HoldRules>, now_ms: i64) -> Vec<(HeldReading, bool)> {
        self.streak = 0;
        let predicted_ms = if rules.is_some() { self.predicted_ms(now_ms) } else { Some(i64::MAX) };
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|held| {
                let reached = predicted_ms.is_some_and(|predicted| held.reading.ts_ms <= predicted);
                (held, reached)
            })
            .collect()
    }

    /// A reading ingested at `ingest_ms` with event time `ts_ms` was applied.
    pub(crate) fn applied(&mut self, ingest_ms: i64, ts_ms: i64) {
        if self.reference.is_none_or(|(reference_ts_ms, _)| ts_ms > reference_ts_ms) {
            self.reference = Some((ts_ms, ingest_ms));
        }
        self.offset.observe(ingest_ms, ts_ms);
    }

    /// Readings held now.
    pub(crate) fn n_held(&self) -> usize {
        self.held.len()
    }

    /// Ingest time of the latest reading, held or applied.
    pub(crate) fn last_seen_ms(&self) -> Option<i64> {
        self.last_seen_ms
    }

    /// The offset estimate, ms (event time minus processing time; positive: the sensor's
    /// clock is ahead), or None before any applied reading.
    pub(crate) fn offset_ms(&self) -> Option<i64> {
        self.offset.estimate_ms()
    }

    /// Where the sensor's clock should be at `ingest_ms`: the reference moved on by the
    /// processing time elapsed since it was ingested.
    fn predicted_ms(&self, ingest_ms: i64) -> Option<i64> {
        let (reference_ts_ms, reference_ingest_ms) = self.reference?;
        let elapsed_ms = ingest_ms.saturating_sub(reference_ingest_ms).max(0);
        Some(reference_ts_ms.saturating_add(elapsed_ms))
    }

    /// The largest event time that is not an outlier at `ingest_ms`.
    fn limit_ms(&self, rules: &HoldRules, ingest_ms: i64) -> Option<i64> {
        Some(self.predicted_ms(ingest_ms)?.saturating_add(rules.after_ms))
    }

    /// The stored form; values and tags by name.
    pub(crate) fn store(&self, field_names: &[Arc<str>], tag_names: &[Arc<str>]) -> SensorClockV1 {
        SensorClockV1 {
            reference: self.reference,
            last_seen_ms: self.last_seen_ms,
            streak: self.streak,
            streak_last_ts_ms: self.streak_last_ts_ms,
            held: self
                .held
                .iter()
                .map(|held| HeldReadingV1 {
                    ingest_ms: held.ingest_ms,
                    ts_ms: held.reading.ts_ms,
                    values: field_names
                        .iter()
                        .zip(&held.reading.values)
                        .filter_map(|(name, value)| value.map(|value| (name.to_string(), value)))
                        .collect(),
                    tags: tag_names
                        .iter()
                        .zip(&held.reading.tags)
                        .filter_map(|(name, value)| {
                            value.as_ref().map(|value| (name.to_string(), value.to_string()))
                        })
                        .collect(),
                })
                .collect(),
            offset_period: self.offset.period,
            offset_current_ms: self.offset.current_ms,
            offset_previous_ms: self.offset.previous_ms,
        }
    }

    /// Rebuilds a stored clock of sensor `sensor`; values and tags no longer in the schema
    /// are dropped.
    pub(crate) fn load(
        stored: SensorClockV1,
        sensor: &Arc<str>,
        field_names: &[Arc<str>],
        tag_names: &[Arc<str>],
    ) -> SensorClock {
        let held = stored
            .held
            .into_iter()
            .map(|held| {
                let mut values: eddy_sensors::Values = smallvec::smallvec![None; field_names.len()];
                for (name, value) in held.values {
                    if let Some(pos) = field_names.iter().position(|field| **field == *name) {
                        values[pos] = Some(value);
                    }
                }
                let mut tags: eddy_sensors::Tags = smallvec::smallvec![None; tag_names.len()];
                for (name, value) in held.tags {
                    if let Some(pos) = tag_names.iter().position(|tag| **tag == *name) {
                        tags[pos] = Some(Arc::from(value));
                    }
                }
                HeldReading {
                    ingest_ms: held.ingest_ms,
                    reading: Reading { sensor: sensor.clone(), ts_ms: held.ts_ms, values, tags },
                }
            })
            .collect();
        SensorClock {
            reference: stored.reference,
            last_seen_ms: stored.last_seen_ms,
            streak: stored.streak,
            streak_last_ts_ms: stored.streak_last_ts_ms,
            held,
            offset: OffsetEstimate {
                period: stored.offset_period,
                current_ms: stored.offset_current_ms,
                previous_ms: stored.offset_previous_ms,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_estimate_is_the_largest_of_this_period_and_the_last_and_forgets_older_ones() {
        let mut offset = OffsetEstimate::default();
        assert_eq!(offset.estimate_ms(), None);
        let base = 10 * OFFSET_PERIOD_MS;
        offset.observe(base + 1000, base + 31_000);
        offset.observe(base + 2000, base + 2500);
        assert_eq!(offset.estimate_ms(), Some(30_000), "delay only lowers ts - ingest");
        offset.observe(base + OFFSET_PERIOD_MS, base + OFFSET_PERIOD_MS + 100);
        assert_eq!(offset.estimate_ms(), Some(30_000), "the previous period still counts");
        offset.observe(base + 2 * OFFSET_PERIOD_MS, base + 2 * OFFSET_PERIOD_MS + 200);
        assert_eq!(offset.estimate_ms(), Some(200), "two periods on, the old offset is gone");
        offset.observe(base + OFFSET_PERIOD_MS + 5, base + OFFSET_PERIOD_MS + 900);
        assert_eq!(offset.estimate_ms(), Some(895), "a late-applied reading counts in its period");
        offset.observe(base + 9 * OFFSET_PERIOD_MS, base + 9 * OFFSET_PERIOD_MS - 50);
        assert_eq!(offset.estimate_ms(), Some(-50), "after a gap nothing older counts");
    }
}
