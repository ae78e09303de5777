//! The built-in simulator (`kind = "simulator"`): seeded thermostats feeding the daemon in
//! process, and the `eddy simulate` clients that send them as JSON lines to a TCP source, a
//! serial port or an MQTT broker.

mod client;
mod config;
mod mqtt_client;
mod serial_client;
mod thermostat;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::ingest::{IngestClosed, IngestSender};
use crate::reading::Reading;
use crate::registry::{AdmittedSensors, SensorRegistry};
use crate::reject::RejectReason;
use crate::stats::SourceStats;
use eddy_common::wall_clock_ms;

pub use crate::simulator::client::{simulate_tcp, SimulateError, SimulateOptions, SimulateReport};
pub use crate::simulator::config::{RawSimulatorSource, SimulatorConfig};
pub use crate::simulator::mqtt_client::{
    simulate_mqtt, SimulateMqttError, SimulateMqttOptions, SimulateMqttReport,
};
pub use crate::simulator::serial_client::{
    simulate_serial, SimulateSerialError, SimulateSerialOptions, SimulateSerialReport,
};
pub use crate::simulator::thermostat::{ThermostatMode, ThermostatSample, Thermostats};

/// Why the simulator could not start or stopped early.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimulatorError {
    /// The rate is zero, negative, not a number, or too small or large for a timer.
    #[error("simulator rate must be a positive number of readings per second, got {rate}")]
    InvalidRate {
        /// The configured rate.
        rate: f64,
    },
    /// The daemon's durable log stopped accepting readings while the simulator was running.
    #[error("the durable log closed while the simulator was running")]
    IngestClosed,
}

/// The simulator source: every `1 / rate` seconds each thermostat produces one reading, all
/// stamped with the wall clock, handed over in batches without waiting for durability.
///
/// Ticks missed while the ingest channel was full are made up at once afterwards, so the
/// long-run rate stays as configured (readings are generated late, not dropped).
#[derive(Debug)]
pub struct SimulatorSource {
    thermostats: Thermostats,
    round_period: Duration,
    rate: f64,
    source_idx: usize,
    admitted: AdmittedSensors,
    stats: Arc<SourceStats>,
}

/// Most readings in one batch; a round of many thermostats is split.
const MAX_BATCH_READINGS: usize = 1024;

impl SimulatorSource {
    /// A simulator handing over its readings as source number `source_idx`, with its sensor
    /// ids admitted through `registry` and counted in `stats`.
    pub fn new(
        config: SimulatorConfig,
        source_idx: usize,
        registry: Arc<SensorRegistry>,
        stats: Arc<SourceStats>,
    ) -> Result<SimulatorSource, SimulatorError> {
        let round_period =
            period_for_rate(config.rate).ok_or(SimulatorError::InvalidRate { rate: config.rate })?;
        Ok(SimulatorSource {
            thermostats: Thermostats::new(config.sensors, config.seed),
            round_period,
            rate: config.rate,
            source_idx,
            admitted: AdmittedSensors::new(registry),
            stats,
        })
    }

    /// Generates readings until `shutdown` is cancelled; the round being generated is handed
    /// over before it returns. Fails only if the durable log closes.
    pub async fn run(self, ingest: IngestSender, shutdown: CancellationToken) -> Result<(), SimulatorError> {
        let span = tracing::info_span!("simulator", source = %self.stats.name);
        self.run_in_span(ingest, shutdown).instrument(span).await
    }

    async fn run_in_span(
        mut self,
        ingest: IngestSender,
        shutdown: CancellationToken,
    ) -> Result<(), SimulatorError> {
        let mut ticks = tokio::time::interval(self.round_period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        info!(sensors = self.thermostats.count(), rate = self.rate, "Simulator started.");
        self.stats.set_up(true);
        let mut warned_about_cap = false;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let now_ms = wall_clock_ms();
            let mut batch = Vec::with_capacity(self.thermostats.count().min(MAX_BATCH_READINGS));
            for _ in 0..self.thermostats.count() {
                self.stats.add_received(1);
                match self.next_admitted_reading(now_ms) {
                    Some(reading) => batch.push(reading),
                    None => {
                        self.stats.add_rejected(RejectReason::TooManySensors);
                        if !warned_about_cap {
                            warned_about_cap = true;
                            warn!(
                                "Sensor cap reached; readings of further simulated sensors are only counted."
                            );
                        }
                    }
                }
                if batch.len() == MAX_BATCH_READINGS {
                    self.hand_over(&ingest, std::mem::take(&mut batch)).await?;
                }
            }
            if !batch.is_empty() {
                self.hand_over(&ingest, batch).await?;
            }
        }
        self.stats.set_up(false);
        info!("Simulator stopped.");
        Ok(())
    }

