//! Readers for pcap and pcapng. [`CaptureReader`] streams either format with memory bounded by
//! one read buffer whatever the file size; [`PcapSlice`] reads classic pcap in place from a
//! slice holding the whole file (a memory-mapped input), copying nothing. Classic pcap records
//! are parsed here by one sans-IO [`PcapFraming`] that both use (the hot path of `tapwire
//! decap`); pcapng goes through pcap-file. Damage is reported, not fatal where it can be
//! stepped over: an undecodable pcapng block is skipped and counted; a record cut short ends
//! the file with a reason.

use std::io::{self, Read};

use pcap_file::Endianness;
use pcap_file::pcap::{PcapHeader, PcapTsResolution};
use pcap_file::pcapng::{Block, PcapNgReadError, PcapNgReader};

use super::LinkType;

/// Read buffer: large enough for any pcapng block a sane writer emits (256 KiB jumbo frames and
/// then some), small enough to keep the reader's memory flat.
const READ_BUFFER: usize = 4 << 20;

/// Why the input could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The first four bytes are neither magic number.
    #[error("not a pcap or pcapng file (magic {0:02x?})")]
    NotCapture([u8; 4]),
    /// Fewer than four bytes.
    #[error("file is shorter than a capture header")]
    Empty,
    /// The file header is damaged.
    #[error("bad capture header: {0}")]
    Header(String),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why reading stopped early or a block was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The file ends in the middle of a record.
    TruncatedRecord,
    /// A pcapng block could not be decoded and was stepped over.
    MalformedBlock,
    /// The file's framing is broken past repair; the rest was not read.
    CorruptFile,
}

impl SkipReason {
    /// The reason's name in counting keys.
    pub const fn as_str(self) -> &'static str {
        match self {
            SkipReason::TruncatedRecord => "truncated_record",
            SkipReason::MalformedBlock => "malformed_block",
            SkipReason::CorruptFile => "corrupt_file",
        }
    }
}

/// One captured packet.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The file's (or the interface's) link type.
    pub link: LinkType,
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The packet's length on the wire (at least `data.len()`).
    pub orig_len: u32,
    /// The captured bytes.
    pub data: &'a [u8],
}

enum Inner<R: Read> {
    Pcap(PcapRecords<R>),
    PcapNg(Box<PcapNgReader<R>>),
}

/// Reads records from a pcap or pcapng stream, told apart by the magic number.
pub struct CaptureReader<R: Read> {
    inner: Inner<Prefixed<R>>,
    /// Set when reading stopped before the end of the stream.
    stopped: Option<SkipReason>,
    skipped: Vec<SkipReason>,
    buf: Vec<u8>,
}

impl<R: Read> CaptureReader<R> {
    /// A reader of `input`, its format told by the magic number; the header is read here.
    pub fn new(mut input: R) -> Result<Self, ReadError> {
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match input.read(&mut magic[got..]) {
                Ok(0) => return Err(ReadError::Empty),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let stream = Prefixed {
            prefix: magic,
            at: 0,
            inner: input,
        };
        let inner = match magic {
            [0xa1, 0xb2, 0xc3, 0xd4]
            | [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d]
            | [0x4d, 0x3c, 0xb2, 0xa1] => Inner::Pcap(PcapRecords::new(stream)?),
            [0x0a, 0x0d, 0x0d, 0x0a] => Inner::PcapNg(Box::new(
                PcapNgReader::with_capacity(stream, READ_BUFFER).map_err(|e| header_error(&e))?,
            )),
            other => return Err(ReadError::NotCapture(other)),
        };
        Ok(CaptureReader {
            inner,
            stopped: None,
            skipped: Vec::new(),
            buf: Vec::new(),
        })
    }

    /// Why reading ended before the end of the stream, if it did.
    pub fn stopped(&self) -> Option<SkipReason> {
        self.stopped
    }

    /// Takes the reasons for blocks skipped since the last call.
    pub fn take_skipped(&mut self) -> Vec<SkipReason> {
        std::mem::take(&mut self.skipped)
    }

    /// The next record, `Ok(None)` at the end. I/O errors other than a short read are returned;
    /// damage inside the file ends or skips with a [`SkipReason`] instead.
    pub fn next_record(&mut self) -> io::Result<Option<Record<'_>>> {
        if self.stopped.is_some() {
            return Ok(None);
        }
        match &mut self.inner {
            Inner::Pcap(r) => match r.next() {
                Ok(Some(rec)) => Ok(Some(rec)),
                Ok(None) => Ok(None),
                Err(PcapDamage::Io(e)) => Err(e),
                Err(PcapDamage::Stop(reason)) => {
                    self.stopped = Some(reason);
                    Ok(None)
                }
            },
            Inner::PcapNg(r) => next_pcapng(r, &mut self.buf, &mut self.stopped, &mut self.skipped),
        }
    }
}

