//! Tests of the TCP source against real loopback connections and a fake daemon, plus the
//! helpers the simulator's end-to-end test shares.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ingest::{ingest_channel, Durability, IngestReceiver};
use crate::parse::{Format, Limits, LineParser};
use crate::reading::Reading;
use crate::registry::SensorRegistry;
use crate::reject::RejectReason;
use crate::schema::Schema;
use crate::stats::SourceStats;
use crate::tcp::{TcpConnectionStats, TcpSource, TcpSourceConfig, TcpSourceError};

/// Generous bound for anything that should happen promptly; only hit when a test fails, or
/// when the tests run far slower than natively: `EDDY_TEST_PROMPTLY_SECS` raises it (20 s by
/// default), e.g. for the debug build emulated by qemu in `cross/cross.sh test`.
pub(crate) static PROMPTLY: LazyLock<Duration> = LazyLock::new(|| {
    let secs = std::env::var("EDDY_TEST_PROMPTLY_SECS").ok().and_then(|secs| secs.parse().ok());
    Duration::from_secs(secs.unwrap_or(20))
});

/// How the fake daemon answers batches that ask for durability.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Durable,
    Refused(&'static str),
}

/// What the fake daemon has taken from the ingest channel so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) batches: u64,
    pub(crate) readings: u64,
}

/// The daemon side of the ingest channel: takes batches (one per `intake` permit), records
/// them, and answers each one once it gets an `answers` permit.
pub(crate) struct FakeDaemon {
    pub(crate) intake: Arc<Semaphore>,
    pub(crate) answers: Arc<Semaphore>,
    pub(crate) progress: watch::Receiver<Progress>,
    pub(crate) readings: Arc<Mutex<Vec<Reading>>>,
}

/// Which of its steps the fake daemon holds back until the test adds permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    Nothing,
    /// It takes no batch from the channel.
    Intake,
    /// It takes batches but answers none.
    Answers,
}

/// The fake daemon and its ingest channel.
#[derive(Debug, Clone)]
pub(crate) struct DaemonSetup {
    pub(crate) answer: Answer,
    pub(crate) channel_capacity: usize,
    pub(crate) held: Held,
}

impl Default for DaemonSetup {
    fn default() -> DaemonSetup {
        DaemonSetup { answer: Answer::Durable, channel_capacity: 16, held: Held::Nothing }
    }
}

impl FakeDaemon {
    pub(crate) fn spawn(mut receiver: IngestReceiver, answer: Answer, held: Held) -> FakeDaemon {
        let permits = |step| if held == step { 0 } else { Semaphore::MAX_PERMITS };
        let intake = Arc::new(Semaphore::new(permits(Held::Intake)));
        let answers = Arc::new(Semaphore::new(permits(Held::Answers)));
        let (progress_tx, progress) = watch::channel(Progress::default());
        let readings = Arc::new(Mutex::new(Vec::new()));
        let daemon = FakeDaemon {
            intake: intake.clone(),
            answers: answers.clone(),
            progress,
            readings: readings.clone(),
        };
        tokio::spawn(async move {
            loop {
                intake.acquire().await.unwrap().forget();
                let Some(batch) = receiver.recv().await else { break };
                let n_readings = u64::try_from(batch.readings.len()).unwrap();
                readings.lock().unwrap().extend(batch.readings);
                progress_tx.send_modify(|progress| {
                    progress.batches += 1;
                    progress.readings += n_readings;
                });
                if let Some(durable) = batch.durable {
                    let answers = answers.clone();
                    let answer = match &answer {
                        Answer::Durable => Durability::Durable,
                        Answer::Refused(reason) => Durability::Refused(Arc::from(*reason)),
                    };
                    tokio::spawn(async move {
                        answers.acquire().await.unwrap().forget();
                        let _ = durable.send(answer);
                    });
                }
            }
        });
        daemon
    }

