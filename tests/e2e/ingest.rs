//! Ingest over TCP: every rejection class answered with its reason, and a flood of garbage
//! on one connection never disturbs another.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::{send_with_acks, Eddy};

fn config() -> String {
    ConfigToml::new("gw-ingest")
        .table("ingest")
        .key("flush_interval", "5ms")
        .key("max_line_bytes", 256)
        .key("max_sensors", 3)
        .key("max_future", "5m")
        // A clock this eddy believes (this machine's kernel says it is not synchronised, and
        // an untrusted clock refuses nothing as future_ts: tests/e2e/clock.rs).
        .table("clock")
        .key("trust", "always")
        .tcp_source("in")
        .key("ack", true)
        .window("w", "10s")
        .to_toml()
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

#[test]
fn every_rejection_class_is_answered_with_its_reason() {
    let eddy = Eddy::start(&config()).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let ts = now_ms();
    let too_long = format!(r#"{{"sensor":"s1","ts":{ts},"temp_c":20.0,"pad":"{}"}}"#, "x".repeat(400));
    let cases: Vec<(String, Option<&str>)> = vec![
        (format!(r#"{{"sensor":"s1","ts":{ts},"temp_c":20.5,"mode":"heat"}}"#), None),
        (r#"{"sensor":"s1","ts":"#.to_owned(), Some("bad_syntax")),
        ("[1,2,3]".to_owned(), Some("not_object")),
        (format!(r#"{{"ts":{ts},"temp_c":20.0}}"#), Some("missing_sensor")),
        (format!(r#"{{"sensor":"","ts":{ts},"temp_c":20.0}}"#), Some("bad_sensor")),
        (format!(r#"{{"sensor":"{}","ts":{ts},"temp_c":20.0}}"#, "s".repeat(65)), Some("bad_sensor")),
        (r#"{"sensor":"s1","temp_c":20.0}"#.to_owned(), Some("missing_ts")),
        (r#"{"sensor":"s1","ts":1.5,"temp_c":20.0}"#.to_owned(), Some("bad_ts")),
        (r#"{"sensor":"s1","ts":-5,"temp_c":20.0}"#.to_owned(), Some("bad_ts")),
        (format!(r#"{{"sensor":"s1","ts":{},"temp_c":20.0}}"#, ts + 3_600_000), Some("future_ts")),
        (format!(r#"{{"sensor":"s1","ts":{ts}}}"#), Some("missing_field")),
        (format!(r#"{{"sensor":"s1","ts":{ts},"temp_c":"warm"}}"#), Some("wrong_type")),
        (format!(r#"{{"sensor":"s1","ts":{ts},"temp_c":1e999}}"#), None /* parse error or non_finite */),
        (format!(r#"{{"sensor":"s1","ts":{ts},"temp_c":130.0}}"#), Some("out_of_range")),
        (format!(r#"{{"sensor":"s1","ts":{ts},"temp_c":20.0,"humidity":101}}"#), Some("out_of_range")),
        (format!(r#"{{"sensor":"s1","ts":{ts},"temp_c":20.0,"mode":"turbo"}}"#), Some("bad_tag")),
        (too_long, Some("line_too_long")),
        (format!(r#"{{"sensor":"s2","ts":{ts},"temp_c":20.0}}"#), None),
        (format!(r#"{{"sensor":"s3","ts":{ts},"temp_c":20.0}}"#), None),
        (format!(r#"{{"sensor":"s4","ts":{ts},"temp_c":20.0}}"#), Some("too_many_sensors")),
        ("2023-11-14T22:13:20Z".to_owned(), Some("bad_syntax")),
        (r#"{"sensor":"s1","ts":"2023-11-14T22:13:20.5+01:00","temp_c":21.0}"#.to_owned(), None),
    ];
    let mut lines: Vec<Vec<u8>> = cases.iter().map(|(line, _)| line.clone().into_bytes()).collect();
    lines.push(b"\xff\xfe{not utf8}".to_vec());
    let line_refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
    let replies = send_with_acks(address, &line_refs, Duration::from_secs(20)).expect("answered");

    let mut expected_errors: Vec<(u64, &str)> = Vec::new();
    for (idx, (_, reason)) in cases.iter().enumerate() {
        if let Some(reason) = reason {
            expected_errors.push((u64::try_from(idx).unwrap() + 1, reason));
        }
    }
    expected_errors.push((u64::try_from(lines.len()).unwrap(), "bad_utf8"));
    // 1e999 is an error of its own class (bad_syntax or non_finite): checked separately.
    let inf_line = 13;
    let (inf_errors, errors): (Vec<_>, Vec<_>) =
        replies.errors.iter().partition(|(line, _)| *line == inf_line);
    assert_eq!(inf_errors.len(), 1, "1e999 must be rejected: {:?}", replies.errors);
    assert!(
        inf_errors[0].1.starts_with("bad_syntax") || inf_errors[0].1.starts_with("non_finite"),
        "{:?}",
        inf_errors[0]
    );
    let got: Vec<(u64, String)> = errors
        .iter()
        .map(|(line, reason)| (*line, reason.split_whitespace().next().unwrap_or("").to_owned()))
        .collect();
    let want: Vec<(u64, String)> =
        expected_errors.iter().map(|(line, reason)| (*line, (*reason).to_owned())).collect();
    assert_eq!(got, want, "err lines (line number, reason)");
    assert_eq!(replies.acked, 4, "the four valid readings are acked");
    // The connection and eddy survive: a further valid reading is still accepted.
    let more = format!(r#"{{"sensor":"s2","ts":{ts},"temp_c":19.0}}"#);
    let replies = send_with_acks(address, &[more.as_bytes()], Duration::from_secs(10)).expect("answered");
    assert_eq!(replies.acked, 1);
}

#[test]
fn a_garbage_flood_on_one_connection_does_not_disturb_another() {
    let eddy = Eddy::start(&config()).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let flood = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(address).expect("connect");
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut sent = 0usize;
        let mut block = vec![0u8; 64 * 1024];
        while sent < 8 * 1024 * 1024 {
            for byte in block.iter_mut() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *byte = rng.to_le_bytes()[0];
            }
            // Some very long lines, some short ones, some with newlines.
            if stream.write_all(&block).is_err() {
                break;
            }
            sent += block.len();
        }
    });
    let ts = now_ms() - 60_000;
    let lines: Vec<String> =
        (0..2000).map(|idx| format!(r#"{{"sensor":"s1","ts":{},"temp_c":21.5}}"#, ts + idx)).collect();
    let line_refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
    let replies =
        send_with_acks(address, &line_refs, Duration::from_secs(60)).expect("healthy connection answered");
    assert_eq!(replies.acked, 2000);
    assert!(replies.errors.is_empty());
    flood.join().unwrap();
    assert!(eddy.log().contains("eddy is ready."));
}
