//! What the crash torture (`e2e/crash.rs`, SIGKILL) and the power-cut torture
//! (`e2e/power_cut.rs`, SIGKILL plus a cut of the unsynced writes) share: seeded moments, a
//! sender feeding a numbered TCP session with acks, and readers of what eddy stored and
//! emitted (the sink files, reading contents, the end-of-stream sentinels, Spark's windows).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::conformance_dir;

/// How far after the data the sentinels lie (event time): every data window closes.
pub const SENTINEL_AFTER_MS: i64 = 3_600_000;

/// splitmix64: a seeded, dependency-free generator for kill moments.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A duration of `range` milliseconds.
    pub fn millis(&mut self, range: Range<u64>) -> Duration {
        Duration::from_millis(range.start + self.below(range.end - range.start))
    }
}

/// The seed in the environment variable `variable`, or one from the clock (print it, so that
/// a failure can be replayed).
pub fn seed_from_env(variable: &str) -> u64 {
    std::env::var(variable).ok().and_then(|seed| seed.parse().ok()).unwrap_or_else(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("the clock is after 1970");
        u64::try_from(now.as_nanos() % (1 << 48)).expect("below 2^48")
    })
}

/// The number in the environment variable `variable`, or `default`.
pub fn count_from_env(variable: &str, default: usize) -> usize {
    std::env::var(variable).ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// One connection sending `lines` at `rate` lines per second as numbers `first_line..` of a
/// numbered session, and settling them from the replies as a sender keeping a queue would.
pub struct Feed {
    stream: TcpStream,
    /// Lines whose write was started (an upper bound of what eddy may have read).
    started: Arc<AtomicUsize>,
    acked: Arc<AtomicU64>,
    /// Lines settled from the front (`ack`, `err` or `dup`): the next feed starts after them.
    settled: Arc<AtomicUsize>,
    /// Lines settled from the front up to the last one answered `ack` or `dup` (so not
    /// counting `err` lines after it): what eddy said it holds.
    stored_front: Arc<AtomicUsize>,
    /// Lines answered `dup`: stored before, on an earlier connection.
    dups: Arc<AtomicU64>,
    /// Lines refused (`nack N REASON`): not stored, kept by the sender.
    nacked: Arc<AtomicU64>,
    /// 1-based numbers of the lines answered `err`, counted from the feed's first line.
    errors: Arc<Mutex<Vec<usize>>>,
    /// eddy's answer to `#session`: the last line of the session it holds as settled
    /// (`u64::MAX` until it came).
    session_settled: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// What a feed got done.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The last cumulative `ack N`.
    pub acked: u64,
    /// Lines settled from the front.
    pub settled: usize,
    /// Lines settled from the front through the last `ack` or `dup` (see [`Feed`]).
    pub stored_front: usize,
    /// Lines whose write was started.
    pub started: usize,
    /// Lines answered `dup`.
    pub dups: u64,
    /// Lines refused (`nack`): the front stops before the first of them.
    pub nacked: u64,
    /// 1-based numbers of the lines answered `err`, from the feed's first line.
    pub errors: Vec<usize>,
    /// eddy's `session ID SETTLED` answer, if it came.
    pub session_settled: Option<u64>,
}

impl Feed {
    /// Connects to `address`, declares `#session {session} {first_line}` and starts sending
    /// `lines` (whose validity eddy is expected to agree with: `valid`) at `rate` lines/s.
    pub fn start(
        address: SocketAddr,
        session: &str,
        rate: f64,
        lines: Vec<String>,
        valid: Vec<bool>,
        first_line: usize,
    ) -> Feed {
        let mut stream = TcpStream::connect(address).expect("connect to eddy");
        stream.write_all(format!("#session {session} {first_line}\n").as_bytes()).expect("session line");
        stream.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
        let started = Arc::new(AtomicUsize::new(0));
        let acked = Arc::new(AtomicU64::new(0));
        let settled = Arc::new(AtomicUsize::new(0));
        let stored_front = Arc::new(AtomicUsize::new(0));
        let dups = Arc::new(AtomicU64::new(0));
        let nacked = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let session_settled = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = stream.try_clone().expect("clone the stream");
        let (writer_started, writer_stop) = (started.clone(), stop.clone());
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
                let due = Duration::from_secs_f64(((group_idx + 1) * 25) as f64 / rate);
                if let Some(wait) = due.checked_sub(begun.elapsed()) {
                    thread::sleep(wait);
                }
            }
        });
        let reader = FeedReader {
            session: session.to_owned(),
            valid,
            acked: acked.clone(),
            settled: settled.clone(),
            stored_front: stored_front.clone(),
            dups: dups.clone(),
            nacked: nacked.clone(),
            errors: errors.clone(),
            session_settled: session_settled.clone(),
            stop: stop.clone(),
        };
        let reader_stream = stream.try_clone().expect("clone the stream");
        let reader_thread = thread::spawn(move || reader.run(reader_stream));
        Feed {
            stream,
            started,
            acked,
            settled,
            stored_front,
            dups,
            nacked,
            errors,
            session_settled,
            stop,
            threads: vec![writer_thread, reader_thread],
        }
    }

    /// Lines settled from the front so far.
    pub fn settled(&self) -> usize {
        self.settled.load(Ordering::SeqCst)
    }

    /// Stops both threads; returns what was settled, started, answered `dup` or `err`.
    pub fn finish(mut self) -> Finished {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        for thread in self.threads.drain(..) {
            thread.join().expect("feed thread");
        }
        let session_settled = self.session_settled.load(Ordering::SeqCst);
        Finished {
            acked: self.acked.load(Ordering::SeqCst),
            settled: self.settled.load(Ordering::SeqCst),
            stored_front: self.stored_front.load(Ordering::SeqCst),
            started: self.started.load(Ordering::SeqCst),
            dups: self.dups.load(Ordering::SeqCst),
            nacked: self.nacked.load(Ordering::SeqCst),
            errors: self.errors.lock().expect("errors lock").clone(),
            session_settled: (session_settled != u64::MAX).then_some(session_settled),
        }
    }
}

