//! A session's live stream (`GET /api/v1/sessions/{name}/stream`) read as whole pcapng
//! blocks, so that whatever a reader writes out is a valid capture at every moment, also when
//! the connection breaks mid-block.

use std::io::Read;
use std::time::Duration;

use crate::{Client, HttpError, describe, segment};

/// The largest block accepted: a packet block holds at most a 256 KiB frame and a 64 KiB
/// comment.
pub const MAX_BLOCK_BYTES: usize = 1 << 20;

/// pcapng block types a reader of the stream cares about.
pub const SECTION_HEADER: u32 = 0x0A0D_0D0A;
pub const ENHANCED_PACKET: u32 = 6;

pub const INTERFACE_STATISTICS: u32 = 5;

/// Why the collector ended a stream, from one of its last blocks: the `opt_comment` of an
/// Interface Statistics Block that starts with [`tapwire_api_types::STREAM_END_COMMENT`]
/// (what follows it). `block` is a whole block as [`PacketStream::next_block`] gives it.
pub fn end_reason(block: &[u8]) -> Option<String> {
    let word = |at: usize, big: bool| -> Option<u32> {
        let w: [u8; 4] = block.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        })
    };
    let big = match word(0, false)? {
        INTERFACE_STATISTICS => false,
        t if t.swap_bytes() == INTERFACE_STATISTICS => true,
        _ => return None,
    };
    let half = |at: usize| -> Option<usize> {
        let h: [u8; 2] = block.get(at..at + 2)?.try_into().ok()?;
        Some(usize::from(if big {
            u16::from_be_bytes(h)
        } else {
            u16::from_le_bytes(h)
        }))
    };
    let end = (word(4, big)? as usize).min(block.len()).checked_sub(4)?;
    // Options follow the interface id and the two timestamp words.
    let mut at = 20;
    while at + 4 <= end {
        let (code, len) = (half(at)?, half(at + 2)?);
        if at + 4 + len > end {
            return None;
        }
        let value = block.get(at + 4..at + 4 + len)?;
        match code {
            0 => return None,
            1 => {
                let text = std::str::from_utf8(value).ok()?;
                if let Some(why) = text.strip_prefix(tapwire_api_types::STREAM_END_COMMENT) {
                    return Some(why.to_string());
                }
            }
            _ => {}
        }
        at += 4 + len.next_multiple_of(4);
    }
    None
}

/// Why a stream could not be read on.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection broke (the collector went away) or timed out.
    #[error("{0}")]
    Io(String),
    /// What arrived is not a pcapng stream.
    #[error("not a pcapng stream: {0}")]
    Malformed(String),
}

/// Splits a byte stream into pcapng blocks, pure: bytes in, whole blocks out.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// Where the next block starts in `buf`.
    at: usize,
    /// The section's byte order, from its header's magic.
    big_endian: Option<bool>,
}

impl Framer {
    /// Adds bytes read.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not a whole block yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.at
    }

    /// The next whole block (its type and bytes), if one is held.
    pub fn next_block(&mut self) -> Result<Option<(u32, &[u8])>, StreamError> {
        let rest = &self.buf[self.at..];
        if rest.len() < 12 {
            return Ok(None);
        }
        let word = |b: &[u8], big: bool| {
            let w = [b[0], b[1], b[2], b[3]];
            if big {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            }
        };
        let raw_type = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let big = if raw_type == SECTION_HEADER {
            // The byte-order magic follows the length.
            match [rest[8], rest[9], rest[10], rest[11]] {
                [0x1A, 0x2B, 0x3C, 0x4D] => true,
                [0x4D, 0x3C, 0x2B, 0x1A] => false,
                m => return Err(StreamError::Malformed(format!("byte-order magic {m:02x?}"))),
            }
        } else {
            match self.big_endian {
                Some(b) => b,
                None => {
                    return Err(StreamError::Malformed(
                        "it does not start with a section header".into(),
                    ));
                }
            }
        };
        let block_type = word(&rest[0..4], big);
        let len = word(&rest[4..8], big) as usize;
        if len < 12 || !len.is_multiple_of(4) || len > MAX_BLOCK_BYTES {
            return Err(StreamError::Malformed(format!(
                "block of type {block_type:#x} with length {len}"
            )));
        }
        if rest.len() < len {
            return Ok(None);
        }
        if word(&rest[len - 4..len], big) as usize != len {
            return Err(StreamError::Malformed(format!(
                "block of type {block_type:#x}: trailing length differs from {len}"
            )));
        }
        self.big_endian = Some(big);
        let start = self.at;
        self.at += len;
        Ok(Some((block_type, &self.buf[start..start + len])))
    }
}

