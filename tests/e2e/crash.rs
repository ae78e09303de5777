//! Crash torture: the real binary, fed acked TCP readings, is killed with SIGKILL at random
//! (seeded) moments many times — mid-stream, mid-commit, mid-delivery, during recovery — and
//! restarted on the same data directory, while the sender re-sends whatever was not settled.
//! The sender numbers its lines in a session (`#session torture N`), so eddy recognises a
//! re-sent line that it had stored before the kill took its `ack` away.
//!
//! What is checked at the end, against an uninterrupted run:
//! - every acked reading is stored (the raw lane, `forward_raw`, lists what the log held, with
//!   its log position), and **no reading is stored twice**: a re-sent line that was durable is
//!   answered `dup` (exactly-once ingest). The checker still tells apart a copy of a reading
//!   unacked at a kill from any other, so a failure says which guarantee broke;
//! - the engine counts each stored reading exactly once (tumbling-window counts plus late
//!   readings equal the stored readings);
//! - the window and late results (deduplicated by `id`; a repeated id must carry identical
//!   values, and repeats stay within one delivery batch per sink per crash) equal — same ids,
//!   same values — those of an uninterrupted eddy fed the same stored sequence;
//! - on the conformance stream, every window untouched by a re-sent reading equals Apache
//!   Spark's result (all of them when nothing was re-sent twice);
//! - with a hub that is down or answers 503 during some crashes: the hub gets every result, in
//!   order, with at most one batch again per crash or cut connection.
//!
//! Windows are closed by the watermark only (`idle_timeout` is an hour): a sentinel reading per
//! sensor, an hour of event time after the data, ends the stream, so the results do not depend
//! on how long restarts take. `EDDY_TORTURE_ROUNDS` sets the number of kills per test (default
//! 12, under a minute for both tests together); `EDDY_TORTURE_SEED` replays a run (the seed is
//! printed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eddy_tests::http_hub::HttpHub;
use eddy_tests::torture::{
    close, closed_readings, compare_stored, content_of_line, content_of_raw, count_from_env, raw_position,
    read_sink, seed_from_env, spark, stored_as_lines, w5s_accounted, with_sentinels, Content, Feed, Rng,
};
use eddy_tests::{conformance_dir, send_with_acks, wait_until, Eddy};
use serde_json::Value;

use crate::uplink::check_every_result_in_order;

/// Records per delivery of every sink: the duplicate bound is this per crash (or cut hub link).
const SINK_BATCH: usize = 64;
/// Lines per second the sender writes, so that the stream spans several kills.
const SEND_RATE: f64 = 1000.0;
/// The reading that ends a run: sent once everything else is acked, never re-sent.
const MARKER_SENSOR: &str = "zz-end";

/// The conformance pipeline (conformance.rs) with the raw lane on, windows closed by the
/// watermark only, and file sinks (plus the hub's, if any) delivering `SINK_BATCH` at most.
fn config(hub_url: Option<&str>) -> String {
    let mut config = crate::conformance::pipeline("gw-crash")
        .root("shutdown_timeout", "20s")
        .table("engine")
        .key("idle_timeout", "1h")
        .key("forward_raw", true);
    for (name, records) in [("results", "window"), ("late", "late"), ("raw", "raw")] {
        config = config
            .file_sink(name, &format!("{{dir}}/{name}.jsonl"))
            .key("records", [records])
            .key("batch_max_records", SINK_BATCH)
            // The oracles are read as one file each: no rotation with EDDY_TORTURE_ROUNDS=200.
            .key("max_file_bytes", 0);
    }
    if let Some(url) = hub_url {
        config = config
            .http_sink("hub", url)
            .key("records", ["window"])
            .key("batch_max_records", SINK_BATCH)
            .key("linger", "20ms")
            .key("max_backoff", "300ms")
            .key("timeout", "1s")
            .key("connect_timeout", "300ms");
    }
    config.to_toml()
}

fn seed() -> u64 {
    seed_from_env("EDDY_TORTURE_SEED")
}

fn kills() -> usize {
    count_from_env("EDDY_TORTURE_ROUNDS", 12)
}

/// The session the torture's sender numbers its lines in.
const SESSION: &str = "torture";

/// What a hub does during a run.
enum HubPlan<'a> {
    None,
    /// Stopped or answering 503 during some rounds (seeded).
    Flaky(&'a HttpHub),
}

