//! The serial source (`kind = "serial"`): lines from an RS-232/RS-485 adapter, read through
//! a device that may go away at any time.
//!
//! The behaviour is documented on [`SerialSource`].

mod config;
mod line_ends;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio::time::Instant;
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::framing::{Fill, Frame, LineFramer};
use crate::ingest::{IngestClosed, IngestSender};
use crate::parse::{LineDecoder, LineParser};
use crate::reading::Reading;
use crate::registry::SensorRegistry;
use crate::reject::RejectReason;
use crate::serial::line_ends::LineEnds;
use crate::stats::SourceStats;
use crate::tcp::warn_limit::{self, WarnLimiter};
use eddy_common::Backoff;
use eddy_common::{truncate_for_log, wall_clock_ms};

pub use crate::serial::config::{LineSeparator, RawSerialSource, SerialParity, SerialSourceConfig};

/// Why the serial source could not start or stopped early. A device that is missing or goes
/// away is not an error: the source waits for it.
#[derive(Debug, thiserror::Error)]
pub enum SerialSourceError {
    /// A setting is outside what a serial port supports.
    #[error("serial source setting `{field}`: {message}")]
    InvalidSetting {
        /// The config field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The daemon's durable log stopped accepting readings while the source was running.
    #[error("the durable log closed while the serial source on {path} was running")]
    IngestClosed {
        /// The port's path.
        path: PathBuf,
    },
}

/// A serial source, ready to [`run`](SerialSource::run).
///
/// # Lines
///
/// Lines are framed like TCP lines ([`LineFramer`](crate::LineFramer): bounded, blank lines
/// skipped, `\r\n` accepted), ended by `\n` or, with [`LineSeparator::Cr`], by `\r`. Garbage,
/// non-UTF-8 and over-long lines are counted rejections; the port keeps being read.
///
/// # A device that goes away
///
/// A USB adapter can be unplugged at any moment: the read then fails (`EIO`) or ends. The
/// source logs it once at WARN, counts a line it had only partly read as `partial_line` and
/// drops those bytes (never gluing them to the next line), hands over the complete lines it
/// had read, and reopens the path with capped exponential backoff and jitter
/// (`retry_min`..`retry_max`), logging the failed attempts at DEBUG only. A path missing at
/// start-up is treated the same way. When the port opens again the source logs it at INFO.
///
/// # Backpressure
///
/// A serial device cannot be paused, and the kernel drops bytes mid-line when nobody reads
/// them, so the source keeps reading while the durable log is busy: it holds up to
/// `max_pending_readings` readings and past that drops whole lines, counted as `overrun`.
/// Readings are handed over without waiting for durability (there is nobody to acknowledge
/// them to); readings read but not yet durable are lost if eddy dies, like bytes in a UART.
///
/// # Shutdown
///
/// On shutdown the source stops reading, hands over the complete lines read and returns; a
/// partial line is dropped.
#[derive(Debug)]
pub struct SerialSource {
    config: SerialSourceConfig,
    source_idx: usize,
    decoder: LineDecoder,
    /// Readings decoded and not yet handed over (at most `max_pending_readings`).
    pending: Vec<Reading>,
    rejection_warnings: WarnLimiter,
}

/// Why reading an open port stopped.
#[derive(Debug)]
enum PortEnd {
    Shutdown,
    /// The device went away; the text says how.
    Lost(String),
    IngestClosed,
}

impl SerialSource {
    /// A source for `config`, handing readings over as source number `source_idx`, decoded
    /// with `parser`, sensor ids admitted through `registry` and counted in `stats`. Checks
    /// the settings; the port is opened by [`run`](SerialSource::run).
    pub fn new(
        config: SerialSourceConfig,
        source_idx: usize,
        parser: Arc<LineParser>,
        registry: Arc<SensorRegistry>,
        stats: Arc<SourceStats>,
    ) -> Result<SerialSource, SerialSourceError> {
        let invalid = |field, message: &str| {
            Err(SerialSourceError::InvalidSetting { field, message: message.to_owned() })
        };
        if config.baud == 0 {
            return invalid("baud", "must be at least 1");
        }
        if !(5..=8).contains(&config.data_bits) {
            return invalid("data_bits", "must be 5, 6, 7 or 8");
        }
        if !(1..=2).contains(&config.stop_bits) {
            return invalid("stop_bits", "must be 1 or 2");
        }
        if config.max_pending_readings == 0 {
            return invalid("max_pending_readings", "must be at least 1");
        }
        if config.retry_min.is_zero() {
            return invalid("retry_min", "must be greater than zero");
        }
        if config.path.to_str().is_none() {
            return invalid("path", "must be valid UTF-8");
        }
        let decoder = LineDecoder::new(parser, registry, stats);
        Ok(SerialSource {
            config,
            source_idx,
            decoder,
            pending: Vec::new(),
            rejection_warnings: WarnLimiter::shared(warn_limit::SERIAL_REJECTED_LINE),
        })
    }

    /// Reads the port until `shutdown` is cancelled, reopening it whenever it goes away.
    /// Fails only if the durable log closes under it.
    pub async fn run(
        self,
        ingest: IngestSender,
        shutdown: CancellationToken,
    ) -> Result<(), SerialSourceError> {
        let span = tracing::info_span!(
            "serial_source",
            source = %self.decoder.stats().name,
            path = %self.config.path.display()
        );
        self.run_in_span(ingest, shutdown).instrument(span).await
    }

