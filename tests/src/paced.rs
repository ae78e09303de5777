//! A stream of readings stamped with real time and sent at the pace of that time over TCP,
//! MQTT and serial, as real sensors send them, plus the windows it must produce.
//!
//! The reference is a plain count/sum/min/max over every epoch-aligned, half-open window
//! `[k·slide, k·slide + length)` that holds a reading, the semantics Apache Spark's
//! `window(ts, length, slide)` has (`clock::the_reference_agrees_with_spark_on_its_stream`
//! checks it against Spark's results for the conformance stream). Values are quarters, so every
//! sum is exact whatever the order of addition.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Context;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;

use crate::read_jsonl;
use crate::socat::SerialDevice;

/// How a sensor's readings reach eddy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Lines on one TCP connection, answered `ack N`.
    Tcp,
    /// One QoS 1 message per reading on `clock/{sensor}/reading` (the sensor is the topic's
    /// segment 1; the payload has no `sensor` key).
    Mqtt,
    /// Lines down a serial pseudo-terminal.
    Serial,
}

/// One planned reading.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Sensor id.
    pub sensor: String,
    /// Event time, ms since the epoch.
    pub ts_ms: i64,
    /// `temp_c`, a multiple of 0.25.
    pub temp_c: f64,
    /// When to send it, from the start of the feed.
    pub due: Duration,
    /// Where it goes.
    pub transport: Transport,
}

impl Planned {
    /// The JSON line of this reading (without the newline).
    pub fn line(&self) -> String {
        format!(r#"{{"sensor":"{}","ts":{},"temp_c":{}}}"#, self.sensor, self.ts_ms, self.temp_c)
    }

    fn mqtt_payload(&self) -> String {
        format!(r#"{{"ts":{},"temp_c":{}}}"#, self.ts_ms, self.temp_c)
    }
}

/// Readings of `sensors` every `period` for `length` of event time from `t0_ms`, sorted by
/// when they are due. Sensor `i` is offset by `i × 7` ms; each sensor's 4th reading of every 7
/// is sent one period after the 5th (out of order by one period, well inside a lateness of
/// one second).
pub fn plan(sensors: &[(&str, Transport)], t0_ms: i64, period: Duration, length: Duration) -> Vec<Planned> {
    let period_ms = i64::try_from(period.as_millis()).expect("period in ms");
    let n_per_sensor = i64::try_from(length.as_millis()).expect("length in ms") / period_ms;
    let mut planned = Vec::new();
    for (sensor_idx, (sensor, transport)) in sensors.iter().enumerate() {
        let sensor_idx = i64::try_from(sensor_idx).expect("few sensors");
        for k in 0..n_per_sensor {
            let offset_ms = k * period_ms + sensor_idx * 7;
            // The pair (k, k + 1) with k % 7 == 3 is sent the other way round.
            let send_k = match k % 7 {
                3 if k + 1 < n_per_sensor => k + 1,
                4 => k - 1,
                _ => k,
            };
            let due_ms = send_k * period_ms + sensor_idx * 7;
            let quarters = (k * 7 + sensor_idx * 11) % 60;
            planned.push(Planned {
                sensor: (*sensor).to_owned(),
                ts_ms: t0_ms + offset_ms,
                temp_c: 15.0 + f64::from(i32::try_from(quarters).expect("small")) * 0.25,
                due: Duration::from_millis(u64::try_from(due_ms).expect("not negative")),
                transport: *transport,
            });
        }
    }
    planned.sort_by_key(|reading| (reading.due, reading.sensor.clone()));
    planned
}

/// The aggregates of one window, as the reference computes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    /// End of the window, ms.
    pub end_ms: i64,
    /// Readings in it.
    pub count: u64,
    /// Sum of `temp_c`.
    pub sum: f64,
    /// Smallest `temp_c`.
    pub min: f64,
    /// Largest `temp_c`.
    pub max: f64,
}

/// Windows keyed by (sensor, start ms).
pub type Windows = BTreeMap<(String, i64), Expected>;

/// The reference windows of `length_ms` sliding by `slide_ms` over `(sensor, ts, value)`.
pub fn reference<'a>(
    readings: impl IntoIterator<Item = (&'a str, i64, f64)>,
    length_ms: i64,
    slide_ms: i64,
) -> Windows {
    let mut windows = Windows::new();
    for (sensor, ts_ms, value) in readings {
        let last_start = ts_ms.div_euclid(slide_ms) * slide_ms;
        let mut start = last_start;
        while start > ts_ms - length_ms {
            let entry = windows.entry((sensor.to_owned(), start)).or_insert(Expected {
                end_ms: start + length_ms,
                count: 0,
                sum: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
            });
            entry.count += 1;
            entry.sum += value;
            entry.min = entry.min.min(value);
            entry.max = entry.max.max(value);
            start -= slide_ms;
        }
    }
    windows
}

/// The window results of window `name` for field `temp_c` in a JSON-lines sink file, each id
/// taken once; also what is wrong with their identity: a (sensor, start) under two ids, or one
/// id delivered again with other values.
pub fn window_results(path: &Path, name: &str) -> (Windows, Vec<String>) {
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    let mut problems = Vec::new();
    for record in read_jsonl(path) {
        if record["type"] != "window" || record["window"] != name || record["field"] != "temp_c" {
            continue;
        }
        let id = record["id"].as_str().unwrap_or_default().to_owned();
        match by_id.get(&id) {
            Some(before) if *before != record => {
                problems.push(format!("{name}: id {id} delivered with other values: {before} then {record}"));
            }
            Some(_) => {}
            None => {
                by_id.insert(id, record);
            }
        }
    }
    let mut windows = Windows::new();
    for record in by_id.values() {
        let key =
            (record["sensor"].as_str().unwrap_or_default().to_owned(), record["start"].as_i64().unwrap_or(0));
        let got = Expected {
            end_ms: record["end"].as_i64().unwrap_or(0),
            count: record["count"].as_u64().unwrap_or(0),
            sum: record["sum"].as_f64().unwrap_or(f64::NAN),
            min: record["min"].as_f64().unwrap_or(f64::NAN),
            max: record["max"].as_f64().unwrap_or(f64::NAN),
        };
        if windows.insert(key.clone(), got).is_some() {
            problems.push(format!("{name}: window {key:?} emitted under two ids"));
        }
    }
    (windows, problems)
}

/// How `got` differs from `expected` (window `name`), at most a few examples of each kind.
pub fn diff_windows(name: &str, expected: &Windows, got: &Windows) -> Vec<String> {
    let mut problems = Vec::new();
    let missing: Vec<_> = expected.keys().filter(|key| !got.contains_key(*key)).collect();
    let extra: Vec<_> = got.iter().filter(|(key, _)| !expected.contains_key(*key)).collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(key, want)| Some((key, want, got.get(key)?)))
        .filter(|(_, want, got)| want != got)
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{name}: {} of {} windows missing, e.g. {:?}",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(4)]
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{name}: {} unexpected windows, e.g. {:?}",
            extra.len(),
            &extra[..extra.len().min(4)]
        ));
    }
    if !wrong.is_empty() {
        problems.push(format!(
            "{name}: {} windows with other values (key, expected, eddy), e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(4)]
        ));
    }
    problems
}

