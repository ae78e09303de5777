//! Long outages (#17), end to end: the real binary and a real hub (the tests' HTTP hub, and
//! mosquitto with a QoS 1 subscriber), days of outage compressed in event time (readings sent
//! with their real, past timestamps as fast as eddy acks them).
//!
//! - `downsample`: a 3-day outage with a disk budget that holds about one day of results. The
//!   hub ends with every hour of the 3 days covered, and per sensor, field and hour the counts
//!   equal exactly, and the sums to 1e-9 relative, those of an uninterrupted eddy fed the same
//!   readings (a second eddy whose only sink, a file, is always up: the honest oracle, since a
//!   sink of the outage's eddy would itself change what may be merged). Nothing is finally
//!   dropped.
//! - live first: a day of backlog, then the hub comes back while current readings keep coming
//!   (one event minute per second, so a window closes every second). The first record the hub
//!   gets is a current one, current ones keep arriving during the drain within a few seconds of
//!   the reading that closed their window, and the backlog arrives complete (every id of the
//!   outbox, with the same values).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::http_hub::HttpHub;
use eddy_tests::mosquitto::Mosquitto;
use eddy_tests::mqtt_hub::MqttCollector;
use eddy_tests::{read_jsonl, send_with_acks, wait_until, Eddy};

use crate::api::{api_address, get};
use crate::uplink::wait_for;

/// Sensors of every test.
const SENSORS: usize = 3;
/// A reading of every sensor every 20 s of event time: 3 per one-minute window.
const EVERY_MS: i64 = 20_000;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// The fields of the downsample tests (the live-first ones window only the first).
const FIELDS: [&str; 2] = ["temp_c", "humidity"];
/// Readings sent per acknowledged round: one event hour of every sensor.
const ROUND_MS: i64 = HOUR_MS;

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// Readings of every sensor at event times `from, from + EVERY_MS, …` below `to`. The values
/// have three decimals and no pattern within an hour, so that sums in f64 round differently
/// depending on how they are grouped.
fn readings(from: i64, to: i64) -> Vec<String> {
    let mut lines = Vec::new();
    let mut ts = from;
    while ts < to {
        let tick = ts / EVERY_MS;
        for sensor in 0..SENSORS {
            let k = i64::try_from(sensor).unwrap();
            let temp = 15.0 + f64::from(u32::try_from((tick * 7 + k * 13).rem_euclid(251)).unwrap()) * 0.037;
            let humidity =
                30.0 + f64::from(u32::try_from((tick * 11 + k * 5).rem_euclid(173)).unwrap()) * 0.113;
            lines.push(format!(
                r#"{{"sensor":"s{sensor}","ts":{ts},"temp_c":{temp:.3},"humidity":{humidity:.3}}}"#
            ));
        }
        ts += EVERY_MS;
    }
    lines
}

/// Sends event times `[from, to)` an hour at a time; every reading must be acknowledged.
fn feed(address: SocketAddr, from: i64, to: i64) {
    let mut round = from;
    while round < to {
        let lines = readings(round, (round + ROUND_MS).min(to));
        let refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
        let replies = send_with_acks(address, &refs, Duration::from_secs(60)).expect("readings answered");
        assert_eq!(replies.acked, u64::try_from(lines.len()).unwrap(), "every reading acked: {replies:?}");
        round += ROUND_MS;
    }
}

/// An eddy with an acked TCP source `in`, a one-minute tumbling window `w1m` (count, sum, min,
/// max, mean of `fields`) and the local endpoint; the test adds its sinks.
fn pipeline(device_id: &str, fields: &[&str]) -> ConfigToml {
    ConfigToml::new(device_id)
        .root("shutdown_timeout", "20s")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .tcp_source("in")
        .key("ack", true)
        .window("w1m", "1m")
        .key("lateness", "0s")
        .key("fields", fields.to_vec())
        .key("aggregates", ["count", "sum", "min", "max", "mean"])
}