    /// Lets a held step run freely from now on.
    pub(crate) fn release(gate: &Semaphore) {
        gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    pub(crate) fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    pub(crate) async fn wait_for_readings(&mut self, n_readings: u64) {
        let reached = self.progress.wait_for(|progress| progress.readings >= n_readings);
        tokio::time::timeout(*PROMPTLY, reached).await.expect("the daemon got the readings in time").unwrap();
    }
}

/// A running TCP source with its fake daemon.
pub(crate) struct Harness {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: CancellationToken,
    pub(crate) source: JoinHandle<Result<(), TcpSourceError>>,
    pub(crate) daemon: FakeDaemon,
    pub(crate) stats: Arc<SourceStats>,
    pub(crate) connection_stats: Arc<TcpConnectionStats>,
}

pub(crate) fn test_config() -> TcpSourceConfig {
    TcpSourceConfig { listen: "127.0.0.1:0".parse().unwrap(), ack: true, ..TcpSourceConfig::default() }
}

pub(crate) async fn start(config: TcpSourceConfig, limits: Limits, daemon: DaemonSetup) -> Harness {
    let parser = Arc::new(LineParser::new(Format::Json, Arc::new(Schema::thermostat()), limits));
    let registry = Arc::new(SensorRegistry::new(10_000));
    let stats = Arc::new(SourceStats::new("tcp-test"));
    let source = TcpSource::bind(config, 3, parser, registry, stats.clone()).await.unwrap();
    let addr = source.local_addr();
    let connection_stats = source.connection_stats();
    let (ingest, receiver) = ingest_channel(daemon.channel_capacity);
    let daemon = FakeDaemon::spawn(receiver, daemon.answer, daemon.held);
    let shutdown = CancellationToken::new();
    let source = tokio::spawn(source.run(ingest, shutdown.clone()));
    Harness { addr, shutdown, source, daemon, stats, connection_stats }
}

pub(crate) fn valid_line(sensor_idx: u64, line_idx: u64) -> String {
    let temp_hundredths = 1800 + (line_idx * 7) % 700;
    format!(
        "{{\"sensor\":\"t-{sensor_idx:03}\",\"ts\":{},\"temp_c\":{}.{:02},\"humidity\":41.5}}\n",
        1_700_000_000_000 + line_idx,
        temp_hundredths / 100,
        temp_hundredths % 100
    )
}

fn valid_lines(n_lines: u64) -> String {
    (0..n_lines).map(|line_idx| valid_line(line_idx % 10, line_idx)).collect()
}

/// Connects, writes `payload` (concurrently with reading), half-closes, and returns every
/// reply line until the server closes the connection.
async fn exchange(addr: SocketAddr, payload: Vec<u8>) -> Vec<String> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read_half, mut write_half) = stream.into_split();
    let writer = tokio::spawn(async move {
        write_half.write_all(&payload).await.unwrap();
        write_half.shutdown().await.unwrap();
    });
    let replies = read_replies_to_end(&mut read_half).await;
    writer.await.unwrap();
    replies
}

async fn read_replies_to_end<R: AsyncReadExt + Unpin>(reader: &mut R) -> Vec<String> {
    let mut text = String::new();
    tokio::time::timeout(*PROMPTLY, reader.read_to_string(&mut text))
        .await
        .expect("the server closed in time")
        .unwrap();
    text.lines().map(str::to_owned).collect()
}

/// What the test expects for one non-blank line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Ok,
    Err(RejectReason),
}

/// Totals of a reply stream, after checking it the way a sender would.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    pub(crate) lines: usize,
    pub(crate) acked: u64,
    pub(crate) nacked: u64,
    pub(crate) errors: u64,
}

/// Walks `replies` as a sender keeping a queue of its lines would: each reply must settle the
/// front of the queue, as the protocol promises.
#[track_caller]
pub(crate) fn settle(expected: &[Expect], replies: &[String]) -> Settled {
    let mut settled = Settled::default();
    for reply in replies {
        let mut words = reply.splitn(3, ' ');
        let kind = words.next().unwrap();
        let number: u64 =
            words.next().unwrap_or_else(|| panic!("reply {reply:?} has no number")).parse().unwrap();
        let rest = words.next().unwrap_or("");
        match kind {
            "ack" => {
                assert!(number > settled.acked, "ack {number} after ack {}", settled.acked);
                for _ in settled.acked..number {
                    assert_eq!(
                        expected.get(settled.lines),
                        Some(&Expect::Ok),
                        "{reply:?} covers line {}",
                        settled.lines + 1
                    );
                    settled.lines += 1;
                }
                settled.acked = number;
            }
            "nack" => {
                for _ in 0..number {
                    assert_eq!(
                        expected.get(settled.lines),
                        Some(&Expect::Ok),
                        "{reply:?} covers line {}",
                        settled.lines + 1
                    );
                    settled.lines += 1;
                }
                settled.nacked += number;
            }
            "err" => {
                assert_eq!(
                    number,
                    u64::try_from(settled.lines).unwrap() + 1,
                    "{reply:?} is not for the first unsettled line"
                );
                let reason = rest.split(' ').next().unwrap();
                match expected.get(settled.lines) {
                    Some(Expect::Err(expected_reason)) => {
                        assert_eq!(reason, expected_reason.as_str(), "{reply:?}")
                    }
                    other => panic!("{reply:?} but line {number} was expected to be {other:?}"),
                }
                settled.lines += 1;
                settled.errors += 1;
            }
            _ => panic!("unknown reply {reply:?}"),
        }
    }
    settled
}

