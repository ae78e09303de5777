//! Tests of the serial source over pseudo-terminal pairs: the test holds the master side (the
//! "device"), the source opens the slave through a symlink, so that re-pointing the symlink at
//! a new pair is an unplug and replug on the same path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;
use tokio_serial::{SerialPort, SerialStream};
use tokio_util::sync::CancellationToken;

use crate::ingest::ingest_channel;
use crate::parse::{Format, Limits, LineParser};
use crate::registry::SensorRegistry;
use crate::reject::RejectReason;
use crate::schema::Schema;
use crate::serial::{SerialSource, SerialSourceConfig, SerialSourceError};
use crate::stats::{SourceStats, SourceStatsSnapshot};
use crate::tcp::tests::{Answer, FakeDaemon, Held, PROMPTLY};

/// A pseudo-terminal "device" whose slave is reachable through `link`.
struct Device {
    master: SerialStream,
}

impl Device {
    /// Plugs a new device in: a new pty pair, `link` pointing at its slave.
    fn plug(link: &Path) -> Device {
        let (master, slave) = SerialStream::pair().expect("a pseudo-terminal pair");
        let slave_path = slave.name().expect("the slave has a path");
        // The source opens the slave itself.
        drop(slave);
        let tmp_link = link.with_extension("new");
        let _ = std::fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(&slave_path, &tmp_link).unwrap();
        std::fs::rename(&tmp_link, link).unwrap();
        Device { master }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).await.unwrap();
        self.master.flush().await.unwrap();
    }
}

struct Harness {
    link: PathBuf,
    _dir: tempfile::TempDir,
    daemon: FakeDaemon,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
    source: JoinHandle<Result<(), SerialSourceError>>,
}

fn start(max_pending_readings: usize, held: Held, channel_capacity: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("ttyV0");
    let config = SerialSourceConfig {
        max_pending_readings,
        retry_min: Duration::from_millis(20),
        retry_max: Duration::from_millis(200),
        ..SerialSourceConfig::new(&link)
    };
    let limits = Limits { max_line_bytes: 128, ..Limits::default() };
    let parser = Arc::new(LineParser::new(Format::Json, Arc::new(Schema::thermostat()), limits));
    let stats = Arc::new(SourceStats::new("serial-0"));
    let registry = Arc::new(SensorRegistry::new(100));
    let source = SerialSource::new(config, 2, parser, registry, stats.clone()).unwrap();
    let (ingest, receiver) = ingest_channel(channel_capacity);
    let daemon = FakeDaemon::spawn(receiver, Answer::Durable, held);
    let shutdown = CancellationToken::new();
    let source = tokio::spawn(source.run(ingest, shutdown.clone()));
    Harness { link, _dir: dir, daemon, stats, shutdown, source }
}

fn line(sensor: &str, ts: i64) -> Vec<u8> {
    format!("{{\"sensor\":\"{sensor}\",\"ts\":{ts},\"temp_c\":21.5}}\n").into_bytes()
}

