//! The `/metrics` writer against a known snapshot: every family, its order, labels, escaping
//! and number formats, as the hand-written text had them.

use std::time::Duration;

use eddy_sensors::{RejectReason, SourceStatsSnapshot};

use crate::ops::metrics::{label, render};
use crate::stats::{
    ClockSnapshot, EngineCounters, Histogram, SensorClockStatus, SinkCounters, Status, StoreCounters,
};

fn known_status() -> Status {
    let ingest_latency = Histogram::default();
    for ms in [1, 1, 3, 40, 3000] {
        ingest_latency.observe(Duration::from_millis(ms));
    }
    Status {
        device_id: "gw".to_owned(),
        version: "0.1.0".to_owned(),
        uptime_secs: 61,
        healthy: true,
        problems: Vec::new(),
        warnings: vec!["clock not synchronised".to_owned()],
        clock: ClockSnapshot { synchronized: false, jumps: 2, ..ClockSnapshot::default() },
        pipeline_idle_ms: 5,
        sources: vec![
            SourceStatsSnapshot {
                name: "in".to_owned(),
                up: true,
                received: 7,
                accepted: 4,
                refused: 1,
                rejected: vec![(RejectReason::BadSyntax, 2), (RejectReason::Overrun, 1)],
                connections: 3,
                duplicates: 2,
                broker_dropped: Some(90),
                peers_refused: 5,
                auth_failures: 6,
                timed_out: 8,
            },
            SourceStatsSnapshot { name: "we\"ird".to_owned(), ..SourceStatsSnapshot::default() },
        ],
        engine: EngineCounters {
            results: 3,
            late_readings: 0,
            commits: 5,
            ingest_p99_ms: Some(5000.0),
            flush_p99_ms: None,
            inputs: 42,
            ingest_latency: ingest_latency.snapshot(),
            flush_latency: Histogram::default().snapshot(),
            result_latency_count: 0,
            result_p50_ms: None,
            result_p99_ms: None,
            result_max_ms: None,
            result_latency: Histogram::default().snapshot(),
            future_outliers: 6,
            future_outliers_dropped: 1,
            future_outliers_held: 2,
            count_by_overflow: 7,
            sensors: 11,
            open_windows: 12,
            sensors_forgotten: 13,
            sensor_clocks: vec![SensorClockStatus {
                sensor: "t-9".to_owned(),
                offset_ms: 301_000,
                offset_from_median_ms: 300_500,
            }],
        },
        store: StoreCounters {
            used_bytes: 1000,
            disk_bytes: 4096,
            refused_disk: 2,
            flushes: 9,
            written_bytes: 81920,
            free_bytes: 1 << 30,
            failures: 1,
            downsample_merged: 120,
            downsample_written: 2,
            ..StoreCounters::default()
        },
        uplinks: vec![SinkCounters {
            name: "hub".to_owned(),
            online: false,
            offline_secs: 12,
            delivered: 0,
            retries: 3,
            rejected: 1,
            dropped_budget: 4,
            dropped_ttl: 0,
            outbox_depth: 5,
            raw_depth: 0,
            outbox_age_ms: 1500,
            file_bytes: 8192,
            refused_since_ms: Some(1_700_000_000_000),
            refused_status: Some(401),
            refused_secs: 7,
            backlog_records: 5,
            backlog_oldest_ms: Some(1_699_999_998_500),
            backlog_drain_secs: None,
        }],
    }
}

