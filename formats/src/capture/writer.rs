//! Encodes capture files into an in-memory buffer the caller drains to disk in large writes.
//! Only whole blocks/records are ever appended, so a file built from drained buffers is a valid
//! capture up to its last complete record.

use std::borrow::Cow;

use pcap_file::pcap::{PcapHeader, PcapTsResolution};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption, InterfaceTsResolution,
};
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::{DataLink, Endianness};

use super::LinkType;
use crate::wire::erspan::Direction;

/// Snapshot length written in headers: large enough for any jumbo frame.
pub const SNAPLEN: u32 = 262_144;

/// A capture file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Classic pcap: one link type per file, no per-packet metadata.
    Pcap {
        /// Nanosecond timestamps (else microseconds).
        nanos: bool,
    },
    /// pcapng: an interface per source, nanosecond timestamps, direction flags and comments.
    Pcapng,
}

impl Format {
    /// The file name extension.
    pub const fn extension(self) -> &'static str {
        match self {
            Format::Pcap { .. } => "pcap",
            Format::Pcapng => "pcapng",
        }
    }
}

/// Why a packet or an interface could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A classic pcap file has one link type.
    #[error("pcap file has link type {file}, packet has {packet}")]
    LinkMismatch {
        /// The file's.
        file: LinkType,
        /// The packet's.
        packet: LinkType,
    },
    /// The interface was never added.
    #[error("no interface {0}")]
    NoInterface(u32),
    /// More bytes than [`SNAPLEN`].
    #[error("packet of {0} bytes exceeds the snapshot length")]
    TooLarge(usize),
    /// The pcapng writer refused it.
    #[error("encoding: {0}")]
    Encode(String),
}

/// Describes one pcapng interface: in tapwire, one mirrored source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// The link type of its packets.
    pub link: LinkType,
    /// `if_name`, for example `10.0.0.5 erspan-ii session 42`.
    pub name: String,
    /// `if_description`.
    pub description: String,
    /// The snapshot length.
    pub snaplen: u32,
}

/// One packet to write.
#[derive(Debug, Clone, Copy)]
pub struct PacketInfo<'a> {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Its length on the wire (at least `data.len()`).
    pub orig_len: u32,
    /// The bytes to write.
    pub data: &'a [u8],
    /// The ERSPAN direction, written as pcapng EPB flags.
    pub direction: Option<Direction>,
    /// A pcapng comment (a sequence gap, a cut frame).
    pub comment: Option<&'a str>,
}

/// One interface's counters at a moment: a pcapng Interface Statistics Block. Each count is
/// from the start of the capture (`start_ns`) to `end_ns`; absent ones are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// When the counts were taken (the block's timestamp), nanoseconds since the epoch.
    pub ts_ns: u64,
    /// `isb_starttime`.
    pub start_ns: Option<u64>,
    /// `isb_endtime`.
    pub end_ns: Option<u64>,
    /// `isb_ifrecv`: packets the interface received.
    pub received: Option<u64>,
    /// `isb_ifdrop`: packets the interface lost.
    pub dropped: Option<u64>,
    /// `isb_filteraccept`: packets the capture filter accepted.
    pub filter_accepted: Option<u64>,
    /// `isb_osdrop`: packets lost between the interface and the reader.
    pub os_dropped: Option<u64>,
    /// `isb_usrdeliv`: packets delivered to the reader.
    pub delivered: Option<u64>,
}

enum Kind {
    Pcap {
        nanos: bool,
        link: Option<LinkType>,
        buf: Vec<u8>,
    },
    Pcapng(Box<PcapNgWriter<Vec<u8>>>),
}

/// Encodes one capture file. Bytes accumulate until [`Encoder::take_bytes`] or
/// [`Encoder::buffer`] hands them to the caller.
pub struct Encoder {
    kind: Kind,
    links: Vec<LinkType>,
}

impl core::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Encoder")
            .field("links", &self.links)
            .field("pending", &self.pending_len())
            .finish()
    }
}

