//! One TCP connection: frames and decodes its lines, hands batches to the durable log, and
//! writes the replies back in line order while later batches are still in flight.
//!
//! The connection runs as one task with two halves joined: the reader frames, decodes and
//! submits batches; for each batch it queues a [`ReplyEntry`] (what to answer, and the
//! durability receiver to wait for) to the writer, which awaits the entries in order and
//! writes the replies. A semaphore bounds the batches between the two.
//!
//! A numbered session (`#session ID FIRST`, see [`crate::TcpSource`]) is owned through a
//! [`SessionClaim`] that the reader and every reply entry in flight hold: the writer marks a
//! batch's lines settled once it is durable, and the session passes to another connection
//! only after the last entry is answered.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::clock::wall_clock_ms;
use crate::framing::{Frame, LineFramer};
use crate::ingest::{Durability, IngestClosed, IngestSender, Mark};
use crate::parse::LineDecoder;
use crate::reading::Reading;
use crate::reject::{RejectReason, Rejection};
use crate::tcp::session::{parse_session_line, SessionClaim, Sessions};
use crate::tcp::warn_limit::WarnLimiter;

/// The per-connection part of the source config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionSettings {
    pub(crate) source_idx: usize,
    pub(crate) ack: bool,
    pub(crate) max_batch_lines: usize,
    pub(crate) max_in_flight_batches: usize,
}

/// A connection about to be served.
#[derive(Debug)]
pub(crate) struct Connection {
    settings: ConnectionSettings,
    decoder: LineDecoder,
    ingest: IngestSender,
    shutdown: CancellationToken,
    ingest_closed: CancellationToken,
    sessions: Arc<Sessions>,
}

/// The prefix of a control line declaring a numbered session; never a reading in any format
/// (`#` is not JSON, and a comment in line protocol).
const SESSION_PREFIX: &[u8] = b"#session";

/// Longest rejection detail kept for an `err` reply; bounds the memory a connection's queued
/// replies can take when a sender floods short garbage lines and never reads its replies.
const MAX_DETAIL_BYTES: usize = 120;

/// How long a connection stopped by shutdown waits for its peer to close.
const LINGER: Duration = Duration::from_secs(1);

/// Replies are written once this many bytes are pending (or when nothing else is ready).
const REPLY_BUFFER_BYTES: usize = 16 * 1024;

impl Connection {
    pub(crate) fn new(
        settings: ConnectionSettings,
        decoder: LineDecoder,
        ingest: IngestSender,
        shutdown: CancellationToken,
        ingest_closed: CancellationToken,
        sessions: Arc<Sessions>,
    ) -> Connection {
        Connection { settings, decoder, ingest, shutdown, ingest_closed, sessions }
    }

    /// Serves the connection until the peer closes it, it fails, or shutdown; see the module
    /// docs of `tcp` for the protocol.
    pub(crate) async fn serve(self, mut stream: TcpStream) {
        // Replies are small and a sender may be waiting for them; do not let Nagle hold them.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "Could not disable Nagle's algorithm.");
        }
        debug!("Connection opened.");
        let Connection { settings, decoder, ingest, shutdown, ingest_closed, sessions } = self;
        let replies_stopped = CancellationToken::new();
        let (read_half, write_half) = stream.split();
        let max_line_bytes = decoder.limits().max_line_bytes;
        let mut reader = LineReader {
            framer: LineFramer::new(read_half, max_line_bytes),
            decoder,
            ingest,
            source_idx: settings.source_idx,
            max_batch_lines: settings.max_batch_lines,
            replies: None,
            shutdown,
            line_no: 0,
            n_accepted: 0,
            n_rejected: 0,
            rejection_warnings: WarnLimiter::per_second(),
            sessions,
            claim: None,
            next_line: 0,
            dup_through: 0,
            renumbered: false,
            pending_forget: None,
            replies_stopped: replies_stopped.clone(),
        };
        let (read_summary, write_summary) = if settings.ack {
            let (entries_tx, entries_rx) = mpsc::channel(settings.max_in_flight_batches);
            reader.replies = Some(ReplyQueue {
                entries: entries_tx,
                in_flight: Arc::new(Semaphore::new(settings.max_in_flight_batches)),
                max_in_flight: u32::try_from(settings.max_in_flight_batches).unwrap_or(u32::MAX),
            });
            tokio::join!(reader.run(), write_replies(write_half, entries_rx, replies_stopped))
        } else {
            (reader.run().await, WriteSummary::default())
        };

