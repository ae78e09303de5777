//! The readings of a log chunk stored by column (format `ReadingColumnsV1`, in log envelope
//! `Lz4V3`): a sensor dictionary, timestamp deltas, one column per field with decimal values
//! as small integers, one column per tag over a dictionary. Flash wear is bytes written, and
//! a chunk's readings are most of them: this takes a thermostat reading from ~40 to ~10 bytes
//! before LZ4. Every value decodes to the very bits it had (`-0.0`, NaN payloads, subnormals
//! included): a value is stored as a decimal only if it reads back bit for bit.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use eddy_sensors::Reading;
use foldhash::fast::RandomState;
use serde::{Deserialize, Serialize};

use crate::storage::stored::ReadingV1;
use crate::wire;

/// Decimal places tried for a value, most to least compact.
const MAX_SCALE: usize = 4;
/// `10^scale` for each scale.
const POWERS_OF_TEN: [f64; MAX_SCALE + 1] = [1.0, 10.0, 100.0, 1000.0, 10_000.0];
/// Mantissas at most this large (2^53) are exact in an f64.
const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

/// A chunk's readings by column. Field and tag columns follow the chunk's `field_names` and
/// `tag_names`; every column has one entry per reading.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReadingColumnsV1 {
    /// Distinct sensor ids, in order of first appearance.
    sensors: Vec<String>,
    /// Per reading, its index in `sensors`.
    sensor_idx: Vec<u32>,
    /// Per reading, its timestamp minus the previous reading's (the first: minus 0).
    ts_delta_ms: Vec<i64>,
    /// Per field, per reading.
    fields: Vec<Vec<StoredValue>>,
    /// Distinct tag values of all tag columns, in order of first appearance.
    tag_values: Vec<String>,
    /// Per tag, per reading: 0 when absent, else 1 + its index in `tag_values`.
    tags: Vec<Vec<u32>>,
}

/// The borrowed twin of [`ReadingColumnsV1`], for encoding: its dictionaries borrow the
/// readings' ids and tags instead of copying each into a `String`. Same serialized layout
/// (postcard writes a `&str` as it writes a `String`; the round-trip tests decode one into
/// the other).
#[derive(Debug, Default, Serialize)]
pub(crate) struct ReadingColumnsV1Ref<'a> {
    sensors: Vec<&'a str>,
    sensor_idx: Vec<u32>,
    ts_delta_ms: Vec<i64>,
    fields: Vec<Vec<StoredValue>>,
    tag_values: Vec<&'a str>,
    tags: Vec<Vec<u32>>,
}

/// One field's value. postcard writes the variant as one byte and an integer as a zigzag
/// varint, so `21.5` is 3 bytes (`D1(215)`) instead of an `Option<f64>`'s 9.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) enum StoredValue {
    Absent,
    /// The value is this integer.
    D0(i64),
    /// The value is this integer / 10.
    D1(i64),
    /// … / 100.
    D2(i64),
    /// … / 1000.
    D3(i64),
    /// … / 10000.
    D4(i64),
    /// Any other value, as its bits.
    F64(f64),
}

impl StoredValue {
    fn encode(value: Option<f64>) -> StoredValue {
        let Some(value) = value else { return StoredValue::Absent };
        for (scale, power) in POWERS_OF_TEN.iter().enumerate() {
            let scaled = value * power;
            if !(scaled.abs() <= MAX_EXACT && scaled.fract() == 0.0) {
                continue;
            }
            // In range by the check above, and integral: the cast is exact.
            #[allow(clippy::cast_possible_truncation)]
            let mantissa = scaled as i64;
            let decimal = StoredValue::decimal(scale, mantissa);
            if decimal.decode().map(f64::to_bits) == Some(value.to_bits()) {
                return decimal;
            }
        }
        StoredValue::F64(value)
    }

    fn decimal(scale: usize, mantissa: i64) -> StoredValue {
        match scale {
            0 => StoredValue::D0(mantissa),
            1 => StoredValue::D1(mantissa),
            2 => StoredValue::D2(mantissa),
            3 => StoredValue::D3(mantissa),
            _ => StoredValue::D4(mantissa),
        }
    }

