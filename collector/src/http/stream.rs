//! `GET /api/v1/sessions/{name}/stream[?filter=EXPR]`: a session's packets as a live pcapng
//! stream over a chunked response, the API's half (the engine's is [`crate::live::stream`]).
//!
//! The handler checks the caller (a viewer), compiles the filter on the blocking pool (a
//! filter libpcap refuses is a 400 with libpcap's message), asks the engine for a
//! subscription (404 for an unknown session, 503 past the cap) and answers with a body that
//! writes, for this subscriber alone: the section header and the session's interface blocks,
//! then the packets of each chunk the engine hands over (the engine's blocks as they are, or
//! those its filter takes), an interface block before the first packet of each new source,
//! and once a second an Interface Statistics Block per interface. Packets the engine dropped
//! because this reader fell behind are told twice: the next packet written carries
//! `epb_dropcount` and a comment saying how many, and the statistics blocks carry them per
//! source as `isb_osdrop`. The stream ends (final statistics, then the end of the response)
//! when the session is deleted or the collector stops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_core::Stream;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use tapwire_formats::capture::{Encoder, Format, InterfaceInfo, InterfaceStats, PacketInfo};
use tokio::sync::oneshot;

use super::auth::{Authed, ReadPart};
use super::serve::{LiveStreamMark, ThisConnection};
use super::{ApiState, Peer, reply};
use crate::demux::SourceId;
use crate::filter::{Filter, FilterError};
use crate::live::engine::{Control, now_ns};
use crate::live::output::SourceCounts;
use crate::live::stream::{Chunk, Head, Refusal, Request, Shared, Subscription};

/// How often each stream gets its statistics blocks (and, while quiet, the only bytes it
/// gets).
const STATISTICS_EVERY: Duration = Duration::from_secs(1);
/// Chunks taken in one turn before other connections get theirs.
const CHUNKS_PER_TURN: usize = 32;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    /// A capture filter in tcpdump's syntax, run on each packet's inner frame.
    filter: Option<String>,
}

