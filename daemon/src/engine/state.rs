//! The engine's stored state format: keys and versioned postcard envelopes, apart from the
//! in-memory types so that the two can change independently.
//!
//! Keys (all at most 130 bytes, since window names are at most 64 bytes and sensor ids at most
//! [`eddy_sensors::MAX_SENSOR_BYTES`]):
//!
//! | key | value | what |
//! |---|---|---|
//! | `e` | [`MetaEnvelope`] | processing clock, micro-batch floor, counters |
//! | `b` + sensor | [`BatchEnvelope`] | the open micro-batch's accumulators of one sensor |
//! | `c` + sensor | [`SensorClockEnvelope`] | one sensor's clock: reference, held readings, offset estimate |
//! | `w` + name length (1 byte) + window name + sensor | [`WindowEnvelope`] | watermark, last activity, late sequence and open windows of one sensor in one window |
//! | `t` + sensor | [`TombstoneEnvelope`] | what a forgotten sensor keeps: per window, its watermark and late sequence |
//!
//! Versions written today: meta `V3` (with `count_by_overflow_total`), window `V3` (open
//! windows with their `other` buckets), batch `V2`, sensor clock `V1`.
//!
//! postcard is not self-describing: a stored type never changes, a new layout is a new
//! envelope variant (`V2`) and the decoder keeps reading `V1`. Fields and tags are stored by
//! name, not schema index, so a reordered schema restores correctly.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::engine::acc::FieldAcc;
use crate::engine::Aggregate;
use crate::wire;

/// The key of the engine-wide entry.
pub(crate) const META_KEY: &[u8] = b"e";
const BATCH_PREFIX: u8 = b'b';
const CLOCK_PREFIX: u8 = b'c';
const WINDOW_PREFIX: u8 = b'w';
const TOMBSTONE_PREFIX: u8 = b't';

/// A decoded key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateKey<'a> {
    Meta,
    Batch { sensor: &'a str },
    SensorClock { sensor: &'a str },
    Window { window: &'a str, sensor: &'a str },
    Tombstone { sensor: &'a str },
}

/// The key of a forgotten sensor's tombstone.
pub(crate) fn tombstone_key(sensor: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + sensor.len());
    key.push(TOMBSTONE_PREFIX);
    key.extend_from_slice(sensor.as_bytes());
    key
}

/// The key of one sensor's micro-batch accumulators.
pub(crate) fn batch_key(sensor: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + sensor.len());
    key.push(BATCH_PREFIX);
    key.extend_from_slice(sensor.as_bytes());
    key
}

/// The key of one sensor's clock.
pub(crate) fn sensor_clock_key(sensor: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + sensor.len());
    key.push(CLOCK_PREFIX);
    key.extend_from_slice(sensor.as_bytes());
    key
}

/// The key of one sensor's state in one window.
pub(crate) fn window_key(window: &str, sensor: &str) -> Vec<u8> {
    // Window names are checked to be at most 64 bytes, so the length fits one byte.
    let name_len = u8::try_from(window.len()).expect("window names are at most 64 bytes");
    let mut key = Vec::with_capacity(2 + window.len() + sensor.len());
    key.push(WINDOW_PREFIX);
    key.push(name_len);
    key.extend_from_slice(window.as_bytes());
    key.extend_from_slice(sensor.as_bytes());
    key
}

/// Decodes a key written by [`batch_key`], [`sensor_clock_key`], [`window_key`] or [`META_KEY`].
pub(crate) fn parse_key(key: &[u8]) -> Result<StateKey<'_>, String> {
    match key.split_first() {
        Some((&b'e', [])) => Ok(StateKey::Meta),
        Some((&BATCH_PREFIX, sensor)) if !sensor.is_empty() => Ok(StateKey::Batch { sensor: utf8(sensor)? }),
        Some((&CLOCK_PREFIX, sensor)) if !sensor.is_empty() => {
            Ok(StateKey::SensorClock { sensor: utf8(sensor)? })
        }
        Some((&TOMBSTONE_PREFIX, sensor)) if !sensor.is_empty() => {
            Ok(StateKey::Tombstone { sensor: utf8(sensor)? })
        }
        Some((&WINDOW_PREFIX, [name_len, rest @ ..])) => {
            let name_len = usize::from(*name_len);
            if name_len == 0 || rest.len() <= name_len {
                return Err("window key too short".to_owned());
            }
            let (window, sensor) = rest.split_at(name_len);
            Ok(StateKey::Window { window: utf8(window)?, sensor: utf8(sensor)? })
        }
        _ => Err("unknown key".to_owned()),
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "key is not UTF-8".to_owned())
}

/// Engine-wide state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum MetaEnvelope {
    V1(MetaV1),
    /// [`MetaV1`] and the future-outlier counters.
    V2(MetaV2),
    /// [`MetaV2`] and the `count_by` overflow counter (issue #14).
    V3(MetaV3),
}

/// Decodes an engine-wide entry of any version.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<MetaV3, String> {
    Ok(match decode(bytes)? {
        MetaEnvelope::V1(v1) => MetaV3 { v2: v1.into(), count_by_overflow_total: 0 },
        MetaEnvelope::V2(v2) => MetaV3 { v2, count_by_overflow_total: 0 },
        MetaEnvelope::V3(v3) => v3,
    })
}

/// [`MetaV2`] (its fields first, as postcard writes a nested struct inline) and the readings
/// counted in a window's `other` bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MetaV3 {
    pub(crate) v2: MetaV2,
    pub(crate) count_by_overflow_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MetaV2 {
    pub(crate) clock_ms: Option<i64>,
    pub(crate) batch_floor: u64,
    pub(crate) late_readings_total: u64,
    pub(crate) late_by_window: Vec<(String, u64)>,
    pub(crate) results_emitted_total: u64,
    pub(crate) batch_readings_deferred_total: u64,
    /// Readings held because they were far ahead of their sensor's clock.
    pub(crate) future_outliers_total: u64,
    /// Held readings applied because their sensor's hold was full.
    pub(crate) future_outliers_dropped_total: u64,
}