impl Encoder {
    /// Starts a file. pcapng writes its section header now; pcap writes its header with the
    /// first interface, whose link type becomes the file's.
    pub fn new(format: Format) -> Encoder {
        let kind = match format {
            Format::Pcap { nanos } => Kind::Pcap {
                nanos,
                link: None,
                buf: Vec::new(),
            },
            Format::Pcapng => {
                let shb = SectionHeaderBlock {
                    endianness: Endianness::native(),
                    major_version: 1,
                    minor_version: 0,
                    section_length: -1,
                    options: vec![SectionHeaderOption::UserApplication(Cow::Borrowed(
                        concat!("tapwire ", env!("CARGO_PKG_VERSION")),
                    ))],
                };
                // Writing into a Vec cannot fail.
                let w =
                    PcapNgWriter::with_section_header(Vec::new(), shb).map_err(|e| e.to_string());
                match w {
                    Ok(w) => Kind::Pcapng(Box::new(w)),
                    Err(_) => Kind::Pcap {
                        nanos: true,
                        link: None,
                        buf: Vec::new(),
                    },
                }
            }
        };
        Encoder {
            kind,
            links: Vec::new(),
        }
    }

    /// The format it writes.
    pub fn format(&self) -> Format {
        match &self.kind {
            Kind::Pcap { nanos, .. } => Format::Pcap { nanos: *nanos },
            Kind::Pcapng(_) => Format::Pcapng,
        }
    }

    /// Adds an interface and returns its id. A pcap file has one: a second with the same link
    /// type shares it, a different link type is [`EncodeError::LinkMismatch`].
    pub fn add_interface(&mut self, info: &InterfaceInfo) -> Result<u32, EncodeError> {
        match &mut self.kind {
            Kind::Pcap { nanos, link, buf } => match *link {
                Some(l) if l == info.link => Ok(0),
                Some(l) => Err(EncodeError::LinkMismatch {
                    file: l,
                    packet: info.link,
                }),
                None => {
                    let header = PcapHeader {
                        snaplen: info.snaplen,
                        datalink: DataLink::from(u32::from(info.link)),
                        ts_resolution: if *nanos {
                            PcapTsResolution::NanoSecond
                        } else {
                            PcapTsResolution::MicroSecond
                        },
                        endianness: Endianness::native(),
                        ..PcapHeader::default()
                    };
                    header
                        .write_to(buf)
                        .map_err(|e| EncodeError::Encode(e.to_string()))?;
                    *link = Some(info.link);
                    self.links.push(info.link);
                    Ok(0)
                }
            },
            Kind::Pcapng(w) => {
                let idb = InterfaceDescriptionBlock {
                    linktype: DataLink::from(u32::from(info.link)),
                    snaplen: info.snaplen,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Borrowed(&info.name)),
                        InterfaceDescriptionOption::IfDescription(Cow::Borrowed(&info.description)),
                        InterfaceDescriptionOption::IfTsResol(InterfaceTsResolution::NANO),
                    ],
                };
                w.write_pcapng_block(idb)
                    .map_err(|e| EncodeError::Encode(e.to_string()))?;
                self.links.push(info.link);
                Ok(self.links.len() as u32 - 1)
            }
        }
    }

    /// Link type of interface `id`.
    pub fn link(&self, id: u32) -> Option<LinkType> {
        self.links.get(id as usize).copied()
    }

    /// Encodes one packet of `interface` (a classic pcap file has interface 0 only) into the
    /// buffer.
    #[inline]
    pub fn packet(&mut self, interface: u32, p: &PacketInfo<'_>) -> Result<(), EncodeError> {
        self.packet_after_drops(interface, p, None)
    }

    /// [`Encoder::packet`], with pcapng's `epb_dropcount`: how many packets were lost between
    /// the previous one and this (pcap has no place for it and leaves it out).
    #[inline]
    pub fn packet_after_drops(
        &mut self,
        interface: u32,
        p: &PacketInfo<'_>,
        drop_count: Option<u64>,
    ) -> Result<(), EncodeError> {
        if interface as usize >= self.links.len() {
            return Err(EncodeError::NoInterface(interface));
        }
        if p.data.len() > SNAPLEN as usize {
            return Err(EncodeError::TooLarge(p.data.len()));
        }
        let orig_len = p.orig_len.max(p.data.len() as u32);
        match &mut self.kind {
            Kind::Pcap { nanos, buf, .. } => {
                let secs = p.ts_ns / 1_000_000_000;
                let frac = p.ts_ns % 1_000_000_000;
                // A record header is four native-endian words, matching the file header's
                // byte order; written by hand because it is that simple.
                let ts_frac = if *nanos { frac } else { frac / 1000 };
                let mut header = [0u8; 16];
                for (i, word) in [secs as u32, ts_frac as u32, p.data.len() as u32, orig_len]
                    .into_iter()
                    .enumerate()
                {
                    header[4 * i..4 * i + 4].copy_from_slice(&word.to_ne_bytes());
                }
                buf.reserve(header.len() + p.data.len());
                buf.extend_from_slice(&header);
                buf.extend_from_slice(p.data);
                Ok(())
            }
            Kind::Pcapng(w) => {
                if p.comment.is_some_and(|c| c.len() > usize::from(u16::MAX)) {
                    return Err(EncodeError::Encode(
                        "comment longer than a pcapng option (65535 bytes)".into(),
                    ));
                }
                write_epb(w.get_mut(), interface, orig_len, p, drop_count);
                Ok(())
            }
        }
    }

    /// Appends an Interface Statistics Block for `interface` (pcapng; classic pcap has no
    /// place for statistics and writes nothing). Like every block it is appended whole.
    pub fn statistics(&mut self, interface: u32, s: &InterfaceStats) -> Result<(), EncodeError> {
        self.statistics_with_comment(interface, s, None)
    }

    /// [`Encoder::statistics`] with an `opt_comment` (a live stream's last blocks say why it
    /// ended).
    pub fn statistics_with_comment(
        &mut self,
        interface: u32,
        s: &InterfaceStats,
        comment: Option<&str>,
    ) -> Result<(), EncodeError> {
        if interface as usize >= self.links.len() {
            return Err(EncodeError::NoInterface(interface));
        }
        if comment.is_some_and(|c| c.len() > usize::from(u16::MAX)) {
            return Err(EncodeError::Encode(
                "comment longer than a pcapng option (65535 bytes)".into(),
            ));
        }
        if let Kind::Pcapng(w) = &mut self.kind {
            write_isb(w.get_mut(), interface, s, comment.map(str::as_bytes));
        }
        Ok(())
    }

    /// The encoded bytes not yet taken. The caller may write and `clear()` them; only whole
    /// blocks are ever in it.
    #[inline]
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        match &mut self.kind {
            Kind::Pcap { buf, .. } => buf,
            Kind::Pcapng(w) => w.get_mut(),
        }
    }

    /// How many encoded bytes are waiting in the buffer.
    #[inline]
    pub fn pending_len(&self) -> usize {
        match &self.kind {
            Kind::Pcap { buf, .. } => buf.len(),
            Kind::Pcapng(w) => w.get_ref().len(),
        }
    }

    /// The encoded bytes, leaving the buffer empty.
    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(self.buffer())
    }

    /// The buffer, for reuse once the file is done.
    pub fn into_buffer(mut self) -> Vec<u8> {
        self.take_bytes()
    }
}

