//! A small HTTP/1.1 server acting as the hub in tests: it answers POSTs with a chosen status
//! (413 for bodies above a chosen size),
//! keeps the JSON records of every batch it accepted (2xx), and can be stopped and restarted on
//! the same port.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(Default)]
struct Received {
    /// Records of accepted batches, in arrival order.
    records: Vec<serde_json::Value>,
    /// When each of `records` arrived (its batch was read whole).
    arrivals: Vec<Instant>,
    /// Headers of the last request (lower-case names).
    last_headers: Vec<(String, String)>,
}

struct Shared {
    status: AtomicU16,
    /// Bodies larger than this are answered 413 (0: no limit).
    max_body: AtomicU64,
    /// Requests answered 413 so far.
    too_large: AtomicU64,
    running: AtomicBool,
    requests: AtomicU64,
    received: Mutex<Received>,
    open: Mutex<Vec<TcpStream>>,
}

/// The hub. Dropping it stops the server.
pub struct HttpHub {
    port: u16,
    shared: Arc<Shared>,
    generation: Arc<AtomicU64>,
}

impl HttpHub {
    /// Starts on a free loopback port, answering 200.
    pub fn start() -> anyhow::Result<HttpHub> {
        let listener = TcpListener::bind("127.0.0.1:0").context("http hub bind")?;
        let port = listener.local_addr()?.port();
        let hub = HttpHub {
            port,
            shared: Arc::new(Shared {
                status: AtomicU16::new(200),
                max_body: AtomicU64::new(0),
                too_large: AtomicU64::new(0),
                running: AtomicBool::new(false),
                requests: AtomicU64::new(0),
                received: Mutex::new(Received::default()),
                open: Mutex::new(Vec::new()),
            }),
            generation: Arc::new(AtomicU64::new(0)),
        };
        hub.serve(listener)?;
        Ok(hub)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT/ingest`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    /// The status every following request gets.
    pub fn set_status(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Answers 413 (Payload Too Large) to every request whose body has more than `bytes`
    /// bytes, whatever the status set (0: no limit).
    pub fn set_max_body(&self, bytes: u64) {
        self.shared.max_body.store(bytes, Ordering::SeqCst);
    }

    /// Requests answered 413 so far.
    pub fn too_large(&self) -> u64 {
        self.shared.too_large.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every connection (clients get refused connections).
    pub fn stop(&self) {
        self.shared.running.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        for stream in self.shared.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Listens again on the same port.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        // The old accept thread lets go of the port within its 10 ms poll.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr()) {
                Ok(listener) => break listener,
                Err(error) if std::time::Instant::now() < deadline => {
                    let _ = error;
                    thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(error).with_context(|| format!("rebind port {}", self.port)),
            }
        };
        self.serve(listener)
    }

    /// Records of every accepted (2xx) batch, in arrival order (duplicates included).
    pub fn records(&self) -> Vec<serde_json::Value> {
        self.shared.received.lock().unwrap().records.clone()
    }

    /// Like [`HttpHub::records`] from the `from`-th record on, each with the moment its batch
    /// arrived.
    pub fn records_with_arrival(&self, from: usize) -> Vec<(Instant, serde_json::Value)> {
        let received = self.shared.received.lock().unwrap();
        received.arrivals.iter().copied().zip(received.records.iter().cloned()).skip(from).collect()
    }

    /// How many records accepted batches held so far (duplicates included); cheap, for polling.
    pub fn record_count(&self) -> usize {
        self.shared.received.lock().unwrap().records.len()
    }

    /// Requests answered so far (any status).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The value of header `name` (lower case) in the last request.
    pub fn last_header(&self, name: &str) -> Option<String> {
        let received = self.shared.received.lock().unwrap();
        received.last_headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone())
    }

    fn serve(&self, listener: TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        self.shared.running.store(true, Ordering::SeqCst);
        let shared = self.shared.clone();
        let generation = self.generation.clone();
        let mine = generation.load(Ordering::SeqCst);
        thread::spawn(move || {
            while generation.load(Ordering::SeqCst) == mine {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        if let Ok(copy) = stream.try_clone() {
                            shared.open.lock().unwrap().push(copy);
                        }
                        let conn_shared = shared.clone();
                        thread::spawn(move || serve_connection(stream, conn_shared));
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(())
    }
}

impl Drop for HttpHub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim().to_ascii_lowercase();
                let value = value.trim().to_owned();
                if name == "content-length" {
                    content_length = value.parse().unwrap_or(0);
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if !shared.running.load(Ordering::SeqCst) {
            return;
        }
        let max_body = shared.max_body.load(Ordering::SeqCst);
        let status = if max_body > 0 && u64::try_from(body.len()).unwrap_or(u64::MAX) > max_body {
            shared.too_large.fetch_add(1, Ordering::SeqCst);
            413
        } else {
            shared.status.load(Ordering::SeqCst)
        };
        {
            let arrived = Instant::now();
            let mut received = shared.received.lock().unwrap();
            received.last_headers = headers;
            if (200..300).contains(&status) {
                match serde_json::from_slice::<serde_json::Value>(&body) {
                    Ok(serde_json::Value::Array(records)) => received.records.extend(records),
                    Ok(other) => received.records.push(other),
                    Err(error) => panic!("the hub got a body that is not JSON: {error}"),
                }
                let n_records = received.records.len();
                received.arrivals.resize(n_records, arrived);
            }
        }
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let reply =
            format!("HTTP/1.1 {status} Test\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