impl From<MetaV1> for MetaV2 {
    fn from(v1: MetaV1) -> MetaV2 {
        MetaV2 {
            clock_ms: v1.clock_ms,
            batch_floor: v1.batch_floor,
            late_readings_total: v1.late_readings_total,
            late_by_window: v1.late_by_window,
            results_emitted_total: v1.results_emitted_total,
            batch_readings_deferred_total: v1.batch_readings_deferred_total,
            future_outliers_total: 0,
            future_outliers_dropped_total: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct MetaV1 {
    /// The processing clock: the largest ingest or tick time seen.
    pub(crate) clock_ms: Option<i64>,
    /// Micro-batches below this number are closed.
    pub(crate) batch_floor: u64,
    pub(crate) late_readings_total: u64,
    /// Late readings per window name.
    pub(crate) late_by_window: Vec<(String, u64)>,
    pub(crate) results_emitted_total: u64,
    /// Readings whose stored batch was already closed and that went to the open batch instead.
    pub(crate) batch_readings_deferred_total: u64,
}

/// One sensor's accumulators in the open micro-batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum BatchEnvelope {
    V1(BatchSensorV1),
    /// Accumulators hold only the parts the micro-batch aggregates read ([`AccV2`]).
    V2(BatchSensorV2),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BatchSensorV2 {
    pub(crate) batch: u64,
    /// Non-empty accumulators by field name.
    pub(crate) fields: Vec<(String, AccV2)>,
}

impl From<BatchSensorV1> for BatchSensorV2 {
    fn from(v1: BatchSensorV1) -> BatchSensorV2 {
        BatchSensorV2 {
            batch: v1.batch,
            fields: v1.fields.into_iter().map(|(name, acc)| (name, AccV2::from(acc))).collect(),
        }
    }
}

/// Decodes a micro-batch entry of any version.
pub(crate) fn decode_batch(bytes: &[u8]) -> Result<BatchSensorV2, String> {
    Ok(match decode(bytes)? {
        BatchEnvelope::V1(v1) => v1.into(),
        BatchEnvelope::V2(v2) => v2,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BatchSensorV1 {
    pub(crate) batch: u64,
    /// Non-empty accumulators by field name.
    pub(crate) fields: Vec<(String, AccV1)>,
}

/// One sensor's clock (`engine/sensor_clock.rs`). Absent for sensors last stored by an eddy
/// that had no sensor clocks: such a sensor starts with no reference, so its next reading is
/// judged like a first one (never held).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum SensorClockEnvelope {
    V1(SensorClockV1),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SensorClockV1 {
    /// Event time and ingest time of the newest applied reading.
    pub(crate) reference: Option<(i64, i64)>,
    /// Ingest time of the sensor's latest reading, held or applied.
    pub(crate) last_seen_ms: Option<i64>,
    /// Consecutive outliers (by arrival) with non-decreasing event times, and the event time
    /// of the last of them.
    pub(crate) streak: u32,
    pub(crate) streak_last_ts_ms: i64,
    /// Held readings in arrival order.
    pub(crate) held: Vec<HeldReadingV1>,
    /// The offset estimate: the period (ingest time / period length) of `offset_current_ms`,
    /// and the largest `ts - ingest` of the applied readings of that period and the one before.
    pub(crate) offset_period: i64,
    pub(crate) offset_current_ms: Option<i64>,
    pub(crate) offset_previous_ms: Option<i64>,
}

/// A held reading, its values and tags by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct HeldReadingV1 {
    pub(crate) ingest_ms: i64,
    pub(crate) ts_ms: i64,
    pub(crate) values: Vec<(String, f64)>,
    pub(crate) tags: Vec<(String, String)>,
}

/// `encode(&SensorClockEnvelope::V1(clock))`, written by hand ([`crate::wire`]): a commit
/// writes one per sensor that received readings, every sensor in a close burst.
pub(crate) fn encode_sensor_clock_v1(clock: &SensorClockV1) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    // The envelope's variant index.
    out.push(0);
    wire::option(&mut out, clock.reference, |out, (ts_ms, ingest_ms)| {
        wire::zigzag(out, ts_ms);
        wire::zigzag(out, ingest_ms);
    });
    wire::option(&mut out, clock.last_seen_ms, wire::zigzag);
    wire::varint(&mut out, u64::from(clock.streak));
    wire::zigzag(&mut out, clock.streak_last_ts_ms);
    wire::len(&mut out, clock.held.len());
    for held in &clock.held {
        wire::zigzag(&mut out, held.ingest_ms);
        wire::zigzag(&mut out, held.ts_ms);
        wire::len(&mut out, held.values.len());
        for (name, value) in &held.values {
            wire::bytes(&mut out, name.as_bytes());
            wire::f64(&mut out, *value);
        }
        wire::len(&mut out, held.tags.len());
        for (name, value) in &held.tags {
            wire::bytes(&mut out, name.as_bytes());
            wire::bytes(&mut out, value.as_bytes());
        }
    }
    wire::zigzag(&mut out, clock.offset_period);
    wire::option(&mut out, clock.offset_current_ms, wire::zigzag);
    wire::option(&mut out, clock.offset_previous_ms, wire::zigzag);
    out
}

/// Decodes a sensor clock entry of any version.
pub(crate) fn decode_sensor_clock(bytes: &[u8]) -> Result<SensorClockV1, String> {
    match decode(bytes)? {
        SensorClockEnvelope::V1(v1) => Ok(v1),
    }
}

/// A forgotten sensor's tombstone (issue #14).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum TombstoneEnvelope {
    V1(TombstoneV1),
}

/// What a forgotten sensor keeps so that it comes back with exact lateness and unique late
/// ids: when it was forgotten, and per window name its watermark then and its late sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TombstoneV1 {
    pub(crate) forgotten_ms: i64,
    pub(crate) windows: Vec<(String, Option<i64>, u64)>,
}

/// Decodes a tombstone entry of any version.
pub(crate) fn decode_tombstone(bytes: &[u8]) -> Result<TombstoneV1, String> {
    match decode(bytes)? {
        TombstoneEnvelope::V1(v1) => Ok(v1),
    }
}

/// One sensor's state in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum WindowEnvelope<'a> {
    V1(WindowSensorV1),
    /// Accumulators hold only the parts the window's aggregates read ([`AccV2`]).
    V2(WindowSensorV2),
    /// Open windows also hold the `other` bucket of capped `count_by` tags (issue #14).
    V3(#[serde(borrow)] WindowSensorV3<'a>),
}

/// A field, tag or tag-value name in a stored window entry, stored as a plain string. Decoded,
/// it borrows the entry's bytes (postcard strings need no unescaping); encoded, the engine's
/// names; owned only when converted from an older version. A restart decodes ~10 names per
/// sensor and window, and a commit encodes as many: a `String` each was ~13 % of a restore's
/// instructions (BENCHMARKS.md, #18 session 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name<'a>(pub(crate) Cow<'a, str>);

impl<'a> Name<'a> {
    #[cfg(test)]
    pub(crate) fn borrowed(name: &'a str) -> Name<'a> {
        Name(Cow::Borrowed(name))
    }
}

impl From<String> for Name<'_> {
    fn from(name: String) -> Self {
        Name(Cow::Owned(name))
    }
}

impl std::ops::Deref for Name<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Name<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> serde::de::Visitor<'de> for NameVisitor<'a> {
            type Value = Name<'a>;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a name")
            }

            fn visit_borrowed_str<E: serde::de::Error>(self, name: &'de str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Borrowed(name)))
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }

            fn visit_string<E: serde::de::Error>(self, name: String) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(name)))
            }
        }

        deserializer.deserialize_str(NameVisitor(std::marker::PhantomData))
    }
}

