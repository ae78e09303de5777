//! The reading half of a TCP connection: frames and decodes lines, declares numbered
//! sessions, and submits batches to the durable log, queueing for each the reply the writer
//! sends once the batch is durable.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::framing::{Frame, LineFramer};
use crate::ingest::{IngestClosed, IngestSender, Mark};
use crate::parse::LineDecoder;
use crate::reject::{RejectReason, Rejection};
use crate::tcp::conn::{AwaitDurability, Outcome, PendingBatch, ReplyEntry, ReplyQueue};
use crate::tcp::peer::Owner;
use crate::tcp::session::{parse_session_line, SessionClaim, Sessions};
use crate::tcp::warn_limit::WarnLimiter;
use eddy_common::{truncate_for_log, wall_clock_ms};

/// The prefix of a control line declaring a numbered session; never a reading in any format
/// (`#` is not JSON, and a comment in line protocol).
const SESSION_PREFIX: &[u8] = b"#session";

/// A batch's readings are reserved for the buffered bytes divided by this: a thermostat's
/// JSON line is ~100 bytes, so the guess errs on the large side and rarely grows.
const MIN_EXPECTED_LINE_BYTES: usize = 48;

/// Longest rejection detail kept for an `err` reply; bounds the memory a connection's queued
/// replies can take when a sender floods short garbage lines and never reads its replies.
const MAX_DETAIL_BYTES: usize = 120;

/// Why the reader stopped.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The peer closed its side; every line was handled.
    Eof,
    /// Shutdown; every complete line read was handled, `unterminated_bytes` were dropped.
    Shutdown {
        unterminated_bytes: usize,
    },
    ReadFailed(io::Error),
    IngestClosed,
    /// The writer stopped (the peer is gone or not reading and the write failed).
    RepliesClosed,
    /// Another connection claimed this connection's session.
    TakenOver,
    /// A `#session` line was refused (malformed, or the session could not be had).
    SessionRefused,
    /// Nothing came for `idle_timeout`.
    Idle,
}

#[derive(Debug)]
pub(crate) struct ReadSummary {
    pub(crate) end: ReadEnd,
    pub(crate) lines: u64,
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
}

