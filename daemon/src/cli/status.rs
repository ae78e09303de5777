//! `eddy status`: fetches `/status` from a running eddy's local endpoint and prints it for an
//! operator on the shell (or as JSON with `--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONNECTION, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

use crate::config::Config;
use crate::stats::Status;

/// GET `path` from `addr` with hyper's HTTP/1 client; the status code and the body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    exchange(addr, Method::GET, path, Duration::from_secs(10)).await
}

/// `method` `path` (no body) at `addr`, answered within `within`: the status code and the body.
pub(crate) async fn exchange(
    addr: SocketAddr,
    method: Method,
    path: &str,
    within: Duration,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection future does the I/O; it ends when the answer is read (Connection: close).
        let connection = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.to_string())
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        connection.abort();
        Ok::<_, anyhow::Error>((code, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(within, exchange)
        .await
        .with_context(|| format!("no answer within {} s", within.as_secs()))?
        .with_context(|| {
            format!("cannot reach eddy's endpoint at {addr} (is eddy running with [api] listen set?)")
        })
}

/// The status document, readable.
pub(crate) fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "eddy {} on {}: {} (up {})",
        status.version,
        status.device_id,
        if status.healthy { "HEALTHY" } else { "UNHEALTHY" },
        humantime::format_duration(Duration::from_secs(status.uptime_secs))
    );
    for problem in &status.problems {
        let _ = writeln!(out, "  problem: {problem}");
    }
    for warning in &status.warnings {
        let _ = writeln!(out, "  warning: {warning}");
    }
    let clock = &status.clock;
    if clock.jumps > 0 {
        let _ = writeln!(
            out,
            "  wall clock jumped {} time(s), last by {} ms (processing time ignores it)",
            clock.jumps,
            clock.last_jump_ms.unwrap_or(0)
        );
    }
    if let Some(behind) = clock.processing_behind_ms {
        let _ = writeln!(
            out,
            "  processing time is {} s behind the synchronised clock (its labels catch up at the next start)",
            behind / 1000
        );
    }
    let _ = writeln!(out, "\nSources                 state    received   accepted    refused   rejected");
    for source in &status.sources {
        let _ = writeln!(
            out,
            "  {:<20} {:<6} {:>10} {:>10} {:>10} {:>10}",
            source.name,
            if source.up { "up" } else { "DOWN" },
            source.received,
            source.accepted,
            source.refused,
            source.rejected_total()
        );
        if source.duplicates > 0 {
            let _ = writeln!(out, "      resent, already stored (dup): {}", source.duplicates);
        }
        for (what, count) in [
            ("peers refused (not in allow)", source.peers_refused),
            ("authentication failures", source.auth_failures),
            ("connections timed out", source.timed_out),
        ] {
            if count > 0 {
                let _ = writeln!(out, "      {what}: {count}");
            }
        }
        // By name, as the document's object lists them.
        let by_reason: BTreeMap<&str, u64> =
            source.rejected.iter().map(|(reason, n)| (reason.as_str(), *n)).collect();
        for (reason, count) in by_reason {
            let _ = writeln!(out, "      {reason}: {count}");
        }
    }
    let engine = &status.engine;
    let ms = |p99: Option<f64>| p99.map_or_else(|| "-".to_owned(), |ms| format!("≤ {ms} ms"));
    let _ = writeln!(
        out,
        "\nEngine: {} results, {} late readings, {} commits; p99 ingest {}, p99 log fsync {}",
        engine.results,
        engine.late_readings,
        engine.commits,
        ms(engine.ingest_p99_ms),
        ms(engine.flush_p99_ms)
    );
    if let (Some(p50), Some(p99), Some(max)) =
        (engine.result_p50_ms, engine.result_p99_ms, engine.result_max_ms)
    {
        let _ = writeln!(
            out,
            "        window result latency (closing reading to outbox): p50 ≤ {p50} ms, p99 ≤ {p99} ms, max {max} ms over {} results",
            engine.result_latency_count
        );
    }
    if engine.future_outliers > 0 || engine.future_outliers_held > 0 {
        let _ = writeln!(
            out,
            "        future outliers: {} held so far, {} dropped unconfirmed, {} held now",
            engine.future_outliers, engine.future_outliers_dropped, engine.future_outliers_held
        );
    }
    if engine.count_by_overflow > 0 {
        let _ = writeln!(
            out,
            "        count_by overflow: {} readings in `other` buckets (engine.count_by_max_values)",
            engine.count_by_overflow
        );
    }
    for clock in &engine.sensor_clocks {
        let _ = writeln!(
            out,
            "        sensor clock {}: {:+} ms vs the gateway, {:+} ms vs the median sensor",
            clock.sensor, clock.offset_ms, clock.offset_from_median_ms
        );
    }
    let store = &status.store;
    let _ = writeln!(
        out,
        "Store: {} used{}, {} on disk; refused {} (budget) {} (disk)",
        bytes(store.used_bytes),
        if store.budget_bytes == 0 {
            " (no budget)".to_owned()
        } else {
            format!(" of {}", bytes(store.budget_bytes))
        },
        bytes(store.disk_bytes),
        store.refused_budget,
        store.refused_disk
    );
    if store.free_bytes > 0 {
        let _ = writeln!(out, "       {} free on its file system", bytes(store.free_bytes));
    }
    if store.failures > 0 {
        let _ = writeln!(
            out,
            "       failed {} times since eddy started (opened again in-process)",
            store.failures
        );
    }
    if store.dead_letters_kept + store.dropped_dead_letters > 0 {
        let _ = writeln!(
            out,
            "       dead letters: {} kept ({} of {}), {} dropped since eddy started",
            store.dead_letters_kept,
            bytes(store.dead_letter_bytes),
            bytes(store.dead_letter_max_bytes),
            store.dropped_dead_letters
        );
    }
    if store.downsample_merged + store.downsample_redundant + store.dropped_budget > 0 {
        let _ = writeln!(
            out,
            "       disk budget: {} records merged into {} downsampled, {} redundant deleted, {} dropped since eddy started",
            store.downsample_merged, store.downsample_written, store.downsample_redundant, store.dropped_budget
        );
    }
    let _ = writeln!(out, "\nUplinks                 state            delivered  retries  outbox  oldest");
    for uplink in &status.uplinks {
        let state = match (uplink.online, uplink.refused_status) {
            (true, _) => "online".to_owned(),
            (false, Some(status)) => format!("refused {status} {}s", uplink.refused_secs),
            (false, None) => format!("offline {}s", uplink.offline_secs),
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<16} {:>9} {:>8} {:>7} {:>6}s",
            uplink.name,
            state,
            uplink.delivered,
            uplink.retries,
            uplink.outbox_depth + uplink.raw_depth,
            uplink.outbox_age_ms / 1000
        );
        if uplink.file_bytes > 0 {
            let _ = writeln!(out, "      files on disk: {}", bytes(uplink.file_bytes));
        }
        if uplink.dropped_budget + uplink.dropped_ttl + uplink.rejected > 0 {
            let _ = writeln!(
                out,
                "      dropped: budget {}, ttl {}, rejected {}",
                uplink.dropped_budget, uplink.dropped_ttl, uplink.rejected
            );
        }
        // Live first (#17): what waits, and when it should be delivered.
        if uplink.backlog_records > 0 {
            let drain = match uplink.backlog_drain_secs {
                Some(secs) => {
                    format!("drained in about {}", humantime::format_duration(Duration::from_secs(secs)))
                }
                None => "drain time unknown".to_owned(),
            };
            let _ = writeln!(
                out,
                "      backlog: {} records, oldest {}s, {drain}",
                uplink.backlog_records,
                uplink.outbox_age_ms / 1000
            );
        }
    }
    out
}

