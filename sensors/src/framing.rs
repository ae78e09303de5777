//! Line framing: splits a byte stream into `\n`-terminated lines in a fixed-size buffer.
//!
//! The rules, shared by every line-oriented source (TCP now, serial later):
//!
//! - A line ends at `\n`; one trailing `\r` is stripped, so `\r\n` senders work.
//! - A line longer than `max_line_bytes` (without its terminator) is reported once as
//!   [`Frame::TooLong`], as soon as that is known, and its bytes are dropped up to the next `\n`
//!   without being buffered. Memory stays bounded whatever the sender does: the buffer is
//!   allocated once, `max_line_bytes + 1 + READ_CHUNK_BYTES` long, and never grows.
//! - Blank lines (empty, or only spaces and tabs) are skipped: they carry no reading, people
//!   typing into `nc` press Enter, and some devices send a bare `\r\n` as a keep-alive. They are
//!   not frames, so sources neither number nor count them.
//! - At end of input, a final line without its `\n` is returned as a line: a sender that closes
//!   right after `printf '{...}'` still gets its reading in. An unterminated line that was
//!   already reported as too long yields nothing more.
//! - Bytes are passed through as they are; checking UTF-8 is the parser's job.
//!
//! [`LineFramer::fill`] is cancel-safe (one `read` call; the buffer lives in the framer), so a
//! source can race it against its shutdown token in `select!` without losing bytes.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How many bytes one [`LineFramer::fill`] reads at most, besides room for a partial line.
///
/// 32 KiB holds a few hundred typical JSON readings, so one read becomes one reasonably sized
/// batch, while 64 connections still cost only about 2.3 MiB of buffers.
pub const READ_CHUNK_BYTES: usize = 32 * 1024;

/// One framed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A non-blank line without its terminator (and without a trailing `\r`).
    Line(&'a [u8]),
    /// A line longer than the maximum; its bytes are dropped up to the next `\n`.
    TooLong,
}

/// What a [`LineFramer::fill`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// New bytes are buffered (or the buffer still holds unread frames): call
    /// [`LineFramer::next_frame`] again.
    Data,
    /// The input ended. A final unterminated line, if any, is now available from
    /// [`LineFramer::next_frame`]; later calls return `Eof` without reading.
    Eof,
}

/// Splits what `reader` produces into lines; owns the read buffer.
#[derive(Debug)]
pub struct LineFramer<R> {
    reader: R,
    buf: Box<[u8]>,
    /// Start of the bytes not yet framed.
    start: usize,
    /// End of the bytes read.
    end: usize,
    /// `buf[start..scanned]` is known to hold no `\n`, so a slow sender does not make us
    /// rescan a partial line on every read.
    scanned: usize,
    max_line_bytes: usize,
    /// Dropping the rest of a line already reported as too long.
    discarding: bool,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineFramer<R> {
    /// A framer reading from `reader` that accepts lines of at most `max_line_bytes` bytes.
    pub fn new(reader: R, max_line_bytes: usize) -> LineFramer<R> {
        // Room for the longest partial line that may still turn out valid (the maximum plus a
        // `\r` waiting for its `\n`) and one read.
        let capacity = max_line_bytes.saturating_add(1).saturating_add(READ_CHUNK_BYTES);
        LineFramer {
            reader,
            buf: vec![0; capacity].into_boxed_slice(),
            start: 0,
            end: 0,
            scanned: 0,
            max_line_bytes,
            discarding: false,
            eof: false,
        }
    }

    /// Reads once from the input into the buffer. Cancel-safe.
    ///
    /// Call it when [`next_frame`](Self::next_frame) returned `None`. If the buffer is still
    /// full of unframed lines it returns [`Fill::Data`] without reading.
    pub async fn fill(&mut self) -> io::Result<Fill> {
        if self.eof {
            return Ok(Fill::Eof);
        }
        self.compact();
        if self.end == self.buf.len() {
            return Ok(Fill::Data);
        }
        let n_read = self.reader.read(&mut self.buf[self.end..]).await?;
        if n_read == 0 {
            self.eof = true;
            return Ok(Fill::Eof);
        }
        self.end += n_read;
        Ok(Fill::Data)
    }

    /// The next frame already in the buffer, or `None` when more input is needed (or, after
    /// [`Fill::Eof`], when the input is exhausted).
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        loop {
            let newline = memchr::memchr(b'\n', &self.buf[self.scanned..self.end]);
            let Some(offset) = newline else {
                return self.no_newline_frame();
            };
            let newline_idx = self.scanned + offset;
            let line_start = self.start;
            self.start = newline_idx + 1;
            self.scanned = self.start;
            if self.discarding {
                self.discarding = false;
                continue;
            }
            let line_end = strip_cr(&self.buf[line_start..newline_idx]) + line_start;
            if line_end - line_start > self.max_line_bytes {
                return Some(Frame::TooLong);
            }
            if is_blank(&self.buf[line_start..line_end]) {
                continue;
            }
            return Some(Frame::Line(&self.buf[line_start..line_end]));
        }
    }

