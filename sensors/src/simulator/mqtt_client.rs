//! `eddy simulate --mqtt URL --topic TEMPLATE`: publishes simulated thermostat readings to an
//! MQTT broker, one JSON reading per message (or a JSON array of one thermostat's successive
//! readings, `--per-message N`), and waits until the broker acknowledged them.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, QoS};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::mqtt::{mqtt_options, ConnectSettings, MqttBroker, MqttQos, MqttSetupError, MqttTls, Secret};
use crate::simulator::thermostat::Thermostats;
use crate::simulator::{period_for_rate, wall_clock_ms};

/// What [`simulate_mqtt`] publishes, and where.
#[derive(Debug, Clone)]
pub struct SimulateMqttOptions {
    /// The broker.
    pub broker: MqttBroker,
    /// Topic of each message; `{sensor}` is replaced by the thermostat's id.
    pub topic: String,
    /// QoS of the messages.
    pub qos: MqttQos,
    /// Client id (a clean session).
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Secret>,
    /// TLS files (with `mqtts://`).
    pub tls: Option<MqttTls>,
    /// Number of simulated thermostats.
    pub sensors: NonZeroU32,
    /// Readings per second per thermostat; `None` publishes as fast as the broker takes them.
    pub rate: Option<f64>,
    /// Total readings; `None` publishes until `shutdown` is cancelled.
    pub count: Option<u64>,
    /// Readings per message: 1 publishes each reading as one JSON object; more publishes a
    /// JSON array of that many successive readings of one thermostat (a device that buffers),
    /// event times 1 ms apart.
    pub per_message: NonZeroU32,
    /// Seed of the thermostats.
    pub seed: u64,
    /// How long to wait for the broker's acknowledgements once everything is published.
    pub ack_timeout: Duration,
    /// Stops publishing.
    pub shutdown: CancellationToken,
}

/// Why [`simulate_mqtt`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SimulateMqttError {
    /// The rate is zero, negative, not a number, or too small or large for a timer.
    #[error("rate must be a positive number of readings per second per sensor, got {rate}")]
    InvalidRate {
        /// The given rate.
        rate: f64,
    },
    /// The client could not be set up.
    #[error(transparent)]
    Setup(#[from] MqttSetupError),
    /// The connection failed or was lost (a clean session cannot resume, so this ends it).
    #[error("MQTT connection to {broker} failed after {published} messages: {reason}")]
    Connection {
        /// The broker.
        broker: String,
        /// Messages published before the failure.
        published: u64,
        /// What rumqttc said.
        reason: String,
    },
    /// Some messages were still unacknowledged when `ack_timeout` ran out.
    #[error("{broker} acknowledged {acked} of {published} messages within {waited:?}")]
    AckTimeout {
        /// The broker.
        broker: String,
        /// Messages published.
        published: u64,
        /// Messages acknowledged.
        acked: u64,
        /// How long the client waited.
        waited: Duration,
    },
}

/// What [`simulate_mqtt`] published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulateMqttReport {
    /// Messages published.
    pub published: u64,
    /// Readings in them.
    pub readings: u64,
    /// Messages the broker acknowledged (all of them with QoS 1 or 2; 0 with QoS 0).
    pub acked: u64,
    /// From connecting to the last acknowledgement.
    pub elapsed: Duration,
}

/// What the polling task reports.
#[derive(Debug, Clone, Default)]
struct Progress {
    acked: u64,
    failure: Option<String>,
}