    fn decode(self) -> Option<f64> {
        // Mantissas come from `encode` (at most 2^53) or from a damaged store, where a wrong
        // value is no worse than any other bit flip inside the checksummed envelope.
        #[allow(clippy::cast_precision_loss)]
        let scaled = |mantissa: i64, scale: usize| mantissa as f64 / POWERS_OF_TEN[scale];
        match self {
            StoredValue::Absent => None,
            StoredValue::D0(mantissa) => Some(scaled(mantissa, 0)),
            StoredValue::D1(mantissa) => Some(scaled(mantissa, 1)),
            StoredValue::D2(mantissa) => Some(scaled(mantissa, 2)),
            StoredValue::D3(mantissa) => Some(scaled(mantissa, 3)),
            StoredValue::D4(mantissa) => Some(scaled(mantissa, 4)),
            StoredValue::F64(value) => Some(value),
        }
    }
}

impl<'a> ReadingColumnsV1Ref<'a> {
    /// The columns of `readings`, each with `n_fields` values and `n_tags` tags.
    pub(crate) fn encode(readings: &'a [Reading], n_fields: usize, n_tags: usize) -> ReadingColumnsV1Ref<'a> {
        let mut columns = ReadingColumnsV1Ref {
            sensor_idx: Vec::with_capacity(readings.len()),
            ts_delta_ms: Vec::with_capacity(readings.len()),
            fields: (0..n_fields).map(|_| Vec::with_capacity(readings.len())).collect(),
            tags: (0..n_tags).map(|_| Vec::with_capacity(readings.len())).collect(),
            ..ReadingColumnsV1Ref::default()
        };
        // The text of a sensor id hashed with foldhash (seeded per process; the map lives for
        // one chunk of at most a few thousand readings): with SipHash this map was ~2 % of the
        // daemon's CPU, since a chunk of 512 readings from 1,000 sensors meets most ids once.
        let mut sensor_ids: HashMap<&str, u32, RandomState> =
            HashMap::with_capacity_and_hasher(readings.len(), RandomState::default());
        // Sources hand over the registry's shared id, so readings of a sensor met before in
        // the chunk find it by the address of its text, hashed in a multiplication.
        let mut sensor_by_address: HashMap<usize, u32, BuildHasherDefault<AddressHasher>> =
            HashMap::with_capacity_and_hasher(readings.len(), BuildHasherDefault::default());
        let mut tag_ids: HashMap<&str, u32, RandomState> = HashMap::default();
        let mut previous_ts = 0i64;
        for reading in readings {
            let sensor = *sensor_by_address
                .entry(Arc::as_ptr(&reading.sensor).cast::<u8>().addr())
                .or_insert_with(|| {
                    let next_sensor = index(columns.sensors.len());
                    *sensor_ids.entry(&reading.sensor).or_insert_with(|| {
                        columns.sensors.push(&reading.sensor);
                        next_sensor
                    })
                });
            columns.sensor_idx.push(sensor);
            columns.ts_delta_ms.push(reading.ts_ms.wrapping_sub(previous_ts));
            previous_ts = reading.ts_ms;
            for (idx, column) in columns.fields.iter_mut().enumerate() {
                column.push(StoredValue::encode(reading.values.get(idx).copied().flatten()));
            }
            for (idx, column) in columns.tags.iter_mut().enumerate() {
                let id = match reading.tags.get(idx).and_then(Option::as_deref) {
                    None => 0,
                    Some(tag) => {
                        let next_tag = index(columns.tag_values.len()) + 1;
                        *tag_ids.entry(tag).or_insert_with(|| {
                            columns.tag_values.push(tag);
                            next_tag
                        })
                    }
                };
                column.push(id);
            }
        }
        columns
    }
}

impl ReadingColumnsV1Ref<'_> {
    /// Appends the columns' postcard bytes to `out`, as the derived `Serialize` writes them.
    pub(crate) fn write_postcard(&self, out: &mut Vec<u8>) {
        wire::len(out, self.sensors.len());
        for sensor in &self.sensors {
            wire::bytes(out, sensor.as_bytes());
        }
        wire::len(out, self.sensor_idx.len());
        for idx in &self.sensor_idx {
            wire::varint(out, u64::from(*idx));
        }
        wire::len(out, self.ts_delta_ms.len());
        for delta in &self.ts_delta_ms {
            wire::zigzag(out, *delta);
        }
        wire::len(out, self.fields.len());
        for column in &self.fields {
            wire::len(out, column.len());
            for value in column {
                // The variant's index, then its content.
                let (variant, mantissa) = match *value {
                    StoredValue::Absent => (0, None),
                    StoredValue::D0(mantissa) => (1, Some(mantissa)),
                    StoredValue::D1(mantissa) => (2, Some(mantissa)),
                    StoredValue::D2(mantissa) => (3, Some(mantissa)),
                    StoredValue::D3(mantissa) => (4, Some(mantissa)),
                    StoredValue::D4(mantissa) => (5, Some(mantissa)),
                    StoredValue::F64(value) => {
                        out.push(6);
                        wire::f64(out, value);
                        continue;
                    }
                };
                out.push(variant);
                if let Some(mantissa) = mantissa {
                    wire::zigzag(out, mantissa);
                }
            }
        }
        wire::len(out, self.tag_values.len());
        for value in &self.tag_values {
            wire::bytes(out, value.as_bytes());
        }
        wire::len(out, self.tags.len());
        for column in &self.tags {
            wire::len(out, column.len());
            for id in column {
                wire::varint(out, u64::from(*id));
            }
        }
    }
}

