//! Tests of the line parsers: one per rejection reason and format, the conformance file, and
//! property tests (no panics on arbitrary input; valid readings round-trip).

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use crate::parse::{Format, Limits, LineDecoder, LineParser, ParsedLine, TsPrecision, TS_END_MS};
use crate::registry::SensorRegistry;
use crate::reject::{RejectReason, Rejection};
use crate::schema::{FieldSpec, Schema, TagSpec};
use crate::stats::SourceStats;

const JSON: Format = Format::Json;
const CSV: Format = Format::Csv;
const INFLUX: Format = Format::Influx(TsPrecision::Nanoseconds);

/// The gateway clock in most tests: 100 s after the example readings.
const NOW_MS: i64 = 1_700_000_100_000;

/// A parser for `format` with the thermostat schema and default limits.
fn thermostat(format: Format) -> LineParser {
    LineParser::new(format, Arc::new(Schema::thermostat()), Limits::default())
}

/// One line per outcome: `sensor ts field=value... tag=value...` (`-` for absent) for an
/// accepted line, `reason: detail` for a rejection.
fn render(schema: &Schema, result: &Result<ParsedLine, Rejection>) -> String {
    match result {
        Ok(parsed) => {
            let mut out = format!("{} {}", parsed.sensor, parsed.ts_ms);
            for (field, value) in schema.fields.iter().zip(&parsed.values) {
                match value {
                    Some(value) => out += &format!(" {}={value}", field.name),
                    None => out += &format!(" {}=-", field.name),
                }
            }
            for (tag, value) in schema.tags.iter().zip(&parsed.tags) {
                out += &format!(" {}={}", tag.name, value.as_deref().unwrap_or("-"));
            }
            out
        }
        Err(rejection) => rejection.to_string(),
    }
}

/// Parses `line` with `parser` at [`NOW_MS`] and compares the rendering with `expected`.
/// `expected` is either a whole rendering or, for a rejection, just the reason (`"bad_ts"`).
fn check_with(parser: &LineParser, line: &[u8], expected: &str) {
    let result = parser.parse(line, NOW_MS);
    let actual = render(parser.schema(), &result);
    let reason_matches = result.as_ref().is_err_and(|rejection| rejection.reason.as_str() == expected);
    assert!(
        actual == expected || reason_matches,
        "line {:?}\n  expected: {expected}\n    actual: {actual}",
        String::from_utf8_lossy(line)
    );
}

/// [`check_with`] for a thermostat parser of `format`.
fn check(format: Format, line: &str, expected: &str) {
    check_with(&thermostat(format), line.as_bytes(), expected);
}

/// A thermostat parser of `format` whose `mode` tag is required.
fn with_required_mode(format: Format) -> LineParser {
    let mut schema = Schema::thermostat();
    schema.tags[0].required = true;
    LineParser::new(format, Arc::new(schema), Limits::default())
}

/// A thermostat parser of `format` whose `mode` tag accepts any value.
fn with_free_mode(format: Format) -> LineParser {
    let mut schema = Schema::thermostat();
    schema.tags[0].values.clear();
    LineParser::new(format, Arc::new(schema), Limits::default())
}

/// A thermostat parser of `format` that accepts lines of at most 40 bytes.
fn with_short_lines(format: Format) -> LineParser {
    let limits = Limits { max_line_bytes: 40, ..Limits::default() };
    LineParser::new(format, Arc::new(Schema::thermostat()), limits)
}

// JSON lines: accepted.

#[test]
fn json_accepts_a_full_reading() {
    check(
        JSON,
        r#"{"sensor":"t-017","ts":1700000000123,"temp_c":21.37,"humidity":44.1,"mode":"heat"}"#,
        "t-017 1700000000123 temp_c=21.37 humidity=44.1 setpoint_c=- mode=heat",
    );
}

