//! [`Walker`]: steps through a pcap or pcapng file's records from any record boundary, sans-IO,
//! giving each packet with its interface numbered in the file's order of interface blocks
//! (across sections), its time in nanoseconds and its link type. A reader that starts in the
//! middle of a file (an index says where) first hands it the file's header and interface
//! blocks that come before ([`Walker::meta`]).

use super::pcapng::{self, Endian, Framed, Interface};
use super::reader::{PcapFraming, PcapParse};
use super::{LinkType, ReadError};

/// The layout of the file being walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Nothing read yet: the next step reads the file header.
    Unknown,
    /// Classic pcap.
    Pcap(PcapFraming),
    /// pcapng, in a section of this byte order.
    Ng(Endian),
}

/// The kind of a packet's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A classic pcap record.
    Pcap,
    /// A pcapng block of this type (enhanced, simple or obsolete packet block).
    Ng(u32),
}

/// One packet.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// Its interface: 0 in classic pcap, else its place among the file's interface blocks.
    pub iface: u32,
    /// Nanoseconds since the epoch.
    pub ts_ns: u64,
    /// Its timestamp as written, in its interface's units.
    pub ts_raw: u64,
    /// Its link type.
    pub link: LinkType,
    /// Its length on the wire.
    pub orig_len: u32,
    /// The captured bytes.
    pub data: &'a [u8],
    /// The whole record (pcapng: the block, in the section's byte order).
    pub record: &'a [u8],
    /// What kind of record.
    pub kind: RecordKind,
}

/// What a step found at the start of the bytes given.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// A packet record of `len` bytes.
    Packet(usize, Packet<'a>),
    /// A file header, section header or interface block of `len` bytes (applied).
    Meta(usize),
    /// Another block of `len` bytes (statistics, name resolution, custom...), stepped over.
    Other(usize),
    /// A record starts here but needs `needed` bytes.
    Incomplete(usize),
    /// Not a record: the framing is broken here.
    Corrupt,
}

/// Walks one capture file.
#[derive(Debug, Clone)]
pub struct Walker {
    layout: Layout,
    /// Every interface of the file, in order; pcap has one, made from its header.
    ifaces: Vec<Interface>,
    /// Where the current section's interfaces start in `ifaces`.
    section_base: usize,
}

impl Default for Walker {
    fn default() -> Self {
        Walker::new()
    }
}

impl Walker {
    /// A walker that has read nothing.
    pub fn new() -> Walker {
        Walker {
            layout: Layout::Unknown,
            ifaces: Vec::new(),
            section_base: 0,
        }
    }

    /// The file's layout as far as read.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The interfaces read so far, in file order.
    pub fn interfaces(&self) -> &[Interface] {
        &self.ifaces
    }

    /// Applies a header or interface block read elsewhere (an index's metadata record).
    pub fn meta(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        match self.step(bytes) {
            Step::Meta(_) => Ok(()),
            _ => Err(ReadError::Header(
                "index metadata is not a header or interface block".into(),
            )),
        }
    }

