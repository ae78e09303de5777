//! A full disk is a state, not a crash (#12): the real binary on a small, real ext4 file system
//! (a loop-mounted image) that a filler file takes to the brim while readings arrive with acks
//! and the hub is down. eddy must not exit and must not restart, must answer `/health` 503
//! with the reason, nack and count the readings it cannot store, and, once space is freed and
//! the hub is back, take readings again by itself and deliver every reading it acknowledged.
//!
//! Needs root and loop devices (`mount -o loop`) and `mkfs.ext4` (e2fsprogs); it fails with a
//! message saying so when they are missing, it never skips.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use eddy_tests::config::ConfigToml;
use eddy_tests::http_hub::HttpHub;
use eddy_tests::{wait_until, Eddy};

use crate::api::{api_address, get};
use crate::uplink::{base_ms, counters};

/// Size of the file system: room for the store, the results and a few seconds of readings.
const IMAGE_BYTES: u64 = 32 * 1024 * 1024;
/// `storage.min_free_bytes` of the test: below this much free space readings are refused.
const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;
/// The file sink's rotation.
const MAX_FILE_BYTES: u64 = 8 * 1024;
const MAX_FILES: u64 = 3;
/// Readings per round (one connection each) and sensors they come from.
const ROUND: usize = 100;
const SENSORS: usize = 20;

/// An ext4 image loop-mounted in a temporary directory; unmounted and deleted on drop, also
/// when the test fails.
struct LoopMount {
    mountpoint: PathBuf,
    mounted: bool,
    /// Holds the image and the mountpoint; removed after the unmount.
    _dir: tempfile::TempDir,
}

