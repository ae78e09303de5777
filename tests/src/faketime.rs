//! A wall clock the test moves while eddy runs: libfaketime preloaded into the real binary,
//! reading its offset from a file the test rewrites, with the monotonic clocks left real.
//!
//! What this relies on, checked on Debian's libfaketime 0.9.10 (`clock::libfaketime_*` keeps
//! checking it):
//! - `FAKETIME_TIMESTAMP_FILE` names a file holding the fake time spec; a relative offset
//!   (`+630720000`, `-1796280000`, in seconds) keeps the clock running at real speed from
//!   there. With `FAKETIME_NO_CACHE=1` the file is read again on every `CLOCK_REALTIME` read
//!   (about 10 µs each), so a rewrite takes effect at once; without it libfaketime caches the
//!   file for 10 s (`FAKETIME_CACHE_DURATION`).
//! - With `DONT_FAKE_MONOTONIC=1`, `CLOCK_MONOTONIC`, `CLOCK_MONOTONIC_RAW` and
//!   `CLOCK_BOOTTIME` are the kernel's (and cost no file read); without it libfaketime shifts
//!   all of them, `CLOCK_BOOTTIME` included, by the same offset, which no real board does.
//! - Only the process started with these variables is faked: the test itself, mosquitto and
//!   socat keep the real clock, so readings are stamped with real time as by a real sensor.
//! - The file is replaced by a rename, so libfaketime never reads a half-written spec.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

/// Twenty years of 365 days, in seconds (libfaketime's `y`).
pub const TWENTY_YEARS_SECS: i64 = 20 * 365 * 86_400;

/// Where Debian's package `libfaketime` puts the preload library.
pub fn libfaketime_path() -> anyhow::Result<PathBuf> {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/arm-linux-gnueabihf/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ];
    for candidate in candidates {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!(
        "libfaketime is not installed: the clock tests run eddy under a fake wall clock. Run \
         ./scripts/test-all.sh (it installs it with apt-get) or `apt-get install faketime`"
    )
}

/// The real wall clock, ms since the epoch.
pub fn real_now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("the real clock is after 1970");
    i64::try_from(since.as_millis()).expect("ms since 1970 fit in i64")
}

/// The fake wall clock of the processes started with [`FakeClock::env`]: an offset in whole
/// seconds from the real one, changed at any time with [`FakeClock::set_offset_secs`].
pub struct FakeClock {
    spec_path: PathBuf,
    library: String,
    offset_secs: i64,
}

impl FakeClock {
    /// A fake clock whose spec file lives in `dir`, starting at `offset_secs` from real time.
    pub fn new(dir: &Path, offset_secs: i64) -> anyhow::Result<FakeClock> {
        let library = libfaketime_path()?.display().to_string();
        let mut clock = FakeClock { spec_path: dir.join("faketime.spec"), library, offset_secs };
        clock.set_offset_secs(offset_secs)?;
        Ok(clock)
    }

    /// The environment that makes a process see this clock (for `Eddy::start_in_with_env`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", self.library.clone()),
            ("FAKETIME_TIMESTAMP_FILE", self.spec_path.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".to_owned()),
            ("DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]
    }

    /// Moves the fake clock to `offset_secs` from the real one, at once.
    pub fn set_offset_secs(&mut self, offset_secs: i64) -> anyhow::Result<()> {
        let staging = self.spec_path.with_extension("new");
        std::fs::write(&staging, format!("{offset_secs:+}\n")).context("writing the faketime spec")?;
        std::fs::rename(&staging, &self.spec_path).context("replacing the faketime spec")?;
        self.offset_secs = offset_secs;
        Ok(())
    }

    /// Moves the fake clock to the second `epoch_secs` (and on from there at real speed).
    pub fn set_epoch_secs(&mut self, epoch_secs: i64) -> anyhow::Result<()> {
        self.set_offset_secs(epoch_secs - real_now_ms() / 1000)
    }

    /// A board without a real-time clock after a power cut: a day after the epoch.
    pub fn set_1970(&mut self) -> anyhow::Result<()> {
        self.set_epoch_secs(86_400)
    }

    /// The current offset from real time, seconds.
    pub fn offset_secs(&self) -> i64 {
        self.offset_secs
    }
}

/// Borrowed `(name, value)` pairs of [`FakeClock::env`] plus `extra`.
pub fn env_pairs<'a>(
    owned: &'a [(&'static str, String)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    owned.iter().map(|(name, value)| (*name, value.as_str())).chain(extra.iter().copied()).collect()
}
