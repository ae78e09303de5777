//! The Kafka uplink (Apache Kafka, Azure Event Hubs' Kafka endpoint, AWS MSK, Confluent Cloud,
//! Redpanda): produces records with `acks = all` and counts them delivered only when every
//! produce request of the delivery has been acknowledged.
//!
//! Contract:
//! - One delivery is one set of messages: a record each, or JSON arrays of up to
//!   `records_per_message` consecutive records with the same topic and key. The key is the
//!   `key` template (default `{device_id}/{sensor}`, the sensor read from the record's JSON),
//!   and the partition is chosen from it as Kafka's default partitioner does (murmur2 of the
//!   key, made positive, modulo the topic's partition count), so one sensor's records stay
//!   in order in one partition and other producers agree on where a key goes.
//! - Messages are produced partition by partition, each partition's in order, in record
//!   batches of at most `max_message_bytes`; `Delivered` only when every batch is
//!   acknowledged by all in-sync replicas (`acks = -1`) within `ack_timeout`.
//! - Any failure (no broker reachable, authentication refused, a produce refused or not
//!   acknowledged in time) drops the connection and answers `Offline`; the daemon sends the
//!   same records again, so that delivery's messages may reach the topic twice (records carry
//!   deterministic ids). A topic the brokers do not have answers `Offline` naming it: eddy
//!   does not create topics (the operator creates them, with their partition count and
//!   retention), and delivers once it exists.
//! - A record that alone would exceed `max_message_bytes` is never sent: the delivery answers
//!   `Oversize` naming it before anything is produced. A batch the broker refuses as too
//!   large (`MESSAGE_TOO_LARGE`, `RECORD_LIST_TOO_LARGE`: its `message.max.bytes` is smaller)
//!   answers `TooLarge`, and the daemon splits the delivery down to the record at fault.

mod config;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rskafka::chrono::{DateTime, Utc};
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

use crate::error::SinkError;
pub use crate::kafka::config::{
    KafkaCompression, KafkaConfig, RawKafkaSink, SaslCredentials, SaslMechanism, DEFAULT_MAX_MESSAGE_BYTES,
};
use crate::record::{Delivery, OutRecord};
use crate::tls::client_config;

/// Bytes a record adds to a record batch besides its key and value (length, attributes,
/// timestamp and offset deltas, header count: varints), counted generously.
const RECORD_OVERHEAD: usize = 32;
/// The fixed header of a record batch.
const BATCH_OVERHEAD: usize = 61;

/// One message to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    topic: String,
    key: String,
    value: Vec<u8>,
}

/// Why a delivery failed.
enum Failure {
    /// `Offline`.
    Offline(String),
    /// The broker refused a batch as too large: `TooLarge`.
    TooLarge(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure::Offline(reason)
    }
}

/// A connected client with what it learnt: partition counts, partition clients.
struct Link {
    client: Client,
    partitions: HashMap<String, i32>,
    partition_clients: HashMap<(String, i32), Arc<PartitionClient>>,
}

/// Produces records to Kafka brokers.
pub struct KafkaSink {
    config: KafkaConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    link: Option<Link>,
}