/// What a run produced, once complete.
struct Outcome {
    /// Window results by id (first occurrence).
    windows: BTreeMap<String, Value>,
    /// Late records by id.
    late: BTreeMap<String, Value>,
    /// Raw readings as stored, by log position (sentinels and the marker included).
    stored: Vec<Value>,
    /// Window results in delivery order, first occurrences (the hub's oracle).
    window_order: Vec<Value>,
    /// Line ranges that were sent but not acked when eddy was killed.
    uncertain: Vec<Range<usize>>,
    /// 1-based numbers of the lines eddy answered `err` (from the last round).
    errors: Vec<usize>,
    kills: usize,
    hub_outages: usize,
    /// Re-sent lines eddy answered `dup`: durable before a kill took their `ack` away.
    dups: u64,
}

/// Feeds `lines` to eddy in `dir`, killing it `kills` times, then lets it finish: all lines
/// acked, a marker reading, every stored reading accounted for in the outputs, a clean stop.
fn run(
    dir: &Path,
    config: &str,
    lines: &[String],
    valid: &[bool],
    kills: usize,
    rng: &mut Rng,
    hub: &HubPlan<'_>,
) -> Outcome {
    let mut next = 0;
    let mut uncertain = Vec::new();
    let mut dups = 0;
    let mut hub_outages = 0;
    let mut hub_down = false;
    for round in 0..kills {
        if let HubPlan::Flaky(hub) = hub {
            match rng.below(4) {
                0 if !hub_down => {
                    hub.stop();
                    hub_down = true;
                    hub_outages += 1;
                }
                1 => hub.set_status(503),
                _ => {
                    hub.set_status(200);
                    if hub_down {
                        hub.restart().expect("hub restarts");
                        hub_down = false;
                    }
                }
            }
        }
        if rng.below(5) == 0 {
            // Killed during start-up: recovery, replay, the first commits.
            let mut eddy = Eddy::spawn_in(dir, config).expect("eddy spawns");
            thread::sleep(rng.millis(0..250));
            eddy.kill();
            eddy.wait(Duration::from_secs(20)).expect("killed eddy exits");
            eprintln!("round {round}: killed during start-up");
            continue;
        }
        let mut eddy = Eddy::start_in(dir, config).expect("eddy restarts on its data");
        let feed = Feed::start(
            eddy.tcp_address("in").unwrap(),
            SESSION,
            SEND_RATE,
            lines[next..].to_vec(),
            valid[next..].to_vec(),
            next + 1,
        );
        thread::sleep(rng.millis(20..900));
        eddy.kill();
        eddy.wait(Duration::from_secs(20)).expect("killed eddy exits");
        let finished = feed.finish();
        assert_eq!(finished.nacked, 0, "eddy refused lines; log:\n{}", eddy.log());
        dups += finished.dups;
        let new_next = next + finished.settled;
        let sent_to = (next + finished.started).min(lines.len());
        if sent_to > new_next {
            uncertain.push(new_next..sent_to);
        }
        eprintln!(
            "round {round}: {} acked, {} dup, lines {new_next}..{sent_to} unsettled when killed",
            finished.acked, finished.dups
        );
        next = new_next;
    }
    if let HubPlan::Flaky(hub) = hub {
        hub.set_status(200);
        if hub_down {
            hub.restart().expect("hub restarts");
        }
    }

    // The last run is not killed: the rest of the stream, then the marker.
    let mut eddy = Eddy::start_in(dir, config).expect("eddy restarts on its data");
    let address = eddy.tcp_address("in").unwrap();
    let rest = lines.len() - next;
    let feed =
        Feed::start(address, SESSION, SEND_RATE, lines[next..].to_vec(), valid[next..].to_vec(), next + 1);
    let answered = wait_until(Duration::from_secs(120), || feed.settled() == rest);
    let finished = feed.finish();
    assert_eq!(finished.nacked, 0, "eddy refused lines; log:\n{}", eddy.log());
    dups += finished.dups;
    // Error line numbers of the whole stream (the last feed started at line `next + 1`).
    let errors: Vec<usize> = finished.errors.iter().map(|n| n + next).collect();
    assert!(answered, "the last {rest} lines were not all answered; log:\n{}", eddy.log());
    let marker = format!(r#"{{"sensor":"{MARKER_SENSOR}","ts":1700000000000,"temp_c":0.0}}"#);
    let replies = send_with_acks(address, &[marker.as_bytes()], Duration::from_secs(30)).expect("marker");
    assert_eq!(replies.acked, 1);

    // Every stored reading is in the raw lane once the marker is (it was stored last); then
    // the windows and late readings must account for every one of them.
    let raw_path = dir.join("raw.jsonl");
    let has_marker = wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(&raw_path)
            .unwrap_or_default()
            .contains(&format!("\"sensor\":\"{MARKER_SENSOR}\""))
    });
    assert!(has_marker, "the marker never reached the raw sink; log:\n{}", eddy.log());
    let bound = SINK_BATCH * (kills + 1);
    let stored = read_sink(&raw_path, bound);
    let accounted = || {
        let windows = read_sink(&dir.join("results.jsonl"), bound);
        let late = read_sink(&dir.join("late.jsonl"), bound);
        w5s_accounted(&windows, &late)
    };
    let target = closed_readings(&stored, |r| r["sensor"] == MARKER_SENSOR);
    let complete = wait_until(Duration::from_secs(60), || accounted() >= target);
    assert!(complete, "windows account for {} of {target} readings; log:\n{}", accounted(), eddy.log());
    if let HubPlan::Flaky(hub) = hub {
        let expected: HashSet<String> = read_sink(&dir.join("results.jsonl"), bound)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let delivered = wait_until(Duration::from_secs(60), || {
            let got: HashSet<String> =
                hub.records().iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect();
            expected.is_subset(&got)
        });
        assert!(delivered, "the hub did not get every result; log:\n{}", eddy.log());
    }
    let status = eddy.stop().expect("eddy stops");
    assert!(status.success(), "clean stop; log:\n{}", eddy.log());

    let window_order = read_sink(&dir.join("results.jsonl"), bound);
    let late = read_sink(&dir.join("late.jsonl"), bound);
    assert_eq!(w5s_accounted(&window_order, &late), target, "every stored reading is counted exactly once");
    let mut stored = read_sink(&raw_path, bound);
    stored.sort_by_key(raw_position);
    let by_id = |records: &[Value]| -> BTreeMap<String, Value> {
        records.iter().map(|r| (r["id"].as_str().unwrap().to_owned(), r.clone())).collect()
    };
    Outcome {
        windows: by_id(&window_order),
        late: by_id(&late),
        stored,
        window_order,
        uncertain,
        errors,
        kills,
        hub_outages,
        dups,
    }
}

