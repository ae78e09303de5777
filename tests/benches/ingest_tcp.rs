//! Benchmark: durable ingest + event-time windows + micro-batches over TCP, end to end.
//! Runs the release `eddy` with an acking TCP source (fsync group commit), drives it with
//! `eddy simulate --ack`, and reports readings/s (wall clock), readings per CPU-second of eddy
//! (user + system: the figure that does not depend on the load generator sharing the cores),
//! the generator's CPU, eddy's idle and peak RSS, the bytes it wrote to storage per reading
//! (`/proc/PID/io`) and, from `/status`, its open windows and the window-result latency.
//!
//! `cargo build --release -p eddy && cargo bench -p eddy-tests --bench ingest_tcp`
//! Environment: `EDDY_BENCH_COUNT` (readings per run, default 2,000,000), `EDDY_BENCH_SENSORS`
//! (default 1000), `EDDY_BENCH_RATE` (readings/s per sensor, a decimal; unset: as fast as possible),
//! `EDDY_BENCH_WINDOWS` (1 to 8 windows, default 2: `eddy_tests::config::throughput_bench_windows`),
//! `EDDY_BENCH_SESSION=1` (number the lines in a session: what exactly-once ingest costs),
//! `EDDY_BENCH_CSV` (a file to append one row of figures to: scripts/bench-scaling.sh),
//! `EDDY_BIN` (another eddy binary, e.g. the previous build: scripts/bench-side-by-side.sh).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eddy_tests::config::throughput_bench_windows;
use eddy_tests::{cpu_seconds, eddy_binary, simulate_binary, Eddy};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|value| value.parse().unwrap_or_else(|_| panic!("{name} is a whole number")))
}

