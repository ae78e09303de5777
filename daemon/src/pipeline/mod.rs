//! The durable path of a reading: the sources, the ingest task that makes each group of
//! readings durable in the log before it is acknowledged, and the aggregator that runs the
//! engine on the log and commits results, state and log position together.
//!
//! Architecture invariant: nothing here knows a sink or the operator's endpoint; what leaves
//! the pipeline is the outbox in the store and the [`crate::stats::Committed`] positions.

pub(crate) mod aggregate;
pub(crate) mod clock;
pub(crate) mod ingest;
pub(crate) mod marks;
pub(crate) mod sources;
