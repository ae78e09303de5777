//! Line parsers: JSON lines, CSV and InfluxDB line protocol into validated [`Reading`]s.
//!
//! The steps every format shares (terminator, length, UTF-8, blank lines) and the fixed order
//! of the value checks live here, documented on [`LineParser::parse`]; each format has its
//! own file (`json.rs`, `csv.rs`, `influx.rs`) describing its syntax.

mod config;
mod csv;
mod influx;
mod json;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use eddy_common::GatewayClock;

use crate::reading::{Reading, Tags, Values, MAX_SENSOR_BYTES};
use crate::registry::{AdmittedSensors, SensorRegistry};
use crate::reject::{RejectReason, Rejection};
use crate::schema::{InternedTags, Schema};
use crate::stats::SourceStats;

pub(crate) use crate::parse::config::format_from_keys;

/// The wire format of a source's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (the default).
    Json,
    /// `sensor,ts,field1[,field2...]` in schema field order, for dumb serial devices.
    Csv,
    /// InfluxDB line protocol; the timestamp unit is given.
    Influx(TsPrecision),
}

/// Unit of an InfluxDB line-protocol timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsPrecision {
    /// Nanoseconds (InfluxDB's default).
    Nanoseconds,
    /// Microseconds.
    Microseconds,
    /// Milliseconds.
    Milliseconds,
    /// Seconds.
    Seconds,
}

/// Limits every parser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted line, in bytes, without its line terminator.
    pub max_line_bytes: usize,
    /// How far an event time may lie ahead of the gateway clock.
    pub max_future: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_line_bytes: 4096, max_future: Duration::from_secs(300) }
    }
}

/// A stateless, shareable parser for one format and schema.
#[derive(Debug)]
pub struct LineParser {
    format: Format,
    schema: Arc<Schema>,
    interned: InternedTags,
    limits: Limits,
    /// Whether the gateway's wall clock can judge "too far in the future".
    clock: GatewayClock,
}

/// A parsed line before its sensor id is admitted by the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    /// The sensor id (already checked: non-empty, at most 64 bytes).
    pub sensor: String,
    /// Event time, ms since the epoch.
    pub ts_ms: i64,
    /// One slot per schema field.
    pub values: Values,
    /// One slot per schema tag.
    pub tags: Tags,
}

/// A parsed line whose sensor id may still borrow from the line: what the format parsers
/// return, so that [`LineDecoder`] admits the id without allocating a `String` per line.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub(crate) sensor: std::borrow::Cow<'a, str>,
    pub(crate) ts_ms: i64,
    pub(crate) values: Values,
    pub(crate) tags: Tags,
}

impl Parsed<'_> {
    fn into_line(self) -> ParsedLine {
        ParsedLine {
            sensor: self.sensor.into_owned(),
            ts_ms: self.ts_ms,
            values: self.values,
            tags: self.tags,
        }
    }
}

impl LineParser {
    /// A parser for `format` checking against `schema`.
    pub fn new(format: Format, schema: Arc<Schema>, limits: Limits) -> LineParser {
        let interned = InternedTags::new(&schema);
        LineParser { format, schema, interned, limits, clock: GatewayClock::trusted() }
    }

    /// Judges the future-timestamp limit by `clock`: while the gateway's wall clock is not
    /// trusted (not synchronised, or before the build), no reading is refused for being ahead
    /// of it. The reading is kept, and the engine judges it against its sensor's own clock.
    /// Without this, the wall clock is always believed.
    #[must_use]
    pub fn with_clock(mut self, clock: GatewayClock) -> LineParser {
        self.clock = clock;
        self
    }

