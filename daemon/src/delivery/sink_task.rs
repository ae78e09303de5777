//! The delivery task of one sink: reads the outbox after the sink's durable cursor, hands the
//! records it takes to the sink, and advances the cursor only after the sink confirmed them.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_common::{wall_clock_ms, Backoff};
use eddy_sinks::{Delivery, OutRecord, Sink};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::DeliveryConfig;
use crate::delivery::live::{LaneDelivery, Pick};
use crate::stats::{Committed, DeliveryStats};
use crate::storage::{DeadLetterEntry, Delivered, Lane, Store, StoreError};

/// First retry delay after a failed delivery; doubles up to the sink's `max_backoff`.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// How long a delivery in flight may still take once eddy is stopping, or once a reload (or a
/// failed store) stops or restarts the sink.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Most commits a split looks back for the newest one holding a record the sink takes.
const LIVE_COMMITS_BACK: usize = 16;
/// Largest commit (in records) whose kinds a split reads; a larger one counts as current.
const LIVE_SCAN_MAX: u64 = 4096;
/// While a sink stays unavailable, its latest failure reason is logged this often.
const STILL_OFFLINE_WARN_EVERY: Duration = Duration::from_secs(30);

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
    /// The sink's published raw-lane cursor (`u64::MAX` when it takes no raw readings).
    pub(crate) raw_cursor: Arc<Vec<AtomicU64>>,
    /// Index of this sink's cursors.
    pub(crate) cursor_idx: usize,
    /// Counters.
    pub(crate) stats: Arc<DeliveryStats>,
    /// Batching, rate cap, retry pacing.
    pub(crate) delivery: DeliveryConfig,
}

