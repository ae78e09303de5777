//! Issue #13, wrong clocks, with a real fake clock: the real binary under libfaketime, its wall
//! clock moved by the test while it runs (booted at 1970, twenty years ahead and back, restarts
//! under a wrong clock) and a sensor whose clock runs ahead, checked against the windows of the
//! stream it was sent.
//!
//! The fake clock (`eddy_tests::faketime`) fakes `CLOCK_REALTIME` only; the monotonic clocks and
//! `CLOCK_BOOTTIME` stay the kernel's, as on a board without a real-time clock, whose uptime
//! counts from the boot whatever NTP does. Checked with libfaketime 0.9.10 (Debian 12), by
//! `libfaketime_moves_only_the_wall_clock_and_rereads_its_spec_at_once` below:
//! - `DONT_FAKE_MONOTONIC=1` (0.9.10 also reads `FAKETIME_DONT_FAKE_MONOTONIC`; both are set)
//!   leaves `CLOCK_MONOTONIC`, `CLOCK_MONOTONIC_RAW` and `CLOCK_BOOTTIME` real. Without it all
//!   three are shifted with the wall clock, `CLOCK_BOOTTIME` included.
//! - `FAKETIME_TIMESTAMP_FILE` with `FAKETIME_NO_CACHE=1` re-reads the spec on every wall-clock
//!   read (about 10 µs a read, none for the monotonic clocks): a rewrite moves eddy's clock at
//!   once. Without `FAKETIME_NO_CACHE` the spec is cached for 10 s.
//! - Only a clock read through libc is faked: Rust's `SystemTime` and `Instant` are (glibc's
//!   `clock_gettime`), a raw vDSO or syscall read (rustix's `linux_raw` backend) would not be.
//!   The 1970 and restart tests check that eddy's log lines carry the fake time (the preload
//!   took hold), the jump test that eddy counted the jumps.
//! - libfaketime does not fake `adjtimex`: the kernel's "synchronised" stays the host's. So
//!   these tests run eddy with `trust = "file"`, which believes only the `synchronized_file`
//!   (the one a test creates to let NTP sync the clock), whatever the host's kernel says.
//!
//! Readings are stamped with real time and sent at its pace (`eddy_tests::paced`), not the
//! Spark conformance stream replayed at full speed: the outlier hold judges each reading
//! against its sensor's clock as predicted from the elapsed time, and 120 s of event time sent
//! in one second looks like a sensor clock running a hundred times fast; sent at its real pace
//! it would take 120 s per test. The reference windows are computed by the test (count, sum,
//! min, max per epoch-aligned `[start, end)`), and
//! `the_reference_agrees_with_spark_on_the_conformance_stream` checks that reference against
//! Spark's results.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use eddy_tests::config::ConfigToml;
use eddy_tests::faketime::{env_pairs, real_now_ms, FakeClock, TWENTY_YEARS_SECS};
use eddy_tests::mosquitto::{free_port, Mosquitto};
use eddy_tests::paced::{
    diff_windows, plan, reference, window_results, Feed, MqttLine, Planned, TcpLine, Transport, Windows,
};
use eddy_tests::socat::SerialDevice;
use eddy_tests::{batch_count, conformance_dir, read_jsonl, wait_until, Eddy};
use serde_json::Value;

use crate::api::{api_address, get, sample};

/// What eddy logs, once per jump, when the wall clock jumps.
const JUMP_LOG: &str = "clock jumped";

/// Each sensor sends a reading every 100 ms.
const PERIOD: Duration = Duration::from_millis(100);

/// The micro-batch interval of these tests.
const BATCH_INTERVAL: Duration = Duration::from_millis(500);

/// The sync file of [`with_sync_file`], in eddy's directory.
const SYNC_FILE: &str = "ntp-synced";

/// eddy committing every 5 ms (group commit) and 100 ms (engine), with 500 ms micro-batches,
/// sensors idle after `idle_timeout`, and the HTTP endpoint.
fn pipeline(device_id: &str, idle_timeout: &str) -> ConfigToml {
    ConfigToml::new(device_id)
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .key("idle_timeout", idle_timeout)
        .table("batch")
        .key("interval", "500ms")
        .table("api")
        .key("listen", "127.0.0.1:0")
}

