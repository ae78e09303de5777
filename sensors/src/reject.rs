//! Why a line was rejected: a closed set of reasons, each with its own counter.

use std::fmt;

/// The reason a line was not accepted as a reading. Each reason has a stable snake_case
/// name used in logs, counters and the TCP `err` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Not valid JSON (or not valid CSV / line protocol for those formats).
    BadSyntax,
    /// Valid JSON, but not an object.
    NotObject,
    /// The line is not UTF-8.
    BadUtf8,
    /// No `sensor` key, or it is null.
    MissingSensor,
    /// `sensor` is empty, longer than 64 bytes, or not a string.
    BadSensor,
    /// No `ts` key, or it is null.
    MissingTs,
    /// `ts` is not an integer (or RFC 3339 string), or is negative or too large.
    BadTs,
    /// `ts` is further in the future than the configured limit.
    FutureTs,
    /// A required field is missing or null.
    MissingField,
    /// A field or tag has the wrong JSON type.
    WrongType,
    /// A number is NaN or infinite.
    NonFinite,
    /// A number is outside the schema's plausible range.
    OutOfRange,
    /// A tag value is not one of the schema's allowed values.
    BadTag,
    /// The line is longer than the configured maximum.
    LineTooLong,
    /// A new sensor id past the cap on distinct sensors.
    TooManySensors,
    /// A line cut short when its input went away (a serial device unplugged mid-line); its
    /// bytes are dropped, never glued to the next line.
    PartialLine,
    /// A complete line dropped because the durable log could not keep up and the source's
    /// bounded queue was full (a serial device cannot be paused).
    Overrun,
    /// An MQTT message whose payload is larger than the source's `max_payload_bytes`: read,
    /// acknowledged and dropped whole.
    MessageTooLarge,
    /// An MQTT message the client could not read at all (larger than the packet limit, or
    /// malformed) that the broker kept resending: eddy discarded its broker session to get
    /// past it, which also drops whatever the broker had queued behind it (counted once).
    UnreadableMessage,
}

impl RejectReason {
    /// Every reason, in counter order.
    pub const ALL: [RejectReason; 19] = [
        RejectReason::BadSyntax,
        RejectReason::NotObject,
        RejectReason::BadUtf8,
        RejectReason::MissingSensor,
        RejectReason::BadSensor,
        RejectReason::MissingTs,
        RejectReason::BadTs,
        RejectReason::FutureTs,
        RejectReason::MissingField,
        RejectReason::WrongType,
        RejectReason::NonFinite,
        RejectReason::OutOfRange,
        RejectReason::BadTag,
        RejectReason::LineTooLong,
        RejectReason::TooManySensors,
        RejectReason::PartialLine,
        RejectReason::Overrun,
        RejectReason::MessageTooLarge,
        RejectReason::UnreadableMessage,
    ];

    /// The stable name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadSyntax => "bad_syntax",
            RejectReason::NotObject => "not_object",
            RejectReason::BadUtf8 => "bad_utf8",
            RejectReason::MissingSensor => "missing_sensor",
            RejectReason::BadSensor => "bad_sensor",
            RejectReason::MissingTs => "missing_ts",
            RejectReason::BadTs => "bad_ts",
            RejectReason::FutureTs => "future_ts",
            RejectReason::MissingField => "missing_field",
            RejectReason::WrongType => "wrong_type",
            RejectReason::NonFinite => "non_finite",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::BadTag => "bad_tag",
            RejectReason::LineTooLong => "line_too_long",
            RejectReason::TooManySensors => "too_many_sensors",
            RejectReason::PartialLine => "partial_line",
            RejectReason::Overrun => "overrun",
            RejectReason::MessageTooLarge => "message_too_large",
            RejectReason::UnreadableMessage => "unreadable_message",
        }
    }

    /// Position of the reason in [`RejectReason::ALL`].
    pub fn index(self) -> usize {
        RejectReason::ALL.iter().position(|reason| *reason == self).expect("ALL lists every reason")
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected line: the reason, and a short human detail (which field, what was wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    /// The counted reason.
    pub reason: RejectReason,
    /// A short explanation for the log and the TCP `err` reply; never contains a newline.
    pub detail: String,
}

impl Rejection {
    /// A rejection with a detail message.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Rejection {
        let mut detail = detail.into();
        detail.retain(|c| c != '\n' && c != '\r');
        Rejection { reason, detail }
    }
}
