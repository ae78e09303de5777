//! Downsampling: merges outbox records into coarser ones, per sensor, field and time bucket; a
//! pure function of the records and the window shapes (the store decides when and which).
//!
//! # What is merged, and how
//! Records are grouped by (type, window name or `batch` or `raw`, device, sensor, field or tag,
//! bucket), the bucket being `floor(start / resolution) · resolution`. A group of two or more
//! records becomes one record of the same `type` and keys, with `start`/`end` the bucket and:
//!
//! - `count`, `sum`: added (counts are integers, exact; sums are f64 added in the records'
//!   outbox order, so the hour's sum equals the sum of its parts up to f64 rounding, ~1e-15
//!   relative); `min`, `max`: of the parts; `mean = sum / count` (when the parts carry no `sum`,
//!   the count-weighted mean of their means); `stddev` by the parallel (Chan) formula from each
//!   part's count, mean and stddev; `first` of the earliest part, `last` of the latest.
//! - An aggregate appears only if every part carries it with a value, and the ones derived from
//!   others only when those are there too: `mean` needs `count`, `stddev` needs `count` and
//!   `mean` or `sum`. What the parts cannot give exactly is left out, never estimated.
//! - `window_counts`: counts summed per value, `other` summed.
//! - `raw` readings: each field of a reading counts as one value at its `ts`; they become
//!   `raw` records per field with count, sum, min, max, mean, stddev, first and last, and
//!   `"downsampled": true` (tags of raw readings are not kept; `count_by` windows count them).
//! - `late` records are never merged: they stay as they are (the store drops them last).
//!
//! Every merged record carries `"downsampled": true`, `"resolution"` (the bucket in ms),
//! `"merged"` (the number of original records inside, summed through levels), and
//! `"covered_start"`/`"covered_end"` (the earliest start and latest end of its parts; for raw
//! readings `ts` and `ts + 1`). Its id is the parts' id prefix (their id without the start, or
//! for raw readings `device/raw/sensor` plus the field) followed by
//! `/ds/<resolution>/<covered_start>-<covered_end>/<merged>`: a replay of the same merge gives
//! the same id, and two rounds that merge disjoint parts of one hour give different ones.
//!
//! # Which records can be merged into a bucket
//! A record of span `s` (its `end - start`, or `resolution` for a merged one) merges into
//! buckets of `resolution` when `s <= resolution` and `resolution` is a multiple of `s`
//! (windows are epoch-aligned, so it then lies inside one bucket). Sliding windows (length `L`,
//! slide `S < L`) overlap: only the tiling subset (start a multiple of `L`, which exists when
//! `L` is a multiple of `S`) is merged, the others are redundant (every reading they hold is in
//! a tiling window) and are dropped, counted. A sliding window whose length is not a multiple
//! of its slide, a window too long for the bucket, an unparsable record: kept as they are.
//! A group of one record is kept as it is too (merging it would save nothing).

use std::collections::{BTreeMap, HashMap};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::record::format_utc_ms;
use crate::engine::{Aggregate, EngineSpec};

/// The shape of one configured window: what the merger needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowShape {
    /// The window's name, as in its records.
    pub name: String,
    /// Length in ms.
    pub length_ms: i64,
    /// Slide in ms (equal to the length for tumbling windows).
    pub slide_ms: i64,
}

/// The window shapes of the running configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shapes {
    /// The configured windows.
    pub windows: Vec<WindowShape>,
}

impl Shapes {
    /// The shapes of `spec`'s windows.
    pub fn from_spec(spec: &EngineSpec) -> Shapes {
        Shapes {
            windows: spec
                .windows
                .iter()
                .map(|window| WindowShape {
                    name: window.name().to_owned(),
                    length_ms: window.length_ms(),
                    slide_ms: window.slide_ms(),
                })
                .collect(),
        }
    }

    fn window(&self, name: &str) -> Option<&WindowShape> {
        self.windows.iter().find(|window| window.name == name)
    }
}

/// One record to merge: its outbox kind and JSON payload.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    /// The outbox kind (`window`, `batch`, `late`, `raw`).
    pub kind: &'a str,
    /// The JSON record.
    pub payload: &'a [u8],
}

/// One entry of a merge's result, in outbox order.
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    /// The input record at this index, unchanged.
    Kept(usize),
    /// A new, merged record.
    New {
        /// The outbox kind (the parts' kind).
        kind: String,
        /// Display heading for the console.
        group: String,
        /// The JSON record.
        payload: Vec<u8>,
        /// Its bucket's start (its `start`), ms since the epoch.
        bucket_start: i64,
    },
}

/// What a merge produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeOutcome {
    /// The resulting entries, ordered by the position of their first part.
    pub entries: Vec<Merged>,
    /// Input records that went into new records.
    pub n_merged: u64,
    /// New records written.
    pub n_written: u64,
    /// Input records dropped as redundant (non-tiling sliding windows).
    pub n_redundant: u64,
}