impl KafkaSink {
    /// Prepares the uplink (reads the TLS files); connects on the first delivery.
    pub fn new(config: KafkaConfig) -> Result<KafkaSink, SinkError> {
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(client_config(files, &[])?)),
            None => None,
        };
        Ok(KafkaSink { config, tls, link: None })
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Produces `records` and waits for every acknowledgement; see the module docs.
    pub(crate) async fn deliver(&mut self, records: &[OutRecord]) -> Delivery {
        if records.is_empty() {
            return Delivery::Delivered;
        }
        let oversize = oversize_records(&self.config, records);
        if !oversize.is_empty() {
            return Delivery::Oversize { records: oversize };
        }
        let messages = encode_messages(&self.config, records);
        match self.try_deliver(messages).await {
            Ok(()) => Delivery::Delivered,
            Err(Failure::Offline(reason)) => {
                self.link = None;
                Delivery::Offline { reason }
            }
            Err(Failure::TooLarge(reason)) => {
                self.link = None;
                Delivery::TooLarge { reason }
            }
        }
    }

    /// Drops the connections; the next delivery reconnects.
    pub(crate) async fn close(&mut self) {
        self.link = None;
    }

    async fn try_deliver(&mut self, messages: Vec<Message>) -> Result<(), Failure> {
        if self.link.is_none() {
            self.link = Some(self.connect().await?);
        }
        let config = &self.config;
        let link = self.link.as_mut().expect("connected above");
        let connect_deadline = Instant::now() + config.connect_timeout;
        let missing: Vec<&str> = messages
            .iter()
            .map(|message| message.topic.as_str())
            .filter(|topic| !link.partitions.contains_key(*topic))
            .collect();
        if !missing.is_empty() {
            let topics = timeout_at(connect_deadline, link.client.list_topics())
                .await
                .map_err(|_| format!("no topic metadata within {:?}", config.connect_timeout))?
                .map_err(|error| format!("cannot read the topics' metadata: {}", describe(&error)))?;
            for topic in topics {
                let count = i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX);
                link.partitions.insert(topic.name, count);
            }
            for topic in missing {
                if link.partitions.get(topic).is_none_or(|count| *count < 1) {
                    return Err(Failure::Offline(format!(
                        "topic `{topic}` does not exist on the brokers; eddy does not create topics: create it \
                         (e.g. kafka-topics.sh --create --topic {topic} --partitions 6) and delivery resumes"
                    )));
                }
            }
        }
        // Per partition, its messages in order.
        let mut by_partition: BTreeMap<(String, i32), Vec<Message>> = BTreeMap::new();
        for message in messages {
            let count = link.partitions[&message.topic];
            let partition = partition_of(message.key.as_bytes(), count);
            by_partition.entry((message.topic.clone(), partition)).or_default().push(message);
        }
        let deadline = Instant::now() + config.ack_timeout;
        let compression = compression_of(config.compression);
        let now = now();
        // Partitions are produced to at once, each its messages in order: a produce is a
        // round trip, and rskafka's sockets do not set TCP_NODELAY, so one costs ~40 ms of
        // delayed ACK on a fast link whatever its size.
        let mut producing: JoinSet<Result<(), Failure>> = JoinSet::new();
        for ((topic, partition), messages) in by_partition {
            let slot = (topic.clone(), partition);
            if !link.partition_clients.contains_key(&slot) {
                let created = timeout_at(
                    connect_deadline.max(deadline),
                    link.client.partition_client(topic.clone(), partition, UnknownTopicHandling::Error),
                )
                .await
                .map_err(|_| {
                    format!("no leader for {topic}[{partition}] within {:?}", config.connect_timeout)
                })?
                .map_err(|error| classify(&error, &topic, partition))?;
                link.partition_clients.insert(slot.clone(), Arc::new(created));
            }
            let client = Arc::clone(&link.partition_clients[&slot]);
            let batches = batches(messages, config.max_message_bytes);
            let ack_timeout = config.ack_timeout;
            producing.spawn(async move {
                for batch in batches {
                    let n = batch.len();
                    let records: Vec<Record> = batch
                        .into_iter()
                        .map(|message| Record {
                            key: Some(message.key.into_bytes()),
                            value: Some(message.value),
                            headers: BTreeMap::new(),
                            timestamp: now,
                        })
                        .collect();
                    timeout_at(deadline, client.produce(records, compression))
                        .await
                        .map_err(|_| {
                            format!(
                                "{n} messages to {topic}[{partition}] not acknowledged within {ack_timeout:?}; \
                                 dropping the link"
                            )
                        })?
                        .map_err(|error| classify(&error, &topic, partition))?;
                }
                Ok(())
            });
        }
        // The first failure ends the delivery; dropping the set aborts the other produces.
        while let Some(done) = producing.join_next().await {
            done.map_err(|error| format!("a produce task failed: {error}"))??;
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Link, String> {
        let config = &self.config;
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 3.0,
            // Give up within the timeouts, with the client's own error rather than ours: the
            // daemon's backoff paces the retries.
            deadline: Some(config.connect_timeout.min(config.ack_timeout) * 3 / 4),
        };
        let mut builder = ClientBuilder::new(config.brokers.clone())
            .client_id(config.client_id.as_str())
            .backoff_config(backoff);
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(Arc::clone(tls));
        }
        if let Some(sasl) = &config.sasl {
            let credentials = Credentials::new(sasl.username.clone(), sasl.password.expose().to_owned());
            builder = builder.sasl_config(match sasl.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(credentials),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            });
        }
        let brokers = config.brokers.join(",");
        let client = tokio::time::timeout(config.connect_timeout, builder.build())
            .await
            .map_err(|_| {
                format!("no Kafka broker of {brokers} answered within {:?}", config.connect_timeout)
            })?
            .map_err(|error| format!("cannot connect to Kafka brokers {brokers}: {}", describe(&error)))?;
        tracing::info!(sink = %config.name, brokers = %brokers, "Kafka brokers connected.");
        Ok(Link { client, partitions: HashMap::new(), partition_clients: HashMap::new() })
    }
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("KafkaSink").field("config", &self.config).finish_non_exhaustive()
    }
}