/// Data lengths up to this are written through one stack block (a single copy into the buffer).
const SMALL_EPB_DATA: usize = 128;
const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;

fn put32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_ne_bytes());
}

fn put_opt_header(buf: &mut Vec<u8>, code: u16, len: u16) {
    buf.extend_from_slice(&code.to_ne_bytes());
    buf.extend_from_slice(&len.to_ne_bytes());
}

/// Appends an Interface Statistics Block in native byte order; times are in the interface's
/// resolution, nanoseconds (`if_tsresol` 9), as two 32-bit words, high first.
fn write_isb(buf: &mut Vec<u8>, interface: u32, s: &InterfaceStats, comment: Option<&[u8]>) {
    const ISB: u32 = 5;
    let options = [
        (2u16, s.start_ns),
        (3, s.end_ns),
        (4, s.received),
        (5, s.dropped),
        (6, s.filter_accepted),
        (7, s.os_dropped),
        (8, s.delivered),
    ];
    let n = options.iter().filter(|o| o.1.is_some()).count();
    let comment_len = comment.map_or(0, |c| 4 + c.len().next_multiple_of(4));
    let options_len = if n > 0 || comment.is_some() {
        12 * n + comment_len + 4
    } else {
        0
    };
    let block_len = 8 + 12 + options_len + 4;
    buf.reserve(block_len);
    for v in [
        ISB,
        block_len as u32,
        interface,
        (s.ts_ns >> 32) as u32,
        s.ts_ns as u32,
    ] {
        put32(buf, v);
    }
    if let Some(c) = comment {
        put_opt_header(buf, OPT_COMMENT, c.len() as u16);
        buf.extend_from_slice(c);
        buf.extend_from_slice(&[0; 3][..c.len().next_multiple_of(4) - c.len()]);
    }
    for (code, value) in options {
        let Some(v) = value else { continue };
        put_opt_header(buf, code, 8);
        if code <= 3 {
            // Timestamps: high word, then low word.
            put32(buf, (v >> 32) as u32);
            put32(buf, v as u32);
        } else {
            buf.extend_from_slice(&v.to_ne_bytes());
        }
    }
    if options_len > 0 {
        put_opt_header(buf, OPT_END, 0);
    }
    put32(buf, block_len as u32);
}