    /// Reads the record at the start of `b`.
    #[inline]
    pub fn step<'a>(&mut self, b: &'a [u8]) -> Step<'a> {
        match self.layout {
            Layout::Pcap(f) => match f.parse_record(b) {
                PcapParse::Record(h) => {
                    let len = h.record_len();
                    let data = &b[16..len];
                    Step::Packet(
                        len,
                        Packet {
                            iface: 0,
                            ts_ns: h.ts_ns,
                            ts_raw: h.ts_ns,
                            link: f.link(),
                            orig_len: h.orig_len,
                            data,
                            record: &b[..len],
                            kind: RecordKind::Pcap,
                        },
                    )
                }
                PcapParse::Incomplete { needed } => Step::Incomplete(needed),
                PcapParse::TooLarge => Step::Corrupt,
            },
            Layout::Unknown => self.header(b),
            Layout::Ng(endian) => self.ng(b, endian),
        }
    }

    fn header<'a>(&mut self, b: &'a [u8]) -> Step<'a> {
        let Some(magic) = b.first_chunk::<4>() else {
            return Step::Incomplete(4);
        };
        if super::is_pcap(magic) {
            if b.len() < PcapFraming::FILE_HEADER {
                return Step::Incomplete(PcapFraming::FILE_HEADER);
            }
            let Ok(f) = PcapFraming::parse(b) else {
                return Step::Corrupt;
            };
            let snaplen = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
            self.layout = Layout::Pcap(f);
            self.ifaces = vec![Interface {
                link: f.link(),
                snaplen,
                ts: pcapng::TsUnits {
                    resol: 9,
                    offset_s: 0,
                },
                name: None,
            }];
            return Step::Meta(PcapFraming::FILE_HEADER);
        }
        self.ng(b, Endian::native())
    }

    #[inline]
    fn ng<'a>(&mut self, b: &'a [u8], endian: Endian) -> Step<'a> {
        let (kind, len, endian) = match pcapng::frame(b, endian) {
            Framed::Block { kind, len, endian } => (kind, len, endian),
            Framed::Incomplete { needed } => return Step::Incomplete(needed),
            Framed::Corrupt => return Step::Corrupt,
        };
        let block = &b[..len];
        match kind {
            pcapng::EPB | pcapng::PB | pcapng::SPB => {
                let Some(p) = pcapng::packet(kind, block, endian) else {
                    return Step::Corrupt;
                };
                let Some(ifc) = self.ifaces.get(self.section_base + p.iface as usize) else {
                    // A packet of an interface never described: damage.
                    return Step::Corrupt;
                };
                let data = if kind == pcapng::SPB && ifc.snaplen > 0 {
                    &p.data[..p.data.len().min(ifc.snaplen as usize)]
                } else {
                    p.data
                };
                Step::Packet(
                    len,
                    Packet {
                        iface: (self.section_base + p.iface as usize) as u32,
                        ts_ns: ifc.ts.to_ns(p.ts_raw),
                        ts_raw: p.ts_raw,
                        link: ifc.link,
                        orig_len: p.orig_len,
                        data,
                        record: block,
                        kind: RecordKind::Ng(kind),
                    },
                )
            }
            pcapng::SHB => {
                if block.len() < 28 {
                    return Step::Corrupt;
                }
                self.layout = Layout::Ng(endian);
                self.section_base = self.ifaces.len();
                Step::Meta(len)
            }
            pcapng::IDB if self.layout != Layout::Unknown => match pcapng::interface(block, endian)
            {
                Some(ifc) => {
                    self.ifaces.push(ifc);
                    Step::Meta(len)
                }
                None => Step::Corrupt,
            },
            // Anything before a section header is not pcapng.
            _ if self.layout == Layout::Unknown => Step::Corrupt,
            _ => Step::Other(len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{CaptureReader, Encoder, Format, InterfaceInfo, PacketInfo};

    fn file(format: Format) -> Vec<u8> {
        let mut enc = Encoder::new(format);
        for name in ["a", "b"] {
            enc.add_interface(&InterfaceInfo {
                link: LinkType::Ethernet,
                name: name.into(),
                description: String::new(),
                snaplen: 65535,
            })
            .unwrap();
        }
        for i in 0..5u8 {
            let iface = if matches!(format, Format::Pcapng) {
                u32::from(i % 2)
            } else {
                0
            };
            enc.packet(
                iface,
                &PacketInfo {
                    ts_ns: 1_000_000_000_000 + u64::from(i) * 1000,
                    orig_len: 64,
                    data: &[i; 40],
                    direction: None,
                    comment: None,
                },
            )
            .unwrap();
        }
        enc.take_bytes()
    }

    fn walk(b: &[u8]) -> (Vec<(u32, u64, Vec<u8>)>, usize) {
        let mut w = Walker::new();
        let mut at = 0;
        let mut got = Vec::new();
        loop {
            match w.step(&b[at..]) {
                Step::Packet(n, p) => {
                    got.push((p.iface, p.ts_ns, p.data.to_vec()));
                    at += n;
                }
                Step::Meta(n) | Step::Other(n) => at += n,
                Step::Incomplete(_) | Step::Corrupt => return (got, at),
            }
        }
    }

    #[test]
    fn walks_what_the_reader_reads() {
        for format in [
            Format::Pcapng,
            Format::Pcap { nanos: true },
            Format::Pcap { nanos: false },
        ] {
            let b = file(format);
            let (got, at) = walk(&b);
            assert_eq!(at, b.len());
            let mut r = CaptureReader::new(&b[..]).unwrap();
            let mut want = Vec::new();
            while let Some(rec) = r.next_record().unwrap() {
                want.push((rec.ts_ns, rec.data.to_vec()));
            }
            assert_eq!(
                got.iter().map(|g| (g.1, g.2.clone())).collect::<Vec<_>>(),
                want,
                "{format:?}"
            );
            if format == Format::Pcapng {
                assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [0, 1, 0, 1, 0]);
            }
        }
    }

    #[test]
    fn starts_in_the_middle_from_metadata() {
        let b = file(Format::Pcapng);
        let mut w = Walker::new();
        // Header and the two interfaces, then a packet in the middle of the file.
        let mut at = 0;
        for _ in 0..3 {
            let Step::Meta(n) = w.step(&b[at..]) else {
                panic!()
            };
            at += n;
        }
        let metas = b[..at].to_vec();
        let Step::Packet(n, _) = w.step(&b[at..]) else {
            panic!()
        };
        let mut fresh = Walker::new();
        let mut m = 0;
        while m < metas.len() {
            let Step::Meta(k) = fresh.step(&metas[m..]) else {
                panic!()
            };
            m += k;
        }
        let Step::Packet(_, p) = fresh.step(&b[at + n..]) else {
            panic!()
        };
        assert_eq!(p.iface, 1);
        // Without the interfaces, a packet is damage, not a guess.
        let mut bare = Walker::new();
        bare.meta(&b[..28]).unwrap_or(());
        assert!(matches!(Walker::new().step(&b[at..]), Step::Corrupt));
    }

    #[test]
    fn damage_is_reported_not_panicked_on() {
        let b = file(Format::Pcapng);
        for cut in 0..b.len() {
            let _ = walk(&b[..cut]);
        }
        let mut bad = b.clone();
        for i in (0..bad.len()).step_by(7) {
            bad[i] ^= 0x5a;
            let _ = walk(&bad);
        }
    }
}
