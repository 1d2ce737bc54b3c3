//! Packet retrieval: the packets of a time range (and a session, a source, a tcpdump filter)
//! across a session's rotated capture files, as one pcapng, merged by timestamp.
//!
//! ```text
//! Catalog (where are the files)  ->  Indexed (each file's .twidx, completed by a scan)
//!   -> Plan (what the index can answer of the filter) -> candidate ranges, an estimate
//!   -> Stream per file (ranges read, each packet judged by time, source and libpcap)
//!   -> merge by (timestamp, file order, record order) -> pcapng out
//! ```
//! The output: a section header whose comments say what was asked and hold the sequence-gap
//! comments of the range (from the indexes: also those of packets the filter leaves out) and
//! the damage found while planning; one interface block per source, carried over from the
//! capture files with its options (identical ones, as in rotated files, become one) and
//! renumbered; the packet blocks copied whole. Damage found while reading is named in a last
//! section header after the packets (tshark and capinfos show its comments).
//!
//! The merge takes, at each step, the earliest packet at the head of each file's stream
//! (equal times: the later file's, as mergecap does: checked against it on the public captures); files are opened when the merge reaches
//! their first candidate time, so memory is one read buffer per file overlapping in time.

pub mod catalog;
pub mod fleet;
pub(crate) mod indexed;
pub mod plan;
mod read;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Write};
use std::net::IpAddr;

use serde::Serialize;
use tapwire_api_types::time::rfc3339_ns;
use tapwire_formats::capture::LinkType;
use tapwire_formats::capture::pcapng::{self, Endian, Framed};
use tapwire_formats::capture::walk::{Layout, RecordKind};

use crate::filter::Filter;
use catalog::Catalog;
use indexed::Indexed;
use plan::Plan;
use read::{Head, Judge, Stream};

/// Gap comments listed in the output's section header; the rest are counted.
pub const MAX_GAP_COMMENTS: usize = 1000;
/// Output is handed to the writer in pieces of this size.
const OUT_CHUNK: usize = 1 << 20;
/// Memory for the read buffers of the files open at once.
const READ_BUDGET_BYTES: u64 = 64 << 20;

/// What a query asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// One session's files (`None`: every session's).
    pub session: Option<String>,
    /// Only packets of this mirroring source (the outer source address).
    pub source: Option<IpAddr>,
    /// The time range, nanoseconds since the epoch, both ends included.
    pub from_ns: u64,
    pub to_ns: u64,
    /// A tcpdump filter on the inner frames.
    pub filter: Option<String>,
}

/// What the index says a query would read, before it is run: an upper bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Estimate {
    /// Capture files with something to read.
    pub files: usize,
    /// Index ranges to read.
    pub ranges: usize,
    /// Packets in them.
    pub packets: u64,
    /// Bytes of capture in them.
    pub bytes: u64,
}

/// Why a query is refused before it runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// A malformed request (names, times).
    #[error("{0}")]
    BadRequest(String),
    /// libpcap refused the filter; its message.
    #[error("filter: {0}")]
    Filter(String),
    /// More than the limit would be read.
    #[error("the query would read up to {} bytes of captures ({} packets in {} files), more than the limit of {limit_bytes} bytes: narrow the time range or the filter", .estimate.bytes, .estimate.packets, .estimate.files)]
    TooLarge {
        estimate: Estimate,
        limit_bytes: u64,
    },
    /// The files could not be listed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What a query wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub packets: u64,
    /// Bytes of pcapng written.
    pub bytes: u64,
    /// Bytes of capture read.
    pub bytes_read: u64,
    pub estimate: Estimate,
    /// What the index could not answer of the filter, if anything.
    pub time_only: Option<String>,
    /// Damage named in the output.
    pub notes: Vec<String>,
}

/// libpcap, judging each packet: the filter compiled for Ethernet and raw IP (the inner frames
/// tapwire writes), and on first need for any other link type a file holds.
struct Bpf {
    filter: Option<Filter>,
    others: HashMap<u32, Option<pcap::BpfProgram>>,
}

impl Judge for Bpf {
    #[inline]
    fn matches(&mut self, link: LinkType, frame: &[u8]) -> bool {
        let Some(f) = &self.filter else {
            return true;
        };
        match link {
            LinkType::Ethernet | LinkType::Raw => f.matches(link, frame),
            other => {
                let dlt = u32::from(other);
                let expr = f.expr();
                self.others
                    .entry(dlt)
                    .or_insert_with(|| {
                        pcap::Capture::dead(pcap::Linktype(dlt as i32))
                            .ok()
                            .and_then(|c| c.compile(expr, true).ok())
                    })
                    .as_ref()
                    .is_some_and(|p| p.filter(frame))
            }
        }
    }
}

