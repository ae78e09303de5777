//! `[engine]`, `[batch]`, `[schema]` and `[[windows]]`: what the engine computes, into its
//! [`EngineSpec`] and the reading [`Schema`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::{FieldSpec, Schema, TagSpec, MAX_SENSOR_BYTES};
use serde::Deserialize;

use eddy_common::DAY;

use crate::config::{check_name, invalid, millis, within, ConfigError, MAX_WINDOW, TICK};
use crate::engine::{Aggregate, EngineSpec, TimeDomain, WindowSpec};

/// `[engine]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEngine {
    /// Commit interval of results + state + log position.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// The longest a window result waits for its commit (0 s: committed right after the
    /// chunk whose reading closed its window); unset: the next checkpoint.
    #[serde(with = "humantime_serde")]
    pub result_commit_delay: Option<Duration>,
    /// Idle time after which a sensor's windows are closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Also forward every raw reading (to sinks with `records` including `raw`).
    pub forward_raw: bool,
    /// A reading further ahead of its sensor's predicted clock is held: a humantime duration,
    /// or `off` for no hold.
    pub outlier_after: String,
    /// Consecutive outliers with non-decreasing event times that confirm a sensor's clock
    /// jump (1 to 16).
    pub outlier_confirm: u32,
    /// Most distinct values of a `count_by` tag without `values` counted per window and
    /// sensor; past them readings go to the window's `other` bucket.
    pub count_by_max_values: u64,
    /// A sensor silent this long (processing time) is forgotten: its state deleted, its id
    /// released from the sensor caps. A humantime duration, or `off`.
    pub forget_after: String,
}

impl Default for RawEngine {
    fn default() -> RawEngine {
        RawEngine {
            checkpoint_interval: Duration::from_secs(1),
            result_commit_delay: None,
            idle_timeout: Duration::from_secs(300),
            forward_raw: false,
            outlier_after: "60s".to_owned(),
            outlier_confirm: EngineSpec::DEFAULT_OUTLIER_CONFIRM,
            count_by_max_values: EngineSpec::DEFAULT_COUNT_BY_MAX_VALUES as u64,
            forget_after: "24h".to_owned(),
        }
    }
}

/// `[batch]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBatch {
    /// Micro-batch interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for RawBatch {
    fn default() -> RawBatch {
        RawBatch { interval: Duration::from_secs(2) }
    }
}

/// `[schema]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchema {
    /// Numeric fields.
    pub fields: Vec<RawField>,
    /// String tags.
    #[serde(default)]
    pub tags: Vec<RawTag>,
}

/// One schema field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    /// Key name.
    pub name: String,
    /// Must be present.
    #[serde(default)]
    pub required: bool,
    /// Smallest plausible value.
    #[serde(default = "default_min")]
    pub min: f64,
    /// Largest plausible value.
    #[serde(default = "default_max")]
    pub max: f64,
}

fn default_min() -> f64 {
    -1e12
}
fn default_max() -> f64 {
    1e12
}

/// One schema tag.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTag {
    /// Key name.
    pub name: String,
    /// Must be present.
    #[serde(default)]
    pub required: bool,
    /// Allowed values (empty: any).
    #[serde(default)]
    pub values: Vec<String>,
}

/// One `[[windows]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// Unique name.
    pub name: String,
    /// Window length.
    #[serde(with = "humantime_serde")]
    pub length: Duration,
    /// Slide (default: length, tumbling).
    #[serde(with = "humantime_serde", default)]
    pub slide: Option<Duration>,
    /// `event` or `processing`.
    #[serde(default)]
    pub time: Option<String>,
    /// Allowed lateness.
    #[serde(with = "humantime_serde", default)]
    pub lateness: Option<Duration>,
    /// Fields (default: all).
    #[serde(default)]
    pub fields: Option<Vec<String>>,
    /// Aggregates (default: count, sum, min, max, mean).
    #[serde(default)]
    pub aggregates: Option<Vec<String>>,
    /// Tags counted by value.
    #[serde(default)]
    pub count_by: Vec<String>,
}