/// What a TCP connection's replies said so far.
#[derive(Debug, Default, Clone)]
pub struct TcpTally {
    /// Lines written on this connection.
    pub sent: u64,
    /// The last cumulative `ack N`.
    pub acked: u64,
    /// `err LINE REASON` replies.
    pub errors: Vec<String>,
    /// Lines refused by `nack N`.
    pub nacked: u64,
    /// Other reply lines.
    pub other: Vec<String>,
}

impl TcpTally {
    fn answered(&self) -> u64 {
        self.acked + self.nacked + u64::try_from(self.errors.len()).unwrap_or(u64::MAX)
    }
}

/// One TCP connection to eddy writing lines as they come, its replies read by a thread.
pub struct TcpLine {
    stream: TcpStream,
    tally: Arc<Mutex<TcpTally>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl TcpLine {
    /// Connects to `address`.
    pub fn connect(address: SocketAddr) -> anyhow::Result<TcpLine> {
        let stream = TcpStream::connect(address).with_context(|| format!("connect {address}"))?;
        stream.set_read_timeout(Some(Duration::from_millis(100)))?;
        let tally = Arc::new(Mutex::new(TcpTally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reader_tally, reader_stop) = (tally.clone(), stop.clone());
        let mut lines = BufReader::new(stream.try_clone()?);
        let reader = thread::spawn(move || {
            let mut line = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        let mut tally = reader_tally.lock().expect("tally lock");
                        let mut words = line.split_whitespace();
                        match (words.next(), words.next().and_then(|n| n.parse::<u64>().ok())) {
                            (Some("ack"), Some(n)) => tally.acked = n,
                            (Some("nack"), Some(n)) => tally.nacked += n,
                            (Some("err"), Some(_)) => tally.errors.push(line.trim_end().to_owned()),
                            _ => tally.other.push(line.trim_end().to_owned()),
                        }
                    }
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if reader_stop.load(Ordering::SeqCst) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(TcpLine { stream, tally, stop, reader: Some(reader) })
    }

    /// Writes one line.
    pub fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stream.write_all(format!("{line}\n").as_bytes()).context("writing to eddy")?;
        self.tally.lock().expect("tally lock").sent += 1;
        Ok(())
    }

    /// The replies so far.
    pub fn tally(&self) -> TcpTally {
        self.tally.lock().expect("tally lock").clone()
    }

    /// Waits until every line written is answered; false at `timeout`.
    pub fn wait_answered(&self, timeout: Duration) -> bool {
        crate::wait_until(timeout, || {
            let tally = self.tally();
            tally.answered() >= tally.sent
        })
    }
}

impl Drop for TcpLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A QoS 1 publisher to a broker, counting the broker's PUBACKs.
pub struct MqttLine {
    client: Client,
    acked: Arc<AtomicU64>,
    /// Messages published.
    pub published: u64,
    stop: Arc<AtomicBool>,
    event_loop: Option<JoinHandle<()>>,
}

impl MqttLine {
    /// Connects as `client_id` to the broker at `address`.
    pub fn connect(address: SocketAddr, client_id: &str) -> MqttLine {
        let mut options = MqttOptions::new(client_id, address.ip().to_string(), address.port());
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(options, 256);
        let acked = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (loop_acked, loop_stop) = (acked.clone(), stop.clone());
        let event_loop = thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        loop_acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) if loop_stop.load(Ordering::SeqCst) => return,
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        MqttLine { client, acked, published: 0, stop, event_loop: Some(event_loop) }
    }

    /// Publishes one message (QoS 1).
    pub fn publish(&mut self, topic: &str, payload: String) -> anyhow::Result<()> {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload).context("publish")?;
        self.published += 1;
        Ok(())
    }

