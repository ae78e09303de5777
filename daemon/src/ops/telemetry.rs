//! What an operator sees of a running eddy: the health verdict, Prometheus metrics and the
//! status document, all read from the counters the components already keep.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eddy_sensors::SourceStats;
use serde::Serialize;
use tokio::sync::watch;

use crate::delivery::sink_set::SinkStatsList;
use crate::stats::{AggregateStats, Committed, IngestStats};
use crate::storage::Store;

/// The pipeline counts as stalled when its heartbeat (chunks and ticks through the engine,
/// one tick every 200 ms when idle) has not moved for this long.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(10);

/// Watches a counter that only moves while the pipeline works.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    last: Mutex<(u64, Instant)>,
}

impl Heartbeat {
    fn new() -> Heartbeat {
        Heartbeat { last: Mutex::new((0, Instant::now())) }
    }

    /// How long ago `count` last changed (as seen by the calls to this).
    pub(crate) fn still_for(&self, count: u64) -> Duration {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else { return Duration::ZERO };
        if last.0 != count {
            *last = (count, now);
        }
        now - last.1
    }
}

/// Everything the endpoint, the status and the watchdog read.
#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) device_id: String,
    pub(crate) started: Instant,
    pub(crate) sources: Vec<Arc<SourceStats>>,
    pub(crate) aggregate: Arc<AggregateStats>,
    pub(crate) ingest: Arc<IngestStats>,
    /// The sinks configured now (a reload changes the set).
    pub(crate) sinks: watch::Receiver<SinkStatsList>,
    pub(crate) store: Store,
    pub(crate) committed: watch::Receiver<Committed>,
    /// True once every source is up, false again when the drain starts.
    pub(crate) sources_up: AtomicBool,
    heartbeat: Heartbeat,
}

