//! Source marks as the daemon keeps them: their store keys, the durable view each source gets
//! back at start-up, and the guard that keeps a numbered session's stored mark from passing
//! lines the log refused.
//!
//! A mark travels with its readings: the ingest task writes it into the log chunk that holds
//! the batch's last reading (one value, so both are durable or neither), the aggregator
//! commits the marks of the chunks it processed together with the log position, and the trim
//! only removes chunks a flushed commit covers. So after any crash, the committed marks plus
//! those of the chunks replayed after the position are exactly the marks that were durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use eddy_sensors::{Mark, StoredMarks};

use crate::storage::MarkChange;

/// Kind byte of a TCP session's last settled line.
const KIND_SESSION: u8 = b'l';
/// Kind byte of an MQTT packet id's last stored fingerprint.
const KIND_PACKET: u8 = b'p';

/// Most sessions remembered as refused at once; a source caps its sessions far below this.
const MAX_REFUSED_SESSIONS: usize = 100_000;

/// The store key of a mark: the source's name, a zero byte, the kind, the id.
fn key(source: &str, kind: u8, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(source.len() + 2 + id.len());
    key.extend_from_slice(source.as_bytes());
    key.push(0);
    key.push(kind);
    key.extend_from_slice(id);
    key
}

/// The stored form of a mark of source `source`.
pub(crate) fn change_of(source: &str, mark: &Mark) -> MarkChange {
    match mark {
        Mark::Lines { session, last, .. } => (key(source, KIND_SESSION, session.as_bytes()), Some(*last)),
        Mark::Message { packet_id, fingerprint } => {
            (key(source, KIND_PACKET, &packet_id.to_be_bytes()), Some(u64::from(*fingerprint)))
        }
        Mark::ForgetSession { session } => (key(source, KIND_SESSION, session.as_bytes()), None),
    }
}

/// Every source's durable marks, by source name: the committed `stored` marks with the
/// `uncommitted` changes (of chunks replayed but not yet committed) applied on top. A key that
/// does not parse (written by a future version) is left out.
pub(crate) fn durable_by_source(
    stored: Vec<(Vec<u8>, u64)>,
    uncommitted: &[MarkChange],
) -> HashMap<String, StoredMarks> {
    let mut merged: BTreeMap<Vec<u8>, u64> = stored.into_iter().collect();
    for (key, value) in uncommitted {
        match value {
            Some(value) => merged.insert(key.clone(), *value),
            None => merged.remove(key),
        };
    }
    let mut by_source: HashMap<String, StoredMarks> = HashMap::new();
    for (key, value) in merged {
        let Some(split) = key.iter().position(|byte| *byte == 0) else { continue };
        let (Ok(source), Some((&kind, id))) =
            (std::str::from_utf8(&key[..split]), key[split + 1..].split_first())
        else {
            continue;
        };
        let marks = by_source.entry(source.to_owned()).or_default();
        match kind {
            KIND_SESSION => {
                if let Ok(session) = std::str::from_utf8(id) {
                    marks.sessions.push((Arc::from(session), value));
                }
            }
            KIND_PACKET => {
                if let (Ok(packet_id), Ok(fingerprint)) = (<[u8; 2]>::try_from(id), u32::try_from(value)) {
                    marks.messages.push((u16::from_be_bytes(packet_id), fingerprint));
                }
            }
            _ => {}
        }
    }
    by_source
}

/// Keeps each numbered session's stored mark contiguous. A session's mark says "every line up
/// to here is settled", and the source answers a resend of those lines as a duplicate without
/// storing it. If a batch of a session were refused (disk budget, failed write) while a later,
/// pipelined batch of the same session was stored, the mark would pass the refused lines and
/// their resend would be dropped as duplicates: lost. So once a batch is refused, every later
/// batch of that session past the refused line is refused too, until the sender resends from
/// that line or declares a new numbering (`#session`, which the source sends only once its
/// earlier batches are answered).
#[derive(Debug, Default)]
pub(crate) struct RefusedSessions {
    /// (source, session) → the first line refused.
    from: HashMap<(usize, Arc<str>), u64>,
}

