//! A real mosquitto broker for tests: started on a free loopback port in its own directory,
//! stopped (and restartable on the same port, with its persistence) by the test.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Where mosquitto is: on PATH, or Debian's /usr/sbin (not on a non-root PATH).
pub fn mosquitto_binary() -> anyhow::Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")]);
    for dir in candidates {
        let binary = dir.join("mosquitto");
        if binary.is_file() {
            return Ok(binary);
        }
    }
    bail!(
        "mosquitto is not installed: the MQTT tests start a real broker. Run ./scripts/test-all.sh \
         (it installs it with apt-get) or `apt-get install mosquitto`"
    )
}

/// A free loopback TCP port (bound, then released; a race with other processes is unlikely).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// A running mosquitto. Dropping it kills the broker.
pub struct Mosquitto {
    child: Option<Child>,
    /// The port it listens on (plain MQTT, or TLS when configured so).
    pub port: u16,
    /// Its directory: config, persistence, log.
    pub dir: PathBuf,
    config_path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Mosquitto {
    /// A broker allowing anonymous clients, with persistence (so a restart keeps persistent
    /// sessions and queued QoS 1 messages), on a free loopback port.
    pub fn start() -> anyhow::Result<Mosquitto> {
        Mosquitto::start_with("")
    }

    /// Like [`Mosquitto::start`] with extra `mosquitto.conf` lines for the listener (`{dir}` is
    /// replaced by the broker's directory), e.g. `password_file`, `cafile`/`certfile`/`keyfile`.
    /// Without `allow_anonymous` in `extra`, anonymous clients are allowed; without
    /// `max_queued_messages`, queues are unlimited.
    pub fn start_with(extra: &str) -> anyhow::Result<Mosquitto> {
        let tmp = tempfile::tempdir().context("temp dir")?;
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        let extra = extra.replace("{dir}", &dir.display().to_string());
        let anonymous = if extra.contains("allow_anonymous") { "" } else { "allow_anonymous true\n" };
        // Unlimited queues unless the test sets its own limit (a later line would override it).
        let queue = if extra.contains("max_queued_messages") { "" } else { "max_queued_messages 0\n" };
        // `user root`: mosquitto started as root (CI) would otherwise drop to its own user and
        // could write neither its log nor its persistence file in this root-owned directory.
        // It has no effect when the tests run as another user.
        let config = format!(
            "user root\nlistener {port} 127.0.0.1\n{anonymous}{extra}\npersistence true\npersistence_location {}/\n\
             log_dest file {}/mosquitto.log\nlog_type all\n{queue}",
            dir.display(),
            dir.display()
        );
        let config_path = dir.join("mosquitto.conf");
        std::fs::write(&config_path, config)?;
        let mut broker = Mosquitto { child: None, port, dir, config_path, _tmp: Some(tmp) };
        broker.restart()?;
        Ok(broker)
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Stops the broker (SIGTERM: it saves its persistence file), waiting until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the broker on the same port and directory; waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let binary = mosquitto_binary()?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("mosquitto exited with {status} at start; its log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on port {} within 10 s; its log:\n{}", self.port, self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `mqtts://localhost:PORT` (the name the test certificate is for).
    pub fn tls_url(&self) -> String {
        format!("mqtts://localhost:{}", self.port)
    }

    /// How many PUBACKs the broker received from `client_id` so far (from its log).
    pub fn pubacks_from(&self, client_id: &str) -> usize {
        let needle = format!("Received PUBACK from {client_id} ");
        self.log().lines().filter(|line| line.contains(&needle)).count()
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Writes a mosquitto password file with one user (via `mosquitto_passwd` when present).
    pub fn write_password_file(path: &Path, user: &str, password: &str) -> anyhow::Result<()> {
        let status = Command::new("mosquitto_passwd")
            .arg("-b")
            .arg("-c")
            .arg(path)
            .arg(user)
            .arg(password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running mosquitto_passwd (package mosquitto)")?;
        if !status.success() {
            bail!("mosquitto_passwd failed with {status}");
        }
        Ok(())
    }
}

/// A throw-away certificate authority and a server certificate for `localhost` and
/// 127.0.0.1 signed by it, made with `openssl` in a temporary directory (P-256 keys: fast).
pub struct TestCa {
    /// The CA certificate (PEM): what clients trust.
    pub ca_file: PathBuf,
    /// The server's certificate (PEM).
    pub cert_file: PathBuf,
    /// The server's private key (PEM).
    pub key_file: PathBuf,
    _tmp: tempfile::TempDir,
}

impl TestCa {
    /// Generates the CA and the server certificate.
    pub fn generate() -> anyhow::Result<TestCa> {
        let tmp = tempfile::tempdir().context("temp dir")?;
        let dir = tmp.path();
        let ca_key = dir.join("ca.key");
        let ca_file = dir.join("ca.pem");
        let key_file = dir.join("server.key");
        let csr = dir.join("server.csr");
        let cert_file = dir.join("server.pem");
        let extensions = dir.join("server.ext");
        std::fs::write(
            &extensions,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[&["req", "-x509"][..], &ec, &["-days", "2", "-subj", "/CN=eddy test CA"]].concat(),
            &[("-keyout", &ca_key), ("-out", &ca_file)],
            &[
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        openssl(
            &[&["req"][..], &ec, &["-subj", "/CN=localhost"]].concat(),
            &[("-keyout", &key_file), ("-out", &csr)],
            &[],
        )?;
        openssl(
            &["x509", "-req", "-days", "2", "-CAcreateserial"],
            &[
                ("-in", &csr),
                ("-CA", &ca_file),
                ("-CAkey", &ca_key),
                ("-out", &cert_file),
                ("-extfile", &extensions),
            ],
            &[],
        )?;
        Ok(TestCa { ca_file, cert_file, key_file, _tmp: tmp })
    }

    /// `mosquitto.conf` lines that make the listener speak TLS with this certificate.
    pub fn mosquitto_lines(&self) -> String {
        format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            self.ca_file.display(),
            self.cert_file.display(),
            self.key_file.display()
        )
    }
}

/// Runs `openssl` with plain arguments, then path arguments, then more plain ones.
fn openssl(args: &[&str], paths: &[(&str, &Path)], more: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new("openssl");
    command.args(args);
    for (flag, path) in paths {
        command.arg(flag).arg(path);
    }
    let output = command.args(more).stdin(Stdio::null()).output().context(
        "cannot run openssl (the TLS tests make a test CA with it): run ./scripts/test-all.sh or \
         `apt-get install openssl`",
    )?;
    if !output.status.success() {
        bail!("openssl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// The harness's broker really speaks MQTT: a CONNECT gets a CONNACK with return code 0,
    /// and it comes back on the same port after a restart.
    #[test]
    fn broker_accepts_an_mqtt_connect_and_restarts() {
        let mut broker = Mosquitto::start().expect("mosquitto starts");
        let connack = |broker: &Mosquitto| -> Vec<u8> {
            let mut stream = TcpStream::connect(broker.addr()).expect("connect");
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // CONNECT, MQTT 3.1.1, clean session, keep-alive 10 s, client id "t".
            let connect = [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 1, b't'];
            stream.write_all(&connect).unwrap();
            let mut reply = [0u8; 4];
            stream.read_exact(&mut reply).expect("CONNACK");
            reply.to_vec()
        };
        assert_eq!(connack(&broker), vec![0x20, 2, 0, 0]);
        broker.restart().expect("restart");
        assert_eq!(connack(&broker), vec![0x20, 2, 0, 0]);
    }
}
