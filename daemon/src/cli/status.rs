//! `eddy status`: fetches `/status` from a running eddy's local endpoint and prints it for an
//! operator on the shell (or as JSON with `--json`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

/// GET `path` from `addr`; the status code and the body.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .context("no answer within 10 s")?
        .with_context(|| {
            format!("cannot reach eddy's endpoint at {addr} (is eddy running with [api] listen set?)")
        })?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { bail!("malformed HTTP answer") };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("malformed HTTP status line")?;
    Ok((code, body.to_owned()))
}

/// The status document, readable.
pub(crate) fn render(status: &Value) -> String {
    let mut out = String::new();
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let s = |v: &Value| v.as_str().unwrap_or("?").to_owned();
    let _ = writeln!(
        out,
        "eddy {} on {}: {} (up {})",
        s(&status["version"]),
        s(&status["device_id"]),
        if status["healthy"].as_bool() == Some(true) { "HEALTHY" } else { "UNHEALTHY" },
        humantime::format_duration(Duration::from_secs(n(&status["uptime_secs"])))
    );
    for problem in status["problems"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  problem: {}", s(problem));
    }
    let _ = writeln!(out, "\nSources                 state    received   accepted    refused   rejected");
    for source in status["sources"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<20} {:<6} {:>10} {:>10} {:>10} {:>10}",
            s(&source["name"]),
            if source["up"].as_bool() == Some(false) { "DOWN" } else { "up" },
            n(&source["received"]),
            n(&source["accepted"]),
            n(&source["refused"]),
            n(&source["rejected"])
        );
        if n(&source["duplicates"]) > 0 {
            let _ = writeln!(out, "      resent, already stored (dup): {}", n(&source["duplicates"]));
        }
        if let Some(reasons) = source["rejected_by_reason"].as_object() {
            for (reason, count) in reasons {
                let _ = writeln!(out, "      {reason}: {}", n(count));
            }
        }
    }
    let engine = &status["engine"];
    let ms = |v: &Value| v.as_f64().map_or_else(|| "-".to_owned(), |ms| format!("≤ {ms} ms"));
    let _ = writeln!(
        out,
        "\nEngine: {} results, {} late readings, {} commits; p99 ingest {}, p99 log fsync {}",
        n(&engine["results"]),
        n(&engine["late_readings"]),
        n(&engine["commits"]),
        ms(&engine["ingest_p99_ms"]),
        ms(&engine["flush_p99_ms"])
    );
    let store = &status["store"];
    let budget = n(&store["budget_bytes"]);
    let _ = writeln!(
        out,
        "Store: {} used{}, {} on disk; refused {} (budget) {} (disk)",
        bytes(n(&store["used_bytes"])),
        if budget == 0 { " (no budget)".to_owned() } else { format!(" of {}", bytes(budget)) },
        bytes(n(&store["disk_bytes"])),
        n(&store["refused_budget"]),
        n(&store["refused_disk"])
    );
    let _ = writeln!(out, "\nUplinks                 state            delivered  retries  outbox  oldest");
    for uplink in status["uplinks"].as_array().into_iter().flatten() {
        let state = if uplink["online"].as_bool() == Some(true) {
            "online".to_owned()
        } else {
            format!("offline {}s", n(&uplink["offline_secs"]))
        };
        let _ = writeln!(
            out,
            "  {:<20} {:<16} {:>9} {:>8} {:>7} {:>6}s",
            s(&uplink["name"]),
            state,
            n(&uplink["delivered"]),
            n(&uplink["retries"]),
            n(&uplink["outbox_depth"]) + n(&uplink["raw_depth"]),
            n(&uplink["outbox_age_ms"]) / 1000
        );
        let dropped = n(&uplink["dropped_budget"]) + n(&uplink["dropped_ttl"]) + n(&uplink["rejected"]);
        if dropped > 0 {
            let _ = writeln!(
                out,
                "      dropped: budget {}, ttl {}, rejected {}",
                n(&uplink["dropped_budget"]),
                n(&uplink["dropped_ttl"]),
                n(&uplink["rejected"])
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
        Ok((200, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(document) => {
                if json {
                    print!("{body}");
                } else {
                    print!("{}", render(&document));
                }
                if document["healthy"].as_bool() == Some(true) {
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