        if matches!(read_summary.end, ReadEnd::IngestClosed) {
            ingest_closed.cancel();
        }
        if settings.ack && matches!(read_summary.end, ReadEnd::Shutdown { .. }) {
            let discarded_bytes = linger(&mut stream).await;
            debug!(discarded_bytes, "Waited for the peer to close after the last reply.");
        }
        match &read_summary.end {
            ReadEnd::Eof => debug!("Peer closed the connection."),
            ReadEnd::Shutdown { unterminated_bytes } => {
                debug!(unterminated_bytes, "Stopped reading for shutdown.");
            }
            ReadEnd::ReadFailed(error) => debug!(%error, "Reading from the connection failed."),
            ReadEnd::IngestClosed => debug!("The durable log closed; stopped reading."),
            ReadEnd::RepliesClosed => debug!("Replies can no longer be written; stopped reading."),
            ReadEnd::TakenOver => debug!("Another connection took the session over; stopped reading."),
            ReadEnd::SessionRefused => debug!("The session could not be had; closing."),
        }
        if let Some(error) = &write_summary.error {
            debug!(%error, "Writing replies failed.");
        }
        debug!(
            lines = read_summary.lines,
            accepted = read_summary.accepted,
            rejected = read_summary.rejected,
            acked = write_summary.acked,
            nacked = write_summary.nacked,
            "Connection closed."
        );
    }
}

/// Why the reader stopped.
#[derive(Debug)]
enum ReadEnd {
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
}

#[derive(Debug)]
struct ReadSummary {
    end: ReadEnd,
    lines: u64,
    accepted: u64,
    rejected: u64,
}

#[derive(Debug, Default)]
struct WriteSummary {
    acked: u64,
    nacked: u64,
    error: Option<io::Error>,
}

/// The reader's end of the reply pipeline.
#[derive(Debug)]
struct ReplyQueue {
    entries: mpsc::Sender<ReplyEntry>,
    /// One permit per batch between the reader and a written reply.
    in_flight: Arc<Semaphore>,
    /// The number of permits: holding them all means every earlier entry is answered.
    max_in_flight: u32,
}

/// What to answer for one batch, in line order.
#[derive(Debug)]
struct ReplyEntry {
    outcomes: Vec<Outcome>,
    durability: AwaitDurability,
    /// The session and the last line this entry's batch settles once durable.
    settles: Option<(Arc<SessionClaim>, u64)>,
    /// Released once the replies of this entry are formatted.
    _in_flight: OwnedSemaphorePermit,
}

#[derive(Debug)]
enum Outcome {
    /// This many consecutive lines were accepted.
    Accepted(u64),
    Rejected {
        line_no: u64,
        rejection: Rejection,
    },
    /// This many consecutive lines were settled on an earlier connection of their session.
    Duplicate(u64),
    /// A reply of its own line (`session …`, `session-refused …`).
    Control(String),
}

#[derive(Debug)]
enum AwaitDurability {
    /// The entry holds only rejections; nothing was handed over.
    NothingStored,
    Waiting(oneshot::Receiver<Durability>),
    /// Known refused without asking (the durable log is closed).
    Refused(Arc<str>),
}

/// The lines of one batch being assembled.
#[derive(Debug, Default)]
struct PendingBatch {
    readings: Vec<Reading>,
    /// Kept only when replies are written.
    outcomes: Vec<Outcome>,
    n_lines: usize,
    /// The session line numbers the batch covers (duplicates excluded).
    first_line: Option<u64>,
    last_line: u64,
}

/// The reading half: everything it needs across `select!` lives here, not in locals.
#[derive(Debug)]
struct LineReader<R> {
    framer: LineFramer<R>,
    decoder: LineDecoder,
    ingest: IngestSender,
    source_idx: usize,
    max_batch_lines: usize,
    replies: Option<ReplyQueue>,
    shutdown: CancellationToken,
    line_no: u64,
    n_accepted: u64,
    n_rejected: u64,
    rejection_warnings: WarnLimiter,
    sessions: Arc<Sessions>,
    /// The numbered session this connection owns, if it declared one.
    claim: Option<Arc<SessionClaim>>,
    /// The session number of the next reading line.
    next_line: u64,
    /// Lines up to this number were settled before the claim: answered `dup`, not stored.
    dup_through: u64,
    /// No batch was sent since the session was declared.
    renumbered: bool,
    /// A session the table forgot for this one; the store forgets it with the next batch.
    pending_forget: Option<Arc<str>>,
    /// Cancelled by the writer when replies cannot be written, or here when the session is
    /// taken over (the writer then stops writing, but still settles what is in flight).
    replies_stopped: CancellationToken,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    async fn run(mut self) -> ReadSummary {
        let end = self.read_until_end().await;
        let suppressed = self.rejection_warnings.take_suppressed();
        if suppressed > 0 {
            warn!(suppressed, rejected = self.n_rejected, "Rejected more lines on this connection.");
        }
        ReadSummary { end, lines: self.line_no, accepted: self.n_accepted, rejected: self.n_rejected }
        // Dropping `self` drops the reply queue, which lets the writer finish.
    }

