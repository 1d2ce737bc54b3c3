//! [`Stream`]: the matching packets of one capture file, in file order: the candidate ranges
//! read in large pieces (a compressed file decompressed from its start, stepping over the rest),
//! each packet checked against the time range, the sources asked for and the filter.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use tapwire_formats::capture::LinkType;
use tapwire_formats::capture::walk::{Layout, RecordKind, Step, Walker};

use super::indexed::Indexed;

/// What every packet must pass.
pub trait Judge {
    /// Whether a frame of `link` passes the filter.
    fn matches(&mut self, link: LinkType, frame: &[u8]) -> bool;
}

/// Where the current packet is.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub ts_ns: u64,
    pub iface: u32,
    pub kind: RecordKind,
    pub orig_len: u32,
    /// The record in the buffer.
    pub start: usize,
    pub len: usize,
    /// Its captured bytes in the buffer.
    pub data: (usize, usize),
    pub ts_raw: u64,
}

enum Input {
    Plain(File),
    /// A decompressed stream and how far it has been read.
    Gz(Box<dyn Read + Send>, u64),
}

/// One file's matching packets.
pub struct Stream {
    pub ix: Indexed,
    /// Pieces to read: (start, end) of consecutive candidate ranges.
    reads: VecDeque<(u64, u64)>,
    input: Option<Input>,
    walker: Walker,
    /// Metadata records applied to the walker so far.
    metas_applied: usize,
    pub buf: Vec<u8>,
    lo: usize,
    hi: usize,
    /// File offset of `buf[0]`.
    base: u64,
    from_ns: u64,
    to_ns: u64,
    /// Interfaces whose packets are wanted (`None`: all).
    ifaces: Option<Vec<bool>>,
    pub head: Option<Head>,
    /// Damage found while reading.
    pub notes: Vec<String>,
    /// Bytes read from the capture.
    pub bytes_read: u64,
}

impl Stream {
    /// `candidates`: indexes of `ix.ranges` to read, in order; consecutive ones are read
    /// together up to `read_max` bytes.
    pub fn new(
        ix: Indexed,
        candidates: &[usize],
        from_ns: u64,
        to_ns: u64,
        ifaces: Option<Vec<bool>>,
        read_max: u64,
    ) -> Stream {
        let mut reads: VecDeque<(u64, u64)> = VecDeque::new();
        for &i in candidates {
            let r = &ix.ranges[i];
            match reads.back_mut() {
                Some(last) if last.1 == r.offset && r.end() - last.0 <= read_max => {
                    last.1 = r.end()
                }
                _ => reads.push_back((r.offset, r.end())),
            }
        }
        Stream {
            ix,
            reads,
            input: None,
            walker: Walker::new(),
            metas_applied: 0,
            buf: Vec::new(),
            lo: 0,
            hi: 0,
            base: 0,
            from_ns,
            to_ns,
            ifaces,
            head: None,
            notes: Vec::new(),
            bytes_read: 0,
        }
    }

    /// Applies the file's header and interface blocks before `offset` not yet applied.
    fn apply_metas(&mut self, offset: u64) {
        while let Some((at, bytes)) = self.ix.metas.get(self.metas_applied) {
            if *at >= offset {
                break;
            }
            let _ = self.walker.meta(bytes);
            self.metas_applied += 1;
        }
    }

    /// Skips the metadata records before `offset` (the walker read them itself).
    fn skip_metas(&mut self, offset: u64) {
        while self
            .ix
            .metas
            .get(self.metas_applied)
            .is_some_and(|(at, _)| *at < offset)
        {
            self.metas_applied += 1;
        }
    }

    /// Reads the next piece into the buffer; false when none is left.
    fn load_next(&mut self) -> io::Result<bool> {
        let Some((start, end)) = self.reads.pop_front() else {
            return Ok(false);
        };
        if self.input.is_none() {
            let f = File::open(&self.ix.file.path)?;
            self.input = Some(if self.ix.file.compressed() {
                Input::Gz(
                    Box::new(flate2::read::MultiGzDecoder::new(
                        io::BufReader::with_capacity(1 << 20, f),
                    )),
                    0,
                )
            } else {
                Input::Plain(f)
            });
        }
        let n = (end - start) as usize;
        self.buf.clear();
        self.buf.resize(n, 0);
        let got = match self.input.as_mut() {
            Some(Input::Plain(f)) => read_at(f, &mut self.buf, start)?,
            Some(Input::Gz(r, pos)) => {
                let skip = start.saturating_sub(*pos);
                let skipped = io::copy(&mut r.by_ref().take(skip), &mut io::sink())?;
                *pos += skipped;
                let mut got = 0;
                if skipped == skip {
                    got = read_full(r, &mut self.buf)?;
                }
                *pos += got as u64;
                got
            }
            None => 0,
        };
        self.bytes_read += got as u64;
        if got < n {
            self.notes.push(format!(
                "{}: shorter than its index says (bytes {}-{} missing); the rest of it not read",
                self.ix.file.name(),
                start + got as u64,
                end
            ));
            self.reads.clear();
        }
        self.buf.truncate(got);
        self.apply_metas(start);
        self.base = start;
        self.lo = 0;
        self.hi = got;
        Ok(true)
    }

    /// Moves to the next matching packet (`head`); `Ok(false)` at the end.
    pub fn advance(&mut self, judge: &mut dyn Judge) -> io::Result<bool> {
        self.head = None;
        loop {
            if self.lo >= self.hi {
                self.skip_metas(self.base + self.hi as u64);
                if !self.load_next()? {
                    return Ok(false);
                }
                continue;
            }
            let step = self.walker.step(&self.buf[self.lo..self.hi]);
            match step {
                Step::Packet(n, p) => {
                    let at = self.lo;
                    self.lo += n;
                    if p.ts_ns < self.from_ns || p.ts_ns > self.to_ns {
                        continue;
                    }
                    if let Some(want) = &self.ifaces
                        && !want.get(p.iface as usize).copied().unwrap_or(false)
                    {
                        continue;
                    }
                    if !judge.matches(p.link, p.data) {
                        continue;
                    }
                    let data_at = p.data.as_ptr() as usize - self.buf.as_ptr() as usize;
                    self.head = Some(Head {
                        ts_ns: p.ts_ns,
                        iface: p.iface,
                        kind: p.kind,
                        orig_len: p.orig_len,
                        start: at,
                        len: n,
                        data: (data_at, data_at + p.data.len()),
                        ts_raw: p.ts_raw,
                    });
                    return Ok(true);
                }
                Step::Meta(n) | Step::Other(n) => self.lo += n,
                Step::Incomplete(_) | Step::Corrupt => {
                    let at = self.base + self.lo as u64;
                    self.notes.push(format!(
                        "{}: damaged at byte {at}; the rest of that stretch (to byte {}) not read",
                        self.ix.file.name(),
                        self.base + self.hi as u64
                    ));
                    // What the walker did not read of this piece is read from the index.
                    self.skip_metas(at);
                    self.apply_metas(self.base + self.hi as u64);
                    self.lo = self.hi;
                }
            }
        }
    }

    /// The section byte order of the file (pcapng), for copying its blocks.
    pub fn layout(&self) -> Layout {
        self.walker.layout()
    }

    /// The current packet's record bytes.
    pub fn record(&self, h: &Head) -> &[u8] {
        &self.buf[h.start..h.start + h.len]
    }
}

fn read_at(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A damaged compressed stream: what came before it.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::InvalidInput
                        | io::ErrorKind::InvalidData
                        | io::ErrorKind::UnexpectedEof
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