/// Validates `[engine]` (but `forward_raw`, checked against the sinks), `[batch]`, `[schema]`
/// and `[[windows]]` of gateway `device_id`.
pub(crate) fn engine_from_raw(
    device_id: &str,
    engine: &RawEngine,
    batch: &RawBatch,
    schema: Option<RawSchema>,
    raw_windows: Vec<RawWindow>,
) -> Result<(Arc<Schema>, EngineSpec), ConfigError> {
    within("engine.checkpoint_interval", engine.checkpoint_interval, TICK, DAY)?;
    if engine.result_commit_delay.is_some_and(|delay| delay >= engine.checkpoint_interval) {
        return Err(invalid(
            "engine.result_commit_delay",
            "must be shorter than engine.checkpoint_interval (every result is committed by the next checkpoint anyway)",
        ));
    }
    within("engine.idle_timeout", engine.idle_timeout, TICK, DAY)?;
    let outlier_after = outlier_after_from_raw(&engine.outlier_after)?;
    if !(1..=EngineSpec::MAX_OUTLIER_CONFIRM).contains(&engine.outlier_confirm) {
        return Err(invalid(
            "engine.outlier_confirm",
            format!("must be 1 to {} (readings held per sensor)", EngineSpec::MAX_OUTLIER_CONFIRM),
        ));
    }
    let count_by_max_values = usize::try_from(engine.count_by_max_values)
        .ok()
        .filter(|max| (1..=EngineSpec::MAX_COUNT_BY_MAX_VALUES).contains(max))
        .ok_or_else(|| {
            invalid(
                "engine.count_by_max_values",
                format!("must be 1 to {}", EngineSpec::MAX_COUNT_BY_MAX_VALUES),
            )
        })?;
    let batch_interval = batch.interval;
    if batch_interval.as_millis() == 0 || Duration::from_millis(millis(batch_interval)) != batch_interval {
        return Err(invalid("batch.interval", "must be a positive whole number of milliseconds"));
    }
    within("batch.interval", batch_interval, TICK, DAY)?;

    let schema = match schema {
        None => Schema::thermostat(),
        Some(raw_schema) => schema_from_raw(raw_schema)?,
    };
    let schema = Arc::new(schema);

    let mut windows = Vec::new();
    let mut window_names = BTreeSet::new();
    for (idx, window) in raw_windows.into_iter().enumerate() {
        let key = format!("windows[{idx}]");
        if window.name == "batch" {
            return Err(invalid(
                format!("{key}.name"),
                "`batch` is reserved (micro-batch result ids use it)",
            ));
        }
        if !window_names.insert(window.name.clone()) {
            return Err(invalid(format!("{key}.name"), format!("`{}` is used twice", window.name)));
        }
        windows.push(window_from_raw(&key, window, &schema)?);
    }
    let forget_after =
        forget_after_from_raw(&engine.forget_after, engine.idle_timeout, batch_interval, &windows)?;
    let spec = EngineSpec {
        device_id: device_id.to_owned(),
        field_names: schema.fields.iter().map(|field| field.name.clone()).collect(),
        tag_names: schema.tags.iter().map(|tag| tag.name.clone()).collect(),
        batch_interval,
        windows,
        idle_timeout: engine.idle_timeout,
        outlier_after,
        outlier_confirm: engine.outlier_confirm,
        count_by_max_values,
        forget_after,
        tag_values_listed: schema.tags.iter().map(|tag| !tag.values.is_empty()).collect(),
    };
    Ok((schema, spec))
}

/// `engine.forget_after`: a whole number of milliseconds, at least `idle_timeout`, the batch
/// interval and the length of every processing-time window (so that nothing of a sensor is
/// open when it is forgotten), or `off` (None).
fn forget_after_from_raw(
    raw: &str,
    idle_timeout: Duration,
    batch_interval: Duration,
    windows: &[WindowSpec],
) -> Result<Option<Duration>, ConfigError> {
    const KEY: &str = "engine.forget_after";
    if raw.trim() == "off" {
        return Ok(None);
    }
    let duration = humantime::parse_duration(raw)
        .map_err(|error| invalid(KEY, format!("`{raw}` is neither a duration nor `off`: {error}")))?;
    if Duration::from_millis(millis(duration)) != duration {
        return Err(invalid(KEY, "must be a whole number of milliseconds"));
    }
    within(KEY, duration, Duration::ZERO, MAX_WINDOW)?;
    let longest_processing_window = windows
        .iter()
        .filter(|window| window.time() == TimeDomain::Processing)
        .map(|window| Duration::from_millis(u64::try_from(window.length_ms()).unwrap_or(u64::MAX)))
        .max()
        .unwrap_or(Duration::ZERO);
    let floor = idle_timeout.max(batch_interval).max(longest_processing_window);
    if duration < floor {
        return Err(invalid(
            KEY,
            format!(
                "must be at least engine.idle_timeout, batch.interval and every processing-time \
                 window's length ({}), so that a sensor's windows are closed before it is forgotten",
                humantime::format_duration(floor)
            ),
        ));
    }
    Ok(Some(duration))
}

