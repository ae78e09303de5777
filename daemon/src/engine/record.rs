//! The records the engine emits and their public JSON contract, read by hubs and by Spark jobs.
//!
//! Every record is one JSON object with a `type` key first and an `id` key last. The id is
//! deterministic (a pure function of the engine's inputs), so a hub can drop the duplicates that
//! at-least-once delivery and crash recovery produce. Keys appear in a fixed order; only the
//! aggregates a window is configured with appear. Non-finite numbers (which validated input
//! cannot produce) are written as `null`.
//!
//! ```text
//! {"type":"window","window":"temp_10s","device":"gw-01","sensor":"t-017","field":"temp_c",
//!  "start":1700000000000,"end":1700000010000,"count":12,"sum":256.1,"min":20.9,"max":21.7,
//!  "mean":21.34,"id":"gw-01/temp_10s/t-017/temp_c/1700000000000"}
//! {"type":"window_counts","window":"mode_1m","device":"gw-01","sensor":"t-017","tag":"mode",
//!  "start":..,"end":..,"counts":{"cool":1,"heat":3},"id":"gw-01/mode_1m/t-017/mode/1700000000000"}
//! {"type":"window_counts",..,"counts":{"a":1,..},"other":7,"id":..}   (a tag past its cap)
//! {"type":"batch","batch":850000000,"device":"gw-01","sensor":"t-017","field":"temp_c",
//!  "start":..,"end":..,"count":..,"sum":..,"min":..,"max":..,"mean":..,
//!  "id":"gw-01/batch/t-017/temp_c/1700000000000"}
//! {"type":"late","window":"temp_10s","device":"gw-01","sensor":"t-017","ts":..,"watermark":..,
//!  "values":{"temp_c":21.3},"id":"gw-01/temp_10s/t-017/late/0"}
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::engine::Aggregate;

/// A closed window or micro-batch result.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultRecord {
    /// Aggregates of one field of one sensor over one window.
    Window(WindowRecord),
    /// Counts by tag value of one sensor over one window.
    WindowCounts(WindowCountsRecord),
    /// Aggregates of one field of one sensor over one micro-batch.
    Batch(BatchRecord),
}

/// The aggregates of one field, all of them computed; a record shows the configured ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FieldStats {
    /// Number of values (at least one: empty groups are not emitted).
    pub count: u64,
    /// Sum of the values, added in arrival order.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// `sum / count`, as Spark's `avg`.
    pub mean: f64,
    /// Sample standard deviation (Welford's method); `None` for fewer than two values.
    pub stddev: Option<f64>,
    /// Value with the smallest event time (the earliest arrival on ties).
    pub first: f64,
    /// Value with the largest event time (the latest arrival on ties).
    pub last: f64,
}

/// Aggregates of one field of one sensor over one window `[start_ms, end_ms)`.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRecord {
    /// The window's configured name.
    pub window: Arc<str>,
    /// The gateway id.
    pub device: Arc<str>,
    /// The sensor id.
    pub sensor: Arc<str>,
    /// The schema field name.
    pub field: Arc<str>,
    /// Window start, ms since the epoch (inclusive).
    pub start_ms: i64,
    /// Window end, ms since the epoch (exclusive).
    pub end_ms: i64,
    /// Which aggregates appear in the JSON, in output order.
    pub aggregates: Arc<[Aggregate]>,
    /// The aggregates.
    pub stats: FieldStats,
}

/// Counts by tag value of one sensor over one window (Spark's `countByValueAndWindow`).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCountsRecord {
    /// The window's configured name.
    pub window: Arc<str>,
    /// The gateway id.
    pub device: Arc<str>,
    /// The sensor id.
    pub sensor: Arc<str>,
    /// The schema tag name.
    pub tag: Arc<str>,
    /// Window start, ms since the epoch (inclusive).
    pub start_ms: i64,
    /// Window end, ms since the epoch (exclusive).
    pub end_ms: i64,
    /// Readings per tag value, sorted by value; readings without the tag are not counted. At
    /// most `engine.count_by_max_values` values for a tag whose schema lists no `values`.
    pub counts: Vec<(Arc<str>, u64)>,
    /// Readings whose value came after the window already counted `count_by_max_values`
    /// others (written as `"other"` after `counts`, only when not zero; a key of its own, so a
    /// tag value spelt `other` stays apart).
    pub other: u64,
}

