//! The hand-off from sources to the daemon's durable log, with the durability acknowledgement.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::reading::Reading;

/// Readings one source hands over in one go.
#[derive(Debug)]
pub struct IngestBatch {
    /// Index of the source in the daemon's list of sources.
    pub source: usize,
    /// The validated readings, in arrival order.
    pub readings: Vec<Reading>,
    /// Answered once the readings are durable (or refused); `None` when the source does not
    /// need to know (the simulator).
    pub durable: Option<oneshot::Sender<Durability>>,
    /// What the source records with these readings so that a resend after a crash is
    /// recognised (see [`Mark`]); durable together with them, in the same log chunk.
    pub marks: Vec<Mark>,
}

/// A source's note of what a batch settles, stored atomically with the batch's readings (in
/// the same log chunk) and committed with the engine state, so that after any crash the source
/// gets back exactly what was durable ([`StoredMarks`]) and can recognise a resend of readings
/// that were stored but whose acknowledgement was lost. That makes ingest exactly-once for
/// senders that can be recognised: numbered TCP sessions and MQTT QoS 1/2 redeliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// Lines `first..=last` of the numbered TCP session `session` are settled (stored or
    /// rejected) by this batch. `renumbered`: the first batch since the sender (re)declared
    /// its numbering, which ends a refusal (see the daemon's ingest).
    Lines {
        /// The session id the sender chose.
        session: Arc<str>,
        /// The first line number the batch settles.
        first: u64,
        /// The last line number the batch settles.
        last: u64,
        /// The sender declared its numbering right before this batch.
        renumbered: bool,
    },
    /// The MQTT message under `packet_id` whose topic and payload hash to `fingerprint` is
    /// stored by this batch.
    Message {
        /// The MQTT packet id.
        packet_id: u16,
        /// A stable hash of the topic and payload (never 0).
        fingerprint: u32,
    },
    /// The source forgot this session (its table was full); the store forgets it too.
    ForgetSession {
        /// The session id.
        session: Arc<str>,
    },
}

/// What one source's marks say after a restart: the state of every mark that was durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredMarks {
    /// The last settled line number of each TCP session.
    pub sessions: Vec<(Arc<str>, u64)>,
    /// The fingerprint of the last message stored under each MQTT packet id.
    pub messages: Vec<(u16, u32)>,
}

/// The answer to an [`IngestBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// Every reading of the batch is on disk (flushed) and will be processed.
    Durable,
    /// The batch was not stored; the readings are not acknowledged. The string says why
    /// (disk budget full, store failed, shutting down).
    Refused(Arc<str>),
}

/// The sending side a source uses. Bounded: when the log cannot keep up, `send` waits, and the
/// source stops reading its input (backpressure instead of unbounded buffering).
#[derive(Debug, Clone)]
pub struct IngestSender {
    tx: mpsc::Sender<IngestBatch>,
}

/// The daemon's receiving side.
pub type IngestReceiver = mpsc::Receiver<IngestBatch>;

/// A bounded ingest channel of `capacity` batches.
pub fn ingest_channel(capacity: usize) -> (IngestSender, IngestReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    (IngestSender { tx }, rx)
}

/// The daemon stopped accepting readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the durable log is closed")]
pub struct IngestClosed;

impl IngestSender {
    /// Hands readings over without waiting for durability.
    pub async fn send(&self, source: usize, readings: Vec<Reading>) -> Result<(), IngestClosed> {
        self.tx
            .send(IngestBatch { source, readings, durable: None, marks: Vec::new() })
            .await
            .map_err(|_| IngestClosed)
    }

    /// Waits for room in the channel without handing anything over yet. Cancel-safe, so a
    /// source can race it against reading its input and keep reading (and counting what it
    /// must drop) while the log is busy.
    pub async fn reserve(&self) -> Result<IngestPermit<'_>, IngestClosed> {
        self.tx.reserve().await.map(|permit| IngestPermit { permit }).map_err(|_| IngestClosed)
    }

    /// Hands readings over; the returned receiver answers once they are durable.
    pub async fn send_acked(
        &self,
        source: usize,
        readings: Vec<Reading>,
    ) -> Result<oneshot::Receiver<Durability>, IngestClosed> {
        self.send_marked(source, readings, Vec::new()).await
    }

    /// Like [`IngestSender::send_acked`], with marks stored atomically with the readings.
    pub async fn send_marked(
        &self,
        source: usize,
        readings: Vec<Reading>,
        marks: Vec<Mark>,
    ) -> Result<oneshot::Receiver<Durability>, IngestClosed> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx
            .send(IngestBatch { source, readings, durable: Some(done_tx), marks })
            .await
            .map_err(|_| IngestClosed)?;
        Ok(done_rx)
    }
}

/// Room for one batch in the ingest channel, from [`IngestSender::reserve`].
#[derive(Debug)]
pub struct IngestPermit<'a> {
    permit: mpsc::Permit<'a, IngestBatch>,
}

impl IngestPermit<'_> {
    /// Hands readings over without waiting for durability.
    pub fn send(self, source: usize, readings: Vec<Reading>) {
        self.permit.send(IngestBatch { source, readings, durable: None, marks: Vec::new() });
    }
}
