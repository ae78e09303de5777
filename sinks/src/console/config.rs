//! The `kind = "console"` sink keys as written: none beyond those every sink has.

use serde::Deserialize;

/// One `[[sinks]]` entry with `kind = "console"`, as written (the daemon takes `kind`, `name`,
/// `records` and the delivery keys every sink has; the console has no keys of its own).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsoleSink {}
