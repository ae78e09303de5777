//! The MQTT uplink: publishes records to a hub broker with QoS 1 and counts them delivered only
//! when every PUBACK has come back.
//!
//! Contract:
//! - One delivery is one set of messages (a record each, or JSON arrays of up to
//!   `records_per_message` records with the same topic). It is `Delivered` only when the broker
//!   acknowledged every message: rumqttc's `publish()` returning means queued, nothing more.
//! - Pairing: exactly one task polls the connection's event loop and forwards the packet ids of
//!   `Outgoing::Publish` and `Incoming::PubAck`. Only one delivery is in flight, so a PUBACK
//!   counts if its packet id is one this delivery published and has not seen acknowledged.
//! - Any failure (connection refused or lost, CONNACK refused, no PUBACK within `ack_timeout`)
//!   drops the connection and answers `Offline`; the next delivery builds a new one with a
//!   clean session. The daemon then sends the same records again, so the messages of that one
//!   delivery may reach the hub twice (records carry deterministic ids for that).
//! - A record that would exceed `max_message_bytes` as a message of its own (its payload, in
//!   an array when records share messages), or whose PUBLISH packet would exceed the packet
//!   limit rumqttc is given, is never sent: the delivery answers `Oversize` naming it, before
//!   anything of the batch is published, and the daemon dead-letters it and delivers the
//!   others. Should rumqttc still refuse a packet as too large (`OutgoingPacketTooLarge`), the
//!   delivery answers `TooLarge` and the daemon splits the batch down to the record at fault.
//! - Keep-alive probes an idle link; `ack_timeout` catches a link that swallows packets without
//!   a reset (a blackhole) while a delivery waits.

mod config;
mod raw_config;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, Transport,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

use crate::error::SinkError;
pub use crate::mqtt::config::{check_topic_template, MqttConfig, MqttUrl};
pub use crate::mqtt::raw_config::RawMqttSink;
use crate::record::{Delivery, OutRecord};
use crate::tls::client_config;

/// Capacity of rumqttc's request channel: a delivery's messages queue here while the event
/// loop sends them (bounded by the broker's in-flight window).
const REQUEST_CHANNEL: usize = 64;

/// What the polling task reports about its connection.
#[derive(Debug)]
enum LinkEvent {
    Connected,
    Published(u16),
    Acked(u16),
    Lost(String),
    /// rumqttc refused to send a packet larger than its limit (the link is gone too).
    TooLarge(String),
}

/// Why a delivery failed.
enum Failure {
    /// The link failed: `Offline`.
    Link(String),
    /// A packet was too large to send: `TooLarge`.
    TooLarge(String),
}

impl From<String> for Failure {
    fn from(reason: String) -> Failure {
        Failure::Link(reason)
    }
}

/// Fixed part of a QoS 1 PUBLISH packet besides topic and payload: the fixed header (1 byte
/// and up to 4 of remaining length), the topic's length prefix (2) and the packet id (2).
const PUBLISH_OVERHEAD: usize = 9;

/// A live connection: the client, the events of its polling task, and that task.
struct Link {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    poller: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Dropping the event loop closes the socket.
        self.poller.abort();
    }
}

/// Publishes records to an MQTT broker (the hub).
pub struct MqttSink {
    config: MqttConfig,
    options: MqttOptions,
    link: Option<Link>,
}

