//! The panic strategy: abort, with a one-line report printed first.
//!
//! The release build has `panic = "abort"` (Cargo.toml; BENCHMARKS.md, "Panic strategy":
//! unwinding tables and landing pads would cost the binary several hundred KiB). A panic is a
//! bug, and the state of a task that panicked cannot be trusted, so eddy does not try to run
//! on or drain around it: the hook installed here writes one line to stderr (the journal under
//! systemd) — thread, source location, message with control characters escaped so that it
//! cannot forge a second journal line — and aborts. systemd sees SIGABRT and restarts eddy
//! (`Restart=on-failure`); what was acknowledged is in the store and replays.
//!
//! The hook aborts itself rather than return: a debug build (`panic = "unwind"`, the tests'
//! binary) then ends exactly as a release build does, instead of unwinding into tokio, which
//! would catch the panic and keep the process running.

use std::fmt::Write as _;
use std::io::Write as _;

/// The report line's prefix, which tests and operators grep for.
pub(crate) const REPORT_PREFIX: &str = "eddy: panic";

/// Installs the hook that prints the report line and aborts. Call first thing in `main`.
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let message = match info.payload().downcast_ref::<&str>() {
            Some(text) => *text,
            None => info.payload().downcast_ref::<String>().map_or("(no message)", String::as_str),
        };
        let location = info.location().map(|at| format!("{}:{}:{}", at.file(), at.line(), at.column()));
        let line = report_line(thread.name().unwrap_or("unnamed"), location.as_deref(), message);
        // One write of the whole line: other threads may be logging at the same moment.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        std::process::abort();
    }));
}

/// The report: `eddy: panic in thread 'NAME' at FILE:LINE:COL: MESSAGE; aborting`, one line
/// ending in `\n`, every control character of the message and thread name escaped.
pub(crate) fn report_line(thread: &str, location: Option<&str>, message: &str) -> String {
    let mut line = format!("{REPORT_PREFIX} in thread '{}'", escape(thread));
    if let Some(location) = location {
        let _ = write!(line, " at {}", escape(location));
    }
    let _ = writeln!(line, ": {}; aborting (a bug: please report it)", escape(message));
    line
}

/// `text` with control characters written as `\n`, `\r`, `\t`, `\\` and `\u{..}`.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            ch if ch.is_control() => {
                let _ = write!(escaped, "\\u{{{:x}}}", u32::from(ch));
            }
            ch => escaped.push(ch),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_one_line_with_control_characters_escaped() {
        let line = report_line(
            "tokio-runtime-worker",
            Some("daemon/src/run/mod.rs:10:5"),
            "bad\nFAKE journal line\r\u{1b}[31m \\",
        );
        assert_eq!(
            line,
            "eddy: panic in thread 'tokio-runtime-worker' at daemon/src/run/mod.rs:10:5: \
             bad\\nFAKE journal line\\r\\u{1b}[31m \\\\; aborting (a bug: please report it)\n"
        );
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(
            report_line("main", None, "x"),
            "eddy: panic in thread 'main': x; aborting (a bug: please report it)\n"
        );
    }
}