    /// The schema lines are checked against.
    pub fn schema(&self) -> &Arc<Schema> {
        &self.schema
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The format lines are read in.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Parses and validates one line (without its terminator; a trailing `\r` is allowed).
    /// `now_ms` is the gateway clock, for the future-timestamp check.
    ///
    /// Every format goes through the same steps, in this order, so that the reason a line is
    /// counted under does not depend on the format:
    ///
    /// 1. one trailing `\r` is stripped (it belongs to a CRLF terminator);
    /// 2. a line longer than [`Limits::max_line_bytes`] is `line_too_long`, before parsing;
    /// 3. a line that is not UTF-8 is `bad_utf8`;
    /// 4. a blank (all-whitespace) line is `bad_syntax` with the detail "empty line". Sources
    ///    skip blank lines before calling, so this only counts blank lines a caller passes on;
    /// 5. the whole line is parsed, so a syntax error anywhere wins over a bad value;
    /// 6. the values are checked in a fixed order: sensor, timestamp (range, then the
    ///    future-time limit), fields in schema order, tags in schema order. The first problem
    ///    found is the rejection.
    ///
    /// When a key (JSON), tag or field (line protocol) appears twice, the last one wins, as
    /// with Python's `json` module and Spark, whose results the conformance tests compare with.
    pub fn parse(&self, line: &[u8], now_ms: i64) -> Result<ParsedLine, Rejection> {
        self.parse_borrowed(line, None, now_ms).map(Parsed::into_line)
    }

    /// Like [`parse`](Self::parse), with the sensor id given by the transport (an MQTT topic
    /// segment) instead of the line: for JSON, a `sensor` key in the object is ignored. The
    /// id is checked like one from a line. Only JSON carries readings without their sensor,
    /// so for the other formats the line's own sensor id is used.
    pub fn parse_for_sensor(&self, line: &[u8], sensor: &str, now_ms: i64) -> Result<ParsedLine, Rejection> {
        self.parse_borrowed(line, Some(sensor), now_ms).map(Parsed::into_line)
    }

    /// [`parse`](Self::parse), with serde_json reading every JSON line (no hand-written fast
    /// path); other formats as `parse`. For the fuzz target's differential check of the fast
    /// path, not for use.
    #[doc(hidden)]
    pub fn parse_json_by_serde(&self, line: &[u8], now_ms: i64) -> Result<ParsedLine, Rejection> {
        match self.format {
            Format::Json => {
                let line = self.check_line(line)?;
                json::parse_json_with(self, line, None, now_ms, false).map(Parsed::into_line)
            }
            _ => self.parse(line, now_ms),
        }
    }

    /// [`parse`](Self::parse) or [`parse_for_sensor`](Self::parse_for_sensor), the sensor id
    /// borrowed from the line (or `sensor`) when it needed no unescaping.
    fn parse_borrowed<'a>(
        &self,
        line: &'a [u8],
        sensor: Option<&'a str>,
        now_ms: i64,
    ) -> Result<Parsed<'a>, Rejection> {
        let line = self.check_line(line)?;
        match self.format {
            Format::Json => json::parse_json(self, line, sensor, now_ms),
            Format::Csv => csv::parse_csv(self, line, now_ms),
            Format::Influx(precision) => influx::parse_influx(self, line, precision, now_ms),
        }
    }

    /// Steps 1 to 4 of [`parse`](Self::parse): terminator, length, UTF-8, blankness.
    fn check_line<'a>(&self, line: &'a [u8]) -> Result<&'a str, Rejection> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.limits.max_line_bytes {
            return Err(Rejection::new(
                RejectReason::LineTooLong,
                format!("line is {} bytes, the limit is {}", line.len(), self.limits.max_line_bytes),
            ));
        }
        let line = std::str::from_utf8(line).map_err(|err| {
            Rejection::new(RejectReason::BadUtf8, format!("invalid UTF-8 at byte {}", err.valid_up_to()))
        })?;
        // A line that starts with a visible ASCII character (every JSON object, CSV row and
        // Influx line does) is not blank: no need to trim it.
        if !line.as_bytes().first().is_some_and(u8::is_ascii_graphic) && line.trim().is_empty() {
            return Err(Rejection::new(RejectReason::BadSyntax, "empty line"));
        }
        Ok(line)
    }

    /// Checks a sensor id that is present as a string: non-empty, at most
    /// [`MAX_SENSOR_BYTES`] bytes.
    fn check_sensor(sensor: &str) -> Result<(), Rejection> {
        if sensor.is_empty() {
            return Err(Rejection::new(RejectReason::BadSensor, "sensor: empty string"));
        }
        if sensor.len() > MAX_SENSOR_BYTES {
            return Err(Rejection::new(
                RejectReason::BadSensor,
                format!("sensor: {} bytes, the limit is {MAX_SENSOR_BYTES}", sensor.len()),
            ));
        }
        Ok(())
    }

    /// Checks an event time in ms: inside `0..2^53`, and not further ahead of `now_ms` than
    /// the configured limit.
    fn check_ts(&self, ts_ms: i64, now_ms: i64) -> Result<i64, Rejection> {
        if !(0..TS_END_MS).contains(&ts_ms) {
            return Err(Rejection::new(RejectReason::BadTs, format!("ts: {ts_ms} is outside 0..2^53")));
        }
        // A limit too large for i64 milliseconds means "no limit"; saturating keeps it so.
        let max_future_ms = i64::try_from(self.limits.max_future.as_millis()).unwrap_or(i64::MAX);
        let ahead_ms = ts_ms.saturating_sub(now_ms);
        if ahead_ms > max_future_ms && self.clock.is_trusted() {
            return Err(Rejection::new(
                RejectReason::FutureTs,
                format!("ts: {ts_ms} is {ahead_ms} ms ahead of the gateway clock, the limit is {max_future_ms} ms"),
            ));
        }
        Ok(ts_ms)
    }

    /// Checks the value of field `field_idx`: `None` (absent or null) is allowed for optional
    /// fields only; a number must be finite and inside the field's bounds.
    fn check_field(&self, field_idx: usize, value: Option<f64>) -> Result<Option<f64>, Rejection> {
        let field = &self.schema.fields[field_idx];
        let Some(value) = value else {
            if field.required {
                return Err(Rejection::new(
                    RejectReason::MissingField,
                    format!("{}: required field is missing or null", field.name),
                ));
            }
            return Ok(None);
        };
        if !value.is_finite() {
            return Err(Rejection::new(
                RejectReason::NonFinite,
                format!("{}: {value} is not finite", field.name),
            ));
        }
        if !(field.min..=field.max).contains(&value) {
            return Err(Rejection::new(
                RejectReason::OutOfRange,
                format!("{}: {value} is outside {}..={}", field.name, field.min, field.max),
            ));
        }
        Ok(Some(value))
    }

    /// Checks the value of tag `tag_idx`: `None` (absent or null) is allowed for optional tags
    /// only; a value must be at most [`MAX_TAG_BYTES`] long and, when the schema lists allowed
    /// values, one of them. Allowed values come back as the shared interned copy.
    fn check_tag(&self, tag_idx: usize, value: Option<&str>) -> Result<Option<Arc<str>>, Rejection> {
        let tag = &self.schema.tags[tag_idx];
        let Some(value) = value else {
            if tag.required {
                return Err(Rejection::new(
                    RejectReason::MissingField,
                    format!("{}: required tag is missing or null", tag.name),
                ));
            }
            return Ok(None);
        };
        if value.len() > MAX_TAG_BYTES {
            return Err(Rejection::new(
                RejectReason::BadTag,
                format!("{}: {} bytes, the limit is {MAX_TAG_BYTES}", tag.name, value.len()),
            ));
        }
        match self.interned.lookup(tag_idx, value) {
            Some(interned) => Ok(Some(interned)),
            None => Err(Rejection::new(
                RejectReason::BadTag,
                format!("{}: {value:?} is not one of {}", tag.name, tag.values.join(", ")),
            )),
        }
    }
}