impl ReadingColumnsV1 {
    /// The readings back, in the stored (positional) form; an index out of its dictionary
    /// or a column of the wrong length is an error (a damaged value).
    pub(crate) fn decode(self) -> Result<Vec<ReadingV1>, String> {
        let n = self.sensor_idx.len();
        let columns_agree = self.ts_delta_ms.len() == n
            && self.fields.iter().all(|column| column.len() == n)
            && self.tags.iter().all(|column| column.len() == n);
        if !columns_agree {
            return Err(format!("reading columns of unequal length ({n} sensors)"));
        }
        let sensors: Vec<Arc<str>> = self.sensors.into_iter().map(Arc::from).collect();
        let mut readings = Vec::with_capacity(n);
        let mut ts_ms = 0i64;
        for (row, (sensor, delta)) in self.sensor_idx.iter().zip(&self.ts_delta_ms).enumerate() {
            let sensor = usize::try_from(*sensor).ok().and_then(|idx| sensors.get(idx));
            let sensor = sensor.ok_or_else(|| format!("sensor index out of range in row {row}"))?;
            ts_ms = ts_ms.wrapping_add(*delta);
            let mut tags = Vec::with_capacity(self.tags.len());
            for column in &self.tags {
                tags.push(match column[row] {
                    0 => None,
                    id => {
                        let value = usize::try_from(id - 1).ok().and_then(|idx| self.tag_values.get(idx));
                        Some(value.ok_or_else(|| format!("tag index out of range in row {row}"))?.clone())
                    }
                });
            }
            readings.push(ReadingV1 {
                sensor: sensor.to_string(),
                ts_ms,
                values: self.fields.iter().map(|column| column[row].decode()).collect(),
                tags,
            });
        }
        Ok(readings)
    }
}

/// Hashes an address (of a sensor id every reading of the chunk holds alive, so no two
/// distinct ids share one): a multiplication, its high bits folded down, since addresses are
/// aligned and hashbrown picks buckets by the low bits.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(self.0 ^ u64::from(*byte));
        }
    }

    fn write_usize(&mut self, address: usize) {
        self.write_u64(u64::try_from(address).unwrap_or(u64::MAX));
    }

    fn write_u64(&mut self, value: u64) {
        let product = value.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = product ^ (product >> 29);
    }
}