const KNOWN_TEXT: &str = r#"# HELP eddy_up 1 when healthy (sources up, store writable, pipeline moving).
# TYPE eddy_up gauge
eddy_up 1
# HELP eddy_uptime_seconds Seconds since eddy started.
# TYPE eddy_uptime_seconds gauge
eddy_uptime_seconds 61
# HELP eddy_clock_synchronized 1 while the wall clock is trusted (synchronised, not before the build); else no reading is refused as future_ts.
# TYPE eddy_clock_synchronized gauge
eddy_clock_synchronized 0
# HELP eddy_clock_jumps_total Wall-clock steps of more than 1 s seen (processing time runs on the monotonic clock and ignores them).
# TYPE eddy_clock_jumps_total counter
eddy_clock_jumps_total 2
# HELP eddy_source_received_total Readings received per source.
# TYPE eddy_source_received_total counter
eddy_source_received_total{source="in"} 7
eddy_source_received_total{source="we\"ird"} 0
# HELP eddy_source_accepted_total Readings accepted per source.
# TYPE eddy_source_accepted_total counter
eddy_source_accepted_total{source="in"} 4
eddy_source_accepted_total{source="we\"ird"} 0
# HELP eddy_source_refused_total Accepted readings the store refused per source (disk budget full, failed write): nacked, not stored.
# TYPE eddy_source_refused_total counter
eddy_source_refused_total{source="in"} 1
eddy_source_refused_total{source="we\"ird"} 0
# HELP eddy_source_duplicates_total Lines of a numbered TCP session resent after being settled, answered dup, not stored again.
# TYPE eddy_source_duplicates_total counter
eddy_source_duplicates_total{source="in"} 2
eddy_source_duplicates_total{source="we\"ird"} 0
# HELP eddy_source_peers_refused_total TCP connections refused at accept because the peer is not in the source's allow list.
# TYPE eddy_source_peers_refused_total counter
eddy_source_peers_refused_total{source="in"} 5
eddy_source_peers_refused_total{source="we\"ird"} 0
# HELP eddy_source_auth_failures_total TCP connections closed for a failed TLS handshake, a wrong or missing #auth token, or none in time.
# TYPE eddy_source_auth_failures_total counter
eddy_source_auth_failures_total{source="in"} 6
eddy_source_auth_failures_total{source="we\"ird"} 0
# HELP eddy_source_timed_out_total TCP connections closed idle (idle_timeout) or with replies left unread (reply_timeout).
# TYPE eddy_source_timed_out_total counter
eddy_source_timed_out_total{source="in"} 8
eddy_source_timed_out_total{source="we\"ird"} 0
# HELP eddy_source_up 1 while the source can take readings (listening, port open, broker connected).
# TYPE eddy_source_up gauge
eddy_source_up{source="in"} 1
eddy_source_up{source="we\"ird"} 0
# HELP eddy_source_rejected_total Readings rejected per source and reason.
# TYPE eddy_source_rejected_total counter
eddy_source_rejected_total{source="in",reason="bad_syntax"} 2
eddy_source_rejected_total{source="in",reason="overrun"} 1
# HELP eddy_broker_dropped_total Messages the MQTT source's broker says it dropped ($SYS/broker/publish/messages/dropped: all its clients, since it started).
# TYPE eddy_broker_dropped_total counter
eddy_broker_dropped_total{source="in"} 90
# HELP eddy_ingest_latency_seconds From a group's first reading to its acknowledgement (durable).
# TYPE eddy_ingest_latency_seconds histogram
eddy_ingest_latency_seconds_bucket{le="0.001"} 2
eddy_ingest_latency_seconds_bucket{le="0.002"} 2
eddy_ingest_latency_seconds_bucket{le="0.005"} 3
eddy_ingest_latency_seconds_bucket{le="0.01"} 3
eddy_ingest_latency_seconds_bucket{le="0.02"} 3
eddy_ingest_latency_seconds_bucket{le="0.05"} 4
eddy_ingest_latency_seconds_bucket{le="0.1"} 4
eddy_ingest_latency_seconds_bucket{le="0.2"} 4
eddy_ingest_latency_seconds_bucket{le="0.5"} 4
eddy_ingest_latency_seconds_bucket{le="1"} 4
eddy_ingest_latency_seconds_bucket{le="2"} 4
eddy_ingest_latency_seconds_bucket{le="5"} 5
eddy_ingest_latency_seconds_bucket{le="+Inf"} 5
eddy_ingest_latency_seconds_sum 3.045
eddy_ingest_latency_seconds_count 5
# HELP eddy_flush_latency_seconds Log append and fsync per group.
# TYPE eddy_flush_latency_seconds histogram
eddy_flush_latency_seconds_bucket{le="0.001"} 0
eddy_flush_latency_seconds_bucket{le="0.002"} 0
eddy_flush_latency_seconds_bucket{le="0.005"} 0
eddy_flush_latency_seconds_bucket{le="0.01"} 0
eddy_flush_latency_seconds_bucket{le="0.02"} 0
eddy_flush_latency_seconds_bucket{le="0.05"} 0
eddy_flush_latency_seconds_bucket{le="0.1"} 0
eddy_flush_latency_seconds_bucket{le="0.2"} 0
eddy_flush_latency_seconds_bucket{le="0.5"} 0
eddy_flush_latency_seconds_bucket{le="1"} 0
eddy_flush_latency_seconds_bucket{le="2"} 0
eddy_flush_latency_seconds_bucket{le="5"} 0
eddy_flush_latency_seconds_bucket{le="+Inf"} 0
eddy_flush_latency_seconds_sum 0
eddy_flush_latency_seconds_count 0
# HELP eddy_window_result_latency_seconds From the reading that closed a window (its receipt by the ingest task) to the result committed in the outbox, per window result.
# TYPE eddy_window_result_latency_seconds histogram
eddy_window_result_latency_seconds_bucket{le="0.001"} 0
eddy_window_result_latency_seconds_bucket{le="0.002"} 0
eddy_window_result_latency_seconds_bucket{le="0.005"} 0
eddy_window_result_latency_seconds_bucket{le="0.01"} 0
eddy_window_result_latency_seconds_bucket{le="0.02"} 0
eddy_window_result_latency_seconds_bucket{le="0.05"} 0
eddy_window_result_latency_seconds_bucket{le="0.1"} 0
eddy_window_result_latency_seconds_bucket{le="0.2"} 0
eddy_window_result_latency_seconds_bucket{le="0.5"} 0
eddy_window_result_latency_seconds_bucket{le="1"} 0
eddy_window_result_latency_seconds_bucket{le="2"} 0
eddy_window_result_latency_seconds_bucket{le="5"} 0
eddy_window_result_latency_seconds_bucket{le="+Inf"} 0
eddy_window_result_latency_seconds_sum 0
eddy_window_result_latency_seconds_count 0
# HELP eddy_window_results_total Results (window, batch) committed to the outbox.
# TYPE eddy_window_results_total counter
eddy_window_results_total 3
# HELP eddy_late_readings_total Readings that arrived after their window was emitted.
# TYPE eddy_late_readings_total counter
eddy_late_readings_total 0
# HELP eddy_future_outliers_total Readings held because their timestamp was further ahead of their sensor's clock than engine.outlier_after.
# TYPE eddy_future_outliers_total counter
eddy_future_outliers_total 6
# HELP eddy_future_outliers_dropped_total Held readings dropped, never confirmed: their sensor held too many, or went idle before its clock reached them.
# TYPE eddy_future_outliers_dropped_total counter
eddy_future_outliers_dropped_total 1
# HELP eddy_count_by_overflow_total Readings counted in a window's other bucket: their count_by tag value came past engine.count_by_max_values distinct ones.
# TYPE eddy_count_by_overflow_total counter
eddy_count_by_overflow_total 7
# HELP eddy_engine_sensors Sensors the engine holds state for, as of the last commit (forgotten ones left out).
# TYPE eddy_engine_sensors gauge
eddy_engine_sensors 11
# HELP eddy_open_windows Open (window, sensor, start) windows, as of the last commit.
# TYPE eddy_open_windows gauge
eddy_open_windows 12
# HELP eddy_sensors_forgotten_total Sensors forgotten since eddy started: silent past engine.forget_after, their state deleted and their ids released.
# TYPE eddy_sensors_forgotten_total counter
eddy_sensors_forgotten_total 13
# HELP eddy_future_outliers_held Readings held now, waiting for their sensor's clock.
# TYPE eddy_future_outliers_held gauge
eddy_future_outliers_held 2
# HELP eddy_commits_total Engine commits (results, state and log position).
# TYPE eddy_commits_total counter
eddy_commits_total 5
# HELP eddy_pipeline_inputs_total Log chunks and ticks through the engine (the heartbeat).
# TYPE eddy_pipeline_inputs_total counter
eddy_pipeline_inputs_total 42
# HELP eddy_store_used_bytes Bytes of log and outbox records held (what the budget counts).
# TYPE eddy_store_used_bytes gauge
eddy_store_used_bytes 1000
# HELP eddy_store_budget_bytes The disk budget, storage.max_bytes (0: none).
# TYPE eddy_store_budget_bytes gauge
eddy_store_budget_bytes 0
# HELP eddy_store_disk_bytes Size of the store's files on disk.
# TYPE eddy_store_disk_bytes gauge
eddy_store_disk_bytes 4096
# HELP eddy_store_written_bytes_total Bytes eddy caused to be written to storage (the store and file sinks; /proc/self/io write_bytes).
# TYPE eddy_store_written_bytes_total counter
eddy_store_written_bytes_total 81920
# HELP eddy_store_fsyncs_total Store flushes made durable (fdatasync of the store's files).
# TYPE eddy_store_fsyncs_total counter
eddy_store_fsyncs_total 9
# HELP eddy_store_refused_readings_total Readings refused by the store, by reason.
# TYPE eddy_store_refused_readings_total counter
eddy_store_refused_readings_total{reason="budget"} 0
eddy_store_refused_readings_total{reason="disk"} 2
# HELP eddy_store_free_bytes Free bytes on the store's file system (readings are refused below storage.min_free_bytes).
# TYPE eddy_store_free_bytes gauge
eddy_store_free_bytes 1073741824
# HELP eddy_store_failures_total Times the store failed (a write or flush error, e.g. ENOSPC or EIO) and was opened again in-process.
# TYPE eddy_store_failures_total counter
eddy_store_failures_total 1
# HELP eddy_store_dead_letters Dead letters kept (records no sink could deliver; eddy dead-letters).
# TYPE eddy_store_dead_letters gauge
eddy_store_dead_letters 0
# HELP eddy_store_dead_letter_bytes Bytes of the dead letters kept (bounded by storage.dead_letter_max_bytes).
# TYPE eddy_store_dead_letter_bytes gauge
eddy_store_dead_letter_bytes 0
# HELP eddy_store_dead_letters_dropped_total Dead letters deleted, oldest first, because their tree was full.
# TYPE eddy_store_dead_letters_dropped_total counter
eddy_store_dead_letters_dropped_total 0
# HELP eddy_store_downsample_merged_total Undelivered records merged into coarser (downsampled) ones because the disk budget was full.
# TYPE eddy_store_downsample_merged_total counter
eddy_store_downsample_merged_total 120
# HELP eddy_store_downsample_written_total Downsampled records written in place of the records merged.
# TYPE eddy_store_downsample_written_total counter
eddy_store_downsample_written_total 2
# HELP eddy_store_downsample_redundant_total Overlapping sliding-window records deleted while downsampling (their readings are in the tiling windows merged).
# TYPE eddy_store_downsample_redundant_total counter
eddy_store_downsample_redundant_total 0
# HELP eddy_store_budget_dropped_total Undelivered records deleted for the disk budget (drop_oldest, or downsample past its last level).
# TYPE eddy_store_budget_dropped_total counter
eddy_store_budget_dropped_total 0
# HELP eddy_uplink_delivered_total Records delivered per sink.
# TYPE eddy_uplink_delivered_total counter
eddy_uplink_delivered_total{sink="hub"} 0
# HELP eddy_uplink_retries_total Failed deliveries (retried) per sink.
# TYPE eddy_uplink_retries_total counter
eddy_uplink_retries_total{sink="hub"} 3
# HELP eddy_uplink_rejected_total Records the sink rejected for good (dead letters).
# TYPE eddy_uplink_rejected_total counter
eddy_uplink_rejected_total{sink="hub"} 1
# HELP eddy_uplink_outbox_depth Results committed and not yet delivered.
# TYPE eddy_uplink_outbox_depth gauge
eddy_uplink_outbox_depth{sink="hub"} 5
# HELP eddy_uplink_raw_depth Raw readings committed and not yet delivered.
# TYPE eddy_uplink_raw_depth gauge
eddy_uplink_raw_depth{sink="hub"} 0
# HELP eddy_uplink_outbox_age_seconds Age of the oldest record waiting.
# TYPE eddy_uplink_outbox_age_seconds gauge
eddy_uplink_outbox_age_seconds{sink="hub"} 1.5
# HELP eddy_uplink_offline_seconds How long the sink has been failing (0: online).
# TYPE eddy_uplink_offline_seconds gauge
eddy_uplink_offline_seconds{sink="hub"} 12
# HELP eddy_uplink_refused_seconds How long the hub has refused the sink's credentials, HTTP 401/403/407 (0: it does not).
# TYPE eddy_uplink_refused_seconds gauge
eddy_uplink_refused_seconds{sink="hub"} 7
# HELP eddy_uplink_file_bytes Bytes a file sink keeps on disk, its live and rotated files (0 for other sinks).
# TYPE eddy_uplink_file_bytes gauge
eddy_uplink_file_bytes{sink="hub"} 8192
# HELP eddy_uplink_dropped_total Records dropped before this sink delivered them, by reason.
# TYPE eddy_uplink_dropped_total counter
eddy_uplink_dropped_total{sink="hub",reason="budget"} 4
eddy_uplink_dropped_total{sink="hub",reason="ttl"} 0
eddy_uplink_dropped_total{sink="hub",reason="rejected"} 1
# HELP eddy_uplink_backlog_records Records committed and not yet delivered, results and raw readings (delivered ranges of a live-first drain excluded).
# TYPE eddy_uplink_backlog_records gauge
eddy_uplink_backlog_records{sink="hub"} 5
# HELP eddy_uplink_backlog_drain_seconds Estimated time to deliver what waits at the recent pace (NaN: unknown, the sink is offline or falls behind).
# TYPE eddy_uplink_backlog_drain_seconds gauge
eddy_uplink_backlog_drain_seconds{sink="hub"} NaN
"#;

