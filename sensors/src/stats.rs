//! Per-source counters: received, accepted, rejected by reason. Shared with the daemon,
//! which logs them, serves them in `/status` and `/metrics`, and reads them back in
//! `eddy status`, all from [`SourceStatsSnapshot`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

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
    peers_refused: AtomicU64,
    auth_failures: AtomicU64,
    timed_out: AtomicU64,
    up: AtomicBool,
    broker_drops: Mutex<BrokerDrops>,
}

/// The dropped-messages counter an MQTT broker publishes (`$SYS`), as last read.
#[derive(Debug, Default)]
struct BrokerDrops {
    /// The broker's count (since it started, all its clients).
    total: Option<u64>,
    /// When eddy last saw it rise.
    rose_at: Option<Instant>,
}

/// A copy of a source's counters at one moment: the one definition the daemon's log lines,
/// `/status` entry and `/metrics` samples of a source are made from.
///
/// It serialises as the `/status` document's source entry (`name`, `up`, the counts, the
/// `rejected` total and `rejected_by_reason` by reason name); `connections` is not part of
/// that document and reads back as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SourceStatusEntry", try_from = "SourceStatusEntry")]
pub struct SourceStatsSnapshot {
    /// The source's name from the config.
    pub name: String,
    /// Whether the source could take readings (see [`SourceStats::set_up`]).
    pub up: bool,
    /// Lines (or messages) received.
    pub received: u64,
    /// Readings accepted (valid) and handed to the durable log.
    pub accepted: u64,
    /// Accepted readings the durable log then refused (disk budget full, a failed write):
    /// not stored, answered `nack` (or left unacknowledged for an MQTT broker).
    pub refused: u64,
    /// Rejected lines by reason, only reasons with a non-zero count, in
    /// [`RejectReason::ALL`] order.
    pub rejected: Vec<(RejectReason, u64)>,
    /// Connections accepted so far (TCP).
    pub connections: u64,
    /// Lines recognised as already settled on an earlier connection of their numbered session
    /// (TCP), answered `dup` and not stored again.
    pub duplicates: u64,
    /// MQTT: the messages the broker says it dropped (its `$SYS` counter: since it started,
    /// for all its clients), when the broker publishes it.
    pub broker_dropped: Option<u64>,
    /// Connections refused at accept: the peer is outside `allow` (TCP).
    pub peers_refused: u64,
    /// Connections closed for want of credentials: a failed TLS handshake (no or a bad client
    /// certificate), a wrong or missing `#auth` token, or none within `auth_timeout` (TCP).
    pub auth_failures: u64,
    /// Connections closed because they sent nothing for `idle_timeout`, or their peer left
    /// their replies unread for `reply_timeout` (TCP).
    pub timed_out: u64,
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
            peers_refused: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            up: AtomicBool::new(false),
            broker_drops: Mutex::new(BrokerDrops::default()),
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