/// The `[clock]` table of #13: the wall clock counts as synchronised while `{dir}/ntp-synced`
/// exists, which is how these tests let NTP sync it, and only then (`trust = "file"`: the
/// host kernel's word, which libfaketime cannot fake, does not count).
fn with_sync_file(config: ConfigToml) -> ConfigToml {
    config.table("clock").key("trust", "file").key("synchronized_file", format!("{{dir}}/{SYNC_FILE}"))
}

/// The two windows of these tests: tumbling 1 s and sliding 2 s by 1 s, both with 1 s of
/// lateness (the plan's out-of-order readings are one period late).
fn with_windows(config: ConfigToml) -> ConfigToml {
    config
        .window("w1s", "1s")
        .key("lateness", "1s")
        .key("fields", ["temp_c"])
        .window("w2s", "2s")
        .key("slide", "1s")
        .key("lateness", "1s")
        .key("fields", ["temp_c"])
}

/// (name, length ms, slide ms) of [`with_windows`].
const WINDOWS: [(&str, i64, i64); 2] = [("w1s", 1000, 1000), ("w2s", 2000, 1000)];

fn expected(planned: &[Planned], length_ms: i64, slide_ms: i64) -> Windows {
    reference(
        planned.iter().map(|reading| (reading.sensor.as_str(), reading.ts_ms, reading.temp_c)),
        length_ms,
        slide_ms,
    )
}

/// Failed checks, gathered so that one run on a broken eddy shows every broken promise.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn extend(&mut self, problems: Vec<String>) {
        self.0.extend(problems);
    }

    /// Fails with every problem and the end of eddy's log.
    fn assert_none(self, eddy: &Eddy) {
        if self.0.is_empty() {
            return;
        }
        let log = eddy.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!("{} problems:\n- {}\n\nend of eddy's log:\n{tail}", self.0.len(), self.0.join("\n- "));
    }
}

/// Every window of [`WINDOWS`] in `{dir}/results.jsonl` equals the reference of `planned`.
fn check_windows(problems: &mut Problems, results: &Path, planned: &[Planned]) {
    for (name, length_ms, slide_ms) in WINDOWS {
        let (got, identity) = window_results(results, name);
        problems.extend(identity);
        problems.extend(diff_windows(name, &expected(planned, length_ms, slide_ms), &got));
    }
    let late: Vec<Value> =
        read_jsonl(results).into_iter().filter(|record| record["type"] == "late").collect();
    problems.check(late.is_empty(), || format!("{} readings were late, e.g. {:?}", late.len(), late.first()));
}

/// Waits until `results` holds as many windows as the reference of `planned`.
fn wait_for_windows(results: &Path, planned: &[Planned], timeout: Duration) -> bool {
    wait_until(timeout, || {
        WINDOWS.iter().all(|(name, length_ms, slide_ms)| {
            window_results(results, name).0.len() >= expected(planned, *length_ms, *slide_ms).len()
        })
    })
}

