//! The periodic counters log lines (every 30 s, and once at the end of a run): sources,
//! engine, sinks, the store's budget and each uplink's outbox, all from one [`Status`]
//! snapshot; and how many rate-limited warnings were held back since, per kind.

use crate::stats::Status;

/// Logs the counters of `status`. The `Sink counters.` lines repeat part of the `Uplink
/// counters.` lines; both stay because operators watch for each.
pub(crate) fn log_counters(status: &Status) {
    log_status(status);
    log_uplinks(status);
    for (kind, held_back) in eddy_sensors::take_held_back_warnings() {
        tracing::warn!(kind = %kind, held_back, "Warnings about bad input held back by their rate limit.");
    }
}

fn log_status(status: &Status) {
    for source in &status.sources {
        let rejected: Vec<String> =
            source.rejected.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
        tracing::info!(
            source = %source.name,
            received = source.received,
            accepted = source.accepted,
            refused = source.refused,
            duplicates = source.duplicates,
            peers_refused = source.peers_refused,
            auth_failures = source.auth_failures,
            timed_out = source.timed_out,
            up = source.up,
            rejected = source.rejected_total(),
            by_reason = %rejected.join(","),
            "Source counters."
        );
    }
    let engine = &status.engine;
    let store = &status.store;
    tracing::info!(
        results = engine.results,
        late_readings = engine.late_readings,
        future_outliers = engine.future_outliers,
        future_outliers_dropped = engine.future_outliers_dropped,
        future_outliers_held = engine.future_outliers_held,
        commits = engine.commits,
        corrupt_log_chunks = store.corrupt_log_chunks,
        corrupt_outbox_pages = store.corrupt_outbox_pages,
        corrupt_state_pages = store.corrupt_state_pages,
        corrupt_meta = store.corrupt_meta,
        flushes = store.flushes,
        store_bytes = store.disk_bytes,
        "Engine counters."
    );
    for sink in &status.uplinks {
        tracing::info!(
            sink = %sink.name,
            delivered = sink.delivered,
            retries = sink.retries,
            rejected = sink.rejected,
            "Sink counters."
        );
    }
}

/// The store budget and per-sink delivery counters (outbox depth and age, drops by reason,
/// a file sink's bytes on disk).
fn log_uplinks(status: &Status) {
    let store = &status.store;
    tracing::info!(
        used_bytes = store.used_bytes,
        max_bytes = store.budget_bytes,
        dropped_budget = store.dropped_budget,
        dropped_ttl = store.dropped_ttl,
        refused_budget = store.refused_budget,
        refused_disk = store.refused_disk,
        free_bytes = store.free_bytes,
        store_failures = store.failures,
        dead_letters = store.dead_letters,
        dropped_dead_letters = store.dropped_dead_letters,
        downsample_merged = store.downsample_merged,
        downsample_written = store.downsample_written,
        downsample_redundant = store.downsample_redundant,
        "Store budget counters."
    );
    for sink in &status.uplinks {
        tracing::info!(
            sink = %sink.name,
            delivered = sink.delivered,
            retries = sink.retries,
            rejected = sink.rejected,
            dropped_budget = sink.dropped_budget,
            dropped_ttl = sink.dropped_ttl,
            outbox_depth = sink.outbox_depth,
            raw_depth = sink.raw_depth,
            outbox_age_ms = sink.outbox_age_ms,
            file_bytes = sink.file_bytes,
            "Uplink counters."
        );
    }
}
