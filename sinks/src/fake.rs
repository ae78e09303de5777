//! A sink for tests (feature `fake`): it keeps the seqs of what it is given, and answers as
//! its hub is told to — away, taking at most so many records per delivery, or going away after
//! so many deliveries.

use std::sync::{Arc, Mutex, PoisonError};

use crate::record::{Delivery, OutRecord};

/// The hub behind a [`FakeSink`], shared with the test that drives it.
#[derive(Debug, Clone, Default)]
pub struct FakeHub(Arc<Mutex<FakeHubState>>);

#[derive(Debug, Default)]
struct FakeHubState {
    away: bool,
    /// Deliveries taken before the hub goes away by itself (`None`: no limit).
    away_after: Option<usize>,
    /// Most records taken per delivery; more are answered `TooLarge` (`None`: no limit).
    max_batch: Option<usize>,
    /// The seqs of each delivery taken, in order.
    batches: Vec<Vec<u64>>,
}

impl FakeHub {
    fn state(&self) -> std::sync::MutexGuard<'_, FakeHubState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the hub away (`Offline`) or back.
    pub fn set_away(&self, away: bool) {
        self.state().away = away;
    }

    /// The hub goes away by itself once it has taken `n` more deliveries.
    pub fn away_after(&self, n: usize) {
        let mut state = self.state();
        state.away_after = Some(state.batches.len() + n);
    }

    /// Deliveries of more than `n` records are answered `TooLarge` (HTTP 413).
    pub fn set_max_batch(&self, n: Option<usize>) {
        self.state().max_batch = n;
    }

    /// The seqs of each delivery taken, in order.
    pub fn batches(&self) -> Vec<Vec<u64>> {
        self.state().batches.clone()
    }

    /// Every seq taken, in order.
    pub fn seqs(&self) -> Vec<u64> {
        self.state().batches.concat()
    }

    fn deliver(&self, records: &[OutRecord]) -> Delivery {
        let mut state = self.state();
        if state.away_after.is_some_and(|n| state.batches.len() >= n) {
            state.away = true;
            state.away_after = None;
        }
        if state.away {
            return Delivery::Offline { reason: "the fake hub is away".to_owned() };
        }
        if state.max_batch.is_some_and(|max| records.len() > max) {
            return Delivery::TooLarge { reason: "HTTP 413 from the fake hub".to_owned() };
        }
        state.batches.push(records.iter().map(|record| record.seq).collect());
        Delivery::Delivered
    }
}

/// A sink delivering to a [`FakeHub`].
#[derive(Debug)]
pub struct FakeSink {
    name: String,
    hub: FakeHub,
}

impl FakeSink {
    /// A sink named `name` delivering to `hub`.
    pub fn new(name: &str, hub: FakeHub) -> FakeSink {
        FakeSink { name: name.to_owned(), hub }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn deliver(&self, records: &[OutRecord]) -> Delivery {
        self.hub.deliver(records)
    }
}
