//! Harness for eddy's end-to-end tests: runs the real `eddy` binary in a temporary directory,
//! talks to it over TCP like a sensor gateway client, and reads what it wrote.

pub mod config;
pub mod fake_broker;
pub mod faketime;
pub mod http_hub;
pub mod kafka_broker;
pub mod mosquitto;
pub mod mqtt_hub;
pub mod paced;
pub mod pki;
pub mod powercut_fs;
pub mod proxy;
pub mod socat;
pub mod torture;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Path to the conformance data shared beside the repository.
pub fn conformance_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    assert!(
        dir.join("readings_sample.jsonl").is_file(),
        "conformance data missing: expected {} (the shared/ folder beside the repository)",
        dir.display()
    );
    dir
}

/// The `eddy` binary of this build (target/<profile>/eddy), or the one named by `EDDY_BIN`
/// (benches run a previous build side by side with it: scripts/bench-side-by-side.sh).
pub fn eddy_binary() -> PathBuf {
    if let Some(binary) = std::env::var_os("EDDY_BIN").filter(|value| !value.is_empty()) {
        let binary = PathBuf::from(binary);
        assert!(binary.is_file(), "EDDY_BIN names no file: {}", binary.display());
        return binary;
    }
    simulate_binary()
}

/// The `eddy` binary of this build, whatever `EDDY_BIN` says: the benches' load generator
/// (`eddy simulate`), the same for every eddy measured side by side.
pub fn simulate_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-HASH → target/<profile>/eddy
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let binary = profile_dir.join("eddy");
    assert!(
        binary.is_file(),
        "the eddy binary is missing at {}: build it first with \
         `cargo build -p eddy --features test-switches` (scripts/test-all.sh does)",
        binary.display()
    );
    binary
}

/// A running eddy.
pub struct Eddy {
    child: Option<Child>,
    /// Its working directory (data, config, outputs).
    pub dir: PathBuf,
    log_path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Eddy {
    /// Writes `config` (TOML; `{dir}` is replaced by the working directory) and starts
    /// `eddy run --config` in a fresh temporary directory; waits until it is ready.
    pub fn start(config: &str) -> anyhow::Result<Eddy> {
        let tmp = tempfile::tempdir().context("temp dir")?;
        let dir = tmp.path().to_path_buf();
        let mut eddy = Eddy::start_in(&dir, config)?;
        eddy._tmp = Some(tmp);
        Ok(eddy)
    }

    /// Like [`Eddy::start`], in a given directory (to restart on the same data).
    pub fn start_in(dir: &Path, config: &str) -> anyhow::Result<Eddy> {
        Eddy::spawn_in(dir, config).and_then(|eddy| {
            eddy.wait_for_log("eddy is ready.", Duration::from_secs(30))?;
            Ok(eddy)
        })
    }

    /// Like [`Eddy::start_in`], with extra environment variables (test knobs).
    pub fn start_in_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> anyhow::Result<Eddy> {
        Eddy::spawn_in_with_env(dir, config, env).and_then(|eddy| {
            eddy.wait_for_log("eddy is ready.", Duration::from_secs(30))?;
            Ok(eddy)
        })
    }

    /// Like [`Eddy::start_in`], with the test switch `variable` (an `EDDY_TEST_*` environment
    /// variable) set to `1`. eddy reads these only when built with the `test-switches` feature
    /// and then logs `VARIABLE=1: …` as it starts; a binary built without the feature would
    /// run the test without the switch, so this fails with how to build it instead.
    pub fn start_in_with_test_switch(dir: &Path, config: &str, variable: &str) -> anyhow::Result<Eddy> {
        let eddy = Eddy::start_in_with_env(dir, config, &[(variable, "1")])?;
        if !eddy.log().contains(&format!("{variable}=1: ")) {
            bail!(
                "eddy ignored the test switch {variable}=1: the binary at {} was built without \
                 the `test-switches` feature; build it with \
                 `cargo build -p eddy --features test-switches` (scripts/test-all.sh does). Log:\n{}",
                eddy_binary().display(),
                eddy.log()
            );
        }
        Ok(eddy)
    }

    /// Starts without waiting for readiness (for tests of start-up failures).
    pub fn spawn_in(dir: &Path, config: &str) -> anyhow::Result<Eddy> {
        Eddy::spawn_in_with_env(dir, config, &[])
    }

    /// Like [`Eddy::spawn_in`], with extra environment variables.
    pub fn spawn_in_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> anyhow::Result<Eddy> {
        let config_path = dir.join("eddy.toml");
        std::fs::write(&config_path, config.replace("{dir}", &dir.display().to_string()))?;
        let runs = std::fs::read_dir(dir)?
            .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("eddy-stderr")))
            .count();
        let log_path = dir.join(format!("eddy-stderr-{runs}.log"));
        let stdout_path = dir.join(format!("eddy-stdout-{runs}.log"));
        let child = Command::new(eddy_binary())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .env("EDDY_LOG", std::env::var("EDDY_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&log_path)?)
            .spawn()
            .context("cannot start eddy")?;
        Ok(Eddy { child: Some(child), dir: dir.to_path_buf(), log_path, _tmp: None })
    }

    /// eddy's stderr so far (ANSI codes removed).
    pub fn log(&self) -> String {
        let raw = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        strip_ansi(&raw)
    }

    /// Waits until the log contains `needle`; fails early if eddy exits.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(child) = &self.child {
                // try_wait needs &mut; use the pid's /proc entry to see if it is gone.
                if !Path::new(&format!("/proc/{}", child.id())).exists() {
                    bail!("eddy exited before logging `{needle}`; log:\n{}", self.log());
                }
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for `{needle}` in eddy's log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the TCP source `name` listens on (from its start-up log line).
    pub fn tcp_address(&self, name: &str) -> anyhow::Result<SocketAddr> {
        for line in self.log().lines() {
            if line.contains("TCP source listening.") && line.contains(&format!("source={name} ")) {
                if let Some(rest) = line.split("address=").nth(1) {
                    let text = rest.split_whitespace().next().unwrap_or_default();
                    return text.parse().with_context(|| format!("bad address `{text}`"));
                }
            }
        }
        bail!("no `TCP source listening.` line for source {name} in log:\n{}", self.log())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// GET `path` from eddy's local HTTP endpoint (configured with `[api] listen =
    /// "127.0.0.1:0"`): the status code and the body.
    pub fn api_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let log = self.log();
        let line = log
            .lines()
            .find(|line| line.contains("HTTP endpoint up"))
            .context("no `HTTP endpoint up` line: is [api] listen configured?")?;
        let address: SocketAddr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("listen="))
            .context("no listen= in the endpoint's line")?
            .parse()?;
        let mut stream = TcpStream::connect(address)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: eddy\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").context("no end of the response head")?;
        let code = head.split_whitespace().nth(1).context("no status code")?.parse()?;
        Ok((code, body.to_owned()))
    }