impl Delivering {
    /// Delivers until the aggregator stops and everything it committed is delivered, or until
    /// `give_up` fires (shutdown deadline): then what is left stays in the outbox.
    ///
    /// `retire` stops this sink alone, drain-first (a reload removes it or restarts it with new
    /// settings, or the store failed and every sink waits for it to be opened again): no new
    /// delivery starts, the one in flight gets `STOP_GRACE` to finish, and the
    /// cursor of what was confirmed is flushed before the task ends, so that a successor
    /// resumes right after it.
    pub(crate) async fn run(
        mut self,
        mut committed: watch::Receiver<Committed>,
        mut give_up: watch::Receiver<bool>,
        retire: CancellationToken,
    ) -> Result<(), StoreError> {
        let name = self.sink.name().to_owned();
        let mut lanes = Lanes {
            results: LaneDelivery::new(self.store.delivered(Lane::Results, &name)?),
            // A sink that takes no raw readings never holds the raw lane back.
            raw: if self.takes_raw() {
                Some(LaneDelivery::new(self.store.delivered(Lane::Raw, &name)?))
            } else {
                None
            },
        };
        self.publish(Lane::Results, lanes.results.delivered());
        match &lanes.raw {
            Some(raw) => self.publish(Lane::Raw, raw.delivered()),
            None => self.publish(Lane::Raw, &Delivered::prefix(u64::MAX)),
        }
        self.publish_file_bytes();
        let mut drain = DrainMeter::new();
        let mut outage = Outage::new(Backoff::new(MIN_BACKOFF, self.delivery.max_backoff));
        // Dead letters an operator put back (`eddy dead-letters --resend`) go first.
        let resent = self.resend_marked(&name, &committed, &mut give_up, &retire, &mut outage).await?;
        loop {
            if !resent || retire.is_cancelled() {
                break;
            }
            // Dead letters put back while eddy runs (`POST /dead-letters/resend`).
            if self.stats.resend.is_pending()
                && !self.resend_marked(&name, &committed, &mut give_up, &retire, &mut outage).await?
            {
                break;
            }
            let target = *committed.borrow_and_update();
            self.publish_backlog(&lanes, &target, &mut drain)?;
            // Priority: results first; raw readings only when no result is waiting.
            let Some(lane) = lanes.next_lane(&target) else {
                tokio::select! {
                    changed = committed.changed() => {
                        if changed.is_err() && lanes.next_lane(&committed.borrow()).is_none() {
                            break; // the aggregator stopped and everything is delivered
                        }
                        continue;
                    }
                    _ = give_up.changed() => break,
                    () = retire.cancelled() => break,
                    () = self.stats.resend.asked() => continue,
                }
            };
            let state = lanes.get_mut(lane).expect("next_lane names a lane this sink takes");
            // Checked before each delivery, retries included: a hub away for longer than
            // `backlog_after` leaves a backlog that current results then pass.
            self.split_if_behind(&name, lane, state, target.get(lane))?;
            let Some(mut pick) = state.pick(target.get(lane), self.delivery.backlog_share) else { continue };
            let batch_max = self.delivery.batch_max_records;
            let full_batch = u64::try_from(batch_max).unwrap_or(u64::MAX);
            if let Pick::Live { after, .. } = pick {
                if !self.delivery.linger.is_zero()
                    && state.delivered().first_gap().is_none()
                    && target.get(lane) - after < full_batch
                {
                    // Fewer records than a full batch (and no backlog): wait up to `linger`.
                    let until = tokio::time::Instant::now() + self.delivery.linger;
                    loop {
                        if committed.borrow().get(lane) - after >= full_batch {
                            break;
                        }
                        tokio::select! {
                            changed = committed.changed() => if changed.is_err() { break },
                            _ = tokio::time::sleep_until(until) => break,
                            _ = give_up.changed() => break,
                            () = retire.cancelled() => break,
                        }
                    }
                    if retire.is_cancelled() {
                        break;
                    }
                    pick = Pick::Live { after, through: committed.borrow_and_update().get(lane) };
                }
            }
            if state.take_unsaved() {
                // A new split: its start marker is durable before anything above it goes out.
                self.persist(lane, &name, state.delivered()).await?;
            }
            let started = tokio::time::Instant::now();
            // Only what the aggregator has committed *and flushed* (`through` is at most the
            // target): a sink must never hand out a result that a power cut could take back.
            // And no seq past `batch_max_records` above where the batch starts, even where seqs
            // are missing (pages dropped or downsampled): that is the zone the downsampler
            // leaves alone above each delivered segment, so nothing read is merged meanwhile.
            let limit = pick.through().min(pick.after().saturating_add(full_batch));
            let mut entries = self.store.read_lane_after(lane, pick.after(), batch_max)?;
            let next_seq = entries.first().map(|(seq, _)| *seq);
            entries.retain(|(seq, _)| *seq <= limit);
            let Some(last_seq) = entries.last().map(|(seq, _)| *seq) else {
                // Nothing up to the next entry (or to `through`): those seqs were trimmed,
                // dropped, merged or undecodable. Move past them, durably, before reading on.
                let skip_to = next_seq.map_or(pick.through(), |seq| (seq - 1).min(pick.through()));
                state.done(pick, skip_to, 0);
                self.persist(lane, &name, state.delivered()).await?;
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
            let n_records = u64::try_from(records.len()).unwrap_or(u64::MAX);
            let end = self.deliver_batch(records, &name, &committed, &retire).await?;
            if end.delivered {
                outage.back(&name, &self.stats);
            }
            if let Some((failure, first_unfinished)) = end.failure {
                if end.finished > 0 {
                    // The parts before the failing one are done: never send them again.
                    state.done(
                        pick,
                        first_unfinished.saturating_sub(1),
                        u64::try_from(end.finished).unwrap_or(u64::MAX),
                    );
                    self.persist(lane, &name, state.delivered()).await?;
                }
                // The pace of the drain is measured afresh once the sink is back.
                drain = DrainMeter::new();
                if !self.wait_out(&name, failure, &mut outage, &committed, &mut give_up, &retire).await {
                    break;
                }
                continue;
            }
            state.done(pick, last_seq, n_records);
            self.persist(lane, &name, state.delivered()).await?;
            if let Some(rate) = self.delivery.rate_limit {
                // Pace the drain: n records take at least n / rate seconds.
                let n_delivered = f64::from(u32::try_from(n_records).unwrap_or(u32::MAX));
                let pace = Duration::from_secs_f64(n_delivered / rate);
                tokio::select! {
                    _ = tokio::time::sleep_until(started + pace) => {}
                    _ = give_up.changed() => break,
                    () = retire.cancelled() => break,
                }
            }
        }
        self.sink.close().await;
        tracing::info!(sink = %name, cursor = lanes.results.delivered().cursor, "Sink stopped.");
        Ok(())
    }

    /// Hands `records` to the sink part by part: the whole batch first; a batch the hub finds
    /// too large (HTTP 413) is split in halves, sent at once; records that can never go (a
    /// single record answered 413, or named `Oversize`) and batches `Rejected` become dead
    /// letters (not yet durable: the caller flushes). Stops at the first part that is
    /// unavailable or refused, returning how many records at the front are done.
    async fn deliver_batch(
        &mut self,
        records: Vec<OutRecord>,
        name: &str,
        committed: &watch::Receiver<Committed>,
        retire: &CancellationToken,
    ) -> Result<BatchEnd, StoreError> {
        let mut end = BatchEnd { finished: 0, delivered: false, failure: None };
        let mut parts: VecDeque<Part> = VecDeque::new();
        if !records.is_empty() {
            parts.push_back(Part::Send(records));
        }
        while let Some(part) = parts.pop_front() {
            let records = match part {
                Part::Dead(record, reason) => {
                    tracing::error!(sink = %name, seq = record.seq, %reason, "Record can never go out on this sink; it is moved to the dead-letter tree.");
                    self.dead_letter(name, &[record], &reason)?;
                    end.finished += 1;
                    continue;
                }
                Part::Send(records) => records,
            };
            let n_records = u64::try_from(records.len()).unwrap_or(u64::MAX);
            match self.deliver_part(&records, committed, retire).await {
                Delivery::Delivered => {
                    self.stats.delivered_total.fetch_add(n_records, Ordering::Relaxed);
                    end.delivered = true;
                    end.finished += records.len();
                }
                Delivery::Rejected { reason } => {
                    self.dead_letter(name, &records, &reason)?;
                    tracing::error!(sink = %name, records = n_records, %reason, "Sink rejected records permanently; they are moved to the dead-letter tree.");
                    end.finished += records.len();
                }
                Delivery::TooLarge { reason } => {
                    let mut first = records;
                    if first.len() > 1 {
                        let second = first.split_off(first.len() / 2);
                        tracing::debug!(sink = %name, first = first.len(), second = second.len(), %reason, "Batch too large for the hub; sending it in halves.");
                        parts.push_front(Part::Send(second));
                        parts.push_front(Part::Send(first));
                    } else if let Some(record) = first.pop() {
                        parts.push_front(Part::Dead(
                            record,
                            format!("{reason}: record larger than the hub accepts"),
                        ));
                    }
                }
                Delivery::Oversize { records: named } => {
                    let split = split_oversize(records, &named);
                    if split.iter().all(|part| matches!(part, Part::Send(_))) {
                        // The sink named no record of this batch: never loop on that.
                        end.failure = Some((
                            Failure::Offline(format!(
                                "the sink named records too large that it was not given: {named:?}"
                            )),
                            split_first_seq(&split),
                        ));
                        break;
                    }
                    for part in split.into_iter().rev() {
                        parts.push_front(part);
                    }
                }
                Delivery::Unauthorized { status, reason } => {
                    end.failure = Some((Failure::Unauthorized { status, reason }, first_seq(&records)));
                    break;
                }
                Delivery::Offline { reason } => {
                    end.failure = Some((Failure::Offline(reason), first_seq(&records)));
                    break;
                }
            }
        }
        Ok(end)
    }

    /// One call of the sink, cut short once eddy stops or the sink is retired.
    async fn deliver_part(
        &mut self,
        records: &[OutRecord],
        committed: &watch::Receiver<Committed>,
        retire: &CancellationToken,
    ) -> Delivery {
        let mut committed = committed.clone();
        // Once eddy stops (the aggregator is gone), a delivery gets STOP_GRACE more: a
        // blackholed hub must not hold the stop until the shutdown deadline.
        let stopping = async {
            while committed.changed().await.is_ok() {}
            tokio::time::sleep(STOP_GRACE).await;
        };
        let retiring = async {
            retire.cancelled().await;
            tokio::time::sleep(STOP_GRACE).await;
        };
        let outcome = tokio::select! {
            outcome = self.sink.deliver(records) => outcome,
            () = stopping => Delivery::Offline {
                reason: format!("no answer within {STOP_GRACE:?} of the stop"),
            },
            () = retiring => Delivery::Offline {
                reason: format!("no answer within {STOP_GRACE:?} of the sink's retirement"),
            },
        };
        self.publish_file_bytes();
        outcome
    }

    /// Moves `records` to the dead-letter tree with `reason` (durable with the next flush).
    fn dead_letter(&self, name: &str, records: &[OutRecord], reason: &str) -> Result<(), StoreError> {
        let rejected_ms = wall_clock_ms();
        let dead: Vec<DeadLetterEntry> = records
            .iter()
            .map(|record| DeadLetterEntry {
                sink: name.to_owned(),
                seq: record.seq,
                kind: record.kind.clone(),
                reason: reason.to_owned(),
                rejected_ms,
                payload: record.payload.clone(),
            })
            .collect();
        self.store.add_dead_letters(&dead)?;
        self.stats
            .rejected_total
            .fetch_add(u64::try_from(records.len()).unwrap_or(u64::MAX), Ordering::Relaxed);
        Ok(())
    }

    /// After a failed delivery: logs it (see [`Outage`]) and waits out the backoff. False when
    /// the task is to end instead (eddy stops, the sink is retired): what is left stays where
    /// it is (the outbox, or the dead letters marked for resend).
    async fn wait_out(
        &self,
        name: &str,
        failure: Failure,
        outage: &mut Outage,
        committed: &watch::Receiver<Committed>,
        give_up: &mut watch::Receiver<bool>,
        retire: &CancellationToken,
    ) -> bool {
        self.stats.retries_total.fetch_add(1, Ordering::Relaxed);
        let reason = failure.reason();
        if committed.has_changed().is_err() {
            // Stopping, and the sink is down: what is left stays in the outbox.
            tracing::warn!(sink = %name, %reason, "Sink unavailable at shutdown; undelivered records stay in the outbox.");
            return false;
        }
        if retire.is_cancelled() {
            // Reloaded: the successor (if any) resumes from the cursor.
            tracing::warn!(sink = %name, %reason, "Sink unavailable as it is retired (a reload, or the store reopening); undelivered records stay in the outbox.");
            return false;
        }
        let delay = outage.failed(name, &self.stats, failure);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = give_up.changed() => false,
            () = retire.cancelled() => false,
            // A resend request is answered at once, not after the backoff.
            () = self.stats.resend.asked() => true,
        }
    }