fn main() {
    // `cargo test` runs benches in test mode with `--bench` absent: keep that quick.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let count = env_u64("EDDY_BENCH_COUNT").unwrap_or(if quick { 20_000 } else { 2_000_000 });
    let sensors = env_u64("EDDY_BENCH_SENSORS").unwrap_or(1000);
    // Readings per second per sensor (unset: as fast as possible): 100 with 1000 sensors is
    // 100,000 readings/s.
    // A decimal for many slow sensors: 0.1 with 100,000 sensors is 10,000 readings/s, each
    // sensor reporting every 10 s.
    let rate: Option<f64> = std::env::var("EDDY_BENCH_RATE")
        .ok()
        .map(|value| value.parse().unwrap_or_else(|_| panic!("EDDY_BENCH_RATE is a number")));
    let windows = usize::try_from(env_u64("EDDY_BENCH_WINDOWS").unwrap_or(2)).expect("a few windows");
    let session = std::env::var("EDDY_BENCH_SESSION").is_ok_and(|v| v == "1");
    let config = throughput_bench_windows(windows).tcp_source("in").key("ack", true);
    let config = config.table("api").key("listen", "127.0.0.1:0").to_toml();
    let mut eddy = Eddy::start(&config).expect("eddy starts");
    let address = eddy.tcp_address("in").expect("address");
    // Idle: started, sources up, nothing received yet.
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = eddy.proc_status_kib("VmRSS:").unwrap_or(0);
    let io_before = proc_io(&eddy);
    let (user_before, system_before) = eddy.cpu_user_system_seconds().expect("eddy's CPU time");
    let cpu_before = user_before + system_before;

    let started = Instant::now();
    let mut simulate = Command::new(simulate_binary())
        .args(["simulate", "--tcp", &address.to_string(), "--ack"])
        .args(["--count", &count.to_string(), "--sensors", &sensors.to_string()])
        .args(rate.map(|rate| ["--rate".to_owned(), rate.to_string()]).into_iter().flatten())
        .args(if session { &["--session", "bench"][..] } else { &[] })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("eddy simulate runs");
    let mut report = String::new();
    simulate.stdout.take().expect("piped").read_to_string(&mut report).expect("simulate's report");
    let mut errors = String::new();
    simulate.stderr.take().expect("piped").read_to_string(&mut errors).expect("simulate's errors");
    let sim_cpu = exited_cpu_seconds(simulate.id());
    let status = simulate.wait().expect("simulate exits");
    let elapsed = started.elapsed();
    let (user_after, system_after) = eddy.cpu_user_system_seconds().expect("eddy's CPU time");
    let cpu = user_after + system_after - cpu_before;
    // The kernel's share (syscalls, wake-ups, page faults) apart: it moves with the host.
    let (user, system) = (user_after - user_before, system_after - system_before);
    assert!(status.success(), "simulate failed: {report}{errors}");
    let acked: u64 = report
        .split("acked ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the acked count from `{report}`"));
    assert_eq!(acked, count, "every reading is acked");
    let peak_rss = eddy.proc_status_kib("VmHWM:").unwrap_or(0);
    // The last commit (checkpoint_interval 1 s) and the sink's cursor follow the last ack.
    std::thread::sleep(Duration::from_secs(3));
    let io_after = proc_io(&eddy);
    let status = eddy.status_json().expect("/status");
    let engine = &status["engine"];
    let open_windows = engine["open_windows"].as_u64().unwrap_or(0);
    let latency = |key: &str| engine[key].as_f64().map_or_else(|| "-".to_owned(), |ms| format!("{ms}"));
    let exit = eddy.stop().expect("eddy stops");
    assert!(exit.success());

    let wall_rate = acked as f64 / elapsed.as_secs_f64();
    let per_cpu = acked as f64 / cpu.max(1e-9);
    let numbered = if session { ", numbered session" } else { "" };
    let paced = rate.map_or_else(
        || "as fast as possible".to_owned(),
        |rate| format!("{} readings/s", rate * sensors as f64),
    );
    println!(
        "ingest_tcp: {acked} readings, {sensors} sensors, {windows} windows + 2 s batches, ack after fsync, {paced}{numbered}"
    );
    println!("ingest_tcp: {:.3} s, {wall_rate:.0} readings/s (durable, acked)", elapsed.as_secs_f64());
    println!(
        "ingest_tcp: eddy CPU {cpu:.2} s (user+sys): {per_cpu:.0} readings per CPU-second of eddy; generator CPU {}",
        sim_cpu.map_or_else(|| "unknown".to_owned(), |secs| format!("{secs:.2} s"))
    );
    println!(
        "ingest_tcp: eddy CPU {user:.2} s user, {system:.2} s system: {:.0} readings per user CPU-second",
        acked as f64 / user.max(1e-9)
    );
    println!("ingest_tcp: eddy RSS idle {idle_rss} KiB, peak {peak_rss} KiB");
    println!(
        "ingest_tcp: {open_windows} open windows at the end; window result latency p50 {} ms, p99 {} ms, max {} ms",
        latency("result_p50_ms"),
        latency("result_p99_ms"),
        latency("result_max_ms")
    );
    // What the sender wrote: `sent N readings (B bytes) in …` (an eddy before #12 does not say).
    let input: Option<u64> = report
        .split(" readings (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok());
    let written = io_after - io_before;
    let written_per_reading = written as f64 / acked as f64;
    println!("ingest_tcp: eddy wrote {written} bytes to storage ({written_per_reading:.1} per reading)");
    if let Some(input) = input {
        println!(
            "ingest_tcp: input {input} bytes ({:.1} per reading): {:.2} bytes written per input byte",
            input as f64 / acked as f64,
            written as f64 / input.max(1) as f64
        );
    }
    if let Some(path) = std::env::var_os("EDDY_BENCH_CSV") {
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("EDDY_BENCH_CSV opens");
        if file.metadata().map(|meta| meta.len()).unwrap_or(0) == 0 {
            writeln!(
                file,
                "binary,sensors,windows,rate,readings,wall_s,readings_per_s,eddy_cpu_s,readings_per_cpu_s,\
                 generator_cpu_s,idle_rss_kib,peak_rss_kib,written_per_reading,open_windows"
            )
            .expect("CSV header");
        }
        writeln!(
            file,
            "{},{sensors},{windows},{},{acked},{:.3},{wall_rate:.0},{cpu:.3},{per_cpu:.0},{},{idle_rss},{peak_rss},\
             {written_per_reading:.1},{open_windows}",
            eddy_binary().display(),
            rate.map_or_else(|| "max".to_owned(), |rate| (rate * sensors as f64).to_string()),
            elapsed.as_secs_f64(),
            sim_cpu.map_or_else(String::new, |secs| format!("{secs:.3}")),
        )
        .expect("CSV row");
    }
}

/// The CPU time of a child that closed its output (so is exiting), read while it is a zombie,
/// before `wait` reaps it: None if it could not be read.
fn exited_cpu_seconds(pid: u32) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let state = stat[stat.rfind(')')? + 1..].split_whitespace().next()?;
        if state == "Z" {
            return cpu_seconds(pid);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// `write_bytes` of eddy's `/proc/PID/io`: the bytes it caused to be written to storage.
fn proc_io(eddy: &Eddy) -> u64 {
    let pid = eddy.pid().expect("eddy runs");
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