/// The end (exclusive) of the accepted event times: 2^53 ms, the range in which every integer
/// is exact as an f64, so that JSON consumers in other languages see the same timestamp.
const TS_END_MS: i64 = 1 << 53;

/// The longest tag value accepted, in bytes.
const MAX_TAG_BYTES: usize = 64;

/// Parser + sensor cap + counters: what a source runs each line through.
#[derive(Debug)]
pub struct LineDecoder {
    parser: Arc<LineParser>,
    admitted: AdmittedSensors,
    stats: Arc<SourceStats>,
}

impl LineDecoder {
    /// A decoder for one connection or port.
    pub fn new(
        parser: Arc<LineParser>,
        registry: Arc<SensorRegistry>,
        stats: Arc<SourceStats>,
    ) -> LineDecoder {
        LineDecoder { parser, admitted: AdmittedSensors::new(registry), stats }
    }

    /// Decodes one line: counts it as received, then as accepted or rejected by reason.
    pub fn decode(&mut self, line: &[u8], now_ms: i64) -> Result<Reading, Rejection> {
        self.decode_for_sensor(line, None, now_ms)
    }

    /// Like [`decode`](Self::decode); with `Some(sensor)` the sensor id comes from the
    /// transport (see [`LineParser::parse_for_sensor`]).
    pub fn decode_for_sensor(
        &mut self,
        line: &[u8],
        sensor: Option<&str>,
        now_ms: i64,
    ) -> Result<Reading, Rejection> {
        self.stats.add_received(1);
        let parsed = self.parser.parse_borrowed(line, sensor, now_ms);
        let result = parsed.and_then(|parsed| {
            let sensor = self.admitted.admit(&parsed.sensor).ok_or_else(|| {
                Rejection::new(RejectReason::TooManySensors, "new sensor id past the cap on distinct sensors")
            })?;
            Ok(Reading { sensor, ts_ms: parsed.ts_ms, values: parsed.values, tags: parsed.tags })
        });
        match &result {
            Ok(_) => self.stats.add_accepted(1),
            Err(rejection) => self.stats.add_rejected(rejection.reason),
        }
        result
    }

    /// Counts a line that never reached the parser (too long, cut at a reconnect, dropped).
    pub fn reject_unparsed(&mut self, reason: RejectReason) {
        self.stats.add_received(1);
        self.stats.add_rejected(reason);
    }

    /// The counters this decoder updates.
    pub fn stats(&self) -> &Arc<SourceStats> {
        &self.stats
    }

    /// The limits of the underlying parser.
    pub fn limits(&self) -> Limits {
        self.parser.limits()
    }
}

/// Converts an integer field value to f64. Field values are measurements, so the nearest f64
/// of an integer beyond 2^53 is the wanted value, not a loss.
#[allow(clippy::cast_precision_loss)]
fn i64_to_f64(number: i64) -> f64 {
    number as f64
}

/// See [`i64_to_f64`].
#[allow(clippy::cast_precision_loss)]
fn u64_to_f64(number: u64) -> f64 {
    number as f64
}
