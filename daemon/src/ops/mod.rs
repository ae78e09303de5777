//! What the operator and the service manager see and do: the local HTTP endpoint (`api`), the
//! health verdict and status built from the components' counters (`telemetry`), the
//! Prometheus text made from that status (`metrics`), the counters log lines (`report`),
//! systemd's readiness and watchdog (`systemd`), SIGHUP (`reload`), and the panic report
//! (`panic`).
//!
//! Architecture invariant: ops only reads counters and positions; it changes the pipeline
//! solely through the reload channel the main loop serves.

pub(crate) mod api;
pub(crate) mod metrics;
pub(crate) mod panic;
pub(crate) mod reload;
pub(crate) mod report;
pub(crate) mod systemd;
pub(crate) mod telemetry;
