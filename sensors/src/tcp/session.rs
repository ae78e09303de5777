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
//!
//! A session belongs to the owner that first claimed it (a client certificate's subject, the
//! shared token, or the peer's address without credentials): another owner is refused, so a
//! stranger cannot poison a session's number. `FIRST` may skip at most `max_skip_lines` past
//! the settled line, so even the owner cannot silence its session by mistake; one owner has
//! at most `max_per_owner` sessions and only ever displaces its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::tcp::peer::Owner;

/// How long a connection waits for the previous owner of its session to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);
/// How often it looks while it waits.
const TAKEOVER_POLL: Duration = Duration::from_millis(10);
/// Longest session id, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 128;

/// The sessions of one TCP source, shared by its connections.
#[derive(Debug)]
pub(crate) struct Sessions {
    inner: Mutex<Inner>,
    limits: SessionLimits,
}

/// The bounds of a session table (see [`TcpSourceConfig`](crate::TcpSourceConfig)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    /// Sessions remembered at once.
    pub(crate) max_sessions: usize,
    /// Sessions one owner may have.
    pub(crate) max_per_owner: usize,
    /// How far `FIRST` may jump past the settled line.
    pub(crate) max_skip_lines: u64,
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
    /// The credential or peer the session belongs to; `None` for a session restored from the
    /// store that nobody has claimed since the start (the first claimant becomes its owner).
    owner: Option<Owner>,
    /// The claim that holds the session now: its id and the token that asks it to let go.
    holder: Option<(u64, CancellationToken)>,
    /// When it was last claimed (a claim count): the least recent goes when room is needed.
    last_claimed: u64,
}

/// Why a connection could not have its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// The previous connection did not let go in time (its writes are stuck).
    Busy,
    /// No room: the owner's sessions, or every session it may displace, are held by open
    /// connections.
    Full,
    /// The session belongs to another credential or peer.
    NotOwner,
    /// `FIRST` is further than `max_skip_lines` past the settled line.
    TooFarAhead {
        /// The session's settled line.
        settled: u64,
        /// The bound.
        max_skip_lines: u64,
    },
}

