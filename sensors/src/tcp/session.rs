//! Numbered TCP sessions: which line of each session is the last one settled, and which
//! connection owns a session now.
//!
//! A sender that declares `#session ID FIRST` numbers its reading lines `FIRST, FIRST + 1, …`.
//! The last settled number of each session is durable (a `Mark::Lines` stored with the
//! readings), so a line at or below it, resent after eddy died before its `ack` went out, is
//! answered `dup` and not stored again. One connection owns a session at a time: a new
//! connection for the same session (the sender reconnected while the old connection still
//! looks open to eddy) takes it over, once the old one has settled what it had in flight, so
//! the number it answers is exact.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connection waits for the previous owner of its session to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);
/// How often it looks while it waits.
const TAKEOVER_POLL: Duration = Duration::from_millis(10);
/// Longest session id, in bytes.
pub(crate) const MAX_SESSION_ID_BYTES: usize = 128;

/// The sessions of one TCP source, shared by its connections.
#[derive(Debug)]
pub(crate) struct Sessions {
    inner: Mutex<Inner>,
    max_sessions: usize,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Arc<str>, Entry>,
    /// Claims so far: the id of the next one, and the recency of an entry's last claim.
    n_claims: u64,
}

#[derive(Debug)]
struct Entry {
    /// The last line number known to be settled (durable or rejected).
    settled: u64,
    /// The claim that owns the session: its id and the token that asks it to let go.
    owner: Option<(u64, CancellationToken)>,
    /// When it was last claimed (a claim count): the least recent goes when the table is full.
    last_claimed: u64,
}

/// Why a connection could not have its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// The previous connection did not let go in time (its writes are stuck).
    Busy,
    /// Every remembered session is owned by an open connection: none can be forgotten.
    Full,
}

impl ClaimError {
    /// The reason word of the `session-refused` reply.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ClaimError::Busy => "busy",
            ClaimError::Full => "too_many_sessions",
        }
    }
}

/// A connection's ownership of a session; let go when the last clone is dropped (the reader
/// holds one, each reply entry in flight another, so the next owner sees every settled line).
#[derive(Debug)]
pub(crate) struct SessionClaim {
    sessions: Arc<Sessions>,
    /// The session id.
    pub(crate) session: Arc<str>,
    claim_id: u64,
    /// Cancelled when another connection wants the session.
    pub(crate) takeover: CancellationToken,
    /// The last settled line when the claim was made.
    pub(crate) settled: u64,
    /// A session forgotten to make room for this one; the store must forget it too.
    pub(crate) forgotten: Option<Arc<str>>,
}

impl Sessions {
    /// A table of at most `max_sessions` sessions, starting from the durable `stored` ones.
    pub(crate) fn new(max_sessions: usize, stored: Vec<(Arc<str>, u64)>) -> Sessions {
        let entries = stored
            .into_iter()
            .map(|(session, settled)| (session, Entry { settled, owner: None, last_claimed: 0 }))
            .collect();
        Sessions { inner: Mutex::new(Inner { entries, n_claims: 0 }), max_sessions: max_sessions.max(1) }
    }

    /// Takes `session` for a connection, first asking its current owner to let go and waiting
    /// (up to [`TAKEOVER_WAIT`]) until it has settled what it had in flight.
    pub(crate) async fn claim(self: &Arc<Self>, session: Arc<str>) -> Result<SessionClaim, ClaimError> {
        let deadline = Instant::now() + TAKEOVER_WAIT;
        loop {
            match self.try_claim(&session) {
                Ok(claim) => return Ok(claim),
                Err(ClaimError::Busy) if Instant::now() < deadline => tokio::time::sleep(TAKEOVER_POLL).await,
                Err(error) => return Err(error),
            }
        }
    }

    fn try_claim(self: &Arc<Self>, session: &Arc<str>) -> Result<SessionClaim, ClaimError> {
        let mut inner = self.inner.lock().expect("the sessions lock is never poisoned");
        inner.n_claims += 1;
        let claim_id = inner.n_claims;
        let mut forgotten = None;
        if !inner.entries.contains_key(session) && inner.entries.len() >= self.max_sessions {
            let oldest = inner
                .entries
                .iter()
                .filter(|(_, entry)| entry.owner.is_none())
                .min_by_key(|(_, entry)| entry.last_claimed)
                .map(|(key, _)| key.clone())
                .ok_or(ClaimError::Full)?;
            inner.entries.remove(&oldest);
            forgotten = Some(oldest);
        }
        let entry = inner.entries.entry(session.clone()).or_insert(Entry {
            settled: 0,
            owner: None,
            last_claimed: 0,
        });
        if let Some((_, takeover)) = &entry.owner {
            takeover.cancel();
            return Err(ClaimError::Busy);
        }
        let takeover = CancellationToken::new();
        entry.owner = Some((claim_id, takeover.clone()));
        entry.last_claimed = claim_id;
        Ok(SessionClaim {
            sessions: self.clone(),
            session: session.clone(),
            claim_id,
            takeover,
            settled: entry.settled,
            forgotten,
        })
    }

