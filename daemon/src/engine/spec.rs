//! What the engine computes: micro-batch and window specifications, checked on construction.

use std::time::Duration;

/// An aggregate a window can compute per sensor and field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Aggregate {
    /// Number of readings.
    Count,
    /// Sum of values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Arithmetic mean.
    Mean,
    /// Sample standard deviation (null for fewer than two readings), as Spark's `stddev`.
    Stddev,
    /// Value of the reading with the smallest event time (first in arrival order on ties).
    First,
    /// Value of the reading with the largest event time (last in arrival order on ties).
    Last,
}

impl Aggregate {
    /// Every aggregate, in output order.
    pub const ALL: [Aggregate; 8] = [
        Aggregate::Count,
        Aggregate::Sum,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Mean,
        Aggregate::Stddev,
        Aggregate::First,
        Aggregate::Last,
    ];

    /// The config and JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Mean => "mean",
            Aggregate::Stddev => "stddev",
            Aggregate::First => "first",
            Aggregate::Last => "last",
        }
    }

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<Aggregate> {
        Aggregate::ALL.into_iter().find(|aggregate| aggregate.as_str() == name)
    }
}

/// Which clock assigns readings to windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDomain {
    /// The reading's own timestamp, with a per-sensor watermark.
    Event,
    /// The gateway's ingest time of the reading (stored with it in the log).
    Processing,
}

/// Why a window specification is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Length or slide is zero or not a whole number of milliseconds.
    #[error("{what} must be a positive whole number of milliseconds")]
    BadDuration {
        /// `length` or `slide`.
        what: &'static str,
    },
    /// The slide is longer than the window: some readings would fall in no window.
    #[error("slide ({slide_ms} ms) must not exceed length ({length_ms} ms)")]
    SlideLongerThanLength {
        /// Slide in ms.
        slide_ms: u64,
        /// Length in ms.
        length_ms: u64,
    },
    /// Too many overlapping windows per reading.
    #[error("length / slide is {ratio}; at most {max} overlapping windows per reading are allowed")]
    TooManyOverlapping {
        /// length / slide, rounded up.
        ratio: u64,
        /// The maximum allowed.
        max: u64,
    },
    /// No aggregate and no count_by.
    #[error("a window needs at least one aggregate or a count_by tag")]
    NothingToCompute,
    /// The name is empty, too long or contains `/`.
    #[error("window name must be 1 to 64 characters of [A-Za-z0-9_.-]")]
    BadName,
}

/// Most overlapping windows one reading may fall in (length / slide).
pub const MAX_OVERLAP: u64 = 1000;

/// One `[[windows]]` entry, validated. Windows are `[k·slide, k·slide + length)`, epoch-aligned.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    name: String,
    length_ms: i64,
    slide_ms: i64,
    time: TimeDomain,
    lateness_ms: i64,
    fields: Vec<usize>,
    aggregates: Vec<Aggregate>,
    count_by: Vec<usize>,
}

