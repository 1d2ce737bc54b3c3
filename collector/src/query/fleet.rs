//! A query across a fleet: parts, each one collector's answer over its own files (this
//! collector's from [`super::Prepared::write`], the others' from their `/api/v1/packets`
//! with `local=1`), merged by timestamp into one pcapng as a local query merges files.
//!
//! Each part is a pcapng stream that arrives in chunks. The output starts with one section
//! header holding the request and every part's section comments (notes and sequence-gap
//! comments); interface blocks are carried over (identical ones become one) and renumbered;
//! packet blocks are copied whole. Of equal timestamps, the later part's packet goes first
//! (parts are in collector-name order), as of equal times the later file's does in a local
//! query and in mergecap. A part that breaks off (its collector died, the connection timed
//! out) is named in a last section header after the packets, as are collectors that could
//! not be asked at all: nothing is left out silently.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Write};

use tapwire_formats::capture::pcapng::{self, Endian, Framed, TsUnits};

/// What a part's channel carries: pieces of its pcapng, or why it broke off.
pub type Chunk = Result<Vec<u8>, String>;

/// One collector's part of a query.
pub struct Part {
    /// The collector that answered it.
    pub collector: String,
    /// Its pcapng in pieces, in order; closed at its end.
    pub chunks: tokio::sync::mpsc::Receiver<Chunk>,
}

/// A collector left out of a query, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub collector: String,
    pub why: String,
}

impl Missing {
    /// As named in the output and in the response's trailer.
    pub fn describe(&self) -> String {
        format!(
            "collector {} could not be read: {}; its packets in the range are missing",
            self.collector, self.why
        )
    }
}

/// What a merged query wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    pub packets: u64,
    pub bytes: u64,
    /// Packets by collector, in part order.
    pub by_collector: Vec<(String, u64)>,
    /// Collectors left out (before or while reading).
    pub missing: Vec<Missing>,
}

/// One part being read: its blocks framed, its interfaces known, its next packet at hand.
struct Reader {
    collector: String,
    chunks: tokio::sync::mpsc::Receiver<Chunk>,
    buf: Vec<u8>,
    pos: usize,
    endian: Endian,
    /// Interface blocks (native order) and their time units, by interface of this section.
    ifaces: Vec<(Vec<u8>, TsUnits)>,
    sections: usize,
    /// Comments of its first section header, then of later ones (damage found late).
    comments: Vec<String>,
    late: Vec<String>,
    /// The next packet: its time, interface and native block.
    head: Option<(u64, u32)>,
    head_block: Vec<u8>,
    broke: Option<String>,
    packets: u64,
}

