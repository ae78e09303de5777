//! `eddy dead-letters`: prints the records sinks rejected permanently, one JSON line each, for
//! an operator to look at; `eddy dead-letters --resend [--sink NAME]` puts them back on their
//! uplink. Printing runs while eddy is stopped (the store is locked while it runs).
//!
//! Resend marks the dead letters (durably: flushed before it says so); at its next start each
//! sink delivers its marked dead letters first, oldest first, with their payloads (and so ids)
//! unchanged, and deletes each once delivered. One the hub rejects again becomes a dead letter
//! with the new reason. While eddy runs, the store is locked: resend then asks eddy through
//! its local endpoint (`POST /dead-letters/resend`), whose sink tasks mark theirs the same way
//! and deliver them before their next records.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use crate::config::Config;
use crate::storage::{Store, StoreError};

/// Marks the dead letters of every configured sink (or of `only`) for resend and prints how
/// many per sink. Dead letters of a sink no longer configured are left as they are (and said).
/// While eddy runs (its store locked), asks it through its local endpoint (`addr`, else
/// `[api] listen`) instead.
pub async fn resend_dead_letters(
    config: &Config,
    only: Option<&str>,
    addr: Option<std::net::SocketAddr>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let configured: Vec<&str> = config.sinks.iter().map(|sink| sink.name.as_str()).collect();
    if let Some(name) = only {
        if !configured.contains(&name) {
            anyhow::bail!("no sink `{name}` in the configuration (sinks: {})", configured.join(", "));
        }
    }
    let store = match Store::open(
        &config.data_dir,
        config.cache_capacity,
        config.engine.field_names.clone(),
        config.engine.tag_names.clone(),
    ) {
        Ok(store) => store,
        Err(StoreError::Locked { path }) => {
            let Some(addr) = addr.or(config.api_listen) else {
                anyhow::bail!(
                    "the store {} is in use: eddy is running, without [api] listen to ask it \
                     through; stop it, run this again, then start it (nothing was marked)",
                    path.display()
                );
            };
            return resend_through_the_endpoint(addr, only, out).await;
        }
        Err(error) => return Err(error.into()),
    };
    let left: Vec<(String, usize)> = {
        let mut left: Vec<(String, usize)> = Vec::new();
        for letter in store.dead_letters().context("cannot read the dead letters")? {
            if !configured.contains(&letter.sink.as_str()) && only.is_none() {
                match left.iter_mut().find(|(sink, _)| *sink == letter.sink) {
                    Some((_, count)) => *count += 1,
                    None => left.push((letter.sink, 1)),
                }
            }
        }
        left
    };
    let counts = store
        .mark_dead_letters_for_resend(|sink| only.map_or(configured.contains(&sink), |name| name == sink))
        .await
        .context("cannot mark the dead letters")?;
    if counts.is_empty() {
        writeln!(out, "No dead letters to resend.").context("cannot write to stdout")?;
    }
    for (sink, count) in &counts {
        writeln!(out, "sink {sink}: {count} dead letters queued for resend at the next start")
            .context("cannot write to stdout")?;
    }
    for (sink, count) in &left {
        writeln!(out, "sink {sink}: not configured; its {count} dead letters are left as they are")
            .context("cannot write to stdout")?;
    }
    Ok(())
}

/// `POST /dead-letters/resend` to the running eddy at `addr`; prints its answer.
async fn resend_through_the_endpoint(
    addr: std::net::SocketAddr,
    only: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let path = match only {
        Some(name) => {
            let encoded: String = name
                .bytes()
                .map(|byte| {
                    if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                        char::from(byte).to_string()
                    } else {
                        format!("%{byte:02X}")
                    }
                })
                .collect();
            format!("/dead-letters/resend?sink={encoded}")
        }
        None => "/dead-letters/resend".to_owned(),
    };
    let (code, body) =
        crate::cli::status::exchange(addr, hyper::Method::POST, &path, Duration::from_secs(120))
            .await
            .context(
                "eddy is running (its store is locked) and its endpoint did not answer; nothing was marked",
            )?;
    write!(out, "{body}").context("cannot write to stdout")?;
    if code != 200 {
        anyhow::bail!("eddy answered {code}: {}", body.trim_end());
    }
    Ok(())
}

/// Writes every dead letter as `{"sink","seq","kind","reason","rejected_ms","record"}` to `out`;
/// returns how many.
pub fn print_dead_letters(config: &Config, out: &mut dyn Write) -> anyhow::Result<usize> {
    let store = Store::open(
        &config.data_dir,
        config.cache_capacity,
        config.engine.field_names.clone(),
        config.engine.tag_names.clone(),
    )?;
    let letters = store.dead_letters().context("cannot read the dead letters")?;
    for letter in &letters {
        let record: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&letter.payload).into_owned())
        });
        let line = serde_json::json!({
            "sink": letter.sink,
            "seq": letter.seq,
            "kind": letter.kind,
            "reason": letter.reason,
            "rejected_ms": letter.rejected_ms,
            "record": record,
        });
        writeln!(out, "{line}").context("cannot write to stdout")?;
    }
    Ok(letters.len())
}