/// Decodes a window entry of any version; a current one borrows its names from `bytes`.
pub(crate) fn decode_window(bytes: &[u8]) -> Result<WindowSensorV3<'_>, String> {
    Ok(match decode(bytes)? {
        WindowEnvelope::V1(v1) => WindowSensorV2::from(v1).into(),
        WindowEnvelope::V2(v2) => v2.into(),
        WindowEnvelope::V3(v3) => v3,
    })
}

/// [`WindowSensorV2`] with [`OpenWindowV3`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WindowSensorV3<'a> {
    /// Everything but the open windows. postcard writes a nested struct's fields in place, so
    /// these are the bytes of the flat struct [`WindowSensorV2`] was.
    pub(crate) head: WindowHeadV3,
    #[serde(borrow)]
    pub(crate) open: Vec<OpenWindowV3<'a>>,
}

/// A window entry's shape, watermark, activity and late sequence: a [`WindowSensorV3`] but its
/// open windows, and what [`write_window_v3_head`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct WindowHeadV3 {
    pub(crate) length_ms: i64,
    pub(crate) slide_ms: i64,
    pub(crate) processing_time: bool,
    pub(crate) max_ts_ms: Option<i64>,
    pub(crate) floor_ms: Option<i64>,
    pub(crate) last_activity_ms: Option<i64>,
    pub(crate) late_seq: u64,
}

/// [`OpenWindowV2`] with, per tag name, the readings counted in the `other` bucket (tags with
/// none are left out). The same bytes as `String` names ([`Name`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpenWindowV3<'a> {
    pub(crate) start_ms: i64,
    /// Non-empty accumulators by field name.
    #[serde(borrow)]
    pub(crate) fields: Vec<(Name<'a>, AccV2)>,
    /// Counts by tag name, then by tag value.
    #[serde(borrow)]
    pub(crate) counts: Vec<(Name<'a>, Vec<(Name<'a>, u64)>)>,
    /// Readings past the tag's cap of distinct values, by tag name.
    #[serde(borrow)]
    pub(crate) other: Vec<(Name<'a>, u64)>,
}

impl From<WindowSensorV2> for WindowSensorV3<'_> {
    fn from(v2: WindowSensorV2) -> Self {
        WindowSensorV3 {
            head: WindowHeadV3 {
                length_ms: v2.length_ms,
                slide_ms: v2.slide_ms,
                processing_time: v2.processing_time,
                max_ts_ms: v2.max_ts_ms,
                floor_ms: v2.floor_ms,
                last_activity_ms: v2.last_activity_ms,
                late_seq: v2.late_seq,
            },
            open: v2
                .open
                .into_iter()
                .map(|window| OpenWindowV3 {
                    start_ms: window.start_ms,
                    fields: window.fields.into_iter().map(|(name, acc)| (name.into(), acc)).collect(),
                    counts: window
                        .counts
                        .into_iter()
                        .map(|(tag, counts)| {
                            (tag.into(), counts.into_iter().map(|(value, n)| (value.into(), n)).collect())
                        })
                        .collect(),
                    other: Vec::new(),
                })
                .collect(),
        }
    }
}

/// [`WindowSensorV1`] with [`OpenWindowV2`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WindowSensorV2 {
    pub(crate) length_ms: i64,
    pub(crate) slide_ms: i64,
    pub(crate) processing_time: bool,
    pub(crate) max_ts_ms: Option<i64>,
    pub(crate) floor_ms: Option<i64>,
    pub(crate) last_activity_ms: Option<i64>,
    pub(crate) late_seq: u64,
    pub(crate) open: Vec<OpenWindowV2>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpenWindowV2 {
    pub(crate) start_ms: i64,
    /// Non-empty accumulators by field name.
    pub(crate) fields: Vec<(String, AccV2)>,
    /// Counts by tag name, then by tag value.
    pub(crate) counts: Vec<(String, Vec<(String, u64)>)>,
}