    /// Delivers the dead letters of this sink that an operator marked for resend (marking them
    /// first if the local endpoint asked), oldest first, in batches; each is deleted once delivered (a new rejection makes it a new dead letter
    /// with the new reason). False when eddy stops or the sink is retired first: the rest stay
    /// marked for the next start.
    async fn resend_marked(
        &mut self,
        name: &str,
        committed: &watch::Receiver<Committed>,
        give_up: &mut watch::Receiver<bool>,
        retire: &CancellationToken,
        outage: &mut Outage,
    ) -> Result<bool, StoreError> {
        loop {
            if retire.is_cancelled() {
                return Ok(false);
            }
            self.answer_resend_requests(name).await?;
            let marked = self.store.marked_dead_letters(name, self.delivery.batch_max_records)?;
            if marked.is_empty() {
                return Ok(true);
            }
            let keys: Vec<u64> = marked.iter().map(|(key, _)| *key).collect();
            let records: Vec<OutRecord> = marked
                .into_iter()
                .map(|(_, letter)| OutRecord {
                    seq: letter.seq,
                    kind: letter.kind,
                    group: String::new(),
                    payload: letter.payload,
                })
                .collect();
            let end = self.deliver_batch(records, name, committed, retire).await?;
            if end.finished > 0 {
                self.store.remove_dead_letters(&keys[..end.finished])?;
                self.store.flush().await?;
                tracing::info!(sink = %name, records = end.finished, "Dead letters resent (or dead-lettered again).");
            }
            if end.delivered {
                outage.back(name, &self.stats);
            }
            if let Some((failure, _)) = end.failure {
                if !self.wait_out(name, failure, outage, committed, give_up, retire).await {
                    return Ok(false);
                }
            }
        }
    }

    /// Marks this sink's dead letters for resend if the local endpoint asked, and answers how
    /// many (once the marks are flushed).
    async fn answer_resend_requests(&self, name: &str) -> Result<(), StoreError> {
        let replies = self.stats.resend.take();
        if replies.is_empty() {
            return Ok(());
        }
        let marked = self.store.mark_dead_letters_for_resend(|sink| sink == name).await;
        let answer = match &marked {
            Ok(counts) => Ok(counts.iter().map(|(_, count)| *count).sum()),
            Err(error) => Err(error.to_string()),
        };
        if let Ok(count) = answer {
            tracing::info!(sink = %name, dead_letters = count, "Dead letters queued for resend.");
        }
        for reply in replies {
            let _ = reply.send(answer.clone());
        }
        marked.map(|_| ())
    }

    fn takes_raw(&self) -> bool {
        self.records.contains("raw")
    }

    /// When `lane` is behind (its oldest record after the delivered head was committed more
    /// than `backlog_after` before its newest), or a split's current part has delivered
    /// nothing yet, splits it at the lane's newest commit (see [`live`]).
    /// `backlog_share = 1.0` never splits: the backlog goes first, in order.
    ///
    /// [`live`]: crate::delivery::live
    fn split_if_behind(
        &self,
        name: &str,
        lane: Lane,
        state: &mut LaneDelivery,
        target: u64,
    ) -> Result<(), StoreError> {
        let head = state.delivered().head();
        if self.delivery.backlog_share >= 1.0 || head >= target || !state.may_split() {
            return Ok(());
        }
        // A split whose current part has delivered nothing yet (the hub still away) follows
        // the newest commit at every try: what the hub gets first when it is back is current.
        let moves = state.split_unsent();
        if !moves {
            // Both times are of the processing clock that stamped the commits: a wall clock
            // set late (a gateway without a battery-backed clock) does not make every record
            // old. With no new commit there is nothing current to send first either.
            let (Some(oldest_ms), Some(newest_ms)) =
                (self.store.commit_time_after(lane, head)?, self.store.commit_time_after(lane, target - 1)?)
            else {
                return Ok(());
            };
            let behind_ms = i64::try_from(self.delivery.backlog_after.as_millis()).unwrap_or(i64::MAX);
            if newest_ms.saturating_sub(oldest_ms) <= behind_ms {
                return Ok(());
            }
        }
        let Some(live_from) = self.live_start(lane, target, head)? else { return Ok(()) };
        if state.split(live_from) {
            let backlog = state.delivered().undelivered_through(live_from - 1);
            if moves {
                tracing::debug!(sink = %name, ?lane, live_from, backlog, "Still behind: current results now start at the newest commit.");
            } else {
                tracing::info!(sink = %name, ?lane, live_from, backlog, share = self.delivery.backlog_share, "Sink is behind: current results go first, the backlog drains beside them, oldest first.");
            }
        }
        Ok(())
    }

    /// Where the current part of a split starts: the newest commit holding a record this sink
    /// takes, looking back at most [`LIVE_COMMITS_BACK`] commits above `head`, committed at
    /// most twice `backlog_after` before the newest (the newest commit may hold only
    /// micro-batch results, for a sink of windows: starting there, the hub's first records
    /// after an outage would be the backlog's); the newest commit when none of them does. A
    /// commit of more than [`LIVE_SCAN_MAX`] records is taken as it is.
    fn live_start(&self, lane: Lane, target: u64, head: u64) -> Result<Option<u64>, StoreError> {
        let Some(newest) = self.store.commit_start(lane, target)? else { return Ok(None) };
        let Some(newest_ms) = self.store.commit_time_after(lane, newest - 1)? else {
            return Ok(Some(newest));
        };
        let current_ms =
            i64::try_from(self.delivery.backlog_after.as_millis().saturating_mul(2)).unwrap_or(i64::MAX);
        let (mut start, mut through) = (newest, target);
        for _ in 0..LIVE_COMMITS_BACK {
            if start <= head
                || self
                    .store
                    .commit_time_after(lane, start - 1)?
                    .is_none_or(|ms| newest_ms.saturating_sub(ms) > current_ms)
            {
                break;
            }
            let len = through - start + 1;
            if len > LIVE_SCAN_MAX {
                return Ok(Some(start));
            }
            let entries =
                self.store.read_lane_after(lane, start - 1, usize::try_from(len).unwrap_or(usize::MAX))?;
            if entries.iter().any(|(seq, entry)| *seq <= through && self.records.contains(&entry.kind)) {
                return Ok(Some(start));
            }
            through = start - 1;
            match self.store.commit_start(lane, through)? {
                Some(earlier) => start = earlier,
                None => break,
            }
        }
        Ok(Some(newest))
    }

    /// Stores what `lane` has delivered (cursor and ranges, one batch) and publishes the
    /// cursor (the prefix, which trimming follows).
    async fn persist(&self, lane: Lane, name: &str, delivered: &Delivered) -> Result<(), StoreError> {
        // Flushed at once, one fsync per delivery batch: otherwise a sink draining a backlog
        // while no readings flow (nothing else flushing) could leave thousands of delivered
        // records unrecorded, all re-delivered after a crash. Now a crash re-delivers at most
        // the one batch between the sink's confirmation and this flush.
        self.store.set_delivered(lane, name, delivered)?;
        self.store.flush().await?;
        self.publish(lane, delivered);
        Ok(())
    }