fn status(eddy: &Eddy) -> Value {
    let (code, body) = get(api_address(eddy), "/status");
    assert_eq!(code, 200, "/status: {body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

fn metrics(eddy: &Eddy) -> String {
    get(api_address(eddy), "/metrics").1
}

fn source<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["sources"]
        .as_array()
        .and_then(|sources| sources.iter().find(|source| source["name"] == name))
        .unwrap_or(&Value::Null)
}

/// eddy's log lines carry the fake time: the preload took hold of its clock.
fn assert_faked(eddy: &Eddy, year_prefix: &str) {
    let log = eddy.log();
    let first = log.lines().next().unwrap_or_default();
    assert!(first.starts_with(year_prefix), "eddy does not see the fake clock ({year_prefix}…): {first}");
}

/// Micro-batch numbers in a results file and when the test first saw each, to tell a steady
/// pace from a frozen processing clock.
#[derive(Default)]
struct BatchWatch {
    first_seen: BTreeMap<i64, Duration>,
}

impl BatchWatch {
    fn poll(&mut self, results: &Path, now: Duration) {
        for record in read_jsonl(results) {
            if record["type"] == "batch" {
                self.first_seen.entry(record["batch"].as_i64().unwrap_or(i64::MIN)).or_insert(now);
            }
        }
    }

    /// Batches first seen within `[from, to)`.
    fn seen_between(&self, from: Duration, to: Duration) -> usize {
        self.first_seen.values().filter(|seen| **seen >= from && **seen < to).count()
    }
}

/// Runs the feed until `until`, polling the batches every 100 ms.
fn feed_watching(feed: &mut Feed, until: Duration, watch: &mut BatchWatch, results: &Path) {
    while feed.elapsed() < until {
        let step = (feed.elapsed() + Duration::from_millis(100)).min(until);
        feed.run_until(step).expect("the feed sends");
        watch.poll(results, feed.elapsed());
    }
}

/// New batches between `from` and `to`: one per interval, less one for the commit and
/// delivery lag; a span too short to tell is not judged.
fn check_pace(problems: &mut Problems, watch: &BatchWatch, from: Duration, to: Duration, phase: &str) {
    let intervals = to.saturating_sub(from).as_millis() / BATCH_INTERVAL.as_millis();
    let want = usize::try_from(intervals).expect("few").saturating_sub(1);
    let got = watch.seen_between(from, to);
    problems.check(got >= want, || {
        format!(
            "micro-batches stalled {phase}: {got} new batches in {from:?}..{to:?}, at least {want} expected \
             (interval {BATCH_INTERVAL:?}); first seen: {:?}",
            watch.first_seen
        )
    });
}

/// Each jump of `jumps_secs` (the clock's steps, in order) counted once and logged once with
/// its size (`jump_ms=`, within 5 s: the step is made between two of eddy's samples).
fn check_jumps(problems: &mut Problems, eddy: &Eddy, jumps_secs: &[i64]) {
    let metrics = metrics(eddy);
    let counted = sample(&metrics, "eddy_clock_jumps_total");
    let n_jumps = u32::try_from(jumps_secs.len()).expect("few jumps");
    problems.check(counted == Some(f64::from(n_jumps)), || {
        format!("eddy_clock_jumps_total is {counted:?}, {n_jumps} expected")
    });
    let log = eddy.log();
    let logged: Vec<&str> = log.lines().filter(|line| line.to_lowercase().contains(JUMP_LOG)).collect();
    let sizes_ms: Vec<Option<i64>> = logged
        .iter()
        .map(|line| line.split_whitespace().find_map(|word| word.strip_prefix("jump_ms=")?.parse().ok()))
        .collect();
    let as_expected = sizes_ms.len() == jumps_secs.len()
        && sizes_ms
            .iter()
            .zip(jumps_secs)
            .all(|(size_ms, secs)| size_ms.is_some_and(|size_ms| (size_ms - secs * 1000).abs() < 5_000));
    problems.check(as_expected, || {
        format!(
            "each jump of {jumps_secs:?} s logged once with its size (`{JUMP_LOG}`, jump_ms=): {logged:#?}"
        )
    });
}

#[test]
fn libfaketime_moves_only_the_wall_clock_and_rereads_its_spec_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = FakeClock::new(dir.path(), 0).unwrap();
    clock.set_1970().unwrap();
    let uptime = || -> f64 {
        let text = std::fs::read_to_string("/proc/uptime").expect("/proc/uptime");
        text.split_whitespace().next().unwrap().parse().unwrap()
    };
    // perl's Time::HiRes calls glibc's clock_gettime, like eddy; Rust cannot here (no unsafe).
    let script = "use Time::HiRes qw(clock_gettime sleep CLOCK_REALTIME CLOCK_MONOTONIC CLOCK_BOOTTIME); \
                  $| = 1; for (1 .. 15) { printf qq(%.3f %.3f %.3f\\n), clock_gettime(CLOCK_REALTIME), \
                  clock_gettime(CLOCK_MONOTONIC), clock_gettime(CLOCK_BOOTTIME); sleep 0.1 }";
    let boot_before = uptime();
    let env = clock.env();
    let mut probe = Command::new("perl")
        .args(["-e", script])
        .envs(env_pairs(&env, &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("perl runs (apt-get install perl; ./scripts/test-all.sh installs it)");
    let mut lines = BufReader::new(probe.stdout.take().unwrap()).lines();
    let mut samples = vec![lines.next().expect("a first sample").unwrap()];
    clock.set_offset_secs(TWENTY_YEARS_SECS).unwrap();
    samples.extend(lines.map(Result::unwrap));
    assert!(probe.wait().unwrap().success());
    let boot_after = uptime();
    let samples: Vec<[f64; 3]> = samples
        .iter()
        .map(|line| {
            let numbers: Vec<f64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
            [numbers[0], numbers[1], numbers[2]]
        })
        .collect();
    assert_eq!(samples.len(), 15);
    let real_s = real_now_ms() as f64 / 1000.0;
    assert!(samples[0][0] < 3.0 * 86_400.0, "the wall clock starts in 1970: {samples:?}");
    // The rewrite took effect from the next read on (one 100 ms sleep later).
    for sample in &samples[1..] {
        let ahead = sample[0] - real_s;
        assert!(
            (ahead - TWENTY_YEARS_SECS as f64).abs() < 10.0,
            "the wall clock moved 20 years ahead: {samples:?}"
        );
    }
    for [_, monotonic, boottime] in &samples {
        assert!(
            (boot_before - 0.02..=boot_after + 0.02).contains(boottime),
            "CLOCK_BOOTTIME is the kernel's ({boot_before}..{boot_after}): {samples:?}"
        );
        assert!(*monotonic <= boottime + 0.001, "CLOCK_MONOTONIC is real: {samples:?}");
    }
}

#[test]
fn the_reference_agrees_with_spark_on_the_conformance_stream() {
    // Spark's batch files count every valid reading (the README's validity rule).
    let valid = |row: &Value| -> Option<(String, i64, f64)> {
        let sensor = row["sensor"].as_str().filter(|sensor| !sensor.is_empty())?;
        let ts = row["ts"].as_i64().filter(|ts| (0..1 << 53).contains(ts))?;
        let temp = row["temp_c"].as_f64().filter(|temp| (-50.0..=100.0).contains(temp))?;
        let humidity_ok = match &row["humidity"] {
            Value::Null => true,
            humidity => humidity.as_f64().is_some_and(|h| (0.0..=100.0).contains(&h)),
        };
        (row.is_object() && humidity_ok && row["ts"].is_i64()).then(|| (sensor.to_owned(), ts, temp))
    };
    let text = std::fs::read_to_string(conformance_dir().join("readings_sample.jsonl")).unwrap();
    let readings: Vec<(String, i64, f64)> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|row| valid(&row))
        .collect();
    assert_eq!(readings.len(), 6012, "the README's 6,012 valid lines");
    for (file, length_ms, slide_ms) in [
        ("expected_batch_w10000ms_s5000ms.jsonl", 10_000, 5_000),
        ("expected_batch_w5000ms_s5000ms.jsonl", 5_000, 5_000),
    ] {
        let ours = reference(
            readings.iter().map(|(sensor, ts, temp)| (sensor.as_str(), *ts, *temp)),
            length_ms,
            slide_ms,
        );
        let spark = read_jsonl(&conformance_dir().join(file));
        assert_eq!(ours.len(), spark.len(), "{file}: number of windows");
        for row in spark {
            let key = (row["sensor"].as_str().unwrap().to_owned(), row["window_start_ms"].as_i64().unwrap());
            let got = ours.get(&key).unwrap_or_else(|| panic!("{file}: no window {key:?}"));
            assert_eq!(Some(got.end_ms), row["window_end_ms"].as_i64(), "{file} {key:?}");
            assert_eq!(Some(got.count), row["count"].as_u64(), "{file} {key:?}");
            for (ours, spark) in [(got.sum, &row["sum"]), (got.min, &row["min"]), (got.max, &row["max"])] {
                let spark = spark.as_f64().unwrap();
                assert!(
                    (ours - spark).abs() <= 1e-9 * spark.abs().max(1.0),
                    "{file} {key:?}: {ours} vs {spark}"
                );
            }
        }
    }
}

#[test]
fn booted_in_1970_eddy_keeps_real_time_readings_from_every_transport_and_the_sync_changes_no_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut clock = FakeClock::new(dir.path(), 0).unwrap();
    clock.set_1970().unwrap();
    let broker = Mosquitto::start().expect("mosquitto starts");
    let device = SerialDevice::plug(&dir.path().join("ttyClock")).expect("socat starts");
    let config = with_sync_file(pipeline("gw-1970", "2s"))
        .tcp_source("tcp")
        .key("ack", true)
        .mqtt_source("mqtt", &broker.url())
        .key("client_id", "eddy-clock-1970")
        .key("topics", ["clock/+/reading"])
        .key("sensor_from_topic", 1)
        .serial_source("serial", "{dir}/ttyClock")
        .key("baud", 115_200);
    let config =
        with_windows(config).file_sink("results", "{dir}/results.jsonl").key("records", ["window", "late"]);
    let env = clock.env();
    let eddy =
        Eddy::start_in_with_env(dir.path(), &config.to_toml(), &env_pairs(&env, &[])).expect("eddy starts");
    assert_faked(&eddy, "1970-");
    let results = dir.path().join("results.jsonl");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let log = eddy.log();
            log.contains("Subscribed.") && log.contains("Serial port")
        }),
        "the MQTT and serial sources did not come up:\n{}",
        eddy.log()
    );

    let sensors = [
        ("tcp-0", Transport::Tcp),
        ("tcp-1", Transport::Tcp),
        ("mqtt-0", Transport::Mqtt),
        ("mqtt-1", Transport::Mqtt),
        ("serial-0", Transport::Serial),
        ("serial-1", Transport::Serial),
    ];
    let mut feed = Feed::new(plan(&sensors, real_now_ms(), PERIOD, Duration::from_secs(6)));
    feed.tcp = Some(TcpLine::connect(eddy.tcp_address("tcp").unwrap()).unwrap());
    feed.mqtt = Some(MqttLine::connect(broker.addr(), "clock-sensors-1970"));
    feed.serial = Some(device);
    feed.run_until(Duration::from_secs(3)).unwrap();
    let status_at_1970 = status(&eddy);
    // NTP steps the clock to real time and reports it synchronised.
    clock.set_offset_secs(0).unwrap();
    std::fs::write(dir.path().join(SYNC_FILE), "").unwrap();
    feed.run_until(Duration::from_secs(7)).unwrap();
    assert!(feed.done());

    let mut problems = Problems::default();
    let tcp = feed.tcp.as_ref().unwrap();
    problems.check(tcp.wait_answered(Duration::from_secs(10)), || {
        format!("TCP lines unanswered: {:?}", tcp.tally())
    });
    let tally = tcp.tally();
    problems.check(tally.errors.is_empty() && tally.nacked == 0 && tally.acked == tally.sent, || {
        format!("every TCP reading is acked `ok`: {tally:?}")
    });
    let mqtt = feed.mqtt.as_ref().unwrap();
    problems.check(wait_until(Duration::from_secs(10), || mqtt.acked() == mqtt.published), || {
        format!("the broker acked {} of {} messages", mqtt.acked(), mqtt.published)
    });
    let planned: Vec<(&str, u64)> =
        [("tcp", Transport::Tcp), ("mqtt", Transport::Mqtt), ("serial", Transport::Serial)]
            .into_iter()
            .map(|(name, transport)| (name, feed.planned_over(transport)))
            .collect();
    let all_received = wait_until(Duration::from_secs(10), || {
        let status = status(&eddy);
        planned.iter().all(|(name, n)| source(&status, name)["received"].as_u64() == Some(*n))
    });
    let status_synced = status(&eddy);
    problems
        .check(all_received, || format!("not every reading reached eddy: {:#}", status_synced["sources"]));
    for (name, n) in &planned {
        let source = source(&status_synced, name);
        problems
            .check(source["accepted"].as_u64() == Some(*n) && source["rejected"].as_u64() == Some(0), || {
                format!("source {name}: {n} readings sent, none to be rejected: {source}")
            });
    }
    problems.check(status_at_1970["clock"]["synchronized"] == false, || {
        format!("at 1970 /status says the clock is not synchronised: {}", status_at_1970["clock"])
    });
    problems.check(status_synced["clock"]["synchronized"] == true, || {
        format!("after the sync /status says the clock is synchronised: {}", status_synced["clock"])
    });

    let complete = wait_for_windows(&results, feed.planned(), Duration::from_secs(15));
    problems.check(complete, || "not every window closed within 15 s".to_owned());
    check_windows(&mut problems, &results, feed.planned());
    problems.assert_none(&eddy);
}