async fn stop(harness: Harness) {
    harness.shutdown.cancel();
    let stopped = tokio::time::timeout(*PROMPTLY, harness.source).await.expect("the source stopped in time");
    stopped.unwrap().unwrap();
}

#[tokio::test]
async fn tcp_acks_are_cumulative_and_settle_lines_in_order() {
    let harness = start(test_config(), Limits::default(), DaemonSetup::default()).await;
    let payload = format!(
        "{}{}{}not json\n{}[1,2]\n{}",
        valid_line(1, 1),
        valid_line(2, 2),
        valid_line(3, 3),
        valid_line(1, 4),
        valid_line(1, 5)
    );
    let replies = exchange(harness.addr, payload.into_bytes()).await;
    use Expect::{Err, Ok};
    let expected = [Ok, Ok, Ok, Err(RejectReason::BadSyntax), Ok, Err(RejectReason::NotObject), Ok];
    assert_eq!(settle(&expected, &replies), Settled { lines: 7, acked: 5, nacked: 0, errors: 2 });
    assert_eq!(replies.last().unwrap(), "ack 5");
    let sensors: Vec<String> =
        harness.daemon.readings.lock().unwrap().iter().map(|reading| reading.sensor.to_string()).collect();
    assert_eq!(sensors, ["t-001", "t-002", "t-003", "t-001", "t-001"]);
    stop(harness).await;
}

#[tokio::test]
async fn tcp_err_line_numbers_count_every_non_blank_line() {
    let harness = start(test_config(), Limits::default(), DaemonSetup::default()).await;
    let payload = format!("\n\r\n  \nfirst bad\r\n{}\n\n{}second bad", valid_line(0, 0), valid_line(0, 1));
    let replies = exchange(harness.addr, payload.into_bytes()).await;
    let errs: Vec<&String> = replies.iter().filter(|reply| reply.starts_with("err ")).collect();
    assert_eq!(errs.len(), 2, "{replies:?}");
    assert!(errs[0].starts_with("err 1 bad_syntax"), "{replies:?}");
    // The unterminated last line is still taken when the sender closes.
    assert!(errs[1].starts_with("err 4 bad_syntax"), "{replies:?}");
    use Expect::{Err, Ok};
    let expected = [Err(RejectReason::BadSyntax), Ok, Ok, Err(RejectReason::BadSyntax)];
    assert_eq!(settle(&expected, &replies).lines, 4);
    stop(harness).await;
}

#[tokio::test]
async fn tcp_takes_an_unterminated_last_line_when_the_sender_closes() {
    let harness = start(test_config(), Limits::default(), DaemonSetup::default()).await;
    let line = valid_line(0, 0);
    let replies = exchange(harness.addr, line.trim_end().as_bytes().to_vec()).await;
    assert_eq!(replies, ["ack 1"]);
    stop(harness).await;
}

#[tokio::test]
async fn tcp_rejects_an_overlong_line_once_and_acks_the_next_line() {
    let limits = Limits { max_line_bytes: 256, ..Limits::default() };
    let harness = start(test_config(), limits, DaemonSetup::default()).await;
    let mut payload = vec![b'x'; 2 * 1024 * 1024];
    payload.push(b'\n');
    payload.extend_from_slice(valid_line(0, 0).as_bytes());
    let replies = exchange(harness.addr, payload).await;
    assert_eq!(replies, ["err 1 line_too_long longer than 256 bytes", "ack 1"]);
    let snapshot = harness.stats.snapshot();
    assert_eq!(snapshot.rejected_for(RejectReason::LineTooLong), 1);
    assert_eq!((snapshot.received, snapshot.accepted), (2, 1));
    stop(harness).await;
}