async fn wait_for_stats(stats: &SourceStats, what: &str, check: impl Fn(&SourceStatsSnapshot) -> bool) {
    let deadline = tokio::time::Instant::now() + *PROMPTLY;
    while !check(&stats.snapshot()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Harness {
    fn sensors_and_times(&self) -> Vec<(String, i64)> {
        self.daemon
            .readings
            .lock()
            .unwrap()
            .iter()
            .map(|reading| (reading.sensor.to_string(), reading.ts_ms))
            .collect()
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(*PROMPTLY, &mut self.source).await.unwrap().unwrap().unwrap();
    }
}

#[tokio::test]
async fn serial_source_counts_garbage_non_utf8_and_overlong_lines_and_keeps_reading() {
    let mut harness = start(1024, Held::Nothing, 16);
    let mut device = Device::plug(&harness.link);
    let mut input = line("s1", 1_000);
    input.extend_from_slice(b"\x00\x07garbage}{\n");
    input.extend_from_slice(b"{\"sensor\":\"s1\",\"ts\":1,\"temp_c\":\xff}\n");
    input.extend_from_slice(&[b'x'; 300]);
    input.extend_from_slice(b"\n\r\n");
    input.extend(line("s2", 2_000));
    device.write(&input).await;
    harness.daemon.wait_for_readings(2).await;
    wait_for_stats(&harness.stats, "five lines", |stats| stats.received == 5).await;
    let stats = harness.stats.snapshot();
    assert_eq!(stats.accepted, 2);
    assert_eq!(stats.rejected_for(RejectReason::BadSyntax), 1, "{stats:?}");
    assert_eq!(stats.rejected_for(RejectReason::BadUtf8), 1, "{stats:?}");
    assert_eq!(stats.rejected_for(RejectReason::LineTooLong), 1, "{stats:?}");
    assert_eq!(harness.sensors_and_times(), [("s1".to_owned(), 1_000), ("s2".to_owned(), 2_000)]);
    harness.stop().await;
}

#[tokio::test]
async fn serial_source_survives_unplug_and_replug_and_never_glues_a_partial_line() {
    let mut harness = start(1024, Held::Nothing, 16);
    let mut device = Device::plug(&harness.link);
    let mut input = line("s1", 1_000);
    // Cut mid-line: glued to what the next device sends, it would be a valid reading.
    input.extend_from_slice(b"{\"sensor\":\"s1\",\"ts\":");
    device.write(&input).await;
    harness.daemon.wait_for_readings(1).await;
    wait_for_stats(&harness.stats, "the first line", |stats| stats.received == 1).await;

    // Unplug: the slave's reads fail with EIO once the master is closed.
    drop(device);
    wait_for_stats(&harness.stats, "the partial line", |stats| {
        stats.rejected_for(RejectReason::PartialLine) == 1
    })
    .await;

    // While the path is missing the source retries quietly; then a new device appears.
    std::fs::remove_file(&harness.link).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut device = Device::plug(&harness.link);
    let mut input = b"3000,\"temp_c\":22.0}\n".to_vec();
    input.extend(line("s1", 4_000));
    // The source may not have reopened the port yet; keep the device talking until it has.
    let deadline = tokio::time::Instant::now() + *PROMPTLY;
    while harness.stats.snapshot().accepted < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", harness.stats.snapshot());
        device.write(&input).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    harness.stop().await;
    let stats = harness.stats.snapshot();
    assert_eq!(stats.rejected_for(RejectReason::PartialLine), 1, "{stats:?}");
    assert!(stats.rejected_for(RejectReason::BadSyntax) >= 1, "the tail is its own (bad) line: {stats:?}");
    let readings = harness.sensors_and_times();
    assert_eq!(readings[0], ("s1".to_owned(), 1_000));
    assert!(readings[1..].iter().all(|reading| *reading == ("s1".to_owned(), 4_000)), "{readings:?}");
    assert!(!readings.iter().any(|(_, ts)| *ts == 3_000), "a glued line was accepted: {readings:?}");
}

#[tokio::test]
async fn serial_source_waits_for_a_device_missing_at_start() {
    let mut harness = start(1024, Held::Nothing, 16);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(harness.stats.snapshot().received, 0);
    let mut device = Device::plug(&harness.link);
    let deadline = tokio::time::Instant::now() + *PROMPTLY;
    while harness.daemon.progress().readings == 0 {
        assert!(tokio::time::Instant::now() < deadline);
        device.write(&line("s1", 1_000)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    harness.stop().await;
}

#[tokio::test]
async fn serial_source_drops_and_counts_lines_past_its_queue_while_the_log_is_busy() {
    let mut harness = start(3, Held::Intake, 1);
    let mut device = Device::plug(&harness.link);
    let input: Vec<u8> = (0..10).flat_map(|idx| line("s1", 1_000 + idx)).collect();
    // One write, read back in one or a few reads: at most 3 readings wait in the source and
    // one batch sits in the channel, the rest are overruns.
    device.write(&input).await;
    wait_for_stats(&harness.stats, "ten lines", |stats| stats.received == 10).await;
    FakeDaemon::release(&harness.daemon.intake);
    let stats = harness.stats.snapshot();
    let overruns = stats.rejected_for(RejectReason::Overrun);
    assert!(overruns >= 4, "{stats:?}");
    assert_eq!(stats.accepted + overruns, 10, "{stats:?}");
    harness.daemon.wait_for_readings(stats.accepted).await;
    harness.stop().await;
}
