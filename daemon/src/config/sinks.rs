//! `[[sinks]]`: the kinds of sink, each with its own keys (owned by its sink in the sinks
//! crate), the keys every sink has (name, record kinds, delivery pacing), and the validated
//! [`SinkConfig`].
//!
//! A new kind of sink is one line in [`RawSink`], one in [`SinkKind`] and one arm in
//! [`sink_from_raw`]; its keys, defaults and checks live with the sink.

use std::collections::BTreeSet;
use std::time::Duration;

use eddy_sinks::{
    FileConfig, HttpConfig, KafkaConfig, MqttConfig, RawConsoleSink, RawFileSink, RawHttpSink, RawKafkaSink,
    RawMqttSink,
};
use serde::Deserialize;

use crate::config::entry::{RawEntry, SharedKeys};
use eddy_common::DAY;

use crate::config::{check_name, invalid, within, ConfigError};

/// The slowest `rate_limit`, records/s: a batch of 10,000 is then paced over 11.6 days at
/// most, and 1/rate stays a representable duration.
const MIN_RATE: f64 = 0.01;
/// The fastest `rate_limit`, records/s (faster is no limit at all).
const MAX_RATE: f64 = 1_000_000.0;
/// The longest `linger`: it delays a partial batch.
const MAX_LINGER: Duration = Duration::from_secs(60);
/// The shortest `backlog_after`: below it a sink would count a busy moment as an outage.
const MIN_BACKLOG_AFTER: Duration = Duration::from_secs(1);

/// Kinds of outbox record a sink can take (`raw` needs `engine.forward_raw`).
pub const RECORD_KINDS: [&str; 4] = ["window", "batch", "late", "raw"];

/// One `[[sinks]]` entry as written.
pub type RawSinkEntry = RawEntry<RawSinkShared, RawSink>;

/// The kind of a `[[sinks]]` entry (`kind = "..."`) with the keys of that kind; a key of
/// another kind is refused by serde.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RawSink {
    /// `kind = "console"`: readable tables on stdout.
    Console(RawConsoleSink),
    /// `kind = "file"`: JSON lines appended to a file.
    File(RawFileSink),
    /// `kind = "mqtt"`: a hub over MQTT.
    Mqtt(RawMqttSink),
    /// `kind = "http"`: a hub over HTTP.
    Http(RawHttpSink),
    /// `kind = "kafka"`: Kafka brokers (or Azure Event Hubs' Kafka endpoint).
    Kafka(RawKafkaSink),
}

/// The keys every `[[sinks]]` entry has, whatever its kind: its name, the records it takes and
/// how its deliveries are batched, paced and retried.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSinkShared {
    /// Unique name (default `kind-N`); it names the sink's durable cursor, so keep it stable.
    pub name: Option<String>,
    /// Record kinds taken (default: window, batch).
    pub records: Option<Vec<String>>,
    /// Records handed to the sink per delivery (default 512).
    pub batch_max_records: Option<u64>,
    /// Wait this long for a delivery to fill up (default 0).
    #[serde(with = "humantime_serde", default)]
    pub linger: Option<Duration>,
    /// Most records per second delivered (default: no cap).
    pub rate_limit: Option<f64>,
    /// Longest pause between retries (default 60s).
    #[serde(with = "humantime_serde", default)]
    pub max_backoff: Option<Duration>,
    /// Least share of the records sent that are backlog while current results wait too
    /// (default 0.5; 1.0: oldest first, no live first).
    pub backlog_share: Option<f64>,
    /// A sink is behind when its oldest undelivered record was committed longer than this
    /// before the newest (default 10s).
    #[serde(with = "humantime_serde", default)]
    pub backlog_after: Option<Duration>,
}

impl SharedKeys for RawSinkShared {
    const KEYS: &'static [&'static str] = &[
        "name",
        "records",
        "batch_max_records",
        "linger",
        "rate_limit",
        "max_backoff",
        "backlog_share",
        "backlog_after",
    ];
}

/// A validated sink. Compared on a reload: any difference (secrets included) restarts it.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkConfig {
    /// Unique name (names the durable cursor).
    pub name: String,
    /// What it is.
    pub kind: SinkKind,
    /// Record kinds taken.
    pub records: BTreeSet<String>,
    /// Batching, rate cap and retry pacing of its deliveries.
    pub delivery: DeliveryConfig,
}

/// The kinds of sink, each with the typed settings of its sink.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// Readable tables on stdout.
    Console,
    /// JSON lines appended to a file, rotated by size.
    File(FileConfig),
    /// A hub over MQTT.
    Mqtt(Box<MqttConfig>),
    /// A hub over HTTP.
    Http(Box<HttpConfig>),
    /// Kafka brokers.
    Kafka(Box<KafkaConfig>),
}

