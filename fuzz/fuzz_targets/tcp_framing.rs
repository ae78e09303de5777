//! Fuzz target: a byte stream cut into arbitrary chunks (some reads first answer "not ready")
//! through the TCP line framer. The frames must be the same whatever the cuts, equal to a
//! simple model of the framing rules (`sensors/src/framing.rs`), and no line over the limit.
#![no_main]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use eddy_sensors::{Fill, Frame, LineFramer};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// The input, laid out plainly so that seeds are easy to write:
/// `[limit byte][n_cuts byte][n_cuts cut bytes][stream...]`.
struct Input<'a> {
    /// The line limit, kept small (1 to 64) so that short inputs reach it.
    max_line_bytes: usize,
    /// Chunk lengths (bits 0 to 6, 0 read as 1), cycled; bit 7 set: that read is first
    /// answered `Pending`.
    cuts: &'a [u8],
    stream: &'a [u8],
}

impl<'a> Input<'a> {
    fn split(data: &'a [u8]) -> Input<'a> {
        let (limit, rest) = data.split_first().map_or((0, &[][..]), |(first, rest)| (*first, rest));
        let (n_cuts, rest) =
            rest.split_first().map_or((0, &[][..]), |(first, rest)| (usize::from(*first), rest));
        let (cuts, stream) = rest.split_at(n_cuts.min(rest.len()));
        Input { max_line_bytes: usize::from(limit % 64) + 1, cuts, stream }
    }
}

/// What a framed stream came out as: a line, or one "too long".
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Line(Vec<u8>),
    TooLong,
}

/// A reader handing out `stream` in chunks of the given lengths, sometimes `Pending` first.
struct Chunked {
    chunks: VecDeque<(bool, Vec<u8>)>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let Some((pending_first, chunk)) = self.chunks.front_mut() else { return Poll::Ready(Ok(())) };
        if std::mem::take(pending_first) {
            return Poll::Pending;
        }
        let n_bytes = chunk.len().min(buf.remaining());
        buf.put_slice(&chunk[..n_bytes]);
        chunk.drain(..n_bytes);
        if chunk.is_empty() {
            self.chunks.pop_front();
        }
        Poll::Ready(Ok(()))
    }
}

fn chunks(stream: &[u8], cuts: &[u8]) -> VecDeque<(bool, Vec<u8>)> {
    let mut out = VecDeque::new();
    let mut rest = stream;
    let mut cut_idx = 0;
    while !rest.is_empty() {
        let cut = cuts.get(cut_idx % cuts.len().max(1)).copied().unwrap_or(0xff);
        cut_idx += 1;
        let len = usize::from(cut & 0x7f).max(1).min(rest.len());
        out.push_back((cut & 0x80 != 0, rest[..len].to_vec()));
        rest = &rest[len..];
    }
    out
}

/// Frames everything `reader` produces. Each `fill` is polled once; a `Pending` drops the
/// future (as a `select!` losing a race would) and polls a new one: `fill` is cancel-safe.
fn frame_all(reader: Chunked, max_line_bytes: usize) -> Vec<Item> {
    let mut framer = LineFramer::new(reader, max_line_bytes);
    let mut context = Context::from_waker(Waker::noop());
    let mut items = Vec::new();
    let mut n_polls = 0_usize;
    loop {
        while let Some(frame) = framer.next_frame() {
            items.push(match frame {
                Frame::Line(line) => {
                    assert!(line.len() <= max_line_bytes, "a line of {} bytes passed the limit", line.len());
                    assert!(!line.contains(&b'\n'));
                    Item::Line(line.to_vec())
                }
                Frame::TooLong => Item::TooLong,
            });
        }
        if framer.is_eof() {
            return items;
        }
        n_polls += 1;
        assert!(n_polls < 1_000_000, "the framer does not make progress");
        let fill = pin!(framer.fill());
        match fill.poll(&mut context) {
            Poll::Ready(result) => {
                let _: Fill = result.expect("the reader never fails");
            }
            Poll::Pending => {}
        }
    }
}

/// The framing rules on the whole stream at once: split at `\n` (a last line without one
/// counts), strip one `\r`, too long before blank, blank lines skipped.
fn model(stream: &[u8], max_line_bytes: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let mut lines: Vec<&[u8]> = stream.split(|byte| *byte == b'\n').collect();
    if lines.last().is_some_and(|last| last.is_empty()) {
        lines.pop();
    }
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > max_line_bytes {
            items.push(Item::TooLong);
        } else if !line.iter().all(|byte| *byte == b' ' || *byte == b'\t') {
            items.push(Item::Line(line.to_vec()));
        }
    }
    items
}

fuzz_target!(|data: &[u8]| {
    let input = Input::split(data);
    let max_line_bytes = input.max_line_bytes;
    let whole = frame_all(Chunked { chunks: chunks(input.stream, &[0x7f]) }, max_line_bytes);
    let cut = frame_all(Chunked { chunks: chunks(input.stream, input.cuts) }, max_line_bytes);
    assert_eq!(whole, cut, "the frames depend on how the stream was cut");
    assert_eq!(whole, model(input.stream, max_line_bytes), "the frames differ from the framing rules");
});
