//! `/metrics`: every Prometheus metric family declared once in [`FAMILIES`] (name, type, help,
//! how to read it from the [`Status`] snapshot, labels), and one writer that renders the text
//! exposition format (version 0.0.4).
//!
//! Our own writer rather than the `prometheus-client` crate: the counters already live in the
//! components' atomics and are read into one snapshot, so a registry of its own metric types
//! would be a second copy; and it writes OpenMetrics text (`# EOF`, counters typed without
//! their `_total`), which would change what scrapers and the documented names see.

use std::fmt::Write as _;

use eddy_sensors::SourceStatsSnapshot;

use crate::ops::metrics::Kind::{Counter, Gauge, Histogram};
use crate::ops::metrics::Read::{Daemon, DaemonBy, Sink, SinkBy, Source, SourceBy, SourceIf};
use crate::ops::metrics::Value::Count;
use crate::stats::{HistogramSnapshot, SinkCounters, Status};

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One sample's value.
#[derive(Debug)]
enum Value<'a> {
    Count(u64),
    Real(f64),
    Histogram(&'a HistogramSnapshot),
}

/// Where a family's samples come from, and so which labels they carry.
#[derive(Clone, Copy)]
enum Read {
    /// One unlabelled sample.
    Daemon(for<'a> fn(&'a Status) -> Value<'a>),
    /// One sample per value of the label, e.g. `reason`.
    DaemonBy(&'static str, fn(&Status) -> Vec<(&'static str, u64)>),
    /// One sample per source, labelled `source`.
    Source(fn(&SourceStatsSnapshot) -> Value<'_>),
    /// Per source, one sample per value of the second label.
    SourceBy(&'static str, fn(&SourceStatsSnapshot) -> Vec<(&'static str, u64)>),
    /// One sample per source that has the value, labelled `source`.
    SourceIf(fn(&SourceStatsSnapshot) -> Option<u64>),
    /// One sample per sink, labelled `sink`.
    Sink(fn(&SinkCounters) -> Value<'_>),
    /// Per sink, one sample per value of the second label.
    SinkBy(&'static str, fn(&SinkCounters) -> Vec<(&'static str, u64)>),
}

/// A metric family.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    read: Read,
}