/// Appends an Enhanced Packet Block in native byte order with nanosecond timestamps, the same
/// bytes pcap-file's `PcapNgWriter::write_block` produces for the interfaces this encoder
/// declares (`if_tsresol` 9, no offset), written by hand: the generic path sizes every block
/// with a dry-run write and divides 128-bit durations, several times the cost of the rest of
/// the decapsulation. Options: `epb_flags` (direction), then `opt_comment`, then the end marker.
/// The caller has checked the interface and that the comment fits an option.
#[inline]
fn write_epb(
    buf: &mut Vec<u8>,
    interface: u32,
    orig_len: u32,
    p: &PacketInfo<'_>,
    drop_count: Option<u64>,
) {
    const EPB: u32 = 6;
    const EPB_FLAGS: u16 = 2;
    const EPB_DROPCOUNT: u16 = 4;
    let comment = p.comment.map(str::as_bytes);
    let data_len = p.data.len();
    let mut options_len = 0;
    if p.direction.is_some() {
        options_len += 8;
    }
    if drop_count.is_some() {
        options_len += 12;
    }
    if let Some(c) = comment {
        options_len += 4 + c.len().next_multiple_of(4);
    }
    if options_len > 0 {
        options_len += 4;
    }
    // Type, length, 20 bytes of fixed fields, padded data, options, trailing length.
    let block_len = 8 + 20 + data_len.next_multiple_of(4) + options_len + 4;
    let pad = data_len.next_multiple_of(4) - data_len;
    // The fixed part: type, length, interface, timestamp, captured and original lengths.
    let mut head = [0u8; 28];
    for (i, v) in [
        EPB,
        block_len as u32,
        interface,
        (p.ts_ns >> 32) as u32,
        p.ts_ns as u32,
        data_len as u32,
        orig_len,
    ]
    .into_iter()
    .enumerate()
    {
        head[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
    }
    if options_len == 0 && data_len <= SMALL_EPB_DATA {
        // A small block is assembled on the stack and appended in one copy.
        let mut block = [0u8; 28 + SMALL_EPB_DATA + 4];
        block[..28].copy_from_slice(&head);
        block[28..28 + data_len].copy_from_slice(p.data);
        block[block_len - 4..block_len].copy_from_slice(&(block_len as u32).to_ne_bytes());
        buf.extend_from_slice(&block[..block_len]);
        return;
    }
    buf.reserve(block_len);
    buf.extend_from_slice(&head);
    buf.extend_from_slice(p.data);
    if options_len == 0 {
        // Padding and the trailing length in one copy.
        let mut tail = [0u8; 7];
        tail[pad..pad + 4].copy_from_slice(&(block_len as u32).to_ne_bytes());
        buf.extend_from_slice(&tail[..pad + 4]);
        return;
    }
    buf.extend_from_slice(&[0; 3][..pad]);
    if let Some(d) = p.direction {
        put_opt_header(buf, EPB_FLAGS, 4);
        // epb_flags bits 0-1: 01 inbound, 10 outbound.
        put32(
            buf,
            match d {
                Direction::Ingress => 1,
                Direction::Egress => 2,
            },
        );
    }
    if let Some(n) = drop_count {
        put_opt_header(buf, EPB_DROPCOUNT, 8);
        buf.extend_from_slice(&n.to_ne_bytes());
    }
    if let Some(c) = comment {
        put_opt_header(buf, OPT_COMMENT, c.len() as u16);
        buf.extend_from_slice(c);
        buf.extend_from_slice(&[0; 3][..c.len().next_multiple_of(4) - c.len()]);
    }
    put_opt_header(buf, OPT_END, 0);
    put32(buf, block_len as u32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
    use pcap_file::pcapng::blocks::opt_common::CommonOption;
    use pcap_file::pcapng::{Block, PcapNgBlock, PcapNgReader};
    use std::time::Duration;

    #[test]
    fn pcapng_metadata_round_trips() {
        let mut enc = Encoder::new(Format::Pcapng);
        let a = enc
            .add_interface(&InterfaceInfo {
                link: LinkType::Ethernet,
                name: "10.0.0.5 erspan-iii session 42".into(),
                description: "d".into(),
                snaplen: SNAPLEN,
            })
            .unwrap();
        let b = enc
            .add_interface(&InterfaceInfo {
                link: LinkType::Raw,
                name: "b".into(),
                description: "d".into(),
                snaplen: 0,
            })
            .unwrap();
        assert_eq!((a, b), (0, 1));
        let data = [1u8; 61];
        enc.packet(
            a,
            &PacketInfo {
                ts_ns: 1_700_000_000_000_000_001,
                orig_len: 100,
                data: &data,
                direction: Some(Direction::Egress),
                comment: Some("sequence gap: 2 lost (seq 5-6)"),
            },
        )
        .unwrap();
        let bytes = enc.take_bytes();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut seen = 0;
        while let Some(block) = r.next_block() {
            if let (Block::EnhancedPacket(epb), state) = block.unwrap() {
                assert_eq!(epb.timestamp.as_nanos(), 1_700_000_000_000_000_001);
                assert_eq!(epb.original_len, 100);
                assert_eq!(&epb.data[..], &data[..]);
                assert!(epb.options.contains(&EnhancedPacketOption::Flags(2)));
                assert!(epb.options.iter().any(|o| matches!(o,
                    EnhancedPacketOption::Common(CommonOption::Comment(c)) if c == "sequence gap: 2 lost (seq 5-6)")));
                assert_eq!(state.interfaces().len(), 2);
                seen += 1;
            }
        }
        assert_eq!(seen, 1);
    }

    /// The hand-written Enhanced Packet Block is byte for byte what pcap-file writes.
    #[test]
    fn epb_matches_pcap_file() {
        let info = InterfaceInfo {
            link: LinkType::Ethernet,
            name: "a".into(),
            description: "b".into(),
            snaplen: SNAPLEN,
        };
        let mut ours = Encoder::new(Format::Pcapng);
        ours.add_interface(&info).unwrap();
        ours.add_interface(&info).unwrap();
        let mut theirs = Encoder::new(Format::Pcapng);
        theirs.add_interface(&info).unwrap();
        theirs.add_interface(&info).unwrap();
        let Kind::Pcapng(w) = &mut theirs.kind else {
            panic!("pcapng encoder");
        };
        let data: Vec<u8> = (0..70u8).collect();
        let comments = ["", "x", "ab", "abc", "abcd", "tapwire: sequence gap"];
        let mut n = 0u64;
        for len in [0, 1, 2, 3, 4, 5, 60, 61, 70] {
            for direction in [None, Some(Direction::Ingress), Some(Direction::Egress)] {
                for (comment, drops) in [None]
                    .into_iter()
                    .chain(comments.map(Some))
                    .flat_map(|c| [(c, None), (c, Some(0)), (c, Some(1 << 40 | 7))])
                {
                    n += 1;
                    let p = PacketInfo {
                        ts_ns: 1_700_000_000_123_456_789 + n * 0x1_0000_0001,
                        orig_len: len as u32 + (n % 3) as u32,
                        data: &data[..len],
                        direction,
                        comment,
                    };
                    ours.packet_after_drops((n % 2) as u32, &p, drops).unwrap();
                    let mut options = Vec::new();
                    if let Some(d) = direction {
                        options.push(EnhancedPacketOption::Flags(match d {
                            Direction::Ingress => 1,
                            Direction::Egress => 2,
                        }));
                    }
                    if let Some(n) = drops {
                        options.push(EnhancedPacketOption::DropCount(n));
                    }
                    if let Some(c) = comment {
                        options.push(EnhancedPacketOption::Common(CommonOption::Comment(
                            Cow::Borrowed(c),
                        )));
                    }
                    let epb = EnhancedPacketBlock {
                        interface_id: (n % 2) as u32,
                        timestamp: Duration::from_nanos(p.ts_ns),
                        original_len: p.orig_len.max(len as u32),
                        data: Cow::Borrowed(p.data),
                        options,
                    };
                    w.write_block(&epb.into_block()).unwrap();
                }
            }
        }
        assert_eq!(ours.take_bytes(), theirs.take_bytes());
    }

    /// Statistics blocks read back with pcap-file as written, between packets and in a pcap
    /// file (which has no place for them) as nothing.
    #[test]
    fn statistics_round_trip() {
        use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption as O;
        let mut enc = Encoder::new(Format::Pcapng);
        let info = InterfaceInfo {
            link: LinkType::Ethernet,
            name: "a".into(),
            description: "a".into(),
            snaplen: SNAPLEN,
        };
        enc.add_interface(&info).unwrap();
        enc.add_interface(&info).unwrap();
        let ts = 1_700_000_000_123_456_789;
        let full = InterfaceStats {
            ts_ns: ts,
            start_ns: Some(ts - 5_000_000_001),
            end_ns: Some(ts),
            received: Some(1000),
            dropped: Some(7),
            filter_accepted: Some(900),
            os_dropped: Some(3),
            delivered: Some(897),
        };
        enc.statistics(1, &full).unwrap();
        enc.statistics(
            0,
            &InterfaceStats {
                ts_ns: ts,
                ..InterfaceStats::default()
            },
        )
        .unwrap();
        enc.statistics_with_comment(0, &full, Some("ended: why"))
            .unwrap();
        assert!(matches!(
            enc.statistics(2, &full),
            Err(EncodeError::NoInterface(2))
        ));
        let bytes = enc.take_bytes();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut isbs = Vec::new();
        while let Some(block) = r.next_block() {
            if let (Block::InterfaceStatistics(isb), _) = block.unwrap() {
                isbs.push(isb.into_owned());
            }
        }
        assert_eq!(isbs.len(), 3);
        assert_eq!(
            isbs[2].options[..2],
            [
                O::Common(CommonOption::Comment("ended: why".into())),
                O::IsbStartTime(Duration::from_nanos(ts - 5_000_000_001)),
            ]
        );
        assert_eq!(isbs[2].options.len(), 8);
        assert_eq!(isbs[0].interface_id, 1);
        assert_eq!(isbs[0].timestamp.as_nanos(), u128::from(ts));
        assert_eq!(
            isbs[0].options,
            vec![
                O::IsbStartTime(Duration::from_nanos(ts - 5_000_000_001)),
                O::IsbEndTime(Duration::from_nanos(ts)),
                O::IsbIfRecv(1000),
                O::IsbIfDrop(7),
                O::IsbFilterAccept(900),
                O::IsbOsDrop(3),
                O::IsbUsrDeliv(897),
            ]
        );
        assert_eq!((isbs[1].interface_id, isbs[1].options.len()), (0, 0));

        let mut pcap = Encoder::new(Format::Pcap { nanos: true });
        pcap.add_interface(&info).unwrap();
        let before = pcap.pending_len();
        pcap.statistics(0, &full).unwrap();
        assert_eq!(pcap.pending_len(), before);
    }

    #[test]
    fn oversized_comment_is_an_error() {
        let mut enc = Encoder::new(Format::Pcapng);
        enc.add_interface(&InterfaceInfo {
            link: LinkType::Ethernet,
            name: "a".into(),
            description: "a".into(),
            snaplen: SNAPLEN,
        })
        .unwrap();
        let before = enc.pending_len();
        let comment = "c".repeat(70_000);
        let p = PacketInfo {
            ts_ns: 0,
            orig_len: 1,
            data: &[0],
            direction: None,
            comment: Some(&comment),
        };
        assert!(matches!(enc.packet(0, &p), Err(EncodeError::Encode(_))));
        assert_eq!(enc.pending_len(), before);
    }

    #[test]
    fn pcap_has_one_link_type() {
        let mut enc = Encoder::new(Format::Pcap { nanos: true });
        let eth = InterfaceInfo {
            link: LinkType::Ethernet,
            name: "a".into(),
            description: "a".into(),
            snaplen: SNAPLEN,
        };
        assert_eq!(enc.add_interface(&eth).unwrap(), 0);
        assert_eq!(enc.add_interface(&eth).unwrap(), 0);
        let raw = InterfaceInfo {
            link: LinkType::Raw,
            ..eth
        };
        assert!(matches!(
            enc.add_interface(&raw),
            Err(EncodeError::LinkMismatch { .. })
        ));
        assert!(matches!(
            enc.packet(
                3,
                &PacketInfo {
                    ts_ns: 0,
                    orig_len: 0,
                    data: &[],
                    direction: None,
                    comment: None
                }
            ),
            Err(EncodeError::NoInterface(3))
        ));
    }
}
