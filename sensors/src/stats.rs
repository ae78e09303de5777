//! Per-source counters: received, accepted, rejected by reason. Shared with the daemon,
//! which logs them and (later) serves them as metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::reject::RejectReason;

/// Counters of one source. Cheap to update from the source's task; read by the daemon.
#[derive(Debug)]
pub struct SourceStats {
    /// The source's name from the config (`tcp-0`, `simulator`).
    pub name: String,
    received: AtomicU64,
    accepted: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    connections: AtomicU64,
    duplicates: AtomicU64,
    refused: AtomicU64,
    up: AtomicBool,
}

/// A copy of a source's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatsSnapshot {
    /// Lines (or messages) received.
    pub received: u64,
    /// Readings accepted (valid) and handed to the durable log.
    pub accepted: u64,
    /// Accepted readings the durable log then refused (disk budget full, a failed write):
    /// not stored, answered `nack` (or left unacknowledged for an MQTT broker).
    pub refused: u64,
    /// Rejected lines by reason, only reasons with a non-zero count.
    pub rejected: Vec<(RejectReason, u64)>,
    /// Connections accepted so far (TCP).
    pub connections: u64,
    /// Lines recognised as already settled on an earlier connection of their numbered session
    /// (TCP), answered `dup` and not stored again.
    pub duplicates: u64,
}

impl SourceStatsSnapshot {
    /// Sum of all rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|(_, n)| n).sum()
    }

    /// Count for one reason.
    pub fn rejected_for(&self, reason: RejectReason) -> u64 {
        self.rejected.iter().find(|(r, _)| *r == reason).map_or(0, |(_, n)| *n)
    }
}

impl SourceStats {
    /// Zeroed counters for the source `name`.
    pub fn new(name: impl Into<String>) -> SourceStats {
        SourceStats {
            name: name.into(),
            received: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            connections: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            up: AtomicBool::new(false),
        }
    }

    /// Says whether the source can take readings now: listening (TCP), its port open
    /// (serial), connected to its broker (MQTT), running (simulator). False until it starts.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Whether the source can take readings now (see [`SourceStats::set_up`]).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Counts `n` received lines.
    pub fn add_received(&self, n: u64) {
        self.received.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` accepted readings.
    pub fn add_accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one rejection.
    pub fn add_rejected(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` accepted readings the durable log refused.
    pub fn add_refused(&self, n: u64) {
        self.refused.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` lines recognised as already settled (a resend), not stored again.
    pub fn add_duplicates(&self, n: u64) {
        self.duplicates.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one accepted connection.
    pub fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> SourceStatsSnapshot {
        SourceStatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            rejected: RejectReason::ALL
                .iter()
                .map(|reason| (*reason, self.rejected[reason.index()].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            connections: self.connections.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }
}