/// A live stream: whole pcapng blocks as they arrive.
pub struct PacketStream {
    body: Box<dyn Read + Send>,
    framer: Framer,
    read_buf: Vec<u8>,
}

impl PacketStream {
    /// A stream read from any source (the collector's answer; a file in tests).
    pub fn from_reader(body: Box<dyn Read + Send>) -> PacketStream {
        PacketStream {
            body,
            framer: Framer::default(),
            read_buf: vec![0; 64 << 10],
        }
    }

    /// The next whole block: `Ok(None)` when the collector ended the stream (the session was
    /// deleted or the collector is stopping), an error when the connection broke.
    pub fn next_block(&mut self) -> Result<Option<(u32, Vec<u8>)>, StreamError> {
        loop {
            if let Some((t, b)) = self.framer.next_block()? {
                return Ok(Some((t, b.to_vec())));
            }
            let n = self
                .body
                .read(&mut self.read_buf)
                .map_err(|e| StreamError::Io(e.to_string()))?;
            if n == 0 {
                return match self.framer.pending() {
                    0 => Ok(None),
                    n => Err(StreamError::Io(format!(
                        "the stream ended {n} bytes into a block"
                    ))),
                };
            }
            self.framer.push(&self.read_buf[..n]);
        }
    }
}

impl Client {
    /// `GET /api/v1/sessions/{name}/stream[?filter=...]`: the session's packets from now on.
    /// The connection must be made and answered within the client's timeout; reading has
    /// none (a quiet session sends statistics once a second). A refusal is an [`HttpError`]
    /// with the collector's message (401, 404, a filter's 400, 503 past the cap).
    pub fn stream(&self, session: &str, filter: Option<&str>) -> Result<PacketStream, HttpError> {
        let mut path = format!("/api/v1/sessions/{}/stream", segment(session));
        if let Some(f) = filter.filter(|f| !f.trim().is_empty()) {
            path.push_str("?filter=");
            path.push_str(&query_value(f));
        }
        let url = format!("{}{path}", self.base);
        let mut req = ureq::http::Request::builder().method("GET").uri(&url);
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let req = req.body(()).map_err(|e| HttpError {
            status: 0,
            message: e.to_string(),
        })?;
        let answer_within = self
            .agent
            .config()
            .timeouts()
            .global
            .unwrap_or(Duration::from_secs(15));
        let req = self
            .agent
            .configure_request(req)
            .timeout_global(None)
            .timeout_recv_response(Some(answer_within))
            .timeout_recv_body(None)
            .build();
        let mut resp = self.agent.run(req).map_err(|e| HttpError {
            status: 0,
            message: format!("GET {url}: {}", describe(&e)),
        })?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let text = resp
                .body_mut()
                .with_config()
                .limit(64 << 10)
                .read_to_string()
                .unwrap_or_default();
            let message = serde_json::from_str::<tapwire_api_types::Message>(&text)
                .map(|m| m.message)
                .unwrap_or_else(|_| text.trim().chars().take(300).collect());
            return Err(HttpError {
                status,
                message: format!("{status}: {message}"),
            });
        }
        Ok(PacketStream::from_reader(Box::new(
            resp.into_body().into_reader(),
        )))
    }
}