impl MqttSink {
    /// Prepares the uplink (reads the TLS files); connects on the first delivery.
    pub fn new(config: MqttConfig) -> Result<MqttSink, SinkError> {
        let mut options = MqttOptions::new(&config.client_id, &config.broker.host, config.broker.port);
        options.set_keep_alive(config.keep_alive.max(std::time::Duration::from_secs(1)));
        options.set_clean_session(true);
        options.set_request_channel_capacity(REQUEST_CHANNEL);
        let max_packet = max_packet_of(&config);
        options.set_max_packet_size(max_packet, max_packet);
        if let Some(username) = &config.username {
            let password =
                config.password.as_ref().map(|secret| secret.expose().to_owned()).unwrap_or_default();
            options.set_credentials(username.clone(), password);
        }
        if config.broker.tls {
            let tls = client_config(&config.tls, &[])?;
            options
                .set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls))));
        }
        Ok(MqttSink { config, options, link: None })
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Publishes `records` and waits for every PUBACK; see the module docs.
    pub(crate) async fn deliver(&mut self, records: &[OutRecord]) -> Delivery {
        if records.is_empty() {
            return Delivery::Delivered;
        }
        let oversize = oversize_records(&self.config, self.max_packet(), records);
        if !oversize.is_empty() {
            return Delivery::Oversize { records: oversize };
        }
        let messages = encode_messages(&self.config, records);
        match self.try_deliver(messages).await {
            Ok(()) => Delivery::Delivered,
            Err(Failure::Link(reason)) => {
                self.link = None;
                Delivery::Offline { reason }
            }
            Err(Failure::TooLarge(reason)) => {
                self.link = None;
                Delivery::TooLarge { reason }
            }
        }
    }

    /// The largest packet rumqttc is allowed to send or receive.
    fn max_packet(&self) -> usize {
        max_packet_of(&self.config)
    }

    /// Disconnects politely; the next delivery reconnects.
    pub(crate) async fn close(&mut self) {
        if let Some(link) = self.link.take() {
            let _ = link.client.try_disconnect();
            // Give the event loop a moment to send DISCONNECT before it is aborted.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), async {
                let mut link = link;
                while link.events.recv().await.is_some() {}
            })
            .await;
        }
    }

    async fn try_deliver(&mut self, messages: Vec<(String, Vec<u8>)>) -> Result<(), Failure> {
        if self.link.is_none() {
            self.link = Some(self.connect().await?);
        }
        let link = self.link.as_mut().expect("connected above");
        let deadline = Instant::now() + self.config.ack_timeout;
        let n_messages = messages.len();
        let publishing = async {
            for (topic, payload) in messages {
                link.client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .map_err(|error| format!("MQTT client closed: {error}"))?;
            }
            Ok::<(), String>(())
        };
        // Publishing can wait on a full request channel while the poller sends: the events
        // are read afterwards (the channel is unbounded, nothing is lost meanwhile).
        timeout_at(deadline, publishing)
            .await
            .map_err(|_| format!("no room to publish within {:?}", self.config.ack_timeout))??;
        let mut outstanding: HashSet<u16> = HashSet::new();
        let mut acked = 0;
        while acked < n_messages {
            let event = timeout_at(deadline, link.events.recv()).await.map_err(|_| {
                format!(
                    "{acked} of {n_messages} messages acknowledged within {:?}; dropping the link",
                    self.config.ack_timeout
                )
            })?;
            match event {
                Some(LinkEvent::Published(pkid)) => {
                    outstanding.insert(pkid);
                }
                Some(LinkEvent::Acked(pkid)) => {
                    if outstanding.remove(&pkid) {
                        acked += 1;
                    }
                }
                Some(LinkEvent::Connected) => {}
                Some(LinkEvent::Lost(reason)) => return Err(Failure::Link(reason)),
                Some(LinkEvent::TooLarge(reason)) => return Err(Failure::TooLarge(reason)),
                None => return Err(Failure::Link("MQTT connection task ended".to_owned())),
            }
        }
        Ok(())
    }

    async fn connect(&self) -> Result<Link, String> {
        let (client, eventloop) = AsyncClient::new(self.options.clone(), REQUEST_CHANNEL);
        let mut eventloop = eventloop;
        let mut network = eventloop.network_options();
        network.set_connection_timeout(self.config.connect_timeout.as_secs().max(1));
        eventloop.set_network_options(network);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(poll(eventloop, events_tx));
        let waited = tokio::time::timeout(self.config.connect_timeout, events.recv()).await;
        // From here on, dropping the link (on any error below) aborts the poller.
        let link = Link { client, events, poller };
        match waited {
            Ok(Some(LinkEvent::Connected)) => {
                tracing::info!(sink = %self.config.name, broker = %format!("{}:{}", self.config.broker.host, self.config.broker.port), "Hub connected.");
                Ok(link)
            }
            Ok(Some(LinkEvent::Lost(reason) | LinkEvent::TooLarge(reason))) => Err(reason),
            Ok(Some(other)) => Err(format!("unexpected MQTT event before CONNACK: {other:?}")),
            Ok(None) => Err("MQTT connection task ended".to_owned()),
            Err(_) => Err(format!(
                "no CONNACK from {}:{} within {:?}",
                self.config.broker.host, self.config.broker.port, self.config.connect_timeout
            )),
        }
    }
}