/// Merges `parts` (consecutive outbox records, in seq order) into buckets of `resolution_ms`.
pub fn merge(parts: &[Part<'_>], shapes: &Shapes, resolution_ms: i64) -> MergeOutcome {
    let mut outcome = MergeOutcome::default();
    if resolution_ms <= 0 {
        outcome.entries = (0..parts.len()).map(Merged::Kept).collect();
        return outcome;
    }
    // Output slots by the position of their first part; groups by key.
    let mut slots: Vec<(usize, Slot)> = Vec::new();
    let mut groups: HashMap<GroupKey, usize> = HashMap::new();
    for (part_idx, part) in parts.iter().enumerate() {
        match classify(part, shapes, resolution_ms) {
            Class::Keep => slots.push((part_idx, Slot::Kept(part_idx))),
            Class::Redundant => outcome.n_redundant += 1,
            Class::Merge(pieces) => {
                for piece in pieces {
                    match groups.get(&piece.key) {
                        Some(&slot_idx) => {
                            if let Slot::Group(group) = &mut slots[slot_idx].1 {
                                group.add(piece, part_idx);
                            }
                        }
                        None => {
                            groups.insert(piece.key.clone(), slots.len());
                            slots.push((part_idx, Slot::Group(Box::new(Group::new(piece, part_idx)))));
                        }
                    }
                }
            }
        }
    }
    // A record whose groups all stay single is kept as it is; a raw reading is split by
    // field, so it is merged whenever any of its fields is (all of them, or it would count
    // twice).
    let mut consumed = vec![false; parts.len()];
    for (_, slot) in &slots {
        if let Slot::Group(group) = slot {
            if group.parts.len() > 1 || group.split {
                for &part_idx in &group.parts {
                    consumed[part_idx] = true;
                }
            }
        }
    }
    for (first_idx, slot) in slots {
        match slot {
            Slot::Kept(part_idx) => outcome.entries.push(Merged::Kept(part_idx)),
            Slot::Group(group) => {
                if !consumed[first_idx] {
                    outcome.entries.push(Merged::Kept(first_idx));
                } else {
                    outcome.n_written += 1;
                    outcome.entries.push((*group).into_entry(resolution_ms));
                }
            }
        }
    }
    outcome.n_merged =
        u64::try_from(consumed.iter().filter(|&&consumed| consumed).count()).unwrap_or(u64::MAX);
    outcome
}

/// How one record takes part in a merge.
enum Class {
    Keep,
    Redundant,
    /// Its pieces (one per field for a raw reading, else one).
    Merge(Vec<Piece>),
}

enum Slot {
    Kept(usize),
    Group(Box<Group>),
}

/// What groups records: equal keys merge.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    record_type: RecordType,
    /// The window name, `batch` or `raw`.
    window: String,
    device: String,
    sensor: String,
    /// Field or tag.
    field: String,
    bucket: i64,
    /// The aggregates the record shows: records of one window written under different
    /// configurations merge apart, so that none loses what the others lack.
    shown: Vec<Aggregate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RecordType {
    Window,
    WindowCounts,
    Batch,
    Raw,
}

impl RecordType {
    fn as_str(self) -> &'static str {
        match self {
            RecordType::Window => "window",
            RecordType::WindowCounts => "window_counts",
            RecordType::Batch => "batch",
            RecordType::Raw => "raw",
        }
    }
}

/// The aggregates one part carries (`None`: absent or null).
#[derive(Debug, Clone, Default)]
struct Stats {
    count: Option<u64>,
    sum: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    /// `Some(None)`: present and null (fewer than two values).
    stddev: Option<Option<f64>>,
    first: Option<f64>,
    last: Option<f64>,
}

/// One record (or one field of a raw reading) to merge.
struct Piece {
    key: GroupKey,
    kind: String,
    id_prefix: String,
    /// A raw reading's field: all of the reading's pieces merge, or none.
    split: bool,
    /// A batch record's batch number.
    batch: Option<u64>,
    merged: u64,
    covered_start: i64,
    covered_end: i64,
    stats: Stats,
    counts: Option<BTreeMap<String, u64>>,
    other: u64,
}

/// The running merge of one group.
struct Group {
    key: GroupKey,
    kind: String,
    id_prefix: String,
    split: bool,
    /// The earliest batch number of a batch group.
    batch: Option<u64>,
    parts: Vec<usize>,
    merged: u64,
    covered_start: i64,
    covered_end: i64,
    count: Option<u64>,
    sum: Option<f64>,
    /// Σ of the parts' sums, or of mean · count when they carry no sum (for the mean).
    weighted: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    /// (count, mean, M2) for the parallel variance, while every part allows it.
    moments: Option<(u64, f64, f64)>,
    /// (covered_start, first value) of the earliest part.
    first: Option<(i64, f64)>,
    /// (covered_end, last value) of the latest part.
    last: Option<(i64, f64)>,
    first_lost: bool,
    last_lost: bool,
    counts: Option<BTreeMap<String, u64>>,
    other: u64,
}

impl Group {
    fn new(piece: Piece, part_idx: usize) -> Group {
        let stats = &piece.stats;
        let weighted = part_weighted(stats);
        let moments = part_moments(stats);
        Group {
            kind: piece.kind,
            id_prefix: piece.id_prefix,
            split: piece.split,
            batch: piece.batch,
            parts: vec![part_idx],
            merged: piece.merged,
            covered_start: piece.covered_start,
            covered_end: piece.covered_end,
            count: stats.count,
            sum: stats.sum,
            weighted,
            min: stats.min,
            max: stats.max,
            moments,
            first: stats.first.map(|value| (piece.covered_start, value)),
            last: stats.last.map(|value| (piece.covered_end, value)),
            first_lost: stats.first.is_none(),
            last_lost: stats.last.is_none(),
            counts: piece.counts,
            other: piece.other,
            key: piece.key,
        }
    }