impl RefusedSessions {
    /// Why a batch of `source` with `marks` must be refused, if it must; a batch that resends
    /// the refused lines or renumbers ends the refusal.
    pub(crate) fn check(&mut self, source: usize, marks: &[Mark]) -> Option<String> {
        for mark in marks {
            let Mark::Lines { session, first, renumbered, .. } = mark else { continue };
            let key = (source, session.clone());
            let Some(&from) = self.from.get(&key) else { continue };
            if *renumbered || *first <= from {
                self.from.remove(&key);
            } else {
                return Some(format!(
                    "line {from} of session {session} was refused; resend from it (`#session {session} {from}`)"
                ));
            }
        }
        None
    }

    /// Records that a batch of `source` with `marks` was refused.
    pub(crate) fn refused(&mut self, source: usize, marks: &[Mark]) {
        for mark in marks {
            let Mark::Lines { session, first, .. } = mark else { continue };
            if self.from.len() >= MAX_REFUSED_SESSIONS && !self.from.contains_key(&(source, session.clone()))
            {
                // Unreachable with the sources' session caps (`max_sessions` per source); the
                // bound only keeps memory finite. Said at ERROR, since past it a refused
                // session's later batches are no longer held back.
                tracing::error!(
                    sessions = self.from.len(),
                    "Too many refused sessions to track; this one's later batches are not held back."
                );
                continue;
            }
            let from = self.from.entry((source, session.clone())).or_insert(*first);
            *from = (*from).min(*first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(session: &str, first: u64, last: u64, renumbered: bool) -> Mark {
        Mark::Lines { session: Arc::from(session), first, last, renumbered }
    }

    #[test]
    fn durable_marks_come_back_per_source_with_uncommitted_changes_on_top() {
        let stored = vec![
            change_of("tcp-in", &lines("a", 1, 10, false)),
            change_of("tcp-in", &lines("b", 1, 5, false)),
            change_of("mqtt", &Mark::Message { packet_id: 7, fingerprint: 99 }),
        ]
        .into_iter()
        .map(|(key, value)| (key, value.unwrap()))
        .collect();
        let uncommitted: Vec<_> = [
            change_of("tcp-in", &lines("a", 11, 20, false)),
            change_of("tcp-in", &Mark::ForgetSession { session: Arc::from("b") }),
        ]
        .into_iter()
        .collect();
        let by_source = durable_by_source(stored, &uncommitted);
        assert_eq!(by_source["tcp-in"].sessions, vec![(Arc::from("a"), 20)]);
        assert!(by_source["tcp-in"].messages.is_empty());
        assert_eq!(by_source["mqtt"].messages, vec![(7, 99)]);
    }

    #[test]
    fn a_refused_session_stays_refused_past_the_refused_line_until_resent_or_renumbered() {
        let mut refused = RefusedSessions::default();
        assert_eq!(refused.check(0, &[lines("a", 1, 10, false)]), None);
        refused.refused(0, &[lines("a", 11, 20, false)]);
        // A pipelined later batch must not be stored past the gap.
        assert!(refused.check(0, &[lines("a", 21, 30, false)]).unwrap().contains("line 11"));
        // Other sessions and sources are not affected.
        assert_eq!(refused.check(0, &[lines("b", 21, 30, false)]), None);
        assert_eq!(refused.check(1, &[lines("a", 21, 30, false)]), None);
        // Resending from the refused line ends it.
        assert_eq!(refused.check(0, &[lines("a", 11, 30, false)]), None);
        assert_eq!(refused.check(0, &[lines("a", 31, 40, false)]), None);
        // So does a new numbering.
        refused.refused(0, &[lines("a", 41, 50, false)]);
        assert!(refused.check(0, &[lines("a", 60, 70, false)]).is_some());
        assert_eq!(refused.check(0, &[lines("a", 60, 70, true)]), None);
    }
}
