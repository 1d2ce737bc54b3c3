//! The index file (`<capture>.twidx`): a header, then records appended whole, each framed by
//! its kind, its length and a CRC-32, so that a file cut anywhere (a crash, a full disk) is
//! valid up to its last whole record, and a damaged record is told apart from data.
//!
//! ```text
//! header   "TWIDX\r\n\x1a" | version u32 | flags u32                      (16 bytes)
//! record   kind u32 | body length u32 | body | crc32(kind, length, body) u32
//! ```
//! All words little-endian. Kinds: [`META`] (a capture-file block that is not a packet —
//! section header, interface description, pcap file header — with its offset), [`BLOCK`] (a
//! range of whole capture records and what they hold, [`BlockRecord`]), [`END`] (the capture
//! was closed at this length). Unknown kinds are stepped over.

use super::codec::{Cursor, Ports, Set, put_varint};

/// The first eight bytes of an index file.
pub const MAGIC: [u8; 8] = *b"TWIDX\r\n\x1a";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the file header.
pub const HEADER_LEN: usize = 16;
/// The largest record body accepted.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// A capture-file block that is not a packet, with its offset in the capture.
pub const META: u32 = 1;
/// A range of whole capture records and their keys.
pub const BLOCK: u32 = 2;
/// The capture file was closed; its length then.
pub const END: u32 = 3;

/// The file header.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Appends a record of `kind` whose body `body` writes.
pub fn put_record(out: &mut Vec<u8>, kind: u32, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - start - 8) as u32;
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Appends a [`META`] record: `bytes` are found at `offset` in the capture.
pub fn put_meta(out: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    put_record(out, META, |b| {
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(bytes);
    });
}

/// Appends an [`END`] record.
pub fn put_end(out: &mut Vec<u8>, capture_len: u64) {
    put_record(out, END, |b| {
        b.extend_from_slice(&capture_len.to_le_bytes())
    });
}

/// A sequence-gap comment of a packet, kept in its block's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// The packet's time.
    pub ts_ns: u64,
    /// The packet's interface, numbered in the file's order of interface blocks.
    pub iface: u32,
    /// The comment.
    pub text: String,
}

/// What a [`BLOCK`] record says of a range of whole capture records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRecord {
    /// Where the range starts in the capture file.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The earliest packet time in it (0 when it holds no packet).
    pub ts_min_ns: u64,
    /// The latest.
    pub ts_max_ns: u64,
    /// Packets in it.
    pub n_packets: u32,
    /// The [`super::keys::kind`] bits of its frames.
    pub kinds: u16,
    /// Its gap comments, and how many more there were.
    pub comments: Vec<Comment>,
    /// Gap comments not kept.
    pub comments_dropped: u32,
    /// Encoded sets: interfaces, protocols, ports, IPv4, IPv6.
    sets: Box<[u8]>,
    /// Where each set starts in `sets`.
    at: [u32; 5],
}

impl BlockRecord {
    /// Set `i`: its bytes were split off and checked when the record was parsed.
    fn set(&self, i: usize, bits: u32) -> Set<'_> {
        let end = self.at.get(i + 1).map_or(self.sets.len(), |&e| e as usize);
        match self.sets.get(self.at[i] as usize..end) {
            Some(b) => Set::taken(b, bits),
            None => Set::empty(bits),
        }
    }

    /// The interfaces of its packets (file order of interface blocks).
    pub fn ifaces(&self) -> Set<'_> {
        self.set(0, 32)
    }

    /// IP protocol numbers.
    pub fn protos(&self) -> Set<'_> {
        self.set(1, 8)
    }

    /// TCP, UDP and SCTP ports.
    pub fn ports(&self) -> Ports<'_> {
        self.sets
            .get(self.at[2] as usize..self.at[3] as usize)
            .and_then(Ports::taken)
            .unwrap_or(Ports::List(Set::empty(16)))
    }

    /// IPv4 addresses.
    pub fn v4(&self) -> Set<'_> {
        self.set(3, 32)
    }

    /// IPv6 addresses.
    pub fn v6(&self) -> Set<'_> {
        self.set(4, 128)
    }

    /// The end of its range in the capture file.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    /// Bytes this record takes in the index, roughly (for size reports).
    pub fn encoded_len(&self) -> usize {
        48 + self.sets.len()
    }
}

/// The fixed part of a block record's body.
pub(crate) struct BlockHead {
    pub offset: u64,
    pub len: u64,
    pub ts_min_ns: u64,
    pub ts_max_ns: u64,
    pub n_packets: u32,
    pub kinds: u16,
}

/// Writes a [`BLOCK`] record: the fixed part, then `sets` (interfaces, protocols, ports, IPv4,
/// IPv6, already encoded), then the comments.
pub(crate) fn put_block(
    out: &mut Vec<u8>,
    head: &BlockHead,
    sets: &[u8],
    comments: &mut dyn Iterator<Item = (u64, u32, &str)>,
    comments_dropped: u32,
) {
    put_record(out, BLOCK, |b| {
        for v in [head.offset, head.len, head.ts_min_ns, head.ts_max_ns] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&head.n_packets.to_le_bytes());
        b.extend_from_slice(&head.kinds.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(sets);
        let mark = b.len();
        b.push(0);
        let mut n = 0u128;
        for (ts, iface, text) in comments {
            b.extend_from_slice(&ts.to_le_bytes());
            put_varint(b, iface.into());
            put_varint(b, text.len() as u128);
            b.extend_from_slice(text.as_bytes());
            n += 1;
        }
        // The count goes first; rewritten in place when it needs more than its one byte.
        if n < 0x80 {
            b[mark] = n as u8;
        } else {
            let mut count = Vec::new();
            put_varint(&mut count, n);
            b.splice(mark..=mark, count);
        }
        put_varint(b, comments_dropped.into());
    });
}

