//! The TCP probe (`tcp_health_check`): connecting is the check when `receive` is empty;
//! otherwise write `send` and wait until every `receive` segment has appeared, in order, in
//! what the host sent back (Envoy's `PayloadMatcher`).

use futures_util::FutureExt;
use pinion_xds::model::TcpHealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::probe::{Target, Verdict};

/// A session's TCP connection and what it has read since the last match.
#[derive(Default)]
pub(super) struct TcpProbe {
    conn: Option<crate::tls::Io>,
    buf: Vec<u8>,
}

/// Whether `segments` appear in `data` in order, each after the end of the previous one.
pub(super) fn payload_matches(segments: &[Vec<u8>], data: &[u8]) -> bool {
    let mut from = 0;
    for seg in segments {
        let Some(at) = data.get(from..).and_then(|rest| rest.windows(seg.len()).position(|w| w == seg.as_slice()))
        else {
            return false;
        };
        from += at + seg.len();
    }
    true
}

impl TcpProbe {
    /// Drop the connection.
    pub(super) fn close(&mut self) {
        self.conn = None;
        self.buf.clear();
    }

    /// One check.
    pub(super) async fn check(&mut self, t: &Target<'_>, c: &TcpHealthCheck) -> Verdict {
        if c.receive.is_empty() {
            // Envoy passes on connect and closes at once; `send` is not written in this mode.
            self.close();
            return match t.connect(crate::tls::Alpn::None).await {
                Ok(_) => Verdict::passed(),
                Err(_) => Verdict::network(),
            };
        }
        if let Some(io) = &mut self.conn {
            // A reused connection the host closed since the last check is replaced.
            let mut probe = [0u8; 4096];
            match io.read(&mut probe).now_or_never() {
                Some(Ok(0)) | Some(Err(_)) => self.close(),
                Some(Ok(n)) => self.buf.extend_from_slice(&probe[..n]),
                None => {}
            }
        }
        if self.conn.is_none() {
            match t.connect(crate::tls::Alpn::None).await {
                Ok(io) => self.conn = Some(io),
                Err(_) => return Verdict::network(),
            }
        }
        let Some(io) = &mut self.conn else { return Verdict::network() };
        if !c.send.is_empty() && io.write_all(&c.send).await.is_err() {
            self.close();
            return Verdict::network();
        }
        let mut chunk = [0u8; 4096];
        loop {
            if payload_matches(&c.receive, &self.buf) {
                self.buf.clear();
                return Verdict::passed();
            }
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    // Closed before the expected bytes came: a network failure (a mismatch
                    // with the connection left open runs into the timeout instead).
                    self.close();
                    return Verdict::network();
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
            // Bound what a chatty host can make a session hold.
            if self.buf.len() > 1 << 20 {
                let keep = self.buf.len() - (1 << 19);
                self.buf.drain(..keep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::payload_matches;

    #[test]
    fn segments_match_in_order() {
        let segs = vec![b"PO".to_vec(), b"NG".to_vec()];
        assert!(payload_matches(&segs, b"xxPONGyy"));
        assert!(payload_matches(&segs, b"PO..NG"));
        assert!(!payload_matches(&segs, b"NGPO"));
        assert!(!payload_matches(&segs, b"PON"));
        assert!(payload_matches(&[], b""));
    }
}