#[test]
fn a_wall_clock_twenty_years_ahead_and_back_under_load_keeps_batches_windows_and_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let clock_dir = tempfile::tempdir().unwrap();
    let mut clock = FakeClock::new(clock_dir.path(), 0).unwrap();
    // A hub that is never there: every result waits in its outbox lane, where `ttl` applies.
    let hub_url = format!("http://127.0.0.1:{}/ingest", free_port());
    let config =
        pipeline("gw-jump", "2s").table("storage").key("ttl", "1h").tcp_source("tcp").key("ack", true);
    let config = with_windows(config)
        .file_sink("results", "{dir}/results.jsonl")
        .key("records", ["window", "batch", "late"])
        .http_sink("hub", &hub_url)
        .key("max_backoff", "200ms")
        .key("timeout", "1s");
    let env = clock.env();
    let eddy =
        Eddy::start_in_with_env(dir.path(), &config.to_toml(), &env_pairs(&env, &[])).expect("eddy starts");
    let results = dir.path().join("results.jsonl");
    let sensors = [("tcp-0", Transport::Tcp), ("tcp-1", Transport::Tcp), ("tcp-2", Transport::Tcp)];
    let mut feed = Feed::new(plan(&sensors, real_now_ms(), PERIOD, Duration::from_secs(9)));
    feed.tcp = Some(TcpLine::connect(eddy.tcp_address("tcp").unwrap()).unwrap());
    let mut watch = BatchWatch::default();
    let second = Duration::from_secs(1);

    feed_watching(&mut feed, 3 * second, &mut watch, &results);
    clock.set_offset_secs(TWENTY_YEARS_SECS).unwrap();
    feed_watching(&mut feed, 6 * second, &mut watch, &results);
    clock.set_offset_secs(0).unwrap();
    feed_watching(&mut feed, 9 * second, &mut watch, &results);
    assert!(feed.done());

    let mut problems = Problems::default();
    check_pace(&mut problems, &watch, second, 3 * second, "before the jump");
    check_pace(&mut problems, &watch, 3 * second, 6 * second, "20 years ahead");
    check_pace(&mut problems, &watch, 6 * second, 9 * second, "after the jump back");
    let tcp = feed.tcp.as_ref().unwrap();
    problems.check(tcp.wait_answered(Duration::from_secs(10)), || {
        format!("TCP lines unanswered: {:?}", tcp.tally())
    });
    let tally = tcp.tally();
    problems.check(tally.errors.is_empty() && tally.acked == tally.sent, || {
        format!("every reading acked: {tally:?}")
    });
    let n_readings = u64::try_from(feed.planned().len()).unwrap();
    let batched = wait_until(Duration::from_secs(5), || batch_count(&results, "temp_c") == n_readings);
    problems.check(batched, || {
        format!(
            "every reading in one closed micro-batch: {} of {n_readings}",
            batch_count(&results, "temp_c")
        )
    });
    let complete = wait_for_windows(&results, feed.planned(), Duration::from_secs(10));
    problems.check(complete, || "not every window closed within 10 s".to_owned());
    check_windows(&mut problems, &results, feed.planned());

    let status = status(&eddy);
    let hub =
        status["uplinks"].as_array().unwrap().iter().find(|uplink| uplink["name"] == "hub").unwrap().clone();
    problems.check(hub["dropped_ttl"] == 0 && hub["dropped_budget"] == 0, || {
        format!("no result is dropped by ttl (1 h) for a jump: {hub}")
    });
    problems
        .check(hub["outbox_depth"].as_u64().unwrap_or(0) > 0, || format!("the hub's results wait: {hub}"));
    check_jumps(&mut problems, &eddy, &[TWENTY_YEARS_SECS, -TWENTY_YEARS_SECS]);
    problems.assert_none(&eddy);
}

