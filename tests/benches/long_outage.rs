//! Benchmark (#17): a day-long outage, then the hub comes back while current readings keep
//! coming. A gateway with 200 sensors reporting once a minute (one field, a one-minute
//! tumbling window) loses its hub for a day: 288,000 readings sent with their real event
//! times as fast as eddy acks them, 287,800 results waiting in the outbox. Then current
//! readings start (one event minute per second: every second closes a window of each sensor,
//! 200 current results a second) and the hub comes back. Measured, from the reconnection: the
//! time to the first current result at the hub (goal < 2 s), the time until the whole backlog
//! is there (the drain), and the lag of current results during the drain (hub arrival − the
//! moment the reading closing their window was sent; p50, p99, max), once with
//! `backlog_share = 0.5` (live first) and once with `1.0` (the old order, oldest first).
//!
//! The outage is compressed: its results were committed seconds, not a day, before the
//! reconnection, so the sinks run with `backlog_after = "1s"` (a sink is behind, and splits
//! live from backlog, when its oldest undelivered result is older than that).
//!
//! `cargo build --release -p eddy && cargo bench -p eddy-tests --bench long_outage`
//! Environment: `EDDY_BENCH_SENSORS` (default 200), `EDDY_BENCH_HOURS` (outage, default 24),
//! `EDDY_BENCH_UPLINKS` (comma list of http, mqtt, mqtt100; default http,mqtt100),
//! `EDDY_BENCH_SHARES` (default 0.5,1.0; `none` writes neither `backlog_share` nor
//! `backlog_after`, for an eddy from before #17).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::http_hub::HttpHub;
use eddy_tests::mosquitto::Mosquitto;
use eddy_tests::mqtt_hub::MqttCollector;
use eddy_tests::{send_with_acks, wait_until, Eddy};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
/// Real time per event minute of the current readings.
const LIVE_TICK: Duration = Duration::from_secs(1);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// One reading of each sensor for every event minute in `[from, to)`, 30 s into the minute.
fn readings(sensors: usize, from: i64, to: i64) -> Vec<String> {
    let mut lines = Vec::new();
    let mut minute = from;
    while minute < to {
        for sensor in 0..sensors {
            let wobble =
                f64::from(u32::try_from((minute / MINUTE_MS + i64::try_from(sensor).unwrap()) % 40).unwrap());
            lines.push(format!(
                r#"{{"sensor":"t-{sensor:04}","ts":{},"temp_c":{:.1}}}"#,
                minute + 30_000,
                19.0 + wobble / 10.0
            ));
        }
        minute += MINUTE_MS;
    }
    lines
}

fn send(address: SocketAddr, lines: &[String]) {
    let refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
    let replies = send_with_acks(address, &refs, Duration::from_secs(120)).expect("acked");
    assert_eq!(replies.acked, u64::try_from(lines.len()).unwrap(), "{replies:?}");
}

/// The hub of a run.
enum Hub {
    Http(HttpHub),
    Mqtt(Mosquitto, MqttCollector, usize),
}

impl Hub {
    fn start(uplink: &str) -> Hub {
        match uplink {
            "http" => Hub::Http(HttpHub::start().expect("http hub")),
            "mqtt" | "mqtt100" => {
                let broker = Mosquitto::start().expect("mosquitto");
                let collector = MqttCollector::start(broker.addr(), "devices/#");
                assert!(wait_until(Duration::from_secs(10), || collector.subscribed()));
                Hub::Mqtt(broker, collector, if uplink == "mqtt" { 1 } else { 100 })
            }
            other => panic!("unknown uplink `{other}` (http, mqtt, mqtt100)"),
        }
    }

    fn sink(&self, config: ConfigToml) -> ConfigToml {
        let config = match self {
            Hub::Http(hub) => config.http_sink("hub", &hub.url()),
            Hub::Mqtt(broker, _, per_message) => {
                config.mqtt_sink("hub", &broker.url()).key("records_per_message", *per_message)
            }
        };
        config.key("records", ["window"]).key("max_backoff", "1s")
    }

    fn stop(&mut self) {
        match self {
            Hub::Http(hub) => hub.stop(),
            Hub::Mqtt(broker, _, _) => broker.stop(),
        }
    }

