//! Live streams of a session's packets (`GET /api/v1/sessions/{name}/stream`): the engine's
//! half. The API's half, which writes each subscriber's pcapng stream, is `http::stream`.
//!
//! While a session has subscribers, the engine encodes each packet it writes (the same
//! timestamp, direction and comment as in its files) once, as a pcapng Enhanced Packet Block,
//! into the session's open [`Chunk`], with an interface block the first time a source appears.
//! A chunk is sealed at the end of each input batch (or when it reaches [`CHUNK_BYTES`]) and
//! handed to every subscriber as one shared `Arc`: the engine's work per subscriber is one
//! non-blocking push per chunk, never per packet, and never an encoding. Each subscriber's
//! queue is bounded in bytes ([`QUEUE_BYTES`]); a chunk that does not fit is dropped for that
//! subscriber alone and its packets counted, per source, as that subscriber's drops. Nothing a
//! reader does can slow the engine or the files.
//!
//! Interface ids are the session's (the order its sources first reached its streams), so the
//! packet blocks are the same bytes for every subscriber. The section header and the
//! interface blocks are kept apart, in the session's [`Head`], which each chunk points to:
//! a subscriber writes the interface blocks it has not written yet before a chunk's packets,
//! also when the chunk that first used them was dropped for it. Streams start live: no
//! packet from before the subscription is sent.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustc_hash::FxHashMap;
use tapwire_formats::capture::{Encoder, Format, LinkType, PacketInfo};
use tapwire_formats::decap::SourceKey;
use tapwire_formats::wire::erspan::Direction;
use tokio::sync::{mpsc, oneshot};

use super::output::{Counted, SourceCounts};
use crate::demux::SourceId;
use crate::offline::interface_info;

/// A chunk is sealed and handed over when its blocks reach this size (and at the end of each
/// input batch, whatever its size).
pub const CHUNK_BYTES: usize = 64 << 10;
/// Bytes of chunks a subscriber may have queued and not yet read; past it, chunks are dropped
/// for that subscriber.
pub const QUEUE_BYTES: usize = 8 << 20;
/// Chunks a subscriber may have queued (small chunks at low rates would otherwise hold few
/// bytes but many blocks).
const QUEUE_CHUNKS: usize = 4096;
/// Subscribers across all sessions when the operator sets none (`collect --max-streams`).
pub const DEFAULT_MAX_STREAMS: usize = 64;

#[derive(Debug, Clone)]
pub struct Packet {
    pub block: Range<u32>,
    pub source: SourceId,
    pub iface: u32,
    pub link: LinkType,
    pub ts_ns: u64,
    pub orig_len: u32,
    pub data_len: u32,
    pub direction: Option<Direction>,
    /// Its comment, in [`Chunk::comments`].
    pub comment: Option<Range<u32>>,
    /// Its source's counts before and after it.
    pub counted: Counted,
}

/// Offset of an Enhanced Packet Block's data (after type, length, interface, timestamp and
/// the two lengths).
const EPB_DATA_OFFSET: u32 = 28;

/// A session's section header and interface blocks: interface `i`'s block is `idbs[i]` of
/// `bytes`, which starts with the section header.
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub bytes: Vec<u8>,
    pub idbs: Vec<Range<u32>>,
    /// The source and link type of each interface.
    pub sources: Vec<SourceId>,
    pub links: Vec<LinkType>,
}

impl Head {
    /// The section header.
    pub fn section(&self) -> &[u8] {
        let end = self
            .idbs
            .first()
            .map_or(self.bytes.len(), |r| r.start as usize);
        &self.bytes[..end]
    }

    /// The blocks of interfaces `from..`.
    pub fn interfaces_from(&self, from: usize) -> &[u8] {
        match self.idbs.get(from) {
            Some(r) => &self.bytes[r.start as usize..],
            None => &[],
        }
    }
}

/// One session's packets as Enhanced Packet Blocks, shared by all its subscribers.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Number of its first packet among those the session offered its streams.
    pub first_seq: u64,
    /// The session's interfaces when the chunk was sealed (every one its packets use).
    pub head: Arc<Head>,
    pub bytes: Vec<u8>,
    pub packets: Vec<Packet>,
    pub comments: String,
    /// Packets per source.
    pub tally: Vec<(SourceId, u64)>,
}

