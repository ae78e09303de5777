//! The TCP source (`kind = "tcp"`): newline-delimited readings from many concurrent
//! connections, optionally acknowledged once they are durable.
//!
//! The wire protocol, flow control and shutdown are documented on [`TcpSource`].

mod config;
mod conn;
mod peer;
mod reader;
mod replies;
mod session;
#[cfg(test)]
mod session_tests;
#[cfg(test)]
pub(crate) mod tests;
pub(crate) mod warn_limit;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_common::TlsError;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::ingest::{IngestSender, StoredMarks};
use crate::parse::{LineDecoder, LineParser};
use crate::registry::SensorRegistry;
use crate::stats::SourceStats;
use crate::tcp::conn::{Connection, ConnectionSettings, Guard};
use crate::tcp::peer::is_allowed;
use crate::tcp::session::{SessionLimits, Sessions};
use crate::tcp::warn_limit::WarnLimiter;

pub use crate::tcp::config::{RawTcpSource, TcpSourceConfig, TcpTls};
pub use crate::tcp::peer::auth_line_matches;
pub use crate::tcp::peer::PeerNet;
pub use crate::tcp::session::{parse_session_line, MAX_SESSION_ID_BYTES};
pub use crate::tcp::warn_limit::take_held_back_warnings;

/// Why the TCP source could not start or stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TcpSourceError {
    /// The listening socket could not be created (address in use, no permission, no such
    /// interface).
    #[error("cannot listen on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A limit of the config is zero.
    #[error("tcp source setting `{field}` must be at least 1")]
    ZeroLimit {
        /// The config field.
        field: &'static str,
    },
    /// The TLS files could not be loaded (they were checked when the configuration was
    /// validated, so they changed since).
    #[error("tls settings of the tcp source on {addr}")]
    Tls {
        /// The configured address.
        addr: SocketAddr,
        /// Which file, and why.
        #[source]
        source: TlsError,
    },
    /// The daemon's durable log stopped accepting readings while the source was running.
    #[error("the durable log closed while the tcp source on {addr} was running")]
    IngestClosed {
        /// The address the source listened on.
        addr: SocketAddr,
    },
}

/// Connection counters of one TCP source, shared with the daemon for its stats.
#[derive(Debug, Default)]
pub struct TcpConnectionStats {
    open: AtomicUsize,
    refused: AtomicU64,
}

