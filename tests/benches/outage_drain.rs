//! Benchmark: a hub outage sized like a real one, then the drain. A gateway with 200 sensors
//! reporting every 10 s loses its hub for 6 hours (432,000 readings, event time, sent as fast
//! as eddy acks them); one-minute windows on three fields make 215,400 results that wait in the
//! outbox. Then the hub comes back and the drain is timed (records/s until the hub has them all).
//!
//! `cargo build --release -p eddy && cargo bench -p eddy-tests --bench outage_drain`
//! Environment: `EDDY_BENCH_HOURS` (default 6), `EDDY_BENCH_SENSORS` (default 200),
//! `EDDY_BENCH_UPLINKS` (comma list of mqtt1, mqtt100, http, kafka; default all four). The kafka
//! uplink needs `tansu` and the confluent-kafka venv (see `eddy_tests::kafka_broker`);
//! `EDDY_BENCH_KAFKA_BATCH` sets its `batch_max_records` (default 512).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_tests::config::ConfigToml;
use eddy_tests::http_hub::HttpHub;
use eddy_tests::kafka_broker::Tansu;
use eddy_tests::mosquitto::Mosquitto;
use eddy_tests::mqtt_hub::MqttCollector;
use eddy_tests::{send_with_acks, wait_until, Eddy};

const INTERVAL_MS: i64 = 10_000;

