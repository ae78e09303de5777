//! One TCP connection: frames and decodes its lines, hands batches to the durable log, and
//! writes the replies back in line order while later batches are still in flight.
//!
//! The connection runs as one task with two halves joined: the reader (`reader.rs`) frames,
//! decodes and submits batches; for each batch it queues a [`ReplyEntry`] (what to answer, and
//! the durability receiver to wait for) to the writer (`replies.rs`), which awaits the entries
//! in order and writes the replies. A semaphore bounds the batches between the two.
//!
//! A numbered session (`#session ID FIRST`, see [`crate::TcpSource`]) is owned through a
//! [`SessionClaim`] that the reader and every reply entry in flight hold: the writer marks a
//! batch's lines settled once it is durable, and the session passes to another connection
//! only after the last entry is answered.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::framing::LineFramer;
use crate::ingest::{Durability, IngestSender};
use crate::parse::LineDecoder;
use crate::reading::Reading;
use crate::reject::Rejection;
use crate::tcp::reader::{LineReader, ReadEnd};
use crate::tcp::replies::{write_replies, WriteSummary};
use crate::tcp::session::{SessionClaim, Sessions};
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

/// How long a connection stopped by shutdown waits for its peer to close.
const LINGER: Duration = Duration::from_secs(1);

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

/// The reader's end of the reply pipeline.
#[derive(Debug)]
pub(crate) struct ReplyQueue {
    pub(crate) entries: mpsc::Sender<ReplyEntry>,
    /// One permit per batch between the reader and a written reply.
    pub(crate) in_flight: Arc<Semaphore>,
    /// The number of permits: holding them all means every earlier entry is answered.
    pub(crate) max_in_flight: u32,
}

/// What to answer for one batch, in line order.
#[derive(Debug)]
pub(crate) struct ReplyEntry {
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) durability: AwaitDurability,
    /// The session and the last line this entry's batch settles once durable.
    pub(crate) settles: Option<(Arc<SessionClaim>, u64)>,
    /// Released once the replies of this entry are formatted.
    pub(crate) _in_flight: OwnedSemaphorePermit,
}

#[derive(Debug)]
pub(crate) enum Outcome {
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
pub(crate) enum AwaitDurability {
    /// The entry holds only rejections; nothing was handed over.
    NothingStored,
    Waiting(oneshot::Receiver<Durability>),
    /// Known refused without asking (the durable log is closed).
    Refused(Arc<str>),
}

/// The lines of one batch being assembled.
#[derive(Debug, Default)]
pub(crate) struct PendingBatch {
    pub(crate) readings: Vec<Reading>,
    /// Kept only when replies are written.
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) n_lines: usize,
    /// The session line numbers the batch covers (duplicates excluded).
    pub(crate) first_line: Option<u64>,
    pub(crate) last_line: u64,
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