#[tokio::test]
async fn tcp_garbage_flood_does_not_disturb_a_healthy_connection() {
    let limits = Limits { max_line_bytes: 512, ..Limits::default() };
    let harness = start(test_config(), limits, DaemonSetup::default()).await;

    let flood_addr = harness.addr;
    let flood = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut garbage = Vec::with_capacity(4 << 20);
        while garbage.len() < 4 << 20 {
            let line_len = if rng.u8(..) < 8 { rng.usize(600..20_000) } else { rng.usize(1..80) };
            garbage.extend((0..line_len).map(|_| match rng.u8(..) {
                b'\n' => b'?',
                byte => byte,
            }));
            garbage.push(b'\n');
        }
        exchange(flood_addr, garbage).await
    });

    const N_LINES: u64 = 2_000;
    let stream = TcpStream::connect(harness.addr).await.unwrap();
    let (mut read_half, mut write_half) = stream.into_split();
    let writer = tokio::spawn(async move {
        let lines = valid_lines(N_LINES);
        for chunk in lines.as_bytes().chunks(4096) {
            write_half.write_all(chunk).await.unwrap();
            tokio::task::yield_now().await;
        }
        write_half.shutdown().await.unwrap();
    });
    let replies = read_replies_to_end(&mut read_half).await;
    writer.await.unwrap();
    let expected = vec![Expect::Ok; usize::try_from(N_LINES).unwrap()];
    assert_eq!(settle(&expected, &replies), Settled { lines: 2_000, acked: N_LINES, nacked: 0, errors: 0 });

    let flood_replies = flood.await.unwrap();
    assert!(flood_replies.len() > 10_000, "only {} replies to the flood", flood_replies.len());
    assert!(
        flood_replies.iter().all(|reply| reply.starts_with("err ")),
        "the flood got something but errors"
    );
    assert!(harness.stats.snapshot().rejected_for(RejectReason::LineTooLong) > 0);
    assert_eq!(harness.daemon.progress().readings, N_LINES);
    stop(harness).await;
}

#[tokio::test]
async fn tcp_refuses_connections_past_the_cap_and_keeps_serving_the_others() {
    let config = TcpSourceConfig { max_connections: 2, ..test_config() };
    let harness = start(config, Limits::default(), DaemonSetup::default()).await;
    let mut first = TcpStream::connect(harness.addr).await.unwrap();
    let mut second = TcpStream::connect(harness.addr).await.unwrap();
    for client in [&mut first, &mut second] {
        client.write_all(b"hello\n").await.unwrap();
        let mut reply = [0; 256];
        let n_read = client.read(&mut reply).await.unwrap();
        assert!(reply[..n_read].starts_with(b"err 1 bad_syntax") && reply[..n_read].ends_with(b"\n"));
    }

    let mut third = TcpStream::connect(harness.addr).await.unwrap();
    let mut reply = Vec::new();
    // Closed by the server without a word (a reset is fine too).
    let read = tokio::time::timeout(*PROMPTLY, third.read_to_end(&mut reply)).await.unwrap();
    assert!(read.is_err() || reply.is_empty(), "{read:?} {reply:?}");
    assert_eq!(harness.connection_stats.refused_total(), 1);
    assert_eq!(harness.connection_stats.open_connections(), 2);

    first.write_all(valid_line(0, 0).as_bytes()).await.unwrap();
    first.shutdown().await.unwrap();
    assert_eq!(read_replies_to_end(&mut first).await, ["ack 1"]);
    stop(harness).await;
}