    /// What waits, for `/status` and `/metrics`: per lane, the records delivered above the
    /// cursor; the commit time of the oldest undelivered record; the estimated time to drain.
    fn publish_backlog(
        &self,
        lanes: &Lanes,
        target: &Committed,
        drain: &mut DrainMeter,
    ) -> Result<(), StoreError> {
        let mut undelivered = 0;
        let mut oldest_ms: Option<i64> = None;
        for (lane, state) in [(Lane::Results, Some(&lanes.results)), (Lane::Raw, lanes.raw.as_ref())] {
            let Some(state) = state else { continue };
            let waiting = state.delivered().undelivered_through(target.get(lane));
            if waiting > 0 {
                undelivered += waiting;
                if let Some(ms) = self.store.commit_time_after(lane, state.delivered().cursor)? {
                    oldest_ms = Some(oldest_ms.map_or(ms, |oldest| oldest.min(ms)));
                }
            }
        }
        self.stats
            .oldest_waiting_ms
            .store(oldest_ms.map_or(0, |ms| u64::try_from(ms).unwrap_or(0)), Ordering::Relaxed);
        self.stats.backlog_drain.set(drain.observe(tokio::time::Instant::now(), undelivered));
        Ok(())
    }

    /// A file sink's bytes on disk, as of its last delivery (or rotation).
    fn publish_file_bytes(&self) {
        if let Some(bytes) = self.sink.disk_bytes() {
            self.stats.file_bytes.store(bytes, Ordering::Relaxed);
        }
    }

    fn publish(&self, lane: Lane, delivered: &Delivered) {
        let cursor = delivered.cursor;
        // Above the raw lane's `u64::MAX` (a sink that takes none) nothing is counted.
        let above: u64 = delivered.above.iter().map(|&(lo, hi)| (hi + 1).saturating_sub(lo)).sum();
        self.stats.delivered_above[usize::from(lane == Lane::Raw)].store(above, Ordering::Relaxed);
        match lane {
            Lane::Results => {
                self.cursor[self.cursor_idx].store(cursor, Ordering::Release);
                self.stats.cursor.store(cursor, Ordering::Relaxed);
            }
            Lane::Raw => {
                self.raw_cursor[self.cursor_idx].store(cursor, Ordering::Release);
                self.stats.raw_cursor.store(cursor, Ordering::Relaxed);
            }
        }
    }
}

/// What the sink delivered of each lane it takes.
struct Lanes {
    results: LaneDelivery,
    /// `None`: the sink takes no raw readings.
    raw: Option<LaneDelivery>,
}

impl Lanes {
    fn get_mut(&mut self, lane: Lane) -> Option<&mut LaneDelivery> {
        match lane {
            Lane::Results => Some(&mut self.results),
            Lane::Raw => self.raw.as_mut(),
        }
    }

    /// The lane to deliver next: results while any is waiting (current or backlog), then raw
    /// readings.
    fn next_lane(&self, target: &Committed) -> Option<Lane> {
        if self.results.waiting(target.results) {
            Some(Lane::Results)
        } else if self.raw.as_ref().is_some_and(|raw| raw.waiting(target.raw)) {
            Some(Lane::Raw)
        } else {
            None
        }
    }
}

/// Shortest span between two samples of the drain rate.
const DRAIN_SAMPLE: Duration = Duration::from_secs(1);
/// Weight of a new sample in the drain rate's moving average.
const DRAIN_WEIGHT: f64 = 0.3;

/// The estimated time to drain what waits: the undelivered records over the rate at which
/// they shrink (deliveries minus new commits), an exponentially weighted moving average of
/// samples at least [`DRAIN_SAMPLE`] apart.
#[derive(Debug)]
struct DrainMeter {
    /// The last sample: when, and how many records waited (`None`: none yet).
    sampled: Option<(tokio::time::Instant, u64)>,
    /// Records/s by which what waits shrinks (`None`: no rate yet).
    rate: Option<f64>,
}

impl DrainMeter {
    fn new() -> DrainMeter {
        DrainMeter { sampled: None, rate: None }
    }

    /// Takes `undelivered` at `now` into account; the estimate (`None`: unknown — no sample
    /// yet, or what waits does not shrink).
    #[allow(clippy::cast_precision_loss)]
    fn observe(&mut self, now: tokio::time::Instant, undelivered: u64) -> Option<Duration> {
        match self.sampled {
            None => self.sampled = Some((now, undelivered)),
            Some((at, before)) if now.saturating_duration_since(at) >= DRAIN_SAMPLE => {
                let span = now.saturating_duration_since(at).as_secs_f64();
                let sample = (before as f64 - undelivered as f64) / span;
                self.rate = Some(self.rate.map_or(sample, |rate| rate + DRAIN_WEIGHT * (sample - rate)));
                self.sampled = Some((now, undelivered));
            }
            Some(_) => {}
        }
        if undelivered == 0 {
            return Some(Duration::ZERO);
        }
        let secs = undelivered as f64 / self.rate.filter(|rate| *rate > 0.0)?;
        Duration::try_from_secs_f64(secs).ok()
    }
}

/// Why the rest of a batch was not delivered: retry it later.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The sink is unavailable.
    Offline(String),
    /// The hub refuses our credentials (HTTP 401, 403, 407).
    Unauthorized { status: u16, reason: String },
}

impl Failure {
    fn reason(&self) -> &str {
        match self {
            Failure::Offline(reason) | Failure::Unauthorized { reason, .. } => reason,
        }
    }
}

/// How a batch went.
#[derive(Debug)]
struct BatchEnd {
    /// Records at the front of the batch that are done: delivered or dead-lettered.
    finished: usize,
    /// Whether any part was delivered (the sink is back).
    delivered: bool,
    /// What stopped the rest, and the seq of the first record not done.
    failure: Option<(Failure, u64)>,
}

/// A part of a batch still to handle.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    /// To send.
    Send(Vec<OutRecord>),
    /// To dead-letter, with why.
    Dead(OutRecord, String),
}

fn first_seq(records: &[OutRecord]) -> u64 {
    records.first().map_or(0, |record| record.seq)
}

fn split_first_seq(parts: &[Part]) -> u64 {
    match parts.first() {
        Some(Part::Send(records)) => first_seq(records),
        Some(Part::Dead(record, _)) => record.seq,
        None => 0,
    }
}

/// `records` in order, the ones `named` as too large set apart to be dead-lettered with their
/// reasons, the runs between them to be sent.
fn split_oversize(records: Vec<OutRecord>, named: &[(u64, String)]) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut run = Vec::new();
    for record in records {
        match named.iter().find(|(seq, _)| *seq == record.seq) {
            Some((_, reason)) => {
                if !run.is_empty() {
                    parts.push(Part::Send(std::mem::take(&mut run)));
                }
                parts.push(Part::Dead(record, reason.clone()));
            }
            None => run.push(record),
        }
    }
    if !run.is_empty() {
        parts.push(Part::Send(run));
    }
    parts
}

/// A sink's failing deliveries: the backoff, and what was logged and published of the outage.
/// Logged when it starts, again at most every [`STILL_OFFLINE_WARN_EVERY`], and when the sink
/// is back; a refusal of our credentials is logged and published (`/health`, `/status`) apart.
struct Outage {
    backoff: Backoff,
    offline_since: Option<tokio::time::Instant>,
    refused_since: Option<tokio::time::Instant>,
    last_warned: tokio::time::Instant,
}

impl Outage {
    fn new(backoff: Backoff) -> Outage {
        Outage { backoff, offline_since: None, refused_since: None, last_warned: tokio::time::Instant::now() }
    }