/// Stops eddy as asked, restarts it on the same directory under the same fake clock, and
/// gives the feed a new connection after counting what the old one settled.
fn restart(
    eddy: Eddy,
    kill: bool,
    feed: &mut Feed,
    settled: &mut Vec<eddy_tests::paced::TcpTally>,
    config: &str,
    env: &[(&str, &str)],
) -> Eddy {
    let mut eddy = eddy;
    let tcp = feed.tcp.take().unwrap();
    // Everything sent is durable first, so that no reading is in flight at the stop: the
    // test is about the clock, not about resending.
    assert!(tcp.wait_answered(Duration::from_secs(10)), "unanswered before the stop: {:?}", tcp.tally());
    settled.push(tcp.tally());
    drop(tcp);
    if kill {
        eddy.kill();
        eddy.wait(Duration::from_secs(10)).expect("eddy dies");
    } else {
        let status = eddy.stop().expect("eddy stops");
        assert!(status.success(), "SIGTERM under the wrong clock: {status}\n{}", eddy.log());
    }
    let dir = eddy.dir.clone();
    drop(eddy);
    let eddy = Eddy::start_in_with_env(&dir, config, env).expect("eddy starts again under the wrong clock");
    feed.tcp = Some(TcpLine::connect(eddy.tcp_address("tcp").unwrap()).unwrap());
    eddy
}

