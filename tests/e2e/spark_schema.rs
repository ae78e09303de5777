//! The Spark side's contract (examples/spark, issue #16), checked without Spark: the schema
//! the fleet view reads records with is docs/records.schema.json, and the chain's checker
//! refuses a redelivered id whose record differs and a Spark view that differs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn spark_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/spark")
}

fn python(script: &str, args: &[&str]) -> Output {
    Command::new("python3").arg(spark_dir().join(script)).args(args).output().expect("python3 runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn the_spark_schema_is_the_documented_record_schema() {
    let output = python("check_schema.py", &[]);
    assert!(
        output.status.success(),
        "examples/spark/records_schema.py drifted from the contract:\n{}",
        text(&output)
    );
}

#[test]
fn the_schema_check_notices_a_changed_type() {
    let contract =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/records.schema.json"))
            .unwrap();
    let changed = contract.replacen(
        r#""count": { "type": "integer", "minimum": 1 }"#,
        r#""count": { "type": "number", "minimum": 1 }"#,
        1,
    );
    assert_ne!(changed, contract, "the window record's count key moved: update this test");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.schema.json");
    std::fs::write(&path, changed).unwrap();
    let output = python("check_schema.py", &[path.to_str().unwrap()]);
    assert!(!output.status.success(), "a changed type passed:\n{}", text(&output));
    assert!(text(&output).contains("'count'"), "the message should name the key:\n{}", text(&output));
}

const WINDOW: &str = r#"{"type":"window","window":"w5s","device":"gw-a","sensor":"t-000","field":"temp_c","start":1700000000000,"end":1700000005000,"count":2,"sum":43.0,"min":21.0,"max":22.0,"mean":21.5,"stddev":0.5,"first":21.0,"last":22.0,"id":"gw-a/w5s/t-000/temp_c/1700000000000"}"#;
const LATE: &str = r#"{"type":"late","window":"w5s","device":"gw-a","sensor":"t-000","ts":1700000001000,"watermark":1700000010000,"values":{"temp_c":20.5},"id":"gw-a/w5s/t-000/late/1"}"#;

/// A fleet view as fleet_view.py writes it for the records WINDOW (twice) and LATE, with an
/// hour of 3600000 ms; `mean_mean` is `mean`.
fn write_view(dir: &Path, mean: f64) {
    let windows = dir.join("view/windows");
    let late = dir.join("view/late");
    std::fs::create_dir_all(&windows).unwrap();
    std::fs::create_dir_all(&late).unwrap();
    let mut row = serde_json::json!({"device": "gw-a", "hour_ms": 1699999200000_i64, "window": "w5s", "field": "temp_c", "windows": 1});
    for (agg, value) in [
        ("count", 2.0),
        ("sum", 43.0),
        ("min", 21.0),
        ("max", 22.0),
        ("mean", mean),
        ("stddev", 0.5),
        ("first", 21.0),
        ("last", 22.0),
    ] {
        for stat in ["mean", "min", "max"] {
            row[format!("{agg}_{stat}")] = serde_json::json!(value);
        }
        row[format!("{agg}_n")] = serde_json::json!(1);
    }
    std::fs::write(windows.join("part-00000.json"), format!("{row}\n")).unwrap();
    std::fs::write(
        late.join("part-00000.json"),
        "{\"device\":\"gw-a\",\"hour_ms\":1699999200000,\"late_readings\":1}\n",
    )
    .unwrap();
}

fn check(dir: &Path) -> Output {
    let records = dir.join("records");
    let view = dir.join("view");
    python(
        "fleet_check.py",
        &[
            "--records",
            records.to_str().unwrap(),
            "--spark-out",
            view.to_str().unwrap(),
            "--hour-ms",
            "3600000",
        ],
    )
}

#[test]
fn the_fleet_checker_drops_duplicates_and_compares_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("records")).unwrap();
    std::fs::write(dir.path().join("records/gw-a-000001.jsonl"), format!("{WINDOW}\n{LATE}\n")).unwrap();
    std::fs::write(dir.path().join("records/gw-a-000002.jsonl"), format!("{WINDOW}\n")).unwrap();
    write_view(dir.path(), 21.5);
    let output = check(dir.path());
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("\"duplicates_dropped\": 1"), "{}", text(&output));

    write_view(dir.path(), 21.6);
    let output = check(dir.path());
    assert!(!output.status.success(), "a wrong mean passed:\n{}", text(&output));
    assert!(text(&output).contains("mean_mean is 21.6 in Spark, 21.5"), "{}", text(&output));
}

#[test]
fn the_fleet_checker_refuses_an_id_redelivered_with_other_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("records")).unwrap();
    let changed = WINDOW.replace("\"last\":22.0", "\"last\":22.5");
    std::fs::write(dir.path().join("records/gw-a-000001.jsonl"), format!("{WINDOW}\n{LATE}\n{changed}\n"))
        .unwrap();
    write_view(dir.path(), 21.5);
    let output = check(dir.path());
    assert!(!output.status.success(), "a changed redelivery passed:\n{}", text(&output));
    assert!(text(&output).contains("again with other contents"), "{}", text(&output));
}