/// Classic pcap records read through a large buffer refilled from the stream; each record is
/// parsed by [`PcapFraming`] and its data borrowed from the buffer.
struct PcapRecords<R> {
    input: R,
    buf: Vec<u8>,
    /// Unparsed bytes are `buf[pos..len]`.
    pos: usize,
    len: usize,
    framing: PcapFraming,
}

enum PcapDamage {
    Io(io::Error),
    Stop(SkipReason),
}

/// A pcap record header: seconds, fraction, captured length, original length.
const PCAP_RECORD_HEADER: usize = 16;
const PCAP_FILE_HEADER: usize = 24;
/// The largest record (header included) either pcap reader accepts: one that fits the stream
/// reader's buffer. Larger ones stop reading with [`SkipReason::TruncatedRecord`], whichever
/// reader is used, so that both give the same records.
const MAX_PCAP_RECORD: usize = READ_BUFFER;

impl<R: Read> PcapRecords<R> {
    fn new(input: R) -> Result<Self, ReadError> {
        let mut r = PcapRecords {
            input,
            buf: vec![0; READ_BUFFER],
            pos: 0,
            len: 0,
            framing: PcapFraming {
                swapped: false,
                nanos: false,
                link: LinkType::Ethernet,
            },
        };
        match r.refill(PCAP_FILE_HEADER) {
            Ok(_) => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
        r.framing = PcapFraming::parse(&r.buf[..r.len])?;
        r.pos = PCAP_FILE_HEADER;
        Ok(r)
    }

    /// Makes at least `n` unparsed bytes available; false at the end of the input before that.
    #[cold]
    fn refill(&mut self, n: usize) -> io::Result<bool> {
        if n > self.buf.len() {
            return Ok(false);
        }
        self.buf.copy_within(self.pos..self.len, 0);
        self.len -= self.pos;
        self.pos = 0;
        while self.len < n {
            match self.input.read(&mut self.buf[self.len..]) {
                Ok(0) => return Ok(false),
                Ok(k) => self.len += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// The next record; `Ok(None)` at a clean end of the input. A record cut short, or larger
    /// than the read buffer, stops with [`SkipReason::TruncatedRecord`].
    #[inline]
    fn next(&mut self) -> Result<Option<Record<'_>>, PcapDamage> {
        let truncated = PcapDamage::Stop(SkipReason::TruncatedRecord);
        let h = loop {
            match self.framing.parse_record(&self.buf[self.pos..self.len]) {
                PcapParse::Record(h) => break h,
                PcapParse::Incomplete { needed } => match self.refill(needed) {
                    Ok(true) => {}
                    Ok(false) if self.pos == self.len => return Ok(None),
                    Ok(false) => return Err(truncated),
                    Err(e) => return Err(PcapDamage::Io(e)),
                },
                PcapParse::TooLarge => return Err(truncated),
            }
        };
        let start = self.pos + PCAP_RECORD_HEADER;
        self.pos = start + h.data_len;
        Ok(Some(
            h.record(self.framing.link, &self.buf[start..self.pos]),
        ))
    }
}

/// Whether `prefix` starts with a classic pcap magic number (either byte order, micro- or
/// nanoseconds).
pub fn is_pcap(prefix: &[u8]) -> bool {
    matches!(
        prefix,
        [0xa1, 0xb2, 0xc3, 0xd4, ..]
            | [0xd4, 0xc3, 0xb2, 0xa1, ..]
            | [0xa1, 0xb2, 0x3c, 0x4d, ..]
            | [0x4d, 0x3c, 0xb2, 0xa1, ..]
    )
}

/// Classic pcap framing, sans-IO: what the 24-byte file header says (byte order, time
/// resolution, link type) and the records parsed one at a time from byte slices. Both the
/// stream reader ([`CaptureReader`]) and the in-place reader ([`PcapSlice`]) use it, so they
/// give the same records and stop for the same reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcapFraming {
    swapped: bool,
    nanos: bool,
    link: LinkType,
}

/// What the bytes at the start of a slice hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcapParse {
    /// A whole record starts here.
    Record(RecordHeader),
    /// A record starts here but needs `needed` bytes (its header, or its header and data).
    Incomplete {
        /// Bytes needed.
        needed: usize,
    },
    /// The record claims more than [`PcapFraming::MAX_RECORD`] bytes: treated as damage.
    TooLarge,
}

/// A parsed pcap record header; the record's data follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// At least `data_len`.
    pub orig_len: u32,
    /// Captured bytes that follow the header.
    pub data_len: usize,
}