    async fn read_until_end(&mut self) -> ReadEnd {
        loop {
            if let Err(end) = self.frame_buffered().await {
                return end;
            }
            if self.framer.is_eof() {
                return ReadEnd::Eof;
            }
            let filled = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Filled::Shutdown,
                () = taken_over(self.claim.as_deref()) => Filled::TakenOver,
                () = self.replies_stopped.cancelled() => Filled::RepliesStopped,
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
            self.line_no += 1;
            if self.claim.is_some() {
                let number = self.next_line;
                self.next_line += 1;
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
                            detail = %rejection.detail,
                            suppressed,
                            "Rejected a line."
                        );
                    }
                    if keep_outcomes {
                        truncate_at_char_boundary(&mut rejection.detail, MAX_DETAIL_BYTES);
                        batch.outcomes.push(Outcome::Rejected { line_no: self.line_no, rejection });
                    }
                }
            }
            if batch.n_lines >= self.max_batch_lines {
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
        let PendingBatch { readings, outcomes, n_lines: _, first_line, last_line } = batch;
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
        let entry = ReplyEntry { outcomes, durability, settles, _in_flight: in_flight };
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
            claimed = self.sessions.claim(session.clone()) => claimed,
        };
        match claimed {
            Ok(claim) => {
                debug!(%session, first, settled = claim.settled, "Session declared.");
                self.dup_through = claim.settled;
                self.next_line = first;
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
                warn!(%session, reason = error.as_str(), "Refused a session; closing.");
                self.reply(format!("session-refused {}", error.as_str())).await?;
                Err(ReadEnd::SessionRefused)
            }
        }
    }

    /// Queues a reply line of its own, in order with the others.
    async fn reply(&mut self, text: String) -> Result<(), ReadEnd> {
        let Some(replies) = &self.replies else { return Ok(()) };
        let in_flight =
            replies.in_flight.clone().acquire_owned().await.expect("the in-flight semaphore is never closed");
        let entry = ReplyEntry {
            outcomes: vec![Outcome::Control(text)],
            durability: AwaitDurability::NothingStored,
            settles: None,
            _in_flight: in_flight,
        };
        replies.entries.send(entry).await.map_err(|_| ReadEnd::RepliesClosed)
    }
}

/// What ended a wait for more input.
enum Filled {
    Shutdown,
    TakenOver,
    RepliesStopped,
    Read(io::Result<crate::framing::Fill>),
}

