//! Turns `\r` line ends into `\n` for devices that end lines with a bare carriage return, so
//! the shared line framer serves them unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::serial::config::LineSeparator;

/// A reader passing bytes through, with `\r` rewritten to `\n` when the separator is `\r`.
/// A `\r\n` then reads as a line followed by an empty one, which the framer skips.
#[derive(Debug)]
pub(crate) struct LineEnds<R> {
    inner: R,
    separator: LineSeparator,
}

impl<R> LineEnds<R> {
    pub(crate) fn new(inner: R, separator: LineSeparator) -> LineEnds<R> {
        LineEnds { inner, separator }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for LineEnds<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.separator == LineSeparator::Cr {
            if let Poll::Ready(Ok(())) = polled {
                for byte in &mut buf.filled_mut()[before..] {
                    if *byte == b'\r' {
                        *byte = b'\n';
                    }
                }
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn line_ends_rewrite_carriage_returns_only_for_the_cr_separator() {
        let mut text = String::new();
        LineEnds::new(&b"a\rb\r\nc"[..], LineSeparator::Cr).read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "a\nb\n\nc");
        text.clear();
        LineEnds::new(&b"a\rb\r\nc"[..], LineSeparator::Lf).read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "a\rb\r\nc");
    }
}