impl RecordHeader {
    /// The record's length in the file: its header and its data.
    pub const fn record_len(&self) -> usize {
        PCAP_RECORD_HEADER + self.data_len
    }

    #[inline]
    fn record(self, link: LinkType, data: &[u8]) -> Record<'_> {
        Record {
            link,
            ts_ns: self.ts_ns,
            orig_len: self.orig_len,
            data,
        }
    }
}

impl PcapFraming {
    /// The length of a pcap file header.
    pub const FILE_HEADER: usize = PCAP_FILE_HEADER;
    /// The largest record accepted, header and data.
    pub const MAX_RECORD: usize = MAX_PCAP_RECORD;

    /// Reads the file header at the start of `b`.
    pub fn parse(b: &[u8]) -> Result<Self, ReadError> {
        let Some(header) = b.get(..PCAP_FILE_HEADER) else {
            return Err(ReadError::Header("file ends inside the pcap header".into()));
        };
        let (_, header) = PcapHeader::from_slice(header).map_err(|e| header_error(&e))?;
        Ok(PcapFraming {
            swapped: header.endianness != Endianness::native(),
            nanos: header.ts_resolution == PcapTsResolution::NanoSecond,
            link: LinkType::from(u32::from(header.datalink)),
        })
    }

    /// The file's link type.
    pub fn link(&self) -> LinkType {
        self.link
    }

    /// The record at the start of `b`: a bounds check and four integer loads.
    #[inline]
    pub fn parse_record(&self, b: &[u8]) -> PcapParse {
        let Some(header) = b.first_chunk::<PCAP_RECORD_HEADER>() else {
            return PcapParse::Incomplete {
                needed: PCAP_RECORD_HEADER,
            };
        };
        let [ts_sec, frac, incl_len, orig_len] = record_words(*header, self.swapped);
        let data_len = incl_len as usize;
        let needed = PCAP_RECORD_HEADER + data_len;
        if needed > MAX_PCAP_RECORD {
            return PcapParse::TooLarge;
        }
        if b.len() < needed {
            return PcapParse::Incomplete { needed };
        }
        let frac = u64::from(frac);
        PcapParse::Record(RecordHeader {
            ts_ns: u64::from(ts_sec) * 1_000_000_000 + if self.nanos { frac } else { frac * 1000 },
            orig_len: orig_len.max(incl_len),
            data_len,
        })
    }
}

/// Classic pcap read in place from a slice holding the whole file (a memory-mapped capture):
/// records borrow the slice, nothing is copied or buffered. The same framing, records and
/// stop reasons as [`CaptureReader`] on the same bytes.
#[derive(Debug, Clone)]
pub struct PcapSlice<'a> {
    data: &'a [u8],
    /// Bytes before this have been read.
    pos: usize,
    framing: PcapFraming,
    stopped: Option<SkipReason>,
}

