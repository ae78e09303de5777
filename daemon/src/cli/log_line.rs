//! The writer every log line goes through: control characters inside a line are escaped, so
//! text from outside (an MQTT topic, a hub's error body, a TCP line) can never start a new
//! journal line of its own or drive the terminal.
//!
//! The `fmt` layer formats each event into one buffer and writes it with one `write_all`, so
//! this writer sees whole lines: only the final `\n` is the line's own.

use std::io::{self, Write};

/// stderr, one whole log line per `write`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EscapingStderr {
    /// ANSI colours on: the escape sequences come from the formatter (which escapes `ESC` in
    /// the values itself), so `ESC` passes.
    pub(crate) ansi: bool,
}

impl Write for EscapingStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().lock().write_all(&escape_line(buf, self.ansi))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EscapingStderr {
    type Writer = EscapingStderr;

    fn make_writer(&'a self) -> EscapingStderr {
        *self
    }
}

/// `line` with `\n` and `\r` written as `\n` and `\r`, other C0 and C1 controls and DEL as
/// `\u{..}` (`ESC` kept when `keep_esc`), tabs as they are; one final `\n` is kept.
pub(crate) fn escape_line(line: &[u8], keep_esc: bool) -> Vec<u8> {
    let (body, end) = match line.strip_suffix(b"\n") {
        Some(body) => (body, "\n"),
        None => (line, ""),
    };
    let text = String::from_utf8_lossy(body);
    let mut escaped = String::with_capacity(text.len() + end.len());
    for ch in text.chars() {
        match ch {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push('\t'),
            '\u{1b}' if keep_esc => escaped.push(ch),
            '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
                escaped.push_str(&format!("\\u{{{:x}}}", u32::from(ch)))
            }
            _ => escaped.push(ch),
        }
    }
    escaped.push_str(end);
    escaped.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, keep_esc: bool, expected: &str) {
        assert_eq!(String::from_utf8(escape_line(line.as_bytes(), keep_esc)).unwrap(), expected, "{line:?}");
    }

    #[test]
    fn only_the_final_line_end_survives() {
        check("WARN topic=a\nERROR forged line\r\n", false, "WARN topic=a\\nERROR forged line\\r\n");
        check("no end", false, "no end");
        check("a\tb\u{7}\u{7f}\u{85}é\n", false, "a\tb\\u{7}\\u{7f}\\u{85}é\n");
    }

    #[test]
    fn esc_passes_only_with_ansi_colours() {
        check("\u{1b}[33mWARN\u{1b}[0m x\n", true, "\u{1b}[33mWARN\u{1b}[0m x\n");
        check("\u{1b}[2J\n", false, "\\u{1b}[2J\n");
    }

    #[test]
    fn a_formatted_event_with_a_newline_in_a_field_stays_one_line() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let sink = captured.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer().with_ansi(false).without_time().with_writer(move || {
                let sink = sink.clone();
                Capture(sink)
            }),
        );
        tracing::subscriber::with_default(subscriber, || {
            let topic = "a\nERROR eddy: forged";
            tracing::warn!(%topic, "Rejected a message: {}", "b\rc");
        });
        let text = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text:?}");
        assert!(text.contains("topic=a\\nERROR eddy: forged"), "{text:?}");
        assert!(text.contains("b\\rc"), "{text:?}");
    }

    /// A writer like [`EscapingStderr`] that keeps what it is given.
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(&escape_line(buf, false));
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