/// Aggregates of one field of one sensor over one micro-batch (processing time).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRecord {
    /// The batch number: ingest time divided by the batch interval.
    pub batch: u64,
    /// The gateway id.
    pub device: Arc<str>,
    /// The sensor id.
    pub sensor: Arc<str>,
    /// The schema field name.
    pub field: Arc<str>,
    /// `batch · interval`, ms since the epoch (inclusive).
    pub start_ms: i64,
    /// `(batch + 1) · interval` (exclusive).
    pub end_ms: i64,
    /// The aggregates; a batch record shows count, sum, min, max and mean.
    pub stats: FieldStats,
}

/// A reading that arrived after a window it belongs to was emitted; it was not counted there.
#[derive(Debug, Clone, PartialEq)]
pub struct LateRecord {
    /// The window's configured name.
    pub window: Arc<str>,
    /// The gateway id.
    pub device: Arc<str>,
    /// The sensor id.
    pub sensor: Arc<str>,
    /// The reading's event time, ms since the epoch.
    pub ts_ms: i64,
    /// The watermark the reading was judged against (for processing-time windows: the
    /// processing clock).
    pub watermark_ms: i64,
    /// The reading's values of the window's fields (absent ones left out).
    pub values: Vec<(Arc<str>, f64)>,
    /// The number of late readings of this sensor for this window before this one; makes the
    /// id unique and deterministic.
    pub seq: u64,
}

impl ResultRecord {
    /// The deterministic id, unique per result: `device/window/sensor/field/start` for windows,
    /// `device/window/sensor/tag/start` for counts, `device/batch/sensor/field/start` for batches.
    /// The sensor part is percent-encoded (`%` → `%25`, `/` → `%2F`), since sensor ids are free
    /// text; the other parts are names the configuration restricts to `[A-Za-z0-9_.-]` (and
    /// `batch` is not allowed as a window name, nor `late` as a field or tag name).
    pub fn id(&self) -> String {
        Id(self).to_string()
    }

    /// `"window"` for windows and window counts, `"batch"` for micro-batches.
    pub fn kind(&self) -> &'static str {
        match self {
            ResultRecord::Window(_) | ResultRecord::WindowCounts(_) => "window",
            ResultRecord::Batch(_) => "batch",
        }
    }

    /// What [`ResultRecord::group_title`] depends on: records with equal keys have equal
    /// titles (a window close emits thousands of records of one window and slot).
    pub fn title_key(&self) -> TitleKey {
        match self {
            ResultRecord::Window(WindowRecord { window, start_ms, end_ms, .. })
            | ResultRecord::WindowCounts(WindowCountsRecord { window, start_ms, end_ms, .. }) => {
                TitleKey { window: Some(window.clone()), batch: 0, start_ms: *start_ms, end_ms: *end_ms }
            }
            ResultRecord::Batch(record) => TitleKey {
                window: None,
                batch: record.batch,
                start_ms: record.start_ms,
                end_ms: record.end_ms,
            },
        }
    }

    /// A human heading for the console, shared by all records of one window or batch:
    /// `Window temp_10s [2023-11-14 22:13:20.000, 2023-11-14 22:13:30.000)` or
    /// `Batch: 850000123 [2023-11-14 22:13:20.000, +2s)`, in UTC.
    pub fn group_title(&self) -> String {
        match self {
            ResultRecord::Window(WindowRecord { window, start_ms, end_ms, .. })
            | ResultRecord::WindowCounts(WindowCountsRecord { window, start_ms, end_ms, .. }) => {
                format!("Window {window} [{}, {})", format_utc_ms(*start_ms), format_utc_ms(*end_ms))
            }
            ResultRecord::Batch(record) => {
                let interval_ms = u64::try_from(record.end_ms.saturating_sub(record.start_ms)).unwrap_or(0);
                format!(
                    "Batch: {} [{}, +{})",
                    record.batch,
                    format_utc_ms(record.start_ms),
                    humantime::format_duration(Duration::from_millis(interval_ms))
                )
            }
        }
    }

    /// The record as one JSON object, without a trailing newline.
    ///
    /// Written by hand ([`JsonOut`]): the same bytes as its `Serialize` implementation through
    /// serde_json (a test compares them over hostile sensor ids and every aggregate), at about
    /// a third of the instructions — serde_json escaped every constant key, and the id went
    /// through `fmt::write` and an escaping adapter piece by piece (half of the cost). A
    /// window-close burst and a restart's replay write thousands of these at once.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = JsonOut(Vec::with_capacity(384));
        self.write_json(&mut out);
        out.0
    }

    fn write_json(&self, out: &mut JsonOut) {
        match self {
            ResultRecord::Window(WindowRecord { window, .. }) => {
                out.raw(r#"{"type":"window","window":"#);
                out.string(window);
            }
            ResultRecord::WindowCounts(WindowCountsRecord { window, .. }) => {
                out.raw(r#"{"type":"window_counts","window":"#);
                out.string(window);
            }
            ResultRecord::Batch(record) => {
                out.raw(r#"{"type":"batch","batch":"#);
                out.uint(record.batch);
            }
        }
        let subject = self.subject();
        out.subject(&subject);
        match self {
            ResultRecord::Window(record) => out.stats(&record.aggregates, &record.stats),
            ResultRecord::WindowCounts(record) => out.counts(&record.counts, record.other),
            ResultRecord::Batch(record) => out.stats(&BATCH_AGGREGATES, &record.stats),
        }
        out.id(&subject);
    }

    /// What every result record names after its first two keys, and its id is made of.
    fn subject(&self) -> Subject<'_> {
        let (device, id_lead, sensor, part, start_ms, end_ms) = match self {
            ResultRecord::Window(r) => {
                (&r.device, &*r.window, &r.sensor, ("field", &*r.field), r.start_ms, r.end_ms)
            }
            // A window-counts record is keyed by its tag.
            ResultRecord::WindowCounts(r) => {
                (&r.device, &*r.window, &r.sensor, ("tag", &*r.tag), r.start_ms, r.end_ms)
            }
            ResultRecord::Batch(r) => {
                (&r.device, "batch", &r.sensor, ("field", &*r.field), r.start_ms, r.end_ms)
            }
        };
        Subject { device, id_lead, sensor, part, start_ms, end_ms }
    }
}

/// A result record's device, sensor, field or tag (its key and name) and bounds, and the id's
/// second part (the window's name, or `batch`): the id is
/// `device/id_lead/sensor/part/start` ([`ResultRecord::id`]).
struct Subject<'a> {
    device: &'a str,
    id_lead: &'a str,
    sensor: &'a str,
    part: (&'static str, &'a str),
    start_ms: i64,
    end_ms: i64,
}