/// The reading half: everything it needs across `select!` lives here, not in locals.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    pub(crate) framer: LineFramer<R>,
    pub(crate) decoder: LineDecoder,
    pub(crate) ingest: IngestSender,
    pub(crate) source_idx: usize,
    pub(crate) max_batch_lines: usize,
    pub(crate) replies: Option<ReplyQueue>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) line_no: u64,
    pub(crate) n_accepted: u64,
    pub(crate) n_rejected: u64,
    pub(crate) rejection_warnings: WarnLimiter,
    pub(crate) sessions: Arc<Sessions>,
    /// Who the sessions this connection declares belong to.
    pub(crate) owner: Owner,
    /// The numbered session this connection owns, if it declared one.
    pub(crate) claim: Option<Arc<SessionClaim>>,
    /// The session number of the next reading line; `None` once `u64::MAX` was used.
    pub(crate) next_line: Option<u64>,
    /// Lines up to this number were settled before the claim: answered `dup`, not stored.
    pub(crate) dup_through: u64,
    /// No batch was sent since the session was declared.
    pub(crate) renumbered: bool,
    /// A session the table forgot for this one; the store forgets it with the next batch.
    pub(crate) pending_forget: Option<Arc<str>>,
    /// Cancelled by the writer when replies cannot be written, or here when the session is
    /// taken over (the writer then stops writing, but still settles what is in flight).
    pub(crate) replies_stopped: CancellationToken,
    /// A connection silent this long is closed: counted from each time the reader is ready
    /// for more, so time spent waiting for the durable log is never the peer's idleness.
    pub(crate) idle_timeout: Duration,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Reads until the end; gives the framer back (for the linger after a shutdown).
    pub(crate) async fn run(mut self) -> (ReadSummary, LineFramer<R>) {
        let end = self.read_until_end().await;
        let summary =
            ReadSummary { end, lines: self.line_no, accepted: self.n_accepted, rejected: self.n_rejected };
        // Dropping the rest drops the reply queue, which lets the writer finish.
        (summary, self.framer)
    }

    async fn read_until_end(&mut self) -> ReadEnd {
        loop {
            if let Err(end) = self.frame_buffered().await {
                return end;
            }
            if self.framer.is_eof() {
                return ReadEnd::Eof;
            }
            let idle_deadline = Instant::now() + self.idle_timeout;
            let filled = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Filled::Shutdown,
                () = taken_over(self.claim.as_deref()) => Filled::TakenOver,
                () = self.replies_stopped.cancelled() => Filled::RepliesStopped,
                () = tokio::time::sleep_until(idle_deadline) => Filled::Idle,
                filled = self.framer.fill() => Filled::Read(filled),
            };
            match filled {
                Filled::Shutdown => {
                    return ReadEnd::Shutdown { unterminated_bytes: self.framer.buffered_len() }
                }
                Filled::TakenOver => {
                    self.replies_stopped.cancel();
                    return ReadEnd::TakenOver;
                }
                Filled::RepliesStopped => return ReadEnd::RepliesClosed,
                Filled::Idle => return ReadEnd::Idle,
                Filled::Read(Ok(_)) => {}
                Filled::Read(Err(error)) => return ReadEnd::ReadFailed(error),
            }
        }
    }

    /// Decodes every complete line in the buffer and submits them, in batches of at most
    /// `max_batch_lines` lines.
    async fn frame_buffered(&mut self) -> Result<(), ReadEnd> {
        let now_ms = wall_clock_ms();
        let keep_outcomes = self.replies.is_some();
        // A batch's replies stay well inside the connection's byte bound, so that the bound
        // holds within one entry of its limit.
        let max_batch_reply_bytes =
            self.replies.as_ref().map_or(usize::MAX, |replies| replies.max_reply_bytes / 4);
        let mut batch = PendingBatch::default();
        while let Some(frame) = self.framer.next_frame() {
            if let Frame::Line(line) = &frame {
                if line.starts_with(SESSION_PREFIX) {
                    let line = line.to_vec();
                    // What came before is answered before the session reply.
                    if batch.n_lines > 0 {
                        self.submit(std::mem::take(&mut batch)).await?;
                    }
                    self.declare_session(&line).await?;
                    continue;
                }
            }
            self.line_no = self.line_no.saturating_add(1);
            if self.claim.is_some() {
                let Some(number) = self.next_line else {
                    // The line after number u64::MAX: no number left to give it.
                    if batch.n_lines > 0 {
                        self.submit(std::mem::take(&mut batch)).await?;
                    }
                    warn!("A numbered session ran out of line numbers; closing.");
                    self.reply(
                        "session-refused exhausted line numbers of this session are used up; declare a new session id"
                            .to_owned(),
                    )
                    .await?;
                    return Err(ReadEnd::SessionRefused);
                };
                self.next_line = number.checked_add(1);
                if number <= self.dup_through {
                    // Settled on an earlier connection: answered, not decoded, not stored.
                    self.decoder.stats().add_received(1);
                    self.decoder.stats().add_duplicates(1);
                    match batch.outcomes.last_mut() {
                        Some(Outcome::Duplicate(n_lines)) => *n_lines += 1,
                        _ => batch.outcomes.push(Outcome::Duplicate(1)),
                    }
                    batch.n_lines += 1;
                    if batch.n_lines >= self.max_batch_lines {
                        self.submit(std::mem::take(&mut batch)).await?;
                    }
                    continue;
                }
                batch.first_line.get_or_insert(number);
                batch.last_line = number;
            }
            let decoded = match frame {
                Frame::Line(line) => self.decoder.decode(line, now_ms),
                Frame::TooLong => {
                    self.decoder.reject_unparsed(RejectReason::LineTooLong);
                    let max_line_bytes = self.decoder.limits().max_line_bytes;
                    Err(Rejection::new(
                        RejectReason::LineTooLong,
                        format!("longer than {max_line_bytes} bytes"),
                    ))
                }
            };
            batch.n_lines += 1;
            match decoded {
                Ok(reading) => {
                    self.n_accepted += 1;
                    if batch.readings.capacity() == 0 {
                        // Sized once for the lines already buffered, instead of growing (and
                        // copying) a reading at a time.
                        let expected = self.framer.buffered_len() / MIN_EXPECTED_LINE_BYTES + 1;
                        batch.readings.reserve_exact(expected.min(self.max_batch_lines));
                    }
                    batch.readings.push(reading);
                    if keep_outcomes {
                        match batch.outcomes.last_mut() {
                            Some(Outcome::Accepted(n_lines)) => *n_lines += 1,
                            _ => batch.outcomes.push(Outcome::Accepted(1)),
                        }
                    }
                }
                Err(mut rejection) => {
                    self.n_rejected += 1;
                    if let Some(suppressed) = self.rejection_warnings.allow(Instant::now()) {
                        warn!(
                            line_no = self.line_no,
                            reason = %rejection.reason,
                            detail = %truncate_for_log(&rejection.detail),
                            suppressed,
                            "Rejected a line."
                        );
                    }
                    if keep_outcomes {
                        truncate_at_char_boundary(&mut rejection.detail, MAX_DETAIL_BYTES);
                        let outcome = Outcome::Rejected { line_no: self.line_no, rejection };
                        batch.reply_bytes += outcome.bytes();
                        batch.outcomes.push(outcome);
                    }
                }
            }
            if batch.n_lines >= self.max_batch_lines || batch.reply_bytes >= max_batch_reply_bytes {
                self.submit(std::mem::take(&mut batch)).await?;
            }
        }
        if batch.n_lines > 0 {
            self.submit(batch).await?;
        }
        Ok(())
    }

    /// Hands the readings over (waiting while the ingest channel is full) and queues the
    /// replies.
    async fn submit(&mut self, batch: PendingBatch) -> Result<(), ReadEnd> {
        let PendingBatch { readings, outcomes, n_lines: _, first_line, last_line, reply_bytes: _ } = batch;
        let Some(replies) = &self.replies else {
            if readings.is_empty() {
                return Ok(());
            }
            return self
                .ingest
                .send(self.source_idx, readings)
                .await
                .map_err(|IngestClosed| ReadEnd::IngestClosed);
        };
        // Taken before handing the readings over, so at most `max_in_flight_batches` batches
        // of this connection are waiting for durability at any time.
        let reply_bytes = replies.reply_bytes(&outcomes).await;
        let in_flight =
            replies.in_flight.clone().acquire_owned().await.expect("the in-flight semaphore is never closed");
        let mut ingest_closed = false;
        let mut marks = Vec::new();
        let mut settles = None;
        if let (Some(claim), Some(first), false) = (&self.claim, first_line, readings.is_empty()) {
            marks.push(Mark::Lines {
                session: claim.session.clone(),
                first,
                last: last_line,
                renumbered: std::mem::take(&mut self.renumbered),
            });
            if let Some(session) = self.pending_forget.take() {
                marks.push(Mark::ForgetSession { session });
            }
            settles = Some((claim.clone(), last_line));
        }
        let durability = if readings.is_empty() {
            AwaitDurability::NothingStored
        } else {
            match self.ingest.send_marked(self.source_idx, readings, marks).await {
                Ok(answer) => AwaitDurability::Waiting(answer),
                Err(IngestClosed) => {
                    ingest_closed = true;
                    AwaitDurability::Refused(Arc::from("the durable log is closed"))
                }
            }
        };
        let entry = ReplyEntry { outcomes, durability, settles, in_flight, reply_bytes };
        if replies.entries.send(entry).await.is_err() {
            return Err(ReadEnd::RepliesClosed);
        }
        if ingest_closed {
            return Err(ReadEnd::IngestClosed);
        }
        Ok(())
    }

    /// Handles `#session ID FIRST`: once every earlier batch is answered (so the number is
    /// exact), claims the session and answers `session ID SETTLED`; the next reading line is
    /// number `FIRST`. A malformed line, a connection without replies, or a session that
    /// cannot be had is answered `session-refused REASON [DETAIL]` and ends the connection:
    /// going on unnumbered would silently weaken what the sender asked for.
    async fn declare_session(&mut self, line: &[u8]) -> Result<(), ReadEnd> {
        let Some(replies) = &self.replies else {
            self.decoder.reject_unparsed(RejectReason::BadSyntax);
            warn!("A `#session` line on a source without `ack = true`: sessions need acknowledgements; closing.");
            return Err(ReadEnd::SessionRefused);
        };
        let (session, first) = match parse_session_line(line) {
            Ok(parsed) => parsed,
            Err(detail) => {
                warn!(%detail, "Refused a malformed `#session` line; closing.");
                self.reply(format!("session-refused bad_syntax {detail}")).await?;
                return Err(ReadEnd::SessionRefused);
            }
        };
        // Every permit back: every earlier entry is answered and has settled its lines. A peer
        // that never reads its replies can hold this up; shutdown cannot be.
        let all = tokio::select! {
            () = self.shutdown.cancelled() => {
                return Err(ReadEnd::Shutdown { unterminated_bytes: self.framer.buffered_len() });
            }
            all = replies.in_flight.clone().acquire_many_owned(replies.max_in_flight) => all,
        };
        drop(all.expect("the in-flight semaphore is never closed"));
        self.claim = None;
        let claimed = tokio::select! {
            () = self.shutdown.cancelled() => {
                return Err(ReadEnd::Shutdown { unterminated_bytes: self.framer.buffered_len() });
            }
            claimed = self.sessions.claim(session.clone(), &self.owner, first) => claimed,
        };
        match claimed {
            Ok(claim) => {
                debug!(%session, first, settled = claim.settled, "Session declared.");
                self.dup_through = claim.settled;
                self.next_line = Some(first);
                self.renumbered = true;
                self.pending_forget = claim.forgotten.clone();
                if let Some(forgotten) = &claim.forgotten {
                    info!(%forgotten, "Forgot the least recently used session to make room for a new one.");
                }
                let settled = claim.settled;
                self.claim = Some(Arc::new(claim));
                self.reply(format!("session {session} {settled}")).await
            }
            Err(error) => {
                warn!(%session, owner = ?self.owner, reason = error.as_str(), "Refused a session; closing.");
                self.reply(format!("session-refused {} {}", error.as_str(), error.detail())).await?;
                Err(ReadEnd::SessionRefused)
            }
        }
    }

    /// Queues a reply line of its own, in order with the others.
    async fn reply(&mut self, text: String) -> Result<(), ReadEnd> {
        let Some(replies) = &self.replies else { return Ok(()) };
        let outcomes = vec![Outcome::Control(text)];
        let reply_bytes = replies.reply_bytes(&outcomes).await;
        let in_flight =
            replies.in_flight.clone().acquire_owned().await.expect("the in-flight semaphore is never closed");
        let entry = ReplyEntry {
            outcomes,
            durability: AwaitDurability::NothingStored,
            settles: None,
            in_flight,
            reply_bytes,
        };
        replies.entries.send(entry).await.map_err(|_| ReadEnd::RepliesClosed)
    }
}

/// What ended a wait for more input.
pub(crate) enum Filled {
    Shutdown,
    TakenOver,
    RepliesStopped,
    Idle,
    Read(io::Result<crate::framing::Fill>),
}

impl ReplyQueue {
    /// Waits until the replies of `outcomes` fit in the connection's byte bound and takes
    /// their room (at most the whole bound: one entry larger than it waits for all of it). A
    /// peer that does not read its replies keeps the writer from giving the room back, so
    /// this connection stops reading; `reply_timeout` then closes it.
    async fn reply_bytes(&self, outcomes: &[Outcome]) -> OwnedSemaphorePermit {
        let bytes = outcomes.iter().map(Outcome::bytes).sum::<usize>().min(self.max_reply_bytes);
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.reply_bytes
            .clone()
            .acquire_many_owned(permits)
            .await
            .expect("the reply bytes semaphore is never closed")
    }
}

/// Resolves when another connection asks for `claim`'s session; never without a session.
async fn taken_over(claim: Option<&SessionClaim>) {
    match claim {
        Some(claim) => claim.takeover.cancelled().await,
        None => std::future::pending().await,
    }
}

fn truncate_at_char_boundary(text: &mut String, max_bytes: usize) {
    if text.len() <= max_bytes {
        return;
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
}