impl From<WindowSensorV1> for WindowSensorV2 {
    fn from(v1: WindowSensorV1) -> WindowSensorV2 {
        WindowSensorV2 {
            length_ms: v1.length_ms,
            slide_ms: v1.slide_ms,
            processing_time: v1.processing_time,
            max_ts_ms: v1.max_ts_ms,
            floor_ms: v1.floor_ms,
            last_activity_ms: v1.last_activity_ms,
            late_seq: v1.late_seq,
            open: v1
                .open
                .into_iter()
                .map(|window| OpenWindowV2 {
                    start_ms: window.start_ms,
                    fields: window.fields.into_iter().map(|(name, acc)| (name, AccV2::from(acc))).collect(),
                    counts: window.counts,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WindowSensorV1 {
    /// The window's shape when stored; state of a reshaped window is not restored.
    pub(crate) length_ms: i64,
    pub(crate) slide_ms: i64,
    pub(crate) processing_time: bool,
    /// Largest event time seen.
    pub(crate) max_ts_ms: Option<i64>,
    /// Watermark floor raised by idle closes: the largest window end emitted then.
    pub(crate) floor_ms: Option<i64>,
    /// Ingest time of the last chunk with a reading of this sensor.
    pub(crate) last_activity_ms: Option<i64>,
    /// Late readings so far (the next late record's sequence number).
    pub(crate) late_seq: u64,
    /// Open windows in start order.
    pub(crate) open: Vec<OpenWindowV1>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OpenWindowV1 {
    pub(crate) start_ms: i64,
    /// Non-empty accumulators by field name.
    pub(crate) fields: Vec<(String, AccV1)>,
    /// Counts by tag name, then by tag value.
    pub(crate) counts: Vec<(String, Vec<(String, u64)>)>,
}

/// A stored [`FieldAcc`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct AccV1 {
    pub(crate) count: u64,
    pub(crate) n: f64,
    pub(crate) sum: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
    pub(crate) m2: f64,
    pub(crate) first_ts: i64,
    pub(crate) first: f64,
    pub(crate) last_ts: i64,
    pub(crate) last: f64,
}

/// The parts of an accumulator that a set of aggregates reads. Only those are stored: with
/// count, sum, min, max and mean an accumulator takes ~30 bytes instead of ~95, and at 1000
/// sensors the state every commit rewrites shrinks from ~2.6 MB to ~1 MB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AccParts {
    sum: bool,
    min: bool,
    max: bool,
    welford: bool,
    first: bool,
    last: bool,
}

impl AccParts {
    /// Every part (tests).
    #[cfg(test)]
    pub(crate) const ALL: AccParts =
        AccParts { sum: true, min: true, max: true, welford: true, first: true, last: true };

    /// Whether Welford's mean and sum of squares are read (the standard deviation).
    #[inline]
    pub(crate) fn welford(self) -> bool {
        self.welford
    }

    /// Whether the first or the last value is read.
    #[inline]
    pub(crate) fn first_or_last(self) -> bool {
        self.first || self.last
    }

    /// The parts `aggregates` read (the count is always kept).
    pub(crate) fn for_aggregates(aggregates: &[Aggregate]) -> AccParts {
        let mut parts = AccParts::default();
        for aggregate in aggregates {
            match aggregate {
                Aggregate::Count => {}
                Aggregate::Sum | Aggregate::Mean => parts.sum = true,
                Aggregate::Min => parts.min = true,
                Aggregate::Max => parts.max = true,
                Aggregate::Stddev => parts.welford = true,
                Aggregate::First => parts.first = true,
                Aggregate::Last => parts.last = true,
            }
        }
        parts
    }
}

/// A stored [`FieldAcc`] holding only some of its parts ([`AccParts`]); `None` is a part that
/// was not needed when it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct AccV2 {
    pub(crate) count: u64,
    pub(crate) sum: Option<f64>,
    pub(crate) min: Option<f64>,
    pub(crate) max: Option<f64>,
    /// Welford's running mean and sum of squared deviations (for the standard deviation).
    pub(crate) welford: Option<(f64, f64)>,
    /// Event time and value of the first reading.
    pub(crate) first: Option<(i64, f64)>,
    /// Event time and value of the last reading.
    pub(crate) last: Option<(i64, f64)>,
}

impl AccV2 {
    /// The parts of `acc` that `parts` names.
    pub(crate) fn store(acc: &FieldAcc, parts: AccParts) -> AccV2 {
        AccV2 {
            count: acc.count,
            sum: parts.sum.then_some(acc.sum),
            min: parts.min.then_some(acc.min),
            max: parts.max.then_some(acc.max),
            welford: parts.welford.then_some((acc.mean, acc.m2)),
            first: parts.first.then_some((acc.first_ts, acc.first)),
            last: parts.last.then_some((acc.last_ts, acc.last)),
        }
    }

    /// The accumulator, if every part `parts` needs was stored (a window whose aggregates
    /// grew since cannot resume: its new aggregates would be wrong).
    pub(crate) fn load(self, parts: AccParts) -> Result<FieldAcc, String> {
        let missing = [
            (parts.sum && self.sum.is_none(), "sum"),
            (parts.min && self.min.is_none(), "min"),
            (parts.max && self.max.is_none(), "max"),
            (parts.welford && self.welford.is_none(), "stddev"),
            (parts.first && self.first.is_none(), "first"),
            (parts.last && self.last.is_none(), "last"),
        ];
        if let Some((_, part)) = missing.iter().find(|(missing, _)| *missing) {
            return Err(format!("stored state has no {part} (aggregates changed since)"));
        }
        let empty = FieldAcc::EMPTY;
        let (mean, m2) = self.welford.unwrap_or((empty.mean, empty.m2));
        let (first_ts, first) = self.first.unwrap_or((empty.first_ts, empty.first));
        let (last_ts, last) = self.last.unwrap_or((empty.last_ts, empty.last));
        Ok(FieldAcc {
            count: self.count,
            // Exact: `n` is `count` counted in floating point, exact below 2^53.
            #[allow(clippy::cast_precision_loss)]
            n: self.count as f64,
            sum: self.sum.unwrap_or(empty.sum),
            min: self.min.unwrap_or(empty.min),
            max: self.max.unwrap_or(empty.max),
            mean,
            m2,
            first_ts,
            first,
            last_ts,
            last,
        })
    }
}

impl From<AccV1> for AccV2 {
    fn from(v1: AccV1) -> AccV2 {
        AccV2 {
            count: v1.count,
            sum: Some(v1.sum),
            min: Some(v1.min),
            max: Some(v1.max),
            welford: Some((v1.mean, v1.m2)),
            first: Some((v1.first_ts, v1.first)),
            last: Some((v1.last_ts, v1.last)),
        }
    }
}

impl AccV2 {
    /// Appends the postcard bytes of the derived `Serialize` ([`crate::wire`]).
    fn write_postcard(&self, out: &mut Vec<u8>) {
        wire::varint(out, self.count);
        for part in [self.sum, self.min, self.max] {
            wire::option(out, part, wire::f64);
        }
        wire::option(out, self.welford, |out, (mean, m2)| {
            wire::f64(out, mean);
            wire::f64(out, m2);
        });
        for part in [self.first, self.last] {
            wire::option(out, part, |out, (ts_ms, value)| {
                wire::zigzag(out, ts_ms);
                wire::f64(out, value);
            });
        }
    }
}

/// `encode(&WindowEnvelope::V3(window))`, written by hand ([`crate::wire`]): a commit encodes
/// one per changed sensor and window, and serde's call per value was most of the cost. The
/// engine writes the same bytes from its windows without this struct (tests compare).
#[cfg(test)]
pub(crate) fn encode_window_v3(window: &WindowSensorV3<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + window.open.len() * 128);
    write_window_v3_head(&mut out, &window.head, window.open.len());
    for open in &window.open {
        write_open_window_v3(
            &mut out,
            open.start_ms,
            open.fields.iter().map(|(name, acc)| (&**name, *acc)),
            open.counts.iter().map(|(tag, counts)| (&**tag, counts.iter().map(|(value, n)| (&**value, *n)))),
            open.other.iter().map(|(tag, n)| (&**tag, *n)),
        );
    }
    out
}

/// The bytes of a `WindowEnvelope::V3` entry up to its `n_open` open windows, each of which
/// [`write_open_window_v3`] then writes. The engine writes its windows' state through these
/// two straight from memory (`engine/window.rs`), without a [`WindowSensorV3`] in between.
pub(crate) fn write_window_v3_head(out: &mut Vec<u8>, head: &WindowHeadV3, n_open: usize) {
    // The envelope's variant index.
    out.push(2);
    wire::zigzag(out, head.length_ms);
    wire::zigzag(out, head.slide_ms);
    out.push(u8::from(head.processing_time));
    for time_ms in [head.max_ts_ms, head.floor_ms, head.last_activity_ms] {
        wire::option(out, time_ms, wire::zigzag);
    }
    wire::varint(out, head.late_seq);
    wire::len(out, n_open);
}

/// One [`OpenWindowV3`]: its fields' accumulators, its counts by tag and tag value, and its
/// `other` counts, each by name. The iterators are walked twice (their length first).
pub(crate) fn write_open_window_v3<'a, F, C, V, O>(
    out: &mut Vec<u8>,
    start_ms: i64,
    fields: F,
    counts: C,
    other: O,
) where
    F: Iterator<Item = (&'a str, AccV2)> + Clone,
    C: Iterator<Item = (&'a str, V)> + Clone,
    V: Iterator<Item = (&'a str, u64)> + Clone,
    O: Iterator<Item = (&'a str, u64)> + Clone,
{
    wire::zigzag(out, start_ms);
    wire::len(out, fields.clone().count());
    for (name, acc) in fields {
        wire::bytes(out, name.as_bytes());
        acc.write_postcard(out);
    }
    wire::len(out, counts.clone().count());
    for (tag, counts) in counts {
        wire::bytes(out, tag.as_bytes());
        write_named_counts(out, counts);
    }
    write_named_counts(out, other);
}

/// A list of (name, count) pairs.
fn write_named_counts<'a>(out: &mut Vec<u8>, counts: impl Iterator<Item = (&'a str, u64)> + Clone) {
    wire::len(out, counts.clone().count());
    for (name, n) in counts {
        wire::bytes(out, name.as_bytes());
        wire::varint(out, n);
    }
}

/// `encode(&BatchEnvelope::V2(batch))`, written by hand ([`crate::wire`]); the engine writes
/// its accumulators through [`encode_batch_v2_from`].
#[cfg(test)]
pub(crate) fn encode_batch_v2(batch: &BatchSensorV2) -> Vec<u8> {
    encode_batch_v2_from(batch.batch, batch.fields.iter().map(|(name, acc)| (name.as_str(), *acc)))
}

/// [`encode_batch_v2`] of a batch's fields given as (name, accumulator): the engine's
/// micro-batch writes its accumulators through it without a [`BatchSensorV2`] (and a `String`
/// per field name) in between. The iterator is walked twice (its length first).
pub(crate) fn encode_batch_v2_from<'a>(
    batch: u64,
    fields: impl Iterator<Item = (&'a str, AccV2)> + Clone,
) -> Vec<u8> {
    let n_fields = fields.clone().count();
    let mut out = Vec::with_capacity(16 + n_fields * 64);
    // The envelope's variant index.
    out.push(1);
    wire::varint(&mut out, batch);
    wire::len(&mut out, n_fields);
    for (name, acc) in fields {
        wire::bytes(&mut out, name.as_bytes());
        acc.write_postcard(&mut out);
    }
    out
}

/// postcard bytes of a stored value.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard serialises plain structs into memory without failing")
}

/// Decodes a stored value, refusing trailing bytes (a torn or foreign record).
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} trailing bytes", rest.len())),
        Err(error) => Err(format!("undecodable: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &[u8], expected: Result<StateKey<'_>, String>) {
        assert_eq!(parse_key(key), expected);
    }

    #[test]
    fn keys_round_trip() {
        check(META_KEY, Ok(StateKey::Meta));
        check(&batch_key("t-017"), Ok(StateKey::Batch { sensor: "t-017" }));
        check(&sensor_clock_key("t/017"), Ok(StateKey::SensorClock { sensor: "t/017" }));
        check(&window_key("temp_10s", "t/017"), Ok(StateKey::Window { window: "temp_10s", sensor: "t/017" }));
    }

    #[test]
    fn malformed_keys_are_errors() {
        check(b"", Err("unknown key".into()));
        check(b"x1", Err("unknown key".into()));
        check(b"b", Err("unknown key".into()));
        check(b"c", Err("unknown key".into()));
        check(b"w\x05abc", Err("window key too short".into()));
        check(b"w\x03abc", Err("window key too short".into()));
        check(b"b\xff", Err("key is not UTF-8".into()));
    }

    fn sample_acc() -> FieldAcc {
        let mut acc = FieldAcc::EMPTY;
        for (ts_ms, value) in [(30, 2.5), (10, -1.0), (20, 7.25)] {
            acc.add(ts_ms, value);
        }
        acc
    }

    #[test]
    fn stored_accumulator_keeps_exactly_the_parts_its_aggregates_read() {
        let acc = sample_acc();
        let all = AccParts::for_aggregates(&[
            Aggregate::Count,
            Aggregate::Sum,
            Aggregate::Min,
            Aggregate::Max,
            Aggregate::Mean,
            Aggregate::Stddev,
            Aggregate::First,
            Aggregate::Last,
        ]);
        assert_eq!(AccV2::store(&acc, all).load(all), Ok(acc));

        let mean = AccParts::for_aggregates(&[Aggregate::Count, Aggregate::Mean]);
        let stored = AccV2::store(&acc, mean);
        assert_eq!((stored.min, stored.welford, stored.first), (None, None, None));
        let loaded = stored.load(mean).unwrap();
        assert_eq!(
            loaded.stats().map(|s| (s.count, s.sum, s.mean)),
            acc.stats().map(|s| (s.count, s.sum, s.mean))
        );
        assert!(encode(&stored).len() < encode(&AccV2::store(&acc, all)).len() / 2);
        assert_eq!(stored.load(all), Err("stored state has no min (aggregates changed since)".to_owned()));
    }

    #[test]
    fn version_1_entries_still_decode() {
        let acc = sample_acc();
        let v1 = AccV1 {
            count: acc.count,
            n: acc.n,
            sum: acc.sum,
            min: acc.min,
            max: acc.max,
            mean: acc.mean,
            m2: acc.m2,
            first_ts: acc.first_ts,
            first: acc.first,
            last_ts: acc.last_ts,
            last: acc.last,
        };
        let window = WindowEnvelope::V1(WindowSensorV1 {
            length_ms: 10_000,
            slide_ms: 5000,
            processing_time: false,
            max_ts_ms: Some(30),
            floor_ms: None,
            last_activity_ms: Some(7),
            late_seq: 2,
            open: vec![OpenWindowV1 {
                start_ms: 0,
                fields: vec![("temp_c".into(), v1)],
                counts: vec![("mode".into(), vec![("heat".into(), 3)])],
            }],
        });
        let bytes = encode(&window);
        let decoded = decode_window(&bytes).unwrap();
        assert_eq!((decoded.head.length_ms, decoded.head.late_seq, decoded.open.len()), (10_000, 2, 1));
        assert_eq!(
            decoded.open[0].counts,
            vec![(String::from("mode").into(), vec![(String::from("heat").into(), 3)])]
        );
        let (name, stored) = decoded.open[0].fields[0].clone();
        assert_eq!(
            (&*name, stored.load(AccParts::for_aggregates(&[Aggregate::Stddev]))),
            ("temp_c", Ok(acc))
        );

        let batch = BatchEnvelope::V1(BatchSensorV1 { batch: 4, fields: vec![("temp_c".into(), v1)] });
        let decoded = decode_batch(&encode(&batch)).unwrap();
        assert_eq!(decoded.batch, 4);
        assert_eq!(decoded.fields[0].1.load(AccParts::for_aggregates(&[Aggregate::First])), Ok(acc));
    }

    #[test]
    fn tombstone_entries_round_trip() {
        check(&tombstone_key("s/1"), Ok(StateKey::Tombstone { sensor: "s/1" }));
        let tombstone = TombstoneV1 { forgotten_ms: 5, windows: vec![("w".into(), Some(10_000), 3)] };
        let decoded = decode_tombstone(&encode(&TombstoneEnvelope::V1(tombstone.clone()))).unwrap();
        assert_eq!(decoded, tombstone);
    }

    #[test]
    fn version_2_window_entry_decodes_with_empty_other_buckets() {
        let v2 = WindowSensorV2 {
            length_ms: 10,
            slide_ms: 5,
            processing_time: false,
            max_ts_ms: Some(7),
            floor_ms: None,
            last_activity_ms: Some(3),
            late_seq: 2,
            open: vec![OpenWindowV2 {
                start_ms: 5,
                fields: vec![],
                counts: vec![("mode".into(), vec![("heat".into(), 2)])],
            }],
        };
        let bytes = encode(&WindowEnvelope::V2(v2));
        let decoded = decode_window(&bytes).unwrap();
        assert_eq!((decoded.head.max_ts_ms, decoded.head.late_seq, decoded.open.len()), (Some(7), 2, 1));
        assert_eq!(
            decoded.open[0].counts,
            vec![(String::from("mode").into(), vec![(String::from("heat").into(), 2)])]
        );
        assert!(decoded.open[0].other.is_empty());
    }

    #[test]
    fn version_3_window_entries_keep_their_bytes_and_decode_borrowing_their_names() {
        // The layout V3 was written with before its names were [`Name`]s: owned strings.
        #[derive(Serialize)]
        enum OwnedEnvelope {
            #[allow(dead_code)]
            V1(WindowSensorV1),
            #[allow(dead_code)]
            V2(WindowSensorV2),
            V3(OwnedSensor),
        }
        #[derive(Serialize)]
        struct OwnedSensor {
            length_ms: i64,
            slide_ms: i64,
            processing_time: bool,
            max_ts_ms: Option<i64>,
            floor_ms: Option<i64>,
            last_activity_ms: Option<i64>,
            late_seq: u64,
            open: Vec<OwnedWindow>,
        }
        #[derive(Serialize)]
        struct OwnedWindow {
            start_ms: i64,
            fields: Vec<(String, AccV2)>,
            counts: Vec<(String, Vec<(String, u64)>)>,
            other: Vec<(String, u64)>,
        }
        let acc = AccV2::store(&sample_acc(), AccParts::for_aggregates(&[Aggregate::Mean]));
        let name = |text: &'static str| Name::borrowed(text);
        let borrowed = WindowSensorV3 {
            head: WindowHeadV3 {
                length_ms: 10_000,
                slide_ms: 5000,
                processing_time: false,
                max_ts_ms: Some(12_345),
                floor_ms: Some(5000),
                last_activity_ms: Some(99),
                late_seq: 4,
            },
            open: vec![OpenWindowV3 {
                start_ms: 5000,
                fields: vec![(name("temp_c"), acc), (name("humidity"), acc)],
                counts: vec![(name("mode"), vec![(name("cool"), 1), (name("heat ünï"), 7)])],
                other: vec![(name("mode"), 3)],
            }],
        };
        let owned_name = |name: &Name<'_>| name.to_string();
        let owned = OwnedEnvelope::V3(OwnedSensor {
            length_ms: borrowed.head.length_ms,
            slide_ms: borrowed.head.slide_ms,
            processing_time: borrowed.head.processing_time,
            max_ts_ms: borrowed.head.max_ts_ms,
            floor_ms: borrowed.head.floor_ms,
            last_activity_ms: borrowed.head.last_activity_ms,
            late_seq: borrowed.head.late_seq,
            open: borrowed
                .open
                .iter()
                .map(|window| OwnedWindow {
                    start_ms: window.start_ms,
                    fields: window.fields.iter().map(|(name, acc)| (owned_name(name), *acc)).collect(),
                    counts: window
                        .counts
                        .iter()
                        .map(|(tag, values)| {
                            (
                                owned_name(tag),
                                values.iter().map(|(value, n)| (owned_name(value), *n)).collect(),
                            )
                        })
                        .collect(),
                    other: window.other.iter().map(|(tag, n)| (owned_name(tag), *n)).collect(),
                })
                .collect(),
        });
        let borrowed = WindowEnvelope::V3(borrowed);
        let bytes = encode(&owned);
        assert_eq!(encode(&borrowed), bytes, "the stored bytes are those of owned strings");
        let decoded = decode_window(&bytes).unwrap();
        let WindowEnvelope::V3(expected) = borrowed else { unreachable!() };
        assert_eq!(decoded, expected);
        let names = decoded.open[0].fields.iter().map(|(name, _)| name).chain(
            decoded.open[0]
                .counts
                .iter()
                .flat_map(|(tag, values)| std::iter::once(tag).chain(values.iter().map(|(value, _)| value))),
        );
        for name in names {
            assert!(matches!(name.0, Cow::Borrowed(_)), "{name:?} is borrowed from the entry, not copied");
        }
    }

    #[test]
    fn version_2_engine_entry_decodes_with_no_count_by_overflow() {
        let v2 = MetaV2 {
            clock_ms: Some(5),
            batch_floor: 2,
            late_readings_total: 1,
            late_by_window: vec![],
            results_emitted_total: 3,
            batch_readings_deferred_total: 4,
            future_outliers_total: 6,
            future_outliers_dropped_total: 7,
        };
        let decoded = decode_meta(&encode(&MetaEnvelope::V2(v2.clone()))).unwrap();
        assert_eq!(decoded, MetaV3 { v2, count_by_overflow_total: 0 });
    }

    #[test]
    fn version_1_engine_entry_decodes_with_no_future_outliers() {
        let v1 = MetaV1 {
            clock_ms: Some(5),
            batch_floor: 2,
            late_readings_total: 1,
            late_by_window: vec![("w".into(), 1)],
            results_emitted_total: 3,
            batch_readings_deferred_total: 4,
        };
        let decoded = decode_meta(&encode(&MetaEnvelope::V1(v1))).unwrap();
        assert_eq!(decoded.count_by_overflow_total, 0);
        assert_eq!(
            decoded.v2,
            MetaV2 {
                clock_ms: Some(5),
                batch_floor: 2,
                late_readings_total: 1,
                late_by_window: vec![("w".into(), 1)],
                results_emitted_total: 3,
                batch_readings_deferred_total: 4,
                future_outliers_total: 0,
                future_outliers_dropped_total: 0,
            }
        );
    }

    #[test]
    fn sensor_clock_entry_round_trips() {
        let clock = SensorClockV1 {
            reference: Some((10, 20)),
            last_seen_ms: Some(21),
            streak: 2,
            streak_last_ts_ms: 99_000,
            held: vec![HeldReadingV1 {
                ingest_ms: 21,
                ts_ms: 99_000,
                values: vec![("temp_c".into(), 1.5)],
                tags: vec![("mode".into(), "heat".into())],
            }],
            offset_period: 0,
            offset_current_ms: Some(-10),
            offset_previous_ms: None,
        };
        assert_eq!(decode_sensor_clock(&encode(&SensorClockEnvelope::V1(clock.clone()))), Ok(clock));
    }

    #[test]
    fn decode_refuses_trailing_and_torn_bytes() {
        let meta = MetaEnvelope::V1(MetaV1 {
            clock_ms: Some(5),
            batch_floor: 2,
            late_readings_total: 1,
            late_by_window: vec![("w".into(), 1)],
            results_emitted_total: 3,
            batch_readings_deferred_total: 0,
        });
        let bytes = encode(&meta);
        assert_eq!(decode::<MetaEnvelope>(&bytes), Ok(meta));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode::<MetaEnvelope>(&longer), Err("1 trailing bytes".into()));
        assert!(decode::<MetaEnvelope>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode::<MetaEnvelope>(&[7]).is_err(), "unknown envelope version");
    }

