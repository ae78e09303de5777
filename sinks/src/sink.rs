//! The closed set of sinks the daemon drives, with one dispatching interface.

use crate::console::ConsoleSink;
#[cfg(feature = "fake")]
use crate::fake::FakeSink;
use crate::file::FileSink;
use crate::http::HttpSink;
use crate::kafka::KafkaSink;
use crate::mqtt::MqttSink;
use crate::record::{Delivery, OutRecord};

/// A configured output. The daemon reads the outbox through this sink's own durable cursor and
/// calls [`Sink::deliver`] with the next records; it advances the cursor only on
/// [`Delivery::Delivered`].
#[derive(Debug)]
pub enum Sink {
    /// Human-readable tables on stdout (or an injected writer).
    Console(ConsoleSink),
    /// JSON lines appended to a file.
    File(FileSink),
    /// QoS 1 publishes to an MQTT hub, delivered on PUBACK.
    Mqtt(Box<MqttSink>),
    /// JSON-array POSTs to an HTTP endpoint, delivered on 2xx.
    Http(Box<HttpSink>),
    /// Produces to Kafka brokers, delivered when every produce is acknowledged (`acks = all`).
    Kafka(Box<KafkaSink>),
    /// A hub for tests, scripted by them (feature `fake`).
    #[cfg(feature = "fake")]
    Fake(FakeSink),
}

impl Sink {
    /// The sink's configured name (it also names its cursor).
    pub fn name(&self) -> &str {
        match self {
            Sink::Console(console) => console.name(),
            Sink::File(file) => file.name(),
            Sink::Mqtt(mqtt) => mqtt.name(),
            Sink::Http(http) => http.name(),
            Sink::Kafka(kafka) => kafka.name(),
            #[cfg(feature = "fake")]
            Sink::Fake(fake) => fake.name(),
        }
    }

    /// Bytes the sink keeps on disk: a file sink's live and rotated files (`None`: a sink that
    /// keeps nothing on disk).
    pub fn disk_bytes(&self) -> Option<u64> {
        match self {
            Sink::File(file) => Some(file.disk_bytes()),
            Sink::Console(_) | Sink::Mqtt(_) | Sink::Http(_) | Sink::Kafka(_) => None,
            #[cfg(feature = "fake")]
            Sink::Fake(_) => None,
        }
    }

    /// Delivers `records` in order. `Delivered` means all of them are written (for the file:
    /// written and fsynced); `Offline` means retry the same records later.
    ///
    /// The blocking I/O runs on tokio's blocking pool. If this future is dropped before it
    /// finishes, the write already started still completes in the background, and the next
    /// call waits for it; the records count as not delivered, so re-delivering them may
    /// duplicate some (file records carry deterministic ids for that reason).
    pub async fn deliver(&mut self, records: &[OutRecord]) -> Delivery {
        match self {
            Sink::Console(console) => console.deliver(records).await,
            Sink::File(file) => file.deliver(records).await,
            Sink::Mqtt(mqtt) => mqtt.deliver(records).await,
            Sink::Http(http) => http.deliver(records).await,
            Sink::Kafka(kafka) => kafka.deliver(records).await,
            #[cfg(feature = "fake")]
            Sink::Fake(fake) => fake.deliver(records),
        }
    }

    /// Flushes and releases the output, for shutdown. Never fails: a problem is logged. A later
    /// `deliver` reopens what it needs.
    pub async fn close(&mut self) {
        match self {
            Sink::Console(console) => console.close().await,
            Sink::File(file) => file.close().await,
            Sink::Mqtt(mqtt) => mqtt.close().await,
            Sink::Http(http) => http.close().await,
            Sink::Kafka(kafka) => kafka.close().await,
            #[cfg(feature = "fake")]
            Sink::Fake(_) => {}
        }
    }
}
