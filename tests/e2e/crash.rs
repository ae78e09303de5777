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
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_tests::http_hub::HttpHub;
use eddy_tests::{conformance_dir, send_with_acks, wait_until, Eddy};
use serde_json::Value;

use crate::uplink::check_every_result_in_order;

/// Records per delivery of every sink: the duplicate bound is this per crash (or cut hub link).
const SINK_BATCH: usize = 64;
/// Lines per second the sender writes, so that the stream spans several kills.
const SEND_RATE: f64 = 1000.0;
/// The reading that ends a run: sent once everything else is acked, never re-sent.
const MARKER_SENSOR: &str = "zz-end";
/// How far after the data the sentinels lie (event time): every data window closes.
const SENTINEL_AFTER_MS: i64 = 3_600_000;

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
            .key("batch_max_records", SINK_BATCH);
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

/// splitmix64: a seeded, dependency-free generator for kill moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, range: Range<u64>) -> Duration {
        Duration::from_millis(range.start + self.below(range.end - range.start))
    }
}

fn seed() -> u64 {
    std::env::var("EDDY_TORTURE_SEED").ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| {
        u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % (1 << 48)).unwrap()
    })
}

fn kills() -> usize {
    std::env::var("EDDY_TORTURE_ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(12)
}

/// The session the torture's sender numbers its lines in.
const SESSION: &str = "torture";

/// One connection sending `lines` at [`SEND_RATE`] as numbers `first_line..` of [`SESSION`],
/// and settling them from the replies as a sender keeping a queue would.
struct Feed {
    stream: TcpStream,
    /// Lines whose write was started (an upper bound of what eddy may have read).
    started: Arc<AtomicUsize>,
    acked: Arc<AtomicU64>,
    /// Lines settled from the front (`ack`, `err` or `dup`): the next feed starts after them.
    settled: Arc<AtomicUsize>,
    /// Lines answered `dup`: stored before, on an earlier connection.
    dups: Arc<AtomicU64>,
    /// 1-based numbers of the lines answered `err`, counted from the feed's first line.
    errors: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Feed {
    fn start(address: SocketAddr, lines: Vec<String>, valid: Vec<bool>, first_line: usize) -> Feed {
        let mut stream = TcpStream::connect(address).expect("connect to eddy");
        stream.write_all(format!("#session {SESSION} {first_line}\n").as_bytes()).expect("session line");
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let started = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let settled = Arc::new(AtomicUsize::new(0));
        let dups = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = stream.try_clone().unwrap();
        let writer_started = started.clone();
        let writer_stop = stop.clone();
        let writer_thread = thread::spawn(move || {
            let begun = Instant::now();
            for (group_idx, group) in lines.chunks(25).enumerate() {
                if writer_stop.load(Ordering::SeqCst) {
                    return;
                }
                writer_started.fetch_add(group.len(), Ordering::SeqCst);
                let bytes: String = group.iter().flat_map(|line| [line.as_str(), "\n"]).collect();
                if writer.write_all(bytes.as_bytes()).is_err() {
                    return;
                }
                // Pacing, not synchronisation: the stream should span several kills.
                let due = Duration::from_secs_f64(((group_idx + 1) * 25) as f64 / SEND_RATE);
                if let Some(wait) = due.checked_sub(begun.elapsed()) {
                    thread::sleep(wait);
                }
            }
        });
        let reader_stream = stream.try_clone().unwrap();
        let reader_acked = acked.clone();
        let reader_settled = settled.clone();
        let reader_dups = dups.clone();
        let reader_errors = errors.clone();
        let reader_stop = stop.clone();
        let reader_thread = thread::spawn(move || {
            let mut reader = BufReader::new(reader_stream);
            let mut line = String::new();
            // The front of the queue and the accepted lines popped so far.
            let (mut front, mut popped_accepted) = (0usize, 0u64);
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => return,
                    // A reply cut by the kill (no newline) says nothing: `ack 12` of `ack 1234`.
                    Ok(_) if !line.ends_with('\n') => return,
                    Ok(_) => {
                        let mut words = line.split_whitespace();
                        match (words.next(), words.next(), words.next().and_then(|n| n.parse::<usize>().ok()))
                        {
                            (Some("session"), Some(SESSION), Some(_)) => {}
                            (Some("dup"), Some(n), None) => {
                                let n: usize = n.parse().unwrap();
                                front += n;
                                reader_dups.fetch_add(u64::try_from(n).unwrap(), Ordering::SeqCst);
                            }
                            (Some("ack"), Some(n), None) => {
                                let n: u64 = n.parse().unwrap();
                                // An ack covers accepted lines only: an `err` settles the others first.
                                while popped_accepted < n {
                                    assert!(
                                        valid[front],
                                        "`ack {n}` covers line {} answered err before",
                                        front + 1
                                    );
                                    front += 1;
                                    popped_accepted += 1;
                                }
                                reader_acked.fetch_max(n, Ordering::SeqCst);
                            }
                            (Some("err"), Some(n), _) => {
                                let n: usize = n.parse().unwrap();
                                assert_eq!(n, front + 1, "`err {n}` is not for the front line {}", front + 1);
                                front = n;
                                reader_errors.lock().unwrap().push(n);
                            }
                            _ => panic!("unexpected reply `{}`", line.trim_end()),
                        }
                        reader_settled.store(front, Ordering::SeqCst);
                    }
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if reader_stop.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Feed {
            stream,
            started,
            acked,
            settled,
            dups,
            errors,
            stop,
            threads: vec![writer_thread, reader_thread],
        }
    }

    /// Stops both threads; returns what was settled from the front, the lines started, the
    /// lines answered `dup` and the error line numbers.
    fn finish(mut self) -> Finished {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        for thread in self.threads.drain(..) {
            thread.join().expect("feed thread");
        }
        Finished {
            acked: self.acked.load(Ordering::SeqCst),
            settled: self.settled.load(Ordering::SeqCst),
            started: self.started.load(Ordering::SeqCst),
            dups: self.dups.load(Ordering::SeqCst),
            errors: self.errors.lock().unwrap().clone(),
        }
    }
}

/// What a feed got done.
struct Finished {
    acked: u64,
    settled: usize,
    started: usize,
    dups: u64,
    errors: Vec<usize>,
}

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

/// Reads a JSON-lines file a crash may have left torn lines in; returns the records (first
/// occurrence per id, in file order) and checks that repeats are identical and within bound.
fn read_sink(path: &Path, max_repeats: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_id: HashMap<String, Value> = HashMap::new();
    let mut firsts = Vec::new();
    let mut repeats = 0;
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        // A line torn by a kill is followed by the same records again (the cursor did not move).
        let Ok(record) = serde_json::from_str::<Value>(line) else { continue };
        let id = record["id"].as_str().expect("record id").to_owned();
        match by_id.get(&id) {
            Some(first) => {
                assert_eq!(first, &record, "{}: id {id} repeated with other values", path.display());
                repeats += 1;
            }
            None => {
                by_id.insert(id, record.clone());
                firsts.push(record);
            }
        }
    }
    assert!(
        repeats <= max_repeats,
        "{}: {repeats} repeated records, more than the bound {max_repeats}",
        path.display()
    );
    firsts
}

fn raw_position(record: &Value) -> (u64, u64) {
    let id = record["id"].as_str().unwrap();
    let (key, idx) = id.rsplit('/').next().unwrap().split_once('-').unwrap();
    (key.parse().unwrap(), idx.parse().unwrap())
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
            lines[next..].to_vec(),
            valid[next..].to_vec(),
            next + 1,
        );
        thread::sleep(rng.millis(20..900));
        eddy.kill();
        eddy.wait(Duration::from_secs(20)).expect("killed eddy exits");
        let finished = feed.finish();
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
    let feed = Feed::start(address, lines[next..].to_vec(), valid[next..].to_vec(), next + 1);
    let answered = wait_until(Duration::from_secs(120), || feed.settled.load(Ordering::SeqCst) == rest);
    let finished = feed.finish();
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
    let target = closed_readings(&stored);
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

/// Readings counted by the tumbling `w5s` windows emitted so far, plus those late for it.
fn w5s_accounted(windows: &[Value], late: &[Value]) -> usize {
    let counted: u64 =
        windows.iter().filter(|r| r["window"] == "w5s").map(|r| r["count"].as_u64().unwrap()).sum();
    usize::try_from(counted).unwrap() + late.iter().filter(|r| r["window"] == "w5s").count()
}

/// Stored readings whose windows close: all but the sentinels (an hour after the data, their
/// windows stay open) and the marker.
fn closed_readings(stored: &[Value]) -> usize {
    let sentinel_from = stored
        .iter()
        .filter(|r| r["sensor"] != MARKER_SENSOR)
        .map(|r| r["ts"].as_i64().unwrap())
        .max()
        .unwrap_or(0);
    stored
        .iter()
        .filter(|r| r["sensor"] != MARKER_SENSOR && r["ts"].as_i64().unwrap() < sentinel_from)
        .count()
}

/// A reading's content: sensor, event time and values (bit-exact).
type Content = (String, i64, Vec<(String, u64)>);

fn content_of_line(line: &str) -> Content {
    let value: Value = serde_json::from_str(line).unwrap();
    let values = ["temp_c", "humidity"]
        .iter()
        .filter_map(|field| value[*field].as_f64().map(|v| ((*field).to_owned(), v.to_bits())))
        .collect();
    (value["sensor"].as_str().unwrap().to_owned(), value["ts"].as_i64().unwrap(), values)
}

fn content_of_raw(record: &Value) -> Content {
    let values = ["temp_c", "humidity"]
        .iter()
        .filter_map(|field| record["values"][*field].as_f64().map(|v| ((*field).to_owned(), v.to_bits())))
        .collect();
    (record["sensor"].as_str().unwrap().to_owned(), record["ts"].as_i64().unwrap(), values)
}

/// The stored readings as input lines for the reference run (the marker left out).
fn stored_as_lines(stored: &[Value]) -> Vec<String> {
    stored
        .iter()
        .filter(|r| r["sensor"] != MARKER_SENSOR)
        .map(|r| {
            let mut line = serde_json::Map::new();
            line.insert("sensor".into(), r["sensor"].clone());
            line.insert("ts".into(), r["ts"].clone());
            for (field, value) in r["values"].as_object().unwrap() {
                line.insert(field.clone(), value.clone());
            }
            Value::Object(line).to_string()
        })
        .collect()
}

/// Checks that every acked reading is stored, and that extra copies are only of readings that
/// were unacked at a kill; returns the contents stored more often than sent.
fn check_stored(lines: &[String], valid: &[bool], outcome: &Outcome) -> HashMap<Content, usize> {
    let mut sent: HashMap<Content, usize> = HashMap::new();
    for (line, _) in lines.iter().zip(valid).filter(|(_, valid)| **valid) {
        *sent.entry(content_of_line(line)).or_default() += 1;
    }
    let mut stored: HashMap<Content, usize> = HashMap::new();
    for record in outcome.stored.iter().filter(|r| r["sensor"] != MARKER_SENSOR) {
        *stored.entry(content_of_raw(record)).or_default() += 1;
    }
    let mut uncertain: HashMap<Content, usize> = HashMap::new();
    for range in &outcome.uncertain {
        for idx in range.clone().filter(|idx| valid[*idx]) {
            *uncertain.entry(content_of_line(&lines[idx])).or_default() += 1;
        }
    }
    let mut extra = HashMap::new();
    for (content, n_sent) in &sent {
        let n_stored = stored.get(content).copied().unwrap_or(0);
        assert!(
            n_stored >= *n_sent,
            "an acked reading was lost: {content:?} sent {n_sent}, stored {n_stored}"
        );
        let n_extra = n_stored - n_sent;
        let n_uncertain = uncertain.get(content).copied().unwrap_or(0);
        assert!(
            n_extra <= n_uncertain,
            "{content:?} stored {n_extra} extra times but unacked at a kill only {n_uncertain} times"
        );
        if n_extra > 0 {
            extra.insert(content.clone(), n_extra);
        }
    }
    let unknown: Vec<&Content> = stored.keys().filter(|content| !sent.contains_key(*content)).collect();
    assert!(unknown.is_empty(), "stored readings nobody sent: {unknown:?}");
    extra
}

/// The data lines plus one sentinel per sensor, an hour of event time after the last reading.
fn with_sentinels(mut lines: Vec<String>) -> Vec<String> {
    let mut last_ts: BTreeMap<String, i64> = BTreeMap::new();
    for line in &lines {
        if let Ok(value) = serde_json::from_str::<Value>(line) {
            if let (Some(sensor), Some(ts)) = (value["sensor"].as_str(), value["ts"].as_i64()) {
                let last = last_ts.entry(sensor.to_owned()).or_insert(ts);
                *last = (*last).max(ts);
            }
        }
    }
    let max_ts = last_ts.values().max().copied().unwrap_or(0);
    for sensor in last_ts.keys().filter(|sensor| !sensor.is_empty()) {
        lines.push(format!(r#"{{"sensor":"{sensor}","ts":{},"temp_c":0.0}}"#, max_ts + SENTINEL_AFTER_MS));
    }
    lines
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
        let stored_lines = stored_as_lines(&killed.stored);
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

fn spark(file: &str) -> BTreeMap<(String, i64), Value> {
    eddy_tests::read_jsonl(&conformance_dir().join(file))
        .into_iter()
        .map(|row| {
            ((row["sensor"].as_str().unwrap().to_owned(), row["window_start_ms"].as_i64().unwrap()), row)
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
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