impl LoopMount {
    fn new(size: u64) -> LoopMount {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image).and_then(|file| file.set_len(size)).expect("the image file");
        // No blocks reserved for root: eddy runs as root here, and reserved blocks would be
        // room the filler cannot take from it.
        let mkfs = Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image).output();
        match mkfs {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&output.stderr)),
            Err(error) => {
                panic!("cannot run mkfs.ext4 ({error}): install e2fsprogs (apt-get install e2fsprogs)")
            }
        }
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("the mountpoint");
        let mount = Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mountpoint).output();
        match mount {
            Ok(output) if output.status.success() => {}
            Ok(output) => panic!(
                "cannot loop-mount an ext4 image (`mount -o loop {}`): {}. The disk-full test \
                 needs root and loop devices (/dev/loop-control); run it as root on a host or \
                 container that has them.",
                image.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => panic!("cannot run mount: {error}"),
        }
        LoopMount { mountpoint, mounted: true, _dir: dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mountpoint.join(name)
    }

    /// Free bytes for an unprivileged writer (`df`'s available).
    fn free_bytes(&self) -> u64 {
        let output = Command::new("df").args(["-B1", "--output=avail"]).arg(&self.mountpoint).output();
        let text = String::from_utf8_lossy(&output.expect("df runs").stdout).into_owned();
        text.lines().nth(1).and_then(|line| line.trim().parse().ok()).expect("df's available bytes")
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // eddy (dropped before this) may take a moment to let go of its files.
        for _ in 0..50 {
            let unmounted = Command::new("umount").arg(&self.mountpoint).status();
            if unmounted.is_ok_and(|status| status.success()) {
                self.mounted = false;
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        // Still busy: detach it now, the kernel finishes when the last file closes.
        let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        self.mounted = false;
    }
}

/// Writes a file until the file system refuses even a byte, then keeps it there (topping it up
/// as space comes back) until stopped.
struct Filler {
    keep_full: Arc<AtomicBool>,
    full: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Filler {
    fn start(path: PathBuf) -> Filler {
        let keep_full = Arc::new(AtomicBool::new(true));
        let full = Arc::new(AtomicBool::new(false));
        let (keep, reached) = (keep_full.clone(), full.clone());
        let thread = thread::spawn(move || {
            let mut file = std::fs::File::create(&path).expect("the filler file");
            let mut chunk = vec![0x5a_u8; 1 << 20];
            while keep.load(Ordering::SeqCst) {
                match file.write(&chunk) {
                    Ok(0) => chunk.truncate(chunk.len() / 2),
                    Ok(_) => continue,
                    Err(error) if error.raw_os_error() == Some(28) => {
                        if chunk.len() > 1 {
                            // Smaller and smaller writes take the last blocks.
                            chunk.truncate(chunk.len() / 2);
                            continue;
                        }
                        let _ = file.sync_data();
                        reached.store(true, Ordering::SeqCst);
                        // Full to the brim; look again soon for space given back.
                        thread::sleep(Duration::from_millis(20));
                        chunk = vec![0x5a_u8; 64 * 1024];
                    }
                    Err(error) => panic!("filler write failed: {error}"),
                }
            }
        });
        Filler { keep_full, full, thread: Some(thread) }
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    fn stop(&mut self) {
        self.keep_full.store(false, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the filler thread");
        }
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.keep_full.store(false, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes `path` until the file system has at most `leave` bytes free (and a little less than
/// that, by a block or so), then stops.
fn fill_leaving(fs: &LoopMount, path: &Path, leave: u64) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("the filler file");
    let chunk = vec![0x5a_u8; 1 << 20];
    loop {
        let free = fs.free_bytes();
        if free <= leave {
            return;
        }
        let n = usize::try_from((free - leave).min(1 << 20)).unwrap();
        file.write_all(&chunk[..n]).expect("room below the target");
        file.sync_data().expect("filler sync");
    }
}

/// What happened to each reading a test sent: acknowledged (durable) or nacked.
#[derive(Default)]
struct Ledger {
    /// (sensor, ts) of every acknowledged reading.
    acked: Vec<(String, i64)>,
    nacked: u64,
    /// The reasons of the nacks seen.
    reasons: HashSet<String>,
    /// Readings sent so far, for unique timestamps.
    sent: u64,
}

impl Ledger {
    /// Sends one round of new readings on a new connection and records, line by line, what
    /// eddy answered: `ack N` (cumulative) covers the lines since the last answer, `nack K …`
    /// the next K lines. Returns (acked, nacked) of this round.
    fn round(&mut self, address: SocketAddr, base: i64) -> (u64, u64) {
        let readings: Vec<(String, i64)> = (0..ROUND)
            .map(|idx| {
                let seq = self.sent + u64::try_from(idx).unwrap();
                let sensor = format!("s{}", seq % u64::try_from(SENSORS).unwrap());
                // 100 ms of event time apart: each sensor closes a one-second window every
                // other reading, so that results keep the results file rotating.
                (sensor, base + 100 * i64::try_from(seq).unwrap())
            })
            .collect();
        self.sent += u64::try_from(ROUND).unwrap();
        let payload: String = readings
            .iter()
            .map(|(sensor, ts)| format!("{{\"sensor\":\"{sensor}\",\"ts\":{ts},\"temp_c\":21.5}}\n"))
            .collect();
        let stream = TcpStream::connect(address).expect("connect to the TCP source");
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut writer = stream.try_clone().unwrap();
        writer.write_all(payload.as_bytes()).expect("send the readings");
        let mut reader = BufReader::new(stream);
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut answered, mut acked_so_far, mut round_acked, mut round_nacked) = (0usize, 0u64, 0u64, 0u64);
        let mut line = String::new();
        while answered < ROUND {
            assert!(Instant::now() < deadline, "{answered} of {ROUND} readings answered within 60 s");
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => panic!("eddy closed the connection after {answered} answers"),
                Ok(_) => {}
                Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
                Err(error) => panic!("reading eddy's answers: {error}"),
            }
            let mut words = line.trim_end().splitn(3, ' ');
            match (words.next(), words.next().and_then(|n| n.parse::<u64>().ok()), words.next()) {
                (Some("ack"), Some(total), None) => {
                    let n = usize::try_from(total - acked_so_far).unwrap();
                    self.acked.extend(readings[answered..answered + n].iter().cloned());
                    acked_so_far = total;
                    answered += n;
                    round_acked += u64::try_from(n).unwrap();
                }
                (Some("nack"), Some(n), Some(reason)) => {
                    answered += usize::try_from(n).unwrap();
                    self.nacked += n;
                    round_nacked += n;
                    self.reasons.insert(reason.to_owned());
                }
                _ => panic!("unexpected answer `{}`", line.trim_end()),
            }
        }
        (round_acked, round_nacked)
    }
}

/// The value of the sample `series` (name and labels exactly) in `/metrics`.
fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// (sensor, ts) of every raw reading the hub took.
fn raw_readings_at(hub: &HttpHub) -> HashSet<(String, i64)> {
    hub.records()
        .iter()
        .filter(|record| record["type"] == "raw")
        .filter_map(|record| Some((record["sensor"].as_str()?.to_owned(), record["ts"].as_i64()?)))
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The tests' eddy: `data_dir` and a rotating results file on `fs`, an acked TCP source,
/// one-second windows, raw readings forwarded to `hub`, and the endpoint.
fn config(fs: &LoopMount, hub: &HttpHub) -> String {
    ConfigToml::new("gw-full")
        .root("data_dir", fs.path("data").display().to_string())
        .root("shutdown_timeout", "20s")
        .table("ingest")
        .key("flush_interval", "5ms")
        .table("storage")
        .key("min_free_bytes", MIN_FREE_BYTES)
        .table("engine")
        .key("checkpoint_interval", "100ms")
        .key("idle_timeout", "2s")
        .key("forward_raw", true)
        .table("batch")
        .key("interval", "1s")
        .table("api")
        .key("listen", "127.0.0.1:0")
        .tcp_source("in")
        .key("ack", true)
        .window("w1s", "1s")
        .key("lateness", "0s")
        .key("fields", ["temp_c"])
        .key("aggregates", ["count"])
        .file_sink("results", &fs.path("results.jsonl").display().to_string())
        .key("records", ["window", "batch"])
        .key("max_file_bytes", MAX_FILE_BYTES)
        .key("max_files", MAX_FILES)
        .key("batch_max_records", 20)
        .key("max_backoff", "300ms")
        .http_sink("hub", &hub.url())
        .key("records", ["raw"])
        .key("max_backoff", "300ms")
        .key("timeout", "1s")
        .to_toml()
}

#[test]
fn a_full_disk_refuses_readings_without_an_exit_and_loses_nothing_acknowledged() {
    let started = Instant::now();
    let fs = LoopMount::new(IMAGE_BYTES);
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.stop();
    let config = config(&fs, &hub);
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let pid = eddy.pid().expect("eddy runs");
    let api = api_address(&eddy);
    let address = eddy.tcp_address("in").expect("the TCP source");
    let base = base_ms();
    let mut ledger = Ledger::default();

    // Readings arrive, all acknowledged, until the filler has taken the disk to the brim.
    for _ in 0..5 {
        assert_eq!(ledger.round(address, base), (u64::try_from(ROUND).unwrap(), 0), "room on the disk");
    }
    let mut filler = Filler::start(fs.path("filler"));
    let fill_deadline = Instant::now() + Duration::from_secs(60);
    while !filler.is_full() {
        assert!(Instant::now() < fill_deadline, "the filler never filled the file system");
        ledger.round(address, base);
    }
    assert_eq!(fs.free_bytes(), 0, "full to the brim");
    // New readings are refused: nacked, with the reason.
    let refused_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, nacked) = ledger.round(address, base);
        if nacked == u64::try_from(ROUND).unwrap() {
            break;
        }
        assert!(Instant::now() < refused_deadline, "readings were still taken on a full disk");
    }
    // What the engine still had to commit (results of readings taken before) meets the full
    // disk: the store fails, and eddy opens it again by itself later. It stays up meanwhile.
    assert!(
        wait_until(Duration::from_secs(30), || eddy.log().contains("The store failed")),
        "no store write failed on the full disk; log:\n{}",
        eddy.log()
    );
    for _ in 0..3 {
        assert_eq!(ledger.round(address, base), (0, u64::try_from(ROUND).unwrap()), "refused while full");
    }
    let (code, body) = get(api, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("disk almost full"), "the reason is named: {body}");
    assert!(body.contains("store failed"), "{body}");
    assert!(
        ledger
            .reasons
            .iter()
            .any(|reason| reason.contains("disk almost full") || reason.contains("store failed")),
        "{:?}",
        ledger.reasons
    );
    // Every refused reading is counted, for its source and store-wide.
    let metrics = get(api, "/metrics").1;
    assert_eq!(
        sample(&metrics, r#"eddy_source_refused_total{source="in"}"#),
        Some(ledger.nacked),
        "{metrics}"
    );
    let refused_store = sample(&metrics, r#"eddy_store_refused_readings_total{reason="disk"}"#).unwrap_or(0)
        + sample(&metrics, r#"eddy_store_refused_readings_total{reason="budget"}"#).unwrap_or(0);
    assert_eq!(refused_store, ledger.nacked, "{metrics}");
    assert_eq!(sample(&metrics, "eddy_store_failures_total"), Some(1), "{metrics}");
    assert_eq!(sample(&metrics, "eddy_up"), Some(0));
    // Still the same process: no exit, no restart.
    thread::sleep(Duration::from_secs(2));
    assert!(alive(pid), "eddy exited on a full disk; log:\n{}", eddy.log());
    assert_eq!(eddy.pid(), Some(pid));

    // Space comes back and the hub too: eddy takes readings again by itself.
    filler.stop();
    std::fs::remove_file(fs.path("filler")).expect("the filler is removed");
    hub.restart().expect("the hub comes back");
    let resume_deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (acked, _) = ledger.round(address, base);
        if acked == u64::try_from(ROUND).unwrap() {
            break;
        }
        assert!(Instant::now() < resume_deadline, "eddy never took readings again; log:\n{}", eddy.log());
        thread::sleep(Duration::from_millis(200));
    }
    for _ in 0..3 {
        assert_eq!(ledger.round(address, base), (u64::try_from(ROUND).unwrap(), 0), "room again");
    }
    assert!(eddy.log().contains("Store open again"), "{}", eddy.log());
    assert!(
        wait_until(Duration::from_secs(30), || get(api, "/health").0 == 200),
        "healthy again: {}",
        get(api, "/health").1
    );
    // Every acknowledged reading reaches the hub (as a raw record), none is lost.
    let acked: HashSet<(String, i64)> = ledger.acked.iter().cloned().collect();
    let delivered = || raw_readings_at(&hub);
    let all_there = wait_until(Duration::from_secs(60), || acked.is_subset(&delivered()));
    let missing = acked.difference(&delivered()).count();
    assert!(
        all_there,
        "{missing} of {} acknowledged readings never reached the hub; log:\n{}",
        acked.len(),
        eddy.log()
    );

    assert!(eddy.stop().expect("eddy stops").success(), "{}", eddy.log());
    assert!(!alive(pid));
    let log = eddy.log();
    assert_eq!(log.matches("Starting eddy.").count(), 1, "one start, no restart");
    assert!(!log.contains("Component failed; stopping eddy"), "{log}");
    // The results file was rotated, and its bytes are what eddy reported.
    let uplink = counters(&log, "Uplink counters.", "results");
    let on_disk: u64 = ["results.jsonl", "results.jsonl.1", "results.jsonl.2"]
        .iter()
        .filter_map(|name| std::fs::metadata(fs.path(name)).ok())
        .map(|metadata| metadata.len())
        .sum();
    assert!(fs.path("results.jsonl.1").exists(), "the results file was rotated");
    assert!(!fs.path("results.jsonl.3").exists(), "at most max_files files are kept");
    assert_eq!(uplink["file_bytes"], on_disk, "{uplink:?}");
    eprintln!(
        "disk_full: {} readings acknowledged, {} nacked, in {:.1} s",
        ledger.acked.len(),
        ledger.nacked,
        started.elapsed().as_secs_f64()
    );
}

/// A disk already full when eddy starts (after a reboot, say) is waited for in the process,
/// not exited for: systemd would restart eddy into the same full disk until its start limit
/// gave up. Once there is room, eddy starts and takes readings.
#[test]
fn eddy_started_on_a_full_disk_waits_for_room_then_starts() {
    let fs = LoopMount::new(IMAGE_BYTES);
    let mut filler = Filler::start(fs.path("filler"));
    assert!(
        wait_until(Duration::from_secs(30), || filler.is_full()),
        "the filler never filled the file system"
    );
    let config = ConfigToml::new("gw-full-start")
        .root("data_dir", fs.path("data").display().to_string())
        .table("storage")
        .key("min_free_bytes", MIN_FREE_BYTES)
        .tcp_source("in")
        .key("ack", true)
        .window("w1s", "1s")
        .file_sink("results", &fs.path("results.jsonl").display().to_string())
        .to_toml();
    let run_dir = tempfile::tempdir().expect("a directory for the configuration and logs");
    let mut eddy = Eddy::spawn_in(run_dir.path(), &config).expect("eddy runs");
    let pid = eddy.pid().expect("eddy runs");
    eddy.wait_for_log("waiting for it (no restart needed)", Duration::from_secs(30))
        .expect("eddy waits for the disk");
    thread::sleep(Duration::from_secs(2));
    assert!(alive(pid), "eddy exited on a full disk at start-up; log:\n{}", eddy.log());
    assert!(!eddy.log().contains("eddy is ready."), "ready on a full disk? log:\n{}", eddy.log());

    filler.stop();
    std::fs::remove_file(fs.path("filler")).expect("the filler is removed");
    eddy.wait_for_log("eddy is ready.", Duration::from_secs(90)).expect("eddy starts once there is room");
    assert_eq!(eddy.pid(), Some(pid), "the same process, not a restart");
    let mut ledger = Ledger::default();
    let address = eddy.tcp_address("in").expect("the TCP source");
    assert_eq!(ledger.round(address, base_ms()), (u64::try_from(ROUND).unwrap(), 0), "readings are taken");
    assert!(eddy.stop().expect("eddy stops").success(), "{}", eddy.log());
}

/// A stop asked for while the store is failed ends cleanly (no wait for a store that cannot be
/// written), and a restart once there is room finds everything that was acknowledged.
#[test]
fn stopping_while_the_store_is_failed_ends_cleanly_and_a_restart_keeps_every_ack() {
    let fs = LoopMount::new(IMAGE_BYTES);
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.stop();
    let config = config(&fs, &hub);
    let run_dir = tempfile::tempdir().expect("a directory for the configuration and logs");
    let mut eddy = Eddy::start_in(run_dir.path(), &config).expect("eddy starts");
    let address = eddy.tcp_address("in").expect("the TCP source");
    let base = base_ms();
    let mut ledger = Ledger::default();
    for _ in 0..3 {
        ledger.round(address, base);
    }
    let mut filler = Filler::start(fs.path("filler"));
    while !filler.is_full() {
        ledger.round(address, base);
    }
    assert!(
        wait_until(Duration::from_secs(30), || eddy.log().contains("The store failed")),
        "no store write failed on the full disk; log:\n{}",
        eddy.log()
    );
    let stop_asked = Instant::now();
    let status = eddy.stop().expect("eddy stops");
    assert!(status.success(), "a stop is a clean stop, also with a failed store: {}", eddy.log());
    assert!(stop_asked.elapsed() < Duration::from_secs(15), "the stop waited {:?}", stop_asked.elapsed());
    assert!(eddy.log().contains("Stopped while the store was failed"), "{}", eddy.log());

    filler.stop();
    std::fs::remove_file(fs.path("filler")).expect("the filler is removed");
    hub.restart().expect("the hub comes back");
    let eddy = Eddy::start_in(run_dir.path(), &config).expect("eddy starts again on the same store");
    let acked: HashSet<(String, i64)> = ledger.acked.iter().cloned().collect();
    let delivered = || raw_readings_at(&hub);
    assert!(
        wait_until(Duration::from_secs(60), || acked.is_subset(&delivered())),
        "{} of {} acknowledged readings never reached the hub; log:\n{}",
        acked.difference(&delivered()).count(),
        acked.len(),
        eddy.log()
    );
}

/// Short of the reserve but not out of space (another program took most of it): new readings
/// are refused, while what eddy writes for data it already took goes into the reserve. The hub
/// comes back and the sinks deliver the backlog, their cursors written there; the store never
/// fails. Once space is freed, readings are taken again.
#[test]
fn short_of_the_reserve_readings_are_refused_while_sinks_deliver_into_it() {
    let fs = LoopMount::new(IMAGE_BYTES);
    let hub = HttpHub::start().expect("the HTTP hub starts");
    hub.stop();
    let mut eddy = Eddy::start(&config(&fs, &hub)).expect("eddy starts");
    let api = api_address(&eddy);
    let address = eddy.tcp_address("in").expect("the TCP source");
    let base = base_ms();
    let mut ledger = Ledger::default();
    for _ in 0..10 {
        assert_eq!(ledger.round(address, base), (u64::try_from(ROUND).unwrap(), 0), "room on the disk");
    }
    // Half the reserve left: below min_free_bytes, yet room for the store's own writes.
    fill_leaving(&fs, &fs.path("filler"), MIN_FREE_BYTES / 2);
    assert_eq!(ledger.round(address, base), (0, u64::try_from(ROUND).unwrap()), "refused below the reserve");
    let (code, body) = get(api, "/health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("disk almost full"), "{body}");

    // The hub comes back: the backlog is delivered while readings are still refused.
    hub.restart().expect("the hub comes back");
    let acked: HashSet<(String, i64)> = ledger.acked.iter().cloned().collect();
    assert!(
        wait_until(Duration::from_secs(60), || acked.is_subset(&raw_readings_at(&hub))),
        "{} of {} acknowledged readings never reached the hub; log:\n{}",
        acked.difference(&raw_readings_at(&hub)).count(),
        acked.len(),
        eddy.log()
    );
    assert_eq!(ledger.round(address, base), (0, u64::try_from(ROUND).unwrap()), "still refused");
    assert!(!eddy.log().contains("The store failed"), "the reserve had room; log:\n{}", eddy.log());

    std::fs::remove_file(fs.path("filler")).expect("the filler is removed");
    assert_eq!(ledger.round(address, base), (u64::try_from(ROUND).unwrap(), 0), "taken again, no restart");
    assert!(eddy.stop().expect("eddy stops").success(), "{}", eddy.log());
    let store = counters(&eddy.log(), "Store budget counters.", "");
    assert_eq!(store["refused_disk"], ledger.nacked);
    assert_eq!(store["store_failures"], 0);
}
