//! Running aggregates of one field over one window or micro-batch: count, sum, min, max,
//! Welford's mean and variance, and first and last value by event time.

use crate::engine::record::FieldStats;
use crate::engine::state::AccParts;

/// The running state behind every [`crate::engine::Aggregate`]. The count, sum, minimum and
/// maximum are always kept (an add or a compare each); Welford's mean and variance and the
/// first and last value only when the configured aggregates read them ([`FieldAcc::add_for`]),
/// as only those parts are stored ([`crate::engine::state::AccV2`]) and reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FieldAcc {
    /// Number of values added.
    pub(crate) count: u64,
    /// `count` as a float, kept beside it so the mean never needs a lossy integer cast.
    pub(crate) n: f64,
    pub(crate) sum: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// Welford's running mean (used only for the variance; the reported mean is `sum / n`, as
    /// Spark's `avg`).
    pub(crate) mean: f64,
    /// Welford's sum of squared deviations from the mean.
    pub(crate) m2: f64,
    pub(crate) first_ts: i64,
    pub(crate) first: f64,
    pub(crate) last_ts: i64,
    pub(crate) last: f64,
}

impl FieldAcc {
    /// No values yet.
    pub(crate) const EMPTY: FieldAcc = FieldAcc {
        count: 0,
        n: 0.0,
        sum: 0.0,
        min: f64::INFINITY,
        max: f64::NEG_INFINITY,
        mean: 0.0,
        m2: 0.0,
        first_ts: i64::MAX,
        first: 0.0,
        last_ts: i64::MIN,
        last: 0.0,
    };

    /// Adds the value of a reading with event time `ts_ms`, keeping every part.
    #[cfg(test)]
    pub(crate) fn add(&mut self, ts_ms: i64, value: f64) {
        self.add_for(ts_ms, value, AccParts::ALL);
    }

    /// Adds the value of a reading with event time `ts_ms`, keeping the parts `parts` names
    /// besides the count, sum, minimum and maximum: Welford's update (a division per value,
    /// window and field) only for a standard deviation, the first and last value only when
    /// one of them is reported. Readings arrive in arrival order, so a strict `<` keeps the
    /// earliest arrival as `first` on ties and `>=` the latest as `last`.
    #[inline]
    pub(crate) fn add_for(&mut self, ts_ms: i64, value: f64, parts: AccParts) {
        self.count += 1;
        self.n += 1.0;
        self.sum += value;
        if value < self.min {
            self.min = value;
        }
        if value > self.max {
            self.max = value;
        }
        if parts.welford() {
            let delta = value - self.mean;
            self.mean += delta / self.n;
            self.m2 += delta * (value - self.mean);
        }
        if parts.first_or_last() {
            if ts_ms < self.first_ts {
                self.first_ts = ts_ms;
                self.first = value;
            }
            if ts_ms >= self.last_ts {
                self.last_ts = ts_ms;
                self.last = value;
            }
        }
    }

    /// The reportable aggregates; `None` when no value was added.
    pub(crate) fn stats(&self) -> Option<FieldStats> {
        if self.count == 0 {
            return None;
        }
        let stddev = (self.count >= 2).then(|| (self.m2.max(0.0) / (self.n - 1.0)).sqrt());
        Some(FieldStats {
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            mean: self.sum / self.n,
            stddev,
            first: self.first,
            last: self.last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::AccV2;
    use crate::engine::Aggregate;

    fn check(values: &[(i64, f64)], expected: Option<FieldStats>) {
        let mut acc = FieldAcc::EMPTY;
        for &(ts_ms, value) in values {
            acc.add(ts_ms, value);
        }
        let stats = acc.stats();
        match (stats, expected) {
            (Some(got), Some(want)) => {
                assert_eq!(
                    (got.count, got.sum, got.min, got.max),
                    (want.count, want.sum, want.min, want.max)
                );
                assert!((got.mean - want.mean).abs() < 1e-12, "{got:?} vs {want:?}");
                match (got.stddev, want.stddev) {
                    (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "{got:?} vs {want:?}"),
                    (a, b) => assert_eq!(a, b),
                }
                assert_eq!((got.first, got.last), (want.first, want.last));
            }
            (got, want) => assert_eq!(got, want),
        }
    }

    #[test]
    fn empty_accumulator_reports_nothing() {
        check(&[], None);
    }

    #[test]
    fn single_value_has_no_stddev() {
        let stats = FieldStats {
            count: 1,
            sum: 5.0,
            min: 5.0,
            max: 5.0,
            mean: 5.0,
            stddev: None,
            first: 5.0,
            last: 5.0,
        };
        check(&[(10, 5.0)], Some(stats));
    }

    #[test]
    fn stddev_is_the_sample_deviation() {
        // Values 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sum of squares 32, sample variance 32 / 7.
        let values: Vec<(i64, f64)> = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (i64::try_from(i).unwrap(), *v))
            .collect();
        let stats = FieldStats {
            count: 8,
            sum: 40.0,
            min: 2.0,
            max: 9.0,
            mean: 5.0,
            stddev: Some((32.0f64 / 7.0).sqrt()),
            first: 2.0,
            last: 9.0,
        };
        check(&values, Some(stats));
    }

    #[test]
    fn an_add_keeps_the_parts_its_aggregates_read_and_reports_them_alike() {
        let values = [(20, 1.5), (10, -2.0), (30, 7.25), (25, 3.0)];
        let mut full = FieldAcc::EMPTY;
        let mut mean_only = FieldAcc::EMPTY;
        let parts =
            AccParts::for_aggregates(&[Aggregate::Count, Aggregate::Mean, Aggregate::Min, Aggregate::Max]);
        for (ts_ms, value) in values {
            full.add(ts_ms, value);
            mean_only.add_for(ts_ms, value, parts);
        }
        let (full_stats, mean_stats) = (full.stats().unwrap(), mean_only.stats().unwrap());
        assert_eq!(
            (mean_stats.count, mean_stats.sum, mean_stats.min, mean_stats.max, mean_stats.mean),
            (full_stats.count, full_stats.sum, full_stats.min, full_stats.max, full_stats.mean)
        );
        // What no configured aggregate reads was not computed: Welford's sums and the first
        // and last value stay empty (they are not stored either).
        assert_eq!((mean_only.mean, mean_only.m2), (FieldAcc::EMPTY.mean, FieldAcc::EMPTY.m2));
        assert_eq!(
            (mean_only.first_ts, mean_only.last_ts),
            (FieldAcc::EMPTY.first_ts, FieldAcc::EMPTY.last_ts)
        );
        // And what it stores is what the full accumulator stores for these aggregates.
        assert_eq!(AccV2::store(&mean_only, parts), AccV2::store(&full, parts));

        let stddev = AccParts::for_aggregates(&[Aggregate::Stddev, Aggregate::First, Aggregate::Last]);
        let mut spread = FieldAcc::EMPTY;
        for (ts_ms, value) in values {
            spread.add_for(ts_ms, value, stddev);
        }
        assert_eq!(spread.stats(), full.stats());
    }

    #[test]
    fn first_and_last_follow_event_time_with_arrival_order_on_ties() {
        let values = [(20, 1.0), (10, 2.0), (10, 3.0), (30, 4.0), (30, 5.0), (25, 6.0)];
        let mut acc = FieldAcc::EMPTY;
        for (ts_ms, value) in values {
            acc.add(ts_ms, value);
        }
        let stats = acc.stats().unwrap();
        assert_eq!((stats.first, stats.last), (2.0, 5.0));
    }
}