    /// True once the input has ended.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Bytes read but not yet returned as frames (a partial line, or lines not yet framed).
    pub fn buffered_len(&self) -> usize {
        self.end - self.start
    }

    /// Size of the fixed read buffer, in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.reader
    }

    /// The underlying reader, the bytes buffered but not framed dropped.
    pub(crate) fn into_inner(self) -> R {
        self.reader
    }

    /// What [`next_frame`](Self::next_frame) returns when the buffered bytes hold no `\n`.
    fn no_newline_frame(&mut self) -> Option<Frame<'_>> {
        self.scanned = self.end;
        if self.discarding {
            self.start = self.end;
            return None;
        }
        let partial_len = self.end - self.start;
        // A partial line of `max + 1` bytes is still fine if its last byte is the `\r` of a
        // `\r\n` whose `\n` has not arrived yet.
        let may_still_fit = partial_len <= self.max_line_bytes
            || (partial_len == self.max_line_bytes + 1 && self.buf[self.end - 1] == b'\r');
        if !may_still_fit {
            self.start = self.end;
            self.discarding = !self.eof;
            return Some(Frame::TooLong);
        }
        if !self.eof || partial_len == 0 {
            return None;
        }
        let line_start = self.start;
        let line_end = strip_cr(&self.buf[line_start..self.end]) + line_start;
        self.start = self.end;
        if is_blank(&self.buf[line_start..line_end]) {
            return None;
        }
        Some(Frame::Line(&self.buf[line_start..line_end]))
    }

    /// Moves the unframed bytes to the front of the buffer to make room for a read.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.scanned -= self.start;
        self.start = 0;
    }
}

/// Length of `line` without one trailing `\r`.
fn strip_cr(line: &[u8]) -> usize {
    match line.last() {
        Some(b'\r') => line.len() - 1,
        _ => line.len(),
    }
}