/// Checks that every acked reading is stored, and that extra copies are only of readings that
/// were unacked at a kill; returns the contents stored more often than sent.
fn check_stored(lines: &[String], valid: &[bool], outcome: &Outcome) -> HashMap<Content, usize> {
    let sent = lines.iter().zip(valid).filter(|(_, valid)| **valid).map(|(line, _)| content_of_line(line));
    let stored = outcome.stored.iter().filter(|r| r["sensor"] != MARKER_SENSOR).map(content_of_raw);
    let uncertain = outcome
        .uncertain
        .iter()
        .flat_map(|range| range.clone().filter(|idx| valid[*idx]))
        .map(|idx| content_of_line(&lines[idx]));
    let check = compare_stored(sent, stored, uncertain);
    if let Some((content, n_sent, n_stored)) = check.lost.first() {
        panic!("an acked reading was lost: {content:?} sent {n_sent}, stored {n_stored}");
    }
    if let Some((content, n_extra, n_uncertain)) = check.unexplained.first() {
        panic!("{content:?} stored {n_extra} extra times but unacked at a kill only {n_uncertain} times");
    }
    assert!(check.unknown.is_empty(), "stored readings nobody sent: {:?}", check.unknown);
    check.extra
}

/// Runs the torture on `lines`: an uninterrupted baseline, the killed run, and (when a re-sent
/// reading was stored twice) an uninterrupted run on exactly what the killed run stored.
/// Returns the baseline, the killed run and the contents stored twice.
fn torture(lines: &[String], hub: Option<&HttpHub>) -> (Outcome, Outcome, HashMap<Content, usize>) {
    let seed = seed();
    let kills = kills();
    eprintln!("crash torture: seed {seed} (EDDY_TORTURE_SEED), {kills} kills (EDDY_TORTURE_ROUNDS)");
    let mut rng = Rng(seed);
    let plain = config(None);

    let baseline_dir = tempfile::tempdir().unwrap();
    let all_valid = vec![true; lines.len()];
    let baseline = run(baseline_dir.path(), &plain, lines, &all_valid, 0, &mut rng, &HubPlan::None);
    let valid: Vec<bool> = (1..=lines.len()).map(|line_no| !baseline.errors.contains(&line_no)).collect();

    let killed_dir = tempfile::tempdir().unwrap();
    let (killed_config, plan) = match hub {
        Some(hub) => (config(Some(&hub.url())), HubPlan::Flaky(hub)),
        None => (plain.clone(), HubPlan::None),
    };
    let killed = run(killed_dir.path(), &killed_config, lines, &valid, kills, &mut rng, &plan);
    let extra = check_stored(lines, &valid, &killed);
    assert!(
        extra.is_empty(),
        "readings stored twice although their session recognises resends (seed {seed}): {extra:?}"
    );

    let reference = if extra.is_empty() {
        baseline
    } else {
        let reference_dir = tempfile::tempdir().unwrap();
        let stored_lines = stored_as_lines(killed.stored.iter().filter(|r| r["sensor"] != MARKER_SENSOR));
        let stored_valid = vec![true; stored_lines.len()];
        run(reference_dir.path(), &plain, &stored_lines, &stored_valid, 0, &mut rng, &HubPlan::None)
    };
    assert_eq!(
        killed.windows.keys().collect::<Vec<_>>(),
        reference.windows.keys().collect::<Vec<_>>(),
        "the killed run emitted other windows than the uninterrupted one (seed {seed})"
    );
    assert_eq!(killed.windows, reference.windows, "window values differ (seed {seed})");
    assert_eq!(killed.late, reference.late, "late readings differ (seed {seed})");
    eprintln!(
        "crash torture: {} kills, {} re-sent lines answered dup, {} readings stored twice, {} windows, {} late, hub outages {}",
        killed.kills,
        killed.dups,
        extra.values().sum::<usize>(),
        killed.windows.len(),
        killed.late.len(),
        killed.hub_outages
    );
    (reference, killed, extra)
}

