//! The delivery task of one sink: reads the outbox after the sink's durable cursor, hands the
//! records it takes to the sink, and advances the cursor only after the sink confirmed them.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_sinks::{Delivery, OutRecord, Sink};
use tokio::sync::watch;

use crate::storage::{Store, StoreError};

/// Records handed to a sink per delivery.
const DELIVERY_BATCH: usize = 512;
/// First retry delay after a failed delivery; doubles up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Counters of one sink.
#[derive(Debug, Default)]
pub(crate) struct DeliveryStats {
    /// Records delivered.
    pub(crate) delivered_total: AtomicU64,
    /// Failed delivery attempts (retried).
    pub(crate) retries_total: AtomicU64,
    /// Records the sink permanently rejected (skipped).
    pub(crate) rejected_total: AtomicU64,
}

/// One sink with its cursor.
#[derive(Debug)]
pub(crate) struct Delivering {
    /// The sink.
    pub(crate) sink: Sink,
    /// Record kinds it takes; others are passed over (the cursor still moves past them).
    pub(crate) records: BTreeSet<String>,
    /// The store.
    pub(crate) store: Store,
    /// The sink's published cursor (read by the aggregator to trim the outbox).
    pub(crate) cursor: Arc<Vec<AtomicU64>>,
    /// Index of this sink's cursor.
    pub(crate) cursor_idx: usize,
    /// Counters.
    pub(crate) stats: Arc<DeliveryStats>,
}

impl Delivering {
    /// Delivers until the aggregator stops and everything it committed is delivered, or until
    /// `give_up` fires (shutdown deadline): then what is left stays in the outbox.
    pub(crate) async fn run(
        mut self,
        mut committed: watch::Receiver<u64>,
        mut give_up: watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        let name = self.sink.name().to_owned();
        let mut cursor = self.store.cursor(&name)?;
        self.publish(cursor);
        let mut backoff = MIN_BACKOFF;
        let mut offline_since: Option<tokio::time::Instant> = None;
        loop {
            let target = *committed.borrow_and_update();
            if cursor >= target {
                tokio::select! {
                    changed = committed.changed() => {
                        if changed.is_err() && cursor >= *committed.borrow() {
                            break; // the aggregator stopped and everything is delivered
                        }
                        continue;
                    }
                    _ = give_up.changed() => break,
                }
            }
            // Only what the aggregator has committed *and flushed* (`target`): a sink must never
            // hand out a result that a power cut could still take back.
            let mut entries = self.store.read_outbox_after(cursor, DELIVERY_BATCH)?;
            entries.retain(|(seq, _)| *seq <= target);
            let Some(last_seq) = entries.last().map(|(seq, _)| *seq) else {
                // Entries up to target were trimmed or undecodable: move past them.
                cursor = target;
                self.persist(&name, cursor).await?;
                continue;
            };
            let records: Vec<OutRecord> = entries
                .into_iter()
                .filter(|(_, entry)| self.records.contains(&entry.kind))
                .map(|(seq, entry)| OutRecord {
                    seq,
                    kind: entry.kind,
                    group: entry.group,
                    payload: entry.payload,
                })
                .collect();
            let outcome =
                if records.is_empty() { Delivery::Delivered } else { self.sink.deliver(&records).await };
            let n_records = u64::try_from(records.len()).unwrap_or(u64::MAX);
            match outcome {
                Delivery::Delivered => {
                    self.stats.delivered_total.fetch_add(n_records, Ordering::Relaxed);
                    if let Some(since) = offline_since.take() {
                        tracing::info!(sink = %name, offline_secs = since.elapsed().as_secs(), "Sink is back.");
                    }
                    backoff = MIN_BACKOFF;
                }
                Delivery::Rejected { reason } => {
                    self.stats.rejected_total.fetch_add(n_records, Ordering::Relaxed);
                    tracing::error!(sink = %name, records = n_records, %reason, "Sink rejected records permanently; they are skipped.");
                }
                Delivery::Offline { reason } => {
                    self.stats.retries_total.fetch_add(1, Ordering::Relaxed);
                    if committed.has_changed().is_err() {
                        // Stopping, and the sink is down: what is left stays in the outbox.
                        tracing::warn!(sink = %name, %reason, "Sink unavailable at shutdown; undelivered records stay in the outbox.");
                        break;
                    }
                    if offline_since.is_none() {
                        tracing::warn!(sink = %name, %reason, "Sink is unavailable; records stay in the outbox and are retried.");
                        offline_since = Some(tokio::time::Instant::now());
                    }
                    let delay = jittered(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = give_up.changed() => break,
                    }
                    continue;
                }
            }
            cursor = last_seq;
            self.persist(&name, cursor).await?;
        }
        self.sink.close().await;
        tracing::info!(sink = %name, cursor, "Sink stopped.");
        Ok(())
    }

    async fn persist(&self, name: &str, cursor: u64) -> Result<(), StoreError> {
        // Flushed at once, one fsync per delivery batch: otherwise a sink draining a backlog
        // while no readings flow (nothing else flushing) could leave thousands of delivered
        // records unrecorded, all re-delivered after a crash. Now a crash re-delivers at most
        // the one batch between the sink's confirmation and this flush.
        self.store.set_cursor(name, cursor)?;
        self.store.flush().await?;
        self.publish(cursor);
        Ok(())
    }

    fn publish(&self, cursor: u64) {
        self.cursor[self.cursor_idx].store(cursor, Ordering::Release);
    }
}

/// `base` ± 25 %, so that many gateways that lost the same hub do not retry in lockstep.
fn jittered(base: Duration) -> Duration {
    let factor = 0.75 + fastrand::f64() * 0.5;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use eddy_sinks::ConsoleSink;

    use super::*;
    use crate::storage::{Commit, OutboxEntry};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_sink_delivers_only_what_is_committed_and_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, vec![], vec![]).unwrap();
        let outbox = (1..=5)
            .map(|n| OutboxEntry {
                kind: "window".into(),
                group: "g".into(),
                payload: format!("{{\"sensor\":\"s{n}\"}}").into_bytes(),
            })
            .collect();
        // Five results are in the outbox, but the aggregator has announced (flushed) only 3.
        store.commit(&Commit { outbox, log_pos: 1, next_seq: 6, ..Commit::default() }).unwrap();
        let captured = Captured::default();
        let delivering = Delivering {
            sink: Sink::Console(ConsoleSink::new("console", Box::new(captured.clone()))),
            records: ["window".to_owned()].into(),
            store: store.clone(),
            cursor: Arc::new(vec![AtomicU64::new(0)]),
            cursor_idx: 0,
            stats: Arc::new(DeliveryStats::default()),
        };
        let (committed_tx, committed_rx) = watch::channel(3u64);
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let task = tokio::spawn(delivering.run(committed_rx, give_up_rx));
        // Stop the "aggregator" at once: the sink still delivers what was announced (up to 3),
        // and must not go further.
        drop(committed_tx);
        task.await.unwrap().unwrap();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        for delivered in ["s1", "s2", "s3"] {
            assert!(text.contains(delivered), "{delivered} missing from:\n{text}");
        }
        for held_back in ["s4", "s5"] {
            assert!(!text.contains(held_back), "{held_back} delivered before it was flushed:\n{text}");
        }
        assert_eq!(store.cursor("console").unwrap(), 3);
    }
}