    fn restart(&mut self) {
        match self {
            Hub::Http(hub) => hub.restart().expect("hub back"),
            Hub::Mqtt(broker, _, _) => broker.restart().expect("hub back"),
        }
    }

    fn records_from(&self, from: usize) -> Vec<(Instant, serde_json::Value)> {
        match self {
            Hub::Http(hub) => hub.records_with_arrival(from),
            Hub::Mqtt(_, collector, _) => collector.records_with_arrival(from),
        }
    }
}

/// `uplinks[hub].outbox_depth` of `/status` (0 when the endpoint does not answer).
fn outbox_depth(api: SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(api) else { return 0 };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if write!(stream, "GET /status HTTP/1.1\r\nHost: eddy\r\nConnection: close\r\n\r\n").is_err() {
        return 0;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let Some((_, body)) = response.split_once("\r\n\r\n") else { return 0 };
    let status: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    status["uplinks"]
        .as_array()
        .and_then(|uplinks| uplinks.iter().find(|uplink| uplink["name"] == "hub"))
        .and_then(|hub| hub["outbox_depth"].as_u64())
        .unwrap_or(0)
}

fn api_address(eddy: &Eddy) -> SocketAddr {
    assert!(wait_until(Duration::from_secs(10), || eddy.log().contains("HTTP endpoint up")));
    let log = eddy.log();
    let line = log.lines().find(|line| line.contains("HTTP endpoint up")).expect("the endpoint's log line");
    let at = line.find("listen=").expect("listen=") + "listen=".len();
    line[at..].split_whitespace().next().unwrap().parse().expect("an address")
}

/// The `per_mille`/1000 quantile of `sorted` (nearest rank; zero when empty).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

/// One run: fill a backlog of `hours` with the hub away, then reconnect beside current readings.
fn run(uplink: &str, share: Option<f64>, sensors: usize, hours: usize) {
    let mut hub = Hub::start(uplink);
    hub.stop();
    let mut config = hub.sink(
        ConfigToml::new("gw-bench")
            .table("ingest")
            .key("flush_interval", "10ms")
            .key("max_sensors", 100_000)
            .table("engine")
            .key("checkpoint_interval", "1s")
            .table("api")
            .key("listen", "127.0.0.1:0")
            .tcp_source("in")
            .key("ack", true)
            .window("w1m", "1m")
            .key("lateness", "0s")
            .key("fields", ["temp_c"])
            .key("aggregates", ["count", "mean", "min", "max"]),
    );
    if let Some(share) = share {
        config = config.key("backlog_share", share).key("backlog_after", "1s");
    }
    let config = config.to_toml();
    let share = share.map_or("none".to_owned(), |share| share.to_string());
    let mut eddy = Eddy::start(&config).expect("eddy");
    let address = eddy.tcp_address("in").unwrap();
    let api = api_address(&eddy);

    let hours = i64::try_from(hours).unwrap();
    let base = (now_ms() - hours * HOUR_MS - 2 * HOUR_MS).div_euclid(HOUR_MS) * HOUR_MS;
    let live_from = base + hours * HOUR_MS;
    let filling = Instant::now();
    let mut hour = base;
    while hour < live_from {
        send(address, &readings(sensors, hour, hour + HOUR_MS));
        hour += HOUR_MS;
    }
    let backlog = u64::try_from(sensors).unwrap() * u64::try_from(hours * 60 - 1).unwrap();
    assert!(
        wait_until(Duration::from_secs(300), || outbox_depth(api) >= backlog),
        "only {} of {backlog} results in the outbox",
        outbox_depth(api)
    );
    let fill_secs = filling.elapsed().as_secs_f64();

    // Current readings, one event minute per second, recording when each minute was sent.
    let stop = Arc::new(AtomicBool::new(false));
    let sent: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let feeder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || {
            let mut minute = live_from;
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let lines = readings(sensors, minute, minute + MINUTE_MS);
                let at = Instant::now();
                send(address, &lines);
                sent.lock().unwrap().push((minute, at));
                minute += MINUTE_MS;
                next += LIVE_TICK;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })
    };
    assert!(wait_until(Duration::from_secs(30), || sent.lock().unwrap().len() >= 3));
    let (last_fed, reconnected) = {
        let sent = sent.lock().unwrap();
        let last_fed = sent.last().unwrap().0;
        hub.restart();
        (last_fed, Instant::now())
    };

    // Watch the hub: the first current result, the backlog's arrival, the live lags.
    let backlog_total = usize::try_from(backlog).unwrap() + sensors;
    let mut seen_ids = HashSet::new();
    let mut backlog_seen = 0;
    let mut first_any = None;
    let mut first_current = None;
    let mut drained = None;
    let mut live: Vec<(i64, Instant)> = Vec::new(); // (window start, first arrival)
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    // Until the backlog is there and every current window closed before that is too (with the
    // old order, those wait behind the backlog: their lag counts whole).
    let mut closed_by_drain: Option<usize> = None;
    loop {
        let new = hub.records_from(read);
        read += new.len();
        for (arrived, record) in new {
            let id = record["id"].as_str().unwrap_or_default().to_owned();
            if !seen_ids.insert(id) {
                continue;
            }
            let start = record["start"].as_i64().unwrap_or(0);
            first_any.get_or_insert(arrived);
            if start >= last_fed - 5 * MINUTE_MS {
                first_current.get_or_insert(arrived);
            }
            if start < live_from {
                backlog_seen += 1;
                if backlog_seen == backlog_total {
                    drained = Some(arrived);
                }
            } else {
                live.push((start, arrived));
            }
        }
        if let Some(drained) = drained {
            let closed = *closed_by_drain.get_or_insert_with(|| {
                let sent = sent.lock().unwrap();
                // Minutes sent by the drain's end close the minute before theirs; the first one
                // closed the backlog's last minute.
                sent.iter().filter(|(_, at)| *at <= drained).count().saturating_sub(1) * sensors
            });
            if live.len() >= closed {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the hub got {backlog_seen} of {backlog_total} backlog results and {} current ones",
            live.len()
        );
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    feeder.join().expect("feeder");
    let drained = drained.expect("drained");
    let sent = sent.lock().unwrap().clone();
    // Lags of the windows closed after the reconnection and before the drain ended.
    let mut lags: Vec<Duration> = live
        .iter()
        .filter_map(|&(start, arrived)| {
            let closed_at = sent.iter().find(|(minute, _)| *minute == start + MINUTE_MS)?.1;
            (closed_at >= reconnected && closed_at <= drained)
                .then(|| arrived.saturating_duration_since(closed_at))
        })
        .collect();
    lags.sort();
    let since = |at: Option<Instant>| {
        at.map_or("never".to_owned(), |at| format!("{:.2} s", (at - reconnected).as_secs_f64()))
    };
    println!(
        "{uplink}, backlog_share = {share}: backlog {backlog_total} results ({hours} h × {sensors} sensors) filled in \
         {fill_secs:.1} s; after the reconnection: first record {}, first current result {}, backlog drained in {:.2} s \
         ({:.0} records/s); live lag during the drain over {} results: p50 {:.2} s, p99 {:.2} s, max {:.2} s; \
         eddy peak RSS {} MiB",
        since(first_any),
        since(first_current),
        (drained - reconnected).as_secs_f64(),
        backlog_total as f64 / (drained - reconnected).as_secs_f64(),
        lags.len(),
        percentile(&lags, 500).as_secs_f64(),
        percentile(&lags, 990).as_secs_f64(),
        lags.last().copied().unwrap_or_default().as_secs_f64(),
        eddy.proc_status_kib("VmHWM:").unwrap_or(0) / 1024
    );
    let _ = eddy.stop();
}

fn main() {
    let sensors = env_usize("EDDY_BENCH_SENSORS", 200);
    let hours = env_usize("EDDY_BENCH_HOURS", 24);
    let uplinks = std::env::var("EDDY_BENCH_UPLINKS").unwrap_or_else(|_| "http,mqtt100".into());
    let shares = std::env::var("EDDY_BENCH_SHARES").unwrap_or_else(|_| "0.5,1.0".into());
    for uplink in uplinks.split(',') {
        for share in shares.split(',') {
            let share = (share != "none").then(|| share.parse().expect("a share, or none"));
            run(uplink, share, sensors, hours);
        }
    }
}
