//! Starts the configured sources: binds what must be bound (so a bad address fails start-up
//! with a clear error), then returns each source's run future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use eddy_common::GatewayClock;
use eddy_sensors::{IngestSender, LineParser, SensorRegistry, SourceStats, StoredMarks, TcpSource};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SourceConfig, SourceKind};

/// A source's run future.
pub(crate) type SourceFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Test switches read from the environment, compiled only with the `test-switches` feature
/// (the end-to-end tests build the binary with it; a release or device build has none of
/// this code, and tests/e2e/tidy.rs checks these names stay inside this module).
#[cfg(feature = "test-switches")]
mod test_switches {
    /// With `1`, MQTT sources receive and count messages but neither store nor acknowledge
    /// them (as if the log had stalled), so that a test can kill eddy while the broker still
    /// owes a redelivery.
    const MQTT_HOLD_VARIABLE: &str = "EDDY_TEST_MQTT_HOLD";

    /// With `1`, MQTT sources store messages but never write their acknowledgements, as if
    /// eddy died between the fsync and the PUBACK.
    const MQTT_NO_ACK_VARIABLE: &str = "EDDY_TEST_MQTT_NO_ACK";

    /// Sets the MQTT source's test knobs from the environment. Each switch that is on logs a
    /// warning naming it, which is also how a test sees that the binary has the feature.
    pub(super) fn apply_to_mqtt(
        mut mqtt: eddy_sensors::MqttSourceConfig,
        source_name: &str,
    ) -> eddy_sensors::MqttSourceConfig {
        mqtt.test_hold_messages = std::env::var_os(MQTT_HOLD_VARIABLE).is_some_and(|value| value == "1");
        if mqtt.test_hold_messages {
            tracing::warn!(source = %source_name, "{MQTT_HOLD_VARIABLE}=1: MQTT messages are held, never stored.");
        }
        mqtt.test_skip_acks = std::env::var_os(MQTT_NO_ACK_VARIABLE).is_some_and(|value| value == "1");
        if mqtt.test_skip_acks {
            tracing::warn!(source = %source_name, "{MQTT_NO_ACK_VARIABLE}=1: MQTT messages are stored, never acknowledged.");
        }
        mqtt
    }
}

/// Prepares source `source_idx`; `marks` is what it had made durable before (its numbered
/// sessions, its MQTT messages), so that it recognises a resend.
#[allow(clippy::too_many_arguments)] // one call site, the daemon's wiring
pub(crate) async fn start(
    source_idx: usize,
    source: &SourceConfig,
    config: &Config,
    registry: Arc<SensorRegistry>,
    stats: Arc<SourceStats>,
    ingest: IngestSender,
    stop: CancellationToken,
    marks: StoredMarks,
    clock: &GatewayClock,
) -> anyhow::Result<SourceFuture> {
    match &source.kind {
        SourceKind::Tcp { tcp: tcp_config, format } => {
            let parser = Arc::new(
                LineParser::new(*format, config.schema.clone(), config.limits).with_clock(clock.clone()),
            );
            let (listen, ack) = (tcp_config.listen, tcp_config.ack);
            let tcp = TcpSource::bind(tcp_config.clone(), source_idx, parser, registry, stats)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?
                .with_stored_marks(marks);
            tracing::info!(source = %source.name, address = %tcp.local_addr(), ack, "TCP source listening.");
            Ok(Box::pin(async move { tcp.run(ingest, stop).await.map_err(anyhow::Error::from) }))
        }
        SourceKind::Serial { serial, format } => {
            let parser = Arc::new(
                LineParser::new(*format, config.schema.clone(), config.limits).with_clock(clock.clone()),
            );
            let path = serial.path.display().to_string();
            let serial = eddy_sensors::SerialSource::new(serial.clone(), source_idx, parser, registry, stats)
                .with_context(|| format!("cannot set up the serial source on {path}"))?;
            Ok(Box::pin(async move { serial.run(ingest, stop).await.map_err(anyhow::Error::from) }))
        }
        SourceKind::Mqtt { mqtt, format } => {
            let parser = Arc::new(
                LineParser::new(*format, config.schema.clone(), config.limits).with_clock(clock.clone()),
            );
            let mqtt = (**mqtt).clone();
            // Test knobs (tests/e2e/mqtt.rs), only in a build with the `test-switches` feature.
            #[cfg(feature = "test-switches")]
            let mqtt = test_switches::apply_to_mqtt(mqtt, &source.name);
            let mqtt = eddy_sensors::MqttSource::new(mqtt, source_idx, parser, registry, stats)?
                .with_stored_marks(marks);
            Ok(Box::pin(async move { mqtt.run(ingest, stop).await.map_err(anyhow::Error::from) }))
        }
        SourceKind::Simulator(simulator) => {
            let (sensors, rate, seed) = (simulator.sensors, simulator.rate, simulator.seed);
            let simulator =
                eddy_sensors::SimulatorSource::new(simulator.clone(), source_idx, registry, stats)?;
            tracing::info!(source = %source.name, sensors, rate, seed, "Simulator started.");
            Ok(Box::pin(async move { simulator.run(ingest, stop).await.map_err(anyhow::Error::from) }))
        }
    }
}
