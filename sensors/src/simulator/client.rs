//! The `eddy simulate` client: sends simulated thermostat readings to a TCP source as JSON
//! lines, as a load generator, and counts the source's `ack`/`err`/`nack` replies (and, in a
//! numbered session, `dup`).

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::framing::{Frame, LineFramer};
use crate::simulator::thermostat::Thermostats;
use crate::simulator::{period_for_rate, wall_clock_ms};

/// What [`simulate_tcp`] sends, and how.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// The TCP source to connect to.
    pub addr: SocketAddr,
    /// Number of simulated thermostats.
    pub sensors: NonZeroU32,
    /// Readings per second per thermostat; `None` sends as fast as the connection allows.
    pub rate: Option<f64>,
    /// Total readings to send; `None` sends until `shutdown` is cancelled.
    pub count: Option<u64>,
    /// Seed of the thermostats (see [`Thermostats`]).
    pub seed: u64,
    /// After sending, wait until every line got an `ack`, `nack` or `err` (the source needs
    /// `ack = true`), at most `ack_timeout`.
    pub wait_acks: bool,
    /// How long to wait for the replies once everything is sent.
    pub ack_timeout: Duration,
    /// Number the lines `1, 2, …` of this session (`#session ID 1`; the source needs
    /// `ack = true`): run again with the same seed and session, every line is answered `dup`
    /// and nothing is stored twice.
    pub session: Option<String>,
    /// Stops sending; the line being written is completed first.
    pub shutdown: CancellationToken,
}

/// What [`simulate_tcp`] sent and what the source answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimulateReport {
    /// Lines written completely.
    pub sent: u64,
    /// Bytes written to the connection (the `#session` line aside).
    pub bytes: u64,
    /// Lines acknowledged as durable (the last `ack N`).
    pub acked: u64,
    /// Valid lines the durable log refused (`nack`).
    pub nacked: u64,
    /// Lines rejected (`err`).
    pub errors: u64,
    /// Lines the source had settled before, in the session (`dup`): not stored again.
    pub dups: u64,
    /// From the start of the connection attempt to the end.
    pub elapsed: Duration,
}

impl SimulateReport {
    /// Lines that got any answer.
    pub fn answered(&self) -> u64 {
        self.acked + self.nacked + self.errors + self.dups
    }
}

