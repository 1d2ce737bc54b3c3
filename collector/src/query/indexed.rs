//! One capture file as a query sees it: its index, taken from its sidecar (`.twidx`) and
//! completed by scanning what the sidecar does not cover (a file written before indexes, a
//! sidecar cut by a crash, the buffer the disk thread is writing), its interfaces, and what
//! could not be read. A finished file whose index was missing or incomplete gets a whole one
//! written after the fact (beside it, replaced atomically), so the scan is paid once.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use tapwire_formats::capture::pcapng::{self, Interface};
use tapwire_formats::capture::walk::{Layout, Packet, RecordKind, Step, Walker};
use tapwire_formats::index::file::{self as ixfile, Stop};
use tapwire_formats::index::{BlockRecord, FrameKeys, KeyLog, Record, is_gap_comment, parse};

use super::catalog::FileRef;
use crate::live::io::sidecar_path;

/// Read size when scanning, and how often the scan's key log is encoded.
const SCAN_CHUNK: usize = 4 << 20;

/// A capture file and its index.
#[derive(Debug)]
pub struct Indexed {
    pub file: FileRef,
    /// Header and interface blocks with their offsets, in file order.
    pub metas: Vec<(u64, Vec<u8>)>,
    /// Ranges of whole records, contiguous from the file's first byte to `len`.
    pub ranges: Vec<BlockRecord>,
    /// Interfaces in file order (classic pcap: one, from its header).
    pub interfaces: Vec<Interface>,
    /// Classic pcap.
    pub pcap: bool,
    /// Damage found, for the output's comments.
    pub notes: Vec<String>,
}

/// What the good part of a sidecar holds.
struct Prefix {
    records: Vec<Record>,
    /// Bytes of the sidecar up to its last good record.
    bytes_end: usize,
    covered: u64,
    /// An end record says the capture was closed at `covered`.
    closed: bool,
}

/// The records of `parsed` that describe `0..covered` without a hole, within `len` bytes.
fn good_prefix(parsed: &tapwire_formats::index::Parsed, len: Option<u64>) -> (Prefix, bool) {
    let mut p = Prefix {
        records: Vec::new(),
        bytes_end: ixfile::HEADER_LEN.min(parsed.valid_len),
        covered: 0,
        closed: false,
    };
    let mut whole = true;
    for (r, &end) in parsed.records.iter().zip(&parsed.ends) {
        match r {
            Record::Block(b) => {
                if b.offset != p.covered || len.is_some_and(|l| b.end() > l) {
                    whole = false;
                    break;
                }
                p.covered = b.end();
                p.closed = false;
            }
            Record::End { capture_len } => p.closed = *capture_len == p.covered,
            Record::Meta { .. } => {}
        }
        p.records.push(r.clone());
        p.bytes_end = end;
    }
    (p, whole)
}

/// What a scan found.
struct Scanned {
    /// Index records (no header) of what was scanned.
    records: Vec<u8>,
    /// Where the last whole record ends.
    end: u64,
    /// Framing broken at this offset.
    corrupt_at: Option<u64>,
    /// Bytes after `end` that do not make a whole record.
    tail: bool,
}

/// The sequence-gap comment of a packet, if it has one.
fn gap_comment<'a>(layout: Layout, p: &Packet<'a>) -> Option<&'a str> {
    let (Layout::Ng(endian), RecordKind::Ng(kind)) = (layout, p.kind) else {
        return None;
    };
    let f = pcapng::packet(kind, p.record, endian)?;
    pcapng::comments(f.options, endian).find(|c| is_gap_comment(c))
}

