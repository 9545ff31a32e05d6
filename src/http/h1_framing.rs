//! HTTP/1 request framing check on the raw downstream bytes. Envoy rejects a request that
//! carries both `Content-Length` and `Transfer-Encoding` with 400 (request smuggling guard);
//! hyper instead drops `Content-Length` silently, so the connection manager cannot see the
//! conflict. This reader follows HTTP/1 framing (headers parsed with httparse, bodies skipped
//! by length or chunk sizes, never buffered) and queues one flag per request, in order, that
//! the connection manager pops for each HTTP/1 request it serves.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Flags per request, shared between the reader and the connection manager. A per-connection
/// mutex (never contended: both sides run on the connection's worker) because hyper requires
/// upgradeable IO to be `Send`.
pub type FramingFlags = Arc<Mutex<VecDeque<bool>>>;

/// Largest header block the checker buffers; larger ones are hyper's to reject.
const MAX_HEADER_BLOCK: usize = 96 * 1024;

enum State {
    /// Collecting a request head.
    Head(Vec<u8>),
    /// Skipping a fixed-length body.
    Fixed(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    /// Skipping chunk data (plus its CRLF).
    ChunkData(u64),
    /// Skipping trailers after the last chunk, until an empty line.
    Trailers(Vec<u8>),
    /// Not HTTP/1 framing any more (HTTP/2 preface, upgrade, or something hyper will reject).
    Passthrough,
}

/// An IO wrapper that watches request framing.
pub struct FramingCheck<IO> {
    io: IO,
    state: State,
    flags: FramingFlags,
}

impl<IO> FramingCheck<IO> {
    /// Wrap `io`; flags go to `flags`.
    pub fn new(io: IO, flags: FramingFlags) -> Self {
        FramingCheck { io, state: State::Head(Vec::new()), flags }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Passthrough => return,
                State::Head(buf) => {
                    if buf.is_empty() && data.starts_with(b"PRI * HTTP/2.0") {
                        self.state = State::Passthrough;
                        return;
                    }
                    let start = buf.len().saturating_sub(3);
                    buf.extend_from_slice(data);
                    let Some(pos) = find(&buf[start..], b"\r\n\r\n").map(|p| p + start + 4) else {
                        if buf.len() > MAX_HEADER_BLOCK {
                            self.state = State::Passthrough;
                        }
                        return;
                    };
                    let rest = buf.split_off(pos);
                    let head = std::mem::take(buf);
                    self.state = self.on_head(&head);
                    // Continue with what followed the head (body or next request).
                    let rest_len = rest.len();
                    let consumed = data.len() - rest_len.min(data.len());
                    data = &data[consumed..];
                }
                State::Fixed(n) => {
                    let k = (*n).min(data.len() as u64) as usize;
                    *n -= k as u64;
                    data = &data[k..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => {
                    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                        line.extend_from_slice(data);
                        if line.len() > 4096 {
                            self.state = State::Passthrough;
                        }
                        return;
                    };
                    line.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    let text = String::from_utf8_lossy(line);
                    let hex = text.split(';').next().unwrap_or("").trim();
                    match u64::from_str_radix(hex, 16) {
                        Ok(0) => self.state = State::Trailers(Vec::new()),
                        Ok(n) => self.state = State::ChunkData(n.saturating_add(2)),
                        Err(_) => self.state = State::Passthrough,
                    }
                }
                State::ChunkData(n) => {
                    let k = (*n).min(data.len() as u64) as usize;
                    *n -= k as u64;
                    data = &data[k..];
                    if *n == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailers(buf) => {
                    buf.extend_from_slice(data);
                    // An empty trailer section is just CRLF; otherwise it ends with CRLFCRLF.
                    let end = if buf.starts_with(b"\r\n") { Some(2) } else { find(buf, b"\r\n\r\n").map(|p| p + 4) };
                    let Some(end) = end else {
                        if buf.len() > MAX_HEADER_BLOCK {
                            self.state = State::Passthrough;
                        }
                        return;
                    };
                    let rest = buf.split_off(end);
                    let consumed = data.len() - rest.len().min(data.len());
                    data = &data[consumed..];
                    self.state = State::Head(Vec::new());
                }
            }
        }
    }

    /// Parse a request head, queue its flag, and pick the body state.
    fn on_head(&mut self, head: &[u8]) -> State {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return State::Passthrough,
        }
        let mut cl: Option<u64> = None;
        let mut te = false;
        let mut chunked = false;
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()).or(Some(0));
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
                chunked = h.value.to_ascii_lowercase().ends_with(b"chunked");
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        self.flags.lock().unwrap_or_else(|e| e.into_inner()).push_back(te && cl.is_some());
        if upgrade || req.method == Some("CONNECT") {
            return State::Passthrough;
        }
        if te {
            if chunked {
                State::ChunkSize(Vec::new())
            } else {
                State::Passthrough
            }
        } else {
            match cl {
                Some(n) if n > 0 => State::Fixed(n),
                _ => State::Head(Vec::new()),
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingCheck<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            if !matches!(this.state, State::Passthrough) {
                // Scan the bytes in place: no copy per read.
                this.feed(&buf.filled()[before..]);
            }
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingCheck<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<bool> {
        let flags: FramingFlags = Arc::default();
        let mut f = FramingCheck::new((), flags.clone());
        for c in chunks {
            f.feed(c);
        }
        let v: Vec<bool> = flags.lock().unwrap().iter().copied().collect();
        v
    }

    #[test]
    fn flags_cl_and_te_and_follows_bodies() {
        let a = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let b = b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let c = b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let d = b"GET /d HTTP/1.1\r\nHost: x\r\n\r\n";
        let all = [&a[..], &b[..], &c[..], &d[..]].concat();
        assert_eq!(run(&[&all]), vec![false, false, true, false]);
        // Byte by byte gives the same answer.
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        assert_eq!(run(&bytes), vec![false, false, true, false]);
    }

    #[test]
    fn body_text_that_looks_like_headers_is_not_parsed() {
        let body = b"\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
        let all = [head.as_bytes(), &body[..], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
        assert_eq!(run(&[&all]), vec![false, false]);
    }

    #[test]
    fn h2_preface_passes_through() {
        assert!(run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).is_empty());
    }
}