/// Why a simulation failed. Variants after connecting carry the report so far.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The rate is zero, negative, not a number, or too small or large for a timer.
    #[error("rate must be a positive number of readings per second per sensor, got {rate}")]
    InvalidRate {
        /// The given rate.
        rate: f64,
    },
    /// The connection could not be opened.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The source's address.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Writing lines failed while the source had not closed the connection.
    #[error("sending readings to {addr} failed")]
    Send {
        /// The source's address.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Reading the replies failed.
    #[error("reading replies from {addr} failed")]
    Receive {
        /// The source's address.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// A reply was not `ack`, `err`, `nack`, `dup` or `session`.
    #[error("{addr} sent a reply that is not ack, err, nack, dup or session: {reply:?}")]
    BadReply {
        /// The source's address.
        addr: SocketAddr,
        /// The reply line (lossily decoded, cut at 200 bytes).
        reply: String,
    },
    /// The source refused the session (`session-refused REASON`).
    #[error("{addr} refused the session: {reason}")]
    SessionRefused {
        /// The source's address.
        addr: SocketAddr,
        /// The reason it gave.
        reason: String,
    },
    /// The source closed the connection before answering every line sent.
    #[error("{addr} closed the connection with {} of {} lines unanswered", .report.sent.saturating_sub(.report.answered()), .report.sent)]
    Closed {
        /// The source's address.
        addr: SocketAddr,
        /// What was sent and answered.
        report: SimulateReport,
    },
    /// Some lines were still unanswered when `ack_timeout` ran out.
    #[error("{addr} left {} of {} lines unanswered after {waited:?}", .report.sent.saturating_sub(.report.answered()), .report.sent)]
    AckTimeout {
        /// The source's address.
        addr: SocketAddr,
        /// How long the client waited.
        waited: Duration,
        /// What was sent and answered.
        report: SimulateReport,
    },
}

/// Lines are generated into a buffer of about this size, then written in one go.
const SEND_CHUNK_BYTES: usize = 64 * 1024;
/// Longest reply line accepted.
const MAX_REPLY_BYTES: usize = 4096;
/// How long completing a half-written line may take after `shutdown`.
#[cfg(not(test))]
fn finish_line_timeout() -> Duration {
    Duration::from_secs(5)
}

/// In tests, their hang guard: under emulation (cross/cross.sh test) a busy source may not
/// read for more than 5 s, and the test would see the torn line answered `err`.
#[cfg(test)]
fn finish_line_timeout() -> Duration {
    *crate::tcp::tests::PROMPTLY
}

/// Connects to a TCP source, sends simulated thermostat readings as JSON lines, and counts the
/// replies, which are read concurrently. Returns when `count` lines are sent (and, with
/// `wait_acks`, answered) or on `shutdown`. Does not reconnect.
pub async fn simulate_tcp(options: SimulateOptions) -> Result<SimulateReport, SimulateError> {
    let addr = options.addr;
    let round_period = match options.rate {
        None => None,
        Some(rate) => Some(period_for_rate(rate).ok_or(SimulateError::InvalidRate { rate })?),
    };
    let started = Instant::now();
    let connected = tokio::select! {
        () = options.shutdown.cancelled() => None,
        connected = TcpStream::connect(addr) => Some(connected),
    };
    let Some(connected) = connected else {
        return Ok(SimulateReport { elapsed: started.elapsed(), ..SimulateReport::default() });
    };
    let stream = connected.map_err(|source| SimulateError::Connect { addr, source })?;
    // The last lines before a pause should not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let (read_half, mut write_half) = stream.into_split();
    if let Some(session) = &options.session {
        let declared = write_half.write_all(format!("#session {session} 1\n").as_bytes()).await;
        declared.map_err(|source| SimulateError::Send { addr, source })?;
    }
    let (counts_tx, mut counts) = watch::channel(ReplyCounts::default());
    let mut reply_reader = AbortOnDropHandle::new(tokio::spawn(read_replies(read_half, addr, counts_tx)));

    let mut sender = LineSender {
        writer: write_half,
        out: Vec::with_capacity(SEND_CHUNK_BYTES + 1024),
        written: 0,
        sent: 0,
        bytes: 0,
        thermostats: Thermostats::new(options.sensors, options.seed),
    };
    let sent = match round_period {
        None => sender.send_flat_out(options.count, &options.shutdown).await,
        Some(period) => sender.send_at_rate(options.count, period, &options.shutdown).await,
    };
    let sent = match sent {
        Ok(()) => sender.writer.shutdown().await,
        Err(error) => Err(error),
    };
    let report = |counts: &ReplyCounts| SimulateReport {
        sent: sender.sent,
        bytes: sender.bytes,
        acked: counts.acked,
        nacked: counts.nacked,
        errors: counts.errors,
        dups: counts.dups,
        elapsed: started.elapsed(),
    };
    if let Err(source) = sent {
        // A write fails when the source closed the connection; say that rather than EPIPE.
        let closed = async { counts.wait_for(|counts| counts.closed).await.is_ok() };
        if tokio::time::timeout(Duration::from_secs(1), closed).await == Ok(true) {
            if let Some(reason) = counts.borrow().session_refused.clone() {
                return Err(SimulateError::SessionRefused { addr, reason });
            }
            return Err(SimulateError::Closed { addr, report: report(&counts.borrow()) });
        }
        return Err(SimulateError::Send { addr, source });
    }
    if !options.wait_acks {
        return Ok(report(&counts.borrow()));
    }

    let all_answered =
        async { counts.wait_for(|counts| counts.answered() >= sender.sent || counts.closed).await.map(drop) };
    let waited = tokio::time::timeout(options.ack_timeout, all_answered).await;
    let final_counts = counts.borrow().clone();
    if let Some(reason) = final_counts.session_refused.clone() {
        return Err(SimulateError::SessionRefused { addr, reason });
    }
    let report = report(&final_counts);
    match waited {
        Err(_elapsed) => Err(SimulateError::AckTimeout { addr, waited: options.ack_timeout, report }),
        Ok(_) if final_counts.answered() >= report.sent => Ok(report),
        Ok(_) => match (&mut reply_reader).await {
            Ok(Err(error)) => Err(error),
            _ => Err(SimulateError::Closed { addr, report }),
        },
    }
}

/// Reply totals so far.
#[derive(Debug, Clone, Default)]
struct ReplyCounts {
    acked: u64,
    nacked: u64,
    errors: u64,
    dups: u64,
    /// Why the source refused the session, if it did.
    session_refused: Option<String>,
    /// The source closed the connection, or the replies could not be read any more.
    closed: bool,
}

impl ReplyCounts {
    fn answered(&self) -> u64 {
        self.acked + self.nacked + self.errors + self.dups
    }
}

/// Reads and counts replies until the source closes the connection.
async fn read_replies(
    read_half: OwnedReadHalf,
    addr: SocketAddr,
    counts: watch::Sender<ReplyCounts>,
) -> Result<(), SimulateError> {
    let mut framer = LineFramer::new(read_half, MAX_REPLY_BYTES);
    let result = loop {
        if let Err(source) = framer.fill().await {
            break Err(SimulateError::Receive { addr, source });
        }
        let mut update = counts.borrow().clone();
        let mut bad_reply = None;
        while let Some(frame) = framer.next_frame() {
            let counted = match frame {
                Frame::Line(reply) => count_reply(reply, &mut update),
                Frame::TooLong => false,
            };
            if !counted {
                bad_reply = Some(match frame {
                    Frame::Line(reply) => {
                        String::from_utf8_lossy(&reply[..reply.len().min(200)]).into_owned()
                    }
                    Frame::TooLong => format!("a reply longer than {MAX_REPLY_BYTES} bytes"),
                });
                break;
            }
        }
        counts.send_replace(update);
        if let Some(reply) = bad_reply {
            break Err(SimulateError::BadReply { addr, reply });
        }
        if framer.is_eof() {
            break Ok(());
        }
    };
    counts.send_modify(|counts| counts.closed = true);
    result
}

/// Adds one reply to `counts`; false when it is not a reply of the protocol.
fn count_reply(reply: &[u8], counts: &mut ReplyCounts) -> bool {
    let Ok(reply) = std::str::from_utf8(reply) else { return false };
    if let Some(reason) = reply.strip_prefix("session-refused ") {
        counts.session_refused = Some(reason.to_owned());
        return true;
    }
    let mut words = reply.splitn(3, ' ');
    let kind = words.next().unwrap_or("");
    if kind == "session" {
        return words.next().is_some();
    }
    let Some(Ok(number)) = words.next().map(str::parse::<u64>) else { return false };
    match kind {
        "ack" => counts.acked = counts.acked.max(number),
        "nack" => counts.nacked += number,
        "err" => counts.errors += 1,
        "dup" => counts.dups += number,
        _ => return false,
    }
    true
}

/// The sending half: generates lines into `out` and writes them, counting complete lines.
struct LineSender {
    writer: OwnedWriteHalf,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    sent: u64,
    /// Bytes written in all.
    bytes: u64,
    thermostats: Thermostats,
}

/// Whether sending goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl LineSender {
    /// Sends `count` lines (or until cancelled) as fast as the connection takes them.
    async fn send_flat_out(&mut self, count: Option<u64>, shutdown: &CancellationToken) -> io::Result<()> {
        let mut generated: u64 = 0;
        while count.is_none_or(|count| generated < count) {
            let ts_ms = wall_clock_ms();
            while self.out.len() < SEND_CHUNK_BYTES && count.is_none_or(|count| generated < count) {
                self.thermostats.next_sample().write_json_line(ts_ms, &mut self.out);
                generated += 1;
            }
            if self.write_out(shutdown).await? == Flow::Stop {
                break;
            }
        }
        Ok(())
    }

    /// Sends one reading per thermostat every `period`, `count` lines in all (or until
    /// cancelled). Late ticks are made up at once, so the average rate holds.
    async fn send_at_rate(
        &mut self,
        count: Option<u64>,
        period: Duration,
        shutdown: &CancellationToken,
    ) -> io::Result<()> {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut generated: u64 = 0;
        while count.is_none_or(|count| generated < count) {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let ts_ms = wall_clock_ms();
            for _ in 0..self.thermostats.count() {
                if count.is_some_and(|count| generated >= count) {
                    break;
                }
                self.thermostats.next_sample().write_json_line(ts_ms, &mut self.out);
                generated += 1;
            }
            if self.write_out(shutdown).await? == Flow::Stop {
                break;
            }
        }
        Ok(())
    }

    /// Writes `out`, stopping early on `shutdown` at a line boundary.
    async fn write_out(&mut self, shutdown: &CancellationToken) -> io::Result<Flow> {
        while self.written < self.out.len() {
            let n_written = tokio::select! {
                biased;
                () = shutdown.cancelled() => None,
                n_written = self.writer.write(&self.out[self.written..]) => Some(n_written?),
            };
            let Some(n_written) = n_written else {
                self.finish_line().await?;
                return Ok(Flow::Stop);
            };
            if n_written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.count_written(n_written);
        }
        self.out.clear();
        self.written = 0;
        Ok(Flow::Continue)
    }

    /// Completes a half-written line, so the source does not reject a torn one.
    async fn finish_line(&mut self) -> io::Result<()> {
        if self.written == 0 || self.out[self.written - 1] == b'\n' {
            return Ok(());
        }
        let Some(newline_offset) = memchr::memchr(b'\n', &self.out[self.written..]) else { return Ok(()) };
        let line_end = self.written + newline_offset + 1;
        let finish = self.writer.write_all(&self.out[self.written..line_end]);
        // A source that stopped reading would hold us forever; give up and leave the torn line.
        if let Ok(result) = tokio::time::timeout(finish_line_timeout(), finish).await {
            result?;
            let n_written = line_end - self.written;
            self.count_written(n_written);
        }
        Ok(())
    }

    fn count_written(&mut self, n_written: usize) {
        let just_written = &self.out[self.written..self.written + n_written];
        let n_lines = memchr::memchr_iter(b'\n', just_written).count();
        self.sent += u64::try_from(n_lines).expect("a line count fits in u64");
        self.written += n_written;
        self.bytes += u64::try_from(n_written).expect("a write's length fits in u64");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Limits;
    use crate::tcp::tests::{start, test_config, Answer, DaemonSetup, FakeDaemon, Held, PROMPTLY};
    use crate::TcpSourceConfig;

    fn options(addr: SocketAddr) -> SimulateOptions {
        SimulateOptions {
            addr,
            sensors: NonZeroU32::new(10).unwrap(),
            rate: None,
            count: Some(5_000),
            seed: 21,
            wait_acks: true,
            ack_timeout: *PROMPTLY,
            session: None,
            shutdown: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn simulate_tcp_gets_every_line_acked_by_the_tcp_source() {
        let harness = start(test_config(), Limits::default(), DaemonSetup::default()).await;
        let report = simulate_tcp(options(harness.addr)).await.unwrap();
        assert_eq!((report.sent, report.acked, report.nacked, report.errors), (5_000, 5_000, 0, 0));
        let readings = harness.daemon.readings.lock().unwrap().clone();
        assert_eq!(readings.len(), 5_000);
        let mut expected = Thermostats::new(NonZeroU32::new(10).unwrap(), 21);
        for reading in &readings {
            assert_eq!(*reading, expected.next_reading(reading.ts_ms));
        }
        harness.shutdown.cancel();
        harness.source.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn simulate_tcp_in_a_session_sent_twice_is_stored_once() {
        let harness = start(test_config(), Limits::default(), DaemonSetup::default()).await;
        let in_session =
            || SimulateOptions { count: Some(700), session: Some("sim-1".into()), ..options(harness.addr) };
        let first = simulate_tcp(in_session()).await.unwrap();
        assert_eq!((first.sent, first.acked, first.dups), (700, 700, 0));
        let again = simulate_tcp(in_session()).await.unwrap();
        assert_eq!((again.sent, again.acked, again.dups), (700, 0, 700));
        assert_eq!(harness.daemon.progress().readings, 700, "the second run stored nothing");
    }

    #[tokio::test]
    async fn simulate_tcp_paces_lines_at_the_given_rate() {
        let harness = start(test_config(), Limits::default(), DaemonSetup::default()).await;
        // 10 sensors at 100 readings/s each: 20 rounds, 19 periods of 10 ms.
        let report =
            simulate_tcp(SimulateOptions { rate: Some(100.0), count: Some(200), ..options(harness.addr) })
                .await
                .unwrap();
        assert_eq!((report.sent, report.acked), (200, 200));
        assert!(report.elapsed >= Duration::from_millis(180), "{report:?}");
        harness.shutdown.cancel();
        harness.source.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn simulate_tcp_stops_on_shutdown_at_a_line_boundary_and_reports_the_acks() {
        let mut harness = start(test_config(), Limits::default(), DaemonSetup::default()).await;
        let shutdown = CancellationToken::new();
        let simulation = tokio::spawn(simulate_tcp(SimulateOptions {
            count: None,
            shutdown: shutdown.clone(),
            ..options(harness.addr)
        }));
        harness.daemon.wait_for_readings(20_000).await;
        shutdown.cancel();
        let report = tokio::time::timeout(*PROMPTLY, simulation).await.unwrap().unwrap().unwrap();
        assert!(report.sent >= 20_000);
        assert_eq!((report.acked, report.errors), (report.sent, 0), "{report:?}");
        harness.shutdown.cancel();
        harness.source.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn simulate_tcp_counts_nacks_from_a_refusing_source() {
        let setup = DaemonSetup { answer: Answer::Refused("disk full"), ..DaemonSetup::default() };
        let harness = start(test_config(), Limits::default(), setup).await;
        let report =
            simulate_tcp(SimulateOptions { count: Some(300), ..options(harness.addr) }).await.unwrap();
        assert_eq!((report.sent, report.acked, report.nacked), (300, 0, 300));
        harness.shutdown.cancel();
        harness.source.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn simulate_tcp_times_out_waiting_for_acks_that_never_come() {
        let setup = DaemonSetup { held: Held::Answers, ..DaemonSetup::default() };
        let harness = start(test_config(), Limits::default(), setup).await;
        let options = SimulateOptions {
            count: Some(10),
            ack_timeout: Duration::from_millis(200),
            ..options(harness.addr)
        };
        let error = simulate_tcp(options).await.unwrap_err();
        let SimulateError::AckTimeout { report, .. } = &error else { panic!("{error:?}") };
        assert_eq!((report.sent, report.answered()), (10, 0));
        assert!(error.to_string().contains("left 10 of 10 lines unanswered"), "{error}");
        FakeDaemon::release(&harness.daemon.answers);
        harness.shutdown.cancel();
        harness.source.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn simulate_tcp_reports_lines_left_unanswered_by_a_source_without_acks() {
        let config = TcpSourceConfig { ack: false, ..test_config() };
        let harness = start(config, Limits::default(), DaemonSetup::default()).await;
        let error =
            simulate_tcp(SimulateOptions { count: Some(10), ..options(harness.addr) }).await.unwrap_err();
        let SimulateError::Closed { report, .. } = &error else { panic!("{error:?}") };
        assert_eq!((report.sent, report.answered()), (10, 0));
        assert!(
            error.to_string().ends_with("closed the connection with 10 of 10 lines unanswered"),
            "{error}"
        );
        harness.shutdown.cancel();
        harness.source.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn simulate_tcp_connect_error_names_the_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = simulate_tcp(options(addr)).await.unwrap_err();
        assert!(matches!(error, SimulateError::Connect { .. }), "{error:?}");
        assert_eq!(error.to_string(), format!("cannot connect to {addr}"));
    }

    #[test]
    fn count_reply_understands_the_protocol_and_refuses_the_rest() {
        let mut counts = ReplyCounts::default();
        for reply in ["ack 3", "err 4 bad_syntax expected value", "nack 2 disk full", "ack 5"] {
            assert!(count_reply(reply.as_bytes(), &mut counts), "{reply}");
        }
        assert_eq!((counts.acked, counts.errors, counts.nacked), (5, 1, 2));
        for reply in ["ok 3", "ack", "ack x", ""] {
            assert!(!count_reply(reply.as_bytes(), &mut counts), "{reply}");
        }
    }
}