/// The reading half of a [`Feed`].
struct FeedReader {
    session: String,
    valid: Vec<bool>,
    acked: Arc<AtomicU64>,
    settled: Arc<AtomicUsize>,
    stored_front: Arc<AtomicUsize>,
    dups: Arc<AtomicU64>,
    nacked: Arc<AtomicU64>,
    errors: Arc<Mutex<Vec<usize>>>,
    session_settled: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FeedReader {
    fn run(self, stream: TcpStream) {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // The front of the queue and the accepted lines popped so far.
        let (mut front, mut popped_accepted) = (0usize, 0u64);
        // After a `nack` the session refuses every later line until the sender resends, so
        // nothing past it settles on this connection: later replies are counted, not applied.
        let mut refused = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                // A reply cut by the kill (no newline) says nothing: `ack 12` of `ack 1234`.
                Ok(_) if !line.ends_with('\n') => return,
                Ok(_) => {
                    let mut words = line.split_whitespace();
                    let verb = words.next();
                    if refused {
                        if let (Some("nack"), Some(n)) =
                            (verb, words.next().and_then(|n| n.parse::<u64>().ok()))
                        {
                            self.nacked.fetch_add(n, Ordering::SeqCst);
                        }
                        continue;
                    }
                    match (verb, words.next(), words.next().and_then(|n| n.parse::<u64>().ok())) {
                        (Some("session"), Some(id), Some(settled)) if id == self.session => {
                            self.session_settled.store(settled, Ordering::SeqCst);
                        }
                        (Some("dup"), Some(n), None) => {
                            let n: usize = n.parse().expect("dup count");
                            front += n;
                            self.dups.fetch_add(n as u64, Ordering::SeqCst);
                            self.stored_front.store(front, Ordering::SeqCst);
                        }
                        (Some("ack"), Some(n), None) => {
                            let n: u64 = n.parse().expect("ack count");
                            // An ack covers accepted lines only: an `err` settles the others first.
                            while popped_accepted < n {
                                assert!(
                                    self.valid[front],
                                    "`ack {n}` covers line {} answered err before",
                                    front + 1
                                );
                                front += 1;
                                popped_accepted += 1;
                            }
                            self.acked.fetch_max(n, Ordering::SeqCst);
                            self.stored_front.store(front, Ordering::SeqCst);
                        }
                        (Some("nack"), Some(n), _) => {
                            // Refused (the store failed a write): not stored, kept by the sender.
                            let n: u64 = n.parse().expect("nack count");
                            self.nacked.fetch_add(n, Ordering::SeqCst);
                            refused = true;
                            continue;
                        }
                        (Some("err"), Some(n), _) => {
                            let n: usize = n.parse().expect("err line");
                            assert_eq!(n, front + 1, "`err {n}` is not for the front line {}", front + 1);
                            front = n;
                            self.errors.lock().expect("errors lock").push(n);
                        }
                        _ => panic!("unexpected reply `{}`", line.trim_end()),
                    }
                    self.settled.store(front, Ordering::SeqCst);
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::SeqCst) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}

/// The records of a JSON-lines sink file that crashes may have written again: the first
/// occurrence of each id, in file order, and what came again.
#[derive(Debug, Default)]
pub struct SinkRecords {
    /// First occurrences, in file order.
    pub firsts: Vec<Value>,
    /// Last occurrences, in the order of the first: what the sink was told last about each id
    /// (the same as `firsts` unless there are conflicts).
    pub latest: Vec<Value>,
    /// Records repeated with the same values (a re-delivered batch).
    pub repeats: usize,
    /// Ids repeated with other values than the occurrence before: (before, later). eddy never
    /// does that, as a result's values are fixed once a sink saw it.
    pub conflicts: Vec<(Value, Value)>,
}

/// Reads a sink file, skipping lines a kill tore (the same records follow again).
pub fn read_sink_records(path: &Path) -> SinkRecords {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut records = SinkRecords::default();
    for line in text.lines().filter(|line| !line.trim().is_empty()) {
        let Ok(record) = serde_json::from_str::<Value>(line) else { continue };
        let id = record["id"].as_str().expect("record id").to_owned();
        match by_id.get(&id) {
            Some(&idx) if records.latest[idx] == record => records.repeats += 1,
            Some(&idx) => {
                let before = std::mem::replace(&mut records.latest[idx], record.clone());
                records.conflicts.push((before, record));
            }
            None => {
                by_id.insert(id, records.firsts.len());
                records.firsts.push(record.clone());
                records.latest.push(record);
            }
        }
    }
    records
}

/// Reads a sink file as [`read_sink_records`] does and asserts that a repeated id carries the
/// same values and that there are at most `max_repeats` repeats; returns the first occurrences.
pub fn read_sink(path: &Path, max_repeats: usize) -> Vec<Value> {
    let records = read_sink_records(path);
    if let Some((first, later)) = records.conflicts.first() {
        panic!("{}: id {} repeated with other values: {first} then {later}", path.display(), first["id"]);
    }
    assert!(
        records.repeats <= max_repeats,
        "{}: {} repeated records, more than the bound {max_repeats}",
        path.display(),
        records.repeats
    );
    records.firsts
}

/// A raw record's log position (key, index in the chunk), from its id.
pub fn raw_position(record: &Value) -> (u64, u64) {
    let id = record["id"].as_str().expect("raw record id");
    let (key, idx) = id.rsplit('/').next().and_then(|tail| tail.split_once('-')).expect("`…/KEY-IDX`");
    (key.parse().expect("log key"), idx.parse().expect("index"))
}

/// Readings counted by the tumbling `w5s` windows emitted so far, plus those late for it.
pub fn w5s_accounted(windows: &[Value], late: &[Value]) -> usize {
    let counted: u64 =
        windows.iter().filter(|r| r["window"] == "w5s").map(|r| r["count"].as_u64().expect("count")).sum();
    usize::try_from(counted).expect("fits") + late.iter().filter(|r| r["window"] == "w5s").count()
}

/// Stored readings whose windows close: all but the sentinels (an hour after the data, their
/// windows stay open) and the end-of-run markers (`is_marker`).
pub fn closed_readings(stored: &[Value], is_marker: impl Fn(&Value) -> bool) -> usize {
    let ts = |r: &Value| r["ts"].as_i64().expect("ts");
    let sentinel_from = stored.iter().filter(|r| !is_marker(r)).map(ts).max().unwrap_or(0);
    stored.iter().filter(|r| !is_marker(r) && ts(r) < sentinel_from).count()
}

/// A reading's content: sensor, event time and values (bit-exact).
pub type Content = (String, i64, Vec<(String, u64)>);

/// The content of an input line (JSON with `sensor`, `ts`, `temp_c`, maybe `humidity`).
pub fn content_of_line(line: &str) -> Content {
    let value: Value = serde_json::from_str(line).expect("a JSON line");
    let values = ["temp_c", "humidity"]
        .iter()
        .filter_map(|field| value[*field].as_f64().map(|v| ((*field).to_owned(), v.to_bits())))
        .collect();
    (value["sensor"].as_str().expect("sensor").to_owned(), value["ts"].as_i64().expect("ts"), values)
}

/// The content of a raw-lane record.
pub fn content_of_raw(record: &Value) -> Content {
    let values = ["temp_c", "humidity"]
        .iter()
        .filter_map(|field| record["values"][*field].as_f64().map(|v| ((*field).to_owned(), v.to_bits())))
        .collect();
    (record["sensor"].as_str().expect("sensor").to_owned(), record["ts"].as_i64().expect("ts"), values)
}

/// Stored raw records as input lines (for a reference run on exactly what was stored).
pub fn stored_as_lines<'a>(stored: impl IntoIterator<Item = &'a Value>) -> Vec<String> {
    stored
        .into_iter()
        .map(|r| {
            let mut line = serde_json::Map::new();
            line.insert("sensor".into(), r["sensor"].clone());
            line.insert("ts".into(), r["ts"].clone());
            for (field, value) in r["values"].as_object().expect("values") {
                line.insert(field.clone(), value.clone());
            }
            Value::Object(line).to_string()
        })
        .collect()
}

/// One sentinel line per sensor of `lines`, [`SENTINEL_AFTER_MS`] of event time after the last
/// reading of any, in sensor order: they close every data window.
pub fn sentinels(lines: &[String]) -> Vec<String> {
    let mut last_ts: BTreeMap<String, i64> = BTreeMap::new();
    for line in lines {
        if let Ok(value) = serde_json::from_str::<Value>(line) {
            if let (Some(sensor), Some(ts)) = (value["sensor"].as_str(), value["ts"].as_i64()) {
                let last = last_ts.entry(sensor.to_owned()).or_insert(ts);
                *last = (*last).max(ts);
            }
        }
    }
    let max_ts = last_ts.values().max().copied().unwrap_or(0);
    last_ts
        .keys()
        .filter(|sensor| !sensor.is_empty())
        .map(|sensor| format!(r#"{{"sensor":"{sensor}","ts":{},"temp_c":0.0}}"#, max_ts + SENTINEL_AFTER_MS))
        .collect()
}

/// The data lines plus their [`sentinels`].
pub fn with_sentinels(mut lines: Vec<String>) -> Vec<String> {
    let sentinels = sentinels(&lines);
    lines.extend(sentinels);
    lines
}

/// Spark's windows for the conformance stream in `file`, by (sensor, window start).
pub fn spark(file: &str) -> BTreeMap<(String, i64), Value> {
    crate::read_jsonl(&conformance_dir().join(file))
        .into_iter()
        .map(|row| {
            let key = (
                row["sensor"].as_str().expect("sensor").to_owned(),
                row["window_start_ms"].as_i64().expect("start"),
            );
            (key, row)
        })
        .collect()
}

/// Equal within the last few bits (sums in another order).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
}

/// How the readings eddy stored compare with those sent.
#[derive(Debug, Default)]
pub struct StoredCheck {
    /// Sent readings stored fewer times than sent: (content, sent, stored).
    pub lost: Vec<(Content, usize, usize)>,
    /// Extra copies of readings that were unacknowledged at a kill (a resend stored again).
    pub extra: HashMap<Content, usize>,
    /// Extra copies beyond that: (content, extra copies, times unacknowledged at a kill).
    pub unexplained: Vec<(Content, usize, usize)>,
    /// Stored readings nobody sent.
    pub unknown: Vec<Content>,
}

/// Compares the multiset of readings `stored` with those `sent`; `uncertain` lists the
/// readings that were sent but not acknowledged when eddy died (once per time).
pub fn compare_stored(
    sent: impl IntoIterator<Item = Content>,
    stored: impl IntoIterator<Item = Content>,
    uncertain: impl IntoIterator<Item = Content>,
) -> StoredCheck {
    let count = |contents: &mut dyn Iterator<Item = Content>| {
        let mut counts: HashMap<Content, usize> = HashMap::new();
        for content in contents {
            *counts.entry(content).or_default() += 1;
        }
        counts
    };
    let sent = count(&mut sent.into_iter());
    let stored = count(&mut stored.into_iter());
    let uncertain = count(&mut uncertain.into_iter());
    let mut check = StoredCheck::default();
    for (content, n_sent) in &sent {
        let n_stored = stored.get(content).copied().unwrap_or(0);
        if n_stored < *n_sent {
            check.lost.push((content.clone(), *n_sent, n_stored));
            continue;
        }
        let n_extra = n_stored - n_sent;
        let n_uncertain = uncertain.get(content).copied().unwrap_or(0);
        if n_extra > n_uncertain {
            check.unexplained.push((content.clone(), n_extra, n_uncertain));
        }
        if n_extra > 0 {
            check.extra.insert(content.clone(), n_extra);
        }
    }
    check.lost.sort();
    check.unexplained.sort();
    check.unknown = stored.into_keys().filter(|content| !sent.contains_key(content)).collect();
    check.unknown.sort();
    check
}
