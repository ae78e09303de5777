//! The operator's view of the real binary: systemd's notification protocol (READY, watchdog
//! pings, STOPPING) on a socket the test binds, the `/health`, `/metrics` and `/status`
//! endpoints, and `eddy status`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use eddy_tests::config::ConfigToml;
use eddy_tests::http_hub::HttpHub;
use eddy_tests::{eddy_binary, send_with_acks, wait_until, Eddy};

use crate::uplink::{base_ms, config_with_oracle, readings};

/// The address the endpoint listens on, from its start-up log line.
pub(crate) fn api_address(eddy: &Eddy) -> SocketAddr {
    let log = eddy.log();
    let line = log.lines().find(|line| line.contains("HTTP endpoint up")).expect("the endpoint's log line");
    let at = line.find("listen=").expect("listen= in the line") + "listen=".len();
    line[at..].split_whitespace().next().unwrap().parse().expect("an address")
}

/// GET `path`: the status code and the body.
pub(crate) fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: eddy\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_owned())
}

/// The value of the sample `name{labels}` (exact match of the part before the value).
pub(crate) fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Every line is a comment (`# HELP`/`# TYPE`) or `name{labels} value`, and every sample's
/// family was declared with a TYPE.
fn check_exposition_format(metrics: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            assert!(matches!(parts.next(), Some("counter" | "gauge" | "histogram")), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok(), "not a number in `{line}`");
        let name = series.split('{').next().unwrap();
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "bad name in `{line}`");
        let family =
            ["_bucket", "_sum", "_count"].iter().fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
        assert!(typed.contains(name) || typed.contains(family), "no # TYPE for `{line}`");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        }
    }
}

