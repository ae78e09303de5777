//! Graceful shutdown: a SIGTERM in the middle of a stream loses nothing that was acked, and
//! open windows survive the restart.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::{read_jsonl, wait_until, Eddy};

fn config() -> String {
    ConfigToml::new("gw-stop")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "200ms")
        .key("idle_timeout", "1s")
        .tcp_source("in")
        .key("ack", true)
        .window("tumbling", "1s")
        .key("fields", ["temp_c"])
        .key("aggregates", ["count"])
        .file_sink("results", "{dir}/results.jsonl")
        .key("records", ["window"])
        .to_toml()
}

#[test]
fn sigterm_mid_stream_loses_no_acked_reading() {
    let dir = tempfile::tempdir().unwrap();
    let mut eddy = Eddy::start_in(dir.path(), &config()).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let stream = TcpStream::connect(address).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let base =
        i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap() - 120_000;
    let sender = std::thread::spawn(move || {
        let mut sent = 0u64;
        for idx in 0..200_000i64 {
            let line = format!("{{\"sensor\":\"s{}\",\"ts\":{},\"temp_c\":20.0}}\n", idx % 7, base + idx / 2);
            if writer.write_all(line.as_bytes()).is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    // Read acks until the server closes the connection after draining.
    let mut reader = BufReader::new(stream);
    let mut acked = 0u64;
    let mut line = String::new();
    let mut asked_to_stop = false;
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if let Some(n) = line.trim().strip_prefix("ack ") {
                    acked = n.parse().unwrap();
                }
                if acked > 20_000 && !asked_to_stop {
                    eddy.terminate();
                    asked_to_stop = true;
                }
            }
        }
    }
    let sent = sender.join().unwrap();
    let status = eddy.wait(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "graceful stop exits 0; log:\n{}", eddy.log());
    assert!(asked_to_stop && acked > 20_000, "acked {acked}");
    assert!(acked <= sent);

    // Restart on the same data: open windows were kept and close once the sensors are idle.
    let eddy = Eddy::start_in(dir.path(), &config()).expect("eddy restarts");
    let results_path = dir.path().join("results.jsonl");
    let total =
        |rows: &[serde_json::Value]| rows.iter().map(|row| row["count"].as_u64().unwrap()).sum::<u64>();
    let reached = wait_until(Duration::from_secs(20), || total(&read_jsonl(&results_path)) >= acked);
    let rows = read_jsonl(&results_path);
    assert!(reached, "windows count {} readings, {acked} were acked; log:\n{}", total(&rows), eddy.log());
    // Give any extra (wrong) result a moment to show up, then check the exact total.
    std::thread::sleep(Duration::from_millis(1500));
    let rows = read_jsonl(&results_path);
    assert_eq!(total(&rows), acked, "every acked reading is counted exactly once");
    let mut ids: Vec<&str> = rows.iter().map(|row| row["id"].as_str().unwrap()).collect();
    let n_ids = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n_ids, "no window result is emitted twice");
}

/// SIGTERM as soon as eddy logs that it is starting is a graceful stop (drain, exit 0), never
/// the signal's default action. eddy catches SIGTERM and SIGINT from before it opens the
/// store. (The window this closed — between `eddy is ready.` and the main loop's first poll of
/// its stop signal — is a few microseconds wide: `settings::no_setting_reaches_a_panic` fell
/// into it once under CI load; this test guards the behaviour but does not reliably hit that
/// window on an idle machine.)
#[test]
fn sigterm_during_start_up_is_a_graceful_stop() {
    for attempt in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut eddy = Eddy::spawn_in(dir.path(), &config()).expect("eddy spawns");
        eddy.wait_for_log("Starting eddy.", Duration::from_secs(30)).expect("eddy starts");
        eddy.terminate();
        let status = eddy.wait(Duration::from_secs(30)).expect("eddy exits after SIGTERM");
        assert!(
            status.success(),
            "attempt {attempt}: SIGTERM during start-up ended eddy with {status:?}, not a clean stop:\n{}",
            eddy.log()
        );
    }
}
