//! Outputs for eddy: sinks that take opaque outbox records and write them to the console
//! (Spark-style tables) or to a JSON-lines file, or send them to a hub over MQTT, HTTP or Kafka.
//!
//! The crate knows nothing of windows or readings: a record is a sequence number, a kind, a
//! human heading and one JSON payload. The daemon owns the outbox, each sink's durable cursor and
//! the retry loop; a sink only says whether a slice of records got out ([`Delivery`]).
#![deny(missing_docs)]

mod config_keys;
mod console;
mod error;
#[cfg(feature = "fake")]
mod fake;
mod file;
mod http;
mod kafka;
mod mqtt;
mod record;
mod sink;
mod tls;

pub use crate::console::{ConsoleSink, RawConsoleSink};
pub use crate::error::SinkError;
#[cfg(feature = "fake")]
pub use crate::fake::{FakeHub, FakeSink};
pub use crate::file::{FileConfig, FileSink, RawFileSink, DEFAULT_MAX_FILES, DEFAULT_MAX_FILE_BYTES};
pub use crate::http::{classify_status, HttpConfig, HttpSink, RawHttpSink, StatusClass};
pub use crate::kafka::{
    KafkaCompression, KafkaConfig, KafkaSink, RawKafkaSink, SaslCredentials, SaslMechanism,
    DEFAULT_MAX_MESSAGE_BYTES,
};
pub use crate::mqtt::{check_topic_template, MqttConfig, MqttSink, MqttUrl, RawMqttSink};
pub use crate::record::{Delivery, OutRecord};
pub use crate::sink::Sink;
pub use crate::tls::TlsFiles;
pub use eddy_common::Secret;
/// The URI type the HTTP uplink parses its `url` with (for checking configurations).
pub use hyper::Uri as HttpUri;
