//! The CSV format, for devices too simple to write JSON: `sensor,ts,field1[,field2...]`.
//!
//! `t-017,1700000000123,21.37,44.1`
//!
//! - the columns are the sensor id, the event time in integer milliseconds since the epoch,
//!   then the schema's fields in schema order;
//! - trailing optional fields may be left out, and an empty column means "absent";
//! - more columns than the schema has fields is `bad_syntax`;
//! - whitespace around a column is trimmed;
//! - there is no quoting, so no value can contain a comma; a line containing `"` is
//!   `bad_syntax` rather than read with the quotes as part of a value;
//! - tags are not carried, so a schema with a required tag rejects every CSV line
//!   (`missing_field`);
//! - a header line (`sensor,ts,temp_c`) is not special: it is rejected as `bad_ts`, so a
//!   source should drop it before parsing.

use std::borrow::Cow;

use crate::parse::{LineParser, Parsed};
use crate::reading::{Tags, Values};
use crate::reject::{RejectReason, Rejection};

/// Parses one CSV line (already checked for length, UTF-8 and blankness).
pub(crate) fn parse_csv<'a>(
    parser: &LineParser,
    line: &'a str,
    now_ms: i64,
) -> Result<Parsed<'a>, Rejection> {
    let schema = &parser.schema;
    if line.contains('"') {
        return Err(Rejection::new(RejectReason::BadSyntax, "quoted CSV values are not supported"));
    }
    let n_columns = line.bytes().filter(|byte| *byte == b',').count() + 1;
    let max_columns = schema.fields.len() + 2;
    if n_columns > max_columns {
        return Err(Rejection::new(
            RejectReason::BadSyntax,
            format!("{n_columns} columns, at most {max_columns} expected (sensor, ts and the fields)"),
        ));
    }
    let mut columns = line.split(',').map(str::trim);

    let sensor = columns.next().unwrap_or_default();
    if sensor.is_empty() {
        return Err(Rejection::new(RejectReason::MissingSensor, "sensor: empty column"));
    }
    LineParser::check_sensor(sensor)?;

    let ts_text = columns.next().unwrap_or_default();
    if ts_text.is_empty() {
        return Err(Rejection::new(RejectReason::MissingTs, "ts: missing or empty column"));
    }
    let ts_ms = ts_text
        .parse::<i64>()
        .map_err(|_| Rejection::new(RejectReason::BadTs, "ts: expected integer milliseconds"))?;
    let ts_ms = parser.check_ts(ts_ms, now_ms)?;

    let mut values = Values::with_capacity(schema.fields.len());
    for (field_idx, field) in schema.fields.iter().enumerate() {
        let text = columns.next().unwrap_or_default();
        let number = if text.is_empty() {
            None
        } else {
            let number = text.parse::<f64>().map_err(|_| {
                Rejection::new(RejectReason::WrongType, format!("{}: expected a number", field.name))
            })?;
            Some(number)
        };
        values.push(parser.check_field(field_idx, number)?);
    }

    let mut tags = Tags::with_capacity(schema.tags.len());
    for tag_idx in 0..schema.tags.len() {
        tags.push(parser.check_tag(tag_idx, None)?);
    }

    Ok(Parsed { sensor: Cow::Borrowed(sensor), ts_ms, values, tags })
}
