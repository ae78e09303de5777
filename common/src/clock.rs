//! The gateway's clocks: the wall clock (labels, the future-timestamp check), `CLOCK_BOOTTIME`
//! (elapsed time that no clock step can move, and that counts a suspended board), and whether
//! the wall clock can be trusted yet.
//!
//! A gateway without a real-time clock boots at 1970 or at the time `fake-hwclock` saved, and
//! jumps when NTP synchronises it. The wall clock is *trusted* when it is not earlier than
//! eddy's build and either the configuration says so (`ClockTrust::Always`, a board with a
//! battery-backed clock and no time daemon) or something says it is synchronised: the kernel
//! (`adjtimex` without `STA_UNSYNC`, which every NTP client clears once it steers the clock and
//! `settimeofday` sets again) or a file a time daemon writes once it has synchronised
//! (systemd-timesyncd's `/run/systemd/timesync/synchronized`).
//!
//! The two libc calls here are the workspace's second `unsafe` site (tests/e2e/tidy.rs lists
//! them); both only read the kernel's clocks into a zeroed struct this function owns.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970, saturating far ahead).
pub fn wall_clock_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the machine booted, suspended time included (`CLOCK_BOOTTIME`): never
/// moved by `date -s`, NTP steps or a wrong RTC. Falls back to the monotonic clock of the
/// standard library where `CLOCK_BOOTTIME` does not exist.
pub fn boottime_ms() -> i64 {
    boottime_ms_impl()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
// `time_t` and `c_long` are 32 bits on armv7: the conversions are not useless there.
#[allow(clippy::useless_conversion)]
fn boottime_ms_impl() -> i64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `now`, which lives for the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut now) };
    if rc != 0 {
        return monotonic_fallback_ms();
    }
    i64::from(now.tv_sec).saturating_mul(1000).saturating_add(i64::from(now.tv_nsec) / 1_000_000)
}

#[cfg(not(target_os = "linux"))]
fn boottime_ms_impl() -> i64 {
    monotonic_fallback_ms()
}