/// Datagrams received on the notify socket until `done` says so or the timeout passes.
fn notifications(
    socket: &UnixDatagram,
    timeout: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline && !done(&seen) {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen
}

/// The uplink tests' eddy (uplink.rs) with the endpoint, its oracle taking `oracle_records`.
fn config(oracle_records: &[&str]) -> ConfigToml {
    config_with_oracle(oracle_records).table("api").key("listen", "127.0.0.1:0")
}

#[test]
fn endpoints_and_systemd_notifications_show_a_working_eddy() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.stop(); // the uplink is offline: retries, outbox depth and offline time show
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = config(&["window"])
        .http_sink("hub", &hub.url())
        .key("max_backoff", "200ms")
        .key("timeout", "1s")
        .to_toml();
    let notify_env = notify_path.display().to_string();
    // 600 ms: eddy pings every 200 ms while its pipeline moves.
    let env = [("NOTIFY_SOCKET", notify_env.as_str()), ("WATCHDOG_USEC", "600000")];
    let mut eddy = Eddy::start_in_with_env(dir.path(), &config, &env).expect("eddy starts");

    let seen = notifications(&notify, Duration::from_secs(10), |seen| {
        seen.iter().any(|n| n.contains("READY=1"))
            && seen.iter().filter(|n| n.as_str() == "WATCHDOG=1").count() >= 3
    });
    assert!(seen.iter().any(|n| n.starts_with("READY=1")), "READY=1 sent: {seen:?}");
    assert!(seen.iter().filter(|n| n.as_str() == "WATCHDOG=1").count() >= 3, "watchdog pinged: {seen:?}");

    let mut lines = readings(base_ms(), 4, 0, 3);
    let n_good = lines.len();
    lines.push("{not json".to_owned());
    lines.push(r#"{"sensor":"s0","temp_c":20.0}"#.to_owned());
    let refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
    let replies = send_with_acks(eddy.tcp_address("in").unwrap(), &refs, Duration::from_secs(30)).unwrap();
    assert_eq!(replies.acked, u64::try_from(n_good).unwrap(), "{replies:?}");

    let api = api_address(&eddy);
    // Healthy: 200, "ok", then only warnings (this machine's clock is not synchronised).
    let (code, body) = get(api, "/health");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok\n"), "{body}");
    assert!(body.lines().skip(1).all(|line| line.starts_with("warning: clock not synchronised")), "{body}");

    // Counters move asynchronously (commits, retries): wait for the expected picture.
    let mut metrics = String::new();
    let settled = wait_until(Duration::from_secs(20), || {
        metrics = get(api, "/metrics").1;
        sample(&metrics, "eddy_window_results_total").unwrap_or(0.0) > 0.0
            && sample(&metrics, r#"eddy_uplink_retries_total{sink="hub"}"#).unwrap_or(0.0) >= 2.0
            && sample(&metrics, r#"eddy_uplink_outbox_depth{sink="hub"}"#).unwrap_or(0.0) > 0.0
            && sample(&metrics, r#"eddy_uplink_offline_seconds{sink="hub"}"#).unwrap_or(0.0) >= 1.0
    });
    assert!(settled, "metrics never showed results and an offline hub:\n{metrics}");
    check_exposition_format(&metrics);
    let total = u64::try_from(lines.len()).unwrap();
    #[allow(clippy::cast_precision_loss)]
    let (total, good) = (total as f64, n_good as f64);
    assert_eq!(sample(&metrics, r#"eddy_source_received_total{source="in"}"#), Some(total), "{metrics}");
    assert_eq!(sample(&metrics, r#"eddy_source_accepted_total{source="in"}"#), Some(good));
    assert_eq!(sample(&metrics, r#"eddy_source_rejected_total{source="in",reason="bad_syntax"}"#), Some(1.0));
    assert_eq!(sample(&metrics, r#"eddy_source_rejected_total{source="in",reason="missing_ts"}"#), Some(1.0));
    assert!(sample(&metrics, "eddy_ingest_latency_seconds_count").unwrap() >= 1.0);
    assert!(sample(&metrics, r#"eddy_flush_latency_seconds_bucket{le="+Inf"}"#).unwrap() >= 1.0);
    assert_eq!(sample(&metrics, r#"eddy_uplink_delivered_total{sink="hub"}"#), Some(0.0));
    assert!(sample(&metrics, r#"eddy_uplink_delivered_total{sink="oracle"}"#).unwrap() > 0.0);
    assert_eq!(sample(&metrics, r#"eddy_uplink_dropped_total{sink="hub",reason="budget"}"#), Some(0.0));
    assert!(sample(&metrics, "eddy_store_used_bytes").unwrap() > 0.0);
    assert_eq!(sample(&metrics, "eddy_late_readings_total"), Some(0.0));
    assert_eq!(sample(&metrics, "eddy_up"), Some(1.0));

    let (code, body) = get(api, "/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["device_id"], "gw-up");
    assert_eq!(status["healthy"], true, "{status:#}");
    assert_eq!(status["sources"][0]["name"], "in");
    assert_eq!(status["sources"][0]["rejected_by_reason"]["bad_syntax"], 1);
    let hub_status = status["uplinks"].as_array().unwrap().iter().find(|u| u["name"] == "hub").unwrap();
    assert_eq!(hub_status["online"], false, "{status:#}");

    let printed = Command::new(eddy_binary()).args(["status", "--addr", &api.to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.status.success(), "eddy status: {text}{}", String::from_utf8_lossy(&printed.stderr));
    assert!(text.contains("gw-up: HEALTHY"), "{text}");
    assert!(text.lines().any(|l| l.trim_start().starts_with("hub") && l.contains("offline")), "{text}");
    let json =
        Command::new(eddy_binary()).args(["status", "--json", "--addr", &api.to_string()]).output().unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&json.stdout).expect("eddy status --json is JSON");
    assert_eq!(parsed["device_id"], "gw-up");

    assert_eq!(get(api, "/nope").0, 404);

    eddy.terminate();
    let seen = notifications(&notify, Duration::from_secs(10), |seen| {
        seen.iter().any(|n| n.starts_with("STOPPING=1"))
    });
    assert!(seen.iter().any(|n| n.starts_with("STOPPING=1")), "STOPPING=1 sent: {seen:?}");
    assert!(eddy.wait(Duration::from_secs(30)).expect("eddy exits").success());
}

/// A store that refuses readings (disk budget full, `reject_new`) makes /health answer 503
/// with the reason, and `eddy status` exit 1.
#[test]
fn health_is_503_while_the_store_refuses_readings() {
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.stop();
    let config = config(&["window", "batch"])
        .table("storage")
        .key("max_bytes", 65536)
        .key("policy", "reject_new")
        .http_sink("hub", &hub.url())
        .key("records", ["window", "batch"])
        .key("max_backoff", "200ms")
        .key("timeout", "1s")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let api = api_address(&eddy);
    assert_eq!(get(api, "/health").0, 200);
    let address = eddy.tcp_address("in").unwrap();
    let base = base_ms();
    let mut second = 0;
    loop {
        assert!(second < 600, "the budget never filled");
        let lines = readings(base, 40, second, second + 1);
        let refs: Vec<&[u8]> = lines.iter().map(String::as_bytes).collect();
        let replies = send_with_acks(address, &refs, Duration::from_secs(60)).expect("answered");
        second += 1;
        if replies.nacked > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let (code, body) = get(api, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store is not writable"), "{body}");
    let printed = Command::new(eddy_binary()).args(["status", "--addr", &api.to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&printed.stdout);
    assert_eq!(printed.status.code(), Some(1), "{text}");
    assert!(text.contains("UNHEALTHY") && text.contains("store is not writable"), "{text}");
    assert!(eddy.stop().expect("eddy stops").success());
}

/// `/health` is 200 only while every source can take readings: an MQTT source whose broker
/// went away makes it 503, naming the source, until the broker is back; `/metrics` and
/// `eddy status` say which source is down.
#[test]
fn health_names_an_mqtt_source_whose_broker_is_gone() {
    let mut broker = eddy_tests::mosquitto::Mosquitto::start().expect("mosquitto starts");
    let config = ConfigToml::new("gw-health")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .mqtt_source("broker", &broker.url())
        .key("client_id", "eddy-health")
        .key("topics", ["sensors/+/reading"])
        .sink("file")
        .key("path", "{dir}/results.jsonl")
        .to_toml();
    let eddy = Eddy::start(&config).expect("eddy starts");
    let api = api_address(&eddy);
    assert!(
        wait_until(Duration::from_secs(20), || get(api, "/health").0 == 200),
        "{}",
        get(api, "/health").1
    );
    assert_eq!(sample(&get(api, "/metrics").1, "eddy_source_up{source=\"broker\"}"), Some(1.0));

    broker.stop();
    assert!(wait_until(Duration::from_secs(20), || get(api, "/health").0 == 503), "{}", eddy.log());
    let (_, problems) = get(api, "/health");
    assert!(problems.contains("source broker is down"), "{problems}");
    assert_eq!(sample(&get(api, "/metrics").1, "eddy_source_up{source=\"broker\"}"), Some(0.0));
    let status = Command::new(eddy_binary()).args(["status", "--addr", &api.to_string()]).output().unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(shown.contains("UNHEALTHY") && shown.contains("DOWN"), "{shown}");

    broker.restart().expect("mosquitto restarts");
    assert!(
        wait_until(Duration::from_secs(20), || get(api, "/health").0 == 200),
        "{}",
        get(api, "/health").1
    );
}

/// The window-result latency (`/status` `engine.result_*`, `/metrics`
/// `eddy_window_result_latency_seconds`) counts one observation per window result — not
/// micro-batch results — from the receipt of the reading that closed the window to the commit,
/// and no more than the time the test took around it.
#[test]
fn window_result_latency_is_measured_per_window_result() {
    let config = ConfigToml::new("gw-latency")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .table("engine")
        .key("checkpoint_interval", "20ms")
        .table("batch")
        .key("interval", "1s")
        .tcp_source("in")
        .key("ack", true)
        .window("w1s", "1s")
        .key("lateness", "0s")
        .key("fields", ["temp_c", "humidity"])
        .key("aggregates", ["count", "mean"])
        .file_sink("results", "{dir}/results.jsonl")
        .to_toml();
    let eddy = Eddy::start(&config).expect("eddy starts");
    let api = api_address(&eddy);
    let address = eddy.tcp_address("in").expect("the TCP source's address");
    let status = |eddy: &Eddy| eddy.status_json().expect("/status");
    assert_eq!(status(&eddy)["engine"]["result_latency_count"], 0);
    assert!(status(&eddy)["engine"]["result_p99_ms"].is_null());
    let open: Vec<&[u8]> = vec![
        br#"{"sensor":"a","ts":1700000000100,"temp_c":20.0,"humidity":40.0}"#,
        br#"{"sensor":"b","ts":1700000000200,"temp_c":21.0,"humidity":41.0}"#,
    ];
    send_with_acks(address, &open, Duration::from_secs(10)).expect("acked");
    // Closes […000, …001) for both sensors: 2 sensors × 2 fields = 4 window results.
    let sent = Instant::now();
    let close: Vec<&[u8]> = vec![
        br#"{"sensor":"a","ts":1700000001100,"temp_c":22.0,"humidity":42.0}"#,
        br#"{"sensor":"b","ts":1700000001200,"temp_c":23.0,"humidity":43.0}"#,
    ];
    send_with_acks(address, &close, Duration::from_secs(10)).expect("acked");
    assert!(
        wait_until(Duration::from_secs(10), || status(&eddy)["engine"]["result_latency_count"] == 4),
        "{}",
        status(&eddy)
    );
    let waited_ms = sent.elapsed().as_secs_f64() * 1000.0;
    let engine = status(&eddy)["engine"].clone();
    let (p50, p99, max) = (
        engine["result_p50_ms"].as_f64().expect("p50"),
        engine["result_p99_ms"].as_f64().expect("p99"),
        engine["result_max_ms"].as_f64().expect("max"),
    );
    assert!(0.0 < max && max <= waited_ms, "max {max} ms, the test waited {waited_ms} ms: {engine}");
    assert!(p50 <= p99 && p99 <= max.max(0.1) * 2.0, "{engine}");
    // Micro-batch results came too (1 s batches), but only window results are observed.
    let metrics = get(api, "/metrics").1;
    assert_eq!(sample(&metrics, "eddy_window_result_latency_seconds_count"), Some(4.0), "{metrics}");
    assert_eq!(sample(&metrics, "eddy_window_result_latency_seconds_bucket{le=\"+Inf\"}"), Some(4.0));
}

/// `engine.result_commit_delay = "0s"` commits a window result right after the chunk whose
/// reading closed its window, not at the next checkpoint (30 s here, so without it the result
/// would wait up to 30 s).
#[test]
fn result_commit_delay_commits_window_results_before_the_checkpoint() {
    let config = ConfigToml::new("gw-latency")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .table("engine")
        .key("checkpoint_interval", "30s")
        .key("result_commit_delay", "0s")
        .tcp_source("in")
        .key("ack", true)
        .window("w1s", "1s")
        .key("lateness", "0s")
        .key("fields", ["temp_c"])
        .key("aggregates", ["count", "mean"])
        .file_sink("results", "{dir}/results.jsonl")
        .to_toml();
    let eddy = Eddy::start(&config).expect("eddy starts");
    let address = eddy.tcp_address("in").expect("the TCP source's address");
    // The first checkpoint tick comes at once; the next in 30 s.
    std::thread::sleep(Duration::from_millis(300));
    let lines: Vec<&[u8]> = vec![
        br#"{"sensor":"a","ts":1700000000100,"temp_c":20.0}"#,
        br#"{"sensor":"a","ts":1700000001100,"temp_c":22.0}"#,
    ];
    let sent = Instant::now();
    send_with_acks(address, &lines, Duration::from_secs(10)).expect("acked");
    let status = || eddy.status_json().expect("/status");
    assert!(
        wait_until(Duration::from_secs(5), || status()["engine"]["result_latency_count"] == 1),
        "the window result was not committed before the checkpoint: {}",
        status()
    );
    assert!(sent.elapsed() < Duration::from_secs(10));
    let max = status()["engine"]["result_max_ms"].as_f64().expect("max");
    assert!(max < 2000.0, "{}", status());
}