/// A JSON object written by hand into bytes, escaping as serde_json does.
struct JsonOut(Vec<u8>);

impl JsonOut {
    /// JSON text as it is (constant keys and punctuation).
    fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    /// `text` as a JSON string.
    fn string(&mut self, text: &str) {
        self.0.push(b'"');
        self.string_contents(text);
        self.0.push(b'"');
    }

    /// `text` escaped as inside a JSON string, without the quotes: as it is unless it holds a
    /// quote, a backslash or a control character (serde_json escapes nothing else); then
    /// serde_json's own escaping, so the bytes are the same whatever the text.
    fn string_contents(&mut self, text: &str) {
        if !text.bytes().any(|byte| byte < 0x20 || byte == b'"' || byte == b'\\') {
            self.0.extend_from_slice(text.as_bytes());
            return;
        }
        let quoted = serde_json::to_vec(text).expect("a string serialises into memory");
        self.0.extend_from_slice(&quoted[1..quoted.len() - 1]);
    }

    fn int(&mut self, value: i64) {
        use serde_json::ser::Formatter as _;
        // Writing into a Vec cannot fail.
        let _ = serde_json::ser::CompactFormatter.write_i64(&mut self.0, value);
    }

    fn uint(&mut self, value: u64) {
        use serde_json::ser::Formatter as _;
        let _ = serde_json::ser::CompactFormatter.write_u64(&mut self.0, value);
    }

    /// A finite `value` as serde_json writes an `f64` (its own formatter); `null` otherwise.
    fn float(&mut self, value: Option<f64>) {
        use serde_json::ser::Formatter as _;
        match value.and_then(finite) {
            Some(value) => {
                let _ = serde_json::ser::CompactFormatter.write_f64(&mut self.0, value);
            }
            None => self.raw("null"),
        }
    }