impl ClaimError {
    /// The reason word of the `session-refused` reply.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ClaimError::Busy => "busy",
            ClaimError::Full => "too_many_sessions",
            ClaimError::NotOwner => "not_owner",
            ClaimError::TooFarAhead { .. } => "too_far_ahead",
        }
    }

    /// The free text after the reason word.
    pub(crate) fn detail(self) -> String {
        match self {
            ClaimError::Busy => "the session's previous connection did not let go".to_owned(),
            ClaimError::Full => "no session of this peer (or unclaimed one) can be forgotten".to_owned(),
            ClaimError::NotOwner => "session owned by another peer".to_owned(),
            ClaimError::TooFarAhead { settled, max_skip_lines } => {
                format!(
                    "settled through line {settled}; FIRST may skip at most {max_skip_lines} lines past it"
                )
            }
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
    /// A table bounded by `limits`, starting from the durable `stored` sessions (owned by
    /// nobody yet).
    pub(crate) fn new(limits: SessionLimits, stored: Vec<(Arc<str>, u64)>) -> Sessions {
        let entries = stored
            .into_iter()
            .map(|(session, settled)| {
                (session, Entry { settled, owner: None, holder: None, last_claimed: 0 })
            })
            .collect();
        let limits = SessionLimits {
            max_sessions: limits.max_sessions.max(1),
            max_per_owner: limits.max_per_owner.max(1),
            max_skip_lines: limits.max_skip_lines,
        };
        Sessions { inner: Mutex::new(Inner { entries, n_claims: 0 }), limits }
    }

    /// Takes `session` for a connection of `owner` whose next line is `first`, first asking its
    /// current holder to let go and waiting (up to [`TAKEOVER_WAIT`]) until it has settled
    /// what it had in flight. A session of another owner, or a `first` too far ahead, is
    /// refused at once and changes nothing.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        session: Arc<str>,
        owner: &Owner,
        first: u64,
    ) -> Result<SessionClaim, ClaimError> {
        let deadline = Instant::now() + TAKEOVER_WAIT;
        loop {
            match self.try_claim(&session, owner, first) {
                Ok(claim) => return Ok(claim),
                Err(ClaimError::Busy) if Instant::now() < deadline => tokio::time::sleep(TAKEOVER_POLL).await,
                Err(error) => return Err(error),
            }
        }
    }

    fn try_claim(
        self: &Arc<Self>,
        session: &Arc<str>,
        owner: &Owner,
        first: u64,
    ) -> Result<SessionClaim, ClaimError> {
        let mut inner = self.inner.lock().expect("the sessions lock is never poisoned");
        let known = inner.entries.get(session);
        if known.and_then(|entry| entry.owner.as_ref()).is_some_and(|entry_owner| entry_owner != owner) {
            return Err(ClaimError::NotOwner);
        }
        let settled = known.map_or(0, |entry| entry.settled);
        // Lines between the settled one and FIRST would be skipped; saturating, so that no
        // FIRST (u64::MAX included) can overflow.
        let skipped = first.saturating_sub(settled.saturating_add(1));
        if skipped > self.limits.max_skip_lines {
            return Err(ClaimError::TooFarAhead { settled, max_skip_lines: self.limits.max_skip_lines });
        }
        let mut forgotten = None;
        if known.is_none() {
            let n_owned = inner.entries.values().filter(|entry| entry.owner.as_ref() == Some(owner)).count();
            let owner_full = n_owned >= self.limits.max_per_owner;
            if owner_full || inner.entries.len() >= self.limits.max_sessions {
                // Only the owner's own sessions may go, or (to make room in a full table) one
                // restored from the store that nobody has claimed since: never another
                // peer's.
                let victim = inner
                    .entries
                    .iter()
                    .filter(|(_, entry)| entry.holder.is_none())
                    .filter(|(_, entry)| match &entry.owner {
                        Some(entry_owner) => entry_owner == owner,
                        None => !owner_full,
                    })
                    .min_by_key(|(_, entry)| entry.last_claimed)
                    .map(|(key, _)| key.clone())
                    .ok_or(ClaimError::Full)?;
                inner.entries.remove(&victim);
                forgotten = Some(victim);
            }
        }
        inner.n_claims += 1;
        let claim_id = inner.n_claims;
        let entry = inner.entries.entry(session.clone()).or_insert(Entry {
            settled: 0,
            owner: None,
            holder: None,
            last_claimed: 0,
        });
        if let Some((_, takeover)) = &entry.holder {
            takeover.cancel();
            return Err(ClaimError::Busy);
        }
        let takeover = CancellationToken::new();
        entry.owner = Some(owner.clone());
        entry.holder = Some((claim_id, takeover.clone()));
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
            if entry.holder.as_ref().is_some_and(|(claim_id, _)| *claim_id == self.claim_id) {
                entry.holder = None;
            }
        }
    }
}