#[test]
fn json_accepts_only_the_required_keys_in_any_order() {
    check(JSON, r#"{"temp_c":-60,"ts":0,"sensor":"a"}"#, "a 0 temp_c=-60 humidity=- setpoint_c=- mode=-");
}

#[test]
fn json_reads_null_optional_fields_and_tags_as_absent() {
    check(
        JSON,
        r#"{"sensor":"a","ts":1,"temp_c":125,"humidity":null,"setpoint_c":null,"mode":null}"#,
        "a 1 temp_c=125 humidity=- setpoint_c=- mode=-",
    );
}

#[test]
fn json_skips_unknown_keys_with_nested_values() {
    check(
        JSON,
        r#" {"x":{"y":[1,{"z":null}],"q":"\u00e9"},"sensor":"a","ts":1,"temp_c":20,"battery":"low"} "#,
        "a 1 temp_c=20 humidity=- setpoint_c=- mode=-",
    );
}

#[test]
fn json_strips_one_trailing_carriage_return() {
    check(
        JSON,
        "{\"sensor\":\"a\",\"ts\":1,\"temp_c\":20}\r",
        "a 1 temp_c=20 humidity=- setpoint_c=- mode=-",
    );
}

#[test]
fn json_unescapes_sensor_ids_and_keys() {
    check(
        JSON,
        r#"{"sensor":"t\u002d1 \"x\"","ts":1,"temp\u005fc":20}"#,
        r#"t-1 "x" 1 temp_c=20 humidity=- setpoint_c=- mode=-"#,
    );
}

#[test]
fn json_keeps_the_last_of_duplicate_keys() {
    check(
        JSON,
        r#"{"sensor":"a","ts":1,"temp_c":"warm","temp_c":20}"#,
        "a 1 temp_c=20 humidity=- setpoint_c=- mode=-",
    );
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":20,"temp_c":999}"#, "out_of_range");
    check(
        JSON,
        r#"{"sensor":"a","sensor":"b","ts":1,"temp_c":20}"#,
        "b 1 temp_c=20 humidity=- setpoint_c=- mode=-",
    );
}

#[test]
fn json_accepts_rfc3339_timestamps_as_ms() {
    check(
        JSON,
        r#"{"sensor":"a","ts":"2023-11-14T22:13:20.123Z","temp_c":20}"#,
        "a 1700000000123 temp_c=20 humidity=- setpoint_c=- mode=-",
    );
    check(
        JSON,
        r#"{"sensor":"a","ts":"2023-11-15T00:13:20.1239+02:00","temp_c":20}"#,
        "a 1700000000123 temp_c=20 humidity=- setpoint_c=- mode=-",
    );
}

#[test]
fn json_accepts_a_sensor_id_of_exactly_64_bytes() {
    let sensor = "s".repeat(64);
    check(
        JSON,
        &format!(r#"{{"sensor":"{sensor}","ts":1,"temp_c":20}}"#),
        &format!("{sensor} 1 temp_c=20 humidity=- setpoint_c=- mode=-"),
    );
}

#[test]
fn json_accepts_the_largest_timestamp_when_the_clock_allows_it() {
    let parser = thermostat(JSON);
    let line = format!(r#"{{"sensor":"a","ts":{},"temp_c":20}}"#, TS_END_MS - 1);
    assert_eq!(parser.parse(line.as_bytes(), i64::MAX).map(|parsed| parsed.ts_ms), Ok(TS_END_MS - 1));
}

#[test]
fn json_accepts_any_tag_value_up_to_64_bytes_when_the_schema_lists_none() {
    let mode = "m".repeat(64);
    check_with(
        &with_free_mode(JSON),
        format!(r#"{{"sensor":"a","ts":1,"temp_c":20,"mode":"{mode}"}}"#).as_bytes(),
        &format!("a 1 temp_c=20 humidity=- setpoint_c=- mode={mode}"),
    );
}

// JSON lines: one test per rejection reason.

#[test]
fn json_rejects_lines_over_the_limit_before_parsing() {
    let parser = with_short_lines(JSON);
    check_with(
        &parser,
        format!("{{{}", " ".repeat(40)).as_bytes(),
        "line_too_long: line is 41 bytes, the limit is 40",
    );
    // The carriage return belongs to the terminator, so it does not count.
    check_with(&parser, format!("{}\r", " ".repeat(40)).as_bytes(), "bad_syntax: empty line");
}

#[test]
fn json_rejects_invalid_utf8() {
    check_with(
        &thermostat(JSON),
        b"{\"sensor\":\"t\xff\",\"ts\":1,\"temp_c\":20}",
        "bad_utf8: invalid UTF-8 at byte 12",
    );
}

#[test]
fn json_rejects_malformed_json_as_bad_syntax() {
    check(JSON, "#t-007 garbage reading temp=21.87", "bad_syntax");
    check(JSON, r#"{"sensor":"t-002","ts":17000000607"#, "bad_syntax");
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":20} x"#, "bad_syntax");
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":20}{}"#, "bad_syntax");
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":20,}"#, "bad_syntax");
    check(JSON, r#"[1,2"#, "bad_syntax");
}

#[test]
fn json_rejects_blank_lines_as_bad_syntax() {
    check(JSON, "", "bad_syntax: empty line");
    check(JSON, " \t ", "bad_syntax: empty line");
    check(JSON, "\r", "bad_syntax: empty line");
}

#[test]
fn json_rejects_nan_and_infinity_tokens_as_bad_syntax() {
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":NaN}"#, "bad_syntax");
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":Infinity}"#, "bad_syntax");
}

#[test]
fn json_rejects_numbers_too_large_for_f64_as_bad_syntax_not_as_infinity() {
    // serde_json refuses the number while parsing, so `non_finite` cannot happen for JSON.
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":1e999}"#, "bad_syntax");
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":-1e999}"#, "bad_syntax");
}

#[test]
fn json_rejects_values_that_are_not_objects() {
    check(JSON, "[1700000095964,21.46]", "not_object: expected a JSON object, got an array");
    check(JSON, "17", "not_object: expected a JSON object, got a number");
    check(JSON, r#""t-1""#, "not_object: expected a JSON object, got a string");
    check(JSON, "null", "not_object: expected a JSON object, got null");
    check(JSON, "true", "not_object: expected a JSON object, got a boolean");
}

#[test]
fn json_rejects_a_missing_or_null_sensor() {
    check(JSON, r#"{"ts":1,"temp_c":20}"#, "missing_sensor: sensor: missing or null");
    check(JSON, r#"{"sensor":null,"ts":1,"temp_c":20}"#, "missing_sensor");
}

#[test]
fn json_rejects_an_empty_long_or_non_string_sensor() {
    check(JSON, r#"{"sensor":"","ts":1,"temp_c":20}"#, "bad_sensor: sensor: empty string");
    check(
        JSON,
        &format!(r#"{{"sensor":"{}","ts":1,"temp_c":20}}"#, "s".repeat(65)),
        "bad_sensor: sensor: 65 bytes, the limit is 64",
    );
    check(JSON, r#"{"sensor":17,"ts":1,"temp_c":20}"#, "bad_sensor: sensor: expected a string, got a number");
    check(JSON, r#"{"sensor":["a"],"ts":1,"temp_c":20}"#, "bad_sensor");
}

#[test]
fn json_rejects_a_missing_or_null_ts() {
    check(JSON, r#"{"sensor":"a","temp_c":20}"#, "missing_ts: ts: missing or null");
    check(JSON, r#"{"sensor":"a","ts":null,"temp_c":20}"#, "missing_ts");
}

#[test]
fn json_rejects_timestamps_of_the_wrong_type_or_range() {
    check(JSON, r#"{"sensor":"a","ts":-5,"temp_c":20}"#, "bad_ts: ts: -5 is outside 0..2^53");
    check(JSON, r#"{"sensor":"a","ts":9007199254740992,"temp_c":20}"#, "bad_ts");
    check(JSON, r#"{"sensor":"a","ts":18446744073709551615,"temp_c":20}"#, "bad_ts");
    check(JSON, r#"{"sensor":"a","ts":99999999999999999999,"temp_c":20}"#, "bad_ts");
    check(
        JSON,
        r#"{"sensor":"a","ts":1.5e12,"temp_c":20}"#,
        "bad_ts: ts: expected integer milliseconds or an RFC 3339 string",
    );
    check(JSON, r#"{"sensor":"a","ts":1700000000000.0,"temp_c":20}"#, "bad_ts");
    check(JSON, r#"{"sensor":"a","ts":true,"temp_c":20}"#, "bad_ts");
    check(JSON, r#"{"sensor":"a","ts":"1700000004504","temp_c":20}"#, "bad_ts");
    check(JSON, r#"{"sensor":"a","ts":{},"temp_c":20}"#, "bad_ts");
    check(JSON, r#"{"sensor":"a","ts":"1969-12-31T23:59:59.9995Z","temp_c":20}"#, "bad_ts");
}

#[test]
fn json_rejects_timestamps_beyond_the_future_limit() {
    let limit_ms = NOW_MS + 300_000;
    check(
        JSON,
        &format!(r#"{{"sensor":"a","ts":{limit_ms},"temp_c":20}}"#),
        &format!("a {limit_ms} temp_c=20 humidity=- setpoint_c=- mode=-"),
    );
    check(
        JSON,
        &format!(r#"{{"sensor":"a","ts":{},"temp_c":20}}"#, limit_ms + 1),
        "future_ts: ts: 1700000400001 is 300001 ms ahead of the gateway clock, the limit is 300000 ms",
    );
}

#[test]
fn an_untrusted_gateway_clock_refuses_no_reading_for_being_ahead_of_it() {
    // A gateway booted at 1970 with no synchronised clock: real-time readings are kept, in
    // every format, and become judged again once the clock is trusted.
    let untrusted = eddy_common::GatewayClock::with_floor(eddy_common::ClockTrust::Always, None, i64::MAX);
    let far_ahead = NOW_MS + 20 * 365 * 86_400_000;
    for (format, line) in [
        (JSON, format!(r#"{{"sensor":"a","ts":{far_ahead},"temp_c":20}}"#)),
        (CSV, format!("a,{far_ahead},20")),
        (INFLUX, format!("m,sensor=a temp_c=20 {far_ahead}000000")),
    ] {
        let parser = thermostat(format).with_clock(untrusted.clone());
        let parsed =
            parser.parse(line.as_bytes(), NOW_MS).unwrap_or_else(|rejection| panic!("{line}: {rejection}"));
        assert_eq!(parsed.ts_ms, far_ahead);
        let trusted = thermostat(format).with_clock(eddy_common::GatewayClock::trusted());
        assert_eq!(trusted.parse(line.as_bytes(), NOW_MS).unwrap_err().reason, RejectReason::FutureTs);
    }
    // The range check still holds whatever the clock.
    let parser = thermostat(JSON).with_clock(untrusted);
    check_with(&parser, format!(r#"{{"sensor":"a","ts":{TS_END_MS},"temp_c":20}}"#).as_bytes(), "bad_ts");
}

#[test]
fn json_rejects_a_missing_or_null_required_field() {
    check(
        JSON,
        r#"{"sensor":"a","ts":1,"humidity":50}"#,
        "missing_field: temp_c: required field is missing or null",
    );
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":null}"#, "missing_field");
}

#[test]
fn json_rejects_a_missing_required_tag() {
    check_with(
        &with_required_mode(JSON),
        br#"{"sensor":"a","ts":1,"temp_c":20}"#,
        "missing_field: mode: required tag is missing or null",
    );
}

#[test]
fn json_rejects_fields_and_tags_of_the_wrong_type() {
    check(
        JSON,
        r#"{"sensor":"a","ts":1,"temp_c":"warm"}"#,
        "wrong_type: temp_c: expected a number, got a string",
    );
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":20,"humidity":true}"#, "wrong_type");
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":{"v":20}}"#, "wrong_type");
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":[20]}"#, "wrong_type");
    check(
        JSON,
        r#"{"sensor":"a","ts":1,"temp_c":20,"mode":1}"#,
        "wrong_type: mode: expected a string, got a number",
    );
}

#[test]
fn json_rejects_numbers_outside_the_schema_bounds() {
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":130}"#, "out_of_range: temp_c: 130 is outside -60..=125");
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":-60.01}"#, "out_of_range");
    check(JSON, r#"{"sensor":"a","ts":1,"temp_c":20,"humidity":100.5}"#, "out_of_range");
}

#[test]
fn json_rejects_tag_values_not_allowed_or_too_long() {
    check(
        JSON,
        r#"{"sensor":"a","ts":1,"temp_c":20,"mode":"turbo"}"#,
        r#"bad_tag: mode: "turbo" is not one of heat, cool, off, auto"#,
    );
    check_with(
        &with_free_mode(JSON),
        format!(r#"{{"sensor":"a","ts":1,"temp_c":20,"mode":"{}"}}"#, "m".repeat(65)).as_bytes(),
        "bad_tag: mode: 65 bytes, the limit is 64",
    );
}

#[test]
fn json_checks_values_in_a_fixed_order_whatever_the_key_order() {
    check(JSON, r#"{"temp_c":999,"ts":-1,"sensor":""}"#, "bad_sensor");
    check(JSON, r#"{"temp_c":999,"ts":-1,"sensor":"a"}"#, "bad_ts");
    check(
        JSON,
        r#"{"mode":"x","humidity":-1,"temp_c":999,"ts":1,"sensor":"a"}"#,
        "out_of_range: temp_c: 999 is outside -60..=125",
    );
}

#[test]
fn json_rejection_details_never_contain_a_newline() {
    check(
        JSON,
        r#"{"sensor":"a","ts":1,"temp_c":20,"mode":"a\nb"}"#,
        r#"bad_tag: mode: "a\nb" is not one of heat, cool, off, auto"#,
    );
    let rejection =
        thermostat(JSON).parse(b"{\"sensor\":\"a\",\"ts\":1,\"temp_c\":20,\"mode\":\"a\\nb\"}", NOW_MS);
    assert!(rejection.is_err_and(|rejection| !rejection.detail.contains('\n')));
}

// CSV: accepted.

#[test]
fn csv_accepts_all_fields_in_schema_order() {
    check(
        CSV,
        "t-017,1700000000123,21.37,44.1,20",
        "t-017 1700000000123 temp_c=21.37 humidity=44.1 setpoint_c=20 mode=-",
    );
}

#[test]
fn csv_treats_left_out_and_empty_optional_fields_as_absent() {
    check(
        CSV,
        "t-017,1700000000123,21.37",
        "t-017 1700000000123 temp_c=21.37 humidity=- setpoint_c=- mode=-",
    );
    check(
        CSV,
        "t-017,1700000000123,21.37,,19.5",
        "t-017 1700000000123 temp_c=21.37 humidity=- setpoint_c=19.5 mode=-",
    );
    check(
        CSV,
        "t-017,1700000000123,21.37,,",
        "t-017 1700000000123 temp_c=21.37 humidity=- setpoint_c=- mode=-",
    );
}

#[test]
fn csv_trims_whitespace_around_columns_and_a_trailing_carriage_return() {
    check(
        CSV,
        " t-017 , 1700000000123 ,\t21.37 , 44 \r",
        "t-017 1700000000123 temp_c=21.37 humidity=44 setpoint_c=- mode=-",
    );
}

// CSV: one test per rejection reason.

#[test]
fn csv_rejects_lines_over_the_limit() {
    check_with(&with_short_lines(CSV), format!("a,1,{}", "2".repeat(40)).as_bytes(), "line_too_long");
}

#[test]
fn csv_rejects_invalid_utf8() {
    check_with(&thermostat(CSV), b"t\xc3,1,20", "bad_utf8");
}

#[test]
fn csv_rejects_extra_columns_quotes_and_blank_lines_as_bad_syntax() {
    check(CSV, "a,1,20,50,20,7", "bad_syntax: 6 columns, at most 5 expected (sensor, ts and the fields)");
    check(CSV, r#""a",1,20"#, "bad_syntax: quoted CSV values are not supported");
    check(CSV, "  ", "bad_syntax: empty line");
}

#[test]
fn csv_rejects_an_empty_sensor_column() {
    check(CSV, ",1,20", "missing_sensor: sensor: empty column");
}

#[test]
fn csv_rejects_a_long_sensor_id() {
    check(CSV, &format!("{},1,20", "s".repeat(65)), "bad_sensor");
}

#[test]
fn csv_rejects_a_missing_or_empty_ts_column() {
    check(CSV, "a", "missing_ts: ts: missing or empty column");
    check(CSV, "a, ,20", "missing_ts");
}

#[test]
fn csv_rejects_timestamps_that_are_not_integer_ms_in_range() {
    check(CSV, "a,1.5e12,20", "bad_ts: ts: expected integer milliseconds");
    check(CSV, "a,2023-11-14T22:13:20Z,20", "bad_ts");
    check(CSV, "a,-5,20", "bad_ts: ts: -5 is outside 0..2^53");
    check(CSV, "sensor,ts,temp_c", "bad_ts");
}

#[test]
fn csv_rejects_timestamps_beyond_the_future_limit() {
    check(CSV, &format!("a,{},20", NOW_MS + 300_001), "future_ts");
}

#[test]
fn csv_rejects_a_missing_required_field_or_tag() {
    check(CSV, "a,1", "missing_field: temp_c: required field is missing or null");
    check(CSV, "a,1,,50", "missing_field");
    check_with(&with_required_mode(CSV), b"a,1,20", "missing_field: mode: required tag is missing or null");
}

#[test]
fn csv_rejects_non_numeric_fields() {
    check(CSV, "a,1,warm", "wrong_type: temp_c: expected a number");
    check(CSV, "a,1,20,true", "wrong_type");
}

#[test]
fn csv_rejects_nan_and_infinity() {
    check(CSV, "a,1,NaN", "non_finite: temp_c: NaN is not finite");
    check(CSV, "a,1,20,inf", "non_finite");
    check(CSV, "a,1,1e999", "non_finite");
}

#[test]
fn csv_rejects_numbers_outside_the_schema_bounds() {
    check(CSV, "a,1,20,101", "out_of_range: humidity: 101 is outside 0..=100");
}

// InfluxDB line protocol: accepted.

#[test]
fn influx_accepts_a_full_line_and_truncates_nanoseconds_to_ms() {
    check(
        INFLUX,
        "thermostat,sensor=t-017,mode=heat temp_c=21.37,humidity=44.1 1700000000123999999",
        "t-017 1700000000123 temp_c=21.37 humidity=44.1 setpoint_c=- mode=heat",
    );
}

#[test]
fn influx_converts_each_timestamp_precision_to_ms() {
    for (precision, ts) in [
        (TsPrecision::Nanoseconds, "1700000000123456789"),
        (TsPrecision::Microseconds, "1700000000123456"),
        (TsPrecision::Milliseconds, "1700000000123"),
    ] {
        check(
            Format::Influx(precision),
            &format!("m,sensor=a temp_c=1 {ts}"),
            "a 1700000000123 temp_c=1 humidity=- setpoint_c=- mode=-",
        );
    }
    check(
        Format::Influx(TsPrecision::Seconds),
        "m,sensor=a temp_c=1 1700000000",
        "a 1700000000000 temp_c=1 humidity=- setpoint_c=- mode=-",
    );
}

#[test]
fn influx_accepts_integer_fields_with_i_and_u_suffixes() {
    check(
        INFLUX,
        "m,sensor=a temp_c=-20i,humidity=40u 1000000",
        "a 1 temp_c=-20 humidity=40 setpoint_c=- mode=-",
    );
}

#[test]
fn influx_unescapes_tag_keys_and_values() {
    check(
        INFLUX,
        r"m\ x\,y,sens\=x=q,sensor=t\ 1\,a\=b\\c\d,mo\de=off temp_c=1 1000000",
        r"t 1,a=b\c\d 1 temp_c=1 humidity=- setpoint_c=- mode=-",
    );
}

#[test]
fn influx_ignores_unknown_tags_and_fields_of_any_type() {
    check(
        INFLUX,
        r#"m,site=roof,sensor=a,mode=cool note="a, b=c \"d\"",temp_c=1,ok=t,n=3i 1000000"#,
        "a 1 temp_c=1 humidity=- setpoint_c=- mode=cool",
    );
}

#[test]
fn influx_keeps_the_last_of_duplicate_tags_and_fields() {
    check(
        INFLUX,
        r#"m,sensor=a,sensor=b temp_c="x",temp_c=2 1000000"#,
        "b 1 temp_c=2 humidity=- setpoint_c=- mode=-",
    );
}

// InfluxDB line protocol: one test per rejection reason.

#[test]
fn influx_rejects_lines_over_the_limit() {
    check_with(
        &with_short_lines(INFLUX),
        format!("m,sensor=a temp_c=1 {}", "1".repeat(30)).as_bytes(),
        "line_too_long",
    );
}

#[test]
fn influx_rejects_invalid_utf8() {
    check_with(&thermostat(INFLUX), b"m,sensor=\xfe temp_c=1 1", "bad_utf8");
}

#[test]
fn influx_rejects_malformed_lines_as_bad_syntax() {
    check(INFLUX, "m,sensor=a", "bad_syntax: missing field set");
    check(INFLUX, "m,sensor=a ", "bad_syntax: missing field set");
    check(INFLUX, ",sensor=a temp_c=1 1", "bad_syntax: missing measurement");
    check(INFLUX, "m,sensor= temp_c=1 1", "bad_syntax");
    check(INFLUX, "m,sensor temp_c=1 1", "bad_syntax");
    check(INFLUX, "m,sensor=a=b temp_c=1 1", "bad_syntax");
    check(INFLUX, "m,sensor=a temp_c 1", "bad_syntax");
    check(INFLUX, "m,sensor=a temp_c=,humidity=1 1", "bad_syntax");
    check(INFLUX, "m,sensor=a temp_c=warm 1", "bad_syntax: temp_c: invalid field value");
    check(INFLUX, "m,sensor=a temp_c=1,other=2x 1", "bad_syntax");
    check(INFLUX, r#"m,sensor=a note="open 1"#, "bad_syntax: unterminated string field value");
    check(INFLUX, r#"m,sensor=a note="x"y 1"#, "bad_syntax");
    check(INFLUX, "m,sensor=a temp_c=1 1 2", "bad_syntax: unexpected text after the timestamp");
    check(INFLUX, "# a comment", "bad_syntax: comment line");
    check(INFLUX, "", "bad_syntax: empty line");
}

#[test]
fn influx_rejects_a_line_without_a_sensor_tag() {
    check(INFLUX, "m,mode=heat temp_c=1 1000000", "missing_sensor: sensor: no 'sensor' tag");
}

#[test]
fn influx_rejects_a_long_sensor_id() {
    check(INFLUX, &format!("m,sensor={} temp_c=1 1000000", "s".repeat(65)), "bad_sensor");
}

#[test]
fn influx_rejects_a_line_without_a_timestamp() {
    check(INFLUX, "m,sensor=a temp_c=1", "missing_ts: ts: the line has no timestamp");
    check(INFLUX, "m,sensor=a temp_c=1 ", "missing_ts");
}

#[test]
fn influx_rejects_timestamps_that_are_not_integers_in_range() {
    check(INFLUX, "m,sensor=a temp_c=1 1.5", "bad_ts: ts: expected an integer in nanoseconds");
    check(INFLUX, "m,sensor=a temp_c=1 -1", "bad_ts: ts: -1 is before the epoch");
    check(INFLUX, "m,sensor=a temp_c=1 99999999999999999999", "bad_ts");
    check(
        Format::Influx(TsPrecision::Seconds),
        "m,sensor=a temp_c=1 9223372036854776",
        "bad_ts: ts: 9223372036854776 s is outside 0..2^53 ms",
    );
    check(Format::Influx(TsPrecision::Milliseconds), "m,sensor=a temp_c=1 9007199254740992", "bad_ts");
}

#[test]
fn influx_rejects_timestamps_beyond_the_future_limit() {
    check(INFLUX, &format!("m,sensor=a temp_c=1 {}000000", NOW_MS + 300_001), "future_ts");
}

#[test]
fn influx_rejects_a_missing_required_field_or_tag() {
    check(
        INFLUX,
        "m,sensor=a humidity=1 1000000",
        "missing_field: temp_c: required field is missing or null",
    );
    check_with(
        &with_required_mode(INFLUX),
        b"m,sensor=a temp_c=1 1000000",
        "missing_field: mode: required tag is missing or null",
    );
}

#[test]
fn influx_rejects_string_and_boolean_values_for_schema_fields() {
    check(
        INFLUX,
        r#"m,sensor=a temp_c="20" 1000000"#,
        "wrong_type: temp_c: expected a float or an integer, got a string",
    );
    check(
        INFLUX,
        "m,sensor=a temp_c=1,humidity=true 1000000",
        "wrong_type: humidity: expected a float or an integer, got a boolean",
    );
}

#[test]
fn influx_rejects_nan_and_infinity() {
    check(INFLUX, "m,sensor=a temp_c=NaN 1000000", "non_finite");
    check(INFLUX, "m,sensor=a temp_c=1e999 1000000", "non_finite: temp_c: inf is not finite");
}

#[test]
fn influx_rejects_numbers_outside_the_schema_bounds() {
    check(INFLUX, "m,sensor=a temp_c=126i 1000000", "out_of_range: temp_c: 126 is outside -60..=125");
}

#[test]
fn influx_rejects_tag_values_not_allowed_or_too_long() {
    check(INFLUX, "m,sensor=a,mode=turbo temp_c=1 1000000", "bad_tag");
    check_with(
        &with_free_mode(INFLUX),
        format!("m,sensor=a,mode={} temp_c=1 1000000", "m".repeat(65)).as_bytes(),
        "bad_tag: mode: 65 bytes, the limit is 64",
    );
}

// The decoder: the sensor cap and the counters.

#[test]
fn decoder_counts_each_line_and_refuses_new_sensors_past_the_cap() {
    let parser = Arc::new(thermostat(JSON));
    let registry = Arc::new(SensorRegistry::new(1));
    let stats = Arc::new(SourceStats::new("test"));
    let mut decoder = LineDecoder::new(parser, registry, stats.clone());
    let accepted = decoder.decode(br#"{"sensor":"a","ts":1,"temp_c":20}"#, NOW_MS);
    assert_eq!(accepted.map(|reading| (reading.sensor, reading.ts_ms)), Ok((Arc::from("a"), 1)));
    let refused = decoder.decode(br#"{"sensor":"b","ts":1,"temp_c":20}"#, NOW_MS);
    assert_eq!(refused.map_err(|rejection| rejection.reason), Err(RejectReason::TooManySensors));
    let _ = decoder.decode(b"{", NOW_MS);
    decoder.reject_unparsed(RejectReason::LineTooLong);
    let snapshot = stats.snapshot();
    assert_eq!((snapshot.received, snapshot.accepted, snapshot.rejected_total()), (4, 1, 3));
    assert_eq!(snapshot.rejected_for(RejectReason::TooManySensors), 1);
    assert_eq!(snapshot.rejected_for(RejectReason::BadSyntax), 1);
}

// The conformance file shared with the Spark and Python peers.

/// The conformance schema: the thermostat bounds narrowed to those of `readings.py`, no tags
/// (the Python rule ignores every other key).
fn conformance_schema() -> Schema {
    Schema {
        fields: vec![
            FieldSpec { name: "temp_c".into(), required: true, min: -50.0, max: 100.0 },
            FieldSpec { name: "humidity".into(), required: false, min: 0.0, max: 100.0 },
        ],
        tags: Vec::<TagSpec>::new(),
    }
}

/// `parse_valid` of `readings.py`, written against `serde_json::Value`: an independent oracle.
fn python_rule_accepts(line: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(line) else {
        return false;
    };
    let in_range = |value: &serde_json::Value, min: f64, max: f64| {
        value.as_f64().is_some_and(|number| number.is_finite() && (min..=max).contains(&number))
    };
    let sensor_ok =
        object.get("sensor").and_then(|sensor| sensor.as_str()).is_some_and(|sensor| !sensor.is_empty());
    let ts_ok = object.get("ts").and_then(|ts| ts.as_u64()).is_some_and(|ts| ts < 1 << 53);
    let temp_ok = object.get("temp_c").is_some_and(|temp| in_range(temp, -50.0, 100.0));
    let humidity_ok = match object.get("humidity") {
        None | Some(serde_json::Value::Null) => true,
        Some(humidity) => in_range(humidity, 0.0, 100.0),
    };
    sensor_ok && ts_ok && temp_ok && humidity_ok
}

#[test]
fn conformance_sample_is_split_exactly_like_the_python_rule() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/conformance/readings_sample.jsonl");
    let contents = std::fs::read(path).unwrap_or_else(|err| {
        panic!("cannot read the conformance sample {path}: {err}; it lives in /work/shared/conformance beside the repository")
    });
    let parser = LineParser::new(JSON, Arc::new(conformance_schema()), Limits::default());
    // After the last event time in the file, so that no reading counts as in the future.
    let now_ms = 1_700_000_200_000;

    let mut n_accepted = 0;
    let mut rejected_by_reason = std::collections::BTreeMap::<RejectReason, usize>::new();
    for (line_idx, line) in contents.split(|byte| *byte == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let result = parser.parse(line, now_ms);
        assert_eq!(
            result.is_ok(),
            python_rule_accepts(line),
            "line {}: {:?} -> {result:?}",
            line_idx + 1,
            String::from_utf8_lossy(line)
        );
        match result {
            Ok(_) => n_accepted += 1,
            Err(rejection) => *rejected_by_reason.entry(rejection.reason).or_default() += 1,
        }
    }

    assert_eq!(n_accepted, 6012, "valid_lines of readings_sample.jsonl.meta.json");
    assert_eq!(
        rejected_by_reason.values().sum::<usize>(),
        16,
        "malformed of readings_sample.jsonl.meta.json"
    );
    // The 16 malformed kinds of the meta file, by the reason eddy counts them under.
    let expected = [
        // not_json, truncated_json, temp_nan, temp_inf
        (RejectReason::BadSyntax, 4),
        // json_array
        (RejectReason::NotObject, 1),
        // missing_sensor
        (RejectReason::MissingSensor, 1),
        // empty_sensor
        (RejectReason::BadSensor, 1),
        // missing_ts
        (RejectReason::MissingTs, 1),
        // ts_negative, ts_string
        (RejectReason::BadTs, 2),
        // missing_temp, temp_null
        (RejectReason::MissingField, 2),
        // temp_string
        (RejectReason::WrongType, 1),
        // temp_below_abs_zero, temp_absurd_high, humidity_absurd
        (RejectReason::OutOfRange, 3),
    ];
    assert_eq!(rejected_by_reason.into_iter().collect::<Vec<_>>(), expected);
}

// Properties.

/// A valid thermostat reading in parsed form, with sensor ids drawn from `sensor`.
fn valid_reading(sensor: impl Strategy<Value = String>) -> impl Strategy<Value = ParsedLine> {
    let centi = |range: std::ops::RangeInclusive<i32>| range.prop_map(|centi| f64::from(centi) / 100.0);
    (
        sensor,
        0..=NOW_MS,
        centi(-6000..=12500),
        proptest::option::of(centi(0..=10000)),
        proptest::option::of(centi(-6000..=12500)),
        proptest::option::of(proptest::sample::select(vec!["heat", "cool", "off", "auto"])),
    )
        .prop_map(|(sensor, ts_ms, temp_c, humidity, setpoint_c, mode)| ParsedLine {
            sensor,
            ts_ms,
            values: smallvec::smallvec![Some(temp_c), humidity, setpoint_c],
            tags: smallvec::smallvec![mode.map(Arc::from)],
        })
}

/// `reading` as a JSON line, absent values left out.
fn to_json(reading: &ParsedLine) -> String {
    let mut object = serde_json::Map::new();
    object.insert("sensor".into(), reading.sensor.clone().into());
    object.insert("ts".into(), reading.ts_ms.into());
    for (name, value) in ["temp_c", "humidity", "setpoint_c"].iter().zip(&reading.values) {
        if let Some(value) = value {
            object.insert((*name).into(), (*value).into());
        }
    }
    if let Some(mode) = &reading.tags[0] {
        object.insert("mode".into(), mode.to_string().into());
    }
    serde_json::Value::Object(object).to_string()
}

/// `reading` as a CSV line, absent values left empty.
fn to_csv(reading: &ParsedLine) -> String {
    let mut line = format!("{},{}", reading.sensor, reading.ts_ms);
    for value in &reading.values {
        line.push(',');
        if let Some(value) = value {
            line += &value.to_string();
        }
    }
    line
}

/// `reading` as a line-protocol line with a nanosecond timestamp `extra_ns` past its ms.
fn to_influx(reading: &ParsedLine, extra_ns: i64) -> String {
    let escape = |text: &str| {
        text.chars().fold(String::new(), |mut out, c| {
            if matches!(c, ',' | ' ' | '=' | '\\') {
                out.push('\\');
            }
            out.push(c);
            out
        })
    };
    let mut line = format!("thermostat,sensor={}", escape(&reading.sensor));
    if let Some(mode) = &reading.tags[0] {
        line += &format!(",mode={mode}");
    }
    let fields: Vec<String> = ["temp_c", "humidity", "setpoint_c"]
        .iter()
        .zip(&reading.values)
        .filter_map(|(name, value)| value.map(|value| format!("{name}={value}")))
        .collect();
    line += &format!(" {} {}", fields.join(","), reading.ts_ms * 1_000_000 + extra_ns);
    line
}

/// A non-empty JSON string of at most 64 bytes, any characters.
fn any_sensor() -> impl Strategy<Value = String> {
    "\\PC{1,64}".prop_filter("at most 64 bytes", |sensor| sensor.len() <= 64)
}

proptest! {
    #[test]
    fn no_format_panics_on_arbitrary_bytes(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        for format in [JSON, CSV, INFLUX, Format::Influx(TsPrecision::Seconds)] {
            if let Err(rejection) = thermostat(format).parse(&line, NOW_MS) {
                prop_assert!(!rejection.detail.contains('\n'));
            }
        }
    }

    #[test]
    fn no_format_panics_on_near_miss_lines(line in r#"[{}\[\]":,=\\ 0-9a-z_.eEiu+-]{0,120}"#) {
        for format in [JSON, CSV, INFLUX, Format::Influx(TsPrecision::Seconds)] {
            let _ = thermostat(format).parse(line.as_bytes(), NOW_MS);
        }
        let prefixed = format!("m,sensor=a {line}");
        let _ = thermostat(INFLUX).parse(prefixed.as_bytes(), NOW_MS);
        let prefixed = format!(r#"{{"sensor":"a","ts":1,{line}"#);
        let _ = thermostat(JSON).parse(prefixed.as_bytes(), NOW_MS);
    }

    #[test]
    fn json_round_trips_a_valid_reading(reading in valid_reading(any_sensor())) {
        let line = to_json(&reading);
        prop_assert_eq!(thermostat(JSON).parse(line.as_bytes(), NOW_MS), Ok(reading), "line {}", line);
    }

    #[test]
    fn csv_round_trips_a_valid_reading(reading in valid_reading("[A-Za-z0-9_.:/-]{1,64}")) {
        let mut reading = reading;
        reading.tags = smallvec::smallvec![None];
        let line = to_csv(&reading);
        prop_assert_eq!(thermostat(CSV).parse(line.as_bytes(), NOW_MS), Ok(reading), "line {}", line);
    }

    #[test]
    fn influx_round_trips_a_valid_reading(
        reading in valid_reading(r"[A-Za-z0-9_.:/, =\\-]{1,64}"),
        extra_ns in 0..1_000_000i64,
    ) {
        let line = to_influx(&reading, extra_ns);
        prop_assert_eq!(thermostat(INFLUX).parse(line.as_bytes(), NOW_MS), Ok(reading), "line {}", line);
    }
}

#[test]
fn limits_default_to_4_kib_lines_and_five_minutes_ahead() {
    assert_eq!(Limits::default(), Limits { max_line_bytes: 4096, max_future: Duration::from_secs(300) });
}

/// A schema with more fields and tags than the JSON parser keeps inline (8) is read the same
/// way: every slot in schema order, the last duplicate winning, a wrong type named by field.
#[test]
fn json_schemas_larger_than_the_inline_slots_parse_alike() {
    let schema = Schema {
        fields: (0..11)
            .map(|idx| FieldSpec { name: format!("f{idx}"), required: idx == 0, min: -1e9, max: 1e9 })
            .collect(),
        tags: (0..10)
            .map(|idx| TagSpec { name: format!("t{idx}"), required: false, values: vec![] })
            .collect(),
    };
    let parser = LineParser::new(JSON, Arc::new(schema), Limits::default());
    let line = br#"{"sensor":"s\u0031","ts":1700000000000,"f10":10,"f0":"x","f0":0.5,"f9":9,"t9":"nine","t0":"zero"}"#;
    let parsed = parser.parse(line, NOW_MS).unwrap();
    assert_eq!(parsed.sensor, "s1");
    let mut values = [None; 11];
    values[0] = Some(0.5);
    values[9] = Some(9.0);
    values[10] = Some(10.0);
    assert_eq!(parsed.values[..], values[..]);
    assert_eq!(parsed.tags[0].as_deref(), Some("zero"));
    assert_eq!(parsed.tags[9].as_deref(), Some("nine"));
    assert!(parsed.tags[1..9].iter().all(Option::is_none));
    let wrong = parser.parse(br#"{"sensor":"s","ts":1700000000000,"f0":1,"f10":true}"#, NOW_MS).unwrap_err();
    assert_eq!(
        (wrong.reason, wrong.detail.as_str()),
        (RejectReason::WrongType, "f10: expected a number, got a boolean")
    );
    // Through the decoder too, whose ids borrow from the line.
    let registry = Arc::new(SensorRegistry::new(10));
    let mut decoder = LineDecoder::new(Arc::new(parser), registry, Arc::new(SourceStats::new("in")));
    let reading = decoder.decode(line, NOW_MS).unwrap();
    assert_eq!((&*reading.sensor, reading.values[9]), ("s1", Some(9.0)));
}

/// The common reading costs no allocation of its own: a thermostat's 3 fields and its tag
/// are held inside the reading (`Values`, `Tags`), in every format; a schema wider than the
/// inline room still gets every value, from the heap.
#[test]
fn a_thermostat_reading_holds_its_values_and_tags_inline() {
    let registry = Arc::new(SensorRegistry::new(10));
    let lines: [(Format, &[u8]); 3] = [
        (JSON, br#"{"sensor":"t-1","ts":1700000000000,"temp_c":21.5,"humidity":45.1,"setpoint_c":21,"mode":"heat"}"#),
        (Format::Csv, b"t-1,1700000000000,21.5,45.1,21"),
        (
            Format::Influx(TsPrecision::Milliseconds),
            b"thermostat,sensor=t-1,mode=heat temp_c=21.5,humidity=45.1,setpoint_c=21 1700000000000",
        ),
    ];
    for (format, line) in lines {
        let parser = Arc::new(LineParser::new(format, Arc::new(Schema::thermostat()), Limits::default()));
        let mut decoder = LineDecoder::new(parser, registry.clone(), Arc::new(SourceStats::new("in")));
        let reading = decoder.decode(line, NOW_MS).unwrap();
        assert_eq!(reading.values[..], [Some(21.5), Some(45.1), Some(21.0)], "{format:?}");
        assert!(
            !reading.values.spilled() && !reading.tags.spilled(),
            "{format:?}: values or tags on the heap"
        );
    }
    let wide = Schema {
        fields: (0..6)
            .map(|idx| FieldSpec { name: format!("f{idx}"), required: false, min: -1e9, max: 1e9 })
            .collect(),
        ..Schema::thermostat()
    };
    let parser = Arc::new(LineParser::new(JSON, Arc::new(wide), Limits::default()));
    let mut decoder = LineDecoder::new(parser, registry, Arc::new(SourceStats::new("in")));
    let reading = decoder.decode(br#"{"sensor":"w","ts":1700000000000,"f0":0,"f5":5}"#, NOW_MS).unwrap();
    assert!(reading.values.spilled());
    assert_eq!(reading.values[..], [Some(0.0), None, None, None, None, Some(5.0)]);
}

/// Pieces of JSON-ish lines: valid and invalid numbers, strings with and without escapes,
/// nested values, literals and junk, for the fast path's differential test.
fn json_value_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|number| number.to_string()),
        any::<u64>().prop_map(|number| number.to_string()),
        (any::<i32>(), 0u32..18).prop_map(|(int, frac_digits)| {
            let frac: String = (0..frac_digits)
                .map(|idx| char::from(b'0' + u8::try_from((idx * 7 + 3) % 10).unwrap()))
                .collect();
            if frac.is_empty() {
                format!("{int}.")
            } else {
                format!("{int}.{frac}")
            }
        }),
        any::<f64>().prop_map(|number| format!("{number}")),
        any::<f64>().prop_map(|number| format!("{number:e}")),
        (0.0f64..100.0).prop_map(|number| format!("{number:.2}")),
        prop::sample::select(vec![
            "0",
            "-0",
            "-0.0",
            "0.0",
            "01",
            "-01",
            "1.",
            ".5",
            "+1",
            "-",
            "1e5",
            "1E-3",
            "2.5e+2",
            "123456789012345",
            "1234567890123456",
            "12345678901234.5",
            "0.123456789012345",
            "9007199254740993",
            "18446744073709551616",
            "-9223372036854775809",
            "1.7e12",
            "1700000000123",
            "1700000000000.0",
            "21.37",
            "-5",
            "NaN",
            "Infinity",
            "1e999",
            "null",
            "true",
            "false",
            "nul",
            "tru",
            "[]",
            "[1,2]",
            "{}",
            "{\"a\":[1,{\"b\":2}]}",
            "\"heat\"",
            "\"\"",
            "\"a\\\"b\"",
            "\"t-\\u0030\"",
            "\"\u{7}\"",
            "\"é\"",
            "\"t-001\"",
            "\"2023-11-14T22:13:20.123Z\"",
            "\"unterminated",
            "x",
        ])
        .prop_map(str::to_owned),
    ]
}

fn json_key_piece() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "\"sensor\"",
        "\"ts\"",
        "\"temp_c\"",
        "\"humidity\"",
        "\"setpoint_c\"",
        "\"mode\"",
        "\"other\"",
        "\"temp\\u005fc\"",
        "\"\"",
        "sensor",
        "\"mo\u{1}de\"",
    ])
    .prop_map(str::to_owned)
}

fn json_ws_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\t", "  ", "\r", "\n"])
}

/// A line: an object of pieces with random whitespace and separators, sometimes broken.
fn json_line() -> impl Strategy<Value = String> {
    let member = (
        json_ws_piece(),
        json_key_piece(),
        json_ws_piece(),
        json_ws_piece(),
        json_value_piece(),
        json_ws_piece(),
    )
        .prop_map(|(ws1, key, ws2, ws3, value, ws4)| format!("{ws1}{key}{ws2}:{ws3}{value}{ws4}"));
    (
        json_ws_piece(),
        prop::collection::vec(member, 0..8),
        prop::sample::select(vec![",", ",", ",", ";", ", ,", ""]),
        json_ws_piece(),
        prop::sample::select(vec!["}", "}", "}", ",}", "} x", "}}", ""]),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(ws, members, separator, ws_end, close, cut, truncate)| {
            let line = format!("{ws}{{{}{ws_end}{close}", members.join(separator));
            if truncate && !line.is_empty() {
                let at = cut.index(line.len());
                let at = (0..=at).rev().find(|at| line.is_char_boundary(*at)).unwrap_or(0);
                line[..at].to_owned()
            } else {
                line
            }
        })
}

fn parse_json_both_ways(parser: &LineParser, line: &str) -> (String, String) {
    let schema = parser.schema();
    let fast = super::json::parse_json_with(parser, line, None, NOW_MS, true).map(super::Parsed::into_line);
    let slow = super::json::parse_json_with(parser, line, None, NOW_MS, false).map(super::Parsed::into_line);
    (render(schema, &fast), render(schema, &slow))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// The hand-written fast path reads every line it accepts exactly as serde_json does
    /// (values to the bit, through `render`'s shortest round-trip formatting), and leaves
    /// every other line, and so every rejection, to serde_json.
    #[test]
    fn json_fast_path_reads_what_serde_json_reads(line in json_line()) {
        let parser = thermostat(Format::Json);
        let (fast, slow) = parse_json_both_ways(&parser, &line);
        prop_assert_eq!(fast, slow, "line {:?}", line);
    }
}

#[test]
fn json_fast_path_takes_the_common_lines() {
    let schema = Schema::thermostat();
    for line in [
        r#"{"sensor":"t-017","ts":1700000000123,"temp_c":21.37,"humidity":44.1,"mode":"heat"}"#,
        r#"{ "sensor": "t-1", "ts": 1700000000000, "temp_c": -3, "humidity": null, "extra": true }"#,
        r#"{"ts":1700000000000,"sensor":"t-1","setpoint_c":20.5,"sensor":"t-2"}"#,
    ] {
        assert!(super::json::scans_flat(line, &schema), "{line}");
    }
    for line in [
        r#"{"sensor":"t\u0031","ts":1}"#,
        r#"{"sensor":"t-1","ts":1.7e12}"#,
        r#"{"sensor":"t-1","ts":1,"extra":[1]}"#,
        r#"{"sensor":"t-1","ts":1,}"#,
        r#"{"sensor":"t-1","ts":-0}"#,
        r#"{"sensor":"t-1","temp_c":0.1234567890123456}"#,
    ] {
        assert!(!super::json::scans_flat(line, &schema), "{line}");
    }
    // And the fast path's readings are the ones expected.
    check(
        Format::Json,
        r#"{"sensor":"t-017","ts":1700000000123,"temp_c":21.37,"humidity":44.1,"mode":"heat"}"#,
        "t-017 1700000000123 temp_c=21.37 humidity=44.1 setpoint_c=- mode=heat",
    );
}

/// A number as a thermostat might write it: any magnitude, 0 to 14 decimals.
fn json_number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // In the thermostat's ranges, so that most lines are accepted and their values compared.
        8 => (0.0f64..100.0, 0usize..15).prop_map(|(number, decimals)| format!("{number:.decimals$}")),
        1 => (-1.0e6f64..1.0e6, 0usize..15).prop_map(|(number, decimals)| format!("{number:.decimals$}")),
        1 => (-1.0e12f64..1.0e12, 0usize..4).prop_map(|(number, decimals)| format!("{number:.decimals$}")),
        1 => any::<i32>().prop_map(|number| number.to_string()),
        1 => (0u64..1_000_000_000_000_000).prop_map(|number| number.to_string()),
    ]
}

/// A well-formed thermostat line in random key order and spacing: mostly the fast path.
fn json_thermostat_line() -> impl Strategy<Value = (String, bool)> {
    (
        1_699_999_000_000i64..1_700_000_100_000,
        json_number_text(),
        json_number_text(),
        prop::option::of(json_number_text()),
        prop::sample::select(vec!["heat", "cool", "off", "auto"]),
        any::<prop::sample::Index>(),
        json_ws_piece(),
        any::<bool>(),
    )
        .prop_map(|(ts, temp, humidity, setpoint, mode, order, ws, extra)| {
            let mut members = vec![
                "\"sensor\":\"t-042\"".to_owned(),
                format!("\"ts\":{ws}{ts}"),
                format!("\"temp_c\":{temp}"),
                format!("\"humidity\"{ws}:{humidity}"),
                format!("\"mode\":\"{mode}\""),
            ];
            if let Some(setpoint) = setpoint {
                members.push(format!("\"setpoint_c\":{setpoint}"));
            }
            if extra {
                members.push("\"fw\":\"1.2.3\",\"ok\":true,\"n\":null".to_owned());
            }
            let len = members.len();
            members.rotate_left(order.index(len));
            let line = format!("{{{ws}{}{ws}}}", members.join(&format!(",{ws}")));
            let fast = super::json::scans_flat(&line, &Schema::thermostat());
            (line, fast)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// [`json_fast_path_reads_what_serde_json_reads`] on well-formed lines, where the fast path
    /// reads most of them: every number to the bit.
    #[test]
    fn json_fast_path_reads_numbers_to_the_bit_as_serde_json((line, fast) in json_thermostat_line()) {
        let parser = thermostat(Format::Json);
        let (fast_result, slow_result) = parse_json_both_ways(&parser, &line);
        prop_assert_eq!(&fast_result, &slow_result, "line {:?}", line);
        // Numbers of 15 digits or fewer without exponent: the fast path's own lines.
        let long_number = line
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .any(|number| number.chars().filter(char::is_ascii_digit).count() > 15);
        prop_assert!(fast || long_number, "left to serde_json: {:?}", line);
    }
}