impl Chunk {
    pub fn n_packets(&self) -> u64 {
        self.packets.len() as u64
    }

    /// A packet's frame bytes.
    pub fn data(&self, p: &Packet) -> &[u8] {
        let start = (p.block.start + EPB_DATA_OFFSET) as usize;
        self.bytes
            .get(start..start + p.data_len as usize)
            .unwrap_or_default()
    }

    pub fn comment(&self, p: &Packet) -> Option<&str> {
        let r = p.comment.as_ref()?;
        self.comments.get(r.start as usize..r.end as usize)
    }

    pub fn block(&self, r: &Range<u32>) -> &[u8] {
        self.bytes
            .get(r.start as usize..r.end as usize)
            .unwrap_or_default()
    }
}

/// Why a stream ended, as its subscriber is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    SessionDeleted,
    CollectorStopping,
}

impl End {
    pub fn message(self) -> &'static str {
        match self {
            End::SessionDeleted => "the session was deleted",
            End::CollectorStopping => "the collector is stopping",
        }
    }
}

/// What a subscriber and the engine share besides the queue.
#[derive(Debug, Default)]
pub struct Shared {
    /// Bytes of chunks queued and not yet taken by the reader.
    pub queued_bytes: AtomicUsize,
    /// Packets dropped for this subscriber, per source, since it subscribed. The engine
    /// adds to it only with `try_lock` (it never waits for the reader) and at the end.
    pub drops: Mutex<FxHashMap<SourceId, u64>>,
    pub end: OnceLock<End>,
}

impl Shared {
    /// Every packet dropped for this subscriber so far.
    pub fn dropped(&self) -> u64 {
        self.drops.lock().map(|d| d.values().sum()).unwrap_or(0)
    }
}

/// Counts the streams being served, so that a stopping collector can let them end.
#[derive(Debug)]
pub struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    pub fn new(live: &Arc<AtomicUsize>) -> LiveGuard {
        live.fetch_add(1, Ordering::Relaxed);
        LiveGuard(Arc::clone(live))
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a new subscriber gets from the engine.
#[derive(Debug)]
pub struct Subscription {
    pub chunks: mpsc::Receiver<Arc<Chunk>>,
    pub shared: Arc<Shared>,
    /// The section header and every interface block so far: the stream's first bytes.
    pub head: Arc<Head>,
    /// The counts of the session's sources when the stream started.
    pub baseline: FxHashMap<SourceId, SourceCounts>,
    /// Number of the first packet it will be offered.
    pub first_seq: u64,
    pub live: LiveGuard,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no session named {0:?}")]
    NoSession(String),
    #[error("{0} live streams already, the most this collector serves (collect --max-streams)")]
    Full(usize),
}

/// A subscription request, as the API sends it to the engine.
#[derive(Debug)]
pub struct Request {
    pub session: String,
    /// Who asked (`10.0.0.9:51234`) and with which filter, for the stats.
    pub peer: String,
    pub filter: Option<String>,
    pub reply: oneshot::Sender<Result<Subscription, Refusal>>,
}

/// One subscriber as the engine keeps it.
struct Subscriber {
    chunks: mpsc::Sender<Arc<Chunk>>,
    shared: Arc<Shared>,
    /// Drops not yet added to `shared.drops` (its lock was held by the reader).
    pending: Vec<(SourceId, u64)>,
    peer: String,
    filter: Option<String>,
    since_ns: u64,
    delivered: u64,
    dropped: u64,
}

impl Subscriber {
    /// Moves the pending drops into the shared counts; waits for the lock only if `wait`.
    fn sync_drops(&mut self, wait: bool) {
        if self.pending.is_empty() {
            return;
        }
        let locked = if wait {
            self.shared.drops.lock().ok()
        } else {
            self.shared.drops.try_lock().ok()
        };
        if let Some(mut d) = locked {
            for (source, n) in self.pending.drain(..) {
                *d.entry(source).or_default() += n;
            }
        }
    }

    fn end(&mut self, why: End) {
        self.sync_drops(true);
        let _ = self.shared.end.set(why);
    }
}

/// A session's streams: its subscribers and the chunk being filled.
pub struct Streams {
    enc: Encoder,
    head: Arc<Head>,
    ifaces: FxHashMap<(SourceId, LinkType), u32>,
    open: Chunk,
    next_seq: u64,
    subscribers: Vec<Subscriber>,
}

/// A session's stream counters, kept while it has no subscribers too.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub delivered: u64,
    pub dropped: u64,
}