/// eddy's log lines about its sinks (not the periodic counters).
fn sink_log(eddy: &Eddy) -> String {
    eddy.log()
        .lines()
        .filter(|line| line.contains("sink=") && !line.contains("counters."))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `/status` as JSON.
fn status(eddy: &Eddy) -> serde_json::Value {
    let (code, body) = get(api_address(eddy), "/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// The sum of every sample of the metric family `name` (all label sets).
fn metric_total(metrics: &str, name: &str) -> Option<f64> {
    let samples: Vec<f64> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter_map(|(_, value)| value.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

/// The hub of a test: the tests' HTTP server, or mosquitto with a QoS 1 subscriber.
enum Hub {
    Http(HttpHub),
    Mqtt(Mosquitto, MqttCollector),
}

impl Hub {
    /// A hub that is up (the MQTT subscriber subscribed, so the broker keeps its messages).
    fn start(kind: &str) -> Hub {
        match kind {
            "http" => Hub::Http(HttpHub::start().expect("the HTTP hub starts")),
            "mqtt" => {
                let broker = Mosquitto::start().expect("mosquitto starts");
                let collector = MqttCollector::start(broker.addr(), "devices/#");
                assert!(
                    wait_until(Duration::from_secs(10), || collector.subscribed()),
                    "the test subscriber could not subscribe to the hub"
                );
                Hub::Mqtt(broker, collector)
            }
            other => panic!("unknown hub {other}"),
        }
    }

    /// `config` with a sink `hub` to this hub taking window results, retrying every ≤ 500 ms.
    fn sink(&self, config: ConfigToml) -> ConfigToml {
        let config = match self {
            Hub::Http(hub) => config.http_sink("hub", &hub.url()).key("timeout", "2s"),
            Hub::Mqtt(broker, _) => config.mqtt_sink("hub", &broker.url()).key("connect_timeout", "1s"),
        };
        config.key("records", ["window"]).key("max_backoff", "500ms")
    }

    fn stop(&mut self) {
        match self {
            Hub::Http(hub) => hub.stop(),
            Hub::Mqtt(broker, _) => broker.stop(),
        }
    }

    fn restart(&mut self) {
        match self {
            Hub::Http(hub) => hub.restart().expect("the HTTP hub comes back"),
            Hub::Mqtt(broker, _) => broker.restart().expect("mosquitto comes back"),
        }
    }

    /// How many records arrived so far (duplicates included); cheap, for polling.
    fn count(&self) -> usize {
        match self {
            Hub::Http(hub) => hub.record_count(),
            Hub::Mqtt(_, collector) => collector.len(),
        }
    }

    /// Every record received, in arrival order, with its arrival time (duplicates included).
    fn records(&self) -> Vec<(Instant, serde_json::Value)> {
        match self {
            Hub::Http(hub) => hub.records_with_arrival(0),
            Hub::Mqtt(_, collector) => collector.records_with_arrival(0),
        }
    }
}

fn str_of<'a>(record: &'a serde_json::Value, key: &str) -> &'a str {
    record[key].as_str().unwrap_or_else(|| panic!("no string `{key}` in {record}"))
}

fn int_of(record: &serde_json::Value, key: &str) -> i64 {
    record[key].as_i64().unwrap_or_else(|| panic!("no integer `{key}` in {record}"))
}

fn float_of(record: &serde_json::Value, key: &str) -> f64 {
    record[key].as_f64().unwrap_or_else(|| panic!("no number `{key}` in {record}"))
}

/// The first record of each id, in arrival order.
fn first_of_each_id(records: &[(Instant, serde_json::Value)]) -> Vec<(Instant, serde_json::Value)> {
    let mut seen = HashSet::new();
    records.iter().filter(|(_, record)| seen.insert(str_of(record, "id").to_owned())).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Downsample: every hour exact.

/// Aggregates of one sensor, field and hour.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Hourly {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// (sensor, field, hour start) → its aggregates.
type Hours = BTreeMap<(String, String, i64), Hourly>;

/// Adds a window record (a one-minute result, or a downsampled one of at most an hour) to
/// the hour its window lies in. Sums are added in the order given.
fn add_to_hours(hours: &mut Hours, record: &serde_json::Value) {
    assert_eq!(record["type"], "window", "only window results go to the hub: {record}");
    let (start, end) = (int_of(record, "start"), int_of(record, "end"));
    let hour = start.div_euclid(HOUR_MS) * HOUR_MS;
    assert!(
        end - 1 < hour + HOUR_MS,
        "a record spans more than its hour (merged to a coarser level?): {record}"
    );
    let key = (str_of(record, "sensor").to_owned(), str_of(record, "field").to_owned(), hour);
    let part = Hourly {
        count: record["count"].as_u64().unwrap_or_else(|| panic!("no count in {record}")),
        sum: float_of(record, "sum"),
        min: float_of(record, "min"),
        max: float_of(record, "max"),
    };
    let mean = float_of(record, "mean");
    let expected_mean = part.sum / part.count as f64;
    assert!(
        (mean - expected_mean).abs() <= 1e-9 * expected_mean.abs().max(1.0),
        "mean {mean} is not sum / count = {expected_mean}: {record}"
    );
    hours
        .entry(key)
        .and_modify(|hourly| {
            hourly.count += part.count;
            hourly.sum += part.sum;
            hourly.min = hourly.min.min(part.min);
            hourly.max = hourly.max.max(part.max);
        })
        .or_insert(part);
}

/// The uninterrupted run: the start of its 3 days and its per-hour aggregates.
struct Oracle {
    base: i64,
    hours: Hours,
}

/// Shared by the downsample tests (the same readings for both): computed once.
static ORACLE: OnceLock<Oracle> = OnceLock::new();

/// The 3 days fed to every downsample test: hour-aligned, ending about an hour ago.
fn three_days(base: i64) -> (i64, i64) {
    (base, base + 3 * DAY_MS)
}

/// An eddy whose file sink is always up, fed the 3 days and one closing round (so that every
/// window of the 3 days is closed): its per-hour aggregates.
fn oracle() -> &'static Oracle {
    ORACLE.get_or_init(|| {
        let base = (now_ms() - 3 * DAY_MS - 2 * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
        let (from, to) = three_days(base);
        let config = pipeline("gw-lo", &FIELDS)
            .file_sink("oracle", "{dir}/oracle.jsonl")
            .key("records", ["window"])
            .key("max_file_bytes", 0)
            .to_toml();
        let mut eddy = Eddy::start(&config).expect("the oracle eddy starts");
        let address = eddy.tcp_address("in").unwrap();
        feed(address, from, to + EVERY_MS);
        let expected = SENSORS * FIELDS.len() * usize::try_from((to - from) / MINUTE_MS).unwrap();
        let path = eddy.dir.join("oracle.jsonl");
        wait_for(&eddy, Duration::from_secs(120), "the uninterrupted run's results", || {
            read_jsonl(&path).len() >= expected
        });
        assert!(eddy.stop().expect("the oracle eddy stops").success());
        let mut hours = Hours::new();
        let records = read_jsonl(&path);
        assert_eq!(records.len(), expected, "one result per sensor, field and minute");
        for record in &records {
            add_to_hours(&mut hours, record);
        }
        assert_eq!(hours.len(), SENSORS * FIELDS.len() * 72, "every hour of the 3 days");
        assert!(hours.values().all(|hourly| hourly.count == 180), "3 readings a minute");
        Oracle { base, hours }
    })
}

/// How the hub's per-hour aggregates differ from the oracle's (empty: they do not).
fn differences(got: &Hours, oracle: &Hours) -> Vec<String> {
    let mut out = Vec::new();
    for (key, want) in oracle {
        match got.get(key) {
            None => out.push(format!("{key:?}: missing")),
            Some(have) => {
                let sum_ok = (have.sum - want.sum).abs() <= 1e-9 * want.sum.abs();
                if have.count != want.count || !sum_ok || have.min != want.min || have.max != want.max {
                    out.push(format!("{key:?}: {have:?}, want {want:?}"));
                }
            }
        }
    }
    out.extend(
        got.keys().filter(|key| !oracle.contains_key(*key)).map(|key| format!("{key:?}: not in the oracle")),
    );
    out
}

/// The hub's records, once per id, as per-hour aggregates; and how many were downsampled.
fn hub_hours(hub: &Hub) -> (Hours, usize) {
    let mut hours = Hours::new();
    let mut downsampled = 0;
    for (_, record) in first_of_each_id(&hub.records()) {
        if record["downsampled"] == true {
            downsampled += 1;
            let resolution = int_of(&record, "resolution");
            assert!(resolution <= HOUR_MS, "coarser than an hour: {record}");
            assert!(int_of(&record, "merged") >= 2, "a downsampled record merges records: {record}");
            let (covered_start, covered_end) =
                (int_of(&record, "covered_start"), int_of(&record, "covered_end"));
            assert!(
                int_of(&record, "start") <= covered_start && covered_end <= int_of(&record, "end"),
                "the covered span lies in the bucket: {record}"
            );
        }
        add_to_hours(&mut hours, &record);
    }
    (hours, downsampled)
}

fn downsample_keeps_every_hour_exact(kind: &str) {
    let oracle = oracle();
    let (from, to) = three_days(oracle.base);
    let mut hub = Hub::start(kind);
    hub.stop();
    let config = |max_bytes: u64| {
        hub.sink(
            pipeline("gw-lo", &FIELDS)
                .table("storage")
                .key("max_bytes", max_bytes)
                .key("policy", "downsample"),
        )
        .to_toml()
    };
    let dir = tempfile::tempdir().expect("temp dir");

    // Day 1 without a budget: what one day of results takes is the budget of the outage.
    let mut eddy = Eddy::start_in(dir.path(), &config(0)).expect("eddy starts");
    feed(eddy.tcp_address("in").unwrap(), from, from + DAY_MS);
    let day_results = u64::try_from(SENSORS * FIELDS.len() * (24 * 60 - 1)).unwrap();
    let mut used = 0;
    wait_for(&eddy, Duration::from_secs(60), "day 1's results in the outbox, the log trimmed", || {
        let status = status(&eddy);
        let hub =
            status["uplinks"].as_array().unwrap().iter().find(|uplink| uplink["name"] == "hub").cloned();
        let depth = hub.and_then(|hub| hub["outbox_depth"].as_u64()).unwrap_or(0);
        let now_used = status["store"]["used_bytes"].as_u64().unwrap_or(0);
        let settled = depth >= day_results && now_used == used;
        used = now_used;
        thread::sleep(Duration::from_millis(200));
        settled
    });
    assert!(eddy.stop().expect("eddy stops").success());
    assert!(used >= 65_536, "one day of results takes {used} bytes: below the least budget");

    // Days 2 and 3 with a budget of about one day: the oldest results must be merged.
    let mut eddy = Eddy::start_in(dir.path(), &config(used)).expect("eddy starts with the budget");
    feed(eddy.tcp_address("in").unwrap(), from + DAY_MS, to + EVERY_MS);
    hub.restart();
    let (mut last, mut seen) = (vec!["nothing at the hub".to_owned()], 0);
    let converged = wait_until(Duration::from_secs(90), || {
        let count = hub.count();
        if count != seen {
            // Only when more arrived: each look adds up every record again.
            seen = count;
            last = differences(&hub_hours(&hub).0, &oracle.hours);
        }
        last.is_empty()
    });
    let metrics = get(api_address(&eddy), "/metrics").1;
    assert!(
        converged,
        "the hub's hours differ from the uninterrupted run's ({} of {}), e.g. {:?}\n/metrics:\n{metrics}\nlog:\n{}",
        last.len(),
        oracle.hours.len(),
        &last[..last.len().min(8)],
        eddy.log()
    );
    let (_, downsampled) = hub_hours(&hub);
    assert!(downsampled > 0, "the budget of one day made eddy merge results");
    let merged =
        metric_total(&metrics, MERGED_METRIC).unwrap_or_else(|| panic!("no {MERGED_METRIC}:\n{metrics}"));
    assert!(merged > 0.0, "{MERGED_METRIC} counts the merged records:\n{metrics}");
    let dropped =
        metric_total(&metrics, DROPPED_METRIC).unwrap_or_else(|| panic!("no {DROPPED_METRIC}:\n{metrics}"));
    assert_eq!(dropped, 0.0, "nothing finally dropped:\n{metrics}");
    let status = status(&eddy);
    let uplink =
        status["uplinks"].as_array().unwrap().iter().find(|uplink| uplink["name"] == "hub").unwrap().clone();
    assert_eq!(uplink["dropped_budget"], 0, "the hub lost nothing to the budget: {uplink}");
    assert!(eddy.stop().expect("eddy stops").success());
    // Whatever came after the hours matched (a record covering minutes the hub had already)
    // would count twice.
    let after_stop = differences(&hub_hours(&hub).0, &oracle.hours);
    assert!(
        after_stop.is_empty(),
        "after the stop the hub's hours differ: {:?}",
        &after_stop[..after_stop.len().min(8)]
    );
    println!(
        "{kind}: budget {used} bytes (one day of results); the hub got {} records for {} hours, {downsampled} \
         of them downsampled; {merged} records merged",
        first_of_each_id(&hub.records()).len(),
        oracle.hours.len()
    );
}

/// Records merged by `downsample` (all levels).
const MERGED_METRIC: &str = "eddy_store_downsample_merged_total";
/// Records finally dropped for the budget.
const DROPPED_METRIC: &str = "eddy_store_budget_dropped_total";

#[test]
fn downsample_keeps_every_hour_exact_http() {
    downsample_keeps_every_hour_exact("http");
}

#[test]
fn downsample_keeps_every_hour_exact_mqtt() {
    downsample_keeps_every_hour_exact("mqtt");
}

// ---------------------------------------------------------------------------------------------
// Live first.

/// Pace of the sink in the live-first tests, records/s: the day of backlog (4,320 results)
/// then drains over ~15 s at `backlog_share = 0.5`, long enough to watch the current results
/// flow beside it.
const LIVE_RATE: f64 = 300.0;
/// The lag a current result may have at the hub: from the reading that closed its window to
/// its arrival.
const MAX_LAG: Duration = Duration::from_secs(3);
/// Real time per event minute of the current readings.
const LIVE_TICK: Duration = Duration::from_secs(1);

/// Sends the current readings, one event minute per [`LIVE_TICK`], from `from` on, until
/// `stop`; records when each minute's readings were sent (they close the minute before).
fn live_feed(address: SocketAddr, from: i64, stop: Arc<AtomicBool>, sent: Arc<Mutex<Vec<(i64, Instant)>>>) {
    let mut minute = from;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let lines: Vec<String> = readings(minute, minute + MINUTE_MS);
        let refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
        let at = Instant::now();
        let replies = send_with_acks(address, &refs, Duration::from_secs(30)).expect("readings answered");
        assert_eq!(replies.acked, u64::try_from(lines.len()).unwrap(), "{replies:?}");
        sent.lock().unwrap().push((minute, at));
        minute += MINUTE_MS;
        next += LIVE_TICK;
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

fn live_first_sends_current_results_first(kind: &str) {
    let fields = &FIELDS[..1];
    let mut hub = Hub::start(kind);
    hub.stop();
    let config = hub
        .sink(
            pipeline("gw-live", fields)
                .file_sink("oracle", "{dir}/oracle.jsonl")
                .key("records", ["window"])
                .key("max_file_bytes", 0),
        )
        .key("batch_max_records", 50)
        .key("rate_limit", LIVE_RATE)
        .key("backlog_share", 0.5)
        .key("backlog_after", "1s")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();

    // A day of backlog, two days ago to one day ago in event time.
    let base = (now_ms() - 2 * DAY_MS).div_euclid(HOUR_MS) * HOUR_MS;
    let live_from = base + DAY_MS;
    feed(address, base, live_from);
    let backlog = SENSORS * (24 * 60 - 1);
    let oracle_path = eddy.dir.join("oracle.jsonl");
    wait_for(&eddy, Duration::from_secs(60), "the backlog in the outbox", || {
        read_jsonl(&oracle_path).len() >= backlog
    });

    // Current readings start; a few seconds later the hub comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let feeder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || live_feed(address, live_from, stop, sent))
    };
    wait_for(&eddy, Duration::from_secs(30), "current readings sent", || sent.lock().unwrap().len() >= 3);
    let (last_fed, reconnected) = {
        let sent = sent.lock().unwrap();
        let last_fed = sent.last().unwrap().0 + MINUTE_MS - EVERY_MS;
        hub.restart();
        (last_fed, Instant::now())
    };

    // The drain: until every backlog result (a window before `live_from`) is at the hub.
    let oracle_backlog: Vec<serde_json::Value> =
        read_jsonl(&oracle_path).into_iter().filter(|record| int_of(record, "start") < live_from).collect();
    assert_eq!(oracle_backlog.len(), backlog + SENSORS, "the day of backlog, its last minute closed too");
    let backlog_ids: HashSet<String> =
        oracle_backlog.iter().map(|record| str_of(record, "id").to_owned()).collect();
    let (mut drained_at, mut seen) = (None, 0);
    wait_for(&eddy, Duration::from_secs(90), "the backlog drained", || {
        if hub.count() == seen {
            return false;
        }
        seen = hub.count();
        let firsts = first_of_each_id(&hub.records());
        let backlog_arrivals: Vec<Instant> = firsts
            .iter()
            .filter(|(_, record)| backlog_ids.contains(str_of(record, "id")))
            .map(|(arrived, _)| *arrived)
            .collect();
        drained_at = backlog_arrivals.iter().max().copied();
        backlog_arrivals.len() == backlog_ids.len()
    });
    let drained_at = drained_at.unwrap();
    // A few more current windows after the drain, then the end of the readings.
    thread::sleep(3 * LIVE_TICK);
    stop.store(true, Ordering::SeqCst);
    feeder.join().expect("the live feeder");
    let sent = sent.lock().unwrap().clone();
    let closed_windows = SENSORS * (24 * 60 + sent.len() - 1);
    wait_for(&eddy, Duration::from_secs(30), "every result at the hub", || {
        let oracle = read_jsonl(&oracle_path);
        let got: HashSet<String> =
            hub.records().iter().map(|(_, record)| str_of(record, "id").to_owned()).collect();
        oracle.len() == closed_windows && oracle.iter().all(|record| got.contains(str_of(record, "id")))
    });
    assert!(eddy.stop().expect("eddy stops").success());
    let oracle = read_jsonl(&oracle_path);
    let received = first_of_each_id(&hub.records());

    // 1. The first record after the reconnection is a current one.
    let (first_at, first) = received.first().expect("a record at the hub").clone();
    assert!(
        int_of(&first, "start") >= last_fed - 5 * MINUTE_MS,
        "the first record the hub got is from the backlog, not current (event time fed up to {last_fed}): {first}\n\
         the first ten: {:?}\nthe sink's log:\n{}",
        received.iter().take(10).map(|(_, record)| str_of(record, "id")).collect::<Vec<_>>(),
        sink_log(&eddy)
    );
    let to_first = first_at.duration_since(reconnected);

    // 2. Current results keep flowing during the drain: each window closed by a reading sent
    //    after the reconnection and before the drain ended arrived within MAX_LAG of it.
    let arrival: HashMap<&str, Instant> =
        received.iter().map(|(arrived, record)| (str_of(record, "id"), *arrived)).collect();
    let closing: HashMap<i64, Instant> = sent.iter().map(|&(minute, at)| (minute - MINUTE_MS, at)).collect();
    let mut lags = Vec::new();
    for record in &oracle {
        let start = int_of(record, "start");
        let Some(&closed_at) = closing.get(&start) else { continue };
        if closed_at < reconnected || closed_at > drained_at {
            continue;
        }
        let arrived = arrival[str_of(record, "id")];
        lags.push((arrived.saturating_duration_since(closed_at), record.clone()));
    }
    let drain = drained_at.duration_since(reconnected);
    assert!(
        lags.len() >= 5 * SENSORS,
        "the drain ({drain:?}) was too short to watch current results flow beside it ({} windows)",
        lags.len() / SENSORS
    );
    let (worst, worst_record) = lags.iter().max_by_key(|(lag, _)| *lag).unwrap();
    assert!(
        *worst < MAX_LAG,
        "a current result waited {worst:?} during the drain ({drain:?}): {worst_record}"
    );

    // 3. The backlog arrived complete: every result of the outbox, with the same values.
    let by_id: HashMap<&str, &serde_json::Value> =
        received.iter().map(|(_, record)| (str_of(record, "id"), record)).collect();
    for record in &oracle {
        let got = by_id.get(str_of(record, "id")).unwrap_or_else(|| panic!("never at the hub: {record}"));
        assert_eq!(*got, record, "a record reached the hub with other values than the outbox had");
    }
    assert_eq!(received.len(), oracle.len(), "nothing but the outbox's results at the hub");
    println!(
        "{kind}: the first record {to_first:?} after the reconnection; backlog of {} drained in {drain:?}; \
         worst lag of a current result during the drain {worst:?} over {} results",
        oracle_backlog.len(),
        lags.len()
    );
}

#[test]
fn live_first_sends_current_results_first_http() {
    live_first_sends_current_results_first("http");
}

#[test]
fn live_first_sends_current_results_first_mqtt() {
    live_first_sends_current_results_first("mqtt");
}