    /// A delivery went through.
    fn back(&mut self, name: &str, stats: &DeliveryStats) {
        stats.offline_since_ms.store(0, Ordering::Relaxed);
        stats.refused_since_ms.store(0, Ordering::Relaxed);
        self.refused_since = None;
        if let Some(since) = self.offline_since.take() {
            tracing::info!(sink = %name, offline_secs = since.elapsed().as_secs(), "Sink is back.");
        }
        self.backoff.reset();
    }

    /// A delivery failed: logs it as due and returns the delay before the next try.
    fn failed(&mut self, name: &str, stats: &DeliveryStats, failure: Failure) -> Duration {
        let now = tokio::time::Instant::now();
        let wall_ms = u64::try_from(wall_clock_ms()).unwrap_or(1).max(1);
        let first = self.offline_since.is_none();
        if first {
            self.offline_since = Some(now);
            stats.offline_since_ms.store(wall_ms, Ordering::Relaxed);
        }
        let offline_secs = self.offline_since.map_or(0, |since| (now - since).as_secs());
        let due = now - self.last_warned >= STILL_OFFLINE_WARN_EVERY;
        match failure {
            Failure::Unauthorized { status, reason } => {
                stats.refused_status.store(u64::from(status), Ordering::Relaxed);
                if self.refused_since.is_none() {
                    self.refused_since = Some(now);
                    stats.refused_since_ms.store(wall_ms, Ordering::Relaxed);
                    tracing::warn!(sink = %name, %reason, "The hub refuses our credentials; records stay in the outbox and are retried until it takes them (check the sink's token).");
                    self.last_warned = now;
                } else if due {
                    tracing::warn!(sink = %name, %reason, refused_secs = self.refused_since.map_or(0, |since| (now - since).as_secs()), "The hub still refuses our credentials.");
                    self.last_warned = now;
                } else {
                    tracing::debug!(sink = %name, %reason, "Credentials refused again; retrying.");
                }
            }
            Failure::Offline(reason) => {
                // Another failure: whether the credentials are good is not known any more.
                self.refused_since = None;
                stats.refused_since_ms.store(0, Ordering::Relaxed);
                if first {
                    tracing::warn!(sink = %name, %reason, "Sink is unavailable; records stay in the outbox and are retried.");
                    self.last_warned = now;
                } else if due {
                    // The reason can change during an outage (refused, then 503, then a
                    // timeout): say it again now and then, not at every retry.
                    tracing::warn!(sink = %name, %reason, offline_secs, "Sink is still unavailable.");
                    self.last_warned = now;
                } else {
                    tracing::debug!(sink = %name, %reason, "Delivery failed again; retrying.");
                }
            }
        }
        self.backoff.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use eddy_sinks::{ConsoleSink, FakeHub, FakeSink};

    use super::*;
    use crate::storage::{Commit, OutboxEntry, RawCommit};

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

    /// A store whose outbox holds `n` window results, seqs 1 to `n`.
    fn store_with_results(dir: &std::path::Path, n: u64) -> Store {
        let store = Store::open(dir, 1 << 20, vec![], vec![]).unwrap();
        let outbox = (1..=n)
            .map(|idx| OutboxEntry {
                kind: "window".into(),
                group: "g".into(),
                payload: format!("{{\"sensor\":\"s{idx}\"}}").into_bytes(),
            })
            .collect();
        store.commit(&Commit { outbox, log_pos: 1, next_seq: n + 1, ..Commit::default() }).unwrap();
        store
    }

    #[tokio::test]
    async fn a_sink_delivers_only_what_is_committed_and_flushed() {
        let dir = tempfile::tempdir().unwrap();
        // Five results are in the outbox, but the aggregator has announced (flushed) only 3.
        let store = store_with_results(dir.path(), 5);
        let captured = Captured::default();
        let delivering = Delivering {
            sink: Sink::Console(ConsoleSink::new("console", Box::new(captured.clone()))),
            records: ["window".to_owned()].into(),
            store: store.clone(),
            cursor: Arc::new(vec![AtomicU64::new(0)]),
            raw_cursor: Arc::new(vec![AtomicU64::new(0)]),
            cursor_idx: 0,
            stats: Arc::new(DeliveryStats::default()),
            delivery: DeliveryConfig::default(),
        };
        let (committed_tx, committed_rx) = watch::channel(Committed { results: 3, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let task = tokio::spawn(delivering.run(committed_rx, give_up_rx, CancellationToken::new()));
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

    /// `rate_limit` paces a drain: 60 records at 100/s in batches of 20 take at least 0.4 s
    /// (two full pauses before the third batch), and every record still arrives once.
    #[tokio::test]
    async fn rate_limit_paces_the_drain() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_results(dir.path(), 60);
        let captured = Captured::default();
        let stats = Arc::new(DeliveryStats::default());
        let delivering = Delivering {
            sink: Sink::Console(ConsoleSink::new("console", Box::new(captured.clone()))),
            records: ["window".to_owned()].into(),
            store: store.clone(),
            cursor: Arc::new(vec![AtomicU64::new(0)]),
            raw_cursor: Arc::new(vec![AtomicU64::new(u64::MAX)]),
            cursor_idx: 0,
            stats: stats.clone(),
            delivery: DeliveryConfig {
                batch_max_records: 20,
                rate_limit: Some(100.0),
                ..DeliveryConfig::default()
            },
        };
        let (committed_tx, committed_rx) = watch::channel(Committed { results: 60, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let started = std::time::Instant::now();
        let task = tokio::spawn(delivering.run(committed_rx, give_up_rx, CancellationToken::new()));
        drop(committed_tx);
        task.await.unwrap().unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(400), "60 records at 100/s took only {elapsed:?}");
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_eq!(stats.delivered_total.load(Ordering::Relaxed), 60);
        assert!(!captured.0.lock().unwrap().is_empty());
        assert_eq!(store.cursor("console").unwrap(), 60);
    }

    /// A retired sink (a reload removes or restarts it) ends while results still wait and the
    /// aggregator still runs: it starts no new delivery, and its stored cursor is exactly what
    /// it delivered, so a successor neither skips nor repeats a record.
    #[tokio::test]
    async fn a_retired_sink_stops_after_its_delivery_with_its_cursor_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_results(dir.path(), 60);
        let delivering = |stats: Arc<DeliveryStats>| Delivering {
            sink: Sink::Console(ConsoleSink::new("console", Box::new(Captured::default()))),
            records: ["window".to_owned()].into(),
            store: store.clone(),
            cursor: Arc::new(vec![AtomicU64::new(0)]),
            raw_cursor: Arc::new(vec![AtomicU64::new(u64::MAX)]),
            cursor_idx: 0,
            stats,
            // 20 records, then a 2 s pause: the retirement lands in the pause.
            delivery: DeliveryConfig {
                batch_max_records: 20,
                rate_limit: Some(10.0),
                ..DeliveryConfig::default()
            },
        };
        // The aggregator keeps running: the sender stays alive through the test.
        let (_committed_tx, committed_rx) = watch::channel(Committed { results: 60, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);

        // Retired before it starts: it delivers nothing.
        let stats = Arc::new(DeliveryStats::default());
        let retire = CancellationToken::new();
        retire.cancel();
        tokio::spawn(delivering(stats.clone()).run(committed_rx.clone(), give_up_rx.clone(), retire))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stats.delivered_total.load(Ordering::Relaxed), 0);
        assert_eq!(store.cursor("console").unwrap(), 0);

        // Retired after its first delivery: it ends at once, 40 records still waiting.
        let stats = Arc::new(DeliveryStats::default());
        let retire = CancellationToken::new();
        let task = tokio::spawn(delivering(stats.clone()).run(committed_rx, give_up_rx, retire.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stats.cursor.load(Ordering::Relaxed) < 20 {
            assert!(std::time::Instant::now() < deadline, "the first batch was never delivered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        retire.cancel();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("a retired sink ends without waiting out its pause")
            .unwrap()
            .unwrap();
        assert_eq!(stats.delivered_total.load(Ordering::Relaxed), 20);
        assert_eq!(store.cursor("console").unwrap(), 20, "the stored cursor is what was delivered");
    }

    /// Commits results `first ..= first + n - 1` at processing time `clock_ms` (the commit
    /// time live first reads); returns the last seq.
    fn commit_results(store: &Store, first: u64, n: u64, clock_ms: i64) -> u64 {
        commit_kind(store, first, n, clock_ms, "window")
    }

    /// [`commit_results`] of records of `kind`.
    fn commit_kind(store: &Store, first: u64, n: u64, clock_ms: i64, kind: &str) -> u64 {
        let outbox = (first..first + n)
            .map(|seq| OutboxEntry {
                kind: kind.into(),
                group: "g".into(),
                payload: format!("{{\"seq\":{seq}}}").into_bytes(),
            })
            .collect();
        store
            .commit(&Commit { outbox, log_pos: first, next_seq: first + n, clock_ms, ..Commit::default() })
            .unwrap();
        first + n - 1
    }

    /// A backlog from an outage (`1..=backlog`, committed an hour ago) and the newest commit
    /// (`n_live` results, now).
    fn store_after_outage(dir: &std::path::Path, backlog: u64, n_live: u64) -> (Store, u64) {
        let store = Store::open(dir, 1 << 24, vec![], vec![]).unwrap();
        commit_results(&store, 1, backlog, wall_clock_ms() - 3_600_000);
        let target = commit_results(&store, backlog + 1, n_live, wall_clock_ms());
        (store, target)
    }

    /// Live first with a fake hub; `batch_max_records` 100, the default share (0.5).
    fn delivering_to(store: &Store, hub: &FakeHub, stats: &Arc<DeliveryStats>) -> Delivering {
        Delivering {
            sink: Sink::Fake(FakeSink::new("hub", hub.clone())),
            records: ["window".to_owned()].into(),
            store: store.clone(),
            cursor: Arc::new(vec![AtomicU64::new(0)]),
            raw_cursor: Arc::new(vec![AtomicU64::new(u64::MAX)]),
            cursor_idx: 0,
            stats: stats.clone(),
            delivery: DeliveryConfig {
                batch_max_records: 100,
                max_backoff: Duration::from_millis(200),
                ..DeliveryConfig::default()
            },
        }
    }

    /// Waits (10 s at most) until `condition` holds.
    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs `delivering` with `target` committed and the aggregator stopped: it ends once
    /// everything is delivered.
    async fn drain(delivering: Delivering, target: u64) {
        let (committed_tx, committed_rx) = watch::channel(Committed { results: target, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let task = tokio::spawn(delivering.run(committed_rx, give_up_rx, CancellationToken::new()));
        drop(committed_tx);
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("the drain ends").unwrap().unwrap();
    }

    fn range(lo: u64, hi: u64) -> Vec<u64> {
        (lo..=hi).collect()
    }

    /// After an outage the newest commit goes first; with nothing current waiting any more,
    /// the backlog gets every delivery, oldest first; each record arrives once and the gap
    /// closes into a plain cursor.
    #[tokio::test]
    async fn after_an_outage_the_newest_commit_goes_first_then_the_backlog_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, target) = store_after_outage(dir.path(), 1000, 10);
        let hub = FakeHub::default();
        let stats = Arc::new(DeliveryStats::default());
        drain(delivering_to(&store, &hub, &stats), target).await;
        let batches = hub.batches();
        assert_eq!(batches[0], range(1001, 1010), "the current results go first");
        assert_eq!(batches[1], range(1, 100), "then the backlog, oldest first");
        assert_eq!(hub.seqs().len(), 1010);
        let mut seqs = hub.seqs();
        seqs.sort_unstable();
        assert_eq!(seqs, range(1, 1010), "every record once");
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(1010));
        assert_eq!(store.cursor("hub").unwrap(), 1010);
        assert_eq!(stats.delivered_above[0].load(Ordering::Relaxed), 0);
    }

    /// With current results and the backlog both waiting, `backlog_share = 0.5` alternates
    /// full batches of each; 1.0 sends the backlog first, in order.
    #[tokio::test]
    async fn the_backlog_share_is_kept_while_both_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (store, target) = store_after_outage(dir.path(), 300, 300);
        let hub = FakeHub::default();
        let stats = Arc::new(DeliveryStats::default());
        drain(delivering_to(&store, &hub, &stats), target).await;
        let firsts: Vec<u64> = hub.batches().iter().map(|batch| batch[0]).collect();
        assert_eq!(firsts, vec![301, 1, 401, 101, 501, 201]);
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(600));

        let dir = tempfile::tempdir().unwrap();
        let (store, target) = store_after_outage(dir.path(), 300, 300);
        let hub = FakeHub::default();
        let mut delivering = delivering_to(&store, &hub, &stats);
        delivering.delivery.backlog_share = 1.0;
        drain(delivering, target).await;
        assert_eq!(hub.seqs(), range(1, 600), "the old order");
    }

    /// A crash (the task aborted) mid-drain: the stored set is exactly what the hub took, and
    /// a new task from it delivers the rest, each record once.
    #[tokio::test]
    async fn a_new_task_resumes_a_drain_from_the_stored_set() {
        let dir = tempfile::tempdir().unwrap();
        let (store, target) = store_after_outage(dir.path(), 1000, 10);
        let hub = FakeHub::default();
        hub.away_after(3);
        let stats = Arc::new(DeliveryStats::default());
        let (_committed_tx, committed_rx) = watch::channel(Committed { results: target, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let task = tokio::spawn(delivering_to(&store, &hub, &stats).run(
            committed_rx,
            give_up_rx,
            CancellationToken::new(),
        ));
        until("the hub went away", || stats.retries_total.load(Ordering::Relaxed) > 0).await;
        task.abort();
        let _ = task.await;
        let stored = store.delivered(Lane::Results, "hub").unwrap();
        assert_eq!(hub.batches(), vec![range(1001, 1010), range(1, 100), range(101, 200)]);
        assert_eq!(stored, Delivered { cursor: 200, above: vec![(1001, 1010)] });
        assert_eq!(store.cursor("hub").unwrap(), 200, "the published prefix");

        let second = FakeHub::default();
        drain(delivering_to(&store, &second, &stats), target).await;
        assert_eq!(second.seqs(), range(201, 1000));
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(1010));
    }

    /// A second outage during a drain: the newest commit after it goes first again, then both
    /// gaps drain, the older first; nothing is sent twice.
    #[tokio::test]
    async fn a_second_outage_during_a_drain_opens_a_second_gap() {
        let dir = tempfile::tempdir().unwrap();
        let (store, target) = store_after_outage(dir.path(), 300, 10);
        let hub = FakeHub::default();
        hub.away_after(2);
        let stats = Arc::new(DeliveryStats::default());
        let (committed_tx, committed_rx) = watch::channel(Committed { results: target, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let task = tokio::spawn(delivering_to(&store, &hub, &stats).run(
            committed_rx,
            give_up_rx,
            CancellationToken::new(),
        ));
        until("the hub went away", || stats.retries_total.load(Ordering::Relaxed) > 0).await;
        assert_eq!(hub.batches(), vec![range(301, 310), range(1, 100)]);
        // The outage lasts: what came in it is old by now, then a current commit.
        commit_results(&store, 311, 90, wall_clock_ms() - 60_000);
        let target = commit_results(&store, 401, 10, wall_clock_ms());
        committed_tx.send(Committed { results: target, raw: 0 }).unwrap();
        let retries = stats.retries_total.load(Ordering::Relaxed);
        until("a retry saw the new commits", || stats.retries_total.load(Ordering::Relaxed) > retries + 1)
            .await;
        assert_eq!(
            store.delivered(Lane::Results, "hub").unwrap(),
            Delivered { cursor: 100, above: vec![(301, 310), (401, 400)] },
            "the second split's marker is stored before its first delivery"
        );
        // Still away: the split follows the newest commit.
        let target = commit_results(&store, 411, 10, wall_clock_ms());
        committed_tx.send(Committed { results: target, raw: 0 }).unwrap();
        let retries = stats.retries_total.load(Ordering::Relaxed);
        until("a retry saw the newest commit", || stats.retries_total.load(Ordering::Relaxed) > retries + 1)
            .await;
        assert_eq!(
            store.delivered(Lane::Results, "hub").unwrap(),
            Delivered { cursor: 100, above: vec![(301, 310), (411, 410)] },
            "the marker moved up instead of adding one"
        );
        hub.set_away(false);
        drop(committed_tx);
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
        let batches = hub.batches();
        assert_eq!(batches[2], range(411, 420), "the current results go first again");
        assert_eq!(batches[3], range(101, 200), "then the older gap");
        assert_eq!(hub.seqs()[hub.seqs().len() - 100..], range(311, 410)[..], "the newer gap last");
        let mut seqs = hub.seqs();
        seqs.sort_unstable();
        assert_eq!(seqs, range(1, 420));
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(420));
    }

    /// A split whose current part held only records the sink does not take (micro-batch
    /// results for a sink of windows) sent nothing: when the hub is back, the current windows
    /// still go first, and the split moved up instead of adding a range.
    #[tokio::test]
    async fn records_the_sink_does_not_take_do_not_count_as_current_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24, vec![], vec![]).unwrap();
        commit_results(&store, 1, 300, wall_clock_ms() - 3_600_000);
        let target = commit_kind(&store, 301, 6, wall_clock_ms() - 1000, "batch");
        let hub = FakeHub::default();
        hub.set_away(true);
        let stats = Arc::new(DeliveryStats::default());
        let (committed_tx, committed_rx) = watch::channel(Committed { results: target, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let task = tokio::spawn(delivering_to(&store, &hub, &stats).run(
            committed_rx,
            give_up_rx,
            CancellationToken::new(),
        ));
        until("the hub was tried", || stats.retries_total.load(Ordering::Relaxed) > 0).await;
        assert_eq!(
            store.delivered(Lane::Results, "hub").unwrap(),
            Delivered { cursor: 0, above: vec![(301, 306)] },
            "the micro-batches passed over"
        );
        let target = commit_results(&store, 307, 10, wall_clock_ms());
        committed_tx.send(Committed { results: target, raw: 0 }).unwrap();
        let retries = stats.retries_total.load(Ordering::Relaxed);
        until("a retry saw the new commit", || stats.retries_total.load(Ordering::Relaxed) > retries + 1)
            .await;
        assert_eq!(
            store.delivered(Lane::Results, "hub").unwrap(),
            Delivered { cursor: 0, above: vec![(307, 306)] }
        );
        hub.set_away(false);
        drop(committed_tx);
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
        assert_eq!(hub.batches()[0], range(307, 316), "the current windows first");
        assert_eq!(hub.batches()[1], range(1, 100));
        assert_eq!(hub.seqs().len(), 310, "no micro-batch result sent");
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(316));
    }

    /// The newest commit holds only records the sink does not take (micro-batch results for a
    /// sink of windows): the split starts at the newest commit that holds some, so the hub's
    /// first records after the outage are current windows, not the backlog.
    #[tokio::test]
    async fn a_split_starts_at_the_newest_commit_the_sink_takes_records_of() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24, vec![], vec![]).unwrap();
        commit_results(&store, 1, 300, wall_clock_ms() - 3_600_000);
        commit_results(&store, 301, 10, wall_clock_ms() - 2000);
        let target = commit_kind(&store, 311, 6, wall_clock_ms() - 1000, "batch");
        let hub = FakeHub::default();
        hub.set_away(true);
        let stats = Arc::new(DeliveryStats::default());
        let (committed_tx, committed_rx) = watch::channel(Committed { results: target, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let task = tokio::spawn(delivering_to(&store, &hub, &stats).run(
            committed_rx,
            give_up_rx,
            CancellationToken::new(),
        ));
        until("the hub was tried twice", || stats.retries_total.load(Ordering::Relaxed) > 1).await;
        hub.set_away(false);
        drop(committed_tx);
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
        assert_eq!(hub.batches()[0], range(301, 310), "the current windows first");
        assert_eq!(hub.batches()[1], range(1, 100));
        assert_eq!(hub.seqs().len(), 310, "no micro-batch result sent");
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(316));
    }

    /// Batches of either kind the hub finds too large (HTTP 413) go in halves; parts done move
    /// the delivered set even when the hub goes away in the middle of a batch.
    #[tokio::test]
    async fn parts_of_a_split_backlog_batch_move_the_delivered_set() {
        let dir = tempfile::tempdir().unwrap();
        let (store, target) = store_after_outage(dir.path(), 1000, 10);
        let hub = FakeHub::default();
        hub.set_max_batch(Some(30));
        hub.away_after(2);
        let stats = Arc::new(DeliveryStats::default());
        let (_committed_tx, committed_rx) = watch::channel(Committed { results: target, raw: 0 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let task = tokio::spawn(delivering_to(&store, &hub, &stats).run(
            committed_rx,
            give_up_rx,
            CancellationToken::new(),
        ));
        until("the hub went away", || stats.retries_total.load(Ordering::Relaxed) > 0).await;
        task.abort();
        let _ = task.await;
        assert_eq!(hub.batches(), vec![range(1001, 1010), range(1, 25)]);
        assert_eq!(
            store.delivered(Lane::Results, "hub").unwrap(),
            Delivered { cursor: 25, above: vec![(1001, 1010)] }
        );
    }

    /// Pages dropped inside the gap (the budget) are passed over: the rest of the backlog
    /// still arrives, and the gap closes.
    #[tokio::test]
    async fn pages_dropped_inside_the_gap_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (store, target) = store_after_outage(dir.path(), 1000, 10);
        // An earlier run delivered the current results, then the first two pages were dropped.
        store
            .set_delivered(Lane::Results, "hub", &Delivered { cursor: 0, above: vec![(1001, 1010)] })
            .unwrap();
        store.trim_lane_through(Lane::Results, 2 * 256).unwrap();
        let hub = FakeHub::default();
        let stats = Arc::new(DeliveryStats::default());
        drain(delivering_to(&store, &hub, &stats), target).await;
        assert_eq!(hub.seqs(), range(513, 1000));
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(1010));
    }

    /// Records the hub can never take (413 even alone) become dead letters from live and
    /// backlog batches alike, and move the delivered set like deliveries.
    #[tokio::test]
    async fn dead_letters_move_the_delivered_set_on_both_kinds_of_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (store, target) = store_after_outage(dir.path(), 300, 10);
        let hub = FakeHub::default();
        hub.set_max_batch(Some(0));
        let stats = Arc::new(DeliveryStats::default());
        drain(delivering_to(&store, &hub, &stats), target).await;
        assert!(hub.seqs().is_empty());
        let dead: Vec<u64> = store.dead_letters().unwrap().iter().map(|letter| letter.seq).collect();
        assert_eq!(dead[..10], range(301, 310)[..], "the current results first");
        assert_eq!(dead[10..], range(1, 300)[..]);
        assert_eq!(stats.rejected_total.load(Ordering::Relaxed), 310);
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(310));
    }

    /// Both lanes go live first, results before raw readings (current or backlog).
    #[tokio::test]
    async fn the_raw_lane_goes_live_first_after_the_results() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24, vec![], vec![]).unwrap();
        let commit = |first: u64, n: u64, clock_ms: i64| {
            let entries = |kind: &str| -> Vec<OutboxEntry> {
                (first..first + n)
                    .map(|seq| OutboxEntry {
                        kind: kind.into(),
                        group: String::new(),
                        payload: format!("{{\"seq\":{seq}}}").into_bytes(),
                    })
                    .collect()
            };
            let results = Commit {
                outbox: entries("window"),
                log_pos: first,
                next_seq: first + n,
                clock_ms,
                ..Commit::default()
            };
            let raw = RawCommit { entries: entries("raw"), next_raw_seq: first + n };
            store.commit_with_raw(&results, Some(&raw)).unwrap();
        };
        commit(1, 100, wall_clock_ms() - 3_600_000);
        commit(101, 10, wall_clock_ms());
        let hub = FakeHub::default();
        let stats = Arc::new(DeliveryStats::default());
        let mut delivering = delivering_to(&store, &hub, &stats);
        delivering.records = ["window".to_owned(), "raw".to_owned()].into();
        delivering.raw_cursor = Arc::new(vec![AtomicU64::new(0)]);
        let (committed_tx, committed_rx) = watch::channel(Committed { results: 110, raw: 110 });
        let (_give_up_tx, give_up_rx) = watch::channel(false);
        let task = tokio::spawn(delivering.run(committed_rx, give_up_rx, CancellationToken::new()));
        drop(committed_tx);
        tokio::time::timeout(Duration::from_secs(20), task).await.unwrap().unwrap().unwrap();
        assert_eq!(hub.batches(), vec![range(101, 110), range(1, 100), range(101, 110), range(1, 100)]);
        assert_eq!(store.delivered(Lane::Results, "hub").unwrap(), Delivered::prefix(110));
        assert_eq!(store.delivered(Lane::Raw, "hub").unwrap(), Delivered::prefix(110));
        assert_eq!(store.raw_cursor("hub").unwrap(), 110);
    }