    /// Messages the broker acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }
}

impl Drop for MqttLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.client.disconnect();
        if let Some(event_loop) = self.event_loop.take() {
            let _ = event_loop.join();
        }
    }
}

/// Sends a [`plan`] at its pace over the transports it names.
pub struct Feed {
    planned: Vec<Planned>,
    next_idx: usize,
    started: Instant,
    /// The TCP connection, while there is one.
    pub tcp: Option<TcpLine>,
    /// The MQTT publisher, if the plan uses MQTT.
    pub mqtt: Option<MqttLine>,
    /// The serial device, if the plan uses serial.
    pub serial: Option<SerialDevice>,
    /// Lines sent over TCP on every connection so far.
    pub tcp_sent_total: u64,
}

impl Feed {
    /// A feed of `planned` whose time zero is now.
    pub fn new(planned: Vec<Planned>) -> Feed {
        Feed {
            planned,
            next_idx: 0,
            started: Instant::now(),
            tcp: None,
            mqtt: None,
            serial: None,
            tcp_sent_total: 0,
        }
    }

    /// Sends every reading due before `until` (from the feed's start), each at its time;
    /// readings already overdue go at once.
    pub fn run_until(&mut self, until: Duration) -> anyhow::Result<()> {
        while let Some(reading) = self.planned.get(self.next_idx) {
            if reading.due >= until {
                break;
            }
            if let Some(wait) = reading.due.checked_sub(self.started.elapsed()) {
                thread::sleep(wait);
            }
            let reading = reading.clone();
            match reading.transport {
                Transport::Tcp => {
                    self.tcp.as_mut().context("no TCP connection")?.send(&reading.line())?;
                    self.tcp_sent_total += 1;
                }
                Transport::Mqtt => {
                    let topic = format!("clock/{}/reading", reading.sensor);
                    self.mqtt
                        .as_mut()
                        .context("no MQTT publisher")?
                        .publish(&topic, reading.mqtt_payload())?;
                }
                Transport::Serial => {
                    self.serial
                        .as_mut()
                        .context("no serial device")?
                        .write(format!("{}\n", reading.line()).as_bytes())?;
                }
            }
            self.next_idx += 1;
        }
        if let Some(wait) = until.checked_sub(self.started.elapsed()) {
            thread::sleep(wait);
        }
        Ok(())
    }

    /// Time since the feed started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Every reading of the plan has been sent.
    pub fn done(&self) -> bool {
        self.next_idx == self.planned.len()
    }

    /// How many planned readings go over `transport`.
    pub fn planned_over(&self, transport: Transport) -> u64 {
        let count = self.planned.iter().filter(|reading| reading.transport == transport).count();
        u64::try_from(count).expect("few readings")
    }

    /// The plan.
    pub fn planned(&self) -> &[Planned] {
        &self.planned
    }
}