fn bytes(n: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let f = n as f64;
    if n >= 1 << 30 {
        format!("{:.1} GiB", f / f64::from(1u32 << 30))
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", f / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// `eddy status`: the endpoint from `--addr` or the configuration's `api.listen`.
pub(crate) fn run(config: &std::path::Path, addr: Option<SocketAddr>, json: bool) -> ExitCode {
    let addr = match addr {
        Some(addr) => addr,
        None => match Config::load(Some(config)) {
            Ok(Config { api_listen: Some(addr), .. }) => addr,
            Ok(_) => {
                eprintln!("eddy status: {} has no [api] listen: the endpoint is off", config.display());
                return ExitCode::from(2);
            }
            Err(error) => {
                eprintln!("eddy status: invalid configuration: {error}");
                return ExitCode::from(2);
            }
        },
    };
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(get(addr, "/status")) {
        Ok((200, body)) => match serde_json::from_str::<Status>(&body) {
            Ok(status) => {
                if json {
                    print!("{body}");
                } else {
                    print!("{}", render(&status));
                }
                if status.healthy {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("eddy status: the endpoint answered something else than JSON: {error}");
                ExitCode::FAILURE
            }
        },
        Ok((code, body)) => {
            eprintln!("eddy status: HTTP {code}: {body}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("eddy status: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/status` document with every branch of the printout: problems, a down source, dups,
    /// reasons (listed by name), no p99 yet, a budget, an offline uplink with drops.
    const DOCUMENT: &str = r#"{
  "device_id": "gw-rich",
  "version": "0.1.0",
  "uptime_secs": 3725,
  "healthy": false,
  "problems": ["source b\"x is down (not listening, its port not open, or its broker not connected)", "store is not writable: readings refused: budget"],
  "pipeline_idle_ms": 12,
  "sources": [
    {"name": "in", "up": true, "received": 70, "accepted": 40, "refused": 3, "duplicates": 5, "rejected": 27, "rejected_by_reason": {"bad_syntax": 20, "overrun": 2, "missing_ts": 5}},
    {"name": "b\"x", "up": false, "received": 0, "accepted": 0, "refused": 0, "duplicates": 0, "rejected": 0, "rejected_by_reason": {}}
  ],
  "engine": {"results": 9, "late_readings": 1, "commits": 12, "ingest_p99_ms": 5.0, "flush_p99_ms": null},
  "store": {"used_bytes": 3500000, "budget_bytes": 4194304, "disk_bytes": 2000000000, "refused_budget": 7, "refused_disk": 0, "last_refusal": "readings refused: budget"},
  "uplinks": [
    {"name": "hub", "online": false, "offline_secs": 75, "delivered": 10, "retries": 4, "rejected": 1, "dropped_budget": 2, "dropped_ttl": 3, "outbox_depth": 6, "raw_depth": 1, "outbox_age_ms": 81000},
    {"name": "file", "online": true, "offline_secs": 0, "delivered": 99, "retries": 0, "rejected": 0, "dropped_budget": 0, "dropped_ttl": 0, "outbox_depth": 0, "raw_depth": 0, "outbox_age_ms": 0}
  ]
}"#;

    /// What `eddy status` printed for `DOCUMENT` before it read the document into `Status`
    /// (the old binary's output, captured).
    const PRINTED: &str = r#"eddy 0.1.0 on gw-rich: UNHEALTHY (up 1h 2m 5s)
  problem: source b"x is down (not listening, its port not open, or its broker not connected)
  problem: store is not writable: readings refused: budget

Sources                 state    received   accepted    refused   rejected
  in                   up             70         40          3         27
      resent, already stored (dup): 5
      bad_syntax: 20
      missing_ts: 5
      overrun: 2
  b"x                  DOWN            0          0          0          0

Engine: 9 results, 1 late readings, 12 commits; p99 ingest ≤ 5 ms, p99 log fsync -
Store: 3.3 MiB used of 4.0 MiB, 1.9 GiB on disk; refused 7 (budget) 0 (disk)

Uplinks                 state            delivered  retries  outbox  oldest
  hub                  offline 75s             10        4       7     81s
      dropped: budget 2, ttl 3, rejected 1
  file                 online                  99        0       0      0s
"#;

    #[test]
    fn status_document_prints_as_before() {
        let status: Status = serde_json::from_str(DOCUMENT).expect("a status document");
        assert_eq!(render(&status), PRINTED);
    }

    /// Future outliers and the sensor clocks furthest off get lines under the engine.
    #[test]
    fn future_outliers_and_sensor_clocks_are_printed_under_the_engine() {
        let document = DOCUMENT.replace(
            r#""flush_p99_ms": null}"#,
            r#""flush_p99_ms": null, "future_outliers": 4, "future_outliers_dropped": 1, "future_outliers_held": 2,
               "sensor_clocks": [{"sensor": "t-9", "offset_ms": 301000, "offset_from_median_ms": 300500}]}"#,
        );
        let status: Status = serde_json::from_str(&document).expect("a status document");
        let printed = render(&status);
        assert!(
            printed.contains(
                "p99 log fsync -\n        future outliers: 4 held so far, 1 dropped unconfirmed, 2 held now\n        sensor clock t-9: +301000 ms vs the gateway, +300500 ms vs the median sensor\nStore:"
            ),
            "{printed}"
        );
    }

    /// A file sink's bytes on disk get a line under its uplink; the store's free space and
    /// failures, lines under the store.
    #[test]
    fn a_file_sinks_bytes_are_printed_under_it() {
        let mut status: Status = serde_json::from_str(DOCUMENT).expect("a status document");
        status.uplinks[1].file_bytes = 3 << 20;
        status.store.free_bytes = 5 << 30;
        status.store.failures = 2;
        let printed = render(&status);
        assert!(
            printed.contains("refused 7 (budget) 0 (disk)\n       5.0 GiB free on its file system\n       failed 2 times since eddy started (opened again in-process)\n"),
            "{printed}"
        );
        assert!(
            printed.ends_with("  file                 online                  99        0       0      0s\n      files on disk: 3.0 MiB\n"),
            "{printed}"
        );
    }

    /// A hub refusing our credentials shows in the uplink's state; dead letters, under the
    /// store.
    #[test]
    fn a_refusal_and_the_dead_letters_are_printed() {
        let mut status: Status = serde_json::from_str(DOCUMENT).expect("a status document");
        status.uplinks[0].refused_status = Some(401);
        status.uplinks[0].refused_secs = 42;
        status.store.dead_letters_kept = 12;
        status.store.dead_letter_bytes = 3 << 10;
        status.store.dead_letter_max_bytes = 16 << 20;
        status.store.dropped_dead_letters = 5;
        let printed = render(&status);
        assert!(
            printed.contains(
                "(disk)\n       dead letters: 12 kept (3.0 KiB of 16.0 MiB), 5 dropped since eddy started\n"
            ),
            "{printed}"
        );
        assert!(printed.contains("  hub                  refused 401 42s         10"), "{printed}");
        assert!(!printed.contains("disk budget:"), "nothing merged or dropped: no line");
        status.store.downsample_merged = 1440;
        status.store.downsample_written = 24;
        status.store.dropped_budget = 3;
        let printed = render(&status);
        assert!(
            printed.contains(
                "       disk budget: 1440 records merged into 24 downsampled, 0 redundant deleted, 3 dropped since eddy started\n"
            ),
            "{printed}"
        );
    }

    /// An uplink with records waiting gets a backlog line: how many, how old, and the
    /// estimated drain time when known.
    #[test]
    fn a_backlog_is_printed_under_its_uplink() {
        let document = DOCUMENT.replace(
            r#""outbox_age_ms": 81000}"#,
            r#""outbox_age_ms": 81000, "backlog_records": 7, "backlog_oldest_ms": 1700000000000, "backlog_drain_secs": 3725}"#,
        );
        let mut status: Status = serde_json::from_str(&document).expect("a status document");
        assert_eq!(status.uplinks[0].backlog_drain_secs, Some(3725));
        let printed = render(&status);
        assert!(
            printed.contains(
                "rejected 1\n      backlog: 7 records, oldest 81s, drained in about 1h 2m 5s\n  file"
            ),
            "{printed}"
        );
        status.uplinks[0].backlog_drain_secs = None;
        assert!(render(&status).contains("oldest 81s, drain time unknown\n"));
    }
}