impl fmt::Debug for MqttSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("MqttSink").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The one task that polls the event loop; it stops at the first connection error (the sink
/// then builds a new connection, with the daemon's backoff in between).
async fn poll(mut eventloop: EventLoop, events: mpsc::UnboundedSender<LinkEvent>) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                if connack.code == ConnectReturnCode::Success {
                    LinkEvent::Connected
                } else {
                    let _ = events
                        .send(LinkEvent::Lost(format!("broker refused the connection: {:?}", connack.code)));
                    return;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(puback))) => LinkEvent::Acked(puback.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => LinkEvent::Published(pkid),
            Ok(_) => continue,
            Err(rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
                rumqttc::mqttbytes::Error::OutgoingPacketTooLarge { pkt_size, max },
            ))) => {
                let _ = events.send(LinkEvent::TooLarge(format!(
                    "MQTT packet of {pkt_size} bytes exceeds the limit of {max} bytes"
                )));
                return;
            }
            Err(error) => {
                let _ = events.send(LinkEvent::Lost(format!("MQTT connection failed: {error}")));
                return;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// The packet limit rumqttc is given: room for a message of `max_message_bytes` and its topic.
fn max_packet_of(config: &MqttConfig) -> usize {
    config.max_message_bytes.saturating_add(64 * 1024)
}

/// The records of `records` that could never be sent: alone in a message (bare, or in an
/// array of one when records share messages) they exceed `max_message_bytes`, or their
/// PUBLISH packet exceeds `max_packet`. With why, for the dead-letter tree.
fn oversize_records(config: &MqttConfig, max_packet: usize, records: &[OutRecord]) -> Vec<(u64, String)> {
    let framing = if config.records_per_message <= 1 { 0 } else { 2 };
    records
        .iter()
        .filter_map(|record| {
            let message = record.payload.len() + framing;
            if message > config.max_message_bytes {
                return Some((
                    record.seq,
                    format!(
                        "record of {message} bytes exceeds max_message_bytes {}",
                        config.max_message_bytes
                    ),
                ));
            }
            let packet = message + topic_of(config, record).len() + PUBLISH_OVERHEAD;
            (packet > max_packet).then(|| {
                (record.seq, format!("MQTT packet of {packet} bytes exceeds the limit of {max_packet} bytes"))
            })
        })
        .collect()
}

/// Topic of a record.
fn topic_of(config: &MqttConfig, record: &OutRecord) -> String {
    config.topic.replace("{device_id}", &config.device_id).replace("{type}", &record.kind)
}

/// Groups records into messages in order: consecutive records with the same topic share a JSON
/// array of at most `records_per_message` records and `max_message_bytes` bytes (the caller
/// has set aside records too large for a message of their own). With `records_per_message = 1` each payload is the bare record.
fn encode_messages(config: &MqttConfig, records: &[OutRecord]) -> Vec<(String, Vec<u8>)> {
    let mut messages: Vec<(String, Vec<u8>)> = Vec::new();
    if config.records_per_message <= 1 {
        return records.iter().map(|record| (topic_of(config, record), record.payload.clone())).collect();
    }
    let mut current: Option<(String, Vec<u8>, usize)> = None;
    for record in records {
        let topic = topic_of(config, record);
        let fits = current.as_ref().is_some_and(|(current_topic, payload, n)| {
            *current_topic == topic
                && *n < config.records_per_message
                // a comma before the record, the closing bracket after it
                && payload.len() + record.payload.len() + 2 <= config.max_message_bytes
        });
        if fits {
            let (_, payload, n) = current.as_mut().expect("checked above");
            payload.push(b',');
            payload.extend_from_slice(&record.payload);
            *n += 1;
        } else {
            if let Some((topic, mut payload, _)) = current.take() {
                payload.push(b']');
                messages.push((topic, payload));
            }
            let mut payload = Vec::with_capacity(record.payload.len() + 2);
            payload.push(b'[');
            payload.extend_from_slice(&record.payload);
            current = Some((topic, payload, 1));
        }
    }
    if let Some((topic, mut payload, _)) = current {
        payload.push(b']');
        messages.push((topic, payload));
    }
    messages
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(records_per_message: usize, max_message_bytes: usize) -> MqttConfig {
        MqttConfig {
            name: "hub".into(),
            broker: MqttUrl::parse("mqtt://127.0.0.1:1").unwrap(),
            tls: Default::default(),
            client_id: "c".into(),
            topic: "devices/{device_id}/{type}".into(),
            device_id: "gw".into(),
            username: None,
            password: None,
            records_per_message,
            max_message_bytes,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(30),
        }
    }

    fn record(seq: u64, kind: &str) -> OutRecord {
        OutRecord {
            seq,
            kind: kind.into(),
            group: String::new(),
            payload: format!("{{\"n\":{seq}}}").into_bytes(),
        }
    }

    fn check(config: &MqttConfig, records: &[OutRecord], expected: &[(&str, &str)]) {
        let got = encode_messages(config, records);
        let got: Vec<(String, String)> =
            got.into_iter().map(|(topic, payload)| (topic, String::from_utf8(payload).unwrap())).collect();
        let expected: Vec<(String, String)> =
            expected.iter().map(|(topic, payload)| ((*topic).to_owned(), (*payload).to_owned())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn one_record_per_message_sends_bare_objects_on_their_kind_topic() {
        check(
            &config(1, 1000),
            &[record(1, "window"), record(2, "batch")],
            &[("devices/gw/window", "{\"n\":1}"), ("devices/gw/batch", "{\"n\":2}")],
        );
    }

    #[test]
    fn batches_are_arrays_cut_by_topic_count_and_size() {
        let records = [record(1, "window"), record(2, "window"), record(3, "window"), record(4, "late")];
        check(
            &config(2, 1000),
            &records,
            &[
                ("devices/gw/window", "[{\"n\":1},{\"n\":2}]"),
                ("devices/gw/window", "[{\"n\":3}]"),
                ("devices/gw/late", "[{\"n\":4}]"),
            ],
        );
        // 16 bytes hold one record ("[{"n":1}]" is 9 bytes) but not two (17).
        check(
            &config(10, 16),
            &records[..2],
            &[("devices/gw/window", "[{\"n\":1}]"), ("devices/gw/window", "[{\"n\":2}]")],
        );
    }

    #[test]
    fn a_record_too_large_for_a_message_of_its_own_is_named() {
        let mut big = record(2, "window");
        big.payload = vec![b'x'; 30];
        let records = [record(1, "window"), big, record(3, "window")];
        // Bare records: 30 bytes exceed 20.
        assert_eq!(
            oversize_records(&config(1, 20), 1 << 20, &records),
            vec![(2, "record of 30 bytes exceeds max_message_bytes 20".to_owned())]
        );
        // In arrays: the brackets count, so 29 bytes of record make a message of 31.
        let mut edge = record(4, "window");
        edge.payload = vec![b'x'; 29];
        assert_eq!(
            oversize_records(&config(5, 30), 1 << 20, &[edge.clone()]),
            vec![(4, "record of 31 bytes exceeds max_message_bytes 30".to_owned())]
        );
        assert!(oversize_records(&config(1, 30), 1 << 20, &[edge.clone()]).is_empty());
        // The packet limit counts the topic and the PUBLISH header too.
        let packet = 29 + "devices/gw/window".len() + PUBLISH_OVERHEAD;
        assert_eq!(
            oversize_records(&config(1, 30), packet - 1, &[edge.clone()]),
            vec![(4, format!("MQTT packet of {packet} bytes exceeds the limit of {} bytes", packet - 1))]
        );
        assert!(oversize_records(&config(1, 30), packet, &[edge]).is_empty());
    }
}
