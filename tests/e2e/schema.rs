//! The public contract: every record eddy forwards validates against `docs/records.schema.json`
//! (checked by a small validator of the keywords that file uses), and the schema describes every
//! record type and every key eddy writes.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use eddy_tests::config::{raw, ConfigToml};
use eddy_tests::{read_jsonl, Eddy};
use serde_json::Value;

use crate::uplink::{base_ms, send, wait_for};

fn schema() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/records.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).expect("the schema is JSON")
}

/// Validates `value` against `schema` (keywords: $ref to #/$defs, oneOf, type, const, required,
/// properties, additionalProperties, minimum, pattern as a simple character-class check).
/// Returns the first problem.
fn validate(root: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name =
            reference.strip_prefix("#/$defs/").ok_or_else(|| format!("unsupported $ref {reference}"))?;
        validate(root, &root["$defs"][name], value, at)?;
    }
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options.iter().filter(|option| validate(root, option, value, at).is_ok()).count();
        if matching != 1 {
            let errors: Vec<String> =
                options.iter().filter_map(|option| validate(root, option, value, at).err()).collect();
            return Err(format!("{at}: matches {matching} of oneOf: {errors:?}"));
        }
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|kind| match *kind {
            "object" => value.is_object(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "null" => value.is_null(),
            "array" => value.is_array(),
            "boolean" => value.is_boolean(),
            _ => false,
        });
        if !ok {
            return Err(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(expected) = schema.get("const") {
        if value != expected {
            return Err(format!("{at}: {value} is not {expected}"));
        }
    }
    if let (Some(minimum), Some(number)) = (schema.get("minimum").and_then(Value::as_f64), value.as_f64()) {
        if number < minimum {
            return Err(format!("{at}: {number} < {minimum}"));
        }
    }
    if let Some(object) = value.as_object() {
        for key in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
            let key = key.as_str().unwrap_or_default();
            if !object.contains_key(key) {
                return Err(format!("{at}: missing `{key}`"));
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (key, item) in object {
            match properties.and_then(|properties| properties.get(key)) {
                Some(property) => validate(root, property, item, &format!("{at}.{key}"))?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => return Err(format!("{at}: `{key}` is not in the schema")),
                    Some(extra @ Value::Object(_)) => validate(root, extra, item, &format!("{at}.{key}"))?,
                    _ => {}
                },
            }
        }
    }
    Ok(())
}

fn config() -> String {
    ConfigToml::new("gw-schema")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .key("forward_raw", true)
        // One value per window, so that a second one shows the `other` key (issue #14).
        .key("count_by_max_values", 1)
        .schema_fields(&[
            "{ name = \"temp_c\", required = true, min = -60.0, max = 125.0 }",
            "{ name = \"humidity\", min = 0.0, max = 100.0 }",
            "{ name = \"setpoint_c\", min = -60.0, max = 125.0 }",
        ])
        .key("tags", raw("[{ name = \"mode\" }]"))
        .table("batch")
        .key("interval", "100ms")
        .tcp_source("in")
        .key("ack", true)
        .window("w1s", "1s")
        .key("lateness", "0s")
        .key("aggregates", ["count", "sum", "min", "max", "mean", "stddev", "first", "last"])
        .key("count_by", ["mode"])
        .file_sink("all", "{dir}/all.jsonl")
        .key("records", ["window", "batch", "late", "raw"])
        .to_toml()
}

#[test]
fn every_forwarded_record_validates_against_the_published_schema() {
    let schema = schema();
    let mut eddy = Eddy::start(&config()).expect("eddy starts");
    let base = base_ms();
    let mut lines = Vec::new();
    for tick in 0..30 {
        let ts = base + tick * 100;
        let mode = if tick % 2 == 0 { "heat" } else { "fan" };
        lines
            .push(format!(r#"{{"sensor":"a/b%c","ts":{ts},"temp_c":21.5,"humidity":40.0,"mode":"{mode}"}}"#));
        lines.push(format!(r#"{{"sensor":"s2","ts":{ts},"temp_c":19.0,"mode":"cool"}}"#));
    }
    // Late for the first window of s2.
    lines.push(format!(r#"{{"sensor":"s2","ts":{},"temp_c":18.0}}"#, base + 50));
    send(&eddy, &lines);
    let path = eddy.dir.join("all.jsonl");
    wait_for(&eddy, Duration::from_secs(20), "every kind of record", || {
        let kinds: BTreeSet<String> =
            read_jsonl(&path).iter().filter_map(|r| r["type"].as_str().map(str::to_owned)).collect();
        kinds.len() == 5
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let records = read_jsonl(&path);
    let mut keys_seen: BTreeSet<(String, String)> = BTreeSet::new();
    for record in &records {
        if let Err(problem) = validate(&schema, &schema, record, "record") {
            panic!("{record}\ndoes not validate: {problem}");
        }
        let kind = record["type"].as_str().unwrap().to_owned();
        for key in record.as_object().unwrap().keys() {
            keys_seen.insert((kind.clone(), key.clone()));
        }
    }
    // The schema documents no key eddy never writes (with every aggregate configured), but for
    // the keys of downsampled records, which only a full disk budget makes (the daemon's unit
    // test `engine::downsample::tests::merged_records_have_only_the_keys_the_schema_documents`
    // checks them against this file).
    const DOWNSAMPLED_KEYS: [&str; 5] =
        ["downsampled", "resolution", "merged", "covered_start", "covered_end"];
    for kind in ["window", "window_counts", "batch", "late", "raw"] {
        let documented: BTreeSet<&String> = schema["$defs"][kind]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|key| !DOWNSAMPLED_KEYS.contains(&key.as_str()))
            .collect();
        let written: BTreeSet<&String> =
            keys_seen.iter().filter(|(k, _)| k == kind).map(|(_, key)| key).collect();
        assert_eq!(documented, written, "keys of `{kind}` records");
    }
    // The validator is not vacuous.
    let mut broken = records[0].clone();
    broken["start"] = Value::String("yesterday".into());
    assert!(validate(&schema, &schema, &broken, "record").is_err());
}