    fn add(&mut self, piece: Piece, part_idx: usize) {
        if self.parts.last() != Some(&part_idx) {
            self.parts.push(part_idx);
        }
        let stats = &piece.stats;
        self.merged = self.merged.saturating_add(piece.merged);
        self.batch = both(self.batch, piece.batch, u64::min);
        self.covered_start = self.covered_start.min(piece.covered_start);
        self.covered_end = self.covered_end.max(piece.covered_end);
        self.count = both(self.count, stats.count, |a, b| a.saturating_add(b));
        self.sum = both(self.sum, stats.sum, |a, b| a + b);
        self.weighted = both(self.weighted, part_weighted(stats), |a, b| a + b);
        self.min = both(self.min, stats.min, f64::min);
        self.max = both(self.max, stats.max, f64::max);
        self.moments = both(self.moments, part_moments(stats), chan);
        // The earliest part's first (the earlier one on ties: outbox order), the latest
        // part's last (the later one on ties).
        match (self.first, stats.first) {
            (Some((start, _)), Some(value)) if piece.covered_start < start => {
                self.first = Some((piece.covered_start, value));
            }
            (_, None) => self.first_lost = true,
            _ => {}
        }
        match (self.last, stats.last) {
            (Some((end, _)), Some(value)) if piece.covered_end >= end => {
                self.last = Some((piece.covered_end, value));
            }
            (_, None) => self.last_lost = true,
            _ => {}
        }
        self.counts = both(self.counts.take(), piece.counts, |mut a, b| {
            for (value, count) in b {
                *a.entry(value).or_insert(0) += count;
            }
            a
        });
        self.other = self.other.saturating_add(piece.other);
    }

