//! A real Kafka-protocol broker for tests: `tansu` (a Kafka-API-compatible broker in Rust,
//! `cargo install tansu --locked --features dynostore`) on a free loopback port with
//! in-memory storage, and an independent client to create topics and read them back:
//! librdkafka through PyPI's `confluent-kafka`, run by `tests/kafka_client.py` in a venv.
//!
//! The storage is `memory://`: a restarted broker starts empty (no topics, no messages), so a
//! test reads what it needs before stopping it and creates its topics again after.
//!
//! TLS: tansu 0.6.0 cannot be started with TLS (its `--cert` and `--key` are declared
//! mutually exclusive), so a TLS broker is tansu behind `socat openssl-listen` (OpenSSL, not
//! rustls, on the server side), tansu advertising the TLS port in its metadata.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::mosquitto::free_port;

/// Where tansu is: on PATH, or in cargo's bin directory.
pub fn tansu_binary() -> anyhow::Result<PathBuf> {
    let home_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|cargo| cargo.join("bin"));
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home_bin);
    for dir in candidates {
        let binary = dir.join("tansu");
        if binary.is_file() {
            return Ok(binary);
        }
    }
    bail!(
        "tansu is not installed: the Kafka tests start a real Kafka-protocol broker. Run \
         ./scripts/test-all.sh (it installs it) or `cargo install tansu --locked --features dynostore` \
         (about 10 minutes once)"
    )
}

/// The venv's python with confluent-kafka (`~/.cache/eddy-test-venv`), created on first use.
pub fn kafka_python() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = PathBuf::from(home).join(".cache/eddy-test-venv");
    let python = venv.join("bin/python");
    let has_client = |python: &Path| {
        python.is_file()
            && Command::new(python)
                .args(["-c", "import confluent_kafka"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
    };
    if has_client(&python) {
        return Ok(python);
    }
    let created = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
    let installed = created.is_ok_and(|status| status.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "confluent-kafka"])
            .status()
            .is_ok_and(|status| status.success());
    if !installed || !has_client(&python) {
        bail!(
            "cannot set up the independent Kafka client: `python3 -m venv {0} && {0}/bin/pip install \
             confluent-kafka` failed (./scripts/test-all.sh does it)",
            venv.display()
        );
    }
    Ok(python)
}

/// A running tansu broker. Dropping it kills the broker.
pub struct Tansu {
    child: Option<Child>,
    /// The TLS front (socat), with TLS.
    front: Option<Child>,
    /// The port clients connect to (socat's with TLS).
    pub port: u16,
    /// The port tansu itself listens on (`port` without TLS).
    inner_port: u16,
    /// TLS certificate and key, when it listens with TLS.
    tls: Option<(PathBuf, PathBuf)>,
    /// The CA file clients trust, with TLS.
    ca_file: Option<PathBuf>,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Tansu {
    /// A plain-text broker on a free loopback port.
    pub fn start() -> anyhow::Result<Tansu> {
        Tansu::start_inner(None)
    }

    /// A broker listening with TLS (server certificate and key, PEM); clients trust `ca_file`.
    pub fn start_tls(cert_file: &Path, key_file: &Path, ca_file: &Path) -> anyhow::Result<Tansu> {
        let mut broker = Tansu::start_inner(Some((cert_file.to_owned(), key_file.to_owned())))?;
        broker.ca_file = Some(ca_file.to_owned());
        Ok(broker)
    }

    fn start_inner(tls: Option<(PathBuf, PathBuf)>) -> anyhow::Result<Tansu> {
        let tmp = tempfile::tempdir().context("temp dir")?;
        let log = tmp.path().join("tansu.log");
        let port = free_port();
        let inner_port = if tls.is_some() { free_port() } else { port };
        let mut broker =
            Tansu { child: None, front: None, port, inner_port, tls, ca_file: None, log, _tmp: tmp };
        broker.restart()?;
        Ok(broker)
    }

    /// `127.0.0.1:PORT` (with TLS `localhost:PORT`, the name of the test certificate).
    pub fn bootstrap(&self) -> String {
        if self.tls.is_some() {
            format!("localhost:{}", self.port)
        } else {
            format!("127.0.0.1:{}", self.port)
        }
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the broker (its memory storage goes with it), waiting until it is gone.
    pub fn stop(&mut self) {
        for mut child in [self.front.take(), self.child.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the broker on the same port, empty; waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let binary = tansu_binary()?;
        let host = if self.tls.is_some() { "localhost" } else { "127.0.0.1" };
        let mut command = Command::new(&binary);
        command
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.inner_port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{host}:{}", self.port))
            .arg("--storage-engine")
            .arg("memory://tansu/");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        if let Some((cert, key)) = &self.tls {
            let front = Command::new("socat")
                .arg(format!(
                    "openssl-listen:{},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
                    self.port,
                    cert.display(),
                    key.display()
                ))
                .arg(format!("tcp:127.0.0.1:{}", self.inner_port))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting socat (package socat) as the TLS front")?;
            self.front = Some(front);
        }
        let inner = SocketAddr::from(([127, 0, 0, 1], self.inner_port));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&inner, Duration::from_millis(200)).is_ok()
                && TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("tansu exited with {status} at start; its log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("tansu did not listen on port {} within 20 s; its log:\n{}", self.port, self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `tests/kafka_client.py` with `args` against this broker; its stdout.
    fn client(&self, args: &[&str]) -> anyhow::Result<String> {
        let python = kafka_python()?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kafka_client.py");
        let mut command = Command::new(python);
        command.arg(script).arg("--brokers").arg(self.bootstrap());
        if let Some(ca) = &self.ca_file {
            command.arg("--ca").arg(ca);
        }
        let output = command.args(args).stdin(Stdio::null()).output().context("running kafka_client.py")?;
        if !output.status.success() {
            bail!(
                "kafka_client.py {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Creates `topic` with `partitions` partitions and waits until the metadata lists it.
    pub fn create_topic(&self, topic: &str, partitions: u32) -> anyhow::Result<()> {
        self.client(&["create-topic", topic, &partitions.to_string()]).map(drop)
    }

    /// Every message of `topic`, all partitions from the start, read by librdkafka.
    pub fn consume(&self, topic: &str) -> anyhow::Result<Vec<KafkaMessage>> {
        let out = self.client(&["consume", topic])?;
        out.lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line)?;
                Ok(KafkaMessage {
                    partition: value["partition"].as_i64().context("partition")?,
                    offset: value["offset"].as_i64().context("offset")?,
                    key: value["key"].as_str().map(str::to_owned),
                    value: value["value"].clone(),
                })
            })
            .collect()
    }

    /// The partition librdkafka's `murmur2_random` partitioner (Kafka's Java default) picks for
    /// `key` in `topic` (it produces a probe message there).
    pub fn murmur2_partition(&self, topic: &str, key: &str) -> anyhow::Result<i64> {
        let out = self.client(&["partition", topic, key])?;
        out.trim().parse().with_context(|| format!("a partition number, not {out:?}"))
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message read back.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaMessage {
    /// Its partition.
    pub partition: i64,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, UTF-8.
    pub key: Option<String>,
    /// Its value, parsed JSON.
    pub value: serde_json::Value,
}
