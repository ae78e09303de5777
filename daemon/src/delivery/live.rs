//! Live first: which records of one outbox lane a sink delivers next once it is behind —
//! current results as they are committed, and the backlog beside them, oldest first, with at
//! least `backlog_share` of what is sent.
//!
//! A sink is behind when its oldest record after what it delivered was committed more than
//! `backlog_after` before the lane's newest (an outage, or a hub slower than the records come;
//! both times by the processing clock that stamps the commits). It then splits:
//! the records of the lane's newest commit onwards are *live*, everything before them is
//! *backlog*. The split is kept in the sink's [`Delivered`] set as an empty range at the
//! split point (a start marker) and persisted before the first delivery after it, so that
//! what may be in flight is known after a crash too (the downsampler keeps off it); live
//! deliveries then extend that range, backlog deliveries fill the gap below it. While the hub
//! stays away, a split whose live part has delivered nothing follows the newest commit at each
//! try (the marker is replaced), so what the hub gets first when it is back is current.
//!
//! The backlog drains oldest first, the one order: it frees disk (trimming follows the prefix
//! of every sink) while it drains, keeps the per-key order inside the backlog, and ends the
//! gap at the split point, where the delivered ranges fold back into a plain cursor.

use crate::storage::Delivered;

/// Most ranges a delivered set keeps above its cursor: past it a sink that falls behind again
/// does not split once more but delivers what waits in order (the gaps still drain).
pub(crate) const MAX_RANGES: usize = 16;

/// What a sink delivers next of one lane: the seqs `after + 1 ..= through`, as far as one
/// batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pick {
    /// Current results: after the delivered head, up to the committed target.
    Live { after: u64, through: u64 },
    /// The backlog: the first gap below the head, oldest first.
    Backlog { after: u64, through: u64 },
}

impl Pick {
    /// The seq the batch starts after.
    pub(crate) fn after(self) -> u64 {
        match self {
            Pick::Live { after, .. } | Pick::Backlog { after, .. } => after,
        }
    }

    /// The last seq the batch may take.
    pub(crate) fn through(self) -> u64 {
        match self {
            Pick::Live { through, .. } | Pick::Backlog { through, .. } => through,
        }
    }
}

/// What one sink delivered of one lane, and the records sent of each kind since both kinds
/// have been waiting (the deficit that keeps the backlog's share).
#[derive(Debug, Clone)]
pub(crate) struct LaneDelivery {
    delivered: Delivered,
    /// The set differs from the stored one (a new split): persist it before delivering.
    unsaved: bool,
    /// Where the live part of the newest split starts while it has sent the hub nothing (the
    /// hub still away, or only records this sink does not take): a new split takes it back.
    unsent_from: Option<u64>,
    /// Records handed to the sink from live and backlog batches.
    live_sent: u64,
    backlog_sent: u64,
}

impl LaneDelivery {
    /// From the stored set (a restart, or a sink restarted by a reload, resumes right there).
    pub(crate) fn new(delivered: Delivered) -> LaneDelivery {
        // A stored start marker with nothing above it: its live part sent nothing. (Whether a
        // stored range above a marker sent anything is not known: it is kept.)
        let unsent_from = delivered.above.last().filter(|&&(lo, hi)| hi + 1 == lo).map(|&(lo, _)| lo);
        LaneDelivery { delivered, unsaved: false, unsent_from, live_sent: 0, backlog_sent: 0 }
    }

    /// What was delivered (and, after a split, the start marker).
    pub(crate) fn delivered(&self) -> &Delivered {
        &self.delivered
    }

    /// Whether the set changed since it was last stored; clears the flag.
    pub(crate) fn take_unsaved(&mut self) -> bool {
        std::mem::take(&mut self.unsaved)
    }

    /// Whether the newest split's live part has sent the hub nothing yet.
    pub(crate) fn split_unsent(&self) -> bool {
        self.unsent_from.is_some()
    }

    /// Whether [`LaneDelivery::split`] could split at all: a split waiting for the hub can move,
    /// else one more range must fit. Checked first, so that a sink at the cap does not look for
    /// a split point before every delivery.
    pub(crate) fn may_split(&self) -> bool {
        self.unsent_from.is_some() || self.delivered.above.len() < MAX_RANGES
    }