/// The outage's eddy: an acked TCP source, one-minute windows on three fields and a file sink
/// `oracle` (the outbox in order); the bench adds its hub's sink.
fn config() -> ConfigToml {
    ConfigToml::new("gw-bench")
        .table("ingest")
        .key("flush_interval", "10ms")
        .key("max_sensors", 100_000)
        .table("engine")
        .key("checkpoint_interval", "1s")
        .tcp_source("in")
        .key("ack", true)
        .window("env_1m", "1m")
        .key("lateness", "0s")
        .key("fields", ["temp_c", "humidity", "setpoint_c"])
        .key("aggregates", ["count", "mean", "min", "max"])
        .file_sink("oracle", "{dir}/oracle.jsonl")
        .key("records", ["window"])
        // One file: the bench counts its lines (the default rotation at 16 MiB would move
        // most of the 48.6 MiB backlog into oracle.jsonl.1, .2, …).
        .key("max_file_bytes", 0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

fn lines_in(path: &std::path::Path) -> usize {
    std::fs::read(path).map(|bytes| bytes.iter().filter(|byte| **byte == b'\n').count()).unwrap_or(0)
}

/// Sends the outage's readings (event time = the last `hours` hours) and waits until every
/// closed window is in the outbox (the oracle file). Returns the number of results.
fn fill_backlog(eddy: &Eddy, sensors: usize, hours: usize) -> usize {
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let steps = i64::try_from(hours * 3600).unwrap() * 1000 / INTERVAL_MS;
    let start = (now - steps * INTERVAL_MS - 60_000) / 60_000 * 60_000;
    let address = eddy.tcp_address("in").unwrap();
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut n_readings = 0;
    for step in 0..steps {
        for sensor in 0..sensors {
            let ts = start + step * INTERVAL_MS;
            let wobble =
                f64::from(u32::try_from((step + i64::try_from(sensor).unwrap()) % 40).unwrap()) / 10.0;
            lines.push(format!(
                r#"{{"sensor":"t-{sensor:04}","ts":{ts},"temp_c":{:.1},"humidity":{:.1},"setpoint_c":21.0}}"#,
                19.0 + wobble,
                40.0 + wobble
            ));
        }
        if lines.len() >= 20_000 || step == steps - 1 {
            let refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
            let replies = send_with_acks(address, &refs, Duration::from_secs(120)).expect("acked");
            assert_eq!(replies.acked, u64::try_from(lines.len()).unwrap());
            n_readings += lines.len();
            lines.clear();
        }
    }
    // Every minute but the last (still open) is closed, for each sensor and field.
    let minutes = usize::try_from(steps * INTERVAL_MS / 60_000).unwrap();
    let expected = sensors * 3 * (minutes - 1);
    let oracle = eddy.dir.join("oracle.jsonl");
    assert!(
        wait_until(Duration::from_secs(300), || lines_in(&oracle) >= expected),
        "only {} of {expected} results reached the outbox",
        lines_in(&oracle)
    );
    println!(
        "  backlog: {n_readings} readings ({hours} h × {sensors} sensors every {} s) → {expected} results in {:.1} s; \
         eddy peak RSS so far {} MiB",
        INTERVAL_MS / 1000,
        started.elapsed().as_secs_f64(),
        eddy.proc_status_kib("VmHWM:").unwrap_or(0) / 1024
    );
    expected
}

fn report(name: &str, expected: usize, started: Instant, eddy: &mut Eddy, backlog: (u64, u64)) {
    let secs = started.elapsed().as_secs_f64();
    let rss = eddy.proc_status_kib("VmHWM:").unwrap_or(0);
    println!(
        "  {name}: drained {expected} results in {secs:.2} s = {:.0} records/s; eddy peak RSS {} MiB; \
         at the outage's end: the results' JSON {:.1} MiB, sled directory {:.1} MiB",
        expected as f64 / secs,
        rss / 1024,
        backlog.0 as f64 / (1024.0 * 1024.0),
        backlog.1 as f64 / (1024.0 * 1024.0)
    );
    let _ = eddy.stop();
}

/// The size of the backlog: the results as JSON (what the outbox pages hold, plus small
/// per-entry framing) and sled's directory on disk.
fn backlog_sizes(eddy: &Eddy) -> (u64, u64) {
    let oracle_bytes = std::fs::metadata(eddy.dir.join("oracle.jsonl")).map(|meta| meta.len()).unwrap_or(0);
    (oracle_bytes, walk_size(&eddy.dir.join("data")))
}

fn walk_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| {
                    let path = entry.path();
                    if path.is_dir() {
                        walk_size(&path)
                    } else {
                        entry.metadata().map(|meta| meta.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn mqtt(records_per_message: usize, sensors: usize, hours: usize) {
    let mut hub = Mosquitto::start().expect("mosquitto");
    let collector = MqttCollector::start(hub.addr(), "devices/#");
    assert!(wait_until(Duration::from_secs(10), || collector.subscribed()));
    hub.stop();
    let config = config()
        .mqtt_sink("hub", &hub.url())
        .key("records", ["window"])
        .key("records_per_message", records_per_message)
        .key("max_backoff", "1s")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy");
    println!("mqtt, {records_per_message} record(s) per message, batches of 512:");
    let expected = fill_backlog(&eddy, sensors, hours);
    let backlog = backlog_sizes(&eddy);
    hub.restart().expect("hub back");
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(600), || collector.len() >= expected),
        "the hub got {} of {expected}",
        collector.len()
    );
    report("mqtt", expected, started, &mut eddy, backlog);
}

fn http(sensors: usize, hours: usize) {
    let hub = HttpHub::start().expect("http hub");
    hub.stop();
    let config =
        config().http_sink("hub", &hub.url()).key("records", ["window"]).key("max_backoff", "1s").to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy");
    println!("http, 512 records per POST:");
    let expected = fill_backlog(&eddy, sensors, hours);
    let backlog = backlog_sizes(&eddy);
    hub.restart().expect("hub back");
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(600), || hub.record_count() >= expected),
        "the hub got {} of {expected}",
        hub.record_count()
    );
    report("http", expected, started, &mut eddy, backlog);
}

/// Kafka (tansu, in-memory storage): the broker is down for the outage (it restarts empty, so
/// the topic is created when it is back), one record per message, 6 partitions keyed by
/// sensor, batches of 512. Timed until eddy counts every record delivered (each produce
/// acknowledged with `acks = all`; `/status`), then the topic is read back whole with
/// librdkafka and must hold every result (tansu's high watermarks lag, so they cannot be
/// polled instead).
fn kafka(sensors: usize, hours: usize, batch: usize) {
    let mut broker = Tansu::start().expect("tansu");
    broker.stop();
    let config = config()
        .table("api")
        .key("listen", "127.0.0.1:0")
        .kafka_sink("hub", &broker.bootstrap())
        .key("records", ["window"])
        .key("batch_max_records", batch)
        .key("max_backoff", "1s")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy");
    println!("kafka (tansu, memory storage), 1 record per message, 6 partitions, batches of {batch}:");
    let expected = fill_backlog(&eddy, sensors, hours);
    let backlog = backlog_sizes(&eddy);
    broker.restart().expect("broker back");
    broker.create_topic("eddy.window", 6).expect("topic");
    let started = Instant::now();
    let api = api_address(&eddy);
    let mut delivered = 0;
    assert!(
        wait_until(Duration::from_secs(600), || {
            delivered = hub_delivered(api);
            delivered >= expected
        }),
        "eddy delivered {delivered} of {expected}"
    );
    report("kafka", expected, started, &mut eddy, backlog);
    let messages = broker.consume("eddy.window").expect("the topic read back");
    let ids: std::collections::HashSet<&str> =
        messages.iter().filter_map(|message| message.value["id"].as_str()).collect();
    assert_eq!(ids.len(), expected, "every result in the topic, read back by librdkafka");
    println!("  read back: {} messages, {} distinct ids", messages.len(), ids.len());
}

/// The address of eddy's local endpoint, from its log.
fn api_address(eddy: &Eddy) -> std::net::SocketAddr {
    assert!(wait_until(Duration::from_secs(10), || eddy.log().contains("HTTP endpoint up")));
    let log = eddy.log();
    let line = log.lines().find(|line| line.contains("HTTP endpoint up")).expect("the endpoint's log line");
    let at = line.find("listen=").expect("listen=") + "listen=".len();
    line[at..].split_whitespace().next().unwrap().parse().expect("an address")
}

/// `delivered` of the sink `hub` in `/status` (0 when the endpoint does not answer).
fn hub_delivered(api: std::net::SocketAddr) -> usize {
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
        .and_then(|hub| hub["delivered"].as_u64())
        .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

fn main() {
    let hours = env_usize("EDDY_BENCH_HOURS", 6);
    let sensors = env_usize("EDDY_BENCH_SENSORS", 200);
    let uplinks = std::env::var("EDDY_BENCH_UPLINKS").unwrap_or_else(|_| "mqtt1,mqtt100,http,kafka".into());
    for uplink in uplinks.split(',') {
        match uplink {
            "mqtt1" => mqtt(1, sensors, hours),
            "mqtt100" => mqtt(100, sensors, hours),
            "http" => http(sensors, hours),
            "kafka" => kafka(sensors, hours, env_usize("EDDY_BENCH_KAFKA_BATCH", 512)),
            other => panic!("unknown uplink `{other}` (mqtt1, mqtt100, http, kafka)"),
        }
    }
}