/// A dictionary index: a chunk holds at most a few thousand readings.
fn index(len: usize) -> u32 {
    u32::try_from(len).expect("a log chunk holds fewer than 2^32 distinct ids")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use eddy_sensors::Reading;
    use proptest::prelude::*;

    use crate::storage::columns::{ReadingColumnsV1, ReadingColumnsV1Ref, StoredValue};
    use crate::storage::stored::{
        encode_log_chunk, encode_log_chunk_v2, LogChunkV2Ref, LogChunkV3Ref, ReadingsRef,
    };

    fn value_strategy() -> impl Strategy<Value = Option<f64>> {
        prop_oneof![
            Just(None),
            any::<f64>().prop_map(Some),
            (-100_000i32..100_000, 0i32..6).prop_map(|(m, s)| Some(f64::from(m) / 10f64.powi(s))),
            Just(Some(-0.0)),
            Just(Some(f64::NAN)),
            Just(Some(f64::from_bits(0x7ff8_dead_beef_0001))),
            Just(Some(f64::MIN_POSITIVE / 2.0)),
            Just(Some(f64::INFINITY)),
            Just(Some(9_007_199_254_740_993.0)),
        ]
    }

    fn reading_strategy() -> impl Strategy<Value = Reading> {
        (
            "[a-c]{1,2}",
            any::<i64>(),
            prop::collection::vec(value_strategy(), 3),
            prop::collection::vec(prop::option::of("[xy]{0,2}"), 2),
        )
            .prop_map(|(sensor, ts_ms, values, tags)| Reading {
                sensor: Arc::from(sensor),
                ts_ms,
                values: values.into(),
                tags: tags.into_iter().map(|tag| tag.map(Arc::from)).collect(),
            })
    }

    proptest! {
        #[test]
        fn a_log_chunk_written_by_hand_is_what_postcard_writes(
            readings in prop::collection::vec(reading_strategy(), 0..300),
            long_sensors in prop::collection::vec("[a-z]{120,140}", 0..3),
            ingest_ms in any::<i64>(),
            batch in any::<u64>(),
            field_names in prop::collection::vec("[a-z_]{0,140}", 0..4),
            tag_names in prop::collection::vec("[a-z]{0,8}", 0..3),
            marks in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..200), any::<Option<u64>>()), 0..5),
        ) {
            let mut readings = readings;
            // Ids and dictionaries long enough for lengths of two varint bytes.
            for (idx, sensor) in long_sensors.iter().enumerate() {
                if let Some(reading) = readings.get_mut(idx * 7) {
                    reading.sensor = Arc::from(sensor.as_str());
                }
            }
            let columns = ReadingColumnsV1Ref::encode(&readings, 3, 2);
            let chunk = LogChunkV3Ref {
                ingest_ms,
                batch,
                field_names: &field_names,
                tag_names: &tag_names,
                readings: &columns,
                marks: &marks,
            };
            let mut by_hand = Vec::new();
            chunk.write_postcard(&mut by_hand);
            prop_assert_eq!(by_hand, postcard::to_allocvec(&chunk).unwrap());
        }

        #[test]
        fn readings_round_trip_bit_for_bit(readings in prop::collection::vec(reading_strategy(), 0..40)) {
            let columns = ReadingColumnsV1Ref::encode(&readings, 3, 2);
            let bytes = postcard::to_allocvec(&columns).unwrap();
            let owned = postcard::from_bytes::<ReadingColumnsV1>(&bytes).unwrap();
            // The borrowed encoding is byte for byte what the owned form writes.
            prop_assert_eq!(&postcard::to_allocvec(&owned).unwrap(), &bytes);
            let decoded = owned.decode().unwrap();
            prop_assert_eq!(decoded.len(), readings.len());
            for (got, want) in decoded.iter().zip(&readings) {
                prop_assert_eq!(&got.sensor, &*want.sensor);
                prop_assert_eq!(got.ts_ms, want.ts_ms);
                let bits = |values: &[Option<f64>]| values.iter().map(|v| v.map(f64::to_bits)).collect::<Vec<_>>();
                prop_assert_eq!(bits(&got.values), bits(&want.values));
                let tags: Vec<Option<String>> = want.tags.iter().map(|t| t.as_deref().map(str::to_owned)).collect();
                prop_assert_eq!(&got.tags, &tags);
            }
        }
    }

    #[test]
    fn decimals_take_the_smallest_exact_scale_and_the_rest_their_bits() {
        assert_eq!(StoredValue::encode(Some(21.0)), StoredValue::D0(21));
        assert_eq!(StoredValue::encode(Some(21.5)), StoredValue::D1(215));
        assert_eq!(StoredValue::encode(Some(-3.25)), StoredValue::D2(-325));
        assert_eq!(StoredValue::encode(Some(0.1)), StoredValue::D1(1));
        assert_eq!(StoredValue::encode(None), StoredValue::Absent);
        assert!(
            matches!(StoredValue::encode(Some(-0.0)), StoredValue::F64(v) if v.to_bits() == (-0.0f64).to_bits())
        );
        assert!(matches!(StoredValue::encode(Some(std::f64::consts::PI)), StoredValue::F64(_)));
        assert!(matches!(StoredValue::encode(Some(f64::NAN)), StoredValue::F64(_)));
    }

    #[test]
    fn thermostat_readings_take_a_third_of_the_row_format_or_less() {
        let readings: Vec<Reading> = (0..512)
            .map(|idx| Reading {
                sensor: Arc::from(format!("thermostat-{:04}", idx % 100)),
                ts_ms: 1_764_000_000_000 + idx * 10,
                values: smallvec::smallvec![
                    Some(20.0 + (idx % 37) as f64 / 10.0),
                    Some(40.0 + (idx % 11) as f64),
                    None
                ],
                tags: smallvec::smallvec![Some(Arc::from(if idx % 3 == 0 { "heat" } else { "idle" }))],
            })
            .collect();
        let (fields, tags) =
            (vec!["temp_c".to_owned(), "humidity".to_owned(), "co2".to_owned()], vec!["mode".to_owned()]);
        let columns = ReadingColumnsV1Ref::encode(&readings, 3, 1);
        let v3 = encode_log_chunk(&LogChunkV3Ref {
            ingest_ms: 1,
            batch: 1,
            field_names: &fields,
            tag_names: &tags,
            readings: &columns,
            marks: &[],
        })
        .unwrap();
        let v2 = encode_log_chunk_v2(&LogChunkV2Ref {
            ingest_ms: 1,
            batch: 1,
            field_names: &fields,
            tag_names: &tags,
            readings: ReadingsRef(&readings),
            marks: &[],
        })
        .unwrap();
        let per_reading = |bytes: &[u8]| bytes.len() as f64 / readings.len() as f64;
        assert!(
            per_reading(&v3) * 3.0 <= per_reading(&v2),
            "columns {:.1} bytes per reading, rows {:.1}",
            per_reading(&v3),
            per_reading(&v2)
        );
    }

    /// The owned form of encoded columns, as decoding reads them back.
    fn owned(columns: &ReadingColumnsV1Ref<'_>) -> ReadingColumnsV1 {
        postcard::from_bytes(&postcard::to_allocvec(columns).unwrap()).unwrap()
    }

    #[test]
    fn a_damaged_index_is_an_error() {
        let readings = [Reading {
            sensor: Arc::from("a"),
            ts_ms: 1,
            values: smallvec::smallvec![Some(1.0)],
            tags: smallvec::smallvec![None],
        }];
        let mut columns = owned(&ReadingColumnsV1Ref::encode(&readings, 1, 1));
        columns.sensor_idx[0] = 7;
        assert!(columns.decode().is_err());
        let mut columns = owned(&ReadingColumnsV1Ref::encode(&readings, 1, 1));
        columns.tags[0][0] = 9;
        assert!(columns.decode().is_err());
        let mut columns = owned(&ReadingColumnsV1Ref::encode(&readings, 1, 1));
        columns.fields[0].clear();
        assert!(columns.decode().is_err());
    }
}