/// A client error in a line: a broker's error code with its message, not the request dump.
fn describe(error: &KafkaError) -> String {
    match error {
        KafkaError::ServerError { protocol_error, error_message, .. } => match error_message {
            Some(message) if !message.is_empty() => format!("broker error {protocol_error}: {message}"),
            _ => format!("broker error {protocol_error}"),
        },
        other => other.to_string(),
    }
}

/// The failure a produce error means.
fn classify(error: &KafkaError, topic: &str, partition: i32) -> Failure {
    match error {
        KafkaError::ServerError {
            protocol_error: ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge,
            ..
        } => Failure::TooLarge(format!(
            "{topic}[{partition}] refused the batch as too large ({}); lower max_message_bytes to the \
             topic's max.message.bytes",
            describe(error)
        )),
        KafkaError::ServerError { protocol_error: ProtocolError::UnknownTopicOrPartition, .. } => {
            Failure::Offline(format!(
                "topic `{topic}` (partition {partition}) is unknown to the brokers; eddy does not create \
                 topics: create it and delivery resumes"
            ))
        }
        other => Failure::Offline(format!("produce to {topic}[{partition}] failed: {}", describe(other))),
    }
}

fn compression_of(compression: KafkaCompression) -> Compression {
    match compression {
        KafkaCompression::None => Compression::NoCompression,
        KafkaCompression::Gzip => Compression::Gzip,
        KafkaCompression::Snappy => Compression::Snappy,
    }
}

/// The produce timestamp (CreateTime).
fn now() -> DateTime<Utc> {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis());
    DateTime::from_timestamp_millis(i64::try_from(millis).unwrap_or(i64::MAX)).unwrap_or_default()
}

/// Kafka's `Utils.murmur2` (the Java client's default partitioner, and librdkafka's
/// `murmur2_random`): 32-bit MurmurHash2 with seed 0x9747b28c.
fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    #[allow(clippy::cast_possible_truncation)] // Java hashes the int length, wrapping too
    let mut h: u32 = 0x9747_b28c ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// The partition of `key` among `partitions` (at least 1), as Kafka's default partitioner
/// picks it: `toPositive(murmur2(key)) % partitions`.
fn partition_of(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// The fields of a record's JSON the key may use.
#[derive(Deserialize)]
struct KeyFields<'a> {
    #[serde(borrow, default)]
    sensor: Option<std::borrow::Cow<'a, str>>,
}

/// The message key of a record.
fn key_of(config: &KafkaConfig, record: &OutRecord) -> String {
    let mut key = config.key.replace("{device_id}", &config.device_id).replace("{type}", &record.kind);
    if key.contains("{sensor}") {
        let sensor = serde_json::from_slice::<KeyFields<'_>>(&record.payload)
            .ok()
            .and_then(|fields| fields.sensor)
            .unwrap_or_default();
        key = key.replace("{sensor}", &sensor);
    }
    key
}

/// Topic of a record.
fn topic_of(config: &KafkaConfig, record: &OutRecord) -> String {
    config.topic.replace("{device_id}", &config.device_id).replace("{type}", &record.kind)
}