#[test]
fn sigkill_at_random_moments_keeps_every_acked_reading_and_spark_results() {
    let text = std::fs::read_to_string(conformance_dir().join("readings_sample.jsonl")).unwrap();
    let lines =
        with_sentinels(text.lines().filter(|line| !line.trim().is_empty()).map(str::to_owned).collect());
    let (_, killed, extra) = torture(&lines, None);

    // Against Spark: the same windows; every window no re-sent reading fell into has Spark's
    // values (all windows, when no reading was stored twice).
    for (window, length, file) in [
        ("w10s", 10_000, "expected_stream_wm10s_w10000ms_s5000ms.jsonl"),
        ("w5s", 5_000, "expected_stream_wm10s_w5000ms_s5000ms.jsonl"),
    ] {
        let expected = spark(file);
        let ours: BTreeMap<(String, i64), &Value> = killed
            .windows
            .values()
            .filter(|r| r["window"] == window)
            .map(|r| ((r["sensor"].as_str().unwrap().to_owned(), r["start"].as_i64().unwrap()), r))
            .collect();
        assert_eq!(ours.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{window}: windows");
        let touched = |(sensor, start): &(String, i64)| {
            extra.keys().any(|(s, ts, _)| s == sensor && (*start..start + length).contains(ts))
        };
        let mut n_checked = 0;
        for (key, want) in expected.iter().filter(|(key, _)| !touched(key)) {
            let got = ours[key];
            assert_eq!(got["count"].as_u64(), want["count"].as_u64(), "{window} {key:?} count");
            for (ours_key, spark_key) in [("min", "min"), ("max", "max"), ("mean", "avg"), ("sum", "sum")] {
                let (a, b) = (got[ours_key].as_f64().unwrap(), want[spark_key].as_f64().unwrap());
                assert!(close(a, b), "{window} {key:?} {ours_key}: eddy {a} vs spark {b}");
            }
            n_checked += 1;
        }
        if extra.is_empty() {
            assert_eq!(n_checked, expected.len());
        }
    }
}

#[test]
fn sigkill_with_the_hub_down_forwards_every_result_once_within_the_bound() {
    // 20 sensors, 10 readings/s each for 30 s of event time, two hours ago.
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let base = (now / 1000 - 7200) * 1000;
    let mut lines = Vec::new();
    for tick in 0..300i64 {
        for sensor in 0..20 {
            let temp = 15.0 + f64::from(u32::try_from((tick * 7 + sensor) % 97).unwrap()) / 8.0;
            lines.push(format!(r#"{{"sensor":"s{sensor:02}","ts":{},"temp_c":{temp}}}"#, base + tick * 100));
        }
    }
    let hub = HttpHub::start().expect("the HTTP hub starts");
    let (_, killed, _) = torture(&with_sentinels(lines), Some(&hub));
    // In order, nothing missing, repeats only within one batch per crash or cut connection.
    let bound = SINK_BATCH * (killed.kills + killed.hub_outages);
    let received: Vec<Value> = hub.records();
    let repeats = check_every_result_in_order(&killed.window_order, &received, bound);
    eprintln!("hub: {} records, {repeats} repeats (bound {bound})", received.len());
}
