//! The InfluxDB line protocol, for devices and agents (Telegraf) that already speak it.
//!
//! `thermostat,sensor=t-017,mode=heat temp_c=21.37,humidity=44.1 1700000000123000000`
//!
//! - the measurement name is required but ignored;
//! - the `sensor` tag gives the sensor id; other tags are matched against the schema's tags,
//!   unknown ones are ignored;
//! - fields are matched against the schema's fields, unknown ones are ignored (but must still
//!   be well formed). A schema field must be a float (`21.37`) or an integer with an `i` or
//!   `u` suffix; a string or boolean is `wrong_type`. Rust's float syntax is accepted, so
//!   `NaN` and `inf` parse and are refused as `non_finite`;
//! - the timestamp is an integer in the configured [`TsPrecision`], converted to ms and
//!   truncated toward zero; it is required here (`missing_ts`), because the gateway must not
//!   invent event times;
//! - in the measurement, tag keys, tag values and field keys, `\,` `\ ` `\=` and `\\` stand
//!   for the character after the backslash; any other backslash is literal. In string field
//!   values `\"` and `\\` are escapes;
//! - a line starting with `#` is a comment in the protocol; here it is `bad_syntax`, so a
//!   source should skip comments before parsing.

use std::borrow::Cow;

use crate::parse::{i64_to_f64, u64_to_f64, LineParser, Parsed, TsPrecision};
use crate::reading::{Tags, Values};
use crate::reject::{RejectReason, Rejection};

/// Parses one line-protocol line (already checked for length, UTF-8 and blankness).
pub(crate) fn parse_influx<'a>(
    parser: &LineParser,
    line: &'a str,
    precision: TsPrecision,
    now_ms: i64,
) -> Result<Parsed<'a>, Rejection> {
    let schema = &parser.schema;
    let line = line.trim();
    if line.starts_with('#') {
        return Err(syntax("comment line"));
    }
    let bytes = line.as_bytes();

    // The measurement, up to the first unescaped comma or space.
    let mut pos = scan(bytes, 0, b" ,");
    if pos == 0 {
        return Err(syntax("missing measurement"));
    }

    // The tag set: `,key=value` pairs up to the first unescaped space.
    let mut sensor: Option<Cow<'_, str>> = None;
    let mut tag_texts: Vec<Option<Cow<'_, str>>> =
        std::iter::repeat_with(|| None).take(schema.tags.len()).collect();
    while bytes.get(pos) == Some(&b',') {
        let key_start = pos + 1;
        let key_end = scan(bytes, key_start, b" ,=");
        if key_end == key_start || bytes.get(key_end) != Some(&b'=') {
            return Err(syntax("tag without a key or '='"));
        }
        let value_start = key_end + 1;
        let value_end = scan(bytes, value_start, b" ,=");
        if value_end == value_start || bytes.get(value_end) == Some(&b'=') {
            return Err(syntax("tag with an empty value or an unescaped '='"));
        }
        let key = unescape(&line[key_start..key_end]);
        let value = unescape(&line[value_start..value_end]);
        if key == "sensor" {
            sensor = Some(value);
        } else if let Some(tag_idx) = schema.tag_index(&key) {
            tag_texts[tag_idx] = Some(value);
        }
        pos = value_end;
    }

    // The field set, after one space: `key=value` pairs separated by commas.
    if bytes.get(pos) != Some(&b' ') {
        return Err(syntax("missing field set"));
    }
    pos += 1;
    let mut field_values: Vec<Option<FieldValue>> = vec![None; schema.fields.len()];
    let ts_start = loop {
        let key_start = pos;
        let key_end = scan(bytes, key_start, b" ,=");
        if key_end == key_start || bytes.get(key_end) != Some(&b'=') {
            return Err(syntax("field without a key or '='"));
        }
        let key = unescape(&line[key_start..key_end]);
        let value_start = key_end + 1;
        let (value, value_end) = if bytes.get(value_start) == Some(&b'"') {
            (FieldValue::Str, string_end(bytes, value_start + 1)?)
        } else {
            let value_end = scan_unescaped(bytes, value_start, b" ,");
            let text = &line[value_start..value_end];
            let value =
                FieldValue::parse(text).ok_or_else(|| syntax(format!("{key}: invalid field value")))?;
            (value, value_end)
        };
        if let Some(field_idx) = schema.field_index(&key) {
            field_values[field_idx] = Some(value);
        }
        pos = value_end;
        match bytes.get(pos) {
            Some(b',') => pos += 1,
            Some(b' ') => break Some(pos + 1),
            None => break None,
            Some(_) => return Err(syntax("unexpected character after a field value")),
        }
    };

    // The timestamp, after one space.
    let ts_text = ts_start.map(|ts_start| &line[ts_start..]);
    let raw_ts = match ts_text {
        None => None,
        Some(text) if text.contains(' ') => return Err(syntax("unexpected text after the timestamp")),
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            Rejection::new(
                RejectReason::BadTs,
                format!("ts: expected an integer in {}", unit_name(precision)),
            )
        })?),
    };

    let sensor = match sensor {
        None => return Err(Rejection::new(RejectReason::MissingSensor, "sensor: no 'sensor' tag")),
        Some(sensor) => {
            LineParser::check_sensor(&sensor)?;
            sensor
        }
    };

    let Some(raw_ts) = raw_ts else {
        return Err(Rejection::new(RejectReason::MissingTs, "ts: the line has no timestamp"));
    };
    let ts_ms = parser.check_ts(to_ms(raw_ts, precision)?, now_ms)?;

    let mut values = Values::with_capacity(schema.fields.len());
    for (field_idx, value) in field_values.into_iter().enumerate() {
        let number = match value {
            None => None,
            Some(FieldValue::Number(number)) => Some(number),
            Some(FieldValue::Str) => return Err(wrong_type(parser, field_idx, "a string")),
            Some(FieldValue::Bool) => return Err(wrong_type(parser, field_idx, "a boolean")),
        };
        values.push(parser.check_field(field_idx, number)?);
    }

    let mut tags = Tags::with_capacity(schema.tags.len());
    for (tag_idx, text) in tag_texts.iter().enumerate() {
        tags.push(parser.check_tag(tag_idx, text.as_deref())?);
    }

    Ok(Parsed { sensor, ts_ms, values, tags })
}