/// One file to read: its index, the ranges to read, the interfaces wanted.
struct Planned {
    ix: Indexed,
    order: usize,
    candidates: Vec<usize>,
    ifaces: Option<Vec<bool>>,
    first_ns: u64,
    /// Interface blocks in this machine's byte order, by interface.
    idbs: Vec<Vec<u8>>,
}

/// A query planned: its files and ranges chosen, ready to write.
pub struct Prepared {
    files: Vec<Planned>,
    judge: Bpf,
    comments: Vec<String>,
    summary: Summary,
    from_ns: u64,
    to_ns: u64,
}

/// The outer source address a capture interface stands for: the first word of its name
/// (`10.0.0.5 erspan-ii session 42`), or of the file name for classic pcap.
fn source_of(name: Option<&str>, file_name: &str) -> Option<IpAddr> {
    match name {
        Some(n) => n.split_whitespace().next()?.parse().ok(),
        None => file_name.split('_').next()?.parse().ok(),
    }
}

/// The interface blocks of a file in this machine's byte order (classic pcap: one made from its
/// header).
fn native_idbs(ix: &Indexed) -> Vec<Vec<u8>> {
    if ix.pcap {
        return ix
            .interfaces
            .iter()
            .map(|i| {
                let mut b = Vec::new();
                pcapng::put_interface(&mut b, i.link, i.snaplen, "");
                b
            })
            .collect();
    }
    let mut endian = Endian::native();
    let mut out = Vec::new();
    for (_, bytes) in &ix.metas {
        if let Framed::Block {
            kind, endian: e, ..
        } = pcapng::frame(bytes, endian)
        {
            endian = e;
            if kind == pcapng::IDB {
                let mut b = Vec::new();
                if pcapng::to_native(kind, bytes, e, &mut b).is_none() {
                    let i = pcapng::interface(bytes, e);
                    pcapng::put_interface(
                        &mut b,
                        i.as_ref().map_or(LinkType::Ethernet, |i| i.link),
                        i.as_ref().map_or(0, |i| i.snaplen),
                        i.as_ref().and_then(|i| i.name.as_deref()).unwrap_or(""),
                    );
                }
                out.push(b);
            }
        }
    }
    out
}

