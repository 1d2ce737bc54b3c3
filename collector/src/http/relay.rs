//! A live stream of a session another collector of the fleet runs: `GET
//! /api/v1/sessions/{name}/stream` on any collector streams it from its owner, asked with a
//! peer token on the API URL the owner registered. The owner keeps its subscriber cap and
//! per-subscriber drop accounting (the relay is one subscriber there; its drop counters and
//! comments pass through unchanged); the relay holds a few pieces at most
//! ([`super::parts`]'s bounded channel), so a slow reader here slows the owner's stream to
//! it, whose queue then drops and counts as for any slow reader. Relays are capped
//! ([`MAX_RELAYS`]). Only whole pcapng blocks are passed on; when the owner goes away
//! mid-stream the relay ends the stream with a statistics block whose comment says so, as
//! the owner itself does when the session is deleted.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_core::Stream;
use tapwire_formats::capture::pcapng::{self, Endian, Framed};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::serve::LiveStreamMark;
use super::{Ctl, parts, reply};
use crate::live::engine::now_ns;
use crate::query::fleet::Chunk;

/// Streams relayed from other collectors at once.
pub const MAX_RELAYS: usize = 16;
/// Silence from the owner before the relay gives up (it sends statistics once a second).
pub const IDLE: Duration = Duration::from_secs(10);

/// Where session `name` runs, if on another collector: its name and API URL, or why it
/// cannot be streamed from there. `Ok(None)`: nobody else runs it.
fn owner_of(ctl: &Ctl, name: &str) -> Result<Option<(String, String)>, (StatusCode, String)> {
    let Ok(info) = ctl.session(name) else {
        return Ok(None);
    };
    let Some(owner) = info.owner.filter(|o| o != ctl.name()) else {
        return Ok(None);
    };
    match ctl.peers().get(&owner) {
        Some((Some(url), true)) => Ok(Some((owner, url.clone()))),
        Some((None, true)) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "session {name:?} runs on collector {owner}, which registered no API URL (--api-url)"
            ),
        )),
        _ => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "session {name:?} runs on collector {owner}, whose lease ran out (it is not live)"
            ),
        )),
    }
}

