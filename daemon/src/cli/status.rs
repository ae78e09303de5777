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
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::config::Config;
use crate::stats::Status;

/// GET `path` from `addr` with hyper's HTTP/1 client; the status code and the body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection future does the I/O; it ends when the answer is read (Connection: close).
        let connection = tokio::spawn(connection);
        let request = Request::get(path)
            .header(HOST, addr.to_string())
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        connection.abort();
        Ok::<_, anyhow::Error>((code, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("no answer within 10 s")?
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
    let _ = writeln!(out, "\nUplinks                 state            delivered  retries  outbox  oldest");
    for uplink in &status.uplinks {
        let state =
            if uplink.online { "online".to_owned() } else { format!("offline {}s", uplink.offline_secs) };
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
        if uplink.dropped_budget + uplink.dropped_ttl + uplink.rejected > 0 {
            let _ = writeln!(
                out,
                "      dropped: budget {}, ttl {}, rejected {}",
                uplink.dropped_budget, uplink.dropped_ttl, uplink.rejected
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