/// `engine.outlier_after`: a positive whole number of milliseconds, or `off` (None).
fn outlier_after_from_raw(raw: &str) -> Result<Option<Duration>, ConfigError> {
    const KEY: &str = "engine.outlier_after";
    if raw.trim() == "off" {
        return Ok(None);
    }
    let duration = humantime::parse_duration(raw)
        .map_err(|error| invalid(KEY, format!("`{raw}` is neither a duration nor `off`: {error}")))?;
    if duration.is_zero() {
        return Err(invalid(KEY, "must be greater than zero (`off` turns the hold off)"));
    }
    if Duration::from_millis(millis(duration)) != duration {
        return Err(invalid(KEY, "must be a whole number of milliseconds"));
    }
    within(KEY, duration, TICK, DAY)?;
    Ok(Some(duration))
}

fn schema_from_raw(raw: RawSchema) -> Result<Schema, ConfigError> {
    if raw.fields.is_empty() {
        return Err(invalid("schema.fields", "at least one field is needed"));
    }
    let mut seen = BTreeSet::new();
    // `late` would make a window result id look like a late-reading id.
    let reserved = ["sensor", "ts", "late"];
    let mut fields = Vec::new();
    for (idx, field) in raw.fields.into_iter().enumerate() {
        let key = format!("schema.fields[{idx}]");
        check_name(&format!("{key}.name"), &field.name)?;
        if reserved.contains(&field.name.as_str()) || !seen.insert(field.name.clone()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` is reserved or used twice", field.name),
            ));
        }
        if !(field.min.is_finite() && field.max.is_finite() && field.min <= field.max) {
            return Err(invalid(key, "min and max must be finite numbers with min <= max"));
        }
        fields.push(FieldSpec { name: field.name, required: field.required, min: field.min, max: field.max });
    }
    let mut tags = Vec::new();
    for (idx, tag) in raw.tags.into_iter().enumerate() {
        let key = format!("schema.tags[{idx}]");
        check_name(&format!("{key}.name"), &tag.name)?;
        if reserved.contains(&tag.name.as_str()) || !seen.insert(tag.name.clone()) {
            return Err(invalid(format!("{key}.name"), format!("`{}` is reserved or used twice", tag.name)));
        }
        if tag.values.iter().any(|value| value.is_empty() || value.len() > MAX_SENSOR_BYTES) {
            return Err(invalid(format!("{key}.values"), "values must be 1 to 64 bytes"));
        }
        tags.push(TagSpec { name: tag.name, required: tag.required, values: tag.values });
    }
    Ok(Schema { fields, tags })
}

fn window_from_raw(key: &str, raw: RawWindow, schema: &Schema) -> Result<WindowSpec, ConfigError> {
    let time = match raw.time.as_deref() {
        None | Some("event") => TimeDomain::Event,
        Some("processing") => TimeDomain::Processing,
        Some(other) => {
            return Err(invalid(format!("{key}.time"), format!("`{other}` is not one of: event, processing")))
        }
    };
    let fields = match raw.fields {
        None => (0..schema.fields.len()).collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                schema.field_index(name).ok_or_else(|| {
                    invalid(format!("{key}.fields"), format!("`{name}` is not a field of the schema"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let aggregates = match raw.aggregates {
        None => vec![Aggregate::Count, Aggregate::Sum, Aggregate::Min, Aggregate::Max, Aggregate::Mean],
        Some(names) => names
            .iter()
            .map(|name| {
                Aggregate::from_name(name).ok_or_else(|| {
                    invalid(
                        format!("{key}.aggregates"),
                        format!("`{name}` is not one of: count, sum, min, max, mean, stddev, first, last"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let count_by = raw
        .count_by
        .iter()
        .map(|name| {
            schema.tag_index(name).ok_or_else(|| {
                invalid(format!("{key}.count_by"), format!("`{name}` is not a tag of the schema"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    within(&format!("{key}.length"), raw.length, TICK, MAX_WINDOW)?;
    let slide = within(&format!("{key}.slide"), raw.slide.unwrap_or(raw.length), TICK, MAX_WINDOW)?;
    let lateness = within(
        &format!("{key}.lateness"),
        raw.lateness.unwrap_or(Duration::ZERO),
        Duration::ZERO,
        MAX_WINDOW,
    )?;
    WindowSpec::new(&raw.name, raw.length, slide, time, lateness, fields, aggregates, count_by)
        .map_err(|error| invalid(key, error.to_string()))
}