    fn next_admitted_reading(&mut self, now_ms: i64) -> Option<Reading> {
        let sample = self.thermostats.next_sample();
        let sensor = self.admitted.admit(&sample.sensor)?;
        let mut reading = sample.to_reading(now_ms);
        reading.sensor = sensor;
        Some(reading)
    }

    async fn hand_over(&self, ingest: &IngestSender, readings: Vec<Reading>) -> Result<(), SimulatorError> {
        let n_readings = u64::try_from(readings.len()).expect("a batch length fits in u64");
        ingest.send(self.source_idx, readings).await.map_err(|IngestClosed| SimulatorError::IngestClosed)?;
        self.stats.add_accepted(n_readings);
        Ok(())
    }
}

/// The time between two rounds at `rate` readings per second, if that is a usable period.
fn period_for_rate(rate: f64) -> Option<Duration> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    Duration::try_from_secs_f64(rate.recip()).ok().filter(|period| !period.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::ingest_channel;
    use std::num::NonZeroU32;

    fn source(sensors: u32, registry_cap: usize) -> (SimulatorSource, Arc<SourceStats>) {
        let config = SimulatorConfig { sensors: NonZeroU32::new(sensors).unwrap(), rate: 2.0, seed: 11 };
        let stats = Arc::new(SourceStats::new("simulator"));
        let registry = Arc::new(SensorRegistry::new(registry_cap));
        (SimulatorSource::new(config, 5, registry, stats.clone()).unwrap(), stats)
    }

    #[tokio::test(start_paused = true)]
    async fn simulator_source_hands_over_one_round_per_period_until_cancelled() {
        let (simulator, stats) = source(4, 100);
        let (ingest, mut receiver) = ingest_channel(2);
        let shutdown = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let run = tokio::spawn(simulator.run(ingest, shutdown.clone()));
        let mut rounds = Vec::new();
        for _ in 0..3 {
            let batch = receiver.recv().await.unwrap();
            assert_eq!(batch.source, 5);
            assert!(batch.durable.is_none());
            rounds.push(batch.readings);
        }
        // Rounds at 0 s, 0.5 s and 1 s of (paused, auto-advanced) time.
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        shutdown.cancel();
        run.await.unwrap().unwrap();
        let ids: Vec<&str> = rounds[0].iter().map(|reading| &*reading.sensor).collect();
        assert_eq!(ids, ["t-000", "t-001", "t-002", "t-003"]);
        let mut expected = Thermostats::new(NonZeroU32::new(4).unwrap(), 11);
        for reading in rounds.iter().flatten() {
            assert_eq!(reading.values, expected.next_reading(reading.ts_ms).values);
        }
        let snapshot = stats.snapshot();
        assert!(snapshot.accepted >= 12, "{snapshot:?}");
        assert_eq!(snapshot.received, snapshot.accepted);
    }

    #[tokio::test(start_paused = true)]
    async fn simulator_source_counts_sensors_past_the_registry_cap() {
        let (simulator, stats) = source(10, 6);
        let (ingest, mut receiver) = ingest_channel(2);
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(simulator.run(ingest, shutdown.clone()));
        let batch = receiver.recv().await.unwrap();
        shutdown.cancel();
        while receiver.recv().await.is_some() {}
        run.await.unwrap().unwrap();
        let ids: Vec<&str> = batch.readings.iter().map(|reading| &*reading.sensor).collect();
        assert_eq!(ids, ["t-000", "t-001", "t-002", "t-003", "t-004", "t-005"]);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.rejected_for(RejectReason::TooManySensors) * 6, snapshot.accepted * 4);
    }

    #[tokio::test]
    async fn simulator_source_reports_a_closed_durable_log() {
        let (simulator, _stats) = source(3, 10);
        let (ingest, receiver) = ingest_channel(1);
        drop(receiver);
        let result = simulator.run(ingest, CancellationToken::new()).await;
        assert_eq!(result, Err(SimulatorError::IngestClosed));
    }

    #[test]
    fn simulator_source_refuses_an_unusable_rate() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-300, 1e300] {
            let config = SimulatorConfig { rate, ..SimulatorConfig::default() };
            let stats = Arc::new(SourceStats::new("simulator"));
            let result = SimulatorSource::new(config, 0, Arc::new(SensorRegistry::new(1)), stats);
            assert!(matches!(result, Err(SimulatorError::InvalidRate { .. })), "rate {rate}");
        }
        assert_eq!(period_for_rate(4.0), Some(Duration::from_millis(250)));
    }
}