/// A field value, reduced to what the checks need.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldValue {
    /// A float, or an integer with an `i` or `u` suffix.
    Number(f64),
    /// A double-quoted string.
    Str,
    /// `t`, `true`, `F`, `FALSE` and the other boolean spellings.
    Bool,
}

impl FieldValue {
    /// Parses an unquoted field value; `None` when it is not one.
    fn parse(text: &str) -> Option<FieldValue> {
        match text {
            "t" | "T" | "true" | "True" | "TRUE" | "f" | "F" | "false" | "False" | "FALSE" => {
                Some(FieldValue::Bool)
            }
            _ => {
                if let Some(digits) = text.strip_suffix('i') {
                    digits.parse::<i64>().ok().map(|number| FieldValue::Number(i64_to_f64(number)))
                } else if let Some(digits) = text.strip_suffix('u') {
                    digits.parse::<u64>().ok().map(|number| FieldValue::Number(u64_to_f64(number)))
                } else {
                    text.parse::<f64>().ok().map(FieldValue::Number)
                }
            }
        }
    }
}

/// A `bad_syntax` rejection.
fn syntax(detail: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::BadSyntax, detail)
}

/// A `wrong_type` rejection for field `field_idx`.
fn wrong_type(parser: &LineParser, field_idx: usize, kind: &str) -> Rejection {
    Rejection::new(
        RejectReason::WrongType,
        format!("{}: expected a float or an integer, got {kind}", parser.schema.fields[field_idx].name),
    )
}

/// The index of the first byte at or after `start` that is one of `stops` and not escaped by a
/// backslash, or the length of `bytes`.
fn scan(bytes: &[u8], start: usize, stops: &[u8]) -> usize {
    let mut pos = start;
    while let Some(&byte) = bytes.get(pos) {
        if byte == b'\\' && bytes.get(pos + 1).is_some_and(|next| is_escapable(*next)) {
            pos += 2;
        } else if stops.contains(&byte) {
            return pos;
        } else {
            pos += 1;
        }
    }
    bytes.len()
}

/// Like [`scan`], for unquoted field values, which have no escapes.
fn scan_unescaped(bytes: &[u8], start: usize, stops: &[u8]) -> usize {
    bytes[start..].iter().position(|byte| stops.contains(byte)).map_or(bytes.len(), |offset| start + offset)
}

/// The index just past the closing quote of a string field value whose body starts at `start`.
fn string_end(bytes: &[u8], start: usize) -> Result<usize, Rejection> {
    let mut pos = start;
    while let Some(&byte) = bytes.get(pos) {
        match byte {
            b'\\' => pos += 2,
            b'"' => return Ok(pos + 1),
            _ => pos += 1,
        }
    }
    Err(syntax("unterminated string field value"))
}

/// True for the characters a backslash escapes in names and tag values.
fn is_escapable(byte: u8) -> bool {
    matches!(byte, b',' | b' ' | b'=' | b'\\')
}

/// Removes escaping backslashes; borrows when there are none.
fn unescape(text: &str) -> Cow<'_, str> {
    if !text.contains('\\') {
        return Cow::Borrowed(text);
    }
    let mut unescaped = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&next) = chars.peek() {
                if u8::try_from(next).is_ok_and(is_escapable) {
                    unescaped.push(next);
                    chars.next();
                    continue;
                }
            }
        }
        unescaped.push(c);
    }
    Cow::Owned(unescaped)
}

/// Converts a timestamp in `precision` to ms, truncating toward zero.
fn to_ms(raw_ts: i64, precision: TsPrecision) -> Result<i64, Rejection> {
    // Checked before dividing, so that -1 ns does not truncate to a valid 0 ms.
    if raw_ts < 0 {
        return Err(Rejection::new(RejectReason::BadTs, format!("ts: {raw_ts} is before the epoch")));
    }
    match precision {
        TsPrecision::Nanoseconds => Ok(raw_ts / 1_000_000),
        TsPrecision::Microseconds => Ok(raw_ts / 1_000),
        TsPrecision::Milliseconds => Ok(raw_ts),
        TsPrecision::Seconds => raw_ts.checked_mul(1_000).ok_or_else(|| {
            Rejection::new(RejectReason::BadTs, format!("ts: {raw_ts} s is outside 0..2^53 ms"))
        }),
    }
}

/// The unit of `precision`, for rejection details.
fn unit_name(precision: TsPrecision) -> &'static str {
    match precision {
        TsPrecision::Nanoseconds => "nanoseconds",
        TsPrecision::Microseconds => "microseconds",
        TsPrecision::Milliseconds => "milliseconds",
        TsPrecision::Seconds => "seconds",
    }
}
