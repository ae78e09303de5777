//! Records when eddy was built, as a floor for a believable wall clock: a gateway whose clock
//! reads earlier than its own software was built has certainly not set its clock yet.
//!
//! `SOURCE_DATE_EPOCH` (reproducible builds, the Debian packaging) wins over the build time.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    let from_env = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|secs| secs.trim().parse::<u64>().ok());
    let secs = from_env.unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_secs()).unwrap_or(0)
    });
    println!("cargo:rustc-env=EDDY_BUILD_UNIX_SECS={secs}");
}