/// Plans `req` over the files `catalog` names: checks the request and the filter, reads each
/// file's index, picks the ranges that may hold a match, and refuses a query whose estimate
/// exceeds `max_bytes`.
pub fn prepare(
    catalog: &dyn Catalog,
    req: &Request,
    max_bytes: Option<u64>,
) -> Result<Prepared, QueryError> {
    if req.from_ns > req.to_ns {
        return Err(QueryError::BadRequest(format!(
            "from ({}) is after to ({})",
            rfc3339_ns(req.from_ns),
            rfc3339_ns(req.to_ns)
        )));
    }
    if let Some(s) = &req.session {
        crate::config::validate_name(s)
            .map_err(|e| QueryError::BadRequest(format!("session {s:?}: {e}")))?;
    }
    let filter = match req
        .filter
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        Some(f) => Some(Filter::new(f).map_err(|e| QueryError::Filter(e.to_string()))?),
        None => None,
    };
    let plan = Plan::of(req.filter.as_deref());
    let refs = catalog.files(req.session.as_deref(), req.from_ns, req.to_ns)?;
    let mut summary = Summary {
        time_only: match &plan {
            Plan::TimeOnly(why) => Some(why.clone()),
            _ => None,
        },
        ..Summary::default()
    };
    let mut notes = Vec::new();
    let mut gaps = Vec::new();
    let mut n_gaps = 0usize;
    let mut files = Vec::new();
    for (order, f) in refs.into_iter().enumerate() {
        if f.first_ns.is_some_and(|t| t > req.to_ns) || f.last_ns.is_some_and(|t| t < req.from_ns) {
            continue;
        }
        let ix = match indexed::load(&f) {
            Ok(ix) => ix,
            // Removed meanwhile (ring deletion): nothing to read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                notes.push(format!("{}: not read: {e}", f.name()));
                continue;
            }
        };
        notes.extend(ix.notes.iter().cloned());
        let ifaces = req.source.map(|src| {
            let file_name = f.name();
            ix.interfaces
                .iter()
                .map(|i| {
                    source_of(if ix.pcap { None } else { i.name.as_deref() }, &file_name)
                        == Some(src)
                })
                .collect::<Vec<bool>>()
        });
        let wanted = |i: u32| {
            ifaces
                .as_ref()
                .is_none_or(|w| w.get(i as usize).copied().unwrap_or(false))
        };
        let mut candidates = Vec::new();
        let mut first_ns = u64::MAX;
        for (i, r) in ix.ranges.iter().enumerate() {
            if r.n_packets == 0 || r.ts_max_ns < req.from_ns || r.ts_min_ns > req.to_ns {
                continue;
            }
            for c in &r.comments {
                if c.ts_ns >= req.from_ns && c.ts_ns <= req.to_ns && wanted(c.iface) {
                    n_gaps += 1;
                    if gaps.len() < MAX_GAP_COMMENTS {
                        let source = ix
                            .interfaces
                            .get(c.iface as usize)
                            .and_then(|i| i.name.clone())
                            .unwrap_or_else(|| f.name());
                        gaps.push((
                            c.ts_ns,
                            order,
                            format!("{} {source}: {}", rfc3339_ns(c.ts_ns), c.text),
                        ));
                    }
                }
            }
            n_gaps += r.comments_dropped as usize;
            if ifaces.is_some() && !r.ifaces().iter().any(|i| wanted(i as u32)) {
                continue;
            }
            if !plan.may_match(r) {
                continue;
            }
            candidates.push(i);
            first_ns = first_ns.min(r.ts_min_ns);
            summary.estimate.ranges += 1;
            summary.estimate.packets += u64::from(r.n_packets);
            summary.estimate.bytes += r.len;
        }
        if candidates.is_empty() {
            continue;
        }
        summary.estimate.files += 1;
        let idbs = native_idbs(&ix);
        files.push(Planned {
            ix,
            order,
            candidates,
            ifaces,
            first_ns: first_ns.max(req.from_ns),
            idbs,
        });
    }
    if let Some(limit) = max_bytes
        && summary.estimate.bytes > limit
    {
        return Err(QueryError::TooLarge {
            estimate: summary.estimate,
            limit_bytes: limit,
        });
    }
    let mut comments = vec![describe(req)];
    comments.extend(notes.iter().cloned());
    gaps.sort_by_key(|g| (g.0, g.1));
    comments.extend(gaps.into_iter().map(|g| g.2));
    if n_gaps > MAX_GAP_COMMENTS {
        comments.push(format!(
            "{} more sequence-gap comments in the range are not listed",
            n_gaps - MAX_GAP_COMMENTS
        ));
    }
    summary.notes = notes;
    Ok(Prepared {
        files,
        judge: Bpf {
            filter,
            others: HashMap::new(),
        },
        comments,
        summary,
        from_ns: req.from_ns,
        to_ns: req.to_ns,
    })
}

/// The first comment of the output: what was asked.
pub fn describe(req: &Request) -> String {
    let mut s = format!(
        "tapwire query: from {} to {}",
        rfc3339_ns(req.from_ns),
        rfc3339_ns(req.to_ns)
    );
    if let Some(x) = &req.session {
        s.push_str(&format!(", session {x}"));
    }
    if let Some(x) = &req.source {
        s.push_str(&format!(", source {x}"));
    }
    if let Some(x) = req.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        s.push_str(&format!(", filter {x:?}"));
    }
    s
}

/// Output buffered and handed on in large pieces.
struct Out<'w> {
    w: &'w mut dyn Write,
    buf: Vec<u8>,
    written: u64,
}

