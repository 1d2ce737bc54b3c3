//! Encodes capture files into an in-memory buffer the caller drains to disk in large writes.
//! Only whole blocks/records are ever appended, so a file built from drained buffers is a valid
//! capture up to its last complete record.

use std::borrow::Cow;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapTsResolution};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption, InterfaceTsResolution,
};
use pcap_file::pcapng::blocks::opt_common::CommonOption;
use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
use pcap_file::pcapng::{PcapNgBlock, PcapNgWriter};
use pcap_file::{DataLink, Endianness};

use super::LinkType;
use crate::wire::erspan::Direction;

/// Snapshot length written in headers: large enough for any jumbo frame.
pub const SNAPLEN: u32 = 262_144;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Classic pcap: one link type per file, no per-packet metadata.
    Pcap { nanos: bool },
    /// pcapng: an interface per source, nanosecond timestamps, direction flags and comments.
    Pcapng,
}

impl Format {
    pub const fn extension(self) -> &'static str {
        match self {
            Format::Pcap { .. } => "pcap",
            Format::Pcapng => "pcapng",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("pcap file has link type {file}, packet has {packet}")]
    LinkMismatch { file: LinkType, packet: LinkType },
    #[error("no interface {0}")]
    NoInterface(u32),
    #[error("packet of {0} bytes exceeds the snapshot length")]
    TooLarge(usize),
    #[error("encoding: {0}")]
    Encode(String),
}

/// Describes one pcapng interface: in tapwire, one mirrored source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub link: LinkType,
    /// `if_name`, for example `10.0.0.5 erspan-ii session 42`.
    pub name: String,
    pub description: String,
    pub snaplen: u32,
}

/// One packet to write.
#[derive(Debug, Clone, Copy)]
pub struct PacketInfo<'a> {
    /// Nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
    pub direction: Option<Direction>,
    pub comment: Option<&'a str>,
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

    pub fn packet(&mut self, interface: u32, p: &PacketInfo<'_>) -> Result<(), EncodeError> {
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
                for word in [secs as u32, ts_frac as u32, p.data.len() as u32, orig_len] {
                    buf.extend_from_slice(&word.to_ne_bytes());
                }
                buf.extend_from_slice(p.data);
                Ok(())
            }
            Kind::Pcapng(w) => {
                let mut options = Vec::new();
                if let Some(d) = p.direction {
                    // epb_flags bits 0-1: 01 inbound, 10 outbound.
                    options.push(EnhancedPacketOption::Flags(match d {
                        Direction::Ingress => 1,
                        Direction::Egress => 2,
                    }));
                }
                if let Some(c) = p.comment {
                    options.push(EnhancedPacketOption::Common(CommonOption::Comment(
                        Cow::Borrowed(c),
                    )));
                }
                let epb = EnhancedPacketBlock {
                    interface_id: interface,
                    timestamp: Duration::from_nanos(p.ts_ns),
                    original_len: orig_len,
                    data: Cow::Borrowed(p.data),
                    options,
                };
                w.write_block(&epb.into_block())
                    .map(|_| ())
                    .map_err(|e| EncodeError::Encode(e.to_string()))
            }
        }
    }

    /// The encoded bytes not yet taken. The caller may write and `clear()` them; only whole
    /// blocks are ever in it.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        match &mut self.kind {
            Kind::Pcap { buf, .. } => buf,
            Kind::Pcapng(w) => w.get_mut(),
        }
    }

    pub fn pending_len(&self) -> usize {
        match &self.kind {
            Kind::Pcap { buf, .. } => buf.len(),
            Kind::Pcapng(w) => w.get_ref().len(),
        }
    }

    pub fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(self.buffer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader};

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