    /// Whether any record up to `target` waits (current or backlog).
    pub(crate) fn waiting(&self, target: u64) -> bool {
        self.delivered.head() < target || self.delivered.first_gap().is_some()
    }

    /// Records that the sink is behind, the lane's newest commit starting at `live_from`:
    /// splits there. A split whose live part sent nothing yet (the hub is still away, or the
    /// records were of kinds the sink does not take) moves up to `live_from` instead of
    /// leaving one more range: what it passed over is backlog again (nothing of it went out).
    /// No split when nothing would be backlog, or when [`MAX_RANGES`] are kept already. True
    /// when the set changed.
    pub(crate) fn split(&mut self, live_from: u64) -> bool {
        let mut split = self.delivered.clone();
        if let Some(from) = self.unsent_from {
            if live_from <= from {
                return false;
            }
            match split.above.last_mut() {
                Some(last) if last.0 == from => {
                    split.above.pop();
                }
                Some(last) if last.0 < from && from <= last.1 + 1 => last.1 = from - 1,
                // Folded into the cursor (the gap below it closed): kept.
                _ => {}
            }
        }
        if live_from <= split.head() + 1 || split.above.len() >= MAX_RANGES {
            return false;
        }
        split.mark(live_from, live_from - 1);
        self.delivered = split;
        self.unsaved = true;
        self.unsent_from = Some(live_from);
        true
    }

    /// What to deliver next with `target` the last committed seq: the backlog while its share
    /// of what was sent is below `backlog_share` (1.0: always first), or when no current
    /// record waits; current records otherwise. `None`: nothing waits.
    pub(crate) fn pick(&mut self, target: u64, backlog_share: f64) -> Option<Pick> {
        let head = self.delivered.head();
        let live = (head < target).then_some(Pick::Live { after: head, through: target });
        let backlog = self.delivered.first_gap().map(|(lo, hi)| Pick::Backlog { after: lo - 1, through: hi });
        match (live, backlog) {
            (Some(live), Some(backlog)) => {
                let total = self.live_sent.saturating_add(self.backlog_sent);
                #[allow(clippy::cast_precision_loss)]
                let backlog_due =
                    backlog_share >= 1.0 || (self.backlog_sent as f64) < backlog_share * total as f64;
                Some(if backlog_due { backlog } else { live })
            }
            (only_live, only_backlog) => {
                // One kind alone gets everything; the share starts over when both wait again.
                self.live_sent = 0;
                self.backlog_sent = 0;
                only_live.or(only_backlog)
            }
        }
    }