/// A query value with everything but unreserved characters percent-encoded.
fn query_value(s: &str) -> String {
    segment(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(t: u32, body: &[u8], big: bool) -> Vec<u8> {
        let len = (12 + body.len()) as u32;
        let w = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut b = Vec::new();
        b.extend_from_slice(&w(t));
        b.extend_from_slice(&w(len));
        b.extend_from_slice(body);
        b.extend_from_slice(&w(len));
        b
    }

    fn shb(big: bool) -> Vec<u8> {
        let magic: u32 = 0x1A2B_3C4D;
        let mut body = if big {
            magic.to_be_bytes().to_vec()
        } else {
            magic.to_le_bytes().to_vec()
        };
        body.extend_from_slice(&[0, 1, 0, 0]);
        body.extend_from_slice(&[0xff; 8]);
        block(SECTION_HEADER, &body, big)
    }

    #[test]
    fn whole_blocks_come_out_whatever_the_reads() {
        for big in [false, true] {
            let mut stream = shb(big);
            stream.extend(block(1, &[0; 8], big));
            stream.extend(block(ENHANCED_PACKET, &[7; 24], big));
            // One byte at a time: each block comes out whole, once.
            let mut f = Framer::default();
            let mut got = Vec::new();
            for b in &stream {
                f.push(&[*b]);
                while let Some((t, bytes)) = f.next_block().unwrap() {
                    got.push((t, bytes.len()));
                }
            }
            assert_eq!(
                got,
                vec![(SECTION_HEADER, 28), (1, 20), (ENHANCED_PACKET, 36)]
            );
            assert_eq!(f.pending(), 0);
        }
    }

    /// The reason is read from an ISB's comment in either byte order; other blocks, other
    /// comments and cut blocks give none.
    #[test]
    fn the_end_reason_is_read_from_a_statistics_comment() {
        let text = format!(
            "{}the session was deleted",
            tapwire_api_types::STREAM_END_COMMENT
        );
        for big in [false, true] {
            let h = |v: u16| {
                if big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let opt = |code: u16, value: &[u8]| {
                let mut o = [h(code), h(value.len() as u16)].concat();
                o.extend_from_slice(value);
                o.resize(4 + value.len().next_multiple_of(4), 0);
                o
            };
            // Interface id and timestamp, then isb_ifrecv, the comment, the end.
            let mut body = vec![0; 12];
            body.extend(opt(4, &[0; 8]));
            body.extend(opt(1, text.as_bytes()));
            body.extend(opt(0, &[]));
            let isb = block(INTERFACE_STATISTICS, &body, big);
            assert_eq!(end_reason(&isb).as_deref(), Some("the session was deleted"));
            assert_eq!(end_reason(&isb[..isb.len() - 20]), None);
            let mut other = vec![0; 12];
            other.extend(opt(1, b"a comment"));
            assert_eq!(end_reason(&block(INTERFACE_STATISTICS, &other, big)), None);
            assert_eq!(end_reason(&block(ENHANCED_PACKET, &body, big)), None);
        }
    }

    #[test]
    fn a_cut_stream_is_an_error_and_garbage_is_refused() {
        let mut bytes = shb(false);
        bytes.extend(&block(ENHANCED_PACKET, &[7; 24], false)[..20]);
        let mut s = PacketStream::from_reader(Box::new(std::io::Cursor::new(bytes)));
        assert!(s.next_block().unwrap().is_some());
        assert!(
            matches!(s.next_block(), Err(StreamError::Io(m)) if m.contains("20 bytes into a block"))
        );

        let mut s = PacketStream::from_reader(Box::new(std::io::Cursor::new(shb(true))));
        assert!(s.next_block().unwrap().is_some());
        assert!(
            s.next_block().unwrap().is_none(),
            "the end after a whole block"
        );

        for garbage in [
            block(ENHANCED_PACKET, &[0; 8], false),
            b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            [shb(false), block(6, &[0; 5], false)].concat(),
        ] {
            let mut f = Framer::default();
            f.push(&garbage);
            let mut r = f.next_block().map(|b| b.map(|b| b.0));
            if let Ok(Some(SECTION_HEADER)) = r {
                r = f.next_block().map(|b| b.map(|b| b.0));
            }
            assert!(matches!(r, Err(StreamError::Malformed(_))), "{r:?}");
        }
    }
}
