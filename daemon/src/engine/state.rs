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
//! | `w` + name length (1 byte) + window name + sensor | [`WindowEnvelope`] | watermark, last activity, late sequence and open windows of one sensor in one window |
//!
//! postcard is not self-describing: a stored type never changes, a new layout is a new
//! envelope variant (`V2`) and the decoder keeps reading `V1`. Fields and tags are stored by
//! name, not schema index, so a reordered schema restores correctly.

use serde::{Deserialize, Serialize};

use crate::engine::acc::FieldAcc;

/// The key of the engine-wide entry.
pub(crate) const META_KEY: &[u8] = b"e";
const BATCH_PREFIX: u8 = b'b';
const WINDOW_PREFIX: u8 = b'w';

/// A decoded key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateKey<'a> {
    Meta,
    Batch { sensor: &'a str },
    Window { window: &'a str, sensor: &'a str },
}

/// The key of one sensor's micro-batch accumulators.
pub(crate) fn batch_key(sensor: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + sensor.len());
    key.push(BATCH_PREFIX);
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

/// Decodes a key written by [`batch_key`], [`window_key`] or [`META_KEY`].
pub(crate) fn parse_key(key: &[u8]) -> Result<StateKey<'_>, String> {
    match key.split_first() {
        Some((&b'e', [])) => Ok(StateKey::Meta),
        Some((&BATCH_PREFIX, sensor)) if !sensor.is_empty() => Ok(StateKey::Batch { sensor: utf8(sensor)? }),
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BatchSensorV1 {
    pub(crate) batch: u64,
    /// Non-empty accumulators by field name.
    pub(crate) fields: Vec<(String, AccV1)>,
}

/// One sensor's state in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum WindowEnvelope {
    V1(WindowSensorV1),
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

impl From<&FieldAcc> for AccV1 {
    fn from(acc: &FieldAcc) -> AccV1 {
        AccV1 {
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
        }
    }
}

impl From<AccV1> for FieldAcc {
    fn from(acc: AccV1) -> FieldAcc {
        FieldAcc {
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
        }
    }
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
        check(&window_key("temp_10s", "t/017"), Ok(StateKey::Window { window: "temp_10s", sensor: "t/017" }));
    }

    #[test]
    fn malformed_keys_are_errors() {
        check(b"", Err("unknown key".into()));
        check(b"x1", Err("unknown key".into()));
        check(b"b", Err("unknown key".into()));
        check(b"w\x05abc", Err("window key too short".into()));
        check(b"w\x03abc", Err("window key too short".into()));
        check(b"b\xff", Err("key is not UTF-8".into()));
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
}