    fn into_entry(self, resolution_ms: i64) -> Merged {
        let start = self.key.bucket;
        let end = start.saturating_add(resolution_ms);
        let id = format!(
            "{}/ds/{resolution_ms}/{}-{}/{}",
            self.id_prefix, self.covered_start, self.covered_end, self.merged
        );
        let mean = match (self.count, self.weighted) {
            (Some(count), Some(weighted)) if count > 0 => Some(weighted / count as f64),
            _ => None,
        };
        let stddev =
            self.moments.map(|(count, _, m2)| (count >= 2).then(|| (m2 / (count - 1) as f64).sqrt()));
        let mut fields: Vec<(&'static str, Value)> = vec![("type", self.key.record_type.as_str().into())];
        match self.key.record_type {
            RecordType::Batch => {
                fields.push(("batch", self.batch.map_or(Value::Null, Value::from)));
            }
            RecordType::Window | RecordType::WindowCounts => {
                fields.push(("window", self.key.window.clone().into()))
            }
            RecordType::Raw => {}
        }
        fields.push(("device", self.key.device.clone().into()));
        fields.push(("sensor", self.key.sensor.clone().into()));
        let field_key = if self.key.record_type == RecordType::WindowCounts { "tag" } else { "field" };
        fields.push((field_key, self.key.field.clone().into()));
        fields.push(("start", start.into()));
        fields.push(("end", end.into()));
        if let Some(counts) = self.counts {
            fields.push(("counts", Value::Object(counts.into_iter().map(|(k, v)| (k, v.into())).collect())));
            if self.other > 0 {
                fields.push(("other", self.other.into()));
            }
        }
        for aggregate in Aggregate::ALL {
            if !self.key.shown.contains(&aggregate) {
                continue;
            }
            let value = match aggregate {
                Aggregate::Count => self.count.map(Value::from),
                Aggregate::Sum => self.sum.map(float),
                Aggregate::Min => self.min.map(float),
                Aggregate::Max => self.max.map(float),
                Aggregate::Mean => mean.map(float),
                Aggregate::Stddev => stddev.map(|stddev| stddev.map_or(Value::Null, float)),
                Aggregate::First => self.first.filter(|_| !self.first_lost).map(|(_, value)| float(value)),
                Aggregate::Last => self.last.filter(|_| !self.last_lost).map(|(_, value)| float(value)),
            };
            if let Some(value) = value {
                fields.push((aggregate.as_str(), value));
            }
        }
        fields.push(("downsampled", true.into()));
        fields.push(("resolution", resolution_ms.into()));
        fields.push(("merged", self.merged.into()));
        fields.push(("covered_start", self.covered_start.into()));
        fields.push(("covered_end", self.covered_end.into()));
        fields.push(("id", id.into()));
        let payload = serde_json::to_vec(&Ordered(&fields)).expect("a JSON object serialises into memory");
        let what = match self.key.record_type {
            RecordType::Batch => "batch".to_owned(),
            RecordType::Raw => "raw".to_owned(),
            RecordType::Window | RecordType::WindowCounts => self.key.window.clone(),
        };
        let group = format!("Downsampled {what} [{}, {})", format_utc_ms(start), format_utc_ms(end));
        Merged::New { kind: self.kind, group, payload, bucket_start: start }
    }
}

/// Combines two values when both are there.
fn both<T>(a: Option<T>, b: Option<T>, combine: impl FnOnce(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(combine(a, b)),
        _ => None,
    }
}

/// A part's sum, or its mean times its count.
fn part_weighted(stats: &Stats) -> Option<f64> {
    stats.sum.or_else(|| Some(stats.mean? * stats.count? as f64))
}

/// A part's (count, mean, M2), if it carries a count, a mean (or sum) and a stddev (null only
/// for a single value).
fn part_moments(stats: &Stats) -> Option<(u64, f64, f64)> {
    let count = stats.count.filter(|&count| count > 0)?;
    let mean = stats.sum.map(|sum| sum / count as f64).or(stats.mean)?;
    let m2 = match stats.stddev? {
        Some(stddev) => stddev * stddev * (count - 1) as f64,
        None if count == 1 => 0.0,
        None => return None,
    };
    Some((count, mean, m2))
}

/// Chan et al.'s parallel combination of two (count, mean, M2).
fn chan(a: (u64, f64, f64), b: (u64, f64, f64)) -> (u64, f64, f64) {
    let count = a.0 + b.0;
    let (n_a, n_b, n) = (a.0 as f64, b.0 as f64, count as f64);
    let delta = b.1 - a.1;
    (count, a.1 + delta * n_b / n, a.2 + b.2 + delta * delta * n_a * n_b / n)
}

/// `null` for a non-finite number, as records write them.
fn float(value: f64) -> Value {
    serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
}

/// A JSON object with its keys in the given order.
struct Ordered<'a>(&'a [(&'static str, Value)]);

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn classify(part: &Part<'_>, shapes: &Shapes, resolution_ms: i64) -> Class {
    if part.kind == "late" {
        return Class::Keep;
    }
    let Ok(record) = serde_json::from_slice::<Map<String, Value>>(part.payload) else { return Class::Keep };
    classify_record(part.kind, &record, shapes, resolution_ms).unwrap_or(Class::Keep)
}

fn text(record: &Map<String, Value>, key: &str) -> Option<String> {
    record.get(key)?.as_str().map(str::to_owned)
}

fn int(record: &Map<String, Value>, key: &str) -> Option<i64> {
    record.get(key)?.as_i64()
}

/// `None`: keep the record as it is.
fn classify_record(
    kind: &str,
    record: &Map<String, Value>,
    shapes: &Shapes,
    resolution_ms: i64,
) -> Option<Class> {
    let record_type = match record.get("type")?.as_str()? {
        "window" => RecordType::Window,
        "window_counts" => RecordType::WindowCounts,
        "batch" => RecordType::Batch,
        "raw" => RecordType::Raw,
        _ => return None,
    };
    let device = text(record, "device")?;
    let sensor = text(record, "sensor")?;
    let id = text(record, "id")?;
    let downsampled = record.get("downsampled").and_then(Value::as_bool) == Some(true);
    if record_type == RecordType::Raw && !downsampled {
        return classify_raw(kind, record, device, sensor, &id, resolution_ms);
    }
    let start = int(record, "start")?;
    let end = int(record, "end")?;
    let (span, merged, covered_start, covered_end, id_prefix) = if downsampled {
        let resolution = int(record, "resolution")?;
        let merged = record.get("merged")?.as_u64()?;
        // The id ends in `/ds/<resolution>/<covered>/<merged>`.
        let prefix = strip_components(&id, 4)?;
        (resolution, merged, int(record, "covered_start")?, int(record, "covered_end")?, prefix.to_owned())
    } else {
        let mut span = end.checked_sub(start)?;
        if record_type != RecordType::Batch {
            let window = text(record, "window")?;
            match shapes.window(&window) {
                Some(shape) if shape.slide_ms < shape.length_ms => {
                    if shape.length_ms % shape.slide_ms != 0 {
                        return None;
                    }
                    if start.rem_euclid(shape.length_ms) != 0 {
                        // Redundant only if the tiling windows merge into this bucket.
                        return (resolution_ms % shape.length_ms == 0).then_some(Class::Redundant);
                    }
                    span = shape.length_ms;
                }
                Some(shape) => span = shape.length_ms,
                None if span > 0 && start.rem_euclid(span) != 0 => return None,
                None => {}
            }
        }
        (span, 1, start, end, strip_components(&id, 1)?.to_owned())
    };
    if span <= 0 || span > resolution_ms || resolution_ms % span != 0 {
        return None;
    }
    let bucket = start.div_euclid(resolution_ms) * resolution_ms;
    let (window, field) = match record_type {
        RecordType::Window => (text(record, "window")?, text(record, "field")?),
        RecordType::WindowCounts => (text(record, "window")?, text(record, "tag")?),
        RecordType::Batch => ("batch".to_owned(), text(record, "field")?),
        RecordType::Raw => ("raw".to_owned(), text(record, "field")?),
    };
    let stats = Stats {
        count: record.get("count").and_then(Value::as_u64),
        sum: record.get("sum").and_then(Value::as_f64),
        min: record.get("min").and_then(Value::as_f64),
        max: record.get("max").and_then(Value::as_f64),
        mean: record.get("mean").and_then(Value::as_f64),
        stddev: record.get("stddev").map(Value::as_f64),
        first: record.get("first").and_then(Value::as_f64),
        last: record.get("last").and_then(Value::as_f64),
    };
    let shown =
        Aggregate::ALL.into_iter().filter(|aggregate| record.contains_key(aggregate.as_str())).collect();

    let (counts, other) = if record_type == RecordType::WindowCounts {
        let counts = record
            .get("counts")?
            .as_object()?
            .iter()
            .map(|(value, count)| Some((value.clone(), count.as_u64()?)))
            .collect::<Option<BTreeMap<_, _>>>()?;
        (Some(counts), record.get("other").and_then(Value::as_u64).unwrap_or(0))
    } else {
        (None, 0)
    };
    let key = GroupKey { record_type, window, device, sensor, field, bucket, shown };
    Some(Class::Merge(vec![Piece {
        key,
        kind: kind.to_owned(),
        id_prefix,
        split: false,
        batch: record.get("batch").and_then(Value::as_u64),
        merged,
        covered_start,
        covered_end,
        stats,
        counts,
        other,
    }]))
}

/// A raw reading: one piece per field with a value.
fn classify_raw(
    kind: &str,
    record: &Map<String, Value>,
    device: String,
    sensor: String,
    id: &str,
    resolution_ms: i64,
) -> Option<Class> {
    let ts = int(record, "ts")?;
    let values = record.get("values")?.as_object()?;
    // `device/raw/sensor/ts/logkey-index`: the prefix is the first three parts.
    let id_prefix = strip_components(id, 2)?;
    let bucket = ts.div_euclid(resolution_ms) * resolution_ms;
    let mut pieces = Vec::with_capacity(values.len());
    for (field, value) in values {
        // A null value (not finite) cannot be aggregated: keep the reading as it is.
        let value = value.as_f64()?;
        pieces.push(Piece {
            key: GroupKey {
                record_type: RecordType::Raw,
                window: "raw".to_owned(),
                device: device.clone(),
                sensor: sensor.clone(),
                field: field.clone(),
                bucket,
                shown: Aggregate::ALL.to_vec(),
            },
            kind: kind.to_owned(),
            id_prefix: format!("{id_prefix}/{field}"),
            split: true,
            batch: None,
            merged: 1,
            covered_start: ts,
            covered_end: ts.saturating_add(1),
            stats: Stats {
                count: Some(1),
                sum: Some(value),
                min: Some(value),
                max: Some(value),
                mean: Some(value),
                stddev: Some(None),
                first: Some(value),
                last: Some(value),
            },
            counts: None,
            other: 0,
        });
    }
    if pieces.is_empty() {
        return None;
    }
    Some(Class::Merge(pieces))
}

/// `id` without its last `n` `/`-separated parts.
fn strip_components(id: &str, n: usize) -> Option<&str> {
    let mut end = id.len();
    for _ in 0..n {
        end = id[..end].rfind('/')?;
    }
    Some(&id[..end])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::engine::record::{FieldStats, ResultRecord, WindowCountsRecord, WindowRecord};

    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 86_400_000;
    /// 2023-11-14 00:00 UTC.
    const T0: i64 = 1_699_920_000_000;

    fn shapes(windows: &[(&str, i64, i64)]) -> Shapes {
        Shapes {
            windows: windows
                .iter()
                .map(|&(name, length_ms, slide_ms)| WindowShape {
                    name: name.to_owned(),
                    length_ms,
                    slide_ms,
                })
                .collect(),
        }
    }

    fn stats_of(values: &[f64]) -> FieldStats {
        let count = values.len() as u64;
        let sum: f64 = values.iter().sum();
        let mean = sum / count as f64;
        let stddev = (count >= 2).then(|| {
            (values.iter().map(|value| (value - mean).powi(2)).sum::<f64>() / (count - 1) as f64).sqrt()
        });
        FieldStats {
            count,
            sum,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            mean,
            stddev,
            first: values[0],
            last: values[values.len() - 1],
        }
    }

    /// A window record as the engine writes it.
    fn window(name: &str, sensor: &str, start_ms: i64, length_ms: i64, values: &[f64]) -> Vec<u8> {
        ResultRecord::Window(WindowRecord {
            window: Arc::from(name),
            device: Arc::from("gw-01"),
            sensor: Arc::from(sensor),
            field: Arc::from("temp_c"),
            start_ms,
            end_ms: start_ms + length_ms,
            aggregates: Arc::from(Aggregate::ALL.to_vec()),
            stats: stats_of(values),
        })
        .to_json()
    }

    fn parts(payloads: &[Vec<u8>]) -> Vec<Part<'_>> {
        payloads.iter().map(|payload| Part { kind: "window", payload }).collect()
    }

    /// The record, or an empty object for an unparsable one.
    fn json(bytes: &[u8]) -> Map<String, Value> {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    /// The new records of `outcome` and the kept inputs, as JSON.
    fn records(outcome: &MergeOutcome, payloads: &[Vec<u8>]) -> Vec<Map<String, Value>> {
        outcome
            .entries
            .iter()
            .map(|entry| match entry {
                Merged::Kept(idx) => json(&payloads[*idx]),
                Merged::New { payload, .. } => json(payload),
            })
            .collect()
    }

    /// Values by (sensor, hour).
    type ValuesByHour = Vec<(String, i64, Vec<f64>)>;

    /// Two sensors, two hours of 1-minute windows with three values each.
    fn two_hours() -> (Vec<Vec<u8>>, ValuesByHour) {
        let mut payloads = Vec::new();
        let mut values_by_hour: ValuesByHour = Vec::new();
        for minute in 0..120 {
            for sensor in ["t-1", "t-2"] {
                let start = T0 + minute * MINUTE;
                let values: Vec<f64> = (0..3)
                    .map(|idx| 20.0 + ((minute * 7 + idx * 3) % 11) as f64 * 0.1 + f64::from(sensor == "t-2"))
                    .collect();
                payloads.push(window("temp_1m", sensor, start, MINUTE, &values));
                let hour = start.div_euclid(HOUR) * HOUR;
                match values_by_hour.iter_mut().find(|(s, h, _)| s == sensor && *h == hour) {
                    Some((_, _, all)) => all.extend(&values),
                    None => values_by_hour.push((sensor.to_owned(), hour, values)),
                }
            }
        }
        (payloads, values_by_hour)
    }

    #[test]
    fn an_hour_of_windows_merges_into_one_record_with_exact_counts_and_sums() {
        let (payloads, values_by_hour) = two_hours();
        let outcome = merge(&parts(&payloads), &shapes(&[("temp_1m", MINUTE, MINUTE)]), HOUR);
        assert_eq!((outcome.n_merged, outcome.n_written, outcome.n_redundant), (240, 4, 0));
        let merged = records(&outcome, &payloads);
        assert_eq!(merged.len(), 4);
        for (sensor, hour, values) in values_by_hour {
            let record = merged
                .iter()
                .find(|record| record["sensor"] == sensor.as_str() && record["start"] == hour)
                .expect("a record per sensor and hour");
            let expected = stats_of(&values);
            // The sum of the parts' sums in outbox order, which is what the hour's sum is.
            let parts_sum: f64 = payloads
                .iter()
                .map(|payload| json(payload))
                .filter(|part| {
                    part["sensor"] == sensor.as_str() && part["start"].as_i64().unwrap() / HOUR == hour / HOUR
                })
                .map(|part| part["sum"].as_f64().unwrap())
                .sum();
            assert_eq!(record["type"], "window");
            assert_eq!(record["window"], "temp_1m");
            assert_eq!(record["end"], hour + HOUR);
            assert_eq!(record["count"], expected.count);
            assert_eq!(record["sum"].as_f64().unwrap(), parts_sum);
            assert!((record["sum"].as_f64().unwrap() - expected.sum).abs() <= 1e-12 * expected.sum.abs());
            assert_eq!(record["min"].as_f64().unwrap(), expected.min);
            assert_eq!(record["max"].as_f64().unwrap(), expected.max);
            assert_eq!(record["mean"].as_f64().unwrap(), parts_sum / expected.count as f64);
            assert!((record["stddev"].as_f64().unwrap() - expected.stddev.unwrap()).abs() < 1e-9);
            assert_eq!(record["first"].as_f64().unwrap(), expected.first);
            assert_eq!(record["last"].as_f64().unwrap(), expected.last);
            assert_eq!(record["downsampled"], true);
            assert_eq!(record["resolution"], HOUR);
            assert_eq!(record["merged"], 60);
            assert_eq!(record["covered_start"], hour);
            assert_eq!(record["covered_end"], hour + HOUR);
            assert_eq!(
                record["id"],
                format!("gw-01/temp_1m/{sensor}/temp_c/ds/{HOUR}/{hour}-{}/60", hour + HOUR)
            );
            // Keys in the records' order: type first, id last.
            let text = String::from_utf8(
                outcome
                    .entries
                    .iter()
                    .find_map(|entry| match entry {
                        Merged::New { payload, .. } if json(payload)["id"] == record["id"] => {
                            Some(payload.clone())
                        }
                        _ => None,
                    })
                    .unwrap(),
            )
            .unwrap();
            assert!(
                text.starts_with("{\"type\":\"window\",\"window\":\"temp_1m\",\"device\":\"gw-01\""),
                "{text}"
            );
            assert!(text.contains("\"downsampled\":true,\"resolution\":3600000,\"merged\":60,"), "{text}");
        }
    }

    #[test]
    fn hour_records_merge_into_days_and_partial_hours_merge_again_with_new_ids() {
        let (payloads, _) = two_hours();
        let shapes = shapes(&[("temp_1m", MINUTE, MINUTE)]);
        // Two rounds over disjoint halves of the first hour (30 minutes × 2 sensors each).
        let first = merge(&parts(&payloads[..60]), &shapes, HOUR);
        let second = merge(&parts(&payloads[60..120]), &shapes, HOUR);
        let replay = merge(&parts(&payloads[..60]), &shapes, HOUR);
        assert_eq!(first, replay, "a replay of the same merge gives the same records and ids");
        let first_records = records(&first, &payloads);
        let second_records = records(&second, &payloads);
        assert_eq!(first_records.len(), 2);
        for (a, b) in first_records.iter().zip(&second_records) {
            assert_eq!(a["start"], b["start"]);
            assert_ne!(a["id"], b["id"], "disjoint parts of one hour get different ids");
            assert_eq!(a["merged"], 30);
        }
        // The two partial hours merge again at the same resolution, into the whole hour.
        let halves: Vec<Vec<u8>> = [first, second]
            .iter()
            .flat_map(|outcome| outcome.entries.iter())
            .map(|entry| match entry {
                Merged::New { payload, .. } => payload.clone(),
                Merged::Kept(_) => panic!("everything merged"),
            })
            .collect();
        let whole = merge(&parts(&halves), &shapes, HOUR);
        let direct = merge(&parts(&payloads[..120]), &shapes, HOUR);
        let (whole_records, direct_records) = (records(&whole, &halves), records(&direct, &payloads));
        assert_eq!(whole.n_merged, 4);
        for (a, b) in whole_records.iter().zip(&direct_records) {
            assert_eq!(a["id"], b["id"], "the same hour, whichever way it was merged");
            assert_eq!(a["count"], b["count"]);
            assert_eq!(a["merged"], 60);
            assert!((a["sum"].as_f64().unwrap() - b["sum"].as_f64().unwrap()).abs() < 1e-9);
            assert!((a["stddev"].as_f64().unwrap() - b["stddev"].as_f64().unwrap()).abs() < 1e-9);
            assert_eq!(a["first"], b["first"]);
            assert_eq!(a["last"], b["last"]);
        }
        // Hours into a day.
        let hours: Vec<Vec<u8>> = merge(&parts(&payloads), &shapes, HOUR)
            .entries
            .into_iter()
            .map(|entry| match entry {
                Merged::New { payload, .. } => payload,
                Merged::Kept(_) => panic!("everything merged"),
            })
            .collect();
        let day = merge(&parts(&hours), &shapes, DAY);
        let day_records = records(&day, &hours);
        assert_eq!(day_records.len(), 2);
        for record in &day_records {
            assert_eq!(record["count"], 360);
            assert_eq!(record["merged"], 120);
            assert_eq!(record["resolution"], DAY);
            assert_eq!(record["start"], T0);
            assert_eq!(record["covered_end"], T0 + 2 * HOUR);
        }
        // A merged record alone at its resolution is kept as it is.
        let alone = merge(&parts(&hours[..1]), &shapes, HOUR);
        assert_eq!(alone.entries, vec![Merged::Kept(0)]);
    }

    #[test]
    fn sliding_windows_keep_their_tiling_subset_and_count_the_others_redundant() {
        // 2-minute windows every minute: those starting on even minutes tile the hour.
        let payloads: Vec<Vec<u8>> = (0..60)
            .map(|minute| window("avg_2m", "t-1", T0 + minute * MINUTE, 2 * MINUTE, &[1.0, 2.0]))
            .collect();
        let outcome = merge(&parts(&payloads), &shapes(&[("avg_2m", 2 * MINUTE, MINUTE)]), HOUR);
        assert_eq!((outcome.n_merged, outcome.n_written, outcome.n_redundant), (30, 1, 30));
        let record = &records(&outcome, &payloads)[0];
        assert_eq!(record["count"], 60, "each reading once");
        assert_eq!(record["sum"].as_f64().unwrap(), 90.0);
        // A length that is not a multiple of the slide: nothing can be merged.
        let payloads: Vec<Vec<u8>> =
            (0..10).map(|idx| window("odd", "t-1", T0 + idx * 2 * MINUTE, 3 * MINUTE, &[1.0])).collect();
        let outcome = merge(&parts(&payloads), &shapes(&[("odd", 3 * MINUTE, 2 * MINUTE)]), HOUR);
        assert_eq!(outcome.entries, (0..10).map(Merged::Kept).collect::<Vec<_>>());
        assert_eq!((outcome.n_merged, outcome.n_redundant), (0, 0));
    }

    #[test]
    fn counts_raw_readings_late_records_and_unmergeable_aggregates() {
        let counts = |start_ms, counts: &[(&str, u64)], other| {
            ResultRecord::WindowCounts(WindowCountsRecord {
                window: Arc::from("mode_1m"),
                device: Arc::from("gw-01"),
                sensor: Arc::from("t/1"),
                tag: Arc::from("mode"),
                start_ms,
                end_ms: start_ms + MINUTE,
                counts: counts.iter().map(|&(value, count)| (Arc::from(value), count)).collect(),
                other,
            })
            .to_json()
        };
        let raw = |ts: i64, idx: usize, temp: f64| {
            format!(
                r#"{{"type":"raw","device":"gw-01","sensor":"t%2F1","ts":{ts},"values":{{"temp_c":{temp},"rh":50}},"tags":{{"mode":"heat"}},"id":"gw-01/raw/t%2F1/{ts}/7-{idx}"}}"#
            )
            .into_bytes()
        };
        let late = br#"{"type":"late","window":"mode_1m","device":"gw-01","sensor":"t/1","ts":1,"watermark":2,"values":{},"id":"gw-01/mode_1m/t%2F1/late/0"}"#.to_vec();
        // A window showing only count and mean; another only sum and max.
        let partial = |start_ms, aggregates: &[Aggregate]| {
            ResultRecord::Window(WindowRecord {
                window: Arc::from("w"),
                device: Arc::from("gw-01"),
                sensor: Arc::from("s"),
                field: Arc::from("temp_c"),
                start_ms,
                end_ms: start_ms + MINUTE,
                aggregates: Arc::from(aggregates.to_vec()),
                stats: stats_of(&[1.0, 4.0]),
            })
            .to_json()
        };
        let payloads = vec![
            counts(T0, &[("cool", 1), ("heat", 3)], 0),
            raw(T0 + 5, 0, 20.5),
            late.clone(),
            counts(T0 + MINUTE, &[("heat", 2), ("off", 1)], 4),
            raw(T0 + 9, 1, 21.5),
            partial(T0, &[Aggregate::Count, Aggregate::Mean, Aggregate::Stddev]),
            partial(T0 + MINUTE, &[Aggregate::Count, Aggregate::Mean, Aggregate::Stddev]),
            partial(T0 + 2 * MINUTE, &[Aggregate::Sum, Aggregate::Max]),
            b"not json".to_vec(),
        ];
        let kinds = ["window", "raw", "late", "window", "raw", "window", "window", "window", "window"];
        let input: Vec<Part<'_>> =
            payloads.iter().zip(kinds).map(|(payload, kind)| Part { kind, payload }).collect();
        let outcome = merge(&input, &shapes(&[("mode_1m", MINUTE, MINUTE), ("w", MINUTE, MINUTE)]), HOUR);
        let merged = records(&outcome, &payloads);
        assert_eq!(outcome.n_merged, 6);
        assert_eq!(outcome.n_written, 4);
        // In order of each group's first part: counts, raw rh and temp_c, late, w, the other
        // w, not json.
        assert_eq!(merged[0]["counts"], serde_json::json!({"cool": 1, "heat": 5, "off": 1}));
        assert_eq!(merged[0]["other"], 4);
        assert_eq!(merged[0]["id"], format!("gw-01/mode_1m/t%2F1/mode/ds/{HOUR}/{T0}-{}/2", T0 + 2 * MINUTE));
        let raw_ids: Vec<&str> = merged[1..3].iter().map(|record| record["id"].as_str().unwrap()).collect();
        assert_eq!(
            raw_ids,
            [
                format!("gw-01/raw/t%2F1/rh/ds/{HOUR}/{}-{}/2", T0 + 5, T0 + 10),
                format!("gw-01/raw/t%2F1/temp_c/ds/{HOUR}/{}-{}/2", T0 + 5, T0 + 10)
            ]
        );
        let temp = &merged[2];
        assert_eq!((temp["type"].as_str(), temp["field"].as_str()), (Some("raw"), Some("temp_c")));
        assert_eq!((temp["count"].as_u64(), temp["sum"].as_f64()), (Some(2), Some(42.0)));
        assert_eq!((temp["first"].as_f64(), temp["last"].as_f64()), (Some(20.5), Some(21.5)));
        assert!((temp["stddev"].as_f64().unwrap() - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(outcome.entries[3], Merged::Kept(2), "late records are not merged");
        // count + mean + stddev merge (the mean from the means); the window written with
        // other aggregates (sum and max) is kept apart, so that neither loses what it has.
        let w = &merged[4];
        assert_eq!(w["merged"], 2);
        assert_eq!((w["count"].as_u64(), w["mean"].as_f64()), (Some(4), Some(2.5)));
        assert!(
            (w["stddev"].as_f64().unwrap() - stats_of(&[1.0, 4.0, 1.0, 4.0]).stddev.unwrap()).abs() < 1e-12
        );
        assert!(w.get("sum").is_none(), "no part showed its sum");
        assert_eq!(outcome.entries[5..], [Merged::Kept(7), Merged::Kept(8)], "alone, or unparsable: kept");
    }

    /// Every key a merged record has is documented in `docs/records.schema.json` for its kind
    /// (`raw_downsampled` for raw readings), and it has every key the schema requires.
    #[test]
    fn merged_records_have_only_the_keys_the_schema_documents() {
        let schema: Value = serde_json::from_str(include_str!("../../../docs/records.schema.json")).unwrap();
        let batch = |start_ms: i64| {
            ResultRecord::Batch(crate::engine::record::BatchRecord {
                batch: u64::try_from(start_ms / 2000).unwrap(),
                device: Arc::from("gw-01"),
                sensor: Arc::from("t-1"),
                field: Arc::from("temp_c"),
                start_ms,
                end_ms: start_ms + 2000,
                stats: stats_of(&[1.0, 2.0]),
            })
            .to_json()
        };
        let counts = |start_ms: i64| {
            ResultRecord::WindowCounts(WindowCountsRecord {
                window: Arc::from("mode_1m"),
                device: Arc::from("gw-01"),
                sensor: Arc::from("t-1"),
                tag: Arc::from("mode"),
                start_ms,
                end_ms: start_ms + MINUTE,
                counts: vec![(Arc::from("heat"), 2)],
                other: 1,
            })
            .to_json()
        };
        let raw = |ts: i64| {
            format!(r#"{{"type":"raw","device":"gw-01","sensor":"t-1","ts":{ts},"values":{{"temp_c":1.5}},"tags":{{}},"id":"gw-01/raw/t-1/{ts}/1-0"}}"#)
                .into_bytes()
        };
        let payloads = vec![
            window("temp_1m", "t-1", T0, MINUTE, &[1.0, 2.0]),
            window("temp_1m", "t-1", T0 + MINUTE, MINUTE, &[3.0]),
            batch(T0),
            batch(T0 + 2000),
            counts(T0),
            counts(T0 + MINUTE),
            raw(T0),
            raw(T0 + 1),
        ];
        let kinds = ["window", "window", "batch", "batch", "window", "window", "raw", "raw"];
        let input: Vec<Part<'_>> =
            payloads.iter().zip(kinds).map(|(payload, kind)| Part { kind, payload }).collect();
        let outcome = merge(&input, &shapes(&[]), HOUR);
        assert_eq!(outcome.n_written, 4);
        for record in records(&outcome, &payloads) {
            let def = match record["type"].as_str().unwrap() {
                "raw" => "raw_downsampled",
                other => other,
            };
            let documented = schema["$defs"][def]["properties"].as_object().unwrap();
            for key in record.keys() {
                assert!(
                    documented.contains_key(key),
                    "`{key}` of a merged {def} record is not in the schema"
                );
            }
            for required in schema["$defs"][def]["required"].as_array().unwrap() {
                assert!(record.contains_key(required.as_str().unwrap()), "{def}: {required} missing");
            }
            assert_eq!(record["downsampled"], true);
        }
    }

    proptest! {
        /// However the records are cut into merge rounds, each sensor-hour ends with the
        /// count of its readings and their sum (within f64 rounding), and no record is lost.
        #[test]
        fn rounds_of_merges_keep_every_hours_count_and_sum(
            minutes in proptest::collection::vec((0i64..180, 0usize..3, proptest::collection::vec(-50.0f64..50.0, 1..5)), 1..120),
            cuts in proptest::collection::vec(0usize..120, 0..6),
        ) {
            let shapes = shapes(&[("temp_1m", MINUTE, MINUTE)]);
            let sensors = ["a", "b", "c"];
            let mut payloads: Vec<Vec<u8>> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut expected: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
            for (minute, sensor_idx, values) in &minutes {
                if !seen.insert((*minute, *sensor_idx)) {
                    continue;
                }
                let start = T0 + minute * MINUTE;
                payloads.push(window("temp_1m", sensors[*sensor_idx], start, MINUTE, values));
                let entry = expected.entry((sensors[*sensor_idx].to_owned(), start.div_euclid(HOUR) * HOUR)).or_insert((0, 0.0));
                entry.0 += values.len() as u64;
                entry.1 += values.iter().sum::<f64>();
            }
            // Round one: merge each slice between cuts on its own; round two: everything.
            let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut.min(payloads.len())).collect();
            cuts.push(0);
            cuts.push(payloads.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut round_one: Vec<Vec<u8>> = Vec::new();
            for slice in cuts.windows(2) {
                let chunk = &payloads[slice[0]..slice[1]];
                for entry in merge(&parts(chunk), &shapes, HOUR).entries {
                    round_one.push(match entry {
                        Merged::Kept(idx) => chunk[idx].clone(),
                        Merged::New { payload, .. } => payload,
                    });
                }
            }
            for level in [HOUR, DAY] {
                let outcome = merge(&parts(&round_one), &shapes, level);
                let merged = records(&outcome, &round_one);
                let mut got: BTreeMap<(String, i64), (u64, f64)> = BTreeMap::new();
                let mut n_originals = 0;
                for record in &merged {
                    let start = record["start"].as_i64().unwrap();
                    let entry = got.entry((record["sensor"].as_str().unwrap().to_owned(), start.div_euclid(HOUR) * HOUR)).or_insert((0, 0.0));
                    entry.0 += record["count"].as_u64().unwrap();
                    entry.1 += record["sum"].as_f64().unwrap();
                    n_originals += record.get("merged").map_or(1, |merged| merged.as_u64().unwrap());
                }
                prop_assert_eq!(n_originals, payloads.len() as u64);
                if level == HOUR {
                    prop_assert_eq!(got.len(), expected.len());
                    for (key, (count, sum)) in &expected {
                        let (got_count, got_sum) = got[key];
                        prop_assert_eq!(got_count, *count);
                        prop_assert!((got_sum - sum).abs() <= 1e-9 * sum.abs().max(1.0));
                    }
                    // At most one record per sensor and hour is left.
                    prop_assert_eq!(merged.len(), expected.len());
                } else {
                    let total: u64 = got.values().map(|(count, _)| count).sum();
                    prop_assert_eq!(total, expected.values().map(|(count, _)| count).sum::<u64>());
                }
            }
        }
    }
}