/// Parses a `#session ID FIRST` control line: `ID` is 1 to 128 bytes of letters, digits and
/// `. _ - : @ /`; `FIRST`, the number of the next reading line, is at least 1. Words are
/// separated by ASCII whitespace. `Err` says why the line is refused.
///
/// Public for the fuzz targets (`fuzz/`); a TCP source calls it on every line that starts
/// with `#session`.
pub fn parse_session_line(line: &[u8]) -> Result<(Arc<str>, u64), String> {
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

    fn limits(max_sessions: usize, max_per_owner: usize) -> SessionLimits {
        SessionLimits { max_sessions, max_per_owner, max_skip_lines: 1000 }
    }

    fn peer(last_octet: u8) -> Owner {
        Owner::Peer(std::net::IpAddr::from([10, 0, 0, last_octet]))
    }

    #[tokio::test]
    async fn a_claim_starts_from_the_stored_number_and_settles_forward_only() {
        let sessions = Arc::new(Sessions::new(limits(8, 8), vec![(Arc::from("a"), 40)]));
        let claim = sessions.claim(Arc::from("a"), &peer(1), 41).await.unwrap();
        assert_eq!(claim.settled, 40);
        claim.settle(50);
        claim.settle(45);
        assert_eq!(sessions.settled("a"), 50);
        drop(claim);
        assert_eq!(sessions.claim(Arc::from("a"), &peer(1), 1).await.unwrap().settled, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_connection_takes_the_session_over_once_the_first_lets_go() {
        let sessions = Arc::new(Sessions::new(limits(8, 8), vec![]));
        let first = sessions.claim(Arc::from("a"), &peer(1), 1).await.unwrap();
        let takeover = first.takeover.clone();
        let contender = {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.claim(Arc::from("a"), &peer(1), 1).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(takeover.is_cancelled(), "the owner is asked to let go");
        assert!(!contender.is_finished(), "the contender waits for it");
        first.settle(7);
        drop(first);
        let second = contender.await.unwrap().unwrap();
        assert_eq!(second.settled, 7, "the new owner sees what the old one settled");

        // An owner that never lets go makes the contender give up, not wait forever.
        let owner = peer(1);
        let stuck = sessions.claim(Arc::from("a"), &owner, 1);
        assert_eq!(stuck.await.unwrap_err(), ClaimError::Busy);
        drop(second);
    }

    #[tokio::test]
    async fn a_full_table_forgets_the_least_recently_claimed_free_session_of_the_same_owner() {
        let sessions = Arc::new(Sessions::new(limits(3, 3), vec![(Arc::from("restored"), 3)]));
        let held = sessions.claim(Arc::from("held"), &peer(1), 1).await.unwrap();
        drop(sessions.claim(Arc::from("mine"), &peer(2), 1).await.unwrap());
        // Full: an unclaimed restored session may go, another peer's may not.
        let new = sessions.claim(Arc::from("new"), &peer(1), 1).await.unwrap();
        assert_eq!(new.forgotten.as_deref(), Some("restored"));
        drop(new);
        let newer = sessions.claim(Arc::from("newer"), &peer(1), 1).await.unwrap();
        assert_eq!(newer.forgotten.as_deref(), Some("new"), "its own, not peer 2's `mine`");
        // Both of peer 1's sessions are held: nothing of its own can be forgotten.
        assert_eq!(sessions.claim(Arc::from("third"), &peer(1), 1).await.unwrap_err(), ClaimError::Full);
        assert_eq!(sessions.settled("mine"), 0);
        drop((held, newer));
    }

    #[tokio::test]
    async fn one_owner_churning_sessions_never_evicts_another_owners() {
        let sessions = Arc::new(Sessions::new(limits(100, 4), vec![]));
        let real = sessions.claim(Arc::from("gw7"), &peer(1), 1).await.unwrap();
        real.settle(10);
        drop(real);
        for idx in 0..1000 {
            let junk = sessions.claim(Arc::from(format!("junk-{idx}")), &peer(66), 1).await.unwrap();
            drop(junk);
        }
        assert_eq!(sessions.settled("gw7"), 10);
        assert_eq!(sessions.claim(Arc::from("gw7"), &peer(1), 11).await.unwrap().settled, 10);
    }

    #[tokio::test]
    async fn a_session_belongs_to_its_owner_and_first_cannot_jump_far_ahead() {
        let sessions = Arc::new(Sessions::new(limits(8, 8), vec![]));
        drop(sessions.claim(Arc::from("gw7"), &peer(1), 1).await.unwrap());
        assert_eq!(sessions.claim(Arc::from("gw7"), &peer(2), 1).await.unwrap_err(), ClaimError::NotOwner);
        let too_far = ClaimError::TooFarAhead { settled: 0, max_skip_lines: 1000 };
        assert_eq!(sessions.claim(Arc::from("gw7"), &peer(1), u64::MAX).await.unwrap_err(), too_far);
        assert_eq!(sessions.claim(Arc::from("gw7"), &peer(1), 1002).await.unwrap_err(), too_far);
        assert!(sessions.claim(Arc::from("gw7"), &peer(1), 1001).await.is_ok());
        // A refused new session leaves nothing behind.
        assert_eq!(sessions.claim(Arc::from("fresh"), &peer(1), u64::MAX).await.unwrap_err(), too_far);
        assert!(sessions.claim(Arc::from("fresh"), &peer(2), 1).await.is_ok(), "nobody owned `fresh`");
        // A restored session is owned by its first claimant.
        let restored = Arc::new(Sessions::new(limits(8, 8), vec![(Arc::from("r"), u64::MAX - 1)]));
        let claim = restored.claim(Arc::from("r"), &Owner::Token, u64::MAX).await.unwrap();
        assert_eq!(claim.settled, u64::MAX - 1);
        drop(claim);
        assert_eq!(restored.claim(Arc::from("r"), &peer(1), 1).await.unwrap_err(), ClaimError::NotOwner);
    }
}