/// The stream of `name` from its owner, or `None` when no other collector runs it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay(
    ctl: Arc<Ctl>,
    relays: Arc<Semaphore>,
    tls: Option<Arc<rustls::ClientConfig>>,
    name: String,
    path_and_query: String,
    by: String,
    mark: Option<LiveStreamMark>,
) -> Option<Response> {
    let token = ctl.peer_token();
    let owner = {
        let (ctl, name) = (Arc::clone(&ctl), name.clone());
        tokio::task::spawn_blocking(move || owner_of(&ctl, &name)).await
    };
    let (owner, url) = match owner {
        Ok(Ok(Some(o))) => o,
        Ok(Ok(None)) => return None,
        Ok(Err((code, m))) => return Some(reply(code, m)),
        Err(e) => return Some(reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    };
    let Ok(permit) = relays.try_acquire_owned() else {
        return Some(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_RELAYS} streams are relayed from other collectors already"),
        ));
    };
    let answered = match parts::ask_within(&url, &path_and_query, &token, tls.as_ref(), IDLE).await
    {
        Ok(a) => a,
        Err(parts::Failed::Refused(code, m)) => {
            return Some(reply(code, format!("collector {owner}: {m}")));
        }
        Err(parts::Failed::Unreachable(why)) => {
            return Some(reply(
                StatusCode::BAD_GATEWAY,
                format!(
                    "session {name:?} runs on collector {owner}, which could not be reached: {why}"
                ),
            ));
        }
    };
    tracing::info!(
        session = name,
        owner,
        by,
        "live stream relayed from its owner"
    );
    let body = Relay {
        chunks: answered.chunks,
        buf: Vec::new(),
        endian: Endian::native(),
        interfaces: 0,
        owner,
        done: false,
        _permit: permit,
        _mark: mark,
    };
    Some(
        (
            [
                (header::CONTENT_TYPE, "application/x-pcapng"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            Body::from_stream(body),
        )
            .into_response(),
    )
}

/// The relayed body: whole blocks of the owner's stream, then, if it broke off, an end.
struct Relay {
    chunks: mpsc::Receiver<Chunk>,
    buf: Vec<u8>,
    endian: Endian,
    /// Interfaces described so far in this section.
    interfaces: u32,
    owner: String,
    done: bool,
    _permit: OwnedSemaphorePermit,
    _mark: Option<LiveStreamMark>,
}

impl Relay {
    /// The whole blocks at the start of `buf`, taken out.
    fn whole_blocks(&mut self) -> Option<Vec<u8>> {
        let mut at = 0;
        loop {
            match pcapng::frame(&self.buf[at..], self.endian) {
                Framed::Block { kind, len, endian } => {
                    if kind == pcapng::SHB {
                        self.endian = endian;
                        self.interfaces = 0;
                    } else if kind == pcapng::IDB {
                        self.interfaces += 1;
                    }
                    at += len;
                }
                Framed::Incomplete { .. } => break,
                Framed::Corrupt => {
                    // Not pcapng: nothing more is passed on.
                    self.buf.truncate(at);
                    break;
                }
            }
        }
        (at > 0).then(|| self.buf.drain(..at).collect())
    }

    /// The end of a stream whose owner went away: a statistics block (of the first
    /// interface) whose comment says so, as the owner ends its own streams.
    fn end(&self, why: &str) -> Vec<u8> {
        let mut b = Vec::new();
        if self.interfaces == 0 || self.endian != Endian::native() {
            return b;
        }
        let comment = format!(
            "{}collector {}, which runs the session, went away: {why}",
            tapwire_api_types::STREAM_END_COMMENT,
            self.owner
        );
        // In the stream's units (its interfaces count nanoseconds, as the files do).
        let ts = now_ns();
        let c = comment.as_bytes();
        let opts_len = 4 + c.len().next_multiple_of(4) + 4;
        let len = 20 + opts_len + 4;
        b.extend_from_slice(&pcapng::ISB.to_ne_bytes());
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&((ts >> 32) as u32).to_ne_bytes());
        b.extend_from_slice(&(ts as u32).to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&(c.len() as u16).to_ne_bytes());
        b.extend_from_slice(c);
        b.resize(b.len() + (c.len().next_multiple_of(4) - c.len()), 0);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b
    }
}

impl Stream for Relay {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.chunks.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(c))) => {
                    this.buf.extend_from_slice(&c);
                    if let Some(b) = this.whole_blocks() {
                        return Poll::Ready(Some(Ok(b.into())));
                    }
                }
                Poll::Ready(Some(Err(why))) => {
                    this.done = true;
                    tracing::info!(
                        owner = this.owner,
                        why,
                        "relayed stream: the owner went away"
                    );
                    return Poll::Ready(Some(Ok(this.end(&why).into())));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    // Ended by the owner: its own last blocks said why; a cut block is not.
                    if !this.buf.is_empty() {
                        let why = format!("its stream ended {} bytes into a block", this.buf.len());
                        return Poll::Ready(Some(Ok(this.end(&why).into())));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_relay_is_a_statistics_block_the_client_reads() {
        let (_tx, rx) = mpsc::channel(1);
        let mut r = Relay {
            chunks: rx,
            buf: Vec::new(),
            endian: Endian::native(),
            interfaces: 0,
            owner: "a".into(),
            done: false,
            _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            _mark: None,
        };
        // No interface yet: nothing to attach statistics to.
        assert!(r.end("x").is_empty());
        // A section header and an interface, then half a block: only whole blocks pass.
        let mut s = Vec::new();
        pcapng::put_section_header(&mut s, "t", &[]);
        pcapng::put_interface(
            &mut s,
            tapwire_formats::capture::LinkType::Ethernet,
            65535,
            "i",
        );
        let whole = s.len();
        s.extend_from_slice(&[6, 0, 0, 0, 64, 0]);
        r.buf = s.clone();
        assert_eq!(r.whole_blocks().unwrap(), s[..whole].to_vec());
        assert_eq!(r.buf.len(), 6);
        let end = r.end("the connection broke");
        assert!(matches!(
            pcapng::frame(&end, Endian::native()),
            Framed::Block { kind: pcapng::ISB, len, .. } if len == end.len()
        ));
        let why = tapwire_client::stream::end_reason(&end).unwrap();
        assert_eq!(
            why,
            "collector a, which runs the session, went away: the connection broke"
        );
    }
}