    /// The drain estimate: unknown until a sample, then what waits over the pace it shrinks.
    #[test]
    fn the_drain_estimate_follows_the_pace() {
        let start = tokio::time::Instant::now();
        let mut meter = DrainMeter::new();
        assert_eq!(meter.observe(start, 1000), None);
        assert_eq!(meter.observe(start + Duration::from_millis(500), 900), None, "no sample within a second");
        let estimate = meter.observe(start + Duration::from_secs(2), 800).unwrap();
        assert_eq!(estimate, Duration::from_secs(8), "100 records/s");
        // Growing: unknown.
        meter.observe(start + Duration::from_secs(3), 1200);
        assert_eq!(meter.observe(start + Duration::from_secs(3), 1200), None);
        assert_eq!(meter.observe(start + Duration::from_secs(4), 0), Some(Duration::ZERO));
    }

    fn record(seq: u64) -> OutRecord {
        OutRecord { seq, kind: "window".into(), group: String::new(), payload: b"{}".to_vec() }
    }

    fn seqs(part: &Part) -> Vec<u64> {
        match part {
            Part::Send(records) => records.iter().map(|record| record.seq).collect(),
            Part::Dead(record, _) => vec![record.seq],
        }
    }

    /// Records named too large are set apart, in place, with their reasons; the runs between
    /// them go as they are, in order.
    #[test]
    fn oversize_records_are_set_apart_in_order() {
        let records: Vec<OutRecord> = (1..=6).map(record).collect();
        let named = vec![(2, "too big".to_owned()), (5, "huge".to_owned()), (9, "not given".to_owned())];
        let parts = split_oversize(records, &named);
        assert_eq!(
            parts.iter().map(seqs).collect::<Vec<_>>(),
            vec![vec![1], vec![2], vec![3, 4], vec![5], vec![6]]
        );
        assert_eq!(parts[1], Part::Dead(record(2), "too big".to_owned()));
        assert_eq!(parts[3], Part::Dead(record(5), "huge".to_owned()));
        assert!(matches!(parts[0], Part::Send(_)));
        assert_eq!(split_first_seq(&parts), 1);
        // Naming none of them leaves one part to send (the caller then does not loop).
        let parts = split_oversize((1..=3).map(record).collect(), &[(7, "x".to_owned())]);
        assert_eq!(parts.iter().map(seqs).collect::<Vec<_>>(), vec![vec![1, 2, 3]]);
        assert!(split_oversize(Vec::new(), &named).is_empty());
    }

