//! Shared checks of the fuzz targets: the invariants every accepted reading must hold, run on
//! the line parsers directly and through the `LineDecoder` a source uses.
//!
//! A target that only asserted "does not panic" would miss a parser that accepts what it must
//! not; so each accepted line is checked against the schema and the limits here.

use std::sync::Arc;
use std::time::Duration;

use eddy_sensors::{
    Format, Limits, LineDecoder, LineParser, ParsedLine, RejectReason, Schema, SensorRegistry, SourceStats,
    TsPrecision, MAX_SENSOR_BYTES,
};

/// The gateway clock every target uses: a little after the timestamps of the seed corpus
/// (conformance sample, 2023-11-14), so seeds are accepted and the future limit is reachable.
pub const NOW_MS: i64 = 1_700_000_100_000;

/// End (exclusive) of the accepted event times, 2^53 ms (`LineParser::parse`).
pub const TS_END_MS: i64 = 1 << 53;

/// Longest tag value a parser accepts (`LineParser::parse`).
pub const MAX_TAG_BYTES: usize = 64;

/// Every Influx timestamp unit, so one input exercises all of them.
pub const PRECISIONS: [TsPrecision; 4] =
    [TsPrecision::Nanoseconds, TsPrecision::Microseconds, TsPrecision::Milliseconds, TsPrecision::Seconds];

/// A parser for `format` on the thermostat schema with `max_line_bytes`.
pub fn parser(format: Format, max_line_bytes: usize) -> Arc<LineParser> {
    let limits = Limits { max_line_bytes, max_future: Duration::from_secs(300) };
    Arc::new(LineParser::new(format, Arc::new(Schema::thermostat()), limits))
}

/// Asserts what an accepted line must satisfy: a sensor of 1 to 64 bytes, an event time in
/// `0..2^53` and not past the future limit, one slot per field and tag, fields finite and in
/// their bounds, required ones present, tags short and among the allowed values.
pub fn check_accepted(parser: &LineParser, line: &[u8], parsed: &ParsedLine) {
    let limits = parser.limits();
    let text = line.strip_suffix(b"\r").unwrap_or(line);
    assert!(text.len() <= limits.max_line_bytes, "accepted a line over the limit");
    let text = std::str::from_utf8(text).expect("accepted a line that is not UTF-8");
    assert!(!text.trim().is_empty(), "accepted a blank line");
    check_parsed(parser, parsed);
}

/// Asserts what a parsed reading must satisfy, whatever line it came from: see
/// [`check_accepted`].
pub fn check_parsed(parser: &LineParser, parsed: &ParsedLine) {
    let limits = parser.limits();
    assert!(!parsed.sensor.is_empty(), "accepted an empty sensor id");
    assert!(parsed.sensor.len() <= MAX_SENSOR_BYTES, "accepted a sensor id of {} bytes", parsed.sensor.len());
    assert!((0..TS_END_MS).contains(&parsed.ts_ms), "accepted ts {}", parsed.ts_ms);
    let max_future_ms = i64::try_from(limits.max_future.as_millis()).expect("small limit");
    assert!(parsed.ts_ms - NOW_MS <= max_future_ms, "accepted ts {} past the future limit", parsed.ts_ms);
    let schema = parser.schema();
    assert_eq!(parsed.values.len(), schema.fields.len(), "one value slot per field");
    for (value, field) in parsed.values.iter().zip(&schema.fields) {
        match value {
            Some(value) => {
                assert!(value.is_finite(), "{}: accepted {value}", field.name);
                assert!((field.min..=field.max).contains(value), "{}: accepted {value}", field.name);
            }
            None => assert!(!field.required, "{}: required field missing", field.name),
        }
    }
    assert_eq!(parsed.tags.len(), schema.tags.len(), "one tag slot per tag");
    for (value, tag) in parsed.tags.iter().zip(&schema.tags) {
        match value {
            Some(value) => {
                assert!(
                    value.len() <= MAX_TAG_BYTES,
                    "{}: accepted a tag of {} bytes",
                    tag.name,
                    value.len()
                );
                assert!(
                    tag.values.is_empty() || tag.values.iter().any(|allowed| **allowed == **value),
                    "{}: accepted {value:?}",
                    tag.name
                );
            }
            None => assert!(!tag.required, "{}: required tag missing", tag.name),
        }
    }
}