/// Resolves when another connection asks for `claim`'s session; never without a session.
async fn taken_over(claim: Option<&SessionClaim>) {
    match claim {
        Some(claim) => claim.takeover.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The writing half: answers the entries in order, each once its batch is durable.
async fn write_replies<W: AsyncWrite + Unpin>(
    writer: W,
    entries: mpsc::Receiver<ReplyEntry>,
    stopped: CancellationToken,
) -> WriteSummary {
    let mut replies = ReplyWriter {
        writer,
        out: Vec::with_capacity(REPLY_BUFFER_BYTES),
        acked: 0,
        nacked: 0,
        stopped,
        error: None,
    };
    replies.run(entries).await;
    WriteSummary { acked: replies.acked, nacked: replies.nacked, error: replies.error }
}

#[derive(Debug)]
struct ReplyWriter<W> {
    writer: W,
    /// Formatted replies not yet written.
    out: Vec<u8>,
    /// Accepted lines acknowledged so far: the `N` of `ack N`.
    acked: u64,
    nacked: u64,
    /// Once cancelled (a write failed, or the session was taken over) nothing more is
    /// written, but every entry is still awaited so that its lines are settled.
    stopped: CancellationToken,
    error: Option<io::Error>,
}

impl<W: AsyncWrite + Unpin> ReplyWriter<W> {
    async fn run(&mut self, mut entries: mpsc::Receiver<ReplyEntry>) {
        loop {
            let entry = match entries.try_recv() {
                Ok(entry) => entry,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing else is ready: send what is formatted before waiting.
                    self.write_out().await;
                    match entries.recv().await {
                        Some(entry) => entry,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            let durability = match entry.durability {
                AwaitDurability::NothingStored => None,
                AwaitDurability::Refused(reason) => Some(Durability::Refused(reason)),
                AwaitDurability::Waiting(mut answer) => Some(match answer.try_recv() {
                    Ok(durability) => durability,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        // Earlier replies must not wait for this batch's disk flush.
                        self.write_out().await;
                        answer.await.unwrap_or_else(|_| unanswered())
                    }
                    Err(oneshot::error::TryRecvError::Closed) => unanswered(),
                }),
            };
            if let (Some((claim, last)), Some(Durability::Durable)) = (&entry.settles, &durability) {
                claim.settle(*last);
            }
            self.format_entry(&entry.outcomes, durability.as_ref());
            if self.out.len() >= REPLY_BUFFER_BYTES {
                self.write_out().await;
            }
        }
        self.write_out().await;
        if !self.stopped.is_cancelled() {
            if let Err(error) = self.writer.shutdown().await {
                self.error.get_or_insert(error);
            }
        }
    }

    /// Appends the replies of one entry: `ack`/`nack` for each run of accepted lines, `err`
    /// for each rejected line, in line order.
    fn format_entry(&mut self, outcomes: &[Outcome], durability: Option<&Durability>) {
        for outcome in outcomes {
            match outcome {
                Outcome::Accepted(n_lines) => match durability {
                    Some(Durability::Durable) => {
                        self.acked += n_lines;
                        self.out.extend_from_slice(format!("ack {}\n", self.acked).as_bytes());
                    }
                    Some(Durability::Refused(reason)) => self.push_nack(*n_lines, reason),
                    // Cannot happen: an entry with accepted lines always carries an answer.
                    None => self.push_nack(*n_lines, "no durability answer"),
                },
                Outcome::Rejected { line_no, rejection } => {
                    self.out.extend_from_slice(format!("err {line_no} {}", rejection.reason).as_bytes());
                    if !rejection.detail.is_empty() {
                        self.out.push(b' ');
                        push_single_line(&mut self.out, &rejection.detail);
                    }
                    self.out.push(b'\n');
                }
                Outcome::Duplicate(n_lines) => {
                    self.out.extend_from_slice(format!("dup {n_lines}\n").as_bytes());
                }
                Outcome::Control(text) => {
                    push_single_line(&mut self.out, text);
                    self.out.push(b'\n');
                }
            }
        }
    }

    fn push_nack(&mut self, n_lines: u64, reason: &str) {
        self.nacked += n_lines;
        self.out.extend_from_slice(format!("nack {n_lines} ").as_bytes());
        push_single_line(&mut self.out, reason);
        self.out.push(b'\n');
    }

    /// Writes what is formatted; after a failure (or once stopped) it only discards it. A
    /// failure stops the reader too.
    async fn write_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if self.stopped.is_cancelled() {
            self.out.clear();
            return;
        }
        let (writer, out, stopped) = (&mut self.writer, &self.out, &self.stopped);
        let written = tokio::select! {
            // A peer that stopped reading must not hold a session another connection wants.
            () = stopped.cancelled() => Ok(()),
            written = async {
                writer.write_all(out).await?;
                writer.flush().await
            } => written,
        };
        self.out.clear();
        if let Err(error) = written {
            self.error.get_or_insert(error);
            self.stopped.cancel();
        }
    }
}

/// After a shutdown the peer may still be sending. Closing a socket with unread input makes
/// the kernel send a reset, which can destroy replies not yet delivered; so read and discard
/// until the peer closes or [`LINGER`] passes. Returns the bytes discarded (never acked).
async fn linger(stream: &mut TcpStream) -> usize {
    let mut discard = vec![0; 4096];
    let mut discarded_bytes = 0;
    let drain = async {
        while let Ok(n_read @ 1..) = stream.read(&mut discard).await {
            discarded_bytes += n_read;
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    discarded_bytes
}

/// The answer for a batch whose durability sender was dropped unanswered.
fn unanswered() -> Durability {
    Durability::Refused(Arc::from("the durable log dropped the batch without answering"))
}

/// Appends `text` with line breaks turned into spaces, so a reply stays one line.
fn push_single_line(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().map(|byte| if byte == b'\n' || byte == b'\r' { b' ' } else { byte }));
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