/// The `/status` document.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    pub(crate) device_id: String,
    pub(crate) version: &'static str,
    pub(crate) uptime_secs: u64,
    pub(crate) healthy: bool,
    /// Why not healthy (empty when healthy).
    pub(crate) problems: Vec<String>,
    pub(crate) pipeline_idle_ms: u64,
    pub(crate) sources: Vec<SourceStatus>,
    pub(crate) engine: EngineStatus,
    pub(crate) store: StoreStatus,
    pub(crate) uplinks: Vec<UplinkStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SourceStatus {
    pub(crate) name: String,
    /// Listening, its port open, connected to its broker, or running.
    pub(crate) up: bool,
    pub(crate) received: u64,
    pub(crate) accepted: u64,
    /// Accepted readings the store refused (budget full, failed write): nacked, not stored.
    pub(crate) refused: u64,
    /// Resent lines of numbered sessions answered `dup`, not stored again.
    pub(crate) duplicates: u64,
    pub(crate) rejected: u64,
    pub(crate) rejected_by_reason: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct EngineStatus {
    pub(crate) results: u64,
    pub(crate) late_readings: u64,
    pub(crate) commits: u64,
    pub(crate) ingest_p99_ms: Option<f64>,
    pub(crate) flush_p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct StoreStatus {
    pub(crate) used_bytes: u64,
    /// 0: no budget.
    pub(crate) budget_bytes: u64,
    pub(crate) disk_bytes: u64,
    pub(crate) refused_budget: u64,
    pub(crate) refused_disk: u64,
    pub(crate) last_refusal: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct UplinkStatus {
    pub(crate) name: String,
    pub(crate) online: bool,
    pub(crate) offline_secs: u64,
    pub(crate) delivered: u64,
    pub(crate) retries: u64,
    pub(crate) rejected: u64,
    pub(crate) dropped_budget: u64,
    pub(crate) dropped_ttl: u64,
    pub(crate) outbox_depth: u64,
    pub(crate) raw_depth: u64,
    pub(crate) outbox_age_ms: u64,
}

fn now_ms() -> u64 {
    u64::try_from(eddy_sensors::wall_clock_ms()).unwrap_or(0)
}

impl Telemetry {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        device_id: String,
        sources: Vec<Arc<SourceStats>>,
        aggregate: Arc<AggregateStats>,
        ingest: Arc<IngestStats>,
        sinks: watch::Receiver<SinkStatsList>,
        store: Store,
        committed: watch::Receiver<Committed>,
    ) -> Telemetry {
        Telemetry {
            device_id,
            started: Instant::now(),
            sources,
            aggregate,
            ingest,
            sinks,
            store,
            committed,
            sources_up: AtomicBool::new(false),
            heartbeat: Heartbeat::new(),
        }
    }

    /// How long the pipeline's heartbeat has not moved.
    pub(crate) fn pipeline_idle(&self) -> Duration {
        self.heartbeat.still_for(self.aggregate.inputs_total.load(Ordering::Relaxed))
    }

    /// Ok when sources are up, the store takes writes and the pipeline moves; else the reasons.
    pub(crate) fn health(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !self.sources_up.load(Ordering::Relaxed) {
            problems.push("sources are not up (starting or stopping)".to_owned());
        } else {
            for source in self.sources.iter().filter(|source| !source.is_up()) {
                problems.push(format!(
                    "source {} is down (not listening, its port not open, or its broker not connected)",
                    source.name
                ));
            }
        }
        if let Some(refusal) = self.ingest.last_refusal() {
            problems.push(format!("store is not writable: {refusal}"));
        }
        let idle = self.pipeline_idle();
        if idle > STALL_AFTER {
            problems.push(format!("pipeline has made no progress for {} s", idle.as_secs()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn uplinks(&self) -> Vec<UplinkStatus> {
        let committed = *self.committed.borrow();
        let now = now_ms();
        let sinks = self.sinks.borrow().clone();
        sinks
            .iter()
            .map(|(name, stats)| {
                let counters = stats.snapshot(committed, now);
                let since = stats.offline_since_ms.load(Ordering::Relaxed);
                UplinkStatus {
                    name: name.clone(),
                    online: since == 0,
                    offline_secs: if since == 0 { 0 } else { now.saturating_sub(since) / 1000 },
                    delivered: counters.delivered,
                    retries: counters.retries,
                    rejected: counters.rejected,
                    dropped_budget: counters.dropped_budget,
                    dropped_ttl: counters.dropped_ttl,
                    outbox_depth: counters.outbox_depth,
                    raw_depth: counters.raw_depth,
                    outbox_age_ms: counters.outbox_age_ms,
                }
            })
            .collect()
    }

    fn store_status(&self) -> StoreStatus {
        let drops = self.store.drop_stats();
        StoreStatus {
            used_bytes: self.store.used_bytes(),
            budget_bytes: self.store.budget_config().max_bytes.unwrap_or(0),
            disk_bytes: self.store.size_on_disk().unwrap_or(0),
            refused_budget: drops.refused_budget_readings.load(Ordering::Relaxed),
            refused_disk: drops.refused_disk_readings.load(Ordering::Relaxed),
            last_refusal: self.ingest.last_refusal(),
        }
    }

    /// The `/status` document.
    pub(crate) fn status(&self) -> Status {
        let problems = self.health().err().unwrap_or_default();
        let ms = |q: Option<f64>| q.map(|secs| secs * 1000.0);
        Status {
            device_id: self.device_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: self.started.elapsed().as_secs(),
            healthy: problems.is_empty(),
            problems,
            pipeline_idle_ms: u64::try_from(self.pipeline_idle().as_millis()).unwrap_or(u64::MAX),
            sources: self
                .sources
                .iter()
                .map(|source| {
                    let snapshot = source.snapshot();
                    SourceStatus {
                        name: source.name.clone(),
                        up: source.is_up(),
                        received: snapshot.received,
                        accepted: snapshot.accepted,
                        refused: snapshot.refused,
                        duplicates: snapshot.duplicates,
                        rejected: snapshot.rejected_total(),
                        rejected_by_reason: snapshot
                            .rejected
                            .iter()
                            .map(|(reason, n)| (reason.as_str(), *n))
                            .collect(),
                    }
                })
                .collect(),
            engine: EngineStatus {
                results: self.aggregate.results_total.load(Ordering::Relaxed),
                late_readings: self.aggregate.late_total.load(Ordering::Relaxed),
                commits: self.aggregate.commits_total.load(Ordering::Relaxed),
                ingest_p99_ms: ms(self.ingest.ingest_latency.quantile_bound(0.99)),
                flush_p99_ms: ms(self.ingest.flush_latency.quantile_bound(0.99)),
            },
            store: self.store_status(),
            uplinks: self.uplinks(),
        }
    }

    /// `/metrics` in the Prometheus text exposition format (version 0.0.4).
    pub(crate) fn metrics(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(&mut out, "eddy_up", "gauge", "1 when healthy (sources up, store writable, pipeline moving).");
        let _ = writeln!(out, "eddy_up {}", u8::from(self.health().is_ok()));
        family(&mut out, "eddy_uptime_seconds", "gauge", "Seconds since eddy started.");
        let _ = writeln!(out, "eddy_uptime_seconds {}", self.started.elapsed().as_secs());

        let snapshots: Vec<_> = self.sources.iter().map(|s| (label(&s.name), s.snapshot())).collect();
        family(&mut out, "eddy_source_received_total", "counter", "Readings received per source.");
        for (name, s) in &snapshots {
            let _ = writeln!(out, "eddy_source_received_total{{source=\"{name}\"}} {}", s.received);
        }
        family(&mut out, "eddy_source_accepted_total", "counter", "Readings accepted per source.");
        for (name, s) in &snapshots {
            let _ = writeln!(out, "eddy_source_accepted_total{{source=\"{name}\"}} {}", s.accepted);
        }
        family(
            &mut out,
            "eddy_source_refused_total",
            "counter",
            "Accepted readings the store refused per source (disk budget full, failed write): nacked, not stored.",
        );
        for (name, s) in &snapshots {
            let _ = writeln!(out, "eddy_source_refused_total{{source=\"{name}\"}} {}", s.refused);
        }
        family(
            &mut out,
            "eddy_source_duplicates_total",
            "counter",
            "Lines of a numbered TCP session resent after being settled, answered dup, not stored again.",
        );
        for (name, s) in &snapshots {
            let _ = writeln!(out, "eddy_source_duplicates_total{{source=\"{name}\"}} {}", s.duplicates);
        }
        family(
            &mut out,
            "eddy_source_up",
            "gauge",
            "1 while the source can take readings (listening, port open, broker connected).",
        );
        for source in &self.sources {
            let _ = writeln!(
                out,
                "eddy_source_up{{source=\"{}\"}} {}",
                label(&source.name),
                u8::from(source.is_up())
            );
        }
        family(&mut out, "eddy_source_rejected_total", "counter", "Readings rejected per source and reason.");
        for (name, s) in &snapshots {
            for (reason, n) in &s.rejected {
                let _ = writeln!(
                    out,
                    "eddy_source_rejected_total{{source=\"{name}\",reason=\"{}\"}} {n}",
                    reason.as_str()
                );
            }
        }

        self.ingest.ingest_latency.render(
            &mut out,
            "eddy_ingest_latency_seconds",
            "From a group's first reading to its acknowledgement (durable).",
        );
        self.ingest.flush_latency.render(
            &mut out,
            "eddy_flush_latency_seconds",
            "Log append and fsync per group.",
        );

        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        let agg = &self.aggregate;
        counter(
            &mut out,
            "eddy_window_results_total",
            "Results (window, batch) committed to the outbox.",
            agg.results_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "eddy_late_readings_total",
            "Readings that arrived after their window was emitted.",
            agg.late_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "eddy_commits_total",
            "Engine commits (results, state and log position).",
            agg.commits_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "eddy_pipeline_inputs_total",
            "Log chunks and ticks through the engine (the heartbeat).",
            agg.inputs_total.load(Ordering::Relaxed),
        );

        let store = self.store_status();
        gauge(
            &mut out,
            "eddy_store_used_bytes",
            "Bytes of log and outbox records held (what the budget counts).",
            store.used_bytes,
        );
        gauge(
            &mut out,
            "eddy_store_budget_bytes",
            "The disk budget, storage.max_bytes (0: none).",
            store.budget_bytes,
        );
        gauge(&mut out, "eddy_store_disk_bytes", "Size of the store's files on disk.", store.disk_bytes);
        family(
            &mut out,
            "eddy_store_refused_readings_total",
            "counter",
            "Readings refused by the store, by reason.",
        );
        let _ =
            writeln!(out, "eddy_store_refused_readings_total{{reason=\"budget\"}} {}", store.refused_budget);
        let _ = writeln!(out, "eddy_store_refused_readings_total{{reason=\"disk\"}} {}", store.refused_disk);

        let uplinks = self.uplinks();
        let per_uplink = |out: &mut String,
                          name: &str,
                          kind: &str,
                          help: &str,
                          value: &dyn Fn(&UplinkStatus) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for uplink in &uplinks {
                let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", label(&uplink.name), value(uplink));
            }
        };
        per_uplink(&mut out, "eddy_uplink_delivered_total", "counter", "Records delivered per sink.", &|u| {
            u.delivered.to_string()
        });
        per_uplink(
            &mut out,
            "eddy_uplink_retries_total",
            "counter",
            "Failed deliveries (retried) per sink.",
            &|u| u.retries.to_string(),
        );
        per_uplink(
            &mut out,
            "eddy_uplink_rejected_total",
            "counter",
            "Records the sink rejected for good (dead letters).",
            &|u| u.rejected.to_string(),
        );
        per_uplink(
            &mut out,
            "eddy_uplink_outbox_depth",
            "gauge",
            "Results committed and not yet delivered.",
            &|u| u.outbox_depth.to_string(),
        );
        per_uplink(
            &mut out,
            "eddy_uplink_raw_depth",
            "gauge",
            "Raw readings committed and not yet delivered.",
            &|u| u.raw_depth.to_string(),
        );
        #[allow(clippy::cast_precision_loss)]
        per_uplink(
            &mut out,
            "eddy_uplink_outbox_age_seconds",
            "gauge",
            "Age of the oldest record waiting.",
            &|u| (u.outbox_age_ms as f64 / 1000.0).to_string(),
        );
        per_uplink(
            &mut out,
            "eddy_uplink_offline_seconds",
            "gauge",
            "How long the sink has been failing (0: online).",
            &|u| u.offline_secs.to_string(),
        );
        family(
            &mut out,
            "eddy_uplink_dropped_total",
            "counter",
            "Records dropped before this sink delivered them, by reason.",
        );
        for uplink in &uplinks {
            let name = label(&uplink.name);
            let _ = writeln!(
                out,
                "eddy_uplink_dropped_total{{sink=\"{name}\",reason=\"budget\"}} {}",
                uplink.dropped_budget
            );
            let _ = writeln!(
                out,
                "eddy_uplink_dropped_total{{sink=\"{name}\",reason=\"ttl\"}} {}",
                uplink.dropped_ttl
            );
            let _ = writeln!(
                out,
                "eddy_uplink_dropped_total{{sink=\"{name}\",reason=\"rejected\"}} {}",
                uplink.rejected
            );
        }
        out
    }
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Histogram;

    #[test]
    fn histogram_buckets_are_cumulative_and_quantiles_use_bounds() {
        let histogram = Histogram::default();
        for ms in [1, 1, 3, 40, 3000] {
            histogram.observe(Duration::from_millis(ms));
        }
        let mut out = String::new();
        histogram.render(&mut out, "h", "help");
        assert!(out.contains("h_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.05\"} 4\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"5\"} 5\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("h_count 5\n"), "{out}");
        assert_eq!(histogram.quantile_bound(0.5), Some(0.005));
        assert_eq!(histogram.quantile_bound(1.0), Some(5.0));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn heartbeat_measures_time_since_the_counter_moved() {
        let heartbeat = Heartbeat::new();
        assert!(heartbeat.still_for(1) < Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert!(heartbeat.still_for(1) >= Duration::from_millis(60));
        assert!(heartbeat.still_for(2) < Duration::from_millis(50));
    }
}