    /// `/status` as JSON (see [`Eddy::api_get`]).
    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.api_get("/status")?;
        anyhow::ensure!(code == 200, "/status answered {code}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// CPU time eddy has used so far (user + system), seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds(self.pid()?)
    }

    /// [`Eddy::cpu_seconds`] as user time and system (kernel) time, seconds.
    pub fn cpu_user_system_seconds(&self) -> Option<(f64, f64)> {
        cpu_user_system_seconds(self.pid()?)
    }

    /// A `VmHWM`/`VmRSS`-style field of /proc/PID/status, in KiB.
    pub fn proc_status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|line| line.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Sends SIGTERM (graceful stop).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGKILL.
    pub fn kill(&self) {
        self.signal("KILL");
    }

    fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
        }
    }

    /// Waits for eddy to exit.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already waited")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("eddy did not exit within {timeout:?}; log:\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.terminate();
        self.wait(Duration::from_secs(60))
    }
}

impl Drop for Eddy {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Replies eddy's TCP source wrote on one connection.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replies {
    /// The last cumulative `ack N`.
    pub acked: u64,
    /// `err LINE REASON…` lines, as (line number, reason).
    pub errors: Vec<(u64, String)>,
    /// Lines refused by `nack N REASON` (not stored: store full, shutting down).
    pub nacked: u64,
    /// Any other reply lines.
    pub other: Vec<String>,
}

/// Sends `lines` on a new connection to `address` and reads replies until every non-blank
/// line is accounted for (acked or rejected), or `timeout` passes.
pub fn send_with_acks(address: SocketAddr, lines: &[&[u8]], timeout: Duration) -> anyhow::Result<Replies> {
    let stream = TcpStream::connect(address).with_context(|| format!("connect {address}"))?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let non_blank = lines.iter().filter(|line| !line.iter().all(u8::is_ascii_whitespace)).count();
    let expected = u64::try_from(non_blank).unwrap_or(u64::MAX);
    let mut writer = stream.try_clone()?;
    let payload: Vec<u8> = lines.iter().flat_map(|line| line.iter().copied().chain([b'\n'])).collect();
    let sender = thread::spawn(move || writer.write_all(&payload));
    let replies = read_replies(stream, expected, timeout)?;
    sender.join().expect("sender thread").context("write")?;
    Ok(replies)
}