    /// `,"device":…,"sensor":…,"<field or tag>":…,"start":…,"end":…`.
    fn subject(&mut self, subject: &Subject<'_>) {
        self.raw(r#","device":"#);
        self.string(subject.device);
        self.raw(r#","sensor":"#);
        self.string(subject.sensor);
        self.raw(",\"");
        self.raw(subject.part.0);
        self.raw("\":");
        self.string(subject.part.1);
        self.raw(r#","start":"#);
        self.int(subject.start_ms);
        self.raw(r#","end":"#);
        self.int(subject.end_ms);
    }

    /// `,"counts":{…}` in their order, then `,"other":…` unless zero.
    fn counts(&mut self, counts: &[(Arc<str>, u64)], other: u64) {
        self.raw(r#","counts":{"#);
        for (n, (value, count)) in counts.iter().enumerate() {
            if n > 0 {
                self.raw(",");
            }
            self.string(value);
            self.raw(":");
            self.uint(*count);
        }
        self.raw("}");
        if other > 0 {
            self.raw(r#","other":"#);
            self.uint(other);
        }
    }

    /// `,"count":…` and the other configured aggregates, in their order.
    fn stats(&mut self, aggregates: &[Aggregate], stats: &FieldStats) {
        for aggregate in aggregates {
            self.raw(",\"");
            self.raw(aggregate.as_str());
            self.raw("\":");
            match aggregate {
                Aggregate::Count => self.uint(stats.count),
                Aggregate::Sum => self.float(Some(stats.sum)),
                Aggregate::Min => self.float(Some(stats.min)),
                Aggregate::Max => self.float(Some(stats.max)),
                Aggregate::Mean => self.float(Some(stats.mean)),
                Aggregate::Stddev => self.float(stats.stddev),
                Aggregate::First => self.float(Some(stats.first)),
                Aggregate::Last => self.float(Some(stats.last)),
            }
        }
    }

    /// `,"id":"…"}` ([`ResultRecord::id`], escaped piece by piece), closing the object.
    fn id(&mut self, subject: &Subject<'_>) {
        self.raw(r#","id":""#);
        self.string_contents(subject.device);
        self.0.push(b'/');
        self.string_contents(subject.id_lead);
        self.0.push(b'/');
        self.string_contents(&id_part(subject.sensor));
        self.0.push(b'/');
        self.string_contents(subject.part.1);
        self.0.push(b'/');
        self.int(subject.start_ms);
        self.raw("\"}");
    }
}

impl LateRecord {
    /// The window's configured name.
    pub fn window(&self) -> &str {
        &self.window
    }

    /// The deterministic id `device/window/sensor/late/seq`.
    pub fn id(&self) -> String {
        format!("{}/{}/{}/late/{}", self.device, self.window, id_part(&self.sensor), self.seq)
    }

    /// Always `"late"`.
    pub fn kind(&self) -> &'static str {
        "late"
    }

    /// A human heading for the console: `Late readings: temp_10s`.
    pub fn group_title(&self) -> String {
        format!("Late readings: {}", self.window)
    }

    /// The record as one JSON object, without a trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        to_json_bytes(self)
    }
}

fn to_json_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    // A window record with four aggregates is ~250 bytes: one allocation, no regrowth.
    let mut bytes = Vec::with_capacity(384);
    serde_json::to_writer(&mut bytes, value)
        .expect("records have string keys and serialise into memory, which cannot fail");
    bytes
}

/// `None` for NaN and infinities, which JSON cannot carry.
fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// Writes the configured aggregates of `stats` as map entries.
fn serialize_stats<M: SerializeMap>(
    map: &mut M,
    aggregates: &[Aggregate],
    stats: &FieldStats,
) -> Result<(), M::Error> {
    for aggregate in aggregates {
        let key = aggregate.as_str();
        match aggregate {
            Aggregate::Count => map.serialize_entry(key, &stats.count)?,
            Aggregate::Sum => map.serialize_entry(key, &finite(stats.sum))?,
            Aggregate::Min => map.serialize_entry(key, &finite(stats.min))?,
            Aggregate::Max => map.serialize_entry(key, &finite(stats.max))?,
            Aggregate::Mean => map.serialize_entry(key, &finite(stats.mean))?,
            Aggregate::Stddev => map.serialize_entry(key, &stats.stddev.and_then(finite))?,
            Aggregate::First => map.serialize_entry(key, &finite(stats.first))?,
            Aggregate::Last => map.serialize_entry(key, &finite(stats.last))?,
        }
    }
    Ok(())
}

/// The aggregates a batch record shows.
pub(crate) const BATCH_AGGREGATES: [Aggregate; 5] =
    [Aggregate::Count, Aggregate::Sum, Aggregate::Min, Aggregate::Max, Aggregate::Mean];

/// Serialises `pairs` as a JSON object, keeping their order.
struct OrderedObject<'a, V>(&'a [(Arc<str>, V)]);

impl<V: Copy + Into<JsonNumber>> Serialize for OrderedObject<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            match (*value).into() {
                JsonNumber::Count(count) => map.serialize_entry(&**key, &count)?,
                JsonNumber::Float(float) => map.serialize_entry(&**key, &finite(float))?,
            }
        }
        map.end()
    }
}