impl WindowSpec {
    /// Checks and builds a window specification. `fields` and `count_by` are schema indexes
    /// (of fields and tags respectively); `aggregates` are deduplicated and put in output order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        length: Duration,
        slide: Duration,
        time: TimeDomain,
        lateness: Duration,
        fields: Vec<usize>,
        aggregates: Vec<Aggregate>,
        count_by: Vec<usize>,
    ) -> Result<WindowSpec, SpecError> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !name_ok {
            return Err(SpecError::BadName);
        }
        let length_ms = whole_ms(length).ok_or(SpecError::BadDuration { what: "length" })?;
        let slide_ms = whole_ms(slide).ok_or(SpecError::BadDuration { what: "slide" })?;
        if slide_ms > length_ms {
            return Err(SpecError::SlideLongerThanLength { slide_ms, length_ms });
        }
        let ratio = length_ms.div_ceil(slide_ms);
        if ratio > MAX_OVERLAP {
            return Err(SpecError::TooManyOverlapping { ratio, max: MAX_OVERLAP });
        }
        let lateness_ms = i64::try_from(lateness.as_millis()).unwrap_or(i64::MAX);
        let mut aggregates = aggregates;
        aggregates.sort();
        aggregates.dedup();
        if aggregates.is_empty() && count_by.is_empty() {
            return Err(SpecError::NothingToCompute);
        }
        Ok(WindowSpec {
            name: name.to_owned(),
            length_ms: i64::try_from(length_ms).map_err(|_| SpecError::BadDuration { what: "length" })?,
            slide_ms: i64::try_from(slide_ms).map_err(|_| SpecError::BadDuration { what: "slide" })?,
            time,
            lateness_ms,
            fields,
            aggregates,
            count_by,
        })
    }

    /// The window's name (part of every result id).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Window length in ms.
    pub fn length_ms(&self) -> i64 {
        self.length_ms
    }
    /// Slide in ms (equal to the length for tumbling windows).
    pub fn slide_ms(&self) -> i64 {
        self.slide_ms
    }
    /// Event or processing time.
    pub fn time(&self) -> TimeDomain {
        self.time
    }
    /// Allowed lateness in ms: the watermark is the largest event time seen minus this.
    pub fn lateness_ms(&self) -> i64 {
        self.lateness_ms
    }
    /// Schema field indexes aggregated.
    pub fn fields(&self) -> &[usize] {
        &self.fields
    }
    /// Aggregates computed, in output order.
    pub fn aggregates(&self) -> &[Aggregate] {
        &self.aggregates
    }
    /// Schema tag indexes counted by value (countByValueAndWindow).
    pub fn count_by(&self) -> &[usize] {
        &self.count_by
    }
}

fn whole_ms(duration: Duration) -> Option<u64> {
    let ms = u64::try_from(duration.as_millis()).ok()?;
    (ms > 0 && Duration::from_millis(ms) == duration).then_some(ms)
}

/// Everything the engine needs to know, fixed at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSpec {
    /// The gateway's id, first part of every result id.
    pub device_id: String,
    /// Schema field names, indexed like `Reading::values`.
    pub field_names: Vec<String>,
    /// Schema tag names, indexed like `Reading::tags`.
    pub tag_names: Vec<String>,
    /// Micro-batch interval (processing time). Batch `n` covers ingest times
    /// `[n·interval, (n+1)·interval)`.
    pub batch_interval: Duration,
    /// The configured windows.
    pub windows: Vec<WindowSpec>,
    /// An event-time sensor with no reading for this long (processing time) has its open
    /// windows closed and emitted.
    pub idle_timeout: Duration,
    /// A reading whose event time is further ahead of its sensor's predicted clock is held
    /// (see the engine module documentation); `None` turns the hold off.
    pub outlier_after: Option<Duration>,
    /// Consecutive outliers with non-decreasing event times that confirm a sensor's clock
    /// jump (at least 1).
    pub outlier_confirm: u32,
    /// Most distinct values a window counts, per sensor, window and `count_by` tag, for a tag
    /// whose schema lists no `values`; readings with a value past them are counted in the
    /// window's `other` bucket (issue #14).
    pub count_by_max_values: usize,
    /// Per schema tag (indexed like `tag_names`; missing: false), whether the schema lists
    /// its allowed `values`: the parser refuses any other, so its counts need no cap.
    pub tag_values_listed: Vec<bool>,
    /// A sensor with no reading for this long (processing time) is forgotten: its state is
    /// deleted and its id released (see the engine module documentation); `None`: never. At
    /// least `idle_timeout`, the batch interval and every processing-time window's length, so
    /// that nothing of the sensor is open by then.
    pub forget_after: Option<Duration>,
}

impl EngineSpec {
    /// The default of [`EngineSpec::outlier_after`].
    pub const DEFAULT_OUTLIER_AFTER: Duration = Duration::from_secs(60);
    /// The default of [`EngineSpec::outlier_confirm`].
    pub const DEFAULT_OUTLIER_CONFIRM: u32 = 3;
    /// The largest [`EngineSpec::outlier_confirm`] accepted: it bounds the readings a sensor
    /// holds.
    pub const MAX_OUTLIER_CONFIRM: u32 = 16;
    /// The default of [`EngineSpec::count_by_max_values`].
    pub const DEFAULT_COUNT_BY_MAX_VALUES: usize = 64;
    /// The default of [`EngineSpec::forget_after`].
    pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
    /// The largest [`EngineSpec::count_by_max_values`] accepted.
    pub const MAX_COUNT_BY_MAX_VALUES: usize = 10_000;
}