/// Every family, in the order of the exposition (README lists these names).
const FAMILIES: &[Family] = &[
    Family {
        name: "eddy_up",
        kind: Gauge,
        help: "1 when healthy (sources up, store writable, pipeline moving).",
        read: Daemon(|status| Count(u64::from(status.healthy))),
    },
    Family {
        name: "eddy_uptime_seconds",
        kind: Gauge,
        help: "Seconds since eddy started.",
        read: Daemon(|status| Count(status.uptime_secs)),
    },
    Family {
        name: "eddy_clock_synchronized",
        kind: Gauge,
        help: "1 while the wall clock is trusted (synchronised, not before the build); else no reading is refused as future_ts.",
        read: Daemon(|status| Count(u64::from(status.clock.synchronized))),
    },
    Family {
        name: "eddy_clock_jumps_total",
        kind: Counter,
        help: "Wall-clock steps of more than 1 s seen (processing time runs on the monotonic clock and ignores them).",
        read: Daemon(|status| Count(status.clock.jumps)),
    },
    Family {
        name: "eddy_source_received_total",
        kind: Counter,
        help: "Readings received per source.",
        read: Source(|source| Count(source.received)),
    },
    Family {
        name: "eddy_source_accepted_total",
        kind: Counter,
        help: "Readings accepted per source.",
        read: Source(|source| Count(source.accepted)),
    },
    Family {
        name: "eddy_source_refused_total",
        kind: Counter,
        help: "Accepted readings the store refused per source (disk budget full, failed write): nacked, not stored.",
        read: Source(|source| Count(source.refused)),
    },
    Family {
        name: "eddy_source_duplicates_total",
        kind: Counter,
        help: "Lines of a numbered TCP session resent after being settled, answered dup, not stored again.",
        read: Source(|source| Count(source.duplicates)),
    },
    Family {
        name: "eddy_source_peers_refused_total",
        kind: Counter,
        help: "TCP connections refused at accept because the peer is not in the source's allow list.",
        read: Source(|source| Count(source.peers_refused)),
    },
    Family {
        name: "eddy_source_auth_failures_total",
        kind: Counter,
        help: "TCP connections closed for a failed TLS handshake, a wrong or missing #auth token, or none in time.",
        read: Source(|source| Count(source.auth_failures)),
    },
    Family {
        name: "eddy_source_timed_out_total",
        kind: Counter,
        help: "TCP connections closed idle (idle_timeout) or with replies left unread (reply_timeout).",
        read: Source(|source| Count(source.timed_out)),
    },
    Family {
        name: "eddy_source_up",
        kind: Gauge,
        help: "1 while the source can take readings (listening, port open, broker connected).",
        read: Source(|source| Count(u64::from(source.up))),
    },
    Family {
        name: "eddy_source_rejected_total",
        kind: Counter,
        help: "Readings rejected per source and reason.",
        read: SourceBy("reason", |source| {
            source.rejected.iter().map(|(reason, n)| (reason.as_str(), *n)).collect()
        }),
    },
    Family {
        name: "eddy_broker_dropped_total",
        kind: Counter,
        help: "Messages the MQTT source's broker says it dropped ($SYS/broker/publish/messages/dropped: all its clients, since it started).",
        read: SourceIf(|source| source.broker_dropped),
    },
    Family {
        name: "eddy_ingest_latency_seconds",
        kind: Histogram,
        help: "From a group's first reading to its acknowledgement (durable).",
        read: Daemon(|status| Value::Histogram(&status.engine.ingest_latency)),
    },
    Family {
        name: "eddy_flush_latency_seconds",
        kind: Histogram,
        help: "Log append and fsync per group.",
        read: Daemon(|status| Value::Histogram(&status.engine.flush_latency)),
    },
    Family {
        name: "eddy_window_result_latency_seconds",
        kind: Histogram,
        help: "From the reading that closed a window (its receipt by the ingest task) to the result committed in the outbox, per window result.",
        read: Daemon(|status| Value::Histogram(&status.engine.result_latency)),
    },
    Family {
        name: "eddy_window_results_total",
        kind: Counter,
        help: "Results (window, batch) committed to the outbox.",
        read: Daemon(|status| Count(status.engine.results)),
    },
    Family {
        name: "eddy_late_readings_total",
        kind: Counter,
        help: "Readings that arrived after their window was emitted.",
        read: Daemon(|status| Count(status.engine.late_readings)),
    },
    Family {
        name: "eddy_future_outliers_total",
        kind: Counter,
        help: "Readings held because their timestamp was further ahead of their sensor's clock than engine.outlier_after.",
        read: Daemon(|status| Count(status.engine.future_outliers)),
    },
    Family {
        name: "eddy_future_outliers_dropped_total",
        kind: Counter,
        help: "Held readings dropped, never confirmed: their sensor held too many, or went idle before its clock reached them.",
        read: Daemon(|status| Count(status.engine.future_outliers_dropped)),
    },
    Family {
        name: "eddy_count_by_overflow_total",
        kind: Counter,
        help: "Readings counted in a window's other bucket: their count_by tag value came past engine.count_by_max_values distinct ones.",
        read: Daemon(|status| Count(status.engine.count_by_overflow)),
    },
    Family {
        name: "eddy_engine_sensors",
        kind: Gauge,
        help: "Sensors the engine holds state for, as of the last commit (forgotten ones left out).",
        read: Daemon(|status| Count(status.engine.sensors)),
    },
    Family {
        name: "eddy_open_windows",
        kind: Gauge,
        help: "Open (window, sensor, start) windows, as of the last commit.",
        read: Daemon(|status| Count(status.engine.open_windows)),
    },
    Family {
        name: "eddy_sensors_forgotten_total",
        kind: Counter,
        help: "Sensors forgotten since eddy started: silent past engine.forget_after, their state deleted and their ids released.",
        read: Daemon(|status| Count(status.engine.sensors_forgotten)),
    },
    Family {
        name: "eddy_future_outliers_held",
        kind: Gauge,
        help: "Readings held now, waiting for their sensor's clock.",
        read: Daemon(|status| Count(status.engine.future_outliers_held)),
    },
    Family {
        name: "eddy_commits_total",
        kind: Counter,
        help: "Engine commits (results, state and log position).",
        read: Daemon(|status| Count(status.engine.commits)),
    },
    Family {
        name: "eddy_pipeline_inputs_total",
        kind: Counter,
        help: "Log chunks and ticks through the engine (the heartbeat).",
        read: Daemon(|status| Count(status.engine.inputs)),
    },
    Family {
        name: "eddy_store_used_bytes",
        kind: Gauge,
        help: "Bytes of log and outbox records held (what the budget counts).",
        read: Daemon(|status| Count(status.store.used_bytes)),
    },
    Family {
        name: "eddy_store_budget_bytes",
        kind: Gauge,
        help: "The disk budget, storage.max_bytes (0: none).",
        read: Daemon(|status| Count(status.store.budget_bytes)),
    },
    Family {
        name: "eddy_store_disk_bytes",
        kind: Gauge,
        help: "Size of the store's files on disk.",
        read: Daemon(|status| Count(status.store.disk_bytes)),
    },
    Family {
        name: "eddy_store_written_bytes_total",
        kind: Counter,
        help: "Bytes eddy caused to be written to storage (the store and file sinks; /proc/self/io write_bytes).",
        read: Daemon(|status| Count(status.store.written_bytes)),
    },
    Family {
        name: "eddy_store_fsyncs_total",
        kind: Counter,
        help: "Store flushes made durable (fdatasync of the store's files).",
        read: Daemon(|status| Count(status.store.flushes)),
    },
    Family {
        name: "eddy_store_refused_readings_total",
        kind: Counter,
        help: "Readings refused by the store, by reason.",
        read: DaemonBy("reason", |status| {
            vec![("budget", status.store.refused_budget), ("disk", status.store.refused_disk)]
        }),
    },
    Family {
        name: "eddy_store_free_bytes",
        kind: Gauge,
        help: "Free bytes on the store's file system (readings are refused below storage.min_free_bytes).",
        read: Daemon(|status| Count(status.store.free_bytes)),
    },
    Family {
        name: "eddy_store_failures_total",
        kind: Counter,
        help: "Times the store failed (a write or flush error, e.g. ENOSPC or EIO) and was opened again in-process.",
        read: Daemon(|status| Count(status.store.failures)),
    },
    Family {
        name: "eddy_store_dead_letters",
        kind: Gauge,
        help: "Dead letters kept (records no sink could deliver; eddy dead-letters).",
        read: Daemon(|status| Count(status.store.dead_letters_kept)),
    },
    Family {
        name: "eddy_store_dead_letter_bytes",
        kind: Gauge,
        help: "Bytes of the dead letters kept (bounded by storage.dead_letter_max_bytes).",
        read: Daemon(|status| Count(status.store.dead_letter_bytes)),
    },
    Family {
        name: "eddy_store_dead_letters_dropped_total",
        kind: Counter,
        help: "Dead letters deleted, oldest first, because their tree was full.",
        read: Daemon(|status| Count(status.store.dropped_dead_letters)),
    },
    Family {
        name: "eddy_store_downsample_merged_total",
        kind: Counter,
        help: "Undelivered records merged into coarser (downsampled) ones because the disk budget was full.",
        read: Daemon(|status| Count(status.store.downsample_merged)),
    },
    Family {
        name: "eddy_store_downsample_written_total",
        kind: Counter,
        help: "Downsampled records written in place of the records merged.",
        read: Daemon(|status| Count(status.store.downsample_written)),
    },
    Family {
        name: "eddy_store_downsample_redundant_total",
        kind: Counter,
        help: "Overlapping sliding-window records deleted while downsampling (their readings are in the tiling windows merged).",
        read: Daemon(|status| Count(status.store.downsample_redundant)),
    },
    Family {
        name: "eddy_store_budget_dropped_total",
        kind: Counter,
        help: "Undelivered records deleted for the disk budget (drop_oldest, or downsample past its last level).",
        read: Daemon(|status| Count(status.store.dropped_budget)),
    },
    Family {
        name: "eddy_uplink_delivered_total",
        kind: Counter,
        help: "Records delivered per sink.",
        read: Sink(|sink| Count(sink.delivered)),
    },
    Family {
        name: "eddy_uplink_retries_total",
        kind: Counter,
        help: "Failed deliveries (retried) per sink.",
        read: Sink(|sink| Count(sink.retries)),
    },
    Family {
        name: "eddy_uplink_rejected_total",
        kind: Counter,
        help: "Records the sink rejected for good (dead letters).",
        read: Sink(|sink| Count(sink.rejected)),
    },
    Family {
        name: "eddy_uplink_outbox_depth",
        kind: Gauge,
        help: "Results committed and not yet delivered.",
        read: Sink(|sink| Count(sink.outbox_depth)),
    },
    Family {
        name: "eddy_uplink_raw_depth",
        kind: Gauge,
        help: "Raw readings committed and not yet delivered.",
        read: Sink(|sink| Count(sink.raw_depth)),
    },
    Family {
        name: "eddy_uplink_outbox_age_seconds",
        kind: Gauge,
        help: "Age of the oldest record waiting.",
        #[allow(clippy::cast_precision_loss)]
        read: Sink(|sink| Value::Real(sink.outbox_age_ms as f64 / 1000.0)),
    },
    Family {
        name: "eddy_uplink_offline_seconds",
        kind: Gauge,
        help: "How long the sink has been failing (0: online).",
        read: Sink(|sink| Count(sink.offline_secs)),
    },
    Family {
        name: "eddy_uplink_refused_seconds",
        kind: Gauge,
        help: "How long the hub has refused the sink's credentials, HTTP 401/403/407 (0: it does not).",
        read: Sink(|sink| Count(sink.refused_secs)),
    },
    Family {
        name: "eddy_uplink_file_bytes",
        kind: Gauge,
        help: "Bytes a file sink keeps on disk, its live and rotated files (0 for other sinks).",
        read: Sink(|sink| Count(sink.file_bytes)),
    },
    Family {
        name: "eddy_uplink_dropped_total",
        kind: Counter,
        help: "Records dropped before this sink delivered them, by reason.",
        read: SinkBy("reason", |sink| {
            vec![("budget", sink.dropped_budget), ("ttl", sink.dropped_ttl), ("rejected", sink.rejected)]
        }),
    },
    // Live first (#17); the backlog's age is `eddy_uplink_outbox_age_seconds`.
    Family {
        name: "eddy_uplink_backlog_records",
        kind: Gauge,
        help: "Records committed and not yet delivered, results and raw readings (delivered ranges of a live-first drain excluded).",
        read: Sink(|sink| Count(sink.backlog_records)),
    },
    Family {
        name: "eddy_uplink_backlog_drain_seconds",
        kind: Gauge,
        help: "Estimated time to deliver what waits at the recent pace (NaN: unknown, the sink is offline or falls behind).",
        #[allow(clippy::cast_precision_loss)]
        read: Sink(|sink| Value::Real(sink.backlog_drain_secs.map_or(f64::NAN, |secs| secs as f64))),
    },
];