    async fn run_in_span(
        mut self,
        ingest: IngestSender,
        shutdown: CancellationToken,
    ) -> Result<(), SerialSourceError> {
        let mut backoff = Backoff::new(self.config.retry_min, self.config.retry_max);
        // True once a missing or lost device was reported, until it is back: the retries in
        // between are logged at DEBUG only.
        let mut reported_missing = false;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let port = match open_port(&self.config) {
                Ok(port) => port,
                Err(error) => {
                    let retry_in = backoff.next_delay();
                    if reported_missing {
                        debug!(%error, ?retry_in, "Serial port still unavailable.");
                    } else {
                        warn!(%error, "Cannot open the serial port; retrying with backoff until it is back.");
                        reported_missing = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(retry_in) => continue,
                    }
                }
            };
            if reported_missing {
                info!(baud = self.config.baud, "Serial port is back; reading.");
            } else {
                info!(baud = self.config.baud, "Serial port open; reading.");
            }
            backoff.reset();
            self.decoder.stats().set_up(true);
            let end = self.read_port(port, &ingest, &shutdown).await;
            self.decoder.stats().set_up(false);
            // Complete lines read before the end are handed over whatever the end was.
            if !self.pending.is_empty() {
                let readings = std::mem::take(&mut self.pending);
                if ingest.send(self.source_idx, readings).await.is_err() {
                    return Err(SerialSourceError::IngestClosed { path: self.config.path.clone() });
                }
            }
            match end {
                PortEnd::Shutdown => break,
                PortEnd::IngestClosed => {
                    return Err(SerialSourceError::IngestClosed { path: self.config.path.clone() })
                }
                PortEnd::Lost(how) => {
                    warn!(error = %how, "Serial device went away; reopening with backoff.");
                    reported_missing = true;
                    let retry_in = backoff.next_delay();
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(retry_in) => {}
                    }
                }
            }
        }
        let suppressed = self.rejection_warnings.take_suppressed();
        if suppressed > 0 {
            warn!(suppressed, "Rejected more lines.");
        }
        info!("Serial source stopped.");
        Ok(())
    }

    /// Reads one opened port until it goes away, shutdown, or the log closes.
    async fn read_port(
        &mut self,
        port: SerialStream,
        ingest: &IngestSender,
        shutdown: &CancellationToken,
    ) -> PortEnd {
        let reader = LineEnds::new(port, self.config.line_separator);
        let mut framer = LineFramer::new(reader, self.decoder.limits().max_line_bytes);
        loop {
            self.decode_frames(&mut framer);
            enum Step {
                Shutdown,
                HandedOver,
                Filled(io::Result<Fill>),
                IngestClosed,
            }
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled() => Step::Shutdown,
                permit = ingest.reserve(), if !self.pending.is_empty() => match permit {
                    Ok(permit) => {
                        permit.send(self.source_idx, std::mem::take(&mut self.pending));
                        Step::HandedOver
                    }
                    Err(IngestClosed) => Step::IngestClosed,
                },
                filled = framer.fill() => Step::Filled(filled),
            };
            match step {
                Step::Shutdown => return PortEnd::Shutdown,
                Step::IngestClosed => return PortEnd::IngestClosed,
                Step::HandedOver | Step::Filled(Ok(Fill::Data)) => {}
                Step::Filled(Ok(Fill::Eof)) => {
                    self.count_partial_line(&framer);
                    return PortEnd::Lost("end of file".to_owned());
                }
                Step::Filled(Err(error)) => {
                    self.count_partial_line(&framer);
                    return PortEnd::Lost(error.to_string());
                }
            }
        }
    }

    /// Decodes the complete lines in the framer's buffer into `pending`, dropping (and
    /// counting) lines past `max_pending_readings`.
    fn decode_frames<R: AsyncRead + Unpin>(&mut self, framer: &mut LineFramer<R>) {
        let now_ms = wall_clock_ms();
        while let Some(frame) = framer.next_frame() {
            if self.pending.len() >= self.config.max_pending_readings {
                self.decoder.reject_unparsed(RejectReason::Overrun);
                self.warn_rejected(RejectReason::Overrun, "the durable log is not keeping up");
                continue;
            }
            match frame {
                Frame::Line(line) => match self.decoder.decode(line, now_ms) {
                    Ok(reading) => self.pending.push(reading),
                    Err(rejection) => self.warn_rejected(rejection.reason, &rejection.detail),
                },
                Frame::TooLong => {
                    self.decoder.reject_unparsed(RejectReason::LineTooLong);
                    self.warn_rejected(RejectReason::LineTooLong, "longer than max_line_bytes");
                }
            }
        }
    }

    /// Counts the unterminated bytes left in the framer when the device went away.
    fn count_partial_line<R: AsyncRead + Unpin>(&mut self, framer: &LineFramer<R>) {
        let partial_bytes = framer.buffered_len();
        if partial_bytes > 0 {
            self.decoder.reject_unparsed(RejectReason::PartialLine);
            debug!(partial_bytes, "Dropped a line cut short by the device going away.");
        }
    }

    fn warn_rejected(&mut self, reason: RejectReason, detail: &str) {
        if let Some(suppressed) = self.rejection_warnings.allow(Instant::now()) {
            warn!(%reason, detail = %truncate_for_log(detail), suppressed, "Rejected a line.");
        }
    }
}

/// Opens the port with the configured line settings, without flow control.
fn open_port(config: &SerialSourceConfig) -> Result<SerialStream, tokio_serial::Error> {
    let data_bits = match config.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match config.parity {
        SerialParity::None => Parity::None,
        SerialParity::Odd => Parity::Odd,
        SerialParity::Even => Parity::Even,
    };
    let stop_bits = if config.stop_bits == 2 { StopBits::Two } else { StopBits::One };
    let path = config.path.to_str().expect("checked to be UTF-8 in SerialSource::new");
    tokio_serial::new(path, config.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(FlowControl::None)
        .open_native_async()
}