#[tokio::test]
async fn tcp_shutdown_acks_every_line_already_read_then_closes() {
    let setup = DaemonSetup { held: Held::Answers, ..DaemonSetup::default() };
    let mut harness = start(test_config(), Limits::default(), setup).await;
    const N_LINES: u64 = 500;
    let mut client = TcpStream::connect(harness.addr).await.unwrap();
    // The client does not close its side: the server must end the connection itself.
    client.write_all(valid_lines(N_LINES).as_bytes()).await.unwrap();
    harness.daemon.wait_for_readings(N_LINES).await;

    harness.shutdown.cancel();
    // No answer came yet, so the source must still be waiting for its connection.
    tokio::task::yield_now().await;
    assert!(!harness.source.is_finished());
    FakeDaemon::release(&harness.daemon.answers);

    let replies = read_replies_to_end(&mut client).await;
    drop(client);
    let expected = vec![Expect::Ok; usize::try_from(N_LINES).unwrap()];
    assert_eq!(settle(&expected, &replies).acked, N_LINES);
    let stopped = tokio::time::timeout(*PROMPTLY, harness.source).await.expect("the source stopped in time");
    stopped.unwrap().unwrap();
    assert!(TcpStream::connect(harness.addr).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn tcp_full_ingest_channel_stops_reading_until_the_daemon_catches_up() {
    let config = TcpSourceConfig { max_batch_lines: 64, ..test_config() };
    let setup = DaemonSetup { channel_capacity: 1, held: Held::Intake, ..DaemonSetup::default() };
    let mut harness = start(config, Limits::default(), setup).await;
    const N_LINES: u64 = 20_000;
    let stream = TcpStream::connect(harness.addr).await.unwrap();
    let (mut read_half, mut write_half) = stream.into_split();
    let writer = tokio::spawn(async move {
        write_half.write_all(valid_lines(N_LINES).as_bytes()).await.unwrap();
        write_half.shutdown().await.unwrap();
    });

    // One batch waits in the channel, one in the blocked `send`; nothing more is decoded.
    let started = async {
        while harness.stats.snapshot().received == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(*PROMPTLY, started).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received = harness.stats.snapshot().received;
    assert!(received <= 2 * 64, "the connection kept reading: {received} lines decoded");
    assert_eq!(harness.daemon.progress().batches, 0);

    FakeDaemon::release(&harness.daemon.intake);
    let replies = read_replies_to_end(&mut read_half).await;
    writer.await.unwrap();
    assert_eq!(replies.last().map(String::as_str), Some("ack 20000"));
    harness.daemon.wait_for_readings(N_LINES).await;
    stop(harness).await;
}

#[tokio::test]
async fn tcp_bounds_the_batches_awaiting_durability_per_connection() {
    let config = TcpSourceConfig { max_batch_lines: 10, max_in_flight_batches: 3, ..test_config() };
    let setup = DaemonSetup { channel_capacity: 64, held: Held::Answers, ..DaemonSetup::default() };
    let mut harness = start(config, Limits::default(), setup).await;
    let stream = TcpStream::connect(harness.addr).await.unwrap();
    let (mut read_half, mut write_half) = stream.into_split();
    let writer = tokio::spawn(async move {
        write_half.write_all(valid_lines(5_000).as_bytes()).await.unwrap();
        write_half.shutdown().await.unwrap();
    });

    let reached = harness.daemon.progress.wait_for(|progress| progress.batches >= 3);
    tokio::time::timeout(*PROMPTLY, reached).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(harness.daemon.progress().batches, 3, "more batches than allowed are in flight");

    FakeDaemon::release(&harness.daemon.answers);
    let replies = read_replies_to_end(&mut read_half).await;
    writer.await.unwrap();
    assert_eq!(replies.last().map(String::as_str), Some("ack 5000"));
    stop(harness).await;
}

#[tokio::test]
async fn tcp_refused_batches_are_nacked_and_not_counted_in_acks() {
    let harness = start(
        test_config(),
        Limits::default(),
        DaemonSetup { answer: Answer::Refused("disk budget\nfull"), ..DaemonSetup::default() },
    )
    .await;
    let payload = format!("{}{}oops\n{}", valid_line(0, 0), valid_line(0, 1), valid_line(0, 2));
    let replies = exchange(harness.addr, payload.into_bytes()).await;
    use Expect::{Err, Ok};
    let expected = [Ok, Ok, Err(RejectReason::BadSyntax), Ok];
    assert_eq!(settle(&expected, &replies), Settled { lines: 4, acked: 0, nacked: 3, errors: 1 });
    assert!(replies
        .iter()
        .any(|reply| reply == "nack 2 disk budget full" || reply == "nack 1 disk budget full"));
    stop(harness).await;
}

#[tokio::test]
async fn tcp_without_ack_ingests_and_writes_nothing_back() {
    let config = TcpSourceConfig { ack: false, ..test_config() };
    let mut harness = start(config, Limits::default(), DaemonSetup::default()).await;
    let replies = exchange(harness.addr, format!("{}junk\n", valid_lines(10)).into_bytes()).await;
    assert!(replies.is_empty(), "{replies:?}");
    harness.daemon.wait_for_readings(10).await;
    assert_eq!(harness.stats.snapshot().rejected_total(), 1);
    stop(harness).await;
}

#[tokio::test]
async fn tcp_bind_error_names_the_address() {
    let first = start(test_config(), Limits::default(), DaemonSetup::default()).await;
    let parser = Arc::new(LineParser::new(Format::Json, Arc::new(Schema::thermostat()), Limits::default()));
    let config = TcpSourceConfig { listen: first.addr, ..test_config() };
    let stats = Arc::new(SourceStats::new("tcp-dup"));
    let error =
        TcpSource::bind(config, 0, parser, Arc::new(SensorRegistry::new(1)), stats).await.unwrap_err();
    assert!(matches!(error, TcpSourceError::Bind { addr, .. } if addr == first.addr));
    assert_eq!(error.to_string(), format!("cannot listen on {}", first.addr));
    stop(first).await;
}

#[tokio::test]
async fn tcp_refuses_a_zero_limit_in_the_config() {
    let parser = Arc::new(LineParser::new(Format::Json, Arc::new(Schema::thermostat()), Limits::default()));
    let config = TcpSourceConfig { max_in_flight_batches: 0, ..test_config() };
    let stats = Arc::new(SourceStats::new("tcp-zero"));
    let error =
        TcpSource::bind(config, 0, parser, Arc::new(SensorRegistry::new(1)), stats).await.unwrap_err();
    assert!(matches!(error, TcpSourceError::ZeroLimit { field: "max_in_flight_batches" }));
}

#[tokio::test]
async fn tcp_source_reports_a_closed_durable_log() {
    let parser = Arc::new(LineParser::new(Format::Json, Arc::new(Schema::thermostat()), Limits::default()));
    let stats = Arc::new(SourceStats::new("tcp-closed"));
    let source =
        TcpSource::bind(test_config(), 0, parser, Arc::new(SensorRegistry::new(10)), stats).await.unwrap();
    let addr = source.local_addr();
    let (ingest, receiver) = ingest_channel(1);
    drop(receiver);
    let run = tokio::spawn(source.run(ingest, CancellationToken::new()));
    let replies = exchange(addr, valid_line(0, 0).into_bytes()).await;
    assert_eq!(replies, ["nack 1 the durable log is closed"]);
    let result = tokio::time::timeout(*PROMPTLY, run).await.unwrap().unwrap();
    assert!(matches!(result, Err(TcpSourceError::IngestClosed { .. })), "{result:?}");
}

#[tokio::test]
async fn tcp_closes_a_connection_idle_past_idle_timeout_and_counts_it() {
    let config = TcpSourceConfig { idle_timeout: Duration::from_millis(300), ..test_config() };
    let harness = start(config, Limits::default(), DaemonSetup::default()).await;
    let mut stream = TcpStream::connect(harness.addr).await.unwrap();
    stream.write_all(valid_line(0, 0).as_bytes()).await.unwrap();
    // The ack, then the close: nothing more came for 300 ms.
    let replies = tokio::time::timeout(*PROMPTLY, read_replies_to_end(&mut stream)).await.unwrap();
    assert_eq!(replies, ["ack 1"]);
    assert_eq!(harness.stats.snapshot().timed_out, 1);
    stop(harness).await;
}

#[tokio::test]
async fn tcp_stops_reading_a_peer_that_leaves_its_replies_unread_then_closes_it() {
    let config =
        TcpSourceConfig { max_reply_bytes: 4096, reply_timeout: Duration::from_millis(500), ..test_config() };
    let harness = start(config, Limits::default(), DaemonSetup::default()).await;
    let stream = TcpStream::connect(harness.addr).await.unwrap();
    let (_read_half, mut write_half) = stream.into_split();
    // Garbage lines, one `err` each, written until the source stops taking them.
    let garbage = "x\n".repeat(64 * 1024);
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while write_half.write_all(garbage.as_bytes()).await.is_ok() {
            sent += garbage.len();
        }
        sent
    });
    let sent =
        tokio::time::timeout(*PROMPTLY, writer).await.expect("the source closed the connection").unwrap();
    let snapshot = harness.stats.snapshot();
    assert_eq!(snapshot.timed_out, 1);
    // The kernel's buffers took the rest; the source decoded far less than was sent.
    let n_sent_lines = u64::try_from(sent / 2).unwrap();
    assert!(snapshot.received < n_sent_lines / 2, "{} of {n_sent_lines} lines", snapshot.received);
    stop(harness).await;
}