    /// The last settled line of `session` (0 for an unknown one).
    #[cfg(test)]
    pub(crate) fn settled(&self, session: &str) -> u64 {
        let inner = self.inner.lock().expect("the sessions lock is never poisoned");
        inner.entries.get(session).map_or(0, |entry| entry.settled)
    }
}

impl SessionClaim {
    /// Lines up to `last` are settled: their batch is durable.
    pub(crate) fn settle(&self, last: u64) {
        let mut inner = self.sessions.inner.lock().expect("the sessions lock is never poisoned");
        if let Some(entry) = inner.entries.get_mut(&self.session) {
            entry.settled = entry.settled.max(last);
        }
    }
}

impl Drop for SessionClaim {
    fn drop(&mut self) {
        let mut inner = self.sessions.inner.lock().expect("the sessions lock is never poisoned");
        if let Some(entry) = inner.entries.get_mut(&self.session) {
            if entry.owner.as_ref().is_some_and(|(claim_id, _)| *claim_id == self.claim_id) {
                entry.owner = None;
            }
        }
    }
}

/// Parses a `#session ID FIRST` control line: `ID` is 1 to 128 bytes of letters, digits and
/// `. _ - : @ /`; `FIRST`, the number of the next reading line, is at least 1.
pub(crate) fn parse_session_line(line: &[u8]) -> Result<(Arc<str>, u64), String> {
    let text = std::str::from_utf8(line).map_err(|_| "the session line is not UTF-8".to_owned())?;
    let mut words = text.split_ascii_whitespace();
    let (Some("#session"), Some(id), Some(first), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err("expected `#session ID FIRST`".to_owned());
    };
    let id_ok = id.len() <= MAX_SESSION_ID_BYTES
        && id.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-:@/".contains(&byte));
    if !id_ok {
        return Err(format!("a session id is 1 to {MAX_SESSION_ID_BYTES} letters, digits or . _ - : @ /"));
    }
    match first.parse::<u64>() {
        Ok(first @ 1..) => Ok((Arc::from(id), first)),
        _ => Err("FIRST must be a line number of at least 1".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lines_parse_or_say_why_not() {
        assert_eq!(parse_session_line(b"#session gw-7/probe.1 42"), Ok((Arc::from("gw-7/probe.1"), 42)));
        assert_eq!(parse_session_line(b"#session  a   1 "), Ok((Arc::from("a"), 1)));
        for bad in
            [&b"#session a"[..], b"#session a 0", b"#session a -1", b"#session a 1 2", b"#session a\xff 1"]
        {
            assert!(parse_session_line(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_session_line(b"#session has$dollar 1").unwrap_err().contains("letters"));
        let long = format!("#session {} 1", "x".repeat(MAX_SESSION_ID_BYTES + 1));
        assert!(parse_session_line(long.as_bytes()).is_err());
    }

    #[tokio::test]
    async fn a_claim_starts_from_the_stored_number_and_settles_forward_only() {
        let sessions = Arc::new(Sessions::new(8, vec![(Arc::from("a"), 40)]));
        let claim = sessions.claim(Arc::from("a")).await.unwrap();
        assert_eq!(claim.settled, 40);
        claim.settle(50);
        claim.settle(45);
        assert_eq!(sessions.settled("a"), 50);
        drop(claim);
        assert_eq!(sessions.claim(Arc::from("a")).await.unwrap().settled, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_connection_takes_the_session_over_once_the_first_lets_go() {
        let sessions = Arc::new(Sessions::new(8, vec![]));
        let first = sessions.claim(Arc::from("a")).await.unwrap();
        let takeover = first.takeover.clone();
        let contender = {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.claim(Arc::from("a")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(takeover.is_cancelled(), "the owner is asked to let go");
        assert!(!contender.is_finished(), "the contender waits for it");
        first.settle(7);
        drop(first);
        let second = contender.await.unwrap().unwrap();
        assert_eq!(second.settled, 7, "the new owner sees what the old one settled");

        // An owner that never lets go makes the contender give up, not wait forever.
        let stuck = sessions.claim(Arc::from("a"));
        assert_eq!(stuck.await.unwrap_err(), ClaimError::Busy);
        drop(second);
    }

    #[tokio::test]
    async fn a_full_table_forgets_the_least_recently_claimed_free_session() {
        let sessions = Arc::new(Sessions::new(2, vec![(Arc::from("old"), 3)]));
        let held = sessions.claim(Arc::from("held")).await.unwrap();
        let new = sessions.claim(Arc::from("new")).await.unwrap();
        assert_eq!(new.forgotten.as_deref(), Some("old"));
        drop(new);
        // Both remembered sessions owned: nothing can be forgotten.
        let _new_again = sessions.claim(Arc::from("new")).await.unwrap();
        assert_eq!(sessions.claim(Arc::from("third")).await.unwrap_err(), ClaimError::Full);
        drop(held);
    }
}
