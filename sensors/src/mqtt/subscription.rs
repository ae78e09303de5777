//! The MQTT source's event loop: the one task that polls rumqttc, hands readings to the log
//! and acknowledges each message, in order, once its readings are durable.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing,
    PubAck, PubRec, Publish, QoS, Request, StateError, SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::ingest::{Durability, IngestClosed, IngestSender, Mark};
use crate::mqtt::config::{MqttQos, MqttSourceConfig};
use crate::mqtt::payload::{decode_payload, PayloadRules};
use crate::mqtt::{MqttConnectionStats, MqttSourceError, REQUEST_CHANNEL_CAPACITY};
use crate::parse::LineDecoder;
use crate::reject::RejectReason;
use crate::tcp::warn_limit::{self, WarnLimiter};
use eddy_common::Backoff;
use eddy_common::{truncate_for_log, wall_clock_ms};

/// How long a stopping source may take to write its last acknowledgements and disconnect.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// A broker that does not read our acknowledgements for this long is treated as gone.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// While a connection keeps failing for the same reason, it is logged again this often.
const FAILURE_REMINDER_EVERY: Duration = Duration::from_secs(60);
/// After the log refused a message (disk budget full, a failed write), the connection is
/// dropped and made again this much later, so that the broker redelivers what stays
/// unacknowledged. Without it those messages would wait for the next unrelated reconnection,
/// and a broker that stops sending once its in-flight window of unacknowledged messages is
/// full would stall the source for good. While the log keeps refusing, the delay doubles up
/// to [`MAX_REDELIVERY_DELAY`] (with jitter), so that a full disk does not turn into a
/// reconnection every few seconds; the first message stored again resets it.
const REDELIVERY_DELAY: Duration = Duration::from_secs(5);
/// The longest wait before reconnecting for a redelivery while the log keeps refusing.
const MAX_REDELIVERY_DELAY: Duration = Duration::from_secs(60);
/// Connections in a row that end on the same packet the client cannot read before eddy
/// discards its broker session to get past it (see [`Subscription::note_unreadable`]).
const UNREADABLE_LIMIT: u32 = 3;

/// A message handed to the log (or rejected) and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    publish: Publish,
    answer: Answer,
}

#[derive(Debug)]
enum Answer {
    /// Waiting for the durability of its readings.
    Waiting(oneshot::Receiver<Durability>),
    /// The log answered.
    Known(Durability),
    /// No reading of it was accepted: acknowledge it at once.
    NothingStored,
}

/// A message handed to the log whose acknowledgement was lost with its connection.
#[derive(Debug)]
struct Orphan {
    fingerprint: u32,
    answer: Answer,
}

/// One step of the event loop.
enum Step {
    Shutdown,
    Answered(Durability),
    Event(Result<Event, ConnectionError>),
    /// Reconnect for the broker to redeliver refused messages.
    Redeliver,
}

/// The subscription: the one task polling rumqttc (its event loop), with everything raced in
/// `select!`. (Not an MQTT "session": that word is the broker's state for our client id, and
/// in the TCP source a numbered sender session.)
pub(crate) struct Subscription {
    client: AsyncClient,
    eventloop: EventLoop,
    /// What every new client starts from (a persistent session unless configured otherwise).
    options: MqttOptions,
    config: MqttSourceConfig,
    source_idx: usize,
    decoder: LineDecoder,
    rules: PayloadRules,
    stats: Arc<MqttConnectionStats>,
    ingest: IngestSender,
    connected: bool,
    /// Messages awaiting their acknowledgement, in arrival order.
    pending: VecDeque<InFlight>,
    /// The last message acknowledged under each packet id; the acknowledgement may not have
    /// reached the broker when a connection is lost.
    acked: AckedMessages,
    /// After a lost connection: messages the broker will redeliver that are (or are being)
    /// stored already, by packet id. Cleared at the first new message, or when the broker
    /// lost the session.
    orphans: HashMap<u16, Orphan>,
    backoff: Backoff,
    last_failure: Option<(String, Instant)>,
    rejection_warnings: WarnLimiter,
    refusal_warnings: WarnLimiter,
    /// When to reconnect for the broker to redeliver refused messages.
    redeliver_at: Option<Instant>,
    /// How long after a refusal that is; grows while the log keeps refusing.
    redelivery_backoff: Backoff,
    held: u64,
    /// The last connection's end on a packet the client could not read, and how many
    /// connections in a row ended on it.
    unreadable: Option<(String, u32)>,
    /// Connect with a clean session (once it succeeds, go back to the configured one): the
    /// broker keeps resending a packet no client can read.
    discard_session: bool,
    /// SUBACKs received on this connection (the topics' first, then the `$SYS` one).
    n_subacks: usize,
    /// The broker refused the `$SYS` subscription (or dropped the connection for it): not
    /// asked again until eddy restarts.
    broker_stats_refused: bool,
}

