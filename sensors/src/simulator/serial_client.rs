//! `eddy simulate --serial PATH`: writes simulated thermostat readings as JSON lines to a
//! serial port (or a pseudo-terminal), the way a dumb device would: no replies, no acks.

use std::io;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::time::MissedTickBehavior;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use crate::simulator::thermostat::Thermostats;
use crate::simulator::{period_for_rate, wall_clock_ms};

/// What [`simulate_serial`] writes, and where.
#[derive(Debug, Clone)]
pub struct SimulateSerialOptions {
    /// The port (or pseudo-terminal) to write to.
    pub path: PathBuf,
    /// Line speed.
    pub baud: u32,
    /// Number of simulated thermostats.
    pub sensors: NonZeroU32,
    /// Readings per second per thermostat; `None` writes as fast as the port takes them.
    pub rate: Option<f64>,
    /// Total readings; `None` writes until `shutdown` is cancelled.
    pub count: Option<u64>,
    /// Seed of the thermostats.
    pub seed: u64,
    /// Stops writing at a line boundary.
    pub shutdown: CancellationToken,
}

/// Why [`simulate_serial`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SimulateSerialError {
    /// The rate is zero, negative, not a number, or too small or large for a timer.
    #[error("rate must be a positive number of readings per second per sensor, got {rate}")]
    InvalidRate {
        /// The given rate.
        rate: f64,
    },
    /// The port could not be opened.
    #[error("cannot open serial port {}", .path.display())]
    Open {
        /// The port.
        path: PathBuf,
        /// What the serial library said.
        #[source]
        source: tokio_serial::Error,
    },
    /// Writing failed (the device went away).
    #[error("writing to serial port {} failed after {written} lines", .path.display())]
    Write {
        /// The port.
        path: PathBuf,
        /// Lines written completely before the failure.
        written: u64,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
}

/// Lines written and the time it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimulateSerialReport {
    /// Lines written completely.
    pub written: u64,
    /// From opening the port to the last write.
    pub elapsed: Duration,
}

/// Writes simulated readings to `options.path` until `count` are written or `shutdown`.
pub async fn simulate_serial(
    options: SimulateSerialOptions,
) -> Result<SimulateSerialReport, SimulateSerialError> {
    let period = match options.rate {
        None => None,
        Some(rate) => Some(period_for_rate(rate).ok_or(SimulateSerialError::InvalidRate { rate })?),
    };
    let started = Instant::now();
    let path_text = options.path.to_string_lossy().into_owned();
    let mut port = tokio_serial::new(path_text, options.baud)
        .open_native_async()
        .map_err(|source| SimulateSerialError::Open { path: options.path.clone(), source })?;
    let mut thermostats = Thermostats::new(options.sensors, options.seed);
    let mut ticks = period.map(|period| {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        ticks
    });
    let per_round = match ticks {
        Some(_) => thermostats.count(),
        // Flat out: about 4 KiB per write.
        None => 32,
    };
    let mut written: u64 = 0;
    let mut out = Vec::with_capacity(8 * 1024);
    while options.count.is_none_or(|count| written < count) {
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
        out.clear();
        let mut n_lines: u64 = 0;
        for _ in 0..per_round {
            if options.count.is_some_and(|count| written + n_lines >= count) {
                break;
            }
            thermostats.next_sample().write_json_line(ts_ms, &mut out);
            n_lines += 1;
        }
        // Whole lines per write, and the write is not raced against shutdown, so a stop never
        // leaves half a line on the wire.
        port.write_all(&out).await.map_err(|source| SimulateSerialError::Write {
            path: options.path.clone(),
            written,
            source,
        })?;
        written += n_lines;
    }
    port.flush().await.map_err(|source| SimulateSerialError::Write {
        path: options.path.clone(),
        written,
        source,
    })?;
    Ok(SimulateSerialReport { written, elapsed: started.elapsed() })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio_serial::{SerialPort, SerialStream};

    use super::*;

    #[tokio::test]
    async fn simulate_serial_writes_the_seeded_readings_as_json_lines() {
        let (mut master, slave) = SerialStream::pair().unwrap();
        let path = PathBuf::from(slave.name().unwrap());
        drop(slave);
        let options = SimulateSerialOptions {
            path,
            baud: 115_200,
            sensors: NonZeroU32::new(3).unwrap(),
            rate: None,
            count: Some(50),
            seed: 5,
            shutdown: CancellationToken::new(),
        };
        let reader = tokio::spawn(async move {
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            while text.iter().filter(|byte| **byte == b'\n').count() < 50 {
                let n_read = master.read(&mut buf).await.unwrap();
                text.extend_from_slice(&buf[..n_read]);
            }
            String::from_utf8(text).unwrap()
        });
        let report = simulate_serial(options).await.unwrap();
        assert_eq!(report.written, 50);
        let text = tokio::time::timeout(Duration::from_secs(20), reader).await.unwrap().unwrap();
        let mut expected = Thermostats::new(NonZeroU32::new(3).unwrap(), 5);
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["sensor"], expected.next_sample().sensor.as_ref(), "{line}");
        }
    }
}