/// Publishes simulated readings; returns once the broker acknowledged all of them.
pub async fn simulate_mqtt(options: SimulateMqttOptions) -> Result<SimulateMqttReport, SimulateMqttError> {
    let per_message = options.per_message.get();
    // A round gives each thermostat one message: `per_message` readings at `rate` each.
    let period = match options.rate {
        None => None,
        Some(rate) => Some(
            period_for_rate(rate / f64::from(per_message)).ok_or(SimulateMqttError::InvalidRate { rate })?,
        ),
    };
    let started = Instant::now();
    let broker = options.broker.to_string();
    let settings = ConnectSettings {
        broker: &options.broker,
        client_id: &options.client_id,
        clean_session: true,
        keep_alive: Duration::from_secs(30),
        username: options.username.as_deref(),
        password: options.password.as_ref(),
        tls: options.tls.as_ref(),
        max_packet_bytes: 64 * 1024,
    };
    let mqtt_options = mqtt_options(&settings)?;
    let (client, mut eventloop) = AsyncClient::new(mqtt_options, 1024);
    let (progress_tx, mut progress) = watch::channel(Progress::default());
    // The one task polling the event loop; it never waits on the client.
    let _poller = AbortOnDropHandle::new(tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::PubAck(_) | Incoming::PubComp(_))) => {
                    progress_tx.send_modify(|progress| progress.acked += 1)
                }
                Ok(_) => {}
                Err(error) => {
                    progress_tx.send_modify(|progress| progress.failure = Some(error.to_string()));
                    return;
                }
            }
        }
    }));
    let qos = match options.qos {
        MqttQos::AtMostOnce => QoS::AtMostOnce,
        MqttQos::AtLeastOnce => QoS::AtLeastOnce,
        MqttQos::ExactlyOnce => QoS::ExactlyOnce,
    };
    let mut thermostats = Thermostats::new(options.sensors, options.seed);
    let mut ticks = period.map(|period| {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        ticks
    });
    let per_round = if ticks.is_some() { thermostats.count() } else { 1 };
    let mut published: u64 = 0;
    let mut readings: u64 = 0;
    let mut payload = Vec::with_capacity(256);
    let failed = |published: u64, progress: &Progress| {
        progress.failure.clone().map(|reason| SimulateMqttError::Connection {
            broker: broker.clone(),
            published,
            reason,
        })
    };
    'publishing: while options.count.is_none_or(|count| readings < count) {
        if let Some(ticks) = &mut ticks {
            tokio::select! {
                biased;
                () = options.shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
        } else if options.shutdown.is_cancelled() {
            break;
        }
        let ts_ms = wall_clock_ms();
        for _ in 0..per_round {
            let left = options.count.map_or(u64::from(per_message), |count| count.saturating_sub(readings));
            if left == 0 {
                break 'publishing;
            }
            let in_message = u32::try_from(left.min(u64::from(per_message))).unwrap_or(per_message);
            let samples = thermostats.next_samples_of_one(in_message);
            payload.clear();
            if per_message > 1 {
                payload.push(b'[');
            }
            for (offset, sample) in (0_i64..).zip(&samples) {
                if offset > 0 {
                    payload.push(b',');
                }
                sample.write_json_line(ts_ms + offset, &mut payload);
                payload.pop();
            }
            if per_message > 1 {
                payload.push(b']');
            }
            let topic = options.topic.replace("{sensor}", &samples[0].sensor);
            // Waits while rumqttc's request channel is full (the broker's in-flight window).
            let sent = tokio::select! {
                sent = client.publish(topic, qos, false, payload.clone()) => sent.is_ok(),
                _ = progress.wait_for(|progress| progress.failure.is_some()) => false,
            };
            if !sent {
                break 'publishing;
            }
            published += 1;
            readings += u64::from(in_message);
        }
    }
    if let Some(error) = failed(published, &progress.borrow()) {
        return Err(error);
    }
    if qos != QoS::AtMostOnce {
        let all_acked =
            progress.wait_for(|progress| progress.acked >= published || progress.failure.is_some());
        let waited = tokio::time::timeout(options.ack_timeout, all_acked).await.map(drop);
        let snapshot = progress.borrow().clone();
        if let Some(error) = failed(published, &snapshot) {
            return Err(error);
        }
        if waited.is_err() {
            return Err(SimulateMqttError::AckTimeout {
                broker,
                published,
                acked: snapshot.acked,
                waited: options.ack_timeout,
            });
        }
    }
    let acked = progress.borrow().acked;
    let _ = client.try_disconnect();
    Ok(SimulateMqttReport { published, readings, acked, elapsed: started.elapsed() })
}