impl TcpConnectionStats {
    /// Connections being served now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once because `max_connections` were open.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A bound TCP source, ready to [`run`](TcpSource::run).
///
/// # Lines
///
/// Each connection sends lines in the source's format (JSON lines by default), framed by
/// [`LineFramer`]: `\n` or `\r\n` terminators, blank lines skipped, an unterminated last line
/// taken when the sender closes, lines longer than the parser's `max_line_bytes` rejected as
/// `line_too_long` without being buffered. Lines are numbered from 1 per connection; every
/// non-blank line but a `#session` line gets a number, whether it is accepted or not.
///
/// # Acknowledgements (`ack = true`)
///
/// The server writes one reply per event, in line order:
///
/// - `ack N` — the first `N` accepted lines of this connection (a running total, not the
///   line number) are on disk. Sent once the batch holding them is durable.
/// - `err LINE REASON [DETAIL]` — line number `LINE` was rejected and will never be stored.
///   `REASON` is a [`RejectReason`] name such as `bad_syntax`; `DETAIL` is free text.
/// - `nack K REASON` — the next `K` accepted lines were valid but the durable log refused
///   them (disk budget full, store failed, shutting down); `REASON` is free text. They are not
///   counted in later `ack` totals; the sender may resend them.
///
/// Every reply settles a prefix of the lines not settled yet: an `err` for line 7 is written
/// only after every earlier line got its `ack`, `nack` or `err`. A sender can therefore keep a
/// queue of the lines it sent and pop from its front: `ack N` pops accepted lines until `N`
/// are acknowledged in total, `err` pops the line it names (always the front), `nack K` pops
/// `K` lines. Lines still queued when the connection closes were not stored (or their ack was
/// lost) and should be resent; delivery is at-least-once.
///
/// With `ack = false` the server writes nothing at all.
///
/// # Numbered sessions: exactly-once ingest (`ack = true`)
///
/// A sender that resends what was not acknowledged stores a reading twice if eddy made it
/// durable but died before its `ack` went out. To be recognised, a sender names its stream and
/// numbers its lines with a control line:
///
/// - `#session ID FIRST` — the reading lines that follow are numbers `FIRST`, `FIRST + 1`, …
///   of session `ID` (1 to 128 letters, digits or `. _ - : @ /`). The server first answers
///   every earlier line, then replies `session ID SETTLED`: every line of the session up to
///   `SETTLED` is settled (stored, or rejected) — also across restarts and power loss, since
///   the number is stored with the readings.
/// - `dup K` — the next `K` lines are at or below `SETTLED`: settled on an earlier
///   connection, not stored again (a sender may also skip them itself). They are not counted
///   in `ack` totals.
/// - `session-refused REASON [DETAIL]` — the line was malformed (`bad_syntax`), the session's
///   previous connection did not let go within 10 s (`busy`), the session belongs to another
///   owner (`not_owner`), `FIRST` is more than `max_session_skip_lines` past the settled line
///   (`too_far_ahead`; nothing is remembered), the session ran out of line numbers
///   (`exhausted`), or no session can be forgotten for it (`too_many_sessions`); the server
///   closes the connection.
///
/// A sender keeps one session id for one stream of lines and its numbering across its own
/// restarts; a sender that cannot must pick a new id. A new connection with a session that
/// another connection holds takes it over once the old one has answered what it had in
/// flight. After a `nack`, later lines of the session are refused too until the sender
/// resends from the first refused line (`#session ID N`), so the settled number never passes
/// a line that was not stored. At most `max_sessions` sessions are remembered per source and
/// `max_sessions_per_peer` per owner; past that the owner's least recently declared one (or
/// one restored at start that nobody claimed since) is forgotten (logged), and a resend of
/// its old lines would be stored again.
///
/// # Who may connect
///
/// A session belongs to its owner: the subject of the verified client certificate
/// (`tls_client_ca_file`), else the token (`token_file`), else the peer's IP address. Peers
/// outside `allow` are closed at accept. With TLS, the handshake comes first; with a token,
/// the first line must be `#auth TOKEN` (not numbered, not answered) or the server writes
/// `err auth` and closes. Both must be done within `auth_timeout` of the accept.
///
/// # Flow control and shutdown
///
/// Valid readings from one read (up to `max_batch_lines` lines) become one batch. Batches are
/// pipelined: a connection keeps reading while up to `max_in_flight_batches` of its batches
/// await durability, and stops reading when the ingest channel is full or that limit is
/// reached, and when the replies it holds reach `max_reply_bytes` (its peer is not reading
/// them). Past `max_connections`, new connections are accepted and closed at once; a
/// connection silent for `idle_timeout`, or whose replies cannot be written for
/// `reply_timeout`, is closed, so no peer holds a slot for ever.
///
/// On shutdown the source stops accepting, each connection stops reading, hands over the
/// complete lines it had already read, waits for their durability, writes the replies and
/// closes. A partial line read before the stop is dropped (and never acknowledged). A peer
/// that never reads its replies keeps its connection from finishing for `reply_timeout`.
///
/// [`LineFramer`]: crate::LineFramer
/// [`RejectReason`]: crate::RejectReason
#[derive(Debug)]
pub struct TcpSource {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: TcpSourceConfig,
    source_idx: usize,
    parser: Arc<LineParser>,
    registry: Arc<SensorRegistry>,
    stats: Arc<SourceStats>,
    connection_stats: Arc<TcpConnectionStats>,
    sessions: Arc<Sessions>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// First pause after a failed `accept` (out of file descriptors, usually); doubled per failure.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between failed `accept`s.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

impl TcpSource {
    /// Binds the listening socket, so that the daemon can report a bad address before it says
    /// it is ready. Readings are decoded with `parser`, their sensor ids admitted through
    /// `registry`, counted in `stats`, and handed over as source number `source_idx`.
    pub async fn bind(
        config: TcpSourceConfig,
        source_idx: usize,
        parser: Arc<LineParser>,
        registry: Arc<SensorRegistry>,
        stats: Arc<SourceStats>,
    ) -> Result<TcpSource, TcpSourceError> {
        for (field, value) in [
            ("max_connections", config.max_connections),
            ("max_batch_lines", config.max_batch_lines),
            ("max_in_flight_batches", config.max_in_flight_batches),
            ("max_sessions", config.max_sessions),
            ("max_sessions_per_peer", config.max_sessions_per_peer),
            ("max_reply_bytes", config.max_reply_bytes),
        ] {
            if value == 0 {
                return Err(TcpSourceError::ZeroLimit { field });
            }
        }
        let addr = config.listen;
        let tls = match &config.tls {
            None => None,
            Some(files) => {
                let server = files.server_config().map_err(|source| TcpSourceError::Tls { addr, source })?;
                Some(Arc::new(server))
            }
        };
        let listener =
            TcpListener::bind(addr).await.map_err(|source| TcpSourceError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| TcpSourceError::Bind { addr, source })?;
        let sessions = Arc::new(Sessions::new(session_limits(&config), Vec::new()));
        Ok(TcpSource {
            tls,
            listener,
            local_addr,
            sessions,
            config,
            source_idx,
            parser,
            registry,
            stats,
            connection_stats: Arc::new(TcpConnectionStats::default()),
        })
    }

