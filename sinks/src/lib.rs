//! Local outputs for eddy: sinks that take opaque outbox records and write them to the console
//! (Spark-style tables) or to a JSON-lines file.
//!
//! The crate knows nothing of windows or readings: a record is a sequence number, a kind, a
//! human heading and one JSON payload. The daemon owns the outbox, each sink's durable cursor and
//! the retry loop; a sink only says whether a slice of records got out ([`Delivery`]).
#![deny(missing_docs)]

mod console;
mod error;
mod file;
mod record;
mod sink;

pub use crate::console::ConsoleSink;
pub use crate::error::SinkError;
pub use crate::file::FileSink;
pub use crate::record::{Delivery, OutRecord};
pub use crate::sink::Sink;
