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

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_common::{truncate_for_log, Secret};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::framing::{Frame, LineFramer};
use crate::ingest::{Durability, IngestSender};
use crate::parse::LineDecoder;
use crate::reading::Reading;
use crate::reject::Rejection;
use crate::stats::SourceStats;
use crate::tcp::peer::{auth_line_matches, Owner};
use crate::tcp::reader::{LineReader, ReadEnd};
use crate::tcp::replies::{write_replies, WriteSummary};
use crate::tcp::session::{SessionClaim, Sessions};
use crate::tcp::warn_limit::{self, WarnLimiter};

/// The per-connection part of the source config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionSettings {
    pub(crate) source_idx: usize,
    pub(crate) ack: bool,
    pub(crate) max_batch_lines: usize,
    pub(crate) max_in_flight_batches: usize,
    pub(crate) idle_timeout: Duration,
    pub(crate) auth_timeout: Duration,
    pub(crate) max_reply_bytes: usize,
    pub(crate) reply_timeout: Duration,
}

/// What every connection of a source checks a peer with, and where it reports refusals.
#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// Client certificates are required (and verified by the acceptor).
    pub(crate) client_certificates: bool,
    pub(crate) token: Option<Secret>,
    pub(crate) stats: Arc<SourceStats>,
    /// One WARN per second for failed authentications, one for timeouts, across connections.
    pub(crate) auth_warnings: Mutex<WarnLimiter>,
    pub(crate) timeout_warnings: Mutex<WarnLimiter>,
}

impl Guard {
    /// Counts an authentication failure and logs it (rate-limited).
    fn auth_failed(&self, peer: SocketAddr, why: &str) {
        self.stats.add_auth_failure();
        let allowed = self.auth_warnings.lock().expect("never poisoned").allow(Instant::now());
        if let Some(suppressed) = allowed {
            warn!(%peer, why = %truncate_for_log(why), suppressed, "Refused a connection: authentication failed.");
        }
    }

    /// Counts a connection closed by a timeout and logs it (rate-limited).
    fn timed_out(&self, peer: SocketAddr, why: &str) {
        self.stats.add_timed_out();
        let allowed = self.timeout_warnings.lock().expect("never poisoned").allow(Instant::now());
        if let Some(suppressed) = allowed {
            warn!(%peer, why = %truncate_for_log(why), suppressed, "Closed a connection: timed out.");
        }
    }

    /// Events held back by the rate limits, for a last summary.
    pub(crate) fn take_suppressed(&self) -> (u64, u64) {
        (
            self.auth_warnings.lock().expect("never poisoned").take_suppressed(),
            self.timeout_warnings.lock().expect("never poisoned").take_suppressed(),
        )
    }
}

/// A connection about to be served.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) settings: ConnectionSettings,
    pub(crate) decoder: LineDecoder,
    pub(crate) ingest: IngestSender,
    pub(crate) shutdown: CancellationToken,
    pub(crate) ingest_closed: CancellationToken,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) guard: Arc<Guard>,
    pub(crate) peer: SocketAddr,
}

/// How long a connection stopped by shutdown waits for its peer to close.
const LINGER: Duration = Duration::from_secs(1);

/// How long the `err auth` answer may take to write before the connection is dropped anyway.
const AUTH_REPLY_WAIT: Duration = Duration::from_secs(1);