impl Default for Streams {
    fn default() -> Self {
        Streams::new()
    }
}

impl Streams {
    pub fn new() -> Streams {
        let mut enc = Encoder::new(Format::Pcapng);
        let head = Arc::new(Head {
            bytes: enc.take_bytes(),
            ..Head::default()
        });
        Streams {
            enc,
            head,
            ifaces: FxHashMap::default(),
            open: Chunk::default(),
            next_seq: 0,
            subscribers: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    /// Adds a subscriber; `baseline` holds its session's sources' counts now.
    pub fn subscribe(
        &mut self,
        req: &Request,
        baseline: FxHashMap<SourceId, SourceCounts>,
        live: &Arc<AtomicUsize>,
        now_ns: u64,
        totals: &mut Totals,
    ) -> Subscription {
        // Packets already in the open chunk go to the others: this one starts after them.
        self.seal(totals);
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        let shared = Arc::new(Shared::default());
        self.subscribers.push(Subscriber {
            chunks: tx,
            shared: Arc::clone(&shared),
            pending: Vec::new(),
            peer: req.peer.clone(),
            filter: req.filter.clone(),
            since_ns: now_ns,
            delivered: 0,
            dropped: 0,
        });
        Subscription {
            chunks: rx,
            shared,
            head: Arc::clone(&self.head),
            baseline,
            first_seq: self.next_seq,
            live: LiveGuard::new(live),
        }
    }

    /// Encodes one packet into the open chunk (and its source's interface block into the
    /// head, the first time). Returns true when the chunk was empty before (the caller seals
    /// it at the end of the batch); seals it itself when it is full.
    pub fn push(
        &mut self,
        source: SourceId,
        key: &SourceKey,
        link: LinkType,
        p: &PacketInfo<'_>,
        counted: Counted,
        totals: &mut Totals,
    ) -> bool {
        let was_empty = self.open.packets.is_empty();
        let iface = match self.ifaces.get(&(source, link)) {
            Some(&i) => i,
            None => {
                let start = self.enc.pending_len();
                let Ok(i) = self.enc.add_interface(&interface_info(key, link)) else {
                    return was_empty;
                };
                // The block goes to the head, not the chunk.
                let head = Arc::make_mut(&mut self.head);
                let from = head.bytes.len() as u32;
                head.bytes.extend_from_slice(&self.enc.buffer()[start..]);
                head.idbs.push(from..head.bytes.len() as u32);
                head.sources.push(source);
                head.links.push(link);
                self.enc.buffer().truncate(start);
                self.ifaces.insert((source, link), i);
                i
            }
        };
        let start = self.enc.pending_len();
        if self.enc.packet(iface, p).is_err() {
            return was_empty;
        }
        let end = self.enc.pending_len();
        let comment = p.comment.map(|c| {
            let from = self.open.comments.len();
            self.open.comments.push_str(c);
            from as u32..self.open.comments.len() as u32
        });
        self.open.packets.push(Packet {
            block: start as u32..end as u32,
            source,
            iface,
            link,
            ts_ns: p.ts_ns,
            orig_len: p.orig_len,
            data_len: p.data.len() as u32,
            direction: p.direction,
            comment,
            counted,
        });
        match self.open.tally.last_mut() {
            Some(t) if t.0 == source => t.1 += 1,
            _ => match self.open.tally.iter_mut().find(|t| t.0 == source) {
                Some(t) => t.1 += 1,
                None => self.open.tally.push((source, 1)),
            },
        }
        if end >= CHUNK_BYTES {
            self.seal(totals);
        }
        was_empty
    }

    /// Hands the open chunk to every subscriber whose queue has room for it; the others
    /// count its packets as dropped. Subscribers that went away are removed.
    pub fn seal(&mut self, totals: &mut Totals) {
        if self.open.packets.is_empty() {
            return;
        }
        let mut chunk = std::mem::take(&mut self.open);
        chunk.head = Arc::clone(&self.head);
        chunk.bytes = std::mem::replace(
            self.enc.buffer(),
            Vec::with_capacity(CHUNK_BYTES + (16 << 10)),
        );
        chunk.first_seq = self.next_seq;
        let n = chunk.n_packets();
        self.next_seq += n;
        let len = chunk.bytes.len();
        let chunk = Arc::new(chunk);
        self.subscribers.retain_mut(|s| {
            let queued = s.shared.queued_bytes.load(Ordering::Relaxed);
            let sent = if queued + len > QUEUE_BYTES {
                Err(false)
            } else {
                // Counted before the reader can take it and subtract.
                s.shared.queued_bytes.fetch_add(len, Ordering::Relaxed);
                s.chunks.try_send(Arc::clone(&chunk)).map_err(|e| {
                    s.shared.queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    matches!(e, mpsc::error::TrySendError::Closed(_))
                })
            };
            match sent {
                Ok(()) => {
                    s.delivered += n;
                    totals.delivered += n;
                    true
                }
                Err(closed) => {
                    if closed {
                        return false;
                    }
                    s.dropped += n;
                    totals.dropped += n;
                    for &(source, k) in &chunk.tally {
                        match s.pending.iter_mut().find(|p| p.0 == source) {
                            Some(p) => p.1 += k,
                            None => s.pending.push((source, k)),
                        }
                    }
                    s.sync_drops(false);
                    true
                }
            }
        });
    }

    /// Periodic work: drops not yet shared are shared, subscribers that went away removed.
    pub fn tick(&mut self) {
        self.subscribers.retain_mut(|s| {
            s.sync_drops(false);
            !s.chunks.is_closed()
        });
    }

    /// Ends every stream, telling each subscriber why, after what is queued.
    pub fn close(&mut self, why: End, totals: &mut Totals) {
        self.seal(totals);
        for s in &mut self.subscribers {
            s.end(why);
        }
        self.subscribers.clear();
    }

    /// The subscribers, for the stats snapshot.
    pub fn stats(&self) -> Vec<tapwire_api_types::StreamSubscriber> {
        self.subscribers
            .iter()
            .map(|s| tapwire_api_types::StreamSubscriber {
                peer: s.peer.clone(),
                filter: s.filter.clone(),
                since: tapwire_api_types::time::rfc3339_ns(s.since_ns),
                delivered: s.delivered,
                dropped: s.dropped,
                queued_bytes: s.shared.queued_bytes.load(Ordering::Relaxed) as u64,
            })
            .collect()
    }
}

impl Drop for Streams {
    /// A session's streams that end without a reason given end as deleted.
    fn drop(&mut self) {
        for s in &mut self.subscribers {
            s.end(End::SessionDeleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapwire_formats::decap::Kind;

    fn key(id: u32) -> SourceKey {
        SourceKey {
            src: "10.0.0.5".parse().unwrap(),
            kind: Kind::ErspanII,
            id,
        }
    }

    fn request() -> (Request, oneshot::Receiver<Result<Subscription, Refusal>>) {
        let (tx, rx) = oneshot::channel();
        (
            Request {
                session: "s".into(),
                peer: "127.0.0.1:1".into(),
                filter: None,
                reply: tx,
            },
            rx,
        )
    }

    fn push(st: &mut Streams, source: u32, n: usize, totals: &mut Totals) {
        let frame = vec![0xab; 1000];
        for _ in 0..n {
            let p = PacketInfo {
                ts_ns: 1,
                orig_len: 1000,
                data: &frame,
                direction: Some(Direction::Ingress),
                comment: Some("c"),
            };
            st.push(
                SourceId::new(source, 0),
                &key(source),
                LinkType::Ethernet,
                &p,
                Counted::default(),
                totals,
            );
        }
    }

    /// A reader that does not read loses whole chunks, counted per source and in all, once its
    /// queue is full; another subscriber of the same session loses nothing; the engine never
    /// waits.
    #[test]
    fn a_stalled_reader_loses_chunks_alone() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut st = Streams::new();
        let mut totals = Totals::default();
        let (req, _) = request();
        let slow = st.subscribe(&req, FxHashMap::default(), &live, 0, &mut totals);
        let mut fast = st.subscribe(&req, FxHashMap::default(), &live, 0, &mut totals);
        let mut slow = slow;
        assert_eq!(live.load(Ordering::Relaxed), 2);
        assert_eq!(slow.first_seq, 0);
        // Well over the queue's bytes, in chunks of about 64 KiB.
        let mut fast_got = 0;
        for round in 0..200 {
            push(&mut st, 1 + round % 2, 100, &mut totals);
            st.seal(&mut totals);
            while let Ok(c) = fast.chunks.try_recv() {
                fast.shared
                    .queued_bytes
                    .fetch_sub(c.bytes.len(), Ordering::Relaxed);
                fast_got += c.n_packets();
            }
        }
        assert_eq!(fast_got, 20_000);
        let (mut slow_got, mut next, mut gaps) = (0, 0, 0);
        while let Ok(c) = slow.chunks.try_recv() {
            if c.first_seq != next {
                gaps += 1;
            }
            next = c.first_seq + c.n_packets();
            slow_got += c.n_packets();
        }
        assert!(slow_got < 20_000 && slow_got * 1024 >= QUEUE_BYTES as u64 * 9 / 10);
        assert_eq!(gaps, 0, "the first chunks are kept, the later ones dropped");
        let dropped = slow.shared.dropped();
        assert_eq!(slow_got + dropped, 20_000);
        assert_eq!(totals.dropped, dropped);
        assert_eq!(totals.delivered, 20_000 + slow_got);
        let per_source = slow.shared.drops.lock().unwrap().clone();
        assert_eq!(per_source.len(), 2);
        assert!(per_source.values().all(|&n| n > 0));
        let stats = st.stats();
        assert_eq!((stats[0].dropped, stats[1].dropped), (dropped, 0));
        // Gone readers are removed; ending the others tells them why.
        drop(fast);
        st.tick();
        assert_eq!(st.len(), 1);
        st.close(End::SessionDeleted, &mut totals);
        assert!(st.is_empty());
        assert_eq!(slow.shared.end.get(), Some(&End::SessionDeleted));
        drop(slow);
        assert_eq!(live.load(Ordering::Relaxed), 0);
    }

    /// Interface blocks go to the head, in the order sources appear; a later subscriber gets
    /// all of them and starts after what was already pushed.
    #[test]
    fn later_subscribers_get_every_interface_and_start_live() {
        let live = Arc::new(AtomicUsize::new(0));
        let mut st = Streams::new();
        let mut totals = Totals::default();
        let (req, _) = request();
        let mut a = st.subscribe(&req, FxHashMap::default(), &live, 0, &mut totals);
        assert!(a.head.idbs.is_empty());
        push(&mut st, 7, 2, &mut totals);
        push(&mut st, 9, 1, &mut totals);
        let mut b = st.subscribe(&req, FxHashMap::default(), &live, 0, &mut totals);
        push(&mut st, 9, 1, &mut totals);
        st.seal(&mut totals);
        let first = a.chunks.try_recv().unwrap();
        assert_eq!(first.first_seq, 0);
        assert_eq!(
            first.head.sources,
            vec![SourceId::new(7, 0), SourceId::new(9, 0)]
        );
        let ifaces: Vec<u32> = first.packets.iter().map(|p| p.iface).collect();
        assert_eq!(ifaces, vec![0, 0, 1]);
        let p = &first.packets[1];
        assert_eq!(first.data(p), &[0xab; 1000][..]);
        assert_eq!(first.comment(p), Some("c"));
        assert_eq!(b.first_seq, 3);
        assert_eq!(
            b.head.sources,
            vec![SourceId::new(7, 0), SourceId::new(9, 0)]
        );
        let second = b.chunks.try_recv().unwrap();
        assert_eq!((second.first_seq, second.n_packets()), (3, 1));
        assert!(a.chunks.try_recv().is_ok());
        // The head is a section header and the two interface blocks; the chunk's bytes are
        // its three packets' blocks.
        let block_types = |bytes: &[u8]| {
            let mut v = Vec::new();
            let mut at = 0;
            while at + 8 <= bytes.len() {
                v.push(u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()));
                at += u32::from_ne_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            }
            v
        };
        assert_eq!(block_types(&b.head.bytes), vec![0x0A0D_0D0A, 1, 1]);
        assert_eq!(block_types(b.head.section()), vec![0x0A0D_0D0A]);
        assert_eq!(block_types(b.head.interfaces_from(1)), vec![1]);
        assert_eq!(block_types(&first.bytes), vec![6, 6, 6]);
    }
}