#[test]
fn restarts_while_the_clock_is_twenty_years_ahead_or_at_1970_lose_and_repeat_no_result() {
    let dir = tempfile::tempdir().unwrap();
    let clock_dir = tempfile::tempdir().unwrap();
    let mut clock = FakeClock::new(clock_dir.path(), 0).unwrap();
    let sync_file = dir.path().join(SYNC_FILE);
    let config = with_sync_file(pipeline("gw-restart", "4s")).tcp_source("tcp").key("ack", true);
    let config = with_windows(config)
        .file_sink("results", "{dir}/results.jsonl")
        .key("records", ["window", "batch", "late"]);
    let config = config.to_toml();
    let owned_env = clock.env();
    let env = env_pairs(&owned_env, &[]);
    let mut eddy = Eddy::start_in_with_env(dir.path(), &config, &env).expect("eddy starts");
    // `trust = "file"`: the clock twenty years ahead is not believed before the file exists,
    // whatever the host's kernel says of its own clock.
    assert_eq!(status(&eddy)["clock"]["synchronized"], false, "{}", eddy.log());
    std::fs::write(&sync_file, "").unwrap();
    let results = dir.path().join("results.jsonl");
    let sensors = [("tcp-0", Transport::Tcp), ("tcp-1", Transport::Tcp), ("tcp-2", Transport::Tcp)];
    let mut feed = Feed::new(plan(&sensors, real_now_ms(), PERIOD, Duration::from_millis(12_500)));
    feed.tcp = Some(TcpLine::connect(eddy.tcp_address("tcp").unwrap()).unwrap());
    let mut settled = Vec::new();
    let mut watch = BatchWatch::default();
    let ms = Duration::from_millis;

    let mut run = |feed: &mut Feed, until| feed_watching(feed, ms(until), &mut watch, &results);
    run(&mut feed, 2000);
    // Twenty years ahead, a SIGTERM and a restart there; then back to real time. A step of
    // the clock makes the kernel report it unsynchronised until NTP steers it again.
    std::fs::remove_file(&sync_file).unwrap();
    clock.set_offset_secs(TWENTY_YEARS_SECS).unwrap();
    run(&mut feed, 3500);
    eddy = restart(eddy, false, &mut feed, &mut settled, &config, &env);
    assert_faked_now(&eddy, &["2046-", "2047-"]);
    let ahead_restarted_at = feed.elapsed();
    run(&mut feed, 5500);
    clock.set_offset_secs(0).unwrap();
    run(&mut feed, 7500);
    // A power cut on a board without RTC: 1970, not synchronised; SIGKILL and a restart there.
    clock.set_1970().unwrap();
    run(&mut feed, 9000);
    eddy = restart(eddy, true, &mut feed, &mut settled, &config, &env);
    assert_faked_now(&eddy, &["1970-"]);
    let at_1970_restarted_at = feed.elapsed();
    run(&mut feed, 10_500);
    // NTP syncs.
    clock.set_offset_secs(0).unwrap();
    std::fs::write(&sync_file, "").unwrap();
    run(&mut feed, 12_500);
    assert!(feed.done());

    let mut problems = Problems::default();
    let tcp = feed.tcp.as_ref().unwrap();
    problems.check(tcp.wait_answered(Duration::from_secs(10)), || {
        format!("TCP lines unanswered: {:?}", tcp.tally())
    });
    settled.push(tcp.tally());
    for (connection_idx, tally) in settled.iter().enumerate() {
        problems.check(tally.errors.is_empty() && tally.nacked == 0 && tally.acked == tally.sent, || {
            format!("connection {connection_idx}: every reading acked `ok`: {tally:?}")
        });
    }
    for (from, to, phase) in [
        (ahead_restarted_at, ms(5500), "20 years ahead, after the SIGTERM and restart there"),
        (ms(5500), ms(7500), "back at real time"),
        (at_1970_restarted_at, ms(10_500), "at 1970, after the SIGKILL and restart there"),
        (ms(10_500), ms(12_500), "after the sync"),
    ] {
        check_pace(&mut problems, &watch, from, to, phase);
    }
    let n_readings = u64::try_from(feed.planned().len()).unwrap();
    let batched = wait_until(Duration::from_secs(5), || batch_count(&results, "temp_c") >= n_readings);
    let n_batched = batch_count(&results, "temp_c");
    problems.check(batched && n_batched == n_readings, || {
        format!("every reading in exactly one micro-batch: {n_batched} of {n_readings}")
    });
    let complete = wait_for_windows(&results, feed.planned(), Duration::from_secs(15));
    problems.check(complete, || "not every window closed within 15 s".to_owned());
    check_windows(&mut problems, &results, feed.planned());
    problems.assert_none(&eddy);
}