/// A number in an [`OrderedObject`].
enum JsonNumber {
    Count(u64),
    Float(f64),
}

impl From<u64> for JsonNumber {
    fn from(count: u64) -> JsonNumber {
        JsonNumber::Count(count)
    }
}

impl From<f64> for JsonNumber {
    fn from(float: f64) -> JsonNumber {
        JsonNumber::Float(float)
    }
}

impl Serialize for ResultRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self {
            ResultRecord::Window(record) => {
                map.serialize_entry("type", "window")?;
                map.serialize_entry("window", &*record.window)?;
                map.serialize_entry("device", &*record.device)?;
                map.serialize_entry("sensor", &*record.sensor)?;
                map.serialize_entry("field", &*record.field)?;
                map.serialize_entry("start", &record.start_ms)?;
                map.serialize_entry("end", &record.end_ms)?;
                serialize_stats(&mut map, &record.aggregates, &record.stats)?;
            }
            ResultRecord::WindowCounts(record) => {
                map.serialize_entry("type", "window_counts")?;
                map.serialize_entry("window", &*record.window)?;
                map.serialize_entry("device", &*record.device)?;
                map.serialize_entry("sensor", &*record.sensor)?;
                map.serialize_entry("tag", &*record.tag)?;
                map.serialize_entry("start", &record.start_ms)?;
                map.serialize_entry("end", &record.end_ms)?;
                map.serialize_entry("counts", &OrderedObject(&record.counts))?;
                if record.other > 0 {
                    map.serialize_entry("other", &record.other)?;
                }
            }
            ResultRecord::Batch(record) => {
                map.serialize_entry("type", "batch")?;
                map.serialize_entry("batch", &record.batch)?;
                map.serialize_entry("device", &*record.device)?;
                map.serialize_entry("sensor", &*record.sensor)?;
                map.serialize_entry("field", &*record.field)?;
                map.serialize_entry("start", &record.start_ms)?;
                map.serialize_entry("end", &record.end_ms)?;
                serialize_stats(&mut map, &BATCH_AGGREGATES, &record.stats)?;
            }
        }
        // Written straight into the JSON, without building the string.
        map.serialize_entry("id", &format_args!("{}", Id(self)))?;
        map.end()
    }
}

impl Serialize for LateRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(8))?;
        map.serialize_entry("type", "late")?;
        map.serialize_entry("window", &*self.window)?;
        map.serialize_entry("device", &*self.device)?;
        map.serialize_entry("sensor", &*self.sensor)?;
        map.serialize_entry("ts", &self.ts_ms)?;
        map.serialize_entry("watermark", &self.watermark_ms)?;
        map.serialize_entry("values", &OrderedObject(&self.values))?;
        map.serialize_entry("id", &self.id())?;
        map.end()
    }
}

/// A raw reading as forwarded with `forward_raw`:
/// `{"type":"raw","device","sensor","ts","values":{field: number},"tags":{tag: string},"id"}`,
/// absent values and tags left out. The id `device/raw/sensor/ts/logkey-index` is deterministic:
/// the reading's place in the durable log, the same on every replay.
pub fn raw_reading_json(
    spec: &crate::engine::EngineSpec,
    reading: &eddy_sensors::Reading,
    log_key: u64,
    reading_idx: usize,
) -> Vec<u8> {
    struct Raw<'a> {
        spec: &'a crate::engine::EngineSpec,
        reading: &'a eddy_sensors::Reading,
        id: String,
    }
    struct Values<'a>(&'a [String], &'a [Option<f64>]);
    impl Serialize for Values<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(None)?;
            for (name, value) in self.0.iter().zip(self.1) {
                if let Some(value) = value {
                    map.serialize_entry(name, &finite(*value))?;
                }
            }
            map.end()
        }
    }
    struct Tags<'a>(&'a [String], &'a [Option<Arc<str>>]);
    impl Serialize for Tags<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(None)?;
            for (name, value) in self.0.iter().zip(self.1) {
                if let Some(value) = value {
                    map.serialize_entry(name, &**value)?;
                }
            }
            map.end()
        }
    }
    impl Serialize for Raw<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(7))?;
            map.serialize_entry("type", "raw")?;
            map.serialize_entry("device", &self.spec.device_id)?;
            map.serialize_entry("sensor", &*self.reading.sensor)?;
            map.serialize_entry("ts", &self.reading.ts_ms)?;
            map.serialize_entry("values", &Values(&self.spec.field_names, &self.reading.values))?;
            map.serialize_entry("tags", &Tags(&self.spec.tag_names, &self.reading.tags))?;
            map.serialize_entry("id", &self.id)?;
            map.end()
        }
    }
    let id = format!(
        "{}/raw/{}/{}/{log_key}-{reading_idx}",
        spec.device_id,
        id_part(&reading.sensor),
        reading.ts_ms
    );
    to_json_bytes(&Raw { spec, reading, id })
}