/// The records that could never be sent: alone in a message (bare, or in an array of one
/// when records share messages) their value exceeds `max_message_bytes`, or with key and
/// batch framing they exceed a batch of that size. With why, for the dead-letter tree.
fn oversize_records(config: &KafkaConfig, records: &[OutRecord]) -> Vec<(u64, String)> {
    let framing = if config.records_per_message <= 1 { 0 } else { 2 };
    records
        .iter()
        .filter_map(|record| {
            let value = record.payload.len() + framing;
            let batch = value + key_of(config, record).len() + RECORD_OVERHEAD + BATCH_OVERHEAD;
            (batch > config.max_message_bytes).then(|| {
                (
                    record.seq,
                    format!(
                        "record of {value} bytes (a batch of {batch} with its key) exceeds max_message_bytes {}",
                        config.max_message_bytes
                    ),
                )
            })
        })
        .collect()
}

/// Groups records into messages in order: with `records_per_message = 1` each value is the
/// bare record; otherwise consecutive records with the same topic and key share a JSON array
/// of at most `records_per_message` records (and one record batch's room).
fn encode_messages(config: &KafkaConfig, records: &[OutRecord]) -> Vec<Message> {
    let keyed = records.iter().map(|record| (topic_of(config, record), key_of(config, record), record));
    if config.records_per_message <= 1 {
        return keyed
            .map(|(topic, key, record)| Message { topic, key, value: record.payload.clone() })
            .collect();
    }
    let room = config.max_message_bytes.saturating_sub(RECORD_OVERHEAD + BATCH_OVERHEAD);
    let mut messages: Vec<Message> = Vec::new();
    let mut current: Option<(Message, usize)> = None;
    for (topic, key, record) in keyed {
        let fits = current.as_ref().is_some_and(|(message, n)| {
            message.topic == topic
                && message.key == key
                && *n < config.records_per_message
                // a comma before the record, the closing bracket after it
                && message.value.len() + record.payload.len() + 2 + key.len() <= room
        });
        if fits {
            let (message, n) = current.as_mut().expect("checked above");
            message.value.push(b',');
            message.value.extend_from_slice(&record.payload);
            *n += 1;
        } else {
            if let Some((mut message, _)) = current.take() {
                message.value.push(b']');
                messages.push(message);
            }
            let mut value = Vec::with_capacity(record.payload.len() + 2);
            value.push(b'[');
            value.extend_from_slice(&record.payload);
            current = Some((Message { topic, key, value }, 1));
        }
    }
    if let Some((mut message, _)) = current {
        message.value.push(b']');
        messages.push(message);
    }
    messages
}