pub(super) async fn stream(
    State(s): State<ApiState>,
    Authed(caller, ..): Authed<ReadPart>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    Query(q): Query<StreamQuery>,
    RawQuery(raw): RawQuery,
    this: Option<Extension<ThisConnection>>,
) -> Response {
    let expr = q.filter.filter(|f| !f.trim().is_empty());
    let session = name.clone();
    let filter = match expr.clone() {
        None => None,
        // Compiled (or taken from the cache) within the filter limits, off the engine thread
        // and off the API's own thread (a compilation may wait for a worker).
        Some(e) => match tokio::task::spawn_blocking(move || Filter::new(&e)).await {
            Ok(Ok(f)) => Some(f),
            Ok(Err(e @ FilterError::Busy)) => {
                return reply(StatusCode::SERVICE_UNAVAILABLE, format!("filter: {e}"));
            }
            Ok(Err(e)) => return reply(StatusCode::BAD_REQUEST, format!("filter: {e}")),
            Err(e) => return reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    };
    let (tx, rx) = oneshot::channel();
    let asked = s.control.send(Control::Subscribe(Request {
        session: name,
        peer: peer.0.to_string(),
        filter: expr,
        reply: tx,
    }));
    if asked.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "the collector is stopping".into(),
        );
    }
    let sub = match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(sub))) => sub,
        Ok(Ok(Err(r @ Refusal::NoSession(_)))) => {
            // In a fleet, a session another collector runs is streamed from it (never for
            // a collector that asks itself: no relay of a relay).
            if let (Some(ctl), None) = (&s.controller, &caller.peer) {
                let path = match raw.as_deref() {
                    Some(q) if !q.is_empty() => {
                        format!("/api/v1/sessions/{}/stream?{q}", segment(&session))
                    }
                    _ => format!("/api/v1/sessions/{}/stream", segment(&session)),
                };
                let mark = this.map(|Extension(c)| c.live_stream());
                let relayed = super::relay::relay(
                    Arc::clone(ctl),
                    Arc::clone(&s.relays),
                    s.peer_tls.clone(),
                    session,
                    path,
                    caller.name.clone(),
                    mark,
                )
                .await;
                if let Some(answer) = relayed {
                    return answer;
                }
            }
            return reply(StatusCode::NOT_FOUND, r.to_string());
        }
        Ok(Ok(Err(r @ Refusal::Full(_)))) => {
            return reply(StatusCode::SERVICE_UNAVAILABLE, r.to_string());
        }
        _ => {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the collector did not answer".into(),
            );
        }
    };
    let mut body = PcapngBody::new(sub, filter);
    // The connection is the stream's while the body lives: the API's idle and request
    // timeouts do not apply (a stalled reader loses packets, not its stream).
    body.mark = this.map(|Extension(c)| c.live_stream());
    (
        [
            (header::CONTENT_TYPE, "application/x-pcapng"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// A path segment with everything but unreserved characters percent-encoded.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One subscriber's response body.
struct PcapngBody {
    sub: Subscription,
    writer: Writer,
    out: Out,
    timer: tokio::time::Interval,
    done: bool,
    mark: Option<LiveStreamMark>,
}

impl PcapngBody {
    fn new(sub: Subscription, filter: Option<Filter>) -> PcapngBody {
        let mut out = Out::default();
        let writer = Writer::new(&sub, filter, now_ns(), &mut out);
        let mut timer = tokio::time::interval_at(
            tokio::time::Instant::now() + STATISTICS_EVERY,
            STATISTICS_EVERY,
        );
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        PcapngBody {
            sub,
            writer,
            out,
            timer,
            done: false,
            mark: None,
        }
    }
}

impl Stream for PcapngBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.out.pop() {
                return Poll::Ready(Some(Ok(b)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let mut taken = 0;
            while taken < CHUNKS_PER_TURN {
                match this.sub.chunks.poll_recv(cx) {
                    Poll::Ready(Some(c)) => {
                        this.sub
                            .shared
                            .queued_bytes
                            .fetch_sub(c.bytes.len(), Ordering::Relaxed);
                        this.writer.chunk(&c, &mut this.out);
                        taken += 1;
                    }
                    Poll::Ready(None) => {
                        // The engine ended the stream (and shared its last drop counts and
                        // why): the last statistics blocks say why.
                        let why = this.sub.shared.end.get().map(|e| {
                            format!("{}{}", tapwire_api_types::STREAM_END_COMMENT, e.message())
                        });
                        this.writer.statistics(
                            &this.sub.shared,
                            now_ns(),
                            why.as_deref(),
                            &mut this.out,
                        );
                        this.done = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            while this.timer.poll_tick(cx).is_ready() {
                if !this.done {
                    this.writer
                        .statistics(&this.sub.shared, now_ns(), None, &mut this.out);
                }
            }
            if this.out.is_empty() && !this.done {
                if taken == CHUNKS_PER_TURN {
                    // More is queued, all of it filtered out so far: come back after others.
                    cx.waker().wake_by_ref();
                }
                return Poll::Pending;
            }
        }
    }
}

/// What a stream has to send: small blocks gathered in a buffer, shared chunks as they are.
#[derive(Default)]
struct Out {
    pieces: VecDeque<Bytes>,
    buf: Vec<u8>,
}

impl Out {
    fn extend(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    fn shared(&mut self, b: Bytes) {
        self.flush();
        self.pieces.push_back(b);
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.pieces
                .push_back(Bytes::from(std::mem::take(&mut self.buf)));
        }
    }

    fn pop(&mut self) -> Option<Bytes> {
        if self.pieces.is_empty() {
            self.flush();
        }
        self.pieces.pop_front()
    }

    fn is_empty(&self) -> bool {
        self.pieces.is_empty() && self.buf.is_empty()
    }
}

/// A chunk's bytes as `Bytes` without a copy.
struct ChunkBytes(Arc<Chunk>);

impl AsRef<[u8]> for ChunkBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0.bytes
    }
}

/// What one interface of a stream has seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    source: SourceId,
    /// Its source's counts when the stream started (or before its first packet here).
    base: Option<SourceCounts>,
    last: Option<SourceCounts>,
    /// Its packets this stream was offered (before the filter) and wrote.
    offered: u64,
    delivered: u64,
}

/// One subscriber's stream, pure: chunks in, pcapng bytes out.
struct Writer {
    filter: Option<Filter>,
    /// Re-encodes the packet after a gap with this subscriber's drop count; knows every
    /// interface declared so far (their link types).
    enc: Encoder,
    /// Interfaces whose blocks were written.
    declared: usize,
    seen: Vec<Seen>,
    baseline: FxHashMap<SourceId, SourceCounts>,
    next_seq: u64,
    /// Packets dropped for this reader and not yet told in a packet.
    untold: u64,
    started_ns: u64,
}

impl Writer {
    /// Starts the stream: its section header and the session's interfaces so far.
    fn new(sub: &Subscription, filter: Option<Filter>, started_ns: u64, out: &mut Out) -> Writer {
        let mut enc = Encoder::new(Format::Pcapng);
        enc.buffer().clear();
        let mut w = Writer {
            filter,
            enc,
            declared: 0,
            seen: Vec::new(),
            baseline: sub.baseline.clone(),
            next_seq: sub.first_seq,
            untold: 0,
            started_ns,
        };
        out.extend(sub.head.section());
        w.declare(&sub.head, out);
        w
    }

    /// Writes the interface blocks of `head` not written yet.
    fn declare(&mut self, head: &Head, out: &mut Out) {
        if self.declared >= head.idbs.len() {
            return;
        }
        out.extend(head.interfaces_from(self.declared));
        for i in self.declared..head.idbs.len() {
            let source = head.sources[i];
            // Only the link type matters here: the block written is the head's.
            let _ = self.enc.add_interface(&InterfaceInfo {
                link: head.links[i],
                name: String::new(),
                description: String::new(),
                snaplen: tapwire_formats::capture::SNAPLEN,
            });
            self.seen.push(Seen {
                source,
                base: self.baseline.get(&source).copied(),
                last: None,
                offered: 0,
                delivered: 0,
            });
        }
        self.enc.buffer().clear();
        self.declared = head.idbs.len();
    }

    /// One chunk: its packets this subscriber takes, after the interface blocks it needs.
    fn chunk(&mut self, c: &Arc<Chunk>, out: &mut Out) {
        self.declare(&c.head, out);
        if c.first_seq > self.next_seq {
            self.untold += c.first_seq - self.next_seq;
        }
        self.next_seq = c.first_seq + c.n_packets();
        for p in &c.packets {
            if let Some(s) = self.seen.get_mut(p.iface as usize) {
                s.base.get_or_insert(p.counted.before);
                s.last = Some(p.counted.after);
                s.offered += 1;
            }
        }
        if self.filter.is_none() && self.untold == 0 {
            for p in &c.packets {
                if let Some(s) = self.seen.get_mut(p.iface as usize) {
                    s.delivered += 1;
                }
            }
            out.shared(Bytes::from_owner(ChunkBytes(Arc::clone(c))));
            return;
        }
        for p in &c.packets {
            let data = c.data(p);
            if let Some(f) = &self.filter
                && !f.matches(p.link, data)
            {
                continue;
            }
            if let Some(s) = self.seen.get_mut(p.iface as usize) {
                s.delivered += 1;
            }
            if self.untold == 0 {
                out.extend(c.block(&p.block));
                continue;
            }
            let note = format!(
                "tapwire: {} packets of this stream dropped before this one (the reader fell behind)",
                self.untold
            );
            let comment = match c.comment(p) {
                Some(theirs) => format!("{theirs}; {note}"),
                None => note,
            };
            let packet = PacketInfo {
                ts_ns: p.ts_ns,
                orig_len: p.orig_len,
                data,
                direction: p.direction,
                comment: Some(&comment),
            };
            if self
                .enc
                .packet_after_drops(p.iface, &packet, Some(self.untold))
                .is_ok()
            {
                out.extend(self.enc.buffer());
                self.untold = 0;
            }
            self.enc.buffer().clear();
        }
    }

    /// A statistics block per interface: its source's packets and sequence loss since the
    /// stream started, what was dropped for this reader and what it was given.
    /// `comment`: the stream's end, on its last blocks.
    fn statistics(&mut self, shared: &Shared, now_ns: u64, comment: Option<&str>, out: &mut Out) {
        let drops = shared.drops.lock().map(|d| d.clone()).unwrap_or_default();
        // A source's drops go to its first interface (a second one is another link type).
        let mut told = rustc_hash::FxHashSet::default();
        for (i, s) in self.seen.iter().enumerate() {
            let os_dropped = if told.insert(s.source) {
                drops.get(&s.source).copied().unwrap_or(0)
            } else {
                0
            };
            let (received, lost) = match (s.base, s.last) {
                (Some(b), Some(l)) => (
                    l.packets.saturating_sub(b.packets),
                    l.lost.saturating_sub(b.lost),
                ),
                _ => (0, 0),
            };
            let stats = InterfaceStats {
                ts_ns: now_ns,
                start_ns: Some(self.started_ns),
                end_ns: Some(now_ns),
                received: Some(received.max(s.offered + os_dropped)),
                dropped: Some(lost),
                filter_accepted: self.filter.as_ref().map(|_| s.delivered),
                os_dropped: Some(os_dropped),
                delivered: Some(s.delivered),
            };
            if self
                .enc
                .statistics_with_comment(i as u32, &stats, comment)
                .is_ok()
            {
                out.extend(self.enc.buffer());
            }
            self.enc.buffer().clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::output::Counted;
    use crate::live::stream::{End, Streams, Totals};
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption as O;
    use pcap_file::pcapng::blocks::opt_common::CommonOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    use std::sync::atomic::AtomicUsize;
    use tapwire_formats::capture::LinkType;
    use tapwire_formats::decap::{Kind, SourceKey};

    fn subscribe(st: &mut Streams, totals: &mut Totals) -> Subscription {
        let (tx, _rx) = oneshot::channel();
        let req = Request {
            session: "s".into(),
            peer: "127.0.0.1:1".into(),
            filter: None,
            reply: tx,
        };
        let live = Arc::new(AtomicUsize::new(0));
        let mut baseline = FxHashMap::default();
        baseline.insert(
            SourceId::new(1, 0),
            SourceCounts {
                packets: 5,
                lost: 1,
            },
        );
        st.subscribe(&req, baseline, &live, 0, totals)
    }

    /// A UDP frame to `port`, 60 bytes.
    fn frame(port: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[
            0x45, 0, 0, 46, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        f.extend_from_slice(&[0x30, 0x39]);
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&[0, 26, 0, 0]);
        f.resize(60, 0);
        f
    }

    /// Packets `n` of source 1 (counts from 6 on, one gap of 3 at the second) to ports 53 and
    /// 80 in turn.
    fn push(st: &mut Streams, totals: &mut Totals, from: u64, n: u64) {
        let key = SourceKey {
            src: "10.0.0.5".parse().unwrap(),
            kind: Kind::ErspanII,
            id: 1,
        };
        for i in from..from + n {
            let f = frame(if i % 2 == 0 { 53 } else { 80 });
            let lost = if i >= 1 { 4 } else { 1 };
            let p = PacketInfo {
                ts_ns: 1_000 + i,
                orig_len: 60,
                data: &f,
                direction: None,
                comment: None,
            };
            let counted = Counted {
                before: SourceCounts {
                    packets: 5 + i,
                    lost: if i == 1 { 1 } else { lost },
                },
                after: SourceCounts {
                    packets: 6 + i,
                    lost,
                },
            };
            st.push(
                SourceId::new(1, 0),
                &key,
                LinkType::Ethernet,
                &p,
                counted,
                totals,
            );
        }
    }

    fn take(sub: &mut Subscription, w: &mut Writer, out: &mut Out) {
        while let Ok(c) = sub.chunks.try_recv() {
            w.chunk(&c, out);
        }
    }

    fn bytes(out: &mut Out) -> Vec<u8> {
        let mut v = Vec::new();
        while let Some(b) = out.pop() {
            v.extend_from_slice(&b);
        }
        v
    }

    /// What a pcapng reader finds: per packet (interface, UDP port, drop count, comment), and
    /// per statistics block its options.
    #[allow(clippy::type_complexity)]
    fn read(
        bytes: &[u8],
    ) -> (
        Vec<(u32, u16, Option<u64>, Option<String>)>,
        Vec<Vec<O<'static>>>,
    ) {
        let mut r = PcapNgReader::new(bytes).unwrap();
        let (mut packets, mut stats) = (Vec::new(), Vec::new());
        while let Some(b) = r.next_block() {
            match b.unwrap().0 {
                Block::EnhancedPacket(e) => {
                    let port = u16::from_be_bytes([e.data[36], e.data[37]]);
                    let drops = e.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::DropCount(n) => Some(*n),
                        _ => None,
                    });
                    let comment = e.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::Common(CommonOption::Comment(c)) => {
                            Some(c.to_string())
                        }
                        _ => None,
                    });
                    packets.push((e.interface_id, port, drops, comment));
                }
                Block::InterfaceStatistics(s) => stats.push(s.into_owned().options),
                _ => {}
            }
        }
        (packets, stats)
    }

    #[test]
    fn a_stream_is_pcapng_with_statistics() {
        let mut st = Streams::new();
        let mut totals = Totals::default();
        let mut sub = subscribe(&mut st, &mut totals);
        let mut out = Out::default();
        let mut w = Writer::new(&sub, None, 10, &mut out);
        push(&mut st, &mut totals, 0, 4);
        st.seal(&mut totals);
        take(&mut sub, &mut w, &mut out);
        w.statistics(&sub.shared, 20, None, &mut out);
        let (packets, stats) = read(&bytes(&mut out));
        let ports: Vec<u16> = packets.iter().map(|p| p.1).collect();
        assert_eq!(ports, vec![53, 80, 53, 80]);
        assert!(packets.iter().all(|p| p.0 == 0 && p.2.is_none()));
        let ns = Duration::from_nanos;
        assert_eq!(
            stats,
            vec![vec![
                O::IsbStartTime(ns(10)),
                O::IsbEndTime(ns(20)),
                O::IsbIfRecv(4),
                O::IsbIfDrop(3),
                O::IsbOsDrop(0),
                O::IsbUsrDeliv(4),
            ]]
        );
    }

    #[test]
    fn a_filtered_stream_takes_only_what_matches() {
        let mut st = Streams::new();
        let mut totals = Totals::default();
        let mut sub = subscribe(&mut st, &mut totals);
        let mut out = Out::default();
        let filter = Filter::new("udp port 80").unwrap();
        let mut w = Writer::new(&sub, Some(filter), 10, &mut out);
        push(&mut st, &mut totals, 0, 6);
        st.seal(&mut totals);
        take(&mut sub, &mut w, &mut out);
        w.statistics(&sub.shared, 20, None, &mut out);
        let (packets, stats) = read(&bytes(&mut out));
        assert_eq!(
            packets.iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![80, 80, 80]
        );
        assert!(stats[0].contains(&O::IsbFilterAccept(3)));
        assert!(stats[0].contains(&O::IsbIfRecv(6)));
    }

    /// A stream the engine ends: what was queued, then statistics blocks whose comment says
    /// why, then the end of the body.
    #[test]
    fn an_ended_stream_says_why_in_its_last_statistics() {
        let mut st = Streams::new();
        let mut totals = Totals::default();
        let sub = subscribe(&mut st, &mut totals);
        push(&mut st, &mut totals, 0, 3);
        st.close(End::CollectorStopping, &mut totals);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut all = Vec::new();
        rt.block_on(async {
            // Its statistics timer needs the runtime.
            let mut body = PcapngBody::new(sub, None);
            while let Some(Ok(b)) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await
            {
                all.extend_from_slice(&b);
            }
        });
        let (packets, stats) = read(&all);
        assert_eq!(packets.len(), 3);
        let last = stats.last().expect("statistics at the end");
        assert!(
            last.contains(&O::Common(CommonOption::Comment(
                "tapwire: the stream ended: the collector is stopping".into()
            ))),
            "{last:?}"
        );
    }

    /// Chunks the engine dropped for this reader: the next packet written says how many, in
    /// `epb_dropcount` and a comment, and the statistics count them as `isb_osdrop`.
    #[test]
    fn drops_are_told_in_the_next_packet_and_the_statistics() {
        let mut st = Streams::new();
        let mut totals = Totals::default();
        let mut sub = subscribe(&mut st, &mut totals);
        let mut out = Out::default();
        let mut w = Writer::new(&sub, None, 10, &mut out);
        // Fill the queue without reading: later chunks are dropped.
        let per_chunk = 100;
        let mut pushed = 0;
        while totals.dropped == 0 {
            push(&mut st, &mut totals, pushed, per_chunk);
            st.seal(&mut totals);
            pushed += per_chunk;
        }
        let dropped = totals.dropped;
        take(&mut sub, &mut w, &mut out);
        // Room again: the next chunk arrives.
        push(&mut st, &mut totals, pushed, 2);
        st.seal(&mut totals);
        take(&mut sub, &mut w, &mut out);
        w.statistics(&sub.shared, 20, None, &mut out);
        let (packets, stats) = read(&bytes(&mut out));
        assert_eq!(packets.len() as u64, pushed + 2 - dropped);
        let told: Vec<_> = packets.iter().filter(|p| p.2.is_some()).collect();
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].2, Some(dropped));
        let comment = told[0].3.as_deref().unwrap();
        assert!(
            comment.contains(&format!("{dropped} packets of this stream dropped")),
            "{comment}"
        );
        assert!(stats[0].contains(&O::IsbOsDrop(dropped)));
        assert!(stats[0].contains(&O::IsbIfRecv(pushed + 2)));
    }
}