/// Reads `input` (the capture from offset `start` on) to its end and indexes it: header and
/// interface blocks as metadata records, packets' keys by range.
fn scan(mut input: impl Read, start: u64, walker: &mut Walker) -> io::Result<Scanned> {
    let mut buf = vec![0u8; SCAN_CHUNK];
    let (mut lo, mut hi) = (0usize, 0usize);
    let mut abs = start;
    let mut log = KeyLog::new(start as usize);
    let mut out = Vec::new();
    let mut eof = false;
    let mut encoded_at = start;
    let mut s = Scanned {
        records: Vec::new(),
        end: start,
        corrupt_at: None,
        tail: false,
    };
    loop {
        let layout = walker.layout();
        match walker.step(&buf[lo..hi]) {
            Step::Packet(n, p) => {
                let keys = FrameKeys::of(p.link, p.data);
                let gap = gap_comment(layout, &p);
                abs += n as u64;
                lo += n;
                log.packet(abs as usize, p.ts_ns, p.iface, &keys, gap);
            }
            Step::Meta(n) => {
                ixfile::put_meta(&mut out, abs, &buf[lo..lo + n]);
                abs += n as u64;
                lo += n;
            }
            Step::Other(n) => {
                abs += n as u64;
                lo += n;
            }
            Step::Incomplete(needed) => {
                if eof {
                    s.tail = lo < hi;
                    break;
                }
                buf.copy_within(lo..hi, 0);
                hi -= lo;
                lo = 0;
                if needed > buf.len() {
                    buf.resize(needed, 0);
                }
                match input.read(&mut buf[hi..]) {
                    Ok(0) => eof = true,
                    Ok(k) => hi += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => eof = true,
                    // A compressed stream that ends early or is damaged: its readable part.
                    Err(e)
                        if e.kind() == io::ErrorKind::InvalidInput
                            || e.kind() == io::ErrorKind::InvalidData =>
                    {
                        s.corrupt_at = Some(abs + (hi - lo) as u64);
                        eof = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            Step::Corrupt => {
                s.corrupt_at = Some(abs);
                break;
            }
        }
        if abs - encoded_at >= SCAN_CHUNK as u64 {
            log.finish(abs as usize);
            log.encode(0, None, &mut out);
            log.reset(abs as usize);
            encoded_at = abs;
        }
    }
    log.finish(abs as usize);
    log.encode(0, None, &mut out);
    s.records = out;
    s.end = abs;
    Ok(s)
}

/// Opens a capture's bytes from `start` on: the file, or its decompressed stream.
fn open_at(
    path: &Path,
    compressed: bool,
    start: u64,
    len: Option<u64>,
) -> io::Result<Box<dyn Read>> {
    let f = File::open(path)?;
    if compressed {
        let mut r: Box<dyn Read> = Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(1 << 20, f),
        ));
        io::copy(&mut (&mut r).take(start), &mut io::sink())?;
        return Ok(r);
    }
    let mut f = f;
    f.seek(SeekFrom::Start(start))?;
    Ok(match len {
        Some(l) => Box::new(f.take(l.saturating_sub(start))),
        None => Box::new(f),
    })
}

/// Loads `file`'s index, scanning and (for a finished file) writing what its sidecar lacks.
pub fn load(file: &FileRef) -> io::Result<Indexed> {
    let name = file.name();
    let compressed = file.compressed();
    let side = sidecar_path(
        &file
            .path
            .with_file_name(name.strip_suffix(".gz").unwrap_or(&name)),
    );
    let mut notes = Vec::new();
    // The capture's length now: what the collector writes after this is not read.
    let len = if compressed {
        None
    } else {
        Some(std::fs::metadata(&file.path)?.len())
    };
    let old = match std::fs::read(&side) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            notes.push(format!("{name}: index unreadable ({e}); scanned"));
            None
        }
    };
    let parsed = old.as_deref().map(parse).unwrap_or_default();
    let (mut prefix, whole) = good_prefix(&parsed, len);
    let mut damaged = !whole;
    match parsed.stop {
        Some(Stop::Truncated { .. }) if file.live => {}
        Some(stop) if old.is_some() => {
            damaged = true;
            notes.push(format!("{name}: {stop}; the rest was scanned"));
        }
        _ => {}
    }
    if !whole {
        notes.push(format!(
            "{name}: index does not match the capture; the rest was scanned"
        ));
    }
    let complete = prefix.closed && len.is_none_or(|l| prefix.covered == l) && !damaged;
    if compressed && !complete {
        // The offsets of a compressed capture's index cannot be checked without reading it all:
        // an incomplete one is rebuilt.
        prefix = Prefix {
            records: Vec::new(),
            bytes_end: ixfile::HEADER_LEN,
            covered: 0,
            closed: false,
        };
    }
    let mut walker = Walker::new();
    for r in &prefix.records {
        if let Record::Meta { bytes, .. } = r {
            let _ = walker.meta(bytes);
        }
    }
    let mut records = prefix.records;
    let mut end = prefix.covered;
    if !complete && len.is_none_or(|l| prefix.covered < l) {
        let input = open_at(&file.path, compressed, prefix.covered, len)?;
        let s = scan(input, prefix.covered, &mut walker)?;
        if let Some(at) = s.corrupt_at {
            notes.push(format!(
                "{name}: damaged at byte {at}; the rest of the file is not read"
            ));
        } else if s.tail && !file.live {
            notes.push(format!(
                "{name}: ends inside a record at byte {}: cut short",
                s.end
            ));
        }
        let mut ix = ixfile::header().to_vec();
        ix.extend_from_slice(&s.records);
        records.extend(parse(&ix).records);
        end = s.end;
        // A finished file gets the whole index, written after the fact: the sidecar's good
        // records, then the scan's.
        if !file.live {
            let mut whole_ix = match &old {
                Some(o) if prefix.covered > 0 => o[..prefix.bytes_end].to_vec(),
                _ => ixfile::header().to_vec(),
            };
            whole_ix.extend_from_slice(&s.records);
            ixfile::put_end(&mut whole_ix, s.end);
            write_sidecar(&side, &whole_ix);
        }
    } else if !complete && !damaged && !file.live && !compressed && prefix.covered > 0 {
        // Whole but never closed (the collector killed between two buffers): the end record
        // it lacks, so that a later load (or one after compression) trusts it as it is.
        if let Some(o) = &old {
            let mut whole_ix = o[..prefix.bytes_end].to_vec();
            ixfile::put_end(&mut whole_ix, prefix.covered);
            write_sidecar(&side, &whole_ix);
        }
    }
    let mut metas = Vec::new();
    let mut ranges = Vec::new();
    for r in records {
        match r {
            Record::Meta { offset, bytes } => metas.push((offset, bytes)),
            Record::Block(b) => ranges.push(b),
            Record::End { .. } => {}
        }
    }
    let mut w = Walker::new();
    for (_, bytes) in &metas {
        let _ = w.meta(bytes);
    }
    tracing::debug!(file = name, covered = end, "capture indexed");
    Ok(Indexed {
        file: file.clone(),
        pcap: matches!(w.layout(), Layout::Pcap(_)),
        interfaces: w.interfaces().to_vec(),
        metas,
        ranges,
        notes,
    })
}

/// Writes an index beside its capture, atomically; a directory that refuses it is left be.
fn write_sidecar(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let done = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    match done {
        Ok(()) => tracing::debug!(index = %path.display(), "capture indexed after the fact"),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(index = %path.display(), error = %e, "cannot write the index of a scanned capture");
        }
    }
}