impl Connection {
    /// Serves the connection until the peer closes it, it fails, times out, or shutdown; see
    /// the module docs of `tcp` for the protocol. The TLS handshake and `#auth` must be done
    /// within `auth_timeout` of the accept.
    pub(crate) async fn serve(self, stream: TcpStream) {
        let auth_deadline = Instant::now() + self.settings.auth_timeout;
        // Replies are small and a sender may be waiting for them; do not let Nagle hold them.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "Could not disable Nagle's algorithm.");
        }
        debug!("Connection opened.");
        let ip = self.peer.ip().to_canonical();
        let default_owner = if self.guard.token.is_some() { Owner::Token } else { Owner::Peer(ip) };
        let Some(acceptor) = self.guard.tls.clone().map(TlsAcceptor::from) else {
            let (read_half, write_half) = stream.into_split();
            return self.serve_halves(read_half, write_half, default_owner, auth_deadline).await;
        };
        let handshake = tokio::select! {
            () = self.shutdown.cancelled() => return,
            handshake = tokio::time::timeout_at(auth_deadline, acceptor.accept(stream)) => handshake,
        };
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                return self.guard.auth_failed(self.peer, &format!("TLS handshake failed: {error}"))
            }
            Err(_elapsed) => {
                return self.guard.auth_failed(self.peer, "no TLS handshake within auth_timeout")
            }
        };
        let owner = match tls.get_ref().1.peer_certificates().and_then(<[_]>::first) {
            Some(certificate) if self.guard.client_certificates => {
                // Verified by the acceptor, so it parses; the whole certificate is the
                // fallback identity all the same.
                let subject = webpki::EndEntityCert::try_from(certificate)
                    .map(|parsed| Arc::<[u8]>::from(parsed.subject()))
                    .unwrap_or_else(|_| Arc::from(certificate.as_ref()));
                Owner::Certificate(subject)
            }
            _ => default_owner,
        };
        let (read_half, write_half) = tokio::io::split(tls);
        self.serve_halves(read_half, write_half, owner, auth_deadline).await;
    }

    async fn serve_halves<R, W>(self, read_half: R, mut write_half: W, owner: Owner, auth_deadline: Instant)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Connection { settings, decoder, ingest, shutdown, ingest_closed, sessions, guard, peer } = self;
        let max_line_bytes = decoder.limits().max_line_bytes;
        let mut framer = LineFramer::new(read_half, max_line_bytes);
        if let Some(token) = &guard.token {
            if let Err(why) = authenticate(&mut framer, token, auth_deadline, &shutdown).await {
                if let Some(why) = why {
                    let answered = async {
                        write_half.write_all(b"err auth\n").await?;
                        write_half.shutdown().await
                    };
                    let _ = tokio::time::timeout(AUTH_REPLY_WAIT, answered).await;
                    guard.auth_failed(peer, why);
                }
                return;
            }
        }
        let replies_stopped = CancellationToken::new();
        let mut reader = LineReader {
            framer,
            decoder,
            ingest,
            source_idx: settings.source_idx,
            max_batch_lines: settings.max_batch_lines,
            replies: None,
            shutdown,
            line_no: 0,
            n_accepted: 0,
            n_rejected: 0,
            rejection_warnings: WarnLimiter::shared(warn_limit::TCP_REJECTED_LINE),
            sessions,
            owner,
            claim: None,
            next_line: Some(0),
            dup_through: 0,
            renumbered: false,
            pending_forget: None,
            replies_stopped: replies_stopped.clone(),
            idle_timeout: settings.idle_timeout,
        };
        let ((read_summary, framer), write_summary) = if settings.ack {
            let (entries_tx, entries_rx) = mpsc::channel(settings.max_in_flight_batches);
            let max_reply_bytes = settings.max_reply_bytes.min(Semaphore::MAX_PERMITS);
            reader.replies = Some(ReplyQueue {
                entries: entries_tx,
                in_flight: Arc::new(Semaphore::new(settings.max_in_flight_batches)),
                max_in_flight: u32::try_from(settings.max_in_flight_batches).unwrap_or(u32::MAX),
                reply_bytes: Arc::new(Semaphore::new(max_reply_bytes)),
                max_reply_bytes,
            });
            tokio::join!(
                reader.run(),
                write_replies(write_half, entries_rx, replies_stopped, settings.reply_timeout)
            )
        } else {
            (reader.run().await, WriteSummary::default())
        };

        if matches!(read_summary.end, ReadEnd::IngestClosed) {
            ingest_closed.cancel();
        }
        if settings.ack && matches!(read_summary.end, ReadEnd::Shutdown { .. }) {
            let discarded_bytes = linger(framer.into_inner()).await;
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
            ReadEnd::Idle => guard.timed_out(peer, "sent nothing for idle_timeout"),
        }
        if write_summary.timed_out {
            guard.timed_out(peer, "left its replies unread for reply_timeout");
        } else if let Some(error) = &write_summary.error {
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

/// Reads the first line, which must be `#auth TOKEN`, before `deadline`. `Err(Some(why))`:
/// refused (answer `err auth`); `Err(None)`: the peer left or shutdown came first.
async fn authenticate<R: AsyncRead + Unpin>(
    framer: &mut LineFramer<R>,
    token: &Secret,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Result<(), Option<&'static str>> {
    loop {
        let verdict = match framer.next_frame() {
            Some(Frame::Line(line)) => Some(auth_line_matches(line, token)),
            Some(Frame::TooLong) => Some(false),
            None => None,
        };
        match verdict {
            Some(true) => return Ok(()),
            Some(false) => return Err(Some("the first line is not `#auth` with the token")),
            None if framer.is_eof() => return Err(None),
            None => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(None),
            () = tokio::time::sleep_until(deadline) => return Err(Some("no `#auth` line within auth_timeout")),
            filled = framer.fill() => if filled.is_err() { return Err(None) },
        }
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
    /// One permit per byte of replies queued or formatted but not yet written
    /// (`max_reply_bytes`): a peer that does not read its replies stops its own reading, and
    /// cannot make the connection hold more.
    pub(crate) reply_bytes: Arc<Semaphore>,
    pub(crate) max_reply_bytes: usize,
}

/// What to answer for one batch, in line order.
#[derive(Debug)]
pub(crate) struct ReplyEntry {
    pub(crate) outcomes: Vec<Outcome>,
    pub(crate) durability: AwaitDurability,
    /// The session and the last line this entry's batch settles once durable.
    pub(crate) settles: Option<(Arc<SessionClaim>, u64)>,
    /// Released once the replies of this entry are formatted.
    pub(crate) in_flight: OwnedSemaphorePermit,
    /// The bytes this entry takes ([`Outcome::bytes`]); released once its replies are written.
    pub(crate) reply_bytes: OwnedSemaphorePermit,
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

impl Outcome {
    /// What this outcome takes in memory until its reply is written, in bytes (the
    /// formatted reply is never longer).
    pub(crate) fn bytes(&self) -> usize {
        let heap = match self {
            Outcome::Rejected { rejection, .. } => rejection.detail.len(),
            Outcome::Control(text) => text.len(),
            Outcome::Accepted(_) | Outcome::Duplicate(_) => 0,
        };
        std::mem::size_of::<Outcome>() + heap + "err 18446744073709551615 \n".len()
    }
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
    /// The sum of the outcomes' [`Outcome::bytes`].
    pub(crate) reply_bytes: usize,
}

/// After a shutdown the peer may still be sending. Closing a socket with unread input makes
/// the kernel send a reset, which can destroy replies not yet delivered; so read and discard
/// until the peer closes or [`LINGER`] passes. Returns the bytes discarded (never acked).
async fn linger<R: AsyncRead + Unpin>(mut stream: R) -> usize {
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
