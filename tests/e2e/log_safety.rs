//! eddy's log cannot be forged or flooded from outside (issue #15): control characters in an
//! MQTT topic or a hub's error body are escaped, and a reconnect loop of clients sending
//! garbage logs about one warning per second, every rejection still counted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use eddy_tests::config::ConfigToml;
use eddy_tests::fake_broker::FakeBroker;
use eddy_tests::{wait_until, Eddy};

use crate::api::{api_address, get};

/// The text each forgery tries to start a line with.
const FORGED: &str = "ERROR eddy: forged";

/// A hub that answers every POST with a 500 whose body holds a line break and a fake log line.
fn lying_hub() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let Ok(mut writer) = stream.try_clone() else { return };
                let mut reader = BufReader::new(stream);
                let mut content_length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        content_length = value.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; content_length];
                let _ = reader.read_exact(&mut body);
                let answer = format!("oops\n{FORGED} by a hub\r\n");
                let _ = write!(
                    writer,
                    "HTTP/1.1 500 Oops\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    address
}

#[test]
fn outside_text_cannot_forge_a_log_line_issue_15() {
    // A scripted broker: mosquitto refuses control characters in topics, other brokers may not.
    let broker = FakeBroker::bind().expect("the fake broker listens");
    let hub = lying_hub();
    let config = ConfigToml::new("gw-forge")
        .table("ingest")
        .key("flush_interval", "5ms")
        .tcp_source("in")
        .key("ack", true)
        .mqtt_source("broker", &broker.url())
        .key("client_id", "gw-forge")
        .key("topics", ["sensors/+"])
        .key("broker_stats", false)
        .window("w", "1s")
        .key("lateness", "0s")
        .http_sink("hub", &format!("http://{hub}/ingest"))
        .key("records", ["window"])
        .key("max_backoff", "300ms")
        .to_toml();
    let eddy = Eddy::start(&config).expect("eddy starts");

    // A topic with a line break, and a payload that is rejected so that the topic is logged.
    let mut connection = broker.accept(Duration::from_secs(20)).expect("eddy connects");
    connection.connack(false).unwrap();
    connection.expect_subscribe().unwrap();
    let topic = format!("sensors/a\n{FORGED} by a topic");
    connection.publish_all(&[(1, topic.as_bytes(), b"not json", false)]).unwrap();
    connection.read_for(Duration::from_millis(500)).unwrap();
    // Readings whose windows reach the hub, which answers with its forged body.
    let now = i64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
    )
    .unwrap();
    let mut stream = TcpStream::connect(eddy.tcp_address("in").unwrap()).unwrap();
    for second in 0..3 {
        writeln!(stream, r#"{{"sensor":"s","ts":{},"temp_c":1.0}}"#, now - 60_000 + second * 1000).unwrap();
    }
    // A line with a carriage return and a terminal escape.
    writeln!(stream, "bad\r{FORGED} by a line\u{1b}[2J").unwrap();

    for marker in ["Rejected a reading.", "reason=HTTP 500"] {
        assert!(
            wait_until(Duration::from_secs(20), || eddy.log().contains(marker)),
            "{marker}: {}",
            eddy.log()
        );
    }
    let written = std::fs::read_to_string(eddy.dir.join("eddy-stderr-0.log")).unwrap();
    let forged: Vec<&str> = written.lines().filter(|line| line.starts_with(FORGED)).collect();
    assert!(forged.is_empty(), "forged lines: {forged:?}\n{written}");
    assert!(!written.contains('\r') && !written.contains('\u{1b}'), "{written:?}");
    // Both texts are there, escaped.
    assert!(written.contains(&format!("\\n{FORGED} by a topic")), "{written}");
    assert!(written.contains(&format!("\\n{FORGED} by a hub\\r\\n")), "{written}");
}

#[test]
fn a_reconnect_loop_of_bad_clients_logs_about_one_warning_per_second_issue_15() {
    let config = ConfigToml::new("gw-flood")
        .table("ingest")
        .key("flush_interval", "5ms")
        .tcp_source("in")
        .key("ack", true)
        .window("w", "10s")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let address = eddy.tcp_address("in").unwrap();
    let long = "x".repeat(4000);
    let started = Instant::now();
    let mut n_connections = 0u64;
    while n_connections < 200 || started.elapsed() < Duration::from_secs(3) {
        let mut stream = TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        writeln!(stream, "not a reading {n_connections} {long}").unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        assert!(reply.starts_with("err"), "{reply}");
        n_connections += 1;
    }
    let seconds = started.elapsed().as_secs() + 1;

    // Every rejection is counted.
    let api = api_address(&eddy);
    let rejected = || -> u64 {
        get(api, "/metrics")
            .1
            .lines()
            .filter(|line| line.starts_with("eddy_source_rejected_total{source=\"in\""))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(
        wait_until(Duration::from_secs(10), || rejected() == n_connections),
        "{} of {n_connections}",
        rejected()
    );
    let log = eddy.log();
    let warnings: Vec<&str> = log.lines().filter(|line| line.contains("Rejected a line.")).collect();
    assert!(
        !warnings.is_empty() && warnings.len() <= usize::try_from(seconds).unwrap() + 1,
        "{} warnings for {n_connections} connections in {seconds} s:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
    assert!(warnings.iter().all(|line| line.len() < 1000), "{warnings:?}");
    // Each rejection is either logged, or told as held back: on the next line of its kind, or
    // in the summary of the counters report (the last one at the stop).
    assert!(eddy.stop().expect("eddy stops").success());
    let log = eddy.log();
    let field = |line: &str, name: &str| -> u64 {
        let at =
            line.find(&format!("{name}=")).unwrap_or_else(|| panic!("{name} in {line}")) + name.len() + 1;
        line[at..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let suppressed: u64 = warnings.iter().map(|line| field(line, "suppressed")).sum();
    let held_back: u64 = log
        .lines()
        .filter(|line| {
            line.contains("held back by their rate limit") && line.contains("kind=tcp.rejected_line")
        })
        .map(|line| field(line, "held_back"))
        .sum();
    assert!(suppressed > 0, "{warnings:?}");
    assert_eq!(u64::try_from(warnings.len()).unwrap() + suppressed + held_back, n_connections, "{log}");
}