/// Cuts one partition's messages, in order, into record batches of at most `max_bytes`
/// (counting keys, values and framing); a message too large for any batch goes alone.
fn batches(messages: Vec<Message>, max_bytes: usize) -> Vec<Vec<Message>> {
    let mut batches: Vec<Vec<Message>> = Vec::new();
    let mut size = BATCH_OVERHEAD;
    for message in messages {
        let bytes = message.key.len() + message.value.len() + RECORD_OVERHEAD;
        match batches.last_mut() {
            Some(batch) if size + bytes <= max_bytes => {
                batch.push(message);
                size += bytes;
            }
            _ => {
                batches.push(vec![message]);
                size = BATCH_OVERHEAD + bytes;
            }
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(records_per_message: usize, max_message_bytes: usize) -> KafkaConfig {
        KafkaConfig {
            name: "kafka".into(),
            brokers: vec!["127.0.0.1:9092".into()],
            tls: None,
            sasl: None,
            client_id: "c".into(),
            topic: "eddy.{type}".into(),
            key: "{device_id}/{sensor}".into(),
            device_id: "gw".into(),
            records_per_message,
            max_message_bytes,
            compression: KafkaCompression::None,
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(30),
        }
    }

    fn record(seq: u64, kind: &str, sensor: &str) -> OutRecord {
        OutRecord {
            seq,
            kind: kind.into(),
            group: String::new(),
            payload: format!("{{\"sensor\":\"{sensor}\",\"n\":{seq}}}").into_bytes(),
        }
    }

    fn text(messages: &[Message]) -> Vec<(String, String, String)> {
        messages
            .iter()
            .map(|m| (m.topic.clone(), m.key.clone(), String::from_utf8(m.value.clone()).unwrap()))
            .collect()
    }

    #[test]
    fn murmur2_matches_kafka() {
        // The vectors of Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973_932_308);
        assert_eq!(murmur2(b"foobar"), -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58_897_971);
        assert_eq!(murmur2(b"abc"), 479_470_107);
    }

    #[test]
    fn partitions_are_positive_and_stable() {
        // 0x7fffffff & -973932308 = 1173551340.
        assert_eq!(partition_of(b"21", 7), 1_173_551_340 % 7);
        for key in [&b""[..], b"gw/t1", b"\xff\xff\xff\xff\xff"] {
            for partitions in [1, 2, 3, 12] {
                let partition = partition_of(key, partitions);
                assert!((0..partitions).contains(&partition));
                assert_eq!(partition, partition_of(key, partitions));
            }
        }
        assert_eq!(partition_of(b"anything", 1), 0);
    }

    #[test]
    fn keys_come_from_the_template_and_the_records_sensor() {
        let config = config(1, 10_000);
        assert_eq!(key_of(&config, &record(1, "window", "boiler/t1")), "gw/boiler/t1");
        // A sensor with escapes is decoded.
        let escaped =
            OutRecord { payload: br#"{"sensor":"a\"b","n":1}"#.to_vec(), ..record(1, "window", "") };
        assert_eq!(key_of(&config, &escaped), "gw/a\"b");
        let other = KafkaConfig { key: "{type}:{device_id}".into(), ..config.clone() };
        assert_eq!(key_of(&other, &record(1, "late", "x")), "late:gw");
        // Not JSON, or no sensor: empty.
        let bare = OutRecord { payload: b"{}".to_vec(), ..record(1, "window", "") };
        assert_eq!(key_of(&config, &bare), "gw/");
    }

    #[test]
    fn one_record_per_message_sends_bare_objects() {
        let got = encode_messages(&config(1, 10_000), &[record(1, "window", "a"), record(2, "batch", "b")]);
        assert_eq!(
            text(&got),
            vec![
                ("eddy.window".into(), "gw/a".into(), r#"{"sensor":"a","n":1}"#.into()),
                ("eddy.batch".into(), "gw/b".into(), r#"{"sensor":"b","n":2}"#.into()),
            ]
        );
    }

    #[test]
    fn arrays_are_cut_by_topic_key_count_and_size() {
        let records = [
            record(1, "window", "a"),
            record(2, "window", "a"),
            record(3, "window", "a"),
            record(4, "window", "b"),
            record(5, "late", "b"),
        ];
        let got = encode_messages(&config(2, 10_000), &records);
        assert_eq!(
            text(&got),
            vec![
                (
                    "eddy.window".into(),
                    "gw/a".into(),
                    r#"[{"sensor":"a","n":1},{"sensor":"a","n":2}]"#.into()
                ),
                ("eddy.window".into(), "gw/a".into(), r#"[{"sensor":"a","n":3}]"#.into()),
                ("eddy.window".into(), "gw/b".into(), r#"[{"sensor":"b","n":4}]"#.into()),
                ("eddy.late".into(), "gw/b".into(), r#"[{"sensor":"b","n":5}]"#.into()),
            ]
        );
        // Room for one record of 20 bytes with its key and framing, not two.
        let room = RECORD_OVERHEAD + BATCH_OVERHEAD + 4 + 22;
        let got = encode_messages(&config(10, room + 10), &records[..2]);
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_record_too_large_alone_is_named() {
        let mut big = record(2, "window", "a");
        big.payload = vec![b'x'; 2000];
        let records = [record(1, "window", "a"), big];
        let oversize = oversize_records(&config(1, 1024), &records);
        assert_eq!(oversize.len(), 1);
        assert_eq!(oversize[0].0, 2);
        assert!(oversize[0].1.contains("record of 2000 bytes"), "{}", oversize[0].1);
        assert!(oversize_records(&config(1, 4096), &records).is_empty());
    }

    #[test]
    fn batches_keep_order_within_the_size() {
        let message = |n: u8| Message { topic: "t".into(), key: "k".into(), value: vec![n; 100] };
        let per = 1 + 100 + RECORD_OVERHEAD;
        let got = batches((0..5).map(message).collect(), BATCH_OVERHEAD + 2 * per);
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 2, 1]);
        let order: Vec<u8> = got.iter().flatten().map(|m| m.value[0]).collect();
        assert_eq!(order, vec![0, 1, 2, 3, 4]);
        // Too large for any batch: alone.
        let got = batches(vec![message(0), message(1)], 10);
        assert_eq!(got.len(), 2);
    }
}