impl<'a> PcapSlice<'a> {
    /// Reads the file header; `data` must start with a pcap magic number ([`is_pcap`]).
    pub fn new(data: &'a [u8]) -> Result<Self, ReadError> {
        match data.first_chunk::<4>() {
            None => return Err(ReadError::Empty),
            Some(magic) if !is_pcap(magic) => return Err(ReadError::NotCapture(*magic)),
            Some(_) => {}
        }
        Ok(PcapSlice {
            data,
            pos: PCAP_FILE_HEADER,
            framing: PcapFraming::parse(data)?,
            stopped: None,
        })
    }

    /// The next record, `None` at the end or at damage ([`PcapSlice::stopped`] tells which).
    #[inline]
    pub fn next_record(&mut self) -> Option<Record<'a>> {
        let rest = self.data.get(self.pos..)?;
        match self.framing.parse_record(rest) {
            PcapParse::Record(h) => {
                self.pos += h.record_len();
                Some(h.record(self.framing.link, &rest[PCAP_RECORD_HEADER..h.record_len()]))
            }
            PcapParse::Incomplete { .. } if rest.is_empty() => None,
            PcapParse::Incomplete { .. } | PcapParse::TooLarge => {
                self.stopped = Some(SkipReason::TruncatedRecord);
                // Nothing more is read past damage.
                self.pos = usize::MAX;
                None
            }
        }
    }

    /// Bytes of the slice read so far (records and file header): everything before this can
    /// be let go.
    pub fn offset(&self) -> usize {
        self.pos.min(self.data.len())
    }

    /// Why reading ended before the end of the slice, if it did.
    pub fn stopped(&self) -> Option<SkipReason> {
        self.stopped
    }
}

/// The four words of a pcap record header, in the file's byte order.
#[inline]
fn record_words(h: [u8; PCAP_RECORD_HEADER], swapped: bool) -> [u32; 4] {
    let words = [
        u32::from_ne_bytes([h[0], h[1], h[2], h[3]]),
        u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
        u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
        u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
    ];
    if swapped {
        words.map(u32::swap_bytes)
    } else {
        words
    }
}

fn next_pcapng<'a, R: Read>(
    r: &mut PcapNgReader<R>,
    buf: &'a mut Vec<u8>,
    stopped: &mut Option<SkipReason>,
    skipped: &mut Vec<SkipReason>,
) -> io::Result<Option<Record<'a>>> {
    // The packet bytes are copied out so that blocks that are not packets can be skipped in a
    // loop without holding the reader's borrow; pcap, the common case, stays zero-copy.
    loop {
        let step = match r.next_block() {
            None => return Ok(None),
            Some(Ok((block, state))) => {
                let link_of = |id: usize| {
                    state
                        .interfaces()
                        .get(id)
                        .map_or(LinkType::Other(u32::MAX), |i| {
                            LinkType::from(u32::from(i.linktype))
                        })
                };
                let (link, ts_ns, orig_len, data) = match &block {
                    Block::EnhancedPacket(epb) => (
                        link_of(epb.interface_id as usize),
                        u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX),
                        epb.original_len,
                        &epb.data[..],
                    ),
                    Block::SimplePacket(spb) => (link_of(0), 0, spb.original_len, &spb.data[..]),
                    Block::Packet(pb) => (
                        link_of(usize::from(pb.interface_id)),
                        u64::try_from(pb.timestamp.as_nanos()).unwrap_or(u64::MAX),
                        pb.original_len,
                        &pb.data[..],
                    ),
                    _ => continue,
                };
                buf.clear();
                buf.extend_from_slice(data);
                Step::Packet(link, ts_ns, orig_len.max(data.len() as u32))
            }
            Some(Err(PcapNgReadError::Io(e))) if e.kind() == io::ErrorKind::UnexpectedEof => {
                *stopped = Some(SkipReason::TruncatedRecord);
                return Ok(None);
            }
            Some(Err(PcapNgReadError::Io(e))) => return Err(e),
            Some(Err(PcapNgReadError::BlockConversion(_))) => Step::Malformed,
            Some(Err(_)) => {
                *stopped = Some(SkipReason::CorruptFile);
                return Ok(None);
            }
        };
        match step {
            Step::Packet(link, ts_ns, orig_len) => {
                return Ok(Some(Record {
                    link,
                    ts_ns,
                    orig_len,
                    data: buf,
                }));
            }
            Step::Malformed => {
                // The reader did not advance past the bad block: step over it as a raw block.
                skipped.push(SkipReason::MalformedBlock);
                match r.next_raw_block() {
                    Some(Ok(_)) => {}
                    None => return Ok(None),
                    Some(Err(_)) => {
                        *stopped = Some(SkipReason::CorruptFile);
                        return Ok(None);
                    }
                }
            }
        }
    }
}

