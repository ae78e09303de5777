//! Store and forward: one task per sink reads the outbox after the sink's durable cursor and
//! hands records to it (`sink_task`), current results first after an outage (`live`); the
//! sink set starts, restarts and retires those tasks
//! drain-first, on start-up and on a reload (`sink_set`).
//!
//! Architecture invariant: delivery reads the outbox and writes cursors and dead letters; it
//! never touches the log or the engine's state, and knows nothing of windows (records are
//! opaque JSON to it and to the sinks crate).

pub(crate) mod live;
pub(crate) mod sink_set;
pub(crate) mod sink_task;
