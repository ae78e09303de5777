//! The in-memory reading: one sensor's measurement at one event time, checked against a schema.

use std::sync::Arc;

use smallvec::SmallVec;

/// A reading's field values, by schema position: up to 4 held inline, so the common reading
/// (a thermostat has 3 fields) costs no allocation of its own.
pub type Values = SmallVec<[Option<f64>; 4]>;

/// A reading's tags, by schema position: up to 2 held inline.
pub type Tags = SmallVec<[Option<Arc<str>>; 2]>;

/// One validated reading.
///
/// `values` and `tags` are indexed by the position of the field or tag in the [`Schema`]
/// the reading was checked against, so the engine never looks names up on the hot path.
///
/// [`Schema`]: crate::Schema
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The sensor id: non-empty, at most [`MAX_SENSOR_BYTES`] bytes.
    pub sensor: Arc<str>,
    /// Event time, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// One slot per schema field; `None` when the (optional) field was absent or null.
    pub values: Values,
    /// One slot per schema tag; `None` when the (optional) tag was absent or null.
    pub tags: Tags,
}

/// The longest sensor id accepted, in bytes.
pub const MAX_SENSOR_BYTES: usize = 64;