    mod by_hand {
        use proptest::prelude::*;

        use super::super::*;

        fn float() -> impl Strategy<Value = f64> {
            prop_oneof![any::<f64>(), Just(-0.0), Just(f64::NAN), Just(f64::from_bits(0x7ff8_dead_beef_0001))]
        }

        fn acc() -> impl Strategy<Value = AccV2> {
            (
                any::<u64>(),
                prop::option::of(float()),
                prop::option::of(float()),
                prop::option::of(float()),
                prop::option::of((float(), float())),
                prop::option::of((any::<i64>(), float())),
                prop::option::of((any::<i64>(), float())),
            )
                .prop_map(|(count, sum, min, max, welford, first, last)| AccV2 {
                    count,
                    sum,
                    min,
                    max,
                    welford,
                    first,
                    last,
                })
        }

        /// Names long enough for lengths of two varint bytes, and any characters.
        fn name() -> impl Strategy<Value = Name<'static>> {
            prop_oneof!["[a-z_]{0,12}", "[a-z]{126,140}", ".{0,6}"].prop_map(Name::from)
        }

        fn counts() -> impl Strategy<Value = Vec<(Name<'static>, u64)>> {
            prop::collection::vec((name(), any::<u64>()), 0..4)
        }

        fn open_window() -> impl Strategy<Value = OpenWindowV3<'static>> {
            (
                any::<i64>(),
                prop::collection::vec((name(), acc()), 0..4),
                prop::collection::vec((name(), counts()), 0..3),
                counts(),
            )
                .prop_map(|(start_ms, fields, counts, other)| OpenWindowV3 {
                    start_ms,
                    fields,
                    counts,
                    other,
                })
        }

        proptest! {
            #[test]
            fn a_window_entry_written_by_hand_is_what_postcard_writes(
                times in (any::<i64>(), any::<i64>(), any::<bool>()),
                clocks in (any::<Option<i64>>(), any::<Option<i64>>(), any::<Option<i64>>()),
                late_seq in any::<u64>(),
                open in prop::collection::vec(open_window(), 0..4),
            ) {
                let (length_ms, slide_ms, processing_time) = times;
                let (max_ts_ms, floor_ms, last_activity_ms) = clocks;
                let window = WindowSensorV3 {
                    head: WindowHeadV3 {
                        length_ms,
                        slide_ms,
                        processing_time,
                        max_ts_ms,
                        floor_ms,
                        last_activity_ms,
                        late_seq,
                    },
                    open,
                };
                let by_hand = encode_window_v3(&window);
                prop_assert_eq!(&by_hand, &encode(&WindowEnvelope::V3(window.clone())));
                // Decoded and written again, the same bytes (NaN is not equal to itself).
                prop_assert_eq!(encode_window_v3(&decode_window(&by_hand).unwrap()), by_hand);
            }

            #[test]
            fn a_sensor_clock_entry_written_by_hand_is_what_postcard_writes(
                reference in any::<Option<(i64, i64)>>(),
                last_seen_ms in any::<Option<i64>>(),
                streak in (any::<u32>(), any::<i64>()),
                held in prop::collection::vec(
                    (
                        any::<(i64, i64)>(),
                        prop::collection::vec(("[a-z_]{0,140}", float()), 0..3),
                        prop::collection::vec(("[a-z_]{0,12}", ".{0,140}"), 0..3),
                    ),
                    0..3,
                ),
                offset in (any::<i64>(), any::<Option<i64>>(), any::<Option<i64>>()),
            ) {
                let clock = SensorClockV1 {
                    reference,
                    last_seen_ms,
                    streak: streak.0,
                    streak_last_ts_ms: streak.1,
                    held: held
                        .into_iter()
                        .map(|((ingest_ms, ts_ms), values, tags)| HeldReadingV1 { ingest_ms, ts_ms, values, tags })
                        .collect(),
                    offset_period: offset.0,
                    offset_current_ms: offset.1,
                    offset_previous_ms: offset.2,
                };
                let by_hand = encode_sensor_clock_v1(&clock);
                prop_assert_eq!(&by_hand, &encode(&SensorClockEnvelope::V1(clock.clone())));
                prop_assert_eq!(encode_sensor_clock_v1(&decode_sensor_clock(&by_hand).unwrap()), by_hand);
            }

            #[test]
            fn a_batch_entry_written_by_hand_is_what_postcard_writes(
                batch in any::<u64>(),
                fields in prop::collection::vec(("[a-z_]{0,140}", acc()), 0..5),
            ) {
                let stored = BatchSensorV2 { batch, fields };
                let by_hand = encode_batch_v2(&stored);
                prop_assert_eq!(&by_hand, &encode(&BatchEnvelope::V2(stored.clone())));
                prop_assert_eq!(encode_batch_v2(&decode_batch(&by_hand).unwrap()), by_hand);
            }
        }
    }
}