/// The exposition text of `status`.
pub(crate) fn render(status: &Status) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for family in FAMILIES {
        write_family(&mut out, family, status);
    }
    out
}

fn write_family(out: &mut String, family: &Family, status: &Status) {
    let name = family.name;
    let kind = match family.kind {
        Counter => "counter",
        Gauge => "gauge",
        Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} {kind}", family.help);
    match family.read {
        Daemon(read) => write_sample(out, name, &[], &read(status)),
        DaemonBy(key, read) => {
            for (value, n) in read(status) {
                write_sample(out, name, &[(key, value)], &Count(n));
            }
        }
        Source(read) => {
            for source in &status.sources {
                write_sample(out, name, &[("source", &label(&source.name))], &read(source));
            }
        }
        SourceIf(read) => {
            for source in &status.sources {
                if let Some(n) = read(source) {
                    write_sample(out, name, &[("source", &label(&source.name))], &Count(n));
                }
            }
        }
        SourceBy(key, read) => {
            for source in &status.sources {
                let source_label = label(&source.name);
                for (value, n) in read(source) {
                    write_sample(out, name, &[("source", &source_label), (key, value)], &Count(n));
                }
            }
        }
        Sink(read) => {
            for sink in &status.uplinks {
                write_sample(out, name, &[("sink", &label(&sink.name))], &read(sink));
            }
        }
        SinkBy(key, read) => {
            for sink in &status.uplinks {
                let sink_label = label(&sink.name);
                for (value, n) in read(sink) {
                    write_sample(out, name, &[("sink", &sink_label), (key, value)], &Count(n));
                }
            }
        }
    }
}

/// One sample line (a histogram: its bucket, sum and count lines); `labels` come escaped.
fn write_sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &Value<'_>) {
    let braced = |extra: Option<(&str, &str)>| {
        let pairs: Vec<String> =
            labels.iter().copied().chain(extra).map(|(key, value)| format!("{key}=\"{value}\"")).collect();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", pairs.join(","))
        }
    };
    match value {
        Value::Count(n) => {
            let _ = writeln!(out, "{name}{} {n}", braced(None));
        }
        Value::Real(x) => {
            let _ = writeln!(out, "{name}{} {x}", braced(None));
        }
        Value::Histogram(histogram) => {
            for (bound, seen) in histogram.cumulative() {
                let le = bound.map_or_else(|| "+Inf".to_owned(), |bound| bound.to_string());
                let _ = writeln!(out, "{name}_bucket{} {seen}", braced(Some(("le", &le))));
            }
            let _ = writeln!(out, "{name}_sum{} {}", braced(None), histogram.sum_secs());
            let _ = writeln!(out, "{name}_count{} {}", braced(None), histogram.count());
        }
    }
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests;
