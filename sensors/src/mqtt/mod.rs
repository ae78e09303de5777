//! The MQTT source (`kind = "mqtt"`): subscribes to a broker with a persistent session and
//! acknowledges each message only once its readings are durable.
//!
//! The behaviour is documented on [`MqttSource`]; the event loop is in `session.rs`.

mod config;
mod connect;
mod payload;
mod raw_config;
mod subscription;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ingest::{IngestSender, StoredMarks};
use crate::mqtt::subscription::Subscription;
use crate::parse::{Format, LineDecoder, LineParser};
use crate::registry::SensorRegistry;
use crate::stats::SourceStats;

pub use crate::mqtt::config::{MqttBroker, MqttQos, MqttSourceConfig, MqttTls, Secret};
pub use crate::mqtt::connect::MqttSetupError;
pub(crate) use crate::mqtt::connect::{mqtt_options, ConnectSettings};
pub use crate::mqtt::payload::{decode_payload, PayloadRules};
pub use crate::mqtt::raw_config::RawMqttSource;

/// Why the MQTT source could not start or stopped early. An unreachable broker, a refused
/// login or a failed TLS handshake are not errors of the source: they are logged and
/// retried (see [`MqttSource`]).
#[derive(Debug, thiserror::Error)]
pub enum MqttSourceError {
    /// A setting is outside what the source supports.
    #[error("mqtt source setting `{field}`: {message}")]
    InvalidSetting {
        /// The config field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The client could not be set up (TLS files, client id).
    #[error("cannot set up the MQTT client for {broker}")]
    Setup {
        /// The broker.
        broker: String,
        /// What went wrong.
        #[source]
        source: MqttSetupError,
    },
    /// The daemon's durable log stopped accepting readings while the source was running.
    #[error("the durable log closed while the MQTT source for {broker} was running")]
    IngestClosed {
        /// The broker.
        broker: String,
    },
}

/// Connection counters of one MQTT source, shared with the daemon for its stats.
#[derive(Debug, Default)]
pub struct MqttConnectionStats {
    connected: AtomicBool,
    connections: AtomicU64,
    connection_failures: AtomicU64,
    messages: AtomicU64,
    acked: AtomicU64,
    redelivered: AtomicU64,
    refused: AtomicU64,
}

impl MqttConnectionStats {
    /// Connected to the broker now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Successful connections (CONNACK accepted) so far.
    pub fn connections_total(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Failed connection attempts and lost connections.
    pub fn connection_failures_total(&self) -> u64 {
        self.connection_failures.load(Ordering::Relaxed)
    }

    /// Messages received.
    pub fn messages_total(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Messages acknowledged to the broker.
    pub fn acked_total(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Redeliveries of messages already handed to the log, acknowledged without storing them
    /// again.
    pub fn redelivered_total(&self) -> u64 {
        self.redelivered.load(Ordering::Relaxed)
    }

    /// Messages the log refused, left unacknowledged for the broker to redeliver.
    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// An MQTT source, ready to [`run`](MqttSource::run).
///
/// # Messages
///
/// A payload holds one reading, a JSON array of readings, or (CSV, line protocol) one
/// reading per line. With `sensor_from_topic = N` the sensor id is topic segment `N`
/// (0-based) and a `sensor` key in the payload is ignored. Each reading counts as received,
/// then as accepted or rejected by reason, like a TCP line.
///
/// A message whose payload is over `max_payload_bytes` is still read (up to
/// [`MqttSourceConfig::read_limit_bytes`], 16 MiB by default), counted as `message_too_large`
/// and acknowledged; so is a message none of whose readings is valid. A packet the client
/// cannot read at all (larger than that limit, or malformed) ends the connection, and a broker
/// resends it first at every reconnection of the persistent session: after three connections
/// in a row end on it, the source connects once with a clean session, which makes the broker
/// discard the session (the message, and what it had queued behind it, are lost: logged at
/// ERROR and counted once as `unreadable_message`), then goes back to a persistent session.
///
/// # Acknowledgements
///
/// The session is persistent (`clean_session = false`) and acknowledgements are manual: a
/// QoS 1 (or 2) message is acknowledged (PUBACK, or PUBREC) only once every accepted reading
/// of it is durable; a message whose readings were all rejected is acknowledged at once.
/// Acknowledgements go out in the order the messages came in. If eddy dies before that, the
/// broker redelivers the message to the restarted eddy.
///
/// When the connection is lost, rumqttc drops the acknowledgements not yet written and the
/// broker redelivers those messages (flagged DUP, same packet id). The source remembers the
/// messages it had handed to the log and not seen acknowledged, and acknowledges such a
/// redelivery (same packet id, topic and payload) without storing it twice.
///
/// The same holds across a crash of eddy: each stored message's packet id and fingerprint
/// is a [`Mark`](crate::Mark), durable in the same log chunk as its readings, and the daemon
/// hands the durable ones back ([`MqttSource::with_stored_marks`]). A message that was stored
/// but whose acknowledgement died with eddy is redelivered, recognised and acknowledged
/// without being stored again.
///
/// # Backpressure
///
/// At most `max_in_flight` messages are held (waiting for durability); past that the
/// source stops reading the connection until the oldest is acknowledged, and the socket and
/// the broker keep the rest. The hand-over to the log waits while the ingest channel is
/// full. While it does not read, no keep-alive goes out either: if the log stalls for longer
/// than 1.5 × `keep_alive`, the broker drops the connection and redelivers later, which the
/// source recognises (see above).
///
/// # Connection
///
/// One task polls rumqttc's event loop and never waits on its client; it writes the
/// acknowledgements itself, through the event loop's state and connection. Every reconnection
/// starts from a new client and event loop, so that nothing read on one connection is
/// acknowledged on the next (rumqttc keeps the packets it read but had not handed out across
/// its own reconnections): such messages are handed to the log as orphans, and acknowledged
/// when the broker redelivers them.
///
/// With `broker_stats` (the default) the source also subscribes, at QoS 0, to the broker's
/// dropped-messages counter ([`MqttSourceConfig::BROKER_DROPPED_TOPIC`], mosquitto's) and
/// reports it in the source's stats; a broker that refuses it is logged once and not asked
/// again. After every
/// connection the source subscribes again (a broker that lost its sessions has lost the
/// subscriptions too). A refused or lost connection is logged — at ERROR when an operator
/// must act (wrong credentials, not authorised, TLS failure), at WARN otherwise — once, and
/// again only when the reason changes or every minute while it lasts; attempts are retried
/// with capped exponential backoff and jitter, forever: a broker down or a wrong password
/// at start-up does not stop eddy (its other sources keep running).
///
/// # Shutdown
///
/// On shutdown the source stops taking messages, waits for the durability of those handed
/// over, writes their acknowledgements, and disconnects (a few seconds at most). Messages
/// received but not acknowledged are redelivered by the broker at the next start.
///
/// Its `Debug` leaves out the rumqttc options: theirs prints the password.
pub struct MqttSource {
    config: MqttSourceConfig,
    source_idx: usize,
    options: rumqttc::MqttOptions,
    decoder: LineDecoder,
    rules: PayloadRules,
    connection_stats: Arc<MqttConnectionStats>,
    stored: Vec<(u16, u32)>,
}

impl std::fmt::Debug for MqttSource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MqttSource")
            .field("config", &self.config)
            .field("source_idx", &self.source_idx)
            .finish_non_exhaustive()
    }
}

/// rumqttc's request channel carries only the subscriptions and the disconnect: the
/// acknowledgements are written by the polling task itself (see `session.rs`).
pub(crate) const REQUEST_CHANNEL_CAPACITY: usize = 16;

impl MqttSource {
    /// A source for `config`, handing readings over as source number `source_idx`, decoded
    /// with `parser`, sensor ids admitted through `registry` and counted in `stats`. Reads
    /// the TLS files; connects only in [`run`](MqttSource::run).
    pub fn new(
        config: MqttSourceConfig,
        source_idx: usize,
        parser: Arc<LineParser>,
        registry: Arc<SensorRegistry>,
        stats: Arc<SourceStats>,
    ) -> Result<MqttSource, MqttSourceError> {
        let invalid = |field, message: &str| {
            Err(MqttSourceError::InvalidSetting { field, message: message.to_owned() })
        };
        if config.topics.is_empty() {
            return invalid("topics", "at least one topic filter is needed");
        }
        if config.max_in_flight == 0 {
            return invalid("max_in_flight", "must be at least 1");
        }
        if config.max_payload_bytes == 0 {
            return invalid("max_payload_bytes", "must be at least 1");
        }
        if config.retry_min.is_zero() {
            return invalid("retry_min", "must be greater than zero");
        }
        if config.sensor_from_topic.is_some() && parser_format(&parser) != Format::Json {
            return invalid("sensor_from_topic", "applies only to format = \"json\"");
        }
        let settings = ConnectSettings {
            broker: &config.broker,
            client_id: &config.client_id,
            clean_session: config.clean_session,
            keep_alive: config.keep_alive,
            username: config.username.as_deref(),
            password: config.password.as_ref(),
            tls: config.tls.as_ref(),
            // Far above the payload limit: a message up to this is read, rejected by the source
            // as `message_too_large` and acknowledged. Past it rumqttc cannot read the packet
            // and drops the connection (see `Subscription::note_unreadable`).
            max_packet_bytes: config.read_limit_bytes(),
        };
        let mut options = mqtt_options(&settings)
            .map_err(|source| MqttSourceError::Setup { broker: config.broker.to_string(), source })?;
        options.set_manual_acks(true);
        options.set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
        let rules = PayloadRules {
            format: parser_format(&parser),
            sensor_from_topic: config.sensor_from_topic,
            max_payload_bytes: config.max_payload_bytes,
        };
        let decoder = LineDecoder::new(parser, registry, stats);
        Ok(MqttSource {
            config,
            source_idx,
            options,
            decoder,
            rules,
            connection_stats: Arc::new(MqttConnectionStats::default()),
            stored: Vec::new(),
        })
    }

    /// What this source had stored before (the daemon reads it from the store), so that a
    /// redelivery of a message stored just before a crash is recognised.
    pub fn with_stored_marks(mut self, marks: StoredMarks) -> MqttSource {
        self.stored = marks.messages;
        self
    }

    /// The connection counters, which stay readable after `run` consumed the source.
    pub fn connection_stats(&self) -> Arc<MqttConnectionStats> {
        self.connection_stats.clone()
    }

    /// Receives messages until `shutdown` is cancelled, then settles the acknowledgements
    /// (see the type's docs). Fails only if the durable log closes under it.
    pub async fn run(self, ingest: IngestSender, shutdown: CancellationToken) -> Result<(), MqttSourceError> {
        let span = tracing::info_span!(
            "mqtt_source",
            source = %self.decoder.stats().name,
            broker = %self.config.broker,
            client_id = %self.config.client_id
        );
        let MqttSource { config, source_idx, options, decoder, rules, connection_stats, stored } = self;
        Subscription::new(config, source_idx, options, decoder, rules, connection_stats, ingest)
            .with_stored(&stored)
            .run(shutdown)
            .instrument(span)
            .await
    }
}

fn parser_format(parser: &LineParser) -> Format {
    parser.format()
}