#[test]
fn writer_renders_a_known_snapshot_to_the_known_text() {
    let rendered = render(&known_status());
    for (line_idx, (got, want)) in rendered.lines().zip(KNOWN_TEXT.lines()).enumerate() {
        assert_eq!(got, want, "line {}", line_idx + 1);
    }
    assert_eq!(rendered, KNOWN_TEXT);
}

#[test]
fn histogram_quantiles_use_bucket_bounds() {
    let status = known_status();
    assert_eq!(status.engine.ingest_latency.quantile_bound(0.5), Some(0.005));
    assert_eq!(status.engine.ingest_latency.quantile_bound(1.0), Some(5.0));
    assert_eq!(status.engine.flush_latency.quantile_bound(0.99), None);
}

#[test]
fn labels_are_escaped() {
    assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

/// `/status` round-trips through the types: what the daemon serves is what `eddy status`
/// reads back, and serving that again gives the same document.
#[test]
fn status_round_trips_through_the_types() {
    let status = known_status();
    let served = serde_json::to_string_pretty(&status).expect("serialises");
    let read: Status = serde_json::from_str(&served).expect("reads back");
    assert_eq!(serde_json::to_string_pretty(&read).expect("serialises"), served);
    // What /status does not carry reads back as zero; everything it carries is kept.
    let mut expected = status;
    expected.sources[0].connections = 0;
    expected.engine.inputs = 0;
    expected.engine.ingest_latency = Histogram::default().snapshot();
    assert_eq!(read, expected);
}

/// The document's keys, in order: the `/status` contract scripts and dashboards read.
#[test]
fn status_keeps_its_keys() {
    let value = serde_json::to_value(known_status()).expect("serialises");
    let keys = |value: &serde_json::Value| -> Vec<String> {
        value.as_object().expect("an object").keys().cloned().collect()
    };
    let mut top = keys(&value);
    top.sort();
    assert_eq!(
        top,
        [
            "clock",
            "device_id",
            "engine",
            "healthy",
            "pipeline_idle_ms",
            "problems",
            "sources",
            "store",
            "uplinks",
            "uptime_secs",
            "version",
            "warnings"
        ]
    );
    let sorted = |mut keys: Vec<String>| {
        keys.sort();
        keys
    };
    assert_eq!(
        sorted(keys(&value["sources"][0])),
        [
            "accepted",
            "auth_failures",
            "broker_dropped",
            "duplicates",
            "name",
            "peers_refused",
            "received",
            "refused",
            "rejected",
            "rejected_by_reason",
            "timed_out",
            "up"
        ]
    );
    assert_eq!(
        sorted(keys(&value["engine"])),
        [
            "commits",
            "count_by_overflow",
            "flush_p99_ms",
            "future_outliers",
            "future_outliers_dropped",
            "future_outliers_held",
            "ingest_p99_ms",
            "late_readings",
            "open_windows",
            "result_latency_count",
            "result_max_ms",
            "result_p50_ms",
            "result_p99_ms",
            "results",
            "sensor_clocks",
            "sensors",
            "sensors_forgotten"
        ]
    );
    assert_eq!(
        sorted(keys(&value["engine"]["sensor_clocks"][0])),
        ["offset_from_median_ms", "offset_ms", "sensor"]
    );
    assert_eq!(
        sorted(keys(&value["store"])),
        [
            "budget_bytes",
            "dead_letter_bytes",
            "dead_letter_max_bytes",
            "dead_letters_kept",
            "disk_bytes",
            "downsample_merged",
            "downsample_redundant",
            "downsample_written",
            "dropped_budget",
            "dropped_dead_letter_bytes",
            "dropped_dead_letters",
            "failures",
            "flushes",
            "free_bytes",
            "last_refusal",
            "refused_budget",
            "refused_disk",
            "used_bytes",
            "written_bytes"
        ]
    );
    assert_eq!(
        sorted(keys(&value["uplinks"][0])),
        [
            "backlog_drain_secs",
            "backlog_oldest_ms",
            "backlog_records",
            "delivered",
            "dropped_budget",
            "dropped_ttl",
            "file_bytes",
            "name",
            "offline_secs",
            "online",
            "outbox_age_ms",
            "outbox_depth",
            "raw_depth",
            "refused_secs",
            "refused_since_ms",
            "refused_status",
            "rejected",
            "retries"
        ]
    );
}
