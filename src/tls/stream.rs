//! The byte stream under the HTTP codecs: plain TCP, or TLS on TCP. An enum rather than a
//! boxed trait object, so the plaintext path stays a direct call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection's transport.
pub enum Io {
    /// Plaintext (`raw_buffer`).
    Plain(TcpStream),
    /// TLS terminated here (a filter chain's `DownstreamTlsContext`). Boxed: the TLS state is
    /// large, and most connections are plaintext.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS originated here (a cluster's `UpstreamTlsContext`).
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Io {
    /// Whether the transport is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Io::Plain(_))
    }

    /// The peer's leaf certificate (DER), when the peer presented one.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        let certs = match self {
            Io::Plain(_) => None,
            Io::Server(s) => s.get_ref().1.peer_certificates(),
            Io::Client(s) => s.get_ref().1.peer_certificates(),
        };
        certs.and_then(|c| c.first()).map(|c| c.as_ref())
    }

    /// The ALPN protocol the TLS handshake settled on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Io::Plain(_) => None,
            Io::Server(s) => s.get_ref().1.alpn_protocol(),
            Io::Client(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::Server($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Io::Client($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Server(s) => s.is_write_vectored(),
            Io::Client(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}