/// True for a line of only spaces and tabs (or nothing).
fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|byte| *byte == b' ' || *byte == b'\t')
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use proptest::prelude::*;
    use tokio::io::ReadBuf;

    use super::*;

    /// A reader that hands out the given chunks one per read, then EOF.
    struct Scripted {
        chunks: VecDeque<Vec<u8>>,
    }

    impl Scripted {
        fn new<C: AsRef<[u8]>>(chunks: &[C]) -> Scripted {
            // An empty chunk would read as end of input, so scripts never contain one.
            let chunks = chunks.iter().map(|chunk| chunk.as_ref().to_vec()).filter(|chunk| !chunk.is_empty());
            Scripted { chunks: chunks.collect() }
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.chunks.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.chunks.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// What a frame looks like in test expectations.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Item {
        Line(Vec<u8>),
        TooLong,
    }

    fn line(text: &[u8]) -> Item {
        Item::Line(text.to_vec())
    }

    async fn frames_of<R: AsyncRead + Unpin>(framer: &mut LineFramer<R>) -> Vec<Item> {
        let mut items = Vec::new();
        loop {
            while let Some(frame) = framer.next_frame() {
                items.push(match frame {
                    Frame::Line(bytes) => Item::Line(bytes.to_vec()),
                    Frame::TooLong => Item::TooLong,
                });
            }
            if framer.is_eof() {
                return items;
            }
            framer.fill().await.unwrap();
        }
    }

    #[track_caller]
    fn check<C: AsRef<[u8]>>(max_line_bytes: usize, chunks: &[C], expected: &[Item]) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let items = runtime.block_on(async {
            let mut framer = LineFramer::new(Scripted::new(chunks), max_line_bytes);
            frames_of(&mut framer).await
        });
        assert_eq!(items, expected);
    }

    #[test]
    fn framer_joins_lines_split_across_reads() {
        check(64, &["ab", "c\nd", "ef\n", "\n", "g", "h\n"], &[line(b"abc"), line(b"def"), line(b"gh")]);
    }

    #[test]
    fn framer_strips_one_trailing_carriage_return() {
        check(64, &["a\r\nb\r", "\nc\r\r\n"], &[line(b"a"), line(b"b"), line(b"c\r")]);
    }

    #[test]
    fn framer_skips_blank_and_whitespace_only_lines() {
        check(64, &["\n\r\n  \t \nx\n\n"], &[line(b"x")]);
    }

    #[test]
    fn framer_passes_non_utf8_bytes_through() {
        check(
            64,
            &[&b"\xff\xfe{\"a\":1}\n"[..], &b"\xc3\x28\n"[..]],
            &[line(b"\xff\xfe{\"a\":1}"), line(b"\xc3\x28")],
        );
    }

    #[test]
    fn framer_returns_unterminated_last_line_at_eof() {
        check(64, &["one\ntw", "o"], &[line(b"one"), line(b"two")]);
        check(64, &["one\ntwo\r"], &[line(b"one"), line(b"two")]);
        check(64, &["one\n  "], &[line(b"one")]);
    }

    #[test]
    fn framer_accepts_line_of_exactly_the_maximum_with_crlf() {
        check(4, &["abcd\r", "\nabcde\n"], &[line(b"abcd"), Item::TooLong]);
        check(4, &["abcd\r"], &[line(b"abcd")]);
    }

    #[test]
    fn framer_reports_overlong_line_once_and_resumes_after_its_newline() {
        let long = vec![b'x'; 100];
        check(
            8,
            &[&b"ok\n"[..], &long, &long, &b"xx\nnext\n"[..]],
            &[line(b"ok"), Item::TooLong, line(b"next")],
        );
        // Too long, but only discovered once the newline is in the same read.
        check(8, &["0123456789\nafter\n"], &[Item::TooLong, line(b"after")]);
    }

    #[test]
    fn framer_reports_overlong_unterminated_line_at_eof_once() {
        check(4, &["abcdefgh", "ijk"], &[Item::TooLong]);
        check(4, &["abcdefgh"], &[Item::TooLong]);
    }

    #[tokio::test]
    async fn framer_memory_stays_bounded_under_a_flood_without_newlines() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let chunk = vec![b'z'; 64 * 1024];
            for _ in 0..160 {
                client.write_all(&chunk).await.unwrap();
            }
            client.write_all(b"\n{\"fine\":true}\n").await.unwrap();
        });
        let mut framer = LineFramer::new(server, 1024);
        let capacity = framer.capacity();
        let mut items = Vec::new();
        loop {
            while let Some(frame) = framer.next_frame() {
                items.push(match frame {
                    Frame::Line(bytes) => Item::Line(bytes.to_vec()),
                    Frame::TooLong => Item::TooLong,
                });
            }
            assert!(framer.buffered_len() <= capacity);
            if framer.is_eof() {
                break;
            }
            framer.fill().await.unwrap();
        }
        writer.await.unwrap();
        assert_eq!(capacity, 1024 + 1 + READ_CHUNK_BYTES);
        assert_eq!(framer.capacity(), capacity);
        assert_eq!(items, [Item::TooLong, line(b"{\"fine\":true}")]);
    }

    #[tokio::test]
    async fn framer_fill_returns_without_reading_when_the_buffer_is_full_of_lines() {
        let many_lines = b"ab\n".repeat(READ_CHUNK_BYTES);
        let mut framer = LineFramer::new(Scripted::new(&[many_lines]), 4);
        assert_eq!(framer.fill().await.unwrap(), Fill::Data);
        assert_eq!(framer.buffered_len(), framer.capacity());
        assert_eq!(framer.fill().await.unwrap(), Fill::Data);
        assert_eq!(framer.next_frame(), Some(Frame::Line(b"ab")));
        assert_eq!(frames_of(&mut framer).await.len(), READ_CHUNK_BYTES - 1);
    }

    proptest! {
        #[test]
        fn framer_output_does_not_depend_on_read_boundaries(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b' '), Just(b'a'), any::<u8>()], 0..300),
            cuts in proptest::collection::vec(0usize..300, 0..20),
        ) {
            let mut cut_points: Vec<usize> = cuts.into_iter().filter(|cut| *cut < input.len()).collect();
            cut_points.sort_unstable();
            cut_points.dedup();
            let mut chunks = Vec::new();
            let mut previous = 0;
            for cut in cut_points {
                chunks.push(input[previous..cut].to_vec());
                previous = cut;
            }
            chunks.push(input[previous..].to_vec());
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (whole, split) = runtime.block_on(async {
                let whole = frames_of(&mut LineFramer::new(Scripted::new(&[&input]), 6)).await;
                let split = frames_of(&mut LineFramer::new(Scripted::new(&chunks), 6)).await;
                (whole, split)
            });
            prop_assert_eq!(whole, split);
        }
    }
}