enum Step {
    Packet(LinkType, u64, u32),
    Malformed,
}

fn header_error(e: &dyn std::error::Error) -> ReadError {
    ReadError::Header(e.to_string())
}

/// Gives back the magic bytes read to sniff the format, then the rest of the stream.
struct Prefixed<R> {
    prefix: [u8; 4],
    at: usize,
    inner: R,
}

impl<R: Read> Read for Prefixed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.len());
            buf[..n].copy_from_slice(&self.prefix[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{Encoder, Format, InterfaceInfo, PacketInfo};

    fn sample(format: Format) -> Vec<u8> {
        let mut enc = Encoder::new(format);
        let id = enc
            .add_interface(&InterfaceInfo {
                link: LinkType::Ethernet,
                name: "a".into(),
                description: "a".into(),
                snaplen: 65535,
            })
            .unwrap();
        for i in 0..3u8 {
            enc.packet(
                id,
                &PacketInfo {
                    ts_ns: 1_700_000_000_123_456_789 + u64::from(i),
                    orig_len: 60,
                    data: &[i; 60],
                    direction: None,
                    comment: None,
                },
            )
            .unwrap();
        }
        enc.take_bytes()
    }

    #[test]
    fn reads_pcap_and_pcapng() {
        for (format, ts) in [
            (Format::Pcapng, 1_700_000_000_123_456_790),
            (Format::Pcap { nanos: true }, 1_700_000_000_123_456_790),
            (Format::Pcap { nanos: false }, 1_700_000_000_123_456_000),
        ] {
            let bytes = sample(format);
            let mut r = CaptureReader::new(&bytes[..]).unwrap();
            let mut n = 0;
            while let Some(rec) = r.next_record().unwrap() {
                assert_eq!(rec.link, LinkType::Ethernet);
                assert_eq!(rec.data.len(), 60);
                if n == 1 {
                    assert_eq!(rec.ts_ns, ts, "{format:?}");
                }
                n += 1;
            }
            assert_eq!(n, 3);
            assert_eq!(r.stopped(), None);
        }
    }

    #[test]
    fn big_endian_pcap() {
        let mut b = vec![0xa1, 0xb2, 0xc3, 0xd4, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&65535u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        for w in [1u32, 2, 3, 5] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b.extend_from_slice(&[7, 8, 9]);
        let mut r = CaptureReader::new(&b[..]).unwrap();
        let rec = r.next_record().unwrap().unwrap();
        assert_eq!(
            (rec.link, rec.ts_ns, rec.orig_len, rec.data),
            (LinkType::Ethernet, 1_000_002_000, 5, &[7u8, 8, 9][..])
        );
        assert!(r.next_record().unwrap().is_none());
        assert_eq!(r.stopped(), None);
    }

    #[test]
    fn cut_short_mid_record() {
        for format in [Format::Pcapng, Format::Pcap { nanos: true }] {
            let bytes = sample(format);
            let cut = &bytes[..bytes.len() - 10];
            let mut r = CaptureReader::new(cut).unwrap();
            let mut n = 0;
            while r.next_record().unwrap().is_some() {
                n += 1;
            }
            assert_eq!(n, 2);
            assert_eq!(r.stopped(), Some(SkipReason::TruncatedRecord));
        }
    }

    #[test]
    fn not_a_capture() {
        assert!(matches!(
            CaptureReader::new(&b"hello world"[..]),
            Err(ReadError::NotCapture(_))
        ));
        assert!(matches!(
            CaptureReader::new(&b"he"[..]),
            Err(ReadError::Empty)
        ));
        assert!(matches!(
            CaptureReader::new(&[0xd4, 0xc3, 0xb2, 0xa1, 2][..]),
            Err(ReadError::Header(_))
        ));
    }

    /// Records as (link, time, original length, data), and why reading stopped.
    type ReadBack = (Vec<(LinkType, u64, u32, Vec<u8>)>, Option<SkipReason>);

    /// Every record and the stop reason of both pcap readers on the same bytes.
    fn both_readers(bytes: &[u8]) -> [ReadBack; 2] {
        let mut stream = Vec::new();
        let mut r = CaptureReader::new(bytes).unwrap();
        while let Some(rec) = r.next_record().unwrap() {
            stream.push((rec.link, rec.ts_ns, rec.orig_len, rec.data.to_vec()));
        }
        let mut in_place = Vec::new();
        let mut s = PcapSlice::new(bytes).unwrap();
        while let Some(rec) = s.next_record() {
            in_place.push((rec.link, rec.ts_ns, rec.orig_len, rec.data.to_vec()));
        }
        assert!(s.next_record().is_none());
        [(stream, r.stopped()), (in_place, s.stopped())]
    }

    #[test]
    fn slice_reader_matches_stream_reader() {
        for nanos in [false, true] {
            let bytes = sample(Format::Pcap { nanos });
            let [stream, in_place] = both_readers(&bytes);
            assert_eq!(stream.0.len(), 3);
            assert_eq!(stream, in_place);
            let mut s = PcapSlice::new(&bytes).unwrap();
            assert_eq!(s.offset(), 24);
            s.next_record().unwrap();
            assert_eq!(s.offset(), 24 + 16 + 60);
            // Cut anywhere: the same records, and the same reason.
            for cut in 24..bytes.len() {
                let [stream, in_place] = both_readers(&bytes[..cut]);
                assert_eq!(stream, in_place, "cut at {cut}");
            }
        }
        let mut big = sample(Format::Pcap { nanos: true });
        big[32..36].copy_from_slice(&(PcapFraming::MAX_RECORD as u32).to_le_bytes());
        let [stream, in_place] = both_readers(&big);
        assert_eq!(stream, (Vec::new(), Some(SkipReason::TruncatedRecord)));
        assert_eq!(stream, in_place);
    }

    #[test]
    fn slice_reader_refuses_what_is_not_pcap() {
        assert!(matches!(PcapSlice::new(b"he"), Err(ReadError::Empty)));
        assert!(matches!(
            PcapSlice::new(&sample(Format::Pcapng)),
            Err(ReadError::NotCapture(_))
        ));
        assert!(matches!(
            PcapSlice::new(&[0xd4, 0xc3, 0xb2, 0xa1, 2]),
            Err(ReadError::Header(_))
        ));
        assert!(is_pcap(&sample(Format::Pcap { nanos: false })));
        assert!(!is_pcap(&sample(Format::Pcapng)));
    }

    proptest::proptest! {
        /// Damaged pcap (bytes overwritten, the file cut): both readers agree.
        #[test]
        fn slice_reader_matches_stream_reader_on_damage(
            nanos: bool,
            edits in proptest::collection::vec((24usize..400, proptest::num::u8::ANY), 0..6),
            cut in 24usize..400,
        ) {
            let mut bytes = sample(Format::Pcap { nanos });
            for (at, b) in edits {
                let at = 24 + at % (bytes.len() - 24);
                bytes[at] = b;
            }
            let cut = cut.min(bytes.len());
            let [stream, in_place] = both_readers(&bytes[..cut]);
            proptest::prop_assert_eq!(stream, in_place);
        }
    }

    #[test]
    fn hostile_record_length_does_not_allocate_or_hang() {
        let mut bytes = sample(Format::Pcap { nanos: true });
        // First record's incl_len (offset 24 + 8) set to 4 GiB - 1.
        bytes[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = CaptureReader::new(&bytes[..]).unwrap();
        assert!(r.next_record().unwrap().is_none());
        assert!(r.stopped().is_some());
    }
}
