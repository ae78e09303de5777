//! `eddy dead-letters`: prints the records sinks rejected permanently, one JSON line each, for
//! an operator to look at or re-send by hand. Runs while eddy is stopped (the store is locked
//! while it runs).

use std::io::Write;

use anyhow::Context;

use crate::config::Config;
use crate::storage::Store;

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