impl Subscription {
    pub(crate) fn new(
        config: MqttSourceConfig,
        source_idx: usize,
        options: MqttOptions,
        decoder: LineDecoder,
        rules: PayloadRules,
        stats: Arc<MqttConnectionStats>,
        ingest: IngestSender,
    ) -> Subscription {
        let (client, eventloop) = AsyncClient::new(options.clone(), REQUEST_CHANNEL_CAPACITY);
        let backoff = Backoff::new(config.retry_min, config.retry_max);
        Subscription {
            client,
            eventloop,
            options,
            config,
            source_idx,
            decoder,
            rules,
            stats,
            ingest,
            connected: false,
            pending: VecDeque::new(),
            acked: AckedMessages::new(),
            orphans: HashMap::new(),
            backoff,
            last_failure: None,
            rejection_warnings: WarnLimiter::shared(warn_limit::MQTT_REJECTED_READING),
            refusal_warnings: WarnLimiter::per_second(),
            redeliver_at: None,
            redelivery_backoff: Backoff::new(REDELIVERY_DELAY, MAX_REDELIVERY_DELAY),
            held: 0,
            unreadable: None,
            discard_session: false,
            n_subacks: 0,
            broker_stats_refused: false,
        }
    }

    /// Seeds the acknowledged messages with what was stored before a restart (packet id,
    /// fingerprint), so that their redeliveries are recognised.
    pub(crate) fn with_stored(mut self, stored: &[(u16, u32)]) -> Subscription {
        for (packet_id, fingerprint) in stored {
            self.acked.fingerprints[usize::from(*packet_id)] = *fingerprint;
        }
        if !stored.is_empty() {
            info!(messages = stored.len(), "Recognising redeliveries of messages stored before the restart.");
        }
        self
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), MqttSourceError> {
        info!(topics = ?self.config.topics, qos = ?self.config.qos, "MQTT source starting.");
        loop {
            let acked = self.ack_answered().await;
            let step = match acked {
                // The connection is broken: a new client reconnects (below).
                Err(error) => Step::Event(Err(error)),
                Ok(()) => {
                    let front_waiting = self.front_is_waiting();
                    // Stop reading the connection while too many messages wait for the log:
                    // the broker (and the socket) hold the rest.
                    let may_poll = self.pending.len() < self.config.max_in_flight;
                    let redeliver_at = self.redeliver_at.filter(|_| self.connected);
                    let Subscription { eventloop, pending, .. } = &mut self;
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => Step::Shutdown,
                        answer = front_answer(pending), if front_waiting => Step::Answered(answer),
                        () = sleep_until_some(redeliver_at), if redeliver_at.is_some() => Step::Redeliver,
                        event = eventloop.poll(), if may_poll => Step::Event(event),
                    }
                }
            };
            match step {
                Step::Shutdown => break,
                Step::Answered(durability) => {
                    if let Some(front) = self.pending.front_mut() {
                        front.answer = Answer::Known(durability);
                    }
                }
                Step::Event(Ok(event)) => self.handle_event(event).await?,
                Step::Redeliver => {
                    info!("Reconnecting for the broker to redeliver the messages the log refused.");
                    self.redeliver_at = None;
                    self.abandon_connection(false).await?;
                }
                Step::Event(Err(error)) => {
                    let was_connected = self.connected;
                    if was_connected {
                        self.note_unreadable(&error);
                    }
                    self.abandon_connection(closed_by_broker(&error)).await?;
                    self.connection_lost(&error, was_connected);
                    let retry_in = self.backoff.next_delay();
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(retry_in) => {}
                    }
                }
            }
        }
        self.drain().await;
        info!(
            messages = self.stats.messages_total(),
            acked = self.stats.acked_total(),
            redelivered = self.stats.redelivered_total(),
            "MQTT source stopped."
        );
        Ok(())
    }

    fn front_is_waiting(&self) -> bool {
        matches!(self.pending.front(), Some(InFlight { answer: Answer::Waiting(_), .. }))
    }

    async fn handle_event(&mut self, event: Event) -> Result<(), MqttSourceError> {
        match event {
            Event::Incoming(Incoming::ConnAck(connack)) => self.connected(connack.session_present),
            Event::Incoming(Incoming::SubAck(suback)) => {
                self.n_subacks += 1;
                if self.n_subacks == 1 {
                    for (topic, code) in self.config.topics.iter().zip(&suback.return_codes) {
                        match code {
                            SubscribeReasonCode::Success(qos) => info!(%topic, ?qos, "Subscribed."),
                            SubscribeReasonCode::Failure => {
                                error!(%topic, "The broker refused the subscription (check its ACL).")
                            }
                        }
                    }
                    self.subscribe_broker_stats();
                } else if suback.return_codes.iter().all(|code| *code == SubscribeReasonCode::Failure) {
                    self.broker_stats_refused = true;
                    warn!(
                        topic = MqttSourceConfig::BROKER_DROPPED_TOPIC,
                        "The broker refused the subscription to its dropped-messages counter: drops \
                         at the broker stay invisible to eddy (set broker_stats = false to not ask)."
                    );
                }
            }
            Event::Incoming(Incoming::Publish(publish)) => self.handle_publish(publish).await?,
            Event::Incoming(_) | Event::Outgoing(_) => {}
        }
        Ok(())
    }

    /// A CONNACK accepted the connection: subscribe (again). A connection made only to
    /// discard the broker's session is dropped at once for a persistent one.
    fn connected(&mut self, session_present: bool) {
        if self.discard_session {
            self.discard_session = false;
            let (failure, n_connections) = self.unreadable.take().unwrap_or_default();
            self.decoder.reject_unparsed(RejectReason::UnreadableMessage);
            error!(
                %failure,
                connections = n_connections,
                "Discarding the broker's session: it kept resending a message the MQTT client \
                 cannot read. That message and any the broker had queued for eddy are lost; \
                 reconnecting with a persistent session."
            );
            // What the broker will not redeliver any more.
            self.orphans.clear();
            self.pending.clear();
            self.renew_client();
            return;
        }
        self.connected = true;
        self.stats.connected.store(true, Ordering::Relaxed);
        self.decoder.stats().set_up(true);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.decoder.stats().add_connection();
        self.backoff.reset();
        if self.last_failure.take().is_some() {
            info!(session_present, "Connected to the MQTT broker again.");
        } else {
            info!(session_present, "Connected to the MQTT broker.");
        }
        if !session_present {
            // The broker has no session for us: it will redeliver nothing.
            self.orphans.clear();
        }
        let qos = match self.config.qos {
            MqttQos::AtMostOnce => QoS::AtMostOnce,
            MqttQos::AtLeastOnce => QoS::AtLeastOnce,
            MqttQos::ExactlyOnce => QoS::ExactlyOnce,
        };
        let filters = self.config.topics.iter().map(|topic| SubscribeFilter::new(topic.clone(), qos));
        // The request channel carries only these requests: it has room.
        self.n_subacks = 0;
        if let Err(error) = self.client.try_subscribe_many(filters) {
            error!(%error, "Cannot queue the subscription request.");
        }
    }

    /// Subscribes to the broker's dropped-messages counter (QoS 0, retained by mosquitto, so
    /// the current value comes at once), after the topics' SUBACK and in its own request, so
    /// that a refusal cannot cost the topics.
    fn subscribe_broker_stats(&mut self) {
        if !self.config.broker_stats || self.broker_stats_refused {
            return;
        }
        if let Err(error) = self.client.try_subscribe(MqttSourceConfig::BROKER_DROPPED_TOPIC, QoS::AtMostOnce)
        {
            warn!(%error, "Cannot queue the subscription to the broker's dropped-messages counter.");
        }
    }

    /// A value of the broker's dropped-messages counter.
    fn broker_dropped(&mut self, payload: &[u8]) {
        let Some(total) = std::str::from_utf8(payload).ok().and_then(|text| text.trim().parse::<u64>().ok())
        else {
            debug!("The broker's dropped-messages counter is not a number.");
            return;
        };
        if self.decoder.stats().set_broker_dropped(total, std::time::Instant::now()) {
            warn!(
                broker_dropped_total = total,
                "The MQTT broker reports dropped messages. Its counter covers all its clients; \
                 for eddy's session it means readings lost at the broker (raise its \
                 max_queued_messages, see README \"Broker settings\")."
            );
        }
    }

    /// The connection ended on `error`. When that is a packet the client cannot read (larger
    /// than its limit, or malformed), a broker keeping a persistent session resends it first
    /// at every reconnection, and the source would never get past it. After
    /// [`UNREADABLE_LIMIT`] connections in a row ending on the same failure, the next
    /// connection is made with a clean session, which makes the broker discard the session:
    /// the one way MQTT 3.1.1 offers to get rid of a message the client cannot acknowledge.
    fn note_unreadable(&mut self, error: &ConnectionError) {
        let unreadable = matches!(
            error,
            ConnectionError::MqttState(StateError::Deserialization(cause))
                if !matches!(cause, rumqttc::Error::Io(_))
        );
        if !unreadable || self.config.clean_session {
            // With a clean session the broker drops the message itself at the reconnection.
            self.unreadable = None;
            return;
        }
        let failure = error.to_string();
        let n_connections = match &self.unreadable {
            Some((last, n_connections)) if *last == failure => n_connections + 1,
            _ => 1,
        };
        warn!(%failure, connections = n_connections, "The MQTT client cannot read a packet from the broker.");
        if n_connections >= UNREADABLE_LIMIT {
            self.discard_session = true;
        }
        self.unreadable = Some((failure, n_connections));
    }

    async fn handle_publish(&mut self, publish: Publish) -> Result<(), MqttSourceError> {
        if publish.topic == MqttSourceConfig::BROKER_DROPPED_TOPIC {
            self.broker_dropped(&publish.payload);
            return Ok(());
        }
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        if self.config.test_hold_messages {
            self.held += 1;
            info!(
                held = self.held,
                "Holding an MQTT message: not stored, not acknowledged (EDDY_TEST_MQTT_HOLD)."
            );
            return Ok(());
        }
        let acknowledged = publish.qos != QoS::AtMostOnce;
        if acknowledged && publish.dup {
            let orphan = self
                .orphans
                .remove(&publish.pkid)
                .filter(|orphan| orphan.fingerprint == fingerprint(&publish));
            if let Some(orphan) = orphan {
                if !matches!(orphan.answer, Answer::Known(Durability::Refused(_))) {
                    // Stored (or being stored) already: acknowledge it once that is done.
                    self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                    debug!(pkid = publish.pkid, "Redelivery of a message already handed to the log.");
                    self.pending.push_back(InFlight { publish, answer: orphan.answer });
                    return Ok(());
                }
            } else if self.acked.contains(&publish) {
                // Stored and acknowledged, but the acknowledgement was lost with the connection.
                self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                debug!(pkid = publish.pkid, "Redelivery of a message already acknowledged.");
                self.pending.push_back(InFlight { publish, answer: Answer::NothingStored });
                return Ok(());
            }
        } else if acknowledged {
            // The broker resends unacknowledged messages first: a new one ends the redelivery.
            self.orphans.clear();
        }

        let mut readings = Vec::new();
        let topic = publish.topic.as_str();
        let rejection_warnings = &mut self.rejection_warnings;
        decode_payload(
            &mut self.decoder,
            self.rules,
            topic,
            &publish.payload,
            wall_clock_ms(),
            &mut readings,
            &mut |rejection| {
                if let Some(suppressed) = rejection_warnings.allow(Instant::now()) {
                    warn!(
                        topic = %truncate_for_log(topic),
                        reason = %rejection.reason,
                        detail = %truncate_for_log(&rejection.detail),
                        suppressed,
                        "Rejected a reading."
                    );
                }
            },
        );
        let ingest_closed = || MqttSourceError::IngestClosed { broker: self.config.broker.to_string() };
        if !acknowledged {
            if !readings.is_empty() {
                self.ingest.send(self.source_idx, readings).await.map_err(|IngestClosed| ingest_closed())?;
            }
            return Ok(());
        }
        let answer = if readings.is_empty() {
            Answer::NothingStored
        } else {
            // Durable with the readings: after a crash the redelivery is recognised.
            let mark = Mark::Message { packet_id: publish.pkid, fingerprint: fingerprint(&publish) };
            let durable = self
                .ingest
                .send_marked(self.source_idx, readings, vec![mark])
                .await
                .map_err(|IngestClosed| ingest_closed())?;
            Answer::Waiting(durable)
        };
        self.pending.push_back(InFlight { publish, answer });
        Ok(())
    }

    /// Acknowledges the answered messages at the front of `pending`, in order. A message the
    /// log refused is not acknowledged: the broker keeps it and redelivers it after the next
    /// reconnection (a restart of eddy or of the broker).
    ///
    /// The acknowledgements are written to the connection directly, not queued through
    /// rumqttc's request channel: the event loop takes one request per poll but reads ten
    /// packets per read, so under a backlog queued acknowledgements (and the messages waiting
    /// for them) would grow without bound.
    async fn ack_answered(&mut self) -> Result<(), ConnectionError> {
        let mut n_written = 0;
        while let Some(front) = self.pending.front_mut() {
            if let Answer::Waiting(answer) = &mut front.answer {
                match answer.try_recv() {
                    Ok(durability) => front.answer = Answer::Known(durability),
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        front.answer =
                            Answer::Known(Durability::Refused(Arc::from("the log dropped the batch")))
                    }
                }
            }
            if let Answer::Known(Durability::Refused(reason)) = &front.answer {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                if self.redeliver_at.is_none() {
                    self.redeliver_at = Some(Instant::now() + self.redelivery_backoff.next_delay());
                }
                if let Some(suppressed) = self.refusal_warnings.allow(Instant::now()) {
                    warn!(%reason, suppressed, "The log refused an MQTT message; it stays unacknowledged for the broker to redeliver.");
                }
                self.pending.pop_front();
                continue;
            }
            if !self.connected {
                // Acknowledgements cannot be written; the connection loss made these orphans.
                break;
            }
            if self.config.test_skip_acks {
                // Stored, never acknowledged: the state a crash before the PUBACK leaves.
                info!(
                    pkid = front.publish.pkid,
                    "Not acknowledging a stored MQTT message (EDDY_TEST_MQTT_NO_ACK)."
                );
                self.pending.pop_front();
                continue;
            }
            write_ack(&mut self.eventloop, &front.publish).await?;
            n_written += 1;
            self.stats.acked.fetch_add(1, Ordering::Relaxed);
            let acked = self.pending.pop_front().expect("the front exists");
            if matches!(acked.answer, Answer::Known(Durability::Durable)) {
                // The log takes messages again: the next refusal waits the shortest delay.
                self.redelivery_backoff.reset();
            }
            self.acked.record(&acked.publish);
        }
        if n_written > 0 {
            flush_acks(&mut self.eventloop).await?;
        }
        Ok(())
    }

    /// Leaves the current connection (lost, or dropped on purpose) for a new client, so that
    /// nothing of the old connection reaches the new one: rumqttc keeps the packets it read
    /// but had not yet handed out (its `events`) across its own reconnections, and eddy
    /// would acknowledge them there under packet ids the broker had not sent on it.
    ///
    /// The messages among them are handed to the log first, as if read before the loss:
    /// they become orphans like every message not acknowledged, and their redelivery is
    /// recognised. (Dropping them would be correct too, the broker redelivers them, but a
    /// message read just before a packet no client can read would then never be stored.)
    ///
    /// `closed_by_broker`: the broker ended the connection (as some do when a client
    /// subscribes where it may not).
    async fn abandon_connection(&mut self, closed_by_broker: bool) -> Result<(), MqttSourceError> {
        self.connected = false;
        let buffered: Vec<Publish> = self
            .eventloop
            .state
            .events
            .drain(..)
            .filter_map(|event| match event {
                Event::Incoming(Incoming::Publish(publish)) => Some(publish),
                _ => None,
            })
            .collect();
        if !buffered.is_empty() {
            debug!(messages = buffered.len(), "Handing over the messages read before the connection ended.");
        }
        for publish in buffered {
            self.handle_publish(publish).await?;
        }
        if closed_by_broker && self.n_subacks == 1 && self.config.broker_stats && !self.broker_stats_refused {
            // Lost between the `$SYS` subscription and its SUBACK: some brokers (AWS IoT)
            // drop a client that subscribes where it may not.
            self.broker_stats_refused = true;
            warn!("The connection ended right after subscribing to the broker's dropped-messages counter: not asking again.");
        }
        self.n_subacks = 0;
        self.set_disconnected();
        self.renew_client();
        Ok(())
    }

    /// A new client and event loop (no connection yet, nothing buffered): the configured
    /// session, or a clean one to discard the broker's.
    fn renew_client(&mut self) {
        let mut options = self.options.clone();
        if self.discard_session {
            options.set_clean_session(true);
        }
        (self.client, self.eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
    }

    /// The connection failed or was lost (the caller abandoned it): the failure is logged.
    fn connection_lost(&mut self, error: &ConnectionError, was_connected: bool) {
        self.stats.connection_failures.fetch_add(1, Ordering::Relaxed);

        let (operator_must_act, reason) = describe_failure(error);
        let now = Instant::now();
        let repeated = self.last_failure.as_ref().is_some_and(|(last_reason, logged_at)| {
            *last_reason == reason && now.duration_since(*logged_at) < FAILURE_REMINDER_EVERY
        });
        if repeated {
            debug!(%reason, "MQTT connection attempt failed again.");
            return;
        }
        self.last_failure = Some((reason.clone(), now));
        match (operator_must_act, was_connected) {
            (true, _) => error!(%reason, "Cannot connect to the MQTT broker; retrying with backoff."),
            (false, true) => {
                warn!(%reason, "Lost the connection to the MQTT broker; reconnecting with backoff.")
            }
            (false, false) => warn!(%reason, "Cannot connect to the MQTT broker; retrying with backoff."),
        }
    }

    /// The connection is gone (lost, or dropped on purpose): every message not known to be
    /// acknowledged at the broker becomes an orphan awaiting redelivery.
    fn set_disconnected(&mut self) {
        self.connected = false;
        self.stats.connected.store(false, Ordering::Relaxed);
        self.decoder.stats().set_up(false);
        // Packet ids are unique among a client's unacknowledged messages, so this holds at
        // most 65535 entries, a few bytes each (the payloads are dropped).
        for in_flight in self.pending.drain(..) {
            let orphan = Orphan { fingerprint: fingerprint(&in_flight.publish), answer: in_flight.answer };
            self.orphans.insert(in_flight.publish.pkid, orphan);
        }
    }

    /// Settles what was handed to the log: waits for its durability, writes the
    /// acknowledgements, disconnects. Bounded by [`DRAIN_TIMEOUT`].
    async fn drain(&mut self) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        if !self.connected {
            return;
        }
        let settled = async {
            while !self.pending.is_empty() {
                if self.ack_answered().await.is_err() {
                    return;
                }
                if self.front_is_waiting() {
                    let durability = front_answer(&mut self.pending).await;
                    if let Some(front) = self.pending.front_mut() {
                        front.answer = Answer::Known(durability);
                    }
                }
            }
        };
        if tokio::time::timeout_at(deadline, settled).await.is_err() || !self.pending.is_empty() {
            debug!(
                unacknowledged = self.pending.len(),
                "Stopped with messages unacknowledged; the broker redelivers them."
            );
        }
        // Messages arriving now are not acknowledged: the broker redelivers them.
        if self.client.try_disconnect().is_ok() {
            let disconnected = async {
                loop {
                    match self.eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout_at(deadline, disconnected).await;
        }
    }
}

/// Sleeps until `at` (the caller polls it only when it is `Some`).
async fn sleep_until_some(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Writes the acknowledgement of `publish` (PUBACK for QoS 1, PUBREC for QoS 2) into the
/// connection's write buffer, through rumqttc's state so that it stays consistent.
async fn write_ack(eventloop: &mut EventLoop, publish: &Publish) -> Result<(), ConnectionError> {
    let request = match publish.qos {
        QoS::AtMostOnce => return Ok(()),
        QoS::AtLeastOnce => Request::PubAck(PubAck::new(publish.pkid)),
        QoS::ExactlyOnce => Request::PubRec(PubRec::new(publish.pkid)),
    };
    let Some(network) = eventloop.network.as_mut() else {
        return Err(ConnectionError::MqttState(StateError::ConnectionAborted));
    };
    if let Some(packet) = eventloop.state.handle_outgoing_packet(request)? {
        network.write(packet).await?;
    }
    Ok(())
}

/// Sends the written acknowledgements.
async fn flush_acks(eventloop: &mut EventLoop) -> Result<(), ConnectionError> {
    let Some(network) = eventloop.network.as_mut() else {
        return Err(ConnectionError::MqttState(StateError::ConnectionAborted));
    };
    match tokio::time::timeout(ACK_FLUSH_TIMEOUT, network.flush()).await {
        Ok(flushed) => Ok(flushed?),
        Err(_) => Err(ConnectionError::FlushTimeout),
    }
}

/// The durability answer of the oldest message; pending forever when it has one already.
async fn front_answer(pending: &mut VecDeque<InFlight>) -> Durability {
    match pending.front_mut() {
        Some(InFlight { answer: Answer::Waiting(answer), .. }) => {
            answer.await.unwrap_or_else(|_| Durability::Refused(Arc::from("the log dropped the batch")))
        }
        _ => std::future::pending().await,
    }
}

/// A fingerprint of the last message acknowledged under each packet id (MQTT packet ids are
/// 16 bits, so a broker can have at most 65535 messages unacknowledged to one client: this
/// covers every redelivery). 256 KiB, allocated once per MQTT source. After a restart it
/// starts from the messages stored before ([`Subscription::with_stored`]).
///
/// A redelivered message (DUP) whose packet id, topic and payload match was stored already.
/// A 32-bit hash can collide, but only between messages under the same packet id, both
/// flagged DUP: one in four billion of those would be acknowledged without being stored.
struct AckedMessages {
    fingerprints: Box<[u32]>,
}

impl AckedMessages {
    fn new() -> AckedMessages {
        AckedMessages { fingerprints: vec![0; usize::from(u16::MAX) + 1].into_boxed_slice() }
    }

    fn record(&mut self, publish: &Publish) {
        self.fingerprints[usize::from(publish.pkid)] = fingerprint(publish);
    }

    fn contains(&self, publish: &Publish) -> bool {
        self.fingerprints[usize::from(publish.pkid)] == fingerprint(publish)
    }
}

/// A non-zero hash of the topic and payload (zero marks an empty slot): 64-bit FNV-1a folded
/// to 32 bits. It is stored (a [`Mark`]) and compared after a restart, possibly by a newer
/// eddy, so it must not change between builds, which std's hasher does not promise.
fn fingerprint(publish: &Publish) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let topic_len = u64::try_from(publish.topic.len()).unwrap_or(u64::MAX).to_be_bytes();
    for byte in topic_len.iter().chain(publish.topic.as_bytes()).chain(publish.payload.iter()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let folded = (hash >> 32) ^ (hash & u64::from(u32::MAX));
    u32::try_from(folded).expect("folded to 32 bits").max(1)
}

/// Whether the broker ended the connection (end of stream, reset), rather than eddy or its
/// client giving up on it.
fn closed_by_broker(error: &ConnectionError) -> bool {
    matches!(
        error,
        ConnectionError::MqttState(
            StateError::ConnectionAborted | StateError::Deserialization(rumqttc::Error::Io(_))
        ) | ConnectionError::Io(_)
    )
}

/// Whether an operator must act on a connection failure, and a clear reason.
fn describe_failure(error: &ConnectionError) -> (bool, String) {
    match error {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => {
                (true, "the broker refused the user name or password (bad credentials)".to_owned())
            }
            ConnectReturnCode::NotAuthorized => (
                true,
                "the broker refused the connection: not authorised (wrong user name or password, or \
                 no access for this client)"
                    .to_owned(),
            ),
            ConnectReturnCode::BadClientId => (true, "the broker refused the client id".to_owned()),
            ConnectReturnCode::RefusedProtocolVersion => {
                (true, "the broker does not speak MQTT 3.1.1".to_owned())
            }
            ConnectReturnCode::ServiceUnavailable => (false, "the broker is unavailable".to_owned()),
            ConnectReturnCode::Success => (false, "unexpected CONNACK".to_owned()),
        },
        ConnectionError::Tls(tls) => (true, format!("TLS failed: {tls}")),
        ConnectionError::Io(io) => (false, format!("I/O error: {io}")),
        ConnectionError::NetworkTimeout => (false, "the connection attempt timed out".to_owned()),
        other => (false, other.to_string()),
    }
}