/// eddy's latest log line carries one of the fake years.
fn assert_faked_now(eddy: &Eddy, year_prefixes: &[&str]) {
    let log = eddy.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        year_prefixes.iter().any(|prefix| last.starts_with(prefix)),
        "eddy does not see the fake clock: {last}"
    );
}

#[test]
fn one_reading_four_minutes_ahead_does_not_close_its_sensors_windows() {
    // eddy's defaults, with a window, a source and a sink to watch.
    let config = ConfigToml::new("gw-outlier")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .tcp_source("tcp")
        .key("ack", true)
        .window("w1s", "1s")
        .key("lateness", "1s")
        .key("fields", ["temp_c"])
        .file_sink("results", "{dir}/results.jsonl")
        .key("records", ["window", "late"])
        .to_toml();
    let eddy = Eddy::start(&config).expect("eddy starts");
    let results = eddy.dir.join("results.jsonl");
    let t0_ms = real_now_ms();
    let sensors = [("s-ahead", Transport::Tcp), ("s-steady", Transport::Tcp)];
    let stream = plan(&sensors, t0_ms, PERIOD, Duration::from_secs(6));
    let outlier = Planned {
        sensor: "s-ahead".to_owned(),
        ts_ms: t0_ms + 2_050 + 240_000,
        temp_c: 99.0,
        due: Duration::from_millis(2_050),
        transport: Transport::Tcp,
    };
    let mut with_outlier = stream.clone();
    with_outlier.push(outlier);
    with_outlier.sort_by_key(|reading| reading.due);
    let mut feed = Feed::new(with_outlier);
    feed.tcp = Some(TcpLine::connect(eddy.tcp_address("tcp").unwrap()).unwrap());
    feed.run_until(Duration::from_secs(7)).unwrap();
    assert!(feed.done());

    let mut problems = Problems::default();
    let tcp = feed.tcp.as_ref().unwrap();
    problems.check(tcp.wait_answered(Duration::from_secs(10)), || {
        format!("TCP lines unanswered: {:?}", tcp.tally())
    });
    let tally = tcp.tally();
    problems.check(tally.errors.is_empty() && tally.acked == tally.sent, || {
        format!("every reading is stored, the one 4 minutes ahead too (max_future is 5 min): {tally:?}")
    });
    // Without the outlier, each sensor's watermark (last event time less 1 s of lateness)
    // has closed exactly the windows that end by it; later ones wait for more readings (the
    // default idle timeout is 5 minutes).
    let mut want = Windows::new();
    for (sensor, _) in sensors {
        let last_ts = stream
            .iter()
            .filter(|reading| reading.sensor == sensor)
            .map(|reading| reading.ts_ms)
            .max()
            .unwrap();
        let own: Vec<Planned> = stream.iter().filter(|reading| reading.sensor == sensor).cloned().collect();
        want.extend(
            expected(&own, 1000, 1000).into_iter().filter(|(_, window)| window.end_ms <= last_ts - 1000),
        );
    }
    let complete =
        wait_until(Duration::from_secs(10), || window_results(&results, "w1s").0.len() >= want.len());
    problems.check(complete, || "the windows did not close within 10 s".to_owned());
    // A commit more, so that a window emitted too many would show.
    std::thread::sleep(Duration::from_millis(1500));
    let (got, identity) = window_results(&results, "w1s");
    problems.extend(identity);
    problems.extend(diff_windows("w1s", &want, &got));
    let late: Vec<Value> =
        read_jsonl(&results).into_iter().filter(|record| record["type"] == "late").collect();
    problems.check(late.is_empty(), || format!("{} readings were late, e.g. {:?}", late.len(), late.first()));
    let metrics = metrics(&eddy);
    let outliers = sample(&metrics, "eddy_future_outliers_total");
    problems
        .check(outliers == Some(1.0), || format!("eddy_future_outliers_total is {outliers:?}, 1 expected"));
    problems.assert_none(&eddy);
}