    /// Counts one connection refused because its peer is not allowed.
    pub fn add_peer_refused(&self) {
        self.peers_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one connection closed for want of credentials.
    pub fn add_auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one connection closed by a timeout (idle, or replies unread).
    pub fn add_timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one accepted connection.
    pub fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the broker's dropped-messages counter as just read at `now`. Returns true when
    /// it rose: above the last value read, or above zero after a reset (the broker restarted)
    /// or at the first reading (eddy cannot tell how old those drops are, and drops for its
    /// session happen mostly while it is away).
    pub fn set_broker_dropped(&self, total: u64, now: Instant) -> bool {
        let mut drops = self.broker_drops.lock().unwrap_or_else(PoisonError::into_inner);
        let rose = match drops.total {
            Some(last) if total >= last => total > last,
            _ => total > 0,
        };
        drops.total = Some(total);
        if rose {
            drops.rose_at = Some(now);
        }
        rose
    }

    /// How long before `now` the broker's dropped-messages counter last rose, if it did.
    pub fn broker_dropped_rose_ago(&self, now: Instant) -> Option<Duration> {
        let drops = self.broker_drops.lock().unwrap_or_else(PoisonError::into_inner);
        drops.rose_at.map(|rose_at| now.saturating_duration_since(rose_at))
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> SourceStatsSnapshot {
        SourceStatsSnapshot {
            name: self.name.clone(),
            up: self.is_up(),
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
            broker_dropped: self.broker_drops.lock().unwrap_or_else(PoisonError::into_inner).total,
            peers_refused: self.peers_refused.load(Ordering::Relaxed),
            auth_failures: self.auth_failures.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// The `/status` form of a source's counters (its keys are part of the endpoint's contract).
#[derive(Serialize, Deserialize)]
struct SourceStatusEntry {
    name: String,
    up: bool,
    received: u64,
    accepted: u64,
    refused: u64,
    duplicates: u64,
    /// Absent from the documents of older versions.
    #[serde(default)]
    peers_refused: u64,
    #[serde(default)]
    auth_failures: u64,
    #[serde(default)]
    timed_out: u64,
    /// The sum of `rejected_by_reason` (read back from the reasons, not from this).
    rejected: u64,
    rejected_by_reason: BTreeMap<String, u64>,
    /// Only for MQTT sources whose broker publishes the counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    broker_dropped: Option<u64>,
}

/// A `/status` document named a reject reason this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown reject reason `{0}`")]
struct UnknownReason(String);

impl From<SourceStatsSnapshot> for SourceStatusEntry {
    fn from(snapshot: SourceStatsSnapshot) -> SourceStatusEntry {
        SourceStatusEntry {
            rejected: snapshot.rejected_total(),
            rejected_by_reason: snapshot
                .rejected
                .iter()
                .map(|(reason, n)| (reason.as_str().to_owned(), *n))
                .collect(),
            name: snapshot.name,
            up: snapshot.up,
            received: snapshot.received,
            accepted: snapshot.accepted,
            refused: snapshot.refused,
            duplicates: snapshot.duplicates,
            broker_dropped: snapshot.broker_dropped,
            peers_refused: snapshot.peers_refused,
            auth_failures: snapshot.auth_failures,
            timed_out: snapshot.timed_out,
        }
    }
}

impl TryFrom<SourceStatusEntry> for SourceStatsSnapshot {
    type Error = UnknownReason;

    fn try_from(entry: SourceStatusEntry) -> Result<SourceStatsSnapshot, UnknownReason> {
        let mut rejected = Vec::with_capacity(entry.rejected_by_reason.len());
        for (name, n) in entry.rejected_by_reason {
            let reason = RejectReason::ALL
                .iter()
                .copied()
                .find(|reason| reason.as_str() == name)
                .ok_or(UnknownReason(name))?;
            rejected.push((reason, n));
        }
        rejected.sort_by_key(|(reason, _)| reason.index());
        Ok(SourceStatsSnapshot {
            name: entry.name,
            up: entry.up,
            received: entry.received,
            accepted: entry.accepted,
            refused: entry.refused,
            rejected,
            connections: 0,
            duplicates: entry.duplicates,
            broker_dropped: entry.broker_dropped,
            peers_refused: entry.peers_refused,
            auth_failures: entry.auth_failures,
            timed_out: entry.timed_out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_through_the_status_entry() {
        let stats = SourceStats::new("in");
        stats.set_up(true);
        stats.add_received(7);
        stats.add_accepted(4);
        stats.add_refused(1);
        stats.add_duplicates(2);
        stats.add_peer_refused();
        stats.add_auth_failure();
        stats.add_timed_out();
        stats.add_rejected(RejectReason::Overrun);
        stats.add_rejected(RejectReason::BadSyntax);
        stats.add_rejected(RejectReason::BadSyntax);
        let snapshot = stats.snapshot();
        let json = serde_json::to_string(&snapshot).expect("serialises");
        assert_eq!(
            json,
            r#"{"name":"in","up":true,"received":7,"accepted":4,"refused":1,"duplicates":2,"peers_refused":1,"auth_failures":1,"timed_out":1,"rejected":3,"rejected_by_reason":{"bad_syntax":2,"overrun":1}}"#
        );
        let back: SourceStatsSnapshot = serde_json::from_str(&json).expect("reads back");
        assert_eq!(back, snapshot);
    }

    #[test]
    fn broker_drops_rise_above_the_last_value_or_after_a_reset() {
        let stats = SourceStats::new("mqtt");
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert!(!stats.set_broker_dropped(0, at(0)), "a first zero is no drop");
        assert_eq!(stats.broker_dropped_rose_ago(at(0)), None);
        assert!(stats.set_broker_dropped(30, at(1)));
        assert!(!stats.set_broker_dropped(30, at(2)));
        assert_eq!(stats.broker_dropped_rose_ago(at(5)), Some(Duration::from_secs(4)));
        assert!(stats.set_broker_dropped(2, at(6)), "the broker restarted and dropped again");
        assert!(!stats.set_broker_dropped(0, at(7)), "a restart alone is no drop");
        assert_eq!(stats.snapshot().broker_dropped, Some(0));
        let json = serde_json::to_string(&stats.snapshot()).expect("serialises");
        assert!(json.ends_with(r#""broker_dropped":0}"#), "{json}");
        let other = SourceStats::new("tcp");
        assert!(!serde_json::to_string(&other.snapshot()).unwrap().contains("broker_dropped"));
    }

    #[test]
    fn an_unknown_reason_is_an_error_naming_it() {
        let json = r#"{"name":"in","up":true,"received":1,"accepted":0,"refused":0,"duplicates":0,"rejected":1,"rejected_by_reason":{"cosmic_ray":1}}"#;
        let error = serde_json::from_str::<SourceStatsSnapshot>(json).expect_err("unknown reason");
        assert!(error.to_string().contains("cosmic_ray"), "{error}");
    }
}