impl Out<'_> {
    fn maybe_flush(&mut self) -> io::Result<()> {
        if self.buf.len() >= OUT_CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Prepared {
    /// What the index says it will read.
    pub fn estimate(&self) -> Estimate {
        self.summary.estimate
    }

    /// Writes the pcapng to `w`, merged by timestamp. An error is the writer's (a reader gone)
    /// or the disk's; damage in the files is named in the output instead.
    pub fn write(mut self, w: &mut dyn Write) -> io::Result<Summary> {
        let mut out = Out {
            w,
            buf: Vec::with_capacity(OUT_CHUNK + (64 << 10)),
            written: 0,
        };
        pcapng::put_section_header(
            &mut out.buf,
            concat!("tapwire ", env!("CARGO_PKG_VERSION")),
            &self.comments,
        );
        let read_max =
            (READ_BUDGET_BYTES / self.files.len().max(1) as u64).clamp(128 << 10, 4 << 20);
        // Files not yet opened, latest first (popped from the end).
        let mut pending: Vec<Planned> = std::mem::take(&mut self.files);
        pending.sort_by_key(|p| Reverse((p.first_ns, p.order)));
        let mut streams: Vec<(Stream, usize, Vec<Vec<u8>>)> = Vec::new();
        // Earliest time first; of equal times, the later file's (mergecap's order).
        let mut heap: BinaryHeap<Reverse<(u64, Reverse<usize>, usize)>> = BinaryHeap::new();
        let mut iface_ids: HashMap<(usize, u32), u32> = HashMap::new();
        let mut idb_ids: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut notes = Vec::new();
        loop {
            // Open every file whose first candidate time the merge has reached (with nothing
            // to merge, the next one).
            loop {
                let now = heap.peek().map(|Reverse((ts, _, _))| *ts);
                if pending
                    .last()
                    .is_none_or(|p| now.is_some_and(|t| p.first_ns > t))
                {
                    break;
                }
                let Some(p) = pending.pop() else { break };
                let mut s = Stream::new(
                    p.ix,
                    &p.candidates,
                    self.from_ns,
                    self.to_ns,
                    p.ifaces,
                    read_max,
                );
                let slot = streams.len();
                if s.advance(&mut self.judge)? {
                    let h = s.head.as_ref().map_or(0, |h| h.ts_ns);
                    heap.push(Reverse((h, Reverse(p.order), slot)));
                } else {
                    notes.append(&mut s.notes);
                    self.summary.bytes_read += s.bytes_read;
                    s.buf = Vec::new();
                }
                streams.push((s, p.order, p.idbs));
            }
            let Some(Reverse((_, Reverse(order), slot))) = heap.pop() else {
                break;
            };
            let (s, _, idbs) = &mut streams[slot];
            if let Some(h) = s.head {
                let id = match iface_ids.get(&(order, h.iface)) {
                    Some(&id) => id,
                    None => {
                        let idb = idbs.get(h.iface as usize).cloned().unwrap_or_default();
                        let next = idb_ids.len() as u32;
                        let id = *idb_ids.entry(idb.clone()).or_insert_with(|| {
                            out.buf.extend_from_slice(&idb);
                            next
                        });
                        iface_ids.insert((order, h.iface), id);
                        id
                    }
                };
                put_packet(&mut out.buf, s, &h, id);
                self.summary.packets += 1;
                out.maybe_flush()?;
            }
            if s.advance(&mut self.judge)? {
                let ts = s.head.as_ref().map_or(0, |h| h.ts_ns);
                heap.push(Reverse((ts, Reverse(order), slot)));
            } else {
                notes.append(&mut s.notes);
                self.summary.bytes_read += s.bytes_read;
                // Its buffer is not needed any more.
                s.buf = Vec::new();
            }
        }
        if !notes.is_empty() {
            // Damage found while reading: named in a last section header, after the packets.
            let mut comments = vec!["tapwire query: damage found while reading".to_string()];
            comments.extend(notes.iter().cloned());
            pcapng::put_section_header(
                &mut out.buf,
                concat!("tapwire ", env!("CARGO_PKG_VERSION")),
                &comments,
            );
            self.summary.notes.extend(notes);
        }
        out.flush()?;
        out.w.flush()?;
        self.summary.bytes = out.written;
        Ok(self.summary)
    }
}

/// Appends the packet at the head of `s` as an enhanced packet block of interface `id`.
fn put_packet(out: &mut Vec<u8>, s: &Stream, h: &Head, id: u32) {
    let record = s.record(h);
    let data = &s.buf[h.data.0..h.data.1];
    let at = out.len();
    match (h.kind, s.layout()) {
        (RecordKind::Ng(kind @ (pcapng::EPB | pcapng::PB)), Layout::Ng(endian))
            if pcapng::to_native(kind, record, endian, out).is_some() =>
        {
            if kind == pcapng::PB {
                out[at..at + 4].copy_from_slice(&pcapng::EPB.to_ne_bytes());
            }
            pcapng::set_interface(out, at, id);
        }
        (RecordKind::Pcap, _) => pcapng::put_packet(out, id, h.ts_ns, h.orig_len, data, &[]),
        _ => pcapng::put_packet(out, id, h.ts_raw, h.orig_len, data, &[]),
    }
}
