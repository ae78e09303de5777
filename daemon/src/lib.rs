//! eddy's daemon: wires sources, the durable log, the engine and the sinks together, and runs
//! them until a signal asks for a drain-first stop. `main.rs` is a thin shell around
//! [`cli::main`]; the daemon itself is [`run`].
//!
//! Modules by role (ARCHITECTURE.md has the code map):
//! - [`alloc`]: the global allocator of the static (musl) builds (a leaf: it imports nothing);
//! - [`config`]: the TOML file to a validated [`config::Config`];
//! - [`engine`]: windows and micro-batches as a pure state machine, and its output records;
//! - [`storage`]: the only module that touches sled (log, outbox, state, cursors, marks);
//! - `pipeline`: sources → ingest (durable log, acks) → aggregator (engine, commits);
//! - `delivery`: one task per sink over the outbox, and the set of them (reload);
//! - `ops`: the HTTP endpoint, telemetry, systemd, SIGHUP, the counters log, the panic report;
//! - `stats`: the counters the components publish (a leaf: it breaks the import cycles);
//! - [`cli`]: the subcommands;
//! - `run`: start-up order and the main loop.

#[cfg(target_os = "linux")]
pub mod alloc;
pub mod cli;
pub mod config;
pub mod engine;
pub mod storage;
mod wire;

mod delivery;
mod ops;
mod pipeline;
mod run;
mod stats;

/// The unit tests of the musl builds run on the binary's allocator too (`main.rs`).
#[cfg(all(test, target_os = "linux", target_env = "musl"))]
#[global_allocator]
static TEST_ALLOCATOR: alloc::LargeBlocksMapped = alloc::LargeBlocksMapped;

pub use crate::ops::panic::install_hook as install_panic_hook;
pub use crate::run::{run, run_with_reloads, RunError};