/// Runs `line` through `parser` and a `LineDecoder` and checks: the early rejections
/// (length, UTF-8) have their reason, an accepted line satisfies [`check_accepted`], parsing
/// is deterministic, the decoder agrees with the parser, and its counters add up.
pub fn check_line(parser: &Arc<LineParser>, line: &[u8]) {
    let result = parser.parse(line, NOW_MS);
    assert_eq!(result, parser.parse(line, NOW_MS), "parsing is not deterministic");
    let text = line.strip_suffix(b"\r").unwrap_or(line);
    match &result {
        Ok(parsed) => check_accepted(parser, line, parsed),
        Err(rejection) if text.len() > parser.limits().max_line_bytes => {
            assert_eq!(rejection.reason, RejectReason::LineTooLong);
        }
        Err(rejection) if std::str::from_utf8(text).is_err() => {
            assert_eq!(rejection.reason, RejectReason::BadUtf8);
        }
        Err(_) => {}
    }

    // JSON: the hand-written fast path reads exactly what serde_json reads (values to the bit).
    if parser.format() == Format::Json {
        let by_serde = parser.parse_json_by_serde(line, NOW_MS);
        let bits = |parsed: &ParsedLine| -> Vec<Option<u64>> {
            parsed.values.iter().map(|value| value.map(f64::to_bits)).collect()
        };
        match (&result, &by_serde) {
            (Ok(fast), Ok(serde)) => {
                assert_eq!((&fast.sensor, fast.ts_ms, &fast.tags), (&serde.sensor, serde.ts_ms, &serde.tags));
                assert_eq!(bits(fast), bits(serde), "values differ from serde_json's");
            }
            (Err(fast), Err(serde)) => assert_eq!(fast, serde),
            _ => panic!("the fast path and serde_json disagree: {result:?} vs {by_serde:?}"),
        }
    }

    // The transport's sensor id: JSON takes it instead of the line's, other formats ignore it.
    let for_sensor = parser.parse_for_sensor(line, "fz-1", NOW_MS);
    match (parser.format(), &for_sensor) {
        (Format::Json, Ok(parsed)) => {
            assert_eq!(parsed.sensor, "fz-1");
            check_accepted(parser, line, parsed);
        }
        (Format::Json, Err(_)) => {}
        (_, _) => assert_eq!(for_sensor, result, "a line format must ignore the transport's sensor id"),
    }

    let stats = Arc::new(SourceStats::new("fuzz"));
    let mut decoder = LineDecoder::new(parser.clone(), Arc::new(SensorRegistry::new(16)), stats.clone());
    let decoded = decoder.decode(line, NOW_MS);
    match (&result, &decoded) {
        (Ok(parsed), Ok(reading)) => {
            assert_eq!(&*reading.sensor, parsed.sensor);
            assert_eq!(reading.ts_ms, parsed.ts_ms);
            assert_eq!(reading.values, parsed.values);
            assert_eq!(reading.tags, parsed.tags);
        }
        (Err(parsed), Err(decoded)) => assert_eq!(parsed, decoded),
        _ => panic!("decoder and parser disagree: {result:?} vs {decoded:?}"),
    }
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.received, 1);
    assert_eq!(snapshot.received, snapshot.accepted + snapshot.rejected_total(), "counters do not add up");
}

/// The parser checks of one format, on the default limit and a small one (64 bytes), so that
/// the length limit is reached by short inputs too.
pub fn fuzz_format(format: Format, line: &[u8]) {
    check_line(&parser(format, Limits::default().max_line_bytes), line);
    check_line(&parser(format, 64), line);
}