/// A section header's comments.
fn shb_comments(block: &[u8], endian: Endian) -> Vec<String> {
    let end = block.len().saturating_sub(4);
    block
        .get(24..end)
        .map(|o| {
            pcapng::comments(o, endian)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

impl Reader {
    fn new(part: Part) -> Reader {
        Reader {
            collector: part.collector,
            chunks: part.chunks,
            buf: Vec::new(),
            pos: 0,
            endian: Endian::native(),
            ifaces: Vec::new(),
            sections: 0,
            comments: Vec::new(),
            late: Vec::new(),
            head: None,
            head_block: Vec::new(),
            broke: None,
            packets: 0,
        }
    }

    /// The next whole block (its kind, its range in `buf`), reading more as needed; `None`
    /// at the end or when the part broke off (then `broke` says why).
    fn next_block(&mut self) -> Option<(u32, usize, usize)> {
        loop {
            match pcapng::frame(&self.buf[self.pos..], self.endian) {
                Framed::Block { kind, len, endian } => {
                    if kind == pcapng::SHB {
                        self.endian = endian;
                    }
                    let at = self.pos;
                    self.pos += len;
                    return Some((kind, at, at + len));
                }
                Framed::Corrupt => {
                    self.broke = Some("its answer is not pcapng".into());
                    return None;
                }
                Framed::Incomplete { .. } => {}
            }
            // Keep what is left of the buffer only.
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            match self.chunks.blocking_recv() {
                Some(Ok(c)) => self.buf.extend_from_slice(&c),
                Some(Err(why)) => {
                    self.broke = Some(why);
                    return None;
                }
                None if self.buf.is_empty() => return None,
                None => {
                    self.broke = Some(format!(
                        "its answer ended {} bytes into a block",
                        self.buf.len()
                    ));
                    return None;
                }
            }
        }
    }

    /// Moves to the next packet; false at the end.
    fn advance(&mut self) -> bool {
        self.head = None;
        while let Some((kind, a, b)) = self.next_block() {
            let endian = self.endian;
            match kind {
                pcapng::SHB => {
                    let c = shb_comments(&self.buf[a..b], endian);
                    if self.sections == 0 {
                        self.comments = c;
                    } else {
                        self.late.extend(c);
                    }
                    self.sections += 1;
                    self.ifaces.clear();
                }
                pcapng::IDB => {
                    let block = &self.buf[a..b];
                    let ts = pcapng::interface(block, endian)
                        .map(|i| i.ts)
                        .unwrap_or_default();
                    let mut native = Vec::new();
                    if pcapng::to_native(kind, block, endian, &mut native).is_none() {
                        self.broke = Some("an interface block that does not parse".into());
                        return false;
                    }
                    self.ifaces.push((native, ts));
                }
                pcapng::EPB => {
                    let block = &self.buf[a..b];
                    let Some(p) = pcapng::packet(kind, block, endian) else {
                        self.broke = Some("a packet block that does not parse".into());
                        return false;
                    };
                    let Some((_, ts)) = self.ifaces.get(p.iface as usize) else {
                        self.broke =
                            Some(format!("a packet of interface {} not described", p.iface));
                        return false;
                    };
                    let (ts_ns, iface) = (ts.to_ns(p.ts_raw), p.iface);
                    self.head_block.clear();
                    if pcapng::to_native(kind, block, endian, &mut self.head_block).is_none() {
                        self.broke = Some("a packet block that does not parse".into());
                        return false;
                    }
                    self.head = Some((ts_ns, iface));
                    return true;
                }
                // A query's answer holds no other blocks; anything else is not a packet.
                _ => {}
            }
        }
        false
    }
}

/// Merges `parts` (in collector-name order) into `w`; `missing` names the collectors that
/// could not be asked; `first` is the output's first comment (what was asked).
pub fn merge(
    parts: Vec<Part>,
    missing: Vec<Missing>,
    first: String,
    w: &mut dyn Write,
) -> io::Result<Merged> {
    let mut readers: Vec<Reader> = parts.into_iter().map(Reader::new).collect();
    let mut heap: BinaryHeap<Reverse<(u64, Reverse<usize>)>> = BinaryHeap::new();
    for (i, r) in readers.iter_mut().enumerate() {
        if r.advance()
            && let Some((ts, _)) = r.head
        {
            heap.push(Reverse((ts, Reverse(i))));
        }
    }
    let mut merged = Merged {
        missing,
        ..Merged::default()
    };
    let mut comments = vec![first];
    let names: Vec<&str> = readers.iter().map(|r| r.collector.as_str()).collect();
    comments.push(format!(
        "tapwire query: parts from collectors {}",
        names.join(", ")
    ));
    for r in &readers {
        // Each part's own first comment repeats the request.
        comments.extend(
            r.comments
                .iter()
                .filter(|c| !c.starts_with("tapwire query: from "))
                .map(|c| format!("{}: {c}", r.collector)),
        );
    }
    comments.extend(merged.missing.iter().map(Missing::describe));
    let mut out = Vec::with_capacity(super::OUT_CHUNK + (64 << 10));
    pcapng::put_section_header(
        &mut out,
        concat!("tapwire ", env!("CARGO_PKG_VERSION")),
        &comments,
    );
    let mut ids: HashMap<(usize, usize, u32), u32> = HashMap::new();
    let mut idb_ids: HashMap<Vec<u8>, u32> = HashMap::new();
    while let Some(Reverse((_, Reverse(i)))) = heap.pop() {
        let r = &mut readers[i];
        if let Some((_, iface)) = r.head {
            let key = (i, r.sections, iface);
            let id = match ids.get(&key) {
                Some(&id) => id,
                None => {
                    let idb = r.ifaces[iface as usize].0.clone();
                    let next = idb_ids.len() as u32;
                    let id = *idb_ids.entry(idb.clone()).or_insert_with(|| {
                        out.extend_from_slice(&idb);
                        next
                    });
                    ids.insert(key, id);
                    id
                }
            };
            let at = out.len();
            out.extend_from_slice(&r.head_block);
            pcapng::set_interface(&mut out, at, id);
            r.packets += 1;
            merged.packets += 1;
            if out.len() >= super::OUT_CHUNK {
                w.write_all(&out)?;
                merged.bytes += out.len() as u64;
                out.clear();
            }
        }
        if r.advance()
            && let Some((ts, _)) = r.head
        {
            heap.push(Reverse((ts, Reverse(i))));
        }
    }
    let mut late = Vec::new();
    for r in &mut readers {
        late.extend(r.late.iter().map(|c| format!("{}: {c}", r.collector)));
        if let Some(why) = r.broke.take() {
            let m = Missing {
                collector: r.collector.clone(),
                why: format!("its part broke off after {} packets: {why}", r.packets),
            };
            late.push(m.describe());
            merged.missing.push(m);
        }
        merged.by_collector.push((r.collector.clone(), r.packets));
    }
    if !late.is_empty() {
        let mut c = vec!["tapwire query: damage found while reading".to_string()];
        c.extend(late);
        pcapng::put_section_header(&mut out, concat!("tapwire ", env!("CARGO_PKG_VERSION")), &c);
    }
    w.write_all(&out)?;
    merged.bytes += out.len() as u64;
    w.flush()?;
    Ok(merged)
}

/// Finds, in a query's pcapng as it passes (`tapwire query` copying it to its output), the
/// comments that name collectors left out, without holding more than a section header.
#[derive(Debug, Default)]
pub struct LeftOutScan {
    head: Vec<u8>,
    /// Bytes of the current block still to pass (not a section header).
    skip: usize,
    /// The current section header's length, while it is gathered in `head`.
    shb_len: Option<usize>,
    endian: Option<Endian>,
    /// The comments found, in order, each once.
    pub found: Vec<String>,
}

impl LeftOutScan {
    /// Looks at the next bytes of the stream.
    pub fn feed(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(b.len());
                self.skip -= n;
                b = &b[n..];
                continue;
            }
            let want = self.shb_len.unwrap_or(12);
            let n = (want - self.head.len()).min(b.len());
            self.head.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.head.len() < want {
                continue;
            }
            if self.shb_len.take().is_some() {
                let e = self.endian.unwrap_or(Endian::native());
                for c in shb_comments(&self.head, e) {
                    if c.contains(" could not be read: ") && !self.found.contains(&c) {
                        self.found.push(c);
                    }
                }
                self.head.clear();
                continue;
            }
            match pcapng::frame(&self.head, self.endian.unwrap_or(Endian::native())) {
                Framed::Incomplete { needed } => {
                    let kind = u32::from_le_bytes([
                        self.head[0],
                        self.head[1],
                        self.head[2],
                        self.head[3],
                    ]);
                    let section = kind == pcapng::SHB;
                    if section {
                        self.endian = match self.head[8..12] {
                            [0x4d, 0x3c, 0x2b, 0x1a] => Some(Endian::Little),
                            _ => Some(Endian::Big),
                        };
                    }
                    if section && needed <= 1 << 20 {
                        self.shb_len = Some(needed);
                    } else {
                        self.skip = needed - 12;
                        self.head.clear();
                    }
                }
                // A block of twelve bytes (none in a query's answer), or not pcapng: stop.
                Framed::Block { .. } => self.head.clear(),
                Framed::Corrupt => {
                    self.skip = usize::MAX;
                    self.head.clear();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_collectors_left_out_in_any_piece_size() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Err("the connection broke".into())).unwrap();
        drop(tx);
        let parts = vec![Part {
            collector: "a".into(),
            chunks: rx,
        }];
        let missing = vec![Missing {
            collector: "c".into(),
            why: "refused".into(),
        }];
        let mut out = Vec::new();
        merge(parts, missing, "tapwire query: from x".into(), &mut out).unwrap();
        for piece in [1, 5, 13, 1 << 20] {
            let mut scan = LeftOutScan::default();
            for p in out.chunks(piece) {
                scan.feed(p);
            }
            assert_eq!(scan.found.len(), 2, "{piece}: {:?}", scan.found);
            assert!(scan.found[0].starts_with("collector c could not be read: refused"));
            assert!(scan.found[1].starts_with("collector a could not be read: its part broke off"));
        }
    }
}
