//! The writing half of a TCP connection: awaits each queued batch's durability in line order
//! and writes its replies (`ack N`, `nack`, `err`, `dup`), buffered.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::ingest::Durability;
use crate::tcp::conn::{AwaitDurability, Outcome, ReplyEntry};

/// Replies are written once this many bytes are pending (or when nothing else is ready).
const REPLY_BUFFER_BYTES: usize = 16 * 1024;

#[derive(Debug, Default)]
pub(crate) struct WriteSummary {
    pub(crate) acked: u64,
    pub(crate) nacked: u64,
    pub(crate) error: Option<io::Error>,
    /// The peer left replies unread for `reply_timeout`.
    pub(crate) timed_out: bool,
}

/// The writing half: answers the entries in order, each once its batch is durable.
pub(crate) async fn write_replies<W: AsyncWrite + Unpin>(
    writer: W,
    entries: mpsc::Receiver<ReplyEntry>,
    stopped: CancellationToken,
    reply_timeout: Duration,
) -> WriteSummary {
    let mut replies = ReplyWriter {
        writer,
        out: Vec::with_capacity(REPLY_BUFFER_BYTES),
        unwritten: Vec::new(),
        acked: 0,
        nacked: 0,
        stopped,
        error: None,
        reply_timeout,
        timed_out: false,
    };
    replies.run(entries).await;
    WriteSummary {
        acked: replies.acked,
        nacked: replies.nacked,
        error: replies.error,
        timed_out: replies.timed_out,
    }
}

#[derive(Debug)]
struct ReplyWriter<W> {
    writer: W,
    /// Formatted replies not yet written.
    out: Vec<u8>,
    /// The byte room of the entries formatted into `out`, given back once it is written.
    unwritten: Vec<OwnedSemaphorePermit>,
    /// Accepted lines acknowledged so far: the `N` of `ack N`.
    acked: u64,
    nacked: u64,
    /// Once cancelled (a write failed, or the session was taken over) nothing more is
    /// written, but every entry is still awaited so that its lines are settled.
    stopped: CancellationToken,
    error: Option<io::Error>,
    /// A write that makes no progress for this long ends the replies (and the connection).
    reply_timeout: Duration,
    timed_out: bool,
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
            let ReplyEntry { outcomes, durability: _, settles, in_flight, reply_bytes } = entry;
            if let (Some((claim, last)), Some(Durability::Durable)) = (&settles, &durability) {
                claim.settle(*last);
            }
            self.format_entry(&outcomes, durability.as_ref());
            drop((outcomes, settles, in_flight));
            self.unwritten.push(reply_bytes);
            if self.out.len() >= REPLY_BUFFER_BYTES {
                self.write_out().await;
            }
        }
        self.write_out().await;
        if !self.stopped.is_cancelled() {
            // A TLS close_notify is a write too: a peer that reads nothing cannot hold it up.
            match tokio::time::timeout(self.reply_timeout, self.writer.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    self.error.get_or_insert(error);
                }
                Err(_elapsed) => self.timed_out = true,
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
            self.unwritten.clear();
            return;
        }
        if self.stopped.is_cancelled() {
            self.out.clear();
            self.unwritten.clear();
            return;
        }
        let (writer, out, stopped) = (&mut self.writer, &self.out, &self.stopped);
        let written = tokio::select! {
            // A peer that stopped reading must not hold a session another connection wants.
            () = stopped.cancelled() => Ok(()),
            written = tokio::time::timeout(self.reply_timeout, async {
                writer.write_all(out).await?;
                writer.flush().await
            }) => written.unwrap_or_else(|_elapsed| {
                self.timed_out = true;
                Err(io::Error::new(io::ErrorKind::TimedOut, "the peer left its replies unread"))
            }),
        };
        self.out.clear();
        self.unwritten.clear();
        if let Err(error) = written {
            self.error.get_or_insert(error);
            self.stopped.cancel();
        }
    }
}

/// The answer for a batch whose durability sender was dropped unanswered.
pub(crate) fn unanswered() -> Durability {
    Durability::Refused(Arc::from("the durable log dropped the batch without answering"))
}

/// Appends `text` with line breaks turned into spaces, so a reply stays one line.
fn push_single_line(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().map(|byte| if byte == b'\n' || byte == b'\r' { b' ' } else { byte }));
}