fn read_replies(stream: TcpStream, expected: u64, timeout: Duration) -> anyhow::Result<Replies> {
    let deadline = Instant::now() + timeout;
    let mut reader = BufReader::new(stream);
    let mut replies = Replies::default();
    let mut line = String::new();
    while answered(&replies) < expected {
        if Instant::now() > deadline {
            bail!("timed out: {} of {expected} lines answered ({replies:?})", answered(&replies));
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => bail!("connection closed after {replies:?}, expected {expected} answers"),
            Ok(_) => parse_reply(line.trim_end(), &mut replies),
            Err(error)
                if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(replies)
}

fn answered(replies: &Replies) -> u64 {
    replies.acked + replies.nacked + u64::try_from(replies.errors.len()).unwrap_or(u64::MAX)
}

fn parse_reply(line: &str, replies: &mut Replies) {
    let mut parts = line.splitn(3, ' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("ack"), Some(n), None) if n.parse::<u64>().is_ok() => replies.acked = n.parse().unwrap_or(0),
        (Some("nack"), Some(n), Some(_reason)) if n.parse::<u64>().is_ok() => {
            replies.nacked += n.parse::<u64>().unwrap_or(0)
        }
        (Some("err"), Some(n), Some(reason)) if n.parse::<u64>().is_ok() => {
            replies.errors.push((n.parse().unwrap_or(0), reason.to_owned()))
        }
        _ => replies.other.push(line.to_owned()),
    }
}

/// Reads a JSON-lines file into values (a missing file reads as empty). A last line without
/// its newline is one the sink is still appending (the file is read while eddy runs): it is
/// left for the next read, never parsed half-written.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("bad JSON line `{line}`: {error}"))
        })
        .collect()
}

/// Sum of `count` over the micro-batch results of `field` in a results file: every reading
/// ingested is in exactly one micro-batch, so this counts readings (a reading stored twice
/// is counted twice). Records are taken once per `id`, as a consumer does: a sink may
/// deliver a record again after a crash.
pub fn batch_count(path: &Path, field: &str) -> u64 {
    sum_of_counts(path, "batch", field)
}

/// Sum of `count` over the window results of `field` in a results file, once per `id`.
pub fn window_count(path: &Path, field: &str) -> u64 {
    sum_of_counts(path, "window", field)
}

fn sum_of_counts(path: &Path, kind: &str, field: &str) -> u64 {
    let mut seen = std::collections::HashSet::new();
    read_jsonl(path)
        .iter()
        .filter(|record| record["type"] == kind && record["field"] == field)
        .filter(|record| seen.insert(record["id"].as_str().unwrap_or_default().to_owned()))
        .map(|record| record["count"].as_u64().unwrap_or(0))
        .sum()
}

/// `key=value` of the last `Source counters.` log line of source `name` (`received`,
/// `accepted`, `rejected`, or a reason such as `partial_line` from `by_reason`).
pub fn source_counter(log: &str, name: &str, key: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("Source counters.") && line.contains(&format!("source={name} ")))?;
    line.split([' ', ',']).find_map(|word| {
        let word = word.strip_prefix("by_reason=").unwrap_or(word);
        word.strip_prefix(key)?.strip_prefix('=')?.parse().ok()
    })
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    check()
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for next in chars.by_ref() {
                if next.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// CPU time process `pid` has used so far (user + system, fields 14 and 15 of
/// `/proc/PID/stat`), seconds; None once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_user_system_seconds(pid).map(|(user, system)| user + system)
}

/// [`cpu_seconds`] as user time and system (kernel) time, seconds.
pub fn cpu_user_system_seconds(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    #[allow(clippy::cast_precision_loss)]
    Some((utime as f64 / clock_ticks_per_second(), stime as f64 / clock_ticks_per_second()))
}

/// `getconf CLK_TCK`: the unit of `/proc/PID/stat` times (100 on every Linux eddy runs on).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|ticks: &f64| *ticks > 0.0)
            .unwrap_or(100.0)
    })
}