/// How a sink's delivery task batches, paces and retries.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// Most records handed to the sink per delivery.
    pub batch_max_records: usize,
    /// When fewer records are waiting, wait this long for more before delivering.
    pub linger: Duration,
    /// Most records per second (`None`: no cap), so a drained backlog does not flood the hub.
    pub rate_limit: Option<f64>,
    /// Longest pause between retries of a failing delivery.
    pub max_backoff: Duration,
    /// Live first: while current results and a backlog both wait, at least this share of the
    /// records sent are backlog (1.0: the backlog first, the order of an eddy without live
    /// first; 0.0: the backlog only when no current result waits).
    pub backlog_share: f64,
    /// A sink is behind, and splits what waits into current results and a backlog, when its
    /// oldest undelivered record was committed longer than this before the newest.
    pub backlog_after: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> DeliveryConfig {
        DeliveryConfig {
            batch_max_records: 512,
            linger: Duration::ZERO,
            rate_limit: None,
            max_backoff: Duration::from_secs(60),
            backlog_share: 0.5,
            backlog_after: Duration::from_secs(10),
        }
    }
}

/// Validates entry `idx` (at `key`, `sinks[idx]`) of gateway `device_id`; what an operator
/// should change but may keep (credentials in plain text allowed) goes to `warnings`.
pub(crate) fn sink_from_raw(
    key: &str,
    idx: usize,
    raw: RawSinkEntry,
    device_id: &str,
    warnings: &mut Vec<String>,
) -> Result<SinkConfig, ConfigError> {
    let shared = raw.shared;
    let name = shared.name.clone().unwrap_or_else(|| format!("{}-{idx}", raw.kind_name));
    check_name(&format!("{key}.name"), &name)?;
    let records: BTreeSet<String> = match shared.records.clone() {
        None => ["window", "batch"].map(String::from).into(),
        Some(kinds) => {
            for kind in &kinds {
                if !RECORD_KINDS.contains(&kind.as_str()) {
                    return Err(invalid(
                        format!("{key}.records"),
                        format!("`{kind}` is not one of: {}", RECORD_KINDS.join(", ")),
                    ));
                }
            }
            if kinds.is_empty() {
                return Err(invalid(format!("{key}.records"), "must name at least one kind"));
            }
            kinds.into_iter().collect()
        }
    };
    let delivery = delivery_from_raw(key, &shared)?;
    let kind = match raw.kind {
        RawSink::Console(RawConsoleSink {}) => SinkKind::Console,
        RawSink::File(file) => SinkKind::File(file.validate(key)?),
        RawSink::Mqtt(mqtt) => SinkKind::Mqtt(Box::new(mqtt.validate(key, &name, device_id, warnings)?)),
        RawSink::Http(http) => SinkKind::Http(Box::new(http.validate(key, &name, warnings)?)),
        RawSink::Kafka(kafka) => SinkKind::Kafka(Box::new(kafka.validate(key, &name, device_id, warnings)?)),
    };
    Ok(SinkConfig { name, kind, records, delivery })
}

/// The delivery keys, valid for every kind of sink.
fn delivery_from_raw(key: &str, raw: &RawSinkShared) -> Result<DeliveryConfig, ConfigError> {
    let defaults = DeliveryConfig::default();
    let batch_max_records = match raw.batch_max_records {
        None => defaults.batch_max_records,
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| invalid(format!("{key}.batch_max_records"), "must be between 1 and 10000"))?,
    };
    let rate_limit = match raw.rate_limit {
        None => None,
        // At least MIN_RATE: a delivery is paced by n / rate seconds, a duration that must
        // fit (1e-18 overflows it) and be waited out within a day or so.
        Some(rate) if rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate) => Some(rate),
        Some(_) => {
            return Err(invalid(
                format!("{key}.rate_limit"),
                format!("must be a number of records/s from {MIN_RATE} to {MAX_RATE}"),
            ))
        }
    };
    let max_backoff = within(
        &format!("{key}.max_backoff"),
        raw.max_backoff.unwrap_or(defaults.max_backoff),
        Duration::from_millis(100),
        DAY,
    )?;
    let linger =
        within(&format!("{key}.linger"), raw.linger.unwrap_or(defaults.linger), Duration::ZERO, MAX_LINGER)?;
    let backlog_share = match raw.backlog_share {
        None => defaults.backlog_share,
        Some(share) if (0.0..=1.0).contains(&share) => share,
        Some(_) => return Err(invalid(format!("{key}.backlog_share"), "must be a number from 0.0 to 1.0")),
    };
    let backlog_after = within(
        &format!("{key}.backlog_after"),
        raw.backlog_after.unwrap_or(defaults.backlog_after),
        MIN_BACKLOG_AFTER,
        DAY,
    )?;
    Ok(DeliveryConfig { batch_max_records, linger, rate_limit, max_backoff, backlog_share, backlog_after })
}