fn monotonic_fallback_ms() -> i64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    i64::try_from(start.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// What the kernel says of the wall clock: `Some(true)` when an NTP client steers it
/// (`adjtimex` status without `STA_UNSYNC`, return value not `TIME_ERROR`), `Some(false)` when
/// not, `None` when the call failed or the platform has none.
pub fn kernel_synchronized() -> Option<bool> {
    kernel_synchronized_impl()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn kernel_synchronized_impl() -> Option<bool> {
    // SAFETY: an all-zero `timex` is a valid value (integers only); with `modes = 0` adjtimex
    // only reads the kernel's state into it and needs no privilege.
    let mut timex: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: adjtimex writes into `timex`, which lives for the call.
    let state = unsafe { libc::adjtimex(&raw mut timex) };
    if state < 0 {
        return None;
    }
    Some(state != libc::TIME_ERROR && timex.status & libc::STA_UNSYNC == 0)
}

#[cfg(not(target_os = "linux"))]
fn kernel_synchronized_impl() -> Option<bool> {
    None
}

/// When this eddy was built (`SOURCE_DATE_EPOCH` when set), ms since the epoch: a wall clock
/// reading earlier than this has not been set.
pub fn build_floor_ms() -> i64 {
    env!("EDDY_BUILD_UNIX_SECS").parse::<i64>().unwrap_or(0).saturating_mul(1000)
}

/// When the wall clock may be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockTrust {
    /// When the kernel or a time daemon's file says it is synchronised (the default).
    #[default]
    Auto,
    /// Always (a battery-backed clock, no time daemon), as long as it is not before the build.
    Always,
}

/// The gateway's judgement of its wall clock, shared by the sources (the future-timestamp
/// check) and the daemon (which refreshes it, see [`GatewayClock::refresh`]). Cloning shares.
#[derive(Debug, Clone)]
pub struct GatewayClock {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    trust: ClockTrust,
    synchronized_file: Option<PathBuf>,
    floor_ms: i64,
    trusted: AtomicBool,
}

impl GatewayClock {
    /// A clock judged by `trust`, and by `synchronized_file` (trusted while it exists) when
    /// given; judged once now.
    pub fn new(trust: ClockTrust, synchronized_file: Option<PathBuf>) -> GatewayClock {
        GatewayClock::with_floor(trust, synchronized_file, build_floor_ms())
    }

    /// As [`GatewayClock::new`] with another floor than the build time (tests).
    pub fn with_floor(trust: ClockTrust, synchronized_file: Option<PathBuf>, floor_ms: i64) -> GatewayClock {
        let clock = GatewayClock {
            shared: Arc::new(Shared { trust, synchronized_file, floor_ms, trusted: AtomicBool::new(false) }),
        };
        clock.refresh();
        clock
    }

    /// A wall clock that is always believed (a library default, and tests that are not about
    /// clocks).
    pub fn trusted() -> GatewayClock {
        GatewayClock::with_floor(ClockTrust::Always, None, 0)
    }

    /// Whether the wall clock was trusted at the last [`GatewayClock::refresh`].
    pub fn is_trusted(&self) -> bool {
        self.shared.trusted.load(Ordering::Relaxed)
    }

    /// Judges the wall clock now (a system call and, with a synchronised-file, a `stat`) and
    /// returns the verdict, which [`GatewayClock::is_trusted`] then reports.
    pub fn refresh(&self) -> bool {
        let shared = &self.shared;
        let believable = wall_clock_ms() >= shared.floor_ms;
        let synchronized = match shared.trust {
            ClockTrust::Always => true,
            ClockTrust::Auto => {
                kernel_synchronized() == Some(true)
                    || shared.synchronized_file.as_ref().is_some_and(|path| path.exists())
            }
        };
        let trusted = believable && synchronized;
        shared.trusted.store(trusted, Ordering::Relaxed);
        trusted
    }

    /// Why the clock is not trusted, in words for `/health` (None when it is).
    pub fn distrust_reason(&self) -> Option<String> {
        if self.is_trusted() {
            return None;
        }
        let shared = &self.shared;
        if wall_clock_ms() < shared.floor_ms {
            return Some("it reads earlier than this eddy was built".to_owned());
        }
        Some(match &shared.synchronized_file {
            Some(path) => {
                format!("the kernel does not report it synchronised and {} does not exist", path.display())
            }
            None => "the kernel does not report it synchronised (no NTP client steers it)".to_owned(),
        })
    }
}

impl Default for GatewayClock {
    fn default() -> GatewayClock {
        GatewayClock::trusted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_moves_forward_with_real_time() {
        let before = boottime_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let elapsed = boottime_ms() - before;
        assert!((25..2_000).contains(&elapsed), "{elapsed} ms");
        assert!(before > 0);
    }

    #[test]
    fn the_build_floor_is_a_believable_time() {
        // Built after 2025-01-01 and not after now.
        assert!(build_floor_ms() > 1_735_689_600_000, "{}", build_floor_ms());
        assert!(build_floor_ms() <= wall_clock_ms());
    }

    #[test]
    fn a_synchronized_file_makes_the_clock_trusted_while_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("synchronized");
        let clock = GatewayClock::with_floor(ClockTrust::Auto, Some(flag.clone()), 0);
        // The kernel may say either on a test machine; with the file it is trusted whatever
        // the kernel says.
        std::fs::write(&flag, b"").unwrap();
        assert!(clock.refresh());
        assert!(clock.is_trusted());
        assert_eq!(clock.distrust_reason(), None);
        std::fs::remove_file(&flag).unwrap();
        assert_eq!(clock.refresh(), kernel_synchronized() == Some(true));
    }

    #[test]
    fn a_clock_before_the_floor_is_never_trusted() {
        let clock = GatewayClock::with_floor(ClockTrust::Always, None, i64::MAX);
        assert!(!clock.refresh());
        assert!(clock.distrust_reason().unwrap().contains("earlier than this eddy was built"));
        assert!(GatewayClock::trusted().is_trusted());
    }

    #[test]
    fn the_kernel_answers_adjtimex() {
        assert!(kernel_synchronized().is_some());
    }
}