/// One record of an index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A capture-file block that is not a packet, found at `offset`.
    Meta {
        /// Its offset in the capture file.
        offset: u64,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// A range of whole capture records.
    Block(BlockRecord),
    /// The capture was closed at this length.
    End {
        /// Its length then.
        capture_len: u64,
    },
}

/// Why parsing stopped before the end of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stop {
    /// Not an index file (magic) or shorter than its header.
    NotIndex,
    /// An index of another version.
    Version(u32),
    /// The file ends inside a record (a crash or full disk while writing it).
    Truncated {
        /// Bytes of whole records and header.
        at: usize,
    },
    /// A record whose checksum, length or body is wrong.
    Corrupt {
        /// Where the bad record starts.
        at: usize,
    },
}

impl core::fmt::Display for Stop {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Stop::NotIndex => write!(f, "not a tapwire index"),
            Stop::Version(v) => write!(f, "index version {v}, this tapwire reads {VERSION}"),
            Stop::Truncated { at } => write!(f, "index cut inside a record at byte {at}"),
            Stop::Corrupt { at } => write!(f, "index damaged at byte {at}"),
        }
    }
}

/// An index file as read: its whole records in order, and why reading stopped early.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The records before the first damage.
    pub records: Vec<Record>,
    /// Where each record ends in the file (bytes), in the order of `records`.
    pub ends: Vec<usize>,
    /// Bytes of header and whole records read.
    pub valid_len: usize,
    /// Why reading stopped before the end, if it did.
    pub stop: Option<Stop>,
}

/// Reads an index file. Never panics; reading stops at the first damaged record.
pub fn parse(b: &[u8]) -> Parsed {
    let mut p = Parsed::default();
    if b.len() < HEADER_LEN || b[..8] != MAGIC {
        p.stop = Some(Stop::NotIndex);
        return p;
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version != VERSION {
        p.stop = Some(Stop::Version(version));
        return p;
    }
    let mut at = HEADER_LEN;
    p.valid_len = at;
    while at < b.len() {
        let rest = &b[at..];
        let Some(head) = rest.first_chunk::<8>() else {
            p.stop = Some(Stop::Truncated { at });
            return p;
        };
        let kind = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if len > MAX_BODY_BYTES {
            p.stop = Some(Stop::Corrupt { at });
            return p;
        }
        let Some(whole) = rest.get(..8 + len + 4) else {
            p.stop = Some(Stop::Truncated { at });
            return p;
        };
        let crc = u32::from_le_bytes([
            whole[8 + len],
            whole[9 + len],
            whole[10 + len],
            whole[11 + len],
        ]);
        if crc32fast::hash(&whole[..8 + len]) != crc {
            p.stop = Some(Stop::Corrupt { at });
            return p;
        }
        let body = &whole[8..8 + len];
        let record = match kind {
            META => body.first_chunk::<8>().map(|o| Record::Meta {
                offset: u64::from_le_bytes(*o),
                bytes: body[8..].to_vec(),
            }),
            BLOCK => parse_block(body).map(Record::Block),
            END => body.first_chunk::<8>().map(|o| Record::End {
                capture_len: u64::from_le_bytes(*o),
            }),
            // A later version's record: stepped over.
            _ => {
                at += whole.len();
                p.valid_len = at;
                continue;
            }
        };
        let Some(record) = record else {
            p.stop = Some(Stop::Corrupt { at });
            return p;
        };
        p.records.push(record);
        at += whole.len();
        p.ends.push(at);
        p.valid_len = at;
    }
    p
}

/// The most comments a record may claim (each takes at least ten bytes).
const MAX_COMMENTS: usize = MAX_BODY_BYTES / 10;

fn parse_block(body: &[u8]) -> Option<BlockRecord> {
    let mut c = Cursor::new(body);
    let (offset, len, ts_min_ns, ts_max_ns) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?);
    let n_packets = c.u32()?;
    let kinds = c.u16()?;
    c.u16()?;
    let sets_start = c.rest();
    let mut at = [0u32; 5];
    for (i, bits) in [(0, 32), (1, 8), (2, 16), (3, 32), (4, 128)] {
        at[i] = (sets_start.len() - c.rest().len()) as u32;
        if i == 2 {
            Ports::take(&mut c)?;
        } else {
            Set::take(&mut c, bits)?;
        }
    }
    let sets = &sets_start[..sets_start.len() - c.rest().len()];
    let n = c.len(MAX_COMMENTS)?;
    let mut comments = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let ts_ns = c.u64()?;
        let iface = u32::try_from(c.varint(32)?).ok()?;
        let text_len = c.len(u16::MAX.into())?;
        let text = String::from_utf8_lossy(c.bytes(text_len)?).into_owned();
        comments.push(Comment { ts_ns, iface, text });
    }
    let comments_dropped = u32::try_from(c.varint(32)?).ok()?;
    if !c.rest().is_empty() {
        return None;
    }
    Some(BlockRecord {
        offset,
        len,
        ts_min_ns,
        ts_max_ns,
        n_packets,
        kinds,
        comments,
        comments_dropped,
        sets: sets.into(),
        at,
    })
}
