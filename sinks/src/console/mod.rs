//! The console sink: records as human-readable tables on stdout, one heading block per group,
//! like Spark's console sink.

mod config;
mod row;
mod table;

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{reason_of, SinkError};
use crate::record::{Delivery, OutRecord};

pub use crate::console::config::RawConsoleSink;

/// Writes records as tables to stdout or to an injected writer.
///
/// Each delivery is rendered into one string and written with one `write_all` under the
/// writer's lock, so a table is never interleaved with log lines written to the same stdout.
/// The write runs on tokio's blocking pool: a stdout piped into a slow reader must not stall a
/// runtime worker.
pub struct ConsoleSink {
    name: String,
    /// A std mutex, locked only inside blocking tasks and never across an `.await`; shared with
    /// the blocking task so that a cancelled delivery still finishes its write before the next.
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl ConsoleSink {
    /// A console sink writing to the process's stdout.
    pub fn stdout(name: &str) -> Self {
        Self::new(name, Box::new(io::stdout()))
    }

    /// A console sink writing to `writer` (tests inject a buffer or a failing writer).
    pub fn new(name: &str, writer: Box<dyn Write + Send>) -> Self {
        ConsoleSink { name: name.to_owned(), writer: Arc::new(Mutex::new(writer)) }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Writes `records` as tables and flushes. A write error (stdout closed: EPIPE) is
    /// `Offline`, never a panic; Rust ignores SIGPIPE, so the error does reach us.
    pub(crate) async fn deliver(&mut self, records: &[OutRecord]) -> Delivery {
        if records.is_empty() {
            return Delivery::Delivered;
        }
        let text = render(records);
        let writer = Arc::clone(&self.writer);
        let written = tokio::task::spawn_blocking(move || {
            let mut writer = writer.lock().unwrap_or_else(PoisonError::into_inner);
            writer.write_all(text.as_bytes()).and_then(|()| writer.flush())
        })
        .await;
        match written {
            Ok(Ok(())) => Delivery::Delivered,
            Ok(Err(source)) => Delivery::Offline { reason: reason_of(&SinkError::ConsoleWrite { source }) },
            Err(join_error) => {
                Delivery::Offline { reason: format!("console write task failed: {join_error}") }
            }
        }
    }

    /// Flushes the writer; a failure is logged, since there is nothing left to retry.
    pub(crate) async fn close(&mut self) {
        let writer = Arc::clone(&self.writer);
        let flushed = tokio::task::spawn_blocking(move || {
            writer.lock().unwrap_or_else(PoisonError::into_inner).flush()
        })
        .await;
        let reason = match flushed {
            Ok(Ok(())) => return,
            Ok(Err(source)) => reason_of(&SinkError::ConsoleWrite { source }),
            Err(join_error) => format!("console flush task failed: {join_error}"),
        };
        tracing::warn!(sink = %self.name, %reason, "Could not flush the console on close.");
    }
}

impl fmt::Debug for ConsoleSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("ConsoleSink").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Renders `records`: a heading block and tables for each run of consecutive records that
/// share a group.
fn render(records: &[OutRecord]) -> String {
    let mut text = String::new();
    for group in records.chunk_by(|a, b| a.group == b.group) {
        table::render_group(&mut text, &group[0].group, group.iter().map(|record| record.payload.as_slice()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Sink;

    /// A writer whose bytes the test can read after the sink took ownership of it.
    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl SharedBuffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for SharedBuffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().write(bytes)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Behaves like stdout whose reader went away.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    fn record(seq: u64, group: &str, payload: &str) -> OutRecord {
        OutRecord { seq, kind: "batch".into(), group: group.into(), payload: payload.into() }
    }

    #[tokio::test]
    async fn console_starts_a_heading_block_whenever_the_group_changes() {
        let buffer = SharedBuffer::default();
        let mut sink = ConsoleSink::new("console", Box::new(buffer.clone()));
        let records = [
            record(1, "Batch: 1", r#"{"sensor":"a","v":1}"#),
            record(2, "Batch: 1", r#"{"sensor":"b","v":2}"#),
            record(3, "Batch: 2", r#"{"sensor":"a","v":3}"#),
            record(4, "Batch: 1", r#"{"sensor":"c","v":4}"#),
        ];
        assert_eq!(sink.deliver(&records).await, Delivery::Delivered);
        assert_eq!(
            buffer.text(),
            "\
-------------------------------------------
Batch: 1
-------------------------------------------
+------+---+
|sensor|  v|
+------+---+
|a     |  1|
|b     |  2|
+------+---+

-------------------------------------------
Batch: 2
-------------------------------------------
+------+---+
|sensor|  v|
+------+---+
|a     |  3|
+------+---+

-------------------------------------------
Batch: 1
-------------------------------------------
+------+---+
|sensor|  v|
+------+---+
|c     |  4|
+------+---+

"
        );
    }

    #[tokio::test]
    async fn console_appends_each_delivery_and_ignores_an_empty_one() {
        let buffer = SharedBuffer::default();
        let mut sink = Sink::Console(ConsoleSink::new("console", Box::new(buffer.clone())));
        assert_eq!(sink.name(), "console");
        assert_eq!(sink.deliver(&[]).await, Delivery::Delivered);
        assert_eq!(buffer.text(), "");
        assert_eq!(sink.deliver(&[record(1, "g", "1")]).await, Delivery::Delivered);
        assert_eq!(sink.deliver(&[record(2, "g", "2")]).await, Delivery::Delivered);
        sink.close().await;
        let rule = "-------------------------------------------";
        assert_eq!(buffer.text(), format!("{rule}\ng\n{rule}\n1\n\n{rule}\ng\n{rule}\n2\n\n"));
    }

    #[tokio::test]
    async fn console_reports_offline_when_stdout_is_closed() {
        let mut sink = ConsoleSink::new("console", Box::new(ClosedPipe));
        let delivery = sink.deliver(&[record(1, "g", r#"{"a":1}"#)]).await;
        assert_eq!(delivery, Delivery::Offline { reason: "cannot write to the console: broken pipe".into() });
        // Closing a dead console logs and returns.
        sink.close().await;
    }
}