    /// The numbered sessions this source had settled before (the daemon reads them from the
    /// store), so that a resend of their lines is answered `dup` and not stored again.
    pub fn with_stored_marks(mut self, marks: StoredMarks) -> TcpSource {
        if !marks.sessions.is_empty() {
            info!(source = %self.stats.name, sessions = marks.sessions.len(), "Numbered sessions restored.");
        }
        self.sessions = Arc::new(Sessions::new(session_limits(&self.config), marks.sessions));
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connection counters, which stay readable after `run` consumed the source.
    pub fn connection_stats(&self) -> Arc<TcpConnectionStats> {
        self.connection_stats.clone()
    }

    /// Serves connections until `shutdown` is cancelled, then lets every connection finish
    /// what it has read (see the module docs) and returns once all are closed.
    ///
    /// Fails only if the durable log closes under it.
    pub async fn run(self, ingest: IngestSender, shutdown: CancellationToken) -> Result<(), TcpSourceError> {
        let span = tracing::info_span!("tcp_source", source = %self.stats.name, listen = %self.local_addr);
        self.run_in_span(ingest, shutdown).instrument(span).await
    }

    async fn run_in_span(
        self,
        ingest: IngestSender,
        shutdown: CancellationToken,
    ) -> Result<(), TcpSourceError> {
        let TcpSource {
            listener,
            local_addr,
            config,
            source_idx,
            parser,
            registry,
            stats,
            connection_stats,
            sessions,
            tls,
        } = self;
        let settings = ConnectionSettings {
            source_idx,
            ack: config.ack,
            max_batch_lines: config.max_batch_lines,
            max_in_flight_batches: config.max_in_flight_batches,
            idle_timeout: config.idle_timeout,
            auth_timeout: config.auth_timeout,
            max_reply_bytes: config.max_reply_bytes,
            reply_timeout: config.reply_timeout,
        };
        let guard = Arc::new(Guard {
            tls,
            client_certificates: config.tls.as_ref().is_some_and(|tls| tls.client_ca_file.is_some()),
            token: config.token.clone(),
            stats: stats.clone(),
            auth_warnings: Mutex::new(WarnLimiter::shared(warn_limit::TCP_AUTH_FAILED)),
            timeout_warnings: Mutex::new(WarnLimiter::shared(warn_limit::TCP_TIMED_OUT)),
        });
        // Cancelled by a connection that finds the durable log closed; stops accepting.
        let ingest_closed = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut refusals = WarnLimiter::per_second();
        let mut strangers = WarnLimiter::per_second();
        let mut accept_backoff = ACCEPT_BACKOFF_MIN;
        info!(
            max_connections = config.max_connections,
            ack = config.ack,
            tls = config.tls.is_some(),
            client_certificates = guard.client_certificates,
            token = config.token.is_some(),
            allow = config.allow.len(),
            idle_timeout = ?config.idle_timeout,
            "TCP source listening."
        );
        stats.set_up(true);

        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = ingest_closed.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    accept_backoff = ACCEPT_BACKOFF_MIN;
                    accepted
                }
                Err(error) => {
                    warn!(%error, retry_in = ?accept_backoff, "Failed to accept a connection.");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(accept_backoff) => {}
                    }
                    accept_backoff = (accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            if !is_allowed(&config.allow, peer.ip()) {
                stats.add_peer_refused();
                if let Some(suppressed) = strangers.allow(Instant::now()) {
                    warn!(%peer, suppressed, "Refused a connection: the peer is not in `allow`.");
                }
                drop(stream);
                continue;
            }
            if connection_stats.open_connections() >= config.max_connections {
                refuse(stream, peer, &connection_stats, config.max_connections, &mut refusals);
                continue;
            }
            stats.add_connection();
            let open = OpenConnection::new(connection_stats.clone());
            let decoder = LineDecoder::new(parser.clone(), registry.clone(), stats.clone());
            let connection = Connection {
                settings,
                decoder,
                ingest: ingest.clone(),
                shutdown: shutdown.clone(),
                ingest_closed: ingest_closed.clone(),
                sessions: sessions.clone(),
                guard: guard.clone(),
                peer,
            };
            let span = tracing::debug_span!("tcp_connection", %peer);
            tracker.spawn(
                async move {
                    connection.serve(stream).await;
                    drop(open);
                }
                .instrument(span),
            );
        }

        // Closing the listener makes new connection attempts fail at once instead of waiting
        // in the backlog for a server that will never accept them.
        drop(listener);
        stats.set_up(false);
        tracker.close();
        debug!(open_connections = connection_stats.open_connections(), "Waiting for connections to finish.");
        tracker.wait().await;
        let refused_unlogged = refusals.take_suppressed();
        if refused_unlogged > 0 {
            warn!(refused_unlogged, "Refused more connections: too many open connections.");
        }
        let strangers_unlogged = strangers.take_suppressed();
        if strangers_unlogged > 0 {
            warn!(strangers_unlogged, "Refused more connections: peers not in `allow`.");
        }
        let (auth_unlogged, timeouts_unlogged) = guard.take_suppressed();
        if auth_unlogged > 0 || timeouts_unlogged > 0 {
            warn!(auth_unlogged, timeouts_unlogged, "More connections failed authentication or timed out.");
        }
        if ingest_closed.is_cancelled() {
            return Err(TcpSourceError::IngestClosed { addr: local_addr });
        }
        info!(refused_total = connection_stats.refused_total(), "TCP source stopped.");
        Ok(())
    }
}

/// The session table's bounds from the source's settings.
fn session_limits(config: &TcpSourceConfig) -> SessionLimits {
    SessionLimits {
        max_sessions: config.max_sessions,
        max_per_owner: config.max_sessions_per_peer,
        max_skip_lines: config.max_session_skip_lines,
    }
}

/// Closes a connection past the cap and counts it.
fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    connection_stats: &TcpConnectionStats,
    max_connections: usize,
    refusals: &mut WarnLimiter,
) {
    connection_stats.refused.fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = refusals.allow(Instant::now()) {
        warn!(%peer, max_connections, suppressed, "Refused a connection: too many open connections.");
    }
    drop(stream);
}

/// Counts a connection as open until dropped.
struct OpenConnection {
    connection_stats: Arc<TcpConnectionStats>,
}

impl OpenConnection {
    fn new(connection_stats: Arc<TcpConnectionStats>) -> OpenConnection {
        connection_stats.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection { connection_stats }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.connection_stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}
