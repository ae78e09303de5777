//! The periodic counters log lines (every 30 s, and once at the end of a run): sources,
//! engine, sinks, the store's budget and each uplink's outbox.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use eddy_sensors::SourceStats;

use crate::stats::{AggregateStats, Committed, DeliveryStats};
use crate::storage::Store;

pub(crate) fn log_status(
    sources: &[Arc<SourceStats>],
    aggregate: &AggregateStats,
    sinks: &[(String, Arc<DeliveryStats>)],
    store: &Store,
) {
    for source in sources {
        let snapshot = source.snapshot();
        let rejected: Vec<String> =
            snapshot.rejected.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
        tracing::info!(
            source = %source.name,
            received = snapshot.received,
            accepted = snapshot.accepted,
            refused = snapshot.refused,
            duplicates = snapshot.duplicates,
            up = source.is_up(),
            rejected = snapshot.rejected_total(),
            by_reason = %rejected.join(","),
            "Source counters."
        );
    }
    tracing::info!(
        results = aggregate.results_total.load(Ordering::Relaxed),
        late_readings = aggregate.late_total.load(Ordering::Relaxed),
        commits = aggregate.commits_total.load(Ordering::Relaxed),
        corrupt_log_chunks = store.stats().corrupt_log_chunks.load(Ordering::Relaxed),
        corrupt_outbox_pages = store.stats().corrupt_outbox_entries.load(Ordering::Relaxed),
        corrupt_state_pages = store.stats().corrupt_state_pages.load(Ordering::Relaxed),
        corrupt_meta = store.stats().corrupt_meta.load(Ordering::Relaxed),
        flushes = store.stats().flushes.load(Ordering::Relaxed),
        store_bytes = store.size_on_disk().unwrap_or(0),
        "Engine counters."
    );
    for (name, stats) in sinks {
        tracing::info!(
            sink = %name,
            delivered = stats.delivered_total.load(Ordering::Relaxed),
            retries = stats.retries_total.load(Ordering::Relaxed),
            rejected = stats.rejected_total.load(Ordering::Relaxed),
            "Sink counters."
        );
    }
}

/// The store budget and per-sink delivery counters (outbox depth and age, drops by reason).
pub(crate) fn log_uplinks(sinks: &[(String, Arc<DeliveryStats>)], store: &Store, committed: Committed) {
    let drops = store.drop_stats();
    tracing::info!(
        used_bytes = store.used_bytes(),
        max_bytes = store.budget_config().max_bytes.unwrap_or(0),
        dropped_budget = drops.dropped_budget_records.load(Ordering::Relaxed),
        dropped_ttl = drops.dropped_ttl_records.load(Ordering::Relaxed),
        refused_budget = drops.refused_budget_readings.load(Ordering::Relaxed),
        refused_disk = drops.refused_disk_readings.load(Ordering::Relaxed),
        dead_letters = drops.dead_letter_records.load(Ordering::Relaxed),
        dropped_dead_letters = drops.dropped_dead_letter_records.load(Ordering::Relaxed),
        "Store budget counters."
    );
    let now_ms = u64::try_from(eddy_sensors::wall_clock_ms()).unwrap_or(0);
    for (name, stats) in sinks {
        let counters = stats.snapshot(committed, now_ms);
        tracing::info!(
            sink = %name,
            delivered = counters.delivered,
            retries = counters.retries,
            rejected = counters.rejected,
            dropped_budget = counters.dropped_budget,
            dropped_ttl = counters.dropped_ttl,
            outbox_depth = counters.outbox_depth,
            raw_depth = counters.raw_depth,
            outbox_age_ms = counters.outbox_age_ms,
            "Uplink counters."
        );
    }
}