    /// An outage is logged when it starts and published; a refusal of our credentials is
    /// published apart and cleared by a delivery, or by another kind of failure.
    #[test]
    fn a_refusal_is_published_until_a_delivery_or_another_failure() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        runtime.block_on(async {
            let stats = DeliveryStats::default();
            let mut outage = Outage::new(Backoff::new(MIN_BACKOFF, Duration::from_secs(2)));
            let refused = || Failure::Unauthorized { status: 401, reason: "HTTP 401".into() };
            // Backoff delays carry ±25 % jitter.
            let about = |delay: Duration, expected: Duration| {
                assert!(delay >= expected * 3 / 4 && delay <= expected * 5 / 4, "{delay:?} for {expected:?}");
            };
            about(outage.failed("hub", &stats, refused()), MIN_BACKOFF);
            let since = stats.refused_since_ms.load(Ordering::Relaxed);
            assert!(since > 0);
            assert_eq!(stats.refused_status.load(Ordering::Relaxed), 401);
            assert!(stats.offline_since_ms.load(Ordering::Relaxed) > 0);
            // Retried with the capped backoff, the refusal keeps its start.
            about(outage.failed("hub", &stats, refused()), MIN_BACKOFF * 2);
            assert_eq!(stats.refused_since_ms.load(Ordering::Relaxed), since);
            outage.back("hub", &stats);
            assert_eq!(stats.refused_since_ms.load(Ordering::Relaxed), 0);
            assert_eq!(stats.offline_since_ms.load(Ordering::Relaxed), 0);
            about(outage.failed("hub", &stats, refused()), MIN_BACKOFF); // the backoff starts over
            outage.failed("hub", &stats, Failure::Offline("HTTP 503".into()));
            assert_eq!(stats.refused_since_ms.load(Ordering::Relaxed), 0);
            assert!(stats.offline_since_ms.load(Ordering::Relaxed) > 0);
        });
    }
}