    /// Records that the seqs `pick.after() + 1 ..= done` are done (delivered, dead-lettered,
    /// not of a kind the sink takes, or no longer in the outbox), `n_sent` records of them
    /// handed to the sink (what the share counts); true when the set changed (store it).
    pub(crate) fn done(&mut self, pick: Pick, done: u64, n_sent: u64) -> bool {
        let first = pick.after() + 1;
        if done < first {
            return false;
        }
        match pick {
            Pick::Live { .. } => {
                self.live_sent = self.live_sent.saturating_add(n_sent);
                if n_sent > 0 {
                    self.unsent_from = None;
                }
            }
            Pick::Backlog { .. } => self.backlog_sent = self.backlog_sent.saturating_add(n_sent),
        }
        self.delivered.mark(first, done);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// One step of a sink's life: records committed, a split at a point of the current part,
    /// a delivery of up to `n` records of what is picked, of which `done` are done (`taken`:
    /// handed to the sink; else of kinds it does not take), or a restart from the stored set.
    #[derive(Debug, Clone)]
    enum Step {
        Commit(u64),
        Split(u64),
        Deliver { n: u64, done: u64, taken: bool },
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1..60u64).prop_map(Step::Commit),
            (0..100u64).prop_map(Step::Split),
            (1..40u64, 0..40u64, prop::bool::weighted(0.8)).prop_map(|(n, done, taken)| Step::Deliver {
                n,
                done,
                taken
            }),
            Just(Step::Reopen),
        ]
    }

    /// Picks what `lane` sends next and marks up to `done` of at most `n` records done, in
    /// `sent` too when `taken`; false when nothing waits.
    fn deliver(
        lane: &mut LaneDelivery,
        sent: &mut BTreeSet<u64>,
        target: u64,
        share: f64,
        step: (u64, u64, bool),
    ) -> bool {
        let (n, done, taken) = step;
        let Some(pick) = lane.pick(target, share) else { return false };
        let through = pick.through().min(pick.after() + n);
        let last = pick.after() + done.min(through - pick.after());
        if taken {
            for seq in pick.after() + 1..=last {
                assert!(sent.insert(seq), "{seq} sent twice ({pick:?})");
            }
        }
        lane.done(pick, last, if taken { last - pick.after() } else { 0 });
        true
    }

    proptest! {
        /// Whatever the commits, splits, partial deliveries, records the sink does not take
        /// and restarts (a new lane from the set as stored), no record is sent twice, nothing
        /// sent leaves the delivered set, the ranges stay few, and once nothing waits
        /// everything is delivered: a prefix.
        #[test]
        fn no_record_is_sent_twice(steps in prop::collection::vec(step(), 1..80), share in 0.0..=1.0f64) {
            let mut lane = LaneDelivery::new(Delivered::prefix(0));
            let mut target = 0;
            let mut sent = BTreeSet::new();
            for step in steps {
                match step {
                    Step::Commit(n) => target += n,
                    Step::Split(at) => {
                        let head = lane.delivered().head();
                        if head < target {
                            lane.split(head + 1 + at % (target - head));
                        }
                    }
                    Step::Deliver { n, done, taken } => {
                        deliver(&mut lane, &mut sent, target, share, (n, done, taken));
                    }
                    Step::Reopen => lane = LaneDelivery::new(lane.delivered().clone()),
                }
                prop_assert!(lane.delivered().above.len() <= MAX_RANGES);
                for seq in &sent {
                    prop_assert!(lane.delivered().contains(*seq), "sent {} is undelivered again", seq);
                }
            }
            while deliver(&mut lane, &mut sent, target, share, (50, 50, true)) {}
            prop_assert_eq!(lane.delivered(), &Delivered::prefix(target));
        }
    }

    /// A split whose live part held only records the sink does not take has sent nothing: it
    /// counts for no share (the next current records go first), and a new split takes it
    /// back instead of adding a range.
    #[test]
    fn records_not_taken_count_for_nothing() {
        let mut lane = LaneDelivery::new(Delivered::prefix(0));
        assert!(lane.split(301));
        let first = lane.pick(306, 0.5).unwrap();
        assert_eq!(first, Pick::Live { after: 300, through: 306 });
        lane.done(first, 306, 0);
        assert!(lane.split_unsent());
        // Current records taken by the sink come next: they go first.
        assert_eq!(lane.pick(316, 0.5), Some(Pick::Live { after: 306, through: 316 }));
        assert!(lane.split(307));
        assert_eq!(lane.delivered().above, vec![(307, 306)], "taken back, one marker");
        lane.done(Pick::Live { after: 306, through: 316 }, 316, 10);
        assert!(!lane.split_unsent());
        assert!(lane.split(400));
        assert_eq!(lane.delivered().above, vec![(307, 316), (400, 399)], "sent: kept");
        // After a restart a bare marker is known to have sent nothing.
        let mut reopened = LaneDelivery::new(lane.delivered().clone());
        assert!(reopened.split_unsent());
        assert!(reopened.split(420));
        assert_eq!(reopened.delivered().above, vec![(307, 316), (420, 419)]);
    }

    /// A sink 100 records behind, the newest commit from 91: it splits at 91 and sends the
    /// current records first, then halves what it sends between both kinds.
    #[test]
    fn a_split_sends_the_newest_commit_first_then_shares() {
        let mut lane = LaneDelivery::new(Delivered::prefix(0));
        assert!(lane.split(91));
        assert!(lane.take_unsaved() && !lane.take_unsaved());
        assert_eq!(lane.delivered().above, vec![(91, 90)]);
        let first = lane.pick(100, 0.5).unwrap();
        assert_eq!(first, Pick::Live { after: 90, through: 100 });
        lane.done(first, 100, 10);
        // Caught up with the current records: only the backlog waits, it gets everything.
        assert_eq!(lane.pick(100, 0.5), Some(Pick::Backlog { after: 0, through: 90 }));
        lane.done(Pick::Backlog { after: 0, through: 90 }, 10, 10);
        // New current records while both wait: the share counts from there (10 backlog sent,
        // none current: the current ones are due; at an even share too).
        assert_eq!(lane.pick(110, 0.5), Some(Pick::Live { after: 100, through: 110 }));
        lane.done(Pick::Live { after: 100, through: 110 }, 110, 10);
        assert_eq!(lane.pick(120, 0.5), Some(Pick::Live { after: 110, through: 120 }));
        lane.done(Pick::Live { after: 110, through: 120 }, 120, 10);
        // 10 backlog, 20 current: the backlog is due.
        assert_eq!(lane.pick(130, 0.5), Some(Pick::Backlog { after: 10, through: 90 }));
        lane.done(Pick::Backlog { after: 10, through: 90 }, 90, 80);
        assert_eq!(*lane.delivered(), Delivered::prefix(120), "the gap closed into the cursor");
        assert!(lane.waiting(130) && !lane.waiting(120));
    }

    /// While the hub stays away, a split that delivered nothing moves up to the newest commit
    /// instead of adding markers; once its live part delivered, a new split adds a range.
    #[test]
    fn a_split_that_delivered_nothing_moves_up() {
        let mut lane = LaneDelivery::new(Delivered::prefix(5));
        assert!(lane.split(50));
        assert!(!lane.split(50), "the same split again changes nothing");
        assert!(!lane.split(40), "a split never moves down");
        assert!(lane.split(70));
        assert_eq!(lane.delivered().above, vec![(70, 69)]);
        let pick = lane.pick(80, 0.5).unwrap();
        assert_eq!(pick, Pick::Live { after: 69, through: 80 });
        lane.done(pick, 75, 6);
        assert_eq!(lane.delivered().above, vec![(70, 75)]);
        // A second outage: a second gap above the first.
        assert!(lane.split(120));
        assert_eq!(lane.delivered().above, vec![(70, 75), (120, 119)]);
        // Nothing to split when the newest commit follows the head.
        let mut in_order = LaneDelivery::new(Delivered::prefix(5));
        assert!(!in_order.split(6));
        assert!(!in_order.take_unsaved());
    }

    /// Past [`MAX_RANGES`] ranges no new split is made.
    #[test]
    fn splits_stop_at_the_range_cap() {
        let mut lane = LaneDelivery::new(Delivered::prefix(0));
        for idx in 0..MAX_RANGES {
            let from = 100 * (u64::try_from(idx).unwrap() + 1);
            assert!(lane.split(from));
            lane.done(Pick::Live { after: from - 1, through: from + 10 }, from + 10, 11);
        }
        assert_eq!(lane.delivered().above.len(), MAX_RANGES);
        assert!(!lane.split(100_000));
        assert_eq!(lane.pick(100_010, 0.5).map(|pick| pick.after()), Some(0), "the oldest gap drains");
    }

    /// `backlog_share` 1.0 sends the backlog first whatever waits; 0.0 only when nothing
    /// current waits.
    #[test]
    fn the_share_bounds() {
        let mut lane = LaneDelivery::new(Delivered::prefix(0));
        lane.split(51);
        assert!(matches!(lane.pick(60, 1.0), Some(Pick::Backlog { .. })));
        assert!(matches!(lane.pick(60, 0.0), Some(Pick::Live { .. })));
        lane.done(Pick::Live { after: 50, through: 60 }, 60, 10);
        assert!(matches!(lane.pick(60, 0.0), Some(Pick::Backlog { .. })));
        lane.done(Pick::Backlog { after: 0, through: 50 }, 10, 10);
        assert!(matches!(lane.pick(61, 0.0), Some(Pick::Live { .. })));
    }
}
