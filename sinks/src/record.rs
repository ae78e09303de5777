//! The records sinks move and the outcome of handing them over.

/// One record from the outbox.
///
/// Plain data: the daemon fills it in and sinks never look inside `payload` except to display
/// it (the console) or to keep line framing intact (the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Outbox sequence number; strictly increasing along the outbox.
    pub seq: u64,
    /// Record kind: `window`, `batch`, `late` or `raw`; used for filtering (and, later, topics).
    pub kind: String,
    /// Human heading chosen by the daemon; the console starts a new block when it changes,
    /// e.g. `Batch: 850000123 [2023-11-14 22:13:20.000 UTC, +2s)`.
    pub group: String,
    /// One JSON object, UTF-8, without a newline.
    pub payload: Vec<u8>,
}

/// What became of a delivery; an expected outcome, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Every record is out: written and flushed (console), written and fsynced (file), every
    /// message PUBACKed (MQTT), or answered 2xx (HTTP).
    Delivered,
    /// The sink refuses these records and retrying will not help. The local sinks never answer
    /// this; the HTTP uplink does for a 4xx other than 401, 403, 407, 408, 413 and 429.
    Rejected {
        /// Why, for the log.
        reason: String,
    },
    /// The hub refuses our credentials (HTTP 401, 403, 407): nothing is wrong with the records,
    /// and an operator fixing the token (or the hub) ends it. Retried like `Offline`, for as
    /// long as it lasts, and reported apart (`/health` warns).
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// Why, for the log.
        reason: String,
    },
    /// The batch as a whole is larger than the hub accepts (HTTP 413): the daemon splits it in
    /// halves and delivers the parts; a single record answered this is dead-lettered.
    TooLarge {
        /// Why, for the log.
        reason: String,
    },
    /// These records can never go out on this sink (each alone is larger than its largest
    /// message), so none of the batch was sent: the daemon dead-letters them with their
    /// reasons and delivers the others, in order.
    Oversize {
        /// Seqs of the records too large, with why (e.g. `record of N bytes exceeds
        /// max_message_bytes M`).
        records: Vec<(u64, String)>,
    },
    /// The output is unavailable right now (closed stdout, full disk, file replaced by a
    /// directory); retry the same records later with backoff. Part of them may already be out,
    /// so a retry can duplicate records.
    Offline {
        /// Why, naming the path or stream that failed, for the log.
        reason: String,
    },
}