/// A record's deterministic id ([`ResultRecord::id`]), formatted where it is written.
struct Id<'a>(&'a ResultRecord);

impl std::fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Subject { device, id_lead, sensor, part: (_, part), start_ms, .. } = self.0.subject();
        write!(f, "{device}/{id_lead}/{}/{part}/{start_ms}", id_part(sensor))
    }
}

/// The parts of a record its group title is made of ([`ResultRecord::title_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TitleKey {
    window: Option<Arc<str>>,
    batch: u64,
    start_ms: i64,
    end_ms: i64,
}

/// `2023-11-14 22:13:20.000` (UTC) for ms since the epoch.
pub fn format_utc_ms(epoch_ms: i64) -> String {
    const MS_PER_DAY: i64 = 86_400_000;
    let days = epoch_ms.div_euclid(MS_PER_DAY);
    let ms_of_day = epoch_ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let (hours, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
    let (minutes, rest) = (rest / 60_000, rest % 60_000);
    let (seconds, millis) = (rest / 1000, rest % 1000);
    format!("{year:04}-{month:02}-{day:02} {hours:02}:{minutes:02}:{seconds:02}.{millis:03}")
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01: Howard Hinnant's
/// `civil_from_days`, in i64 throughout so no day count overflows.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A free-text id component with `%` and `/` percent-encoded, so ids split unambiguously on `/`.
fn id_part(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains(['%', '/']) {
        std::borrow::Cow::Owned(text.replace('%', "%25").replace('/', "%2F"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> FieldStats {
        FieldStats {
            count: 12,
            sum: 256.1,
            min: 20.9,
            max: 21.7,
            mean: 21.34,
            stddev: None,
            first: 21.0,
            last: 21.5,
        }
    }

    fn window(aggregates: &[Aggregate]) -> ResultRecord {
        ResultRecord::Window(WindowRecord {
            window: "temp_10s".into(),
            device: "gw-01".into(),
            sensor: "t-017".into(),
            field: "temp_c".into(),
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_010_000,
            aggregates: aggregates.into(),
            stats: stats(),
        })
    }

    fn check(json: Vec<u8>, expected: &str) {
        assert_eq!(String::from_utf8(json).unwrap(), expected);
    }

    /// A record of `window` for `sensor` and `field` in the slot starting at `start_ms`.
    fn record_of(window: &str, sensor: &str, field: &str, start_ms: i64) -> ResultRecord {
        ResultRecord::Window(WindowRecord {
            window: window.into(),
            device: "gw-01".into(),
            sensor: sensor.into(),
            field: field.into(),
            start_ms,
            end_ms: start_ms + 10_000,
            aggregates: vec![Aggregate::Count].into(),
            stats: stats(),
        })
    }

    #[test]
    fn the_id_in_the_json_is_the_id_even_for_sensor_ids_that_need_escaping() {
        // Written into the JSON without building the string: percent-encoding and JSON
        // escaping must give what `id()` gives, escaped once.
        for sensor in ["t-017", "a/b%c", "quote\"in\\side", "tab\there", "ünï/cödé"] {
            let record = record_of("temp_10s", sensor, "temp_c", 1_700_000_000_000);
            let json: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
            assert_eq!(json["id"].as_str(), Some(record.id().as_str()), "sensor {sensor:?}");
        }
    }

    /// Any f64, the awkward ones often.
    fn any_float() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(-0.0),
            Just(1e21),
            Just(1e-7),
            Just(0.1 + 0.2),
            (-1000i32..1000).prop_map(|tenths| f64::from(tenths) / 10.0),
        ]
    }

    proptest::proptest! {
        /// The hand-written JSON is byte for byte what serde_json writes from the `Serialize`
        /// implementation (the contract's reference), for any sensor id, tag value, number
        /// and aggregate list.
        #[test]
        fn to_json_writes_what_serde_json_writes(
            sensor in "(?s).{0,12}",
            names in proptest::collection::vec("[A-Za-z0-9_.-]{1,8}", 4),
            tag_values in proptest::collection::vec(("(?s).{0,6}", proptest::prelude::any::<u64>()), 0..4),
            other in proptest::prop_oneof![proptest::strategy::Just(0u64), proptest::prelude::any::<u64>()],
            aggregate_idx in proptest::collection::vec(0usize..8, 0..9),
            values in proptest::collection::vec(any_float(), 7),
            count in proptest::prelude::any::<u64>(),
            stddev in proptest::option::of(any_float()),
            start_ms in proptest::prelude::any::<i64>(),
            end_ms in proptest::prelude::any::<i64>(),
            batch in proptest::prelude::any::<u64>(),
        ) {
            let all = [
                Aggregate::Count, Aggregate::Sum, Aggregate::Min, Aggregate::Max,
                Aggregate::Mean, Aggregate::Stddev, Aggregate::First, Aggregate::Last,
            ];
            let aggregates: Arc<[Aggregate]> = aggregate_idx.iter().map(|idx| all[*idx]).collect();
            let stats = FieldStats {
                count,
                sum: values[0],
                min: values[1],
                max: values[2],
                mean: values[3],
                stddev,
                first: values[4],
                last: values[5],
            };
            let records = [
                ResultRecord::Window(WindowRecord {
                    window: names[0].as_str().into(),
                    device: names[1].as_str().into(),
                    sensor: sensor.as_str().into(),
                    field: names[2].as_str().into(),
                    start_ms,
                    end_ms,
                    aggregates,
                    stats,
                }),
                ResultRecord::WindowCounts(WindowCountsRecord {
                    window: names[0].as_str().into(),
                    device: names[1].as_str().into(),
                    sensor: sensor.as_str().into(),
                    tag: names[3].as_str().into(),
                    start_ms,
                    end_ms,
                    counts: tag_values.iter().map(|(value, n)| (Arc::from(value.as_str()), *n)).collect(),
                    other,
                }),
                ResultRecord::Batch(BatchRecord {
                    batch,
                    device: names[1].as_str().into(),
                    sensor: sensor.as_str().into(),
                    field: names[2].as_str().into(),
                    start_ms,
                    end_ms,
                    stats,
                }),
            ];
            for record in &records {
                let reference = serde_json::to_vec(record).expect("serialises");
                proptest::prop_assert_eq!(
                    String::from_utf8(record.to_json()).expect("UTF-8"),
                    String::from_utf8(reference).expect("UTF-8")
                );
            }
        }
    }

    #[test]
    fn records_with_one_title_key_have_one_title() {
        let first = record_of("temp_10s", "t-017", "temp_c", 1_700_000_000_000);
        // Another sensor and field in the same slot: the same key and title.
        let same_slot = record_of("temp_10s", "t-018", "humidity", 1_700_000_000_000);
        assert_eq!(first.title_key(), same_slot.title_key());
        assert_eq!(first.group_title(), same_slot.group_title());
        // Another slot, another window: other keys, other titles.
        for other in [
            record_of("temp_10s", "t-017", "temp_c", 1_700_000_010_000),
            record_of("temp_1m", "t-017", "temp_c", 1_700_000_000_000),
        ] {
            assert_ne!(first.title_key(), other.title_key());
            assert_ne!(first.group_title(), other.group_title());
        }
    }

    #[test]
    fn window_record_shows_configured_aggregates_in_contract_order() {
        check(
            window(&[Aggregate::Count, Aggregate::Sum, Aggregate::Min, Aggregate::Max, Aggregate::Mean])
                .to_json(),
            r#"{"type":"window","window":"temp_10s","device":"gw-01","sensor":"t-017","field":"temp_c","start":1700000000000,"end":1700000010000,"count":12,"sum":256.1,"min":20.9,"max":21.7,"mean":21.34,"id":"gw-01/temp_10s/t-017/temp_c/1700000000000"}"#,
        );
    }

    #[test]
    fn window_record_writes_missing_stddev_as_null() {
        check(
            window(&[Aggregate::Stddev, Aggregate::First, Aggregate::Last]).to_json(),
            r#"{"type":"window","window":"temp_10s","device":"gw-01","sensor":"t-017","field":"temp_c","start":1700000000000,"end":1700000010000,"stddev":null,"first":21.0,"last":21.5,"id":"gw-01/temp_10s/t-017/temp_c/1700000000000"}"#,
        );
    }

    #[test]
    fn non_finite_numbers_become_null() {
        let mut record = window(&[Aggregate::Sum, Aggregate::Mean]);
        if let ResultRecord::Window(window) = &mut record {
            window.stats.sum = f64::INFINITY;
            window.stats.mean = f64::NAN;
        }
        let json = String::from_utf8(record.to_json()).unwrap();
        assert!(json.contains(r#""sum":null,"mean":null"#), "{json}");
    }

    #[test]
    fn window_counts_record_lists_counts_by_value() {
        let record = ResultRecord::WindowCounts(WindowCountsRecord {
            window: "mode_1m".into(),
            device: "gw-01".into(),
            sensor: "t-017".into(),
            tag: "mode".into(),
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_060_000,
            counts: vec![("cool".into(), 1), ("heat".into(), 3)],
            other: 0,
        });
        assert_eq!(record.kind(), "window");
        check(
            record.to_json(),
            r#"{"type":"window_counts","window":"mode_1m","device":"gw-01","sensor":"t-017","tag":"mode","start":1700000000000,"end":1700000060000,"counts":{"cool":1,"heat":3},"id":"gw-01/mode_1m/t-017/mode/1700000000000"}"#,
        );
    }

    #[test]
    fn window_counts_record_shows_its_other_bucket_after_the_counts() {
        let record = ResultRecord::WindowCounts(WindowCountsRecord {
            window: "mode_1m".into(),
            device: "gw-01".into(),
            sensor: "t-017".into(),
            tag: "mode".into(),
            start_ms: 0,
            end_ms: 60_000,
            counts: vec![("other".into(), 2)],
            other: 5,
        });
        check(
            record.to_json(),
            r#"{"type":"window_counts","window":"mode_1m","device":"gw-01","sensor":"t-017","tag":"mode","start":0,"end":60000,"counts":{"other":2},"other":5,"id":"gw-01/mode_1m/t-017/mode/0"}"#,
        );
    }

    #[test]
    fn batch_record_shows_its_five_aggregates_and_a_title_with_the_interval() {
        let record = ResultRecord::Batch(BatchRecord {
            batch: 850_000_000,
            device: "gw-01".into(),
            sensor: "t-017".into(),
            field: "temp_c".into(),
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_002_000,
            stats: stats(),
        });
        assert_eq!(record.kind(), "batch");
        assert_eq!(record.group_title(), "Batch: 850000000 [2023-11-14 22:13:20.000, +2s)");
        check(
            record.to_json(),
            r#"{"type":"batch","batch":850000000,"device":"gw-01","sensor":"t-017","field":"temp_c","start":1700000000000,"end":1700000002000,"count":12,"sum":256.1,"min":20.9,"max":21.7,"mean":21.34,"id":"gw-01/batch/t-017/temp_c/1700000000000"}"#,
        );
    }

    #[test]
    fn late_record_carries_values_watermark_and_sequence_id() {
        let record = LateRecord {
            window: "temp_10s".into(),
            device: "gw-01".into(),
            sensor: "t-017".into(),
            ts_ms: 1_700_000_009_745,
            watermark_ms: 1_700_000_040_000,
            values: vec![("temp_c".into(), 21.3)],
            seq: 4,
        };
        assert_eq!(record.kind(), "late");
        assert_eq!(record.group_title(), "Late readings: temp_10s");
        check(
            record.to_json(),
            r#"{"type":"late","window":"temp_10s","device":"gw-01","sensor":"t-017","ts":1700000009745,"watermark":1700000040000,"values":{"temp_c":21.3},"id":"gw-01/temp_10s/t-017/late/4"}"#,
        );
    }

    #[test]
    fn window_title_names_window_and_utc_bounds() {
        assert_eq!(
            window(&[Aggregate::Count]).group_title(),
            "Window temp_10s [2023-11-14 22:13:20.000, 2023-11-14 22:13:30.000)"
        );
    }

    #[test]
    fn utc_formatting_handles_epoch_leap_days_and_negative_times() {
        assert_eq!(format_utc_ms(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_utc_ms(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(format_utc_ms(-1), "1969-12-31 23:59:59.999");
        assert_eq!(format_utc_ms(1_700_000_000_000), "2023-11-14 22:13:20.000");
    }

    #[test]
    fn sensor_ids_with_slashes_or_percent_signs_give_unambiguous_ids() {
        assert_eq!(super::id_part("t-017"), "t-017");
        assert_eq!(super::id_part("floor/2/t-1"), "floor%2F2%2Ft-1");
        assert_eq!(super::id_part("100%/x"), "100%25%2Fx");
        assert_ne!(super::id_part("a/b"), super::id_part("a%2Fb"));
    }
}
